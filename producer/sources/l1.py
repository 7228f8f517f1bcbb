"""EarthExplorer Landsat Collection 2 Level-1 products as scenes of the ``local:DIR`` source.

The paper (2.1.3) downloaded some 2023-2024 scenes from EarthExplorer as Collection 2 Level-1
products and made them "consistent with the GEE-exported imagery in format, resolution,
projected coordinate system, value range and spatial extent". This module does that step.

A product is a folder (or an EarthExplorer ``.tar`` bundle, read in place through GDAL's
``/vsitar/``) holding ``<PRODUCT_ID>_MTL.txt`` (or ``_MTL.json``), single-band
``<PRODUCT_ID>_B<n>.TIF`` files and ``<PRODUCT_ID>_QA_PIXEL.TIF``. Sensor and acquisition date
come from the product id; the RGB bands from the spec (``Sensor.rgb_bands``). Each RGB band is
converted as the authors' Earth Engine export (``gee.py``) sees the Collection 2 TOA collections:

    reflectance = (REFLECTANCE_MULT_BAND_n × DN + REFLECTANCE_ADD_BAND_n) / sin(SUN_ELEVATION)
    value       = floor(clip(reflectance, 0, 1) × 255)            (``landsat.reflectance_to_uint8``)

with 0 (no data) wherever the band's DN is 0 or QA_PIXEL marks fill (bit 0), and a cloud mask of
QA_PIXEL bits 3 (cloud) and 4 (cloud shadow). The result, cropped to the ROI grid's bounds in the
product's own CRS, is written as a 3-band UInt8 GeoTIFF plus a 1-band mask under the work folder
and handed to the local source's ordinary path (selection, daily median, reprojection).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import posixpath
import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from rasterio.warp import transform_bounds
from rasterio.windows import Window, from_bounds

from producer.grid import Grid
from producer.sources.errors import SourceError
from producer.sources.landsat import QA_BAND, qa_cloud, qa_fill, reflectance_to_uint8
from producer.sources.names import ProductId, looks_like_product_id, parse_product_id
from producer.spec import SENSORS, SpecError
from producer.writer import atomic_path

MTL_SUFFIXES: tuple[str, ...] = ("_MTL.txt", "_MTL.json")
#: MTL groups and fields the conversion reads.
MTL_ROOT = "LANDSAT_METADATA_FILE"
RESCALING = "LEVEL1_RADIOMETRIC_RESCALING"
ATTRIBUTES = "IMAGE_ATTRIBUTES"
CONTENTS = "PRODUCT_CONTENTS"
TOA_FORMULA = ("TOA reflectance = (REFLECTANCE_MULT_BAND_n × DN + REFLECTANCE_ADD_BAND_n) / "
               "sin(SUN_ELEVATION)")
#: Single-band files of a Level-1 product (besides the MTL): bands, QA bands, angle bands.
_COMPONENT = re.compile(r"_(?:B\d{1,2}(?:_VCID_\d)?|QA_[A-Z]+|[SV][AZ]A)\.TIFF?$", re.IGNORECASE)
#: Rows converted at a time (bounds memory: rows × width × a few float64 arrays).
CHUNK_ROWS = 512


# --------------------------------------------------------------------------------------------
# MTL parsing
# --------------------------------------------------------------------------------------------


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    return value


def parse_mtl_text(text: str, where: str) -> dict[str, Any]:
    """The ODL text of ``<PRODUCT_ID>_MTL.txt`` as nested dicts of groups, values as text.

    Lines are ``GROUP = NAME``, ``END_GROUP = NAME``, ``KEY = VALUE`` (quotes removed) and a
    final ``END``; anything else, an unbalanced group or a repeated key is an error.
    """
    root: dict[str, Any] = {}
    stack: list[tuple[str, dict[str, Any]]] = [("", root)]
    ended = False
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        if ended:
            raise SourceError(f"{where}: line {number}: {line!r} after END")
        if line == "END":
            ended = True
            continue
        key, sep, value = (part.strip() for part in line.partition("="))
        if not sep or not key:
            raise SourceError(f"{where}: line {number}: {line!r} is not 'KEY = VALUE', "
                              "'GROUP = NAME', 'END_GROUP = NAME' or 'END'")
        name, group = stack[-1]
        if key == "END_GROUP":
            if len(stack) == 1 or value != name:
                raise SourceError(f"{where}: line {number}: END_GROUP = {value} does not close "
                                  f"the open group ({name or 'none'})")
            stack.pop()
            continue
        entry = key if key != "GROUP" else value
        if entry in group:
            raise SourceError(f"{where}: line {number}: {entry} appears twice in group "
                              f"{name or '(top)'}")
        if key == "GROUP":
            group[value] = {}
            stack.append((value, group[value]))
        else:
            group[key] = _unquote(value)
    if len(stack) > 1:
        raise SourceError(f"{where}: group {stack[-1][0]} is never closed (END_GROUP missing)")
    return root


def parse_mtl_json(text: str, where: str) -> dict[str, Any]:
    """``<PRODUCT_ID>_MTL.json`` as nested dicts, values as text (like ``parse_mtl_text``)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SourceError(f"{where}: not valid JSON ({exc})") from exc
    if not isinstance(record, dict):
        raise SourceError(f"{where}: expected a JSON object with {MTL_ROOT}")

    def text_leaves(node: dict[str, Any]) -> dict[str, Any]:
        return {k: text_leaves(v) if isinstance(v, dict) else str(v) for k, v in node.items()}

    return text_leaves(record)


