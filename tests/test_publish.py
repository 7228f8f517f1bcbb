"""icedamage publish against the Zenodo emulator: first record, new version, dry run, refusals,
a token without publish rights. Everything goes over HTTP on 127.0.0.1."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pystac
import pystow.config_api
import pytest
import rasterio
import yaml
from zenodo_client import Zenodo

from catalog.build import catalog_release
from catalog.search import search
from catalog.uncertainty import PAPER_FACTORS
from producer.spec import (
    DEMO_SOURCE,
    RELEASE_METADATA,
    RELEASE_NOTES,
    SOURCE_TAG,
    roi_geopackage_name,
)
from producer.writer import read_band
from publish.package import MANIFEST_KEY, read_manifest
from publish.state import load_state, packages_dir, save_state
from publish.zenodo import public_record
from tests.publish_support import (
    PAPER_DOI,
    RELEASE_YAML,
    TOKEN,
    WRITE_ONLY_TOKEN,
    all_text_files,
    change_shelf,
    make_demo,
    manifest_files,
    other_concept,
    publish_args,
    put_keys,
    run_cli,
    server_files,
    stac_zip_collection,
    stac_zip_references,
    token_client,
    tree_digest,
    withdraw_shelf,
    write_tagged_products,
)
from tests.zenodo_emulator import FULL_SCOPES, ZenodoEmulator

#: The emulator and release fixtures live beside the helpers.
pytest_plugins = ("tests.publish_fixtures",)


def test_first_publication(pub_release: Path, emulator: ZenodoEmulator, tmp_path: Path) -> None:
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    [record] = emulator.published()
    # The record holds exactly the manifest: one stored ZIP per shelf (its ROI GeoPackage
    # inside, under its real name), catalog, metadata.ods.
    assert server_files(emulator, record.id) == manifest_files(pub_release)
    assert set(server_files(emulator, record.id)) == {
        "Amery_front.zip", "Larsen_B.zip", "Totten.zip", "stac.zip", "metadata.ods",
        MANIFEST_KEY}
    manifest = read_manifest(packages_dir(pub_release))
    assert manifest.key_map["Larsen B"] == "Larsen_B.zip"
    assert manifest.key_map[roi_geopackage_name("Larsen B")] == "Larsen_B.zip"
    # Metadata as Zenodo stored it: links to the paper, version, dataset.
    meta = record.metadata
    assert meta["upload_type"] == "dataset" and meta["version"] == "1.0"
    assert {"identifier": PAPER_DOI, "relation": "isDocumentedBy",
            "resource_type": "publication-article", "scheme": "doi"} \
        in meta["related_identifiers"]
    # A COG downloaded inside its ZIP is readable in place (stored, not deflated).
    zipped = tmp_path / "Larsen_B.zip"
    zipped.write_bytes(record.files["Larsen_B.zip"].data)
    inner = "Larsen B/2005/LE07_Larsen B_2005_slc_off_DiffGF_damage_map.tif"
    with zipfile.ZipFile(zipped) as zf:
        assert zf.getinfo(inner).compress_type == zipfile.ZIP_STORED
    with rasterio.open(f"/vsizip/{zipped}/{inner}") as src:
        np.testing.assert_array_equal(src.read(1), read_band(pub_release / inner))
    # Write-back: DOI, citation and cite-as on the collection, alternate hrefs on assets.
    catalog = pystac.Catalog.from_file(str(pub_release / "stac" / "catalog.json"))
    [collection] = list(catalog.get_all_collections())
    doi = f"10.5281/zenodo.{record.id}"
    assert collection.extra_fields["sci:doi"] == doi
    assert "Version 1.0" in collection.extra_fields["sci:citation"]
    assert [link.href for link in collection.links if link.rel == "cite-as"] == \
        [f"https://doi.org/{doi}"]
    asset = next(a for item in catalog.get_items(recursive=True) for a in item.assets.values()
                 if a.href.endswith(Path(inner).name))
    assert asset.extra_fields["alternate"]["zenodo"]["href"] == (
        f"/vsizip//vsicurl/{emulator.base_url}/records/{record.id}/files/Larsen_B.zip/{inner}")
    # ... and that href reads the COG in place over HTTP (range requests into the ZIP).
    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"), \
            rasterio.open(asset.extra_fields["alternate"]["zenodo"]["href"]) as src:
        np.testing.assert_array_equal(src.read(1), read_band(pub_release / inner))
    # ... and search results (read from items.parquet / items.ndjson) carry it as well.
    [found] = [a for item in search(pub_release, shelves=["Larsen B"], year=2005)
               for a in item.assets.values() if a.href.endswith(Path(inner).name)]
    assert found.extra_fields["alternate"] == asset.extra_fields["alternate"]
    ranged = [r for r in emulator.requests if r.path.startswith(f"/records/{record.id}/files/")]
    assert ranged and all(r.status in (200, 206) for r in ranged)
    gpkg = next(a for a in collection.assets.values() if a.href.endswith("Larsen B_ROI.gpkg"))
    assert gpkg.extra_fields["alternate"]["zenodo"]["href"] == (
        f"/vsizip//vsicurl/{emulator.base_url}/records/{record.id}/files/Larsen_B.zip/"
        "Larsen B_ROI.gpkg")
    notes = (pub_release / RELEASE_NOTES).read_text()
    assert f"https://doi.org/{doi}" in notes and f"zenodo.{record.conceptrecid}" in notes
    state = load_state(pub_release)
    assert state is not None and state.stage == "published" and state.doi == doi
    # The token travels only in the Authorization header, never in output or any file.
    assert {r.auth for r in emulator.requests if r.path.startswith("/api/")} == {"bearer"}
    assert TOKEN not in out
    leaks = [p for p, data in all_text_files(pub_release) if TOKEN.encode() in data]
    assert leaks == []
    # Running again is safe: nothing left to do, no request that changes anything.
    before = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0 and "already published" in out
    assert not [r for r in emulator.requests[before:] if r.mutating]


def test_a_publication_hashes_each_release_file_once(pub_release: Path,
                                                     emulator: ZenodoEmulator,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The snapshot of what is validated and the validator's checksums share one read of each
    file (a whole dataset is hundreds of gigabytes); only zipping reads it again."""
    from collections import Counter

    from producer import provenance

    reads: Counter[str] = Counter()
    real = provenance._sha256_of

    def counted(path: Path) -> str:
        reads[str(Path(path).resolve())] += 1
        return real(path)

    monkeypatch.setattr(provenance, "_sha256_of", counted)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    products = [str(p.resolve()) for p in pub_release.rglob("*_damage*.tif")]
    assert products and all(reads[p] == 1 for p in products), reads


