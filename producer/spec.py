"""The icedamage release format: the single source of truth for naming, encodings and sensors.

Everything that writes, catalogs, validates or publishes products reads its rules from here;
no other module restates them. The rules come from the dataset paper (Tang et al., ESSD 2026,
sections 2.1.2, 2.2 and 4) and from the Landsat missions' operating dates.

Layout
    ``<Shelf>/<YYYY>/`` under the release root, one folder per shelf and austral summer.

File names
    ``<Sensors>_<Shelf>_<YYYY>[<restoration token>]_damage_map.tif``  (type 1)
    ``<Sensors>_<Shelf>_<YYYY>[<restoration token>]_damage.tif``      (type 2)
    ``<Sensors>`` is one or more of ``LE07``, ``LC08``, ``LC09``, each at most once, joined with
    ``_`` in that fixed (chronological) order. ``<Shelf>`` is the released shelf name, spaces
    included ("Larsen B"). The restoration token is ``_slc_off_<Method>``; the released dataset
    only uses ``_slc_off_DiffGF``. ``_slc_off_FillNodata`` names GDAL's classical FillNodata,
    used only when a producer explicitly asks for it. Beside the two products a shelf-year folder
    may hold our auxiliary files (provenance record, damage probability, source-scene index) whose
    names share the same stem.

Encodings (both types: one band, UInt8, LZW, 30 m square pixels, EPSG:3031, Cloud-Optimized
GeoTIFF tiled 512 with internal overviews resampled with nearest so overviews hold only classes)
    type 1: 0 background, 1 damage inside the effective ice-shelf extent, 255 outside; nodata 255.
    type 2: 0 background, 255 damage over the full ROI; no nodata tag (255 is data). The grid
        is the ROI's bounding box, and 0 is written for background, for pixels outside the ROI
        polygon and for ROI pixels that no scene imaged (no data in any scene of the summer;
        never on the effective extent, which must be covered). Type 2 has no NoData by
        definition: the source-scene index (``SOURCE_SCENE_RASTER``) tells these 0s apart
        (255 outside the ROI, ``SOURCE_SCENE_NOT_IMAGED`` not imaged).

Years and sensors (plausibility rules)
    A year names the austral summer that starts in it: 1 November YYYY to 31 March YYYY+1
    (imagery of April-October is never used; polar night).
    LE07: summers 1999-2012 (the paper uses Landsat 7 from December 1999 to March 2013).
    LC08: summers 2012 onwards (first images March 2013, inside the 2012 summer).
    LC09: summers 2021 onwards (first images October/November 2021).
    Landsat 7's scan-line corrector failed on 2003-05-31, so LE07 imagery of summers starting in
    2003 or later is SLC-off: such a product must carry a restoration token. A restoration token
    on a product with no SLC-off LE07 imagery is an error.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

# --------------------------------------------------------------------------------------------
# Sensors
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sensor:
    """One Landsat sensor as it appears in product names, STAC and Earth Engine."""

    token: str
    platform: str
    instrument: str
    rgb_bands: tuple[str, str, str]
    ee_collections: tuple[str, ...]
    first_summer: int
    last_summer: int | None
    slc_off_from: dt.date | None = None

    def slc_off_in(self, year: int) -> bool:
        """Whether this sensor's imagery of the summer ``year`` has SLC-off gaps."""
        return self.slc_off_from is not None and summer_window(year)[0] >= self.slc_off_from

    @property
    def first_slc_off_summer(self) -> int | None:
        """The first summer whose imagery of this sensor has SLC-off gaps (None: never)."""
        if self.slc_off_from is None:
            return None
        year = self.slc_off_from.year
        return year if self.slc_off_in(year) else year + 1

    def covers(self, year: int) -> bool:
        """Whether the product may use this sensor for the summer ``year`` (a sensor still
        operating covers summers up to the latest that has begun)."""
        last = self.last_summer if self.last_summer is not None else latest_summer()
        return self.first_summer <= year <= last


