"""Shared fixtures: a small valid release written with the real writer."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.release_factory import build_release

SHARED = Path(__file__).resolve().parents[2] / "shared"
STAC_SCHEMAS = Path(__file__).resolve().parents[1].parent / "shared" / "stac-schemas"


@pytest.fixture(scope="session", autouse=True)
def _private_user_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Caches (weights hashes, Earth Engine downloads, STAC schemas) go to a session folder,
    not ~/.cache; nothing is fetched from the internet (tests that fetch use a loopback mirror)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("ICEDAMAGE_CACHE", str(tmp_path_factory.mktemp("user-cache")))
        patch.setenv("ICEDAMAGE_OFFLINE", "1")
        yield


@pytest.fixture(scope="session")
def pristine_release(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid release, built once per session; never modify it (copy with ``release``)."""
    return build_release(tmp_path_factory.mktemp("pristine") / "release")


@pytest.fixture
def release(pristine_release: Path, tmp_path: Path) -> Path:
    """A private copy of the valid release that a test may corrupt."""
    target = tmp_path / "release"
    shutil.copytree(pristine_release, target)
    return target


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init SegFormer saved as our safetensors checkpoint: ``produce`` checks its
    weights first, and the mechanics tests need a model, not a trained one."""
    import torch

    from producer.segmentation import DamageSegmenter, ModelInfo, save_checkpoint

    torch.manual_seed(0)
    model = DamageSegmenter.build("custom", depths=[1, 1, 1, 1], hidden_sizes=[8, 16, 32, 32],
                                  decoder_hidden_size=16)
    path = tmp_path_factory.mktemp("weights") / "tiny.safetensors"
    save_checkpoint(model, path, ModelInfo(name="tiny-random-test", variant="custom"))
    return path
