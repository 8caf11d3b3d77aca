"""Statistics over seeds: bootstrap CIs, proportions, IQM, probability of improvement, log-log
slopes, and a JSON-safe per-seed summary (how runs differ — churn, variance shares — is in
`spread`).

Pure numpy/scipy functions; nothing here knows about training. The intervals come from
libraries: bootstrap CIs from ``scipy.stats.bootstrap`` (BCa), proportions from
``scipy.stats.binomtest(...).proportion_ci`` (Wilson score). What no library does is
hand-written elsewhere (churn and variance shares in `spread`, linear CKA in `probes`), each
tested against an independent computation. Conventions:

- Per-seed values live on the **last axis** (or form a 1-D array).
- Non-finite values (NaN, ±inf) mark diverged seeds: the CI and summary functions drop
  them and report how many were finite, so divergence is counted, never averaged in.
- All randomness comes from ``np.random.default_rng(seed)``: equal seed, equal answer.
- Results meant for disk are JSON-safe: plain ``float``/``int``, with NaN written as
  ``None`` (``json.dumps`` would otherwise emit the non-standard token ``NaN``);
  :func:`finite_or_none` is the one converter for single numbers.

References
----------
Efron & Tibshirani (1993), *An Introduction to the Bootstrap*, ch. 14 (BCa intervals).
Wilson (1927), *Probable inference, the law of succession, and statistical inference*.
Agarwal et al. (2021), *Deep RL at the Edge of the Statistical Precipice* (IQM,
probability of improvement; the ``rliable`` library, whose definitions are matched here).
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Callable, NamedTuple, Optional

import numpy as np
import scipy.stats
from numpy.typing import ArrayLike

__all__ = ["CI", "LogLogFit", "bootstrap_ci", "finite_or_none", "fraction_ci", "geometric_ci", "independent_bootstrap_ci", "iqm",
           "paired_bootstrap_ci", "paired_improvement_ci", "probability_of_improvement",
           "probability_of_improvement_ci", "proportion_ci", "slope_loglog", "summarize"]

# --------------------------------------------------------------------------- helpers


def finite_or_none(x: Any) -> Optional[float]:
    """``x`` as a plain float, or None when it is missing or not finite (NaN, ±inf)."""
    if x is None:
        return None
    value = float(x)
    return value if math.isfinite(value) else None


def _json_value(x: Any) -> Any:
    """A plain-Python, JSON-safe version of ``x``: NaN/inf -> None, arrays -> lists."""
    if isinstance(x, np.ndarray):
        return [_json_value(v) for v in x.tolist()] if x.ndim else _json_value(x.item())
    if isinstance(x, (list, tuple)):
        return [_json_value(v) for v in x]
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return finite_or_none(x)
    return x


def _finite(values: ArrayLike) -> np.ndarray:
    """1-D float64 array of the finite entries of ``values``."""
    x = np.asarray(values, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _check_confidence(confidence: float, n_resamples: int) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")


# ------------------------------------------------------------------------- bootstrap


class CI(NamedTuple):
    """A point estimate with a confidence interval ``[low, high]``.

    Fields are floats for 1-D input, arrays of the leading shape otherwise.
    """

    estimate: Any
    low: Any
    high: Any

    def text(self, digits: int = 3) -> str:
        """'estimate [low, high]' with `digits` significant digits (for reports)."""
        return f"{self.estimate:.{digits}g} [{self.low:.{digits}g}, {self.high:.{digits}g}]"

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict; NaN becomes ``None``."""
        return {k: _json_value(v) for k, v in self._asdict().items()}


_NAN_CI = CI(math.nan, math.nan, math.nan)


def _scipy_ci(samples: tuple[np.ndarray, ...], statistic: Callable[..., Any], *, paired: bool, confidence: float,
              n_resamples: int, rng: np.random.Generator) -> tuple[float, float]:
    """BCa interval from ``scipy.stats.bootstrap``; the percentile interval of the same
    resamples where BCa is undefined (a bootstrap distribution with no resample below the
    estimate, e.g. all seeds at accuracy 1 but one)."""
    kwargs = dict(statistic=statistic, vectorized=True, paired=paired, axis=-1, confidence_level=confidence)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.DegenerateDataWarning)
        with np.errstate(invalid="ignore", divide="ignore"):
            result = scipy.stats.bootstrap(samples, n_resamples=n_resamples, method="BCa", rng=rng, **kwargs)
            low, high = result.confidence_interval
            if not (np.isfinite(low) and np.isfinite(high)):
                result = scipy.stats.bootstrap(samples, n_resamples=0, method="percentile",
                                               bootstrap_result=result, rng=rng, **kwargs)
                low, high = result.confidence_interval
    return float(low), float(high)


