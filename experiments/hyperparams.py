"""Learning rate and optimizer: too small is slow, too large diverges; which matters more, lr or seed.

Claims (experiments/claims.toml): M7 an lr too small is slow, too large unstable (diverges); M8 momentum, Adam
and RMSProp each beat plain SGD; A3 hyperparameters are found by trial and error (the hand-set lr decides more
of the outcome than chance). Trained: per optimizer one sweep of every (lr, seed) pair of a log-spaced lr grid.
Measured and judged by `rules` per claim in `m7`, `m8`, `a3`, each optimizer at its own tuned lr (Choi et al.
2019; Schmidt et al. 2021). References: Bengio (2012); Wilson et al. (2017); Bouthillier et al. (2021).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats

from netalchemy import config as config_lib, data as data_lib, plots, spread, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.verdicts import Part, Rule, Verdict, across, judge

CLAIMS = ("M7", "M8", "A3")


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
    target_loss: float = 0.0  # M8's target train loss; 0 = automatic (`m8`)
    target_quantile: float = 0.9
    slow_margin: float = 0.25  # nats: "much higher" loss at the smallest lr
    unstable_rate: float = 0.5  # failure rate at the largest lr that counts as "diverges"
    a3_window_decades: float = 1.0  # A3 judges the lrs this close to the tuned lr
    a3_margin: float = 0.2  # lr share must exceed seed share by this much ("≫")
    n_resamples: int = 2000  # bootstrap resamples of the variance-share CIs

    def __post_init__(self) -> None:
        config_lib.check(self.baseline in self.optimizers and set(self.optimizers) <= set(config_lib.OPTIMIZERS)
                         and 0 < self.lr_min < self.lr_max and self.n_lrs >= 2 and 0 < self.target_quantile <= 1,
                         "need baseline ∈ optimizers ⊆ OPTIMIZERS, 0 < lr_min < lr_max, n_lrs ≥ 2, "
                         "0 < target_quantile ≤ 1")


PROFILES = {  # tiny checks the plumbing: two optimizers (one compilation each), three lrs, two seeds
    "tiny": Settings(base=_base(100, 25, 2, hidden=(32,)), optimizers=("sgd", "adam"), lr_min=1e-3, n_lrs=3,
                     n_resamples=200),
    "quick": Settings(base=_base(1000, 50, 6), n_lrs=7),  # one lr per decade, 1e-5..1e1
    "full": Settings()}


def lr_grid(s: Settings) -> np.ndarray:
    """The (n_lrs,) log-spaced learning rates, lr_min..lr_max inclusive."""
    return np.logspace(math.log10(s.lr_min), math.log10(s.lr_max), s.n_lrs)


def run(s: Settings, out_dir: Path) -> None:
    """Trains one sweep (lr grid × seeds, one compiled program) per optimizer; resumable."""
    dataset = data_lib.load(s.base.data)
    for name in s.optimizers:
        sweep.run(config_lib.override(s.base, [f"optim.name={name}"]), lrs=lr_grid(s), dataset=dataset,
                  out_dir=out_dir / f"sweep-{name}", progress=False)
    store.write_json(out_dir / "settings.json", config_lib.to_dict(s))


def finals(r: sweep.SweepResult, num_classes: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """A sweep's (lrs, seeds) final train loss, test accuracy, divergence and failure (runs are lr-major), and the
    tuned lr's index. A run *failed* if it diverged, ended non-finite or no better than uniform, loss ≥ ln(classes)
    (Adam and RMSProp rarely overflow at huge lrs, they stall there). The *tuned* lr has the lowest mean final
    training loss, no seed diverged: M7/M8 are about optimization and MNIST-1D has no validation split."""
    loss, acc, div = (r.history[m][:, -1].reshape(-1, r.cfg.seeds.n) for m in ("train_loss", "test_acc", "diverged"))
    div, bad = div.astype(bool), div.astype(bool) | ~np.isfinite(loss)
    if bad.any(axis=1).all():
        raise ValueError("every learning rate has a diverged seed")
    tuned = int(np.argmin(np.where(bad.any(axis=1), np.inf, np.nan_to_num(loss).mean(axis=1))))
    return loss, acc, div, bad | (loss >= math.log(num_classes)), tuned


def steps_to_target(steps: np.ndarray, losses: np.ndarray, target: float) -> np.ndarray:
    """(runs,) first step at which each run's loss is ≤ `target`, linearly interpolated between evaluations;
    +inf where never. `steps`: (evals,) increasing; `losses`: (runs, evals), NaN = not below."""
    steps, losses = np.asarray(steps, np.float64), np.atleast_2d(np.asarray(losses, np.float64))
    below = np.isfinite(losses) & (losses <= target)
    k = below.argmax(axis=1)
    j, rows = np.maximum(k - 1, 0), np.arange(len(k))
    hi, lo = losses[rows, j], losses[rows, k]  # the evaluations around the crossing
    with np.errstate(all="ignore"):
        t = steps[j] + (hi - target) / (hi - lo) * (steps[k] - steps[j])
    t = np.where((k > 0) & np.isfinite(hi) & (hi > lo), t, steps[k])
    return np.where(below.any(axis=1), t, np.inf)


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
    """Each part's rule: M7 "slow" and "unstable", M8 "faster" and "accuracy", A3 "lr over seed"."""
    return {"slow": Rule("the paired (same seed) excess final train loss, smallest grid lr − tuned lr", s.slow_margin,
                         "above", "visibly higher at the end of the same budget: 'slow'", unit="nats"),
            "unstable": Rule("the failure rate at the largest grid lr (non-finite or final train loss ≥ ln(classes); "
                             "Wilson interval)", s.unstable_rate, "above", "so many seeds failing: 'diverges'",
                             unit="fraction of seeds"),
            "faster": Rule("P(an optimizer reaches the target train loss in fewer steps than the baseline), "
                           "Mann-Whitney U / (n·m)", 0.5, "above", "0.5 is no faster", unit="probability"),
            "accuracy": Rule("P(its final test accuracy > the baseline's)", 0.5, "above", "only its contradiction "
                             "counts: significantly less accurate", unit="probability"),
            "lr over seed": Rule("lr share − seed share of the final test-accuracy variance near the tuned lr (seeds"
                                 " resampled)", s.a3_margin, "above", "the lr explains clearly more than chance "
                                 "('≫'); contradicted once chance explains more", unit="share", fails_at=0.0)}


