"""Gradient check experiment: its rules, and a small end-to-end run (trained through the engine,
one cache, the figure checked). The tiny profile (one grid row) runs end to end in test_cli and test_audit;
the finite-difference machinery is tested in test_gradcheck_numerics."""

import dataclasses

import jax
import numpy as np
import pytest

from experiments import gradcheck
from figure_checks import assert_clean, checking_figures
from netalchemy import mlp, store, sweep, train

# One model (hidden layer, batch norm, dropout, L1) checked at two seeds, trained for 3 steps.
SMALL = dataclasses.replace(gradcheck.PROFILES["tiny"], architectures=("8",), batch_norm=(True,), dropout=(0.5,),
                            l1=(1e-3,), l2=(0.0,), batch_sizes=(3,), seeds=2, max_configs=0)


def test_exact_verdicts_have_no_interval_and_flip_at_the_value():
    m3 = gradcheck.exact_verdict("M3", [("float64", gradcheck.AUTODIFF_F64, 3e-13),
                                        ("float32", gradcheck.AUTODIFF_F32, 2e-6), ("vs FD", gradcheck.FD, 4e-7)],
                                 measurement="m")
    assert m3.verdict == "supported" and (m3.value, m3.ci_low, m3.ci_high) == (3e-13, None, None)
    assert m3.flip_point is not None and "float32 supported (flips at 2e-06)" in m3.flip_text
    assert gradcheck.AUTODIFF_F64.describe() in m3.rule
    bad = gradcheck.exact_verdict("M3", [("float64", gradcheck.AUTODIFF_F64, 3e-13),
                                         ("float32", gradcheck.AUTODIFF_F32, 2e-4)], measurement="m")
    assert bad.verdict == "contradicted"
    m1 = gradcheck.exact_verdict("M1", [("M1", gradcheck.M1_RULE, abs(-np.log(0.7) - 0.357))], measurement="m",
                                 value=float(-np.log(0.7)))
    assert m1.verdict == "supported" and m1.value == pytest.approx(0.35667, abs=1e-5)
    assert m1.flip_point == pytest.approx(0.357 + np.log(0.7))  # the rule holds for any tolerance above |diff|


def test_the_grid_groups_rows_into_one_sweep_per_model():
    rows = gradcheck.grid(gradcheck.PROFILES["full"])
    assert len(rows) == (4 * 2 * 2 * 2 * 2 + 2 * 2) * 3 * 3  # no BN or dropout without a hidden layer
    models = {gradcheck.model_of(c) for c in rows}
    assert len(models) == 4 * 16 + 4
    cfg = gradcheck.training_config(SMALL, ("8", True, 0.5, 1e-3, 0.0))
    assert (cfg.model.hidden, cfg.train.l1, cfg.optim.name, cfg.train.steps, cfg.seeds.n) == ((8,), 1e-3, "sgd", 3, 2)
    data = gradcheck.random_labels(cfg, SMALL)
    assert data.x_train.shape == (16 * 3, 10) and set(np.unique(data.y_train)) <= set(range(4))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    out = tmp_path_factory.mktemp("gradcheck") / "small"
    with checking_figures() as drawn:
        gradcheck.run(SMALL, out)
        verdicts = gradcheck.report(out)
    return out, verdicts, drawn


def test_a_small_run_supports_m1_to_m3_and_draws_its_figure(small):
    out, verdicts, drawn = small
    assert [(v.claim, v.verdict) for v in verdicts] == [("M1", "supported"), ("M2", "supported"), ("M3", "supported")]
    assert_clean(drawn, out)
    records = store.read_json(out / "results.json")["value"]["records"]
    assert {(r["seed"], r["stage"]) for r in records} == {(0, "init"), (0, "trained"), (1, "init"), (1, "trained")}
    assert "hand~auto f64" in (out / "table.txt").read_text()


def test_the_points_checked_are_the_sweeps_initial_and_trained_params(small):
    out, _, _ = small
    model = gradcheck.model_of(gradcheck.grid(SMALL)[0])
    with jax.enable_x64(True):
        points = gradcheck.trained_points(SMALL, model, out)  # the finished sweep, read back
        cfg = gradcheck.training_config(SMALL, model)
        params, _ = mlp.init(train.stream_key(1, "init"), cfg.model, in_features=10, num_classes=4)
    init, trained = points["init"][0], points["trained"][0]
    for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params)):  # seed 1's init stream (vmapped: ±1 ulp)
        np.testing.assert_allclose(a[1], b, rtol=1e-15, atol=1e-15)
    assert not np.array_equal(init[0].w, trained[0].w)  # three SGD steps moved every run
    assert len(list((out / "sweeps").iterdir())) == 1


def test_the_results_are_cached_by_the_full_settings(small, monkeypatch):
    out, _, _ = small
    checked, reused = [], []
    check_row, run_sweep = gradcheck.check_row, sweep.run
    monkeypatch.setattr(gradcheck, "check_row", lambda *a: checked.append(1) or check_row(*a))
    monkeypatch.setattr(sweep, "run", lambda *a, **k: (lambda r: reused.append(r.reused) or r)(run_sweep(*a, **k)))
    gradcheck.run(SMALL, out)
    assert checked == [] and reused == []  # nothing recomputed, nothing retrained
    before = store.read_json(out / "results.json")["value"]
    gradcheck.run(dataclasses.replace(SMALL, fd_coords=3), out)  # an edited setting: recomputed
    after = store.read_json(out / "results.json")["value"]
    assert len(checked) == 2 and reused == [True]  # the sweep, whose config did not change, is reused
    fd_coords = lambda value: max(r.get("fd_coords", 0) for r in value["records"])  # per array and check
    assert (fd_coords(before), fd_coords(after)) == (6, 3)


def test_a_run_cut_after_a_models_checks_resumes_from_them_and_drops_its_programs(small, monkeypatch):
    out, _, _ = small
    gradcheck.run(SMALL, out)  # SMALL's results and checks again, whatever a test before stored
    before = store.read_json(out / "results.json")["value"]["records"]
    (out / "results.json").unlink()  # as if the process died before writing it (the full grid: LLVM out of maps)
    assert len(list((out / "checks").glob("*.json"))) == 1  # the one model's checks were stored
    cleared = []
    monkeypatch.setattr(gradcheck, "check_row", lambda *a: pytest.fail("a stored model's rows were rechecked"))
    monkeypatch.setattr(gradcheck.jax, "clear_caches", lambda: cleared.append(1))
    gradcheck.run(SMALL, out)
    assert store.read_json(out / "results.json")["value"]["records"] == before and cleared == [1]
