"""The catalog-side commands (catalog, search, stats, temporal-consistency), validate and
publish on bad input: one error line naming the file and what is wrong, no traceback, nothing
half-written, options and output targets refused before any work (exit 2), failures during
the work exit 1."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from catalog.build import catalog_release
from catalog.search import SearchError, search
from catalog.uncertainty import PAPER_FACTORS, load_factors
from producer.cli import build_app
from producer.spec import METADATA_ODS, RELEASE_METADATA, latest_summer
from producer.writer import TEMPORARY_SUFFIX, atomic_path
from publish.metadata import MetadataError, load_release_yaml
from tests.publish_support import publish_args, run_cli
from tests.release_factory import ShelfYear, build_release
from tests.zenodo_emulator import ZenodoEmulator

pytest_plugins = ("tests.publish_fixtures",)

#: Two small Totten maps: enough for every command, quick to write and catalog.
SMALL = (ShelfYear("Totten", 2020, ("LC08",), size=(120, 140)),
         ShelfYear("Totten", 2021, ("LC08",), size=(120, 140)))
BINARY = b"\xff\xfe\x00\x01garbage"


@pytest.fixture(scope="module")
def small_pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small cataloged release, built once; never modify it (copy with ``small``)."""
    root = build_release(tmp_path_factory.mktemp("small") / "release", SMALL)
    catalog_release(root, PAPER_FACTORS)
    return root


