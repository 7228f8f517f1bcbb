"""Evaluating restoration: simulate SLC-off on complete images, restore, compare (paper 3.2.3).

Each complete image gets a simulated Landsat 7 SLC-off mask (``producer.slcoff``, a random
window of a 185 km swath, seeded per image; demo scenes keep the gaps the demo source rendered
them with, ``demo_scenes``), is restored by every requested method with the
same mask, and is scored with PSNR, SSIM, UIQI, CC and RMSE over the whole image (as the
paper's Table 4) and over the gap pixels only. LPIPS needs pretrained network weights that are
not stored locally, so it is reported as not computed rather than guessed.

With a segmentation model, the damage map of each restored image is compared with the map of
the complete original (the original's prediction is the reference), pixel counts pooled over
the set, as the paper's Table 5; its precision/recall give λ_restoration (section 3.2.4) through
``icedamage uncertainty --restoration``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from producer.evaluation import Confusion, confusion
from producer.restoration.api import check_method, restore
from producer.restoration.diffgf import DiffGF
from producer.restoration.metrics import METRICS, restoration_metrics
from producer.restoration.synthetic import render_tile
from producer.restoration.tiles import HELD_OUT_SEED_BASE, list_tiles, random_mask, read_tile
from producer.slcoff import apply_gaps

LPIPS_NOTE = "not computed: LPIPS needs pretrained network weights, none are stored locally"
#: A damage segmenter: RGB uint8 HWC -> boolean damage mask.
Segmenter = Callable[[NDArray[np.uint8]], NDArray[np.bool_]]


@dataclass(frozen=True)
class EvalImage:
    """One complete reference image and its name."""

    name: str
    pixels: NDArray[np.uint8]
    gaps: NDArray[np.bool_] | None = None
    """The image's own SLC-off gaps (demo scenes); None: a simulated mask is drawn."""


def held_out_synthetic(n: int, size: int = 256) -> list[EvalImage]:
    """``n`` synthetic tiles whose seeds training never draws."""
    return [EvalImage(f"synthetic-{HELD_OUT_SEED_BASE + i}", render_tile(HELD_OUT_SEED_BASE + i,
                                                                          size))
            for i in range(n)]


def demo_scenes(n: int, size: int = 256) -> list[EvalImage]:
    """The first ``n`` demo Landsat 7 SLC-off scenes with a whole footprint (registered shelves
    in order, summers 2003-2012, one per summer), with the gaps the demo source rendered: the
    reference is the same date rendered without gaps (every other pixel is identical), so the
    score is the restoration of the pipeline's own demo scenes."""
    from dataclasses import replace

    from producer.shelves import SHELVES
    from producer.sources.demo import plan_summer, render_planned

    out: list[EvalImage] = []
    for shelf in SHELVES:
        for year in range(2003, 2013):
            plan = next((p for p in plan_summer(shelf, year) if p.conditions.slc_off
                         and p.conditions.footprint_cut is None), None)
            if plan is None:
                continue
            gapped = render_planned(shelf, year, plan, size)
            clean = replace(plan, conditions=replace(plan.conditions, slc_off=False))
            out.append(EvalImage(plan.scene_id, render_planned(shelf, year, clean, size).rgb,
                                 gapped.gaps))
            if len(out) == n:
                return out
            break  # one summer per shelf: the scenes differ in ground as well as in light
    return out


def folder_images(folder: Path) -> list[EvalImage]:
    """The complete tiles of a folder (3-band UInt8 GeoTIFF or PNG)."""
    return [EvalImage(p.name, read_tile(p)) for p in list_tiles(folder)]


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v) and not math.isinf(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate(
    images: Sequence[EvalImage],
    methods: Sequence[str],
    weights: Path | DiffGF | None = None,
    seed: int = 0,
    steps: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    segment: Segmenter | None = None,
) -> dict[str, Any]:
    """Metrics per image and method, and their means; a JSON-ready dict.

    ``segment`` (optional) adds the segmentation agreement of restored vs original images.
    """
    for m in methods:
        check_method(m)
    agreement = {m: Confusion() for m in methods}
    per_image: list[dict[str, Any]] = []
    total = len(images) * len(methods)
    for i, img in enumerate(images):
        gaps = (img.gaps if img.gaps is not None
                else random_mask(np.random.default_rng([seed, i]), img.pixels.shape[:2]))
        damaged = apply_gaps(img.pixels, gaps)
        row: dict[str, Any] = {"name": img.name, "gap_fraction": float(gaps.mean()),
                               "methods": {}}
        reference_map = segment(img.pixels) if segment is not None else None
        for j, method in enumerate(methods):
            out = restore(damaged, gaps, method, weights, seed=seed, steps=steps)
            row["methods"][method] = restoration_metrics(img.pixels, out, gaps)
            if segment is not None:
                counts = confusion(segment(out), reference_map)
                agreement[method] = agreement[method] + counts
                row["methods"][method]["segmentation"] = _agreement_entry(counts)
            if progress is not None:
                progress(i * len(methods) + j + 1, total)
        per_image.append(row)
    summary = {
        method: {
            scope: {k: _mean([r["methods"][method][scope][k] for r in per_image])
                    for k in METRICS}
            for scope in ("image", "gaps")
        }
        for method in methods
    }
    report: dict[str, Any] = {
        "metrics": list(METRICS),
        "rmse_scale": "[0, 1] (value / 255)",
        "n_images": len(images),
        "mean_gap_fraction": _mean([r["gap_fraction"] for r in per_image]),
        "seed": seed,
        "summary": summary,
        "per_image": per_image,
        "LPIPS": LPIPS_NOTE,
    }
    if segment is not None:
        by_method = {m: _agreement_entry(c) for m, c in agreement.items()}
        main = "DiffGF" if "DiffGF" in by_method else methods[0]
        report["segmentation_agreement"] = {"method": main, **by_method[main]}
        report["segmentation_agreement_by_method"] = by_method
    return report


def _agreement_entry(counts: Confusion) -> dict[str, Any]:
    """Pixel counts and mIoU/OA/precision/recall/F1 of a restored-vs-original comparison."""
    return counts.to_dict() | counts.metrics()

