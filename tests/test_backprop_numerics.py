"""Round-off of the hand-derived batch-norm backward pass on off-centre inputs (issue 12, item 16).

Inputs x = m + N(0, 1) with m ≫ 1 feed a dense layer followed by batch norm. The reference:
batch norm subtracts the batch mean of z = x W, and (x − c) W = x W − c W shifts each column
of z by a constant, so with batch norm right after the first dense layer (no bias there) the
loss is the same function of the params at x and at x − c, and so are its gradients. The
float64 `jax.grad` at the centred inputs x − m (mean/std ≈ 1, well conditioned) is then the
gradient at x to float64 round-off, whatever m. Two tests check that identity: against the
float64 gradient at x itself, and against float64 central finite differences at x.

Each dW is compared as max|dW − dW_ref| / max|dW_ref|. Before the fix the hand pass's error
grew like u·(m/std)² (0.23 in float32 at m = 1e3 on the fixed net below) while jax.grad's
grows like u·(m/std) (1.5e-4 there).
"""

import dataclasses
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from netalchemy import backprop, mlp
from netalchemy.config import ModelConfig

# Hand error ≤ max(AUTODIFF_FACTOR × autodiff's, ROUNDOFF_FLOOR × eps at the gradient's scale).
# Measured over 60 random architectures × 3 means in [1, 1e3] (the property test's ranges):
# above the floor, hand/autodiff ≤ 1.9 after the fix (two summation orders of the same
# u·(m/std) round-off); before it, up to 100× the bound at m ~ 500, and 900–1500× autodiff
# at m = 1e3 on the fixed net of the first test.
AUTODIFF_FACTOR = 3.0
ROUNDOFF_FLOOR = 16
DECADES = (1.0, 10.0, 100.0, 1e3)  # mean/std of the inputs


def random_problem(means, dtype: str, *, hidden=(8,), batch=32, in_features=4, classes=3, dropout=0.0,
                   seed=0):
    """BN nets fed x = m + N(0, 1), one batch per m, drawn with numpy (nothing to compile).

    Returns (cfg, params, state, x (len(means), batch, in_features) in dtype, y (batch,),
    x − m in float64 (one rounding per entry at most)). Scales and offsets are drawn around
    1 and 0, so that the γ in ĝ = g γ is exercised too.
    """
    cfg = ModelConfig(hidden=hidden, batch_norm=True, dropout=dropout, dtype=dtype)
    rng = np.random.default_rng(seed)
    draw = lambda leaf, loc, sd: None if leaf is None else (loc + sd * rng.normal(size=leaf.shape)).astype(dtype)
    shapes, state_shapes = jax.eval_shape(
        partial(mlp.init, cfg=cfg, in_features=in_features, num_classes=classes), jax.random.key(0))
    params = tuple(mlp.Layer(draw(l.w, 0.0, np.sqrt(2.0 / l.w.shape[0])), draw(l.b, 0.0, 0.1),
                             draw(l.scale, 1.0, 0.2), draw(l.offset, 0.0, 0.2)) for l in shapes)
    state = tuple(mlp.BNStats(np.zeros(s.mean.shape, dtype), np.ones(s.var.shape, dtype)) for s in state_shapes)
    means = np.asarray(means, np.float64)[:, None, None]
    x = (means + rng.normal(size=(batch, in_features))).astype(dtype)
    y = rng.integers(0, classes, batch)
    return cfg, params, state, x, y, x.astype(np.float64) - means


def reference_grads(params, state, centred, y, *, cfg: ModelConfig, key=None):
    """float64 `jax.grad` at the centred inputs: the gradient at x (see the module docstring)."""
    to64 = lambda tree: jax.tree.map(lambda a: a.astype(jnp.float64), tree)
    cfg64 = dataclasses.replace(cfg, dtype="float64")
    return backprop.autodiff_grad(to64(params), to64(state), centred, y, cfg=cfg64, key=key)[0]