def m8_one(faster: str, accuracy: str) -> str:
    """One optimizer vs the baseline: faster and not less accurate → supported; faster but less accurate →
    depends (a trade-off); slower, or no faster and less accurate → contradicted; else inconclusive."""
    if faster == "supported":
        return "depends" if accuracy == "contradicted" else "supported"
    return "contradicted" if "contradicted" in (faster, accuracy) else "inconclusive"


def m7(s: Settings, results: dict[str, sweep.SweepResult], num_classes: int, out_dir: Path) -> Verdict:
    """M7 per optimizer: "slow" (paired excess final train loss of the smallest lr over the tuned lr) and
    "unstable" (failure rate at the largest lr) across, then the optimizers across; figure lr_sweep.png."""
    rule, lrs, parts = rules(s), lr_grid(s), []
    fig, axes = plots.subplots(1, 3, figsize=(15, 4.8))
    for i, (name, r) in enumerate(results.items()):
        loss, acc, div, failed, best = finals(r, num_classes)
        slow, unstable = stats.bootstrap_ci(loss[0] - loss[best]), stats.fraction_ci(failed[-1])
        parts += [Part(f"{name} slow", rule["slow"], slow), Part(f"{name} unstable", rule["unstable"], unstable)]
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
                                 for i, n in enumerate(results)),
                 figure="lr_sweep.png", unit="failure rate")[0]


