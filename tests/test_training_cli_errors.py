"""Command-line errors of the training and restoration commands found in review: numbers out of
range, unusable devices, files that are not weights, unusable output targets, evaluation files
that are not UTF-8 JSON objects, and user text printed as rich markup.

Every refusal must come before any work (no model is trained here): one line, exit 2 for a bad
option value (1 for a bad input file, as these commands always did), no traceback, and no
output written. Messages are checked by key substrings only (rich wraps the runner's output).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from producer.cli import build_app
from producer.training.data import write_tile

runner = CliRunner()
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

#: train-diffgf settings that make even an unchecked run short (one tiny step per phase).
DIFFGF_SMALL = ["--vae-steps", "1", "--unet-steps", "1", "--batch", "1", "--crop", "16",
                "--threads", "1", "--device", "cpu"]
#: evaluate-restoration settings that make even an unchecked run short.
RESTORATION_SMALL = ["--methods", "FillNodata", "--synthetic", "1", "--size", "16"]
#: train settings that make even an unchecked run short (a b0 on two 64-px demo tiles).
TRAIN_SMALL = ["--demo", "--variant", "b0", "--epochs", "1", "--demo-tiles", "2",
               "--demo-val-tiles", "1", "--demo-size", "64", "--batch-size", "2", "--threads",
               "1", "--device", "cpu"]


def flat(output: str) -> str:
    """CLI output on one line (rich wraps at the runner's width)."""
    return " ".join(output.split())


def refused(res: object, code: int, *needles: str) -> None:
    """``res`` exited with ``code`` by a clean exit (no traceback) and names ``needles``."""
    text = flat(res.output)  # type: ignore[attr-defined]
    assert res.exit_code == code, res.output  # type: ignore[attr-defined]
    assert isinstance(res.exception, SystemExit), res.exception  # type: ignore[attr-defined]
    assert "Traceback" not in text
    for needle in needles:
        assert needle in text, res.output  # type: ignore[attr-defined]


def a_file(tmp_path: Path) -> Path:
    """A plain text file where a folder or weights are expected."""
    path = tmp_path / "afile.txt"
    path.write_text("hi\n")
    return path


# ------------------------------------------------------------------------ numbers out of range


@pytest.mark.parametrize(("option", "value"), [
    ("--vae-steps", "-1"), ("--unet-steps", "-1"), ("--max-minutes", "-1"),
    ("--max-minutes", "0"), ("--max-minutes", "nan"), ("--workers", "-1"),
    ("--checkpoint-every", "0"), ("--crop", "0"), ("--crop", "-16"), ("--batch", "0"),
    ("--threads", "-1"), ("--lr-vae", "0"), ("--lr-unet", "-1e-4"), ("--lr-unet", "inf"),
    ("--seed", "-1"),
])
def test_train_diffgf_refuses_numbers_out_of_range(tmp_path: Path, option: str,
                                                   value: str) -> None:
    out = tmp_path / "new" / "run"
    res = runner.invoke(build_app(), ["train-diffgf", "--out", str(out), *DIFFGF_SMALL,
                                      option, value])
    refused(res, 2, option)
    assert not (tmp_path / "new").exists()  # no empty output folder left behind


def test_train_diffgf_refuses_a_run_without_steps(tmp_path: Path) -> None:
    out = tmp_path / "run"
    res = runner.invoke(build_app(), ["train-diffgf", "--out", str(out), *DIFFGF_SMALL,
                                      "--vae-steps", "0", "--unet-steps", "0"])
    refused(res, 2, "--vae-steps", "--unet-steps")
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [
    ("--steps", "-3"), ("--steps", "0"), ("--steps", "1001"), ("--demo", "-1"),
    ("--synthetic", "0"), ("--size", "0"), ("--size", "8"), ("--seed", "-1"),
])
def test_evaluate_restoration_refuses_numbers_out_of_range(tmp_path: Path, option: str,
                                                           value: str) -> None:
    out = tmp_path / "report.json"
    res = runner.invoke(build_app(), ["evaluate-restoration", "--out", str(out),
                                      *RESTORATION_SMALL, option, value])
    refused(res, 2, option)
    assert not out.exists()


@pytest.mark.parametrize(("option", "value"), [
    ("--max-minutes", "-1"), ("--max-minutes", "0"), ("--peak-lr", "0"),
    ("--start-lr", "nan"), ("--final-lr", "-1"), ("--weight-decay", "-1"), ("--epochs", "0"),
    ("--batch-size", "0"), ("--warmup-epochs", "-1"), ("--demo-tiles", "0"),
    ("--demo-val-tiles", "0"), ("--demo-size", "16"),
])
def test_train_refuses_numbers_out_of_range(tmp_path: Path, option: str, value: str) -> None:
    out = tmp_path / "run"
    res = runner.invoke(build_app(), ["train", *TRAIN_SMALL, "--out", str(out), option, value])
    refused(res, 2, option)
    assert not out.exists()


