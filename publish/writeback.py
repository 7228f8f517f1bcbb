"""After publication: DOIs into the STAC catalog, Zenodo hrefs onto assets, release notes.

The STAC collection gets the scientific extension's ``sci:doi`` (this version's DOI),
``sci:citation`` and a ``cite-as`` link, plus links to the concept DOI (all versions) and the
Zenodo record. Each asset of a product file gets an ``alternate`` href that reads the file in
place inside its shelf ZIP on Zenodo: ``/vsizip//vsicurl/<base>/records/<id>/files/<key>/<path>``.
The catalog is rewritten in a copy and swapped in, so a failure leaves the old one intact (and
no working folder behind).

The record's own ``stac.zip`` is made from a separate copy (``record_catalog``): earlier
write-backs stripped, this record's reserved DOI and hrefs written in, so each record's catalog
names that record only.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pystac
from pystac.extensions.scientific import ScientificExtension

from catalog.build import forget_index, reindex
from catalog.stac import DATASET_CITATION
from producer.spec import RELEASE_NOTES, STAC_CATALOG_DIR
from producer.writer import atomic_path
from publish.package import Manifest, release_file_href

ALTERNATE_SCHEMA = "https://stac-extensions.github.io/alternate-assets/v1.2.0/schema.json"
ALTERNATE_NAME = "zenodo"
CONCEPT_TITLE = "All versions (concept DOI)"
RECORD_TITLE = "Zenodo record"


@dataclass(frozen=True)
class Publication:
    """What Zenodo assigned to a published version."""

    record_id: int
    doi: str
    conceptdoi: str
    version: str
    base_url: str
    citation: str
    published: str

    @property
    def record_url(self) -> str:
        """Landing page of this version."""
        return f"{self.base_url}/records/{self.record_id}"


def citation_text(creators: list[dict], title: str, version: str, year: int, doi: str) -> str:
    """"Family, G., Family, G. (YYYY): Title (Version V) [Data set]. Zenodo. https://doi.org/…"."""
    names = ", ".join(_short_name(c.get("name", "")) for c in creators)
    return f"{names} ({year}): {title} (Version {version}) [Data set]. Zenodo. https://doi.org/{doi}"


def _short_name(name: str) -> str:
    family, _, given = name.partition(",")
    initials = " ".join(f"{part[0]}." for part in given.split() if part)
    return f"{family.strip()}, {initials}" if initials else family.strip()


def zenodo_href(pub: Publication, key_map: dict[str, str], stac_dir: Path,
                href: str) -> str | None:
    """Where a local release file lives in the record: inside its shelf ZIP (a GDAL path) or
    as a file of its own (a URL); None for files the record does not hold."""
    # lexically, not resolve(): a symlinked year folder is part of the release (validated and
    # packaged under its own name), not wherever the link points
    root = Path(os.path.normpath(os.path.abspath(stac_dir.parent)))
    try:
        inner = Path(os.path.normpath(os.path.abspath(href))).relative_to(root).as_posix()
    except ValueError:
        return None
    return release_file_href(pub.record_url, key_map, inner)


def _collections(root: pystac.Catalog) -> list[pystac.Collection]:
    found = [root] if isinstance(root, pystac.Collection) else []
    return found + list(root.get_all_collections())


def _ours(link: pystac.Link) -> bool:
    """Whether a link is one the publisher writes (cite-as, concept DOI, record page)."""
    return link.rel == "cite-as" or (link.title or "").startswith((CONCEPT_TITLE, RECORD_TITLE))


def strip_publication(root: pystac.Catalog) -> None:
    """Remove what any earlier write-back put into the catalog (DOI, citation, version links,
    asset alternates into a record), so that nothing names a record it does not belong to.

    A re-catalog carries these fields over on purpose, so a catalog may hold those of the
    previous version, or of a rehearsal on a test server.
    """
    for collection in _collections(root):
        collection.extra_fields.pop("sci:doi", None)
        collection.extra_fields["sci:citation"] = DATASET_CITATION
        collection.links = [link for link in collection.links if not _ours(link)]
    for obj in [*_collections(root), *root.get_items(recursive=True)]:
        for asset in obj.assets.values():
            alternates = dict(asset.extra_fields.get("alternate", {}))
            alternates.pop(ALTERNATE_NAME, None)
            if alternates:
                asset.extra_fields["alternate"] = alternates
            else:
                asset.extra_fields.pop("alternate", None)
        if ALTERNATE_SCHEMA in obj.stac_extensions and not any(
                "alternate" in a.extra_fields for a in obj.assets.values()):
            obj.stac_extensions.remove(ALTERNATE_SCHEMA)


def apply_publication(root: pystac.Catalog, pub: Publication, key_map: dict[str, str],
                      stac_dir: Path) -> int:
    """Write one record's DOI, citation, links and asset alternates into a loaded catalog
    saved under ``stac_dir`` (after stripping any earlier ones); the assets given one."""
    strip_publication(root)
    for collection in _collections(root):
        sci = ScientificExtension.ext(collection, add_if_missing=True)
        sci.doi = pub.doi  # pystac adds a cite-as link of its own: ours replaces it
        sci.citation = pub.citation
        collection.links = [link for link in collection.links if not _ours(link)]
        collection.add_link(pystac.Link("cite-as", f"https://doi.org/{pub.doi}",
                                        title=f"Version {pub.version}"))
        for rel, href, title in (
                ("related", f"https://doi.org/{pub.conceptdoi}", CONCEPT_TITLE),
                ("alternate", pub.record_url, f"{RECORD_TITLE} {pub.record_id}")):
            collection.add_link(pystac.Link(rel, href, media_type="text/html", title=title))
    updated = 0
    for obj in [*_collections(root), *root.get_items(recursive=True)]:
        for asset in obj.assets.values():
            href = zenodo_href(pub, key_map, stac_dir, asset.get_absolute_href() or "")
            if href is None:
                continue
            alternates = dict(asset.extra_fields.get("alternate", {}))
            alternates[ALTERNATE_NAME] = {"href": href, "title": f"On Zenodo (record "
                                                                 f"{pub.record_id})"}
            asset.extra_fields["alternate"] = alternates
            updated += 1
            if ALTERNATE_SCHEMA not in obj.stac_extensions:
                obj.stac_extensions.append(ALTERNATE_SCHEMA)
    return updated


def work_folders(release_dir: Path) -> tuple[Path, Path]:
    """The write-back's two sibling folders of ``stac/`` (new copy, old catalog); siblings keep
    relative hrefs valid, and no dot (pystac reads dotted names as files)."""
    release_dir = Path(release_dir)
    return (release_dir / f"_{STAC_CATALOG_DIR}_publish_tmp",
            release_dir / f"_{STAC_CATALOG_DIR}_publish_old")


def clean_work_folders(release_dir: Path) -> list[str]:
    """Tidy what an interrupted write-back left at the release root (the validator would
    refuse it as strays): an old catalog whose swap did not finish goes back to ``stac/``;
    the working copy is removed. The names of the folders dealt with."""
    release_dir = Path(release_dir)
    work, old = work_folders(release_dir)
    stac = release_dir / STAC_CATALOG_DIR
    done = []
    if old.is_dir() and not stac.exists():
        os.replace(old, stac)
        done.append(old.name)
    for folder in (work, old):
        if folder.exists():
            shutil.rmtree(folder)
            done.append(folder.name)
    return done


def update_catalog(release_dir: Path, pub: Publication, manifest: Manifest) -> int:
    """Write the publication into the STAC catalog; the number of assets given an alternate.

    Works on a copy that is swapped in; whatever fails, no working folder stays behind. The
    copy's build state forgets the item index before the swap and records the rewritten one
    after it, so a run interrupted in between leaves a catalog that ``icedamage catalog``
    rebuilds (keeping the DOIs) and ``search`` refuses, never a stale index taken as current.
    """
    release_dir = Path(release_dir)
    stac = release_dir / STAC_CATALOG_DIR
    if not (stac / "catalog.json").is_file():
        return 0
    clean_work_folders(release_dir)
    work, old = work_folders(release_dir)
    try:
        shutil.copytree(stac, work)
        forget_index(work)  # the index at the root describes the catalog being replaced
        root = pystac.Catalog.from_file(str(work / "catalog.json"))
        updated = apply_publication(root, pub, manifest.key_map, work)
        root.save()
        os.replace(stac, old)
        os.replace(work, stac)
    finally:
        clean_work_folders(release_dir)
    # search reads items.parquet / items.ndjson: they must carry the Zenodo hrefs too
    reindex(release_dir)
    return updated


def record_catalog(release_dir: Path, work: Path, pub: Publication | None,
                   key_map: dict[str, str],
                   copied: Callable[[Path], None] | None = None) -> Path | None:
    """The catalog and item tables one record's ``stac.zip`` holds, prepared in ``work``.

    A copy of the release's ``stac/`` with every earlier write-back removed and, when the
    record's DOI is known (Zenodo reserves it for the draft), that record's own DOI, citation
    and hrefs written in; the item tables are rebuilt from it. So a new version never carries
    the previous version's DOI, nor a rehearsal the test server's links. None when the release
    has no catalog (then ``stac.zip`` is packaged from the release as it is).
    ``copied(work)`` is called once the copy is made, before it is changed (the publisher
    compares it with the catalog the validator checked).
    """
    stac = Path(release_dir) / STAC_CATALOG_DIR
    if not (stac / "catalog.json").is_file():
        return None
    work = Path(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    copy = work / STAC_CATALOG_DIR
    shutil.copytree(stac, copy)
    if copied is not None:
        copied(work)
    root = pystac.Catalog.from_file(str(copy / "catalog.json"))
    if pub is None:
        strip_publication(root)
    else:
        apply_publication(root, pub, key_map, copy)
    root.save()
    reindex(work)  # the copied build state then records this copy's index, not the release's
    return work


def release_notes_section(pub: Publication, manifest: Manifest, diff_lines: list[str]) -> str:
    """The Markdown section of one version."""
    lines = [f"## Version {pub.version} ({pub.published})", "",
             f"- DOI of this version: https://doi.org/{pub.doi}",
             f"- Concept DOI (all versions, resolves to the latest): "
             f"https://doi.org/{pub.conceptdoi}",
             f"- Zenodo record: {pub.record_url}", f"- Cite as: {pub.citation}", "",
             "| File | Size (bytes) | MD5 | Holds |", "|---|---:|---|---|"]
    for entry in sorted(manifest.entries, key=lambda e: e.key):
        lines.append(f"| {entry.key} | {entry.size} | {entry.md5} | {entry.name} |")
    lines += ["", "Changes since the previous version:", ""]
    lines += [f"- {line}" for line in diff_lines] or ["- first version"]
    return "\n".join(lines) + "\n"


NOTES_HEADER = "# Release notes\n\n"


def _heading_version(section: str) -> str | None:
    """The version of a section written by ``release_notes_section``: its first line is
    ``## Version <v> (<date>)``."""
    heading = section.split("\n", 1)[0]
    match = re.fullmatch(r"## Version (.+?)(?: \([^()]*\))?\s*", heading)
    return match[1] if match else None


