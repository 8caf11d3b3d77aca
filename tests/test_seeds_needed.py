"""Tests for the seeds that would decide an inconclusive verdict (issue 11 item 6): `Rule.seeds_needed`,
its text in the flip text, `judge`'s largest need over the parts, the ledger field and its rendering."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy.stats import norm

from netalchemy import audit, config as config_lib, experiment, stats, store, verdicts
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule

ABOVE = Rule("x", 0.5, "above", "half")
BELOW = Rule("x", 0.5, "below", "half")
BAND = Rule("x", (0.35, 0.65), "inside", "about a half")
ZONE = Rule("x", 0.2, "above", "a clear margin", fails_at=0.0)  # decides nothing between 0 and 0.2


def ci(estimate, low, high):
    return stats.CI(estimate, low, high)


@pytest.mark.parametrize("rule, interval, n, need", [
    (ABOVE, (0.55, 0.45, 0.70), 16, 64),  # h = 0.10 below, d = 0.05: 16 · 2² = 64
    (BELOW, (0.45, 0.30, 0.55), 16, 64),  # mirrored: h = 0.10 above
    (ABOVE, (0.40, 0.30, 0.52), 9, 13),  # towards a contradiction: h = 0.12 above, d = 0.10: 9 · 1.44 = 12.96
    (ZONE, (-0.05, -0.15, 0.05), 16, 64),  # below fails_at 0: a contradiction, h = 0.10, d = 0.05
    (BAND, (0.50, 0.30, 0.62), 10, 18),  # the low edge: 10 · (0.20 / 0.15)² = 17.8; the high edge is clear
    (BAND, (0.70, 0.60, 0.80), 9, 36),  # outside: wholly above 0.65 needs h = 0.10 < d = 0.05
    (BAND, (0.50, 0.20, 0.90), 4, 29),  # both edges crossed: the high one, 4 · (0.40 / 0.15)² = 28.4
    (ABOVE, (0.55, 0.50, 0.60), 16, 17),  # h = d: the CI ends on the threshold; more than n seeds
])
def test_analytic_needs(rule, interval, n, need):
    assert rule.decide(ci(*interval)) == "inconclusive"
    assert rule.seeds_needed(ci(*interval), n) == need
    assert rule.flip_text(ci(*interval), n=n).endswith(f"; ≈{need} seeds would decide")
    assert rule.verdict("A1", ci(*interval), measurement="m", n=n).seeds_needed == need


def test_none_when_decided_unknown_or_undecidable():
    assert ABOVE.seeds_needed(ci(0.7, 0.6, 0.8), 16) is None  # supported
    assert ABOVE.seeds_needed(ci(0.3, 0.2, 0.4), 16) is None  # contradicted
    assert ABOVE.flip_text(ci(0.7, 0.6, 0.8), n=16) == "supported; flips at 0.6"
    assert ABOVE.seeds_needed(ci(0.55, 0.45, 0.7), None) is None  # n unknown: no figure, no text
    assert ABOVE.flip_text(ci(0.55, 0.45, 0.7)) == "inconclusive; flips at 0.45"
    assert ABOVE.seeds_needed(ci(None, None, None), 16) is None
    on = ci(0.5, 0.4, 0.6)  # d = 0
    assert ABOVE.seeds_needed(on, 16) is None and BAND.seeds_needed(ci(0.35, 0.3, 0.4), 16) is None
    assert ABOVE.flip_text(on, n=16) == ("inconclusive; flips at 0.4; no number of seeds decides an estimate on "
                                         "the threshold")
    between = ci(0.1, -0.05, 0.25)
    assert ZONE.seeds_needed(between, 16) is None
    assert ZONE.flip_text(between, n=16).endswith("no number of seeds decides an estimate between the thresholds")
    assert ABOVE.seeds_needed(ci(0.55, 0.45, math.inf), 16) == 64  # an infinite end on the far side is fine
    assert BELOW.seeds_needed(ci(0.45, 0.35, math.inf), 16) is None  # ... on the threshold's side: no figure


def test_a_blocked_contradiction_and_min_n():
    fit = Rule("train accuracy", 0.95, "above", "~100%", contradict_only_if="training plateaued")
    short = ci(0.8, 0.7, 0.96)  # 0.16 above the estimate, 0.15 from the threshold
    assert fit.seeds_needed(short, 8, settled=True) == math.ceil(8 * (0.16 / 0.15) ** 2)
    assert fit.seeds_needed(short, 8, settled=False) is None  # more seeds cannot contradict it unless it plateaus
    assert fit.flip_text(short, n=8, settled=False) == "inconclusive; flips at 0.96"
    few = dataclasses.replace(ABOVE, min_n=10)
    assert few.seeds_needed(ci(0.7, 0.6, 0.8), 5) == 10  # clear of the threshold, but too few seeds
    assert few.seeds_needed(ci(0.55, 0.45, 0.7), 4) == 16  # 4 · 2² = 16 > min_n


def test_the_need_is_where_a_shrunk_ci_decides():
    # Invariant: half-widths ∝ 1/√n shrunk to the need decide the verdict; one seed fewer does not.
    rng, checked = np.random.default_rng(0), 0
    for rule in (ABOVE, BELOW, BAND, ZONE):
        for _ in range(200):
            est, down, up = rng.uniform(-0.2, 1.0), rng.uniform(0.01, 0.5), rng.uniform(0.01, 0.5)
            n = int(rng.integers(2, 40))
            need = rule.seeds_needed(ci(est, est - down, est + up), n)
            if need is None:
                continue
            shrunk = lambda m: ci(est, est - down * math.sqrt(n / m), est + up * math.sqrt(n / m))  # noqa: E731
            assert rule.decide(shrunk(need)) != "inconclusive"
            if need - 1 > n:
                assert rule.decide(shrunk(need - 1)) == "inconclusive"
            checked += 1
    assert checked > 200


def _judge(parts):
    return verdicts.judge("X1", parts, lambda d: verdicts.all_hold(list(d.values())), how="both", measurement="m")


def test_judge_gives_the_largest_need_at_holms_strictest_level_naming_the_part():
    straddles, clear = ci(0.55, 0.45, 0.7), ci(0.6, 0.52, 0.7)
    v, decisions = _judge([Part("a", ABOVE, straddles, n=16), Part("b", ABOVE, clear, n=16)])
    assert decisions == {"a": "inconclusive", "b": "supported"} and v.verdict == "inconclusive"
    scale = norm.ppf(1 - verdicts.ALPHA / 2) / norm.ppf(0.975)  # two parts: Holm's strictest level α/2
    assert v.seeds_needed == math.ceil(16 * (0.10 / 0.05 * scale) ** 2) == 84
    assert v.flip_text.endswith("; ≈84 seeds would decide (a)")
    # One part: Holm is the rule's own test, so the need is the rule's.
    assert _judge([Part("a", ABOVE, straddles, n=16)])[0].seeds_needed == ABOVE.seeds_needed(straddles, 16) == 64
    # Two inconclusive parts: the larger need, named; a part whose n is unknown is left out.
    wide = ci(0.55, 0.35, 0.7)  # h = 0.2: four times the need of `straddles` at the same n
    v, _ = _judge([Part("a", ABOVE, straddles, n=16), Part("w", ABOVE, wide, n=16), Part("u", ABOVE, wide)])
    assert v.flip_text.endswith(f"; ≈{v.seeds_needed} seeds would decide (w)")
    assert v.seeds_needed == math.ceil(16 * (0.2 / 0.05 * norm.ppf(1 - verdicts.ALPHA / 3) / norm.ppf(0.975)) ** 2)
    assert _judge([Part("u", ABOVE, wide)])[0].seeds_needed is None
    # A part no number of seeds decides is named instead of a figure.
    v, _ = _judge([Part("a", ABOVE, straddles, n=16), Part("on", ABOVE, ci(0.5, 0.4, 0.6), n=16)])
    assert v.seeds_needed is None
    assert v.flip_text.endswith("; no number of seeds decides an estimate on the threshold (on)")
    # A decided claim carries no need.
    assert _judge([Part("b", ABOVE, clear, n=16)])[0].seeds_needed is None


def test_a_stored_verdicts_json_without_the_field_still_reads(tmp_path):
    settings = experiment.resolve_settings("phases", "tiny")
    row = dataclasses.asdict(ABOVE.verdict("M10", ci(0.7, 0.6, 0.8), measurement="m"))
    old = {k: v for k, v in row.items() if k != "seeds_needed"}
    folder = experiment.experiment_dir(tmp_path, "phases", "tiny", settings, False)
    store.write_json(folder / "verdicts.json", {"settings": config_lib.to_dict(settings), "verdicts": [old]})
    _, [v] = experiment.run_experiment("phases", profile="tiny", root=tmp_path, reuse=True)
    assert v.seeds_needed is None and v.verdict == "supported"
    assert Verdict(**json.loads(json.dumps(old))) == v
    assert audit._flip(old) == "0.6"


def test_the_ledger_and_report_show_the_need(tmp_path):
    v = ABOVE.verdict("M10", ci(0.55, 0.45, 0.7), measurement="m", n=16)
    record = {"verdicts": [dataclasses.asdict(v)], "settings": {"seeds": 16}, "seconds": 1.0}
    rows = audit.ledger([("phases", tmp_path, record)])
    row = next(r for r in rows if r["claim"] == "M10")
    assert audit._flip(row) == "0.45; ≈64 seeds would decide"
    assert "| 0.45; ≈64 seeds would decide |" in audit.compact_ledger(rows)
    claims = {"M10": type("Claim", (), {"statement": "s", "experiment": "phases"})()}
    section = audit._section("phases", tmp_path, record, tmp_path, False, claims)
    assert "- Flips at: inconclusive; flips at 0.45; ≈64 seeds would decide" in section


def test_the_command_line_table_shows_the_need():
    straddles = ABOVE.verdict("M10", ci(0.55, 0.45, 0.7), measurement="m", n=16)  # 16 · (0.10 / 0.05)² = 64
    unknown_n = ABOVE.verdict("M11", ci(0.55, 0.45, 0.7), measurement="m")
    decided = ABOVE.verdict("M12", ci(0.7, 0.6, 0.8), measurement="m", n=16)
    judged = _judge([Part("b", ABOVE, ci(0.6, 0.52, 0.7), n=16), Part("a", ABOVE, ci(0.55, 0.45, 0.7), n=16)])[0]
    rows = experiment.format_verdicts([straddles, unknown_n, decided, judged]).splitlines()
    assert "inconclusive (flips at 0.45; ≈64 seeds would decide)" in rows[2]
    assert "inconclusive (flips at 0.45)" in rows[3] and "seeds" not in rows[3]
    assert "supported (flips at 0.6)" in rows[4] and "seeds" not in rows[4]
    assert "inconclusive (flips at 0.45 of a; ≈84 seeds would decide)" in rows[5]  # Holm's α/2: as in the judge test


def test_the_html_ledger_puts_the_need_on_a_line_of_its_own(tmp_path):
    record = {"verdicts": [dataclasses.asdict(v) for v in (
        ABOVE.verdict("M10", ci(0.55, 0.45, 0.7), measurement="m", n=16),
        ABOVE.verdict("M11", ci(0.7, 0.6, 0.8), measurement="m", n=16))], "settings": {"seeds": 16}, "seconds": 1.0}
    page = audit.render_html(audit.compact_ledger(audit.ledger([("phases", tmp_path, record)])), tmp_path)
    assert ('<td data-label="flips at" class="num">0.45<span class="seeds">≈64 seeds would decide</span></td>'
            in page)  # the flip point stays whole, the note goes below it and may wrap
    assert '<td data-label="flips at" class="num">0.6</td>' in page  # a decided verdict: unchanged
    assert "td.num .seeds{display:block;white-space:normal}" in audit.STYLE
    phone = audit.STYLE[audit.STYLE.index("@media (max-width:640px)"):]
    assert "table.ledger td{display:block}" in phone and "white-space:normal" in phone  # cards still wrap


def _straddling(rule: Rule, n: int) -> tuple[stats.CI, int]:
    """A CI of `rule`'s statistic whose low end lies 0.2 (its half-width) below the threshold and whose estimate lies
    0.1 above it: n · (0.2 / 0.1)² = 4n seeds would decide it."""
    t = float(rule.threshold if rule.holds != "inside" else rule.threshold[0])
    return ci(t + 0.1, t - 0.1, t + 0.3), 4 * n


def test_each_experiment_passes_its_seeds():
    """The experiments' verdict functions thread n to their seed-level parts (issue 11 item 6): with n an inconclusive
    verdict names its need (a one-part rule: exactly the rule's), without n it has none."""
    from experiments import batch_size, batchnorm, chance, linearity, phases

    churn, need = _straddling(chance.CHURN, 16)
    assert chance.a1_verdict(churn, n=16).seeds_needed == need == 64
    assert chance.a1_verdict(churn).seeds_needed is None
    ratio = ci(1.2, 0.9, 1.5)  # M12, threshold 1: h = 0.3, d = 0.2 → 8 · 1.5² = 18
    assert batchnorm.m12_verdict(ratio, 1.0, n=8).seeds_needed == 18
    assert batchnorm.m12_verdict(ratio, 1.0).seeds_needed is None
    clear_above, clear_below = ci(2.0, 1.8, 2.2), ci(0.5, 0.4, 0.6)
    cases = [  # (verdict with n, without n, the part that needs the most seeds)
        (lambda n: batch_size.m9_verdict(clear_above, ci(0.01, -0.01, 0.03), fit_tolerance=0.05, n=n), "regularise"),
        (lambda n: batchnorm.a4_verdict(ci(0.9, 0.7, 1.1), ci(0.95, 0.9, 1.0), clear_below, n=(n, n, n)), "loss range"),
        (lambda n: chance.a2_verdict({"init": _straddling(chance.MATTERS, 1)[0], "data": clear_above,
                                      "dropout": clear_above}, n=n and {"init": n, "data": n, "dropout": n}), "init"),
        (lambda n: chance.a7_verdict(_straddling(chance.FAR, 1)[0], clear_above, True, n=n), "one-ulp"),
        (lambda n: linearity.m4_verdict(1e-6, [ci(0.0, -0.03, 0.01)], [clear_above], depths=[2],
                                        seeds=n and {"same@2": n, "relu@2": n}), "same@2"),
        (lambda n: linearity.m5_verdict([ci(0.5, 0.45, 0.55)], [ci(0.4, 0.3, 0.5)],
                                        seeds=n and {"init 0": n, "trained 0": n}), "trained 0"),
        (lambda n: phases.m10_verdict(ci(0.55, 0.4, 0.7), ci(10, 8, 12), n_ratio=16, n=n), "most seeds"),
        (lambda n: phases.m6_verdict(ci(2.3, 2.2, 2.4), ci(0.1, 0.03, 0.12), 10, n=n), "chance"),
    ]
    for verdict, part in cases:
        with_n, without = verdict(16), verdict(None)
        assert with_n.verdict == without.verdict == "inconclusive", part
        assert with_n.seeds_needed > 16 and with_n.flip_text.endswith(f"seeds would decide ({part})"), part
        assert without.seeds_needed is None and "seeds would decide" not in without.flip_text, part


def test_an_estimate_within_rounding_of_its_threshold_gets_no_figure():
    # linearity's tiny M4 once read "≈2488528115028 seeds would decide": an estimate 1e-8 from its edge.
    near = ci(0.50000001, 0.45, 0.55)
    assert ABOVE.seeds_needed(near, 16) is None
    assert "over 100× these 16 seeds would decide: the estimate sits at the threshold" in ABOVE.flip_text(near, n=16)
    just = ci(0.51, 0.41, 0.61)  # 16 · (0.10 / 0.01)² = 1600 = 100 × 16: still a figure
    assert ABOVE.seeds_needed(just, 16) == 1600


def test_a_claim_with_no_parts_is_inconclusive_with_no_figure():
    v, decisions = verdicts.judge("M13", [], lambda d: "inconclusive", how="no variant ran", measurement="m")
    assert v.verdict == "inconclusive" and v.seeds_needed is None and decisions == {}
