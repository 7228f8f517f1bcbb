"""Merge per-scene predictions into one full-ROI damage map per shelf-year (paper, 2.4.1).

The paper merges PREDICTIONS of individual scenes, never a mosaic of images (tonal differences
at scene seams would disturb the segmentation). The rules, automated:

1. If one scene is usable (present, cloud-free, SLC-off gaps counted as usable because they are
   restored before segmentation, unless a cloud lies across them: ``producer.slcoff``'s
   ``near_cloud``) over the whole ROI, its prediction is the map. When several
   are, the plan takes the source's ranking (best first) and lists them all
   (``MergePlan.full_coverage``); the producer may then compare their predictions and make
   another one the map (``with_main``; the comparison is ``producer.compare``).
2. Otherwise the main scene is the one usable over most of the shelf region (the effective
   extent; the ROI breaks ties, then the source's ranking), and the pixels it leaves uncovered
   are filled from the other scenes in order of acquisition-date distance to the main scene
   (close dates first, as ice moves), each filling only pixels still uncovered where it is
   usable.
   With an ice-velocity product (``produce --velocity``; the paper's Rignot et al., 2017) the
   main scene is the one with "relatively high proportion of valid coverage and more complete
   coverage of rapidly flowing areas": it scores the mean of its usable share of the shelf
   region and its usable share of the region's ice flow (pixels weighted by speed,
   ``producer.velocity``); the plain share breaks ties. Without one, the plain share decides,
   fast-flowing or not. The authors then merge by hand under visual inspection; we do not.
   The speed is read only for such a choice: not when a scene covers the ROI (rule 1), no
   longer once the shelf region is known not to be covered (rule 3), and only on strips of the
   shelf region.
3. If the shelf region is still not fully covered by usable pixels, the year has no map
   (``NotCoveredError``). That includes a shelf region lying partly outside the ROI, where no
   scene is merged: beyond ``MAX_OUTSIDE_ROI_SHARE`` of its pixels (a tolerance for GIS
   imprecision) the year has no map; below it the outside part is left out (NoData in type 1).
4. ROI pixels outside the shelf region that no scene covers cloud-free take the prediction of a
   scene that at least has data there (cloud-contaminated, as the paper allows for small areas
   of grounded ice); they are counted separately (``cloudy_fill_fraction``).

Planning needs only the masks, so the producer can restore and segment just the scenes the plan
uses. ``compose`` then takes any per-scene layer (0/1 predictions, probabilities) through the
plan's per-pixel source-scene index (uint8, ``NO_SCENE`` = 255 where no scene has data: outside
the ROI, and ROI pixels no scene imaged, which ``compose`` fills with ``fill``, 0 for the type 2
map; the written source-scene file tells the two apart). Every fraction of the plan is a share
of the ROI's pixels (``MergePlan.roi_pixels``).

Memory: every rule is either a per-pixel choice or a count over the grid, so planning reads the
masks strip by strip (``STRIP_ROWS`` rows at a time; counts, then the index) and holds
only the index (one byte per pixel) whatever the number of scenes; a candidate's masks can be
arrays or a reader of row ranges (``Candidate.masks``), and ``compose_rows`` composes one strip
at a time. On the largest ROI (Amery, ~313 Mpx) this keeps the merge well under a gigabyte.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
from numpy.typing import NDArray

from producer.extent import MAX_OUTSIDE_ROI_SHARE
from producer.grid import STRIP_ROWS, row_strips
from producer.spec import SOURCE_SCENE_NOT_IMAGED, SOURCE_SCENE_RASTER

#: Source-scene index value of pixels no scene covers (outside the ROI or not imaged).
NO_SCENE = SOURCE_SCENE_RASTER.nodata
#: Most candidate scenes one plan can index: the written index file keeps 255 (outside the ROI)
#: and 254 (``SOURCE_SCENE_NOT_IMAGED``) for pixels without a scene.
MAX_SCENES = SOURCE_SCENE_NOT_IMAGED
#: Reads rows ``r0:r1`` of two full-width masks: (usable, data) of a scene, (roi, extent) of the
#: grid.
RowMasks = Callable[[int, int], tuple[NDArray[np.bool_], NDArray[np.bool_]]]
#: Reads the ice speed of rows ``r0:r1`` (non-negative, 0 where unknown; any unit).
RowSpeed = Callable[[int, int], NDArray[np.floating]]


class NotCoveredError(ValueError):
    """The shelf region cannot be fully covered by usable pixels of the candidate scenes."""

    def __init__(self, covered_fraction: float, missing_pixels: int, scenes: int,
                 reason: str | None = None) -> None:
        self.covered_fraction = covered_fraction
        self.missing_pixels = missing_pixels
        self.scenes = scenes
        super().__init__(
            reason if reason is not None else
            f"the shelf region is not fully covered: {_floor_percent(covered_fraction)} covered "
            f"by usable pixels of {scenes} scene(s), {missing_pixels} pixel(s) missing"
            if scenes else "no scene covers the shelf region"
        )


def _floor_percent(fraction: float) -> str:
    """A share as a percentage rounded down: a few pixels missing never read as 100.00%."""
    # the epsilon absorbs float error (0.57 * 10_000 = 5699.999…), far below one pixel of a
    # shelf (1 pixel in 10⁹ is 10⁻⁵ here)
    return f"{math.floor(fraction * 10_000 + 1e-7) / 100:.2f}%"


@dataclass(frozen=True)
class Candidate:
    """A scene's masks on the ROI grid, as the merge sees it: arrays, or a reader of row strips."""

    scene_id: str
    acquired: dt.date
    usable: NDArray[np.bool_] | None = None
    """Present and cloud-free (SLC-off gaps inside the footprint count: they get restored)."""
    present: NDArray[np.bool_] | None = None
    """Has data, even cloudy (defaults to ``usable``)."""
    masks: RowMasks | None = None
    """Instead of the arrays: reads (usable, data) of rows r0:r1, for grids too big to hold."""

    def __post_init__(self) -> None:
        if (self.usable is None) == (self.masks is None):
            raise ValueError(f"scene {self.scene_id}: give either the usable mask or a reader")

    @property
    def data(self) -> NDArray[np.bool_]:
        """Where the scene has any data (array candidates only)."""
        if self.usable is None:
            raise ValueError(f"scene {self.scene_id}: masks are read by rows, not held")
        return self.usable if self.present is None else self.present | self.usable

    def rows(self, r0: int, r1: int) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
        """(usable, data) of rows r0:r1."""
        if self.masks is not None:
            usable, data = self.masks(r0, r1)
            return usable, data | usable
        assert self.usable is not None
        usable = self.usable[r0:r1]
        return usable, usable if self.present is None else self.present[r0:r1] | usable


