"""Many runs at once: `vmap` over seeds (and a learning-rate grid), sharded, chunked, resumable.

A sweep is a list of runs, each a (seed, learning rate) pair. Runs are trained together by
one compiled program: the run axis is `vmap`-ped and sharded over all local devices with
`jax.sharding` (Mesh + NamedSharding). Runs go in chunks that fit `train.memory_budget_gb`;
each chunk trains `train.chunk_steps` steps at a time and is checkpointed with orbax after
each, so a sweep stopped at any point (Ctrl-C, `kill -9`) resumes where its last checkpoint
left it and ends bit-identical to a sweep never interrupted.

Several processes (hosts) can share one sweep: after `devices.initialize_processes` every
process calls `run` with the same arguments and `out_dir` (a shared folder); the mesh spans
all processes' devices, each run is computed once, results are gathered to every process and
process 0 writes the files.

Randomness streams not listed in `seeds.vary` are shared by all runs: their keys enter the
vmapped program unbatched (in_axes None), so e.g. a shared data order is gathered once.

On disk (`out_dir`): config.json, provenance.json (versions and devices of every training
segment, the finish time), chunks/chunk-NNNN.npz (finished chunks: history, test predictions,
final state), checkpoints/ (unfinished chunks, with a sha256 of their content), history.npz
and summary.json once every chunk is done (summary.json last: it marks a finished sweep).
One process at a time holds a folder (`store.locked`); on entry it deletes temporary files
that a killed write left. Every file read back is checked (CRC, sha256, keys and shapes), and
a damaged one stops the sweep with a one-line `store.StoreError` that says how to recover.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import math
import os
import shutil
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy import mlp, optim, stats, store, train
from netalchemy.config import RANDOMNESS_STREAMS, Config

METRICS = train.Metrics._fields


class SweepResult(NamedTuple):
    """A finished sweep, as `run` returns it and `load` reads it back.

    Attributes:
      cfg: the resolved config every run trained with (`lrs` aside).
      seeds: (runs,) int, each run's seed; runs are lr-major (all seeds at the first lr, ...).
      lrs: (runs,) float, each run's learning rate.
      history: metric name (`METRICS`) -> (runs, evaluations) float64, one column per step of
        `train.evaluation_steps(cfg)` (step 0, every `eval_every`, the last step); the
        "step" metric holds those steps and "diverged" is 1.0 once a run has diverged.
      test_predictions: (runs, n_test) int32, predicted test classes of the final params.
      final: the final `train.TrainState`, numpy leaves with a leading (runs,) axis
        (a diverged run is frozen at the start of the interval where it diverged).
      summary: summary.json's content: runs, divergences, per lr each final metric's
        statistics (`stats.summarize`), and per run the finals and `diverged_at_step`.
      out_dir: the results folder, or None for a sweep kept in memory.
      reused: True when the sweep was already finished on disk and was loaded, not trained,
        by this call.
      finished: when the stored sweep finished (ISO 8601, UTC), None for one kept in memory.
    """

    cfg: Config
    seeds: np.ndarray
    lrs: np.ndarray
    history: dict[str, np.ndarray]
    test_predictions: np.ndarray
    final: train.TrainState
    summary: dict[str, Any]
    out_dir: Optional[Path]
    reused: bool = False
    finished: Optional[str] = None


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


def _n_params(cfg: Config, in_features: int, num_classes: int) -> int:
    """Parameters of one net, counting a batch-norm scale and shift for every layer (an upper bound)."""
    widths = (in_features, *cfg.model.hidden, num_classes)
    return sum(a * b + 2 * b for a, b in zip(widths[:-1], widths[1:]))


def bytes_per_run(cfg: Config, *, in_features: int, num_classes: int, n_train: int, n_test: int) -> int:
    """Estimated device bytes one run needs while training (params, optimizer, activations).

    params × (params, grads, updates, the interval-start copy kept for divergence freezing,
    optimizer slots × 2 for the copy); training activations ≈ 6 arrays of batch × width per
    layer (forward cache and backward); evaluation activations for the largest split slice.
    """
    itemsize = np.dtype(cfg.model.dtype).itemsize
    widths = (in_features, *cfg.model.hidden, num_classes)
    n_params = _n_params(cfg, in_features, num_classes)
    slots = optim.state_slots(cfg.optim)
    params_bytes = n_params * (4 + 2 * slots)
    act = 6 * cfg.train.batch_size * sum(widths[1:])
    if "data" in cfg.seeds.vary:
        act += cfg.train.batch_size * in_features  # each run gathers its own minibatch
    eval_act = 2 * min(max(n_train, n_test), 8192) * max(widths[1:])
    return int(itemsize * (params_bytes + act + eval_act))


def runs_per_chunk(cfg: Config, n_runs: int, per_run: int, n_devices: int) -> int:
    """How many runs train at once within the memory budget (a multiple of the device count)."""
    fit = int(cfg.train.memory_budget_gb * 2**30 // max(per_run, 1))
    fit = max(n_devices, fit // n_devices * n_devices)
    return min(fit, math.ceil(n_runs / n_devices) * n_devices)


def result_bytes_per_run(cfg: Config, *, in_features: int, num_classes: int, n_test: int) -> int:
    """Host bytes one run's results take: final state (params and optimizer slots), float64
    history, test predictions."""
    state = _n_params(cfg, in_features, num_classes) * (1 + optim.state_slots(cfg.optim))
    evaluations = len(METRICS) * 8 * (cfg.train.steps // cfg.train.eval_every + 2)
    return state * np.dtype(cfg.model.dtype).itemsize + evaluations + 4 * n_test


def available_memory() -> Optional[int]:
    """Bytes of memory this machine can still give (MemAvailable), None where unknown."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(cfg: Config, n_runs: int, *, per_run: int, per_result: int, n_devices: int,
                 available: Optional[int]) -> None:
    """Raises a one-line `ConfigError` if the sweep cannot fit in `available` bytes.

    A sweep holds one chunk of runs training at once (`runs_per_chunk` × `per_run`) and every
    run's results on the host about three times over (chunks kept, merged, written), so a
    huge net fails on the first term and a huge number of seeds on the second.
    """
    if available is None:
        return
    chunk = runs_per_chunk(cfg, n_runs, per_run, n_devices) * per_run
    need = chunk + 3 * n_runs * per_result
    if need > available:
        raise config_lib.ConfigError(
            f"the sweep needs about {need / 2**30:.3g} GiB of memory ({n_runs} runs; {chunk / 2**30:.3g} GiB for "
            f"the chunk training at once) but {available / 2**30:.3g} GiB are available; lower seeds.n, "
            f"model.hidden or train.memory_budget_gb")


