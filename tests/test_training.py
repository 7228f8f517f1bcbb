"""Training, segmentation evaluation and uncertainty factors (issue 6)."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from safetensors.torch import load_file
from typer.testing import CliRunner

from catalog.uncertainty import (
    PAPER_EVALUATIONS,
    PAPER_RESTORATION,
    Evaluation,
    UncertaintyFactors,
    derive_factors,
)
from producer.cli import build_app
from producer.evaluation import Confusion, confusion, difference_map, evaluate_masks
from producer.segmentation.checkpoints import ModelInfo, load_checkpoint, save_checkpoint
from producer.segmentation.model import DamageSegmenter
from producer.training.augment import Augmentation, rotate
from producer.training.data import (
    IGNORE_TARGET,
    DemoTileDataset,
    TileDataset,
    check_label_encoding,
    data_hash,
    export_demo_tiles,
    read_label,
    read_split,
    write_split,
    write_tile,
)
from producer.training.losses import bced_loss, labels_to_targets
from producer.training.schedule import LRSchedule
from producer.training.train import MIN_INPUT, TrainConfig, model_logits, train, validate

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def synthetic_tile(seed: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A test-only stand-in for the demo renderer: bright ice, dark crevasse lines = damage."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 200, dtype=np.int16) + rng.integers(-20, 20, (size, size, 3))
    label = np.zeros((size, size), dtype=bool)
    for _ in range(3):
        if rng.random() < 0.5:
            row = int(rng.integers(2, size - 4))
            label[row:row + 3, :] = True
        else:
            col = int(rng.integers(2, size - 4))
            label[:, col:col + 3] = True
    rgb[label] -= 140
    return np.clip(rgb, 0, 255).astype(np.uint8), label


# ------------------------------------------------------------------------------------- loss


def test_bced_equals_hand_computed_value() -> None:
    # foreground logits ln3, -ln3, 0, ln3 -> p = .75, .25, .5, .75; labels 255, 0, 255, 0
    fg = torch.tensor([math.log(3), -math.log(3), 0.0, math.log(3)])
    l0 = torch.tensor([1.0, 2.0, -0.5, 0.0])
    logits = torch.stack([l0, l0 + fg]).reshape(1, 2, 2, 2)
    labels = torch.tensor([[255, 0], [255, 0]], dtype=torch.uint8)[None]
    bce = -(2 * math.log(0.75) + math.log(0.5) + math.log(0.25)) / 4
    dice = 1 - (2 * (0.75 + 0.5) + 1) / (2 + 2.25 + 1)
    loss = bced_loss(logits, labels_to_targets(labels))
    assert loss.item() == pytest.approx(bce + dice, abs=1e-6)
    assert bce + dice == pytest.approx(0.9970347, abs=1e-6)


def test_bced_upsamples_quarter_resolution_logits() -> None:
    logits = torch.zeros(2, 2, 4, 4)
    targets = torch.zeros(2, 16, 16)
    # p = 0.5 everywhere: BCE = ln 2, Dice = 1 - 1 / (256 + 1)
    assert bced_loss(logits, targets).item() == pytest.approx(math.log(2) + 1 - 1 / 257, 1e-6)


# --------------------------------------------------------------------------------- schedule


def test_schedule_hits_the_papers_learning_rates() -> None:
    s = LRSchedule()
    assert s.lr(0) == pytest.approx(1e-5, rel=1e-12)
    assert s.lr(10) == pytest.approx(5.5e-5, rel=1e-12)
    assert s.lr(20) == pytest.approx(1e-4, rel=1e-12)
    assert s.lr(60) == pytest.approx(7.5e-5, rel=1e-12)
    assert s.lr(100) == pytest.approx(5e-5, rel=1e-12)
    assert s.lr(199) == pytest.approx(5e-5, rel=1e-12)
    lrs = [s.lr(e) for e in range(200)]
    assert all(a < b for a, b in zip(lrs[:20], lrs[1:21], strict=True))
    assert all(a >= b for a, b in zip(lrs[20:100], lrs[21:101], strict=True))


def test_scheduler_drives_the_optimizer_per_epoch() -> None:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    s = LRSchedule(warmup_epochs=2, cosine_epochs=2)
    sched = s.scheduler(opt)
    seen = []
    for _ in range(6):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([s.lr(e) for e in range(6)], rel=1e-12)


# ----------------------------------------------------------------------------- augmentation


def test_rotation_keeps_labels_binary_and_quarter_turn_is_exact() -> None:
    image = torch.rand(3, 32, 32)
    label = (torch.rand(32, 32) > 0.7).float()
    img90, lab90 = rotate(image, label, 90.0)
    assert torch.equal(lab90, torch.rot90(label, 1, (0, 1))) or torch.equal(
        lab90, torch.rot90(label, -1, (0, 1)))
    img, lab = rotate(image, label, 33.0)
    assert set(lab.unique().tolist()) <= {0.0, 1.0}
    # nearest for the image too (the authors' rotation): every pixel is an input pixel or 0
    assert set(img.unique().tolist()) <= set(image.unique().tolist()) | {0.0}


def test_augmentation_is_reproducible_and_within_bounds() -> None:
    image, label = torch.rand(3, 16, 16), (torch.rand(16, 16) > 0.5).float()
    aug = Augmentation()
    a = aug(image, label, torch.Generator().manual_seed(5))
    b = aug(image, label, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    brightened = 0
    for seed in range(40):
        out, _ = aug(torch.full((3, 8, 8), 0.5), torch.zeros(8, 8),
                     torch.Generator().manual_seed(seed))
        centre = out[:, 4, 4]
        assert 0.5 * 0.75 - 1e-6 <= centre.min() <= 0.5 * 1.25 + 1e-6
        brightened += not torch.allclose(centre, torch.full((3,), 0.5))
    assert 8 < brightened < 32  # brightness applied with p = 0.5
    assert aug(torch.ones(3, 8, 8), torch.zeros(8, 8),
               torch.Generator().manual_seed(0))[0].max() <= 1.0


# -------------------------------------------------------------------------------------- data


def _tiles(root: Path, count: int = 10, size: int = 64) -> Path:
    for i in range(count):
        write_tile(root, f"tile_{i:02d}", *synthetic_tile(i, size))
    return root


def test_split_is_reproducible_80_20(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "data")
    split = write_split(root, seed=3)
    assert (len(split["train"]), len(split["test"])) == (8, 2)
    assert read_split(root, "train") == split["train"]
    with pytest.raises(FileExistsError):
        write_split(root, seed=3)
    assert write_split(root, seed=3, force=True) == split
    assert set(split["train"]).isdisjoint(split["test"])


def test_tile_dataset_reads_authors_layout(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "data", count=5)
    with rasterio.open(root / "labels" / "tile_00_mask.tif") as src:
        assert src.count == 1 and set(np.unique(src.read(1))) == {0, 255}
    write_split(root, seed=0)
    ds = TileDataset(root, "train")
    image, target = ds[0]
    assert image.shape == (3, 64, 64) and image.dtype == torch.float32
    assert image.min() >= 0 and image.max() <= 1 and set(target.unique().tolist()) == {0.0, 1.0}
    rgb, label = synthetic_tile(int(ds.names[0].split("_")[1]), 64)
    assert torch.equal(image, torch.from_numpy(np.moveaxis(rgb, -1, 0)).float() / 255)
    assert torch.equal(target.bool(), torch.from_numpy(label))
    before = data_hash(root, ds.names)
    write_tile(root, ds.names[0], rgb[::-1].copy(), label)
    assert data_hash(root, ds.names) != before


def test_demo_dataset_is_deterministic_and_exportable(tmp_path: Path) -> None:
    a = DemoTileDataset(4, 64, first_seed=7, augment=Augmentation(), seed=1,
                        render=synthetic_tile)
    b = DemoTileDataset(4, 64, first_seed=7, augment=Augmentation(), seed=1,
                        render=synthetic_tile)
    assert torch.equal(a[2][0], b[2][0]) and a.fingerprint() == b.fingerprint()
    a.set_epoch(1)
    assert not torch.equal(a[2][0], b[2][0])  # a new epoch draws new augmentations
    split = export_demo_tiles(tmp_path / "demo", 5, 64, first_seed=7, render=synthetic_tile)
    assert len(split["train"]) == 4 and len(split["test"]) == 1
    assert (tmp_path / "demo" / "images" / "demo_000007.tif").exists()


# -------------------------------------------------------------------------------- metrics


def test_metrics_follow_equations_4_to_9() -> None:
    c = Confusion(tp=8, fp=2, fn=4, tn=86)
    m = c.metrics()
    assert m["iou_damage"] == pytest.approx(8 / 14)
    assert m["iou_background"] == pytest.approx(86 / 92)
    assert m["miou"] == pytest.approx((8 / 14 + 86 / 92) / 2)
    assert m["oa"] == pytest.approx(94 / 100)
    assert m["precision"] == pytest.approx(0.8) and m["recall"] == pytest.approx(8 / 12)
    assert m["f1"] == pytest.approx(2 * 0.8 * (8 / 12) / (0.8 + 8 / 12))
    assert math.isnan(Confusion(tn=5).metrics()["precision"])
    assert Confusion(fp=3, fn=4, tn=5).metrics()["f1"] == 0.0  # all wrong: 0, not "n/a"
    assert Confusion(fn=4, tn=5).metrics()["f1"] == 0.0  # nothing predicted, damage missed
    assert math.isnan(Confusion(tn=5).metrics()["f1"])  # no damage anywhere: undefined


masks = st.integers(1, 12).flatmap(lambda h: st.integers(1, 12).flatmap(
    lambda w: st.tuples(*(st.lists(st.lists(st.booleans(), min_size=w, max_size=w),
                                   min_size=h, max_size=h) for _ in range(2)))))


@settings(max_examples=60, deadline=None)
@given(st.lists(masks, min_size=1, max_size=4))
def test_pooled_counts_equal_an_independent_count(pairs: list) -> None:
    arrays = [(f"i{k}", np.array(p), np.array(lab)) for k, (p, lab) in enumerate(pairs)]
    result = evaluate_masks("set", arrays)
    # independent count: bincount of 2*label + prediction -> [TN, FP, FN, TP]
    codes = np.concatenate([(2 * lab.astype(int) + p.astype(int)).ravel()
                            for _, p, lab in arrays])
    tn, fp, fn, tp = np.bincount(codes, minlength=4)
    assert result.pooled == Confusion(int(tp), int(fp), int(fn), int(tn))
    for name, p, lab in arrays:
        tn, fp, fn, tp = np.bincount((2 * lab.astype(int) + p.astype(int)).ravel(), minlength=4)
        assert result.images[name] == Confusion(int(tp), int(fp), int(fn), int(tn))


def test_difference_map_colours_like_fig7() -> None:
    pred = np.array([[1, 1], [0, 0]], bool)
    lab = np.array([[1, 0], [1, 0]], bool)
    diff = difference_map(pred, lab)
    assert diff[0, 0].tolist() == [255, 255, 255]  # TP white
    assert diff[0, 1].tolist() == [255, 0, 0]  # FP red
    assert diff[1, 0].tolist() == [0, 0, 255]  # FN blue
    assert diff[1, 1].tolist() == [0, 0, 0]  # TN black
    assert confusion(pred, lab, valid=np.array([[1, 0], [1, 1]], bool)) == Confusion(1, 0, 1, 1)


# --------------------------------------------------------------------------- uncertainty


def test_paper_factors_from_the_papers_numbers() -> None:
    f = derive_factors(PAPER_EVALUATIONS, PAPER_RESTORATION)
    assert round(f.lambda_min, 3) == 0.971 and round(f.lambda_max, 3) == 1.059
    assert round(f.lambda_restoration, 3) == 1.044
    assert round(f.lambda_upper_restored, 3) == 1.105


def _eval_folder(root: Path, name: str, tp: int, fp: int, fn: int) -> Path:
    """One label and one prediction map (0/255) with exactly tp/fp/fn; the rest is TN."""
    side = math.isqrt(tp + fp + fn) + 8
    lab = np.zeros(side * side, bool)
    pred = np.zeros(side * side, bool)
    lab[:tp] = pred[:tp] = True
    pred[tp:tp + fp] = True
    lab[tp + fp:tp + fp + fn] = True
    rgb = np.zeros((side, side, 3), np.uint8)
    write_tile(root, name, rgb, lab.reshape(side, side))
    write_tile(root / "pred", name, rgb, pred.reshape(side, side))  # pred/labels/NAME_mask
    (root / "test.txt").write_text(f"{name}\n")
    return root


def test_evaluate_and_uncertainty_commands_derive_the_papers_factors(tmp_path: Path) -> None:
    app = build_app()
    # pooled counts with exactly the paper's precision/recall (Table 3 and 5)
    sets = {"test": (8164, 1836, 1544), "totten": (8384, 1616, 2207),
            "restored": (9691, 309, 745)}
    files = {}
    for key, (tp, fp, fn) in sets.items():
        root = _eval_folder(tmp_path / key, key, tp, fp, fn)
        res = runner.invoke(app, ["evaluate", str(root), "--predictions", str(root / "pred"),
                                  "--out", str(tmp_path / f"eval_{key}"), "--name", key])
        assert res.exit_code == 0, res.output
        files[key] = tmp_path / f"eval_{key}" / "evaluation.json"
        data = json.loads(files[key].read_text())
        assert data["pooled"]["tp"] == tp and data["pooled"]["fp"] == fp
        assert data["precision"] == pytest.approx(tp / (tp + fp))
        assert data["recall"] == pytest.approx(tp / (tp + fn))
        png = tmp_path / f"eval_{key}" / "difference" / f"{key}_difference.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads(files["test"].read_text())["precision"] == pytest.approx(0.8164)
    assert json.loads(files["totten"].read_text())["recall"] == pytest.approx(0.7916, abs=5e-5)
    out = tmp_path / "factors.json"
    res = runner.invoke(app, ["uncertainty", str(files["test"]), str(files["totten"]),
                              "--restoration", str(files["restored"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    f = UncertaintyFactors.from_json(out.read_text())
    assert (round(f.lambda_min, 3), round(f.lambda_max, 3)) == (0.971, 1.059)
    assert round(f.lambda_restoration, 3) == 1.044
    assert round(f.lambda_upper_restored, 3) == 1.105
    assert f.sources == ("test", "totten", "restored")


def test_uncertainty_without_evaluations_writes_the_papers_factors(tmp_path: Path) -> None:
    res = runner.invoke(build_app(), ["uncertainty", "--out", str(tmp_path / "f.json")])
    assert res.exit_code == 0, res.output
    f = UncertaintyFactors.from_json((tmp_path / "f.json").read_text())
    assert round(f.lambda_upper_restored, 3) == 1.105


def test_uncertainty_rejects_an_evaluation_without_recall(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"name": "x", "precision": 0.9, "recall": None}))
    res = runner.invoke(build_app(), ["uncertainty", str(bad), "--out", str(tmp_path / "f")])
    assert res.exit_code != 0 and "recall" in res.output
    assert not (tmp_path / "f").exists()


def test_evaluation_factor_is_precision_over_recall() -> None:
    assert Evaluation("x", 0.9, 0.6).factor == pytest.approx(1.5)
    with pytest.raises(ValueError, match="finite"):
        Evaluation("x", float("nan"), 0.6).factor  # noqa: B018 - the property raises


def test_uncertainty_rejects_a_restoration_report_without_damage(tmp_path: Path) -> None:
    """A restoration report whose maps show no damage has precision/recall "nan": a clear
    error, never a factors file holding NaN (not JSON) that fails later."""
    report = tmp_path / "restoration.json"
    report.write_text(json.dumps({"segmentation_agreement": {
        "method": "DiffGF", "precision": "nan", "recall": "nan"}}))
    out = tmp_path / "f.json"
    res = runner.invoke(build_app(), ["uncertainty", "--restoration", str(report), "--out",
                                      str(out)])
    assert res.exit_code != 0 and "not numbers" in " ".join(res.output.split())
    assert not out.exists()


# ------------------------------------------------------------------------------ training


#: A tiny MiT (widths divisible by the 1/2/5/8 attention heads) for fast tests.
TINY = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 40, 64], "decoder_hidden_size": 32}


def _config(out: Path, **changes: object) -> TrainConfig:
    """A tiny demo-tile run on the synthetic renderer: a tiny MiT, 64² tiles."""
    base = dict(out=str(out), demo=True, variant="b0", epochs=2, batch_size=4, demo_tiles=8,
                demo_val_tiles=4, demo_size=64, start_lr=1e-3, peak_lr=2e-3, final_lr=1e-3,
                warmup_epochs=1, cosine_epochs=2, seed=11, threads=1, model_overrides=TINY)
    return TrainConfig(**(base | changes))


def test_training_lowers_the_loss_and_writes_checkpoints(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    state = train(_config(tmp_path / "run", epochs=3, augment=False, pth=True),
                  render=synthetic_tile, console=Console(quiet=True))
    losses = [h["train_loss"] for h in state.history]
    assert losses[-1] < losses[0]
    run = tmp_path / "run"
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json", "best.pth",
                 "history.json", "curves.png", "last_state.pt"):
        assert (run / name).exists(), name
    info = json.loads((run / "best.json").read_text())
    assert len(info["data_sha256"]) == 64 and 0 <= info["metrics"]["miou"] <= 1
    assert info["training"]["epoch"] == state.best_epoch
    assert info["training"]["config"]["batch_size"] == 4
    model, _ = load_checkpoint(run / "best.safetensors")
    authors, authors_info = load_checkpoint(run / "best.pth")
    assert authors_info.source_format == "pth-transformers4"  # the authors' 4.x key layout
    ours, theirs = model.state_dict(), authors.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)

    # evaluate --model: predictions with the segmentation package's inference, JSON + PNGs
    data = tmp_path / "heldout"
    export_demo_tiles(data, 3, 64, first_seed=500, render=synthetic_tile)
    res = runner.invoke(build_app(), ["evaluate", str(data), "--model",
                                      str(run / "best.safetensors"), "--split", "all",
                                      "--out", str(tmp_path / "eval"), "--save-predictions"])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert sorted(doc["images"]) == ["demo_000500", "demo_000501", "demo_000502"]
    assert doc["pooled"]["tp"] + doc["pooled"]["fp"] + doc["pooled"]["fn"] \
        + doc["pooled"]["tn"] == 3 * 64 * 64
    assert len(list((tmp_path / "eval" / "difference").glob("*.png"))) == 3
    # the saved maps re-evaluate to the same counts
    res = runner.invoke(build_app(), ["evaluate", str(data), "--predictions",
                                      str(tmp_path / "eval" / "predictions"), "--split", "all",
                                      "--out", str(tmp_path / "eval2")])
    assert res.exit_code == 0, res.output
    again = json.loads((tmp_path / "eval2" / "evaluation.json").read_text())
    assert again["pooled"] == doc["pooled"]


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    quiet = Console(quiet=True)
    train(_config(tmp_path / "full", epochs=2), render=synthetic_tile, console=quiet)
    train(_config(tmp_path / "split", epochs=1), render=synthetic_tile, console=quiet)
    with pytest.raises(FileExistsError):
        train(_config(tmp_path / "split", epochs=2), render=synthetic_tile, console=quiet)
    with pytest.raises(ValueError, match="seed"):
        train(_config(tmp_path / "split", epochs=2, seed=12), resume=True,
              render=synthetic_tile, console=quiet)
    state = train(_config(tmp_path / "split", epochs=2), resume=True, render=synthetic_tile,
                  console=quiet)
    assert [h["epoch"] for h in state.history] == [0, 1]
    full = load_file(tmp_path / "full" / "last.safetensors")
    split = load_file(tmp_path / "split" / "last.safetensors")
    assert full.keys() == split.keys()
    assert all(torch.equal(full[k], split[k]) for k in full)


def test_cli_split_export_train_and_resume_with_the_demo_renderer(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    app = build_app()
    tiles = tmp_path / "tiles"
    res = runner.invoke(app, ["export-demo-tiles", str(tiles), "--count", "5", "--size", "64"])
    assert res.exit_code == 0, res.output
    with rasterio.open(tiles / "images" / "demo_000000.tif") as src:
        assert (src.count, src.dtypes[0], src.shape) == (3, "uint8", (64, 64))
    res = runner.invoke(app, ["split-data", str(tiles)])
    assert res.exit_code != 0 and "--force" in res.output  # export wrote a split already
    res = runner.invoke(app, ["split-data", str(tiles), "--seed", "1", "--force"])
    assert res.exit_code == 0 and "train: 4" in res.output
    run = tmp_path / "run"
    args = ["train", "--demo", "--variant", "b0", "--demo-tiles", "4", "--demo-val-tiles", "2",
            "--demo-size", "64", "--batch-size", "4", "--threads", "1", "--out", str(run)]
    res = runner.invoke(app, [*args, "--epochs", "1"])
    assert res.exit_code == 0, res.output
    assert (run / "best.safetensors").exists() and (run / "curves.png").exists()
    res = runner.invoke(app, [*args, "--epochs", "2"])
    assert res.exit_code != 0 and "--resume" in res.output
    res = runner.invoke(app, ["train", "--resume", "--out", str(run), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert history[1]["lr"] == pytest.approx(LRSchedule().lr(1))


def test_resume_is_the_run_in_out_with_its_own_settings(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A run started as ``--out run`` from one folder resumes from anywhere by its path, and
    options not given again keep the run's values (not the command's defaults)."""
    torch.set_num_threads(1)
    app = build_app()
    (tmp_path / "a").mkdir()
    monkeypatch.chdir(tmp_path / "a")
    res = runner.invoke(app, ["train", "--demo", "--variant", "b0", "--demo-tiles", "4",
                              "--demo-val-tiles", "2", "--demo-size", "64", "--batch-size", "4",
                              "--threads", "1", "--out", "run", "--epochs", "1", "--pth"])
    assert res.exit_code == 0, res.output
    run = tmp_path / "a" / "run"
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", "--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0]  # 1 epoch, as the run was started
    saved = torch.load(run / "last_state.pt", weights_only=False)["config"]
    assert saved["epochs"] == 1 and saved["pth"] is True
    # repeating --demo changes nothing; a setting that differs from the run's is refused
    res = runner.invoke(app, ["train", "--demo", "--resume", "--out", str(run)])
    assert res.exit_code == 0, res.output
    assert torch.load(run / "last_state.pt", weights_only=False)["config"]["epochs"] == 1
    res = runner.invoke(app, ["train", "--demo", "--resume", "--out", str(run),
                              "--variant", "b2"])
    assert res.exit_code != 0 and "different variant" in " ".join(res.output.split())


