"""A published record, downloaded and unzipped as a data user would, is the release itself.

Zenodo keys are ASCII ("Larsen B" -> ``Larsen_B.zip``), while the release layout keeps the
shelf's spelling (``Larsen B/…``, ``Larsen B_ROI.gpkg``), and so do the relative hrefs of the
catalog in ``stac.zip``. So every file whose name may hold a space travels inside a ZIP, where
it keeps its name: the ROI GeoPackage of a shelf sits at the root of that shelf's ZIP. Here the
fixture release (with "Larsen B") is published to the emulator on 127.0.0.1, every file of the
record is downloaded over HTTP, the ZIPs are extracted into one folder beside the loose files
(saved under their keys), and ``icedamage validate`` must find a valid release there; the ROI
href written for the record must read the outline over HTTP with GDAL.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path

import geopandas as gpd
import pyogrio
import pystac
import pytest
import requests

from catalog.build import catalog_release
from catalog.gpkg import read_roi
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from producer.spec import ROI_GEOPACKAGE_SUFFIX, roi_geopackage_name
from publish.package import (
    MANIFEST_KEY,
    Manifest,
    PackageSpec,
    build_packages,
    plan_packages,
    read_manifest,
    record_key_map,
    release_file_href,
)
from publish.state import packages_dir
from tests.conftest import STAC_SCHEMAS
from tests.publish_support import publish_args, put_keys, run_cli
from tests.zenodo_emulator import ZenodoEmulator

pytest_plugins = ("tests.publish_fixtures",)

SHELF = "Larsen B"
ROI = roi_geopackage_name(SHELF)  # "Larsen B_ROI.gpkg"
COLLECTION = "stac/antarctic-ice-shelf-surface-damage/collection.json"


def download_record(emulator: ZenodoEmulator, record_id: int, folder: Path) -> dict[str, Path]:
    """Every file of a published record fetched over HTTP as a user would (the record's file
    list from the API, each file from its download URL), checked against Zenodo's md5; key ->
    the file saved under that key."""
    listing = requests.get(f"{emulator.base_url}/api/records/{record_id}", timeout=30)
    listing.raise_for_status()
    folder.mkdir(parents=True)
    saved = {}
    for entry in listing.json()["files"]:
        key = entry["key"]
        answer = requests.get(f"{emulator.base_url}/records/{record_id}/files/{key}",
                              timeout=30)
        answer.raise_for_status()
        assert f"md5:{hashlib.md5(answer.content).hexdigest()}" == entry["checksum"], key
        saved[key] = folder / key
        saved[key].write_bytes(answer.content)
    return saved


def unzip_like_a_user(files: dict[str, Path], target: Path) -> Path:
    """All ZIPs extracted into one folder; every other file put beside them under its key."""
    target.mkdir(parents=True)
    for key, path in sorted(files.items()):
        if key.endswith(".zip"):
            with zipfile.ZipFile(path) as zf:
                zf.extractall(target)
        else:
            (target / key).write_bytes(path.read_bytes())
    return target


def validate(folder: Path) -> tuple[int, str, list[dict]]:
    """``icedamage validate`` with the offline schemas; (exit code, output, problems).

    ``manifest.json``, the record's own index saved beside the unzipped packages, belongs to
    the release root as the validator sees it: nothing is allowed."""
    from typer.testing import CliRunner

    report = folder.parent / f"{folder.name}-report.json"
    result = CliRunner().invoke(build_app(), [
        "validate", str(folder), "--offline", "--schemas", str(STAC_SCHEMAS),
        "--json", str(report)],
        env={"COLUMNS": "200", "NO_COLOR": "1"})
    problems = json.loads(report.read_text())["problems"] if report.is_file() else []
    return result.exit_code, result.output, problems


def errors(problems: list[dict]) -> list[tuple[str, str]]:
    return [(p["rule"], p["file"]) for p in problems if p["severity"] == "error"]


@pytest.fixture
def published(pub_release: Path, emulator: ZenodoEmulator) -> int:
    """The fixture release (with "Larsen B") published as version 1.0; its record id."""
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    [record] = emulator.published()
    return record.id


def test_a_downloaded_and_unzipped_record_is_a_valid_release(
        pub_release: Path, emulator: ZenodoEmulator, published: int, tmp_path: Path) -> None:
    files = download_record(emulator, published, tmp_path / "downloads")
    # Keys stay ASCII: no key of the record holds a space (or anything but [A-Za-z0-9._-]).
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", key) for key in files), sorted(files)
    assert "Larsen_B.zip" in files and "Larsen_B_ROI.gpkg" not in files
    unzipped = unzip_like_a_user(files, tmp_path / "unzipped")
    # The ROI arrives under its real name, byte for byte the release's, and nothing else does.
    assert (unzipped / ROI).read_bytes() == (pub_release / ROI).read_bytes()
    assert not (unzipped / "Larsen_B_ROI.gpkg").exists()
    released = {p.name for p in pub_release.glob(f"*{ROI_GEOPACKAGE_SUFFIX}")}
    assert {p.name for p in unzipped.glob(f"*{ROI_GEOPACKAGE_SUFFIX}")} == released
    # The packaged collection's relative ROI href resolves in the unzipped folder.
    collection = pystac.Collection.from_file(str(unzipped / COLLECTION))
    roi_asset = next(a for a in collection.assets.values() if a.href.endswith(ROI))
    assert Path(roi_asset.get_absolute_href() or "").resolve() == (unzipped / ROI).resolve()
    # ... so the folder is the release: the validator finds no error in it.
    code, output, problems = validate(unzipped)
    assert errors(problems) == [], output
    assert code == 0, output
    assert not any(p["rule"] in ("roi-missing", "layout-stray-file", "asset-missing",
                                 "catalog-link-broken") for p in problems), problems
    # The official outline is there for produce (and anything reading the release) to find.
    local = read_roi(pub_release / ROI)
    assert read_roi(unzipped / ROI).geometry.union_all().equals(local.geometry.union_all())


def test_the_record_roi_href_reads_the_outline_over_http(
        pub_release: Path, emulator: ZenodoEmulator, published: int, tmp_path: Path) -> None:
    """The ROI's alternate href into the record — in the release's catalog after the
    write-back and in the record's own stac.zip — reads the outline in place with GDAL."""
    base = f"{emulator.base_url}/records/{published}/files"
    expected = f"/vsizip//vsicurl/{base}/Larsen_B.zip/{ROI}"
    release_collection = pystac.Collection.from_file(str(pub_release / COLLECTION))
    roi_asset = next(a for a in release_collection.assets.values() if a.href.endswith(ROI))
    assert roi_asset.extra_fields["alternate"]["zenodo"]["href"] == expected
    files = download_record(emulator, published, tmp_path / "downloads")
    with zipfile.ZipFile(files["stac.zip"]) as zf:
        packaged = json.loads(zf.read(COLLECTION))
    [in_record] = [a for a in packaged["assets"].values() if a["href"].endswith(ROI)]
    assert in_record["href"] == f"../../{ROI}"
    assert in_record["alternate"]["zenodo"]["href"] == expected
    local = read_roi(pub_release / ROI)
    pyogrio.set_gdal_config_options({"GDAL_DISABLE_READDIR_ON_OPEN": "EMPTY_DIR"})
    try:
        since = len(emulator.requests)
        remote = pyogrio.read_dataframe(expected)
    finally:
        pyogrio.set_gdal_config_options({"GDAL_DISABLE_READDIR_ON_OPEN": None})
    assert isinstance(remote, gpd.GeoDataFrame) and len(remote) == len(local)
    assert remote.crs == local.crs
    assert remote.geometry.union_all().equals(local.geometry.union_all())
    served = [r for r in emulator.requests[since:]
              if r.path == f"/records/{published}/files/Larsen_B.zip"]
    assert served and all(r.status in (200, 206) for r in served)
    # GDAL read parts of the ZIP with range requests, not the whole shelf ZIP.
    assert any(r.status == 206 for r in served)


