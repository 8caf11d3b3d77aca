"""experiments/hyperparams.py: the tiny profile end to end, and the verdict rules on synthetic numbers."""

import dataclasses
import math

import numpy as np
import pytest

from figure_checks import assert_clean, checking_figures
from experiments import hyperparams as H
from netalchemy import config as C
from netalchemy import oscillation as O
from netalchemy import spread, stats, sweep, verdicts
from netalchemy.experiment import VERDICTS, run_experiment
from netalchemy.stats import CI


def test_tiny_profile_end_to_end(tmp_path):
    with checking_figures() as drawn:
        out, verdicts = run_experiment("hyperparams", profile="tiny", root=tmp_path)
    assert_clean(drawn, out)
    assert [v.claim for v in verdicts] == list(H.CLAIMS)
    assert all(v.verdict in VERDICTS and v.rule and v.measurement and v.flip_text for v in verdicts)
    for name in ("verdicts.json", "settings.json", "lr_sweep.png", "optimizers.png", "variance_shares.png",
                 "sweep-sgd/config.json", "sweep-adam/config.json"):
        assert (out / name).exists(), name
    # M8's sweeps: each at the lr its grid sweep tuned for speed, on seeds the tuning never saw, with the hook
    s = H.PROFILES["tiny"]
    for name in s.optimizers:
        grid = sweep.load(out / f"sweep-{name}")
        cfg, hook, folder = H.m8_sweep(s, grid, 10, out)
        m8 = sweep.load(folder)
        assert not set(m8.seeds) & set(grid.seeds) and len(m8.seeds) == len(set(grid.seeds))
        assert m8.lrs[0] == pytest.approx(cfg.optim.lr) and cfg.optim.lr in H.lr_grid(s)
        assert set(m8.measures) == {"sign_flips", "step_spread"} and hook == O.UpdateDynamics(s.replay_steps)
        assert m8.measures["sign_flips"].shape == m8.history["train_loss"].shape
    # report works from the files alone (the finished sweeps are reused), and gives the same verdicts again
    assert H.report(out) == verdicts


# ----------------------------------------------------------------------------- measurements


def test_lr_grid_is_log_spaced_and_inclusive():
    grid = H.lr_grid(H.Settings(lr_min=1e-4, lr_max=1.0, n_lrs=5))
    np.testing.assert_allclose(grid, [1e-4, 1e-3, 1e-2, 1e-1, 1.0])


def test_settings_reject_a_baseline_not_among_the_optimizers():
    with pytest.raises(C.ConfigError):
        H.Settings(optimizers=("adam",), baseline="sgd")
    with pytest.raises(C.ConfigError):
        H.Settings(lr_min=1.0, lr_max=0.1)
    with pytest.raises(C.ConfigError):
        H.Settings(optimizers=("sgd", "adam", "sgd_typo"))  # every other optimizer needs a mechanism to measure


def sweep_of(final_loss, diverged, acc=None, steps=(0, 10)) -> sweep.SweepResult:
    """A SweepResult whose final evaluation holds the given (lrs, seeds) values."""
    final_loss = np.asarray(final_loss, float)
    runs, n = final_loss.size, final_loss.shape[1]
    hist = {m: np.zeros((runs, len(steps))) for m in sweep.METRICS}
    hist["train_loss"][:, -1] = final_loss.ravel()
    hist["diverged"][:, -1] = np.asarray(diverged, float).ravel()
    hist["test_acc"][:, -1] = np.zeros(runs) if acc is None else np.asarray(acc, float).ravel()
    cfg = C.override(C.Config(), [f"seeds.n={n}"])
    return sweep.SweepResult(cfg, np.tile(np.arange(n), final_loss.shape[0]), np.zeros(runs), hist, None, None, {}, None)


def test_finals_failed_runs():
    loss = np.array([[0.5, np.nan], [math.log(10) + 0.01, 2.0], [0.5, 0.4]])
    diverged = np.array([[False, False], [False, False], [True, False]])
    _, _, div, failed, _ = H.finals(sweep_of(loss, diverged), 10)
    np.testing.assert_array_equal(div, diverged)
    np.testing.assert_array_equal(failed, [[False, True], [True, False], [True, False]])


