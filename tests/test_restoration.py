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


# --------------------------------------------------------------------------------------------
# Gap geometry of whole Level-1 scenes and band-specific gaps
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 17.0, -20.0])
def test_gap_free_centre_keeps_the_mean_share_and_the_widest_gap(angle: float) -> None:
    """Level-1 products have no gap in about 20 % of the swath around the centre line (USGS);
    the profile keeps ~22 % missing and no gap wider than 14 px, and the default is the plain
    wedge (the masks the demo DiffGF was trained and evaluated on)."""
    from producer.slcoff import DEMO_GAP_FREE_CENTRE, _scene_frame

    shape = (1024, 1024)
    mask = simulate_slc_off_mask(shape, angle_deg=angle, seed=3,
                                 gap_free_centre=DEMO_GAP_FREE_CENTRE)
    across = np.abs(_scene_frame(shape, angle, 0.0)[0])
    half = 2.0 * across.mean()  # the swath half-width of a whole-swath array
    assert not mask[across < DEMO_GAP_FREE_CENTRE * half].any()
    assert abs(gap_fraction(mask) - 0.22) < 0.02
    widest = max(r for col in mask.T for r in _runs(col))  # along columns: 14 / cos(angle)
    assert widest <= math.ceil(14 / math.cos(math.radians(angle)))
    assert np.array_equal(simulate_slc_off_mask(shape, angle_deg=angle, seed=3),
                          simulate_slc_off_mask(shape, angle_deg=angle, seed=3,
                                                gap_free_centre=0.0))
    with pytest.raises(ValueError, match="gap_free_centre"):
        simulate_slc_off_mask(shape, angle_deg=angle, seed=3, gap_free_centre=0.5)


