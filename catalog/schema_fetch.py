"""Official STAC extension schemas that no local folder provides: fetched once, then cached.

``icedamage validate`` checks every STAC object against the schemas of the extensions it
declares. A local folder (``--schemas DIR``) serves offline machines and CI; elsewhere a schema
missing from it is fetched from its URL over HTTP(S) once and kept in the user's cache
(``<cache>/stac-schemas/``, see ``producer.cache.default_cache_dir``), so later runs work offline.

``ICEDAMAGE_OFFLINE=1`` forbids fetching (the schema stays unvalidated, with a warning saying
why); ``ICEDAMAGE_SCHEMA_MIRROR=URL`` fetches ``<URL>/<host>/<path>`` instead of
``https://<host>/<path>``, for sites that mirror the schemas (and for tests, on loopback).
A host that failed once is not asked again in the same run, so an unreachable network costs one
timeout, not one per schema.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests

from producer.cache import default_cache_dir
from producer.writer import atomic_path

OFFLINE_ENV = "ICEDAMAGE_OFFLINE"
MIRROR_ENV = "ICEDAMAGE_SCHEMA_MIRROR"
CACHE_SUBDIR = "stac-schemas"
TIMEOUT_S = 10.0


def offline() -> bool:
    """Whether fetching is forbidden (``ICEDAMAGE_OFFLINE`` set to anything but 0/false/no)."""
    return os.environ.get(OFFLINE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def cache_file(url: str, folder: Path) -> Path:
    """The cache file of ``url``: a readable name plus a hash, so distinct URLs never collide."""
    parts = urlsplit(url)
    readable = re.sub(r"[^A-Za-z0-9.-]+", "_", f"{parts.netloc}{parts.path}").strip("_")[-120:]
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return folder / f"{readable}-{digest}.json"


def fetch_location(url: str) -> str:
    """Where ``url`` is fetched from: itself, or its place under ``$ICEDAMAGE_SCHEMA_MIRROR``."""
    mirror = os.environ.get(MIRROR_ENV, "").strip()
    if not mirror:
        return url
    parts = urlsplit(url)
    return f"{mirror.rstrip('/')}/{parts.netloc}{parts.path}"


class SchemaFetcher:
    """JSON Schemas by URL from the user's cache, else fetched (unless offline) and cached.

    ``reasons`` says, for each URL that could not be had, why — the validator's warning text.
    """

    def __init__(self, cache_folder: Path | None = None, *, allow_fetch: bool | None = None,
                 session: requests.Session | None = None) -> None:
        self.folder = cache_folder or default_cache_dir() / CACHE_SUBDIR
        self.allow_fetch = not offline() if allow_fetch is None else allow_fetch
        self.session = session or requests.Session()
        self.reasons: dict[str, str] = {}
        self.fetched: list[str] = []
        self._memory: dict[str, dict[str, Any]] = {}
        self._failed_hosts: dict[str, str] = {}

    def get(self, url: str) -> dict[str, Any] | None:
        """The schema at ``url`` (a JSON object), or None with the reason in ``reasons``."""
        if url in self._memory:
            return self._memory[url]
        path = cache_file(url, self.folder)
        cached = _read_json_object(path)
        if cached is not None:
            self._memory[url] = cached
            return cached
        if not self.allow_fetch:
            self.reasons[url] = (f"offline (--offline or {OFFLINE_ENV}) and not in "
                                 f"{self.folder}")
            return None
        location = fetch_location(url)
        host = urlsplit(location).netloc
        if host in self._failed_hosts:
            self.reasons[url] = self._failed_hosts[host]
            return None
        try:
            schema = self._download(location)
        except (requests.RequestException, ValueError) as err:
            where = "" if location == url else f" from {location}"
            reason = f"could not fetch{where} ({_short(err)})"
            if isinstance(err, requests.ConnectionError | requests.Timeout):
                self._failed_hosts[host] = reason
            self.reasons[url] = reason
            return None
        self._store(path, schema)
        self.fetched.append(url)
        self._memory[url] = schema
        return schema

    def _download(self, location: str) -> dict[str, Any]:
        """GET one schema; a non-2xx status or a body that is not a JSON object is an error."""
        response = self.session.get(location, timeout=TIMEOUT_S)
        response.raise_for_status()
        schema = response.json()
        if not isinstance(schema, dict):
            raise ValueError("the response is not a JSON object")
        return schema

    def _store(self, path: Path, schema: dict[str, Any]) -> None:
        """Keep a fetched schema; a cache that cannot be written only costs a fetch next time."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                tmp.write_text(json.dumps(schema))
        except OSError:
            pass


def _read_json_object(path: Path) -> dict[str, Any] | None:
    """A cached JSON object, or None when absent or unreadable (then it is fetched again)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _short(err: Exception) -> str:
    """A few words on why a fetch failed: the HTTP status, or the root cause's name."""
    if isinstance(err, requests.HTTPError) and err.response is not None:
        return f"HTTP {err.response.status_code}"
    cause = re.search(r"Caused by (\w+)", str(err))
    if cause:
        return cause[1]
    text = str(err).splitlines()[0] if str(err) else type(err).__name__
    return text if len(text) <= 100 else text[:97] + "..."
