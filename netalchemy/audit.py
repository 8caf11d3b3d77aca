"""The audit: run every experiment and write one report with a ledger of every claim.

`run_audit(profile)` runs each module of `experiment.EXPERIMENTS` (an experiment whose
verdicts are already stored for the same settings is reused, so an interrupted audit
resumes), then writes into `runs/audit/<profile>/`:

- `report.md`: the ledger (claim, verdict, value, 95% CI, flip point; one row per claim of
  `experiments/claims.toml`), a contents list, then one section per experiment with its
  settings, each verdict's measurement and rule, and its figures with captions;
- `report.html`: the same markdown rendered by markdown-it-py, self-contained (figures inline),
  verdicts colour-coded, tables scrollable sideways so it reads on a phone;
- `ledger.md`: the narrow ledger a README can embed.

Tables are built from data (`md_table`), every cell escaped (`md_escape`), so a `|` in a
measurement never splits a row. The tiny profile is a smoke test of the code path, not
evidence: its report, ledger and every verdict say so.
"""

from __future__ import annotations

import base64
import html
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import jax
from markdown_it import MarkdownIt
from markdown_it.token import Token

from netalchemy import claims as claims_lib
from netalchemy import experiment, plots, stability, store
from netalchemy.md import Markdown, md_escape, md_table, slug

SMOKE_PROFILES = ("tiny",)  # profiles too small for their verdicts to be evidence
SMOKE = "smoke test"
NOT_MEASURED = "not measured"
VERDICT_WORDS = (*experiment.VERDICTS, NOT_MEASURED)
NUMERIC_COLUMNS = ("value", "95% CI", "flips at")


def _fmt(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.4g}"


def _ci(v: Mapping) -> str:
    """"[low, high]", or "—" when an end is missing (no finite runs, or an infinite end: JSON has none)."""
    low, high = v.get("ci_low"), v.get("ci_high")
    return "—" if low is None or high is None else f"[{_fmt(low)}, {_fmt(high)}]"


def _value(v: Mapping) -> str:
    return "—" if v.get("value") is None else f"{_fmt(v['value'])} {v.get('unit') or ''}".strip()


def _flip(v: Mapping) -> str:
    """Where the verdict would change ("—" for verdicts stored before flip points existed), and for an
    inconclusive one the seeds that would roughly decide it ("0.48; ≈45 seeds would decide")."""
    point = v.get("flip_point")
    if point is None:
        return "—"
    unit = v.get("flip_unit") if v.get("flip_unit") is not None else v.get("unit")
    of = f" ({v['flip_of']})" if v.get("flip_of") else ""
    seeds = f"; ≈{v['seeds_needed']} seeds would decide" if v.get("seeds_needed") else ""
    return f"{_fmt(point)} {unit or ''}".strip() + of + seeds


def is_smoke(profile: str) -> bool:
    return profile in SMOKE_PROFILES


def audit_dir(root: Path, profile: str, dataset: str = "mnist1d") -> Path:
    """runs/audit/<profile> on MNIST-1D, runs/audit/<profile>-<dataset> on another dataset."""
    return Path(root) / "audit" / (profile if dataset == "mnist1d" else f"{profile}-{dataset}")


def run_audit(profile: str = "quick", *, root: Path = Path("runs"), names: Sequence[str] = experiment.EXPERIMENTS,
              log=print, dataset: str = "mnist1d") -> Path:
    """Runs the experiments on `dataset` (`experiment.DATASETS`) and writes the report; returns the audit folder."""
    if profile not in experiment.PROFILE_NAMES:
        raise experiment.ExperimentError(f"unknown profile {profile!r}; choose from {', '.join(experiment.PROFILE_NAMES)}")
    experiment.on_dataset(None, dataset)  # an unknown dataset is refused before anything runs
    folder = store.ensure_writable(audit_dir(root, profile, dataset))
    started = time.perf_counter()
    entries, skipped = [], {}
    for name in names:
        if dataset != "mnist1d" and experiment.dataset_free(name):
            skipped[name] = f"not rerun on {dataset}: {experiment.dataset_free(name)}; see the MNIST-1D audit"
            log(f"[audit] {name}: {skipped[name]}")
            continue
        t0 = time.perf_counter()
        log(f"[audit] {name} ({profile}) ...")
        out_dir, _ = experiment.run_experiment(name, profile=profile, root=folder, reuse=True, dataset=dataset)
        record = store.read_json(out_dir / "verdicts.json")
        entries.append((name, out_dir, record))
        log(f"[audit] {name}: {', '.join(v['claim'] + ' ' + v['verdict'] for v in record['verdicts'])} "
            f"({time.perf_counter() - t0:.0f} s)")
        # Drop the experiment's compiled programs: XLA's CPU code lives in memory mappings, and
        # thousands of them (gradcheck compiles one program per shape) once exhausted the
        # kernel's 65 530 mappings per process later in a full audit.
        jax.clear_caches()
    seconds = time.perf_counter() - started
    write_report(folder, profile, entries, seconds, dataset=dataset, skipped=skipped)
    return folder


