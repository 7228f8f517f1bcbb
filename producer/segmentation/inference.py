"""Whole-scene damage inference: the authors' sliding-window algorithm, reproduced exactly.

The algorithm (../shared/reference/README.md): 512 × 512 windows starting at 0 with stride 256
and a last window flush with the far edge; an axis shorter than a window is zero-padded centred
(the authors' ``pad_to_roi``: ``dh // 2`` before, the rest after) and cropped back; input is
RGB uint8 / 255; each window's softmax probabilities are averaged over four mirror views (identity,
left-right, up-down, both; each flipped back), weighted by a Gaussian importance map (sigma =
window / 8, normalised to max 1, floored at 1e-3), accumulated with the weights, divided by the
summed weights, and the argmax is the class.

Two implementations share ``window_starts`` and ``gaussian_importance``:

* ``predict_array_reference`` — straightforward: whole scene in memory, one window and one view
  per forward call, as the authors do. It is the yardstick of the equivalence tests and benchmark.
* ``predict_scene`` / ``predict_array`` — production: windows are read from disk band by band, only
  a strip of accumulators one window high is kept, finished rows are written out at once; windows
  *and* views go through the model in batches under ``torch.inference_mode``; windows whose pixels
  are all 0 (no data) are skipped; the decode head runs algebraically fused (``FusedDecodeHead``)
  and CUDA + autocast are used when present. Valid pixels get the same result as the reference
  (probabilities within float rounding); pixels covered only by empty windows get class 0.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import torch
from rasterio.windows import Window
from torch import nn

from producer.segmentation import split_tf32 as tf32
from producer.segmentation.model import DamageSegmenter
from producer.spec import ENCODING, PROBABILITY_RASTER, SEGMENTATION_WINDOW
from producer.writer import atomic_path

WINDOW = SEGMENTATION_WINDOW
STRIDE = 256
SIGMA_SCALE = 1.0 / 8.0
WEIGHT_FLOOR = 1e-3
#: Flip dimensions of the four test-time views on (N, C, H, W): identity, left-right, up-down, both.
TTA_FLIPS: tuple[tuple[int, ...], ...] = ((), (-1,), (-2,), (-2, -1))
#: Probability raster: 0–100 percent of the damage class, 255 where the scene has no data.
PROBABILITY_NODATA = PROBABILITY_RASTER.nodata
#: Finished row bands queued for the writer thread at most (each holds a pinned host buffer
#: on a GPU): when LZW falls behind, the GPU waits rather than memory growing.
MAX_ROWS_QUEUED = 8
#: Images per decode-head call inside a batch; caps the (images, D, H/4, W/4) float maps.
DECODER_CHUNK = 2

Progress = Callable[[int, int], None]
"""Called as ``progress(windows_done, windows_total)`` after each batch of windows."""


# ------------------------------------------------------------------------------------------------
# Shared pieces of the algorithm
# ------------------------------------------------------------------------------------------------


def window_starts(length: int, window: int = WINDOW, stride: int = STRIDE) -> list[int]:
    """Start offsets along one axis: 0, stride, 2·stride, … and a last one flush with the edge.

    ``length`` is the (padded) axis length, at least ``window``.
    """
    if length < window:
        raise ValueError(f"axis of {length} px is shorter than the {window} px window; pad first")
    starts = list(range(0, length - window + 1, stride))
    if starts[-1] + window < length:
        starts.append(length - window)
    return starts


def centred_padding(length: int, window: int = WINDOW) -> int:
    """Zeros before an axis shorter than ``window``: the authors' ``pad_to_roi`` centres a
    short axis in the window (``dh // 2`` before, the rest after) and crops it back; an axis
    of at least a window is not padded."""
    return max(window - length, 0) // 2


def gaussian_importance(window: int = WINDOW) -> np.ndarray:
    """The (window, window) float32 Gaussian weight map: sigma = window/8, max 1, floor 1e-3.

    Centred at (window - 1) / 2 so the map is symmetric under the TTA flips.
    """
    centre = (window - 1) / 2.0
    sigma = window * SIGMA_SCALE
    axis = np.exp(-((np.arange(window) - centre) ** 2) / (2.0 * sigma**2))
    weights = np.outer(axis, axis)
    weights /= weights.max()
    return np.maximum(weights, WEIGHT_FLOOR).astype(np.float32)


def as_band_first(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 array as (3, H, W); accepts (3, H, W) (rasterio) or (H, W, 3) (images)."""
    array = np.asarray(rgb)
    if array.ndim != 3 or 3 not in (array.shape[0], array.shape[-1]):
        raise ValueError(f"expected an RGB array (3, H, W) or (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"expected RGB uint8 (reflectance × 255), got dtype {array.dtype}")
    return array if array.shape[0] == 3 else np.ascontiguousarray(array.transpose(2, 0, 1))


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; anything else as torch understands it."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass
class ArrayPrediction:
    """Class map (H, W) uint8 and per-class probabilities (C, H, W) float32 of one scene."""

    labels: np.ndarray
    probabilities: np.ndarray

    @property
    def damage_probability(self) -> np.ndarray:
        """Probability of the damage class (index 1), (H, W) float32."""
        return self.probabilities[1]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        """``np.asarray(prediction)`` is the class map, so callers may treat it as labels."""
        return self.labels if dtype is None else self.labels.astype(dtype)


@dataclass
class SceneStats:
    """What one production run did: windows run and skipped, images through the model, time."""

    height: int
    width: int
    windows_total: int = 0
    windows_run: int = 0
    windows_skipped: int = 0
    images_forwarded: int = 0
    forward_calls: int = 0
    seconds: float = 0.0

    @property
    def megapixels_per_second(self) -> float:
        """Scene pixels (not window pixels) per second, in millions."""
        return self.height * self.width / 1e6 / self.seconds if self.seconds > 0 else 0.0


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block and restore its training flag afterwards."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def _to_unit(tile_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 RGB → float32 in [0, 1]: divide by 255, no mean/std (the authors' normalisation)."""
    return tile_uint8.to(torch.float32) / 255.0


# ------------------------------------------------------------------------------------------------
# Reference implementation (the authors' way)
# ------------------------------------------------------------------------------------------------


def predict_array_reference(model: DamageSegmenter, rgb: np.ndarray, *, tta: bool = True,
                            window: int = WINDOW, stride: int = STRIDE) -> ArrayPrediction:
    """The authors' whole-scene algorithm on an in-memory array, one window and view per call.

    Runs on whatever device ``model`` is on. Deliberately unoptimised: it is what the production
    path is checked and benchmarked against.
    """
    image = as_band_first(rgb)
    _, height, width = image.shape
    padded_h, padded_w = max(height, window), max(width, window)
    top, left = centred_padding(height, window), centred_padding(width, window)
    inside = (slice(top, top + height), slice(left, left + width))
    padded = np.zeros((3, padded_h, padded_w), np.uint8)
    padded[:, inside[0], inside[1]] = image
    weights = gaussian_importance(window)
    num_labels = int(model.config.num_labels)
    accumulated = np.zeros((num_labels, padded_h, padded_w), np.float32)
    weight_sum = np.zeros((padded_h, padded_w), np.float32)
    flips = TTA_FLIPS if tta else ((),)
    device = next(model.parameters()).device
    with _eval_mode(model), torch.no_grad():
        for y in window_starts(padded_h, window, stride):
            for x in window_starts(padded_w, window, stride):
                tile = _to_unit(torch.from_numpy(padded[None, :, y:y + window, x:x + window]))
                tile = tile.to(device)
                summed: torch.Tensor | None = None
                for dims in flips:
                    view = tile.flip(dims) if dims else tile
                    probs = torch.softmax(model(view), dim=1)
                    probs = probs.flip(dims) if dims else probs
                    summed = probs if summed is None else summed + probs
                assert summed is not None
                mean = (summed / len(flips))[0].cpu().numpy()
                accumulated[:, y:y + window, x:x + window] += mean * weights
                weight_sum[y:y + window, x:x + window] += weights
    probabilities = (accumulated / weight_sum)[:, inside[0], inside[1]]
    return ArrayPrediction(np.argmax(probabilities, axis=0).astype(np.uint8), probabilities)


# ------------------------------------------------------------------------------------------------
# Production forward: batched views, fused decode head
# ------------------------------------------------------------------------------------------------


class FusedDecodeHead(nn.Module):
    """SegFormer's all-MLP decode head with its linear layers folded together (eval mode only).

    The head computes, per stage i, ``up(W_c_i x_i + b_c_i)``, concatenates, applies the 1×1
    ``linear_fuse`` (no bias) and an eval-mode BatchNorm, then ReLU and the classifier. Bilinear
    upsampling and 1×1 convolutions are both linear and commute, so fuse ∘ BN ∘ projection is one
    matrix per stage applied at the stage's own (low) resolution before upsampling: the same
    function, with about 25× fewer multiply-adds in the head (the concatenated 4·D → D fuse at
    1/4 resolution dominates MiT-b2's cost). Only rounding differs (~1e-6 in the logits).
    With ``split_tf32`` the per-stage products run as three TF32 products (``split_tf32``).
    """

    def __init__(self, head: nn.Module, *, split_tf32: bool = False) -> None:
        super().__init__()
        projections = head.linear_projections
        fuse = head.linear_fuse.weight.detach().double()[:, :, 0, 0]  # (D, n·D)
        norm = head.batch_norm
        scale = norm.weight.detach().double() / torch.sqrt(norm.running_var.double() + norm.eps)
        stages = len(projections)
        decoder = fuse.shape[0]
        bias = norm.bias.detach().double() - scale * norm.running_mean.double()
        mats = []
        for i, proj in enumerate(projections):
            # concatenation order is reversed: the last stage's features come first
            block = fuse[:, (stages - 1 - i) * decoder:(stages - i) * decoder]
            mats.append((scale[:, None] * (block @ proj.proj.weight.detach().double())).float())
            bias = bias + scale * (block @ proj.proj.bias.detach().double())
        self.stage_weights = nn.ParameterList([nn.Parameter(m, requires_grad=False) for m in mats])
        self.split_tf32 = split_tf32
        if split_tf32:
            highs, lows = zip(*(tf32.split_tf32(m) for m in mats), strict=True)
            self.weights_high = nn.ParameterList(
                [nn.Parameter(t, requires_grad=False) for t in highs])
            self.weights_low = nn.ParameterList(
                [nn.Parameter(t, requires_grad=False) for t in lows])
        self.bias = nn.Parameter(bias.float()[None, :, None, None], requires_grad=False)
        self.classifier = head.classifier

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Logits (N, num_labels, H/4, W/4) from the four (N, C_i, H_i, W_i) stage outputs."""
        size = features[0].shape[-2:]
        hidden: torch.Tensor | None = None
        for i, (feature, weight) in enumerate(zip(features, self.stage_weights, strict=True)):
            if self.split_tf32:
                mapped = tf32.split_tf32_channel_map(self.weights_high[i], self.weights_low[i],
                                                     feature)
            else:
                mapped = torch.einsum("dc,nchw->ndhw", weight.to(feature.dtype), feature)
            if mapped.shape[-2:] != size:
                mapped = nn.functional.interpolate(mapped, size=size, mode="bilinear",
                                                   align_corners=False)
            hidden = mapped if hidden is None else hidden.add_(mapped)
        assert hidden is not None
        hidden = torch.relu_(hidden.add_(self.bias.to(hidden.dtype)))
        return self.classifier(hidden)


class BatchedForward:
    """Mean TTA probabilities of a batch of windows, all views through the model together."""

    def __init__(self, model: DamageSegmenter, device: torch.device, *, tta: bool,
                 batch_size: int, fuse_decoder: bool = True, amp: bool | None = None,
                 compile_mode: str | None = None, split_tf32: bool = False) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be ≥ 1, got {batch_size}")
        if split_tf32 and (amp or not fuse_decoder):
            raise ValueError("split TF32 products are float32 products of the fused decoder: "
                             "they need autocast off and the fused decode head")
        # weakly: a compiled forward is cached per model (``_COMPILED``) and must not keep it alive
        self._model = weakref.ref(model)
        self.device = device
        self.flips = TTA_FLIPS if tta else ((),)
        self.batch_size = batch_size
        self.num_labels = int(model.config.num_labels)
        self.fused = (FusedDecodeHead(model.model.decode_head, split_tf32=split_tf32).to(device)
                      if fuse_decoder else None)
        self.amp = device.type == "cuda" and not split_tf32 if amp is None else amp
        self.split_tf32 = split_tf32
        self.stages = model.model.segformer.stages
        if split_tf32 or compile_mode is not None:  # a private copy: the model stays as it was
            self.stages = copy.deepcopy(self.stages)
        if split_tf32:
            tf32.split_tf32_linears(self.stages)
        self.compiled = None
        if compile_mode is not None:
            self.stages = _without_forward_hooks(self.stages)
            self.compiled = compiled_forward(self._mean_probabilities, compile_mode, device)
        self.images_forwarded = 0
        self.forward_calls = 0

    @property
    def model(self) -> DamageSegmenter:
        """The segmenter this forward runs (alive while its caller holds it)."""
        model = self._model()
        if model is None:
            raise RuntimeError("the model of this forward has been garbage-collected")
        return model

    @property
    def windows_per_call(self) -> int:
        """Windows per forward call: ``batch_size`` images are windows × views."""
        return max(1, self.batch_size // len(self.flips))

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        """Low-resolution logits (N, L, H/4, W/4) in float32."""
        autocast = (torch.autocast(self.device.type, dtype=torch.float16) if self.amp
                    else nullcontext())
        with autocast:
            if self.fused is None:
                logits = self.model.model(pixel_values=pixels).logits
            else:
                features = []
                hidden = pixels
                for stage in self.stages:
                    hidden = stage(hidden)
                    features.append(hidden)
                if self.compiled is not None:  # chunks would fix the (dynamic) batch size
                    logits = self.fused(features)
                else:
                    logits = torch.cat([
                        self.fused([f[i:i + DECODER_CHUNK] for f in features])
                        for i in range(0, pixels.shape[0], DECODER_CHUNK)
                    ])
        return logits.float()

    def __call__(self, tiles: np.ndarray | torch.Tensor) -> torch.Tensor:
        """(k, 3, w, w) uint8 windows → (k, L, w, w) float32 probabilities averaged over views,
        left on the model's device (the accumulation happens there too).

        A compiled forward is compiled once for any number of windows (the batch dimension is
        dynamic); where batches of several windows occur, a lone window is paired with an empty
        one, whose result is dropped, because TorchDynamo specialises size-1 dimensions (a
        second compile).
        """
        if isinstance(tiles, np.ndarray):
            tiles = torch.from_numpy(tiles)
        tiles = tiles.to(self.device, non_blocking=True)
        count = tiles.shape[0]
        self.forward_calls += 1
        if self.compiled is None:
            self.images_forwarded += count * len(self.flips)
            return self._mean_probabilities(tiles)
        if self.windows_per_call > 1:
            if count == 1:
                tiles = torch.cat([tiles, torch.zeros_like(tiles)])
            torch._dynamo.mark_dynamic(tiles, 0)
        self.images_forwarded += tiles.shape[0] * len(self.flips)
        # the previous call's output is consumed: a CUDA graph may reuse its memory
        torch.compiler.cudagraph_mark_step_begin()
        return self.compiled(tiles)[:count]

    def _mean_probabilities(self, tiles: torch.Tensor) -> torch.Tensor:
        """The forward itself: uint8 windows on the device → mean probabilities over views."""
        tile = _to_unit(tiles)
        count, size = tile.shape[0], tile.shape[-2:]
        views = torch.cat([tile.flip(dims) if dims else tile for dims in self.flips])
        logits = self._logits(views)
        probs = torch.softmax(
            nn.functional.interpolate(logits, size=size, mode="bilinear", align_corners=False),
            dim=1,
        )
        summed: torch.Tensor | None = None
        for index, dims in enumerate(self.flips):
            part = probs[index * count:(index + 1) * count]
            part = part.flip(dims) if dims else part
            summed = part if summed is None else summed + part
        assert summed is not None
        return summed / len(self.flips)


def _without_forward_hooks(module: nn.Module) -> nn.Module:
    """``module`` with the forward hooks of all its submodules removed, for compiling.

    transformers installs output-capturing hooks on SegFormer's layers at the model's first
    top-level call; they read a ``ContextVar``, which TorchDynamo cannot trace, so every layer
    would break the graph (and recompile per shape until Dynamo gives up and runs eagerly).
    Only a private copy is stripped: the caller's model keeps its hooks.
    """
    for submodule in module.modules():
        submodule._forward_hooks.clear()
    return module


def check_compile_ready(device: torch.device) -> None:
    """Raise ValueError, saying what is missing, when Inductor cannot compile for ``device``:
    a C++ compiler for the CPU, Triton for CUDA. Checked before any work, not mid-scene."""
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise ValueError("compiling for CUDA needs Triton (the `triton` package that CUDA "
                             "builds of torch ship with); run without --compile")
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as err:  # Inductor raises its own InvalidCxxCompiler
        raise ValueError(f"compiling for the CPU needs a C++ compiler (g++ or clang++ on PATH, "
                         f"or $CXX): {err}; install one or run without --compile") from None


#: ``torch.compile`` modes ``compile_mode`` accepts; "auto" picks per device (``compiled_forward``).
COMPILE_MODES: tuple[str, ...] = ("auto", "default", "reduce-overhead", "max-autotune",
                                  "max-autotune-no-cudagraphs")


def compiled_forward(function: Callable[[torch.Tensor], torch.Tensor], mode: str,
                     device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    """``function`` compiled by TorchInductor (batch sizes marked dynamic by the caller).

    Fusing SegFormer's many small element-wise and normalisation kernels is what an eager
    forward cannot do; on CUDA, "auto" also replays the forward as a CUDA graph
    ("reduce-overhead"), so the host no longer launches every kernel. The first call compiles
    (about a minute for MiT-b0 on a 2-core CPU; Inductor caches on disk, so later processes
    start faster); compiled probabilities stay within float rounding of eager ones.
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; valid: {', '.join(COMPILE_MODES)}")
    check_compile_ready(device)
    if mode == "auto":
        mode = "reduce-overhead" if device.type == "cuda" else "default"
    return torch.compile(function, mode=mode)


# ------------------------------------------------------------------------------------------------
# Streaming core
# ------------------------------------------------------------------------------------------------

ReadRows = Callable[[int, int], np.ndarray]
"""``read_rows(row0, row1)`` → (3, row1 - row0, width) uint8 scene rows."""
EmitRows = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], None]
"""``emit(row0, accumulated (L, n, W), weight_sum (n, W), pixels (3, n, W))``: finished rows
from scene row ``row0`` on, the scene's columns only (padding cut off; rows past the scene's
last may follow), as tensors on the model's device (valid only during the call)."""