# ----------------------------------------------------------------------------- compiled pieces


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


# ----------------------------------------------------------------------------- checkpoints


def _flat(tree) -> dict[str, Any]:
    return {f"{i:04d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def _unflat(flat: dict[str, np.ndarray], like) -> Any:
    treedef = jax.tree.structure(like)
    return jax.tree.unflatten(treedef, [flat[f"{i:04d}"] for i in range(treedef.num_leaves)])


def _digest(tree: dict) -> np.ndarray:
    """sha256 (32 uint8) of a pytree of arrays: every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


class _Checkpoints:
    """orbax checkpoints of one chunk's state and history (with their sha256), the latest kept."""

    def __init__(self, folder: Path):
        import orbax.checkpoint as ocp

        self._ocp, self.folder = ocp, folder
        self.manager = ocp.CheckpointManager(
            folder.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False))

    def restore(self, like: dict) -> Optional[tuple[int, dict]]:
        """(intervals done, {"state", "history"}) of the latest checkpoint, None if there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        where, fix = self.folder / str(step), f"delete {self.folder} to retrain that chunk from its start"
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, {**like, "digest": np.zeros(32, np.uint8)})
        try:
            tree = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax and tensorstore raise many types for a damaged checkpoint
            detail = " ".join(str(e).split())[:160]
            raise store.StoreError(f"damaged checkpoint {where} ({type(e).__name__}: {detail}); {fix}") from None
        tree = jax.tree.map(np.asarray, tree)
        if not np.array_equal(tree.pop("digest"), _digest(tree)):
            raise store.StoreError(f"damaged checkpoint {where} (its content does not match its sha256); {fix}")
        return step, tree

    def save(self, step: int, tree: dict) -> None:
        tree = {**tree, "digest": _digest(_to_host(tree))}
        try:
            self.manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
            self.manager.wait_until_finished()
        except Exception as e:
            if store.is_no_space(e):
                raise store.NoSpace(self.folder / str(step)) from e
            raise

    def close(self) -> None:
        self.manager.close()


# ----------------------------------------------------------------------------- the sweep


def _writer() -> bool:
    """Process 0 writes the files; every process computes and gathers."""
    return jax.process_index() == 0


def _sync(name: str) -> None:
    """A barrier across processes (nothing to wait for in a single process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)


