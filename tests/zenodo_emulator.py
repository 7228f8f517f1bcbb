"""A local emulator of today's Zenodo legacy deposit REST API, for tests over 127.0.0.1.

Zenodo is unreachable from our machines, so the publisher is tested against this real HTTP
server (stdlib ``ThreadingHTTPServer`` in a thread). It behaves as zenodo.org does since its move
to InvenioRDM, for the parts the publisher uses:

* ``/api/deposit/depositions[/:id]`` POST/GET/PUT/DELETE; PUT replaces the whole metadata and
  rejects unknown keys with 400 ``{status, message, errors: [{field, messages}]}``;
* ``/api/deposit/depositions/:id/files`` (legacy listing: ``filename``, ``filesize``,
  ``checksum`` as bare md5 hex);
* bucket ``PUT {bucket}/{key}`` -> 201 ``{key, size, checksum: "md5:<hex>", ...}`` (same key
  replaces), ``DELETE {bucket}/{key}`` -> 204, ``GET {bucket}``;
* actions ``publish`` (202), ``edit``, ``discard``, ``newversion`` (201, the new draft with the
  previous version's files imported; 400 when a draft of the concept already exists);
* ``id``/``doi`` of a version vs ``conceptrecid``/``conceptdoi`` of all versions; DOIs only
  after publication (drafts carry ``metadata.prereserve_doi``);
* ``/api/records/:id`` (published records), ``/api/records/:id/versions`` and
  ``/api/records/:id/versions/latest`` (a redirect, as in InvenioRDM: the record's own
  ``links.latest`` names its own id, not the latest one);
* auth by ``Authorization: Bearer`` or ``?access_token=``; 401 without a valid token, 403 when
  the token lacks the scope (``deposit:write`` for changes, ``deposit:actions`` to publish);
* 100 files and 50 GB per record (both configurable), ``X-RateLimit-*`` headers and 429 with
  ``Retry-After`` past the limit.

Faults can be injected on any endpoint (see ``Fault``): status answers (429 bursts, 500, 504),
a DELETE that answers 500 but deletes, a PUT that stores a corrupted body, a connection dropped
mid-upload, and a hang (the request blocks until released, to let a test kill the client).
Every request is logged (``requests``) without its token.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

#: Metadata keys the legacy deposit API accepts (anything else is a 400).
METADATA_KEYS = frozenset({
    "upload_type", "publication_type", "image_type", "publication_date", "title", "creators",
    "description", "access_right", "license", "embargo_date", "access_conditions", "doi",
    "prereserve_doi", "keywords", "notes", "related_identifiers", "contributors", "references",
    "communities", "grants", "journal_title", "journal_volume", "journal_issue", "journal_pages",
    "conference_title", "conference_acronym", "conference_dates", "conference_place",
    "conference_url", "conference_session", "conference_session_part", "imprint_publisher",
    "imprint_isbn", "imprint_place", "partof_title", "partof_pages", "thesis_supervisors",
    "thesis_university", "subjects", "version", "language", "locations", "dates", "method",
})
REQUIRED_TO_PUBLISH = ("upload_type", "title", "creators", "description")
MSG_401 = ("The server could not verify that you are authorized to access the URL requested. "
           "You either supplied the wrong credentials (e.g. a bad password), or your browser "
           "doesn't understand how to supply the credentials required.")
MSG_403 = ("You don't have the permission to access the requested resource. It is either "
           "read-protected or not readable by the server.")
MSG_404 = "PID does not exist."
MUTATING = frozenset({"POST", "PUT", "DELETE", "PATCH"})
FULL_SCOPES = frozenset({"deposit:write", "deposit:actions"})


@dataclass
class Fault:
    """A misbehaviour for requests matching ``method`` and the ``path`` regex (searched).

    kind: "status" (answer ``status``, optionally with ``retry_after``), "after" (do the
    request, then answer ``status`` instead: a DELETE or publish that answers 500/504 but took
    effect; "delete_500" is the same), "corrupt" (PUT stores a corrupted body and answers 201
    with its checksum; a file download arrives with one byte flipped), "drop" (read half the
    body, close the connection), "hang" (block until
    ``Emulator.release_hangs()``, then drop). The first ``skip`` matches pass untouched, the
    next ``times`` misbehave.
    """

    kind: str
    method: str | None = None
    path: str = ""
    status: int = 500
    times: int = 1
    skip: int = 0
    retry_after: int | str | None = None
    """Retry-After of a "status" answer: seconds, or an HTTP-date given as text."""
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, path: str) -> bool:
        """Whether this request should misbehave (counts the match)."""
        if self.method is not None and self.method != method:
            return False
        if not re.search(self.path, path):
            return False
        self.seen += 1
        if self.seen <= self.skip or self.fired >= self.times:
            return False
        self.fired += 1
        return True


@dataclass
class LoggedRequest:
    """One request as the server saw it (never the token)."""

    method: str
    path: str
    query: dict[str, list[str]]
    status: int
    body_bytes: int
    auth: str | None
    fault: str | None = None

    @property
    def mutating(self) -> bool:
        """Whether the request could change anything on the server."""
        return self.method in MUTATING


@dataclass
class StoredFile:
    """A file in a bucket."""

    key: str
    data: bytes
    file_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created: str = field(default_factory=lambda: _now())

    @property
    def md5(self) -> str:
        """Hex md5 of the stored bytes."""
        return hashlib.md5(self.data).hexdigest()


@dataclass
class Deposition:
    """A record version: a draft (unsubmitted), published (done) or published under edit."""

    id: int
    conceptrecid: int
    owner: str
    bucket: str
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, StoredFile] = field(default_factory=dict)
    submitted: bool = False
    editing: bool = False
    saved_metadata: dict[str, Any] | None = None
    created: str = field(default_factory=lambda: _now())
    modified: str = field(default_factory=lambda: _now())

    @property
    def state(self) -> str:
        """Legacy state: unsubmitted, done, or inprogress (published, being edited)."""
        if not self.submitted:
            return "unsubmitted"
        return "inprogress" if self.editing else "done"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())


class ZenodoEmulator:
    """The server state, its fault plan and its request log; ``start()`` serves it."""

    def __init__(self, tokens: dict[str, frozenset[str]] | None = None, *,
                 owners: dict[str, str] | None = None, max_files: int = 100,
                 max_bytes: int = 50 * 10**9,
                 rate_limit: int = 5000, rate_window: float = 60.0) -> None:
        self.tokens = dict(tokens or {"secret-token-0123456789": FULL_SCOPES})
        self.owners = dict(owners or {})
        """token -> user; tokens of one user see the same depositions (default: own user)."""
        self.max_files = max_files
        self.max_bytes = max_bytes
        self.rate_limit = rate_limit
        self.rate_window = rate_window
        self.depositions: dict[int, Deposition] = {}
        self.buckets: dict[str, int] = {}
        self.faults: list[Fault] = []
        self.requests: list[LoggedRequest] = []
        self.lock = threading.RLock()
        self.hang_release = threading.Event()
        self._next_id = 100
        self._hits: dict[str, list[float]] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> ZenodoEmulator:
        """Serve on a free port of 127.0.0.1 in a daemon thread."""
        emulator = self

        class Handler(_Handler):
            server_state = emulator

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and release any hanging request."""
        self.hang_release.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        assert self._server is not None, "start() the emulator first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # ---------------------------------------------------------------- test helpers

    def add_fault(self, kind: str, method: str | None = None, path: str = "", **kw: Any) -> Fault:
        """Plan a misbehaviour (see ``Fault``); returns it so a test can read its counters."""
        fault = Fault(kind, method, path, **kw)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        """Forget every planned fault."""
        with self.lock:
            self.faults.clear()

    def release_hangs(self) -> None:
        """Let hanging requests go on (they then drop their connection)."""
        self.hang_release.set()

    def mutating_requests(self) -> list[LoggedRequest]:
        """Every logged request that could have changed server state."""
        return [r for r in self.requests if r.mutating]

    def drafts(self) -> list[Deposition]:
        """Depositions not yet published."""
        return [d for d in self.depositions.values() if not d.submitted]

    def published(self, conceptrecid: int | None = None) -> list[Deposition]:
        """Published versions (of one concept), oldest first."""
        return sorted((d for d in self.depositions.values() if d.submitted
                       and (conceptrecid is None or d.conceptrecid == conceptrecid)),
                      key=lambda d: d.id)

    def new_id(self) -> int:
        """Next record id (shared by concept and version ids, as on Zenodo)."""
        with self.lock:
            self._next_id += 1
            return self._next_id

    # ---------------------------------------------------------------- rate limiting

    def rate_headers(self, who: str) -> tuple[dict[str, str], bool]:
        """X-RateLimit-* headers for this client, and whether it is over the limit."""
        now = time.time()
        with self.lock:
            hits = [t for t in self._hits.get(who, []) if now - t < self.rate_window]
            hits.append(now)
            self._hits[who] = hits
        reset = int(hits[0] + self.rate_window) + 1
        remaining = max(0, self.rate_limit - len(hits))
        headers = {"X-RateLimit-Limit": str(self.rate_limit),
                   "X-RateLimit-Remaining": str(remaining), "X-RateLimit-Reset": str(reset)}
        return headers, len(hits) > self.rate_limit

    # ---------------------------------------------------------------- serialisation

    def links(self, dep: Deposition) -> dict[str, str]:
        """The links block of a deposition."""
        api = f"{self.base_url}/api"
        base = f"{api}/deposit/depositions/{dep.id}"
        links = {
            "self": base, "html": f"{self.base_url}/deposit/{dep.id}",
            "files": f"{base}/files", "bucket": f"{api}/files/{dep.bucket}",
            "publish": f"{base}/actions/publish", "edit": f"{base}/actions/edit",
            "discard": f"{base}/actions/discard", "newversion": f"{base}/actions/newversion",
            "latest_draft": base, "latest_draft_html": f"{self.base_url}/deposit/{dep.id}",
        }
        if dep.submitted:
            links.update(record=f"{api}/records/{dep.id}",
                         record_html=f"{self.base_url}/records/{dep.id}",
                         latest=f"{api}/records/{dep.id}/versions/latest",
                         latest_html=f"{self.base_url}/records/{dep.id}/latest",
                         doi=f"https://doi.org/{self.doi(dep.id)}")
        return links

    @staticmethod
    def doi(recid: int) -> str:
        """Zenodo's DOI for a record id."""
        return f"10.5281/zenodo.{recid}"

    def concept_published(self, conceptrecid: int) -> bool:
        """Whether any version of the concept is published (so the concept DOI exists)."""
        return any(d.submitted and d.conceptrecid == conceptrecid
                   for d in self.depositions.values())

    def legacy_files(self, dep: Deposition) -> list[dict[str, Any]]:
        """Files as the legacy deposit API lists them."""
        api = f"{self.base_url}/api"
        return [{"id": f.file_id, "filename": f.key, "filesize": len(f.data), "checksum": f.md5,
                 "links": {"self": f"{api}/deposit/depositions/{dep.id}/files/{f.file_id}",
                           "download": f"{api}/files/{dep.bucket}/{f.key}"}}
                for f in dep.files.values()]

    def deposition_json(self, dep: Deposition) -> dict[str, Any]:
        """A deposition in the legacy JSON format."""
        metadata = dict(dep.metadata)
        metadata["prereserve_doi"] = {"doi": self.doi(dep.id), "recid": dep.id}
        data: dict[str, Any] = {
            "id": dep.id, "record_id": dep.id, "conceptrecid": str(dep.conceptrecid),
            "created": dep.created, "modified": dep.modified, "owner": dep.owner,
            "title": metadata.get("title", ""), "metadata": metadata,
            "state": dep.state, "submitted": dep.submitted,
            "links": self.links(dep), "files": self.legacy_files(dep),
        }
        if dep.submitted:
            data["doi"] = self.doi(dep.id)
            data["doi_url"] = f"https://doi.org/{self.doi(dep.id)}"
            metadata["doi"] = self.doi(dep.id)
        if self.concept_published(dep.conceptrecid):
            data["conceptdoi"] = self.doi(dep.conceptrecid)
        return data

    def record_json(self, dep: Deposition) -> dict[str, Any]:
        """A published record as ``/api/records/:id`` serves it."""
        api = f"{self.base_url}/api"
        files = [{"id": f.file_id, "key": f.key, "size": len(f.data),
                  "checksum": f"md5:{f.md5}",
                  "links": {"self": f"{api}/records/{dep.id}/files/{f.key}/content"}}
                 for f in dep.files.values()]
        return {"id": dep.id, "recid": str(dep.id), "conceptrecid": str(dep.conceptrecid),
                "doi": self.doi(dep.id), "conceptdoi": self.doi(dep.conceptrecid),
                "doi_url": f"https://doi.org/{self.doi(dep.id)}",
                "metadata": dict(dep.saved_metadata or dep.metadata), "files": files,
                "links": self.links(dep), "created": dep.created, "updated": dep.modified}

    def latest_published(self, conceptrecid: int) -> Deposition | None:
        """The newest published version of a concept."""
        versions = self.published(conceptrecid)
        return versions[-1] if versions else None


