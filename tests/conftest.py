"""Test-wide settings: a persistent JAX compilation cache shared by every test process.

Many tests compile the same small programs (in pytest-xdist workers and in the CLI's
subprocesses); the cache under .pytest_cache/ compiles each once per machine.
"""

import os
from pathlib import Path

import jax

CACHE = Path(__file__).resolve().parent.parent / ".pytest_cache" / "jax-compilation-cache"
CACHE.mkdir(parents=True, exist_ok=True)
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(CACHE))  # inherited by subprocesses
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")  # every program: most compile in < 1 s
jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs",
                  float(os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"]))
