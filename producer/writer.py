"""Write the two product COGs of a shelf-year, atomically and reproducibly.

Encodings come from ``producer.spec``; the pixels are checked against them before they are
written, and both files appear (renamed from temporary files) only once both are complete.

Memory: pixels go to the COGs strip by strip (``STRIP_ROWS`` rows): each file is first written
as a plain tiled GeoTIFF in a scratch folder beside it, then ``cog_translate`` turns it into the
COG (on disk above ``IN_MEMORY_PIXELS``), with GDAL's block cache capped at ``CACHE_BYTES``. So
a caller can hand the pixels over by rows (``write_products_rows``, ``write_cog_rows``) and never
hold the whole grid; the arrays API cuts its arrays into the same strips, and both give the same
bytes.

Failures: as values are checked strip by strip while writing, a refused raster is found after
``<Shelf>/<YYYY>/`` was made; the folders a failed write created are removed again when still
empty (the validator flags empty folders), folders that existed before are never touched.

Concurrency: one writer per shelf-year at a time is assumed, and nothing locks. Each file
appears atomically, but two writers of the same shelf-year can interleave their two renames and
leave a type 1 from one run beside a type 2 from the other; run a shelf-year once at a time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.env import get_gdal_config, set_gdal_config
from rasterio.windows import Window

from producer.grid import STRIP_ROWS, Grid, row_strips
from producer.spec import (
    ENCODING,
    SOURCE_TAG,
    TYPE1,
    TYPE2,
    ProductName,
    ProductType,
    SpecError,
    build_name,
    plausibility_problems,
)

#: Rasters up to this many pixels are turned into COGs in memory, larger ones through a
#: temporary file (rio-cogeo's intermediate is uncompressed: 313 MB for the Amery grid).
IN_MEMORY_PIXELS = 4096 * 4096
#: GDAL block cache while writing (its default, 5 % of RAM, would fill with a big grid's tiles).
CACHE_BYTES = 256 * 1024 * 1024
#: GDAL block cache while a raster is read once, front to back, by rows of tiles (the
#: validator's pixel scans, ``catalog.stats.count_pixels``, the catalog's per-item reads).
#: GDAL's default (5 % of RAM) keeps every decoded tile of the open files although none is read
#: twice: validating one Amery shelf-year peaked at 1,132 MB with it and 366 MB with 64 MB, for
#: 10-20 % less CPU (docs/benchmarks.md). A row of tiles of the widest grid (Amery, 41 tiles of
#: 256 kB per file) and the overview bands the validator reads beside it fit several times over.
SCAN_CACHE_BYTES = 64 * 1024 * 1024
_SCAN_CACHE_LOCK = threading.Lock()
_scan_cache_users = 0
_scan_cache_before: object = None
#: ``atomic_path``'s temporaries are ``.<final name>.<random><TEMPORARY_SUFFIX>`` beside it.
TEMPORARY_SUFFIX = ".tmp"
#: Prefix of the scratch folder a product write keeps beside the products while it runs.
STRIPS_PREFIX = ".icedamage-strips-"

#: Rows r0:r1 of one or several rasters of a grid.
RowReader = Callable[[int, int], Sequence[np.ndarray]]


@dataclass(frozen=True)
class WrittenProducts:
    """Paths of the two files of a shelf-year, and the name they were built from."""

    name: ProductName
    damage_map: Path
    damage: Path


def _values_outside(array: np.ndarray, allowed: set[int] | frozenset[int]) -> np.ndarray:
    """The sorted distinct values of an integer array that are not in ``allowed``.

    One comparison per allowed value (a few ms per strip), ``unique`` only on the bad pixels.
    """
    ok = np.zeros(array.shape, bool)
    for value in allowed:
        ok |= array == value
    return np.unique(array[~ok])


def _binary(array: np.ndarray, what: str) -> np.ndarray:
    """``array`` as bool, refusing anything but {0, 1} / {False, True}."""
    if array.dtype == bool:
        return array
    if not np.issubdtype(array.dtype, np.integer):
        raise SpecError(f"{what}: dtype {array.dtype} is not boolean or integer")
    bad = _values_outside(array, {0, 1})
    if bad.size:
        raise SpecError(f"{what}: values {bad[:5].tolist()} found; only 0 and 1 are allowed")
    return array.astype(bool)


def encode_type1(damage: np.ndarray, extent: np.ndarray) -> np.ndarray:
    """Type 1 pixels: damage (1) / background (0) inside the extent, nodata (255) outside."""
    dtype = np.dtype(ENCODING.dtype)
    out = np.where(damage, dtype.type(TYPE1.damage), dtype.type(TYPE1.background))
    out[~extent] = TYPE1.nodata
    return out


def encode_type2(damage: np.ndarray) -> np.ndarray:
    """Type 2 pixels: damage (255) / background (0) over the full ROI."""
    dtype = np.dtype(ENCODING.dtype)
    return np.where(damage, dtype.type(TYPE2.damage), dtype.type(TYPE2.background))


def cog_profile() -> dict:
    """The GTiff creation options shared by every product COG."""
    from rio_cogeo.profiles import cog_profiles  # imported when writing: atomic_path users skip it

    profile = dict(cog_profiles.get(ENCODING.compression))
    profile.update(blockxsize=ENCODING.blocksize, blockysize=ENCODING.blocksize)
    return profile


@contextlib.contextmanager
def scan_cache() -> Iterator[None]:
    """GDAL's block cache capped at ``SCAN_CACHE_BYTES`` while a raster is read once.

    The cap is process-wide, and scans run in several threads at once (the validator's rule
    sets and workers): each ``rasterio.Env`` saving and restoring it on its own would let the
    last one out restore another's cap. So the first scan in sets it and the last one out puts
    back what was there before.
    """
    global _scan_cache_users, _scan_cache_before
    with _SCAN_CACHE_LOCK:
        if _scan_cache_users == 0:
            _scan_cache_before = get_gdal_config("GDAL_CACHEMAX")
            set_gdal_config("GDAL_CACHEMAX", SCAN_CACHE_BYTES)
        _scan_cache_users += 1
    try:
        yield
    finally:
        with _SCAN_CACHE_LOCK:
            _scan_cache_users -= 1
            if _scan_cache_users == 0:
                set_gdal_config("GDAL_CACHEMAX", _scan_cache_before)


def unwritable(path: Path, *, folder: bool = False) -> str | None:
    """Why ``path`` cannot take the output a command is about to make there, or None.

    A file where a folder is wanted (``folder``) or a folder where a file is, a file among the
    folders above it, or no permission to create files in its nearest existing folder
    (``atomic_path`` and the writers create the missing folders). Commands ask before their
    work, so a wrong output costs one line instead of the run and then a traceback.
    """
    path = Path(path).absolute()
    if folder and os.path.lexists(path) and not path.is_dir():
        return "is a file, not a folder"
    if not folder and path.is_dir():
        return "is a folder; give a file name"
    base = path if folder else path.parent
    ancestor = next(p for p in (base, *base.parents) if os.path.lexists(p))
    if not ancestor.is_dir():
        return f"{ancestor} is a file, not a folder"
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return f"cannot write in {ancestor} (permission denied)"
    return None


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final`` that replaces it only if the block succeeds.

    An ``OSError`` on the temporary file (creating it or its folder, writing it, moving it over
    ``final``) is re-raised, as the same ``OSError`` subclass and errno, as "cannot write
    <final>: <reason>": the temporary's hidden name means nothing to whoever asked for
    ``final``. Errors on other files, and errors without a file name, pass unchanged.
    """
    tmp_path: Path | None = None
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=TEMPORARY_SUFFIX,
                                   dir=final.parent)
        os.close(fd)
        tmp_path = Path(tmp)
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, final)
    except OSError as error:
        if tmp_path is not None and error.filename != str(tmp_path):
            raise  # the block's own error on another file (or one without a name)
        reason = error.strerror or str(error)
        if error.filename is not None and \
                not Path(str(error.filename)).name.startswith(f".{final.name}."):
            reason = f"{error.filename}: {reason}"  # its folder could not be made
        try:
            named = type(error)(f"cannot write {final}: {reason}")
        except TypeError:  # a subclass with its own constructor: plain OSError, same errno
            named = OSError(f"cannot write {final}: {reason}")
        named.errno = error.errno
        raise named from error
    finally:
        if tmp_path is not None:
            tmp_path.unlink(missing_ok=True)