def ledger(entries, claims: Optional[Mapping[str, claims_lib.Claim]] = None,
           skipped: Optional[Mapping[str, str]] = None) -> list[dict]:
    """One row per claim, in the claims file's order; claims no experiment measured are marked so.

    Args:
      entries: (experiment name, its folder, its verdicts.json record) per experiment run.
      claims: the claims by id; default `claims.load()`.
      skipped: experiment name -> why this audit did not run it (shown as the measurement).
    Returns:
      dicts with a verdict's fields (`flip_point` only where stored) plus `statement`,
      `experiment` (the name, None when not measured) and `folder`.
    """
    claims = claims_lib.load() if claims is None else claims
    found = {}
    for name, out_dir, record in entries:
        for v in record["verdicts"]:
            found[v["claim"]] = {**v, "experiment": name, "folder": Path(out_dir)}
    rows = []
    for claim_id, claim in claims.items():
        missing = {"claim": claim_id, "verdict": NOT_MEASURED, "value": None, "ci_low": None, "ci_high": None,
                   "measurement": (skipped or {}).get(claim.experiment)
                   or f"not run in this audit (the {claim.experiment} experiment measures it)",
                   "rule": "", "figure": None, "unit": "", "experiment": None, "folder": None}
        rows.append(found.get(claim_id, missing) | {"statement": claim.statement})
    return rows


def _verdict_md(verdict: str, smoke: bool) -> Markdown:
    return Markdown(f"**{verdict}**" + (f" ({SMOKE})" if smoke and verdict != NOT_MEASURED else ""))


def compact_ledger(rows: Sequence[Mapping], profile: str = "quick") -> str:
    """The ledger as a narrow markdown table (claim, verdict, value, CI, flips at, experiment).

    Headed by the profile; a smoke-test profile says so in the heading and in every verdict.
    """
    smoke = is_smoke(profile)
    heading = (f"**Audit ledger, {profile} profile ({SMOKE}: too few seeds and steps for the verdicts to be "
               f"evidence)**" if smoke else f"**Audit ledger, {profile} profile**")
    table = md_table(("claim", "verdict", "value", "95% CI", "flips at", "experiment"),
                     [(r["claim"], _verdict_md(r["verdict"], smoke), _value(r), _ci(r), _flip(r),
                       r["experiment"] or "—") for r in rows])
    return "\n".join([heading, "", *table])


def settings_table(settings: Mapping[str, Any]) -> list[str]:
    """An experiment's (nested) settings as a two-column table of dotted keys and values."""
    def flat(d: Mapping, prefix: str = "") -> Iterable[tuple[str, Any]]:
        for key, value in d.items():
            if isinstance(value, Mapping):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", value

    def text(value: Any) -> str:
        if isinstance(value, (list, tuple)):
            return ", ".join(text(v) for v in value) if value else "(none)"
        return "—" if value is None else str(value) or "(empty)"

    return md_table(("setting", "value"), [(k, text(v)) for k, v in flat(settings)])


def figure_caption(name: str, path: Path) -> str:
    """A figure's caption in words: the experiment's FIGURES entry, else the figure's own title
    (stored in the PNG by `plots.save`), else its file name made readable."""
    try:
        given = getattr(experiment.load_module(name), "FIGURES", {}).get(path.name)
    except (experiment.ExperimentError, ImportError):
        given = None
    if given:
        return given
    try:
        stored = plots.saved_caption(path)
    except OSError:
        stored = ""
    return stored or path.stem.replace("_", " ").replace("-", " ").capitalize()


