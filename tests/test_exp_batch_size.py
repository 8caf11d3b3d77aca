"""experiments/batch_size.py: the tiny profile end to end, its caches (recomputed exactly when a setting
they depend on changes), the gradient-noise hook inside the engine against a direct computation and
against its exact sampling formula, throughput timed through the engine's program, and the verdict
rules on synthetic numbers."""

import dataclasses
import math
import shutil
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.flatten_util import ravel_pytree

from figure_checks import assert_clean, checking_figures
from experiments import batch_size as B
from netalchemy import backprop, mlp, stats, store, sweep, train, verdicts
from netalchemy import config as C
from netalchemy.data import load
from netalchemy.experiment import VERDICTS, run_experiment


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """The tiny profile, run once for this module, its figures checked as drawn: (folder, verdicts, checks)."""
    with checking_figures() as drawn:
        out, verdicts = run_experiment("batch_size", profile="tiny", root=tmp_path_factory.mktemp("runs"))
    return out, verdicts, drawn


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The tiny profile's (folder, verdicts)."""
    return tiny_run[:2]


@pytest.fixture(scope="module")
def mnist1d():
    return load(C.DataConfig())


def test_every_figure_is_drawn_clean_and_captioned(tiny_run):
    out, _, drawn = tiny_run
    assert_clean(drawn, out)


def test_tiny_profile_end_to_end(tiny):
    out, verdicts = tiny
    assert [v.claim for v in verdicts] == list(B.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule and v.measurement for v in verdicts)
    for name in ("verdicts.json", "analysis.json", "grad_noise.png", "throughput.png", "gap.png"):
        assert (out / name).exists(), name
    noise = store.read_npz(out / "noise.npz")
    assert noise["noise"].shape == (2, 2, 3) and np.all(noise["noise"] > 0)  # (points, seeds, batch sizes)
    assert not np.array_equal(noise["noise"][0], noise["noise"][1])  # the trained point is another net
    assert B.report(out) == verdicts


