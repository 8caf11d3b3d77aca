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

On disk (`out_dir`): config.json, provenance.json, chunks/chunk-NNNN.npz (finished chunks:
history, test predictions, final state), checkpoints/ (unfinished chunks), history.npz and
summary.json once every chunk is done.
"""

from __future__ import annotations

import math
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
    cfg: Config
    seeds: np.ndarray  # (runs,) int
    lrs: np.ndarray  # (runs,) float
    history: dict[str, np.ndarray]  # metric -> (runs, evaluations)
    test_predictions: np.ndarray  # (runs, n_test) int32, final params
    final: train.TrainState  # numpy leaves with a leading (runs,) axis
    summary: dict[str, Any]
    out_dir: Optional[Path]


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


def bytes_per_run(cfg: Config, *, in_features: int, num_classes: int, n_train: int, n_test: int) -> int:
    """Estimated device bytes one run needs while training (params, optimizer, activations).

    params × (params, grads, updates, the interval-start copy kept for divergence freezing,
    optimizer slots × 2 for the copy); training activations ≈ 6 arrays of batch × width per
    layer (forward cache and backward); evaluation activations for the largest split slice.
    """
    itemsize = np.dtype(cfg.model.dtype).itemsize
    widths = (in_features, *cfg.model.hidden, num_classes)
    n_params = sum(a * b + 2 * b for a, b in zip(widths[:-1], widths[1:]))
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


@partial(jax.jit, static_argnames=("cfg", "axes", "intervals"), donate_argnums=(0,))
def train_chunk(states: train.TrainState, streams: train.Streams, data: train.Data, lrs: jax.Array, *,
                cfg: Config, axes: train.Streams, intervals: int) -> tuple[train.TrainState, train.Metrics]:
    """The engine's compiled program: `intervals` evaluation intervals of every run, vmapped.

    Each interval is `cfg.train.eval_every` steps. `states` is donated (its buffers are reused).

    Returns:
      (states after the intervals, Metrics with (runs, intervals) fields).
    """
    run = partial(train.train_intervals, data=data, cfg=cfg, intervals=intervals)
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


class _Checkpoints:
    """orbax checkpoints of one chunk's state and history, the latest one kept."""

    def __init__(self, folder: Path):
        import orbax.checkpoint as ocp

        self._ocp = ocp
        self.manager = ocp.CheckpointManager(
            folder.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False))

    def restore(self, like: dict):
        step = self.manager.latest_step()
        if step is None:
            return None
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, like)
        return step, self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))

    def save(self, step: int, tree: dict) -> None:
        self.manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
        self.manager.wait_until_finished()

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


