"""How runs of one question differ: pairwise churn of their predictions, and the share of a
metric's variance that each factor of a design (lr, seed, ...) explains.

Pure numpy, hand-written because no library computes them; tested in tests/test_stats.py
against brute-force and hand-computed answers. Non-finite values mark diverged runs and are
dropped, as in `stats`.

References
----------
Fort, Hu & Lakshminarayanan (2019), *Deep Ensembles: A Loss Landscape Perspective* (prediction
disagreement between seeds); Bhojanapalli et al. (2021), *On the Reproducibility and Stability
of Deep Learning* (churn). Variance shares are eta-squared of a main effect, the two-way ANOVA
without replication for a full grid (Montgomery, *Design and Analysis of Experiments*).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["churn", "grid_variance_shares", "mean_pairwise_churn", "variance_decomposition"]

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
