"""Segmentation: variants, checkpoints (authors' 4.x .pth, safetensors), whole-scene inference.

Mechanics are checked with a tiny random-init SegFormer (MiT layout, tiny widths) so the whole file
runs in seconds on two shared cores; the algorithm is checked against the straightforward
reference implementation on real GeoTIFFs read back with rasterio.
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given
from hypothesis import strategies as st
from rasterio.transform import from_origin

from producer.segmentation import (
    VARIANTS,
    DamageSegmenter,
    ModelInfo,
    build_segformer,
    inference,
    load_checkpoint,
    predict_array,
    predict_array_reference,
    predict_scene,
    save_checkpoint,
    weights_sha256,
)
from producer.segmentation import checkpoints as ckpt
from producer.segmentation.inference import gaussian_importance, window_starts
from producer.segmentation.model import segformer_config, variant_of

TINY = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 40, 64], "decoder_hidden_size": 32}
TRANSFORM = from_origin(2_200_000.0, -1_000_000.0, 30.0, 30.0)


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny() -> DamageSegmenter:
    """A tiny random SegFormer whose classifier is scaled up so classes are decisive."""
    torch.manual_seed(7)
    model = DamageSegmenter.build("custom", **TINY)
    with torch.no_grad():
        model.model.decode_head.classifier.weight.mul_(400.0)
        model.model.decode_head.batch_norm.running_mean.normal_(0.0, 0.01)
        model.model.decode_head.batch_norm.running_var.uniform_(0.5, 2.0)
    return model.eval()


def scene_pixels(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A (3, H, W) uint8 scene: bright smooth surface with dark thin lines and noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = 170 + 40 * np.sin(xx / 37.0) * np.cos(yy / 53.0)
    lines = (np.sin((xx + 0.6 * yy) / 4.0) > 0.93) * -120
    pixels = base + lines + rng.normal(0, 12, (3, height, width))
    return np.clip(pixels, 1, 255).astype(np.uint8)


def with_dark_block(pixels: np.ndarray) -> np.ndarray:
    """``pixels`` with a dark (1, still valid) block inside: the tiny random model finds damage
    along dark edges, so a scene of less than a window, padded centred, gets both classes."""
    _, height, width = pixels.shape
    pixels[:, height // 3:height // 3 + 60, width // 4:width // 4 + 80] = 1
    return pixels


def write_scene(path: Path, pixels: np.ndarray) -> Path:
    """Write a 3-band uint8 EPSG:3031 GeoTIFF (as exported from Earth Engine)."""
    _, height, width = pixels.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=3,
                       dtype="uint8", crs="EPSG:3031", transform=TRANSFORM) as dst:
        dst.write(pixels)
    return path


@contextmanager
def count_images(model: DamageSegmenter) -> Iterator[list[int]]:
    """A list that receives the batch size of every call to the encoder's first stage."""
    seen: list[int] = []
    hook = model.model.segformer.stages[0].register_forward_hook(
        lambda _m, args, _out: seen.append(int(args[0].shape[0])))
    try:
        yield seen
    finally:
        hook.remove()


# ------------------------------------------------------------------------------------------------
# Model
# ------------------------------------------------------------------------------------------------


def test_variants_have_the_paper_sizes() -> None:
    b0 = build_segformer("b0")
    assert sum(p.numel() for p in b0.parameters()) == pytest.approx(3.71e6, rel=0.01)
    assert b0.config.num_labels == 2 and b0.config.id2label == {0: "background", 1: "damage"}
    assert VARIANTS["b2"].depths == (3, 4, 6, 3) and VARIANTS["b2"].decoder_hidden_size == 768
    assert [VARIANTS[v].depths[2] for v in ("b3", "b4", "b5")] == [18, 27, 40]
    with pytest.raises(ValueError, match="valid: b0, b1"):
        build_segformer("b9")


