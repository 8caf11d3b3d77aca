"""The throughput benchmark (benchmarks/, reached through netalchemy.bench): FLOP counts,
planning, ratios and targets, the tiny profile end to end, and the one line without the folder."""

import importlib
import json
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netalchemy import bench, cli
from netalchemy import config as C

bench.load()  # registers the `benchmarks` package of this checkout; its modules import from here on
S, R, report, driver = (importlib.import_module(f"benchmarks.{m}") for m in ("settings", "results", "report",
                                                                             "driver"))


# ----------------------------------------------------------------------------- FLOPs


def test_flop_counter_matches_a_hand_count_for_a_small_net():
    # 3-4-2 net, batch 5. forward: 2·5·(3·4 + 4·2) = 200; weight gradients: 200;
    # input gradients: only the second layer's, 2·5·(4·2) = 80.
    assert S.flops_per_step((3, 4, 2), 5) == 200 + 200 + 80
    assert S.matmul_flops(2) == 16


def _dot_flops(jaxpr) -> int:
    """2·|output|·|contracted| summed over every dot_general of a jaxpr, nested ones included."""
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract_lhs, _), _ = eqn.params["dimension_numbers"]
            lhs = eqn.invars[0].aval.shape
            total += 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[d] for d in contract_lhs]))
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, "jaxpr", sub)  # a ClosedJaxpr holds a Jaxpr
                if hasattr(sub, "eqns"):
                    total += _dot_flops(sub)
    return total


@pytest.mark.parametrize("widths,batch", [((3, 4, 2), 5), ((40, 100, 100, 10), 100), ((7, 3, 5, 4, 2), 9)])
def test_flop_counter_matches_the_matmuls_jax_grad_actually_does(widths, batch):
    """An independent count: the dot_generals in the jaxpr of jax.grad with respect to the params."""
    params = [(jnp.ones((a, b)), jnp.zeros(b)) for a, b in zip(widths[:-1], widths[1:])]

    def loss(params, x):
        h = x
        for w, b in params[:-1]:
            h = jax.nn.relu(h @ w + b)
        return jnp.sum(h @ params[-1][0] + params[-1][1])

    jaxpr = jax.make_jaxpr(jax.grad(loss))(params, jnp.ones((batch, widths[0])))
    assert _dot_flops(jaxpr.jaxpr) == S.flops_per_step(widths, batch)


def test_the_issue_figures_for_w1_and_w2():
    w1, w2 = S.WORKLOADS["W1"], S.WORKLOADS["W2"]
    assert S.flops_per_step(w1.widths, w1.batch) == 8_200_000  # ≈ 8.2 MFLOP
    w2_flops = S.flops_per_step(w2.widths, w2.batch)
    assert w2_flops == 1_174_798_336
    assert abs(w2_flops / 1.18e9 - 1) < 0.01  # ≈ 1.18 GFLOP


def test_the_share_of_engine_flops_spent_evaluating():
    w1 = S.WORKLOADS["W1"]
    # A real MNIST-1D run: 6000 steps, evaluations at step 0 and every 250 steps (25 in all) of
    # 5000 examples × 2·15000 FLOPs, against 6000 × 8.2 MFLOP of training.
    evaluation, training = 25 * 5000 * 30_000, 6000 * 8_200_000
    assert S.eval_flop_share(w1, 6000, 250, n_train=4000, n_test=1000) == pytest.approx(
        evaluation / (evaluation + training))
    # A short timed call evaluates relatively more often.
    assert S.eval_flop_share(w1, 250, 250, n_train=4000, n_test=1000) > 0.1


# ----------------------------------------------------------------------------- settings and planning


def test_settings_are_overridable_and_validated():
    s = C.override(bench.PROFILES["tiny"], ["seeds=1,4", "ways=engine,jax_ref", "w1_steps=60"])
    assert s.seeds == (1, 4) and s.ways == ("engine", "jax_ref") and s.w1_steps == 60
    with pytest.raises(C.ConfigError, match="ways"):
        C.override(bench.PROFILES["tiny"], ["ways=engine,tensorflow"])
    with pytest.raises(C.ConfigError, match="seeds must include 1"):
        C.override(bench.PROFILES["tiny"], ["seeds=4"])  # tiny has one-seed ways
    with pytest.raises(C.ConfigError):
        C.override(bench.PROFILES["tiny"], ["no_such_field=1"])
    assert set(bench.PROFILES) == {"tiny", "quick", "full"}