def test_new_version_with_one_shelf_changed(pub_release: Path, emulator: ZenodoEmulator) -> None:
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    [v1] = emulator.published()
    change_shelf(pub_release)
    withdraw_shelf(pub_release, "Amery_front")
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1",
                                     "--concept-id", str(v1.conceptrecid)))
    assert code == 0, out
    v1_again, v2 = emulator.published(v1.conceptrecid)
    assert v1_again.id == v1.id and v2.conceptrecid == v1.conceptrecid
    # Of the shelves only the changed one is re-uploaded (with the rebuilt catalog, the table
    # and the manifest); the inherited files of the withdrawn shelf are deleted.
    sent = set(put_keys(emulator, since))
    assert {k for k in sent if k.endswith(".zip") and k != "stac.zip"} == {"Totten.zip"}
    assert sent <= {"Totten.zip", "stac.zip", "metadata.ods", MANIFEST_KEY}
    deletes = [r.path for r in emulator.requests[since:] if r.method == "DELETE"]
    assert sorted(p.rsplit("/", 1)[-1] for p in deletes) == ["Amery_front.zip"]
    assert server_files(emulator, v2.id) == manifest_files(pub_release)
    assert server_files(emulator, v2.id)["Larsen_B.zip"] == server_files(emulator,
                                                                         v1.id)["Larsen_B.zip"]
    assert server_files(emulator, v1.id)["Totten.zip"] != server_files(emulator,
                                                                       v2.id)["Totten.zip"]
    related = v2.metadata["related_identifiers"]
    assert {"identifier": f"10.5281/zenodo.{v1.id}", "relation": "isNewVersionOf",
            "resource_type": "dataset", "scheme": "doi"} in related
    # Why we resolve the latest version ourselves: zenodo-client reads the id out of
    # links.latest, which on today's Zenodo names the record itself, not the latest version.
    reader = Zenodo(access_token="unused")
    reader.api_base = emulator.base_url + "/api"
    assert reader.get_latest_record(v1.id, authenticate=False) == str(v1.id)  # stale
    assert public_record(emulator.base_url, v1.conceptrecid)["id"] == v2.id  # concept → latest
    notes = (pub_release / RELEASE_NOTES).read_text()
    assert notes.index("Version 1.1") < notes.index("Version 1.0")
    assert "changed Totten.zip" in notes and "removed Amery_front.zip" in notes
    assert "inside: removed Amery_front/2012/" in notes
    # The same version string cannot be published twice.
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--concept-id",
                                     str(v1.conceptrecid), "--dry-run"))
    assert code == 0  # state says 1.1 is published: nothing to do
    shutil.rmtree(pub_release / ".icedamage-publish")
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--concept-id",
                                     str(v1.conceptrecid)))
    assert code == 2 and "version: '1.0' is already used" in out


