"""EarthExplorer Collection 2 Level-1 products in local:DIR: tiny synthetic products on disk."""

from __future__ import annotations

import datetime as dt
import json
import math
import tarfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Transformer
from shapely.geometry import Polygon

from producer.grid import Grid
from producer.pipeline import ProduceOptions, produce, scene_masks
from producer.provenance import read_provenance
from producer.shelves import roi_polygon
from producer.sources.errors import SourceError
from producer.sources.l1 import parse_mtl_json, parse_mtl_text
from producer.sources.local import LocalFolderSource
from producer.sources.registry import get_source
from producer.spec import AUXILIARY_SUFFIXES, SENSORS

X0, Y0 = 2_250_000.0, -1_050_000.0  # near Totten, EPSG:3031
ROI = Polygon([(X0, Y0), (X0 + 1800, Y0), (X0 + 1800, Y0 + 1200), (X0, Y0 + 1200)])
GRID = Grid.covering(ROI)  # 60 x 40 px
LC08_ID = "LC08_L1TP_101107_20220105_20220115_02_T1"
LE07_ID = "LE07_L1GT_101107_20030105_20200915_02_T2"
SUN = 21.45678901
#: Per band number: (REFLECTANCE_MULT_BAND_n, REFLECTANCE_ADD_BAND_n), distinct so swaps show.
RESCALE = {n: (2.0e-05 * (1 + n / 10), -0.1 + n / 100) for n in range(1, 8)}


def mtl_text(pid: str, sun: float | str = SUN, drop: str = "",
             product_id: str | None = None) -> str:
    """An MTL in the real layout and field names; ``drop`` leaves one field out."""
    rescaling = [f"    REFLECTANCE_MULT_BAND_{n} = {m:.4E}\n    REFLECTANCE_ADD_BAND_{n} = {a:.6f}"
                 for n, (m, a) in RESCALE.items()]
    lines = [
        "GROUP = LANDSAT_METADATA_FILE",
        "  GROUP = PRODUCT_CONTENTS",
        '    ORIGIN = "Image courtesy of the U.S. Geological Survey"',
        f'    LANDSAT_PRODUCT_ID = "{product_id or pid}"',
        '    PROCESSING_LEVEL = "L1TP"',
        "    COLLECTION_NUMBER = 02",
        f'    FILE_NAME_BAND_4 = "{pid}_B4.TIF"',
        "  END_GROUP = PRODUCT_CONTENTS",
        "  GROUP = IMAGE_ATTRIBUTES",
        '    SPACECRAFT_ID = "LANDSAT_8"',
        f"    DATE_ACQUIRED = {pid[17:21]}-{pid[21:23]}-{pid[23:25]}",
        '    SCENE_CENTER_TIME = "23:58:30.1234560Z"',
        "    SUN_AZIMUTH = 75.12345678",
        f"    SUN_ELEVATION = {sun}",
        "  END_GROUP = IMAGE_ATTRIBUTES",
        "  GROUP = LEVEL1_RADIOMETRIC_RESCALING",
        "    RADIANCE_MULT_BAND_4 = 9.6568E-03",
        *rescaling,
        "  END_GROUP = LEVEL1_RADIOMETRIC_RESCALING",
        "END_GROUP = LANDSAT_METADATA_FILE",
        "END",
    ]
    return "\n".join(line for line in "\n".join(lines).splitlines()
                     if not (drop and line.strip().startswith(drop + " "))) + "\n"