def metadata_errors(metadata: Any) -> list[dict[str, Any]]:
    """Field errors of a legacy metadata block, in Zenodo's error shape."""
    if not isinstance(metadata, dict):
        return [{"field": "metadata", "messages": ["Not a valid mapping type."]}]
    errors = [{"field": f"metadata.{key}", "messages": ["Unknown field."]}
              for key in sorted(metadata) if key not in METADATA_KEYS]
    creators = metadata.get("creators")
    if creators is not None and (not isinstance(creators, list) or not all(
            isinstance(c, dict) and c.get("name") for c in creators)):
        errors.append({"field": "metadata.creators",
                       "messages": ["Each creator needs a name."]})
    date = metadata.get("publication_date")
    if date is not None and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", str(date)):
        errors.append({"field": "metadata.publication_date", "messages": ["Not a valid date."]})
    return errors


class _Handler(BaseHTTPRequestHandler):
    """Routes requests to the emulator state; one instance per request."""

    server_state: ZenodoEmulator
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        """Keep the test output quiet."""

    # ------------------------------------------------------------ plumbing

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._dispatch("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._dispatch("DELETE")

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch("HEAD")

    def _dispatch(self, method: str) -> None:
        emu = self.server_state
        parts = urlsplit(self.path)
        self.req_path = unquote(parts.path)
        self.query = parse_qs(parts.query)
        self.body_read = 0
        self.status_sent = 0
        self.fault_name: str | None = None
        self.extra_headers: dict[str, str] = {}
        self.answer = True
        self.corrupt = False
        self.logged = False
        token, self.auth_kind = self._token()
        self.token = token
        self.user = emu.owners.get(token or "", token or "")
        fault = None
        with emu.lock:
            for candidate in emu.faults:
                if candidate.matches(method, self.req_path):
                    fault = candidate
                    break
        try:
            headers, over = emu.rate_headers(token or self.client_address[0])
            self.extra_headers.update(headers)
            if fault is not None and self._fault(method, fault):
                return
            if over:
                self.extra_headers["Retry-After"] = str(max(1, int(emu.rate_window)))
                self._drain()
                self._json(429, {"status": 429, "message": "Too many requests."})
                return
            self._route(method)
        finally:
            self._log()

    def _log(self) -> None:
        """Record this request once, before the client can see its answer: a test that
        counts requests right after a call returns must find that call's request logged."""
        if self.logged:
            return
        self.logged = True
        self.server_state.requests.append(LoggedRequest(
            self.command, self.req_path, self.query, self.status_sent, self.body_read,
            self.auth_kind, self.fault_name))

    def _fault(self, method: str, fault: Fault) -> bool:
        """Apply a fault; True when the request is fully answered by it."""
        self.fault_name = fault.kind
        if fault.kind == "status":
            self._drain()
            if fault.retry_after is not None:
                self.extra_headers["Retry-After"] = str(fault.retry_after)
            self._json(fault.status, {"status": fault.status, "message": "Injected fault."})
            return True
        if fault.kind in ("drop", "hang"):
            length = int(self.headers.get("Content-Length") or 0)
            self._read(length // 2)
            if fault.kind == "hang":
                self.server_state.hang_release.wait(timeout=30)
            self.close_connection = True
            self._log()
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return True
        if fault.kind in ("after", "delete_500"):
            self.answer = False
            self._route(method)
            self.answer = True
            self._json(fault.status, {"status": fault.status, "message": "Injected fault."})
            return True
        if fault.kind == "corrupt":
            self.corrupt = True
            self._route(method)
            return True
        raise ValueError(f"unknown fault kind {fault.kind!r}")

    def _token(self) -> tuple[str | None, str | None]:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer "):
            return header[len("Bearer "):].strip(), "bearer"
        values = parse_qs(urlsplit(self.path).query).get("access_token")
        if values:
            return values[0], "query"
        return None, None

    def _read(self, n: int) -> bytes:
        chunks = []
        while n > 0:
            chunk = self.rfile.read(min(n, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            n -= len(chunk)
            self.body_read += len(chunk)
        return b"".join(chunks)

    def _drain(self) -> bytes:
        return self._read(int(self.headers.get("Content-Length") or 0))

    def _json(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        if not self.answer:
            return
        payload = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.status_sent = status
        if body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        for name, value in {**self.extra_headers, **(headers or {})}.items():
            self.send_header(name, value)
        self._log()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _error(self, status: int, message: str, errors: list[dict[str, Any]] | None = None,
               ) -> None:
        body: dict[str, Any] = {"status": status, "message": message}
        if errors:
            body["errors"] = errors
        self._json(status, body)

    # ------------------------------------------------------------ routing

    def _route(self, method: str) -> None:
        path = self.req_path
        routes = (
            (r"/api/deposit/depositions/?", self._depositions),
            (r"/api/deposit/depositions/(\d+)", self._deposition),
            (r"/api/deposit/depositions/(\d+)/files", self._deposition_files),
            (r"/api/deposit/depositions/(\d+)/actions/(\w+)", self._action),
            (r"/api/files/([\w-]+)", self._bucket),
            (r"/api/files/([\w-]+)/(.+)", self._bucket_object),
            (r"/api/records/(\d+)", self._record),
            (r"/api/records/(\d+)/versions", self._versions),
            (r"/api/records/(\d+)/versions/latest", self._latest),
            (r"/api/records/(\d+)/files/(.+)/content", self._record_file),
            (r"/records/(\d+)/files/([^/]+)", self._record_file),
        )
        for pattern, handler in routes:
            match = re.fullmatch(pattern, path)
            if match:
                handler(method, *match.groups())
                return
        self._drain()
        self._error(404, "The requested URL was not found on the server.")

    def _auth(self, scope: str | None = "deposit:write") -> bool:
        """Check the token; answer 401/403 and return False when it is not good enough."""
        emu = self.server_state
        if self.token is None or self.token not in emu.tokens:
            self._drain()
            self._error(401, MSG_401)
            return False
        if scope is not None and scope not in emu.tokens[self.token]:
            self._drain()
            self._error(403, MSG_403)
            return False
        return True

    def _owned(self, dep_id: str) -> Deposition | None:
        dep = self.server_state.depositions.get(int(dep_id))
        if dep is None or dep.owner != self.user:
            self._drain()
            self._error(404, MSG_404)
            return None
        return dep

    def _body_json(self) -> Any:
        raw = self._drain()
        if not raw:
            return {}
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None

    def _depositions(self, method: str) -> None:
        emu = self.server_state
        if not self._auth("deposit:write" if method == "POST" else None):
            return
        if method == "GET":
            status = (self.query.get("status") or [None])[0]
            deps = [d for d in emu.depositions.values() if d.owner == self.user]
            if status == "draft":
                deps = [d for d in deps if not d.submitted or d.editing]
            elif status == "published":
                deps = [d for d in deps if d.submitted]
            deps.sort(key=lambda d: d.id, reverse=True)
            size = int((self.query.get("size") or ["10"])[0])
            page = int((self.query.get("page") or ["1"])[0])
            chunk = deps[(page - 1) * size: page * size]
            self._json(200, [emu.deposition_json(d) for d in chunk])
        elif method == "POST":
            body = self._body_json()
            if body is None or not isinstance(body, dict):
                self._error(400, "Validation error.", [{"field": "body",
                                                        "messages": ["Invalid JSON."]}])
                return
            metadata = body.get("metadata", {})
            errors = metadata_errors(metadata)
            if errors:
                self._error(400, "Validation error.", errors)
                return
            with emu.lock:
                concept, recid = emu.new_id(), emu.new_id()
                dep = Deposition(recid, concept, self.user, uuid.uuid4().hex,
                                 metadata=dict(metadata))
                emu.depositions[recid] = dep
                emu.buckets[dep.bucket] = recid
            self._json(201, emu.deposition_json(dep))
        else:
            self._drain()
            self._error(405, "The method is not allowed for the requested URL.")

    def _deposition(self, method: str, dep_id: str) -> None:
        emu = self.server_state
        if not self._auth(None if method == "GET" else "deposit:write"):
            return
        dep = self._owned(dep_id)
        if dep is None:
            return
        if method == "GET":
            self._json(200, emu.deposition_json(dep))
        elif method == "PUT":
            body = self._body_json()
            if not isinstance(body, dict) or "metadata" not in body:
                self._error(400, "Validation error.",
                            [{"field": "metadata", "messages": ["Missing data for required "
                                                                "field."]}])
                return
            metadata = body["metadata"]
            errors = metadata_errors(metadata)
            if errors:
                self._error(400, "Validation error.", errors)
                return
            if dep.submitted and not dep.editing:
                self._error(400, "Please use the edit action to edit a published record.")
                return
            metadata = {k: v for k, v in metadata.items() if k not in ("doi", "prereserve_doi")}
            with emu.lock:
                dep.metadata = metadata
                dep.modified = _now()
            self._json(200, emu.deposition_json(dep))
        elif method == "DELETE":
            self._drain()
            if dep.submitted:
                self._error(403, "Deleting a published record is not allowed.")
                return
            with emu.lock:
                del emu.depositions[dep.id]
                emu.buckets.pop(dep.bucket, None)
            self._json(204, None)
        else:
            self._drain()
            self._error(405, "The method is not allowed for the requested URL.")

    def _deposition_files(self, method: str, dep_id: str) -> None:
        if not self._auth(None):
            return
        dep = self._owned(dep_id)
        if dep is None:
            return
        if method != "GET":
            self._drain()
            self._error(405, "Use the bucket API to add or remove files.")
            return
        self._json(200, self.server_state.legacy_files(dep))

    def _action(self, method: str, dep_id: str, action: str) -> None:
        if method != "POST":
            self._drain()
            self._error(405, "The method is not allowed for the requested URL.")
            return
        scope = "deposit:actions" if action == "publish" else "deposit:write"
        if not self._auth(scope):
            return
        dep = self._owned(dep_id)
        if dep is None:
            return
        self._drain()
        handler = {"publish": self._publish, "edit": self._edit, "discard": self._discard,
                   "newversion": self._newversion}.get(action)
        if handler is None:
            self._error(404, "The requested URL was not found on the server.")
            return
        handler(dep)

    def _publish(self, dep: Deposition) -> None:
        emu = self.server_state
        if dep.submitted and not dep.editing:
            self._error(400, "The record is already published.")
            return
        errors = [{"field": f"metadata.{k}", "messages": ["Missing data for required field."]}
                  for k in REQUIRED_TO_PUBLISH if not dep.metadata.get(k)]
        if errors:
            self._error(400, "Validation error.", errors)
            return
        if not dep.files:
            self._error(400, "Missing uploaded files. To publish a record you need to upload "
                             "at least one file.")
            return
        with emu.lock:
            dep.submitted, dep.editing = True, False
            dep.saved_metadata = dict(dep.metadata)
            dep.modified = _now()
        self._json(202, emu.deposition_json(dep))

    def _edit(self, dep: Deposition) -> None:
        if not dep.submitted:
            self._error(400, "The record is not published.")
            return
        with self.server_state.lock:
            dep.editing = True
        self._json(201, self.server_state.deposition_json(dep))

    def _discard(self, dep: Deposition) -> None:
        if not dep.editing:
            self._error(400, "There are no changes to discard.")
            return
        with self.server_state.lock:
            dep.editing = False
            dep.metadata = dict(dep.saved_metadata or dep.metadata)
        self._json(201, self.server_state.deposition_json(dep))

    def _newversion(self, dep: Deposition) -> None:
        emu = self.server_state
        if not dep.submitted:
            self._error(400, "You cannot create a new version of an unpublished record.")
            return
        with emu.lock:
            if any(d.conceptrecid == dep.conceptrecid and not d.submitted
                   for d in emu.depositions.values()):
                self._error(400, "A draft of a new version already exists for this record; "
                                 "publish or discard it first.")
                return
            latest = emu.latest_published(dep.conceptrecid) or dep
            recid = emu.new_id()
            metadata = {k: v for k, v in (latest.saved_metadata or latest.metadata).items()
                        if k not in ("doi", "version", "publication_date")}
            draft = Deposition(recid, dep.conceptrecid, dep.owner, uuid.uuid4().hex,
                               metadata=metadata,
                               files={k: StoredFile(k, f.data) for k, f in latest.files.items()})
            emu.depositions[recid] = draft
            emu.buckets[draft.bucket] = recid
        self._json(201, emu.deposition_json(draft))

    def _bucket_dep(self, bucket: str) -> Deposition | None:
        dep_id = self.server_state.buckets.get(bucket)
        if dep_id is None:
            self._drain()
            self._error(404, "Bucket does not exist.")
            return None
        return self._owned(str(dep_id))

    def _bucket(self, method: str, bucket: str) -> None:
        if not self._auth(None):
            return
        dep = self._bucket_dep(bucket)
        if dep is None:
            return
        contents = [self._object_json(dep, f) for f in dep.files.values()]
        self._json(200, {"contents": contents, "id": bucket,
                         "quota_size": self.server_state.max_bytes,
                         "size": sum(len(f.data) for f in dep.files.values())})

    def _object_json(self, dep: Deposition, stored: StoredFile) -> dict[str, Any]:
        url = f"{self.server_state.base_url}/api/files/{dep.bucket}/{stored.key}"
        return {"key": stored.key, "size": len(stored.data), "checksum": f"md5:{stored.md5}",
                "mimetype": "application/octet-stream", "version_id": stored.file_id,
                "created": stored.created, "updated": stored.created, "is_head": True,
                "delete_marker": False,
                "links": {"self": url, "version": f"{url}?versionId={stored.file_id}",
                          "uploads": f"{url}?uploads"}}

    def _bucket_object(self, method: str, bucket: str, key: str) -> None:
        emu = self.server_state
        if not self._auth(None if method == "GET" else "deposit:write"):
            return
        dep = self._bucket_dep(bucket)
        if dep is None:
            return
        if method == "GET":
            stored = dep.files.get(key)
            if stored is None:
                self._error(404, "Object does not exist.")
                return
            self._raw(stored.data)
            return
        if dep.submitted:
            self._drain()
            self._error(403, "The files of a published record cannot be changed.")
            return
        if method == "DELETE":
            self._drain()
            with emu.lock:
                found = dep.files.pop(key, None)
            if found is None:
                self._error(404, "Object does not exist.")
            else:
                self._json(204, None)
            return
        if method != "PUT":
            self._drain()
            self._error(405, "The method is not allowed for the requested URL.")
            return
        if "/" in key:
            self._drain()
            self._error(400, "Invalid key: it cannot contain '/'.")
            return
        length = self.headers.get("Content-Length")
        if length is None:
            self._error(411, "Content-Length required.")
            self.close_connection = True
            return
        size = int(length)
        others = [f for k, f in dep.files.items() if k != key]
        if key not in dep.files and len(others) >= emu.max_files:
            self._drain()
            self._error(400, f"Too many files: a record holds at most {emu.max_files}.")
            return
        if sum(len(f.data) for f in others) + size > emu.max_bytes:
            self._drain()
            self._error(400, "Bucket quota exceeded.")
            return
        data = self._read(size)
        if len(data) < size:
            self.close_connection = True
            return
        if self.corrupt and data:
            data = bytes([data[0] ^ 0xFF]) + data[1:]
        stored = StoredFile(key, data)
        with emu.lock:
            dep.files[key] = stored
            dep.modified = _now()
        self._json(201, self._object_json(dep, stored))

    def _raw(self, data: bytes) -> None:
        """Bytes of a file, honouring a single ``Range: bytes=a-b`` (as GDAL's /vsicurl/ asks)."""
        status, body, extra = 200, data, {"Accept-Ranges": "bytes"}
        if self.corrupt and data:  # a "corrupt" fault on a download: one byte flipped in transit
            data = bytes([data[0] ^ 0xFF]) + data[1:]
            body = data
        match = re.fullmatch(r"bytes=(\d+)-(\d*)", self.headers.get("Range", ""))
        if match:
            start = int(match[1])
            end = min(int(match[2]) if match[2] else len(data) - 1, len(data) - 1)
            status, body = 206, data[start:end + 1]
            extra["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
        self.send_response(status)
        self.status_sent = status
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        for name, value in {**self.extra_headers, **extra}.items():
            self.send_header(name, value)
        self._log()
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _published_or_404(self, recid: str) -> Deposition | None:
        dep = self.server_state.depositions.get(int(recid))
        if dep is None or not dep.submitted:
            self._drain()
            self._error(404, "The persistent identifier does not exist.")
            return None
        return dep

    def _concept_redirect(self, recid: str, suffix: str) -> bool:
        """A concept id redirects to its latest version, as on Zenodo."""
        emu = self.server_state
        latest = emu.latest_published(int(recid))
        if int(recid) in emu.depositions or latest is None:
            return False
        self._drain()
        self._json(302, None, {"Location": f"{emu.base_url}/api/records/{latest.id}{suffix}"})
        return True

    def _record(self, method: str, recid: str) -> None:
        if self._concept_redirect(recid, ""):
            return
        dep = self._published_or_404(recid)
        if dep is not None:
            self._json(200, self.server_state.record_json(dep))

    def _versions(self, method: str, recid: str) -> None:
        emu = self.server_state
        dep = emu.depositions.get(int(recid))
        concept = dep.conceptrecid if dep else int(recid)
        versions = emu.published(concept)
        if not versions:
            self._drain()
            self._error(404, "The persistent identifier does not exist.")
            return
        hits = [emu.record_json(d) for d in reversed(versions)]
        self._json(200, {"hits": {"hits": hits, "total": len(hits)}})

    def _latest(self, method: str, recid: str) -> None:
        emu = self.server_state
        dep = emu.depositions.get(int(recid))
        concept = dep.conceptrecid if dep else int(recid)
        latest = emu.latest_published(concept)
        if latest is None:
            self._drain()
            self._error(404, "The persistent identifier does not exist.")
            return
        self._drain()
        self._json(302, None, {"Location": f"{emu.base_url}/api/records/{latest.id}"})

    def _record_file(self, method: str, recid: str, key: str) -> None:
        dep = self._published_or_404(recid)
        if dep is None:
            return
        stored = dep.files.get(key)
        if stored is None:
            self._error(404, "Object does not exist.")
            return
        self._raw(stored.data)
