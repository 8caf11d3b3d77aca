"""The model, the loss and the two gradients: claims M1–M3 and edge cases."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netalchemy import backprop, losses, mlp
from netalchemy.config import ModelConfig


def make(hidden=(6, 5), batch=8, *, seed=0, in_features=4, classes=3, dtype="float64", **model):
    cfg = ModelConfig(hidden=hidden, dtype=dtype, **model)
    k_init, k_x, k_y = jax.random.split(jax.random.key(seed), 3)
    params, state = mlp.init(k_init, cfg, in_features=in_features, num_classes=classes)
    x = jax.random.normal(k_x, (batch, in_features), cfg.dtype)
    y = jax.random.randint(k_y, (batch,), 0, classes)
    return cfg, params, state, x, y


def max_rel_error(a, b, floor=1e-12):
    """Largest max|a−b| / max(max|a|, max|b|, floor) per leaf, over all leaves.

    The floor stops a gradient that is zero in exact arithmetic (e.g. every unit dropped),
    computed as ±1e-17 by one method and 0 by the other, from counting as a 100% error.
    """
    errs = jax.tree.map(lambda u, v: float(jnp.max(jnp.abs(u - v)) / max(jnp.max(jnp.abs(u)), jnp.max(jnp.abs(v)), floor)), a, b)
    return max(jax.tree.leaves(errs), default=0.0)


# Compiled once per shape: far cheaper here than op-by-op dispatch of a new shape.
hand_grad = jax.jit(backprop.hand_grad, static_argnames="cfg")
autodiff_grad = jax.jit(backprop.autodiff_grad, static_argnames="cfg")


def both_grads(cfg, params, state, x, y, **kw):
    hand, aux_h = hand_grad(params, state, x, y, cfg=cfg, **kw)
    auto, aux_a = autodiff_grad(params, state, x, y, cfg=cfg, **kw)
    assert jax.tree.structure(hand) == jax.tree.structure(auto)
    return hand, auto, aux_h, aux_a


# ---------------------------------------------------------------- M1: the article's number


def test_m1_cross_entropy_of_the_article_example():
    value = losses.cross_entropy_from_probs(jnp.array([1.0, 0.0]), jnp.array([0.7, 0.3]))
    assert float(value) == pytest.approx(-math.log(0.7), rel=1e-6)
    assert abs(float(value) - 0.357) < 5e-4


def test_cross_entropy_of_logits_equals_formula_on_probabilities():
    logits = jnp.array([[2.0, -1.0, 0.5], [0.0, 0.0, 0.0]])
    labels = jnp.array([0, 2])
    p = np.exp(np.asarray(logits)) / np.exp(np.asarray(logits)).sum(-1, keepdims=True)
    expected = -np.mean(np.log(p[[0, 1], [0, 2]]))
    assert float(losses.cross_entropy(logits, labels)) == pytest.approx(expected, rel=1e-6)
    # Uniform logits over 3 classes: loss ln 3 (claim M6's reference point).
    assert float(losses.cross_entropy(jnp.zeros((4, 3)), jnp.arange(4) % 3)) == pytest.approx(math.log(3), rel=1e-6)


def test_accuracy_and_penalties_known_values():
    assert float(losses.accuracy(jnp.array([[1.0, 0.0], [0.0, 1.0], [3.0, 2.0]]), jnp.array([0, 0, 0]))) == pytest.approx(2 / 3)
    params = (mlp.Layer(jnp.array([[1.0, -2.0]]), jnp.array([5.0, 5.0])), mlp.Layer(jnp.array([[3.0], [0.0]]), jnp.array([7.0])))
    assert float(losses.l1_penalty(params)) == 6.0  # biases excluded
    assert float(losses.l2_penalty(params)) == 0.5 * (1 + 4 + 9)


# ---------------------------------------------------------------- M2: ∂L/∂z = y_pred − y_true


def test_m2_output_delta_is_softmax_minus_onehot_over_batch():
    with jax.enable_x64(True):
        logits = jax.random.normal(jax.random.key(3), (5, 4), jnp.float64) * 3
        labels = jnp.array([0, 3, 1, 1, 2])
        auto = jax.grad(losses.cross_entropy)(logits, labels)
        hand = backprop.output_delta(logits, labels)
        np.testing.assert_allclose(hand, auto, rtol=1e-12, atol=1e-15)
        # Central finite differences on one entry.
        h, i, j = 1e-6, 2, 1
        bump = jnp.zeros_like(logits).at[i, j].set(h)
        fd = (losses.cross_entropy(logits + bump, labels) - losses.cross_entropy(logits - bump, labels)) / (2 * h)
        assert float(fd) == pytest.approx(float(hand[i, j]), rel=1e-6)


def test_m2_single_example_matches_the_article_numbers():
    # y_true = [1, 0], y_pred = softmax(z) = [0.7, 0.3]  ->  ∂L/∂z = [−0.3, 0.3].
    z = jnp.log(jnp.array([[0.7, 0.3]]))
    np.testing.assert_allclose(backprop.output_delta(z, jnp.array([0])), [[-0.3, 0.3]], atol=1e-6)


# ---------------------------------------------------------------- M3: the full backward pass

LAYER_KINDS = [
    dict(),
    dict(batch_norm=True),
    dict(dropout=0.5),
    dict(batch_norm=True, dropout=0.3),
    dict(activation="linear"),
    dict(init="lecun"),
]


@pytest.mark.parametrize("model", LAYER_KINDS)
@pytest.mark.parametrize("hidden", [(), (7,), (6, 5, 4, 3)])
def test_m3_hand_equals_autodiff_float64(model, hidden):
    with jax.enable_x64(True):
        cfg, params, state, x, y = make(hidden, **model)
        hand, auto, aux_h, aux_a = both_grads(cfg, params, state, x, y, l1=1e-3, l2=1e-2, key=jax.random.key(9))
        assert max_rel_error(hand, auto) <= 1e-10
        assert float(aux_h.loss) == float(aux_a.loss)
        assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)), aux_h.state, aux_a.state))


def test_m3_hand_equals_autodiff_float32():
    cfg, params, state, x, y = make((16, 16), batch=32, dtype="float32", batch_norm=True, dropout=0.2)
    hand, auto, *_ = both_grads(cfg, params, state, x, y, l2=1e-3, key=jax.random.key(1))
    assert max_rel_error(hand, auto, floor=1e-6) <= 1e-5


def test_m3_relu_derivative_is_the_active_mask():
    cfg = ModelConfig(hidden=(3,))
    u = jnp.array([[-1.0, 0.0, 2.0]])
    g = jnp.ones_like(u)
    np.testing.assert_array_equal(backprop.activation_backward(g, u, cfg), [[0.0, 0.0, 1.0]])
    np.testing.assert_array_equal(jax.grad(lambda v: jnp.sum(mlp.activation(v, cfg)))(u), [[0.0, 0.0, 1.0]])


@settings(max_examples=8, deadline=None)  # each example compiles two float64 programs
@given(depth=st.integers(0, 4), width=st.integers(1, 9), batch=st.integers(1, 12), bn=st.booleans(),
       dropout=st.sampled_from([0.0, 0.1, 0.5, 0.9]), l1=st.sampled_from([0.0, 1e-2]),
       l2=st.sampled_from([0.0, 1e-1]), seed=st.integers(0, 2**16))
def test_hand_equals_autodiff_on_random_configurations(depth, width, batch, bn, dropout, l1, l2, seed):
    with jax.enable_x64(True):
        cfg, params, state, x, y = make((width,) * depth, batch, seed=seed, batch_norm=bn, dropout=dropout)
        hand, auto, *_ = both_grads(cfg, params, state, x, y, l1=l1, l2=l2, key=jax.random.key(seed + 1))
        # 1e-8, not the gradcheck grid's 1e-10, and errors floored at 1e-8 of the largest
        # gradient entry: hypothesis finds width-1 batch-norm nets whose gradients are
        # near-cancelling sums. A weight feeding a one-unit batch norm has gradient 0 in exact
        # arithmetic (the normalisation undoes its scale), computed as ~5e-11 by both methods,
        # which then differ by 1e-17: round-off of the net's O(1) gradients, not a wrong
        # derivative. Two correct summation orders elsewhere differ by a few 1e-9 relative.
        scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(auto)) if jax.tree.leaves(auto) else 0.0
        assert max_rel_error(hand, auto, floor=max(1e-12, 1e-8 * scale)) <= 1e-8


def test_hand_grad_jits_and_vmaps_over_seeds():
    cfg, _, _, x, y = make((8, 8), dtype="float32", batch_norm=True, dropout=0.25)
    seeds = jax.random.split(jax.random.key(0), 5)

    def per_seed(key):
        params, state = mlp.init(key, cfg, in_features=4, num_classes=3)
        return backprop.hand_grad(params, state, x, y, cfg=cfg, l2=1e-3, key=key)[0], \
            backprop.autodiff_grad(params, state, x, y, cfg=cfg, l2=1e-3, key=key)[0]

    hand, auto = jax.jit(jax.vmap(per_seed))(seeds)
    assert hand[0].w.shape == (5, 4, 8)
    assert max_rel_error(hand, auto, floor=1e-6) <= 1e-5
    # The vmapped gradient of seed 2 is the gradient computed for seed 2 alone.
    alone, _ = jax.jit(per_seed)(seeds[2])
    assert max_rel_error(jax.tree.map(lambda a: a[2], hand), alone, floor=1e-6) <= 1e-6


def test_gradient_fn_selects_by_name():
    assert backprop.gradient_fn("hand") is backprop.hand_grad
    assert backprop.gradient_fn("autodiff") is backprop.autodiff_grad
    with pytest.raises(ValueError):
        backprop.gradient_fn("numeric")


# ---------------------------------------------------------------- the model itself


def test_init_shapes_and_he_scale():
    cfg = ModelConfig(hidden=(512, 256), batch_norm=True)
    params, state = mlp.init(jax.random.key(0), cfg, in_features=4096, num_classes=2)
    assert [p.w.shape for p in params] == [(4096, 512), (512, 256), (256, 2)]
    assert params[0].b is None and params[0].scale.shape == (512,) and params[-1].b.shape == (2,)
    assert len(state) == 2 and float(jnp.sum(state[0].var)) == 512
    assert float(jnp.var(params[0].w)) == pytest.approx(2 / 4096, rel=0.02)  # He: 2 / fan_in
    assert mlp.num_params(params) == 4096 * 512 + 2 * 512 + 512 * 256 + 2 * 256 + 256 * 2 + 2


def test_without_nonlinearity_the_net_is_one_linear_map():
    # Claim M4's algebra: a deep linear net equals x @ (W1 W2 W3) + b_eff.
    with jax.enable_x64(True):
        cfg, params, state, x, _ = make((5, 6), activation="linear")
        logits, _ = mlp.apply(params, state, x, cfg=cfg, train=False)
        w = params[0].w @ params[1].w @ params[2].w
        b = (params[0].b @ params[1].w + params[1].b) @ params[2].w + params[2].b
        np.testing.assert_allclose(logits, x @ w + b, rtol=1e-12)


def test_batch_norm_train_uses_batch_stats_and_eval_uses_running_stats():
    cfg, params, state, x, _ = make((4,), batch=64, dtype="float32", batch_norm=True)
    x = x * 3 + 2
    out = mlp.forward(params, state, x, cfg=cfg, train=True)
    u = out.hidden[0].pre_activation
    np.testing.assert_allclose(jnp.mean(u, 0), 0, atol=1e-5)  # scale 1, offset 0 at init
    np.testing.assert_allclose(jnp.var(u, 0), 1, atol=1e-3)
    z = x @ params[0].w
    np.testing.assert_allclose(out.state[0].mean, 0.1 * jnp.mean(z, 0), rtol=1e-5)
    logits_eval, state_eval = mlp.apply(params, out.state, x, cfg=cfg, train=False)
    assert state_eval == out.state  # evaluation leaves the running averages alone
    manual = (z - out.state[0].mean) / jnp.sqrt(out.state[0].var + cfg.bn_eps)
    np.testing.assert_allclose(mlp.forward(params, out.state, x, cfg=cfg, train=False).hidden[0].pre_activation, manual, rtol=1e-5, atol=1e-5)


def test_dropout_is_inverted_and_only_in_training():
    cfg, params, state, x, _ = make((2000,), batch=4, dtype="float32", dropout=0.75)
    out = mlp.forward(params, state, x, cfg=cfg, train=True, key=jax.random.key(0))
    mask = out.hidden[0].mask
    assert set(np.unique(np.asarray(mask))) == {0.0, 4.0}
    assert float(jnp.mean(mask == 0)) == pytest.approx(0.75, abs=0.02)
    assert mlp.forward(params, state, x, cfg=cfg, train=False).hidden[0].mask is None
    same = mlp.forward(params, state, x, cfg=cfg, train=True, key=jax.random.key(0)).hidden[0].mask
    assert bool(jnp.all(same == mask))  # the key fixes the mask
    with pytest.raises(ValueError, match="key"):
        mlp.forward(params, state, x, cfg=cfg, train=True)


# ---------------------------------------------------------------- edge cases


def all_finite(tree):
    return all(bool(jnp.all(jnp.isfinite(a))) for a in jax.tree.leaves(tree))


def test_batch_of_one_with_batch_norm_outputs_offset_and_finite_gradients():
    with jax.enable_x64(True):
        cfg, params, state, x, y = make((5, 5), batch=1, batch_norm=True)
        out = mlp.forward(params, state, x, cfg=cfg, train=True)
        np.testing.assert_array_equal(out.hidden[0].pre_activation, params[0].offset[None])
        hand, auto, *_ = both_grads(cfg, params, state, x, y, l2=1e-2)
        assert all_finite(hand) and max_rel_error(hand, auto) <= 1e-10
        np.testing.assert_array_equal(hand[0].w, 1e-2 * params[0].w)  # only the penalty reaches w


@pytest.mark.parametrize("rate", [0.0, 0.99, 0.999])
def test_dropout_rates_zero_and_near_one(rate):
    with jax.enable_x64(True):
        cfg, params, state, x, y = make((10, 10), batch=6, dropout=rate)
        hand, auto, aux, _ = both_grads(cfg, params, state, x, y, key=jax.random.key(4))
        assert all_finite(hand) and all_finite(aux.loss)
        assert max_rel_error(hand, auto) <= 1e-10


def test_all_zero_inputs():
    with jax.enable_x64(True):
        for bn in (False, True):
            cfg, params, state, x, y = make((6,), batch_norm=bn)
            hand, auto, aux, _ = both_grads(cfg, params, state, jnp.zeros_like(x), y)
            assert all_finite(hand) and max_rel_error(hand, auto) <= 1e-10


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_huge_logits_stay_finite(dtype):
    with jax.enable_x64(dtype == "float64"):
        logits = jnp.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype)
        labels = jnp.array([1, 2])
        loss = losses.cross_entropy(logits, labels)
        assert float(loss) == pytest.approx(1e4, rel=1e-6)  # −log softmax = 2e4 and 0, mean 1e4
        assert all_finite(jax.grad(losses.cross_entropy)(logits, labels))
        assert all_finite(backprop.output_delta(logits, labels))
        # Scale a net's output layer so its logits are ±1e4: loss and both gradients stay finite.
        cfg, params, state, x, y = make((4,), dtype=dtype)
        big = params[:-1] + (mlp.Layer(params[-1].w * 1e4, params[-1].b),)
        hand, auto, aux, _ = both_grads(cfg, big, state, x, y)
        assert all_finite(hand) and all_finite(auto) and all_finite(aux.loss)
