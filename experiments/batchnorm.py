"""Batch norm: does it allow higher learning rates (M12), and is it known why it helps (A4)?

Per variant (without / with batch norm) one `sweep.run` trains the MNIST-1D MLP with plain SGD
(constant rate: stability depends on the rate alone), every seed at every rate of a log grid, the
hook `measures.Smoothness` compiled into it. M12: a run is *stable* when its loss stayed finite and its final
train loss is below `progress_fraction · ln(classes)` (dead ReLUs sit at ≈ ln(classes)); a seed's
*edge* is its largest stable rate; the rule reads BN edge / no-BN edge over paired seeds. A4, through
Santurkar et al. 2018, "How Does Batch Normalization Help Optimization?": BN smooths the landscape,
and internal covariate shift (ICS) is not what it reduces. The hook runs at step 0 and after every
`eval_every` steps; A4 reads the runs at `landscape_lr` at the states before each interval (those
measured before the engine did it; the final state is left out), as BN / no-BN ratios of per-seed
means with a stratified bootstrap CI. Results: sweep folders nobn/ and bn/, then the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from netalchemy import measures, plots, stats, store, sweep, train
from netalchemy import data as data_lib
from netalchemy.config import Config, ConfigError, ModelConfig, OptimConfig, SeedsConfig, TrainConfig, to_dict
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M12", "A4")
VARIANTS = ("nobn", "bn")  # model.batch_norm = False, True
LABELS, COLORS = {"nobn": "no batch norm", "bn": "batch norm"}, {"nobn": "tab:blue", "bn": "tab:orange"}
LANDSCAPE, ICS = ("loss_range", "grad_pred", "beta"), ("ics_l2", "ics_rel", "ics_cos")


def _base(steps: int, eval_every: int, seeds: int, hidden=(100, 100), chunk_steps: int = 0) -> Config:
    return Config(model=ModelConfig(hidden=hidden), optim=OptimConfig(name="sgd", lr=0.1), seeds=SeedsConfig(n=seeds),
                  train=TrainConfig(steps=steps, eval_every=eval_every, chunk_steps=chunk_steps or steps))


@dataclass(frozen=True)
class Settings:
    """`base`: the sweeps' config (batch norm set per variant; measured every `train.eval_every` steps)."""

    base: Config = field(default_factory=lambda: _base(2000, 100, 32, chunk_steps=1000))
    lr_min: float = 1e-3  # the grid, log-spaced from lr_min to lr_max
    lr_max: float = 1e2
    lrs_per_decade: int = 3
    progress_fraction: float = 0.9  # stable: final train loss < progress_fraction · ln(classes)
    landscape_lr: float = 0.1  # the grid rate whose runs A4 reads
    eta_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)  # η = landscape_lr × these

    def __post_init__(self) -> None:
        if not (0 < self.lr_min < self.lr_max and self.lrs_per_decade >= 1 and 0 < self.progress_fraction <= 1
                and len(self.eta_multipliers) >= 2 and min(self.eta_multipliers) > 0
                and np.isclose(lr_grid(self), self.landscape_lr, rtol=1e-9, atol=0).any()):
            raise ConfigError("need 0 < lr_min < lr_max, lrs_per_decade ≥ 1, progress_fraction in (0, 1], at least "
                              "two positive eta_multipliers and landscape_lr a rate of the grid")


def lr_grid(s: Settings) -> np.ndarray:
    """The log-spaced learning-rate grid, lr_min … lr_max inclusive."""
    decades = math.log10(s.lr_max / s.lr_min)
    return np.logspace(math.log10(s.lr_min), math.log10(s.lr_max), int(round(decades * s.lrs_per_decade)) + 1)


PROFILES = {
    "tiny": Settings(base=_base(40, 20, 2, hidden=(32, 32)), lr_min=1e-2, lr_max=1e2, lrs_per_decade=1,
                     eta_multipliers=(0.5, 2.0)),
    "quick": Settings(base=_base(500, 50, 8), lr_min=1e-2, lr_max=1e2, lrs_per_decade=2),
    "full": Settings(),
}