def test_group_steps_respect_the_budget_and_the_engine_interval():
    s = S.BenchSettings(w1_steps=1000, w2_steps=250, max_gflop_per_call=1500, engine_eval_every=250)
    w1, w2 = S.WORKLOADS["W1"], S.WORKLOADS["W2"]
    assert S.group_steps(s, w1, 1) == (1000, 250)
    # 1500 GFLOP / (256 · 8.2 MFLOP) = 714 steps -> 500, a multiple of 250
    assert S.group_steps(s, w1, 256) == (500, 250)
    # 1500 GFLOP / (1024 · 8.2 MFLOP) = 178 steps: shorter than one interval, so one interval
    assert S.group_steps(s, w1, 1024) == (178, 178)
    assert S.group_steps(s, w2, 32)[0] == 39  # 1500 / (32 · 1.175)
    for profile in bench.PROFILES.values():
        for w in profile.workloads:
            for seeds in profile.seeds:
                steps, every = S.group_steps(profile, S.WORKLOADS[w], seeds)
                assert steps % every == 0 and steps >= 1


def test_planning_skips_what_cannot_run_and_says_why():
    s = S.BenchSettings(memory_limit_gb=1.0, min_steps=20)
    w1, w2 = S.WORKLOADS["W1"], S.WORKLOADS["W2"]
    one = {c["way"]: c for c in S.plan_cells(s, w1, 1, n_train=4000, n_test=1000, have_torch=False)}
    assert set(one) == set(s.ways) and not set(s.ways) & set(S.LEVERS)  # one-seed ways run in the seeds=1 group
    for way in ("torch_eager", "torch_compile", "torch_func"):
        assert one[way]["status"] == "skipped" and "PyTorch" in one[way]["reason"]
    assert all(one[w]["status"] == "ok" for w in ("engine", "engine_chunk", "jax_ref", "flax_nnx"))
    many = {c["way"]: c for c in S.plan_cells(s, w1, 32, n_train=4000, n_test=1000, have_torch=True)}
    assert set(many) == {w for w in s.ways if S.WAYS[w].vmapped}
    assert all(c["status"] == "ok" for c in many.values())
    big = S.plan_cells(s, w2, 32, n_train=2048, n_test=512, have_torch=True)  # ≈ 2.6 GB > 1 GB
    assert all(c["status"] == "skipped" and "memory_limit_gb" in c["reason"] for c in big)
    assert big[0]["engine_estimate_bytes"] > 2**30
    slow = S.plan_cells(S.BenchSettings(max_gflop_per_call=1.0), w2, 1, n_train=2048, n_test=512,
                            have_torch=True)
    assert all(c["status"] == "skipped" and "min_steps" in c["reason"] for c in slow)


# ----------------------------------------------------------------------------- ratios and the table


def _synthetic_results(rates: dict) -> dict:
    """Results holding one cell per (workload, way, seeds) -> seed-steps/s in `rates`."""
    cells = []
    for (workload, way, seeds), rate in rates.items():
        cell = {"workload": workload, "way": way, "seeds": seeds, "steps": 100, "status": "ok", "reason": "",
                "times_s": [seeds * 100 / rate] * 3, "cpu_s": [1.0] * 3, "first_call_s": 5.0,
                "peak_rss_bytes": 2**29, "rss_after_import_bytes": 2**28, "engine_estimate_bytes": 2**20,
                "eval_flop_share": 0.1 if way == "engine" else 0.0,
                "info": {"compilations_after_first_call": 0, "eval_every": 100, "run_chunks": 1} if way == "engine"
                else {"eval_every": 100, "program": way}}  # every way a program of its own
        R.derive(cell, machine_gflops=100.0)
        cells.append(cell)
    results = {"workloads": {n: {"widths": list(w.widths), "batch": w.batch, "lr": w.lr, "data": w.data,
                                 "flops_per_step": S.flops_per_step(w.widths, w.batch)}
                             for n, w in S.WORKLOADS.items()},
               "matmul": {"jax": {"gflops": 100.0, "samples": [100.0]}, "machine_gflops": 100.0, "size": 2048},
               "cells": cells, "provenance": {}, "wall_s": 1.0}
    results["ratios"] = R.ratio_rows(results)
    results["targets"] = R.target_rows(results)
    results["levers"] = R.lever_rows(results)
    return results


