"""Tests for netalchemy.stats and netalchemy.spread: each function against scipy or a
hand-computed answer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from netalchemy import probes, spread, stats

FAST = settings(max_examples=40, deadline=None)
finite_floats = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)


# ------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_covers_true_mean_with_normal_width():
    rng = np.random.default_rng(123)
    sigma, n = 2.0, 400
    x = rng.normal(5.0, sigma, size=n)
    ci = stats.bootstrap_ci(x, n_resamples=2000, seed=1)
    assert ci.low < 5.0 < ci.high
    assert ci.low < ci.estimate < ci.high
    assert ci.estimate == pytest.approx(x.mean())
    expected_width = 2 * 1.96 * sigma / math.sqrt(n)
    assert ci.high - ci.low == pytest.approx(expected_width, rel=0.15)


def test_bootstrap_ci_is_reproducible_per_seed():
    x = np.random.default_rng(0).normal(size=30)
    a = stats.bootstrap_ci(x, seed=7, n_resamples=2000)
    b = stats.bootstrap_ci(x, seed=7, n_resamples=2000)
    c = stats.bootstrap_ci(x, seed=8, n_resamples=2000)
    assert a == b
    assert (a.low, a.high) != (c.low, c.high)
    assert a.estimate == c.estimate


def _bca_by_hand(x: np.ndarray, boot: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Efron & Tibshirani (1993) eq. 14.9-14.15: bias z0 from the bootstrap distribution,
    acceleration a from the jackknife, then adjusted percentiles."""
    theta = x.mean()
    z0 = scipy.stats.norm.ppf(np.mean(boot < theta))
    jack = np.array([np.delete(x, i).mean() for i in range(x.size)])
    d = jack.mean() - jack
    a = np.sum(d**3) / (6.0 * np.sum(d**2) ** 1.5)
    z = scipy.stats.norm.ppf([(1 - confidence) / 2, (1 + confidence) / 2])
    alphas = scipy.stats.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z)))
    return tuple(np.percentile(boot, 100 * alphas))


def test_bootstrap_ci_is_bca_on_scipy_resamples():
    # Skewed data: BCa moves the interval right of the percentile one; an independent BCa
    # computed from scipy's own resamples (same seed) gives the same ends.
    x = np.random.default_rng(4).exponential(size=25)
    ci = stats.bootstrap_ci(x, n_resamples=3000, seed=5)
    ref = scipy.stats.bootstrap((x,), np.mean, n_resamples=3000, method="BCa", rng=np.random.default_rng(5))
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    assert (ci.low, ci.high) == pytest.approx(_bca_by_hand(x, ref.bootstrap_distribution), rel=1e-6)
    percentile = np.percentile(ref.bootstrap_distribution, [2.5, 97.5])
    assert ci.low > percentile[0] and ci.high > percentile[1]


def test_bootstrap_ci_falls_back_to_percentile_where_bca_is_undefined():
    # Every leave-one-out median is 1, so BCa's jackknife acceleration is 0/0 and scipy's
    # BCa interval is NaN; the percentile interval of the same resamples is used instead.
    x = np.array([0.0] + [1.0] * 10 + [2.0], dtype=np.float64)
    x[-1] += np.random.default_rng(0).uniform()  # not all equal, the shortcut does not apply
    ci = stats.bootstrap_ci(x, statistic=np.median, n_resamples=2000, seed=0)
    ref = scipy.stats.bootstrap((x,), np.median, n_resamples=2000, method="percentile", rng=np.random.default_rng(0))
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    assert ci == (1.0, 1.0, 1.0)