def test_each_roi_travels_in_its_shelf_zip(pub_release: Path, tmp_path: Path) -> None:
    """Planning: a shelf's ROI is a root member of its ZIP (no loose GeoPackage keys); the key
    map sends the ROI's name to that ZIP, and an href to it reads inside the ZIP."""
    specs = plan_packages(pub_release)
    by_key: dict[str, PackageSpec] = {s.key: s for s in specs}
    assert not [s.key for s in specs if s.key.endswith(".gpkg")]
    assert (ROI, pub_release / ROI) in by_key["Larsen_B.zip"].members
    assert (roi_geopackage_name("Totten"), pub_release / roi_geopackage_name("Totten")) \
        in by_key["Totten.zip"].members
    key_map = record_key_map(specs)
    assert key_map[SHELF] == key_map[ROI] == "Larsen_B.zip"
    url = "https://zenodo.org/records/7"
    assert release_file_href(url, key_map, ROI) == \
        f"/vsizip//vsicurl/{url}/files/Larsen_B.zip/{ROI}"
    assert release_file_href(url, key_map, "metadata.ods") == f"{url}/files/metadata.ods"
    # A record published before ROIs moved into the shelf ZIPs keeps its loose GeoPackages:
    # its manifest's key map still resolves them (searching an older version in place).
    old = {SHELF: "Larsen_B.zip", ROI: "Larsen_B_ROI.gpkg", "stac": "stac.zip"}
    assert release_file_href(url, old, ROI) == f"{url}/files/Larsen_B_ROI.gpkg"
    # The manifest records the same mapping; a build is reproducible with the ROI inside.
    manifest = read_manifest_after_build(pub_release, tmp_path / "a")
    again = read_manifest_after_build(pub_release, tmp_path / "b")
    assert manifest.key_map[ROI] == "Larsen_B.zip"
    larsen = manifest.by_key()["Larsen_B.zip"]
    assert ROI in {m.path for m in larsen.contents}
    assert larsen.md5 == again.by_key()["Larsen_B.zip"].md5
    with zipfile.ZipFile(tmp_path / "a" / "Larsen_B.zip") as zf:
        assert zf.getinfo(ROI).compress_type == zipfile.ZIP_STORED  # read in place over HTTP
    # The ROI of a shelf without products (the validator only warns) is zipped all the same,
    # so that it too arrives under its real name.
    bare = tmp_path / "bare"
    (bare / "Totten" / "2001").mkdir(parents=True)
    (bare / "Totten" / "2001" / "x.tif").write_bytes(b"x")
    (bare / ROI).write_bytes(b"gpkg")
    planned = {s.key: s.members for s in plan_packages(bare)}
    assert planned == {"Totten.zip": (("Totten/2001/x.tif", bare / "Totten/2001/x.tif"),),
                       "Larsen_B.zip": ((ROI, bare / ROI),)}