def _to_host(tree):
    """numpy copies of global arrays, on every process (gathered across processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


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
                         num_classes: int, progress, mesh: Mesh) -> dict[str, np.ndarray]:
    """Trains one chunk of runs to the end, checkpointing; returns its arrays for chunk-NNNN.npz.

    Each evaluation interval is one call of `train_chunk`, all of a checkpoint's intervals
    dispatched before the first result is read, so the device never waits for the host while
    the bar advances per interval.
    """
    n_real = len(seeds)
    pad = (-n_real) % mesh.size
    seeds_p, lrs_p = np.concatenate([seeds, np.repeat(seeds[-1:], pad)]), np.concatenate([lrs, np.repeat(lrs[-1:], pad)])
    axes = stream_axes(cfg)
    streams = shard_runs(run_streams(cfg, seeds_p), mesh, axes)
    lr_arr = shard_runs(jnp.asarray(lrs_p, cfg.model.dtype), mesh)
    states = init_states(streams, lr_arr, cfg=cfg, axes=axes, in_features=in_features, num_classes=num_classes)
    full, tail = train.interval_plan(cfg)
    lengths = [None] * full + ([tail] if tail else [])  # steps per interval; None: eval_every
    steps = [cfg.train.eval_every if n is None else n for n in lengths]
    per_checkpoint = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    history = {m: np.full((len(seeds_p), len(lengths) + 1), np.nan) for m in METRICS}

    ckpt = _Checkpoints(folder)
    done = 0
    restored = ckpt.restore({"state": _flat(states), "history": history})
    if restored is not None:
        done, tree = restored
        states = shard_runs(_unflat(tree["state"], states), mesh)
        history = tree["history"]
    else:
        first = _to_host(evaluate_states(states, data, cfg=cfg))
        for m in METRICS:
            history[m][:, 0] = np.asarray(getattr(first, m), np.float64)
    if progress is not None:
        progress.update(sum(steps[:done]))
    while done < len(lengths):
        end = min(done + per_checkpoint, len(lengths))
        pending = []
        for i in range(done, end):  # queued: the device runs ahead while the host reads results
            states, metrics = train_chunk(states, streams, data, lr_arr, cfg=cfg, axes=axes, intervals=1,
                                          length=lengths[i])
            pending.append(metrics)
        for i, metrics in enumerate(pending, start=done):
            metrics = _to_host(metrics)
            for m in METRICS:
                history[m][:, 1 + i] = np.asarray(getattr(metrics, m), np.float64)[:, 0]
            if progress is not None:
                _report(progress, history, 1 + i, steps[i], n_real)
        done = end
        if done < len(lengths):  # the finished chunk is written next, as chunk-NNNN.npz
            ckpt.save(done, {"state": _flat(states), "history": history})
    ckpt.close()
    predictions = np.asarray(_to_host(predict_states(states, data.x_test, cfg=cfg)))
    final = _to_host(states)
    return {**{f"history/{m}": v[:n_real] for m, v in history.items()},
            "test_predictions": predictions[:n_real],
            **{f"state/{k}": v[:n_real] for k, v in _flat(final).items()}}


def summarize(history: dict[str, np.ndarray], lrs: np.ndarray, diverged_at: np.ndarray) -> dict[str, Any]:
    """Per-run finals and their statistics; diverged runs are counted, not averaged.

    Args:
      history: metric -> (runs, evaluations).
      lrs: (runs,) learning rates.
      diverged_at: (runs,) `TrainState.diverged_at` of the final states: the index of the first
        step whose minibatch loss was non-finite (`state.step` before it), -1 if none; stored
        per run as `diverged_at_step`.
    """
    diverged = history["diverged"][:, -1].astype(bool)
    finals = {m: history[m][:, -1] for m in ("train_loss", "train_acc", "test_loss", "test_acc")}
    per_lr = []
    for lr in np.unique(lrs):
        sel = lrs == lr
        per_lr.append({
            "lr": float(lr), "runs": int(sel.sum()), "diverged": int(diverged[sel].sum()),
            "metrics": {m: stats.summarize(np.where(diverged[sel], np.nan, v[sel])) for m, v in finals.items()},
        })
    return {"runs": int(len(lrs)), "diverged": int(diverged.sum()), "by_lr": per_lr,
            "per_run": {**{m: v for m, v in finals.items()}, "diverged": diverged,
                        "diverged_at_step": np.where(diverged, np.asarray(diverged_at), -1)}}


# ----------------------------------------------------------------------------- the folder

RETRAINING = ".retraining"  # written before a forced retrain deletes anything; removed after


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _x64(cfg: Config):
    """The context a run of `cfg` computes in: JAX's 64-bit mode for model.dtype=float64."""
    return jax.enable_x64(True) if cfg.model.dtype == "float64" else contextlib.nullcontext()


