"""`netalchemy show`: the list of stored sweeps (damaged folders listed as damaged) and CSV export."""

import csv
import math
import shutil

import numpy as np
import pytest

from netalchemy import cli, runs, store, sweep
from netalchemy import config as config_lib

TINY = ["model.hidden=8", "train.steps=20", "train.eval_every=10", "seeds.n=2", "train.batch_size=50"]


def run_cli(argv, capsys, monkeypatch):
    """cli.main in this process, leaving the test process's JAX devices as they are."""
    monkeypatch.setattr(cli.devices, "use_cpu_cores", lambda: None)
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
    """A tiny finished sweep under ROOT/train/<hash>, trained once for this module."""
    root = tmp_path_factory.mktemp("runs")
    cfg = config_lib.override(config_lib.Config(), TINY)
    run_dir = root / "train" / config_lib.config_hash(cfg)
    sweep.run(cfg, out_dir=run_dir, progress=False)
    return root, run_dir


def test_show_lists_stored_sweeps_and_damaged_folders(stored, tmp_path, capsys, monkeypatch):
    root, run_dir = stored
    copy = tmp_path / "runs"
    shutil.copytree(root, copy)
    good = copy / "train" / run_dir.name
    summary = store.read_json(good / "summary.json")
    damage = {
        "truncated": lambda d: (d / "summary.json").write_text((good / "summary.json").read_text()[:40]),
        "wrongtype": lambda d: (d / "config.json").write_text(
            (good / "config.json").read_text().replace('"steps": 20', '"steps": "many"')),
        "garbage": lambda d: (d / "config.json").write_bytes(bytes(range(256))),
        "nohistory": lambda d: (d / "history.npz").unlink(),
    }
    for name, spoil in damage.items():
        shutil.copytree(good, copy / "train" / name)
        spoil(copy / "train" / name)
    unfinished = copy / "train" / "unfinished"
    unfinished.mkdir()
    shutil.copy(good / "config.json", unfinished / "config.json")
    (copy / "train" / "stray-file.txt").write_text("not a run")

    code, out, err = run_cli(["show", "--out", str(copy)], capsys, monkeypatch)
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["hash", "finished", "test_acc"] and len(lines) == 1 + 6
    rows = {line.split()[0]: line for line in lines[1:]}
    expected_acc = summary["by_lr"][0]["metrics"]["test_acc"]["mean"]
    assert rows[good.name].split()[4] == f"{expected_acc:.4f}"  # hash, date, time, UTC, accuracy
    assert "model.hidden=(8,)" in rows[good.name] and "seeds.n=2" in rows[good.name]
    assert "optim.lr" not in rows[good.name]  # only keys that differ from the defaults
    assert lines[1].startswith(good.name)  # finished sweeps first, damaged and unfinished after
    for name in damage:
        assert rows[name].split()[1] == "damaged", rows[name]
    assert "summary.json" in rows["truncated"] and "history.npz" in rows["nohistory"]
    assert "config.json" in rows["wrongtype"] and "train.steps" in rows["wrongtype"]
    assert "config.json" in rows["garbage"]
    assert rows["unfinished"].split()[1] == "unfinished"


def test_show_without_stored_sweeps(tmp_path, capsys, monkeypatch):
    code, out, _ = run_cli(["show", "--out", str(tmp_path)], capsys, monkeypatch)
    assert code == 0 and out.strip() == f"no stored sweeps under {tmp_path / 'train'}"
    assert list(tmp_path.iterdir()) == []


def _number(cell):
    return math.nan if cell == "" else float(cell)


def test_csv_export_reads_back_as_the_stored_values(stored, tmp_path, capsys, monkeypatch):
    _, run_dir = stored
    out = tmp_path / "csv"
    code, printed, _ = run_cli(["show", str(run_dir), "--csv", str(out)], capsys, monkeypatch)
    assert code == 0 and f"wrote {out / 'finals.csv'} and {out / 'history.csv'}" in printed
    result = sweep.load(run_dir)
    per_run = result.summary["per_run"]

    with open(out / "finals.csv", newline="") as f:
        finals = list(csv.DictReader(f))
    assert [int(r["seed"]) for r in finals] == result.seeds.tolist()
    assert [float(r["lr"]) for r in finals] == result.lrs.tolist()
    for metric in ("train_loss", "train_acc", "test_loss", "test_acc"):
        np.testing.assert_array_equal([_number(r[metric]) for r in finals],
                                      np.asarray(per_run[metric], dtype=float))
        np.testing.assert_array_equal([_number(r[metric]) for r in finals], result.history[metric][:, -1])
    assert all(r["diverged"] == "0" and r["diverged_at_step"] == "" for r in finals)

    with open(out / "history.csv", newline="") as f:
        history = list(csv.DictReader(f))
    n_runs, n_evals = result.history["test_acc"].shape
    metrics = {m: v for m, v in result.history.items() if m != "step"}
    assert len(history) == n_runs * n_evals * len(metrics) and {r["metric"] for r in history} == set(metrics)
    assert sorted({int(r["step"]) for r in history}) == [0, 10, 20]
    if "step" in result.history:  # the engine's own record of each evaluation's step
        assert (result.history["step"] == [0, 10, 20]).all()
    for metric, values in metrics.items():
        for i, seed in enumerate(result.seeds):
            rows = [r for r in history if r["metric"] == metric and int(r["seed"]) == seed]
            assert [int(r["step"]) for r in rows] == [0, 10, 20]
            np.testing.assert_array_equal([_number(r["value"]) for r in rows], values[i])  # exact, NaN as ''