@pytest.mark.parametrize("command", [
    ["evaluate", ".", "--predictions", ".", "--threads", "0"],
    ["export-demo-tiles", "tiles", "--count", "0"],
    ["export-demo-tiles", "tiles", "--size", "16"],
])
def test_evaluate_and_export_refuse_numbers_out_of_range(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         command: list[str]) -> None:
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(build_app(), [*command, "--out", "ev"] if command[0] == "evaluate"
                        else command)
    refused(res, 2, command[-2])
    assert not (tmp_path / "ev").exists() and not (tmp_path / "tiles").exists()


# ------------------------------------------------------------------------------- devices


def _device_commands(tmp_path: Path) -> list[list[str]]:
    """The commands taking --device, each with settings that get it to the device check."""
    return [["train-diffgf", "--out", str(tmp_path / "d"), *DIFFGF_SMALL[:-2]],
            ["train", *TRAIN_SMALL[:-2], "--out", str(tmp_path / "t")],
            ["evaluate", str(tmp_path), "--model", str(tmp_path / "m.safetensors"),
             "--out", str(tmp_path / "e")]]


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "CPU"])
def test_an_unknown_device_is_one_line_and_exit_2(tmp_path: Path, device: str) -> None:
    for command in _device_commands(tmp_path):
        res = runner.invoke(build_app(), [*command, "--device", device])
        refused(res, 2, f"--device '{device}'", "auto, cpu, cuda or cuda:N")
    assert not any((tmp_path / name).exists() for name in "dte")


def test_cuda_without_a_cuda_device_is_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for command in _device_commands(tmp_path):
        for device in ("cuda", "cuda:1"):
            res = runner.invoke(build_app(), [*command, "--device", device])
            refused(res, 2, f"--device {device}", "sees no CUDA device")
    assert not any((tmp_path / name).exists() for name in "dte")


def test_a_cuda_index_beyond_the_devices_is_refused(tmp_path: Path) -> None:
    command = _device_commands(tmp_path)[0]
    res = runner.invoke(build_app(), [*command, "--device", "cuda:99"])
    refused(res, 2, "--device cuda:99")
    assert not (tmp_path / "d").exists()


# --------------------------------------------------------------------- files that are not weights


def test_diffgf_weights_that_are_not_weights_name_the_option_and_file(tmp_path: Path) -> None:
    out = tmp_path / "report.json"
    base = ["evaluate-restoration", "--out", str(out), "--synthetic", "1", "--size", "16"]
    text = a_file(tmp_path)
    res = runner.invoke(build_app(), [*base, "--diffgf", str(text)])
    refused(res, 1, "--diffgf", "afile.txt")
    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"not safetensors")
    (tmp_path / "w.json").write_text("{oops")
    res = runner.invoke(build_app(), [*base, "--diffgf", str(weights)])
    refused(res, 1, "--diffgf", "w.json", "not valid JSON")
    (tmp_path / "w.json").write_bytes(b"\xff\xfe")
    res = runner.invoke(build_app(), [*base, "--diffgf", str(weights)])
    refused(res, 1, "--diffgf", "w.json", "UTF-8")
    (tmp_path / "w.json").write_text("[1]")
    res = runner.invoke(build_app(), [*base, "--diffgf", str(weights)])
    refused(res, 1, "--diffgf", "w.json", "not a JSON object")
    res = runner.invoke(build_app(), [*base, "--diffgf", str(tmp_path)])  # folder, no layout
    refused(res, 1, "--diffgf", "lacks subfolder")
    assert not out.exists()


@pytest.mark.parametrize(("name", "content"), [("afile.txt", b"hi\n"), ("bad.pth", b"hi\n"),
                                               ("bad.safetensors", b"hi\n")])
def test_segmentation_weights_that_are_not_weights_name_the_option_and_file(
        tmp_path: Path, name: str, content: bytes) -> None:
    weights = tmp_path / name
    weights.write_bytes(content)
    out = tmp_path / "report.json"
    res = runner.invoke(build_app(), ["evaluate-restoration", "--out", str(out),
                                      *RESTORATION_SMALL, "--segmentation", str(weights)])
    refused(res, 1, "--segmentation", name)
    assert not out.exists()


