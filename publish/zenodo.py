"""Our thin, careful client of Zenodo's legacy deposit API.

Why not zenodo-client for the publish path: it sends each request once (no retry on 429, 5xx,
timeouts or dropped connections), never checks the checksum the server computed for an upload,
never deletes the files a new version inherits from the previous one (so stale shelves would
stay in the record), and passes the token as ``?access_token=`` so that requests' error messages
carry it. This client sends the token only in the ``Authorization`` header, retries with
exponential backoff and jitter on 429/5xx/timeouts/connection errors (honouring ``Retry-After``
and ``X-RateLimit-Reset``), stays under 100 requests per minute, never retries 400/401/403
blindly, streams uploads and verifies every server checksum.

We still use zenodo-client where it is sound: reading a published record anonymously
(``Zenodo.get_record(..., authenticate=False)``). We do not use its ``get_latest_record``: it
takes the id out of the record's ``links.latest``, which on today's Zenodo
(``/api/records/<own id>/versions/latest``) names the record itself, not the latest version;
``latest_record`` follows that link instead.
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import requests
from urllib3.exceptions import InvalidHeader
from urllib3.util.retry import Retry

PRODUCTION_URL = "https://zenodo.org"
SANDBOX_URL = "https://sandbox.zenodo.org"
USER_AGENT = "icedamage-publish"
#: Hosts of the production and sandbox services (``www.`` and a trailing dot are ignored).
PRODUCTION_HOST = "zenodo.org"
SANDBOX_HOST = "sandbox.zenodo.org"
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


def _host(url: str) -> str:
    """The lower-case host of a URL without ``www.`` and a trailing dot ("" if none)."""
    host = (urlsplit(url).hostname or "").rstrip(".")
    return host.removeprefix("www.")


def is_production(url: str) -> bool:
    """Whether a base URL names the production Zenodo (where demo products never go)."""
    return _host(url) == PRODUCTION_HOST


def normalise_base_url(url: str) -> str:
    """One spelling per Zenodo instance: lower-case scheme and host, no default port, no
    trailing slash; zenodo.org and its sandbox (also as ``www.``) become their canonical
    https URLs. Hrefs built from it have no ``//``, and the publish state of a release
    recognises the same server however it was typed. ValueError for what is no base URL."""
    text = url.strip()
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = -1
    if (scheme not in ("http", "https") or not parts.hostname or port == -1
            or parts.query or parts.fragment or parts.username or parts.password):
        shown = "the URL given" if parts.username or parts.password else repr(text)
        raise ValueError(f"{shown} is not a base URL of a Zenodo instance "
                         "(http[s]://host[:port][/path], no query, no credentials)")
    path = parts.path.rstrip("/")
    if not path and _host(text) == PRODUCTION_HOST:
        return PRODUCTION_URL
    if not path and _host(text) == SANDBOX_HOST:
        return SANDBOX_URL
    host = parts.hostname.rstrip(".")
    host = f"[{host}]" if ":" in host else host
    default = {"http": 80, "https": 443}[scheme]
    netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}"


class ZenodoError(RuntimeError):
    """Zenodo refused a request; the message names the request, the status and field errors."""

    def __init__(self, method: str, url: str, status: int | None, message: str,
                 errors: list[dict[str, Any]] | None = None) -> None:
        self.method, self.url, self.status = method, url, status
        self.errors = errors or []
        detail = "; ".join(f"{e.get('field')}: {' '.join(e.get('messages', []))}"
                           for e in self.errors)
        answer = f" -> {status}" if status is not None else ""  # None: no answer to show
        super().__init__(f"{method} {url}{answer}: {message}"
                         + (f" ({detail})" if detail else ""))

    @property
    def gave_up(self) -> bool:
        """Whether every try failed transiently (429/5xx/timeouts), not refused by Zenodo:
        running again later may succeed."""
        return self.status is None

    @classmethod
    def from_response(cls, resp: requests.Response) -> ZenodoError:
        """Build from an error answer ({status, message, errors})."""
        try:
            body = resp.json()
        except ValueError:
            body = {}
        body = body if isinstance(body, dict) else {}
        url = resp.request.url.split("?")[0] if resp.request is not None else resp.url
        return cls(resp.request.method if resp.request is not None else "?", url,
                   resp.status_code, str(body.get("message") or resp.reason or ""),
                   body.get("errors") if isinstance(body.get("errors"), list) else None)


@dataclass
class RetryPolicy:
    """Exponential backoff with jitter; ``time_scale`` shrinks every wait (tests use ~0.001)."""

    attempts: int = 8
    base_delay: float = 1.0
    max_delay: float = 120.0
    time_scale: float = 1.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)
    waits: list[float] = field(default_factory=list)
    """Every wait asked for (before scaling), for reports and tests."""

    def backoff(self, attempt: int) -> float:
        """Wait before retry ``attempt`` (0-based): half fixed, half random ("equal jitter")."""
        cap = min(self.max_delay, self.base_delay * 2 ** attempt)
        return cap / 2 + self.rng.uniform(0, cap / 2)

    def wait(self, seconds: float) -> None:
        """Sleep ``seconds`` (scaled)."""
        self.waits.append(seconds)
        if seconds > 0:
            self.sleep(seconds * self.time_scale)


class RateLimiter:
    """Keeps requests under ``limit`` per ``window`` seconds and obeys the server's headers."""

    def __init__(self, policy: RetryPolicy, limit: int = 100, window: float = 60.0,
                 clock: Callable[[], float] = time.time) -> None:
        self.policy, self.limit, self.window, self.clock = policy, limit, window, clock
        self.sent: deque[float] = deque()
        self.blocked_until = 0.0

    def acquire(self) -> None:
        """Wait until one more request fits, then count it."""
        now = self.clock()
        if self.blocked_until > now:
            self.policy.wait(self.blocked_until - now)
        while len(self.sent) >= self.limit:
            now = self.clock()
            while self.sent and now - self.sent[0] >= self.window:
                self.sent.popleft()
            if len(self.sent) >= self.limit:
                wait = self.window - (now - self.sent[0]) + 0.01  # margin for clock rounding
                self.policy.wait(wait)
                if self.policy.time_scale < 1:  # scaled clocks never catch up: forget the oldest
                    self.sent.popleft()
        self.sent.append(self.clock())

    def observe(self, headers: Any) -> None:
        """Pause until X-RateLimit-Reset once the server says nothing remains."""
        remaining, reset = headers.get("X-RateLimit-Remaining"), headers.get("X-RateLimit-Reset")
        if remaining is not None and reset is not None and remaining.strip() == "0":
            with contextlib.suppress(ValueError):
                self.blocked_until = float(reset)


