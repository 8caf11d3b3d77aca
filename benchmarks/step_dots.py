"""The dots of one training step, timed one at a time against the machine's square-matmul rate.

    python -m benchmarks.step_dots [--workload W2] [--seeds 1] [--repeats 30] [--size 2048]

A step of an MLP with widths (a0, a1, ..., aL) on a batch of B does, per layer i (fan_in a, fan_out b):
forward (B, a) @ (a, b); weight gradient x^T delta, (a, B) @ (B, b), contracting the batch; and, for
every layer but the first, input gradient delta W^T, (B, b) @ (b, a). Their FLOPs add up to
`settings.flops_per_step`. Each dot is jit-compiled as `jax.grad` emits it (`lax.dot_general` with the
same contracting dimensions, no explicit transpose) and timed alone, interleaved with the others and with
the n x n matmul, `--repeats` calls each (median), each timed call right after an untimed one so that
its operands are in cache, as they are in a step (the forward pass has just read them). Printed per dot: its shape, GFLOP, GFLOP/s and the
fraction of the n x n rate, then the step's dot ceiling: the step's FLOPs ÷ the summed dot times, as a
fraction of the n x n rate. A training step cannot run faster than its dots, so this ceiling is what
bounds `% of the matmul rate` on this machine before any optimizer, gather or evaluation cost.

With `--seeds N` > 1 each dot is the batched dot that `jax.vmap` over N runs emits (a leading run
dimension on both operands, `dot_general` batch dimensions), its operands sharded over the CPU devices
the `netalchemy` command sets up (one per core), as the engine shards its runs; the ceiling is then
also given in seed-steps/s, the unit of `netalchemy bench`'s tables, to set beside the engine's and
the peers' throughput. `--torch` times PyTorch's kernels for the same dots, interleaved: the peers'
ceiling. Last, an Adam update of the runs' params is timed alone (memory-bound: 7 passes over them), with
the machine's streaming rate over as many bytes, and the step's ceiling is given with each.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import NamedTuple, Sequence

from .settings import WORKLOADS, flops_per_step, matmul_flops


class Dot(NamedTuple):
    name: str  # e.g. "layer 1 forward"
    lhs: tuple[int, int]
    rhs: tuple[int, int]
    contract: tuple[int, int]  # contracting dimension of lhs and of rhs (lax.dot_general)

    @property
    def flops(self) -> int:
        k = self.lhs[self.contract[0]]
        m = self.lhs[1 - self.contract[0]]
        n = self.rhs[1 - self.contract[1]]
        return 2 * m * k * n


def step_dots(widths: Sequence[int], batch: int) -> list[Dot]:
    """Every dot of one forward + backward pass of an MLP, as `jax.grad` emits them."""
    dots = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
        dots.append(Dot(f"layer {i} forward", (batch, a), (a, b), (1, 0)))
        dots.append(Dot(f"layer {i} weight grad", (batch, a), (batch, b), (0, 0)))
        if i > 1:  # nothing needs the gradient of the data
            dots.append(Dot(f"layer {i} input grad", (batch, b), (a, b), (1, 1)))
    return dots


def _runs_sharding(runs: int):
    """A leading run axis split over the CPU devices (one device when they do not divide `runs`)."""
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = jax.devices()
    shards = len(devices) if runs % len(devices) == 0 else 1
    return NamedSharding(Mesh(np.array(devices[:shards]), ("runs",)), PartitionSpec("runs"))


def jax_dot(dot: Dot, runs: int = 1):
    """`dot` as a jitted `lax.dot_general` on random float32 operands, batched over `runs` runs (a leading
    run dimension on both, sharded over the devices) when `runs` > 1. Returns (function, lhs, rhs)."""
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    c = dot.contract
    if runs == 1:
        x, y = (jax.device_put(rng.standard_normal(s, dtype=np.float32)) for s in (dot.lhs, dot.rhs))
        dims = (((c[0],), (c[1],)), ((), ()))
    else:
        sharding = _runs_sharding(runs)
        x, y = (jax.device_put(rng.standard_normal((runs, *s), dtype=np.float32), sharding)
                for s in (dot.lhs, dot.rhs))
        dims = (((c[0] + 1,), (c[1] + 1,)), ((0,), (0,)))
    return jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims)), x, y


def torch_dot(dot: Dot, runs: int = 1):
    """The same dot in PyTorch, the peers' kernel for it: `torch.matmul` of transposed views, batched over
    `runs` when > 1. Returns (function, lhs, rhs)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    lead = (runs,) if runs > 1 else ()
    x, y = (torch.randn(*lead, *s, generator=gen) for s in (dot.lhs, dot.rhs))
    flip = (dot.contract[0] == 0, dot.contract[1] == 1)  # to (..., m, k) @ (..., k, n)
    return (lambda x, y: torch.matmul(x.transpose(-1, -2) if flip[0] else x,
                                      y.transpose(-1, -2) if flip[1] else y)), x, y


