"""Helpers for the publisher's tests: a publishable release and a CLI runner."""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import yaml
from rich.console import Console
from typer.testing import CliRunner

from catalog.build import catalog_release
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from producer.provenance import read_provenance
from producer.spec import RELEASE_METADATA, roi_geopackage_name
from producer.writer import WrittenProducts, write_products, write_products_rows
from publish.package import MANIFEST_KEY, read_manifest
from publish.release import PublishOptions, PublishResult, publish_release
from publish.state import packages_dir
from publish.zenodo import RateLimiter, RetryPolicy, ZenodoClient
from tests.release_factory import (
    DEFAULT_SHELF_YEARS,
    ShelfYear,
    fixture_arrays,
    fixture_grid,
)
from tests.zenodo_emulator import Deposition, ZenodoEmulator

TOKEN = "secret-token-0123456789"
WRITE_ONLY_TOKEN = "write-only-token-9876543210"
PAPER_DOI = "10.5194/essd-2026-1-test"
RELEASE_YAML = {
    "title": "Surface damage of Antarctic ice shelves from Landsat 7/8/9 (test)",
    "creators": [
        {"name": "Tang, Xiao", "affiliation": "University of Bristol",
         "orcid": "0000-0002-1825-0097"},
        {"name": "Bamber, Jonathan", "affiliation": "University of Bristol"},
    ],
    "description": "<p>30 m surface-damage maps of Antarctic ice shelves, 1999-2024.</p>",
    "access_right": "open",
    "license": "cc-by-4.0",
    "keywords": ["Antarctica", "ice shelves", "surface damage", "Landsat"],
    "paper_doi": PAPER_DOI,
}


def make_publishable(release: Path) -> Path:
    """Add what a publishable release holds beside the products: release.yaml and the catalog
    (STAC, item index, metadata.ods, ROI GeoPackages) as ``icedamage catalog`` builds it."""
    (release / RELEASE_METADATA).write_text(yaml.safe_dump(RELEASE_YAML, sort_keys=False))
    catalog_release(release, PAPER_FACTORS)
    return release


def make_demo(release: Path) -> Path:
    """Mark the first shelf-year's provenance as made from the demo source."""
    import dataclasses

    path = sorted(release.rglob("*_provenance.json"))[0]
    record = dataclasses.replace(read_provenance(path), source="demo")
    path.write_text(record.to_json())
    # re-catalog, as a producer run does: the catalog's demo-flag rule fails a stale catalog
    catalog_release(release, PAPER_FACTORS)
    return path


def write_tagged_products(release: Path, source: str, shelf: str = "Totten",
                          year: int = 2021) -> WrittenProducts:
    """Re-write one fixture shelf-year's two products as the producer now writes them: with
    the scene source's name in their ``SOURCE_TAG`` (not re-cataloged)."""
    item = next(i for i in DEFAULT_SHELF_YEARS if (i.shelf, i.year) == (shelf, year))
    damage, extent = fixture_arrays(item, 7)
    return write_products_rows(release, item.shelf, item.year, item.sensors, item.restoration,
                               lambda r0, r1: (damage[r0:r1], extent[r0:r1]),
                               fixture_grid(item.shelf, item.size), source=source)


