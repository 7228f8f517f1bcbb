"""The offline demo source: deterministic, rendered Landsat-like scenes with ground truth.

Nothing here is real imagery. The renderer draws what the damage model has to tell apart, so
the whole producer (selection, SLC-off restoration, segmentation, merging, extent clipping,
writing) runs offline and can be checked against a known answer:

* a bright ice-shelf surface with flow-parallel texture, bounded by grounded ice upstream and
  along both margins and by a wavy ice front downstream;
* crevasse fields: families of thin parallel lines (dark shadowed wall, bright lit wall),
  broken into segments, advected with the flow from year to year;
* rifts: long, wide, dark fractures that grow from a margin across the shelf over the years;
* heavily fractured zones: chaotic blocks and gaps behind the front and at the shear margins;
* open water and sea-ice floes beyond the front (the front advances and calves over the years);
* rock outcrops with sharp edges on the grounded ice (dark, high-contrast: false-positive bait);
* per date: illumination (gain, colour, across-scene gradient), clouds with offset shadows,
  partial footprints (an oblique swath edge), and for Landsat 7 summers from 2003 the real
  SLC-off gap geometry of ``producer.slcoff``.

SLC-off scenes, and where they differ from real ones
    The gaps follow ``producer.slcoff.simulate_slc_off_mask`` with a gap-free band of
    ``DEMO_GAP_FREE_CENTRE`` (20 %) of the swath around the centre line, as Level-1 products
    have (USGS), ~22 % missing overall, wedges widening to 14 px. A swath edge of an SLC-off
    scene runs along track, i.e. at right angles to the scan lines (the stripes), on a side
    picked per date; scenes of other sensors (no stripes to relate it to) keep a drawn edge
    orientation. Two simplifications are deliberate and stay:

    * scan angle: every shelf draws the scan direction from U(-20°, 20°) to the grid x axis,
      whereas in EPSG:3031 the real direction depends on where the shelf is and on the orbit
      (about -48° to 85° over the registered shelves; descending and ascending passes differ);
    * swath compression: the demo window (1024 px = 31 km by default) stands for a whole
      185 km swath, so gaps widen from nothing to 14 px across half the window instead of
      across 3,084 px (about 6 times faster), and a swath edge cut into the window is not where
      the real widest gaps would be.

The damage geometry of a shelf-year depends only on (shelf, year), so every scene of a summer
shows the same damage and merged predictions are consistent; it evolves slowly across years.
Everything depends only on (shelf, year, date) through stable SHA-256-derived seeds, so scenes
are byte-identical across runs and machines.

Demo window
    The scenes do not cover a shelf's whole ROI (thousands of pixels a side): they cover a
    ``size`` x ``size`` window (default 1024 px = 30.72 km at 30 m) centred on the ROI's centre
    and aligned to the 30 m grid, so ``produce --source demo`` stays fast. ``grid()`` returns it;
    products made from it cover that window only. The demo shelf's effective extent (floating
    ice between grounding line and front) is offered by ``extent()``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio import features
from scipy import ndimage
from shapely.geometry import shape
from shapely.geometry.base import BaseGeometry
from shapely.ops import unary_union
from skimage.draw import polygon as draw_polygon

from producer.grid import Grid
from producer.slcoff import DEMO_GAP_FREE_CENTRE, simulate_slc_off_mask
from producer.sources.base import FOOTPRINT_KEY, Scene
from producer.spec import ENCODING, SENSOR_ORDER, SENSORS, summer_window

#: Default demo window, pixels a side (30 m pixels).
DEFAULT_DEMO_SIZE = 1024
#: Environment variable that overrides the default window size (tests, quick looks).
DEMO_SIZE_ENV = "ICEDAMAGE_DEMO_SIZE"
#: Years the demo geometry is anchored to (advection and rift growth are measured from it).
BASE_YEAR = 2000
#: Zone codes of the layout.
GROUNDED, SHELF, OCEAN = 0, 1, 2


def stable_seed(*keys: object) -> int:
    """A 63-bit seed from the keys' text, identical on every machine and run."""
    digest = hashlib.sha256("|".join(str(k) for k in keys).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _rng(*keys: object) -> np.random.Generator:
    return np.random.default_rng(stable_seed(*keys))


def _noise_step(finest: float) -> int:
    """Subsampling step at which a field whose finest features are ``finest`` px is evaluated."""
    return 4 if finest >= 16 else 2 if finest >= 8 else 1


def _upsample(field: NDArray[np.float32], shape: tuple[int, int]) -> NDArray[np.float32]:
    """Bilinear interpolation of a subsampled field back to ``shape``."""
    if field.shape == shape:
        return field
    return ndimage.zoom(field, (shape[0] / field.shape[0], shape[1] / field.shape[1]), order=1,
                        grid_mode=True, mode="nearest")


def _lattice_sample(rng: np.random.Generator, rows: NDArray, cols: NDArray, scale: float,
                    stretch: tuple[float, float]) -> NDArray[np.float32]:
    """One octave of value noise at the given (possibly subsampled) coordinates."""
    lattice = rng.uniform(-1.0, 1.0, size=(128, 128)).astype(np.float32)
    r = rows / (scale * stretch[0])
    c = cols / (scale * stretch[1])
    out = ndimage.map_coordinates(lattice, [r.ravel(), c.ravel()], order=1, mode="grid-wrap")
    return out.reshape(r.shape)


def noise_where(rng: np.random.Generator, mask: NDArray[np.bool_], scale: float,
                octaves: int = 2, coords: tuple[NDArray, NDArray] | None = None,
                stretch: tuple[float, float] = (1.0, 1.0)) -> NDArray[np.float32]:
    """Fine value noise evaluated only where ``mask`` is True (0 elsewhere): fine detail such as
    segment breaks or rock streaks is needed on few pixels, so this saves most of the work."""
    out = np.zeros(mask.shape, np.float32)
    if not mask.any():
        for _ in range(octaves):  # keep the generator's state independent of the mask
            rng.uniform(-1.0, 1.0, size=(128, 128))
        return out
    if coords is None:
        rows, cols = np.nonzero(mask)
        rows, cols = rows.astype(np.float32), cols.astype(np.float32)
    else:
        rows, cols = coords[0][mask], coords[1][mask]
    total = np.zeros(rows.shape, np.float32)
    norm = 0.0
    for k in range(octaves):
        amp = 0.5**k
        total += amp * _lattice_sample(rng, rows, cols, scale / 2**k, stretch)
        norm += amp
    out[mask] = np.clip(total / norm, -1.0, 1.0)
    return out


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], scale: float,
                  octaves: int = 3, coords: tuple[NDArray, NDArray] | None = None,
                  stretch: tuple[float, float] = (1.0, 1.0)) -> NDArray[np.float32]:
    """Smooth random field in about [-1, 1]: ``octaves`` value-noise fields halving in scale.

    Features are ~``scale`` px (stretched per axis by ``stretch``); ``coords`` (row-like,
    column-like arrays in px) evaluates the field in another frame, e.g. along/across flow, for
    anisotropic texture. Coarse octaves are evaluated on a subsampled grid and interpolated back
    (identical to the eye, many times faster).
    """
    if coords is None:
        rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    else:
        rows, cols = coords
    sums: dict[int, NDArray[np.float32]] = {}
    norm = 0.0
    for k in range(octaves):
        amp = 0.5**k
        octave_scale = scale / 2**k
        step = _noise_step(octave_scale * min(stretch))
        part = amp * _lattice_sample(rng, rows[::step, ::step], cols[::step, ::step],
                                     octave_scale, stretch)
        sums[step] = sums[step] + part if step in sums else part
        norm += amp
    total = sum(_upsample(part, shape) for part in sums.values())
    return np.clip(total / norm, -1.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Shelf-year layout: zones and damage (fixed for a summer, slowly evolving across years)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """The ground of one shelf-year on a square window: zones, damage and surface texture."""

    zone: NDArray[np.uint8]
    """GROUNDED, SHELF or OCEAN per pixel."""
    damage: NDArray[np.bool_]
    """Ground truth: crevasses, rifts and heavily fractured zones."""
    crevasse_dark: NDArray[np.float32]
    """Darkening (0-1) of crevasse walls, rifts and fracture gaps."""
    crevasse_bright: NDArray[np.float32]
    """Brightening (0-1) of sunlit crevasse walls and fracture-block edges."""
    rock: NDArray[np.bool_]
    """Rock outcrops (never damage)."""
    texture: NDArray[np.float32]
    """Flow-parallel surface texture in about [-1, 1]."""
    along: NDArray[np.float32]
    """Along-flow coordinate (px) of each pixel, for sea-ice drift."""

    @property
    def extent_mask(self) -> NDArray[np.bool_]:
        """The floating shelf (the effective extent of the demo shelf-year)."""
        return floating_ice(self.zone)


def floating_ice(zone: NDArray[np.uint8]) -> NDArray[np.bool_]:
    """The floating shelf of a zone map: the demo shelf-year's effective extent."""
    return zone == SHELF


def _flow_frame(size: int, angle: float) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(along, across) flow coordinates in px, origin at the window centre."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    y = rows - (size - 1) / 2.0
    x = cols - (size - 1) / 2.0
    along = x * np.cos(angle) + y * np.sin(angle)
    across = -x * np.sin(angle) + y * np.cos(angle)
    return along.astype(np.float32), across.astype(np.float32)


def _front_position(key: str, year: int, size: int) -> float:
    """Along-flow front position: advances every year, calves back every few years."""
    rng = _rng(key, "front")
    speed = rng.uniform(0.012, 0.022) * size  # px per year
    cycle = int(rng.integers(6, 11))
    phase = int(rng.integers(0, cycle))
    base = 0.12 * size
    return float(base + speed * ((year - BASE_YEAR + phase) % cycle) - speed * cycle / 2)


def _line_family(along: NDArray, across: NDArray, angle: float, spacing: float, width: float,
                 warp: NDArray, shift: float) -> tuple[NDArray, NDArray, NDArray]:
    """Thin parallel lines: (core mask, dark wall weight, bright wall weight)."""
    u = along * np.cos(angle) + across * np.sin(angle) + warp - shift
    d = (np.mod(u, spacing) - spacing / 2.0).astype(np.float32)  # signed distance to line centre
    core = np.abs(d) < width / 2.0
    dark = np.clip(1.0 - np.abs(d) / (width / 2.0 + 0.6), 0.0, 1.0)
    bright = np.clip(1.0 - np.abs(d - (width / 2.0 + 0.8)) / 0.9, 0.0, 1.0)
    return core, dark, bright


@dataclass(frozen=True)
class Zones:
    """The zones of a shelf-year and the flow frame they are drawn in (the first step of a
    layout, cheap on its own: the extent needs nothing else)."""

    zone: NDArray[np.uint8]
    along: NDArray[np.float32]
    across: NDArray[np.float32]
    half_width: NDArray[np.float32]
    front: NDArray[np.float32]
    speed: float
    """Surface advection, px per year."""

    @property
    def extent_mask(self) -> NDArray[np.bool_]:
        """The floating shelf, as ``Layout.extent_mask``."""
        return floating_ice(self.zone)


def _layout_rng(key: str, size: int) -> tuple[np.random.Generator, float, float]:
    """A fresh layout generator after its first draws: flow angle and advection (px/year)."""
    rng = _rng(key, "layout")
    angle = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.004, 0.012) * size  # px per year of surface advection
    return rng, float(angle), float(speed)


