"""DiffGF: latent-diffusion gap filling of a single Landsat 7 SLC-off image (paper 2.2).

Stage 1 (this module): a diffusion model restores the missing regions from the SLC-off image
alone, in the latent space of a small variational autoencoder. The layout follows the Stable
Diffusion inpainting convention (see /work/shared/reference/README.md): the denoising UNet sees
``cat([noisy_latent, mask_latent, masked_image_latent])`` (4 + 1 + 4 = 9 channels), where the
mask is brought to latent size by max-pooling (nearest interpolation would drop 1-14 px gaps)
and the masked image (gaps set to 0) is encoded with the same autoencoder. DDIM (eta = 0)
samples the latent from seeded noise, so a seed gives one deterministic result; the latent is
decoded to pixels.

Stage 2 (``harmonize.py``): mask-guided harmonization in pixel space keeps every known pixel
exactly and removes the seams between generated and known regions.

Whole scenes are processed in overlapping 256-pixel tiles blended with feathered weights, band
of tile rows by band (``restore_bands``: float sums of about one band, finished rows written
out), on the model's device (``sample`` moves each batch there; a tile's initial noise is drawn
on the CPU from the seed and the tile's index, so it is the same on every device).

The networks are built from a configuration only (``AutoencoderKL``, ``UNet2DModel``,
``DDIMScheduler`` from diffusers); weights are read from local files only, never downloaded: a
directory written by :func:`save_diffgf` with ``layout="pretrained"`` (``vae/``, ``unet/``,
``scheduler/`` in diffusers' ``save_pretrained`` format) or one safetensors file with a JSON of
the configurations beside it (``NAME.safetensors`` + ``NAME.json``).

Either layout is several files written one after the other, so the JSON (written last) records
the sha256 of the weights it goes with (the folder layout also says while it is being written),
and loading refuses a set mixed by an interrupted save instead of running it.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDIMScheduler, UNet2DModel
from numpy.typing import NDArray
from safetensors.torch import load_file, save_file

from producer.provenance import file_sha256
from producer.writer import atomic_path

#: The demo-sized networks (about 1 M parameters in the VAE, 4.6 M in the UNet).
VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 3,
    "up_block_types": ["UpDecoderBlock2D"] * 3,
    "block_out_channels": [32, 64, 64],
    "layers_per_block": 1,
    "latent_channels": 4,
    "norm_num_groups": 16,
    "sample_size": 256,
    "scaling_factor": 1.0,
}
UNET_CONFIG: dict[str, Any] = {
    "sample_size": 64,
    "in_channels": 9,
    "out_channels": 4,
    "block_out_channels": [64, 128, 128],
    "layers_per_block": 1,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "norm_num_groups": 16,
    "attention_head_dim": 32,
}
SCHEDULER_CONFIG: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}

#: The subfolders of the ``save_pretrained`` layout.
PRETRAINED_PARTS = ("vae", "unet", "scheduler")
TILE = 256
OVERLAP = 64
DEFAULT_STEPS = 20
FORMAT = "icedamage-diffgf/1"


class DiffGFWeightsError(ValueError):
    """A DiffGF weights file or directory that cannot be read as one."""


@dataclass
class DiffGF:
    """The stage-1 networks: autoencoder, mask-conditioned UNet and DDIM scheduler."""

    vae: AutoencoderKL
    unet: UNet2DModel
    scheduler: DDIMScheduler
    meta: dict[str, Any]

    def to(self, device: torch.device | str) -> DiffGF:
        """Move both networks to ``device`` (in place); returns the model for chaining."""
        self.vae.to(device)
        self.unet.to(device)
        return self

    @property
    def factor(self) -> int:
        """Pixels per latent cell along each axis."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def multiple(self) -> int:
        """Tile sizes must be multiples of this (VAE and UNet downsampling)."""
        return self.factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def eval(self) -> DiffGF:
        """Switch both networks to inference mode."""
        self.vae.eval()
        self.unet.eval()
        return self

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Both networks' tensors, keys prefixed ``vae.`` / ``unet.``."""
        out = {f"vae.{k}": v for k, v in self.vae.state_dict().items()}
        out.update({f"unet.{k}": v for k, v in self.unet.state_dict().items()})
        return out

    def configs(self) -> dict[str, Any]:
        """The three configurations that rebuild the model."""
        return {
            "vae": _plain_config(self.vae.config),
            "unet": _plain_config(self.unet.config),
            "scheduler": _plain_config(self.scheduler.config),
        }