def _band_specific_scene(size: int = 128) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, scene, core gaps): bands 2 and 3 have the gaps, band 1 the same gaps one row
    lower (USGS gap masks are band-specific); one isolated pixel with a 0 band far from gaps."""
    yy, xx = np.mgrid[0:size, 0:size]
    truth = np.stack([150 + 40 * np.sin(xx / 9.0), 160 + 30 * np.cos(yy / 7.0),
                      200 + 0 * xx], -1).astype(np.uint8)
    gaps = simulate_slc_off_mask((size, size), angle_deg=0, seed=0, swath_half_width_px=3083,
                                 centre_offset_px=2900)
    scene = truth.copy()
    scene[gaps, 1:] = 0
    scene[np.roll(gaps, 1, axis=0), 0] = 0
    return truth, scene, gaps & np.roll(gaps, 1, axis=0)


def test_a_pixel_zero_in_some_bands_beside_a_gap_is_part_of_it() -> None:
    """At a gap's edge a pixel may be 0 in some bands only: it belongs to the gap (restored in
    every band) rather than being kept as known data that pulls the fill towards black. A
    band at 0 away from any gap is data."""
    from producer.slcoff import GAP_BAND_REACH_PX

    truth, scene, core = _band_specific_scene()
    far = np.argwhere(~binary_dilation(np.any(scene == 0, axis=2), iterations=6))
    lone = tuple(far[len(far) // 2])
    scene[lone][2] = 0
    found = detect_gaps(scene, np.ones(core.shape, bool))
    partial = np.any(scene == 0, axis=2) & ~np.all(scene == 0, axis=2)
    assert np.array_equal(found & ~partial, core)  # the spec's rule stays the core
    near = binary_dilation(core, np.ones((2 * GAP_BAND_REACH_PX + 1,) * 2, bool))
    assert np.array_equal(found & partial, partial & near)
    assert (found & partial).any() and not found[lone]
    out = restore(scene, found, "FillNodata")
    assert not np.any(out[found] == 0)  # no band left black in a restored pixel
    assert np.abs(out[found].astype(int) - truth[found]).mean() < 10
    assert np.array_equal(out[~found], scene[~found])


# --------------------------------------------------------------------------------------------
# DiffGF on a device, bounded memory
# --------------------------------------------------------------------------------------------


def test_sampling_runs_where_the_model_is(tiny: DiffGF) -> None:
    """The batch (built on the CPU) goes to the model's device: a model on another device
    ('meta' needs no GPU) samples there instead of failing on mixed devices."""
    from producer.restoration.diffgf import sample, tile_noise

    model = build_diffgf(TINY_VAE, TINY_UNET, seed=0).eval().to("meta")
    out = sample(model, torch.zeros(1, 3, 32, 32), torch.ones(1, 1, 32, 32),
                 tile_noise((4, 8, 8), 0, 0)[None], steps=2)
    assert out.device.type == "meta" and out.shape == (1, 3, 32, 32)


def test_restore_runs_diffgf_on_the_device_asked_for(tiny: DiffGF,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """``device`` moves the model there before sampling; the noise of a tile is drawn on the
    CPU, so the device changes no draw."""
    from producer.restoration import diffgf

    img, gaps = _scene()
    damaged = apply_gaps(img, gaps)
    moved: list[str] = []
    real_to = tiny.to
    monkeypatch.setattr(tiny, "to", lambda device: moved.append(str(device)) or real_to(device))
    a = restore(damaged, gaps, "DiffGF", tiny, seed=3, steps=2, device="cpu")
    assert moved == ["cpu"]
    assert np.array_equal(a, restore(damaged, gaps, "DiffGF", tiny, seed=3, steps=2))
    assert diffgf.tile_noise((4, 8, 8), 3, 1).device.type == "cpu"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_diffgf_on_cuda_matches_the_cpu_up_to_rounding(tiny: DiffGF) -> None:
    img, gaps = _scene((96, 96))
    damaged = apply_gaps(img, gaps)
    cpu = restore(damaged, gaps, "DiffGF", tiny, seed=1, steps=3, device="cpu")
    gpu = restore(damaged, gaps, "DiffGF", tiny, seed=1, steps=3, device="cuda")
    assert next(tiny.unet.parameters()).device.type == "cuda"
    assert np.array_equal(gpu[~gaps], damaged[~gaps])
    assert np.abs(gpu.astype(int) - cpu.astype(int)).max() <= 3


def _whole_scene_blend(model: DiffGF, rgb: np.ndarray, gaps: np.ndarray, known: np.ndarray,
                       seed: int, steps: int, tile: int, overlap: int, batch: int) -> np.ndarray:
    """The restoration as it was before bands (reference): float64 sums over the whole scene,
    the tiles touching a gap diffused ``batch`` at a time in row-major order."""
    from producer.restoration.diffgf import SamplingSettings, _generate, feather, tile_starts
    from producer.restoration.harmonize import harmonize_float

    h, w = gaps.shape
    acc, wsum = np.zeros((h, w, 3)), np.zeros((h, w))
    windows = [(r, c) for r in tile_starts(h, tile, overlap) for c in tile_starts(w, tile, overlap)]
    todo = [(i, rc) for i, rc in enumerate(windows)
            if gaps[rc[0]:rc[0] + tile, rc[1]:rc[1] + tile].any()]
    latent = (4, tile // model.factor, tile // model.factor)
    for start in range(0, len(todo), batch):
        chunk = todo[start:start + batch]
        # one batch's diffusion as production runs it; what is under test is the blending
        gen = _generate(model, rgb, known, chunk, tile, latent,
                        SamplingSettings(seed=seed, steps=steps, tile=tile, overlap=overlap))
        for j, (_, (r, c)) in enumerate(chunk):
            th, tw = min(tile, h - r), min(tile, w - c)
            sl = np.s_[r:r + th, c:c + tw]
            wt = feather(tile, overlap)[:th, :tw]
            acc[sl] += harmonize_float(gen[j, :th, :tw], rgb[sl], gaps[sl], known[sl]) * wt[
                ..., None]
            wsum[sl] += wt
    out = rgb.copy()
    filled = gaps & (wsum > 0)
    out[filled] = np.clip(np.rint(acc[filled] / wsum[filled][:, None]), 0, 255).astype(np.uint8)
    return out


@pytest.mark.parametrize("batch", [2, 4])
def test_tiles_are_blended_by_bands_in_float32_with_the_whole_scene_result(
        tiny: DiffGF, monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Memory: the float sums of the blend cover a band of tile rows (float32; a batch may
    reach into the next band), never the scene (float64 sums of the whole scene took ~49 B a
    pixel: 15.7 GiB for Amery); the result is the whole-scene blend's, to the grey level."""
    from producer.restoration import diffgf

    allocated: list[tuple[tuple[int, ...], np.dtype]] = []
    real = diffgf._band_accumulators

    def spy(rows: int, width: int) -> tuple[np.ndarray, np.ndarray]:
        acc, wsum = real(rows, width)
        allocated.extend([(acc.shape, acc.dtype), (wsum.shape, wsum.dtype)])
        return acc, wsum

    monkeypatch.setattr(diffgf, "_band_accumulators", spy)
    img, gaps = _scene((150, 70), seed=2)
    damaged = apply_gaps(img, gaps)
    damaged[:, :5] = 0  # outside the footprint: neither gap nor known
    gaps[:, :5] = False
    known = ~gaps & damaged.any(axis=2)
    out = restore_array(tiny, damaged, gaps, known, seed=4, steps=2, tile=32, overlap=8,
                        batch=batch)
    assert np.array_equal(out, _whole_scene_blend(tiny, damaged, gaps, known, 4, 2, 32, 8,
                                                  batch))
    assert np.array_equal(out[~gaps], damaged[~gaps])
    assert allocated and all(dtype == np.float32 and shape[0] <= 2 * 32
                             for shape, dtype in allocated)


