"""Per-file raster rules: GeoTIFF header, encoding, Cloud-Optimized layout and pixel values.

The header checks look at an open dataset only; the value checks are tallies fed one window at
a time (see ``product_rules``, which reads each file once for these and the pair rules), so a
raster is never read whole. The overview checks ride on the same windows: each full-resolution
window is compared with the overview pixels that nearest resampling takes from it. Every
expectation comes from ``producer.spec``.

The Cloud-Optimized layout (``raster-tiling``, ``raster-overviews``, ``raster-cog``) is our own
spec for the maps ``produce`` writes: an error for them, a warning for other maps (the
authors' published GeoTIFFs, which the paper only requires to be LZW UInt8 EPSG:3031 30 m),
with the command that converts them (``made_by_produce``, ``CONVERT_COMMAND``). The encoding
and value rules are errors for every map.
"""

from __future__ import annotations

import math
import threading
import warnings
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import MaskFlags, Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.windows import Window
from rio_cogeo.cogeo import cog_validate

from producer.spec import ENCODING, SOURCE_TAG, ProductType, SpecError, parse_name
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
SCALE_OFFSET = "raster-scale-offset"
OVERVIEW_RESAMPLING = "raster-overview-resampling"
OVERVIEW_CONTENT = "raster-overview-content"
GRID_ORIGIN = "raster-grid-origin"
GRID_STACK = "raster-grid-stack"

#: Dataset tag in which GDAL's COG tooling (rio-cogeo, which the writer uses) records how the
#: overviews were resampled.
OVERVIEW_RESAMPLING_TAG = "OVERVIEW_RESAMPLING"
#: Names of nearest resampling that tag may hold (rio-cogeo: NEAREST; GDAL's own: NEAR).
NEAREST_NAMES = frozenset({"NEAREST", "NEAR"})
#: Grid origins closer than this to the 30 m lattice count as on it (float rounding of the
#: transform; real misalignments are whole metres).
LATTICE_TOLERANCE_M = 1e-3

#: How to rewrite a map in the spec's Cloud-Optimized layout without changing its pixels or
#: encoding: rio-cogeo, with the profile, tile size and overview resampling the writer gives
#: ``cog_translate`` (``producer.writer.cog_profile``; not web-optimized, the grid is kept).
CONVERT_COMMAND = (f"rio cogeo create --cog-profile {ENCODING.compression} "
                   f"--blocksize {ENCODING.blocksize} "
                   f"--overview-resampling {ENCODING.overview_resampling} IN.tif OUT.tif")
#: What the layout rules add to ``expected`` for a map ``produce`` did not write.
NOT_PRODUCED_NOTE = (f"(a warning: not a map produce wrote, no {SOURCE_TAG} tag nor provenance "
                     f"record, e.g. the authors' GeoTIFF; convert it with: {CONVERT_COMMAND})")

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
# Maps produce wrote, and the others
# --------------------------------------------------------------------------------------------


def made_by_produce(path: Path, tags: Mapping[str, str]) -> bool:
    """Whether a product is one ``produce`` wrote: it carries the ``SOURCE_TAG`` the writer
    stamps (as ``provenance-missing`` tells them apart), or its shelf-year holds the
    provenance record ``produce`` writes with the maps (the tag is lost when another tool
    rewrites the file; the map is still ours, held to our layout).

    Maps with neither are the authors' published maps (plain GeoTIFFs, no tags, no records):
    their Cloud-Optimized layout is only a warning. A name that does not parse counts as ours
    (strict; ``layout-name-syntax`` reports it).
    """
    if SOURCE_TAG in tags:
        return True
    try:
        name = parse_name(path.name)
    except SpecError:
        return True
    return (path.parent / name.auxiliary("provenance")).exists()