def _row_reads(ys: list[int], window: int, height: int) -> list[tuple[int, int] | None]:
    """For each window row, the scene rows it adds to the strip (None: nothing new to read)."""
    reads: list[tuple[int, int] | None] = [(0, min(window, height))]
    for previous, y in zip(ys, ys[1:], strict=False):
        row0, row1 = previous + window, min(y + window, height)
        reads.append((row0, row1) if row1 > row0 else None)
    return reads


def _filled_windows(pixels: np.ndarray, xs: list[int], window: int) -> list[int]:
    """Window starts whose window holds any non-zero pixel (one pass over the strip)."""
    filled = np.cumsum(np.concatenate([[0], pixels.any(axis=(0, 1))]))
    return [x for x in xs if filled[x + window] > filled[x]]


def _stream(forward: BatchedForward, height: int, width: int, read_rows: ReadRows,
            emit: EmitRows, *, skip_empty: bool, window: int, stride: int,
            progress: Progress | None) -> SceneStats:
    """Run the algorithm over a scene held anywhere, keeping one window-high strip in memory.

    The strip holds input rows [top, top + window) (read on the host, by a background thread
    one window row ahead, then copied to the model's device once per window row) and their
    accumulators (on the device, so a GPU never waits for the host to add windows up); when the
    next window row starts at y, rows [top, y) can receive no more windows: they are emitted and
    the strip moves down, reading only the rows it has not read yet.
    """
    started = time.perf_counter()
    padded_h, padded_w = max(height, window), max(width, window)
    # a short axis sits centred in the padded scene; it is then one window, so one strip
    pad_top, cols = centred_padding(height, window), _inside(width, window)
    ys, xs = window_starts(padded_h, window, stride), window_starts(padded_w, window, stride)
    stats = SceneStats(height, width, windows_total=len(ys) * len(xs))
    device = forward.device
    weights = torch.from_numpy(gaussian_importance(window)).to(device)
    accumulated = torch.zeros((forward.num_labels, window, padded_w), device=device)
    weight_sum = torch.zeros((window, padded_w), device=device)
    pixels = np.zeros((3, window, padded_w), np.uint8)
    reads = _row_reads(ys, window, height)
    top = 0
    done = 0
    with ThreadPoolExecutor(1, thread_name_prefix="scene-reader") as reader:
        def fetch(i: int) -> Future[np.ndarray] | None:
            span = reads[i] if i < len(reads) else None
            return reader.submit(read_rows, *span) if span else None

        pending = fetch(0)
        strip = torch.empty(0)
        for i, y in enumerate(ys):
            rows = pending.result() if pending is not None else None
            pending = fetch(i + 1)
            if y > top:
                shift = y - top
                emit(top, accumulated[:, :shift, cols], weight_sum[:shift, cols],
                     strip[:, :shift, cols])
                for tensor in (accumulated, weight_sum):
                    tensor[..., :window - shift, :] = tensor[..., shift:, :].clone()
                    tensor[..., window - shift:, :] = 0
                pixels[:, :window - shift, :] = pixels[:, shift:, :]
                pixels[:, window - shift:, :] = 0
                top = y
            if rows is not None:
                row0 = pad_top + reads[i][0] - y  # type: ignore[index]
                pixels[:, row0:row0 + rows.shape[1], cols] = rows
            strip = _to_device(pixels, device)
            row = _filled_windows(pixels, xs, window) if skip_empty else xs
            stats.windows_skipped += len(xs) - len(row)
            step = forward.windows_per_call
            for j in range(0, len(row), step):
                group = row[j:j + step]
                tiles = torch.stack([strip[:, :, x:x + window] for x in group])
                for x, probs in zip(group, forward(tiles), strict=True):
                    accumulated[:, :, x:x + window] += probs * weights
                    weight_sum[:, x:x + window] += weights
                stats.windows_run += len(group)
                if progress is not None:
                    progress(done + stats.windows_run, stats.windows_total)
            done += len(xs) - len(row)
    last = slice(pad_top, pad_top + height - top)  # the scene's remaining rows
    emit(top, accumulated[:, last, cols], weight_sum[last, cols], strip[:, last, cols])
    if progress is not None:
        progress(stats.windows_total, stats.windows_total)
    stats.images_forwarded = forward.images_forwarded
    stats.forward_calls = forward.forward_calls
    stats.seconds = time.perf_counter() - started
    return stats


