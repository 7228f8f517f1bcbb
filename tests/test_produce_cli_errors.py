"""``produce`` on bad input: one error line naming the option or file and the rule, exit 2
before any scene is fetched, no traceback, nothing written; Ctrl-C exits 130 cleanly; user text
is printed as typed (never read as rich markup or emoji codes)."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import types
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console
from rich.progress import Progress
from typer.testing import CliRunner, Result

import producer.cli as cli
import producer.commands as commands
from producer import pipeline
from producer.commands import produce_app
from producer.extent import ExtentError, read_extent
from producer.pipeline import ProduceError, YearResult

#: Bytes that no reader takes for a GeoPackage, a checkpoint or a raster.
GARBAGE = b"\xff\xfe\x00\x01garbage"
WIDE = {"COLUMNS": "250"}


def _run(args: Sequence[str]) -> Result:
    """``produce`` on the demo source (its tiny size: nothing here should reach the scenes)."""
    return CliRunner().invoke(produce_app(), [*args, "--demo-size", "64"], env=WIDE)


def _flat(result: Result) -> str:
    """The output without whitespace: rich wraps it at the terminal width (80 under xdist)."""
    return "".join(result.output.split())


def _refused(result: Result, *says: str) -> None:
    """Exit 2 with one error naming what is wrong, no traceback."""
    assert result.exit_code == 2, result.output
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), result.exception
    text = _flat(result)
    assert "Traceback" not in result.output and text.startswith("error:"), result.output
    for part in says:
        assert "".join(part.split()) in text, (part, result.output)


def _no_scene_work(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if ``produce`` gets as far as producing a shelf-year."""
    def forbidden(*args: Any, **kwargs: Any) -> YearResult:
        raise AssertionError("produce_year ran: the option was not checked upfront")

    monkeypatch.setattr(pipeline, "produce_year", forbidden)


# --- 1. --out ---------------------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_before_work(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    _no_scene_work(monkeypatch)
    afile = tmp_path / "afile.txt"
    afile.write_text("x\n")
    _refused(_run(["--shelf", "Totten", "--year", "2021", "--out", str(afile)]),
             f"--out {afile}: is a file, not a folder")
    _refused(_run(["--shelf", "Totten", "--year", "2021", "--out", str(afile / "sub")]),
             f"--out {afile / 'sub'}: {afile} is a file, not a folder")
    assert afile.read_text() == "x\n"