def _state_like(cfg: Config, info: dict) -> train.TrainState:
    """Shapes and dtypes of one run's TrainState (call inside `_x64(cfg)`)."""
    return jax.eval_shape(lambda: train.init_state(
        train.Streams(*(jax.random.key(0),) * 3), jnp.asarray(cfg.optim.lr, cfg.model.dtype), cfg=cfg,
        in_features=info["features"], num_classes=info["classes"]))


def _expected(cfg: Config, info: dict, n_runs: int) -> dict[str, tuple[tuple, Optional[np.dtype]]]:
    """Name -> (shape, dtype) of a chunk's arrays for `n_runs` runs (call inside `_x64(cfg)`)."""
    evaluations = len(train.evaluation_steps(cfg))
    out = {f"history/{m}": ((n_runs, evaluations), np.dtype(np.float64)) for m in METRICS}
    out["test_predictions"] = ((n_runs, info["n_test"]), np.dtype(np.int32))
    for k, leaf in _flat(_state_like(cfg, info)).items():
        out[f"state/{k}"] = ((n_runs, *leaf.shape), np.dtype(leaf.dtype))
    return out


def _read_checked(path: Path, expected: dict, fix: str = "") -> dict[str, np.ndarray]:
    """The arrays of `path`, each with its expected shape and dtype, or a one-line StoreError."""
    try:
        arrays = store.read_npz(path, keys=list(expected))
    except store.StoreError as e:
        raise store.StoreError(f"{e}{fix}") from None
    for k, (shape, dtype) in expected.items():
        a = arrays[k]
        if a.shape != shape or (dtype is not None and a.dtype != dtype):
            raise store.StoreError(f"damaged file {path}: array {k!r} is {a.dtype}{list(a.shape)}, "
                                   f"expected {dtype}{list(shape)}{fix}")
    return arrays


def _read_record(path: Path) -> tuple[Config, dict]:
    """config.json: (the config, the whole record), or a one-line StoreError naming the file."""
    record = store.read_json(path)
    try:
        info = record["dataset"]
        if not all(isinstance(info[k], int) for k in ("features", "classes", "n_test")):
            raise TypeError("dataset sizes must be integers")
        if not (record["lrs"] is None or all(isinstance(v, (int, float)) for v in record["lrs"])):
            raise TypeError("lrs must be a list of numbers")
        return config_lib.from_dict(record["config"]), record
    except (config_lib.ConfigError, TypeError, KeyError, ValueError, IndexError) as e:
        detail = str(e) if not isinstance(e, KeyError) else f"no key {e}"
        raise store.StoreError(f"damaged file {path}: {detail}") from None


