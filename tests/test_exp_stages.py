"""Layers as stages: probes, CKA correspondence, verdict rules, and the tiny profile end to end."""

import jax
import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import stages
from netalchemy import config as config_lib
from netalchemy import mlp, probes, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig
from netalchemy.data import Dataset
from netalchemy.experiment import run_experiment


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
    np.testing.assert_allclose(reps[1], np.maximum(np.asarray(x) @ np.asarray(params[0].w) + np.asarray(params[0].b), 0),
                               rtol=1e-5, atol=1e-6)


def test_probe_accuracies_of_every_run_match_one_run_at_a_time():
    """`probe_accuracies` (all runs in one program, `per_run`) equals a plain loop over runs and layers."""
    rng = np.random.default_rng(0)
    cfg = Config(model=ModelConfig(hidden=(6, 5)), seeds=SeedsConfig(n=3))
    data = Dataset(rng.normal(size=(80, 4)).astype(np.float32), rng.integers(0, 3, 80).astype(np.int32),
                   rng.normal(size=(40, 4)).astype(np.float32), rng.integers(0, 3, 40).astype(np.int32), 3, "toy")
    nets = stages.Nets(*sweep.initial_params(cfg, [0, 1, 2], in_features=4, num_classes=3))
    got = stages.probe_accuracies(nets, data, cfg, l2=1e-3)
    assert got.shape == (3, 4)  # (runs, layers: input, 2 hidden, logits)
    for k in range(3):
        params, state = jax.tree.map(lambda a: a[k], (nets.params, nets.bn_state))
        reps = [probes.representations(params, state, x, cfg=cfg.model) for x in (data.x_train, data.x_test)]
        want = [probes.ridge_probe_accuracy(a, data.y_train, b, data.y_test, num_classes=3) for a, b in zip(*reps)]
        np.testing.assert_allclose(got[k], want, atol=1e-6)
    assert np.all(got[:, 0] == got[0, 0])  # the input layer is the same for every run


def test_correspondence_counts_hidden_layers_matched_to_themselves():
    perfect = np.eye(5) * 0.5 + 0.4
    assert stages.correspondence(perfect) == 1.0
    shifted = perfect.copy()
    shifted[1, 2] = 0.95  # hidden layer 1 now best matches layer 2
    assert stages.correspondence(shifted) == 2 / 3


def test_verdict_rules_on_synthetic_numbers():
    seeds = 20
    rising = np.tile([0.2, 0.4, 0.6, 0.8, 0.9], (seeds, 1)) + np.random.default_rng(0).normal(0, 0.01, (seeds, 5))
    m14 = stages.m14_verdict(rising)
    assert m14.verdict == "supported" and m14.value == pytest.approx(0.6, abs=0.01)  # 0.8 − 0.2 (logits excluded)
    # The step nearest to flipping is the smallest gain, 0.2, whose CI low end is the flip point.
    assert 0.19 < m14.flip_point < 0.2 and "layer 2→3 supported" in m14.flip_text
    flat_then = rising.copy()
    flat_then[:, 3] = flat_then[:, 2]
    assert stages.m14_verdict(flat_then).verdict == "depends"
    falling = rising[:, ::-1].copy()
    assert stages.m14_verdict(falling).verdict == "contradicted"
    matched = np.stack([np.eye(6) * 0.5 + 0.4] * 10)
    a5 = stages.a5_verdict(matched, "supported")
    assert a5.verdict == "supported" and (a5.value, a5.flip_point) == (1.0, 1.0)
    assert "(M14: supported)" in a5.rule and stages.HOMOLOGY.describe() in a5.rule
    assert stages.a5_verdict(matched, "contradicted").verdict == "depends"
    scrambled = np.stack([np.roll(np.eye(6), 1, axis=1) * 0.5 + 0.4] * 10)
    assert stages.a5_verdict(scrambled, "contradicted").verdict == "contradicted"


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("stages", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == ["M14", "A5"]
    assert all(v.value is not None and v.ci_low <= v.value <= v.ci_high for v in verdicts)
    assert all(v.flip_point is not None and v.flip_text.startswith(v.verdict) for v in verdicts)
    assert (out_dir / "probes.png").exists() and (out_dir / "cka.png").exists() and (out_dir / "verdicts.json").exists()
    r = store.read_npz(out_dir / "results.npz")
    assert r["probe_trained"].shape == r["probe_init"].shape == (3, 6)  # 3 seeds; input, 4 hidden, logits
    assert r["cka_within"].shape == (3, 6, 6) and r["cka_cross"].shape == (3, 6, 6)  # 3 pairs of 3 seeds
    np.testing.assert_allclose(np.diagonal(r["cka_within"], axis1=1, axis2=2), 1.0, rtol=1e-6)  # a layer vs itself
    # results.npz is cached by the full settings: an edited CKA setting recomputes it on the same sweep
    finished = sweep.load(out_dir / "sweep").finished
    stages.run(config_lib.override(stages.PROFILES["tiny"], ["cka_pairs=1"]), out_dir)
    assert store.read_npz(out_dir / "results.npz")["cka_cross"].shape == (1, 6, 6)
    assert sweep.load(out_dir / "sweep").finished == finished