SENSORS: dict[str, Sensor] = {
    s.token: s
    for s in (
        Sensor(
            "LE07",
            "landsat-7",
            "etm+",
            ("B3", "B2", "B1"),
            ("LANDSAT/LE07/C02/T1_TOA", "LANDSAT/LE07/C02/T2_TOA"),
            first_summer=1999,
            last_summer=2012,
            slc_off_from=dt.date(2003, 5, 31),
        ),
        Sensor(
            "LC08",
            "landsat-8",
            "oli",
            ("B4", "B3", "B2"),
            ("LANDSAT/LC08/C02/T1_TOA", "LANDSAT/LC08/C02/T2_TOA"),
            first_summer=2012,
            last_summer=None,
        ),
        Sensor(
            "LC09",
            "landsat-9",
            "oli",
            ("B4", "B3", "B2"),
            ("LANDSAT/LC09/C02/T1_TOA", "LANDSAT/LC09/C02/T2_TOA"),
            first_summer=2021,
            last_summer=None,
        ),
    )
}
SENSOR_ORDER: tuple[str, ...] = tuple(SENSORS)
#: The first summer any sensor of the product covers.
FIRST_SUMMER = min(s.first_summer for s in SENSORS.values())


def slc_off_possible(year: int) -> bool:
    """Whether imagery of the summer ``year`` may have SLC-off gaps (a sensor the product may
    use for that summer had lost its scan-line corrector)."""
    return any(s.covers(year) and s.slc_off_in(year) for s in SENSORS.values())
CONSTELLATION = "landsat"

# --------------------------------------------------------------------------------------------
# Restoration of SLC-off imagery
# --------------------------------------------------------------------------------------------

RESTORATION_PREFIX = "_slc_off_"
RELEASED_RESTORATION = "DiffGF"
#: Methods that may appear in a restoration token, with what they are.
RESTORATION_METHODS: dict[str, str] = {
    "DiffGF": "Latent diffusion plus mask-guided harmonization (Tang et al., 2026b)",
    "FillNodata": "GDAL FillNodata inverse-distance interpolation (classical; explicit opt-in)",
}


def restoration_token(method: str | None) -> str:
    """The file-name token for a restoration method (empty for unrestored products)."""
    if method is None:
        return ""
    if method not in RESTORATION_METHODS:
        raise SpecError(
            f"restoration method {method!r} is not one of {sorted(RESTORATION_METHODS)}"
        )
    return RESTORATION_PREFIX + method


# --------------------------------------------------------------------------------------------
# Product types and encodings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PixelClass:
    """One value of a product raster, with the names and colour used by the catalog."""

    value: int
    name: str
    description: str
    color_hint: str
    nodata: bool = False


@dataclass(frozen=True)
class ProductType:
    """The encoding of one of the two released product types."""

    number: int
    key: str
    suffix: str
    title: str
    background: int
    damage: int
    nodata: int | None
    classes: tuple[PixelClass, ...]

    @property
    def values(self) -> frozenset[int]:
        """Every pixel value a file of this type may hold."""
        return frozenset(c.value for c in self.classes)


TYPE1 = ProductType(
    number=1,
    key="damage_map",
    suffix="_damage_map.tif",
    title="Surface damage within the effective ice-shelf extent",
    background=0,
    damage=1,
    nodata=255,
    classes=(
        PixelClass(0, "background", "No surface damage", "1F3A5F"),
        PixelClass(1, "damage", "Surface damage: crevasses, rifts, fractured zones", "E4572E"),
        PixelClass(255, "nodata", "Outside the effective ice-shelf extent", "000000", True),
    ),
)
#: The full-ROI map. No NoData by definition (255 is damage): outside the ROI polygon and at ROI
#: pixels no scene imaged it holds 0 like background; the source-scene index tells them apart.
TYPE2 = ProductType(
    number=2,
    key="damage",
    suffix="_damage.tif",
    title="Surface damage over the full region of interest",
    background=0,
    damage=255,
    nodata=None,
    classes=(
        PixelClass(0, "background", "No surface damage", "1F3A5F"),
        PixelClass(255, "damage", "Surface damage: crevasses, rifts, fractured zones", "E4572E"),
    ),
)
PRODUCT_TYPES: tuple[ProductType, ...] = (TYPE1, TYPE2)


@dataclass(frozen=True)
class RasterEncoding:
    """What every product GeoTIFF shares, whatever its type."""

    dtype: str = "uint8"
    band_count: int = 1
    compression: str = "lzw"
    crs: str = "EPSG:3031"
    epsg: int = 3031
    resolution: float = 30.0
    blocksize: int = 512
    overview_resampling: str = "nearest"


ENCODING = RasterEncoding()

#: Side (px) of the windows the authors' segmentation slides over a scene (50 % overlap); a
#: scene shorter than it on an axis is padded, centred, to it (their ``pad_to_roi``).
SEGMENTATION_WINDOW = 512

@dataclass(frozen=True)
class AuxiliaryRaster:
    """An optional single-band UInt8 COG beside the products, on the type 2 (full ROI) grid."""

    key: str
    title: str
    description: str
    roles: tuple[str, ...]
    nodata: int
    unit: str | None = None
    """UCUM-style unit of the values (STAC's ``unit``), None for indices."""


