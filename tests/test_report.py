"""The audit report as a reader sees it, built from synthetic verdict records (no training).

report.html is parsed with html.parser: every table row has as many cells as its header (a
`|` inside a cell included), every in-page link has its target, figures are inline with
captions in words; report.md is parsed with markdown-it the same way. The figure helpers of
netalchemy.plots never switch matplotlib's backend.
"""

from __future__ import annotations

import html
import re
import subprocess
import sys
from dataclasses import replace
from html.parser import HTMLParser
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from markdown_it import MarkdownIt

from netalchemy import audit, claims, plots, stability

PIPE = "mean |corr| between hidden units, dropout minus none"


class Page(HTMLParser):
    """Tables (rows of cell texts and attributes), ids, in-page links, figures and meta tags."""

    def __init__(self, text: str):
        super().__init__()
        self.tables, self.ids, self.links, self.figures, self.meta = [], set(), [], [], []
        self._stack, self._cell, self._caption, self._scroll = [], None, None, 0
        self.unscrolled_tables = 0
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._stack.append((tag, a))
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.links.append(a["href"][1:])
        if tag == "meta":
            self.meta.append(a)
        if tag == "table":
            self.tables.append({"class": a.get("class", ""), "rows": []})
            self.unscrolled_tables += not any(t == "div" and "table-scroll" in x.get("class", "")
                                              for t, x in self._stack[:-1])
        if tag == "tr":
            self.tables[-1]["rows"].append([])
        if tag in ("td", "th"):
            self._cell = {"tag": tag, "text": "", **a}
        if tag == "figure":
            self.figures.append({"id": a.get("id"), "img": None, "caption": ""})
        if tag == "img" and self.figures and self._inside("figure"):
            self.figures[-1]["img"] = a
        if tag == "figcaption":
            self._caption = ""

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        self._pop(tag)

    def _inside(self, tag):
        return any(t == tag for t, _ in self._stack)

    def _pop(self, tag):
        while self._stack:
            if self._stack.pop()[0] == tag:
                break

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1]["rows"][-1].append(self._cell)
            self._cell = None
        if tag == "figcaption":
            self.figures[-1]["caption"] = self._caption
            self._caption = None
        self._pop(tag)

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._caption is not None:
            self._caption += data


def _claims():
    """The real claims, M11's statement given a `|` so the ledger has a row with one."""
    real = claims.load()
    return {**real, "M11": replace(real["M11"], statement="Dropout lowers " + PIPE)}


def _figure(path: Path, title: str) -> None:
    fig, ax = plots.subplots(figsize=(3, 2))
    ax.plot([0, 1], [1, 0])
    fig.suptitle(title)
    plots.save(fig, path)


def _entries(folder: Path, profile: str):
    """Two experiments' stored records: new verdicts with flip points, an old one without."""
    def verdict(claim, verdict, value, low, high, **extra):
        return {"claim": claim, "measurement": extra.pop("measurement", f"measured {claim}"), "value": value,
                "ci_low": low, "ci_high": high, "verdict": verdict, "rule": f"rule of {claim}: a | b",
                "figure": extra.pop("figure", None), "unit": "nats", **extra}

    records = {
        "regularization": [verdict("M11", "supported", 0.12, 0.05, 0.2, measurement=PIPE, figure="corr.png",
                                   flip_point=0.03, flip_text="supported; flips at 0.03"),
                           verdict("M13", "contradicted", -0.3, -0.5, -0.1)],  # stored before flip points
        "gradcheck": [verdict("M2", "inconclusive", 1e-7, None, None, flip_point=None),
                      verdict("M3", "supported", 2.0, 0.5, None)],  # an infinite upper end, stored as None
    }
    entries = []
    for name, verdicts in records.items():
        out = folder / name / profile
        out.mkdir(parents=True)
        _figure(out / "corr.png", f"{name}: correlation of units | per layer")
        entries.append((name, out, {
            "experiment": name, "profile": profile, "verdicts": verdicts, "seconds": 1.5,
            "settings": {"base": {"train": {"steps": 10}, "model": {"hidden": [16, 8]}, "data": {"data_dir": ""}},
                         "seeds": 2, "note": None},
            "provenance": {"devices": ["cpu:0"], "backend": "cpu", "git_commit": "0123456789ab", "created": "now"}}))
    return entries


