"""How an optimizer moves the weights: oscillation and per-parameter step sizes (M8).

`UpdateDynamics` is a
measurement hook (`train.measured`): at each evaluation it replays the run's next `steps`
optimizer steps exactly as training will take them (same minibatches, dropout masks and
optimizer state, `train.train_step` at the config's learning rate) and measures their
updates Δθ_k = θ_{k+1} − θ_k (parameters flattened, (steps, P)):

- ``sign_flips``: the fraction of parameters whose update changes sign between consecutive
  steps, averaged over the `steps − 1` pairs. Plain SGD on noisy minibatch gradients flips
  often; heavy-ball momentum averages the gradients (Polyak 1964; Sutskever et al. 2013), so
  a damped update flips less (Goh 2017, "Why momentum really works").
- ``step_spread``: log10 of the interquartile ratio q75/q25 of |Δθ_i| over the parameters,
  averaged over the steps: how many decades separate large and small per-parameter steps.
  SGD steps ∝ |g_i|, which spans decades; Adam and RMSProp divide by a running RMS of g_i
  (Tieleman & Hinton 2012; Kingma & Ba 2015), which equalises the steps.

Both are invariant to a positive rescaling of the updates, so to the learning rate's size
at a given state. The replay does not change the run: a hook only reads the state.
"""

from __future__ import annotations

from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import train
from netalchemy.config import Config

__all__ = ["UpdateDynamics", "log_interquartile_ratio", "replay_updates", "sign_flip_fraction"]


def replay_updates(state: train.TrainState, streams: train.Streams, data: train.Data, *, cfg: Config,
                   steps: int) -> jax.Array:
    """(steps, P) flattened updates of the run's next `steps` training steps from `state`, at `cfg.optim.lr`."""
    def body(s, _):
        new, _ = train.train_step(s, streams, data, jnp.asarray(cfg.optim.lr), cfg=cfg)
        flat = lambda p: jnp.concatenate([jnp.ravel(a) for a in jax.tree.leaves(p)])  # noqa: E731
        return new, flat(new.params) - flat(s.params)

    return jax.lax.scan(body, state, None, length=steps)[1]


def sign_flip_fraction(updates: jax.Array) -> jax.Array:
    """() mean over consecutive pairs of the fraction of parameters whose update changes sign;
    `updates` (steps ≥ 2, P). Parameters not moved in either step of a pair (zero update, e.g. a
    dead unit) are left out of that pair; NaN when no parameter moves."""
    a, b = updates[:-1], updates[1:]  # (steps - 1, P)
    moved = (a != 0) & (b != 0)
    flips = jnp.sum(moved & (jnp.sign(a) != jnp.sign(b)), axis=1) / jnp.sum(moved, axis=1)
    return jnp.mean(flips)


def log_interquartile_ratio(updates: jax.Array) -> jax.Array:
    """() mean over steps of log10(q75 / q25) of |Δθ_i| over the parameters that moved;
    `updates` (steps, P). 0 when every moved parameter takes a step of the same size."""
    size = jnp.where(updates != 0, jnp.abs(updates), jnp.nan)  # (steps, P)
    q25, q75 = jnp.nanquantile(size, jnp.array([0.25, 0.75]), axis=1)
    return jnp.mean(jnp.log10(q75 / q25))


@dataclass(frozen=True)
class UpdateDynamics:
    """Measurement hook: {"sign_flips": (), "step_spread": ()} of the next `steps` updates (module docstring)."""

    steps: int = 4

    def __post_init__(self) -> None:
        if self.steps < 2:
            raise ValueError(f"UpdateDynamics needs at least 2 steps to compare, got {self.steps}")

    def __call__(self, state, streams, data, cfg):
        updates = replay_updates(state, streams, data, cfg=cfg, steps=self.steps)
        return {"sign_flips": sign_flip_fraction(updates), "step_spread": log_interquartile_ratio(updates)}
