"""The user's icedamage cache folder, and remembered SHA-256 hashes of weights files.

``produce`` identifies its weights by their SHA-256 (``producer.provenance.file_sha256``), which
enters every shelf-year's inputs digest. Reading a checkpoint of hundreds of MB on every run made
a re-run that skips everything pay for it, so :func:`cached_sha256` remembers each hash in
``<cache>/file-sha256.json``, keyed by the resolved path and a stat signature of the file (of
every file, for a folder): size, mtime_ns, ctime_ns, inode and device.

Why that signature is safe: writing to a file changes its ctime, which no tool can set back (``cp
-p``, ``touch -d`` and ``os.utime`` set mtime only), and replacing it (``mv``, atomic writes)
changes its inode, so changed content misses the cache and is hashed again. A write within the
same clock tick as the hashing would keep the signature, so, like git's "racily clean" index
entries, a hash is trusted only if the file's newest timestamp is at least ``RACY_NS`` older
than the moment it was hashed. The cache is an optimisation only: an unreadable, corrupt or
unwritable cache means the file is hashed again, never an error.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

from producer.provenance import file_sha256

#: Environment variable naming the cache folder (tests, shared machines).
CACHE_ENV = "ICEDAMAGE_CACHE"
#: File of remembered hashes inside the cache folder.
HASH_CACHE_FILE = "file-sha256.json"
#: A remembered hash is trusted only for files last changed this long before it was computed
#: (coarse file-system clocks: 1 s on ext3, 2 s on FAT).
RACY_NS = 3_000_000_000
#: Most recently hashed files kept in the cache.
MAX_ENTRIES = 256


def default_cache_dir() -> Path:
    """``$ICEDAMAGE_CACHE``, else ``$XDG_CACHE_HOME/icedamage``, else ``~/.cache/icedamage``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "icedamage"


def stat_signature(path: Path) -> list[list[Any]]:
    """[relative name, size, mtime_ns, ctime_ns, inode, device] of the file, or of every file
    of a folder in name order (the files ``file_sha256`` reads)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
        names = [str(f.relative_to(path)) for f in files]
    else:
        files, names = [path], [""]
    signature = []
    for name, file in zip(names, files, strict=True):
        st = file.stat()
        signature.append([name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev])
    return signature


def _newest_change_ns(signature: list[list[Any]]) -> int:
    return max((max(entry[2], entry[3]) for entry in signature), default=0)


def _hash_cache_path() -> Path:
    return default_cache_dir() / HASH_CACHE_FILE


def _read_entries() -> dict[str, Any]:
    """The remembered hashes; an absent or corrupt cache is an empty one."""
    try:
        entries = json.loads(_hash_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return entries if isinstance(entries, dict) else {}


def _write_entries(entries: dict[str, Any]) -> None:
    """Store the newest ``MAX_ENTRIES`` hashes atomically; a cache that cannot be written is
    silently left as it was (concurrent runs: the last writer wins, the loser hashes again)."""
    from producer.writer import atomic_path

    def hashed_at(item: tuple[str, Any]) -> int:
        value = item[1].get("hashed_ns") if isinstance(item[1], dict) else None
        return value if isinstance(value, int) else 0

    kept = dict(sorted(entries.items(), key=hashed_at)[-MAX_ENTRIES:])
    with contextlib.suppress(OSError), atomic_path(_hash_cache_path()) as tmp:
        tmp.write_text(json.dumps(kept, indent=1, sort_keys=True))


def _remembered(entry: Any, signature: list[list[Any]]) -> str | None:
    """The entry's hash if it was taken of exactly this file state, safely after its last change."""
    if not isinstance(entry, dict) or entry.get("signature") != signature:
        return None
    hashed_ns, sha = entry.get("hashed_ns"), entry.get("sha256")
    if not isinstance(hashed_ns, int) or _newest_change_ns(signature) > hashed_ns - RACY_NS:
        return None
    return sha if isinstance(sha, str) and len(sha) == 64 else None


def cached_sha256(path: Path) -> str:
    """``file_sha256(path)``, remembered across runs while the file (or folder) is unchanged."""
    path = Path(path).resolve()
    signature = stat_signature(path)
    entries = _read_entries()
    sha = _remembered(entries.get(str(path)), signature)
    if sha is not None:
        return sha
    hashed_ns = time.time_ns()  # before reading: any later write is stamped after it
    sha = file_sha256(path)
    if stat_signature(path) == signature:  # not written to while it was read
        entries[str(path)] = {"signature": signature, "hashed_ns": hashed_ns, "sha256": sha}
        _write_entries(entries)
    return sha