def _train_chunk_of_runs(cfg: Config, data: train.Data, seeds, lrs, *, folder: Path, in_features: int,
                         num_classes: int, progress, mesh: Mesh) -> dict[str, np.ndarray]:
    """Trains one chunk of runs to the end, checkpointing; returns its arrays for chunk-NNNN.npz."""
    n_real = len(seeds)
    pad = (-n_real) % mesh.size
    seeds_p, lrs_p = np.concatenate([seeds, np.repeat(seeds[-1:], pad)]), np.concatenate([lrs, np.repeat(lrs[-1:], pad)])
    axes = stream_axes(cfg)
    streams = shard_runs(run_streams(cfg, seeds_p), mesh, axes)
    lr_arr = shard_runs(jnp.asarray(lrs_p, cfg.model.dtype), mesh)
    states = init_states(streams, lr_arr, cfg=cfg, axes=axes, in_features=in_features, num_classes=num_classes)
    intervals_total = cfg.train.steps // cfg.train.eval_every
    per_chunk = max(1, cfg.train.chunk_steps // cfg.train.eval_every)
    history = {m: np.full((len(seeds_p), intervals_total + 1), np.nan) for m in METRICS}

    ckpt = _Checkpoints(folder)
    done = 0
    restored = ckpt.restore({"state": _flat(states), "history": history})
    if restored is not None:
        done, tree = restored
        states = shard_runs(_unflat(tree["state"], states), mesh)
        history = {m: np.asarray(v) for m, v in tree["history"].items()}
    else:
        first = _to_host(evaluate_states(states, data, cfg=cfg))
        for m in METRICS:
            history[m][:, 0] = np.asarray(getattr(first, m), np.float64)
    if progress is not None:
        progress.update(done * cfg.train.eval_every)
    while done < intervals_total:
        n = min(per_chunk, intervals_total - done)
        states, metrics = train_chunk(states, streams, data, lr_arr, cfg=cfg, axes=axes, intervals=n)
        metrics = _to_host(metrics)
        for m in METRICS:
            history[m][:, 1 + done:1 + done + n] = np.asarray(getattr(metrics, m), np.float64)
        done += n
        if done < intervals_total:  # the finished chunk is written next, as chunk-NNNN.npz
            ckpt.save(done, {"state": _flat(states), "history": history})
        if progress is not None:
            progress.update(n * cfg.train.eval_every)
            alive = ~history["diverged"][:n_real, done].astype(bool)
            loss = history["batch_loss"][:n_real, done][alive]
            progress.set_postfix(loss=f"{np.mean(loss):.4f}" if loss.size else "all diverged",
                                 diverged=int((~alive).sum()))
    ckpt.close()
    predictions = np.asarray(_to_host(predict_states(states, data.x_test, cfg=cfg)))
    final = _to_host(states)
    return {**{f"history/{m}": v[:n_real] for m, v in history.items()},
            "test_predictions": predictions[:n_real],
            **{f"state/{k}": v[:n_real] for k, v in _flat(final).items()}}


def summarize(history: dict[str, np.ndarray], lrs: np.ndarray) -> dict[str, Any]:
    """Per-run finals and their statistics; diverged runs are counted, not averaged."""
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
                        "diverged_at_step": np.where(diverged, history["diverged"].argmax(axis=1), -1)}}


def _prepare_dir(out_dir: Path, record: dict) -> bool:
    """Claims `out_dir` for `record`; True if it already holds this sweep's finished results."""
    store.ensure_writable(out_dir)
    existing = out_dir / "config.json"
    if existing.exists():
        if store.read_json(existing) != store.as_json_data(record):
            raise store.StoreError(f"{out_dir} holds a sweep with a different config; "
                                   f"use another output folder")
        return (out_dir / "summary.json").exists()
    store.write_json(existing, record)
    return False


