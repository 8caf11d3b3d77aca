"""One sweep over two processes (jax.distributed, CPU collectives over gloo, loopback)."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from netalchemy import config as C

pytestmark = pytest.mark.exact_bits  # bits compared across differently compiled programs (Makefile)

OVERRIDES = ["model.hidden=16", "train.steps=60", "train.eval_every=10", "train.chunk_steps=20",
             "train.batch_size=25", "seeds.n=5"]


def train(out, *extra, devices="1"):
    env = {**os.environ, "NETALCHEMY_CPU_DEVICES": devices}
    env.pop("XLA_FLAGS", None)
    args = [sys.executable, "-m", "netalchemy.cli", "train", "--quiet", "--out", str(out), *extra, *OVERRIDES]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_compute_the_sweep_of_one_process_with_as_many_devices(tmp_path):
    port = free_port()
    procs = [train(tmp_path / "two", "--coordinator", f"localhost:{port}", "--processes", "2",
                   "--process-id", str(i)) for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert "5 runs, 0 diverged" in outs[0][0] and "runs," not in outs[1][0]  # process 0 reports
    single = train(tmp_path / "one", devices="2")
    assert single.wait(timeout=300) == 0
    name = C.config_hash(C.override(C.Config(), OVERRIDES))
    a = np.load(tmp_path / "two" / "train" / name / "history.npz")
    b = np.load(tmp_path / "one" / "train" / name / "history.npz")
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:  # each run computed once, on one of the two processes: the same bits
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_a_bad_coordinator_is_a_one_line_error(tmp_path):
    proc = train(tmp_path, "--coordinator", "nohostport", "--processes", "2")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and err.strip() == "netalchemy: error: --coordinator must be HOST:PORT, got 'nohostport'"


def test_an_unusable_folder_stops_every_process_with_one_line(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    port = free_port()
    procs = [train(blocker, "--coordinator", f"localhost:{port}", "--processes", "2", "--process-id", str(i))
             for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]  # neither waits forever for the other
    assert [p.returncode for p in procs] == [2, 2], outs
    for _, err in outs:
        assert err.strip().splitlines()[-1].startswith("netalchemy: error: ")
