"""Landsat 7 SLC-off gaps: simulate their real geometry and detect them in a scene.

Geometry (see /work/shared/reference/README.md, "Landsat 7 SLC-off", and the dataset paper 2.2)
    Landsat 7's ETM+ sweeps 16 detector lines per scan, alternately west-to-east and
    east-to-west, across the ground track. The scan-line corrector (SLC) compensated the
    satellite's forward motion during a sweep; since it failed on 2003-05-31 each sweep is
    tilted, forward sweeps one way and reverse sweeps the other, so consecutive sweeps zig-zag:
    they meet (no gap) along the scene's centre line (nadir, along the ground track) and drift
    apart towards the swath edges. Between a forward sweep and the following reverse sweep the
    gap opens on one side of the centre line; between the reverse sweep and the next forward
    sweep it opens on the other side. The result is wedge-shaped stripes running along the scan
    direction whose width grows linearly from nothing at the centre line to about 14 pixels
    (30 m) at the swath edges, on each side repeating every two sweeps (32 lines), the two
    sides offset by one sweep (16 lines). Averaged over the swath a gap is 7 px wide every
    32 lines: 7 / 32 ~= 22 % of the scene is missing, none along the centre line.

    Level-1 products have more: USGS states that about 20 % of the scene centre is not gapped
    (the narrowest gaps vanish in L1 processing). ``gap_free_centre`` reproduces it: no gap
    within that share of the swath width around the centre line, then the width ramps up
    linearly and reaches ``max_gap_px`` as far inside the swath edge as the gap-free band is
    wide (the outermost ``gap_free_centre / 2`` of each side stays at the full width), so the
    swath's mean gap share stays ~22 % and no gap is wider than ``max_gap_px``. The demo source
    renders whole scenes with ``DEMO_GAP_FREE_CENTRE``; the default (0) is the plain wedge the
    demo DiffGF was trained and evaluated on (random windows of a swath).

    The scan direction is roughly perpendicular to the ground track, which in a polar
    stereographic grid (EPSG:3031) is rotated by an angle that depends on where the scene is;
    ``angle_deg`` is the angle of the scan direction to the grid's x axis (counter-clockwise,
    in the image as displayed, i.e. rows growing downwards).

Detection
    Earth Engine exports masked pixels as 0 after ``.toByte()``, so an SLC-off gap is a pixel
    that is zero in every band while lying inside the scene's footprint; outside the footprint
    zeros are simply "no scene". USGS ships band-specific gap masks (the gaps of the bands of
    Landsat 7 differ slightly), so along a gap's edge a pixel may be 0 in some bands only: such
    a pixel, zero in at least one band and within ``GAP_BAND_REACH_PX`` of a pixel zero in all
    bands (square neighbourhood), is part of the gap too; it is restored in all bands instead
    of being kept as known data that would pull the fills towards black. A pixel with a zero
    band away from any gap is data (a band can be 0 on its own). A caller working by row
    strips passes ``GAP_BAND_REACH_PX`` rows of context on each side and crops them.

    Without a given footprint, the footprint is the filled convex hull of the non-zero pixels
    (the wedges reach the swath edge between sweeps that do not), less the holes too wide to
    be gaps (``GAP_HOLE_MAX_PX``): imagery that never arrived is not restored. A scene clipped
    to an ROI is not convex where the ROI's edge is a parallel of latitude (an arc in
    EPSG:3031): the hull then spans slivers beyond the ROI thinner than a gap, so the producer
    intersects the footprint with the ROI (``producer.pipeline.scene_masks``).

Clouds over gaps
    Cloud masks are 0 inside gaps (no data, no flag), but restoration fills a gap from the pixels
    around it, so a gap crossing a cloud comes back as cloud. Gap pixels within
    ``GAP_CLOUD_REACH_PX`` of a flagged cloud pixel (``near_cloud``) therefore count as cloudy:
    never usable for the shelf region, whose maps derive from cloud-free imagery only (paper
    2.4.2).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

#: Lines swept by one ETM+ scan (16 detectors of 30 m).
SCAN_LINES = 16
#: Along-track repeat of the gap pattern on one side of the centre line: two sweeps.
DEFAULT_PERIOD_PX = 2 * SCAN_LINES
#: Width of a gap at the swath edge, in 30 m pixels.
DEFAULT_MAX_GAP_PX = 14.0
#: Width of one Landsat swath (185 km) in 30 m pixels, for masks of whole scenes.
SWATH_WIDTH_PX = 6167
#: Holes in a scene narrower than this (px) can be SLC-off gaps: the widest gap is
#: ``DEFAULT_MAX_GAP_PX``, plus a margin for resampling onto the product grid. A wider hole
#: inside a scene's outline is imagery that was never delivered (a missing WRS-2 row, a tile
#: that failed), which no restoration may invent.
GAP_HOLE_MAX_PX = 17
#: A pixel zero in some band (not all) this close (px, square neighbourhood) to a pixel zero in
#: all bands belongs to that gap: the bands' gap masks differ by a pixel or so at gap edges.
GAP_BAND_REACH_PX = 2
#: Share of the swath width around the centre line without gaps in the demo's whole scenes
#: (USGS: about 20 % of the scene centre of an SLC-off Level-1 product is not gapped).
DEMO_GAP_FREE_CENTRE = 0.2
#: Gap pixels this close (px, in a square neighbourhood) to a flagged cloud pixel are cloudy.
#: Cloud masks say nothing inside a gap (QA_PIXEL and Earth Engine's unmasked cloud band are 0
#: where there is no data), yet a gap crossing a cloud is restored from the cloud around it, so
#: its restored pixels are cloud too. Any side of a gap lies within one gap width of each of its
#: pixels, so this reach (the widest gap, ``GAP_HOLE_MAX_PX``) catches every gap pixel whose
#: gap borders a cloud, at the price of also refusing gap pixels beside a cloud's edge.
GAP_CLOUD_REACH_PX = GAP_HOLE_MAX_PX


def _scene_frame(
    shape: tuple[int, int], angle_deg: float, centre_offset_px: float
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Per-pixel (across-track u, along-track v) coordinates in pixels.

    ``u`` runs along the scan direction and is 0 on the centre line; ``v`` runs along the ground
    track. Both are measured from the array centre (shifted by ``centre_offset_px`` across track).
    """
    rows, cols = shape
    theta = np.deg2rad(angle_deg)
    y = np.arange(rows, dtype=np.float64)[:, None] - (rows - 1) / 2.0
    x = np.arange(cols, dtype=np.float64)[None, :] - (cols - 1) / 2.0
    # Rows grow downwards: the displayed y axis is -row, so a counter-clockwise angle uses -y.
    u = x * np.cos(theta) - y * np.sin(theta) - centre_offset_px
    v = x * np.sin(theta) + y * np.cos(theta)
    return u, v


