"""``get_source``: the --source text picks gee, local:DIR or demo, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from producer.sources.errors import SourceError
from producer.sources.gee import EarthEngineSource
from producer.sources.local import LocalFolderSource
from producer.sources.registry import get_source, parse_source_spec


def test_gee_takes_its_options_and_drops_unset_ones(tmp_path: Path) -> None:
    source = get_source("gee", project="my-project", top=5, cache_dir=tmp_path, resampling=None)
    assert isinstance(source, EarthEngineSource) and source.name == "gee"
    assert (source.project, source.top, source.cache_dir) == ("my-project", 5, tmp_path)


def test_local_takes_the_folder(tmp_path: Path) -> None:
    source = get_source(f"local:{tmp_path}", resampling="bilinear", project=None)
    assert isinstance(source, LocalFolderSource) and source.name == "local"
    assert (source.folder, source.resampling) == (tmp_path, "bilinear")


def test_demo_is_imported_lazily() -> None:
    source = get_source("demo")
    assert type(source).__module__ == "producer.sources.demo" and source.name == "demo"


@pytest.mark.parametrize(("spec", "message"), [
    ("drive", "is not a scene source"),
    ("local", "needs a folder"),
    ("local:", "needs a folder"),
    ("gee:x", "is not a scene source"),
    ("", "is not a scene source"),
])
def test_bad_specs_list_the_valid_forms(spec: str, message: str) -> None:
    with pytest.raises(SourceError, match=message) as info:
        get_source(spec)
    assert "'gee'" in str(info.value) and "'local:DIR'" in str(info.value)
    assert "'demo'" in str(info.value)


def test_options_a_source_does_not_take_are_refused(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"does not take option\(s\) \['project'\]"):
        get_source(f"local:{tmp_path}", project="p")
    with pytest.raises(SourceError, match="does not exist"):
        get_source(f"local:{tmp_path / 'missing'}")


def test_parse_keeps_colons_in_folders() -> None:
    assert parse_source_spec("local:/data/a:b") == ("local", Path("/data/a:b"))
    assert parse_source_spec(" GEE ") == ("gee", None)
