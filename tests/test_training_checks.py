"""Regression tests of the training / evaluation checks found in review: checkpoint selection on
the test split, overlapping or repeated split entries, resumes independent of the working
folder, DiffGF resumes keeping their settings, per-region splits, evaluation protocol (TTA),
one-line error messages and the init checkpoint's digest.

Runs use a tiny MiT on 32² tiles on one thread, so the file stays fast on two shared cores.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from typer.testing import CliRunner

from producer.cli import build_app
from producer.provenance import file_sha256
from producer.segmentation.checkpoints import (
    CheckpointError,
    ModelInfo,
    load_checkpoint,
    save_checkpoint,
)
from producer.segmentation.inference import predict_array
from producer.segmentation.model import DamageSegmenter
from producer.training.data import (
    AUTHORS_REGION,
    TileDataset,
    _stratified_split,
    check_disjoint_splits,
    read_image,
    read_split,
    region_groups,
    write_split,
    write_tile,
)
from producer.training.train import TrainConfig, datasets, train

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
#: A tiny MiT (widths divisible by the 1/2/5/8 attention heads).
TINY = {"depths": [1, 1, 1, 1], "hidden_sizes": [8, 16, 40, 64], "decoder_hidden_size": 32}
CARD = Path(__file__).resolve().parents[1] / "producer" / "weights" / "SEGFORMER_MODEL_CARD.md"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def tile(seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Bright ice with one dark 3-px line (the damage)."""
    rng = np.random.default_rng(seed)
    rgb = np.full((size, size, 3), 200, np.int16) + rng.integers(-20, 20, (size, size, 3))
    label = np.zeros((size, size), bool)
    row = int(rng.integers(2, size - 5))
    label[row:row + 3] = True
    rgb[label] -= 140
    return np.clip(rgb, 0, 255).astype(np.uint8), label


def tiles(root: Path, names: list[str], size: int = 32) -> Path:
    """Write image/label pairs of ``names`` in the authors' layout."""
    for i, name in enumerate(names):
        write_tile(root, name, *tile(i, size))
    return root


def split_folder(root: Path, train: list[str], test: list[str],
                 val: list[str] | None = None) -> Path:
    """Tiles of every listed name and the split files as given (duplicates kept)."""
    tiles(root, sorted(set(train + test + (val or []))))
    for key, names in (("train", train), ("test", test), ("val", val)):
        if names is not None:
            (root / f"{key}.txt").write_text("".join(f"{n}\n" for n in names))
    return root


def config(out: Path, data: Path | str, **changes: object) -> TrainConfig:
    """A one-epoch run of the tiny MiT on a data folder."""
    base = dict(out=str(out), data=str(data), variant="b0", epochs=1, batch_size=4, seed=3,
                threads=1, warmup_epochs=1, cosine_epochs=1, model_overrides=TINY,
                augment=False)
    return TrainConfig(**(base | changes))


def quiet_console() -> tuple[Console, io.StringIO]:
    """A console writing to a string (wide, so messages stay on one line)."""
    text = io.StringIO()
    return Console(file=text, width=400), text


def tiny_checkpoint(path: Path) -> Path:
    """A saved tiny segmenter (no training sidecar facts)."""
    torch.manual_seed(0)
    save_checkpoint(DamageSegmenter.build("b0", **TINY), path,
                    ModelInfo(name=path.stem, variant="custom"))
    return path


def flat(output: str) -> str:
    """CLI output on one line (rich wraps at the runner's width)."""
    return " ".join(output.split())


NAMES = [f"t{i}" for i in range(6)]


# ------------------------------------------------------ 1. selection on the test split


def test_train_warns_when_best_is_selected_on_the_test_split(tmp_path: Path) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], NAMES[4:])
    console, text = quiet_console()
    train(config(tmp_path / "run", data), console=console)
    assert "selected on test.txt" in text.getvalue()
    assert "biased upward" in text.getvalue()
    info = json.loads((tmp_path / "run" / "best.json").read_text())
    assert info["training"]["validation_split"] == "test"

    (data / "val.txt").write_text("t3\n")
    (data / "train.txt").write_text("t0\nt1\nt2\n")
    console, text = quiet_console()
    train(config(tmp_path / "run2", data), console=console)
    assert "selected on test.txt" not in text.getvalue()


