"""Regularization ablation (claims M11, M13): dropout, L1, L2 and batch norm on a set small enough to overfit.

The article says dropout "prevents co-adaptation and improves generalization" (M11) and that
L1/L2 penalties "prevent overfitting", L1 also making weights sparse (M13). Here the
MNIST-1D MLP (40-100-100-10, Adam) is trained on a 500-example subset, long enough to reach
~100% training accuracy, with no regularization and with each regularizer alone at several
strengths: dropout rate (Srivastava et al. 2014), L1 strength λ₁ (loss + λ₁Σ|w|), L2 strength
λ₂ (loss + λ₂·½Σw²), and batch norm (Ioffe & Szegedy 2015; shown for comparison, judged in
the batchnorm experiment). Every variant runs the same seeds (paired design: seed i has the
same init, data order and dropout keys in every variant).

Per seed, at the end of training:
  test accuracy, and the generalization gap = train accuracy − test accuracy (both in
  evaluation mode on the full splits; train accuracy without dropout);
  weight sparsity = fraction of dense weights with |w| < `sparsity_rel` × σ_init(layer), where
  σ_init = sqrt(gain / fan_in) is the layer's initial weight scale (gain 2 for He init): a
  threshold relative to the weight scale, so 0.01 means "below 1% of the initial scale"
  (≈ 0.8% of weights are that small at initialization);
  co-adaptation proxy = mean |Pearson correlation| between pairs of units of the last hidden
  layer on the test set (Cogswell et al. 2016 use such cross-correlations as a co-adaptation
  measure). It is reported, not used by a verdict: co-adaptation itself has no agreed measure.

Choosing "the best strength" and testing it on the same seeds would favour a lucky level
(winner's curse), so the best level of each kind is chosen by mean test accuracy on the first
half of the seeds and judged on the other half. P(better) = the share of judging seeds on
which the regularized net's test accuracy beats its unregularized twin's (ties dropped, as in
the sign test), with a Wilson interval (`stats.paired_improvement_ci`): 16 wins of 16 give
1 [0.81, 1], not a bootstrap's [1, 1]. The changes in gap, test accuracy and sparsity use
paired BCa bootstrap CIs (`stats.paired_bootstrap_ci`).

Optimizer note: L1/L2 are added to the loss and the result is optimized with Adam, so L2 is
*not* decoupled weight decay (Loshchilov & Hutter 2019); with Adam the L1 subgradient does
not produce exact zeros either, hence the relative-threshold sparsity measure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import jax
import numpy as np

from netalchemy import config as config_lib
from netalchemy import mlp, plots, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.data import load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, all_hold, holm, judge

CLAIMS = ("M11", "M13")
KINDS = ("dropout", "l1", "l2", "batch_norm")
KIND_LABELS = {"dropout": "dropout rate", "l1": "L1 strength λ₁", "l2": "L2 strength λ₂", "batch_norm": "batch norm"}
NO_IMPROVEMENT = 0.5  # probability of improvement of a regularizer that changes nothing
MIN_JUDGING_SEEDS = 4  # fewer judging seeds give no verdict (a bootstrap CI over 1–3 seeds means little)
MIN_SPARSITY_RISE = 0.05  # L1 "makes weights sparse" if ≥ 5 more percentage points of weights are near zero
HIST_BINS = np.logspace(-8, 1, 91)  # |w| histogram edges; smaller values (and exact zeros) go in the first bin


def _base(steps: int, seeds: int, eval_every: int) -> Config:
    return Config(model=ModelConfig(hidden=(100, 100)),
                  optim=OptimConfig(name="adam", lr=1e-2),
                  train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=steps),
                  data=DataConfig(name="mnist1d", train_size=500),
                  seeds=SeedsConfig(n=seeds))


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: _base(3000, 32, 250))  # the unregularized run
    dropout: tuple[float, ...] = (0.1, 0.3, 0.5)
    l1: tuple[float, ...] = (1e-5, 1e-4, 1e-3)
    l2: tuple[float, ...] = (1e-4, 1e-3, 1e-2)
    batch_norm: bool = True  # also run the BN variant (for comparison; judged by the batchnorm experiment)
    sparsity_rel: float = 0.01  # near-zero weight: |w| < sparsity_rel × sqrt(gain / fan_in)


PROFILES = {
    "tiny": Settings(base=_base(100, 2, 50), dropout=(0.5,), l1=(1e-3,), l2=(1e-2,), batch_norm=False),
    "quick": Settings(base=_base(1000, 8, 250), dropout=(0.1, 0.5), l1=(1e-4, 1e-3), l2=(1e-3, 1e-2)),
    "full": Settings(),
}


# ----------------------------------------------------------------------------- variants


def variants(s: Settings) -> list[dict]:
    """Every configuration trained: the baseline, then each regularizer alone at each strength."""
    rows = [dict(name="none", kind="none", level=0.0, overrides=[])]
    rows += [dict(name=f"dropout-{r:g}", kind="dropout", level=r, overrides=[f"model.dropout={r!r}"]) for r in s.dropout]
    rows += [dict(name=f"l1-{v:g}", kind="l1", level=v, overrides=[f"train.l1={v!r}"]) for v in s.l1]
    rows += [dict(name=f"l2-{v:g}", kind="l2", level=v, overrides=[f"train.l2={v!r}"]) for v in s.l2]
    if s.batch_norm:
        rows.append(dict(name="batch_norm", kind="batch_norm", level=1.0, overrides=["model.batch_norm=true"]))
    return rows


# ----------------------------------------------------------------------------- measurements


def init_scale(fan_in: int, model: ModelConfig) -> float:
    """The standard deviation of a dense layer's initial weights (see `mlp.init`)."""
    return float(np.sqrt((2.0 if model.init == "he" else 1.0) / fan_in))


