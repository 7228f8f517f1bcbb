"""STAC extension schemas that no local folder holds: fetched once over HTTP, cached, applied.

The "network" is a real HTTP server on 127.0.0.1 mirroring the official schema files
(``ICEDAMAGE_SCHEMA_MIRROR``); the user cache is a fresh folder per test.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from catalog.build import catalog_release
from catalog.rules import StacSchemaRules
from catalog.schema_fetch import MIRROR_ENV, OFFLINE_ENV, SchemaFetcher, cache_file
from catalog.uncertainty import PAPER_FACTORS
from producer.cli import build_app
from tests.conftest import STAC_SCHEMAS
from tests.release_factory import build_release

PROJECTION = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"


class Mirror:
    """A loopback web server holding ``<host>/<path>`` files; records each path asked for."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.requests: list[str] = []
        mirror = self

        class Handler(SimpleHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                mirror.requests.append(self.path)
                super().do_GET()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def put(self, url: str, schema: dict[str, Any]) -> None:
        """Serve ``schema`` where the mirror keeps ``url``."""
        parts = urlsplit(url)
        target = self.root / parts.netloc / parts.path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(json.dumps(schema))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """The official schemas (from the shared folder) behind a loopback mirror, fetching allowed,
    an empty user cache."""
    server = Mirror(tmp_path / "www")
    mapping = json.loads((STAC_SCHEMAS / "schema-map.json").read_text())
    for url, rel in mapping.items():
        server.put(url, json.loads((STAC_SCHEMAS / rel).read_text()))
    monkeypatch.setenv(MIRROR_ENV, server.url)
    monkeypatch.setenv("ICEDAMAGE_CACHE", str(tmp_path / "user-cache"))
    monkeypatch.delenv(OFFLINE_ENV, raising=False)
    monkeypatch.delenv("ICEDAMAGE_STAC_SCHEMAS", raising=False)
    yield server
    server.close()


@pytest.fixture(scope="module")
def cataloged_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cataloged fixture release (never modified)."""
    root = build_release(tmp_path_factory.mktemp("fetch") / "release")
    catalog_release(root, PAPER_FACTORS)
    return root


def extensions_of(release: Path) -> set[str]:
    """Every extension schema URL the release's STAC files declare."""
    return {url for path in (release / "stac").rglob("*.json")
            for url in json.loads(path.read_text()).get("stac_extensions", [])}


def test_missing_schemas_are_fetched_once_then_served_from_the_cache(
        cataloged_release: Path, mirror: Mirror) -> None:
    official = {u for u in extensions_of(cataloged_release)
                if u.startswith("https://stac-extensions.github.io/")}
    assert PROJECTION in official
    problems = list(StacSchemaRules().check(cataloged_release))
    assert problems == []  # every extension validated, none reported unavailable
    asked = {f"https://{path.lstrip('/')}" for path in mirror.requests}
    assert asked == official and len(mirror.requests) == len(official)
    before = len(mirror.requests)
    assert list(StacSchemaRules().check(cataloged_release)) == []
    assert len(mirror.requests) == before  # the second run asked the network nothing


def test_fetched_schemas_are_applied(cataloged_release: Path, mirror: Mirror) -> None:
    """A (tampered) mirrored schema decides: its rule is reported against the items."""
    schema = json.loads((STAC_SCHEMAS / "projection/v2.0.0/schema.json").read_text())
    schema["required"] = [*schema.get("required", []), "proj:bogus"]
    mirror.put(PROJECTION, schema)
    problems = list(StacSchemaRules().check(cataloged_release))
    assert problems and {p.rule for p in problems} == {"stac-schema"}
    assert all("proj:bogus" in p.found and PROJECTION in p.expected for p in problems)


def test_unreachable_or_offline_means_a_warning_saying_why(
        cataloged_release: Path, mirror: Mirror, monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    mirror.close()  # the mirror's port now refuses connections
    problems = list(StacSchemaRules().check(cataloged_release))
    assert problems and {(p.rule, p.severity) for p in problems} == {
        ("stac-schema-unavailable", "warning")}
    assert all("could not fetch" in p.found for p in problems)
    report = tmp_path / "report.json"
    result = CliRunner().invoke(build_app(), ["validate", str(cataloged_release), "--offline",
                                              "--json", str(report)])
    assert result.exit_code == 0, result.output  # warnings only
    unavailable = [p for p in json.loads(report.read_text())["problems"]
                   if p["rule"] == "stac-schema-unavailable"]
    assert unavailable and all("offline" in p["found"] for p in unavailable)


def test_a_broken_cache_file_is_fetched_again(mirror: Mirror, tmp_path: Path) -> None:
    fetcher = SchemaFetcher(tmp_path / "cache", allow_fetch=True)
    path = cache_file(PROJECTION, fetcher.folder)
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    assert fetcher.get(PROJECTION)["$id"] == PROJECTION
    assert json.loads(path.read_text())["$id"] == PROJECTION and len(mirror.requests) == 1


@given(st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=6, unique=True))
def test_cache_files_never_collide(paths: list[str]) -> None:
    folder = Path("/cache")
    files = [cache_file(f"https://example.org/{p}", folder) for p in paths]
    assert len(set(files)) == len(files)
    assert all(f.parent == folder and f.suffix == ".json" for f in files)


def test_a_schema_the_server_lacks_is_reported_with_its_status(mirror: Mirror,
                                                               tmp_path: Path) -> None:
    fetcher = SchemaFetcher(tmp_path / "cache", allow_fetch=True)
    url = "https://stac-extensions.github.io/nothing/v1.0.0/schema.json"
    assert fetcher.get(url) is None
    assert fetcher.reasons[url] == (
        f"could not fetch from {mirror.url}/stac-extensions.github.io/nothing/v1.0.0/schema.json"
        " (HTTP 404)")
    assert fetcher.get(PROJECTION) is not None  # a 404 does not stop the host being asked


def test_a_schema_referring_to_an_unreachable_one_is_a_warning_not_a_crash(
        cataloged_release: Path, mirror: Mirror) -> None:
    missing = "https://stac-extensions.github.io/nowhere/v1.0.0/schema.json"
    mirror.put(PROJECTION, {"$schema": "http://json-schema.org/draft-07/schema#",
                            "$id": PROJECTION, "$ref": missing})
    problems = list(StacSchemaRules().check(cataloged_release))
    assert {(p.rule, p.severity) for p in problems} == {("stac-schema-unavailable", "warning")}
    (only,) = problems
    assert PROJECTION in only.found and f"its reference {missing} could not be had" in only.found
