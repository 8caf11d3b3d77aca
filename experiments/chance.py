"""Chance: seed-to-seed spread, which randomness matters, how far one ulp carries (claims A1, A2, A7).

The essay (000): the same question asked twice gets different answers (A1); nobody knows which randomness
matters (A2); input and output relate by "correlation with a predominance of chance" (A7). By `sweep.run`:
A1  seeds of the MNIST-1D default (40-100-100-10 ReLU, Adam 1e-2): their test disagreement ("churn", Fort et
    al. 2019; Bhojanapalli et al. 2021) against their errors; mean-softmax and majority-vote ensembles by size
    (Lakshminarayanan et al. 2017).
A2  one randomness stream varied at a time (`seeds.vary`: init, data order or dropout masks; dropout 0.1) and
    all three: each source's accuracy std and churn ÷ all three's (Summers & Dinneen 2021).
A7  twins of a reference run (one weight one float32 ulp up at init, `spread.UlpFrom`; hand-derived gradients)
    and an unperturbed copy (the control): their parameter distance and churn to the reference
    (`spread.Snapshot`) against a different seed's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

import numpy as np

from netalchemy import config as config_lib, data as data_lib, per_run, plots, spread, stats, store, sweep, train
from netalchemy.config import RANDOMNESS_STREAMS, Config
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, judge

CLAIMS = ("A1", "A2", "A7")
CHURN_THRESHOLD = 0.01  # A1: disagreeing on > 1% of test examples is more than a few borderline cases
SPREAD_SHARE = 0.5  # A2: std ratio r = √(variance share): 0.5 is a quarter; three equal sources give 0.58
FAR_SHARE = 0.5  # A7: "predominance" is more than half of a fresh seed's churn; midway from copy (0) to seed (1)
SKETCH_SIZE = 512  # A7's distances (`spread.Snapshot`): sd ≤ 3%; 24 MB at full profile, not 350 MB of params
ENSEMBLE_DRAWS = 32  # A1: random subsets of seeds per ensemble size
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
    "full": Settings()}  # the MNIST-1D reference run: 6000 steps


def _final(result: sweep.SweepResult, suffix: str = "") -> dict[str, np.ndarray]:
    """Final test accuracy (runs,) (NaN where diverged), divergence flags and test predictions (runs, test)."""
    ok = ~result.history["diverged"][:, -1].astype(bool)
    return {f"test_acc{suffix}": np.where(ok, result.history["test_acc"][:, -1], np.nan), f"diverged{suffix}": ~ok,
            f"predictions{suffix}": result.test_predictions}


def _a1(go, cfg: Config, ds: data_lib.Dataset) -> dict:
    """The seeds' final nets, and their ensembles against their size."""
    result = go(cfg, "a1")
    probs = per_run.probabilities(result.final, ds.x_test, cfg=cfg)[~result.history["diverged"][:, -1].astype(bool)]
    curve = spread.ensemble_curve(probs, ds.y_test, draws=ENSEMBLE_DRAWS)
    return {**_final(result), "y_test": ds.y_test, "ensemble_sizes": curve.sizes,
            "ensemble_softmax": curve.softmax, "ensemble_vote": curve.vote}


def _a2(go, cfg: Config) -> dict:
    """One sweep per source, `seeds.vary` that stream alone or all three; the arrays suffixed by the source."""
    vary = {src: RANDOMNESS_STREAMS if src == "all" else (src,) for src in A2_SOURCES}
    parts = [_final(go(replace(cfg, seeds=replace(cfg.seeds, vary=vary[src])), f"a2-{src}"), f"_{src}")
             for src in A2_SOURCES]
    return {key: value for part in parts for key, value in part.items()}


def _a7(go, cfg: Config) -> dict:
    """Reference, copy and one-ulp twin (runs ≥ 2n) in one program; hand-gradient and other seeds apart."""
    n = cfg.seeds.n
    at = lambda c, folder, **hooks: go(c, folder, measure=spread.Snapshot(SKETCH_SIZE), **hooks).measures  # noqa: E731
    ref = at(cfg, "a7-ref", lrs=[cfg.optim.lr] * 3, perturb=spread.UlpFrom(first=2 * n))
    block = lambda k: {name: a[k * n:(k + 1) * n] for name, a in ref.items()}  # noqa: E731
    twins = {"ulp": block(2), "hand": at(config_lib.override(cfg, ["train.grad=hand"]), "a7-hand"),
             "seed": at(config_lib.override(cfg, [f"seeds.start={cfg.seeds.start + n}"]), "a7-seed"), "copy": block(1)}
    drifts = {pair: spread.drift(block(0), twin) for pair, twin in twins.items()}
    return {"steps": train.evaluation_steps(cfg), **{f"dist_{p}": d[0] for p, d in drifts.items()},
            **{f"churn_{p}": d[1] for p, d in drifts.items()}}


