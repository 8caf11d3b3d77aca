"""Chance: seed-to-seed spread, which randomness matters, and how far one ulp carries (claims A1, A2, A7).

The essay (000): the same question asked twice gets different answers (A1); nobody knows which randomness
matters (A2); input and output relate by "correlation with a predominance of chance" (A7). Trained by `sweep.run`:
A1  seeds of the MNIST-1D default (40-100-100-10 ReLU, Adam 1e-2): the disagreement of their test predictions
    ("churn", Fort et al. 2019; Bhojanapalli et al. 2021) against their errors; their mean-softmax ensemble.
A2  one randomness stream varied at a time (`seeds.vary`: init, data order or dropout masks; dropout 0.1) and
    all three: each source's accuracy std ÷ all three's (Summers & Dinneen 2021).
A7  twins of a reference run, one weight one float32 ulp up at init (perturb hook `UlpFrom`) or hand-derived
    gradients: their parameter distance and churn to the reference (measure hook `snapshot`) against a
    different seed's. An unperturbed copy in the reference's program is the control: bitwise identical.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import config as config_lib, data as data_lib
from netalchemy import mlp, per_run, plots, spread, stats, store, sweep, train
from netalchemy.config import RANDOMNESS_STREAMS, Config, SeedsConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, judge

CLAIMS = ("A1", "A2", "A7")
CHURN_THRESHOLD = 0.01  # A1: seeds "give different answers" when they disagree on > 1% of test examples
SPREAD_SHARE = 0.5  # A2: a source "matters" when alone it makes > 50% of the all-sources accuracy std
FAR_SHARE = 0.5  # A7: a perturbation carries "far" when it ends > 50% of the way to a different seed
A2_SOURCES = ("init", "data", "dropout", "all")  # "all" varies the three streams together
A7_PAIRS = {"ulp": "one float32 ulp in one weight at init", "hand": "hand-derived vs autodiff gradients",
            "seed": "a different seed (reference level)", "copy": "unperturbed copy (control; distance 0 not drawn)"}
STD = partial(np.std, ddof=1)

@dataclass(frozen=True)
class Settings:
    """`base` trains A1 and A7 (A2 with `model.dropout = a2_dropout`), seeds from `base.seeds.start` on."""
    base: Config = field(default_factory=Config)
    a1_seeds: int = 64
    a2_seeds: int = 48  # per source, × 4 sources
    a2_dropout: float = 0.1
    a7_seeds: int = 16  # reference runs; each has 4 partners (ulp, hand, other seed, copy)
    a7_eval_every: int = 50  # steps between the A7 measurements
    n_resamples: int = 10_000  # bootstrap resamples per CI

PROFILES = {
    "tiny": Settings(base=config_lib.override(Config(), ["train.steps=100", "train.eval_every=50"]), a1_seeds=4,
                     a2_seeds=3, a7_seeds=2, a7_eval_every=25, n_resamples=1000),
    "quick": Settings(base=config_lib.override(Config(), ["train.steps=1000", "train.eval_every=250"]), a1_seeds=32,
                      a2_seeds=16, a7_seeds=8, a7_eval_every=25),
    "full": Settings(),  # the MNIST-1D reference run: 6000 steps
}

# ----------------------------------------------------------------------------- what is trained
def perturb_one_ulp(params: mlp.Params) -> mlp.Params:
    """The same params with the first weight of the first layer moved up by one ulp."""
    return (params[0]._replace(w=params[0].w.at[0, 0].set(jnp.nextafter(params[0].w[0, 0], jnp.inf))), *params[1:])

@dataclass(frozen=True)
class UlpFrom:
    """Perturb hook: the runs with sweep index ≥ `first` start from `perturb_one_ulp` of their params."""
    first: int
    def __call__(self, state: train.TrainState, run: jax.Array, cfg: Config) -> train.TrainState:
        moved = perturb_one_ulp(state.params)
        return state._replace(params=jax.tree.map(partial(jnp.where, run >= self.first), moved, state.params))

def snapshot(state: train.TrainState, streams: train.Streams, data: train.Data, cfg: Config) -> dict:
    """Measure hook: one run's flat params (P,) and its test predictions (n_test,) int32."""
    return {"params": ravel_pytree(state.params)[0],
            "predictions": train.predict(state.params, state.bn_state, data.x_test, cfg=cfg)}

