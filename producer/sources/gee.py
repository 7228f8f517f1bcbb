"""The ``gee`` scene source: Landsat Collection 2 TOA daily composites from Earth Engine.

This is the authors' Earth Engine acquisition script (paper section 2.1.3; the facts are listed in
``/work/shared/reference/README.md``), automated and without Google Drive:

1. For every sensor the spec allows in the summer (``Sensor.covers``), search the sensor's Tier 1
   and Tier 2 TOA collections (they do not overlap) over the austral-summer window, filtered by the
   ROI and ``CLOUD_COVER`` < 80. The ROI is given to Earth Engine as the EPSG:3031 polygon itself
   with planar edges, so its filterBounds, clip and reduceRegion region is exactly the local ROI
   (and the grid's), whatever the polygon.
2. Group the images by acquisition day (UTC). For RANKING only, mask cloud (QA_PIXEL bit 3) and
   cloud shadow (bit 4), take the daily median composite clipped to the ROI, and count its valid
   pixels over the ROI with a count reducer at 300 m (``tileScale`` 4, the authors' setting, so
   Earth Engine splits a large ROI rather than running out of memory); valid fraction = that
   count / the ROI's pixel count at the same scale.
3. Keep the top N daily composites (default 30) by valid fraction OF EACH SENSOR, listed most
   valid first (then earlier, then sensor order).
4. Download each one UNMASKED as ``image.select(rgb_bands).multiply(255).toByte()`` in EPSG:3031
   at 30 m directly on the ROI grid, with ``ee.data.computePixels`` in 2048² tiles (12 MB of RGB
   UInt8, inside Earth Engine's 48 MB / 32,768 px request limits), mosaicked into one GeoTIFF per
   scene named like the authors' exports, ``<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>_uint8.tif``.
5. Beside it, download the composite's cloud mask ``<SENSOR>_<Shelf>_composite_<YYYY-MM-DD>
   _cloud.tif`` (1 = cloud or shadow) with the same tiles on the same grid, so the merge knows
   which pixels of the unmasked RGB are cloudy. Each image of the day gives a flag (QA_PIXEL bit 3
   or 4 set; masked where bit 0 marks fill), and the day is cloudy where at least half of its
   images with data flag it (``map(flags).mean().gte(0.5)``, the rule of ``landsat.py``: where
   more than half are clear, the unmasked median lies between clear values). A sidecar
   ``<scene>.tif.json`` names the mask, so a cache folder is also a valid ``local:DIR``.

Where this departs from the authors' script, deliberately:

* Tier 1 AND Tier 2. The script names ``LANDSAT/LC08/C02/T2_TOA`` (LC09 and LE07 T2 in its header
  comment) only; this project's requirement is to search both tiers. Most Antarctic scenes are
  Tier 2 anyway, and the two do not overlap, so adding Tier 1 adds scenes, never duplicates.
* Top N per sensor, as one run. The authors ran the script once per sensor collection with
  ``TOP_K = 30`` (``sortedDailyCompositeCollection.limit(TOP_K)``), so each sensor kept its own
  30; one run here searches every plausible sensor and keeps the top N of each, not N in all.
* Counts in EPSG:3031. The script's reduceRegion gives no ``crs``, so Earth Engine counts in the
  composite's default projection (WGS84 degrees at 300 m); here both counts are made in
  EPSG:3031, where a pixel's ground area is nearly the same across the ROI. Its other options are
  kept: count reducer, ``scale`` 300, ``maxPixels`` 1e13, ``tileScale`` 4. ``bestEffort`` is
  left out: with ``maxPixels`` 1e13 it never applies at 300 m, and it could silently coarsen
  one count and not the other.

Downloads are costly (minutes per scene), so they are kept in a persistent cache rather than the
caller's temporary work folder: ``<cache>/gee/<Shelf>/<YYYY>/`` where ``<cache>`` is the
``cache_dir`` option, else ``$ICEDAMAGE_CACHE``, else ``$XDG_CACHE_HOME/icedamage`` (default
``~/.cache/icedamage``). Re-running is cheap: the ranking is kept there in
``gee_<Shelf>_<YYYY>.json`` (reused while the search parameters are unchanged) and scenes already
downloaded are not fetched again, so a complete cache is used without contacting Earth Engine.

The ``ee`` module is injected (``EarthEngineSource(ee_module=...)``) so tests can hand in a fake
that records the requests; by default the real ``earthengine-api`` is imported on first use.
Credentials come from Earth Engine's own authentication (``earthengine authenticate``) and the
Cloud project from ``project=``, ``$EE_PROJECT`` or ``earthengine set_project``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import rasterio
from rasterio.io import MemoryFile
from rasterio.windows import Window
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from shapely.geometry import box, mapping
from shapely.geometry.base import BaseGeometry

from producer.grid import Grid
from producer.shelves import roi_polygon
from producer.sources.base import Scene
from producer.sources.errors import CredentialsError, SourceError
from producer.sources.landsat import (
    CLOUDY_SHARE,
    EXPORT_SCALE,
    QA_BAND,
    QA_CLOUD_BIT,
    QA_FILL_BIT,
    QA_SHADOW_BIT,
)
from producer.sources.names import ExportName, export_name, sidecar_path
from producer.spec import ENCODING, SENSOR_ORDER, SENSORS, summer_window
from producer.writer import atomic_path

#: The authors' screening threshold on the image property ``CLOUD_COVER`` (percent).
CLOUD_COVER_MAX = 80.0
#: Name of the band of the downloaded cloud mask (1 = cloud or shadow, 0 = clear or no data).
CLOUD_BAND = "cloud"
#: Scale (m) of the count reducer that measures a composite's valid pixels over the ROI.
RANKING_SCALE_M = 300
#: The count reducer's ``tileScale`` (the authors' TILE_SCALE): Earth Engine splits the
#: computation into 4² smaller tiles, which avoids out-of-memory errors on large ROIs.
RANKING_TILE_SCALE = 4
#: How many daily composites of EACH SENSOR are downloaded per shelf-year (the authors' TOP_K,
#: one run of their script per sensor collection).
DEFAULT_TOP = 30
#: Side of a computePixels tile: 2048² × 3 bands × 1 byte = 12.6 MB uncompressed.
DEFAULT_TILE = 2048
#: Earth Engine's limits on one computePixels request.
EE_MAX_REQUEST_BYTES = 48 * 1024 * 1024
EE_MAX_SIDE_PX = 32768
#: Daily composites whose valid pixels are counted in one getInfo round trip.
DEFAULT_RANK_BATCH = 25
#: What the downloaded files hold (GeoTIFF tag EXPRESSION, scene metadata).
RGB_EXPRESSION = "median(day).clip(roi).select(rgb).multiply(255).toByte()"
CLOUD_MASK_RULE = ("map(QA_PIXEL bit 3 or 4 set, masked where bit 0 (fill)).mean().gte(0.5)"
                   ".clip(roi).unmask(0, False).toByte(): 1 = cloud or shadow in at least half "
                   "of the day's images with data")

AUTH_HELP = (
    "Earth Engine credentials are missing or unusable: {error}\n"
    "To use --source gee:\n"
    "  1. run `earthengine authenticate` (or `python -c 'import ee; ee.Authenticate()'`) once;\n"
    "  2. name the Google Cloud project registered for Earth Engine: set EE_PROJECT=PROJECT\n"
    "     or run `earthengine set_project PROJECT`.\n"
    "Without Earth Engine, use --source local:DIR (exported GeoTIFFs) or --source demo."
)


def _connection_errors() -> tuple[type[BaseException], ...]:
    """What earthengine-api lets through unconverted (it turns only HTTP error answers into
    EEException): dropped connections and timeouts (OSError, httplib2), and google-auth's
    failures to refresh the stored token."""
    errors: list[type[BaseException]] = [OSError]
    with contextlib.suppress(ImportError):
        import httplib2

        errors.append(httplib2.HttpLib2Error)
    with contextlib.suppress(ImportError):
        from google.auth import exceptions as auth

        errors.append(auth.GoogleAuthError)
    return tuple(errors)


#: Words of Earth Engine's session errors that a login or a project fixes (no credentials,
#: "Please authorize access ... earthengine authenticate", no project, no permission); any
#: other (HTTP 503 "The service is currently unavailable") is no credentials problem.
_CREDENTIAL_WORDS = ("authoriz", "authenticat", "credential", "project", "permission",
                     "token", "unauthenticated", "forbidden", "not signed up", "register")


def _about_credentials(exc: BaseException) -> bool:
    """Whether an ``ee.Initialize`` error is one that authenticating or a project fixes."""
    text = str(exc).lower()
    return any(word in text for word in _CREDENTIAL_WORDS)


def _unreachable(what: str, exc: BaseException) -> SourceError:
    """The clear error for a failure outside Earth Engine's own answers on ``what``: stored
    credentials that no longer refresh, or no connection."""
    if type(exc).__name__ == "RefreshError":  # google-auth: revoked or expired credentials
        return CredentialsError(AUTH_HELP.format(error=f"{type(exc).__name__}: {exc}"))
    return SourceError(f"cannot reach Earth Engine on {what} ({type(exc).__name__}: {exc}); "
                       "check the network and run again (downloaded scenes stay in the cache)")


# --------------------------------------------------------------------------------------------
# Pure helpers: cache, geometry, tiling, requests, ranking
# --------------------------------------------------------------------------------------------

#: Days after a summer's window ends before its search is final: new Landsat scenes reach the
#: Tier 1 / Tier 2 collections from Real-Time 14 to 26 days after acquisition (Earth Engine's
#: catalogue), so a search made earlier misses the latest scenes and is made again.
SETTLE_DAYS = 30


def today() -> dt.date:
    """Today's date in UTC (a function, so tests can move the clock)."""
    return dt.datetime.now(dt.UTC).date()


