"""The ``local:DIR`` scene source: GeoTIFF scenes already on disk.

The folder (searched recursively) holds 3-band UInt8 RGB GeoTIFFs (TOA reflectance × 255, as the
authors export them; 0 in all three bands = no data), optionally with a 4th band that is a cloud
mask (non-zero = cloud or shadow). Each file's sensor and acquisition date come from, in order:

1. a sidecar ``<file>.json`` (e.g. ``scene.tif.json``) with ``sensor`` and ``date`` (ISO), and
   optionally ``shelf``, ``cloud_mask`` (a 1-band mask file, path relative to the sidecar) and
   ``source_ids`` (list of Landsat product ids);
2. the authors' export name ``<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>_uint8.tif`` (with the
   product ids from the ``SOURCE_IDS`` tag when the gee source wrote the file);
3. a leading Landsat product id (EarthExplorer downloads such as the LandsatLook natural-colour
   ``LC08_L1TP_101107_20220105_20220115_02_T1_refl.tif``).

EarthExplorer Collection 2 Level-1 products are scenes too: a folder (or ``<PRODUCT_ID>.tar``)
with ``<PRODUCT_ID>_MTL.txt``/``_MTL.json``, ``<PRODUCT_ID>_B<n>.TIF`` and ``_QA_PIXEL.TIF``
(``producer/sources/l1.py``). Their RGB bands are converted to TOA reflectance × 255 UInt8 and
QA_PIXEL bits 3/4 give their cloud mask, cropped to the ROI grid's bounds, under the work folder;
from there on they are ordinary files of this source (selected, combined, reprojected alike).

A file is used for a shelf-year when its acquisition date falls in that austral summer
(``spec.summer_of``), its sensor is plausible that summer (``Sensor.covers``; others are skipped
and listed in ``skipped``), and it belongs to the shelf: by the shelf name in the file name or
sidecar when there is one (case, spaces and '_' ignored), else by its footprint overlapping the
ROI. Files of the same sensor and day are combined into one daily scene (per-pixel median of the
files that have data there, as the authors' daily median composites), cloudy where at least half
of the files with data there are (``landsat.daily_cloud``, the gee source's rule too).

Scenes not already on the ROI grid (EPSG:3031, 30 m, same origin and size) are reprojected onto
it with ``rasterio.warp.reproject``, window by window, so memory stays bounded. RGB resampling is
nearest neighbour by default: it keeps pixel values and the sharp edges of SLC-off gaps, and it is
what Earth Engine does when it exports to a new grid, so results match the authors' exports.
``resampling="bilinear"`` is available (no-data excluded from the weights); cloud masks are always
resampled with nearest. A file already on the grid, alone on its day and without a mask band is
used in place, not copied.

Derived scenes are written atomically under the work folder and reused while their inputs (path,
size, modification time), the grid and the resampling are unchanged.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.features import geometry_mask
from rasterio.warp import reproject, transform_bounds
from rasterio.windows import Window
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from producer.grid import Grid
from producer.shelves import roi_polygon, shelf_key
from producer.sources.base import Scene
from producer.sources.errors import SourceError
from producer.sources.gee import tile_windows
from producer.sources.l1 import L1Product, find_products
from producer.sources.l1 import convert as convert_l1
from producer.sources.l1 import signature as l1_signature
from producer.sources.landsat import daily_cloud
from producer.sources.names import (
    CLOUD_MASK_SUFFIX,
    EXPORT_SUFFIX,
    export_name,
    looks_like_export_name,
    looks_like_product_id,
    parse_export_name,
    parse_product_id,
    sidecar_path,
)
from producer.spec import SENSOR_ORDER, SENSORS, SpecError, summer_of
from producer.writer import atomic_path

RESAMPLING: dict[str, Resampling] = {"nearest": Resampling.nearest,
                                     "bilinear": Resampling.bilinear}
#: GeoTIFF tag in which the gee source records the Landsat product ids of a composite.
SOURCE_IDS_TAG = "SOURCE_IDS"
WINDOW = 2048
#: Sub-folder of the work folder holding converted Level-1 products.
L1_DIR = "l1"


@dataclass(frozen=True)
class LocalFile:
    """One GeoTIFF of the folder and what we know about it before opening it."""

    path: Path
    sensor: str
    acquired: dt.date
    shelf: str | None
    source_ids: tuple[str, ...]
    cloud_mask: Path | None = None
    named_by: str = "export-name"
    l1: L1Product | None = None
    """The Level-1 product to convert first (``path`` is then its MTL or .tar)."""
    origin: Path | None = None
    """For a converted Level-1 product: its MTL or .tar (``path`` is then the conversion)."""


# --------------------------------------------------------------------------------------------
# Describing files: sidecar, export name, product id
# --------------------------------------------------------------------------------------------


def _field(record: dict[str, Any], name: str, where: Path, required: bool = True) -> Any:
    value = record.get(name)
    if required and value in (None, ""):
        raise SourceError(f"{where}: field {name!r} is missing (a sidecar needs 'sensor' and "
                          "'date'; 'shelf', 'cloud_mask' and 'source_ids' are optional)")
    return value


def read_sidecar(path: Path) -> LocalFile:
    """What the sidecar ``<path>.json`` says about the scene file ``path``."""
    where = sidecar_path(path)
    try:
        record = json.loads(where.read_text())
    except json.JSONDecodeError as exc:
        raise SourceError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object with 'sensor' and 'date'")
    sensor = str(_field(record, "sensor", where)).upper()
    if sensor not in SENSORS:
        raise SourceError(f"{where}: field 'sensor' is {sensor!r}; valid: {list(SENSOR_ORDER)}")
    date = _field(record, "date", where)
    try:
        acquired = dt.date.fromisoformat(str(date)[:10])
    except ValueError:
        raise SourceError(f"{where}: field 'date' is {date!r}; expected YYYY-MM-DD") from None
    mask = _field(record, "cloud_mask", where, required=False)
    mask_path = (where.parent / mask) if mask else companion_mask(path)
    if mask_path is not None and not mask_path.is_file():
        raise SourceError(f"{where}: field 'cloud_mask' names {mask_path}, which does not exist")
    ids = _field(record, "source_ids", where, required=False) or [path.stem]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise SourceError(f"{where}: field 'source_ids' must be a list of strings")
    shelf = _field(record, "shelf", where, required=False)
    return LocalFile(path, sensor, acquired, str(shelf) if shelf else None, tuple(ids),
                     mask_path, "sidecar")


def companion_mask(path: Path) -> Path | None:
    """The cloud mask named after an export-named scene (``<scene id>_cloud.tif`` beside it, as
    the gee source writes it), when that file exists."""
    if not looks_like_export_name(path.name):
        return None
    try:
        mask = path.parent / parse_export_name(path.name).cloud_mask_filename
    except SpecError:
        return None
    return mask if mask.is_file() else None


def describe(path: Path) -> LocalFile:
    """Sensor, date, shelf and ids of a scene file, from its sidecar or its name."""
    if sidecar_path(path).exists():
        return read_sidecar(path)
    try:
        if looks_like_export_name(path.name):
            name = parse_export_name(path.name)
            return LocalFile(path, name.sensor, name.acquired, name.shelf, (name.scene_id,),
                             companion_mask(path))
        if looks_like_product_id(path.name):
            pid = parse_product_id(path.name)
            return LocalFile(path, pid.sensor, pid.acquired, None, (pid.product_id,),
                             named_by="product-id")
    except SpecError as exc:
        raise SourceError(f"{path.parent}/{exc}") from None
    raise SourceError(
        f"{path}: cannot tell the sensor and acquisition date: the name is neither "
        "<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>_uint8.tif nor a Landsat product id "
        "(LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX...), and there is no sidecar "
        f'{sidecar_path(path).name} such as {{"sensor": "LC08", "date": "YYYY-MM-DD"}}')


def inventory(folder: Path) -> list[LocalFile]:
    """Every scene under ``folder``, described: GeoTIFFs (cloud masks, named by sidecars or
    beside their export-named scenes, and the bands of Level-1 products excluded) and Level-1
    products."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: local scene folder does not exist")
    products, owned = find_products(folder)
    tiffs = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(".")
                   and p.resolve() not in owned)
    by_sidecar = {p: read_sidecar(p) for p in tiffs if sidecar_path(p).exists()}
    masks = {f.cloud_mask.resolve() for f in by_sidecar.values() if f.cloud_mask is not None}
    masks |= {m.resolve() for m in map(companion_mask, tiffs) if m is not None}
    files = [by_sidecar.get(p) or describe(p) for p in tiffs if p.resolve() not in masks]
    return files + [LocalFile(p.source, p.sensor, p.product_id.acquired, None,
                              (p.product_id.product_id,), named_by="l1-product", l1=p)
                    for p in products]


