"""Uncertainty factors of mapped damage (paper section 3.2.4) and the bounds they give.

λ = precision / recall of an evaluation (Eq. 14: N_true = P/R · N_pred). The lower bound of a
mapped quantity is value · λ_min, the upper bound value · λ_max: a range for the *true* damage,
which need not contain the mapped value (λ_min > 1 when every evaluation under-maps, λ_max < 1
when every one over-maps). Maps made from restored (SLC-off) imagery take a restoration factor
λ_R as well, computed from the segmentation of restored versus original imagery, one per
restoration method. The paper's rule for DiffGF (λ_R = 1.044) multiplies the upper bound and
leaves the lower one alone "so that the lower side of the uncertainty range is not narrowed";
in general the restoration only ever widens the range (``widened_bounds``): λ_R ≥ 1 multiplies
the upper bound, λ_R < 1 the lower one. A restored map whose method has no known factor has no
known upper bound (None). Fractions are clipped to [0, 1]. This is what the authors'
time-series analysis does (see ../shared/reference/README.md).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path

from producer.spec import RELEASED_RESTORATION, RESTORATION_METHODS


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


def widened_bounds(value: float, lambda_min: float, lambda_max: float,
                   lambda_r: float | None = 1.0) -> tuple[float, float | None]:
    """(low, high) of a mapped value whose map took a restoration factor ``lambda_r`` (pure).

    Without restoration (``lambda_r`` 1) the range is value · [λ_min, λ_max]. A restoration
    factor only ever widens it, never narrows it (paper 3.2.4: the lower bound of DiffGF maps
    "remains unchanged so that the lower side of the uncertainty range is not narrowed"):
    λ_R ≥ 1 moves the upper bound up (value · λ_max · λ_R, the paper's λ_max × λ_DiffGF), and
    λ_R < 1 (restored imagery that over-maps) moves the lower bound down (value · λ_min · λ_R)
    instead of pulling the upper bound in. ``lambda_r`` None (no factor known for the method)
    gives no upper bound (None): it cannot be bounded, and the unrestored one would claim too
    much.
    """
    low, high = value * lambda_min, value * lambda_max
    if lambda_r is None:
        return low, None
    return (low, high * lambda_r) if lambda_r >= 1 else (low * lambda_r, high)


def _clip_fraction(value: float | None) -> float | None:
    """A fraction bound clipped to [0, 1] (None stays None)."""
    return None if value is None else min(max(value, 0.0), 1.0)


@dataclass(frozen=True)
class UncertaintyFactors:
    """λ_min, λ_max and the restoration factors, with the evaluations they were derived from.

    ``lambda_restoration`` is the factor of the released restoration (DiffGF, the paper's
    λ_DiffGF; None only when not known, e.g. factors read back from a catalog without a DiffGF
    map); ``restoration_factors`` holds those of other methods (FillNodata), as (method,
    factor) pairs. A method with no factor here has no known upper bound.
    """

    lambda_min: float
    lambda_max: float
    lambda_restoration: float | None
    sources: tuple[str, ...] = ()
    restoration_factors: tuple[tuple[str, float], ...] = ()

    @property
    def lambda_upper_restored(self) -> float | None:
        """λ_max · λ_restoration of DiffGF, as the paper and the factors file give it (the
        factor a DiffGF map's upper bound takes when λ_restoration ≥ 1; see ``factors_for``)."""
        if self.lambda_restoration is None:
            return None
        return self.lambda_max * self.lambda_restoration

    def known_restorations(self) -> dict[str, float]:
        """Method -> restoration factor, for every method whose factor is known."""
        known = dict(self.restoration_factors)
        if self.lambda_restoration is not None:
            known[RELEASED_RESTORATION] = self.lambda_restoration
        return known

    def restoration_factor(self, method: str | None) -> float | None:
        """λ_R of maps restored with ``method``: 1.0 for None (not restored), None when the
        method's factor is not known."""
        if method is None:
            return 1.0
        return self.known_restorations().get(method)

    def factors_for(self, method: str | None) -> tuple[float, float | None]:
        """(lower, upper) factors of a map restored with ``method`` (None: not restored); the
        upper one is None when no factor is known for the method (``widened_bounds``)."""
        low, high = widened_bounds(1.0, self.lambda_min, self.lambda_max,
                                   self.restoration_factor(method))
        return low, high

    def bounds(self, value: float, restored: str | bool | None = None,
               fraction: bool = False) -> tuple[float, float | None]:
        """(low, high) bounds of a mapped area or fraction of a map restored with the method
        ``restored`` (None or False: not restored; True: the released DiffGF, as before)."""
        method = RELEASED_RESTORATION if restored is True else (restored or None)
        low, high = widened_bounds(value, self.lambda_min, self.lambda_max,
                                   self.restoration_factor(method))
        if fraction:
            return min(max(low, 0.0), 1.0), _clip_fraction(high)
        return low, high

    def with_restoration(self, method: str, factor: float | None, source: str | None = None
                         ) -> UncertaintyFactors:
        """These factors with ``method``'s restoration factor set (None: unknown)."""
        sources = (*self.sources, source) if source else self.sources
        if method == RELEASED_RESTORATION:
            return replace(self, lambda_restoration=factor, sources=sources)
        others = {m: f for m, f in self.restoration_factors if m != method}
        if factor is not None:
            others[method] = factor
        return replace(self, restoration_factors=tuple(sorted(others.items())), sources=sources)

    def to_json(self) -> str:
        """The factors file the catalog reads (``restoration_factors`` only when a method other
        than DiffGF has one, so files without it stay readable by earlier versions)."""
        if self.lambda_restoration is None:
            raise ValueError("factors without a DiffGF restoration factor make no factors file")
        data: dict[str, object] = {
            "lambda_min": self.lambda_min, "lambda_max": self.lambda_max,
            "lambda_restoration": self.lambda_restoration, "sources": list(self.sources),
            "lambda_upper_restored": self.lambda_upper_restored}
        if self.restoration_factors:
            data["restoration_factors"] = dict(self.restoration_factors)
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str = "factors file") -> UncertaintyFactors:
        """Read a factors file written by ``to_json``; ``where`` names it in errors.

        ``lambda_upper_restored`` is derived (λ_max · λ_restoration), so the file may give it
        instead of ``lambda_restoration`` (which is then derived from it); given both, they must
        agree, so a hand-edited value is never silently ignored. ``restoration_factors`` (an
        object: method -> factor) gives the factors of restoration methods other than DiffGF
        (whose factor is ``lambda_restoration``). Anything malformed is a ``ValueError`` naming
        the file and the key.
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
        return cls(lam_min, lam_max, restoration, tuple(sources),
                   _other_restorations(data.get("restoration_factors", {}), where))


#: Keys a factors file may hold.
FACTOR_KEYS = frozenset({"lambda_min", "lambda_max", "lambda_restoration",
                         "lambda_upper_restored", "restoration_factors", "sources"})
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


def _other_restorations(value: object, where: str) -> tuple[tuple[str, float], ...]:
    """The ``restoration_factors`` of a file: methods other than DiffGF, each a positive factor."""
    if not isinstance(value, dict):
        raise ValueError(f"{where}: key 'restoration_factors' must be an object (method -> "
                         f"factor), not a {type(value).__name__}")
    pairs = []
    for method in sorted(value):
        if method == RELEASED_RESTORATION:
            raise ValueError(f"{where}: restoration_factors names {RELEASED_RESTORATION}, whose "
                             "factor is 'lambda_restoration'; give it there")
        if method not in RESTORATION_METHODS:
            raise ValueError(f"{where}: restoration_factors names {method!r}, not a restoration "
                             f"method ({sorted(RESTORATION_METHODS)})")
        pairs.append((method, _factor(value, method, f"{where}: restoration_factors")))
    return tuple(pairs)


def derive_factors(evaluations: tuple[Evaluation, ...] | list[Evaluation],
                   restoration: Evaluation, method: str = RELEASED_RESTORATION
                   ) -> UncertaintyFactors:
    """λ_min / λ_max over the segmentation evaluations, and the restoration factor of
    ``method`` from the restoration evaluation. For a method other than DiffGF, DiffGF keeps the
    paper's factor (Table 5), which is then listed among the sources."""
    if not evaluations:
        raise ValueError("at least one segmentation evaluation is needed")
    if method not in RESTORATION_METHODS:
        raise ValueError(f"restoration method {method!r} is not one of "
                         f"{sorted(RESTORATION_METHODS)}")
    factors = [e.factor for e in evaluations]
    base = UncertaintyFactors(min(factors), max(factors), None, tuple(e.name for e in evaluations))
    if method != RELEASED_RESTORATION:
        base = base.with_restoration(RELEASED_RESTORATION, PAPER_RESTORATION.factor,
                                     PAPER_RESTORATION.name)
    return base.with_restoration(method, restoration.factor, restoration.name)


PAPER_FACTORS = derive_factors(PAPER_EVALUATIONS, PAPER_RESTORATION)


def load_factors(path: Path | None) -> UncertaintyFactors:
    """Factors from a file written by ``icedamage uncertainty``, or the paper's when None.

    A file that cannot be read (missing, a folder, not UTF-8 text) is a ``ValueError`` naming
    it and why, like a file whose JSON breaks a rule: callers print one line, not an OSError's
    bare "[Errno 2]" or a codec message without the file.
    """
    if path is None:
        return PAPER_FACTORS
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ValueError(f"{path}: not a factors file (not UTF-8 JSON text: byte "
                         f"{error.object[error.start]:#04x} at offset {error.start})") from None
    except OSError as error:
        raise ValueError(f"{path}: cannot read the factors file "
                         f"({error.strerror or error})") from None
    return UncertaintyFactors.from_json(text, where=str(path))


# ---------------------------------------------------------------------------------------------
# What a set of factors means for the bounds, and how two sets differ
# ---------------------------------------------------------------------------------------------


def factor_warnings(factors: UncertaintyFactors, evaluations: int | None = None) -> list[str]:
    """Why bounds from ``factors`` may surprise (pure): a range that does not contain the
    mapped value (λ_min > 1 or λ_max < 1), or one of zero width (one evaluation, or λ_min =
    λ_max). ``evaluations`` is the number of segmentation evaluations, when known."""
    notes = []
    if factors.lambda_min > 1:
        notes.append(f"λ_min {factors.lambda_min:.3f} > 1 (every evaluation has precision > "
                     "recall, i.e. under-maps damage): the whole range lies above the mapped "
                     "value; it is a range for the true damage, not an error bar around the map")
    if factors.lambda_max < 1:
        notes.append(f"λ_max {factors.lambda_max:.3f} < 1 (every evaluation has precision < "
                     "recall, i.e. over-maps damage): the whole range lies below the mapped "
                     "value; it is a range for the true damage, not an error bar around the map")
    if evaluations == 1:
        notes.append("only one segmentation evaluation: λ_min = λ_max, so the range has zero "
                     "width (no spread between evaluations); give two or more, e.g. a test set "
                     "and an independent shelf as the paper does")
    elif math.isclose(factors.lambda_min, factors.lambda_max):
        notes.append(f"λ_min = λ_max = {factors.lambda_min:.3f}: the range has zero width")
    return notes


def restoration_rule(method: str, factor: float | None) -> str:
    """How the restoration factor of ``method`` changes the bounds, in words (pure)."""
    if factor is None:
        return f"{method} maps: no restoration factor known, upper bound unknown"
    if factor >= 1:
        return f"{method} maps: upper bound × λ_{method} {factor:.3f}"
    return (f"{method} maps: lower bound × λ_{method} {factor:.3f} (a factor < 1 widens the "
            "lower side; the upper stays λ_max)")


def factor_differences(given: UncertaintyFactors, recorded: UncertaintyFactors,
                       rel: float = 1e-9) -> list[str]:
    """Where ``given`` differs from the ``recorded`` factors (e.g. those a catalog was built
    with), as "name given vs recorded" texts (pure): λ_min, λ_max and the restoration factor of
    every method ``recorded`` knows."""
    def differ(a: float | None, b: float | None) -> bool:
        return (a is None) != (b is None) or (a is not None and b is not None
                                              and not math.isclose(a, b, rel_tol=rel))

    def text(value: float | None) -> str:
        return "unknown" if value is None else f"{value:.4g}"

    pairs: list[tuple[str, float | None, float | None]] = [
        ("λ_min", given.lambda_min, recorded.lambda_min),
        ("λ_max", given.lambda_max, recorded.lambda_max),
        *((f"λ_{method}", given.restoration_factor(method), factor)
          for method, factor in sorted(recorded.known_restorations().items()))]
    return [f"{name} {text(a)} vs {text(b)}" for name, a, b in pairs if differ(a, b)]


def read_restoration_evaluation(path: Path, method: str | None = None
                                ) -> tuple[Evaluation, str]:
    """(evaluation, method) of a restoration evaluation file: an ``icedamage evaluate``-style
    JSON with precision and recall, or the report of ``icedamage evaluate-restoration``.

    ``method`` says which restoration the evaluation is for; None takes the method the report
    names (its ``segmentation_agreement``), else DiffGF. A report that evaluates several methods
    gives the named method's numbers; one that names another method, and not this one, is a
    ``ValueError`` (an evaluation of one method must not become another's factor).
    """
    from producer.evaluation import read_precision_recall

    if method is not None and method not in RESTORATION_METHODS:
        raise ValueError(f"restoration method {method!r} is not one of "
                         f"{sorted(RESTORATION_METHODS)}")
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        data = None  # read_precision_recall says what is wrong with it
    agreement = data.get("segmentation_agreement") if isinstance(data, dict) else None
    named = agreement.get("method") if isinstance(agreement, dict) else None
    chosen = method or (named if named in RESTORATION_METHODS else RELEASED_RESTORATION)
    by_method = data.get("segmentation_agreement_by_method") if isinstance(data, dict) else None
    if named is not None and named != chosen:
        entry = by_method.get(chosen) if isinstance(by_method, dict) else None
        if not isinstance(entry, dict):
            raise ValueError(f"{path}: the report evaluates the restoration {named!r}, not "
                             f"{chosen!r}; evaluate {chosen} (or drop --restoration-method)")
        evaluation = Evaluation(f"{chosen} restored vs original ({Path(path).stem})",
                                *_precision_recall(entry, path))
        return evaluation, chosen
    return Evaluation(*read_precision_recall(path)), chosen


def _precision_recall(entry: Mapping[str, object], path: Path) -> tuple[float, float]:
    """Precision and recall of one method's entry of a restoration report."""
    values = [entry.get(key) for key in ("precision", "recall")]
    if not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
               for v in values):
        raise ValueError(f"{path}: precision {values[0]!r} / recall {values[1]!r} are not "
                         "numbers; λ = precision/recall needs both")
    return float(values[0]), float(values[1])  # type: ignore[arg-type]
