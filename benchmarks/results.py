"""From timings to figures: the rates of each cell, the engine's ratios to its peers, the targets.

Every function here is pure over the results dict of `driver.run_benchmark` (or one cell of it).
One-seed ways (flax_nnx, torch_eager, torch_compile) train N seeds as N runs one after
another, so their seed-steps/s at N seeds is their one-seed rate; ratios use it that way.
"""

from __future__ import annotations

import operator
import statistics
from typing import NamedTuple, Optional, Sequence

from .settings import LEVERS, PEERS, VARIANTS, WAYS, WORKLOADS, flops_per_step


def median(values: Sequence[float]) -> Optional[float]:
    return float(statistics.median(values)) if values else None


def derive(cell: dict, machine_gflops: Optional[float]) -> None:
    """Adds the rates of one cell from its median time (in place): seed-steps/s, examples/s,
    GFLOP/s, its fraction of the machine's matmul rate, first-call overhead, CPU utilisation."""
    w = WORKLOADS[cell["workload"]]
    med = median(cell["times_s"]) if cell["status"] == "ok" else None
    cell["median_s"] = med
    if not med:
        cell.update(seed_steps_per_s=None, examples_per_s=None, gflops=None, matmul_fraction=None,
                    first_call_extra_s=None, cpu_utilisation=None)
        return
    rate = cell["seeds"] * cell["steps"] / med
    gflops = rate * flops_per_step(w.widths, w.batch) / 1e9
    cell.update(seed_steps_per_s=rate, examples_per_s=rate * w.batch, gflops=gflops,
                matmul_fraction=gflops / machine_gflops if machine_gflops else None,
                first_call_extra_s=cell["first_call_s"] - med if cell["first_call_s"] is not None else None,
                cpu_utilisation=median(cell["cpu_s"]) / med)


def find_cell(results: dict, workload: str, way: str, seeds: int) -> Optional[dict]:
    for cell in results["cells"]:
        if (cell["workload"], cell["way"], cell["seeds"]) == (workload, way, seeds):
            return cell
    return None


def rate_at(results: dict, workload: str, way: str, seeds: int) -> Optional[float]:
    """Seed-steps/s of `way` training `seeds` seeds; one-seed ways run them one after another."""
    cell = find_cell(results, workload, way, seeds if WAYS[way].vmapped else 1)
    return cell.get("seed_steps_per_s") if cell else None


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def ratio_rows(results: dict) -> list[dict]:
    """Per (workload, seeds): the engine's seed-steps/s ÷ each peer's, and its matmul fraction."""
    rows = []
    for workload in results["workloads"]:
        for seeds in sorted({c["seeds"] for c in results["cells"] if c["workload"] == workload}):
            engine = rate_at(results, workload, "engine", seeds)
            cell = find_cell(results, workload, "engine", seeds)
            rows.append({"workload": workload, "seeds": seeds, "engine_seed_steps_per_s": engine,
                         "engine_matmul_fraction": cell.get("matmul_fraction") if cell else None,
                         "vs": {p: _ratio(engine, rate_at(results, workload, p, seeds)) for p in PEERS}})
    return rows


def lever_rows(results: dict) -> list[dict]:
    """Each measured lever way ÷ its base way (`Way.base`) in seed-steps/s, per (workload, seeds),
    with what the lever changes: above 1 the change is faster; measured in the same interleaved run."""
    rows = []
    for cell in results["cells"]:
        way = WAYS[cell["way"]]
        if cell["way"] not in LEVERS or not cell.get("seed_steps_per_s"):
            continue
        base = rate_at(results, cell["workload"], way.base, cell["seeds"])
        change = "; ".join(VARIANTS[v] for v in way.variant.split(",") if v) or f"XLA_FLAGS {way.xla_flags}"
        base_cell = find_cell(results, cell["workload"], way.base, cell["seeds"])
        if not way.xla_flags and base_cell and cell.get("info") == base_cell.get("info"):  # a null lever here
            change = f"nothing at this call length (its program is its base's: the ratio is noise); {change}"
        rows.append({"workload": cell["workload"], "seeds": cell["seeds"], "lever": cell["way"], "base": way.base,
                     "ratio": _ratio(cell["seed_steps_per_s"], base), "change": change})
    return rows


# ----------------------------------------------------------------------------- targets


class Target(NamedTuple):
    """A named figure of the benchmark and, where an issue set one, its goal.

    `peer` is a way (the figure is way ÷ peer in seed-steps/s), "matmul" (the way's GFLOP/s ÷
    the machine's matmul rate) or "recompile" (compilations during repeated identical sweeps).
    `seeds` None: the largest seed count at which both sides were measured.
    `goal` (op, bound) with op ">=", "<=" or "=="; None for a reference figure with no target.
    """

    name: str
    workload: Optional[str]
    seeds: Optional[int]
    way: str
    peer: str
    goal: Optional[tuple[str, float]]
    min_steps: int = 0  # the goal is judged only on timed calls at least this long