def test_restoration_memory_does_not_grow_with_float_sums_of_the_scene(
        tiny: DiffGF, monkeypatch: pytest.MonkeyPatch) -> None:
    """Peak allocation (diffusion stubbed: the bookkeeping is measured) grows with the scene's
    height by the uint8 result only, 3 B a pixel: the float sums are a band's, whatever the
    height (whole-scene float64 sums added 32 B a pixel)."""
    import tracemalloc

    from producer.restoration import diffgf

    monkeypatch.setattr(diffgf, "sample", lambda model, image, unknown, noise, steps: image)

    def peak(h: int, w: int = 192) -> int:
        gaps = simulate_slc_off_mask((h, w), angle_deg=5.0, seed=1)
        rgb = np.random.default_rng(0).integers(1, 256, (h, w, 3), dtype=np.uint8)
        rgb[gaps] = 0
        known = ~gaps
        tracemalloc.start()
        try:
            out = restore_array(tiny, rgb, gaps, known, tile=64, overlap=16)
            top = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert np.array_equal(out[~gaps], rgb[~gaps])
        return top

    assert (peak(2048) - peak(1024)) / (1024 * 192) < 3.5


# --------------------------------------------------------------------------------------------
# Scene files, provenance facts, the shipped demo weights, demo evaluation
# --------------------------------------------------------------------------------------------


def test_restore_scene_file_reports_settings_and_writes_by_bands(tiny: DiffGF,
                                                                 tmp_path: Path) -> None:
    """DiffGF into a file (written by bands of tiles) gives ``restore``'s pixels; the result
    names the device, seed, DDIM steps, tile and overlap, the gaps and the tiles diffused."""
    img, gaps = _scene((300, 64))
    damaged = apply_gaps(img, gaps)
    src, dst = tmp_path / "LE07_scene.tif", tmp_path / "restored.tif"
    with rasterio.open(src, "w", driver="GTiff", width=64, height=300, count=3, dtype="uint8",
                       crs="EPSG:3031", transform=from_origin(0, 0, 30, 30), tiled=True,
                       blockxsize=16, blockysize=16, compress="lzw") as ds:
        ds.write(np.moveaxis(damaged, -1, 0))
    weights = save_diffgf(tiny, tmp_path / "tiny.safetensors")
    result = restore_scene_file(src, dst, "DiffGF", weights, seed=2, gaps=gaps, device="cpu",
                                steps=2)
    with rasterio.open(dst) as ds:
        out = np.moveaxis(ds.read(), 0, -1)
    known = ~gaps & damaged.any(axis=2)
    assert np.array_equal(out, restore_array(load_diffgf(weights), damaged, gaps, known, seed=2,
                                             steps=2))
    assert result.device == "cpu" and result.tiles == 2 and result.gap_pixels == gaps.sum()
    assert result.settings == {"seed": 2, "ddim_steps": 2, "ddim_eta": 0.0, "tile_px": 256,
                               "overlap_px": 64, "device": "cpu"}
    assert result.facts() == {"gap_pixels": int(gaps.sum()),
                              "gap_fraction": round(float(gaps.mean()), 6), "tiles": 2}


def test_the_shipped_demo_diffgf_passes_its_integrity_check(tmp_path: Path) -> None:
    """diffgf_demo.json records the sha256 of the weights beside it, so a weights file that
    is not the one it was written with is refused; the shipped pair loads."""
    from producer.provenance import file_sha256
    from producer.restoration import DEMO_WEIGHTS

    doc = json.loads(DEMO_WEIGHTS.with_suffix(".json").read_text())
    assert doc["weights_sha256"] == file_sha256(DEMO_WEIGHTS)
    assert load_diffgf(DEMO_WEIGHTS).meta["state"]["step"] == 10804
    copy = tmp_path / "diffgf_demo.safetensors"
    shutil.copy(DEMO_WEIGHTS.with_suffix(".json"), copy.with_suffix(".json"))
    copy.write_bytes(DEMO_WEIGHTS.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ValueError, match="is not the weights file diffgf_demo.json"):
        load_diffgf(copy)


def test_evaluate_restoration_on_demo_scenes(tmp_path: Path) -> None:
    """``--demo N`` scores the restoration of the demo source's own SLC-off scenes (their gaps;
    the reference is the same date rendered without gaps), as the model card reports."""
    from producer.restoration.evaluate import demo_scenes

    (scene,) = demo_scenes(1, 64)
    assert scene.gaps is not None and 0.1 < scene.gaps.mean() < 0.3
    assert scene.pixels.min() > 0  # complete, whole footprint
    out = tmp_path / "demo.json"
    res = CliRunner().invoke(build_app(), ["evaluate-restoration", "--out", str(out), "--demo",
                                           "2", "--size", "64", "--methods", "FillNodata"])
    assert res.exit_code == 0, res.output
    report = json.loads(out.read_text())
    assert report["n_images"] == 2 and report["data"] == "demo SLC-off scenes (64 px)"
    assert report["per_image"][0]["name"] == scene.name
    assert report["per_image"][0]["gap_fraction"] == pytest.approx(float(scene.gaps.mean()))