@partial(jax.jit, static_argnames="cfg")
def gradients_three_ways(params, state, x, y, centred, key=None, *, cfg: ModelConfig):
    """(hand, autodiff, float64 reference) gradients, each with a leading axis over x's batches."""
    def one(x, centred):
        hand = backprop.hand_grad(params, state, x, y, cfg=cfg, key=key)[0]
        auto = backprop.autodiff_grad(params, state, x, y, cfg=cfg, key=key)[0]
        return hand, auto, reference_grads(params, state, centred, y, cfg=cfg, key=key)
    return jax.vmap(one)(x, centred)


def weight_errors(grads, ref) -> np.ndarray:
    """max|dW − dW_ref| / max|dW_ref|, (batches, dense layers)."""
    def error(g, r):
        g, r = np.asarray(g, np.float64), np.asarray(r)
        return np.abs(g - r).max(axis=(1, 2)) / np.abs(r).max(axis=(1, 2))
    return np.stack([error(g.w, r.w) for g, r in zip(grads, ref)], axis=1)


def relative_scales(ref) -> np.ndarray:
    """max|dW_ref| of each dense layer over the largest of any layer, (batches, dense layers)."""
    scales = np.stack([np.abs(np.asarray(r.w)).max(axis=(1, 2)) for r in ref], axis=1)
    return scales / scales.max(axis=1, keepdims=True)


def errors_of_both(means, dtype, **problem):
    """(hand dW errors, autodiff dW errors, relative_scales) against the float64 reference."""
    cfg, *arrays = random_problem(means, dtype, **problem)
    hand, auto, ref = gradients_three_ways(*arrays, cfg=cfg)
    return weight_errors(hand, ref), weight_errors(auto, ref), relative_scales(ref)


def assert_hand_as_accurate_as_autodiff(means, hand, auto, scales, dtype):
    # The floor is round-off at the scale of the whole gradient: a layer whose dW is 10x
    # smaller than another's carries the two methods' different summation orders 10x larger.
    bound = np.maximum(AUTODIFF_FACTOR * auto, ROUNDOFF_FLOOR * float(jnp.finfo(dtype).eps) / scales)
    worst = np.unravel_index(np.argmax(hand / bound), hand.shape)
    assert np.all(hand <= bound), (f"{dtype}, mean/std {means[worst[0]]:.3g}, layer {worst[1]}: "
                                   f"hand dW error {hand[worst]:.2e}, autodiff {auto[worst]:.2e}")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_hand_error_grows_linearly_in_mean_over_std(dtype):
    # Measured, first layer, hand / autodiff at m = 1, 10, 100, 1e3: float32 3.0e-7 / 2.4e-7,
    # 6.2e-7 / 7.2e-7, 2.4e-5 / 2.1e-5, 1.9e-4 / 1.5e-4; float64 6.2e-16 / 8.7e-16, 1.6e-15 /
    # 3.1e-15, 2.2e-14 / 3.0e-14, 1.7e-13 / 2.8e-13. Before the fix the hand pass gave 6.2e-6,
    # 2.9e-3, 0.23 (float32) and 2.7e-14, 2.2e-12, 2.5e-10 (float64) at m = 10, 100, 1e3.
    eps = float(jnp.finfo(dtype).eps)
    with jax.enable_x64(True):
        hand, auto, scales = errors_of_both(DECADES, dtype)
    assert_hand_as_accurate_as_autodiff(DECADES, hand, auto, scales, dtype)
    assert np.all(hand[:, 0] <= 10 * eps * np.array(DECADES) + ROUNDOFF_FLOOR * eps), hand[:, 0]


# Each example compiles its own program (~1 s of CPU per gradient): few examples, the same
# ones every run (derandomize), so the persistent compilation cache (conftest) serves reruns.
@settings(max_examples=8, deadline=None, derandomize=True)
@given(dtype=st.sampled_from(["float32", "float64"]),
       log10_means=st.lists(st.floats(0.0, 3.0), min_size=3, max_size=3),
       depth=st.integers(1, 3), width=st.integers(2, 8), batch=st.integers(6, 16),
       in_features=st.integers(2, 5), classes=st.integers(2, 4), seed=st.integers(0, 2**16))
