"""Ice speed on a shelf's grid, to choose the main scene of a merged year (paper 2.4.1).

When no scene covers the ROI cloud-free, the authors select first the scenes "with a relatively
high proportion of valid coverage and more complete coverage of rapidly flowing areas", judging
the flow with an ice-velocity product (Rignot et al., 2017: MEaSUREs InSAR-based Antarctic ice
velocity). ``produce --velocity FILE`` takes such a product and the merge then scores the main
scene by both (``producer.merge``): its usable share of the shelf region and its usable share of
the region's ice flow (each pixel weighted by its speed).

Accepted files (any CRS and resolution; read resampled bilinearly onto the 30 m grid):

- a single-band raster of speed (e.g. a GeoTIFF of MEaSUREs' magnitude); it cannot hold
  negative values (an undeclared NoData such as -9999, or a lone vx band, is refused, not
  taken as fast ice);
- a two-band raster of the x and y velocity components (bands 1 and 2);
- a NetCDF file with ``VX`` and ``VY`` variables, as MEaSUREs distributes it
  (``antarctica_ice_velocity_450m_v2.nc``), or without them a speed variable ``V`` (ITS_LIVE
  mosaics, speed-only MEaSUREs products); names in either case;
- one variable of a NetCDF in GDAL's subdataset syntax, ``NETCDF:"file.nc":v``.

Only relative speeds matter (the flow share is a ratio), so the unit does not: m/yr or m/day
give the same choice. NoData, NaN and pixels the file does not cover weigh nothing.

A damaged file (e.g. a download cut short) is refused with its name before any year is
planned where GDAL shows it (a geotransform that cannot be inverted, a corner pixel that cannot
be read), and any GDAL error while reading later is a ``VelocityError`` naming the file.
"""

from __future__ import annotations

import contextlib
import math
import re
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from pyproj import CRS as ProjCRS
from rasterio._err import CPLE_BaseError  # GDAL's errors; rasterio.errors does not export it
from rasterio.enums import Resampling
from rasterio.errors import NotGeoreferencedWarning, RasterioError
from rasterio.io import DatasetReader
from rasterio.vrt import WarpedVRT
from rasterio.windows import Window

from producer.grid import Grid

#: NetCDF variables of the x and y velocity components (MEaSUREs' names, any case).
COMPONENT_VARIABLES = ("VX", "VY")
#: NetCDF variable of the speed, read when the components are absent (ITS_LIVE's ``v``).
SPEED_VARIABLE = "V"
#: Reads the speed of rows r0:r1 of the grid (float32, 0 where unknown).
SpeedRows = Callable[[int, int], NDArray[np.float32]]
#: GDAL's name of one NetCDF variable: ``NETCDF:"file":variable`` (quotes optional).
_SUBDATASET = re.compile(r'^NETCDF:(?:"(?P<quoted>[^"]+)"|(?P<plain>.+)):(?P<variable>[^:"]+)$',
                         re.IGNORECASE)
#: Errors rasterio raises for a file GDAL cannot read (CPLE_*: GDAL's own, not RasterioErrors).
_READ_ERRORS = (CPLE_BaseError, RasterioError)


class VelocityError(ValueError):
    """A velocity file that cannot serve as ice speed; the message names the file and rule."""


@dataclass(frozen=True)
class VelocityLayout:
    """Where the speed lies in a velocity file: one speed band, or two component bands."""

    path: Path
    """The ``--velocity`` argument: a file, or a NetCDF variable in subdataset syntax."""
    datasets: tuple[str, ...]
    """What rasterio opens: the file itself, or its VX and VY (or V) subdatasets."""
    bands: tuple[int, ...]
    """Band 1 (speed), or bands 1 and 2 (vx, vy) of a single dataset; (1,) per subdataset."""

    @property
    def components(self) -> bool:
        """Whether the file holds the vx, vy components rather than the speed."""
        return len(self.datasets) == 2 or len(self.bands) == 2


