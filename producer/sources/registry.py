"""Pick a scene source from the ``--source`` text: ``gee``, ``local:DIR`` or ``demo``.

Sources are imported only when chosen, so ``--source demo`` never imports Earth Engine and
``--source gee`` never imports the demo renderer. Options the command line passes for every
source (``project=None``, ``top=None`` ...) are dropped when unset; a set option that the chosen
source does not take is refused with the list of those it does take.
"""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any

from producer.sources.base import SceneSource
from producer.sources.errors import SourceError
from producer.spec import DEMO_SOURCE

#: Source kind -> "module:Class".
SOURCES: dict[str, str] = {
    "gee": "producer.sources.gee:EarthEngineSource",
    "local": "producer.sources.local:LocalFolderSource",
    DEMO_SOURCE: "producer.sources.demo:DemoSource",
}
VALID_FORMS = "'gee' (Earth Engine), 'local:DIR' (a folder of GeoTIFF scenes) or 'demo'"


def parse_source_spec(spec: str) -> tuple[str, Path | None]:
    """The source kind and, for ``local:DIR``, the folder."""
    text = (spec or "").strip()
    kind, sep, rest = text.partition(":")
    kind = kind.lower()
    if kind == "local":
        if not sep or not rest.strip():
            raise SourceError(f"--source {spec!r}: 'local' needs a folder, as in local:DIR; "
                              f"valid forms: {VALID_FORMS}")
        return kind, Path(rest.strip()).expanduser()
    if kind in ("gee", DEMO_SOURCE) and not sep:
        return kind, None
    raise SourceError(f"--source {spec!r} is not a scene source; valid forms: {VALID_FORMS}")


def _load(kind: str) -> type:
    module_name, class_name = SOURCES[kind].split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError(f"--source {kind}: cannot import {module_name} ({exc})") from exc
    return getattr(module, class_name)


def source_options(spec: str) -> set[str]:
    """The options the source named by ``spec`` is built with (its keyword parameters)."""
    cls = _load(parse_source_spec(spec)[0])
    return {name for name, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - {"folder"}


def get_source(spec: str, **options: Any) -> SceneSource:
    """The scene source named by ``spec``, built with the options it takes."""
    kind, folder = parse_source_spec(spec)
    cls = _load(kind)
    accepted = source_options(spec)
    given = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(given) - accepted)
    if unknown:
        raise SourceError(f"--source {kind} does not take option(s) {unknown}; it takes "
                          f"{sorted(accepted)}")
    if folder is not None:
        return cls(folder, **given)
    return cls(**given)
