"""Reading a release folder: which shelf-years it holds, and the facts of each raster file.

This is the catalog's I/O layer for products: it finds ``<Shelf>/<YYYY>/`` folders, groups the
files of a shelf-year by their shared stem (names parsed with ``producer.spec``), and reads what
the STAC builders need from each raster (grid, nodata, data type, size, checksum) without
loading whole rasters into memory.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import rasterio
from rasterio.errors import NotGeoreferencedWarning

from producer.grid import Grid
from producer.provenance import Provenance, file_sha256, provenance_path, read_provenance
from producer.spec import (
    AUXILIARY_SUFFIXES,
    DEMO_SOURCE,
    SCENE_IDS_TAG,
    SOURCE_TAG,
    TYPE1,
    TYPE2,
    ProductName,
    SpecError,
    is_demo_source,
    is_year_dir,
    parse_name,
)

#: Multihash prefix of a sha2-256 digest (code 0x12, length 0x20), as the file extension wants.
MULTIHASH_SHA256 = "1220"


@dataclass(frozen=True)
class RasterFacts:
    """What the catalog records about one raster file."""

    path: Path
    grid: Grid
    epsg: int | None
    nodata: float | None
    data_type: str
    size: int
    checksum: str
    """Multihash (sha2-256) in hex."""
    scene_ids: tuple[str, ...] | None = None
    """A source-scene index's scene ids (its ``SCENE_IDS_TAG``), pixel value i → the i-th."""
    source: str | None = None
    """The scene source a product file names in its ``SOURCE_TAG`` (None: untagged)."""
    cloud_optimized: bool | None = None
    """Whether the file is tiled and rio-cogeo finds it a valid COG (the authors' maps may be
    plain striped GeoTIFFs, which rio-cogeo passes when small): its asset's media type says
    which. None: not looked at (``raster_facts(layout=False)``)."""


def tagged_source(facts: Iterable[RasterFacts]) -> str | None:
    """The scene source the product files name: demo when any says demo (demo maps must
    never pass for real ones), else the one source they all name, else None (unknown)."""
    sources = {f.source for f in facts}
    if any(is_demo_source(source) for source in sources):
        return DEMO_SOURCE
    return sources.pop() if len(sources) == 1 else None


@dataclass(frozen=True)
class ShelfYearFiles:
    """The files of one shelf-year found in a release (type-1 name as the key)."""

    name: ProductName
    folder: Path
    damage_map: Path | None
    damage: Path | None
    auxiliary: dict[str, Path] = field(default_factory=dict)
    """Role (see AUXILIARY_SUFFIXES) -> path of each auxiliary file present."""

    @property
    def provenance(self) -> Provenance | None:
        """The provenance record, when the producer wrote one; ValueError naming the file when
        it exists but cannot be read (the catalog must not describe the maps without it)."""
        record, error = self.provenance_or_error()
        if error is not None:
            raise ValueError(f"{self.auxiliary['provenance']}: unreadable provenance record "
                             f"({error}); restore it (or re-run produce for "
                             f"{self.name.shelf} {self.name.year}) — deleting it loses the "
                             "scenes, models and demo flag of the maps")
        return record

    def provenance_or_error(self) -> tuple[Provenance | None, str | None]:
        """The provenance record (None without one) and, when its file exists but cannot be
        read (garbled JSON, fields missing), why; the validator reports that file instead of
        letting one bad record abort its checks of every other shelf-year."""
        path = self.auxiliary.get("provenance")
        if path is None:
            return None, None
        try:
            return read_provenance(path), None
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            # JSONDecodeError and UnicodeDecodeError are ValueErrors
            return None, f"{type(error).__name__}: {error}"


def file_checksum(path: Path) -> str:
    """Multihash hex of a file's sha2-256 digest (``1220`` + 64 hex digits)."""
    return MULTIHASH_SHA256 + file_sha256(path)


