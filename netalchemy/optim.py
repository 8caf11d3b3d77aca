"""optax optimizers by name, with learning-rate schedules and optional clipping.

`make(cfg, total_steps, lr=...)` builds a plain `optax.GradientTransformation`. The learning
rate may be a traced array, so a sweep can `vmap` over a grid of learning rates: the
optimizer is built inside the vmapped function, each run with its own rate.
"""

from __future__ import annotations

from typing import Optional

import jax.numpy as jnp
import optax

from netalchemy.config import OptimConfig


def schedule(cfg: OptimConfig, total_steps: int, lr=None) -> optax.Schedule:
    """Learning rate as a function of the step: constant, cosine decay, or warm-up + cosine."""
    peak = cfg.lr if lr is None else lr
    if cfg.schedule == "constant":
        if cfg.warmup_steps:
            return optax.join_schedules([optax.linear_schedule(0.0, peak, cfg.warmup_steps),
                                         optax.constant_schedule(peak)], [cfg.warmup_steps])
        return optax.constant_schedule(peak)
    if cfg.schedule == "cosine":
        return optax.cosine_decay_schedule(peak, max(total_steps, 1))
    return optax.warmup_cosine_decay_schedule(0.0, peak, cfg.warmup_steps, max(total_steps, cfg.warmup_steps + 1))


def make(cfg: OptimConfig, total_steps: int, *, lr: Optional[jnp.ndarray] = None) -> optax.GradientTransformation:
    """The optimizer named by `cfg.name`, at `lr` (default `cfg.lr`), with `cfg`'s schedule.

    sgd: plain gradient descent; momentum / nesterov: heavy-ball / Nesterov momentum
    (Sutskever et al. 2013); adam (Kingma & Ba 2015); adamw (Loshchilov & Hutter 2019);
    rmsprop (Tieleman & Hinton 2012).
    """
    rate = schedule(cfg, total_steps, lr)
    if cfg.name == "sgd":
        tx = optax.sgd(rate)
    elif cfg.name in ("momentum", "nesterov"):
        tx = optax.sgd(rate, momentum=cfg.momentum, nesterov=cfg.name == "nesterov")
    elif cfg.name == "adam":
        tx = optax.adam(rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
    elif cfg.name == "adamw":
        tx = optax.adamw(rate, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay)
    elif cfg.name == "rmsprop":
        tx = optax.rmsprop(rate, decay=cfg.rms_decay, eps=cfg.eps)
    else:  # config validation makes this unreachable
        raise ValueError(f"unknown optimizer {cfg.name!r}")
    if cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), tx)
    return tx


def state_slots(cfg: OptimConfig) -> int:
    """How many param-sized arrays the optimizer keeps (for memory estimates)."""
    return {"sgd": 0, "momentum": 1, "nesterov": 1, "adam": 2, "adamw": 2, "rmsprop": 1}[cfg.name]