def _seeds(cfg: Config, n: int, start: int, vary: tuple[str, ...] = RANDOMNESS_STREAMS) -> Config:
    return replace(cfg, seeds=SeedsConfig(n=n, start=start, vary=vary))

def _final(result: sweep.SweepResult, suffix: str = "") -> dict[str, np.ndarray]:
    """Final test accuracy (runs,) (NaN where diverged), divergence flags and test predictions (runs, test)."""
    ok = ~result.history["diverged"][:, -1].astype(bool)
    return {f"test_acc{suffix}": np.where(ok, result.history["test_acc"][:, -1], np.nan), f"diverged{suffix}": ~ok,
            f"predictions{suffix}": result.test_predictions}

def run(s: Settings, out_dir: Path) -> None:
    """Trains A1, A2 and A7 (each sweep cached in its folder) and stores what they measure in a1/a2/a7.npz
    (`store.cached`, keyed by the part's full config)."""
    out_dir, ds, start = Path(out_dir), data_lib.load(s.base.data), s.base.seeds.start
    go = lambda cfg, folder, **hooks: sweep.run(  # noqa: E731
        cfg, out_dir=out_dir / folder, dataset=ds, progress=False, **hooks)
    cfg1 = _seeds(s.base, s.a1_seeds, start)
    cfg2 = _seeds(config_lib.override(s.base, [f"model.dropout={s.a2_dropout}"]), s.a2_seeds, start)
    cfg7 = _seeds(config_lib.override(s.base, [f"train.eval_every={s.a7_eval_every}", "train.grad=autodiff"]),
                  s.a7_seeds, start)
    def a1() -> dict:  # the seeds' final nets, and their mean-softmax ensemble
        r = go(cfg1, "a1")
        probs = per_run.probabilities(r.final, ds.x_test, cfg=cfg1)[~r.history["diverged"][:, -1].astype(bool)]
        return {**_final(r), "y_test": ds.y_test, "ensemble_acc": np.mean(probs.mean(0).argmax(-1) == ds.y_test)}
    def a2() -> dict:  # one sweep per source: `seeds.vary` = that stream, or all three
        vary = {src: RANDOMNESS_STREAMS if src == "all" else (src,) for src in A2_SOURCES}
        return {k: v for src in A2_SOURCES
                for k, v in _final(go(_seeds(cfg2, s.a2_seeds, start, vary[src]), f"a2-{src}"), f"_{src}").items()}
    def a7() -> dict:  # reference, copy and one-ulp twin (runs ≥ 2n) in one program; hand and other seeds apart
        n, at = s.a7_seeds, lambda cfg, folder, **kw: go(cfg, folder, measure=snapshot, **kw).measures  # noqa: E731
        ref = at(cfg7, "a7-ref", lrs=[cfg7.optim.lr] * 3, perturb=UlpFrom(first=2 * n))
        runs = lambda k: {name: a[k * n:(k + 1) * n] for name, a in ref.items()}  # noqa: E731
        twins = {"ulp": runs(2), "hand": at(config_lib.override(cfg7, ["train.grad=hand"]), "a7-hand"),
                 "seed": at(_seeds(cfg7, n, start + n), "a7-seed"), "copy": runs(1)}
        drifts = {pair: drift(runs(0), twin) for pair, twin in twins.items()}
        return {"steps": train.evaluation_steps(cfg7), **{f"dist_{p}": d[0] for p, d in drifts.items()},
                **{f"churn_{p}": d[1] for p, d in drifts.items()}}

    for name, cfg, compute in (("a1.npz", cfg1, a1), ("a2.npz", cfg2, a2), ("a7.npz", cfg7, a7)):
        store.cached(name, config_lib.to_dict(cfg), compute, folder=out_dir)
    store.write_json(out_dir / "run.json", {"settings": config_lib.to_dict(s)})