def test_unwritable_out_is_refused_before_work(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """os.access decides (as root only a read-only file system refuses): faked for ``locked``."""
    _no_scene_work(monkeypatch)
    locked = tmp_path / "locked"
    locked.mkdir()
    real_access = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path).absolute() == locked and mode & os.W_OK:
            return False
        return real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)
    _refused(_run(["--shelf", "Totten", "--year", "2021", "--out", str(locked)]),
             f"--out {locked}: cannot write in {locked} (permission denied)")
    deeper = locked / "new" / "release"
    _refused(_run(["--shelf", "Totten", "--year", "2021", "--out", str(deeper)]),
             f"--out {deeper}: cannot write in {locked} (permission denied)")
    assert list(locked.iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into any folder")
def test_read_only_out_folder_is_refused(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        _refused(_run(["--shelf", "Totten", "--year", "2021", "--out", str(locked)]),
                 f"--out {locked}: cannot write in {locked} (permission denied)")
    finally:
        locked.chmod(0o755)


# --- 2. --extent ------------------------------------------------------------------------------


@pytest.mark.parametrize("content", [b"", GARBAGE], ids=["empty", "garbled"])
def test_unreadable_extent_file_is_refused_before_work(
        content: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_scene_work(monkeypatch)
    bad = tmp_path / "bad.gpkg"
    bad.write_bytes(content)
    out = tmp_path / "release"
    _refused(_run(["--shelf", "Totten,Brunt", "--year", "2021", "--extent", str(bad),
                   "--out", str(out)]),
             f"--extent {bad}: not a readable GeoPackage of extents")
    assert not out.exists()


def test_read_extent_names_an_unreadable_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gpkg"
    bad.write_bytes(GARBAGE)
    with pytest.raises(ExtentError, match="bad.gpkg: not a readable GeoPackage"):
        read_extent(bad, "Totten", 2021)


# --- 3. Ctrl-C on the writer's imports --------------------------------------------------------


def _interrupting_import(imported: list[str]) -> Callable[[str], None]:
    """An import that is hit by Ctrl-C half-way and, as pydantic does, turns the
    KeyboardInterrupt into another exception."""
    def import_module(name: str) -> None:
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt as err:
            raise RuntimeError("SchemaError: KeyboardInterrupt") from err
        imported.append(name)

    return import_module


def test_writer_imports_are_not_broken_by_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(commands, "importlib",
                        types.SimpleNamespace(import_module=_interrupting_import(imported)))
    with pytest.raises(KeyboardInterrupt):
        commands.import_uninterrupted(commands.WRITER_MODULES)
    assert imported == list(commands.WRITER_MODULES)  # finished, then interrupted
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_writer_modules_are_imported_once_a_year_is_produced(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, ...]] = []
    monkeypatch.setattr(commands, "import_uninterrupted", lambda m: calls.append(tuple(m)))
    bars = commands._StageBars(Progress(console=Console(file=io.StringIO())))
    bars("scenes", 0, 1, "Totten 2021")
    assert calls == []  # fetching scenes may still end in a skip: no heavy import yet
    bars("merge", 0, 2, "planning")
    bars("merge", 1, 2, "planned")
    assert calls == [tuple(commands.WRITER_MODULES)]
    assert {"rio_cogeo.cogeo", "rio_cogeo.profiles"} <= set(commands.WRITER_MODULES)


def test_ctrl_c_while_the_writer_is_imported_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []
    monkeypatch.setattr(commands, "importlib",
                        types.SimpleNamespace(import_module=_interrupting_import(imported)))

    def produce(shelves: Any, years: Any, source: Any, options: Any, progress: Any,
                report: Any) -> None:
        progress("merge", 0, 2, "planning")
        raise AssertionError("the interrupt was not delivered")

    monkeypatch.setattr(commands, "produce", produce)
    result = _run(["--shelf", "Totten", "--year", "2021"])
    assert result.exit_code == 130, (result.output, result.exception)
    assert "SchemaError" not in result.output and "Traceback" not in result.output


# --- 5. user text is not markup ---------------------------------------------------------------


@pytest.mark.parametrize("shelf", ["Tot[red]ten", "x[/]", "x[/red]y", ":smile:", "a\\"])
def test_user_text_in_errors_is_printed_as_typed(shelf: str) -> None:
    result = _run(["--shelf", shelf, "--year", "2021"])
    _refused(result, f"shelf name {shelf!r}")


def test_year_results_are_printed_as_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    message = "local:[bold]scenes[/] :smile: x[/]"

    def produce(shelves: Any, years: Any, source: Any, options: Any, progress: Any,
                report: Any) -> pipeline.RunSummary:
        progress("scenes", 1, 1, message)  # a stage's text: scene ids, local file names
        result = YearResult("Totten", 2021, "failed", message)
        report(result)
        return pipeline.RunSummary([result])

    monkeypatch.setattr(commands, "produce", produce)
    result = _run(["--shelf", "Totten", "--year", "2021"])
    assert result.exit_code == 1, result.output
    assert _flat(result).count("".join(message.split())) == 2  # the report and the bar


# --- 10. Ctrl-C before typer runs -------------------------------------------------------------


def _interrupted(*args: Any, **kwargs: Any) -> Any:
    raise KeyboardInterrupt


def _exit_code(main: Callable[[], None]) -> Any:
    """The exit status of a console entry point; an escaping KeyboardInterrupt fails the test
    (rather than stopping pytest, as a real one does)."""
    try:
        main()
    except KeyboardInterrupt:
        pytest.fail("a KeyboardInterrupt escaped the entry point (a traceback for the user)")
    except SystemExit as exit_info:
        return exit_info.code
    return 0


def test_ctrl_c_while_icedamage_imports_its_commands(monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(cli, "build_app", _interrupted)
    monkeypatch.setattr(sys, "argv", ["icedamage", "produce", "--help"])
    assert _exit_code(cli.icedamage_main) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


def test_ctrl_c_while_produce_imports_its_command(monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(commands, "produce_app", _interrupted)
    assert _exit_code(cli.produce_main) == 130
    assert capsys.readouterr().err.strip() == "interrupted"


# --- minor: --weights, --source local:, --velocity help ---------------------------------------


@pytest.mark.parametrize(("name", "content", "says"), [
    ("bad.pth", GARBAGE, "not a torch checkpoint"),
    ("bad.safetensors", GARBAGE, "not a safetensors file"),
    ("empty.safetensors", b"", "not a safetensors file"),
    ("list.safetensors", (2).to_bytes(8, "little") + b"[]", "not a safetensors file"),
    ("bad.tif", GARBAGE, "unknown weights format '.tif'"),
])
def test_garbage_weights_are_refused_before_work(
        name: str, content: bytes, says: str, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_scene_work(monkeypatch)
    weights = tmp_path / name
    weights.write_bytes(content)
    _refused(_run(["--shelf", "Totten", "--year", "2021", "--weights", str(weights)]),
             f"--weights {weights}: {says}")


def _safetensors(path: Path) -> Path:
    """The smallest safetensors file: an empty JSON header."""
    header = json.dumps({"__metadata__": {}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    return path


def test_weights_with_a_garbled_sidecar_are_refused(tmp_path: Path) -> None:
    weights = _safetensors(tmp_path / "model.safetensors")
    pipeline.check_weights_file(weights)  # no sidecar: a bare Hugging Face file
    (tmp_path / "model.json").write_bytes(GARBAGE)
    with pytest.raises(ProduceError, match="sidecar model.json is not readable JSON"):
        pipeline.check_weights_file(weights)
    (tmp_path / "model.json").write_text("[1, 2]")
    with pytest.raises(ProduceError, match="sidecar model.json is not a JSON object"):
        pipeline.check_weights_file(weights)


def test_checkpoint_shapes_pass_the_cheap_check(tmp_path: Path) -> None:
    """What torch.save writes (a zip archive, or a pickle in the legacy format) and the demo
    weights pass; the full load stays with the first produced shelf-year."""
    with zipfile.ZipFile(tmp_path / "zip.pth", "w") as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    pipeline.check_weights_file(tmp_path / "zip.pth")
    (tmp_path / "legacy.pt").write_bytes(b"\x80\x02\x8a\x0alegacy")
    pipeline.check_weights_file(tmp_path / "legacy.pt")
    pipeline.check_weights_file(pipeline.DEMO_WEIGHTS)


def test_local_source_that_is_a_file_says_so(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _no_scene_work(monkeypatch)
    afile = tmp_path / "afile.txt"
    afile.write_text("x\n")
    result = CliRunner().invoke(produce_app(), ["--shelf", "Totten", "--year", "2021",
                                                "--source", f"local:{afile}", "--weights",
                                                str(_safetensors(tmp_path / "w.safetensors"))],
                                env=WIDE)
    _refused(result, f"--source local:{afile}: {afile} is a file, not a folder")
    assert "does not exist" not in result.output


def test_velocity_help_lists_every_accepted_form() -> None:
    result = CliRunner().invoke(produce_app(), ["--help"], env=WIDE)
    assert result.exit_code == 0
    text = _flat(result).replace("│", "")
    for form in ("speedraster", "vx/vyraster", "VXandVY", "speedvariableV", 'NETCDF:"file.nc":var'):
        assert form in text, form


def test_a_mistyped_device_is_refused_with_the_shared_rule(tmp_path: Path) -> None:
    """``produce --device gpu`` says what --device takes, as the training commands do, before
    any scene is fetched (one rule: ``producer.devices``)."""
    from producer.devices import device_problem

    assert device_problem("gpu") == "not a device (rule: auto, cpu, cuda or cuda:N)"
    assert device_problem("cpu") is None and device_problem("auto") is None
    out = tmp_path / "r"
    _refused(_run(["--shelf", "Totten", "--year", "2021", "--device", "gpu", "--out", str(out)]),
             "--device gpu: not a device")
    assert not out.exists()
