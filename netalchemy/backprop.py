"""Gradients two ways: `jax.grad`, and a backward pass derived by hand with the chain rule.

`hand_grad` starts where the article does (claim M2): for softmax + cross-entropy averaged
over a batch of B examples, ∂L/∂z_out = (softmax(z_out) − onehot(y)) / B. It then walks the
layers backwards with jnp only (no `jax.grad`/`jax.vjp`), reading the intermediates that
`mlp.forward` kept, and returns the same pytree `jax.grad` does. Both functions share one
signature, so training can switch between them (`train.grad=hand|autodiff`).

Per layer, with upstream gradient g = ∂L/∂(layer output):
  dense      y = x W + b        dW = xᵀg,  db = Σ_batch g,  dx = g Wᵀ
  dropout    y = a ⊙ m          da = g ⊙ m                      (m = kept / (1 − rate))
  ReLU       a = max(u, 0)      du = g ⊙ [u > 0]                (claim M3; 0 at the kink)
  batch norm u = γ x̂ + β, x̂ = (z − μ) / σ
             dγ = Σ g ⊙ x̂,  dβ = Σ g,
             dz = (1 / (B σ)) · (B ĝ − Σ ĝ − x̂ ⊙ Σ(ĝ ⊙ x̂)),  ĝ = g ⊙ γ   (Ioffe & Szegedy 2015)
             then, as Σ_batch dz = 0:  dz ← dz − mean dz,  dW = (x − x̄)ᵀ dz
  penalties  + l1 · sign(W) + l2 · W

The last batch-norm line is exact in real arithmetic and is there for round-off: see
`batch_norm_backward`.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from netalchemy import losses, mlp
from netalchemy.config import ModelConfig

Array = jax.Array


class Aux(NamedTuple):
    loss: Array  # scalar, the regularized objective
    state: mlp.State  # BN running statistics after this batch
    logits: Array  # (batch, classes)


def objective(params: mlp.Params, state: mlp.State, x: Array, y: Array, *, cfg: ModelConfig,
              l1: float = 0.0, l2: float = 0.0, key: Optional[Array] = None) -> tuple[Array, Aux]:
    """The training objective in training mode: cross-entropy + penalties."""
    out = mlp.forward(params, state, x, cfg=cfg, train=True, key=key)
    loss = losses.regularized_loss(out.logits, y, params, l1=l1, l2=l2)
    return loss, Aux(loss, out.state, out.logits)


def autodiff_grad(params: mlp.Params, state: mlp.State, x: Array, y: Array, *, cfg: ModelConfig,
                  l1: float = 0.0, l2: float = 0.0, key: Optional[Array] = None) -> tuple[mlp.Params, Aux]:
    """∂objective/∂params by `jax.grad`."""
    grads, aux = jax.grad(objective, has_aux=True)(params, state, x, y, cfg=cfg, l1=l1, l2=l2, key=key)
    return grads, aux


def output_delta(logits: Array, y: Array) -> Array:
    """∂(mean cross-entropy)/∂logits = (softmax(z) − onehot(y)) / batch, (batch, classes)."""
    y_pred = jax.nn.softmax(logits, axis=-1)
    y_true = jax.nn.one_hot(y, logits.shape[-1], dtype=logits.dtype)
    return (y_pred - y_true) / logits.shape[0]


def penalty_grad(w: Array, *, l1: float, l2: float) -> Array:
    """∂(l1 Σ|w| + l2 ½Σw²)/∂w, with d|w|/dw = +1 at w = 0 (JAX's convention)."""
    grad = jnp.zeros_like(w)
    if not losses.is_static_zero(l1):
        grad = grad + l1 * jnp.where(w >= 0, 1.0, -1.0).astype(w.dtype)
    if not losses.is_static_zero(l2):
        grad = grad + l2 * w
    return grad


def batch_norm_backward(g: Array, cache: mlp.HiddenCache, scale: Array) -> tuple[Array, Array, Array]:
    """Gradients of u = scale · x̂ + offset with batch statistics: (dz, dscale, doffset).

    g: (batch, width) = ∂L/∂u. dz is (batch, width), dscale and doffset (width,).

    dz = (σ⁻¹/B)(B ĝ − Σĝ − x̂ Σ(ĝ x̂)) (Ioffe & Szegedy 2015, §3) sums to zero over the
    batch in exact arithmetic, because Σ x̂ = 0. In floating point, when z's batch mean is
    far from zero relative to its spread (off-centre inputs), the computed x̂ misses Σ x̂ = 0
    by about B·u·|mean|/std, and dz inherits a spurious batch mean. The layer below
    multiplies that mean by the mean of its inputs (dW = xᵀ dz), an error growing like
    u·(mean/std)², where `jax.grad`'s grows like u·(mean/std). Subtracting dz's batch mean
    (a no-op in real arithmetic) removes it; `hand_grad` also forms dW from centred inputs.
    What is left is x̂'s own u·(mean/std) error from the forward pass, which jax.grad shares.
    """
    batch = g.shape[0]
    x_hat = cache.normalized  # (batch, width)
    g_hat = g * scale  # ∂L/∂x̂
    dz = (cache.inv_std / batch) * (
        batch * g_hat - jnp.sum(g_hat, axis=0) - x_hat * jnp.sum(g_hat * x_hat, axis=0))
    dz = dz - jnp.mean(dz, axis=0)  # Σ_batch dz = 0 exactly: drop the round-off's batch mean
    return dz, jnp.sum(g * x_hat, axis=0), jnp.sum(g, axis=0)


def activation_backward(g: Array, pre_activation: Array, cfg: ModelConfig) -> Array:
    """ReLU' is 1 where the unit is active (u > 0) and 0 elsewhere; identity for linear nets."""
    if cfg.activation == "relu":
        return g * (pre_activation > 0).astype(g.dtype)
    return g


def hand_grad(params: mlp.Params, state: mlp.State, x: Array, y: Array, *, cfg: ModelConfig,
              l1: float = 0.0, l2: float = 0.0, key: Optional[Array] = None) -> tuple[mlp.Params, Aux]:
    """∂objective/∂params by the hand-derived backward pass; same pytree as `autodiff_grad`.

    Args:
      params, state: the MLP (see `mlp.init`).
      x: (batch, in_features) inputs; y: (batch,) integer labels.
      cfg: model config; l1, l2: penalty strengths; key: the dropout key.

    Returns:
      (grads, Aux(loss, new_state, logits)).
    """
    out = mlp.forward(params, state, x, cfg=cfg, train=True, key=key)
    loss = losses.regularized_loss(out.logits, y, params, l1=l1, l2=l2)

    g = output_delta(out.logits, y)  # (batch, classes)
    last = params[-1]
    h_last = out.hidden[-1].outputs if out.hidden else x.astype(last.w.dtype)
    grads = [mlp.Layer(h_last.T @ g + penalty_grad(last.w, l1=l1, l2=l2), jnp.sum(g, axis=0))]
    g = g @ last.w.T  # ∂L/∂(output of the last hidden layer)

    for i in reversed(range(len(out.hidden))):
        cache, layer = out.hidden[i], params[i]
        if cache.mask is not None:
            g = g * cache.mask
        g = activation_backward(g, cache.pre_activation, cfg)
        dscale = doffset = db = None
        inputs = cache.inputs  # (batch, fan_in)
        if layer.scale is not None:
            g, dscale, doffset = batch_norm_backward(g, cache, layer.scale)
            # Σ_batch g = 0, so xᵀg = (x − x̄)ᵀg: the centred form keeps x̄ · (round-off of Σg) out of dW.
            inputs = inputs - jnp.mean(inputs, axis=0)
        if layer.b is not None:
            db = jnp.sum(g, axis=0)
        dw = inputs.T @ g + penalty_grad(layer.w, l1=l1, l2=l2)
        grads.append(mlp.Layer(dw, db, dscale, doffset))
        if i > 0:
            g = g @ layer.w.T
    return tuple(reversed(grads)), Aux(loss, out.state, out.logits)


GradFn = Callable[..., tuple[mlp.Params, Aux]]


def gradient_fn(kind: str) -> GradFn:
    """`autodiff_grad` for "autodiff", `hand_grad` for "hand"."""
    try:
        return {"autodiff": autodiff_grad, "hand": hand_grad}[kind]
    except KeyError:
        raise ValueError(f"unknown gradient kind {kind!r}; use autodiff or hand") from None
