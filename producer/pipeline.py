"""Produce the two products of a shelf-year from scenes, end to end (paper, section 2).

Stages per shelf-year: scenes (from a source) -> merge plan on the scenes' usable masks ->
SLC-off restoration of the planned Landsat 7 scenes -> segmentation of the planned scenes ->
merge of their predictions -> clipping to the effective extent -> products, auxiliary COGs and
the provenance record. Only the scenes the plan uses are restored and segmented, so a summer
with one full clear scene costs one prediction; when several scenes cover the whole ROI, up to
``compare_scenes`` of them are segmented and compared, and the medoid prediction becomes the map
(``producer.compare``, paper 2.4.1).

A shelf-year is skipped when its provenance record exists with the same ``inputs_digest`` (scene
ids — with the signature of their files where an id does not pin the pixels, ``Scene.digest_key``
—, weights hashes, software version, parameters) and its files are all present, unless
``force``. Nothing is written for a year that cannot be mapped (no scene, shelf region not
covered, effective extent more than ``MAX_OUTSIDE_ROI_SHARE`` outside the ROI), and nothing
deleted: the products an earlier run made of it stay, named in the year's message with how to
remove them (``_earlier_products``); files are
written atomically and the provenance record last, so an interrupted run leaves either the
previous complete shelf-year or a new one whose record is absent (redone).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Collection, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.errors import RasterioError
from rasterio.windows import Window
from shapely.errors import ShapelyError
from shapely.geometry import box
from shapely.geometry.base import BaseGeometry

from producer.cache import cached_sha256
from producer.compare import (
    DEFAULT_COMPARE_SCENES,
    ComparedPrediction,
    compare_predictions,
    scenes_to_compare,
)
from producer.devices import device_problem
from producer.extent import (
    MAX_OUTSIDE_ROI_SHARE,
    ExtentError,
    ShelfArea,
    default_extent,
    polygonal,
    read_extent,
    read_extents,
)
from producer.grid import Grid, row_strips
from producer.merge import (
    NO_SCENE,
    Candidate,
    MergePlan,
    NotCoveredError,
    RowSpeed,
    compose_rows,
    plan_merge_rows,
    scenes_in_rows,
    with_main,
)
from producer.provenance import (
    ModelRecord,
    Provenance,
    SceneRecord,
    provenance_path,
)
from producer.roi_files import (
    is_default_outline,
    outline_sha256,
    produce_roi,
    release_roi_file,
    write_roi_geopackage,
)
from producer.shelves import get_shelf, released_name, shelf_box_polygon
from producer.slcoff import (
    GAP_BAND_REACH_PX,
    GAP_CLOUD_REACH_PX,
    detect_gaps,
    footprint_of,
    near_cloud,
)
from producer.sources.base import FOOTPRINT_KEY, Scene, SceneSource, summer_span
from producer.spec import (
    AUXILIARY_SUFFIXES,
    DEMO_SOURCE,
    ENCODING,
    FIRST_SUMMER,
    PROBABILITY_RASTER,
    RELEASED_RESTORATION,
    RESTORATION_METHODS,
    SCENE_IDS_TAG,
    SEGMENTATION_WINDOW,
    SENSORS,
    SOURCE_SCENE_NOT_IMAGED,
    TYPE1,
    TYPE2,
    ProductName,
    SpecError,
    build_name,
    latest_summer,
    shelf_year_dir,
    slc_off_possible,
    sort_sensors,
)
from producer.velocity import VelocityError, speed_on_grid, velocity_layout, velocity_source
from producer.writer import (
    WrittenProducts,
    atomic_path,
    remove_leftovers,
    unwritable,
    write_cog_rows,
    write_products_rows,
)

#: The demo segmentation weights trained by the training command on demo scenes.
DEMO_WEIGHTS = Path(__file__).resolve().parent / "weights" / "demo-segformer-b0.safetensors"
#: Default release folder of ``produce``.
DEFAULT_OUT = Path("release")
#: Bits of a scene's mask file (UInt8 on the ROI grid, in the work folder): has data, usable,
#: SLC-off gap (present because it is restored).
MASK_PRESENT, MASK_USABLE, MASK_GAP = 1, 2, 4

#: Progress callback of a stage: (stage, done, total, description).
StageProgress = Callable[[str, int, int, str], None]
STAGES: tuple[str, ...] = ("scenes", "restoration", "segmentation", "merge", "write")


class ProduceError(RuntimeError):
    """A shelf-year (or the whole run) cannot be produced; the message says why and what to do."""


def parse_years(text: str) -> list[int]:
    """Years from ``YYYY``, ``YYYY-YYYY`` (inclusive) or a comma list of either, sorted, unique."""
    years: set[int] = set()
    for part in (p.strip() for p in str(text).split(",")):
        if not part:
            raise ValueError(f"--year {text!r}: empty item in the list")
        bounds = part.split("-")
        if len(bounds) > 2 or not all(b.isdigit() and len(b) == 4 for b in bounds):
            raise ValueError(f"--year {text!r}: {part!r} is not YYYY or YYYY-YYYY")
        first, last = int(bounds[0]), int(bounds[-1])
        if last < first:
            raise ValueError(f"--year {text!r}: range {part!r} runs backwards")
        if first < FIRST_SUMMER:
            raise ValueError(f"--year {text!r}: no Landsat 7/8/9 summer before {FIRST_SUMMER}")
        if last > latest_summer():
            raise ValueError(f"--year {text!r}: the summer {last} has not begun (the latest is "
                             f"{latest_summer()}, from 1 November)")
        years.update(range(first, last + 1))
    return sorted(years)


@dataclass(frozen=True)
class ProduceOptions:
    """Everything that decides what ``produce`` writes (and so enters the inputs digest)."""

    out: Path = DEFAULT_OUT
    weights: Path | None = None
    diffgf: Path | None = None
    restoration: str = RELEASED_RESTORATION
    extent_file: Path | None = None
    device: str = "auto"
    force: bool = False
    keep_probability: bool = False
    source_index: bool = True
    tta: bool = True
    batch_size: int | None = None
    """Images per forward call; default 8 on the CPU, 32 on CUDA (see docs/benchmarks.md)."""
    exact: bool = False
    """CUDA in exact float32 instead of float16 autocast (no effect on the CPU)."""
    compile: bool = False
    """Segment with the forward compiled by TorchInductor (CUDA graphs on CUDA): a fixed cost
    per process, then faster windows; results equal up to float rounding, so not in the digest."""
    compare_scenes: int = DEFAULT_COMPARE_SCENES
    """Most full-coverage scenes of a summer segmented and compared (1: the ranking decides)."""
    velocity: Path | None = None
    """Ice-velocity product weighing the flow a merged year's main scene covers (paper 2.4.1;
    ``producer.velocity``)."""
    roi_file: Path | None = None
    """A GeoPackage with the shelf's ROI outline (default: the release's own, else the
    registry's; ``producer.roi_files``)."""


@dataclass(frozen=True)
class YearResult:
    """What happened to one shelf-year."""

    shelf: str
    year: int
    status: str
    """"produced", "skipped", "not-mapped" or "failed"."""
    message: str = ""
    products: WrittenProducts | None = None
    provenance: Path | None = None

    @property
    def ok(self) -> bool:
        """Whether the shelf-year's products exist after the run."""
        return self.status in ("produced", "skipped")