def build_zones(key: str, year: int, size: int) -> Zones:
    """Grounded ice upstream and beyond both margins, floating shelf, ocean beyond the front."""
    _, angle, speed = _layout_rng(key, size)
    along, across = _flow_frame(size, angle)
    shape_ = (size, size)
    wig = fractal_noise(_rng(key, "margins"), shape_, 0.25 * size, 2, (along, across))
    half_width = 0.36 * size * (1.0 + 0.12 * wig)
    grounding = -0.38 * size + 0.05 * size * wig
    front = _front_position(key, year, size) + 0.04 * size * fractal_noise(
        _rng(key, "front-shape", year), shape_, 0.1 * size, 3, (along, across))
    zone = np.full(shape_, GROUNDED, np.uint8)
    channel = np.abs(across) < half_width
    zone[channel & (along >= grounding)] = SHELF
    zone[along >= front] = OCEAN
    return Zones(zone, along, across, half_width, front, speed)


def build_layout(key: str, year: int, size: int) -> Layout:
    """The zones and damage of the shelf ``key`` in the summer ``year`` on a size² window."""
    zones = build_zones(key, year, size)
    zone, along, across = zones.zone, zones.along, zones.across
    half_width, front, speed = zones.half_width, zones.front, zones.speed
    rng = _layout_rng(key, size)[0]  # the damage's draws follow the flow frame's
    t = year - BASE_YEAR
    shape_ = (size, size)
    shelf = zone == SHELF

    damage = np.zeros(shape_, bool)
    dark = np.zeros(shape_, np.float32)
    bright = np.zeros(shape_, np.float32)

    # Crevasse fields: shear-margin (oblique), grounding-zone (transverse), frontal (transverse).
    n_fields = int(rng.integers(3, 6))
    for k in range(n_fields):
        frng = _rng(key, "field", k)
        kind = frng.choice(["margin", "grounding", "front"])
        side = frng.choice([-1.0, 1.0])
        if kind == "margin":
            c_along = frng.uniform(-0.25, 0.2) * size
            c_across = side * 0.27 * size
            line_angle = side * frng.uniform(0.6, 0.9)
            radii = (frng.uniform(0.12, 0.22) * size, 0.07 * size)
        elif kind == "grounding":
            c_along = -0.3 * size
            c_across = frng.uniform(-0.2, 0.2) * size
            line_angle = frng.uniform(-0.25, 0.25)
            radii = (0.07 * size, frng.uniform(0.1, 0.2) * size)
        else:
            c_along = 0.0
            c_across = frng.uniform(-0.2, 0.2) * size
            line_angle = frng.uniform(-0.35, 0.35)
            radii = (0.1 * size, frng.uniform(0.1, 0.18) * size)
        env = ((along - c_along) / radii[0]) ** 2 + ((across - c_across) / radii[1]) ** 2
        env = env + 0.4 * fractal_noise(frng, shape_, 0.08 * size, 2)
        grow = 1.0 + 0.01 * t * frng.uniform(0.0, 1.0)  # fields widen slowly
        inside = (env < grow) & shelf
        spacing = frng.uniform(9.0, 18.0)
        width = frng.uniform(1.4, 2.6)
        warp = 6.0 * fractal_noise(frng, shape_, 0.15 * size, 2)
        core, d, b = _line_family(along, across, line_angle, spacing, width, warp, speed * t)
        segments = noise_where(_rng(key, "segments", k), inside, 12.0, 2,
                               (along - speed * t, across), (3.0, 0.6)) > -0.15
        sel = inside & segments
        damage |= core & sel
        dark = np.maximum(dark, d * sel)
        bright = np.maximum(bright, b * sel)

    # Rifts: wide dark fractures growing from a margin across the shelf, advected with the flow.
    for k in range(int(rng.integers(1, 4))):
        rrng = _rng(key, "rift", k)
        start_year = int(rrng.integers(1995, 2018))
        if year < start_year:
            continue
        age = year - start_year
        side = rrng.choice([-1.0, 1.0])
        r_along = rrng.uniform(-0.25, 0.05) * size + speed * t
        length = min(0.12 * size + 0.03 * size * age, 0.65 * size)
        curve = r_along + 0.04 * size * fractal_noise(rrng, shape_, 0.2 * size, 2)
        width = rrng.uniform(2.5, 6.0) * (1.0 - 0.5 * np.abs(across) / size)
        reach = side * across > (0.36 * size - length)
        rift = (np.abs(along - curve) < width / 2.0) & reach & shelf
        damage |= rift
        dark = np.maximum(dark, rift.astype(np.float32) * 0.95)

    # Heavily fractured zone behind the front (grows slowly) and at one shear margin.
    depth = (0.05 + 0.002 * (t % 25)) * size
    zrng = _rng(key, "fractured")
    blobs = fractal_noise(zrng, shape_, 0.06 * size, 3) > -0.1
    fractured = shelf & (along > front - depth) & blobs
    side = zrng.choice([-1.0, 1.0])
    fractured |= shelf & (side * across > half_width - 0.025 * size) & (along > 0)
    cells = noise_where(_rng(key, "blocks", year), fractured, 5.0, 2)
    gaps = (np.abs(cells) < 0.18) & fractured
    damage |= fractured
    dark = np.maximum(dark, (fractured & gaps).astype(np.float32) * 0.85)
    bright = np.maximum(bright, (fractured & (cells > 0.55)).astype(np.float32) * 0.6)

    # Rock outcrops: sharp-edged dark polygons on grounded ice only.
    rock = np.zeros(shape_, bool)
    grounded_px = np.argwhere(zone == GROUNDED)
    if len(grounded_px):
        orng = _rng(key, "rocks")
        for _ in range(int(orng.integers(4, 9))):
            cy, cx = grounded_px[orng.integers(len(grounded_px))]
            n = int(orng.integers(5, 9))
            ang = np.sort(orng.uniform(0, 2 * np.pi, n))
            rad = orng.uniform(0.01, 0.05) * size * orng.uniform(0.5, 1.0, n)
            rr, cc = draw_polygon(cy + rad * np.sin(ang), cx + rad * np.cos(ang), shape_)
            rock[rr, cc] = True
        rock &= zone == GROUNDED

    texture = fractal_noise(_rng(key, "texture"), shape_, 0.05 * size, 4,
                            (along - speed * t, across), (6.0, 0.5))
    damage &= ~rock
    damage &= zone == SHELF
    return Layout(zone, damage, dark, bright, rock, texture, along)