def velocity_source(path: str | Path) -> tuple[Path, str | None]:
    """The file behind a ``--velocity`` argument and the NetCDF variable it names (None for a
    whole file), so that its digest is the file's and a missing file is named as such."""
    match = _SUBDATASET.match(str(path))
    if match is None:
        return Path(path), None
    return Path(match["quoted"] or match["plain"]), match["variable"]


def velocity_layout(path: str | Path) -> VelocityLayout:
    """How to read the speed of ``path``, or VelocityError saying why it cannot be read.

    Opens every dataset it would read and reads a pixel at two corners of each band, so a
    damaged file fails here (before any year is planned), not in the middle of a run.
    """
    file, variable = velocity_source(path)
    if not file.is_file():
        raise VelocityError(f"--velocity {file}: no such file (a speed raster, a vx/vy raster "
                            "or a MEaSUREs NetCDF with VX and VY)")
    if variable is not None:
        layout = _variable_layout(Path(path), file, variable)
    else:
        subdatasets, count = _contents(file)
        layout = (_netcdf_layout(file, subdatasets) if subdatasets
                  else _raster_layout(file, count))
    for name in layout.datasets:
        _check_dataset(name, layout.bands)
    return layout


def _contents(file: Path) -> tuple[list[str], int]:
    """(subdatasets, band count) of a file, or VelocityError if GDAL cannot open it."""
    try:
        with warnings.catch_warnings():  # a NetCDF container has no transform of its own
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(file) as src:
                return list(src.subdatasets), src.count
    except _READ_ERRORS as err:
        raise VelocityError(f"--velocity {file}: not a raster GDAL can read ({err})") from None


def _raster_layout(file: Path, count: int) -> VelocityLayout:
    """A raster's layout: one band of speed, or two of components."""
    if count not in (1, 2):
        raise VelocityError(f"--velocity {file}: {count} bands; give 1 (speed) or 2 (vx, vy)")
    return VelocityLayout(file, (str(file),), tuple(range(1, count + 1)))


def _netcdf_layout(file: Path, subdatasets: list[str]) -> VelocityLayout:
    """A NetCDF's layout: its VX and VY variables, else its speed variable V (any case)."""
    found = {name.rsplit(":", 1)[-1].upper(): name for name in subdatasets}
    if all(v in found for v in COMPONENT_VARIABLES):
        return VelocityLayout(file, tuple(found[v] for v in COMPONENT_VARIABLES), (1,))
    if SPEED_VARIABLE in found:
        return VelocityLayout(file, (found[SPEED_VARIABLE],), (1,))
    missing = [v for v in COMPONENT_VARIABLES if v not in found]
    raise VelocityError(
        f"--velocity {file}: variables {sorted(found)} hold no {' and '.join(missing)} (with "
        f"{' and '.join(COMPONENT_VARIABLES)}, the velocity components, as MEaSUREs names them) "
        f"and no {SPEED_VARIABLE} (the speed, as ITS_LIVE names it); or name the variable, "
        f'NETCDF:"{file}":variable')


def _variable_layout(path: Path, file: Path, variable: str) -> VelocityLayout:
    """The layout of one NetCDF variable named in subdataset syntax: a speed of one band.

    A lone component is refused: its magnitude is not the speed (give the file for both)."""
    if variable.upper() in COMPONENT_VARIABLES:
        raise VelocityError(f"--velocity {path}: {variable} is one velocity component; give "
                            f"the file {file} (its {' and '.join(COMPONENT_VARIABLES)} are "
                            "read together) or a variable of speed")
    subdatasets, _ = _contents(file)
    names = [name.rsplit(":", 1)[-1] for name in subdatasets]
    if names and variable not in names:
        raise VelocityError(f"--velocity {path}: {file} has no variable {variable!r} (it has "
                            f"{sorted(names)})")
    name = f'NETCDF:"{file}":{variable}'
    with _reading(path), _opened(name) as src:
        count = src.count
    if count != 1:
        raise VelocityError(f"--velocity {path}: {count} bands (e.g. time steps); a speed "
                            "variable has one")
    return VelocityLayout(path, (name,), (1,))


