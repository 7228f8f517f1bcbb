"""Merging per-scene predictions into one map (paper 2.4.1) and clipping to the extent."""

from __future__ import annotations

import datetime as dt

import geopandas as gpd
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from shapely.geometry import box

from producer.extent import (
    MAX_OUTSIDE_ROI_SHARE,
    ExtentError,
    ShelfArea,
    default_extent,
    extent_mask,
    read_extent,
)
from producer.grid import Grid
from producer.merge import (
    NO_SCENE,
    Candidate,
    NotCoveredError,
    compose,
    plan_merge,
    plan_merge_rows,
    with_main,
)
from producer.shelves import roi_polygon

SHAPE = (20, 30)
ROI = np.ones(SHAPE, bool)
EXTENT = np.zeros(SHAPE, bool)
EXTENT[5:15, 5:25] = True


def _mask(rows: slice = slice(None), cols: slice = slice(None)) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[rows, cols] = True
    return m


def _cand(name: str, day: int, usable: np.ndarray, present: np.ndarray | None = None
          ) -> Candidate:
    return Candidate(name, dt.date(2021, 12, 1) + dt.timedelta(days=day), usable, present)


def test_full_coverage_scene_is_the_map_alone() -> None:
    partial = _cand("partial", 0, _mask(cols=slice(0, 20)))
    full = _cand("full", 30, _mask())
    also_full = _cand("also-full", 2, _mask())
    plan = plan_merge([partial, full, also_full], ROI, EXTENT)
    assert plan.single_scene and plan.main == 1  # the source's ranking decides between full ones
    assert plan.used == (1,)
    assert plan.fractions == (0.0, 1.0, 0.0)
    assert (plan.index == 1).all()
    assert plan.full_coverage == (1, 2)  # listed for a comparison, in ranking order
    other = with_main(plan, 2)  # a comparison chose the other full-coverage scene
    assert other.main == 2 and other.used == (2,) and other.single_scene
    assert other.fractions == (0.0, 0.0, 1.0) and (other.index == 2).all()
    assert compose(other, [None, None, np.full(SHAPE, 7, np.uint8)]).min() == 7
    with pytest.raises(ValueError, match="not a full-coverage scene"):
        with_main(plan, 0)


def test_gaps_filled_from_complementary_scenes_closest_date_first() -> None:
    main = _cand("main", 0, _mask(cols=slice(0, 20)))  # best shelf coverage
    far = _cand("far", 90, _mask(cols=slice(12, 30)))
    near = _cand("near", 5, _mask(cols=slice(15, 30)))
    plan = plan_merge([far, main, near], ROI, EXTENT)
    assert plan.main == 1 and not plan.single_scene
    assert (plan.index[:, :20] == 1).all()
    assert (plan.index[:, 20:] == 2).all()  # the near date fills, the far one is not needed
    assert plan.used == (1, 2)
    assert plan.fractions[0] == 0.0
    assert plan.fractions[1] == pytest.approx(20 / 30) and plan.fractions[2] == pytest.approx(
        10 / 30)
    pred = [np.full(SHAPE, v, np.uint8) for v in (7, 1, 0)]
    merged = compose(plan, pred)
    assert (merged[:, :20] == 1).all() and (merged[:, 20:] == 0).all()


def test_far_scene_fills_what_the_near_one_cannot() -> None:
    main = _cand("main", 0, _mask(cols=slice(0, 18)))
    near = _cand("near", 3, _mask(rows=slice(0, 10), cols=slice(15, 30)))
    far = _cand("far", 60, _mask(cols=slice(12, 30)))
    plan = plan_merge([main, near, far], ROI, EXTENT)
    assert (plan.index[:10, 18:] == 1).all()
    assert (plan.index[10:, 18:] == 2).all()
    assert plan.used == (0, 1, 2)


def test_uncovered_shelf_means_no_map() -> None:
    a = _cand("a", 0, _mask(cols=slice(0, 12)))
    b = _cand("b", 4, _mask(cols=slice(0, 20)))
    with pytest.raises(NotCoveredError) as err:
        plan_merge([a, b], ROI, EXTENT)
    assert err.value.missing_pixels == 10 * 5
    assert "not fully covered" in str(err.value)
    with pytest.raises(NotCoveredError, match="no scene"):
        plan_merge([], ROI, EXTENT)


