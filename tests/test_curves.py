"""netalchemy.curves on analytic curves: log smoothing, the knee of a piecewise-linear curve, crossings."""

import math

import numpy as np
import pytest

from netalchemy import curves
from netalchemy.curves import first_crossing, knee, phase_boundaries, smooth_log

EPOCHS = np.arange(0, 2001, dtype=np.float64)


def test_smooth_log_keeps_constants_step_zero_and_skips_nan():
    v = np.full(EPOCHS.shape, 2.5)
    v[0], v[1] = 7.0, np.nan
    out = smooth_log(EPOCHS, v)
    assert out[0] == 7.0  # step 0 is its own window
    assert np.isnan(out[1])  # the only point in its window (1 ×/÷ 1.12) is NaN
    np.testing.assert_allclose(out[2:], 2.5)
    # A late point averages the steps within ±0.05 decades: 10^(3 ± 0.05) = 891.3 .. 1122.0 around 1000.
    assert smooth_log(EPOCHS, EPOCHS)[1000] == pytest.approx(np.mean(np.arange(892, 1123)))


def test_smooth_log_is_scale_free_and_batched():
    """The window is a ratio of steps: the same curve on steps ×10 is smoothed the same way."""
    rng = np.random.default_rng(0)
    steps = np.geomspace(1, 1000, 200)
    v = rng.normal(size=(3, 200))
    np.testing.assert_allclose(smooth_log(steps * 10, v), smooth_log(steps, v))
    np.testing.assert_allclose(smooth_log(steps, v)[1], smooth_log(steps, v[1]))


@pytest.mark.parametrize("corner", [7, 40, 150])
def test_knee_of_a_piecewise_linear_curve_is_its_corner(corner):
    x = np.arange(0, 301, dtype=np.float64)
    y = np.where(x <= corner, 10.0 - 0.2 * x, 10.0 - 0.2 * corner - 0.01 * (x - corner))  # steep, then slow
    assert knee(x, y) == corner
    assert knee(x * 3.0, y) == corner  # a rescaled axis moves the chord with it


def test_knee_without_two_regimes_is_zero():
    x = np.arange(10, dtype=np.float64)
    assert knee(x, 5.0 - x) == 0  # a straight line: nothing below its chord
    assert knee(x, -(x ** 2)) == 0  # concave: every point above the chord
    assert knee(x[:2], x[:2]) == 0


def test_first_crossing_of_an_exponential_decay():
    """exp(−t/τ) crosses e^−k at t = kτ; interpolation between evaluations 10 apart is within the curvature."""
    tau, steps = 50.0, np.arange(0, 1001, 10, dtype=np.float64)
    decay = np.exp(-steps / tau)
    runs = np.stack([decay, np.exp(-steps / (2 * tau)), np.full_like(steps, 2.0)])  # (3, evals)
    got = first_crossing(steps, runs, math.exp(-3.0))
    assert got[0] == pytest.approx(3 * tau, abs=1.0) and got[1] == pytest.approx(6 * tau, abs=1.0)
    assert got[2] == np.inf  # never below
    exact = first_crossing(steps, decay, math.exp(-200 / tau))  # the target lies on an evaluation
    assert exact.shape == (1,) and exact[0] == pytest.approx(200.0)
    # The chord of a convex curve lies above it: interpolation is never earlier than the true crossing.
    assert got[0] >= 3 * tau


def test_first_crossing_interpolates_skips_nan_and_reads_accuracies():
    steps = np.array([0, 10, 20, 30])
    losses = np.array([[3.0, 2.0, 1.0, 0.5],
                       [3.0, 3.0, 3.0, 3.0],
                       [1.0, 0.5, 0.2, 0.1],  # already there at step 0
                       [3.0, np.nan, 1.0, 0.5],  # nothing to interpolate from: the evaluation's step
                       [3.0, 1.5, 1.5, 1.0]])  # equal to the target counts as reached
    np.testing.assert_allclose(first_crossing(steps, losses, 1.5), [15.0, np.inf, 0.0, 20.0, 10.0])
    acc = np.array([[0.1, 0.5, 0.99, 1.0], [0.1, 0.2, 0.3, 0.4]])
    np.testing.assert_allclose(first_crossing(steps, acc, 0.75, below=False), [10 + 10 * 0.25 / 0.49, np.inf])
    np.testing.assert_allclose(first_crossing(steps, acc, 0.99, below=False), [20.0, np.inf])


def test_phase_boundaries_of_piecewise_linear_curves():
    """Train loss: slope −0.2 to step 30, then −0.01; test loss: a V with its minimum at step 120."""
    x = np.arange(0, 301, dtype=np.float64)
    train = np.where(x <= 30, 10.0 - 0.2 * x, 4.0 - 0.01 * (x - 30))
    test = 5.0 + 0.02 * np.abs(x - 120)
    p = phase_boundaries(x, train, test)
    assert (p.fast_end, p.overfit_onset) == (30, 120)
    assert p.fast_rate == pytest.approx(0.2) and p.slow_rate == pytest.approx(0.01)
    p2 = phase_boundaries(x * 5, train, test)  # epochs 5× longer: the same indices, rates ÷ 5
    assert (p2.fast_end, p2.overfit_onset) == (30, 120) and p2.fast_rate == pytest.approx(0.04)
    flat = phase_boundaries(x, train, 5.0 - 0.01 * x)  # the test loss never turns up: the onset is the last step
    assert flat.overfit_onset == 300 and flat.fast_end == 30
    early = phase_boundaries(x, train, 5.0 + 0.01 * x)  # minimum at step 0: no room for a knee
    assert early == (-1, 0, pytest.approx(math.nan, nan_ok=True), pytest.approx(math.nan, nan_ok=True))


def test_first_crossing_interpolates_between_evaluations_and_skips_nan():
    steps = np.array([0, 10, 20, 30])
    losses_ = np.array([[3.0, 2.0, 1.0, 0.5],
                        [3.0, 3.0, 3.0, 3.0],
                        [1.0, 0.5, 0.2, 0.1],
                        [3.0, np.nan, 1.0, 0.5],
                        [3.0, 1.5, 1.5, 1.0]])
    np.testing.assert_allclose(curves.first_crossing(steps, losses_, 1.5), [15.0, np.inf, 0.0, 20.0, 10.0])


def test_fastest_median_then_tiebreak_then_excluded():
    inf = np.inf
    steps = np.array([[10.0, 20.0, inf], [30.0, 5.0, 6.0], [inf, inf, 1.0], [inf, inf, inf]])
    assert curves.fastest(steps, np.array([0.5, 0.4, 0.3, 0.2])) == 1  # medians 20, 6, inf, inf
    assert curves.fastest(steps, np.array([0.5, inf, 0.3, 0.2])) == 0  # the fastest has a diverged seed
    assert curves.fastest(steps[2:], np.array([0.3, 0.2])) == 1  # neither arrives: the lower final loss


def test_mean_before_divergence():
    values = np.array([[1.0, 2.0, 3.0], [1.0, np.nan, 3.0], [5.0, 5.0, 5.0]])
    diverged = np.array([[0, 0, 1], [0, 0, 0], [1, 1, 1]])
    got = curves.mean_before_divergence(values, diverged)
    np.testing.assert_allclose(got[:2], [1.5, 2.0])
    assert np.isnan(got[2])
