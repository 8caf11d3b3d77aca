"""netalchemy/measures.py: each measurement hook against an independent computation on a known state, and
inside the engine against the states it trains (gradient noise against its exact sampling formula, its
memory bound; ReLU activity on a hand-built net; Santurkar et al.'s measures written out on the flat
parameter vector); throughput through the engine's program."""

from types import SimpleNamespace
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from netalchemy import backprop, measures, mlp, sweep, train
from netalchemy.config import Config, DataConfig, ModelConfig, TrainConfig, override
from netalchemy.data import load


@pytest.fixture(scope="module")
def mnist1d():
    return load(DataConfig())


def toy_net(n=64, features=5, classes=3, seed=0):
    """A ReLU net (hidden 8) and a random n-example set."""
    cfg = ModelConfig(hidden=(8,))
    kx, ky, kp = jax.random.split(jax.random.key(seed), 3)
    params, state = mlp.init(kp, cfg, in_features=features, num_classes=classes)
    return cfg, params, state, jax.random.normal(kx, (n, features)), jax.random.randint(ky, (n,), 0, classes)


# ------------------------------------------------------------------------------------------ gradient noise
def test_minibatch_gradient_noise_matches_the_sampling_formula():
    """E‖g_B − g_N‖² = (1/B − 1/N) · N/(N − 1) · mean_i ‖g_i − g_N‖² for B drawn without replacement."""
    cfg, params, state, x, y = toy_net()
    n, batch = x.shape[0], 8
    flat = lambda xs, ys: ravel_pytree(backprop.autodiff_grad(params, state, xs, ys, cfg=cfg)[0])[0]  # noqa: E731

    @jax.jit
    def spread():
        per_example = jax.vmap(lambda xi, yi: flat(xi[None], yi[None]))(x, y)  # (n, P)
        full = flat(x, y)
        return jnp.max(jnp.abs(per_example.mean(axis=0) - full)), jnp.mean(jnp.sum(jnp.square(per_example - full), 1))

    mean_error, spread = map(float, spread())
    assert mean_error < 1e-5  # the full gradient is the mean of the per-example gradients
    exact = (1 / batch - 1 / n) * n / (n - 1) * spread
    got = float(measures.minibatch_gradient_noise(params, state, x, y, jax.random.key(1), cfg=cfg, batch_size=batch,
                                                  minibatches=4096))
    assert got == pytest.approx(exact, rel=0.05)


def test_the_memory_bound_changes_how_many_at_once_not_the_value():
    """The chunk of minibatches evaluated at once follows `examples_at_once`; the subsets (keys) and so the value
    do not. XLA's own accounting of the compiled program shows the live memory shrinking with the bound."""
    cfg, params, state, x, y = toy_net(n=512)
    noise = lambda at_once: measures.minibatch_gradient_noise(  # noqa: E731
        params, state, x, y, jax.random.key(2), cfg=cfg, batch_size=64, minibatches=64, examples_at_once=at_once)
    values = [float(noise(a)) for a in (64, 512, 4096)]  # 1, 8 and 64 minibatches at once
    np.testing.assert_allclose(values, values[0], rtol=1e-5)
    temp = [measures.minibatch_gradient_noise.lower(params, state, x, y, jax.random.key(2), cfg=cfg, batch_size=64,
                                                    minibatches=64, examples_at_once=a).compile().memory_analysis()
            for a in (64, 4096)]
    if any(t is None for t in temp):
        pytest.skip("this backend reports no memory analysis")
    assert temp[0].temp_size_in_bytes < temp[1].temp_size_in_bytes


def test_the_noise_hook_measures_the_states_the_engine_trains(mnist1d):
    """The hook's step-0 and final columns equal a direct computation on the initial and final params."""
    cfg = override(Config(model=ModelConfig(hidden=(8,))), ["seeds.n=2", "train.batch_size=100", "train.steps=6",
                                                            "train.eval_every=3", "train.chunk_steps=6"])
    hook = measures.GradientNoise(batch_sizes=(8, 64, 8000), minibatches=4)  # 8000 > N: left out
    r = sweep.run(cfg, dataset=mnist1d, progress=False, measure=hook)
    assert r.measures["noise"].shape == (2, 3, 2)  # (runs, evaluations at 0, 3, 6, batch sizes)
    x, y = jnp.asarray(mnist1d.x_train), jnp.asarray(mnist1d.y_train, jnp.int32)
    params, bn = sweep.initial_params(cfg, r.seeds, in_features=x.shape[1], num_classes=mnist1d.num_classes)
    for column, (p, s, step) in ((0, (params, bn, 0)), (-1, (r.final.params, r.final.bn_state, 6))):
        for i, seed in enumerate(r.seeds):
            key = jax.random.fold_in(train.stream_key(int(seed), "data"), step)
            direct = [measures.minibatch_gradient_noise(*jax.tree.map(lambda a: jnp.asarray(a[i]), (p, s)), x, y,
                                                        jax.random.fold_in(key, b), cfg=cfg.model, batch_size=b,
                                                        minibatches=4) for b in (8, 64)]
            np.testing.assert_allclose(r.measures["noise"][i, column], direct, rtol=1e-4)
    assert np.all(r.measures["noise"][:, :, 0] > r.measures["noise"][:, :, 1])  # smaller batches: noisier


