"""The benchmark's outputs: the plain-text table, the README's markdown summary, the scaling figure.

Every table lists each target with its goal, the measured value and met / not met
(`results.TARGETS`), then the wall time of each stored audit (`audit_times`), where the
user feels a speed-up.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from netalchemy import plots, store
from netalchemy.md import md_table

from .audit_times import HOW
from .results import find_cell, rate_at
from .settings import PEERS, WAYS


def _fmt(value: Optional[float], spec: str, missing: str = "—") -> str:
    return missing if value is None else format(value, spec)


def _pct(fraction: Optional[float]) -> Optional[float]:
    return None if fraction is None else 100 * fraction


def _mb(nbytes: Optional[int]) -> str:
    return _fmt(nbytes / 2**20 if nbytes else None, ".0f")


def _header(results: dict) -> list[str]:
    prov, mm = results.get("provenance", {}), results["matmul"]
    lines = [f"netalchemy benchmark · {prov.get('platform', '?')} · {prov.get('cpu_count', '?')} CPUs · "
             f"jax {prov.get('versions', {}).get('jax')} · torch {prov.get('torch') or 'absent'} · "
             f"{_fmt(results.get('wall_s'), '.0f')} s",
             f"float32 matmul {mm['size']}×{mm['size']}: " + ", ".join(
                 f"{b} {_fmt(mm[b]['gflops'], '.1f')} GFLOP/s" for b in ("jax", "torch") if b in mm)
             + f"; machine rate {_fmt(mm['machine_gflops'], '.1f')} GFLOP/s"]
    for name, w in results["workloads"].items():
        lines.append(f"{name}: {'-'.join(map(str, w['widths']))}, batch {w['batch']}, Adam lr {w['lr']:g}, "
                     f"{w['flops_per_step'] / 1e6:,.1f} MFLOP per seed-step (matmuls), data: {w['data']}")
    return lines


def _cell_note(c: dict) -> str:
    if c["way"] == "engine" and c["info"]:
        return (f"eval_every {c['info']['eval_every']} ({100 * c['eval_flop_share']:.0f}% of FLOPs), "
                f"{c['info']['run_chunks']} run chunk(s), {c['info']['compilations_after_first_call']} recompiles")
    if c["way"] == "engine_chunk" and c["info"]:
        return f"eval_every {c['info']['eval_every']} ({100 * c['eval_flop_share']:.0f}% of FLOPs)"
    if c["info"].get("adam"):
        return f"Adam {c['info']['adam']}, {c['info']['threads']} threads"
    return c["reason"]


def _cell_lines(results: dict) -> list[str]:
    header = (f"{'work':4s} {'way':14s} {'seeds':>5s} {'steps':>5s} {'median s':>8s} {'seed-steps/s':>12s} "
              f"{'examples/s':>11s} {'GFLOP/s':>7s} {'%matmul':>7s} {'1st call+':>9s} {'cpu×':>4s} "
              f"{'peak MB':>7s} {'+MB':>6s} {'est MB':>7s}  note")
    lines, shown = [header, "-" * len(header)], set()
    for c in results["cells"]:
        group = [d for d in results["cells"] if (d["workload"], d["seeds"]) == (c["workload"], c["seeds"])]
        if all(d["status"] == "skipped" and d["reason"] == c["reason"] for d in group):
            if (c["workload"], c["seeds"]) not in shown:  # a skipped group is one line
                shown.add((c["workload"], c["seeds"]))
                lines.append(f"{c['workload']:4s} {f'all {len(group)} ways':14s} {c['seeds']:5d} {c['steps']:5d} "
                             f"{'skipped':>8s} {'':>70s} {_mb(c.get('engine_estimate_bytes')):>7s}  {c['reason']}")
            continue
        grown = (c["peak_rss_bytes"] - c["rss_after_import_bytes"]
                 if c.get("peak_rss_bytes") and c.get("rss_after_import_bytes") else None)
        lines.append(
            f"{c['workload']:4s} {c['way']:14s} {c['seeds']:5d} {c['steps']:5d} "
            f"{_fmt(c.get('median_s'), '8.3f', c['status']):>8s} "
            f"{_fmt(c.get('seed_steps_per_s'), ',.0f'):>12s} {_fmt(c.get('examples_per_s'), ',.0f'):>11s} "
            f"{_fmt(c.get('gflops'), '.2f'):>7s} {_fmt(_pct(c.get('matmul_fraction')), '.1f'):>7s} "
            f"{_fmt(c.get('first_call_extra_s'), '.1f'):>9s} {_fmt(c.get('cpu_utilisation'), '.1f'):>4s} "
            f"{_mb(c.get('peak_rss_bytes')):>7s} {_mb(grown):>6s} {_mb(c.get('engine_estimate_bytes')):>7s}  "
            f"{_cell_note(c)}")
    return lines


AUDIT_HEADER = ("audit", "experiments complete", "sum of times (min)", "slowest (min)", "commit(s)", "devices", "notes")


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Plain-text columns padded to their widest cell, a rule under the header; the last column unpadded."""
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header) - 1)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in (header, *rows)]
    return [lines[0], "-" * len(lines[0]), *lines[1:]]


