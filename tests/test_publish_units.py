"""The publisher's building blocks: ORCID checksums, metadata rules, reproducible packages,
Zenodo's limits and the request-rate limiter."""

from __future__ import annotations

import dataclasses
import datetime as dt
import email.utils
import json
import os
import shutil
import string
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio
import requests
from hypothesis import given
from hypothesis import strategies as st

from producer.spec import DEMO_SOURCE, RELEASE_METADATA, RELEASE_NOTES, SOURCE_TAG
from producer.writer import read_band
from publish.metadata import (
    build_metadata,
    identifier_scheme,
    metadata_differences,
    metadata_problems,
    orcid_check_char,
    orcid_valid,
)
from publish.package import (
    CATALOG_KEY,
    MANIFEST_KEY,
    PackageError,
    build_packages,
    file_hashes,
    plan_packages,
    safe_key,
    walk_files,
)
from publish.release import (
    PublishRefused,
    check_products_packaged,
    demo_products,
    license_mismatch,
    limit_problems,
    reconcile,
)
from publish.snapshot import ReleaseSnapshot
from publish.writeback import (
    Publication,
    record_catalog,
    update_catalog,
    write_release_notes,
)
from publish.zenodo import RateLimiter, RetryPolicy, retry_after
from tests.publish_support import (
    PAPER_DOI,
    RELEASE_YAML,
    legacy_metadata,
    write_tagged_products,
)
from validation.engine import validate_release

pytest_plugins = ("tests.publish_fixtures",)
TODAY = dt.date(2026, 11, 23)


# ------------------------------------------------------------------ ORCID


@pytest.mark.parametrize("orcid", ["0000-0002-1825-0097", "0000-0001-5109-3700",
                                   "0000-0002-1694-233X"])
def test_published_orcid_examples_are_valid(orcid: str) -> None:
    assert orcid_valid(orcid)


@given(st.text(alphabet=string.digits, min_size=15, max_size=15),
       st.integers(0, 14), st.integers(1, 9))
def test_orcid_check_char_catches_every_single_digit_error(digits: str, pos: int,
                                                           delta: int) -> None:
    orcid = digits + orcid_check_char(digits)
    formatted = "-".join(orcid[i:i + 4] for i in range(0, 16, 4))
    assert orcid_valid(formatted)
    typo = digits[:pos] + str((int(digits[pos]) + delta) % 10) + digits[pos + 1:]
    wrong = typo + orcid_check_char(digits)
    assert not orcid_valid("-".join(wrong[i:i + 4] for i in range(0, 16, 4)))


def test_malformed_orcids_are_invalid() -> None:
    for bad in ("0000-0002-1825-009", "0000000218250097", "https://orcid.org/0000-0002-1825-0097",
                "0000-0002-1825-009x"):
        assert not orcid_valid(bad)


# ------------------------------------------------------------------ metadata


def test_metadata_links_paper_and_previous_version() -> None:
    meta = build_metadata(dict(RELEASE_YAML), "2.0", "10.5281/zenodo.102", TODAY)
    assert meta["upload_type"] == "dataset" and meta["publication_date"] == "2026-11-23"
    relations = {(r["relation"], r["identifier"]) for r in meta["related_identifiers"]}
    assert relations == {("isDocumentedBy", PAPER_DOI),
                         ("isNewVersionOf", "10.5281/zenodo.102")}
    assert "paper_doi" not in meta
    assert metadata_problems(meta, {"1.0"}, "10.5281/zenodo.102") == []


