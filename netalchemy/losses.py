"""Softmax cross-entropy (computed through log-sum-exp), accuracy, and L1/L2 penalties.

The penalties apply to the dense weight matrices only: biases and batch-norm parameters
are not regularized. L2 is (1/2)·Σw², so its gradient is w; L1 is Σ|w|, whose gradient
is sign(w) with JAX's convention that the derivative of |w| at 0 is +1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def log_softmax(logits: Array) -> Array:
    """log softmax(z) = z − logsumexp(z) along the last axis; finite for any finite z."""
    return logits - jax.nn.logsumexp(logits, axis=-1, keepdims=True)


def cross_entropy(logits: Array, labels: Array) -> Array:
    """Mean cross-entropy of integer labels (batch,) under softmax(logits) (batch, classes)."""
    log_p = log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(log_p, labels[:, None].astype(jnp.int32), axis=-1))


def cross_entropy_from_probs(y_true: Array, y_pred: Array) -> Array:
    """−Σ y_true · ln y_pred over the last axis: the article's formula (claim M1)."""
    return -jnp.sum(y_true * jnp.log(y_pred), axis=-1)


def accuracy(logits: Array, labels: Array) -> Array:
    """Fraction of rows whose arg-max logit is the label."""
    return jnp.mean(jnp.argmax(logits, axis=-1) == labels)


def weights(params) -> list[Array]:
    """The dense weight matrices of an MLP's params (what the penalties act on)."""
    return [layer.w for layer in params]


def l1_penalty(params) -> Array:
    """Σ|w| over all dense weights."""
    return sum(jnp.sum(jnp.abs(w)) for w in weights(params))


def l2_penalty(params) -> Array:
    """(1/2) Σ w² over all dense weights."""
    return 0.5 * sum(jnp.sum(jnp.square(w)) for w in weights(params))


def regularized_loss(logits: Array, labels: Array, params, *, l1: float, l2: float) -> Array:
    """Cross-entropy + l1 · Σ|w| + l2 · (1/2)Σw²."""
    loss = cross_entropy(logits, labels)
    if not is_static_zero(l1):
        loss = loss + l1 * l1_penalty(params)
    if not is_static_zero(l2):
        loss = loss + l2 * l2_penalty(params)
    return loss


def is_static_zero(value) -> bool:
    """True for a Python number equal to 0 (a traced value is never statically zero)."""
    return isinstance(value, (int, float)) and value == 0