def near_zero_fraction(params: mlp.Params, model: ModelConfig, rel: float) -> np.ndarray:
    """(runs,) fraction of all dense weights with |w| < rel × init_scale(fan_in of their layer).

    `params` has numpy leaves with a leading (runs,) axis, as `SweepResult.final.params`.
    """
    small = total = 0
    for layer in params:
        w = np.abs(np.asarray(layer.w))  # (runs, fan_in, fan_out)
        small = small + (w < rel * init_scale(w.shape[1], model)).sum(axis=(1, 2))
        total += w.shape[1] * w.shape[2]
    return small / total


def weight_histogram(params: mlp.Params, bins: np.ndarray = HIST_BINS) -> np.ndarray:
    """Counts of |w| over all dense weights of all runs in log-spaced `bins` (values below bins[0] in the first)."""
    w = np.concatenate([np.abs(np.asarray(layer.w)).ravel() for layer in params])
    return np.histogram(np.clip(w, bins[0], bins[-1]), bins=bins)[0]


def mean_abs_correlation(h: np.ndarray, eps: float = 1e-8) -> float:
    """Mean |Pearson correlation| over pairs of distinct units of `h` (examples, units).

    Units that never vary (dead ReLUs) have no correlation and are left out; NaN if fewer
    than two units vary.
    """
    h = np.asarray(h, np.float64)
    h = h - h.mean(axis=0)
    sd = h.std(axis=0)
    h = h[:, sd > eps] / sd[sd > eps]
    k = h.shape[1]
    if k < 2:
        return float("nan")
    corr = h.T @ h / h.shape[0]
    return float((np.abs(corr).sum() - np.trace(np.abs(corr))) / (k * (k - 1)))


def coadaptation(final, x: np.ndarray, model: ModelConfig) -> np.ndarray:
    """(runs,) `mean_abs_correlation` of the last hidden layer's outputs on `x`, in evaluation mode."""
    outputs = jax.vmap(lambda p, s: mlp.forward(p, s, x, cfg=model, train=False).hidden[-1].outputs)(
        final.params, final.bn_state)  # (runs, examples, units)
    return np.array([mean_abs_correlation(h) for h in np.asarray(outputs)])


# ----------------------------------------------------------------------------- run


