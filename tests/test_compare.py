"""Comparative evaluation of full-ROI scenes (paper 2.4.1): the medoid prediction is the map.

Unit tests of the agreement and the choice on rasters written and read back, then ``produce`` on
a demo summer with three full-coverage scenes, one of them hazy (haze the cloud mask missed, so
its prediction is an outlier) and ranked first by the source.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine

from producer.compare import (
    ComparedPrediction,
    choose_medoid,
    compare_predictions,
    iou_damage,
    kappa,
)
from producer.evaluation import Confusion
from producer.pipeline import ProduceOptions, produce
from producer.provenance import read_provenance
from producer.sources.demo import DemoSource
from producer.spec import TYPE1
from tests.test_pipeline import DEMO_SIZE, _produce
from validation.engine import validate_release

# ----------------------------------------------------------------------------------------------
# Agreement and choice
# ----------------------------------------------------------------------------------------------


def test_agreement_metrics_of_two_predictions() -> None:
    counts = Confusion(tp=2, fp=1, fn=1, tn=6)
    assert iou_damage(counts) == pytest.approx(0.5)
    # observed 0.8, chance (3*3 + 7*7) / 100 = 0.58
    assert kappa(counts) == pytest.approx((0.8 - 0.58) / 0.42)
    nothing = Confusion(tn=10)  # neither prediction has damage: they agree perfectly
    assert iou_damage(nothing) == 1.0 and kappa(nothing) == 1.0
    assert iou_damage(Confusion(fp=3, tn=7)) == 0.0


def test_choice_outlier_then_uncertainty_then_ranking() -> None:
    chosen, by, reason = choose_medoid([0.4, 0.8, 0.78], [0.1, 0.9, 0.9])
    assert (chosen, by) == (1, "agreement") and "0.8000" in reason
    chosen, by, reason = choose_medoid([0.7, 0.7], [0.5, 0.3])
    assert (chosen, by) == (1, "uncertainty") and "symmetric" in reason
    chosen, by, _ = choose_medoid([0.7, 0.7], [None, 0.9])  # unknown uncertainty loses
    assert (chosen, by) == (1, "uncertainty")
    chosen, by, reason = choose_medoid([0.7, 0.9, 0.9], [0.2, 0.4, 0.4])
    assert (chosen, by) == (1, "ranking") and "shared by 2" in reason
    # Ties are judged at the recorded precision (6 decimals).
    assert choose_medoid([0.9, 0.9 + 1e-9], [0.5, 0.5])[:2] == (0, "ranking")
    with pytest.raises(ValueError, match=">= 2 predictions"):
        choose_medoid([1.0], [None])


def _write(path: Path, array: np.ndarray, nodata: int | None = None) -> Path:
    profile = {"driver": "GTiff", "width": array.shape[1], "height": array.shape[0], "count": 1,
               "dtype": "uint8", "crs": "EPSG:3031", "nodata": nodata,
               "transform": Affine(30, 0, 0, 0, -30, 0)}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(array.astype(np.uint8), 1)
    return path


def test_outlier_prediction_is_not_chosen_on_rasters(tmp_path: Path) -> None:
    shape = (40, 30)
    extent = np.zeros(shape, bool)
    extent[:, :20] = True  # the comparison counts only the effective extent
    base = np.zeros(shape, np.uint8)
    base[5:15, 2:12] = 1
    near = base.copy()
    near[15:17, 2:12] = 1  # a slightly larger field
    outlier = np.zeros(shape, np.uint8)
    outlier[14:35, 5:18] = 1  # mostly elsewhere (e.g. haze read as fractures)
    outlier[:, 20:] = 1  # outside the extent: ignored
    preds = [ComparedPrediction(name, _write(tmp_path / f"{name}.tif", array))
             for name, array in (("outlier", outlier), ("base", base), ("near", near))]
    result = compare_predictions(preds, lambda r0, r1: extent[r0:r1], shape, strip_rows=7)
    # near agrees with base (100/120) and a little with the outlier (21 px shared): the medoid.
    assert result.scene_ids[result.chosen] == "near" and result.decided_by == "agreement"
    assert result.agreement(1, 2) == pytest.approx(100 / 120)
    assert result.agreement(0, 1) == pytest.approx(7 / (21 * 13 + 100 - 7))
    assert result.agreement(0, 2) == pytest.approx(21 / (21 * 13 + 120 - 21))
    assert result.pairs[(0, 1)].total == extent.sum()
    assert result.damage_fractions[0] == pytest.approx(21 * 13 / extent.sum())
    record = result.to_record(3, ["outlier", "base", "near", "fourth"])
    assert record["chosen"] == "near" and record["ranking_choice"] == "outlier"
    assert [c["scene_id"] for c in record["compared"]] == ["outlier", "base", "near"]
    assert min(record["compared"], key=lambda c: c["mean_agreement"])["scene_id"] == "outlier"
    assert len(record["pairs"]) == 3 and record["full_coverage"][-1] == "fourth"


def test_two_predictions_the_more_confident_one_wins(tmp_path: Path) -> None:
    shape = (16, 16)
    extent = np.ones(shape, bool)
    pred = np.zeros(shape, np.uint8)
    pred[:8] = 1
    unsure = np.where(pred == 1, 55, 45)  # close to 50 %: high entropy
    sure = np.where(pred == 1, 97, 2)
    sure[0, 0] = 255  # no data: not counted
    preds = [ComparedPrediction("ranked-first", _write(tmp_path / "a.tif", pred),
                                _write(tmp_path / "pa.tif", unsure, 255)),
             ComparedPrediction("confident", _write(tmp_path / "b.tif", pred),
                                _write(tmp_path / "pb.tif", sure, 255))]
    result = compare_predictions(preds, lambda r0, r1: extent[r0:r1], shape)
    assert result.scene_ids[result.chosen] == "confident"
    assert result.decided_by == "uncertainty" and "symmetric" in result.reason
    assert result.uncertainties[0] == pytest.approx(0.9928, abs=1e-3)  # H(0.45) in bits
    assert result.uncertainties[1] < 0.2


def test_rasters_off_the_grid_are_refused(tmp_path: Path) -> None:
    preds = [ComparedPrediction(n, _write(tmp_path / f"{n}.tif", np.zeros((8, 8))))
             for n in "ab"]
    with pytest.raises(ValueError, match=r"a\.tif.*not on the grid"):
        compare_predictions(preds, lambda r0, r1: np.ones((r1 - r0, 9), bool), (9, 9))


# ----------------------------------------------------------------------------------------------
# produce: a summer with three full-coverage scenes
# ----------------------------------------------------------------------------------------------

HAZY = "DEMO_LC09_Totten_20220331_hazy"
CLEAN = ("DEMO_LC09_Totten_20220320", "DEMO_LC09_Totten_20220325")


class _ThreeFullScenes(DemoSource):
    """Totten 2021's full clear demo scene three times: first (the source's best) with thick
    haze the cloud mask missed, then two clean acquisitions of the same ground."""

    def scene_ids(self, shelf, year, grid):  # noqa: ANN001, ANN201 - protocol signature
        return [HAZY, *CLEAN]

    def scenes(self, shelf, year, grid, workdir):  # noqa: ANN001, ANN201 - protocol signature
        clear = next(s for s in super().scenes(shelf, year, grid, workdir)
                     if s.valid_fraction == 1.0)
        with rasterio.open(clear.path) as ds:
            rgb, profile = ds.read().astype(np.float32), ds.profile
        out = []
        for scene_id, image in ((HAZY, rgb * 0.4 + 0.6 * 235.0), (CLEAN[0], rgb), (CLEAN[1], rgb)):
            path = Path(workdir) / f"{scene_id}.tif"
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(np.clip(image, 1, 255).astype(np.uint8))
            day = dt.datetime.strptime(scene_id.split("_")[3], "%Y%m%d").date()
            out.append(dataclasses.replace(clear, scene_id=scene_id, path=path, acquired=day))
        return out


def _options(out: Path, weights: Path, **kw) -> ProduceOptions:
    return ProduceOptions(out=out, weights=weights, tta=False, device="cpu", **kw)


def _type1(release: Path) -> np.ndarray:
    (path,) = (release / "Totten" / "2021").glob("*" + TYPE1.suffix)
    with rasterio.open(path) as ds:
        return ds.read(1)


def test_medoid_of_three_full_scenes_is_the_map(tiny_weights: Path,
                                                 tmp_path: Path) -> None:
    source = _ThreeFullScenes(int(DEMO_SIZE))
    out = tmp_path / "release"
    calls: list[tuple[str, str]] = []
    summary = produce("Totten", [2021], source, _options(out, tiny_weights),
                      progress=lambda stage, done, total, what: calls.append((stage, what)))
    result = summary.results[0]
    assert result.status == "produced", result.message
    assert "chosen of 3 compared" in result.message
    record = read_provenance(result.provenance)
    comparison = record.comparison
    assert comparison is not None
    assert [c["scene_id"] for c in comparison["compared"]] == [HAZY, *CLEAN]
    # The two clean scenes agree perfectly; the hazy one is the outlier the ranking would take.
    pairs = {tuple(p["scenes"]): p["iou_damage"] for p in comparison["pairs"]}
    assert pairs[CLEAN] == 1.0 and pairs[(HAZY, CLEAN[0])] < 0.9
    means = {c["scene_id"]: c["mean_agreement"] for c in comparison["compared"]}
    assert means[HAZY] < means[CLEAN[0]] == means[CLEAN[1]]
    assert comparison["ranking_choice"] == HAZY and comparison["chosen"] == CLEAN[0]
    assert comparison["reason"] and comparison["decided_by"] == "ranking"  # twins: same scores
    assert [(s.scene_id, s.role, s.map_fraction > 0) for s in record.scenes] == [
        (CLEAN[0], "main", True)]
    assert record.parameters["compare_scenes"] == 3
    assert record.parameters["full_coverage_scenes"] == 3
    assert record.parameters["single_scene"] is True
    assert ("segmentation", f"compare 2/3: {CLEAN[0]}") in calls
    assert ("merge", "comparing 3 predictions") in calls
    assert validate_release(out).ok(), validate_release(out).to_json()

    # K = 1 keeps the ranking's choice: one segmentation, no comparison, another map.
    ranked = tmp_path / "ranked"
    calls.clear()
    only = produce("Totten", [2021], source, _options(ranked, tiny_weights, compare_scenes=1),
                   progress=lambda stage, done, total, what: calls.append((stage, what)))
    record1 = read_provenance(only.results[0].provenance)
    assert record1.comparison is None and "compare_scenes" not in record1.parameters
    assert [s.scene_id for s in record1.scenes] == [HAZY]
    assert {what for stage, what in calls if stage == "segmentation"} <= {"", HAZY}
    assert not np.array_equal(_type1(ranked), _type1(out))
    assert validate_release(ranked).ok()


def test_compare_scenes_is_an_input_only_where_it_can_change_the_map(
        tiny_weights: Path, tmp_path: Path) -> None:
    out = tmp_path / "release"
    three = _ThreeFullScenes(int(DEMO_SIZE))

    def status(source: DemoSource, k: int) -> str:
        return produce("Totten", [2021], source, _options(out, tiny_weights,
                                                          compare_scenes=k)).results[0].status

    assert status(three, 3) == "produced"
    assert status(three, 5) == "skipped"  # only 3 full-coverage scenes: same comparison
    assert status(three, 2) == "produced"  # compares 2 instead of 3
    # The plain demo summer has one full-coverage scene: K changes nothing there.
    demo = tmp_path / "demo"
    plain = DemoSource(int(DEMO_SIZE))
    first = produce("Totten", [2021], plain, _options(demo, tiny_weights, compare_scenes=1))
    assert first.results[0].status == "produced"
    assert read_provenance(first.results[0].provenance).parameters["full_coverage_scenes"] == 1
    again = produce("Totten", [2021], plain, _options(demo, tiny_weights, compare_scenes=4))
    assert again.results[0].status == "skipped"
    # Records written before comparisons existed lack the count: a merged summer had no
    # full-coverage scene (still up to date), a single-scene one may have had several (redone).
    path = first.results[0].provenance
    data = json.loads(path.read_text())
    del data["parameters"]["full_coverage_scenes"]
    for single, status in ((False, "skipped"), (True, "produced")):
        data["parameters"]["single_scene"] = single
        path.write_text(json.dumps(data))
        rerun = produce("Totten", [2021], plain, _options(demo, tiny_weights, compare_scenes=4))
        assert rerun.results[0].status == status


def test_compare_scenes_below_one_is_refused(tiny_weights: Path,
                                             tmp_path: Path) -> None:
    from producer.pipeline import ProduceError

    with pytest.raises(ProduceError, match="--compare-scenes 0"):
        produce("Totten", [2021], DemoSource(int(DEMO_SIZE)),
                _options(tmp_path, tiny_weights, compare_scenes=0))
    cli = _produce(["--shelf", "Totten", "--year", "2021", "--compare-scenes", "0"],
                   tiny_weights, tmp_path / "release")
    assert cli.exit_code == 2 and "--compare-scenes" in cli.output
    assert not (tmp_path / "release").exists()
