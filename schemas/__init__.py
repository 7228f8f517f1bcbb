"""JSON Schemas shipped with icedamage: our STAC product extension.

The extension schema lives in ``schemas/icedamage/v<version>/schema.json`` and is read through
``importlib.resources`` so it works from a wheel as well as a checkout. Its ``$id`` is the URL
that items and collections list in ``stac_extensions``; validators map that URL to this file so
no network is needed.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources
from importlib.abc import Traversable
from typing import Any

EXTENSION_VERSION = "v1.0.0"
#: The URL our items and collection declare in ``stac_extensions``.
SCHEMA_URI = f"https://icedamage.github.io/stac-extension/{EXTENSION_VERSION}/schema.json"
#: Field-name prefix of the extension.
PREFIX = "icedamage:"


def schema_resource() -> Traversable:
    """The packaged schema file of the current extension version."""
    return resources.files(__name__) / "icedamage" / EXTENSION_VERSION / "schema.json"


@cache
def _schema_text() -> str:
    return schema_resource().read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The extension's JSON Schema as a fresh dict (callers may mutate it)."""
    return json.loads(_schema_text())


def schema_map() -> dict[str, dict[str, Any]]:
    """Schema URL -> schema dict, for seeding an offline validator."""
    return {SCHEMA_URI: load_schema()}
