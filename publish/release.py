"""Publish a validated release to Zenodo as a new record or a new version, in seven steps.

1. Preflight: validator, no demo products on the real Zenodo, token, metadata, limits.
2. Package: one stored ZIP per shelf, catalog ZIP, metadata.ods, GeoPackages, manifest.
3. Draft: reuse the concept's draft, else newversion (or create); drop inherited extras.
4. Upload: stream what the server lacks, verify each checksum, record progress in the state.
5. Metadata: PUT it whole, read it back, compare.
6. Publish gate: the draft's files must equal the manifest; then publish (or stop: --no-publish).
7. Write back: DOIs into the STAC catalog, release notes, state.

Every step is recorded in the state file, so a crashed run continues with ``--resume``; a
dry run prints the requests it would send and the file changes against the previous version.
"""

from __future__ import annotations

import datetime as dt
import tempfile
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

from producer.provenance import read_provenance
from producer.spec import AUXILIARY_SUFFIXES, RELEASE_METADATA
from publish.metadata import (
    MetadataError,
    build_metadata,
    load_release_yaml,
    metadata_differences,
    metadata_problems,
)
from publish.package import (
    MANIFEST_KEY,
    Manifest,
    PackageError,
    build_packages,
    file_hashes,
    member_diff,
)
from publish.state import FileState, PublishState, load_state, packages_dir, save_state
from publish.writeback import (
    Publication,
    citation_text,
    release_notes_section,
    today_utc,
    update_catalog,
    write_release_notes,
)
from publish.zenodo import ZenodoClient, ZenodoError, public_record

MAX_FILES = 100
MAX_BYTES = 50 * 10**9
UPLOAD_VERIFY_ATTEMPTS = 3
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


def record_files(record: dict[str, Any]) -> Files:
    """key -> (size, md5) of a published record (records API format)."""
    return {f["key"]: (int(f["size"]), str(f["checksum"]).split(":")[-1])
            for f in record.get("files", [])}


def demo_products(release_dir: Path) -> list[str]:
    """Provenance records of products made from the offline demo source."""
    suffix = AUXILIARY_SUFFIXES["provenance"]
    found = []
    for path in sorted(Path(release_dir).rglob(f"*{suffix}")):
        if any(part.startswith(".") for part in path.relative_to(release_dir).parts):
            continue
        try:
            if read_provenance(path).demo:
                found.append(path.relative_to(release_dir).as_posix())
        except (ValueError, KeyError, TypeError):
            continue  # unreadable records are the validator's business
    return found


