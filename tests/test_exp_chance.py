"""The chance experiment (claims A1, A2, A7): its statistics and verdict rules on synthetic
numbers with known answers, a tiny end-to-end run and its cache."""

import dataclasses
import shutil
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import chance
from netalchemy import config as config_lib
from netalchemy import experiment, mlp, stats, sweep
from netalchemy.config import RANDOMNESS_STREAMS

# ----------------------------------------------------------------------------- rules


def c(low, high):
    """A CI with its estimate in the middle (or 0.1 above an open-ended CI's low end)."""
    if low is None:
        return stats.CI(None, None, None)
    return stats.CI(low + 0.1 if np.isinf(high) else (low + high) / 2, low, high)


@pytest.mark.parametrize("low, high, verdict", [
    (0.05, 0.08, "supported"),  # seeds disagree on 5-8% of examples
    (0.001, 0.004, "contradicted"),  # the same answers up to < 1%
    (0.005, 0.02, "inconclusive"),
    (None, None, "inconclusive"),
])
def test_a1_rule(low, high, verdict):
    v = chance.a1_verdict(c(low, high))
    assert v.verdict == verdict and v.rule == chance.CHURN.describe()
    assert v.flip_point == (None if low is None else low if abs(low - 0.01) < abs(high - 0.01) else high)


@pytest.mark.parametrize("cis, verdict", [
    ({"init": (0.8, 1.3), "data": (0.7, 1.2), "dropout": (0.6, 1.1)}, "supported"),  # chaos: any source suffices
    ({"init": (0.9, 1.1), "data": (0.05, 0.2), "dropout": (0.0, 0.3)}, "contradicted"),  # one culprit
    ({"init": (0.9, 1.1), "data": (0.8, 1.2), "dropout": (0.0, 0.3)}, "depends"),  # two matter, one does not
    ({"init": (0.1, 0.3), "data": (0.1, 0.4), "dropout": (0.0, 0.3)}, "depends"),  # only their combination
    ({"init": (0.9, 1.1), "data": (0.3, 0.9), "dropout": (0.6, 1.1)}, "inconclusive"),
    ({"init": (0.9, np.inf), "data": (0.6, 1.2), "dropout": (0.7, 1.1)}, "supported"),  # an open-ended CI
    ({"init": (0.9, 1.1), "data": (np.nan, np.nan), "dropout": (0.7, 1.1)}, "inconclusive"),
])
def test_a2_rule(cis, verdict):
    assert chance.a2_verdict({k: c(*v) for k, v in cis.items()}).verdict == verdict


@pytest.mark.parametrize("ulp, hand, control, verdict", [
    ((0.8, 1.0), (0.7, 1.1), True, "supported"),
    ((0.0, 0.1), (0.0, 0.2), True, "contradicted"),
    ((0.8, 1.0), (0.0, 0.2), True, "depends"),
    ((0.3, 0.9), (0.7, 1.1), True, "inconclusive"),
    ((0.8, 1.0), (0.7, 1.1), False, "inconclusive"),  # the control moved: the batching itself perturbs
    ((None, None), (0.7, 1.1), True, "inconclusive"),
])
def test_a7_rule(ulp, hand, control, verdict):
    v = chance.a7_verdict(c(*ulp), c(*hand), control)
    assert v.verdict == verdict and (v.ci_low, v.ci_high) == ulp


# ----------------------------------------------------------------------------- statistics


def test_pairwise_mean_ci_of_a_constant_matrix_is_exact():
    m = np.full((6, 6), 0.3)
    np.fill_diagonal(m, 0.0)
    ci = chance.pairwise_mean_ci(m, n_resamples=500)
    assert ci.estimate == pytest.approx(0.3) and ci.low == pytest.approx(0.3) and ci.high == pytest.approx(0.3)


def test_pairwise_mean_ci_brackets_the_mean_and_ignores_self_pairs():
    rng = np.random.default_rng(1)
    p = rng.integers(0, 3, size=(12, 200))
    m = (p[:, None] != p[None]).mean(-1)  # expected disagreement 2/3
    ci = chance.pairwise_mean_ci(m, n_resamples=2000)
    assert ci.low <= ci.estimate <= ci.high
    assert abs(ci.estimate - 2 / 3) < 0.03 and ci.low > 0.6  # self-pairs (0) would pull it far down


def test_std_ratio_ci_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    same = chance.std_ratio_ci(x, x, n_resamples=2000)
    assert same.estimate == pytest.approx(1.0) and same.low < 1 < same.high
    double = chance.std_ratio_ci(2 * x + 5, rng.normal(size=400), n_resamples=2000)
    assert 1.7 < double.low < 2 < double.high < 2.3
    flat = chance.std_ratio_ci(x[:20], np.zeros(20), n_resamples=200)
    assert flat.high == np.inf  # no spread at all in the reference


