"""What the layers of a trained net hold: activations per layer, linear probes, and the linear
CKA similarity of two representations.

References: Alain & Bengio 2016 (linear classifier probes); Kornblith et al. 2019
(*Similarity of Neural Network Representations Revisited*: CKA).
"""

from __future__ import annotations

import math
from functools import partial

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
