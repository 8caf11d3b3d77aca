"""Mini-batch size (claim M9): does it smooth gradient noise, buy parallelism, and regularise?

Claim M9 (experiments/claims.toml): "mini-batches (32–512) smooth gradient noise, allow parallelism, regularise".
1. Noise (McCandlish et al. 2018): E‖g_B − g_N‖² over `noise_minibatches` B-subsets drawn without replacement, by
   the `GradientNoise` hook of one Adam sweep at step 0 ("init") and `pretrain_steps` ("trained"). Sampling theory:
   E = tr Σ·(1/B − 1/N)·N/(N − 1) ∝ 1/B_eff, B_eff = 1/(1/B − 1/N), so the per-seed log-log slope is −1.
2. Parallelism: examples/s of one run in the engine's compiled program (`sweep.train_chunk`: `throughput_examples`
   examples, then its evaluation), timed `throughput_repeats` times after a warm-up call; log-log slope vs B.
3. Regularisation (Keskar et al. 2017; Shallue et al. 2019): SGD for `epochs` epochs at each B, lr tuned per B on a
   fixed validation half of the test split; gap = train − held-out test acc, compared (paired seeds) between batch
   sizes that fit the training set about equally well (at equal epochs a large batch may just underfit).
noise.npz and throughput.npz are `store.cached` by their full settings; every sweep caches itself in its folder.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import backprop, plots, stats, store, sweep, train
from netalchemy import config as config_lib
from netalchemy.config import Config, ModelConfig, OptimConfig, SeedsConfig
from netalchemy.data import Dataset, load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, all_hold, holm, judge

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
    slope_tolerance: float = 0.15
    fit_tolerance: float = 0.05  # mean train acc this far below the best = underfit, left out


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


@partial(jax.jit, static_argnames=("cfg", "batch_size", "minibatches", "grad"))
def minibatch_gradient_noise(params, bn_state, x, y, key, *, cfg: ModelConfig, batch_size: int, minibatches: int,
                             grad: str = "autodiff") -> jax.Array:
    """E‖g_B − g_N‖² () of one net on x (N, features), y (N,): the mean over `minibatches` B-subsets drawn
    without replacement with `key`; g is the flat gradient (P,) of the mean cross-entropy in training mode."""
    flat = lambda xs, ys: ravel_pytree(backprop.gradient_fn(grad)(  # noqa: E731
        params, bn_state, xs, ys, cfg=cfg, key=jax.random.key(0))[0])[0]
    full = flat(x, y)

    def one(k):
        idx = jax.random.permutation(k, x.shape[0])[:batch_size]  # (B,)
        return jnp.sum(jnp.square(flat(x[idx], y[idx]) - full))

    chunk = max(1, min(minibatches, 2**16 // batch_size))  # minibatches evaluated at once
    return jnp.mean(jax.lax.map(one, jax.random.split(key, minibatches), batch_size=chunk))


@dataclass(frozen=True)
class GradientNoise:
    """Measurement hook: {"noise": (sizes,)} E‖g_B − g_N‖² of one run at each batch size below N;
    at step t the subsets of size B are drawn with fold_in(fold_in(data key, t), B)."""

    batch_sizes: tuple[int, ...]
    minibatches: int

    def __call__(self, state, streams, data, cfg):
        key, n = jax.random.fold_in(streams.data, state.step), data.x_train.shape[0]
        return {"noise": jnp.stack([minibatch_gradient_noise(
            state.params, state.bn_state, data.x_train, data.y_train, jax.random.fold_in(key, b), cfg=cfg.model,
            batch_size=b, minibatches=self.minibatches, grad=cfg.train.grad) for b in self.batch_sizes if b < n])}


def effective_batch_size(batch_size, n: int) -> np.ndarray:
    """B_eff = 1/(1/B − 1/N): E‖g_B − g_N‖² ∝ 1/B_eff exactly for sampling without replacement."""
    return 1.0 / (1.0 / np.asarray(batch_size, np.float64) - 1.0 / n)


def noise_slopes(batch_sizes, noise: np.ndarray, n: int) -> np.ndarray:
    """Per-seed slope of log E‖g_B − g_N‖² against log B_eff; `noise` is (seeds, batch sizes)."""
    return np.array([stats.slope_loglog(effective_batch_size(batch_sizes, n), row).slope for row in np.asarray(noise)])


def noise_sweep(s: Settings) -> tuple[Config, GradientNoise]:
    """The Adam sweep (batch 100) whose step 0 and last step are the "init" and "trained" points, and its hook."""
    return (schedule(s.base, 100, s.pretrain_steps, 1, "optim.name=adam", f"optim.lr={s.pretrain_lr}",
                     f"seeds.n={s.noise_seeds}"), GradientNoise(s.noise_batch_sizes, s.noise_minibatches))


def measure_noise(s: Settings, dataset: Dataset, out_dir: Path) -> dict[str, np.ndarray]:
    """E‖g_B − g_N‖² (points, seeds, batch sizes) at init and after pretraining; the sweep folder is named by
    the settings' key, so an edited setting trains a new sweep and an interrupted one resumes."""
    (cfg, hook), n = noise_sweep(s), len(dataset.y_train)
    folder = out_dir / f"noise-{store.settings_key([config_lib.to_dict(cfg), repr(hook)])[:12]}"
    r = sweep.run(cfg, out_dir=folder, dataset=dataset, progress=False, measure=hook)
    return {"noise": np.moveaxis(r.measures["noise"][:, [0, -1]], 1, 0), "seeds": r.seeds, "n_train": n,
            "batch_sizes": [b for b in hook.batch_sizes if b < n]}