def test_effective_batch_size_and_slopes():
    n = 4000
    sizes = np.array([8, 32, 128, 512, 2048])
    np.testing.assert_allclose(measures.effective_batch_size(sizes, n), 1 / (1 / sizes - 1 / n))
    rng = np.random.default_rng(0)
    exact = 3.0 / measures.effective_batch_size(sizes, n) * np.exp(0.02 * rng.normal(size=(6, len(sizes))))
    np.testing.assert_allclose(measures.noise_slopes(sizes, exact, n), -1.0, atol=0.03)
    sqrt_law = 3.0 / np.sqrt(sizes) * np.ones((6, 1))
    np.testing.assert_allclose(measures.noise_slopes(sizes, sqrt_law, n), -0.5, atol=0.1)


# -------------------------------------------------------------------------------------------- ReLU activity
def test_relu_activity_counts_active_pairs_and_dead_units():
    cfg = Config(model=ModelConfig(hidden=(3, 2)))
    # Layer 1: unit 0 is on iff x > 0, unit 1 always on (bias 1), unit 2 never on (bias −1, weight 0).
    # Layer 2: unit 0 sums layer 1 (always on), unit 1 has bias −1 and weight 0 (dead).
    params = (mlp.Layer(jnp.array([[1.0, 0.0, 0.0]]), jnp.array([0.0, 1.0, -1.0])),
              mlp.Layer(jnp.array([[1.0, 0.0]] * 3), jnp.array([0.0, -1.0])), mlp.Layer(jnp.ones((2, 2)), jnp.zeros(2)))
    x = jnp.array([[1.0], [-1.0], [2.0], [-3.0]])
    data = train.Data(x, jnp.zeros(4, jnp.int32), x, jnp.zeros(4, jnp.int32))
    got = measures.relu_activity(SimpleNamespace(params=params, bn_state=()), None, data, cfg)
    np.testing.assert_allclose(np.asarray(got["active"]), [(2 + 4 + 0) / 12, 4 / 8])
    np.testing.assert_allclose(np.asarray(got["dead"]), [1 / 3, 1 / 2])


# ------------------------------------------------------------------------------- smoothness (Santurkar et al.)
def small_net(batch_norm: bool, seed: int = 0):
    """A float64 net and a 16-example training set that is one full batch (so the hook's minibatch is all of it)."""
    cfg = Config(model=ModelConfig(hidden=(6, 5), batch_norm=batch_norm, dtype="float64"),
                 train=TrainConfig(batch_size=16))
    k_init, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params, state = mlp.init(k_init, cfg.model, in_features=4, num_classes=3)
    x = jax.random.normal(k_x, (16, 4), jnp.float64)
    y = jax.random.randint(k_y, (16,), 0, 3)
    return cfg, params, state, x, y


def reference(params, state, x, y, lr, etas, *, cfg):
    """The measures written out directly on the flattened parameter vector (one jit)."""
    loss_of = lambda p: backprop.objective(p, state, x, y, cfg=cfg)[0]  # noqa: E731 (training mode, batch stats)
    theta, unravel = ravel_pytree(params)
    flat_loss = lambda t: loss_of(unravel(t))  # noqa: E731
    g = jax.grad(flat_loss)(theta)
    along = jax.vmap(lambda e: flat_loss(theta - e * g))(etas)
    change = jax.vmap(lambda e: jnp.linalg.norm(g - jax.grad(flat_loss)(theta - e * g)))(etas)
    # ICS (Santurkar Def. 2.1) of the output layer: every hidden layer stepped, the output layer not.
    grads = jax.grad(loss_of)(params)
    stepped = jax.tree.map(lambda p, d: p - lr * d, params, grads)
    G = ravel_pytree(grads[-1])[0]
    G2 = ravel_pytree(jax.grad(loss_of)((*stepped[:-1], params[-1]))[-1])[0]
    return loss_of(params), along, change, jnp.linalg.norm(g), jnp.linalg.norm(G - G2), G @ G2 / (
        jnp.linalg.norm(G) * jnp.linalg.norm(G2))


