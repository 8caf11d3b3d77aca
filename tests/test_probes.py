"""Representation measures (netalchemy.probes) against known answers and independent computations."""

import itertools

import jax
import numpy as np
import pytest
from scipy.stats import pearsonr

from netalchemy import mlp, probes
from netalchemy.config import ModelConfig


def test_ridge_probe_reads_a_linearly_separable_code_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    separable = np.eye(3)[y] * 5 + rng.normal(size=(600, 3)) * 0.1
    noise = rng.normal(size=(600, 3))
    acc = lambda f: float(probes.ridge_probe_accuracy(f[:400], y[:400], f[400:], y[400:], num_classes=3))
    assert acc(separable) == 1.0
    assert abs(acc(noise) - 1 / 3) < 0.12


def test_representations():
    cfg = ModelConfig(hidden=(7, 5))
    params, state = mlp.init(jax.random.key(0), cfg, in_features=3, num_classes=2)
    x = jax.random.normal(jax.random.key(1), (50, 3))
    reps = probes.representations(params, state, x, cfg=cfg)
    assert [r.shape for r in reps] == [(50, 3), (50, 7), (50, 5), (50, 2)]
    first = np.maximum(np.asarray(x) @ np.asarray(params[0].w) + np.asarray(params[0].b), 0)  # ReLU(x W + b)
    np.testing.assert_allclose(reps[1], first, rtol=1e-5, atol=1e-6)


def test_cka_matrix_is_linear_cka_of_every_pair_of_layers():
    rng = np.random.default_rng(0)
    a = [rng.normal(size=(60, w)) for w in (3, 8, 5)]
    b = [a[0], np.maximum(a[0] @ rng.normal(size=(3, 8)), 0), rng.normal(size=(60, 4))]
    m = probes.cka_matrix(a, b)
    assert m.shape == (3, 3)
    for i, j in itertools.product(range(3), range(3)):
        assert m[i, j] == probes.linear_cka(a[i], b[j])
    assert m[0, 0] == pytest.approx(1.0)  # the same input layer
    within = probes.cka_matrix(a, a)
    np.testing.assert_allclose(within, within.T, atol=1e-12)
    np.testing.assert_allclose(np.diag(within), 1.0)


def test_correspondence_counts_hidden_layers_matched_to_themselves():
    perfect = np.eye(5) * 0.5 + 0.4  # input, 3 hidden, logits
    assert probes.correspondence(perfect) == 1.0
    shifted = perfect.copy()
    shifted[1, 2] = 0.95  # hidden layer 1 now best matches layer 2
    assert probes.correspondence(shifted) == 2 / 3
    shifted[0, 3] = shifted[4, 1] = 1.0  # the input and logits rows are not counted
    assert probes.correspondence(shifted) == 2 / 3


def test_mean_abs_correlation_known_answers():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((5000, 1))
    h = np.concatenate([z, 2 * z + 1, -z, np.zeros((5000, 1))], axis=1)  # 3 perfectly correlated units, 1 dead
    assert probes.mean_abs_correlation(h) == pytest.approx(1.0)
    assert probes.mean_abs_correlation(rng.standard_normal((20000, 5))) < 0.03
    assert np.isnan(probes.mean_abs_correlation(np.zeros((10, 3))))
    assert np.isnan(probes.mean_abs_correlation(np.concatenate([z, np.zeros((5000, 2))], axis=1)))  # one live unit


def test_mean_abs_correlation_equals_a_loop_over_unit_pairs():
    """Against scipy's Pearson r, pair by pair, on ReLU-like units with one dead unit left out."""
    rng = np.random.default_rng(1)
    h = np.maximum(rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6)), 0)
    h[:, 4] = 0.0  # a dead unit
    live = [u for u in range(6) if u != 4]
    want = np.mean([abs(pearsonr(h[:, i], h[:, j])[0]) for i, j in itertools.permutations(live, 2)])
    assert probes.mean_abs_correlation(h) == pytest.approx(want, rel=1e-10)


def test_near_zero_fraction_is_relative_to_the_init_scale():
    model = ModelConfig()
    scale = np.sqrt(2 / 4)  # He init, fan-in 4
    w = np.array([[0.0, 0.8 * 0.01 * scale], [2 * 0.01 * scale, 1.0]] * 2)  # (4, 2): half the entries near zero
    params = (mlp.Layer(w[None], np.zeros((1, 2))),)
    assert probes.near_zero_fraction(params, model, 0.01) == pytest.approx([0.5])
    assert probes.near_zero_fraction(params, model, 1e3) == pytest.approx([1.0])
    lecun = ModelConfig(init="lecun")  # gain 1: the threshold shrinks by sqrt(2), so 0.8 × the He one is above it
    assert probes.near_zero_fraction(params, lecun, 0.01) == pytest.approx([0.25])


def test_near_zero_fraction_equals_a_loop_over_runs_layers_and_weights():
    """Several runs of a two-layer net (different fan-ins): a weight-by-weight count, run by run."""
    cfg = ModelConfig(hidden=(7,))
    runs = [mlp.init(jax.random.key(k), cfg, in_features=5, num_classes=3)[0] for k in range(3)]
    params = jax.tree.map(lambda *a: np.stack(a), *runs)  # leading (runs,) axis
    for rel in (0.1, 0.5, 1.0):
        want = []
        for run in runs:
            flags = [abs(float(x)) < rel * (2 / layer.w.shape[0]) ** 0.5
                     for layer in run for x in np.asarray(layer.w).ravel()]
            want.append(sum(flags) / len(flags))
        np.testing.assert_allclose(probes.near_zero_fraction(params, cfg, rel), want)
    assert 0 < probes.near_zero_fraction(params, cfg, 0.5)[0] < 1
