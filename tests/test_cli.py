"""The command line: help, errors (one line, exit 2, nothing written), train/show/run/list."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from netalchemy import cli


def netalchemy(*args, cwd=None, env=None):
    return subprocess.run([sys.executable, "-m", "netalchemy.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=None if env is None else {**os.environ, **env})


@pytest.mark.parametrize("command", [[], ["train"], ["show"], ["run"], ["audit"], ["bench"], ["list"]])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main([*command, "--help"])
    assert info.value.code == 0
    assert "usage: netalchemy" in capsys.readouterr().out


def test_train_help_lists_config_keys(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--help"])
    assert "optim.lr = 0.01" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["train", "optim.lrr=1"], "unknown config key 'optim.lrr'"),
    (["train", "optim.lr=fast"], "cannot read 'fast' as float"),
    (["train", "data.name=no_such_dataset", "train.steps=250"], "unknown dataset"),
    (["train", "oops"], "expected key=value"),
    (["run", "nope"], "unknown experiment 'nope'"),
    (["run", "gradcheck", "--profile", "huge"], "unknown profile 'huge'"),
    (["run", "gradcheck", "no_such_key=1"], "unknown config key"),
    (["show", "/nonexistent/run"], "no finished sweep"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["train", "train.steps=1e99", "train.eval_every=1e99"], "train.steps must be in [1, 2147483647], got 1e+99"),
    (["train", "model.hidden=1e9"], "of memory"),  # checked against the machine's memory before anything is written
    (["train", "seeds.n=1e6"], "of memory"),
])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(args, message, tmp_path):
    result = netalchemy(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("netalchemy: error:") and message in lines[0], result.stderr
    assert list(tmp_path.iterdir()) == []


def test_unwritable_output_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running as a user who can write anywhere")
        result = netalchemy("train", "--out", str(locked / "runs"), "train.steps=250")
        assert result.returncode == 2 and "cannot write" in result.stderr
    finally:
        locked.chmod(0o700)


def test_unwritable_output_folder_is_a_file(tmp_path):
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    result = netalchemy("train", "--out", str(blocker), "train.steps=250")
    assert result.returncode == 2 and "cannot write" in result.stderr
    assert blocker.read_text() == "not a folder"


def test_train_then_show(tmp_path):
    args = ["--out", str(tmp_path), "--quiet", "model.hidden=8", "train.steps=20", "train.eval_every=10",
            "seeds.n=2", "train.batch_size=50"]
    trained = netalchemy("train", *args, env={"NETALCHEMY_CPU_DEVICES": "3"})
    assert trained.returncode == 0, trained.stderr
    assert "2 runs, 0 diverged" in trained.stdout and "test_acc" in trained.stdout
    run_dir = Path(trained.stdout.strip().splitlines()[-1].split("results: ")[1])
    provenance = json.loads((run_dir / "provenance.json").read_text())
    assert len(provenance["devices"]) == 3  # the command gave JAX the CPU devices asked for
    shown = netalchemy("show", str(run_dir))
    assert shown.returncode == 0 and "test_acc" in shown.stdout and "model.hidden=(8,)" in shown.stdout
    again = netalchemy("train", *args, env={"NETALCHEMY_CPU_DEVICES": "3"})  # reloaded, not retrained
    assert again.stdout == trained.stdout
    assert again.stderr.startswith(f"reusing {run_dir}, finished 20") and "use --force to retrain" in again.stderr
    forced = netalchemy("train", "--force", *args, env={"NETALCHEMY_CPU_DEVICES": "3"})
    assert forced.returncode == 0 and "reusing" not in forced.stderr
    assert forced.stdout == trained.stdout  # retrained, bit for bit the same summary


def test_list_names_experiments_and_claims():
    result = netalchemy("list")
    assert result.returncode == 0, result.stderr
    from netalchemy import claims, experiment

    for claim in claims.load().values():  # every claim, with its statement, under its experiment
        assert f"  {claim.id:4s} {claim.statement}" in result.stdout
    experiments = [line for line in result.stdout.splitlines() if not line.startswith(" ")]
    assert experiments == list(experiment.EXPERIMENTS)


def test_run_gradcheck_tiny_passes_its_thresholds(tmp_path):
    result = netalchemy("run", "gradcheck", "--profile", "tiny", "--out", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert "hand~auto f64" in result.stdout
    lines = result.stdout.splitlines()
    banners = [i for i, line in enumerate(lines) if line == cli.SMOKE_BANNER]
    assert len(banners) == 2 and lines[banners[0] + 1].startswith("claim")  # the verdicts, marked a smoke test
    for claim in ("M1", "M2", "M3"):
        assert any(line.startswith(claim) and "supported" in line for line in result.stdout.splitlines())
    folder = tmp_path / "gradcheck" / "tiny"
    assert (folder / "verdicts.json").exists() and (folder / "errors.png").stat().st_size > 1000