def m8(s: Settings, results: dict[str, sweep.SweepResult], num_classes: int, out_dir: Path) -> Verdict:
    """M8 per optimizer vs the baseline at tuned lrs: P(fewer steps to the target train loss; a run that never gets
    there is censored, ranked last) and P(higher final test accuracy), by `m8_one`; the optimizers across. Target:
    the largest `target_quantile` quantile of the final train loss over optimizers, unless set. learning_curves.png"""
    tuned = {n: finals(r, num_classes)[-1] for n, r in results.items()}
    curve = {(n, m): r.history[m][tuned[n] * r.cfg.seeds.n:][:r.cfg.seeds.n] for n, r in results.items()
             for m in ("train_loss", "test_acc")}  # (seeds, evals) at the tuned lr
    target = s.target_loss or max(np.quantile(curve[n, "train_loss"][:, -1], s.target_quantile) for n in results)
    x, acc = next(iter(results.values())).history["step"][0], {n: curve[n, "test_acc"][:, -1] for n in results}
    reached = {n: steps_to_target(x, curve[n, "train_loss"], target) for n in results}
    steps = {n: np.nan_to_num(t, posinf=10.0 * x[-1] + 1) for n, t in reached.items()}  # censored: after all others
    fig, axes = plots.subplots(1, 2, figsize=(12, 4.8))
    for i, n in enumerate(results):
        for ax, metric in zip(axes, ("train_loss", "test_acc")):
            plots.seed_band(ax, x, curve[n, metric], label=f"{n}, lr {lr_grid(s)[tuned[n]]:.2g}", color=f"C{i}",
                            log_y=metric == "train_loss")
    axes[0].axhline(target, color="k", ls="--", lw=0.8, label=f"target {target:.3g}")
    axes[0].set(xlabel="step", ylabel="training loss (nats, full train set)")
    axes[1].set(xlabel="step", ylabel="test accuracy")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle("M8: each optimizer at its own tuned lr (lowest mean final train loss)", fontsize=9)
    plots.save(fig, out_dir / "learning_curves.png")
    rule, others = rules(s), [n for n in results if n != s.baseline]
    parts = [p for n in others for p in (
        Part(f"{n} faster", rule["faster"], stats.probability_of_improvement_ci(-steps[n], -steps[s.baseline])),
        Part(f"{n} accuracy", rule["accuracy"], stats.probability_of_improvement_ci(acc[n], acc[s.baseline])))]
    return judge("M8", parts, lambda d: across([m8_one(d[f"{n} faster"], d[f"{n} accuracy"]) for n in others]),
                 how="per optimizer `m8_one`, then the optimizers across",
                 value=min((p.ci for p in parts[::2]), key=lambda ci: ci.estimate),
                 measurement=f"P(reaching train loss {target:.3g} in fewer steps than {s.baseline}) at tuned lrs "
                             f"(lowest over optimizers); lower median steps, mean test accuracy: " + "; ".join(
                                 f"{n} {np.quantile(reached[n], 0.5, method='inverted_cdf'):.0f}, {acc[n].mean():.3f}"
                                 for n in results),
                 figure="learning_curves.png", unit="P(faster)")[0]


def a3(s: Settings, results: dict[str, sweep.SweepResult], num_classes: int, out_dir: Path) -> Verdict:
    """A3 per optimizer: lr share − seed share of the final test accuracy's variance (a diverged run at chance)
    on the lrs within `a3_window_decades` of the tuned lr; the optimizers across. Figure variance_shares.png."""
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
    fig.suptitle("A3: what explains the spread of accuracy, the learning rate or the seed? (95% CI, seeds resampled)",
                 fontsize=9)
    plots.save(fig, out_dir / "variance_shares.png")
    parts = [Part(n, rules(s)["lr over seed"], sh[0]["lr_minus_seed"]) for n, sh in shares.items()]
    return judge("A3", parts, lambda d: across(list(d.values())), how="the optimizers across",
                 value=min((p.ci for p in parts), key=lambda ci: ci.estimate),
                 measurement=f"share of final test-accuracy variance explained by lr minus by seed, lrs within "
                             f"{s.a3_window_decades:g} decade(s) of the tuned lr (lowest over optimizers); lr vs seed "
                             f"share, lr share on the whole grid: " + "; ".join(
                                 f"{n} {sh[0]['lr'].estimate:.2f} vs {sh[0]['seed'].estimate:.2f}, "
                                 f"{sh[1]['lr'].estimate:.2f}" for n, sh in shares.items()),
                 figure="variance_shares.png", unit="share")[0]


def report(out_dir: Path) -> list[Verdict]:
    """Reads the sweeps; per claim, its measurement, figure and verdict: M7, M8, A3."""
    s = config_lib.from_dict(store.read_json(out_dir / "settings.json"), Settings)
    results = {name: sweep.load(out_dir / f"sweep-{name}") for name in s.optimizers}
    classes = store.read_json(out_dir / f"sweep-{s.baseline}" / "config.json")["dataset"]["classes"]
    return [m7(s, results, classes, out_dir), m8(s, results, classes, out_dir), a3(s, results, classes, out_dir)]
