"""Comparative evaluation of full-ROI predictions: which scene becomes a summer's map (paper 2.4.1).

The paper (Tang et al., ESSD 2026, section 2.4.1): "For each year, priority is given to
predictions derived from a single cloud-free scene that fully covers the ROI. When more than
one scene fully covers the ROI in a given year, which occurs only rarely, the prediction from
one scene is selected as the final map after comparative evaluation." The authors compared by
eye; this module is the automated comparison the producer runs.

The rule: the medoid. Surface damage changes little within one summer (the assumption the
paper's merge of scenes rests on too), so the predictions of different dates of a summer should
agree. A prediction that disagrees with the others is most likely the one an imaging problem
spoiled: thin cloud or haze the cloud mask missed, low sun, surface melt, sea ice pressed
against the front, a sensor or restoration artefact. The medoid, the prediction with the
highest mean agreement with the other compared predictions, is the one most consistent with the
summer's evidence; with three or more candidates a single outlier cannot be chosen (it agrees
least with the rest, and drags only its own mean down). The map stays one observed scene's
prediction, as in the paper: no pixel vote, no mixing of dates.

Agreement of two predictions: IoU of the damage class (the paper's Eq. 4, with one prediction
standing in for the label; symmetric) over the pixels of the effective ice-shelf extent, the
region the type 1 product releases. Two predictions without any damage there agree perfectly
(1.0, where the IoU would be undefined). Cohen's kappa over the same pixels is recorded beside
it for the reader, not used to choose.

Ties, compared at the precision the provenance records (6 decimals). With two candidates the
agreement is symmetric, so their means always tie; then, and for any other tie, the prediction
with the lower damage uncertainty wins: the mean binary entropy (bits) of the model's damage
probability over the extent, i.e. the more confident prediction. Equal uncertainty leaves the
choice to the source's ranking (best first), which is also what decides without a comparison.

Cost: every compared scene is segmented (and restored first when it is SLC-off), so
``produce --compare-scenes K`` compares at most the K best-ranked full-coverage scenes (default
3, the fewest that can outvote one outlier); ``--compare-scenes 1`` switches the comparison off
(the ranking decides, one segmentation). Predictions are read strip by strip, so memory is K
strips whatever the grid.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from numpy.typing import NDArray
from rasterio.windows import Window

from producer.evaluation import Confusion, confusion
from producer.grid import STRIP_ROWS, row_strips

#: Default of ``produce --compare-scenes``: most full-coverage scenes compared per summer.
DEFAULT_COMPARE_SCENES = 3
#: Decimals of the recorded agreement and uncertainty; ties are judged at this precision.
DECIMALS = 6


def scenes_to_compare(requested: int, full_coverage: int | None) -> int:
    """How many predictions a summer's comparison segments: the K requested, at most the number
    of full-coverage scenes (when known). One or fewer means no comparison."""
    if requested < 1:
        raise ValueError(f"--compare-scenes {requested}: must be at least 1 (1 = no comparison)")
    return requested if full_coverage is None else min(requested, full_coverage)


def iou_damage(counts: Confusion) -> float:
    """Agreement of two predictions: IoU of the damage class, 1.0 when neither has damage."""
    union = counts.tp + counts.fp + counts.fn
    return counts.tp / union if union else 1.0


def kappa(counts: Confusion) -> float:
    """Cohen's kappa of two predictions (1.0 when both are one and the same class everywhere)."""
    n = counts.total
    if not n:
        return 1.0
    observed = (counts.tp + counts.tn) / n
    expected = ((counts.tp + counts.fp) * (counts.tp + counts.fn)
                + (counts.fn + counts.tn) * (counts.fp + counts.tn)) / (n * n)
    return 1.0 if expected >= 1.0 else (observed - expected) / (1.0 - expected)


@dataclass(frozen=True)
class ComparedPrediction:
    """One full-coverage scene's prediction rasters (on the ROI grid)."""

    scene_id: str
    prediction: Path
    """UInt8 damage prediction: 0 background, 1 damage."""
    probability: Path | None = None
    """Damage probability, percent 0-100 (the segmentation's nodata where the scene has none);
    None: uncertainty unknown."""