def test_tuned_lr_skips_lrs_with_a_diverged_seed():
    loss = np.array([[1.0, 1.0], [0.1, 0.1], [0.2, 0.3]])
    diverged = np.array([[False, False], [False, True], [False, False]])
    assert H.finals(sweep_of(loss, diverged), 10)[-1] == 2
    assert H.finals(sweep_of(loss, np.zeros_like(diverged)), 10)[-1] == 1
    assert H.finals(sweep_of(loss + np.array([[0.0, 0.0], [0.0, np.inf], [0.0, 0.0]]), 0 * diverged), 10)[-1] == 2
    with pytest.raises(ValueError):
        H.finals(sweep_of(loss, np.ones_like(diverged)), 10)


def test_m8_tunes_for_speed_on_held_out_seeds(tmp_path):
    """The lr with the lowest final loss (index 1) is slower to the target than index 2: M8 takes index 2 (fewest
    median steps), M7/A3's `finals` index 1; the M8 sweep runs on the next seeds."""
    s = H.Settings(base=C.override(C.Config(), ["seeds.n=3"]), lr_min=1e-3, lr_max=1.0, n_lrs=4)
    curves = {0: [2.3, 2.2, 2.1], 1: [2.3, 1.5, 0.05], 2: [2.3, 0.5, 0.1], 3: [2.3, 0.2, 0.5]}
    grid = sweep_of(np.zeros((4, 3)), np.zeros((4, 3)), steps=(0, 10, 20))
    for i, curve in curves.items():
        grid.history["train_loss"][3 * i:3 * i + 3] = curve
    grid.history["step"][:] = [0, 10, 20]
    grid.history["diverged"][9:, -1] = 1  # the fastest lr has diverged seeds: never tuned
    cfg, hook, folder = H.m8_sweep(s, grid, 10, tmp_path)
    assert H.finals(grid, 10)[-1] == 1
    assert cfg.optim.lr == pytest.approx(H.lr_grid(s)[2]) and cfg.seeds.start == 3 and cfg.seeds.n == 3
    assert folder.parent == tmp_path and folder.name.startswith("m8-") and hook.steps == s.replay_steps
    assert H.m8_sweep(dataclasses.replace(s, replay_steps=5), grid, 10, tmp_path)[2] != folder  # another hook


def test_variance_shares_ci_on_known_grids():
    rng = np.random.default_rng(0)
    rule = H.rules(H.Settings())["lr over seed"]
    lr_effect = np.array([0.1, 0.4, 0.6, 0.3])[:, None]
    lr_dominated = lr_effect + 0.01 * rng.normal(size=(4, 16))
    shares = H.variance_shares_ci(lr_dominated, n_resamples=300)
    assert shares["lr"].estimate > 0.95 and shares["lr"].low > 0.9
    assert shares["lr"].estimate == pytest.approx(spread.grid_variance_shares(lr_dominated, ("lr", "seed"))["lr"])
    assert rule.decide(shares["lr_minus_seed"]) == "supported"
    seed_dominated = 0.001 * lr_effect + rng.normal(size=(1, 16)) + 0.01 * rng.normal(size=(4, 16))
    shares = H.variance_shares_ci(seed_dominated, n_resamples=300)
    assert shares["seed"].estimate > 0.9 and shares["seed"].low <= shares["seed"].estimate <= shares["seed"].high
    assert rule.decide(shares["lr_minus_seed"]) == "contradicted"


def test_variance_shares_ci_resamples_whole_seed_columns():
    """The percentile interval equals one computed by hand from the same column resamples."""
    grid = np.random.default_rng(1).normal(size=(5, 8)) + np.arange(5)[:, None]
    got = H.variance_shares_ci(grid, n_resamples=400, seed=3)
    cols = np.random.default_rng(3).integers(0, 8, (400, 8))
    boot = [spread.grid_variance_shares(grid[:, c], ("lr", "seed"))["seed"] for c in cols]
    np.testing.assert_allclose([got["seed"].low, got["seed"].high], np.percentile(boot, [2.5, 97.5]), rtol=1e-12)


