"""netalchemy/oscillation.py: update dynamics on hand-made arrays, the replay against an independent gradient,
the hook inside a sweep, and the speed helpers."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from netalchemy import config as C
from netalchemy import data as data_lib
from netalchemy import losses, mlp, oscillation as O, sweep, train
from sweep_helpers import tiny


def test_sign_flip_fraction_by_hand():
    updates = jnp.array([[1.0, -1.0, 1.0, 0.0],
                         [-1.0, -1.0, 2.0, 1.0],
                         [1.0, -2.0, 3.0, 1.0]])
    # pair 1: params 0-2 moved in both steps (param 3 did not), param 0 flips: 1/3; pair 2: all moved, 1 flip: 1/4
    assert float(O.sign_flip_fraction(updates)) == pytest.approx((1 / 3 + 1 / 4) / 2)
    assert float(O.sign_flip_fraction(jnp.array([[1.0, 2.0], [-1.0, -3.0]]))) == 1.0
    assert float(O.sign_flip_fraction(jnp.array([[1.0, -2.0], [3.0, -1.0]]))) == 0.0


def test_log_interquartile_ratio_against_numpy():
    assert float(O.log_interquartile_ratio(jnp.array([[0.1, -0.1, 0.1, -0.1, 0.0]]))) == pytest.approx(0.0, abs=1e-7)
    u = np.random.default_rng(0).normal(size=(3, 101)).astype(np.float32)
    u[:, :5] = 0.0  # unmoved parameters are left out
    q25, q75 = np.quantile(np.abs(u[:, 5:]), [0.25, 0.75], axis=1)
    assert float(O.log_interquartile_ratio(jnp.asarray(u))) == pytest.approx(np.mean(np.log10(q75 / q25)), rel=1e-5)
    # scale-free: the learning rate's size does not enter
    assert float(O.log_interquartile_ratio(jnp.asarray(1e-3 * u))) == pytest.approx(np.mean(np.log10(q75 / q25)),
                                                                                   rel=1e-4)


@pytest.fixture(scope="module")
def setting():
    cfg = tiny("optim.name=sgd", "optim.lr=0.1")
    ds = data_lib.load(cfg.data)
    data = train.Data(*(jnp.asarray(a) for a in (ds.x_train, ds.y_train, ds.x_test, ds.y_test)))
    return cfg, ds, data


def initial(cfg, ds, seed=0):
    streams = train.Streams(*(train.stream_key(seed, s) for s in C.RANDOMNESS_STREAMS))
    state = train.init_state(streams, jnp.asarray(cfg.optim.lr), cfg=cfg, in_features=ds.x_train.shape[1],
                             num_classes=ds.num_classes)
    return state, streams


def test_replayed_sgd_step_is_minus_lr_times_the_minibatch_gradient(setting):
    cfg, ds, data = setting
    state, streams = initial(cfg, ds)
    idx = train.batch_indices(streams.data, state.step, n=ds.x_train.shape[0], batch_size=cfg.train.batch_size,
                              sampling=cfg.train.sampling)
    loss = lambda p: losses.cross_entropy(mlp.apply(p, state.bn_state, data.x_train[idx], cfg=cfg.model,  # noqa: E731
                                                    train=True)[0], data.y_train[idx])
    grad = jnp.concatenate([jnp.ravel(g) for g in jax.tree.leaves(jax.grad(loss)(state.params))])
    updates = O.replay_updates(state, streams, data, cfg=cfg, steps=3)
    assert updates.shape == (3, grad.size)
    np.testing.assert_allclose(updates[0], -0.1 * grad, rtol=1e-4, atol=1e-6)
    # the replay is the training trajectory: its updates add up to three training steps
    trained = state
    for _ in range(3):
        trained = train.train_step(trained, streams, data, jnp.asarray(0.1), cfg=cfg)[0]
    flat = lambda p: np.concatenate([np.ravel(a) for a in jax.tree.leaves(p)])  # noqa: E731
    np.testing.assert_allclose(flat(state.params) + np.asarray(updates).sum(0), flat(trained.params), atol=1e-6)


def test_adams_first_step_is_the_same_size_for_every_parameter(setting):
    """Adam's first update is −lr·g/(|g| + eps) ≈ −lr·sign(g): no spread; SGD's, −lr·g, spans decades."""
    _, ds, data = setting
    for name, expect_flat in (("adam", True), ("sgd", False)):
        cfg = tiny(f"optim.name={name}", "optim.lr=0.01")
        state, streams = initial(cfg, ds)
        spread = float(O.log_interquartile_ratio(O.replay_updates(state, streams, data, cfg=cfg, steps=2)[:1]))
        assert (spread < 1e-3) == expect_flat, (name, spread)


def test_the_hook_in_a_sweep_measures_what_a_direct_call_does(setting):
    cfg, ds, data = setting
    hook = O.UpdateDynamics(3)
    r = sweep.run(cfg, dataset=ds, measure=hook, progress=False)
    n_evals = len(train.evaluation_steps(cfg))
    assert r.measures["sign_flips"].shape == r.measures["step_spread"].shape == (cfg.seeds.n, n_evals)
    state, streams = initial(cfg, ds, seed=1)
    direct = hook(state, streams, data, cfg)
    assert r.measures["sign_flips"][1, 0] == pytest.approx(float(direct["sign_flips"]), abs=1e-6)
    assert r.measures["step_spread"][1, 0] == pytest.approx(float(direct["step_spread"]), abs=1e-5)
    assert np.all((r.measures["sign_flips"] >= 0) & (r.measures["sign_flips"] <= 1))
    with pytest.raises(ValueError):
        O.UpdateDynamics(1)