@pytest.mark.parametrize("batch_norm", [False, True])
def test_landscape_measures_match_a_direct_computation(batch_norm):
    with jax.enable_x64(True):
        cfg, params, state, x, y = small_net(batch_norm)
        lr, etas = 0.3, (0.1, 0.5, 2.0)
        at = train.TrainState(jnp.zeros((), jnp.int32), params, state, (), jnp.full((), -1, jnp.int32))
        streams = train.Streams(*(jax.random.key(1),) * 3)

        def measure(hook):
            return jax.tree.map(np.asarray, jax.jit(lambda s, d: hook(s, streams, d, cfg))(at, train.Data(x, y, x, y)))

        m = measure(measures.Smoothness(etas, lr))
        loss, along, change, gnorm, ics_l2, ics_cos = map(np.asarray, jax.jit(reference, static_argnames="cfg")(
            params, state, x, y, lr, jnp.asarray(etas), cfg=cfg.model))
        np.testing.assert_allclose(m["loss"], loss, rtol=1e-12)
        np.testing.assert_allclose(m["losses_along"], along, rtol=1e-10)
        np.testing.assert_allclose(m["grad_change"], change, rtol=1e-8, atol=1e-14)
        np.testing.assert_allclose(m["grad_norm"], gnorm, rtol=1e-12)
        np.testing.assert_allclose(m["loss_range"], along.max() - along.min(), rtol=1e-10)
        np.testing.assert_allclose(m["grad_pred"], change.max(), rtol=1e-8)
        np.testing.assert_allclose(m["beta"], np.max(change / (np.asarray(etas) * gnorm)), rtol=1e-8)
        np.testing.assert_allclose(m["ics_l2"][-1], ics_l2, rtol=1e-8)
        np.testing.assert_allclose(m["ics_cos"][-1], ics_cos, rtol=1e-8)
        grads = jax.grad(lambda p: backprop.objective(p, state, x, y, cfg=cfg.model)[0])(params)
        layer_norms = [np.linalg.norm(ravel_pytree(g)[0]) for g in grads[1:]]
        np.testing.assert_allclose(m["ics_rel"], m["ics_l2"] / layer_norms, rtol=1e-10)
        assert m["ics_l2"].shape == (2,)
        # With lr = 0 nothing moves before layer i: no shift at all.
        still = measure(measures.Smoothness(etas, 0.0))
        np.testing.assert_allclose(still["ics_l2"], 0.0, atol=1e-15)
        np.testing.assert_allclose(still["ics_cos"], 1.0, rtol=1e-12)


def test_the_smoothness_hook_sees_the_state_and_minibatch_of_the_next_step(mnist1d):
    """Evaluating after every step, the hook's L(θ_t) and ‖g‖ on step t's minibatch are the engine's own
    batch loss and gradient norm of step t (the next interval's): same state, same batch."""
    cfg = override(Config(), ["model.hidden=[8]", "model.batch_norm=true", "train.steps=3", "train.eval_every=1",
                              "train.batch_size=25", "seeds.n=2", "optim.name=sgd", "train.grad_norm=true"])
    r = sweep.run(cfg, dataset=mnist1d, progress=False, measure=measures.Smoothness((0.1, 1.0), 0.1))
    assert r.measures["beta"].shape == (2, 4) and r.measures["ics_rel"].shape == (2, 4, 1)
    np.testing.assert_allclose(r.measures["loss"][:, :-1], r.history["batch_loss"][:, 1:], rtol=1e-5)
    np.testing.assert_allclose(r.measures["grad_norm"][:, :-1], r.history["grad_norm"][:, 1:], rtol=1e-5)


# ------------------------------------------------------------------------------------------------ throughput
def test_throughput_times_one_interval_of_the_engines_program(mnist1d, monkeypatch):
    """One warm-up call and `repeats` timed calls of `sweep.train_chunk`, each of one interval of one run."""
    chunk = mock.Mock(wraps=sweep.train_chunk)
    monkeypatch.setattr(sweep, "train_chunk", chunk)
    cfg = override(Config(model=ModelConfig(hidden=(8,))), ["train.batch_size=32", "train.steps=16",
                                                            "train.eval_every=16", "train.chunk_steps=16"])
    rates = measures.throughput(cfg, mnist1d, repeats=3)
    assert rates.shape == (3,) and np.all(np.isfinite(rates)) and np.all(rates > 0)
    assert chunk.call_count == 4 and all(c.kwargs["intervals"] == 1 for c in chunk.call_args_list)
    assert chunk.call_args_list[0].args[0].step.shape == (1,)  # one run
