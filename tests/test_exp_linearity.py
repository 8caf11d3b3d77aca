"""experiments/linearity.py: the collapse, the verdict rules, a tiny run (M4, M5) whose ReLU activity (the hook
`measures.relu_activity`, tested in tests/test_measures.py) is recounted from `per_run.layers`."""

import dataclasses
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import linearity
from netalchemy import mlp, per_run, store, sweep
from netalchemy.config import Config, ModelConfig, override
from netalchemy.data import load
from netalchemy.experiment import VERDICTS, run_experiment
from netalchemy.stats import CI


def stacked_params(hidden, seeds=3, in_features=5, classes=4, dtype=np.float32):
    """Random dense layers with a leading seeds axis and non-zero biases (numpy: no compile)."""
    rng = np.random.default_rng(0)
    widths = (in_features, *hidden, classes)
    return tuple(mlp.Layer(jnp.asarray(rng.normal(size=(seeds, a, b)) / np.sqrt(a), dtype),
                           jnp.asarray(rng.normal(size=(seeds, b)), dtype))
                 for a, b in zip(widths[:-1], widths[1:]))


@pytest.mark.parametrize("hidden", [(), (7,), (6, 5, 4)])
def test_collapse_reproduces_a_linear_net_exactly_in_float64(hidden):
    with jax.enable_x64(True):
        cfg = ModelConfig(hidden=hidden, activation="linear", dtype="float64")
        params = stacked_params(hidden, dtype=np.float64)
        x = np.random.default_rng(0).normal(size=(11, 5))
        net = per_run.logits(SimpleNamespace(params=params, bn_state=()), x, cfg=Config(model=cfg))
        assert net.dtype == np.float64
        w, b = linearity.collapse(params)
        assert w.shape == (3, 5, 4) and b.shape == (3, 4)
        np.testing.assert_allclose(np.einsum("ei,sio->seo", x, w) + b[:, None], net, rtol=1e-12, atol=1e-12)


def test_collapse_check_float32_error_is_rounding_and_predictions_agree():
    cfg = Config(model=ModelConfig(hidden=(16, 16), activation="linear"))
    final = SimpleNamespace(params=stacked_params((16, 16)), bn_state=())
    x = np.random.default_rng(1).normal(size=(50, 5)).astype(np.float32)
    y = np.zeros(50, np.int32)
    out = linearity.collapse_check(final, x, y, cfg=cfg)
    assert np.all(out["collapse_error"] < 1e-5)
    np.testing.assert_array_equal(out["collapse_agreement"], 1.0)
    # The collapse does NOT hold for a ReLU net (the check would catch a wrong claim).
    relu = Config(model=ModelConfig(hidden=(16, 16)))
    assert np.all(linearity.collapse_check(final, x, y, cfg=relu)["collapse_error"] > 1e-2)


@pytest.mark.parametrize("ci, expected", [
    (CI(0.0, -0.01, 0.01), "same"), (CI(-0.05, -0.07, -0.03), "different"),
    (CI(0.0, -0.03, 0.01), "unclear"), (CI(math.nan, math.nan, math.nan), "unclear")])
def test_equivalence(ci, expected):
    names = {"supported": "same", "contradicted": "different", "inconclusive": "unclear"}
    assert names[linearity.SAME.decide(ci)] == expected


SAME, BETTER = CI(0.0, -0.01, 0.01), CI(0.3, 0.25, 0.35)


@pytest.mark.parametrize("error, lin, relu, expected", [
    (1e-6, [SAME, SAME], [BETTER, BETTER], "supported"),
    (1e-2, [SAME, SAME], [BETTER, BETTER], "contradicted"),  # the product is not the net
    (math.nan, [SAME], [BETTER], "contradicted"),
    (1e-6, [SAME, CI(-0.05, -0.07, -0.03)], [BETTER, BETTER], "depends"),  # depth finds another map
    (1e-6, [SAME, SAME], [BETTER, CI(0.01, -0.01, 0.03)], "inconclusive"),  # ReLU not clearly better
    (1e-6, [SAME, CI(0.0, -0.03, 0.01)], [BETTER, BETTER], "inconclusive"),  # CI too wide
])
def test_m4_verdict_rule(error, lin, relu, expected):
    assert linearity.m4_verdict(error, lin, relu).verdict == expected


