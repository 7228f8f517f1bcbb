"""Landsat 7 SLC-off gaps and their restoration (DiffGF, FillNodata), metrics and training."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from rasterio.transform import from_origin
from scipy.ndimage import binary_dilation
from typer.testing import CliRunner

from producer.cli import build_app
from producer.restoration import MissingWeightsError, restore, restore_scene_file
from producer.restoration.diffgf import (
    DiffGF,
    build_diffgf,
    load_diffgf,
    restore_array,
    save_diffgf,
)
from producer.restoration.harmonize import harmonize
from producer.restoration.metrics import cc, psnr, restoration_metrics, rmse, ssim, uiqi
from producer.restoration.synthetic import render_tile
from producer.restoration.tiles import TileSampler
from producer.restoration.train import (
    TrainConfig,
    diffusion_loss,
    step_batch,
    train,
    vae_loss,
)
from producer.slcoff import (
    GAP_HOLE_MAX_PX,
    apply_gaps,
    detect_gaps,
    footprint_of,
    gap_fraction,
    simulate_slc_off_mask,
)
from tests.tiny_models import TINY_UNET, TINY_VAE

torch.set_num_threads(1)



@pytest.fixture
def tiny() -> DiffGF:
    """A random-init DiffGF small enough for tests (tiles must be multiples of 8)."""
    return build_diffgf(TINY_VAE, TINY_UNET, seed=0).eval()


def _scene(size: tuple[int, int] = (60, 80), seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A complete ice-like image and an SLC-off mask for it."""
    img = render_tile(seed, max(size))[: size[0], : size[1]]
    return img, simulate_slc_off_mask(size, angle_deg=12.0, seed=seed)


# --------------------------------------------------------------------------------------------
# Gap geometry and detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 23.0, -71.0, 90.0])
def test_mask_misses_about_22_percent(angle: float) -> None:
    mask = simulate_slc_off_mask((1000, 1100), angle_deg=angle, seed=3)
    assert abs(gap_fraction(mask) - 0.22) < 0.05


def test_mask_has_no_gaps_along_the_centre_line_and_wedges_widen() -> None:
    mask = simulate_slc_off_mask((640, 801), angle_deg=0.0, seed=5)
    centre = 400
    assert not mask[:, centre - 2: centre + 3].any()
    widths = mask.mean(axis=0) * 32  # mean gap width per column (one gap every 32 lines)
    left, right = widths[:centre][::-1], widths[centre + 1:]
    for side in (left, right):
        # Monotone growth from the centre line to the edge, ~14 px at the edge.
        smooth = np.convolve(side, np.ones(25) / 25, mode="valid")
        assert np.all(np.diff(smooth) >= -0.05)
        assert 11 <= side[-10:].mean() <= 14.5


def _runs(line: np.ndarray) -> list[int]:
    """Lengths of consecutive True runs."""
    padded = np.concatenate([[0], line.astype(np.int8), [0]])
    d = np.diff(padded)
    return list(np.flatnonzero(d == -1) - np.flatnonzero(d == 1))


def test_gap_widths_at_most_14_px_and_sides_alternate() -> None:
    mask = simulate_slc_off_mask((512, 600), angle_deg=0.0, seed=9)
    runs = [r for col in mask.T for r in _runs(col)]
    assert max(runs) <= 14
    rows_left = set(np.flatnonzero(mask[:, 2]))
    rows_right = set(np.flatnonzero(mask[:, -3]))
    assert rows_left and rows_right and not rows_left & rows_right
    # Rotated 90 degrees, the stripes run down the columns instead.
    rot = simulate_slc_off_mask((600, 512), angle_deg=90.0, seed=9)
    assert max(r for row in rot for r in _runs(row)) <= 14
    assert not rot[300 - 2: 300 + 2].any()


def test_mask_is_deterministic_per_seed() -> None:
    a = simulate_slc_off_mask((100, 120), angle_deg=30.0, seed=1)
    assert np.array_equal(a, simulate_slc_off_mask((100, 120), angle_deg=30.0, seed=1))
    assert not np.array_equal(a, simulate_slc_off_mask((100, 120), angle_deg=30.0, seed=2))