def test_paired_bootstrap_resamples_pairs_together():
    rng = np.random.default_rng(2)
    base = rng.normal(0.0, 5.0, size=20)  # large between-seed spread, shared by both arms
    a, b = base + 0.3 + rng.normal(0, 0.05, 20), base
    paired = stats.paired_bootstrap_ci(a, b, n_resamples=2000, seed=0)
    ref = scipy.stats.bootstrap((a, b), lambda u, v, axis: u.mean(axis) - v.mean(axis), paired=True,
                                n_resamples=2000, method="BCa", rng=np.random.default_rng(0))
    assert (paired.low, paired.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    assert paired.estimate == pytest.approx(0.3, abs=0.05) and paired.low > 0.2 and paired.high < 0.4
    unpaired = stats.bootstrap_ci(a, n_resamples=2000).high - stats.bootstrap_ci(b, n_resamples=2000).low
    assert unpaired > 2  # ignoring the pairing would drown the shift in the seed spread
    ratio = stats.paired_bootstrap_ci([2.0, 4.0, np.nan], [1.0, 2.0, 3.0],
                                      statistic=lambda u, v, axis: u.mean(axis) / v.mean(axis))
    assert ratio == (2.0, 2.0, 2.0)  # the NaN pair dropped; both resamples give ratio 2
    assert all(math.isnan(v) for v in stats.paired_bootstrap_ci([np.nan], [1.0]))
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_bootstrap_ci([1.0, 2.0], [1.0])


# ------------------------------------------------------------------------- proportions


def _wilson(k: int, n: int, z: float = scipy.stats.norm.ppf(0.975)) -> tuple[float, float]:
    """Wilson (1927) score interval, written out."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize("k, n", [(16, 16), (0, 16), (3, 10), (50, 100), (1, 1)])
def test_proportion_ci_is_wilson(k, n):
    ci = stats.proportion_ci(k, n)
    assert ci.estimate == k / n
    assert (ci.low, ci.high) == pytest.approx(_wilson(k, n), abs=1e-12)


def test_proportion_ci_sixteen_of_sixteen_is_not_degenerate():
    ci = stats.proportion_ci(16, 16)
    assert ci.high == 1.0 and ci.low == pytest.approx(0.806, abs=1e-3)
    flags = np.array([1.0] * 16 + [np.nan])
    assert stats.fraction_ci(flags) == ci  # the NaN seed is not counted
    assert stats.fraction_ci(np.array([True, False, True, True])) == stats.proportion_ci(3, 4)
    assert all(math.isnan(v) for v in stats.proportion_ci(0, 0))
    with pytest.raises(ValueError, match="successes"):
        stats.proportion_ci(5, 4)


def test_finite_or_none():
    assert stats.finite_or_none(np.float32(0.5)) == 0.5 and type(stats.finite_or_none(np.float32(0.5))) is float
    assert [stats.finite_or_none(v) for v in (None, math.nan, math.inf, -math.inf)] == [None] * 4


def test_bootstrap_ci_ignores_nonfinite():
    x = np.array([1.0, 2.0, np.nan, 3.0, np.inf, 4.0])
    with_nan = stats.bootstrap_ci(x, n_resamples=500, seed=0)
    clean = stats.bootstrap_ci([1.0, 2.0, 3.0, 4.0], n_resamples=500, seed=0)
    assert with_nan == clean
    assert with_nan.estimate == 2.5


def test_geometric_ci_is_the_log_scale_bootstrap_transformed_back():
    ci = stats.geometric_ci(np.array([10.0, 100.0, np.nan, 0.0, -1.0, np.inf]))
    assert ci.estimate == pytest.approx(math.sqrt(1000.0))  # only 10 and 100 count
    x = np.array([2.0, 5.0, 9.0, 40.0, 3.0])
    logs = stats.bootstrap_ci(np.log10(x))
    np.testing.assert_allclose(stats.geometric_ci(x), [10.0 ** v for v in logs])
    assert stats.geometric_ci(x * 7).estimate == pytest.approx(7 * stats.geometric_ci(x).estimate)
    assert all(math.isnan(v) for v in stats.geometric_ci([0.0, np.nan]))


def test_bootstrap_ci_degenerate_sizes():
    one = stats.bootstrap_ci([3.5, np.nan])
    assert one == (3.5, 3.5, 3.5)
    empty = stats.bootstrap_ci([np.nan, np.nan])
    assert all(math.isnan(v) for v in empty)
    assert stats.bootstrap_ci([]).as_dict() == {"estimate": None, "low": None, "high": None}


def test_bootstrap_ci_custom_statistic_and_batched_rows():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 41))
    x[1, :5] = np.nan
    batched = stats.bootstrap_ci(x, statistic=np.median, n_resamples=500, seed=0)
    assert batched.estimate.shape == (3,)
    np.testing.assert_allclose(batched.estimate[0], np.median(x[0]))
    np.testing.assert_allclose(batched.estimate[1], np.median(x[1, 5:]))
    assert np.all(batched.low <= batched.estimate) and np.all(batched.estimate <= batched.high)
    d = batched.as_dict()
    assert len(d["low"]) == 3 and json.loads(json.dumps(d)) == d
    iqm_ci = stats.bootstrap_ci(x[0], statistic=stats.iqm, n_resamples=500)
    assert iqm_ci.estimate == pytest.approx(scipy.stats.trim_mean(x[0], 0.25))


def test_bootstrap_ci_rejects_bad_confidence():
    with pytest.raises(ValueError):
        stats.bootstrap_ci([1.0, 2.0], confidence=1.5)


# ------------------------------------------------------------------------------ iqm


@FAST
@given(hnp.arrays(np.float64, st.integers(1, 40), elements=finite_floats))
def test_iqm_matches_scipy_trim_mean(x):
    assert stats.iqm(x) == pytest.approx(scipy.stats.trim_mean(x, 0.25), rel=1e-9, abs=1e-9)


def test_iqm_hand_computed_and_axis():
    # n=8: cut 2 from each end -> mean of 3, 4, 5, 6.
    assert stats.iqm([8, 1, 7, 2, 6, 3, 5, 4]) == 4.5
    grid = np.random.default_rng(0).normal(size=(4, 9))
    np.testing.assert_allclose(stats.iqm(grid, axis=0), scipy.stats.trim_mean(grid, 0.25, axis=0))
    np.testing.assert_allclose(
        stats.iqm(grid, axis=None), scipy.stats.trim_mean(grid, 0.25, axis=None)
    )


# ----------------------------------------------------------- probability of improvement


def test_probability_of_improvement_hand_computed():
    # pairs (x, y): (1,0) win, (1,2) loss, (2,0) win, (2,2) tie.
    assert stats.probability_of_improvement([1, 2], [0, 2]) == pytest.approx((1 + 0 + 1 + 0.5) / 4)
    assert stats.probability_of_improvement([5, 6], [1, 2, 3]) == 1.0
    assert stats.probability_of_improvement([1, 2], [5]) == 0.0
    assert stats.probability_of_improvement([1, 1], [1, 1]) == 0.5
    assert math.isnan(stats.probability_of_improvement([np.nan], [1.0]))


@FAST
@given(
    hnp.arrays(np.float64, st.integers(1, 15), elements=st.integers(-3, 3).map(float)),
    hnp.arrays(np.float64, st.integers(1, 15), elements=st.integers(-3, 3).map(float)),
)
def test_probability_of_improvement_matches_mannwhitneyu(x, y):
    expected = scipy.stats.mannwhitneyu(x, y).statistic / (x.size * y.size)
    brute = np.mean((x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :]))
    got = stats.probability_of_improvement(x, y)
    assert got == pytest.approx(expected, abs=1e-12)
    assert got == pytest.approx(brute, abs=1e-12)
    assert stats.probability_of_improvement(y, x) == pytest.approx(1 - got, abs=1e-12)


def test_probability_of_improvement_ci():
    rng = np.random.default_rng(0)
    x, y = rng.normal(1.0, 1.0, size=40), rng.normal(0.0, 1.0, size=30)
    ci = stats.probability_of_improvement_ci(x, y, n_resamples=2000, seed=0)
    assert ci.estimate == stats.probability_of_improvement(x, y)
    assert 0.0 <= ci.low <= ci.estimate <= ci.high <= 1.0
    assert ci.low > 0.5  # a one-sigma shift is clearly detected with 30-40 seeds
    assert ci == stats.probability_of_improvement_ci(x, y, n_resamples=2000, seed=0)
    u = lambda a, b, axis: scipy.stats.mannwhitneyu(a, b, axis=axis).statistic / (a.shape[axis] * b.shape[axis])
    ref = scipy.stats.bootstrap((x, y), u, n_resamples=2000, method="BCa", rng=np.random.default_rng(0))
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-9)
    assert ci != stats.probability_of_improvement_ci(x, y, n_resamples=2000, seed=1)
    # True P(X > Y) for N(1,1) vs N(0,1) is Phi(1/sqrt(2)).
    assert ci.low < scipy.stats.norm.cdf(1 / math.sqrt(2)) < ci.high
    # Complete separation: no resample can disagree, so the interval is the point.
    assert stats.probability_of_improvement_ci([5.0, 6.0], [1.0, 2.0]) == (1.0, 1.0, 1.0)


# ----------------------------------------------------------------------------- churn (spread)


def test_measures_of_disagreement_live_in_spread_only():
    for name in ("churn", "mean_pairwise_churn", "variance_decomposition", "grid_variance_shares"):
        assert hasattr(spread, name) and not hasattr(stats, name)


def test_churn_hand_made():
    preds = np.array(
        [
            [0, 1, 2, 3],
            [0, 1, 2, 0],  # differs from seed 0 at one example
            [1, 0, 2, 0],  # differs from seed 0 at 3, from seed 1 at 2
        ]
    )
    expected = np.array([[0, 0.25, 0.75], [0.25, 0, 0.5], [0.75, 0.5, 0]])
    np.testing.assert_allclose(spread.churn(preds), expected)
    assert spread.mean_pairwise_churn(preds) == pytest.approx(0.5)
    assert math.isnan(spread.mean_pairwise_churn(preds[:1]))


def test_churn_blocked_matches_bruteforce(monkeypatch):
    preds = np.random.default_rng(0).integers(0, 10, size=(37, 300))
    brute = np.array([[np.mean(a != b) for b in preds] for a in preds])
    monkeypatch.setattr(spread, "_CHUNK_ELEMENTS", 5000)  # forces single-row blocks
    np.testing.assert_allclose(spread.churn(preds), brute)


def test_churn_large_is_fast_and_sane():
    preds = np.random.default_rng(0).integers(0, 10, size=(256, 10_000), dtype=np.int8)
    matrix = spread.churn(preds)
    assert matrix.shape == (256, 256)
    np.testing.assert_array_equal(np.diag(matrix), 0.0)
    np.testing.assert_allclose(matrix, matrix.T)
    assert spread.mean_pairwise_churn(preds) == pytest.approx(0.9, abs=0.01)


# ------------------------------------------------------------- variance decomposition


def test_variance_decomposition_one_factor_explains_everything():
    lr = np.repeat([1e-3, 1e-2, 1e-1], 5)
    seed = np.tile(np.arange(5), 3)
    accuracy = np.repeat([0.8, 0.9, 0.7], 5)  # only lr matters
    shares = spread.variance_decomposition(accuracy, {"lr": lr, "seed": seed})
    assert shares["lr"] == pytest.approx(1.0)
    assert shares["seed"] == pytest.approx(0.0, abs=1e-12)
    assert shares["residual"] == pytest.approx(0.0, abs=1e-12)
    grid = accuracy.reshape(3, 5)
    g = spread.grid_variance_shares(grid, names=("lr", "seed"))
    assert g == pytest.approx({"lr": 1.0, "seed": 0.0, "interaction_residual": 0.0}, abs=1e-12)


def test_variance_decomposition_additive_grid_hand_computed():
    # y = a_i + b_j with a = (-1, 1), b = (-2, 0, 2): Var = Var(a) + Var(b) = 1 + 8/3.
    grid = np.array([-1.0, 1.0])[:, None] + np.array([-2.0, 0.0, 2.0])[None, :]
    shares = spread.grid_variance_shares(grid)
    total = 1 + 8 / 3
    assert shares["a"] == pytest.approx(1 / total)
    assert shares["b"] == pytest.approx((8 / 3) / total)
    assert shares["interaction_residual"] == pytest.approx(0.0, abs=1e-12)


@FAST
@given(
    hnp.arrays(np.float64, st.tuples(st.integers(2, 6), st.integers(2, 6)), elements=finite_floats)
)
def test_balanced_grid_shares_sum_to_one(grid):
    shares = spread.grid_variance_shares(grid)
    if np.ptp(grid) == 0 or grid.var() < 1e-9:
        return
    assert sum(shares.values()) == pytest.approx(1.0)
    assert all(v >= -1e-9 for v in shares.values())
    # Matches the two-way ANOVA sums of squares computed independently.
    a_means, b_means, mean = grid.mean(1), grid.mean(0), grid.mean()
    ss_total = ((grid - mean) ** 2).sum()
    interaction = grid - a_means[:, None] - b_means[None, :] + mean
    expected_residual = (interaction**2).sum() / ss_total
    assert shares["interaction_residual"] == pytest.approx(expected_residual, abs=1e-9)
    rows, cols = np.indices(grid.shape)
    flat = spread.variance_decomposition(grid.ravel(), {"a": rows.ravel(), "b": cols.ravel()})
    assert flat["a"] == pytest.approx(shares["a"]) and flat["b"] == pytest.approx(shares["b"])


def test_variance_decomposition_string_labels_nan_and_errors():
    values = [1.0, 3.0, np.nan, 5.0, 7.0]
    labels = ["x", "x", "y", "y", "y"]
    # Finite: x -> {1, 3}, y -> {5, 7}; grand mean 4, SS_total 20, SS_between 4*(1+1)=16.
    shares = spread.variance_decomposition(values, {"opt": labels})
    assert shares["opt"] == pytest.approx(0.8)
    assert shares["residual"] == pytest.approx(0.2)
    constant = spread.variance_decomposition([2.0, 2.0], {"f": [0, 1]})
    assert math.isnan(constant["f"]) and math.isnan(constant["residual"])
    with pytest.raises(ValueError):
        spread.variance_decomposition([1.0, 2.0], {"f": [0]})
    with pytest.raises(ValueError):
        spread.variance_decomposition([1.0, 2.0], {"residual": [0, 1]})


# ------------------------------------------------------------------------ linear CKA


def _cka_via_hsic(x: np.ndarray, y: np.ndarray) -> float:
    """Independent reference: Gram matrices and HSIC(K, L) = tr(KHLH) / (n - 1)^2."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l = x @ x.T, y @ y.T  # noqa: E741

    def hsic(a, b):
        return np.trace(a @ h @ b @ h) / (n - 1) ** 2

    return hsic(k, l) / math.sqrt(hsic(k, k) * hsic(l, l))


def _random_orthogonal(rng, p):
    q, r = np.linalg.qr(rng.normal(size=(p, p)))
    return q * np.sign(np.diag(r))


@pytest.mark.parametrize("n,p1,p2", [(50, 5, 8), (10, 30, 4), (12, 3, 40), (40, 1, 1)])
def test_linear_cka_matches_hsic_formula(n, p1, p2):
    rng = np.random.default_rng(n + p1 + p2)
    x = rng.normal(size=(n, p1))
    y = x[:, :1] @ rng.normal(size=(1, p2)) + rng.normal(size=(n, p2))
    got = probes.linear_cka(x, y)
    assert 0.0 <= got <= 1.0
    assert got == pytest.approx(_cka_via_hsic(x, y), rel=1e-9)


@FAST
@given(st.integers(0, 10_000), st.integers(3, 30), st.integers(1, 10), st.integers(1, 10),
       st.floats(0.01, 100.0))
def test_linear_cka_invariances(seed, n, p1, p2, scale):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, p1)) + 3.0
    y = rng.normal(size=(n, p2))
    base = probes.linear_cka(x, y)
    assert probes.linear_cka(x, x) == pytest.approx(1.0)
    assert 0.0 <= base <= 1.0
    assert base == pytest.approx(probes.linear_cka(y, x), abs=1e-9)
    assert probes.linear_cka(x @ _random_orthogonal(rng, p1), y) == pytest.approx(base, abs=1e-9)
    rotated_scaled = scale * y @ _random_orthogonal(rng, p2)
    assert probes.linear_cka(x, rotated_scaled) == pytest.approx(base, abs=1e-9)
    assert probes.linear_cka(x + 7.0, y - 2.0) == pytest.approx(base, abs=1e-9)