def run(s: Settings, out_dir: Path) -> None:
    """Trains A1, A2 and A7 (each sweep resumable in its folder); what they measure: a1/a2/a7.npz (`store.cached`)."""
    out_dir, ds = Path(out_dir), data_lib.load(s.base.data)
    go = lambda cfg, folder, **hooks: sweep.run(  # noqa: E731
        cfg, out_dir=out_dir / folder, dataset=ds, progress=False, **hooks)
    cfg1 = config_lib.override(s.base, [f"seeds.n={s.a1_seeds}"])
    cfg2 = config_lib.override(s.base, [f"seeds.n={s.a2_seeds}", f"model.dropout={s.a2_dropout}"])
    cfg7 = config_lib.override(s.base, [f"seeds.n={s.a7_seeds}", f"train.eval_every={s.a7_eval_every}",
                                        "train.grad=autodiff"])
    for name, cfg, how, compute in (("a1.npz", cfg1, {"ensemble_draws": ENSEMBLE_DRAWS}, partial(_a1, go, cfg1, ds)),
                                    ("a2.npz", cfg2, {}, partial(_a2, go, cfg2)),
                                    ("a7.npz", cfg7, {"sketch": SKETCH_SIZE}, partial(_a7, go, cfg7))):
        store.cached(name, {"config": config_lib.to_dict(cfg), **how}, compute, folder=out_dir)
    store.write_json(out_dir / "run.json", {"settings": config_lib.to_dict(s)})


CHURN = Rule("the mean pairwise churn between seeds (the share of test examples two seeds label differently)",
             CHURN_THRESHOLD, "above", f"seeds disagreeing on more than {CHURN_THRESHOLD:.0%} of test examples give "
                                      f"different answers, beyond a few borderline cases", unit="fraction")
MATTERS = Rule("r = std(test acc, one randomness source varied alone) / std(all three varied)", SPREAD_SHARE, "above",
               "r² is the source's share of the variance: over a quarter (three equal sources: 0.58 each) it matters")
FAR = Rule("ρ = final churn(perturbed twin, reference) / churn(other seed, reference), mean over seeds", FAR_SHARE,
           "above", "ρ runs from 0, an unperturbed copy (measured: bitwise identical), to 1, a fresh seed; above "
                    "midway the perturbation alone makes most of a new seed's disagreement: chance predominates")


def a1_verdict(churn: stats.CI, measurement: str = "", n: int | None = None) -> Verdict:
    """A1 from the CI of the mean pairwise churn (`CHURN`) over `n` finite seeds (their pairs resampled)."""
    return CHURN.verdict("A1", churn, measurement=measurement, n=n, figure="a1_churn_vs_error.png",
                         unit="fraction of test examples")


def a2_combine(d: dict[str, str]) -> str:
    """all sources matter → supported; exactly one matters and the rest are negligible → contradicted (one
    culprit); two matter and one is negligible, or none matters alone → depends; any unclear → inconclusive"""
    matters = [s for s, v in d.items() if v == "supported"]
    return ("inconclusive" if "inconclusive" in d.values() else "supported" if len(matters) == len(d)
            else "contradicted" if len(matters) == 1 else "depends")


def a2_verdict(ratio_cis: dict[str, stats.CI], measurement: str = "", value: stats.CI | None = None,
               n: dict[str, int] | None = None) -> Verdict:
    """A2 from each source's spread-ratio CI (`MATTERS`, over `n[source]` seeds: its smaller arm), by `a2_combine`."""
    return judge("A2", [Part(src, MATTERS, ci, n=(n or {}).get(src)) for src, ci in ratio_cis.items()], a2_combine,
                 how=" ".join(a2_combine.__doc__.split()), measurement=measurement, value=value,
                 figure="a2_spread.png", unit="ratio of stds")[0]


def a7_verdict(ulp: stats.CI, hand: stats.CI, control_identical: bool, measurement: str = "",
               n: int | None = None) -> Verdict:
    """both far → supported, both near → contradicted, one of each → depends, else inconclusive; inconclusive
    too if the unperturbed control is not bitwise identical to its reference"""
    combine = lambda d: across(list(d.values())) if control_identical else "inconclusive"  # noqa: E731
    parts = [Part("one-ulp", FAR, ulp, n=n), Part("hand-vs-autodiff", FAR, hand, n=n)]  # n: reference seeds
    return judge("A7", parts, combine, value=ulp, how=" ".join(a7_verdict.__doc__.split()),
                 measurement=measurement, figure="a7_divergence.png", unit="ratio of churns")[0]


