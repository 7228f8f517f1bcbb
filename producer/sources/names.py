"""File names of scenes: the authors' Earth Engine export pattern and Landsat product ids.

Both sources that deliver files (``gee`` writes them, ``local`` reads them) name a daily scene as
the authors' Earth Engine script exports it::

    <SENSOR>_<Shelf>_composite_<YYYY-MM-DD>_uint8.tif
    e.g. LC08_Totten_composite_2021-12-05_uint8.tif

Files downloaded from USGS EarthExplorer start with a Landsat Collection 2 product id::

    LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX[...]
    e.g. LC08_L1TP_101107_20220105_20220115_02_T1_refl.tif

(sensor, processing level, WRS path/row, acquisition date, processing date, collection number,
collection category). Only the sensor and the acquisition date matter to us.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path

from producer.spec import SENSOR_ORDER, SENSORS, SpecError

EXPORT_SUFFIX = "_uint8.tif"
#: A scene file's sidecar (sensor, date, shelf, cloud mask, product ids) is ``<file>.json``.
SIDECAR_SUFFIX = ".json"
#: Suffix of a daily scene's cloud-mask file: ``<scene_id>_cloud.tif`` (1 = cloud or shadow).
CLOUD_MASK_SUFFIX = "_cloud.tif"
_EXPORT = re.compile(
    r"^(?P<sensor>L[A-Z]\d{2})_(?P<shelf>.+)_composite_(?P<date>\d{4}-\d{2}-\d{2})"
    r"_uint8\.tiff?$",
    re.IGNORECASE | re.ASCII,
)
_CLOUD_MASK = re.compile(
    r"^(?P<scene>L[A-Z]\d{2}_.+_composite_(?P<date>\d{4}-\d{2}-\d{2}))_cloud\.tiff?$",
    re.IGNORECASE | re.ASCII,
)
_PRODUCT_ID = re.compile(
    r"^(?P<id>(?P<sensor>L[A-Z]\d{2})_(?P<level>L[0-9][A-Z0-9]{2})_(?P<pathrow>\d{6})_"
    r"(?P<acquired>\d{8})_(?P<processed>\d{8})_(?P<collection>\d{2})_(?P<category>RT|T1|T2))"
    r"(?P<rest>[_.].*)?$",
    re.IGNORECASE | re.ASCII,
)


@dataclass(frozen=True)
class ExportName:
    """The fields of the authors' export file name of one daily scene."""

    sensor: str
    shelf: str
    acquired: dt.date

    @property
    def scene_id(self) -> str:
        """The file name without its suffix: the scene's identifier."""
        return f"{self.sensor}_{self.shelf}_composite_{self.acquired.isoformat()}"

    @property
    def filename(self) -> str:
        """The file name, as the authors' Earth Engine script writes it."""
        return self.scene_id + EXPORT_SUFFIX

    @property
    def cloud_mask_filename(self) -> str:
        """The name of the scene's cloud-mask file, written beside it by our sources."""
        return self.scene_id + CLOUD_MASK_SUFFIX


@dataclass(frozen=True)
class ProductId:
    """The fields of a Landsat Collection 2 product id that we use."""

    product_id: str
    sensor: str
    wrs_path_row: str
    acquired: dt.date
    processed: dt.date
    collection: str
    category: str


def _date(text: str, fmt: str, filename: str, field: str) -> dt.date:
    """Parse a date, naming the file and field when it is not a real calendar date."""
    try:
        return dt.datetime.strptime(text, fmt).date()
    except ValueError:
        raise SpecError(f"{filename}: {field} {text!r} is not a valid date ({fmt})") from None


def _sensor(token: str, filename: str) -> str:
    """A sensor token we produce from, or an error listing the valid ones."""
    token = token.upper()
    if token not in SENSORS:
        raise SpecError(f"{filename}: sensor {token!r} is not one of {list(SENSOR_ORDER)} "
                        "(Landsat 7 ETM+, Landsat 8 and 9 OLI)")
    return token


def export_name(sensor: str, shelf: str, acquired: dt.date) -> ExportName:
    """The export name of a daily scene; refuses unknown sensors."""
    return ExportName(_sensor(sensor, f"{sensor}_{shelf}"), shelf, acquired)


def parse_export_name(filename: str) -> ExportName:
    """Fields of ``<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>_uint8.tif``; SpecError if no match."""
    match = _EXPORT.match(filename)
    if match is None:
        raise SpecError(f"{filename}: does not match <SENSOR>_<Shelf>_composite_<YYYY-MM-DD>"
                        f"{EXPORT_SUFFIX} with SENSOR one of {list(SENSOR_ORDER)}")
    return ExportName(_sensor(match["sensor"], filename), match["shelf"],
                      _date(match["date"], "%Y-%m-%d", filename, "acquisition date"))


def parse_product_id(filename: str) -> ProductId:
    """Fields of a file name that starts with a Landsat Collection 2 product id."""
    match = _PRODUCT_ID.match(filename)
    if match is None:
        raise SpecError(f"{filename}: does not start with a Landsat product id "
                        "LXSS_LLLL_PPPRRR_YYYYMMDD_yyyymmdd_CC_TX")
    return ProductId(
        product_id=match["id"].upper(),
        sensor=_sensor(match["sensor"], filename),
        wrs_path_row=match["pathrow"],
        acquired=_date(match["acquired"], "%Y%m%d", filename, "acquisition date"),
        processed=_date(match["processed"], "%Y%m%d", filename, "processing date"),
        collection=match["collection"],
        category=match["category"].upper(),
    )


def sidecar_path(path: Path) -> Path:
    """The sidecar of a scene file: ``<file>.json`` (read by the local source)."""
    return path.with_name(path.name + SIDECAR_SUFFIX)


def looks_like_export_name(filename: str) -> bool:
    """Whether a name has the shape of the export pattern (its fields may still be invalid)."""
    return _EXPORT.match(filename) is not None


def looks_like_product_id(filename: str) -> bool:
    """Whether a name starts with the shape of a Landsat product id (fields may be invalid)."""
    return _PRODUCT_ID.match(filename) is not None


def cloud_mask_scene(filename: str) -> tuple[str, dt.date] | None:
    """For a file named as a daily scene's cloud mask (``<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>
    _cloud.tif``, as the gee source writes it): the file name of its scene and the date; None
    for other names or a date that does not exist.

    The local source uses it to recognise a mask whose scene was deleted or renamed, which is
    not a scene of its own and must not stop the folder from being read.
    """
    match = _CLOUD_MASK.match(filename)
    if match is None:
        return None
    try:
        day = dt.date.fromisoformat(match["date"])
    except ValueError:
        return None
    return match["scene"] + EXPORT_SUFFIX, day