@dataclass(frozen=True)
class MergePlan:
    """Which scene's prediction each pixel of the map comes from."""

    index: NDArray[np.uint8]
    """Per-pixel position of the source scene in the candidate list; NO_SCENE outside the ROI
    and at ROI pixels no scene has data (the ROI mask tells them apart)."""
    main: int
    """Candidate position of the main scene."""
    order: tuple[int, ...]
    """Candidate positions in the order they were used (main first); unused scenes left out."""
    fractions: tuple[float, ...]
    """Per candidate: share of the ROI taken from its prediction (0 for unused scenes)."""
    single_scene: bool
    """True when one scene covers the whole ROI cloud-free (rule 1)."""
    cloudy_fill_fraction: float
    """Share of the ROI filled from cloud-contaminated pixels (outside the shelf region only)."""
    uncovered_fraction: float
    """Share of the ROI no scene has data for (mapped as background)."""
    roi_pixels: int
    """Pixels of the ROI on the grid (the denominator of the fractions)."""
    usable_fractions: tuple[float, ...] = ()
    """Per candidate: share of the ROI where it is usable (its valid fraction)."""
    cloud_fractions: tuple[float, ...] = ()
    """Per candidate: share of the ROI where it has data but is not usable (cloud, and SLC-off
    gaps a cloud lies across)."""
    full_coverage: tuple[int, ...] = ()
    """Candidate positions usable over the whole ROI, in ranking order (rule 1; the main scene
    first when the plan is single-scene)."""
    flow_fractions: tuple[float, ...] = ()
    """Per candidate: usable share of the shelf region's ice flow (speed-weighted pixels; a
    share of that flow, not of the ROI). Empty without a speed, where it is 0 all over the
    shelf region (a velocity product of another region), and when a scene covers the whole ROI
    (rule 1 needs no speed, so it is not read)."""

    @property
    def used(self) -> tuple[int, ...]:
        """Candidate positions that contribute pixels to the map."""
        return tuple(i for i in self.order if self.fractions[i] > 0)


