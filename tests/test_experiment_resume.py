"""An experiment killed with SIGKILL mid-training resumes through the engine, bit for bit."""

import signal
import subprocess
import sys
import time

import numpy as np

from netalchemy import store, sweep

from sweep_helpers import same

# memorization's tiny profile, made long enough to be killed between two checkpoints.
LONGER = ["base.model.hidden=16", "base.train.steps=200", "base.train.eval_every=10", "base.train.chunk_steps=10"]


def _command(out):
    return [sys.executable, "-m", "netalchemy.cli", "run", "memorization", "--profile", "tiny", "--out", str(out),
            *LONGER]


def _sweeps(out):
    """Every finished sweep folder an experiment left, by its path below `out`."""
    return {p.parent.relative_to(out): sweep.load(p.parent) for p in sorted(out.rglob("summary.json"))}


def test_an_experiment_killed_mid_training_resumes_bit_identical(tmp_path):
    cut = tmp_path / "cut"
    proc = subprocess.Popen(_command(cut), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not any(p.name.isdigit() for p in cut.rglob("checkpoints/chunk-*/*")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not list(cut.rglob("verdicts.json")), "the experiment finished before it could be killed"
    partial = [p for p in cut.rglob("checkpoints/chunk-*/*") if p.name.isdigit()]
    assert partial, "no checkpoint was written before the kill"
    subprocess.run(_command(cut), check=True, capture_output=True)
    subprocess.run(_command(tmp_path / "ref"), check=True, capture_output=True)
    resumed, reference = _sweeps(cut), _sweeps(tmp_path / "ref")
    assert resumed.keys() == reference.keys() and len(resumed) == 2  # one sweep per noise level
    assert all(same(resumed[k], reference[k]) for k in resumed)
    verdicts = [store.read_json(next(root.rglob("verdicts.json")))["verdicts"] for root in (cut, tmp_path / "ref")]
    assert verdicts[0] == verdicts[1]
    assert not list(cut.rglob("checkpoints/chunk-*/[0-9]*"))  # resumed chunks cleaned up their checkpoints
    assert np.all(resumed[next(iter(resumed))].history["step"][:, -1] == 200)
