"""`spread`: seed-bootstrap CIs of churn and spreads, ensembles, the parameter sketch and the
twin hooks, against brute-force computations and hand-computed answers."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netalchemy import config as config_lib
from netalchemy import mlp, spread, train
from netalchemy.config import RANDOMNESS_STREAMS

# ----------------------------------------------------------------------------- bootstrap intervals


def _fixed_churn_predictions(seeds: int, fraction: float, examples: int = 100) -> np.ndarray:
    """(seeds, examples) labels where every pair of seeds disagrees on exactly `fraction` of the examples."""
    p = np.zeros((seeds, examples), int)
    p[:, : int(fraction * examples)] = np.arange(seeds)[:, None]  # seed i answers i there, 0 elsewhere
    return p


def test_pairwise_mean_ci_of_a_constant_matrix_is_exact():
    m = np.full((6, 6), 0.3)
    np.fill_diagonal(m, 0.0)
    ci = spread.pairwise_mean_ci(m, n_resamples=500)
    assert ci.estimate == pytest.approx(0.3) and ci.low == pytest.approx(0.3) and ci.high == pytest.approx(0.3)
    assert math.isnan(spread.pairwise_mean_ci(np.zeros((1, 1))).estimate)


def test_pairwise_mean_ci_matches_a_resample_by_resample_loop():
    rng = np.random.default_rng(1)
    p = rng.integers(0, 3, size=(12, 200))
    m = (p[:, None] != p[None]).mean(-1)  # expected disagreement 2/3
    ci = spread.pairwise_mean_ci(m, n_resamples=2000, seed=3)
    boot = []  # the same resamples, one at a time: pairs of distinct draws only
    for idx in np.random.default_rng(3).integers(0, 12, (2000, 12)):
        pairs = m[np.ix_(idx, idx)][idx[:, None] != idx[None, :]]
        boot.append(pairs.mean() if pairs.size else np.nan)
    boot = np.array(boot)
    low, high = np.quantile(boot[~np.isnan(boot)], [0.025, 0.975])
    assert ci.estimate == pytest.approx(np.mean([m[i, j] for i, j in itertools.combinations(range(12), 2)]))
    assert (ci.low, ci.high) == pytest.approx((low, high), rel=1e-12)
    assert abs(ci.estimate - 2 / 3) < 0.03 and ci.low > 0.6  # self-pairs (0) would pull it far down


def test_churn_ratio_ci_known_ratios():
    double = spread.churn_ratio_ci(_fixed_churn_predictions(5, 0.2), _fixed_churn_predictions(7, 0.1),
                                   n_resamples=300)
    assert double == pytest.approx((2.0, 2.0, 2.0))  # every resample with a pair gives exactly 0.2 / 0.1
    same = spread.churn_ratio_ci(*(np.random.default_rng(s).integers(0, 2, (10, 300)) for s in (0, 1)),
                                 n_resamples=1000)
    assert same.low < 1 < same.high and same.estimate == pytest.approx(1, abs=0.05)
    assert spread.churn_ratio_ci(_fixed_churn_predictions(4, 0.2), np.zeros((4, 100), int),
                                 n_resamples=100).high == np.inf  # no disagreement at all in the reference
    assert math.isnan(spread.churn_ratio_ci(np.zeros((1, 5)), np.zeros((3, 5))).estimate)


def test_std_ratio_ci_known_answers():
    rng = np.random.default_rng(0)
    x = rng.normal(size=400)
    same = spread.std_ratio_ci(x, x, n_resamples=2000)
    assert same.estimate == pytest.approx(1.0) and same.low < 1 < same.high
    double = spread.std_ratio_ci(2 * x + 5, rng.normal(size=400), n_resamples=2000)
    assert 1.7 < double.low < 2 < double.high < 2.3
    assert spread.std_ratio_ci(x[:20], np.zeros(20), n_resamples=200).high == np.inf  # no spread in the reference
    assert math.isnan(spread.std_ratio_ci([1.0, np.nan], x).estimate)  # one finite value left


# ----------------------------------------------------------------------------- ensembles


def test_majority_vote_and_mean_softmax_by_hand():
    preds = np.array([[0, 1, 2, 1], [0, 2, 2, 0], [1, 2, 0, 2]])
    np.testing.assert_array_equal(spread.majority_vote(preds, 3), [0, 2, 2, 0])  # last: a 3-way tie -> 0
    probs = np.array([[[0.55, 0.45]], [[0.55, 0.45]], [[0.0, 1.0]]])  # two lean to 0, one is sure of 1
    assert spread.majority_vote(probs.argmax(-1), 2)[0] == 0
    assert spread.mean_softmax_vote(probs)[0] == 1  # mean (0.37, 0.63)


def test_ensemble_curve_ends_on_the_members_and_on_the_whole_ensemble():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(6, 50))  # (seeds, examples, classes)
    y = rng.integers(0, 3, 50)
    curve = spread.ensemble_curve(probs, y, draws=20)
    np.testing.assert_array_equal(curve.sizes, [1, 2, 4, 6])
    members = np.mean(probs.argmax(-1) == y, axis=-1)  # (seeds,)
    assert set(curve.softmax[:, 0]) <= set(members) and np.array_equal(curve.softmax[:, 0], curve.vote[:, 0])
    np.testing.assert_allclose(curve.softmax[:, -1], np.mean(probs.mean(0).argmax(-1) == y))
    np.testing.assert_allclose(curve.vote[:, -1], np.mean(spread.majority_vote(probs.argmax(-1), 3) == y))
    same = spread.ensemble_curve(np.repeat(probs[:1], 4, axis=0), y, draws=5)  # identical members: flat
    np.testing.assert_allclose(same.softmax, members[0])
    np.testing.assert_allclose(same.vote, members[0])


# ----------------------------------------------------------------------------- the sketch


def test_sketch_is_an_exact_signed_bucket_sum():
    p, k = 100, 8
    sk = jax.jit(jax.vmap(lambda v: spread.sketch(v, k)))
    basis = np.asarray(sk(jnp.eye(p, dtype=jnp.float32)), np.float64).sum(-1)  # (P, k): the sketch as a matrix
    assert np.all((basis != 0).sum(axis=1) == 1) and set(np.unique(basis)) <= {-1.0, 0.0, 1.0}  # one ±1 each
    x = (np.random.default_rng(0).normal(size=p) * np.logspace(0, 7, p)).astype(np.float32)  # 7 decades apart
    exact = x.astype(np.float64) @ basis  # (k,) in float64
    got = np.asarray(sk(jnp.asarray(x)[None]), np.float64)[0].sum(-1)
    np.testing.assert_allclose(got, exact, rtol=0, atol=1e-12 * np.abs(x).max())  # float32 sums err by ~1e-7


def test_sketch_distance_exact_for_one_ulp_and_close_for_dense_differences():
    rng = np.random.default_rng(0)
    x = rng.normal(size=15210).astype(np.float32)  # the MNIST-1D MLP's parameter count
    sk = jax.jit(lambda v: spread.sketch(v, 512))
    y = x.copy()
    y[123] = np.nextafter(y[123], np.float32(np.inf))
    assert spread.sketch_distance(sk(x), sk(y)) == float(y[123]) - float(x[123])  # exactly one ulp
    assert spread.sketch_distance(sk(x), sk(x)) == 0.0
    ratios = []
    for s in range(8):  # relative sd of the squared distance ≤ √(2/512) = 0.0625
        z = x + rng.normal(size=x.size).astype(np.float32) * np.float32(10.0 ** -(s + 1))
        ratios.append(spread.sketch_distance(sk(x), sk(z)) / np.linalg.norm(z.astype(np.float64) - x))
    assert np.all(np.abs(np.array(ratios) ** 2 - 1) < 5 * math.sqrt(2 / 512)) and abs(np.mean(ratios) - 1) < 0.05


def test_sketch_is_unbiased_over_its_keys():
    d = np.random.default_rng(1).normal(size=300).astype(np.float32)
    sketches = jax.jit(jax.vmap(lambda s: spread.sketch(jnp.asarray(d), 16, seed=s)))(jnp.arange(200))
    sq = np.sum(np.asarray(sketches, np.float64).sum(-1) ** 2, axis=-1)  # (keys,)
    truth = float(np.sum(d.astype(np.float64) ** 2))
    assert abs(np.mean(sq) / truth - 1) < 4 * math.sqrt(2 / 16) / math.sqrt(200)  # E‖S d‖² = ‖d‖²


# ----------------------------------------------------------------------------- twins and their drift


def _bits(a):
    return np.asarray(a).view(np.int32).astype(np.int64)


def _state():
    cfg = config_lib.Config()
    streams = train.Streams(*(train.stream_key(0, s) for s in RANDOMNESS_STREAMS))
    return cfg, train.init_state(streams, 0.01, cfg=cfg, in_features=40, num_classes=10)


def test_perturb_one_ulp_changes_exactly_one_weight_by_one_ulp():
    rng = np.random.default_rng(0)
    params = tuple(mlp.Layer(jnp.asarray(rng.normal(size=shape), jnp.float32), jnp.zeros(shape[1], jnp.float32))
                   for shape in ((3, 5), (5, 4), (4, 2)))
    moved = spread.perturb_one_ulp(params)
    diffs = [_bits(b) - _bits(a) for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(moved))]
    assert sum(np.count_nonzero(d) for d in diffs) == 1 and all(set(np.unique(np.abs(d))) <= {0, 1} for d in diffs)
    assert float(moved[0].w[0, 0]) != float(params[0].w[0, 0])


def test_ulp_hook_moves_only_the_runs_from_first_on():
    cfg, state = _state()
    hook = spread.UlpFrom(first=4)
    for run, moved in ((0, False), (3, False), (4, True), (7, True)):
        out = hook(state, jnp.int32(run), cfg)
        diffs = [np.count_nonzero(_bits(b) - _bits(a)) for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(out))]
        assert sum(diffs) == int(moved)


def test_snapshot_hook_gives_the_sketch_norm_and_test_predictions():
    cfg, state = _state()
    x = np.random.default_rng(0).normal(size=(7, 40)).astype(np.float32)
    out = spread.Snapshot(k=64)(state, None, train.Data(x, None, x, None), cfg)
    flat = np.concatenate([np.ravel(leaf) for leaf in jax.tree.leaves(state.params)]).astype(np.float64)
    assert out["sketch"].shape == (64, 2) and float(out["norm"]) == pytest.approx(np.linalg.norm(flat), rel=1e-6)
    np.testing.assert_array_equal(out["predictions"], train.predict(state.params, state.bn_state, x, cfg=cfg))
    # the sketch keeps norms: its squared norm is ‖θ‖² within a few sd √(2/64)
    assert abs(np.sum(np.asarray(out["sketch"], np.float64).sum(-1) ** 2) / (flat @ flat) - 1) < 4 * math.sqrt(2 / 64)


def test_drift_is_the_relative_distance_and_the_churn_to_the_reference():
    ref = {"params": np.array([[[3.0, 4.0], [6.0, 8.0]]], np.float32), "predictions": np.array([[[0, 1, 2, 3]] * 2])}
    twin = {"params": np.array([[[3.0, 4.0], [6.0, 18.0]]], np.float32),
            "predictions": np.array([[[0, 1, 2, 3], [0, 0, 0, 3]]])}
    for run in (ref, twin):  # (runs, evaluations, k, 2) and (runs, evaluations)
        run["sketch"] = np.asarray(jax.vmap(jax.vmap(lambda v: spread.sketch(v, 4)))(run["params"]))
        run["norm"] = np.linalg.norm(run["params"], axis=-1)
    dist, churn = spread.drift(ref, twin)  # (runs, evaluations) = (1, 2)
    np.testing.assert_allclose(dist, [[0.0, 1.0]])  # ‖(0, 10)‖ / ‖(6, 8)‖: one entry differs, sketched exactly
    np.testing.assert_allclose(churn, [[0.0, 0.5]])


def test_pair_errors_by_brute_force():
    rng = np.random.default_rng(0)
    preds, y = rng.integers(0, 4, (5, 60)), rng.integers(0, 4, 60)
    err, ch = spread.pair_errors(preds, y)
    pairs = list(itertools.combinations(range(5), 2))
    np.testing.assert_allclose(err, [(np.mean(preds[i] != y) + np.mean(preds[j] != y)) / 2 for i, j in pairs])
    np.testing.assert_allclose(ch, [np.mean(preds[i] != preds[j]) for i, j in pairs])
    assert np.all(ch <= 2 * err + 1e-12)  # two right answers agree
