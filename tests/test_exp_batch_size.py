"""experiments/batch_size.py: the tiny profile end to end (the ledger value is the regularisation effect),
its caches (recomputed exactly when a setting they depend on changes), throughput timed through the engine's
program, the noise check and the verdict rules on synthetic numbers. The hooks themselves
(`measures.GradientNoise`, `measures.throughput`) are tested in tests/test_measures.py."""

import dataclasses
import math
import shutil
from unittest import mock

import numpy as np
import pytest

from figure_checks import assert_clean, tiny_run_fixtures
from experiments import batch_size as B
from netalchemy import stats, store, sweep
from netalchemy import config as C
from netalchemy.data import load
from netalchemy.experiment import VERDICTS


tiny_run, tiny = tiny_run_fixtures("batch_size")


@pytest.fixture(scope="module")
def mnist1d():
    return load(C.DataConfig())


def test_every_figure_is_drawn_clean_and_captioned(tiny_run):
    out, _, drawn = tiny_run
    assert_clean(drawn, out)


def test_tiny_profile_end_to_end(tiny):
    out, verdicts = tiny
    assert [v.claim for v in verdicts] == list(B.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule and v.measurement for v in verdicts)
    for name in ("verdicts.json", "analysis.json", "grad_noise.png", "throughput.png", "gap.png"):
        assert (out / name).exists(), name
    noise = store.read_npz(out / "noise.npz")
    assert noise["noise"].shape == (2, 2, 3) and np.all(noise["noise"] > 0)  # (points, seeds, batch sizes)
    assert not np.array_equal(noise["noise"][0], noise["noise"][1])  # the trained point is another net
    assert B.report(out) == verdicts
    (m9,), gap = verdicts, store.read_json(out / "analysis.json")["gap"]
    assert [m9.value, m9.ci_low, m9.ci_high] == [None if np.isnan(v) else v for v in np.asarray(gap["difference"], float)]
    assert m9.figure == "gap.png" and "check, slope of log E‖g_B − g_N‖² vs log B_eff" in m9.measurement