def _check(candidates: Sequence[Candidate], roi: NDArray[np.bool_],
           extent: NDArray[np.bool_]) -> None:
    if roi.shape != extent.shape:
        raise ValueError(f"ROI mask {roi.shape} and extent mask {extent.shape} differ in shape")
    for c in candidates:
        if c.usable is None:
            continue
        if c.usable.shape != roi.shape or (c.present is not None and c.present.shape != roi.shape):
            raise ValueError(f"scene {c.scene_id}: mask shape {c.usable.shape} != {roi.shape}")


def plan_merge(candidates: Sequence[Candidate], roi: NDArray[np.bool_],
               extent: NDArray[np.bool_], strip_rows: int = STRIP_ROWS,
               speed: NDArray[np.floating] | None = None) -> MergePlan:
    """The merge plan of a shelf-year, or NotCoveredError if the shelf region stays uncovered.

    ``candidates`` come best first (the source's ranking); ``roi`` marks the ROI pixels of the
    grid and ``extent`` the shelf region (effective extent) that must be fully covered;
    ``speed`` (optional, the grid's ice speed) weighs the flow a main scene covers (rule 2).
    """
    roi = np.asarray(roi, bool)
    extent = np.asarray(extent, bool)
    _check(candidates, roi, extent)
    if speed is not None and np.shape(speed) != roi.shape:
        raise ValueError(f"speed {np.shape(speed)} and ROI mask {roi.shape} differ in shape")
    return plan_merge_rows(candidates, lambda r0, r1: (roi[r0:r1], extent[r0:r1]), roi.shape,
                           strip_rows,
                           None if speed is None else lambda r0, r1: speed[r0:r1])