# --------------------------------------------------------------------------------------------
# Checking and warping
# --------------------------------------------------------------------------------------------


def check_scene_file(src: rasterio.DatasetReader, path: Path) -> None:
    """Refuse files that are not 3 (RGB) or 4 (RGB + cloud mask) UInt8 bands with a CRS."""
    if src.count not in (3, 4):
        raise SourceError(f"{path}: band count is {src.count}; a scene needs 3 bands (RGB) or "
                          "4 (RGB + cloud mask)")
    if any(d != "uint8" for d in src.dtypes):
        raise SourceError(f"{path}: band data types are {list(src.dtypes)}; expected uint8 "
                          "(TOA reflectance × 255, as the authors export scenes)")
    if src.crs is None:
        raise SourceError(f"{path}: has no CRS; cannot place it on the EPSG:3031 ROI grid")


def check_mask_file(src: rasterio.DatasetReader, path: Path) -> None:
    """Refuse a cloud-mask file that is not one UInt8 band with a CRS."""
    if src.count != 1 or src.dtypes[0] != "uint8" or src.crs is None:
        raise SourceError(f"{path}: a cloud mask must be 1 band of uint8 with a CRS; found "
                          f"{src.count} band(s) of {list(src.dtypes)}, CRS {src.crs}")


def on_grid(src: rasterio.DatasetReader, grid: Grid) -> bool:
    """Whether a dataset's pixels are exactly the grid's (no reprojection needed)."""
    return (src.crs is not None and src.crs.to_string() == rasterio.crs.CRS.from_user_input(
        grid.crs).to_string() and src.width == grid.width and src.height == grid.height
        and src.transform.almost_equals(grid.transform, precision=1e-6))