def test_each_record_catalog_names_that_record_only(pub_release: Path,
                                                   emulator: ZenodoEmulator) -> None:
    """A re-catalog carries the 1.0 write-back over, yet the 1.1 record's stac.zip (STAC, items
    tables) cites 1.1's own DOI (reserved for the draft) and points into 1.1 only."""
    assert run_cli(publish_args(pub_release, emulator, "1.0", "--new"))[0] == 0
    [v1] = emulator.published()
    assert stac_zip_references(v1.files["stac.zip"].data) == (
        {v1.id, v1.conceptrecid}, {emulator.base_url})
    change_shelf(pub_release)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--concept-id",
                                     str(v1.conceptrecid)))
    assert code == 0, out
    v2 = emulator.published()[-1]
    data = v2.files["stac.zip"].data
    assert stac_zip_references(data) == ({v2.id, v2.conceptrecid}, {emulator.base_url})
    collection = stac_zip_collection(data)
    assert collection["sci:doi"] == f"10.5281/zenodo.{v2.id}"
    assert "Version 1.1" in collection["sci:citation"]
    assert [link["href"] for link in collection["links"] if link["rel"] == "cite-as"] == [
        f"https://doi.org/10.5281/zenodo.{v2.id}"]
    # the record's catalog equals the local one after the write-back, item tables included
    local = json.loads((pub_release / "stac/antarctic-ice-shelf-surface-damage/"
                        "collection.json").read_text())
    assert local["sci:doi"] == collection["sci:doi"]
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.read("items.ndjson") == (pub_release / "items.ndjson").read_bytes()