@dataclass
class _Tally:
    """Pass 1 of the planner: per-candidate coverage counts over the whole grid."""

    n: int
    roi_px: int = 0
    shelf_px: int = 0
    """Shelf-region pixels inside the ROI."""
    outside_px: int = 0
    """Shelf-region pixels outside the ROI (no scene is merged there)."""

    uncovered_px: int = 0
    """Shelf-region pixels inside the ROI that no scene is usable at (rule 3)."""

    def __post_init__(self) -> None:
        self.full = [True] * self.n
        self.on_shelf = [0] * self.n
        self.on_roi = [0] * self.n
        self.data_on_roi = [0] * self.n
        # per strip (by position) whose speed was read: (the shelf region's flow, each scene's
        # usable flow); summed in strip order, whatever order they were read in
        self.flows: dict[int, tuple[float, list[float]]] = {}

    @property
    def needs_flow(self) -> bool:
        """Whether the speed can still decide the main scene: no scene covers the ROI so far
        (rule 1) and every shelf-region pixel so far is usable in some scene (rule 3)."""
        return self.n > 0 and not any(self.full) and not self.uncovered_px

    def add(self, i: int, usable: NDArray[np.bool_], data: NDArray[np.bool_],
            roi: NDArray[np.bool_], extent: NDArray[np.bool_]) -> None:
        """Count scene i's usable and data pixels of one strip."""
        if self.full[i] and np.any(roi & ~usable):
            self.full[i] = False
        self.on_shelf[i] += int(np.count_nonzero(usable & extent))
        self.on_roi[i] += int(np.count_nonzero(usable & roi))
        self.data_on_roi[i] += int(np.count_nonzero(data & roi))

    @property
    def flow_fractions(self) -> tuple[float, ...]:
        """Per scene: usable share of the shelf region's flow (empty when it has none, or when
        its speed was not read)."""
        strips = [self.flows[k] for k in sorted(self.flows)]
        shelf_flow = sum(shelf for shelf, _ in strips)
        if shelf_flow <= 0:
            return ()
        return tuple(sum(flows[i] for _, flows in strips) / shelf_flow for i in range(self.n))

    def check_covered(self, scenes: int) -> None:
        """NotCoveredError when some shelf-region pixel is usable in no scene (rule 3)."""
        if self.uncovered_px:
            raise NotCoveredError(1.0 - self.uncovered_px / max(self.shelf_px, 1),
                                  self.uncovered_px, scenes)

    def check_inside_roi(self, scenes: int) -> None:
        """NotCoveredError when more than ``MAX_OUTSIDE_ROI_SHARE`` of the shelf region's
        pixels lie outside the ROI (rule 3): no scene is merged there, so it is not covered."""
        total = self.shelf_px + self.outside_px
        share = self.outside_px / total if total else 0.0
        if share > MAX_OUTSIDE_ROI_SHARE:
            raise NotCoveredError(
                1.0 - share, self.outside_px, scenes,
                reason=f"the shelf region is not fully covered: {share:.2%} of it "
                       f"({self.outside_px} of {total} px) lies outside the ROI, where no scene "
                       f"is merged (at most {MAX_OUTSIDE_ROI_SHARE:.0%} may)")

    def choose_main(self) -> tuple[int, bool]:
        """(position of the main scene, whether it alone covers the whole ROI) - rules 1 and 2."""
        for i in range(self.n):
            if self.full[i]:
                return i, True
        shelf_px, roi_px = max(self.shelf_px, 1), max(self.roi_px, 1)
        flow = self.flow_fractions

        def score(i: int) -> tuple[float, float, float, int]:
            share = self.on_shelf[i] / shelf_px
            both = (share + flow[i]) / 2 if flow else share
            return both, share, self.on_roi[i] / roi_px, -i

        return max(range(self.n), key=score), False