def overlaps(src: rasterio.DatasetReader, roi: BaseGeometry, grid: Grid) -> bool:
    """Whether a dataset's footprint (bounding box in the grid CRS) meets the ROI."""
    bounds = transform_bounds(src.crs, grid.crs, *src.bounds, densify_pts=21)
    return box(*bounds).intersects(roi)


def warp_window(band: Any, grid: Grid, resampling: Resampling, nodata: int | None
                ) -> np.ndarray:
    """Bands of a dataset (``rasterio.band``) resampled onto one window's grid.

    ``rasterio.warp.reproject`` on dataset bands reads only the source region it needs, so
    memory stays bounded by the window. With ``nodata`` 0 a pixel is no data only when ALL its
    bands are 0 (``UNIFIED_SRC_NODATA``), and no-data pixels get no weight in bilinear
    resampling. Unlike a ``WarpedVRT`` it never takes a 4th band for an alpha band (GDAL marks
    the 4th band of a 4-band UInt8 GeoTIFF as alpha by default; ours is a cloud mask).
    """
    count = len(band.bidx) if isinstance(band.bidx, list | tuple) else 1
    out = np.zeros((count, grid.height, grid.width), np.uint8)
    extras = {"UNIFIED_SRC_NODATA": "YES"} if nodata is not None else {}
    reproject(band, out, src_nodata=nodata, dst_transform=grid.transform, dst_crs=grid.crs,
              dst_nodata=nodata, resampling=resampling, **extras)
    return out


