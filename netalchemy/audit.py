"""The audit: run every experiment and write one report with a ledger of every claim.

`run_audit(profile)` runs each module of `experiment.EXPERIMENTS` (an experiment whose
verdicts are already stored for the same settings is reused, so an interrupted audit
resumes), then writes `runs/audit/<profile>/report.md` and a self-contained `report.html`
(figures inline). The report opens with the ledger — one row per claim id of CLAIMS.md with
the measured value, its 95% CI and the verdict — and ends with versions, devices and time.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Optional, Sequence

import jax

from netalchemy import experiment, store

# The claims of ../shared/CLAIMS.md, in its words (abridged).
CLAIMS = {
    "M1": "Cross-entropy of y_true=[1,0], y_pred=[0.7,0.3] is ≈ 0.357",
    "M2": "For softmax + cross-entropy, ∂L/∂z_out = y_pred − y_true",
    "M3": "Backprop = chain rule; ReLU' is 1 for active units, 0 otherwise",
    "M4": "Without a nonlinearity any depth collapses to one linear map",
    "M5": "ReLU gives sparse activations: only ~50% of neurons active at once",
    "M6": "Random initial weights are pure chaos: the untrained net knows nothing",
    "M7": "Learning rate too small → slow; too large → unstable, diverges",
    "M8": "Momentum smooths oscillations; Adam adapts per parameter; RMSProp normalises",
    "M9": "Mini-batches (32–512) smooth gradient noise, allow parallelism, regularise",
    "M10": "Phases: fast learning (epochs 1–50), fine tuning (50–500), overfitting (500+)",
    "M11": "Dropout prevents co-adaptation and improves generalization",
    "M12": "Batch norm stabilises training and allows higher learning rates",
    "M13": "L1/L2 penalties prevent overfitting; L1 makes weights sparse",
    "M14": "Each layer builds more abstract features than the one before",
    "A1": "Ask the same question twice, get different answers",
    "A2": "Which randomness matters is unknown (cooking, not engineering)",
    "A3": "Hyperparameters are found by trial and error",
    "A4": "Nobody knows why batch norm helps",
    "A5": "Layers are like the alchemical stages; structure is homology",
    "A6": "Success does not imply understanding",
    "A7": "Input and output are related by correlation with a predominance of chance",
}


def _fmt(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.4g}"


def _ci(v: dict) -> str:
    return "—" if v["ci_low"] is None else f"[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]"


def run_audit(profile: str = "quick", *, root: Path = Path("runs"), names: Sequence[str] = experiment.EXPERIMENTS,
              log=print) -> Path:
    """Runs the experiments and writes the report; returns the audit folder."""
    if profile not in experiment.PROFILE_NAMES:
        raise experiment.ExperimentError(f"unknown profile {profile!r}; choose from {', '.join(experiment.PROFILE_NAMES)}")
    folder = store.ensure_writable(Path(root) / "audit" / profile)
    started = time.perf_counter()
    entries = []
    for name in names:
        t0 = time.perf_counter()
        log(f"[audit] {name} ({profile}) ...")
        out_dir, _ = experiment.run_experiment(name, profile=profile, root=folder, reuse=True)
        record = store.read_json(out_dir / "verdicts.json")
        entries.append((name, out_dir, record))
        log(f"[audit] {name}: {', '.join(v['claim'] + ' ' + v['verdict'] for v in record['verdicts'])} "
            f"({time.perf_counter() - t0:.0f} s)")
        # Drop the experiment's compiled programs: XLA's CPU code lives in memory mappings, and
        # thousands of them (gradcheck compiles one program per shape) once exhausted the
        # kernel's 65 530 mappings per process later in a full audit.
        jax.clear_caches()
    seconds = time.perf_counter() - started
    write_report(folder, profile, entries, seconds)
    return folder


def ledger(entries) -> list[dict]:
    """One row per claim id, in CLAIMS order; claims no experiment measured are marked so."""
    found = {}
    for name, out_dir, record in entries:
        for v in record["verdicts"]:
            found[v["claim"]] = {**v, "experiment": name, "folder": out_dir}
    rows = []
    for claim, text in CLAIMS.items():
        rows.append(found.get(claim, {"claim": claim, "verdict": "not measured", "value": None, "ci_low": None,
                                      "ci_high": None, "measurement": "no experiment reported this claim",
                                      "rule": "", "figure": None, "unit": "", "experiment": None, "folder": None})
                    | {"statement": text})
    return rows


def compact_ledger(rows) -> str:
    """The ledger as a short markdown table (claim, verdict, value, CI, experiment) for a README."""
    lines = ["| claim | verdict | value | 95% CI | experiment |", "|---|---|---|---|---|"]
    for r in rows:
        value = f"{_fmt(r['value'])} {r['unit']}".strip()
        lines.append(f"| {r['claim']} | {r['verdict']} | {value} | {_ci(r)} | {r['experiment'] or '—'} |")
    return "\n".join(lines)


def write_report(folder: Path, profile: str, entries, seconds: float) -> None:
    rows = ledger(entries)
    prov = store.provenance()
    counts = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1

    md = [f"# netalchemy audit ({profile} profile)", "",
          "Each claim of CLAIMS.md, measured over many seeds trained at once; every verdict comes from the "
          "rule shown, applied in code to the numbers. Verdict counts: "
          + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", "",
          "| claim | statement | measured | value | 95% CI | verdict | figure |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        fig = f"[figure]({Path(r['folder']).relative_to(folder)}/{r['figure']})" if r["figure"] else "—"
        md.append(f"| {r['claim']} | {r['statement']} | {r['measurement']} | {_fmt(r['value'])} {r['unit']} | "
                  f"{_ci(r)} | **{r['verdict']}** | {fig} |")
    md += ["", "## Rules and figures", ""]
    for name, out_dir, record in entries:
        md += [f"### {name}", "", f"Settings: `{record['settings']}`", "", _computed(record), ""]
        for v in record["verdicts"]:
            md.append(f"- **{v['claim']} — {v['verdict']}.** Rule: {v['rule']}")
        figures = sorted(p.name for p in out_dir.glob("*.png"))
        md += [""] + [f"![{f}]({out_dir.relative_to(folder)}/{f})" for f in figures] + [""]
    own = sum(record["seconds"] for _, _, record in entries)
    md += ["## Provenance", "", f"- Time: {seconds:.0f} s ({seconds / 60:.1f} min) for this command; the "
           f"experiments' own times add up to {own:.0f} s ({own / 60:.1f} min) — results stored by an earlier "
           "command with the same settings are reused, and each experiment above says where it was computed",
           f"- Devices: {', '.join(prov['devices'])} ({prov['backend']})",
           f"- Python {prov['python']} on {prov['platform']}",
           "- Versions: " + ", ".join(f"{k} {v}" for k, v in prov["versions"].items()),
           f"- Git commit: {prov['git_commit']}", f"- Written: {prov['created']}", ""]
    text = "\n".join(md)
    (folder / "ledger.md").write_text(compact_ledger(rows) + "\n")
    tmp = folder / ".report.md.tmp"
    tmp.write_text(text)
    tmp.replace(folder / "report.md")
    tmp = folder / ".report.html.tmp"
    tmp.write_text(_html(text, folder))
    tmp.replace(folder / "report.html")


def _computed(record: dict) -> str:
    """Where and when an experiment's stored verdicts were computed, and how long they took."""
    prov = record.get("provenance") or {}
    devices = prov.get("devices") or []
    commit = (prov.get("git_commit") or "unknown")[:10]
    return (f"Computed in {record['seconds']:.0f} s at commit {commit} on {len(devices)} "
            f"{prov.get('backend', '?')} device{'s' if len(devices) != 1 else ''}, {prov.get('created', '?')}.")


