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
from producer.slcoff import detect_gaps, footprint_of, simulate_slc_off_mask
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
                  "uncovered_fraction", "roi_pixels", "usable_fractions"):
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
    computed on the whole arrays, with its footprint from a file or from the convex hull."""
    grid = Grid.from_bounds(0, 0, 300 * 30, 1100 * 30)
    rows, cols = np.mgrid[0:1100, 0:300]
    footprint = (rows + cols > 150) & (rows - cols < 900)  # a cut scene, convex
    rgb = np.where(footprint, ((rows * 7 + cols) % 200 + 20).astype(np.uint8), 0)
    gaps = simulate_slc_off_mask(grid.shape, angle_deg=10.0, seed=3)
    rgb = np.stack([np.where(gaps, 0, rgb)] * 3).astype(np.uint8)
    cloud = ((rows - 600) ** 2 + (cols - 150) ** 2 < 80 ** 2).astype(np.uint8)
    metadata = {}
    if footprint_file:
        metadata[FOOTPRINT_KEY] = _geotiff(tmp_path / "fp.tif", grid,
                                           footprint[None].astype(np.uint8))
    scene = Scene("LE07_test", "LE07", dt.date(2005, 1, 5),
                  _geotiff(tmp_path / "scene.tif", grid, rgb), 0.5,
                  cloud_mask_path=_geotiff(tmp_path / "cloud.tif", grid, cloud[None]),
                  metadata=metadata)
    hwc = np.moveaxis(rgb, 0, -1)
    present = hwc.any(axis=2) | detect_gaps(hwc, footprint if footprint_file
                                            else footprint_of(hwc))
    masks = scene_masks(scene, 2005, grid, tmp_path)
    with rasterio.open(masks.path) as ds:
        code = ds.read(1)
    assert masks.slc_off and gaps[footprint].any()
    assert np.array_equal(code & MASK_PRESENT != 0, present)
    assert np.array_equal(code & MASK_USABLE != 0, present & (cloud == 0))
    assert masks.cloud_fraction == pytest.approx(float(((cloud != 0) & present).mean()))
    usable, data = masks.candidate().rows(512, 1024)
    assert np.array_equal(usable, (code & MASK_USABLE != 0)[512:1024])


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

