"""Many runs at once: `vmap` over seeds (and a learning-rate grid), sharded, chunked, resumable.

A sweep is a list of runs, each a (seed, learning rate) pair. Runs are trained together by
one compiled program: the run axis is `vmap`-ped and sharded over all local devices with
`jax.sharding` (Mesh + NamedSharding). Runs go in chunks that fit `train.memory_budget_gb`
(`memory.runs_per_chunk`); each chunk trains `train.chunk_steps` steps at a time and is
checkpointed with orbax after each (`checkpoints.Checkpoints`), so a sweep stopped at any
point (Ctrl-C, `kill -9`) resumes where its last checkpoint left it and ends bit-identical
to a sweep never interrupted. The results folder (its files, lock, checks and `load`) is
`sweep_folder`.

Several processes (hosts) can share one sweep: after `devices.initialize_processes` every
process calls `run` with the same arguments and `out_dir` (a shared folder); the mesh spans
all processes' devices, each run is computed once, results are gathered to every process and
process 0 writes the files.

Randomness streams not listed in `seeds.vary` are shared by all runs: their keys enter the
vmapped program unbatched (in_axes None), so e.g. a shared data order is gathered once.

Experiments hook into the engine (`run(..., measure=, perturb=)`): a *measurement*
(`train.measured`) runs at step 0 and after every evaluation interval, its arrays stored as
`SweepResult.measures` (runs, evaluations, ...); a *perturbation* `perturb(state, run, cfg)`
edits each run's initial state (`run` is the run's index in the sweep, e.g. to move one
weight of every second run by one ulp). Both are hashable callables compiled into programs
of their own beside the training program, which they never change: the runs of a sweep with
hooks are bit-identical to the same runs without them (a hook fused into the training
program moved its results in the last bits). Both are named in the folder's config.json, so
a sweep with other hooks never reuses it.
"""

from __future__ import annotations

import contextlib
import shutil
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy import mlp, store, train
from netalchemy.checkpoints import Checkpoints, flat, to_host, unflat
from netalchemy.config import RANDOMNESS_STREAMS, Config, DataConfig, SeedsConfig
from netalchemy.memory import available_memory, bytes_per_run, check_memory, result_bytes_per_run, runs_per_chunk
from netalchemy.sweep_folder import (METRICS, RETRAINING, SweepResult, claim, describe_hook, expected_arrays,
                                     final_state, finish, format_summary, is_writer, load, measure_spec, read_checked,
                                     summarize, x64)

# The public API, with the names that moved to `memory` and `sweep_folder` re-exported.
__all__ = ["METRICS", "RETRAINING", "SweepResult", "available_memory", "bytes_per_run", "check_memory",
           "device_mesh", "evaluate_states", "format_summary", "init_states", "initial_params", "load",
           "measure_states", "perturb_states", "plan_runs", "predict_states", "result_bytes_per_run", "run",
           "run_streams", "runs_per_chunk", "shard_runs", "stream_axes", "summarize", "train_chunk"]


# ----------------------------------------------------------------------------- planning


def plan_runs(cfg: Config, lrs: Optional[Sequence[float]] = None) -> tuple[np.ndarray, np.ndarray]:
    """(seeds, lrs) per run: every seed at `cfg.optim.lr`, or every seed at every lr of a grid."""
    seeds = np.arange(cfg.seeds.start, cfg.seeds.start + cfg.seeds.n)
    if lrs is None:
        return seeds, np.full(seeds.shape, cfg.optim.lr)
    lrs = np.asarray(lrs, np.float64)
    return np.tile(seeds, len(lrs)), np.repeat(lrs, len(seeds))


def stream_axes(cfg: Config) -> train.Streams:
    """vmap in_axes per stream: 0 for streams that vary between seeds, None for shared ones."""
    return train.Streams(*(0 if s in cfg.seeds.vary else None for s in RANDOMNESS_STREAMS))


def run_streams(cfg: Config, seeds: np.ndarray) -> train.Streams:
    """Keys per stream: (runs,) keys for varying streams, one key (seed `start`) for shared ones."""
    keys = []
    for s in RANDOMNESS_STREAMS:
        if s in cfg.seeds.vary:
            keys.append(jax.vmap(lambda seed: train.stream_key(seed, s))(jnp.asarray(seeds)))
        else:
            keys.append(train.stream_key(cfg.seeds.start, s))
    return train.Streams(*keys)