def test_init_from_a_checkpoint_with_other_classes_keeps_the_encoder(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    ade = DamageSegmenter.build("b0", num_labels=150, **TINY)
    save_checkpoint(ade, tmp_path / "ade.safetensors", ModelInfo(name="ade", variant="custom"))
    state = train(_config(tmp_path / "run", epochs=1, init=str(tmp_path / "ade.safetensors"),
                          start_lr=1e-12, peak_lr=1e-12, final_lr=1e-12),
                  render=synthetic_tile, console=Console(quiet=True))
    assert state.epoch == 0
    model, info = load_checkpoint(tmp_path / "run" / "last.safetensors")
    assert info.config["num_labels"] == 2
    ours, theirs = model.state_dict(), ade.state_dict()
    key = "model.segformer.stages.0.patch_embeddings.proj.weight"
    assert torch.allclose(ours[key], theirs[key], atol=1e-6)  # encoder kept (lr ~ 0)


def test_uncertainty_reads_the_restoration_reports_segmentation_agreement(
        tmp_path: Path) -> None:
    report = tmp_path / "restoration.json"
    report.write_text(json.dumps({"segmentation_agreement": {
        "method": "DiffGF", "precision": 0.9691, "recall": 0.9286, "miou": 0.945}}))
    out = tmp_path / "f.json"
    res = runner.invoke(build_app(), ["uncertainty", "--restoration", str(report), "--out",
                                      str(out)])
    assert res.exit_code == 0, res.output
    f = UncertaintyFactors.from_json(out.read_text())
    assert (round(f.lambda_min, 3), round(f.lambda_max, 3)) == (0.971, 1.059)  # paper's P/R
    assert round(f.lambda_restoration, 3) == 1.044 and f.sources[-1] == "restoration"


def _pooled_counts(runner: CliRunner, data: Path) -> dict[str, int]:
    """Pooled confusion counts of ``evaluate DATA --predictions DATA/maps``."""
    res = runner.invoke(build_app(), ["evaluate", str(data), "--predictions",
                                      str(data / "maps"), "--out", str(data / "ev")])
    assert res.exit_code == 0, res.output
    pooled = json.loads((data / "ev" / "evaluation.json").read_text())["pooled"]
    return {k: pooled[k] for k in ("tp", "fp", "fn", "tn")}


def test_evaluate_skips_nodata_pixels_of_type1_maps(tmp_path: Path) -> None:
    label = np.array([[1, 1, 0, 0]] * 4, bool)
    write_tile(tmp_path, "a", np.zeros((4, 4, 3), np.uint8), label)
    (tmp_path / "test.txt").write_text("a\n")
    pred = np.array([[1, 0, 1, 0]] * 4, np.uint8)
    pred[:, 3] = 255  # outside the effective extent
    profile = {"driver": "GTiff", "width": 4, "height": 4, "count": 1, "dtype": "uint8",
               "nodata": 255}
    (tmp_path / "maps").mkdir()
    with rasterio.open(tmp_path / "maps" / "a.tif", "w", **profile) as dst:
        dst.write(pred[None])
    assert _pooled_counts(runner, tmp_path) == {"tp": 4, "fp": 4, "fn": 4, "tn": 0}


# ------------------------------------------------------------------- regression: review fixes


def _label_file(path: Path, pixels: np.ndarray, nodata: float | None = None) -> None:
    """A 1-band uint8 label raster with an optional nodata tag."""
    profile = {"driver": "GTiff", "width": pixels.shape[1], "height": pixels.shape[0],
               "count": 1, "dtype": "uint8", "nodata": nodata}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels.astype(np.uint8)[None])