def settled(searched_on: str | None, year: int) -> bool:
    """Whether a ranking searched on ``searched_on`` (an ISO date) saw every scene of the
    summer ``year``: made ``SETTLE_DAYS`` after its window ended."""
    if not searched_on:
        return False
    try:
        searched = dt.date.fromisoformat(searched_on)
    except ValueError:
        return False
    return searched >= summer_window(year)[1] + dt.timedelta(days=SETTLE_DAYS)


def _searched_on(cached: dict[str, Any], manifest: Path) -> str | None:
    """When a cached ranking was made: as it says, else (written by an earlier version) the
    day its file was last written, so a summer long over needs no Earth Engine to re-run."""
    said = cached.get("searched_on")
    if isinstance(said, str):
        return said
    try:
        return dt.datetime.fromtimestamp(manifest.stat().st_mtime, dt.UTC).date().isoformat()
    except OSError:
        return None



def default_cache_dir() -> Path:
    """``$ICEDAMAGE_CACHE``, else ``$XDG_CACHE_HOME/icedamage``, else ``~/.cache/icedamage``."""
    from producer.cache import default_cache_dir as shared  # one rule for every cache

    return shared()


def ee_geometry(ee: Any, roi: BaseGeometry) -> Any:
    """The EPSG:3031 ROI as an ``ee.Geometry`` in EPSG:3031 with planar (non-geodesic) edges.

    Given in its own projection, Earth Engine's region (filterBounds, clip, reduceRegion) is
    exactly the local ROI that the grid and the skipped tiles are built from, for any polygon:
    a 4-corner rectangle from a GeoPackage too, whose straight EPSG:3031 edges a lon/lat polygon
    would bend by kilometres (17 km for an Amery-sized one). EPSG:3031 has no seam at the
    antimeridian, so a ROI across it needs no special case.
    """
    geojson = json.loads(json.dumps(mapping(roi)))  # tuples -> lists
    return ee.Geometry(geojson, ENCODING.crs, False)