def test_evaluate_warns_on_the_split_best_was_selected_on(tmp_path: Path) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], NAMES[4:])
    train(config(tmp_path / "run", data), console=quiet_console()[0])
    args = ["evaluate", str(data), "--threads", "1", "--device", "cpu"]
    res = runner.invoke(build_app(), [*args, "--model", str(tmp_path / "run" / "best.safetensors"),
                                      "--out", str(tmp_path / "e1")])
    assert res.exit_code == 0, res.output
    out = flat(res.output)
    assert "selected as the best epoch of its run on the 'test' split" in out
    assert "metrics biased upward; evaluate `last` or a held-out split" in out
    doc = json.loads((tmp_path / "e1" / "evaluation.json").read_text())
    assert "biased upward" in doc["protocol"]["warning"]
    for model, split in (("last", "test"), ("best", "train")):  # not selected / another split
        res = runner.invoke(build_app(), [*args, "--model",
                                          str(tmp_path / "run" / f"{model}.safetensors"),
                                          "--split", split, "--out", str(tmp_path / "e2")])
        assert res.exit_code == 0 and "biased upward" not in flat(res.output), res.output
    other = tmp_path / "independent"  # another data set's test split: other images
    shutil.copytree(data, other)
    res = runner.invoke(build_app(), ["evaluate", str(other), "--threads", "1", "--device",
                                      "cpu", "--model", str(tmp_path / "run" / "best.safetensors"),
                                      "--out", str(tmp_path / "e3")])
    assert res.exit_code == 0 and "biased upward" not in flat(res.output), res.output


def test_split_data_writes_a_validation_share(tmp_path: Path) -> None:
    root = tiles(tmp_path / "data", [f"t{i:02d}" for i in range(10)])
    res = runner.invoke(build_app(), ["split-data", str(root), "--val-fraction", "0.1"])
    assert res.exit_code == 0, res.output
    assert "val: 1" in res.output and (root / "val.txt").exists()
    check_disjoint_splits(root)


# ------------------------------------------------- 2./5. overlapping or repeated split entries


