"""Training tiles for DiffGF: complete images and simulated SLC-off masks, drawn per step.

Kept free of torch so the worker processes that draw tiles ahead of a GPU start in a second
(they import numpy, scipy and the SLC-off geometry only). A step's tiles are a function of
(seed, step), so any number of workers gives the same run.
"""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from producer.restoration.synthetic import render_tile
from producer.slcoff import SWATH_WIDTH_PX, simulate_slc_off_mask

#: Synthetic tiles with seeds at or above this are held out (never drawn for training).
HELD_OUT_SEED_BASE = 10_000_000

StepArrays = tuple[NDArray[np.uint8], NDArray[np.bool_], int]
"""(tiles (B, crop, crop, 3) uint8, masks (B, crop, crop) bool, noise seed) of one step."""


class TileSettings(Protocol):
    """What drawing tiles needs of a training configuration."""

    batch: int
    crop: int
    data: str | None
    synthetic_pool: int


@dataclass(frozen=True)
class TileSpec:
    """The tile settings alone (cheap to send to worker processes)."""

    batch: int
    crop: int
    data: str | None
    synthetic_pool: int

    @classmethod
    def of(cls, settings: TileSettings) -> TileSpec:
        """The tile settings of a training configuration."""
        return cls(settings.batch, settings.crop, settings.data, settings.synthetic_pool)


def read_tile(path: Path) -> NDArray[np.uint8]:
    """A complete RGB tile (HWC uint8) from a 3-band GeoTIFF or an RGB PNG."""
    if path.suffix.lower() in (".tif", ".tiff"):
        import rasterio

        with rasterio.open(path) as ds:
            if ds.count < 3 or ds.dtypes[0] != "uint8":
                raise ValueError(f"{path}: expected 3 UInt8 bands, found {ds.count} "
                                 f"{ds.dtypes[0]}")
            return np.moveaxis(ds.read([1, 2, 3]), 0, -1)
    from skimage.io import imread

    img = imread(path)
    if img.ndim != 3 or img.shape[2] < 3 or img.dtype != np.uint8:
        raise ValueError(f"{path}: expected an RGB uint8 image, found {img.dtype} {img.shape}")
    return img[..., :3]


def list_tiles(folder: Path) -> list[Path]:
    """The image tiles of a data folder, sorted (so runs are reproducible)."""
    files = sorted(p for p in Path(folder).rglob("*")
                   if p.suffix.lower() in (".tif", ".tiff", ".png"))
    if not files:
        raise FileNotFoundError(f"{folder}: no .tif/.tiff/.png tiles found")
    return files


def random_mask(rng: np.random.Generator, size: int | tuple[int, int]) -> NDArray[np.bool_]:
    """An SLC-off mask for a tile of ``size`` (square side or shape): a random window of a real
    185 km swath, so the local gap width is anywhere from 0 to 14 px."""
    half = SWATH_WIDTH_PX / 2
    shape = (size, size) if isinstance(size, int) else size
    return simulate_slc_off_mask(
        shape, angle_deg=float(rng.uniform(-180, 180)), seed=int(rng.integers(2**31)),
        swath_half_width_px=half, centre_offset_px=float(rng.uniform(-half, half)),
    )


class TileSampler:
    """Draws the complete tiles of a step: random crops of folder tiles, or synthetic tiles."""

    def __init__(self, config: TileSettings) -> None:
        self.config = config
        self.files = list_tiles(Path(config.data)) if config.data else []
        self._cache: dict[Path, NDArray[np.uint8]] = {}

    def _file(self, path: Path) -> NDArray[np.uint8]:
        if path not in self._cache:
            self._cache[path] = read_tile(path)
        return self._cache[path]

    def draw(self, rng: np.random.Generator) -> NDArray[np.uint8]:
        """One complete ``crop``-sized tile."""
        size = self.config.crop
        if not self.files:
            return render_tile(int(rng.integers(self.config.synthetic_pool)), size)
        img = self._file(self.files[int(rng.integers(len(self.files)))])
        if img.shape[0] < size or img.shape[1] < size:
            raise ValueError(f"tile {img.shape[:2]} is smaller than the crop {size}")
        r = int(rng.integers(img.shape[0] - size + 1))
        c = int(rng.integers(img.shape[1] - size + 1))
        out = img[r:r + size, c:c + size]
        return np.rot90(out, int(rng.integers(4))).copy()


def step_arrays(sampler: TileSampler, seed: int, step: int) -> StepArrays:
    """The (tiles, masks, noise seed) of one step as plain arrays: a function of (seed, step),
    so worker processes can draw steps ahead in any order and the run stays reproducible."""
    rng = np.random.default_rng([seed, step])
    tiles = np.stack([sampler.draw(rng) for _ in range(sampler.config.batch)])
    masks = np.stack([random_mask(rng, sampler.config.crop) for _ in range(len(tiles))])
    return tiles, masks, int(rng.integers(2**62))


_WORKER_SAMPLER: TileSampler | None = None


def _worker_init(config: TileSpec) -> None:
    global _WORKER_SAMPLER
    _WORKER_SAMPLER = TileSampler(config)


def _worker_step(seed_step: tuple[int, int]) -> StepArrays:
    assert _WORKER_SAMPLER is not None
    return step_arrays(_WORKER_SAMPLER, *seed_step)


@contextmanager
def step_source(config: TileSettings, seed: int, first: int, total: int, workers: int
                ) -> Iterator[Iterator[StepArrays]]:
    """Step arrays of steps ``first`` … ``total - 1``, drawn in ``workers`` processes (0: here).

    Rendering synthetic tiles costs more CPU than a GPU step; workers keep the GPU fed. The
    order is the step order whatever the number of workers.
    """
    steps = ((seed, step) for step in range(first, total))
    if workers <= 0:
        sampler = TileSampler(config)
        yield (step_arrays(sampler, *pair) for pair in steps)
        return
    ctx = mp.get_context("spawn")
    with ctx.Pool(workers, initializer=_worker_init, initargs=(TileSpec.of(config),)) as pool:
        yield pool.imap(_worker_step, steps, chunksize=4)
