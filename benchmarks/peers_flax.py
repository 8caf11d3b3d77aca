"""The Flax NNX peer, as Flax's examples write a training loop.

  flax_nnx  an `nnx.Module` MLP, `nnx.Optimizer`, an `@nnx.jit` train step called from a
            Python loop with minibatches gathered on the host by numpy; one seed.
"""

from __future__ import annotations

import numpy as np
import optax
from flax import nnx

from .settings import WORKLOADS
from .worker import Runner


class MLP(nnx.Module):
    """Dense layers with ReLU between them, as Flax NNX's examples write an MLP."""

    def __init__(self, widths, *, rngs: nnx.Rngs):
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = nnx.relu(layer(x))
        return self.layers[-1](x)


@nnx.jit
def _nnx_train_step(model: MLP, optimizer: nnx.Optimizer, x, y):
    def loss_fn(model):
        return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss


def flax_nnx_runner(spec: dict, data: dict) -> Runner:
    """One seed of a workload, `spec["steps"]` calls of an `@nnx.jit` step from Python."""
    w = WORKLOADS[spec["workload"]]
    model = MLP(w.widths, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(w.lr), wrt=nnx.Param)
    x, y = data["x_train"], data["y_train"]
    rng = np.random.default_rng(0)

    def run():
        loss = None
        for _ in range(spec["steps"]):
            idx = rng.integers(0, len(x), w.batch)
            loss = _nnx_train_step(model, optimizer, x[idx], y[idx])
        return float(loss)

    return Runner(run)