def retry_after(resp: requests.Response) -> float:
    """Seconds the server asks us to wait (Retry-After, else X-RateLimit-Reset), or 0."""
    value = resp.headers.get("Retry-After")
    seconds = _retry_after_seconds(value) if value is not None else None
    if seconds is not None:
        return seconds
    reset = resp.headers.get("X-RateLimit-Reset")
    if resp.status_code == 429 and reset is not None:
        try:
            return max(0.0, float(reset) - time.time())
        except ValueError:
            pass
    return 0.0


def _retry_after_seconds(value: str) -> float | None:
    """A Retry-After value in seconds: delay-seconds (a decimal too, as some servers send) or
    an HTTP-date (RFC 9110 10.2.3; "Wed, 21 Oct 2015 07:28:00 GMT"), parsed by urllib3 as
    requests' own retries do; None when it is neither (an HTTP-date must not read as "retry
    at once")."""
    try:
        seconds = float(value)
    except ValueError:
        try:
            return Retry().parse_retry_after(value)
        except InvalidHeader:
            return None
    return max(0.0, seconds) if math.isfinite(seconds) else None


class ProgressReader:
    """A file wrapper that reports bytes read, with a length so requests sends Content-Length."""

    def __init__(self, fh: IO[bytes], size: int, progress: Callable[[int], None] | None) -> None:
        self.fh, self.size, self.progress = fh, size, progress

    def __len__(self) -> int:
        return self.size

    def read(self, n: int = -1) -> bytes:
        """Read and report."""
        chunk = self.fh.read(n)
        if chunk and self.progress is not None:
            self.progress(len(chunk))
        return chunk