def _bootstrap_1d(x: np.ndarray, statistic: Callable[..., Any], confidence: float, n_resamples: int,
                  rng: np.random.Generator) -> CI:
    if x.size == 0:
        return _NAN_CI
    estimate = float(statistic(x, axis=-1))
    if x.size == 1 or np.all(x == x[0]):
        return CI(estimate, estimate, estimate)  # every resample is the sample itself
    return CI(estimate, *_scipy_ci((x,), statistic, paired=False, confidence=confidence,
                                   n_resamples=n_resamples, rng=rng))


def bootstrap_ci(values: ArrayLike, *, statistic: Callable[..., Any] = np.mean, confidence: float = 0.95,
                 n_resamples: int = 10_000, seed: int | np.random.Generator = 0) -> CI:
    """BCa bootstrap CI of ``statistic`` over per-seed values (``scipy.stats.bootstrap``,
    Efron & Tibshirani 1993, ch. 14).

    ``values`` is 1-D, or N-D with seeds on the last axis (each leading index gets its own
    interval, drawn in C order from one generator). Non-finite values are dropped first.
    With ``n`` finite values: ``n == 0`` gives all NaN; ``n == 1`` or all values equal gives
    ``low == high == estimate``. ``statistic`` must accept ``axis=`` and reduce along it
    (``np.mean``, ``np.median``, :func:`iqm`, ...). Reproducible for a fixed ``seed``.
    """
    _check_confidence(confidence, n_resamples)
    rng = np.random.default_rng(seed)
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim <= 1:
        return _bootstrap_1d(_finite(arr), statistic, confidence, n_resamples, rng)
    out = np.empty(arr.shape[:-1] + (3,))
    for index in np.ndindex(*arr.shape[:-1]):
        out[index] = _bootstrap_1d(_finite(arr[index]), statistic, confidence, n_resamples, rng)
    return CI(out[..., 0], out[..., 1], out[..., 2])


def geometric_ci(values: ArrayLike, *, confidence: float = 0.95, seed: int = 0) -> CI:
    """Geometric mean over seeds of positive values (ratios, boundaries in epochs) with a BCa
    bootstrap CI: :func:`bootstrap_ci` of log10, transformed back. Non-finite and ≤ 0 values are dropped."""
    v = np.asarray(values, np.float64).ravel()
    ci = bootstrap_ci(np.log10(v[np.isfinite(v) & (v > 0)]), confidence=confidence, seed=seed)
    return CI(*(10.0 ** x if np.isfinite(x) else math.nan for x in ci))


def _mean_difference(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) - np.mean(b, axis=axis)


def paired_bootstrap_ci(a: ArrayLike, b: ArrayLike, *, statistic: Callable[..., Any] = _mean_difference,
                        confidence: float = 0.95, n_resamples: int = 10_000, seed: int | np.random.Generator = 0) -> CI:
    """BCa CI of ``statistic(a, b, axis=-1)`` for a paired design: seed ``i`` of ``a`` and
    seed ``i`` of ``b`` are resampled together (``scipy.stats.bootstrap(paired=True)``).

    The default statistic is the mean difference ``mean(a) − mean(b)``; a ratio of means,
    ``lambda a, b, axis: a.mean(axis) / b.mean(axis)``, is another. Pairs with a non-finite
    member are dropped. NaN with no pair left; a point interval with one pair or when every
    resample is the same.
    """
    _check_confidence(confidence, n_resamples)
    x, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if x.size == 0:
        return _NAN_CI
    estimate = float(statistic(x, y, axis=-1))
    if x.size == 1 or (np.all(x == x[0]) and np.all(y == y[0])):
        return CI(estimate, estimate, estimate)
    return CI(estimate, *_scipy_ci((x, y), statistic, paired=True, confidence=confidence,
                                   n_resamples=n_resamples, rng=np.random.default_rng(seed)))