def test_linear_cka_not_invariant_to_general_linear_maps():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    a = np.diag([1.0, 1.0, 1.0, 20.0]) @ np.triu(np.ones((4, 4)))  # invertible, not orthogonal
    assert abs(np.linalg.det(a)) > 0
    cka = probes.linear_cka(x, x @ a)
    assert cka < 0.9
    assert cka == pytest.approx(_cka_via_hsic(x, x @ a))


def test_linear_cka_degenerate_and_shapes():
    x = np.random.default_rng(0).normal(size=(10, 3))
    assert math.isnan(probes.linear_cka(np.ones((10, 4)), x))
    assert probes.linear_cka(x[:, 0], 2 * x[:, 0] + 1) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        probes.linear_cka(x, x[:5])


# --------------------------------------------------------------------------- summary


def test_summarize_values_and_json_safety():
    values = [0.9, 0.8, np.nan, 0.85, 0.95, np.inf]
    s = stats.summarize(values, n_resamples=1000)
    finite = np.array([0.9, 0.8, 0.85, 0.95])
    assert s["n"] == 6 and s["n_finite"] == 4
    assert s["mean"] == pytest.approx(finite.mean())
    assert s["std"] == pytest.approx(finite.std(ddof=1))
    assert s["median"] == pytest.approx(np.median(finite))
    assert s["iqm"] == pytest.approx(scipy.stats.trim_mean(finite, 0.25))
    assert (s["min"], s["max"]) == (0.8, 0.95)
    assert s["ci_low"] <= s["mean"] <= s["ci_high"]
    assert all(type(v) in (int, float) for v in s.values())
    assert json.loads(json.dumps(s, allow_nan=False)) == s


