"""The worker side: one way of training, built and timed in a process of its own.

A worker is started by `driver.Worker` as `python -c BOOT ROOT MODULES...`: it imports
MODULES (not timed), says it is ready, then reads one JSON request per line on stdin and
answers one JSON line on its original stdout (anything the libraries print goes to stderr).

  {"cmd": "setup", "spec": {...}}  builds the way named in spec and makes its first call
                                   (timed: first_call_s)
  {"cmd": "time"}                  one timed call: wall and CPU seconds
  {"cmd": "info"}                  the way's extras, the peak RSS and device peak bytes
  {"cmd": "finish"}                the peak RSS, then exit

A failed request answers {"ok": false, "error": one line}; the worker keeps serving.
This module imports neither JAX nor PyTorch: a way's builder does, so each process's memory
is its own way's.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from typing import Any, Callable, Optional, Sequence

import numpy as np

from .settings import MATMUL_BUILDERS, WAYS

# Run by the parent with ROOT (the folder holding benchmarks/) and the modules to import.
BOOT = "import sys; sys.path.insert(0, sys.argv[1]); from benchmarks.worker import main; main(sys.argv[2:])"


class Runner:
    """One way, built: `prepare()` (untimed) then `run()` (timed) per call; `info()` extras."""

    def __init__(self, run: Callable[[], Any], prepare: Callable[[], None] = lambda: None,
                 info: Callable[[], dict] = dict, close: Callable[[], None] = lambda: None):
        self.run, self.prepare, self.info, self.close = run, prepare, info, close


def load_data(path: str) -> dict[str, np.ndarray]:
    """The arrays x_train, y_train, x_test, y_test the parent wrote for a workload."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def builder(spec: dict) -> Callable[[dict, dict], Runner]:
    """The function that builds the runner of `spec["way"]` (a way of `WAYS`, or "matmul")."""
    name = MATMUL_BUILDERS[spec["backend"]] if spec["way"] == "matmul" else WAYS[spec["way"]].builder
    module, function = name.split(":")
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)


def peak_rss() -> int:
    """Peak resident memory of this process in bytes (process-wide, monotone)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def device_peak() -> Optional[int]:
    """Peak bytes in use on JAX's first device where it reports them (GPU, TPU); None on CPU."""
    if "jax" not in sys.modules:
        return None
    import jax

    try:
        stats = jax.devices()[0].memory_stats()
    except Exception:  # some backends do not implement it
        return None
    return int(stats["peak_bytes_in_use"]) if stats and "peak_bytes_in_use" in stats else None


def _answer(request: dict, runner: Optional[Runner]) -> tuple[dict, Optional[Runner]]:
    """The reply to one request, and the runner from then on (a "setup" replaces no runner:
    `main` has closed the previous one)."""
    if request["cmd"] == "setup":
        spec = request["spec"]
        runner = builder(spec)(spec, load_data(spec["data"]) if spec.get("data") else {})
        runner.prepare()
        start = time.perf_counter()
        runner.run()
        return {"first_call_s": time.perf_counter() - start}, runner
    if request["cmd"] == "time":
        runner.prepare()
        wall, cpu = time.perf_counter(), time.process_time()
        runner.run()
        return {"seconds": time.perf_counter() - wall, "cpu_seconds": time.process_time() - cpu}, runner
    if request["cmd"] == "info":
        return {"info": {**runner.info(), "device_peak_bytes": device_peak()}, "peak_rss": peak_rss()}, runner
    if request["cmd"] == "finish":
        if runner is not None:
            runner.close()
        return {"peak_rss": peak_rss(), "finished": True}, None
    raise ValueError(f"unknown request {request['cmd']!r}")


def main(modules: Sequence[str]) -> None:
    """Serves requests on stdin until "finish" or end of input; replies on the original stdout."""
    reply = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    for module in modules:  # before "ready": imports are not timed
        importlib.import_module(module)

    def send(**kw) -> None:
        reply.write(json.dumps(kw) + "\n")

    send(ok=True, ready=True, rss_after_import=peak_rss())
    runner: Optional[Runner] = None
    for line in sys.stdin:
        try:
            request = json.loads(line)
            if request.get("cmd") == "setup" and runner is not None:
                runner, previous = None, runner
                previous.close()
            answer, runner = _answer(request, runner)
        except Exception as e:  # reported to the parent, which marks the cell failed
            traceback.print_exc()
            send(ok=False, error=f"{type(e).__name__}: {e}".splitlines()[0][:300])
            continue
        send(ok=True, **answer)
        if answer.get("finished"):
            return
