"""Layers as stages: probes, CKA correspondence, verdict rules, and the tiny profile end to end."""

import itertools

import jax
import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import stages
from netalchemy import config as config_lib
from netalchemy import probes, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig
from netalchemy.data import Dataset
from netalchemy.experiment import run_experiment


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


def _all_pairs(n):
    return np.array(list(itertools.combinations(range(n), 2)))


def test_seed_bootstrap_estimates_the_mean_over_pairs():
    pairs = _all_pairs(6)
    values = np.random.default_rng(0).uniform(size=len(pairs))
    ci = stages.seed_bootstrap_ci(values, pairs, 6)
    assert ci.estimate == pytest.approx(values.mean()) and ci.low < ci.estimate < ci.high
    assert stages.seed_bootstrap_ci(np.full(len(pairs), 0.75), pairs, 6) == (0.75, 0.75, 0.75)


def test_seed_bootstrap_sees_that_pairs_sharing_a_seed_are_not_independent():
    """One odd seed spoils the 7 of 28 pairs it is in. Resampled as if independent, the pairs give
    0.75 ± ≈ 0.16 (binomial sd sqrt(0.75 · 0.25 / 28) ≈ 0.08); resampling seeds, a third of the resamples
    ((7/8)^8 ≈ 0.34) miss seed 0 and score 1, others hold it twice: the CI is nearly twice as wide."""
    pairs = _all_pairs(8)
    values = np.where((pairs == 0).any(axis=1), 0.0, 1.0)
    by_seed, by_pair = stages.seed_bootstrap_ci(values, pairs, 8), stats.bootstrap_ci(values)
    assert by_seed.estimate == by_pair.estimate == 0.75
    assert by_pair.high - by_pair.low == pytest.approx(2 * 1.96 * (0.75 * 0.25 / 28) ** 0.5, abs=0.05)
    assert by_seed.high == 1.0 and by_seed.high - by_seed.low > 1.5 * (by_pair.high - by_pair.low)


def test_probe_gain_and_stage_share_by_hand():
    trained = np.array([[0.3, 0.5, 0.6, 0.7, 0.8, 0.9],  # input, 4 hidden, logits
                        [0.3, 0.5, 0.5, 0.5, 0.5, 0.9]])
    init = np.array([[0.3, 0.4, 0.4, 0.3, 0.2, 0.1],
                     [0.3, 0.3, 0.3, 0.2, 0.3, 0.1]])
    gain = stages.probe_gain(trained, init)
    np.testing.assert_allclose(gain, [[0, 0.1, 0.2, 0.4, 0.6], [0, 0.2, 0.2, 0.3, 0.2]], atol=1e-12)
    # seed 0: the gain rises at all 4 transitions; seed 1: at 0→1 and 2→3 (flat at 1→2, falls at 3→4)
    np.testing.assert_allclose(stages.stage_share(trained, init), [1.0, 0.5])


def _probes(gains, seeds=20):
    """(trained, init) probe accuracies whose per-layer gain over init is `gains` (input, hidden…), ± noise."""
    noise = np.random.default_rng(0).normal(0, 0.01, (seeds, len(gains) + 1))
    init = np.full((seeds, len(gains) + 1), 0.3) + noise
    init[:, 0] = 0.25  # the input is the same for the trained and the untrained net
    trained = init + np.array([*gains, 0.0]) + np.random.default_rng(1).normal(0, 0.01, init.shape)
    trained[:, 0] = init[:, 0]
    return trained, init


def test_m14_judges_the_gain_over_the_untrained_net():
    m14 = stages.m14_verdict(*_probes([0, 0.2, 0.4, 0.6, 0.8]))
    assert m14.verdict == "supported" and m14.value == pytest.approx(0.6, abs=0.02)  # gain 0.8 at the last − 0.2
    # Every step adds ≈ 0.2; the nearest to flipping is a step, whose CI low end (≈ 0.19) is the flip point.
    assert 0.17 < m14.flip_point < 0.2 and m14.flip_of.startswith("layer ")
    assert stages.m14_verdict(*_probes([0, 0.2, 0.4, 0.4, 0.4])).verdict == "depends"  # rises, then saturates
    assert stages.m14_verdict(*_probes([0, 0.3, 0.2, 0.1, 0.0])).verdict == "contradicted"  # deeper layers gain less
    assert stages.m14_verdict(*_probes([0, 0.3, 0.3, 0.3, 0.3])).verdict == "inconclusive"
    # Trained accuracy rising with depth is not enough: here random features rise as much (the gain is flat).
    trained, init = _probes([0, 0.3, 0.3, 0.3, 0.3])
    ramp = np.array([0, 0, 0.1, 0.2, 0.3, 0])
    assert np.all(np.diff((trained + ramp).mean(0)[:-1]) > 0.05)
    assert stages.m14_verdict(trained + ramp, init + ramp).verdict == "inconclusive"


def test_a5_judges_homology_over_seed_pairs_and_stages_on_their_own():
    pairs = _all_pairs(20)  # the seeds of `_probes`
    matched = np.stack([np.eye(6) * 0.5 + 0.4] * len(pairs))
    scrambled = np.stack([np.roll(np.eye(6), 1, axis=1) * 0.5 + 0.4] * len(pairs))
    rising = _probes([0, 0.2, 0.4, 0.6, 0.8])
    falling = _probes([0, 0.4, 0.3, 0.2, 0.1])
    a5 = stages.a5_verdict(matched, pairs, *rising)
    assert a5.verdict == "supported" and (a5.value, a5.ci_low) == (1.0, 1.0)
    assert stages.HOMOLOGY.describe() in a5.rule and stages.STAGE_RISE.describe() in a5.rule
    assert stages.a5_verdict(matched, pairs, *falling).verdict == "depends"  # homology without stages
    assert stages.a5_verdict(scrambled, pairs, *falling).verdict == "contradicted"
    assert stages.a5_verdict(scrambled, pairs, *rising).verdict == "depends"


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("stages", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == ["M14", "A5"]
    assert all(v.value is not None and v.ci_low <= v.value <= v.ci_high for v in verdicts)
    assert all(v.flip_point is not None and v.flip_text.startswith(v.verdict) for v in verdicts)
    assert (out_dir / "probes.png").exists() and (out_dir / "cka.png").exists() and (out_dir / "verdicts.json").exists()
    r = store.read_npz(out_dir / "results.npz")
    assert r["probe_trained"].shape == r["probe_init"].shape == (4, 6)  # 4 seeds; input, 4 hidden, logits
    np.testing.assert_array_equal(r["probe_trained"][:, 0], r["probe_init"][:, 0])  # the input: no gain
    assert r["cka_within"].shape == (4, 6, 6) and r["cka_cross"].shape == (6, 6, 6)  # every pair of 4 seeds
    np.testing.assert_array_equal(r["pairs"], _all_pairs(4))
    np.testing.assert_allclose(np.diagonal(r["cka_within"], axis1=1, axis2=2), 1.0, rtol=1e-6)  # a layer vs itself
    # results.npz is cached by the full settings: an edited CKA setting recomputes it on the same sweep
    finished = sweep.load(out_dir / "sweep").finished
    stages.run(config_lib.override(stages.PROFILES["tiny"], ["cka_examples=50"]), out_dir)
    again = store.read_npz(out_dir / "results.npz")
    assert not np.allclose(again["cka_cross"], r["cka_cross"])
    np.testing.assert_array_equal(again["probe_trained"], r["probe_trained"])
    assert sweep.load(out_dir / "sweep").finished == finished
