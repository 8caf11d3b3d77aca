"""Batch norm (M12, A4): the stability statistics and verdict rules on synthetic numbers, and the tiny profile
end to end (the Santurkar et al. hook itself, `measures.Smoothness`, is tested in tests/test_measures.py)."""

import dataclasses
import math
import shutil

import numpy as np
import pytest

from figure_checks import assert_clean, tiny_run_fixtures
from experiments import batchnorm as bn
from netalchemy import store, sweep
from netalchemy.config import ConfigError, override
from netalchemy.stats import CI


def test_stability_table_per_seed_and_per_lr():
    lrs = np.array([0.01, 0.1, 1.0, 10.0])
    diverged = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]], bool)  # (lrs, seeds)
    final = np.array([[2.2, 2.2, 2.2], [1.0, 1.0, 2.3], [0.5, 2.31, 0.4], [0.3, 0.3, 0.3]])
    t = bn.stability_table(diverged, final, lrs, threshold=0.9 * math.log(10))
    np.testing.assert_array_equal(t["stable"], [[0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(t["edge"], [1.0, 0.1, np.nan])
    np.testing.assert_allclose(t["divergence_rate"], [0, 0, 1 / 3, 1])
    assert t["first_divergence"] == 1.0  # one seed of three diverged there
    assert np.isnan(t["final_loss"][3]).all()  # diverged runs have no final loss
    calm = bn.stability_table(np.zeros((2, 2), bool), np.full((2, 2), 3.0), lrs[:2], threshold=2.0)
    assert calm["first_divergence"] is None and np.isnan(calm["edge"]).all()  # nothing diverged, nothing stable


def test_ratio_cis():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.05, 40), rng.normal(2.0, 0.1, 40)
    ci = bn.ratio_ci(a, b)
    assert ci.low < 0.5 < ci.high and abs(ci.estimate - 0.5) < 0.02 and ci.high - ci.low < 0.05
    assert math.isnan(bn.ratio_ci([np.nan], b).estimate)
    paired = bn.geometric_ratio_ci(np.array([2.0, 4.0, 8.0]), np.array([1.0, 2.0, 4.0]))
    assert paired == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))


def mid(low, high):
    return CI(None if low is None else (low + high) / 2, low, high)


def test_m12_verdict_rule():
    m12 = lambda low, high, inside: bn.m12_verdict(mid(low, high), inside).verdict  # noqa: E731
    assert m12(1.5, 3.0, 1.0) == "supported"
    assert m12(1.0, 1.0, 1.0) == "contradicted"  # every seed: the same edge
    assert m12(0.3, 0.8, 0.9) == "contradicted"
    assert m12(1.0, 1.0, 0.0) == "inconclusive"  # both edges off the grid: grid too narrow
    assert m12(0.8, 2.0, 1.0) == "inconclusive"
    assert m12(None, None, 1.0) == "inconclusive"
    v = bn.m12_verdict(mid(1.5, 3.0), 1.0, progress_fraction=0.9)
    assert (v.value, v.ci_low, v.ci_high, v.flip_point) == (2.25, 1.5, 3.0, 1.5)
    assert v.flip_text == "supported; flips at 1.5" and "0.9·ln(classes)" in v.rule


def test_a4_verdict_rule():
    lower, higher, unclear = mid(0.4, 0.8), mid(1.2, 1.6), mid(0.8, 1.2)
    a4 = lambda *cis: bn.a4_verdict(*cis).verdict  # noqa: E731
    assert a4(lower, lower, unclear) == "contradicted"  # Santurkar: smoother, ICS not the reason
    assert a4(lower, lower, higher) == "contradicted"
    assert a4(lower, lower, lower) == "depends"  # smoother, but ICS also reduced
    assert a4(lower, unclear, unclear) == "depends"  # the landscape measures disagree
    assert a4(lower, higher, unclear) == "depends"
    assert a4(higher, unclear, unclear) == "supported"  # no smoothing seen
    assert a4(unclear, unclear, lower) == "inconclusive"
    assert a4(mid(None, None), mid(None, None), mid(None, None)) == "inconclusive"
    v = bn.a4_verdict(higher, unclear, unclear)
    assert (v.value, v.ci_low, v.ci_high) == (1.0, 0.8, 1.2)  # the value shown is β-smoothness
    assert "loss range contradicted (flips at 1.2)" in v.flip_text


def test_settings_and_grid():
    s = bn.PROFILES["quick"]
    np.testing.assert_allclose(bn.lr_grid(s), np.logspace(-2, 2, 9))
    assert bn.lr_grid(bn.PROFILES["full"]).size == 16
    assert override(s, ["base.optim.lr=0.5"]).base.optim.lr == 0.5
    assert override(s, ["landscape_lr=1.0"]).landscape_lr == 1.0
    with pytest.raises(ConfigError, match="landscape_lr"):
        override(s, ["landscape_lr=0.2"])  # not a rate of the grid: no runs to read
    with pytest.raises(ConfigError, match="eta_multipliers"):
        override(s, ["eta_multipliers=[1.0]"])


tiny_run, tiny = tiny_run_fixtures("batchnorm")


def test_every_figure_is_drawn_clean_and_captioned(tiny_run):
    out, _, drawn = tiny_run
    assert_clean(drawn, out)


def test_tiny_profile_end_to_end(tiny):
    out_dir, verdicts = tiny
    assert [v.claim for v in verdicts] == list(bn.CLAIMS)
    for v in verdicts:
        assert v.value is not None and v.ci_low <= v.value <= v.ci_high
        assert v.verdict in ("supported", "contradicted", "inconclusive", "depends")
    for name in ("stability.png", "landscape.png", "ics.png", "verdicts.json"):
        assert (out_dir / name).exists()
    result = sweep.load(out_dir / "bn")  # 5 lrs × 2 seeds, evaluated at steps 0, 20, 40
    assert result.cfg.model.batch_norm and not sweep.load(out_dir / "nobn").cfg.model.batch_norm
    assert result.measures["beta"].shape == (10, 3) and result.measures["ics_cos"].shape == (10, 3, 2)
    at_lr = np.isclose(result.lrs, 0.1)
    assert at_lr.sum() == 2 and np.isfinite(result.measures["beta"][at_lr]).all()


def test_finished_sweeps_are_reused_and_edited_settings_refused(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    reused, original = [], sweep.run
    monkeypatch.setattr(sweep, "run", lambda *a, **k: reused.append(original(*a, **k).reused))
    s = bn.PROFILES["tiny"]
    bn.run(s, out)
    assert reused == [True, True]  # nothing retrained
    assert [v.verdict for v in bn.report(out)] == [v.verdict for v in tiny[1]]
    with pytest.raises(store.StoreError, match="different config"):  # a stale measurement is never reused
        bn.run(dataclasses.replace(s, eta_multipliers=(0.5, 1.0, 2.0)), out)