def test_splits_sharing_an_image_are_refused_by_train_and_evaluate(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], ["t3", "t4", "t5"])
    with pytest.raises(ValueError, match=r"train\.txt and test\.txt share 't3'"):
        datasets(config(tmp_path / "run", data))
    res = runner.invoke(build_app(), ["train", str(data), "--variant", "b0", "--epochs", "1",
                                      "--threads", "1", "--out", str(tmp_path / "run")])
    assert res.exit_code == 1 and "share 't3'" in flat(res.output), res.output
    assert not (tmp_path / "run").exists()  # a refused run leaves no folder behind

    def no_inference(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("inference ran before the split was checked")

    monkeypatch.setattr("producer.segmentation.inference.predict_array", no_inference)
    model = tiny_checkpoint(tmp_path / "m.safetensors")
    res = runner.invoke(build_app(), ["evaluate", str(data), "--model", str(model),
                                      "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "train.txt and test.txt share 't3'" in flat(res.output)
    (data / "val.txt").write_text("t5\n")
    (data / "train.txt").write_text("t0\nt1\nt2\n")
    res = runner.invoke(build_app(), ["evaluate", str(data), "--model", str(model),
                                      "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1 and "val.txt and test.txt share 't5'" in flat(res.output)


def test_an_image_listed_twice_is_refused_before_inference(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], ["t4", "t5", "t4"])
    with pytest.raises(ValueError, match=r"test\.txt: 't4' listed more than once"):
        read_split(data, "test")
    with pytest.raises(ValueError, match="listed more than once"):
        TileDataset(data, "test")
    calls: list[int] = []

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return predict_array(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("producer.segmentation.inference.predict_array", counting)
    res = runner.invoke(build_app(), ["evaluate", str(data), "--threads", "1", "--model",
                                      str(tiny_checkpoint(tmp_path / "m.safetensors")),
                                      "--out", str(tmp_path / "ev")])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    assert "test.txt: 't4' listed more than once" in flat(res.output)
    assert "Traceback" not in res.output and not calls
    assert not (tmp_path / "ev" / "evaluation.json").exists()


@settings(max_examples=100, deadline=None)
@given(names=st.lists(st.from_regex(r"[A-Za-z0-9_]{1,8}", fullmatch=True), max_size=8),
       noise=st.lists(st.sampled_from(["", "  ", "# a comment"]), max_size=4))
def test_read_split_returns_each_name_once_or_names_a_repeated_one(
        tmp_path_factory: pytest.TempPathFactory, names: list[str], noise: list[str]) -> None:
    """Blank lines and comments are skipped; a list without repeats reads back as written,
    one with repeats is refused naming a repeated image."""
    root = tmp_path_factory.mktemp("split")
    lines = [f" {n} " for n in names] + noise
    (root / "test.txt").write_text("\n".join(lines) + "\n")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if not repeated:
        assert read_split(root, "test") == names
        return
    with pytest.raises(ValueError, match=f"'{repeated[0]}'.* listed more than once"):
        read_split(root, "test")


# ---------------------------------------------------- 3. resume from any working folder


def _run_in(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Data and a one-epoch CLI run started inside ``folder`` with relative paths."""
    split_folder(folder / "data", NAMES[:4], NAMES[4:])
    folder.mkdir(exist_ok=True)
    monkeypatch.chdir(folder)
    train(config("run", "data"), console=quiet_console()[0])
    return folder / "run"


def test_resume_does_not_depend_on_the_working_folder(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run_in(tmp_path / "a", monkeypatch)
    saved = torch.load(run / "last_state.pt", weights_only=False)["config"]
    assert saved["data"] == str((tmp_path / "a" / "data").resolve())  # recorded resolved
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    res = runner.invoke(build_app(), ["train", "--resume", "--out", str(run), "--epochs", "2"])
    assert res.exit_code == 0, res.output
    # the same data spelled otherwise is the same data
    res = runner.invoke(build_app(), ["train", "../a/./data", "--resume", "--out", str(run),
                                      "--epochs", "3"])
    assert res.exit_code == 0, res.output
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    split_folder(tmp_path / "other", NAMES[:4], NAMES[4:])
    res = runner.invoke(build_app(), ["train", str(tmp_path / "other"), "--resume", "--out",
                                      str(run), "--epochs", "4"])
    assert res.exit_code == 1 and "different data" in flat(res.output), res.output


def test_resume_reads_runs_that_recorded_relative_paths(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """Earlier versions recorded ``--out run`` and ``DATA`` as typed, relative to the folder
    the run was started from; such a run still resumes from another folder."""
    run = _run_in(tmp_path / "a", monkeypatch)
    state = torch.load(run / "last_state.pt", weights_only=False)
    state["config"] |= {"out": "run", "data": "data"}
    torch.save(state, run / "last_state.pt")
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(build_app(), ["train", "--resume", "--out", "a/run", "--epochs", "2"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(build_app(), ["train", "a/data", "--resume", "--out", "a/run",
                                      "--epochs", "3"])
    assert res.exit_code == 0, res.output
    saved = torch.load(run / "last_state.pt", weights_only=False)["config"]
    assert saved["data"] == str((tmp_path / "a" / "data").resolve())


# ------------------------------------------------------ 4. DiffGF resume keeps its settings


def test_train_diffgf_resume_keeps_the_runs_learning_rates(tmp_path: Path) -> None:
    out = tmp_path / "dgf"
    args = ["train-diffgf", "--out", str(out), "--threads", "1", "--device", "cpu"]
    shape = ["--vae-steps", "1", "--batch", "1", "--crop", "32"]
    res = runner.invoke(build_app(), [*args, *shape, "--checkpoint-every", "1", "--unet-steps",
                                      "1", "--lr-unet", "1e-4"])
    assert res.exit_code == 0, res.output

    def recorded() -> dict:
        return json.loads((out / "diffgf.json").read_text())["meta"]

    res = runner.invoke(build_app(), [*args, *shape, "--resume", "--unet-steps", "2"])
    assert res.exit_code == 0, res.output
    assert recorded()["train_config"]["lr_unet"] == 1e-4  # the run's, not the option's default
    res = runner.invoke(build_app(), [*args, "--resume", "--unet-steps", "3"])  # others: the run's
    assert res.exit_code == 0, res.output
    assert recorded()["train_config"] | {"data": None} == {
        "vae_steps": 1, "unet_steps": 3, "batch": 1, "crop": 32, "lr_vae": 2e-4, "lr_unet": 1e-4,
        "kl_weight": 1e-6, "gap_weight": 4.0, "seed": 0, "checkpoint_every": 1, "data": None,
        "synthetic_pool": 100_000}
    assert recorded()["state"]["step"] == 4
    res = runner.invoke(build_app(), [*args, "--resume", "--unet-steps", "4", "--lr-unet",
                                      "5e-4"])
    assert res.exit_code == 1 and "'lr_unet' is 0.0001" in flat(res.output), res.output


def test_diffgf_resume_refuses_another_learning_rate(tmp_path: Path) -> None:
    from producer.restoration.diffgf import build_diffgf
    from producer.restoration.train import TrainConfig as DiffGFConfig
    from producer.restoration.train import train as train_diffgf
    from tests.tiny_models import TINY_UNET, TINY_VAE

    base = {"vae_steps": 1, "unet_steps": 2, "batch": 1, "crop": 32, "checkpoint_every": 1}
    out = tmp_path / "run"
    train_diffgf(DiffGFConfig(**base), out, model=build_diffgf(TINY_VAE, TINY_UNET, seed=0),
                 stop_after=2)
    for key in ("lr_unet", "lr_vae"):
        with pytest.raises(ValueError, match=f"field '{key}' is 0.0002"):
            train_diffgf(DiffGFConfig(**base, **{key: 5e-4}), out, resume=True)


# ---------------------------------------------------------------- 7. per-region splits


def test_split_data_stratifies_by_region(tmp_path: Path) -> None:
    names = [f"Amery_{i:02d}" for i in range(10)] + [f"Brunt_{i:02d}" for i in range(5)]
    root = tiles(tmp_path / "data", names, size=8)
    res = runner.invoke(build_app(), ["split-data", str(root), "--group-by", "^([^_]+)_"])
    assert res.exit_code == 0, res.output
    assert "stratified by 2 regions" in res.output
    test = read_split(root, "test")
    assert sorted(n.split("_")[0] for n in test) == ["Amery", "Amery", "Brunt"]
    res = runner.invoke(build_app(), ["split-data", str(root), "--group-by", "^(Amery)_",
                                      "--force"])
    assert res.exit_code == 1 and "'Brunt_00'" in flat(res.output), res.output
    res = runner.invoke(build_app(), ["split-data", str(root), "--group-by", "^[A-Z]",
                                      "--force"])
    assert res.exit_code == 1 and "needs a group" in flat(res.output), res.output


def test_authors_tile_names_are_grouped_by_shelf_by_default(tmp_path: Path) -> None:
    shelves = {"Amery": 10, "Larsen B": 5}
    names = [f"LC08_{shelf}_composite_2018-02-06_uint8_tiles_{i}_0"
             for shelf, count in shelves.items() for i in range(count)]
    assert set(region_groups(names, AUTHORS_REGION)) == set(shelves)
    root = tiles(tmp_path / "data", names, size=8)
    split = write_split(root, seed=1)
    test = [n.split("_")[1] for n in split["test"]]
    assert sorted(test) == ["Amery", "Amery", "Larsen B"]
    plain = write_split(root, seed=1, group_by=None, force=True)
    assert len(plain["test"]) == 3


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.integers(1, 40), min_size=1, max_size=6),
       test_fraction=st.floats(0.05, 0.5), val_fraction=st.floats(0.0, 0.4),
       seed=st.integers(0, 2**31))
def test_stratified_split_shares_each_region_alike(sizes: list[int], test_fraction: float,
                                                   val_fraction: float, seed: int) -> None:
    """Every image in exactly one split; the global counts are the unstratified ones; each
    region's test and val counts are within one image of its proportional share."""
    if test_fraction + val_fraction >= 0.95:
        return
    groups = {f"r{g}": [f"r{g}_{i}" for i in range(n)] for g, n in enumerate(sizes)}
    total = sum(sizes)
    split = _stratified_split(groups, seed, test_fraction, val_fraction)
    every = split["test"] + split["val"] + split["train"]
    assert sorted(every) == sorted(n for names in groups.values() for n in names)
    n_test = max(1, round(total * test_fraction))
    assert len(split["test"]) == n_test
    assert len(split["val"]) <= round(total * val_fraction)
    for key, names in groups.items():
        mine = [n for n in split["test"] if n.split("_")[0] == key]
        assert abs(len(mine) - len(names) * n_test / total) < 1 + 1e-9
    assert _stratified_split(groups, seed, test_fraction, val_fraction) == split


# ------------------------------------------------------------- 8. evaluation protocol (TTA)


def test_evaluate_without_tta_records_the_protocol(tmp_path: Path) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], NAMES[4:])
    model = tiny_checkpoint(tmp_path / "m.safetensors")
    args = ["evaluate", str(data), "--model", str(model), "--threads", "1", "--device", "cpu"]
    res = runner.invoke(build_app(), [*args, "--no-tta", "--batch-size", "2",
                                      "--out", str(tmp_path / "plain")])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "plain" / "evaluation.json").read_text())
    assert doc["protocol"] | {"weights_sha256": ""} == {
        "split": "test", "model": str(model), "weights_sha256": "", "tta": False,
        "batch_size": 2}
    assert doc["protocol"]["weights_sha256"] == file_sha256(model)
    segmenter, _ = load_checkpoint(model)
    pred = predict_array(segmenter, read_image(data / "images" / "t4.tif"), tta=False,
                         device="cpu").labels
    assert doc["images"]["t4"]["tp"] + doc["images"]["t4"]["fp"] == int(pred.sum())
    res = runner.invoke(build_app(), [*args, "--out", str(tmp_path / "tta")])
    assert res.exit_code == 0, res.output
    tta = json.loads((tmp_path / "tta" / "evaluation.json").read_text())["protocol"]
    assert tta["tta"] is True and tta["batch_size"] == 8


# ------------------------------------------------------------------ 9. error messages


def test_input_errors_are_clear_one_line_messages(tmp_path: Path) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], NAMES[4:])
    app = build_app()
    res = runner.invoke(app, ["evaluate", str(data), "--model", "nope.safetensors",
                              "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and flat(res.output).count("nope.safetensors") == 1, res.output
    assert "nope.safetensors: weights file not found" in flat(res.output)
    res = runner.invoke(app, ["evaluate", str(data), "--model", "m.safetensors", "--split",
                              "tset", "--out", str(tmp_path / "e")])
    assert res.exit_code == 1
    assert "--split 'tset': expected one of train, val, test, all" in flat(res.output)
    nowhere, run = str(tmp_path / "nowhere"), str(tmp_path / "r")
    for command in (["evaluate", nowhere, "--model", "m.safetensors", "--out", run],
                    ["train", nowhere, "--variant", "b0", "--out", run],
                    ["split-data", nowhere]):
        res = runner.invoke(app, command)
        assert res.exit_code == 1, res.output
        assert f"{nowhere}: data folder not found" in flat(res.output), res.output
    assert not (tmp_path / "r").exists()


def test_a_corrupt_pth_is_not_a_state_dict(tmp_path: Path) -> None:
    bad = tmp_path / "g.pth"
    bad.write_bytes(b"hi\n")
    with pytest.raises(CheckpointError, match=r"g\.pth: not a torch state_dict file"):
        load_checkpoint(bad)


def test_a_sidecar_config_that_disagrees_with_the_weights_says_so(tmp_path: Path) -> None:
    model = tiny_checkpoint(tmp_path / "m.safetensors")
    side = tmp_path / "m.json"
    doc = json.loads(side.read_text())
    doc["config"]["decoder_hidden_size"] = 768
    side.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"m\.json: sidecar config disagrees with the "
                                              r"weights in m\.safetensors: decoder_hidden_size "
                                              r"768 \(weights: 32\)"):
        load_checkpoint(model)


# --------------------------------------------------------- 10. init digest and model card


def test_checkpoints_record_the_init_checkpoints_sha256(tmp_path: Path) -> None:
    data = split_folder(tmp_path / "data", NAMES[:4], NAMES[4:])
    init = tiny_checkpoint(tmp_path / "init.safetensors")
    train(config(tmp_path / "run", data, init=str(init)), console=quiet_console()[0])
    for name in ("best", "last"):
        training = json.loads((tmp_path / "run" / f"{name}.json").read_text())["training"]
        assert training["init_sha256"] == file_sha256(init)
    digest = file_sha256(init)
    init.unlink()  # gone since: a resume keeps the digest the run started with
    train(config(tmp_path / "run", data, init=str(init), epochs=2), resume=True,
          console=quiet_console()[0])
    training = json.loads((tmp_path / "run" / "last.json").read_text())["training"]
    assert training["epoch"] == 1 and training["init_sha256"] == digest


def test_model_card_does_not_claim_an_exact_reproduction() -> None:
    card = " ".join(CARD.read_text().split())
    assert "reproduces all of it" not in card
    assert "re-trains a comparable model" in card and "init_sha256" in card
