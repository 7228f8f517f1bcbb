"""Per-file raster rules: GeoTIFF header, encoding, Cloud-Optimized layout and pixel values.

The header checks look at an open dataset only; the value checks are tallies fed one window at
a time (see ``product_rules``, which reads each file once for these and the pair rules), so a
raster is never read whole. Every expectation comes from ``producer.spec``.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from producer.spec import ENCODING, ProductType
from validation.report import Problem

FORMAT = "raster-format"
BAND_COUNT = "raster-band-count"
DTYPE = "raster-dtype"
COMPRESSION = "raster-compression"
CRS = "raster-crs"
RESOLUTION = "raster-resolution"
NODATA = "raster-nodata"
TILING = "raster-tiling"
OVERVIEWS = "raster-overviews"
COG = "raster-cog"
COG_WARNING = "raster-cog-warning"
VALUES = "raster-values"
OVERVIEW_VALUES = "raster-overview-values"
UNREADABLE = "raster-unreadable"
MASK = "raster-mask"

#: Rows (and at most this many columns) read per window: one row of tiles of the spec's layout.
WINDOW_ROWS = ENCODING.blocksize
WINDOW_COLS = ENCODING.blocksize * 8


def windows(height: int, width: int) -> Iterator[Window]:
    """Windows of one row of tiles covering a raster, left to right then top to bottom."""
    for row in range(0, height, WINDOW_ROWS):
        for col in range(0, width, WINDOW_COLS):
            yield Window(col, row, min(WINDOW_COLS, width - col), min(WINDOW_ROWS, height - row))


def _values_text(values: object) -> str:
    return ", ".join(str(v) for v in sorted(values))  # type: ignore[call-overload]


def _type_text(product_type: ProductType) -> str:
    return f"type {product_type.number} ({product_type.key})"


# --------------------------------------------------------------------------------------------
# Header rules
# --------------------------------------------------------------------------------------------


def _resolution_ok(src: rasterio.io.DatasetReader) -> bool:
    """North-up square pixels of the spec's size."""
    t = src.transform
    res = ENCODING.resolution
    return (t.b == 0 and t.d == 0 and math.isclose(t.a, res, rel_tol=1e-9)
            and math.isclose(-t.e, res, rel_tol=1e-9))


def _epsg(src: rasterio.io.DatasetReader) -> int | None:
    if src.crs is None:
        return None
    try:
        return src.crs.to_epsg()
    except RasterioError:
        return None


def header_problems(rel: str, src: rasterio.io.DatasetReader,
                    product_type: ProductType) -> list[Problem]:
    """Format, band count, dtype, compression, CRS, pixel size, nodata tag, tiling, overviews."""
    found: list[Problem] = []

    def check(ok: bool, rule: str, have: str, want: str) -> None:
        if not ok:
            found.append(Problem(rel, rule, have, want))

    check(src.driver == "GTiff", FORMAT, f"driver {src.driver}", "GeoTIFF (GTiff)")
    check(src.count == ENCODING.band_count, BAND_COUNT, f"{src.count} bands",
          f"{ENCODING.band_count} band")
    check(src.dtypes[0] == ENCODING.dtype, DTYPE, src.dtypes[0], ENCODING.dtype)
    compression = src.compression.name.lower() if src.compression else "none"
    check(compression == ENCODING.compression, COMPRESSION, compression, ENCODING.compression)
    epsg = _epsg(src)
    check(epsg == ENCODING.epsg, CRS, f"EPSG:{epsg}" if epsg else str(src.crs or "no CRS"),
          ENCODING.crs)
    t = src.transform
    check(_resolution_ok(src), RESOLUTION,
          f"pixel {t.a:g} x {-t.e:g} m" + (" (rotated)" if t.b or t.d else ""),
          f"{ENCODING.resolution:g} m square, north-up pixels")
    nodata = None if src.nodata is None else int(src.nodata) if float(src.nodata).is_integer() \
        else src.nodata
    check(nodata == product_type.nodata, NODATA, f"nodata tag {nodata}",
          f"nodata tag {product_type.nodata} for {_type_text(product_type)}"
          if product_type.nodata is not None else
          f"no nodata tag for {_type_text(product_type)}")
    block = tuple(src.block_shapes[0])
    check(block == (ENCODING.blocksize, ENCODING.blocksize), TILING,
          f"blocks {block[0]} x {block[1]}" + (" (strips)" if block[1] == src.width else ""),
          f"tiles {ENCODING.blocksize} x {ENCODING.blocksize}")
    large = max(src.width, src.height) > ENCODING.blocksize
    check(not large or bool(src.overviews(1)), OVERVIEWS, "no internal overviews",
          f"internal overviews (raster larger than {ENCODING.blocksize} px)")
    found.extend(mask_problems(rel, src, product_type))
    return found


