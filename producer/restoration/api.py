"""Restoring Landsat 7 SLC-off scenes: one entry point for every restoration method.

The method is always named by the caller and recorded by the producer in the restoration token
and provenance (``producer.spec.RESTORATION_METHODS``); one method is never substituted for
another. DiffGF needs weights from a local file; without them it fails with
:class:`MissingWeightsError` rather than falling back to a classical fill.

The DiffGF model (torch, diffusers: seconds to import) is imported only when a scene is
restored with it, so ``produce`` can resolve ``DEMO_WEIGHTS`` and skip up-to-date shelf-years
without paying for it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import rasterio
from numpy.typing import NDArray

from producer.provenance import file_sha256
from producer.restoration.classical import restore_fillnodata
from producer.slcoff import detect_gaps, footprint_of
from producer.spec import RESTORATION_METHODS
from producer.writer import atomic_path

if TYPE_CHECKING:
    from producer.restoration.diffgf import DiffGF

#: The demo DiffGF trained by ``icedamage train-diffgf`` (see DIFFGF_MODEL_CARD.md there).
DEMO_WEIGHTS = Path(__file__).resolve().parent.parent / "weights" / "diffgf_demo.safetensors"

Progress = Callable[[int, int], None]


class MissingWeightsError(FileNotFoundError):
    """DiffGF was asked for but no weights file was given or found."""

    def __init__(self, weights: Path | None = None) -> None:
        where = f"DiffGF weights {weights} do not exist" if weights else "no DiffGF weights given"
        super().__init__(
            f"{where}: Landsat 7 SLC-off imagery needs a restoration model. "
            "Pass --diffgf FILE or choose --restoration FillNodata explicitly."
        )


@dataclass(frozen=True)
class RestorationResult:
    """What a scene restoration did, for the provenance record."""

    method: str
    gap_pixels: int
    gap_fraction: float
    weights: str | None
    weights_sha256: str | None
    seed: int


def check_method(method: str) -> str:
    """``method`` if it is a known restoration method, else a ValueError listing them."""
    if method not in RESTORATION_METHODS:
        raise ValueError(f"restoration method {method!r} is not one of "
                         f"{sorted(RESTORATION_METHODS)}")
    return method


@lru_cache(maxsize=4)
def _cached_model(path: str, mtime_ns: int) -> DiffGF:
    from producer.restoration.diffgf import load_diffgf

    return load_diffgf(Path(path))


def resolve_model(weights: Path | str | DiffGF | None) -> DiffGF:
    """A loaded DiffGF model from a model, a file or a ``save_pretrained`` directory."""
    from producer.restoration.diffgf import DiffGF

    if isinstance(weights, DiffGF):
        return weights
    if weights is None:
        raise MissingWeightsError()
    path = Path(weights)
    if not path.exists():
        raise MissingWeightsError(path)
    return _cached_model(str(path.resolve()), path.stat().st_mtime_ns)


def known_pixels(rgb: NDArray[np.uint8], gaps: NDArray[np.bool_]) -> NDArray[np.bool_]:
    """Pixels that hold data: not a gap and non-zero in some band."""
    return ~gaps & np.any(rgb != 0, axis=2)


def restore(
    rgb: NDArray[np.uint8],
    gap_mask: NDArray[np.bool_],
    method: str = "DiffGF",
    weights: Path | str | DiffGF | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    *,
    steps: int | None = None,
) -> NDArray[np.uint8]:
    """Fill the ``gap_mask`` pixels of an HWC uint8 RGB image; every other pixel is unchanged."""
    check_method(method)
    if rgb.ndim != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"expected an HWC uint8 image, got {rgb.dtype} {rgb.shape}")
    if gap_mask.shape != rgb.shape[:2]:
        raise ValueError(f"gap mask {gap_mask.shape} and image {rgb.shape[:2]} differ in size")
    gaps = gap_mask.astype(bool)
    known = known_pixels(rgb, gaps)
    if method == "FillNodata":
        out = restore_fillnodata(rgb, gaps, known)
        if progress is not None:
            progress(1, 1)
        return out
    from producer.restoration.diffgf import restore_array

    model = resolve_model(weights)
    kwargs = {} if steps is None else {"steps": steps}
    return restore_array(model, rgb, gaps, known, seed=seed, progress=progress, **kwargs)


def restore_scene_file(
    src: Path,
    dst: Path,
    method: str,
    weights: Path | str | None = None,
    seed: int = 0,
    progress: Progress | None = None,
    footprint: NDArray[np.bool_] | None = None,
) -> RestorationResult:
    """Restore the SLC-off gaps of a 3-band UInt8 GeoTIFF into ``dst`` (same georeferencing).

    Gaps are the pixels zero in all bands inside the footprint (given, or the filled hull of
    the non-zero pixels). ``dst`` is written atomically.
    """
    check_method(method)
    if method == "DiffGF":
        resolve_model(weights)  # fail before reading a large scene
    with rasterio.open(src) as ds:
        if ds.count != 3 or ds.dtypes[0] != "uint8":
            raise ValueError(f"{src}: expected 3 UInt8 bands, found {ds.count} {ds.dtypes[0]}")
        profile = ds.profile
        rgb = np.moveaxis(ds.read(), 0, -1)
    gaps = detect_gaps(rgb, footprint if footprint is not None else footprint_of(rgb))
    out = restore(rgb, gaps, method, weights, seed, progress)
    with atomic_path(Path(dst)) as tmp, rasterio.open(tmp, "w", **profile) as dst_ds:
        dst_ds.write(np.moveaxis(out, -1, 0))
    wpath = None if method != "DiffGF" or weights is None else Path(weights)
    return RestorationResult(
        method=method,
        gap_pixels=int(gaps.sum()),
        gap_fraction=float(gaps.sum() / max(1, (gaps | known_pixels(rgb, gaps)).sum())),
        weights=str(wpath) if wpath else None,
        weights_sha256=file_sha256(wpath) if wpath else None,
        seed=seed,
    )