def _inside(length: int, window: int) -> slice:
    """Where an axis of ``length`` pixels lies in its padded version (``centred_padding``)."""
    start = centred_padding(length, window)
    return slice(start, start + length)


def _finish(accumulated: torch.Tensor, weight_sum: torch.Tensor) -> torch.Tensor:
    """Accumulated probability × weight divided by the weights; 0 where no window contributed."""
    return torch.where(weight_sum > 0, accumulated / weight_sum, 0.0)


def _classes(probabilities: torch.Tensor) -> torch.Tensor:
    """Argmax over the class axis as uint8, the first class winning ties (as ``np.argmax``).

    A running comparison over the few classes: torch's argmax over a leading axis is ~100×
    slower on the CPU.
    """
    best = probabilities[0]
    labels = torch.zeros(best.shape, dtype=torch.uint8, device=best.device)
    for index in range(1, probabilities.shape[0]):
        labels.masked_fill_(probabilities[index] > best, index)  # never waits for the GPU
        best = torch.maximum(best, probabilities[index])
    return labels


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """``array`` on ``device``; on the CPU it is aliased, not copied.

    To a GPU it goes through pinned memory without waiting: a copy from pageable memory would
    make the host wait for every kernel queued before it, once per window row.
    """
    host = torch.from_numpy(array)
    if device.type != "cuda":
        return host.to(device)
    # the caching host allocator keeps the pinned block until the copy reading it has run
    return host.pin_memory().to(device, non_blocking=True)