def adam_update(widths: Sequence[int], runs: int = 1):
    """One Adam update (`optax.adam`, as the benchmark's engine config uses) of an MLP's weights and biases
    for `runs` runs stacked on a leading axis (sharded over the devices when it divides), jitted with the
    params and moments donated, as in the engine's step. Returns (function, grads, state, params)."""
    import jax
    import numpy as np
    import optax

    rng = np.random.default_rng(0)
    sharding = _runs_sharding(runs)
    shapes = [s for a, b in zip(widths[:-1], widths[1:]) for s in ((runs, a, b), (runs, b))]
    params, grads = ([jax.device_put(rng.standard_normal(s, dtype=np.float32), sharding) for s in shapes]
                     for _ in range(2))
    tx = optax.adam(1e-3)
    state = jax.jit(tx.init)(params)

    def update(grads, state, params):
        updates, state = tx.update(grads, state, params)
        return state, optax.apply_updates(params, updates)

    return jax.jit(update, donate_argnums=(1, 2)), grads, state, params


def adam_bytes(widths: Sequence[int], runs: int = 1) -> int:
    """Bytes an Adam update must move at least: read grads, both moments and params, write both moments
    and params (7 float32 passes over every weight and bias of `runs` runs)."""
    return 7 * 4 * runs * sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))


def _warm_timer(step):
    """A function timing one warm call of `step` (which waits for its result): compiled first, then each
    timed call comes right after an untimed one, which brings its operands back into cache, as in a
    training step, where the work before has just read them."""
    step()  # compile

    def call() -> float:
        step()
        start = time.perf_counter()
        step()
        return time.perf_counter() - start

    return call


