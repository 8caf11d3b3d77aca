"""Throughput benchmark: netalchemy's sweep engine against plain JAX, Flax NNX and PyTorch.

    from netalchemy import bench
    results = bench.run_benchmark(bench.PROFILES["quick"], out_dir=Path("runs/bench"))
    print(bench.format_table(results))

One run measures, for each workload, way of training and number of seeds trained at once:
seed-steps/s, examples/s, achieved GFLOP/s and its fraction of the machine's float32 matmul
rate, the first-call overhead (compilation and warm-up), and the peak memory of the process.

Workloads (`WORKLOADS`):
  W1  MNIST-1D MLP 40-100-100-10, Adam lr 1e-2, batch 100, on the real MNIST-1D training set
      (Greydanus & Kobak 2024), ≈ 8.2 MFLOP per seed-step.
  W2  the article's cat/dog MLP 4096-512-256-2 (64×64 grayscale inputs), Adam lr 1e-3,
      batch 128, ≈ 1.18 GFLOP per seed-step, on SYNTHETIC data of that shape (standard-normal
      pixels, random labels): throughput does not depend on the values, and cats-vs-dogs
      needs a download this machine cannot make.
FLOPs count the matmuls only (`flops_per_step`): forward 2·B·Σ fan_in·fan_out, the weight
gradients the same, the input gradients the same less the first layer's. Biases, ReLU,
softmax and the optimizer are left out, so GFLOP/s slightly understates the work done.

Ways (`WAYS`), and exactly what one timed call covers:
  engine         `sweep.run(cfg, out_dir=<fresh folder>, dataset=...)` as a user runs it, on
                 the CPU devices the `netalchemy` command sets up (one per core, runs sharded
                 over them; `engine_cpu_devices` overrides):
                 init, evaluation on the full train and test sets at step 0 and every
                 `eval_every` steps, divergence checks, shuffled epochs, an orbax checkpoint
                 every `chunk_steps` (default 1000), the chunk/history/summary files, the final
                 predictions and reading the result back. Timed on calls after the first in the
                 same process (compiled programs cached); each call gets a new folder, so no
                 result is reused. The number of compilations during those calls is counted
                 (`_cache_size()` of the engine's jitted functions) and must be 0.
  engine_chunk   the engine's compiled training program alone: `sweep._train_chunk` called once
                 per `chunk_steps` as `sweep.run` calls it (train steps + divergence checks +
                 evaluations), metrics fetched to the host, all runs in one run chunk; no init,
                 checkpoints or files (states are re-initialised, untimed, before each call
                 because the program donates them).
  jax_ref        plain JAX, nothing else: an MLP as a list of (w, b), optax.adam, minibatches
                 by uniform random indices, `lax.scan` over steps, `vmap` over seeds, one jit.
  flax_nnx       Flax NNX as its examples write it: an `nnx.Module` MLP, `nnx.Optimizer`, an
                 `@nnx.jit` train step called from a Python loop with minibatches gathered on
                 the host by numpy; one seed.
  torch_eager    PyTorch eager: `nn.Sequential`, `torch.optim.Adam(fused=True)` (foreach when
                 fused is unsupported), minibatches by `torch.randint`; one seed.
  torch_compile  the same loop with `torch.compile(model)` (the optimizer step stays eager).
  torch_func     a PyTorch ensemble: `torch.func.stack_module_state` + `functional_call` +
                 `vmap` over seeds, one fused Adam over the stacked parameters (Adam is
                 elementwise, so this equals an independent Adam per seed).
One-seed ways (flax_nnx, torch_eager, torch_compile) train N seeds as N runs one after
another, so their seed-steps/s at N seeds is their one-seed rate; ratios use it that way.
The matmul rate is the median over repeats of one 2048×2048 float32 `a @ b` (jit-compiled in
JAX, `torch.mm` in PyTorch); the machine's rate is the larger of the two.

Method: every (workload, way, seeds) cell runs in its own fresh Python process, so its peak
resident memory (`ru_maxrss`, process-wide and monotone, read after its last timed call) is
its own, and so are its compilation caches. The processes of one (workload, seeds) group
start together (imports are not timed), make their first call one at a time (timed: the
first-call overhead is that time less the median call), then are timed round-robin over the
ways for `repeats` rounds, the starting way moving one along each round, with one matmul
timing per backend after each round; medians are reported. The "cpu×" column (CPU seconds
per wall second of the timed calls) shows how many cores a way kept busy: on a machine
shared with other work it falls, and the timings with it.
Step counts: all ways of a group run the same number of steps per timed call (`w1_steps`,
`w2_steps`, fewer for big groups so that a call stays within `max_gflop_per_call`). The engine
evaluates at step 0 and every `engine_eval_every` (250, its default) steps, or once at the
end of calls shorter than that; the table's note gives the share of the engine's FLOPs that
went to evaluation (`eval_flop_share`): short calls evaluate relatively more often than a
6000-step run (≈ 7 %), which lowers the engine's rate against peers that never evaluate.
torch.compile gets an empty inductor cache folder of its own, so its first call is a cold
compile.
Next to the measured peak stands the engine's own estimate, `sweep.bytes_per_run × seeds`;
on a GPU or TPU the JAX workers also record the device's `peak_bytes_in_use`.
Groups whose estimate exceeds `memory_limit_gb` are skipped ("where memory allows").
PyTorch is optional (`pip install 'netalchemy[bench]'`); without it its ways are skipped
with a printed message.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------- workloads


class Workload(NamedTuple):
    name: str
    widths: tuple[int, ...]  # (inputs, hidden..., classes)
    batch: int
    lr: float
    data: str  # where the inputs come from, in words


WORKLOADS = {
    "W1": Workload("W1", (40, 100, 100, 10), 100, 1e-2, "MNIST-1D training set (4000 × 40)"),
    "W2": Workload("W2", (4096, 512, 256, 2), 128, 1e-3,
                   "synthetic 64×64 grayscale-shaped inputs (standard normal, random labels)"),
}


def flops_per_step(widths: Sequence[int], batch: int) -> int:
    """Matmul FLOPs of one training step of one seed (forward + backward).

    forward 2·B·Σ fan_in·fan_out; weight gradients the same; input gradients the same except
    the first layer's (nothing needs the gradient of the data).
    """
    layers = [a * b for a, b in zip(widths[:-1], widths[1:])]
    return 2 * batch * (3 * sum(layers) - layers[0])


def matmul_flops(n: int) -> int:
    """FLOPs of one n×n by n×n matmul (n multiply-adds per output)."""
    return 2 * n ** 3


# ----------------------------------------------------------------------------- ways


class Way(NamedTuple):
    label: str
    backend: str  # "jax" or "torch"
    vmapped: bool  # trains many seeds in one program; False: one seed per run
    modules: tuple[str, ...]  # imported by the worker before it is ready (not timed)


WAYS = {
    "engine": Way("netalchemy sweep.run", "jax", True, ("netalchemy.sweep",)),
    "engine_chunk": Way("engine program (_train_chunk)", "jax", True, ("netalchemy.sweep",)),
    "jax_ref": Way("plain JAX scan+vmap", "jax", True, ("jax", "optax")),
    "flax_nnx": Way("Flax NNX loop", "jax", False, ("flax.nnx", "optax")),
    "torch_eager": Way("PyTorch eager", "torch", False, ("torch",)),
    "torch_compile": Way("torch.compile", "torch", False, ("torch",)),
    "torch_func": Way("torch.func ensemble", "torch", True, ("torch", "torch.func")),
}
PEERS = ("engine_chunk", "jax_ref", "flax_nnx", "torch_eager", "torch_compile", "torch_func")
TORCH_MISSING = ("PyTorch is not installed: skipping torch_eager, torch_compile and torch_func "
                 "(pip install 'netalchemy[bench]' to compare with PyTorch)")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark measures; any field can be overridden with `key=value`."""

    workloads: tuple[str, ...] = ("W1", "W2")
    ways: tuple[str, ...] = tuple(WAYS)
    seeds: tuple[int, ...] = (1, 32, 256, 1024)  # one-seed ways run in the seeds=1 group
    w1_steps: int = 500  # steps per timed call, at most (W1)
    w2_steps: int = 100  # the same for W2
    max_gflop_per_call: float = 1000.0  # fewer steps for big groups: seeds·steps·FLOPs ≤ this ...
    min_steps: int = 20  # ... and a group that would need fewer steps than this is skipped
    engine_eval_every: int = 250  # the engine default; lowered to `steps` for shorter calls
    repeats: int = 3  # timed calls per cell, interleaved round-robin over the ways
    memory_limit_gb: float = 8.0  # skip a (workload, seeds) group whose engine estimate exceeds it
    w2_train_size: int = 1024  # synthetic W2 examples (the engine evaluates all of them)
    w2_test_size: int = 256
    matmul_size: int = 2048
    torch_threads: int = 0  # 0 = PyTorch's default (one per core)
    engine_cpu_devices: int = 0  # JAX CPU devices for the engine ways; 0 = one per core, as the CLI
    timeout_s: float = 1800.0  # per worker request

    def __post_init__(self) -> None:
        from netalchemy.config import ConfigError

        def check(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        bad = [w for w in self.workloads if w not in WORKLOADS]
        check(not bad, f"workloads: unknown {bad[:1]}; choose from {', '.join(WORKLOADS)}")
        bad = [w for w in self.ways if w not in WAYS]
        check(not bad, f"ways: unknown {bad[:1]}; choose from {', '.join(WAYS)}")
        check(bool(self.seeds) and all(s >= 1 for s in self.seeds), "seeds: every count must be >= 1")
        single = [w for w in self.ways if not WAYS[w].vmapped]
        check(not single or 1 in self.seeds, f"seeds must include 1 for the one-seed ways {', '.join(single)}")
        check(1 <= self.min_steps <= min(self.w1_steps, self.w2_steps), "need 1 <= min_steps <= w1_steps, w2_steps")
        check(self.engine_eval_every >= 1, "engine_eval_every must be >= 1")
        check(self.repeats >= 1, "repeats must be >= 1")
        check(self.max_gflop_per_call > 0 and self.memory_limit_gb > 0, "budgets must be > 0")
        check(self.w2_train_size >= WORKLOADS["W2"].batch and self.w2_test_size >= 1,
              "w2_train_size must be >= the W2 batch (128)")
        check(self.matmul_size >= 1 and self.torch_threads >= 0 and self.engine_cpu_devices >= 0,
              "matmul_size >= 1, torch_threads >= 0, engine_cpu_devices >= 0")


PROFILES = {
    # Seconds (for tests): W1 at one seed, 40 steps per call, no torch.compile (a cold compile
    # takes 20-70 s here), one PyTorch thread (two collapse when pytest workers share the cores).
    "tiny": BenchSettings(workloads=("W1",), ways=("engine", "jax_ref", "flax_nnx", "torch_eager", "torch_func"),
                          seeds=(1,), w1_steps=40, min_steps=20, engine_eval_every=20, repeats=2,
                          matmul_size=512, torch_threads=1, timeout_s=300.0),
    # A few minutes on 2 cores: every way; W1 at 1, 32 and 256 seeds; W2 at one seed (more seeds
    # would need fewer than min_steps steps within the per-call budget, so they are skipped).
    "quick": BenchSettings(seeds=(1, 32, 256), w1_steps=250, w2_steps=50, max_gflop_per_call=250.0,
                           min_steps=50, repeats=2),
    # The real measurement, about 20 minutes on 2 cores: every seed count of the issue (W2 up to
    # 32 seeds: 256 and 1024 exceed the memory limit).
    "full": BenchSettings(),
}


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


# ----------------------------------------------------------------------------- planning


def group_steps(settings: BenchSettings, workload: Workload, seeds: int) -> tuple[int, int]:
    """(steps per timed call, engine eval_every) of a (workload, seeds) group.

    At most `w1_steps` / `w2_steps`, fewer when seeds·steps·FLOPs would exceed
    `max_gflop_per_call`; rounded down to a multiple of the engine's eval_every, which is
    `engine_eval_every` or, for calls shorter than that, the whole call. A result below
    `min_steps` means the group is skipped (see `plan_cells`).
    """
    per_step = flops_per_step(workload.widths, workload.batch) * seeds
    cap = settings.w1_steps if workload.name == "W1" else settings.w2_steps
    steps = max(1, min(cap, int(settings.max_gflop_per_call * 1e9 // per_step)))
    every = min(settings.engine_eval_every, steps)
    return steps // every * every, every


def eval_flop_share(workload: Workload, steps: int, eval_every: int, *, n_train: int, n_test: int) -> float:
    """The share of the engine's matmul FLOPs in one call that go to evaluation, not training.

    The engine evaluates the whole train and test sets at step 0 and every `eval_every`
    steps: (1 + steps / eval_every) forward passes over n_train + n_test examples.
    Short timed calls evaluate relatively more often than a real run does.
    """
    forward = 2 * sum(a * b for a, b in zip(workload.widths[:-1], workload.widths[1:]))  # per example
    evaluation = (1 + steps // eval_every) * (n_train + n_test) * forward
    return evaluation / (evaluation + steps * flops_per_step(workload.widths, workload.batch))


def engine_bytes(workload: Workload, seeds: int, *, n_train: int, n_test: int) -> int:
    """The engine's own memory estimate for `seeds` runs: `sweep.bytes_per_run × seeds`."""
    from netalchemy import sweep

    cfg = engine_config(workload, seeds, steps=1, eval_every=1)
    return seeds * sweep.bytes_per_run(cfg, in_features=workload.widths[0], num_classes=workload.widths[-1],
                                       n_train=n_train, n_test=n_test)


def engine_config(workload: Workload, seeds: int, *, steps: int, eval_every: int):
    """The netalchemy config of a workload (engine defaults for everything else)."""
    from netalchemy import config as C

    return C.Config(model=C.ModelConfig(hidden=tuple(workload.widths[1:-1])),
                    optim=C.OptimConfig(name="adam", lr=workload.lr),
                    train=C.TrainConfig(steps=steps, batch_size=workload.batch, eval_every=eval_every),
                    seeds=C.SeedsConfig(n=seeds))


# ----------------------------------------------------------------------------- the worker side
#
# A worker is `python -m netalchemy.bench --worker`. It reads one JSON request per line on
# stdin and answers one JSON line on its original stdout (anything else the libraries print
# goes to stderr). Requests: {"cmd": "setup", "spec": {...}} builds a way and makes its first
# call (timed as first_call_s); {"cmd": "time"} makes one timed call; {"cmd": "finish"}
# reports the peak RSS and exits.


def _load_data(path: str) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class _Runner:
    """One way, built: `prepare()` (untimed) then `run()` (timed) per call; `info()` extras."""

    def __init__(self, run: Callable[[], Any], prepare: Callable[[], None] = lambda: None,
                 info: Callable[[], dict] = dict, close: Callable[[], None] = lambda: None):
        self.run, self.prepare, self.info, self.close = run, prepare, info, close


def _engine_devices(spec: dict) -> None:
    """The engine ways run on the CPU devices the CLI would give them (before JAX runs)."""
    from netalchemy import devices

    devices.use_cpu_cores(spec["engine_cpu_devices"] or None)


def _engine_runner(spec: dict, data: dict) -> _Runner:
    _engine_devices(spec)
    from netalchemy import sweep
    from netalchemy.data import Dataset

    w = WORKLOADS[spec["workload"]]
    cfg = engine_config(w, spec["seeds"], steps=spec["steps"], eval_every=spec["eval_every"])
    dataset = Dataset(data["x_train"], data["y_train"], data["x_test"], data["y_test"], w.widths[-1], w.name)
    root = Path(tempfile.mkdtemp(prefix="engine-", dir=spec["scratch"]))  # removed with the scratch folder
    jitted = (sweep._init, sweep._evaluate, sweep._train_chunk, sweep._predict)
    calls = {"n": 0, "folder": None, "compiled": None}

    def prepare():
        if calls["folder"] is not None:
            shutil.rmtree(calls["folder"], ignore_errors=True)
        if calls["n"] == 1:  # after the first (compiling) call: count compilations from here on
            calls["compiled"] = sum(f._cache_size() for f in jitted)
        calls["n"] += 1
        calls["folder"] = root / f"sweep-{calls['n']}"  # a fresh folder: nothing is reused

    def run():
        return sweep.run(cfg, out_dir=calls["folder"], dataset=dataset, progress=False)

    def info():
        recompiles = None if calls["compiled"] is None else sum(f._cache_size() for f in jitted) - calls["compiled"]
        per_run = sweep.bytes_per_run(cfg, in_features=w.widths[0], num_classes=w.widths[-1],
                                      n_train=len(dataset.y_train), n_test=len(dataset.y_test))
        chunk = sweep.runs_per_chunk(cfg, spec["seeds"], per_run, sweep._mesh(spec["seeds"]).size)
        return {"compilations_after_first_call": recompiles, "eval_every": cfg.train.eval_every,
                "chunk_steps": cfg.train.chunk_steps, "run_chunks": math.ceil(spec["seeds"] / chunk),
                "timed_calls": calls["n"] - 1}

    return _Runner(run, prepare, info, lambda: shutil.rmtree(root, ignore_errors=True))


def _engine_chunk_runner(spec: dict, data: dict) -> _Runner:
    _engine_devices(spec)
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from netalchemy import sweep, train

    w = WORKLOADS[spec["workload"]]
    n = spec["seeds"]
    cfg = engine_config(w, n, steps=spec["steps"], eval_every=spec["eval_every"])
    mesh = sweep._mesh(n)
    pad = (-n) % mesh.size
    seeds = np.arange(n + pad)
    axes = sweep.stream_axes(cfg)
    streams = sweep._shard_runs(sweep.run_streams(cfg, seeds), mesh, axes)
    lrs = sweep._shard_runs(jnp.full(len(seeds), w.lr, jnp.float32), mesh)
    arrays = train.Data(*(jnp.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test")))
    arrays = jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))
    total = cfg.train.steps // cfg.train.eval_every
    per_chunk = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    box = {}

    def prepare():
        box["states"] = jax.block_until_ready(sweep._init(streams, lrs, cfg=cfg, axes=axes, in_features=w.widths[0],
                                                          num_classes=w.widths[-1]))

    def run():
        states, done = box.pop("states"), 0
        while done < total:
            k = min(per_chunk, total - done)
            states, metrics = sweep._train_chunk(states, streams, arrays, lrs, cfg=cfg, axes=axes, intervals=k)
            jax.device_get(metrics)
            done += k
        jax.block_until_ready(states)

    return _Runner(run, prepare, lambda: {"eval_every": cfg.train.eval_every})


def _jax_ref_runner(spec: dict, data: dict) -> _Runner:
    import jax
    import jax.numpy as jnp
    import optax

    w = WORKLOADS[spec["workload"]]
    steps, n_seeds, batch = spec["steps"], spec["seeds"], w.batch
    x, y = jnp.asarray(data["x_train"]), jnp.asarray(data["y_train"])
    tx = optax.adam(w.lr)

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
            idx = jax.random.randint(k, (batch,), 0, x.shape[0])
            loss, grads = jax.value_and_grad(loss_fn)(params, x[idx], y[idx])
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), loss

        (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), jax.random.split(key, steps))
        return params, losses[-1]

    train_all = jax.jit(jax.vmap(one_seed, in_axes=(0, 0, 0, None, None)))
    params, opt_state = jax.jit(jax.vmap(init))(jax.random.split(jax.random.key(0), n_seeds))
    keys = jax.random.split(jax.random.key(1), n_seeds)
    return _Runner(lambda: jax.block_until_ready(train_all(params, opt_state, keys, x, y)))


def _flax_nnx_runner(spec: dict, data: dict) -> _Runner:
    import optax
    from flax import nnx

    w = WORKLOADS[spec["workload"]]
    steps, batch = spec["steps"], w.batch

    class MLP(nnx.Module):
        def __init__(self, widths, *, rngs: nnx.Rngs):
            self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])

        def __call__(self, x):
            for layer in self.layers[:-1]:
                x = nnx.relu(layer(x))
            return self.layers[-1](x)

    model = MLP(w.widths, rngs=nnx.Rngs(0))
    optimizer = nnx.Optimizer(model, optax.adam(w.lr), wrt=nnx.Param)

    @nnx.jit
    def train_step(model, optimizer, x, y):
        def loss_fn(model):
            return optax.softmax_cross_entropy_with_integer_labels(model(x), y).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    x, y = data["x_train"], data["y_train"]
    rng = np.random.default_rng(0)

    def run():
        loss = None
        for _ in range(steps):
            idx = rng.integers(0, len(x), batch)
            loss = train_step(model, optimizer, x[idx], y[idx])
        return float(loss)

    return _Runner(run)


def _torch_setup(spec: dict):
    import torch

    if spec["torch_threads"]:
        torch.set_num_threads(spec["torch_threads"])
    torch.manual_seed(0)
    return torch


def _torch_mlp(widths):
    from torch import nn

    layers = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _torch_adam(torch, params, lr):
    """Adam(fused=True) where this PyTorch supports it on CPU, else Adam(foreach=True)."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True), "fused"
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr, foreach=True), "foreach"


def _torch_loop_runner(spec: dict, data: dict, *, compiled: bool) -> _Runner:
    torch = _torch_setup(spec)
    import torch.nn.functional as F

    w = WORKLOADS[spec["workload"]]
    steps, batch = spec["steps"], w.batch
    model = _torch_mlp(w.widths)
    opt, kind = _torch_adam(torch, model.parameters(), w.lr)
    forward = torch.compile(model) if compiled else model
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()

    def run():
        loss = None
        for _ in range(steps):
            idx = torch.randint(0, len(x), (batch,))
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(forward(x[idx]), y[idx])
            loss.backward()
            opt.step()
        return loss.item()

    return _Runner(run, info=lambda: {"adam": kind, "threads": torch.get_num_threads()})


def _torch_func_runner(spec: dict, data: dict) -> _Runner:
    import copy

    torch = _torch_setup(spec)
    import torch.nn.functional as F
    from torch.func import functional_call, stack_module_state, vmap

    w = WORKLOADS[spec["workload"]]
    steps, n, batch, classes = spec["steps"], spec["seeds"], w.batch, w.widths[-1]
    models = [_torch_mlp(w.widths) for _ in range(n)]
    params, buffers = stack_module_state(models)  # name -> (seeds, ...) leaf tensors
    base = copy.deepcopy(models[0]).to("meta")
    del models
    opt, kind = _torch_adam(torch, params.values(), w.lr)
    x, y = torch.from_numpy(data["x_train"]), torch.from_numpy(data["y_train"]).long()

    def one(p, b, xb):
        return functional_call(base, (p, b), (xb,))

    def run():
        loss = None
        for _ in range(steps):
            idx = torch.randint(0, len(x), (n, batch))
            logits = vmap(one)(params, buffers, x[idx])  # (seeds, batch, classes)
            per_seed = F.cross_entropy(logits.reshape(-1, classes), y[idx].reshape(-1), reduction="none")
            loss = per_seed.view(n, batch).mean(1).sum()  # seeds are independent: sum of their losses
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return loss.item()

    return _Runner(run, info=lambda: {"adam": kind, "threads": torch.get_num_threads()})


def _matmul_runner(spec: dict, data: dict) -> _Runner:
    size = spec["matmul_size"]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((size, size), dtype=np.float32) for _ in range(2))
    if spec["backend"] == "jax":
        import jax

        mm = jax.jit(lambda a, b: a @ b)
        a, b = jax.device_put(a), jax.device_put(b)
        return _Runner(lambda: mm(a, b).block_until_ready())
    torch = _torch_setup(spec)
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    out = torch.empty_like(ta)
    return _Runner(lambda: torch.mm(ta, tb, out=out), info=lambda: {"threads": torch.get_num_threads()})


_BUILDERS = {
    "engine": _engine_runner,
    "engine_chunk": _engine_chunk_runner,
    "jax_ref": _jax_ref_runner,
    "flax_nnx": _flax_nnx_runner,
    "torch_eager": lambda spec, data: _torch_loop_runner(spec, data, compiled=False),
    "torch_compile": lambda spec, data: _torch_loop_runner(spec, data, compiled=True),
    "torch_func": _torch_func_runner,
    "matmul": _matmul_runner,
}


def _peak_rss() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _device_peak() -> Optional[int]:
    """Peak bytes in use on JAX's first device where it reports them (GPU, TPU); None on CPU."""
    if "jax" not in sys.modules:
        return None
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends do not implement it
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _worker_main() -> None:
    """Serves requests on stdin (see above); replies go to the original stdout only."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    import importlib

    for module in sys.argv[sys.argv.index("--worker") + 1:]:  # before "ready": imports are not timed
        importlib.import_module(module)
    send = lambda **kw: reply.write(json.dumps(kw) + "\n")  # noqa: E731
    send(ok=True, ready=True, rss_after_import=_peak_rss())
    runner: Optional[_Runner] = None
    for line in sys.stdin:
        request = json.loads(line)
        try:
            if request["cmd"] == "setup":
                if runner is not None:
                    runner.close()
                runner = None
                spec = request["spec"]
                data = _load_data(spec["data"]) if spec.get("data") else {}
                runner = _BUILDERS[spec["way"]](spec, data)
                runner.prepare()
                start = time.perf_counter()
                runner.run()
                send(ok=True, first_call_s=time.perf_counter() - start)
            elif request["cmd"] == "time":
                runner.prepare()
                wall, cpu = time.perf_counter(), time.process_time()
                runner.run()
                send(ok=True, seconds=time.perf_counter() - wall, cpu_seconds=time.process_time() - cpu)
            elif request["cmd"] == "info":
                send(ok=True, info={**runner.info(), "device_peak_bytes": _device_peak()}, peak_rss=_peak_rss())
            elif request["cmd"] == "finish":
                if runner is not None:
                    runner.close()
                send(ok=True, peak_rss=_peak_rss())
                return
        except Exception as e:  # reported to the parent, which marks the cell failed
            import traceback

            traceback.print_exc()
            send(ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:300])


# ----------------------------------------------------------------------------- the parent side


class WorkerError(RuntimeError):
    pass


class _Worker:
    """A worker process, its stderr in a log file, and JSON requests with a timeout."""

    def __init__(self, modules: Sequence[str], log_dir: Path, name: str, env: dict):
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        # A cache folder of its own: torch.compile's first call is a cold compile, as in a fresh
        # environment, not a hit in the on-disk cache of an earlier run.
        env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(log_dir / f"inductor-{name}")}
        self.proc = subprocess.Popen([sys.executable, "-m", "netalchemy.bench", "--worker", *modules],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.log, env=env)
        self.ready: Optional[dict] = None

    def _read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            self.kill()
            raise WorkerError(f"no answer within {timeout:.0f} s")
        line = self.proc.stdout.readline()
        if not line:
            self.kill()
            tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["(no stderr)"]
            raise WorkerError(f"worker exited: {tail[0][:300]}")
        answer = json.loads(line)
        if not answer.get("ok"):
            raise WorkerError(answer.get("error", "unknown error"))
        return answer

    def wait_ready(self, timeout: float) -> dict:
        if self.ready is None:
            self.ready = self._read(timeout)
        return self.ready

    def request(self, timeout: float, **message) -> dict:
        self.wait_ready(timeout)
        if self.proc.poll() is not None:
            raise WorkerError("worker is not running")
        self.proc.stdin.write((json.dumps(message) + "\n").encode())
        self.proc.stdin.flush()
        return self._read(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.log.close()

    def finish(self, timeout: float) -> Optional[int]:
        """Asks for the peak RSS and ends the worker; None if it cannot answer."""
        try:
            return self.request(timeout, cmd="finish").get("peak_rss")
        except WorkerError:
            return None
        finally:
            self.kill()


def _write_data(settings: BenchSettings, folder: Path) -> dict[str, dict]:
    """Writes each workload's arrays to folder/<W>.npz; returns their sizes."""
    from netalchemy.config import DataConfig
    from netalchemy.data import load

    sizes = {}
    for name in settings.workloads:
        w = WORKLOADS[name]
        if name == "W1":
            ds = load(DataConfig())
            arrays = dict(x_train=ds.x_train, y_train=ds.y_train, x_test=ds.x_test, y_test=ds.y_test)
        else:
            rng = np.random.default_rng(0)
            n, m, f = settings.w2_train_size, settings.w2_test_size, w.widths[0]
            arrays = dict(x_train=rng.standard_normal((n, f), dtype=np.float32),
                          y_train=rng.integers(0, w.widths[-1], n).astype(np.int32),
                          x_test=rng.standard_normal((m, f), dtype=np.float32),
                          y_test=rng.integers(0, w.widths[-1], m).astype(np.int32))
        arrays = {k: np.ascontiguousarray(v, np.int32 if k.startswith("y") else np.float32) for k, v in arrays.items()}
        np.savez(folder / f"{name}.npz", **arrays)
        sizes[name] = {"n_train": len(arrays["y_train"]), "n_test": len(arrays["y_test"])}
    return sizes


def _median(values: Sequence[float]) -> Optional[float]:
    return float(statistics.median(values)) if values else None


def run_benchmark(settings: BenchSettings, *, out_dir: Optional[Path] = None,
                  log: Callable[[str], None] = print) -> dict:
    """Runs the whole benchmark; returns the results (and writes them into `out_dir` if given).

    Args:
      settings: what to measure (see `BenchSettings`, `PROFILES`).
      out_dir: if given, `bench.json`, `table.txt` and `scaling.png` are written there.
      log: progress lines (default print).

    Returns:
      A JSON-able dict: settings, provenance, workloads (with FLOPs per step), matmul rates,
      one entry per cell (status, timings, derived rates, memory), ratios and targets.
    """
    from netalchemy import store

    started = time.perf_counter()
    have_torch = torch_available()
    if not have_torch and any(WAYS[w].backend == "torch" for w in settings.ways):
        log(TORCH_MISSING)
    env = dict(os.environ)
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    scratch = Path(tempfile.mkdtemp(prefix="netalchemy-bench-"))
    cells: list[dict] = []
    matmul_samples: dict[str, list[float]] = {}
    matmul_workers: dict[str, _Worker] = {}
    timeout = settings.timeout_s
    try:
        base_spec = {"torch_threads": settings.torch_threads, "matmul_size": settings.matmul_size,
                     "engine_cpu_devices": settings.engine_cpu_devices}
        for backend in ("jax", "torch") if have_torch else ("jax",):  # they import while the data is written
            matmul_workers[backend] = _Worker((backend,), scratch, f"matmul-{backend}", env)
        sizes = _write_data(settings, scratch)

        def time_matmuls():  # one timing per backend; the first call sets the worker up
            for backend, worker in list(matmul_workers.items()):
                try:
                    if backend not in matmul_samples:
                        worker.wait_ready(timeout)
                        worker.request(timeout, cmd="setup", spec={**base_spec, "way": "matmul", "backend": backend})
                        matmul_samples[backend] = []
                    seconds = worker.request(timeout, cmd="time")["seconds"]
                    matmul_samples[backend].append(matmul_flops(settings.matmul_size) / seconds / 1e9)
                except WorkerError as e:
                    log(f"matmul ({backend}) failed: {e}")
                    worker.kill()
                    del matmul_workers[backend]

        for wname in settings.workloads:
            w = WORKLOADS[wname]
            for seeds in sorted(set(settings.seeds)):
                cells += _run_group(settings, w, seeds, sizes[wname], scratch, base_spec, env, time_matmuls, log)
    finally:
        try:
            for worker in matmul_workers.values():
                worker.finish(timeout)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # data, logs, sweep folders, inductor caches

    matmul = {b: {"gflops": _median(s), "samples": s} for b, s in matmul_samples.items()}
    rates = [m["gflops"] for m in matmul.values() if m["gflops"]]
    machine = max(rates) if rates else None
    for cell in cells:
        _derive(cell, machine)
    results = {
        "settings": dataclasses.asdict(settings),
        "provenance": {**store.provenance(), "torch": _torch_version(), "cpu_count": os.cpu_count()},
        "workloads": {n: {"widths": list(WORKLOADS[n].widths), "batch": WORKLOADS[n].batch, "lr": WORKLOADS[n].lr,
                          "data": WORKLOADS[n].data, **sizes.get(n, {}),
                          "flops_per_step": flops_per_step(WORKLOADS[n].widths, WORKLOADS[n].batch)}
                      for n in settings.workloads},
        "matmul": {**matmul, "machine_gflops": machine, "size": settings.matmul_size},
        "cells": cells,
        "wall_s": None,
    }
    results["ratios"] = ratio_rows(results)
    results["targets"] = target_rows(results)
    results["wall_s"] = time.perf_counter() - started
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def _torch_version() -> Optional[str]:
    from importlib import metadata

    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def plan_cells(settings: BenchSettings, workload: Workload, seeds: int, *, n_train: int, n_test: int,
               have_torch: bool) -> list[dict]:
    """The cells of one (workload, seeds) group, each "ok" (to run) or "skipped" with a reason.

    One-seed ways belong to the seeds=1 group only; PyTorch ways are skipped without
    PyTorch; the whole group is skipped when the engine's estimate exceeds `memory_limit_gb`
    or when fewer than `min_steps` steps fit in `max_gflop_per_call`.
    """
    steps, every = group_steps(settings, workload, seeds)
    estimate = engine_bytes(workload, seeds, n_train=n_train, n_test=n_test)
    cells = []
    for way in settings.ways:
        if not WAYS[way].vmapped and seeds != 1:
            continue
        cell = {"workload": workload.name, "way": way, "seeds": seeds, "steps": steps, "status": "ok", "reason": "",
                "times_s": [], "cpu_s": [], "first_call_s": None, "peak_rss_bytes": None,
                "rss_after_import_bytes": None, "engine_estimate_bytes": estimate, "info": {},
                "eval_flop_share": (eval_flop_share(workload, steps, every, n_train=n_train, n_test=n_test)
                                    if way in ("engine", "engine_chunk") else 0.0)}
        if WAYS[way].backend == "torch" and not have_torch:
            cell.update(status="skipped", reason="PyTorch not installed")
        elif estimate > settings.memory_limit_gb * 2**30:
            cell.update(status="skipped", reason=f"engine estimate {estimate / 2**30:.1f} GiB > memory_limit_gb")
        elif steps < settings.min_steps:
            cell.update(status="skipped", reason=f"{steps} steps < min_steps within max_gflop_per_call "
                                                 f"({settings.max_gflop_per_call:g})")
        cells.append(cell)
    return cells


def _run_group(settings: BenchSettings, w: Workload, seeds: int, size: dict, scratch: Path, base_spec: dict,
               env: dict, time_matmuls: Callable[[], None], log: Callable[[str], None]) -> list[dict]:
    """One (workload, seeds) group: a fresh process per cell, set up one at a time, timed round-robin."""
    cells = plan_cells(settings, w, seeds, have_torch=torch_available(), **size)
    active = [c for c in cells if c["status"] == "ok"]
    if not active:
        return cells
    steps, every = group_steps(settings, w, seeds)
    timeout = settings.timeout_s
    log(f"{w.name} · {seeds} seeds · {steps} steps per call: {', '.join(c['way'] for c in active)}")
    workers = {c["way"]: _Worker(WAYS[c["way"]].modules, scratch, f"{w.name}-{c['way']}-{seeds}", env)
               for c in active}  # they import in parallel
    spec = {**base_spec, "workload": w.name, "seeds": seeds, "steps": steps, "eval_every": every,
            "data": str(scratch / f"{w.name}.npz"), "scratch": str(scratch)}

    def fail(cell, error):
        cell.update(status="failed", reason=str(error))
        log(f"  {cell['way']}: failed: {error}")

    try:
        for cell in active:  # compilation is timed one worker at a time
            worker = workers[cell["way"]]
            try:
                cell["rss_after_import_bytes"] = worker.wait_ready(timeout)["rss_after_import"]
                answer = worker.request(timeout, cmd="setup", spec={**spec, "way": cell["way"]})
                cell["first_call_s"] = answer["first_call_s"]
            except WorkerError as e:
                fail(cell, e)
        for r in range(settings.repeats):
            live = [c for c in active if c["status"] == "ok"]
            k = r % max(len(live), 1)
            for cell in live[k:] + live[:k]:  # round-robin, starting one further each round
                try:
                    answer = workers[cell["way"]].request(timeout, cmd="time")
                    cell["times_s"].append(answer["seconds"])
                    cell["cpu_s"].append(answer["cpu_seconds"])
                except WorkerError as e:
                    fail(cell, e)
            time_matmuls()
        for cell in active:
            if cell["status"] != "ok":
                continue
            try:
                cell["info"] = workers[cell["way"]].request(timeout, cmd="info")["info"]
                cell["peak_rss_bytes"] = workers[cell["way"]].finish(timeout)
            except WorkerError as e:
                fail(cell, e)
                continue
            rate = cell["seeds"] * steps / _median(cell["times_s"])
            log(f"  {cell['way']:14s} {rate:12,.0f} seed-steps/s  (first call {cell['first_call_s']:.1f} s)")
    finally:
        for worker in workers.values():
            worker.kill()
    return cells


def _derive(cell: dict, machine_gflops: Optional[float]) -> None:
    """Adds the rates of one cell from its median time."""
    w = WORKLOADS[cell["workload"]]
    median = _median(cell["times_s"]) if cell["status"] == "ok" else None
    cell["median_s"] = median
    if not median:
        cell.update(seed_steps_per_s=None, examples_per_s=None, gflops=None, matmul_fraction=None,
                    first_call_extra_s=None, cpu_utilisation=None)
        return
    rate = cell["seeds"] * cell["steps"] / median
    gflops = rate * flops_per_step(w.widths, w.batch) / 1e9
    cell.update(seed_steps_per_s=rate, examples_per_s=rate * w.batch, gflops=gflops,
                matmul_fraction=gflops / machine_gflops if machine_gflops else None,
                first_call_extra_s=cell["first_call_s"] - median if cell["first_call_s"] is not None else None,
                cpu_utilisation=_median(cell["cpu_s"]) / median)


# ----------------------------------------------------------------------------- ratios


def find_cell(results: dict, workload: str, way: str, seeds: int) -> Optional[dict]:
    for cell in results["cells"]:
        if (cell["workload"], cell["way"], cell["seeds"]) == (workload, way, seeds):
            return cell
    return None


def rate_at(results: dict, workload: str, way: str, seeds: int) -> Optional[float]:
    """Seed-steps/s of `way` training `seeds` seeds; one-seed ways run them one after another."""
    cell = find_cell(results, workload, way, seeds if WAYS[way].vmapped else 1)
    return cell.get("seed_steps_per_s") if cell else None


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def ratio_rows(results: dict) -> list[dict]:
    """Per (workload, seeds): the engine's seed-steps/s ÷ each peer's, and its matmul fraction."""
    rows = []
    for workload in results["workloads"]:
        for seeds in sorted({c["seeds"] for c in results["cells"] if c["workload"] == workload}):
            engine = rate_at(results, workload, "engine", seeds)
            cell = find_cell(results, workload, "engine", seeds)
            rows.append({"workload": workload, "seeds": seeds, "engine_seed_steps_per_s": engine,
                         "engine_matmul_fraction": cell.get("matmul_fraction") if cell else None,
                         "vs": {p: _ratio(engine, rate_at(results, workload, p, seeds)) for p in PEERS}})
    return rows


TARGETS = (
    ("W1 @256 seeds: engine ÷ torch.func ensemble", "W1", 256, "engine", "torch_func"),
    ("W1 @32 seeds: engine ÷ PyTorch eager fused-Adam loop (32 runs in turn)", "W1", 32, "engine", "torch_eager"),
    ("W2 @largest seeds: engine GFLOP/s ÷ machine matmul GFLOP/s", "W2", None, "engine", "matmul"),
    ("W2 @largest seeds: plain-JAX GFLOP/s ÷ machine matmul GFLOP/s", "W2", None, "jax_ref", "matmul"),
    ("W1 @largest seeds: engine ÷ plain-JAX reference (engine overhead)", "W1", None, "engine", "jax_ref"),
    ("W2 @largest seeds: engine ÷ plain-JAX reference (engine overhead)", "W2", None, "engine", "jax_ref"),
    ("engine: compilations during repeated identical sweeps (must be 0)", None, None, "engine", "recompile"),
)


def target_rows(results: dict) -> list[dict]:
    """The issue's named targets (`TARGETS`), always one row each; value None when not measured.

    A target "@largest seeds" uses the largest seed count at which both sides were measured.
    """
    rows = []
    for name, workload, seeds, way, peer in TARGETS:
        value, where, note = None, "", ""
        if peer == "recompile":
            counts = [c["info"].get("compilations_after_first_call") for c in results["cells"]
                      if c["way"] == "engine" and c["status"] == "ok"]
            counts = [n for n in counts if n is not None]
            value, where = (max(counts) if counts else None), f"{len(counts)} engine cells"
            note = "" if counts else "no engine cell measured"
        elif workload not in results["workloads"]:
            note = f"{workload} not in this run"
        else:
            def side(s):
                if peer == "matmul":
                    cell = find_cell(results, workload, way, s)
                    return cell.get("matmul_fraction") if cell else None
                return _ratio(rate_at(results, workload, way, s), rate_at(results, workload, peer, s))

            if seeds is None:
                measured = [c["seeds"] for c in results["cells"] if c["workload"] == workload and side(c["seeds"])]
                seeds = max(measured, default=None)
            if seeds is not None:
                value = side(seeds)
                where = f"{workload} @{seeds} seeds" if value is not None else ""
            if value is None:
                note = f"not measured: needs {way} and {peer} on {workload}" + (f" at {seeds} seeds" if seeds else "")
        rows.append({"target": name, "where": where, "value": value, "note": note})
    return rows


# ----------------------------------------------------------------------------- output


def _fmt(value: Optional[float], spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def format_table(results: dict) -> str:
    """The benchmark as plain text: throughput per cell, ratios, targets, matmul, notes."""
    lines = []
    prov = results.get("provenance", {})
    mm = results["matmul"]
    lines.append(f"netalchemy benchmark · {prov.get('platform', '?')} · {prov.get('cpu_count', '?')} CPUs · "
                 f"jax {prov.get('versions', {}).get('jax')} · torch {prov.get('torch') or 'absent'} · "
                 f"{_fmt(results.get('wall_s'), '.0f')} s")
    lines.append(f"float32 matmul {mm['size']}×{mm['size']}: " + ", ".join(
        f"{b} {_fmt(mm[b]['gflops'], '.1f')} GFLOP/s" for b in ("jax", "torch") if b in mm)
        + f"; machine rate {_fmt(mm['machine_gflops'], '.1f')} GFLOP/s")
    for name, w in results["workloads"].items():
        lines.append(f"{name}: {'-'.join(map(str, w['widths']))}, batch {w['batch']}, Adam lr {w['lr']:g}, "
                     f"{w['flops_per_step'] / 1e6:,.1f} MFLOP per seed-step (matmuls), data: {w['data']}")
    header = (f"{'work':4s} {'way':14s} {'seeds':>5s} {'steps':>5s} {'median s':>8s} {'seed-steps/s':>12s} "
              f"{'examples/s':>11s} {'GFLOP/s':>7s} {'%matmul':>7s} {'1st call+':>9s} {'cpu×':>4s} "
              f"{'peak MB':>7s} {'+MB':>6s} {'est MB':>7s}  note")
    lines += ["", header, "-" * len(header)]
    mb = lambda b: _fmt(b / 2**20 if b else None, ".0f")  # noqa: E731
    pct = lambda f: None if f is None else 100 * f  # noqa: E731
    shown: set = set()
    for c in results["cells"]:
        group = [d for d in results["cells"] if (d["workload"], d["seeds"]) == (c["workload"], c["seeds"])]
        if all(d["status"] == "skipped" and d["reason"] == c["reason"] for d in group):
            if (c["workload"], c["seeds"]) not in shown:  # a skipped group is one line
                shown.add((c["workload"], c["seeds"]))
                lines.append(f"{c['workload']:4s} {f'all {len(group)} ways':14s} {c['seeds']:5d} {c['steps']:5d} "
                             f"{'skipped':>8s} {'':>70s} {mb(c.get('engine_estimate_bytes')):>7s}  {c['reason']}")
            continue
        note = c["reason"]
        if c["way"] == "engine" and c["info"]:
            note = (f"eval_every {c['info']['eval_every']} ({100 * c['eval_flop_share']:.0f}% of FLOPs), "
                    f"{c['info']['run_chunks']} run chunk(s), {c['info']['compilations_after_first_call']} recompiles")
        elif c["way"] == "engine_chunk" and c["info"]:
            note = f"eval_every {c['info']['eval_every']} ({100 * c['eval_flop_share']:.0f}% of FLOPs)"
        elif c["info"].get("adam"):
            note = f"Adam {c['info']['adam']}, {c['info']['threads']} threads"
        grown = (c["peak_rss_bytes"] - c["rss_after_import_bytes"]
                 if c.get("peak_rss_bytes") and c.get("rss_after_import_bytes") else None)
        lines.append(
            f"{c['workload']:4s} {c['way']:14s} {c['seeds']:5d} {c['steps']:5d} "
            f"{_fmt(c.get('median_s'), '8.3f', c['status']):>8s} "
            f"{_fmt(c.get('seed_steps_per_s'), ',.0f'):>12s} {_fmt(c.get('examples_per_s'), ',.0f'):>11s} "
            f"{_fmt(c.get('gflops'), '.2f'):>7s} {_fmt(pct(c.get('matmul_fraction')), '.1f'):>7s} "
            f"{_fmt(c.get('first_call_extra_s'), '.1f'):>9s} {_fmt(c.get('cpu_utilisation'), '.1f'):>4s} "
            f"{mb(c.get('peak_rss_bytes')):>7s} {mb(grown):>6s} {mb(c.get('engine_estimate_bytes')):>7s}  {note}")
    lines += ["", "engine seed-steps/s ÷ peer seed-steps/s (one-seed peers train the seeds one after another)"]
    header = f"{'work':4s} {'seeds':>5s} " + " ".join(f"{p:>13s}" for p in PEERS) + f" {'%matmul':>8s}"
    lines += [header, "-" * len(header)]
    for r in results["ratios"]:
        if r["engine_seed_steps_per_s"] is None:
            continue
        lines.append(f"{r['workload']:4s} {r['seeds']:5d} " + " ".join(f"{_fmt(r['vs'][p], '.2f'):>13s}" for p in PEERS)
                     + f" {_fmt(pct(r['engine_matmul_fraction']), '.1f'):>8s}")
    lines += ["", "targets"]
    for t in results["targets"]:
        lines.append(f"  {t['target']:70s} {_fmt(t['value'], '.3g'):>7s}  {t['where']} {t['note']}".rstrip())
    lines += ["", "median s: one timed call (median over the repeats); 1st call+: first call minus the median "
              "(compilation, warm-up); cpu×: CPU seconds per wall second of the process; peak MB: peak RSS of "
              "the worker process; +MB: its growth after the imports; est MB: the engine's estimate "
              "bytes_per_run × seeds."]
    return "\n".join(lines)


def format_markdown(results: dict) -> str:
    """The README's summary: seed-steps/s per way and seed count (one table per workload), the
    machine, and the targets with their measured values."""
    prov = results.get("provenance", {})
    mm = results["matmul"]
    lines = [f"{prov.get('cpu_count', '?')} CPUs, {prov.get('backend', '?')} backend, jax "
             f"{prov.get('versions', {}).get('jax')}, torch {prov.get('torch') or 'absent'}; the machine's "
             f"float32 {mm['size']}² matmul rate {_fmt(mm['machine_gflops'], '.1f')} GFLOP/s; "
             f"medians of {results['settings']['repeats']} interleaved timed calls; "
             f"{_fmt(results.get('wall_s'), '.0f')} s in all.", ""]
    for name, w in results["workloads"].items():
        cells = [c for c in results["cells"] if c["workload"] == name]
        seeds = sorted({c["seeds"] for c in cells if c.get("seed_steps_per_s")})
        if not seeds:
            continue
        lines += [f"| {name} ({'-'.join(map(str, w['widths']))}, batch {w['batch']}), seed-steps/s | "
                  + " | ".join(f"{n} seed{'s' if n > 1 else ''}" for n in seeds) + " |",
                  "|---|" + "---|" * len(seeds)]
        for way in WAYS:
            rates = [rate_at(results, name, way, n) if WAYS[way].vmapped or n == 1 else None for n in seeds]
            if any(r is not None for r in rates):
                lines.append(f"| {WAYS[way].label} | " + " | ".join(_fmt(r, ',.0f') for r in rates) + " |")
        engine = [find_cell(results, name, "engine", n) for n in seeds]
        lines.append("| engine: % of the matmul rate | " + " | ".join(
            _fmt(100 * c["matmul_fraction"] if c and c.get("matmul_fraction") else None, ".1f") for c in engine) + " |")
        lines.append("")
    lines += ["| target | measured | where |", "|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {_fmt(t['value'], '.3g')} | {t['where'] or t['note']} |")
    return "\n".join(lines)


def plot_scaling(results: dict, path: Path) -> Path:
    """Seed-steps/s against seeds trained at once, log-log, one panel per workload."""
    from netalchemy import plots

    plt = plots.plt
    names = list(results["workloads"])
    fig, axes = plt.subplots(1, max(len(names), 1), figsize=(6.5 * max(len(names), 1), 6.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        measured = [c for c in results["cells"] if c["workload"] == name and c.get("seed_steps_per_s")]
        seeds = sorted({c["seeds"] for c in measured}) or [1]
        span = [min(seeds) / 1.5, max(seeds) * 1.5]
        for i, way in enumerate(WAYS):
            ok = [c for c in measured if c["way"] == way]
            if not ok:
                continue
            color = f"C{i}"
            xs = [c["seeds"] for c in ok]
            ys = [c["seed_steps_per_s"] for c in ok]
            lo = [y - c["seeds"] * c["steps"] / max(c["times_s"]) for y, c in zip(ys, ok)]
            hi = [c["seeds"] * c["steps"] / min(c["times_s"]) - y for y, c in zip(ys, ok)]
            if WAYS[way].vmapped:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", color=color, capsize=3, label=WAYS[way].label)
            else:
                ax.errorbar(xs, ys, yerr=[lo, hi], marker="s", color=color, capsize=3, ls="none")
                ax.plot(span, [ys[0]] * 2, ls="--", color=color, label=f"{WAYS[way].label} (1 seed; N seeds in turn)")
        machine = results["matmul"].get("machine_gflops")
        if machine and measured:
            bound = machine * 1e9 / results["workloads"][name]["flops_per_step"]
            ax.axhline(bound, color="k", ls=":", lw=1, label=f"matmul-rate bound ({machine:.0f} GFLOP/s)")
        w = results["workloads"][name]
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlim(*span)
        ax.set_xticks(seeds, [str(n) for n in seeds])
        ax.minorticks_off()
        ax.set_xlabel("seeds trained at once")
        ax.set_ylabel("seed-steps per second (median, min–max bars)")
        ax.set_title(f"{name}: {'-'.join(map(str, w['widths']))} MLP, batch {w['batch']}, Adam")
        ax.grid(True, which="major", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
        else:
            ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, ha="center")
    prov = results.get("provenance", {})
    fig.suptitle(f"Training throughput · {prov.get('cpu_count', '?')} CPUs, backend {prov.get('backend', '?')} · "
                 f"median of {results.get('settings', {}).get('repeats', '?')} timed calls per point", fontsize=10)
    return plots.save(fig, path)


def write_results(results: dict, out_dir: Path) -> dict[str, Path]:
    """Writes bench.json, table.txt, summary.md and scaling.png into `out_dir`; returns their paths."""
    from netalchemy import store

    out_dir = store.ensure_writable(Path(out_dir))
    paths = {"json": out_dir / "bench.json", "table": out_dir / "table.txt", "markdown": out_dir / "summary.md",
             "plot": out_dir / "scaling.png"}
    store.write_json(paths["json"], results)
    paths["table"].write_text(format_table(results) + "\n")
    paths["markdown"].write_text(format_markdown(results) + "\n")
    plot_scaling(results, paths["plot"])
    return paths


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
