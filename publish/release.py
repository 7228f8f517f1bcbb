"""Publish a validated release to Zenodo as a new record or a new version, in seven steps.

1. Preflight: path, size and sha256 of every file to package recorded, then the validator;
   no demo products on the real Zenodo, token, metadata, the concept of this release, limits.
2. Package: one stored ZIP per shelf (its ROI GeoPackage at the ZIP's root), catalog ZIP,
   metadata.ods, manifest;
   every file packaged must be the file validated (``publish.snapshot``: hashed while zipped
   or copied) and every product the validator saw must be in a shelf ZIP (symbolic links are
   followed).
3. Draft: reuse the concept's draft, else newversion (or create); drop inherited extras. The
   catalog ZIP is then made again for this record only: earlier write-backs (the previous
   version's DOI, a sandbox rehearsal's links) stripped, the draft's reserved DOI
   (``metadata.prereserve_doi``) and hrefs into this record written in.
4. Upload: stream what the server lacks, verify each checksum, record progress in the state.
5. Metadata: PUT it whole, read it back, compare.
6. Publish gate: the draft's files must equal the manifest; then publish (or stop: --no-publish).
7. Write back: DOIs into the STAC catalog, release notes (one section per version), state.
   A deposition found already published (a crash, Zenodo's web pages) passes the gate of
   step 6 first.

Every step is recorded in the state file, so a crashed run continues with ``--resume``; a
dry run prints the requests it would send and the file changes against the previous version.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TransferSpeedColumn,
)

from producer.provenance import remembered_hashes
from producer.spec import (
    AUXILIARY_SUFFIXES,
    DEMO_SOURCE,
    RELEASE_METADATA,
    RELEASE_NOTES,
    SOURCE_TAG,
    STAC_CATALOG_DIR,
    SpecError,
    is_demo_source,
    parse_name,
)
from publish.metadata import (
    MetadataError,
    build_metadata,
    load_release_yaml,
    metadata_differences,
    metadata_problems,
)
from publish.package import (
    CATALOG_KEY,
    MANIFEST_KEY,
    Manifest,
    PackageError,
    build_packages,
    file_hashes,
    member_diff,
    plan_packages,
    record_key_map,
    walk_files,
)
from publish.snapshot import Differences, ReleaseChanged, ReleaseSnapshot
from publish.state import (
    CONCEPTS_FILE,
    STATE_FILE,
    FileState,
    PublishState,
    load_state,
    packages_dir,
    published_concepts,
    record_published_concept,
    save_state,
    state_dir,
)
from publish.writeback import (
    Publication,
    citation_text,
    clean_work_folders,
    record_catalog,
    release_notes_section,
    today_utc,
    update_catalog,
    work_folders,
    write_release_notes,
)
from publish.zenodo import (
    ZenodoClient,
    ZenodoError,
    is_production,
    normalise_base_url,
    public_record,
)

MAX_FILES = 100
MAX_BYTES = 50 * 10**9
UPLOAD_VERIFY_ATTEMPTS = 3
#: Where, in the publish state folder, the catalog of the record being published is prepared.
RECORD_CATALOG_DIR = "record-catalog"
Files = dict[str, tuple[int, str]]


class PublishRefused(RuntimeError):
    """Preflight refused the release; nothing was changed anywhere."""


class PublishStopped(RuntimeError):
    """Publication stopped part-way; the message says what is left and how to go on."""


@dataclass
class PublishOptions:
    """What the command line asked for."""

    release_dir: Path
    version: str
    base_url: str
    concept_id: str | None = None
    new: bool = False
    allow_demo: bool = False
    metadata_path: Path | None = None
    dry_run: bool = False
    no_publish: bool = False
    resume: bool = False
    today: dt.date = field(default_factory=today_utc)

    def __post_init__(self) -> None:
        """One spelling per server: hrefs without ``//`` and a state that recognises it."""
        self.base_url = normalise_base_url(self.base_url)


@dataclass
class PublishResult:
    """The outcome: a plan (dry run), a verified draft, or a published version."""

    stage: str
    deposition_id: int | None = None
    publication: Publication | None = None
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    diff: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Reconciliation:
    """What to do with the draft's files to make them equal the manifest."""

    delete: tuple[str, ...]
    upload: tuple[str, ...]
    keep: tuple[str, ...]


def reconcile(remote: Files, wanted: Files) -> Reconciliation:
    """Delete keys not wanted, upload keys missing or different, keep exact matches."""
    delete = tuple(sorted(k for k in remote if k not in wanted))
    keep = tuple(sorted(k for k in wanted if remote.get(k) == wanted[k]))
    upload = tuple(k for k in _upload_order(wanted) if k not in keep)
    return Reconciliation(delete, upload, keep)


def files_mismatch(remote: Files, wanted: Files) -> str:
    """Which files of a deposition differ from the manifest, each named."""
    extra = sorted(k for k in remote if k not in wanted)
    missing = sorted(k for k in wanted if k not in remote)
    different = sorted(k for k in wanted if k in remote and remote[k] != wanted[k])
    parts = [f"{what}: {', '.join(keys)}" for what, keys in (
        ("not in the manifest", extra), ("missing", missing),
        ("other size or md5", different)) if keys]
    return "; ".join(parts)


def _upload_order(wanted: Files) -> list[str]:
    """Manifest last, so a record with a manifest always has its files."""
    return sorted(wanted, key=lambda k: (k == MANIFEST_KEY, k))


def file_diff(previous: Files, wanted: Files) -> list[str]:
    """Human lines: files added, changed, removed and unchanged against the previous version."""
    lines = [f"added {k} ({wanted[k][0]} bytes)" for k in sorted(wanted) if k not in previous]
    lines += [f"changed {k} ({previous[k][0]} -> {wanted[k][0]} bytes, md5 "
              f"{previous[k][1][:8]}… -> {wanted[k][1][:8]}…)"
              for k in sorted(wanted) if k in previous and previous[k] != wanted[k]]
    lines += [f"removed {k}" for k in sorted(previous) if k not in wanted]
    same = [k for k in sorted(wanted) if previous.get(k) == wanted[k]]
    if same:
        lines.append(f"unchanged {', '.join(same)}")
    return lines


