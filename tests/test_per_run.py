"""Questions asked of every run at once agree with asking each run alone."""

import jax
import numpy as np
import pytest

from netalchemy import mlp, per_run, probes, sweep
from netalchemy import config as C
from netalchemy.data import load

from sweep_helpers import tiny

pytestmark = pytest.mark.exact_bits  # bits compared across differently compiled programs (Makefile)


@pytest.fixture(scope="module")
def result():
    return sweep.run(tiny(), dataset=load(C.DataConfig()), progress=False)


def test_every_run_at_once_equals_each_run_alone(result):
    x = load(C.DataConfig()).x_test[:7]
    logits, probs, layers = (per_run.logits(result.final, x, cfg=result.cfg),
                             per_run.probabilities(result.final, x, cfg=result.cfg),
                             per_run.layers(result.final, x, cfg=result.cfg))
    assert logits.shape == (3, 7, 10) and len(layers) == 3 and layers[1].shape == (3, 7, 16)
    for r in range(3):
        one = per_run.at(result.final, r)
        alone, _ = mlp.apply(one.params, one.bn_state, x, cfg=result.cfg.model, train=False)
        np.testing.assert_allclose(logits[r], alone, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(probs[r], jax.nn.softmax(alone), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(layers[1][r], probes.representations(one.params, one.bn_state, x,
                                                                         cfg=result.cfg.model)[1], rtol=1e-5)
    # Predictions from the logits are the sweep's stored test predictions.
    full = per_run.logits(result.final, load(C.DataConfig()).x_test, cfg=result.cfg)
    np.testing.assert_array_equal(full.argmax(-1), result.test_predictions)


def test_flat_params_are_every_weight_in_order(result):
    flat = per_run.flat_params(result.final.params)
    one = per_run.at(result.final.params, 2)
    assert flat.shape == (3, sum(a.size for a in jax.tree.leaves(one)))
    np.testing.assert_array_equal(flat[2], np.concatenate([np.ravel(a) for a in jax.tree.leaves(one)]))