def product_pixels(shape: tuple[int, int], seed: int = 0) -> tuple[dict[str, np.ndarray],
                                                                   np.ndarray]:
    """DNs of bands B1-B7 and a QA_PIXEL band with cloud, shadow and fill (DN 0 in the first 7
    columns, fill with non-zero DNs in the last 7; a 5 px margin leaves 2 of each on GRID)."""
    rng = np.random.default_rng(seed)
    bands = {f"B{n}": rng.integers(1, 40_000, shape, dtype=np.uint16) for n in range(1, 8)}
    for dn in bands.values():
        dn[:, :7] = 0  # outside the footprint
        dn[7, 10:14] = 65_535  # saturated: reflectance > 1, clipped
    bands["B3"][9, 20] = 0  # one band without data at one pixel
    qa = np.full(shape, 1 << 6 | 1 << 1, np.uint16)  # "clear" and "dilated cloud": not used
    qa[:, :7] = 1  # fill
    qa[:, -7:] = 1  # fill with non-zero DNs: no data too
    qa[8:14, 15:30] |= 1 << 3  # cloud
    qa[20:26, 35:45] |= 1 << 4  # cloud shadow
    qa[10:12, 6] |= 1 << 3  # a flag in the fill: no data, not cloud
    return bands, qa


def write_band(path: Path, data: np.ndarray, transform: Affine, crs: str) -> None:
    with rasterio.open(path, "w", driver="GTiff", width=data.shape[1], height=data.shape[0],
                       count=1, dtype=data.dtype, crs=crs, transform=transform) as dst:
        dst.write(data, 1)


def write_product(folder: Path, pid: str, bands: dict[str, np.ndarray], qa: np.ndarray,
                  transform: Affine, crs: str = "EPSG:3031", mtl: str | None = None,
                  suffix: str = "_MTL.txt") -> Path:
    """A Level-1 product folder as EarthExplorer delivers it; returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    for band, dn in bands.items():
        write_band(folder / f"{pid}_{band}.TIF", dn, transform, crs)
    write_band(folder / f"{pid}_QA_PIXEL.TIF", qa, transform, crs)
    text = mtl if mtl is not None else mtl_text(pid)
    if suffix == "_MTL.json":
        text = json.dumps(parse_mtl_text(text, "mtl"))
    (folder / f"{pid}{suffix}").write_text(text)
    return folder


def toa_uint8(dn: np.ndarray, band: str, qa: np.ndarray) -> np.ndarray:
    """The expected value: the brief's formula, written out independently."""
    mult, add = RESCALE[int(band[1:])]
    reflectance = (mult * dn.astype(np.float64) + add) / math.sin(math.radians(SUN))
    value = np.floor(np.clip(reflectance, 0, 1) * 255).astype(np.uint8)
    return np.where((dn == 0) | (qa & 1 == 1), 0, value)


def aligned_product(tmp_path: Path, pid: str = LC08_ID, **kwargs: object
                    ) -> tuple[Path, dict[str, np.ndarray], np.ndarray, tuple[slice, slice]]:
    """A product on the 30 m grid, 5 px larger than GRID on every side (so it is cropped)."""
    shape = (GRID.height + 10, GRID.width + 10)
    bands, qa = product_pixels(shape)
    transform = GRID.transform @ Affine.translation(-5, -5)
    folder = write_product(tmp_path / "scenes" / pid, pid, bands, qa, transform, **kwargs)
    return folder, bands, qa, (slice(5, 5 + GRID.height), slice(5, 5 + GRID.width))


def source(folder: Path) -> LocalFolderSource:
    src = LocalFolderSource(folder, progress=False)
    src.grid("Totten", ROI)
    return src


@pytest.mark.parametrize(("suffix", "bom"), [("_MTL.txt", ""), ("_MTL.json", ""),
                                             ("_MTL.txt", "\ufeff")])  # a byte-order mark too
