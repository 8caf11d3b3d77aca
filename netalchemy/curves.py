"""Training-curve analysis shared by the experiments: smoothing on a log-step axis, knees, crossings.

A curve is sampled at evaluation points `steps` (evals,) increasing, in any unit (steps, epochs);
several runs' curves are `values` (runs, evals). Everything here is NumPy on finished histories.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Phases", "fastest", "first_crossing", "knee", "mean_before_divergence", "phase_boundaries", "smooth_log"]


def smooth_log(steps: ArrayLike, values: ArrayLike, decades: float = 0.05) -> np.ndarray:
    """Moving average of `values` (..., evals) over ±`decades` of log10(step).

    The window is a fixed ratio of steps (±0.05 decades = ×/÷ 1.12), so early, densely changing
    points are averaged over few evaluations and late ones over many. A step ≤ 0 is its own
    window; non-finite values are left out; a window without finite values gives NaN.
    """
    s = np.asarray(steps, np.float64)
    log_s = np.where(s > 0, np.log10(np.maximum(s, np.finfo(np.float64).tiny)), -np.inf)
    starts = np.searchsorted(log_s, log_s - decades)
    ends = np.searchsorted(log_s, log_s + decades, side="right")
    v = np.ma.masked_invalid(np.asarray(values, np.float64))
    windows = [v[..., a:b].mean(axis=-1) for a, b in zip(starts, ends)]
    return np.ma.stack(windows, axis=-1).filled(np.nan)


def knee(x: ArrayLike, y: ArrayLike) -> int:
    """Index of the point of the 1-D curve y(x) farthest below its chord from the first point to the last.

    For a falling convex curve this is where fast descent gives way to slow descent (the
    "kneedle" idea of Satopää et al. 2011, on the raw axes). Returns 0 when there are fewer than
    three points, or when no point lies below the chord (no room for two regimes).
    """
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 3 or x[-1] == x[0]:
        return 0
    chord = y[0] + (y[-1] - y[0]) * (x - x[0]) / (x[-1] - x[0])  # (evals,)
    gap = chord - y  # how far below the chord; a NaN point never counts
    return int(np.nanargmax(gap)) if np.any(gap > 0) else 0


class Phases(NamedTuple):
    """Where one run's training phases change, as indices into its `steps`, and its train-loss rates."""

    fast_end: int  # the knee of the train loss before the onset; -1 where there is no room for one
    overfit_onset: int  # the minimum of the test loss
    fast_rate: float  # train-loss fall per step from the first evaluation to the knee (NaN without a knee)
    slow_rate: float  # train-loss fall per step from the knee to the onset (NaN without a knee)


def phase_boundaries(steps: ArrayLike, train_loss: ArrayLike, test_loss: ArrayLike) -> Phases:
    """Fast learning → fine tuning → overfitting boundaries of 1-D curves (smooth them first, e.g. `smooth_log`).

    The overfitting onset is the test-loss minimum; fast learning ends at the `knee` of the train loss
    between the first evaluation and the onset (on the linear step axis, so every boundary scales with
    the steps: their ratios do not depend on how long an epoch is).
    """
    s, train = np.asarray(steps, np.float64), np.asarray(train_loss, np.float64)
    onset = int(np.nanargmin(test_loss))
    end = knee(s[: onset + 1], train[: onset + 1])
    if not 0 < end < onset:
        return Phases(-1, onset, math.nan, math.nan)
    rate = lambda a, b: float((train[a] - train[b]) / (s[b] - s[a]))  # noqa: E731
    return Phases(end, onset, rate(0, end), rate(end, onset))


def first_crossing(steps: ArrayLike, values: ArrayLike, target: float, *, below: bool = True) -> np.ndarray:
    """First step at which each run's curve reaches `target`, linearly interpolated between evaluations.

    Args:
      steps: (evals,) increasing evaluation points.
      values: (runs, evals), or (evals,) for one run; NaN counts as not reached.
      target: the level to reach.
      below: reached means value ≤ target (a loss); False: value ≥ target (an accuracy).

    Returns:
      (runs,) float: the step where the straight line between the last evaluation short of the
      target and the first one at it meets the target (that evaluation's step when the one
      before is NaN, or when the very first evaluation already reaches it); +inf if never.
    """
    sign = 1.0 if below else -1.0  # "above" is "below" for the negated curve
    s = np.asarray(steps, np.float64)
    v = sign * np.atleast_2d(np.asarray(values, np.float64))  # (runs, evals)
    level = sign * target
    reached = np.isfinite(v) & (v <= level)
    k = reached.argmax(axis=1)  # first evaluation at the target (0 where never)
    j, rows = np.maximum(k - 1, 0), np.arange(len(k))
    before, at = v[rows, j], v[rows, k]
    with np.errstate(all="ignore"):
        t = s[j] + (before - level) / (before - at) * (s[k] - s[j])
    t = np.where((k > 0) & np.isfinite(before) & (before > at), t, s[k])
    return np.where(reached.any(axis=1), t, np.inf)


def fastest(steps: np.ndarray, tiebreak: np.ndarray) -> int:
    """Index of the setting (row of `steps`, (settings, seeds), +inf = never arrived) with the fewest median
    steps, ties (e.g. most seeds never arrived) broken by the lower `tiebreak` (settings,); a setting whose
    `tiebreak` is not finite (e.g. a diverged seed) ranks after every other."""
    median = np.quantile(np.asarray(steps, np.float64), 0.5, axis=1, method="inverted_cdf")  # no inf − inf
    ok = np.isfinite(tiebreak)
    return int(np.lexsort((np.where(ok, tiebreak, np.inf), np.where(ok, median, np.inf)))[0])


def mean_before_divergence(values: np.ndarray, diverged: np.ndarray) -> np.ndarray:
    """(runs,) each run's finite `values` (runs, evaluations) averaged over the evaluations before `diverged`
    (runs, evaluations; nonzero once a run diverged); NaN for a run with none."""
    keep = ~np.asarray(diverged).astype(bool) & np.isfinite(values)
    with np.errstate(all="ignore"):
        return np.where(keep, values, 0.0).sum(axis=1) / keep.sum(axis=1)
