"""netalchemy: audit claims about how neural networks learn, with small ReLU MLPs in JAX.

Many seeds train at once (`jax.vmap` over seeds, sharded over devices, checkpointed and
resumable) and every number comes with a bootstrap confidence interval over seeds. A sweep
in six lines (`python -c` or a notebook)::

    import netalchemy as na
    na.devices.use_cpu_cores()  # one JAX device per CPU core: call before JAX runs anything
    cfg = na.override(na.Config(), ["seeds.n=16", "train.steps=2000"])
    result = na.sweep.run(cfg, out_dir=f"runs/train/{na.config_hash(cfg)}")  # resumes, then reloads
    print(na.sweep.format_summary(result))  # each final metric: mean, 95% CI, std, per lr
    print(na.stats.bootstrap_ci(result.history["test_acc"][:, -1]).text())  # one CI by hand

Public names: `Config` (the frozen config tree), `override` (apply `key=value` strings),
`config_hash`, `ConfigError`, the modules `sweep` (`sweep.run`, `sweep.load`), `stats` and
`devices`, `SweepResult` (what `sweep.run` returns) and `__version__`. The modules that import
JAX or SciPy load on first use, so `import netalchemy` stays fast and leaves JAX's devices
unset until `devices.use_cpu_cores()` has run.
"""

from __future__ import annotations

from importlib import import_module, metadata
from typing import Any

from netalchemy.config import Config, ConfigError, config_hash, override

try:
    __version__ = metadata.version("netalchemy")
except metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

_LAZY_MODULES = ("sweep", "stats", "devices")
_LAZY_NAMES = {"SweepResult": "sweep"}

__all__ = ["Config", "ConfigError", "SweepResult", "__version__", "config_hash", "devices", "override",
           "stats", "sweep"]


def __getattr__(name: str) -> Any:
    """Imports `sweep`, `stats`, `devices` and `SweepResult` on first use (PEP 562)."""
    if name in _LAZY_MODULES:
        return import_module(f"netalchemy.{name}")
    if name in _LAZY_NAMES:
        return getattr(import_module(f"netalchemy.{_LAZY_NAMES[name]}"), name)
    raise AttributeError(f"module 'netalchemy' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