def test_rehearsal_on_a_test_server_does_not_leak_into_the_real_record(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    """A sandbox run writes its record into the local catalog; the real record must not name
    the sandbox server anywhere (links, DOI, asset alternates, item tables)."""
    sandbox = ZenodoEmulator({TOKEN: FULL_SCOPES}, owners={TOKEN: "tang"}).start()
    try:
        assert run_cli(publish_args(pub_release, sandbox, "1.0", "--new"))[0] == 0
    finally:
        sandbox.stop()
    assert sandbox.base_url in (pub_release / "items.ndjson").read_text()
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    [record] = emulator.published()
    ids, servers = stac_zip_references(record.files["stac.zip"].data)
    assert servers == {emulator.base_url} and ids == {record.id, record.conceptrecid}
    assert sandbox.base_url not in (pub_release / "items.ndjson").read_text()


def test_url_spellings_of_one_server_are_one_server(pub_release: Path,
                                                    emulator: ZenodoEmulator) -> None:
    """A trailing slash or upper-case host: hrefs without "//", and the same publication."""
    loud = emulator.base_url.replace("http://", "HTTP://") + "/"
    code, out = run_cli(["publish", str(pub_release), "--version", "1.0", "--new",
                         "--url", loud])
    assert code == 0, out
    [record] = emulator.published()
    texts = [p.read_text() for p in (pub_release / "stac").rglob("*.json")]
    texts.append((pub_release / RELEASE_NOTES).read_text())
    assert not [t for t in texts if "//records/" in t]
    assert f"{emulator.base_url}/records/{record.id}" in texts[-1]
    state = load_state(pub_release)
    assert state is not None and state.base_url == emulator.base_url
    state.base_url += "/"  # as a state file written before URLs were normalised
    save_state(pub_release, state)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0 and "already published" in out
    assert len(emulator.published()) == 1 and not emulator.drafts()
    code, out = run_cli(["publish", str(pub_release), "--version", "1.0", "--new",
                         "--url", "zenodo.org"])
    assert code == 2 and "--url" in out and "not a base URL" in out


def test_dry_run_changes_nothing(pub_release: Path, emulator: ZenodoEmulator) -> None:
    assert run_cli(publish_args(pub_release, emulator, "1.0", "--new"))[0] == 0
    [v1] = emulator.published()
    change_shelf(pub_release)
    shutil.rmtree(pub_release / ".icedamage-publish")  # as on another machine
    before_tree = tree_digest(pub_release)
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--concept-id",
                                     str(v1.conceptrecid), "--dry-run"))
    assert code == 0, out
    assert not [r for r in emulator.requests[since:] if r.mutating]
    assert tree_digest(pub_release) == before_tree
    assert f"/api/deposit/depositions/{v1.id}/actions/newversion" in out
    assert "Totten.zip" in out and "changed Totten.zip" in out
    assert "inside: changed Totten/2021/LC08_LC09_Totten_2021_damage.tif" in out
    assert "inside: changed Totten/2016" not in out
    assert "PUT" in out and "Larsen_B.zip (" not in out  # unchanged shelf not re-uploaded
    unchanged = next(line for line in out.splitlines() if "unchanged" in line)
    assert "Amery_front.zip" in unchanged and "Larsen_B.zip" in unchanged
    assert len(emulator.published()) == 1 and not emulator.drafts()


def test_token_without_publish_rights_leaves_verified_draft(pub_release: Path,
                                                            emulator: ZenodoEmulator) -> None:
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"),
                        env={"ZENODO_TOKEN": WRITE_ONLY_TOKEN})
    assert code == 1
    assert "may not publish (403" in out and "verified draft" in out
    assert WRITE_ONLY_TOKEN not in out
    [draft] = emulator.drafts()
    assert f"/deposit/{draft.id}" in " ".join(out.split())
    assert server_files(emulator, draft.id) == manifest_files(pub_release)
    assert draft.metadata["version"] == "1.0" and not emulator.published()
    assert load_state(pub_release).stage == "verified"  # type: ignore[union-attr]
    # With a token allowed to publish, --resume publishes that same draft: nothing re-sent.
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--resume"))
    assert code == 0, out
    assert [d.id for d in emulator.published()] == [draft.id]
    assert put_keys(emulator, since) == []


def test_demo_release_refused_on_zenodo(pub_release: Path, emulator: ZenodoEmulator) -> None:
    make_demo(pub_release)
    code, out = run_cli(["publish", str(pub_release), "--version", "1.0", "--new"])
    assert code == 2 and "demo" in out and "--sandbox" in out
    # ... but the workflow can be tried against a test server.
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"))
    assert code == 0, out


@pytest.mark.parametrize("url", ["https://zenodo.org", "https://zenodo.org/",
                                 "https://www.zenodo.org", "HTTPS://Zenodo.org."])
def test_demo_release_refused_however_zenodo_is_spelled(pub_release: Path, url: str) -> None:
    """--url naming the production server is production: demo products are refused (locally,
    before any request)."""
    make_demo(pub_release)
    code, out = run_cli(["publish", str(pub_release), "--version", "1.0", "--new",
                         "--url", url, "--dry-run"])
    assert code == 2 and "demo" in out, out


