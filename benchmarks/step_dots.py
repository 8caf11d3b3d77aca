"""The dots of one training step, timed one at a time against the machine's square-matmul rate.

    python -m benchmarks.step_dots [--workload W2] [--repeats 30] [--size 2048]

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
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
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


def _timer(lhs_shape, rhs_shape, contract):
    import jax
    import numpy as np

    rng = np.random.default_rng(0)
    x, y = (jax.device_put(rng.standard_normal(s, dtype=np.float32)) for s in (lhs_shape, rhs_shape))
    dims = (((contract[0],), (contract[1],)), ((), ()))
    dot = jax.jit(lambda x, y: jax.lax.dot_general(x, y, dims))
    dot(x, y).block_until_ready()  # compile

    def call() -> float:  # warm: a first call brings the operands back into cache, the second is timed
        dot(x, y).block_until_ready()
        start = time.perf_counter()
        dot(x, y).block_until_ready()
        return time.perf_counter() - start

    return call


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", default="W2", choices=sorted(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--size", type=int, default=2048, help="side of the square matmul that sets the rate")
    args = parser.parse_args(argv)
    w = WORKLOADS[args.workload]
    dots = step_dots(w.widths, w.batch)
    square = Dot(f"{args.size}² matmul", (args.size, args.size), (args.size, args.size), (1, 0))
    timers = {d: _timer(d.lhs, d.rhs, d.contract) for d in (square, *dots)}
    times = {d: [] for d in timers}
    cpu0 = time.process_time()
    wall0 = time.perf_counter()
    for _ in range(args.repeats):  # interleaved: load on the machine falls on all alike
        for d, call in timers.items():
            times[d].append(call())
    utilisation = (time.process_time() - cpu0) / (time.perf_counter() - wall0) / (os.cpu_count() or 1)
    median = {d: statistics.median(t) for d, t in times.items()}
    rate = square.flops / median[square] / 1e9
    print(f"{args.workload} {'-'.join(map(str, w.widths))}, batch {w.batch}: median of {args.repeats} interleaved "
          f"calls per dot; {args.size}² matmul {rate:.1f} GFLOP/s; CPU utilisation {utilisation:.0%} of "
          f"{os.cpu_count()} cores")
    print(f"{'dot':<22} {'lhs':>11} {'rhs':>11} {'GFLOP':>7} {'ms':>7} {'GFLOP/s':>8} {'÷ rate':>7}")
    for d in dots:
        gflops = d.flops / median[d] / 1e9
        print(f"{d.name:<22} {'x'.join(map(str, d.lhs)):>11} {'x'.join(map(str, d.rhs)):>11} {d.flops / 1e9:>7.3f} "
              f"{median[d] * 1e3:>7.3f} {gflops:>8.1f} {gflops / rate:>7.1%}")
    total = sum(median[d] for d in dots)
    assert sum(d.flops for d in dots) == flops_per_step(w.widths, w.batch)
    ceiling = flops_per_step(w.widths, w.batch) / total / 1e9
    print(f"step's dots: {flops_per_step(w.widths, w.batch) / 1e9:.3f} GFLOP in {total * 1e3:.2f} ms = "
          f"{ceiling:.1f} GFLOP/s = {ceiling / rate:.1%} of the {args.size}² rate (the step's ceiling; "
          f"{matmul_flops(args.size) / 1e9:.1f} GFLOP per square matmul)")


if __name__ == "__main__":
    main()
