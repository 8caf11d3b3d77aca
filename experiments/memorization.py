"""Memorization of random labels (claim A6): "success does not imply understanding".

Zhang et al. 2017 ("Understanding deep learning requires rethinking generalization") showed
that networks reach ~100% training accuracy on data whose labels were replaced at random,
while their test accuracy is chance: fitting the training set says nothing about whether
the net learned anything that transfers. Here the MNIST-1D MLP (40-100-100-10, Adam) is
trained on a 1000-example subset whose labels are corrupted with probability
p ∈ {0, 0.25, 0.5, 0.75, 1} (`data.label_noise`: round(p·n) training labels are redrawn
uniformly from all classes, so at p = 1 the labels carry no information; test labels are
never corrupted). Per seed and noise level:
  train accuracy against the labels it was trained on (the noisy ones: `history["train_acc"]`
  is computed on `Dataset.y_train`, which holds the noisy labels — `run` re-checks this by
  predicting the training set with the final params and comparing with both label sets);
  test accuracy on the clean test labels; steps to fit = the first evaluation step at which
  train accuracy reaches `fit_threshold` (0.99), or "not fitted" within the budget.
For the relabelled examples `run` also records how often the net predicts the original
(true) class instead of the random one it was given: memorization overrides the signal.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from pathlib import Path

import jax
import numpy as np

from netalchemy import config as config_lib
from netalchemy import plots, stats, store, sweep, train
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.data import load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, all_hold, judge

CLAIMS = ("A6",)
MEMORIZED = 0.95  # train accuracy on random labels whose CI lower bound counts as "fits them (~100%)"
CHANCE_TOLERANCE = 0.05  # test accuracy within chance ± this counts as "chance"
PLATEAU_TOLERANCE = 0.01  # train accuracy rising less than this over the last quarter of training: plateaued
MIN_SEEDS = 4  # fewer seeds give no verdict (a bootstrap CI over 1–3 seeds means little)


def _base(steps: int, seeds: int, eval_every: int) -> Config:
    return Config(model=ModelConfig(hidden=(100, 100)),
                  optim=OptimConfig(name="adam", lr=1e-3),
                  train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=steps),
                  data=DataConfig(name="mnist1d", train_size=1000),
                  seeds=SeedsConfig(n=seeds))


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


def steps_to_fit(acc: np.ndarray, steps: np.ndarray, threshold: float) -> np.ndarray:
    """(seeds,) first step at which acc (seeds, evaluations) reaches `threshold`; NaN if it never does."""
    acc = np.asarray(acc, np.float64)
    hit = acc >= threshold
    first = np.argmax(hit, axis=1)
    return np.where(hit.any(axis=1), np.asarray(steps, np.float64)[first], np.nan)


def plateaued(acc: np.ndarray, tolerance: float = PLATEAU_TOLERANCE) -> bool:
    """True when the mean over seeds of acc (seeds, evaluations) rose by less than `tolerance`
    over the last quarter of training (so more steps would not change the verdict)."""
    acc = np.asarray(acc, np.float64)
    if acc.shape[1] < 2:
        return False
    quarter = min(int(0.75 * (acc.shape[1] - 1)), acc.shape[1] - 2)  # an evaluation before the last one
    rise = np.nanmean(acc[:, -1] - acc[:, quarter])
    return bool(rise < tolerance)


def _label_check(final, data: train.Data, cfg: Config, noisy: np.ndarray, clean: np.ndarray) -> dict:
    """Final training-set predictions against the noisy and the original labels, per seed."""
    preds = np.asarray(jax.vmap(lambda s: train.predict(s.params, s.bn_state, data.x_train, cfg=cfg))(final))
    changed = noisy != clean

    def acc_on(labels, mask):  # (seeds,) accuracy over the examples in mask; NaN if there are none
        if not mask.any():
            return np.full(preds.shape[0], np.nan)
        return (preds[:, mask] == labels[mask]).mean(axis=1)

    every = np.ones_like(changed)
    return {"acc_noisy_labels": acc_on(noisy, every), "acc_clean_labels": acc_on(clean, every),
            "changed_predicts_given": acc_on(noisy, changed), "changed_predicts_original": acc_on(clean, changed)}


# ----------------------------------------------------------------------------- run


def run(s: Settings, out_dir: Path) -> None:
    """Trains all seeds at every noise level (one vmapped sweep per level); writes results.npz/json."""
    out_dir = Path(out_dir)
    arrays, levels = {}, []
    clean_data = load(dataclasses.replace(s.base.data, label_noise=0.0))
    for p in s.noise:
        cfg = config_lib.override(s.base, [f"data.label_noise={p!r}"])
        dataset = load(cfg.data)
        if not np.array_equal(dataset.x_train, clean_data.x_train):
            raise RuntimeError("label noise changed the training inputs; the clean-label check is invalid")
        started = time.perf_counter()
        result = sweep.run(cfg, out_dir=out_dir / "sweeps" / f"noise-{p:g}", dataset=dataset, progress=False)
        h = result.history
        data = train.Data(dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test)
        check = _label_check(result.final, data, cfg, np.asarray(dataset.y_train), np.asarray(clean_data.y_train))
        key = f"noise-{p:g}"
        arrays.update({f"{key}/{m}": h[m] for m in ("step", "train_acc", "test_acc", "train_loss", "diverged")})
        arrays.update({f"{key}/{m}": v for m, v in check.items()})
        arrays[f"{key}/steps_to_fit"] = steps_to_fit(h["train_acc"], h["step"][0], s.fit_threshold)
        levels.append({"noise": p, "key": key,
                       "labels_changed": float(np.mean(np.asarray(dataset.y_train) != np.asarray(clean_data.y_train))),
                       # history train_acc is measured on Dataset.y_train (the noisy labels): recomputed here
                       "history_vs_noisy_max_diff": float(np.nanmax(np.abs(h["train_acc"][:, -1] - check["acc_noisy_labels"])))})
        print(f"  noise {p:g}: {len(result.seeds)} seeds, train acc {np.nanmean(h['train_acc'][:, -1]):.3f}, "
              f"test acc {np.nanmean(h['test_acc'][:, -1]):.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    store.write_npz(out_dir / "results.npz", arrays)
    store.write_json(out_dir / "results.json", {
        "levels": levels, "settings": config_lib.to_dict(s), "num_classes": clean_data.num_classes,
        "n_train": int(len(clean_data.y_train)), "n_test": int(len(clean_data.y_test))})


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


def _fmt(c: stats.CI, digits: int = 3) -> str:
    return "—" if not np.isfinite(c.estimate) else f"{c.estimate:.{digits}f} [{c.low:.{digits}f}, {c.high:.{digits}f}]"


# ----------------------------------------------------------------------------- report


def summarize_levels(r: dict, levels: list[dict]) -> list[dict]:
    """Per noise level: final train/test accuracy CIs, steps to fit, and the label checks."""
    rows = []
    for lv in levels:
        k = lv["key"]
        dead = r[f"{k}/diverged"][:, -1].astype(bool)
        final = lambda m: np.where(dead, np.nan, r[f"{k}/{m}"][:, -1])
        fit = r[f"{k}/steps_to_fit"]
        rows.append({**lv, "seeds": int(len(dead)), "diverged": int(dead.sum()),
                     "train_acc": stats.bootstrap_ci(final("train_acc")),
                     "test_acc": stats.bootstrap_ci(final("test_acc")),
                     "steps_to_fit": stats.bootstrap_ci(fit), "fitted": int(np.isfinite(fit).sum()),
                     "acc_clean_labels": stats.bootstrap_ci(r[f"{k}/acc_clean_labels"]),
                     "changed_predicts_original": stats.bootstrap_ci(r[f"{k}/changed_predicts_original"]),
                     "plateaued": plateaued(r[f"{k}/train_acc"])})
    return rows


def format_table(rows: list[dict], threshold: float) -> str:
    header = (f"{'noise':>5s}  {'labels changed':>14s}  {'train acc (noisy labels)':>24s}  {'test acc (clean)':>22s}  "
              f"{f'steps to train acc ≥ {threshold:g}':>28s}  {'fitted':>6s}  {'relabelled → true class':>23s}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append("  ".join([f"{row['noise']:5.2f}", f"{row['labels_changed']:14.3f}",
                                _fmt(row["train_acc"]).rjust(24), _fmt(row["test_acc"]).rjust(22),
                                _fmt(row["steps_to_fit"], 0).rjust(28), f"{row['fitted']}/{row['seeds']}".rjust(6),
                                _fmt(row["changed_predicts_original"]).rjust(23)]))
    return "\n".join(lines)


def _errorbar(ax, x, cis, **kw):
    est = np.array([c.estimate for c in cis])
    err = np.array([[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]])
    return ax.errorbar(x, est, yerr=np.nan_to_num(err), capsize=3, **kw)


def plot_accuracy(rows: list[dict], chance: float, path: Path) -> Path:
    import matplotlib.pyplot as plt

    x = np.array([row["noise"] for row in rows])
    k = 1 / chance
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    _errorbar(ax, x, [row["train_acc"] for row in rows], fmt="o-", label="train accuracy on the labels trained on")
    _errorbar(ax, x, [row["test_acc"] for row in rows], fmt="s-", label="test accuracy (clean labels)")
    grid = np.linspace(0, 1, 50)
    ax.plot(grid, 1 - grid * (1 - 1 / k), ":", color="grey", label="share of training labels still correct")
    ax.axhline(chance, color="k", ls="--", lw=0.8, label=f"chance (1/{k:g})")
    ax.axhspan(chance - CHANCE_TOLERANCE, chance + CHANCE_TOLERANCE, color="k", alpha=0.08, lw=0,
               label=f"chance ± {CHANCE_TOLERANCE:g} (the verdict's band)")
    ax.set_xlabel("label noise: fraction of training labels redrawn at random")
    ax.set_ylabel("accuracy at the end of training")
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Fitting random labels (mean, 95% CI over {rows[0]['seeds']} seeds)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def plot_steps_to_fit(rows: list[dict], threshold: float, budget: int, path: Path) -> Path:
    import matplotlib.pyplot as plt

    x = np.array([row["noise"] for row in rows])
    fig, ax = plt.subplots(figsize=(6, 4))
    _errorbar(ax, x, [row["steps_to_fit"] for row in rows], fmt="o-", label="mean over fitted seeds, 95% CI")
    for row in rows:
        est = row["steps_to_fit"].estimate
        ax.annotate(f"{row['fitted']}/{row['seeds']} fitted", (row["noise"], est if np.isfinite(est) else budget),
                    textcoords="offset points", xytext=(4, 6), fontsize=7)
    ax.axhline(budget, color="k", ls="--", lw=0.8, label=f"training budget ({budget} steps)")
    ax.set_xlabel("label noise: fraction of training labels redrawn at random")
    ax.set_ylabel(f"steps until train accuracy ≥ {threshold:g}")
    ax.set_title("Steps to memorize the training labels vs label noise")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def plot_curves(r: dict, levels: list[dict], chance: float, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for i, lv in enumerate(levels):
        steps = r[f"{lv['key']}/step"][0]
        for ax, m in zip(axes, ("train_acc", "test_acc")):
            plots.seed_band(ax, steps, r[f"{lv['key']}/{m}"], label=f"noise {lv['noise']:g}", color=f"C{i}")
    for ax, title in zip(axes, ("train accuracy (on the noisy labels)", "test accuracy (clean labels)")):
        ax.axhline(chance, color="k", ls="--", lw=0.8, label="chance")
        ax.set_xlabel("training step")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0].set_ylabel("accuracy")
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Writes table.txt and figures; returns the verdict for A6."""
    out_dir = Path(out_dir)
    meta = store.read_json(out_dir / "results.json")
    r = store.read_npz(out_dir / "results.npz")
    levels, s = meta["levels"], meta["settings"]
    chance = 1.0 / meta["num_classes"]
    threshold, budget = s["fit_threshold"], s["base"]["train"]["steps"]
    rows = summarize_levels(r, levels)
    table = format_table(rows, threshold)
    (out_dir / "table.txt").write_text(table + "\n")
    print(table)
    worst_check = max(lv["history_vs_noisy_max_diff"] for lv in levels)
    print(f"history train_acc vs recomputed accuracy on the noisy labels: max |diff| = {worst_check:.2e}")
    plot_accuracy(rows, chance, out_dir / "accuracy_vs_noise.png")
    plot_steps_to_fit(rows, threshold, budget, out_dir / "steps_to_fit.png")
    plot_curves(r, levels, chance, out_dir / "curves.png")

    random = next((row for row in rows if row["noise"] == 1.0), None)
    if random is None:
        missing = stats.CI(np.nan, np.nan, np.nan)
        return [a6_verdict(missing, missing, chance, has_plateaued=False, n_seeds=0,
                           measurement="label noise 1.0 (random labels) was not run")]
    growth = ""
    clean = next((row for row in rows if row["noise"] == 0.0), None)
    if clean is not None:
        ratio = stats.bootstrap_ci(r[f"{random['key']}/steps_to_fit"] / r[f"{clean['key']}/steps_to_fit"])
        growth = (f"; steps to train acc ≥ {threshold:g}: {_fmt(clean['steps_to_fit'], 0)} with clean labels "
                  f"({clean['fitted']}/{clean['seeds']} fitted) vs {_fmt(random['steps_to_fit'], 0)} with random ones "
                  f"({random['fitted']}/{random['seeds']} fitted), per-seed ratio {_fmt(ratio, 2)}")
    return [a6_verdict(
        random["train_acc"], random["test_acc"], chance, has_plateaued=random["plateaued"],
        n_seeds=random["seeds"] - random["diverged"],
        measurement=f"train accuracy on fully random labels ({meta['n_train']} examples, {budget} steps); test "
                    f"accuracy {_fmt(random['test_acc'])} vs chance {chance:g}{growth}")]