def test_provenance_this_version_cannot_parse_still_counts_as_demo(
        release: Path, emulator: ZenodoEmulator) -> None:
    """A demo record with a field this version does not know (read_provenance raises) is still
    demo; one whose source cannot be read at all refuses publication, naming the file."""
    (release / RELEASE_METADATA).write_text(yaml.safe_dump(RELEASE_YAML, sort_keys=False))
    records = sorted(release.rglob("*_provenance.json"))
    data = json.loads(records[0].read_text())
    records[0].write_text(json.dumps({**data, "source": "demo", "demo": True,
                                      "notes": "a field of a newer version"}))
    code, out = run_cli(["publish", str(release), "--version", "1.0", "--new"])
    assert code == 2 and "demo" in out and "--sandbox" in out, out
    records[1].write_text("{not json")
    code, out = run_cli(publish_args(release, emulator, "1.0", "--new"))
    flat = " ".join(out.split())
    assert code == 2 and "cannot be read" in flat, out
    assert records[1].relative_to(release).as_posix() in flat
    assert emulator.requests == [] and not (release / "stac").exists()


@pytest.mark.parametrize("url", ["https://zenodo.org", "https://www.zenodo.org/"])
def test_demo_products_refused_on_zenodo_without_provenance(
        pub_release: Path, emulator: ZenodoEmulator, url: str) -> None:
    """The products' own GeoTIFF tag marks demo data: a release trimmed of its provenance
    records is refused for the production server exactly as with them, naming the files."""
    written = write_tagged_products(pub_release, DEMO_SOURCE)
    for record in pub_release.rglob("*_provenance.json"):
        record.unlink()
    catalog_release(pub_release, PAPER_FACTORS)
    assert not list(pub_release.rglob("*_provenance.json"))
    code, out = run_cli(["publish", str(pub_release), "--version", "1.0", "--new", "--url", url,
                         "--dry-run"], env={"ICEDAMAGE_ZENODO_ATTEMPTS": "1"})
    flat = " ".join(out.split())
    assert code == 2 and "demo" in flat and "--sandbox" in flat, out
    assert "2 file(s)" in flat and f"{SOURCE_TAG}={DEMO_SOURCE}" in flat
    for path in (written.damage_map, written.damage):
        assert path.relative_to(pub_release).as_posix() in flat
    # ... while a test server may still rehearse the workflow with them.
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"))
    assert code == 0, out


def test_catalog_license_must_match_the_record_license(pub_release: Path,
                                                       emulator: ZenodoEmulator) -> None:
    """README order: catalog first, release.yaml (here: its license changed) afterwards. The
    record and its stac.zip must not state different licenses: refused until re-cataloged."""
    meta = yaml.safe_load((pub_release / RELEASE_METADATA).read_text())
    (pub_release / RELEASE_METADATA).write_text(
        yaml.safe_dump({**meta, "license": "cc-by-nc-4.0"}, sort_keys=False))
    for extra in ([], ["--dry-run"]):
        code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", *extra))
        flat = " ".join(out.split())
        assert code == 2 and "license mismatch" in flat, out
        assert f"{pub_release / RELEASE_METADATA} gives Zenodo the license 'cc-by-nc-4.0'" \
            in flat
        assert "collection.json says 'cc-by-4.0'" in flat
        assert f"icedamage catalog {pub_release}" in flat
    assert not emulator.mutating_requests() and not emulator.published()
    # `icedamage catalog` takes the license from release.yaml: then both say the same.
    catalog_release(pub_release, PAPER_FACTORS)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    [record] = emulator.published()
    assert record.metadata["license"] == "cc-by-nc-4.0"
    assert stac_zip_collection(record.files["stac.zip"].data)["license"] == "cc-by-nc-4.0"