def measure_throughput(s: Settings, dataset: Dataset) -> dict[str, np.ndarray]:
    """Examples/s (sizes, repeats) of one run in the engine's program, `sweep.train_chunk` over one interval of
    `throughput_examples // B` steps, per batch size B that fits; timed after a warm-up call, its donated states
    re-made (untimed) before every call."""
    sizes, rates = [b for b in s.throughput_batch_sizes if b <= len(dataset.y_train)], []
    mesh, axes, dtype = sweep.device_mesh(1), sweep.stream_axes(s.base), s.base.model.dtype
    streams = sweep.shard_runs(sweep.run_streams(s.base, np.array([s.base.seeds.start])), mesh, axes)
    lrs = sweep.shard_runs(jnp.full((1,), s.base.optim.lr, dtype), mesh)
    data = sweep.shard_runs(train.Data(*(jnp.asarray(a, t) for a, t in zip(
        (dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test), (dtype, jnp.int32) * 2))),
        mesh, (None,) * 4)  # replicated
    for b in sizes:
        cfg = schedule(s.base, b, max(1, s.throughput_examples // b), 1, "seeds.n=1")
        init = partial(sweep.init_states, streams, lrs, cfg=cfg, axes=axes, in_features=dataset.x_train.shape[1],
                       num_classes=dataset.num_classes)
        seconds = []
        for _ in range(s.throughput_repeats + 1):  # the first call compiles and warms up
            states = jax.block_until_ready(init())
            start = time.perf_counter()
            jax.block_until_ready(sweep.train_chunk(states, streams, data, lrs, cfg=cfg, axes=axes, intervals=1))
            seconds.append(time.perf_counter() - start)
        rates.append(cfg.train.steps * b / np.array(seconds[1:]))
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
                "any rise: larger batches put more examples through the hardware per second")
REGULARISE = Rule("the paired (same seed) difference gap(largest comparable B) − gap(smallest), gap = train − "
                  "test acc", 0.0, "above", "a larger gap with large batches is the regularising effect of small ones")
HOW = ("regularise compares batch sizes whose mean train acc is within {:g} of the best (others underfit), "
       "inconclusive if fewer than two; noise = both points hold; M9: noise, parallelism, regularise all supported "
       "→ supported, all contradicted → contradicted, supported and contradicted → depends, else inconclusive")


def m9_parts(noise_cis, throughput_ci, gap_difference_ci, *, tolerance: float) -> list[Part]:
    """The parts of M9: noise at each point (init, trained), parallelism, regularisation."""
    noise = Rule("the mean per-seed slope of log E‖g_B − g_N‖² vs log B_eff", (-1 - tolerance, -1 + tolerance),
                 "inside", f"−1 ± {tolerance:g}: the 1/B law of sampling without replacement, read as a power law",
                 unit="log-log slope")
    return [*(Part(f"noise {p}", noise, ci) for p, ci in zip(POINTS, noise_cis)),
            Part("parallelism", PARALLEL, throughput_ci), Part("regularise", REGULARISE, gap_difference_ci)]


def m9_combine(d: dict[str, str]) -> str:
    """Noise = both points hold (all_hold); M9 = noise, parallelism and regularise combined across."""
    return across([all_hold([v for k, v in d.items() if k.startswith("noise ")]), d["parallelism"], d["regularise"]])


def gap_results(s: Settings, out_dir: Path) -> dict:
    """Per gap batch size, at its lr tuned on validation: per-seed gap (sizes, seeds) and CIs of the gap and both
    accuracies; the paired differences gap(largest) − gap(smallest), over comparable and over all sizes."""
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
    pos = {b: i for i, b in enumerate(s.gap_batch_sizes)}
    diff = lambda sizes: stats.paired_bootstrap_ci(*(per_seed["gap"][pos[f(sizes)]] for f in (max, min)))  # noqa: E731
    return {"batch_sizes": s.gap_batch_sizes, "steps": [r.cfg.train.steps for r in runs], "comparable": fits,
            "tuned_lr": np.asarray(s.gap_lrs)[best], "diverged": div[range(len(runs)), best].sum(-1), **cis,
            "difference": diff(fits) if len(fits) >= 2 else stats.CI(np.nan, np.nan, np.nan),
            "difference_all_sizes": diff(s.gap_batch_sizes), "per_seed_gap": per_seed["gap"]}


def verdicts(s: Settings, a: dict) -> list[Verdict]:
    """M9 from its parts (`m9_parts`, Holm's correction), with the measurement in words."""
    (init, trained), g, tp = a["noise"]["slope"], a["gap"], a["throughput"]
    parts = m9_parts([init, trained], tp["slope"], g["difference"], tolerance=s.slope_tolerance)
    d = dict(zip((p.name for p in parts), holm(parts)))
    gaps = ", ".join(f"B={b} {e:.3f} (lr {lr:g}, test acc {t:.3f})"
                     for b, e, lr, t in zip(g["batch_sizes"], g["gap"][0], g["tuned_lr"], g["test_acc"][0]))
    noise = all_hold([d["noise init"], d["noise trained"]])
    text = (f"slope of log E‖g_B − g_N‖² vs log B_eff, mean over seeds: at init {init.text()}, after "
            f"{s.pretrain_steps} Adam steps {trained.text()} → noise {noise}; slope of examples/s vs B "
            f"{tp['slope'].text()} ({tp['device']}) → parallelism {d['parallelism']}; gap (train − test acc) after "
            f"{s.epochs} epochs, lr tuned on validation: {gaps}; comparable B {g['comparable']}: gap(largest) − "
            f"gap(smallest) {g['difference'].text()} (all B: {g['difference_all_sizes'].text()}) → regularise "
            f"{d['regularise']}")
    return [judge("M9", parts, m9_combine, how=HOW.format(s.fit_tolerance), measurement=text, value=trained,
                  figure="grad_noise.png", unit="log-log slope")[0]]


def figures(s: Settings, a: dict, out_dir: Path) -> None:
    """grad_noise.png (E‖g_B − g_N‖² vs B: seed bands, power law fitted in B_eff), throughput.png (examples/s vs B:
    median and min–max of repeats, fitted power law), gap.png (gap and accuracies vs B: mean, 95% CI, tuned lrs)."""
    noise, tp, g = a["noise"], a["throughput"], a["gap"]
    sizes, n = np.asarray(noise["batch_sizes"], np.float64), noise["n_train"]
    grid = np.geomspace(sizes[0], sizes[-1], 100)
    fig, ax = plots.subplots(figsize=(6.5, 4.5))
    for point, values, fit, slope, color in zip(POINTS, noise["per_seed"], noise["fit"], noise["slope"], ("C0", "C1")):
        plots.seed_band(ax, sizes, values, label=point, color=color)
        ax.plot(grid, np.exp(fit["intercept"]) * effective_batch_size(grid, n) ** fit["slope"], color=color, ls="--",
                lw=0.9, label=f"fit ∝ B_eff^{fit['slope']:.2f} (per-seed mean slope {slope.text(2)})")
    ax.set(xscale="log", yscale="log", ylabel="E‖g_B − g_N‖²  (squared gradient norm)",
           xlabel=f"batch size B (without replacement; N = {n}; B_eff = 1/(1/B − 1/N))")
    ax.set_title("M9: minibatch gradient noise around the full gradient (theory: slope −1 in B_eff)", fontsize=9)
    ax.legend(fontsize=7)
    plots.save(fig, out_dir / "grad_noise.png")
    b, rates, fit = tp["batch_sizes"], tp["examples_per_s"], tp["fit"]
    med = np.median(rates, axis=1)
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
                 f"underfit (red: train acc more than {s.fit_tolerance:g} below the best) = left out of the verdict",
                 fontsize=9)
    plots.save(fig, out_dir / "gap.png")


