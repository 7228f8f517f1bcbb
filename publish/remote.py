"""Searching a published record in place: its item index fetched once, its maps read over HTTP.

A scientist who has only a record reference — ``https://zenodo.org/records/<id>``,
``zenodo:<id>`` or a Zenodo DOI ``10.5281/zenodo.<id>`` — searches it like a local release
(``icedamage search zenodo:<id> --shelf Totten``, ``catalog.search.search("zenodo:<id>")``).
The record's ``stac.zip`` (a few MB: the catalog and its item tables) and ``manifest.json`` are
downloaded once, checked against the checksums Zenodo lists, and kept in
``<cache>/zenodo/<host>/<record id>/``; a published version never changes, so later searches of
it need no network. Asset hrefs of the results point into the record: a product inside its
shelf ZIP becomes ``/vsizip//vsicurl/<record>/files/<Shelf>.zip/<Shelf>/<YYYY>/<file>``, which
rasterio, GDAL and odc-stac read in place with HTTP range requests (members are stored, not
deflated), so a time series streams only the tiles it needs. A concept record (all versions)
resolves to its latest version, which needs one request each time.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from producer.cache import default_cache_dir
from producer.spec import ITEMS_NDJSON, ITEMS_PARQUET
from publish.package import CATALOG_KEY, MANIFEST_KEY, Manifest, release_file_href

#: Where ``zenodo:<id>`` and Zenodo DOIs point.
ZENODO_URL = "https://zenodo.org"
#: Set to 1 to never fetch (searches of records already in the cache still work).
OFFLINE_ENV = "ICEDAMAGE_OFFLINE"
#: What a cached record keeps beside the item tables.
RECORD_FILE = "record.json"

_RECORD_URL = re.compile(r"(?P<base>https?://[^?#]+?)/(?:api/)?records/(?P<id>\d+)/?")
_DOI = re.compile(r"(?:(?:https?://)?(?:dx\.)?doi\.org/|doi:)?10\.5281/zenodo\.(?P<id>\d+)",
                  re.IGNORECASE)
_SHORT = re.compile(r"zenodo:(?P<id>\d+)", re.IGNORECASE)
_TIMEOUT = (10.0, 120.0)


class RemoteError(RuntimeError):
    """A published record that cannot be searched; the message says which and why."""


class UnverifiedDownload(UserWarning):
    """A file of a record was downloaded without a checksum to check it against."""


@dataclass(frozen=True)
class RecordRef:
    """A published record: the Zenodo instance (its base URL) and the record id."""

    base_url: str
    record_id: int

    @property
    def url(self) -> str:
        """Landing page of the record (also the prefix of its file URLs)."""
        return f"{self.base_url}/records/{self.record_id}"


def parse_record_ref(text: str) -> RecordRef | None:
    """The record ``text`` names (URL of any Zenodo instance, ``zenodo:<id>``, Zenodo DOI), or
    None when it names none (then it is a local path)."""
    text = text.strip()
    if match := _RECORD_URL.fullmatch(text):
        return RecordRef(match["base"].rstrip("/"), int(match["id"]))
    if match := _DOI.fullmatch(text) or _SHORT.fullmatch(text):
        return RecordRef(ZENODO_URL, int(match["id"]))
    return None


@dataclass(frozen=True)
class RecordIndex:
    """The item index of a published record, held in the cache, and where its files live."""

    record_url: str
    folder: Path
    key_map: dict[str, str] = field(default_factory=dict)

    @property
    def parquet(self) -> Path:
        """The record's items.parquet (items.ndjson lies beside it)."""
        return self.folder / ITEMS_PARQUET

    def href(self, relative: str) -> str:
        """Where a release-relative href lives in the record (unchanged when it lacks it)."""
        return release_file_href(self.record_url, self.key_map, relative) or relative


def record_cache_dir(ref: RecordRef, cache_dir: Path | None = None) -> Path:
    """``<cache>/zenodo/<host[_port]>/<record id>``: one folder per published version."""
    host = urlsplit(ref.base_url).netloc.replace(":", "_")
    return Path(cache_dir or default_cache_dir()) / "zenodo" / host / str(ref.record_id)


