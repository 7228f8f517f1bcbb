"""The COG writer: encodings read back with rasterio, reproducible bytes, refusals, atomicity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from rio_cogeo.cogeo import cog_validate

from producer.grid import Grid
from producer.spec import ENCODING, TYPE1, TYPE2, SpecError
from producer.writer import unwritable, write_cog, write_cog_rows, write_products
from tests.release_factory import ShelfYear, fixture_arrays

GRID = Grid.from_bounds(-1_500_000, 600_000, -1_500_000 + 900 * 30, 600_000 + 1100 * 30)


@pytest.fixture(scope="module")
def arrays() -> tuple[np.ndarray, np.ndarray]:
    """Damage (dense enough that averaged overviews would leave the class set) and extent."""
    damage, extent = fixture_arrays(ShelfYear("Totten", 2016, ("LC08",), size=GRID.shape), 3)
    damage[200:260, 100:800:3] = True  # striped block: every 2x2 average is between classes
    return damage, extent


def write(root: Path, arrays: tuple[np.ndarray, np.ndarray], **kw: object):  # noqa: ANN201
    """write_products with the test grid, Totten 2016 LC08 unless told otherwise."""
    args = {"shelf": "Totten", "year": 2016, "sensors": ("LC08",), "restoration": None}
    args.update(kw)
    return write_products(root, args["shelf"], args["year"], args["sensors"],
                          args["restoration"], arrays[0], arrays[1], GRID)


def files_under(root: Path) -> list[Path]:
    """Every file under a folder (folders themselves left out)."""
    return sorted(p for p in root.rglob("*") if p.is_file()) if root.exists() else []


def test_files_have_the_spec_encoding(tmp_path: Path, arrays: tuple) -> None:
    """One band, UInt8, LZW, EPSG:3031, 30 m, 512 tiles, nodata per type, valid COG."""
    written = write(tmp_path, arrays)
    assert written.damage_map == tmp_path / "Totten/2016/LC08_Totten_2016_damage_map.tif"
    assert written.damage == tmp_path / "Totten/2016/LC08_Totten_2016_damage.tif"
    for path, product_type in ((written.damage_map, TYPE1), (written.damage, TYPE2)):
        with rasterio.open(path) as src:
            assert (src.count, src.dtypes[0]) == (1, ENCODING.dtype)
            assert src.compression.name.lower() == ENCODING.compression
            assert src.crs.to_epsg() == ENCODING.epsg
            assert src.res == (ENCODING.resolution, ENCODING.resolution)
            assert src.transform == GRID.transform and src.shape == GRID.shape
            assert src.block_shapes[0] == (ENCODING.blocksize, ENCODING.blocksize)
            assert src.nodata == product_type.nodata
            assert src.overviews(1), "raster larger than a tile needs internal overviews"
        is_valid, errors, warnings = cog_validate(path, quiet=True)
        assert is_valid and errors == [] and warnings == []


def test_pixels_follow_the_two_encodings(tmp_path: Path, arrays: tuple) -> None:
    """Type 1: 1/0 inside the extent, 255 outside; type 2: 255/0 everywhere."""
    damage, extent = arrays
    written = write(tmp_path, arrays)
    with rasterio.open(written.damage_map) as src:
        type1 = src.read(1)
    with rasterio.open(written.damage) as src:
        type2 = src.read(1)
    assert set(np.unique(type1)) == {0, 1, 255} and set(np.unique(type2)) == {0, 255}
    assert np.array_equal(type1 == TYPE1.nodata, ~extent)
    assert np.array_equal(type1 == TYPE1.damage, damage & extent)
    assert np.array_equal(type2 == TYPE2.damage, damage)


def test_overviews_hold_only_classes(tmp_path: Path, arrays: tuple) -> None:
    """Every overview level (nearest) holds only the type's values, despite striped damage."""
    written = write(tmp_path, arrays)
    for path, product_type in ((written.damage_map, TYPE1), (written.damage, TYPE2)):
        with rasterio.open(path) as src:
            levels = len(src.overviews(1))
        for level in range(levels):
            with rasterio.open(path, overview_level=level) as ovr:
                assert set(np.unique(ovr.read(1)).tolist()) <= product_type.values


def test_rewrite_is_byte_identical(tmp_path: Path, arrays: tuple) -> None:
    """The same product written twice (elsewhere, and over itself) gives the same bytes."""
    first = write(tmp_path / "a", arrays)
    second = write(tmp_path / "b", arrays)
    before = first.damage_map.read_bytes(), first.damage.read_bytes()
    assert (second.damage_map.read_bytes(), second.damage.read_bytes()) == before
    again = write(tmp_path / "a", arrays)
    assert (again.damage_map.read_bytes(), again.damage.read_bytes()) == before


@pytest.mark.parametrize("bad", ["value-2-in-damage", "value-2-in-extent", "float-damage",
                                 "wrong-shape-damage", "wrong-shape-extent"])
def test_bad_arrays_are_refused_and_nothing_is_written(tmp_path: Path, arrays: tuple,
                                                       bad: str) -> None:
    """Values other than 0/1 and shapes other than the grid's raise before writing."""
    damage, extent = (a.astype(np.uint8) for a in arrays)
    if bad == "value-2-in-damage":
        damage[5, 5] = 2
    elif bad == "value-2-in-extent":
        extent[5, 5] = 2
    elif bad == "float-damage":
        damage = damage.astype(np.float32)
    elif bad == "wrong-shape-damage":
        damage = damage[:-1]
    else:
        extent = extent[:, :-1]
    with pytest.raises(SpecError):
        write(tmp_path, (damage, extent))
    assert files_under(tmp_path) == []


