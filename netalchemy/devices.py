"""One JAX device per CPU core, so that a sweep's runs are sharded across the cores.

On a CPU, XLA computes the vmapped batch of small matmuls of a sweep's runs on one thread of
its single CPU device. With one CPU device per core (`jax_num_cpu_devices`), `sweep` shards
the run axis over them and every core trains its share of the runs: W1 (40-100-100-10,
batch 100) at 256 seeds trains ≈ 1.6× faster on a 2-core machine.

The device count changes a sweep's results in the last bits (XLA partitions the program
differently; chaotic training then amplifies the rounding, see claim A7): results are
bit-identical for the same config, versions and device count. Each result's provenance
records its devices; `NETALCHEMY_CPU_DEVICES=1` reproduces a single-device run.

The `netalchemy` command calls `use_cpu_cores()` before it touches JAX; library users call it
right after `import jax` (JAX fixes its devices the first time it runs anything).

Beyond one machine, `initialize_processes` joins a sweep over several processes through
`jax.distributed` (CPU collectives over gloo): the mesh then spans every process's devices.
"""

from __future__ import annotations

import os
import warnings
from typing import Optional

ENV = "NETALCHEMY_CPU_DEVICES"
XLA_COUNT_FLAG = "--xla_force_host_platform_device_count"


class DeviceError(ValueError):
    """A device count that cannot be used (one line, for the CLI)."""


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def requested_count(count: Optional[int] = None) -> int:
    """`count`, else $NETALCHEMY_CPU_DEVICES, else one per usable core."""
    if count is None:
        raw = os.environ.get(ENV, "").strip()
        if not raw:
            return usable_cores()
        try:
            count = int(raw)
        except ValueError:
            raise DeviceError(f"{ENV} must be a positive integer, got {raw!r}") from None
    if count < 1:
        raise DeviceError(f"the CPU device count must be >= 1, got {count}")
    return count


def use_cpu_cores(count: Optional[int] = None) -> Optional[int]:
    """Asks JAX for `count` CPU devices (default: see `requested_count`).

    Returns the count set, or None when the choice is left as it is: XLA_FLAGS already sets
    the host device count, or JAX has already run something (then with a warning).
    """
    count = requested_count(count)
    if XLA_COUNT_FLAG in os.environ.get("XLA_FLAGS", ""):
        return None
    import jax

    try:
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        warnings.warn("JAX is already initialised: keeping its CPU devices "
                      f"({len(jax.devices('cpu'))}); call use_cpu_cores() before JAX runs anything", stacklevel=2)
        return None
    return count


def initialize_processes(coordinator: str, processes: int, process_id: int) -> None:
    """Joins `processes` processes into one JAX runtime (call before JAX runs anything).

    Args:
      coordinator: "host:port" of process 0, reachable from every process.
      processes: how many processes take part.
      process_id: this process's index in 0 … processes − 1.
    """
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise DeviceError(f"--coordinator must be HOST:PORT, got {coordinator!r}")
    if processes < 1 or not 0 <= process_id < processes:
        raise DeviceError(f"need processes >= 1 and 0 <= process-id < processes, got {processes} and {process_id}")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes=processes, process_id=process_id)