def test_a_few_missing_pixels_never_read_as_full_coverage() -> None:
    """3 pixels short of a large shelf is 99.99 %, not a rounded-up 100.00 %."""
    err = NotCoveredError(1 - 3 / 4_000_000, 3, 5)
    assert "99.99% covered" in str(err) and "3 pixel(s) missing" in str(err)
    # exact shares print exactly (float error made 50.05 % read 50.04 %)
    assert "50.05% covered" in str(NotCoveredError(1.0 - 4_995 / 10_000, 4_995, 2))
    assert "57.00% covered" in str(NotCoveredError(57 / 100, 43, 2))


def test_cloudy_pixels_fill_only_outside_the_shelf() -> None:
    usable = _mask(rows=slice(0, 18))
    cloudy_present = _mask()
    a = _cand("a", 0, usable, cloudy_present)
    plan = plan_merge([a], ROI, EXTENT)
    assert (plan.index == 0).all()
    assert plan.cloudy_fill_fraction == pytest.approx(2 / 20)
    # Cloud over the shelf itself is never accepted.
    usable_hole = _mask()
    usable_hole[8, 8] = False
    with pytest.raises(NotCoveredError):
        plan_merge([_cand("b", 0, usable_hole, _mask())], ROI, EXTENT)


@pytest.mark.parametrize(("outside_px", "mapped"), [(1, True), (2, True), (3, False),
                                                    (10, False)])
def test_shelf_region_outside_the_roi_beyond_the_tolerance_is_not_covered(
        outside_px: int, mapped: bool) -> None:
    """No scene is merged outside the ROI, so a shelf region reaching out of it is not fully
    covered: refused beyond MAX_OUTSIDE_ROI_SHARE of its pixels (here 200; 2 px = 1 % is
    still GIS imprecision), below it the outside part is simply left out."""
    roi = ROI.copy()
    roi[5:5 + outside_px, 24] = False  # extent pixels of the last extent column
    share = outside_px / EXTENT.sum()
    assert (share <= MAX_OUTSIDE_ROI_SHARE) == mapped
    full = _cand("full", 0, _mask())
    if mapped:
        plan = plan_merge([full], roi, EXTENT)
        assert plan.roi_pixels == roi.sum() and (plan.index[~roi] == NO_SCENE).all()
        return
    with pytest.raises(NotCoveredError, match=rf"{share:.2%} of it \({outside_px} of 200 px\) "
                       r"lies outside the ROI") as err:
        plan_merge([full], roi, EXTENT)
    assert err.value.missing_pixels == outside_px


def test_shelf_area_says_whether_the_roi_covers_the_extent() -> None:
    """The polygon test the producer applies before any scene is read: at most 1 % of the
    extent's area outside the ROI still counts as covered."""
    grid = Grid.from_bounds(0, 0, 3000, 3000)  # 100 x 100 px
    extent = box(0, 0, 3000, 3000)
    for roi_right, covered in ((2985.0, True), (2970.0, True), (2955.0, False),
                               (750.0, False)):
        area = ShelfArea(box(0, 0, roi_right, 3000), extent, grid)
        assert area.outside_share == pytest.approx(1 - roi_right / 3000)
        assert area.covered_by_roi == covered, roi_right


def test_pixels_without_data_are_background_and_indexed_none() -> None:
    a = _cand("a", 0, _mask(cols=slice(0, 27)))
    plan = plan_merge([a], ROI, EXTENT)
    assert (plan.index[:, 27:] == NO_SCENE).all()
    assert plan.uncovered_fraction == pytest.approx(3 / 30)
    merged = compose(plan, [np.ones(SHAPE, np.uint8)])
    assert merged[:, 27:].max() == 0


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 120), st.integers(0, 29), st.integers(1, 30)),
                min_size=1, max_size=6))
