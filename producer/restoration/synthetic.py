"""Synthetic ice-shelf-like RGB tiles: DiffGF training and evaluation data without downloads.

Used when no folder of complete Landsat tiles is given. Each tile is a deterministic function
of its seed: a bright, slightly blue ice surface with smooth illumination and flow-parallel
streaks, fields of thin parallel crevasses (dark shadow line with a bright lip), sometimes a
rift, open water with sea-ice floes beyond a wavy front, or a sharp-edged rock outcrop. These
are the structures an SLC-off gap cuts through in real Antarctic scenes.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import gaussian_filter, map_coordinates


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> NDArray[np.float64]:
    """Zero-mean, unit-std Gaussian-filtered noise."""
    n = gaussian_filter(rng.standard_normal((size, size)), sigma, mode="wrap")
    return (n - n.mean()) / (n.std() + 1e-9)


def _streaks(rng: np.random.Generator, size: int, angle: float) -> NDArray[np.float64]:
    """Flow texture: noise smoothed strongly along ``angle`` and little across it."""
    big = size * 2
    n = gaussian_filter(rng.standard_normal((big, big)), (0.8, 10.0), mode="wrap")
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) - size / 2
    c, s = np.cos(angle), np.sin(angle)
    rows = big / 2 + (-s * xx + c * yy)
    cols = big / 2 + (c * xx + s * yy)
    out = map_coordinates(n, [rows, cols], order=1, mode="wrap")
    return (out - out.mean()) / (out.std() + 1e-9)


def _blob(rng: np.random.Generator, size: int, scale: float, fill: float) -> NDArray[np.bool_]:
    """A random smooth-edged region covering about ``fill`` of the tile."""
    n = _smooth_noise(rng, size, scale)
    return n > np.quantile(n, 1.0 - fill)


def render_tile(seed: int, size: int = 256) -> NDArray[np.uint8]:
    """One synthetic complete RGB tile (HWC uint8), a pure function of ``seed``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    flow = rng.uniform(0, np.pi)
    base = rng.uniform(170, 225)
    lum = base + 10 * _smooth_noise(rng, size, size / 6) + rng.uniform(2, 6) * _streaks(
        rng, size, flow)
    # Crevasse fields: 1-3 patches of parallel thin lines, slightly bent.
    for _ in range(rng.integers(1, 4)):
        region = _blob(rng, size, size / 10, rng.uniform(0.1, 0.45))
        ang = flow + np.pi / 2 + rng.normal(0, 0.4)
        spacing = rng.uniform(5, 18)
        warp = 6 * _smooth_noise(rng, size, size / 8)
        d = (xx * np.cos(ang) + yy * np.sin(ang) + warp) / spacing
        frac = d - np.floor(d)
        width = rng.uniform(1.0, 2.5) / spacing
        shadow = region & (frac < width)
        lip = region & (frac >= width) & (frac < 2 * width)
        lum = np.where(shadow, lum - rng.uniform(50, 110), lum)
        lum = np.where(lip, lum + rng.uniform(5, 20), lum)
    if rng.random() < 0.3:  # a rift: a long wavy dark line a few pixels wide
        ang = rng.uniform(0, np.pi)
        off = rng.uniform(-size / 3, size / 3)
        d = -np.sin(ang) * (xx - size / 2) + np.cos(ang) * (yy - size / 2) - off
        d = d + 8 * _smooth_noise(rng, size, size / 5)
        lum = np.where(np.abs(d) < rng.uniform(1.5, 4), lum - rng.uniform(90, 140), lum)
    rgb = np.stack([lum - 6, lum - 2, lum + 3], axis=-1)
    if rng.random() < 0.3:  # ice front with open water and sea-ice floes beyond
        ang = rng.uniform(0, 2 * np.pi)
        d = np.cos(ang) * (xx - size / 2) + np.sin(ang) * (yy - size / 2) - rng.uniform(0, size / 3)
        d = d + 6 * _smooth_noise(rng, size, size / 12)
        water = d > 0
        floes = _blob(rng, size, 3, rng.uniform(0.05, 0.4)) & water
        sea = np.stack([np.full((size, size), v) for v in (18, 28, 45)], -1) + 4 * _smooth_noise(
            rng, size, 2)[..., None]
        rgb = np.where(water[..., None], sea, rgb)
        rgb = np.where(floes[..., None], rgb * 0 + rng.uniform(140, 200), rgb)
    if rng.random() < 0.2:  # rock outcrop: sharp-edged, dark brown
        rock = _blob(rng, size, rng.uniform(4, 10), rng.uniform(0.03, 0.15))
        tex = 10 * _smooth_noise(rng, size, 1.5)[..., None]
        rgb = np.where(rock[..., None], np.array([85.0, 70.0, 60.0]) + tex, rgb)
    rgb = rgb + rng.normal(0, 1.5, rgb.shape)
    # Keep data pixels non-zero: 0 in all bands means "no data" in Earth Engine exports.
    return np.clip(np.rint(rgb), 1, 255).astype(np.uint8)
