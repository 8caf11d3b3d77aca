"""Learning rate and optimizer: too small is slow, too large diverges, and which matters more, lr or seed.

Claims (experiments/claims.toml):
  M7  learning rate too small → slow; too large → unstable, diverges;
  M8  momentum smooths oscillations, Adam adapts per parameter, RMSProp normalises by recent
      history — i.e. each beats plain SGD;
  A3  hyperparameters are found by trial and error (the outcome depends more on the hand-set
      learning rate than on chance).

Measurement: for each optimizer (sgd, momentum, adam, rmsprop) one compiled program trains
every (learning rate, seed) pair of a log-spaced lr grid × seeds (`sweep.run(cfg, lrs=grid)`).
From the histories:

- the **tuned lr** of an optimizer is the grid lr with the lowest mean final *training* loss
  over seeds (MNIST-1D has no validation split and M7/M8 are claims about optimization, so
  the lr is tuned on the quantity being optimized; the test set is never used to choose);
  an lr at which any seed diverged is not eligible. The lr is a nuisance hyperparameter:
  optimizers are compared only at their own tuned lr (Choi et al. 2019, "On Empirical
  Comparisons of Optimizers for Deep Learning"; Schmidt et al. 2021, "Descending through a
  Crowded Valley");
- a run has **failed** when its loss went non-finite (diverged, flagged by the sweep) or its
  final training loss is no better than the uniform prediction, ln(classes): such a run has
  learned nothing. Adam and RMSProp rarely overflow at huge lrs; they stall at ≈ ln(classes);
- **steps to target**: the first step at which the full-training-set loss falls below a
  target, linearly interpolated between evaluations; the target (unless set) is the largest,
  over optimizers, of the `target_quantile` quantile of the final training loss at the tuned
  lr, so every optimizer reaches it in most seeds. Runs that never reach it are censored
  (ranked last);
- **variance shares** (A3): two-way ANOVA shares (`spread.grid_variance_shares`) of the final
  test accuracy on the (lr, seed) grid; diverged runs count as chance accuracy (1/classes).
  The verdict uses the lrs within `a3_window_decades` of the tuned lr (the range a
  practitioner who already knows the order of magnitude would search; on the whole 6-decade
  grid the lr trivially dominates — that share is reported too). CIs resample seeds
  (whole grid columns).

Verdict rules (rule objects below, unit-tested on synthetic numbers; every claim's parts are
corrected by Holm, `verdicts.judge`):
  M7: per optimizer, "slow" = the paired (same seed) excess final training loss of the
      smallest grid lr over the tuned lr has a 95% CI above `slow_margin` nats, and
      "unstable" = the failure rate at the largest grid lr (Wilson interval) lies above
      `unstable_rate`; the two combined by `verdicts.across`, then the optimizers too.
  M8: per non-SGD optimizer, supported if P(it reaches the target in fewer steps than SGD)
      has a 95% CI above 0.5 and its final test accuracy is not significantly worse
      (P(acc > SGD's acc) CI not wholly below 0.5); depends if faster but significantly less
      accurate (a trade-off); contradicted if significantly slower, or no faster and less
      accurate; combined over optimizers by `verdicts.across`.
  A3: per optimizer, supported if the 95% CI of (lr share − seed share) in the window lies
      above `a3_margin`; contradicted if it lies below 0 (chance explains more than the lr);
      combined by `verdicts.across`.
`verdicts.across`: all parts supported → supported; all contradicted → contradicted; some supported
and some contradicted (or a part that is itself "depends") → depends; otherwise inconclusive.

References: Bengio (2012) "Practical recommendations for gradient-based training" (the lr as
the hyperparameter that matters most); Wilson et al. (2017) "The marginal value of adaptive
gradient methods"; Bouthillier et al. (2021) "Accounting for variance in machine learning
benchmarks" (seed vs hyperparameter variance); Agarwal et al. (2021) (probability of
improvement).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy import plots, spread, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, judge

CLAIMS = ("M7", "M8", "A3")


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: Config(
        train=TrainConfig(steps=3000, batch_size=100, eval_every=100, chunk_steps=1000),
        seeds=SeedsConfig(n=16)))
    optimizers: tuple[str, ...] = ("sgd", "momentum", "adam", "rmsprop")
    baseline: str = "sgd"  # M8 compares every other optimizer with this one
    lr_min: float = 1e-5
    lr_max: float = 10.0
    n_lrs: int = 13  # log-spaced, lr_min..lr_max inclusive (13 = two per decade over 6 decades)
    target_loss: float = 0.0  # 0 = automatic (see module docstring)
    target_quantile: float = 0.9
    slow_margin: float = 0.25  # nats: "much higher" loss at the smallest lr
    unstable_rate: float = 0.5  # failure rate at the largest lr that counts as "diverges"
    a3_window_decades: float = 1.0
    a3_margin: float = 0.2  # lr share must exceed seed share by this much ("≫")
    n_resamples: int = 2000  # bootstrap resamples for the variance-share CIs

    def __post_init__(self) -> None:
        config_lib.check(self.baseline in self.optimizers, "baseline must be one of optimizers")
        config_lib.check(all(o in config_lib.OPTIMIZERS for o in self.optimizers),
                          f"optimizers must be among {', '.join(config_lib.OPTIMIZERS)}")
        config_lib.check(0 < self.lr_min < self.lr_max, "need 0 < lr_min < lr_max")
        config_lib.check(self.n_lrs >= 2, "n_lrs must be >= 2")
        config_lib.check(0 < self.target_quantile <= 1, "target_quantile must be in (0, 1]")


def _profile(steps: int, eval_every: int, seeds: int, hidden=(100, 100), **kw) -> Settings:
    base = Config(model=ModelConfig(hidden=hidden),
                  train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=steps),
                  seeds=SeedsConfig(n=seeds))
    return Settings(base=base, **kw)


PROFILES = {
    # tiny checks the plumbing: two optimizers (each costs one compilation), three lrs, two seeds
    "tiny": _profile(100, 25, 2, hidden=(32,), optimizers=("sgd", "adam"), lr_min=1e-3, lr_max=10.0, n_lrs=3,
                     n_resamples=200),
    "quick": _profile(1000, 50, 6, n_lrs=7),  # one lr per decade, 1e-5..1e1
    "full": Settings(),
}


# ----------------------------------------------------------------------------- measurements


def lr_grid(s: Settings) -> np.ndarray:
    """The log-spaced learning rates, lr_min..lr_max inclusive."""
    return np.logspace(math.log10(s.lr_min), math.log10(s.lr_max), s.n_lrs)


def optimizer_config(s: Settings, name: str) -> Config:
    return config_lib.override(s.base, [f"optim.name={name}"])


def failed_runs(final_loss: np.ndarray, diverged: np.ndarray, num_classes: int) -> np.ndarray:
    """True where a run diverged, ended non-finite, or ended no better than uniform (≥ ln C)."""
    final_loss = np.asarray(final_loss, np.float64)
    return np.asarray(diverged, bool) | ~np.isfinite(final_loss) | (final_loss >= math.log(num_classes))


def tuned_lr_index(final_loss: np.ndarray, diverged: np.ndarray) -> int:
    """Index of the lr with the lowest mean final loss over seeds; (lrs, seeds) inputs.

    An lr at which any seed diverged (or ended non-finite) is not eligible.
    """
    loss = np.asarray(final_loss, np.float64)
    bad = np.asarray(diverged, bool) | ~np.isfinite(loss)
    score = np.where(bad.any(axis=1), np.inf, np.where(bad, 0.0, loss).mean(axis=1))
    if not np.isfinite(score).any():
        raise ValueError("every learning rate has a diverged seed")
    return int(np.argmin(score))


def steps_to_target(steps: np.ndarray, losses: np.ndarray, target: float) -> np.ndarray:
    """First step at which each run's loss is ≤ `target`, linearly interpolated between evaluations.

    Args:
      steps: (evals,) evaluation steps, increasing.
      losses: (runs, evals) loss at each evaluation (non-finite = not below).
      target: the loss to reach.
    Returns:
      (runs,) float steps; +inf where the target is never reached.
    """
    steps = np.asarray(steps, np.float64)
    losses = np.atleast_2d(np.asarray(losses, np.float64))
    below = np.isfinite(losses) & (losses <= target)
    out = np.full(losses.shape[0], np.inf)
    for r in np.flatnonzero(below.any(axis=1)):
        k = int(np.argmax(below[r]))
        if k == 0 or not np.isfinite(losses[r, k - 1]):
            out[r] = steps[k]
            continue
        hi, lo = losses[r, k - 1], losses[r, k]
        frac = (hi - target) / (hi - lo) if hi > lo else 1.0
        out[r] = steps[k - 1] + frac * (steps[k] - steps[k - 1])
    return out


def censored_median(values: np.ndarray, axis: int = -1) -> np.ndarray:
    """The lower median (an observed value, never an average of two): with censored runs set to
    a sentinel, it is the sentinel exactly when more than half the runs are censored."""
    return np.quantile(values, 0.5, axis=axis, method="inverted_cdf")


def variance_shares_ci(grid: np.ndarray, *, n_resamples: int = 2000, seed: int = 0) -> dict[str, dict]:
    """Shares of the variance of a (lrs, seeds) grid explained by lr, by seed and by neither,
    each with a 95% percentile-bootstrap CI that resamples seeds (whole columns); also
    "lr_minus_seed", the statistic of the A3 rule."""
    grid = np.asarray(grid, np.float64)

    def shares(g):
        sh = spread.grid_variance_shares(g, ("lr", "seed"))
        return np.array([sh["lr"], sh["seed"], sh["interaction_residual"], sh["lr"] - sh["seed"]])

    point = shares(grid)
    rng = np.random.default_rng(seed)
    n = grid.shape[1]
    boot = np.array([shares(grid[:, rng.integers(0, n, n)]) for _ in range(n_resamples)])
    out = {}
    for i, name in enumerate(("lr", "seed", "interaction_residual", "lr_minus_seed")):
        b = boot[:, i][np.isfinite(boot[:, i])]
        low, high = (np.quantile(b, [0.025, 0.975]) if b.size else (math.nan, math.nan))
        out[name] = {"estimate": float(point[i]), "low": float(low), "high": float(high)}
    return out


def window_indices(lrs: np.ndarray, best: int, decades: float) -> np.ndarray:
    """Indices of the grid lrs within `decades` of lrs[best]; at least best and its neighbours."""
    dist = np.abs(np.log10(lrs) - np.log10(lrs[best]))
    idx = np.flatnonzero(dist <= decades + 1e-9)
    if idx.size < 3:
        idx = np.arange(max(0, best - 1), min(len(lrs), best + 2))
    return idx


# ----------------------------------------------------------------------------- verdict rules


def slow_rule(margin: float) -> Rule:
    return Rule("the paired (same seed) excess final train loss, smallest grid lr − tuned lr", margin, "above",
                f"{margin:g} nats is a loss visibly higher at the end of the same budget: 'slow'", unit="nats")


def unstable_rule(rate: float) -> Rule:
    return Rule("the failure rate at the largest grid lr (non-finite loss or final train loss ≥ ln(classes); "
                "Wilson interval)", rate, "above", f"more than {rate:.0%} of seeds failing: 'diverges'",
                unit="fraction of seeds")


FASTER = Rule("P(an optimizer reaches the target train loss in fewer steps than the baseline) at tuned lrs, "
              "Mann-Whitney U / (n·m)", 0.5, "above", "0.5 is no faster", unit="probability")
ACCURATE = Rule("P(its final test accuracy > the baseline's)", 0.5, "above",
                "only its contradiction counts: significantly less accurate", unit="probability")


def a3_rule(margin: float) -> Rule:
    return Rule("lr share − seed share of the final test-accuracy variance in the window (seeds resampled)", margin,
                "above", f"the lr explains clearly more than chance ('≫', margin {margin:g}); contradicted once chance "
                         f"explains more than the lr", unit="share", fails_at=0.0)


def m7_parts(name: str, slow: stats.CI, unstable: stats.CI, *, slow_margin: float, unstable_rate: float) -> list[Part]:
    """M7 for one optimizer: the small-lr loss excess and the large-lr failure rate."""
    return [Part(f"{name} slow", slow_rule(slow_margin), slow),
            Part(f"{name} unstable", unstable_rule(unstable_rate), unstable)]


def m7_combine(d: Mapping[str, str], names: Sequence[str]) -> str:
    """Per optimizer, slow and unstable combined across; then the optimizers combined across."""
    return across([across([d[f"{n} slow"], d[f"{n} unstable"]]) for n in names])


def m8_parts(name: str, faster: stats.CI, better_acc: stats.CI) -> list[Part]:
    """M8 for one optimizer vs the baseline: P(fewer steps to target) and P(higher test accuracy)."""
    return [Part(f"{name} faster", FASTER, faster), Part(f"{name} accuracy", ACCURATE, better_acc)]


def m8_one(faster: str, accuracy: str) -> str:
    """Significantly faster and not significantly less accurate → supported; faster but
    significantly less accurate → depends (a speed/accuracy trade-off); significantly slower,
    or no faster and significantly less accurate → contradicted; otherwise inconclusive."""
    worse = accuracy == "contradicted"
    if faster == "contradicted":
        return "contradicted"
    if faster == "supported":
        return "depends" if worse else "supported"
    return "contradicted" if worse else "inconclusive"


# ----------------------------------------------------------------------------- run


def run(s: Settings, out_dir: Path) -> None:
    """One sweep (lr grid × seeds, one compiled program) per optimizer; resumable."""
    out_dir = Path(out_dir)
    dataset = data_lib.load(s.base.data)
    for name in s.optimizers:
        sweep.run(optimizer_config(s, name), lrs=lr_grid(s), out_dir=out_dir / f"sweep-{name}",
                  dataset=dataset, progress=False)
    store.write_json(out_dir / "settings.json", config_lib.to_dict(s))


# ----------------------------------------------------------------------------- analysis


def _grid(result: sweep.SweepResult, metric: str, n_lrs: int) -> np.ndarray:
    """A final metric as an (lrs, seeds) grid (runs are lr-major)."""
    return result.history[metric][:, -1].reshape(n_lrs, -1)


def _ci(values, statistic=np.mean) -> tuple[float, float, float]:
    ci = stats.bootstrap_ci(values, statistic=statistic)
    return float(ci.estimate), float(ci.low), float(ci.high)


def _jsonable_ci(t) -> dict:
    return {"estimate": t[0], "low": t[1], "high": t[2]}


def analyse(s: Settings, results: dict[str, sweep.SweepResult], num_classes: int) -> dict:
    """Every number the report needs, from the finished sweeps (JSON-able)."""
    lrs = lr_grid(s)
    chance = 1.0 / num_classes
    per_opt = {}
    for name, r in results.items():
        loss, div = _grid(r, "train_loss", len(lrs)), _grid(r, "diverged", len(lrs)).astype(bool)
        acc = _grid(r, "test_acc", len(lrs))
        failed = failed_runs(loss, div, num_classes)
        best = tuned_lr_index(loss, div)
        slow = loss[0] - loss[best]  # paired by seed
        acc_chance = np.where(div, chance, acc)
        window = window_indices(lrs, best, s.a3_window_decades)
        per_opt[name] = {
            "tuned_lr": float(lrs[best]), "tuned_index": best,
            "final_train_loss_by_lr": [stats.summarize(np.where(div[i], np.nan, loss[i])) for i in range(len(lrs))],
            "test_acc_by_lr": [stats.summarize(np.where(div[i], np.nan, acc[i])) for i in range(len(lrs))],
            "diverged_rate_by_lr": div.mean(axis=1).tolist(),
            "failed_rate_by_lr": failed.mean(axis=1).tolist(),
            "slow_excess_loss": _jsonable_ci(_ci(slow)),
            "failed_rate_at_max_lr": stats.fraction_ci(failed[-1]).as_dict(),
            "window_lrs": lrs[window].tolist(),
            "shares_window": variance_shares_ci(acc_chance[window], n_resamples=s.n_resamples),
            "shares_full_grid": variance_shares_ci(acc_chance, n_resamples=s.n_resamples),
            "tuned_final_train_loss": loss[best].tolist(),
            "tuned_test_acc": acc[best].tolist(),
        }
    if s.target_loss > 0:
        target = s.target_loss
    else:
        target = max(float(np.quantile(per_opt[n]["tuned_final_train_loss"], s.target_quantile)) for n in results)
    steps_axis = next(iter(results.values())).history["step"][0]
    horizon = float(steps_axis[-1])
    sentinel = 10.0 * horizon + 1.0  # never reached: ranks last, ties with the other censored runs
    for name, r in results.items():
        best = per_opt[name]["tuned_index"]
        n_seeds = r.cfg.seeds.n
        curve = r.history["train_loss"][best * n_seeds:(best + 1) * n_seeds]
        t = steps_to_target(steps_axis, curve, target)
        per_opt[name]["steps_to_target"] = [None if not np.isfinite(v) else float(v) for v in t]
        per_opt[name]["reached_target"] = float(np.isfinite(t).mean())
        per_opt[name]["median_steps_to_target"] = _jsonable_ci(
            _ci(np.where(np.isfinite(t), t, sentinel), statistic=censored_median))
        per_opt[name]["test_acc_at_tuned"] = _jsonable_ci(_ci(per_opt[name]["tuned_test_acc"]))
    base = per_opt[s.baseline]
    base_steps = np.array([sentinel if v is None else v for v in base["steps_to_target"]])
    for name in results:
        if name == s.baseline:
            continue
        steps = np.array([sentinel if v is None else v for v in per_opt[name]["steps_to_target"]])
        faster = stats.probability_of_improvement_ci(-steps, -base_steps)
        better = stats.probability_of_improvement_ci(per_opt[name]["tuned_test_acc"], base["tuned_test_acc"])
        per_opt[name]["p_faster_than_baseline"] = faster.as_dict()
        per_opt[name]["p_better_acc_than_baseline"] = better.as_dict()
    return {"lrs": lrs.tolist(), "window_decades": s.a3_window_decades, "target_loss": target, "horizon": horizon, "sentinel": sentinel,
            "num_classes": num_classes, "optimizers": per_opt}


def _steps_text(o: dict, a: dict) -> str:
    """The median steps to target, or ">horizon" when at least half the runs never reached it."""
    med = o["median_steps_to_target"]["estimate"]
    return f">{a['horizon']:.0f}" if med >= a["sentinel"] else f"{med:.0f}"


def verdicts(s: Settings, a: dict) -> list[Verdict]:
    """The three verdicts from the analysed numbers."""
    opts = a["optimizers"]
    lrs = a["lrs"]
    as_ci = lambda d: stats.CI(*(math.nan if d[k] is None else d[k] for k in ("estimate", "low", "high")))  # noqa: E731
    names = list(opts)
    est = lambda d: d["estimate"] if d["estimate"] is not None else math.nan  # noqa: E731

    # M7
    parts = [p for n, o in opts.items() for p in m7_parts(n, as_ci(o["slow_excess_loss"]), as_ci(o["failed_rate_at_max_lr"]),
                                                          slow_margin=s.slow_margin, unstable_rate=s.unstable_rate)]
    notes = [f"{n}: {est(o['slow_excess_loss']):.2f} nats, {est(o['failed_rate_at_max_lr']):.2f} failed"
             for n, o in opts.items()]
    weakest = min(opts, key=lambda n: est(opts[n]["failed_rate_at_max_lr"]))
    m7 = judge("M7", parts, lambda d: m7_combine(d, names),
               how="per optimizer the two parts combined across, then the optimizers across: all supported → "
                   "supported, all contradicted → contradicted, a mix → depends, else inconclusive",
               measurement=f"failure rate at the largest lr ({lrs[-1]:g}), lowest over optimizers ({weakest}); per "
                           f"optimizer, excess final train loss at lr {lrs[0]:g} over the tuned lr and failure rate "
                           f"at lr {lrs[-1]:g}: " + "; ".join(notes),
               value=as_ci(opts[weakest]["failed_rate_at_max_lr"]), figure="lr_sweep.png", unit="failure rate")[0]

    # M8
    others = [n for n in opts if n != s.baseline]
    parts = [p for n in others for p in m8_parts(n, as_ci(opts[n]["p_faster_than_baseline"]),
                                                 as_ci(opts[n]["p_better_acc_than_baseline"]))]
    notes = [f"{n} (lr {opts[n]['tuned_lr']:.2g}): P(faster)={est(opts[n]['p_faster_than_baseline']):.2f}, median "
             f"{_steps_text(opts[n], a)} steps, acc {opts[n]['test_acc_at_tuned']['estimate']:.3f} "
             f"(P(better)={est(opts[n]['p_better_acc_than_baseline']):.2f})" for n in others]
    weakest = min(others, key=lambda n: est(opts[n]["p_faster_than_baseline"])) if others else "—"
    base = opts[s.baseline]
    m8 = judge("M8", parts, lambda d: across([m8_one(d[f"{n} faster"], d[f"{n} accuracy"]) for n in others]),
               how=f"lr tuned per optimizer by lowest mean final train loss; per optimizer: faster and accuracy not "
                   f"contradicted → supported, faster but accuracy contradicted → depends, faster contradicted, or "
                   f"not faster and accuracy contradicted → contradicted, else inconclusive; the optimizers "
                   f"combined across (all supported → supported, a mix → depends)",
               measurement=f"P(reaches train loss {a['target_loss']:.3g} in fewer steps than {s.baseline}) at tuned "
                           f"lrs, lowest over optimizers ({weakest}); {s.baseline} (lr {base['tuned_lr']:.2g}): "
                           f"median {_steps_text(base, a)} steps, acc {base['test_acc_at_tuned']['estimate']:.3f}; "
                           + "; ".join(notes),
               value=as_ci(opts[weakest]["p_faster_than_baseline"]) if others else None,
               figure="learning_curves.png", unit="P(faster)")[0]

    # A3
    parts = [Part(n, a3_rule(s.a3_margin), as_ci(o["shares_window"]["lr_minus_seed"])) for n, o in opts.items()]
    notes = [f"{n}: lr {o['shares_window']['lr']['estimate']:.2f} vs seed {o['shares_window']['seed']['estimate']:.2f} "
             f"(whole grid: lr {o['shares_full_grid']['lr']['estimate']:.2f})" for n, o in opts.items()]
    weakest = min(opts, key=lambda n: est(opts[n]["shares_window"]["lr_minus_seed"]))
    a3 = judge("A3", parts, lambda d: across(list(d.values())),
               how="two-way variance shares on the (lr, seed) grid of final test accuracy, diverged runs counted as "
                   "chance accuracy; the optimizers combined across",
               measurement=f"share of final test-accuracy variance explained by lr minus share explained by seed, "
                           f"lrs within {s.a3_window_decades:g} decade(s) of the tuned lr, lowest over optimizers "
                           f"({weakest}); " + "; ".join(notes),
               value=as_ci(opts[weakest]["shares_window"]["lr_minus_seed"]), figure="variance_shares.png",
               unit="share")[0]
    return [m7, m8, a3]


# ----------------------------------------------------------------------------- report


def _opt_colors(names) -> dict[str, str]:
    return {n: f"C{i}" for i, n in enumerate(names)}


def _nanmedian(values: np.ndarray) -> np.ndarray:
    """Median over seeds (axis 0), NaN where every seed is NaN, without warnings."""
    values = np.asarray(values, np.float64)
    out = np.full(values.shape[1:], np.nan)
    ok = np.isfinite(values).any(axis=0)
    out[ok] = np.nanmedian(values[:, ok], axis=0)
    return out


def plot_lr_sweep(s: Settings, results: dict, a: dict, path: Path) -> None:
    """Final train loss and test accuracy vs lr per optimizer; failure rate as marker size."""
    lrs = np.asarray(a["lrs"])
    colors = _opt_colors(results)
    fig, axes = plots.subplots(1, 2, figsize=(12, 5.2))
    for name, r in results.items():
        o = a["optimizers"][name]
        div = _grid(r, "diverged", len(lrs)).astype(bool)
        for ax, metric in zip(axes, ("train_loss", "test_acc")):
            vals = np.where(div, np.nan, _grid(r, metric, len(lrs))).T  # (seeds, lrs)
            plots.seed_band(ax, lrs, vals, label=name, color=colors[name])
            failed = np.asarray(o["failed_rate_by_lr"])
            ax.scatter(lrs, _nanmedian(vals), s=10 + 150 * failed, color=colors[name], edgecolor="k", lw=0.5,
                       zorder=3)
            dv = np.asarray(o["diverged_rate_by_lr"])
            hit = dv > 0
            ax.scatter(lrs[hit], np.full(hit.sum(), 0.03), s=20 + 120 * dv[hit], marker="x", color=colors[name],
                       transform=ax.get_xaxis_transform(), zorder=3)
            ax.axvline(o["tuned_lr"], color=colors[name], ls=":", lw=0.8)
    axes[0].axhline(math.log(a["num_classes"]), color="gray", ls="--", lw=0.8, label="ln(classes): uniform prediction")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("final training loss (nats, diverged runs excluded)")
    axes[1].axhline(1.0 / a["num_classes"], color="gray", ls="--", lw=0.8, label="chance")
    axes[1].set_ylabel("final test accuracy")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
    # One legend below both panels, never over the data: each optimizer once, then both reference lines.
    handles, labels = axes[0].get_legend_handles_labels()
    h1, l1 = axes[1].get_legend_handles_labels()
    fig.legend(handles + h1[-1:], labels + l1[-1:], loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(f"M7: lr sweep, {s.base.train.steps} steps, batch {s.base.train.batch_size}. Marker size = failure "
                 f"rate (non-finite or loss ≥ ln C);\n✕ at the bottom, sized by rate = diverged (NaN/Inf); "
                 f"dotted = tuned lr", fontsize=9)
    plots.save(fig, path)


def plot_learning_curves(s: Settings, results: dict, a: dict, path: Path) -> None:
    """Train loss and test accuracy vs step at each optimizer's tuned lr, with seed bands."""
    colors = _opt_colors(results)
    fig, axes = plots.subplots(1, 2, figsize=(12, 4.8))
    for name, r in results.items():
        o = a["optimizers"][name]
        n = r.cfg.seeds.n
        sl = slice(o["tuned_index"] * n, (o["tuned_index"] + 1) * n)
        steps = r.history["step"][0]
        label = f"{name}, lr {o['tuned_lr']:.2g}"
        plots.seed_band(axes[0], steps, r.history["train_loss"][sl], label=label, color=colors[name], log_y=True)
        plots.seed_band(axes[1], steps, r.history["test_acc"][sl], label=label, color=colors[name])
    axes[0].axhline(a["target_loss"], color="k", ls="--", lw=0.8, label=f"target {a['target_loss']:.3g}")
    axes[0].set_ylabel("training loss (nats, full train set)")
    axes[1].set_ylabel("test accuracy")
    for ax in axes:
        ax.set_xlabel("step")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle("M8: each optimizer at its own tuned lr (lowest mean final train loss)", fontsize=9)
    plots.save(fig, path)