def read_manifest_after_build(release: Path, out: Path) -> Manifest:
    build_packages(release, out, "1.0")
    return read_manifest(out)


def test_a_new_version_with_an_roi_changed_sends_that_shelf_only(
        pub_release: Path, emulator: ZenodoEmulator, published: int, tmp_path: Path) -> None:
    """Only what changed is re-uploaded: an ROI changed (here the Totten outline, written
    anew by the catalog) re-sends that shelf's ZIP with the catalog and manifest; the other
    shelves' ZIPs are inherited as they are. The new version, downloaded, is valid too."""
    v1 = emulator.published()[0]
    roi = pub_release / roi_geopackage_name("Totten")
    frame = read_roi(roi)
    frame["geometry"] = frame.geometry.buffer(-30.0)
    roi.unlink()
    frame.to_file(roi, driver="GPKG", layer="roi")
    catalog_release(pub_release, PAPER_FACTORS)
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1",
                                     "--concept-id", str(v1.conceptrecid)))
    assert code == 0, out
    v2 = emulator.published(v1.conceptrecid)[-1]
    sent = set(put_keys(emulator, since))
    assert "Totten.zip" in sent and not sent & {"Larsen_B.zip", "Amery_front.zip"}, sent
    assert sent <= {"Totten.zip", "stac.zip", "metadata.ods", MANIFEST_KEY}, sent
    assert v2.files["Larsen_B.zip"].md5 == v1.files["Larsen_B.zip"].md5
    assert read_manifest(packages_dir(pub_release)).key_map[ROI] == "Larsen_B.zip"
    files = download_record(emulator, v2.id, tmp_path / "v2")
    unzipped = unzip_like_a_user(files, tmp_path / "v2-unzipped")
    assert (unzipped / roi.name).read_bytes() == roi.read_bytes()
    code, output, problems = validate(unzipped)
    assert errors(problems) == [] and code == 0, output
