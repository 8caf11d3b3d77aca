"""Measurement hooks for the engine: what a run is asked at step 0 and after every evaluation interval.

A hook is a hashable callable `measure(state, streams, data, cfg) -> {name: array}` written for ONE run;
`sweep.run(..., measure=hook)` compiles it into the training program, vmaps it over the runs and returns
`result.measures[name]` with shape (runs, evaluations, *shape). See `train.measured`.

- `GradientNoise`: minibatch-gradient variance E‖g_B − g_N‖² at several batch sizes (McCandlish et al. 2018).
- `relu_activity`: active (example, unit) pairs and dead units per hidden layer (Glorot et al. 2011).
- `Smoothness`: loss range, gradient predictiveness, effective β-smoothness and internal covariate shift
  (Santurkar et al. 2018, "How Does Batch Normalization Help Optimization?").
Outside training: `throughput`, the examples per second of one run in the engine's compiled program.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import backprop, mlp, stats, sweep, train
from netalchemy.config import Config, ModelConfig
from netalchemy.data import Dataset


@partial(jax.jit, static_argnames=("cfg", "batch_size", "minibatches", "grad", "examples_at_once"))
def minibatch_gradient_noise(params, bn_state, x: jax.Array, y: jax.Array, key: jax.Array, *, cfg: ModelConfig,
                             batch_size: int, minibatches: int, grad: str = "autodiff",
                             examples_at_once: int = 4096) -> jax.Array:
    """E‖g_B − g_N‖² () of one net on x (N, features), y (N,).

    The mean over `minibatches` subsets of B = `batch_size` examples drawn without replacement with `key`;
    g is the flat gradient (P,) of the mean cross-entropy in training mode, g_N that of all N examples.
    Sampling theory: E = (1/B − 1/N) · N/(N − 1) · mean_i ‖g_i − g_N‖². The minibatches are evaluated
    `max(1, examples_at_once // B)` at a time (a chunked `lax.map`), so at most about `examples_at_once`
    examples and that many / B gradients (P,) are live at once, whatever `minibatches` is.
    """
    flat = lambda xs, ys: ravel_pytree(backprop.gradient_fn(grad)(  # noqa: E731
        params, bn_state, xs, ys, cfg=cfg, key=jax.random.key(0))[0])[0]
    full = flat(x, y)  # (P,)

    def one(k):
        idx = jax.random.permutation(k, x.shape[0])[:batch_size]  # (B,)
        return jnp.sum(jnp.square(flat(x[idx], y[idx]) - full))

    chunk = max(1, min(minibatches, examples_at_once // batch_size))
    return jnp.mean(jax.lax.map(one, jax.random.split(key, minibatches), batch_size=chunk))


@dataclass(frozen=True)
class GradientNoise:
    """Measurement hook: {"noise": (sizes,)}, E‖g_B − g_N‖² of one run (`minibatch_gradient_noise`) at each
    of `batch_sizes` below N, over `minibatches` subsets per size; at step t the subsets of size B are drawn
    with fold_in(fold_in(data key, t), B). Memory: about `examples_at_once` examples per run at once, so a
    sweep of R runs (the engine vmaps the hook) holds R × `examples_at_once` (McCandlish et al. 2018)."""

    batch_sizes: tuple[int, ...]
    minibatches: int
    examples_at_once: int = 4096

    def __call__(self, state: train.TrainState, streams: train.Streams, data: train.Data, cfg: Config) -> dict:
        key, n = jax.random.fold_in(streams.data, state.step), data.x_train.shape[0]
        return {"noise": jnp.stack([minibatch_gradient_noise(
            state.params, state.bn_state, data.x_train, data.y_train, jax.random.fold_in(key, b), cfg=cfg.model,
            batch_size=b, minibatches=self.minibatches, grad=cfg.train.grad, examples_at_once=self.examples_at_once)
            for b in self.batch_sizes if b < n])}


def effective_batch_size(batch_size, n: int) -> np.ndarray:
    """B_eff = 1/(1/B − 1/N): E‖g_B − g_N‖² ∝ 1/B_eff exactly for B of N drawn without replacement."""
    return 1.0 / (1.0 / np.asarray(batch_size, np.float64) - 1.0 / n)


def noise_slopes(batch_sizes, noise, n: int) -> np.ndarray:
    """Per-run slope (runs,) of log E‖g_B − g_N‖² against log B_eff (−1 by sampling theory); `noise`:
    (runs, batch sizes), as `GradientNoise` measures it at one evaluation."""
    return np.array([stats.slope_loglog(effective_batch_size(batch_sizes, n), row).slope for row in np.asarray(noise)])


def relu_activity(state, streams, data: train.Data, cfg: Config) -> dict[str, jax.Array]:
    """Measurement hook: per hidden layer (layers,), "active", the fraction of (test example, unit) pairs with
    pre-activation > 0, and "dead", the fraction of units with pre-activation ≤ 0 on every test example
    (Glorot et al. 2011 on ReLU sparsity; Lu et al. 2020 on dying ReLU). Evaluation mode; `streams` unused."""
    hidden = mlp.forward(state.params, state.bn_state, data.x_test, cfg=cfg.model, train=False).hidden
    on = [h.pre_activation > 0 for h in hidden]  # (examples, units) each
    return {"active": jnp.stack([jnp.mean(a) for a in on]), "dead": jnp.stack([jnp.mean(~a.any(0)) for a in on])}


@dataclass(frozen=True)
class Smoothness:
    """Measurement hook: Santurkar et al. 2018 measures of one run at its state, on the minibatch its next
    step uses, BN in training mode (fields: `etas`, the steps along −g; `lr`, the SGD step of ICS).

    With g = ∇L(θ): loss_range max_η L(θ − ηg) − min_η L(θ − ηg); grad_pred (gradient
    predictiveness, fig. 4b) max_η ‖g − ∇L(θ − ηg)‖; beta (effective β-smoothness, fig. 4c) max_η
    ‖g − ∇L(θ − ηg)‖ / ‖ηg‖; ICS of layer i ≥ 2 (Def. 2.1), G = ∇_{W_i} L(θ) and G' the same with
    layers < i at θ − lr·g: ics_l2 ‖G − G'‖, ics_rel ‖G − G'‖ / ‖G‖, ics_cos cos(G, G'). Norms are
    of raveled pytrees. Returns () loss, grad_norm, loss_range, grad_pred, beta; (etas,) losses_along
    and grad_change; (layers − 1,) ics_l2, ics_rel, ics_cos.
    """

    etas: tuple[float, ...]
    lr: float

    def __call__(self, state: train.TrainState, streams: train.Streams, data: train.Data, cfg: Config) -> dict:
        idx = train.batch_indices(streams.data, state.step, n=data.x_train.shape[0], batch_size=cfg.train.batch_size,
                                  sampling=cfg.train.sampling)
        x, y, params = data.x_train[idx], data.y_train[idx], state.params  # (batch, features), (batch,)
        grad = lambda p: backprop.autodiff_grad(p, state.bn_state, x, y, cfg=cfg.model)  # noqa: E731 (g, aux)
        flat, positive = (lambda t: ravel_pytree(t)[0]), (lambda v: jnp.where(v > 0, v, jnp.nan))  # noqa: E731
        minus = lambda eta, g, p: jax.tree.map(lambda gi, pi: pi - eta * gi, g, p)  # noqa: E731 (None leaves stay)
        g, aux = grad(params)
        along = [grad(minus(eta, g, params)) for eta in self.etas]
        losses_along = jnp.stack([a.loss for _, a in along])  # (etas,) L(θ − ηg)
        grad_change = jnp.stack([jnp.linalg.norm(flat(g) - flat(g2)) for g2, _ in along])  # (etas,)
        stepped, ics = minus(self.lr, g, params), []
        for i in range(1, len(params)):  # layers < i stepped, layers ≥ i at θ
            a, b = flat(g[i]), flat(grad((*stepped[:i], *params[i:]))[0][i])
            diff, na = jnp.linalg.norm(a - b), jnp.linalg.norm(a)
            ics.append(jnp.stack([diff, diff / positive(na), a @ b / positive(na * jnp.linalg.norm(b))]))
        ics = jnp.stack(ics) if ics else jnp.zeros((0, 3), aux.loss.dtype)  # (layers − 1, 3)
        gnorm = jnp.linalg.norm(flat(g))
        return {"loss": aux.loss, "grad_norm": gnorm, "losses_along": losses_along, "grad_change": grad_change,
                "loss_range": jnp.max(losses_along) - jnp.min(losses_along), "grad_pred": jnp.max(grad_change),
                "beta": jnp.max(grad_change / (jnp.asarray(self.etas, gnorm.dtype) * positive(gnorm))),
                "ics_l2": ics[:, 0], "ics_rel": ics[:, 1], "ics_cos": ics[:, 2]}


def throughput(cfg: Config, dataset: Dataset, *, repeats: int) -> np.ndarray:
    """Examples/s (repeats,) of one run (seed `cfg.seeds.start`, rate `cfg.optim.lr`) in the engine's program:
    `sweep.train_chunk` over one evaluation interval of `cfg.train.eval_every` steps of `cfg.train.batch_size`,
    then its evaluation; timed after a warm-up call that compiles, the donated states re-made (untimed) before
    every call."""
    mesh, axes, dtype = sweep.device_mesh(1), sweep.stream_axes(cfg), cfg.model.dtype
    streams = sweep.shard_runs(sweep.run_streams(cfg, np.array([cfg.seeds.start])), mesh, axes)
    lrs = sweep.shard_runs(jnp.full((1,), cfg.optim.lr, dtype), mesh)
    data = sweep.shard_runs(train.Data(*(jnp.asarray(a, t) for a, t in zip(
        (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), (dtype, jnp.int32) * 2))),
        mesh, (None,) * 4)  # replicated
    init = partial(sweep.init_states, streams, lrs, cfg=cfg, axes=axes, in_features=dataset.x_train.shape[1],
                   num_classes=dataset.num_classes)
    seconds = []
    for _ in range(repeats + 1):  # the first call compiles and warms up
        states = jax.block_until_ready(init())
        start = time.perf_counter()
        jax.block_until_ready(sweep.train_chunk(states, streams, data, lrs, cfg=cfg, axes=axes, intervals=1))
        seconds.append(time.perf_counter() - start)
    return cfg.train.eval_every * cfg.train.batch_size / np.array(seconds[1:])