# ----------------------------- what is trained (measured inside training by measures.Smoothness, Santurkar et al.)
def run(s: Settings, out_dir: Path) -> None:
    """One sweep per variant over the lr grid with the `measures.Smoothness` hook, each in its folder (resumable)."""
    out_dir, dataset = Path(out_dir), data_lib.load(s.base.data)
    hook = measures.Smoothness(tuple(s.landscape_lr * m for m in s.eta_multipliers), s.landscape_lr)
    for v in VARIANTS:
        cfg = replace(s.base, model=replace(s.base.model, batch_norm=v == "bn"))
        sweep.run(cfg, lrs=lr_grid(s), measure=hook, out_dir=out_dir / v, dataset=dataset, progress=False)
    store.write_json(out_dir / "run.json", {"settings": to_dict(s), "lr_grid": lr_grid(s), "classes": dataset.num_classes})


# ------------------------------------------------------------------------------- statistics and rules
def stability_table(diverged: np.ndarray, final_loss: np.ndarray, lrs: np.ndarray, *, threshold: float) -> dict:
    """From (lrs, seeds) diverged flags and final train losses: stable (never diverged, final loss finite and
    below `threshold`), each seed's edge (its largest stable lr; NaN if none), the first lr with a divergence."""
    final = np.where(diverged, np.nan, final_loss)
    stable, rate = np.isfinite(final) & (final < threshold), diverged.mean(axis=1)
    return {"diverged": diverged, "final_loss": final, "stable": stable, "divergence_rate": rate,
            "edge": np.where(stable.any(axis=0), lrs[len(lrs) - 1 - np.argmax(stable[::-1], axis=0)], np.nan),
            "first_divergence": float(lrs[np.argmax(rate > 0)]) if (rate > 0).any() else None}


def ratio_ci(a: np.ndarray, b: np.ndarray) -> stats.CI:
    """mean(a) / mean(b), stratified BCa bootstrap CI (a and b resampled apart; non-finite values dropped)."""
    return stats.independent_bootstrap_ci(a, b, statistic=lambda a, b, axis=-1: a.mean(axis) / b.mean(axis))


def geometric_ratio_ci(a: np.ndarray, b: np.ndarray) -> stats.CI:
    """Paired geometric-mean ratio a/b over seeds: 10^mean(log10 a − log10 b), bootstrap CI."""
    return stats.CI(*(10.0 ** v for v in stats.bootstrap_ci(np.log10(a) - np.log10(b))))


def m12_verdict(ratio: stats.CI, nobn_inside: float, *, progress_fraction: float = 0.9, n: int | None = None,
                measurement: str = "") -> Verdict:
    """M12 from the CI of the BN / no-BN edge ratio over `n` paired seeds; contradicted only where the grid can
    show it."""
    return Rule(f"the geometric mean over paired seeds of BN edge / no-BN edge, an edge being a seed's largest grid "
                f"lr at which SGD trained stably (no NaN/Inf loss and final train loss < {progress_fraction:g}·"
                f"ln(classes))", 1.0, "above", "1 is no higher learning rate with batch norm; exactly 1 (every seed "
                f"the same edge) fails", unit="×", ties_fail=True,
                contradict_only_if="the no-BN edge lies inside the grid (some stable lr, not the top one) for at "
                "least half the seeds (else the grid cannot show a difference)").verdict(
        "M12", ratio, measurement=measurement, n=n, settled=nobn_inside >= 0.5, figure="stability.png")


def reduced(measure: str) -> Rule:
    """A BN / no-BN ratio below 1: batch norm reduces `measure`."""
    return Rule(f"the BN / no-BN ratio of per-seed means over training of {measure} (seeds of each resampled apart)",
                1.0, "below", "below 1: batch norm reduces it (Santurkar et al. 2018 report smoothing); "
                              "above 1: it increases it", unit="×")


def a4_combine(d: dict[str, str]) -> str:
    """A4 from its parts (supported = reduced, contradicted = increased), as `a4_verdict` states."""
    landscape = [d["loss range"], d["β-smoothness"]]
    if all(v == "supported" for v in landscape):
        return "depends" if d["relative ICS"] == "supported" else "contradicted"
    return "depends" if "supported" in landscape else "supported" if "contradicted" in landscape else "inconclusive"


