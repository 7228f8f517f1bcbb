"""Damage area, shelf area and damage fraction with uncertainty bounds, as the authors compute them.

The authors' time-series analysis (see ../shared/reference/README.md) reads each type-1
``*_damage_map.tif``: valid pixels are those != nodata, damage pixels are value 1, area is pixels
times |a·e| of the transform, fraction = damage area / valid area, and a map is DiffGF-derived when
its path contains "diffgf" (any case). Areas are thus map areas in EPSG:3031, not true ground
areas: polar stereographic is true to area only at 71°S (its areal scale is ~1.05 at 64°S and
~0.95 at 85°S); we keep the authors' numbers so they compare with the paper's. Fractions are
ratios within one map and unaffected. Bounds multiply by λ_min / λ_max, widened for restored
maps by their method's restoration factor (``catalog.uncertainty.widened_bounds``; no upper bound
when the method has none), fractions clipped to [0, 1]. The same numbers feed the STAC items and
``icedamage stats``; rasters are read a row of tiles at a time so a full-size shelf never sits in
memory.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pystac
import rasterio
from rasterio.errors import RasterioError
from rasterio.windows import Window

import schemas
from catalog.uncertainty import UncertaintyFactors, restoration_rule
from producer.spec import ENCODING, RELEASED_RESTORATION, TYPE1, SpecError, parse_name

M2_PER_KM2 = 1e6
P = schemas.PREFIX


@dataclass(frozen=True)
class PixelCounts:
    """Counts of one type-1 raster and the area of one of its pixels."""

    damage_pixels: int
    valid_pixels: int
    pixel_area_m2: float


@dataclass(frozen=True)
class DamageStats:
    """Per shelf-year numbers of Fig. 11, with the factors used for their bounds."""

    shelf: str
    year: int
    restoration: str | None
    """Restoration method of the map's imagery (None: not restored); its factor widens the
    bounds (``catalog.uncertainty.widened_bounds``)."""
    damage_pixels: int
    valid_pixels: int
    damage_area_km2: float
    valid_area_km2: float
    damage_fraction: float | None
    damage_area_km2_low: float
    damage_area_km2_high: float | None
    """None when the map is restored with a method whose restoration factor is not known."""
    damage_fraction_low: float | None
    damage_fraction_high: float | None
    lambda_lower: float
    lambda_upper: float
    lambda_restoration: float | None
    """The restoration factor of the map's method (None: not restored, or not known)."""
    lambda_upper_restored: float | None
    """The upper factor a restored map took (λ_max · max(1, λ_restoration)); None when not
    restored or not known."""
    sensors: tuple[str, ...] = ()
    main_scene_date: str | None = None
    """ISO date of the main scene (the item's datetime), when known."""

    @property
    def diffgf_derived(self) -> bool:
        """Whether the map was made from DiffGF-restored imagery (the paper's λ_DiffGF case)."""
        return self.restoration == RELEASED_RESTORATION

    @property
    def measured(self) -> bool:
        """Whether the map has any valid pixel, i.e. whether its damage numbers mean anything.

        A map with no valid pixel (empty extent, all NoData) counts 0 damage pixels, but that is
        "not observed", not "no damage": tables and plots must not show it as 0 km².
        """
        return self.valid_pixels > 0

    @property
    def upper_unknown(self) -> bool:
        """Whether the upper bound is unknown (a restoration method without a known factor)."""
        return self.damage_area_km2_high is None

    def as_row(self) -> dict[str, object]:
        """A flat dict for tables (CSV / ODS): shelf, year, main-scene date, sensors and
        restoration first, then the numbers. Damage area and its bounds are None (an empty
        cell) for a map with no valid pixel, like the fraction, so the year reads as missing;
        an unknown upper bound is an empty cell too.

        The fields themselves keep the pixel-count numbers (0 km²): the STAC items record those
        (the extension schema requires a number there) and validation recomputes them.
        """
        fields = dataclasses.asdict(self)
        row: dict[str, object] = {
            "shelf": self.shelf, "year": self.year, "main_scene_date": self.main_scene_date,
            "sensors": " ".join(self.sensors) or None, "restoration": self.restoration,
            "diffgf_derived": self.diffgf_derived}
        row |= {k: v for k, v in fields.items() if k not in row and k != "sensors"}
        if not self.measured:
            row.update(damage_area_km2=None, damage_area_km2_low=None,
                       damage_area_km2_high=None)
        return row