@pytest.mark.parametrize(("kw", "message"), [
    ({"sensors": ("LE07",), "year": 2016}, "sensor-year"),
    ({"sensors": ("LC09",), "year": 2015}, "sensor-year"),
    ({"sensors": ("LE07",), "year": 2005}, "restoration-missing"),
    ({"sensors": ("LC08",), "year": 2016, "restoration": "DiffGF"}, "restoration-unexpected"),
    ({"sensors": ("LC09", "LC08"), "year": 2022}, "sensor-order"),
    ({"shelf": "../x"}, "not allowed"),
    ({"shelf": "Totten/2016"}, "not allowed"),
])
def test_implausible_or_unsafe_names_are_refused(tmp_path: Path, arrays: tuple, kw: dict,
                                                 message: str) -> None:
    """Names the spec forbids never reach the disk, and nothing escapes the release folder."""
    release = tmp_path / "release"
    with pytest.raises(SpecError, match=message):
        write(release, arrays, **kw)
    assert files_under(tmp_path) == []


def test_write_cog_refuses_values_outside_the_type(tmp_path: Path) -> None:
    """A type 2 raster holding 1 (a type 1 value) is refused, nothing written."""
    pixels = np.zeros(GRID.shape, np.uint8)
    pixels[0, 0] = 1
    with pytest.raises(SpecError, match="not allowed in type 2"):
        write_cog(tmp_path / "x_damage.tif", pixels, GRID, TYPE2)
    assert files_under(tmp_path) == []


def test_failure_on_the_second_file_leaves_neither(tmp_path: Path, arrays: tuple) -> None:
    """If type 2 cannot be written, type 1 must not appear alone (no half-written shelf-year)."""
    blocker = tmp_path / "Totten/2016/LC08_Totten_2016_damage.tif"
    blocker.mkdir(parents=True)  # a folder where the type 2 file should go: the rename fails
    with pytest.raises(OSError):
        write(tmp_path, arrays)
    assert files_under(tmp_path) == []


def test_failed_rewrite_keeps_the_previous_files(tmp_path: Path, arrays: tuple) -> None:
    """A failing rewrite leaves the earlier, complete products untouched."""
    written = write(tmp_path, arrays)
    before = written.damage_map.read_bytes(), written.damage.read_bytes()
    damage = arrays[0].astype(np.uint8)
    damage[0, 0] = 7
    with pytest.raises(SpecError):
        write(tmp_path, (damage, arrays[1]))
    assert (written.damage_map.read_bytes(), written.damage.read_bytes()) == before
    assert len(files_under(tmp_path)) == 2


@pytest.mark.parametrize("bad", ["nan-damage", "float-damage", "value-2-in-damage",
                                 "value-2-in-extent"])
def test_refused_write_leaves_no_new_folder(tmp_path: Path, arrays: tuple, bad: str) -> None:
    """Values refused while strips are written leave neither ``<Shelf>/<YYYY>/`` nor the release
    folder behind (the validator would flag an empty folder), and keep folders that existed."""
    damage, extent = (a.astype(np.uint8) for a in arrays)
    if bad == "nan-damage":
        damage = np.where(damage == 1, np.nan, 0.0)
    elif bad == "float-damage":
        damage = damage.astype(np.float64)
    elif bad == "value-2-in-damage":
        damage[-1, -1] = 2  # last strip: the folders exist long before it is checked
    else:
        extent[5, 5] = 2
    fresh = tmp_path / "fresh-release"
    with pytest.raises(SpecError):
        write(fresh, (damage, extent))
    assert not fresh.exists()

    existing = tmp_path / "release"
    write(existing, arrays)  # Totten/2016 exists now
    with pytest.raises(SpecError):
        write(existing, (damage, extent), year=2017)
    assert sorted(p.relative_to(existing).as_posix() for p in existing.rglob("*")
                  if p.is_dir()) == ["Totten", "Totten/2016"]


def test_refused_cog_rows_leave_no_new_folder(tmp_path: Path) -> None:
    """write_cog_rows, which meets a bad strip only while writing, removes the folders it made."""
    pixels = np.zeros(GRID.shape, np.uint8)
    pixels[-1, 0] = 1
    with pytest.raises(SpecError):
        write_cog_rows(tmp_path / "new/sub/x_damage.tif", lambda r0, r1: pixels[r0:r1], GRID,
                       TYPE2)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_says_why_an_output_cannot_be_made(tmp_path: Path) -> None:
    """The one check every command makes of its output before working: the reason names the
    blocking path; a missing folder under a writable one is fine (the writers create it)."""
    afile = tmp_path / "afile.txt"
    afile.write_text("x")
    assert unwritable(tmp_path / "new" / "deeper" / "out.csv") is None
    assert unwritable(tmp_path / "release", folder=True) is None
    assert unwritable(tmp_path) == "is a folder; give a file name"
    assert unwritable(afile, folder=True) == "is a file, not a folder"
    assert unwritable(afile / "out.csv") == f"{afile} is a file, not a folder"
    assert unwritable(afile / "sub", folder=True) == f"{afile} is a file, not a folder"


def test_atomic_path_names_the_final_file_whatever_the_error_class(tmp_path: Path) -> None:
    """An error on the temporary file is said about the file asked for; an OSError subclass
    whose constructor takes other arguments still comes out as an OSError, errno kept."""
    from producer.writer import atomic_path

    class Odd(OSError):
        def __init__(self, a: object, b: object, c: object) -> None:
            super().__init__(5, "odd failure")

    final = tmp_path / "out.csv"
    with pytest.raises(OSError, match=r"cannot write .*out\.csv") as caught, \
            atomic_path(final) as tmp:
        error = Odd(1, 2, 3)
        error.filename = str(tmp)
        raise error
    assert caught.value.errno == 5 and not final.exists()
    assert list(tmp_path.iterdir()) == []
