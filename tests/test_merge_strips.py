"""Bounded memory: planning, composing, masks and writing by strips give the whole-array results.

The largest ROI (Amery, ~313 Mpx) cannot be held as one boolean array per scene; these tests
show on small grids that the strip-wise paths read only strips and change nothing.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pytest
import rasterio
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.windows import Window

from producer.extent import ShelfArea, default_extent, extent_mask, roi_mask
from producer.grid import Grid
from producer.merge import (
    Candidate,
    NotCoveredError,
    compose,
    compose_rows,
    plan_merge,
    plan_merge_rows,
)
from producer.pipeline import MASK_PRESENT, MASK_USABLE, scene_masks
from producer.shelves import roi_polygon
from producer.slcoff import (
    GAP_CLOUD_REACH_PX,
    detect_gaps,
    footprint_of,
    near_cloud,
    simulate_slc_off_mask,
)
from producer.sources.base import Scene
from producer.sources.demo import FOOTPRINT_KEY
from producer.spec import TYPE1, SpecError
from producer.writer import write_products, write_products_rows
from tests.test_writer import GRID, files_under

SHAPE = (23, 31)
ROI = np.ones(SHAPE, bool)
ROI[:, :2] = False  # a grid column outside the ROI
EXTENT = np.zeros(SHAPE, bool)
EXTENT[6:17, 5:25] = True


class CountingRows:
    """Row reader of two arrays that records every (r0, r1) it is asked for."""

    def __init__(self, first: np.ndarray, second: np.ndarray) -> None:
        self.first, self.second = first, second
        self.calls: list[tuple[int, int]] = []

    def __call__(self, r0: int, r1: int) -> tuple[np.ndarray, np.ndarray]:
        self.calls.append((r0, r1))
        return self.first[r0:r1], self.second[r0:r1]


def _box(r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[r0:r1, c0:c1] = True
    return m


scene_boxes = st.tuples(st.integers(0, 120), st.integers(0, 22), st.integers(1, 23),
                        st.integers(0, 30), st.integers(1, 31), st.integers(0, 22),
                        st.integers(0, 8))


@settings(max_examples=60, deadline=None)
@given(st.lists(scene_boxes, min_size=1, max_size=6), st.integers(1, 9))
def test_plan_by_strips_equals_the_whole_plan(specs: list[tuple[int, ...]],
                                             strip_rows: int) -> None:
    """Same plan (or the same refusal) whatever the strip height; masks are read by strips,
    at most three times per strip and scene (counts, usable fill, cloudy fill)."""
    arrays = []
    for day, r0, h, c0, w, cloud_row, cloud_h in specs:
        present = _box(r0, r0 + h, c0, c0 + w)
        arrays.append((day, present & ~_box(cloud_row, cloud_row + cloud_h, 0, 31), present))
    whole_cands = [Candidate(f"s{i}", dt.date(2021, 12, 1) + dt.timedelta(days=day), u, p)
                   for i, (day, u, p) in enumerate(arrays)]
    readers = [CountingRows(u, p) for _, u, p in arrays]
    strip_cands = [Candidate(c.scene_id, c.acquired, masks=r)
                   for c, r in zip(whole_cands, readers, strict=True)]
    area = CountingRows(ROI, EXTENT)
    try:
        whole = plan_merge(whole_cands, ROI, EXTENT, strip_rows=SHAPE[0])
    except NotCoveredError as err:
        with pytest.raises(NotCoveredError) as strip_err:
            plan_merge_rows(strip_cands, area, SHAPE, strip_rows)
        assert strip_err.value.missing_pixels == err.missing_pixels
        return
    plan = plan_merge_rows(strip_cands, area, SHAPE, strip_rows)
    assert np.array_equal(plan.index, whole.index)
    for field in ("main", "order", "fractions", "single_scene", "cloudy_fill_fraction",
                  "uncovered_fraction", "roi_pixels", "usable_fractions", "cloud_fractions"):
        assert getattr(plan, field) == getattr(whole, field), field
    strips = -(-SHAPE[0] // strip_rows)
    for reader, most in (*((r, 3 * strips) for r in readers), (area, 2 * strips)):
        assert all(0 < r1 - r0 <= strip_rows for r0, r1 in reader.calls)
        assert len(reader.calls) <= most
    layers = [np.full(SHAPE, 10 + i, np.uint8) for i in range(len(arrays))]
    rows = [compose_rows(plan, r0, min(r0 + strip_rows, SHAPE[0]), [
        None if i not in plan.used else layer[r0:r0 + strip_rows]
        for i, layer in enumerate(layers)], fill=7) for r0 in range(0, SHAPE[0], strip_rows)]
    assert np.array_equal(np.concatenate(rows), compose(plan, layers, fill=7))


def test_valid_fractions_come_with_the_plan() -> None:
    """The provenance's valid fraction (usable share of the ROI) is counted while planning."""
    a = Candidate("a", dt.date(2021, 12, 1), _box(0, 23, 0, 20))
    b = Candidate("b", dt.date(2021, 12, 9), _box(0, 23, 15, 31))
    plan = plan_merge([a, b], ROI, EXTENT, strip_rows=4)
    assert plan.usable_fractions == pytest.approx(
        [(a.usable & ROI).sum() / ROI.sum(), (b.usable & ROI).sum() / ROI.sum()])
    assert plan.cloud_fractions == (0.0, 0.0)