def tile_windows(grid: Grid, size: int = DEFAULT_TILE) -> list[Window]:
    """Windows of at most ``size``² pixels that cover the grid exactly, row by row."""
    if size < 1:
        raise SourceError(f"tile size {size} must be positive")
    return [
        Window(col, row, min(size, grid.width - col), min(size, grid.height - row))
        for row in range(0, grid.height, size)
        for col in range(0, grid.width, size)
    ]


def check_tile_size(size: int, bands: int) -> None:
    """Refuse a tile size that breaks Earth Engine's computePixels limits for UInt8 bands."""
    if size > EE_MAX_SIDE_PX or size * size * bands > EE_MAX_REQUEST_BYTES:
        raise SourceError(
            f"tile size {size} px: {size}² × {bands} bands = {size * size * bands} bytes; Earth "
            f"Engine allows at most {EE_MAX_REQUEST_BYTES} bytes and {EE_MAX_SIDE_PX} px a side"
        )


def pixel_request(expression: Any, grid: Grid, bands: tuple[str, ...]) -> dict[str, Any]:
    """The ``ee.data.computePixels`` request for one tile: GeoTIFF on exactly this grid."""
    t = grid.transform
    return {
        "expression": expression,
        "fileFormat": "GEO_TIFF",
        "bandIds": list(bands),
        "grid": {
            "dimensions": {"width": grid.width, "height": grid.height},
            "affineTransform": {
                "scaleX": t.a, "shearX": t.b, "translateX": t.c,
                "shearY": t.d, "scaleY": t.e, "translateY": t.f,
            },
            "crsCode": grid.crs,
        },
    }