def independent_bootstrap_ci(a: ArrayLike, b: ArrayLike, *, statistic: Callable[..., Any] = _mean_difference,
                             confidence: float = 0.95, n_resamples: int = 10_000,
                             seed: int | np.random.Generator = 0) -> CI:
    """BCa CI of ``statistic(a, b, axis=-1)`` for two independent samples, each resampled on its
    own (stratified; ``scipy.stats.bootstrap`` with two samples). Non-finite values are dropped
    from each; NaN if either is then empty or the statistic is not finite; a point interval when
    every resample is the same.
    """
    _check_confidence(confidence, n_resamples)
    x, y = _finite(a), _finite(b)
    if x.size == 0 or y.size == 0:
        return _NAN_CI
    with np.errstate(divide="ignore", invalid="ignore"):
        estimate = float(statistic(x, y, axis=-1))
    if not math.isfinite(estimate):
        return _NAN_CI
    if (x.size == 1 or np.all(x == x[0])) and (y.size == 1 or np.all(y == y[0])):
        return CI(estimate, estimate, estimate)
    return CI(estimate, *_scipy_ci((x, y), statistic, paired=False, confidence=confidence,
                                   n_resamples=n_resamples, rng=np.random.default_rng(seed)))


def proportion_ci(successes: int, trials: int, *, confidence: float = 0.95) -> CI:
    """A proportion ``k / n`` with its Wilson score interval (Wilson 1927), through
    ``scipy.stats.binomtest(k, n).proportion_ci(method="wilson")``.

    Unlike a bootstrap over 0/1 values, 16 of 16 gives ≈ [0.81, 1], not [1, 1]. NaN for
    ``n == 0``.
    """
    k, n = int(successes), int(trials)
    if n == 0:
        return _NAN_CI
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= successes <= trials, got {k} of {n}")
    interval = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return CI(k / n, float(interval.low), float(interval.high))


def fraction_ci(flags: ArrayLike, *, confidence: float = 0.95) -> CI:
    """:func:`proportion_ci` of the True entries of a per-seed boolean (or 0/1) array; NaN
    entries (seeds that could not be judged) are dropped."""
    x = _finite(flags)
    return proportion_ci(int(np.count_nonzero(x)), x.size, confidence=confidence)


