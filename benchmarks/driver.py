"""The parent side: worker processes, the interleaved timing of each group, the whole run.

Every (workload, way, seeds) cell runs in its own fresh Python process, so its peak resident
memory (`ru_maxrss`, read after its last timed call) and its compilation caches are its own.
The processes of one (workload, seeds) group start together (imports are not timed), make
their first call one at a time (timed: the first-call overhead is that time less the median
call), then are timed round-robin over the ways for `repeats` rounds, the starting way moving
one along each round, with one matmul timing per backend after each round.
"""

from __future__ import annotations

import dataclasses
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from netalchemy import stability, store

from . import audit_times
from . import results as R
from .report import write_results
from .settings import (MATMUL_BUILDERS, TORCH_MISSING, WAYS, WORKLOADS, BenchSettings, Workload, flops_per_step,
                       group_steps, matmul_flops, plan_cells, torch_available)
from .worker import BOOT

ROOT = Path(__file__).resolve().parent.parent  # the folder holding benchmarks/, put on the workers' path


class WorkerError(RuntimeError):
    """A worker that failed a request, exited, or did not answer in time (one line)."""


class Worker:
    """A worker process (see `worker`), its stderr in a log file, and JSON requests with a timeout."""

    def __init__(self, modules: Sequence[str], log_dir: Path, name: str, env: dict):
        self.log_path = log_dir / f"{name}.log"
        self.log = open(self.log_path, "wb")
        # A cache folder of its own: torch.compile's first call is a cold compile, as in a fresh
        # environment, not a hit in the on-disk cache of an earlier run.
        env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(log_dir / f"inductor-{name}")}
        self.proc = subprocess.Popen([sys.executable, "-c", BOOT, str(ROOT), *modules],
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


def worker_modules(builder: str, modules: Sequence[str] = ()) -> tuple[str, ...]:
    """What a worker imports before it is ready: `modules` and the module of its builder."""
    return (*modules, f"{__package__}.{builder.split(':')[0]}")


def write_data(settings: BenchSettings, folder: Path) -> dict[str, dict]:
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


class _Matmuls:
    """One matmul worker per backend; `time()` adds one GFLOP/s sample per backend."""

    def __init__(self, settings: BenchSettings, backends: Sequence[str], scratch: Path, base_spec: dict, env: dict,
                 log: Callable[[str], None]):
        self.size, self.timeout, self.spec, self.log = settings.matmul_size, settings.timeout_s, base_spec, log
        self.workers = {b: Worker(worker_modules(MATMUL_BUILDERS[b], (b,)), scratch, f"matmul-{b}", env)
                        for b in backends}
        self.samples: dict[str, list[float]] = {}

    def time(self) -> None:
        for backend, worker in list(self.workers.items()):
            try:
                if backend not in self.samples:  # the first call sets the worker up
                    worker.request(self.timeout, cmd="setup", spec={**self.spec, "way": "matmul", "backend": backend})
                    self.samples[backend] = []
                seconds = worker.request(self.timeout, cmd="time")["seconds"]
                self.samples[backend].append(matmul_flops(self.size) / seconds / 1e9)
            except WorkerError as e:
                self.log(f"matmul ({backend}) failed: {e}")
                worker.kill()
                del self.workers[backend]

    def close(self) -> None:
        for worker in self.workers.values():
            worker.finish(self.timeout)

    def summary(self) -> dict:
        """Median GFLOP/s per backend, and the machine's rate: the larger of them."""
        matmul = {b: {"gflops": R.median(s), "samples": s} for b, s in self.samples.items()}
        rates = [m["gflops"] for m in matmul.values() if m["gflops"]]
        return {**matmul, "machine_gflops": max(rates) if rates else None, "size": self.size}


def run_benchmark(settings: BenchSettings, *, out_dir: Optional[Path] = None,
                  log: Callable[[str], None] = print, audits: Path = Path("runs/audit"),
                  ledgers: Optional[Path] = stability.LEDGERS) -> dict:
    """Runs the whole benchmark; returns the results (and writes them into `out_dir` if given).

    Args:
      settings: what to measure (see `BenchSettings`, `PROFILES`).
      out_dir: if given, `bench.json`, `table.txt`, `summary.md` and `scaling.png` are written there.
      log: progress lines (default print).
      audits: the folder of the stored audits whose wall time is reported (`audit_times`;
        `netalchemy audit --out DIR` stores them in DIR/audit).
      ledgers: the kept audit ledgers read where a run folder is gone (`stability.LEDGERS`; None: none).

    Returns:
      A JSON-able dict: settings, provenance, workloads (with FLOPs per step), matmul rates,
      one entry per cell (status, timings, derived rates, memory), ratios, targets and
      the stored audits' wall times.
    """
    started = time.perf_counter()
    have_torch = torch_available()
    if not have_torch and any(WAYS[w].backend == "torch" for w in settings.ways):
        log(TORCH_MISSING)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
    scratch = Path(tempfile.mkdtemp(prefix="netalchemy-bench-"))
    base_spec = {"torch_threads": settings.torch_threads, "matmul_size": settings.matmul_size,
                 "engine_cpu_devices": settings.engine_cpu_devices}
    cells: list[dict] = []
    matmuls = None
    try:  # the matmul workers import while the data is written
        matmuls = _Matmuls(settings, ("jax", "torch") if have_torch else ("jax",), scratch, base_spec, env, log)
        sizes = write_data(settings, scratch)
        for wname in settings.workloads:
            for seeds in sorted(set(settings.seeds)):
                cells += _run_group(settings, WORKLOADS[wname], seeds, sizes[wname], scratch, base_spec, env,
                                    matmuls.time, log)
    finally:
        try:
            if matmuls is not None:
                matmuls.close()
        finally:
            shutil.rmtree(scratch, ignore_errors=True)  # data, logs, sweep folders, inductor caches

    profiles = [step_profile(item, settings, have_torch, env, log) for item in settings.step_profiles]
    matmul = matmuls.summary()
    for cell in cells:
        R.derive(cell, matmul["machine_gflops"])
    results = {
        "settings": dataclasses.asdict(settings),
        "provenance": {**store.provenance(), "torch": _torch_version(), "cpu_count": os.cpu_count()},
        "workloads": {n: {"widths": list(WORKLOADS[n].widths), "batch": WORKLOADS[n].batch, "lr": WORKLOADS[n].lr,
                          "data": WORKLOADS[n].data, **sizes.get(n, {}),
                          "flops_per_step": flops_per_step(WORKLOADS[n].widths, WORKLOADS[n].batch)}
                      for n in settings.workloads},
        "matmul": matmul,
        "cells": cells,
    }
    results["ratios"] = R.ratio_rows(results)
    results["levers"] = R.lever_rows(results)
    results["targets"] = R.target_rows(results)
    results["step_profiles"] = profiles
    results["audits"] = audit_times.collect(audits, ledgers)
    results["wall_s"] = time.perf_counter() - started
    if out_dir is not None:
        write_results(results, out_dir)
    return results


def step_profile(item: str, settings: BenchSettings, have_torch: bool, env: dict,
                 log: Callable[[str], None]) -> dict:
    """`python -m benchmarks.step_dots` for "W:N" in a process of its own (one JAX device per core, as
    the engine): the step's ceilings. Returns its JSON, or {"workload", "seeds", "error"} if it failed."""
    workload, _, seeds = item.partition(":")
    log(f"step profile {workload} @{seeds} seeds ...")
    with tempfile.TemporaryDirectory(prefix="netalchemy-step-") as folder:
        out = Path(folder) / "profile.json"
        command = [sys.executable, "-m", f"{__package__}.step_dots", "--workload", workload, "--seeds", seeds,
                   "--repeats", str(settings.step_profile_repeats), "--size", str(settings.matmul_size),
                   "--json", str(out), *(["--torch"] if have_torch else [])]
        try:
            done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=settings.timeout_s)
            if done.returncode == 0:
                return json.loads(out.read_text())
            lines = (done.stderr or done.stdout).strip().splitlines()
            error = lines[-1] if lines else f"exit status {done.returncode}"
        except subprocess.TimeoutExpired:
            error = f"timed out after {settings.timeout_s:.0f} s"
    log(f"step profile {item} failed: {error}")
    return {"workload": workload, "seeds": int(seeds), "error": error}


def _torch_version() -> Optional[str]:
    try:
        return metadata.version("torch")
    except metadata.PackageNotFoundError:
        return None


def with_flags(env: dict, flags: str) -> dict:
    """`env` with `flags` appended to XLA_FLAGS (unchanged when there are none)."""
    return env if not flags else {**env, "XLA_FLAGS": f"{env.get('XLA_FLAGS', '')} {flags}".strip()}


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
    workers = {c["way"]: Worker(worker_modules(WAYS[c["way"]].builder, WAYS[c["way"]].modules), scratch,
                                f"{w.name}-{c['way']}-{seeds}", with_flags(env, WAYS[c["way"]].xla_flags))
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
                cell["first_call_s"] = worker.request(timeout, cmd="setup", spec={**spec, "way": cell["way"]})[
                    "first_call_s"]
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
            rate = cell["seeds"] * steps / R.median(cell["times_s"])
            log(f"  {cell['way']:14s} {rate:12,.0f} seed-steps/s  (first call {cell['first_call_s']:.1f} s)")
    finally:
        for worker in workers.values():
            worker.kill()
    return cells