def tree_digest(root: Path) -> dict[str, str]:
    """Relative path -> md5 of every file under root (to prove nothing changed)."""
    return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def run_cli(args: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run ``icedamage`` in-process with a test environment; (exit code, output)."""
    base = {"ZENODO_TOKEN": TOKEN, "ICEDAMAGE_ZENODO_TIME_SCALE": "0.0005",
            "ICEDAMAGE_ZENODO_ATTEMPTS": "8", "COLUMNS": "200", "NO_COLOR": "1"}
    base.update(env or {})
    app = build_app()
    if len(app.registered_commands) == 1:  # a lone command would swallow its own name
        app.callback()(lambda: None)
    result = CliRunner().invoke(app, args, env=base, catch_exceptions=False)
    return result.exit_code, result.output


def publish_args(release: Path, emulator: ZenodoEmulator, version: str, *extra: str,
                 ) -> list[str]:
    """The publish command line against the emulator."""
    return ["publish", str(release), "--version", version, "--url", emulator.base_url, *extra]


def api_publish(release: Path, emulator: ZenodoEmulator, version: str, *, token: str = TOKEN,
                policy: RetryPolicy | None = None, **kw: object,
                ) -> tuple[PublishResult, str, RetryPolicy]:
    """Publish through the Python API with a fast retry policy; (result, output, policy)."""
    policy = policy or RetryPolicy(time_scale=0.0005)
    client = ZenodoClient(emulator.base_url, token, retry=policy, limiter=RateLimiter(policy))
    out = io.StringIO()
    options = PublishOptions(release_dir=release, version=version,
                             base_url=emulator.base_url, allow_demo=True, **kw)  # type: ignore
    result = publish_release(options, client, Console(file=out, width=200), secrets=(token,))
    return result, out.getvalue(), policy


def all_text_files(*roots: Path) -> Iterator[tuple[Path, bytes]]:
    """Every file under the roots with its bytes (to search for leaked secrets)."""
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file():
                yield path, path.read_bytes()


def env_without_tokens() -> dict[str, str]:
    """The process environment minus any real Zenodo token."""
    return {k: v for k, v in os.environ.items()
            if k not in ("ZENODO_TOKEN", "ZENODO_SANDBOX_TOKEN", "ZENODO_API_TOKEN")}


# ------------------------------------------------------------------ Zenodo's legacy serializer


def legacy_scheme(identifier: str) -> str | None:
    """The scheme Zenodo detects for a related identifier sent without one."""
    if re.fullmatch(r"10\.\d{4,9}/\S+", identifier):
        return "doi"
    return "url" if re.match(r"https?://", identifier) else None


def legacy_person(person: dict) -> dict:
    """A creator or contributor as the legacy serializer dumps it: ``affiliation`` always
    there (null without one), ``orcid``/``gnd`` only when known."""
    out = {"name": person.get("name"), "affiliation": person.get("affiliation") or None}
    out.update({k: person[k] for k in ("orcid", "gnd", "type") if person.get(k)})
    return out


def legacy_related(rel: dict) -> dict:
    """A related identifier as the legacy serializer dumps it: the scheme Zenodo detected
    (and stored) when none was sent."""
    out = {k: v for k, v in rel.items() if v is not None}
    scheme = out.get("scheme") or legacy_scheme(str(out.get("identifier", "")))
    if scheme:
        out["scheme"] = scheme
    return out


def legacy_metadata(metadata: dict) -> dict:
    """Deposit metadata as today's Zenodo serves it back (zenodo-rdm's legacy serializer,
    ``CreatorSchema``, ``RelatedIdentifierSchema``, ``dump_license``), not as it was sent."""
    out = dict(metadata)
    for key in ("creators", "contributors"):
        if isinstance(out.get(key), list):
            out[key] = [legacy_person(p) if isinstance(p, dict) else p for p in out[key]]
    if isinstance(out.get("related_identifiers"), list):
        out["related_identifiers"] = [legacy_related(r) if isinstance(r, dict) else r
                                      for r in out["related_identifiers"]]
    if isinstance(out.get("license"), str):
        out["license"] = out["license"].upper()  # the licence vocabulary's own spelling
    return out


class LegacySerializerEmulator(ZenodoEmulator):
    """The emulator answering as Zenodo's legacy serializer does (see ``legacy_metadata``):
    metadata stored as sent reads back in another spelling, which the publisher's read-back
    check must accept (and any real change it must still catch)."""

    def deposition_json(self, dep: Deposition) -> dict:
        """A deposition with its metadata dumped the legacy serializer's way."""
        data = super().deposition_json(dep)
        data["metadata"] = legacy_metadata(data["metadata"])
        return data

    def record_json(self, dep: Deposition) -> dict:
        """A published record with its metadata dumped the legacy serializer's way."""
        data = super().record_json(dep)
        data["metadata"] = legacy_metadata(data["metadata"])
        return data