def map_restoration(path: Path | str) -> str | None:
    """The restoration method of a map's imagery (None: not restored), from its file name.

    A product name (``producer.spec.parse_name``) says it by its restoration token. Only for a
    file whose name does not parse does the authors' rule apply (their time-series code:
    DiffGF-derived when the path contains "diffgf", any case), so files named as they name them
    are still read as they read them. That fallback looks at the file name only (not parent
    folders): a release under a folder that contains the word is not misread.
    """
    name = Path(path).name
    try:
        return parse_name(name).restoration
    except SpecError:
        return RELEASED_RESTORATION if RELEASED_RESTORATION.lower() in name.lower() else None


def is_diffgf_derived(path: Path | str) -> bool:
    """Whether a map was made from DiffGF-restored imagery (its upper bound then takes the
    restoration factor λ_DiffGF): ``map_restoration`` is exactly the released method, so another
    method whose name merely contains "DiffGF" is not DiffGF."""
    return map_restoration(path) == RELEASED_RESTORATION


def _pixel_value(value: float, dtype: np.dtype) -> Any:
    """``value`` as a scalar of an integer ``dtype`` when that holds it exactly, else ``value``
    itself (the same comparisons either way).

    Why: rasterio gives nodata as a float, and comparing a UInt8 array with a float compares
    in float64 (3x slower); the converted scalar compares in the array's own type. A value the
    type cannot hold (NaN, 300, -1 for UInt8) stays as it is and matches no pixel, as before.
    """
    if np.issubdtype(dtype, np.integer) and math.isfinite(value) and float(value).is_integer():
        info = np.iinfo(dtype)
        if info.min <= value <= info.max:
            return dtype.type(int(value))
    return value