def validation_problems(release_dir: Path) -> list[str]:
    """Errors the release validator finds (warnings do not block publication)."""
    from validation.engine import validate_release

    report = validate_release(Path(release_dir))
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
        """Validator and demo check (before any request)."""
        problems = validation_problems(self.release)
        if problems:
            shown = "\n  ".join(problems[:20])
            more = f"\n  … and {len(problems) - 20} more" if len(problems) > 20 else ""
            raise PublishRefused(f"{self.release}: the validator found {len(problems)} "
                                 f"error(s); fix them first:\n  {shown}{more}")
        demo = demo_products(self.release)
        if demo and not self.o.allow_demo:
            raise PublishRefused(
                f"{self.release}: {len(demo)} product(s) were made from the offline demo "
                f"source (provenance source == 'demo'), e.g. {demo[0]}; demo products are "
                "never published to Zenodo (use --sandbox or --url to try the workflow)")

    def preflight_remote(self, known_concept: str | None, own_id: int | None,
                         ) -> tuple[str | None, dict[str, Any] | None, set[str]]:
        """Token check, concept, previous version, versions already used.

        ``own_id`` is the deposition of an interrupted run: if Zenodo published it before the
        crash, its version is ours (not taken) and the previous version is the one before it.
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
            if exc.status == 404:
                raise PublishRefused(f"concept {concept}: no published version on "
                                     f"{self.o.base_url}") from exc
            raise
        assert previous is not None
        conceptrecid = str(previous["conceptrecid"])
        if previous.get("id") == own_id:
            previous = max(versions, key=lambda v: int(v["id"])) if versions else None
        used = {str(v.get("metadata", {}).get("version")) for v in versions}
        return conceptrecid, previous, used

    def build_metadata(self, previous: dict[str, Any] | None, used: set[str]) -> dict[str, Any]:
        """Deposition metadata from release.yaml, validated locally."""
        path = self.o.metadata_path or self.release / RELEASE_METADATA
        raw = load_release_yaml(path)
        previous_doi = previous.get("doi") if previous else None
        metadata = build_metadata(raw, self.o.version, previous_doi, self.o.today)
        problems = metadata_problems(metadata, used, previous_doi)
        if problems:
            raise MetadataError(str(path), problems)
        return metadata

    # ------------------------------------------------------------------ step 2

    def package(self, out_dir: Path) -> tuple[Manifest, Files]:
        """Build the packages; the manifest and every wanted file (manifest.json included)."""
        manifest = build_packages(self.release, out_dir, self.o.version)
        wanted: Files = {e.key: (e.size, e.md5) for e in manifest.entries}
        size, md5, _ = file_hashes(out_dir / MANIFEST_KEY)
        wanted[MANIFEST_KEY] = (size, md5)
        total = sum(s for s, _ in wanted.values())
        self.say(f"[2/7] packaged {len(wanted)} files ({total} bytes): "
                 + ", ".join(sorted(wanted)))
        problems = limit_problems(len(wanted), total)
        if problems:
            raise PublishRefused("; ".join(problems))
        return manifest, wanted

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

    def dry_run(self, concept: str | None, previous: dict[str, Any] | None,
                state: PublishState | None) -> PublishResult:
        """Print the requests a real run would send and the file changes; change nothing."""
        with tempfile.TemporaryDirectory(prefix="icedamage-dry-run-") as tmp:
            manifest, wanted = self.package(Path(tmp))
        previous_files = self.previous_files(previous) if previous else {}
        draft = None
        if state and state.deposition_id:
            try:
                draft = self.client.deposition(state.deposition_id)
            except ZenodoError:
                draft = None
        if draft is None and concept:
            draft = self.client.concept_draft(concept)
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
        plan += [f"PUT {bucket}/{k} ({wanted[k][0]} bytes)" for k in rec.upload]
        plan += [f"PUT {self.client.api}/{dep} (metadata, version {self.o.version})",
                 f"GET {self.client.api}/{dep} (read back metadata)",
                 f"GET {self.client.api}/{dep}/files (publish gate)"]
        if not self.o.no_publish:
            plan.append(f"POST {self.client.api}/{dep}/actions/publish")
        diff = full_diff(previous_files, wanted, self.previous_manifest(previous), manifest)
        self.say("[dry run] planned requests:")
        for line in plan:
            self.say(f"  {line}")
        self.say("[dry run] files against the previous version"
                 + (f" {previous['metadata'].get('version')}:" if previous else " (none):"))
        for line in diff:
            self.say(f"  {line}")
        self.say(f"[dry run] {len(manifest.entries) + 1} files, "
                 f"{sum(s for s, _ in wanted.values())} bytes; nothing was changed")
        return PublishResult(stage="dry-run", planned=plan, diff=diff)

    # ------------------------------------------------------------------ step 3

    def open_draft(self, state: PublishState, concept: str | None,
                   previous: dict[str, Any] | None) -> dict[str, Any]:
        """The draft to fill: the one in the state, the concept's draft, or a new one."""
        if state.deposition_id is not None:
            try:
                dep = self.client.deposition(state.deposition_id)
                self.say(f"[3/7] continuing with deposition {dep['id']}")
                return dep
            except ZenodoError as exc:
                if exc.status != 404:
                    raise
                self.say(f"[3/7] deposition {state.deposition_id} is gone; starting again")
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
                   wanted: Files) -> None:
        """Delete extras, upload what differs, verify every checksum."""
        remote = self.client.files(dep_id)
        rec = reconcile(remote, wanted)
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
            rec = reconcile(remote, wanted)
            raise PublishStopped(f"deposition {dep_id}: files differ from the manifest "
                                 f"(extra {list(rec.delete)}, missing or different "
                                 f"{list(rec.upload)}); not publishing — run again with "
                                 "--resume")
        self.say(f"[6/7] draft {dep_id} holds exactly the {len(wanted)} manifest files")

    # ------------------------------------------------------------------ run

    def run(self) -> PublishResult:
        """All steps; raises PublishRefused / PublishStopped / ZenodoError / MetadataError."""
        self.say(f"[1/7] preflight of {self.release} for {self.o.base_url}")
        self.preflight_local()
        state = load_state(self.release)
        known_concept = state.concept_id if state is not None else None
        if state is not None and (state.version != self.o.version
                                  or state.base_url != self.o.base_url):
            if state.stage != "published" and not self.o.dry_run:
                raise PublishRefused(
                    f"a publication of version {state.version} to {state.base_url} is "
                    f"unfinished (stage {state.stage}, deposition {state.deposition_id}); "
                    "finish it with --resume and that version, or delete "
                    f"{self.release}/.icedamage-publish")
            state = None
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
        metadata = self.build_metadata(previous, used)
        self.say(f"[1/7] preflight passed: token accepted, metadata valid, version "
                 f"{self.o.version}" + (f" after {previous['metadata'].get('version')}"
                                        if previous else " (first version)"))
        if self.o.dry_run:
            return self.dry_run(concept, previous, state)
        out_dir = packages_dir(self.release)
        manifest, wanted = self.package(out_dir)
        state = state or PublishState(self.o.version, self.o.base_url, concept_id=concept)
        self.save(state)
        draft = self.open_draft(state, concept, previous)
        dep_id, bucket = int(draft["id"]), draft["links"]["bucket"]
        state.deposition_id, state.bucket = dep_id, bucket
        state.concept_id = str(draft.get("conceptrecid") or concept or "") or None
        state.html, state.stage = draft["links"].get("html"), "draft"
        self.save(state)
        self.result.deposition_id = dep_id
        if draft.get("submitted") and draft.get("state") == "done":
            return self.write_back(state, draft, manifest, previous, metadata, wanted)
        self.sync_files(state, dep_id, bucket, out_dir, wanted)
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
        doi = published.get("doi") or f"10.5281/zenodo.{record_id}"
        conceptdoi = published.get("conceptdoi") or \
            f"10.5281/zenodo.{published.get('conceptrecid')}"
        citation = citation_text(metadata.get("creators", []), metadata.get("title", ""),
                                 self.o.version, int(metadata["publication_date"][:4]), doi)
        pub = Publication(record_id, doi, conceptdoi, self.o.version, self.o.base_url,
                          citation, metadata["publication_date"])
        updated = update_catalog(self.release, pub, manifest)
        diff = full_diff(record_files(previous), wanted, self.previous_manifest(previous),
                         manifest) if previous else []
        write_release_notes(self.release, release_notes_section(pub, manifest, diff))
        state.record_id, state.doi, state.conceptdoi = record_id, doi, conceptdoi
        state.stage, state.published = "published", pub.published
        self.save(state)
        self.say(f"[7/7] published version {self.o.version}: https://doi.org/{doi} (concept "
                 f"https://doi.org/{conceptdoi}); {updated} STAC assets point into the record")
        self.result.stage, self.result.publication = "published", pub
        return self.result


def publish_release(options: PublishOptions, client: ZenodoClient, console: Console,
                    secrets: tuple[str, ...] = ()) -> PublishResult:
    """Publish (or plan, with dry_run) one release version."""
    try:
        return Publisher(options, client, console, secrets).run()
    except PackageError as exc:
        raise PublishRefused(str(exc)) from exc