def token_client(emu: ZenodoEmulator, token: str = TOKEN) -> ZenodoClient:
    """Our client against the emulator with a fast retry policy (a co-author's requests)."""
    policy = RetryPolicy(time_scale=0.0005)
    return ZenodoClient(emu.base_url, token, retry=policy, limiter=RateLimiter(policy))


def other_concept(emu: ZenodoEmulator, folder: Path, title: str = "Another dataset") -> int:
    """Publish an unrelated one-file record of the same account over HTTP; its concept id."""
    client = token_client(emu)
    draft = client.create()
    path = folder / "data.csv"
    path.write_text("a,b\n1,2\n")
    client.upload(draft["links"]["bucket"], path.name, path, path.stat().st_size)
    client.put_metadata(draft["id"], {"title": title, "upload_type": "dataset",
                                      "description": "d", "version": "1.0",
                                      "creators": [{"name": "Other, Author"}]})
    return int(client.publish(draft["id"])["conceptrecid"])


# ------------------------------------------------------------------ fixtures and probes


def server_files(emu: ZenodoEmulator, dep_id: int) -> dict[str, tuple[int, str]]:
    """key -> (size, md5) of a deposition on the emulator."""
    dep = emu.depositions[dep_id]
    return {k: (len(f.data), f.md5) for k, f in dep.files.items()}


def manifest_files(release: Path) -> dict[str, tuple[int, str]]:
    """key -> (size, md5) the manifest promises, manifest.json included."""
    out = packages_dir(release)
    files = {e.key: (e.size, e.md5) for e in read_manifest(out).entries}
    data = (out / MANIFEST_KEY).read_bytes()
    files[MANIFEST_KEY] = (len(data), hashlib.md5(data).hexdigest())
    return files


def change_shelf(release: Path) -> None:
    """Re-make Totten 2021 from other pixels (a corrected shelf-year), then re-catalog."""
    item = ShelfYear("Totten", 2021, ("LC08", "LC09"))
    damage, extent = fixture_arrays(item, 99)
    write_products(release, item.shelf, item.year, item.sensors, None, damage, extent,
                   fixture_grid(item.shelf, item.size))
    catalog_release(release, PAPER_FACTORS)


def withdraw_shelf(release: Path, shelf: str) -> None:
    """Take a shelf out of the release (folder and ROI GeoPackage), then re-catalog."""
    shutil.rmtree(release / shelf)
    (release / roi_geopackage_name(shelf)).unlink()
    catalog_release(release, PAPER_FACTORS)


def put_keys(emu: ZenodoEmulator, since: int = 0) -> list[str]:
    """Keys of the bucket PUTs logged after request number ``since``."""
    return [r.path.rsplit("/", 1)[-1] for r in emu.requests[since:]
            if r.method == "PUT" and r.path.startswith("/api/files/")]


def stac_zip_references(data: bytes) -> tuple[set[int], set[str]]:
    """Record ids (``/records/<id>``, ``zenodo.<id>``) and servers (``http://127.0.0.1:<port>``)
    that a record's stac.zip names anywhere: STAC JSON, items.ndjson and items.parquet."""
    texts = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for name in zf.namelist():
            raw = zf.read(name)
            if name.endswith(".parquet"):
                rows = pq.read_table(io.BytesIO(raw)).to_pylist()
                texts.append(json.dumps(rows, default=str))
            elif name.endswith((".json", ".ndjson")):
                texts.append(raw.decode())
    text = "\n".join(texts)
    ids = {int(m) for m in re.findall(r"(?:/records/|zenodo\.)(\d+)", text)}
    return ids, set(re.findall(r"https?://127\.0\.0\.1:\d+", text))


def stac_zip_collection(data: bytes) -> dict:
    """The collection JSON inside a record's stac.zip."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        name = next(n for n in zf.namelist() if n.endswith("/collection.json"))
        return json.loads(zf.read(name))
