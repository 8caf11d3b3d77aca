"""The chance experiment (claims A1, A2, A7): its statistics and verdict rules on synthetic
numbers with known answers, a tiny end-to-end run and its cache."""

import dataclasses
import shutil

import numpy as np
import pytest

from figure_checks import assert_clean, tiny_run_fixtures
from experiments import chance
from netalchemy import experiment, spread, stats, store, sweep

# ----------------------------------------------------------------------------- rules


def c(low, high):
    """A CI with its estimate in the middle (or 0.1 above an open-ended CI's low end)."""
    if low is None:
        return stats.CI(None, None, None)
    return stats.CI(low + 0.1 if np.isinf(high) else (low + high) / 2, low, high)


@pytest.mark.parametrize("low, high, verdict", [
    (0.05, 0.08, "supported"),  # seeds disagree on 5-8% of examples
    (0.001, 0.004, "contradicted"),  # the same answers up to < 1%
    (0.005, 0.02, "inconclusive"),
    (None, None, "inconclusive"),
])
def test_a1_rule(low, high, verdict):
    v = chance.a1_verdict(c(low, high))
    assert v.verdict == verdict and v.rule == chance.CHURN.describe()
    assert v.flip_point == (None if low is None else low if abs(low - 0.01) < abs(high - 0.01) else high)


@pytest.mark.parametrize("cis, verdict", [
    ({"init": (0.8, 1.3), "data": (0.7, 1.2), "dropout": (0.6, 1.1)}, "supported"),  # chaos: any source suffices
    ({"init": (0.9, 1.1), "data": (0.05, 0.2), "dropout": (0.0, 0.3)}, "contradicted"),  # one culprit
    ({"init": (0.9, 1.1), "data": (0.8, 1.2), "dropout": (0.0, 0.3)}, "depends"),  # two matter, one does not
    ({"init": (0.1, 0.3), "data": (0.1, 0.4), "dropout": (0.0, 0.3)}, "depends"),  # only their combination
    ({"init": (0.9, 1.1), "data": (0.3, 0.9), "dropout": (0.6, 1.1)}, "inconclusive"),
    ({"init": (0.9, np.inf), "data": (0.6, 1.2), "dropout": (0.7, 1.1)}, "supported"),  # an open-ended CI
    ({"init": (0.9, 1.1), "data": (np.nan, np.nan), "dropout": (0.7, 1.1)}, "inconclusive"),
])
def test_a2_rule(cis, verdict):
    assert chance.a2_verdict({k: c(*v) for k, v in cis.items()}).verdict == verdict


@pytest.mark.parametrize("ulp, hand, control, verdict", [
    ((0.8, 1.0), (0.7, 1.1), True, "supported"),
    ((0.0, 0.1), (0.0, 0.2), True, "contradicted"),
    ((0.8, 1.0), (0.0, 0.2), True, "depends"),
    ((0.3, 0.9), (0.7, 1.1), True, "inconclusive"),
    ((0.8, 1.0), (0.7, 1.1), False, "inconclusive"),  # the control moved: the batching itself perturbs
    ((None, None), (0.7, 1.1), True, "inconclusive"),
])
def test_a7_rule(ulp, hand, control, verdict):
    v = chance.a7_verdict(c(*ulp), c(*hand), control)
    assert v.verdict == verdict and (v.ci_low, v.ci_high) == ulp


def test_a7_threshold_is_midway_between_the_copy_and_seed_levels_and_the_flip_point_shows_the_margin():
    assert chance.FAR.threshold == (0 + 1) / 2 and "0, an unperturbed copy" in chance.FAR.describe()
    v = chance.a7_verdict(c(0.55, 0.9), c(0.8, 1.2), True)  # the ulp part is the closer call
    assert v.verdict == "supported" and v.flip_point == 0.55


# ----------------------------------------------------------------------------- end to end


tiny_run, tiny = tiny_run_fixtures("chance")


