"""Gradient checking: central finite differences along directions, kinks, relative errors.

A gradient g(θ) is checked against the central difference along a direction d,

    D_h f(θ; d) = (f(θ + h·d) − f(θ − h·d)) / 2h = ∇f(θ)·d + O(h²),

whose error for a smooth f is ≈ h²·|f‴|/6 (truncation) + ε·|f|/h (round-off), so h = 1e-5 in
float64 resolves about ten digits (Nocedal & Wright 2006, §8.1). Along a unit coordinate
vector e_i it estimates ∂f/∂θ_i. Agreement is read as cs231n's relative error
|a − b| / max(|a|, |b|) (Karpathy, CS231n notes, "Gradient checks").

Where f is not differentiable between θ − h·d and θ + h·d the difference estimates nothing:
a *kink*. For an MLP's training objective the kinks are ReLU inputs that change sign
(the on/off pattern differs at the two evaluations) and, under an L1 penalty, weights that
change sign (|w| has its kink at 0). `objective_differences` flags such directions so that
a check reports them apart instead of hiding them or failing on them.

`gradient_errors` puts the pieces together: the gradient of `backprop.objective` by the
hand-derived backward pass and by `jax.grad`, in float64 and float32, against central
differences on sampled coordinates, one record per parameter array.
"""

from __future__ import annotations

import dataclasses
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import backprop, losses, mlp
from netalchemy.config import ModelConfig

Array = jax.Array

ZERO_FLOOR = {"float64": 1e-12, "float32": 1e-6}  # gradients below this are round-off of an exact 0


# ----------------------------------------------------------------------------- relative errors


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """cs231n's |a − b| / max(|a|, |b|, floor), entry-wise; 0 where a == b.

    The floor turns the comparison of entries below it into an absolute one (|a − b| / floor):
    a finite difference's own absolute error (~1e-11 at h = 1e-5) would otherwise read as a
    large relative error on a tiny entry.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = np.abs(a - b)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    return np.where(diff == 0, 0.0, diff / np.where(scale == 0, 1.0, scale))


def array_error(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> float:
    """max|a − b| / max(max|a|, max|b|, floor) over one parameter array; 0 when equal.

    The floor keeps an array that is zero in exact arithmetic (all its units dropped, say),
    computed as ±1e-17 one way and 0 the other, from counting as a 100% error.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(np.max(np.abs(a - b)))
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), floor)
    return 0.0 if diff == 0 else diff / scale


# ----------------------------------------------------------------------------- differences along directions


def central_differences(f: Callable[[Array], Array], theta: Array, directions: Array, step: float) -> Array:
    """(f(θ + h·d) − f(θ − h·d)) / 2h for each row d of `directions`.

    Args:
      f: a scalar function of a flat vector (n,); vmapped over the directions.
      theta: (n,) the point.
      directions: (k, n) the directions (unit coordinate vectors give partial derivatives).
      step: h.

    Returns:
      (k,) the directional derivatives' central-difference estimates.
    """
    return (jax.vmap(f)(theta + step * directions) - jax.vmap(f)(theta - step * directions)) / (2 * step)


def straddles(pattern: Callable[[Array], Array], theta: Array, directions: Array, step: float) -> Array:
    """(k,) bool: True where `pattern` (any array of a point) differs between θ + h·d and θ − h·d."""
    plus, minus = jax.vmap(pattern)(theta + step * directions), jax.vmap(pattern)(theta - step * directions)
    return jnp.any((plus != minus).reshape(directions.shape[0], -1), axis=-1)


def relu_pattern(params: mlp.Params, state: mlp.State, x: Array, *, cfg: ModelConfig, key) -> Array:
    """Signs of every ReLU input in training mode, concatenated: (batch · Σ widths,) booleans."""
    out = mlp.forward(params, state, x, cfg=cfg, train=True, key=key)
    if not out.hidden:
        return jnp.zeros((0,), bool)
    return jnp.concatenate([(c.pre_activation > 0).ravel() for c in out.hidden])


def penalised_mask(params: mlp.Params) -> mlp.Params:
    """Like `params`: True on the entries the L1/L2 penalties act on (`losses.weights`), else False."""
    return type(params)(layer._replace(**{f: None if v is None else jnp.full(v.shape, f == "w")
                                          for f, v in layer._asdict().items()}) for layer in params)