def remove_leftovers(folder: Path, belongs: Callable[[str], bool]) -> list[Path]:
    """Delete what a write killed outright (SIGKILL, power loss) left in ``folder``: the
    temporaries of ``atomic_path`` whose final file name ``belongs`` accepts, and the strip
    scratch folders.

    Why: a clean failure removes them itself, a killed process cannot, and the validator then
    refuses the release (``layout-stray-file``) until someone deletes them by hand. Called
    before a shelf-year is rewritten (one writer per shelf-year at a time), so nothing another
    run is writing is touched. Returns what was deleted.
    """
    found = [path for path in folder.glob(f".*{TEMPORARY_SUFFIX}")
             if path.is_file() and belongs(temporary_target(path.name))]
    found += [path for path in folder.glob(f"{STRIPS_PREFIX}*") if path.is_dir()]
    for path in found:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    return found


def temporary_target(name: str) -> str:
    """The final file name an ``atomic_path`` temporary ``.<final>.<random>.tmp`` stands for
    (mkstemp's random part has no dot)."""
    return name[1:len(name) - len(TEMPORARY_SUFFIX)].rsplit(".", 1)[0]


@contextlib.contextmanager
def removing_new_folders(folder: Path) -> Iterator[None]:
    """Remove ``folder`` and the parents of it that this block creates, if the block fails and
    leaves them empty.

    Why: the writers make ``<Shelf>/<YYYY>/`` before the strip checks can refuse the pixels, and
    a refused write must not leave an empty folder behind. Only folders missing on entry are
    removed, deepest first, and only while empty (``rmdir`` never deletes content), so a folder
    another writer has put files in meanwhile stays.
    """
    new: list[Path] = []
    probe = Path(folder)
    while not probe.exists() and probe != probe.parent:
        new.append(probe)
        probe = probe.parent
    try:
        yield
    except BaseException:
        for path in new:
            try:
                path.rmdir()
            except OSError:  # not empty (or gone): it, and so its parents, stay
                break
        raise