# Goals of issue 13 (items 1 and 2); the others are references without a goal. The issue states
# "engine within 10% of its program" over a 2 000-step run: on shorter calls (the quick profile's),
# where a call's fixed costs weigh more, the ratio is shown but not judged.
TARGETS = (
    Target("W1 @256 seeds: engine ÷ torch.func ensemble", "W1", 256, "engine", "torch_func", (">=", 3.0)),
    Target("W1 @256 seeds: engine GFLOP/s ÷ machine matmul GFLOP/s", "W1", 256, "engine", "matmul", (">=", 0.5)),
    Target("W1 @32 seeds: engine ÷ PyTorch eager fused-Adam loop (32 runs in turn)", "W1", 32, "engine",
           "torch_eager", (">=", 10.0)),
    Target("W2 @largest seeds: engine program GFLOP/s ÷ machine matmul GFLOP/s", "W2", None, "engine_chunk",
           "matmul", (">=", 0.8)),
    Target("W2 @largest seeds: engine ÷ engine program (files, evaluation, checkpoints)", "W2", None, "engine",
           "engine_chunk", (">=", 0.9), min_steps=2000),
    Target("W2 @largest seeds: engine GFLOP/s ÷ machine matmul GFLOP/s", "W2", None, "engine", "matmul", None),
    Target("W2 @largest seeds: plain-JAX GFLOP/s ÷ machine matmul GFLOP/s", "W2", None, "jax_ref", "matmul", None),
    Target("W1 @largest seeds: engine ÷ plain-JAX reference (engine overhead)", "W1", None, "engine", "jax_ref", None),
    Target("W2 @largest seeds: engine ÷ plain-JAX reference (engine overhead)", "W2", None, "engine", "jax_ref", None),
    Target("engine: compilations during repeated identical sweeps", None, None, "engine", "recompile", ("==", 0)),
)
_OPS = {">=": (operator.ge, "≥"), "<=": (operator.le, "≤"), "==": (operator.eq, "=")}


def goal_text(goal: Optional[tuple[str, float]]) -> str:
    """"≥ 3", "= 0", or "none" for a reference figure."""
    return "none" if goal is None else f"{_OPS[goal[0]][1]} {goal[1]:g}"


SHORT_CALLS = "not judged"  # measured on calls shorter than the goal's `min_steps`


def verdict(goal: Optional[tuple[str, float]], value: Optional[float]) -> str:
    """"met", "not met", "not measured", or "reference" (no goal)."""
    if goal is None:
        return "reference"
    if value is None:
        return "not measured"
    return "met" if _OPS[goal[0]][0](value, goal[1]) else "not met"


def _value(results: dict, t: Target, seeds: int) -> Optional[float]:
    if t.peer == "matmul":
        cell = find_cell(results, t.workload, t.way, seeds)
        return cell.get("matmul_fraction") if cell else None
    return _ratio(rate_at(results, t.workload, t.way, seeds), rate_at(results, t.workload, t.peer, seeds))


def target_row(results: dict, t: Target) -> dict:
    """One target's row: its goal, the measured value (None when not measured), met or not, where."""
    value, where, note = None, "", ""
    if t.peer == "recompile":
        counts = [c["info"].get("compilations_after_first_call") for c in results["cells"]
                  if c["way"] == t.way and c["status"] == "ok"]
        counts = [n for n in counts if n is not None]
        value, where = (max(counts) if counts else None), f"{len(counts)} engine cells"
        note = "" if counts else "no engine cell measured"
    elif t.workload not in results["workloads"]:
        note = f"{t.workload} not in this run"
    else:
        seeds = t.seeds
        if seeds is None:
            measured = [c["seeds"] for c in results["cells"] if c["workload"] == t.workload
                        and _value(results, t, c["seeds"])]
            seeds = max(measured, default=None)
        if seeds is not None:
            value = _value(results, t, seeds)
        if value is not None:
            cell = find_cell(results, t.workload, t.way, seeds)
            where = f"{t.workload} @{seeds} seeds, {cell['steps']} steps per call"
            if cell["steps"] < t.min_steps:
                where += (f"; judged on calls of at least {t.min_steps} steps "
                          f"(e.g. w2_steps={t.min_steps} max_gflop_per_call=10000)")
                return {"target": t.name, "goal": goal_text(t.goal), "value": value, "status": SHORT_CALLS,
                        "where": where, "note": ""}
        else:
            note = f"not measured: needs {t.way} and {t.peer} on {t.workload}" + (f" at {seeds} seeds" if seeds else "")
    return {"target": t.name, "goal": goal_text(t.goal), "value": value, "status": verdict(t.goal, value),
            "where": where, "note": note}


def target_rows(results: dict) -> list[dict]:
    """The rows of `TARGETS`, in order, always one each."""
    return [target_row(results, t) for t in TARGETS]