def test_label_nodata_is_ignored_by_the_loss_and_the_metrics(tmp_path: Path) -> None:
    """Type-1 labels (0/1, nodata 255): nodata pixels count in neither the BCED loss (training
    and validation) nor evaluate's metrics."""
    label = np.array([[1, 1, 0, 0]] * 4, np.uint8)
    label[0] = 255  # top row: nodata
    write_tile(tmp_path, "a", np.zeros((4, 4, 3), np.uint8), label == 1)
    _label_file(tmp_path / "labels" / "a_mask.tif", label, nodata=255)
    (tmp_path / "test.txt").write_text("a\n")
    _, target = TileDataset(tmp_path, "test")[0]
    assert target[0].tolist() == [IGNORE_TARGET] * 4 and target[1].tolist() == [1, 1, 0, 0]

    logits = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))
    expected = bced_loss(logits[..., 1:, :], target[None, 1:, :])
    assert bced_loss(logits, target[None]).item() == pytest.approx(expected.item(), abs=1e-6)
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    valid[:, 0] = False
    assert bced_loss(logits, target[None].clamp(min=0), valid=valid).item() == pytest.approx(
        expected.item(), abs=1e-6)

    class Constant(torch.nn.Module):  # damage everywhere
        def forward(self, images: torch.Tensor) -> torch.Tensor:
            out = torch.zeros(images.shape[0], 2, *images.shape[-2:])
            out[:, 1] = 1.0
            return out

    _, counts = validate(Constant(), TileDataset(tmp_path, "test"), 1, torch.device("cpu"))
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (6, 6, 0, 0)  # 12 valid pixels

    pred = np.array([[1, 0, 1, 0]] * 4, np.uint8) * 255
    (tmp_path / "maps").mkdir()
    _label_file(tmp_path / "maps" / "a.tif", pred)
    assert _pooled_counts(runner, tmp_path) == {"tp": 3, "fp": 3, "fn": 3, "tn": 3}