def plot_variance_shares(a: dict, path: Path) -> None:
    """Bars: accuracy-variance shares of lr, seed and interaction, window and whole grid, 95% CIs."""
    names = list(a["optimizers"])
    parts = (("lr", "learning rate"), ("seed", "seed"), ("interaction_residual", "interaction / residual"))
    fig, axes = plots.subplots(1, 2, figsize=(12, 4.2), sharey=True)
    for ax, key, title in zip(axes, ("shares_window", "shares_full_grid"),
                              (f"lrs within {a['window_decades']:g} decade(s) of the tuned lr", "whole lr grid")):
        x = np.arange(len(names))
        for k, (part, label) in enumerate(parts):
            est = np.array([a["optimizers"][n][key][part]["estimate"] for n in names])
            low = np.array([a["optimizers"][n][key][part]["low"] for n in names])
            high = np.array([a["optimizers"][n][key][part]["high"] for n in names])
            err = np.clip(np.stack([est - low, high - est]), 0, None)
            ax.bar(x + (k - 1) * 0.27, est, 0.27, yerr=err, capsize=3, label=label)
        ax.set_xticks(x, names)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(0, 1.05)
    axes[0].set_ylabel("share of final test-accuracy variance")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8)
    fig.suptitle("A3: what explains the spread of accuracy — the learning rate or the seed? (95% CI, seeds resampled)",
                 fontsize=9)
    plots.save(fig, path)