def _sections(body: str) -> list[str]:
    """The text of RELEASE_NOTES below its header, cut before each ``## `` heading."""
    return [part for part in re.split(r"(?m)^(?=## )", body) if part]


def write_release_notes(release_dir: Path, section: str, version: str | None = None) -> Path:
    """Put the section of ``version`` (default: the one its heading names) into RELEASE_NOTES,
    atomically: in place of that version's section when the file has one (a write-back that
    was interrupted after writing the notes, then resumed, must not list the version twice),
    else first, as the newest."""
    path = Path(release_dir) / RELEASE_NOTES
    old = path.read_text() if path.is_file() else NOTES_HEADER
    body = old[len(NOTES_HEADER):] if old.startswith(NOTES_HEADER) else old
    version = version or _heading_version(section)
    parts = _sections(body)
    same = [i for i, part in enumerate(parts)
            if version is not None and _heading_version(part) == version]
    if same:
        parts[same[0]] = section
        parts = [part for i, part in enumerate(parts) if i not in same[1:]]  # listed once
        text = NOTES_HEADER + "\n".join(part.rstrip("\n") + "\n" for part in parts)
    else:
        text = NOTES_HEADER + section + ("\n" + body if body.strip() else "")
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path


def today_utc() -> dt.date:
    """Today's date in UTC (Zenodo's publication dates are UTC)."""
    return dt.datetime.now(dt.UTC).date()
