"""What the validator checked, file by file, so that exactly those bytes are published.

A release can change while it is being published (a producer run still writing into it, an
rsync finishing, a file edited by hand): the validator would then have passed one release and
the record would hold another. So before the validator runs, the publisher records the
release-relative path, size and sha256 of every file it is going to package (``take``), and
the product files the validator's inventory lists. Every file that then goes into a package is
compared with that record: the sha256 of each ZIP member (the ROI GeoPackages among them, in
their shelves' ZIPs) is computed while it is zipped and that of metadata.ods while it is copied
(no second read of the release), and the STAC catalog copy that ``stac.zip`` is made from is
hashed when it is made.
Any file extra, missing or different stops the run before anything is uploaded.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from producer.spec import STAC_CATALOG_DIR
from publish.package import (
    CATALOG_KEY,
    Manifest,
    PackageError,
    file_sha256,
    files_under,
    plan_packages,
)

Hashes = dict[str, tuple[int, str]]
"""Release-relative POSIX path -> (size, sha256)."""
#: Package kinds whose manifest entries list their members (the others are single files).
ZIPPED_KINDS = frozenset({"shelf", "catalog"})


class ReleaseChanged(PackageError):
    """Files to be packaged differ from the files the validator checked."""


@dataclass(frozen=True)
class ReleaseSnapshot:
    """Every file the publisher will package, as it was when the validator started."""

    files: Hashes
    catalog: frozenset[str]
    """The paths among ``files`` that ``stac.zip`` takes from the release."""
    products: tuple[str, ...]
    """Product files of the validator's inventory (release-relative)."""

    @classmethod
    def take(cls, release_dir: Path) -> ReleaseSnapshot:
        """Hash every file the packages of ``release_dir`` will hold (one read of each)."""
        from validation.inventory import scan_release

        release_dir = Path(release_dir)
        files: Hashes = {}
        catalog: set[str] = set()
        for spec in plan_packages(release_dir):
            for arcname, path in spec.members:
                files[arcname] = file_sha256(path)
                if spec.key == CATALOG_KEY:
                    catalog.add(arcname)
        products = tuple(p.rel for p in scan_release(release_dir).products)
        return cls(files, frozenset(catalog), products)

    def packaged_differences(self, manifest: Manifest, with_catalog: bool) -> Differences:
        """How the packages of ``manifest`` differ from the snapshot; ``with_catalog``: whether
        ``stac.zip`` was made from the release as it is (else from a record's catalog copy,
        checked by ``catalog_differences``)."""
        got: Hashes = {}
        for entry in manifest.entries:
            if entry.kind == "catalog" and not with_catalog:
                continue
            if entry.kind in ZIPPED_KINDS:
                got.update({m.path: (m.size, m.sha256) for m in entry.contents})
            else:
                got[entry.name] = (entry.size, entry.sha256)
        wanted = {path: value for path, value in self.files.items()
                  if with_catalog or path not in self.catalog}
        return Differences.between(wanted, got)

    def catalog_differences(self, copy_root: Path) -> Differences:
        """How the ``stac/`` folder copied into ``copy_root`` (for a record's ``stac.zip``)
        differs from the release's ``stac/`` in the snapshot. The item tables are not
        compared: the record's are made again from the copy."""
        prefix = f"{STAC_CATALOG_DIR}/"
        got = {arcname: file_sha256(path)
               for arcname, path in files_under(Path(copy_root) / STAC_CATALOG_DIR, copy_root)}
        wanted = {path: value for path, value in self.files.items()
                  if path in self.catalog and path.startswith(prefix)}
        return Differences.between(wanted, got)


@dataclass(frozen=True)
class Differences:
    """Files packaged that the validator did not see, did not package, or saw otherwise."""

    extra: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()

    @classmethod
    def between(cls, validated: Hashes, packaged: Hashes) -> Differences:
        """Compare the validated files with the packaged ones (path, size, sha256)."""
        return cls(tuple(sorted(set(packaged) - set(validated))),
                   tuple(sorted(set(validated) - set(packaged))),
                   tuple(sorted(p for p in validated
                                if p in packaged and packaged[p] != validated[p])))

    def __bool__(self) -> bool:
        return bool(self.extra or self.missing or self.changed)

    def __add__(self, other: Differences) -> Differences:
        return Differences(tuple(sorted({*self.extra, *other.extra})),
                           tuple(sorted({*self.missing, *other.missing})),
                           tuple(sorted({*self.changed, *other.changed})))

    def describe(self, release_dir: Path) -> str:
        """The message that stops the run: every file named, and what to do."""
        parts = [f"{what} {', '.join(paths)}" for what, paths in (
            ("changed since validated:", self.changed),
            ("new (not validated):", self.extra),
            ("gone (validated, not packaged):", self.missing)) if paths]
        count = len(self.changed) + len(self.extra) + len(self.missing)
        return (f"{release_dir}: the release changed after the validator checked it; "
                f"{count} file(s) would be published other than validated — "
                + "; ".join(parts) + ". Nothing was uploaded. Let whatever writes into the "
                f"release finish, validate it again (`icedamage validate {release_dir}`), "
                "then run publish again (with --resume if it reports an unfinished run)")
