"""Uncertainty bounds (paper section 3.2.4): the restoration factor only widens the range, per
restoration method, and ``icedamage uncertainty`` says when the range misses the mapped value."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pystac
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from typer.testing import CliRunner

from catalog.stats import PixelCounts, catalog_factors, damage_stats, item_factors
from catalog.uncertainty import (
    PAPER_EVALUATIONS,
    PAPER_FACTORS,
    PAPER_RESTORATION,
    Evaluation,
    UncertaintyFactors,
    derive_factors,
    factor_differences,
    factor_warnings,
    widened_bounds,
)
from producer.cli import build_app

runner = CliRunner()
#: The reviewer's restoration evaluation whose λ = 0.90 / 0.95 < 1.
OVER_MAPPING = Evaluation("restored", 0.90, 0.95)

factors_st = st.floats(0.05, 20.0, allow_nan=False)


# --------------------------------------------------------------------------- the bounds rule


@given(value=st.floats(0.0, 1e7, allow_nan=False), a=factors_st, b=factors_st,
       lambda_r=factors_st)
@example(value=50.12, a=0.9707, b=1.0591, lambda_r=0.9474)  # the reviewer's narrowing case
@example(value=50.12, a=0.9707, b=1.0591, lambda_r=1.0436)  # the paper's DiffGF case
def test_a_restoration_factor_never_narrows_the_range(value: float, a: float, b: float,
                                                      lambda_r: float) -> None:
    """Whatever λ_R, a restored map's range holds the unrestored one; the side it does not
    widen stays as it is (the paper keeps DiffGF's lower bound unchanged)."""
    lam_min, lam_max = min(a, b), max(a, b)
    factors = UncertaintyFactors(lam_min, lam_max, lambda_r)
    low, high = factors.bounds(value, False)
    low_r, high_r = factors.bounds(value, True)  # a DiffGF map
    assert high_r is not None and low_r <= low and high_r >= high
    assert (low_r == low) if lambda_r >= 1 else (high_r == high)
    fraction = min(value / 1e7, 1.0)
    f_low, f_high = factors.bounds(fraction, False, fraction=True)
    r_low, r_high = factors.bounds(fraction, True, fraction=True)
    assert r_high is not None and f_high is not None
    assert 0.0 <= r_low <= f_low and f_high <= r_high <= 1.0
    assert widened_bounds(value, lam_min, lam_max, lambda_r) == (low_r, high_r)
    assert widened_bounds(value, lam_min, lam_max) == (low, high)
    assert factors.bounds(value, "DiffGF") == (low_r, high_r)


def test_the_papers_diffgf_rule() -> None:
    """λ_max × λ_DiffGF = 1.105 for the upper bound, λ_min 0.971 for the lower."""
    low, high = PAPER_FACTORS.factors_for("DiffGF")
    assert round(low, 3) == 0.971 and high is not None and round(high, 3) == 1.105
    assert PAPER_FACTORS.factors_for(None) == (PAPER_FACTORS.lambda_min, PAPER_FACTORS.lambda_max)


def test_a_factor_below_one_widens_the_lower_bound_of_restored_maps() -> None:
    """The reviewer's case: λ_R 0.947 once pulled the upper bound in to λ_max × 0.947."""
    factors = derive_factors(PAPER_EVALUATIONS, OVER_MAPPING)
    stats = damage_stats("Totten", 2008, PixelCounts(1000, 5000, 900.0), "DiffGF", factors)
    plain = damage_stats("Totten", 2008, PixelCounts(1000, 5000, 900.0), None, factors)
    assert stats.damage_area_km2_high == pytest.approx(0.9 * factors.lambda_max)
    assert stats.damage_area_km2_low == pytest.approx(0.9 * factors.lambda_min * 0.9 / 0.95)
    assert stats.damage_area_km2_low < plain.damage_area_km2_low
    assert stats.damage_area_km2_high == plain.damage_area_km2_high
    assert stats.lambda_upper_restored == pytest.approx(factors.lambda_max)


def test_a_method_without_a_known_factor_has_no_upper_bound() -> None:
    """FillNodata: the paper gives no factor, so no upper bound (not the unrestored one)."""
    low, high = PAPER_FACTORS.bounds(10.0, "FillNodata")
    assert low == pytest.approx(10.0 * PAPER_FACTORS.lambda_min) and high is None
    stats = damage_stats("Larsen B", 2006, PixelCounts(100, 1000, 900.0), "FillNodata",
                         PAPER_FACTORS)
    assert stats.damage_area_km2_high is None and stats.damage_fraction_high is None
    assert stats.lambda_restoration is None and stats.upper_unknown
    assert PAPER_FACTORS.bounds(10.0, True) == PAPER_FACTORS.bounds(10.0, "DiffGF")


# --------------------------------------------------------------------------- factors per method


def test_factors_files_carry_a_factor_per_restoration_method(tmp_path: Path) -> None:
    factors = derive_factors(PAPER_EVALUATIONS, OVER_MAPPING, "FillNodata")
    assert factors.lambda_restoration == PAPER_FACTORS.lambda_restoration  # the paper's DiffGF
    assert factors.restoration_factor("FillNodata") == pytest.approx(0.9 / 0.95)
    assert factors.sources[-2:] == (PAPER_RESTORATION.name, "restored")
    text = factors.to_json()
    assert json.loads(text)["restoration_factors"] == {"FillNodata": pytest.approx(0.9 / 0.95)}
    assert UncertaintyFactors.from_json(text) == factors
    # a file without the key (every file written so far) reads as before
    assert "restoration_factors" not in PAPER_FACTORS.to_json()
    assert UncertaintyFactors.from_json(PAPER_FACTORS.to_json()) == PAPER_FACTORS


@pytest.mark.parametrize(("restorations", "message"), [
    ({"DiffGF": 1.1}, "give it there"),
    ({"Kriging": 1.1}, "not a restoration method"),
    ({"FillNodata": 0}, "must be a positive number"),
    ([1.1], "must be an object"),
])
def test_bad_restoration_factors_are_clear_errors(restorations: object, message: str) -> None:
    data = {"lambda_min": 0.9, "lambda_max": 1.1, "lambda_restoration": 1.04,
            "restoration_factors": restorations}
    with pytest.raises(ValueError, match=message):
        UncertaintyFactors.from_json(json.dumps(data), where="f.json")


def test_factor_differences_name_what_differs() -> None:
    other = derive_factors([Evaluation("a", 0.85, 0.80), Evaluation("b", 0.9, 0.82)],
                           PAPER_RESTORATION)
    assert factor_differences(PAPER_FACTORS, PAPER_FACTORS) == []
    texts = factor_differences(other, PAPER_FACTORS)
    assert [t.split()[0] for t in texts] == ["λ_min", "λ_max"]
    fill = PAPER_FACTORS.with_restoration("FillNodata", 1.02)
    assert factor_differences(PAPER_FACTORS, fill) == ["λ_FillNodata unknown vs 1.02"]


def _item(item_id: str, props: dict) -> pystac.Item:
    return pystac.Item(item_id, None, None, dt.datetime(2020, 1, 1, tzinfo=dt.UTC),
                       properties=props)


def test_items_give_back_the_factors_they_were_cataloged_with() -> None:
    base = {"icedamage:lambda_lower": 0.9, "icedamage:lambda_upper": 1.1}
    old_diffgf = {**base, "icedamage:restoration": "DiffGF",
                  "icedamage:lambda_upper_restored": 1.1 * 1.05}  # before lambda_restoration
    fill = {**base, "icedamage:restoration": "FillNodata", "icedamage:lambda_restoration": 0.98}
    unknown = {**base, "icedamage:restoration": "FillNodata",
               "icedamage:lambda_restoration": None}
    assert item_factors(old_diffgf).restoration_factor("DiffGF") == pytest.approx(1.05)
    assert item_factors(unknown).restoration_factor("FillNodata") is None
    # a FillNodata item of a 0.2.0 catalog (no lambda_restoration field) published the plain
    # upper bound: read back as it was published, factor 1
    old_fill = {**base, "icedamage:restoration": "FillNodata",
                "icedamage:lambda_upper_restored": None, "icedamage:damage_area_km2_high": 19.0}
    assert item_factors(old_fill).restoration_factor("FillNodata") == 1.0
    assert item_factors({"icedamage:lambda_lower": "0.9", "icedamage:lambda_upper": 1}) is None
    merged = catalog_factors([_item("a", old_diffgf), _item("b", fill), _item("c", base)])
    assert (merged.lambda_min, merged.lambda_max) == (0.9, 1.1)
    assert merged.known_restorations() == {"DiffGF": pytest.approx(1.05), "FillNodata": 0.98}
    assert catalog_factors([]) is None
    with pytest.raises(ValueError, match="different uncertainty factors"):
        catalog_factors([_item("a", base), _item("b", {**base, "icedamage:lambda_upper": 1.2})])


# --------------------------------------------------------------------------- warnings


def test_factor_warnings_say_when_the_range_misses_the_mapped_value() -> None:
    assert factor_warnings(PAPER_FACTORS, 2) == []
    high = derive_factors([Evaluation("a", 0.85, 0.80), Evaluation("b", 0.9, 0.82)],
                          PAPER_RESTORATION)
    assert any("λ_min 1.062 > 1" in w and "above the mapped value" in w
               for w in factor_warnings(high, 2))
    low = derive_factors([Evaluation("a", 0.7, 0.8), Evaluation("b", 0.75, 0.8)],
                         PAPER_RESTORATION)
    assert any("below the mapped value" in w for w in factor_warnings(low, 2))
    one = derive_factors([PAPER_EVALUATIONS[0]], PAPER_RESTORATION)
    assert any("zero width" in w for w in factor_warnings(one, 1))


def _evaluation(path: Path, name: str, precision: float, recall: float) -> Path:
    path.write_text(json.dumps({"name": name, "precision": precision, "recall": recall}))
    return path


def test_uncertainty_command_warns_and_names_the_restoration_method(tmp_path: Path) -> None:
    a = _evaluation(tmp_path / "a.json", "a", 0.85, 0.80)
    b = _evaluation(tmp_path / "b.json", "b", 0.90, 0.82)
    restored = _evaluation(tmp_path / "r.json", "restored", 0.90, 0.95)
    out = tmp_path / "f.json"
    res = runner.invoke(build_app(), ["uncertainty", str(a), "--out", str(out)])
    text = " ".join(res.output.split())
    assert res.exit_code == 0, res.output
    assert "only one segmentation evaluation" in text and "λ_min 1.062 > 1" in text
    res = runner.invoke(build_app(), ["uncertainty", str(a), str(b), "--restoration",
                                      str(restored), "--restoration-method", "FillNodata",
                                      "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = UncertaintyFactors.from_json(out.read_text())
    assert written.restoration_factor("FillNodata") == pytest.approx(0.9 / 0.95)
    assert written.lambda_restoration == pytest.approx(PAPER_FACTORS.lambda_restoration)
    assert "lower bound × λ_FillNodata 0.947" in " ".join(res.output.split())
    res = runner.invoke(build_app(), ["uncertainty", "--restoration-method", "Kriging",
                                      "--restoration", str(restored), "--out", str(out)])
    assert res.exit_code == 1 and "Kriging" in res.output


def test_uncertainty_takes_the_method_a_restoration_report_names(tmp_path: Path) -> None:
    """A report of ``evaluate-restoration`` run on FillNodata only gives FillNodata's factor,
    never DiffGF's; asking for DiffGF from it is an error."""
    report = tmp_path / "restoration.json"
    report.write_text(json.dumps({"segmentation_agreement": {
        "method": "FillNodata", "precision": 0.95, "recall": 0.9}}))
    out = tmp_path / "f.json"
    res = runner.invoke(build_app(), ["uncertainty", "--restoration", str(report),
                                      "--out", str(out)])
    assert res.exit_code == 0, res.output
    written = UncertaintyFactors.from_json(out.read_text())
    assert written.restoration_factor("FillNodata") == pytest.approx(0.95 / 0.9)
    assert written.lambda_restoration == pytest.approx(PAPER_FACTORS.lambda_restoration)
    res = runner.invoke(build_app(), ["uncertainty", "--restoration", str(report),
                                      "--restoration-method", "DiffGF", "--out", str(out)])
    assert res.exit_code == 1 and "not 'DiffGF'" in " ".join(res.output.split())