def run(s: Settings, out_dir: Path) -> None:
    """Trains every variant over the same seeds (one vmapped sweep each); writes results.npz/json."""
    out_dir = Path(out_dir)
    dataset = load(s.base.data)
    arrays, rows = {}, []
    for v in variants(s):
        cfg = config_lib.override(s.base, v["overrides"])
        started = time.perf_counter()
        result = sweep.run(cfg, out_dir=out_dir / "sweeps" / v["name"], dataset=dataset, progress=False)
        h = result.history
        diverged = h["diverged"][:, -1].astype(bool)
        final = lambda m: np.where(diverged, np.nan, h[m][:, -1])
        arrays.update({
            f"{v['name']}/train_acc": final("train_acc"),
            f"{v['name']}/test_acc": final("test_acc"),
            f"{v['name']}/diverged": diverged,
            f"{v['name']}/sparsity": near_zero_fraction(result.final.params, cfg.model, s.sparsity_rel),
            f"{v['name']}/coadaptation": coadaptation(result.final, dataset.x_test, cfg.model),
            f"{v['name']}/weight_hist": weight_histogram(result.final.params),
            f"{v['name']}/train_acc_curve": h["train_acc"],
            f"{v['name']}/test_acc_curve": h["test_acc"],
        })
        rows.append({k: v[k] for k in ("name", "kind", "level")})
        print(f"  {v['name']:>14s}: {len(result.seeds)} seeds, test acc {np.nanmean(arrays[v['name'] + '/test_acc']):.3f}"
              f" ({time.perf_counter() - started:.0f} s)", flush=True)
    arrays["steps"] = h["step"][0]
    arrays["seeds"] = result.seeds
    arrays["hist_bins"] = HIST_BINS
    store.write_npz(out_dir / "results.npz", arrays)
    store.write_json(out_dir / "results.json", {
        "variants": rows, "settings": config_lib.to_dict(s), "n_train": int(len(dataset.y_train)),
        "n_test": int(len(dataset.y_test)), "num_classes": dataset.num_classes})


# ----------------------------------------------------------------------------- verdict rules