def _target(results: dict, name: str) -> dict:
    (row,) = [t for t in results["targets"] if t["target"] == name]
    return row


def test_ratios_and_targets_come_from_the_cells():
    results = _synthetic_results({
        ("W1", "engine", 1): 2000.0, ("W1", "jax_ref", 1): 4000.0, ("W1", "torch_eager", 1): 1000.0,
        ("W1", "engine", 32): 40_000.0, ("W1", "jax_ref", 32): 50_000.0, ("W1", "torch_func", 32): 10_000.0,
        ("W1", "engine", 256): 5_000.0, ("W1", "torch_func", 256): 2_000.0,
        ("W2", "engine", 1): 20.0, ("W2", "engine_chunk", 1): 70.0, ("W2", "jax_ref", 1): 25.0,
    })
    cell = R.find_cell(results, "W2", "engine", 1)
    assert cell["gflops"] == pytest.approx(20 * 1.174798336)
    assert cell["matmul_fraction"] == pytest.approx(20 * 1.174798336 / 100)
    assert cell["examples_per_s"] == pytest.approx(20 * 128)
    rows = {(r["workload"], r["seeds"]): r for r in results["ratios"]}
    assert rows[("W1", 32)]["vs"]["jax_ref"] == pytest.approx(0.8)
    assert rows[("W1", 32)]["vs"]["torch_eager"] == pytest.approx(40.0)  # eager runs 32 seeds in turn at 1000/s
    assert rows[("W1", 32)]["vs"]["torch_compile"] is None  # not measured
    assert [t["target"] for t in results["targets"]] == [t.name for t in R.TARGETS]  # in order, one row each
    expected = {  # name: (goal, value, status, where)
        "W1 @256 seeds: engine ÷ torch.func ensemble": ("≥ 3", 2.5, "not met", "W1 @256 seeds"),
        "W1 @256 seeds: engine GFLOP/s ÷ machine matmul GFLOP/s": ("≥ 0.5", 5000 * 8.2e-3 / 100, "not met", "W1 @256"),
        "W1 @32 seeds: engine ÷ PyTorch eager fused-Adam loop (32 runs in turn)": ("≥ 10", 40.0, "met", "W1 @32"),
        "W2 @largest seeds: engine program GFLOP/s ÷ machine matmul GFLOP/s":
            ("≥ 0.8", 70 * 1.174798336 / 100, "met", "W2 @1 seeds"),
        "W2 @largest seeds: engine ÷ engine program (files, evaluation, checkpoints)":  # 100-step calls
            ("≥ 0.9", 20 / 70, "not judged", "W2 @1 seeds, 100 steps per call; judged on calls of at least 2000"),
        "W2 @largest seeds: engine GFLOP/s ÷ machine matmul GFLOP/s": ("none", 0.2349596672, "reference", "W2 @1"),
        "W2 @largest seeds: plain-JAX GFLOP/s ÷ machine matmul GFLOP/s":
            ("none", 25 * 1.174798336 / 100, "reference", "W2 @1"),
        "W1 @largest seeds: engine ÷ plain-JAX reference (engine overhead)": ("none", 0.8, "reference", "W1 @32"),
        "W2 @largest seeds: engine ÷ plain-JAX reference (engine overhead)": ("none", 0.8, "reference", "W2 @1"),
        "engine: compilations during repeated identical sweeps": ("= 0", 0, "met", "4 engine cells"),
    }
    assert set(expected) == {t.name for t in R.TARGETS}
    for name, (goal, value, status, where) in expected.items():
        row = _target(results, name)
        assert (row["goal"], row["status"]) == (goal, status), name
        assert row["value"] == pytest.approx(value), name
        assert row["where"].startswith(where), name
    assert _target(results, "W1 @256 seeds: engine ÷ torch.func ensemble")["where"] == "W1 @256 seeds, 100 steps per call"
    table = bench.format_table(results)
    for t in R.TARGETS:  # each target with its goal, the measured value and met / not met, on one line
        (line,) = [line for line in table.splitlines() if t.name in line]
        row = _target(results, t.name)
        assert re.search(rf"{re.escape(row['goal'])}\s+{re.escape(format(row['value'], '.3g'))}\s+{row['status']}\b",
                         line), line
    for way in ("engine", "jax_ref", "torch_eager", "torch_func"):
        assert f" {way} " in table
    assert "W1      32" in table  # the ratio row of W1 at 32 seeds
    md = report.format_markdown({**results, "settings": {"repeats": 3}})
    assert "| netalchemy sweep.run | 2,000 | 40,000 | 5,000 |" in md  # rows are ways, columns seed counts
    assert "| PyTorch eager | 1,000 | — | — |" in md  # one-seed ways fill the 1-seed column only
    assert "| target | goal | measured | met? | where |" in md
    assert "| W1 @256 seeds: engine ÷ torch.func ensemble | ≥ 3 | 2.5 | not met | W1 @256 seeds, 100 steps per call |" in md
    assert "| W1 @32 seeds: engine ÷ PyTorch eager fused-Adam loop (32 runs in turn) | ≥ 10 | 40 | met |" in md
    assert "| engine: compilations during repeated identical sweeps | = 0 | 0 | met | 4 engine cells |" in md