def plan_merge_rows(candidates: Sequence[Candidate], area: RowMasks, shape: tuple[int, int],
                    strip_rows: int = STRIP_ROWS, speed: RowSpeed | None = None) -> MergePlan:
    """``plan_merge`` reading every mask by strips of ``strip_rows`` rows.

    ``area(r0, r1)`` gives the (roi, extent) rows of the grid of ``shape``, ``speed(r0, r1)``
    (optional) the ice speed of those rows, read only while it can decide the main scene (no
    scene covers the ROI, every shelf-region pixel so far is usable in some scene) and only for
    strips holding shelf-region pixels. Memory: the index plus a few strips, whatever the
    number of scenes; each candidate's masks are read at most three times per strip (counts,
    usable fill, cloudy fill), not at all once a strip is full, and once more for the flow of
    the strips counted before every scene was known to leave part of the ROI uncovered.
    """
    if len(candidates) > MAX_SCENES:
        raise ValueError(f"{len(candidates)} candidate scenes; at most {MAX_SCENES} can be merged")
    strips = row_strips(shape[0], strip_rows)
    tally = _Tally(len(candidates))
    pending: list[int] = []  # strips of the shelf region whose flow is counted if needed
    for k, (r0, r1) in enumerate(strips):
        roi, extent, outside = _area_rows(area, r0, r1, shape)
        tally.roi_px += int(np.count_nonzero(roi))
        tally.shelf_px += int(np.count_nonzero(extent))
        tally.outside_px += outside
        values = None
        if speed is not None and extent.any():
            if tally.needs_flow:
                values = _speed_rows(speed, r0, r1, shape, extent)
            else:  # a scene may still cover the ROI: decided once every strip is counted
                pending.append(k)
        covered = np.zeros_like(extent)
        usable_flow: list[float] = []
        for i, c in enumerate(candidates):
            usable, data = _scene_rows(c, r0, r1, shape)
            tally.add(i, usable, data, roi, extent)
            covered |= usable
            if values is not None:
                usable_flow.append(float(values[usable & extent].sum(dtype=np.float64)))
        tally.uncovered_px += int(np.count_nonzero(extent & ~covered))
        if values is not None:
            tally.flows[k] = (float(values[extent].sum(dtype=np.float64)), usable_flow)
    tally.check_inside_roi(len(candidates))
    if not candidates:
        raise NotCoveredError(0.0, tally.shelf_px, 0)
    tally.check_covered(len(candidates))
    if speed is not None and tally.needs_flow:
        for k in pending:
            tally.flows[k] = _strip_flow(candidates, area, speed, *strips[k], shape)
    main, single = tally.choose_main()
    main_day = candidates[main].acquired
    by_date = sorted(
        (i for i in range(len(candidates)) if i != main),
        key=lambda i: (abs((candidates[i].acquired - main_day).days), i),
    )
    order = (main,) if single else (main, *by_date)
    index = np.full(shape, NO_SCENE, np.uint8)
    cloudy = 0
    counts = np.zeros(NO_SCENE + 1, np.int64)
    for r0, r1 in strips:  # every shelf-region pixel gets a usable scene (check_covered)
        roi, _, _ = _area_rows(area, r0, r1, shape)
        strip = index[r0:r1]
        _fill(strip, candidates, order, roi, r0, r1, shape, usable_only=True)
        cloudy += _fill(strip, candidates, (main, *by_date), roi, r0, r1, shape, usable_only=False)
        counts += np.bincount(strip[roi], minlength=NO_SCENE + 1)
    roi_px = max(tally.roi_px, 1)
    fractions = tuple(int(counts[i]) / roi_px for i in range(len(candidates)))
    return MergePlan(
        index=index,
        main=main,
        order=tuple(i for i in (main, *by_date) if fractions[i] > 0),
        fractions=fractions,
        single_scene=single,
        cloudy_fill_fraction=cloudy / roi_px,
        uncovered_fraction=int(counts[NO_SCENE]) / roi_px,
        roi_pixels=tally.roi_px,
        usable_fractions=tuple(n / roi_px for n in tally.on_roi),
        cloud_fractions=tuple((d - u) / roi_px
                              for d, u in zip(tally.data_on_roi, tally.on_roi, strict=True)),
        full_coverage=tuple(i for i in range(len(candidates)) if tally.full[i]),
        flow_fractions=tally.flow_fractions,
    )


def with_main(plan: MergePlan, scene: int) -> MergePlan:
    """The single-scene plan with another full-coverage candidate as the map (rule 1, after a
    comparison of the full-coverage predictions): same ROI, every ROI pixel from ``scene``."""
    if not plan.single_scene or scene not in plan.full_coverage:
        raise ValueError(f"candidate {scene} is not a full-coverage scene of a single-scene plan "
                         f"(full coverage: {list(plan.full_coverage)})")
    if scene == plan.main:
        return plan
    index = plan.index.copy()
    index[index == plan.main] = scene
    fractions = [0.0] * len(plan.fractions)
    fractions[scene] = plan.fractions[plan.main]
    return replace(plan, index=index, main=scene, order=(scene,), fractions=tuple(fractions))


def _area_rows(area: RowMasks, r0: int, r1: int, shape: tuple[int, int]
               ) -> tuple[NDArray[np.bool_], NDArray[np.bool_], int]:
    """(roi, extent & roi, count of extent pixels outside the ROI) of rows r0:r1,
    shape-checked."""
    roi, extent = (np.asarray(a, bool) for a in area(r0, r1))
    want = (r1 - r0, shape[1])
    if roi.shape != want or extent.shape != want:
        raise ValueError(f"ROI/extent rows {r0}:{r1} are {roi.shape}/{extent.shape}, not {want}")
    return roi, extent & roi, int(np.count_nonzero(extent & ~roi))


def _strip_flow(candidates: Sequence[Candidate], area: RowMasks, speed: RowSpeed, r0: int,
                r1: int, shape: tuple[int, int]) -> tuple[float, list[float]]:
    """(the shelf region's flow, each scene's usable flow) of rows r0:r1, masks read again:
    for the strips counted before the speed was known to matter."""
    _, extent, _ = _area_rows(area, r0, r1, shape)
    values = _speed_rows(speed, r0, r1, shape, extent)
    usable_flow = [float(values[_scene_rows(c, r0, r1, shape)[0] & extent].sum(dtype=np.float64))
                   for c in candidates]
    return float(values[extent].sum(dtype=np.float64)), usable_flow