def test_window_indices():
    lrs = np.logspace(-5, 1, 13)
    np.testing.assert_array_equal(H.window_indices(lrs, 6, 1.0), [4, 5, 6, 7, 8])
    np.testing.assert_array_equal(H.window_indices(lrs, 0, 1.0), [0, 1, 2])
    np.testing.assert_array_equal(H.window_indices(np.logspace(-3, 1, 3), 1, 1.0), [0, 1, 2])


# ----------------------------------------------------------------------------- rules


def mid(low, high):
    return CI((low + high) / 2, low, high)


RULES = H.rules(H.Settings())


@pytest.mark.parametrize("slow, unstable, expected", [
    ((1.0, 2.0), (0.8, 1.0), ("supported", "supported")),
    ((0.0, 0.1), (0.0, 0.1), ("contradicted", "contradicted")),  # small lr no slower, large lr stable
    ((1.0, 2.0), (0.0, 0.1), ("supported", "contradicted")),
    ((0.1, 2.0), (0.8, 1.0), ("inconclusive", "supported")),
])
def test_m7_rules(slow, unstable, expected):
    parts = [verdicts.Part("slow", RULES["slow"], mid(*slow)), verdicts.Part("unstable", RULES["unstable"], mid(*unstable))]
    assert tuple(verdicts.holm(parts)) == expected
    assert "lies above 0.25 nats" in RULES["slow"].describe()


def test_a_failure_rate_of_sixteen_in_sixteen_is_a_wilson_interval():
    rate = stats.fraction_ci(np.ones(16, bool))
    assert rate.low == pytest.approx(0.806, abs=1e-3) and rate.high == 1.0
    rule = RULES["unstable"]
    assert rule.decide(rate) == "supported" and rule.flip_point(rate) == pytest.approx(0.806, abs=1e-3)
    assert rule.flip_text(rate) == "supported; flips at 0.806"


@pytest.mark.parametrize("mechanism, faster, expected", [
    ((0.1, 0.3), (0.7, 0.9), "supported"),
    ((0.1, 0.3), (0.4, 0.7), "supported"),  # the claim names the mechanism; speed alone decides nothing
    ((0.1, 0.3), (0.1, 0.3), "depends"),  # the mechanism is there, but slower to the target
    ((-0.3, -0.1), (0.7, 0.9), "contradicted"),  # faster, but not by the named mechanism
    ((-0.1, 0.1), (0.7, 0.9), "inconclusive"),
])
def test_m8_one(mechanism, faster, expected):
    d = verdicts.holm([verdicts.Part("mechanism", RULES["sign_flips"], mid(*mechanism)),
                       verdicts.Part("faster", RULES["faster"], mid(*faster))])
    assert H.m8_one(*d) == expected


def test_mechanism_rules_need_a_drop_below_sgd():
    for name in ("sign_flips", "step_spread"):
        assert RULES[name].decide(mid(0.01, 0.2)) == "supported"
        assert RULES[name].decide(mid(-0.2, -0.01)) == "contradicted"
        assert RULES[name].reason and "lies above 0" in RULES[name].describe()


def test_a3_rule_has_a_zone_between_margin_and_zero():
    rule = RULES["lr over seed"]
    assert rule.decide(mid(0.3, 0.5)) == "supported"
    assert rule.decide(mid(-0.3, -0.1)) == "contradicted"
    assert rule.decide(mid(0.05, 0.15)) == "inconclusive"  # more than chance, but not '≫'
    assert "lies above 0.2" in rule.describe() and "contradicted iff it lies below 0" in rule.describe()


# ----------------------------------------------------------------------------- the rule chain on synthetic sweeps