def test_cache_recomputes_exactly_when_a_setting_it_depends_on_changes(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    noise = mock.Mock(wraps=B.measure_noise)
    throughput = mock.Mock(wraps=B.measure_throughput)
    monkeypatch.setattr(B, "measure_noise", noise)
    monkeypatch.setattr(B, "measure_throughput", throughput)
    s = B.PROFILES["tiny"]
    B.run(s, out)  # unchanged: both stored values are reused
    assert (noise.call_count, throughput.call_count) == (0, 0)
    B.run(dataclasses.replace(s, noise_batch_sizes=(8, 32, 64)), out)  # noise only, trained in a sweep of its own
    assert (noise.call_count, throughput.call_count) == (1, 0)
    assert store.read_npz(out / "noise.npz")["batch_sizes"].tolist() == [8, 32, 64]
    assert len(list(out.glob("noise-*"))) == 2
    B.run(dataclasses.replace(s, noise_batch_sizes=(8, 32, 64), throughput_repeats=1), out)  # throughput only
    assert (noise.call_count, throughput.call_count) == (1, 1)
    assert store.read_npz(out / "throughput.npz")["examples_per_s"].shape == (2, 1)


def test_throughput_times_the_engines_program(mnist1d, monkeypatch):
    """One warm-up call and `repeats` timed calls of `sweep.train_chunk` per batch size, nothing else trained."""
    chunk = mock.Mock(wraps=sweep.train_chunk)
    monkeypatch.setattr(sweep, "train_chunk", chunk)
    s = dataclasses.replace(B.PROFILES["tiny"], throughput_batch_sizes=(8, 512, 8000), throughput_repeats=3)
    tp = B.measure_throughput(s, mnist1d)
    assert tp["batch_sizes"] == [8, 512] and tp["examples_per_s"].shape == (2, 3)  # 8000 > N: left out
    assert np.all(np.isfinite(tp["examples_per_s"])) and np.all(tp["examples_per_s"] > 0)
    assert chunk.call_count == 2 * 4
    assert [c.kwargs["cfg"].train.steps for c in chunk.call_args_list[::4]] == [256, 4]  # 2048 examples each


@pytest.mark.parametrize("ci, expected", [
    ((-1.05, -0.95), "supported"),
    ((-0.6, -0.4), "contradicted"),  # e.g. noise ∝ 1/√B: a wrongly normalised measurement
    ((-1.3, -0.9), "inconclusive"),
    ((None, None), "inconclusive"),
])
def test_noise_check(ci, expected):
    lo, hi = ci
    assert B.noise_check(0.15).decide(stats.CI(None if lo is None else (lo + hi) / 2, lo, hi)) == expected


def test_throughput_and_regularise_rules_and_m9():
    assert B.PARALLEL.decide(stats.CI(0.5, 0.3, 0.8)) == "supported"
    assert B.PARALLEL.decide(stats.CI(-0.5, -0.8, -0.3)) == "contradicted"
    assert B.PARALLEL.decide(stats.CI(0.1, -0.1, 0.3)) == "inconclusive"
    assert B.PARALLEL.decide(stats.CI(0.1, math.nan, 0.3)) == "inconclusive"
    assert B.REGULARISE.decide(stats.CI(0.03, 0.01, 0.05)) == "supported"  # large batches: larger gap
    assert B.REGULARISE.decide(stats.CI(-0.03, -0.05, -0.01)) == "contradicted"
    assert B.REGULARISE.decide(stats.CI(0.02, -0.01, 0.05)) == "inconclusive"
    m9 = lambda tp, gap: B.m9_verdict(tp, gap, fit_tolerance=0.05)  # noqa: E731
    fast, slow = stats.CI(0.5, 0.3, 0.8), stats.CI(-0.5, -0.8, -0.3)
    assert m9(fast, stats.CI(0.03, 0.02, 0.04)).verdict == "supported"
    assert m9(fast, stats.CI(-0.03, -0.04, -0.02)).verdict == "depends"
    assert m9(slow, stats.CI(-0.03, -0.04, -0.02)).verdict == "contradicted"
    assert m9(fast, stats.CI(0.0, -0.01, 0.01)).verdict == "inconclusive"
    assert m9(fast, stats.CI(math.nan, math.nan, math.nan)).verdict == "inconclusive"  # < 2 comparable sizes
    v = m9(fast, stats.CI(0.03, 0.02, 0.04))
    assert (v.value, v.ci_low, v.ci_high, v.unit) == (0.03, 0.02, 0.04, "acc")  # the ledger value: regularisation
    assert "regularise supported (flips at 0.02)" in v.flip_text and "noise is not judged" in v.rule


def test_gap_config_gives_equal_epochs():
    s = B.Settings(epochs=10, evals=5)
    for b in (8, 32, 512, 4000):
        cfg = B.gap_config(s, b, 4000)
        t = cfg.train
        assert t.batch_size == b and t.steps % t.eval_every == 0 and t.steps // t.eval_every == 5
        assert 10 * 4000 <= t.steps * b < 10 * 4000 + 5 * b  # examples seen ≈ epochs × N


def test_split_test_and_lr_tuning():
    val, test = B.split_test(1000, 500)
    assert len(val) == 500 and len(test) == 500 and not set(val) & set(test)
    np.testing.assert_array_equal(np.sort(np.concatenate([val, test])), np.arange(1000))
    val_acc = np.array([[0.5, 0.5], [0.9, 0.9], [0.6, 0.6]])
    diverged = np.array([[False, False], [True, False], [False, False]])
    assert B.tune_by_validation(val_acc, np.zeros_like(diverged), 0.1) == 1
    assert B.tune_by_validation(val_acc, diverged, 0.1) == 2  # diverged seed counts as chance: (0.1+0.9)/2 < 0.6


def test_comparable_batch_sizes_leave_out_underfit_ones():
    assert B.comparable_batch_sizes([8, 32, 512, 4000], [0.84, 0.86, 0.56, 0.33], 0.05) == [8, 32]
    assert B.comparable_batch_sizes([8, 4000], [0.9, 0.88], 0.05) == [8, 4000]
    assert B.comparable_batch_sizes([8, 4000], [0.9, np.nan], 0.05) == [8]
