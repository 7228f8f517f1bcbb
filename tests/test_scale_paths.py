"""Paths that matter at dataset scale: pixel counts read by rows of tiles, and the read-once
scans (pixel counts, the validator's pixel checks, the catalog's per-item reads) run under GDAL's
capped block cache (``producer.writer.SCAN_CACHE_BYTES``) and leave the cap as they found it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.env import get_gdal_config

from catalog.build import catalog_release
from catalog.stats import count_pixels, release_stats
from catalog.uncertainty import PAPER_FACTORS
from producer.spec import ENCODING, TYPE1
from producer.writer import SCAN_CACHE_BYTES, write_cog
from tests.release_factory import ShelfYear, build_release, fixture_grid
from validation.engine import validate_release

#: Odd sizes: neither is a multiple of the 512 px tiles, so the last row and column of tiles
#: (and the last row read) are partial.
HEIGHT, WIDTH = 1157, 1301


def _pixels(seed: int, values: tuple[float, ...], dtype: str) -> np.ndarray:
    """Random pixels drawn from ``values``, with a nodata band along the edges as real maps."""
    rng = np.random.default_rng(seed)
    pixels = rng.choice(np.array(values, dtype), size=(HEIGHT, WIDTH), p=None)
    pixels[:37] = values[-1]
    pixels[:, -11:] = values[-1]
    return pixels


def _geotiff(path: Path, pixels: np.ndarray, nodata: float | None, **layout: object) -> Path:
    """A plain GeoTIFF of ``pixels`` (``layout``: tiling / strip options)."""
    profile = {"driver": "GTiff", "width": WIDTH, "height": HEIGHT, "count": 1,
               "dtype": pixels.dtype, "crs": ENCODING.crs, "nodata": nodata,
               "transform": Affine(30.0, 0, -2_000_000.0, 0, -30.0, 1_000_000.0),
               "compress": "lzw", **layout}
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(pixels, 1)
    return path


def _cog(path: Path) -> tuple[Path, float]:
    """A type-1 COG written by the producer's writer (512 tiles, LZW, overviews)."""
    grid = fixture_grid("Totten", (HEIGHT, WIDTH))
    pixels = _pixels(1, (TYPE1.background, TYPE1.damage, TYPE1.nodata), "uint8")
    write_cog(path, pixels, grid, TYPE1)
    return path, TYPE1.nodata


def _striped(path: Path) -> tuple[Path, float]:
    """Untiled, 7 rows a strip (strips straddle the rows read), no nodata tag (type 1's)."""
    pixels = _pixels(2, (TYPE1.background, TYPE1.damage, TYPE1.nodata), "uint8")
    return _geotiff(path, pixels, None, tiled=False, blockysize=7), TYPE1.nodata


def _other_nodata(path: Path) -> tuple[Path, float]:
    """256 px tiles and nodata 0: valid pixels are those != the file's own nodata."""
    pixels = _pixels(3, (TYPE1.damage, 2, 0), "uint8")
    return _geotiff(path, pixels, 0, tiled=True, blockxsize=256, blockysize=256), 0


def _float(path: Path) -> tuple[Path, float]:
    """Float32 with a fractional nodata (compared as a float, not converted)."""
    pixels = _pixels(4, (0.0, 1.0, 0.5, -9999.5), "float32")
    return _geotiff(path, pixels, -9999.5, tiled=True, blockxsize=512,
                    blockysize=512), -9999.5


RASTERS: dict[str, Callable[[Path], tuple[Path, float]]] = {
    "cog": _cog, "striped": _striped, "other-nodata": _other_nodata, "float": _float}