def test_metadata_problems_name_field_and_rule() -> None:
    raw = {**RELEASE_YAML, "upload_type": "software", "keywords": "ice",
           "creators": [{"name": "Xiao Tang"}], "shelf": "Totten"}
    raw.pop("paper_doi")
    raw.pop("license")
    meta = build_metadata(raw, "1.0", None, TODAY)
    meta["related_identifiers"] = [{"identifier": "https://doi.org/10.1/x",
                                    "relation": "cites"}]
    problems = metadata_problems(meta, {"1.0"}, "10.5281/zenodo.9")
    text = "\n".join(problems)
    for expected in ("shelf: unknown key", "license: required", "upload_type: must be 'dataset'",
                     "creators[0].name: 'Xiao Tang' is not 'Family, Given'",
                     "version: '1.0' is already used", "keywords: must be a list",
                     "is not a bare DOI", "no isDocumentedBy link",
                     "no isNewVersionOf link to the previous version 10.5281/zenodo.9"):
        assert expected in text, expected


def test_read_back_accepts_zenodos_spelling_and_catches_real_changes() -> None:
    """What Zenodo's legacy serializer returns for metadata stored as sent compares equal:
    ``"affiliation": null`` for a creator without one, the scheme it detected for a related
    identifier sent without one, the licence id in other case or as ``{"id": …}``. A value
    that really differs is still reported, by field."""
    raw = {**RELEASE_YAML,
           "creators": [{"name": "Tang, Xiao", "affiliation": "University of Bristol",
                         "orcid": "0000-0002-1825-0097"}, {"name": "Bamber, Jonathan"}],
           "related_identifiers": [{"identifier": "10.5194/tc-1-2", "relation": "cites"},
                                   {"identifier": "https://example.org/x",
                                    "relation": "references"}]}
    sent = build_metadata(raw, "1.0", None, TODAY)
    back = legacy_metadata(sent)
    assert back["creators"][1] == {"name": "Bamber, Jonathan", "affiliation": None}
    assert back["related_identifiers"][0]["scheme"] == "doi" and back["license"] == "CC-BY-4.0"
    assert metadata_differences(sent, back) == []
    assert metadata_differences(sent, {**back, "license": {"id": "cc-by-4.0"}}) == []
    assert identifier_scheme("https://example.org/x") == "url"
    lost_orcid = [{**back["creators"][0], "orcid": None}, back["creators"][1]]
    assert metadata_differences(sent, {**back, "creators": lost_orcid}) == ["creators"]
    other = [{**back["related_identifiers"][0], "scheme": "url"},
             back["related_identifiers"][1], *back["related_identifiers"][2:]]
    assert metadata_differences(sent, {**back, "related_identifiers": other,
                                       "license": "cc-by-nc-4.0"}) == [
        "license", "related_identifiers"]


# ------------------------------------------------------------------ packages


def test_packages_are_byte_identical_and_cogs_readable_in_place(pub_release: Path,
                                                                tmp_path: Path) -> None:
    first = build_packages(pub_release, tmp_path / "a", "1.0")
    copy = tmp_path / "copy"
    shutil.copytree(pub_release, copy)  # other mtimes and inode order, same content
    second = build_packages(copy, tmp_path / "b", "1.0")
    assert first.to_json() == second.to_json()
    for name in [e.key for e in first.entries] + [MANIFEST_KEY]:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    entry = first.by_key()["Larsen_B.zip"]
    assert entry.name == "Larsen B" and entry.size == (tmp_path / "a" / entry.key).stat().st_size
    inner = "Larsen B/2001/LE07_Larsen B_2001_damage.tif"
    members = {m.path: m for m in entry.contents}
    assert members[inner].size == (pub_release / inner).stat().st_size
    assert len(entry.sha256) == 64 and len(members[inner].sha256) == 64
    with zipfile.ZipFile(tmp_path / "a" / entry.key) as zf:
        infos = zf.infolist()
        assert [i.filename for i in infos] == sorted(i.filename for i in infos)
        assert {i.compress_type for i in infos} == {zipfile.ZIP_STORED}
        assert {i.date_time for i in infos} == {(1980, 1, 1, 0, 0, 0)}
    with rasterio.open(f"/vsizip/{tmp_path / 'a' / entry.key}/{inner}") as src:
        np.testing.assert_array_equal(src.read(1), read_band(pub_release / inner))
    with zipfile.ZipFile(tmp_path / "a" / CATALOG_KEY) as zf:
        assert "stac/catalog.json" in zf.namelist()
    assert not any(".icedamage-publish" in m.path for e in first.entries for m in e.contents)


