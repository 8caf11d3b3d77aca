"""Regularization ablation (claims M11, M13): dropout, L1, L2 and batch norm on a set small enough to overfit.

M11: dropout "prevents co-adaptation and improves generalization"; M13: L1/L2 "prevent overfitting", L1
making weights sparse. The MNIST-1D MLP (40-100-100-10, Adam) is trained on 500 examples, plain and with
each regularizer alone at several strengths (dropout, Srivastava et al. 2014; loss + λ₁Σ|w|; loss +
λ₂·½Σw², under Adam not decoupled weight decay; batch norm, judged by the batchnorm experiment), one
`sweep.run` per variant on the same seeds (paired). Per seed at the end: test accuracy; gap = train −
test accuracy; sparsity = share of weights with |w| < `sparsity_rel` × initial scale; co-adaptation =
mean |correlation| of last-hidden-layer units on the test set (Cogswell et al. 2016; not judged). Each
kind's best level is chosen on the first half of the seeds and judged on the other half; P(better) =
share of judging seeds beating their unregularized twin (ties dropped, Wilson interval); other changes:
paired BCa bootstrap CIs. results.npz is a `store.cached` value keyed by the full settings.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from netalchemy import config as config_lib
from netalchemy import per_run, plots, probes, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.data import load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, all_hold, judge

CLAIMS = ("M11", "M13")
KINDS = {"dropout": "dropout rate", "l1": "L1 strength λ₁", "l2": "L2 strength λ₂", "batch_norm": "batch norm"}
NO_IMPROVEMENT = 0.5  # probability of improvement of a regularizer that changes nothing
MIN_JUDGING_SEEDS = 4  # fewer judging seeds give no verdict (a bootstrap CI over 1–3 seeds means little)
MIN_SPARSITY_RISE = 0.05  # L1 "makes weights sparse" if ≥ 5 more percentage points of weights are near zero
FINALS = ("test_acc", "train_acc", "gap", "sparsity", "coadaptation")  # per-seed finals summarized per variant
REL_GRID = np.logspace(-4, 1, 26)  # |w| / initial scale thresholds of the weights figure


def _base(steps: int, seeds: int, eval_every: int) -> Config:
    return Config(model=ModelConfig(hidden=(100, 100)), optim=OptimConfig(name="adam", lr=1e-2),
                  train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=steps),
                  data=DataConfig(name="mnist1d", train_size=500), seeds=SeedsConfig(n=seeds))


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


# ----------------------------------------------------------------------------- measurements


def measure(s: Settings, out_dir: Path) -> dict[str, np.ndarray]:
    """Per variant (the baseline "none", then each regularizer alone at each strength): its sweep (resumable
    in out_dir/sweeps/<variant>) and per-seed measurements at the end, keyed `<variant>/<name>`."""
    keys = {"dropout": "model.dropout", "l1": "train.l1", "l2": "train.l2", "batch_norm": "model.batch_norm"}
    rows = [("none", "none", 0.0)] + [(f"{k}-{v:g}", k, v) for k in ("dropout", "l1", "l2") for v in getattr(s, k)]
    rows += [("batch_norm", "batch_norm", True)] if s.batch_norm else []
    dataset, rel = load(s.base.data), s.sparsity_rel
    arrays = {"name": [v[0] for v in rows], "kind": [v[1] for v in rows], "level": [v[2] for v in rows],
              "rel_grid": REL_GRID, "n_train": len(dataset.y_train), "sparsity_rel": rel}
    for name, kind, level in rows:
        cfg = config_lib.override(s.base, [f"{keys[kind]}={level!r}"] if kind in keys else [])
        result = sweep.run(cfg, out_dir=out_dir / "sweeps" / name, dataset=dataset, progress=False)
        h, params, diverged = result.history, result.final.params, result.history["diverged"][:, -1].astype(bool)
        last_hidden = per_run.layers(result.final, dataset.x_test, cfg=cfg)[-2]  # (runs, examples, units)
        arrays |= {f"{name}/{k}": a for k, a in {
            "train_acc": np.where(diverged, np.nan, h["train_acc"][:, -1]),
            "test_acc": np.where(diverged, np.nan, h["test_acc"][:, -1]), "diverged": diverged,
            "gap": np.where(diverged, np.nan, h["train_acc"][:, -1] - h["test_acc"][:, -1]),
            "sparsity": probes.near_zero_fraction(params, cfg.model, rel),
            "near_zero_curve": np.stack([probes.near_zero_fraction(params, cfg.model, t) for t in REL_GRID], axis=1),
            "coadaptation": np.array([probes.mean_abs_correlation(x) for x in last_hidden]),
            "train_acc_curve": h["train_acc"], "test_acc_curve": h["test_acc"], "steps": h["step"][0]}.items()}
    return arrays


def run(s: Settings, out_dir: Path) -> None:
    """Writes results.npz (`store.cached`, keyed by the full settings)."""
    store.cached("results.npz", s, lambda: measure(s, Path(out_dir)), folder=out_dir)


# ----------------------------------------------------------------------------- verdict rules

BETTER = Rule("P(better): the share of judging seeds whose test acc with the regularizer beats the same seed's "
              "without (ties dropped; Wilson interval)", NO_IMPROVEMENT, "above",
              "0.5 is a regularizer that changes nothing", unit="probability", min_n=MIN_JUDGING_SEEDS)
GAP = Rule("the paired (same seed) change in generalization gap (train − test acc)", 0.0, "below",
           "a gap that shrinks is less overfitting; a gap that grows alone does not contradict better test "
           "accuracy", min_n=MIN_JUDGING_SEEDS)
SPARSER = Rule("the paired rise in the fraction of near-zero weights under the chosen L1 strength", MIN_SPARSITY_RISE,
               "above", f"{MIN_SPARSITY_RISE:.0%} more weights near zero is sparsity one would notice",
               min_n=MIN_JUDGING_SEEDS)


def split_seeds(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(selection, judging) seed indices: the first half chooses the best level, the rest judges it
    (with one seed, that seed does both: the verdict is then only a smoke test)."""
    return (np.arange(n), np.arange(n)) if n < 2 else (np.arange(n // 2), np.arange(n // 2, n))


def best_level(test_acc_by_level: Sequence[np.ndarray], selection: np.ndarray) -> Optional[int]:
    """Index of the level with the highest NaN-ignoring mean test accuracy on `selection`; None if none is finite."""
    means = [np.nanmean(a[selection]) if np.isfinite(a[selection]).any() else -np.inf for a in test_acc_by_level]
    return None if not means or max(means) == -np.inf else int(np.argmax(means))


def compare(r: dict, kind: str, levels: list[dict], selection: np.ndarray, judging: np.ndarray) -> Optional[dict]:
    """The best level of `kind` (chosen on `selection` seeds) against no regularization, on `judging` seeds."""
    best = best_level([r[f"{v['name']}/test_acc"] for v in levels], selection)
    if best is None:
        return None
    name = levels[best]["name"]
    get = lambda n, m: r[f"{n}/{m}"][judging]  # noqa: E731
    change = lambda m: stats.paired_bootstrap_ci(get(name, m), get("none", m))  # noqa: E731  (paired by seed)
    return dict(kind=kind, name=name, level=levels[best]["level"], n_judging=int(len(judging)),
                poi=stats.paired_improvement_ci(get(name, "test_acc"), get("none", "test_acc")),
                test_change=change("test_acc"), gap_change=change("gap"), sparsity_rise=change("sparsity"),
                coadaptation_change=change("coadaptation"))


def regularizer_verdict(claim: str, compared: dict[str, Optional[dict]], split: str, *,
                        sparsity_rel: Optional[float] = None) -> Verdict:
    """`claim`: each regularizer of `compared` ({label: `compare` result}) improves generalization (parts
    P(better) and gap after Holm; the gap part cannot contradict), combined `across` them; with
    `sparsity_rel`, L1's rise in near-zero weights (SPARSER) is one more part, combined `across` with that."""
    ran, sparsity = {label: c for label, c in compared.items() if c is not None}, sparsity_rel is not None
    parts = [p for label, c in ran.items() for p in (Part(f"{label} P(better)", BETTER, c["poi"], n=c["n_judging"]),
             Part(f"{label} gap", GAP, c["gap_change"], n=c["n_judging"], can_contradict=False))]
    texts = [f"{label} {c['level']:g}: P(better) {c['poi'].text(2)} of {c['n_judging']} judging seeds; paired change "
             f"in test acc {c['test_change'].text()}, in gap {c['gap_change'].text()}, in mean |corr| of last-layer "
             f"units {c['coadaptation_change'].text()}" for label, c in ran.items()]
    if sparsity and "L1" in ran:
        parts.append(Part("sparsity", SPARSER, ran["L1"]["sparsity_rise"], n=ran["L1"]["n_judging"]))
        texts.append(f"near-zero weight fraction rise under L1 {ran['L1']['sparsity_rise'].text()}")

    def combine(v):
        improves = across([all_hold([v[f"{label} P(better)"], v[f"{label} gap"]]) for label in ran] or ["inconclusive"])
        return across([improves, v.get("sparsity", "inconclusive")]) if sparsity else improves
    last = list(ran)[-1] if ran else None
    how = (f"{split}; per regularizer supported iff both parts are, contradicted iff P(better) is; combined across "
           f"regularizers{', then with sparsity,' if sparsity else ''} (all agree → that verdict, supported and "
           "contradicted → depends, else inconclusive)")
    return judge(claim, parts, combine, how=how, value=ran[last]["poi"] if last else None,
                 measurement=f"value: P(better) of the best {last or ', '.join(compared)} level over none (share of "
                             f"seeds); {'; '.join(texts) or 'no such variant ran'}",
                 figure="strengths.png", unit="probability")[0]


# ----------------------------------------------------------------------------- report


def plot_strengths(r: dict, rows: list[dict], path: Path) -> Path:
    """Test accuracy (top) and generalization gap (bottom) against strength, a column per kind, beside
    no regularization (mean, 95% CI over seeds)."""
    kinds = [k for k in KINDS if any(v["kind"] == k for v in rows)]
    fig, axes = plots.subplots(2, len(kinds), figsize=(3.6 * len(kinds), 6), squeeze=False, sharey="row")
    metrics = {"test_acc": "test accuracy", "gap": "generalization gap (train − test acc)"}
    for (row, (metric, label)), (col, kind) in itertools.product(enumerate(metrics.items()), enumerate(kinds)):
        ax, levels = axes[row, col], [v for v in rows if v["kind"] == kind]
        base = stats.bootstrap_ci(r[f"none/{metric}"])
        ax.axhline(base.estimate, color="k", lw=1, label="no regularization (mean, 95% CI)")
        ax.axhspan(base.low, base.high, color="k", alpha=0.12, lw=0)
        cis = [stats.bootstrap_ci(r[f"{v['name']}/{metric}"]) for v in levels]
        xs, est = np.array([v["level"] for v in levels]), np.array([c.estimate for c in cis])
        ax.errorbar(xs, est, yerr=[est - [c.low for c in cis], [c.high for c in cis] - est], fmt="o-",
                    color=f"C{col}", capsize=3, label=f"{kind} (mean, 95% CI)")
        ax.set(xscale="log" if kind in ("l1", "l2") else "linear", xlabel=KINDS[kind] if row == 1 else "",
               ylabel=label if col == 0 else "")
        if kind == "batch_norm":
            ax.set(xticks=xs, xticklabels=["BN on"])
        ax.grid(alpha=0.3)
        if row == 0:
            ax.legend(fontsize=7)
    fig.suptitle(f"Regularization on {int(r['n_train'])} MNIST-1D training examples "
                 f"({len(r['none/test_acc'])} seeds, final step)")
    return plots.save(fig, path)


def plot_weights(r: dict, rows: list[dict], path: Path) -> Path:
    """The share of weights below t × initial scale against t (the CDF of |w| / initial scale, per seed),
    without and with L1; the near-zero threshold marked."""
    rel, (fig, ax) = float(r["sparsity_rel"]), plots.subplots(figsize=(7, 4))
    for i, v in enumerate([v for v in rows if v["kind"] in ("none", "l1")]):
        label = "no regularization" if v["kind"] == "none" else f"L1 λ₁={v['level']:g}"
        plots.seed_band(ax, r["rel_grid"], r[f"{v['name']}/near_zero_curve"], color="k" if i == 0 else f"C{i}",
                        label=f"{label}: {np.nanmean(r[v['name'] + '/sparsity']):.1%} below {rel:g}")
    ax.axvline(rel, color="grey", ls=":", label=f"the near-zero threshold ({rel:g} × initial scale)")
    ax.set(xscale="log", xlabel="t: |w| / initial weight scale sqrt(2 / fan_in)", ylabel="share of weights with "
           "|w| below t × initial scale", title="Weight magnitudes after training, with and without L1")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return plots.save(fig, path)


def plot_curves(r: dict, best: Sequence[str], path: Path) -> Path:
    """Learning curves (test: median and IQR over seeds; train: dashed median) of no regularization and
    the `best` level of each kind."""
    fig, ax = plots.subplots(figsize=(7, 4.5))
    for i, name in enumerate(["none", *best]):
        color, steps = "k" if name == "none" else f"C{i}", r[f"{name}/steps"]
        plots.seed_band(ax, steps, r[f"{name}/test_acc_curve"], label=f"{name} test", color=color)
        ax.plot(steps, np.nanmedian(r[f"{name}/train_acc_curve"], axis=0), ls="--", color=color, lw=1)
    ax.set(xlabel="training step", ylabel="accuracy (dashed: train, median)", title="Learning curves: no "
           "regularization vs the best level of each kind")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Writes comparisons.json (per variant: `stats.summarize` of its finals; the best levels' comparisons)
    and the figures; returns the verdicts for M11 and M13."""
    out_dir = Path(out_dir)
    r = store.read_npz(out_dir / "results.npz")
    rows = [dict(name=str(n), kind=str(k), level=float(v)) for n, k, v in zip(r["name"], r["kind"], r["level"])]
    selection, judging = split_seeds(len(r["none/test_acc"]))
    cmp = {k: compare(r, k, [v for v in rows if v["kind"] == k], selection, judging) for k in ("dropout", "l1", "l2")}
    store.write_json(out_dir / "comparisons.json", {"judging_seeds": judging, "variants": {
        v["name"]: {m: stats.summarize(r[f"{v['name']}/{m}"]) for m in FINALS} for v in rows},
        "comparisons": {k: c and {key: val.as_dict() if isinstance(val, stats.CI) else val for key, val in c.items()}
                        for k, c in cmp.items()}})
    plot_strengths(r, rows, out_dir / "strengths.png")
    plot_weights(r, rows, out_dir / "weights.png")
    plot_curves(r, [c["name"] for c in cmp.values() if c], out_dir / "curves.png")
    split = f"best level chosen on seeds 1–{len(selection)}, judged on the other {len(judging)}"
    return [regularizer_verdict("M11", {"dropout": cmp["dropout"]}, split),
            regularizer_verdict("M13", {"L1": cmp["l1"], "L2": cmp["l2"]}, split,
                                sparsity_rel=float(r["sparsity_rel"]))]
