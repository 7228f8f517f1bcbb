"""Bundle a release into the few files a Zenodo record can hold, reproducibly.

A record holds at most 100 files and no folders (bucket keys cannot contain "/"), while a release
has hundreds of files in ``<Shelf>/<YYYY>/`` folders. So each shelf becomes one ZIP
``<key>.zip`` holding ``<Shelf>/<YYYY>/…`` and, at its root, the shelf's ROI GeoPackage
``<Shelf>_ROI.gpkg``; the STAC catalog and the GeoParquet/NDJSON item tables become
``stac.zip``; metadata.ods travels as it is. Extracting every ZIP of a record into one folder,
beside metadata.ods, gives back the release layout: names with spaces ("Larsen B/…",
"Larsen B_ROI.gpkg", which the catalog's relative hrefs name) only ever travel inside a ZIP,
where they keep their spelling, never as a key.

ZIP entries are *stored* (no compression; the COGs are LZW-compressed already), so every COG
sits contiguously inside its ZIP and GDAL reads it in place with ``/vsizip//vsicurl/<url>/…``
using HTTP range requests. Entries are sorted, timestamped 1980-01-01 and marked 0644, so
building twice gives byte-identical files with the same md5 (unchanged shelves are then not
re-uploaded to a new version).

Keys are ASCII ``[A-Za-z0-9._-]`` (``safe_key``): "Pine Island" becomes "Pine_Island.zip". A
key is the last segment of every download URL (``/records/<id>/files/<key>``) and of the
``/vsicurl/`` hrefs written into the catalog, where a space is not valid (curl refuses it, and
Zenodo's web pages and APIs would each spell it their own way). The manifest records every
name -> key mapping (``record_key_map``).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import zipfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from producer.spec import (
    ITEMS_NDJSON,
    ITEMS_PARQUET,
    METADATA_ODS,
    RECORD_MANIFEST,
    ROI_GEOPACKAGE_SUFFIX,
    STAC_CATALOG_DIR,
    is_year_dir,
)
from producer.writer import atomic_path

MANIFEST_KEY = RECORD_MANIFEST
CATALOG_KEY = "stac.zip"
#: Hidden file beside the packages: the inputs and hashes of each package last built.
BUILD_CACHE = ".build-cache.json"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)
_SAFE = re.compile(r"[A-Za-z0-9._-]+")
_CHUNK = 1 << 20


class PackageError(ValueError):
    """The release cannot be packaged as it is (the message names the file and the rule)."""


def safe_key(name: str) -> str:
    """An ASCII bucket key for a name: anything outside [A-Za-z0-9._-] becomes "_"."""
    key = re.sub(r"[^A-Za-z0-9._-]", "_", name).strip(".")
    if not key or not _SAFE.fullmatch(key):
        raise PackageError(f"cannot make a Zenodo key from {name!r}")
    return key


@dataclass(frozen=True)
class PackageSpec:
    """What one uploaded file will hold: its key and (archive name, source path) members."""

    key: str
    kind: str
    name: str
    members: tuple[tuple[str, Path], ...]
    zipped: bool = True


@dataclass(frozen=True)
class Member:
    """One file inside a ZIP package: its path there, size and sha256."""

    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class ManifestEntry:
    """One uploaded file: key, size, hashes, what it is and what it contains."""

    key: str
    size: int
    md5: str
    sha256: str
    kind: str
    name: str
    contents: tuple[Member, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """Every file of a record version (except manifest.json itself) and the key mapping."""

    version: str
    entries: tuple[ManifestEntry, ...]
    key_map: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        """Stable JSON (sorted keys, entries in key order)."""
        data = {"version": self.version, "key_map": dict(sorted(self.key_map.items())),
                "files": [asdict(e) for e in sorted(self.entries, key=lambda e: e.key)]}
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Manifest:
        """Parse ``to_json`` output."""
        data = json.loads(text)
        entries = tuple(ManifestEntry(**{**e, "contents": tuple(Member(**m)
                                                                for m in e["contents"])})
                        for e in data["files"])
        return cls(data["version"], entries, data.get("key_map", {}))

    def by_key(self) -> dict[str, ManifestEntry]:
        """Entries by key."""
        return {e.key: e for e in self.entries}


def record_file_url(record_url: str, key: str) -> str:
    """Download URL of one file of a published record (answers HTTP range requests)."""
    return f"{record_url.rstrip('/')}/files/{key}"


def record_key_map(specs: Iterable[PackageSpec]) -> dict[str, str]:
    """Release name -> key of the record's file that holds it: every top-level folder of the
    release packaged (a shelf, ``stac``) and every file at the release root, inside a ZIP
    (an ROI GeoPackage in its shelf's ZIP, the item tables in ``stac.zip``) or on its own."""
    key_map = {spec.name: spec.key for spec in specs}
    for spec in specs:
        if spec.zipped:
            key_map.update({arcname: spec.key for arcname, _ in spec.members
                            if "/" not in arcname})
    return key_map


def release_file_href(record_url: str, key_map: dict[str, str], inner: str) -> str | None:
    """Where the release file at release-relative POSIX path ``inner`` lives in a published
    record: inside a ZIP (its shelf's, or ``stac.zip``), as a GDAL path that reads it in place
    over HTTP (members are stored, not deflated; the path inside the ZIP keeps its spaces), or
    as a file of its own (a URL); None for files the record lacks. ``key_map`` is the record's
    (``Manifest.key_map``): a record published before the ROI GeoPackages moved into the shelf
    ZIPs maps them to keys of their own, and its hrefs resolve as that record holds them."""
    key = key_map.get(inner.split("/", 1)[0])
    if key is None:
        return None
    if key.endswith(".zip"):
        return f"/vsizip//vsicurl/{record_file_url(record_url, key)}/{inner}"
    return record_file_url(record_url, key) if "/" not in inner else None


def file_hashes(path: Path) -> tuple[int, str, str]:
    """Size, md5 and sha256 of a file, read in chunks."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def file_sha256(path: Path) -> tuple[int, str]:
    """Size and sha256 of a file (what the publisher records of each file before the validator
    runs; md5 is not needed there). The hash is ``producer.provenance.file_sha256``'s, which
    the validator's checksum rules then reuse instead of reading the release again."""
    from producer.provenance import file_sha256 as sha256_of

    return Path(path).stat().st_size, sha256_of(Path(path))


def walk_files(root: Path) -> Iterator[Path]:
    """Every regular file under ``root``, following symbolic links to folders as the validator
    does (a linked year folder is validated, so it must be packaged); each real folder is
    entered once, so a link to an ancestor cannot loop. Paths keep the linked spelling."""
    seen: set[tuple[int, int]] = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        try:
            stat = os.stat(folder)
        except OSError:
            dirs[:] = []
            continue
        if (stat.st_dev, stat.st_ino) in seen:
            dirs[:] = []
            continue
        seen.add((stat.st_dev, stat.st_ino))
        dirs.sort()
        for name in sorted(files):
            path = Path(folder) / name
            if path.is_file():
                yield path


def files_under(root: Path, base: Path) -> list[tuple[str, Path]]:
    """(posix path relative to base, path) of every regular file under root, sorted.

    Hidden files and folders (the publisher's own state folder among them) are never packaged.
    """
    return sorted((p.relative_to(base).as_posix(), p) for p in walk_files(root)
                  if not any(part.startswith(".") for part in p.relative_to(base).parts))


def shelf_dirs(release_dir: Path) -> list[Path]:
    """Top-level shelf folders: those holding <YYYY> sub-folders."""
    return sorted(p for p in release_dir.iterdir()
                  if p.is_dir() and not p.name.startswith(".") and p.name != STAC_CATALOG_DIR
                  and any(c.is_dir() and is_year_dir(c.name) for c in p.iterdir()))


def plan_packages(release_dir: Path, catalog_root: Path | None = None) -> list[PackageSpec]:
    """The files a record of this release holds, before anything is written.

    ``catalog_root`` is where ``stac/`` and the item tables for ``stac.zip`` are taken from:
    the release itself by default, or the copy the publisher prepares for one record (whose
    catalog names that record only; see ``publish.writeback.record_catalog``).
    """
    release_dir = Path(release_dir)
    source = Path(catalog_root) if catalog_root is not None else release_dir
    # A shelf's ROI GeoPackage goes into the shelf's ZIP, at its root under its own name: the
    # collection links it as ``../../<Shelf>_ROI.gpkg``, and a key of its own would have to be
    # ASCII ("Larsen_B_ROI.gpkg"), which no href names. The products are made and measured
    # within the ROI, so it changes with them: bundling costs a new version no extra upload.
    rois = {gpkg.name[: -len(ROI_GEOPACKAGE_SUFFIX)]: gpkg
            for gpkg in sorted(release_dir.glob(f"*{ROI_GEOPACKAGE_SUFFIX}")) if gpkg.is_file()}
    specs: list[PackageSpec] = []
    for shelf in shelf_dirs(release_dir):
        members = files_under(shelf, release_dir)
        roi = rois.pop(shelf.name, None)
        if roi is not None:
            members.append((roi.name, roi))
        specs.append(PackageSpec(safe_key(shelf.name) + ".zip", "shelf", shelf.name,
                                 tuple(sorted(members))))
    for name, roi in sorted(rois.items()):
        # the ROI of a shelf without products (the validator warns): a ZIP of its own still,
        # so that it too arrives under its real name
        shelf = name or roi.name
        specs.append(PackageSpec(safe_key(shelf) + ".zip", "shelf", shelf, ((roi.name, roi),)))
    catalog: list[tuple[str, Path]] = []
    stac = source / STAC_CATALOG_DIR
    if stac.is_dir():
        catalog += files_under(stac, source)
    for name in (ITEMS_PARQUET, ITEMS_NDJSON):
        if (source / name).is_file():
            catalog.append((name, source / name))
    if catalog:
        specs.append(PackageSpec(CATALOG_KEY, "catalog", STAC_CATALOG_DIR, tuple(catalog)))
    ods = release_dir / METADATA_ODS
    if ods.is_file():
        specs.append(PackageSpec(safe_key(ods.name), "metadata", ods.name,
                                 ((ods.name, ods),), zipped=False))
    _check_unique(specs)
    return specs


def _check_unique(specs: Iterable[PackageSpec]) -> None:
    seen: dict[str, str] = {}
    for spec in specs:
        if spec.key == MANIFEST_KEY or spec.key in seen:
            other = seen.get(spec.key, MANIFEST_KEY)
            raise PackageError(f"{spec.name!r} and {other!r} both map to the key {spec.key!r}; "
                               "rename one of them")
        seen[spec.key] = spec.name


def write_zip(target: Path, members: Iterable[tuple[str, Path]]) -> tuple[Member, ...]:
    """A stored (uncompressed) ZIP with fixed timestamps, permissions and order, atomically;
    what it holds (path, size and sha256 of the bytes written for each member, computed
    while zipping)."""
    written = []
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf:
        for arcname, path in sorted(members):
            info = zipfile.ZipInfo(arcname, date_time=ZIP_EPOCH)
            info.compress_type = zipfile.ZIP_STORED
            info.create_system = 3
            info.external_attr = (0o100644 & 0xFFFF) << 16
            size = path.stat().st_size
            info.file_size = size
            digest, done = hashlib.sha256(), 0
            with open(path, "rb") as src, zf.open(info, "w",
                                                   force_zip64=size > zipfile.ZIP64_LIMIT) as dst:
                while chunk := src.read(_CHUNK):
                    dst.write(chunk)
                    digest.update(chunk)
                    done += len(chunk)
            # what was written, hashed on the way (a file changing meanwhile shows here)
            written.append(Member(arcname, done, digest.hexdigest()))
    return tuple(written)


def _copy(target: Path, source: Path) -> tuple[int, str, str]:
    """Copy a file atomically; size, md5 and sha256 of the bytes copied (hashed on the way,
    so the bytes packaged are compared with the validated ones without reading them again)."""
    md5, sha = hashlib.md5(), hashlib.sha256()
    size = 0
    with atomic_path(target) as tmp, open(source, "rb") as src, open(tmp, "wb") as dst:
        while chunk := src.read(_CHUNK):
            dst.write(chunk)
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
    return size, md5.hexdigest(), sha.hexdigest()


def inputs_fingerprint(spec: PackageSpec) -> str:
    """Digest of a package's inputs (archive names, sizes, modification times)."""
    digest = hashlib.sha256(f"{spec.key}|{spec.zipped}".encode())
    for arcname, path in sorted(spec.members):
        stat = path.stat()
        digest.update(f"\n{arcname}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def _load_cache(out_dir: Path) -> dict[str, dict[str, object]]:
    path = out_dir / BUILD_CACHE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _cache_valid(known: dict[str, object], fingerprint: str, target: Path) -> bool:
    """Whether a package built earlier can be reused: same inputs, and the file on disk is
    still the one that was built (same size and modification time; anything that rewrote it,
    even to the same size, changes the time)."""
    if known.get("inputs") != fingerprint or not target.is_file():
        return False
    stat = target.stat()
    return stat.st_size == known.get("size") and stat.st_mtime_ns == known.get("mtime_ns")


def _build_one(spec: PackageSpec, target: Path) -> tuple[tuple[Member, ...], int, str, str]:
    """Write one package; (members, size, md5, sha256) of what was written."""
    if not spec.zipped:
        return (), *_copy(target, spec.members[0][1])
    contents = write_zip(target, spec.members)
    size, md5, sha = file_hashes(target)
    return contents, size, md5, sha


def build_packages(release_dir: Path, out_dir: Path, version: str,
                   catalog_root: Path | None = None,
                   rebuild: Iterable[str] = ()) -> Manifest:
    """Write every package of the release into ``out_dir`` plus manifest.json; the manifest.

    A package whose inputs (names, sizes, mtimes) are unchanged since the last build in
    ``out_dir``, and whose file is untouched since (size and mtime), is kept as it is
    (re-running skips done work); keys in ``rebuild`` are written anew regardless (the
    publisher found their bytes damaged). Files in ``out_dir`` that no longer belong to the
    release are removed, so the folder holds exactly what the record will hold.
    ``catalog_root``: see ``plan_packages``.
    """
    release_dir, out_dir = Path(release_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    specs = plan_packages(release_dir, catalog_root)
    if not specs:
        raise PackageError(f"{release_dir}: nothing to publish (no shelf folders, catalog, "
                           f"{METADATA_ODS} or GeoPackages)")
    cache, fresh = _load_cache(out_dir), {}
    forced = set(rebuild)
    entries = []
    for spec in specs:
        target = out_dir / spec.key
        fingerprint = inputs_fingerprint(spec)
        known = cache.get(spec.key, {})
        if spec.key not in forced and _cache_valid(known, fingerprint, target):
            size, md5, sha = int(known["size"]), str(known["md5"]), str(known["sha256"])
            contents = tuple(Member(**m) for m in known.get("contents", []))  # type: ignore
        else:
            contents, size, md5, sha = _build_one(spec, target)
        fresh[spec.key] = {"inputs": fingerprint, "size": size, "md5": md5, "sha256": sha,
                           "mtime_ns": target.stat().st_mtime_ns,
                           "contents": [asdict(m) for m in contents]}
        entries.append(ManifestEntry(spec.key, size, md5, sha, spec.kind, spec.name, contents))
    keep = {spec.key for spec in specs} | {MANIFEST_KEY}
    for stale in out_dir.iterdir():
        if stale.is_file() and stale.name not in keep and not stale.name.startswith("."):
            stale.unlink()
    manifest = Manifest(version, tuple(entries), record_key_map(specs))
    with atomic_path(out_dir / MANIFEST_KEY) as tmp:
        tmp.write_text(manifest.to_json())
    with atomic_path(out_dir / BUILD_CACHE) as tmp:
        tmp.write_text(json.dumps(fresh, indent=1, sort_keys=True) + "\n")
    return manifest


def read_manifest(out_dir: Path) -> Manifest:
    """The manifest written by ``build_packages``."""
    return Manifest.from_json((Path(out_dir) / MANIFEST_KEY).read_text())


def member_diff(previous: Manifest, current: Manifest) -> list[str]:
    """Files added, changed and removed inside the ZIP packages between two manifests."""
    lines = []
    before = {m.path: m for e in previous.entries for m in e.contents}
    after = {m.path: m for e in current.entries for m in e.contents}
    lines += [f"added {p}" for p in sorted(after) if p not in before]
    lines += [f"changed {p}" for p in sorted(after)
              if p in before and before[p].sha256 != after[p].sha256]
    lines += [f"removed {p}" for p in sorted(before) if p not in after]
    return lines