def test_a_goal_over_long_runs_is_judged_only_on_calls_that_long():
    """'engine within 10% of its program over a 2 000-step run': shorter calls show the ratio, not a verdict."""
    results = _synthetic_results({("W2", "engine", 4): 54.0, ("W2", "engine_chunk", 4): 56.0})
    name = "W2 @largest seeds: engine ÷ engine program (files, evaluation, checkpoints)"
    assert _target(results, name)["status"] == "not judged"
    for cell in results["cells"]:
        cell["steps"] = 2000
    row = R.target_row(results, next(t for t in R.TARGETS if t.name == name))
    assert (row["status"], row["where"]) == ("met", "W2 @4 seeds, 2000 steps per call")
    assert row["value"] == pytest.approx(54 / 56)


def test_a_goal_decides_met_on_its_side_of_the_bound():
    assert R.verdict((">=", 3.0), 3.0) == "met" and R.verdict((">=", 3.0), 2.999) == "not met"
    assert R.verdict(("<=", 0.1), 0.05) == "met" and R.verdict(("<=", 0.1), 0.2) == "not met"
    assert R.verdict(("==", 0), 0) == "met" and R.verdict(("==", 0), 1) == "not met"
    assert R.verdict((">=", 3.0), None) == "not measured" and R.verdict(None, 1.0) == "reference"
    assert [R.goal_text(g) for g in ((">=", 0.8), ("<=", 2.0), ("==", 0), None)] == ["≥ 0.8", "≤ 2", "= 0", "none"]


def test_missing_targets_are_rows_that_say_not_measured():
    results = _synthetic_results({("W1", "engine", 1): 2000.0})
    results["workloads"].pop("W2")
    results["ratios"], results["targets"] = R.ratio_rows(results), R.target_rows(results)
    assert [t["target"] for t in results["targets"]] == [t.name for t in R.TARGETS]
    missing = [t for t in results["targets"] if t["value"] is None]
    assert len(missing) == len(R.TARGETS) - 1  # only the recompilation count is known
    assert all(t["note"] for t in missing)
    assert {t["status"] for t in missing} == {"not measured", "reference"}
    assert "not measured" in bench.format_table(results)


