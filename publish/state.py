"""The publisher's resumable local state, kept in the release's hidden publish folder.

One JSON file records where a publication stands: the server, the concept, the draft and its
bucket, which files are uploaded and verified (key, size, md5), and, once published, the DOIs.
``--resume`` reads it to continue without re-sending verified bytes. It is written atomically
after every step, and it never holds the token: ``save_state`` refuses text that contains one.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from producer.spec import PUBLISH_STATE_DIR
from producer.writer import atomic_path

STATE_FILE = "state.json"
PACKAGES_DIR = "packages"


@dataclass
class FileState:
    """A file of the draft as last verified on the server."""

    size: int
    md5: str
    verified: bool = False


@dataclass
class PublishState:
    """Where one version's publication stands."""

    version: str
    base_url: str
    stage: str = "started"
    concept_id: str | None = None
    deposition_id: int | None = None
    bucket: str | None = None
    html: str | None = None
    files: dict[str, FileState] = field(default_factory=dict)
    record_id: int | None = None
    doi: str | None = None
    conceptdoi: str | None = None
    published: str | None = None

    def to_json(self) -> str:
        """Stable JSON text."""
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> PublishState:
        """Parse ``to_json`` output."""
        data: dict[str, Any] = json.loads(text)
        files = {k: FileState(**v) for k, v in data.pop("files", {}).items()}
        return cls(files=files, **data)


def state_dir(release_dir: Path) -> Path:
    """The release's hidden publish folder."""
    return Path(release_dir) / PUBLISH_STATE_DIR


def packages_dir(release_dir: Path) -> Path:
    """Where the packages of the version being published are built."""
    return state_dir(release_dir) / PACKAGES_DIR


#: The concept each server holds of this release (state.json holds only the latest run, which
#: a rehearsal on another server replaces), by normalised base URL.
CONCEPTS_FILE = "concepts.json"


def published_concepts(release_dir: Path) -> dict[str, dict[str, Any]]:
    """Server (normalised base URL) → ``{"concept_id", "conceptdoi", "version"}`` of the
    latest version this release published there; empty when none (or unreadable)."""
    path = state_dir(release_dir) / CONCEPTS_FILE
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_published_concept(release_dir: Path, server: str, concept_id: str | None,
                             conceptdoi: str | None, version: str) -> None:
    """Remember that ``server`` now holds ``version`` of this release under ``concept_id``."""
    concepts = published_concepts(release_dir)
    concepts[server] = {"concept_id": concept_id, "conceptdoi": conceptdoi, "version": version}
    with atomic_path(state_dir(release_dir) / CONCEPTS_FILE) as tmp:
        tmp.write_text(json.dumps(concepts, indent=2, sort_keys=True) + "\n")


def load_state(release_dir: Path) -> PublishState | None:
    """The saved state, or None when nothing was started."""
    path = state_dir(release_dir) / STATE_FILE
    return PublishState.from_json(path.read_text()) if path.is_file() else None


def save_state(release_dir: Path, state: PublishState, secrets: tuple[str, ...] = ()) -> Path:
    """Write the state atomically; refuse if any secret would end up in the file."""
    text = state.to_json()
    if any(secret and secret in text for secret in secrets):
        raise ValueError("refusing to write a secret into the publish state")
    path = state_dir(release_dir) / STATE_FILE
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return path