def _read_summary(path: Path) -> dict[str, Any]:
    """summary.json, checked against the structure `summarize` writes."""
    s = store.read_json(path)
    number = (int, float, type(None))
    try:
        ok = (isinstance(s["runs"], int) and isinstance(s["diverged"], int) and isinstance(s["per_run"], dict)
              and all(isinstance(g["lr"], (int, float)) and isinstance(g["runs"], int) and isinstance(g["diverged"], int)
                      and all(isinstance(v["n_finite"], int) and all(isinstance(v[k], number)
                                                                     for k in ("mean", "ci_low", "ci_high", "std"))
                              for v in g["metrics"].values())
                      for g in s["by_lr"]))
    except (TypeError, KeyError, AttributeError):
        ok = False
    if not ok:
        raise store.StoreError(f"damaged file {path}: not a sweep summary")
    return s


def _wipe(out_dir: Path) -> None:
    """Deletes a sweep's results, summary.json first (so the folder is never taken as finished)."""
    for name in ("summary.json", "history.npz", "provenance.json"):
        (out_dir / name).unlink(missing_ok=True)
    for name in ("chunks", "checkpoints"):
        shutil.rmtree(out_dir / name, ignore_errors=True)


def _previous_devices(out_dir: Path, n_runs: int) -> Optional[int]:
    """How many devices the folder's partial results were computed on (None if it holds none)."""
    started = any((out_dir / "chunks").glob("chunk-*.npz")) or any((out_dir / "checkpoints").glob("chunk-*/[0-9]*"))
    if not started or not (out_dir / "provenance.json").exists():
        return None
    prov = store.read_json(out_dir / "provenance.json")
    try:
        segments = prov.get("segments")
        return int(segments[-1]["mesh_devices"]) if segments else min(len(prov["devices"]), n_runs)
    except (TypeError, KeyError, ValueError, IndexError, AttributeError):
        raise store.StoreError(f"damaged file {out_dir / 'provenance.json'}: no device record") from None


def _start_segment(out_dir: Path, mesh_devices: int) -> None:
    """provenance.json: this process's provenance, plus the devices of every training segment."""
    path, now = out_dir / "provenance.json", store.provenance()
    previous = store.read_json(path) if path.exists() else {}
    segments = previous.get("segments") if isinstance(previous, dict) else None
    segments = segments if isinstance(segments, list) else []  # a sweep started before segments were kept
    segments.append({"started": now["created"], "devices": now["devices"], "mesh_devices": mesh_devices,
                     "process_count": now["process_count"], "git_commit": now["git_commit"]})
    store.write_json(path, {**now, "segments": segments})


def _prepare_dir(out_dir: Path, record: dict, *, force: bool, mesh_devices: int, n_runs: int) -> bool:
    """Claims `out_dir` (lock held) for `record`; True if it already holds this finished sweep.

    Refuses a folder of another config, and a partial sweep computed on another number of
    devices. `force` deletes stored results first, behind a marker file, so that a forced
    retrain that is interrupted goes on deleting and retraining next time (never mixing
    chunks of the old results with new ones).
    """
    existing = out_dir / "config.json"
    if existing.exists():
        if store.read_json(existing) != store.as_json_data(record):
            raise store.StoreError(f"{out_dir} holds a sweep with a different config; use another output folder")
        if force:
            store.write_json(out_dir / RETRAINING, {"started": _now()})
    else:
        store.write_json(existing, record)
    if (out_dir / RETRAINING).exists():
        _wipe(out_dir)
        (out_dir / RETRAINING).unlink()
    if (out_dir / "summary.json").exists():
        return True
    previous = _previous_devices(out_dir, n_runs)
    if previous is not None and previous != mesh_devices:
        raise store.StoreError(
            f"{out_dir} was partly trained on {previous} devices and would resume on {mesh_devices}, which changes "
            f"results in the last bits; resume with {previous} devices (e.g. NETALCHEMY_CPU_DEVICES={previous}) "
            f"or retrain it with force (netalchemy train --force)")
    _start_segment(out_dir, mesh_devices)
    return False


_REFUSALS = (store.NoSpace, store.StoreError, config_lib.ConfigError)  # subclasses first


