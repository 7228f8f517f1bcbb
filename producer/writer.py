"""Write the two product COGs of a shelf-year, atomically and reproducibly.

Encodings come from ``producer.spec``; the arrays are checked against them before anything is
written, and both files appear (renamed from temporary files) only once both are complete.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.io import MemoryFile

from producer.grid import Grid
from producer.spec import (
    ENCODING,
    TYPE1,
    TYPE2,
    ProductName,
    ProductType,
    SpecError,
    build_name,
    plausibility_problems,
)


@dataclass(frozen=True)
class WrittenProducts:
    """Paths of the two files of a shelf-year, and the name they were built from."""

    name: ProductName
    damage_map: Path
    damage: Path


def _binary(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as bool, refusing anything but {0, 1} / {False, True}."""
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise SpecError(f"{what}: dtype {array.dtype} is not boolean or integer")
    bad = np.setdiff1d(np.unique(array), [0, 1])
    if bad.size:
        raise SpecError(f"{what}: values {bad[:5].tolist()} found; only 0 and 1 are allowed")
    return array.astype(bool)


def encode_type1(damage: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Type 1 pixels: damage (1) / background (0) inside the extent, nodata (255) outside."""
    out = np.where(damage, TYPE1.damage, TYPE1.background).astype(ENCODING.dtype)
    out[~extent] = TYPE1.nodata
    return out


def encode_type2(damage: np.ndarray) -> np.ndarray:
    """Type 2 pixels: damage (255) / background (0) over the full ROI."""
    return np.where(damage, TYPE2.damage, TYPE2.background).astype(ENCODING.dtype)


def cog_profile() -> dict:
    """The GTiff creation options shared by every product COG."""
    from rio_cogeo.profiles import cog_profiles  # imported when writing: atomic_path users skip it

    profile = dict(cog_profiles.get(ENCODING.compression))
    profile.update(blockxsize=ENCODING.blocksize, blockysize=ENCODING.blocksize)
    return profile


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` that replaces it only if the block succeeds."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, final)
    finally:
        tmp_path.unlink(missing_ok=True)


def check_pixels(name: str, pixels: np.ndarray, grid: Grid,
                 product_type: ProductType | None) -> None:
    """Refuse a raster whose shape, dtype or values break the spec, before anything is written."""
    if pixels.shape != grid.shape:
        raise SpecError(f"{name}: array shape {pixels.shape} != grid shape {grid.shape}")
    if pixels.dtype != np.uint8:
        raise SpecError(f"{name}: dtype {pixels.dtype} is not {ENCODING.dtype}")
    if product_type is not None:
        bad = np.setdiff1d(np.unique(pixels), sorted(product_type.values))
        if bad.size:
            raise SpecError(f"{name}: values {bad[:5].tolist()} are not allowed in type "
                            f"{product_type.number} (allowed {sorted(product_type.values)})")


def _translate(target: Path, pixels: np.ndarray, grid: Grid, nodata: int | None,
               tags: dict[str, str] | None) -> None:
    """Write the COG to ``target`` (not atomic: callers pass a temporary path)."""
    src_profile = {
        "driver": "GTiff", "dtype": ENCODING.dtype, "count": ENCODING.band_count,
        "width": grid.width, "height": grid.height, "crs": grid.crs,
        "transform": grid.transform, "nodata": nodata,
    }
    from rio_cogeo.cogeo import cog_translate

    with MemoryFile() as memfile:
        with memfile.open(**src_profile) as mem:
            mem.write(pixels, 1)
            if tags:
                mem.update_tags(**tags)
        with memfile.open() as src:
            cog_translate(
                src, str(target), cog_profile(), nodata=nodata,
                overview_resampling=ENCODING.overview_resampling,
                in_memory=True, quiet=True, use_cog_driver=False,
            )


def write_cog(path: Path, pixels: np.ndarray, grid: Grid, product_type: ProductType | None,
              nodata: int | None = None, tags: dict[str, str] | None = None) -> Path:
    """Write one single-band UInt8 COG (LZW, 512 tiles, nearest overviews) atomically.

    ``product_type`` sets the nodata tag and the allowed values; pass None for auxiliary rasters
    (probability, source index) and give ``nodata`` yourself.
    """
    check_pixels(path.name, pixels, grid, product_type)
    if product_type is not None:
        nodata = product_type.nodata
    with atomic_path(path) as tmp:
        _translate(tmp, pixels, grid, nodata, tags)
    return path


def write_products(
    release_dir: Path,
    shelf: str,
    year: int,
    sensors: tuple[str, ...] | list[str],
    restoration: str | None,
    full_roi_damage: np.ndarray,
    extent_mask: np.ndarray,
    grid: Grid,
) -> WrittenProducts:
    """Write a shelf-year's type 1 and type 2 COGs under ``release_dir/<Shelf>/<YYYY>/``.

    ``full_roi_damage`` is the merged 0/1 (or boolean) damage map over the whole ROI grid;
    ``extent_mask`` is True inside the effective ice-shelf extent. Refuses anything that breaks
    the spec (names, plausibility, values, shapes) before writing.
    """
    name = build_name(sensors, shelf, year, restoration, TYPE1)
    problems = plausibility_problems(name.sensors, year, restoration)
    if problems:
        raise SpecError("; ".join(f"[{rule.value}] {text}" for rule, text in problems))
    damage = _binary(np.asarray(full_roi_damage), "full_roi_damage")
    extent = _binary(np.asarray(extent_mask), "extent_mask")
    for what, array in (("full_roi_damage", damage), ("extent_mask", extent)):
        if array.shape != grid.shape:
            raise SpecError(f"{what}: shape {array.shape} != grid shape {grid.shape}")
    release_dir = Path(release_dir)
    rasters = ((TYPE1, encode_type1(damage, extent)), (TYPE2, encode_type2(damage)))
    paths = {t.key: release_dir / build_name(name.sensors, shelf, year, restoration,
                                             t).relative_path() for t, _ in rasters}
    for product_type, pixels in rasters:
        check_pixels(paths[product_type.key].name, pixels, grid, product_type)
    # Both files are written to temporary paths first and renamed only when both are complete,
    # so a failure leaves neither new file (and any earlier pair untouched).
    with contextlib.ExitStack() as stack:
        for product_type, pixels in rasters:
            tmp = stack.enter_context(atomic_path(paths[product_type.key]))
            _translate(tmp, pixels, grid, product_type.nodata, None)
    return WrittenProducts(name, paths[TYPE1.key], paths[TYPE2.key])


def read_band(path: Path) -> np.ndarray:
    """The first band of a raster (for tests and small files; big files are read by windows)."""
    with rasterio.open(path) as src:
        return src.read(1)
