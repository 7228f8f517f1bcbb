"""What a validation finds: problems (file, rule, found, expected) and the rule-set interface.

The validator runs every registered rule set over a release and collects all problems, so a
release is reported whole rather than failing at the first error. Further checks (catalog,
metadata.ods, GeoPackages) plug in as more rule sets.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class Problem:
    """One broken rule: which file (relative to the release root), which rule, found vs expected."""

    file: str
    rule: str
    found: str
    expected: str
    severity: str = "error"
    """"error" fails validation; "warning" fails it only with --strict."""

    def as_dict(self) -> dict[str, str]:
        """Plain dict for the JSON report."""
        return asdict(self)


def printable(text: str) -> str:
    """Text that any UTF-8 output can hold: bytes of a file name that are not UTF-8 (which
    Python keeps as lone surrogates) become ``\\xNN`` escapes instead of failing the report."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable_problem(problem: Problem) -> Problem:
    """The problem with every text field made printable (see ``printable``)."""
    return replace(problem, file=printable(problem.file), found=printable(problem.found),
                   expected=printable(problem.expected))


class RuleSet(Protocol):
    """A named group of rules that inspects a release folder and yields what it finds wrong."""

    name: str

    def check(self, release_dir: Path) -> Iterable[Problem]:
        """Every problem of this rule set in the release (never stop at the first)."""
        ...