def _shared_refusal(error: Optional[Exception]) -> Optional[Exception]:
    """Process 0's refusal (or None), raised on every process: a collective, so none waits."""
    if jax.process_count() == 1:
        return error
    from jax.experimental import multihost_utils

    text = b"" if error is None else str(error).encode()[:1000]
    kind = 0 if error is None else 1 + next(i for i, t in enumerate(_REFUSALS) if isinstance(error, t))
    packed = np.zeros(1024, np.uint8)
    packed[0], packed[1:3], packed[3:3 + len(text)] = kind, divmod(len(text), 256), np.frombuffer(text, np.uint8)
    packed = np.asarray(multihost_utils.broadcast_one_to_all(packed))
    if packed[0] == 0:
        return None
    n = int(packed[1]) * 256 + int(packed[2])
    cls = _REFUSALS[int(packed[0]) - 1]
    error = Exception.__new__(cls)  # NoSpace's constructor takes a path: set the message directly
    Exception.__init__(error, bytes(packed[3:3 + n]).decode(errors="replace"))
    return error


def _claim(out_dir: Path, record: dict, stack: contextlib.ExitStack, *, force: bool, mesh_devices: int,
           n_runs: int) -> bool:
    """Locks and prepares `out_dir` on process 0; True if the sweep is already finished there."""
    refused, finished = None, False
    if _writer():
        try:
            stack.enter_context(store.locked(out_dir))
            store.clean_tmp(out_dir)
            finished = _prepare_dir(out_dir, record, force=force, mesh_devices=mesh_devices, n_runs=n_runs)
        except _REFUSALS as e:
            refused = e
    refused = _shared_refusal(refused)  # every process learns process 0's answer
    if refused is not None:
        raise refused
    return finished if _writer() else (out_dir / "summary.json").exists()


# ----------------------------------------------------------------------------- the sweep


def _train_all(cfg: Config, dataset: data_lib.Dataset, seeds: np.ndarray, run_lrs: np.ndarray, *, out_dir: Path,
               mesh: Mesh, per_run: int, info: dict, progress: bool) -> None:
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
            parts[c] = _read_checked(path, _expected(cfg, info, sl.stop - sl.start),
                                     fix="; delete it to retrain that chunk")
            continue
        bar = tqdm(total=cfg.train.steps, unit="step", disable=not (progress and _writer()), leave=False,
                   desc=f"seeds {sl.start + 1}-{sl.stop}/{len(seeds)}")
        try:
            with bar:
                parts[c] = _train_chunk_of_runs(
                    cfg, data, seeds[sl], run_lrs[sl], folder=out_dir / "checkpoints" / f"chunk-{c:04d}",
                    in_features=info["features"], num_classes=info["classes"], progress=bar if progress else None,
                    mesh=mesh)
            if _writer():
                store.write_npz(path, parts[c])
        except store.NoSpace as e:  # chunks 0 … c-1 are on disk
            raise store.NoSpace(e.path, c, len(chunks)) from None
        if _writer():
            shutil.rmtree(out_dir / "checkpoints" / f"chunk-{c:04d}", ignore_errors=True)
        _sync(f"netalchemy-sweep-chunk-{c}")
    if _writer():
        merged = {k: np.concatenate([parts[c][k] for c in range(len(chunks))]) for k in parts[0]}
        final = _unflat({k[len("state/"):]: v for k, v in merged.items() if k.startswith("state/")},
                        _state_like(cfg, info))
        try:
            store.write_npz(out_dir / "history.npz", {**merged, "seeds": seeds, "lrs": run_lrs})
            prov = store.read_json(out_dir / "provenance.json")
            store.write_json(out_dir / "provenance.json", {**prov, "finished": _now()})
            store.write_json(out_dir / "summary.json", summarize(
                {m: merged[f"history/{m}"] for m in METRICS}, run_lrs, diverged_at=final.diverged_at))
        except store.NoSpace as e:
            raise store.NoSpace(e.path, len(chunks), len(chunks)) from None
    _sync("netalchemy-sweep-written")


