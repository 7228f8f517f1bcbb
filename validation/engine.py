"""Run every rule set over a release and collect every problem into one report.

Rule sets plug in without touching this file, in either of two ways:

* ``register_rule_set(factory)`` from the package that owns the rules (call it at import time
  of a module that the caller imports, e.g. the package's ``commands`` module), or
* an entry point in the ``icedamage.rule_sets`` group of an installed distribution, naming a
  factory (``[project.entry-points."icedamage.rule_sets"] catalog = "catalog.rules:factory"``).

A factory takes the run's ``ValidationOptions`` and returns an object with a ``name`` and a
``check(release_dir)`` that yields ``Problem``s (the ``RuleSet`` protocol of ``report``).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from validation.inventory import scan_release
from validation.layout_rules import layout_rules
from validation.plausibility_rules import plausibility_rules
from validation.product_rules import product_rules
from validation.report import Problem, RuleSet, printable, printable_problem

ENTRY_POINT_GROUP = "icedamage.rule_sets"
#: Rule id of a rule set that raised instead of reporting problems.
RULE_SET_FAILED = "validator-rule-set-failed"


@dataclass(frozen=True)
class ValidationOptions:
    """What a run passes to every rule-set factory."""

    allow: tuple[str, ...] = ()
    """Extra globs (relative to the release root) of files and folders to leave alone."""
    workers: int | None = None
    """Threads for pixel checks; None picks from the CPUs available."""
    progress: Callable[[int, int], None] | None = field(default=None, compare=False)
    """Sees ``(shelf-years checked, total)`` as the pixel checks go."""


RuleSetFactory = Callable[[ValidationOptions], RuleSet]
_FACTORIES: list[RuleSetFactory] = []


def register_rule_set(factory: RuleSetFactory) -> RuleSetFactory:
    """Add a rule-set factory to every default run (idempotent; usable as a decorator)."""
    if factory not in _FACTORIES:
        _FACTORIES.append(factory)
    return factory


def unregister_rule_set(factory: RuleSetFactory) -> None:
    """Remove a registered factory (for tests and for callers that swap a rule set)."""
    if factory in _FACTORIES:
        _FACTORIES.remove(factory)


def _entry_point_factories() -> list[RuleSetFactory]:
    """Factories that installed distributions declare in the ``icedamage.rule_sets`` group."""
    return [ep.load() for ep in sorted(entry_points(group=ENTRY_POINT_GROUP),
                                       key=lambda ep: ep.name)]


def default_rule_sets(options: ValidationOptions | None = None) -> list[RuleSet]:
    """One instance of every registered and entry-point rule set, built for ``options``."""
    options = options or ValidationOptions()
    factories = list(_FACTORIES)
    factories += [f for f in _entry_point_factories() if f not in factories]
    return [factory(options) for factory in factories]


@register_rule_set
def _layout(options: ValidationOptions) -> RuleSet:
    return layout_rules(options.allow)


@register_rule_set
def _products(options: ValidationOptions) -> RuleSet:
    return product_rules(options.allow, options.workers, options.progress)


@register_rule_set
def _plausibility(options: ValidationOptions) -> RuleSet:
    return plausibility_rules(options.allow)


@dataclass
class ValidationReport:
    """Everything one validation found, with what was checked."""

    release_dir: Path
    problems: list[Problem] = field(default_factory=list)
    rule_sets: list[str] = field(default_factory=list)
    product_files: int = 0
    seconds: float = 0.0

    @property
    def errors(self) -> list[Problem]:
        """Problems that always fail validation."""
        return [p for p in self.problems if p.severity != "warning"]

    @property
    def warnings(self) -> list[Problem]:
        """Problems that fail validation only when strict."""
        return [p for p in self.problems if p.severity == "warning"]

    def ok(self, strict: bool = False) -> bool:
        """True when there is no error (and, if strict, no warning either)."""
        return not (self.problems if strict else self.errors)

    def to_dict(self) -> dict[str, object]:
        """Plain data for the JSON report."""
        return {
            "release": printable(str(self.release_dir)),
            "ok": self.ok(False),
            "ok_strict": self.ok(True),
            "errors": len(self.errors),
            "warnings": len(self.warnings),
            "product_files": self.product_files,
            "rule_sets": self.rule_sets,
            "seconds": round(self.seconds, 3),
            "problems": [p.as_dict() for p in self.problems],
        }

    def to_json(self) -> str:
        """The report as indented JSON."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"


def _run(rule_set: RuleSet, release_dir: Path) -> list[Problem]:
    """All problems of one rule set; a crash becomes one more problem instead of ending the run.

    Problems the rule set yielded before it failed are kept.
    """
    problems: list[Problem] = []
    try:
        problems.extend(rule_set.check(release_dir))
    except Exception as exc:  # noqa: BLE001 - report every rule set, even a broken one
        name = getattr(rule_set, "name", type(rule_set).__name__)
        problems.append(Problem(".", RULE_SET_FAILED, f"rule set {name!r} raised "
                                f"{type(exc).__name__}: {exc}",
                                "every rule set runs to completion"))
    return problems


def validate_release(release_dir: Path, *, rule_sets: Sequence[RuleSet] | None = None,
                     allow: Sequence[str] = (), workers: int | None = None,
                     progress: Callable[[int, int], None] | None = None) -> ValidationReport:
    """Check a release folder against the spec with every rule set; collect all problems.

    ``allow`` (globs relative to the root), ``workers`` and ``progress`` (shelf-years whose
    pixels are checked, of the total) configure the default rule sets; rule sets passed
    explicitly are used as they are. Raises NotADirectoryError if ``release_dir`` is not a
    folder.
    """
    release_dir = Path(release_dir)
    if not release_dir.is_dir():
        raise NotADirectoryError(f"release folder {release_dir} does not exist or is not a folder")
    started = time.perf_counter()
    if rule_sets is None:
        rule_sets = default_rule_sets(ValidationOptions(tuple(allow), workers, progress))
    problems = [printable_problem(p) for rule_set in rule_sets
                for p in _run(rule_set, release_dir)]
    problems.sort(key=lambda p: (p.file, p.rule, p.found))
    return ValidationReport(
        release_dir=release_dir,
        problems=problems,
        rule_sets=[getattr(r, "name", type(r).__name__) for r in rule_sets],
        product_files=_product_count(release_dir, allow),
        seconds=time.perf_counter() - started,
    )


def _product_count(release_dir: Path, allow: Sequence[str]) -> int:
    """Product files the report counts; 0 when the folder cannot be walked (the layout rule
    set has reported why already)."""
    try:
        return len(scan_release(release_dir, tuple(allow)).products)
    except OSError:
        return 0
