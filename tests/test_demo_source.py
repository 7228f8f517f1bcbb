"""The demo source: deterministic rendered scenes with ground truth, on the ROI grid."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import rasterio

from producer.shelves import roi_polygon
from producer.slcoff import detect_gaps, gap_fraction
from producer.sources.demo import (
    GROUNDED,
    OCEAN,
    DemoSource,
    build_layout,
    plan_summer,
    render_planned,
    render_training_tile,
)
from producer.spec import SENSORS, summer_window

SIZE = 256


def _digest(path: Path) -> str:
    with rasterio.open(path) as ds:
        return hashlib.sha256(ds.read().tobytes()).hexdigest()


@pytest.fixture(scope="module")
def totten_2021(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoSource, list, object]:
    source = DemoSource(size=SIZE)
    grid = source.grid("Totten", roi_polygon("Totten"))
    scenes = source.scenes("Totten", 2021, grid, tmp_path_factory.mktemp("demo"))
    return source, scenes, grid


def test_scenes_are_geotiffs_on_the_grid_inside_the_roi(totten_2021) -> None:
    source, scenes, grid = totten_2021
    assert grid.shape == (SIZE, SIZE)
    assert roi_polygon("Totten").contains(
        __import__("shapely.geometry", fromlist=["box"]).box(*grid.bounds))
    assert len(scenes) >= 3
    start, end = summer_window(2021)
    for scene in scenes:
        assert start <= scene.acquired <= end
        assert SENSORS[scene.sensor].covers(2021) and scene.sensor in ("LC08", "LC09")
        with rasterio.open(scene.path) as ds:
            assert (ds.count, ds.dtypes[0], ds.crs.to_epsg()) == (3, "uint8", 3031)
            assert ds.transform == grid.transform and (ds.height, ds.width) == grid.shape
        with rasterio.open(scene.cloud_mask_path) as ds:
            assert set(np.unique(ds.read(1))) <= {0, 1}
    fractions = [s.valid_fraction for s in scenes]
    assert fractions == sorted(fractions, reverse=True)  # best first


def test_rendering_is_deterministic(totten_2021, tmp_path: Path) -> None:
    source, scenes, grid = totten_2021
    again = DemoSource(size=SIZE).scenes("Totten", 2021, grid, tmp_path)
    assert [s.scene_id for s in again] == [s.scene_id for s in scenes]
    assert [_digest(s.path) for s in again] == [_digest(s.path) for s in scenes]
    other = DemoSource(size=SIZE).scenes("Totten", 2019, grid, tmp_path / "2019")
    assert _digest(other[0].path) != _digest(scenes[0].path)


def test_summers_differ_in_clouds_and_footprints() -> None:
    """Across summers there are clouds, clear dates and partial footprints to merge."""
    plans = [p for year in range(2013, 2023) for p in plan_summer("Totten", year)]
    covers = [p.conditions.cloud_cover for p in plans]
    assert min(covers) == 0.0 and max(covers) >= 0.45
    assert any(p.conditions.footprint_cut for p in plans)
    assert len({p.conditions.gain for p in plans}) == len(plans)  # illumination changes


def test_ground_truth_has_every_feature_and_spares_rock_and_ocean() -> None:
    layout = build_layout("Totten", 2021, SIZE)
    assert 0.005 < layout.damage.mean() < 0.3
    assert layout.rock.any() and not (layout.damage & layout.rock).any()
    assert (layout.zone == OCEAN).any() and not layout.damage[layout.zone == OCEAN].any()
    assert (layout.zone == GROUNDED).any()
    plan = plan_summer("Totten", 2021)[0]
    scene = render_planned("Totten", 2021, plan, SIZE, layout)
    ice = scene.rgb[layout.extent_mask & ~layout.damage & ~scene.cloud & scene.footprint]
    crev = scene.rgb[layout.damage & ~scene.cloud & scene.footprint]
    assert crev.mean() < ice.mean() - 10  # damage is visibly darker than intact ice
    rock = scene.rgb[layout.rock & ~scene.cloud & scene.footprint]
    assert rock.size == 0 or rock.mean() < ice.mean() - 60  # rock is darker still (bait)


def test_damage_is_fixed_within_a_summer_and_evolves_slowly() -> None:
    a, b, far = (build_layout("Totten", y, SIZE).damage for y in (2020, 2021, 2010))

    def iou(x: np.ndarray, y: np.ndarray) -> float:
        return (x & y).sum() / max((x | y).sum(), 1)

    assert np.array_equal(build_layout("Totten", 2021, SIZE).damage, b)
    assert iou(a, b) > iou(b, far)
    assert iou(a, b) < 1.0


def test_landsat7_slc_off_summer_has_real_gap_geometry() -> None:
    plans = plan_summer("Totten", 2005)
    assert plans and all(p.sensor == "LE07" for p in plans)
    full = next(p for p in plans if p.conditions.footprint_cut is None) if any(
        p.conditions.footprint_cut is None for p in plans) else plans[0]
    scene = render_planned("Totten", 2005, full, SIZE)
    frac = gap_fraction(scene.gaps, scene.footprint)
    assert 0.15 < frac < 0.3  # about 22 % missing
    assert np.array_equal(detect_gaps(scene.rgb, scene.footprint), scene.gaps)
    pre = render_planned("Totten", 2001, plan_summer("Totten", 2001)[0], SIZE)
    assert not pre.gaps.any()  # SLC-on before 2003


def test_no_scenes_before_landsat7(tmp_path: Path) -> None:
    source = DemoSource(size=64)
    grid = source.grid("Totten", roi_polygon("Totten"))
    assert source.scenes("Totten", 1995, grid, tmp_path) == []


def test_training_tile_pairs_image_and_label() -> None:
    rgb, label = render_training_tile(7, 128)
    assert rgb.shape == (128, 128, 3) and rgb.dtype == np.uint8
    assert label.shape == (128, 128) and set(np.unique(label)) <= {0, 1}
    again_rgb, again_label = render_training_tile(7, 128)
    assert np.array_equal(rgb, again_rgb) and np.array_equal(label, again_label)
    assert not np.array_equal(render_training_tile(8, 128)[0], rgb)
    assert rgb.min() > 0  # no gaps, no footprint edge in training tiles


def test_extent_is_the_floating_shelf(totten_2021) -> None:
    from producer.extent import extent_mask

    source, _, grid = totten_2021
    mask = extent_mask(source.extent("Totten", 2021, grid), grid)
    truth = source.layout("Totten", 2021).extent_mask
    assert (mask == truth).mean() > 0.99


def test_the_summer_under_way_has_no_scene_from_the_future() -> None:
    """Scenes of the running summer are dated up to today (the demo is a satellite too)."""
    import datetime as dt

    from producer.spec import latest_summer

    today = dt.date.today()
    for shelf in ("Amery", "Brunt", "Totten"):
        assert all(p.acquired <= today for p in plan_summer(shelf, latest_summer()))


def _slc_off_plans(with_edge: bool | None = None) -> list:
    """Demo Landsat 7 SLC-off dates of every registered shelf, 2003-2012 (optionally only those
    with, or without, a swath edge in the window)."""
    from producer.shelves import SHELVES

    plans = [(shelf, year, p) for shelf in SHELVES for year in range(2003, 2013)
             for p in plan_summer(shelf, year) if p.conditions.slc_off]
    if with_edge is None:
        return plans
    return [t for t in plans if (t[2].conditions.footprint_cut is not None) == with_edge]


def test_slc_off_scenes_keep_the_swath_centre_gap_free() -> None:
    """As Level-1 products (USGS: ~20 % of the scene centre is not gapped), the central 20 %
    of the demo's swath has no gap, while ~22 % of the scene is still missing."""
    from producer.slcoff import DEMO_GAP_FREE_CENTRE, _scene_frame

    shelf, year, plan = _slc_off_plans(with_edge=False)[0]
    scene = render_planned(shelf, year, plan, SIZE)
    across = np.abs(_scene_frame((SIZE, SIZE), plan.conditions.slc_angle, 0.0)[0])
    central = across < DEMO_GAP_FREE_CENTRE * 2.0 * across.mean()
    assert 0.15 < central.mean() < 0.25
    assert not scene.gaps[central].any()
    assert 0.18 < gap_fraction(scene.gaps, scene.footprint) < 0.26


def test_slc_off_swath_edges_run_along_track() -> None:
    """A swath edge runs along the ground track, at right angles to the scan lines (the
    stripes): its normal is the scan direction, for every SLC-off demo date with an edge."""
    from scipy.ndimage import binary_erosion

    from producer.slcoff import _scene_frame

    plans = _slc_off_plans(with_edge=True)
    assert len(plans) > 20
    for _, _, plan in plans:
        c = plan.conditions
        # footprint normal (cos a, sin a) in (column, row) vs scan direction (cos t, -sin t)
        assert abs(np.sin(c.footprint_angle + np.deg2rad(c.slc_angle))) < 1e-9, plan.scene_id
    shelf, year, plan = plans[0]
    scene = render_planned(shelf, year, plan, SIZE)
    edge = scene.footprint & ~binary_erosion(scene.footprint, border_value=1)
    across = _scene_frame((SIZE, SIZE), plan.conditions.slc_angle, 0.0)[0]
    assert edge.sum() > SIZE / 2 and np.ptp(across[edge]) < 2.0  # the edge is a line along track
