"""Mini-batch size (claim M9): does it smooth gradient noise, buy parallelism, and regularise?

Claim M9 (experiments/claims.toml): "mini-batches (32–512) smooth gradient noise, allow parallelism, regularise".
1. Noise, a shown check, not judged: E‖g_B − g_N‖² = tr Σ·(1/B − 1/N)·N/(N − 1) ∝ 1/B_eff holds for any net by
   sampling theory (McCandlish et al. 2018); `measures.GradientNoise` at step 0 and after `pretrain_steps` Adam.
2. Parallelism: examples/s vs B of one run in the engine's compiled program (`measures.throughput`).
3. Regularisation, the ledger value (Keskar et al. 2017; Shallue et al. 2019): SGD for `epochs` epochs at each B, lr
   tuned per B on a validation half of the test split; gap = train − held-out test acc, paired by seed between batch
   sizes that fit the train set about equally well (a large batch may just underfit): the claim's open part, as
   sampling fixes the noise and hardware the throughput. noise.npz, throughput.npz: `store.cached` by full settings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import numpy as np

from netalchemy import measures, plots, stats, store, sweep
from netalchemy import config as config_lib
from netalchemy.config import Config, ModelConfig, OptimConfig, SeedsConfig
from netalchemy.data import Dataset, load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, judge

CLAIMS = ("M9",)
POINTS = ("init", "trained")


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: Config(optim=OptimConfig(name="sgd", lr=0.1), seeds=SeedsConfig(n=16)))
    noise_batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    noise_minibatches: int = 256
    noise_seeds: int = 16
    pretrain_steps: int = 500  # Adam steps (lr pretrain_lr, batch 100) to the "trained" point
    pretrain_lr: float = 1e-2
    throughput_batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 4000)
    throughput_examples: int = 131072
    throughput_repeats: int = 5
    gap_batch_sizes: tuple[int, ...] = (8, 32, 128, 512, 4000)  # 4000 = the whole MNIST-1D train set
    gap_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    epochs: int = 20
    evals: int = 5  # evaluations per gap run
    validation_size: int = 500  # test examples that tune the lr; the rest is the held-out test
    slope_tolerance: float = 0.15  # noise check: −1 ± this; far from the −0.5 of a 1/√B (wrongly normalised) hook
    fit_tolerance: float = 0.05  # train acc > 5 points below the best: underfit, its gap is not comparable


PROFILES = {
    "tiny": Settings(
        base=Config(model=ModelConfig(hidden=(32,)), optim=OptimConfig(name="sgd", lr=0.1), seeds=SeedsConfig(n=2)),
        noise_batch_sizes=(8, 64, 512), noise_minibatches=8, noise_seeds=2, pretrain_steps=20,
        throughput_batch_sizes=(8, 512), throughput_examples=2048, throughput_repeats=2,
        gap_batch_sizes=(50, 4000), gap_lrs=(0.1, 1.0), epochs=1, evals=1, validation_size=500),
    "quick": Settings(
        base=Config(optim=OptimConfig(name="sgd", lr=0.1), seeds=SeedsConfig(n=4)),
        noise_batch_sizes=(8, 32, 128, 512, 2048), noise_minibatches=32, noise_seeds=6, pretrain_steps=300,
        throughput_batch_sizes=(8, 32, 128, 512, 4000), throughput_examples=16384, throughput_repeats=2,
        gap_batch_sizes=(8, 32, 128, 512, 4000), gap_lrs=(0.1, 0.3, 1.0), epochs=10, evals=2),
    "full": Settings(),
}


def schedule(cfg: Config, batch_size: int, steps: int, evals: int = 1, *more: str) -> Config:
    """`cfg` at `batch_size` for `steps` steps, `evals` evaluations, one checkpoint chunk; `more` overrides."""
    return config_lib.override(cfg, [f"train.batch_size={batch_size}", f"train.steps={steps}",
                                     f"train.eval_every={steps // evals}", f"train.chunk_steps={steps}", *more])


def gap_config(s: Settings, batch_size: int, n: int) -> Config:
    """SGD at `batch_size` for `epochs` epochs' worth of examples (`evals` evaluations)."""
    return schedule(s.base, batch_size, s.evals * math.ceil(s.epochs * n / (batch_size * s.evals)), s.evals)


def noise_sweep(s: Settings) -> tuple[Config, measures.GradientNoise]:
    """The Adam sweep (batch 100) whose step 0 and last step are the "init" and "trained" points, and its hook."""
    return (schedule(s.base, 100, s.pretrain_steps, 1, "optim.name=adam", f"optim.lr={s.pretrain_lr}",
                     f"seeds.n={s.noise_seeds}"), measures.GradientNoise(s.noise_batch_sizes, s.noise_minibatches))


