"""Segmentation evaluation with the paper's metrics (section 2.5.1, Eq. 4-9).

Predictions and labels are boolean damage masks. Per image we count TP, FP, FN and TN of the
damage class; the set's metrics come from the counts pooled over all images (as in Table 3), and
each image also gets its own. IoU of the damage class is TP/(TP+FP+FN), of the background
TN/(TN+FN+FP); mIoU is their mean (Eq. 4-5); OA = (TP+TN)/(TP+TN+FP+FN) (Eq. 6); precision,
recall and F1 of the damage class follow Eq. 7-9. A metric whose denominator is zero is
undefined (NaN, ``null`` in JSON). The difference map colours TP white, FP red, FN blue and TN
black, as the paper's Fig. 7.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: Colours of the difference map (Fig. 7).
DIFFERENCE_COLOURS: dict[str, tuple[int, int, int]] = {
    "TP": (255, 255, 255),
    "FP": (255, 0, 0),
    "FN": (0, 0, 255),
    "TN": (0, 0, 0),
}
#: Metric names in table order.
METRICS = ("miou", "oa", "precision", "recall", "f1")


def _ratio(num: int, den: int) -> float:
    """num/den, NaN when den is 0 (an undefined metric)."""
    return num / den if den else math.nan


@dataclass(frozen=True)
class Confusion:
    """Pixel counts of the damage class."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn,
                         self.tn + other.tn)

    @property
    def total(self) -> int:
        """Number of evaluated pixels."""
        return self.tp + self.fp + self.fn + self.tn

    def metrics(self) -> dict[str, float]:
        """IoU of both classes, mIoU, OA, precision, recall and F1 (Eq. 4-9)."""
        iou_damage = _ratio(self.tp, self.tp + self.fp + self.fn)
        iou_background = _ratio(self.tn, self.tn + self.fn + self.fp)
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = _ratio(self.tp, self.tp + self.fn)
        # 2PR/(P+R) written in counts: also defined (0) when nothing right was found
        f1 = _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)
        return {
            "iou_damage": iou_damage,
            "iou_background": iou_background,
            "miou": (iou_damage + iou_background) / 2,
            "oa": _ratio(self.tp + self.tn, self.total),
            "precision": precision,
            "recall": recall,
            "f1": f1,
        }

    def to_dict(self) -> dict[str, int]:
        """Counts as a JSON-ready dict."""
        return {"tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}


def confusion(prediction: np.ndarray, label: np.ndarray,
              valid: np.ndarray | None = None) -> Confusion:
    """Counts of a boolean damage prediction against a boolean label (same shape).

    ``valid`` (optional boolean mask) restricts the count to its True pixels.
    """
    pred = np.asarray(prediction, dtype=bool)
    lab = np.asarray(label, dtype=bool)
    if pred.shape != lab.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from label shape {lab.shape}")
    if valid is None:
        valid = np.ones(pred.shape, dtype=bool)
    elif valid.shape != pred.shape:
        raise ValueError(f"valid mask shape {valid.shape} differs from {pred.shape}")
    return Confusion(
        tp=int(np.count_nonzero(pred & lab & valid)),
        fp=int(np.count_nonzero(pred & ~lab & valid)),
        fn=int(np.count_nonzero(~pred & lab & valid)),
        tn=int(np.count_nonzero(~pred & ~lab & valid)),
    )


def difference_map(prediction: np.ndarray, label: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB: TP white, FP red, FN blue, TN black (Fig. 7)."""
    pred = np.asarray(prediction, dtype=bool)
    lab = np.asarray(label, dtype=bool)
    out = np.zeros((*pred.shape, 3), dtype=np.uint8)
    out[pred & lab] = DIFFERENCE_COLOURS["TP"]
    out[pred & ~lab] = DIFFERENCE_COLOURS["FP"]
    out[~pred & lab] = DIFFERENCE_COLOURS["FN"]
    return out


@dataclass
class SetEvaluation:
    """Per-image counts and their pooled sum for one evaluation set, and how the predictions
    were made (``protocol``: e.g. model, split, TTA on or off; written when given)."""

    name: str
    images: dict[str, Confusion] = field(default_factory=dict)
    protocol: dict[str, Any] = field(default_factory=dict)

    def add(self, image: str, counts: Confusion) -> None:
        """Record one image's counts (names must be unique)."""
        if image in self.images:
            raise ValueError(f"image {image!r} evaluated twice")
        self.images[image] = counts

    @property
    def pooled(self) -> Confusion:
        """Counts summed over every image (the set's metrics come from these)."""
        total = Confusion()
        for counts in self.images.values():
            total = total + counts
        return total

    def to_json(self) -> str:
        """JSON with the pooled precision/recall at the top (read by ``icedamage uncertainty``)."""
        pooled = self.pooled.metrics()
        data: dict[str, Any] = {
            "name": self.name,
            **({"protocol": self.protocol} if self.protocol else {}),
            "precision": _json_float(pooled["precision"]),
            "recall": _json_float(pooled["recall"]),
            "pooled": _entry(self.pooled),
            "images": {name: _entry(c) for name, c in sorted(self.images.items())},
        }
        return json.dumps(data, indent=2) + "\n"


def _json_float(value: float) -> float | None:
    """NaN (undefined metric) as JSON null."""
    return None if math.isnan(value) else value


def _entry(counts: Confusion) -> dict[str, object]:
    """Counts and metrics of one image or the pooled set."""
    return counts.to_dict() | {k: _json_float(v) for k, v in counts.metrics().items()}


def evaluate_masks(name: str,
                   pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> SetEvaluation:
    """Evaluate (image name, prediction, label) boolean mask pairs."""
    result = SetEvaluation(name)
    for image, pred, lab in pairs:
        result.add(image, confusion(pred, lab))
    return result


def read_precision_recall(path: Path) -> tuple[str, float, float]:
    """(name, precision, recall) of an evaluation JSON written by ``icedamage evaluate``.

    Also accepts files whose precision/recall sit under ``pooled`` or ``segmentation`` (the
    restoration evaluation's segmentation agreement).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable evaluation JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not an evaluation JSON (a {type(data).__name__} at the top "
                         "level, not an object with 'precision' and 'recall')")
    for node in (data, data.get("pooled"), data.get("segmentation"),
                 data.get("segmentation_agreement")):
        if isinstance(node, dict) and node.get("precision") is not None \
                and node.get("recall") is not None:
            name = str(data.get("name") or Path(path).stem)
            precision, recall = _finite(node["precision"]), _finite(node["recall"])
            if precision is None or recall is None:
                raise ValueError(f"{path}: precision {node['precision']!r} / recall "
                                 f"{node['recall']!r} are not numbers (no damage mapped or "
                                 "labelled?); λ = precision/recall needs both")
            return name, precision, recall
    raise ValueError(f"{path}: field 'precision'/'recall' missing or null "
                     "(rule: an evaluation needs both to derive λ = precision/recall)")


def _finite(value: object) -> float | None:
    """A finite float from a JSON number (or numeric string); None for NaN, inf or text."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None