# ---------------------------------------------------------------------------------------------
# One scene: illumination, surface, clouds, footprint, SLC-off gaps
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SceneConditions:
    """What differs between the dates of one summer."""

    gain: float
    tint: tuple[float, float, float]
    gradient: float
    gradient_angle: float
    cloud_cover: float
    """Target share of the window under cloud (0 = clear)."""
    footprint_cut: float | None
    """Share of the window outside an oblique swath edge (None = full footprint)."""
    footprint_angle: float
    sea_ice: float
    slc_off: bool
    slc_angle: float


@dataclass(frozen=True)
class RenderedScene:
    """A rendered scene with its ground truth and masks."""

    rgb: NDArray[np.uint8]
    """HWC uint8; 0 in all bands outside the footprint and in SLC-off gaps."""
    label: NDArray[np.bool_]
    """Damage ground truth (the shelf-year's, whatever the clouds)."""
    cloud: NDArray[np.bool_]
    """Cloud or cloud shadow."""
    footprint: NDArray[np.bool_]
    gaps: NDArray[np.bool_]


def _colourise(layout: Layout, cond: SceneConditions, rng: np.random.Generator,
               date_key: str) -> NDArray[np.float32]:
    """Surface reflectance (HWC float, 0-255) of the ground before clouds."""
    size = layout.zone.shape[0]
    shape_ = layout.zone.shape
    ice = np.array([208.0, 217.0, 232.0], np.float32)
    snow = np.array([222.0, 228.0, 238.0], np.float32)
    water = np.array([18.0, 30.0, 48.0], np.float32)
    rock_c = np.array([70.0, 62.0, 58.0], np.float32)
    base = np.where((layout.zone == SHELF)[..., None], ice, snow)
    img = base + (14.0 * layout.texture)[..., None]
    # Crevasses: shadowed wall dark, sunlit wall bright.
    img = img * (1.0 - 0.62 * layout.crevasse_dark)[..., None]
    img = img + (28.0 * layout.crevasse_bright)[..., None]
    # Ocean with drifting sea-ice floes.
    floes = fractal_noise(_rng(date_key, "floes"), shape_, 0.04 * size, 3) > (0.55 - cond.sea_ice)
    ocean = layout.zone == OCEAN
    sea = np.where(floes[..., None], np.array([160.0, 172.0, 190.0], np.float32), water)
    sea = sea + (6.0 * fractal_noise(rng, shape_, 20.0, 2))[..., None]
    img = np.where(ocean[..., None], sea, img)
    # Rock with sharp edges, dark streaks and snow patches.
    streak = noise_where(_rng(date_key, "rock"), layout.rock, 4.0, 2)
    rock_img = rock_c + (30.0 * streak)[..., None]
    rock_img = np.where((streak > 0.6)[..., None], snow, rock_img)
    img = np.where(layout.rock[..., None], rock_img, img)
    return img.astype(np.float32)


