"""The audit's wall time in the benchmark (benchmarks/audit_times.py, rendered by report.py):
fake audit folders with known seconds, commits and times, read back into the table."""

import datetime
import importlib
import json
from pathlib import Path

import pytest

from netalchemy import audit, bench, experiment, store

bench.load()  # registers the `benchmarks` package of this checkout
A, report = (importlib.import_module(f"benchmarks.{m}") for m in ("audit_times", "report"))

OLD, NEW = "a" * 40, "b" * 40  # two commits
START = "2026-12-02T01:00:00+00:00"  # the audit command's start: report.md says Written 01:10:00, Time 600 s


def _store(folder: Path, audit_name: str, name: str, seconds: float, *, commit: str = NEW,
           created: str = "2026-12-02T01:05:00+00:00", devices: int = 2, backend: str = "cpu") -> Path:
    """An experiment's verdicts.json where `netalchemy audit` puts it."""
    path = folder / audit_name / name / audit_name / "verdicts.json"
    store.write_json(path, {"experiment": name, "verdicts": [], "seconds": seconds, "provenance": {
        "git_commit": commit, "devices": [f"TFRT_CPU_{i}" for i in range(devices)], "backend": backend,
        "created": created}})
    return path


def _report_md(folder: Path, seconds: int = 600, written: str = "2026-12-02T01:10:00+00:00",
               commit: str = NEW) -> None:
    store.write_text(folder / "report.md", f"# audit\n\n## Provenance\n\n- Time: {seconds} s ({seconds / 60:.1f} "
                     f"min) for this command; ...\n- Devices: cpu\n- Git commit: {commit}\n- Written: {written}\n")


@pytest.fixture
def audits(tmp_path) -> Path:
    """MNIST-1D quick: all ten experiments, 30·i s each; gradcheck (time) and chance (time and
    commit) stored before the last command started. Fashion-MNIST quick: chance fine, hyperparams
    and batch_size damaged, the rest missing, no report.md. A tiny audit, which is not evidence."""
    folder = tmp_path / "audit"
    for i, name in enumerate(experiment.EXPERIMENTS, start=1):
        early = name in ("gradcheck", "chance")
        _store(folder, "quick", name, 30.0 * i, commit=OLD if name == "chance" else NEW,
               created="2026-12-01T20:00:00+00:00" if early else "2026-12-02T01:05:00+00:00")
    _report_md(folder / "quick")
    _store(folder, "quick-fashion_mnist", "chance", 120.0, devices=1, backend="gpu")
    bad = _store(folder, "quick-fashion_mnist", "hyperparams", 1.0)
    bad.write_text('{"seconds": 3, "provenance": ')  # cut off mid-write
    store.write_json(_store(folder, "quick-fashion_mnist", "batch_size", 1.0), {"seconds": 5})  # no provenance
    _store(folder, "tiny", "chance", 9.0)
    return folder


def test_each_audit_is_one_row_with_its_sums_missing_experiments_and_commits(audits):
    found = A.collect(audits)
    assert found["folder"] == str(audits)
    mnist, fashion = found["rows"]  # MNIST-1D before Fashion-MNIST; tiny left out, full not stored
    assert (mnist["audit"], mnist["label"], fashion["audit"]) == ("quick", "MNIST-1D quick", "quick-fashion_mnist")
    assert mnist["complete"] == list(experiment.EXPERIMENTS) and mnist["missing"] == [] and mnist["expected"] == 10
    assert mnist["total_s"] == pytest.approx(30 * sum(range(1, 11)))  # 1650 s
    assert (mnist["slowest"], mnist["slowest_s"]) == (experiment.EXPERIMENTS[-1], 300.0)
    assert mnist["commits"] == {NEW[:10]: 9, OLD[:10]: 1} and mnist["devices"] == {"2 cpu": 10}
    assert mnist["reused"] == ["gradcheck", "chance"]  # before 01:00 (gradcheck), and another commit (chance)
    assert mnist["command_s"] == 600 and mnist["command_commit"] == NEW[:10]
    # gradcheck is dataset-free: an audit on another dataset never reruns it, so 9 are expected.
    assert fashion["not_rerun"] == ["gradcheck"] and fashion["expected"] == 9
    assert fashion["complete"] == ["chance"] and set(fashion["damaged"]) == {"hyperparams", "batch_size"}
    assert fashion["missing"] == [n for n in experiment.EXPERIMENTS if n not in
                                  ("gradcheck", "chance", "hyperparams", "batch_size")]
    assert fashion["total_s"] == 120 and fashion["devices"] == {"1 gpu": 1}
    assert fashion["command_s"] is None and fashion["reused"] == []
    json.dumps(found)  # goes into bench.json as it is


