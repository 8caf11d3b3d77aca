"""benchmarks/step_dots.py: the dots it times are exactly the dots of a training step."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netalchemy import bench

bench.load()
from benchmarks.settings import WORKLOADS, flops_per_step  # noqa: E402
from benchmarks.step_dots import Dot, jax_dot, step_dots, torch_dot  # noqa: E402


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


@pytest.mark.parametrize("contract", [(1, 0), (0, 0), (1, 1)])
@pytest.mark.parametrize("runs", [1, 3])
def test_the_timed_dots_compute_the_product_they_are_named_for(contract, runs):
    """JAX's (batched over runs) and PyTorch's kernels give numpy's product, so both time the same work."""
    m, k, n = 5, 4, 3
    lhs = (m, k) if contract[0] == 1 else (k, m)
    rhs = (k, n) if contract[1] == 0 else (n, k)
    dot = Dot("d", lhs, rhs, contract)
    fn, x, y = jax_dot(dot, runs)
    x, y, got = np.asarray(x), np.asarray(y), np.asarray(fn(x, y))
    a = x if contract[0] == 1 else np.swapaxes(x, -1, -2)
    b = y if contract[1] == 0 else np.swapaxes(y, -1, -2)
    assert got.shape == ((runs,) if runs > 1 else ()) + (m, n)
    np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-5)
    assert 2 * m * k * n == dot.flops
    torch = pytest.importorskip("torch")
    fn, x, y = torch_dot(dot, runs)
    a = x.numpy() if contract[0] == 1 else np.swapaxes(x.numpy(), -1, -2)
    b = y.numpy() if contract[1] == 0 else np.swapaxes(y.numpy(), -1, -2)
    np.testing.assert_allclose(fn(x, y).numpy(), a @ b, rtol=1e-5, atol=1e-5)
    assert torch.is_tensor(fn(x, y))


def test_the_timed_adam_update_is_optax_adam_on_each_run():
    """The stacked update equals optax.adam applied to each run alone; its byte count is 7 passes."""
    import optax

    from benchmarks.step_dots import adam_bytes, adam_update

    widths, runs = (3, 4, 2), 2
    fn, grads, state, params = adam_update(widths, runs)
    before = [np.asarray(p) for p in params]
    g = [np.asarray(x) for x in grads]
    _, after = fn(grads, state, params)
    tx = optax.adam(1e-3)
    for r in range(runs):
        p_r, g_r = [p[r] for p in before], [x[r] for x in g]
        updates, _ = tx.update(g_r, tx.init(p_r), p_r)
        for got, want in zip(after, optax.apply_updates(p_r, updates)):
            np.testing.assert_allclose(np.asarray(got)[r], want, rtol=1e-6, atol=1e-7)
    assert adam_bytes(widths, runs) == 7 * 4 * runs * (3 * 4 + 4 + 4 * 2 + 2)


def test_the_benchmark_profiles_a_step_in_a_process_of_its_own_and_reports_its_ceilings():
    """The driver's step profile (W1 at 2 seeds, one repeat) comes back as JSON whose ceilings add up:
    dots + update is slower than the dots alone; the table sets the engine program's rate beside them."""
    import dataclasses
    import os

    from benchmarks import driver, report
    from benchmarks import settings as S

    settings = dataclasses.replace(S.PROFILES["tiny"], step_profile_repeats=1, matmul_size=256)
    lines = []
    p = driver.step_profile("W1:2", settings, False, dict(os.environ), lines.append)
    assert "error" not in p, p
    c = p["ceilings"]
    assert (p["workload"], p["seeds"], len(p["dots"])) == ("W1", 2, 8) and "torch" not in c
    assert c["jax+adam"]["step_s"] == pytest.approx(c["jax"]["step_s"] + p["adam_s"])
    assert c["jax+adam"]["seed_steps_per_s"] < c["jax"]["seed_steps_per_s"]
    assert c["jax"]["seed_steps_per_s"] == pytest.approx(2 / sum(d["jax_s"] for d in p["dots"]))
    assert p["step_gflop"] == pytest.approx(2 * flops_per_step(WORKLOADS["W1"].widths, WORKLOADS["W1"].batch) / 1e9)
    failed = driver.step_profile("W1:0", settings, False, dict(os.environ), lines.append)  # refused by step_dots
    assert failed["workload"] == "W1" and "--seeds must be at least 1" in failed["error"]
    assert any(line.startswith("step profile W1:0 failed") for line in lines)
    program = 0.5 * c["jax+adam"]["seed_steps_per_s"]
    results = {"workloads": {"W1": {}}, "step_profiles": [p, failed],
               "cells": [{"workload": "W1", "way": "engine_chunk", "seeds": 2, "seed_steps_per_s": program}]}
    table = report.ceiling_lines(results, markdown=True)
    assert table[0].startswith("Step ceilings") and table[2].startswith("| workload | seeds | JAX dots |")
    row, bad = table[4], table[5]
    assert row.startswith("| W1 | 2 | ") and row.endswith(f"| {program:,.0f} | 0.50 |")
    assert bad.startswith("| W1 | 0 | failed: ") and bad.count("|") == row.count("|")
    assert report.ceiling_lines({"step_profiles": []}, markdown=True) == []


def test_a_step_profile_names_a_workload_and_a_seed_count():
    from netalchemy import config as C
    from benchmarks import settings as S

    with pytest.raises(C.ConfigError, match="step_profiles: 'W3:4' is not WORKLOAD:SEEDS"):
        S.BenchSettings(step_profiles=("W3:4",))
    with pytest.raises(C.ConfigError, match="not WORKLOAD:SEEDS"):
        S.BenchSettings(step_profiles=("W1",))