def _illuminate(img: NDArray[np.float32], cond: SceneConditions) -> NDArray[np.float32]:
    """Date-dependent gain, colour tint and across-scene gradient."""
    size = img.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32) / max(size - 1, 1) - 0.5
    ramp = rows * np.sin(cond.gradient_angle) + cols * np.cos(cond.gradient_angle)
    factor = cond.gain * (1.0 + cond.gradient * ramp)
    return img * factor[..., None] * np.asarray(cond.tint, np.float32)


def _clouds(rng: np.random.Generator, shape_: tuple[int, int], cover: float
            ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """(cloud opacity, shadow strength) fields in [0, 1] covering about ``cover`` of the window."""
    if cover <= 0:
        zero = np.zeros(shape_, np.float32)
        return zero, zero
    field = fractal_noise(rng, shape_, 0.25 * shape_[0], 4)
    threshold = float(np.quantile(field, 1.0 - cover))
    opacity = np.clip((field - threshold) / 0.08, 0.0, 1.0).astype(np.float32)
    dy, dx = (int(v) for v in rng.integers(-0.05 * shape_[0] - 1, 0.05 * shape_[0] + 1, 2))
    shadow = np.roll(opacity, (dy, dx), axis=(0, 1)) * (1.0 - opacity)
    return opacity, shadow.astype(np.float32)


def _footprint(shape_: tuple[int, int], cut: float | None, angle: float) -> NDArray[np.bool_]:
    """Inside an oblique swath edge that leaves ``cut`` of the window outside."""
    if cut is None:
        return np.ones(shape_, bool)
    rows, cols = np.mgrid[0:shape_[0], 0:shape_[1]].astype(np.float32)
    proj = cols * np.cos(angle) + rows * np.sin(angle)
    return proj >= np.quantile(proj, cut)


def render_scene(layout: Layout, cond: SceneConditions, date_key: str) -> RenderedScene:
    """One scene of a shelf-year under the given conditions (pure; deterministic in the keys)."""
    shape_ = layout.zone.shape
    rng = _rng(date_key, "scene")
    img = _illuminate(_colourise(layout, cond, rng, date_key), cond)
    opacity, shadow = _clouds(_rng(date_key, "clouds"), shape_, cond.cloud_cover)
    cloud_rgb = np.array([236.0, 238.0, 244.0], np.float32)
    img = img * (1.0 - 0.55 * shadow)[..., None]
    img = img * (1.0 - opacity)[..., None] + cloud_rgb * opacity[..., None]
    img = img + rng.normal(0.0, 1.6, img.shape).astype(np.float32)
    rgb = np.clip(np.rint(img), 1, 255).astype(np.uint8)  # 0 is reserved for no data
    footprint = _footprint(shape_, cond.footprint_cut, cond.footprint_angle)
    gaps = np.zeros(shape_, bool)
    if cond.slc_off:
        gaps = simulate_slc_off_mask(shape_, angle_deg=cond.slc_angle,
                                     seed=stable_seed(date_key, "slc"),
                                     gap_free_centre=DEMO_GAP_FREE_CENTRE) & footprint
    rgb[~footprint | gaps] = 0
    cloud = ((opacity > 0.2) | (shadow > 0.2)) & footprint
    return RenderedScene(rgb, layout.damage.copy(), cloud, footprint, gaps)


# ---------------------------------------------------------------------------------------------
# A summer of scenes
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedScene:
    """One date of a demo summer with its sensor and conditions."""

    scene_id: str
    sensor: str
    acquired: dt.date
    conditions: SceneConditions


def _sensors_on(day: dt.date, year: int) -> list[str]:
    """Sensors that may image the summer ``year`` on ``day`` (LC08 from March 2013, LC09 from
    November 2021)."""
    tokens = [t for t in SENSOR_ORDER if SENSORS[t].covers(year)]
    if "LC08" in tokens and day < dt.date(2013, 3, 18):
        tokens.remove("LC08")
    if "LC09" in tokens and day < dt.date(2021, 10, 31):
        tokens.remove("LC09")
    return tokens


def plan_summer(shelf: str, year: int) -> list[PlannedScene]:
    """The demo scenes of a shelf's summer, ordered by acquisition date (3-5 dates).

    Every summer mixes clear and cloudy dates and partial footprints; a seeded fifth of the
    summers have no full clear scene, so the map must be merged from several. In the summer
    under way, only the dates up to today have scenes (no satellite images the future).
    """
    rng = _rng(shelf, year, "summer")
    start, end = summer_window(year)
    days = (end - start).days
    n = int(rng.integers(3, 6))
    offsets = np.sort(rng.choice(np.arange(0, days + 1), size=n, replace=False))
    clear_index = int(rng.integers(n)) if rng.uniform() > 0.2 else -1
    plans: list[PlannedScene] = []
    today = dt.date.today()
    for i, off in enumerate(offsets):
        day = start + dt.timedelta(days=int(off))
        tokens = _sensors_on(day, year)
        if not tokens or day > today:
            continue
        sensor = tokens[int(rng.integers(len(tokens)))]
        srng = _rng(shelf, year, day.isoformat(), "conditions")
        clear = i == clear_index
        month_light = 1.0 - 0.12 * abs((day - dt.date(day.year if day.month > 6 else day.year - 1,
                                                       12, 21)).days) / 100.0
        cond = SceneConditions(
            gain=float(month_light * srng.uniform(0.82, 1.04)),
            tint=tuple(float(v) for v in srng.uniform(0.95, 1.03, 3)),
            gradient=float(srng.uniform(0.0, 0.25)),
            gradient_angle=float(srng.uniform(0, 2 * np.pi)),
            cloud_cover=0.0 if clear else float(srng.choice([0.0, 0.1, 0.25, 0.45, 0.7])),
            footprint_cut=None if clear or srng.uniform() < 0.5 else float(
                srng.uniform(0.1, 0.45)),
            footprint_angle=float(srng.uniform(0, 2 * np.pi)),
            sea_ice=float(srng.uniform(0.0, 0.5) * (1.0 if day.month in (11, 12) else 0.4)),
            slc_off=SENSORS[sensor].slc_off_in(year),
            slc_angle=float(srng.uniform(-20.0, 20.0)),
        )
        if cond.slc_off:
            cond = replace(cond, footprint_angle=along_track_edge(cond.footprint_angle,
                                                                  cond.slc_angle))
        scene_id = f"DEMO_{sensor}_{shelf.replace(' ', '')}_{day:%Y%m%d}"
        plans.append(PlannedScene(scene_id, sensor, day, cond))
    return plans


def along_track_edge(drawn: float, scan_angle_deg: float) -> float:
    """The ``footprint_angle`` of a swath edge running along track: its normal is the scan
    direction ``scan_angle_deg`` (``producer.slcoff``'s angle, counter-clockwise as displayed,
    rows down). ``drawn`` (radians in [0, 2π), the angle drawn for the date) picks the side the
    scene lies on."""
    side = np.pi if drawn >= np.pi else 0.0
    return float(np.mod(side - np.deg2rad(scan_angle_deg), 2 * np.pi))


def render_planned(shelf: str, year: int, plan: PlannedScene, size: int,
                   layout: Layout | None = None) -> RenderedScene:
    """Render one planned scene of a shelf-year on a size² window."""
    layout = layout or build_layout(shelf, year, size)
    return render_scene(layout, plan.conditions, f"{shelf}|{year}|{plan.acquired}|{size}")


def render_training_tile(seed: int, size: int = 512) -> tuple[NDArray[np.uint8],
                                                              NDArray[np.uint8]]:
    """A (rgb HWC uint8, label 0/1 uint8) training pair from an invented shelf.

    Every seed invents its own shelf geometry, year and light; clouds are thin or absent and
    there are no SLC-off gaps or footprint edges, as the paper trains on clean imagery.
    """
    rng = _rng("train", seed)
    key = f"train-{seed}"
    year = int(rng.integers(1999, 2025))
    layout = build_layout(key, year, size)
    cond = SceneConditions(
        gain=float(rng.uniform(0.75, 1.05)),
        tint=tuple(float(v) for v in rng.uniform(0.94, 1.04, 3)),
        gradient=float(rng.uniform(0.0, 0.3)),
        gradient_angle=float(rng.uniform(0, 2 * np.pi)),
        cloud_cover=float(rng.choice([0.0, 0.0, 0.05, 0.1])),
        footprint_cut=None,
        footprint_angle=0.0,
        sea_ice=float(rng.uniform(0.0, 0.5)),
        slc_off=False,
        slc_angle=0.0,
    )
    scene = render_scene(layout, cond, f"{key}|tile")
    return scene.rgb, scene.label.astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# The SceneSource
# ---------------------------------------------------------------------------------------------


def demo_size_default() -> int:
    """The demo window size: ``$ICEDAMAGE_DEMO_SIZE`` if set, else DEFAULT_DEMO_SIZE."""
    text = os.environ.get(DEMO_SIZE_ENV)
    if not text:
        return DEFAULT_DEMO_SIZE
    value = int(text)
    if value < 64:
        raise ValueError(f"{DEMO_SIZE_ENV}={text}: the demo window needs at least 64 px a side")
    return value


def _write_rgb(path: Path, rgb: NDArray[np.uint8], grid: Grid) -> None:
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 3, "width": grid.width,
               "height": grid.height, "crs": grid.crs, "transform": grid.transform,
               "compress": "lzw", "tiled": True, "blockxsize": 256, "blockysize": 256}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.moveaxis(rgb, 2, 0))