def _counts(counts: dict) -> str:
    return ", ".join(k if len(counts) == 1 else f"{k} ×{n}" for k, n in counts.items()) or "—"


def audit_cells(row: dict) -> tuple[str, ...]:
    """One stored audit (`audit_times.audit_row`) as the cells of `AUDIT_HEADER`."""
    done = f"{len(row['complete'])} of {row['expected']}"
    done += f"; missing {', '.join(row['missing'])}" if row["missing"] else ""
    done += f"; {', '.join(row['not_rerun'])} dataset-free, not rerun" if row["not_rerun"] else ""
    notes = ["mixed commits"] if len(row["commits"]) > 1 else []
    notes += [f"reused from an earlier command: {', '.join(row['reused'])}"] if row["reused"] else []
    kept = row.get("kept") or []
    notes += [f"from the kept ledgers: {', '.join(kept)}"] if kept else []
    if len(kept) < len(row["complete"]):  # some came from a run folder, whose report.md tells the command's time
        notes.append("no report.md (unfinished)" if row["command_s"] is None
                     else f"last command {row['command_s'] / 60:.1f} min")
    notes += [f"{name} unreadable ({message})" for name, message in row["damaged"].items()]
    slowest = f"{row['slowest']} {row['slowest_s'] / 60:.1f}" if row["slowest"] else "—"
    return (row["label"], done, f"{row['total_s'] / 60:.1f}", slowest, _counts(row["commits"]),
            _counts(row["devices"]), "; ".join(notes))


def audit_lines(results: dict, *, markdown: bool) -> list[str]:
    """The "Audit wall time" table (markdown or plain text); [] for results without `audits`."""
    audits = results.get("audits")
    if audits is None:
        return []
    where = audits["folder"] + (f" or kept in {audits['ledgers']}" if audits.get("ledgers") else "")
    title = (f"Audit wall time: each quick and full audit under {where}, from the compute time "
             "each experiment recorded in its verdicts.json")
    if not audits["rows"]:
        return [title, "", f"No quick or full audit is stored under {audits['folder']}: {HOW}."]
    rows = [audit_cells(r) for r in audits["rows"]]
    return [title, "", *(md_table(AUDIT_HEADER, rows) if markdown else _text_table(AUDIT_HEADER, rows))]


LEVER_HEADER = ("workload", "seeds", "lever", "÷ its base", "base", "what it changes")


def lever_lines(results: dict, *, markdown: bool) -> list[str]:
    """The "Levers" table: each lever way's seed-steps/s ÷ its base way's; [] when none was measured."""
    rows = [(r["workload"], str(r["seeds"]), r["lever"], _fmt(r["ratio"], ".3f"), r["base"], r["change"])
            for r in results.get("levers", [])]
    if not rows:
        return []
    title = "Levers: each lever way's seed-steps/s ÷ its base way's, in the same interleaved run (> 1: faster)"
    return [title, "", *(md_table(LEVER_HEADER, rows) if markdown else _text_table(LEVER_HEADER, rows))]


CEILING_HEADER = ("workload", "seeds", "JAX dots", "PyTorch's kernels", "Adam update", "dots + Adam",
                  "dots + ideal update", "engine program", "÷ dots + Adam")


def _ceiling(c: Optional[dict]) -> str:
    return "—" if not c else f"{c['seed_steps_per_s']:,.0f} ({c['matmul_fraction']:.1%})"


