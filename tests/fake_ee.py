"""A fake of the Earth Engine boundary (the ``ee`` module) for offline tests of the gee source.

``FakeEE`` is injected in place of ``ee`` (``EarthEngineSource(ee_module=FakeEE(...))``). It
supports exactly the API surface the source uses, records every call, and evaluates the
expressions against a small in-memory catalog of fake Landsat images, so tests can assert the
requests we build (collections, date window, bounds, CLOUD_COVER filter, QA bit masks, median
compositing, count reducer at 300 m and its options, computePixels grids) and get believable
answers:

* image search (``aggregate_array``) returns the catalog images that pass the recorded filters;
* the count reducer returns ``roi_pixels`` for the ROI and ``roi_pixels × clear fraction`` for a
  daily composite (the best clear fraction of its images when QA bits 3 and 4 are masked, else
  full coverage);
* ``data.computePixels`` returns a real GeoTIFF on the requested grid whose pixels are a known
  function of the absolute pixel position (``pattern``; for the ``cloud`` band a 0/1
  ``cloud_pattern``), so a mosaic can be checked exactly.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from affine import Affine
from rasterio.io import MemoryFile


class FakeEEException(Exception):
    """Stands in for ``ee.EEException``."""


@dataclass(frozen=True)
class FakeImage:
    """One catalog image: which collection holds it and its metadata."""

    collection: str
    product_id: str
    acquired: dt.datetime
    cloud_cover: float
    clear_fraction: float = 1.0
    in_roi: bool = True

    @property
    def time_ms(self) -> int:
        return int(self.acquired.replace(tzinfo=dt.UTC).timestamp() * 1000)


def pattern(transform: Affine, width: int, height: int, bands: int = 3) -> np.ndarray:
    """Pixel values the fake serves: a function of the absolute 30 m pixel position only."""
    col0 = round(transform.c / transform.a)
    row0 = round(transform.f / transform.e)
    rows = np.arange(row0, row0 + height)[:, None]
    cols = np.arange(col0, col0 + width)[None, :]
    out = np.empty((bands, height, width), np.uint8)
    for b in range(bands):
        out[b] = ((cols * 7 + rows * 13 + b * 61) % 250 + 1).astype(np.uint8)
    return out


def cloud_pattern(transform: Affine, width: int, height: int) -> np.ndarray:
    """The 0/1 cloud mask the fake serves: diagonal bands of the absolute pixel position."""
    col0 = round(transform.c / transform.a)
    row0 = round(transform.f / transform.e)
    rows = np.arange(row0, row0 + height)[:, None]
    cols = np.arange(col0, col0 + width)[None, :]
    return (((cols + rows) // 5) % 3 == 0).astype(np.uint8)[None]


@dataclass
class Node:
    """An expression node: an operation, its arguments and the node it applies to."""

    fake: FakeEE
    op: str
    args: tuple = ()
    parent: Node | None = None
    images: tuple[FakeImage, ...] = ()
    kwargs: dict = field(default_factory=dict)

    def _child(self, op: str, *args: Any, images: tuple[FakeImage, ...] | None = None,
               cls: type | None = None, **kwargs: Any) -> Any:
        return (cls or type(self))(self.fake, op, args, self,
                                   self.images if images is None else images, kwargs)

    def chain(self) -> list[str]:
        """Operation names from the root to this node."""
        return ([] if self.parent is None else self.parent.chain()) + [self.op]

    def find(self, op: str) -> Node | None:
        """The nearest node named ``op`` on the way to the root."""
        node: Node | None = self
        while node is not None and node.op != op:
            node = node.parent
        return node

    def getInfo(self) -> Any:  # noqa: N802 (ee's spelling)
        self.fake.getinfo_calls.append(self)
        self.fake.maybe_fail("getInfo")
        return self.evaluate()

    def evaluate(self) -> Any:
        raise FakeEEException(f"cannot evaluate {self.chain()}")


class Collection(Node):
    """Stands in for ``ee.ImageCollection``."""

    def merge(self, other: Collection) -> Collection:
        self.fake.log("merge", other.args)
        return self._child("merge", other, images=self.images + other.images)

    def filterDate(self, start: str, end: str) -> Collection:  # noqa: N802
        self.fake.log("filterDate", (start, end))
        lo, hi = dt.datetime.fromisoformat(start), dt.datetime.fromisoformat(end)
        return self._child("filterDate", start, end,
                           images=tuple(i for i in self.images if lo <= i.acquired < hi))

    def filterBounds(self, geometry: Geometry) -> Collection:  # noqa: N802
        self.fake.log("filterBounds", (geometry,))
        return self._child("filterBounds", geometry,
                           images=tuple(i for i in self.images if i.in_roi))

    def filter(self, flt: Filter) -> Collection:
        self.fake.log("filter", (flt.op, flt.prop, flt.value))
        if (flt.op, flt.prop) != ("lt", "CLOUD_COVER"):
            raise FakeEEException(f"fake supports only Filter.lt('CLOUD_COVER'), got {flt}")
        return self._child("filter", flt,
                           images=tuple(i for i in self.images if i.cloud_cover < flt.value))

    def map(self, fn: Any) -> Collection:
        body = fn(Image(self.fake, "<mapped element>"))
        self.fake.log("map", (body,))
        return self._child("map", body)

    def median(self) -> Image:
        self.fake.log("median", ())
        return self._child("median", cls=Image)

    def mean(self) -> Image:
        self.fake.log("mean", ())
        return self._child("mean", cls=Image)

    def aggregate_array(self, prop: str) -> Value:
        self.fake.log("aggregate_array", (prop,))
        getters = {"LANDSAT_PRODUCT_ID": lambda i: i.product_id,
                   "system:time_start": lambda i: i.time_ms}
        return Value(self.fake, "aggregate_array", (prop,), self,
                     kwargs={"value": [getters[prop](i) for i in self.images]})


class Image(Node):
    """Stands in for ``ee.Image`` (both composites and the mapped per-image function)."""

    def select(self, bands: Any) -> Image:
        return self._child("select", bands)

    def bitwiseAnd(self, value: int) -> Image:  # noqa: N802
        return self._child("bitwiseAnd", value)

    def eq(self, value: int) -> Image:
        return self._child("eq", value)

    def And(self, other: Image) -> Image:  # noqa: N802
        return self._child("And", other)

    def Not(self) -> Image:  # noqa: N802
        return self._child("Not")

    def gte(self, value: float) -> Image:
        return self._child("gte", value)

    def unmask(self, value: float | None = None,
               sameFootprint: bool | None = None) -> Image:  # noqa: N803 (ee's spelling)
        return self._child("unmask", value, sameFootprint)

    def rename(self, name: str) -> Image:
        return self._child("rename", name)

    def updateMask(self, mask: Image) -> Image:  # noqa: N802
        return self._child("updateMask", mask)

    def clip(self, geometry: Geometry) -> Image:
        self.fake.log("clip", (geometry,))
        return self._child("clip", geometry)

    def multiply(self, value: float) -> Image:
        return self._child("multiply", value)

    def toByte(self) -> Image:  # noqa: N802
        return self._child("toByte")

    def reduceRegion(self, reducer: Reducer, geometry: Geometry, scale: float,  # noqa: N802
                     crs: str | None = None, maxPixels: float | None = None,  # noqa: N803
                     tileScale: float | None = None) -> Value:  # noqa: N803
        self.fake.log("reduceRegion", (reducer.name, geometry, scale, crs, maxPixels, tileScale))
        return Value(self.fake, "reduceRegion", (reducer, geometry, scale), self)

    def selected_bands(self) -> list[str]:
        node = self.find("select")
        return [] if node is None else list(node.args[0])

    def masked_qa_bits(self) -> set[int]:
        """QA_PIXEL bit values masked by the function mapped over the collection, if any."""
        mapped = self.find("map")
        if mapped is None:
            return set()
        return mapped.args[0].update_mask_bits()

    def update_mask_bits(self) -> set[int]:
        """QA_PIXEL bit values this ``updateMask`` node masks (empty for anything else)."""
        return _masked_bits(self.args[0]) if self.op == "updateMask" else set()

    def flagged_qa_bits(self) -> set[int]:
        """For ``Not(clear).updateMask(keep)``: the QA_PIXEL bit values whose being set makes
        the flag 1 (empty for anything else)."""
        if self.op != "updateMask" or self.parent is None or self.parent.op != "Not":
            return set()
        return _masked_bits(self.parent.parent)


def _masked_bits(mask: Node) -> set[int]:
    """Bits b such that the mask keeps pixels where ``select('QA_PIXEL').bitwiseAnd(b).eq(0)``."""
    if mask.op == "And":
        return _masked_bits(mask.parent) | _masked_bits(mask.args[0])
    if (mask.op == "eq" and mask.args == (0,) and mask.parent.op == "bitwiseAnd"
            and mask.parent.parent.op == "select" and mask.parent.parent.args[0] == "QA_PIXEL"):
        return {mask.parent.args[0]}
    return set()


class Value(Node):
    """A computed value: aggregate_array, reduceRegion results, their ``get``."""

    def get(self, key: str) -> Value:
        return Value(self.fake, "get", (key,), self)

    def evaluate(self) -> Any:
        if self.op == "aggregate_array":
            return self.kwargs["value"]
        if self.op == "get" and self.parent.op == "reduceRegion":
            reducer, _, scale = self.parent.args
            image = self.parent.parent
            if reducer.name != "count" or scale != 300:
                raise FakeEEException("fake counts only with Reducer.count() at 300 m")
            return self.fake.count(image, self.args[0])
        return super().evaluate()


@dataclass
class Filter:
    """Stands in for an ``ee.Filter``."""

    op: str
    prop: str
    value: float

    @staticmethod
    def lt(prop: str, value: float) -> Filter:
        return Filter("lt", prop, value)


@dataclass
class Reducer:
    """Stands in for an ``ee.Reducer``."""

    name: str

    @staticmethod
    def count() -> Reducer:
        return Reducer("count")


@dataclass
class Geometry:
    """Stands in for ``ee.Geometry(geojson, proj, geodesic)``."""

    geojson: dict
    proj: str | None = None
    geodesic: bool | None = None


class FakeData:
    """Stands in for ``ee.data``: serves computePixels from the pattern."""

    def __init__(self, fake: FakeEE) -> None:
        self.fake = fake

    def computePixels(self, params: dict) -> bytes:  # noqa: N802
        fake = self.fake
        fake.pixel_requests.append(params)
        fake.maybe_fail("computePixels")
        if fake.fail_pixels_after is not None and \
                len(fake.pixel_requests) > fake.fail_pixels_after:
            raise FakeEEException("Computation timed out.")
        grid = params["grid"]
        width, height = grid["dimensions"]["width"], grid["dimensions"]["height"]
        if params.get("fileFormat") != "GEO_TIFF":  # the real default is AUTO_JPEG_PNG
            raise FakeEEException(f"fake serves GEO_TIFF only, got {params.get('fileFormat')}")
        if width * height * len(params["bandIds"]) > 48 * 2**20 or max(width, height) > 32768:
            raise FakeEEException("Total request size must be less than or equal to 50331648 "
                                  "bytes.")  # the v1 computePixels limits, as the service says
        a = grid["affineTransform"]
        transform = Affine(a["scaleX"], a["shearX"], a["translateX"],
                           a["shearY"], a["scaleY"], a["translateY"])
        bands = len(params["bandIds"])
        pixels = (cloud_pattern(transform, width, height) if params["bandIds"] == ["cloud"]
                  else pattern(transform, width, height, bands))
        with MemoryFile() as memfile:
            with memfile.open(driver="GTiff", width=width, height=height, count=bands,
                              dtype="uint8", crs=grid["crsCode"], transform=transform) as dst:
                dst.write(pixels)
            return bytes(memfile.read())


class FakeEE:
    """The fake ``ee`` module: catalog, credentials switch and a log of what was built."""

    EEException = FakeEEException
    Filter = Filter
    Reducer = Reducer

    def __init__(self, catalog: list[FakeImage], credentials: bool = True,
                 roi_pixels: int = 1000, fail_pixels_after: int | None = None,
                 errors: dict[str, BaseException] | None = None) -> None:
        self.catalog = catalog
        self.errors = dict(errors or {})
        """Call name ("Initialize", "getInfo", "computePixels") -> what it raises, as the real
        client lets network and token-refresh failures through unconverted."""
        self.credentials = credentials
        self.roi_pixels = roi_pixels
        self.fail_pixels_after = fail_pixels_after
        self.calls: list[tuple[str, tuple]] = []
        self.initialize_calls: list[dict] = []
        self.getinfo_calls: list[Node] = []
        self.pixel_requests: list[dict] = []
        self.data = FakeData(self)
        fake = self

        class _ImageNamespace:
            @staticmethod
            def constant(value: float) -> Image:
                return Image(fake, "constant", (value,))

        self.Image = _ImageNamespace

    def maybe_fail(self, call: str) -> None:
        """Raise the failure planned for ``call``, if any."""
        if call in self.errors:
            raise self.errors[call]

    def log(self, op: str, args: tuple) -> None:
        self.calls.append((op, args))

    def ops(self, op: str) -> list[tuple]:
        """Arguments of every recorded call of ``op``."""
        return [args for name, args in self.calls if name == op]

    # -- module-level API --------------------------------------------------------------------

    def Initialize(self, project: str | None = None, **kwargs: Any) -> None:  # noqa: N802
        self.initialize_calls.append({"project": project, **kwargs})
        self.maybe_fail("Initialize")
        if not self.credentials:
            raise FakeEEException("Please authorize access to your Earth Engine account by "
                                  "running\n\nearthengine authenticate\n\nin your command line")

    def Geometry(self, geojson: dict, proj: str | None = None,  # noqa: N802
                 geodesic: bool | None = None) -> Geometry:
        self.log("Geometry", (geojson, proj, geodesic))
        return Geometry(geojson, proj, geodesic)

    def ImageCollection(self, collection_id: str) -> Collection:  # noqa: N802
        self.log("ImageCollection", (collection_id,))
        return Collection(self, "ImageCollection", (collection_id,), None,
                          tuple(i for i in self.catalog if i.collection == collection_id))

    def Dictionary(self, values: dict) -> Value:  # noqa: N802
        fake = self

        class _Dict(Value):
            def evaluate(self) -> Any:
                return {k: v.evaluate() if isinstance(v, Node) else v
                        for k, v in self.kwargs["values"].items()}

        return _Dict(fake, "Dictionary", (), None, kwargs={"values": values})

    # -- evaluation --------------------------------------------------------------------------

    def count(self, image: Image, band: str) -> int:
        """Pixels the count reducer finds in ``band`` of ``image`` over the ROI at 300 m."""
        if image.find("constant") is not None:
            return self.roi_pixels if band == "constant" else 0
        if band not in image.selected_bands():
            return 0
        median = image.find("median")
        if median is None or not median.images:
            return 0
        masked = image.masked_qa_bits() == {1 << 3, 1 << 4}
        fraction = max(i.clear_fraction if masked else 1.0 for i in median.images)
        return round(self.roi_pixels * fraction)