def _plain_config(config: Any) -> dict[str, Any]:
    """A JSON-safe copy of a diffusers config without its private bookkeeping keys."""
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def build_diffgf(
    vae: dict[str, Any] | None = None,
    unet: dict[str, Any] | None = None,
    scheduler: dict[str, Any] | None = None,
    seed: int = 0,
) -> DiffGF:
    """Randomly initialised DiffGF networks from configs (defaults: the demo sizes)."""
    torch.manual_seed(seed)
    return DiffGF(
        AutoencoderKL(**(vae or VAE_CONFIG)),
        UNet2DModel(**(unet or UNET_CONFIG)),
        DDIMScheduler(**(scheduler or SCHEDULER_CONFIG)),
        meta={},
    )


def save_diffgf(
    model: DiffGF,
    path: Path,
    meta: dict[str, Any] | None = None,
    layout: str = "file",
    half: bool = False,
) -> Path:
    """Write the model: ``layout="file"`` → ``path`` (.safetensors) + ``path.with_suffix('.json')``;
    ``layout="pretrained"`` → ``path/`` with diffusers ``save_pretrained`` subfolders.

    ``half`` stores float tensors as float16 (half the size; loading casts back to float32).
    """
    meta = {**model.meta, **(meta or {})}
    if layout == "pretrained":
        return _save_pretrained(model, path, meta)
    if layout != "file":
        raise ValueError(f"layout must be 'file' or 'pretrained', got {layout!r}")
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a DiffGF weights file must end in .safetensors")
    tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if half:
        tensors = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT})
    doc = {"format": FORMAT, **model.configs(), "meta": meta, "weights_sha256": file_sha256(path)}
    with atomic_path(path.with_suffix(".json")) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2, sort_keys=True))
    return path


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write a JSON document atomically."""
    with atomic_path(path) as tmp:
        Path(tmp).write_text(json.dumps(doc, indent=2, sort_keys=True))


def _save_pretrained(model: DiffGF, path: Path, meta: dict[str, Any]) -> Path:
    """Write the ``save_pretrained`` layout into ``path`` (in place, over an earlier save).

    The subfolders are written one after the other, so ``diffgf.json`` first says the folder
    is being written and, last, records the sha256 of each subfolder: a save interrupted half
    way (a new ``vae/`` beside an old ``unet/``) is refused by ``load_diffgf``.
    """
    path.mkdir(parents=True, exist_ok=True)
    _write_json(path / "diffgf.json", {"format": FORMAT, "meta": meta, "complete": False})
    model.vae.save_pretrained(path / "vae")
    model.unet.save_pretrained(path / "unet")
    model.scheduler.save_pretrained(path / "scheduler")
    _write_json(path / "diffgf.json", {"format": FORMAT, "meta": meta, "complete": True,
                                       "sha256": _part_digests(path)})
    return path


def _part_digests(path: Path) -> dict[str, str]:
    """sha256 of each subfolder of the ``save_pretrained`` layout (names and bytes)."""
    return {part: file_sha256(path / part) for part in PRETRAINED_PARTS}


def load_diffgf(path: Path) -> DiffGF:
    """Read a DiffGF model from local files only (never downloads)."""
    path = Path(path)
    if path.is_dir():
        return _load_pretrained_dir(path)
    if not path.is_file():
        raise FileNotFoundError(f"DiffGF weights {path} do not exist")
    cfg_path = path.with_suffix(".json")
    if not cfg_path.is_file():
        raise DiffGFWeightsError(f"{path}: the configuration {cfg_path.name} is missing beside it")
    doc = json.loads(cfg_path.read_text())
    if doc.get("format") != FORMAT:
        raise DiffGFWeightsError(f"{cfg_path}: field 'format' is {doc.get('format')!r}, "
                                 f"expected {FORMAT!r}")
    recorded = doc.get("weights_sha256")
    if recorded is not None and recorded != file_sha256(path):
        raise DiffGFWeightsError(f"{path} is not the weights file {cfg_path.name} was written "
                                 "with (sha256 differs): one of the two is left from an "
                                 "interrupted save; save the model again")
    model = build_diffgf(doc["vae"], doc["unet"], doc["scheduler"])
    tensors = load_file(str(path))
    for prefix, net in (("vae.", model.vae), ("unet.", model.unet)):
        part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            net.load_state_dict(part, strict=True)
        except RuntimeError as exc:
            raise DiffGFWeightsError(f"{path}: tensors do not fit the {prefix[:-1]} "
                                     f"configuration in {cfg_path.name}: {exc}") from exc
    model.meta = doc.get("meta", {})
    return model.eval()


def _load_pretrained_dir(path: Path) -> DiffGF:
    """Read the ``save_pretrained`` layout (``vae/``, ``unet/``, ``scheduler/``)."""
    missing = [p for p in PRETRAINED_PARTS if not (path / p).is_dir()]
    if missing:
        raise DiffGFWeightsError(f"{path}: DiffGF directory lacks subfolder(s) {missing}")
    _check_pretrained_set(path)
    vae = AutoencoderKL.from_pretrained(path / "vae", local_files_only=True,
                                        low_cpu_mem_usage=False)
    unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True,
                                       low_cpu_mem_usage=False)
    sched = DDIMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
    meta_file = path / "diffgf.json"
    meta = json.loads(meta_file.read_text()).get("meta", {}) if meta_file.is_file() else {}
    return DiffGF(vae, unet, sched, meta).eval()


def _check_pretrained_set(path: Path) -> None:
    """Refuse a ``save_pretrained`` folder whose subfolders are not one save's: its
    ``diffgf.json`` says the save did not finish, or records other digests than the subfolders
    have. A folder without ``diffgf.json`` (written by other tools) is not checked."""
    meta_file = path / "diffgf.json"
    if not meta_file.is_file():
        return
    doc = json.loads(meta_file.read_text())
    if doc.get("complete") is False:
        raise DiffGFWeightsError(f"{path}: the save into this folder was interrupted (its "
                                 f"{meta_file.name} says so), so {', '.join(PRETRAINED_PARTS)} may "
                                 "come from different saves; save the model again")
    recorded = doc.get("sha256")
    if isinstance(recorded, dict):
        differ = [f"{part}/" for part, digest in _part_digests(path).items()
                  if recorded.get(part) != digest]
        if differ:
            raise DiffGFWeightsError(f"{path}: {', '.join(differ)} differ from what "
                                     f"{meta_file.name} records (left from another or an "
                                     "interrupted save); save the model again")


# --------------------------------------------------------------------------------------------
# Stage 1: conditioning and sampling
# --------------------------------------------------------------------------------------------


def to_model_range(rgb: NDArray[np.uint8]) -> torch.Tensor:
    """HWC or NHWC uint8 → NCHW float in [-1, 1]."""
    arr = torch.from_numpy(np.ascontiguousarray(rgb)).float() / 127.5 - 1.0
    if arr.ndim == 3:
        arr = arr[None]
    return arr.permute(0, 3, 1, 2).contiguous()


def from_model_range(x: torch.Tensor) -> NDArray[np.float32]:
    """NCHW float in [-1, 1] → NHWC float32 in [0, 255] (not rounded)."""
    out = ((x.clamp(-1, 1) + 1.0) * 127.5).permute(0, 2, 3, 1)
    return out.detach().cpu().numpy().astype(np.float32)


def conditioning(
    model: DiffGF, image: torch.Tensor, unknown: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask latent, masked-image latent) for images in [-1, 1] and masks (1 = to fill).

    The mask is max-pooled to latent size so a latent cell touching any gap pixel is marked.
    """
    f = model.factor
    mask_latent = F.max_pool2d(unknown, kernel_size=f, stride=f)
    masked = image * (1.0 - unknown)
    latent = model.vae.encode(masked).latent_dist.mode() * model.vae.config.scaling_factor
    return mask_latent, latent


