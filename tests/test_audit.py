"""The audit report: ledger of every claim, verdicts from the experiments, self-contained HTML."""

from netalchemy import audit


def test_tiny_audit_writes_ledger_and_self_contained_html(tmp_path, monkeypatch):
    cleared = []
    monkeypatch.setattr(audit.jax, "clear_caches", lambda: cleared.append(1))
    folder = audit.run_audit("tiny", root=tmp_path, names=("gradcheck", "stages"), log=lambda _: None)
    assert len(cleared) == 2  # compiled programs dropped after each experiment
    report = (folder / "report.md").read_text()
    for claim in audit.CLAIMS:
        assert f"| {claim} |" in report
    ledger = {row["claim"]: row for row in audit.ledger(
        [(n, folder / n / "tiny", audit.store.read_json(folder / n / "tiny" / "verdicts.json"))
         for n in ("gradcheck", "stages")])}
    assert ledger["M2"]["verdict"] == "supported" and ledger["M2"]["experiment"] == "gradcheck"
    assert ledger["A5"]["experiment"] == "stages"
    assert ledger["M7"]["verdict"] == "not measured"
    html = (folder / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 3 and "<table>" in html
    assert "for this command" in report and "jax" in report
    assert report.count("Computed in ") == 2 and " on 1 cpu device, " in report
    compact = (folder / "ledger.md").read_text()
    assert compact.count("\n| ") == len(audit.CLAIMS) and "| M7 | not measured | — | — | — |" in compact
    # A second audit reuses the stored verdicts instead of recomputing them.
    before = (folder / "gradcheck" / "tiny" / "results.json").stat().st_mtime
    audit.run_audit("tiny", root=tmp_path, names=("gradcheck",), log=lambda _: None)
    assert (folder / "gradcheck" / "tiny" / "results.json").stat().st_mtime == before
