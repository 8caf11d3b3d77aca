"""Regularization experiment (M11, M13): the tiny profile end to end, and the verdict rules on known numbers."""

import json

import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import regularization as reg
from netalchemy import stats, store
from netalchemy.experiment import VERDICTS, run_experiment


MIN = reg.MIN_JUDGING_SEEDS


def ci(estimate, low, high):
    return stats.CI(estimate, low, high)


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("regularization", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == list(reg.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule for v in verdicts)
    for name in ("strengths.png", "weights.png", "curves.png", "comparisons.json", "verdicts.json"):
        assert (out_dir / name).exists(), name
    saved = json.loads((out_dir / "verdicts.json").read_text())
    assert {v["claim"] for v in saved["verdicts"]} == set(reg.CLAIMS)
    r = store.read_npz(out_dir / "results.npz")
    assert list(r["name"]) == ["none", "dropout-0.5", "l1-0.001", "l2-0.01"]
    for name in r["name"]:
        np.testing.assert_allclose(r[f"{name}/gap"], r[f"{name}/train_acc"] - r[f"{name}/test_acc"])
        assert np.all(np.diff(r[f"{name}/near_zero_curve"], axis=1) >= 0)  # a CDF over the thresholds
        assert np.all((r[f"{name}/coadaptation"] >= 0) & (r[f"{name}/coadaptation"] <= 1))
        assert r[f"{name}/test_acc_curve"].shape == (2, 3)  # 2 seeds, evaluations at steps 0, 50, 100
    comparisons = json.loads((out_dir / "comparisons.json").read_text())
    assert set(comparisons["comparisons"]) == {"dropout", "l1", "l2"} and set(comparisons["variants"]) == set(r["name"])
    # report() works again from the stored files alone, and gives the same verdicts
    assert [v.verdict for v in reg.report(out_dir)] == [v.verdict for v in verdicts]


def comparison(poi, gap, n=MIN, **changes):
    """A `compare` result with the given CIs (unmeasured changes NaN)."""
    nothing = ci(np.nan, np.nan, np.nan)
    return dict(kind="dropout", name="dropout-0.5", level=0.5, n_judging=n, poi=poi, gap_change=gap,
                **{k: changes.get(k, nothing) for k in ("test_change", "sparsity_rise", "coadaptation_change")})


def m11(poi, gap, n=MIN):
    return reg.regularizer_verdict("M11", {"dropout": comparison(poi, gap, n)}, "split").verdict


@pytest.mark.parametrize("poi, gap, expected", [
    (ci(0.9, 0.7, 1.0), ci(-0.1, -0.15, -0.05), "supported"),  # better test acc, smaller gap
    (ci(0.9, 0.7, 1.0), ci(0.01, -0.02, 0.04), "inconclusive"),  # better test acc, gap unchanged
    (ci(0.1, 0.0, 0.3), ci(-0.1, -0.15, -0.05), "contradicted"),  # worse test acc, even if the gap shrinks
    (ci(0.5, 0.3, 0.7), ci(-0.1, -0.15, -0.05), "inconclusive"),  # test acc unchanged
    (ci(np.nan, np.nan, np.nan), ci(-0.1, -0.15, -0.05), "inconclusive"),  # nothing measured
])
def test_improvement_verdict(poi, gap, expected):
    assert m11(poi, gap) == expected


def test_sparsity_rule():
    assert reg.SPARSER.decide(ci(0.5, 0.4, 0.6)) == "supported"
    assert reg.SPARSER.decide(ci(0.01, 0.0, 0.02)) == "contradicted"
    assert reg.SPARSER.decide(ci(0.05, 0.01, 0.1)) == "inconclusive"
    assert reg.SPARSER.decide(ci(0.5, 0.4, 0.6), n=3) == "inconclusive"  # too few judging seeds
    assert reg.SPARSER.flip_point(ci(0.5, 0.4, 0.6)) == 0.4


def test_improvement_needs_both_parts_after_holm():
    assert m11(ci(0.9, 0.7, 1.0), ci(-0.1, -0.15, -0.05)) == "supported"
    # Each part alone is just supported (one-sided p = sf(0.1 / (0.09 / 1.96)) ≈ 0.015 < 0.025), but
    # Holm's first step needs p < 0.025 / 2 = 0.0125: neither part passes.
    close_poi, close_gap = ci(0.6, 0.51, 0.69), ci(-0.1, -0.19, -0.01)
    assert reg.BETTER.decide(close_poi) == "supported" and reg.GAP.decide(close_gap) == "supported"
    assert m11(close_poi, close_gap) == "inconclusive"


def test_m13_combines_l1_l2_and_sparsity():
    win, shrinks, loss = ci(0.9, 0.8, 1.0), ci(-0.1, -0.15, -0.05), ci(0.1, 0.0, 0.2)
    m13 = lambda l1, l2: reg.regularizer_verdict("M13", {"L1": l1, "L2": l2}, "split", sparsity_rel=0.01)  # noqa: E731
    sparse, dense = comparison(win, shrinks, sparsity_rise=ci(0.3, 0.2, 0.4)), comparison(win, shrinks,
                                                                                         sparsity_rise=ci(0, -0.01, 0.01))
    v = m13(sparse, comparison(win, shrinks))
    assert v.verdict == "supported" and "sparsity supported" in v.flip_text and v.value == 0.9  # L2's P(better)
    assert reg.SPARSER.describe() in v.rule and "Holm" in v.rule
    assert m13(dense, comparison(win, shrinks)).verdict == "depends"  # improves, but no sparser
    assert m13(sparse, comparison(loss, shrinks)).verdict == "depends"  # L1 helps, L2 hurts
    assert m13(comparison(loss, shrinks, sparsity_rise=ci(0, -0.01, 0.01)), None).verdict == "contradicted"
    assert m13(None, None).verdict == "inconclusive"  # no L1/L2 variant ran


def test_best_level_is_chosen_on_selection_seeds_only():
    selection, judging = reg.split_seeds(8)
    assert list(selection) == [0, 1, 2, 3] and list(judging) == [4, 5, 6, 7]
    a = np.array([0.5] * 4 + [0.9] * 4)  # looks best on the judging seeds only
    b = np.array([0.6] * 4 + [0.1] * 4)
    assert reg.best_level([a, b], selection) == 1
    assert reg.best_level([np.full(8, np.nan)], selection) is None
    assert reg.best_level([], selection) is None


def synthetic(n, base_test, variants):
    """Results as `measure` stores them: per variant name, test accuracy (train accuracy 1)."""
    r = {}
    for name, (test, sparsity, coadaptation) in {"none": (base_test, 0.01, 0.3), **variants}.items():
        r |= {f"{name}/test_acc": test, f"{name}/train_acc": np.ones(n), f"{name}/gap": 1 - test,
              f"{name}/sparsity": np.full(n, sparsity), f"{name}/coadaptation": np.full(n, coadaptation)}
    return r


def test_compare_on_synthetic_seeds():
    """A regularizer that adds 0.1 test accuracy and removes 0.1 of the gap on every seed is supported."""
    n = 16
    base = 0.4 + 0.02 * np.random.default_rng(0).standard_normal(n)
    r = synthetic(n, base, {"dropout-0.5": (base + 0.1, 0.01, 0.2), "dropout-0.1": (base - 0.05, 0.01, 0.3)})
    levels = [dict(name="dropout-0.1", level=0.1), dict(name="dropout-0.5", level=0.5)]
    c = reg.compare(r, "dropout", levels, *reg.split_seeds(n))
    assert c["name"] == "dropout-0.5" and c["level"] == 0.5 and c["n_judging"] == 8
    assert c["gap_change"].estimate == pytest.approx(-0.1) and c["test_change"].estimate == pytest.approx(0.1)
    assert c["coadaptation_change"].estimate == pytest.approx(-0.1)
    assert reg.regularizer_verdict("M11", {"dropout": c}, "split").verdict == "supported"
    assert reg.compare(r, "l1", [], *reg.split_seeds(n)) is None  # no level of that kind ran


def test_too_few_judging_seeds_give_no_verdict():
    clear_win, shrinking = ci(1.0, 1.0, 1.0), ci(-0.1, -0.1, -0.1)
    assert m11(clear_win, shrinking, n=1) == "inconclusive"
    assert m11(clear_win, shrinking, n=4) == "supported"
    assert reg.SPARSER.decide(ci(0.5, 0.5, 0.5), n=3) == "inconclusive"


def test_p_better_is_a_paired_share_with_a_wilson_interval():
    n = 32
    base = 0.4 + 0.02 * np.random.default_rng(1).standard_normal(n)
    c = reg.compare(synthetic(n, base, {"l2-1e-3": (base + 0.05, 0.01, 0.3)}), "l2", [dict(name="l2-1e-3", level=1e-3)],
                    *reg.split_seeds(n))
    assert c["poi"] == stats.proportion_ci(16, 16)  # 16 of 16 judging seeds better: ≈ [0.81, 1], not [1, 1]
    assert c["poi"].low == pytest.approx(0.806, abs=1e-3)
    assert reg.regularizer_verdict("M11", {"L2": c}, "split").verdict == "supported"
