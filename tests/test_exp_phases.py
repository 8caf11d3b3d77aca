"""experiments/phases.py: phase detection and verdict rules on synthetic curves, and a tiny run (M10, M6)."""

import math

import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import phases
from netalchemy import stats, store
from netalchemy.config import override
from netalchemy.experiment import VERDICTS, run_experiment
from netalchemy.stats import CI

EPOCHS = np.arange(0, 2001, dtype=np.float64)  # evaluated every epoch, 2000 epochs


def curves(onset=100.0, overfit=True):
    """Synthetic curves with the article's shape: fast fall, slow fine tuning, then the test
    loss turning up at `onset` while the train loss keeps falling; gradients shrink."""
    e = EPOCHS
    train = 0.2 * np.exp(-e / 800) + 2.0 * np.exp(-e / 10) + 0.5 * np.exp(-e / 200)
    test = 1.5 + 1.2 * np.exp(-e / 10) + 0.3 * np.exp(-e / 80)
    if overfit:
        test = test + 0.3 * np.maximum(e - onset, 0) / onset
    grad = np.concatenate([[np.nan], 3.0 / (1 + e[1:] / 20)])
    return train, test, grad


def test_smooth_log_keeps_constants_epoch_zero_and_skips_nan():
    v = np.full(EPOCHS.shape, 2.5)
    v[0] = 7.0
    v[1] = np.nan
    out = phases.smooth_log(EPOCHS, v)
    assert out[0] == 7.0  # epoch 0 is its own window
    assert np.isnan(out[1])  # the only point in its window is NaN
    np.testing.assert_allclose(out[2:], 2.5)
    # A late point averages the epochs within ±0.05 decades (891..1122 around 1000).
    ramp = phases.smooth_log(EPOCHS, EPOCHS)
    assert ramp[1000] == pytest.approx(np.mean(np.arange(892, 1123)))


def test_detect_phases_finds_the_three_phases_in_order():
    train, test, grad = curves(onset=100.0)
    d = phases.detect_phases(EPOCHS, train, test, grad, test_acc=-test)
    assert d["overfit_onset"] == pytest.approx(100.0, rel=0.15)
    assert 5 < d["fast_end"] < 60
    assert d["fast"] and d["grad_shrinks"] and d["overfits"] and d["all_phases"]
    assert d["rate_ratio"] >= phases.RATE_RATIO and d["grad_ratio"] < phases.GRAD_SHRINK
    assert d["acc_peak"] == pytest.approx(d["overfit_onset"], rel=0.15)


def test_detect_phases_without_overfitting_or_with_flat_gradients():
    train, test, grad = curves(overfit=False)
    d = phases.detect_phases(EPOCHS, train, test, grad)
    assert not d["overfits"] and not d["all_phases"]
    train, test, _ = curves()
    flat = np.concatenate([[np.nan], np.full(EPOCHS.size - 1, 1.0)])
    d = phases.detect_phases(EPOCHS, train, test, flat)
    assert d["fast"] and d["overfits"] and not d["grad_shrinks"] and not d["all_phases"]


def test_detect_phases_on_a_diverged_seed_reports_nothing():
    train, test, grad = curves()
    train = train.copy()
    train[500:] = np.nan
    d = phases.detect_phases(EPOCHS, train, test, grad)
    assert not d["all_phases"] and math.isnan(d["overfit_onset"])


def test_geometric_ci_and_boundary_rule():
    ci = phases.geometric_ci(np.array([10.0, 100.0, np.nan, 0.0]))
    assert ci.estimate == pytest.approx(math.sqrt(1000.0))
    rule = phases.BOUNDARIES["fast_end"]
    assert rule.edges == pytest.approx((50 / 3, 150)) and phases.BOUNDARIES["overfit_onset"].edges == (500 / 3, 1500)
    assert rule.decide(CI(50, 30, 90)) == "supported" and rule.flip_point(CI(50, 30, 90)) == 30
    assert rule.decide(CI(8, 6, 10)) == "contradicted" and rule.flip_point(CI(8, 6, 10)) == 10
    assert rule.decide(CI(20, 10, 40)) == "inconclusive"
    assert rule.decide(CI(math.nan, math.nan, math.nan)) == "inconclusive"


