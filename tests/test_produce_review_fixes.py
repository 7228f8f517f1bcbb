"""Review fixes of ``produce`` with ``local:DIR``: earlier products left by a year that is no
longer mapped, coarse scenes, files named for a shelf but imaged elsewhere, the provenance of a
local map (its files), the DiffGF record's configuration, partial cloud masks and sidecars that
contradict their file's name. Scenes stay tiny (a 64 × 64 px window, the tiny random model)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from pyproj import Transformer

from producer import pipeline
from producer.grid import Grid
from producer.provenance import Provenance, file_sha256, read_provenance
from producer.shelves import roi_polygon
from producer.sources.base import Scene
from producer.sources.errors import SourceError
from tests.test_pipeline import SmallLocalSource, small_scene, small_window
from tests.test_sources_local import GRID, X0, Y0, on_grid, source, write_tif

DAY = "LC08_Totten_composite_2021-12-05_uint8.tif"
MASK = "LC08_Totten_composite_2021-12-05_cloud.tif"


def _options(out: Path, weights: Path, **kw: object) -> pipeline.ProduceOptions:
    return pipeline.ProduceOptions(out=out, weights=weights, tta=False, device="cpu", **kw)


def _run(folder: Path, options: pipeline.ProduceOptions, year: int = 2021
         ) -> pipeline.YearResult:
    (result,) = pipeline.produce("Totten", [year], SmallLocalSource(folder, progress=False),
                                 options).results
    return result


# ---------------------------------------------------------------------------------------------
# 1. A year no longer mapped names the earlier products it leaves in the release
# ---------------------------------------------------------------------------------------------


def test_earlier_products_of_a_year_not_mapped_or_failed_are_named_and_kept(
        tiny_weights: Path, tmp_path: Path) -> None:
    folder, out = tmp_path / "scenes", tmp_path / "release"
    scene = small_scene(folder / DAY, 100)
    options = _options(out, tiny_weights)
    first = _run(folder, options)
    assert first.status == "produced", first.message
    year_folder = out / "Totten" / "2021"
    kept = sorted(p.name for p in year_folder.iterdir())
    assert "LC08_Totten_2021_damage_map.tif" in kept

    def says_kept(result: pipeline.YearResult) -> str:
        message = result.message
        assert f"the release still holds earlier products of Totten 2021: " \
               f"{year_folder / 'LC08_Totten_2021'} (" in message
        assert "LC08_Totten_2021_damage_map.tif" in message
        assert f"delete the folder {year_folder}" in message
        assert "`icedamage catalog` again" in message
        assert sorted(p.name for p in year_folder.iterdir()) == kept  # nothing deleted
        return message

    # a cloud mask now covering half the scene: the shelf region is no longer covered
    cloud = np.zeros(small_window().shape, np.uint8)
    cloud[:, :32] = 1
    write_tif(folder / MASK, cloud[None], small_window().transform)
    uncovered = _run(folder, options)
    assert uncovered.status == "not-mapped" and "not fully covered" in uncovered.message
    assert "they no longer match the current ones" in says_kept(uncovered)

    # the scene re-dated to the summer 2020 (its sidecar wins over its name): no scene in 2021
    (folder / MASK).unlink()
    (folder / f"{DAY}.json").write_text(json.dumps({"sensor": "LC08", "date": "2020-12-05"}))
    moved = _run(folder, options)
    assert moved.status == "not-mapped" and "no scene of Totten" in moved.message
    assert "they no longer match the current ones" in says_kept(moved)

    # a file that fails the year: the products are not replaced and may be stale
    corner = small_window().transform
    coarse = write_tif(folder / "LC08_Totten_composite_2022-01-10_uint8.tif",
                       np.full((3, 8, 8), 90, np.uint8),
                       Affine(300.0, 0, corner.c, 0, -300.0, corner.f))
    failed = _run(folder, options)
    assert failed.status == "failed" and str(coarse) in failed.message
    assert "may no longer match the current inputs" in says_kept(failed)
    assert scene.exists()


def test_a_year_without_earlier_products_says_nothing_of_them(tiny_weights: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    folder.mkdir()
    result = _run(folder, _options(tmp_path / "release", tiny_weights))
    assert result.status == "not-mapped"
    assert "earlier products" not in result.message


# ---------------------------------------------------------------------------------------------
# 2. Scenes coarser than 1.5 × the 30 m grid are refused, measured in EPSG:3031
# ---------------------------------------------------------------------------------------------


def _centre_in(crs: str) -> tuple[float, float]:
    return Transformer.from_crs("EPSG:3031", crs, always_xy=True).transform(X0 + 1500,
                                                                            Y0 + 1000)


@pytest.mark.parametrize(("crs", "pixel", "size"), [
    ("EPSG:3031", (300.0, 300.0), "300.0 m"),   # a 300 m preview export
    ("EPSG:3031", (60.0, 60.0), "60.0 m"),
    ("EPSG:4326", (0.0233, 0.009), "m (measured in EPSG:3031)"),  # ~1000 m: EE's default
    # 30 m east-west but 120 m north-south: a warp's suggested resolution averaged it to 41 m
    ("EPSG:4326", (0.00069, 0.00108), "m (measured in EPSG:3031)"),
    ("EPSG:32750", (100.0, 100.0), "m (measured in EPSG:3031)"),  # UTM 50S
])
def test_a_scene_coarser_than_45_m_is_refused(tmp_path: Path, crs: str,
                                              pixel: tuple[float, float], size: str) -> None:
    folder = tmp_path / "scenes"
    cx, cy = _centre_in(crs)
    transform = Affine(pixel[0], 0, cx - 4 * pixel[0], 0, -pixel[1], cy + 4 * pixel[1])
    path = write_tif(folder / DAY, np.full((3, 8, 8), 90, np.uint8), transform, crs)
    with pytest.raises(SourceError) as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    message = str(info.value)
    assert message.startswith(f"{path}: its pixels are ") and size in message
    assert "a scene may be at most 45 m (1.5 × the 30 m grid)" in message


@pytest.mark.parametrize(("crs", "pixel"), [
    ("EPSG:3031", 15.0), ("EPSG:3031", 45.0), ("EPSG:32750", 30.0), ("EPSG:3976", 30.0)])
def test_scenes_at_30_m_or_finer_are_accepted_in_any_crs(tmp_path: Path, crs: str,
                                                         pixel: float) -> None:
    folder = tmp_path / "scenes"
    cx, cy = _centre_in(crs)
    n = int(3600 / pixel)  # 3.6 km: over the 3 × 2.1 km grid
    transform = Affine(pixel, 0, cx - n / 2 * pixel, 0, -pixel, cy + n / 2 * pixel)
    write_tif(folder / DAY, np.full((3, n, n), 90, np.uint8), transform, crs)
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.valid_fraction > 0.9 and scene.metadata["reprojected"]


# ---------------------------------------------------------------------------------------------
# 3. A file named for the shelf but imaged elsewhere is skipped, named, with the rule
# ---------------------------------------------------------------------------------------------


def test_a_file_named_for_the_shelf_but_imaged_elsewhere_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    larsen_b = Affine(30.0, 0, -2_400_000, 0, -30.0, 1_300_020)
    path = write_tif(folder / DAY, np.full((3, 16, 16), 90, np.uint8), larsen_b)
    src = source(folder)
    assert src.scenes("Totten", 2021, GRID, tmp_path / "work") == []
    ((skipped, why),) = src.skipped
    assert skipped == path
    assert why.startswith("its footprint does not overlap the ROI of Totten, although its "
                          "file name gives the shelf 'Totten'")
    assert f"skipped {path}: its footprint does not overlap the ROI of Totten" in "\n".join(
        src.explain("Totten", 2021))


def test_a_named_file_off_the_roi_is_reported_by_produce(tiny_weights: Path,
                                                         tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    path = write_tif(folder / DAY, np.full((3, 16, 16), 90, np.uint8),
                     Affine(30.0, 0, -2_400_000, 0, -30.0, 1_300_020))
    result = _run(folder, _options(tmp_path / "release", tiny_weights))
    assert result.status == "not-mapped"
    assert f"skipped {path}: its footprint does not overlap the ROI of Totten" in result.message


# ---------------------------------------------------------------------------------------------
# 4. The provenance of a local map traces its scenes to their files
# ---------------------------------------------------------------------------------------------


def test_the_record_of_a_local_map_names_its_files(tiny_weights: Path, tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    small_scene(folder / "2021" / DAY, 100)
    result = _run(folder, _options(tmp_path / "release", tiny_weights))
    assert result.status == "produced", result.message
    record = read_provenance(result.provenance)
    # its name: a published record must not carry the producer's absolute paths
    assert record.source_folder == folder.resolve().name
    (scene,) = record.scenes
    assert scene.files == (f"2021/{DAY}",)
    assert scene.reprojected is False
    assert scene.source_ids == ()  # no Landsat product id known: none, not the file's name
    raw = json.loads(result.provenance.read_text())
    assert raw["scenes"][0]["files"] == [f"2021/{DAY}"] and raw["source_folder"]


def test_export_names_are_no_product_ids_yet_copies_are_used_once(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    first = on_grid(folder / DAY)
    copy = on_grid(folder / "backup" / DAY)
    src = source(folder)
    (scene,) = src.scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.source_ids == ()
    assert scene.metadata["files"] == [str(first)]
    ((path, why),) = src.skipped
    assert path == copy
    assert why == f"the same product (LC08_Totten_composite_2021-12-05) as {first}: used once"


def test_a_4_band_file_on_the_grid_is_not_called_reprojected(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / DAY, extra=np.zeros(GRID.shape, np.uint8))
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.metadata["reprojected"] is False and not scene.metadata["used_in_place"]


def test_records_without_files_or_source_folder_stay_readable(tiny_weights: Path,
                                                              tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    small_scene(folder / DAY, 100)
    result = _run(folder, _options(tmp_path / "release", tiny_weights))
    data = json.loads(result.provenance.read_text())
    del data["source_folder"]
    for scene in data["scenes"]:
        del scene["files"], scene["reprojected"]
    record = Provenance.from_json(json.dumps(data))
    assert record.source_folder is None
    assert record.scenes[0].files == () and record.scenes[0].reprojected is None


# ---------------------------------------------------------------------------------------------
# 5. The DiffGF record gives its configuration, and hashes the JSON it comes from
# ---------------------------------------------------------------------------------------------


def _fake_diffgf(tmp_path: Path) -> tuple[Path, dict]:
    weights = tmp_path / "my-diffgf.safetensors"
    weights.write_bytes(b"not read: restoration is faked")
    doc = {"format": "icedamage-diffgf/1", "vae": {"latent_channels": 4},
           "unet": {"block_out_channels": [8, 16]}, "scheduler": {"beta_end": 0.012},
           "meta": {"state": {"step": 3}}, "weights_sha256": file_sha256(weights)}
    weights.with_suffix(".json").write_text(json.dumps(doc))
    return weights, doc


def test_the_diffgf_record_holds_its_configuration(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from producer import restoration
    from producer.restoration.api import RestorationResult

    weights, doc = _fake_diffgf(tmp_path)
    grid = Grid.from_bounds(X0, Y0, X0 + 8 * 30, Y0 + 8 * 30)
    rgb = np.full((3, 8, 8), 90, np.uint8)
    rgb[:, :, 3] = 0
    scene_path = write_tif(tmp_path / "scene.tif", rgb, grid.transform)
    mask_path = write_tif(tmp_path / "masks.tif",
                          np.where(rgb[0] == 0, pipeline.MASK_GAP, 3)[None].astype(np.uint8),
                          grid.transform)
    scene = Scene("LE07_Totten_composite_2005-12-05", "LE07", dt.date(2005, 12, 5), scene_path,
                  1.0)

    def fake(src, dst, method, weights=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
        Path(dst).write_bytes(Path(src).read_bytes())
        return RestorationResult(method, 8, 0.125, str(weights), None, 0,
                                 settings={"seed": 0, "device": "cpu"}, tiles=1)

    monkeypatch.setattr(restoration, "restore_scene_file", fake)
    restored = pipeline.restore_scenes(
        [pipeline._SceneMasks(scene, mask_path, True, 0.0)],
        _options(tmp_path / "release", tmp_path / "unused.safetensors"), weights, tmp_path,
        pipeline._no_progress)
    record = restored.model
    assert (record.name, record.weights_file, record.weights_sha256) == (
        "DiffGF", "my-diffgf.safetensors", file_sha256(weights))
    assert record.config == {
        "format": doc["format"], "vae": doc["vae"], "unet": doc["unet"],
        "scheduler": doc["scheduler"], "config_file": "my-diffgf.json",
        "config_sha256": file_sha256(weights.with_suffix(".json"))}


def test_the_record_of_a_pretrained_diffgf_folder_names_its_config_files(tmp_path: Path
                                                                         ) -> None:
    from producer.restoration.api import diffgf_record

    folder = tmp_path / "diffgf"
    for part, name in (("vae", "config.json"), ("unet", "config.json"),
                       ("scheduler", "scheduler_config.json")):
        (folder / part).mkdir(parents=True)
        (folder / part / name).write_text(json.dumps({"_class_name": part, "size": 1}))
    record = diffgf_record(folder)
    assert record.weights_sha256 == file_sha256(folder) and record.weights_file == "diffgf"
    assert record.config["unet"] == {"size": 1}
    assert record.config["config_files"] == ["vae/config.json", "unet/config.json",
                                             "scheduler/scheduler_config.json"]


# ---------------------------------------------------------------------------------------------
# 6. A cloud mask must cover its scene; a sidecar contradicting its name is warned about
# ---------------------------------------------------------------------------------------------


def test_a_cloud_mask_covering_part_of_its_scene_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    scene = on_grid(folder / DAY)
    mask = write_tif(folder / MASK, np.ones((1, 30, 30), np.uint8), GRID.transform)
    with pytest.raises(SourceError) as info:
        source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    message = str(info.value)
    assert message.startswith(f"{mask}: the cloud mask of {scene} covers ")
    assert "a cloud mask must cover its scene's grid" in message


def test_a_cloud_mask_on_another_grid_covering_the_scene_is_accepted(tmp_path: Path) -> None:
    """A mask at 15 m over a larger area, or in another CRS, still covers its scene."""
    folder = tmp_path / "scenes"
    on_grid(folder / DAY)
    x0, y0 = GRID.transform.c - 300, GRID.transform.f + 300
    shape = (GRID.height * 2 + 40, GRID.width * 2 + 40)
    write_tif(folder / MASK, np.zeros((1, *shape), np.uint8), Affine(15, 0, x0, 0, -15, y0))
    (scene,) = source(folder).scenes("Totten", 2021, GRID, tmp_path / "work")
    assert scene.cloud_mask_path is not None and scene.valid_fraction == 1.0


def test_a_sidecar_contradicting_its_file_name_is_warned_about(tiny_weights: Path,
                                                               tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    small_scene(folder / DAY, 100)
    sidecar = folder / f"{DAY}.json"
    sidecar.write_text(json.dumps({"sensor": "LC09", "date": "2021-12-06", "shelf": "Totten"}))
    src = SmallLocalSource(folder, progress=False)
    src.grid("Totten", roi_polygon("Totten"))
    (scene,) = src.scenes("Totten", 2021, small_window(), tmp_path / "work")
    assert (scene.sensor, scene.acquired) == ("LC09", dt.date(2021, 12, 6))  # sidecar wins
    (warning,) = src.warnings("Totten", 2021)
    assert warning.startswith(f"{sidecar} contradicts the name of {DAY}: ")
    assert "sensor LC09 (sidecar) vs LC08 (file name)" in warning
    assert "date 2021-12-06 (sidecar) vs 2021-12-05 (file name)" in warning
    assert src.warnings("Totten", 2020) == []  # of the last selection only

    result = _run(folder, _options(tmp_path / "release", tiny_weights))
    assert result.status == "produced", result.message
    assert f"\n  - warning: {sidecar} contradicts the name of {DAY}" in result.message


def test_a_sidecar_agreeing_with_its_name_gives_no_warning(tmp_path: Path) -> None:
    folder = tmp_path / "scenes"
    on_grid(folder / DAY)
    (folder / f"{DAY}.json").write_text(json.dumps({"sensor": "LC08", "date": "2021-12-05"}))
    src = source(folder)
    src.scenes("Totten", 2021, GRID, tmp_path / "work")
    assert src.warnings("Totten", 2021) == []