def _section(name: str, out_dir: Path, record: Mapping, folder: Path, smoke: bool,
             claims: Mapping[str, claims_lib.Claim]) -> list[str]:
    """One experiment's part of the report: settings, each verdict in full, its figures."""
    ids = ", ".join(v["claim"] for v in record["verdicts"])
    md = [f"### {name}", "", f"Claims {ids}. {_computed(record)}" + (
        f" Profile {record.get('profile', 'tiny')}: a {SMOKE}, not evidence." if smoke else ""), ""]
    for v in record["verdicts"]:
        statement = claims[v["claim"]].statement if v["claim"] in claims else ""
        md += [f"**{md_escape(v['claim'])}** — {_verdict_md(v['verdict'], smoke)}. {md_escape(statement)}", ""]
        md.append(f"- Measured: {md_escape(v['measurement'])}")
        md.append(f"- Value: {md_escape(_value(v))}, 95% CI {md_escape(_ci(v))}")
        if v.get("flip_point") is not None or v.get("flip_text"):
            md.append(f"- Flips at: {md_escape(v.get('flip_text') or _flip(v))}")
        md.append(f"- Rule: {md_escape(v['rule'])}")
        if v.get("figure"):
            target = (out_dir / v["figure"]).relative_to(folder).as_posix()
            md.append(f"- Figure: [{md_escape(figure_caption(name, out_dir / v['figure']))}]({target})")
        md.append("")
    md += ["Settings:", "", *settings_table(record["settings"]), ""]
    for number, png in enumerate(sorted(out_dir.glob("*.png")), 1):
        caption = md_escape(figure_caption(name, png))
        md += [f"![{caption}]({png.relative_to(folder).as_posix()})", f"*Figure {name}-{number}. {caption}*", ""]
    return md


def write_report(folder: Path, profile: str, entries, seconds: float,
                 claims: Optional[Mapping[str, claims_lib.Claim]] = None, dataset: str = "mnist1d",
                 skipped: Optional[Mapping[str, str]] = None) -> None:
    """Writes report.md, report.html and ledger.md into `folder` (see the module docstring)."""
    claims = claims_lib.load() if claims is None else claims
    smoke = is_smoke(profile)
    rows = ledger(entries, claims, skipped)
    prov = store.provenance()
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["verdict"]] = counts.get(r["verdict"], 0) + 1
    title = f"netalchemy audit, {profile} profile, {dataset}" + (f" ({SMOKE})" if smoke else "")
    md = [f"# {md_escape(title)}", ""]
    if smoke:
        md += [f"**This is a {SMOKE}.** The {profile} profile runs every experiment with a handful of seeds and "
               "steps to check that the code runs end to end; its numbers and verdicts are not evidence for or "
               "against any claim. Run `netalchemy audit --profile quick` (or `full`) for those.", ""]
    md += ["Each claim of `experiments/claims.toml`, measured over many seeds trained at once; every verdict comes "
           "from the rule shown in its experiment's section, applied in code to the numbers. \"Flips at\" is the "
           "threshold value at which the verdict would change. Verdict counts: "
           + md_escape(", ".join(f"{k} {v}" for k, v in counts.items())) + ".", "", "## Ledger", ""]

    def claim_cell(r: Mapping) -> Any:
        return Markdown(f"[{r['claim']}](#{slug(r['experiment'])})") if r["experiment"] else r["claim"]

    md += md_table(("claim", "statement", "verdict", "value", "95% CI", "flips at"),
                   [(claim_cell(r), r["statement"], _verdict_md(r["verdict"], smoke), _value(r), _ci(r), _flip(r))
                    for r in rows])
    if skipped:
        md += ["", "Skipped: " + "; ".join(f"{name}, {md_escape(why)}" for name, why in skipped.items()) + "."]
    across = stability.report_section(Path(folder).parent.parent, list(claims), kept=not smoke)
    md += ["", *across] if across else []
    md += ["", "## Contents", ""]
    md += [f"- [{name}](#{slug(name)}): " + ", ".join(v["claim"] for v in record["verdicts"])
           for name, _, record in entries]
    md += (["- [Stability across audits](#stability-across-audits)"] if across else []) + [
        "- [Provenance](#provenance)", "", "## Rules, measurements and figures", ""]
    for name, out_dir, record in entries:
        md += _section(name, Path(out_dir), record, Path(folder), smoke, claims)
    own = sum(record["seconds"] for _, _, record in entries)
    md += ["## Provenance", "", f"- Time: {seconds:.0f} s ({seconds / 60:.1f} min) for this command; the "
           f"experiments' own times add up to {own:.0f} s ({own / 60:.1f} min) — results stored by an earlier "
           "command with the same settings are reused, and each experiment above says where it was computed",
           f"- Devices: {md_escape(', '.join(prov['devices']))} ({prov['backend']})",
           f"- Python {prov['python']} on {md_escape(prov['platform'])}",
           "- Versions: " + md_escape(", ".join(f"{k} {v}" for k, v in prov["versions"].items())),
           f"- Git commit: {prov['git_commit']}", f"- Written: {prov['created']}", ""]
    text = "\n".join(md)
    store.write_text(folder / "ledger.md", compact_ledger(rows, profile) + "\n")
    store.write_text(folder / "report.md", text)
    store.write_text(folder / "report.html", render_html(text, folder, title=title))