def _stream_timer(nbytes: int):
    """A function timing one warm in-place scale of a float32 array, reading and writing `nbytes` in all:
    the machine's streaming rate, which bounds any optimizer update."""
    import jax
    import jax.numpy as jnp

    box = {"x": jnp.ones(max(1, nbytes // 8), jnp.float32)}
    scale = jax.jit(lambda x: x * 1.0001, donate_argnums=0)

    def step():
        box["x"] = scale(box["x"])
        box["x"].block_until_ready()

    return _warm_timer(step)


def _update_timer(widths: Sequence[int], runs: int):
    """A function timing one warm Adam update (see `adam_update`)."""
    import jax

    fn, grads, state, params = adam_update(widths, runs)
    box = {"state": state, "params": params}

    def step():
        box["state"], box["params"] = fn(grads, box["state"], box["params"])
        jax.block_until_ready(box["params"])

    return _warm_timer(step)


def _timer(dot: Dot, runs: int, library: str):
    """A function timing one warm call of the dot (`_warm_timer`) in JAX or PyTorch."""
    fn, x, y = (jax_dot if library == "jax" else torch_dot)(dot, runs)
    if library == "jax":
        return _warm_timer(lambda: fn(x, y).block_until_ready())
    return _warm_timer(lambda: fn(x, y))


def measure(workload: str, seeds: int = 1, *, repeats: int = 30, size: int = 2048, torch: bool = False) -> dict:
    """Times every dot of a step (JAX, and PyTorch's kernels if `torch`), Adam's update and the streaming
    pass, interleaved `repeats` times (medians); returns them with the ceilings they imply (JSON-able).

    Call before anything else has started JAX when `seeds` > 1 (`main` sets up one device per core).
    """
    import jax

    w = WORKLOADS[workload]
    dots = step_dots(w.widths, w.batch)
    assert sum(d.flops for d in dots) == flops_per_step(w.widths, w.batch)
    square = Dot(f"{size}² matmul", (size, size), (size, size), (1, 0))
    libraries = ("jax", "torch") if torch else ("jax",)
    timers = {(lib, d.name): _timer(d, 1 if d is square else seeds, lib) for lib in libraries for d in (square, *dots)}
    timers[("jax", "adam")] = _update_timer(w.widths, seeds)
    timers[("jax", "stream")] = _stream_timer(adam_bytes(w.widths, seeds))
    times = {key: [] for key in timers}
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(repeats):  # interleaved: load on the machine falls on all alike
        for key, call in timers.items():
            times[key].append(call())
    utilisation = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / (os.cpu_count() or 1)
    median = {key: statistics.median(t) for key, t in times.items()}
    rate = square.flops / median[("jax", square.name)] / 1e9
    step = seeds * flops_per_step(w.widths, w.batch)
    out = {"workload": workload, "seeds": seeds, "repeats": repeats, "size": size, "matmul_gflops": rate,
           "devices": len(jax.devices()), "cpu_utilisation": utilisation, "step_gflop": step / 1e9,
           "dots": [{"name": d.name, "lhs": d.lhs, "rhs": d.rhs, "gflop": seeds * d.flops / 1e9,
                     **{f"{lib}_s": median[(lib, d.name)] for lib in libraries}} for d in dots],
           "adam_s": median[("jax", "adam")], "stream_s": median[("jax", "stream")],
           "adam_bytes": adam_bytes(w.widths, seeds), "versions": {"jax": jax.__version__}}
    ceilings = {lib: sum(median[(lib, d.name)] for d in dots) for lib in libraries}
    if torch:
        import torch as torch_lib

        out["versions"]["torch"] = torch_lib.__version__
        out["torch_threads"] = torch_lib.get_num_threads()
        out["torch_matmul_gflops"] = square.flops / median[("torch", square.name)] / 1e9
    ceilings["jax+adam"] = ceilings["jax"] + out["adam_s"]
    ceilings["jax+ideal update"] = ceilings["jax"] + out["stream_s"]
    out["ceilings"] = {k: {"step_s": t, "seed_steps_per_s": seeds / t, "matmul_fraction": step / t / 1e9 / rate}
                       for k, t in ceilings.items()}
    return out


def print_profile(p: dict) -> None:
    """`measure`'s result as text: each dot, then each ceiling."""
    runs = f", {p['seeds']} runs per dot over {p['devices']} devices" if p["seeds"] > 1 else ""
    w = WORKLOADS[p["workload"]]
    print(f"{p['workload']} {'-'.join(map(str, w.widths))}, batch {w.batch}{runs}: median of {p['repeats']} "
          f"interleaved calls per dot; {p['size']}² matmul {p['matmul_gflops']:.1f} GFLOP/s (JAX); CPU utilisation "
          f"{p['cpu_utilisation']:.0%} of {os.cpu_count()} cores")
    for lib in ("jax", "torch"):
        if f"{lib}_s" not in p["dots"][0]:
            continue
        label = (f"JAX {p['versions']['jax']}" if lib == "jax" else
                 f"PyTorch {p['versions']['torch']}, {p['torch_threads']} threads (its {p['size']}² matmul "
                 f"{p['torch_matmul_gflops']:.1f} GFLOP/s; ÷ rate is against JAX's)")
        print(f"{label}:")
        print(f"  {'dot':<22} {'lhs':>11} {'rhs':>11} {'GFLOP':>7} {'ms':>7} {'GFLOP/s':>8} {'÷ rate':>7}")
        for d in p["dots"]:
            gflops = d["gflop"] / d[f"{lib}_s"]
            print(f"  {d['name']:<22} {'x'.join(map(str, d['lhs'])):>11} {'x'.join(map(str, d['rhs'])):>11} "
                  f"{d['gflop']:>7.3f} {d[f'{lib}_s'] * 1e3:>7.3f} {gflops:>8.1f} {gflops / p['matmul_gflops']:>7.1%}")
        c = p["ceilings"][lib]
        print(f"  step's dots: {p['step_gflop']:.3f} GFLOP in {c['step_s'] * 1e3:.2f} ms = "
              f"{p['step_gflop'] / c['step_s']:.1f} GFLOP/s = {c['matmul_fraction']:.1%} of the {p['size']}² rate "
              f"(the step's ceiling) = {c['seed_steps_per_s']:,.0f} seed-steps/s")
    nbytes, update, stream = p["adam_bytes"], p["adam_s"], p["stream_s"]
    print(f"Adam update alone (optax.adam, params and moments donated): {update * 1e3:.2f} ms, moving at least "
          f"{nbytes / 1e6:.1f} MB = {nbytes / update / 1e9:.1f} GB/s, {stream / update:.0%} of the machine's "
          f"streaming rate ({nbytes / stream / 1e9:.1f} GB/s: an in-place scale moving as many bytes)")
    for key, what in (("jax+adam", "its optimizer"),
                      ("jax+ideal update", "an ideal fused optimizer, 7 passes at the streaming rate")):
        c = p["ceilings"][key]
        print(f"  dots + {what}: {c['matmul_fraction']:.1%} of the {p['size']}² rate = "
              f"{c['seed_steps_per_s']:,.0f} seed-steps/s (the step's ceiling)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W2", choices=sorted(WORKLOADS))
    parser.add_argument("--seeds", type=int, default=1, help="runs per dot, batched as jax.vmap emits them")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=2048, help="side of the square matmul that sets the rate")
    parser.add_argument("--torch", action="store_true",
                        help="also time each dot in PyTorch (interleaved), the peers' kernels for the same shapes")
    parser.add_argument("--json", type=Path, help="also write the measurements and ceilings to this JSON file")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error("--seeds must be at least 1")
    if args.seeds > 1:
        from netalchemy import devices

        devices.use_cpu_cores()  # one JAX device per core, before JAX starts, as the engine runs
    profile = measure(args.workload, args.seeds, repeats=args.repeats, size=args.size, torch=args.torch)
    print_profile(profile)
    if args.json:
        args.json.write_text(json.dumps(profile, indent=1) + "\n")


if __name__ == "__main__":
    main()
