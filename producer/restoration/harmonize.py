"""DiffGF stage 2: mask-guided harmonization in pixel space.

The generated image is right in texture but its colours drift from the known pixels (the
autoencoder is lossy and the diffusion only sees latents), which shows as seams along every gap.
Harmonization is gradient-domain (Poisson) blending restricted to the gaps: inside a gap the
result keeps the generated image's gradients, and at the gap's border it meets the known pixels
exactly. Writing the result as ``generated + c``, the correction ``c`` is harmonic inside the
gaps (discrete Laplace equation, 4-neighbourhood) with ``c = known - generated`` on known
neighbours (Dirichlet) and zero normal derivative towards pixels that hold no data or lie outside
the array (Neumann). A gap region with no known neighbour keeps the generated pixels (a tiny
diagonal term pins ``c`` to 0 there). Known pixels are copied, never modified; the generated
values at known pixels (the autoencoder's reconstruction there) only supply the gradient across
the gap's border, as in standard Poisson image editing.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray
from scipy.sparse.linalg import splu

#: Ties a region without known neighbours to the generated values (c -> 0); negligible elsewhere.
_PIN = 1e-6


def correction_field(
    generated: NDArray[np.floating],
    target: NDArray[np.floating],
    gaps: NDArray[np.bool_],
    known: NDArray[np.bool_],
) -> NDArray[np.float64]:
    """The harmonic correction ``c`` (n_gap_pixels × bands) described in the module docstring."""
    h, w = gaps.shape
    n = int(gaps.sum())
    bands = generated.shape[2]
    index = np.full((h, w), -1, np.int64)
    index[gaps] = np.arange(n)
    diag = np.full(n, _PIN)
    rhs = np.zeros((n, bands))
    rows: list[NDArray[np.int64]] = []
    cols: list[NDArray[np.int64]] = []
    offset = (target.astype(np.float64) - generated.astype(np.float64))
    for dr, dc in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        # Pixel p = (r, c) and its neighbour q = (r + dr, c + dc), both inside the array.
        pr = slice(max(0, -dr), h - max(0, dr))
        pc = slice(max(0, -dc), w - max(0, dc))
        qr = slice(max(0, dr), h - max(0, -dr))
        qc = slice(max(0, dc), w - max(0, -dc))
        p_gap = gaps[pr, pc]
        q_gap = gaps[qr, qc]
        q_known = known[qr, qc] & ~q_gap
        both = p_gap & q_gap
        rows.append(index[pr, pc][both])
        cols.append(index[qr, qc][both])
        edge = p_gap & q_known
        np.add.at(diag, index[pr, pc][p_gap & (q_gap | q_known)], 1.0)
        np.add.at(rhs, index[pr, pc][edge], offset[qr, qc][edge])
    r = np.concatenate(rows)
    c = np.concatenate(cols)
    matrix = sp.csc_matrix(
        (np.concatenate([diag, -np.ones(len(r))]),
         (np.concatenate([np.arange(n), r]), np.concatenate([np.arange(n), c]))),
        shape=(n, n),
    )
    return splu(matrix).solve(rhs)


def harmonize_float(
    generated: NDArray[np.floating],
    rgb: NDArray[np.uint8],
    gaps: NDArray[np.bool_],
    known: NDArray[np.bool_] | None = None,
) -> NDArray[np.float64]:
    """Harmonized image as float (known pixels equal ``rgb``; gaps = generated + correction)."""
    if generated.shape != rgb.shape or rgb.shape[:2] != gaps.shape:
        raise ValueError(f"shapes differ: generated {generated.shape}, image {rgb.shape}, "
                         f"gaps {gaps.shape}")
    if known is None:
        known = ~gaps & np.any(rgb != 0, axis=2)
    out = rgb.astype(np.float64)
    if gaps.any():
        out[gaps] = generated[gaps] + correction_field(generated, rgb, gaps, known)
    return out


def harmonize(
    generated: NDArray[np.floating],
    rgb: NDArray[np.uint8],
    gaps: NDArray[np.bool_],
    known: NDArray[np.bool_] | None = None,
) -> NDArray[np.uint8]:
    """Harmonized uint8 image: known pixels bit-identical, gap pixels seam-free."""
    out = rgb.copy()
    if gaps.any():
        vals = harmonize_float(generated, rgb, gaps, known)[gaps]
        out[gaps] = np.clip(np.rint(vals), 0, 255).astype(np.uint8)
    return out