@dataclass(frozen=True)
class DailyComposite:
    """One day of one sensor: the images combined and how much of the ROI is usable."""

    sensor: str
    day: dt.date
    source_ids: tuple[str, ...]
    valid_fraction: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """JSON-ready fields (date as ISO text)."""
        record = asdict(self)
        record["day"] = self.day.isoformat()
        record["source_ids"] = list(self.source_ids)
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> DailyComposite:
        """Inverse of ``to_json``."""
        return cls(record["sensor"], dt.date.fromisoformat(record["day"]),
                   tuple(record["source_ids"]), float(record["valid_fraction"]))


def group_by_day(sensor: str, ids: list[str], times_ms: list[int]) -> list[DailyComposite]:
    """Images of one sensor grouped by UTC acquisition day, ids sorted, days in order."""
    if len(ids) != len(times_ms):
        raise SourceError(f"Earth Engine returned {len(ids)} product ids for {len(times_ms)} "
                          "acquisition times")
    days: dict[dt.date, list[str]] = {}
    for product_id, millis in zip(ids, times_ms, strict=True):
        day = dt.datetime.fromtimestamp(millis / 1000, tz=dt.UTC).date()
        days.setdefault(day, []).append(str(product_id))
    return [DailyComposite(sensor, day, tuple(sorted(days[day]))) for day in sorted(days)]


def rank(composites: list[DailyComposite], top: int,
         min_valid_fraction: float = 0.0) -> list[DailyComposite]:
    """The best ``top`` composites OF EACH SENSOR, as one list: most valid first, then earlier,
    then sensor order.

    Per sensor because the authors ran their script once per sensor collection, each run keeping
    its top ``TOP_K`` = 30, so a good LC09 summer does not crowd out LC08 (or the reverse).
    Composites with no more than ``min_valid_fraction`` valid pixels are never chosen.
    """
    usable = sorted((c for c in composites if c.valid_fraction > min_valid_fraction),
                    key=lambda c: (-c.valid_fraction, c.day, SENSOR_ORDER.index(c.sensor)))
    kept: dict[str, int] = {}
    chosen: list[DailyComposite] = []
    for composite in usable:  # best first, so a sensor's first ``top`` are its best
        if kept.get(composite.sensor, 0) < top:
            kept[composite.sensor] = kept.get(composite.sensor, 0) + 1
            chosen.append(composite)
    return chosen


def _day_key(composite: DailyComposite) -> str:
    return f"{composite.sensor}_{composite.day.isoformat()}"


# --------------------------------------------------------------------------------------------
# Earth Engine expressions (built with the injected module; nothing runs until getInfo/compute)
# --------------------------------------------------------------------------------------------


def qa_clear(image: Any) -> Any:
    """1 where QA_PIXEL flags neither cloud (bit 3) nor cloud shadow (bit 4), else 0."""
    qa = image.select(QA_BAND)
    return qa.bitwiseAnd(1 << QA_CLOUD_BIT).eq(0).And(qa.bitwiseAnd(1 << QA_SHADOW_BIT).eq(0))


def mask_clouds(image: Any) -> Any:
    """Mask cloud (QA_PIXEL bit 3) and cloud shadow (bit 4): used to RANK composites only."""
    return image.updateMask(qa_clear(image))


def cloud_flags(image: Any) -> Any:
    """1 where QA_PIXEL flags cloud or shadow, 0 where clear; masked where bit 0 marks fill,
    so images without data at a pixel do not count in the day's share of cloudy images."""
    qa = image.select(QA_BAND)
    return qa_clear(image).Not().updateMask(qa.bitwiseAnd(1 << QA_FILL_BIT).eq(0))