def check_pixels(name: str, pixels: np.ndarray, grid: Grid,
                 product_type: ProductType | None, rows: tuple[int, int] | None = None) -> None:
    """Refuse a raster (or its ``rows`` r0:r1) whose shape, dtype or values break the spec."""
    if rows is None and pixels.shape != grid.shape:
        raise SpecError(f"{name}: array shape {pixels.shape} != grid shape {grid.shape}")
    if rows is not None and pixels.shape != (rows[1] - rows[0], grid.width):
        raise SpecError(f"{name}: rows {rows[0]}:{rows[1]} have shape {pixels.shape}, not "
                        f"{(rows[1] - rows[0], grid.width)} on grid {grid.shape}")
    if pixels.dtype != np.uint8:
        raise SpecError(f"{name}: dtype {pixels.dtype} is not {ENCODING.dtype}")
    if product_type is not None:
        bad = _values_outside(pixels, product_type.values)
        if bad.size:
            raise SpecError(f"{name}: values {bad[:5].tolist()} are not allowed in type "
                            f"{product_type.number} (allowed {sorted(product_type.values)})")


def _source_profile(grid: Grid, nodata: int | None) -> dict:
    """The scratch GeoTIFF a COG is translated from: tiled like the COG, LZW."""
    return {
        "driver": "GTiff", "dtype": ENCODING.dtype, "count": ENCODING.band_count,
        "width": grid.width, "height": grid.height, "crs": grid.crs,
        "transform": grid.transform, "nodata": nodata, "tiled": True,
        "blockxsize": ENCODING.blocksize, "blockysize": ENCODING.blocksize,
        "compress": ENCODING.compression,
    }


def _write_rows(targets: Sequence[tuple[Path, int | None, dict[str, str] | None]],
                rows: RowReader, grid: Grid) -> None:
    """Write one COG per target (path, nodata, tags) from strips of pixels, in one pass.

    ``rows(r0, r1)`` returns the targets' rows r0:r1 (checked by the caller); the targets are
    temporary paths (callers make them atomic). Nothing but a few strips and GDAL's capped
    block cache is held in memory.
    """
    from rio_cogeo.cogeo import cog_translate  # heavy (pydantic, morecantile): only to write

    scratch_parent = targets[0][0].parent
    with rasterio.Env(GDAL_CACHEMAX=CACHE_BYTES), \
            tempfile.TemporaryDirectory(prefix=STRIPS_PREFIX, dir=scratch_parent) as tmp:
        sources = [Path(tmp) / f"{k}.tif" for k in range(len(targets))]
        with contextlib.ExitStack() as stack:
            datasets = [stack.enter_context(rasterio.open(path, "w", **_source_profile(
                grid, nodata))) for path, (_, nodata, _) in zip(sources, targets, strict=True)]
            for r0, r1 in row_strips(grid.height, STRIP_ROWS):
                window = Window(0, r0, grid.width, r1 - r0)
                for dataset, pixels in zip(datasets, rows(r0, r1), strict=True):
                    dataset.write(pixels, 1, window=window)
            for dataset, (_, _, tags) in zip(datasets, targets, strict=True):
                if tags:
                    dataset.update_tags(**tags)
        for source, (target, nodata, _) in zip(sources, targets, strict=True):
            with rasterio.open(source) as src:
                cog_translate(
                    src, str(target), cog_profile(), nodata=nodata,
                    overview_resampling=ENCODING.overview_resampling,
                    in_memory=grid.width * grid.height <= IN_MEMORY_PIXELS, quiet=True,
                    use_cog_driver=False,
                )
            source.unlink()


