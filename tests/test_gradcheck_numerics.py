"""Finite-difference machinery against analytic values: a quadratic's gradient, softmax-CE's
y_pred − y_true, the kinks of ReLU and of |w|, and a deliberately wrong gradient caught."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from netalchemy import gradcheck_numerics as gn
from netalchemy import mlp
from netalchemy.config import ModelConfig


@pytest.fixture(autouse=True)
def x64():
    with jax.enable_x64(True):  # float64 finite differences, as the gradient check computes them
        yield


def test_relative_errors_have_known_values():
    np.testing.assert_allclose(gn.rel_error(np.array([1.0, 0.0, -2.0]), np.array([1.1, 0.0, 2.0])),
                               [0.1 / 1.1, 0.0, 2.0])  # equal zeros are no error; opposite signs are 200%
    assert gn.rel_error(np.array(1e-8), np.array(3e-8), 1e-4) == pytest.approx(2e-4)  # below the floor: absolute
    assert gn.array_error(np.array([1.0, 2.0]), np.array([1.0, 2.5])) == pytest.approx(0.5 / 2.5)
    assert gn.array_error(np.array([0.0]), np.array([1e-17]), floor=1e-12) == pytest.approx(1e-5)
    assert gn.array_error(np.array([0.0]), np.array([1e-17])) == 1.0  # without the floor: a 100% error


def test_central_differences_of_a_quadratic_are_its_gradient():
    # f(θ) = ½ θᵀAθ + bᵀθ has ∇f = Aθ + b, and f‴ = 0: the central difference is exact up to round-off.
    rng = np.random.default_rng(0)
    m = rng.standard_normal((6, 6))
    a, b, theta = jnp.asarray(m + m.T), jnp.asarray(rng.standard_normal(6)), jnp.asarray(rng.standard_normal(6))
    f = lambda t: 0.5 * t @ a @ t + b @ t
    directions = jnp.asarray(rng.standard_normal((4, 6)))
    fd = gn.central_differences(f, theta, directions, 1e-4)
    np.testing.assert_allclose(fd, directions @ (a @ theta + b), rtol=1e-9)
    np.testing.assert_allclose(gn.central_differences(f, theta, jnp.eye(6), 1e-4), a @ theta + b, rtol=1e-9)


def test_the_output_delta_is_softmax_minus_onehot_over_batch():
    logits = jnp.asarray(np.random.default_rng(1).standard_normal((3, 4)))
    y = jnp.array([0, 3, 1])
    delta, auto, fd = map(np.asarray, gn.output_delta_check(logits, y, 1e-5))
    z = np.asarray(logits)
    y_pred = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    expected = (y_pred - np.eye(4)[np.asarray(y)]) / 3  # y_pred − y_true, averaged over the batch
    np.testing.assert_allclose(delta, expected, rtol=1e-12)
    np.testing.assert_allclose(auto, expected, rtol=1e-12)
    np.testing.assert_allclose(fd, expected, rtol=1e-7, atol=1e-12)


def _net_with_a_weight_at(value: float):
    cfg = ModelConfig(hidden=(5,), dtype="float64")
    params, state = mlp.init(jax.random.key(0), cfg, in_features=3, num_classes=2)
    params = type(params)([params[0]._replace(w=params[0].w.at[1, 2].set(value)), *params[1:]])
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    y = jnp.arange(8) % 2
    index = 1 * 5 + 2  # L1.w[1, 2] is the 8th entry of the flat vector (w comes first)
    assert ravel_pytree(params)[0][index] == value
    return cfg, params, state, x, y, jnp.array([index])


def fd_and_kink(value, l1):
    cfg, params, state, x, y, coords = _net_with_a_weight_at(value)
    return gn.objective_differences(params, state, x, y, coords, 1e-5, cfg=cfg, l1=l1, l2=0.0, key=jax.random.key(2))


def test_penalised_mask_marks_exactly_the_weight_matrices():
    cfg = ModelConfig(hidden=(4, 3), batch_norm=True)
    params, _ = mlp.init(jax.random.key(0), cfg, in_features=2, num_classes=2)
    mask, _ = ravel_pytree(gn.penalised_mask(params))
    assert int(mask.sum()) == 2 * 4 + 4 * 3 + 3 * 2


def test_a_weight_within_h_of_zero_is_a_kink_only_under_l1():
    # |w| at w = 3e-6 with h = 1e-5: the central difference of l1·|w| is l1·0.3, the
    # derivative l1·1. Flagged under L1, and the same point is smooth without it.
    _, kink_l1 = fd_and_kink(3e-6, l1=1.0)
    _, kink_none = fd_and_kink(3e-6, l1=0.0)
    assert bool(kink_l1[0]) and not bool(kink_none[0])
    # Away from 0 the L1 term is smooth: no kink, and FD matches the analytic derivative.
    fd_far, kink_far = fd_and_kink(0.5, l1=1.0)
    fd_far0, _ = fd_and_kink(0.5, l1=0.0)
    assert not bool(kink_far[0])
    np.testing.assert_allclose(float(fd_far[0] - fd_far0[0]), 1.0, rtol=1e-6)  # d|w|/dw = 1


def test_a_relu_input_within_h_of_zero_is_a_kink():
    # One example, one hidden unit whose input is its bias b: bumping b by ±h crosses 0 iff |b| < h.
    cfg = ModelConfig(hidden=(1,), dtype="float64")
    params, state = mlp.init(jax.random.key(0), cfg, in_features=2, num_classes=2)
    x, y = jnp.zeros((1, 2)), jnp.array([1])
    bias = 2  # flat order: L1.w (2 entries), then L1.b
    kinks = []
    for b in (3e-6, 0.3):
        p = type(params)([params[0]._replace(b=jnp.array([b])), *params[1:]])
        assert ravel_pytree(p)[0][bias] == b
        _, kink = gn.objective_differences(p, state, x, y, jnp.array([0, bias]), 1e-5, cfg=cfg, l1=0.0, l2=0.0,
                                           key=None)
        kinks.append(np.asarray(kink))
    assert kinks[0].tolist() == [False, True] and kinks[1].tolist() == [False, False]  # x = 0: w never crosses


def test_sampled_coordinates_stay_in_their_arrays():
    params, _ = mlp.init(jax.random.key(0), ModelConfig(hidden=(4,)), in_features=3, num_classes=2)
    coords = gn.sample_coordinates(params, 5, np.random.default_rng(0))
    offsets = gn.leaf_offsets(params)  # L1.w 12, L1.b 4, out.w 8, out.b 2
    counts = [int(((coords >= lo) & (coords < hi)).sum()) for lo, hi in zip(offsets[:-1], offsets[1:])]
    assert counts == [5, 4, 5, 2] and len(set(coords.tolist())) == len(coords)
    assert gn.leaf_names(params) == ["L1.w", "L1.b", "out.w", "out.b"]


def _check(cfg):
    params, state = mlp.init(jax.random.key(3), cfg, in_features=4, num_classes=3)
    x = jax.random.normal(jax.random.key(4), (6, 4), jnp.float64)
    y = jnp.array([0, 1, 2, 0, 1, 2])
    coords = gn.sample_coordinates(params, 4, np.random.default_rng(0))
    return params, gn.gradient_errors(params, state, x, y, coords, cfg=cfg, l1=1e-3, l2=1e-2, key=jax.random.key(5),
                                      step=1e-5, floor=1e-4)


def test_gradient_errors_agree_on_a_correct_backward_pass():
    cfg = ModelConfig(hidden=(5, 4), batch_norm=True, dropout=0.5, dtype="float64")
    params, records = _check(cfg)
    assert [r["param"] for r in records] == gn.leaf_names(params) + ["dL/dz_out"]
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    for r, size in zip(records, sizes):
        assert r["hand_vs_autodiff_f64"] < 1e-10 and r["hand_vs_autodiff_f32"] < 1e-5 and r["hand_vs_fd"] < 1e-5, r
        assert r["fd_coords"] == min(4, size) and r["autodiff_vs_fd"] < 1e-5
    assert records[-1]["hand_vs_autodiff_f64"] < 1e-12 and records[-1]["hand_vs_fd"] < 1e-5  # the output delta


def test_gradient_errors_catch_a_wrong_gradient(monkeypatch):
    grad = gn._hand_grad
    monkeypatch.setattr(gn, "_hand_grad", lambda *a, **k: (lambda g, aux: (jax.tree.map(lambda t: t * 1.01, g), aux))(
        *grad(*a, **k)))
    _, records = _check(ModelConfig(hidden=(5,), dtype="float64"))
    for r in records[:-1]:  # every parameter array is off by 1% against both references
        assert r["hand_vs_autodiff_f64"] == pytest.approx(0.01 / 1.01, rel=1e-6)
        assert r["hand_vs_autodiff_f32"] == pytest.approx(0.01 / 1.01, rel=1e-4)
        assert r["hand_vs_fd"] > 1e-3 and r["autodiff_vs_fd"] < 1e-5