def test_segmenter_upsamples_logits_to_input_size(tiny: DamageSegmenter) -> None:
    with torch.no_grad():
        logits = tiny(torch.rand(2, 3, 96, 64))
    assert logits.shape == (2, 2, 96, 64)
    assert all(k.startswith("model.") for k in tiny.state_dict())


# ------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------

#: Parameter names as transformers 4.x writes them for the authors' wrapper (README examples).
AUTHORS_KEYS = (
    "model.segformer.encoder.patch_embeddings.0.proj.weight",
    "model.segformer.encoder.block.0.0.layer_norm_1.weight",
    "model.segformer.encoder.block.0.0.attention.self.query.weight",
    "model.segformer.encoder.block.0.0.attention.self.sr.weight",
    "model.segformer.encoder.block.0.0.attention.self.layer_norm.bias",
    "model.segformer.encoder.block.0.0.attention.output.dense.weight",
    "model.segformer.encoder.block.1.1.mlp.dense1.weight",
    "model.segformer.encoder.block.3.1.mlp.dwconv.dwconv.weight",
    "model.segformer.encoder.block.3.1.layer_norm_2.bias",
    "model.segformer.encoder.layer_norm.3.weight",
    "model.decode_head.linear_c.2.proj.weight",
    "model.decode_head.linear_fuse.weight",
    "model.decode_head.batch_norm.running_var",
    "model.decode_head.classifier.bias",
)


