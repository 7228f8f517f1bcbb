"""Image-quality metrics of a restoration against the complete reference (paper 2.2, Table 4).

PSNR, SSIM, UIQI, CC and RMSE, each over the whole image and over the gap pixels only (the
only pixels a restoration changes). Images are uint8 HWC; RMSE is reported on the [0, 1] scale
(value / 255) as in the paper's Table 4, PSNR with a data range of 255 (equivalently 1).

* PSNR (Horé and Ziou 2010): 10 log10(R² / MSE); infinite for identical images.
* SSIM (Wang et al. 2004): scikit-image's ``structural_similarity`` (7×7 windows, per band,
  averaged); the gap value is the mean of the SSIM map over gap pixels.
* UIQI (Wang and Bovik 2002): Q = 4 σxy μx μy / ((σx² + σy²)(μx² + μy²)) in 8×8 sliding
  windows, averaged over windows and bands (a window of two identical constants counts as 1).
* CC: Pearson correlation of the pixel values, per band, averaged.
* RMSE: root-mean-square difference on the [0, 1] scale.
LPIPS needs pretrained network weights; none are stored locally, so it is not computed.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray
from scipy.ndimage import uniform_filter
from skimage.metrics import structural_similarity

DATA_RANGE = 255.0
UIQI_WINDOW = 8
METRICS: tuple[str, ...] = ("PSNR", "SSIM", "UIQI", "CC", "RMSE")


def _as_float(img: NDArray[np.generic]) -> NDArray[np.float64]:
    arr = np.asarray(img, dtype=np.float64)
    return arr[..., None] if arr.ndim == 2 else arr


def _select(mask: NDArray[np.bool_] | None, arr: NDArray[np.float64]) -> NDArray[np.float64]:
    """Pixels (n × bands) inside ``mask`` (all pixels when None)."""
    return arr.reshape(-1, arr.shape[-1]) if mask is None else arr[mask]


def rmse(ref: NDArray[np.generic], test: NDArray[np.generic],
         mask: NDArray[np.bool_] | None = None) -> float:
    """Root-mean-square error on the [0, 1] scale."""
    d = _select(mask, _as_float(ref)) - _select(mask, _as_float(test))
    return float(np.sqrt(np.mean(d**2))) / DATA_RANGE if d.size else float("nan")


def psnr(ref: NDArray[np.generic], test: NDArray[np.generic],
         mask: NDArray[np.bool_] | None = None) -> float:
    """Peak signal-to-noise ratio in dB (data range 255)."""
    e = rmse(ref, test, mask)
    if math.isnan(e):
        return e
    return math.inf if e == 0 else float(20.0 * math.log10(1.0 / e))


def cc(ref: NDArray[np.generic], test: NDArray[np.generic],
       mask: NDArray[np.bool_] | None = None) -> float:
    """Pearson correlation coefficient per band, averaged over bands."""
    a = _select(mask, _as_float(ref))
    b = _select(mask, _as_float(test))
    vals = []
    for k in range(a.shape[1]):
        x, y = a[:, k] - a[:, k].mean(), b[:, k] - b[:, k].mean()
        den = math.sqrt(float((x * x).sum() * (y * y).sum()))
        vals.append(float((x * y).sum()) / den if den else (1.0 if np.array_equal(
            a[:, k], b[:, k]) else 0.0))
    return float(np.mean(vals))


def ssim_map(ref: NDArray[np.generic], test: NDArray[np.generic]) -> NDArray[np.float64]:
    """Per-pixel SSIM averaged over bands (scikit-image, data range 255)."""
    a, b = _as_float(ref), _as_float(test)
    maps = [structural_similarity(a[..., k], b[..., k], data_range=DATA_RANGE, full=True)[1]
            for k in range(a.shape[-1])]
    return np.mean(maps, axis=0)


def ssim(ref: NDArray[np.generic], test: NDArray[np.generic],
         mask: NDArray[np.bool_] | None = None) -> float:
    """Mean SSIM (over the image, or over the mask's pixels)."""
    a, b = _as_float(ref), _as_float(test)
    if mask is None:
        return float(np.mean([structural_similarity(a[..., k], b[..., k], data_range=DATA_RANGE)
                              for k in range(a.shape[-1])]))
    return float(ssim_map(ref, test)[mask].mean()) if mask.any() else float("nan")


def uiqi_map(ref: NDArray[np.generic], test: NDArray[np.generic],
             window: int = UIQI_WINDOW) -> NDArray[np.float64]:
    """Per-pixel universal image quality index (window centred on the pixel), band-averaged."""
    a, b = _as_float(ref), _as_float(test)
    maps = []
    for k in range(a.shape[-1]):
        x, y = a[..., k], b[..., k]
        mx, my = uniform_filter(x, window), uniform_filter(y, window)
        vx = uniform_filter(x * x, window) - mx * mx
        vy = uniform_filter(y * y, window) - my * my
        cxy = uniform_filter(x * y, window) - mx * my
        num = 4.0 * cxy * mx * my
        den = (vx + vy) * (mx * mx + my * my)
        tiny = den <= 1e-12 * max(1.0, float(np.max(den)) if den.size else 1.0)
        q = np.where(tiny, 0.0, num / np.where(tiny, 1.0, den))
        # Identical constant windows: Q is 0/0; they are a perfect match.
        same = tiny & (np.abs(mx - my) < 1e-9) & (vx < 1e-9) & (vy < 1e-9)
        maps.append(np.where(same, 1.0, q))
    return np.mean(maps, axis=0)


def uiqi(ref: NDArray[np.generic], test: NDArray[np.generic],
         mask: NDArray[np.bool_] | None = None) -> float:
    """Mean UIQI over the image (valid 8×8 windows) or over the mask's pixels."""
    q = uiqi_map(ref, test)
    if mask is None:
        h = UIQI_WINDOW // 2
        inner = q[h:q.shape[0] - UIQI_WINDOW + h + 1, h:q.shape[1] - UIQI_WINDOW + h + 1]
        return float((inner if inner.size else q).mean())
    return float(q[mask].mean()) if mask.any() else float("nan")


def restoration_metrics(
    reference: NDArray[np.uint8], restored: NDArray[np.uint8],
    gaps: NDArray[np.bool_] | None = None,
) -> dict[str, dict[str, float]]:
    """``{"image": {metric: value}, "gaps": {...}}`` (``gaps`` only when a mask is given)."""
    if reference.shape != restored.shape:
        raise ValueError(f"reference {reference.shape} and restored {restored.shape} differ")
    funcs = {"PSNR": psnr, "SSIM": ssim, "UIQI": uiqi, "CC": cc, "RMSE": rmse}
    out = {"image": {k: f(reference, restored) for k, f in funcs.items()}}
    if gaps is not None:
        out["gaps"] = {k: f(reference, restored, gaps) for k, f in funcs.items()}
    return out
