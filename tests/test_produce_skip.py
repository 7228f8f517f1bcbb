"""Re-running ``produce``: up-to-date shelf-years are skipped cheaply, changed inputs are redone.

The skip rule (``producer.pipeline``): a shelf-year is redone when its scene set, the content of
its weights, the software version or a parameter changed. The re-run that skips must not render
scenes, load the model or import torch/diffusers (``docs/benchmarks.md``, "Re-run (skip) path").
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from producer import cache, pipeline
from producer.cache import cached_sha256
from producer.cli import build_app, command_names, invoked_command
from producer.provenance import file_sha256, read_provenance
from producer.shelves import roi_polygon
from producer.sources import demo
from producer.sources.local import LocalFolderSource
from producer.spec import AUXILIARY_SUFFIXES
from tests.test_pipeline import (  # noqa: F401 (fixture)
    DEMO_SIZE,
    SmallLocalSource,
    _produce,
    small_scene,
)

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["--shelf", "Totten", "--year", "2021"]


@pytest.fixture
def weights(tiny_weights: Path, tmp_path: Path) -> Path:
    """A private copy of ``test_pipeline``'s tiny random-init checkpoint, free to be changed."""
    path = tmp_path / "weights" / "tiny.safetensors"
    path.parent.mkdir()
    path.write_bytes(tiny_weights.read_bytes())
    return path


def _status(result) -> str:
    assert result.exit_code == 0, result.output
    for status in ("skipped", "produced"):
        if f"Totten 2021: {status}" in result.output:
            return status
    raise AssertionError(result.output)


def _record(out: Path):
    (path,) = (out / "Totten" / "2021").glob("*" + AUXILIARY_SUFFIXES["provenance"])
    return read_provenance(path)


def _flip_last_mantissa_byte_in_place(path: Path) -> None:
    """Change the weights' content keeping size, inode and mtime (a float32 stays finite)."""
    st = path.stat()
    with path.open("r+b") as handle:
        handle.seek(-4, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-4, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 1]))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    after = path.stat()
    assert (after.st_size, after.st_mtime_ns, after.st_ino) == (st.st_size, st.st_mtime_ns,
                                                                st.st_ino)