def test_cloud_fractions_are_shares_of_the_roi() -> None:
    """Data but not usable (cloud) counted over the ROI only, like every plan fraction: a
    cloud in the grid column outside the ROI does not count."""
    data = _box(0, 23, 0, 31)
    usable = data & ~_box(0, 23, 0, 2) & ~_box(20, 23, 0, 31)  # cloudy: off-ROI column, 3 rows
    plan = plan_merge([Candidate("a", dt.date(2021, 12, 1), usable, data)], ROI, EXTENT)
    assert plan.roi_pixels == ROI.sum() == 23 * 29
    assert plan.cloud_fractions == pytest.approx([3 * 29 / (23 * 29)])
    assert plan.usable_fractions[0] + plan.cloud_fractions[0] == pytest.approx(1.0)


def test_shelf_area_is_the_whole_grid_rasterization() -> None:
    """Bit-packed ROI and extent rasterized by strips: the same pixels as the whole masks."""
    roi = roi_polygon("Totten")
    grid = Grid.covering(roi, resolution=120.0)  # 1,522 x 1,516 px: three strips
    extent = default_extent(roi, grid)
    area = ShelfArea(roi, extent, grid)
    whole_roi, whole_extent = roi_mask(roi, grid), extent_mask(extent, grid)
    got_roi, got_extent = area.rows(0, grid.height)
    inside = whole_extent & whole_roi
    assert np.array_equal(got_roi, whole_roi) and np.array_equal(got_extent, inside)
    assert area.extent_pixels == int(inside.sum())
    assert np.array_equal(area.rows(700, 1100)[1], inside[700:1100])


def _geotiff(path: Path, grid: Grid, bands: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="GTiff", width=grid.width, height=grid.height,
                       count=bands.shape[0], dtype="uint8", crs=grid.crs,
                       transform=grid.transform) as ds:
        ds.write(bands)
    return path


@pytest.mark.parametrize("footprint_file", [False, True])
def test_scene_masks_by_strips_follow_the_whole_scene_rule(tmp_path: Path,
                                                           footprint_file: bool) -> None:
    """An SLC-off scene of three strips: present (gaps counted), usable and cloud fraction as
    computed on the whole arrays, with its footprint from a file or from the convex hull. The
    cloud file is 0 in the gaps (as QA_PIXEL and Earth Engine give it): gap pixels near the
    cloud are cloudy all the same, also across the strip edge at row 512."""
    grid = Grid.from_bounds(0, 0, 300 * 30, 1100 * 30)
    rows, cols = np.mgrid[0:1100, 0:300]
    footprint = (rows + cols > 150) & (rows - cols < 900)  # a cut scene, convex
    rgb = np.where(footprint, ((rows * 7 + cols) % 200 + 20).astype(np.uint8), 0)
    gaps = simulate_slc_off_mask(grid.shape, angle_deg=10.0, seed=3)
    rgb = np.stack([np.where(gaps, 0, rgb)] * 3).astype(np.uint8)
    disc = (rows - 600) ** 2 + (cols - 150) ** 2 < 80 ** 2
    cloud = (disc & ~gaps).astype(np.uint8)  # no cloud flag where there is no data
    metadata = {}
    if footprint_file:
        metadata[FOOTPRINT_KEY] = _geotiff(tmp_path / "fp.tif", grid,
                                           footprint[None].astype(np.uint8))
    scene = Scene("LE07_test", "LE07", dt.date(2005, 1, 5),
                  _geotiff(tmp_path / "scene.tif", grid, rgb), 0.5,
                  cloud_mask_path=_geotiff(tmp_path / "cloud.tif", grid, cloud[None]),
                  metadata=metadata)
    hwc = np.moveaxis(rgb, 0, -1)
    detected = detect_gaps(hwc, footprint if footprint_file else footprint_of(hwc))
    present = hwc.any(axis=2) | detected
    cloudy = (cloud != 0) | (detected & near_cloud(cloud != 0))
    masks = scene_masks(scene, 2005, grid, tmp_path)
    with rasterio.open(masks.path) as ds:
        code = ds.read(1)
    assert masks.slc_off and gaps[footprint].any()
    assert np.array_equal(code & MASK_PRESENT != 0, present)
    assert np.array_equal(code & MASK_USABLE != 0, present & ~cloudy)
    assert not (code & MASK_USABLE != 0)[detected & disc].any()  # gaps under the cloud
    assert (detected & cloudy)[:512].any()  # reached from the cloud below the strip edge
    assert (code & MASK_USABLE != 0)[detected & ~near_cloud(disc)].all()  # clear gaps
    assert masks.cloud_fraction == pytest.approx(float((cloudy & present).mean()))
    usable, data = masks.candidate().rows(512, 1024)
    assert np.array_equal(usable, (code & MASK_USABLE != 0)[512:1024])