def test_product_folder_becomes_a_toa_scene_with_its_cloud_mask(tmp_path: Path, suffix: str,
                                                                bom: str) -> None:
    folder, bands, qa, inner = aligned_product(tmp_path, suffix=suffix,
                                               mtl=bom + mtl_text(LC08_ID))
    (scene,) = source(tmp_path / "scenes").scenes("Totten", 2021, GRID, tmp_path / "work")

    assert (scene.sensor, scene.acquired) == ("LC08", dt.date(2022, 1, 5))
    assert scene.scene_id == "LC08_Totten_composite_2022-01-05"
    assert scene.source_ids == (LC08_ID,)
    assert scene.metadata["files"] == [str(folder / f"{LC08_ID}{suffix}")]
    with rasterio.open(scene.path) as out:
        assert (out.count, out.dtypes, out.transform, out.shape) == (
            3, ("uint8",) * 3, GRID.transform, GRID.shape)
        pixels = out.read()
    for index, band in enumerate(SENSORS["LC08"].rgb_bands):  # B4, B3, B2 in that order
        np.testing.assert_array_equal(pixels[index], toa_uint8(bands[band], band, qa)[inner])
    assert (pixels[:, 2, 5:9] == 255).all()  # saturated, clipped to reflectance 1
    assert not pixels[:, :, :2].any() and not pixels[:, :, -2:].any()  # DN 0, fill
    assert pixels[1, 4, 15] == 0 and pixels[0, 4, 15] > 0  # B3 alone has DN 0 there
    cloud = ((qa & 0b11000) != 0) & (qa & 1 == 0)
    with rasterio.open(scene.cloud_mask_path) as msk:
        np.testing.assert_array_equal(msk.read(1), cloud[inner].astype(np.uint8))
    # The merge sees the clouds: usable = present and not cloud or shadow.
    usable, _ = scene_masks(scene, 2021, GRID, tmp_path).rows(0, GRID.height)
    np.testing.assert_array_equal(usable, pixels.any(axis=0) & ~cloud[inner])
    assert scene.valid_fraction == pytest.approx(usable.mean())


@pytest.mark.parametrize("prefix", ["", "./"])  # "./": what `tar -cf X.tar ./*` writes
def test_le07_tar_bundle_in_another_crs_is_reprojected(tmp_path: Path, prefix: str) -> None:
    to_utm = Transformer.from_crs("EPSG:3031", "EPSG:32750", always_xy=True)
    ux, uy = to_utm.transform(X0 + 900, Y0 + 600)  # centred on the ROI
    bands, qa = product_pixels((50, 50), seed=1)
    qa[:] = 0  # all clear, nothing filled except the DN-0 columns
    staging = write_product(tmp_path / "staging", LE07_ID, bands, qa,
                            Affine(30.0, 0, ux - 750, 0, -30.0, uy + 750), "EPSG:32750")
    bundle = tmp_path / "scenes" / f"{LE07_ID}.tar"
    bundle.parent.mkdir()
    with tarfile.open(bundle, "w") as tar:
        for path in sorted(staging.iterdir()):
            tar.add(path, arcname=prefix + path.name)
    (scene,) = source(tmp_path / "scenes").scenes("Totten", 2002, GRID, tmp_path / "work")

    assert (scene.sensor, scene.source_ids) == ("LE07", (LE07_ID,))
    assert scene.metadata["reprojected"] and scene.metadata["resampling"] == "nearest"
    with rasterio.open(scene.path) as out:
        pixels = out.read()
    present = pixels.any(axis=0)
    assert 0.5 < present.mean() < 1  # the rotated UTM footprint covers part of the grid
    for index, band in enumerate(("B3", "B2", "B1")):  # Landsat 7's RGB, never B4
        assert set(np.unique(pixels[index][present])) <= set(
            np.unique(toa_uint8(bands[band], band, qa)))
    with rasterio.open(scene.cloud_mask_path) as msk:
        assert not msk.read(1).any()