@dataclass(frozen=True)
class Comparison:
    """The predictions compared, their agreement, and which one becomes the map, and why."""

    scene_ids: tuple[str, ...]
    """In the source's ranking, best first (position 0 is what the ranking alone would pick)."""
    pairs: dict[tuple[int, int], Confusion]
    """Counts over the extent for each pair i < j (i's prediction against j's)."""
    damage_fractions: tuple[float, ...]
    """Share of the extent each prediction marks as damage."""
    uncertainties: tuple[float | None, ...]
    """Mean binary entropy (bits) of each prediction's damage probability over the extent."""
    chosen: int
    decided_by: str
    """"agreement", "uncertainty" or "ranking": the first criterion that separated the winner."""
    reason: str

    def agreement(self, i: int, j: int) -> float:
        """IoU of the damage class between predictions i and j (1.0 for i == j)."""
        return 1.0 if i == j else iou_damage(self.pairs[(min(i, j), max(i, j))])

    def mean_agreement(self, i: int) -> float:
        """Mean agreement of prediction i with every other compared prediction."""
        others = [self.agreement(i, j) for j in range(len(self.scene_ids)) if j != i]
        return sum(others) / len(others)

    def to_record(self, requested: int, full_coverage: Sequence[str]) -> dict[str, Any]:
        """The provenance record of the comparison (JSON-ready)."""
        return {
            "method": "medoid",
            "metric": "iou_damage",
            "region": "effective_extent",
            "tie_breaks": ["lower mean damage-probability entropy", "source ranking"],
            "requested": requested,
            "full_coverage": list(full_coverage),
            "compared": [
                {"scene_id": scene_id, "rank": k,
                 "damage_fraction": round(self.damage_fractions[k], DECIMALS),
                 "mean_agreement": round(self.mean_agreement(k), DECIMALS),
                 "uncertainty": _rounded(self.uncertainties[k])}
                for k, scene_id in enumerate(self.scene_ids)
            ],
            "pairs": [
                {"scenes": [self.scene_ids[i], self.scene_ids[j]],
                 "iou_damage": round(iou_damage(counts), DECIMALS),
                 "kappa": round(kappa(counts), DECIMALS)}
                for (i, j), counts in sorted(self.pairs.items())
            ],
            "chosen": self.scene_ids[self.chosen],
            "ranking_choice": self.scene_ids[0],
            "decided_by": self.decided_by,
            "reason": self.reason,
        }


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, DECIMALS)


def choose_medoid(mean_agreement: Sequence[float], uncertainty: Sequence[float | None]
                  ) -> tuple[int, str, str]:
    """(position, decided_by, reason) of the prediction to keep, positions in ranking order.

    Highest mean agreement; ties (at the recorded precision) go to the lower uncertainty (an
    unknown uncertainty loses), then to the better rank.
    """
    n = len(mean_agreement)
    if n < 2 or len(uncertainty) != n:
        raise ValueError(f"a comparison needs >= 2 predictions with one uncertainty each, got "
                         f"{n} and {len(uncertainty)}")
    agree = [round(a, DECIMALS) for a in mean_agreement]
    unsure = [math.inf if u is None else round(u, DECIMALS) for u in uncertainty]
    best = min(range(n), key=lambda k: (-agree[k], unsure[k], k))
    tied = [k for k in range(n) if agree[k] == agree[best]]
    others = ", ".join(f"{agree[k]:.4f}" for k in range(n) if k not in tied)
    if len(tied) == 1:
        return best, "agreement", (f"highest mean agreement with the other predictions (IoU of "
                                   f"damage {agree[best]:.4f}; others {others})")
    why = ("two predictions: agreement is symmetric" if n == 2
           else f"highest mean agreement (IoU of damage {agree[best]:.4f}) shared by "
                f"{len(tied)} predictions" + (f" (others {others})" if others else ""))
    tied_unsure = [unsure[k] for k in tied if k != best]
    if all(unsure[best] < u for u in tied_unsure):
        rest = ", ".join("unknown" if math.isinf(u) else f"{u:.4f}" for u in tied_unsure)
        return best, "uncertainty", (f"{why}; lowest damage uncertainty (mean entropy "
                                     f"{unsure[best]:.4f} bits; tied: {rest})")
    return best, "ranking", f"{why}; equal uncertainty; best in the source's ranking"


