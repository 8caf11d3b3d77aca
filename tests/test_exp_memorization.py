"""Memorization experiment (A6): the tiny profile end to end, and the verdict rules on known numbers."""

import json

import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import memorization as mem
from netalchemy import stats
from netalchemy.experiment import VERDICTS, run_experiment


def ci(estimate, low, high):
    return stats.CI(estimate, low, high)


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("memorization", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == list(mem.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule for v in verdicts)
    for name in ("accuracy_vs_noise.png", "steps_to_fit.png", "curves.png", "table.txt", "verdicts.json"):
        assert (out_dir / name).exists(), name
    meta = json.loads((out_dir / "results.json").read_text())
    by_noise = {lv["noise"]: lv for lv in meta["levels"]}
    # history["train_acc"] is measured against the noisy labels the net was trained on
    assert all(lv["history_vs_noisy_max_diff"] < 1e-6 for lv in meta["levels"])
    assert by_noise[0.0]["labels_changed"] == 0.0
    assert by_noise[1.0]["labels_changed"] == pytest.approx(0.9, abs=0.05)  # a redrawn label keeps its class 1/10 of the time
    assert [v.verdict for v in mem.report(out_dir)] == [v.verdict for v in verdicts]


def test_steps_to_fit_and_plateau():
    steps = np.array([0, 50, 100, 150, 200])
    acc = np.array([[0.1, 0.5, 0.99, 1.0, 1.0],
                    [0.1, 0.2, 0.3, 0.4, 0.5]])
    fit = mem.steps_to_fit(acc, steps, 0.99)
    assert fit[0] == 100 and np.isnan(fit[1])
    assert mem.plateaued(acc[:1])  # flat over the last quarter
    assert not mem.plateaued(acc[1:])  # still rising


@pytest.mark.parametrize("train, plateau, expected", [
    (ci(0.99, 0.97, 1.0), False, "supported"),
    (ci(0.6, 0.55, 0.65), True, "contradicted"),  # stuck far below 100%
    (ci(0.6, 0.55, 0.65), False, "inconclusive"),  # still rising: the budget was too short (e.g. tiny)
    (ci(0.95, 0.9, 0.99), True, "inconclusive"),
    (ci(np.nan, np.nan, np.nan), True, "inconclusive"),
])
def test_fit_verdict(train, plateau, expected):
    assert mem.FIT.decide(train, settled=plateau, n=8) == expected


@pytest.mark.parametrize("test, expected", [
    (ci(0.10, 0.09, 0.11), "supported"),
    (ci(0.40, 0.38, 0.42), "contradicted"),
    (ci(0.14, 0.12, 0.17), "inconclusive"),
])
def test_chance_verdict(test, expected):
    assert mem.chance_rule(0.1).decide(test) == expected


def test_a6_combination():
    fits, fails, unsure = ci(0.99, 0.97, 1.0), ci(0.6, 0.55, 0.65), ci(0.95, 0.9, 0.99)
    chance, above = ci(0.10, 0.09, 0.11), ci(0.40, 0.38, 0.42)
    a6 = lambda train, test, n=8: mem.a6_verdict(train, test, 0.1, has_plateaued=True, n_seeds=n)  # noqa: E731
    v = a6(fits, chance)
    assert v.verdict == "supported" and (v.value, v.ci_low, v.ci_high) == (0.99, 0.97, 1.0)
    assert v.flip_point == 0.97  # the fit part (0.02 above 0.95) is the closer call; its low end
    assert mem.FIT.describe() in v.rule and "Holm" in v.rule
    assert a6(fails, chance).verdict == "contradicted"
    assert a6(fits, above).verdict == "contradicted"
    assert a6(unsure, chance).verdict == "inconclusive"
    assert a6(fits, chance, n=2).verdict == "inconclusive"  # too few seeds
    assert mem.a6_verdict(fails, chance, 0.1, has_plateaued=False, n_seeds=8).verdict == "inconclusive"


def test_plateau_with_few_evaluations_compares_the_last_two():
    assert not mem.plateaued(np.array([[0.1, 0.2, 0.3]]))
    assert mem.plateaued(np.array([[0.1, 0.9, 0.9]]))
    assert not mem.plateaued(np.array([[0.5]]))
