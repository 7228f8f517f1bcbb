"""Searching a published record in place (``publish.remote``), against the Zenodo emulator on
127.0.0.1: the item index is fetched once and checked, hrefs stream the maps over HTTP."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
import rasterio
from hypothesis import given
from hypothesis import strategies as st

from catalog.search import SearchError, search
from producer.writer import read_band
from publish import zenodo
from publish.package import CATALOG_KEY, MANIFEST_KEY
from publish.remote import (
    ZENODO_URL,
    RecordRef,
    UnverifiedDownload,
    parse_record_ref,
    record_cache_dir,
)
from publish.zenodo import RateLimiter, RetryPolicy, ZenodoClient
from tests.publish_support import TOKEN, publish_args, run_cli
from tests.zenodo_emulator import ZenodoEmulator

pytest_plugins = ("tests.publish_fixtures",)

INNER = "Larsen B/2005/LE07_Larsen B_2005_slc_off_DiffGF_damage_map.tif"


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private icedamage cache, and fetching allowed (the suite runs offline by default)."""
    monkeypatch.setenv("ICEDAMAGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("ICEDAMAGE_OFFLINE", raising=False)
    return tmp_path / "cache"


@pytest.fixture
def published(pub_release: Path, emulator: ZenodoEmulator) -> tuple[Path, str, int]:
    """The fixture release published as version 1.0: (release, record URL, record id)."""
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    [record] = emulator.published()
    return pub_release, f"{emulator.base_url}/records/{record.id}", record.id


@given(record_id=st.integers(1, 10**12))
def test_record_references_parse(record_id: int) -> None:
    zenodo = RecordRef(ZENODO_URL, record_id)
    for text in (f"zenodo:{record_id}", f"10.5281/zenodo.{record_id}",
                 f"https://doi.org/10.5281/zenodo.{record_id}", f"doi:10.5281/zenodo.{record_id}",
                 f"https://zenodo.org/records/{record_id}", f"https://zenodo.org/records/{record_id}/",
                 f"https://zenodo.org/api/records/{record_id}"):
        assert parse_record_ref(text) == zenodo, text
    assert parse_record_ref(f"https://sandbox.zenodo.org/records/{record_id}") == \
        RecordRef("https://sandbox.zenodo.org", record_id)
    for local in (f"records/{record_id}", f"/data/records/{record_id}", "release",
                  f"zenodo-{record_id}", f"10.5281/other.{record_id}"):
        assert parse_record_ref(local) is None, local


def test_a_published_record_is_searched_and_streamed_in_place(
        published: tuple[Path, str, int], emulator: ZenodoEmulator, cache: Path) -> None:
    release, url, record_id = published
    before = len(emulator.requests)
    seen: dict[str, tuple[int, int]] = {}
    [item] = search(url, shelves=["Larsen B"], year=2005,
                    progress=lambda key, done, total: seen.__setitem__(key, (done, total)))
    assert set(seen) == {"manifest.json", "stac.zip"}
    assert all(done == total > 0 for done, total in seen.values())  # the bar reaches its end
    fetched = [r.path for r in emulator.requests[before:]]
    assert fetched == [f"/api/records/{record_id}",
                       f"/api/records/{record_id}/files/manifest.json/content",
                       f"/api/records/{record_id}/files/stac.zip/content"]
    href = item.assets["damage_map"].href
    assert href == f"/vsizip//vsicurl/{url}/files/Larsen_B.zip/{INNER}"
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), rasterio.open(href) as src:
        np.testing.assert_array_equal(src.read(1), read_band(release / INNER))
    # The index is cached: later searches of the record make no request at all.
    before = len(emulator.requests)
    assert [i.id for i in search(url)] == [i.id for i in search(release)]
    assert len(emulator.requests) == before
    assert (record_cache_dir(RecordRef(emulator.base_url, record_id)) / "items.parquet").is_file()


def test_odc_stac_streams_a_time_series_from_the_record(published: tuple[Path, str, int],
                                                      cache: Path) -> None:
    """The README recipe on a record: odc-stac reads the maps inside the shelf ZIP over HTTP."""
    odc_stac = pytest.importorskip("odc.stac")
    release, url, _ = published
    items = search(url, shelves=["Larsen B"])
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        data = odc_stac.load(items, bands=["damage_map"], crs="EPSG:3031", resolution=30,
                             chunks=None)
    cube = data["damage_map"]
    assert cube.sizes["time"] == len(items) == 2
    local = sorted(search(release, shelves=["Larsen B"]), key=lambda i: i.datetime)
    for index, item in enumerate(local):
        np.testing.assert_array_equal(cube.isel(time=index).values,
                                      read_band(Path(item.assets["damage_map"].href)))