def paired_improvement_ci(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95) -> CI:
    """The share of paired seeds on which ``a`` beats ``b``, with its Wilson interval.

    Seed ``i`` of ``a`` is compared with seed ``i`` of ``b`` (a paired design: same init, data
    order and dropout keys). Ties are dropped, as in the sign test, so 16 wins of 16 untied
    pairs give 1 [0.81, 1]. Pairs with a non-finite member are dropped; NaN when none is left.
    """
    x, y = (np.asarray(v, dtype=np.float64).ravel() for v in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"paired samples differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y) & (x != y)
    return proportion_ci(int(np.count_nonzero(x[keep] > y[keep])), int(keep.sum()), confidence=confidence)


# ----------------------------------------------------------------------- aggregates


def iqm(values: ArrayLike, axis: int | None = -1) -> Any:
    """Interquartile mean: the mean of the middle 50% of values (Agarwal et al. 2021), as
    ``rliable`` computes it: ``scipy.stats.trim_mean(values, 0.25, axis)`` (``int(0.25 n)``
    values cut from each end). NaN is not dropped here. ``axis=None`` flattens."""
    return scipy.stats.trim_mean(np.asarray(values, dtype=np.float64), 0.25, axis=axis)


def _u_over_nm(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Mann-Whitney U of x over y divided by n*m along ``axis`` (ties count 1/2)."""
    u = scipy.stats.mannwhitneyu(x, y, axis=axis, method="asymptotic", use_continuity=False).statistic
    return u / (x.shape[axis] * y.shape[axis])


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> float:
    """``P(X > Y) + 0.5 P(X = Y)`` for independent draws from the two seed samples.

    The Mann-Whitney ``U`` of ``x`` over ``y`` divided by ``n * m``, as in ``rliable``
    (Agarwal et al. 2021). Non-finite values are dropped; NaN if either sample is then empty.
    """
    a, b = _finite(x), _finite(y)
    if a.size == 0 or b.size == 0:
        return math.nan
    return float(_u_over_nm(a, b))


def probability_of_improvement_ci(x: ArrayLike, y: ArrayLike, *, confidence: float = 0.95,
                                  n_resamples: int = 10_000, seed: int | np.random.Generator = 0) -> CI:
    """:func:`probability_of_improvement` with a BCa bootstrap CI; the seeds of ``x`` and of
    ``y`` are resampled independently (stratified, as ``rliable``). When every seed of one
    sample beats every seed of the other the interval is [1, 1] (or [0, 0]): no resample can
    say otherwise.
    """
    _check_confidence(confidence, n_resamples)
    a, b = _finite(x), _finite(y)
    if a.size == 0 or b.size == 0:
        return _NAN_CI
    estimate = float(_u_over_nm(a, b))
    if estimate in (0.0, 1.0) or (a.size == 1 and b.size == 1):
        return CI(estimate, estimate, estimate)
    return CI(estimate, *_scipy_ci((a, b), _u_over_nm, paired=False, confidence=confidence,
                                   n_resamples=n_resamples, rng=np.random.default_rng(seed)))


# --------------------------------------------------------------------------- summary


def summarize(values: ArrayLike, *, confidence: float = 0.95, n_resamples: int = 10_000,
              seed: int | np.random.Generator = 0) -> dict[str, int | float | None]:
    """JSON-safe summary of per-seed final values.

    Keys: ``n`` (all seeds), ``n_finite`` (seeds that did not diverge), and over the
    finite values ``mean``, ``std`` (ddof=1), ``median``, ``iqm``, ``min``, ``max``,
    ``ci_low``/``ci_high`` (BCa bootstrap CI of the mean at ``confidence``).
    Every number is a plain Python ``int``/``float``; undefined ones (e.g. ``std`` of one
    seed, anything of zero seeds) are ``None`` so the dict survives strict JSON.
    """
    raw = np.asarray(values, dtype=np.float64).ravel()
    x = raw[np.isfinite(raw)]
    n = x.size
    ci = bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed)
    stats = {
        "n": int(raw.size),
        "n_finite": int(n),
        "mean": x.mean() if n else math.nan,
        "std": x.std(ddof=1) if n > 1 else math.nan,
        "median": np.median(x) if n else math.nan,
        "iqm": iqm(x) if n else math.nan,
        "min": x.min() if n else math.nan,
        "max": x.max() if n else math.nan,
        "ci_low": ci.low,
        "ci_high": ci.high,
    }
    return {k: _json_value(v) for k, v in stats.items()}


# ------------------------------------------------------------------- log-log slope


class LogLogFit(NamedTuple):
    """Least-squares fit ``log y = intercept + slope * log x`` (natural logs, so
    ``y ~ exp(intercept) * x**slope``) with a CI on the slope."""

    slope: float
    intercept: float
    slope_low: float
    slope_high: float
    r_squared: float
    n: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict; NaN becomes ``None``."""
        return {k: _json_value(v) for k, v in self._asdict().items()}


def slope_loglog(x: ArrayLike, y: ArrayLike, *, confidence: float = 0.95) -> LogLogFit:
    """Slope of ``log y`` against ``log x`` by ordinary least squares, with a
    ``confidence`` CI ``slope ± t_{n-2} * stderr`` (``scipy.stats.linregress``).

    Use to test power laws such as gradient variance ∝ 1/B (slope -1). Pairs with a
    non-finite value are dropped; non-positive values raise ``ValueError``. Needs two
    distinct ``x``; with exactly two points the CI is NaN (no degrees of freedom).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    a = np.asarray(x, dtype=np.float64).ravel()
    b = np.asarray(y, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"x and y differ in length: {a.size} vs {b.size}")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("slope_loglog needs positive x and y")
    if a.size < 2 or np.ptp(a) == 0:
        raise ValueError("slope_loglog needs at least two distinct x values")
    fit = scipy.stats.linregress(np.log(a), np.log(b))
    df = a.size - 2
    if df > 0:
        half = scipy.stats.t.ppf(0.5 + confidence / 2.0, df) * fit.stderr
        low, high = fit.slope - half, fit.slope + half
    else:
        low = high = math.nan
    return LogLogFit(
        slope=float(fit.slope),
        intercept=float(fit.intercept),
        slope_low=float(low),
        slope_high=float(high),
        r_squared=float(fit.rvalue**2),
        n=int(a.size),
    )