def test_label_values_outside_the_encodings_are_refused(tmp_path: Path) -> None:
    label = np.where(synthetic_tile(0, 8)[1], 2, 1).astype(np.uint8)  # class-index export
    write_tile(tmp_path, "a", np.zeros((8, 8, 3), np.uint8), label > 1)
    _label_file(tmp_path / "labels" / "a_mask.tif", label)
    (tmp_path / "test.txt").write_text("a\n")
    with pytest.raises(ValueError, match="a_mask.tif: label values 1, 2 .*0/255 or 0/1"):
        TileDataset(tmp_path, "test")[0]
    (tmp_path / "maps").mkdir()
    _label_file(tmp_path / "maps" / "a.tif", label)
    res = runner.invoke(build_app(), ["evaluate", str(tmp_path), "--predictions",
                                      str(tmp_path / "maps"), "--out", str(tmp_path / "ev")])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "a_mask.tif: label values 1, 2" in out, res.output
    assert "0/255 or 0/1" in out and not (tmp_path / "ev" / "evaluation.json").exists()


def test_label_nodata_tags_that_would_hide_damage_or_background_are_refused(
        tmp_path: Path) -> None:
    """A 0/255 mask tagged nodata 0 would lose its background, tagged 255 its damage, to the
    ignore mask: refused (the second for a set of labels none of which holds 1), while a
    type 1 tile without damage but with NoData (0 and 255, nodata 255) is accepted."""
    mask = np.where(synthetic_tile(0, 8)[1], 255, 0).astype(np.uint8)
    path = tmp_path / "a_mask.tif"
    _label_file(path, mask, nodata=0)
    with pytest.raises(ValueError, match="tagged nodata 0.*-unsetnodata"):
        read_label(path)
    _label_file(path, mask, nodata=255)  # alone: a type 1 tile without damage
    damage, valid = read_label(path)
    assert not damage.any() and valid is not None and valid.sum() == (mask == 0).sum()
    with pytest.raises(ValueError, match="none holds damage as 1.*-unsetnodata"):
        check_label_encoding([path])
    type1 = np.where(mask == 255, 1, 0).astype(np.uint8)
    type1[:2] = 255
    _label_file(tmp_path / "b_mask.tif", type1, nodata=255)
    check_label_encoding([path, tmp_path / "b_mask.tif"])  # a set of type 1 tiles: fine
    _label_file(path, mask)  # without the tag: the authors' 0/255 mask
    damage, valid = read_label(path)
    assert valid is None and damage.sum() == (mask == 255).sum() > 0