def format_table(a: dict, baseline: str) -> str:
    rows = [("optimizer", "tuned lr", "steps to target (lower median)", "reached", "test acc [95% CI]",
             "P(faster than " + baseline + ")", "fail@max lr", "lr share (window)", "seed share (window)")]
    fmt_ci = lambda d, f: f"{d['estimate']:{f}} [{d['low']:{f}}, {d['high']:{f}}]"  # noqa: E731
    for name, o in a["optimizers"].items():
        steps = _steps_text(o, a)
        pf = o.get("p_faster_than_baseline")
        rows.append((name, f"{o['tuned_lr']:.3g}", steps, f"{o['reached_target']:.0%}",
                     fmt_ci(o["test_acc_at_tuned"], ".3f"),
                     "—" if pf is None else f"{pf['estimate']:.2f} [{pf['low']:.2f}, {pf['high']:.2f}]",
                     f"{o['failed_rate_at_max_lr']['estimate']:.2f}",
                     fmt_ci(o["shares_window"]["lr"], ".2f"), fmt_ci(o["shares_window"]["seed"], ".2f")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return f"target training loss {a['target_loss']:.4g}\n" + "\n".join(lines)


def report(out_dir: Path) -> list[Verdict]:
    """Reads the sweeps, writes analysis.json, table.txt and three figures, returns M7, M8, A3."""
    out_dir = Path(out_dir)
    s = config_lib.from_dict(store.read_json(out_dir / "settings.json"), Settings)
    results = {name: sweep.load(out_dir / f"sweep-{name}") for name in s.optimizers}
    num_classes = store.read_json(out_dir / f"sweep-{s.baseline}" / "config.json")["dataset"]["classes"]
    a = analyse(s, results, num_classes)
    store.write_json(out_dir / "analysis.json", a)
    table = format_table(a, s.baseline)
    (out_dir / "table.txt").write_text(table + "\n")
    print(table)
    plot_lr_sweep(s, results, a, out_dir / "lr_sweep.png")
    plot_learning_curves(s, results, a, out_dir / "learning_curves.png")
    plot_variance_shares(a, out_dir / "variance_shares.png")
    return verdicts(s, a)