@pytest.fixture(scope="module")
def reports(tmp_path_factory):
    """report.md, report.html and ledger.md of a tiny and of a quick profile, from the same records."""
    out = {}
    with pytest.MonkeyPatch.context() as patch:  # no kept audits: the report holds only what these records say
        patch.setattr(stability, "LEDGERS", tmp_path_factory.mktemp("no-ledgers"))
        for profile in ("tiny", "quick"):
            folder = tmp_path_factory.mktemp(profile)
            audit.write_report(folder, profile, _entries(folder, profile), 3.0, claims=_claims())
            out[profile] = {f: (folder / f).read_text() for f in ("report.md", "report.html", "ledger.md")}
    return out


def _ledger(page: Page) -> list[list[dict]]:
    tables = [t for t in page.tables if "ledger" in t["class"]]
    assert len(tables) == 1
    return tables[0]["rows"]


@pytest.mark.parametrize("profile", ["tiny", "quick"])
def test_every_table_row_has_its_headers_cell_count(reports, profile):
    page = Page(reports[profile]["report.html"])
    assert len(page.tables) == 3  # the ledger and two settings tables
    for table in page.tables:
        widths = {len(row) for row in table["rows"]}
        assert widths == {len(table["rows"][0])}, table["rows"]
    rows = _ledger(page)
    assert [c["text"] for c in rows[0]] == ["claim", "statement", "verdict", "value", "95% CI", "flips at"]
    assert [r[0]["text"] for r in rows[1:]] == list(claims.load())  # one row per claim, in order
    m11 = next(r for r in rows if r[0]["text"] == "M11")
    assert m11[1]["text"] == "Dropout lowers " + PIPE  # the | stayed inside its cell


def test_markdown_tables_keep_a_pipe_inside_its_cell(reports):
    tokens = MarkdownIt("commonmark").enable("table").parse(reports["quick"]["report.md"])
    rows, row = [], None
    for tok in tokens:
        if tok.type == "tr_open":
            row = []
        elif tok.type in ("td_open", "th_open"):
            row.append(tok)
        elif tok.type == "tr_close":
            rows.append(len(row))
    assert rows.count(6) == 1 + len(claims.load()) and set(rows) <= {6, 2}
    assert "Dropout lowers mean \\|corr\\|" in reports["quick"]["report.md"]


def test_top_of_the_report_is_ledger_then_contents_linking_each_section(reports):
    text = reports["quick"]["report.html"]
    page = Page(text)
    assert text.index(">Ledger</h2>") < text.index(">Contents</h2>") < text.index('id="regularization"')
    assert {"regularization", "gradcheck", "provenance"} <= set(page.links)
    missing = [link for link in page.links if link not in page.ids]
    assert not missing  # every in-page link has its target
    # the long "measured" text is in the experiment's section, not in the ledger
    top, sections = text[:text.index(">Contents</h2>")], text[text.index('id="regularization"'):]
    assert "measured M13" in sections and "measured M13" not in top
    assert PIPE in sections  # M11's measurement, with its | intact


def test_verdicts_are_colour_coded_and_flip_points_shown(reports):
    rows = _ledger(Page(reports["quick"]["report.html"]))
    by_claim = {r[0]["text"]: r for r in rows[1:]}
    assert by_claim["M11"][2]["class"] == "verdict verdict-supported"
    assert by_claim["M13"][2]["class"] == "verdict verdict-contradicted"
    assert by_claim["M1"][2]["class"] == "verdict verdict-not-measured"
    assert by_claim["M11"][5]["text"] == "0.03 nats"  # flips at
    assert by_claim["M13"][5]["text"] == "—" and by_claim["M2"][5]["text"] == "—"  # old record, None
    assert by_claim["M11"][4]["text"] == "[0.05, 0.2]" and by_claim["M3"][4]["text"] == "—"  # no half interval
    assert ".verdict-supported{" in reports["quick"]["report.html"]
    assert [c["data-label"] for c in by_claim["M11"]] == ["claim", "statement", "verdict", "value", "95% CI",
                                                         "flips at"]


def test_reads_on_a_phone(reports):
    page = Page(reports["quick"]["report.html"])
    assert any(m.get("name") == "viewport" and "width=device-width" in m.get("content", "") for m in page.meta)
    assert page.unscrolled_tables == 0  # every table sits in a sideways-scrolling box
    assert "@media (max-width:640px)" in reports["quick"]["report.html"]


def test_figures_are_inline_with_captions_in_words(reports):
    page = Page(reports["quick"]["report.html"])
    assert len(page.figures) == 2
    for fig in page.figures:
        assert fig["img"]["src"].startswith("data:image/png;base64,")
        assert ".png" not in fig["caption"] and "/" not in fig["caption"]
        assert "correlation of units | per layer" in fig["caption"]  # the figure's own title
        assert fig["img"]["alt"].endswith("correlation of units | per layer")
    # the verdict's figure link points at the inlined figure
    assert "fig-regularization-quick-corr" in page.links and "fig-regularization-quick-corr" in page.ids