def test_detect_gaps_inside_a_rotated_footprint() -> None:
    h, w = 200, 240
    yy, xx = np.mgrid[0:h, 0:w]
    # A scene footprint rotated in the grid; zeros outside it are "no scene", not gaps.
    u = (xx - w / 2) * np.cos(0.5) + (yy - h / 2) * np.sin(0.5)
    v = -(xx - w / 2) * np.sin(0.5) + (yy - h / 2) * np.cos(0.5)
    footprint = (np.abs(u) < 90) & (np.abs(v) < 70)
    gaps = simulate_slc_off_mask((h, w), angle_deg=25.0, seed=4) & footprint
    img = np.where(footprint[..., None], render_tile(1, 240)[:h], 0).astype(np.uint8)
    scene = apply_gaps(img, gaps)
    assert np.array_equal(detect_gaps(scene, footprint), gaps)
    found = detect_gaps(scene)
    assert not (found & ~footprint).any()
    assert (found & gaps).sum() / gaps.sum() > 0.97
    assert abs(gap_fraction(found, footprint_of(scene)) - gap_fraction(gaps, footprint)) < 0.01


def test_imagery_never_delivered_is_not_a_gap() -> None:
    """A hole wider than any SLC-off gap inside the scene's outline (a missing WRS-2 row, a
    failed tile) is not restored: it stays outside the footprint, so other scenes fill it."""
    h, w = 300, 320
    gaps = simulate_slc_off_mask((h, w), angle_deg=25.0, seed=4)
    scene = apply_gaps(render_tile(2, 320)[:h], gaps)
    missing = np.zeros((h, w), bool)
    missing[120:170, :] = True  # a 50-row band across the scene: data above and below it
    scene[missing] = 0
    found = detect_gaps(scene)
    assert not (found & missing).any()
    assert not footprint_of(scene)[missing].any()
    away = ~binary_dilation(missing, iterations=GAP_HOLE_MAX_PX)  # gaps not touching the hole
    assert (found & gaps & away).sum() / (gaps & away).sum() > 0.97


# --------------------------------------------------------------------------------------------
# Harmonization
# --------------------------------------------------------------------------------------------


def test_harmonize_keeps_known_pixels_and_removes_a_colour_offset() -> None:
    img, gaps = _scene()
    damaged = apply_gaps(img, gaps)
    junk = np.random.default_rng(0).uniform(0, 255, img.shape)
    assert np.array_equal(harmonize(junk, damaged, gaps)[~gaps], img[~gaps])
    # Right texture, wrong colour (as a lossy autoencoder's output): the seams vanish, the
    # offset is corrected towards the known neighbours throughout the gaps.
    out = harmonize(img.astype(np.float64) + 40.0, damaged, gaps)
    assert np.array_equal(out[~gaps], img[~gaps])
    assert np.abs(out[gaps].astype(int) - img[gaps].astype(int)).max() <= 1


def test_harmonize_leaves_an_isolated_gap_region_as_generated() -> None:
    img = np.zeros((20, 20, 3), np.uint8)  # no data anywhere: nothing to harmonize against
    gaps = np.zeros((20, 20), bool)
    gaps[5:10, 5:10] = True
    generated = np.full((20, 20, 3), 77.0)
    out = harmonize(generated, img, gaps)
    assert (out[gaps] == 77).all() and (out[~gaps] == 0).all()


# --------------------------------------------------------------------------------------------
# Restoration API
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["DiffGF", "FillNodata"])
def test_restore_changes_only_gap_pixels(method: str, tiny: DiffGF) -> None:
    img, gaps = _scene()
    damaged = apply_gaps(img, gaps)
    damaged[:, :6] = 0  # outside the scene: stays 0, never counted as known
    gaps[:, :6] = False
    out = restore(damaged, gaps, method, tiny, seed=0, steps=2)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.array_equal(out[~gaps], damaged[~gaps])
    assert (out[gaps].max(axis=1) > 0).all()  # every gap pixel filled