def test_scene_masks_by_strips_catch_band_specific_gap_edges(tmp_path: Path) -> None:
    """Band 1's gaps lie a row below the other bands' (USGS gap masks are band-specific): the
    pixels zero in some bands beside a gap are gaps, also where the gap crosses the strip edge
    at row 512 (the strips are read with ``GAP_BAND_REACH_PX`` rows of context)."""
    from producer.pipeline import MASK_GAP
    from producer.slcoff import GAP_BAND_REACH_PX

    grid = Grid.from_bounds(0, 0, 300 * 30, 1100 * 30)
    gaps = simulate_slc_off_mask(grid.shape, angle_deg=10.0, seed=3)
    band = np.full(grid.shape, 150, np.uint8)
    rgb = np.stack([np.where(np.roll(gaps, 1, axis=0), 0, band), np.where(gaps, 0, band),
                    np.where(gaps, 0, band)])
    ones = _geotiff(tmp_path / "fp.tif", grid, np.ones((1, *grid.shape), np.uint8))
    scene = Scene("LE07_bands", "LE07", dt.date(2005, 1, 5),
                  _geotiff(tmp_path / "scene.tif", grid, rgb), 0.5,
                  metadata={FOOTPRINT_KEY: ones})
    hwc = np.moveaxis(rgb, 0, -1)
    whole = detect_gaps(hwc, np.ones(grid.shape, bool))
    with rasterio.open(scene_masks(scene, 2005, grid, tmp_path).path) as ds:
        found = (ds.read(1) & MASK_GAP) != 0
    partial = hwc.any(axis=2) & ~hwc.all(axis=2)
    assert np.array_equal(found, whole)
    edge = slice(512 - GAP_BAND_REACH_PX, 512 + GAP_BAND_REACH_PX)
    assert (found & partial)[edge].any()  # band-specific edge pixels at the strip edge
    # A 1 px gap (by the centre line) of one band beside the other bands' has no pixel zero in
    # all bands, so nothing anchors it: the core rule decides, as the spec's rule alone did.
    union = gaps | np.roll(gaps, 1, axis=0)
    assert not (found & ~union).any() and (found & union).sum() > 0.95 * union.sum()


def _slc_off_scenes(folder: Path, grid: Grid, cloud_over_hole: bool) -> list[Scene]:
    """A clear main scene whose only unusable pixels are a cloud over a 40 px hole of the shelf,
    and three SLC-off scenes (2005) whose 3-row gaps, offset by 3 rows, together span the hole.
    With ``cloud_over_hole`` their clouds cover the hole too, flagged (as QA_PIXEL and Earth
    Engine give it) only where they have data: only the gaps look free of cloud there; without,
    their clouds lie in the bottom rows, off the shelf and far from the hole."""
    height, width = grid.shape
    rows = np.arange(height)[:, None] * np.ones((1, width), int)
    hole = _square(grid.shape, 80, 120)
    footprint = _geotiff(folder / "footprint.tif", grid, np.ones((1, *grid.shape), np.uint8))

    def scene(name: str, day: int, gaps: np.ndarray, cloud: np.ndarray) -> Scene:
        rgb = np.where(gaps, 0, np.full(grid.shape, 150, np.uint8))
        return Scene(name, "LE07", dt.date(2005, 12, day),
                     _geotiff(folder / f"{name}.tif", grid, np.stack([rgb] * 3)), 0.5,
                     cloud_mask_path=_geotiff(folder / f"{name}_cloud.tif", grid,
                                              (cloud & ~gaps)[None].astype(np.uint8)),
                     metadata={FOOTPRINT_KEY: footprint})

    scenes = [scene("LE07_MAIN", 10, np.zeros(grid.shape, bool), hole)]
    cloud = _square(grid.shape, 60, 140) if cloud_over_hole else rows >= 170
    for k, offset in enumerate((0, 3, 6)):
        gaps = (rows % 9 >= offset) & (rows % 9 < offset + 3)
        scenes.append(scene(f"LE07_S{k}", 12 + k, gaps, cloud))
    return scenes


def _square(shape: tuple[int, int], lo: int, hi: int) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[lo:hi, lo:hi] = True
    return mask