#: The merged damage probability (``produce --keep-probability``).
PROBABILITY_RASTER = AuxiliaryRaster(
    key="probability", title="Damage probability of the merged map (percent, 0-100)",
    description=("Probability of the damage class (softmax averaged over windows and TTA "
                 "views) in whole percent, 0-100; 255 where no scene has data."),
    roles=("data",), nodata=255, unit="percent")
#: GeoTIFF tag of the source-scene index: JSON list of scene ids, pixel value i → the i-th.
SCENE_IDS_TAG = "scene_ids"
#: Source-scene index value of ROI pixels that no scene imaged: the type 2 map's 0 there is no
#: observation. (Files written before this value existed hold 255 there, as outside the ROI.)
SOURCE_SCENE_NOT_IMAGED = 254
#: The per-pixel source scene of the merged map (``produce --source-index``). Values: i < 254,
#: the i-th scene id of the ``SCENE_IDS_TAG`` tag; ``SOURCE_SCENE_NOT_IMAGED`` (254), inside the
#: ROI but no scene has data (type 2 holds 0 there); 255 (nodata), outside the ROI polygon.
SOURCE_SCENE_RASTER = AuxiliaryRaster(
    key="source_scene", title="Source scene of each pixel of the merged map",
    description=(f"Value i: the i-th scene id of the file's {SCENE_IDS_TAG} tag, named by this "
                 f"asset's classes; {SOURCE_SCENE_NOT_IMAGED} inside the ROI where no scene has "
                 "data (the full-ROI map holds 0 there, not an observation); 255 outside the "
                 "ROI polygon."),
    roles=("metadata",), nodata=255)
AUXILIARY_RASTERS: dict[str, AuxiliaryRaster] = {
    r.key: r for r in (PROBABILITY_RASTER, SOURCE_SCENE_RASTER)}

#: GeoTIFF tag of both products naming the scene source that made them (gee, local or demo):
#: a release trimmed of its provenance records still says where its maps came from, so demo
#: maps cannot pass for real ones.
SOURCE_TAG = "ICEDAMAGE_SOURCE"
#: The offline demo source's name (in provenance records and ``SOURCE_TAG``).
DEMO_SOURCE = "demo"


def normalise_source(value: str) -> str:
    """One spelling of a scene source's name (surrounding spaces dropped, case folded), so a
    hand-edited tag or record ("Demo ") names the same source wherever it is read."""
    return value.strip().casefold()


def is_demo_source(value: str | None) -> bool:
    """Whether a scene source's name (a provenance record's ``source``, a product's
    ``SOURCE_TAG``) is the demo source, however spaced or cased: the one rule by which the
    catalog, the validator and the publisher tell demo maps from real ones. None (no record,
    an untagged file) is not demo by this rule."""
    return value is not None and normalise_source(value) == DEMO_SOURCE

#: Auxiliary files a shelf-year folder may hold beside the products, by role.
AUXILIARY_SUFFIXES: dict[str, str] = {
    "provenance": "_provenance.json",
    "probability": "_damage_probability.tif",
    "source_scene": "_source_scene.tif",
    "thumbnail": "_thumbnail.png",
}

# --------------------------------------------------------------------------------------------
# Release root
# --------------------------------------------------------------------------------------------

METADATA_ODS = "metadata.ods"
STAC_CATALOG_DIR = "stac"
ITEMS_PARQUET = "items.parquet"
ITEMS_NDJSON = "items.ndjson"
ROI_GEOPACKAGE_SUFFIX = "_ROI.gpkg"
RELEASE_NOTES = "RELEASE_NOTES.md"
RELEASE_METADATA = "release.yaml"
#: A published record's index of its files (release path -> record key, md5): saved beside
#: the unzipped packages, it belongs to the release root.
RECORD_MANIFEST = "manifest.json"
#: Hidden folder at the release root where the publisher keeps its resumable state.
PUBLISH_STATE_DIR = ".icedamage-publish"


def roi_geopackage_name(shelf: str) -> str:
    """File name of a shelf's ROI GeoPackage at the release root."""
    check_shelf_name_safe(shelf)
    return f"{shelf}{ROI_GEOPACKAGE_SUFFIX}"


# --------------------------------------------------------------------------------------------
# Errors and small rules
# --------------------------------------------------------------------------------------------


class SpecError(ValueError):
    """A value breaks a rule of the product spec; the message names the rule."""


