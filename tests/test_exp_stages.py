"""Layers as stages: probes, CKA correspondence, verdict rules, and the tiny profile end to end."""

import jax
import numpy as np

from experiments import stages
from netalchemy import mlp, probes
from netalchemy.config import ModelConfig
from netalchemy.experiment import run_experiment


def test_ridge_probe_reads_a_linearly_separable_code_and_not_noise():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    separable = np.eye(3)[y] * 5 + rng.normal(size=(600, 3)) * 0.1
    noise = rng.normal(size=(600, 3))
    acc = lambda f: float(probes.ridge_probe_accuracy(f[:400], y[:400], f[400:], y[400:], num_classes=3))
    assert acc(separable) == 1.0
    assert abs(acc(noise) - 1 / 3) < 0.12


def test_representations_and_active_fraction():
    cfg = ModelConfig(hidden=(7, 5))
    params, state = mlp.init(jax.random.key(0), cfg, in_features=3, num_classes=2)
    x = jax.random.normal(jax.random.key(1), (50, 3))
    reps = probes.representations(params, state, x, cfg=cfg)
    assert [r.shape for r in reps] == [(50, 3), (50, 7), (50, 5), (50, 2)]
    frac = probes.active_fraction(params, state, x, cfg=cfg)
    np.testing.assert_allclose(frac[0], np.mean(np.asarray(reps[1]) > 0))


def test_correspondence_counts_hidden_layers_matched_to_themselves():
    perfect = np.eye(5) * 0.5 + 0.4
    assert stages.correspondence(perfect) == 1.0
    shifted = perfect.copy()
    shifted[1, 2] = 0.95  # hidden layer 1 now best matches layer 2
    assert stages.correspondence(shifted) == 2 / 3


def test_verdict_rules_on_synthetic_numbers():
    seeds = 20
    rising = np.tile([0.2, 0.4, 0.6, 0.8, 0.9], (seeds, 1)) + np.random.default_rng(0).normal(0, 0.01, (seeds, 5))
    assert stages.m14_verdict(rising)[0] == "supported"
    flat_then = rising.copy()
    flat_then[:, 3] = flat_then[:, 2]
    assert stages.m14_verdict(flat_then)[0] == "depends"
    falling = rising[:, ::-1].copy()
    assert stages.m14_verdict(falling)[0] == "contradicted"
    matched = np.stack([np.eye(6) * 0.5 + 0.4] * 10)
    assert stages.a5_verdict(matched, "supported")[0] == "supported"
    assert stages.a5_verdict(matched, "contradicted")[0] == "depends"
    scrambled = np.stack([np.roll(np.eye(6), 1, axis=1) * 0.5 + 0.4] * 10)
    assert stages.a5_verdict(scrambled, "contradicted")[0] == "contradicted"


def test_tiny_profile_end_to_end(tmp_path):
    out_dir, verdicts = run_experiment("stages", profile="tiny", root=tmp_path)
    assert [v.claim for v in verdicts] == ["M14", "A5"]
    assert all(v.value is not None and v.ci_low <= v.value <= v.ci_high for v in verdicts)
    assert (out_dir / "probes.png").exists() and (out_dir / "cka.png").exists() and (out_dir / "verdicts.json").exists()