def test_published_hrefs_keep_spaces_only_inside_the_zip(published: tuple[Path, str, int],
                                                       cache: Path) -> None:
    """README "Hrefs with spaces": in a record's hrefs the URL part (the shelf ZIP's ASCII key)
    needs no percent-encoding; a space lies only in the member path inside the ZIP, which GDAL
    reads as it is (every asset of Larsen B, whose folder and file names hold one)."""
    release, url, _ = published
    items = search(url, shelves=["Larsen B"])
    assert items
    for item in items:
        for key, asset in item.assets.items():
            href = asset.href
            assert href.startswith("/vsizip//vsicurl/"), (item.id, key, href)
            outer, member = href.removeprefix("/vsizip//vsicurl/").split(".zip/", 1)
            assert quote(outer, safe=":/") == outer, href  # a valid URL as it stands
            assert member.startswith("Larsen B/") and (release / member).is_file()
            with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
                if asset.media_type and "tiff" in asset.media_type:
                    with rasterio.open(href) as src:
                        np.testing.assert_array_equal(src.read(1), read_band(release / member))


def test_the_search_command_takes_a_record_url(published: tuple[Path, str, int],
                                               cache: Path) -> None:
    _, url, _ = published
    code, out = run_cli(["search", url, "--shelf", "larsen b", "--year", "2005",
                         "--format", "hrefs"])
    assert code == 0, out
    assert out.strip().splitlines() == [f"/vsizip//vsicurl/{url}/files/Larsen_B.zip/{INNER}"]


def test_a_concept_record_searches_its_latest_version(published: tuple[Path, str, int],
                                                      emulator: ZenodoEmulator,
                                                      cache: Path) -> None:
    _, _, record_id = published
    [record] = emulator.published()
    [item] = search(f"{emulator.base_url}/records/{record.conceptrecid}", year=2005)
    assert f"/records/{record_id}/files/" in item.assets["damage_map"].href


def test_a_corrupted_download_is_refused_and_not_cached(published: tuple[Path, str, int],
                                                        emulator: ZenodoEmulator,
                                                        cache: Path) -> None:
    _, url, record_id = published
    emulator.add_fault("corrupt", "GET", r"/files/stac\.zip/content$")
    with pytest.raises(SearchError, match=r"stac\.zip/content: MD5 \w+ differs from the record"):
        search(url)
    folder = record_cache_dir(RecordRef(emulator.base_url, record_id))
    assert not folder.exists()
    assert [i.id for i in search(url, year=2005)] == ["larsen-b-2005"]  # the next try works
    (folder / "record.json").unlink()  # a cache damaged by hand is fetched anew, not an error
    assert [i.id for i in search(url, year=2005)] == ["larsen-b-2005"]
    assert (folder / "record.json").is_file()


def test_a_busy_server_is_retried(published: tuple[Path, str, int], emulator: ZenodoEmulator,
                                  cache: Path) -> None:
    _, url, _ = published
    fault = emulator.add_fault("status", "GET", r"/files/manifest\.json/content$", status=503,
                               retry_after=1)
    assert [i.id for i in search(url, year=2005)] == ["larsen-b-2005"]
    assert fault.fired == 1


def test_records_that_cannot_be_searched_say_why(emulator: ZenodoEmulator, cache: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SearchError, match=r"records/999999: HTTP 404"):
        search(f"{emulator.base_url}/records/999999")
    monkeypatch.setenv("ICEDAMAGE_OFFLINE", "1")
    with pytest.raises(SearchError, match="not in the cache, and ICEDAMAGE_OFFLINE=1"):
        search(f"{emulator.base_url}/records/123")


def test_an_unreachable_server_says_what_to_do(cache: Path) -> None:
    """No network (here: nothing listens on the port) is told apart from a missing record, with
    what the user can do instead."""
    import socket

    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SearchError, match=r"could not fetch \(ConnectionError\): no network.*"
                                          r"local release folder.*cache"):
        search(f"http://127.0.0.1:{port}/records/5")


