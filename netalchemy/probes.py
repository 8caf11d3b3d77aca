"""What the layers of a trained net hold: activations per layer, linear probes, the linear CKA
similarity of two representations (and which layers of two nets match), the co-adaptation of a
layer's units, and the share of near-zero weights.

References: Alain & Bengio 2016 (linear classifier probes); Kornblith et al. 2019
(*Similarity of Neural Network Representations Revisited*: CKA); Cogswell et al. 2016 (DeCov:
correlated hidden units as co-adaptation).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from netalchemy import mlp
from netalchemy.config import ModelConfig

Array = jax.Array


@partial(jax.jit, static_argnames="cfg")
def representations(params: mlp.Params, state: mlp.State, x: Array, *, cfg: ModelConfig) -> tuple[Array, ...]:
    """Every layer's view of `x` in evaluation mode: (input, hidden 1, …, hidden L, logits).

    Hidden representations are the layers' outputs (after ReLU); each is (batch, width).
    """
    out = mlp.forward(params, state, x, cfg=cfg, train=False)
    return (x.astype(out.logits.dtype), *(c.outputs for c in out.hidden), out.logits)


def ridge_probe_accuracy(train_features: Array, train_labels: Array, test_features: Array, test_labels: Array,
                         *, num_classes: int, l2: float = 1e-3) -> Array:
    """Test accuracy of a linear probe fitted in closed form (ridge regression onto one-hot labels).

    Features are standardised with the training statistics and a bias column is added; the
    probe is W = (XᵀX + l2·n·I)⁻¹ XᵀY, predicting argmax(X W). Jittable and vmappable.
    """
    mean = jnp.mean(train_features, axis=0)
    std = jnp.std(train_features, axis=0) + 1e-6

    def design(f):
        z = (f - mean) / std
        return jnp.concatenate([z, jnp.ones((f.shape[0], 1), z.dtype)], axis=1)

    x_tr, x_te = design(train_features), design(test_features)
    y = jax.nn.one_hot(train_labels, num_classes, dtype=x_tr.dtype)
    gram = x_tr.T @ x_tr + l2 * x_tr.shape[0] * jnp.eye(x_tr.shape[1], dtype=x_tr.dtype)
    w = jnp.linalg.solve(gram, x_tr.T @ y)
    return jnp.mean(jnp.argmax(x_te @ w, axis=1) == test_labels)


def linear_cka(x: ArrayLike, y: ArrayLike) -> float:
    """Linear centred kernel alignment (Kornblith et al. 2019, eq. 5) between two
    representations of the same ``n`` examples, ``x`` (n, p1) and ``y`` (n, p2):

    ``||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)``, with column-centred ``Xc, Yc``.

    In [0, 1]; 1 for identical inputs; invariant to orthogonal transforms and isotropic
    scaling of either input, but not to general invertible linear maps. Computed in
    feature space, or through the equivalent ``n x n`` Gram matrices when ``n`` is
    smaller than the widths. A constant representation (zero after centring) returns
    NaN. 1-D inputs are treated as a single feature.
    """
    a = np.asarray(x, dtype=np.float64)
    b = np.asarray(y, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
    b = b[:, None] if b.ndim == 1 else b
    if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[0]:
        raise ValueError(f"need x (n, p1) and y (n, p2), got {a.shape} and {b.shape}")
    a = a - a.mean(axis=0)
    b = b - b.mean(axis=0)
    if a.shape[0] < max(a.shape[1], b.shape[1]):
        k, l = a @ a.T, b @ b.T  # noqa: E741
        cross, norm_a, norm_b = np.sum(k * l), np.linalg.norm(k), np.linalg.norm(l)
    else:
        cross = np.linalg.norm(b.T @ a) ** 2
        norm_a, norm_b = np.linalg.norm(a.T @ a), np.linalg.norm(b.T @ b)
    denominator = norm_a * norm_b
    if not denominator > 0:
        return math.nan
    return float(np.clip(cross / denominator, 0.0, 1.0))


def cka_matrix(reps_a: Sequence[ArrayLike], reps_b: Sequence[ArrayLike]) -> np.ndarray:
    """(layers_a, layers_b) linear CKA between every layer of one net and every layer of another,
    each layer's representation (n, width) of the same n examples."""
    return np.array([[linear_cka(a, b) for b in reps_b] for a in reps_a])


def correspondence(cross: ArrayLike) -> float:
    """Share of hidden layers (all but the first and last rows of a `cka_matrix` between two nets:
    input, hidden…, logits) whose most CKA-similar layer in the other net is the same layer."""
    cross = np.asarray(cross)
    return float(np.mean([np.nanargmax(cross[i]) == i for i in range(1, cross.shape[0] - 1)]))


def mean_abs_correlation(h: ArrayLike, eps: float = 1e-8) -> float:
    """Mean |Pearson correlation| over pairs of distinct units of `h` (examples, units): how much a
    layer's units co-adapt (Cogswell et al. 2016). Units that never vary (dead ReLUs) are left out;
    NaN if fewer than two units vary."""
    h = np.asarray(h, np.float64)
    h = h[:, np.std(h, axis=0) > eps]
    if h.shape[1] < 2:
        return math.nan
    corr = np.abs(np.corrcoef(h, rowvar=False))  # (units, units)
    return float(corr[~np.eye(len(corr), dtype=bool)].mean())


def near_zero_fraction(params: mlp.Params, model: ModelConfig, rel: float) -> np.ndarray:
    """(runs,) share of all dense weights with |w| < rel × their layer's initial scale sqrt(gain / fan_in)
    (`mlp.init`: gain 2 for He init, else 1). `params` has a leading (runs,) axis (`SweepResult.final`)."""
    gain = 2.0 if model.init == "he" else 1.0
    ws = [np.abs(np.asarray(layer.w)) for layer in params]  # each (runs, fan_in, fan_out)
    small = sum((w < rel * np.sqrt(gain / w.shape[1])).sum(axis=(1, 2)) for w in ws)
    return small / sum(w.shape[1] * w.shape[2] for w in ws)