def test_majority_vote_and_pair_error_churn():
    preds = np.array([[0, 1, 2, 2], [0, 1, 1, 0], [1, 1, 2, 0]])
    np.testing.assert_array_equal(chance.majority_vote(preds, 3), [0, 1, 2, 0])
    np.testing.assert_array_equal(chance.majority_vote(np.array([[0], [1]]), 2), [0])  # tie: lower class
    labels = np.array([0, 1, 2, 0])
    err, churn = chance.pair_error_and_churn(preds, labels)  # errors 1/4, 1/4, 1/4
    np.testing.assert_allclose(err, [0.25, 0.25, 0.25])
    np.testing.assert_allclose(churn, [0.5, 0.5, 0.5])
    assert np.all(churn <= 2 * err + 1e-12)


# ----------------------------------------------------------------------------- training pieces


def test_perturb_one_ulp_changes_exactly_one_weight_by_one_ulp():
    rng = np.random.default_rng(0)
    params = tuple(mlp.Layer(jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.zeros(shape[1], jnp.float32))
                   for shape in ((3, 5), (5, 4), (4, 2)))
    moved = chance.perturb_one_ulp(params)
    bits = lambda a: np.asarray(a).view(np.int32)
    changed = 0
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(moved)):
        diff = bits(b).astype(np.int64) - bits(a).astype(np.int64)
        changed += np.count_nonzero(diff)
        assert set(np.unique(np.abs(diff))) <= {0, 1}
    assert changed == 1 and float(moved[0].w[0, 0]) != float(params[0].w[0, 0])


@pytest.mark.parametrize("vary", [("init",), ("data",), ("dropout",), RANDOMNESS_STREAMS])
def test_source_streams_are_the_keys_sweep_uses(vary):
    cfg = config_lib.Config(seeds=config_lib.SeedsConfig(n=3, start=5, vary=vary))
    seeds = np.arange(5, 8)
    ours = chance.source_streams(seeds, vary, 5)
    theirs = sweep.run_streams(cfg, seeds)
    for name, a, b in zip(RANDOMNESS_STREAMS, ours, theirs):
        b = b if name in vary else jnp.stack([b] * 3)
        np.testing.assert_array_equal(jax.random.key_data(a), jax.random.key_data(b))


# ----------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny profile, run once for this module, its figures checked as drawn: (folder, verdicts, checks)."""
    with checking_figures() as drawn:
        out, verdicts = experiment.run_experiment("chance", profile="tiny", root=tmp_path_factory.mktemp("runs"))
    return out, verdicts, drawn


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The tiny profile's (folder, verdicts)."""
    return tiny_run[:2]


@pytest.mark.slow
def test_every_figure_is_drawn_clean_and_captioned(tiny_run):
    out, _, drawn = tiny_run
    assert_clean(drawn, out)


@pytest.mark.slow
def test_tiny_profile_end_to_end(tiny):
    out_dir, verdicts = tiny
    assert [v.claim for v in verdicts] == list(chance.CLAIMS)
    for v in verdicts:
        assert v.verdict in experiment.VERDICTS and v.rule
        assert (out_dir / v.figure).stat().st_size > 5000
    for name in ("a1_accuracy.png", "a2_spread.png", "verdicts.json", "summary.json"):
        assert (out_dir / name).exists()
    a1 = verdicts[0]
    assert a1.value is not None and 0 <= a1.ci_low <= a1.value <= a1.ci_high <= 1
    a7 = np.load(out_dir / "a7.npz")
    assert np.all(a7["dist_copy"] == 0)  # the control stays bitwise identical
    assert np.all(a7["dist_seed"][:, -1] > 0.1) and np.all(a7["dist_ulp"][:, 0] < 1e-6)
    # Running again reuses every stored part and reports the same verdicts.
    _, again = experiment.run_experiment("chance", profile="tiny", root=out_dir.parent.parent)
    assert again == verdicts


class Recomputed(Exception):
    pass


@pytest.mark.slow
def test_cache_recomputes_exactly_the_part_whose_setting_changed(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    # Each part's first computation, made to stop the run at once: it shows which part recomputes.
    first = {"A1": "mean_softmax", "A2": "train_runs", "A7": "a7_init"}
    mocks = {part: mock.Mock(side_effect=Recomputed(part)) for part in first}
    for part, name in first.items():
        monkeypatch.setattr(chance, name, mocks[part])
    s = chance.PROFILES["tiny"]
    chance.run(s, out)  # unchanged: every part reused
    assert not any(m.called for m in mocks.values())
    with pytest.raises(Recomputed, match="A2"):
        chance.run(dataclasses.replace(s, a2_dropout=0.2), out)
    with pytest.raises(Recomputed, match="A7"):
        chance.run(dataclasses.replace(s, a7_eval_every=50), out)
    assert not mocks["A1"].called