@partial(jax.jit, static_argnames="cfg")
def objective_differences(params: mlp.Params, state: mlp.State, x: Array, y: Array, coords: Array, step: float, *,
                          cfg: ModelConfig, l1: float, l2: float, key) -> tuple[Array, Array]:
    """Central differences of `backprop.objective` along coordinates, and a kink flag per coordinate.

    Args:
      params, state: the point (an MLP and its batch-norm state).
      x, y: (batch, features) inputs and (batch,) labels; key: the dropout key (one mask for all).
      coords: (k,) int indices into the flat parameter vector (`ravel_pytree` order).
      step: h.

    Returns:
      (fd (k,), kink (k,)): kink is True where θ ± h·e_i see different ReLU on/off patterns or,
      with l1 ≠ 0, a weight-matrix entry changes sign between the two.
    """
    theta, unravel = ravel_pytree(params)
    penalised, _ = ravel_pytree(penalised_mask(params))
    directions = jax.nn.one_hot(coords, theta.size, dtype=theta.dtype)  # (k, n)
    loss_at = lambda t: backprop.objective(unravel(t), state, x, y, cfg=cfg, l1=l1, l2=l2, key=key)[0]
    fd = central_differences(loss_at, theta, directions, step)
    relu_kink = straddles(lambda t: relu_pattern(unravel(t), state, x, cfg=cfg, key=key), theta, directions, step)
    abs_kink = (l1 != 0) & straddles(lambda t: jnp.where(penalised, jnp.sign(t), 0), theta, directions, step)
    return fd, relu_kink | abs_kink


@jax.jit
def output_delta_check(logits: Array, y: Array, step: float) -> tuple[Array, Array, Array]:
    """∂(mean cross-entropy)/∂logits three ways (each (batch, classes)): the closed form
    (softmax − onehot)/B (`backprop.output_delta`), `jax.grad`, and central differences."""
    delta = backprop.output_delta(logits, y)
    auto = jax.grad(losses.cross_entropy)(logits, y)
    flat, unravel = ravel_pytree(logits)
    fd = central_differences(lambda z: losses.cross_entropy(unravel(z), y), flat, jnp.eye(flat.size, dtype=flat.dtype),
                             step)
    return delta, auto, fd.reshape(logits.shape)


# ----------------------------------------------------------------------------- one check, per parameter array


def leaf_names(params: mlp.Params) -> list[str]:
    """'L1.w', 'L1.b', ..., 'out.w' for each leaf, in `ravel_pytree` order."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        index, field = path[0].idx, path[1].name
        names.append(f"{'out' if index == len(params) - 1 else f'L{index + 1}'}.{field}")
    return names


def leaf_offsets(params: mlp.Params) -> np.ndarray:
    """(leaves + 1,) where each leaf starts in the flat vector, and its total length last."""
    return np.cumsum([0] + [leaf.size for leaf in jax.tree.leaves(params)])


def sample_coordinates(params: mlp.Params, per_leaf: int, rng: np.random.Generator) -> np.ndarray:
    """Flat indices of up to `per_leaf` distinct coordinates of each parameter array, leaf by leaf."""
    offsets = leaf_offsets(params)
    return np.concatenate([o + rng.choice(n, min(n, per_leaf), replace=False)
                           for o, n in zip(offsets[:-1], np.diff(offsets))])


_hand_grad = jax.jit(backprop.hand_grad, static_argnames="cfg")
_autodiff_grad = jax.jit(backprop.autodiff_grad, static_argnames="cfg")


def _grads(params, state, x, y, *, cfg: ModelConfig, **kw):
    """(hand, autodiff) gradients in cfg's dtype and in float32, and the logits of the forward pass."""
    cfg32 = dataclasses.replace(cfg, dtype="float32")
    to32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
    hand, aux = _hand_grad(params, state, x, y, cfg=cfg, **kw)
    auto, _ = _autodiff_grad(params, state, x, y, cfg=cfg, **kw)
    hand32, _ = _hand_grad(to32(params), to32(state), x.astype(jnp.float32), y, cfg=cfg32, **kw)
    auto32, _ = _autodiff_grad(to32(params), to32(state), x.astype(jnp.float32), y, cfg=cfg32, **kw)
    return (hand, auto, hand32, auto32), aux.logits


