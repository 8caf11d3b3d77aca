"""Throughput benchmark: netalchemy's sweep engine against plain JAX, Flax NNX and PyTorch.

Not part of the library: it lives in the repository (a source checkout) and runs as
`netalchemy bench [--profile tiny|quick|full] [key=value ...]`, or from Python:

    from netalchemy import bench
    results = bench.run_benchmark(bench.PROFILES["quick"], out_dir=Path("runs/bench"))
    print(bench.format_table(results))

One run measures, for each workload, way of training and number of seeds trained at once:
seed-steps/s, examples/s, achieved GFLOP/s and its fraction of the machine's float32 matmul
rate, the first-call overhead (compilation and warm-up), and the peak memory of the process.
It uses only netalchemy's public API (`sweep.run`, `sweep.train_chunk`, ...).

Workloads (`settings.WORKLOADS`):
  W1  MNIST-1D MLP 40-100-100-10, Adam lr 1e-2, batch 100, on the real MNIST-1D training set
      (Greydanus & Kobak 2024), ≈ 8.2 MFLOP per seed-step.
  W2  the article's cat/dog MLP 4096-512-256-2 (64×64 grayscale inputs), Adam lr 1e-3,
      batch 128, ≈ 1.18 GFLOP per seed-step, on SYNTHETIC data of that shape (standard-normal
      pixels, random labels): throughput does not depend on the values, and cats-vs-dogs
      needs a download this machine cannot make.
FLOPs count the matmuls only (`settings.flops_per_step`): forward 2·B·Σ fan_in·fan_out, the
weight gradients the same, the input gradients the same less the first layer's. Biases, ReLU,
softmax and the optimizer are left out, so GFLOP/s slightly understates the work done.

Ways (`settings.WAYS`), one module each side:
  engine, engine_chunk               `engine.py`: `sweep.run` as a user runs it (a fresh
                                     folder per call, checkpoints and files included), and
                                     the engine's compiled program `sweep.train_chunk` alone
  jax_ref                            `peers_jax.py`: plain JAX scan+vmap
  flax_nnx                           `peers_flax.py`: Flax NNX's training loop
  torch_eager, torch_compile,        `peers_torch.py`: PyTorch's eager loop, torch.compile,
  torch_func                         and a torch.func ensemble over seeds
The matmul rate is the median over repeats of one 2048×2048 float32 `a @ b` (jit-compiled in
JAX, `torch.mm` in PyTorch); the machine's rate is the larger of the two.

Method (`driver.py`): each (workload, way, seeds) cell in a fresh process (`worker.py`), first
calls one at a time, then timed calls interleaved round-robin, medians reported. The "cpu×"
column (CPU seconds per wall second) shows how many cores a way kept busy: on a machine shared
with other work it falls, and the timings with it. All ways of a group run the same number of
steps per call (`w1_steps`, `w2_steps`, fewer for big groups so that a call stays within
`max_gflop_per_call`). The engine evaluates at step 0 and every `engine_eval_every` steps, or
once at the end of shorter calls; the table gives the share of its FLOPs spent evaluating
(`eval_flop_share`): short calls evaluate relatively more often than a 6000-step run (≈ 7 %).
torch.compile gets an empty inductor cache, so its first call is a cold compile. Beside the
measured peak memory stands the engine's estimate, `sweep.bytes_per_run × seeds`; groups whose
estimate exceeds `memory_limit_gb` are skipped. On a GPU or TPU the JAX workers also record
the device's `peak_bytes_in_use`.

Outputs (`report.py`): bench.json, table.txt, summary.md (the README's tables) and
scaling.png; every table lists each target with its goal, the measured value and met / not
met (`results.TARGETS`), and the audit wall-time table: per stored quick or full audit
(`runs/audit/<profile>[-<dataset>]`, `audit_times.collect`), the experiments' recorded times, so a
speed-up shows where a user feels it. PyTorch is optional (`pip install -e '.[bench]'`); without it its
ways are skipped with a printed message.
"""

import importlib
from typing import Any

# Public names, imported from their module on first use: a worker process imports
# `benchmarks.worker` and should load neither the driver nor matplotlib.
_EXPORTS = {
    "run_benchmark": "driver", "WorkerError": "driver", "collect": "audit_times",
    "format_table": "report", "format_markdown": "report", "plot_scaling": "report", "write_results": "report",
    "TARGETS": "results", "find_cell": "results", "ratio_rows": "results", "target_rows": "results",
    "BenchSettings": "settings", "PEERS": "settings", "PROFILES": "settings", "WAYS": "settings",
    "WORKLOADS": "settings", "flops_per_step": "settings", "torch_available": "settings",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
