"""The chance experiment (claims A1, A2, A7): its statistics and verdict rules on synthetic
numbers with known answers, a tiny end-to-end run and its cache."""

import dataclasses
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import chance
from netalchemy import config as config_lib
from netalchemy import experiment, mlp, stats, store, sweep, train
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


def test_drift_is_the_relative_distance_and_the_churn_to_the_reference():
    ref = {"params": np.array([[[3.0, 4.0], [6.0, 8.0]]]), "predictions": np.array([[[0, 1, 2, 3], [0, 1, 2, 3]]])}
    twin = {"params": np.array([[[3.0, 4.0], [6.0, 18.0]]]), "predictions": np.array([[[0, 1, 2, 3], [0, 0, 0, 3]]])}
    dist, churn = chance.drift(ref, twin)  # (runs, evaluations) = (1, 2)
    np.testing.assert_allclose(dist, [[0.0, 1.0]])  # ‖(0, 10)‖ / ‖(6, 8)‖
    np.testing.assert_allclose(churn, [[0.0, 0.5]])


# ----------------------------------------------------------------------------- hooks


def _bits(a):
    return np.asarray(a).view(np.int32).astype(np.int64)


def test_perturb_one_ulp_changes_exactly_one_weight_by_one_ulp():
    rng = np.random.default_rng(0)
    params = tuple(mlp.Layer(jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.zeros(shape[1], jnp.float32))
                   for shape in ((3, 5), (5, 4), (4, 2)))
    moved = chance.perturb_one_ulp(params)
    changed = 0
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(moved)):
        diff = _bits(b) - _bits(a)
        changed += np.count_nonzero(diff)
        assert set(np.unique(np.abs(diff))) <= {0, 1}
    assert changed == 1 and float(moved[0].w[0, 0]) != float(params[0].w[0, 0])


def test_ulp_hook_moves_only_the_runs_from_first_on():
    cfg = config_lib.Config()
    state = train.init_state(train.Streams(*(train.stream_key(0, s) for s in RANDOMNESS_STREAMS)), 0.01, cfg=cfg,
                             in_features=40, num_classes=10)
    hook = chance.UlpFrom(first=4)
    for run, moved in ((0, False), (3, False), (4, True), (7, True)):
        out = hook(state, jnp.int32(run), cfg)
        diffs = [np.count_nonzero(_bits(b) - _bits(a)) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(out))]
        assert sum(diffs) == int(moved)


def test_snapshot_hook_gives_flat_params_and_test_predictions():
    cfg = config_lib.Config()
    state = train.init_state(train.Streams(*(train.stream_key(0, s) for s in RANDOMNESS_STREAMS)), 0.01, cfg=cfg,
                             in_features=40, num_classes=10)
    x = np.random.default_rng(0).normal(size=(7, 40)).astype(np.float32)
    out = chance.snapshot(state, None, train.Data(x, None, x, None), cfg)
    assert out["params"].shape == (40 * 100 + 100 + 100 * 100 + 100 + 100 * 10 + 10,)
    np.testing.assert_array_equal(out["predictions"], train.predict(state.params, state.bn_state, x, cfg=cfg))
    assert float(out["params"][0]) == float(state.params[0].w[0, 0])


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
    for name in ("a1_accuracy.png", "a2_spread.png", "verdicts.json", "a1.npz", "a2.npz"):
        assert (out_dir / name).exists()
    a1 = verdicts[0]
    assert a1.value is not None and 0 <= a1.ci_low <= a1.value <= a1.ci_high <= 1
    a7 = np.load(out_dir / "a7.npz")
    np.testing.assert_array_equal(a7["steps"], [0, 25, 50, 75, 100])
    assert np.all(a7["dist_copy"] == 0) and np.all(a7["churn_copy"] == 0)  # the control stays bitwise identical
    assert np.all(a7["dist_seed"][:, -1] > 0.1) and np.all(a7["dist_ulp"][:, 0] < 1e-6)
    assert np.all(a7["dist_ulp"][:, 0] > 0) and np.all(a7["dist_hand"][:, 0] == 0)  # one ulp apart; same init
    # Running again reuses every stored part and reports the same verdicts.
    _, again = experiment.run_experiment("chance", profile="tiny", root=out_dir.parent.parent)
    assert again == verdicts


@pytest.mark.slow
def test_every_sweep_is_the_engine_s_and_an_edited_setting_never_reuses_a_stale_part(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    folders = {p.name for p in out.iterdir() if (p / "config.json").exists()}
    assert folders == {"a1", "a2-init", "a2-data", "a2-dropout", "a2-all", "a7-ref", "a7-hand", "a7-seed"}
    ref = sweep.load(out / "a7-ref")
    assert ref.measures["params"].shape[:2] == (3 * 2, 5) and list(ref.lrs) == [ref.lrs[0]] * 6
    calls, engine = [], sweep.run
    monkeypatch.setattr(sweep, "run", lambda cfg, **kw: calls.append(kw["out_dir"].name) or engine(cfg, **kw))
    s = chance.PROFILES["tiny"]
    chance.run(s, out)  # unchanged: every part's stored arrays reused, no sweep even opened
    assert calls == []
    # An edited setting recomputes its part only; its sweep folder, trained with the old config, is refused.
    with pytest.raises(store.StoreError, match="a2-init holds a sweep with a different config"):
        chance.run(dataclasses.replace(s, a2_dropout=0.2), out)
    assert calls == ["a2-init"]
    with pytest.raises(store.StoreError, match="a7-ref holds a sweep with a different config"):
        chance.run(dataclasses.replace(s, a7_eval_every=50), out)
    assert calls == ["a2-init", "a7-ref"]