def test_the_table_shows_minutes_the_mixed_commits_the_reuse_and_each_damaged_file_in_one_line(audits):
    lines = report.audit_lines({"audits": A.collect(audits)}, markdown=True)
    assert lines[0].startswith("Audit wall time") and lines[2].startswith("| audit | experiments complete |")
    mnist, fashion = lines[4], lines[5]
    assert mnist.startswith(f"| MNIST-1D quick | 10 of 10 | 27.5 | {experiment.EXPERIMENTS[-1]} 5.0 | "
                            f"{NEW[:10]} ×9, {OLD[:10]} ×1 | 2 cpu | mixed commits; ")
    assert "reused from an earlier command: gradcheck, chance; last command 10.0 min |" in mnist
    assert fashion.startswith("| Fashion-MNIST quick | 1 of 9; missing phases, linearity, regularization, batchnorm, "
                              "stages, memorization; gradcheck dataset-free, not rerun | 2.0 | chance 2.0 | ")
    assert "no report.md (unfinished)" in fashion and "mixed" not in fashion
    assert "hyperparams unreadable (damaged file " in fashion and "batch_size unreadable (damaged file " in fashion
    assert "not an experiment's verdicts" in fashion and "Traceback" not in "\n".join(lines)
    text = report.audit_lines({"audits": A.collect(audits)}, markdown=False)
    assert len(text) == 6 and text[4].startswith("MNIST-1D quick ") and "27.5" in text[4]


def test_without_a_stored_audit_one_line_says_how_to_produce_one(tmp_path):
    for results in ({"audits": A.collect(tmp_path / "nowhere")}, {"audits": A.collect(tmp_path)}):
        (line,) = report.audit_lines(results, markdown=True)[2:]
        assert line.startswith("No quick or full audit is stored under") and "netalchemy audit" in line
    assert report.audit_lines({}, markdown=True) == []  # a bench.json from before the table


def test_the_command_time_is_read_from_a_report_the_audit_itself_wrote(tmp_path):
    folder = tmp_path / "audit" / "quick"
    folder.mkdir(parents=True)
    audit.write_report(folder, "quick", [], 754.4, claims={})
    command = A.last_command(folder)
    assert command["seconds"] == 754  # written as "754 s"
    assert command["commit"] == (store.LOADED_COMMIT[:10] if store.LOADED_COMMIT else None)
    assert command["start"] < command["start"] + datetime.timedelta(seconds=1)  # a datetime, comparable
    assert A.last_command(tmp_path) is None


def test_the_drivers_report_writes_the_table_into_summary_table_and_bench_json(audits, tmp_path):
    results = {"settings": {"repeats": 3}, "provenance": {}, "matmul": {"machine_gflops": None, "size": 2048},
               "workloads": {}, "cells": [], "ratios": [], "targets": [], "wall_s": 1.0,
               "audits": A.collect(audits)}
    paths = report.write_results(results, tmp_path / "out")
    summary, table = paths["markdown"].read_text(), paths["table"].read_text()
    assert "| MNIST-1D quick | 10 of 10 | 27.5 |" in summary and "| Fashion-MNIST quick | 1 of 9;" in summary
    assert "Audit wall time" in table and "MNIST-1D quick" in table
    assert json.loads(paths["json"].read_text())["audits"]["rows"][0]["total_s"] == 1650


def test_an_audit_whose_run_folder_is_gone_is_read_from_the_kept_ledgers(audits, tmp_path):
    """A full audit kept in the repository's ledgers (`netalchemy stability --keep`) but not under runs:
    its row comes from the kept records and says so; a run folder's record wins over a kept one."""
    ledgers = tmp_path / "ledgers"
    for name, seconds in (("chance", 600.0), ("hyperparams", 300.0)):
        store.write_json(ledgers / "full-fashion_mnist" / f"{name}.json", store.read_json(
            _store(tmp_path / "elsewhere", "full-fashion_mnist", name, seconds)))
    store.write_json(ledgers / "quick-fashion_mnist" / "chance.json", store.read_json(
        _store(tmp_path / "elsewhere", "quick-fashion_mnist", "chance", 999.0)))
    found = A.collect(audits, ledgers)
    assert found["ledgers"] == str(ledgers)
    labels = [r["label"] for r in found["rows"]]
    assert labels == ["MNIST-1D quick", "Fashion-MNIST quick", "Fashion-MNIST full"]
    quick, full = found["rows"][1], found["rows"][2]
    assert quick["total_s"] == 120 and quick["kept"] == []  # the run folder's chance, not the kept 999 s
    assert full["complete"] == ["chance", "hyperparams"] and full["kept"] == ["chance", "hyperparams"]
    assert full["total_s"] == 900 and full["reused"] == []
    lines = report.audit_lines({"audits": found}, markdown=True)
    assert f"or kept in {ledgers}" in lines[0]
    row = next(line for line in lines if line.startswith("| Fashion-MNIST full |"))
    assert "| 15.0 | chance 10.0 |" in row and "from the kept ledgers: chance, hyperparams" in row
    assert "no report.md" not in row  # no run folder: nothing unfinished to report
    assert [r["label"] for r in A.collect(audits)["rows"]] == ["MNIST-1D quick", "Fashion-MNIST quick"]