def test_a_skipped_group_is_one_line_of_the_table():
    results = _synthetic_results({("W1", "engine", 1): 2000.0})
    s = S.BenchSettings(memory_limit_gb=1.0)
    results["cells"] += S.plan_cells(s, S.WORKLOADS["W2"], 32, n_train=2048, n_test=512, have_torch=True)
    table = bench.format_table(results)
    skipped = [line for line in table.splitlines() if "memory_limit_gb" in line]
    assert len(skipped) == 1 and "all 4 ways" in skipped[0]


# ----------------------------------------------------------------------------- end to end


def test_worker_failures_come_back_as_errors_not_hangs(tmp_path):
    broken = driver.Worker(("no_such_module_xyz",), tmp_path, "broken", dict(os.environ))
    with pytest.raises(driver.WorkerError, match="no_such_module_xyz"):
        broken.wait_ready(120)
    worker = driver.Worker((), tmp_path, "plain", dict(os.environ))
    try:
        assert worker.wait_ready(120)["rss_after_import"] > 0
        with pytest.raises(driver.WorkerError, match="KeyError"):
            worker.request(120, cmd="setup", spec={"way": "no_such_way"})
        assert worker.finish(120) > 0  # still serving after the error
    finally:
        worker.kill()


def test_a_worker_imports_neither_jax_nor_torch_nor_matplotlib_before_its_way_does():
    """Each worker's memory is its own way's: the worker module itself is light."""
    code = (f"{driver.BOOT.split('; from')[0]}; import benchmarks.worker; "
            "print(sorted({'jax', 'torch', 'matplotlib', 'flax'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code, str(driver.ROOT)], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_without_torch_its_ways_are_skipped_with_a_message(monkeypatch, tmp_path):
    monkeypatch.setattr(driver, "torch_available", lambda: False)
    lines = []
    settings = C.override(bench.PROFILES["tiny"], ["ways=torch_eager,torch_func"])
    results = bench.run_benchmark(settings, out_dir=tmp_path, log=lines.append)
    assert any("PyTorch is not installed" in line for line in lines)
    assert {c["status"] for c in results["cells"]} == {"skipped"}
    assert (tmp_path / "bench.json").exists() and (tmp_path / "scaling.png").exists()


def test_tiny_profile_end_to_end(tmp_path):
    lines = []
    results = bench.run_benchmark(bench.PROFILES["tiny"], out_dir=tmp_path, log=lines.append)
    have_torch = S.torch_available()
    for cell in results["cells"]:
        torch_way = S.WAYS[cell["way"]].backend == "torch"
        assert cell["status"] == ("skipped" if torch_way and not have_torch else "ok"), cell["reason"]
        if cell["status"] == "ok":
            assert len(cell["times_s"]) == 2 and cell["seed_steps_per_s"] > 0
            assert cell["examples_per_s"] == pytest.approx(cell["seed_steps_per_s"] * 100)
            assert cell["peak_rss_bytes"] >= cell["rss_after_import_bytes"] > 0
            assert cell["first_call_s"] > 0
    assert {c["way"] for c in results["cells"]} == set(bench.PROFILES["tiny"].ways)
    assert results["matmul"]["machine_gflops"] > 0
    engine = R.find_cell(results, "W1", "engine", 1)
    assert engine["info"]["compilations_after_first_call"] == 0  # the second identical sweep reuses the programs
    stored = json.loads((tmp_path / "bench.json").read_text())
    assert [c["way"] for c in stored["cells"]] == [c["way"] for c in results["cells"]]
    assert (tmp_path / "scaling.png").stat().st_size > 10_000
    table = (tmp_path / "table.txt").read_text()
    assert table.strip() == bench.format_table(results).strip()
    assert (tmp_path / "summary.md").read_text().strip() == report.format_markdown(results).strip()
    for t in R.TARGETS:
        assert t.name in table


# ----------------------------------------------------------------------------- the entry in the library


def test_the_entry_reads_through_to_the_benchmarks_folder():
    assert bench.FOLDER == Path(bench.__file__).resolve().parent.parent / "benchmarks"
    assert bench.load() is sys.modules["benchmarks"] and bench.load().__file__ == str(bench.FOLDER / "__init__.py")
    assert bench.PROFILES is S.PROFILES and bench.run_benchmark is driver.run_benchmark
    assert bench.format_table is report.format_table
    with pytest.raises(AttributeError):
        bench.no_such_name  # noqa: B018
    pyproject = tomllib.loads((bench.FOLDER.parent / "pyproject.toml").read_text())
    packaged = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    assert not any(p.startswith("benchmarks") for p in packaged)  # a wheel does not carry it


def test_the_benchmark_uses_only_the_engines_public_api():
    sources = "\n".join(p.read_text() for p in bench.FOLDER.glob("*.py"))
    assert "sweep." in sources
    assert not re.findall(r"\b(?:sweep|train|store|devices)\._\w", sources)


def test_without_the_folder_the_command_says_in_one_line_how_to_get_it(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "FOLDER", tmp_path / "site-packages" / "benchmarks")  # as a wheel installs it
    with pytest.raises(bench.BenchmarksMissing, match="clone the netalchemy repository"):
        bench.PROFILES  # noqa: B018
    monkeypatch.setattr(cli.devices, "use_cpu_cores", lambda *a, **k: None)  # JAX already runs in this process
    out = tmp_path / "runs"
    assert cli.main(["bench", "--profile", "tiny", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("netalchemy: error: the benchmark is not installed") and "\n" not in err
    assert "pip install -e '.[bench]'" in err and not out.exists()


def test_every_way_names_a_builder_that_exists():
    worker = importlib.import_module("benchmarks.worker")
    for name, way in S.WAYS.items():
        if way.backend == "torch" and not S.torch_available():
            continue
        assert callable(worker.builder({"way": name})), name
    assert callable(worker.builder({"way": "matmul", "backend": "jax"}))


def test_the_engine_program_runner_trains_without_recompiling(monkeypatch):
    """engine_chunk (not in the tiny profile) in this process: two calls, one compilation."""
    engine = importlib.import_module("benchmarks.engine")
    from netalchemy import sweep

    monkeypatch.setattr(engine, "_use_devices", lambda spec: None)  # JAX already runs in this process
    rng = np.random.default_rng(0)
    data = {"x_train": rng.standard_normal((300, 40), dtype=np.float32), "y_train": rng.integers(0, 10, 300),
            "x_test": rng.standard_normal((50, 40), dtype=np.float32), "y_test": rng.integers(0, 10, 50)}
    data = {k: v.astype(np.int32) if k.startswith("y") else v for k, v in data.items()}
    runner = engine.program_runner({"workload": "W1", "seeds": 3, "steps": 20, "eval_every": 10,
                                    "engine_cpu_devices": 0}, data)
    counts = [sweep.train_chunk._cache_size()]
    for _ in range(2):
        runner.prepare()
        runner.run()
        counts.append(sweep.train_chunk._cache_size())
    assert counts[1] - counts[0] <= 1 and counts[2] == counts[1]  # one program (or a cached one), then reused
    assert runner.info() == {"eval_every": 10, "seeds_vary": ["init", "data", "dropout"], "grad": "autodiff",
                             "grad_norm": False, "matmul_precision": "None"}


def test_lever_ways_run_the_engine_program_with_their_xla_flags_only_on_request():
    from benchmarks import driver

    assert {"engine_chunk_onednn", "engine_chunk_xnn", "engine_chunk_no_ynn"} <= set(S.LEVERS)
    assert all(S.WAYS[w].builder == S.WAYS[S.WAYS[w].base].builder for w in S.LEVERS)  # the same program, changed
    assert all(bool(S.WAYS[w].xla_flags) != bool(S.WAYS[w].variant) for w in S.LEVERS)  # one kind of change each
    assert "--xla_cpu_use_onednn=true" in S.WAYS["engine_chunk_onednn"].xla_flags
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2", "PATH": "/bin"}
    assert driver.with_flags(env, "") is env
    assert driver.with_flags(env, S.ONEDNN)["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {S.ONEDNN}"
    assert driver.with_flags({}, S.NO_YNN) == {"XLA_FLAGS": S.NO_YNN}
    s = C.override(bench.PROFILES["tiny"], ["ways=engine_chunk,engine_chunk_onednn", "seeds=4"])
    cells = S.plan_cells(s, S.WORKLOADS["W1"], 4, n_train=4000, n_test=1000, have_torch=False)
    assert [c["way"] for c in cells] == ["engine_chunk", "engine_chunk_onednn"]


@pytest.mark.parametrize("way", [w for w in S.LEVERS if S.WAYS[w].xla_flags])
def test_each_levers_flags_are_accepted_by_this_jaxlib(way):
    """XLA aborts on an unknown flag: a lever whose flag this jaxlib lacks fails here, not mid-benchmark."""
    import os
    import subprocess
    import sys

    from benchmarks import driver

    code = "import jax.numpy as j; print(float((j.ones((8, 8)) @ j.ones((8, 8)))[0, 0]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=driver.with_flags(dict(os.environ), S.WAYS[way].xla_flags))
    assert r.returncode == 0 and r.stdout.strip() == "8.0", r.stderr[-500:]


def test_multi_output_fusion_makes_adams_two_moment_updates_one_loop():
    """The lever's flag is not silently ignored: two loops reading one gradient compile to one with it."""
    import os
    import subprocess
    import sys

    from benchmarks import driver

    code = ("import re, jax, jax.numpy as jnp\n"
            "f = jax.jit(lambda g, m, v: (0.9 * m + 0.1 * g, 0.99 * v + 0.01 * g * g))\n"
            "x = jnp.ones((512, 512))\n"
            "text = f.lower(x, x, x).compile().as_text()\n"
            "print(len(re.findall(r'= \\(f32\\[512,512\\]\\{1,0\\}, f32\\[512,512\\]\\{1,0\\}\\) fusion\\(', text)),"
            " text.count(' fusion('))")
    runs = {flags: subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                                  env=driver.with_flags(dict(os.environ), flags))
            for flags in ("", S.MULTI_OUTPUT)}
    assert all(r.returncode == 0 for r in runs.values()), [r.stderr[-300:] for r in runs.values()]
    assert runs[""].stdout.split() == ["0", "2"]  # two loops, each reading g
    assert runs[S.MULTI_OUTPUT].stdout.split() == ["1", "1"]  # one loop writing both moments


def test_a_lever_way_names_its_program_changes():
    assert S.variants({"way": "jax_ref_dots"}) == {"sgd", "fixed_batch"}
    assert S.variants({"way": "engine_chunk"}) == frozenset() and S.variants({}) == frozenset()
    assert all(set(S.variants({"way": w})) <= set(S.VARIANTS) for w in S.LEVERS)


def test_lever_ratios_come_from_the_cells_of_the_same_run():
    results = _synthetic_results({("W2", "jax_ref", 1): 50.0, ("W2", "jax_ref_sgd", 1): 60.0,
                                  ("W2", "engine_chunk", 1): 40.0, ("W2", "engine_chunk_onednn", 1): 30.0,
                                  ("W1", "engine_chunk_shared_data", 32): 900.0})  # its base not measured
    rows = {(r["lever"], r["seeds"]): r for r in results["levers"]}
    assert rows[("jax_ref_sgd", 1)]["ratio"] == pytest.approx(1.2)
    assert rows[("jax_ref_sgd", 1)]["base"] == "jax_ref" and "SGD" in rows[("jax_ref_sgd", 1)]["change"]
    assert rows[("engine_chunk_onednn", 1)]["ratio"] == pytest.approx(0.75)
    assert rows[("engine_chunk_onednn", 1)]["change"] == f"XLA_FLAGS {S.ONEDNN}"
    assert rows[("engine_chunk_shared_data", 32)]["ratio"] is None
    table = bench.format_table(results)
    assert re.search(r"^W2\s+1\s+jax_ref_sgd\s+1\.200\s+jax_ref\s+plain SGD", table.split("Levers")[1], re.M)
    md = report.format_markdown({**results, "settings": {"repeats": 3}})
    assert "| W2 | 1 | engine_chunk_onednn | 0.750 | engine_chunk |" in md
    assert "| W1 | 32 | engine_chunk_shared_data | — | engine_chunk |" in md
    assert "Levers" not in bench.format_table(_synthetic_results({("W2", "jax_ref", 1): 50.0}))
    same = _synthetic_results({("W2", "engine_chunk", 1): 40.0, ("W2", "engine_chunk_eval_once", 1): 42.0})
    for cell in same["cells"]:
        cell["info"] = {"eval_every": 100, "seeds_vary": ["init"], "grad": "autodiff", "matmul_precision": "None"}
    (row,) = R.lever_rows(same)
    assert row["ratio"] == pytest.approx(1.05) and row["change"].startswith("nothing at this call length")


def _w1_data(n_train=300):
    rng = np.random.default_rng(0)
    return {"x_train": rng.standard_normal((n_train, 40), dtype=np.float32),
            "y_train": rng.integers(0, 10, n_train).astype(np.int32),
            "x_test": rng.standard_normal((50, 40), dtype=np.float32), "y_test": rng.integers(0, 10, 50).astype(np.int32)}


def test_engine_program_levers_change_the_config_they_say(monkeypatch):
    from benchmarks import engine

    monkeypatch.setattr(engine, "_use_devices", lambda spec: None)  # JAX already runs in this process
    spec = {"workload": "W1", "seeds": 2, "steps": 20, "eval_every": 10, "engine_cpu_devices": 0}
    base = engine.program_runner({**spec, "way": "engine_chunk"}, _w1_data()).info()
    assert base == {"eval_every": 10, "seeds_vary": ["init", "data", "dropout"], "grad": "autodiff",
                    "grad_norm": False, "matmul_precision": "None"}
    assert engine.program_runner({**spec, "way": "engine_chunk_grad_norm"}, _w1_data()).info()["grad_norm"] is True
    assert engine.program_runner({**spec, "way": "engine_chunk_eval_once"}, _w1_data()).info()["eval_every"] == 20
    assert engine.program_runner({**spec, "way": "engine_chunk_hand_grad"}, _w1_data()).info()["grad"] == "hand"
    # a 10-step call evaluates once either way: eval_once runs its base's program, and says so
    assert engine.program_runner({**spec, "steps": 10, "way": "engine_chunk_eval_once"}, _w1_data()).info() == \
        engine.program_runner({**spec, "steps": 10, "way": "engine_chunk"}, _w1_data()).info()
    shared = engine.program_runner({**spec, "way": "engine_chunk_shared_data"}, _w1_data())
    assert shared.info()["seeds_vary"] == ["init", "dropout"]
    shared.prepare()
    shared.run()


def test_plain_jax_levers_take_the_step_apart():
    """With one fixed minibatch, the data keys no longer matter; with SGD the result differs from Adam's."""
    from benchmarks import peers_jax

    spec = {"workload": "W1", "seeds": 2, "steps": 5}
    out = {w: jax.device_get(peers_jax.jax_ref_runner({**spec, "way": w}, _w1_data()).run())
           for w in ("jax_ref", "jax_ref_sgd", "jax_ref_fixed_batch", "jax_ref_dots")}
    fixed_other_data = jax.device_get(peers_jax.jax_ref_runner({**spec, "way": "jax_ref_fixed_batch"},
                                                               {**_w1_data(), "x_train": np.concatenate(
                                                                   [_w1_data()["x_train"][:128],
                                                                    np.zeros((172, 40), np.float32)])}).run())
    np.testing.assert_array_equal(out["jax_ref_fixed_batch"][1], fixed_other_data[1])  # only x[:batch] is read
    assert not np.array_equal(out["jax_ref"][1], out["jax_ref_fixed_batch"][1])
    assert not np.array_equal(out["jax_ref"][1], out["jax_ref_sgd"][1])
    assert all(np.isfinite(o[1]).all() for o in out.values())
