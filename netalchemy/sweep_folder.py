"""A sweep's results folder: claiming it, checking what it holds, finishing it, reading it back.

On disk (`out_dir`): config.json (the resolved config, the lr grid, the dataset's sizes),
provenance.json (versions and devices of every training segment, the finish time),
chunks/chunk-NNNN.npz (finished chunks: history, test predictions, final state),
checkpoints/ (unfinished chunks, `checkpoints.Checkpoints`), history.npz and summary.json
once every chunk is done (summary.json last: it marks a finished sweep).

One process at a time holds a folder (`store.locked`); on entry it deletes temporary files
that a killed write left. Every file read back is checked (CRC, sha256, keys and shapes), and
a damaged one stops the sweep with a one-line `store.StoreError` that says how to recover.
In a sweep over several processes, process 0 claims and writes the folder (`is_writer`) and
every process learns its answer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import shutil
from pathlib import Path
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy import stats, store, train
from netalchemy.checkpoints import flat, unflat
from netalchemy.config import Config

METRICS = train.Metrics._fields
RETRAINING = ".retraining"  # written before a forced retrain deletes anything; removed after


class SweepResult(NamedTuple):
    """A finished sweep, as `sweep.run` returns it and `load` reads it back.

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
      measures: the measurement hook's arrays, name -> (runs, evaluations, ...) in the hook's
        dtype, one entry per column of `history` ({} for a sweep without a hook).
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
    measures: Optional[dict[str, np.ndarray]] = None


def is_writer() -> bool:
    """Process 0 writes the files; every process computes and gathers."""
    return jax.process_index() == 0


def now() -> str:
    """The current time, ISO 8601 UTC to the second."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def x64(cfg: Config):
    """The context a run of `cfg` computes in: JAX's 64-bit mode for model.dtype=float64."""
    return jax.enable_x64(True) if cfg.model.dtype == "float64" else contextlib.nullcontext()


# ----------------------------------------------------------------------------- hooks


def describe_hook(hook) -> Optional[str]:
    """How config.json names a hook: module and name, with the settings of a dataclass instance."""
    if hook is None:
        return None
    if dataclasses.is_dataclass(hook):
        return f"{type(hook).__module__}.{hook!r}"
    return f"{hook.__module__}.{getattr(hook, '__qualname__', repr(hook))}"


def measure_spec(cfg: Config, info: dict, measure) -> dict[str, tuple[tuple, np.dtype]]:
    """Name -> (shape, dtype) of one run's measurement at one evaluation (call inside `x64(cfg)`)."""
    if measure is None:
        return {}
    dtype = jnp.dtype(cfg.model.dtype)
    data = train.Data(jax.ShapeDtypeStruct((info["n_train"], info["features"]), dtype),
                      jax.ShapeDtypeStruct((info["n_train"],), jnp.int32),
                      jax.ShapeDtypeStruct((info["n_test"], info["features"]), dtype),
                      jax.ShapeDtypeStruct((info["n_test"],), jnp.int32))
    streams = train.Streams(*(jax.random.key(0),) * 3)
    out = jax.eval_shape(lambda st, d: train.measured(measure, st, streams, d, cfg=cfg), state_like(cfg, info), data)
    return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in out.items()}


# ----------------------------------------------------------------------------- checking what is read


def state_like(cfg: Config, info: dict) -> train.TrainState:
    """Shapes and dtypes of one run's TrainState (call inside `x64(cfg)`); `info` as config.json's "dataset"."""
    return jax.eval_shape(lambda: train.init_state(
        train.Streams(*(jax.random.key(0),) * 3), jnp.asarray(cfg.optim.lr, cfg.model.dtype), cfg=cfg,
        in_features=info["features"], num_classes=info["classes"]))


def expected_arrays(cfg: Config, info: dict, n_runs: int,
                    spec: Optional[dict] = None) -> dict[str, tuple[tuple, Optional[np.dtype]]]:
    """Name -> (shape, dtype) of a chunk's arrays for `n_runs` runs (call inside `x64(cfg)`);
    `spec` is the measurement's `measure_spec`."""
    evaluations = len(train.evaluation_steps(cfg))
    out = {f"history/{m}": ((n_runs, evaluations), np.dtype(np.float64)) for m in METRICS}
    for k, (shape, dtype) in (spec or {}).items():
        out[f"history/measure/{k}"] = ((n_runs, evaluations, *shape), np.dtype(dtype))
    out["test_predictions"] = ((n_runs, info["n_test"]), np.dtype(np.int32))
    for k, leaf in flat(state_like(cfg, info)).items():
        out[f"state/{k}"] = ((n_runs, *leaf.shape), np.dtype(leaf.dtype))
    return out


def read_checked(path: Path, expected: dict, fix: str = "") -> dict[str, np.ndarray]:
    """The arrays of `path`, each with its expected shape and dtype, or a one-line StoreError ending in `fix`."""
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
        for k, (shape, dtype) in record.get("hooks", {}).get("arrays", {}).items():
            if not (isinstance(k, str) and all(isinstance(d, int) for d in shape)):
                raise TypeError("measurement shapes must be lists of integers")
            np.dtype(dtype)
        return config_lib.from_dict(record["config"]), record
    except (config_lib.ConfigError, TypeError, KeyError, ValueError, IndexError) as e:
        detail = str(e) if not isinstance(e, KeyError) else f"no key {e}"
        raise store.StoreError(f"damaged file {path}: {detail}") from None


