"""Fixtures of the publisher's tests (a pytest plugin: ``pytest_plugins``): the emulator on a
free port and a publishable release."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.publish_support import (
    TOKEN,
    WRITE_ONLY_TOKEN,
    LegacySerializerEmulator,
    make_publishable,
)
from tests.zenodo_emulator import FULL_SCOPES, ZenodoEmulator


@pytest.fixture(scope="session")
def publishable_pristine(pristine_release: Path, tmp_path_factory: pytest.TempPathFactory,
                         ) -> Path:
    """The valid fixture release plus release.yaml and its catalog (built once)."""
    target = tmp_path_factory.mktemp("publishable") / "release"
    shutil.copytree(pristine_release, target)
    return make_publishable(target)


@pytest.fixture
def pub_release(publishable_pristine: Path, tmp_path: Path) -> Path:
    """A private copy of the publishable release."""
    target = tmp_path / "release"
    shutil.copytree(publishable_pristine, target)
    return target


@pytest.fixture
def emulator() -> Iterator[ZenodoEmulator]:
    """A fresh Zenodo emulator on a free port of 127.0.0.1, answering with metadata spelled
    as Zenodo's legacy serializer spells it (``LegacySerializerEmulator``)."""
    emu = LegacySerializerEmulator(
        {TOKEN: FULL_SCOPES, WRITE_ONLY_TOKEN: frozenset({"deposit:write"})},
        owners={TOKEN: "tang", WRITE_ONLY_TOKEN: "tang"})
    emu.start()
    yield emu
    emu.stop()
