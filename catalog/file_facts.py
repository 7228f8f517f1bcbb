"""What the last catalog run read from each file of a release, kept so that the next run reads
only the files that changed.

A full release is hundreds of shelf-years of rasters: hashing them, reading their grids and
counting their pixels took about a minute, all of it again after one shelf-year was
re-produced. The facts of a file (sha256, grid and tags, type-1 pixel counts, the thumbnail made
from it) are kept in ``stac/.file-facts.json`` with the file's inode, size and mtime (in
nanoseconds), the same signature the build state trusts, and used again only while all three
are unchanged, by the same software and facts format. A file whose mtime lies within
``RACY_SECONDS`` of the run that read it is read again next time (git's "racy" rule: it may
still have changed within the same mtime tick, as on file systems keeping whole seconds). A
dot-file: the packager and the STAC validator skip it. ``catalog --force`` reads every file
afresh (the escape for a file rewritten in place with its size and mtime restored).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from affine import Affine

from catalog.release import RasterFacts, file_checksum, raster_facts
from catalog.stats import PixelCounts, count_pixels
from producer.grid import Grid

FILE_FACTS = ".file-facts.json"
#: Raise when what is kept per file, or how it is read, changes (old entries are then dropped).
FACTS_FORMAT = 3
#: A file modified this close (s) to the run that read it is not trusted to the next run.
RACY_SECONDS = 2.0


def _signature(path: Path) -> list[int]:
    """Inode, size and mtime (ns): a file replaced, rewritten or touched gets another."""
    stat = path.stat()
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns]


def _facts_to_json(facts: RasterFacts) -> dict[str, Any]:
    return {"transform": list(facts.grid.transform)[:6], "width": facts.grid.width,
            "height": facts.grid.height, "crs": facts.grid.crs, "epsg": facts.epsg,
            "nodata": facts.nodata, "data_type": facts.data_type, "size": facts.size,
            "checksum": facts.checksum,
            "scene_ids": list(facts.scene_ids) if facts.scene_ids is not None else None,
            "source": facts.source, "cloud_optimized": facts.cloud_optimized}


def _facts_from_json(path: Path, data: dict[str, Any]) -> RasterFacts:
    grid = Grid(Affine(*data["transform"]), data["width"], data["height"], data["crs"])
    scene_ids = tuple(data["scene_ids"]) if data["scene_ids"] is not None else None
    return RasterFacts(path, grid, data["epsg"], data["nodata"], data["data_type"],
                       data["size"], data["checksum"], scene_ids, data["source"],
                       data["cloud_optimized"])


@dataclass
class FileFacts:
    """The facts of a release's files, from the last run where still valid, else read now.

    Every file asked about is kept for the next run (``to_json``); files no longer asked about
    (removed shelf-years) drop out.
    """

    release_dir: Path
    software: str
    known: dict[str, dict[str, Any]] = field(default_factory=dict)
    kept: dict[str, dict[str, Any]] = field(default_factory=dict)
    reads: int = 0
    """Files whose facts this run read from disk (not from the last run)."""
    started_ns: int = field(default_factory=time.time_ns)
    """When this run began (``RACY_SECONDS``)."""

    @classmethod
    def load(cls, stac_dir: Path, release_dir: Path, software: str,
             fresh: bool = False) -> FileFacts:
        """The facts kept by the last run in ``stac_dir`` (none when ``fresh``, when there is no
        such file, when it cannot be read, or when another software or format wrote it)."""
        facts = cls(Path(release_dir), software)
        path = Path(stac_dir) / FILE_FACTS
        if fresh or not path.is_file():
            return facts
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return facts  # a damaged memo costs a full read, never a wrong item
        if isinstance(data, dict) and data.get("format") == FACTS_FORMAT and \
                data.get("software") == software and isinstance(data.get("files"), dict):
            facts.known = data["files"]
        return facts

    def _entry(self, path: Path) -> dict[str, Any]:
        """This run's entry of a file: the last run's while the file's signature is the same,
        else a new one."""
        key = os.path.relpath(path, self.release_dir)
        signature = _signature(path)  # asked each time: this run may rewrite the file
        for entry in (self.kept.get(key), self.known.get(key)):
            if isinstance(entry, dict) and entry.get("signature") == signature:
                break
        else:
            entry = {"signature": signature}
        self.kept[key] = entry
        return entry

    def checksum(self, path: Path) -> str:
        """Multihash of the file's sha2-256 (``catalog.release.file_checksum``)."""
        entry = self._entry(path)
        if "checksum" not in entry:
            self.reads += 1
            entry["checksum"] = file_checksum(path)
        return entry["checksum"]

    def raster(self, path: Path) -> RasterFacts:
        """``catalog.release.raster_facts`` of the file."""
        entry = self._entry(path)
        if "raster" not in entry:
            self.reads += 1
            facts = raster_facts(path, checksum="checksum" not in entry, layout=True)
            if "checksum" in entry:
                facts = dataclasses.replace(facts, checksum=entry["checksum"])
            entry["raster"] = _facts_to_json(facts)
            entry["checksum"] = facts.checksum
        return _facts_from_json(path, entry["raster"])

    def pixel_counts(self, path: Path) -> PixelCounts:
        """``catalog.stats.count_pixels`` of a type-1 file."""
        entry = self._entry(path)
        if "counts" not in entry:
            self.reads += 1
            counts = count_pixels(path)
            entry["counts"] = [counts.damage_pixels, counts.valid_pixels, counts.pixel_area_m2]
        damage, valid, area = entry["counts"]
        return PixelCounts(damage, valid, area)

    def thumbnail_current(self, damage_map: Path, thumbnail: Path) -> bool:
        """Whether ``thumbnail`` is the one the last run made from this same ``damage_map`` and
        nobody has touched it since (so it need not be rendered again)."""
        made = self._entry(damage_map).get("thumbnail")
        return thumbnail.is_file() and made == _signature(thumbnail)

    def made_thumbnail(self, damage_map: Path, thumbnail: Path) -> None:
        """Record that ``thumbnail`` now holds the quicklook of ``damage_map``."""
        self._entry(damage_map)["thumbnail"] = _signature(thumbnail)

    def to_json(self) -> str:
        """The facts to keep for the next run: every file this run asked about, but for those
        modified within ``RACY_SECONDS`` of its start (or after it)."""
        racy = self.started_ns - int(RACY_SECONDS * 1e9)
        kept = {key: entry for key, entry in self.kept.items() if entry["signature"][2] < racy}
        return json.dumps({"format": FACTS_FORMAT, "software": self.software,
                           "files": kept}, sort_keys=True) + "\n"