def split_seeds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, judging) seed indices: the first half chooses the best level, the rest judges it.

    With one seed, that seed does both (the verdict is then only a smoke test).
    """
    if n < 2:
        return np.arange(n), np.arange(n)
    return np.arange(n // 2), np.arange(n // 2, n)


def best_level(test_acc_by_level: Sequence[np.ndarray], selection: np.ndarray) -> Optional[int]:
    """Index of the level with the highest mean test accuracy over the `selection` seeds (NaN-ignoring);
    None if no level has a finite run there."""
    means = [np.nanmean(a[selection]) if np.isfinite(a[selection]).any() else -np.inf for a in test_acc_by_level]
    return None if not means or max(means) == -np.inf else int(np.argmax(means))


BETTER = Rule("P(better): the share of judging seeds whose test acc with the regularizer beats the same seed's "
              "without (ties dropped; Wilson interval)", NO_IMPROVEMENT, "above",
              "0.5 is a regularizer that changes nothing", unit="probability",
              min_n=MIN_JUDGING_SEEDS)
GAP = Rule("the paired (same seed) change in generalization gap (train − test acc)", 0.0, "below",
           "a gap that shrinks is less overfitting; a gap that grows alone does not contradict better test "
           "accuracy", min_n=MIN_JUDGING_SEEDS)
SPARSER = Rule("the paired rise in the fraction of near-zero weights under the chosen L1 strength", MIN_SPARSITY_RISE,
               "above", f"{MIN_SPARSITY_RISE:.0%} more weights near zero is sparsity one would notice",
               min_n=MIN_JUDGING_SEEDS)


def improvement_parts(c: dict, label: str = "") -> list[Part]:
    """The two parts of "improves generalization" for one comparison from `compare`."""
    prefix = f"{label} " if label else ""
    n = c["n_judging"]
    return [Part(f"{prefix}P(better)", BETTER, c["poi"], n=n),
            Part(f"{prefix}gap", GAP, c["gap_change"], n=n, can_contradict=False)]


def improvement_verdict(poi: stats.CI, gap_change: stats.CI, n_seeds: int = MIN_JUDGING_SEEDS) -> str:
    """Does a regularizer improve generalization over no regularization? Both parts after Holm:
    supported iff P(better) lies above 0.5 and the gap shrinks; contradicted iff P(better) lies
    below 0.5 (the gap part cannot contradict); else inconclusive (also with < MIN_JUDGING_SEEDS)."""
    parts = improvement_parts({"poi": poi, "gap_change": gap_change, "n_judging": n_seeds})
    return all_hold(holm(parts))


def paired_change(a: np.ndarray, b: np.ndarray) -> stats.CI:
    """Paired BCa bootstrap CI (over seeds) of the mean of the per-seed difference a − b."""
    return stats.paired_bootstrap_ci(a, b)


# ----------------------------------------------------------------------------- report


def compare(r: dict, kind: str, levels: list[dict], selection: np.ndarray, judging: np.ndarray) -> Optional[dict]:
    """The best level of `kind` (chosen on `selection` seeds) against no regularization, on `judging` seeds."""
    if not levels:
        return None
    best = best_level([r[f"{v['name']}/test_acc"] for v in levels], selection)
    if best is None:
        return None
    v, j = levels[best], judging
    get = lambda name, m: r[f"{name}/{m}"][j]
    gap = lambda name: get(name, "train_acc") - get(name, "test_acc")
    out = dict(kind=kind, name=v["name"], level=v["level"], n_judging=int(len(j)),
               poi=stats.paired_improvement_ci(get(v["name"], "test_acc"), get("none", "test_acc")),
               test_change=paired_change(get(v["name"], "test_acc"), get("none", "test_acc")),
               gap_change=paired_change(gap(v["name"]), gap("none")),
               sparsity_rise=paired_change(get(v["name"], "sparsity"), get("none", "sparsity")),
               coadaptation_change=paired_change(get(v["name"], "coadaptation"), get("none", "coadaptation")))
    out["verdict"] = improvement_verdict(out["poi"], out["gap_change"], len(j))
    return out


def _ci(c: stats.CI, digits: int = 3) -> str:
    return "—" if not np.isfinite(c.estimate) else f"{c.estimate:+.{digits}f} [{c.low:+.{digits}f}, {c.high:+.{digits}f}]"


def summary_table(r: dict, rows: list[dict]) -> str:
    """Per variant: mean test accuracy, gap, sparsity and co-adaptation with 95% CIs, and P(improvement) vs none."""
    header = (f"{'variant':>14s}  {'test acc [95% CI]':>22s}  {'gap [95% CI]':>22s}  {'near-zero w':>11s}  "
              f"{'|corr|':>6s}  {'P(better than none) [CI]':>25s}  diverged")
    lines = [header, "-" * len(header)]
    for v in rows:
        name = v["name"]
        acc = stats.bootstrap_ci(r[f"{name}/test_acc"])
        gap = stats.bootstrap_ci(r[f"{name}/train_acc"] - r[f"{name}/test_acc"])
        poi = stats.paired_improvement_ci(r[f"{name}/test_acc"], r["none/test_acc"])
        cells = [f"{name:>14s}", f"{acc.estimate:.3f} [{acc.low:.3f}, {acc.high:.3f}]".rjust(22),
                 f"{gap.estimate:.3f} [{gap.low:.3f}, {gap.high:.3f}]".rjust(22),
                 f"{np.nanmean(r[f'{name}/sparsity']):11.3f}", f"{np.nanmean(r[f'{name}/coadaptation']):6.3f}",
                 f"{poi.estimate:.2f} [{poi.low:.2f}, {poi.high:.2f}]".rjust(25),
                 f"{int(r[f'{name}/diverged'].sum())}/{len(r[f'{name}/diverged'])}"]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def plot_strengths(r: dict, rows: list[dict], path: Path) -> Path:
    """Test accuracy (top) and generalization gap (bottom) vs strength, one column per regularizer kind."""
    import matplotlib.pyplot as plt

    kinds = [k for k in KINDS if any(v["kind"] == k for v in rows)]
    fig, axes = plt.subplots(2, len(kinds), figsize=(3.6 * len(kinds), 6), squeeze=False, sharey="row")
    metrics = [("test accuracy", lambda n: r[f"{n}/test_acc"]),
               ("generalization gap (train − test acc)", lambda n: r[f"{n}/train_acc"] - r[f"{n}/test_acc"])]
    n_seeds = len(r["none/test_acc"])
    for col, kind in enumerate(kinds):
        levels = [v for v in rows if v["kind"] == kind]
        for row, (label, get) in enumerate(metrics):
            ax = axes[row, col]
            base = stats.bootstrap_ci(get("none"))
            ax.axhline(base.estimate, color="k", lw=1, label="no regularization (mean, 95% CI)")
            ax.axhspan(base.low, base.high, color="k", alpha=0.12, lw=0)
            cis = [stats.bootstrap_ci(get(v["name"])) for v in levels]
            xs = np.arange(len(levels)) if kind == "batch_norm" else np.array([v["level"] for v in levels])
            est = np.array([c.estimate for c in cis])
            err = np.array([[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]])
            ax.errorbar(xs, est, yerr=err, fmt="o-", color=f"C{col}", capsize=3, label=f"{kind} (mean, 95% CI)")
            if kind == "batch_norm":
                ax.set_xticks(xs, ["BN on"])
                ax.set_xlim(-1, 1)
            elif kind in ("l1", "l2"):
                ax.set_xscale("log")
            if row == 1:
                ax.set_xlabel(KIND_LABELS[kind])
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.legend(fontsize=7)
            ax.grid(alpha=0.3)
    fig.suptitle(f"Regularization on {r['_n_train']} MNIST-1D training examples ({n_seeds} seeds, final step)")
    return plots.save(fig, path)


def plot_weight_histograms(r: dict, rows: list[dict], rel: float, path: Path) -> Path:
    """Distribution of |w| (all dense weights, all seeds) without regularization and at each L1 strength."""
    import matplotlib.pyplot as plt

    bins = r["hist_bins"]
    centers = np.sqrt(bins[:-1] * bins[1:])
    fig, ax = plt.subplots(figsize=(7, 4))
    for i, v in enumerate([v for v in rows if v["kind"] in ("none", "l1")]):
        counts = r[f"{v['name']}/weight_hist"].astype(np.float64)
        label = "no regularization" if v["kind"] == "none" else f"L1 λ₁={v['level']:g}"
        ax.step(centers, counts / counts.sum(), where="mid", color="k" if v["kind"] == "none" else f"C{i}",
                label=f"{label}: {np.nanmean(r[v['name'] + '/sparsity']):.1%} near zero")
    ax.axvspan(bins[0], rel * init_scale(100, ModelConfig()), color="grey", alpha=0.1,
               label=f"near zero (< {rel:g} × initial scale; shown for fan-in 100)")
    ax.set_xscale("log")
    ax.set_xlabel("|w| (dense weights; values < 1e-8 drawn at 1e-8)")
    ax.set_ylabel("fraction of weights per bin")
    ax.set_title("Weight magnitudes after training, with and without L1")
    ax.legend(fontsize=7)
    return plots.save(fig, path)


def plot_curves(r: dict, rows: list[dict], names: Sequence[str], path: Path) -> Path:
    """Train (dashed) and test accuracy over training for no regularization and the chosen best levels."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, name in enumerate(names):
        color = "k" if name == "none" else f"C{i}"
        plots.seed_band(ax, r["steps"], r[f"{name}/test_acc_curve"], label=f"{name} test", color=color)
        ax.plot(r["steps"], np.nanmedian(r[f"{name}/train_acc_curve"], axis=0), ls="--", color=color, lw=1)
    ax.set_xlabel("training step")
    ax.set_ylabel("accuracy (dashed: train, median)")
    ax.set_title("Learning curves: no regularization vs the best level of each kind")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Writes table.txt, comparisons.json and figures; returns the verdicts for M11 and M13."""
    out_dir = Path(out_dir)
    meta = store.read_json(out_dir / "results.json")
    r = store.read_npz(out_dir / "results.npz")
    r["_n_train"] = meta["n_train"]
    rows, rel = meta["variants"], meta["settings"]["sparsity_rel"]
    n = len(r["none/test_acc"])
    selection, judging = split_seeds(n)

    table = summary_table(r, rows)
    (out_dir / "table.txt").write_text(table + "\n")
    print(table)
    plot_strengths(r, rows, out_dir / "strengths.png")
    plot_weight_histograms(r, rows, rel, out_dir / "weights.png")

    cmp = {k: compare(r, k, [v for v in rows if v["kind"] == k], selection, judging) for k in ("dropout", "l1", "l2")}
    plot_curves(r, rows, ["none", *(c["name"] for c in cmp.values() if c)], out_dir / "curves.png")
    store.write_json(out_dir / "comparisons.json", {
        "selection_seeds": selection, "judging_seeds": judging,
        "comparisons": {k: None if c is None else {key: (val.as_dict() if isinstance(val, stats.CI) else val)
                                                   for key, val in c.items()} for k, c in cmp.items()}})
    split = f"best level chosen on seeds 1–{len(selection)}, judged on the other {len(judging)}"

    # M11: dropout.
    d = cmp["dropout"]
    how11 = (f"{split}; supported iff both parts are supported, contradicted iff P(better) is; co-adaptation is "
             f"not judged (reported: mean |corr| of last-layer units)")
    missing = {"poi": stats.CI(np.nan, np.nan, np.nan), "gap_change": stats.CI(np.nan, np.nan, np.nan), "n_judging": 0}
    m11 = judge("M11", improvement_parts(d or missing), lambda v: all_hold(list(v.values())), how=how11,
                measurement="no dropout variant ran" if d is None else
                f"P(better): share of {d['n_judging']} judging seeds whose test acc with dropout {d['level']:g} beats "
                f"the same seed's without; paired change in "
                f"test acc {_ci(d['test_change'])}, in gap {_ci(d['gap_change'])}, in mean |corr| of "
                f"last-layer units {_ci(d['coadaptation_change'])}", figure="strengths.png", unit="probability")[0]

    # M13: L1 and L2 against overfitting; L1 sparsity.
    l1, l2 = cmp["l1"], cmp["l2"]
    parts13 = [*(improvement_parts(l1, "L1") if l1 else []), *(improvement_parts(l2, "L2") if l2 else [])]
    if l1 is not None:
        parts13.append(Part("sparsity", SPARSER, l1["sparsity_rise"], n=l1["n_judging"]))

    def combine13(v):
        kinds = [all_hold([v[f"{k} P(better)"], v[f"{k} gap"]]) for k, c in (("L1", l1), ("L2", l2)) if c]
        return across([across(kinds or ["inconclusive"]), v.get("sparsity", "inconclusive")])

    how13 = (f"{split}, the weight threshold |w| < {rel:g}×sqrt(2/fan_in). Overfitting part: for L1 and for L2 "
             f"as M11 (both parts → supported, P(better) contradicted → contradicted), the two combined across "
             f"(agree → that verdict, supported vs contradicted → depends, else inconclusive); overall: "
             f"overfitting part and sparsity combined the same way")
    texts = [f"{label} {c['level']:g}: P(better) {c['poi'].estimate:.2f} [{c['poi'].low:.2f}, {c['poi'].high:.2f}], "
             f"gap change {_ci(c['gap_change'])}" for c, label in ((l1, "L1"), (l2, "L2")) if c is not None]
    if l1 is not None:
        texts.append(f"near-zero weight fraction rise under L1 {_ci(l1['sparsity_rise'])}")
    value = l2 if l2 is not None else l1
    m13 = judge("M13", parts13 or improvement_parts(missing), combine13 if parts13 else lambda v: "inconclusive",
                how=how13, measurement=f"value: P(better) of the best {'L2' if l2 is not None else 'L1'} strength over none (share of seeds) "
                                       f"({'; '.join(texts) or 'no L1/L2 variant ran'})",
                value=None if value is None else value["poi"], figure="strengths.png", unit="probability")[0]
    return [m11, m13]