def _inline_image(folder: Path, target: str) -> str:
    data = base64.b64encode((folder / target).read_bytes()).decode()
    return f'<img alt="{html.escape(target)}" src="data:image/png;base64,{data}" style="max-width:100%">'


def _html(markdown: str, folder: Path) -> str:
    """A small, self-contained rendering of the report's markdown (tables, headings, images)."""
    import re

    def inline(s: str) -> str:
        s = html.escape(s)
        s = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", s)
        s = re.sub(r"`(.+?)`", r"<code>\1</code>", s)
        s = re.sub(r"\[figure\]\((.+?)\)", r'<a href="#\1">figure</a>', s)
        return s

    out, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if set(line) <= set("|-"):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                out.append("<table>")
                in_table = True
            out.append("<tr>" + "".join(f"<{tag}>{inline(c)}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        if line.startswith("!["):
            target = line[line.index("(") + 1:-1]
            out.append(f'<figure id="{html.escape(target)}">{_inline_image(folder, target)}'
                       f"<figcaption>{html.escape(target)}</figcaption></figure>")
        elif line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{inline(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            out.append(f"<li>{inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;line-height:1.4}"
             "table{border-collapse:collapse;font-size:90%}td,th{border:1px solid #ccc;padding:4px 6px;"
             "vertical-align:top}th{background:#f3f3f3}figure{margin:1em 0}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>netalchemy audit</title>"
            f"<style>{style}</style></head><body>{''.join(out)}</body></html>\n")
