"""benchmarks/step_dots.py: the dots it times are exactly the dots of a training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netalchemy import bench

bench.load()
from benchmarks.settings import WORKLOADS, flops_per_step  # noqa: E402
from benchmarks.step_dots import step_dots  # noqa: E402


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_the_dots_add_up_to_the_step_flops(name):
    w = WORKLOADS[name]
    dots = step_dots(w.widths, w.batch)
    assert sum(d.flops for d in dots) == flops_per_step(w.widths, w.batch)
    assert len(dots) == 3 * (len(w.widths) - 1) - 1


def test_the_dots_are_the_ones_jax_grad_emits():
    """Same shapes and contracting dimensions as the dot_generals in the jaxpr of a grad step."""
    widths, batch = (6, 5, 4, 3), 7
    params = [jnp.ones((a, b)) for a, b in zip(widths[:-1], widths[1:])]

    def loss(params, x):
        h = x
        for w in params[:-1]:
            h = jax.nn.relu(h @ w)
        return (h @ params[-1]).sum()

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params, jnp.ones((batch, widths[0])))
    emitted = sorted((tuple(e.invars[0].aval.shape), tuple(e.invars[1].aval.shape),
                      (e.params["dimension_numbers"][0][0][0], e.params["dimension_numbers"][0][1][0]))
                     for e in jaxpr.jaxpr.eqns if e.primitive.name == "dot_general")
    ours = sorted((d.lhs, d.rhs, d.contract) for d in step_dots(widths, batch))
    # jax.grad may put the operands of a weight gradient either way round; compare as unordered pairs
    canon = lambda dots: sorted(tuple(sorted([(l, c[0]), (r, c[1])])) for l, r, c in dots)  # noqa: E731
    assert canon(emitted) == canon(ours)
    assert np.isclose(sum(d.flops for d in step_dots(widths, batch)), 2 * batch * (3 * (30 + 20 + 12) - 30))
