"""Classical single-image gap fill: GDAL FillNodata (``rasterio.fill.fillnodata``).

An explicit alternative to DiffGF, chosen by the user (``--restoration FillNodata``) and named
in the product's restoration token (``_slc_off_FillNodata``) and provenance. GDAL's algorithm
interpolates each missing pixel from the valid pixels found along rays in several directions
(inverse-distance weighting), band by band. Only gap pixels are written; pixels outside the
scene footprint are treated as missing input, so they never pull gap values towards black.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from rasterio.fill import fillnodata

#: Farthest a valid pixel is looked for, in pixels (SLC-off gaps are at most ~14 px wide).
MAX_SEARCH_DISTANCE = 100.0
#: Smoothing passes GDAL runs over the filled pixels (none: the fill stays an interpolation).
SMOOTHING_ITERATIONS = 0


def restore_fillnodata(
    rgb: NDArray[np.uint8],
    gaps: NDArray[np.bool_],
    known: NDArray[np.bool_],
    *,
    max_search_distance: float = MAX_SEARCH_DISTANCE,
    smoothing_iterations: int = SMOOTHING_ITERATIONS,
) -> NDArray[np.uint8]:
    """Fill ``gaps`` of an HWC uint8 image from the ``known`` pixels; others stay unchanged."""
    out = rgb.copy()
    if not gaps.any():
        return out
    valid = (known & ~gaps).astype(np.uint8)
    for band in range(rgb.shape[2]):
        filled = fillnodata(rgb[..., band].copy(), mask=valid,
                            max_search_distance=max_search_distance,
                            smoothing_iterations=smoothing_iterations)
        out[..., band][gaps] = filled[gaps]
    return out