def compare_predictions(predictions: Sequence[ComparedPrediction],
                        extent_rows: Callable[[int, int], NDArray[np.bool_]],
                        shape: tuple[int, int], strip_rows: int = STRIP_ROWS) -> Comparison:
    """Compare full-coverage predictions (ranking order) over the extent and choose the medoid.

    ``extent_rows(r0, r1)`` gives the effective extent's rows; rasters are read strip by strip.
    """
    from producer.segmentation.inference import PROBABILITY_NODATA  # after segmentation: torch

    n = len(predictions)
    if n < 2:
        raise ValueError(f"nothing to compare: {n} prediction(s)")
    pairs = {(i, j): Confusion() for i in range(n) for j in range(i + 1, n)}
    damage = [0] * n
    entropy: list[float] = [0.0] * n
    entropy_px = [0] * n
    extent_px = 0
    with contextlib.ExitStack() as stack:
        preds = [_open(stack, p.prediction, shape) for p in predictions]
        probs = [None if p.probability is None else _open(stack, p.probability, shape)
                 for p in predictions]
        for r0, r1 in row_strips(shape[0], strip_rows):
            inside = np.asarray(extent_rows(r0, r1), bool)
            extent_px += int(np.count_nonzero(inside))
            window = Window(0, r0, shape[1], r1 - r0)
            masks = [ds.read(1, window=window) != 0 for ds in preds]
            for k, mask in enumerate(masks):
                damage[k] += int(np.count_nonzero(mask & inside))
            for i, j in pairs:
                pairs[(i, j)] = pairs[(i, j)] + confusion(masks[i], masks[j], inside)
            for k, ds in enumerate(probs):
                if ds is not None:
                    total, count = _entropy_sum(ds.read(1, window=window), inside,
                                                 PROBABILITY_NODATA)
                    entropy[k] += total
                    entropy_px[k] += count
    fractions = tuple(d / max(extent_px, 1) for d in damage)
    uncertainties = tuple(
        None if probs[k] is None else entropy[k] / max(entropy_px[k], 1) for k in range(n))
    partial = Comparison(tuple(p.scene_id for p in predictions), pairs, fractions,
                         uncertainties, 0, "", "")
    means = [partial.mean_agreement(k) for k in range(n)]
    chosen, decided_by, reason = choose_medoid(means, uncertainties)
    return Comparison(partial.scene_ids, pairs, fractions, uncertainties, chosen, decided_by,
                      reason)


def _open(stack: contextlib.ExitStack, path: Path, shape: tuple[int, int]) -> Any:
    """Open a single-band raster of the grid's shape, or say which file does not fit."""
    ds = stack.enter_context(rasterio.open(path))
    if (ds.height, ds.width) != shape:
        raise ValueError(f"{path}: raster {(ds.height, ds.width)} is not on the grid {shape}")
    return ds


def _entropy_sum(percent: NDArray[np.uint8], inside: NDArray[np.bool_], nodata: int
                 ) -> tuple[float, int]:
    """(sum of binary entropies in bits, pixel count) of the extent pixels with a probability
    (percent 0-100; ``nodata`` where the scene has no data)."""
    values = percent[inside & (percent != nodata)].astype(np.float64) / 100.0
    p = np.clip(values, 1e-12, 1.0 - 1e-12)
    bits = -(p * np.log2(p) + (1.0 - p) * np.log2(1.0 - p))
    return float(bits.sum()), int(values.size)
