"""Uncertainty factors of mapped damage (paper section 3.2.4) and the bounds they give.

λ = precision / recall of an evaluation (Eq. 14: N_true = P/R · N_pred). The lower bound of a
mapped quantity is value · λ_min, the upper bound value · λ_max, and for maps made from
restored (SLC-off) imagery the upper bound is further multiplied by λ_restoration, computed from
the segmentation of restored versus original imagery. Fractions are clipped to [0, 1]. This is
what the authors' time-series analysis does (see ../shared/reference/README.md).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Evaluation:
    """Pooled precision and recall of the damage class on one evaluation set."""

    name: str
    precision: float
    recall: float

    @property
    def factor(self) -> float:
        """λ = precision / recall."""
        if self.recall <= 0 or self.precision <= 0:
            raise ValueError(f"evaluation {self.name!r}: precision and recall must be > 0")
        return self.precision / self.recall


#: The paper's Table 3 (test set, Totten) and Table 5 (restored vs original imagery).
PAPER_EVALUATIONS = (
    Evaluation("test set", 0.8164, 0.8410),
    Evaluation("Totten (independent shelf)", 0.8384, 0.7916),
)
PAPER_RESTORATION = Evaluation("DiffGF restored vs original", 0.9691, 0.9286)


@dataclass(frozen=True)
class UncertaintyFactors:
    """λ_min, λ_max and λ_restoration, with the evaluations they were derived from."""

    lambda_min: float
    lambda_max: float
    lambda_restoration: float
    sources: tuple[str, ...] = ()

    @property
    def lambda_upper_restored(self) -> float:
        """Upper factor for maps from restored imagery: λ_max · λ_restoration."""
        return self.lambda_max * self.lambda_restoration

    def bounds(self, value: float, restored: bool, fraction: bool = False) -> tuple[float, float]:
        """(low, high) bounds of a mapped area or fraction."""
        low = value * self.lambda_min
        high = value * (self.lambda_upper_restored if restored else self.lambda_max)
        if fraction:
            low, high = min(max(low, 0.0), 1.0), min(max(high, 0.0), 1.0)
        return low, high

    def to_json(self) -> str:
        """The factors file the catalog reads."""
        data = asdict(self) | {"lambda_upper_restored": self.lambda_upper_restored}
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> UncertaintyFactors:
        """Read a factors file written by ``to_json``."""
        data = json.loads(text)
        data.pop("lambda_upper_restored", None)
        data["sources"] = tuple(data.get("sources", ()))
        return cls(**data)


def derive_factors(evaluations: tuple[Evaluation, ...] | list[Evaluation],
                   restoration: Evaluation) -> UncertaintyFactors:
    """λ_min / λ_max over the segmentation evaluations, λ_restoration from the restoration one."""
    if not evaluations:
        raise ValueError("at least one segmentation evaluation is needed")
    factors = [e.factor for e in evaluations]
    return UncertaintyFactors(min(factors), max(factors), restoration.factor,
                              tuple(e.name for e in (*evaluations, restoration)))


PAPER_FACTORS = derive_factors(PAPER_EVALUATIONS, PAPER_RESTORATION)


def load_factors(path: Path | None) -> UncertaintyFactors:
    """Factors from a file written by ``icedamage uncertainty``, or the paper's when None."""
    return PAPER_FACTORS if path is None else UncertaintyFactors.from_json(Path(path).read_text())