@pytest.mark.slow
def test_every_figure_is_drawn_clean_and_captioned(tiny_run):
    out, _, drawn = tiny_run
    assert_clean(drawn, out)


@pytest.mark.slow
def test_tiny_profile_end_to_end(tiny):
    out_dir, verdicts = tiny
    assert [v.claim for v in verdicts] == list(chance.CLAIMS)
    for v in verdicts:
        assert v.verdict in experiment.VERDICTS and v.rule
        assert (out_dir / v.figure).stat().st_size > 5000
    for name in ("a1_accuracy.png", "a2_spread.png", "verdicts.json", "a1.npz", "a2.npz"):
        assert (out_dir / name).exists()
    a1 = verdicts[0]
    assert a1.value is not None and 0 <= a1.ci_low <= a1.value <= a1.ci_high <= 1
    assert "majority vote" in a1.measurement and "× all's" in verdicts[1].measurement
    arrays = np.load(out_dir / "a1.npz")  # 4 seeds: ensembles of 1, 2 and 4
    np.testing.assert_array_equal(arrays["ensemble_sizes"], [1, 2, 4])
    ok = ~arrays["diverged"]
    members = np.mean(arrays["predictions"][ok] == arrays["y_test"], axis=-1)
    assert set(np.round(arrays["ensemble_softmax"][:, 0], 12)) <= set(np.round(members, 12))
    vote = np.mean(spread.majority_vote(arrays["predictions"][ok], 10) == arrays["y_test"])
    np.testing.assert_allclose(arrays["ensemble_vote"][:, -1], vote)  # every draw of all 4 is the whole
    a7 = np.load(out_dir / "a7.npz")
    np.testing.assert_array_equal(a7["steps"], [0, 25, 50, 75, 100])
    assert np.all(a7["dist_copy"] == 0) and np.all(a7["churn_copy"] == 0)  # the control stays bitwise identical
    assert np.all(a7["dist_seed"][:, -1] > 0.1) and np.all(a7["dist_ulp"][:, 0] < 1e-6)
    assert np.all(a7["dist_ulp"][:, 0] > 0) and np.all(a7["dist_hand"][:, 0] == 0)  # one ulp apart; same init
    # Running again reuses every stored part and reports the same verdicts.
    _, again = experiment.run_experiment("chance", profile="tiny", root=out_dir.parent.parent)
    assert again == verdicts


@pytest.mark.slow
def test_every_sweep_is_the_engine_s_and_an_edited_setting_never_reuses_a_stale_part(tiny, tmp_path, monkeypatch):
    out = tmp_path / "tiny"
    shutil.copytree(tiny[0], out)
    folders = {p.name for p in out.iterdir() if (p / "config.json").exists()}
    assert folders == {"a1", "a2-init", "a2-data", "a2-dropout", "a2-all", "a7-ref", "a7-hand", "a7-seed"}
    ref = sweep.load(out / "a7-ref")
    assert ref.measures["sketch"].shape == (3 * 2, 5, chance.SKETCH_SIZE, 2) and list(ref.lrs) == [ref.lrs[0]] * 6
    calls, engine = [], sweep.run
    monkeypatch.setattr(sweep, "run", lambda cfg, **kw: calls.append(kw["out_dir"].name) or engine(cfg, **kw))
    s = chance.PROFILES["tiny"]
    chance.run(s, out)  # unchanged: every part's stored arrays reused, no sweep even opened
    assert calls == []
    # An edited setting recomputes its part only; its sweep folder, trained with the old config, is refused.
    with pytest.raises(store.StoreError, match="a2-init holds a sweep with a different config"):
        chance.run(dataclasses.replace(s, a2_dropout=0.2), out)
    assert calls == ["a2-init"]
    with pytest.raises(store.StoreError, match="a7-ref holds a sweep with a different config"):
        chance.run(dataclasses.replace(s, a7_eval_every=50), out)
    assert calls == ["a2-init", "a7-ref"]