def write_cog(path: Path, pixels: np.ndarray, grid: Grid, product_type: ProductType | None,
              nodata: int | None = None, tags: dict[str, str] | None = None) -> Path:
    """Write one single-band UInt8 COG (LZW, 512 tiles, nearest overviews) atomically.

    ``product_type`` sets the nodata tag and the allowed values; pass None for auxiliary rasters
    (probability, source index) and give ``nodata`` yourself.
    """
    check_pixels(path.name, pixels, grid, product_type)
    return write_cog_rows(path, lambda r0, r1: pixels[r0:r1], grid, product_type, nodata, tags)


def write_cog_rows(path: Path, rows: Callable[[int, int], np.ndarray], grid: Grid,
                   product_type: ProductType | None, nodata: int | None = None,
                   tags: dict[str, str] | None = None) -> Path:
    """``write_cog`` with the pixels read by ``rows(r0, r1)`` strip by strip (bounded memory).

    Every strip is checked before it is written; a refused strip leaves no file, nor a folder
    the call created.
    """
    if product_type is not None:
        nodata = product_type.nodata

    def checked(r0: int, r1: int) -> list[np.ndarray]:
        pixels = rows(r0, r1)
        check_pixels(path.name, pixels, grid, product_type, (r0, r1))
        return [pixels]

    with removing_new_folders(path.parent), atomic_path(path) as tmp:
        _write_rows([(tmp, nodata, tags)], checked, grid)
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
    damage, extent = np.asarray(full_roi_damage), np.asarray(extent_mask)
    for what, array in (("full_roi_damage", damage), ("extent_mask", extent)):
        if array.shape != grid.shape:
            raise SpecError(f"{what}: shape {array.shape} != grid shape {grid.shape}")
    return write_products_rows(release_dir, shelf, year, sensors, restoration,
                               lambda r0, r1: (damage[r0:r1], extent[r0:r1]), grid)


def write_products_rows(
    release_dir: Path,
    shelf: str,
    year: int,
    sensors: tuple[str, ...] | list[str],
    restoration: str | None,
    rows: RowReader,
    grid: Grid,
    source: str | None = None,
) -> WrittenProducts:
    """``write_products`` with (damage, extent) rows r0:r1 read by ``rows`` strip by strip.

    ``source`` (the scene source's name) is written into both files as ``SOURCE_TAG``.

    Names and plausibility are refused before anything is written; a strip breaking the spec
    stops the writing with both files still temporary, so neither appears, and the folders the
    call created (``<Shelf>/<YYYY>/``, the release folder) are removed again if left empty.
    One writer per shelf-year at a time is assumed (see the module docstring): two concurrent
    writers of one shelf-year can leave a pair mixing their runs.
    """
    name = build_name(sensors, shelf, year, restoration, TYPE1)
    problems = plausibility_problems(name.sensors, year, restoration)
    if problems:
        raise SpecError("; ".join(f"[{rule.value}] {text}" for rule, text in problems))
    release_dir = Path(release_dir)
    types = (TYPE1, TYPE2)
    paths = {t.key: release_dir / build_name(name.sensors, shelf, year, restoration,
                                             t).relative_path() for t in types}

    def encoded(r0: int, r1: int) -> list[np.ndarray]:
        damage_rows, extent_rows = rows(r0, r1)
        damage = _binary(np.asarray(damage_rows), "full_roi_damage")
        extent = _binary(np.asarray(extent_rows), "extent_mask")
        for what, array in (("full_roi_damage", damage), ("extent_mask", extent)):
            if array.shape != (r1 - r0, grid.width):
                raise SpecError(f"{what}: rows {r0}:{r1} have shape {array.shape}, not "
                                f"{(r1 - r0, grid.width)} on grid {grid.shape}")
        pixels = [encode_type1(damage, extent), encode_type2(damage)]
        for product_type, array in zip(types, pixels, strict=True):
            check_pixels(paths[product_type.key].name, array, grid, product_type, (r0, r1))
        return pixels

    # Both files are written to temporary paths first and renamed only when both are complete,
    # so a failure leaves neither new file (and any earlier pair untouched).
    with contextlib.ExitStack() as stack:
        stack.enter_context(removing_new_folders(paths[TYPE1.key].parent))
        tags = {SOURCE_TAG: source} if source is not None else None
        targets = [(stack.enter_context(atomic_path(paths[t.key])), t.nodata, tags)
                   for t in types]
        _write_rows(targets, encoded, grid)
    return WrittenProducts(name, paths[TYPE1.key], paths[TYPE2.key])


def read_band(path: Path) -> np.ndarray:
    """The first band of a raster (for tests and small files; big files are read by windows)."""
    with rasterio.open(path) as src:
        return src.read(1)
