"""One CPU device per core: the count asked for, the environment override, and its limits."""

import os
import subprocess
import sys

import pytest

from netalchemy import devices, sweep

pytestmark = pytest.mark.exact_bits  # bits compared across differently compiled programs (Makefile)


def python(code: str, **env) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", devices.ENV)}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**clean, **env})


COUNT = "from netalchemy import devices; print(devices.use_cpu_cores()); import jax; print(len(jax.devices()))"


def test_default_is_one_device_per_usable_core():
    result = python(COUNT)
    cores = len(os.sched_getaffinity(0))
    assert result.stdout.split() == [str(cores), str(cores)]


def test_environment_sets_the_count_and_xla_flags_win():
    assert python(COUNT, NETALCHEMY_CPU_DEVICES="3").stdout.split() == ["3", "3"]
    flags = python(COUNT, NETALCHEMY_CPU_DEVICES="3", XLA_FLAGS="--xla_force_host_platform_device_count=5")
    assert flags.stdout.split() == ["None", "5"]


@pytest.mark.parametrize("raw", ["abc", "0", "-2", "1.5"])
def test_bad_counts_are_one_line_errors(raw, monkeypatch):
    monkeypatch.setenv(devices.ENV, raw)
    with pytest.raises(devices.DeviceError):
        devices.requested_count()


def test_cli_reports_a_bad_count_in_one_line():
    result = subprocess.run([sys.executable, "-m", "netalchemy.cli", "list"], capture_output=True, text=True,
                            env={**os.environ, devices.ENV: "many"})
    assert result.returncode == 2
    assert result.stderr.strip() == "netalchemy: error: NETALCHEMY_CPU_DEVICES must be a positive integer, got 'many'"


def test_after_jax_has_run_the_devices_stay_and_a_warning_says_so():
    import jax

    jax.devices()
    with pytest.warns(UserWarning, match="already initialised"):
        assert devices.use_cpu_cores(2) is None


def test_a_sweep_never_spreads_over_more_devices_than_runs():
    code = ("from netalchemy import devices; devices.use_cpu_cores(4)\n"
            "from netalchemy import sweep; print(sweep.device_mesh(1).size, sweep.device_mesh(3).size, sweep.device_mesh(9).size)")
    assert python(code).stdout.split() == ["1", "3", "4"]
    assert sweep.device_mesh(5).size <= 5