def a4_verdict(loss_range: stats.CI, beta: stats.CI, ics: stats.CI, measurement: str = "",
               n: tuple[int | None, int | None, int | None] = (None, None, None)) -> Verdict:
    """A4 from the BN / no-BN ratio CIs, each over `n` seeds (the smaller arm's finite ones, in the parts' order):
    Santurkar's mechanism (smoother, ICS not reduced) contradicts it."""
    parts = [Part("loss range", reduced("the loss range along −g"), loss_range, n=n[0]),
             Part("β-smoothness", reduced("the effective β-smoothness"), beta, n=n[1]),
             Part("relative ICS", reduced("the relative ICS ‖G−G'‖/‖G‖, layers 2..L"), ics, n=n[2])]
    return judge("A4", parts, a4_combine, how="contradicted iff both landscape parts are supported (reduced) and "
                 "relative ICS is not; depends iff all three are reduced, or the landscape parts disagree; "
                 "supported (no smoothing seen) iff neither landscape part is reduced and one is increased; else "
                 "inconclusive", measurement=measurement, value=beta, figure="landscape.png", unit="×")[0]


# -------------------------------------------------------------------------------------------- report
def _plot_stability(tables: dict, lrs: np.ndarray, threshold: float, path: Path) -> None:
    fig, (ax1, ax2) = plots.subplots(1, 2, figsize=(12, 4.8))
    for v, t in tables.items():
        low, high = np.array([stats.fraction_ci(row)[1:] for row in t["diverged"]]).T  # Wilson, per lr
        ax1.plot(lrs, t["divergence_rate"], "o-", color=COLORS[v], label=f"{LABELS[v]} ({len(t['edge'])} seeds)")
        ax1.fill_between(lrs, low, high, color=COLORS[v], alpha=0.2, lw=0)
        plots.seed_band(ax2, lrs, t["final_loss"].T, label=LABELS[v], color=COLORS[v], log_y=True)
        if np.isfinite(t["edge"]).any():
            ax2.axvline(np.nanmedian(t["edge"]), color=COLORS[v], ls=":", lw=1)
    ax2.axhline(threshold, color="gray", ls="--", lw=1, label=f"stability threshold {threshold:.3g}")
    ax1.set(xscale="log", xlabel="SGD learning rate", ylabel="fraction of seeds diverged\n(NaN/Inf loss)",
            ylim=(-0.03, 1.03), title="Divergence (SGD); band: 95% Wilson interval")
    ax2.set(xscale="log", xlabel="SGD learning rate", ylabel="final train loss (nats)\ndiverged runs omitted",
            title="Final train loss; dotted: median largest stable lr")
    (h1, l1), (h2, l2) = ax1.get_legend_handles_labels(), ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=3, fontsize=8)  # beside the data, not on it
    plots.save(fig, path)


def _plot_bands(path: Path, data: dict, x, panels: list, *, xlabel: str, ticks=None, log_y=True, title="") -> None:
    """One panel per (key, ylabel, title): median and IQR over seeds of data[variant][key], (seeds, len(x))."""
    fig, axes = plots.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.6), squeeze=False)
    for ax, (key, ylabel, panel_title) in zip(axes[0], panels):
        for v in VARIANTS:
            plots.seed_band(ax, x, data[v][key], label=LABELS[v], color=COLORS[v], log_y=log_y)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=panel_title, **({"xticks": x, "xticklabels": ticks} if ticks else {}))
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle(title, fontsize=10)
    plots.save(fig, path)


def stability_report(results: dict, info: dict, out_dir: Path) -> Verdict:
    """M12 from the final evaluation of every run (runs are lr-major); draws stability.png."""
    s, lrs = info["settings"], np.asarray(info["lr_grid"], np.float64)
    threshold = s["progress_fraction"] * math.log(info["classes"])
    tables = {v: stability_table(r.history["diverged"][:, -1].astype(bool).reshape(len(lrs), -1),
                                 r.history["train_loss"][:, -1].reshape(len(lrs), -1), lrs, threshold=threshold)
              for v, r in results.items()}
    bn, nobn = (np.where(np.isnan(tables[v]["edge"]), lrs[0] ** 2 / lrs[1], tables[v]["edge"]) for v in ("bn", "nobn"))
    ratio, poi = geometric_ratio_ci(bn, nobn), stats.probability_of_improvement(bn, nobn)  # none stable: below grid
    inside = np.mean(tables["nobn"]["edge"] < lrs[-1])  # NaN (no stable lr) is not inside
    _plot_stability(tables, lrs, threshold, out_dir / "stability.png")
    first = {v: "none" if t["first_divergence"] is None else f"{t['first_divergence']:.3g}" for v, t in tables.items()}
    return m12_verdict(ratio, inside, progress_fraction=s["progress_fraction"], n=len(bn), measurement=(
        f"BN / no-BN largest stable SGD lr, geometric mean over {len(bn)} paired seeds (grid {lrs[0]:.3g}…{lrs[-1]:.3g}, "
        f"{len(lrs)} lrs; P(BN edge higher) = {poi:.2f}; first lr with a NaN/Inf divergence: no BN {first['nobn']}, "
        f"BN {first['bn']}; BN edge at the grid top for {np.mean(bn >= lrs[-1]):.0%} of seeds)"))