def _speed_rows(speed: RowSpeed, r0: int, r1: int, shape: tuple[int, int],
                extent: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Speed of rows r0:r1, shape-checked; negative or non-finite values refused (a speed)."""
    values = np.asarray(speed(r0, r1), np.float64)
    want = (r1 - r0, shape[1])
    if values.shape != want:
        raise ValueError(f"speed rows {r0}:{r1} are {values.shape}, not {want}")
    if not np.all(np.isfinite(values[extent])) or np.any(values[extent] < 0):
        raise ValueError(f"speed rows {r0}:{r1}: negative or non-finite values on the shelf "
                         "region (a speed is finite and >= 0; 0 where unknown)")
    return values


def _scene_rows(c: Candidate, r0: int, r1: int, shape: tuple[int, int]
                ) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """(usable, data) of a candidate's rows r0:r1, shape-checked."""
    usable, data = c.rows(r0, r1)
    want = (r1 - r0, shape[1])
    if usable.shape != want or data.shape != want:
        raise ValueError(f"scene {c.scene_id}: mask rows {r0}:{r1} are {usable.shape}, not {want}")
    return usable, data


def _fill(strip: NDArray[np.uint8], candidates: Sequence[Candidate], order: Sequence[int],
          roi: NDArray[np.bool_], r0: int, r1: int, shape: tuple[int, int],
          usable_only: bool) -> int:
    """Give pixels of the strip still without a source to the scenes in ``order`` (rules 2, 4).

    With ``usable_only`` a scene takes only its usable pixels, else any pixel with data. Returns
    how many pixels were filled; scenes are not read once every ROI pixel has a source.
    """
    filled = 0
    for i in order:
        open_px = (strip == NO_SCENE) & roi
        if not open_px.any():
            break
        usable, data = _scene_rows(candidates[i], r0, r1, shape)
        free = open_px & (usable if usable_only else data)
        strip[free] = i
        filled += int(np.count_nonzero(free))
    return filled


def compose(plan: MergePlan, layers: Sequence[NDArray | None], fill: int = 0) -> NDArray:
    """One map from per-scene layers through the plan's source index.

    ``layers[i]`` is scene i's raster (e.g. its 0/1 prediction) or None for scenes the plan does
    not use; pixels with no source take ``fill``.
    """
    return compose_rows(plan, 0, plan.index.shape[0], layers, fill)


def compose_rows(plan: MergePlan, r0: int, r1: int, layers: Sequence[NDArray | None],
                 fill: int = 0) -> NDArray:
    """Rows r0:r1 of ``compose``: ``layers[i]`` are scene i's rows r0:r1.

    A used scene's layer may be None when no pixel of these rows comes from it (so a caller
    reads only the scenes a strip needs).
    """
    index = plan.index[r0:r1]
    dtypes = {np.asarray(layer).dtype for layer in layers if layer is not None}
    if len(dtypes) != 1:
        raise ValueError(f"layers must share one dtype, got {sorted(map(str, dtypes))}")
    out = np.full(index.shape, fill, dtype=dtypes.pop())
    for i in plan.used:
        take = index == i
        layer = layers[i]
        if layer is None:
            if take.any():
                raise ValueError(f"the plan uses scene {i} but its layer is missing")
            continue
        if layer.shape != index.shape:
            raise ValueError(f"layer {i}: shape {layer.shape} != {index.shape}")
        out[take] = layer[take]
    return out


def scenes_in_rows(plan: MergePlan, r0: int, r1: int) -> tuple[int, ...]:
    """Used candidate positions that give at least one pixel of rows r0:r1."""
    present = np.bincount(plan.index[r0:r1].ravel(), minlength=NO_SCENE + 1) > 0
    return tuple(i for i in plan.used if present[i])