HostArray = Callable[[], np.ndarray]
"""Waits for a copy started by ``_to_host`` and returns the host array."""


def _to_host(tensor: torch.Tensor) -> HostArray:
    """Start copying ``tensor`` to host memory; calling the result waits for it.

    From a GPU the copy goes to pinned memory behind a CUDA event, so the host keeps queueing
    windows while the GPU finishes rows and copies them back; whoever writes the rows out
    waits for the event.
    """
    if tensor.device.type != "cuda":
        array = tensor.numpy()
        return lambda: array
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    host.copy_(tensor, non_blocking=True)
    # on the stream of the tensor's own GPU (the copy's), which need not be the current device;
    # a blocking event lets the waiting thread sleep instead of spinning a core
    copied = torch.cuda.Event(blocking=True)
    copied.record(torch.cuda.current_stream(tensor.device))

    def wait() -> np.ndarray:
        copied.synchronize()
        return host.numpy()
    return wait


@contextmanager
def exact_float32(device: torch.device) -> Iterator[None]:
    """On CUDA, run float32 as float32: no TF32 tensor-core rounding (cuDNN allows it by
    default), so results match the CPU within float rounding. Restores the settings after."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


#: The compiled forward last used with each model: compiling takes long, and a fresh
#: ``torch.compile`` per scene would recompile per scene (and fall back to eager after eight).
_COMPILED: weakref.WeakKeyDictionary[DamageSegmenter, tuple[tuple[Any, ...], BatchedForward]] = (
    weakref.WeakKeyDictionary())


def _weights_version(model: nn.Module) -> tuple[int, ...]:
    """In-place modification counters of the parameters and buffers: they change when training
    steps (and BatchNorm statistics) do, so a forward built from older weights (the fused head
    folds them) is never reused."""
    return tuple(tensor._version for tensor in (*model.parameters(), *model.buffers()))


def _batched_forward(model: DamageSegmenter, device: torch.device, *, tta: bool,
                     batch_size: int, fuse_decoder: bool, amp: bool | None,
                     compile_mode: str | None, split_tf32: bool = False) -> BatchedForward:
    """A new ``BatchedForward``, or with ``compile_mode`` the model's compiled one if it was
    built for the same settings and weights (its counters reset)."""
    if compile_mode is None:
        return BatchedForward(model, device, tta=tta, batch_size=batch_size,
                              fuse_decoder=fuse_decoder, amp=amp, split_tf32=split_tf32)
    key = (str(device), tta, batch_size, fuse_decoder, amp, compile_mode, split_tf32,
           _weights_version(model))
    cached = _COMPILED.get(model)
    if cached is not None and cached[0] == key:
        forward = cached[1]
        forward.images_forwarded = forward.forward_calls = 0
        return forward
    forward = BatchedForward(model, device, tta=tta, batch_size=batch_size,
                             fuse_decoder=fuse_decoder, amp=amp, compile_mode=compile_mode,
                             split_tf32=split_tf32)
    _COMPILED[model] = (key, forward)
    return forward


@contextmanager
def _prepared(model: DamageSegmenter, device: str | torch.device, *, tta: bool, batch_size: int,
              fuse_decoder: bool, amp: bool | None, compile_mode: str | None = None,
              split_tf32: bool = False) -> Iterator[BatchedForward]:
    """The model on its device in eval + inference mode, wrapped for batched forwards.

    Without autocast, CUDA runs in exact float32 (``exact_float32``), or with ``split_tf32`` in
    float32 accuracy on the tensor cores (``split_tf32.split_tf32_products``).
    """
    target = resolve_device(device)
    model.to(target)
    # the target GPU is the current one: streams, events and compiled graphs all use it
    on_gpu = torch.cuda.device(target) if target.type == "cuda" else nullcontext()
    with on_gpu, _eval_mode(model), torch.inference_mode():
        forward = _batched_forward(model, target, tta=tta, batch_size=batch_size,
                                   fuse_decoder=fuse_decoder, amp=amp, compile_mode=compile_mode,
                                   split_tf32=split_tf32)
        precision = (nullcontext() if forward.amp else tf32.split_tf32_products(target)
                     if split_tf32 else exact_float32(target))
        with precision:
            yield forward


def predict_array(model: DamageSegmenter, rgb: np.ndarray, *, tta: bool = True,
                  batch_size: int = 8, device: str | torch.device = "auto",
                  skip_empty: bool = True, fuse_decoder: bool = True, amp: bool | None = None,
                  window: int = WINDOW, stride: int = STRIDE,
                  compile_mode: str | None = None, split_tf32: bool = False) -> ArrayPrediction:
    """The production algorithm on an in-memory RGB uint8 array (training / evaluation use).

    ``batch_size`` counts images per forward call (windows × TTA views). Moves ``model`` to
    ``device``. ``compile_mode`` (one of ``COMPILE_MODES``) runs the forward compiled;
    ``split_tf32`` runs float32 products on TF32 tensor cores (``split_tf32``; CUDA only gains).
    """
    image = as_band_first(rgb)
    _, height, width = image.shape
    probabilities = np.zeros((int(model.config.num_labels), height, width), np.float32)
    copying: list[tuple[int, HostArray]] = []  # finished row bands on their way to the host

    def settle(keep: int) -> None:
        """Store the bands that have arrived, leaving the newest ``keep`` in flight."""
        while len(copying) > keep:
            start, band = copying.pop(0)
            arrived = band()
            probabilities[:, start:start + arrived.shape[1]] = arrived

    def emit(row0: int, acc: torch.Tensor, wsum: torch.Tensor, _pixels: torch.Tensor) -> None:
        rows = min(acc.shape[1], height - row0)
        if rows > 0:
            copying.append((row0, _to_host(_finish(acc[:, :rows, :width], wsum[:rows, :width]))))
        settle(1)  # the GPU may still be finishing the newest band: queue windows meanwhile

    with _prepared(model, device, tta=tta, batch_size=batch_size, fuse_decoder=fuse_decoder,
                   amp=amp, compile_mode=compile_mode, split_tf32=split_tf32) as forward:
        _stream(forward, height, width, lambda r0, r1: image[:, r0:r1], emit,
                skip_empty=skip_empty, window=window, stride=stride, progress=None)
    settle(0)
    return ArrayPrediction(np.argmax(probabilities, axis=0).astype(np.uint8), probabilities)


# ------------------------------------------------------------------------------------------------
# Disk to disk
# ------------------------------------------------------------------------------------------------


def _read_rows(src: Any, row0: int, row1: int) -> np.ndarray:
    """Rows [row0, row1) of bands 1–3 of an open rasterio dataset (the only read of a scene)."""
    return src.read(indexes=[1, 2, 3], window=Window(0, row0, src.width, row1 - row0))


class _BlockRowWriter:
    """Writes rows as they finish, in whole tile rows so no compressed tile is rewritten."""

    def __init__(self, dataset: Any, block_rows: int) -> None:
        self.dataset = dataset
        self.block_rows = block_rows
        self.pending: list[np.ndarray] = []
        self.pending_rows = 0
        self.next_row = 0

    def write(self, rows: np.ndarray) -> None:
        """Queue (n, width) rows following the previous ones; flush whole blocks."""
        self.pending.append(rows)
        self.pending_rows += rows.shape[0]
        if self.pending_rows >= self.block_rows:
            self._flush(self.pending_rows - self.pending_rows % self.block_rows)

    def close(self) -> None:
        """Write what is left (the last, partial tile row)."""
        if self.pending_rows:
            self._flush(self.pending_rows)

    def _flush(self, count: int) -> None:
        data = np.concatenate(self.pending, axis=0)
        self.dataset.write(data[:count], 1, window=Window(0, self.next_row, data.shape[1], count))
        self.next_row += count
        rest = data[count:]
        self.pending = [rest] if rest.shape[0] else []
        self.pending_rows = rest.shape[0]


def _write_rows(out: _BlockRowWriter, rows: HostArray) -> None:
    """Write rows once their copy to the host has arrived (in the writer thread)."""
    out.write(rows())


def _output_profile(src: Any, nodata: int | None) -> dict[str, Any]:
    """Single-band uint8 tiled LZW GeoTIFF on the input's grid and CRS."""
    return {
        "driver": "GTiff", "width": src.width, "height": src.height, "count": 1,
        "dtype": "uint8", "crs": src.crs, "transform": src.transform, "nodata": nodata,
        "tiled": True, "blockxsize": ENCODING.blocksize, "blockysize": ENCODING.blocksize,
        "compress": ENCODING.compression,
    }