def _layout_problem(rel: str, rule: str, found: str, expected: str,
                    produced: bool) -> Problem:
    """A Cloud-Optimized layout finding: an error for a map ``produce`` wrote, else a
    warning saying how to convert the map."""
    if produced:
        return Problem(rel, rule, found, expected)
    return Problem(rel, rule, found, f"{expected} {NOT_PRODUCED_NOTE}", severity="warning")


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
    """Format, band count, dtype, compression, CRS, pixel size, nodata tag, tiling, overviews,
    mask, scale/offset, the overviews' resampling tag and the grid origin's lattice.

    Tiling and overviews (the COG layout) are errors only for maps ``produce`` wrote
    (``made_by_produce``), warnings for the others; everything else is an error for all."""
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
    produced = made_by_produce(Path(src.name), src.tags())
    block = tuple(src.block_shapes[0])
    if block != (ENCODING.blocksize, ENCODING.blocksize):
        found.append(_layout_problem(
            rel, TILING,
            f"blocks {block[0]} x {block[1]}" + (" (strips)" if block[1] == src.width else ""),
            f"tiles {ENCODING.blocksize} x {ENCODING.blocksize}", produced))
    large = max(src.width, src.height) > ENCODING.blocksize
    if large and not src.overviews(1):
        found.append(_layout_problem(
            rel, OVERVIEWS, "no internal overviews",
            f"internal overviews (raster larger than {ENCODING.blocksize} px)", produced))
    found.extend(mask_problems(rel, src, product_type))
    found.extend(scale_offset_problems(rel, src))
    found.extend(resampling_problems(rel, src))
    found.extend(origin_problems(rel, src))
    return found


def scale_offset_problems(rel: str, src: rasterio.io.DatasetReader) -> list[Problem]:
    """A band scale other than 1 or an offset other than 0.

    Readers that apply them (QGIS, xarray with mask_and_scale) would turn the class values into
    other numbers (scale 2, offset 10: 0/1/255 read as 10/12/520), so the map would not hold the
    spec's classes for them even though the stored pixels do.
    """
    if not src.count:
        return []
    scale, offset = src.scales[0], src.offsets[0]
    if scale == 1 and offset == 0:
        return []
    return [Problem(rel, SCALE_OFFSET, f"band scale {scale:g}, offset {offset:g}",
                    "scale 1 and offset 0 (the stored values are the classes)")]


def resampling_problems(rel: str, src: rasterio.io.DatasetReader) -> list[Problem]:
    """Overviews that the file's own resampling tag says are not nearest.

    The tag is only present where the tool wrote it (rio-cogeo does, GDAL's COG driver does
    not); whatever it says, the overview pixels are also compared with the full image
    (``OverviewCheck``).
    """
    tag = src.tags().get(OVERVIEW_RESAMPLING_TAG)
    if tag is None or not src.overviews(1) or tag.strip().upper() in NEAREST_NAMES:
        return []
    want = ENCODING.overview_resampling
    return [Problem(rel, OVERVIEW_RESAMPLING, f"{OVERVIEW_RESAMPLING_TAG}={tag}",
                    f"{want.upper()} ({want} overviews keep the class values and the damage)")]


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


#: GDAL options for every open of a product: only the file itself counts, never a PAM sidecar
#: (``<file>.aux.xml``) that could supply a nodata value, scale or tags the file lacks (and GDAL
#: writes no sidecar either).
FILE_ONLY_CONFIG = {"GDAL_PAM_ENABLED": "NO"}
#: GDAL options for rio-cogeo's validator, which re-opens the file once per IFD and only looks
#: at the TIFF structure: skipping the georeferencing (GeoTIFF keys -> PROJ) makes each open
#: about four times cheaper. The CRS and transform are checked by ``header_problems``.
COG_VALIDATE_CONFIG = {"GDAL_GEOREF_SOURCES": "NONE", **FILE_ONLY_CONFIG}
#: Without georeferencing rasterio warns "not georeferenced"; the warning filter is process
#: state, so threads take turns (the validator call costs about a millisecond).
_COG_LOCK = threading.Lock()
_VALID_COG = "a valid Cloud-Optimized GeoTIFF (rio-cogeo cog_validate)"


def cog_problems(rel: str, path: Path) -> list[Problem]:
    """What rio-cogeo's COG validator says about the file (errors, and warnings as warnings).

    Its errors are errors for a map ``produce`` wrote and warnings for the others
    (``made_by_produce``; the file's tags are only read when there is an error to judge). A
    validator that fails altogether is an error for every file.
    """
    try:
        with _COG_LOCK, warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            _, errors, cog_warnings = cog_validate(path, quiet=True, config=COG_VALIDATE_CONFIG)
    except Exception as exc:  # noqa: BLE001 - any failure of the validator is a finding
        return [Problem(rel, COG, f"COG validation failed: {exc}", _VALID_COG)]
    produced = not errors or _made_by_produce_file(Path(path))
    return ([_layout_problem(rel, COG, e, _VALID_COG, produced) for e in errors]
            + [Problem(rel, COG_WARNING, w, "no COG warnings", severity="warning")
               for w in cog_warnings])