class Rule(StrEnum):
    """Names of the plausibility rules, used in error messages and validation reports."""

    SENSOR_UNKNOWN = "sensor-unknown"
    SENSOR_ORDER = "sensor-order"
    SENSOR_YEAR = "sensor-year"
    RESTORATION_MISSING = "restoration-missing"
    RESTORATION_UNEXPECTED = "restoration-unexpected"
    RESTORATION_UNKNOWN = "restoration-unknown"


_SHELF_NAME = re.compile(r"[A-Za-z][A-Za-z0-9 _-]{0,63}")


def check_shelf_name_safe(name: str) -> str:
    """Refuse a shelf name that could escape the release folder or break a file name."""
    if not isinstance(name, str) or not _SHELF_NAME.fullmatch(name) or name != name.strip():
        raise SpecError(
            f"shelf name {name!r} is not allowed: it must start with a letter and hold only "
            "letters, digits, spaces, '_' or '-' (no path separators, no '..', at most 64 chars)"
        )
    return name


#: A year in a folder or file name: four ASCII digits (``\d`` would take any script's digits,
#: "٢٠١٦", which int() reads as 2016).
_YEAR_DIGITS = "[0-9]{4}"


def is_year_dir(name: str) -> bool:
    """Whether a folder name is a ``<YYYY>`` year folder of the layout (four ASCII digits);
    the one rule by which the catalog, the validator and the packager find year folders."""
    return re.fullmatch(_YEAR_DIGITS, name) is not None


def summer_window(year: int) -> tuple[dt.date, dt.date]:
    """First and last day of the austral summer named ``year`` (Nov YYYY - Mar YYYY+1)."""
    return dt.date(year, 11, 1), dt.date(year + 1, 3, 31)


def latest_summer(today: dt.date | None = None) -> int:
    """The latest summer that has begun (on 1 November): no map of a later one can exist."""
    today = today or dt.date.today()
    return today.year if today >= summer_window(today.year)[0] else today.year - 1


def summer_of(day: dt.date) -> int | None:
    """The summer a date belongs to, or None for April-October (no usable imagery)."""
    if day.month >= 11:
        return day.year
    if day.month <= 3:
        return day.year - 1
    return None


def sort_sensors(tokens: tuple[str, ...] | list[str] | set[str]) -> tuple[str, ...]:
    """Sensor tokens in the spec's fixed order, duplicates removed; unknown tokens refused."""
    unknown = sorted(set(tokens) - set(SENSOR_ORDER))
    if unknown:
        raise SpecError(f"[{Rule.SENSOR_UNKNOWN.value}] unknown sensor token(s) {unknown}; "
                        f"valid: {list(SENSOR_ORDER)}")
    return tuple(t for t in SENSOR_ORDER if t in set(tokens))


def plausibility_problems(
    sensors: tuple[str, ...], year: int, restoration: str | None
) -> list[tuple[Rule, str]]:
    """Every plausibility rule that a (sensors, year, restoration) combination breaks."""
    problems: list[tuple[Rule, str]] = []
    known = [s for s in sensors if s in SENSORS]
    for token in sensors:
        if token not in SENSORS:
            problems.append((Rule.SENSOR_UNKNOWN, f"{token!r} is not one of {list(SENSOR_ORDER)}"))
    if tuple(known) != sort_sensors(known) or len(set(known)) != len(known):
        problems.append((Rule.SENSOR_ORDER,
                         f"sensors {'_'.join(sensors)} must be unique and ordered "
                         f"{'_'.join(SENSOR_ORDER)}"))
    for token in known:
        sensor = SENSORS[token]
        if not sensor.covers(year):
            last = sensor.last_summer if sensor.last_summer is not None else "today"
            problems.append((Rule.SENSOR_YEAR,
                             f"{token} is used for summers {sensor.first_summer}-{last}, "
                             f"not {year}"))
    slc_off = any(SENSORS[t].slc_off_in(year) for t in known)
    if restoration is not None and restoration not in RESTORATION_METHODS:
        problems.append((Rule.RESTORATION_UNKNOWN,
                         f"restoration {restoration!r} is not one of "
                         f"{sorted(RESTORATION_METHODS)}"))
    if slc_off and restoration is None:
        gappy = "_".join(t for t in known if SENSORS[t].slc_off_in(year))
        problems.append((Rule.RESTORATION_MISSING,
                         f"{gappy} imagery of summer {year} is SLC-off and needs a restoration "
                         f"token (released: {RESTORATION_PREFIX}{RELEASED_RESTORATION})"))
    if restoration is not None and not slc_off:
        problems.append((Rule.RESTORATION_UNEXPECTED,
                         f"restoration token {RESTORATION_PREFIX}{restoration} needs SLC-off "
                         f"{_slc_off_imagery()}, but sensors are {'_'.join(sensors)} "
                         f"in {year}"))
    return problems