def tile_noise(shape: tuple[int, ...], seed: int, tile_index: int) -> torch.Tensor:
    """The initial noise of one tile: depends on the seed and the tile only, not on batching.

    Drawn by a CPU generator whatever device the model runs on (``sample`` moves it there), so
    a seed gives the same starting noise on every device; the results of different devices
    still differ by float rounding (their kernels differ), at most a grey level or so."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + tile_index) % (2**63))
    return torch.randn(shape, generator=gen)


def model_device(model: DiffGF) -> torch.device:
    """The device the model's networks are on (their first parameter's)."""
    return next(model.unet.parameters()).device


@torch.inference_mode()
def sample(
    model: DiffGF,
    image: torch.Tensor,
    unknown: torch.Tensor,
    noise: torch.Tensor,
    steps: int = DEFAULT_STEPS,
) -> torch.Tensor:
    """DDIM (eta = 0) inpainting of a batch: images in [-1, 1], masks (1 = fill) → images.

    The batch is moved to the model's device; the result stays there."""
    device = model_device(model)
    image, unknown, noise = image.to(device), unknown.to(device), noise.to(device)
    mask_latent, cond = conditioning(model, image, unknown)
    sched = DDIMScheduler.from_config(model.scheduler.config)
    sched.set_timesteps(steps)
    z = noise.to(cond.dtype) * sched.init_noise_sigma
    for t in sched.timesteps:
        eps = model.unet(torch.cat([z, mask_latent, cond], dim=1), t).sample
        z = sched.step(eps, t, z, eta=0.0).prev_sample
    return model.vae.decode(z / model.vae.config.scaling_factor).sample