def combine_day(rgbs: list[np.ndarray], clouds: list[np.ndarray | None]
                ) -> tuple[np.ndarray, np.ndarray]:
    """Merge one day's files of one window: RGB median over files with data, cloud mask.

    A pixel is cloudy in the daily scene when at least half of the files with data there flag
    it (``landsat.daily_cloud``): only where more than half are clear is the median of the
    files bounded by clear values. Files without a mask count as clear.
    """
    present = [np.any(rgb > 0, axis=0) for rgb in rgbs]
    if len(rgbs) == 1:
        out = rgbs[0]
    else:
        stack = np.stack([np.where(p, rgb, np.nan) for p, rgb in zip(present, rgbs, strict=True)
                          ]).astype(np.float32)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN pixels: no file has data
            med = np.nanmedian(stack, axis=0)
        out = np.nan_to_num(np.round(med), nan=0).astype(np.uint8)
    return out, daily_cloud(present, clouds)


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


class LocalFolderSource:
    """Scenes from a folder of GeoTIFFs exported from Earth Engine or EarthExplorer."""

    name = "local"

    def __init__(self, folder: Path | str, resampling: str = "nearest", top: int | None = None,
                 force: bool = False, progress: bool = True) -> None:
        if resampling not in RESAMPLING:
            raise SourceError(f"resampling {resampling!r} is not one of {sorted(RESAMPLING)}")
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise SourceError(f"{self.folder}: local scene folder does not exist")
        self.resampling = resampling
        self.top = top
        self.force = force
        self.progress = progress
        self.skipped: list[tuple[Path, str]] = []
        self._rois: dict[str, BaseGeometry] = {}

    def grid(self, shelf: str, roi: BaseGeometry) -> Grid:
        """The aligned 30 m EPSG:3031 grid covering the ROI (remembered for ``scenes``)."""
        self._rois[shelf] = roi
        return Grid.covering(roi)

    # -- selection ---------------------------------------------------------------------------

    def select(self, shelf: str, year: int, grid: Grid, roi: BaseGeometry
               ) -> dict[tuple[str, dt.date], list[LocalFile]]:
        """The folder's files of this shelf and summer, grouped by (sensor, day), checked."""
        groups: dict[tuple[str, dt.date], list[LocalFile]] = {}
        self.skipped = []
        for item in inventory(self.folder):
            if summer_of(item.acquired) != year:
                continue
            try:
                item = self._checked(item, shelf, year, roi, grid)
            except rasterio.errors.RasterioError as exc:
                raise SourceError(f"{item.path}: not a readable GeoTIFF ({exc}); replace or "
                                  "remove the file") from exc
            if item is not None:
                groups.setdefault((item.sensor, item.acquired), []).append(item)
        return {key: groups[key] for key in sorted(groups, key=lambda k: (k[1],
                                                                          SENSOR_ORDER.index(k[0])))}

    def _checked(self, item: LocalFile, shelf: str, year: int, roi: BaseGeometry,
                 grid: Grid) -> LocalFile | None:
        """A file of the summer, checked and completed from its tags; None if it is not used."""
        if item.shelf is not None and shelf_key(item.shelf) != shelf_key(shelf):
            return None
        if not SENSORS[item.sensor].covers(year):
            self.skipped.append((item.path, f"{item.sensor} is not used for summer {year}"))
            return None
        if item.l1 is not None:
            item.l1.check()  # a missing MTL field or band fails before any work
            with rasterio.open(item.l1.band_path(item.l1.rgb_bands[0])) as src:
                return item if overlaps(src, roi, grid) else None
        with rasterio.open(item.path) as src:
            check_scene_file(src, item.path)
            if item.shelf is None and not overlaps(src, roi, grid):
                return None
            tagged = src.tags().get(SOURCE_IDS_TAG, "")
        if tagged and item.named_by == "export-name":  # written by the gee source
            item = replace(item, source_ids=tuple(tagged.split(",")))
        if item.cloud_mask is not None:
            try:
                with rasterio.open(item.cloud_mask) as msk:
                    check_mask_file(msk, item.cloud_mask)
            except rasterio.errors.RasterioError as exc:
                raise SourceError(f"{item.cloud_mask}: not a readable GeoTIFF ({exc}); replace "
                                  "or remove the file") from exc
        return item

    # -- SceneSource -------------------------------------------------------------------------

    def scenes(self, shelf: str, year: int, grid: Grid, workdir: Path) -> list[Scene]:
        """The summer's daily scenes on the ROI grid, most usable first."""
        workdir = Path(workdir)
        roi = self._rois.get(shelf) or roi_polygon(shelf)
        groups = self.select(shelf, year, grid, roi)
        cache_path = workdir / f"local_{shelf}_{year}.json"
        cache = {} if self.force or not cache_path.exists() else json.loads(cache_path.read_text())
        out: list[Scene] = []
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                      disable=not self.progress) as progress:
            for (sensor, day), files in groups.items():
                files = [self._convert_l1(f, grid, workdir, cache) for f in files]
                out.append(self._day_scene(shelf, sensor, day, files, grid, roi, workdir, cache,
                                           progress))
        if groups:
            workdir.mkdir(parents=True, exist_ok=True)
            with atomic_path(cache_path) as tmp:
                tmp.write_text(json.dumps(cache, indent=2, sort_keys=True))
        out.sort(key=lambda s: (-s.valid_fraction, s.acquired, SENSOR_ORDER.index(s.sensor)))
        return out if self.top is None else out[:self.top]

    def _convert_l1(self, item: LocalFile, grid: Grid, workdir: Path, cache: dict[str, Any]
                    ) -> LocalFile:
        """A Level-1 product as a UInt8 RGB file and cloud mask (reused while its inputs and the
        grid are unchanged); other files as they are."""
        if item.l1 is None:
            return item
        pid = item.l1.product_id.product_id
        rgb = workdir / L1_DIR / f"{pid}_toa{EXPORT_SUFFIX}"
        cloud = workdir / L1_DIR / f"{pid}{CLOUD_MASK_SUFFIX}"
        signature = l1_signature(item.l1, grid)
        key = f"l1:{pid}"
        if not (cache.get(key) == signature and rgb.exists() and cloud.exists()):
            if not convert_l1(item.l1, grid, rgb, cloud):
                raise SourceError(f"{item.l1.where}: the product's pixels do not reach the ROI "
                                  "grid although its footprint overlaps the ROI")
            cache[key] = signature
        return replace(item, path=rgb, cloud_mask=cloud, l1=None, origin=item.path)

    def _signature(self, files: list[LocalFile], grid: Grid) -> str:
        parts: list[Any] = [list(grid.transform)[:6], grid.width, grid.height, grid.crs,
                            self.resampling]
        for f in files:
            for p in (f.path, f.cloud_mask):
                if p is not None:
                    st = p.stat()
                    parts.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def _day_scene(self, shelf: str, sensor: str, day: dt.date, files: list[LocalFile],
                   grid: Grid, roi: BaseGeometry, workdir: Path, cache: dict[str, Any],
                   progress: Progress) -> Scene:
        name = export_name(sensor, shelf, day)
        signature = self._signature(files, grid)
        in_place = len(files) == 1 and files[0].cloud_mask is None and self._in_place(files[0],
                                                                                        grid)
        path = files[0].path if in_place else workdir / name.filename
        has_cloud = any(f.cloud_mask is not None or self._bands(f.path) == 4 for f in files)
        cloud_path = workdir / f"{name.scene_id}_cloud.tif" if has_cloud else None
        cached = cache.get(name.scene_id)
        if (cached and cached["signature"] == signature and path.exists()
                and (cloud_path is None or cloud_path.exists())):
            fraction = float(cached["valid_fraction"])
        else:
            fraction = self._build(files, grid, roi, None if in_place else path, cloud_path,
                                   progress, name.filename)
            cache[name.scene_id] = {"signature": signature, "valid_fraction": fraction}
        return Scene(
            scene_id=name.scene_id, sensor=sensor, acquired=day, path=path,
            valid_fraction=fraction, cloud_mask_path=cloud_path,
            source_ids=tuple(i for f in files for i in f.source_ids),
            metadata={"files": [str(f.origin or f.path) for f in files],
                      "named_by": [f.named_by for f in files],
                      "reprojected": not all(self._in_place(f, grid) for f in files),
                      "resampling": self.resampling, "used_in_place": in_place},
        )

    @staticmethod
    def _bands(path: Path) -> int:
        with rasterio.open(path) as src:
            return src.count

    @staticmethod
    def _in_place(item: LocalFile, grid: Grid) -> bool:
        with rasterio.open(item.path) as src:
            return src.count == 3 and on_grid(src, grid)

    def _windows(self, files: list[LocalFile], grid: Grid
                 ) -> Iterator[tuple[Window, list[np.ndarray], list[np.ndarray | None]]]:
        """Per output window, each file's RGB and cloud mask resampled onto the grid."""
        resampling = RESAMPLING[self.resampling]
        with contextlib.ExitStack() as stack:
            opened = [(stack.enter_context(rasterio.open(f.path)),
                       None if f.cloud_mask is None else
                       stack.enter_context(rasterio.open(f.cloud_mask))) for f in files]
            for window in tile_windows(grid, WINDOW):
                sub = grid.subgrid(window)
                rgbs, clouds = [], []
                for src, mask in opened:
                    rgbs.append(warp_window(rasterio.band(src, [1, 2, 3]), sub, resampling, 0))
                    cloud_band = (rasterio.band(mask, [1]) if mask is not None else
                                  rasterio.band(src, [4]) if src.count == 4 else None)
                    clouds.append(None if cloud_band is None else
                                  warp_window(cloud_band, sub, Resampling.nearest, None)[0])
                yield window, rgbs, clouds

    def _build(self, files: list[LocalFile], grid: Grid, roi: BaseGeometry, path: Path | None,
               cloud_path: Path | None, progress: Progress, label: str) -> float:
        """Write the daily scene (and mask) on the grid; return its usable fraction of the ROI."""
        windows = tile_windows(grid, WINDOW)
        task = progress.add_task(f"{self.name}: {label}", total=len(windows))
        profile = {"driver": "GTiff", "width": grid.width, "height": grid.height,
                   "dtype": "uint8", "crs": grid.crs, "transform": grid.transform,
                   "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "lzw",
                   "BIGTIFF": "IF_SAFER"}
        usable = roi_pixels = 0
        with contextlib.ExitStack() as stack:
            rgb_out = None if path is None else _output(stack, path, 3, profile)
            cloud_out = None if cloud_path is None else _output(stack, cloud_path, 1, profile)
            for window, rgbs, clouds in self._windows(files, grid):
                rgb, cloud = combine_day(rgbs, clouds)
                sub = grid.subgrid(window)
                inside = geometry_mask([roi], out_shape=sub.shape, transform=sub.transform,
                                       invert=True)
                usable += int(np.count_nonzero(inside & np.any(rgb > 0, axis=0) & ~cloud))
                roi_pixels += int(np.count_nonzero(inside))
                if rgb_out is not None:
                    rgb_out.write(rgb, window=window)
                if cloud_out is not None:
                    cloud_out.write(cloud.astype(np.uint8), 1, window=window)
                progress.advance(task)
        return usable / roi_pixels if roi_pixels else 0.0


def _output(stack: contextlib.ExitStack, path: Path, count: int, profile: dict[str, Any]) -> Any:
    """A GeoTIFF opened for writing at a temporary path renamed to ``path`` on success."""
    tmp = stack.enter_context(atomic_path(path))
    return stack.enter_context(rasterio.open(tmp, "w", count=count, **profile))