def simulate_slc_off_mask(
    shape: tuple[int, int],
    *,
    angle_deg: float,
    seed: int,
    period_px: float = DEFAULT_PERIOD_PX,
    max_gap_px: float = DEFAULT_MAX_GAP_PX,
    swath_half_width_px: float | None = None,
    centre_offset_px: float = 0.0,
    gap_free_centre: float = 0.0,
) -> NDArray[np.bool_]:
    """A Landsat 7 SLC-off gap mask (True = missing) for an array of ``shape``.

    ``angle_deg`` is the scan direction's angle to the grid x axis; ``seed`` picks the
    along-track phase of the sweeps. ``swath_half_width_px`` is the distance from the centre
    line at which a gap is ``max_gap_px`` wide; by default it is twice the mean across-track
    distance of the array's pixels (half the width for an unrotated array), so the array spans a
    whole swath and ~22 % of it is missing. Pass ``SWATH_WIDTH_PX / 2`` with a
    ``centre_offset_px`` to place a small window inside a real 185 km swath instead. Widths are
    clipped at ``max_gap_px`` beyond the swath half-width. ``gap_free_centre`` (a share of the
    swath width, below 0.5) keeps that band around the centre line free of gaps, as in Level-1
    products (module docstring); 0 gives the plain wedge growing from the centre line.
    """
    if len(shape) != 2 or min(shape) < 1:
        raise ValueError(f"shape must be (rows, cols) with both >= 1, got {shape!r}")
    if period_px <= max_gap_px or max_gap_px <= 0:
        raise ValueError(
            f"period_px ({period_px}) must exceed max_gap_px ({max_gap_px}) and both be > 0"
        )
    if not 0.0 <= gap_free_centre < 0.5:
        raise ValueError(f"gap_free_centre must be a share of the swath in [0, 0.5), got "
                         f"{gap_free_centre}")
    u, v = _scene_frame(shape, angle_deg, centre_offset_px)
    half = swath_half_width_px
    if half is None:
        half = 2.0 * float(np.mean(np.abs(u))) if u.size > 1 else 1.0
    if half <= 0:
        raise ValueError(f"swath_half_width_px must be > 0, got {half}")
    width = max_gap_px * _width_profile(np.abs(u), half, gap_free_centre)
    phase = np.random.default_rng(seed).uniform(0.0, period_px)
    # One side of the centre line opens its gaps between sweeps 2k/2k+1, the other side between
    # 2k+1/2k+2: the two sides' stripes are offset by one sweep (half a period).
    side_shift = np.where(u >= 0, 0.0, period_px / 2.0)
    # Distance (along track) to the nearest sweep boundary where this side's gap opens.
    offset = np.mod(v - phase - side_shift + period_px / 2.0, period_px) - period_px / 2.0
    return np.abs(offset) < width / 2.0


