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


def curves(onset=100.0, overfit=True, scale=1.0):
    """Synthetic curves with the article's shape: fast fall, slow fine tuning, then the test loss
    turning up at `onset` × `scale` while the train loss keeps falling; gradients shrink. `scale`
    stretches time, as a dataset with longer epochs would."""
    e = EPOCHS / scale
    train = 0.2 * np.exp(-e / 800) + 2.0 * np.exp(-e / 10) + 0.5 * np.exp(-e / 200)
    test = 1.5 + 1.2 * np.exp(-e / 10) + 0.3 * np.exp(-e / 80)
    if overfit:
        test = test + 0.3 * np.maximum(e - onset, 0) / onset
    grad = np.concatenate([[np.nan], 3.0 / (1 + e[1:] / 20)])
    return train, test, grad


def test_detect_phases_finds_the_phases_in_order():
    train, test, grad = curves(onset=100.0)
    d = phases.detect_phases(EPOCHS, train, test, grad)
    assert d["overfit_onset"] == pytest.approx(100.0, rel=0.15)
    assert 5 < d["fast_end"] < 60
    assert d["fast"] and d["overfits"] and d["phases"] and d["grad_shrinks"]
    assert d["rate_ratio"] >= phases.RATE_RATIO and d["grad_ratio"] < 1.0
    assert d["onset_over_fast_end"] == d["overfit_onset"] / d["fast_end"]


def test_the_boundary_ratio_does_not_depend_on_the_epoch_scale():
    """Stretching time ×3 (an epoch three times shorter) moves both boundaries ×3 and keeps their ratio."""
    d1, d3 = (phases.detect_phases(EPOCHS, *curves(onset=60.0, scale=k)) for k in (1.0, 3.0))
    assert d3["overfit_onset"] == pytest.approx(3 * d1["overfit_onset"], rel=0.1)
    assert d3["fast_end"] == pytest.approx(3 * d1["fast_end"], rel=0.1)
    assert d3["onset_over_fast_end"] == pytest.approx(d1["onset_over_fast_end"], rel=0.1)


def test_detect_phases_without_overfitting_or_with_flat_gradients():
    train, test, grad = curves(overfit=False)
    d = phases.detect_phases(EPOCHS, train, test, grad)
    assert not d["overfits"] and not d["phases"] and math.isnan(d["onset_over_fast_end"])
    train, test, _ = curves()
    flat = np.concatenate([[np.nan], np.full(EPOCHS.size - 1, 1.0)])
    d = phases.detect_phases(EPOCHS, train, test, flat)  # gradients are only shown, not judged
    assert d["fast"] and d["overfits"] and d["phases"] and not d["grad_shrinks"]


def test_detect_phases_on_a_diverged_seed_reports_nothing():
    train, test, grad = curves()
    train = train.copy()
    train[500:] = np.nan
    d = phases.detect_phases(EPOCHS, train, test, grad)
    assert not d["phases"] and math.isnan(d["overfit_onset"])


def test_ratio_rule_is_the_order_of_magnitude_of_ten():
    rule = phases.RATIO
    assert rule.edges == pytest.approx((10 ** 0.5, 10 ** 1.5))
    assert rule.decide(CI(10, 6, 20), n=8) == "supported" and rule.flip_point(CI(10, 6, 20)) == 6
    assert rule.decide(CI(2, 1.5, 2.5), n=8) == "contradicted" and rule.flip_point(CI(2, 1.5, 2.5)) == 2.5
    assert rule.decide(CI(4, 2, 8), n=8) == "inconclusive"
    assert rule.decide(CI(10, 6, 20), n=2) == "inconclusive"  # too few seeds show both boundaries
    assert rule.decide(CI(math.nan, math.nan, math.nan)) == "inconclusive"


@pytest.mark.parametrize("fraction, ratio, expected", [
    (CI(0.9, 0.8, 1.0), CI(10, 7, 14), "supported"),
    (CI(0.9, 0.8, 1.0), CI(2, 1.6, 2.4), "depends"),  # phases exist, onset only 2× the fast end
    (CI(0.9, 0.8, 1.0), CI(10, 2, 50), "inconclusive"),  # ratio CI too wide to tell
    (CI(0.1, 0.0, 0.3), CI(10, 7, 14), "contradicted"),
    (CI(0.5, 0.3, 0.7), CI(10, 7, 14), "inconclusive"),
    (CI(math.nan, math.nan, math.nan), CI(10, 7, 14), "inconclusive"),
])
def test_m10_verdict_rule(fraction, ratio, expected):
    assert phases.m10_verdict(fraction, ratio, n_ratio=8).verdict == expected


def test_m10_row_uses_the_wilson_fraction_and_flips_at_the_closest_part():
    fraction = stats.fraction_ci(np.ones(16, bool))  # 16 of 16 seeds: ≈ [0.81, 1], not [1, 1]
    v = phases.m10_verdict(fraction, CI(10, 8, 12), n_ratio=16)
    assert v.verdict == "supported" and v.ci_low == pytest.approx(0.806, abs=1e-3) and v.ci_high == 1.0
    # In standard errors (half-width / 1.96) on the side facing the threshold: most seeds is 0.5 / 0.099 = 5.1
    # from 0.5; the ratio (10 − 3.16) / 1.02 = 6.7 from its lower edge: most seeds is the closest call.
    assert v.flip_point == pytest.approx(0.806, abs=1e-3) and "ratio supported (flips at 8)" in v.flip_text
    v = phases.m10_verdict(fraction, CI(10, 7, 14), n_ratio=16)  # (10 − 3.16) / 1.53 = 4.5: now the ratio is
    assert v.flip_point == 7 and v.flip_of == "ratio" and v.flip_unit == "ratio"


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
    # The untrained nets measured by `initial_params` (He init: output gain 2) are the sweep's own step-0 nets.
    np.testing.assert_allclose(c["out_gain_2/loss"], c["test_loss"][:, 0], rtol=1e-5)
    np.testing.assert_allclose(c["out_gain_2/acc"], c["test_acc"][:, 0], rtol=1e-6)
    # Output gain 1 on the same draws: logits ÷ √2 (biases are 0), so every prediction is the same.
    np.testing.assert_allclose(c["out_gain_2/logit_std"] / c["out_gain_1/logit_std"], math.sqrt(2), rtol=1e-5)
    np.testing.assert_array_equal(c["out_gain_1/acc"], c["out_gain_2/acc"])
    assert c["epochs"][1] == 1.0  # tiny evaluates once an epoch
    m6 = verdicts[1]
    assert "output layer gain 2, the sweep's own he init" in m6.rule and phases.JUDGED_UNDER in m6.measurement
    assert "Under output gain 1 M6 would be" in m6.measurement



def test_run_caches_curves_by_the_full_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(phases, "measure", lambda s, sweep_dir: calls.append(s) or {"epochs": np.arange(3.0)})
    tiny = phases.PROFILES["tiny"]
    phases.run(tiny, tmp_path)
    phases.run(tiny, tmp_path)  # the same settings: read back, not measured again
    assert calls == [tiny]
    edited = override(tiny, ["contrast_output_gain=2.0"])  # any setting, even one the sweep does not see
    phases.run(edited, tmp_path)
    assert calls == [tiny, edited]
