"""Regularization experiment (M11, M13): the tiny profile end to end, and the verdict rules on known numbers."""

import json

import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import regularization as reg
from netalchemy import mlp, stats
from netalchemy.config import ModelConfig
from netalchemy.experiment import VERDICTS, run_experiment


def ci(estimate, low, high):
    return stats.CI(estimate, low, high)


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("regularization", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == list(reg.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule for v in verdicts)
    for name in ("strengths.png", "weights.png", "curves.png", "table.txt", "comparisons.json", "verdicts.json"):
        assert (out_dir / name).exists(), name
    saved = json.loads((out_dir / "verdicts.json").read_text())
    assert {v["claim"] for v in saved["verdicts"]} == set(reg.CLAIMS)
    # report() works again from the stored files alone, and gives the same verdicts
    assert [v.verdict for v in reg.report(out_dir)] == [v.verdict for v in verdicts]


@pytest.mark.parametrize("poi, gap, expected", [
    (ci(0.9, 0.7, 1.0), ci(-0.1, -0.15, -0.05), "supported"),  # better test acc, smaller gap
    (ci(0.9, 0.7, 1.0), ci(0.01, -0.02, 0.04), "inconclusive"),  # better test acc, gap unchanged
    (ci(0.1, 0.0, 0.3), ci(-0.1, -0.15, -0.05), "contradicted"),  # worse test acc, even if the gap shrinks
    (ci(0.5, 0.3, 0.7), ci(-0.1, -0.15, -0.05), "inconclusive"),  # test acc unchanged
    (ci(np.nan, np.nan, np.nan), ci(-0.1, -0.15, -0.05), "inconclusive"),  # nothing measured
])
def test_improvement_verdict(poi, gap, expected):
    assert reg.improvement_verdict(poi, gap) == expected


def test_sparsity_rule():
    assert reg.SPARSER.decide(ci(0.5, 0.4, 0.6)) == "supported"
    assert reg.SPARSER.decide(ci(0.01, 0.0, 0.02)) == "contradicted"
    assert reg.SPARSER.decide(ci(0.05, 0.01, 0.1)) == "inconclusive"
    assert reg.SPARSER.decide(ci(0.5, 0.4, 0.6), n=3) == "inconclusive"  # too few judging seeds
    assert reg.SPARSER.flip_point(ci(0.5, 0.4, 0.6)) == 0.4


def test_improvement_needs_both_parts_after_holm():
    assert reg.improvement_verdict(ci(0.9, 0.7, 1.0), ci(-0.1, -0.15, -0.05)) == "supported"
    # Each part alone is just supported (one-sided p = sf(0.1 / (0.09 / 1.96)) ≈ 0.015 < 0.025), but
    # Holm's first step needs p < 0.025 / 2 = 0.0125: neither part passes.
    close_poi, close_gap = ci(0.6, 0.51, 0.69), ci(-0.1, -0.19, -0.01)
    assert reg.BETTER.decide(close_poi) == "supported" and reg.GAP.decide(close_gap) == "supported"
    assert reg.improvement_verdict(close_poi, close_gap) == "inconclusive"


def test_best_level_is_chosen_on_selection_seeds_only():
    selection, judging = reg.split_seeds(8)
    assert list(selection) == [0, 1, 2, 3] and list(judging) == [4, 5, 6, 7]
    a = np.array([0.5] * 4 + [0.9] * 4)  # looks best on the judging seeds only
    b = np.array([0.6] * 4 + [0.1] * 4)
    assert reg.best_level([a, b], selection) == 1
    assert reg.best_level([np.full(8, np.nan)], selection) is None


def test_compare_on_synthetic_seeds():
    """A regularizer that adds 0.1 test accuracy and removes 0.1 of the gap on every seed is supported."""
    rng = np.random.default_rng(0)
    n = 16
    base_test = 0.4 + 0.02 * rng.standard_normal(n)
    r = {"none/test_acc": base_test, "none/train_acc": np.ones(n), "none/sparsity": np.full(n, 0.01),
         "none/coadaptation": np.full(n, 0.3),
         "dropout-0.5/test_acc": base_test + 0.1, "dropout-0.5/train_acc": np.ones(n),
         "dropout-0.5/sparsity": np.full(n, 0.01), "dropout-0.5/coadaptation": np.full(n, 0.2),
         "dropout-0.1/test_acc": base_test - 0.05, "dropout-0.1/train_acc": np.ones(n),
         "dropout-0.1/sparsity": np.full(n, 0.01), "dropout-0.1/coadaptation": np.full(n, 0.3)}
    levels = [dict(name="dropout-0.1", level=0.1), dict(name="dropout-0.5", level=0.5)]
    c = reg.compare(r, "dropout", levels, *reg.split_seeds(n))
    assert c["name"] == "dropout-0.5" and c["verdict"] == "supported"
    assert c["gap_change"].estimate == pytest.approx(-0.1)
    assert c["coadaptation_change"].estimate == pytest.approx(-0.1)


def test_near_zero_fraction_is_relative_to_the_init_scale():
    model = ModelConfig()
    scale = reg.init_scale(4, model)  # sqrt(2 / 4)
    w = np.array([[0.0, 0.5 * 0.01 * scale], [2 * 0.01 * scale, 1.0]] * 2)  # (4, 2): half the entries near zero
    params = (mlp.Layer(w[None], np.zeros((1, 2))),)
    assert reg.near_zero_fraction(params, model, 0.01) == pytest.approx([0.5])
    assert reg.weight_histogram(params).sum() == w.size


def test_mean_abs_correlation():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5000, 1))
    h = np.concatenate([z, 2 * z + 1, -z, np.zeros((5000, 1))], axis=1)  # 3 perfectly correlated units, 1 dead
    assert reg.mean_abs_correlation(h) == pytest.approx(1.0)
    assert reg.mean_abs_correlation(rng.standard_normal((20000, 5))) < 0.03
    assert np.isnan(reg.mean_abs_correlation(np.zeros((10, 3))))


def test_too_few_judging_seeds_give_no_verdict():
    clear_win, shrinking = ci(1.0, 1.0, 1.0), ci(-0.1, -0.1, -0.1)
    assert reg.improvement_verdict(clear_win, shrinking, n_seeds=1) == "inconclusive"
    assert reg.SPARSER.decide(ci(0.5, 0.5, 0.5), n=3) == "inconclusive"


def test_p_better_is_a_paired_share_with_a_wilson_interval():
    rng = np.random.default_rng(1)
    n = 32
    base = 0.4 + 0.02 * rng.standard_normal(n)
    r = {"none/test_acc": base, "none/train_acc": np.ones(n), "none/sparsity": np.full(n, 0.01),
         "none/coadaptation": np.full(n, 0.3), "l2-1e-3/test_acc": base + 0.05, "l2-1e-3/train_acc": np.ones(n),
         "l2-1e-3/sparsity": np.full(n, 0.01), "l2-1e-3/coadaptation": np.full(n, 0.3)}
    c = reg.compare(r, "l2", [dict(name="l2-1e-3", level=1e-3)], *reg.split_seeds(n))
    assert c["poi"] == stats.proportion_ci(16, 16)  # 16 of 16 judging seeds better: ≈ [0.81, 1], not [1, 1]
    assert c["poi"].low == pytest.approx(0.806, abs=1e-3) and c["verdict"] == "supported"