def report(out_dir: Path) -> list[Verdict]:
    """Reads what `run` wrote; writes analysis.json (a CI is [estimate, low, high]) and the figures."""
    out_dir = Path(out_dir)
    s = config_lib.from_dict(store.read_json(out_dir / "settings.json"), Settings)
    noise, tp = (store.read_npz(out_dir / f) for f in ("noise.npz", "throughput.npz"))
    n, sizes, rates = int(noise["n_train"]), noise["batch_sizes"], tp["examples_per_s"]  # rates: (sizes, repeats)
    fit = stats.slope_loglog(np.repeat(tp["batch_sizes"], rates.shape[1]), rates.ravel())
    a = {"noise": {"n_train": n, "batch_sizes": sizes, "per_seed": noise["noise"],  # (points, seeds, sizes)
                   "slope": [stats.bootstrap_ci(noise_slopes(sizes, v, n)) for v in noise["noise"]],
                   "fit": [stats.slope_loglog(effective_batch_size(sizes, n), v.mean(0))._asdict()
                           for v in noise["noise"]]},
         "throughput": {"batch_sizes": tp["batch_sizes"], "examples_per_s": rates, "device": str(tp["device"]),
                        "fit": fit._asdict(), "slope": stats.CI(fit.slope, fit.slope_low, fit.slope_high)},
         "gap": gap_results(s, out_dir)}
    store.write_json(out_dir / "analysis.json", a)
    figures(s, a, out_dir)
    return verdicts(s, a)