def test_plan_invariants(specs: list[tuple[int, int, int]]) -> None:
    """Every indexed pixel is usable in its scene (or cloudy-filled off-shelf); fractions sum."""
    cands = [_cand(f"s{i}", day, _mask(cols=slice(c0, c0 + w)))
             for i, (day, c0, w) in enumerate(specs)]
    try:
        plan = plan_merge(cands, ROI, EXTENT)
    except NotCoveredError:
        union = np.logical_or.reduce([c.usable for c in cands])
        assert (EXTENT & ~union).any()
        return
    for i, c in enumerate(cands):
        assert c.usable[plan.index == i].all()
    assert sum(plan.fractions) + plan.uncovered_fraction == pytest.approx(1.0)
    assert not (EXTENT & (plan.index == NO_SCENE)).any()


def test_extent_from_geopackage_clips_type1(tmp_path) -> None:
    grid = Grid.from_bounds(0, 0, 300, 300)  # 10 x 10 px
    frame = gpd.GeoDataFrame(
        {"shelf": ["Totten", "Totten", "Amery"], "year": [2021, 2020, 2021]},
        geometry=[box(0, 150, 150, 300), box(0, 0, 300, 300), box(0, 0, 30, 30)],
        crs="EPSG:3031",
    )
    path = tmp_path / "extents.gpkg"
    frame.to_file(path)
    mask = extent_mask(read_extent(path, "Totten", 2021), grid)
    assert mask.sum() == 25 and mask[:5, :5].all()
    with pytest.raises(ExtentError, match="no row with shelf == 'Totten' and year == 2019"):
        read_extent(path, "Totten", 2019)
    frame.drop(columns="year").to_file(tmp_path / "bad.gpkg")
    with pytest.raises(ExtentError, match="missing column"):
        read_extent(tmp_path / "bad.gpkg", "Totten", 2021)


def test_extent_file_names_match_loosely_and_bad_years_name_the_row(tmp_path) -> None:
    """Extents drawn in GIS carry names like "Pine_Island" and stray values in 'year'."""
    frame = gpd.GeoDataFrame({"shelf": ["pine_island", "Larsen-B"], "year": [2021.0, None]},
                             geometry=[box(0, 0, 300, 300), box(0, 0, 30, 30)], crs="EPSG:3031")
    path = tmp_path / "extents.gpkg"
    frame.to_file(path)
    with pytest.raises(ExtentError, match=r"extents\.gpkg: row 2, column 'year' is"):
        read_extent(path, "Pine Island", 2021)
    frame.iloc[:1].to_file(path)
    assert read_extent(path, "Pine Island", 2021).area == 300 * 300


def test_a_self_crossing_extent_is_made_valid(tmp_path) -> None:
    """A bow-tie drawn in a GIS is two triangles, not a crash in the overlay with the ROI."""
    from shapely.geometry import Polygon

    from producer.extent import ShelfArea
    from producer.pipeline import effective_extent

    bow = Polygon([(0, 0), (300, 300), (300, 0), (0, 300)])
    path = tmp_path / "extents.gpkg"
    gpd.GeoDataFrame({"shelf": ["Totten"], "year": [2021]}, geometry=[bow],
                     crs="EPSG:3031").to_file(path)
    grid = Grid.from_bounds(0, 0, 300, 300)
    extent, origin = effective_extent("Totten", 2021, object(), box(0, 0, 150, 300), grid, path)
    assert extent.is_valid and extent.area == pytest.approx(300 * 300 / 2)
    area = ShelfArea(box(0, 0, 150, 300), extent, grid)
    assert area.outside_share == pytest.approx(0.5) and area.extent_pixels > 0


def test_thwaites_default_extent_keeps_to_thwaites() -> None:
    """Thwaites' ROI (the authors' rectangle) also holds Crosson and parts of Dotson and Pine
    Island: without an extent file its type 1 map covers the Thwaites shelf box, not them."""
    from producer.pipeline import effective_extent
    from producer.shelves import SHELVES, lonlat_box_3031

    roi = roi_polygon("Thwaites")
    grid = Grid.covering(roi, resolution=300.0)
    extent, origin = effective_extent("Thwaites", 2021, object(), roi, grid, None)
    assert origin == "default:shelf-box"
    assert extent.within(roi) and extent.area < 0.4 * roi.area
    for neighbour in ("Crosson", "Pine Island"):
        record = SHELVES[neighbour]
        other = lonlat_box_3031(record.lon_min, record.lon_max, record.lat_min, record.lat_max)
        assert not extent.contains(other.centroid)
    # a shelf whose ROI is its own box keeps the ROI shrunk
    totten = roi_polygon("Totten")
    assert effective_extent("Totten", 2021, object(), totten,
                            Grid.covering(totten, resolution=300.0), None)[1] == \
        "default:roi-shrunk"


