"""The validator's window tallies: their fast paths give exactly the plain numpy answers."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from producer.spec import TYPE1, TYPE2, Rule
from validation.pair_rules import PairTally, disagrees
from validation.raster_rules import ValueTally, contiguous_shift

shapes = st.tuples(st.integers(1, 40), st.integers(1, 40))


def windows_of(values: frozenset[int], noise: bool) -> st.SearchStrategy[np.ndarray]:
    """uint8 windows holding class values and, if ``noise``, any other byte now and then."""
    pool = sorted(values) * 20 + (list(range(256)) if noise else [])
    return shapes.flatmap(lambda shape: hnp.arrays(np.uint8, shape, elements=st.sampled_from(pool)))


@given(windows_of(TYPE1.values, noise=True))
def test_value_tally_counts_exactly_the_values_outside_the_class_set(block: np.ndarray) -> None:
    """Whatever the window, the tally holds each non-class value with its pixel count."""
    tally = ValueTally(TYPE1.values)
    clean = tally.update(block)
    values, counts = np.unique(block, return_counts=True)
    expected = {int(v): int(n) for v, n in zip(values, counts, strict=True)
                if int(v) not in TYPE1.values}
    assert tally.bad == expected
    assert clean == (not expected)


def test_shift_maps_each_class_set_onto_a_range() -> None:
    """The fast value check exists for both encodings of the spec."""
    for product_type in (TYPE1, TYPE2):
        shift = contiguous_shift(product_type.values)
        assert shift is not None
        assert {(v + shift) % 256 for v in product_type.values} == \
            set(range(len(product_type.values)))
    assert contiguous_shift(frozenset({0, 2})) is None


@settings(max_examples=60)
@given(st.data())
def test_pair_tally_fast_path_agrees_with_the_rule(data: st.DataObject) -> None:
    """Counts from the subtraction fast path equal a pixel-by-pixel reading of the rule."""
    type1 = data.draw(windows_of(TYPE1.values, noise=False))
    type2 = data.draw(hnp.arrays(np.uint8, type1.shape,
                                 elements=st.sampled_from(sorted(TYPE2.values))))
    tally = PairTally()
    tally.update(type1, type2, classes_only=True)
    outside = missed = 0
    for value1, value2 in zip(type1.ravel().tolist(), type2.ravel().tolist(), strict=True):
        if disagrees(value1, value2):
            outside += value1 == TYPE1.damage
            missed += value1 != TYPE1.damage
    assert (tally.damage_outside, tally.missed) == (outside, missed)


def test_every_rule_id_is_documented() -> None:
    """docs/validation.md lists every rule id the validator and the catalog rule sets can
    report, and nothing else."""
    root = Path(__file__).resolve().parents[1]
    ids = {rule.value for rule in Rule}
    for module in (root / "validation").glob("*.py"):
        ids |= set(re.findall(r'^[A-Z_]+ = "((?:layout|raster|pair|provenance|validator)-[a-z-]+)"',
                              module.read_text(), flags=re.MULTILINE))
    catalog = "\n".join(path.read_text() for path in (root / "catalog" / "rules").glob("*.py"))
    # the rule id is Problem's second argument; the first may be a call such as rel_path(root, p)
    reported = set(re.findall(r'Problem\(\s*(?:[^,()]|\([^()]*\))+,\s*"([a-z]+(?:-[a-z]+)+)"',
                              catalog))
    first_cells = re.findall(r"^\| (`[a-z-]+`(?:, `[a-z-]+`)*) \|",
                             (root / "docs/validation.md").read_text(), flags=re.MULTILINE)
    documented = {rule for cell in first_cells for rule in re.findall(r"`([a-z-]+)`", cell)}
    assert len(ids) > 30 and len(reported) > 30
    assert ids | reported <= documented
    literals = set(re.findall(r'"([a-z]+(?:-[a-z]+)+)"', catalog))
    assert documented - ids <= literals  # every documented catalog id is one the rules use