@pytest.mark.parametrize("fraction, fast, onset, expected", [
    (CI(0.9, 0.8, 1.0), CI(50, 40, 60), CI(500, 400, 700), "supported"),
    (CI(0.9, 0.8, 1.0), CI(8, 7, 9), CI(30, 25, 35), "depends"),  # phases exist, 6–16× earlier
    (CI(0.9, 0.8, 1.0), CI(50, 40, 60), CI(500, 100, 900), "depends"),  # onset CI too wide to match
    (CI(0.1, 0.0, 0.3), CI(50, 40, 60), CI(500, 400, 700), "contradicted"),
    (CI(0.5, 0.3, 0.7), CI(50, 40, 60), CI(500, 400, 700), "inconclusive"),
    (CI(math.nan, math.nan, math.nan), CI(50, 40, 60), CI(500, 400, 700), "inconclusive"),
])
def test_m10_verdict_rule(fraction, fast, onset, expected):
    assert phases.m10_verdict(fraction, fast, onset).verdict == expected


def test_m10_row_uses_the_wilson_fraction_and_flips_at_the_closest_part():
    fraction = stats.fraction_ci(np.ones(16, bool))  # 16 of 16 seeds: ≈ [0.81, 1], not [1, 1]
    v = phases.m10_verdict(fraction, CI(50, 40, 60), CI(500, 400, 700))
    assert v.verdict == "supported" and v.ci_low == pytest.approx(0.806, abs=1e-3) and v.ci_high == 1.0
    # In half-widths of their CIs: most seeds is 0.5 / 0.194 = 2.6 from 0.5, the fast end (50 − 16.7) / 10 = 3.3
    # from its lower edge, the onset (500 − 167) / 100 = 3.3: most seeds is the closest call.
    assert v.flip_point == pytest.approx(0.806, abs=1e-3) and "fast end supported (flips at 40)" in v.flip_text


@pytest.mark.parametrize("loss, acc, expected", [
    (CI(2.31, 2.28, 2.35), CI(0.10, 0.09, 0.11), "supported"),  # uniform and at chance
    (CI(3.10, 3.00, 3.20), CI(0.10, 0.09, 0.11), "depends"),  # at chance but confidently wrong
    (CI(2.10, 2.00, 2.20), CI(0.40, 0.35, 0.45), "contradicted"),  # knows something at init
    (CI(2.31, 2.28, 2.35), CI(0.14, 0.08, 0.20), "inconclusive"),  # accuracy CI too wide
    (CI(2.55, 2.45, 2.65), CI(0.10, 0.09, 0.11), "inconclusive"),  # loss straddles the tolerance
])
def test_m6_verdict_rule(loss, acc, expected):
    assert phases.m6_verdict(loss, acc, 10).verdict == expected


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("phases", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == list(phases.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule for v in verdicts)
    for v in verdicts:
        assert (out_dir / v.figure).stat().st_size > 1000
    assert (out_dir / "verdicts.json").exists() and (out_dir / "phases.json").exists()
    c = store.read_npz(out_dir / "curves.npz")
    # The untrained nets measured by `initial_params` are the sweep's own step-0 nets.
    np.testing.assert_allclose(c["init_he/loss"], c["test_loss"][:, 0], rtol=1e-5)
    np.testing.assert_allclose(c["init_he/acc"], c["test_acc"][:, 0], rtol=1e-6)
    assert c["epochs"][1] == 1.0  # tiny evaluates once an epoch



def test_run_caches_curves_by_the_full_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(phases, "measure", lambda s, sweep_dir: calls.append(s) or {"epochs": np.arange(3.0)})
    tiny = phases.PROFILES["tiny"]
    phases.run(tiny, tmp_path)
    phases.run(tiny, tmp_path)  # the same settings: read back, not measured again
    assert calls == [tiny]
    edited = override(tiny, ["contrast_init=he"])  # any setting, even one the sweep does not see
    phases.run(edited, tmp_path)
    assert calls == [tiny, edited]