def gradient_errors(params: mlp.Params, state: mlp.State, x: Array, y: Array, coords: np.ndarray, *,
                    cfg: ModelConfig, l1: float, l2: float, key, step: float, floor: float) -> list[dict]:
    """Hand backprop vs `jax.grad` vs central differences at one point; one record per parameter array.

    `cfg.dtype` should be float64 (call under `jax.enable_x64`): the float32 comparison recasts
    the point. Each record has the worst relative errors hand~autodiff (float64, float32; per
    array, `array_error` with `ZERO_FLOOR`), hand~FD and autodiff~FD (entry-wise `rel_error`
    with `floor`, over the coordinates `coords` not at a kink), the coordinates checked and
    at kinks, and hand~FD at the kinks. A last record "dL/dz_out" checks the output delta
    (softmax − onehot)/B against `jax.grad` and FD in the logits.
    """
    kw = dict(l1=l1, l2=l2, key=key)
    (hand, auto, hand32, auto32), logits = _grads(params, state, x, y, cfg=cfg, **kw)
    fd, kink = map(np.asarray, objective_differences(params, state, x, y, jnp.asarray(coords), step, cfg=cfg, **kw))
    err_hand_fd = rel_error(np.asarray(ravel_pytree(hand)[0])[coords], fd, floor)
    err_auto_fd = rel_error(np.asarray(ravel_pytree(auto)[0])[coords], fd, floor)
    offsets, records = leaf_offsets(params), []
    leaves = zip(leaf_names(params), *(jax.tree.leaves(g) for g in (hand, auto, hand32, auto32)))
    for i, (name, h64, a64, h32, a32) in enumerate(leaves):
        in_leaf = (coords >= offsets[i]) & (coords < offsets[i + 1])
        smooth, kinked = in_leaf & ~kink, in_leaf & kink
        records.append(dict(
            param=name,
            hand_vs_autodiff_f64=array_error(h64, a64, ZERO_FLOOR["float64"]),
            hand_vs_autodiff_f32=array_error(h32, a32, ZERO_FLOOR["float32"]),
            hand_vs_fd=float(err_hand_fd[smooth].max(initial=0.0)),
            autodiff_vs_fd=float(err_auto_fd[smooth].max(initial=0.0)),
            fd_coords=int(in_leaf.sum()), kink_coords=int(kinked.sum()),
            hand_vs_fd_at_kinks=float(err_hand_fd[kinked].max(initial=0.0))))
    delta, auto_delta, fd_delta = map(np.asarray, output_delta_check(logits, y, step))
    records.append(dict(param="dL/dz_out", hand_vs_autodiff_f64=array_error(delta, auto_delta, ZERO_FLOOR["float64"]),
                        hand_vs_fd=float(rel_error(delta, fd_delta, floor).max())))
    return records


# ----------------------------------------------------------------------------- over many checks


def worst_per_param(records: list[dict]) -> list[dict]:
    """The worst of each error of `gradient_errors` records per parameter position ("L1.w", ...,
    "out.b", "dL/dz_out") over many checks, with the FD and kink coordinates summed."""
    rows = []
    for name in sorted({r["param"] for r in records}, key=lambda n: (n[0] != "L", n)):
        rs = [r for r in records if r["param"] == name]
        worst = lambda k: max((r[k] for r in rs if r.get(k) is not None), default=None)
        keys = ("hand_vs_autodiff_f64", "hand_vs_autodiff_f32", "hand_vs_fd", "autodiff_vs_fd", "hand_vs_fd_at_kinks")
        rows.append(dict(param=name, checks=len(rs), **{k: worst(k) for k in keys},
                         fd_coords=sum(r.get("fd_coords", 0) for r in rs),
                         kink_coords=sum(r.get("kink_coords", 0) for r in rs)))
    return rows


def format_errors(rows: list[dict]) -> str:
    """`worst_per_param` rows as a plain-text table (what `netalchemy run gradcheck` prints)."""
    cols = [("param", "param"), ("checks", "checks"), ("hand_vs_autodiff_f64", "hand~auto f64"),
            ("hand_vs_autodiff_f32", "hand~auto f32"), ("hand_vs_fd", "hand~FD"),
            ("autodiff_vs_fd", "auto~FD"), ("kink_coords", "kinks/FD coords"),
            ("hand_vs_fd_at_kinks", "hand~FD at kinks")]
    fmt = lambda v: "—" if v is None else (f"{v:.2e}" if isinstance(v, float) else str(v))
    table = [[h for _, h in cols]]
    for r in rows:
        cells = [fmt(r[k]) for k, _ in cols]
        cells[6] = f"{r['kink_coords']}/{r['fd_coords']}" if r["fd_coords"] else "—"
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