def _cached(folder: Path) -> RecordIndex | None:
    try:
        facts = json.loads((folder / RECORD_FILE).read_text())
        record_url, key_map = facts["record_url"], facts["key_map"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not (folder / ITEMS_PARQUET).is_file():
        return None
    return RecordIndex(record_url, folder, key_map)


def _session() -> requests.Session:
    """Anonymous GETs retried on 429/5xx and dropped connections, honouring Retry-After."""
    session = requests.Session()
    retry = Retry(total=5, backoff_factor=1.0, status_forcelist=(429, 500, 502, 503, 504),
                  allowed_methods=("GET",), respect_retry_after_header=True)
    session.mount("http://", HTTPAdapter(max_retries=retry))
    session.mount("https://", HTTPAdapter(max_retries=retry))
    return session


def _get(session: requests.Session, url: str, **kwargs: Any) -> requests.Response:
    try:
        resp = session.get(url, timeout=_TIMEOUT, **kwargs)
    except requests.RequestException as error:
        raise RemoteError(f"{url}: could not fetch ({type(error).__name__})") from None
    if resp.status_code != 200:
        raise RemoteError(f"{url}: HTTP {resp.status_code}"
                          + (" (no such file)" if resp.status_code in (404, 410) else ""))
    return resp


def _file_url(entry: dict[str, Any], ref: RecordRef) -> str:
    """The API download link of a file of the record JSON (raw bytes, never a preview page)."""
    links = entry.get("links", {})
    link = links.get("self") or links.get("content")
    if link:
        return str(link)
    return f"{ref.base_url}/api/records/{ref.record_id}/files/{entry['key']}/content"


Progress = Callable[[str, int, int], None]
"""Called as ``progress(key, bytes_done, bytes_total)`` while a file of the record arrives."""


def _download(session: requests.Session, url: str, target: Path, md5: str | None,
              progress: Progress | None = None, key: str = "", size: int = 0) -> None:
    """Stream ``url`` into ``target`` and check its MD5 against the record's listing."""
    digest = hashlib.md5()
    done = 0
    with _get(session, url, stream=True) as resp, open(target, "wb") as out:
        for chunk in resp.iter_content(1 << 20):
            digest.update(chunk)
            out.write(chunk)
            done += len(chunk)
            if progress is not None:
                progress(key, done, size)
    if md5 and digest.hexdigest() != md5:
        raise RemoteError(f"{url}: MD5 {digest.hexdigest()} differs from the record's {md5} "
                          "(download corrupted; try again)")


def _extract_index(archive: Path, folder: Path, url: str) -> None:
    """items.parquet and items.ndjson from the record's stac.zip."""
    try:
        with zipfile.ZipFile(archive) as zf:
            names = set(zf.namelist())
            if ITEMS_PARQUET not in names:
                raise RemoteError(f"{url}: {CATALOG_KEY} holds no {ITEMS_PARQUET} (published "
                                  "before `icedamage catalog` wrote the item index?)")
            for name in (ITEMS_PARQUET, ITEMS_NDJSON):
                if name in names:
                    with zf.open(name) as src, open(folder / name, "wb") as dst:
                        shutil.copyfileobj(src, dst)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as error:
        raise RemoteError(f"{url}: {CATALOG_KEY} is not a readable ZIP ({error}); the record "
                          "is not an icedamage release") from None


def _read_manifest(path: Path, url: str) -> Manifest:
    """The record's manifest.json; RemoteError when it is not an icedamage manifest."""
    try:
        manifest = Manifest.from_json(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise RemoteError(f"{url}: {MANIFEST_KEY} is not an icedamage manifest "
                          f"({type(error).__name__}: {error}); the record is not an icedamage "
                          "release") from None
    if not isinstance(manifest.key_map, dict):
        raise RemoteError(f"{url}: {MANIFEST_KEY} has no key map; the record is not an "
                          "icedamage release")
    return manifest


def _listed_md5(entry: dict[str, Any], url: str) -> str | None:
    """The MD5 the record lists for a file; None (with a warning: the download then cannot
    be checked) when the listing gives none."""
    checksum = str(entry.get("checksum") or "")
    algorithm, _, value = checksum.rpartition(":")
    if value and algorithm in ("", "md5"):
        return value
    warnings.warn(f"{url}: the record lists no MD5 for {entry.get('key')} "
                  f"({checksum or 'no checksum'}); the download is not verified",
                  UnverifiedDownload, stacklevel=3)
    return None


def record_index(ref: RecordRef, cache_dir: Path | None = None,
                 progress: Progress | None = None) -> RecordIndex:
    """The item index of a published record: from the cache, else fetched once and cached.

    Raises ``RemoteError`` naming the URL and the reason (offline, HTTP status, not an
    icedamage release, corrupted download); nothing half-written stays in the cache.
    """
    cached = _cached(record_cache_dir(ref, cache_dir))
    if cached is not None:
        return cached
    if os.environ.get(OFFLINE_ENV) == "1":
        raise RemoteError(f"{ref.url}: not in the cache, and {OFFLINE_ENV}=1 forbids fetching")
    from publish.zenodo import public_record  # zenodo-client: sound for an anonymous read

    try:
        record = public_record(ref.base_url, ref.record_id)
    except requests.RequestException as error:
        status = getattr(error.response, "status_code", None)
        reason = (f"HTTP {status}" if status else
                  f"could not fetch ({type(error).__name__}): no network, or the server is not "
                  f"a Zenodo instance — give another instance's record URL, or search a local "
                  f"release folder; a record searched before is read from the cache")
        raise RemoteError(f"{ref.url}: {reason}") from None
    latest = RecordRef(ref.base_url, int(record.get("id", ref.record_id)))
    folder = record_cache_dir(latest, cache_dir)
    cached = _cached(folder)
    if cached is not None:  # a concept id resolved to a version already here
        return cached
    files = {entry["key"]: entry for entry in record.get("files") or []
             if isinstance(entry, dict) and isinstance(entry.get("key"), str)}
    missing = [key for key in (CATALOG_KEY, MANIFEST_KEY) if key not in files]
    if missing:
        raise RemoteError(f"{latest.url}: the record holds no {' or '.join(missing)}; it is not "
                          "an icedamage release (or was published without its catalog)")
    session = _session()
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=f".{latest.record_id}-") as tmp:
        work = Path(tmp)
        for key in (MANIFEST_KEY, CATALOG_KEY):
            url = _file_url(files[key], latest)
            _download(session, url, work / key, _listed_md5(files[key], url), progress, key,
                      int(files[key].get("size") or 0))
        manifest = _read_manifest(work / MANIFEST_KEY, _file_url(files[MANIFEST_KEY], latest))
        index = work / "index"
        index.mkdir()
        _extract_index(work / CATALOG_KEY, index, _file_url(files[CATALOG_KEY], latest))
        (index / RECORD_FILE).write_text(json.dumps(
            {"record_url": latest.url, "key_map": manifest.key_map,
             "version": manifest.version}, indent=2, sort_keys=True) + "\n")
        if folder.exists() and _cached(folder) is None:  # damaged by hand: fetched anew
            shutil.rmtree(folder)
        try:
            os.replace(index, folder)
        except OSError:  # another process cached it meanwhile
            if _cached(folder) is None:
                raise
    cached = _cached(folder)
    assert cached is not None
    return cached