def _scan_rows(src: rasterio.io.DatasetReader) -> int:
    """Rows read at once when scanning a raster front to back: whole rows of its blocks, about
    ``ENCODING.blocksize`` rows (a row of the spec's tiles), so each block is decoded once and
    one read covers many of them."""
    block_rows = max(1, src.block_shapes[0][0]) if src.count else 1
    return block_rows * max(1, ENCODING.blocksize // block_rows)


def unreadable_raster(path: Path, error: RasterioError) -> ValueError:
    """The error for a raster rasterio cannot open or read: the file, and GDAL's own reason
    (a failed read says only "Read failed. See previous exception"; the reason is its cause)."""
    cause = error.__cause__ or error.__context__
    detail = cause if cause is not None and str(cause) else error
    return ValueError(f"{path}: cannot be read as a GeoTIFF (rasterio: {detail}); the file is "
                      "truncated or damaged: restore it, or re-run produce for this shelf-year")


@contextlib.contextmanager
def reading_raster(path: Path) -> Iterator[None]:
    """Turn a rasterio error of the block into ``unreadable_raster``'s ValueError naming
    ``path``, so commands print one line that says which file is damaged."""
    try:
        yield
    except RasterioError as error:
        raise unreadable_raster(path, error) from None


def count_pixels(path: Path) -> PixelCounts:
    """Damage and valid pixel counts of a type-1 raster, read a row of tiles at a time.

    Valid pixels are those != nodata (the file's nodata, else type 1's), damage pixels those
    == ``TYPE1.damage``. Each read fills one reused buffer with whole rows of tiles, under a
    capped GDAL block cache (``SCAN_CACHE_BYTES``; GDAL's default would keep every decoded tile
    of a file read only once): for Amery's map, 38 % less CPU and 220 MB less memory than a
    read per block into new arrays, same counts (docs/benchmarks.md). The cap is process-wide
    and restored on return: callers scanning from several threads set it once around them
    (as ``validation.product_rules`` does).
    """
    from producer.writer import scan_cache

    damage = missing = 0
    with scan_cache(), rasterio.open(path) as src:
        dtype = np.dtype(src.dtypes[0])
        nodata = _pixel_value(src.nodata if src.nodata is not None else TYPE1.nodata, dtype)
        damage_value = _pixel_value(TYPE1.damage, dtype)
        rows, width = _scan_rows(src), src.width
        pixels = np.empty((min(rows, src.height), width), dtype)
        flags = np.empty(pixels.shape, bool)
        for row in range(0, src.height, rows):
            height = min(rows, src.height - row)
            block = src.read(1, window=Window(0, row, width, height), out=pixels[:height])
            missing += int(np.count_nonzero(np.equal(block, nodata, out=flags[:height])))
            damage += int(np.count_nonzero(np.equal(block, damage_value, out=flags[:height])))
        valid = src.width * src.height - missing
        area = abs(src.transform.a * src.transform.e)
    return PixelCounts(damage, valid, area)


def damage_stats(shelf: str, year: int, counts: PixelCounts, restoration: str | bool | None,
                 factors: UncertaintyFactors) -> DamageStats:
    """Areas, fraction and their bounds from pixel counts (pure).

    ``restoration`` is the map's restoration method (None or False: not restored; True: DiffGF,
    as callers that only knew "DiffGF-derived" said it). Areas are pixel counts × the EPSG:3031
    cell area (not true ground area; see the module).
    """
    method = RELEASED_RESTORATION if restoration is True else (restoration or None)
    damage_km2 = counts.damage_pixels * counts.pixel_area_m2 / M2_PER_KM2
    valid_km2 = counts.valid_pixels * counts.pixel_area_m2 / M2_PER_KM2
    fraction = damage_km2 / valid_km2 if counts.valid_pixels else None
    area_low, area_high = factors.bounds(damage_km2, method)
    frac_low, frac_high = (factors.bounds(fraction, method, fraction=True)
                           if fraction is not None else (None, None))
    restored = method is not None
    return DamageStats(
        shelf=shelf, year=year, restoration=method,
        damage_pixels=counts.damage_pixels, valid_pixels=counts.valid_pixels,
        damage_area_km2=damage_km2, valid_area_km2=valid_km2, damage_fraction=fraction,
        damage_area_km2_low=area_low, damage_area_km2_high=area_high,
        damage_fraction_low=frac_low, damage_fraction_high=frac_high,
        lambda_lower=factors.lambda_min, lambda_upper=factors.lambda_max,
        lambda_restoration=factors.restoration_factor(method) if restored else None,
        lambda_upper_restored=factors.factors_for(method)[1] if restored else None,
    )


def file_stats(path: Path, shelf: str, year: int, factors: UncertaintyFactors,
               counts: PixelCounts | None = None) -> DamageStats:
    """Stats of one type-1 product file (its sensors from its name, when the name parses);
    ``counts``: its pixel counts when already known (else they are counted)."""
    stats = damage_stats(shelf, year, counts or count_pixels(path), map_restoration(path),
                         factors)
    try:
        return dataclasses.replace(stats, sensors=tuple(parse_name(Path(path).name).sensors))
    except SpecError:
        return stats


def _positive(value: Any) -> bool:
    """Whether a field value is a usable factor: a positive finite number (not a bool)."""
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value) and value > 0)


def item_factors(props: Mapping[str, Any]) -> UncertaintyFactors | None:
    """The factors an item's ``icedamage:`` fields record (pure); None when its λ_lower or
    λ_upper is not a positive number.

    A restored item's method gets ``icedamage:lambda_restoration``, or for catalogs from before
    that field ``lambda_upper_restored / lambda_upper``; neither known leaves the method without
    a factor (no upper bound), as the item itself says.
    """
    lower, upper = props.get(f"{P}lambda_lower"), props.get(f"{P}lambda_upper")
    if not (_positive(lower) and _positive(upper)):
        return None
    factors = UncertaintyFactors(float(lower), float(upper), None)
    method = props.get(f"{P}restoration")
    if not isinstance(method, str) or not method:
        return factors
    factor = props.get(f"{P}lambda_restoration")
    if not _positive(factor):
        upper_restored = props.get(f"{P}lambda_upper_restored")
        factor = upper_restored / upper if _positive(upper_restored) else None
    if factor is None and f"{P}lambda_restoration" not in props and \
            _positive(props.get(f"{P}damage_area_km2_high")):
        # catalogs from before the field (0.2.0) gave a method without a factor the plain
        # upper bound: read their items as they were published. A later item whose factor is
        # null (or left out, which means null) has a null upper bound too, so it is never
        # taken for one of those, whether its nulls were written or dropped.
        factor = 1.0
    return factors.with_restoration(method, float(factor) if factor is not None else None)