def _slc_off_imagery() -> str:
    """Which imagery is SLC-off, from the sensors' dates: "LE07 imagery (summers 2003-2012)"."""
    return " or ".join(
        f"{s.token} imagery (summers {s.first_slc_off_summer}-"
        f"{s.last_summer if s.last_summer is not None else 'today'})"
        for s in SENSORS.values() if s.slc_off_from is not None)


# --------------------------------------------------------------------------------------------
# Product names
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductName:
    """The fields of one product file name."""

    sensors: tuple[str, ...]
    shelf: str
    year: int
    restoration: str | None
    product_type: ProductType

    @property
    def stem(self) -> str:
        """The part shared by both product types and the auxiliary files of a shelf-year."""
        return (f"{'_'.join(self.sensors)}_{self.shelf}_{self.year:04d}"
                f"{restoration_token(self.restoration)}")

    @property
    def filename(self) -> str:
        """The file name, as released."""
        return self.stem + self.product_type.suffix

    def relative_path(self) -> Path:
        """Path of the file under the release root: ``<Shelf>/<YYYY>/<name>``."""
        return shelf_year_dir(self.shelf, self.year) / self.filename

    def partner(self) -> ProductName:
        """The same shelf-year's file of the other product type."""
        other = TYPE2 if self.product_type is TYPE1 else TYPE1
        return ProductName(self.sensors, self.shelf, self.year, self.restoration, other)

    def auxiliary(self, role: str) -> str:
        """File name of an auxiliary file of this shelf-year (see AUXILIARY_SUFFIXES)."""
        return self.stem + AUXILIARY_SUFFIXES[role]


_TOKEN = "|".join(SENSOR_ORDER)
_NAME = re.compile(
    rf"^(?P<sensors>(?:{_TOKEN})(?:_(?:{_TOKEN}))*)_(?P<shelf>.+?)_(?P<year>{_YEAR_DIGITS})"
    rf"(?:{RESTORATION_PREFIX}(?P<restoration>[A-Za-z0-9]+))?"
    rf"(?P<suffix>{'|'.join(re.escape(t.suffix) for t in PRODUCT_TYPES)})$",
    re.ASCII,  # a \d or \w added here must not take other scripts' characters either
)


def build_name(
    sensors: tuple[str, ...] | list[str],
    shelf: str,
    year: int,
    restoration: str | None,
    product_type: ProductType,
) -> ProductName:
    """A product name from its fields, refusing anything the spec forbids."""
    ordered = sort_sensors(sensors)
    if tuple(sensors) != ordered:
        raise SpecError(f"[{Rule.SENSOR_ORDER.value}] sensors {list(sensors)} must be unique and "
                        f"in the order {list(SENSOR_ORDER)}")
    check_shelf_name_safe(shelf)
    if shelf.split("_")[0] in SENSORS:
        raise SpecError(f"shelf name {shelf!r} starts with a sensor token and '_': its file "
                        "names would parse back with other sensors and shelf")
    if not 1000 <= year <= 9999:
        raise SpecError(f"year {year} must have four digits")
    restoration_token(restoration)
    return ProductName(ordered, shelf, year, restoration, product_type)


def parse_name(filename: str) -> ProductName:
    """The fields of a product file name; SpecError names what does not fit the pattern.

    Only the syntax is checked here (sensor tokens, order, year digits, suffix); whether the shelf
    is registered and the combination plausible are separate rules (see plausibility_problems).
    """
    match = _NAME.match(filename)
    if match is None:
        raise SpecError(
            f"{filename!r} does not match <Sensors>_<Shelf>_<YYYY>[{RESTORATION_PREFIX}<Method>]"
            f"(_damage_map|_damage).tif with sensors from {list(SENSOR_ORDER)}"
        )
    sensors = tuple(match["sensors"].split("_"))
    product_type = next(t for t in PRODUCT_TYPES if t.suffix == match["suffix"])
    return build_name(sensors, match["shelf"], int(match["year"]), match["restoration"],
                      product_type)


def shelf_year_dir(shelf: str, year: int) -> Path:
    """Folder of one shelf-year under the release root."""
    check_shelf_name_safe(shelf)
    return Path(shelf) / f"{year:04d}"
