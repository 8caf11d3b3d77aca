"""How runs of one question differ: pairwise churn of their predictions (with seed-bootstrap CIs
of its mean and of ratios of it), ratios of spreads, what the runs are worth as an ensemble,
the share of a metric's variance that each factor of a design (lr, seed, ...) explains, and
twins of a run (one float ulp apart at init: a perturb hook), measured against it by a small
exact-sum sketch of their parameters (a measure hook) for distances between runs.

Numpy (the hooks in JAX, run inside `sweep.run`'s compiled program), hand-written because no
library computes them; tested in tests/test_stats.py and tests/test_spread.py against brute-force and
hand-computed answers. Non-finite values mark diverged runs and are dropped, as in `stats`.
Bootstrap intervals here are percentile intervals by hand (not `scipy.stats.bootstrap`): a
resample may have no pair of distinct seeds, or no spread, and is then dropped or gives a
legitimate infinite end, which BCa cannot handle.

References
----------
Fort, Hu & Lakshminarayanan (2019), *Deep Ensembles: A Loss Landscape Perspective* (prediction
disagreement between seeds); Bhojanapalli et al. (2021), *On the Reproducibility and Stability
of Deep Learning* (churn); Lakshminarayanan, Pritzel & Blundell (2017), *Simple and Scalable
Predictive Uncertainty Estimation using Deep Ensembles* (mean-softmax ensembles); Charikar, Chen
& Farach-Colton (2002), *Finding frequent items in data streams* (CountSketch), Johnson &
Lindenstrauss (1984) (norms kept by random projections); Dekker (1971) and Knuth, TAOCP vol. 2
§4.2.2 (error-free two-sum, double-float addition). Variance shares are eta-squared of a main
effect, the two-way ANOVA without replication for a full grid (Montgomery, *Design and Analysis
of Experiments*).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpy.typing import ArrayLike

from netalchemy import mlp, train
from netalchemy.config import Config
from netalchemy.stats import CI

__all__ = ["EnsembleCurve", "Snapshot", "UlpFrom", "churn", "churn_ratio_ci", "drift", "ensemble_curve",
           "grid_variance_shares", "majority_vote", "mean_pairwise_churn", "mean_softmax_vote", "pair_errors",
           "pairwise_mean_ci", "perturb_one_ulp", "sketch", "sketch_distance", "std_ratio_ci", "variance_decomposition"]

# Upper bound on the number of elements in one block of churn comparisons (~32 MiB).
_CHUNK_ELEMENTS = 1 << 22


def churn(predictions: ArrayLike) -> np.ndarray:
    """Pairwise disagreement matrix: ``out[i, j]`` is the fraction of examples on which
    seeds ``i`` and ``j`` predict different classes.

    ``predictions`` is an integer array ``(seeds, examples)`` of predicted labels. Rows are
    processed in blocks of at most ~4M comparisons, so 256 seeds x 10k examples is cheap.
    """
    p = np.asarray(predictions)
    if p.ndim != 2:
        raise ValueError(f"predictions must be (seeds, examples), got shape {p.shape}")
    s, e = p.shape
    out = np.empty((s, s))
    if e == 0:
        out.fill(math.nan)
        return out
    block = max(1, _CHUNK_ELEMENTS // max(s * e, 1))
    for start in range(0, s, block):
        rows = p[start : start + block]
        out[start : start + block] = (rows[:, None, :] != p[None, :, :]).mean(axis=-1)
    return out


def mean_pairwise_churn(predictions: ArrayLike) -> float:
    """Mean of :func:`churn` over unordered pairs of distinct seeds ``i < j``; NaN for
    fewer than two seeds."""
    matrix = churn(predictions)
    i, j = np.triu_indices(matrix.shape[0], k=1)
    return float(matrix[i, j].mean()) if i.size else math.nan


# ------------------------------------------------------------- seed-bootstrap intervals


def _quantiles(boot: np.ndarray, estimate: float, confidence: float, method: str = "inverted_cdf") -> CI:
    """Percentile interval of the resamples that are not NaN; by order statistics unless ``method``
    says otherwise (an end may then be inf)."""
    boot = boot[~np.isnan(boot)]
    if boot.size == 0:
        return CI(estimate, math.nan, math.nan)
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], method=method)
    return CI(estimate, float(low), float(high))


def _resampled_pair_means(matrix: np.ndarray, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(n_resamples,) means of a (seeds, seeds) matrix over the pairs of distinct draws of a
    resample of its seeds (a seed paired with its own copy is left out: its churn is 0 by
    construction); NaN for a resample of one seed repeated, which has no pair."""
    n = matrix.shape[0]
    out = []
    block = max(1, _CHUNK_ELEMENTS // (n * n))
    for start in range(0, n_resamples, block):
        idx = rng.integers(0, n, (min(block, n_resamples - start), n))  # (B, n)
        distinct = idx[:, :, None] != idx[:, None, :]  # (B, n, n)
        total = np.where(distinct, matrix[idx[:, :, None], idx[:, None, :]], 0.0).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(total / distinct.sum(axis=(1, 2)))
    return np.concatenate(out)


def pairwise_mean_ci(matrix: ArrayLike, *, n_resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> CI:
    """Mean of a symmetric (seeds, seeds) matrix (e.g. :func:`churn`) over pairs i < j, with a
    percentile CI over resampled seeds (pairs of a seed with itself left out). Remove diverged
    seeds first. NaN with fewer than two seeds."""
    m = np.asarray(matrix, np.float64)
    if m.shape[0] < 2:
        return CI(math.nan, math.nan, math.nan)
    estimate = float(m[np.triu_indices(m.shape[0], 1)].mean())
    boot = _resampled_pair_means(m, n_resamples, np.random.default_rng(seed))
    return _quantiles(boot, estimate, confidence, method="linear")  # bounded values: interpolated


def churn_ratio_ci(predictions: ArrayLike, reference: ArrayLike, *, n_resamples: int = 10_000, seed: int = 0,
                   confidence: float = 0.95) -> CI:
    """Mean pairwise churn of one set of seeds ÷ that of another (e.g. one randomness source
    varied ÷ all varied), both ``(seeds, examples)`` predicted labels, with a percentile CI: the
    seeds of each set resampled independently (:func:`pairwise_mean_ci`'s resampling). A resample
    of ``reference`` without disagreement gives a legitimate +inf end."""
    a, b = churn(predictions), churn(reference)
    if a.shape[0] < 2 or b.shape[0] < 2:
        return CI(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = np.float64(mean_pairwise_churn(predictions)) / mean_pairwise_churn(reference)
        boot = _resampled_pair_means(a, n_resamples, rng) / _resampled_pair_means(b, n_resamples, rng)
    return _quantiles(boot, float(estimate), confidence)


def std_ratio_ci(x: ArrayLike, y: ArrayLike, *, n_resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> CI:
    """std(x) / std(y) (ddof 1) with a percentile CI, x and y resampled independently.
    Non-finite values are dropped; NaN with fewer than 2 left on either side. A resample of y
    without spread gives a legitimate +inf end ("no spread at all in y")."""
    a, b = (np.asarray(v, np.float64).ravel() for v in (x, y))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return CI(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = float(np.std(a, ddof=1) / np.std(b, ddof=1))
        boot = (np.std(a[rng.integers(0, a.size, (n_resamples, a.size))], axis=-1, ddof=1)
                / np.std(b[rng.integers(0, b.size, (n_resamples, b.size))], axis=-1, ddof=1))
    return _quantiles(boot, estimate, confidence)


# ------------------------------------------------------------- ensembles


def majority_vote(predictions: ArrayLike, num_classes: int) -> np.ndarray:
    """The most frequent label per example over seeds, ties to the lower class: (seeds, examples)
    int -> (examples,) int."""
    counts = (np.asarray(predictions)[..., None] == np.arange(num_classes)).sum(axis=0)  # (examples, classes)
    return counts.argmax(axis=-1)


def mean_softmax_vote(probabilities: ArrayLike) -> np.ndarray:
    """The deep-ensemble prediction (Lakshminarayanan et al. 2017): argmax of the members' mean
    softmax, (seeds, examples, classes) -> (examples,) int."""
    return np.asarray(probabilities, np.float64).mean(axis=0).argmax(axis=-1)


class EnsembleCurve(NamedTuple):
    """Test accuracy of ensembles of ``sizes[c]`` seeds drawn without replacement: ``softmax`` and
    ``vote`` are (draws, sizes), one row per random draw of each size."""

    sizes: np.ndarray
    softmax: np.ndarray
    vote: np.ndarray


def ensemble_curve(probabilities: ArrayLike, labels: ArrayLike, *, sizes: Optional[ArrayLike] = None,
                   draws: int = 32, seed: int = 0) -> EnsembleCurve:
    """Accuracy of the mean-softmax and majority-vote ensembles against their size.

    Args:
      probabilities: (seeds, examples, classes) softmax outputs of the finite seeds.
      labels: (examples,) true labels.
      sizes: ensemble sizes (default 1, 2, 4, ... and all seeds).
      draws: random subsets per size (all of them equal at the full size).
    """
    p, y = np.asarray(probabilities, np.float64), np.asarray(labels)
    n = p.shape[0]
    if sizes is None:
        sizes = sorted({2 ** i for i in range(max(n, 1).bit_length()) if 2 ** i <= n} | {n})
    sizes = np.asarray(sizes, int)
    soft, vote = np.full((draws, sizes.size), np.nan), np.full((draws, sizes.size), np.nan)
    rng = np.random.default_rng(seed)
    for c, k in enumerate(sizes):
        for r in range(draws if k > 0 else 0):
            pick = rng.choice(n, k, replace=False)
            soft[r, c] = np.mean(mean_softmax_vote(p[pick]) == y)
            vote[r, c] = np.mean(majority_vote(p[pick].argmax(-1), p.shape[-1]) == y)
    return EnsembleCurve(sizes, soft, vote)


# ------------------------------------------------------------- distances between runs' parameters


def _two_sum(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    """a + b = s + e exactly in floating point (Knuth's TwoSum)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def sketch(flat: jax.Array, k: int, *, seed: int | jax.Array = 0) -> jax.Array:
    """A CountSketch of a flat parameter vector (P,) -> (k, 2): each parameter, with a fixed random
    sign, goes to one of ``k`` buckets (the same for every run: the key is ``seed``); each bucket's
    sum is a double-float ``hi + lo`` (TwoSum additions, ~48 bits), so that two runs one float32
    ulp apart still differ by exactly that ulp. Norms of differences are kept:
    E‖S(a − b)‖² = ‖a − b‖² (the signs), relative sd ≤ √(2/k) of the squared norm (Charikar et
    al. 2002), exact for a difference in one parameter. Jittable, for a measurement hook."""
    p = flat.shape[0]
    m = 1 << max(0, (-(-p // k) - 1).bit_length())  # parameters per bucket, a power of 2
    key_order, key_sign = jax.random.split(jax.random.key(seed))
    padded = jnp.zeros(k * m, flat.dtype).at[:p].set(flat)
    signs = jax.random.rademacher(key_sign, (k * m,), flat.dtype)
    hi = (padded * signs)[jax.random.permutation(key_order, k * m)].reshape(k, m)  # exact: sign flips
    lo = jnp.zeros_like(hi)
    while hi.shape[1] > 1:  # pairwise double-float addition, log2(m) levels
        s, e = _two_sum(hi[:, 0::2], hi[:, 1::2])
        e = e + (lo[:, 0::2] + lo[:, 1::2])
        total = s + e
        hi, lo = total, e - (total - s)
    return jnp.stack([hi[:, 0], lo[:, 0]], axis=-1)


def sketch_distance(a: ArrayLike, b: ArrayLike) -> np.ndarray:
    """‖S a − S b‖ from two :func:`sketch` arrays (..., k, 2), in float64 (hi + lo is exact there):
    an estimate of ‖a − b‖ (...)."""
    value = lambda s: np.asarray(s, np.float64).sum(axis=-1)  # noqa: E731
    return np.linalg.norm(value(a) - value(b), axis=-1)


# ------------------------------------------------------------- twins of a run: hooks for `sweep.run`


def perturb_one_ulp(params: mlp.Params) -> mlp.Params:
    """The same params with the first weight of the first layer moved up by one float ulp."""
    w = params[0].w
    return (params[0]._replace(w=w.at[0, 0].set(jnp.nextafter(w[0, 0], jnp.inf))), *params[1:])


@dataclass(frozen=True)
class UlpFrom:
    """Perturb hook: the runs with sweep index ≥ ``first`` start from :func:`perturb_one_ulp` of
    their params (one-ulp twins of the runs below, in the same compiled program)."""

    first: int

    def __call__(self, state: train.TrainState, run: jax.Array, cfg: Config) -> train.TrainState:
        moved = perturb_one_ulp(state.params)
        return state._replace(params=jax.tree.map(partial(jnp.where, run >= self.first), moved, state.params))


@dataclass(frozen=True)
class Snapshot:
    """Measure hook: a run's parameter :func:`sketch` (k, 2), parameter norm () and test
    predictions (n_test,) int32, for :func:`drift`."""

    k: int = 512

    def __call__(self, state: train.TrainState, streams: train.Streams, data: train.Data, cfg: Config) -> dict:
        flat = ravel_pytree(state.params)[0]
        return {"sketch": sketch(flat, self.k), "norm": jnp.linalg.norm(flat),
                "predictions": train.predict(state.params, state.bn_state, data.x_test, cfg=cfg)}


def drift(ref: Mapping[str, np.ndarray], twin: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Relative distance ‖θ_twin − θ_ref‖ / ‖θ_ref‖ (from sketches) and test churn of twins to their
    references, (runs, evaluations) each, from :class:`Snapshot` measures: sketch (runs,
    evaluations, k, 2), norm (runs, evaluations), predictions (runs, evaluations, n_test)."""
    return (sketch_distance(twin["sketch"], ref["sketch"]) / np.asarray(ref["norm"], np.float64),
            np.mean(np.asarray(twin["predictions"]) != np.asarray(ref["predictions"]), axis=-1))


def pair_errors(predictions: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Mean error rate and churn of every pair i < j of seeds, (pairs,) each, from (seeds, examples)
    predicted labels. Churn ≤ err_i + err_j (two right answers agree) and ≥ |err_i − err_j|."""
    p = np.asarray(predictions)
    errors = (p != np.asarray(labels)[None]).mean(axis=-1)  # (seeds,)
    i, j = np.triu_indices(len(errors), k=1)
    return (errors[i] + errors[j]) / 2, churn(p)[i, j]


# ------------------------------------------------------------- variance decomposition


def variance_decomposition(
    values: ArrayLike, factors: Mapping[str, ArrayLike]
) -> dict[str, float]:
    """Share of the total variance of ``values`` explained by each factor's main effect.

    For each factor, eta-squared = SS_between / SS_total, where SS_between is the sum of
    squares of the group means (the factor's levels) about the grand mean, weighted by
    group size. ``'residual'`` is ``1 - sum(shares)``: interaction plus noise. In a
    balanced crossed design (a full grid, e.g. lr x seed) the main effects are orthogonal
    and everything is non-negative and sums to 1; in unbalanced designs main effects
    overlap and the residual can come out negative. Observations whose value is
    non-finite are dropped. All shares are NaN if the total variance is zero.

    ``factors`` maps a name to a 1-D array of level labels (any hashable dtype), one per
    observation. The name ``'residual'`` is reserved.
    """
    y = np.asarray(values, dtype=np.float64).ravel()
    if "residual" in factors:
        raise ValueError("'residual' is reserved; rename that factor")
    keep = np.isfinite(y)
    y = y[keep]
    centred = y - y.mean() if y.size else y
    ss_total = float(centred @ centred)
    shares: dict[str, float] = {}
    for name, labels in factors.items():
        lab = np.asarray(labels).ravel()
        if lab.shape[0] != keep.shape[0]:
            raise ValueError(
                f"factor {name!r} has {lab.shape[0]} labels for {keep.shape[0]} values"
            )
        _, group = np.unique(lab[keep], return_inverse=True)
        counts = np.bincount(group)
        sums = np.bincount(group, weights=centred)
        nonempty = counts > 0
        ss_between = float(np.sum(sums[nonempty] ** 2 / counts[nonempty]))
        shares[name] = ss_between / ss_total if ss_total > 0 else math.nan
    shares["residual"] = 1.0 - sum(shares.values()) if ss_total > 0 else math.nan
    return shares


def grid_variance_shares(
    grid: ArrayLike, names: tuple[str, str] = ("a", "b")
) -> dict[str, float]:
    """Variance shares of a 2-D grid ``(levels_a, levels_b)``, e.g. accuracy over
    lr x seed: ``{names[0]: ..., names[1]: ..., 'interaction_residual': ...}``.

    For a complete grid the three shares are non-negative and sum to 1 (two-way ANOVA
    without replication, where interaction and noise are not separable).
    """
    g = np.asarray(grid, dtype=np.float64)
    if g.ndim != 2:
        raise ValueError(f"grid must be 2-D (levels_a, levels_b), got shape {g.shape}")
    if len(names) != 2 or names[0] == names[1] or "interaction_residual" in names:
        raise ValueError(f"names must be two distinct factor names, got {names!r}")
    rows, cols = np.indices(g.shape)
    shares = variance_decomposition(g.ravel(), {names[0]: rows.ravel(), names[1]: cols.ravel()})
    shares["interaction_residual"] = shares.pop("residual")
    return shares