def _made_by_produce_file(path: Path) -> bool:
    """``made_by_produce`` of a file not open yet (one that does not open counts as ours:
    ``raster-unreadable`` reports it)."""
    try:
        with rasterio.Env(**FILE_ONLY_CONFIG), rasterio.open(path) as src:
            tags = src.tags()
    except RasterioError:
        return True
    return made_by_produce(path, tags)


# --------------------------------------------------------------------------------------------
# Grid lattice
# --------------------------------------------------------------------------------------------


def lattice_offset(transform: rasterio.Affine,
                   resolution: float = ENCODING.resolution) -> tuple[float, float]:
    """How far (x, y in metres, in [0, resolution)) a grid's origin lies off the lattice of
    multiples of the pixel size; (0, 0) for the producer's aligned grids (``producer.grid``).

    Rounded to the millimetre so that equal lattices compare equal despite float noise.
    """
    def offset(coordinate: float) -> float:
        value = round(coordinate % resolution, 3) % resolution
        return 0.0 if value < LATTICE_TOLERANCE_M else value

    return offset(transform.c), offset(transform.f)


def lattice_of(src: rasterio.io.DatasetReader) -> tuple[float, float] | None:
    """The file's ``lattice_offset``, or None where its pixels are not 30 m north-up squares
    (no lattice to compare; ``raster-resolution`` reports those)."""
    return lattice_offset(src.transform) if _resolution_ok(src) else None


def _offset_text(offset: tuple[float, float]) -> str:
    return f"({offset[0]:g}, {offset[1]:g}) m"


def origin_problems(rel: str, src: rasterio.io.DatasetReader) -> list[Problem]:
    """A warning for a grid origin that is not a multiple of the pixel size.

    The producer's grids are aligned to multiples of 30 m (``producer.grid.Grid``); a file that
    is not may still be a published file of the authors, whose grids we cannot verify, hence a
    warning. Only checked on 30 m north-up pixels (otherwise ``raster-resolution`` reports).
    """
    offset = lattice_of(src)
    if offset is None or offset == (0.0, 0.0):
        return []
    t = src.transform
    res = ENCODING.resolution
    return [Problem(rel, GRID_ORIGIN, f"origin ({t.c:.3f}, {t.f:.3f}) lies {_offset_text(offset)} "
                    f"off the {res:g} m lattice",
                    f"an origin at multiples of {res:g} m (the producer's aligned grid)",
                    severity="warning")]


def stack_problems(offsets: Mapping[str, tuple[float, float]]) -> list[Problem]:
    """Products of one shelf whose years lie on different 30 m lattices (they must stack).

    ``offsets`` maps release-relative product paths (``<Shelf>/<YYYY>/<file>``) to their
    ``lattice_offset``. The lattice most years of a shelf use (ties: the aligned one, then the
    smallest offset) is the reference; each file off it is reported when another year is on
    it. Two files of one year on different lattices are ``pair-grid``'s finding.
    """
    shelves: dict[str, dict[str, tuple[float, float]]] = {}
    for rel, offset in offsets.items():
        shelves.setdefault(rel.split("/", 1)[0], {})[rel] = offset
    problems: list[Problem] = []
    for files in shelves.values():
        if len(set(files.values())) > 1:
            problems.extend(_off_lattice(files))
    return problems


def _year(rel: str) -> str:
    return rel.split("/")[1] if rel.count("/") >= 2 else ""


def _off_lattice(files: Mapping[str, tuple[float, float]]) -> Iterator[Problem]:
    """The files of one shelf that are not on its reference lattice (see ``stack_problems``)."""
    votes = Counter(offset for _, offset in {(_year(rel), o) for rel, o in files.items()})
    reference = min(votes, key=lambda o: (-votes[o], o != (0.0, 0.0), o))
    res = ENCODING.resolution
    for rel, offset in sorted(files.items()):
        others = sorted(r for r, o in files.items() if o == reference and _year(r) != _year(rel))
        if offset == reference or not others:
            continue
        more = f" and {len(others) - 1} more file(s) of other years" if len(others) > 1 else ""
        yield Problem(rel, GRID_STACK,
                      f"origin {_offset_text(offset)} off the {res:g} m lattice; {others[0]}"
                      f"{more}: {_offset_text(reference)}",
                      f"every year of a shelf on the same {res:g} m lattice, so that its maps "
                      "stack pixel on pixel")


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


