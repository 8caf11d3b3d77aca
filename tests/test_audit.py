"""The audit end to end: one tiny audit (run once for the module), its report and ledger.

The audit runs only gradcheck (its tiny profile is one grid row), which keeps the suite quick:
every experiment's figures are checked (tests/figure_checks.py) in its own tiny end-to-end test,
tests/test_exp_*.py; here, those of the audited experiment. The report's HTML is parsed
(html.parser) and every ledger row must have as many cells as its header.
"""

from __future__ import annotations

import pytest

from figure_checks import assert_clean, checking_figures, label_overlaps, legends_over_data
from netalchemy import audit, claims, plots
from test_report import Page  # the report tests' HTML parser (tests/ is on sys.path)

TINY = ("gradcheck",)


def test_the_figure_checks_can_fail(tmp_path):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(6, 2))  # no layout engine: long labels collide
    for ax in axes:
        ax.plot([0, 1], [0, 1000000], label="data")
        ax.set_ylabel("a long y label that needs room")
    axes[0].legend(loc="center")  # right over the diagonal
    assert label_overlaps(fig) and legends_over_data(fig)
    folder = tmp_path / "gradcheck" / "tiny"
    with checking_figures() as drawn:
        plots.save(fig, folder / "bad.png")  # as an experiment saves it
    assert drawn["gradcheck/bad.png"]
    with pytest.raises(AssertionError):
        assert_clean(drawn, folder)
    fig, axes = plots.subplots(1, 4, figsize=(12, 3))
    for ax in axes:
        ax.plot([0, 1], [0, 1], label="data")
        ax.set_ylabel("a long y label that needs room")
    axes[0].legend(loc="upper left")
    assert label_overlaps(fig) == [] and legends_over_data(fig) == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """One tiny audit of TINY; the figures drawn on the way, checked as they are saved."""
    cleared = []
    root = tmp_path_factory.mktemp("audit")
    with checking_figures() as drawn, pytest.MonkeyPatch.context() as mp:
        mp.setattr(audit.jax, "clear_caches", lambda: cleared.append(1))
        folder = audit.run_audit("tiny", root=root, names=TINY, log=lambda _: None)
    return {"root": root, "folder": folder, "figures": drawn, "cleared": len(cleared)}


@pytest.mark.slow
def test_every_figure_is_drawn_clean_and_captioned(tiny):
    assert len(list(tiny["folder"].glob("*/tiny/*.png"))) == len(tiny["figures"])  # all through plots.save
    assert_clean(tiny["figures"], tiny["folder"], pattern="*/tiny/*.png")


@pytest.mark.slow
def test_ledger_and_report(tiny):
    folder = tiny["folder"]
    assert tiny["cleared"] == len(TINY) + 1  # programs dropped after each experiment and gradcheck's one model
    known = claims.load()
    entries = [(n, folder / n / "tiny", audit.store.read_json(folder / n / "tiny" / "verdicts.json")) for n in TINY]
    rows = {row["claim"]: row for row in audit.ledger(entries)}
    assert list(rows) == list(known)
    assert rows["M2"]["verdict"] == "supported" and rows["M2"]["experiment"] == "gradcheck"
    measured = {c for c in known if rows[c]["experiment"]}
    assert measured == {c for c in known if known[c].experiment in TINY}  # every claim of every experiment run
    assert all(rows[c]["experiment"] == known[c].experiment for c in measured)  # by the experiment it names
    report = (folder / "report.md").read_text()
    assert "for this command" in report and "jax" in report
    assert report.count("Computed in ") == len(TINY) and " cpu device" in report
    page = Page((folder / "report.html").read_text())
    ledger = next(t["rows"] for t in page.tables if "ledger" in t["class"])
    assert {len(r) for r in ledger} == {6} and len(ledger) == 1 + len(known)
    for row in ledger[1:]:
        assert row[2]["class"] == f"verdict verdict-{rows[row[0]['text']]['verdict'].replace(' ', '-')}"
        assert ("(smoke test)" in row[2]["text"]) == (row[0]["text"] in measured)
    assert len(page.figures) == len(list(folder.glob("*/tiny/*.png")))
    assert all(f["img"]["src"].startswith("data:image/png;base64,") and f["caption"] for f in page.figures)
    assert not [link for link in page.links if link not in page.ids]
    compact = (folder / "ledger.md").read_text()
    assert "smoke test" in compact.splitlines()[0] and compact.count("\n| ") == 1 + len(known)


@pytest.mark.slow
def test_a_second_audit_reuses_stored_verdicts(tiny):
    folder = tiny["folder"]
    before = (folder / "gradcheck" / "tiny" / "verdicts.json").stat().st_mtime
    audit.run_audit("tiny", root=tiny["root"], names=("gradcheck",), log=lambda _: None)
    assert (folder / "gradcheck" / "tiny" / "verdicts.json").stat().st_mtime == before
