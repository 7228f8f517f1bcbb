"""Merge per-scene predictions into one full-ROI damage map per shelf-year (paper, 2.4.1).

The paper merges PREDICTIONS of individual scenes, never a mosaic of images (tonal differences
at scene seams would disturb the segmentation). The rules, automated:

1. If one scene is usable (present, cloud-free, SLC-off gaps counted as usable because they are
   restored before segmentation) over the whole ROI, its prediction is the map. When several
   are, the source's ranking (best first) decides.
2. Otherwise the main scene is the one usable over most of the shelf region (the effective
   extent; the ROI breaks ties), and the pixels it leaves uncovered are filled from the other
   scenes in order of acquisition-date distance to the main scene (close dates first, as ice
   moves), each filling only pixels still uncovered where it is usable.
3. If the shelf region is still not fully covered by usable pixels, the year has no map
   (``NotCoveredError``).
4. ROI pixels outside the shelf region that no scene covers cloud-free take the prediction of a
   scene that at least has data there (cloud-contaminated, as the paper allows for small areas
   of grounded ice); they are counted separately (``cloudy_fill_fraction``).

Planning needs only the masks, so the producer can restore and segment just the scenes the plan
uses. ``compose`` then takes any per-scene layer (0/1 predictions, probabilities) through the
plan's per-pixel source-scene index (uint8, ``NO_SCENE`` = 255 where no scene has data).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

#: Source-scene index value of pixels no scene covers.
NO_SCENE = 255
#: Most candidate scenes one plan can index (uint8 index, 255 reserved).
MAX_SCENES = 255


class NotCoveredError(ValueError):
    """The shelf region cannot be fully covered by usable pixels of the candidate scenes."""

    def __init__(self, covered_fraction: float, missing_pixels: int, scenes: int) -> None:
        self.covered_fraction = covered_fraction
        self.missing_pixels = missing_pixels
        self.scenes = scenes
        super().__init__(
            f"the shelf region is not fully covered: {covered_fraction:.2%} covered by usable "
            f"pixels of {scenes} scene(s), {missing_pixels} pixel(s) missing"
            if scenes else "no scene covers the shelf region"
        )


@dataclass(frozen=True)
class Candidate:
    """A scene's masks on the ROI grid, as the merge sees it."""

    scene_id: str
    acquired: dt.date
    usable: NDArray[np.bool_]
    """Present and cloud-free (SLC-off gaps inside the footprint count: they get restored)."""
    present: NDArray[np.bool_] | None = None
    """Has data, even cloudy (defaults to ``usable``)."""

    @property
    def data(self) -> NDArray[np.bool_]:
        """Where the scene has any data."""
        return self.usable if self.present is None else self.present | self.usable


@dataclass(frozen=True)
class MergePlan:
    """Which scene's prediction each pixel of the map comes from."""

    index: NDArray[np.uint8]
    """Per-pixel position of the source scene in the candidate list; NO_SCENE where no scene
    has data and outside the ROI."""
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

    @property
    def used(self) -> tuple[int, ...]:
        """Candidate positions that contribute pixels to the map."""
        return tuple(i for i in self.order if self.fractions[i] > 0)


def _check(candidates: Sequence[Candidate], roi: NDArray[np.bool_],
           extent: NDArray[np.bool_]) -> None:
    if len(candidates) > MAX_SCENES:
        raise ValueError(f"{len(candidates)} candidate scenes; at most {MAX_SCENES} can be merged")
    if roi.shape != extent.shape:
        raise ValueError(f"ROI mask {roi.shape} and extent mask {extent.shape} differ in shape")
    for c in candidates:
        if c.usable.shape != roi.shape or (c.present is not None and c.present.shape != roi.shape):
            raise ValueError(f"scene {c.scene_id}: mask shape {c.usable.shape} != {roi.shape}")


def _choose_main(candidates: Sequence[Candidate], roi: NDArray[np.bool_],
                 extent: NDArray[np.bool_]) -> tuple[int, bool]:
    """(position of the main scene, whether it alone covers the whole ROI)."""
    for i, c in enumerate(candidates):
        if not np.any(roi & ~c.usable):
            return i, True
    shelf_px = max(int(extent.sum()), 1)
    roi_px = max(int(roi.sum()), 1)

    def score(i: int) -> tuple[float, float, int]:
        c = candidates[i]
        return (int((c.usable & extent).sum()) / shelf_px, int((c.usable & roi).sum()) / roi_px,
                -i)

    return max(range(len(candidates)), key=score), False


def plan_merge(candidates: Sequence[Candidate], roi: NDArray[np.bool_],
               extent: NDArray[np.bool_]) -> MergePlan:
    """The merge plan of a shelf-year, or NotCoveredError if the shelf region stays uncovered.

    ``candidates`` come best first (the source's ranking); ``roi`` marks the ROI pixels of the
    grid and ``extent`` the shelf region (effective extent) that must be fully covered.
    """
    roi = np.asarray(roi, bool)
    extent = np.asarray(extent, bool) & roi
    _check(candidates, roi, extent)
    if not candidates:
        raise NotCoveredError(0.0, int(extent.sum()), 0)
    main, single = _choose_main(candidates, roi, extent)
    index = np.full(roi.shape, NO_SCENE, np.uint8)
    main_day = candidates[main].acquired
    by_date = sorted(
        (i for i in range(len(candidates)) if i != main),
        key=lambda i: (abs((candidates[i].acquired - main_day).days), i),
    )
    order = (main,) if single else (main, *by_date)
    for i in order:
        free = (index == NO_SCENE) & candidates[i].usable & roi
        index[free] = i
    missing = int((extent & (index == NO_SCENE)).sum())
    if missing:
        shelf_px = int(extent.sum())
        raise NotCoveredError(1.0 - missing / max(shelf_px, 1), missing, len(candidates))
    cloudy = np.zeros(roi.shape, bool)
    for i in (main, *by_date):
        free = (index == NO_SCENE) & candidates[i].data & roi
        index[free] = i
        cloudy |= free
    roi_px = max(int(roi.sum()), 1)
    fractions = tuple(int(((index == i) & roi).sum()) / roi_px for i in range(len(candidates)))
    used_order = tuple(i for i in (main, *by_date) if fractions[i] > 0)
    return MergePlan(
        index=index,
        main=main,
        order=used_order,
        fractions=fractions,
        single_scene=single,
        cloudy_fill_fraction=int((cloudy & roi).sum()) / roi_px,
        uncovered_fraction=int(((index == NO_SCENE) & roi).sum()) / roi_px,
        roi_pixels=int(roi.sum()),
    )


def compose(plan: MergePlan, layers: Sequence[NDArray | None], fill: int = 0) -> NDArray:
    """One map from per-scene layers through the plan's source index.

    ``layers[i]`` is scene i's raster (e.g. its 0/1 prediction) or None for scenes the plan does
    not use; pixels with no source take ``fill``.
    """
    dtypes = {np.asarray(layer).dtype for layer in layers if layer is not None}
    if len(dtypes) != 1:
        raise ValueError(f"layers must share one dtype, got {sorted(map(str, dtypes))}")
    out = np.full(plan.index.shape, fill, dtype=dtypes.pop())
    for i in plan.used:
        layer = layers[i]
        if layer is None:
            raise ValueError(f"the plan uses scene {i} but its layer is missing")
        if layer.shape != plan.index.shape:
            raise ValueError(f"layer {i}: shape {layer.shape} != {plan.index.shape}")
        take = plan.index == i
        out[take] = layer[take]
    return out