def _computed(record: Mapping) -> str:
    """Where and when an experiment's stored verdicts were computed, and how long they took."""
    prov = record.get("provenance") or {}
    devices = prov.get("devices") or []
    commit = (prov.get("git_commit") or "unknown")[:10]
    return (f"Computed in {record['seconds']:.0f} s at commit {commit} on {len(devices)} "
            f"{prov.get('backend', '?')} device{'s' if len(devices) != 1 else ''}, {prov.get('created', '?')}.")


# ----------------------------------------------------------------------------- HTML

_VERDICT_IN_CELL = re.compile(r"^\*\*(" + "|".join(map(re.escape, VERDICT_WORDS)) + r")\*\*")
_VERDICT_COLOURS = {"supported": ("#e3f4e6", "#185c2b"), "contradicted": ("#fbe3e1", "#8a1c12"),
                    "inconclusive": ("#fdf1d6", "#6b4b00"), "depends": ("#e4ecfa", "#1d3f7a"),
                    NOT_MEASURED: ("#eeeeee", "#555555")}
STYLE = (
    "body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1200px;margin:0 auto;"
    "padding:1em;line-height:1.45;color:#1b1b1b}"
    ".table-scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:1em 0;max-width:100%}"
    "table{border-collapse:collapse;font-size:90%}"
    "td,th{border:1px solid #ccc;padding:4px 6px;vertical-align:top;text-align:left}"
    "th{background:#f3f3f3}table.ledger td:nth-child(2){min-width:14em}"
    "table:not(.ledger) td{overflow-wrap:anywhere}"  # a long setting name or value wraps on a phone
    "table.stability td{overflow-wrap:normal}"  # verdicts stay whole words; the box scrolls sideways instead
    "figure{margin:1.5em 0}figure img{max-width:100%;height:auto;display:block}"
    "figcaption{font-size:90%;color:#444;margin-top:.3em}"
    "code{overflow-wrap:anywhere}p,li{overflow-wrap:break-word}"
    ".verdict,td.num{white-space:nowrap}td.num .seeds{display:block;white-space:normal}"  # the seeds note may wrap
    # A phone: each ledger row becomes a card, one "column: value" line per cell, nothing cut off.
    "@media (max-width:640px){body{padding:.6em}table.ledger thead{display:none}"
    "table.ledger,table.ledger tbody,table.ledger tr,table.ledger td{display:block}"
    "table.ledger tr{border:1px solid #ccc;border-radius:4px;margin:0 0 .6em;padding:.25em .5em}"
    "table.ledger td{border:none;padding:1px 0;min-width:0;white-space:normal}"
    "table.ledger td::before{content:attr(data-label) \": \";font-weight:600;color:#555}}"
    + "".join(f".verdict-{w.replace(' ', '-')}{{background:{bg};color:{fg}}}"
              f"strong.verdict-{w.replace(' ', '-')}{{padding:0 .25em;border-radius:3px}}"
              for w, (bg, fg) in _VERDICT_COLOURS.items()))