def test_changed_inputs_are_redone_unchanged_ones_skipped(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_NS", 0)  # the fresh copy may be remembered at once
    out = tmp_path / "release"
    assert _status(_produce(ARGS, weights, out)) == "produced"
    first = _record(out)

    # Up to date: skipped, without rendering scenes, building the layout or loading the model.
    def forbidden(*args, **kwargs):
        raise AssertionError("the skip path did expensive work")

    with monkeypatch.context() as patch:
        patch.setattr(demo.DemoSource, "scenes", forbidden)
        patch.setattr(demo, "build_layout", forbidden)
        patch.setattr(pipeline.LoadedModel, "_load", forbidden)
        patch.setattr(cache, "file_sha256", forbidden)  # weights hashes come from the cache
        assert _status(_produce(ARGS, weights, out)) == "skipped"

    # Same size, same mtime, same inode, different bytes: the weights changed, so it is redone.
    _flip_last_mantissa_byte_in_place(weights)
    assert _status(_produce(ARGS, weights, out)) == "produced"
    second = _record(out)
    assert second.segmentation.weights_sha256 == file_sha256(weights)
    assert second.segmentation.weights_sha256 != first.segmentation.weights_sha256
    assert second.inputs_digest != first.inputs_digest

    # A new icedamage version is a changed input.
    real_version = importlib.metadata.version
    with monkeypatch.context() as patch:
        patch.setattr(importlib.metadata, "version",
                      lambda name: "999.0" if name == "icedamage" else real_version(name))
        assert _status(_produce(ARGS, weights, out)) == "produced"
        assert _record(out).software["icedamage"] == "999.0"

    # A changed scene set (one candidate fewer) is a changed input.
    used = {s.scene_id for s in _record(out).scenes}
    real_plan = demo.plan_summer
    dropped = next(p.scene_id for p in real_plan("Totten", 2021) if p.scene_id not in used)
    with monkeypatch.context() as patch:
        patch.setattr(demo, "plan_summer", lambda shelf, year: [
            p for p in real_plan(shelf, year) if p.scene_id != dropped])
        assert _status(_produce(ARGS, weights, out)) == "produced"
        assert dropped not in _record(out).parameters["candidates"]


def test_new_diffgf_weights_do_not_redo_years_without_slc_off(weights: Path,
                                                               tmp_path: Path) -> None:
    """DiffGF shapes only SLC-off summers: a Landsat 8 year stays up to date when it changes."""
    out = tmp_path / "release"
    diffgf = tmp_path / "diffgf.safetensors"
    diffgf.write_bytes(b"first weights")
    assert _status(_produce([*ARGS, "--diffgf", str(diffgf)], weights, out)) == "produced"
    diffgf.write_bytes(b"other weights")
    assert _status(_produce([*ARGS, "--diffgf", str(diffgf)], weights, out)) == "skipped"
    # nor does the restoration method: nothing is restored in a Landsat 8/9 summer
    fill = _produce([*ARGS, "--restoration", "FillNodata"], weights, out)
    assert _status(fill) == "skipped"
    assert "restoration_method" not in _record(out).parameters


def test_records_of_the_previous_parameter_set_stay_up_to_date(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Records written while the restoration method counted in every year (before it became
    a parameter of SLC-off years only) describe the same inputs: upgrading must not redo them."""
    out = tmp_path / "release"
    original = pipeline.run_parameters

    def previous(*args, **kwargs):  # the earlier version: no year, so the method always counts
        kwargs.pop("year", None)
        return original(*args[:5], **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "run_parameters", previous)
        assert _status(_produce(ARGS, weights, out)) == "produced"
    assert "restoration_method" in _record(out).parameters
    assert _status(_produce(ARGS, weights, out)) == "skipped"


def test_a_rerun_interrupted_while_writing_is_redone(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C after the products were replaced but before the new record was written: the old
    record must not vouch for the new files, so the next run redoes the shelf-year."""
    out = tmp_path / "release"
    assert _status(_produce(ARGS, weights, out)) == "produced"
    _flip_last_mantissa_byte_in_place(weights)  # new weights: the products will change

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_write_json", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pipeline.produce("Totten", [2021], demo.DemoSource(int(DEMO_SIZE)),
                             pipeline.ProduceOptions(out=out, weights=weights, tta=False,
                                                     device="cpu"))
    folder = out / "Totten" / "2021"
    assert list(folder.glob("*_damage.tif"))  # new products were written ...
    assert not list(folder.glob("*" + AUXILIARY_SUFFIXES["provenance"]))  # ... no stale record
    _flip_last_mantissa_byte_in_place(weights)  # back to the first run's weights
    assert _status(_produce(ARGS, weights, out)) == "produced"  # not "skipped"
    assert _record(out).segmentation.weights_sha256 == file_sha256(weights)


def test_an_interrupted_force_run_leaves_the_old_shelf_year_as_it_was(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C while ``--force`` writes the new files (minutes on a big shelf): the new files
    are staged apart, so the release keeps its old products and their record, byte for byte,
    and no staging folder is left; the old record still vouches for them (skipped)."""
    out = tmp_path / "release"
    assert _status(_produce(ARGS, weights, out)) == "produced"
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # after the products, while the source index is written

    with monkeypatch.context() as patch:
        patch.setattr(pipeline, "_source_index_rows", interrupted)
        with pytest.raises(KeyboardInterrupt):
            pipeline.produce("Totten", [2021], demo.DemoSource(int(DEMO_SIZE)),
                             pipeline.ProduceOptions(out=out, weights=weights, tta=False,
                                                     device="cpu", force=True))
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before
    assert not (out / pipeline.STAGING_DIR).exists()
    assert _status(_produce(ARGS, weights, out)) == "skipped"


def test_a_rewrite_removes_what_a_killed_write_left(weights: Path, tmp_path: Path) -> None:
    """A run killed while writing (SIGKILL: no cleanup) leaves hidden temporaries that the
    validator refuses; the next run that rewrites the shelf-year removes them, and only them."""
    out = tmp_path / "release"
    assert _status(_produce(ARGS, weights, out)) == "produced"
    folder = out / "Totten" / "2021"
    (product,) = folder.glob("*_damage.tif")
    leftovers = [folder / f".{product.name}.k1ll3d.tmp", folder / ".icedamage-strips-k1ll3d",
                 folder / ".LC09_Totten_2021_provenance.json.k1ll3d.tmp",  # record being written
                 folder / ".LC08_LC09_Totten_2021_damage.tif.k1ll3d.tmp"]  # other sensors' run
    for leftover in leftovers[2:]:
        leftover.write_text("{")
    leftovers[0].write_bytes(b"half a COG")
    leftovers[1].mkdir()
    (leftovers[1] / "0.tif").write_bytes(b"strips")
    unrelated = folder / ".notes.txt.tmp"
    unrelated.write_text("someone else's")
    assert _status(_produce([*ARGS, "--force"], weights, out)) == "produced"
    assert [p for p in leftovers if p.exists()] == [] and unrelated.exists()


def test_a_rerun_under_another_name_leaves_no_orphan_if_interrupted(
        weights: Path, tmp_path: Path) -> None:
    """When a re-run's products get other names (another sensor set, a restoration), the old
    record's files go before anything is written: an interrupted re-run cannot leave two
    product pairs that no record explains (the validator's layout-multiple-products)."""
    out = tmp_path / "release"
    assert _status(_produce(ARGS, weights, out)) == "produced"
    folder = out / "Totten" / "2021"
    old = sorted(p.name for p in folder.iterdir())
    record = _record(out)
    same = set(record.products.values())
    pipeline._withdraw_records(out, "Totten", 2021, same)  # same names: products stay
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        n for n in old if not n.endswith(AUXILIARY_SUFFIXES["provenance"]))
    (folder / ("again" + AUXILIARY_SUFFIXES["provenance"])).write_text(record.to_json())
    pipeline._withdraw_records(out, "Totten", 2021, {"LC08_LC09_Totten_2021_damage_map.tif"})
    assert list(folder.iterdir()) == []


def test_rerun_in_a_fresh_interpreter_skips_without_torch(weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    assert _status(_produce(ARGS, weights, out)) == "produced"
    args = [*ARGS, "--weights", str(weights), "--out", str(out), "--demo-size", DEMO_SIZE,
            "--no-tta", "--device", "cpu"]  # as _produce
    for entry, argv in (("produce_main", args), ("icedamage_main", ["produce", *args])):
        code = (f"import sys\nfrom producer.cli import {entry}\ntry:\n    {entry}()\n"
                "finally:\n    print('heavy:', sorted(m for m in ('torch', 'diffusers', "
                "'transformers', 'geopandas', 'validation', 'rio_cogeo', 'scipy.spatial') "
                "if m in sys.modules))\n")
        proc = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True,
                              text=True, check=False,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "250"})
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Totten 2021: skipped" in proc.stderr
        assert "heavy: []" in proc.stdout, entry


def test_icedamage_finds_every_command_without_importing_the_others() -> None:
    every = command_names(build_app())
    assert {"produce", "validate", "catalog", "publish", "train"} <= every
    for name in every:
        assert name in command_names(build_app(name))
    assert command_names(build_app("produce")) == {"produce"}
    assert command_names(build_app("no-such-command")) == every
    assert invoked_command(["produce", "--shelf", "Totten"]) == "produce"
    assert invoked_command(["--help", "produce"]) is None and invoked_command([]) is None


# ---------------------------------------------------------------------------------------------
# The weights-hash cache
# ---------------------------------------------------------------------------------------------


class _CountingHash:
    """``file_sha256`` that counts the files it reads."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, path: Path) -> str:
        self.calls += 1
        return file_sha256(path)


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> _CountingHash:
    counter = _CountingHash()
    monkeypatch.setattr(cache, "file_sha256", counter)
    return counter


def _aged(path: Path, data: bytes, mtime_ns: int | None = None) -> Path:
    """Write ``data`` and set the mtime (default: an hour ago)."""
    path.write_bytes(data)
    mtime = mtime_ns if mtime_ns is not None else path.stat().st_mtime_ns - 3600 * 10**9
    os.utime(path, ns=(mtime, mtime))
    return path


def test_hash_is_remembered_until_the_file_changes(tmp_path: Path, counting: _CountingHash,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_NS", 0)
    path = _aged(tmp_path / "w.bin", b"a" * 4096)
    mtime = path.stat().st_mtime_ns
    assert cached_sha256(path) == file_sha256(path) and counting.calls == 1
    assert cached_sha256(path) == file_sha256(path) and counting.calls == 1  # remembered
    assert cached_sha256(tmp_path / "." / "w.bin") == file_sha256(path) and counting.calls == 1

    # Rewritten in place, same size and mtime: ctime moved, so it is hashed again.
    _aged(path, b"b" * 4096, mtime)
    assert cached_sha256(path) == file_sha256(path) and counting.calls == 2
    # Replaced by another file of the same size and mtime (new inode).
    _aged(tmp_path / "other.bin", b"c" * 4096, mtime).replace(path)
    assert cached_sha256(path) == file_sha256(path) and counting.calls == 3


def test_racily_fresh_file_is_not_trusted(tmp_path: Path, counting: _CountingHash) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"fresh")  # ctime is now: a same-tick rewrite could keep the signature
    cached_sha256(path)
    cached_sha256(path)
    assert counting.calls == 2


def test_folder_hash_follows_its_files(tmp_path: Path, counting: _CountingHash,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_NS", 0)
    folder = tmp_path / "diffgf"
    (folder / "unet").mkdir(parents=True)
    _aged(folder / "unet" / "model.safetensors", b"u" * 100)
    _aged(folder / "config.json", b"{}")
    before = cached_sha256(folder)
    assert cached_sha256(folder) == before and counting.calls == 1
    _aged(folder / "vae.safetensors", b"v")
    after = cached_sha256(folder)
    assert after == file_sha256(folder) != before and counting.calls == 2


def test_corrupt_or_unwritable_cache_only_costs_a_rehash(
        tmp_path: Path, counting: _CountingHash, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cache, "RACY_NS", 0)
    path = _aged(tmp_path / "w.bin", b"x" * 64)
    store = tmp_path / "cache"
    monkeypatch.setenv(cache.CACHE_ENV, str(store))
    store.mkdir()
    (store / cache.HASH_CACHE_FILE).write_text("{not json")
    assert cached_sha256(path) == file_sha256(path)
    assert cached_sha256(path) == file_sha256(path) and counting.calls == 1  # rewritten, used

    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv(cache.CACHE_ENV, str(blocker / "cache"))  # cannot be created
    assert cached_sha256(path) == file_sha256(path) and counting.calls == 2


def test_demo_extent_from_zones_is_the_layouts() -> None:
    """The skip path's extent (zones only) hashes like the one of a rendered year."""
    source = demo.DemoSource(int(DEMO_SIZE))
    grid = source.grid("Totten", roi_polygon("Totten"))
    from_zones = source.extent("Totten", 2021, grid)
    assert not source._layouts  # nothing rendered for it
    source.layout("Totten", 2021)
    assert source.extent("Totten", 2021, grid).wkb == from_zones.wkb


# ---------------------------------------------------------------------------------------------
# local:DIR: scene ids say nothing of the files
# ---------------------------------------------------------------------------------------------


def test_local_rerun_skips_from_the_selection_and_redoes_changed_files(
        weights: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A re-run skips before any scene is built; a file replaced by a re-export under the same
    name, or a second file of the same day, changes the digest and redoes the shelf-year."""
    folder = tmp_path / "scenes"
    path = small_scene(folder / "LC08_Totten_composite_2021-12-05_uint8.tif", 100)
    options = pipeline.ProduceOptions(out=tmp_path / "release", weights=weights, tta=False,
                                      device="cpu")

    def run(force: bool = False) -> pipeline.YearResult:
        (result,) = pipeline.produce("Totten", [2021], SmallLocalSource(folder, progress=False),
                                     replace(options, force=force)).results
        return result

    def digest(result: pipeline.YearResult) -> str:
        assert result.status == "produced", result.message
        return read_provenance(result.provenance).inputs_digest

    first = digest(run())

    def forbidden(*args, **kwargs):
        raise AssertionError("the skip path built a scene or loaded the model")

    with monkeypatch.context() as patch:
        patch.setattr(LocalFolderSource, "_build", forbidden)
        patch.setattr(LocalFolderSource, "_fourth_band", forbidden)
        patch.setattr(pipeline.LoadedModel, "_load", forbidden)
        assert run().status == "skipped"

    small_scene(path, 60)  # re-exported: same name, other pixels
    stamp = path.stat().st_mtime_ns + 5 * 10**9
    os.utime(path, ns=(stamp, stamp))
    second = digest(run())
    pid = "LC08_L1GT_089108_20211205_20211215_02_T1"
    small_scene(folder / f"{pid}_refl.tif", 30)  # a second file of the same day
    third_result = run()
    third = digest(third_result)
    assert len({first, second, third}) == 3
    (scene,) = read_provenance(third_result.provenance).scenes
    assert pid in scene.source_ids
    assert digest(run(force=True)) == third  # --force: the same files, the same digest
    assert run().status == "skipped"