# --------------------------------------------------------------------------------------------
# Overview rules
# --------------------------------------------------------------------------------------------


def nearest_sources(full: int, sizes: list[int]) -> list[np.ndarray]:
    """For each overview level, the full-resolution index that each overview pixel along one
    axis (rows or columns) copies when GDAL builds the overviews with nearest resampling.

    Found empirically with GDAL 3.10 (rio-cogeo, as the writer calls it, and GDAL's COG
    driver): each level is resampled from the previous one, and pixel i of a level of n
    pixels copies pixel ``int(0.5 + i * m / n)`` of the level of m pixels before it (the
    top-left pixel of its block when the factor divides the size: 2i, 4i, 8i, ...).
    """
    found: list[np.ndarray] = []
    previous = np.arange(full, dtype=np.int64)
    for size in sizes:
        ratio = len(previous) / size
        picks = (np.arange(size, dtype=np.int64) * ratio + 0.5).astype(np.int64)
        previous = previous[np.minimum(picks, len(previous) - 1)]
        found.append(previous)
    return found


def _step(indices: np.ndarray) -> int | None:
    """The stride s if ``indices`` is ``first + s * arange(n)`` (then slices pick it), else None."""
    if len(indices) < 2:
        return 1
    steps = np.diff(indices)
    return int(steps[0]) if steps[0] > 0 and bool((steps == steps[0]).all()) else None


#: Most bytes of overview rows a level keeps read ahead (a band of whole rows, so that the
#: full-resolution windows of one row of tiles, left to right, share one read).
OVERVIEW_BAND_BYTES = 4 * 1024 * 1024