def initial_params(cfg: Config, seeds: Sequence[int], *, in_features: int, num_classes: int):
    """The sweep's initial (params, bn_state) per run (leading runs axis), with the keys
    `sweep.run` uses: each seed's init stream, or `seeds.start`'s when the stream is shared."""
    init_seeds = np.asarray(seeds) if "init" in cfg.seeds.vary else np.full(len(seeds), cfg.seeds.start)
    return _init_params(jnp.asarray(init_seeds), cfg=cfg.model, in_features=in_features, num_classes=num_classes)


@partial(jax.jit, static_argnames=("cfg", "in_features", "num_classes"))
def _init_params(seeds, *, cfg, in_features: int, num_classes: int):
    keys = jax.vmap(lambda s: train.stream_key(s, "init"))(seeds)
    return jax.vmap(lambda k: mlp.init(k, cfg, in_features=in_features, num_classes=num_classes))(keys)


# ----------------------------------------------------------------------------- compiled pieces


def program_config(cfg: Config) -> Config:
    """`cfg` as the compiled programs get it: `data` and `seeds`, which they never read (the data
    arrive as arrays, the seeds as keys), at their defaults, so that sweeps differing only there
    (label noise, a dataset of the same shape, other seeds) run one compiled program."""
    return replace(cfg, data=DataConfig(), seeds=SeedsConfig())


@partial(jax.jit, static_argnames=("cfg", "axes", "in_features", "num_classes"))
def init_states(streams: train.Streams, lrs: jax.Array, *, cfg: Config, axes: train.Streams, in_features: int,
                num_classes: int) -> train.TrainState:
    """Initial train states of a batch of runs (every leaf gains a leading (runs,) axis).

    Args:
      streams: keys per stream, (runs,) for streams whose axis is 0 in `axes`, one key otherwise.
      lrs: (runs,) learning rates.
      axes: `stream_axes(cfg)`, the vmap in_axes of each stream.
    """
    init = partial(train.init_state, cfg=cfg, in_features=in_features, num_classes=num_classes)
    return jax.vmap(init, in_axes=(axes, 0))(streams, lrs)


@partial(jax.jit, static_argnames=("cfg",))
def evaluate_states(states: train.TrainState, data: train.Data, *, cfg: Config) -> train.Metrics:
    """`train.evaluate` of every run: Metrics with (runs,) fields (batch loss and gradient norm NaN)."""
    return jax.vmap(lambda s: train.evaluate(s, data, cfg=cfg))(states)


@partial(jax.jit, static_argnames=("cfg", "axes", "measure"))
def measure_states(states: train.TrainState, streams: train.Streams, data: train.Data, *, cfg: Config,
                   axes: train.Streams, measure) -> dict[str, jax.Array]:
    """The measurement hook on every run, a program of its own: name -> (runs, ...) ({} without a hook)."""
    return jax.vmap(lambda st, s: train.measured(measure, st, s, data, cfg=cfg), in_axes=(0, axes))(states, streams)


@partial(jax.jit, static_argnames=("cfg", "perturb"), donate_argnums=(0,))
def perturb_states(states: train.TrainState, runs: jax.Array, *, cfg: Config, perturb) -> train.TrainState:
    """`perturb(state, run, cfg)` applied to every run's state; `runs` (runs,) int32 are their sweep indices."""
    return jax.vmap(lambda st, r: perturb(st, r, cfg))(states, runs)


@partial(jax.jit, static_argnames=("cfg", "axes", "intervals", "length"), donate_argnums=(0,))
def train_chunk(states: train.TrainState, streams: train.Streams, data: train.Data, lrs: jax.Array, *,
                cfg: Config, axes: train.Streams, intervals: int,
                length: Optional[int] = None) -> tuple[train.TrainState, train.Metrics]:
    """The engine's compiled program: `intervals` evaluation intervals of every run, vmapped.

    Each interval is `length` steps (default `cfg.train.eval_every`; the last interval of a
    run whose steps are not a multiple of it is shorter). `states` is donated.

    Returns:
      (states after the intervals, Metrics with (runs, intervals) fields).
    """
    run = partial(train.train_intervals, data=data, cfg=cfg, intervals=intervals, length=length)
    return jax.vmap(lambda st, s, lr: run(st, s, lr=lr), in_axes=(0, axes, 0))(states, streams, lrs)


