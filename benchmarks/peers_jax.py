"""The plain-JAX peer and JAX's matmul rate.

  jax_ref   plain JAX, nothing else: an MLP as a list of (w, b), optax.adam, minibatches by
            uniform random indices, `lax.scan` over steps, `vmap` over seeds, one jit. Its lever
            ways take the step apart (`settings.VARIANTS`): SGD instead of Adam, one fixed
            minibatch instead of a gather, or both (the step's dots and little else).
  matmul    one n×n float32 `a @ b`, jit-compiled.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .settings import WORKLOADS, variants
from .worker import Runner


def jax_ref_runner(spec: dict, data: dict) -> Runner:
    """`spec["seeds"]` seeds of a workload, `spec["steps"]` steps, in one jitted scan+vmap."""
    w = WORKLOADS[spec["workload"]]
    steps, n_seeds, batch = spec["steps"], spec["seeds"], w.batch
    x, y = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    changes = variants(spec)
    tx = optax.sgd(w.lr) if "sgd" in changes else optax.adam(w.lr)
    fixed = "fixed_batch" in changes

    def init(key):
        keys = jax.random.split(key, len(w.widths) - 1)
        params = [(jax.random.normal(k, (a, b)) * jnp.sqrt(2.0 / a), jnp.zeros(b))
                  for k, a, b in zip(keys, w.widths[:-1], w.widths[1:])]
        return params, tx.init(params)

    def loss_fn(params, xb, yb):
        h = xb
        for wt, b in params[:-1]:
            h = jax.nn.relu(h @ wt + b)  # (batch, width)
        logits = h @ params[-1][0] + params[-1][1]  # (batch, classes)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean()

    def one_seed(params, opt_state, key, x, y):
        def step(carry, k):
            params, opt_state = carry
            if fixed:  # the first minibatch, every step (the key still goes unused through the scan)
                xb, yb = x[:batch], y[:batch]
            else:
                idx = jax.random.randint(k, (batch,), 0, x.shape[0])
                xb, yb = x[idx], y[idx]
            loss, grads = jax.value_and_grad(loss_fn)(params, xb, yb)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
        return params, losses[-1]

    train_all = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, None, None)))
    params, opt_state = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(0), n_seeds))
    keys = jax.random.split(jax.random.key(1), n_seeds)
    program = {"optimizer": "sgd" if "sgd" in changes else "adam", "fixed_batch": fixed}
    return Runner(lambda: jax.block_until_ready(train_all(params, opt_state, keys, x, y)), info=lambda: program)


def matmul_runner(spec: dict, data: dict) -> Runner:
    """One `spec["matmul_size"]`² float32 matmul per call."""
    size = spec["matmul_size"]
    rng = np.random.default_rng(0)
    a, b = (jax.device_put(rng.standard_normal((size, size), dtype=np.float32)) for _ in range(2))
    mm = jax.jit(lambda a, b: a @ b)
    return Runner(lambda: mm(a, b).block_until_ready())