@dataclass(frozen=True)
class Mtl:
    """A parsed MTL and where it came from, with field access that names what is missing."""

    where: str
    tree: dict[str, Any]

    def text(self, group: str, key: str) -> str | None:
        """The field ``group.key`` (under LANDSAT_METADATA_FILE), or None if absent."""
        root = self.tree.get(MTL_ROOT, self.tree)
        node = root.get(group) if isinstance(root, dict) else None
        value = node.get(key) if isinstance(node, dict) else None
        return None if value is None or isinstance(value, dict) else str(value)

    def number(self, group: str, key: str, why: str) -> float:
        """The field ``group.key`` as a finite number, or an error naming file, field, rule."""
        value = self.text(group, key)
        if value is None:
            raise SourceError(f"{self.where}: field {group}.{key} is missing; {why}")
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise SourceError(f"{self.where}: field {group}.{key} is {value!r}, not a number; "
                              f"{why}")
        return number


def read_mtl(where: str, text: str) -> Mtl:
    """An MTL from its text; JSON when the name ends in ``.json``."""
    is_json = where.lower().endswith(".json")
    return Mtl(where, parse_mtl_json(text, where) if is_json else parse_mtl_text(text, where))


# --------------------------------------------------------------------------------------------
# Products on disk
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Calibration:
    """What converts one product's RGB DNs to TOA reflectance."""

    mult: tuple[float, float, float]
    add: tuple[float, float, float]
    sun_elevation: float

    def to_uint8(self, index: int, dn: np.ndarray, nodata: np.ndarray) -> np.ndarray:
        """RGB band ``index`` (0-2) of the product as UInt8 × 255; 0 where ``nodata`` or DN 0."""
        reflectance = ((self.mult[index] * dn.astype(np.float64) + self.add[index])
                       / math.sin(math.radians(self.sun_elevation)))
        out = reflectance_to_uint8(reflectance)
        out[nodata | (dn == 0)] = 0
        return out


@dataclass(frozen=True)
class L1Product:
    """One Level-1 product: its id, the MTL and its single-band files (GDAL paths)."""

    product_id: ProductId
    source: Path
    """The folder's MTL file, or the ``.tar`` bundle."""
    mtl_name: str
    files: dict[str, str]
    """Upper-case file name -> path GDAL opens (``/vsitar/...`` inside a tar)."""
    stats: tuple[tuple[str, int, int], ...]
    """(path, size, mtime) of what was read, for the cache signature."""

    @property
    def sensor(self) -> str:
        """The sensor token from the product id."""
        return self.product_id.sensor

    @property
    def where(self) -> str:
        """How messages name the product's MTL."""
        if self.source.suffix.lower() == ".tar":
            return f"{self.source}!{self.mtl_name}"
        return str(self.source)

    @property
    def rgb_bands(self) -> tuple[str, str, str]:
        """The sensor's RGB bands, from the spec."""
        return SENSORS[self.sensor].rgb_bands

    def band_path(self, band: str) -> str:
        """The GDAL path of ``<PRODUCT_ID>_<band>.TIF``, or an error naming what is missing."""
        name = f"{self.product_id.product_id}_{band}.TIF".upper()
        for candidate in (name, name + "F"):
            if candidate in self.files:
                return self.files[candidate]
        container = self.source if self.source.suffix.lower() == ".tar" else self.source.parent
        raise SourceError(
            f"{container}: band file {self.product_id.product_id}_{band}.TIF is missing; a "
            f"{self.sensor} Level-1 product needs its RGB bands {', '.join(self.rgb_bands)} "
            f"(producer.spec) and {QA_BAND}")

    def read_mtl(self) -> Mtl:
        """The product's MTL, parsed; its LANDSAT_PRODUCT_ID must match the file names."""
        if self.source.suffix.lower() == ".tar":
            with tarfile.open(self.source) as tar:
                member = tar.extractfile(self.mtl_name)
                text = member.read().decode("utf-8-sig", "replace") if member else ""
        else:
            text = self.source.read_text(encoding="utf-8-sig", errors="replace")  # BOM or not
        mtl = read_mtl(self.where, text)
        named = mtl.text(CONTENTS, "LANDSAT_PRODUCT_ID")
        if named is not None and named.upper() != self.product_id.product_id:
            raise SourceError(f"{self.where}: field {CONTENTS}.LANDSAT_PRODUCT_ID is {named!r} "
                              f"but the files are named {self.product_id.product_id}")
        return mtl

    def calibration(self) -> Calibration:
        """The RGB bands' reflectance rescaling and the sun elevation, checked."""
        mtl = self.read_mtl()
        mult, add = [], []
        for band in self.rgb_bands:
            n = band.removeprefix("B")
            why = (f"{TOA_FORMULA} needs it for band {band} ({self.sensor} RGB bands "
                   f"{', '.join(self.rgb_bands)})")
            mult.append(mtl.number(RESCALING, f"REFLECTANCE_MULT_BAND_{n}", why))
            add.append(mtl.number(RESCALING, f"REFLECTANCE_ADD_BAND_{n}", why))
        sun = mtl.number(ATTRIBUTES, "SUN_ELEVATION", f"{TOA_FORMULA} needs it")
        if not 0 < sun <= 90:
            raise SourceError(f"{self.where}: field {ATTRIBUTES}.SUN_ELEVATION is {sun}; the "
                              "sun-elevation correction divides by its sine, so it must be in "
                              "(0, 90] degrees")
        return Calibration((mult[0], mult[1], mult[2]), (add[0], add[1], add[2]), sun)


    def check(self) -> None:
        """Fail early, naming file, field and rule, on a missing MTL field or band file."""
        self.calibration()
        for band in (*self.rgb_bands, QA_BAND):
            self.band_path(band)