def landscape_report(results: dict, info: dict, out_dir: Path) -> Verdict:
    """A4 from the runs at landscape_lr; draws landscape.png and ics.png."""
    lr, steps = info["settings"]["landscape_lr"], np.asarray(train.evaluation_steps(results["bn"].cfg)[:-1])
    at = {v: np.isclose(r.lrs, lr, rtol=1e-9, atol=0) for v, r in results.items()}  # the runs at landscape_lr
    land = {v: {k: np.asarray(m[at[v], :-1], float) for k, m in r.measures.items()} for v, r in results.items()}
    per_seed = {v: {m: np.nanmean(land[v][m], axis=1) for m in LANDSCAPE + ICS} for v in VARIANTS}  # (seeds[, layers])
    arms = {m: (per_seed["bn"][m], per_seed["nobn"][m]) for m in LANDSCAPE}  # (seeds,) each
    arms |= {m: (per_seed["bn"][m].mean(axis=1), per_seed["nobn"][m].mean(axis=1)) for m in ICS[1:]}
    ratios = {m: ratio_ci(*arm) for m, arm in arms.items()}
    seeds = {m: int(min(np.isfinite(a).sum(), np.isfinite(b).sum())) for m, (a, b) in arms.items()}  # the smaller arm
    layers = [f"L{i}" for i in range(2, land["bn"]["ics_rel"].shape[-1] + 1)] + ["out"]  # layer 1: no predecessor
    _plot_bands(out_dir / "landscape.png", land, steps, [
        ("loss_range", "max_η L − min_η L (nats)", "Loss range along −g"),
        ("grad_pred", "max_η ‖∇L(θ) − ∇L(θ − ηg)‖", "Gradient predictiveness"),
        ("beta", "max_η ‖Δ∇L‖ / ‖ηg‖", "Effective β-smoothness"),
        ("loss", "minibatch loss L(θ) (nats)", "Training loss at the measured points")], xlabel="training step")
    _plot_bands(out_dir / "ics.png", per_seed, np.arange(len(layers)), [
        ("ics_l2", "‖G − G′‖", "ℓ2 shift"), ("ics_rel", "‖G − G′‖ / ‖G‖", "relative shift"),
        ("ics_cos", "cos(G, G′)", "cosine")], xlabel="layer (its predecessors updated first)", ticks=layers,
        log_y=False, title="Internal covariate shift (Santurkar et al. 2018, Def. 2.1), mean over training: the "
                           "gradient of layer i before vs after layers < i take their SGD step")
    rel = {v: per_seed[v]["ics_rel"].mean(axis=0) for v in VARIANTS}  # (layers,)
    per_layer = ", ".join(f"{name} {r:.2f}" for name, r in zip(layers, rel["bn"] / rel["nobn"]))
    judged = ("loss_range", "beta", "ics_rel")  # a4_verdict's parts, in order
    return a4_verdict(*(ratios[m] for m in judged), n=tuple(seeds[m] for m in judged), measurement=(
        f"BN / no-BN effective β-smoothness (Santurkar et al. 2018), SGD lr {lr:g}, mean over training; loss range "
        f"{ratios['loss_range'].text()}, gradient predictiveness {ratios['grad_pred'].text()}, relative ICS "
        f"{ratios['ics_rel'].text()} (per layer: {per_layer}), ICS cosine {ratios['ics_cos'].text()}"))


def report(out_dir: Path) -> list[Verdict]:
    """Reads both sweeps, draws stability.png, landscape.png and ics.png; returns [M12, A4]."""
    out_dir = Path(out_dir)
    info, results = store.read_json(out_dir / "run.json"), {v: sweep.load(out_dir / v) for v in VARIANTS}
    return [stability_report(results, info, out_dir), landscape_report(results, info, out_dir)]