class LoadedModel:
    """The segmentation model of a run: hashed at once, loaded on first use (once per run).

    Up-to-date shelf-years only need the weights' hash, so a re-run that skips everything never
    pays for loading the model.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.sha256 = cached_sha256(self.path)  # the checkpoint loader's digest, remembered
        self._loaded: tuple[Any, ModelRecord] | None = None

    def _load(self) -> tuple[Any, ModelRecord]:
        if self._loaded is None:
            from producer.segmentation import load_checkpoint

            model, info = load_checkpoint(self.path)
            self._loaded = (model, info.model_record())
        return self._loaded

    @property
    def model(self) -> Any:
        """The DamageSegmenter, in eval mode on the CPU (inference moves it to the device)."""
        return self._load()[0]

    @property
    def record(self) -> ModelRecord:
        """The provenance record of the weights (name, sha256, file, config)."""
        return self._load()[1]


@dataclass
class _SceneMasks:
    """A scene's masks, kept on disk (one byte a pixel, LZW) and read back strip by strip."""

    scene: Scene
    path: Path
    """Mask file on the ROI grid: ``MASK_PRESENT`` | ``MASK_USABLE`` | ``MASK_GAP`` bits."""
    slc_off: bool
    cloud_fraction: float
    """Share of the GRID's pixels with data but cloudy (clouded SLC-off gaps included): a
    diagnostic of the mask file. Provenance records the share of the ROI instead
    (``MergePlan.cloud_fractions``), the base of all its fractions."""

    def _code(self, r0: int, r1: int) -> NDArray[np.uint8]:
        with rasterio.open(self.path) as ds:
            return ds.read(1, window=Window(0, r0, ds.width, r1 - r0))

    def rows(self, r0: int, r1: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """(usable, present) of rows r0:r1."""
        code = self._code(r0, r1)
        return (code & MASK_USABLE) != 0, (code & MASK_PRESENT) != 0

    def gap_rows(self, r0: int, r1: int) -> NDArray[np.bool_]:
        """SLC-off gap pixels of rows r0:r1 (restored before segmentation)."""
        return (self._code(r0, r1) & MASK_GAP) != 0

    def gap_mask(self) -> NDArray[np.bool_]:
        """The SLC-off gap pixels of the whole grid: what restoration fills (1 byte a pixel)."""
        with rasterio.open(self.path) as ds:
            return (ds.read(1) & MASK_GAP) != 0

    def candidate(self) -> Candidate:
        """The scene as the merge plans it, its masks read by strips."""
        return Candidate(self.scene.scene_id, self.scene.acquired, masks=self.rows)


# ---------------------------------------------------------------------------------------------
# Inputs: weights, sources, extent
# ---------------------------------------------------------------------------------------------


def resolve_weights(weights: Path | None, source_name: str) -> Path:
    """The segmentation weights to use: the given file, or the demo weights for the demo source.

    Never falls back to random weights: without a usable file this is an error saying what to do.
    """
    if weights is not None:
        if not Path(weights).is_file():
            raise ProduceError(f"--weights {weights}: file not found")
        return Path(weights)
    if source_name != DEMO_SOURCE:
        raise ProduceError(f"--weights FILE is required for the {source_name!r} source (the "
                           "authors' .pth or our .safetensors checkpoint)")
    if not DEMO_WEIGHTS.is_file():
        raise ProduceError(
            f"the demo weights {DEMO_WEIGHTS} do not exist yet: pass --weights FILE, or train "
            "them on demo scenes with the training command (`icedamage train --help`); "
            "random weights are never used as a default")
    return DEMO_WEIGHTS


def check_out_folder(out: Path) -> None:
    """Refuse an ``--out`` that cannot take the release (``producer.writer.unwritable``), before
    any scene is fetched: otherwise the first write fails only after the scenes, segmentation
    and merge of every shelf-year. Nothing is created here."""
    reason = unwritable(Path(out), folder=True)
    if reason is not None:
        raise ProduceError(f"--out {out}: {reason} (the release folder to write into)")


#: Formats ``producer.segmentation.load_checkpoint`` reads, by suffix.
SAFETENSORS_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pth", ".pt", ".bin")
#: The largest safetensors header the format allows (safetensors' own limit, 100 MB).
MAX_SAFETENSORS_HEADER = 100_000_000


def check_weights_file(path: Path) -> None:
    """Refuse a weights file that cannot be a checkpoint, by what is cheap to read without
    torch: a known suffix, a safetensors header that is a JSON object (and a sidecar JSON that
    parses), or a ``.pth`` that is a torch.save zip or pickle.

    Without it, a garbage ``--weights`` fails each shelf-year after its scenes are fetched; the
    full load (torch, shapes) still comes with the first shelf-year that is produced.
    """
    path = Path(path)
    if path.suffix in SAFETENSORS_SUFFIXES:
        _check_safetensors(path)
    elif path.suffix in TORCH_SUFFIXES:
        _check_torch_file(path)
    else:
        raise ProduceError(f"--weights {path}: unknown weights format {path.suffix!r} "
                           "(expected .pth from the authors or .safetensors)")


def _check_safetensors(path: Path) -> None:
    """A safetensors file whose header is a JSON object, and a sidecar, if any, that parses."""
    try:
        header = _safetensors_header(path)
    except OSError as err:
        raise ProduceError(f"--weights {path}: cannot be read ({err.strerror})") from None
    if not isinstance(header, dict):
        raise ProduceError(f"--weights {path}: not a safetensors file (it does not start with "
                           "the JSON header of one)")
    side = path.with_suffix(".json")
    if side.is_file():
        try:
            sidecar = json.loads(side.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:  # UnicodeDecodeError, JSONDecodeError
            raise ProduceError(f"--weights {path}: its sidecar {side.name} is not readable JSON "
                               f"({err})") from None
        if not isinstance(sidecar, dict):
            raise ProduceError(f"--weights {path}: its sidecar {side.name} is not a JSON object "
                               "(the model's config and facts)")


def _safetensors_header(path: Path) -> Any:
    """The parsed header of a safetensors file, None where the file cannot be one: it starts
    with the header's byte length (8 bytes, little endian), then that much JSON."""
    with path.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if not 1 < size <= min(path.stat().st_size - 8, MAX_SAFETENSORS_HEADER):
            return None
        try:
            return json.loads(f.read(size))
        except ValueError:  # UnicodeDecodeError, JSONDecodeError
            return None


#: The first bytes of a ``torch.save`` file: a zip archive (torch ≥ 1.6), or a pickle
#: (protocol 2 or later: opcode PROTO, 0x80) in the legacy format.
_TORCH_MAGIC = (b"PK\x03\x04", b"\x80")


def _check_torch_file(path: Path) -> None:
    """A ``.pth`` is a torch.save zip archive or legacy pickle; anything else cannot load."""
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise ProduceError(f"--weights {path}: cannot be read ({err.strerror})") from None
    if not head.startswith(_TORCH_MAGIC):
        raise ProduceError(f"--weights {path}: not a torch checkpoint (neither the zip archive "
                           "nor the pickle torch.save writes)")


def resolve_diffgf(diffgf: Path | None, source_name: str) -> Path | None:
    """The DiffGF weights: the given path, or the demo DiffGF for the demo source if present."""
    if diffgf is not None:
        return Path(diffgf)
    if source_name == DEMO_SOURCE:
        from producer.restoration.api import DEMO_WEIGHTS

        if DEMO_WEIGHTS.exists():
            return DEMO_WEIGHTS
    return None


def resolve_source(spec: str, demo_size: int | None = None, force: bool = False) -> SceneSource:
    """A scene source from ``gee``, ``local:DIR`` or ``demo`` (``demo_size``: demo window px;
    ``force``: a source that keeps what it fetched, as gee does its rankings and scenes,
    fetches again)."""
    from producer.sources.registry import get_source, parse_source_spec, source_options

    if demo_size is not None and parse_source_spec(spec)[0] != DEMO_SOURCE:
        raise ProduceError(f"--demo-size applies to the demo source only, not {spec!r}")
    again = {"force": True} if force and "force" in source_options(spec) else {}
    return get_source(spec, size=demo_size, **again)


def effective_extent(shelf: str, year: int, source: SceneSource, roi: BaseGeometry, grid: Grid,
                     extent_file: Path | None) -> tuple[BaseGeometry, str]:
    """The shelf-year's extent polygon and where it came from (for the provenance)."""
    if extent_file is not None:
        return polygonal(read_extent(extent_file, shelf, year)), f"file:{Path(extent_file).name}"
    source_extent = getattr(source, "extent", None)
    if callable(source_extent):
        return polygonal(source_extent(shelf, year, grid)), f"source:{source.name}"
    shelf_box = shelf_box_polygon(shelf)
    if shelf_box is not None:  # a ROI holding neighbouring shelves: the shelf's own box
        return shelf_box.intersection(roi).intersection(box(*grid.bounds)), "default:shelf-box"
    return default_extent(roi, grid), "default:roi-shrunk"


# ---------------------------------------------------------------------------------------------
# Digest, software versions and existing outputs
# ---------------------------------------------------------------------------------------------


def software_versions(restoration_used: bool = False) -> dict[str, str]:
    """Versions of this package and the libraries that shape the products."""
    names = ["icedamage", "numpy", "rasterio", "rio-cogeo", "shapely", "torch", "transformers"]
    if restoration_used:
        names.append("diffusers")
    versions = {name: package_version(name) for name in names}
    versions["gdal"] = rasterio.__gdal_version__
    return versions


def package_version(name: str) -> str:
    """The installed version of a distribution, or "unknown"."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def inputs_digest(source: str, scene_ids: Sequence[str], weights_sha: str,
                  diffgf_sha: str | None, parameters: dict[str, Any]) -> str:
    """SHA-256 over everything that decides a shelf-year's outputs (``scene_ids``: the scenes'
    ``Scene.digest_key``, their ids with the signatures of their files when they have one)."""
    doc = {
        "source": source,
        "scenes": sorted(scene_ids),
        "weights_sha256": weights_sha,
        "diffgf_sha256": diffgf_sha,
        "icedamage": package_version("icedamage"),
        "parameters": parameters,
    }
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def existing_records(release: Path, shelf: str, year: int) -> list[tuple[Path, Provenance]]:
    """Provenance records already in the shelf-year folder (unreadable ones are ignored)."""
    folder = Path(release) / shelf_year_dir(shelf, year)
    out = []
    for path in sorted(folder.glob("*" + AUXILIARY_SUFFIXES["provenance"])):
        with contextlib.suppress(ValueError, KeyError, TypeError):
            out.append((path, Provenance.from_json(path.read_text())))
    return out


def is_up_to_date(release: Path, shelf: str, year: int,
                  digest: str | Callable[[Provenance], Collection[str]]) -> Path | None:
    """The provenance path of a complete shelf-year with this digest, else None.

    ``digest`` may be a function of the record giving the digests that count as up to date,
    for parameters whose effect depends on facts the record keeps (``compare_scenes`` matters
    only up to the number of full-coverage scenes) and for the digests earlier versions
    computed for the same inputs.
    """
    for path, record in existing_records(release, shelf, year):
        if record.inputs_digest not in (digest(record) if callable(digest) else {digest}):
            continue
        if all((path.parent / name).is_file() for name in record.products.values()):
            return path
    return None


# ---------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------


def _check_rgb(ds: Any, path: Path, grid: Grid) -> None:
    if ds.count != 3 or ds.dtypes[0] != "uint8":
        raise ProduceError(f"{path}: expected 3 UInt8 bands, found {ds.count} {ds.dtypes[0]}")
    _check_on_grid(ds, path, grid)


def _check_on_grid(ds: Any, path: Path, grid: Grid) -> None:
    if not grid.holds(ds):
        raise ProduceError(f"{path}: raster {(ds.height, ds.width)} at {tuple(ds.transform)[:6]} "
                           f"({ds.crs}) is not on the ROI grid {grid.shape} at "
                           f"{tuple(grid.transform)[:6]} ({grid.crs})")


def _read_rgb(path: Path, grid: Grid) -> NDArray[np.uint8]:
    with rasterio.open(path) as ds:
        _check_rgb(ds, path, grid)
        return np.moveaxis(ds.read(), 0, -1)


def _mask_profile(grid: Grid) -> dict[str, Any]:
    """Tiled LZW UInt8 on the ROI grid: the work folder's mask files."""
    return {"driver": "GTiff", "width": grid.width, "height": grid.height, "count": 1,
            "dtype": "uint8", "crs": grid.crs, "transform": grid.transform, "tiled": True,
            "blockxsize": ENCODING.blocksize, "blockysize": ENCODING.blocksize,
            "compress": ENCODING.compression}


def scene_masks(scene: Scene, year: int, grid: Grid, workdir: Path,
                area: ShelfArea | None = None) -> _SceneMasks:
    """Usable and present pixels of a scene; SLC-off gaps count as usable (they get restored)
    unless a cloud lies across them.

    SLC-off gaps lie inside the scene's footprint and, given the shelf's ``area``, inside its
    ROI: a scene clipped to the ROI has no data beyond it, and the convex hull of its data
    reaches past a curved ROI edge (a parallel of latitude in EPSG:3031) by slivers thinner
    than a gap; those are "no scene", never restored.

    A cloud mask says nothing inside a gap (no data there), but a gap crossing a cloud is
    restored from that cloud: gap pixels within ``GAP_CLOUD_REACH_PX`` of a flagged cloud pixel
    are cloudy (present, never usable), so the shelf region is never filled from them.

    Read and written strip by strip (the masks go to a file in ``workdir``), so memory does not
    grow with the grid or the number of scenes; the cloud mask of an SLC-off scene is read with
    ``GAP_CLOUD_REACH_PX`` rows of context either side, so clouds reach across strip edges, and
    the scene itself with ``GAP_BAND_REACH_PX`` rows (gap edges zero in some bands only). Only
    an SLC-off scene without a footprint from its source is read whole, as its footprint is the
    convex hull of all its pixels.
    """
    slc_off = scene.sensor in SENSORS and SENSORS[scene.sensor].slc_off_in(year)
    footprint_path = scene.metadata.get(FOOTPRINT_KEY)
    hull = (footprint_of(_read_rgb(scene.path, grid)) if slc_off and footprint_path is None
            else None)
    path = Path(workdir) / f"{scene.scene_id}_masks.tif"
    cloudy = 0
    with contextlib.ExitStack() as stack:
        src = stack.enter_context(rasterio.open(scene.path))
        _check_rgb(src, scene.path, grid)
        extra = {}
        for key, extra_path in (("cloud", scene.cloud_mask_path),
                                ("footprint", footprint_path if slc_off else None)):
            if extra_path is not None:
                extra[key] = stack.enter_context(rasterio.open(extra_path))
                _check_on_grid(extra[key], Path(extra_path), grid)
        out = stack.enter_context(rasterio.open(path, "w", **_mask_profile(grid)))
        for r0, r1 in row_strips(grid.height):
            window = Window(0, r0, grid.width, r1 - r0)
            if slc_off:
                present, gaps = _gap_rows(src, r0, r1, hull, extra.get("footprint"), area)
                present |= gaps
            else:
                present = np.any(src.read(window=window) != 0, axis=0)
                gaps = np.zeros(present.shape, bool)
            cloud = (_cloud_rows(extra["cloud"], r0, r1, gaps) if "cloud" in extra
                     else np.zeros(present.shape, bool))
            usable = present & ~cloud
            cloudy += int(np.count_nonzero(cloud & present))
            code = present.view(np.uint8) * np.uint8(MASK_PRESENT)
            code |= usable.view(np.uint8) * np.uint8(MASK_USABLE)
            code |= gaps.view(np.uint8) * np.uint8(MASK_GAP)
            out.write(code, 1, window=window)
    return _SceneMasks(scene, path, slc_off, cloudy / (grid.width * grid.height))


def _gap_rows(src: Any, r0: int, r1: int, hull: NDArray[np.bool_] | None, footprint_ds: Any,
              area: ShelfArea | None) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(pixels with data, SLC-off gaps) of rows r0:r1 of an SLC-off scene: gaps inside the
    footprint (``hull`` or the source's file) and the ROI, detected on the rows with
    ``GAP_BAND_REACH_PX`` rows of context either side (``detect_gaps``' band-specific rule)."""
    c0, c1 = max(0, r0 - GAP_BAND_REACH_PX), min(src.height, r1 + GAP_BAND_REACH_PX)
    window = Window(0, c0, src.width, c1 - c0)
    rgb = np.moveaxis(src.read(window=window), 0, -1)
    footprint = hull[c0:c1] if hull is not None else footprint_ds.read(1, window=window) != 0
    if area is not None:
        footprint = footprint & area.rows(c0, c1)[0]
    crop = slice(r0 - c0, r1 - c0)
    return np.any(rgb[crop] != 0, axis=2), detect_gaps(rgb, footprint)[crop]


def _cloud_rows(cloud_ds: Any, r0: int, r1: int, gaps: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Cloudy pixels of rows r0:r1: the flagged ones, and the SLC-off ``gaps`` pixels of these
    rows that lie within ``GAP_CLOUD_REACH_PX`` of a flagged one (the flag is 0 in gaps, yet
    their restoration copies the cloud around them). With gaps in the strip the mask is read
    with that many rows of context either side (bounded memory, clouds seen across strips)."""
    reach = GAP_CLOUD_REACH_PX if gaps.any() else 0
    c0, c1 = max(0, r0 - reach), min(cloud_ds.height, r1 + reach)
    flagged = cloud_ds.read(1, window=Window(0, c0, cloud_ds.width, c1 - c0)) != 0
    cloud = flagged[r0 - c0:r1 - c0]
    if not reach or not flagged.any():
        return cloud
    return cloud | (gaps & near_cloud(flagged, reach)[r0 - c0:r1 - c0])


@dataclass(frozen=True)
class _Restored:
    """What the restoration stage gives the later ones."""

    images: dict[str, Path]
    """Scene id -> the image to segment (restored for SLC-off scenes, else the scene's own)."""
    model: ModelRecord | None = None
    """The DiffGF weights used (None: FillNodata, or nothing restored)."""
    run: dict[str, Any] | None = None
    """The provenance's ``restoration_run`` (None: nothing restored)."""


def restore_scenes(used: Sequence[_SceneMasks], options: ProduceOptions, diffgf: Path | None,
                   workdir: Path, progress: StageProgress) -> _Restored:
    """Restore the used SLC-off scenes: their gap pixels as the scene masks hold them (inside
    the footprint and the ROI), on the run's device (``options.device``, as segmentation)."""
    slc = [m for m in used if m.slc_off]
    paths = {m.scene.scene_id: m.scene.path for m in used}
    progress("restoration", 0, len(slc), "")
    if not slc:
        return _Restored(paths)
    from producer.restoration import MissingWeightsError, restore_scene_file
    from producer.restoration.api import diffgf_record

    method = options.restoration
    diffgf_used = method == RELEASED_RESTORATION
    if diffgf_used and (diffgf is None or not Path(diffgf).exists()):
        raise ProduceError(str(MissingWeightsError(diffgf)))
    device = _restoration_device(options) if diffgf_used else "cpu"
    facts: dict[str, dict[str, Any]] = {}
    for k, masks in enumerate(slc):
        dst = workdir / f"{masks.scene.scene_id}_restored.tif"
        result = restore_scene_file(masks.scene.path, dst, method,
                                    diffgf if diffgf_used else None, gaps=masks.gap_mask(),
                                    device=device)
        facts[masks.scene.scene_id] = result.facts()
        paths[masks.scene.scene_id] = dst
        progress("restoration", k + 1, len(slc), masks.scene.scene_id)
    # name, weights hash and file, and the configuration beside the weights (hashed too)
    record = diffgf_record(diffgf, RELEASED_RESTORATION) if diffgf_used else None
    # every scene is restored with the same settings (seed, steps, tiles, device): once
    return _Restored(paths, record, {"method": method, **result.settings, "scenes": facts})


def _restoration_device(options: ProduceOptions) -> str:
    """The torch device DiffGF runs on: ``options.device`` resolved as segmentation resolves
    it (``auto``: CUDA when present)."""
    from producer.segmentation.inference import resolve_device

    return str(resolve_device(options.device))


def segment_scenes(model: LoadedModel, images: dict[str, Path], order: Sequence[str],
                   options: ProduceOptions, workdir: Path, progress: StageProgress,
                   labels: dict[str, str] | None = None, probabilities: Sequence[str] = ()
                   ) -> dict[str, tuple[Path, Path | None]]:
    """Predict every planned scene; scene id -> (0/1 prediction, probability or None).

    ``labels`` name a scene on the progress bar (default: its id); ``probabilities`` are scenes
    whose probability is needed even without ``keep_probability`` (compared scenes).
    """
    from producer.segmentation import predict_scene

    out: dict[str, tuple[Path, Path | None]] = {}
    labels = labels or {}
    progress("segmentation", 0, 100 * len(order), "")
    for k, scene_id in enumerate(order):
        pred = workdir / f"{scene_id}_prediction.tif"
        prob = (workdir / f"{scene_id}_probability.tif"
                if options.keep_probability or scene_id in probabilities else None)
        label = labels.get(scene_id, scene_id)
        if options.compile and k == 0:  # the first batch compiles: minutes without a tick
            progress("segmentation", 0, 100 * len(order), f"compiling, then {label}")

        def windows(done: int, total: int, k: int = k, label: str = label) -> None:
            progress("segmentation", k * 100 + round(100 * done / max(total, 1)),
                     100 * len(order), label)

        predict_scene(model.model, images[scene_id], pred, probability_path=prob,
                      tta=options.tta, batch_size=batch_size_for(options), device=options.device,
                      amp=False if options.exact else None, progress=windows,
                      compile_mode="auto" if options.compile else None)
        out[scene_id] = (pred, prob)
        progress("segmentation", 100 * (k + 1), 100 * len(order), label)
    return out


def _write_json(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


# ---------------------------------------------------------------------------------------------
# One shelf-year
# ---------------------------------------------------------------------------------------------


def _no_progress(stage: str, done: int, total: int, what: str) -> None:
    """Progress sink for callers without a display."""


@contextlib.contextmanager
def _workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="icedamage-produce-") as tmp:
        yield Path(tmp)


def batch_size_for(options: ProduceOptions) -> int:
    """The batch size asked for, else 8 images per call on the CPU and 32 on CUDA (a GPU needs
    more images in flight; the CPU gains nothing beyond a few)."""
    if options.batch_size is not None:
        return options.batch_size
    from producer.segmentation.inference import resolve_device

    return 32 if resolve_device(options.device).type == "cuda" else 8


def run_parameters(options: ProduceOptions, grid: Grid, extent: BaseGeometry,
                   extent_origin: str, full_coverage: int | None = None,
                   year: int | None = None, roi: str | None = None) -> dict[str, Any]:
    """The parameters that shape a shelf-year's outputs (recorded and part of the digest).

    ``compare_scenes`` is a parameter only where it can change the map: when more than one
    scene would be compared, i.e. counted up to the number of full-coverage scenes
    (``full_coverage``, None while unknown). A summer with fewer than two such scenes (most)
    keeps its digest whatever K is. Likewise the restoration method only for a ``year`` that
    can hold SLC-off imagery: elsewhere nothing is restored, and a year produced without
    ``--restoration`` is not redone (nor recorded as restored) when it is given.
    """
    parameters: dict[str, Any] = {
        "tta": options.tta,
        "extent": extent_origin,
        "extent_sha256": hashlib.sha256(extent.wkb).hexdigest(),
        "grid": [list(grid.transform)[:6], grid.width, grid.height],
        "keep_probability": options.keep_probability,
        "source_index": options.source_index,
    }
    if year is None or slc_off_possible(year):
        parameters["restoration_method"] = options.restoration
    compared = scenes_to_compare(options.compare_scenes, full_coverage)
    if compared > 1:
        parameters["compare_scenes"] = compared
    if options.velocity is not None and not full_coverage:
        # only a merged summer chooses its main scene by coverage (and flow): a summer with a
        # full-coverage scene keeps its digest whatever velocity product is given; the file's
        # content counts, not its name (recorded apart, ``_write_year``), and the variable a
        # NETCDF:"file":variable argument reads
        velocity_file, velocity_variable = velocity_source(options.velocity)
        parameters["velocity_sha256"] = cached_sha256(velocity_file)
        if velocity_variable is not None:
            parameters["velocity_variable"] = velocity_variable
    if roi is not None:  # an outline other than the registry's (``roi_digest``)
        parameters["roi_sha256"] = roi
    if min(grid.height, grid.width) < SEGMENTATION_WINDOW:
        # 0.2.0 padded such scenes bottom/right; centred as the authors' pad_to_roi since
        parameters["short_axis_padding"] = "centred"
    return parameters


@contextlib.contextmanager
def _speed(options: ProduceOptions, grid: Grid) -> Iterator[RowSpeed | None]:
    """The ice speed on the grid by rows when ``--velocity`` is given, else None."""
    if options.velocity is None:
        yield None
        return
    with speed_on_grid(velocity_layout(options.velocity), grid) as rows:
        yield rows


@contextlib.contextmanager
def _composed(plan: MergePlan, paths: Sequence[Path | None], fill: int, grid: Grid
              ) -> Iterator[Callable[[int, int], NDArray[np.uint8]]]:
    """Rows r0:r1 of the merged map of per-scene UInt8 rasters (``paths[i]``: scene i's file,
    None for scenes the plan leaves out), read and composed strip by strip."""
    with contextlib.ExitStack() as stack:
        datasets = {}
        for i in plan.used:
            if paths[i] is None:
                raise ProduceError(f"the plan uses scene {i} but it has no raster to merge")
            datasets[i] = stack.enter_context(rasterio.open(paths[i]))
            _check_on_grid(datasets[i], Path(paths[i]), grid)

        def rows(r0: int, r1: int) -> NDArray[np.uint8]:
            window = Window(0, r0, grid.width, r1 - r0)
            layers: list[NDArray | None] = [None] * len(paths)
            for i in scenes_in_rows(plan, r0, r1):
                layers[i] = datasets[i].read(1, window=window)
            if all(layer is None for layer in layers):
                return np.full((r1 - r0, grid.width), fill, np.uint8)
            return compose_rows(plan, r0, r1, layers, fill)

        yield rows


def _source_notes(source: SceneSource, shelf: str, year: int) -> str:
    """What the source says about files it left out or doubts (its optional ``explain``), one
    per line, appended to a not-mapped message so the user learns why a file did not count."""
    explain = getattr(source, "explain", None)
    lines = explain(shelf, year) if callable(explain) else []
    return "".join(f"\n  - {line}" for line in lines)


def _outside_roi(shelf: str, year: int, area: ShelfArea, extent_origin: str) -> YearResult:
    """Not mapped: more than ``MAX_OUTSIDE_ROI_SHARE`` of the effective extent lies outside the
    ROI, where nothing is imaged, so the shelf region cannot be fully covered (paper 2.4.1)."""
    return YearResult(
        shelf, year, "not-mapped",
        f"{shelf} {year}: {area.outside_share:.1%} of the effective extent's area "
        f"({extent_origin}) lies outside the ROI of {shelf}, where no scene is imaged, so the "
        f"shelf region cannot be fully covered (at most {MAX_OUTSIDE_ROI_SHARE:.0%} may lie "
        "outside); fix the extent or the ROI")


def _skipped(shelf: str, year: int, record: Path) -> YearResult:
    return YearResult(shelf, year, "skipped", "outputs are up to date (same scenes, weights, "
                      "software and parameters)", provenance=record)


def produce_year(shelf: str, year: int, source: SceneSource, model: LoadedModel,
                 options: ProduceOptions, diffgf: Path | None = None,
                 progress: StageProgress = _no_progress) -> YearResult:
    """Produce (or skip) one shelf-year; a year that cannot be mapped writes nothing.

    The message ends with the source's warnings about the files it used (``_source_warnings``)
    and, for a year not mapped or failed, the earlier products of the shelf-year that the
    release still holds (``_earlier_products``)."""
    shelf = get_shelf(shelf).name
    result = _produce_year(shelf, year, source, model, options, diffgf, progress)
    return _with_notes(result, source, options)


def _with_notes(result: YearResult, source: SceneSource, options: ProduceOptions) -> YearResult:
    """``result`` with the source's warnings and, unless its products exist after the run, the
    note on the earlier products of the shelf-year left in the release."""
    notes = _source_warnings(source, result.shelf, result.year)
    if not result.ok:
        notes += _earlier_products(options.out, result.shelf, result.year, result.status)
    return replace(result, message=result.message + notes) if notes else result


def _source_warnings(source: SceneSource, shelf: str, year: int) -> str:
    """What the source warns about the files it used for the shelf-year (its optional
    ``warnings``, e.g. a sidecar contradicting its file's name), one per line."""
    warn = getattr(source, "warnings", None)
    lines = warn(shelf, year) if callable(warn) else []
    return "".join(f"\n  - warning: {line}" for line in lines)


def _earlier_products(release: Path, shelf: str, year: int, status: str) -> str:
    """For a shelf-year not mapped or failed: the products of the shelf-year that an earlier
    run left in the release (found by their provenance records, ``existing_records``), named by
    folder and stem, with why they no longer stand for the current inputs and how to remove
    them. They are kept: ``produce`` deletes products only to replace them with new ones."""
    try:
        records = existing_records(release, shelf, year)
    except OSError:
        return ""
    if not records:
        return ""
    folder = Path(release) / shelf_year_dir(shelf, year)
    suffix = AUXILIARY_SUFFIXES["provenance"]
    stems, listed = [], []
    for path, record in records:
        stem = path.name[:-len(suffix)]
        files = sorted({name for name in record.products.values() if (folder / name).is_file()}
                       | {path.name})
        stems.append(stem)
        listed.append(f"{folder / stem} ({', '.join(files)})")
    if status == "not-mapped":
        why = "made from other inputs, they no longer match the current ones"
    else:
        why = "not replaced as this run failed, they may no longer match the current inputs"
    others = [f for f in folder.iterdir() if not any(f.name.startswith(f"{stem}_")
                                                     for stem in stems)]
    remove = (f"the folder {folder}" if not others else  # an empty folder is a layout warning
              " and ".join(f"{folder / stem}_*" for stem in stems))
    return (f"\n  - the release still holds earlier products of {shelf} {year}: "
            f"{'; '.join(listed)}; {why}. They are kept and cataloged; to remove them, delete "
            f"{remove}, then run `icedamage catalog` again")


def _produce_year(shelf: str, year: int, source: SceneSource, model: LoadedModel,
                  options: ProduceOptions, diffgf: Path | None = None,
                  progress: StageProgress = _no_progress) -> YearResult:
    """``produce_year`` without the notes on the source's files and the earlier products."""
    try:
        roi, roi_origin = produce_roi(options.out, shelf, options.roi_file)
    except ValueError as err:
        return YearResult(shelf, year, "failed", f"{shelf} {year}: {err}")
    roi_sha = None if is_default_outline(shelf, roi) else outline_sha256(roi)
    grid = source.grid(shelf, roi)
    with _workdir() as workdir:
        extent_geom, extent_origin = effective_extent(shelf, year, source, roi, grid,
                                                      options.extent_file)
        area = ShelfArea(roi, extent_geom, grid)
        if not area.extent_pixels:
            return YearResult(shelf, year, "failed", f"the effective extent ({extent_origin}) "
                              f"does not overlap the ROI of {shelf} on the scenes' grid")
        if not area.covered_by_roi:
            return _outside_roi(shelf, year, area, extent_origin)
        # DiffGF weights shape only SLC-off summers restored with DiffGF: other years keep
        # their digest (and are skipped) when those weights change
        diffgf_used = options.restoration == RELEASED_RESTORATION and slc_off_possible(year)
        diffgf_sha = (cached_sha256(diffgf) if diffgf_used and diffgf is not None
                      and Path(diffgf).exists() else None)

        def digest_of(scene_ids: Sequence[str], full_coverage: int | None) -> str:
            return inputs_digest(source.name, scene_ids, model.sha256, diffgf_sha, run_parameters(
                options, grid, extent_geom, extent_origin, full_coverage, year, roi_sha))

        def accepted(scene_ids: Sequence[str], full_coverage: int | None) -> set[str]:
            # records written before the restoration method stopped counting outside SLC-off
            # years carry the digest with it: the same inputs, so still up to date
            legacy = inputs_digest(source.name, scene_ids, model.sha256, diffgf_sha,
                                   run_parameters(options, grid, extent_geom, extent_origin,
                                                  full_coverage, roi=roi_sha))
            return {digest_of(scene_ids, full_coverage), legacy}

        def up_to_date(scene_ids: Sequence[str]) -> Path | None:
            return is_up_to_date(options.out, shelf, year, lambda record: accepted(
                scene_ids, _recorded_full_coverage(record, options.velocity is not None)))

        listed = getattr(source, "scene_keys", None) or getattr(source, "scene_ids", None)
        if callable(listed) and not options.force:
            keys = listed(shelf, year, grid)  # None: the source cannot tell without pixels
            done = None if keys is None else up_to_date(keys)
            if done is not None:
                return _skipped(shelf, year, done)
        progress("scenes", 0, 1, f"{shelf} {year}")
        scenes = source.scenes(shelf, year, grid, workdir)
        progress("scenes", 1, 1, f"{len(scenes)} scene(s)")
        if not scenes:
            return YearResult(shelf, year, "not-mapped", f"no scene of {shelf} in the summer "
                              f"{year} ({summer_span(year)}) from the {source.name} source"
                              f"{_source_notes(source, shelf, year)}")
        if not options.force:
            done = up_to_date([s.digest_key for s in scenes])
            if done is not None:
                return _skipped(shelf, year, done)

        progress("merge", 0, 2, "planning")
        masks = [scene_masks(s, year, grid, workdir, area) for s in scenes]
        try:
            with _speed(options, grid) as speed:
                plan = plan_merge_rows([m.candidate() for m in masks], area.rows, grid.shape,
                                       speed=speed)
        except NotCoveredError as err:
            return YearResult(shelf, year, "not-mapped",
                              f"{shelf} {year}: {err}{_source_notes(source, shelf, year)}")
        if options.velocity is not None and not plan.full_coverage and not plan.flow_fractions:
            return YearResult(shelf, year, "failed", f"--velocity {options.velocity}: no speed "
                              f"above 0 over the shelf region of {shelf} (a product of another "
                              "region, or only NoData there)")
        progress("merge", 1, 2, "planned")
        parameters = {**run_parameters(options, grid, extent_geom, extent_origin,
                                       len(plan.full_coverage), year, roi_sha),
                      "roi": roi_origin}  # recorded; the outline's digest is what counts
        digest = digest_of([s.digest_key for s in scenes], len(plan.full_coverage))
        compared = _to_compare(plan, options.compare_scenes)
        segment = [*plan.used, *(i for i in compared if i not in plan.used)]
        restored = restore_scenes([masks[i] for i in segment], options, diffgf, workdir,
                                  progress)
        images = restored.images
        compared_ids = [masks[i].scene.scene_id for i in compared]
        labels = {scene_id: f"compare {k + 1}/{len(compared)}: {scene_id}"
                  for k, scene_id in enumerate(compared_ids)}
        predictions = segment_scenes(model, images, [masks[i].scene.scene_id for i in segment],
                                     options, workdir, progress, labels, compared_ids)
        comparison = None
        if compared:
            plan, comparison = _compare(plan, compared, masks, predictions, area, grid,
                                        options.compare_scenes, progress)
            if not any(masks[i].slc_off for i in plan.used):
                restored = _Restored(images)  # only a compared scene was restored
        progress("merge", 2, 2, "merged")
        return _write_year(shelf, year, source, model, options, grid, plan, masks, predictions,
                           area, restored, parameters, digest, progress, comparison)


def _recorded_full_coverage(record: Provenance, velocity: bool = False) -> int | None:
    """Full-coverage scenes a record's summer had; records older than comparisons know it only
    for merged summers (none), else None (unknown). With a velocity product, the 1 that a
    single-scene record implies is enough: velocity counts only for merged summers, and how
    many scenes were full matters only beyond one (comparisons)."""
    value = record.parameters.get("full_coverage_scenes")
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if record.parameters.get("single_scene") is False:
        return 0
    return 1 if velocity and record.parameters.get("single_scene") is True else None


def _to_compare(plan: MergePlan, requested: int) -> tuple[int, ...]:
    """Candidate positions whose predictions are compared (ranking order; empty: none)."""
    count = scenes_to_compare(requested, len(plan.full_coverage))
    return plan.full_coverage[:count] if plan.single_scene and count > 1 else ()


def _compare(plan: MergePlan, compared: Sequence[int], masks: Sequence[_SceneMasks],
             predictions: dict[str, tuple[Path, Path | None]], area: ShelfArea, grid: Grid,
             requested: int, progress: StageProgress) -> tuple[MergePlan, dict[str, Any]]:
    """Compare the full-coverage predictions; the plan with the chosen one as the map, and the
    comparison's provenance record (paper 2.4.1, ``producer.compare``)."""
    progress("merge", 1, 2, f"comparing {len(compared)} predictions")
    ids = [masks[i].scene.scene_id for i in compared]

    def inside(r0: int, r1: int) -> NDArray[np.bool_]:
        roi, extent = area.rows(r0, r1)
        return roi & extent

    result = compare_predictions([ComparedPrediction(i, *predictions[i]) for i in ids], inside,
                                 grid.shape)
    full = [masks[i].scene.scene_id for i in plan.full_coverage]
    progress("merge", 1, 2, f"chose {ids[result.chosen]} ({result.decided_by})")
    return with_main(plan, compared[result.chosen]), result.to_record(requested, full)


def _write_year(shelf: str, year: int, source: SceneSource, model: LoadedModel,
                options: ProduceOptions, grid: Grid, plan: MergePlan,
                masks: Sequence[_SceneMasks], predictions: dict[str, tuple[Path, Path | None]],
                area: ShelfArea, restored_with: _Restored,
                parameters: dict[str, Any], digest: str, progress: StageProgress,
                comparison: dict[str, Any] | None = None) -> YearResult:
    """Merge the predictions into the products, auxiliary COGs and the provenance record (strip
    by strip: composed while written); remove the files it supersedes."""
    used = list(plan.used)
    pred_paths: list[Path | None] = [None] * len(masks)
    prob_paths: list[Path | None] = [None] * len(masks)
    for i in used:
        pred_paths[i], prob_paths[i] = predictions[masks[i].scene.scene_id]
    sensors = sort_sensors({masks[i].scene.sensor for i in used})
    slc_used = any(masks[i].slc_off for i in used)
    restoration = options.restoration if slc_used else None
    total = 3 + int(options.keep_probability) + int(options.source_index)
    name = build_name(sensors, shelf, year, restoration, TYPE1)
    with _staged(options.out, shelf, year) as staging:
        progress("write", 0, total, "products")
        with _composed(plan, pred_paths, 0, grid) as damage:
            staged = write_products_rows(staging, shelf, year, sensors, restoration,
                                         lambda r0, r1: (damage(r0, r1), area.rows(r0, r1)[1]),
                                         grid, source=source.name)
        staged_folder = staged.damage_map.parent
        products = {TYPE1.key: staged.damage_map.name, TYPE2.key: staged.damage.name}
        progress("write", 2, total, "auxiliary files")
        if options.keep_probability:
            path = staged_folder / name.auxiliary("probability")
            with _composed(plan, prob_paths, PROBABILITY_RASTER.nodata, grid) as prob:
                write_cog_rows(path, prob, grid, None, nodata=PROBABILITY_RASTER.nodata,
                               tags={"units": PROBABILITY_RASTER.unit,
                                     "description": PROBABILITY_RASTER.description})
            products["probability"] = path.name
        if options.source_index:
            path = staged_folder / name.auxiliary("source_scene")
            write_cog_rows(path, _source_index_rows(plan, area), grid, None, nodata=NO_SCENE,
                           tags={SCENE_IDS_TAG: json.dumps([masks[i].scene.scene_id
                                                            for i in used])})
            products["source_scene"] = path.name
        # only now, with every new file written, do the old record and files make way
        _withdraw_records(options.out, shelf, year, _planned_files(name, options))
        folder = Path(options.out) / shelf_year_dir(shelf, year)
        _commit_staged(staged_folder, folder)
    written = WrittenProducts(staged.name, folder / staged.damage_map.name,
                              folder / staged.damage.name)
    restored, restored_extent = restored_shares(plan, masks, area)
    folder_of_source = _source_folder(source)
    records = tuple(
        SceneRecord(
            scene_id=masks[i].scene.scene_id,
            sensor=masks[i].scene.sensor,
            acquired=masks[i].scene.acquired,
            valid_fraction=round(plan.usable_fractions[i], 6),
            map_fraction=round(plan.fractions[i], 6),
            role="main" if i == plan.main else "fill",
            cloud_fraction=round(plan.cloud_fractions[i], 6),
            slc_off=masks[i].slc_off,
            source_ids=masks[i].scene.source_ids,
            restored_fraction=round(restored.get(i, 0.0), 6),
            files=_scene_files(masks[i].scene, folder_of_source),
            reprojected=(masks[i].scene.metadata.get("reprojected")
                         if folder_of_source is not None else None),
        )
        for i in used
    )
    provenance = Provenance(
        shelf=shelf, year=year, sensors=sensors, restoration=restoration, source=source.name,
        scenes=records, segmentation=model.record, restoration_model=restored_with.model,
        restoration_run=restored_with.run,
        software=software_versions(slc_used),
        parameters={
            **parameters,
            "candidates": [m.scene.scene_id for m in masks],
            "single_scene": plan.single_scene,
            "full_coverage_scenes": len(plan.full_coverage),
            "roi_pixels": plan.roi_pixels,
            "extent_pixels": area.extent_pixels,
            "cloudy_fill_fraction": round(plan.cloudy_fill_fraction, 6),
            "uncovered_fraction": round(plan.uncovered_fraction, 6),
            "extent_fraction": round(area.extent_pixels / max(plan.roi_pixels, 1), 6),
            "extent_outside_roi_fraction": round(area.outside_share, 6),
            "restored_fraction": round(sum(restored.values()), 6),
            "restored_extent_fraction": round(restored_extent, 6),
            "device": options.device,
            "exact_float32": options.exact,
            "compiled": options.compile,
            **({"velocity": velocity_source(options.velocity)[0].name,
                "main_scene_flow_fraction": round(plan.flow_fractions[plan.main], 6)}
               if options.velocity is not None and plan.flow_fractions
               and not plan.single_scene else {}),
        },
        products=products, inputs_digest=digest, comparison=comparison,
        source_folder=None if folder_of_source is None else folder_of_source.resolve().name,
    )
    record_path = provenance_path(options.out, name)
    _write_json(record_path, provenance.to_json())
    progress("write", total, total, "provenance")
    chosen = (f", chosen of {len(comparison['compared'])} compared full-coverage scenes "
              f"({comparison['decided_by']})" if comparison else "")
    outside = (f"; {area.outside_share:.1%} of the effective extent lies outside the ROI and is "
               "NoData in the type 1 map" if area.outside_share >= 0.0005 else "")
    return YearResult(shelf, year, "produced",
                      f"{name.stem}: {len(used)} scene(s), sensors {'_'.join(sensors)}{chosen}"
                      f"{outside}",
                      products=written, provenance=record_path)


def _source_folder(source: SceneSource) -> Path | None:
    """The folder a source reads its scene files from (``local:DIR``), else None."""
    folder = getattr(source, "folder", None)
    return Path(folder) if isinstance(folder, str | Path) else None


def _scene_files(scene: Scene, folder: Path | None) -> tuple[str, ...]:
    """The files a scene of a folder source was made from (``Scene.metadata["files"]``),
    relative to the folder (POSIX separators); a file outside it keeps its absolute path.
    Recorded only, never part of the inputs digest (the scene's signature already is)."""
    if folder is None:
        return ()
    out = []
    for name in scene.metadata.get("files") or ():
        path = Path(name)
        try:
            relative = path.relative_to(folder)
        except ValueError:
            try:
                relative = path.resolve().relative_to(folder.resolve())
            except ValueError:
                relative = path.resolve()
        out.append(relative.as_posix())
    return tuple(out)


def _source_index_rows(plan: MergePlan, area: ShelfArea
                       ) -> Callable[[int, int], NDArray[np.uint8]]:
    """Rows of the source-scene index file: value k for the k-th used scene,
    ``SOURCE_SCENE_NOT_IMAGED`` at ROI pixels no scene imaged (type 2 holds 0 there without an
    observation), ``NO_SCENE`` (its nodata) outside the ROI polygon."""
    remap = np.full(256, SOURCE_SCENE_NOT_IMAGED, np.uint8)
    for k, i in enumerate(plan.used):
        remap[i] = k

    def rows(r0: int, r1: int) -> NDArray[np.uint8]:
        roi = area.rows(r0, r1)[0]
        return np.where(roi, remap[plan.index[r0:r1]], np.uint8(NO_SCENE))

    return rows


def restored_shares(plan: MergePlan, masks: Sequence[_SceneMasks], area: ShelfArea
                    ) -> tuple[dict[int, float], float]:
    """How much of the map rests on restored SLC-off gap pixels: per used SLC-off scene the
    share of the ROI whose map pixels come from its gaps, and that share of the effective
    extent (the type 1 map's valid pixels). Scientists weigh restored maps by it (paper 3.2.4).
    """
    slc = [i for i in plan.used if masks[i].slc_off]
    counts = dict.fromkeys(slc, 0)
    in_extent = 0
    for r0, r1 in row_strips(area.grid.height) if slc else ():
        index = plan.index[r0:r1]
        extent = area.rows(r0, r1)[1]
        for i in slc:
            from_gaps = (index == i) & masks[i].gap_rows(r0, r1)
            counts[i] += int(np.count_nonzero(from_gaps))
            in_extent += int(np.count_nonzero(from_gaps & extent))
    return ({i: n / max(plan.roi_pixels, 1) for i, n in counts.items()},
            in_extent / max(area.extent_pixels, 1))


def _planned_files(name: ProductName, options: ProduceOptions) -> set[str]:
    """File names the shelf-year will hold once ``name``'s outputs are written."""
    files = {name.filename, name.partner().filename}
    if options.keep_probability:
        files.add(name.auxiliary("probability"))
    if options.source_index:
        files.add(name.auxiliary("source_scene"))
    return files


#: Hidden folder of a release where ``produce`` writes a shelf-year's new files before they
#: replace the old ones (``_staged``).
STAGING_DIR = ".produce-staging"


@contextlib.contextmanager
def _staged(release: Path, shelf: str, year: int) -> Iterator[Path]:
    """A private release root for a shelf-year's new files, removed when the block ends (an
    error or Ctrl-C included; a leftover of a killed run is removed first).

    Writing a big shelf-year takes minutes; written in place, an interrupted ``--force`` left
    the old record withdrawn and a mix of old and new files. Staged, the release keeps its old
    files and record until every new file exists, and then changes by renames
    (``_commit_staged``): a moment, on one file system.
    """
    root = Path(release) / STAGING_DIR / f"{shelf}_{year:04d}"
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    try:
        yield root
    finally:
        shutil.rmtree(root, ignore_errors=True)
        with contextlib.suppress(OSError):
            root.parent.rmdir()  # the release's last staging folder


def _commit_staged(staged: Path, folder: Path) -> None:
    """Move every staged file into the shelf-year's folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for path in sorted(staged.iterdir()):
        os.replace(path, folder / path.name)


def _withdraw_records(release: Path, shelf: str, year: int, keep: set[str]) -> None:
    """Before a shelf-year's outputs are (over)written: delete its provenance records, and
    the files of theirs that the new outputs will not replace.

    A record vouches for the files beside it: were it left while new products replace them, a
    run interrupted before its own record is written would leave the old record next to new
    files, and the next run would skip the shelf-year as up to date. Without a record the next
    run redoes it. Files the new outputs will not overwrite (another sensor set or restoration
    gives other names) go now, while a record still says which they are; an interrupted run
    can then leave no orphan product behind.
    """
    for path, record in existing_records(release, shelf, year):
        for file_name in record.products.values():
            if file_name not in keep:
                (path.parent / file_name).unlink(missing_ok=True)
        path.unlink(missing_ok=True)
    folder = Path(release) / shelf_year_dir(shelf, year)
    if folder.is_dir():  # what a run killed while writing left (a clean failure leaves none):
        # temporaries of any file of this shelf-year, whatever sensors or options made it
        remove_leftovers(folder, lambda final: f"_{shelf}_{year:04d}_" in final)


# ---------------------------------------------------------------------------------------------
# A whole run
# ---------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """Results of every shelf-year of a run."""

    results: list[YearResult] = field(default_factory=list)

    @property
    def produced_any(self) -> bool:
        """Whether at least one shelf-year has products after the run."""
        return any(r.ok for r in self.results)

    def tally(self) -> str:
        """One line counting the shelf-years by outcome, e.g. "3 produced, 1 failed"."""
        counts = Counter(r.status for r in self.results)
        return ", ".join(f"{counts[status]} {status}" for status in
                         ("produced", "skipped", "not-mapped", "failed") if counts[status])

    @property
    def exit_code(self) -> int:
        """0 when something was produced (or was up to date) and nothing failed, else 1."""
        if not self.produced_any or any(r.status == "failed" for r in self.results):
            return 1
        return 0


def check_request(shelf: str, source: SceneSource, options: ProduceOptions,
                  years: Sequence[int] = (), shelves: Sequence[str] = ()) -> str:
    """The released name of ``shelf`` (typed loosely: "pine island" is "Pine Island"), once the
    request is known to be runnable: a registered shelf, usable weights (DiffGF weights too
    when one of ``years`` can hold Landsat 7 SLC-off imagery and DiffGF restores it), a known
    restoration, a sane comparison count, a writable ``--out`` folder, a readable ``--extent``
    file and a ``--roi`` file that outlines the shelf (an unnamed outline only in a run of one
    shelf: ``shelves`` are the run's). The command calls it before drawing progress bars, so a
    mistyped option is one clear line; ``produce`` calls it with the years before fetching any
    scene."""
    name = released_name(shelf)
    check_weights_file(resolve_weights(options.weights, source.name))
    check_out_folder(options.out)
    if options.restoration not in RESTORATION_METHODS:
        raise ProduceError(f"--restoration {options.restoration!r}: use "
                           f"{' or '.join(RESTORATION_METHODS)}")
    if options.restoration == RELEASED_RESTORATION and any(map(slc_off_possible, years)):
        diffgf = resolve_diffgf(options.diffgf, source.name)
        if diffgf is None or not Path(diffgf).exists():
            from producer.restoration.api import MissingWeightsError

            raise ProduceError(str(MissingWeightsError(diffgf)))
    if options.compare_scenes < 1:
        raise ProduceError(f"--compare-scenes {options.compare_scenes}: must be at least 1 "
                           "(1 = no comparison, the source's ranking decides)")
    if options.extent_file is not None and not Path(options.extent_file).is_file():
        raise ProduceError(f"--extent {options.extent_file}: no such file (a GeoPackage of "
                           "extents with columns shelf, year)")
    if options.extent_file is not None:
        try:
            read_extents(options.extent_file)
        except ExtentError as err:
            raise ProduceError(f"--extent {err}") from None
    if options.batch_size is not None and options.batch_size < 1:
        raise ProduceError(f"--batch-size {options.batch_size}: must be at least 1")
    if options.velocity is not None:
        try:
            velocity_layout(options.velocity)
        except VelocityError as err:
            raise ProduceError(str(err)) from None
    if options.roi_file is not None:
        if not Path(options.roi_file).is_file():
            raise ProduceError(f"--roi {options.roi_file}: no such file (a GeoPackage with the "
                               "ROI outline; a 'shelf' column picks the shelf)")
        try:
            produce_roi(options.out, name, options.roi_file, run_shelves=shelves)
        except ValueError as err:
            raise ProduceError(str(err)) from None
    device_error = device_problem(str(options.device))  # torch only for a CUDA device
    if device_error is not None:
        raise ProduceError(f"--device {options.device}: {device_error}")
    return name


def produce(shelves: str | Sequence[str], years: Sequence[int], source: SceneSource,
            options: ProduceOptions, progress: StageProgress = _no_progress,
            report: Callable[[YearResult], None] | None = None) -> RunSummary:
    """Produce every year of one shelf or several, shelf by shelf, with one loaded model;
    errors of a shelf-year do not stop the others."""
    requested = [shelves] if isinstance(shelves, str) else list(shelves)
    names = [check_request(shelf, source, options, years, requested) for shelf in requested]
    weights = resolve_weights(options.weights, source.name)
    diffgf = resolve_diffgf(options.diffgf, source.name)
    model = LoadedModel(weights)
    summary = RunSummary()
    for shelf in names:
        for year in years:
            try:
                result = produce_year(shelf, year, source, model, options, diffgf, progress)
            except (ProduceError, SpecError, ValueError, OSError, RasterioError,
                    ShapelyError) as err:
                # a bad file or a full disk fails this shelf-year; the others still run
                result = _with_notes(YearResult(shelf, year, "failed", f"{shelf} {year}: {err}"),
                                     source, options)
            summary.results.append(result)
            if result.status in ("produced", "skipped"):  # skipped: its maps are on it too
                keep_roi(options, shelf)
            if report is not None:
                report(result)
    return summary


def keep_roi(options: ProduceOptions, shelf: str) -> None:
    """Write the ``--roi`` outline into the release once a map is made on it (the release's
    ROI GeoPackage is the outline its maps are made on; ``producer.roi_files``)."""
    if options.roi_file is None or release_roi_file(options.out, shelf).exists():
        return
    outline, _ = produce_roi(options.out, shelf, options.roi_file)
    write_roi_geopackage(options.out, shelf, outline,
                         f"produce --roi {Path(options.roi_file).name}")
