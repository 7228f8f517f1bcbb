"""CUDA paths: inference (float32 and float16 autocast), SegFormer AMP and DiffGF training.

Skipped where no CUDA device is present (CI has none); run on a GPU machine with
``python -m pytest -q tests/test_cuda.py``. Models are random-init MiT-b0 / tiny DiffGF networks;
the yardstick is always the CPU float32 result of the same weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin

from producer.restoration.diffgf import build_diffgf
from producer.restoration.train import TrainConfig, train
from producer.segmentation import (
    DamageSegmenter,
    predict_array,
    predict_array_reference,
    predict_scene,
)
from tests.tiny_models import TINY_UNET, TINY_VAE, decisive_segmenter

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")



def _scene(size: int, seed: int = 0) -> np.ndarray:
    """(3, size, size) uint8 ice-like scene with thin dark lines."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    base = 170 + 40 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    lines = (np.sin((xx + 0.6 * yy) / 4.0) > 0.93) * -120
    return np.clip(base + lines + rng.normal(0, 12, (3, size, size)), 1, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def b0() -> DamageSegmenter:
    """Random-init MiT-b0 with a decisive classifier."""
    return decisive_segmenter("b0")


@pytest.mark.parametrize(("amp", "prob_bound", "tie_margin", "compile_mode", "split_tf32"), [
    (False, 1e-4, 2e-4, None, False),  # exact float32 (no TF32): the reference up to rounding
    (True, 2e-2, 4e-2, None, False),   # float16 autocast, the GPU default
    (True, 2e-2, 4e-2, "auto", False),  # --compile: Inductor kernels replayed as CUDA graphs
    (False, 1e-4, 2e-4, "auto", False),  # --compile --exact: compiled, still float32
    # split TF32: float32 products from three TF32 tensor-core products; a product left unsplit
    # would move the probabilities by ~2e-4 (tests/test_split_tf32.py), so the float32 bound
    # holds only if every one is split, eager and compiled
    (False, 1e-4, 2e-4, None, True),
    (False, 1e-4, 2e-4, "auto", True),
])
def test_cuda_inference_matches_the_cpu_reference(b0: DamageSegmenter, amp: bool,
                                                  prob_bound: float, tie_margin: float,
                                                  compile_mode: str | None,
                                                  split_tf32: bool) -> None:
    """Batched inference on the GPU keeps the CPU float32 reference's probabilities within the
    precision's bound, and its classes wherever the reference is not nearly undecided."""
    pixels = _scene(768, seed=int(amp))
    ref = predict_array_reference(b0.to("cpu"), pixels, tta=True)
    gpu = predict_array(b0, pixels, tta=True, batch_size=32, device="cuda", amp=amp,
                        compile_mode=compile_mode, split_tf32=split_tf32)
    b0.to("cpu")
    margin = np.abs(ref.probabilities[1] - ref.probabilities[0])
    assert float(np.abs(gpu.probabilities - ref.probabilities).max()) < prob_bound
    assert int(((gpu.labels != ref.labels) & (margin > tie_margin)).sum()) == 0


@pytest.fixture(scope="module")
def scene_with_a_hole(b0: DamageSegmenter, tmp_path_factory: pytest.TempPathFactory
                      ) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A 900 × 1000 GeoTIFF scene with a corner without data (holding one whole window), its
    pixels, and the CPU float32 probabilities and classes of ``b0`` on it."""
    pixels = np.ascontiguousarray(_scene(1000, seed=2)[:, :900])
    pixels[:, 380:, :520] = 0
    src = tmp_path_factory.mktemp("scene") / "scene.tif"
    with rasterio.open(src, "w", driver="GTiff", width=pixels.shape[2], height=pixels.shape[1],
                       count=3, dtype="uint8", crs="EPSG:3031",
                       transform=from_origin(0, 0, 30, 30)) as dst:
        dst.write(pixels)
    cpu = predict_array(b0.to("cpu"), pixels, tta=True, device="cpu")
    return src, pixels, cpu.probabilities, cpu.labels


@pytest.mark.parametrize(("amp", "prob_bound", "tie_margin"), [(False, 1e-4, 2e-4),
                                                              (True, 2e-2, 4e-2)])
def test_cuda_scene_disk_to_disk_matches_the_cpu(
        b0: DamageSegmenter, scene_with_a_hole: tuple[Path, np.ndarray, np.ndarray, np.ndarray],
        tmp_path: Path, amp: bool, prob_bound: float, tie_margin: float) -> None:
    """predict_scene on the GPU (rows copied to and from the device without waiting, written by
    the writer thread) writes the CPU's classes and probability raster; the window without data
    is skipped and pixels without data are nodata in the probability raster."""
    src, pixels, probabilities, cpu_labels = scene_with_a_hole
    stats = predict_scene(b0, src, tmp_path / "damage.tif", probability_path=tmp_path / "p.tif",
                          tta=True, batch_size=32, device="cuda", amp=amp)
    b0.to("cpu")
    with rasterio.open(tmp_path / "damage.tif") as labels_ds, \
            rasterio.open(tmp_path / "p.tif") as percent_ds:
        labels, percent = labels_ds.read(1), percent_ds.read(1)
    valid = pixels.any(axis=0)
    margin = np.abs(probabilities[1] - probabilities[0])
    assert stats.windows_skipped == 1 and stats.windows_run == 8
    assert int(((labels != cpu_labels) & valid & (margin > tie_margin)).sum()) == 0
    expected = np.rint(probabilities[1] * 100)
    assert np.abs(percent[valid].astype(int) - expected[valid]).max() <= 1 + 100 * prob_bound
    assert (percent[~valid] == 255).all()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_a_gpu_other_than_the_current_one_gives_the_same_result(b0: DamageSegmenter) -> None:
    """Rows copied back from cuda:1 are waited for on cuda:1's stream, not the current
    device's (an event there completes at once and the host would read a half-copied row)."""
    pixels = _scene(768, seed=5)
    cpu = predict_array(b0.to("cpu"), pixels, tta=True, device="cpu")
    other = predict_array(b0, pixels, tta=True, batch_size=32, device="cuda:1", amp=False)
    b0.to("cpu")
    assert float(np.abs(other.probabilities - cpu.probabilities).max()) < 1e-4


def test_streaming_on_cuda_does_not_synchronise_per_row(b0: DamageSegmenter,
                                                        tmp_path: Path) -> None:
    """With CUDA's sync debug mode on, a scene of many window rows makes no more synchronising
    calls than a scene of few: the host never waits for the GPU once per row."""
    import warnings

    def syncs(height: int) -> int:
        pixels = np.ascontiguousarray(_scene(max(height, 1000), seed=height)[:, :height, :1000])
        src = tmp_path / f"scene{height}.tif"
        with rasterio.open(src, "w", driver="GTiff", width=1000, height=height, count=3,
                           dtype="uint8", crs="EPSG:3031",
                           transform=from_origin(0, 0, 30, 30)) as dst:
            dst.write(pixels)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                predict_scene(b0, src, tmp_path / f"out{height}.tif", tta=True,
                              batch_size=32, device="cuda")
            finally:
                torch.cuda.set_sync_debug_mode("default")
        return sum("synchroniz" in str(w.message) for w in caught)

    syncs(600)  # first use: the model's upload, kernels, allocator
    try:
        assert syncs(1800) == syncs(600)  # 6 window rows against 2
    finally:
        b0.to("cpu")


def _tile(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """An (size, size, 3) uint8 tile with dark lines and its damage label (the renderer's)."""
    rgb = np.ascontiguousarray(_scene(size, seed).transpose(1, 2, 0))
    return rgb, rgb[..., 0] < 100


def test_segformer_amp_training_resumes_exactly(tmp_path: Path) -> None:
    """Training on CUDA (float16 autocast + GradScaler) lowers nothing to NaN, and a run
    resumed from its checkpoint ends with the same weights as an uninterrupted one."""
    from rich.console import Console
    from safetensors.torch import load_file

    from producer.training.train import TrainConfig as SegConfig
    from producer.training.train import train as train_seg

    def config(out: Path, epochs: int) -> SegConfig:
        return SegConfig(out=str(out), variant="b0", demo=True, epochs=epochs, batch_size=4,
                         demo_tiles=8, demo_val_tiles=4, demo_size=128, device="cuda",
                         warmup_epochs=1, cosine_epochs=1, seed=3)

    quiet = Console(quiet=True)
    state = train_seg(config(tmp_path / "full", 2), render=_tile, console=quiet)
    assert all(np.isfinite(h["train_loss"]) for h in state.history)
    train_seg(config(tmp_path / "split", 1), render=_tile, console=quiet)
    train_seg(config(tmp_path / "split", 2), resume=True, render=_tile, console=quiet)
    full = load_file(tmp_path / "full" / "last.safetensors")
    split = load_file(tmp_path / "split" / "last.safetensors")
    assert all(torch.allclose(full[k], split[k], atol=1e-6) for k in full)


def test_diffgf_trains_on_cuda_like_on_cpu(tmp_path: Path) -> None:
    """A DiffGF run on the GPU draws the same tiles and noise as on the CPU: the losses agree
    up to float rounding, and the written weights load back."""
    config = TrainConfig(vae_steps=2, unet_steps=3, batch=2, crop=32, checkpoint_every=100)
    _, on_cpu = train(config, tmp_path / "cpu", model=build_diffgf(TINY_VAE, TINY_UNET, seed=0))
    _, on_gpu = train(config, tmp_path / "gpu", model=build_diffgf(TINY_VAE, TINY_UNET, seed=0),
                      device="cuda", workers=2)
    assert on_gpu.losses == pytest.approx(on_cpu.losses, rel=2e-2, abs=1e-4)
    assert (tmp_path / "gpu" / "diffgf.safetensors").stat().st_size > 0
