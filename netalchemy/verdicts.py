"""Verdict rules as objects: a statistic, its threshold(s), the side on which a claim holds, and why.

A :class:`Rule` decides a verdict from a confidence interval, writes its own text for the report
(:meth:`Rule.describe`, so no rule is typed twice), and reports its **flip point**: the threshold value
at which its verdict would change; an inconclusive one, roughly how many seeds would decide it
(:meth:`Rule.seeds_needed`). A claim with several parts is judged by :func:`judge`: Holm's step-down
correction (Holm 1979) over the parts' one-sided tests at a family-wise error rate :data:`ALPHA`, then
a stated logical combination (:func:`all_hold`, :func:`across`) of the corrected part decisions.

Conventions
-----------
- A CI is anything with ``estimate``, ``low`` and ``high`` (``stats.CI``); ``None`` or NaN in any of
  them means "no finite runs" and decides nothing ("inconclusive"). An end may be infinite; the
  ledger row then shows no interval (JSON has no infinity).
- One-sided p-values come from the CI itself (:func:`one_sided_p`): a normal approximation anchored
  on each side of the estimate at the CI's own level, so a single part's test at ``ALPHA`` says
  exactly what its 95% CI says, whatever method made the interval (BCa bootstrap, Wilson, t).
- Comparisons are strict: a CI that ends exactly on a threshold is inconclusive, unless the
  rule says ``ties_fail`` (then ending on the failing threshold fails).

Reference: Holm (1979), *A simple sequentially rejective multiple test procedure*, Scand. J. Statist. 6.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Optional, Sequence, Union

import numpy as np
from scipy.stats import norm

from netalchemy.experiment import Verdict
from netalchemy.stats import finite_or_none

__all__ = ["ALPHA", "Part", "Rule", "across", "all_hold", "holm", "judge", "one_sided_p"]

ALPHA = 0.025  # one-sided family-wise error rate: for one part, "the 95% two-sided CI lies beyond"
SEEDS_CAP = 100  # a need over 100× the seeds run is no plan: the estimate sits at the threshold
SIDES = ("above", "below", "inside")
Threshold = Union[float, tuple[float, float]]


def _interval(ci: Any) -> Optional[tuple[float, float, float]]:
    """(estimate, low, high) as floats, or None when any is missing (None or NaN) or the estimate
    is infinite. An infinite end is kept: e.g. a ratio of spreads whose resamples reach x / 0."""
    values = [getattr(ci, k, None) for k in ("estimate", "low", "high")]
    if any(v is None or math.isnan(float(v)) for v in values) or finite_or_none(values[0]) is None:
        return None
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def one_sided_p(ci: Any, threshold: float, alternative: str, *, confidence: float = 0.95) -> float:
    """p-value of the one-sided test H1: θ > threshold (``alternative="greater"``) or θ < threshold
    (``"less"``), read off a two-sided CI of level ``confidence``.

    The standard error on each side of the estimate is the half-width on that side over z = Φ⁻¹(1 −
    (1 − confidence)/2), so p < (1 − confidence)/2 exactly when the CI excludes the threshold on that
    side; away from that level it is a normal approximation. A missing CI gives 1.0.
    """
    if alternative not in ("greater", "less"):
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    values = _interval(ci)
    if values is None:
        return 1.0
    est, low, high = values
    z = norm.ppf(0.5 + confidence / 2.0)
    distance = est - threshold if alternative == "greater" else threshold - est
    # The side of the CI that lies towards the threshold carries the uncertainty that matters.
    toward_low = (alternative == "greater") == (distance >= 0)
    se = (est - low if toward_low else high - est) / z
    if se <= 0:
        return 0.0 if distance > 0 else 1.0
    return float(norm.sf(distance / se))


@dataclass(frozen=True)
class Rule:
    """Where a CI of one statistic must lie for a claim to hold.

    Attributes:
      statistic: the statistic in words ("mean pairwise churn between seeds").
      threshold: one number for ``holds`` "above"/"below"; ``(low, high)`` for "inside".
      holds: the side on which the claim holds: "above", "below" or "inside" (the band).
      fails_at: for "above"/"below", where a contradiction starts if not at ``threshold`` (e.g.
        supported above a margin of 0.2, contradicted only below 0: a zone between decides nothing).
      ties_fail: a CI that ends exactly on the failing threshold fails (for a statistic whose null
        outcome is the threshold itself, e.g. a ratio of exactly 1 when every seed ties).
      reason: why this threshold (printed beside it in the rule text).
      unit: the statistic's unit, if any ("epochs"). confidence: the CI level the rule reads.
      min_n: fewer finite seeds than this → inconclusive (a CI over 1–3 seeds means little).
      contradict_only_if: a condition a contradiction also needs, in words (e.g. "training
        plateaued"); the caller passes whether it holds as ``settled``.

    A CI wholly on the claim's side → "supported"; wholly on the other side (for a band:
    wholly outside it) → "contradicted"; otherwise "inconclusive".
    """

    statistic: str
    threshold: Threshold
    holds: str
    reason: str
    unit: str = ""
    min_n: int = 0
    contradict_only_if: str = ""
    confidence: float = 0.95
    fails_at: Optional[float] = None
    ties_fail: bool = False

    def __post_init__(self) -> None:
        if self.holds not in SIDES:
            raise ValueError(f"holds must be one of {SIDES}, got {self.holds!r}")
        band = isinstance(self.threshold, tuple)
        if band != (self.holds == "inside"):
            raise ValueError("a band (low, high) threshold goes with holds='inside', a number with above/below")
        if band and not self.threshold[0] < self.threshold[1]:
            raise ValueError(f"band must have low < high, got {self.threshold}")
        if not self.reason:
            raise ValueError("a rule needs the reason for its threshold")
        if self.fails_at is not None:
            if band:
                raise ValueError("fails_at goes with holds='above' or 'below', not with a band")
            if (self.fails_at - self.threshold) * (1 if self.holds == "above" else -1) > 0:
                raise ValueError(f"fails_at {self.fails_at} lies on the side where the claim holds")

    @property
    def _fail(self) -> float:
        """Where a contradiction starts (above/below rules); with ``ties_fail``, the next float
        beyond it, so that ending exactly on it fails."""
        f = float(self.threshold if self.fails_at is None else self.fails_at)  # type: ignore[arg-type]
        if self.ties_fail:
            f = float(np.nextafter(f, np.inf if self.holds == "above" else -np.inf))
        return f

    @property
    def edges(self) -> tuple[float, ...]:
        """The threshold value(s), with ``fails_at`` when it is set."""
        if isinstance(self.threshold, tuple):
            return tuple(self.threshold)
        return (float(self.threshold),) if self.fails_at is None else (float(self.threshold), self._fail)

    # ----------------------------------------------------------------------- deciding

    def decide(self, ci: Any, *, n: Optional[int] = None, settled: bool = True) -> str:
        """'supported', 'contradicted' or 'inconclusive' from a CI (class docstring); ``n``: the finite
        seeds behind it (checked against ``min_n``); ``settled``: whether ``contradict_only_if`` holds."""
        values = _interval(ci)
        if values is None or (n is not None and n < self.min_n):
            return "inconclusive"
        _, low, high = values
        if self.holds == "inside":
            a, b = self.threshold  # type: ignore[misc]
            verdict = ("supported" if a < low and high < b
                       else "contradicted" if high < a or low > b else "inconclusive")
        else:
            t, f = float(self.threshold), self._fail  # type: ignore[arg-type]
            holds, fails = (low > t, high < f) if self.holds == "above" else (high < t, low > f)
            verdict = "supported" if holds else "contradicted" if fails else "inconclusive"
        if verdict == "contradicted" and self.contradict_only_if and not settled:
            return "inconclusive"
        return verdict

    def p_values(self, ci: Any) -> tuple[float, float]:
        """(p for "the claim holds", p for "it fails"): one-sided p-values (:func:`one_sided_p`) of the
        two tests the rule runs at level (1 − confidence)/2. For a band [a, b]: holding needs θ > a
        and θ < b (two one-sided tests: the larger p); failing needs θ < a or θ > b (the smaller p)."""
        p = lambda t, alt: one_sided_p(ci, t, alt, confidence=self.confidence)  # noqa: E731
        if self.holds == "inside":
            a, b = self.threshold  # type: ignore[misc]
            return max(p(a, "greater"), p(b, "less")), min(p(a, "less"), p(b, "greater"))
        t, f = float(self.threshold), self._fail  # type: ignore[arg-type]
        if self.holds == "above":
            return p(t, "greater"), p(f, "less")
        return p(t, "less"), p(f, "greater")

    def flip_point(self, ci: Any) -> Optional[float]:
        """The threshold value at which the verdict would change: the CI end nearest to a threshold edge
        (for "above t" supported: the CI's low end; contradicted: its high end; inconclusive: the
        nearer end; for a band, the end nearest to either edge). None when the CI is missing."""
        values = _interval(ci)
        if values is None:
            return None
        _, low, high = values
        if self.holds == "inside":
            pairs = [(end, edge) for end in (low, high) for edge in self.edges]
        else:  # the end that crosses the holding threshold, and the one that crosses the failing one
            near, far = (low, high) if self.holds == "above" else (high, low)
            pairs = [(near, float(self.threshold)), (far, self._fail)]  # type: ignore[arg-type]
        return min(pairs, key=lambda pair: abs(pair[0] - pair[1]))[0]

    def flip_text(self, ci: Any, *, n: Optional[int] = None, settled: bool = True) -> str:
        """'supported; flips at 0.62' — the verdict and its flip point, or why there is none."""
        verdict = self.decide(ci, n=n, settled=settled)
        point = self.flip_point(ci)
        if point is None:
            return f"{verdict}; no finite CI"
        if n is not None and n < self.min_n:
            return f"{verdict}; {n} seeds < {self.min_n}"
        can_fail = settled or not self.contradict_only_if
        note = self._seeds(ci, n, can_fail=can_fail)[1] if verdict == "inconclusive" else ""
        return f"{verdict}; flips at {point:.3g}" + (f"; {note}" if note else "")

    def seeds_needed(self, ci: Any, n: Optional[int], *, settled: bool = True) -> Optional[int]:
        """Roughly how many seeds would decide an inconclusive verdict whose CI straddles a threshold.

        For the threshold on the estimate's side (a band: each edge the CI crosses), with ``n`` seeds
        behind the CI, h its half-width on that side, d = |estimate − threshold| and the standard error
        ∝ 1/√n: ceil(n · (h / d)²), at least n + 1 and ``min_n``. A rough planning figure, not a promise
        (the estimate itself moves). None when decided, when ``n`` is unknown, when the estimate lies on
        a threshold (d = 0) or so near it that over ``SEEDS_CAP`` × n seeds would be needed, between it and
        ``fails_at``, or when only a blocked contradiction would decide."""
        if self.decide(ci, n=n, settled=settled) != "inconclusive":
            return None
        return self._seeds(ci, n, can_fail=settled or not self.contradict_only_if)[0]

    def _seeds(self, ci: Any, n: Optional[int], *, can_fail: bool = True,
               scale: float = 1.0) -> tuple[Optional[int], str]:
        """(:meth:`seeds_needed` of a CI taken as undecided, it in words); ``scale`` widens the CI's
        half-widths to a stricter level than its own (a part's Holm level in :func:`judge`)."""
        values = _interval(ci)
        if values is None or n is None or n < 1:
            return None, ""
        est, low, high = values
        band = self.holds == "inside"
        t, f = map(float, self.threshold if band else  # type: ignore[arg-type]
                   (self.threshold, self.threshold if self.fails_at is None else self.fails_at))
        if est in (t, f) or (not band and min(t, f) < est < max(t, f)):
            return None, "no number of seeds decides an estimate " + (
                "on the threshold" if est in (t, f) else "between the thresholds")
        if not can_fail and ((not t < est < f) if band else (est - f) * (1 if self.holds == "above" else -1) < 0):
            return None, ""
        ratio = scale * max((est - low if e < est else high - est) / abs(est - e) for e in (t, f))
        if not math.isfinite(ratio) or (ratio < 1 and n >= self.min_n):
            return None, ""
        need = self.min_n if ratio < 1 else max(math.ceil(n * ratio**2 - 1e-9), n + 1, self.min_n)
        if need > SEEDS_CAP * n:
            return None, f"over {SEEDS_CAP}× these {n} seeds would decide: the estimate sits at the threshold"
        return need, f"≈{need} seeds would decide"

    # ----------------------------------------------------------------------- describing

    def _where(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.holds == "inside":
            a, b = self.threshold  # type: ignore[misc]
            return f"lies inside [{a:.3g}, {b:.3g}]{unit}", "lies wholly outside it"
        side, other = ("above", "below") if self.holds == "above" else ("below", "above")
        fails = f"lies {other} it" if self.fails_at is None else f"lies {other} {self._fail:.3g}{unit}"
        if self.ties_fail:
            fails = fails.replace(f"lies {other}", f"lies at or {other}")
        return f"lies {side} {float(self.threshold):.3g}{unit}", fails  # type: ignore[arg-type]

    def describe(self) -> str:
        """The rule in words, for the report."""
        holds, fails = self._where()
        text = (f"supported iff the {self.confidence:.0%} CI of {self.statistic} {holds} ({self.reason}); "
                f"contradicted iff it {fails}")
        if self.contradict_only_if:
            text += f" and {self.contradict_only_if}"
        text += "; else inconclusive"
        if self.min_n:
            text += f" (also with fewer than {self.min_n} seeds)"
        return text

    def verdict(self, claim: str, ci: Any, *, measurement: str, n: Optional[int] = None, settled: bool = True,
                figure: Optional[str] = None, unit: Optional[str] = None) -> Verdict:
        """The ledger row for ``claim`` judged by this rule alone."""
        low, high = (None, None) if (values := _interval(ci)) is None else map(finite_or_none, values[1:])
        return Verdict(
            claim, measurement, finite_or_none(getattr(ci, "estimate", None)), low, high,
            self.decide(ci, n=n, settled=settled), self.describe(), figure,
            self.unit if unit is None else unit, flip_point=self.flip_point(ci),
            flip_text=self.flip_text(ci, n=n, settled=settled),
            seeds_needed=self.seeds_needed(ci, n, settled=settled))


# --------------------------------------------------------------------------- claims of several parts


@dataclass(frozen=True)
class Part:
    """One part of a claim: a named rule applied to a CI.

    ``can_contradict=False`` marks a part that a "supported" verdict needs but whose failure
    alone does not contradict the claim (its contradiction counts as inconclusive).
    """

    name: str
    rule: Rule
    ci: Any
    n: Optional[int] = None
    settled: bool = True
    can_contradict: bool = True

    def p_value(self) -> tuple[float, str]:
        """The smaller of the rule's two one-sided p-values, with the verdict it would give."""
        values = _interval(self.ci)
        if values is None or (self.n is not None and self.n < self.rule.min_n):
            return 1.0, "inconclusive"
        p_hold, p_fail = self.rule.p_values(self.ci)
        return (p_hold, "supported") if p_hold <= p_fail else (p_fail, "contradicted")


def holm(parts: Sequence[Part], alpha: float = ALPHA) -> list[str]:
    """Each part's verdict after Holm's step-down correction over the parts' one-sided tests.

    Every part tests the direction its data point to (the smaller of its two p-values). Sorted ascending,
    the j-th smallest p (j = 0, 1, …) is rejected while p < alpha / (k − j); the first that is not stops
    the procedure. A rejected part gets the verdict of its direction, the rest "inconclusive". This
    controls the chance of any wrong part verdict at ``alpha`` (family-wise); one part: the rule's own.
    """
    tests = [part.p_value() for part in parts]
    out = ["inconclusive"] * len(parts)
    for rank, index in enumerate(sorted(range(len(parts)), key=lambda i: tests[i][0])):
        p, direction = tests[index]
        if not p < alpha / (len(parts) - rank):
            break
        out[index] = direction
    for i, part in enumerate(parts):
        blocked = (not part.can_contradict) or (part.rule.contradict_only_if and not part.settled)
        if out[i] == "contradicted" and blocked:
            out[i] = "inconclusive"
    return out


def all_hold(decisions: Sequence[str]) -> str:
    """A conjunction: supported iff every part is; contradicted iff any part is; else inconclusive."""
    if "contradicted" in decisions:
        return "contradicted"
    return "supported" if decisions and all(d == "supported" for d in decisions) else "inconclusive"


def across(decisions: Sequence[str]) -> str:
    """One claim over several settings (optimizers, regularizers): all supported → supported; all
    contradicted → contradicted; a part that depends, or supported and contradicted parts →
    depends; otherwise (some inconclusive, or none) → inconclusive."""
    kinds = set(decisions)
    if kinds in ({"supported"}, {"contradicted"}):
        return kinds.pop()
    if "depends" in kinds or {"supported", "contradicted"} <= kinds:
        return "depends"
    return "inconclusive"


def _seeds_of(parts: Sequence[Part], decisions: Mapping[str, str], alpha: float) -> tuple[Optional[int], str]:
    """The largest :meth:`Rule.seeds_needed` over the Holm-inconclusive parts whose n is known, named; each
    part's half-widths widened to Holm's strictest level α/k (enough whatever its rank). A part no number
    of seeds decides is named instead."""
    z = norm.ppf(1 - alpha / max(len(parts), 1))  # no parts: nothing to decide, no figure
    needs = [(*p.rule._seeds(p.ci, p.n, can_fail=p.can_contradict and (p.settled or not p.rule.contradict_only_if),
                              scale=z / norm.ppf(0.5 + p.rule.confidence / 2)), p.name)
             for p in parts if decisions[p.name] == "inconclusive" and p.n is not None]
    stuck = [(note, name) for need, note, name in needs if need is None and note]
    known = [(need, note, name) for need, note, name in needs if need is not None]
    if stuck or not known:
        return None, f"{stuck[0][0]} ({stuck[0][1]})" if stuck else ""
    need, note, name = max(known)
    return need, f"{note} ({name})"


def judge(claim: str, parts: Sequence[Part], combine: Callable[[Mapping[str, str]], str], *, how: str,
          measurement: str, value: Any = None, figure: Optional[str] = None, unit: str = "",
          alpha: float = ALPHA) -> tuple[Verdict, dict[str, str]]:
    """The verdict of a claim of several parts, and each part's verdict after Holm.

    ``combine`` maps {part name: corrected verdict} to the claim's verdict; ``how`` says in words what it
    does (appended to the generated rule text). ``value`` is the CI shown in the ledger (default: the
    first part's). The flip point shown is that of the part whose test is nearest to flipping (the
    largest p-value), named (`flip_of`, with its unit) when it is not the part whose CI is the ledger
    value; the flip text lists every part's, and for an inconclusive claim the seeds that would decide.
    """
    if len({p.name for p in parts}) != len(parts):
        raise ValueError("part names must be distinct")
    decisions = dict(zip((p.name for p in parts), holm(parts, alpha)))
    verdict = combine(decisions)
    by_rule: dict[Rule, list[str]] = {}
    for p in parts:  # one text per distinct rule, naming every part that uses it
        by_rule.setdefault(p.rule, []).append(p.name)
    rule = (" ".join(f"[{', '.join(names)}] {r.describe()}." for r, names in by_rule.items())
            + f" Parts' one-sided tests corrected by Holm at family-wise α = {alpha:g} ({len(parts)} "
            + ("part" if len(parts) == 1 else "parts") + f"); {how}")
    flips = [(p.p_value()[0], p.name, p.rule.flip_point(p.ci)) for p in parts]
    shown = [f for f in flips if f[2] is not None]
    closest = max(shown, key=lambda f: f[0]) if shown else None
    flip_text = verdict + "; " + ", ".join(
        f"{name} {decisions[name]}" + ("" if point is None else f" (flips at {point:.3g})")
        for _, name, point in flips)
    seeds, note = _seeds_of(parts, decisions, alpha) if verdict == "inconclusive" else (None, "")
    flip_text += f"; {note}" if note else ""
    ci = parts[0].ci if value is None and parts else value
    values = _interval(ci) if ci is not None else None
    named = closest is not None and not (value is None and closest[1] == parts[0].name)
    closest_rule = None if closest is None else next(p.rule for p in parts if p.name == closest[1])
    return Verdict(
        claim, measurement, finite_or_none(getattr(ci, "estimate", None)),
        None if values is None else finite_or_none(values[1]), None if values is None else finite_or_none(values[2]),
        verdict, rule, figure, unit,
        flip_point=None if closest is None else closest[2], flip_text=flip_text,
        flip_of=closest[1] if named else "", flip_unit=closest_rule.unit if named else None,
        seeds_needed=seeds), decisions