def test_second_new_is_refused_once_a_concept_is_published(pub_release: Path,
                                                          emulator: ZenodoEmulator) -> None:
    """--new for the next version would start an unrelated record: refused, naming the concept
    and how to publish a new version; another server may still get its own record."""
    assert run_cli(publish_args(pub_release, emulator, "1.0", "--new"))[0] == 0
    [v1] = emulator.published()
    since = len(emulator.requests)
    for extra in ([], ["--dry-run"]):
        code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--new", *extra))
        flat = " ".join(out.split())
        assert code == 2, out
        assert f"version 1.0 to {emulator.base_url} as concept {v1.conceptrecid}" in flat
        assert f"zenodo.{v1.conceptrecid}" in flat and "without --new" in flat
        assert f"--concept-id {v1.conceptrecid}" in flat
    assert emulator.requests[since:] == [] and len(emulator.published()) == 1
    # Without --new the saved concept gets the new version.
    code, out = run_cli(publish_args(pub_release, emulator, "1.1"))
    assert code == 0, out
    assert [v.conceptrecid for v in emulator.published()] == [v1.conceptrecid] * 2
    # Another server (a sandbox rehearsal, say) is not that concept's server: --new is fine.
    other = ZenodoEmulator({TOKEN: FULL_SCOPES}, owners={TOKEN: "tang"}).start()
    try:
        # the saved concept is the first server's: not assumed for another one
        code, out = run_cli(publish_args(pub_release, other, "1.1"))
        assert code == 2 and "give --concept-id ID" in out and not other.mutating_requests(), out
        code, out = run_cli(publish_args(pub_release, other, "1.1", "--new"))
        assert code == 0, out
        assert len(other.published()) == 1
    finally:
        other.stop()


def test_a_rehearsal_elsewhere_does_not_make_production_forget_its_concept(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    """A sandbox rehearsal of the next version replaces state.json; production still knows
    its concept: the next version goes there without options, and --new stays refused."""
    assert run_cli(publish_args(pub_release, emulator, "1.0", "--new"))[0] == 0
    [v1] = emulator.published()
    sandbox = ZenodoEmulator({TOKEN: FULL_SCOPES}, owners={TOKEN: "tang"}).start()
    try:
        code, out = run_cli(publish_args(pub_release, sandbox, "1.1", "--new"))  # rehearsal
        assert code == 0, out
    finally:
        sandbox.stop()
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--new"))
    assert code == 2 and f"as concept {v1.conceptrecid}" in " ".join(out.split()), out
    code, out = run_cli(publish_args(pub_release, emulator, "1.1"))
    assert code == 0, out
    assert [v.conceptrecid for v in emulator.published()] == [v1.conceptrecid] * 2


def test_invalid_release_refused_before_any_request(pub_release: Path,
                                                    emulator: ZenodoEmulator) -> None:
    product = next(pub_release.glob("Totten/2021/*_damage_map.tif"))
    product.rename(product.with_name(product.name.replace("LC08_LC09", "LC09_LC08")))
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 2 and "validator found" in out
    assert emulator.requests == []


def test_bad_metadata_refused_with_field_and_rule(pub_release: Path,
                                                  emulator: ZenodoEmulator) -> None:
    text = (pub_release / "release.yaml").read_text()
    bad = text.replace("0000-0002-1825-0097", "0000-0002-1825-0098").replace(
        "Bamber, Jonathan", "Jonathan Bamber")
    (pub_release / "release.yaml").write_text(bad)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    flat = " ".join(out.split())
    assert code == 2
    assert "creators[0].orcid" in flat and "mod 11-2" in flat
    assert "creators[1].name: 'Jonathan Bamber' is not 'Family, Given'" in flat
    assert not emulator.mutating_requests()


def test_missing_token_is_a_clear_error(pub_release: Path, emulator: ZenodoEmulator,
                                        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PYSTOW_CONFIG_HOME", str(tmp_path / "no-config"))
    monkeypatch.delenv("ZENODO_API_TOKEN", raising=False)
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"),
                        env={"ZENODO_TOKEN": ""})
    assert code == 2 and "ZENODO_TOKEN" in out and emulator.requests == []
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"),
                        env={"ZENODO_TOKEN": "wrong-token"})
    assert code == 2 and "refused the token (401)" in out
    assert "wrong-token" not in out
    # The config file zenodo-client reads works too (pystow caches it once per process).
    pystow.config_api._get_cfp.cache_clear()
    (tmp_path / "no-config").mkdir(exist_ok=True)
    (tmp_path / "no-config" / "zenodo.ini").write_text(f"[zenodo]\napi_token = {TOKEN}\n")
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"),
                        env={"ZENODO_TOKEN": ""})
    assert code == 0, out
    assert json.dumps([r.query for r in emulator.requests]).find("wrong-token") == -1