@partial(jax.jit, static_argnames=("cfg",))
def predict_states(states: train.TrainState, x: jax.Array, *, cfg: Config) -> jax.Array:
    """Predicted classes (runs, batch) int32 of every run on `x` (batch, features), evaluation mode."""
    return jax.vmap(lambda s: train.predict(s.params, s.bn_state, x, cfg=cfg))(states)


# ----------------------------------------------------------------------------- the sweep


def _sync(name: str) -> None:
    """A barrier across processes (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _put(x, sharding):
    """device_put that also places typed PRNG keys on devices of other processes."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.random.wrap_key_data(jax.device_put(jax.random.key_data(x), sharding), impl=jax.random.key_impl(x))
    return jax.device_put(x, sharding)


def device_mesh(n_runs: Optional[int] = None) -> Mesh:
    """A 1-D Mesh with axis "runs" over every process's devices, never more of them than `n_runs`."""
    devices = jax.devices()
    if n_runs is not None:
        devices = devices[:max(1, min(len(devices), n_runs))]
    return Mesh(np.array(devices), ("runs",))


def shard_runs(tree: Any, mesh: Mesh, axes: Optional[Sequence[Optional[int]]] = None) -> Any:
    """Places a pytree on `mesh`: leaves with a leading (runs,) axis sharded over "runs".

    Args:
      tree: arrays (or typed PRNG keys) whose leading axis is the run axis.
      axes: for a NamedTuple such as `train.Streams`, per field 0 (sharded) or None
        (replicated: one value shared by every run); None shards every leaf.
    """
    run_sharded, replicated = NamedSharding(mesh, PartitionSpec("runs")), NamedSharding(mesh, PartitionSpec())
    if axes is None:
        return jax.tree.map(lambda t: _put(t, run_sharded), tree)
    return type(tree)(*(_put(t, run_sharded if a == 0 else replicated) for t, a in zip(tree, axes)))


def _report(progress, history: dict[str, np.ndarray], column: int, steps: int, n_real: int) -> None:
    """Advances the bar by one evaluation interval and shows that evaluation's loss."""
    progress.update(steps)
    alive = ~history["diverged"][:n_real, column].astype(bool)
    loss = history["batch_loss"][:n_real, column][alive]
    progress.set_postfix(loss=f"{np.mean(loss):.4f}" if loss.size else "all diverged", diverged=int((~alive).sum()))


def _train_chunk_of_runs(cfg: Config, data: train.Data, seeds, lrs, *, folder: Path, in_features: int,
                         num_classes: int, progress, mesh: Mesh, first_run: int, hooks: dict,
                         spec: dict) -> dict[str, np.ndarray]:
    """Trains one chunk of runs to the end, checkpointing; returns its arrays for chunk-NNNN.npz.

    Each evaluation interval is one call of `train_chunk` (and one of `measure_states` after it
    with a measurement hook), all of a checkpoint's intervals dispatched before the first
    result is read, so the device never waits for the host while the bar advances per interval.
    """
    n_real = len(seeds)
    pad = (-n_real) % mesh.size
    seeds_p, lrs_p = np.concatenate([seeds, np.repeat(seeds[-1:], pad)]), np.concatenate([lrs, np.repeat(lrs[-1:], pad)])
    axes = stream_axes(cfg)
    streams = shard_runs(run_streams(cfg, seeds_p), mesh, axes)
    lr_arr = shard_runs(jnp.asarray(lrs_p, cfg.model.dtype), mesh)
    program = program_config(cfg)
    states = init_states(streams, lr_arr, cfg=program, axes=axes, in_features=in_features, num_classes=num_classes)
    if hooks["perturb"] is not None:
        runs = first_run + np.minimum(np.arange(len(seeds_p)), n_real - 1)  # padding repeats the last run
        states = perturb_states(states, shard_runs(jnp.asarray(runs, jnp.int32), mesh), cfg=cfg,
                                perturb=hooks["perturb"])
    measure = hooks["measure"]
    full, tail = train.interval_plan(cfg)
    lengths = [None] * full + ([tail] if tail else [])  # steps per interval; None: eval_every
    steps = [cfg.train.eval_every if n is None else n for n in lengths]
    per_checkpoint = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    history = {m: np.full((len(seeds_p), len(lengths) + 1), np.nan) for m in METRICS}
    history |= {f"measure/{k}": np.zeros((len(seeds_p), len(lengths) + 1, *shape), dtype)
                for k, (shape, dtype) in spec.items()}

    ckpt = Checkpoints(folder)
    done = 0
    restored = ckpt.restore({"state": flat(states), "history": history})
    if restored is not None:
        done, tree = restored
        states = shard_runs(unflat(tree["state"], states), mesh)
        history = tree["history"]
    else:
        first = to_host(evaluate_states(states, data, cfg=program))
        for m in METRICS:
            history[m][:, 0] = np.asarray(getattr(first, m), np.float64)
        if measure is not None:
            for k, v in to_host(measure_states(states, streams, data, cfg=cfg, axes=axes, measure=measure)).items():
                history[f"measure/{k}"][:, 0] = v
    if progress is not None:
        progress.update(sum(steps[:done]))
    while done < len(lengths):
        end = min(done + per_checkpoint, len(lengths))
        pending = []
        for i in range(done, end):  # queued: the device runs ahead while the host reads results
            states, metrics = train_chunk(states, streams, data, lr_arr, cfg=program, axes=axes, intervals=1,
                                          length=lengths[i])
            measures = {} if measure is None else measure_states(states, streams, data, cfg=cfg, axes=axes,
                                                                 measure=measure)
            pending.append((metrics, measures))
        for i, (metrics, measures) in enumerate(pending, start=done):
            metrics, measures = to_host((metrics, measures))
            for m in METRICS:
                history[m][:, 1 + i] = np.asarray(getattr(metrics, m), np.float64)[:, 0]
            for k, v in measures.items():
                history[f"measure/{k}"][:, 1 + i] = v
            if progress is not None:
                _report(progress, history, 1 + i, steps[i], n_real)
        done = end
        if done < len(lengths):  # the finished chunk is written next, as chunk-NNNN.npz
            ckpt.save(done, {"state": flat(states), "history": history})
    ckpt.close()
    predictions = np.asarray(to_host(predict_states(states, data.x_test, cfg=program)))
    final = to_host(states)
    return {**{f"history/{m}": v[:n_real] for m, v in history.items()},
            "test_predictions": predictions[:n_real],
            **{f"state/{k}": v[:n_real] for k, v in flat(final).items()}}