def summarize(history: dict[str, np.ndarray], lrs: np.ndarray, diverged_at: np.ndarray) -> dict[str, Any]:
    """Per-run finals and their statistics (summary.json); diverged runs are counted, not averaged.

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


# ----------------------------------------------------------------------------- claiming the folder


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
    path, current = out_dir / "provenance.json", store.provenance()
    previous = store.read_json(path) if path.exists() else {}
    segments = previous.get("segments") if isinstance(previous, dict) else None
    segments = segments if isinstance(segments, list) else []  # a sweep started before segments were kept
    segments.append({"started": current["created"], "devices": current["devices"], "mesh_devices": mesh_devices,
                     "process_count": current["process_count"], "git_commit": current["git_commit"]})
    store.write_json(path, {**current, "segments": segments})


def _prepare_dir(out_dir: Path, record: dict, *, force: bool, mesh_devices: int, n_runs: int) -> bool:
    """Claims `out_dir` (lock held) for `record`; True if it already holds this finished sweep.

    Refuses a folder of another config, and a partial sweep computed on another number of
    devices. `force` deletes stored results first, behind a marker file, so that a forced
    retrain that is interrupted goes on deleting and retraining next time (never mixing
    chunks of the old results with new ones).
    """
    existing = out_dir / "config.json"
    if existing.exists():
        stored, wanted = store.read_json(existing), store.as_json_data(record)
        if stored != wanted:
            raise store.StoreError(f"{out_dir} holds a sweep with a different config ({store.json_difference(stored, wanted)}); "
                                   f"use another output folder, or delete that folder to retrain it there")
        if force:
            store.write_json(out_dir / RETRAINING, {"started": now()})
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


def claim(out_dir: Path, record: dict, stack: contextlib.ExitStack, *, force: bool, mesh_devices: int,
          n_runs: int) -> bool:
    """Locks (until `stack` closes) and prepares `out_dir` on process 0; True if the sweep is already finished there.

    Raises the refusal of `_prepare_dir` or of the lock (`store.StoreError`, `store.NoSpace`,
    `config.ConfigError`) on every process.
    """
    refused, finished = None, False
    if is_writer():
        try:
            stack.enter_context(store.locked(out_dir))
            store.clean_tmp(out_dir)
            finished = _prepare_dir(out_dir, record, force=force, mesh_devices=mesh_devices, n_runs=n_runs)
        except _REFUSALS as e:
            refused = e
    refused = _shared_refusal(refused)  # every process learns process 0's answer
    if refused is not None:
        raise refused
    return finished if is_writer() else (out_dir / "summary.json").exists()


# ----------------------------------------------------------------------------- finishing and reading back


def finish(out_dir: Path, merged: dict[str, np.ndarray], seeds: np.ndarray, lrs: np.ndarray, *,
           final: train.TrainState, n_chunks: int) -> None:
    """Writes history.npz, the finish time and summary.json (last) from every chunk's arrays, `merged`.

    Raises `store.NoSpace` saying that all `n_chunks` chunks are safe when the disk fills up.
    """
    try:
        store.write_npz(out_dir / "history.npz", {**merged, "seeds": seeds, "lrs": lrs})
        prov = store.read_json(out_dir / "provenance.json")
        store.write_json(out_dir / "provenance.json", {**prov, "finished": now()})
        store.write_json(out_dir / "summary.json", summarize(
            {m: merged[f"history/{m}"] for m in METRICS}, lrs, diverged_at=final.diverged_at))
    except store.NoSpace as e:
        raise store.NoSpace(e.path, n_chunks, n_chunks) from None


def final_state(arrays: dict[str, np.ndarray], cfg: Config, info: dict) -> train.TrainState:
    """The TrainState stored under "state/NNNN" keys (call inside `x64(cfg)`)."""
    return unflat({k[len("state/"):]: v for k, v in arrays.items() if k.startswith("state/")}, state_like(cfg, info))


def load(out_dir: Path, *, dataset: Optional[data_lib.Dataset] = None) -> SweepResult:
    """Reads a finished sweep from disk, checking every file (nothing is unpickled).

    `dataset` is accepted for symmetry with `sweep.run` and not needed. The result has
    `reused=True`. Raises `store.StoreError` (one line naming the file) for a missing or
    damaged file.
    """
    out_dir = Path(out_dir)
    if not (out_dir / "summary.json").exists():
        raise store.StoreError(f"{out_dir} holds no finished sweep (no summary.json)")
    cfg, record = _read_record(out_dir / "config.json")
    n_runs = cfg.seeds.n * (1 if record["lrs"] is None else len(record["lrs"]))
    stored = record.get("hooks", {}).get("arrays", {})
    spec = {k: (tuple(shape), np.dtype(dtype)) for k, (shape, dtype) in stored.items()}
    with x64(cfg):
        expected = {**expected_arrays(cfg, record["dataset"], n_runs, spec), "seeds": ((n_runs,), None),
                    "lrs": ((n_runs,), None)}
        arrays = read_checked(out_dir / "history.npz", expected)
        final = final_state(arrays, cfg, record["dataset"])
    summary = _read_summary(out_dir / "summary.json")
    finished = None
    if (out_dir / "provenance.json").exists():
        finished = store.read_json(out_dir / "provenance.json").get("finished")
    if not isinstance(finished, str):  # a sweep stored before finish times were recorded
        mtime = (out_dir / "summary.json").stat().st_mtime
        finished = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).isoformat(timespec="seconds")
    return SweepResult(cfg, arrays["seeds"], arrays["lrs"], {m: arrays[f"history/{m}"] for m in METRICS},
                       arrays["test_predictions"], final, summary, out_dir, reused=True, finished=finished,
                       measures={k: arrays[f"history/measure/{k}"] for k in spec})


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
