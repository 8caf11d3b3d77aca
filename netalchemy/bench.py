"""`netalchemy bench`'s entry: the throughput benchmark lives in the repository, not the library.

The benchmark (its peers in PyTorch, Flax NNX and plain JAX, its driver and report) is the
top-level `benchmarks/` folder of a source checkout, next to this package. An editable install
(`pip install -e .`) finds it there; a wheel has no such folder, and then any use of this
module raises `BenchmarksMissing` with one line saying how to get it.

    from netalchemy import bench
    results = bench.run_benchmark(bench.PROFILES["quick"], out_dir=Path("runs/bench"))
    print(bench.format_table(results))

Every public name of `benchmarks` (`PROFILES`, `run_benchmark`, `format_table`, ...) reads
through this module.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from netalchemy.config import ConfigError

FOLDER = Path(__file__).resolve().parent.parent / "benchmarks"  # beside the package in a checkout
PACKAGE = "benchmarks"


class BenchmarksMissing(ConfigError):
    """The benchmarks/ folder is not where a source checkout has it (one line, for the CLI)."""


def load(folder: Path | None = None) -> ModuleType:
    """The `benchmarks` package from `folder` (default `FOLDER`), imported once.

    Raises:
      BenchmarksMissing: no benchmarks/ there (installed from a wheel), or another package
        named `benchmarks` is already imported.
    """
    folder = Path(folder or FOLDER)
    init = folder / "__init__.py"
    if not init.is_file():
        raise BenchmarksMissing(
            f"the benchmark is not installed ({folder} not found): it ships with the source, not the "
            "package; clone the netalchemy repository, run `pip install -e '.[bench]'` in it and run "
            "`netalchemy bench` from that checkout")
    loaded = sys.modules.get(PACKAGE)
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() != init.resolve():
            raise BenchmarksMissing(f"another module named {PACKAGE!r} is already imported "
                                    f"({getattr(loaded, '__file__', None)}), not {init}")
        return loaded
    spec = importlib.util.spec_from_file_location(PACKAGE, init, submodule_search_locations=[str(folder)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[PACKAGE]
        raise
    return module


def __getattr__(name: str) -> Any:
    """`bench.NAME` is `benchmarks.NAME` (PEP 562); dunder lookups stay AttributeErrors."""
    if name.startswith("__"):
        raise AttributeError(name)
    return getattr(load(), name)