def test_settings_are_a_two_column_table(reports):
    page = Page(reports["quick"]["report.html"])
    settings_rows = [[c["text"] for c in r] for t in page.tables if "ledger" not in t["class"] for r in t["rows"]]
    assert ["setting", "value"] in settings_rows
    assert ["base.train.steps", "10"] in settings_rows and ["base.model.hidden", "16, 8"] in settings_rows
    assert ["note", "—"] in settings_rows and ["base.data.data_dir", "(empty)"] in settings_rows
    assert "{'" not in reports["quick"]["report.md"]  # no Python dict anywhere


def test_tiny_profile_is_marked_as_a_smoke_test_everywhere(reports):
    tiny, quick = reports["tiny"], reports["quick"]
    assert "smoke test" in tiny["report.md"].splitlines()[0]
    assert "smoke test" in tiny["ledger.md"].splitlines()[0]
    assert "<title>netalchemy audit, tiny profile, mnist1d (smoke test)</title>" in tiny["report.html"]
    measured = [line for line in tiny["ledger.md"].splitlines() if line.startswith("| M") and "not measured" not in line]
    assert len(measured) == 4 and all("(smoke test)" in line for line in measured)
    rows = _ledger(Page(tiny["report.html"]))
    assert all("(smoke test)" in r[2]["text"] for r in rows[1:] if r[2]["text"] != "not measured")
    assert all("smoke" not in quick[f].lower() for f in quick)


def test_ledger_md_stays_narrow(reports):
    lines = reports["quick"]["ledger.md"].splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert table[0] == "| claim | verdict | value | 95% CI | flips at | experiment |"
    assert len(table) == 2 + len(claims.load()) and max(map(len, table)) < 100
    assert "| M11 | **supported** | 0.12 nats | [0.05, 0.2] | 0.03 nats | regularization |" in table


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="ab_ *|[]()<>&`\\!#-:;1é\n", max_size=40))
def test_md_escape_renders_back_to_the_same_text(text):
    rendered = MarkdownIt("commonmark").renderInline(audit.md_escape(text))
    assert html.unescape(rendered) == " ".join(text.split())


def test_md_table_escapes_cells_and_refuses_ragged_rows():
    lines = audit.md_table(("a", "b"), [("x | y", audit.Markdown("**z**"))])
    assert lines[2] == "| x \\| y | **z** |"
    with pytest.raises(ValueError, match="2 cells"):
        audit.md_table(("a", "b", "c"), [("x", "y")])


def test_figure_caption_comes_from_the_figure(tmp_path):
    fig, axes = plots.subplots(1, 2, figsize=(4, 2))
    axes[0].set_title("loss\nper step")
    axes[1].set_title("accuracy")
    assert plots.caption(fig) == "loss per step; accuracy"
    fig.suptitle("Both")
    assert plots.caption(fig) == "Both"
    fig, ax = plots.subplots(figsize=(3, 2))
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    assert plots.caption(fig) == "loss vs step"
    plots.save(fig, tmp_path / "plain_name.png")
    assert plots.saved_caption(tmp_path / "plain_name.png") == "loss vs step"
    assert audit.figure_caption("gradcheck", tmp_path / "plain_name.png") == "loss vs step"
    fig, ax = plots.subplots(figsize=(3, 2))
    plots.save(fig, tmp_path / "lr_sweep.png")  # no words in the figure: its name, made readable
    assert audit.figure_caption("hyperparams", tmp_path / "lr_sweep.png") == "Lr sweep"


def test_the_library_never_switches_the_matplotlib_backend():
    root = Path(__file__).resolve().parent.parent
    code = "import matplotlib; matplotlib.use('svg'); import netalchemy.plots; print(matplotlib.get_backend())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "svg"
    switching = [str(p.relative_to(root)) for folder in ("netalchemy", "experiments") for p in (root / folder).rglob("*.py")
                 if p.name != "cli.py" and re.search(r"matplotlib\.use\(|switch_backend\(", p.read_text(encoding="utf-8"))]
    assert not switching  # the command line may choose a backend; the library and experiments never do
    fig, _ = plots.subplots()
    assert fig.get_layout_engine() is not None and type(fig.get_layout_engine()).__name__ == "ConstrainedLayoutEngine"