def _check_scene(src: Any, path: Path) -> None:
    """A scene must be ≥ 3-band uint8 (RGB reflectance × 255, as the authors export it)."""
    if src.count < 3:
        raise ValueError(f"{path}: {src.count} band(s); segmentation needs RGB (3 bands)")
    if src.dtypes[0] != "uint8":
        raise ValueError(f"{path}: dtype {src.dtypes[0]}; expected uint8 RGB (reflectance × 255)")


def predict_scene(model: DamageSegmenter, src_path: str | Path, dst_path: str | Path, *,
                  probability_path: str | Path | None = None, tta: bool = True,
                  batch_size: int = 8, device: str | torch.device = "auto",
                  progress: Progress | None = None, skip_empty: bool = True,
                  fuse_decoder: bool = True, amp: bool | None = None,
                  compile_mode: str | None = None, split_tf32: bool = False) -> SceneStats:
    """Segment a scene GeoTIFF into a 0/1 uint8 GeoTIFF on the same grid, streaming from disk.

    Memory is bounded by one window-high strip of the scene width (plus one batch), whatever
    the scene height. ``probability_path`` optionally receives the damage probability as uint8
    0–100 with nodata 255 where the scene has no data (all bands 0). ``batch_size`` counts images
    per forward call (windows × TTA views). ``compile_mode`` (one of ``COMPILE_MODES``) runs the
    forward compiled, which pays off on scenes of many windows; ``split_tf32`` runs float32
    products on TF32 tensor cores (``split_tf32``). Outputs are written atomically (temp file +
    rename).
    """
    src_path, dst_path = Path(src_path), Path(dst_path)
    target = resolve_device(device)
    # a GPU outruns one core's LZW: tiles are decoded and encoded on all cores (a CPU run
    # leaves its cores to the model)
    gdal_threads = {"NUM_THREADS": "ALL_CPUS"} if target.type == "cuda" else {}
    with ExitStack() as stack:
        src = stack.enter_context(rasterio.open(src_path, **gdal_threads))
        _check_scene(src, src_path)
        height, width = src.height, src.width
        dst = stack.enter_context(rasterio.open(stack.enter_context(atomic_path(dst_path)), "w",
                                                **_output_profile(src, None), **gdal_threads))
        labels_out = _BlockRowWriter(dst, ENCODING.blocksize)
        prob_out: _BlockRowWriter | None = None
        if probability_path is not None:
            prob_tmp = stack.enter_context(atomic_path(Path(probability_path)))
            prob_ds = stack.enter_context(rasterio.open(
                prob_tmp, "w", **_output_profile(src, PROBABILITY_NODATA), **gdal_threads))
            prob_out = _BlockRowWriter(prob_ds, ENCODING.blocksize)

        writer = stack.enter_context(ThreadPoolExecutor(1, thread_name_prefix="scene-writer"))
        written: list[Future[None]] = []

        def emit(row0: int, acc: torch.Tensor, wsum: torch.Tensor, pixels: torch.Tensor) -> None:
            rows = min(acc.shape[1], height - row0)
            if rows <= 0:
                return
            probs = _finish(acc[:, :rows, :width], wsum[:rows, :width])
            written.append(writer.submit(_write_rows, labels_out, _to_host(_classes(probs))))
            if prob_out is not None:
                percent = torch.round(probs[1] * 100.0).to(torch.uint8)
                band = pixels[:, :rows, :width]
                percent.masked_fill_((band[0] | band[1] | band[2]) == 0, PROBABILITY_NODATA)
                written.append(writer.submit(_write_rows, prob_out, _to_host(percent)))
            while written and (written[0].done() or len(written) > MAX_ROWS_QUEUED):
                written.pop(0).result()  # a writer error is raised here, not at the end

        with _prepared(model, target, tta=tta, batch_size=batch_size,
                       fuse_decoder=fuse_decoder, amp=amp, compile_mode=compile_mode,
                       split_tf32=split_tf32) as forward:
            stats = _stream(forward, height, width, lambda r0, r1: _read_rows(src, r0, r1), emit,
                            skip_empty=skip_empty, window=WINDOW, stride=STRIDE,
                            progress=progress)
        for future in written:
            future.result()
        labels_out.close()
        if prob_out is not None:
            prob_out.close()
    return stats