def test_cache_recomputes_exactly_when_a_setting_it_depends_on_changes(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    noise = mock.Mock(wraps=B.measure_noise)
    throughput = mock.Mock(wraps=B.measure_throughput)
    monkeypatch.setattr(B, "measure_noise", noise)
    monkeypatch.setattr(B, "measure_throughput", throughput)
    s = B.PROFILES["tiny"]
    B.run(s, out)  # unchanged: both stored values are reused
    assert (noise.call_count, throughput.call_count) == (0, 0)
    B.run(dataclasses.replace(s, noise_batch_sizes=(8, 32, 64)), out)  # noise only, trained in a sweep of its own
    assert (noise.call_count, throughput.call_count) == (1, 0)
    assert store.read_npz(out / "noise.npz")["batch_sizes"].tolist() == [8, 32, 64]
    assert len(list(out.glob("noise-*"))) == 2
    B.run(dataclasses.replace(s, noise_batch_sizes=(8, 32, 64), throughput_repeats=1), out)  # throughput only
    assert (noise.call_count, throughput.call_count) == (1, 1)
    assert store.read_npz(out / "throughput.npz")["examples_per_s"].shape == (2, 1)


def test_the_noise_hook_measures_the_states_the_engine_trains(mnist1d):
    """The hook's step-0 and final columns equal a direct computation on the initial and final params."""
    cfg = B.schedule(C.Config(model=C.ModelConfig(hidden=(8,)), seeds=C.SeedsConfig(n=2)), 100, 6, 2)
    hook = B.GradientNoise(batch_sizes=(8, 64, 8000), minibatches=4)  # 8000 > N: left out
    r = sweep.run(cfg, dataset=mnist1d, progress=False, measure=hook)
    assert r.measures["noise"].shape == (2, 3, 2)  # (runs, evaluations at 0, 3, 6, batch sizes)
    x, y = jnp.asarray(mnist1d.x_train), jnp.asarray(mnist1d.y_train, jnp.int32)
    params, bn = sweep.initial_params(cfg, r.seeds, in_features=x.shape[1], num_classes=mnist1d.num_classes)
    for column, (p, s, step) in ((0, (params, bn, 0)), (-1, (r.final.params, r.final.bn_state, 6))):
        for i, seed in enumerate(r.seeds):
            key = jax.random.fold_in(train.stream_key(int(seed), "data"), step)
            direct = [B.minibatch_gradient_noise(*jax.tree.map(lambda a: jnp.asarray(a[i]), (p, s)), x, y,
                                                 jax.random.fold_in(key, b), cfg=cfg.model, batch_size=b, minibatches=4)
                      for b in (8, 64)]
            np.testing.assert_allclose(r.measures["noise"][i, column], direct, rtol=1e-4)
    assert np.all(r.measures["noise"][:, :, 0] > r.measures["noise"][:, :, 1])  # smaller batches: noisier


def test_minibatch_gradient_noise_matches_the_sampling_formula():
    """E‖g_B − g_N‖² = (1/B − 1/N) · N/(N − 1) · mean_i ‖g_i − g_N‖² for B drawn without replacement."""
    cfg = C.ModelConfig(hidden=(8,))
    n, features, classes, batch = 64, 5, 3, 8
    kx, ky, kp = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(kx, (n, features))
    y = jax.random.randint(ky, (n,), 0, classes)
    params, state = mlp.init(kp, cfg, in_features=features, num_classes=classes)
    flat = lambda xs, ys: ravel_pytree(backprop.autodiff_grad(params, state, xs, ys, cfg=cfg)[0])[0]  # noqa: E731

    @jax.jit
    def spread():
        per_example = jax.vmap(lambda xi, yi: flat(xi[None], yi[None]))(x, y)  # (n, P)
        full = flat(x, y)
        return jnp.max(jnp.abs(per_example.mean(axis=0) - full)), jnp.mean(jnp.sum(jnp.square(per_example - full), 1))

    mean_error, spread = map(float, spread())
    assert mean_error < 1e-5  # the full gradient is the mean of the per-example gradients
    exact = (1 / batch - 1 / n) * n / (n - 1) * spread
    got = float(B.minibatch_gradient_noise(params, state, x, y, jax.random.key(1), cfg=cfg, batch_size=batch,
                                           minibatches=4096))
    assert got == pytest.approx(exact, rel=0.05)


def test_throughput_times_the_engines_program(mnist1d, monkeypatch):
    """One warm-up call and `repeats` timed calls of `sweep.train_chunk` per batch size, nothing else trained."""
    chunk = mock.Mock(wraps=sweep.train_chunk)
    monkeypatch.setattr(sweep, "train_chunk", chunk)
    s = dataclasses.replace(B.PROFILES["tiny"], throughput_batch_sizes=(8, 512, 8000), throughput_repeats=3)
    tp = B.measure_throughput(s, mnist1d)
    assert tp["batch_sizes"] == [8, 512] and tp["examples_per_s"].shape == (2, 3)  # 8000 > N: left out
    assert np.all(np.isfinite(tp["examples_per_s"])) and np.all(tp["examples_per_s"] > 0)
    assert chunk.call_count == 2 * 4
    assert [c.kwargs["cfg"].train.steps for c in chunk.call_args_list[::4]] == [256, 4]  # 2048 examples each


def test_effective_batch_size_and_slopes():
    n = 4000
    sizes = np.array([8, 32, 128, 512, 2048])
    np.testing.assert_allclose(B.effective_batch_size(sizes, n), 1 / (1 / sizes - 1 / n))
    rng = np.random.default_rng(0)
    exact = 3.0 / B.effective_batch_size(sizes, n) * np.exp(0.02 * rng.normal(size=(6, len(sizes))))
    slopes = B.noise_slopes(sizes, exact, n)
    np.testing.assert_allclose(slopes, -1.0, atol=0.03)
    sqrt_law = 3.0 / np.sqrt(sizes) * np.ones((6, 1))
    np.testing.assert_allclose(B.noise_slopes(sizes, sqrt_law, n), -0.5, atol=0.1)


@pytest.mark.parametrize("cis, expected", [
    ([(-1.05, -0.95), (-1.1, -0.9)], "supported"),
    ([(-1.05, -0.95), (-0.6, -0.4)], "contradicted"),  # e.g. noise ∝ 1/√B at one point
    ([(-1.05, -0.95), (-1.3, -0.9)], "inconclusive"),
    ([(-1.05, -0.95), (None, None)], "inconclusive"),
])
def test_noise_parts(cis, expected):
    noise = [stats.CI(None if lo is None else (lo + hi) / 2, lo, hi) for lo, hi in cis]
    parts = B.m9_parts(noise, stats.CI(0.5, 0.3, 0.8), stats.CI(0.03, 0.01, 0.05), tolerance=0.15)
    decisions = dict(zip((p.name for p in parts), verdicts.holm(parts)))
    assert verdicts.all_hold([decisions["noise init"], decisions["noise trained"]]) == expected


def test_throughput_and_regularise_rules_and_m9():
    assert B.PARALLEL.decide(stats.CI(0.5, 0.3, 0.8)) == "supported"
    assert B.PARALLEL.decide(stats.CI(-0.5, -0.8, -0.3)) == "contradicted"
    assert B.PARALLEL.decide(stats.CI(0.1, -0.1, 0.3)) == "inconclusive"
    assert B.PARALLEL.decide(stats.CI(0.1, math.nan, 0.3)) == "inconclusive"
    assert B.REGULARISE.decide(stats.CI(0.03, 0.01, 0.05)) == "supported"  # large batches: larger gap
    assert B.REGULARISE.decide(stats.CI(-0.03, -0.05, -0.01)) == "contradicted"
    assert B.REGULARISE.decide(stats.CI(0.02, -0.01, 0.05)) == "inconclusive"
    good = [stats.CI(-1.0, -1.05, -0.95)] * 2
    decide = lambda tp, gap: B.m9_combine(dict(zip(  # noqa: E731
        ("noise init", "noise trained", "parallelism", "regularise"),
        verdicts.holm(B.m9_parts(good, tp, gap, tolerance=0.15)))))
    assert decide(stats.CI(0.5, 0.3, 0.8), stats.CI(0.03, 0.02, 0.04)) == "supported"
    assert decide(stats.CI(0.5, 0.3, 0.8), stats.CI(-0.03, -0.04, -0.02)) == "depends"
    assert decide(stats.CI(0.5, 0.3, 0.8), stats.CI(0.0, -0.01, 0.01)) == "inconclusive"


def test_gap_config_gives_equal_epochs():
    s = B.Settings(epochs=10, evals=5)
    for b in (8, 32, 512, 4000):
        cfg = B.gap_config(s, b, 4000)
        t = cfg.train
        assert t.batch_size == b and t.steps % t.eval_every == 0 and t.steps // t.eval_every == 5
        assert 10 * 4000 <= t.steps * b < 10 * 4000 + 5 * b  # examples seen ≈ epochs × N


def test_split_test_and_lr_tuning():
    val, test = B.split_test(1000, 500)
    assert len(val) == 500 and len(test) == 500 and not set(val) & set(test)
    np.testing.assert_array_equal(np.sort(np.concatenate([val, test])), np.arange(1000))
    val_acc = np.array([[0.5, 0.5], [0.9, 0.9], [0.6, 0.6]])
    diverged = np.array([[False, False], [True, False], [False, False]])
    assert B.tune_by_validation(val_acc, np.zeros_like(diverged), 0.1) == 1
    assert B.tune_by_validation(val_acc, diverged, 0.1) == 2  # diverged seed counts as chance: (0.1+0.9)/2 < 0.6


def test_comparable_batch_sizes_leave_out_underfit_ones():
    assert B.comparable_batch_sizes([8, 32, 512, 4000], [0.84, 0.86, 0.56, 0.33], 0.05) == [8, 32]
    assert B.comparable_batch_sizes([8, 4000], [0.9, 0.88], 0.05) == [8, 4000]
    assert B.comparable_batch_sizes([8, 4000], [0.9, np.nan], 0.05) == [8]