def full_diff(previous_files: Files, wanted: Files, previous_manifest: Manifest | None,
              manifest: Manifest) -> list[str]:
    """File-level changes, then the changes of the files inside the ZIPs (when the previous
    version has a manifest to compare with)."""
    lines = file_diff(previous_files, wanted)
    if previous_manifest is not None:
        lines += [f"inside: {line}" for line in member_diff(previous_manifest, manifest)]
    return lines


def mark_approximate(lines: list[str], keys: tuple[str, ...]) -> list[str]:
    """``file_diff`` lines of the ``keys`` added or changed, marked as approximate (a dry run
    before the draft exists: they are made again with its reserved DOI)."""
    marked = []
    for line in lines:
        verb, _, rest = line.partition(" ")
        if verb in ("added", "changed") and rest.split(" ", 1)[0] in keys:
            line += " — size approximate: rebuilt with the new draft's reserved DOI"
        marked.append(line)
    return marked


def record_files(record: dict[str, Any]) -> Files:
    """key -> (size, md5) of a published record (records API format)."""
    return {f["key"]: (int(f["size"]), str(f["checksum"]).split(":")[-1])
            for f in record.get("files", [])}


def _provenance_demo(path: Path) -> bool:
    """Whether a provenance record says demo, read from its raw ``source`` / ``demo`` fields
    (not the full record: one that this version cannot parse must not hide a demo product).
    ``"demo": true`` beside another source counts as demo here, and makes the record
    unreadable to the catalog and the validator (``Provenance.from_json``): nobody reads it
    as real data. ValueError saying why when the fields cannot be read."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(f"not readable JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    source, demo = data.get("source"), data.get("demo")
    if not isinstance(source, str) or not isinstance(demo, bool | None):
        raise ValueError(f"no usable 'source' field ({source!r}) or a 'demo' field that is "
                         f"not true/false ({demo!r})")
    return is_demo_source(source) or demo is True


def _product_demo(path: Path) -> bool:
    """Whether a product GeoTIFF's ``SOURCE_TAG`` names the demo source (tags only, no
    pixels); a file without the tag (the published v1, older releases) is not demo by this
    check. ValueError saying why when the file cannot be opened as a GeoTIFF."""
    import rasterio

    try:
        with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), \
                rasterio.open(path) as src:
            source = src.tags().get(SOURCE_TAG)
    except Exception as exc:  # any failure: whether it is demo is unknown (fail closed)
        raise ValueError(f"not readable as a GeoTIFF ({type(exc).__name__}: {exc})") from None
    return is_demo_source(source)


def _is_product(name: str) -> bool:
    """Whether a file name is a product name of the spec (type 1 or type 2)."""
    try:
        parse_name(name)
    except SpecError:
        return False
    return True


def demo_products(release_dir: Path) -> list[str]:
    """Files saying a product was made from the offline demo source: provenance records
    (``source``/``demo`` fields) and product GeoTIFFs of both types (``SOURCE_TAG``), so a
    release trimmed of its provenance records still cannot pass demo maps for real ones.

    Fails closed: PublishRefused names every provenance record whose ``source``/``demo``
    fields cannot be read and every product GeoTIFF that cannot be opened, since then nobody
    can tell whether demo data would be published. Symbolic links are followed, as by the
    validator and the packager; hidden folders (the publisher's state) are skipped.
    """
    release_dir = Path(release_dir)
    suffix = AUXILIARY_SUFFIXES["provenance"]
    found, unreadable = [], []
    for path in walk_files(release_dir):
        rel = path.relative_to(release_dir)
        if any(p.startswith(".") for p in rel.parts):
            continue
        if path.name.endswith(suffix):
            check, what = _provenance_demo, "provenance record"
        elif _is_product(path.name):
            check, what = _product_demo, "product GeoTIFF"
        else:
            continue
        try:
            if check(path):
                found.append(rel.as_posix())
        except ValueError as why:
            unreadable.append(f"{what} {rel.as_posix()}: {why}")
    if unreadable:
        raise PublishRefused(
            f"{release_dir}: {len(unreadable)} file(s) cannot be read, so whether they "
            "describe or hold demo products is unknown; fix or re-produce them:\n  "
            + "\n  ".join(sorted(unreadable)))
    return sorted(found)


def catalog_licenses(release_dir: Path) -> list[tuple[str, str | None]]:
    """(collection file relative to the release, its ``license``) of every collection of the
    release's STAC catalog; empty when the release has no catalog."""
    import pystac

    catalog_json = Path(release_dir) / STAC_CATALOG_DIR / "catalog.json"
    if not catalog_json.is_file():
        return []
    root = pystac.Catalog.from_file(str(catalog_json))
    collections = [root] if isinstance(root, pystac.Collection) else []
    collections += list(root.get_all_collections())
    found = []
    for collection in collections:
        href = collection.get_self_href() or str(catalog_json)
        try:
            where = Path(href).resolve().relative_to(Path(release_dir).resolve()).as_posix()
        except ValueError:
            where = href
        found.append((where, collection.license or None))
    return found


def license_mismatch(release_dir: Path, zenodo_license: str, metadata_path: Path) -> str | None:
    """Why the record would state another licence than its catalog (the collection's
    ``license`` in stac.zip), or None when they agree (SPDX ids, compared case-insensitively).

    ``icedamage catalog`` takes the licence from the release's own release.yaml (or its
    ``--license``) when it runs, so a catalog made before release.yaml was written, or before
    its licence changed, still states the old one."""
    release_dir = Path(release_dir)
    wanted = zenodo_license.strip().casefold()
    try:
        licenses = catalog_licenses(release_dir)
    except Exception as exc:  # cannot compare: fail closed
        return (f"{release_dir / STAC_CATALOG_DIR}: the STAC catalog cannot be read to compare "
                f"its license with the {zenodo_license!r} of {metadata_path} "
                f"({type(exc).__name__}: {exc}); re-run `icedamage catalog {release_dir}`")
    differing = [(where, lic) for where, lic in licenses
                 if (lic or "").strip().casefold() != wanted]
    if not differing:
        return None
    said = "; ".join(f"{where} says {lic!r}" if lic else f"{where} states no license"
                     for where, lic in differing)
    own = Path(metadata_path).resolve() == (release_dir / RELEASE_METADATA).resolve()
    fix = (f"re-run `icedamage catalog {release_dir}` (it takes the license from "
           f"{RELEASE_METADATA}), then `icedamage validate {release_dir}`" if own else
           f"re-run `icedamage catalog {release_dir} --license {zenodo_license}` (the catalog "
           f"reads the release's own {RELEASE_METADATA}, not --metadata), then "
           f"`icedamage validate {release_dir}`")
    return (f"license mismatch: {metadata_path} gives Zenodo the license {zenodo_license!r}, "
            f"but the STAC catalog that goes into stac.zip disagrees ({said}); the record and "
            f"its stac.zip would state different licenses. Either correct license in "
            f"{metadata_path}, or {fix}")


def same_server(saved: str, base_url: str) -> bool:
    """Whether a base URL saved in a state file (perhaps before URLs were normalised) names
    the same server as ``base_url``."""
    try:
        return normalise_base_url(saved) == normalise_base_url(base_url)
    except ValueError:
        return saved == base_url


def check_products_packaged(release_dir: Path, manifest: Manifest,
                            products: Iterable[str] | None = None) -> None:
    """Every product file the validator saw (``products``, listed when it started; default:
    the validator's inventory now) must be inside a shelf package (a folder the packager
    could not walk must never silently drop a validated product)."""
    from validation.inventory import scan_release

    if products is None:
        products = [p.rel for p in scan_release(Path(release_dir)).products]
    packaged = {m.path for e in manifest.entries if e.kind == "shelf" for m in e.contents}
    missing = [rel for rel in products if rel not in packaged]
    if missing:
        raise PackageError(f"{release_dir}: {len(missing)} validated product file(s) are in no "
                           f"package, e.g. {missing[0]}; not publishing an incomplete record")


def validation_problems(release_dir: Path, allow: tuple[str, ...] = ()) -> list[str]:
    """Errors the release validator finds (warnings do not block publication)."""
    from validation.engine import validate_release

    report = validate_release(Path(release_dir), allow=allow)
    if report.ok(False):
        return []
    return [f"{p.file}: [{p.rule}] found {p.found}, expected {p.expected}"
            for p in report.problems if p.severity == "error"] or ["validation failed"]


def limit_problems(count: int, total: int, max_files: int = MAX_FILES,
                   max_bytes: int = MAX_BYTES) -> list[str]:
    """Zenodo's per-record limits (files and bytes)."""
    problems = []
    if count > max_files:
        problems.append(f"{count} files exceed Zenodo's limit of {max_files} per record")
    if total > max_bytes:
        problems.append(f"{total} bytes exceed Zenodo's limit of {max_bytes} per record")
    return problems


class Publisher:
    """Runs the seven steps for one release against one Zenodo instance."""

    def __init__(self, options: PublishOptions, client: ZenodoClient, console: Console,
                 secrets: tuple[str, ...] = ()) -> None:
        self.o = options
        self.client = client
        self.console = console
        self.secrets = secrets
        self.release = Path(options.release_dir)
        self.result = PublishResult(stage="started")
        self.packaged: Publication | None = None
        """The record the uploaded stac.zip names (None: none)."""
        self.snapshot: ReleaseSnapshot | None = None
        """Every file to package as it was when the validator started (see ``snapshot``)."""
        client.on_retry = lambda text: self.say(f"      {text}")

    # ------------------------------------------------------------------ helpers

    def say(self, text: str) -> None:
        """One line of progress on the console."""
        self.console.print(text, highlight=False, markup=False)

    def save(self, state: PublishState) -> None:
        """Persist the state (never in a dry run)."""
        if not self.o.dry_run:
            save_state(self.release, state, self.secrets)

    # ------------------------------------------------------------------ step 1

    def preflight_local(self) -> None:
        """Validator and demo check (before any request).

        What an interrupted write-back of ours left at the release root is tidied first, so
        that ``--resume`` is not refused for our own working folders.
        """
        leftovers: tuple[str, ...] = ()
        if self.o.dry_run:  # change nothing: only leave them out of the validation
            leftovers = tuple(p.name for p in work_folders(self.release) if p.exists())
            for name in leftovers:
                self.say(f"[dry run] would tidy {name}/, left by an interrupted write-back")
        else:
            for name in clean_work_folders(self.release):
                self.say(f"[1/7] tidied {name}/, left by an interrupted write-back")
        # recorded before the validator reads anything: whatever changes from now on is found
        # when it is packaged (the bytes published must be the bytes validated)
        snapshot = self.take_snapshot()
        _, old_catalog = work_folders(self.release)
        if (self.o.dry_run and old_catalog.is_dir()
                and not (self.release / STAC_CATALOG_DIR).exists()):
            # the catalog waits in the working folder until tidied: the release as it is now
            # lacks it, and a dry run may not move it back to validate it
            self.say(f"[dry run] the catalog is in {old_catalog.name}/ until tidied: the "
                     "validator runs on it with --resume")
            problems = []
        else:
            problems = validation_problems(self.release, leftovers)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise PublishRefused(f"{self.release}: the validator found {len(problems)} "
                                 f"error(s); fix them first:\n  {shown}{more}")
        if isinstance(snapshot, PackageError):  # reported once the validator has spoken
            raise snapshot
        self.snapshot = snapshot
        demo = demo_products(self.release)
        if demo and (not self.o.allow_demo or is_production(self.o.base_url)):
            shown = "\n  ".join(demo[:20])
            more = f"\n  … and {len(demo) - 20} more" if len(demo) > 20 else ""
            raise PublishRefused(
                f"{self.release}: {len(demo)} file(s) say their products were made from the "
                f"offline demo source (provenance source == '{DEMO_SOURCE}', or GeoTIFF tag "
                f"{SOURCE_TAG}={DEMO_SOURCE}); demo products are never published to Zenodo "
                f"(use --sandbox or --url to try the workflow):\n  {shown}{more}")

    def take_snapshot(self) -> ReleaseSnapshot | PackageError:
        """Path, size and sha256 of every file to package, before the validator runs (see
        ``publish.snapshot``); when the release cannot be planned or read, the PackageError
        saying why, raised only after the validator's own findings."""
        try:
            return ReleaseSnapshot.take(self.release)
        except PackageError as exc:
            return exc
        except OSError as exc:
            return PackageError(f"{self.release}: cannot read the release to record what the "
                                f"validator checks ({exc})")

    def refuse_second_concept(self, state: PublishState | None) -> None:
        """``--new`` must not start an unrelated record when this release already published
        a concept on the same server (the next version belongs to that concept). Running the
        published version again is not refused: it only reports that it is published."""
        if not self.o.new:
            return
        if (state is not None and state.stage == "published" and state.concept_id
                and same_server(state.base_url, self.o.base_url)):
            held = {"concept_id": state.concept_id, "conceptdoi": state.conceptdoi,
                    "version": state.version}
        else:  # state.json may hold another server's run (a sandbox rehearsal)
            held = published_concepts(self.release).get(self.server)
        if not held or not held.get("concept_id") or held.get("version") == self.o.version:
            return
        concept_doi = f" (concept DOI https://doi.org/{held['conceptdoi']})" \
            if held.get("conceptdoi") else ""
        raise PublishRefused(
            f"--new: this release already published version {held['version']} to "
            f"{self.o.base_url} as concept {held['concept_id']}{concept_doi}, recorded in "
            f"{state_dir(self.release)}. A new version of it is published without "
            f"--new: icedamage publish {self.release} --version {self.o.version} --concept-id "
            f"{held['concept_id']}. To start a second, unrelated record on purpose, move "
            f"{state_dir(self.release)} away first")

    def refuse_other_concept(self, state: PublishState | None, concept: str | None) -> None:
        """``--concept-id`` must name the concept this release is published under on this
        server: the one of the unfinished run in the state (its draft belongs to it), else the
        one recorded in concepts.json. Another concept would give the version a wrong
        ``isNewVersionOf`` (the latest version of an unrelated record). ``concept`` is what
        --concept-id resolved to (a version id names its concept)."""
        if self.o.concept_id is None or concept is None:
            return
        folder = state_dir(self.release)
        if state is not None and state.concept_id:  # same server and version (else reset)
            if str(state.concept_id) != str(concept):
                raise PublishRefused(
                    f"--concept-id {self.o.concept_id} names concept {concept}, but the "
                    f"unfinished publication of version {state.version} recorded in "
                    f"{folder / STATE_FILE} (deposition {state.deposition_id}) belongs to "
                    f"concept {state.concept_id}; continue it with --concept-id "
                    f"{state.concept_id} (or without --concept-id) and --resume, or delete "
                    f"{folder} to start over")
            return
        held = published_concepts(self.release).get(self.server) or {}
        if held.get("concept_id") and str(held["concept_id"]) != str(concept):
            concept_doi = (f" (concept DOI https://doi.org/{held['conceptdoi']})"
                           if held.get("conceptdoi") else "")
            raise PublishRefused(
                f"--concept-id {self.o.concept_id} names concept {concept}, but this release "
                f"published version {held.get('version')} to {self.o.base_url} as concept "
                f"{held['concept_id']}{concept_doi}, recorded in {folder / CONCEPTS_FILE}; "
                f"its next version is published with --concept-id {held['concept_id']} (or "
                f"without --concept-id). To publish into concept {concept} on purpose, move "
                f"{folder} away first")

    @property
    def server(self) -> str:
        """The target server's key in the record of published concepts."""
        try:
            return normalise_base_url(self.o.base_url)
        except ValueError:
            return self.o.base_url

    def preflight_remote(self, known_concept: str | None, own_id: int | None,
                         ) -> tuple[str | None, dict[str, Any] | None, set[str]]:
        """Token check, concept, previous version, versions already used.

        ``own_id`` is the deposition of an interrupted run: if Zenodo published it before the
        crash, its version is ours (not taken) and the previous version is the one before it.
        When it is the draft of a concept with no published version (an interrupted first
        release resumed without --new), it goes on as the first version.
        """
        try:
            self.client.check_token()
        except ZenodoError as exc:
            if exc.status in (401, 403):
                raise PublishRefused(
                    f"{self.o.base_url} refused the token ({exc.status}): check ZENODO_TOKEN "
                    "(or ZENODO_SANDBOX_TOKEN with --sandbox) and its deposit:write scope"
                ) from exc
            raise
        concept = self.o.concept_id or (None if self.o.new else known_concept)
        if concept is None and not self.o.new:
            raise PublishRefused("give --concept-id ID (a new version of the dataset) or --new "
                                 "(a new record)")
        if concept is None:
            return None, None, set()
        try:
            previous: dict[str, Any] | None = self.client.latest_record(concept)
            versions = [v for v in self.client.versions(concept) if v.get("id") != own_id]
        except ZenodoError as exc:
            if exc.status != 404:
                raise
            if own_id is not None and self.first_version_draft(concept, own_id):
                return None, None, set()
            again = ("; to publish the release as a new record, run again with --new --resume"
                     if own_id is not None else "")
            raise PublishRefused(f"concept {concept}: no published version on "
                                 f"{self.o.base_url}{again}") from exc
        assert previous is not None
        conceptrecid = str(previous["conceptrecid"])
        if previous.get("id") == own_id:
            previous = max(versions, key=lambda v: int(v["id"])) if versions else None
        used = {str(v.get("metadata", {}).get("version")) for v in versions}
        return conceptrecid, previous, used

    def first_version_draft(self, concept: str, own_id: int) -> bool:
        """Whether the interrupted run's deposition ``own_id`` is the first version of
        ``concept`` (its draft, or the version itself once published), so that the run goes
        on as the first version instead of asking for --new."""
        try:
            dep = self.client.deposition(own_id)
        except ZenodoError as exc:
            if exc.status == 404:
                return False
            raise
        if str(dep.get("conceptrecid")) != str(concept):
            return False
        self.say(f"[1/7] concept {concept} has no published version yet: deposition {own_id} "
                 "of the interrupted run goes on as its first version")
        return True

    def build_metadata(self, previous: dict[str, Any] | None, used: set[str]) -> dict[str, Any]:
        """Deposition metadata from release.yaml, validated locally."""
        path = self.o.metadata_path or self.release / RELEASE_METADATA
        raw = load_release_yaml(path)
        previous_doi = previous.get("doi") if previous else None
        metadata = build_metadata(raw, self.o.version, previous_doi, self.o.today)
        problems = metadata_problems(metadata, used, previous_doi)
        if problems:
            raise MetadataError(str(path), problems)
        mismatch = license_mismatch(self.release, metadata["license"], path)
        if mismatch:
            raise PublishRefused(mismatch)
        return metadata

    # ------------------------------------------------------------------ step 2

    def package(self, out_dir: Path, pub: Publication | None, catalog_dir: Path,
                rebuild: tuple[str, ...] = (), quiet: bool = False) -> tuple[Manifest, Files]:
        """Build the packages; the manifest and every wanted file (manifest.json included).

        ``stac.zip`` holds a catalog prepared in ``catalog_dir`` that names the record ``pub``
        (its reserved DOI) and no other; without ``pub`` (a dry run, or before the draft
        exists) it names none. Every file packaged must be the file the validator checked
        (same path, size and sha256) and every product it saw must be in a shelf package;
        else ReleaseChanged names the files.
        """
        manifest, differences = self.build(out_dir, pub, catalog_dir, rebuild)
        stale = sorted(self.holders(manifest, differences.changed) - set(rebuild))
        if stale:  # a package reused from an earlier build: is it the build cache's fault?
            manifest, differences = self.build(out_dir, pub, catalog_dir, (*rebuild, *stale))
        if differences:
            raise ReleaseChanged(differences.describe(self.release))
        check_products_packaged(self.release, manifest, self.validated().products)
        wanted: Files = {e.key: (e.size, e.md5) for e in manifest.entries}
        size, md5, _ = file_hashes(out_dir / MANIFEST_KEY)
        wanted[MANIFEST_KEY] = (size, md5)
        total = sum(s for s, _ in wanted.values())
        if not quiet:
            self.say(f"[2/7] packaged {len(wanted)} files ({total} bytes): "
                     + ", ".join(sorted(wanted)))
        problems = limit_problems(len(wanted), total)
        if problems:
            raise PublishRefused("; ".join(problems))
        return manifest, wanted

    def validated(self) -> ReleaseSnapshot:
        """The files as the validator checked them (``preflight_local`` records them)."""
        if self.snapshot is None:
            raise PackageError(f"{self.release}: not validated yet; nothing is packaged "
                               "before the validator has checked the release")
        return self.snapshot

    def build(self, out_dir: Path, pub: Publication | None, catalog_dir: Path,
              rebuild: tuple[str, ...]) -> tuple[Manifest, Differences]:
        """Build the packages once; the manifest, and how the files they hold differ from
        those the validator checked (the catalog copy is compared as it is made)."""
        snapshot = self.validated()
        key_map = record_key_map(plan_packages(self.release))
        copies: list[Differences] = []
        try:
            catalog = record_catalog(
                self.release, catalog_dir, pub, key_map,
                copied=lambda work: copies.append(snapshot.catalog_differences(work)))
            manifest = build_packages(self.release, out_dir, self.o.version,
                                      catalog_root=catalog, rebuild=rebuild)
        finally:
            shutil.rmtree(catalog_dir, ignore_errors=True)  # in stac.zip now; rebuilt each run
        differences = snapshot.packaged_differences(manifest, with_catalog=catalog is None)
        for found in copies:
            differences += found
        return manifest, differences

    @staticmethod
    def holders(manifest: Manifest, paths: Iterable[str]) -> set[str]:
        """Keys of the packages holding the release files ``paths``."""
        holder = {m.path: e.key for e in manifest.entries for m in e.contents}
        holder.update({e.name: e.key for e in manifest.entries if not e.contents})
        return {holder[p] for p in paths if p in holder}

    def publication(self, record: dict[str, Any], metadata: dict[str, Any]) -> Publication | None:
        """What a draft or published record is (or will be, once published) called: its DOI
        (Zenodo reserves it for a draft: ``metadata.prereserve_doi``), record id, concept DOI
        and citation; None when a draft has no reserved DOI."""
        reserved = record.get("metadata", {}).get("prereserve_doi") or {}
        doi = record.get("doi") or reserved.get("doi")
        if not doi:
            return None
        record_id = int(record["id"] if record.get("doi") else
                        reserved.get("recid") or record.get("record_id") or record["id"])
        concept = record.get("conceptrecid")
        conceptdoi = record.get("conceptdoi") or (
            f"{doi.rsplit('.', 1)[0]}.{concept}" if concept else doi)
        citation = citation_text(metadata.get("creators", []), metadata.get("title", ""),
                                 self.o.version, int(metadata["publication_date"][:4]), doi)
        return Publication(record_id, doi, conceptdoi, self.o.version, self.o.base_url,
                           citation, metadata["publication_date"])

    # ------------------------------------------------------------------ dry run

    def previous_manifest(self, previous: dict[str, Any] | None) -> Manifest | None:
        """The manifest of the previous version, if it has one we can read."""
        if previous is None:
            return None
        text = self.client.record_file_text(previous["id"], MANIFEST_KEY)
        try:
            return Manifest.from_json(text) if text else None
        except (ValueError, KeyError, TypeError):
            return None

    def previous_files(self, previous: dict[str, Any]) -> Files:
        """Files of the previous version, read anonymously with zenodo-client; when that
        single unretried GET fails, the copy our client already fetched is just as good."""
        try:
            return record_files(public_record(self.o.base_url, previous["id"]))
        except (requests.RequestException, ValueError, KeyError):
            return record_files(previous)

    def existing_draft(self, concept: str | None,
                       state: PublishState | None) -> dict[str, Any] | None:
        """The draft a real run would continue (the state's, else the concept's), if any."""
        if state and state.deposition_id:
            try:
                return self.client.deposition(state.deposition_id)
            except ZenodoError:
                pass
        return self.client.concept_draft(concept) if concept else None

    def dry_run(self, concept: str | None, previous: dict[str, Any] | None,
                state: PublishState | None, metadata: dict[str, Any]) -> PublishResult:
        """Print the requests a real run would send and the file changes; change nothing.

        With a draft to continue, the packages are made as the real run makes them (stac.zip
        with the draft's reserved DOI), so the sizes and uploads planned are exact; before a
        draft exists, stac.zip and manifest.json are made again once its DOI is reserved, and
        their sizes are marked as approximate."""
        draft = self.existing_draft(concept, state)
        pub = self.publication(draft, metadata) if draft is not None else None
        with tempfile.TemporaryDirectory(prefix="icedamage-dry-run-") as tmp:
            manifest, wanted = self.package(Path(tmp) / "packages", pub,
                                            Path(tmp) / RECORD_CATALOG_DIR)
        # no draft yet: the real run makes these again with the draft's reserved DOI
        rebuilt = () if draft is not None or CATALOG_KEY not in wanted else (
            CATALOG_KEY, MANIFEST_KEY)
        previous_files = self.previous_files(previous) if previous else {}
        plan = [f"GET {self.client.api}/deposit/depositions (token check)"]
        if draft is not None:
            remote = self.client.files(draft["id"])
            dep = f"deposit/depositions/{draft['id']}"
            bucket = draft["links"]["bucket"]
            plan.append(f"reuse draft {draft['id']}")
        else:
            remote = dict(previous_files)
            dep, bucket = "deposit/depositions/<new draft>", "<bucket of the new draft>"
            plan.append(f"POST {self.client.api}/deposit/depositions/{previous['id']}/actions/"
                        "newversion" if previous else f"POST {self.client.api}/deposit/"
                        "depositions")
        rec = reconcile(remote, wanted)
        plan += [f"DELETE {bucket}/{k}" for k in rec.delete]
        plan += [f"PUT {bucket}/{k} ({self.planned_size(k, wanted, rebuilt)})"
                 for k in rec.upload]
        plan += [f"PUT {self.client.api}/{dep} (metadata, version {self.o.version})",
                 f"GET {self.client.api}/{dep} (read back metadata)",
                 f"GET {self.client.api}/{dep}/files (publish gate)"]
        if not self.o.no_publish:
            plan.append(f"POST {self.client.api}/{dep}/actions/publish")
        diff = full_diff(previous_files, wanted, self.previous_manifest(previous), manifest)
        diff = mark_approximate(diff, rebuilt)
        self.say("[dry run] planned requests:")
        for line in plan:
            self.say(f"  {line}")
        self.say("[dry run] files against the previous version"
                 + (f" {previous['metadata'].get('version')}:" if previous else " (none):"))
        for line in diff:
            self.say(f"  {line}")
        about = "about " if rebuilt else ""
        self.say(f"[dry run] {len(manifest.entries) + 1} files, {about}"
                 f"{sum(s for s, _ in wanted.values())} bytes; nothing was changed")
        return PublishResult(stage="dry-run", planned=plan, diff=diff)

    @staticmethod
    def planned_size(key: str, wanted: Files, rebuilt: tuple[str, ...]) -> str:
        """The size a planned upload shows: exact, or approximate for a file made again with
        the new draft's reserved DOI (stac.zip names the record; manifest.json lists it)."""
        if key in rebuilt:
            return (f"about {wanted[key][0]} bytes: rebuilt with the new draft's reserved DOI, "
                    "size approximate")
        return f"{wanted[key][0]} bytes"

    # ------------------------------------------------------------------ step 3

    def open_draft(self, state: PublishState, concept: str | None,
                   previous: dict[str, Any] | None) -> dict[str, Any]:
        """The draft to fill: the one in the state, the concept's draft, or a new one."""
        if state.deposition_id is not None:
            try:
                dep = self.client.deposition(state.deposition_id)
            except ZenodoError as exc:
                if exc.status != 404:
                    raise
                self.say(f"[3/7] deposition {state.deposition_id} is gone; starting again")
            else:
                if concept is not None and str(dep.get("conceptrecid")) != str(concept):
                    raise PublishRefused(
                        f"deposition {dep['id']} recorded in "
                        f"{state_dir(self.release) / STATE_FILE} belongs to concept "
                        f"{dep.get('conceptrecid')}, not to concept {concept} that this run "
                        f"publishes into; give --concept-id "
                        f"{dep.get('conceptrecid')} with --resume, or delete "
                        f"{state_dir(self.release)} to start over")
                self.say(f"[3/7] continuing with deposition {dep['id']}")
                return dep
        if concept is not None:
            draft = self.client.concept_draft(concept)
            if draft is not None:
                self.say(f"[3/7] reusing the existing draft {draft['id']} of concept {concept}")
                return draft
            assert previous is not None
            try:
                draft = self.client.new_version(int(previous["id"]), concept)
            except ZenodoError as exc:
                draft = self.client.concept_draft(concept) if exc.status == 400 else None
                if draft is None:
                    raise
            self.say(f"[3/7] new version draft {draft['id']} of concept {concept} "
                     f"(from version {previous['metadata'].get('version')})")
            return draft
        draft = self.client.create()
        self.say(f"[3/7] new record draft {draft['id']}")
        return draft

    # ------------------------------------------------------------------ step 4

    def sync_files(self, state: PublishState, dep_id: int, bucket: str, out_dir: Path,
                   wanted: Files, rebuild: Callable[[tuple[str, ...]], Files]) -> None:
        """Delete extras, upload what differs, verify every checksum.

        The local bytes of each file to upload are checked against the manifest first: a
        package damaged on disk since it was built is rebuilt (``rebuild``), never sent.
        """
        remote = self.client.files(dep_id)
        rec = reconcile(remote, wanted)
        self.repair_packages(out_dir, rec.upload, wanted, rebuild)
        for key in rec.delete:
            self.client.delete_file(bucket, key)
            self.result.deleted.append(key)
            self.say(f"[3/7] deleted inherited file {key} (not in this version)")
        state.files = {k: FileState(*wanted[k], verified=True) for k in rec.keep}
        self.save(state)
        self.result.skipped += list(rec.keep)
        if rec.keep:
            self.say(f"[4/7] already on the server and verified: {', '.join(rec.keep)}")
        total = sum(wanted[k][0] for k in rec.upload)
        with Progress(TextColumn("[4/7] {task.description}"), BarColumn(), DownloadColumn(),
                      TransferSpeedColumn(), console=self.console,
                      disable=not self.console.is_terminal) as progress:
            task = progress.add_task("uploading", total=total)
            for key in rec.upload:
                self.upload_verified(state, bucket, key, out_dir / key, wanted[key],
                                     progress, task)

    def repair_packages(self, out_dir: Path, keys: tuple[str, ...], wanted: Files,
                        rebuild: Callable[[tuple[str, ...]], Files]) -> None:
        """Rebuild the packages among ``keys`` whose bytes no longer match what was built."""
        damaged = tuple(k for k in keys if k != MANIFEST_KEY
                        and file_hashes(out_dir / k)[:2] != wanted[k])
        if not damaged:
            return
        self.say(f"[4/7] {', '.join(damaged)}: changed on disk since it was built; rebuilding")
        again = rebuild(damaged)
        if again != wanted or any(file_hashes(out_dir / k)[:2] != wanted[k] for k in damaged):
            raise PublishStopped(f"{', '.join(damaged)}: the rebuilt package differs from the "
                                 "manifest (the release changed while publishing?); run again "
                                 "with --resume")

    def upload_verified(self, state: PublishState, bucket: str, key: str, path: Path,
                        want: tuple[int, str], progress: Progress, task: Any) -> None:
        """Upload until the server's size and md5 equal ours (a few tries)."""
        start = progress.tasks[task].completed
        for attempt in range(1, UPLOAD_VERIFY_ATTEMPTS + 1):
            got = self.client.upload(
                bucket, key, path, want[0],
                progress=lambda n: progress.advance(task, n),
                restart=lambda: progress.update(task, completed=start))
            if got == want:
                state.files[key] = FileState(*want, verified=True)
                self.save(state)
                self.result.uploaded.append(key)
                self.say(f"[4/7] uploaded {key} ({want[0]} bytes, md5 verified)")
                return
            self.say(f"[4/7] {key}: the server stored size {got[0]}, md5 {got[1]} but we sent "
                     f"size {want[0]}, md5 {want[1]}; uploading again "
                     f"({attempt}/{UPLOAD_VERIFY_ATTEMPTS})")
        raise PublishStopped(f"{key}: the server's checksum never matched after "
                             f"{UPLOAD_VERIFY_ATTEMPTS} uploads; the draft is left unpublished")

    # ------------------------------------------------------------------ steps 5-6

    def put_metadata(self, dep_id: int, metadata: dict[str, Any]) -> None:
        """PUT the whole metadata, read it back, compare."""
        self.client.put_metadata(dep_id, metadata)
        back = self.client.deposition(dep_id).get("metadata", {})
        differ = metadata_differences(metadata, back)
        if differ:
            raise PublishStopped(f"deposition {dep_id}: Zenodo stored different values for "
                                 f"{differ}; the draft is left unpublished")
        self.say(f"[5/7] metadata stored and read back (version {metadata['version']})")

    def gate(self, dep_id: int, wanted: Files) -> None:
        """The draft's files must equal the manifest exactly."""
        remote = self.client.files(dep_id)
        if remote != wanted:
            raise PublishStopped(f"deposition {dep_id}: files differ from the manifest "
                                 f"({files_mismatch(remote, wanted)}); not publishing — run "
                                 "again with --resume")
        self.say(f"[6/7] draft {dep_id} holds exactly the {len(wanted)} manifest files")

    def published_gate(self, published: dict[str, Any], wanted: Files) -> None:
        """A deposition found published (outside this tool, say in Zenodo's web pages, after
        --no-publish or a crash) is written back only if its files equal the manifest: the
        catalog and the release notes must not point at files the record lacks."""
        dep_id = int(published["id"])
        remote = self.client.files(dep_id)
        if remote != wanted:
            where = published.get("links", {}).get("html") or f"deposition {dep_id}"
            raise PublishStopped(
                f"deposition {dep_id} is published, but its files differ from the manifest in "
                f"{packages_dir(self.release)} ({files_mismatch(remote, wanted)}); its DOI is "
                f"not written into the STAC catalog nor {RELEASE_NOTES}. A published record "
                f"cannot change: check it at {where}, then publish the release as a new "
                f"version of concept {published.get('conceptrecid')} (--concept-id "
                f"{published.get('conceptrecid')} and another --version)")
        self.say(f"[6/7] published deposition {dep_id} holds exactly the {len(wanted)} "
                 "manifest files")

    # ------------------------------------------------------------------ run

    def run(self) -> PublishResult:
        """All steps; raises PublishRefused / PublishStopped / ZenodoError / MetadataError."""
        self.say(f"[1/7] preflight of {self.release} for {self.o.base_url}")
        with remembered_hashes():  # the snapshot's read of each file serves the validator
            self.preflight_local()
        state = load_state(self.release)
        known_concept = state.concept_id if state is not None and same_server(
            state.base_url, self.o.base_url) else None
        if known_concept is None:  # state.json may hold another server's run
            known_concept = published_concepts(self.release).get(self.server, {}).get(
                "concept_id")
        self.refuse_second_concept(state)
        if state is not None and (state.version != self.o.version
                                  or not same_server(state.base_url, self.o.base_url)):
            if state.stage != "published" and not self.o.dry_run:
                raise PublishRefused(
                    f"a publication of version {state.version} to {state.base_url} is "
                    f"unfinished (stage {state.stage}, deposition {state.deposition_id}); "
                    "finish it with --resume and that version, or delete "
                    f"{self.release}/.icedamage-publish")
            state = None
        if state is not None:
            state.base_url = self.o.base_url  # the normalised spelling from now on
        if state is not None and state.stage == "published":
            self.say(f"version {state.version} is already published: https://doi.org/"
                     f"{state.doi}")
            return PublishResult(stage="published", deposition_id=state.record_id)
        if state is not None and not self.o.resume and not self.o.dry_run:
            raise PublishRefused(
                f"version {state.version} is already in progress (stage {state.stage}, "
                f"deposition {state.deposition_id}); continue it with --resume")
        concept, previous, used = self.preflight_remote(
            known_concept, state.deposition_id if state is not None else None)
        self.refuse_other_concept(state, concept)
        metadata = self.build_metadata(previous, used)
        self.say(f"[1/7] preflight passed: token accepted, metadata valid, version "
                 f"{self.o.version}" + (f" after {previous['metadata'].get('version')}"
                                        if previous else " (first version)"))
        if self.o.dry_run:
            return self.dry_run(concept, previous, state, metadata)
        out_dir = packages_dir(self.release)
        catalog_dir = state_dir(self.release) / RECORD_CATALOG_DIR
        # everything local is built and checked before the server is asked for a draft;
        # only stac.zip changes once the draft's reserved DOI is known (the rest is cached)
        self.package(out_dir, None, catalog_dir)
        state = state or PublishState(self.o.version, self.o.base_url, concept_id=concept)
        self.save(state)
        draft = self.open_draft(state, concept, previous)
        dep_id, bucket = int(draft["id"]), draft["links"]["bucket"]
        state.deposition_id, state.bucket = dep_id, bucket
        state.concept_id = str(draft.get("conceptrecid") or concept or "") or None
        state.html, state.stage = draft["links"].get("html"), "draft"
        self.save(state)
        self.result.deposition_id = dep_id
        pub = self.publication(draft, metadata)
        if pub is None:
            self.say(f"[2/7] draft {dep_id} has no reserved DOI: stac.zip names no record")
        else:
            self.say(f"[2/7] stac.zip names this record only: {pub.doi} (reserved)")
        manifest, wanted = self.package(out_dir, pub, catalog_dir, quiet=True)
        self.packaged = pub
        if draft.get("submitted") and draft.get("state") == "done":
            self.published_gate(draft, wanted)
            return self.write_back(state, draft, manifest, previous, metadata, wanted)
        self.sync_files(state, dep_id, bucket, out_dir, wanted,
                        lambda keys: self.package(out_dir, pub, catalog_dir, keys, True)[1])
        self.put_metadata(dep_id, metadata)
        self.gate(dep_id, wanted)
        state.stage = "verified"
        self.save(state)
        if self.o.no_publish:
            self.say(f"[6/7] --no-publish: verified draft {dep_id} left at {state.html}")
            self.result.stage = "verified"
            return self.result
        try:
            published = self.client.publish(dep_id)
        except ZenodoError as exc:
            if exc.status == 403:
                raise PublishStopped(
                    f"the token may not publish (403 from {self.o.base_url}): the verified "
                    f"draft {dep_id} is waiting at {state.html}. Publish it there, or give a "
                    "token with the deposit:actions scope and run again with --resume"
                ) from exc
            raise
        return self.write_back(state, published, manifest, previous, metadata, wanted)

    # ------------------------------------------------------------------ step 7

    def write_back(self, state: PublishState, published: dict[str, Any], manifest: Manifest,
                   previous: dict[str, Any] | None, metadata: dict[str, Any],
                   wanted: Files) -> PublishResult:
        """DOIs into the catalog, release notes and state."""
        record_id = int(published["id"])
        pub = self.publication(
            {**published, "doi": published.get("doi") or f"10.5281/zenodo.{record_id}"},
            metadata)
        assert pub is not None
        doi, conceptdoi = pub.doi, pub.conceptdoi
        if self.packaged is not None and self.packaged.doi != doi:
            self.say(f"[7/7] warning: Zenodo published DOI {doi}, not the reserved "
                     f"{self.packaged.doi} that the record's stac.zip names")
        try:
            updated = update_catalog(self.release, pub, manifest)
        except OSError as exc:
            raise PublishStopped(
                f"version {self.o.version} is published (https://doi.org/{doi}), but writing "
                f"it into the STAC catalog failed: {exc}. Fix that and run again with --resume "
                "to finish the write-back") from exc
        diff = full_diff(record_files(previous), wanted, self.previous_manifest(previous),
                         manifest) if previous else []
        write_release_notes(self.release, release_notes_section(pub, manifest, diff),
                            self.o.version)
        state.record_id, state.doi, state.conceptdoi = record_id, doi, conceptdoi
        state.stage, state.published = "published", pub.published
        self.save(state)
        record_published_concept(self.release, self.server, state.concept_id, conceptdoi,
                                 self.o.version)
        self.say(f"[7/7] published version {self.o.version}: https://doi.org/{doi} (concept "
                 f"https://doi.org/{conceptdoi}); {updated} STAC assets point into the record")
        self.result.stage, self.result.publication = "published", pub
        return self.result

    def gave_up(self, exc: ZenodoError) -> PublishStopped:
        """What to say when a request failed every try (429/5xx/timeouts): which request,
        which draft is kept, and that ``--resume`` goes on from there."""
        if self.o.dry_run:
            return PublishStopped(f"{exc}; nothing was changed: run the dry run again later")
        state = load_state(self.release)
        if state is not None and (state.version != self.o.version
                                  or state.stage == "published"):
            state = None  # another version's run, or a finished one: no draft of this run
        dep_id = self.result.deposition_id or (state.deposition_id if state else None)
        if dep_id is None:
            kept = "no draft was made yet"
        else:
            html = state.html if state is not None else None
            kept = (f"deposition {dep_id}" + (f" ({html})" if html else "")
                    + " and every file verified so far are kept")
        return PublishStopped(f"{exc}; {kept}: run again with --resume to go on from there")


def publish_release(options: PublishOptions, client: ZenodoClient, console: Console,
                    secrets: tuple[str, ...] = ()) -> PublishResult:
    """Publish (or plan, with dry_run) one release version."""
    publisher = Publisher(options, client, console, secrets)
    try:
        return publisher.run()
    except PackageError as exc:
        raise PublishRefused(str(exc)) from exc
    except ZenodoError as exc:
        if not exc.gave_up:
            raise
        raise publisher.gave_up(exc) from exc