def _width_profile(across: NDArray[np.float64], half: float,
                   gap_free_centre: float) -> NDArray[np.float64]:
    """Gap width as a share of the widest gap at across-track distance ``across`` (px).

    0 within ``gap_free_centre`` of the swath width around the centre line (``start`` px either
    side), a linear ramp up to 1 reached ``start`` px inside the swath edge, 1 beyond: the mean
    over a swath is 1/2 whatever ``gap_free_centre`` is (``start`` = 0: the plain wedge,
    ``across / half``).
    """
    start = gap_free_centre * half
    return np.clip((across - start) / (half - 2.0 * start), 0.0, 1.0)


def apply_gaps(rgb: NDArray[np.uint8], gaps: NDArray[np.bool_]) -> NDArray[np.uint8]:
    """A copy of an HWC image with the gap pixels set to 0 in every band (as Earth Engine)."""
    if rgb.shape[:2] != gaps.shape:
        raise ValueError(f"image {rgb.shape[:2]} and gap mask {gaps.shape} differ in size")
    out = rgb.copy()
    out[gaps] = 0
    return out


def _hull_candidates(present: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Centres of the first and last present pixel of every row and column.

    Only these can be vertices of the convex hull, so the hull of millions of pixels is found
    from a few thousand points.
    """
    pts: list[NDArray[np.float64]] = []
    for axis in (0, 1):
        lines = present if axis == 0 else present.T
        idx = np.flatnonzero(lines.any(axis=1))
        if idx.size == 0:
            continue
        first = np.argmax(lines[idx], axis=1)
        last = lines.shape[1] - 1 - np.argmax(lines[idx][:, ::-1], axis=1)
        for other in (first, last):
            r, c = (idx, other) if axis == 0 else (other, idx)
            pts.append(np.stack([r, c], axis=1).astype(np.float64))
    return np.concatenate(pts) if pts else np.empty((0, 2))


def narrow_holes(present: NDArray[np.bool_], outline: NDArray[np.bool_],
                 width: int = GAP_HOLE_MAX_PX) -> NDArray[np.bool_]:
    """Pixels inside ``outline`` without data that lie in holes narrower than ``width`` px.

    A morphological closing of the present pixels by a ``width``-pixel square, with everything
    outside the outline counted as present, so that gaps running out to the scene's edge stay
    narrow holes. Wider holes keep the pixels farther than ``width // 2`` from the data out.
    """
    from scipy import ndimage

    solid = (present | ~outline).view(np.uint8)
    grown = ndimage.maximum_filter(solid, size=width, mode="constant", cval=1)
    closed = ndimage.minimum_filter(grown, size=width, mode="constant", cval=1)
    return closed.view(bool) & outline & ~present


def footprint_of(rgb: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """The scene footprint: the present pixels (non-zero in some band) and the holes among
    them narrow enough to be SLC-off gaps, within their filled convex hull.

    The hull runs through pixel centres, so it never reaches a pixel outside a convex scene
    outline; gap pixels on the outermost row of the footprint cannot be told from "no scene"
    and are left out (pass the footprint explicitly when it is known). Holes wider than
    ``GAP_HOLE_MAX_PX`` are missing imagery, not gaps: they stay outside the footprint, so the
    merge fills them from other scenes instead of having them restored.
    """
    from scipy.spatial import ConvexHull, QhullError  # ~0.5 s: only when a hull is needed
    from skimage.draw import polygon2mask

    present = np.any(rgb != 0, axis=2) if rgb.ndim == 3 else rgb != 0
    pts = _hull_candidates(present)
    if len(pts) == 0:
        return np.zeros(present.shape, dtype=bool)
    try:
        hull = ConvexHull(pts)
    except QhullError:  # degenerate (a line of pixels): the present pixels are the footprint
        return present.copy()
    poly = pts[hull.vertices]
    # Push the outline out by a hair so pixel centres lying exactly on it count as inside.
    centre = poly.mean(axis=0)
    outward = poly - centre
    poly = poly + 1e-6 * outward / np.linalg.norm(outward, axis=1, keepdims=True)
    hull = polygon2mask(present.shape, poly)
    return narrow_holes(present, hull) | present


def detect_gaps(
    rgb: NDArray[np.uint8], footprint: NDArray[np.bool_] | None = None
) -> NDArray[np.bool_]:
    """SLC-off gaps of an HWC scene inside the scene footprint: pixels zero in all bands, and
    pixels zero in some band within ``GAP_BAND_REACH_PX`` of those (band-specific gap edges;
    module docstring)."""
    if rgb.ndim != 3:
        raise ValueError(f"expected an HWC image, got shape {rgb.shape}")
    if footprint is None:
        footprint = footprint_of(rgb)
    elif footprint.shape != rgb.shape[:2]:
        raise ValueError(f"footprint {footprint.shape} and image {rgb.shape[:2]} differ in size")
    zero = rgb == 0
    core = np.all(zero, axis=2) & footprint
    partial = np.any(zero, axis=2) & footprint & ~core
    if not partial.any() or not core.any():
        return core
    from scipy import ndimage

    near = ndimage.maximum_filter(core.view(np.uint8), size=2 * GAP_BAND_REACH_PX + 1,
                                  mode="constant", cval=0)
    return core | (partial & near.view(bool))


def near_cloud(cloud: NDArray[np.bool_], reach: int = GAP_CLOUD_REACH_PX) -> NDArray[np.bool_]:
    """Pixels within ``reach`` px of a cloud pixel (cloud included), in a square neighbourhood.

    ``cloud & gaps`` misses the cloud lying across an SLC-off gap (no flag where no data); the
    gap pixels of ``near_cloud(cloud) & gaps`` are the ones restored from clouded imagery. A
    caller working by row strips passes ``reach`` rows of context on each side and crops them.
    """
    if reach < 0:
        raise ValueError(f"reach must be >= 0 px, got {reach}")
    cloud = np.asarray(cloud, bool)
    if reach == 0 or not cloud.any():
        return cloud.copy()
    from scipy import ndimage

    grown = ndimage.maximum_filter(cloud.view(np.uint8), size=2 * reach + 1, mode="constant",
                                   cval=0)
    return grown.view(bool)


def gap_fraction(gaps: NDArray[np.bool_], footprint: NDArray[np.bool_] | None = None) -> float:
    """Share of the footprint (default: the whole array) that is a gap."""
    if footprint is None:
        return float(gaps.mean()) if gaps.size else 0.0
    n = int(footprint.sum())
    return float((gaps & footprint).sum()) / n if n else 0.0
