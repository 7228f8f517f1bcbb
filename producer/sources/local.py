"""The ``local:DIR`` scene source: GeoTIFF scenes already on disk.

The folder (searched recursively) holds 3-band UInt8 RGB GeoTIFFs (TOA reflectance × 255, as the
authors export them; 0 in all three bands = no data), optionally with a 4th band that is a cloud
mask (non-zero = cloud or shadow). Each file's sensor and acquisition date come from, in order:

1. a sidecar ``<file>.json`` (e.g. ``scene.tif.json``; UTF-8, a byte-order mark allowed) with
   ``sensor`` and ``date`` (ISO; a date-time with a time zone counts by its UTC date), and
   optionally ``shelf``, ``cloud_mask`` (a 1-band mask file, path relative to the sidecar) and
   ``source_ids`` (list of Landsat product ids; without it none are recorded);
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
(``spec.summer_of``), its sensor is plausible that summer (``Sensor.covers``), and it belongs to
the shelf: by the shelf name in the file name or sidecar when there is one (case, spaces and '_'
ignored), else by its footprint overlapping the ROI. Only then are its bands checked, so a bad
file of another shelf does not stop this one. Files left out for a reason the user should know
(an implausible sensor, an unregistered shelf name, a second copy of a product, a cloud mask
whose scene is gone) are listed in ``skipped``; ``explain`` words them, with the files of
neighbouring summers, for a year that cannot be mapped. Files of the same sensor and day are
combined into one daily scene (per-pixel median of the files that have data there, as the
authors' daily median composites), cloudy where at least half of the files with data there are
(``landsat.daily_cloud``, the gee source's rule too). One Landsat product is used once a day.

A file's own no-data marking is honoured: a per-dataset mask (internal or ``.msk``), a nodata tag
(an integer 0-255; pixels with it in all three bands) and an alpha 4th band (colour
interpretation alpha, only 0 and 255, 255 on every pixel with data, as ``gdalwarp -dstalpha``
writes it) all become 0 in the scene delivered; any other 4th band is a cloud mask.

Scenes not already on the ROI grid (EPSG:3031, 30 m, same origin and size) are reprojected onto
it with ``rasterio.warp.reproject``, window by window, so memory stays bounded. RGB resampling is
nearest neighbour by default: it keeps pixel values and the sharp edges of SLC-off gaps, and it is
what Earth Engine does when it exports to a new grid, so results match the authors' exports.
``resampling="bilinear"`` is available (no-data excluded from the weights); cloud masks are always
resampled with nearest. A file already on the grid, alone on its day, with three bands and no
no-data marking other than 0 (no per-dataset mask, nodata tag absent or 0) is used in place, not
copied: the producer reads 0 in all bands as its only no-data.

Each daily scene carries a signature of its files (paths, sizes and modification times of the
scene files, cloud masks, sidecars and Level-1 product files; the grid; the resampling), which
enters the shelf-year's inputs digest (``Scene.digest_key``): a file replaced by a new export or
a second file of the same day redoes the shelf-year. ``scene_keys`` gives the same keys from the
file selection alone, so an up-to-date shelf-year is skipped before any scene is built. Derived
scenes are written atomically under the work folder and reused while that signature holds.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import math
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from pyproj import Transformer
from pyproj.exceptions import ProjError
from rasterio.enums import ColorInterp, MaskFlags, Resampling
from rasterio.errors import CRSError, RasterioError
from rasterio.features import geometry_mask
from rasterio.warp import (
    reproject,
    transform_bounds,
    transform_geom,
)
from rasterio.windows import Window
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from shapely.geometry import box, mapping, shape
from shapely.geometry.base import BaseGeometry

from producer.grid import Grid
from producer.shelves import SHELVES, closest_shelf_name, roi_polygon, shelf_key
from producer.sources.base import Scene, scene_key, summer_span
from producer.sources.errors import SourceError
from producer.sources.gee import tile_windows
from producer.sources.l1 import L1Product, find_products
from producer.sources.l1 import convert as convert_l1
from producer.sources.l1 import signature as l1_signature
from producer.sources.landsat import daily_cloud
from producer.sources.names import (
    CLOUD_MASK_SUFFIX,
    EXPORT_SUFFIX,
    cloud_mask_scene,
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
#: Rows read at a time when a 4th band is examined (bounds memory: 4 bands × rows × width).
CHUNK_ROWS = 512
#: A 4th band flagging more than this share of a file's data pixels as cloud is reported.
ALL_CLOUD_SHARE = 0.99
#: Most skipped files a message lists one by one.
MAX_LISTED = 12
#: A scene's pixels may be at most this many times the ROI grid's (30 m: at most 45 m),
#: measured in the grid's CRS (EPSG:3031): a coarser scene resampled onto the grid would give
#: a "30 m" map without 30 m detail (e.g. a 300 m preview, or Earth Engine's default export
#: scale of 1000 m when ``scale`` is left out). Finer scenes (15 m) are resampled as usual.
MAX_PIXEL_FACTOR = 1.5
#: The CRS in which a scene's pixel size is measured (the grid's).
PIXEL_SIZE_CRS = "EPSG:3031"


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
    fourth: str | None = None
    """What a 4th band is, once examined: "cloud" (a cloud mask) or "alpha" (validity)."""
    composite_id: str | None = None
    """The export name's composite id (sensor, shelf, day) of a file without known product
    ids: not a Landsat product id, so not recorded as one, but it tells two copies of one
    export apart from two exports (``_product_key``)."""


# --------------------------------------------------------------------------------------------
# Describing files: sidecar, export name, product id
# --------------------------------------------------------------------------------------------


def _field(record: dict[str, Any], name: str, where: Path, required: bool = True) -> Any:
    value = record.get(name)
    if required and value in (None, ""):
        raise SourceError(f"{where}: field {name!r} is missing (a sidecar needs 'sensor' and "
                          "'date'; 'shelf', 'cloud_mask' and 'source_ids' are optional)")
    return value


def _sidecar_date(value: Any, where: Path) -> dt.date:
    """The acquisition date of a sidecar's 'date': an ISO date, or an ISO date-time whose UTC
    date is taken when it has a time zone (Landsat acquisition dates are UTC days, as Earth
    Engine's; a local time can fall on the next or previous day)."""
    try:
        stamp = dt.datetime.fromisoformat(str(value))
    except ValueError:
        raise SourceError(f"{where}: field 'date' is {value!r}; expected YYYY-MM-DD (or an ISO "
                          "date-time, converted to UTC when it has a time zone)") from None
    if stamp.tzinfo is not None:
        stamp = stamp.astimezone(dt.UTC)
    return stamp.date()


def read_sidecar(path: Path) -> LocalFile:
    """What the sidecar ``<path>.json`` says about the scene file ``path`` (UTF-8, a leading
    byte-order mark allowed, as Windows editors write it)."""
    where = sidecar_path(path)
    try:
        record = json.loads(where.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise SourceError(f"{where}: not UTF-8 text ({exc})") from exc
    except json.JSONDecodeError as exc:
        raise SourceError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object with 'sensor' and 'date'")
    sensor = str(_field(record, "sensor", where)).upper()
    if sensor not in SENSORS:
        raise SourceError(f"{where}: field 'sensor' is {sensor!r}; valid: {list(SENSOR_ORDER)}")
    acquired = _sidecar_date(_field(record, "date", where), where)
    mask = _field(record, "cloud_mask", where, required=False)
    mask_path = (where.parent / mask) if mask else companion_mask(path)
    if mask_path is not None and not mask_path.is_file():
        raise SourceError(f"{where}: field 'cloud_mask' names {mask_path}, which does not exist")
    ids = _field(record, "source_ids", where, required=False) or []  # unknown: none recorded
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
            name = parse_export_name(path.name)  # product ids: the gee source's tag, if any
            return LocalFile(path, name.sensor, name.acquired, name.shelf, (),
                             companion_mask(path), composite_id=name.scene_id)
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


#: A file of the folder that is not used whatever the year: (path, its date, why).
Orphan = tuple[Path, dt.date, str]


def _missing(folder: Path) -> str:
    """Why a path is no scene folder: it is a file, or nothing is there."""
    return "is a file, not a folder" if folder.exists() else "does not exist"


def inventory(folder: Path) -> tuple[list[LocalFile], list[Orphan]]:
    """Every scene under ``folder``, described: GeoTIFFs (cloud masks, named by sidecars or
    beside their export-named scenes, and the bands of Level-1 products excluded) and Level-1
    products; and the export-named cloud masks whose scene is gone (not scenes, not errors)."""
    if not folder.is_dir():
        raise SourceError(f"{folder}: local scene folder {_missing(folder)}")
    products, owned = find_products(folder)
    tiffs = sorted(p for p in folder.rglob("*") if p.is_file()
                   and p.suffix.lower() in (".tif", ".tiff") and not p.name.startswith(".")
                   and p.resolve() not in owned)
    by_sidecar = {p: read_sidecar(p) for p in tiffs if sidecar_path(p).exists()}
    masks = {f.cloud_mask.resolve() for f in by_sidecar.values() if f.cloud_mask is not None}
    masks |= {m.resolve() for m in map(companion_mask, tiffs) if m is not None}
    files: list[LocalFile] = []
    orphans: list[Orphan] = []
    for path in (p for p in tiffs if p.resolve() not in masks):
        scene_of_mask = None if path in by_sidecar else cloud_mask_scene(path.name)
        if scene_of_mask is not None:
            orphans.append((path, scene_of_mask[1], f"cloud mask without its scene "
                            f"{scene_of_mask[0]} beside it: not used (restore the scene or "
                            "remove the mask)"))
        else:
            files.append(by_sidecar.get(path) or describe(path))
    return files + [LocalFile(p.source, p.sensor, p.product_id.acquired, None,
                              (p.product_id.product_id,), named_by="l1-product", l1=p)
                    for p in products], orphans


# --------------------------------------------------------------------------------------------
# Checking and warping
# --------------------------------------------------------------------------------------------


def check_crs(src: rasterio.DatasetReader, path: Path) -> None:
    """Refuse a file without a CRS: it cannot be placed on the grid, nor tested for overlap."""
    if src.crs is None:
        raise SourceError(f"{path}: has no CRS; cannot place it on the EPSG:3031 ROI grid")


def check_scene_file(src: rasterio.DatasetReader, path: Path, grid: Grid | None = None) -> None:
    """Refuse files that are not 3 (RGB) or 4 (RGB + cloud mask or alpha) UInt8 bands with a
    CRS, whose nodata tag cannot be honoured on UInt8 pixels, or whose pixels are coarser than
    ``MAX_PIXEL_FACTOR`` × the ROI grid's (``grid``; default 30 m)."""
    if src.count not in (3, 4):
        raise SourceError(f"{path}: band count is {src.count}; a scene needs 3 bands (RGB) or "
                          "4 (RGB + cloud mask, or RGB + alpha)")
    if any(d != "uint8" for d in src.dtypes):
        raise SourceError(f"{path}: band data types are {list(src.dtypes)}; expected uint8 "
                          "(TOA reflectance × 255, as the authors export scenes)")
    check_crs(src, path)
    nodata = src.nodata
    if nodata is not None and not (float(nodata).is_integer() and 0 <= nodata <= 255):
        raise SourceError(f"{path}: nodata tag is {nodata}; on UInt8 bands it must be an integer "
                          "0-255 (pixels with that value in all three bands are no data); fix "
                          "the tag (gdal_edit.py -a_nodata) or remove it (-unsetnodata)")
    check_pixel_size(src, path, grid)


def pixel_size_m(src: rasterio.DatasetReader) -> float | None:
    """A file's pixel size in metres of EPSG:3031, the larger of its two sides, so that files in
    EPSG:4326 (degrees), UTM or EPSG:3976 are judged alike: its own where it is in EPSG:3031,
    else the lengths in EPSG:3031 of one column step and one row step at the file's centre (a
    warp's suggested resolution would average the sides: 120 m × 30 m in EPSG:4326 read as
    41 m). None when it cannot be measured (no CRS, a footprint GDAL cannot transform)."""
    if src.crs is None:
        return None
    try:
        if src.crs == rasterio.crs.CRS.from_user_input(PIXEL_SIZE_CRS):
            return float(max(abs(src.res[0]), abs(src.res[1])))
        t = src.transform
        col, row = src.width / 2, src.height / 2
        corners = [t * (col, row), t * (col + 1, row), t * (col, row + 1)]
        # pyproj gives inf for a point it cannot project (a corner beyond the pole)
        xs, ys = Transformer.from_crs(src.crs.to_wkt(), PIXEL_SIZE_CRS, always_xy=True
                                      ).transform([c[0] for c in corners],
                                                  [c[1] for c in corners])
    except (CRSError, RasterioError, ValueError, ProjError):
        return None
    sides = [math.hypot(xs[k] - xs[0], ys[k] - ys[0]) for k in (1, 2)]
    return float(max(sides)) if all(math.isfinite(v) for v in sides) else None


def check_pixel_size(src: rasterio.DatasetReader, path: Path, grid: Grid | None = None) -> None:
    """Refuse a scene coarser than ``MAX_PIXEL_FACTOR`` × the grid's pixel (30 m: 45 m), as
    measured by ``pixel_size_m``: resampled onto the grid it would make a map whose pixels
    claim a detail the scene does not have."""
    cell = max(grid.resolution) if grid is not None else 30.0
    size, limit = pixel_size_m(src), MAX_PIXEL_FACTOR * cell
    if size is not None and size > limit + 1e-6:
        raise SourceError(
            f"{path}: its pixels are {size:.1f} m (measured in {PIXEL_SIZE_CRS}); a scene may "
            f"be at most {limit:g} m ({MAX_PIXEL_FACTOR:g} × the {cell:g} m grid), as a coarser "
            f"one resampled onto the {cell:g} m grid gives a map without {cell:g} m detail; "
            f"export it at {cell:g} m (Earth Engine: scale {cell:g}; without a scale an export "
            "is 1000 m) or remove it")


def footprint(src: rasterio.DatasetReader, crs: Any) -> BaseGeometry:
    """A dataset's footprint (its bounds' outline, densified) in ``crs``."""
    outline = box(*src.bounds)
    outline = outline.segmentize(max(outline.length / 4 / 20, 1e-9))
    if src.crs == rasterio.crs.CRS.from_user_input(crs):
        return outline
    return shape(transform_geom(src.crs, crs, mapping(outline)))


def check_mask_covers(mask: rasterio.DatasetReader, mask_path: Path,
                      scene: rasterio.DatasetReader, scene_path: Path, grid: Grid) -> None:
    """Refuse a cloud mask that does not cover its scene where the scene lies on the ROI grid
    (within a grid pixel): the mask is resampled onto the grid as the scene is, and pixels it
    leaves out would count as clear."""
    need = footprint(scene, grid.crs).intersection(box(*grid.bounds))
    if need.is_empty or need.area == 0:
        return
    tolerance = max(grid.resolution)
    covered = footprint(mask, grid.crs)
    if need.difference(covered.buffer(tolerance, join_style="mitre")).area <= 1.0:
        return
    share = need.intersection(covered).area / need.area
    raise SourceError(
        f"{mask_path}: the cloud mask of {scene_path} covers {share:.1%} of the scene on the ROI "
        "grid; a cloud mask must cover its scene's grid (pixels outside the mask would count as "
        "clear): write the mask on the scene's grid (same CRS, bounds and pixels), or remove it")


def has_dataset_mask(src: rasterio.DatasetReader) -> bool:
    """Whether the file carries its own validity mask (internal or ``.msk``, not an alpha band):
    GDAL applies it when warping, but a reader of the raw pixels would miss it."""
    flags = src.mask_flag_enums[0]
    return MaskFlags.per_dataset in flags and MaskFlags.alpha not in flags


def rgb_nodata(src: rasterio.DatasetReader) -> int:
    """The value of no data in the file's RGB: its nodata tag (checked), else 0."""
    return 0 if src.nodata is None else int(src.nodata)


def unreadable(path: Path | str, exc: Exception) -> SourceError:
    """The error for a file whose header opened but whose pixels cannot be read."""
    cause = f": {exc.__cause__}" if exc.__cause__ is not None else ""
    return SourceError(f"{path}: cannot read pixels ({exc}{cause}); the file is truncated or "
                       "corrupt — replace or remove it")


def is_alpha_band(src: rasterio.DatasetReader, path: Path) -> bool:
    """Whether a 4-band file's 4th band is an alpha (validity) band rather than a cloud mask:
    colour interpretation alpha, only the values 0 and 255, and 255 on every pixel with data
    (as ``gdalwarp -dstalpha`` writes it). A cloud mask is 0 on clear data pixels.

    GDAL marks the 4th band of any 4-band UInt8 GeoTIFF as alpha by default, so the
    interpretation alone cannot tell; the values are read row chunk by row chunk.
    """
    if src.count != 4 or src.colorinterp[3] != ColorInterp.alpha:
        return False
    nodata = rgb_nodata(src)
    for row in range(0, src.height, CHUNK_ROWS):
        window = Window(0, row, src.width, min(CHUNK_ROWS, src.height - row))
        try:
            pixels = src.read(window=window)
        except RasterioError as exc:
            raise unreadable(path, exc) from exc
        rgb, alpha = pixels[:3], pixels[3]
        data = np.any(rgb != 0, axis=0)
        if nodata:
            data &= ~np.all(rgb == nodata, axis=0)
        if np.any((alpha != 0) & (alpha != 255)) or np.any(data & (alpha != 255)):
            return False
    return True


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


def warp_window(band: Any, grid: Grid, resampling: Resampling, nodata: int | None,
                src_nodata: int | None = None, src_alpha: int = 0) -> np.ndarray:
    """Bands of a dataset (``rasterio.band``) resampled onto one window's grid.

    ``rasterio.warp.reproject`` on dataset bands reads only the source region it needs, so
    memory stays bounded by the window. ``nodata`` is the output's no-data value and, unless
    ``src_nodata`` (a file's own nodata tag) is given, the source's. A source pixel is no data
    only when ALL its bands have that value (``UNIFIED_SRC_NODATA``), where the file's
    per-dataset mask says so (GDAL applies it), or where its alpha band ``src_alpha`` (a band
    index, 0: none) is 0; no-data pixels get no weight in bilinear resampling and become
    ``nodata``. Unlike a ``WarpedVRT`` it never takes a 4th band for an alpha band unless told
    (GDAL marks the 4th band of a 4-band UInt8 GeoTIFF as alpha by default; ours is usually a
    cloud mask).
    """
    count = len(band.bidx) if isinstance(band.bidx, list | tuple) else 1
    out = np.zeros((count, grid.height, grid.width), np.uint8)
    src_nodata = nodata if src_nodata is None else src_nodata
    extras: dict[str, Any] = {"UNIFIED_SRC_NODATA": "YES"} if src_nodata is not None else {}
    if nodata is not None:  # masked source pixels become ``nodata``, not ``src_nodata``
        extras["INIT_DEST"] = nodata
    reproject(band, out, src_nodata=src_nodata, dst_transform=grid.transform, dst_crs=grid.crs,
              dst_nodata=nodata, src_alpha=src_alpha, resampling=resampling, **extras)
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
        # the fraction is dropped, as Earth Engine's toByte drops it from the authors' daily
        # median (``landsat.to_uint8``): 100 and 101 give 100, 101 and 102 give 101
        out = np.nan_to_num(np.floor(med), nan=0).astype(np.uint8)
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
            raise SourceError(f"{self.folder}: local scene folder {_missing(self.folder)}")
        self.resampling = resampling
        self.top = top
        self.force = force
        self.progress = progress
        self.skipped: list[tuple[Path, str]] = []
        """Files of the last selection left out, and why (not those of other shelves/years)."""
        self.notes: list[str] = []
        """Doubts about files used by the last ``scenes`` call (a 4th band flagging all clouds)."""
        self._warnings: list[str] = []
        self._selection: tuple[str, int] | None = None
        self._rois: dict[str, BaseGeometry] = {}
        self._inventory: list[LocalFile] = []
        self._selected = 0

    def grid(self, shelf: str, roi: BaseGeometry) -> Grid:
        """The aligned 30 m EPSG:3031 grid covering the ROI (remembered for ``scenes``)."""
        self._rois[shelf] = roi
        return Grid.covering(roi)

    # -- selection ---------------------------------------------------------------------------

    def select(self, shelf: str, year: int, grid: Grid, roi: BaseGeometry
               ) -> dict[tuple[str, dt.date], list[LocalFile]]:
        """The folder's files of this shelf and summer, grouped by (sensor, day), checked, one
        file per Landsat product."""
        groups: dict[tuple[str, dt.date], list[LocalFile]] = {}
        self.skipped, self.notes, self._warnings = [], [], []
        self._selection = (shelf_key(shelf), year)
        self._inventory, orphans = inventory(self.folder)
        self.skipped += [(path, why) for path, day, why in orphans if summer_of(day) == year]
        for item in self._inventory:
            if summer_of(item.acquired) != year:
                continue
            try:
                item = self._checked(item, shelf, year, roi, grid)
            except RasterioError as exc:
                raise SourceError(f"{item.path}: not a readable GeoTIFF ({exc}); replace or "
                                  "remove the file") from exc
            if item is not None:
                groups.setdefault((item.sensor, item.acquired), []).append(item)
        self._selected = len(groups)
        return {key: self._once_per_product(groups[key]) for key in
                sorted(groups, key=lambda k: (k[1], SENSOR_ORDER.index(k[0])))}

    def _checked(self, item: LocalFile, shelf: str, year: int, roi: BaseGeometry,
                 grid: Grid) -> LocalFile | None:
        """A file of the summer, checked and completed from its tags; None if it is not used.

        Whether it belongs to the shelf (name, else footprint) is decided before its bands are
        checked: a malformed file of another shelf is none of this shelf's business. A file
        named for the shelf whose footprint misses the ROI is ``skipped`` with that rule, its
        pixel size (at most ``MAX_PIXEL_FACTOR`` × the grid's) and its cloud mask's extent (the
        scene's on the grid) are checked, and a sidecar contradicting the file's name is
        ``warnings``' business.
        """
        if item.shelf is not None and shelf_key(item.shelf) != shelf_key(shelf):
            if not is_registered(item.shelf):
                self.skipped.append((item.path, unregistered_shelf(item)))
            return None
        if not SENSORS[item.sensor].covers(year):
            self.skipped.append((item.path, f"{item.sensor} is not used for summer {year}"))
            return None
        if item.l1 is not None:
            item.l1.check()  # a missing MTL field or band fails before any work
            with rasterio.open(item.l1.band_path(item.l1.rgb_bands[0])) as src:
                return item if overlaps(src, roi, grid) else None
        with rasterio.open(item.path) as src:
            check_crs(src, item.path)
            if item.shelf is None and not overlaps(src, roi, grid):
                return None  # of another shelf
            check_scene_file(src, item.path, grid)
            if item.shelf is not None and not overlaps(src, roi, grid):
                # named for this shelf (so its bands were checked), yet imaged elsewhere
                self.skipped.append((item.path, off_roi(item, shelf, src)))
                return None
            tagged = src.tags().get(SOURCE_IDS_TAG, "")
            if item.cloud_mask is not None:
                try:
                    with rasterio.open(item.cloud_mask) as msk:
                        check_mask_file(msk, item.cloud_mask)
                        check_mask_covers(msk, item.cloud_mask, src, item.path, grid)
                except RasterioError as exc:
                    raise SourceError(f"{item.cloud_mask}: not a readable GeoTIFF ({exc}); "
                                      "replace or remove the file") from exc
        if tagged and item.named_by == "export-name":  # written by the gee source
            item = replace(item, source_ids=tuple(tagged.split(",")))
        contradiction = name_contradiction(item)
        if contradiction is not None:
            self._warnings.append(contradiction)
        return item

    def _once_per_product(self, files: list[LocalFile]) -> list[LocalFile]:
        """The day's files with each Landsat product once (a copy in a backup folder, or two
        downloads of one product, would count twice in the median): a converted Level-1
        product first, else the file nearest the folder's top; the others are ``skipped``."""
        chosen: dict[tuple[str, ...], LocalFile] = {}
        for item in sorted(files, key=lambda f: (f.named_by != "l1-product", len(f.path.parts),
                                                 str(f.path))):
            chosen.setdefault(_product_key(item), item)
        kept = [f for f in files if chosen[_product_key(f)] is f]
        for item in files:
            key, first = _product_key(item), chosen[_product_key(item)]
            if first is not item:
                self.skipped.append((item.path, f"the same product ({', '.join(key)}) as "
                                     f"{first.path}: used once"))
        return kept

    def _signature(self, files: list[LocalFile], grid: Grid) -> str:
        """Digest of what a daily scene is made of, from the selection alone (no pixel read):
        path, size and modification time of each scene file, cloud mask and sidecar (of a
        Level-1 product: its MTL and band files, or its .tar), the grid and the resampling.

        It enters the shelf-year's inputs digest, since a scene id (sensor, shelf, day) says
        nothing of the files: a re-export replacing a file, or a second file of the day, must
        redo the shelf-year. It also keys the reuse of derived scenes in the work folder.
        """
        parts: list[Any] = [list(grid.transform)[:6], grid.width, grid.height, grid.crs,
                            self.resampling]
        for f in files:
            if f.l1 is not None:
                parts.append([list(stat) for stat in f.l1.stats])
                continue
            sidecar = sidecar_path(f.path)
            for p in (f.path, f.cloud_mask, sidecar if sidecar.exists() else None):
                if p is not None:
                    st = p.stat()
                    parts.append([str(p.resolve()), st.st_size, st.st_mtime_ns])
        if len(files) > 1:  # combined by their median, its fraction dropped since 0.2.0's
            parts.append("daily-median:floor")  # rounding (so those days are redone)
        return hashlib.sha256(json.dumps(parts).encode()).hexdigest()

    def scene_keys(self, shelf: str, year: int, grid: Grid) -> list[str] | None:
        """The ``Scene.digest_key`` of every daily scene ``scenes`` would return, from the file
        selection alone: headers and sidecars are read, no pixel, nothing converted or
        reprojected, so an up-to-date shelf-year is skipped before any scene is built.

        None when ``top`` would keep only some of the days: which ones needs their pixels.
        """
        roi = self._rois.get(shelf) or roi_polygon(shelf)
        groups = self.select(shelf, year, grid, roi)
        if self.top is not None and len(groups) > self.top:
            return None
        return [scene_key(export_name(sensor, shelf, day).scene_id, self._signature(files, grid))
                for (sensor, day), files in groups.items()]

    def explain(self, shelf: str, year: int) -> list[str]:
        """Why files of the folder did not make scenes in the last selection, as lines for a
        year that cannot be mapped: the files skipped and why, doubts about files used, and,
        when nothing was selected, the files dated in the neighbouring summers or in winter."""
        lines = [f"skipped {path}: {why}" for path, why in self.skipped[:MAX_LISTED]]
        if len(self.skipped) > MAX_LISTED:
            lines.append(f"... and {len(self.skipped) - MAX_LISTED} more skipped file(s)")
        lines += self.notes
        if self._selected:
            return lines
        lines.append(f"no usable file of {self.folder} dated in that summer is of {shelf} (by "
                     "the shelf name in its file name or sidecar, else by its footprint)")
        ours = [f for f in self._inventory
                if f.shelf is None or shelf_key(f.shelf) == shelf_key(shelf)]
        for other in (year - 1, year + 1):
            count = sum(summer_of(f.acquired) == other for f in ours)
            if count:
                lines.append(f"{count} file(s) named for {shelf} or without a shelf name are "
                             f"dated in the summer {other} ({summer_span(other)}): --year "
                             f"{other}")
        winter = sum(summer_of(f.acquired) is None for f in ours)
        if winter:
            lines.append(f"{winter} file(s) are dated April–October, outside any summer")
        return lines

    def warnings(self, shelf: str, year: int) -> list[str]:
        """What the user should know about files used for this shelf-year whatever its outcome
        (a sidecar contradicting its file's name), from the last selection of that shelf-year;
        the producer appends them to the year's message."""
        return list(self._warnings) if self._selection == (shelf_key(shelf), year) else []

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
                signature = self._signature(files, grid)  # of the files as found, unconverted
                files = [self._convert_l1(f, grid, workdir, cache) for f in files]
                out.append(self._day_scene(shelf, sensor, day, files, signature, grid, roi,
                                           workdir, cache, progress))
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

    def _day_scene(self, shelf: str, sensor: str, day: dt.date, files: list[LocalFile],
                   signature: str, grid: Grid, roi: BaseGeometry, workdir: Path,
                   cache: dict[str, Any], progress: Progress) -> Scene:
        """One day's files as a daily scene on the grid (built, or reused from the cache while
        the signature holds)."""
        name = export_name(sensor, shelf, day)
        cached = cache.get(name.scene_id)
        fresh = bool(cached) and cached["signature"] == signature and "fourth" in cached
        fourth = cached["fourth"] if fresh else [self._fourth_band(f) for f in files]
        files = [replace(f, fourth=role) for f, role in zip(files, fourth, strict=True)]
        in_place = len(files) == 1 and files[0].cloud_mask is None and self._in_place(files[0],
                                                                                        grid)
        path = files[0].path if in_place else workdir / name.filename
        has_cloud = any(f.cloud_mask is not None or f.fourth == "cloud" for f in files)
        cloud_path = workdir / f"{name.scene_id}_cloud.tif" if has_cloud else None
        if fresh and path.exists() and (cloud_path is None or cloud_path.exists()):
            fraction, notes = float(cached["valid_fraction"]), list(cached.get("notes", []))
        else:
            fraction, notes = self._build(files, grid, roi, None if in_place else path,
                                          cloud_path, progress, name.filename)
            cache[name.scene_id] = {"signature": signature, "valid_fraction": fraction,
                                    "fourth": fourth, "notes": notes}
        self.notes += notes
        return Scene(
            scene_id=name.scene_id, sensor=sensor, acquired=day, path=path,
            valid_fraction=fraction, cloud_mask_path=cloud_path,
            source_ids=tuple(dict.fromkeys(i for f in files for i in f.source_ids)),
            metadata={"files": [str(f.origin or f.path) for f in files],
                      "named_by": [f.named_by for f in files],
                      "fourth_band": [f.fourth for f in files],
                      "reprojected": not all(self._on_grid(f, grid) for f in files),
                      "resampling": self.resampling, "used_in_place": in_place},
            signature=signature,
        )

    @staticmethod
    def _fourth_band(item: LocalFile) -> str | None:
        """What the file's 4th band is: None (3 bands), "alpha" or "cloud" (``is_alpha_band``)."""
        with rasterio.open(item.path) as src:
            if src.count < 4:
                return None
            return "alpha" if is_alpha_band(src, item.path) else "cloud"

    @staticmethod
    def _on_grid(item: LocalFile, grid: Grid) -> bool:
        """Whether the file's pixels are the grid's (it is resampled onto it otherwise)."""
        with rasterio.open(item.path) as src:
            return on_grid(src, grid)

    @staticmethod
    def _in_place(item: LocalFile, grid: Grid) -> bool:
        """Whether the file can be the daily scene as it is: 3 bands on the grid and no no-data
        marking but 0 in all bands (the only one the producer reads)."""
        with rasterio.open(item.path) as src:
            return (src.count == 3 and on_grid(src, grid) and not has_dataset_mask(src)
                    and rgb_nodata(src) == 0)

    def _windows(self, files: list[LocalFile], grid: Grid
                 ) -> Iterator[tuple[Window, list[np.ndarray], list[np.ndarray | None]]]:
        """Per output window, each file's RGB (its own no-data marking as 0) and cloud mask
        resampled onto the grid; a file whose pixels cannot be read is named."""
        resampling = RESAMPLING[self.resampling]
        with contextlib.ExitStack() as stack:
            opened = [(f, stack.enter_context(rasterio.open(f.path)),
                       None if f.cloud_mask is None else
                       stack.enter_context(rasterio.open(f.cloud_mask))) for f in files]
            for window in tile_windows(grid, WINDOW):
                sub = grid.subgrid(window)
                rgbs, clouds = [], []
                for f, src, mask in opened:
                    try:
                        rgbs.append(warp_window(rasterio.band(src, [1, 2, 3]), sub, resampling,
                                                0, rgb_nodata(src),
                                                4 if f.fourth == "alpha" else 0))
                    except RasterioError as exc:
                        raise unreadable(f.path, exc) from exc
                    cloud_band = (rasterio.band(mask, [1]) if mask is not None else
                                  rasterio.band(src, [4]) if f.fourth == "cloud" else None)
                    try:
                        clouds.append(None if cloud_band is None else
                                      warp_window(cloud_band, sub, Resampling.nearest, None)[0])
                    except RasterioError as exc:
                        raise unreadable(f.cloud_mask or f.path, exc) from exc
                yield window, rgbs, clouds

    def _build(self, files: list[LocalFile], grid: Grid, roi: BaseGeometry, path: Path | None,
               cloud_path: Path | None, progress: Progress, label: str
               ) -> tuple[float, list[str]]:
        """Write the daily scene (and mask) on the grid; return its usable fraction of the ROI
        and notes on 4th bands that flag (nearly) all of their file's data as cloud."""
        windows = tile_windows(grid, WINDOW)
        task = progress.add_task(f"{self.name}: {label}", total=len(windows))
        profile = {"driver": "GTiff", "width": grid.width, "height": grid.height,
                   "dtype": "uint8", "crs": grid.crs, "transform": grid.transform,
                   "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "lzw",
                   "BIGTIFF": "IF_SAFER"}
        usable = roi_pixels = 0
        band4 = [f.cloud_mask is None and f.fourth == "cloud" for f in files]
        data_px, cloud_px = [0] * len(files), [0] * len(files)
        with contextlib.ExitStack() as stack:
            rgb_out = None if path is None else _output(stack, path, 3, profile)
            cloud_out = None if cloud_path is None else _output(stack, cloud_path, 1, profile)
            for window, rgbs, clouds in self._windows(files, grid):
                for k in (k for k, flag in enumerate(band4) if flag):
                    present = np.any(rgbs[k] > 0, axis=0)
                    data_px[k] += int(np.count_nonzero(present))
                    cloud_px[k] += int(np.count_nonzero(present & (clouds[k] != 0)))
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
        notes = [all_cloud_note(f.path, cloud_px[k] / data_px[k])
                 for k, f in enumerate(files) if data_px[k]
                 and cloud_px[k] > ALL_CLOUD_SHARE * data_px[k]]
        return (usable / roi_pixels if roi_pixels else 0.0), notes


def all_cloud_note(path: Path, share: float) -> str:
    """The doubt about a 4th band that flags (nearly) all of its file's data as cloud."""
    return (f"{path}: band 4 flags {share:.1%} of the file's data pixels on the ROI grid as "
            "cloud (a 4th band is read as a cloud mask, non-zero = cloud or shadow); if it is "
            "a validity (alpha) band, give it the colour interpretation alpha and only the "
            "values 0 and 255 (255 = data), or drop it")


def _product_key(item: LocalFile) -> tuple[str, ...]:
    """What one product of a day is known by: its Landsat product ids, else its export name's
    composite id, else its path."""
    return item.source_ids or ((item.composite_id,) if item.composite_id else (str(item.path),))


def off_roi(item: LocalFile, shelf: str, src: rasterio.DatasetReader) -> str:
    """Why a file named for the shelf is skipped when its footprint misses the shelf's ROI."""
    where = "sidecar field 'shelf'" if item.named_by == "sidecar" else "file name"
    return (f"its footprint does not overlap the ROI of {shelf}, although its {where} gives "
            f"the shelf {item.shelf!r} (it is georeferenced elsewhere: CRS {src.crs}, bounds "
            f"{tuple(round(v) for v in src.bounds)}); fix its georeferencing or its name")


def name_facts(path: Path) -> tuple[str, dt.date, str | None] | None:
    """Sensor, date and shelf that a file's name gives (export name or product id), if any."""
    try:
        if looks_like_export_name(path.name):
            name = parse_export_name(path.name)
            return name.sensor, name.acquired, name.shelf
        if looks_like_product_id(path.name):
            pid = parse_product_id(path.name)
            return pid.sensor, pid.acquired, None
    except SpecError:
        return None
    return None


def name_contradiction(item: LocalFile) -> str | None:
    """A warning when a file's sidecar gives another sensor, date or shelf than its name: the
    sidecar is used (it wins, as documented), but one of the two is wrong."""
    facts = name_facts(item.path) if item.named_by == "sidecar" else None
    if facts is None:
        return None
    sensor, acquired, shelf = facts
    differ = [f"{what} {ours} (sidecar) vs {theirs} (file name)" for what, ours, theirs in (
        ("sensor", item.sensor, sensor), ("date", item.acquired.isoformat(), acquired.isoformat()))
        if ours != theirs]
    if shelf is not None and item.shelf is not None and shelf_key(shelf) != shelf_key(item.shelf):
        differ.append(f"shelf {item.shelf} (sidecar) vs {shelf} (file name)")
    if not differ:
        return None
    return (f"{sidecar_path(item.path)} contradicts the name of {item.path.name}: "
            f"{'; '.join(differ)}; the sidecar's values are used (a sidecar wins over the "
            "name) — correct whichever is wrong")


def is_registered(name: str) -> bool:
    """Whether a shelf name of a file or sidecar is a registered shelf (compared loosely)."""
    return any(shelf_key(registered) == shelf_key(name) for registered in SHELVES)


def unregistered_shelf(item: LocalFile) -> str:
    """Why a file named for an unregistered shelf is skipped, with the name it likely meant."""
    hint = closest_shelf_name(item.shelf or "")
    if hint is None:  # "TottenGlacier": a registered name inside the file's
        inside = [n for n in SHELVES if shelf_key(n) in shelf_key(item.shelf or "")]
        hint = max(inside, key=len, default=None)
    where = "sidecar field 'shelf'" if item.named_by == "sidecar" else "file name"
    return (f"shelf {item.shelf!r} of the {where} is not a registered shelf"
            + (f" (did you mean {hint!r}?)" if hint else "")
            + "; files are matched to --shelf by that name (case, spaces and '_' ignored)")


def _output(stack: contextlib.ExitStack, path: Path, count: int, profile: dict[str, Any]) -> Any:
    """A GeoTIFF opened for writing at a temporary path renamed to ``path`` on success."""
    tmp = stack.enter_context(atomic_path(path))
    return stack.enter_context(rasterio.open(tmp, "w", count=count, **profile))