# --------------------------------------------------------------------------------------------
# Whole scenes: overlapping tiles
# --------------------------------------------------------------------------------------------


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts along one axis: 0, tile - overlap, ..., and one flush with the far edge."""
    if length <= tile:
        return [0]
    stride = tile - overlap
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def feather(tile: int, overlap: int) -> NDArray[np.float32]:
    """2-D blending weights: 1 in the middle, ramping linearly down across the overlap."""
    ramp = np.minimum(np.arange(tile) + 1, tile - np.arange(tile)).astype(np.float32)
    ramp = np.clip(ramp / max(overlap / 2.0, 1.0), 1e-3, 1.0)
    return np.outer(ramp, ramp)


def _windows(shape: tuple[int, int], tile: int, overlap: int) -> Iterator[tuple[int, int]]:
    """Window starts (row, column) covering ``shape``, in row-major order (the tile index)."""
    for r in tile_starts(shape[0], tile, overlap):
        for c in tile_starts(shape[1], tile, overlap):
            yield r, c


def _tile_batches(todo: list[tuple[int, tuple[int, int]]], batch: int
                  ) -> Iterator[list[tuple[int, tuple[int, int]]]]:
    """``todo`` (tile index, window start) in chunks of at most ``batch``."""
    for start in range(0, len(todo), batch):
        yield todo[start:start + batch]


def _band_accumulators(rows: int, width: int) -> tuple[NDArray[np.float32],
                                                       NDArray[np.float32]]:
    """The blending sums of one band of tile rows: weighted values (rows, width, 3) and weights
    (rows, width), float32 (16 B a pixel of the band; the scene is never held in float)."""
    return np.zeros((rows, width, 3), np.float32), np.zeros((rows, width), np.float32)


@dataclass(frozen=True)
class SamplingSettings:
    """How a scene is cut into diffusion tiles and sampled (recorded in the provenance)."""

    seed: int = 0
    steps: int = DEFAULT_STEPS
    tile: int = TILE
    overlap: int = OVERLAP
    batch: int = 4
    """Tiles per forward call: changes speed, and the result by float rounding at most (batched
    kernels may sum in another order; a grey level at a rare pixel)."""


RowSink = Callable[[int, NDArray[np.uint8]], None]
"""Receives finished rows of the restored scene: (first row, rows HWC uint8), in row order."""


def restore_bands(
    model: DiffGF,
    rgb: NDArray[np.uint8],
    gaps: NDArray[np.bool_],
    known: NDArray[np.bool_],
    write: RowSink,
    settings: SamplingSettings = SamplingSettings(),
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str | None = None,
) -> int:
    """DiffGF (both stages) on a whole HWC scene, written out row band by row band; returns
    the number of tiles diffused.

    Tiles are diffused in row-major order, ``settings.batch`` at a time (the batches of a
    whole-scene run, so the same floats). Rows above the next tile's first row get no more
    contributions: they are blended, go to ``write`` (at most ``tile`` rows a call) and their
    float32 sums are dropped (``_RollingSums``), so the sums cover about one band of tile rows
    (more only when a batch spans several bands), never the scene. The result is the
    whole-scene blend's up to float32 rounding of the sums. Only ``gaps`` pixels change.
    ``device`` moves the model there first (default: where it is).
    """
    from producer.restoration.harmonize import harmonize_float

    tile, overlap = settings.tile, settings.overlap
    if tile % model.multiple:
        raise ValueError(f"tile {tile} must be a multiple of {model.multiple}")
    if device is not None:
        model.to(device)
    h, w = gaps.shape
    weight = feather(tile, overlap)
    todo = [(i, rc) for i, rc in enumerate(_windows((h, w), tile, overlap))
            if gaps[rc[0]:rc[0] + tile, rc[1]:rc[1] + tile].any()]
    latent_shape = (model.unet.config.out_channels, tile // model.factor, tile // model.factor)
    sums = _RollingSums(w)
    done = 0
    for chunk in _tile_batches(todo, settings.batch):
        gen = _generate(model, rgb, known, chunk, tile, latent_shape, settings)
        for j, (_, (r, c)) in enumerate(chunk):
            th, tw = min(tile, h - r), min(tile, w - c)
            sl = np.s_[r:r + th, c:c + tw]
            sums.add(r, c, harmonize_float(gen[j, :th, :tw], rgb[sl], gaps[sl], known[sl]),
                     weight[:th, :tw])
        done += len(chunk)
        if progress is not None:
            progress(done, len(todo))
        _write_finished(sums, todo[done][1][0] if done < len(todo) else h, rgb, gaps, write,
                        tile)
    _write_finished(sums, h, rgb, gaps, write, tile)
    return len(todo)


class _RollingSums:
    """Blending sums (weighted values, weights) of the rows from ``first`` on that are not yet
    written: grown when a tile reaches below them, cut when rows are finished."""

    def __init__(self, width: int) -> None:
        self.first = 0
        self.acc, self.wsum = _band_accumulators(0, width)

    def _cover(self, rows: int) -> None:
        """Make the sums hold at least ``rows`` rows from ``first`` (new rows are zeros)."""
        if rows <= len(self.wsum):
            return
        acc, wsum = _band_accumulators(rows, self.wsum.shape[1])
        acc[:len(self.wsum)], wsum[:len(self.wsum)] = self.acc, self.wsum
        self.acc, self.wsum = acc, wsum

    def add(self, r: int, c: int, values: NDArray[np.floating],
            weight: NDArray[np.float32]) -> None:
        """Add one tile's values (rows ``r ...``, columns ``c ...``) with its weights."""
        th, tw = weight.shape
        self._cover(r + th - self.first)
        rows, cols = slice(r - self.first, r + th - self.first), slice(c, c + tw)
        self.acc[rows, cols] += values * weight[..., None]
        self.wsum[rows, cols] += weight

    def pop(self, end: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
        """The sums of rows ``first`` to ``end``, dropped from here."""
        n = end - self.first
        self._cover(n)
        out = self.acc[:n], self.wsum[:n]
        self.acc, self.wsum = self.acc[n:], self.wsum[n:]
        self.first = end
        return out


def _write_finished(sums: _RollingSums, end: int, rgb: NDArray[np.uint8],
                    gaps: NDArray[np.bool_], write: RowSink, most: int) -> None:
    """Blend and write the rows from ``sums.first`` to ``end``, at most ``most`` at a time
    (a long stretch without gaps is copied a bit at a time, not at once)."""
    while sums.first < end:
        r0 = sums.first
        r1 = min(end, r0 + most)
        acc, wsum = sums.pop(r1)
        write(r0, _finished_rows(rgb[r0:r1], gaps[r0:r1], acc, wsum))


def _generate(model: DiffGF, rgb: NDArray[np.uint8], known: NDArray[np.bool_],
              chunk: list[tuple[int, tuple[int, int]]], tile: int,
              latent_shape: tuple[int, int, int], settings: SamplingSettings
              ) -> NDArray[np.float32]:
    """Stage 1 on a batch of tiles: (tiles, tile, tile, 3) float pixels; only the known pixels
    condition it, tiles sticking out of the scene are padded as unknown."""
    imgs = np.zeros((len(chunk), tile, tile, 3), np.uint8)
    unk = np.ones((len(chunk), 1, tile, tile), np.float32)
    for j, (_, (r, c)) in enumerate(chunk):
        kn = known[r:r + tile, c:c + tile]
        imgs[j, :kn.shape[0], :kn.shape[1]] = np.where(kn[..., None],
                                                       rgb[r:r + tile, c:c + tile], 0)
        unk[j, 0, :kn.shape[0], :kn.shape[1]] = ~kn
    noise = torch.stack([tile_noise(latent_shape, settings.seed, i) for i, _ in chunk])
    return from_model_range(sample(model, to_model_range(imgs), torch.from_numpy(unk), noise,
                                   settings.steps))


def _finished_rows(rgb: NDArray[np.uint8], gaps: NDArray[np.bool_], acc: NDArray[np.float32],
                   wsum: NDArray[np.float32]) -> NDArray[np.uint8]:
    """Rows of the result: the input, with the blended value at each gap pixel a tile covered."""
    out = rgb.copy()
    filled = gaps & (wsum > 0)
    out[filled] = np.clip(np.rint(acc[filled] / wsum[filled][:, None]), 0, 255).astype(np.uint8)
    return out


def restore_array(
    model: DiffGF,
    rgb: NDArray[np.uint8],
    gaps: NDArray[np.bool_],
    known: NDArray[np.bool_],
    *,
    seed: int = 0,
    steps: int = DEFAULT_STEPS,
    tile: int = TILE,
    overlap: int = OVERLAP,
    batch: int = 4,
    progress: Callable[[int, int], None] | None = None,
    device: torch.device | str | None = None,
) -> NDArray[np.uint8]:
    """DiffGF (both stages) on a whole HWC scene; only ``gaps`` pixels change.

    ``known`` marks the pixels that hold data (used as conditioning and as harmonization
    boundary); other non-gap pixels (outside the footprint) stay as they are and are treated as
    unknown by the model. Processed by bands of tiles (``restore_bands``): besides the result,
    memory holds one band's float sums. ``device``: where the model runs (it is moved there).
    """
    out = np.empty_like(rgb)

    def write(r0: int, rows: NDArray[np.uint8]) -> None:
        out[r0:r0 + len(rows)] = rows

    restore_bands(model, rgb, gaps, known, write,
                  SamplingSettings(seed=seed, steps=steps, tile=tile, overlap=overlap, batch=batch),
                  progress, device)
    return out