def ceiling_lines(results: dict, *, markdown: bool) -> list[str]:
    """The "Step ceilings" table (`step_dots` run by the driver) beside the engine program's measured rate;
    [] when none was profiled."""
    profiles = results.get("step_profiles") or []
    if not profiles:
        return []
    rows = []
    for p in profiles:
        if "error" in p:
            rows.append((p["workload"], str(p["seeds"]), f"failed: {p['error']}", *("—",) * 6))
            continue
        c = p["ceilings"]
        program = rate_at(results, p["workload"], "engine_chunk", p["seeds"]) if p["workload"] in results.get(
            "workloads", {}) else None
        update = f"{p['adam_s'] * 1e3:.1f} ms, {p['stream_s'] / p['adam_s']:.0%} of streaming"
        rows.append((p["workload"], str(p["seeds"]), _ceiling(c["jax"]), _ceiling(c.get("torch")), update,
                     _ceiling(c["jax+adam"]), _ceiling(c["jax+ideal update"]), _fmt(program, ",.0f"),
                     _fmt(program / c["jax+adam"]["seed_steps_per_s"] if program else None, ".2f")))
    title = ("Step ceilings (seed-steps/s, and ÷ the square-matmul rate timed in the same process): a step's dots, "
             "each timed alone as jax.vmap emits them, in JAX and in PyTorch's kernels, bound any step; Adam's "
             "update timed alone, and an ideal one (7 passes over the parameters at the machine's streaming rate), "
             "added to the dots give what a step costs when its parts do not overlap; the engine program's "
             "measured rate ÷ that sum says how close it comes (above 1: XLA overlaps or fuses part of it)")
    return [title, "", *(md_table(CEILING_HEADER, rows) if markdown else _text_table(CEILING_HEADER, rows))]


def format_table(results: dict) -> str:
    """The benchmark as plain text: throughput per cell, ratios, targets (goal, measured, met), notes."""
    lines = _header(results) + [""] + _cell_lines(results)
    lines += ["", "engine seed-steps/s ÷ peer seed-steps/s (one-seed peers train the seeds one after another)"]
    header = f"{'work':4s} {'seeds':>5s} " + " ".join(f"{p:>13s}" for p in PEERS) + f" {'%matmul':>8s}"
    lines += [header, "-" * len(header)]
    for r in results["ratios"]:
        if r["engine_seed_steps_per_s"] is not None:
            lines.append(f"{r['workload']:4s} {r['seeds']:5d} " + " ".join(f"{_fmt(r['vs'][p], '.2f'):>13s}"
                                                                          for p in PEERS)
                         + f" {_fmt(_pct(r['engine_matmul_fraction']), '.1f'):>8s}")
    header = f"  {'target':76s} {'goal':>6s} {'measured':>8s}  {'':12s} where"
    lines += ["", header, "  " + "-" * (len(header) - 2)]
    for t in results["targets"]:
        lines.append(f"  {t['target']:76s} {t['goal']:>6s} {_fmt(t['value'], '.3g'):>8s}  {t['status']:12s} "
                     f"{t['where'] or t['note']}".rstrip())
    levers = lever_lines(results, markdown=False)
    lines += ["", *levers] if levers else []
    ceilings = ceiling_lines(results, markdown=False)
    lines += ["", *ceilings] if ceilings else []
    audits = audit_lines(results, markdown=False)
    lines += ["", *audits] if audits else []
    lines += ["", "median s: one timed call (median over the repeats); 1st call+: first call minus the median "
              "(compilation, warm-up); cpu×: CPU seconds per wall second of the process; peak MB: peak RSS of "
              "the worker process; +MB: its growth after the imports; est MB: the engine's estimate "
              "bytes_per_run × seeds. goal none: a reference figure without a target."]
    return "\n".join(lines)


def format_markdown(results: dict) -> str:
    """The README's summary: seed-steps/s per way and seed count (one table per workload), the
    machine, each target with its goal, measured value and met / not met, and the audits' wall time."""
    prov, mm = results.get("provenance", {}), results["matmul"]
    lines = [f"{prov.get('cpu_count', '?')} CPUs, {prov.get('backend', '?')} backend, jax "
             f"{prov.get('versions', {}).get('jax')}, torch {prov.get('torch') or 'absent'}; the machine's "
             f"float32 {mm['size']}² matmul rate {_fmt(mm['machine_gflops'], '.1f')} GFLOP/s; "
             f"medians of {results['settings']['repeats']} interleaved timed calls; "
             f"{_fmt(results.get('wall_s'), '.0f')} s in all.", ""]
    for name, w in results["workloads"].items():
        seeds = sorted({c["seeds"] for c in results["cells"] if c["workload"] == name and c.get("seed_steps_per_s")})
        if not seeds:
            continue
        lines += [f"| {name} ({'-'.join(map(str, w['widths']))}, batch {w['batch']}), seed-steps/s | "
                  + " | ".join(f"{n} seed{'s' if n > 1 else ''}" for n in seeds) + " |",
                  "|---|" + "---|" * len(seeds)]
        for way in WAYS:
            rates = [rate_at(results, name, way, n) if WAYS[way].vmapped or n == 1 else None for n in seeds]
            if any(r is not None for r in rates):
                lines.append(f"| {WAYS[way].label} | " + " | ".join(_fmt(r, ',.0f') for r in rates) + " |")
        engine = [find_cell(results, name, "engine", n) for n in seeds]
        lines.append("| engine: % of the matmul rate | " + " | ".join(
            _fmt(_pct(c.get("matmul_fraction")) if c else None, ".1f") for c in engine) + " |")
        lines.append("")
    lines += ["| target | goal | measured | met? | where |", "|---|---|---|---|---|"]
    for t in results["targets"]:
        lines.append(f"| {t['target']} | {t['goal']} | {_fmt(t['value'], '.3g')} | {t['status']} | "
                     f"{t['where'] or t['note']} |")
    levers = lever_lines(results, markdown=True)
    lines += ["", *levers] if levers else []
    ceilings = ceiling_lines(results, markdown=True)
    lines += ["", *ceilings] if ceilings else []
    audits = audit_lines(results, markdown=True)
    lines += ["", *audits] if audits else []
    return "\n".join(lines)


