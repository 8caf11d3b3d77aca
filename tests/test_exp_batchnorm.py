"""Batch norm (M12, A4): the Santurkar et al. hook against direct computation and against the engine's
own metrics, the stability statistics and verdict rules on synthetic numbers, and the tiny profile end to end."""

import dataclasses
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from figure_checks import assert_clean, checking_figures
from experiments import batchnorm as bn
from netalchemy import backprop, mlp, store, sweep, train
from netalchemy.config import Config, ConfigError, DataConfig, ModelConfig, TrainConfig, override
from netalchemy.data import load
from netalchemy.experiment import run_experiment
from netalchemy.stats import CI


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
    loss_of = lambda p: backprop.objective(p, state, x, y, cfg=cfg)[0]  # training mode, batch statistics
    theta, unravel = ravel_pytree(params)
    flat_loss = lambda t: loss_of(unravel(t))
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

        m = measure(bn.Smoothness(etas, lr))
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
        still = measure(bn.Smoothness(etas, 0.0))
        np.testing.assert_allclose(still["ics_l2"], 0.0, atol=1e-15)
        np.testing.assert_allclose(still["ics_cos"], 1.0, rtol=1e-12)


def test_the_hook_sees_the_state_and_minibatch_of_the_next_step():
    """Evaluating after every step, the hook's L(θ_t) and ‖g‖ on step t's minibatch are the engine's own
    batch loss and gradient norm of step t (the next interval's): same state, same batch."""
    cfg = override(Config(), ["model.hidden=[8]", "model.batch_norm=true", "train.steps=3", "train.eval_every=1",
                              "train.batch_size=25", "seeds.n=2", "optim.name=sgd"])
    r = sweep.run(cfg, dataset=load(DataConfig()), progress=False, measure=bn.Smoothness((0.1, 1.0), 0.1))
    assert r.measures["beta"].shape == (2, 4) and r.measures["ics_rel"].shape == (2, 4, 1)
    np.testing.assert_allclose(r.measures["loss"][:, :-1], r.history["batch_loss"][:, 1:], rtol=1e-5)
    np.testing.assert_allclose(r.measures["grad_norm"][:, :-1], r.history["grad_norm"][:, 1:], rtol=1e-5)


