"""Gradient check experiment: kink detection for finite differences (ReLU and the L1 |w|)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from experiments import gradcheck
from netalchemy import mlp
from netalchemy.config import ModelConfig


def _net_with_a_weight_at(value: float):
    cfg = ModelConfig(hidden=(5,), dtype="float64")
    params, state = mlp.init(jax.random.key(0), cfg, in_features=3, num_classes=2)
    params = type(params)([params[0]._replace(w=params[0].w.at[1, 2].set(value)), *params[1:]])
    x = jax.random.normal(jax.random.key(1), (8, 3), jnp.float64)
    y = jnp.arange(8) % 2
    theta, _ = ravel_pytree(params)
    index = 1 * 5 + 2  # L1.w[1, 2] is the 8th entry of the flat vector (w comes first)
    assert theta[index] == value
    bumps = jnp.zeros((1, theta.size)).at[0, index].set(1e-5)
    return cfg, params, state, x, y, bumps


def fd_and_kink(value, l1):
    with jax.enable_x64(True):  # float64 finite differences, as the experiment computes them
        cfg, params, state, x, y, bumps = _net_with_a_weight_at(value)
        return gradcheck.finite_differences(params, state, x, y, bumps, cfg=cfg, l1=l1, l2=0.0,
                                            key=jax.random.key(2))


def test_penalised_mask_marks_exactly_the_weight_matrices():
    cfg = ModelConfig(hidden=(4, 3), batch_norm=True)
    params, _ = mlp.init(jax.random.key(0), cfg, in_features=2, num_classes=2)
    mask, _ = ravel_pytree(gradcheck.penalised_mask(params))
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


def test_exact_verdicts_have_no_interval_and_flip_at_the_value():
    m3 = gradcheck.exact_verdict("M3", [("float64", gradcheck.AUTODIFF_F64, 3e-13),
                                        ("float32", gradcheck.AUTODIFF_F32, 2e-6), ("vs FD", gradcheck.FD, 4e-7)],
                                 measurement="m")
    assert m3.verdict == "supported" and (m3.value, m3.ci_low, m3.ci_high) == (3e-13, None, None)
    assert m3.flip_point is not None and "float32 supported (flips at 2e-06)" in m3.flip_text
    assert gradcheck.AUTODIFF_F64.describe() in m3.rule
    bad = gradcheck.exact_verdict("M3", [("float64", gradcheck.AUTODIFF_F64, 3e-13),
                                         ("float32", gradcheck.AUTODIFF_F32, 2e-4)], measurement="m")
    assert bad.verdict == "contradicted"
    m1 = gradcheck.exact_verdict("M1", [("M1", gradcheck.M1_RULE, abs(-np.log(0.7) - 0.357))], measurement="m",
                                 value=float(-np.log(0.7)))
    assert m1.verdict == "supported" and m1.value == pytest.approx(0.35667, abs=1e-5)
    assert m1.flip_point == pytest.approx(0.357 + np.log(0.7))  # the rule holds for any tolerance above |diff|