def raster_facts(path: Path, checksum: bool = True, layout: bool = False) -> RasterFacts:
    """Grid, nodata, data type, size and checksum of a raster file, and with ``layout`` whether
    it is cloud-optimized (rio-cogeo's check: the catalog's media type; the validator's rules
    have their own and skip it, 1,560 files' worth of a 260-item release)."""
    with rasterio.open(path) as src:
        grid = Grid(src.transform, src.width, src.height,
                    src.crs.to_string() if src.crs else "")
        epsg = src.crs.to_epsg() if src.crs else None
        nodata, dtype = src.nodata, src.dtypes[0]
        tags = src.tags()
        tiled = bool(src.profile.get("tiled"))
    return RasterFacts(path, grid, epsg, nodata, dtype, path.stat().st_size,
                       file_checksum(path) if checksum else "",
                       _scene_ids(tags.get(SCENE_IDS_TAG)), tags.get(SOURCE_TAG),
                       (tiled and is_cloud_optimized(path)) if layout else None)


def is_cloud_optimized(path: Path) -> bool:
    """rio-cogeo's verdict on the file's layout (tiles, overviews, header first); only the TIFF
    structure is read, without georeferencing or sidecars."""
    from rio_cogeo.cogeo import cog_validate

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        valid, _, _ = cog_validate(path, quiet=True, config={"GDAL_GEOREF_SOURCES": "NONE",
                                                              "GDAL_PAM_ENABLED": "NO"})
    return bool(valid)


def _scene_ids(tag: str | None) -> tuple[str, ...] | None:
    """The scene ids of a ``SCENE_IDS_TAG`` value, or None when absent or not a JSON list of
    strings (the asset then names no scenes rather than wrong ones)."""
    try:
        ids = json.loads(tag) if tag is not None else None
    except json.JSONDecodeError:
        return None
    if isinstance(ids, list) and all(isinstance(i, str) for i in ids):
        return tuple(ids)
    return None


def _shelf_year_folders(release_dir: Path) -> list[Path]:
    """``<Shelf>/<YYYY>`` folders under the release root, sorted."""
    folders = []
    for shelf_dir in sorted(p for p in release_dir.iterdir() if p.is_dir()):
        if shelf_dir.name.startswith("."):
            continue
        folders.extend(sorted(p for p in shelf_dir.iterdir()
                              if p.is_dir() and is_year_dir(p.name)))
    return folders


def _auxiliary(folder: Path, name: ProductName) -> dict[str, Path]:
    found = {}
    for role in AUXILIARY_SUFFIXES:
        path = folder / name.auxiliary(role)
        if role == "provenance":
            path = provenance_path(folder.parent.parent, name)
        if path.exists():
            found[role] = path
    return found


def unparsed_files(release_dir: Path, found: list[ShelfYearFiles]) -> list[Path]:
    """GeoTIFFs in the shelf-year folders that are neither a product nor an auxiliary file of
    one (e.g. ``LC8_Brunt_2018_damage_map.tif``): a catalog run leaves them out and says so,
    rather than publishing a release that silently lacks them."""
    known = {f.folder / n for f in found for n in (
        *(p.name for p in (f.damage_map, f.damage) if p is not None),
        *(f.name.auxiliary(role) for role in AUXILIARY_SUFFIXES))}
    return [tif for folder in _shelf_year_folders(Path(release_dir))
            for tif in sorted(folder.glob("*.tif")) if tif not in known]


def scan_release(release_dir: Path) -> list[ShelfYearFiles]:
    """Every shelf-year of a release with its product and auxiliary files.

    Files whose names do not parse as products are ignored here (the validator reports them);
    a shelf-year appears when at least one of its two products exists.
    """
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise FileNotFoundError(f"{release_dir}: release folder not found")
    found: list[ShelfYearFiles] = []
    for folder in _shelf_year_folders(release_dir):
        stems: dict[str, dict[int, Path]] = {}
        names: dict[str, ProductName] = {}
        for tif in sorted(folder.glob("*.tif")):
            try:
                parsed = parse_name(tif.name)
            except SpecError:
                continue
            stems.setdefault(parsed.stem, {})[parsed.product_type.number] = tif
            names[parsed.stem] = parsed if parsed.product_type is TYPE1 else parsed.partner()
        for stem, files in sorted(stems.items()):
            name = names[stem]
            found.append(ShelfYearFiles(name, folder, files.get(TYPE1.number),
                                        files.get(TYPE2.number), _auxiliary(folder, name)))
    return found
