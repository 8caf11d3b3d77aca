"""The engine's hooks: a measurement inside the compiled program, a perturbation of the initial state."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from netalchemy import mlp, store, sweep
from netalchemy import config as C
from netalchemy.data import load

from sweep_helpers import interrupt_after_first_checkpoint, same, tiny

pytestmark = pytest.mark.exact_bits  # bits compared across differently compiled programs (Makefile)


@pytest.fixture(scope="module")
def mnist1d():
    return load(C.DataConfig())


def norms(state, streams, data, cfg):
    """Test hook: the params' global norm (the metric `param_norm` measures it too) and the logits of 3 test inputs."""
    logits, _ = mlp.apply(state.params, state.bn_state, data.x_test[:3], cfg=cfg.model, train=False)
    return {"norm": optax.tree.norm(state.params), "logits": logits}


@dataclasses.dataclass(frozen=True)
class NudgeFrom:
    """Test perturbation: runs from index `first` on get their first weight moved up by one ulp."""

    first: int

    def __call__(self, state, run, cfg):
        layer = state.params[0]
        w = layer.w.at[0, 0].set(jnp.where(run >= self.first, jnp.nextafter(layer.w[0, 0], jnp.inf), layer.w[0, 0]))
        return state._replace(params=(layer._replace(w=w), *state.params[1:]))


def test_a_measurement_lands_beside_the_metrics_at_every_evaluation(mnist1d):
    r = sweep.run(tiny(), dataset=mnist1d, progress=False, measure=norms)
    assert r.measures["norm"].shape == (3, 5) and r.measures["logits"].shape == (3, 5, 3, 10)
    # The same quantity as the engine's own metric, at every evaluation including step 0.
    np.testing.assert_allclose(r.measures["norm"], r.history["param_norm"], rtol=1e-6)
    # The hook sees the final state: its logits are the final params' logits.
    final = jax.tree.map(lambda a: a[0], r.final)
    logits, _ = mlp.apply(final.params, final.bn_state, mnist1d.x_test[:3], cfg=r.cfg.model, train=False)
    np.testing.assert_allclose(r.measures["logits"][0, -1], logits, rtol=1e-5, atol=1e-6)
    assert sweep.run(tiny(), dataset=mnist1d, progress=False).measures == {}


def test_a_measurement_never_changes_what_is_trained(mnist1d):
    """The hook runs in a program of its own: the runs are bit-identical to a sweep without it
    (compiled into the training program, it moved them in the last bits)."""
    long = tiny("train.steps=200")  # the tiny sweep's programs (intervals of 10 steps), run for 200 steps
    heavy = sweep.run(long, dataset=mnist1d, progress=False, measure=norms)
    plain = sweep.run(long, dataset=mnist1d, progress=False)
    assert same(heavy, plain)


def test_a_perturbation_moves_only_the_runs_it_names(mnist1d):
    lr = tiny().optim.lr
    plain = sweep.run(tiny(), dataset=mnist1d, progress=False, lrs=[lr, lr])  # every seed twice
    nudged = sweep.run(tiny(), dataset=mnist1d, progress=False, lrs=[lr, lr], perturb=NudgeFrom(first=3))
    w0 = nudged.final.params[0].w  # (runs, in, out)
    # The untouched copies are bit-identical to the sweep without a hook ...
    assert all(np.array_equal(a[:3], b[:3]) for a, b in zip(jax.tree.leaves(plain.final), jax.tree.leaves(nudged.final)))
    assert np.array_equal(plain.final.params[0].w[:3], plain.final.params[0].w[3:])  # copies of one seed agree
    # ... and the nudged ones started one ulp away and ended elsewhere.
    assert not np.array_equal(w0[:3], w0[3:])


def test_an_interrupted_sweep_with_hooks_resumes_bit_identical(mnist1d, tmp_path, monkeypatch):
    hooks = {"measure": norms, "perturb": NudgeFrom(first=1)}
    reference = sweep.run(tiny(), out_dir=tmp_path / "ref", dataset=mnist1d, progress=False, **hooks)
    interrupt_after_first_checkpoint(monkeypatch, lambda: sweep.run(
        tiny(), out_dir=tmp_path / "cut", dataset=mnist1d, progress=False, **hooks))
    resumed = sweep.run(tiny(), out_dir=tmp_path / "cut", dataset=mnist1d, progress=False, **hooks)
    assert same(reference, resumed)
    assert all(np.array_equal(reference.measures[k], resumed.measures[k]) for k in reference.measures)
    loaded = sweep.load(tmp_path / "cut")
    assert loaded.measures.keys() == {"norm", "logits"} and np.array_equal(loaded.measures["norm"],
                                                                           reference.measures["norm"])


def test_a_folder_trained_with_other_hooks_is_never_reused(mnist1d, tmp_path):
    sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False, perturb=NudgeFrom(first=1))
    before = (tmp_path / "history.npz").read_bytes()
    for hooks in ({}, {"perturb": NudgeFrom(first=2)}, {"perturb": NudgeFrom(first=1), "measure": norms}):
        with pytest.raises(store.StoreError, match="different config"):
            sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False, **hooks)
    assert (tmp_path / "history.npz").read_bytes() == before
    assert sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False, perturb=NudgeFrom(first=1)).reused