def _bars(ax, cis: dict[str, stats.CI], ylabel: str, title: str) -> np.ndarray:
    """One bar per A2 source, 100 × a CI's estimate with its interval; returns the estimates."""
    est, low, high = (100 * np.array([cis[src][i] for src in A2_SOURCES], float) for i in range(3))
    ax.bar(A2_SOURCES, est, color=["C0", "C1", "C2", "0.5"], alpha=0.85)
    ax.errorbar(A2_SOURCES, est, yerr=[np.nan_to_num(est - low), np.nan_to_num(high - est)], fmt="none",
                color="k", capsize=4, label="95% bootstrap CI over seeds" if ylabel.startswith("std") else None)
    ax.set(ylabel=ylabel, xlabel="randomness varied between seeds (the rest shared)", title=title)
    return est


def _judge_a1(a1: dict, b: int, out_dir: Path) -> Verdict:
    """A1 from the churn of the finite seeds; draws accuracies and ensembles, and churn against error per pair."""
    acc, preds = (a1[key][~a1["diverged"]] for key in ("test_acc", "predictions"))
    churn = spread.pairwise_mean_ci(spread.churn(preds), n_resamples=b)
    fig, (ax, bx) = plots.subplots(1, 2, figsize=(11, 4.6))
    ax.hist(100 * acc, bins=max(5, min(30, acc.size // 2)), color="C0", alpha=0.8, label=f"{acc.size} seeds")
    ax.axvline(100 * acc.mean(), color="k", ls="--", label=f"mean {100 * acc.mean():.1f}%")
    for how, label, color in (("softmax", "mean softmax", "C3"), ("vote", "majority vote", "C2")):
        curve = 100 * a1[f"ensemble_{how}"]  # (draws, sizes); every draw of all seeds is the same
        low, mid, high = np.nanpercentile(curve, [25, 50, 75], axis=0)
        bx.plot(a1["ensemble_sizes"], mid, "o-", color=color, label=f"{label} (median, IQR over {len(curve)} draws)")
        bx.fill_between(a1["ensemble_sizes"], low, high, color=color, alpha=0.25, lw=0)
    ax.set(xlabel="final test accuracy (%)", ylabel="seeds", title="A1: same config, different seeds")
    bx.set_xscale("log", base=2)
    bx.set(xlabel="ensemble size (seeds)", ylabel="ensemble test accuracy (%)", title="A1: the seeds together")
    fig.legend(fontsize=8, ncol=3, loc="outside lower center")
    plots.save(fig, out_dir / "a1_accuracy.png")
    err, ch = (100 * v for v in spread.pair_errors(preds, a1["y_test"]))  # (pairs,) each
    fig, ax = plots.subplots(figsize=(5.5, 5.2))
    ax.scatter(err, ch, s=8, alpha=0.5, label=f"{len(err)} pairs of seeds")
    lim = np.array([0.0, max(err.max(initial=1), ch.max(initial=1) / 2) * 1.1])
    ax.plot(lim, 2 * lim, "k--", lw=0.8, label="upper bound: churn = err$_i$ + err$_j$")
    ax.axhline(100 * CHURN_THRESHOLD, color="C3", lw=0.8, label=f"rule threshold {CHURN_THRESHOLD:.0%}")
    ax.set(xlim=(0, lim[1]), ylim=(0, max(ch.max(initial=1), 200 * CHURN_THRESHOLD) * 1.15),
           xlabel="mean test error of the pair (%)", ylabel="churn: test examples the pair disagrees on (%)",
           title=f"A1: disagreement vs error (mean churn {100 * churn.estimate:.1f}%)")
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")
    plots.save(fig, out_dir / "a1_churn_vs_error.png")
    ci = partial(stats.bootstrap_ci, acc, n_resamples=b)
    return a1_verdict(churn, n=acc.size, measurement=f"mean pairwise test churn, {acc.size} seeds; test acc "
                      f"{ci().text(3)}, std {ci(statistic=STD).text(2)}; ensemble of all: mean softmax "
                      f"{a1['ensemble_softmax'][0, -1]:.3f}, majority vote {a1['ensemble_vote'][0, -1]:.3f}")


def _judge_a2(a2: dict, s: dict, out_dir: Path) -> Verdict:
    """A2 from the spread ratios, with churn ratios beside them; draws a2_spread.png."""
    b, singles = s["n_resamples"], A2_SOURCES[:3]
    acc = {src: a2[f"test_acc_{src}"] for src in A2_SOURCES}
    preds = {src: a2[f"predictions_{src}"][~a2[f"diverged_{src}"]] for src in A2_SOURCES}
    ratios = {src: spread.std_ratio_ci(acc[src], acc["all"], n_resamples=b) for src in singles}
    seeds = {src: int(min(np.isfinite(acc[src]).sum(), np.isfinite(acc["all"]).sum())) for src in singles}
    churns = {src: spread.churn_ratio_ci(preds[src], preds["all"], n_resamples=b) for src in singles}
    fig, (ax, bx) = plots.subplots(1, 2, figsize=(11, 4.2))
    est = _bars(ax, {src: stats.bootstrap_ci(acc[src], statistic=STD, n_resamples=b) for src in A2_SOURCES},
                "std of final test accuracy (pp)", "A2: accuracy spread by source")
    _bars(bx, {src: spread.pairwise_mean_ci(spread.churn(preds[src]), n_resamples=b) for src in A2_SOURCES},
          "mean pairwise test churn (%)", "A2: prediction disagreement by source")
    ax.axhline(SPREAD_SHARE * est[-1], color="C3", ls="--", lw=0.8, label=f"{SPREAD_SHARE:g} × all-sources std (rule)")
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")
    plots.save(fig, out_dir / "a2_spread.png")
    weakest = min(ratios, key=lambda src: np.nan_to_num(ratios[src].estimate, nan=np.inf))
    text = "; ".join(f"{src} {ratios[src].text(2)} (churn {churns[src].text(2)} × all's)" for src in singles)
    return a2_verdict(ratios, f"test-acc std, one source varied ÷ all three, {s['a2_seeds']} seeds each: {text}; "
                              f"value: the smallest ({weakest})", value=ratios[weakest], n=seeds)


def _judge_a7(a7: dict, b: int, out_dir: Path) -> Verdict:
    """A7 from the twins' final churn relative to a different seed's; draws their drift (a7_divergence.png)."""
    fig, (ax, bx) = plots.subplots(1, 2, figsize=(12, 4.5))
    for (pair, label), color in zip(A7_PAIRS.items(), ("C0", "C1", "0.3", "C2")):
        dist = a7[f"dist_{pair}"]  # 0 (a bitwise copy) is not drawn on the log axis
        plots.seed_band(ax, a7["steps"], np.where(dist > 0, dist, np.nan), label=label, color=color, log_y=True)
        plots.seed_band(bx, a7["steps"], 100 * a7[f"churn_{pair}"], label=label, color=color)
    for axis, y, what in ((ax, "‖θ$_{twin}$ − θ$_{ref}$‖ / ‖θ$_{ref}$‖ (sketched)", "nets (parameters)"),
                          (bx, "test examples predicted differently (%)", "answers (churn)")):
        axis.set(xlabel="training step", ylabel=y, title=f"A7: how far apart the {what} drift")
        axis.legend(fontsize=7)
    plots.save(fig, out_dir / "a7_divergence.png")
    final = {f"{m}_{p}": a7[f"{m}_{p}"][:, -1] for m in ("dist", "churn") for p in A7_PAIRS}  # (seeds,) each
    with np.errstate(divide="ignore", invalid="ignore"):
        r = {f"{m}_{p}": stats.bootstrap_ci(final[f"{m}_{p}"] / final[f"{m}_seed"], n_resamples=b)
             for m in ("churn", "dist") for p in ("ulp", "hand")}
        n = min(int(np.isfinite(final[f"churn_{p}"] / final["churn_seed"]).sum()) for p in ("ulp", "hand"))
    control, text = not (np.any(a7["dist_copy"]) or np.any(a7["churn_copy"])), {k: c.text(2) for k, c in r.items()}
    return a7_verdict(r["churn_ulp"], r["churn_hand"], control, f"final churn of the one-ulp twin ÷ a different seed's"
                      f" (copy 0, seed 1), {len(final['dist_seed'])} seeds × {a7['steps'][-1]} steps; hand twin "
                      f"{text['churn_hand']}; distance ratios ulp {text['dist_ulp']}, hand {text['dist_hand']}; ulp "
                      f"twins rounded away: {int(np.sum(final['dist_ulp'] == 0))}; control identical: {control}", n)


def report(out_dir: Path) -> list[Verdict]:
    """Reads a1/a2/a7.npz, draws the four figures and returns the verdicts of A1, A2 and A7."""
    out_dir, s = Path(out_dir), store.read_json(Path(out_dir) / "run.json")["settings"]
    a1, a2, a7 = (store.read_npz(out_dir / f"{part}.npz") for part in ("a1", "a2", "a7"))
    return [_judge_a1(a1, s["n_resamples"], out_dir), _judge_a2(a2, s, out_dir),
            _judge_a7(a7, s["n_resamples"], out_dir)]