@contextlib.contextmanager
def _reading(name: str | Path) -> Iterator[None]:
    """Turn GDAL's errors while opening or reading ``name`` into a VelocityError naming it
    (GDAL's own ``CPLE_*`` errors, e.g. "Cannot invert geotransform", are no RasterioError)."""
    try:
        yield
    except _READ_ERRORS as err:
        cause = err.__cause__ if isinstance(err.__cause__, _READ_ERRORS) else err
        raise VelocityError(f"--velocity {name}: cannot be read ({cause}); a damaged or partly "
                            "downloaded file? Download it again") from None


def _opened(name: str) -> DatasetReader:
    """``rasterio.open(name)`` without the warning a missing georeference raises (the checks
    say so in words)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(name)


def _check_dataset(name: str, bands: tuple[int, ...]) -> None:
    """VelocityError unless ``name`` is georeferenced with an invertible transform and a pixel
    of each band can be read at its first and last corner (a truncated file often fails so)."""
    with _reading(name), _opened(name) as src:
        if src.crs is None or src.transform.is_identity:
            raise VelocityError(f"--velocity {name}: not georeferenced (no CRS or no "
                                "transform); assign them, e.g. gdal_translate -a_srs "
                                "EPSG:3031")
        if src.transform.determinant == 0:
            raise VelocityError(
                f"--velocity {name}: geotransform {tuple(src.transform)[:6]} cannot be "
                "inverted (a pixel size of 0: a damaged or partly downloaded file, or broken "
                "x/y coordinates?)")
        for row, col in ((0, 0), (src.height - 1, src.width - 1)):
            src.read(list(bands), window=Window(col, row, 1, 1))


def _warped(src: DatasetReader, grid: Grid) -> WarpedVRT:
    """The dataset resampled bilinearly onto the grid, NaN where it has no value."""
    return WarpedVRT(src, crs=grid.crs, transform=grid.transform, width=grid.width,
                     height=grid.height, resampling=Resampling.bilinear, dtype="float32",
                     nodata=np.nan)


def _finite(values: NDArray[np.float32]) -> NDArray[np.float32]:
    return np.where(np.isfinite(values), values, np.float32(0))


@contextlib.contextmanager
def speed_on_grid(layout: VelocityLayout, grid: Grid) -> Iterator[SpeedRows]:
    """A reader of the speed on ``grid`` by rows (non-negative float32, 0 where unknown).

    The file is opened at the first read, so a plan that needs no speed (a scene covers the
    ROI) does not touch it. GDAL errors and negative one-band speeds are VelocityErrors
    naming the file.
    """
    with contextlib.ExitStack() as stack:
        warped: list[WarpedVRT] = []

        def rows(r0: int, r1: int) -> NDArray[np.float32]:
            window = Window(0, r0, grid.width, r1 - r0)
            with _reading(layout.path):
                if not warped:
                    warped.extend([stack.enter_context(_warped(
                        stack.enter_context(rasterio.open(name)), grid))
                        for name in layout.datasets])
                planes = [_finite(vrt.read(band, window=window))
                          for vrt in warped for band in layout.bands]
            if len(planes) == 2:
                return np.hypot(planes[0], planes[1]).astype(np.float32)
            return _checked_speed(layout, planes[0])

        yield rows


def _checked_speed(layout: VelocityLayout, speed: NDArray[np.float32]) -> NDArray[np.float32]:
    """The speed of a one-band file, or VelocityError where it is negative: such a value is a
    fill the file does not declare (-9999) or a signed component, and its magnitude would
    pass for fast ice."""
    if np.any(speed < 0):
        raise VelocityError(
            f"--velocity {layout.path}: negative values in a one-band speed raster: declare "
            "its nodata (e.g. gdal_edit -a_nodata -9999), or give both vx and vy (values down "
            f"to {float(speed.min()):g} on the grid)")
    return speed


#: PROJ keys naming a datum or ellipsoid; a projection is compared by its ellipsoid's axes.
_DATUM_KEYS = frozenset({"datum", "ellps", "a", "b", "rf", "f", "R", "towgs84", "nadgrids",
                         "no_defs", "type"})


def _pyproj(crs: Any) -> ProjCRS:
    """A pyproj CRS from a rasterio CRS or any user input."""
    return ProjCRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _projection(crs: Any) -> dict[str, Any]:
    """A CRS's projection as PROJ parameters with its datum reduced to its ellipsoid's axes.

    MEaSUREs' CF grid mapping (polar stereographic, standard parallel -71, WGS84 semi-axes)
    reads as an unnamed datum on the WGS84 ellipsoid: the same x, y axes as EPSG:3031, which
    is what velocity components are measured along.
    """
    proj = _pyproj(crs)
    with warnings.catch_warnings():  # "you will likely lose information": only the datum
        warnings.simplefilter("ignore", UserWarning)
        params = {key: round(value, 9) if isinstance(value, float) else value
                  for key, value in proj.to_dict().items() if key not in _DATUM_KEYS}
    if params and proj.ellipsoid is not None:
        params["a"] = round(proj.ellipsoid.semi_major_metre, 3)
        params["rf"] = round(proj.ellipsoid.inverse_flattening, 6)
    return params


def _crs_label(crs: Any) -> str:
    """``EPSG:code`` when the CRS is exactly one, else its name."""
    proj = _pyproj(crs)
    code = proj.to_epsg(min_confidence=100)
    return f"EPSG:{code}" if code is not None else f"the CRS {proj.name!r}"


def crs_difference(a: Any, b: Any) -> str | None:
    """None when CRSs ``a`` and ``b`` have the same projection on the same ellipsoid (the
    datum's name aside), else what differs, e.g. "lat_0 90 vs -90"."""
    from rasterio.crs import CRS

    if CRS.from_user_input(a) == CRS.from_user_input(b):
        return None
    pa, pb = _projection(a), _projection(b)
    if pa.get("proj") != pb.get("proj"):
        return f"projection {pa.get('proj', 'unknown')} vs {pb.get('proj', 'unknown')}"
    differing = [f"{key} {pa.get(key, 'unset')} vs {pb.get(key, 'unset')}"
                 for key in sorted(pa.keys() | pb.keys())
                 if not _same_parameter(pa.get(key), pb.get(key))]
    if pa and not differing:
        return None
    return ", ".join(differing) or "no projection parameters to compare"


def _same_parameter(a: Any, b: Any) -> bool:
    """Equal, or numbers equal to single precision: NetCDF files may store the grid mapping's
    attributes as float32 (inverse_flattening 298.25723), which moves no point by a millimetre."""
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    return a == b


def components_on_grid(layout: VelocityLayout, grid: Grid
                       ) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """The velocity components (vx, vy: along the grid CRS's x and y axes, per year if the file
    gives m/yr) on ``grid``, resampled bilinearly, NaN where unknown.

    The components of a vector are along the axes of the CRS they were given in, so the file
    must be in the grid's CRS (MEaSUREs is: polar stereographic 71°S, EPSG:3031, whether its
    grid mapping names the datum or only gives the WGS84 semi-axes); a speed-only file cannot
    move anything. For coarse grids (the 900 m cells of the consistency assessment) whole
    arrays are small.
    """
    if not layout.components:
        raise VelocityError(f"--velocity {layout.path}: speed only (one band, or a V "
                            "variable); advecting damage needs the velocity components (vx, "
                            "vy bands, or VX and VY variables)")
    planes: list[NDArray[np.float32]] = []
    for name in layout.datasets:
        with _reading(name), rasterio.open(name) as src:
            difference = crs_difference(src.crs, grid.crs)
            if difference is not None:
                raise VelocityError(
                    f"--velocity {name}: components in {_crs_label(src.crs)}, not "
                    f"{_crs_label(grid.crs)} ({difference}); a vector's components are along "
                    "its CRS's axes, so give them in EPSG:3031 (as MEaSUREs does)")
            with _warped(src, grid) as vrt:
                planes += [vrt.read(band) for band in layout.bands]
    return planes[0], planes[1]