def _write_mask(path: Path, mask: NDArray[np.bool_], grid: Grid) -> None:
    profile = {"driver": "GTiff", "dtype": "uint8", "count": 1, "width": grid.width,
               "height": grid.height, "crs": grid.crs, "transform": grid.transform,
               "compress": "lzw"}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(mask.astype(np.uint8), 1)


class DemoSource:
    """Rendered demo scenes of a window of the shelf's ROI (see the module docstring)."""

    name = "demo"

    def __init__(self, size: int | None = None) -> None:
        self.size = demo_size_default() if size is None else int(size)
        if self.size < 64:
            raise ValueError(f"demo window size {self.size} px is too small (minimum 64)")
        self._layouts: dict[tuple[str, int], Layout] = {}

    def grid(self, shelf: str, roi: BaseGeometry) -> Grid:
        """A size² window of 30 m pixels centred on the ROI's centroid, aligned to 30 m."""
        res = ENCODING.resolution
        centre = roi.centroid
        half = self.size * res / 2.0
        x0 = round((centre.x - half) / res) * res
        y0 = round((centre.y - half) / res) * res
        return Grid.from_bounds(x0, y0, x0 + self.size * res, y0 + self.size * res)

    def _check_grid(self, grid: Grid) -> None:
        if grid.shape != (self.size, self.size):
            raise ValueError(f"demo scenes are {self.size}² px; grid is {grid.shape}")

    def layout(self, shelf: str, year: int) -> Layout:
        """The shelf-year's ground (zones and ground truth) on the demo window (cached: the
        extent and the scenes of a year share it)."""
        key = (shelf, year)
        if key not in self._layouts:
            self._layouts = {key: build_layout(shelf, year, self.size)}
        return self._layouts[key]

    def extent(self, shelf: str, year: int, grid: Grid) -> BaseGeometry:
        """The demo shelf-year's floating ice (grounding line to front) as a polygon."""
        self._check_grid(grid)
        # The zones alone give the extent (a re-run skips on the digest without a full layout).
        ground = self._layouts.get((shelf, year)) or build_zones(shelf, year, self.size)
        mask = ground.extent_mask
        polys = [shape(geom) for geom, value in features.shapes(
            mask.astype(np.uint8), mask=mask, transform=grid.transform) if value == 1]
        return unary_union(polys)

    def scene_ids(self, shelf: str, year: int, grid: Grid) -> list[str]:
        """Ids of the summer's scenes without rendering them (lets re-runs skip cheaply)."""
        self._check_grid(grid)
        return [plan.scene_id for plan in plan_summer(shelf, year)]

    def scenes(self, shelf: str, year: int, grid: Grid, workdir: Path) -> list[Scene]:
        """Render the summer's scenes under ``workdir``; best (most usable pixels) first."""
        self._check_grid(grid)
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        layout = self.layout(shelf, year)
        out: list[Scene] = []
        for plan in plan_summer(shelf, year):
            scene = render_planned(shelf, year, plan, self.size, layout)
            path = workdir / f"{plan.scene_id}.tif"
            cloud_path = workdir / f"{plan.scene_id}_cloud.tif"
            footprint_path = workdir / f"{plan.scene_id}_footprint.tif"
            _write_rgb(path, scene.rgb, grid)
            _write_mask(cloud_path, scene.cloud, grid)
            _write_mask(footprint_path, scene.footprint, grid)
            usable = (scene.footprint & ~scene.cloud).mean()
            out.append(Scene(
                scene_id=plan.scene_id, sensor=plan.sensor, acquired=plan.acquired, path=path,
                valid_fraction=float(usable), cloud_mask_path=cloud_path,
                metadata={"demo": True, FOOTPRINT_KEY: footprint_path,
                          "cloud_fraction": float(scene.cloud.mean()),
                          "gap_fraction": float(scene.gaps.mean()),
                          "footprint_fraction": float(scene.footprint.mean())},
            ))
        out.sort(key=lambda s: (-s.valid_fraction, s.acquired))
        return out