# ----------------------------------------------------------------------------- what is measured
def drift(ref: dict[str, np.ndarray], twin: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distance ‖θ_twin − θ_ref‖ / ‖θ_ref‖ and test churn of twins to their references, (runs, evaluations)
    each, from `snapshot` measures: params (runs, evaluations, P), predictions (runs, evaluations, n_test)."""
    return (np.linalg.norm(twin["params"] - ref["params"], axis=-1) / np.linalg.norm(ref["params"], axis=-1),
            np.mean(twin["predictions"] != ref["predictions"], axis=-1))

def pairwise_mean_ci(matrix: np.ndarray, *, n_resamples: int = 10_000, seed: int = 0) -> stats.CI:
    """Mean of a symmetric (seeds, seeds) matrix over pairs i < j, 95% percentile CI over resampled seeds. By hand,
    not `scipy.stats.bootstrap`: self-pairs of a resample are left out, a resample without a pair dropped."""
    m, n = np.asarray(matrix, np.float64), len(matrix)
    if n < 2:
        return stats.CI(np.nan, np.nan, np.nan)
    pairs = lambda i: m[np.ix_(i, i)][i[:, None] != i]  # noqa: E731
    boot = [p.mean() for i in np.random.default_rng(seed).integers(0, n, (n_resamples, n)) if (p := pairs(i)).size]
    return stats.CI(float(m[np.triu_indices(n, 1)].mean()), *np.quantile(boot, [0.025, 0.975]))

def std_ratio_ci(x: np.ndarray, y: np.ndarray, *, n_resamples: int = 10_000, seed: int = 0) -> stats.CI:
    """std(x) / std(y) (ddof 1, non-finite values dropped; NaN with < 2 left) with a 95% percentile CI, x and
    y resampled independently. By hand, not BCa: a resample of y without spread gives a legitimate +inf end."""
    a, b = (np.asarray(v, np.float64).ravel() for v in (x, y))
    a, b, rng = a[np.isfinite(a)], b[np.isfinite(b)], np.random.default_rng(seed)
    if a.size < 2 or b.size < 2:
        return stats.CI(np.nan, np.nan, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = STD(a[rng.integers(0, a.size, (n_resamples, a.size))], axis=-1) / STD(
            b[rng.integers(0, b.size, (n_resamples, b.size))], axis=-1)
        low, high = np.quantile(boot[~np.isnan(boot)], [0.025, 0.975], method="inverted_cdf")  # order statistics
        return stats.CI(float(STD(a) / STD(b)), float(low), float(high))

# ----------------------------------------------------------------------------- the rules
CHURN = Rule("the mean pairwise churn between seeds (the share of test examples two seeds label differently)",
             CHURN_THRESHOLD, "above", f"seeds disagreeing on more than {CHURN_THRESHOLD:.0%} of test examples give "
                                      f"different answers, beyond a few borderline cases", unit="fraction")
MATTERS = Rule("r = std(test acc, one randomness source varied alone) / std(all three varied)", SPREAD_SHARE, "above",
               f"alone it makes more than {SPREAD_SHARE:.0%} of the full spread: it matters; below: negligible")
FAR = Rule("ρ = final churn(perturbed twin, reference) / churn(other seed, reference), mean over seeds", FAR_SHARE,
           "above", f"more than {FAR_SHARE:.0%} of the way to a different seed: the perturbation carries far")

def a1_verdict(churn: stats.CI, measurement: str = "") -> Verdict:
    """A1 from the CI of the mean pairwise churn (`CHURN`)."""
    return CHURN.verdict("A1", churn, measurement=measurement, figure="a1_churn_vs_error.png",
                         unit="fraction of test examples")

def a2_combine(d: dict[str, str]) -> str:
    """all sources matter → supported; exactly one matters and the rest are negligible → contradicted (one
    culprit); two matter and one is negligible, or none matters alone → depends; any unclear → inconclusive"""
    matters = [s for s, v in d.items() if v == "supported"]
    return ("inconclusive" if "inconclusive" in d.values() else "supported" if len(matters) == len(d)
            else "contradicted" if len(matters) == 1 else "depends")

def a2_verdict(ratio_cis: dict[str, stats.CI], measurement: str = "", value: stats.CI | None = None) -> Verdict:
    """A2 from each single source's spread-ratio CI (`MATTERS` per source, combined by `a2_combine`)."""
    return judge("A2", [Part(source, MATTERS, ci) for source, ci in ratio_cis.items()], a2_combine,
                 how=" ".join(a2_combine.__doc__.split()), measurement=measurement, value=value,
                 figure="a2_spread.png", unit="ratio of stds")[0]

def a7_verdict(ulp: stats.CI, hand: stats.CI, control_identical: bool, measurement: str = "") -> Verdict:
    """both far → supported, both near → contradicted, one of each → depends, else inconclusive; inconclusive
    too if the unperturbed control is not bitwise identical to its reference"""
    combine = lambda d: across(list(d.values())) if control_identical else "inconclusive"  # noqa: E731
    return judge("A7", [Part("one-ulp", FAR, ulp), Part("hand-vs-autodiff", FAR, hand)], combine, value=ulp,
                 how=" ".join(a7_verdict.__doc__.split()), measurement=measurement, figure="a7_divergence.png",
                 unit="ratio of churns")[0]

# ----------------------------------------------------------------------------- report
def _figures(a1: dict, ok: np.ndarray, churn: stats.CI, rows: dict, a7: dict, out_dir: Path) -> None:
    acc, preds, (i, j) = 100 * a1["test_acc"][ok], a1["predictions"][ok], np.triu_indices(ok.sum(), 1)
    errors = 100 * (preds != a1["y_test"]).mean(-1)  # (seeds,)
    err, ch = (errors[i] + errors[j]) / 2, 100 * spread.churn(preds)[i, j]  # per pair of seeds
    fig, ax = plots.subplots(figsize=(5.5, 4.6))
    ax.hist(acc, bins=max(5, min(30, len(acc) // 2)), color="C0", alpha=0.8, label=f"{len(acc)} seeds")
    ax.axvline(acc.mean(), color="k", ls="--", label=f"mean {acc.mean():.1f}%")
    ax.axvline(100 * a1["ensemble_acc"], color="C3", label="ensemble of all (mean softmax)")
    ax.set(xlabel="final test accuracy (%)", ylabel="seeds", title="A1: same config, different seeds")
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")
    plots.save(fig, out_dir / "a1_accuracy.png")
    fig, ax = plots.subplots(figsize=(5.5, 5.2))
    ax.scatter(err, ch, s=8, alpha=0.5, label=f"{len(err)} pairs of seeds")
    lim = np.array([0.0, max(err.max(initial=1), ch.max(initial=1) / 2) * 1.1])
    ax.plot(lim, 2 * lim, "k--", lw=0.8, label="upper bound: churn = err$_i$ + err$_j$")
    ax.axhline(100 * CHURN_THRESHOLD, color="C3", lw=0.8, label=f"rule threshold {CHURN_THRESHOLD:.0%}")
    ax.set(xlim=(0, lim[1]), ylim=(0, max(ch.max(initial=1), 200 * CHURN_THRESHOLD) * 1.15), xlabel="mean test error"
           " of the pair (%)", ylabel="churn: test examples the pair disagrees on (%)", title=f"A1: disagreement vs "
           f"error (mean churn {100 * churn.estimate:.1f}%)")
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")
    plots.save(fig, out_dir / "a1_churn_vs_error.png")
    fig, ax = plots.subplots(figsize=(6, 4))
    est, low, high = (100 * np.array([rows[src]["std"][i] for src in A2_SOURCES], float) for i in range(3))
    ax.bar(A2_SOURCES, est, color=["C0", "C1", "C2", "0.5"], alpha=0.85)
    ax.errorbar(A2_SOURCES, est, yerr=[np.nan_to_num(est - low), np.nan_to_num(high - est)], fmt="none", color="k",
                capsize=4, label="95% bootstrap CI over seeds")
    ax.axhline(SPREAD_SHARE * est[-1], color="C3", ls="--", lw=0.8, label=f"{SPREAD_SHARE:g} × all-sources std (rule)")
    ax.set(ylabel="std of final test accuracy (pp)", xlabel="randomness varied between seeds (the rest shared)",
           title="A2: accuracy spread by source")
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")
    plots.save(fig, out_dir / "a2_spread.png")
    fig, (ax, bx) = plots.subplots(1, 2, figsize=(12, 4.5))
    for (pair, label), color in zip(A7_PAIRS.items(), ("C0", "C1", "0.3", "C2")):
        dist = a7[f"dist_{pair}"]  # 0 (a bitwise copy) is not drawn on the log axis
        plots.seed_band(ax, a7["steps"], np.where(dist > 0, dist, np.nan), label=label, color=color, log_y=True)
        plots.seed_band(bx, a7["steps"], 100 * a7[f"churn_{pair}"], label=label, color=color)
    for axis, y, what in ((ax, "‖θ$_{twin}$ − θ$_{ref}$‖ / ‖θ$_{ref}$‖", "nets (parameters)"),
                          (bx, "test examples predicted differently (%)", "answers (churn)")):
        axis.set(xlabel="training step", ylabel=y, title=f"A7: how far apart the {what} drift")
        axis.legend(fontsize=7)
    plots.save(fig, out_dir / "a7_divergence.png")

def report(out_dir: Path) -> list[Verdict]:
    """Reads a1/a2/a7.npz, draws the four figures and returns the verdicts of A1, A2 and A7."""
    out_dir, s = Path(out_dir), store.read_json(Path(out_dir) / "run.json")["settings"]
    (a1, a2, a7), b = (store.read_npz(out_dir / f"{part}.npz") for part in ("a1", "a2", "a7")), s["n_resamples"]
    ci, ok = partial(stats.bootstrap_ci, n_resamples=b), ~a1["diverged"]
    acc, churn = a1["test_acc"][ok], pairwise_mean_ci(spread.churn(a1["predictions"][ok]), n_resamples=b)
    rows = {src: {"std": ci(a2[f"test_acc_{src}"], statistic=STD), "churn": spread.mean_pairwise_churn(
        a2[f"predictions_{src}"][~a2[f"diverged_{src}"]])} for src in A2_SOURCES}
    ratios = {src: std_ratio_ci(a2[f"test_acc_{src}"], a2["test_acc_all"], n_resamples=b) for src in A2_SOURCES[:3]}
    weakest = min(ratios, key=lambda src: np.nan_to_num(ratios[src].estimate, nan=np.inf))
    final = {f"{m}_{p}": a7[f"{m}_{p}"][:, -1] for m in ("dist", "churn") for p in A7_PAIRS}  # (seeds,) each
    with np.errstate(divide="ignore", invalid="ignore"):
        r7 = {f"{m}_{p}": ci(final[f"{m}_{p}"] / final[f"{m}_seed"]) for m in ("churn", "dist") for p in A7_PAIRS}
    control, absorbed = not (np.any(a7["dist_copy"]) or np.any(a7["churn_copy"])), int(np.sum(final["dist_ulp"] == 0))
    _figures(a1, ok, churn, rows, a7, out_dir)
    a2_text = "; ".join(f"{k} {v.text(2)} (churn {rows[k]['churn'] / rows['all']['churn']:.2f} × all's)"
                        for k, v in ratios.items())
    return [a1_verdict(churn, f"mean pairwise test churn, {acc.size} seeds; test acc {ci(acc).text(3)}, std "
                       f"{ci(acc, statistic=STD).text(2)}; mean-softmax ensemble of all {a1['ensemble_acc']:.3f}"),
            a2_verdict(ratios, f"test-acc std, one source varied ÷ all three, {s['a2_seeds']} seeds each: {a2_text}; "
                       f"value: the smallest ({weakest})", value=ratios[weakest]),
            a7_verdict(r7["churn_ulp"], r7["churn_hand"], control, f"final churn of the one-ulp twin ÷ a different "
                       f"seed's, {len(final['dist_seed'])} seeds × {a7['steps'][-1]} steps; hand twin "
                       f"{r7['churn_hand'].text(2)}; distance ratios ulp {r7['dist_ulp'].text(2)}, hand "
                       f"{r7['dist_hand'].text(2)}; ulp twins rounded away: {absorbed}; control identical: {control}")]