def _train_all(cfg: Config, dataset: data_lib.Dataset, seeds: np.ndarray, run_lrs: np.ndarray, *, out_dir: Path,
               mesh: Mesh, per_run: int, info: dict, progress: bool, hooks: dict, spec: dict) -> None:
    """Trains the chunks not yet on disk, then writes history.npz, provenance and summary.json."""
    from tqdm.auto import tqdm

    dtype = cfg.model.dtype
    data = jax.device_put(train.Data(jnp.asarray(dataset.x_train, dtype), jnp.asarray(dataset.y_train, jnp.int32),
                                     jnp.asarray(dataset.x_test, dtype), jnp.asarray(dataset.y_test, jnp.int32)),
                          NamedSharding(mesh, PartitionSpec()))
    size = runs_per_chunk(cfg, len(seeds), per_run, mesh.size)
    chunks = [slice(i, min(i + size, len(seeds))) for i in range(0, len(seeds), size)]
    parts = {}  # chunk index -> its arrays (trained now, or read back and checked)
    for c, sl in enumerate(chunks):
        path = out_dir / "chunks" / f"chunk-{c:04d}.npz"
        if path.exists():
            parts[c] = read_checked(path, expected_arrays(cfg, info, sl.stop - sl.start, spec),
                                    fix="; delete it to retrain that chunk")
            continue
        bar = tqdm(total=cfg.train.steps, unit="step", disable=not (progress and is_writer()), leave=False,
                   desc=f"seeds {sl.start + 1}-{sl.stop}/{len(seeds)}")
        try:
            with bar:
                parts[c] = _train_chunk_of_runs(
                    cfg, data, seeds[sl], run_lrs[sl], folder=out_dir / "checkpoints" / f"chunk-{c:04d}",
                    in_features=info["features"], num_classes=info["classes"], progress=bar if progress else None,
                    mesh=mesh, first_run=sl.start, hooks=hooks, spec=spec)
            if is_writer():
                store.write_npz(path, parts[c])
        except store.NoSpace as e:  # chunks 0 … c-1 are on disk
            raise store.NoSpace(e.path, c, len(chunks)) from None
        if is_writer():
            shutil.rmtree(out_dir / "checkpoints" / f"chunk-{c:04d}", ignore_errors=True)
        _sync(f"netalchemy-sweep-chunk-{c}")
    if is_writer():
        merged = {k: np.concatenate([parts[c][k] for c in range(len(chunks))]) for k in parts[0]}
        finish(out_dir, merged, seeds, run_lrs, final=final_state(merged, cfg, info), n_chunks=len(chunks))
    _sync("netalchemy-sweep-written")


