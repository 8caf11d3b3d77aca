"""What the layers of a trained net hold: activations per layer and linear probes.

References: Alain & Bengio 2016 (linear classifier probes); Kornblith et al. 2019
(similarity of representations, see `stats.linear_cka`).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

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