def _table_open(tokens, idx, options, env) -> str:
    """A table in a sideways-scrolling box; a ledger (a table with a verdict column) gets class "ledger", the
    cross-table of audits (a stability column) class "stability"."""
    j, names = idx, []
    while tokens[j].type != "tr_close":
        if tokens[j].type == "inline":
            names.append(tokens[j].content)
        j += 1
    kind = ' class="ledger"' if "verdict" in names else ' class="stability"' if "stability" in names else ""
    return f'<div class="table-scroll"><table{kind}>\n'


def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    md.renderer.rules["table_open"] = _table_open
    md.renderer.rules["table_close"] = lambda *_: "</table></div>\n"
    return md


def _verdict_class(word: str) -> str:
    return "verdict-" + word.replace(" ", "-")


def _seeds_apart(inline: Token) -> None:
    """A "flips at" cell's seeds note ("0.48; ≈45 seeds would decide") on a line of its own, free to wrap."""
    for j, child in enumerate(inline.children or []):
        if child.type == "text" and "; ≈" in child.content:
            head, tail = child.content.split("; ≈", 1)
            inline.children[j:j + 1] = [Token("text", "", 0, content=head), Token(
                "html_inline", "", 0, content='<span class="seeds">'), Token("text", "", 0, content="≈" + tail)]
            inline.children.append(Token("html_inline", "", 0, content="</span>"))
            return


def render_html(markdown: str, folder: Path, *, title: str = "netalchemy audit") -> str:
    """The report's markdown as one self-contained HTML page.

    Headings get GitHub's anchors (so the markdown's links work in both), each verdict's
    `**word**` a colour class, each figure paragraph (image + caption line) a `<figure>` with
    the PNG inline, and links to an inlined PNG point at its figure.
    """
    md = _markdown()
    tokens = md.parse(markdown)
    figures: dict[str, str] = {}  # file → anchor
    header: list[str] = []  # the current table's column names
    column = 0
    for i, tok in enumerate(tokens):
        if tok.type == "heading_open":
            tok.attrSet("id", slug(tokens[i + 1].content))
        elif tok.type == "thead_open":
            header = []
        elif tok.type == "th_open":
            header.append(tokens[i + 1].content)
        elif tok.type == "tr_open":
            column = 0
        elif tok.type == "td_open":
            label = header[column] if column < len(header) else ""
            tok.attrSet("data-label", label)  # shown beside the value when a narrow screen stacks the cells
            if label in NUMERIC_COLUMNS:
                tok.attrSet("class", "num")
                _seeds_apart(tokens[i + 1])
            column += 1
        if tok.type in ("td_open", "th_open") and (m := _VERDICT_IN_CELL.match(tokens[i + 1].content)):
            tok.attrSet("class", f"verdict {_verdict_class(m.group(1))}")
        elif tok.type == "paragraph_open" and tokens[i + 1].children and tokens[i + 1].children[0].type == "image":
            _figure(tokens, i, folder, figures)
        if tok.type == "inline":
            for j, child in enumerate(tok.children or []):
                if child.type == "strong_open" and j + 1 < len(tok.children):
                    if tok.children[j + 1].content in VERDICT_WORDS:
                        child.attrSet("class", _verdict_class(tok.children[j + 1].content))
    for tok in tokens:
        for child in tok.children or []:
            if child.type == "link_open" and (child.attrGet("href") or "") in figures:
                child.attrSet("href", "#" + figures[child.attrGet("href")])
    body = md.renderer.render(tokens, md.options, {})
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}</body></html>\n")


def _figure(tokens, i: int, folder: Path, figures: dict[str, str]) -> None:
    """Turns paragraph i (an image, then optionally its caption line) into a <figure> in place."""
    inline = tokens[i + 1]
    image, rest = inline.children[0], inline.children[1:]
    src = image.attrGet("src") or ""
    path = Path(folder) / src
    if path.suffix.lower() == ".png" and path.is_file() and not src.startswith(("/", "..")):
        image.attrSet("src", "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode())
    anchor = slug(f"fig {src.rsplit('.', 1)[0].replace('/', ' ')}")
    figures[src] = anchor
    tokens[i].tag = tokens[i + 2].tag = "figure"
    tokens[i].attrSet("id", anchor)
    if rest and rest[0].type == "softbreak":
        rest = rest[1:]
    if rest:
        inline.children = [image, Token("html_inline", "", 0, content="<figcaption>"), *rest,
                            Token("html_inline", "", 0, content="</figcaption>")]