@example(dtype="float32", log10_means=[0.0, 1.5, 3.0], depth=2, width=5, batch=9, in_features=3, classes=3, seed=7)
@example(dtype="float64", log10_means=[0.0, 1.5, 3.0], depth=1, width=3, batch=12, in_features=2, classes=2, seed=11)
def test_hand_as_accurate_as_autodiff_on_off_centre_inputs(dtype, log10_means, depth, width, batch,
                                                          in_features, classes, seed):
    # Widths and fan-ins ≥ 2 and batches ≥ 6: a one-unit or one-input batch norm, or a batch of
    # two, has dW = 0 in exact arithmetic (the normalisation undoes it), so no relative error.
    means = 10.0 ** np.array(log10_means)
    with jax.enable_x64(True):
        hand, auto, scales = errors_of_both(means, dtype, hidden=(width,) * depth, batch=batch,
                                            in_features=in_features, classes=classes, seed=seed)
    assert_hand_as_accurate_as_autodiff(means, hand, auto, scales, dtype)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batch_norm_dz_sums_to_zero_over_the_batch(dtype):
    # Σ_batch dz = 0 in exact arithmetic; computed, it is a few roundings of dz's entries.
    # Measured at m = 1e3, max|column sum| / max|dz|: 2.6e-7 (float32) and 5.8e-16 (float64),
    # bound 4·B·u = 1.5e-5 and 2.8e-14; the formula alone left 5.4e-4 and 7.9e-13.
    with jax.enable_x64(True):
        cfg, params, state, x, *_ = random_problem([1e3], dtype)
        g = np.random.default_rng(5).normal(size=(x.shape[1], cfg.hidden[0])).astype(dtype)  # ∂L/∂u

        @jax.jit
        def dz_of_first_layer(params, state, x, g):
            cache = mlp.forward(params, state, x, cfg=cfg, train=True).hidden[0]
            return backprop.batch_norm_backward(g, cache, params[0].scale)[0]

        dz = np.asarray(dz_of_first_layer(params, state, x[0], g), np.float64)
    column_sums = np.abs(dz.sum(axis=0))
    assert column_sums.max() <= 4 * dz.shape[0] * float(jnp.finfo(dtype).eps) * np.abs(dz).max()


def test_the_reference_is_the_float64_gradient_at_the_off_centre_inputs():
    # At m = 1 the problem is well conditioned: plain float64 jax.grad at x agrees with the
    # reference at x − m to float64 round-off, so the shift identity holds. (Same program as
    # the float64 case above: no compilation.)
    with jax.enable_x64(True):
        cfg, *arrays = random_problem(DECADES, "float64")
        _, auto, ref = gradients_three_ways(*arrays, cfg=cfg)
    assert weight_errors(auto, ref)[0].max() <= 1e-13


def test_the_reference_matches_central_differences_at_the_off_centre_inputs():
    # float64 central differences of the loss at x (m = 100), h = 1e-5: truncation O(h²) and
    # round-off ~u·m/h keep them within 1e-6 of the gradient, far below a wrong formula.
    with jax.enable_x64(True):
        cfg, params, state, x, y, centred = random_problem([100.0], "float64", hidden=(5,), seed=4)
        ref = np.asarray(jax.jit(reference_grads, static_argnames="cfg")(params, state, centred[0], y, cfg=cfg)[0].w)
        loss = jax.jit(jax.vmap(lambda w: backprop.objective((params[0]._replace(w=w), *params[1:]), state,
                                                             x[0], y, cfg=cfg)[0]))
        h = 1e-5
        rows, cols = np.array([0, 1, 3, 2]), np.array([0, 3, 4, 1])
        bumps = np.zeros((len(rows), *ref.shape))
        bumps[np.arange(len(rows)), rows, cols] = h
        fd = (loss(params[0].w + bumps) - loss(params[0].w - bumps)) / (2 * h)
    np.testing.assert_allclose(fd, ref[rows, cols], rtol=0, atol=1e-6 * np.abs(ref).max())