def test_csv_export_into_the_run_folder(stored, tmp_path, capsys, monkeypatch):
    _, run_dir = stored
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    code, _, _ = run_cli(["show", str(copy), "--csv", str(copy)], capsys, monkeypatch)
    assert code == 0 and (copy / "finals.csv").exists() and (copy / "history.csv").exists()


def test_diverged_runs_export_empty_cells(tmp_path):
    history = {"test_acc": np.array([[0.1, 0.5, 0.6, 0.7], [0.1, 0.2, np.nan, np.nan]]),
               "diverged": np.array([[0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 1.0]])}
    cfg = config_lib.override(config_lib.Config(), ["train.steps=25", "train.eval_every=10"])
    per_run = {"train_loss": [0.2, None], "train_acc": [0.9, None], "test_loss": [1.0, None], "test_acc": [0.7, None],
               "diverged": [False, True], "diverged_at_step": [-1, 13]}
    result = sweep.SweepResult(cfg, np.array([0, 1]), np.array([0.01, 0.01]), history, None, None,
                               {"per_run": per_run}, None)
    finals, hist = runs.write_csv(result, tmp_path)
    rows = list(csv.DictReader(open(finals, newline="")))
    assert rows[1]["test_acc"] == "" and rows[1]["diverged"] == "1" and rows[1]["diverged_at_step"] == "13"
    assert rows[0]["diverged_at_step"] == "" and rows[0]["test_acc"] == "0.7"
    steps = [int(r["step"]) for r in csv.DictReader(open(hist, newline="")) if r["metric"] == "test_acc"
             and r["seed"] == "0"]
    assert steps == [0, 10, 20, 25]  # the last evaluation is at the final step
    diverged = [r["value"] for r in csv.DictReader(open(hist, newline="")) if r["metric"] == "test_acc"
                and r["seed"] == "1"]
    assert diverged == ["0.1", "0.2", "", ""]


def test_headline_accuracy_of_a_learning_rate_grid():
    group = lambda mean: {"metrics": {"test_acc": {"mean": mean}}}
    assert runs._headline({"by_lr": [group(0.5)]}) == "0.5000"
    assert runs._headline({"by_lr": [group(0.5), group(0.61), group(None)]}) == "0.6100 (best of 3 lrs)"
    assert runs._headline({"by_lr": [group(None)]}) == "—"


@pytest.mark.parametrize("damaged, spoil", [
    ("summary.json", lambda d: (d / "summary.json").write_text((d / "summary.json").read_text()[:40])),
    ("history.npz", lambda d: (d / "history.npz").write_bytes(np.random.default_rng(0).bytes(4096))),
    ("config.json", lambda d: (d / "config.json").write_text(
        (d / "config.json").read_text().replace('"steps": 20', '"steps": "many"'))),
    ("history.npz", lambda d: store.write_npz(d / "history.npz", {
        k: v for k, v in store.read_npz(d / "history.npz").items() if k != "test_predictions"})),
])
def test_show_on_a_damaged_folder_is_one_line_naming_the_file(damaged, spoil, stored, tmp_path, capsys, monkeypatch):
    _, run_dir = stored
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    spoil(copy)
    before = sorted(p.name for p in copy.iterdir())
    code, out, err = run_cli(["show", str(copy), "--csv", str(tmp_path / "csv")], capsys, monkeypatch)
    assert code == 2 and out == "" and err.count("\n") == 1 and err.startswith("netalchemy: error: ")
    assert damaged in err, err
    assert sorted(p.name for p in copy.iterdir()) == before and not (tmp_path / "csv").exists()


def test_format_time_and_describe_config():
    assert runs.format_time("2026-03-01T14:05:09+02:00") == "2026-03-01 12:05 UTC"  # converted to UTC
    assert runs.format_time("2026-03-01T14:05:09") == "2026-03-01 14:05"  # naive: no zone claimed
    assert runs.format_time(None) == "?" and runs.format_time("yesterday") == "yesterday"
    assert runs.describe_config(config_lib.Config()) == "config: defaults"
    cfg = config_lib.override(config_lib.Config(), ["model.hidden=8", "seeds.n=2"])
    assert runs.changed_keys(cfg) == {"model.hidden": (8,), "seeds.n": 2}
    assert runs.describe_config(cfg) == "config: defaults model.hidden=(8,) seeds.n=2"