@pytest.mark.parametrize("make", list(RASTERS.values()), ids=list(RASTERS))
def test_count_pixels_equals_a_plain_numpy_count(tmp_path: Path,
                                                 make: Callable[[Path], tuple[Path, float]]
                                                 ) -> None:
    """Rows of tiles into one reused buffer count exactly what a whole-array count does, for
    sizes the tiles do not divide, strips that straddle the rows read, any nodata."""
    path, nodata = make(tmp_path / "map.tif")
    with rasterio.open(path) as src:
        pixels = src.read(1)
        area = abs(src.transform.a * src.transform.e)
    counts = count_pixels(path)
    assert counts.damage_pixels == int(np.count_nonzero(pixels == TYPE1.damage))
    assert counts.valid_pixels == int(np.count_nonzero(pixels != nodata))
    assert counts.pixel_area_m2 == area
    assert 0 < counts.damage_pixels < counts.valid_pixels < HEIGHT * WIDTH


@pytest.fixture
def cache_at_open(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """GDAL's block-cache cap at every ``rasterio.open`` while the test runs (worker threads
    included: the cap is process-wide); asserts the cap is back as it was afterwards."""
    seen: list[int] = []
    real_open = rasterio.open

    def spying(*args: object, **kwargs: object) -> object:
        seen.append(int(get_gdal_config("GDAL_CACHEMAX")))
        return real_open(*args, **kwargs)

    before = get_gdal_config("GDAL_CACHEMAX")
    monkeypatch.setattr(rasterio, "open", spying)
    yield seen
    assert get_gdal_config("GDAL_CACHEMAX") == before


def test_count_pixels_reads_under_the_capped_cache(tmp_path: Path,
                                                   cache_at_open: list[int]) -> None:
    path, _ = _cog(tmp_path / "map.tif")
    cache_at_open.clear()
    count_pixels(path)
    assert cache_at_open == [SCAN_CACHE_BYTES]


@pytest.fixture(scope="module")
def two_years(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small release with two shelf-years, so the validator's thread pool has work."""
    return build_release(tmp_path_factory.mktemp("scale") / "release",
                         (ShelfYear("Totten", 2021, ("LC08", "LC09")),
                          ShelfYear("Totten", 2016, ("LC08",))))


def test_validator_pixel_scans_read_under_the_capped_cache(two_years: Path,
                                                           cache_at_open: list[int]) -> None:
    """Every open of the products rule set (its two worker threads, rio-cogeo's re-opens,
    overview levels) sees the cap, and the findings are those of an uncapped run."""
    report = validate_release(two_years, workers=2)
    assert cache_at_open and set(cache_at_open) == {SCAN_CACHE_BYTES}
    assert not report.errors, report.to_json()


def test_catalog_and_stats_read_under_the_capped_cache(two_years: Path, tmp_path: Path,
                                                       cache_at_open: list[int]) -> None:
    """The catalog's per-item reads (header facts, thumbnail, pixel counts) and the stats
    command's counts all run capped."""
    import shutil

    release = Path(shutil.copytree(two_years, tmp_path / "release"))
    cache_at_open.clear()
    catalog_release(release, PAPER_FACTORS)
    assert cache_at_open and set(cache_at_open) == {SCAN_CACHE_BYTES}
    cache_at_open.clear()
    stats = release_stats(release, PAPER_FACTORS)
    assert len(stats) == 2 and set(cache_at_open) == {SCAN_CACHE_BYTES}


def test_overlapping_scans_in_threads_put_the_cache_back_as_it_was() -> None:
    """Scans in several threads enter and leave the process-wide cap in any order (one
    rule set's scan ends while another's runs): the last one out restores the cap that was
    there before, the first one in sets it."""
    import threading

    from producer.writer import scan_cache

    before = get_gdal_config("GDAL_CACHEMAX")
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[int] = []

    def first() -> None:
        with scan_cache():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with scan_cache():
            second_in.set()
            first_out.wait(5)
            seen.append(int(get_gdal_config("GDAL_CACHEMAX")))  # still capped

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert seen == [SCAN_CACHE_BYTES]
    assert get_gdal_config("GDAL_CACHEMAX") == before