def run(cfg: Config, *, lrs: Optional[Sequence[float]] = None, out_dir: Optional[Path] = None,
        dataset: Optional[data_lib.Dataset] = None, progress: bool = True, force: bool = False) -> SweepResult:
    """Trains every run of the sweep (resuming from `out_dir` if it holds a partial one).

    Args:
      cfg: the resolved config; `cfg.seeds` says which seeds and which streams vary;
        model.dtype=float64 trains in JAX's 64-bit mode.
      lrs: an optional learning-rate grid; every seed then runs at every lr (runs = lr-major).
      out_dir: results folder; None keeps everything in memory (no checkpoints).
      dataset: arrays to train on; default `data.load(cfg.data)`.
      progress: show a tqdm bar (advancing per evaluation interval).
      force: retrain even if `out_dir` holds this sweep, finished or partial.

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
    mesh = device_mesh(len(seeds))
    per_run = bytes_per_run(cfg, in_features=in_features, num_classes=dataset.num_classes, n_train=n_train,
                            n_test=info["n_test"])
    check_memory(cfg, len(seeds), per_run=per_run, n_devices=mesh.size, available=available_memory(),
                 per_result=result_bytes_per_run(cfg, in_features=in_features, num_classes=dataset.num_classes,
                                                 n_test=info["n_test"]))
    scratch = out_dir is None
    if scratch and jax.process_count() > 1:
        raise config_lib.ConfigError("a sweep over several processes needs out_dir, a folder they share")
    if scratch:
        import tempfile
        out_dir = Path(tempfile.mkdtemp(prefix="netalchemy-sweep-"))
    out_dir = Path(out_dir)
    with _x64(cfg), contextlib.ExitStack() as stack:
        finished = _claim(out_dir, record, stack, force=force, mesh_devices=mesh.size, n_runs=len(seeds))
        if not finished:
            _train_all(cfg, dataset, seeds, run_lrs, out_dir=out_dir, mesh=mesh, per_run=per_run, info=info,
                       progress=progress)
        result = load(out_dir)._replace(reused=finished)
    if scratch:
        shutil.rmtree(out_dir, ignore_errors=True)
        result = result._replace(out_dir=None, finished=None)
    return result


def load(out_dir: Path, *, dataset: Optional[data_lib.Dataset] = None) -> SweepResult:
    """Reads a finished sweep from disk, checking every file (nothing is unpickled).

    `dataset` is accepted for symmetry with `run` and not needed. The result has
    `reused=True`. Raises `store.StoreError` (one line naming the file) for a missing or
    damaged file.
    """
    out_dir = Path(out_dir)
    if not (out_dir / "summary.json").exists():
        raise store.StoreError(f"{out_dir} holds no finished sweep (no summary.json)")
    cfg, record = _read_record(out_dir / "config.json")
    n_runs = cfg.seeds.n * (1 if record["lrs"] is None else len(record["lrs"]))
    with _x64(cfg):
        expected = {**_expected(cfg, record["dataset"], n_runs), "seeds": ((n_runs,), None), "lrs": ((n_runs,), None)}
        arrays = _read_checked(out_dir / "history.npz", expected)
        final = _unflat({k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")},
                        _state_like(cfg, record["dataset"]))
    summary = _read_summary(out_dir / "summary.json")
    finished = None
    if (out_dir / "provenance.json").exists():
        finished = store.read_json(out_dir / "provenance.json").get("finished")
    if not isinstance(finished, str):  # a sweep stored before finish times were recorded
        mtime = (out_dir / "summary.json").stat().st_mtime
        finished = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(timespec="seconds")
    return SweepResult(cfg, arrays["seeds"], arrays["lrs"], {m: arrays[f"history/{m}"] for m in METRICS},
                       arrays["test_predictions"], final, summary, out_dir, reused=True, finished=finished)


def format_summary(result: SweepResult) -> str:
    """A plain-text table: per learning rate, each final metric's mean, 95% CI, and divergences."""
    s = result.summary
    lines = [f"{s['runs']} runs, {s['diverged']} diverged"]
    header = f"{'lr':>9s}  {'metric':10s}  {'mean':>8s}  {'95% CI':>19s}  {'std':>7s}  {'n':>4s}"
    lines += [header, "-" * len(header)]
    for group in s["by_lr"]:
        for m, v in group["metrics"].items():
            ci = "—" if v["ci_low"] is None else f"[{v['ci_low']:.4f}, {v['ci_high']:.4f}]"
            mean = "—" if v["mean"] is None else f"{v['mean']:.4f}"
            std = "—" if v["std"] is None else f"{v['std']:.4f}"
            lines.append(f"{group['lr']:9.3g}  {m:10s}  {mean:>8s}  {ci:>19s}  {std:>7s}  {v['n_finite']:4d}")
    return "\n".join(lines)