def run(cfg: Config, *, lrs: Optional[Sequence[float]] = None, out_dir: Optional[Path] = None,
        dataset: Optional[data_lib.Dataset] = None, progress: bool = True, force: bool = False,
        measure=None, perturb=None) -> SweepResult:
    """Trains every run of the sweep (resuming from `out_dir` if it holds a partial one).

    Args:
      cfg: the resolved config; `cfg.seeds` says which seeds and which streams vary;
        model.dtype=float64 trains in JAX's 64-bit mode.
      lrs: an optional learning-rate grid; every seed then runs at every lr (runs = lr-major).
      out_dir: results folder; None keeps everything in memory (no checkpoints).
      dataset: arrays to train on; default `data.load(cfg.data)`.
      progress: show a tqdm bar (advancing per evaluation interval).
      force: retrain even if `out_dir` holds this sweep, finished or partial.
      measure: a measurement hook (`train.measured`); its arrays come back as `result.measures`.
      perturb: `perturb(state, run, cfg) -> state`, applied to the initial state of each run
        (`run`: the run's index in the sweep, int32).

    Raises:
      config.ConfigError: bad settings, or a sweep that cannot fit in memory (before anything
        is written).
      store.StoreError: a folder in use by another process (lock), of another config, partly
        trained on another device count, or holding a damaged file (the message says which).
      store.NoSpace: the disk filled up; rerunning after freeing space resumes.
    """
    dataset = dataset if dataset is not None else data_lib.load(cfg.data)
    seeds, run_lrs = plan_runs(cfg, lrs)
    n_train, in_features = dataset.x_train.shape
    if cfg.train.batch_size > n_train:
        raise config_lib.ConfigError(f"train.batch_size ({cfg.train.batch_size}) exceeds the training set "
                                     f"({n_train} examples)")
    info = {"name": dataset.name, "n_train": n_train, "n_test": len(dataset.y_test), "features": in_features,
            "classes": dataset.num_classes}
    record = {"config": config_lib.to_dict(cfg), "lrs": None if lrs is None else [float(v) for v in lrs],
              "dataset": info}
    hooks = {"measure": measure, "perturb": perturb}
    with x64(cfg):
        spec = measure_spec(cfg, info, measure)
    if measure is not None or perturb is not None:  # a sweep without hooks keeps its record (and folder)
        record["hooks"] = {"measure": describe_hook(measure), "perturb": describe_hook(perturb),
                           "arrays": {k: [list(shape), str(dtype)] for k, (shape, dtype) in spec.items()}}
    mesh = device_mesh(len(seeds))
    per_run = bytes_per_run(cfg, in_features=in_features, num_classes=dataset.num_classes, n_train=n_train,
                            n_test=info["n_test"])
    check_memory(cfg, len(seeds), per_run=per_run, n_devices=mesh.size, available=available_memory(),
                 per_result=result_bytes_per_run(cfg, in_features=in_features, num_classes=dataset.num_classes,
                                                 n_test=info["n_test"])
                 + len(train.evaluation_steps(cfg)) * sum(int(np.prod(sh)) * np.dtype(dt).itemsize
                                                          for sh, dt in spec.values()))
    scratch = out_dir is None
    if scratch and jax.process_count() > 1:
        raise config_lib.ConfigError("a sweep over several processes needs out_dir, a folder they share")
    if scratch:
        import tempfile
        out_dir = Path(tempfile.mkdtemp(prefix="netalchemy-sweep-"))
    out_dir = Path(out_dir)
    with x64(cfg), contextlib.ExitStack() as stack:
        finished = claim(out_dir, record, stack, force=force, mesh_devices=mesh.size, n_runs=len(seeds))
        if not finished:
            _train_all(cfg, dataset, seeds, run_lrs, out_dir=out_dir, mesh=mesh, per_run=per_run, info=info,
                       progress=progress, hooks=hooks, spec=spec)
        result = load(out_dir)._replace(reused=finished)
    if scratch:
        shutil.rmtree(out_dir, ignore_errors=True)
        result = result._replace(out_dir=None, finished=None)
    return result