def test_authors_4x_pth_loads_strictly_with_identical_logits(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = DamageSegmenter.build("b0").eval()
    old = ckpt.to_old_layout(model.state_dict())
    assert set(AUTHORS_KEYS) <= set(old)
    assert not any(".stages." in k or "q_proj" in k or "linear_projections" in k for k in old)
    torch.save(old, tmp_path / "seed.pth")

    loaded, info = load_checkpoint(tmp_path / "seed.pth")
    assert info.variant == "b0" and info.source_format == "pth-transformers4"
    assert info.sha256 == weights_sha256(tmp_path / "seed.pth")
    pixels = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        assert torch.equal(model(pixels), loaded(pixels))


def test_pth_with_a_missing_tensor_is_refused(tmp_path: Path) -> None:
    old = ckpt.to_old_layout(DamageSegmenter.build("custom", **TINY).state_dict())
    del old["model.segformer.encoder.block.0.0.attention.self.key.bias"]
    torch.save(old, tmp_path / "broken.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"broken\.pth.*strict"):
        load_checkpoint(tmp_path / "broken.pth")


def test_hugging_face_model_safetensors_loads_like_its_pth(tmp_path: Path) -> None:
    """A bare Hugging Face ``model.safetensors`` (no ``model.`` wrapper, 4.x names, no
    sidecar), as an ADE20k SegFormer is downloaded, loads with the same logits as its .pth;
    one missing tensor is a CheckpointError naming it, not a KeyError."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = DamageSegmenter.build("custom", **TINY).eval()
    bare = {k.removeprefix("model."): v.contiguous()
            for k, v in ckpt.to_old_layout(model.state_dict()).items()}
    save_file(bare, str(tmp_path / "model.safetensors"))
    loaded, info = load_checkpoint(tmp_path / "model.safetensors")
    pixels = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(pixels), loaded(pixels))
    assert info.config["hidden_sizes"] == [8, 16, 40, 64]
    (tmp_path / "cut.safetensors").write_bytes(
        (tmp_path / "model.safetensors").read_bytes()[:1000])  # an interrupted download
    with pytest.raises(ckpt.CheckpointError, match=r"cut\.safetensors: not a readable"):
        load_checkpoint(tmp_path / "cut.safetensors")
    del bare["segformer.encoder.block.0.0.mlp.dense1.weight"]
    save_file(bare, str(tmp_path / "broken.safetensors"))
    with pytest.raises(ckpt.CheckpointError, match="mlp.fc1.weight"):
        load_checkpoint(tmp_path / "broken.safetensors")


def test_variant_is_inferred_from_shapes(tmp_path: Path) -> None:
    for name in VARIANTS:
        with torch.device("meta"):  # shapes only: no memory, no time
            state = {f"model.{k}": v for k, v in build_segformer(name).state_dict().items()}
        arch = ckpt.infer_architecture(state)
        assert variant_of(segformer_config("custom", **arch)) == name
        assert arch["depths"] == list(VARIANTS[name].depths) and arch["sr_ratios"] == [8, 4, 2, 1]
    torch.save(build_segformer("custom", **TINY).state_dict(), tmp_path / "tiny.pth")  # bare HF
    model, info = load_checkpoint(tmp_path / "tiny.pth")
    assert info.variant == "custom" and info.config["hidden_sizes"] == [8, 16, 40, 64]
    assert info.source_format == "pth-transformers5" and model.config.decoder_hidden_size == 32


def test_safetensors_round_trip_keeps_weights_and_facts(tiny: DamageSegmenter,
                                                        tmp_path: Path) -> None:
    facts = ModelInfo(name="demo-b0", variant="", training={"steps": 40, "loss": "bce+dice"},
                      metrics={"f1": 0.5}, data_sha256="ab" * 32)
    recorded = save_checkpoint(tiny, tmp_path / "demo.safetensors", facts, authors_pth=True)
    sidecar = json.loads((tmp_path / "demo.json").read_text())
    assert sidecar["sha256"] == weights_sha256(tmp_path / "demo.safetensors") == recorded.sha256
    assert sidecar["training"]["steps"] == 40 and sidecar["data_sha256"] == "ab" * 32

    loaded, info = load_checkpoint(tmp_path / "demo.safetensors")
    assert info.name == "demo-b0" and info.metrics == {"f1": 0.5} and info.variant == "custom"
    assert info.model_record().weights_sha256 == recorded.sha256
    pixels = torch.rand(1, 3, 64, 64)
    from_pth, pth_info = load_checkpoint(tmp_path / "demo.pth")
    assert pth_info.source_format == "pth-transformers4"
    with torch.no_grad():
        assert torch.equal(tiny(pixels), loaded(pixels))
        assert torch.equal(tiny(pixels), from_pth(pixels))


def test_sidecar_that_disagrees_with_weights_is_refused(tiny: DamageSegmenter,
                                                        tmp_path: Path) -> None:
    save_checkpoint(tiny, tmp_path / "m.safetensors", ModelInfo(name="m", variant=""))
    doc = json.loads((tmp_path / "m.json").read_text())
    doc["sha256"] = "0" * 64
    (tmp_path / "m.json").write_text(json.dumps(doc))
    with pytest.raises(ckpt.CheckpointError, match=r"m\.json.*does not match"):
        load_checkpoint(tmp_path / "m.safetensors")
    torch.save({"encoder.weight": torch.zeros(2)}, tmp_path / "other.pth")
    with pytest.raises(ckpt.CheckpointError, match=r"other\.pth: no 'model\.segformer"):
        load_checkpoint(tmp_path / "other.pth")
    with pytest.raises(ckpt.CheckpointError, match="unknown weights format"):
        (tmp_path / "m.onnx").write_bytes(b"x")
        load_checkpoint(tmp_path / "m.onnx")


# ------------------------------------------------------------------------------------------------
# Algorithm pieces
# ------------------------------------------------------------------------------------------------


def test_window_starts_match_the_authors_layout() -> None:
    assert window_starts(512) == [0]
    assert window_starts(700) == [0, 188]
    assert window_starts(900) == [0, 256, 388]
    assert window_starts(1024) == [0, 256, 512]


@given(st.integers(min_value=512, max_value=20_000))
def test_window_starts_cover_every_pixel_with_half_overlap(length: int) -> None:
    starts = window_starts(length)
    assert starts[0] == 0 and starts[-1] + 512 == length
    assert all(0 < b - a <= 256 for a, b in zip(starts, starts[1:], strict=False))
    assert all(b - a == 256 for a, b in zip(starts[:-2], starts[1:-1], strict=False))


def test_gaussian_importance_map() -> None:
    weights = gaussian_importance(512)
    assert weights.max() == pytest.approx(1.0, abs=1e-4) and weights.min() == pytest.approx(1e-3)
    np.testing.assert_array_equal(weights, weights[::-1, ::-1])
    # centre (255.5, 255.5), sigma 512 / 8 = 64 px along each axis
    expected = np.exp(-(64.5**2 - 0.5**2) / (2 * 64.0**2))
    assert weights[255, 191] / weights[255, 255] == pytest.approx(expected, rel=1e-5)
    assert weights[191, 255] / weights[255, 255] == pytest.approx(expected, rel=1e-5)


# ------------------------------------------------------------------------------------------------
# Whole-scene inference
# ------------------------------------------------------------------------------------------------


def assert_equivalent(probs: np.ndarray, labels: np.ndarray, ref: inference.ArrayPrediction,
                      where: np.ndarray | None = None) -> None:
    """Probabilities within 1e-4 and identical argmax except (near-)exact ties."""
    mask = np.ones(labels.shape, bool) if where is None else where
    assert np.abs(probs - ref.probabilities)[:, mask].max() < 1e-4
    margin = np.abs(ref.probabilities[1] - ref.probabilities[0])
    differ = (labels != ref.labels) & mask
    assert not (differ & (margin > 1e-5)).any()


@pytest.mark.parametrize("shape", [(700, 900), (300, 200), (250, 600), (600, 300)])
def test_predict_scene_equals_reference(tiny: DamageSegmenter, tmp_path: Path,
                                        shape: tuple[int, int]) -> None:
    pixels = with_dark_block(scene_pixels(*shape))
    src = write_scene(tmp_path / "scene.tif", pixels)
    ref = predict_array_reference(tiny, pixels)
    assert 0 < ref.labels.mean() < 1  # the tiny model is decisive both ways
    stats = predict_scene(tiny, src, tmp_path / "damage.tif", probability_path=tmp_path / "p.tif",
                          device="cpu")
    with rasterio.open(tmp_path / "damage.tif") as out, rasterio.open(src) as scene:
        labels = out.read(1)
        assert (out.width, out.height, out.crs, out.transform) == (
            scene.width, scene.height, scene.crs, scene.transform)
        assert out.dtypes == ("uint8",) and out.count == 1 and out.nodata is None
        assert out.profile["tiled"] and out.compression.name == "lzw"
    with rasterio.open(tmp_path / "p.tif") as prob:
        percent = prob.read(1)
        assert prob.nodata == 255
    ys, xs = window_starts(max(shape[0], 512)), window_starts(max(shape[1], 512))
    assert stats.windows_run == len(ys) * len(xs) and stats.windows_skipped == 0
    margin = np.abs(ref.probabilities[1] - ref.probabilities[0])
    assert not ((labels != ref.labels) & (margin > 1e-5)).any()
    assert np.abs(percent.astype(int) - np.rint(ref.damage_probability * 100)).max() <= 1
    fast = predict_array(tiny, pixels.transpose(1, 2, 0), device="cpu", batch_size=3)
    assert_equivalent(fast.probabilities, fast.labels, ref)
    assert np.array_equal(np.asarray(fast), fast.labels)  # usable as the class map


def authors_sliding_window(model: DamageSegmenter, pixels: np.ndarray) -> np.ndarray:
    """Probabilities (2, H, W) by a transcription of the authors' ``sliding_window_infer_geotiff``
    (damage_inference.ipynb) on an in-memory scene: windows start at 0 (only 0 on an axis of at
    most a window), each tile is ``pad_to_roi``-padded centred (t = dh // 2, l = dw // 2), run
    through the 4-view mirror TTA, and cropped back, weights included."""
    win, stride = 512, 256
    _, height, width = pixels.shape
    weights = gaussian_importance(win)

    def starts(length: int) -> list[int]:
        if length <= win:
            return [0]
        points = list(range(0, length - win + 1, stride))
        return points if points[-1] == length - win else [*points, length - win]

    acc = np.zeros((2, height, width), np.float32)
    wsum = np.zeros((height, width), np.float32)
    flips = ((), (-1,), (-2,), (-2, -1))
    with torch.no_grad():
        for y in starts(height):
            for x in starts(width):
                tile = pixels[:, y:y + win, x:x + win]
                dh, dw = win - tile.shape[1], win - tile.shape[2]
                t, left = dh // 2, dw // 2
                tile = np.pad(tile, ((0, 0), (t, dh - t), (left, dw - left)))
                xt = torch.from_numpy(tile.astype(np.float32) / 255.0)[None]
                views = [torch.softmax(model(xt.flip(d) if d else xt), 1) for d in flips]
                probs = torch.stack([v.flip(d) if d else v for v, d in zip(views, flips,
                                                                           strict=True)]).mean(0)
                ylen, xlen = min(height, y + win) - y, min(width, x + win) - x
                crop = (slice(t, t + ylen), slice(left, left + xlen))
                acc[:, y:y + ylen, x:x + xlen] += probs[0].numpy()[:, crop[0], crop[1]] * \
                    weights[crop]
                wsum[y:y + ylen, x:x + xlen] += weights[crop]
    return acc / wsum


@pytest.mark.parametrize("shape", [(300, 200), (250, 600), (600, 300), (700, 900)])
def test_reference_pads_short_axes_centred_as_the_authors(tiny: DamageSegmenter,
                                                          shape: tuple[int, int]) -> None:
    """A scene shorter than a window on both axes, or on one only, is padded centred (the
    authors' ``pad_to_roi``), not at the bottom/right; a scene of at least a window is not
    padded. Reference and production path both follow the authors' probabilities."""
    pixels = with_dark_block(scene_pixels(*shape, seed=8))
    authors = authors_sliding_window(tiny, pixels)
    ref = predict_array_reference(tiny, pixels)
    assert 0 < ref.labels.mean() < 1
    assert np.abs(ref.probabilities - authors).max() < 1e-5
    fast = predict_array(tiny, pixels, device="cpu", batch_size=3)
    assert_equivalent(fast.probabilities, fast.labels, ref)
    assert np.abs(fast.probabilities - authors).max() < 1e-4


def test_unfused_decoder_and_no_tta_match_reference(tiny: DamageSegmenter) -> None:
    pixels = scene_pixels(520, 530, seed=3)
    refs = []
    for tta in (True, False):
        refs.append(predict_array_reference(tiny, pixels, tta=tta))
        fast = predict_array(tiny, pixels, tta=tta, fuse_decoder=False, device="cpu")
        assert_equivalent(fast.probabilities, fast.labels, refs[-1])
    assert np.abs(refs[0].probabilities - refs[1].probabilities).max() > 1e-3  # TTA matters


def test_autocast_path_stays_close(tiny: DamageSegmenter) -> None:
    """The fp16 autocast used on CUDA, exercised on the CPU: close, not bit-identical."""
    pixels = scene_pixels(512, 512, seed=4)
    exact = predict_array(tiny, pixels, device="cpu")
    half = predict_array(tiny, pixels, device="cpu", amp=True)
    assert np.abs(exact.probabilities - half.probabilities).max() < 1e-2
    assert (exact.labels != half.labels).mean() < 1e-3


def test_streaming_reads_each_row_once_in_window_sized_bands(
        tiny: DamageSegmenter, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pixels = scene_pixels(1400, 560, seed=5)
    src = write_scene(tmp_path / "tall.tif", pixels)
    reads: list[tuple[int, int]] = []
    original = inference._read_rows

    def counting(dataset: object, row0: int, row1: int) -> np.ndarray:
        reads.append((row0, row1))
        return original(dataset, row0, row1)

    monkeypatch.setattr(inference, "_read_rows", counting)
    calls: list[tuple[int, int]] = []
    predict_scene(tiny, src, tmp_path / "out.tif", tta=False, device="cpu",
                  progress=lambda done, total: calls.append((done, total)))
    windows = len(window_starts(1400)) * len(window_starts(560))
    assert calls[-1] == (windows, windows)
    assert [d for d, _ in calls] == sorted(d for d, _ in calls)
    sizes = [b - a for a, b in reads]
    assert max(sizes) <= 512 < 1400  # never the whole raster, at most one window of rows
    assert sum(sizes) == 1400 and reads[0][0] == 0  # each row read exactly once, in order
    assert all(a[1] == b[0] for a, b in zip(reads, reads[1:], strict=False))
    assert len(reads) == len(window_starts(1400))


def test_array_memory_does_not_grow_with_scene_height(tiny: DamageSegmenter,
                                                     tmp_path: Path) -> None:
    """Peak numpy memory of predict_scene is the same for a scene three times as tall."""
    peaks = []
    for height in (1300, 3900):
        src = write_scene(tmp_path / f"h{height}.tif", scene_pixels(height, 520, seed=6))
        tracemalloc.start()
        predict_scene(tiny, src, tmp_path / f"out{height}.tif", tta=False, device="cpu")
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert peaks[1] < 1.1 * peaks[0]  # whole-scene arrays would triple


def test_windows_without_valid_pixels_are_skipped(tiny: DamageSegmenter, tmp_path: Path) -> None:
    pixels = scene_pixels(512, 1300, seed=2)
    pixels[:, :, 700:] = 0  # no data right of column 700: windows at x = 768 and 788 are empty
    src = write_scene(tmp_path / "edge.tif", pixels)
    with count_images(tiny) as images:
        stats = predict_scene(tiny, src, tmp_path / "out.tif",
                              probability_path=tmp_path / "p.tif", batch_size=8, device="cpu")
    assert (stats.windows_total, stats.windows_skipped, stats.windows_run) == (5, 2, 3)
    assert sum(images) == stats.images_forwarded == 3 * 4
    assert stats.forward_calls == len(images) == 2  # 2 windows × 4 views per call, then 1 × 4
    with rasterio.open(tmp_path / "out.tif") as out:
        labels = out.read(1)
    with rasterio.open(tmp_path / "p.tif") as prob:
        percent = prob.read(1)
    assert not labels[:, 1024:].any()  # covered only by skipped windows → class 0
    assert (percent[:, 700:] == 255).all() and (percent[:, :700] <= 100).all()
    ref = predict_array_reference(tiny, pixels)
    valid = pixels.any(axis=0)
    margin = np.abs(ref.probabilities[1] - ref.probabilities[0])
    assert not ((labels != ref.labels) & valid & (margin > 1e-5)).any()
    # without skipping, the empty windows' predictions land on no-data pixels just as the authors'
    full = predict_array(tiny, pixels, tta=False, skip_empty=False, device="cpu")
    plain = predict_array_reference(tiny, pixels, tta=False)
    assert_equivalent(full.probabilities, full.labels, plain)


def test_failed_scene_writes_nothing(tiny: DamageSegmenter, tmp_path: Path) -> None:
    single = tmp_path / "gray.tif"
    with rasterio.open(single, "w", driver="GTiff", width=64, height=64, count=1, dtype="uint8",
                       crs="EPSG:3031", transform=TRANSFORM) as dst:
        dst.write(np.full((1, 64, 64), 9, np.uint8))
    with pytest.raises(ValueError, match=r"gray\.tif: 1 band"):
        predict_scene(tiny, single, tmp_path / "out.tif", device="cpu")
    assert list(tmp_path.iterdir()) == [single]


@given(st.integers(2, 5), st.integers(1, 40), st.integers(0, 2**31 - 1))
def test_class_choice_matches_numpy_argmax_with_ties(labels: int, width: int, seed: int) -> None:
    """The output classes equal ``np.argmax`` (first class wins a tie) on tie-heavy inputs."""
    rng = np.random.default_rng(seed)
    probs = rng.integers(0, 3, (labels, 3, width)).astype(np.float32) / 2  # many exact ties
    chosen = inference._classes(torch.from_numpy(probs)).numpy()
    assert chosen.dtype == np.uint8
    assert np.array_equal(chosen, np.argmax(probs, axis=0))


def test_compiled_forward_matches_reference_and_compiles_once(tiny: DamageSegmenter,
                                                              tmp_path: Path) -> None:
    """``--compile``: TorchInductor's forward gives the reference's result, one compiled shape
    serves short batches and later scenes, and new weights are never served stale."""
    from torch._dynamo.utils import counters

    pixels = scene_pixels(700, 900, seed=5)
    ref = predict_array_reference(tiny, pixels)  # installs transformers' output-capture hooks
    hooks = sum(len(m._forward_hooks) for m in tiny.modules())
    counters.clear()
    # 2 window rows of 3 windows, 2 per call: each row ends on a short (padded) batch
    fast = predict_array(tiny, pixels, device="cpu", batch_size=8, compile_mode="default")
    assert_equivalent(fast.probabilities, fast.labels, ref)
    src = write_scene(tmp_path / "scene.tif", pixels)
    stats = predict_scene(tiny, src, tmp_path / "damage.tif", device="cpu", batch_size=8,
                          compile_mode="auto")
    with rasterio.open(tmp_path / "damage.tif") as out:
        assert np.array_equal(out.read(1), fast.labels)
    assert stats.windows_run == 6 and stats.forward_calls == 4
    assert stats.images_forwarded == 4 * 2 * 4  # the padded windows went through the model
    # one graph: no break at the hooks, and the second scene reused the compiled forward
    assert counters["stats"]["unique_graphs"] == 1
    assert sum(len(m._forward_hooks) for m in tiny.modules()) == hooks > 0  # the model keeps them
    with torch.no_grad():
        tiny.model.decode_head.classifier.bias.add_(torch.tensor([5.0, -5.0]))
    try:
        shifted = predict_array(tiny, pixels, device="cpu", batch_size=8, compile_mode="default")
        assert shifted.labels.mean() < fast.labels.mean()  # rebuilt from the new weights
    finally:
        with torch.no_grad():
            tiny.model.decode_head.classifier.bias.sub_(torch.tensor([5.0, -5.0]))
    # one window per call (4 TTA views of batch 4): every call alike, nothing padded
    single = predict_scene(tiny, src, tmp_path / "single.tif", device="cpu", batch_size=4,
                           compile_mode="default")
    assert single.forward_calls == 6 and single.images_forwarded == 6 * 4
    with rasterio.open(tmp_path / "single.tif") as out:
        assert np.array_equal(out.read(1), fast.labels)
    with pytest.raises(ValueError, match="unknown compile mode 'fastest'"):
        predict_array(tiny, pixels, device="cpu", compile_mode="fastest")


def test_a_compiled_forward_does_not_keep_its_model_alive() -> None:
    """The per-model cache of compiled forwards lets models go (GPU memory with them)."""
    import gc
    import weakref

    torch.manual_seed(0)
    model = DamageSegmenter.build("custom", **TINY).eval()
    cached = len(inference._COMPILED)  # other tests' models may be cached too
    with torch.inference_mode():
        forward = inference._batched_forward(  # compiles lazily: nothing is compiled here
            model, torch.device("cpu"), tta=True, batch_size=8, fuse_decoder=True, amp=None,
            compile_mode="default")
        again = inference._batched_forward(
            model, torch.device("cpu"), tta=True, batch_size=8, fuse_decoder=True, amp=None,
            compile_mode="default")
    assert again is forward and forward.model is model
    alive = weakref.ref(model)
    del model, forward, again
    gc.collect()
    assert alive() is None and len(inference._COMPILED) == cached