def mask_problems(rel: str, src: rasterio.io.DatasetReader,
                  product_type: ProductType) -> list[Problem]:
    """An internal mask band or an alpha band: GDAL then hides pixels that the value checks
    never see as NoData, and readers get a different map than the spec's encoding says.

    Type 1 marks NoData only by its nodata value (GDAL mask flag ``nodata``); type 2 has no
    mask at all (``all_valid``). A missing or wrong nodata tag is ``raster-nodata``'s finding.
    """
    flags = set(src.mask_flag_enums[0]) if src.count else set()
    hidden = flags & {MaskFlags.per_dataset, MaskFlags.alpha}
    if not hidden:
        return []
    kinds = " and ".join(sorted("an internal mask band" if f is MaskFlags.per_dataset
                                else "an alpha band" for f in hidden))
    want = (f"NoData marked by the nodata value {product_type.nodata} only"
            if product_type.nodata is not None
            else "every pixel valid")
    return [Problem(rel, MASK, f"{kinds} (GDAL mask flags "
                               f"{', '.join(sorted(f.name for f in flags))})",
                    f"no mask band: {want} for {_type_text(product_type)}")]


#: GDAL options for rio-cogeo's validator, which re-opens the file once per IFD and only looks
#: at the TIFF structure: skipping the georeferencing (GeoTIFF keys -> PROJ) makes each open
#: about four times cheaper. The CRS and transform are checked by ``header_problems``.
COG_VALIDATE_CONFIG = {"GDAL_GEOREF_SOURCES": "NONE"}
#: Without georeferencing rasterio warns "not georeferenced"; the warning filter is process
#: state, so threads take turns (the validator call costs about a millisecond).
_COG_LOCK = threading.Lock()
_VALID_COG = "a valid Cloud-Optimized GeoTIFF (rio-cogeo cog_validate)"


def cog_problems(rel: str, path: Path) -> list[Problem]:
    """What rio-cogeo's COG validator says about the file (errors, and warnings as warnings)."""
    try:
        with _COG_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _, errors, cog_warnings = cog_validate(path, quiet=True, config=COG_VALIDATE_CONFIG)
    except Exception as exc:  # noqa: BLE001 - any failure of the validator is a finding
        return [Problem(rel, COG, f"COG validation failed: {exc}", _VALID_COG)]
    return ([Problem(rel, COG, e, _VALID_COG) for e in errors]
            + [Problem(rel, COG_WARNING, w, "no COG warnings", severity="warning")
               for w in cog_warnings])


# --------------------------------------------------------------------------------------------
# Value rules
# --------------------------------------------------------------------------------------------


def contiguous_shift(allowed: frozenset[int]) -> int | None:
    """A shift s so that {(v + s) mod 256} of the allowed values is 0..n-1, if there is one.

    With it a uint8 window holds only allowed values iff ``max(window + s) < n`` (wrapping add),
    two passes that stay in cache, instead of a table look-up over every pixel.
    """
    n = len(allowed)
    for start in allowed:
        shift = (-start) % 256
        if {(v + shift) % 256 for v in allowed} == set(range(n)):
            return shift
    return None


class Buffers:
    """Reusable contiguous scratch arrays, so window-sized temporaries are allocated once.

    Fresh multi-megabyte arrays for every window cost page faults that rival the arithmetic.
    """

    def __init__(self) -> None:
        self._store: dict[str, np.ndarray] = {}

    def get(self, key: str, shape: tuple[int, int], dtype: np.dtype | type) -> np.ndarray:
        """A C-contiguous array of ``shape`` (contents undefined), reusing earlier memory."""
        size = shape[0] * shape[1]
        buf = self._store.get(key)
        if buf is None or buf.size < size or buf.dtype != np.dtype(dtype):
            buf = self._store[key] = np.empty(max(size, 1), dtype)
        return buf[:size].reshape(shape)