class _Expressions:
    """Builds the Earth Engine objects of one shelf-year with a given ``ee`` module."""

    def __init__(self, ee: Any, roi: Any, year: int, cloud_cover_max: float) -> None:
        self.ee = ee
        self.roi = roi
        start, last = summer_window(year)
        # filterDate's end is exclusive: the day after the window's last day.
        self.start, self.end = start.isoformat(), (last + dt.timedelta(days=1)).isoformat()
        self.cloud_cover_max = cloud_cover_max

    def collection(self, sensor: str) -> Any:
        """Tier 1 + Tier 2 TOA images of the sensor: summer window, ROI, CLOUD_COVER filter."""
        ids = SENSORS[sensor].ee_collections
        merged = self.ee.ImageCollection(ids[0])
        for other in ids[1:]:
            merged = merged.merge(self.ee.ImageCollection(other))
        return (merged.filterDate(self.start, self.end)
                .filterBounds(self.roi)
                .filter(self.ee.Filter.lt("CLOUD_COVER", self.cloud_cover_max)))

    def images_info(self, sensor: str) -> Any:
        """Product ids and acquisition times of the sensor's images, for one getInfo."""
        col = self.collection(sensor)
        return self.ee.Dictionary({
            "ids": col.aggregate_array("LANDSAT_PRODUCT_ID"),
            "times": col.aggregate_array("system:time_start"),
        })

    def day(self, sensor: str, day: dt.date) -> Any:
        """The sensor's images of one UTC day."""
        return self.collection(sensor).filterDate(
            day.isoformat(), (day + dt.timedelta(days=1)).isoformat())

    def _count(self, image: Any, band: str) -> Any:
        # In EPSG:3031 (equal-scale near the poles) rather than the composite's default WGS84
        # degrees, so both counts measure the same ground area per pixel.
        return image.reduceRegion(reducer=self.ee.Reducer.count(), geometry=self.roi,
                                  scale=RANKING_SCALE_M, crs=ENCODING.crs, maxPixels=1e13,
                                  tileScale=RANKING_TILE_SCALE).get(band)

    def valid_count(self, composite: DailyComposite) -> Any:
        """Valid (cloud- and shadow-free) pixels of the daily median composite over the ROI."""
        band = SENSORS[composite.sensor].rgb_bands[0]
        masked = self.day(composite.sensor, composite.day).map(mask_clouds).median()
        return self._count(masked.clip(self.roi).select([band]), band)

    def roi_count(self) -> Any:
        """Pixels of the ROI at the ranking scale (the denominator of the valid fraction)."""
        return self._count(self.ee.Image.constant(1).clip(self.roi), "constant")

    def export_image(self, composite: DailyComposite) -> Any:
        """The UNMASKED daily median composite as the authors export it: RGB × 255, UInt8."""
        bands = list(SENSORS[composite.sensor].rgb_bands)
        image = self.day(composite.sensor, composite.day).median().clip(self.roi)
        return image.select(bands).multiply(EXPORT_SCALE).toByte()

    def export_cloud_mask(self, composite: DailyComposite) -> Any:
        """The composite's cloud mask: 1 where at least half of the day's images with data flag
        cloud or shadow (``landsat.CLOUDY_SHARE``), 0 elsewhere (clear, no data, outside).

        ``unmask(0, False)``: with its default ``sameFootprint`` true, ``unmask`` keeps the
        clipped footprint, so outside the ROI the mask would stay masked rather than 0.
        """
        flags = self.day(composite.sensor, composite.day).map(cloud_flags)
        return (flags.mean().gte(CLOUDY_SHARE).clip(self.roi).unmask(0, False).toByte()
                .rename(CLOUD_BAND))


# --------------------------------------------------------------------------------------------
# The source
# --------------------------------------------------------------------------------------------


def _on_grid(path: Path, grid: Grid) -> bool:
    """Whether a cached GeoTIFF exists, opens and lies on ``grid``."""
    if not path.exists():
        return False
    try:
        with rasterio.open(path) as ds:
            return grid.holds(ds)
    except rasterio.errors.RasterioError:  # a damaged cache file is fetched again
        return False


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeRemainingColumn(), disable=not enabled)


def decode_tile(data: bytes, grid: Grid, what: str, bands: int = 3) -> Any:
    """The UInt8 pixels of a computePixels GeoTIFF, checked against the requested grid/bands."""
    try:
        with MemoryFile(data) as memfile, memfile.open() as src:
            if (src.count, src.dtypes[0], src.height, src.width) != (bands, "uint8",
                                                                      grid.height, grid.width):
                raise SourceError(f"{what}: Earth Engine returned {src.count} band(s) of "
                                  f"{src.dtypes[0]}, {src.height}×{src.width} px; expected "
                                  f"{bands} band(s) of uint8, {grid.height}×{grid.width} px")
            if not src.transform.almost_equals(grid.transform, precision=1e-6):
                raise SourceError(f"{what}: Earth Engine returned transform {tuple(src.transform)}"
                                  f" instead of the requested {tuple(grid.transform)}")
            return src.read()
    except rasterio.errors.RasterioIOError as exc:
        raise SourceError(f"{what}: Earth Engine's answer is not a readable GeoTIFF: "
                          f"{exc}") from exc