def _scaling_panel(ax, results: dict, name: str) -> None:
    """One workload: seed-steps/s against seeds, min–max bars, the matmul-rate bound."""
    measured = [c for c in results["cells"] if c["workload"] == name and c.get("seed_steps_per_s")]
    seeds = sorted({c["seeds"] for c in measured}) or [1]
    span = [min(seeds) / 1.5, max(seeds) * 1.5]
    for i, way in enumerate(WAYS):
        ok = [c for c in measured if c["way"] == way]
        if not ok:
            continue
        xs, ys = [c["seeds"] for c in ok], [c["seed_steps_per_s"] for c in ok]
        lo = [y - c["seeds"] * c["steps"] / max(c["times_s"]) for y, c in zip(ys, ok)]
        hi = [c["seeds"] * c["steps"] / min(c["times_s"]) - y for y, c in zip(ys, ok)]
        if WAYS[way].vmapped:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="o", color=f"C{i}", capsize=3, label=WAYS[way].label)
        else:
            ax.errorbar(xs, ys, yerr=[lo, hi], marker="s", color=f"C{i}", capsize=3, ls="none")
            ax.plot(span, [ys[0]] * 2, ls="--", color=f"C{i}", label=f"{WAYS[way].label} (1 seed; N seeds in turn)")
    machine = results["matmul"].get("machine_gflops")
    if machine and measured:
        bound = machine * 1e9 / results["workloads"][name]["flops_per_step"]
        ax.axhline(bound, color="k", ls=":", lw=1, label=f"matmul-rate bound ({machine:.0f} GFLOP/s)")
    w = results["workloads"][name]
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlim(*span)
    ax.set_xticks(seeds, [str(n) for n in seeds])
    ax.minorticks_off()
    ax.set_xlabel("seeds trained at once")
    ax.set_ylabel("seed-steps per second (median, min–max bars)")
    ax.set_title(f"{name}: {'-'.join(map(str, w['widths']))} MLP, batch {w['batch']}, Adam")
    ax.grid(True, which="major", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2)
    else:
        ax.text(0.5, 0.5, "nothing measured", transform=ax.transAxes, ha="center")


def plot_scaling(results: dict, path: Path) -> Path:
    """Seed-steps/s against seeds trained at once, log-log, one panel per workload."""
    names = list(results["workloads"])
    fig, axes = plots.subplots(1, max(len(names), 1), figsize=(6.5 * max(len(names), 1), 6.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        _scaling_panel(ax, results, name)
    prov = results.get("provenance", {})
    fig.suptitle(f"Training throughput · {prov.get('cpu_count', '?')} CPUs, backend {prov.get('backend', '?')} · "
                 f"median of {results.get('settings', {}).get('repeats', '?')} timed calls per point", fontsize=10)
    return plots.save(fig, path)


def write_results(results: dict, out_dir: Path) -> dict[str, Path]:
    """Writes bench.json, table.txt, summary.md and scaling.png into `out_dir`; returns their paths."""
    out_dir = store.ensure_writable(Path(out_dir))
    paths = {"json": out_dir / "bench.json", "table": out_dir / "table.txt", "markdown": out_dir / "summary.md",
             "plot": out_dir / "scaling.png"}
    store.write_json(paths["json"], results)
    paths["table"].write_text(format_table(results) + "\n")
    paths["markdown"].write_text(format_markdown(results) + "\n")
    plot_scaling(results, paths["plot"])
    return paths