def test_summarize_degenerate():
    one = stats.summarize([0.5])
    assert one["std"] is None and one["ci_low"] == one["ci_high"] == 0.5
    none = stats.summarize([np.nan, np.nan])
    assert none["n"] == 2 and none["n_finite"] == 0
    assert all(none[k] is None for k in ("mean", "std", "median", "iqm", "min", "max", "ci_low"))
    json.dumps(none, allow_nan=False)


# --------------------------------------------------------------------- log-log slope


def test_slope_loglog_exact_inverse_law():
    batch = np.array([8, 16, 32, 64, 128, 256], dtype=float)
    fit = stats.slope_loglog(batch, 3.0 / batch)
    assert fit.slope == pytest.approx(-1.0, abs=1e-12)
    assert math.exp(fit.intercept) == pytest.approx(3.0)
    assert fit.slope_low == pytest.approx(-1.0, abs=1e-9)
    assert fit.slope_high == pytest.approx(-1.0, abs=1e-9)
    assert fit.r_squared == pytest.approx(1.0)
    assert fit.n == 6
    json.dumps(fit.as_dict(), allow_nan=False)


def test_slope_loglog_noisy_ci_matches_linregress():
    rng = np.random.default_rng(0)
    x = np.geomspace(1, 1000, 20)
    y = 2.0 * x**-0.5 * np.exp(rng.normal(0, 0.1, size=x.size))
    fit = stats.slope_loglog(x, y)
    ref = scipy.stats.linregress(np.log(x), np.log(y))
    half = scipy.stats.t.ppf(0.975, x.size - 2) * ref.stderr
    assert fit.slope == pytest.approx(ref.slope)
    assert (fit.slope_low, fit.slope_high) == pytest.approx((ref.slope - half, ref.slope + half))
    assert fit.slope_low < -0.5 < fit.slope_high


