"""Memorization of random labels (claim A6): "success does not imply understanding".

Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization"): networks
reach ~100% training accuracy on labels replaced at random, while test accuracy stays at chance.
Here the MNIST-1D MLP (40-100-100-10, Adam) is trained (one `sweep.run` per level) on 1000
examples with label noise p ∈ {0, 0.25, 0.5, 0.75, 1} (`data.label_noise`: round(p·n) training
labels redrawn uniformly from all classes; test labels never corrupted). Per seed and level:
train accuracy on the noisy labels trained on (the history's, re-checked against both label sets
with `per_run.logits`), test accuracy on clean labels, steps to fit (`curves.first_crossing` of train
accuracy up to `fit_threshold`, interpolated between evaluations), and how often a relabelled example
is predicted as its original class.
results.npz is a `store.cached` value keyed by the full settings.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from netalchemy import config as config_lib
from netalchemy import curves, per_run, plots, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.data import Dataset, load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, all_hold, judge

CLAIMS = ("A6",)
MEMORIZED = 0.95  # train accuracy on random labels whose CI lower bound counts as "fits them (~100%)"
CHANCE_TOLERANCE = 0.05  # test accuracy within chance ± this counts as "chance"
PLATEAU_TOLERANCE = 0.01  # train accuracy rising less than this over the last quarter of training: plateaued
MIN_SEEDS = 4  # fewer seeds give no verdict (a bootstrap CI over 1–3 seeds means little)
NOTHING = stats.CI(np.nan, np.nan, np.nan)  # no measurement


def _base(steps: int, seeds: int, eval_every: int) -> Config:
    return Config(model=ModelConfig(hidden=(100, 100)), optim=OptimConfig(name="adam", lr=1e-3),
                  train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=steps),
                  data=DataConfig(name="mnist1d", train_size=1000), seeds=SeedsConfig(n=seeds))


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: _base(3000, 32, 50))  # data.label_noise is set per level
    noise: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)  # must include 1.0 for the verdict
    fit_threshold: float = 0.99  # "fitted": train accuracy (on the noisy labels) ≥ this


PROFILES = {
    "tiny": Settings(base=_base(100, 2, 50), noise=(0.0, 1.0)),
    "quick": Settings(base=_base(1500, 8, 50), noise=(0.0, 0.5, 1.0)),
    "full": Settings(),
}


# ----------------------------------------------------------------------------- measurements


def plateaued(acc: np.ndarray, tolerance: float = PLATEAU_TOLERANCE) -> bool:
    """True when the mean over seeds of acc (seeds, evaluations) rose by less than `tolerance`
    over the last quarter of training (so more steps would not change the verdict)."""
    acc = np.asarray(acc, np.float64)
    if acc.shape[1] < 2:
        return False
    quarter = min(int(0.75 * (acc.shape[1] - 1)), acc.shape[1] - 2)  # an evaluation before the last one
    return bool(np.nanmean(acc[:, -1] - acc[:, quarter]) < tolerance)


def label_check(preds: np.ndarray, noisy: np.ndarray, clean: np.ndarray) -> dict[str, np.ndarray]:
    """Training-set predictions (seeds, n) against the noisy and the original labels: (seeds,) accuracies
    on every example and on the relabelled ones (NaN where there are none)."""
    changed, every = noisy != clean, np.ones(noisy.shape, bool)
    def acc_on(labels, mask):
        return (preds[:, mask] == labels[mask]).mean(axis=1) if mask.any() else np.full(len(preds), np.nan)
    return {"acc_noisy_labels": acc_on(noisy, every), "acc_clean_labels": acc_on(clean, every),
            "changed_predicts_given": acc_on(noisy, changed), "changed_predicts_original": acc_on(clean, changed)}


def measure_level(cfg: Config, dataset: Dataset, clean: Dataset, threshold: float, folder: Path) -> dict:
    """One noise level's sweep (resumable in `folder`) and its per-seed measurements; the history's
    train accuracy is measured on `Dataset.y_train` (the noisy labels), so it is recomputed here."""
    if not np.array_equal(dataset.x_train, clean.x_train):
        raise RuntimeError("label noise changed the training inputs; the clean-label check is invalid")
    result = sweep.run(cfg, out_dir=folder, dataset=dataset, progress=False)
    h, noisy, original = result.history, np.asarray(dataset.y_train), np.asarray(clean.y_train)
    check = label_check(per_run.logits(result.final, dataset.x_train, cfg=cfg).argmax(-1), noisy, original)
    return {**{m: h[m] for m in ("step", "train_acc", "test_acc", "train_loss", "diverged")}, **check,
            "steps_to_fit": curves.first_crossing(h["step"][0], h["train_acc"], threshold, below=False),
            "labels_changed": np.mean(noisy != original),
            "history_vs_noisy_max_diff": np.nanmax(np.abs(h["train_acc"][:, -1] - check["acc_noisy_labels"]))}


def measure(s: Settings, out_dir: Path) -> dict[str, np.ndarray]:
    """Every noise level, keyed `noise-<p>/<name>`, with the settings the report needs."""
    clean = load(dataclasses.replace(s.base.data, label_noise=0.0))
    arrays = {"noise": np.array(s.noise), "num_classes": clean.num_classes, "n_train": len(clean.y_train),
              "fit_threshold": s.fit_threshold, "budget": s.base.train.steps}
    for p in s.noise:
        cfg = config_lib.override(s.base, [f"data.label_noise={p!r}"])
        level = measure_level(cfg, load(cfg.data), clean, s.fit_threshold, out_dir / "sweeps" / f"noise-{p:g}")
        arrays |= {f"noise-{p:g}/{k}": v for k, v in level.items()}
    return arrays


def run(s: Settings, out_dir: Path) -> None:
    """Writes results.npz (`store.cached`, keyed by the full settings)."""
    store.cached("results.npz", s, lambda: measure(s, Path(out_dir)), folder=out_dir)


# ----------------------------------------------------------------------------- verdict rules

FIT = Rule("the final train accuracy on fully random labels", MEMORIZED, "above",
           "'reaches ~100%' (Zhang et al. 2017) with room for a few stubborn examples", unit="accuracy",
           min_n=MIN_SEEDS, contradict_only_if=f"train accuracy rose < {PLATEAU_TOLERANCE} over the last quarter "
                                               f"of training (plateaued; still rising means: train longer)")


def chance_rule(chance: float) -> Rule:
    """Test accuracy at chance: inside chance ± CHANCE_TOLERANCE."""
    return Rule("the final test accuracy (clean labels) after training on random labels",
                (chance - CHANCE_TOLERANCE, chance + CHANCE_TOLERANCE), "inside",
                f"1/num_classes ± {CHANCE_TOLERANCE:g}: nothing that transfers was learned", unit="accuracy",
                min_n=MIN_SEEDS)


def a6_verdict(train_acc: stats.CI, test_acc: stats.CI, chance: float, *, has_plateaued: bool, n_seeds: int,
               measurement: str = "") -> Verdict:
    """A6 = both parts (fits the random labels; test accuracy at chance) hold: supported iff both
    are supported, contradicted iff either is contradicted (after Holm), else inconclusive."""
    parts = [Part("fit", FIT, train_acc, n=n_seeds, settled=has_plateaued),
             Part("chance", chance_rule(chance), test_acc, n=n_seeds)]
    return judge("A6", parts, lambda d: all_hold(list(d.values())), how="A6 supported iff both parts are, "
                 "contradicted iff either is, else inconclusive", measurement=measurement,
                 figure="accuracy_vs_noise.png", unit="accuracy")[0]


# ----------------------------------------------------------------------------- report


def summarize_level(r: dict, p: float) -> dict:
    """One noise level: final train/test accuracy CIs (diverged seeds dropped), steps to fit, label checks."""
    k = f"noise-{p:g}"
    dead = r[f"{k}/diverged"][:, -1].astype(bool)
    final = lambda m: np.where(dead, np.nan, r[f"{k}/{m}"][:, -1])  # noqa: E731
    fit = r[f"{k}/steps_to_fit"]  # +inf: not fitted (the CI is over the fitted seeds)
    return {"noise": p, "key": k, "seeds": int(len(dead)), "diverged": int(dead.sum()),
            "train_acc": stats.bootstrap_ci(final("train_acc")), "test_acc": stats.bootstrap_ci(final("test_acc")),
            "steps_to_fit": stats.bootstrap_ci(fit), "fitted": int(np.isfinite(fit).sum()),
            "changed_predicts_original": stats.bootstrap_ci(r[f"{k}/changed_predicts_original"]),
            "plateaued": plateaued(r[f"{k}/train_acc"]), "labels_changed": float(r[f"{k}/labels_changed"])}


def format_table(rows: list[dict], threshold: float) -> str:
    """One line per noise level: labels changed, train/test accuracy, steps to fit, relabelled → true class."""
    lines = [f"noise  labels changed  train acc (noisy labels)  test acc (clean)  steps to train acc ≥ {threshold:g}"
             f"  fitted  relabelled → true class"]
    lines += [f"{w['noise']:5.2f}  {w['labels_changed']:14.3f}  {w['train_acc'].text():>24s}  "
              f"{w['test_acc'].text():>16s}  {w['steps_to_fit'].text():>26s}  {w['fitted']:>3d}/{w['seeds']:<2d}  "
              f"{w['changed_predicts_original'].text()}" for w in rows]
    return "\n".join(lines)


def _errorbar(ax, x, cis, **kw):
    est = np.array([c.estimate for c in cis])
    err = np.array([[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]])
    return ax.errorbar(x, est, yerr=np.nan_to_num(err), capsize=3, **kw)


def plot_accuracy(rows: list[dict], chance: float, path: Path) -> Path:
    """Final train (noisy labels) and test (clean) accuracy vs label noise, with chance and its band."""
    x, k = np.array([row["noise"] for row in rows]), 1 / chance
    fig, ax = plots.subplots(figsize=(6.5, 4.2))
    _errorbar(ax, x, [row["train_acc"] for row in rows], fmt="o-", label="train accuracy on the labels trained on")
    _errorbar(ax, x, [row["test_acc"] for row in rows], fmt="s-", label="test accuracy (clean labels)")
    ax.plot([0, 1], [1, 1 / k], ":", color="grey", label="share of training labels still correct")
    ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance (1/{k:g})")
    ax.axhspan(chance - CHANCE_TOLERANCE, chance + CHANCE_TOLERANCE, color="k", alpha=0.08, lw=0,
               label=f"chance ± {CHANCE_TOLERANCE:g} (the verdict's band)")
    ax.set(xlabel="label noise: fraction of training labels redrawn at random", ylabel="accuracy at the end of "
           "training", ylim=(0, 1.05), title=f"Fitting random labels (mean, 95% CI over {rows[0]['seeds']} seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def plot_steps_to_fit(rows: list[dict], threshold: float, budget: int, path: Path) -> Path:
    """Steps until train accuracy reaches the threshold vs label noise, with how many seeds got there."""
    fig, ax = plots.subplots(figsize=(6, 4))
    _errorbar(ax, [row["noise"] for row in rows], [row["steps_to_fit"] for row in rows], fmt="o-",
              label="mean over fitted seeds, 95% CI")
    for row in rows:  # an unfitted level's note sits on the budget line
        where = (row["noise"], np.nan_to_num(row["steps_to_fit"].estimate, nan=budget))
        ax.annotate(f"{row['fitted']}/{row['seeds']} fitted", where,
                    textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.axhline(budget, color="k", ls="--", lw=0.8, label=f"training budget ({budget} steps)")
    ax.set(xlabel="label noise: fraction of training labels redrawn at random", ylabel=f"steps until train "
           f"accuracy ≥ {threshold:g}", title="Steps to memorize the training labels vs label noise")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def plot_curves(r: dict, rows: list[dict], chance: float, path: Path) -> Path:
    """Train (noisy labels) and test (clean) accuracy over training, one band per noise level."""
    fig, axes = plots.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, row in enumerate(rows):
        for ax, m in zip(axes, ("train_acc", "test_acc")):
            plots.seed_band(ax, r[f"{row['key']}/step"][0], r[f"{row['key']}/{m}"], label=f"noise {row['noise']:g}",
                            color=f"C{i}")
    for ax, title in zip(axes, ("train accuracy (on the noisy labels)", "test accuracy (clean labels)")):
        ax.axhline(chance, color="k", ls="--", lw=0.8, label="chance")
        ax.set(xlabel="training step", title=title)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy")
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Writes table.txt and figures; returns the verdict for A6."""
    r = store.read_npz(Path(out_dir) / "results.npz")
    chance, threshold, budget = 1.0 / int(r["num_classes"]), float(r["fit_threshold"]), int(r["budget"])
    rows = [summarize_level(r, float(p)) for p in r["noise"]]
    (out_dir / "table.txt").write_text(format_table(rows, threshold) + "\n")
    out_dir = Path(out_dir)
    plot_accuracy(rows, chance, out_dir / "accuracy_vs_noise.png")
    plot_steps_to_fit(rows, threshold, budget, out_dir / "steps_to_fit.png")
    plot_curves(r, rows, chance, out_dir / "curves.png")
    random = next((row for row in rows if row["noise"] == 1.0), None)
    if random is None:
        return [a6_verdict(NOTHING, NOTHING, chance, has_plateaued=False, n_seeds=0,
                           measurement="label noise 1.0 (random labels) was not run")]
    clean, growth = next((row for row in rows if row["noise"] == 0.0), None), ""
    if clean is not None:
        slow, fast = r[f"{random['key']}/steps_to_fit"], r[f"{clean['key']}/steps_to_fit"]
        both = np.isfinite(slow) & np.isfinite(fast)  # seeds fitted at both levels
        ratio = stats.bootstrap_ci(np.where(both, slow, np.nan) / np.where(both, fast, np.nan))
        growth = (f"; steps to train acc ≥ {threshold:g}: {clean['steps_to_fit'].text()} with clean labels "
                  f"({clean['fitted']}/{clean['seeds']} fitted) vs {random['steps_to_fit'].text()} with random ones "
                  f"({random['fitted']}/{random['seeds']} fitted), per-seed ratio {ratio.text()}")
    return [a6_verdict(
        random["train_acc"], random["test_acc"], chance, has_plateaued=random["plateaued"],
        n_seeds=random["seeds"] - random["diverged"],
        measurement=f"train accuracy on fully random labels ({int(r['n_train'])} examples, {budget} steps); test "
                    f"accuracy {random['test_acc'].text()} vs chance {chance:g}{growth}")]