def run(cfg: Config, *, lrs: Optional[Sequence[float]] = None, out_dir: Optional[Path] = None,
        dataset: Optional[data_lib.Dataset] = None, progress: bool = True) -> SweepResult:
    """Trains every run of the sweep (resuming from `out_dir` if it holds a partial one).

    Args:
      cfg: the resolved config; `cfg.seeds` says which seeds and which streams vary.
      lrs: an optional learning-rate grid; every seed then runs at every lr (runs = lr-major).
      out_dir: results folder; None keeps everything in memory (no checkpoints).
      dataset: arrays to train on; default `data.load(cfg.data)`.
      progress: show a tqdm bar.
    """
    from tqdm.auto import tqdm

    dataset = dataset if dataset is not None else data_lib.load(cfg.data)
    seeds, run_lrs = plan_runs(cfg, lrs)
    n_train, in_features = dataset.x_train.shape
    if cfg.train.batch_size > n_train:
        raise config_lib.ConfigError(f"train.batch_size ({cfg.train.batch_size}) exceeds the training set "
                                     f"({n_train} examples)")
    record = {"config": config_lib.to_dict(cfg), "lrs": None if lrs is None else [float(v) for v in lrs],
              "dataset": {"name": dataset.name, "n_train": n_train, "n_test": len(dataset.y_test),
                          "features": in_features, "classes": dataset.num_classes}}
    scratch = out_dir is None
    if scratch and jax.process_count() > 1:
        raise config_lib.ConfigError("a sweep over several processes needs out_dir, a folder they share")
    if scratch:
        import tempfile
        out_dir = Path(tempfile.mkdtemp(prefix="netalchemy-sweep-"))
    out_dir = Path(out_dir)
    refused = None
    if _writer():
        try:
            finished = _prepare_dir(out_dir, record)
        except store.StoreError as e:  # raised after the barrier, so no process waits on this one
            refused = e
    _sync("netalchemy-sweep-prepared")
    if refused is not None:
        raise refused
    if not _writer():
        finished = _prepare_dir(out_dir, record)  # reads what process 0 wrote, or refuses the same way
    if not finished:
        if _writer():
            store.write_json(out_dir / "provenance.json", store.provenance())
        mesh = device_mesh(len(seeds))
        dtype = cfg.model.dtype
        data = jax.device_put(train.Data(jnp.asarray(dataset.x_train, dtype), jnp.asarray(dataset.y_train, jnp.int32),
                                         jnp.asarray(dataset.x_test, dtype), jnp.asarray(dataset.y_test, jnp.int32)),
                              NamedSharding(mesh, PartitionSpec()))
        per_run = bytes_per_run(cfg, in_features=in_features, num_classes=dataset.num_classes,
                                n_train=n_train, n_test=len(dataset.y_test))
        size = runs_per_chunk(cfg, len(seeds), per_run, mesh.size)
        chunks = [slice(i, min(i + size, len(seeds))) for i in range(0, len(seeds), size)]
        trained = {}  # chunk index -> arrays trained by this call (not read back from disk)
        for c, sl in enumerate(chunks):
            path = out_dir / "chunks" / f"chunk-{c:04d}.npz"
            if path.exists():
                continue
            bar = tqdm(total=cfg.train.steps, unit="step", disable=not (progress and _writer()), leave=False,
                       desc=f"seeds {sl.start + 1}-{sl.stop}/{len(seeds)}")
            with bar:
                arrays = _train_chunk_of_runs(cfg, data, seeds[sl], run_lrs[sl], folder=out_dir / "checkpoints" / f"chunk-{c:04d}",
                                              in_features=in_features, num_classes=dataset.num_classes,
                                              progress=bar if progress else None, mesh=mesh)
            trained[c] = arrays
            if _writer():
                store.write_npz(path, arrays)
                shutil.rmtree(out_dir / "checkpoints" / f"chunk-{c:04d}", ignore_errors=True)
            _sync(f"netalchemy-sweep-chunk-{c}")
        if _writer():
            parts = [trained[c] if c in trained else store.read_npz(out_dir / "chunks" / f"chunk-{c:04d}.npz")
                     for c in range(len(chunks))]
            merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            store.write_npz(out_dir / "history.npz", {**merged, "seeds": seeds, "lrs": run_lrs})
            history = {m: merged[f"history/{m}"] for m in METRICS}
            store.write_json(out_dir / "summary.json", summarize(history, run_lrs))
        _sync("netalchemy-sweep-written")
    result = load(out_dir, dataset=dataset)
    if scratch:
        shutil.rmtree(out_dir, ignore_errors=True)
        result = result._replace(out_dir=None)
    return result


def load(out_dir: Path, *, dataset: Optional[data_lib.Dataset] = None) -> SweepResult:
    """Reads a finished sweep from disk (nothing is unpickled)."""
    out_dir = Path(out_dir)
    if not (out_dir / "summary.json").exists():
        raise store.StoreError(f"{out_dir} holds no finished sweep (no summary.json)")
    record = store.read_json(out_dir / "config.json")
    cfg = config_lib.from_dict(record["config"])
    arrays = store.read_npz(out_dir / "history.npz")
    info = record["dataset"]
    like = jax.eval_shape(lambda: train.init_state(
        train.Streams(*(jax.random.key(0),) * 3), jnp.asarray(cfg.optim.lr, cfg.model.dtype), cfg=cfg,
        in_features=info["features"], num_classes=info["classes"]))
    final = _unflat({k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}, like)
    return SweepResult(cfg, arrays["seeds"], arrays["lrs"], {m: arrays[f"history/{m}"] for m in METRICS},
                       arrays["test_predictions"], final, store.read_json(out_dir / "summary.json"), out_dir)


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