def test_slope_loglog_edge_cases():
    two = stats.slope_loglog([1, 10], [1, 0.1])
    assert two.slope == pytest.approx(-1.0) and math.isnan(two.slope_low)
    assert two.as_dict()["slope_low"] is None
    dropped = stats.slope_loglog([1, 2, np.nan, 4], [1, 0.5, 7.0, 0.25])
    assert dropped.n == 3 and dropped.slope == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        stats.slope_loglog([1, 2, 3], [1, 0, 2])
    with pytest.raises(ValueError):
        stats.slope_loglog([2, 2], [1, 3])


def test_independent_bootstrap_resamples_each_sample_apart():
    rng = np.random.default_rng(3)
    a, b = rng.normal(2.0, 0.3, 30), rng.normal(1.0, 0.3, 20)
    ratio = lambda u, v, axis: u.mean(axis) / v.mean(axis)  # noqa: E731
    ci = stats.independent_bootstrap_ci(a, np.append(b, np.nan), statistic=ratio, n_resamples=2000, seed=1)
    ref = scipy.stats.bootstrap((a, b), ratio, n_resamples=2000, method="BCa", rng=np.random.default_rng(1))
    assert ci.estimate == pytest.approx(a.mean() / b.mean())
    assert (ci.low, ci.high) == pytest.approx(tuple(ref.confidence_interval), rel=1e-12)
    assert ci.low < 2.0 < ci.high
    assert stats.independent_bootstrap_ci([1.0, 1.0], [2.0, 2.0]) == (-1.0, -1.0, -1.0)
    assert all(math.isnan(v) for v in stats.independent_bootstrap_ci([1.0], [0.0, 0.0], statistic=ratio))


def test_paired_improvement_is_a_sign_test_proportion():
    rng = np.random.default_rng(0)
    base = rng.normal(size=16)
    assert stats.paired_improvement_ci(base + 0.1, base) == stats.proportion_ci(16, 16)
    a = np.array([1.0, 2.0, 3.0, 4.0, np.nan, 5.0])
    b = np.array([0.0, 2.0, 4.0, 1.0, 0.0, 6.0])  # wins, tie (dropped), loss, win, NaN (dropped), loss
    ci = stats.paired_improvement_ci(a, b)
    assert ci == stats.proportion_ci(2, 4) and ci.estimate == 0.5
    # Independent check: the sign test's exact p for 16/16 is 2·0.5^16; Wilson's low end is ≈ 0.806.
    assert scipy.stats.binomtest(16, 16).pvalue == pytest.approx(2 * 0.5**16)
    with pytest.raises(ValueError, match="differ in length"):
        stats.paired_improvement_ci([1.0], [1.0, 2.0])
