"""Learning rate and optimizer: too small is slow, too large diverges; what momentum and Adam do; lr or seed.

Claims (claims.toml): M7 an lr too small is slow, too large unstable; M8 momentum smooths oscillations, Adam and
RMSProp adapt the step per parameter; A3 the hand-set lr decides more than chance. Trained per optimizer: a sweep of
a log-spaced lr grid × tuning seeds (M7, A3, M8's tuning), then M8's at the lr tuned for speed on held-out seeds
(`m8_sweep`). Judged by `rules` (Choi et al. 2019; Schmidt et al. 2021; Bengio 2012; Bouthillier et al. 2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats

from netalchemy import config as config_lib, data as data_lib, oscillation, plots, spread, stats, store, sweep
from netalchemy.curves import fastest, first_crossing, mean_before_divergence
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.verdicts import Part, Rule, Verdict, across, judge

CLAIMS = ("M7", "M8", "A3")
MECHANISM = {"momentum": "sign_flips", "adam": "step_spread", "rmsprop": "step_spread"}  # M8: what each reduces vs SGD


def _base(steps: int, eval_every: int, seeds: int, hidden: tuple[int, ...] = (100, 100)) -> Config:
    return Config(model=ModelConfig(hidden=hidden), seeds=SeedsConfig(n=seeds), train=TrainConfig(
        steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=min(steps, 1000)))


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: _base(3000, 100, 16))
    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
    baseline: str = "sgd"  # M8 compares every other optimizer with this one
    lr_min: float = 1e-5
    lr_max: float = 10.0
    n_lrs: int = 13  # log-spaced, lr_min..lr_max inclusive: two per decade
    target_fraction: float = 0.5  # M8's fixed target train loss, × ln(classes) (a uniform prediction's loss)
    replay_steps: int = 4  # consecutive updates M8's hook replays at each evaluation
    slow_margin: float = 0.25  # nats: "much higher" loss at the smallest lr
    unstable_rate: float = 0.5  # failure rate at the largest lr that counts as "diverges"
    a3_window_decades: float = 1.0  # A3 judges the lrs this close to the tuned lr
    a3_margin: float = 0.2  # lr share must exceed seed share by this much ("≫")
    n_resamples: int = 2000  # bootstrap resamples of the variance-share CIs

    def __post_init__(self) -> None:
        config_lib.check(self.baseline in self.optimizers and set(self.optimizers) - {self.baseline} <= set(MECHANISM)
                         and 0 < self.lr_min < self.lr_max and self.n_lrs >= 2 and 0 < self.target_fraction < 1
                         and self.replay_steps >= 2, f"need baseline ∈ optimizers, the others in {set(MECHANISM)}, "
                         "0 < lr_min < lr_max, n_lrs ≥ 2, 0 < target_fraction < 1, replay_steps ≥ 2")


PROFILES = {  # tiny checks the plumbing: two optimizers (two compilations each), three lrs, two seeds
    "tiny": Settings(base=_base(100, 25, 2, hidden=(32,)), optimizers=("sgd", "adam"), lr_min=1e-3, n_lrs=3,
                     n_resamples=200),
    "quick": Settings(base=_base(1000, 50, 6), n_lrs=7),  # one lr per decade, 1e-5..1e1
    "full": Settings()}


def lr_grid(s: Settings) -> np.ndarray:
    """The (n_lrs,) log-spaced learning rates, lr_min..lr_max inclusive."""
    return np.logspace(math.log10(s.lr_min), math.log10(s.lr_max), s.n_lrs)


def run(s: Settings, out_dir: Path) -> None:
    """Trains per optimizer its lr-grid sweep, then M8's (`m8_sweep`), each one compiled program; resumable."""
    dataset = data_lib.load(s.base.data)
    for name in s.optimizers:
        grid = sweep.run(config_lib.override(s.base, [f"optim.name={name}"]), lrs=lr_grid(s), dataset=dataset,
                         out_dir=out_dir / f"sweep-{name}", progress=False)
        cfg, hook, folder = m8_sweep(s, grid, dataset.num_classes, out_dir)
        sweep.run(cfg, dataset=dataset, out_dir=folder, measure=hook, progress=False)
    store.write_json(out_dir / "settings.json", config_lib.to_dict(s))