@pytest.mark.parametrize(("variable", "value"), [
    ("ICEDAMAGE_ZENODO_ATTEMPTS", "lots"), ("ICEDAMAGE_ZENODO_ATTEMPTS", "0"),
    ("ICEDAMAGE_ZENODO_ATTEMPTS", "2.5"), ("ICEDAMAGE_ZENODO_TIME_SCALE", "fast")])
def test_garbled_retry_settings_are_a_clear_error(pub_release: Path, emulator: ZenodoEmulator,
                                                  variable: str, value: str) -> None:
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"),
                        env={variable: value})
    assert code == 2 and f"{variable}={value!r}" in out and "Traceback" not in out
    assert emulator.requests == []


def test_blank_retry_settings_mean_the_defaults(pub_release: Path,
                                                emulator: ZenodoEmulator) -> None:
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"),
                        env={"ICEDAMAGE_ZENODO_ATTEMPTS": " "})
    assert code == 0, out


def test_zenodo_client_against_the_emulator_keeps_inherited_files(
        emulator: ZenodoEmulator, tmp_path: Path) -> None:
    """The emulator speaks the API zenodo-client was written for (access_token in the query),
    and shows why publishing goes through our client: a new version made with zenodo-client
    still holds every file of the previous one."""
    old, new = tmp_path / "Amery_front.zip", tmp_path / "Totten.zip"
    old.write_bytes(b"withdrawn shelf")
    new.write_bytes(b"new shelf")
    client = Zenodo(access_token=TOKEN)
    client.api_base = emulator.base_url + "/api"
    client.depositions_base = client.api_base + "/deposit/depositions"
    data = {"metadata": {"title": "t", "upload_type": "dataset", "description": "d",
                         "creators": [{"name": "Tang, Xiao"}], "version": "1"}}
    first = client.create(data, [old]).json()
    client.update(str(first["id"]), [new])
    latest = emulator.published()[-1]
    assert latest.id != first["id"]
    assert sorted(latest.files) == ["Amery_front.zip", "Totten.zip"]  # nothing was deleted
    assert {r.auth for r in emulator.requests} == {"query"}


def test_a_draft_published_outside_with_other_files_is_not_written_back(
        pub_release: Path, emulator: ZenodoEmulator) -> None:
    """A verified draft that a co-author changed and published in Zenodo's web pages: --resume
    compares the record's files with the manifest (the publish gate) before any write-back,
    and stops naming the file that differs; nothing local points into that record."""
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--no-publish"))
    assert code == 0, out
    [draft] = emulator.drafts()
    coauthor = token_client(emulator)
    coauthor.delete_file(coauthor.deposition(draft.id)["links"]["bucket"], "metadata.ods")
    coauthor.publish(draft.id)
    stac_before = tree_digest(pub_release / "stac")
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--resume"))
    flat = " ".join(out.split())
    assert code == 1, out
    assert f"deposition {draft.id} is published, but its files differ from the manifest" in flat
    assert "(missing: metadata.ods)" in flat and "not written into the STAC catalog" in flat
    assert tree_digest(pub_release / "stac") == stac_before
    assert not (pub_release / RELEASE_NOTES).exists()
    assert load_state(pub_release).stage != "published"  # type: ignore[union-attr]
    assert not (pub_release / ".icedamage-publish/concepts.json").exists()