def test_fillnodata_restores_a_smooth_image_closely() -> None:
    yy, xx = np.mgrid[0:80, 0:100]
    img = np.stack([60 + xx, 80 + yy, 100 + (xx + yy) // 2], -1).astype(np.uint8)
    gaps = simulate_slc_off_mask((80, 100), angle_deg=5.0, seed=0)
    out = restore(apply_gaps(img, gaps), gaps, "FillNodata")
    assert rmse(img, out, gaps) * 255 < 3.0


def test_diffgf_without_weights_fails_clearly(tmp_path: Path) -> None:
    img, gaps = _scene()
    with pytest.raises(MissingWeightsError, match="--diffgf FILE.*--restoration FillNodata"):
        restore(img, gaps, "DiffGF")
    with pytest.raises(MissingWeightsError, match="missing.safetensors do not exist"):
        restore(img, gaps, "DiffGF", tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="NSPI"):
        restore(img, gaps, "NSPI")


@pytest.mark.parametrize("layout", ["file", "pretrained"])
def test_save_load_round_trip_restores_identically(layout: str, tiny: DiffGF,
                                                   tmp_path: Path) -> None:
    img, gaps = _scene()
    damaged = apply_gaps(img, gaps)
    path = tmp_path / ("w.safetensors" if layout == "file" else "w")
    save_diffgf(tiny, path, layout=layout)
    loaded = load_diffgf(path)
    a = restore(damaged, gaps, "DiffGF", tiny, seed=7, steps=3)
    assert np.array_equal(a, restore(damaged, gaps, "DiffGF", loaded, seed=7, steps=3))
    assert np.array_equal(a, restore(damaged, gaps, "DiffGF", path, seed=7, steps=3))
    assert not np.array_equal(a, restore(damaged, gaps, "DiffGF", loaded, seed=8, steps=3))


def test_tiles_cover_the_scene_and_batching_does_not_change_results(tiny: DiffGF) -> None:
    img, gaps = _scene((70, 90))
    damaged = apply_gaps(img, gaps)
    known = ~gaps
    calls: list[tuple[int, int]] = []
    a = restore_array(tiny, damaged, gaps, known, seed=1, steps=2, tile=32, overlap=8, batch=1,
                      progress=lambda d, t: calls.append((d, t)))
    b = restore_array(tiny, damaged, gaps, known, seed=1, steps=2, tile=32, overlap=8, batch=5)
    assert np.array_equal(a, b)
    assert calls[-1][0] == calls[-1][1] == 12  # 3 x 4 overlapping windows, all with gaps
    assert np.array_equal(a[~gaps], damaged[~gaps])


def test_restore_scene_file_keeps_georeferencing(tmp_path: Path) -> None:
    img, gaps = _scene((64, 64))
    src, dst = tmp_path / "LE07_scene.tif", tmp_path / "restored.tif"
    transform = from_origin(2_300_000, -500_000, 30, 30)
    with rasterio.open(src, "w", driver="GTiff", width=64, height=64, count=3, dtype="uint8",
                       crs="EPSG:3031", transform=transform) as ds:
        ds.write(np.moveaxis(apply_gaps(img, gaps), -1, 0))
    result = restore_scene_file(src, dst, "FillNodata")
    with rasterio.open(dst) as ds:
        out = np.moveaxis(ds.read(), 0, -1)
        assert ds.crs.to_epsg() == 3031 and ds.transform == transform
    assert result.method == "FillNodata" and result.weights is None
    assert result.gap_pixels > 0.9 * gaps.sum()
    assert (out[gaps].max(axis=1) > 0).mean() > 0.9
    with pytest.raises(MissingWeightsError):
        restore_scene_file(src, tmp_path / "x.tif", "DiffGF")
    assert not (tmp_path / "x.tif").exists()


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------


def test_metrics_of_identical_images() -> None:
    img = render_tile(3, 48)
    m = restoration_metrics(img, img, np.ones((48, 48), bool))
    for scope in ("image", "gaps"):
        assert m[scope]["PSNR"] == math.inf and m[scope]["RMSE"] == 0.0
        assert m[scope]["SSIM"] == pytest.approx(1.0)
        assert m[scope]["UIQI"] == pytest.approx(1.0)
        assert m[scope]["CC"] == pytest.approx(1.0)


def test_metrics_known_values() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(20, 200, (40, 40, 3)).astype(np.uint8)
    b = a + 10
    assert rmse(a, b) == pytest.approx(10 / 255)
    assert psnr(a, b) == pytest.approx(20 * math.log10(255 / 10))
    assert cc(a, b) == pytest.approx(1.0)
    assert cc(a, (255 - a).astype(np.uint8)) == pytest.approx(-1.0)
    # Constant images: UIQI reduces to its luminance term 2 mx my / (mx^2 + my^2).
    c1, c2 = np.full((16, 16, 3), 100, np.uint8), np.full((16, 16, 3), 50, np.uint8)
    assert uiqi(c1, c1) == pytest.approx(1.0)
    assert uiqi(c1 + a[:16, :16] % 7, c2 + a[:16, :16] % 7) < 0.9
    # A doubled contrast keeps correlation but UIQI's contrast term 2 sx sy/(sx^2+sy^2) is 0.8.
    y = a.mean() + 2 * (a.astype(float) - a.mean())
    assert cc(a, y) == pytest.approx(1.0) and uiqi(a, y) < 0.8
    # Gap-only scope uses only the masked pixels.
    mask = np.zeros((40, 40), bool)
    mask[:10] = True
    d = a.copy()
    d[mask] = d[mask] + 20
    assert rmse(a, d, mask) == pytest.approx(20 / 255)
    assert rmse(a, d) == pytest.approx(math.sqrt(0.25 * 400) / 255)
    assert ssim(a, d, mask) < ssim(a, d) < 1.0


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


def test_one_training_step_lowers_the_loss(tiny: DiffGF) -> None:
    config = TrainConfig(batch=2, crop=32)
    images, masks, _ = step_batch(TileSampler(config), 0, 0)
    for loss_fn, net in ((lambda g: vae_loss(tiny, images, g, 1e-6), tiny.vae),
                         (lambda g: diffusion_loss(tiny, images, masks, g, 4.0), tiny.unet)):
        opt = torch.optim.SGD(net.parameters(), lr=0.05)
        before = loss_fn(torch.Generator().manual_seed(1))
        opt.zero_grad()
        before.backward()
        opt.step()
        after = loss_fn(torch.Generator().manual_seed(1))
        assert float(after) < float(before)


def test_resumed_training_is_identical(tmp_path: Path) -> None:
    config = TrainConfig(vae_steps=2, unet_steps=2, batch=1, crop=32, checkpoint_every=100)

    def fresh() -> DiffGF:
        return build_diffgf(TINY_VAE, TINY_UNET, seed=0)

    full, state_full = train(config, tmp_path / "a", model=fresh())
    train(config, tmp_path / "b", model=fresh(), stop_after=3)
    resumed, state_res = train(config, tmp_path / "b", resume=True)
    assert state_res.losses == state_full.losses and state_res.step == 4
    for k, v in full.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    assert (tmp_path / "a" / "loss_curve.png").stat().st_size > 1000
    final = load_diffgf(tmp_path / "a" / "diffgf.safetensors")
    assert final.meta["state"]["step"] == 4
    assert final.vae.config.scaling_factor != 1.0  # latent scale set after the VAE phase


def test_training_with_tile_workers_is_identical(tmp_path: Path) -> None:
    """Drawing tiles in worker processes (as a GPU run does) changes no number of the run."""
    config = TrainConfig(vae_steps=2, unet_steps=2, batch=1, crop=32, checkpoint_every=100)
    inline, state_inline = train(config, tmp_path / "a",
                                 model=build_diffgf(TINY_VAE, TINY_UNET, seed=0))
    pooled, state_pooled = train(config, tmp_path / "b",
                                 model=build_diffgf(TINY_VAE, TINY_UNET, seed=0), workers=1)
    assert state_pooled.losses == state_inline.losses
    for k, v in inline.state_dict().items():
        assert torch.equal(v, pooled.state_dict()[k]), k


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def test_evaluate_restoration_command(tiny: DiffGF, tmp_path: Path) -> None:
    runner = CliRunner()
    app = build_app()
    weights = save_diffgf(tiny, tmp_path / "tiny.safetensors")
    out = tmp_path / "eval.json"
    res = runner.invoke(app, ["evaluate-restoration", "--out", str(out), "--diffgf", str(weights),
                              "--synthetic", "2", "--size", "48", "--steps", "2"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert set(report["summary"]) == {"DiffGF", "FillNodata"}
    assert report["n_images"] == 2 and "not computed" in report["LPIPS"]
    assert set(report["summary"]["FillNodata"]["gaps"]) == {"PSNR", "SSIM", "UIQI", "CC", "RMSE"}
    res = runner.invoke(app, ["evaluate-restoration", "--out", str(tmp_path / "x.json")])
    assert res.exit_code == 1 and "--diffgf FILE" in res.output
    assert not (tmp_path / "x.json").exists()


def test_train_diffgf_command_writes_weights_and_curve(tmp_path: Path) -> None:
    data = tmp_path / "tiles"
    data.mkdir()
    for i in range(2):
        with rasterio.open(data / f"t{i}.tif", "w", driver="GTiff", width=40, height=40,
                           count=3, dtype="uint8") as ds:
            ds.write(np.moveaxis(render_tile(i, 40), -1, 0))
    out = tmp_path / "run"
    args = ["train-diffgf", "--out", str(out), "--data", str(data), "--vae-steps", "1",
            "--unet-steps", "1", "--batch", "1", "--crop", "32"]
    res = CliRunner().invoke(build_app(), args)
    assert res.exit_code == 0, res.output
    model = load_diffgf(out / "diffgf.safetensors")
    assert model.meta["train_config"]["data"] == str(data.resolve())
    assert (out / "loss_curve.png").exists()
    res = CliRunner().invoke(build_app(), args)  # refuses to overwrite a finished run
    assert res.exit_code == 1 and "--resume" in res.output


def test_segmentation_agreement_feeds_the_uncertainty_factors(tmp_path: Path) -> None:
    from producer.evaluation import read_precision_recall
    from producer.restoration.commands import _json_safe
    from producer.restoration.evaluate import evaluate, held_out_synthetic

    images = held_out_synthetic(2, 48)

    def dark(rgb: np.ndarray) -> np.ndarray:  # a crevasse-shadow "segmenter"
        return rgb.mean(axis=2) < 140

    report = evaluate(images, ["FillNodata"], segment=dark)
    seg = report["segmentation_agreement"]
    assert seg["method"] == "FillNodata"
    assert seg["tp"] + seg["fp"] + seg["fn"] + seg["tn"] == 2 * 48 * 48
    # Restoration only changes gap pixels, so maps differ at most there.
    gap_pixels = sum(r["gap_fraction"] for r in report["per_image"]) * 48 * 48
    assert seg["fp"] + seg["fn"] <= gap_pixels + 1e-6
    path = tmp_path / "restoration_eval.json"
    path.write_text(json.dumps(_json_safe(report)))
    _, precision, recall = read_precision_recall(path)
    assert (precision, recall) == (seg["precision"], seg["recall"])


# --------------------------------------------------------------------------------------------
# Crash safety: a set of files written one after the other is one save's or is refused
# --------------------------------------------------------------------------------------------


def _killed(*_args: object, **_kwargs: object) -> None:
    """Stands in for a write the process is killed in."""
    raise KeyboardInterrupt("killed")


def test_diffgf_weights_beside_the_json_of_another_save_are_refused(tiny: DiffGF,
                                                                    tmp_path: Path) -> None:
    """Re-saving over NAME.safetensors + NAME.json and dying between the two leaves new
    weights beside the old JSON (configs and meta of the other save): refused, not run."""
    path = tmp_path / "w.safetensors"
    save_diffgf(tiny, path, meta={"run": "old"})
    old_json = path.with_suffix(".json").read_text()
    save_diffgf(build_diffgf(TINY_VAE, TINY_UNET, seed=1), path, meta={"run": "new"})
    path.with_suffix(".json").write_text(old_json)  # the JSON write never happened
    with pytest.raises(ValueError, match=r"w\.safetensors is not the weights file w\.json"):
        load_diffgf(path)


def test_a_pretrained_folder_saved_half_way_is_refused(tiny: DiffGF, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Re-saving the save_pretrained layout over an older one and dying after vae/ leaves a new
    vae/ beside the old unet/: refused; so are subfolders taken from another save."""
    folder = tmp_path / "w"
    save_diffgf(tiny, folder, layout="pretrained")
    other = build_diffgf(TINY_VAE, TINY_UNET, seed=1)
    with monkeypatch.context() as patch:
        patch.setattr(other.unet, "save_pretrained", _killed)
        with pytest.raises(KeyboardInterrupt):
            save_diffgf(other, folder, layout="pretrained")
    with pytest.raises(ValueError, match="interrupted"):
        load_diffgf(folder)
    save_diffgf(other, folder, layout="pretrained")  # saved again: whole and loadable
    assert all(torch.equal(v, load_diffgf(folder).state_dict()[k])
               for k, v in other.state_dict().items())
    save_diffgf(tiny, tmp_path / "x", layout="pretrained")
    shutil.rmtree(folder / "unet")
    shutil.copytree(tmp_path / "x" / "unet", folder / "unet")
    with pytest.raises(ValueError, match=r"unet/ differ"):
        load_diffgf(folder)


def test_resume_refuses_a_checkpoint_killed_before_its_optimizer_state(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The step-2 networks and JSON are written, the optimizer state is not: resuming would
    pair step-2 weights with step-1 Adam moments (no longer the uninterrupted run); refused,
    naming both files."""
    import importlib

    train_module = importlib.import_module("producer.restoration.train")
    config = TrainConfig(vae_steps=2, unet_steps=1, batch=1, crop=32, checkpoint_every=1)
    out = tmp_path / "run"
    train(config, out, model=build_diffgf(TINY_VAE, TINY_UNET, seed=0), stop_after=1)
    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_file", _killed)
        with pytest.raises(KeyboardInterrupt):
            train(config, out, resume=True)
    assert load_diffgf(out / "checkpoint.safetensors").meta["state"]["step"] == 2
    with pytest.raises(ValueError, match=r"checkpoint\.optim\.safetensors was saved with other "
                                         r"weights than .*checkpoint\.safetensors \(step 2\)"):
        train(config, out, resume=True)