def test_m4_row_flips_at_the_closest_part():
    v = linearity.m4_verdict(1e-6, [SAME], [BETTER], depths=[2])
    assert v.verdict == "supported" and (v.value, v.ci_low, v.ci_high) == (0.0, -0.01, 0.01)
    assert v.flip_point == -0.01  # the equivalence part is the closest call; its low end is 0.01 from −0.02
    assert "same@2 supported (flips at -0.01)" in v.flip_text and linearity.SAME.describe() in v.rule


HALF, LOW, WIDE = CI(0.5, 0.48, 0.52), CI(0.2, 0.15, 0.25), CI(0.4, 0.3, 0.5)


@pytest.mark.parametrize("init, trained, expected", [
    ([HALF, HALF], [HALF, HALF], "supported"),
    ([HALF, HALF], [HALF, LOW], "depends"),  # ~50% at init, much sparser after training
    ([LOW], [HALF], "depends"),
    ([LOW, HALF], [LOW], "contradicted"),
    ([HALF], [WIDE], "inconclusive"),
    ([], [HALF], "inconclusive"),
])
def test_m5_verdict_rule(init, trained, expected):
    assert linearity.m5_verdict(init, trained).verdict == expected


def test_m5_row_value_and_flip_point():
    v = linearity.m5_verdict([HALF], [CI(0.5, 0.45, 0.6)], value=CI(0.5, 0.45, 0.6))
    assert v.verdict == "supported" and v.ci_high == 0.6
    assert v.flip_point == 0.6  # 0.05 from the upper edge 0.65 (the low end is 0.10 from 0.35)


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out_dir, verdicts = run_experiment("linearity", profile="tiny", root=tmp_path)
    assert_clean(drawn, out_dir)
    assert [v.claim for v in verdicts] == list(linearity.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule for v in verdicts)
    for v in verdicts:
        assert (out_dir / v.figure).stat().st_size > 1000
    r = store.read_npz(out_dir / "results.npz")
    assert np.all(r["linear-2/collapse_error"] < linearity.COLLAPSE_TOL)
    np.testing.assert_array_equal(r["linear-2/collapse_agreement"], 1.0)
    # He init, zero biases, weights symmetric in sign: about half the units are on at init.
    assert abs(float(np.mean(r["relu-2/active_init"])) - 0.5) < 0.1
    # The hook's first and last measurements are the sweep's initial and final nets, counted independently
    # from the ReLU outputs of `per_run.layers` (a unit is active iff its output is > 0).
    s = linearity.PROFILES["tiny"]
    cfg = dataclasses.replace(s.base, model=linearity.models(s)["relu-2"])
    result, x = sweep.load(out_dir / "relu-2"), load(cfg.data).x_test
    p0, s0 = sweep.initial_params(cfg, result.seeds, in_features=x.shape[1], num_classes=10)
    for stage, final in (("init", SimpleNamespace(params=p0, bn_state=s0)), ("trained", result.final)):
        hidden = per_run.layers(final, x, cfg=cfg)[1:-1]  # (runs, examples, units) each
        np.testing.assert_allclose(r[f"relu-2/active_{stage}"], np.stack([np.mean(h > 0, (1, 2)) for h in hidden], 1),
                                   atol=1e-4)


def test_run_caches_results_by_the_full_settings(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(linearity, "measure", lambda s, out_dir: calls.append(s) or {"depths": np.array(s.depths)})
    tiny = linearity.PROFILES["tiny"]
    linearity.run(tiny, tmp_path)
    linearity.run(tiny, tmp_path)  # the same settings: read back, not measured again
    assert calls == [tiny]
    edited = override(tiny, ["width=17"])
    linearity.run(edited, tmp_path)
    assert calls == [tiny, edited]