@dataclass
class _Level:
    """One overview level being compared: how to read it, and the full-resolution pixels it
    copies (row and column indices, see ``nearest_sources``).

    Its pixels are read in bands of whole rows (up to a tile row, ``OVERVIEW_BAND_BYTES``),
    each tallied once when read, and handed out to the windows they belong to: one read per
    band instead of one per window.
    """

    level: int
    src: rasterio.io.DatasetReader
    """The level's own dataset, or, when ``factor`` is set, the full-resolution one."""
    rows: np.ndarray
    cols: np.ndarray
    tally: ValueTally
    factor: int | None = None
    """Set for a level that decimates exactly by this factor: it is read through the open
    full-resolution dataset (a window aligned to the factor, read at 1/factor size, is the
    overview's own pixels), which saves an open per level."""
    row_step: int | None = field(init=False)
    col_step: int | None = field(init=False)
    differ: int = 0
    failed: bool = False
    _band: np.ndarray = field(init=False, repr=False)
    """Scratch for a band of rows, allocated once."""
    _current: np.ndarray = field(init=False, repr=False)
    """The band last read (a view of ``_band`` unless it did not fit), rows ``_band_rows``."""
    _band_rows: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.row_step, self.col_step = _step(self.rows), _step(self.cols)
        width = max(1, self.cols.size)
        rows = max(1, min(ENCODING.blocksize, OVERVIEW_BAND_BYTES // width))
        self._band = np.empty((rows, width), np.dtype(self.src.dtypes[0]))
        self._current = self._band[:0]

    def _read(self, first: int, end: int) -> np.ndarray:
        """Overview rows first:end, whole width, into the band buffer."""
        out = self._band[: end - first] if end - first <= len(self._band) \
            else np.empty((end - first, self.cols.size), self._band.dtype)
        width, f = self.cols.size, self.factor
        if f is None:
            return self.src.read(1, window=Window(0, first, width, end - first), out=out)
        window = Window(0, first * f, width * f, (end - first) * f)
        return self.src.read(1, window=window, out=out, resampling=Resampling.nearest)

    def pixels(self, first: int, end: int) -> np.ndarray:
        """Overview rows first:end (whole width), read with the band holding them if needed;
        rows are asked for in order, so each is read and tallied once."""
        start, stop = self._band_rows
        if not (start <= first and end <= stop):
            tallied = stop
            stop = min(self.rows.size, max(end, first + len(self._band)))
            band = self._read(first, stop)
            self.tally.update(band[max(0, tallied - first):])
            self._band_rows, self._current = (first, stop), band
            start = first
        return self._current[first - start: end - start]


def _take(block: np.ndarray, indices: np.ndarray, step: int | None, axis: int) -> np.ndarray:
    """``block`` at ``indices`` along an axis: a strided view when they are evenly spaced."""
    if step is None:
        return np.take(block, indices, axis=axis)
    part = slice(int(indices[0]), int(indices[-1]) + 1, step)
    return block[part] if axis == 0 else block[:, part]


def _divides(src: rasterio.io.DatasetReader, factors: list[int]) -> bool:
    """Whether every factor divides the raster's size and the one before it: then nearest
    resampling copies pixel (f*i, f*j) and the level is f times smaller, exactly."""
    previous = 1
    for factor in factors:
        if factor % previous or src.height % factor or src.width % factor:
            return False
        previous = factor
    return True


class OverviewCheck:
    """Values and content of every internal overview, fed the full image window by window.

    For each full-resolution window the overview pixels whose nearest source lies in it (see
    ``nearest_sources``) are read and (1) tallied for values outside the class set, (2)
    compared exactly with those source pixels. So each overview pixel is read once and the
    full image is not read again; averaged, mode or stale overviews differ from the image even
    where their values stay in the class set.
    """

    def __init__(self, rel: str, src: rasterio.io.DatasetReader, path: Path,
                 product_type: ProductType, stack: ExitStack) -> None:
        self.rel, self.product_type = rel, product_type
        self.problems: list[Problem] = []
        self._buffers = Buffers()
        self.levels: list[_Level] = []
        readers: list[tuple[rasterio.io.DatasetReader, int | None]] = []
        shapes: list[tuple[int, int]] = []
        factors = src.overviews(1) if src.count else []
        for level, factor in enumerate(factors):
            if _divides(src, factors[:level + 1]):
                readers.append((src, factor))
                shapes.append((src.height // factor, src.width // factor))
                continue
            try:  # sizes GDAL rounded: the level's own dataset says what they are
                own = stack.enter_context(rasterio.open(path, overview_level=level))
            except RasterioError as exc:
                self._unreadable(level, exc)
                return
            readers.append((own, None))
            shapes.append(own.shape)
        rows = nearest_sources(src.height, [h for h, _ in shapes])
        cols = nearest_sources(src.width, [w for _, w in shapes])
        self.levels = [_Level(level, reader, r, c, ValueTally(product_type.values), factor)
                       for level, ((reader, factor), r, c)
                       in enumerate(zip(readers, rows, cols, strict=True))]

    def _unreadable(self, level: int, exc: Exception) -> None:
        self.problems.append(Problem(self.rel, UNREADABLE, f"overview {level}: {exc}",
                                     "every overview block readable"))

    def update(self, window: Window, block: np.ndarray) -> None:
        """Compare the overview pixels copied from this full-resolution window."""
        r0, c0 = int(window.row_off), int(window.col_off)
        for level in self.levels:
            if not level.failed:
                self._compare(level, r0, c0, block)

    def _compare(self, level: _Level, r0: int, c0: int, block: np.ndarray) -> None:
        """One level's part of one window: read it, tally its values, count differences."""
        i0, i1 = np.searchsorted(level.rows, (r0, r0 + block.shape[0]))
        j0, j1 = np.searchsorted(level.cols, (c0, c0 + block.shape[1]))
        if i0 == i1 or j0 == j1:
            return
        shape = (int(i1 - i0), int(j1 - j0))
        try:
            overview = level.pixels(int(i0), int(i1))[:, j0:j1]
        except RasterioError as exc:
            level.failed = True
            self._unreadable(level.level, exc)
            return
        rows = _take(block, level.rows[i0:i1] - r0, level.row_step, 0)
        source = _take(rows, level.cols[j0:j1] - c0, level.col_step, 1)
        differ = np.not_equal(overview, source, out=self._buffers.get("differ", shape, bool))
        level.differ += int(np.count_nonzero(differ))

    def results(self) -> list[Problem]:
        """Read failures, values outside the class set and differences, per level."""
        found = list(self.problems)
        for level in self.levels:
            found.extend(value_problem(self.rel, level.tally, self.product_type,
                                       overview=level.level))
            if level.differ:
                size = level.rows.size * level.cols.size
                found.append(Problem(
                    self.rel, OVERVIEW_CONTENT,
                    f"overview {level.level} ({level.cols.size} x {level.rows.size} px): "
                    f"{level.differ} of {size} px differ from the full-resolution pixel "
                    "nearest resampling copies",
                    f"{ENCODING.overview_resampling} overviews: each overview pixel equal to "
                    "its source pixel of the full image (as GDAL builds them)"))
        return found
