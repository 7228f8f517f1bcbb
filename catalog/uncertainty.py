"""Uncertainty factors of mapped damage (paper section 3.2.4) and the bounds they give.

λ = precision / recall of an evaluation (Eq. 14: N_true = P/R · N_pred). The lower bound of a
mapped quantity is value · λ_min, the upper bound value · λ_max, and for maps made from
restored (SLC-off) imagery the upper bound is further multiplied by λ_restoration, computed from
the segmentation of restored versus original imagery. Fractions are clipped to [0, 1]. This is
what the authors' time-series analysis does (see ../shared/reference/README.md).
"""

from __future__ import annotations

import json
import math
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
        if not (math.isfinite(self.precision) and math.isfinite(self.recall)) \
                or self.recall <= 0 or self.precision <= 0:
            raise ValueError(f"evaluation {self.name!r}: precision and recall must be finite "
                             f"and > 0 (got {self.precision}, {self.recall})")
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
    def from_json(cls, text: str, where: str = "factors file") -> UncertaintyFactors:
        """Read a factors file written by ``to_json``; ``where`` names it in errors.

        ``lambda_upper_restored`` is derived (λ_max · λ_restoration), so the file may give it
        instead of ``lambda_restoration`` (which is then derived from it); given both, they must
        agree, so a hand-edited value is never silently ignored. Anything malformed is a
        ``ValueError`` naming the file and the key.
        """
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{where}: expected a JSON object with lambda_min, lambda_max and "
                             f"lambda_restoration, not a {type(data).__name__}")
        unknown = sorted(set(data) - FACTOR_KEYS)
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid: {sorted(FACTOR_KEYS)}")
        lam_min, lam_max = _factor(data, "lambda_min", where), _factor(data, "lambda_max", where)
        if lam_min > lam_max:
            raise ValueError(f"{where}: lambda_min {lam_min} is greater than lambda_max {lam_max}")
        restoration = _restoration_factor(data, lam_max, where)
        sources = data.get("sources", [])
        if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
            raise ValueError(f"{where}: key 'sources' must be a list of strings")
        return cls(lam_min, lam_max, restoration, tuple(sources))


#: Keys a factors file may hold.
FACTOR_KEYS = frozenset({"lambda_min", "lambda_max", "lambda_restoration",
                         "lambda_upper_restored", "sources"})
#: Relative tolerance between a file's lambda_upper_restored and λ_max · λ_restoration.
UPPER_RESTORED_RTOL = 1e-9


def _factor(data: dict, key: str, where: str, required: bool = True) -> float | None:
    """A positive finite number at ``key`` (None when absent and not required)."""
    if key not in data:
        if required:
            raise ValueError(f"{where}: key {key!r} is missing")
        return None
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) \
            or value <= 0:
        raise ValueError(f"{where}: key {key!r} must be a positive number, got {value!r}")
    return float(value)


def _restoration_factor(data: dict, lambda_max: float, where: str) -> float:
    """λ_restoration of a file: given, or derived from lambda_upper_restored; both must agree."""
    restoration = _factor(data, "lambda_restoration", where, required=False)
    upper = _factor(data, "lambda_upper_restored", where, required=False)
    if restoration is None and upper is None:
        raise ValueError(f"{where}: key 'lambda_restoration' is missing (or give "
                         "'lambda_upper_restored', which is lambda_max * lambda_restoration)")
    if restoration is None:
        return upper / lambda_max
    if upper is not None and not math.isclose(upper, lambda_max * restoration,
                                              rel_tol=UPPER_RESTORED_RTOL):
        raise ValueError(f"{where}: key 'lambda_upper_restored' is {upper} but lambda_max * "
                         f"lambda_restoration is {lambda_max * restoration}; it is derived from "
                         "them, so change lambda_restoration (or drop one of the two)")
    return restoration


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
    if path is None:
        return PAPER_FACTORS
    return UncertaintyFactors.from_json(Path(path).read_text(), where=str(path))