def catalog_factors(items: Iterable[pystac.Item]) -> UncertaintyFactors | None:
    """The factors a catalog was built with, read back from its items (pure): λ_min, λ_max and
    the restoration factor of every method some item knows. None when no item records any;
    a ``ValueError`` when items disagree (a catalog is built with one set of factors, so it was
    edited or mixed: rebuild it or give the factors)."""
    found = [(i.id, f) for i in items if (f := item_factors(i.properties)) is not None]
    if not found:
        return None
    first_id, merged = found[0]
    merged = UncertaintyFactors(merged.lambda_min, merged.lambda_max, None)
    known: dict[str, tuple[str, float]] = {}
    for item_id, factors in found:
        if not (math.isclose(factors.lambda_min, merged.lambda_min)
                and math.isclose(factors.lambda_max, merged.lambda_max)):
            raise ValueError(f"items {first_id} and {item_id} record different uncertainty "
                             "factors (λ_lower/λ_upper); rebuild the catalog with `icedamage "
                             "catalog --force` or give --factors")
        for method, factor in factors.known_restorations().items():
            other = known.setdefault(method, (item_id, factor))
            if not math.isclose(other[1], factor):
                raise ValueError(f"items {other[0]} and {item_id} record different {method} "
                                 "restoration factors; rebuild the catalog with `icedamage "
                                 "catalog --force` or give --factors")
    for method, (_, factor) in known.items():
        merged = merged.with_restoration(method, factor)
    return merged


def item_main_dates(items: Iterable[pystac.Item]) -> dict[tuple[str, int], str]:
    """(shelf, year) -> ISO main-scene date (the item's datetime) of the items that have one."""
    return {(i.properties[f"{P}shelf"], int(i.properties[f"{P}year"])):
            i.datetime.date().isoformat() for i in items if i.datetime is not None}


def stats_close(a: float | None, b: float | None, rel: float = 1e-9) -> bool:
    """Equality of two stats values that tolerates float rounding and None."""
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=rel, abs_tol=1e-12)


# ---------------------------------------------------------------------------------------------
# Release-wide table and Fig. 11 style plot
# ---------------------------------------------------------------------------------------------

#: Ten colour-blind-safe colours, one per released shelf (in ``producer.shelves.SHELVES``
#: order): the eight of Okabe & Ito, with Paul Tol's indigo and brown instead of grey and wine,
#: which read as Larsen B's reddish purple under deuteranopia or by hue. Shelves often shown
#: together get far-apart hues (Larsen B blue, Totten vermillion); under simulated protanopia
#: and deuteranopia no two are closer than Okabe & Ito's own orange and yellow.
SHELF_COLOURS = ("#E69F00", "#56B4E9", "#009E73", "#F0E442", "#332288", "#CC79A7", "#0072B2",
                 "#000000", "#661100", "#D55E00")
#: One marker per shelf as well, so no reader has to tell shelves apart by hue alone.
SHELF_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")
#: Legend text of the hollow markers that mark years mapped from restored imagery.
RESTORED_LABEL = "restored SLC-off imagery (hollow marker)"
#: Characters per line of the plot's caption of the factors applied (fits the 9-inch figure).
CAPTION_WIDTH = 110


@dataclass(frozen=True)
class ShelfStyle:
    """How one shelf is drawn in the time-series plot."""

    colour: str
    marker: str