def m8_sweep(s: Settings, grid: sweep.SweepResult, num_classes: int,
             out_dir: Path) -> tuple[Config, oscillation.UpdateDynamics, Path]:
    """M8's sweep: the grid's config at its lr tuned for speed (`curves.fastest`; no seed diverged) on the next
    `seeds.n` seeds (held out: the seeds that chose the lr never judge it), its hook, its folder (named by both)."""
    loss, _, div, _, _ = finals(grid, num_classes)
    best = fastest(first_crossing(grid.history["step"][0], grid.history["train_loss"], s.target_fraction * math.log(
        num_classes)).reshape(loss.shape), np.where((div | ~np.isfinite(loss)).any(1), np.inf, loss.mean(axis=1)))
    seeds, hook, lr = grid.cfg.seeds, oscillation.UpdateDynamics(s.replay_steps), float(lr_grid(s)[best])
    cfg = config_lib.override(grid.cfg, [f"optim.lr={lr!r}", f"seeds.start={seeds.start + seeds.n}"])
    return cfg, hook, out_dir / f"m8-{cfg.optim.name}-{store.settings_key([config_lib.to_dict(cfg), repr(hook)])[:12]}"


def finals(r: sweep.SweepResult, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """A sweep's (lrs, seeds) final train loss, test accuracy, divergence and failure (runs are lr-major), and M7/A3's
    tuned lr index: lowest mean final train loss, no seed diverged (MNIST-1D has no validation split). *Failed*:
    diverged, non-finite or loss ≥ ln(classes) (Adam and RMSProp rarely overflow at huge lrs, they stall there)."""
    loss, acc, div = (r.history[m][:, -1].reshape(-1, r.cfg.seeds.n) for m in ("train_loss", "test_acc", "diverged"))
    div, bad = div.astype(bool), div.astype(bool) | ~np.isfinite(loss)
    if bad.any(axis=1).all():
        raise ValueError("every learning rate has a diverged seed")
    tuned = int(np.argmin(np.where(bad.any(axis=1), np.inf, np.nan_to_num(loss).mean(axis=1))))
    return loss, acc, div, bad | (loss >= math.log(num_classes)), tuned


def variance_shares_ci(grid: np.ndarray, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, stats.CI]:
    """Two-way ANOVA shares of a (lrs, seeds) grid's variance (`spread.grid_variance_shares`) and A3's
    "lr_minus_seed", each with a 95% percentile-bootstrap CI that resamples seeds (whole columns)."""
    def shares(columns: np.ndarray) -> np.ndarray:
        sh = spread.grid_variance_shares(np.asarray(grid, np.float64)[:, columns.astype(int)], ("lr", "seed"))
        return np.array([sh["lr"], sh["seed"], sh["interaction_residual"], sh["lr"] - sh["seed"]])
    columns = np.arange(np.shape(grid)[1])
    ci = scipy.stats.bootstrap((columns,), shares, vectorized=False, n_resamples=n_resamples, method="percentile",
                               rng=np.random.default_rng(seed)).confidence_interval
    return {k: stats.CI(*v) for k, *v in zip(("lr", "seed", "interaction_residual", "lr_minus_seed"),
                                             shares(columns), ci.low, ci.high)}


def window_indices(lrs: np.ndarray, best: int, decades: float) -> np.ndarray:
    """Indices of the grid lrs within `decades` of lrs[best] (where a practitioner who knows the order of
    magnitude searches; on the whole grid the lr trivially dominates); at least best and its neighbours."""
    idx = np.flatnonzero(np.abs(np.log10(lrs) - np.log10(lrs[best])) <= decades + 1e-9)
    return idx if idx.size >= 3 else np.arange(max(0, best - 1), min(len(lrs), best + 2))


def rules(s: Settings) -> dict[str, Rule]:
    """Each part's rule: M7 "slow" and "unstable"; M8 "faster" and the mechanisms (`MECHANISM`); A3 "lr over seed"."""
    return {"slow": Rule("the paired (same seed) excess final train loss, smallest grid lr − tuned lr", s.slow_margin,
                         "above", "visibly higher at the end of the same budget: 'slow'", unit="nats"),
            "unstable": Rule("the failure rate at the largest grid lr (non-finite or final train loss ≥ ln(classes); "
                             "Wilson interval)", s.unstable_rate, "above", "so many seeds failing: 'diverges'",
                             unit="fraction of seeds"),
            "faster": Rule("P(an optimizer reaches the target train loss in fewer steps than the baseline), "
                           "Mann-Whitney U / (n·m)", 0.5, "above", "0.5 is no faster", unit="probability"),
            "sign_flips": Rule("the paired (same seed) drop, baseline − optimizer, in the fraction of parameters "
                               "whose update changes sign between steps", 0.0, "above", "any damping", unit="fraction"),
            "step_spread": Rule("the paired drop in log10(q75/q25) of the per-parameter steps |Δθ_i|", 0.0, "above",
                                "any equalising of SGD's steps ∝ |gradient|", unit="decades"),
            "lr over seed": Rule("lr share − seed share of the final test-accuracy variance near the tuned lr (seeds"
                                 " resampled)", s.a3_margin, "above", "the lr explains clearly more than chance "
                                 "('≫'); contradicted once chance explains more", unit="share", fails_at=0.0)}


def m8_one(mechanism: str, faster: str) -> str:
    """One optimizer vs the baseline: mechanism supported → supported, or depends when slower to the target (there,
    but buys no speed); mechanism contradicted → contradicted; else inconclusive (speed alone decides nothing)."""
    if mechanism == "supported":
        return "depends" if faster == "contradicted" else "supported"
    return "contradicted" if mechanism == "contradicted" else "inconclusive"


def m7(s: Settings, results: dict[str, sweep.SweepResult], num_classes: int, out_dir: Path) -> Verdict:
    """M7 per optimizer: its "slow" and "unstable" parts (`rules`) across, then the optimizers across; lr_sweep.png."""
    rule, lrs, parts = rules(s), lr_grid(s), []
    fig, axes = plots.subplots(1, 3, figsize=(15, 4.8))
    for i, (name, r) in enumerate(results.items()):
        loss, acc, div, failed, best = finals(r, num_classes)
        slow, unstable = stats.bootstrap_ci(loss[0] - loss[best]), stats.fraction_ci(failed[-1])  # (Wilson: all seeds)
        parts += [Part(f"{name} slow", rule["slow"], slow, n=int(np.isfinite(loss[0] - loss[best]).sum())),
                  Part(f"{name} unstable", rule["unstable"], unstable, n=failed.shape[1])]
        for ax, values in zip(axes, (loss, acc)):
            plots.seed_band(ax, lrs, np.where(div, np.nan, values).T, label=name, color=f"C{i}")
            ax.axvline(lrs[best], color=f"C{i}", ls=":", lw=0.8)
        axes[2].plot(lrs, failed.mean(1), "o-", lrs, div.mean(1), "x--", color=f"C{i}")
    axes[0].axhline(math.log(num_classes), color="gray", ls="--", lw=0.8, label="ln(classes): uniform prediction")
    axes[1].axhline(1 / num_classes, color="gray", ls="--", lw=0.8, label="chance")
    for ax, ylabel in zip(axes, ("final train loss (nats)", "final test accuracy", "seeds failed (o), diverged (x)")):
        ax.set(xscale="log", xlabel="learning rate", ylabel=ylabel, yscale="log" if ax is axes[0] else "linear")
    (h0, l0), (h1, l1) = axes[0].get_legend_handles_labels(), axes[1].get_legend_handles_labels()
    fig.legend(h0 + h1[-1:], l0 + l1[-1:], loc="outside lower center", ncol=4, fontsize=7)  # each line once
    fig.suptitle(f"M7: the lr sweep after {s.base.train.steps} steps; failed = diverged, non-finite or loss ≥ ln C "
                 "(bands leave diverged runs out; dotted: tuned lr)", fontsize=9)
    plots.save(fig, out_dir / "lr_sweep.png")
    return judge("M7", parts, lambda d: across([across([d[f"{n} slow"], d[f"{n} unstable"]]) for n in results]),
                 how="per optimizer its two parts across, then the optimizers across",
                 value=min((p.ci for p in parts[1::2]), key=lambda ci: ci.estimate),  # the optimizer nearest to failing
                 measurement=f"failure rate at the largest lr, {lrs[-1]:g} (lowest over optimizers); per optimizer the "
                             f"excess train loss at lr {lrs[0]:g}, failure rate: " + "; ".join(
                                 f"{n} {parts[2 * i].ci.estimate:.2f} nats, {parts[2 * i + 1].ci.estimate:.2f}"
                                 for i, n in enumerate(results)), figure="lr_sweep.png", unit="failure rate")[0]


def m8(s: Settings, tuned: dict[str, sweep.SweepResult], num_classes: int, out_dir: Path) -> Verdict:
    """M8 per optimizer vs the baseline (held-out seeds, lr tuned for speed: `m8_sweep`) by `m8_one`; across."""
    goal, rule, x = s.target_fraction * math.log(num_classes), rules(s), next(iter(tuned.values())).history["step"][0]
    reached = {n: first_crossing(x, r.history["train_loss"], goal) for n, r in tuned.items()}
    steps = {n: np.nan_to_num(t, posinf=10.0 * x[-1] + 1) for n, t in reached.items()}  # censored: after all others
    value = {(n, k): mean_before_divergence(v[:, 1:], r.history["diverged"][:, 1:]) for n, r in tuned.items() for k, v
             in r.measures.items()}  # (seeds,): after step 0, where Adam's first update is ±lr for every parameter
    fig, axes = plots.subplots(1, 3, figsize=(15, 4.8))
    for ax, k, ylabel in zip(axes, ("train_loss", "sign_flips", "step_spread"), ("training loss (nats, full train "
                             "set)", "fraction of updates changing sign", "log10 q75/q25 of per-parameter |Δθ|")):
        for i, (n, r) in enumerate(tuned.items()):
            plots.seed_band(ax, x, np.where(r.history["diverged"] > 0, np.nan, {**r.history, **r.measures}[k]),
                            color=f"C{i}", label=f"{n}, lr {r.cfg.optim.lr:.2g}", log_y=k == "train_loss")
        ax.set(xlabel="step", ylabel=ylabel)
    axes[0].axhline(goal, color="k", ls="--", lw=0.8, label=f"target {goal:.3g}")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=4, fontsize=7)
    fig.suptitle(f"M8: each optimizer at its lr tuned for steps to the target, {r.cfg.seeds.n} held-out seeds; "
                 f"sign flips and step spread of the next {s.replay_steps} updates", fontsize=9)
    plots.save(fig, out_dir / "optimizers.png")
    others, base = [n for n in tuned if n != s.baseline], s.baseline
    pair = {o: (value[base, MECHANISM[o]], value[o, MECHANISM[o]]) for o in others}  # (seeds,) each, paired by seed
    parts = [p for o in others for p in (
        Part(f"{o} {MECHANISM[o]}", rule[MECHANISM[o]], stats.paired_bootstrap_ci(*pair[o], n_resamples=s.n_resamples),
             n=int(np.isfinite(np.subtract(*pair[o])).sum())),
        Part(f"{o} faster", rule["faster"], stats.probability_of_improvement_ci(-steps[o], -steps[base]),
             n=min(steps[o].size, steps[base].size)))]  # censored steps are finite: every seed counts
    weakest = max(parts[::2], key=lambda p: p.p_value()[0])  # the mechanism nearest to flipping
    return judge("M8", parts, lambda d: across([m8_one(d[f"{n} {MECHANISM[n]}"], d[f"{n} faster"]) for n in others]),
                 how="per optimizer `m8_one` (its mechanism, then speed), then the optimizers across",
                 value=weakest.ci, unit=weakest.rule.unit, figure="optimizers.png",
                 measurement=f"{weakest.name}: drop vs {base} after step 0 (the mechanism nearest to flipping); per "
                             f"optimizer lr, sign flips, step spread, lower median steps to {goal:.3g}: " + "; ".join(
                                 "{} {:.2g}, {:.2f}, {:.2f}, {:.0f}".format(
                                 n, r.cfg.optim.lr, *(np.nanmean(value[n, k]) for k in ("sign_flips", "step_spread")),
                                 np.quantile(reached[n], 0.5, method="inverted_cdf")) for n, r in tuned.items()))[0]