def test_default_extent_is_the_roi_shrunk() -> None:
    roi = roi_polygon("Totten")
    grid = Grid.covering(roi, resolution=300.0)
    inner = default_extent(roi, grid)
    assert inner.within(roi) and inner.area < 0.9 * roi.area
    m = extent_mask(inner, grid)
    assert 0 < m.mean() < 0.95


# ---------------------------------------------------------------------------------------------
# The ice speed is read only where it can choose the main scene
# ---------------------------------------------------------------------------------------------

#: A speed with a fast stream in the last columns of the shelf region.
SPEED = np.where(np.arange(SHAPE[1]) >= 20, 1000.0, 10.0) * np.ones((SHAPE[0], 1))


def _plan_reading_speed(candidates: list[Candidate], strip_rows: int
                        ) -> tuple[object, list[tuple[int, int]]]:
    """(the plan or its NotCoveredError, the row ranges of the speed that were read)."""
    reads: list[tuple[int, int]] = []

    def speed(r0: int, r1: int) -> np.ndarray:
        reads.append((r0, r1))
        return SPEED[r0:r1]

    try:
        plan = plan_merge_rows(candidates, lambda r0, r1: (ROI[r0:r1], EXTENT[r0:r1]), SHAPE,
                               strip_rows, speed)
    except NotCoveredError as err:
        return err, reads
    return plan, reads


def test_speed_is_not_read_when_a_scene_covers_the_roi() -> None:
    """Rule 1 needs no speed: resampling it for every summer cost minutes on large shelves."""
    plan, reads = _plan_reading_speed(
        [_cand("part", 0, _mask(cols=slice(0, 20))), _cand("full", 5, _mask())], strip_rows=4)
    assert plan.single_scene and plan.main == 1 and plan.flow_fractions == ()
    assert reads == []


def test_speed_is_no_longer_read_once_the_shelf_region_is_uncovered() -> None:
    """Rule 3 fails the summer whatever the speed: strips after the first with a shelf-region
    pixel no scene is usable at are not read."""
    err, reads = _plan_reading_speed(
        [_cand("left", 0, _mask(cols=slice(0, 12))), _cand("right", 5, _mask(cols=slice(14, 30)))],
        strip_rows=4)
    assert isinstance(err, NotCoveredError) and err.missing_pixels == 2 * 10
    assert reads == [(4, 8)]  # the first strip of the shelf region (rows 5:15), then none


@pytest.mark.parametrize("strip_rows", [1, 3, 4, SHAPE[0]])
def test_flow_of_strips_read_late_is_the_same(strip_rows: int) -> None:
    """A scene covering the top of the ROI stays a full-coverage candidate for a few strips:
    their flow is counted once it is known to matter, with the same result, and only strips
    of the shelf region (rows 5:15) are read."""
    top = _cand("top", 0, _mask(rows=slice(0, 12)))  # full until row 12, then not
    stream = _cand("stream", 3, _mask(cols=slice(13, 30)))
    rest = _cand("rest", 6, _mask(cols=slice(0, 14)))
    plan, reads = _plan_reading_speed([top, rest, stream], strip_rows)
    whole = plan_merge([top, rest, stream], ROI, EXTENT, speed=SPEED)
    assert not plan.single_scene and plan.main == whole.main == 2
    assert plan.flow_fractions == whole.flow_fractions
    assert (plan.index == whole.index).all()
    assert reads and all(r0 < 15 and r1 > 5 for r0, r1 in reads)
    assert sorted(set(reads)) == sorted(reads)  # each strip once