def test_another_concept_is_refused_for_this_release(pub_release: Path,
                                                    emulator: ZenodoEmulator,
                                                    tmp_path: Path) -> None:
    """--concept-id of an unrelated record of the same account would publish with a wrong
    isNewVersionOf: refused against the unfinished run's concept (state.json) and against the
    concept this release published (concepts.json), before any change on the server."""
    foreign = other_concept(emulator, tmp_path)
    assert run_cli(publish_args(pub_release, emulator, "1.0", "--new"))[0] == 0
    [v1] = [d for d in emulator.published() if d.conceptrecid != foreign]
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--no-publish"))
    assert code == 0, out
    [draft] = emulator.drafts()
    since = len(emulator.requests)
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--concept-id",
                                     str(foreign), "--resume"))
    flat = " ".join(out.split())
    assert code == 2, out
    assert f"belongs to concept {v1.conceptrecid}" in flat and "state.json" in flat
    assert f"--concept-id {v1.conceptrecid}" in flat
    assert not [r for r in emulator.requests[since:] if r.mutating]
    code, out = run_cli(publish_args(pub_release, emulator, "1.1", "--concept-id",
                                     str(v1.conceptrecid), "--resume"))
    assert code == 0, out
    assert emulator.depositions[draft.id].submitted
    related = emulator.depositions[draft.id].metadata["related_identifiers"]
    assert [r["identifier"] for r in related if r["relation"] == "isNewVersionOf"] == [
        f"10.5281/zenodo.{v1.id}"]
    # a fresh run (no state of an unfinished one): concepts.json names this release's concept
    for extra in (["--dry-run"], []):
        code, out = run_cli(publish_args(pub_release, emulator, "1.2", "--concept-id",
                                         str(foreign), *extra))
        flat = " ".join(out.split())
        assert code == 2, out
        assert f"as concept {v1.conceptrecid}" in flat and "concepts.json" in flat
    assert not emulator.drafts() and len(emulator.published(foreign)) == 1
    # a version id of this release's own concept names that concept: accepted
    code, out = run_cli(publish_args(pub_release, emulator, "1.2", "--concept-id", str(v1.id),
                                     "--dry-run"))
    assert code == 0, out


def test_dry_run_sizes_match_the_draft_it_would_continue(pub_release: Path,
                                                        emulator: ZenodoEmulator) -> None:
    """Before a draft exists, stac.zip and manifest.json are marked as made again with the
    reserved DOI (size approximate); after --no-publish, the dry run packages with the draft's
    reserved DOI, so it plans no upload and the exact sizes of the verified draft."""
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--dry-run"))
    assert code == 0, out
    planned = [line for line in out.splitlines() if "PUT <bucket" in line]
    assert [line for line in planned if "size approximate" in line] == [
        line for line in planned if "/stac.zip " in line or "/manifest.json " in line]
    assert len(planned) == 6
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--no-publish"))
    assert code == 0, out
    [draft] = emulator.drafts()
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new", "--resume",
                                     "--dry-run"))
    assert code == 0, out
    assert f"reuse draft {draft.id}" in out
    assert "/api/files/" not in out and "approximate" not in out  # nothing to upload
    total = sum(size for size, _ in manifest_files(pub_release).values())
    assert f"{len(manifest_files(pub_release))} files, {total} bytes; nothing was changed" in out


def test_metadata_reads_back_in_zenodos_own_spelling(pub_release: Path,
                                                     emulator: ZenodoEmulator) -> None:
    """Zenodo's legacy serializer returns ``"affiliation": null`` for a creator without one,
    the scheme it detected for a related identifier sent without one, and its own spelling of
    the licence id: the read-back check accepts all three (the emulator answers that way)."""
    meta = yaml.safe_load((pub_release / RELEASE_METADATA).read_text())
    meta["creators"][1].pop("affiliation")
    meta["related_identifiers"] = [{"identifier": "10.5194/tc-1-2", "relation": "cites"}]
    (pub_release / RELEASE_METADATA).write_text(yaml.safe_dump(meta, sort_keys=False))
    code, out = run_cli(publish_args(pub_release, emulator, "1.0", "--new"))
    assert code == 0, out
    assert "metadata stored and read back" in out
    [record] = emulator.published()
    served = public_record(emulator.base_url, record.id)["metadata"]
    assert served["creators"][1] == {"name": "Bamber, Jonathan", "affiliation": None}
    assert {"identifier": "10.5194/tc-1-2", "relation": "cites", "scheme": "doi"} \
        in served["related_identifiers"]
    assert served["license"] == "CC-BY-4.0"