class EarthEngineSource:
    """Daily Landsat composites from Earth Engine, ranked and downloaded on the ROI grid."""

    name = "gee"

    def __init__(
        self,
        project: str | None = None,
        top: int = DEFAULT_TOP,
        cloud_cover_max: float = CLOUD_COVER_MAX,
        tile_size: int = DEFAULT_TILE,
        min_valid_fraction: float = 0.0,
        rank_batch: int = DEFAULT_RANK_BATCH,
        cache_dir: Path | str | None = None,
        force: bool = False,
        progress: bool = True,
        ee_module: ModuleType | Any | None = None,
    ) -> None:
        if top < 1:
            raise SourceError(f"top={top}: at least one scene must be downloaded")
        check_tile_size(tile_size, 3)
        self.project = project or os.environ.get("EE_PROJECT") or None
        self.top = top
        self.cloud_cover_max = float(cloud_cover_max)
        self.tile_size = tile_size
        self.min_valid_fraction = min_valid_fraction
        self.rank_batch = max(1, rank_batch)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.force = force
        self.progress = progress
        self._ee = ee_module
        self._initialized = False
        self._rois: dict[str, BaseGeometry] = {}

    # -- Earth Engine session ----------------------------------------------------------------

    @property
    def ee(self) -> Any:
        """The Earth Engine module (the injected one, else ``earthengine-api``), initialized."""
        if self._ee is None:
            import ee

            self._ee = ee
        if not self._initialized:
            try:
                self._ee.Initialize(project=self.project)
            except self._ee.EEException as exc:
                if _about_credentials(exc):
                    raise CredentialsError(AUTH_HELP.format(error=exc)) from exc
                raise SourceError(f"Earth Engine could not start a session: {exc}; run again "
                                  "later (downloaded scenes stay in the cache)") from exc
            except _connection_errors() as exc:
                raise _unreachable("the session start", exc) from exc
            self._initialized = True
        return self._ee

    def _call(self, what: str, thunk: Any) -> Any:
        """Run one Earth Engine round trip, turning its errors into a SourceError naming it."""
        ee = self.ee
        try:
            return thunk()
        except ee.EEException as exc:
            raise SourceError(f"Earth Engine failed on {what}: {exc}") from exc
        except _connection_errors() as exc:
            raise _unreachable(what, exc) from exc

    # -- SceneSource -------------------------------------------------------------------------

    def grid(self, shelf: str, roi: BaseGeometry) -> Grid:
        """The aligned 30 m EPSG:3031 grid covering the ROI (remembered for ``scenes``)."""
        self._rois[shelf] = roi
        return Grid.covering(roi)

    def scene_dir(self, shelf: str, year: int) -> Path:
        """The cache folder of a shelf-year: ``<cache>/gee/<Shelf>/<YYYY>``."""
        return self.cache_dir / self.name / shelf / f"{year:04d}"

    def scene_path(self, workdir: Path, shelf: str, composite: DailyComposite) -> Path:
        """Where a composite is (or will be) cached: the authors' export name."""
        return Path(workdir) / export_name(composite.sensor, shelf, composite.day).filename

    def cloud_path(self, workdir: Path, shelf: str, composite: DailyComposite) -> Path:
        """Where a composite's cloud mask is cached: ``<scene_id>_cloud.tif`` beside it."""
        name = export_name(composite.sensor, shelf, composite.day)
        return Path(workdir) / name.cloud_mask_filename

    def _cached(self, workdir: Path, shelf: str, composite: DailyComposite,
                grid: Grid) -> dict[str, bool]:
        """Which of a composite's files are in the cache on ``grid``: RGB, cloud mask, sidecar.

        A file from an earlier grid (the ROI changed) does not count: it is downloaded again.
        Nor do the files of a day whose sidecar names other images than the search now finds
        (a scene that arrived late): that day's composite is another one.
        """
        rgb = self.scene_path(workdir, shelf, composite)
        sidecar = sidecar_path(rgb)
        same = _same_images(sidecar, composite)
        stale = sidecar.exists() and not same
        return {"rgb": _on_grid(rgb, grid) and not stale,
                "cloud": _on_grid(self.cloud_path(workdir, shelf, composite), grid)
                and not stale,
                "sidecar": same}

    def scenes(self, shelf: str, year: int, grid: Grid, workdir: Path) -> list[Scene]:
        """Rank the summer's daily composites and download the best ones into the cache.

        ``workdir`` (the caller's temporary folder) is not used: downloads are kept in the
        persistent cache (``scene_dir``) so a re-run does not fetch them again.
        """
        folder = self.scene_dir(shelf, year)
        roi = self._rois.get(shelf) or roi_polygon(shelf)
        chosen = self._ranking(shelf, year, grid, roi, folder)
        todo = [c for c in chosen
                if self.force or not all(self._cached(folder, shelf, c, grid).values())]
        if todo:
            self._download_all(shelf, year, grid, roi, folder, todo)
        return [self._scene(shelf, folder, c, rank_) for rank_, c in enumerate(chosen, 1)]

    def _scene(self, shelf: str, workdir: Path, composite: DailyComposite, rank_: int) -> Scene:
        name = export_name(composite.sensor, shelf, composite.day)
        return Scene(
            scene_id=name.scene_id, sensor=composite.sensor, acquired=composite.day,
            path=self.scene_path(workdir, shelf, composite),
            valid_fraction=composite.valid_fraction, source_ids=composite.source_ids,
            cloud_mask_path=self.cloud_path(workdir, shelf, composite),
            metadata={"rank": rank_, "collections": list(SENSORS[composite.sensor].ee_collections),
                      "cloud_cover_max": self.cloud_cover_max,
                      "valid_fraction_scale_m": RANKING_SCALE_M,
                      "qa_bits_masked_for_ranking": [QA_CLOUD_BIT, QA_SHADOW_BIT],
                      "cloud_mask_rule": CLOUD_MASK_RULE},
        )

    # -- ranking -----------------------------------------------------------------------------

    def search_parameters(self, year: int, grid: Grid, roi: BaseGeometry) -> dict[str, Any]:
        """Everything the ranking depends on; a cached ranking is reused only if these match."""
        start, last = summer_window(year)
        sensors = [s for s in SENSOR_ORDER if SENSORS[s].covers(year)]
        return {
            "collections": {s: list(SENSORS[s].ee_collections) for s in sensors},
            "window": [start.isoformat(), last.isoformat()],
            "cloud_cover_max": self.cloud_cover_max,
            "qa_bits": [QA_CLOUD_BIT, QA_SHADOW_BIT],
            "scale_m": RANKING_SCALE_M,
            "top_per_sensor": self.top,  # was "top" across sensors: such a ranking is redone
            "ee_roi": f"{ENCODING.crs} planar",  # was EPSG:4326 planar: redone too
            "min_valid_fraction": self.min_valid_fraction,
            "roi_sha256": hashlib.sha256(roi.wkb).hexdigest(),
            "grid": [list(grid.transform)[:6], grid.width, grid.height, grid.crs],
        }

    def _ranking(self, shelf: str, year: int, grid: Grid, roi: BaseGeometry,
                 workdir: Path) -> list[DailyComposite]:
        """The chosen composites, from the cached ranking when its parameters still match and
        it was made once the summer's scenes had all reached the collections (``settled``)."""
        manifest = workdir / f"gee_{shelf}_{year}.json"
        params = self.search_parameters(year, grid, roi)
        if manifest.exists() and not self.force:
            cached = json.loads(manifest.read_text())
            if cached.get("parameters") == params and settled(_searched_on(cached, manifest),
                                                              year):
                return [DailyComposite.from_json(r) for r in cached["chosen"]]
        ranked = self._rank(year, roi)
        chosen = rank(ranked, self.top, self.min_valid_fraction)
        workdir.mkdir(parents=True, exist_ok=True)
        with atomic_path(manifest) as tmp:
            tmp.write_text(json.dumps({
                "source": self.name, "shelf": shelf, "year": year, "parameters": params,
                "searched_on": today().isoformat(),
                "candidates": [c.to_json() for c in ranked],
                "chosen": [c.to_json() for c in chosen],
            }, indent=2))
        return chosen

    def _rank(self, year: int, roi: BaseGeometry) -> list[DailyComposite]:
        """Every daily composite of the summer, with its valid fraction over the ROI."""
        ee = self.ee
        exprs = _Expressions(ee, ee_geometry(ee, roi), year, self.cloud_cover_max)
        days: list[DailyComposite] = []
        for sensor in (s for s in SENSOR_ORDER if SENSORS[s].covers(year)):
            info = self._call(f"the {sensor} image search of summer {year}",
                              exprs.images_info(sensor).getInfo)
            days += group_by_day(sensor, info.get("ids") or [], info.get("times") or [])
        if not days:
            return []
        total = None
        counted: dict[str, float] = {}
        with _progress(self.progress) as progress:
            task = progress.add_task(f"rank {year} composites", total=len(days))
            for start in range(0, len(days), self.rank_batch):
                batch = days[start:start + self.rank_batch]
                request = {_day_key(c): exprs.valid_count(c) for c in batch}
                if total is None:
                    request["roi"] = exprs.roi_count()
                answer = self._call(f"the valid-pixel counts of summer {year}",
                                    ee.Dictionary(request).getInfo)
                total = answer.get("roi", total)
                counted.update({k: float(answer.get(k) or 0) for k in request if k != "roi"})
                progress.advance(task, len(batch))
        if not total:
            raise SourceError(f"the ROI has no pixels at {RANKING_SCALE_M} m in Earth Engine")
        return [DailyComposite(c.sensor, c.day, c.source_ids,
                               min(1.0, counted[_day_key(c)] / float(total))) for c in days]

    # -- download ----------------------------------------------------------------------------

    def _download_all(self, shelf: str, year: int, grid: Grid, roi: BaseGeometry, workdir: Path,
                      todo: list[DailyComposite]) -> None:
        ee = self.ee
        exprs = _Expressions(ee, ee_geometry(ee, roi), year, self.cloud_cover_max)
        windows = [w for w in tile_windows(grid, self.tile_size)
                   if box(*grid.subgrid(w).bounds).intersects(roi)]
        with _progress(self.progress) as progress:
            for composite in todo:
                have = ({"rgb": False, "cloud": False} if self.force
                        else self._cached(workdir, shelf, composite, grid))
                name = export_name(composite.sensor, shelf, composite.day)
                parts = [(path, image, bands) for missing, path, image, bands in (
                    (not have["rgb"], workdir / name.filename, exprs.export_image(composite),
                     SENSORS[composite.sensor].rgb_bands),
                    (not have["cloud"], workdir / name.cloud_mask_filename,
                     exprs.export_cloud_mask(composite), (CLOUD_BAND,))) if missing]
                task = progress.add_task(f"download {name.filename}",
                                         total=len(windows) * len(parts))
                for path, image, bands in parts:
                    self._download(image, bands, composite, grid, windows, path,
                                   lambda task=task: progress.advance(task))
                write_sidecar(workdir, shelf, composite, name)

    def _download(self, image: Any, bands: tuple[str, ...], composite: DailyComposite,
                  grid: Grid, windows: list[Window], path: Path, advance: Any) -> None:
        """Fetch the tiles of one image of a composite (RGB or cloud mask) into one GeoTIFF,
        atomically.

        Tiles wholly outside the ROI are not requested: the composite is clipped to the ROI,
        so they would be all zero, which is what the new file holds there.
        """
        profile = {
            "driver": "GTiff", "width": grid.width, "height": grid.height, "count": len(bands),
            "dtype": "uint8", "crs": grid.crs, "transform": grid.transform, "tiled": True,
            "blockxsize": 512, "blockysize": 512, "compress": "lzw", "BIGTIFF": "IF_SAFER",
        }
        is_mask = bands == (CLOUD_BAND,)
        with atomic_path(path) as tmp, rasterio.open(tmp, "w", **profile) as dst:
            dst.update_tags(SENSOR=composite.sensor, ACQUIRED=composite.day.isoformat(),
                            SOURCE_IDS=",".join(composite.source_ids),  # read by local
                            VALID_FRACTION=f"{composite.valid_fraction:.6f}",
                            EE_COLLECTIONS=",".join(SENSORS[composite.sensor].ee_collections),
                            EXPRESSION=CLOUD_MASK_RULE if is_mask else RGB_EXPRESSION)
            for window in windows:
                sub = grid.subgrid(window)
                what = (f"{path.name} tile col {int(window.col_off)} row {int(window.row_off)} "
                        f"({sub.width}×{sub.height} px)")
                data = self._call(what, lambda sub=sub: self.ee.data.computePixels(
                    pixel_request(image, sub, bands)))
                dst.write(decode_tile(data, sub, what, len(bands)), window=window)
                advance()


def _same_images(sidecar: Path, composite: DailyComposite) -> bool:
    """Whether the cached composite of a day was made of the images the search now finds for
    it: a scene that reached the collections after the download (Real-Time lag) makes the
    day's composite another one, downloaded again rather than passed off with the new ids."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and \
        sorted(record.get("source_ids") or []) == sorted(composite.source_ids)


def write_sidecar(workdir: Path, shelf: str, composite: DailyComposite, name: ExportName
                  ) -> Path:
    """The local source's sidecar of a downloaded scene, naming its cloud mask (written last,
    so a cache folder is a valid ``local:DIR`` that carries the masks too)."""
    path = sidecar_path(Path(workdir) / name.filename)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps({
            "sensor": composite.sensor, "date": composite.day.isoformat(), "shelf": shelf,
            "cloud_mask": name.cloud_mask_filename, "source_ids": list(composite.source_ids),
        }, indent=2))
    return path