def test_unchanged_packages_are_not_rebuilt(pub_release: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    first = build_packages(pub_release, out, "1.0")
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    product = next(pub_release.glob("Totten/2021/*_damage.tif"))
    data = bytearray(product.read_bytes())
    data[-1] ^= 0xFF  # same size, other content, newer mtime
    product.write_bytes(bytes(data))
    second = build_packages(pub_release, out, "1.0")
    rebuilt = {p.name for p in out.iterdir() if p.stat().st_mtime_ns != stamps.get(p.name)}
    assert rebuilt >= {"Totten.zip"} and "Larsen_B.zip" not in rebuilt
    assert first.by_key()["Larsen_B.zip"] == second.by_key()["Larsen_B.zip"]
    assert first.by_key()["Totten.zip"].md5 != second.by_key()["Totten.zip"].md5


def test_a_package_changed_on_disk_is_rebuilt(pub_release: Path, tmp_path: Path) -> None:
    """The build cache trusts a package only while its file is untouched (size and mtime)."""
    out = tmp_path / "out"
    first = build_packages(pub_release, out, "1.0")
    package = out / "Totten.zip"
    data = bytearray(package.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes, newer mtime
    package.write_bytes(bytes(data))
    second = build_packages(pub_release, out, "1.0")
    assert second.by_key()["Totten.zip"] == first.by_key()["Totten.zip"]
    assert file_hashes(package)[1] == first.by_key()["Totten.zip"].md5


def test_a_symlinked_year_folder_is_validated_and_packaged(pub_release: Path,
                                                           tmp_path: Path) -> None:
    """Validator and packager agree on symbolic links: both follow them."""
    store = tmp_path / "store"
    shutil.move(pub_release / "Totten/2016", store)
    (pub_release / "Totten/2016").symlink_to(store, target_is_directory=True)
    report = validate_release(pub_release, workers=1)
    assert report.ok() and report.product_files == 10, report.to_json()
    manifest = build_packages(pub_release, tmp_path / "out", "1.0")
    inside = {m.path for m in manifest.by_key()["Totten.zip"].contents}
    assert {"Totten/2016/LC08_Totten_2016_damage_map.tif",
            "Totten/2016/LC08_Totten_2016_damage.tif"} <= inside
    with zipfile.ZipFile(tmp_path / "out/Totten.zip") as zf:
        assert zf.read("Totten/2016/LC08_Totten_2016_damage.tif") == (
            store / "LC08_Totten_2016_damage.tif").read_bytes()
    check_products_packaged(pub_release, manifest)
    # the local write-back gives the linked year its record hrefs too (as the record's copy)
    pub = Publication(9, "10.5281/zenodo.9", "10.5281/zenodo.8", "1.0", "https://zenodo.org",
                      "A citation", "2026-11-28")
    update_catalog(pub_release, pub, manifest)
    (item,) = (pub_release / "stac").rglob("totten-2016.json")
    assets = json.loads(item.read_text())["assets"]
    assert "Totten.zip/Totten/2016/" in assets["damage_map"]["alternate"]["zenodo"]["href"]
    # a link back up the tree is walked once, not forever
    (store / "up").symlink_to("..", target_is_directory=True)
    assert len([p for p in walk_files(pub_release / "Totten") if p.name.endswith(".tif")]) < 20


def test_a_validated_product_missing_from_the_packages_is_refused(pub_release: Path,
                                                                  tmp_path: Path) -> None:
    manifest = build_packages(pub_release, tmp_path / "out", "1.0")
    shelf = manifest.by_key()["Totten.zip"]
    lacking = dataclasses.replace(shelf, contents=tuple(
        m for m in shelf.contents if "2016" not in m.path))
    partial = dataclasses.replace(manifest, entries=tuple(
        lacking if e.key == shelf.key else e for e in manifest.entries))
    with pytest.raises(PackageError, match="Totten/2016/LC08_Totten_2016_damage"):
        check_products_packaged(pub_release, partial)


def test_demo_tag_of_product_geotiffs(pub_release: Path) -> None:
    """Demo products are found by their GeoTIFF tag when no provenance record says so; untagged
    products (the published v1) and other sources are not demo; a product GeoTIFF that cannot
    be opened refuses publication, naming it."""
    for record in pub_release.rglob("*_provenance.json"):
        record.unlink()
    assert demo_products(pub_release) == []  # untagged: not demo by this check
    write_tagged_products(pub_release, "local")
    assert demo_products(pub_release) == []
    written = write_tagged_products(pub_release, DEMO_SOURCE)
    for path in (written.damage_map, written.damage):
        with rasterio.open(path) as src:
            assert src.tags()[SOURCE_TAG] == DEMO_SOURCE
    assert demo_products(pub_release) == sorted(
        p.relative_to(pub_release).as_posix() for p in (written.damage_map, written.damage))
    # the publisher's hidden state folder is not part of the release
    hidden = pub_release / ".icedamage-publish" / written.damage.name
    hidden.parent.mkdir()
    hidden.write_bytes(b"not a tiff")
    assert len(demo_products(pub_release)) == 2
    broken = next(pub_release.glob("Larsen B/2005/*_damage_map.tif"))
    broken.write_bytes(b"not a tiff")
    with pytest.raises(PublishRefused, match="cannot be read") as refused:
        demo_products(pub_release)
    assert f"product GeoTIFF {broken.relative_to(pub_release).as_posix()}: not readable" \
        in str(refused.value)


def test_license_mismatch_compares_spdx_ids_case_insensitively(pub_release: Path,
                                                               tmp_path: Path) -> None:
    yaml_path = pub_release / RELEASE_METADATA
    assert license_mismatch(pub_release, "CC-BY-4.0", yaml_path) is None
    assert license_mismatch(pub_release, " cc-by-4.0", yaml_path) is None
    why = license_mismatch(pub_release, "cc-by-nc-4.0", yaml_path)
    assert why is not None and "collection.json says 'cc-by-4.0'" in why
    assert f"icedamage catalog {pub_release}`" in why
    # metadata given with --metadata: the catalog does not read it, so name --license
    why = license_mismatch(pub_release, "cc-by-nc-4.0", tmp_path / "elsewhere.yaml")
    assert why is not None and f"icedamage catalog {pub_release} --license cc-by-nc-4.0" in why
    assert license_mismatch(tmp_path, "cc-by-4.0", yaml_path) is None  # no catalog


def test_record_catalog_names_one_record_reproducibly(pub_release: Path,
                                                      tmp_path: Path) -> None:
    """The catalog prepared for a record: earlier write-backs gone, its own DOI in, and the
    same bytes each time (a resumed run finds stac.zip already on the server)."""
    key_map = {spec.name: spec.key for spec in plan_packages(pub_release)}
    old = Publication(7, "10.5072/zenodo.7", "10.5072/zenodo.6", "0.9", "http://sandbox.test",
                      "A rehearsal", "2026-01-01")
    manifest = build_packages(pub_release, tmp_path / "first", "0.9")
    update_catalog(pub_release, old, manifest)  # as a rehearsal leaves it
    pub = dataclasses.replace(old, record_id=9, doi="10.5281/zenodo.9",
                              conceptdoi="10.5281/zenodo.8", base_url="https://zenodo.org")
    built = []
    for name in ("a", "b"):
        work = record_catalog(pub_release, tmp_path / f"catalog-{name}", pub, key_map)
        built.append(build_packages(pub_release, tmp_path / name, "1.0", catalog_root=work))
    assert built[0].by_key()[CATALOG_KEY] == built[1].by_key()[CATALOG_KEY]
    data = (tmp_path / "a" / CATALOG_KEY).read_bytes()
    assert b"sandbox.test" not in data and b"zenodo.7" not in data
    with zipfile.ZipFile(tmp_path / "a" / CATALOG_KEY) as zf:
        assert b"https://zenodo.org/records/9/files/Totten.zip" in zf.read("items.ndjson")
    stripped = record_catalog(pub_release, tmp_path / "catalog-none", None, key_map)
    assert stripped is not None
    for path in stripped.rglob("*.json"):
        assert "sandbox.test" not in path.read_text() and "sci:doi" not in path.read_text()


def test_safe_keys_and_clashes(tmp_path: Path) -> None:
    assert safe_key("Pine Island") == "Pine_Island"
    assert safe_key("Larsen B_ROI.gpkg") == "Larsen_B_ROI.gpkg"
    assert safe_key("Amery_front") == "Amery_front"
    for shelf in ("Larsen B", "Larsen_B"):
        (tmp_path / shelf / "2001").mkdir(parents=True)
        (tmp_path / shelf / "2001" / "x.tif").write_bytes(b"x")
    with pytest.raises(PackageError, match="both map to the key 'Larsen_B.zip'"):
        plan_packages(tmp_path)


def test_only_roi_geopackages_are_packaged(pub_release: Path) -> None:
    """The root GeoPackages that travel are the spec's ROI files (``*_ROI.gpkg``), each in
    its shelf's ZIP; another GeoPackage at the root is no file of the release."""
    (pub_release / "scratch.gpkg").write_bytes(b"x")
    planned = {arcname: spec.key for spec in plan_packages(pub_release)
               for arcname, _ in spec.members if arcname.endswith(".gpkg")}
    assert planned == {"Amery_front_ROI.gpkg": "Amery_front.zip",
                       "Larsen B_ROI.gpkg": "Larsen_B.zip", "Totten_ROI.gpkg": "Totten.zip"}


def test_zenodo_limits() -> None:
    assert limit_problems(100, 50 * 10**9) == []
    assert "101 files exceed Zenodo's limit of 100" in limit_problems(101, 1)[0]
    assert "exceed Zenodo's limit of 50000000000" in limit_problems(3, 50 * 10**9 + 1)[0]


def test_reconcile_keeps_matches_deletes_extras_uploads_rest() -> None:
    remote = {"a.zip": (1, "aa"), "old.gpkg": (2, "bb"), "b.zip": (3, "cc")}
    wanted = {"a.zip": (1, "aa"), "b.zip": (3, "dd"), MANIFEST_KEY: (4, "ee"), "c.zip": (5, "ff")}
    rec = reconcile(remote, wanted)
    assert rec.delete == ("old.gpkg",) and rec.keep == ("a.zip",)
    assert rec.upload == ("b.zip", "c.zip", MANIFEST_KEY)  # manifest last


# ------------------------------------------------------------------ rate limiting


def test_rate_limiter_keeps_under_100_per_minute() -> None:
    now = [0.0]
    policy = RetryPolicy(sleep=lambda s: now.__setitem__(0, now[0] + s))
    limiter = RateLimiter(policy, limit=100, window=60.0, clock=lambda: now[0])
    stamps = []
    for _ in range(250):
        limiter.acquire()
        stamps.append(now[0])
        now[0] += 0.01
    stamps_arr = np.array(stamps)
    assert max(int(np.sum((stamps_arr >= t) & (stamps_arr < t + 60))) for t in stamps) <= 100
    assert stamps[-1] >= 120  # 250 requests need at least two full windows


def test_rate_limiter_waits_for_reset_when_nothing_remains() -> None:
    now = [1000.0]
    policy = RetryPolicy(sleep=lambda s: now.__setitem__(0, now[0] + s))
    limiter = RateLimiter(policy, clock=lambda: now[0])
    limiter.observe({"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "1042"})
    limiter.acquire()
    assert now[0] == pytest.approx(1042.0)


def _answer(status: int, **headers: str) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response.headers.update({k.replace("_", "-"): v for k, v in headers.items()})
    return response


def test_retry_after_reads_seconds_and_http_dates() -> None:
    """RFC 9110 allows Retry-After as seconds or as an HTTP-date; a date must not read as
    "retry at once". What is neither falls back to X-RateLimit-Reset (429) or 0."""
    now = time.time()
    assert retry_after(_answer(503, Retry_After="7")) == 7.0
    assert retry_after(_answer(503, Retry_After="1.5")) == 1.5
    later = email.utils.formatdate(now + 120, usegmt=True)
    assert 110 <= retry_after(_answer(503, Retry_After=later)) <= 120
    assert retry_after(_answer(429, Retry_After="Wed, 21 Oct 2015 07:28:00 GMT")) == 0.0
    assert retry_after(_answer(503, Retry_After="soon")) == 0.0
    assert 40 <= retry_after(_answer(429, Retry_After="inf",
                                     X_RateLimit_Reset=str(int(now) + 50))) <= 50


@given(st.integers(0, 20))
def test_backoff_grows_with_jitter_and_a_cap(attempt: int) -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=120.0)
    cap = min(120.0, 2.0 ** attempt)
    assert cap / 2 <= policy.backoff(attempt) <= cap


# ------------------------------------------------------------------ the emulator itself


def test_emulator_rate_limit_and_quota_answers() -> None:
    import requests

    from tests.publish_support import TOKEN
    from tests.zenodo_emulator import FULL_SCOPES, ZenodoEmulator

    emu = ZenodoEmulator({TOKEN: FULL_SCOPES}, rate_limit=3, max_bytes=10).start()
    try:
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {TOKEN}"
        draft = session.post(f"{emu.base_url}/api/deposit/depositions", json={}).json()
        bucket = draft["links"]["bucket"]
        big = session.put(f"{bucket}/big.bin", data=b"x" * 11)
        assert big.status_code == 400 and big.json()["message"] == "Bucket quota exceeded."
        answers = [session.get(f"{emu.base_url}/api/deposit/depositions") for _ in range(2)]
    finally:
        emu.stop()
    assert [a.status_code for a in answers] == [200, 429]  # the 4th request in the window
    assert answers[0].headers["X-RateLimit-Remaining"] == "0"
    assert int(answers[1].headers["Retry-After"]) >= 1
    assert int(answers[1].headers["X-RateLimit-Reset"]) > 0


def test_a_write_back_killed_before_the_item_index_is_not_taken_as_current(
        pub_release: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Killed after the published catalog is swapped in, before the item index is rewritten:
    the catalog names the record but the index does not. Search refuses the index and
    `icedamage catalog` rebuilds it (keeping the DOI) instead of calling the release up to date;
    a finished write-back (and a record's own copy) leaves an index that is the catalog's."""
    from catalog import build
    from catalog.search import SearchError, search
    from catalog.uncertainty import PAPER_FACTORS
    from producer.spec import ITEMS_NDJSON

    def killed(*_args: object, **_kwargs: object) -> None:
        raise KeyboardInterrupt("killed")

    manifest = build_packages(pub_release, tmp_path / "out", "1.0")
    pub = Publication(9, "10.5281/zenodo.9", "10.5281/zenodo.8", "1.0", "https://zenodo.org",
                      "A citation", "2026-11-28")
    with monkeypatch.context() as patch:
        patch.setattr(build, "write_index", killed)
        with pytest.raises(KeyboardInterrupt):
            update_catalog(pub_release, pub, manifest)
    record_files = "https://zenodo.org/records/9/files/"
    (item,) = (pub_release / "stac").rglob("totten-2016.json")
    assert record_files in item.read_text()
    assert record_files not in (pub_release / ITEMS_NDJSON).read_text()
    with pytest.raises(SearchError, match="icedamage catalog"):
        search(pub_release)
    assert not build.catalog_release(pub_release, PAPER_FACTORS).skipped
    assert record_files in (pub_release / ITEMS_NDJSON).read_text()
    (collection,) = (pub_release / "stac").rglob("collection.json")
    assert json.loads(collection.read_text())["sci:doi"] == pub.doi

    update_catalog(pub_release, pub, manifest)  # finished: searchable and up to date
    [totten] = search(pub_release, shelves=["Totten"], year=2016)
    assert record_files in totten.assets["damage_map"].extra_fields["alternate"]["zenodo"]["href"]
    assert build.catalog_release(pub_release, PAPER_FACTORS).skipped
    key_map = {spec.name: spec.key for spec in plan_packages(pub_release)}
    work = record_catalog(pub_release, tmp_path / "record", pub, key_map)
    assert work is not None and len(search(work)) == len(search(pub_release))


def test_release_notes_list_each_version_once(tmp_path: Path) -> None:
    """Writing a version's section again (a resumed write-back) replaces it where it is; a new
    version goes first."""
    def section(version: str, day: str, doi: str) -> str:
        return f"## Version {version} ({day})\n\n- DOI of this version: {doi}\n"

    write_release_notes(tmp_path, section("1.0", "2026-01-01", "a"))
    write_release_notes(tmp_path, section("1.1", "2026-02-01", "b"))
    write_release_notes(tmp_path, section("1.10", "2026-03-01", "c"))
    write_release_notes(tmp_path, section("1.1", "2026-02-02", "d"), "1.1")
    notes = (tmp_path / RELEASE_NOTES).read_text()
    assert notes.count("## Version 1.1 ") == 1 and "2026-02-02" in notes and ": b" not in notes
    assert [line for line in notes.splitlines() if line.startswith("## ")] == [
        "## Version 1.10 (2026-03-01)", "## Version 1.1 (2026-02-02)",
        "## Version 1.0 (2026-01-01)"]
    assert notes.startswith("# Release notes\n\n") and "\n\n\n" not in notes


def test_snapshot_finds_files_packaged_other_than_validated(pub_release: Path,
                                                            tmp_path: Path) -> None:
    """The snapshot holds every file to package (path, size, sha256); the members hashed while
    zipping are compared with it, so a package the build cache reuses (same size and mtime,
    other bytes) shows, as do files added, removed and a changed catalog copy."""
    snapshot = ReleaseSnapshot.take(pub_release)
    manifest = build_packages(pub_release, tmp_path / "out", "1.0")
    assert not snapshot.packaged_differences(manifest, with_catalog=True)
    assert "Totten/2021/LC08_LC09_Totten_2021_damage.tif" in snapshot.products
    product = next(pub_release.glob("Totten/2021/*_damage.tif"))
    stat = product.stat()
    data = bytearray(product.read_bytes())
    data[-1] ^= 0xFF
    product.write_bytes(bytes(data))
    os.utime(product, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    (pub_release / "Totten/2021/notes.txt").write_text("x")
    next(pub_release.glob("Larsen B/2001/*_provenance.json")).unlink()
    cached = build_packages(pub_release, tmp_path / "out", "1.0")
    assert cached.by_key()["Totten.zip"].contents != manifest.by_key()["Totten.zip"].contents
    differences = snapshot.packaged_differences(cached, with_catalog=True)
    assert differences.changed == (product.relative_to(pub_release).as_posix(),)
    assert differences.extra == ("Totten/2021/notes.txt",)
    assert differences.missing == ("Larsen B/2001/LE07_Larsen B_2001_provenance.json",)
    assert "validate it again" in differences.describe(pub_release)
    key_map = {spec.name: spec.key for spec in plan_packages(pub_release)}
    (collection,) = (pub_release / "stac").rglob("collection.json")
    collection.write_text(collection.read_text() + " ")
    found: list = []
    record_catalog(pub_release, tmp_path / "record", None, key_map,
                   copied=lambda work: found.append(snapshot.catalog_differences(work)))
    assert [d.changed for d in found] == [(collection.relative_to(pub_release).as_posix(),)]
