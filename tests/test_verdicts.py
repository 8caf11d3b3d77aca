"""Tests for netalchemy.verdicts: decisions, flip points, generated text, Holm's correction."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import scipy.stats

from netalchemy import stats, verdicts
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule

ABOVE = Rule("mean churn", 0.01, "above", "1% of examples is more than round-off")
BELOW = Rule("gap change", 0.0, "below", "a shrinking gap is less overfitting")
BAND = Rule("active fraction", (0.35, 0.65), "inside", "'~50%' read generously", unit="fraction")


def ci(estimate, low, high):
    return stats.CI(estimate, low, high)


@pytest.mark.parametrize("rule, interval, verdict, flip", [
    (ABOVE, (0.5, 0.3, 0.62), "supported", 0.3),
    (ABOVE, (0.005, 0.002, 0.008), "contradicted", 0.008),
    (ABOVE, (0.02, 0.008, 0.05), "inconclusive", 0.008),  # the nearer end to 0.01
    (ABOVE, (0.02, 0.0, 0.011), "inconclusive", 0.011),
    (ABOVE, (0.02, 0.01, 0.05), "inconclusive", 0.01),  # a CI ending on the threshold decides nothing
    (BELOW, (-0.2, -0.3, -0.1), "supported", -0.1),
    (BELOW, (0.2, 0.1, 0.3), "contradicted", 0.1),
    (BAND, (0.5, 0.40, 0.62), "supported", 0.62),  # 0.03 from the upper edge, 0.05 from the lower
    (BAND, (0.5, 0.38, 0.55), "supported", 0.38),
    (BAND, (0.8, 0.70, 0.90), "contradicted", 0.70),
    (BAND, (0.2, 0.10, 0.30), "contradicted", 0.30),
    (BAND, (0.4, 0.30, 0.50), "inconclusive", 0.30),
    (BAND, (0.5, 0.20, 0.90), "inconclusive", 0.20),  # wider than the band: 0.15 from 0.35 beats 0.25 from 0.65
])
def test_decide_and_flip_point(rule, interval, verdict, flip):
    c = ci(*interval)
    assert rule.decide(c) == verdict
    assert rule.flip_point(c) == pytest.approx(flip)
    assert rule.flip_text(c) == f"{verdict}; flips at {flip:.3g}"


def test_flip_point_is_where_the_verdict_changes():
    # Moving the threshold just past the flip point changes the verdict; short of it, it does not.
    for rule, interval in [(ABOVE, (0.5, 0.3, 0.62)), (BELOW, (0.2, 0.1, 0.3)), (ABOVE, (0.02, 0.008, 0.05))]:
        c = ci(*interval)
        point, before = rule.flip_point(c), rule.decide(c)
        t = rule.threshold
        nudge = math.copysign(1e-9, point - t)
        assert dataclasses.replace(rule, threshold=point - nudge).decide(c) == before
        assert dataclasses.replace(rule, threshold=point + nudge).decide(c) != before


def test_missing_ci_min_seeds_and_contradiction_condition():
    assert ABOVE.decide(ci(None, None, None)) == "inconclusive"
    assert ABOVE.decide(ci(math.nan, math.nan, math.nan)) == "inconclusive"
    assert ABOVE.flip_point(ci(math.nan, math.nan, math.nan)) is None
    assert ABOVE.flip_text(ci(None, None, None)) == "inconclusive; no finite CI"
    few = dataclasses.replace(ABOVE, min_n=4)
    assert few.decide(ci(0.5, 0.3, 0.6), n=3) == "inconclusive"
    assert few.decide(ci(0.5, 0.3, 0.6), n=4) == "supported"
    assert few.flip_text(ci(0.5, 0.3, 0.6), n=3) == "inconclusive; 3 seeds < 4"
    fit = Rule("train accuracy", 0.95, "above", "~100%", contradict_only_if="training plateaued")
    low = ci(0.8, 0.7, 0.9)
    assert fit.decide(low, settled=False) == "inconclusive"
    assert fit.decide(low, settled=True) == "contradicted"


def test_describe_generates_the_rule_text():
    assert ABOVE.describe() == ("supported iff the 95% CI of mean churn lies above 0.01 (1% of examples is more "
                                "than round-off); contradicted iff it lies below it; else inconclusive")
    text = dataclasses.replace(BAND, min_n=4).describe()
    assert "lies inside [0.35, 0.65] fraction ('~50%' read generously)" in text
    assert "contradicted iff it lies wholly outside it" in text and text.endswith("(also with fewer than 4 seeds)")
    fit = Rule("train accuracy", 0.95, "above", "~100%", contradict_only_if="training plateaued")
    assert "contradicted iff it lies below it and training plateaued;" in fit.describe()


def test_bad_rules_are_one_line_errors():
    with pytest.raises(ValueError, match="holds must be one of"):
        Rule("x", 0.0, "near", "why")
    with pytest.raises(ValueError, match="band"):
        Rule("x", 0.0, "inside", "why")
    with pytest.raises(ValueError, match="band"):
        Rule("x", (0.0, 1.0), "above", "why")
    with pytest.raises(ValueError, match="low < high"):
        Rule("x", (1.0, 0.0), "inside", "why")
    with pytest.raises(ValueError, match="reason"):
        Rule("x", 0.0, "above", "")


def test_verdict_row_carries_rule_text_and_flip_point():
    v = ABOVE.verdict("A1", ci(0.5, 0.3, 0.62), measurement="churn", figure="a.png", unit="fraction")
    assert (v.claim, v.value, v.ci_low, v.ci_high, v.verdict) == ("A1", 0.5, 0.3, 0.62, "supported")
    assert v.rule == ABOVE.describe() and v.flip_point == 0.3 and v.flip_text == "supported; flips at 0.3"
    assert v.figure == "a.png" and v.unit == "fraction"
    # Stored verdicts from before these fields existed still load.
    old = {k: val for k, val in dataclasses.asdict(v).items() if k not in ("flip_point", "flip_text", "seeds_needed")}
    assert Verdict(**json.loads(json.dumps(old))).flip_text == "" and Verdict(**old).seeds_needed is None


def test_one_sided_p_matches_the_ci_at_its_level_and_a_z_test_elsewhere():
    # A symmetric normal CI: the p-value equals the z-test's.
    est, se = 1.0, 0.5
    z = scipy.stats.norm.ppf(0.975)
    c = ci(est, est - z * se, est + z * se)
    for t in (-0.5, 0.2, 1.0, 1.7):
        assert verdicts.one_sided_p(c, t, "greater") == pytest.approx(scipy.stats.norm.sf((est - t) / se))
        assert verdicts.one_sided_p(c, t, "less") == pytest.approx(scipy.stats.norm.cdf((est - t) / se))
    # An asymmetric CI: p = 0.025 exactly at either end.
    skewed = ci(0.9, 0.5, 0.97)
    assert verdicts.one_sided_p(skewed, 0.5, "greater") == pytest.approx(0.025)
    assert verdicts.one_sided_p(skewed, 0.97, "less") == pytest.approx(0.025)
    assert verdicts.one_sided_p(ci(1.0, 1.0, 1.0), 0.5, "greater") == 0.0  # a point interval (exact value)
    assert verdicts.one_sided_p(ci(None, None, None), 0.5, "greater") == 1.0


def _part(name, interval, rule=ABOVE, **kw):
    return Part(name, rule, ci(*interval), **kw)


def test_holm_with_one_part_equals_the_rule():
    for interval in [(0.5, 0.3, 0.62), (0.005, 0.002, 0.008), (0.02, 0.008, 0.05)]:
        assert verdicts.holm([_part("a", interval)]) == [ABOVE.decide(ci(*interval))]


def test_holm_step_down_hand_computed():
    # Normal CIs with se 1 around the threshold 0 at distance d: one-sided p = sf(d).
    rule = Rule("x", 0.0, "above", "zero is no effect")
    z = scipy.stats.norm.ppf(0.975)
    part = lambda name, d: Part(name, rule, ci(d, d - z, d + z))  # noqa: E731
    d_for = lambda p: scipy.stats.norm.isf(p)  # noqa: E731
    # p = 0.001, 0.02, 0.03 against 0.025/3, 0.025/2, 0.025/1: the first passes, the second stops.
    parts = [part("a", d_for(0.001)), part("b", d_for(0.02)), part("c", d_for(0.03))]
    assert verdicts.holm(parts) == ["supported", "inconclusive", "inconclusive"]
    # p = 0.001, 0.01, 0.02: 0.001 < 0.0083, 0.01 < 0.0125, 0.02 < 0.025: all rejected.
    parts = [part("a", d_for(0.001)), part("b", d_for(0.01)), part("c", d_for(0.02))]
    assert verdicts.holm(parts) == ["supported"] * 3
    # Each alone would be supported (p < 0.025), but not both at family-wise 0.025.
    parts = [part("a", d_for(0.02)), part("b", d_for(0.02))]
    assert [ABOVE.decide(p.ci) for p in parts] == ["supported"] * 2
    assert verdicts.holm(parts) == ["inconclusive"] * 2
    # A contradicted direction is tested the same way.
    assert verdicts.holm([part("a", -d_for(0.001)), part("b", d_for(0.001))]) == ["contradicted", "supported"]


def test_holm_blocks_contradictions_that_cannot_contradict():
    parts = [_part("p", (0.002, 0.001, 0.003)), _part("g", (0.2, 0.1, 0.3), BELOW, can_contradict=False)]
    assert verdicts.holm(parts) == ["contradicted", "inconclusive"]
    few = _part("q", (0.5, 0.3, 0.6), dataclasses.replace(ABOVE, min_n=4), n=2)
    assert verdicts.holm([few]) == ["inconclusive"]


def test_combinations():
    assert verdicts.all_hold(["supported", "supported"]) == "supported"
    assert verdicts.all_hold(["supported", "contradicted"]) == "contradicted"
    assert verdicts.all_hold(["supported", "inconclusive"]) == "inconclusive"
    assert verdicts.all_hold([]) == "inconclusive"
    assert verdicts.across(["supported", "supported"]) == "supported"
    assert verdicts.across(["contradicted", "contradicted"]) == "contradicted"
    assert verdicts.across(["supported", "contradicted"]) == "depends"
    assert verdicts.across(["depends", "inconclusive"]) == "depends"
    assert verdicts.across(["supported", "inconclusive"]) == "inconclusive"
    assert verdicts.across([]) == "inconclusive"


def test_judge_builds_the_row():
    parts = [_part("churn", (0.5, 0.3, 0.62)), _part("gap", (-0.2, -0.3, -0.1), BELOW)]
    v, decisions = verdicts.judge("X1", parts, lambda d: verdicts.all_hold(list(d.values())),
                                  how="supported iff both parts are", measurement="m", unit="u")
    assert decisions == {"churn": "supported", "gap": "supported"} and v.verdict == "supported"
    assert (v.value, v.ci_low, v.ci_high) == (0.5, 0.3, 0.62)
    assert v.rule.startswith(f"[churn] {ABOVE.describe()}. [gap] {BELOW.describe()}.")
    assert "Holm at family-wise α = 0.025 (2 parts); supported iff both parts are" in v.rule
    # The gap part's p (normal side width 0.1/1.96 at distance 0.1 → z = 1.96) is the larger.
    assert v.flip_point == -0.1
    assert v.flip_text == "supported; churn supported (flips at 0.3), gap supported (flips at -0.1)"
    # That flip point is the gap's threshold, not the churn's (the ledger value): the row names it.
    assert (v.flip_of, v.flip_unit) == ("gap", "")
    from netalchemy import audit
    assert audit._flip(dataclasses.asdict(v)) == "-0.1 (gap)"
    near_first = verdicts.judge("X2", [_part("churn", (0.02, 0.012, 0.05)), parts[1]],
                                lambda d: verdicts.all_hold(list(d.values())), how="", measurement="m", unit="u")[0]
    assert (near_first.flip_of, near_first.flip_point) == ("", 0.012)  # the value's own part: not named
    assert audit._flip(dataclasses.asdict(near_first)) == "0.012 u"
    with pytest.raises(ValueError, match="distinct"):
        verdicts.judge("X", [parts[0], parts[0]], lambda d: "supported", how="", measurement="")


def test_an_infinite_ci_end_still_decides():
    # A ratio of spreads whose resamples reach x / 0: [0.6, inf] lies above 0.5.
    wide = ci(1.2, 0.6, math.inf)
    rule = Rule("std ratio", 0.5, "above", "most of the spread")
    assert rule.decide(wide) == "supported" and rule.flip_point(wide) == 0.6
    v = rule.verdict("A2", wide, measurement="m")
    assert (v.value, v.ci_low, v.ci_high) == (1.2, 0.6, None)  # JSON has no infinity
    assert verdicts.holm([Part("s", rule, wide)]) == ["supported"]
    assert rule.decide(ci(math.inf, 0.6, math.inf)) == "inconclusive"  # no finite estimate


def test_a_zone_between_holding_and_failing_thresholds():
    # Supported above a margin of 0.2, contradicted only below 0 (hyperparams' A3).
    rule = Rule("lr share − seed share", 0.2, "above", "the lr explains clearly more", fails_at=0.0)
    assert rule.edges == (0.2, 0.0)
    assert rule.decide(ci(0.4, 0.3, 0.5)) == "supported" and rule.flip_point(ci(0.4, 0.3, 0.5)) == 0.3
    assert rule.decide(ci(-0.2, -0.3, -0.1)) == "contradicted" and rule.flip_point(ci(-0.2, -0.3, -0.1)) == -0.1
    assert rule.decide(ci(0.1, 0.08, 0.15)) == "inconclusive"  # below the margin, above the failing line
    # Supported once the margin drops to the low end (0.12 away); contradicted once the failing line
    # rises past the high end (0.15 away): the low end is the flip point.
    assert rule.flip_point(ci(0.1, 0.08, 0.15)) == 0.08
    assert rule.describe().startswith("supported iff the 95% CI of lr share − seed share lies above 0.2 (")
    assert "contradicted iff it lies below 0;" in rule.describe()
    p_hold, p_fail = rule.p_values(ci(-0.2, -0.3, -0.1))
    assert p_fail == pytest.approx(verdicts.one_sided_p(ci(-0.2, -0.3, -0.1), 0.0, "less"))
    assert p_hold == pytest.approx(verdicts.one_sided_p(ci(-0.2, -0.3, -0.1), 0.2, "greater"))
    with pytest.raises(ValueError, match="side where the claim holds"):
        Rule("x", 0.2, "above", "why", fails_at=0.5)
    with pytest.raises(ValueError, match="fails_at"):
        Rule("x", (0.0, 1.0), "inside", "why", fails_at=0.5)
    assert BELOW.describe().startswith("supported iff the 95% CI of gap change lies below 0 (")
    assert "contradicted iff it lies above it;" in BELOW.describe()


def test_ties_fail_for_a_null_outcome_on_the_threshold():
    rule = Rule("BN / no-BN edge ratio", 1.0, "above", "1 is no higher lr", ties_fail=True)
    tied = ci(1.0, 1.0, 1.0)  # every seed: the same edge
    assert rule.decide(tied) == "contradicted" and Rule("r", 1.0, "above", "why").decide(tied) == "inconclusive"
    assert verdicts.holm([Part("m12", rule, tied)]) == ["contradicted"]
    assert rule.decide(ci(1.2, 1.0, 1.5)) == "inconclusive"  # a CI from 1 upwards: not above 1
    assert rule.flip_point(tied) == 1.0 and "contradicted iff it lies at or below it" in rule.describe()


def test_the_cli_table_shows_the_flip_point():
    from netalchemy.experiment import format_verdicts

    table = format_verdicts([ABOVE.verdict("A1", ci(0.5, 0.3, 0.62), measurement="churn"),
                             dataclasses.replace(ABOVE.verdict("A2", ci(None, None, None), measurement="none"))])
    rows = table.splitlines()
    assert "supported (flips at 0.3)" in rows[2] and rows[3].split()[:4] == ["A2", "—", "—", "inconclusive"]


def test_judge_writes_a_shared_rule_once():
    parts = [_part("step 1", (0.5, 0.3, 0.62)), _part("step 2", (0.4, 0.2, 0.6)), _part("gap", (-0.2, -0.3, -0.1), BELOW)]
    v, _ = verdicts.judge("X", parts, lambda d: verdicts.all_hold(list(d.values())), how="all", measurement="m")
    assert v.rule.count(ABOVE.describe()) == 1 and v.rule.startswith(f"[step 1, step 2] {ABOVE.describe()}.")
    one, _ = verdicts.judge("Y", parts[:1], lambda d: d["step 1"], how="as is", measurement="m")
    assert "(1 part); as is" in one.rule
