"""Memorization experiment (A6): the tiny profile end to end, and the verdict rules on known numbers."""

import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import memorization as mem
from netalchemy import config as config_lib
from netalchemy import stats, store, sweep
from netalchemy.experiment import VERDICTS, run_experiment


def ci(estimate, low, high):
    return stats.CI(estimate, low, high)


def test_tiny_profile_end_to_end(tmp_path, monkeypatch):
    calls = []
    measure = mem.measure
    monkeypatch.setattr(mem, "measure", lambda s, out_dir: calls.append(s) or measure(s, out_dir))
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("memorization", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == list(mem.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule for v in verdicts)
    for name in ("accuracy_vs_noise.png", "steps_to_fit.png", "curves.png", "table.txt", "verdicts.json"):
        assert (out_dir / name).exists(), name
    r = store.read_npz(out_dir / "results.npz")
    assert list(r["noise"]) == [0.0, 1.0] and r["noise-1/step"].shape == (2, 3)  # 2 seeds, steps 0, 50, 100
    # history["train_acc"] is measured against the noisy labels the net was trained on
    assert r["noise-0/history_vs_noisy_max_diff"] < 1e-6 and r["noise-1/history_vs_noisy_max_diff"] < 1e-6
    np.testing.assert_array_equal(r["noise-0/acc_noisy_labels"], r["noise-0/acc_clean_labels"])
    assert r["noise-0/labels_changed"] == 0.0
    assert r["noise-1/labels_changed"] == pytest.approx(0.9, abs=0.05)  # a redrawn label keeps its class 1/10 of the time
    assert [v.verdict for v in mem.report(out_dir)] == [v.verdict for v in verdicts]
    for key in ("noise-0", "noise-1"):  # a finite step to fit lies between the evaluations around the crossing
        steps, acc, fit = r[f"{key}/step"][0], r[f"{key}/train_acc"], r[f"{key}/steps_to_fit"]
        for seed in np.flatnonzero(np.isfinite(fit)):
            first = np.argmax(acc[seed] >= 0.99)
            assert steps[max(first - 1, 0)] <= fit[seed] <= steps[first]
        assert np.all(np.isfinite(fit) == (acc >= 0.99).any(axis=1))  # +inf exactly where never fitted

    # results.npz is cached by the full settings: reused as is, recomputed after an edit (the sweeps reused)
    finished = sweep.load(out_dir / "sweeps" / "noise-1").finished
    mem.run(mem.PROFILES["tiny"], out_dir)
    assert len(calls) == 1
    mem.run(config_lib.override(mem.PROFILES["tiny"], ["fit_threshold=0.5"]), out_dir)
    assert len(calls) == 2 and store.read_npz(out_dir / "results.npz")["fit_threshold"] == 0.5
    assert sweep.load(out_dir / "sweeps" / "noise-1").finished == finished


def test_plateau():
    acc = np.array([[0.1, 0.5, 0.99, 1.0, 1.0],
                    [0.1, 0.2, 0.3, 0.4, 0.5]])
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
