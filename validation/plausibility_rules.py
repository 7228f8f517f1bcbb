"""Plausibility rules: sensors that flew in the named summer, SLC-off restoration tokens, and
maps whose content is possible but implausible.

The name rules live in ``producer.spec.plausibility_problems``; this rule set applies them to
the name of every product file of the release. The content rules (a type 1 map that is all
NoData or has no NoData at all, a map that is all damage) need the pixels: ``ContentTally`` is
fed the windows the product rule set reads anyway (each file is read once), and that rule set
reports ``content_problems`` as warnings.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from producer.spec import (
    RESTORATION_METHODS,
    RESTORATION_PREFIX,
    SENSOR_ORDER,
    SENSORS,
    ProductType,
    Rule,
    plausibility_problems,
)
from validation.inventory import scan_release
from validation.report import Problem

ALL_NODATA = "raster-all-nodata"
NO_NODATA = "raster-no-nodata"
ALL_DAMAGE = "raster-all-damage"


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


@dataclass
class ContentTally:
    """Which of the class values the content rules ask about a file holds, window by window.

    Only what can still change a verdict is looked for: background, NoData (types that have
    it) and, while no background has been seen, damage. A typical map has them all in its
    first windows, after which a window costs nothing; until then a window costs its min and
    max (a value equal to either is present) and, for a value strictly between them, one scan.
    """

    product_type: ProductType
    seen: set[int] = field(default_factory=set)

    def _wanted(self) -> set[int]:
        """Class values whose presence is still unknown and still matters."""
        t = self.product_type
        wanted = {t.background} | ({t.nodata} if t.nodata is not None else set())
        if t.background not in self.seen:
            wanted.add(t.damage)
        return wanted - self.seen

    def update(self, block: np.ndarray) -> None:
        """Note which wanted class values the window holds."""
        wanted = self._wanted()
        if not wanted or block.size == 0:
            return
        low, high = int(block.min()), int(block.max())
        for value in wanted:
            if value in (low, high) or (low < value < high and bool(np.any(block == value))):
                self.seen.add(value)


def content_problems(rel: str, tally: ContentTally) -> list[Problem]:
    """Warnings for content a valid map can have but rarely should.

    Call only for a file read completely whose values are all in its class set. A type 1 map
    entirely NoData observed nothing of the shelf (allowed, e.g. a summer without usable
    imagery, but worth a look); one without any NoData was not clipped to an effective extent,
    which lies inside the ROI's bounding box; a map without background is all damage.
    """
    t, seen = tally.product_type, tally.seen
    text = f"type {t.number} ({t.key})"
    found: list[Problem] = []
    if t.nodata is not None and not seen - {t.nodata}:
        found.append(Problem(rel, ALL_NODATA, f"every pixel is NoData ({t.nodata})",
                             f"{text}: background ({t.background}) or damage ({t.damage}) "
                             "inside the effective extent (a map that observed nothing is "
                             "allowed, but rare)", severity="warning"))
    elif t.nodata is not None and t.nodata not in seen:
        found.append(Problem(rel, NO_NODATA, f"no NoData ({t.nodata}) pixel: not clipped to "
                             "an effective extent",
                             f"{text}: NoData ({t.nodata}) outside the effective ice-shelf "
                             "extent, which lies inside the ROI's bounding box",
                             severity="warning"))
    if t.background not in seen and t.damage in seen:
        found.append(Problem(rel, ALL_DAMAGE, f"no background ({t.background}) pixel: every "
                             f"observed pixel is damage ({t.damage})",
                             f"{text}: background ({t.background}) beside the damage",
                             severity="warning"))
    return found


def plausibility_rules(allow: Sequence[str] = ()) -> PlausibilityRules:
    """The plausibility rule set."""
    return PlausibilityRules(tuple(allow))