def measure_noise(s: Settings, dataset: Dataset, out_dir: Path) -> dict[str, np.ndarray]:
    """E‖g_B − g_N‖² (points, seeds, sizes) at init and after pretraining, in a sweep folder named by its settings."""
    (cfg, hook), n = noise_sweep(s), len(dataset.y_train)
    folder = out_dir / f"noise-{store.settings_key([config_lib.to_dict(cfg), repr(hook)])[:12]}"
    r = sweep.run(cfg, out_dir=folder, dataset=dataset, progress=False, measure=hook)
    return {"noise": np.moveaxis(r.measures["noise"][:, [0, -1]], 1, 0), "seeds": r.seeds, "n_train": n,
            "batch_sizes": [b for b in hook.batch_sizes if b < n]}


def measure_throughput(s: Settings, dataset: Dataset) -> dict[str, np.ndarray]:
    """Examples/s (sizes, repeats) of one run (`measures.throughput`) per batch size B that fits the train set."""
    sizes = [b for b in s.throughput_batch_sizes if b <= len(dataset.y_train)]
    rates = [measures.throughput(schedule(s.base, b, max(1, s.throughput_examples // b), 1, "seeds.n=1"), dataset,
                                 repeats=s.throughput_repeats) for b in sizes]
    return {"batch_sizes": sizes, "examples_per_s": np.asarray(rates, np.float64), "device": str(jax.devices()[0])}


def split_test(n_test: int, validation_size: int) -> list[np.ndarray]:
    """[validation indices, held-out test indices]: a fixed permutation of the test split, cut in two."""
    return np.split(np.random.default_rng(0).permutation(n_test), [validation_size])


def comparable_batch_sizes(batch_sizes, train_acc, tolerance: float) -> list:
    """The batch sizes whose mean final train accuracy is within `tolerance` of the best one."""
    acc = np.asarray(train_acc, np.float64)
    return [b for b, v in zip(batch_sizes, acc) if np.isfinite(v) and v >= np.nanmax(acc) - tolerance]


def tune_by_validation(val_acc: np.ndarray, diverged: np.ndarray, chance: float) -> int:
    """Index of the lr with the highest mean validation accuracy; (lrs, seeds), diverged = chance."""
    return int(np.argmax(np.where(diverged, chance, val_acc).mean(axis=1)))


def run(s: Settings, out_dir: Path) -> None:
    """Gradient noise, throughput (both cached by their settings) and the per-batch-size lr sweeps."""
    out_dir, data, device = Path(out_dir), load(s.base.data), (str(jax.devices()), jax.default_backend())
    store.cached("noise.npz", [config_lib.to_dict(noise_sweep(s)[0]), repr(noise_sweep(s)[1])],
                 partial(measure_noise, s, data, out_dir), folder=out_dir)
    store.cached("throughput.npz", [config_lib.to_dict(s.base), s.throughput_batch_sizes, s.throughput_examples,
                                    s.throughput_repeats, "sweep.train_chunk", device],
                 partial(measure_throughput, s, data), folder=out_dir)
    for b in s.gap_batch_sizes:
        sweep.run(gap_config(s, b, len(data.y_train)), lrs=s.gap_lrs, out_dir=out_dir / f"gap-B{b}", dataset=data,
                  progress=False)
    store.write_json(out_dir / "settings.json", config_lib.to_dict(s))


PARALLEL = Rule("the log-log slope of examples/s vs B (t interval)", 0.0, "above",
                "0: flat; a rise: larger batches push more examples/s through the hardware", unit="log-log slope")
REGULARISE = Rule("the paired (same seed) difference gap(largest comparable B) − gap(smallest), gap = train − test acc",
                  0.0, "above", "0: no effect; above: small batches' smaller gap, a regularising effect", unit="acc")
HOW = ("noise is not judged (E‖g_B − g_N‖² ∝ 1/B_eff by sampling theory; its slope is shown as a check); regularise "
       "compares batch sizes whose mean train acc is within {:g} of the best (others underfit), inconclusive if fewer "
       "than two; M9: both parts supported → supported, both contradicted → contradicted, one each → depends")


def noise_check(tolerance: float) -> Rule:
    """The sampling identity as a check of the measurement: the per-seed slope in B_eff is −1 ± `tolerance`."""
    return Rule("the mean per-seed slope of log E‖g_B − g_N‖² vs log B_eff", (-1 - tolerance, -1 + tolerance), "inside",
                f"−1 ± {tolerance:g}: the 1/B_eff law of sampling without replacement (true by construction)")


def m9_verdict(throughput_ci: stats.CI, gap_ci: stats.CI, *, fit_tolerance: float, n: int | None = None,
               measurement: str = "") -> Verdict:
    """M9 = parallelism and regularise (over `n` paired seeds) combined across (Holm); the ledger value: regularise."""
    parts = [Part("parallelism", PARALLEL, throughput_ci), Part("regularise", REGULARISE, gap_ci, n=n)]
    return judge("M9", parts, lambda d: across(list(d.values())), how=HOW.format(fit_tolerance),
                 measurement=measurement, value=gap_ci, figure="gap.png", unit="acc")[0]


def gap_results(s: Settings, out_dir: Path) -> dict:
    """Per gap batch size, at its lr tuned on validation: per-seed gap (sizes, seeds) and CIs of the gap and both
    accuracies; the paired differences gap(largest) − gap(smallest), over comparable B (`pairs` seeds) and all B."""
    data, runs = load(s.base.data), [sweep.load(out_dir / f"gap-B{b}") for b in s.gap_batch_sizes]
    shape, (val, test) = (len(runs), len(s.gap_lrs), -1), split_test(len(data.y_test), s.validation_size)
    preds = np.stack([r.test_predictions for r in runs]).reshape(*shape, len(data.y_test))  # (sizes, lrs, seeds, n)
    div = np.stack([r.history["diverged"][:, -1] for r in runs]).reshape(shape).astype(bool)
    acc = {k: (preds[..., i] == data.y_test[i]).mean(-1) for k, i in (("val", val), ("test", test))} | {
           "train": np.stack([r.history["train_acc"][:, -1] for r in runs]).reshape(shape)}  # (sizes, lrs, seeds)
    best = np.array([tune_by_validation(v, d, 1 / data.num_classes) for v, d in zip(acc["val"], div)])
    at = {k: np.where(div[range(len(runs)), best], np.nan, v[range(len(runs)), best]) for k, v in acc.items()}
    per_seed = {"gap": at["train"] - at["test"], "train_acc": at["train"], "test_acc": at["test"]}  # (sizes, seeds)
    cis = {k: np.array([stats.bootstrap_ci(row) for row in v]).T for k, v in per_seed.items()}  # (3, sizes)
    fits = comparable_batch_sizes(s.gap_batch_sizes, cis["train_acc"][0], s.fit_tolerance)
    gap, pos = per_seed["gap"], s.gap_batch_sizes.index
    diff = lambda sizes: stats.paired_bootstrap_ci(gap[pos(max(sizes))], gap[pos(min(sizes))])  # noqa: E731
    pairs = lambda b: int(np.isfinite(gap[pos(max(b))] - gap[pos(min(b))]).sum()) if len(b) >= 2 else 0  # noqa: E731
    return {"batch_sizes": s.gap_batch_sizes, "steps": [r.cfg.train.steps for r in runs], "comparable": fits,
            "tuned_lr": np.asarray(s.gap_lrs)[best], "diverged": div[range(len(runs)), best].sum(-1), **cis,
            "difference": diff(fits) if len(fits) >= 2 else stats.CI(np.nan, np.nan, np.nan), "pairs": pairs(fits),
            "difference_all_sizes": diff(s.gap_batch_sizes), "per_seed_gap": per_seed["gap"]}


def verdicts(s: Settings, a: dict) -> list[Verdict]:
    """[M9] (`m9_verdict`), with the noise check and every number in words."""
    g, tp, check = a["gap"], a["throughput"], noise_check(s.slope_tolerance)
    words = {"supported": "holds", "contradicted": "fails", "inconclusive": "unclear"}
    noise = "; ".join(f"{p} {ci.text()} → {words[check.decide(ci)]}" for p, ci in zip(
        ("init", f"after {s.pretrain_steps} Adam steps"), a["noise"]["slope"]))
    gaps = ", ".join(f"B={b} {e:.3f} (lr {lr:g}, test acc {t:.3f})"
                     for b, e, lr, t in zip(g["batch_sizes"], g["gap"][0], g["tuned_lr"], g["test_acc"][0]))
    text = (f"gap (train − test acc) after {s.epochs} epochs, lr tuned on validation: {gaps}; comparable B "
            f"{g['comparable']}: gap(largest) − gap(smallest) {g['difference'].text()} (all B: "
            f"{g['difference_all_sizes'].text()}); slope of examples/s vs B {tp['slope'].text()} ({tp['device']}); "
            f"check, slope of log E‖g_B − g_N‖² vs log B_eff (sampling theory: −1 ± {s.slope_tolerance:g}): {noise}")
    return [m9_verdict(tp["slope"], g["difference"], fit_tolerance=s.fit_tolerance, n=g["pairs"], measurement=text)]


def figures(s: Settings, a: dict, out_dir: Path) -> None:
    """grad_noise.png (the check: E‖g_B − g_N‖² vs B), throughput.png (examples/s vs B), gap.png (the ledger value)."""
    noise, tp, g = a["noise"], a["throughput"], a["gap"]
    sizes, n = np.asarray(noise["batch_sizes"], np.float64), noise["n_train"]
    grid, b_eff = np.geomspace(sizes[0], sizes[-1], 100), partial(measures.effective_batch_size, n=n)
    fig, ax = plots.subplots(figsize=(6.5, 4.5))
    for point, values, slope, color in zip(POINTS, noise["per_seed"], noise["slope"], ("C0", "C1")):
        plots.seed_band(ax, sizes, values, label=f"{point} (per-seed slope in B_eff {slope.text(2)})", color=color)
        ax.plot(grid, np.median(values[:, 0]) * (b_eff(sizes[0]) / b_eff(grid)), color=color, ls="--", lw=0.9,
                label=f"{point}: sampling theory ∝ 1/B_eff through B = {sizes[0]:g}")
    ax.set(xscale="log", yscale="log", ylabel="E‖g_B − g_N‖²  (squared gradient norm)",
           xlabel=f"batch size B (without replacement; N = {n}; B_eff = 1/(1/B − 1/N))")
    ax.set_title("M9 check: minibatch gradient noise around the full gradient (theory: slope −1 in B_eff)", fontsize=9)
    ax.legend(fontsize=7)
    plots.save(fig, out_dir / "grad_noise.png")
    b, rates, fit, med = tp["batch_sizes"], tp["examples_per_s"], tp["fit"], np.median(tp["examples_per_s"], axis=1)
    fig, ax = plots.subplots(figsize=(6.5, 4.5))
    ax.errorbar(b, med, yerr=[med - rates.min(1), rates.max(1) - med], marker="o", capsize=3,
                label="median (bars: min–max of repeats)")
    ax.plot(b, np.exp(fit["intercept"]) * b ** fit["slope"], ls="--", color="gray",
            label=f"log-log fit, slope {fit['slope']:.2f}")
    ax.set(xscale="log", yscale="log", xlabel="batch size B", ylabel="training throughput (examples / s, one run)")
    ax.set_title(f"M9: throughput of the engine's program vs batch size on {tp['device']}", fontsize=9)
    ax.legend(fontsize=7)
    plots.save(fig, out_dir / "throughput.png")
    b = np.asarray(g["batch_sizes"], np.float64)
    fig, axes = plots.subplots(1, 2, figsize=(12, 4.5))
    for ax, keys, label in zip(axes, (("gap",), ("train_acc", "test_acc")), ("train − held-out test acc", "accuracy")):
        for (est, low, high), key in ((g[k], k) for k in keys):
            ax.errorbar(b, est, yerr=np.clip([est - low, high - est], 0, None), marker="o", capsize=3,
                        label=f"{key.replace('_', ' ')} (mean, 95% CI)")
        ax.set(xscale="log", xlabel="batch size B", ylabel=label)
        ax.legend(fontsize=7)
    for i, (x, y, lr) in enumerate(zip(b, g["gap"][0], g["tuned_lr"])):
        right, fits = i >= len(b) / 2, g["batch_sizes"][i] in g["comparable"]  # notes point inwards
        axes[0].annotate(f"lr {lr:g}" + ("" if fits else ", underfit"), (x, y), fontsize=7, color="k" if fits else "r",
                         textcoords="offset points", xytext=(-4 if right else 4, 4), ha="right" if right else "left")
    fig.suptitle(f"M9: SGD, {s.epochs} epochs at every B, lr tuned per B on a validation half of the test split\n"
                 f"underfit (red: train acc > {s.fit_tolerance:g} below the best): left out of the verdict", fontsize=9)
    plots.save(fig, out_dir / "gap.png")


def report(out_dir: Path) -> list[Verdict]:
    """Reads what `run` wrote; writes analysis.json (a CI is [estimate, low, high]) and the figures."""
    out_dir = Path(out_dir)
    s = config_lib.from_dict(store.read_json(out_dir / "settings.json"), Settings)
    noise, tp = (store.read_npz(out_dir / f) for f in ("noise.npz", "throughput.npz"))
    n, sizes, rates = int(noise["n_train"]), noise["batch_sizes"], tp["examples_per_s"]  # rates: (sizes, repeats)
    fit = stats.slope_loglog(np.repeat(tp["batch_sizes"], rates.shape[1]), rates.ravel())
    a = {"noise": {"n_train": n, "batch_sizes": sizes, "per_seed": noise["noise"],  # (points, seeds, sizes)
                   "slope": [stats.bootstrap_ci(measures.noise_slopes(sizes, v, n)) for v in noise["noise"]]},
         "throughput": {"batch_sizes": tp["batch_sizes"], "examples_per_s": rates, "device": str(tp["device"]),
                        "fit": fit._asdict(), "slope": stats.CI(fit.slope, fit.slope_low, fit.slope_high)},
         "gap": gap_results(s, out_dir)}
    store.write_json(out_dir / "analysis.json", a)
    figures(s, a, out_dir)
    return verdicts(s, a)