@pytest.fixture
def small(small_pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the small cataloged release that a test may corrupt."""
    return Path(shutil.copytree(small_pristine, tmp_path / "release"))


def invoke(*args: object) -> Result:
    """``icedamage ARGS`` in-process (rich prints into the runner's output)."""
    return CliRunner().invoke(build_app(), [str(a) for a in args])


def flat(result: Result) -> str:
    """The output as one line (rich may wrap long paths)."""
    return " ".join(result.output.split())


def refused(result: Result, code: int, *texts: str) -> str:
    """Assert a clean exit ``code`` whose output holds every text; the flat output."""
    text = flat(result)
    assert result.exit_code == code and isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output, result.output
    for expected in texts:
        assert expected in text, (expected, result.output)
    return text


def forbid(monkeypatch: pytest.MonkeyPatch, target: str) -> None:
    """Make ``target`` (the long work of a command) fail the test if it is called."""
    def called(*_args: object, **_kwargs: object) -> None:
        raise AssertionError(f"{target} ran: the option should have been refused first")

    monkeypatch.setattr(target, called)


# --- finding 4: corrupt catalog inputs are one line naming the file ---------------------------


@pytest.mark.parametrize(("text", "why"), [(b"title: [unclosed\n  - x: :\n", "not valid YAML"),
                                           (BINARY, "not UTF-8 text")],
                         ids=["not-yaml", "not-utf8"])
def test_a_release_yaml_that_does_not_read_names_the_file(small: Path, text: bytes,
                                                          why: str) -> None:
    (small / RELEASE_METADATA).write_bytes(text)
    refused(invoke("catalog", small, "--force"), 1, str(small / RELEASE_METADATA), why)


def test_a_garbage_metadata_ods_names_the_file(small: Path) -> None:
    """Even without --force (the file is read to see whether its rows changed)."""
    ods = small / METADATA_ODS
    ods.write_bytes(b"garbage\n")
    refused(invoke("catalog", small), 1, str(ods), "not a readable OpenDocument spreadsheet")
    assert ods.read_bytes() == b"garbage\n"  # left as it was


@pytest.mark.parametrize("command", [["catalog", "--force"], ["stats"]],
                         ids=["catalog", "stats"])
def test_a_truncated_damage_map_names_the_file(small: Path, command: list[str]) -> None:
    (damage_map,) = (small / "Totten" / "2021").glob("*_damage_map.tif")
    data = damage_map.read_bytes()
    damage_map.write_bytes(data[:len(data) // 2])
    text = refused(invoke(command[0], small, *command[1:]), 1, str(damage_map),
                   "cannot be read as a GeoTIFF")
    assert "See previous exception" not in text  # GDAL's own reason instead


@pytest.mark.parametrize("command", ["catalog", "stats"])
@pytest.mark.parametrize("kind", ["binary", "missing", "folder"])
def test_a_factors_file_that_does_not_read_names_option_and_file(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str,
        kind: str) -> None:
    path = tmp_path / "factors.json"
    if kind == "binary":
        path.write_bytes(BINARY)
    elif kind == "folder":
        path.mkdir()
    forbid(monkeypatch, "catalog.build.catalog_release")
    forbid(monkeypatch, "catalog.stats.release_stats")
    text = refused(invoke(command, small, "--factors", path), 2, f"--factors {path}:")
    assert "[Errno" not in text and "codec can't decode" not in text


def test_load_factors_names_the_file(tmp_path: Path) -> None:
    """What ``icedamage uncertainty`` and the catalog commands get from the loader."""
    path = tmp_path / "bin.json"
    path.write_bytes(BINARY)
    with pytest.raises(ValueError, match=f"{path}: not a factors file"):
        load_factors(path)
    with pytest.raises(ValueError, match="cannot read the factors file"):
        load_factors(tmp_path / "none.json")


def test_load_release_yaml_names_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.yaml"
    path.write_bytes(BINARY)
    with pytest.raises(MetadataError, match=f"{path}: not UTF-8 text"):
        load_release_yaml(path)


def test_publish_dry_run_refuses_binary_metadata(pub_release: Path, emulator: ZenodoEmulator,
                                                 tmp_path: Path) -> None:
    """Exceptions propagate from ``run_cli``: a UnicodeDecodeError would fail the test."""
    metadata = tmp_path / "bin.yaml"
    metadata.write_bytes(BINARY)
    code, output = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run",
                                        "--metadata", str(metadata)))
    text = " ".join(output.split())
    assert code == 2 and f"{metadata}: not UTF-8 text" in text, output


# --- finding 5: user text is never rich markup or an emoji code -------------------------------


def test_a_path_with_brackets_is_printed_as_typed(tmp_path: Path) -> None:
    folder = tmp_path / "my[bold]release"
    folder.mkdir()
    refused(invoke("catalog", folder), 1, f"{folder}: no product files")


def test_a_shelf_with_a_closing_tag_is_an_error_not_a_crash(small: Path) -> None:
    refused(invoke("search", small, "--shelf", "x[/]"), 2, "'x[/]'")


def test_a_record_like_source_keeps_its_colons(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    text = refused(invoke("search", "zenodo:abc"), 2,
                   "zenodo:abc: release folder or index file not found", "zenodo:<number>")
    assert "🔤" not in text


# --- finding 6: output targets are checked before the work; atomic_path names the file -------


def test_validate_refuses_a_json_target_that_is_a_folder_before_validating(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    forbid(monkeypatch, "validation.commands.validate_release")
    target = tmp_path / "emptydir"
    target.mkdir()
    refused(invoke("validate", small, "--offline", "--json", target), 2,
            f"--json {target}: is a folder")


def test_validate_refuses_a_json_target_under_a_file(small: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    forbid(monkeypatch, "validation.commands.validate_release")
    (tmp_path / "afile.txt").write_text("x")
    target = tmp_path / "afile.txt" / "report.json"
    refused(invoke("validate", small, "--offline", "--json", target), 2,
            f"--json {target}: {tmp_path / 'afile.txt'} is a file, not a folder")


def test_an_unwritable_output_folder_is_refused_before_the_work(
        small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As root every folder is writable, so the permission answer is made up here; the real
    folder's case runs below when the tests do not run as root."""
    readonly = tmp_path / "ro"
    readonly.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: Path(path) != readonly
                        and real_access(path, mode, **kw))
    forbid(monkeypatch, "validation.commands.validate_release")
    forbid(monkeypatch, "catalog.stats.release_stats")
    refused(invoke("validate", small, "--offline", "--json", readonly / "report.json"), 2,
            f"cannot write in {readonly} (permission denied)")
    refused(invoke("stats", small, "--out", readonly / "sub" / "out.csv"), 2,
            f"--out {readonly / 'sub' / 'out.csv'}: cannot write in {readonly}")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(small: Path, tmp_path: Path) -> None:
    readonly = tmp_path / "ro"
    readonly.mkdir(mode=0o555)
    refused(invoke("stats", small, "--out", readonly / "out.csv"), 2, "permission denied")


def test_stats_refuses_an_out_folder_before_counting(small: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    forbid(monkeypatch, "catalog.stats.release_stats")
    folder = tmp_path / "out.csv"
    folder.mkdir()
    refused(invoke("stats", small, "--out", folder), 2, f"--out {folder}: is a folder")


def test_temporal_consistency_checks_its_outputs_first(small: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    forbid(monkeypatch, "catalog.temporal.release_consistency")
    (tmp_path / "afile.txt").write_text("x")
    table = tmp_path / "afile.txt" / "pairs.csv"
    refused(invoke("temporal-consistency", small, "--out", table), 2,
            f"--out {table}: {tmp_path / 'afile.txt'} is a file")
    medians = tmp_path / "pairs_medians.csv"  # a CSV table brings its medians beside it
    medians.mkdir()
    refused(invoke("temporal-consistency", small, "--out", tmp_path / "pairs.csv"), 2,
            f"{medians}: is a folder")


def test_atomic_path_names_the_final_file_not_its_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    final = tmp_path / "out.csv"

    def denied(*_args: object, **kwargs: object) -> tuple[int, str]:
        hidden = str(Path(str(kwargs["dir"])) / f".out.csv.x1y2{TEMPORARY_SUFFIX}")
        raise PermissionError(errno.EACCES, "Permission denied", hidden)

    with monkeypatch.context() as patch:
        patch.setattr("producer.writer.tempfile.mkstemp", denied)
        with pytest.raises(PermissionError) as raised, atomic_path(final) as tmp:
            tmp.write_text("x")
    assert str(raised.value) == f"cannot write {final}: Permission denied"
    assert raised.value.errno == errno.EACCES
    (tmp_path / "folder").mkdir()
    with pytest.raises(IsADirectoryError, match=f"cannot write {tmp_path / 'folder'}: "), \
            atomic_path(tmp_path / "folder") as tmp:
        tmp.write_text("x")
    with pytest.raises(FileNotFoundError) as other, atomic_path(final) as tmp:
        (tmp_path / "missing" / "x").read_text()  # the block's own error: unchanged
    assert other.value.filename == str(tmp_path / "missing" / "x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]  # no temporary left


# --- finding 8: a bad --schemas folder is bad usage, found first ------------------------------


def test_validate_refuses_a_missing_schema_folder_first(small: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    forbid(monkeypatch, "validation.commands.validate_release")
    refused(invoke("validate", small, "--schemas", tmp_path / "nope"), 2,
            f"--schemas {tmp_path / 'nope'}: no such folder")
    (tmp_path / "empty").mkdir()
    refused(invoke("validate", small, "--schemas", tmp_path / "empty"), 2,
            "no schema-map.json in it")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "schema-map.json").write_text(json.dumps({"https://x/s.json":
                                                                     "s.json"}))
    refused(invoke("validate", small, "--schemas", tmp_path / "broken"), 2,
            "does not read", str(tmp_path / "broken" / "s.json"))


# --- finding 9: impossible year filters are refused ------------------------------------------


@pytest.mark.parametrize(("args", "message"), [
    (["--year", "21"], "--year 21: '21' is not YYYY"),
    (["--year", "1990"], "--year 1990: no Landsat 7/8/9 summer before"),
    (["--to", str(latest_summer() + 1)], "has not begun"),
    (["--from", "2022", "--to", "2019"], "--from 2022 is after --to 2019"),
    (["--year", "2021", "--from", "2019"], "not both"),
], ids=["two-digits", "before-landsat", "future", "backwards", "year-and-range"])
def test_search_refuses_impossible_years(small: Path, args: list[str], message: str) -> None:
    refused(invoke("search", small, *args), 2, message)


def test_search_takes_a_possible_range(small: Path) -> None:
    result = invoke("search", small, "--from", "2021", "--to", "2021", "--format", "json")
    assert result.exit_code == 0, result.output
    assert [i["id"] for i in json.loads(result.output)] == ["totten-2021"]


# --- minor findings ---------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["stats", "temporal-consistency"])
def test_plot_must_be_png(small: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                          command: str) -> None:
    forbid(monkeypatch, "catalog.stats.release_stats")
    forbid(monkeypatch, "catalog.temporal.release_consistency")
    plot = tmp_path / "out.jpg"
    refused(invoke(command, small, "--plot", plot), 2, f"--plot {plot}: the figure is written "
            "as PNG")
    assert not plot.exists()


@pytest.mark.parametrize("command", ["catalog", "stats", "temporal-consistency"])
def test_a_file_is_not_a_release_folder(tmp_path: Path, command: str) -> None:
    path = tmp_path / "afile.txt"
    path.write_text("x")
    refused(invoke(command, path), 2, f"{path}: is a file, not a release folder")
    refused(invoke(command, tmp_path / "nope"), 2, "release folder not found")


def test_a_url_that_is_no_record_keeps_its_text(tmp_path: Path) -> None:
    refused(invoke("search", "https://example.com/foo"), 2,
            "https://example.com/foo: not a published record")
    with pytest.raises(SearchError, match="https://example.com/foo: not a published record"):
        search("https://example.com/foo")


def test_failures_during_the_work_still_exit_1(small: Path, tmp_path: Path) -> None:
    """Bad usage is 2; a release that cannot be searched (not cataloged) stays a failure."""
    bare = build_release(tmp_path / "bare", SMALL[:1])
    refused(invoke("search", bare), 1, "no items.parquet found")
    refused(invoke("search", small, "--sensor", "LX99"), 2, "LX99")


@pytest.mark.parametrize("content", [b"\xff\xfe binary", b"[0.8, 0.7]"])
def test_an_unreadable_evaluation_file_is_named(tmp_path: Path, content: bytes) -> None:
    """``icedamage uncertainty`` on a file that is not UTF-8 JSON text, or not an object: one
    line naming the file, not a codec or attribute error."""
    from producer.evaluation import read_precision_recall

    path = tmp_path / "eval.json"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="eval.json: not"):
        read_precision_recall(path)
