"""How much memory a sweep needs: per-run estimates, the chunk size, and the check before training.

A sweep trains its runs in chunks that fit `train.memory_budget_gb` on the devices
(`runs_per_chunk` of `bytes_per_run` each) and keeps every run's results on the host;
`check_memory` refuses, before anything is written, a sweep that cannot fit at all.
"""

from __future__ import annotations

import math
import os
from typing import Optional

import numpy as np

from netalchemy import config as config_lib
from netalchemy import optim, train
from netalchemy.config import Config


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
    evaluations = len(train.Metrics._fields) * 8 * (cfg.train.steps // cfg.train.eval_every + 2)
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