def test_stability_table_per_seed_and_per_lr():
    lrs = np.array([0.01, 0.1, 1.0, 10.0])
    diverged = np.array([[0, 0, 0], [0, 0, 0], [0, 0, 1], [1, 1, 1]], bool)  # (lrs, seeds)
    final = np.array([[2.2, 2.2, 2.2], [1.0, 1.0, 2.3], [0.5, 2.31, 0.4], [0.3, 0.3, 0.3]])
    t = bn.stability_table(diverged, final, lrs, threshold=0.9 * math.log(10))
    np.testing.assert_array_equal(t["stable"], [[0, 0, 0], [1, 1, 0], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(t["edge"], [1.0, 0.1, np.nan])
    np.testing.assert_allclose(t["divergence_rate"], [0, 0, 1 / 3, 1])
    assert t["first_divergence"] == 1.0  # one seed of three diverged there
    assert np.isnan(t["final_loss"][3]).all()  # diverged runs have no final loss
    calm = bn.stability_table(np.zeros((2, 2), bool), np.full((2, 2), 3.0), lrs[:2], threshold=2.0)
    assert calm["first_divergence"] is None and np.isnan(calm["edge"]).all()  # nothing diverged, nothing stable


def test_ratio_cis():
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.0, 0.05, 40), rng.normal(2.0, 0.1, 40)
    ci = bn.ratio_ci(a, b)
    assert ci.low < 0.5 < ci.high and abs(ci.estimate - 0.5) < 0.02 and ci.high - ci.low < 0.05
    assert math.isnan(bn.ratio_ci([np.nan], b).estimate)
    paired = bn.geometric_ratio_ci(np.array([2.0, 4.0, 8.0]), np.array([1.0, 2.0, 4.0]))
    assert paired == (pytest.approx(2.0), pytest.approx(2.0), pytest.approx(2.0))


def mid(low, high):
    return CI(None if low is None else (low + high) / 2, low, high)


def test_m12_verdict_rule():
    m12 = lambda low, high, inside: bn.m12_verdict(mid(low, high), inside).verdict  # noqa: E731
    assert m12(1.5, 3.0, 1.0) == "supported"
    assert m12(1.0, 1.0, 1.0) == "contradicted"  # every seed: the same edge
    assert m12(0.3, 0.8, 0.9) == "contradicted"
    assert m12(1.0, 1.0, 0.0) == "inconclusive"  # both edges off the grid: grid too narrow
    assert m12(0.8, 2.0, 1.0) == "inconclusive"
    assert m12(None, None, 1.0) == "inconclusive"
    v = bn.m12_verdict(mid(1.5, 3.0), 1.0, progress_fraction=0.9)
    assert (v.value, v.ci_low, v.ci_high, v.flip_point) == (2.25, 1.5, 3.0, 1.5)
    assert v.flip_text == "supported; flips at 1.5" and "0.9·ln(classes)" in v.rule


def test_a4_verdict_rule():
    lower, higher, unclear = mid(0.4, 0.8), mid(1.2, 1.6), mid(0.8, 1.2)
    a4 = lambda *cis: bn.a4_verdict(*cis).verdict  # noqa: E731
    assert a4(lower, lower, unclear) == "contradicted"  # Santurkar: smoother, ICS not the reason
    assert a4(lower, lower, higher) == "contradicted"
    assert a4(lower, lower, lower) == "depends"  # smoother, but ICS also reduced
    assert a4(lower, unclear, unclear) == "depends"  # the landscape measures disagree
    assert a4(lower, higher, unclear) == "depends"
    assert a4(higher, unclear, unclear) == "supported"  # no smoothing seen
    assert a4(unclear, unclear, lower) == "inconclusive"
    assert a4(mid(None, None), mid(None, None), mid(None, None)) == "inconclusive"
    v = bn.a4_verdict(higher, unclear, unclear)
    assert (v.value, v.ci_low, v.ci_high) == (1.0, 0.8, 1.2)  # the value shown is β-smoothness
    assert "loss range contradicted (flips at 1.2)" in v.flip_text


def test_settings_and_grid():
    s = bn.PROFILES["quick"]
    np.testing.assert_allclose(bn.lr_grid(s), np.logspace(-2, 2, 9))
    assert bn.lr_grid(bn.PROFILES["full"]).size == 16
    assert override(s, ["base.optim.lr=0.5"]).base.optim.lr == 0.5
    assert override(s, ["landscape_lr=1.0"]).landscape_lr == 1.0
    with pytest.raises(ConfigError, match="landscape_lr"):
        override(s, ["landscape_lr=0.2"])  # not a rate of the grid: no runs to read
    with pytest.raises(ConfigError, match="eta_multipliers"):
        override(s, ["eta_multipliers=[1.0]"])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny profile, run once for this module, its figures checked as drawn: (folder, verdicts, checks)."""
    with checking_figures() as drawn:
        out, verdicts = run_experiment("batchnorm", profile="tiny", root=tmp_path_factory.mktemp("runs"))
    return out, verdicts, drawn


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The tiny profile's (folder, verdicts)."""
    return tiny_run[:2]


def test_every_figure_is_drawn_clean_and_captioned(tiny_run):
    out, _, drawn = tiny_run
    assert_clean(drawn, out)


def test_tiny_profile_end_to_end(tiny):
    out_dir, verdicts = tiny
    assert [v.claim for v in verdicts] == list(bn.CLAIMS)
    for v in verdicts:
        assert v.value is not None and v.ci_low <= v.value <= v.ci_high
        assert v.verdict in ("supported", "contradicted", "inconclusive", "depends")
    for name in ("stability.png", "landscape.png", "ics.png", "verdicts.json"):
        assert (out_dir / name).exists()
    result = sweep.load(out_dir / "bn")  # 5 lrs × 2 seeds, evaluated at steps 0, 20, 40
    assert result.cfg.model.batch_norm and not sweep.load(out_dir / "nobn").cfg.model.batch_norm
    assert result.measures["beta"].shape == (10, 3) and result.measures["ics_cos"].shape == (10, 3, 2)
    at_lr = np.isclose(result.lrs, 0.1)
    assert at_lr.sum() == 2 and np.isfinite(result.measures["beta"][at_lr]).all()


def test_finished_sweeps_are_reused_and_edited_settings_refused(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    reused, original = [], sweep.run
    monkeypatch.setattr(sweep, "run", lambda *a, **k: reused.append(original(*a, **k).reused))
    s = bn.PROFILES["tiny"]
    bn.run(s, out)
    assert reused == [True, True]  # nothing retrained
    assert [v.verdict for v in bn.report(out)] == [v.verdict for v in tiny[1]]
    with pytest.raises(store.StoreError, match="different config"):  # a stale measurement is never reused
        bn.run(dataclasses.replace(s, eta_multipliers=(0.5, 1.0, 2.0)), out)