def fake_sweep(settings: H.Settings, speed: float, rng) -> sweep.SweepResult:
    """Histories of an optimizer whose loss decays as 2.3·exp(−speed·f(lr)·t) + 0.05; the largest lr diverges."""
    lrs, n = H.lr_grid(settings), settings.base.seeds.n
    steps = np.arange(0, settings.base.train.steps + 1, settings.base.train.eval_every, dtype=float)
    rate = np.geomspace(0.01, 1.0, len(lrs) - 1)  # larger lr, faster (until it diverges)
    hist = {m: np.zeros((len(lrs) * n, len(steps))) for m in sweep.METRICS}
    for i in range(len(lrs)):
        for j in range(n):
            run = i * n + j
            if i == len(lrs) - 1:
                loss = np.full(len(steps), np.nan)
                loss[0] = 2.3
                hist["diverged"][run, 1:] = 1
            else:
                loss = 2.3 * np.exp(-speed * rate[i] * steps / steps[-1] * 8) + 0.05 * (1 + 0.1 * rng.random())
            hist["train_loss"][run] = loss
            hist["step"][run] = steps
            hist["test_acc"][run] = 0.1 + 0.6 * (1 - np.nan_to_num(loss, nan=2.3) / 2.35) + 0.01 * rng.random()
    return sweep.SweepResult(settings.base, np.tile(np.arange(n), len(lrs)), np.repeat(lrs, n), hist,
                             None, None, {}, None)


def synthetic_settings(**kw):
    base = C.override(C.Config(), ["train.steps=1000", "train.eval_every=100", "seeds.n=8"])
    return dataclasses.replace(H.Settings(base=base, lr_min=1e-3, lr_max=1.0, n_lrs=5, n_resamples=300), **kw)


def fake_m8_sweep(settings: H.Settings, name: str, speed: float, flips: float, spread: float, rng):
    """An M8 sweep at one lr: loss 2.3·exp(−speed·t/T·4), hook measures ≈ `flips`, `spread` (seeds, evals)."""
    n, steps = settings.base.seeds.n, np.arange(0, settings.base.train.steps + 1, settings.base.train.eval_every, float)
    hist = {m: np.zeros((n, len(steps))) for m in sweep.METRICS}
    hist["step"][:] = steps
    hist["train_loss"][:] = 2.3 * np.exp(-speed * (1 + 0.1 * rng.random((n, 1))) * steps / steps[-1] * 4)
    hist["test_acc"][:] = 0.7
    measures = {k: v + 0.02 * rng.normal(size=(n, len(steps)))
                for k, v in (("sign_flips", flips), ("step_spread", spread))}
    cfg = C.override(settings.base, [f"optim.name={name}", "optim.lr=0.01", f"seeds.start={n}"])
    return sweep.SweepResult(cfg, np.arange(n, 2 * n), np.full(n, 0.01), hist, None, None, {}, None, measures=measures)


@pytest.mark.parametrize("momentum_flips, adam_spread, adam_speed, m8", [
    (0.2, 0.3, 3.0, "supported"),  # both mechanisms measured, both faster
    (0.2, 0.3, 0.3, "depends"),  # adam equalises its steps but is slower than SGD
    (0.6, 1.0, 3.0, "contradicted"),  # momentum flips more, adam spreads more: faster, not by the named mechanisms
])
def test_rule_chain_on_synthetic_sweeps(tmp_path, momentum_flips, adam_spread, adam_speed, m8):
    s = synthetic_settings(optimizers=("sgd", "momentum", "adam"))
    rng = np.random.default_rng(0)
    results = {"sgd": fake_sweep(s, 1.0, rng), "adam": fake_sweep(s, 3.0, rng)}
    tuned = {"sgd": fake_m8_sweep(s, "sgd", 1.0, 0.45, 0.8, rng),
             "momentum": fake_m8_sweep(s, "momentum", 2.0, momentum_flips, 0.8, rng),
             "adam": fake_m8_sweep(s, "adam", adam_speed, 0.45, adam_spread, rng)}
    assert H.finals(results["sgd"], 10)[-1] == 3  # the largest lr that does not diverge
    with checking_figures() as drawn:
        v = {x.claim: x for x in (H.m7(s, results, 10, tmp_path), H.m8(s, tuned, 10, tmp_path),
                                  H.a3(s, results, 10, tmp_path))}
    assert_clean(drawn, tmp_path)
    assert v["M7"].verdict == "supported" and v["M7"].value == 1.0  # every seed diverged at the largest lr
    assert v["M8"].verdict == m8
    assert v["A3"].verdict == "supported"
    assert "momentum" in v["M8"].measurement and "adam" in v["A3"].measurement
    assert v["M8"].unit in ("fraction", "decades") and v["M8"].figure == "optimizers.png"