def test_produce_maps_a_summer_from_two_cloudy_l1_products(tiny_weights: Path,
                                                          tmp_path: Path) -> None:
    """``produce`` on local:DIR: each product's clouds are filled from the other day."""
    roi = roi_polygon("Totten")
    centre = roi.centroid
    x0, y0 = round(centre.x / 30) * 30 - 32 * 30, round(centre.y / 30) * 30 - 32 * 30
    small = Grid.from_bounds(x0, y0, x0 + 64 * 30, y0 + 64 * 30)

    class SmallWindow(LocalFolderSource):
        """The local source on a 64 × 64 px window of Totten's ROI (segmentation stays fast)."""

        def grid(self, shelf: str, roi_: object) -> Grid:
            super().grid(shelf, roi_)
            return small

    shape = (74, 74)
    transform = small.transform @ Affine.translation(-5, -5)
    ids = ["LC08_L1TP_101107_20220105_20220115_02_T1", "LC08_L1TP_101107_20220121_20220131_02_T1"]
    for pid, cloudy in zip(ids, (slice(5, 25), slice(40, 69)), strict=True):
        bands, qa = product_pixels(shape)
        for dn in bands.values():
            dn[:, :7] = 20_000
        qa[:] = 0
        qa[:, cloudy] = 1 << 3
        write_product(tmp_path / "scenes" / pid, pid, bands, qa, transform)
    assert isinstance(get_source(f"local:{tmp_path / 'scenes'}"), LocalFolderSource)

    options = ProduceOptions(out=tmp_path / "release", weights=tiny_weights, tta=False,
                             device="cpu")
    summary = produce("Totten", [2021], SmallWindow(tmp_path / "scenes", progress=False), options)
    (result,) = summary.results
    assert result.status == "produced", result.message
    record = read_provenance(result.provenance)
    assert sorted(s.acquired.isoformat() for s in record.scenes) == ["2022-01-05", "2022-01-21"]
    assert {s.source_ids for s in record.scenes} == {(i,) for i in ids}
    main = record.main_scene
    assert main.acquired == dt.date(2022, 1, 5) and not record.parameters["single_scene"]
    index_path = result.provenance.parent / result.provenance.name.replace(
        AUXILIARY_SUFFIXES["provenance"], AUXILIARY_SUFFIXES["source_scene"])
    with rasterio.open(index_path) as src:
        index = src.read(1)
    # Columns 0-19 of the window are cloudy on 5 January: they come from 21 January.
    assert len(np.unique(index[:, :20])) == 1 and len(np.unique(index[:, 25:35])) == 1
    assert index[0, 0] != index[0, 30]


@pytest.mark.parametrize(("change", "message"), [
    ({"drop": "REFLECTANCE_ADD_BAND_3"},
     r"_MTL\.txt: field LEVEL1_RADIOMETRIC_RESCALING\.REFLECTANCE_ADD_BAND_3 is missing; TOA "
     r"reflectance = .*sin\(SUN_ELEVATION\).*band B3 \(LC08 RGB bands B4, B3, B2\)"),
    ({"drop": "SUN_ELEVATION"}, r"field IMAGE_ATTRIBUTES\.SUN_ELEVATION is missing"),
    ({"sun": -3.5}, r"SUN_ELEVATION is -3\.5; .*\(0, 90\] degrees"),
    ({"sun": "n/a"}, r"SUN_ELEVATION is 'n/a', not a number"),
    ({"product_id": "LC08_L1TP_101107_20220106_20220115_02_T1"},
     r"LANDSAT_PRODUCT_ID is 'LC08_L1TP_101107_20220106.*but the files are named"),
    ({"missing": "B2"}, rf"band file {LC08_ID}_B2\.TIF is missing; .*B4, B3, B2.*QA_PIXEL"),
    ({"missing": "QA_PIXEL"}, rf"{LC08_ID}_QA_PIXEL\.TIF is missing"),
    ({"missing": "MTL"}, rf"{LC08_ID}_B\d\.TIF: a single band of Level-1 product .*no "
                         rf"{LC08_ID}_MTL\.txt"),
])
def test_bad_products_fail_with_file_field_and_rule(tmp_path: Path, change: dict,
                                                    message: str) -> None:
    missing = change.pop("missing", None)
    folder, *_ = aligned_product(tmp_path, mtl=mtl_text(LC08_ID, **change))
    if missing == "MTL":
        (folder / f"{LC08_ID}_MTL.txt").unlink()
    elif missing:
        (folder / f"{LC08_ID}_{missing}.TIF").unlink()
    with pytest.raises(SourceError, match=message):
        source(tmp_path / "scenes").scenes("Totten", 2021, GRID, tmp_path / "work")
    assert not list(tmp_path.glob("work/**/*.tif"))  # nothing half-written