def _foreign_record(emulator: ZenodoEmulator, tmp_path: Path, manifest: bytes,
                    stac: bytes) -> int:
    """Publish a record holding a manifest.json and a stac.zip that are not ours; its id."""
    policy = RetryPolicy(time_scale=0.0005)
    client = ZenodoClient(emulator.base_url, TOKEN, retry=policy, limiter=RateLimiter(policy))
    draft = client.create()
    for key, data in ((MANIFEST_KEY, manifest), (CATALOG_KEY, stac)):
        (tmp_path / key).write_bytes(data)
        client.upload(draft["links"]["bucket"], key, tmp_path / key, len(data))
    client.put_metadata(draft["id"], {"upload_type": "dataset", "title": "another dataset",
                                      "creators": [{"name": "Other, Ann"}], "description": "x",
                                      "publication_date": "2024-01-01"})
    return int(client.publish(draft["id"])["id"])


@pytest.mark.parametrize(("manifest", "stac", "why"), [
    (b'{"files_list": []}', b"PK\x05\x06" + b"\0" * 18, "manifest.json is not an icedamage"),
    (b"\xff\xfe not text", b"PK\x05\x06" + b"\0" * 18, "manifest.json is not an icedamage"),
    (b'{"version": "1", "files": [], "key_map": {}}', b"not a zip",
     "stac.zip is not a readable ZIP"),
], ids=["foreign-manifest", "binary-manifest", "stac-not-a-zip"])
def test_a_record_that_is_no_icedamage_release_says_so(emulator: ZenodoEmulator, cache: Path,
                                                       tmp_path: Path, manifest: bytes,
                                                       stac: bytes, why: str) -> None:
    record_id = _foreign_record(emulator, tmp_path, manifest, stac)
    with pytest.raises(SearchError, match=f"{why}.*not an icedamage release"):
        search(f"{emulator.base_url}/records/{record_id}")
    assert not record_cache_dir(RecordRef(emulator.base_url, record_id)).exists()
    code, out = run_cli(["search", f"{emulator.base_url}/records/{record_id}"])
    assert code != 0 and why in " ".join(out.split()) and "Traceback" not in out


def test_a_listing_without_checksums_warns(published: tuple[Path, str, int], cache: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """A download that cannot be checked is not silently trusted: a warning says so."""
    _, url, _ = published
    real = zenodo.public_record

    def without_checksums(base_url: str, record_id: int | str) -> dict:
        record = real(base_url, record_id)
        for entry in record["files"]:
            entry.pop("checksum", None)
        return record

    monkeypatch.setattr(zenodo, "public_record", without_checksums)
    with pytest.warns(UnverifiedDownload, match="lists no MD5 for manifest.json"):
        assert [i.id for i in search(url, year=2005)] == ["larsen-b-2005"]


def test_stats_of_a_record_equal_the_release_stats(published: tuple[Path, str, int],
                                                   cache: Path, tmp_path: Path) -> None:
    """``icedamage stats <record>``: the Fig. 11 numbers from the record's catalog alone equal
    the ones counted from the release's pixels."""
    from catalog.stats import catalogued_stats, release_stats, stats_close
    from catalog.uncertainty import PAPER_FACTORS

    release, url, _ = published
    counted: list[tuple[int, int]] = []
    local = release_stats(release, PAPER_FACTORS, lambda done, total: counted.append((done, total)))
    assert counted[-1] == (len(local), len(local))  # the bar of the local count ends full
    remote = catalogued_stats(search(url))
    assert [(r.shelf, r.year, r.diffgf_derived) for r in remote] == \
        [(r.shelf, r.year, r.diffgf_derived) for r in local]
    for a, b in zip(remote, local, strict=True):
        assert (a.damage_pixels, a.valid_pixels) == (b.damage_pixels, b.valid_pixels)
        for field in ("damage_area_km2", "damage_fraction", "damage_area_km2_low",
                      "damage_area_km2_high", "damage_fraction_low", "damage_fraction_high"):
            assert stats_close(getattr(a, field), getattr(b, field), rel=1e-6), field
    plot = tmp_path / "fig11.png"
    code, out = run_cli(["stats", url, "--plot", str(plot)])
    assert code == 0, out
    assert plot.stat().st_size > 0 and "Larsen B" in out
