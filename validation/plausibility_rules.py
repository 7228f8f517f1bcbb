"""Plausibility rules: sensors that flew in the named summer, and SLC-off restoration tokens.

The rules themselves live in ``producer.spec.plausibility_problems``; this rule set applies
them to the name of every product file of the release.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from producer.spec import (
    RESTORATION_METHODS,
    RESTORATION_PREFIX,
    SENSOR_ORDER,
    SENSORS,
    Rule,
    plausibility_problems,
)
from validation.inventory import scan_release
from validation.report import Problem


def _sensor_years() -> str:
    return ", ".join(f"{t} {s.first_summer}-{s.last_summer or ''}" for t, s in SENSORS.items())


def expectation(rule: Rule) -> str:
    """What a plausible name looks like, for the rule it broke (from the spec's data)."""
    slc_off = [t for t, s in SENSORS.items() if s.slc_off_from is not None]
    methods = "|".join(sorted(RESTORATION_METHODS))
    return {
        Rule.SENSOR_YEAR: f"sensors used in that summer ({_sensor_years()})",
        Rule.RESTORATION_MISSING: f"a {RESTORATION_PREFIX}<{methods}> token for SLC-off "
                                  f"{'/'.join(slc_off)} imagery",
        Rule.RESTORATION_UNEXPECTED: f"no restoration token without SLC-off "
                                     f"{'/'.join(slc_off)} imagery",
        Rule.RESTORATION_UNKNOWN: f"a restoration method of {sorted(RESTORATION_METHODS)}",
    }.get(rule, f"unique sensors from {list(SENSOR_ORDER)}, in that order")


@dataclass(frozen=True)
class PlausibilityRules:
    """The spec's plausibility rules applied to every product name."""

    allow: tuple[str, ...] = ()
    name: str = "plausibility"

    def check(self, release_dir: Path) -> Iterator[Problem]:
        """One problem per broken rule per product file."""
        for product in scan_release(Path(release_dir), self.allow).products:
            name = product.name
            for rule, text in plausibility_problems(name.sensors, name.year, name.restoration):
                yield Problem(product.rel, rule.value, text, expectation(rule))


def plausibility_rules(allow: Sequence[str] = ()) -> PlausibilityRules:
    """The plausibility rule set."""
    return PlausibilityRules(tuple(allow))