@dataclass
class ValueTally:
    """Counts of values outside a product type's class set, fed window by window."""

    allowed: frozenset[int]
    bad: dict[int | float, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._shift = contiguous_shift(self.allowed)
        self._allowed_array = np.array(sorted(self.allowed))
        self._buffers = Buffers()

    def _fast_ok(self, block: np.ndarray) -> bool:
        """Whether a uint8 block holds only allowed values (cheap; exact)."""
        if self._shift is None or block.dtype != np.uint8:
            return False
        shifted = block
        if self._shift:
            shifted = np.add(block, np.uint8(self._shift),
                             out=self._buffers.get("shift", block.shape, np.uint8))
        return int(shifted.max()) < len(self.allowed)

    def update(self, block: np.ndarray) -> bool:
        """Add a window's values; True if it held only allowed values."""
        if block.size == 0 or self._fast_ok(block):
            return True
        if block.dtype == np.uint8:
            counts = np.bincount(block.ravel(), minlength=256)
            counts[self._allowed_array] = 0
            values = np.flatnonzero(counts)
            found = zip(values.tolist(), counts[values].tolist(), strict=True)
        else:
            outside = block[~np.isin(block, self._allowed_array)]
            values, counts_ = np.unique(outside, return_counts=True)
            found = zip(values.tolist(), counts_.tolist(), strict=True)
        clean = True
        for value, count in found:
            self.bad[value] = self.bad.get(value, 0) + count
            clean = False
        return clean

    def found_text(self, limit: int = 8) -> str:
        """The offending values with their pixel counts, most frequent first."""
        top = sorted(self.bad.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]
        more = f" and {len(self.bad) - limit} more" if len(self.bad) > limit else ""
        return ", ".join(f"{v:g}: {n} px" for v, n in top) + more


def value_problem(rel: str, tally: ValueTally, product_type: ProductType,
                  overview: int | None = None) -> list[Problem]:
    """A problem if the tally saw values outside the type's class set."""
    if not tally.bad:
        return []
    where = "" if overview is None else f" in overview {overview}"
    return [Problem(rel, VALUES if overview is None else OVERVIEW_VALUES,
                    f"values {tally.found_text()}{where}",
                    f"only {_values_text(product_type.values)} in {_type_text(product_type)}")]


def overview_windows(height: int, width: int,
                     factor: int) -> Iterator[tuple[Window, tuple[int, int]]]:
    """Full-resolution windows, aligned to ``factor``, with the overview shape each covers.

    Reading such a window with that ``out_shape`` (nearest) makes GDAL return the overview's
    own pixels, exactly, when ``factor`` divides the raster's size.
    """
    rows, cols = WINDOW_ROWS * factor, WINDOW_COLS * factor
    for row in range(0, height, rows):
        for col in range(0, width, cols):
            h, w = min(rows, height - row), min(cols, width - col)
            yield Window(col, row, w, h), (h // factor, w // factor)


def _tally_overview(src: rasterio.io.DatasetReader, path: Path, level: int, factor: int,
                    tally: ValueTally, buffers: Buffers) -> None:
    """Feed one overview level's pixels to a tally, window by window."""
    if src.height % factor == 0 and src.width % factor == 0:
        for window, shape in overview_windows(src.height, src.width, factor):
            out = buffers.get("overview", shape, src.dtypes[0])
            tally.update(src.read(1, window=window, out=out, resampling=Resampling.nearest))
        return
    with rasterio.open(path, overview_level=level) as ovr:  # sizes GDAL rounded: read directly
        for window in windows(ovr.height, ovr.width):
            tally.update(ovr.read(1, window=window))


def overview_problems(rel: str, src: rasterio.io.DatasetReader, path: Path,
                      product_type: ProductType) -> list[Problem]:
    """Values of every internal overview, read by windows: nearest keeps them in the class set."""
    problems: list[Problem] = []
    buffers = Buffers()
    for level, factor in enumerate(src.overviews(1)):
        tally = ValueTally(product_type.values)
        try:
            _tally_overview(src, path, level, factor, tally, buffers)
        except RasterioError as exc:
            problems.append(Problem(rel, UNREADABLE, f"overview {level}: {exc}",
                                    "every overview block readable"))
            continue
        problems.extend(value_problem(rel, tally, product_type, overview=level))
    return problems
