"""The two engine ways, built on netalchemy's public sweep API only.

  engine        `sweep.run(cfg, out_dir=<fresh folder>, dataset=...)` as a user runs it:
                init, evaluations, divergence checks, shuffled epochs, checkpoints, files,
                predictions, reading the result back. Compilations during the timed calls
                are counted through the engine's jitted functions and must be 0.
  engine_chunk  the engine's compiled training program alone: `sweep.train_chunk` over
                every evaluation interval of `train.interval_plan(cfg)`, one call per
                `chunk_steps` of full intervals (several intervals scanned in one program;
                `sweep.run` instead queues one call per interval) and one for a shorter last
                interval, metrics fetched to the host after each call; no init, checkpoints
                or files (states are re-initialised, untimed, before each timed call because
                the program donates them). Its lever ways change the program as
                `settings.VARIANTS` says (one data order, evaluation at the ends only, matmul
                precision, the hand-derived backward pass, the gradient norm logged).

Both run on the CPU devices the `netalchemy` command sets up (one per core, runs sharded
over them); `engine_cpu_devices` overrides.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

from netalchemy import devices

from .settings import WORKLOADS, engine_config, variants
from .worker import Runner


def _use_devices(spec: dict) -> None:
    """The CPU devices the CLI would give the engine (before JAX runs anything)."""
    devices.use_cpu_cores(spec["engine_cpu_devices"] or None)


def _compilations(sweep) -> int:
    """Programs compiled so far by the engine's public jitted functions (JAX's `_cache_size`)."""
    jitted = (sweep.init_states, sweep.evaluate_states, sweep.train_chunk, sweep.predict_states)
    return sum(f._cache_size() for f in jitted)


def sweep_runner(spec: dict, data: dict) -> Runner:
    """`sweep.run` into a fresh folder per call; counts compilations after the first call."""
    _use_devices(spec)
    from netalchemy import sweep
    from netalchemy.data import Dataset

    w = WORKLOADS[spec["workload"]]
    cfg = engine_config(w, spec["seeds"], steps=spec["steps"], eval_every=spec["eval_every"])
    dataset = Dataset(data["x_train"], data["y_train"], data["x_test"], data["y_test"], w.widths[-1], w.name)
    root = Path(tempfile.mkdtemp(prefix="engine-", dir=spec["scratch"]))  # removed with the scratch folder
    calls = {"n": 0, "folder": None, "compiled": None}

    def prepare():
        if calls["folder"] is not None:
            shutil.rmtree(calls["folder"], ignore_errors=True)
        if calls["n"] == 1:  # after the first (compiling) call: count compilations from here on
            calls["compiled"] = _compilations(sweep)
        calls["n"] += 1
        calls["folder"] = root / f"sweep-{calls['n']}"  # a fresh folder: nothing is reused

    def run():
        return sweep.run(cfg, out_dir=calls["folder"], dataset=dataset, progress=False)

    def info():
        recompiles = None if calls["compiled"] is None else _compilations(sweep) - calls["compiled"]
        per_run = sweep.bytes_per_run(cfg, in_features=w.widths[0], num_classes=w.widths[-1],
                                      n_train=len(dataset.y_train), n_test=len(dataset.y_test))
        chunk = sweep.runs_per_chunk(cfg, spec["seeds"], per_run, sweep.device_mesh(spec["seeds"]).size)
        return {"compilations_after_first_call": recompiles, "eval_every": cfg.train.eval_every,
                "chunk_steps": cfg.train.chunk_steps, "run_chunks": math.ceil(spec["seeds"] / chunk),
                "timed_calls": calls["n"] - 1}

    return Runner(run, prepare, info, lambda: shutil.rmtree(root, ignore_errors=True))


def program_runner(spec: dict, data: dict) -> Runner:
    """`sweep.train_chunk` alone, every run in one run chunk, `chunk_steps` of intervals per call."""
    _use_devices(spec)
    import jax
    import jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec

    from netalchemy import sweep, train

    w = WORKLOADS[spec["workload"]]
    n, changes = spec["seeds"], variants(spec)
    cfg = engine_config(w, n, steps=spec["steps"], eval_every=spec["steps"] if "eval_once" in changes
                        else spec["eval_every"])
    if "shared_data" in changes:
        cfg = dataclasses.replace(cfg, seeds=dataclasses.replace(cfg.seeds, vary=("init", "dropout")))
    if "hand_grad" in changes:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad="hand"))
    if "grad_norm" in changes:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, grad_norm=True))
    if "highest" in changes:
        jax.config.update("jax_default_matmul_precision", "highest")
    mesh = sweep.device_mesh(n)
    seeds = np.arange(n + (-n) % mesh.size)  # padded to a multiple of the devices, as sweep.run does
    axes = sweep.stream_axes(cfg)
    streams = sweep.shard_runs(sweep.run_streams(cfg, seeds), mesh, axes)
    lrs = sweep.shard_runs(jnp.full(len(seeds), w.lr, jnp.float32), mesh)
    arrays = train.Data(*(jnp.asarray(data[k]) for k in ("x_train", "y_train", "x_test", "y_test")))
    arrays = jax.device_put(arrays, NamedSharding(mesh, PartitionSpec()))
    full, tail = train.interval_plan(cfg)  # full intervals, steps of a shorter last one (0: none)
    per_chunk = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    box = {}

    def prepare():
        box["states"] = jax.block_until_ready(sweep.init_states(
            streams, lrs, cfg=cfg, axes=axes, in_features=w.widths[0], num_classes=w.widths[-1]))

    def run():
        states, done = box.pop("states"), 0
        while done < full:
            k = min(per_chunk, full - done)
            states, metrics = sweep.train_chunk(states, streams, arrays, lrs, cfg=cfg, axes=axes, intervals=k)
            jax.device_get(metrics)
            done += k
        if tail:
            states, metrics = sweep.train_chunk(states, streams, arrays, lrs, cfg=cfg, axes=axes, intervals=1,
                                                length=tail)
            jax.device_get(metrics)
        jax.block_until_ready(states)

    program = {"eval_every": cfg.train.eval_every, "seeds_vary": list(cfg.seeds.vary), "grad": cfg.train.grad,
               "grad_norm": cfg.train.grad_norm,
               "matmul_precision": str(jax.config.jax_default_matmul_precision)}
    return Runner(run, prepare, lambda: program)
