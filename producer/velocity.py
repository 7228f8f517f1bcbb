"""Ice speed on a shelf's grid, to choose the main scene of a merged year (paper 2.4.1).

When no scene covers the ROI cloud-free, the authors select first the scenes "with a relatively
high proportion of valid coverage and more complete coverage of rapidly flowing areas", judging
the flow with an ice-velocity product (Rignot et al., 2017: MEaSUREs InSAR-based Antarctic ice
velocity). ``produce --velocity FILE`` takes such a product and the merge then scores the main
scene by both (``producer.merge``): its usable share of the shelf region and its usable share of
the region's ice flow (each pixel weighted by its speed).

Accepted files (any CRS and resolution; read resampled bilinearly onto the 30 m grid):

- a single-band raster of speed (e.g. a GeoTIFF of MEaSUREs' magnitude);
- a two-band raster of the x and y velocity components (bands 1 and 2);
- a NetCDF file with ``VX`` and ``VY`` variables, as MEaSUREs distributes it
  (``antarctica_ice_velocity_450m_v2.nc``).

Only relative speeds matter (the flow share is a ratio), so the unit does not: m/yr or m/day
give the same choice. NoData, NaN and pixels the file does not cover weigh nothing.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioIOError
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from producer.grid import Grid

#: NetCDF variables of the x and y velocity components (MEaSUREs' names).
COMPONENT_VARIABLES = ("VX", "VY")
#: Reads the speed of rows r0:r1 of the grid (float32, 0 where unknown).
SpeedRows = Callable[[int, int], NDArray[np.float32]]


class VelocityError(ValueError):
    """A velocity file that cannot serve as ice speed; the message names the file and rule."""


@dataclass(frozen=True)
class VelocityLayout:
    """Where the speed lies in a velocity file: one speed band, or two component bands."""

    path: Path
    datasets: tuple[str, ...]
    """What rasterio opens: the file itself, or its VX and VY subdatasets."""
    bands: tuple[int, ...]
    """Band 1 (speed), or bands 1 and 2 (vx, vy) of a single dataset; (1,) per subdataset."""

    @property
    def components(self) -> bool:
        """Whether the file holds the vx, vy components rather than the speed."""
        return len(self.datasets) == 2 or len(self.bands) == 2


def velocity_layout(path: str | Path) -> VelocityLayout:
    """How to read the speed of ``path``, or VelocityError saying why it cannot be read."""
    path = Path(path)
    if not path.is_file():
        raise VelocityError(f"--velocity {path}: no such file (a speed raster, a vx/vy raster "
                            "or a MEaSUREs NetCDF with VX and VY)")
    try:
        with warnings.catch_warnings():  # a NetCDF container has no transform of its own
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                subdatasets, count = list(src.subdatasets), src.count
    except RasterioIOError as err:
        raise VelocityError(f"--velocity {path}: not a raster GDAL can read ({err})") from None
    if subdatasets:
        found = {name.rsplit(":", 1)[-1].upper(): name for name in subdatasets}
        missing = [v for v in COMPONENT_VARIABLES if v not in found]
        if missing:
            raise VelocityError(
                f"--velocity {path}: variables {sorted(found)} hold no "
                f"{' and '.join(missing)} (the velocity components, as MEaSUREs names them)")
        layout = VelocityLayout(path, tuple(found[v] for v in COMPONENT_VARIABLES), (1,))
    elif count in (1, 2):
        layout = VelocityLayout(path, (str(path),), tuple(range(1, count + 1)))
    else:
        raise VelocityError(f"--velocity {path}: {count} bands; give 1 (speed) or 2 (vx, vy)")
    for name in layout.datasets:
        with warnings.catch_warnings():  # the check below says so in words
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(name)
        with src:
            if src.crs is None or src.transform.is_identity:
                raise VelocityError(f"--velocity {name}: not georeferenced (no CRS or no "
                                    "transform); assign them, e.g. gdal_translate -a_srs "
                                    "EPSG:3031")
    return layout


def _warped(src: Any, grid: Grid) -> WarpedVRT:
    """The dataset resampled bilinearly onto the grid, NaN where it has no value."""
    return WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                     height=grid.height, resampling=Resampling.bilinear, dtype="float32",
                     nodata=np.nan)


def _finite(values: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.where(np.isfinite(values), values, np.float32(0))


@contextlib.contextmanager
def speed_on_grid(layout: VelocityLayout, grid: Grid) -> Iterator[SpeedRows]:
    """A reader of the speed on ``grid`` by rows (non-negative float32, 0 where unknown)."""
    with contextlib.ExitStack() as stack:
        warped = [stack.enter_context(_warped(stack.enter_context(rasterio.open(name)), grid))
                  for name in layout.datasets]

        def rows(r0: int, r1: int) -> NDArray[np.float32]:
            window = Window(0, r0, grid.width, r1 - r0)
            planes = [_finite(vrt.read(band, window=window))
                      for vrt in warped for band in layout.bands]
            if len(planes) == 2:
                return np.hypot(planes[0], planes[1]).astype(np.float32)
            return np.abs(planes[0])

        yield rows


def _same_crs(a: Any, b: Any) -> bool:
    """Whether two CRSs are the same (as rasterio compares them)."""
    from rasterio.crs import CRS

    return CRS.from_user_input(a) == CRS.from_user_input(b)


def components_on_grid(layout: VelocityLayout, grid: Grid
                       ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The velocity components (vx, vy: along the grid CRS's x and y axes, per year if the file
    gives m/yr) on ``grid``, resampled bilinearly, NaN where unknown.

    The components of a vector are along the axes of the CRS they were given in, so the file
    must be in the grid's CRS (MEaSUREs is: polar stereographic 71°S, EPSG:3031); a speed-only
    file cannot move anything. For coarse grids (the 900 m cells of the consistency
    assessment) whole arrays are small.
    """
    if not layout.components:
        raise VelocityError(f"--velocity {layout.path}: one band of speed; advecting damage "
                            "needs the velocity components (vx, vy bands, or VX and VY "
                            "variables)")
    planes: list[NDArray[np.float32]] = []
    for name in layout.datasets:
        with rasterio.open(name) as src:
            if not _same_crs(src.crs, grid.crs):
                raise VelocityError(
                    f"--velocity {name}: components in {src.crs}, not {grid.crs}; a vector's "
                    "components are along its CRS's axes, so give them in EPSG:3031 (as "
                    "MEaSUREs does)")
            with _warped(src, grid) as vrt:
                planes += [vrt.read(band) for band in layout.bands]
    return planes[0], planes[1]