def test_near_cloud_reaches_one_gap_width() -> None:
    """A gap pixel counts as cloudy up to GAP_CLOUD_REACH_PX (the widest gap) from a cloud."""
    cloud = np.zeros((60, 60), bool)
    cloud[30, 30] = True
    near = near_cloud(cloud)
    assert near[30, 30 + GAP_CLOUD_REACH_PX] and near[30 - GAP_CLOUD_REACH_PX, 30]
    assert not near[30, 31 + GAP_CLOUD_REACH_PX] and not near[29 - GAP_CLOUD_REACH_PX, 30]
    assert near.sum() == (2 * GAP_CLOUD_REACH_PX + 1) ** 2
    assert not near_cloud(np.zeros((5, 5), bool)).any()


@pytest.mark.parametrize("cloud_over_hole", [True, False])
def test_slc_off_gaps_under_a_cloud_never_fill_the_shelf(tmp_path: Path,
                                                         cloud_over_hole: bool) -> None:
    """Review case r1: the cloud masks are 0 in the gaps, yet a gap crossing a cloud is
    restored from that cloud. Its pixels are cloudy, so the hole in the main scene stays
    uncovered and the year has no map; the same gaps between clear pixels fill the hole."""
    grid = Grid.from_bounds(0, 0, 200 * 30, 200 * 30)
    scenes = _slc_off_scenes(tmp_path, grid, cloud_over_hole)
    masks = [scene_masks(s, 2005, grid, tmp_path) for s in scenes]
    roi, extent = np.ones(grid.shape, bool), _square(grid.shape, 60, 140)
    hole = _square(grid.shape, 80, 120)
    for m, scene in zip(masks[1:], scenes[1:], strict=True):
        usable, present = m.rows(0, grid.height)
        gaps = m.gap_rows(0, grid.height)
        with rasterio.open(scene.cloud_mask_path) as ds:
            flagged = ds.read(1) != 0
        assert m.slc_off and present[gaps].all()  # restored, so present either way
        assert not flagged[gaps].any()  # the cloud file says nothing in the gaps
        assert usable[gaps & hole].all() != cloud_over_hole  # all cloudy, or all usable
        assert usable[gaps & ~near_cloud(flagged)].all()  # gaps between clear pixels
    candidates = [m.candidate() for m in masks]
    area = CountingRows(roi, extent)
    if cloud_over_hole:
        with pytest.raises(NotCoveredError) as err:
            plan_merge_rows(candidates, area, grid.shape)
        assert err.value.missing_pixels == hole.sum()
        return
    plan = plan_merge_rows(candidates, area, grid.shape)
    main = plan.main
    assert main != 0 and (plan.index[hole] == main).all()  # an SLC-off scene covers the shelf
    assert (masks[main].gap_rows(0, grid.height) & hole).sum() > hole.sum() // 4  # ~3 rows in 9


def _fixture(seed: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    damage = rng.random(GRID.shape) < 0.05
    extent = np.zeros(GRID.shape, bool)
    extent[100:1000, 50:850] = True
    return damage, extent


def test_products_written_by_rows_match_the_array_path(tmp_path: Path) -> None:
    """The writer asks for each strip once, never more than a tile row, and the files are the
    bytes the whole-array call writes."""
    damage, extent = _fixture()
    reader = CountingRows(damage, extent)
    by_rows = write_products_rows(tmp_path / "rows", "Totten", 2016, ("LC08",), None, reader,
                                  GRID)
    whole = write_products(tmp_path / "whole", "Totten", 2016, ("LC08",), None, damage, extent,
                           GRID)
    assert reader.calls == [(0, 512), (512, 1024), (1024, 1100)]
    assert by_rows.damage_map.read_bytes() == whole.damage_map.read_bytes()
    assert by_rows.damage.read_bytes() == whole.damage.read_bytes()
    with rasterio.open(by_rows.damage_map) as ds:
        assert ds.block_shapes[0] == (512, 512)
        window = ds.read(1, window=Window(0, 1024, GRID.width, 76))
    assert np.array_equal(window == TYPE1.damage, (damage & extent)[1024:])
    assert sorted(p.name for p in files_under(tmp_path)) == sorted(
        [by_rows.damage.name, by_rows.damage_map.name] * 2)  # no scratch left behind


def test_a_bad_last_strip_leaves_no_file(tmp_path: Path) -> None:
    """A value found only in the last strip still stops the write with nothing on disk."""
    damage, extent = (a.astype(np.uint8) for a in _fixture())
    damage[-1, -1] = 3
    with pytest.raises(SpecError, match=r"values \[3\]"):
        write_products_rows(tmp_path, "Totten", 2016, ("LC08",), None,
                            CountingRows(damage, extent), GRID)
    assert files_under(tmp_path) == []