def test_conversion_is_reused_until_the_product_changes(tmp_path: Path) -> None:
    folder, *_ = aligned_product(tmp_path)
    (first,) = source(tmp_path / "scenes").scenes("Totten", 2021, GRID, tmp_path / "work")
    converted = sorted((tmp_path / "work" / "l1").glob("*.tif"))
    assert [p.name for p in converted] == [f"{LC08_ID}_cloud.tif", f"{LC08_ID}_toa_uint8.tif"]
    stamps = [p.stat().st_mtime_ns for p in converted + [first.path]]
    with rasterio.open(first.path) as out:
        before = out.read()
    (again,) = source(tmp_path / "scenes").scenes("Totten", 2021, GRID, tmp_path / "work")
    assert again == first
    assert [p.stat().st_mtime_ns for p in converted + [first.path]] == stamps
    (folder / f"{LC08_ID}_MTL.txt").write_text(mtl_text(LC08_ID, sun=40.0))
    (changed,) = source(tmp_path / "scenes").scenes("Totten", 2021, GRID, tmp_path / "work")
    with rasterio.open(changed.path) as out:
        after = out.read()
    lit = (before > 2) & (before < 255)
    assert lit.sum() > 1000
    assert (after <= before).all() and (after[lit] < before[lit]).all()  # a higher sun


# --------------------------------------------------------------------------------------------
# The MTL parser: text and JSON forms of the same tree (hypothesis)
# --------------------------------------------------------------------------------------------

names = st.from_regex(r"[A-Z][A-Z0-9_]{0,20}", fullmatch=True).filter(
    lambda n: n not in ("GROUP", "END_GROUP", "END"))
values = st.one_of(
    st.from_regex(r'[A-Za-z0-9 .:/()_+-]{0,30}', fullmatch=True).map(lambda s: f'"{s}"'),
    st.floats(-1e6, 1e6, allow_nan=False).map(lambda f: f"{f:.4E}"),
    st.dates().map(dt.date.isoformat),
    st.integers(0, 99).map(lambda i: f"{i:02d}"),
)
trees = st.recursive(st.dictionaries(names, values, max_size=4),
                     lambda children: st.dictionaries(names, children, min_size=1, max_size=3),
                     max_leaves=12)


def render(tree: dict, depth: int = 0) -> list[str]:
    """ODL lines of a tree, indented two spaces a level, as USGS writes MTL files."""
    pad = "  " * depth
    lines = []
    for key, value in tree.items():
        if isinstance(value, dict):
            lines += [f"{pad}GROUP = {key}", *render(value, depth + 1), f"{pad}END_GROUP = {key}"]
        else:
            lines.append(f"{pad}{key} = {value}")
    return lines


def unquoted(tree: dict) -> dict:
    return {k: unquoted(v) if isinstance(v, dict) else v.strip('"') for k, v in tree.items()}


@settings(max_examples=25, deadline=None)
@given(tree=trees)
def test_mtl_text_and_json_parse_to_the_same_tree(tree: dict) -> None:
    text = "\n".join(render(tree) + ["END"]) + "\n"
    parsed = parse_mtl_text(text, "x_MTL.txt")
    assert parsed == unquoted(tree)
    assert parse_mtl_json(json.dumps(parsed), "x_MTL.json") == parsed


@pytest.mark.parametrize(("text", "message"), [
    ("GROUP = A\n  X = 1\nEND\n", "group A is never closed"),
    ("GROUP = A\nEND_GROUP = B\nEND\n", "END_GROUP = B does not close the open group"),
    ("GROUP = A\n  X = 1\n  X = 2\nEND_GROUP = A\nEND\n", "X appears twice in group A"),
    ("GROUP = A\n  just words\nEND_GROUP = A\n", r"line 2: 'just words' is not 'KEY = VALUE'"),
    ("END\nX = 1\n", "after END"),
])
def test_mtl_syntax_errors_name_file_and_line(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=message) as info:
        parse_mtl_text(text, "/data/p_MTL.txt")
    assert str(info.value).startswith("/data/p_MTL.txt")