def test_a_data_folder_without_tiles_names_the_option(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    out = tmp_path / "report.json"
    res = runner.invoke(build_app(), ["evaluate-restoration", "--out", str(out),
                                      "--methods", "FillNodata", "--data",
                                      str(tmp_path / "tiles")])
    refused(res, 1, "--data", "no .tif/.tiff/.png tiles")
    assert not out.exists()


# ------------------------------------------------------------------------- output targets


def test_output_targets_are_checked_before_any_work(tmp_path: Path) -> None:
    text = a_file(tmp_path)
    folder = tmp_path / "emptydir"
    folder.mkdir()
    cases = [
        (["uncertainty", "--out", str(text / "f.json")], "is a file, not a folder"),
        (["uncertainty", "--out", str(folder)], "is a folder"),
        (["evaluate", str(tmp_path), "--predictions", str(tmp_path), "--out", str(text)],
         "is a file, not a folder"),
        (["evaluate-restoration", *RESTORATION_SMALL, "--out", str(folder)], "is a folder"),
        (["train-diffgf", *DIFFGF_SMALL, "--out", str(text)], "is a file, not a folder"),
        (["train-diffgf", *DIFFGF_SMALL, "--out", str(text / "run")], "is a file"),
        (["train", *TRAIN_SMALL, "--out", str(text)], "is a file, not a folder"),
    ]
    for command, why in cases:
        res = runner.invoke(build_app(), command)
        refused(res, 2, "--out", why)
    res = runner.invoke(build_app(), ["export-demo-tiles", str(text), "--count", "1",
                                      "--size", "32"])
    refused(res, 2, "afile.txt", "is a file, not a folder")
    assert text.read_text() == "hi\n" and list(folder.iterdir()) == []


def test_an_unwritable_output_folder_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p) != ro and real(p, mode))
    res = runner.invoke(build_app(), ["uncertainty", "--out", str(ro / "sub" / "f.json")])
    refused(res, 2, "--out", "(permission denied)")
    assert list(ro.iterdir()) == []


def test_a_failed_train_diffgf_leaves_no_empty_output_folder(tmp_path: Path) -> None:
    (tmp_path / "tiles").mkdir()
    out = tmp_path / "new" / "run"
    res = runner.invoke(build_app(), ["train-diffgf", "--out", str(out), *DIFFGF_SMALL,
                                      "--data", str(tmp_path / "tiles")])
    refused(res, 1, "tiles")
    assert not (tmp_path / "new").exists()


def test_a_failed_evaluation_leaves_no_half_written_output(tmp_path: Path) -> None:
    data, maps = tmp_path / "data", tmp_path / "maps"
    rgb, label = np.full((32, 32, 3), 200, np.uint8), np.zeros((32, 32), bool)
    for name in ("a", "b"):
        write_tile(data, name, rgb, label)
    write_tile(maps, "a", rgb, label)  # no prediction for b
    (data / "test.txt").write_text("a\nb\n")
    out = tmp_path / "ev"
    res = runner.invoke(build_app(), ["evaluate", str(data), "--predictions", str(maps),
                                      "--out", str(out)])
    refused(res, 1, "no prediction for image 'b'")
    assert not out.exists()  # not even a's difference map


# ------------------------------------------------------------------ evaluation files read


def test_uncertainty_names_an_evaluation_file_that_is_not_utf8_json(tmp_path: Path) -> None:
    out = tmp_path / "f.json"
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps([1, 2]))
    for args in ([str(binary)], ["--restoration", str(binary)]):
        res = runner.invoke(build_app(), ["uncertainty", *args, "--out", str(out)])
        refused(res, 1, "bin.json", "not UTF-8")
    for args in ([str(listed)], ["--restoration", str(listed)]):
        res = runner.invoke(build_app(), ["uncertainty", *args, "--out", str(out)])
        refused(res, 1, "list.json", "not an object")
    assert not out.exists()


# ----------------------------------------------------------------- user text is not markup


def test_user_text_in_messages_is_not_read_as_markup(tmp_path: Path) -> None:
    bad = tmp_path / "e[/x].json"  # a closing tag rich would refuse (MarkupError)
    bad.parent.mkdir()
    bad.write_text(json.dumps({"name": "e"}))
    res = runner.invoke(build_app(), ["uncertainty", str(bad), "--out",
                                      str(tmp_path / "f.json")])
    refused(res, 1, "e[/x].json", "precision")
    run = tmp_path / "[bold]run"  # a tag rich would swallow
    run.mkdir()
    (run / "diffgf.safetensors").write_bytes(b"")
    res = runner.invoke(build_app(), ["train-diffgf", "--out", str(run), *DIFFGF_SMALL])
    refused(res, 1, "[bold]run", "--resume")
    res = runner.invoke(build_app(), ["uncertainty", "--out", str(tmp_path / "[bold]f.json")])
    assert res.exit_code == 0 and "[bold]f.json" in flat(res.output), res.output