def a3(s: Settings, results: dict[str, sweep.SweepResult], num_classes: int, out_dir: Path) -> Verdict:
    """A3 per optimizer: lr share − seed share of test-acc variance near the tuned lr (`window_indices`); across."""
    shares = {}
    for name, r in results.items():
        _, acc, div, _, best = finals(r, num_classes)
        acc, window = np.where(div, 1 / num_classes, acc), window_indices(lr_grid(s), best, s.a3_window_decades)
        shares[name] = [variance_shares_ci(g, n_resamples=s.n_resamples) for g in (acc[window], acc)]
    x, (fig, axes) = np.arange(len(shares)), plots.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for w, title in enumerate((f"lrs within {s.a3_window_decades:g} decade(s) of the tuned lr", "whole lr grid")):
        for k, part in enumerate(("lr", "seed", "interaction_residual")):
            est, low, high = np.array([sh[w][part] for sh in shares.values()], np.float64).T
            axes[w].bar(x + (k - 1) * 0.27, est, 0.27, yerr=np.clip([est - low, high - est], 0, None), capsize=3,
                        label={"lr": "learning rate", "interaction_residual": "interaction / residual"}.get(part, part))
        axes[w].set(xticks=x, xticklabels=list(shares), title=title, ylim=(0, 1.05))
    axes[0].set_ylabel("share of final test-accuracy variance")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("A3: what explains the spread of accuracy, the lr or the seed? (95% CI, seeds resampled)", fontsize=9)
    plots.save(fig, out_dir / "variance_shares.png")
    parts = [Part(o, rules(s)["lr over seed"], sh[0]["lr_minus_seed"], n=s.base.seeds.n) for o, sh in shares.items()]
    return judge("A3", parts, lambda d: across(list(d.values())), how="the optimizers across",
                 value=min((p.ci for p in parts), key=lambda ci: ci.estimate), figure="variance_shares.png",
                 measurement=f"share of final test-accuracy variance explained by lr minus by seed, lrs within "
                             f"{s.a3_window_decades:g} decade(s) of the tuned lr (lowest over optimizers); lr vs seed "
                             f"share, lr share on the whole grid: " + "; ".join(
                                 f"{n} {sh[0]['lr'].estimate:.2f} vs {sh[0]['seed'].estimate:.2f}, "
                                 f"{sh[1]['lr'].estimate:.2f}" for n, sh in shares.items()), unit="share")[0]


def report(out_dir: Path) -> list[Verdict]:
    """Reads the sweeps; per claim, its measurement, figure and verdict: M7, M8, A3."""
    s = config_lib.from_dict(store.read_json(out_dir / "settings.json"), Settings)
    results = {name: sweep.load(out_dir / f"sweep-{name}") for name in s.optimizers}
    classes = store.read_json(out_dir / f"sweep-{s.baseline}" / "config.json")["dataset"]["classes"]
    tuned = {n: sweep.load(m8_sweep(s, r, classes, out_dir)[2]) for n, r in results.items()}
    return [m7(s, results, classes, out_dir), m8(s, tuned, classes, out_dir), a3(s, results, classes, out_dir)]
