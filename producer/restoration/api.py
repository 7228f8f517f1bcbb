"""Restoring Landsat 7 SLC-off scenes: one entry point for every restoration method.

The method is always named by the caller and recorded by the producer in the restoration token
and provenance (``producer.spec.RESTORATION_METHODS``); one method is never substituted for
another. DiffGF needs weights from a local file; without them it fails with
:class:`MissingWeightsError` rather than falling back to a classical fill.

The DiffGF model (torch, diffusers: seconds to import) is imported only when a scene is
restored with it, so ``produce`` can resolve ``DEMO_WEIGHTS`` and skip up-to-date shelf-years
without paying for it.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window

from producer.provenance import ModelRecord, file_sha256
from producer.restoration.classical import (
    MAX_SEARCH_DISTANCE,
    SMOOTHING_ITERATIONS,
    restore_fillnodata,
)
from producer.slcoff import detect_gaps, footprint_of
from producer.spec import RESTORATION_METHODS
from producer.writer import atomic_path

if TYPE_CHECKING:
    import torch

    from producer.restoration.diffgf import DiffGF

#: The demo DiffGF trained by ``icedamage train-diffgf`` (see DIFFGF_MODEL_CARD.md there).
DEMO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "diffgf_demo.safetensors"

Progress = Callable[[int, int], None]


class MissingWeightsError(FileNotFoundError):
    """DiffGF was asked for but no weights file was given or found."""

    def __init__(self, weights: Path | None = None) -> None:
        where = f"DiffGF weights {weights} do not exist" if weights else "no DiffGF weights given"
        super().__init__(
            f"{where}: Landsat 7 SLC-off imagery needs a restoration model. "
            "Pass --diffgf FILE or choose --restoration FillNodata explicitly."
        )


@dataclass(frozen=True)
class RestorationResult:
    """What a scene restoration did, for the provenance record."""

    method: str
    gap_pixels: int
    gap_fraction: float
    """Gap pixels over the pixels with data or a gap (the scene's footprint as restored)."""
    weights: str | None
    weights_sha256: str | None
    seed: int
    device: str = "cpu"
    """Where the method ran (a torch device for DiffGF; GDAL's FillNodata runs on the CPU)."""
    settings: dict[str, Any] = field(default_factory=dict)
    """The method's settings that shape the result (``method_settings``)."""
    tiles: int | None = None
    """DiffGF: tiles diffused (the windows touching a gap); None for FillNodata."""

    def facts(self) -> dict[str, Any]:
        """The per-scene facts for the provenance (gap pixels, gap fraction, tiles)."""
        out: dict[str, Any] = {"gap_pixels": self.gap_pixels,
                               "gap_fraction": round(self.gap_fraction, 6)}
        if self.tiles is not None:
            out["tiles"] = self.tiles
        return out


def method_settings(method: str, seed: int = 0, steps: int | None = None,
                    device: str = "cpu") -> dict[str, Any]:
    """The settings of a restoration method, as the provenance records them: DiffGF's seed,
    DDIM steps (eta 0), tile size and overlap (px) and device; FillNodata's search distance
    (px) and smoothing iterations."""
    if check_method(method) == "FillNodata":
        return {"max_search_distance_px": MAX_SEARCH_DISTANCE,
                "smoothing_iterations": SMOOTHING_ITERATIONS, "device": "cpu"}
    from producer.restoration.diffgf import DEFAULT_STEPS, OVERLAP, TILE

    return {"seed": seed, "ddim_steps": DEFAULT_STEPS if steps is None else steps,
            "ddim_eta": 0.0, "tile_px": TILE, "overlap_px": OVERLAP, "device": device}


#: Configuration files of a DiffGF ``save_pretrained`` folder, per part (diffusers' names).
PRETRAINED_CONFIGS = {"vae": "vae/config.json", "unet": "unet/config.json",
                      "scheduler": "scheduler/scheduler_config.json"}


def diffgf_record(weights: Path | str, name: str = "DiffGF") -> ModelRecord:
    """The provenance record of DiffGF weights: name, sha256 and file of the weights and, as the
    segmentation model's record gives its architecture, the configuration that rebuilds the
    model (``vae``, ``unet`` and ``scheduler``; the ``format`` of a weights file's JSON).

    The configuration of a weights file is the JSON beside it (``NAME.json``), recorded as
    ``config_file`` with its sha256 (``config_sha256``): the weights hash alone does not cover
    it. A ``save_pretrained`` folder's configurations are files of the folder, so its
    ``weights_sha256`` (of the whole folder) covers them; ``config_files`` names them. Read
    without torch; a configuration that cannot be read is left out (``config`` empty), as the
    model was loaded from it moments before."""
    path = Path(weights)
    config: dict[str, Any] = {}
    with contextlib.suppress(OSError, ValueError):
        if path.is_dir():
            parts = {part: json.loads((path / rel).read_text()) for part, rel in
                     PRETRAINED_CONFIGS.items() if (path / rel).is_file()}
            config = {part: _public(doc) for part, doc in parts.items()}
            config["config_files"] = [PRETRAINED_CONFIGS[part] for part in parts]
        else:
            side = path.with_suffix(".json")
            doc = json.loads(side.read_text())
            config = {key: doc[key] for key in ("format", "vae", "unet", "scheduler")
                      if key in doc}
            config.update(config_file=side.name, config_sha256=file_sha256(side))
    return ModelRecord(name, file_sha256(path), path.name, config)


def _public(config: Any) -> Any:
    """A diffusers configuration without its private bookkeeping keys (``_class_name``, …)."""
    if not isinstance(config, dict):
        return config
    return {k: v for k, v in config.items() if not str(k).startswith("_")}


def check_method(method: str) -> str:
    """``method`` if it is a known restoration method, else a ValueError listing them."""
    if method not in RESTORATION_METHODS:
        raise ValueError(f"restoration method {method!r} is not one of "
                         f"{sorted(RESTORATION_METHODS)}")
    return method


@lru_cache(maxsize=4)
def _cached_model(path: str, mtime_ns: int) -> DiffGF:
    from producer.restoration.diffgf import load_diffgf

    return load_diffgf(Path(path))


def resolve_model(weights: Path | str | DiffGF | None) -> DiffGF:
    """A loaded DiffGF model from a model, a file or a ``save_pretrained`` directory."""
    from producer.restoration.diffgf import DiffGF

    if isinstance(weights, DiffGF):
        return weights
    if weights is None:
        raise MissingWeightsError()
    path = Path(weights)
    if not path.exists():
        raise MissingWeightsError(path)
    return _cached_model(str(path.resolve()), path.stat().st_mtime_ns)


def known_pixels(rgb: NDArray[np.uint8], gaps: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Pixels that hold data: not a gap and non-zero in some band."""
    return ~gaps & np.any(rgb != 0, axis=2)


def restore(
    rgb: NDArray[np.uint8],
    gap_mask: NDArray[np.bool_],
    method: str = "DiffGF",
    weights: Path | str | DiffGF | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    steps: int | None = None,
    device: torch.device | str | None = None,
) -> NDArray[np.uint8]:
    """Fill the ``gap_mask`` pixels of an HWC uint8 RGB image; every other pixel is unchanged.

    ``device``: where DiffGF runs (the model is moved there; default: where it is)."""
    check_method(method)
    if rgb.ndim != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 image, got {rgb.dtype} {rgb.shape}")
    if gap_mask.shape != rgb.shape[:2]:
        raise ValueError(f"gap mask {gap_mask.shape} and image {rgb.shape[:2]} differ in size")
    gaps = gap_mask.astype(bool)
    known = known_pixels(rgb, gaps)
    if method == "FillNodata":
        out = restore_fillnodata(rgb, gaps, known)
        if progress is not None:
            progress(1, 1)
        return out
    from producer.restoration.diffgf import restore_array

    model = resolve_model(weights)
    kwargs = {} if steps is None else {"steps": steps}
    return restore_array(model, rgb, gaps, known, seed=seed, progress=progress, device=device,
                         **kwargs)


class _BlockRows:
    """Writes finished rows of a scene to a raster in whole rows of its blocks (a band of
    DiffGF tiles ends anywhere; re-writing a compressed block would grow the file)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self.block = max(1, dataset.block_shapes[0][0])
        self.first = 0
        self.pending: list[NDArray[np.uint8]] = []

    def __call__(self, r0: int, rows: NDArray[np.uint8]) -> None:
        """Take rows ``r0 ...`` (HWC); write those that complete whole block rows."""
        self.pending.append(rows)
        end = r0 + len(rows)
        ready = end - (end % self.block) if end < self.dataset.height else end
        if ready > self.first:
            self._write(ready)

    def _write(self, end: int) -> None:
        stacked = np.concatenate(self.pending)
        n = end - self.first
        window = Window(0, self.first, self.dataset.width, n)
        self.dataset.write(np.moveaxis(stacked[:n], -1, 0), window=window)
        self.pending = [stacked[n:]] if n < len(stacked) else []
        self.first = end


def restore_scene_file(
    src: Path,
    dst: Path,
    method: str,
    weights: Path | str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    footprint: NDArray[np.bool_] | None = None,
    *,
    gaps: NDArray[np.bool_] | None = None,
    device: torch.device | str | None = None,
    steps: int | None = None,
) -> RestorationResult:
    """Restore the SLC-off gaps of a 3-band UInt8 GeoTIFF into ``dst`` (same georeferencing).

    ``gaps`` as given (the producer passes the gaps of its scene masks, within the ROI), else
    detected inside the footprint (given, or the filled hull of the non-zero pixels) by
    ``detect_gaps``. DiffGF runs on ``device`` (default: the CPU) and writes ``dst`` by bands
    of tiles, so no float copy of the scene is held. ``dst`` is written atomically.
    """
    check_method(method)
    model = resolve_model(weights) if method == "DiffGF" else None  # fail before reading
    with rasterio.open(src) as ds:
        if ds.count != 3 or ds.dtypes[0] != "uint8":
            raise ValueError(f"{src}: expected 3 UInt8 bands, found {ds.count} {ds.dtypes[0]}")
        profile = ds.profile
        rgb = np.moveaxis(ds.read(), 0, -1)
    if gaps is None:
        gaps = detect_gaps(rgb, footprint if footprint is not None else footprint_of(rgb))
    elif gaps.shape != rgb.shape[:2]:
        raise ValueError(f"{src}: gap mask {gaps.shape} and image {rgb.shape[:2]} differ in size")
    known = known_pixels(rgb, gaps)
    where = "cpu" if model is None else str(_device(device))
    tiles = None
    with atomic_path(Path(dst)) as tmp, rasterio.open(tmp, "w", **profile) as dst_ds:
        if model is None:
            dst_ds.write(np.moveaxis(restore(rgb, gaps, method, progress=progress), -1, 0))
        else:
            tiles = _restore_diffgf_file(model, rgb, gaps, known, dst_ds, seed, steps, where,
                                         progress)
    wpath = None if model is None or weights is None else Path(weights)
    return RestorationResult(
        method=method,
        gap_pixels=int(gaps.sum()),
        gap_fraction=float(gaps.sum() / max(1, (gaps | known).sum())),
        weights=str(wpath) if wpath else None,
        weights_sha256=file_sha256(wpath) if wpath else None,
        seed=seed,
        device=where,
        settings=method_settings(method, seed, steps, where),
        tiles=tiles,
    )


def _device(device: torch.device | str | None) -> torch.device:
    """The torch device DiffGF runs on: as given (``"auto"``: CUDA when present), else CPU."""
    from producer.segmentation.inference import resolve_device

    return resolve_device("cpu" if device is None else device)


def _restore_diffgf_file(model: DiffGF, rgb: NDArray[np.uint8], gaps: NDArray[np.bool_],
                         known: NDArray[np.bool_], dst_ds: Any, seed: int, steps: int | None,
                         device: str, progress: Progress | None) -> int:
    """DiffGF into an open raster, by bands of tiles; the number of tiles diffused."""
    from producer.restoration.diffgf import DEFAULT_STEPS, SamplingSettings, restore_bands

    settings = SamplingSettings(seed=seed, steps=DEFAULT_STEPS if steps is None else steps)
    return restore_bands(model, rgb, gaps, known, _BlockRows(dst_ds), settings, progress,
                         device)