class ZenodoClient:
    """Requests against one Zenodo instance with one token (kept out of URLs and reprs)."""

    def __init__(self, base_url: str, token: str, retry: RetryPolicy | None = None,
                 limiter: RateLimiter | None = None, timeout: tuple[float, float] = (10, 120),
                 upload_timeout: float = 900) -> None:
        self.base_url = base_url.rstrip("/")
        self.api = self.base_url + "/api"
        self.retry = retry or RetryPolicy()
        self.limiter = limiter or RateLimiter(self.retry)
        self.timeout = timeout
        self.upload_timeout = upload_timeout
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}",
                                     "User-Agent": USER_AGENT, "Accept": "application/json"})
        self.sent = 0
        self.on_retry: Callable[[str], None] | None = None
        """Told about every retry (what failed, how long we wait), e.g. to print it."""

    def __repr__(self) -> str:
        return f"ZenodoClient({self.base_url!r})"

    def url(self, path: str) -> str:
        """Absolute URL of an API path (absolute URLs pass through)."""
        return path if path.startswith("http") else f"{self.api}/{path.lstrip('/')}"

    def request(self, method: str, path: str, *, expected: tuple[int, ...] = (200,),
                json: Any = None, params: dict[str, Any] | None = None,
                body: Callable[[], Any] | None = None, timeout: Any = None,
                recover: Callable[[], requests.Response | None] | None = None,
                ) -> requests.Response:
        """Send with retries; return the answer with an expected status, else ZenodoError.

        ``body`` makes a fresh request body per attempt (an upload stream). ``recover`` is
        asked, before a non-idempotent request is retried, whether it took effect after all
        (e.g. a publish that timed out); its answer is returned when it gives one.
        """
        url = self.url(path)
        last: str = ""
        for attempt in range(self.retry.attempts):
            self.limiter.acquire()
            self.sent += 1
            wait = self.retry.backoff(attempt)
            data = body() if body is not None else None
            try:
                resp = self.session.request(method, url, json=json, params=params, data=data,
                                            timeout=timeout or self.timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                last = f"{type(exc).__name__}"
            else:
                self.limiter.observe(resp.headers)
                if resp.status_code in expected:
                    return resp
                if resp.status_code not in RETRY_STATUSES:
                    raise ZenodoError.from_response(resp)
                last = f"HTTP {resp.status_code}"
                wait = max(wait, retry_after(resp))
            finally:
                if isinstance(data, ProgressReader):
                    data.fh.close()
            if attempt + 1 == self.retry.attempts:
                break
            if self.on_retry is not None:
                self.on_retry(f"{method} {url.split('?')[0]}: {last}; retrying in {wait:.1f} s "
                              f"(attempt {attempt + 2}/{self.retry.attempts})")
            self.retry.wait(wait)
            if recover is not None:
                recovered = recover()
                if recovered is not None:
                    return recovered
        raise ZenodoError(method, url, None,
                          f"gave up after {self.retry.attempts} attempts (last: {last})")

    def get_json(self, path: str, **kw: Any) -> Any:
        """GET and decode JSON."""
        return self.request("GET", path, **kw).json()

    # ------------------------------------------------------------------ depositions

    def check_token(self) -> None:
        """A cheap authenticated GET; ZenodoError 401 when the token is not accepted."""
        self.request("GET", "deposit/depositions", params={"size": 1})

    def deposition(self, dep_id: int) -> dict[str, Any]:
        """One deposition (draft or published) of the token's owner."""
        return self.get_json(f"deposit/depositions/{dep_id}")

    def drafts(self) -> list[dict[str, Any]]:
        """The owner's depositions that are drafts (new, new versions, or under edit)."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            chunk = self.get_json("deposit/depositions",
                                  params={"status": "draft", "size": 100, "page": page})
            out += chunk
            if len(chunk) < 100:
                return out
            page += 1

    def create(self) -> dict[str, Any]:
        """A new, empty deposition; never two, even when the answer is lost."""
        before = {d["id"] for d in self.drafts() if not d.get("conceptdoi")}

        def recover() -> requests.Response | None:
            fresh = [d for d in self.drafts() if d["id"] not in before
                     and not d.get("conceptdoi") and not d.get("files")]
            if fresh:
                return self.request("GET", f"deposit/depositions/{fresh[0]['id']}")
            return None

        return self.request("POST", "deposit/depositions", json={}, expected=(201,),
                            recover=recover).json()

    def new_version(self, record_id: int, conceptrecid: str) -> dict[str, Any]:
        """A new-version draft of the concept, made from its latest published version."""

        def recover() -> requests.Response | None:
            draft = self.concept_draft(conceptrecid)
            if draft is not None:
                return self.request("GET", f"deposit/depositions/{draft['id']}")
            return None

        resp = self.request("POST", f"deposit/depositions/{record_id}/actions/newversion",
                            expected=(201,), recover=recover)
        data = resp.json()
        latest_draft = data.get("links", {}).get("latest_draft", "")
        draft_id = int(latest_draft.rstrip("/").split("/")[-1]) if latest_draft else data["id"]
        return data if draft_id == data["id"] else self.deposition(draft_id)

    def concept_draft(self, conceptrecid: str) -> dict[str, Any] | None:
        """The unpublished draft of a concept, if one exists."""
        drafts = [d for d in self.drafts() if str(d.get("conceptrecid")) == str(conceptrecid)
                  and not d.get("submitted")]
        return max(drafts, key=lambda d: d["id"]) if drafts else None

    def put_metadata(self, dep_id: int, metadata: dict[str, Any]) -> dict[str, Any]:
        """Replace the whole metadata of a draft."""
        return self.request("PUT", f"deposit/depositions/{dep_id}",
                            json={"metadata": metadata}).json()

    def publish(self, dep_id: int) -> dict[str, Any]:
        """Publish a draft; a lost answer is checked with a GET before any retry."""

        def recover() -> requests.Response | None:
            resp = self.request("GET", f"deposit/depositions/{dep_id}")
            return resp if resp.json().get("submitted") else None

        return self.request("POST", f"deposit/depositions/{dep_id}/actions/publish",
                            expected=(202,), recover=recover).json()

    # ------------------------------------------------------------------ files

    def files(self, dep_id: int) -> dict[str, tuple[int, str]]:
        """The draft's files: key -> (size, md5 hex)."""
        listing = self.get_json(f"deposit/depositions/{dep_id}/files")
        return {f["filename"]: (int(f["filesize"]), f["checksum"].split(":")[-1])
                for f in listing}

    def delete_file(self, bucket: str, key: str) -> None:
        """Make sure ``key`` is gone from the bucket (404 means it already is)."""
        self.request("DELETE", f"{bucket}/{key}", expected=(204, 404))

    def upload(self, bucket: str, key: str, path: Path, size: int,
               progress: Callable[[int], None] | None = None,
               restart: Callable[[], None] | None = None) -> tuple[int, str]:
        """Stream one file into the bucket; the (size, md5) the server computed."""

        def body() -> ProgressReader:
            if restart is not None:
                restart()
            return ProgressReader(open(path, "rb"), size, progress)

        resp = self.request("PUT", f"{bucket}/{key}", expected=(200, 201), body=body,
                            timeout=(self.timeout[0], self.upload_timeout))
        data = resp.json()
        return int(data.get("size", -1)), str(data.get("checksum", "")).split(":")[-1]

    # ------------------------------------------------------------------ records

    def record(self, record_id: int | str) -> dict[str, Any]:
        """A published record (a concept id answers with its latest version)."""
        return self.get_json(f"records/{record_id}")

    def latest_record(self, record_id: int | str) -> dict[str, Any]:
        """The latest published version of the concept of ``record_id`` (follows Zenodo's
        ``/versions/latest`` redirect)."""
        return self.get_json(f"records/{record_id}/versions/latest")

    def record_file_text(self, record_id: int | str, key: str) -> str | None:
        """Text of one file of a published record, or None when the record has no such file."""
        resp = self.request("GET", f"records/{record_id}/files/{key}/content",
                            expected=(200, 404))
        return resp.text if resp.status_code == 200 else None

    def versions(self, record_id: int | str) -> list[dict[str, Any]]:
        """Every published version of the concept of ``record_id``."""
        return self.get_json(f"records/{record_id}/versions",
                             params={"size": 100})["hits"]["hits"]


def public_record(base_url: str, record_id: int | str) -> dict[str, Any]:
    """A published record read anonymously with zenodo-client (sound there: a plain GET)."""
    from zenodo_client import Zenodo

    reader = Zenodo(access_token="anonymous-read")  # never sent: authenticate=False
    reader.base = base_url.rstrip("/")
    reader.api_base = reader.base + "/api"
    reader.depositions_base = reader.api_base + "/deposit/depositions"
    return reader.get_record(record_id, authenticate=False).json()