def test_train_refuses_images_and_labels_of_different_sizes(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "data", count=5)
    write_split(root, seed=0)
    small = np.zeros((48, 64), np.uint8)
    for name in read_split(root, "train"):
        _label_file(root / "labels" / f"{name}_mask.tif", small)
    with pytest.raises(ValueError, match=r"images/tile_\d\d.tif is 64×64 but .*_mask.tif is "
                                         "48×64"):
        TileDataset(root, "train")
    res = runner.invoke(build_app(), ["train", str(root), "--variant", "b0", "--epochs", "1",
                                      "--threads", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "48×64" in res.output and "images/tile_" in res.output
    assert not (tmp_path / "run" / "last.safetensors").exists()


def test_init_checkpoint_variant_must_match_the_asked_variant(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    b0 = tmp_path / "b0.safetensors"
    save_checkpoint(DamageSegmenter.build("b0"), b0, ModelInfo(name="b0", variant="b0"))
    app = build_app()
    args = ["train", "--demo", "--demo-tiles", "4", "--demo-val-tiles", "2", "--demo-size",
            "64", "--batch-size", "4", "--threads", "1", "--epochs", "1", "--init", str(b0)]
    res = runner.invoke(app, [*args, "--variant", "b2", "--out", str(tmp_path / "r2")])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "MiT-b0" in out and "--variant b2" in out, res.output
    assert not (tmp_path / "r2" / "last.json").exists()
    with pytest.raises(ValueError, match="MiT-b0"):  # the library refuses too
        train(TrainConfig(out=str(tmp_path / "r3"), demo=True, variant="b2", init=str(b0)))
    res = runner.invoke(app, [*args, "--out", str(tmp_path / "r0")])  # variant left out
    assert res.exit_code == 0, res.output
    info = json.loads((tmp_path / "r0" / "last.json").read_text())
    assert info["variant"] == info["training"]["config"]["variant"] == "b0"


def test_a_run_recorded_with_another_variant_still_resumes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier versions trained a b0 --init under the default variant b2 and recorded b2: the
    run's own last checkpoint is what it trained, so resuming it is not refused."""
    torch.set_num_threads(1)
    b0 = tmp_path / "b0.safetensors"
    save_checkpoint(DamageSegmenter.build("b0"), b0, ModelInfo(name="b0", variant="b0"))
    config = TrainConfig(out=str(tmp_path / "old"), demo=True, demo_tiles=4, demo_val_tiles=2,
                         demo_size=64, batch_size=4, threads=1, epochs=1, variant="b2",
                         init=str(b0))
    with monkeypatch.context() as patch:  # the earlier version: no variant check
        patch.setattr("producer.training.train._check_variant", lambda *args: None)
        train(config)
    first = json.loads((tmp_path / "old" / "last.json").read_text())["training"]["epoch"]
    train(replace(config, epochs=2), resume=True)
    assert json.loads((tmp_path / "old" / "last.json").read_text())["training"]["epoch"] == \
        first + 1


def test_export_demo_tiles_keeps_an_existing_split_unless_forced(tmp_path: Path) -> None:
    root = tmp_path / "demo"
    export_demo_tiles(root, 6, 32, render=synthetic_tile)
    split = write_split(root, seed=3, test_fraction=0.34, val_fraction=0.34, force=True)
    assert export_demo_tiles(root, 6, 32, render=synthetic_tile) == split
    assert read_split(root, "val") == split["val"] and read_split(root, "test") == split["test"]
    forced = export_demo_tiles(root, 6, 32, render=synthetic_tile, force=True)
    assert not forced["val"] and not (root / "val.txt").exists()


def test_evaluate_refuses_an_empty_split_and_labels_as_predictions(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "data", count=3)
    write_split(root, seed=0)
    app = build_app()
    res = runner.invoke(app, ["evaluate", str(root), "--predictions", str(root), "--split",
                              "all", "--out", str(tmp_path / "self")])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "_mask.tif: the prediction is the label file itself" in out
    assert not (tmp_path / "self" / "evaluation.json").exists()
    (root / "test.txt").write_text("")
    res = runner.invoke(app, ["evaluate", str(root), "--predictions", str(root / "pred"),
                              "--out", str(tmp_path / "empty")])
    assert res.exit_code == 1 and "test.txt lists no images" in res.output, res.output
    assert not (tmp_path / "empty" / "evaluation.json").exists()


def test_evaluate_and_train_input_errors_are_one_line_messages(tmp_path: Path) -> None:
    root = _tiles(tmp_path / "data", count=3)
    (root / "test.txt").write_text("tile_00\ntile_01\n")
    model = tmp_path / "m.safetensors"
    save_checkpoint(DamageSegmenter.build("b0", **TINY), model,
                    ModelInfo(name="m", variant="custom"))
    app = build_app()
    (root / "labels" / "tile_01_mask.tif").unlink()
    res = runner.invoke(app, ["evaluate", str(root), "--model", str(model), "--threads", "1",
                              "--out", str(tmp_path / "e1")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "tile_01_mask.tif: label missing" in " ".join(res.output.split())
    (root / "test.txt").write_text("tile_02\n")
    with rasterio.open(root / "images" / "tile_02.tif", "w", driver="GTiff", width=64,
                       height=64, count=1, dtype="uint8") as dst:
        dst.write(np.zeros((1, 64, 64), np.uint8))
    res = runner.invoke(app, ["evaluate", str(root), "--model", str(model), "--threads", "1",
                              "--out", str(tmp_path / "e2")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "tile_02.tif: expected 3-band" in " ".join(res.output.split())

    for option, value in (("--crop", "20"), ("--crop", "0"), ("--crop", "-8"),
                          ("--threads", "-1")):
        res = runner.invoke(app, ["train", "--demo", "--variant", "b0", "--epochs", "1",
                                  option, value, "--out", str(tmp_path / "r")])
        assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
        assert f"{option} {value}: must be >=" in res.output
    assert not (tmp_path / "r").exists()
    for crop in (MIN_INPUT, 64):  # the minimum really is the smallest input that runs
        model_logits(DamageSegmenter.build("b0", **TINY).train(), torch.rand(2, 3, crop, crop))
    with pytest.raises(RuntimeError):
        model_logits(DamageSegmenter.build("b0", **TINY).train(),
                     torch.rand(2, 3, MIN_INPUT - 1, MIN_INPUT - 1))


def test_resume_with_pth_writes_the_pth_of_checkpoints_saved_before(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    quiet = Console(quiet=True)
    run = tmp_path / "run"
    train(_config(run, epochs=1), render=synthetic_tile, console=quiet)
    assert not (run / "best.pth").exists()
    train(_config(run, epochs=1, pth=True), resume=True, render=synthetic_tile, console=quiet)
    for name in ("best", "last"):
        authors, info = load_checkpoint(run / f"{name}.pth")
        assert info.source_format == "pth-transformers4"
        ours = load_file(run / f"{name}.safetensors")
        assert all(torch.equal(ours[k], v) for k, v in authors.state_dict().items())


def test_resume_without_a_saved_state_says_so(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / ".last_state.pt.x1y2.tmp").write_bytes(b"partial")
    res = runner.invoke(build_app(), ["train", "--resume", "--out", str(run)])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "last_state.pt: no saved training state, nothing to resume" in out
    assert ".last_state.pt.x1y2.tmp" in out


def test_resume_refuses_weights_saved_without_their_state(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after epoch 2's last.safetensors, before its last_state.pt: resuming would train
    epoch 2's weights on with epoch 1's optimizer, scheduler and RNG states (no longer the
    uninterrupted run, without a word); it is refused, naming both files and the way on."""
    import importlib

    train_module = importlib.import_module("producer.training.train")
    torch.set_num_threads(1)
    quiet = Console(quiet=True)
    run = tmp_path / "run"
    train(_config(run, epochs=1), render=synthetic_tile, console=quiet)

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt("killed")

    with monkeypatch.context() as patch:
        patch.setattr(train_module, "save_state", killed)
        with pytest.raises(KeyboardInterrupt):
            train(_config(run, epochs=2), resume=True, render=synthetic_tile, console=quiet)
    assert json.loads((run / "last.json").read_text())["training"]["epoch"] == 1
    with pytest.raises(ValueError, match=r"last\.safetensors \(epoch 2\) is not the weights "
                                         r".*last_state\.pt \(epoch 1\) was saved with"):
        train(_config(run, epochs=2), resume=True, render=synthetic_tile, console=quiet)
    res = runner.invoke(build_app(), ["train", "--resume", "--out", str(run), "--epochs", "2"])
    out = " ".join(res.output.split())
    assert res.exit_code == 1 and "cannot resume exactly" in out and "--init" in out, out