def _product_id(name: str, where: Path) -> ProductId:
    try:
        return parse_product_id(name)
    except SpecError as exc:
        raise SourceError(f"{where.parent}/{exc}") from None


def _stat(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


def _folder_product(mtl: Path) -> L1Product:
    pid = _product_id(mtl.name, mtl)
    prefix = pid.product_id.upper() + "_"
    files = {p.name.upper(): str(p) for p in mtl.parent.iterdir()
             if p.is_file() and p.name.upper().startswith(prefix) and _COMPONENT.search(p.name)}
    stats = tuple(_stat(Path(p)) for p in [str(mtl), *sorted(files.values())])
    return L1Product(pid, mtl, mtl.name, files, stats)


def _tar_product(bundle: Path) -> L1Product:
    pid = _product_id(bundle.name, bundle)
    try:
        with tarfile.open(bundle) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (tarfile.TarError, OSError) as exc:
        raise SourceError(f"{bundle}: not a readable .tar bundle ({exc})") from exc
    base = {Path(n).name.upper(): n for n in names}
    mtl = next((base[(pid.product_id + s).upper()] for s in MTL_SUFFIXES
                if (pid.product_id + s).upper() in base), None)
    if mtl is None:
        raise SourceError(f"{bundle}: holds no {pid.product_id}_MTL.txt or _MTL.json; a Level-1 "
                          "bundle needs its MTL to convert DN to TOA reflectance")
    # members named "./X" (tar -cf B.tar ./*) are read by tarfile, but GDAL's /vsitar/ knows
    # them as "X"
    files = {k: f"/vsitar/{bundle.resolve()}/{posixpath.normpath(v)}" for k, v in base.items()
             if _COMPONENT.search(k)}
    return L1Product(pid, bundle, mtl, files, (_stat(bundle),))


def find_products(folder: Path) -> tuple[list[L1Product], set[Path]]:
    """The Level-1 products under ``folder`` and the single-band files they own.

    A product is a ``<PRODUCT_ID>_MTL.txt``/``_MTL.json`` with its files beside it, or a
    ``<PRODUCT_ID>.tar`` bundle; one product id is used once (an extracted folder before its
    bundle, ``_MTL.txt`` before ``_MTL.json``). A band file named like a product component
    (``<PRODUCT_ID>_B4.TIF``, ``_QA_PIXEL.TIF`` ...) with no MTL beside it is an error: it
    cannot be calibrated and is not a scene on its own.
    """
    found: list[tuple[int, L1Product]] = []
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    for path in files:
        upper = path.name.upper()
        if not looks_like_product_id(path.name):
            continue
        if upper.endswith(MTL_SUFFIXES[0].upper()):
            found.append((0, _folder_product(path)))
        elif upper.endswith(MTL_SUFFIXES[1].upper()):
            found.append((1, _folder_product(path)))
        elif upper.endswith(".TAR"):
            found.append((2, _tar_product(path)))
    products: dict[str, L1Product] = {}
    for _, product in sorted(found, key=lambda f: f[0]):
        products.setdefault(product.product_id.product_id, product)
    owned = {Path(p).resolve() for _, prod in found if prod.source.suffix.lower() != ".tar"
             for p in prod.files.values()}
    for path in files:
        if (_COMPONENT.search(path.name) and looks_like_product_id(path.name)
                and path.resolve() not in owned):
            pid = _product_id(path.name, path).product_id
            raise SourceError(f"{path}: a single band of Level-1 product {pid}, but there is no "
                              f"{pid}_MTL.txt or {pid}_MTL.json beside it; the MTL is needed to "
                              "convert DN to TOA reflectance")
    return list(products.values()), owned


# --------------------------------------------------------------------------------------------
# Conversion to a UInt8 RGB scene and a cloud mask
# --------------------------------------------------------------------------------------------


def check_band(src: rasterio.DatasetReader, ref: rasterio.DatasetReader, path: str) -> None:
    """Refuse a band that is not one integer band on the same pixels as the first RGB band."""
    if src.count != 1 or not np.issubdtype(np.dtype(src.dtypes[0]), np.integer):
        raise SourceError(f"{path}: a Level-1 band must be 1 band of integer DNs; found "
                          f"{src.count} band(s) of {list(src.dtypes)}")
    if (src.crs != ref.crs or src.shape != ref.shape
            or not src.transform.almost_equals(ref.transform)):
        raise SourceError(f"{path}: not on the same grid as {ref.name} (CRS, size and transform "
                          "of a product's 30 m bands must match)")


def crop_window(src: rasterio.DatasetReader, grid: Grid, margin: int = 2) -> Window | None:
    """The product's pixels that can reach the grid (its bounds in the product CRS, plus a
    margin for resampling), or None when they do not meet."""
    bounds = transform_bounds(grid.crs, src.crs, *grid.bounds, densify_pts=21)
    window = from_bounds(*bounds, transform=src.transform)
    col0 = max(0, math.floor(window.col_off) - margin)
    row0 = max(0, math.floor(window.row_off) - margin)
    col1 = min(src.width, math.ceil(window.col_off + window.width) + margin)
    row1 = min(src.height, math.ceil(window.row_off + window.height) + margin)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _chunks(window: Window) -> Iterator[tuple[Window, Window]]:
    """(source window, window in the cropped output) by blocks of CHUNK_ROWS rows."""
    for row in range(0, int(window.height), CHUNK_ROWS):
        height = min(CHUNK_ROWS, int(window.height) - row)
        yield (Window(window.col_off, window.row_off + row, window.width, height),
               Window(0, row, window.width, height))


def signature(product: L1Product, grid: Grid) -> str:
    """Digest of the product's inputs and the grid: a conversion is reused while it matches."""
    parts = [list(product.stats), list(grid.transform)[:6], grid.width, grid.height, grid.crs]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()


def convert(product: L1Product, grid: Grid, rgb_path: Path, cloud_path: Path) -> bool:
    """Write the product's UInt8 RGB and cloud mask, cropped to the grid, in its own CRS.

    Returns False (and writes nothing) when the product's pixels do not reach the grid.
    """
    calibration = product.calibration()
    paths = [product.band_path(b) for b in product.rgb_bands]
    qa_path = product.band_path(QA_BAND)
    with contextlib.ExitStack() as stack:
        bands = [stack.enter_context(rasterio.open(p)) for p in paths]
        qa = stack.enter_context(rasterio.open(qa_path))
        for src, path in zip([*bands, qa], [*paths, qa_path], strict=True):
            check_band(src, bands[0], path)
        window = crop_window(bands[0], grid)
        if window is None:
            return False
        profile = {"driver": "GTiff", "width": int(window.width), "height": int(window.height),
                   "dtype": "uint8", "crs": bands[0].crs,
                   "transform": bands[0].window_transform(window), "tiled": True,
                   "blockxsize": 512, "blockysize": 512, "compress": "lzw",
                   "BIGTIFF": "IF_SAFER"}
        rgb_tmp = stack.enter_context(atomic_path(rgb_path))
        cloud_tmp = stack.enter_context(atomic_path(cloud_path))
        rgb_out = stack.enter_context(rasterio.open(rgb_tmp, "w", count=3, **profile))
        cloud_out = stack.enter_context(rasterio.open(cloud_tmp, "w", count=1, **profile))
        rgb_out.update_tags(SOURCE_IDS=product.product_id.product_id,
                            TOA=f"{TOA_FORMULA}; floor(clip(., 0, 1) * 255); 0 = DN 0 or fill")
        for src_window, out_window in _chunks(window):
            flags = qa.read(1, window=src_window)
            fill = qa_fill(flags)
            for index, src in enumerate(bands):
                dn = src.read(1, window=src_window)
                rgb_out.write(calibration.to_uint8(index, dn, fill), index + 1,
                              window=out_window)
            cloud_out.write((qa_cloud(flags) & ~fill).astype(np.uint8), 1, window=out_window)
    return True
