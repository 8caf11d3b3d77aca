"""Questions asked of every run of a finished sweep: its outputs, hidden layers and weights.

`sweep.run` returns the final states with a leading (runs,) axis (`SweepResult.final`).
These functions answer for all runs at once in one compiled program (`vmap` over runs,
`jit`), so an experiment never writes its own `vmap`. `map_runs` is the general form;
the others are the questions experiments ask most.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import mlp, probes
from netalchemy.config import Config

Array = jax.Array


@partial(jax.jit, static_argnames=("fn", "static"))
def _mapped(fn: Callable, batched: tuple, shared: tuple, static: tuple) -> Any:
    return jax.vmap(lambda b: fn(*b, *shared, **dict(static)))(batched)


def map_runs(fn: Callable, batched: tuple, *shared: Any, **static: Any) -> Any:
    """`fn(*one run's batched, *shared, **static)` for every run: host arrays with a leading (runs,) axis.

    Args:
      fn: a module-level function (a new lambda per call would compile again).
      batched: a tuple of pytrees whose leaves have the leading (runs,) axis.
      shared: arrays every run sees whole (e.g. the inputs x).
      static: hashable settings compiled into the program (e.g. `cfg=`).
    """
    return jax.device_get(_mapped(fn, tuple(batched), tuple(shared), tuple(sorted(static.items()))))


def _logits(params, bn_state, x, *, cfg):
    return mlp.apply(params, bn_state, x, cfg=cfg.model, train=False)[0]


def _probabilities(params, bn_state, x, *, cfg):
    return jax.nn.softmax(_logits(params, bn_state, x, cfg=cfg), axis=-1)


def _layers(params, bn_state, x, *, cfg):
    return probes.representations(params, bn_state, x, cfg=cfg.model)


def _flat(params):
    return ravel_pytree(params)[0]


def logits(final: Any, x: Array, *, cfg: Config) -> np.ndarray:
    """Logits (runs, batch, classes) of every run's params on `x` (batch, features), evaluation mode."""
    return map_runs(_logits, (final.params, final.bn_state), jnp.asarray(x, cfg.model.dtype), cfg=cfg)


def probabilities(final: Any, x: Array, *, cfg: Config) -> np.ndarray:
    """Softmax outputs (runs, batch, classes) of every run on `x`, evaluation mode."""
    return map_runs(_probabilities, (final.params, final.bn_state), jnp.asarray(x, cfg.model.dtype), cfg=cfg)


def layers(final: Any, x: Array, *, cfg: Config) -> tuple[np.ndarray, ...]:
    """Every layer's view of `x` per run, evaluation mode (`probes.representations`):
    (input, hidden 1, …, hidden L, logits), each (runs, batch, width)."""
    return map_runs(_layers, (final.params, final.bn_state), jnp.asarray(x, cfg.model.dtype), cfg=cfg)


def flat_params(params: Any) -> np.ndarray:
    """Every run's parameters as one vector: (runs, n_params) (`jax.flatten_util.ravel_pytree` order)."""
    return map_runs(_flat, (params,))


def at(tree: Any, run: int) -> Any:
    """One run's slice of a pytree with a leading (runs,) axis."""
    return jax.tree.map(lambda a: a[run], tree)
