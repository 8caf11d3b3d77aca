"""The multilayer perceptron as pure functions over plain pytrees.

    x -> [dense -> (batch norm) -> ReLU -> (dropout)] * len(hidden) -> dense -> logits

Params are a tuple of `Layer` NamedTuples; the batch-norm running statistics are the
`state`, a tuple of `BNStats` (empty without batch norm). `forward` also returns every
intermediate of the pass (`HiddenCache`) so that the hand-derived backward pass
(`netalchemy.backprop`) and the probes read the very numbers the forward pass computed.

References: He et al. 2015 (initialization), Srivastava et al. 2014 (dropout),
Ioffe & Szegedy 2015 (batch norm).
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from netalchemy.config import ModelConfig

Array = jax.Array


class Layer(NamedTuple):
    """One dense layer and, on hidden layers with batch norm, its affine BN parameters."""

    w: Array  # (fan_in, fan_out)
    b: Optional[Array]  # (fan_out,); None where batch norm's offset plays its role
    scale: Optional[Array] = None  # BN gamma, (fan_out,)
    offset: Optional[Array] = None  # BN beta, (fan_out,)


class BNStats(NamedTuple):
    """Running averages of the batch statistics of one hidden layer (the model state)."""

    mean: Array  # (fan_out,)
    var: Array  # (fan_out,), biased variance


class HiddenCache(NamedTuple):
    """What one hidden layer computed; None where the layer kind is absent."""

    inputs: Array  # (batch, fan_in)
    pre_norm: Array  # (batch, fan_out) = inputs @ w (+ b)
    normalized: Optional[Array]  # (batch, fan_out) BN's x_hat
    inv_std: Optional[Array]  # (fan_out,) 1 / sqrt(var + eps) used to normalise
    pre_activation: Array  # (batch, fan_out) input of the ReLU
    mask: Optional[Array]  # (batch, fan_out) inverted-dropout mask: keep / (1 - rate)
    outputs: Array  # (batch, fan_out) what the next layer reads


class Forward(NamedTuple):
    logits: Array  # (batch, classes)
    state: tuple[BNStats, ...]
    hidden: tuple[HiddenCache, ...]


Params = tuple[Layer, ...]
State = tuple[BNStats, ...]


def init(key: Array, cfg: ModelConfig, *, in_features: int, num_classes: int) -> tuple[Params, State]:
    """Random initial params and BN state.

    Weights ~ N(0, gain / fan_in) with gain 2 ("he", He et al. 2015) or 1 ("lecun");
    biases and BN offsets 0, BN scales 1, running mean 0 and variance 1.
    """
    dtype = jnp.dtype(cfg.dtype)
    gain = 2.0 if cfg.init == "he" else 1.0
    widths = (in_features, *cfg.hidden, num_classes)
    keys = jax.random.split(key, len(widths) - 1)
    params, state = [], []
    for i, (fan_in, fan_out) in enumerate(zip(widths[:-1], widths[1:])):
        w = jax.random.normal(keys[i], (fan_in, fan_out), dtype) * jnp.sqrt(gain / fan_in).astype(dtype)
        hidden_bn = cfg.batch_norm and i < len(cfg.hidden)
        if hidden_bn:
            params.append(Layer(w, None, jnp.ones(fan_out, dtype), jnp.zeros(fan_out, dtype)))
            state.append(BNStats(jnp.zeros(fan_out, dtype), jnp.ones(fan_out, dtype)))
        else:
            params.append(Layer(w, jnp.zeros(fan_out, dtype)))
    return tuple(params), tuple(state)


def activation(u: Array, cfg: ModelConfig) -> Array:
    """ReLU (derivative 0 at the kink, as `jax.nn.relu`) or the identity."""
    return jax.nn.relu(u) if cfg.activation == "relu" else u


def forward(params: Params, state: State, x: Array, *, cfg: ModelConfig, train: bool,
            key: Optional[Array] = None) -> Forward:
    """Runs the net on a batch and keeps every intermediate.

    Args:
      params, state: from `init` (or training).
      x: (batch, in_features) inputs.
      cfg: the model config (static under jit).
      train: batch statistics and dropout when True; running statistics, no dropout when False.
      key: dropout key, required when `train` and `cfg.dropout > 0`. Layer i uses
        `fold_in(key, i)`.

    Batch norm on a batch of one example: the batch variance is 0, so x_hat = 0 and the
    layer outputs its offset; the result and its gradients are finite (gradient 0 into w).

    Returns:
      Forward(logits (batch, classes), new state, per-hidden-layer caches).
    """
    use_dropout = train and cfg.dropout > 0.0
    if use_dropout and key is None:
        raise ValueError("forward(train=True) with dropout needs a key")
    h = x.astype(cfg.dtype)
    caches, new_state = [], []
    for i, layer in enumerate(params[:-1]):
        z = h @ layer.w  # (batch, fan_out)
        if layer.b is not None:
            z = z + layer.b
        x_hat = inv_std = None
        u = z
        if layer.scale is not None:
            stats = state[len(new_state)]
            if train:
                mean = jnp.mean(z, axis=0)
                var = jnp.mean(jnp.square(z - mean), axis=0)
                m = cfg.bn_momentum
                new_state.append(BNStats(m * stats.mean + (1 - m) * mean, m * stats.var + (1 - m) * var))
            else:
                mean, var = stats.mean, stats.var
                new_state.append(stats)
            inv_std = jax.lax.rsqrt(var + cfg.bn_eps)
            x_hat = (z - mean) * inv_std
            u = layer.scale * x_hat + layer.offset
        a = activation(u, cfg)
        mask = None
        if use_dropout:
            keep = 1.0 - cfg.dropout
            kept = jax.random.bernoulli(jax.random.fold_in(key, i), keep, a.shape)
            mask = kept.astype(a.dtype) / jnp.asarray(keep, a.dtype)
            a = a * mask
        caches.append(HiddenCache(h, z, x_hat, inv_std, u, mask, a))
        h = a
    last = params[-1]
    logits = h @ last.w + last.b
    return Forward(logits, tuple(new_state), tuple(caches))


def apply(params: Params, state: State, x: Array, *, cfg: ModelConfig, train: bool,
          key: Optional[Array] = None) -> tuple[Array, State]:
    """Logits (batch, classes) and the new state; see `forward`."""
    out = forward(params, state, x, cfg=cfg, train=train, key=key)
    return out.logits, out.state


def num_params(params: Params) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(params))