def shelf_styles(shelves: Iterable[str]) -> dict[str, ShelfStyle]:
    """A distinct style per shelf, the same for a shelf in every figure.

    Released shelves take their place in ``producer.shelves.SHELVES`` (so the ten of them get
    ten colours and ten markers, whichever subset a release holds); other names follow in
    sorted order. Beyond ten, the marker shifts by one per round of colours, so (colour,
    marker) pairs stay distinct up to 100 shelves.
    """
    from producer.shelves import SHELVES

    wanted = set(shelves)
    order = list(SHELVES) + sorted(wanted - set(SHELVES))
    styles = {}
    for index, shelf in enumerate(order):
        if shelf in wanted:
            marker = SHELF_MARKERS[(index + index // len(SHELF_COLOURS)) % len(SHELF_MARKERS)]
            styles[shelf] = ShelfStyle(SHELF_COLOURS[index % len(SHELF_COLOURS)], marker)
    return styles


def year_limits(years: Iterable[int]) -> tuple[float, float]:
    """x-axis limits of the time series: one year of margin each side of the years shown.

    Matplotlib's own margins turn a single year into a ±100-year axis; this keeps a one-year
    release readable and the same rule for every release.
    """
    years = list(years)
    if not years:
        raise ValueError("no years to plot")
    return min(years) - 1.0, max(years) + 1.0


def yearly_series(rows: list[DamageStats], value: Callable[[DamageStats], float | None],
                  ) -> tuple[np.ndarray, np.ndarray]:
    """(years, values) of one shelf's rows over every year from its first to its last.

    A year without a product, or whose map has no valid pixel, or whose ``value`` is None (an
    unknown upper bound), is NaN: matplotlib breaks lines and bands there instead of joining
    the years either side (a missing year must not look like a trend, nor a 0).
    """
    by_year = {r.year: r for r in rows}
    years = np.arange(min(by_year), max(by_year) + 1)
    values = np.full(years.shape, np.nan)
    for k, year in enumerate(years.tolist()):
        row = by_year.get(year)
        got = value(row) if row is not None and row.measured else None
        if got is not None:
            values[k] = got
    return years, values


def _provenance_date(found: Any) -> str | None:
    """ISO date of the main scene of a shelf-year's provenance record (None without one)."""
    record, _ = found.provenance_or_error()
    return record.main_scene.acquired.isoformat() if record is not None else None


def release_stats(release_dir: Path, factors: UncertaintyFactors,
                  progress: Callable[[int, int], None] | None = None,
                  dates: Mapping[tuple[str, int], str] | None = None) -> list[DamageStats]:
    """Stats of every type-1 product of a release, sorted by shelf and year (``progress`` sees
    the maps counted so far and their total). The main-scene date of a shelf-year comes from
    ``dates`` ((shelf, year) -> ISO date, e.g. the catalog's item datetimes), else from its
    provenance record. A map rasterio cannot read is a ValueError naming it
    (``reading_raster``)."""
    from catalog.release import scan_release

    maps = [f for f in scan_release(release_dir) if f.damage_map is not None]
    rows = []
    for done, found in enumerate(maps, start=1):
        assert found.damage_map is not None
        key = (found.name.shelf, found.name.year)
        with reading_raster(found.damage_map):
            stats = file_stats(found.damage_map, *key, factors)
        date = (dates or {}).get(key) or _provenance_date(found)
        rows.append(dataclasses.replace(stats, sensors=tuple(found.name.sensors),
                                        main_scene_date=date))
        if progress is not None:
            progress(done, len(maps))
    return sorted(rows, key=lambda s: (s.shelf, s.year))


def catalogued_stats(items: Iterable[pystac.Item],
                     factors: UncertaintyFactors | None = None) -> list[DamageStats]:
    """Stats of cataloged items from the numbers their ``icedamage:`` fields record, sorted by
    shelf and year: for a published record, whose maps are not on disk. Those numbers are what
    ``icedamage catalog`` computed from the pixels (areas are pixel counts × the pixel area), so
    the rows equal ``release_stats`` of the release itself; bounds use ``factors`` when given,
    else the λ each item was cataloged with (``item_factors``)."""
    rows = []
    for item in items:
        props = item.properties
        pixel_m2 = float(props.get("gsd") or ENCODING.resolution) ** 2
        counts = PixelCounts(round(props[f"{P}damage_area_km2"] * M2_PER_KM2 / pixel_m2),
                             round(props[f"{P}valid_area_km2"] * M2_PER_KM2 / pixel_m2), pixel_m2)
        lambdas = factors or item_factors(props)
        if lambdas is None:
            raise ValueError(f"item {item.id} records no uncertainty factors (icedamage:"
                             "lambda_lower / lambda_upper); give --factors")
        stats = damage_stats(props[f"{P}shelf"], int(props[f"{P}year"]), counts,
                             props.get(f"{P}restoration"), lambdas)
        rows.append(dataclasses.replace(
            stats, sensors=tuple(props.get(f"{P}sensors") or ()),
            main_scene_date=item.datetime.date().isoformat() if item.datetime else None))
    return sorted(rows, key=lambda s: (s.shelf, s.year))


def stats_frame(rows: list[DamageStats]):  # noqa: ANN201 - pandas is imported lazily
    """The stats as a pandas DataFrame (one row per shelf-year)."""
    import pandas as pd

    return pd.DataFrame([r.as_row() for r in rows])


#: What tables show for a map without valid pixels (not "0 km² of damage").
NOT_OBSERVED = "not observed (no valid pixel)"
#: What the console shows for an upper bound that no known factor gives.
UNKNOWN_BOUND = "unknown"


def _range(value: float, low: float | None, high: float | None, scale: float = 1.0) -> str:
    """"value (low-high)" with two decimals; an unknown bound reads ``UNKNOWN_BOUND``."""
    def text(number: float | None) -> str:
        return UNKNOWN_BOUND if number is None else f"{number * scale:.2f}"

    return f"{value * scale:.2f} ({text(low)}-{text(high)})"


def console_cells(row: DamageStats) -> tuple[str, str, str]:
    """Damage km² (low-high), shelf km² and fraction % (low-high) as the console shows them;
    a map without valid pixels says so instead of showing 0 km² of damage, and an upper bound
    no known restoration factor gives reads "unknown"."""
    if not row.measured or row.damage_fraction is None:
        return NOT_OBSERVED, f"{row.valid_area_km2:.2f}", ""
    return (_range(row.damage_area_km2, row.damage_area_km2_low, row.damage_area_km2_high),
            f"{row.valid_area_km2:.2f}",
            _range(row.damage_fraction, row.damage_fraction_low, row.damage_fraction_high, 100))


def unknown_bound_note(rows: Iterable[DamageStats]) -> str | None:
    """A sentence on the rows whose upper bound is unknown (None when there are none)."""
    methods = sorted({r.restoration or "" for r in rows if r.upper_unknown and r.measured})
    if not methods:
        return None
    return (f"upper bound unknown for maps restored with {', '.join(methods)}: no restoration "
            "factor is known for the method (give one in a factors file: `icedamage "
            "uncertainty --restoration EVAL --restoration-method METHOD`, then --factors)")


def bounds_caption(rows: Iterable[DamageStats]) -> str:
    """The factors the bounds of ``rows`` took, in words (the plot's subtitle): λ_min and
    λ_max, and per restoration method present what its factor did (``restoration_rule``)."""
    rows = list(rows)

    def values(numbers: Iterable[float]) -> str:
        return "/".join(f"{v:.3f}" for v in sorted(set(numbers)))

    parts = [f"λ_min {values(r.lambda_lower for r in rows)}, "
             f"λ_max {values(r.lambda_upper for r in rows)}"]
    factors: dict[str, set[float | None]] = {}
    for row in rows:
        if row.restoration is not None:
            factors.setdefault(row.restoration, set()).add(row.lambda_restoration)
    for method, found in sorted(factors.items()):
        parts += [restoration_rule(method, f) for f in sorted(found, key=lambda f: f or 0.0)]
    return "; ".join(parts)


def write_table(path: Path, sheets: Mapping[str, Any]) -> Path:
    """Write pandas frames as CSV (the first frame) or ODS (one sheet each), by the path's
    extension, atomically; the one table writer of the commands that write tables."""
    import pandas as pd

    from producer.writer import atomic_path

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".ods"):
        raise ValueError(f"{path}: table format must be .csv or .ods")
    with atomic_path(path) as tmp:
        if suffix == ".csv":
            next(iter(sheets.values())).to_csv(tmp, index=False)
        else:
            with pd.ExcelWriter(tmp, engine="odf") as writer:
                for name, frame in sheets.items():
                    frame.to_excel(writer, sheet_name=name, index=False)
    return path


def write_stats_table(rows: list[DamageStats], path: Path) -> Path:
    """Write the table as CSV or ODS (by extension), atomically."""
    return write_table(path, {"Statistics": stats_frame(rows)})


def _plot_series(axis, years: np.ndarray, series: tuple[np.ndarray, np.ndarray, np.ndarray],
                 style: ShelfStyle, label: str | None) -> None:
    """One shelf on one axis: the values as a line broken at NaN, the bounds as a band.

    A year whose neighbours have no bounds (missing, or an unknown upper bound) has no band to
    draw (a band needs two adjacent years), so its bounds are shown as a bar; a year whose
    upper bound is unknown shows its lower bound alone, as a dash.
    """
    values, low, high = series
    axis.plot(years, values, linestyle="-", marker=style.marker, color=style.colour, label=label,
              markersize=4)
    axis.fill_between(years, low, high, color=style.colour, alpha=0.25, linewidth=0)
    bounded = ~np.isnan(values) & ~np.isnan(low) & ~np.isnan(high)
    before = np.concatenate(([False], bounded[:-1]))
    after = np.concatenate((bounded[1:], [False]))
    lone = bounded & ~before & ~after
    if lone.any():
        axis.vlines(years[lone], low[lone], high[lone], color=style.colour, alpha=0.5,
                    linewidth=6)
    low_only = ~np.isnan(values) & ~np.isnan(low) & np.isnan(high)
    if low_only.any():
        axis.plot(years[low_only], low[low_only], linestyle="none", marker="_", markersize=10,
                  color=style.colour, alpha=0.7, label="_lower bound only")


def _mark_restored(axis, years: np.ndarray, values: np.ndarray, restored: np.ndarray,
                   style: ShelfStyle) -> None:
    """Hollow markers over the years mapped from restored imagery (nothing when none is)."""
    shown = restored & ~np.isnan(values)
    if shown.any():
        axis.plot(years[shown], values[shown], linestyle="none", marker=style.marker,
                  markersize=6, markerfacecolor="white", markeredgecolor=style.colour,
                  markeredgewidth=1.2, label="_restored")


def stats_figure(rows: list[DamageStats]):  # noqa: ANN201 - matplotlib is imported lazily
    """The Fig. 11 style figure (damage area over damage fraction), not yet saved.

    Each shelf has its own colour and marker (``shelf_styles``); years mapped from restored
    imagery have hollow markers (with a legend entry); maps with no valid pixel and years
    without a product are gaps, not zeros, and a year without a known upper bound has no band;
    the x-axis spans the years ±1 with integer year ticks; the title names the factors the
    bounds took (``bounds_caption``). The caller closes the figure.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator, StrMethodFormatter

    if not rows:
        raise ValueError("no stats rows to plot")
    styles = shelf_styles(r.shelf for r in rows)
    fig, (ax_area, ax_frac) = plt.subplots(2, 1, figsize=(9, 7), sharex=True,
                                           constrained_layout=True)
    for shelf in sorted(styles):
        series = [r for r in rows if r.shelf == shelf]
        years, area = yearly_series(series, lambda r: r.damage_area_km2)
        restored = ~np.isnan(yearly_series(
            series, lambda r: 1.0 if r.restoration is not None else None)[1])
        _plot_series(ax_area, years, (
            area, yearly_series(series, lambda r: r.damage_area_km2_low)[1],
            yearly_series(series, lambda r: r.damage_area_km2_high)[1]), styles[shelf], shelf)
        _mark_restored(ax_area, years, area, restored, styles[shelf])
        fraction = [yearly_series(series, lambda r, f=field: getattr(r, f))[1] * 100
                    for field in ("damage_fraction", "damage_fraction_low",
                                  "damage_fraction_high")]
        if not np.isnan(fraction[0]).all():
            _plot_series(ax_frac, years, tuple(fraction), styles[shelf], None)
            _mark_restored(ax_frac, years, fraction[0], restored, styles[shelf])
    ax_area.set_ylabel("Damage area (km²)")
    ax_frac.set_ylabel("Damage fraction (%)")
    ax_frac.set_xlabel("Austral summer (year it starts)")
    ax_frac.set_xlim(*year_limits(r.year for r in rows))
    ax_frac.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    ax_frac.xaxis.set_major_formatter(StrMethodFormatter("{x:.0f}"))
    handles, labels = ax_area.get_legend_handles_labels()
    if any(r.restoration is not None and r.measured for r in rows):
        handles.append(Line2D([], [], linestyle="none", marker="o", markerfacecolor="white",
                              markeredgecolor="0.3", label=RESTORED_LABEL))
        labels.append(RESTORED_LABEL)
    ax_area.legend(handles, labels, loc="upper left", fontsize=8, ncols=2, frameon=False)
    for axis in (ax_area, ax_frac):
        axis.grid(alpha=0.3)
    caption = textwrap.fill(bounds_caption(rows), CAPTION_WIDTH)
    ax_area.set_title(f"Surface damage with uncertainty bounds\n{caption}", fontsize=9)
    return fig


def plot_stats(rows: list[DamageStats], path: Path) -> Path:
    """Write the Fig. 11 style figure (``stats_figure``) as a PNG, atomically."""
    fig = stats_figure(rows)  # selects the Agg backend before pyplot is imported here
    import matplotlib.pyplot as plt

    from producer.writer import atomic_path

    try:
        with atomic_path(Path(path)) as tmp:
            fig.savefig(tmp, format="png", dpi=120)
    finally:
        plt.close(fig)
    return Path(path)
