"""Mini-batch size: does it smooth gradient noise, buy parallelism, and regularise?

Claim M9 (experiments/claims.toml): "mini-batches (32–512) smooth gradient noise, allow
parallelism, regularise". Three measurements, one per part:

1. **Gradient noise.** At fixed params — at initialisation and after `pretrain_steps` of
   Adam (a partly trained point) — E‖g_B − g_N‖², the squared distance between the gradient
   of a random minibatch of B examples (drawn without replacement) and the full-batch
   gradient, averaged over `noise_minibatches` minibatches (vmapped), per seed. Sampling
   theory says E‖g_B − g_N‖² = tr Σ · (1/B − 1/N) · N/(N − 1), with Σ the per-example gradient
   covariance: exactly ∝ 1/B_eff with the effective batch size B_eff = 1/(1/B − 1/N). The
   slope of log E against log B_eff is fitted per seed (`stats.slope_loglog`) and its mean
   over seeds gets a bootstrap CI. The full batch (B = N) has no noise by definition.
   See McCandlish et al. (2018) "An empirical model of large-batch training" (gradient noise
   scale).
2. **Throughput.** Training examples per second of one run at each B: a compiled scan of
   training steps (same step function as every sweep) processing `throughput_examples`
   examples, timed `throughput_repeats` times after a warm-up call (compilation excluded);
   medians reported. The fitted log-log slope of examples/s against B (all repeats) gets a
   regression CI. Timings depend on the machine and on its load: the device is recorded.
3. **Generalization gap.** Plain SGD at each B for the same number of epochs (examples seen =
   steps × B ≈ epochs × N), the lr re-tuned per B over `gap_lrs` (one sweep per B, lrs × seeds
   vmapped). The test split is halved once (fixed permutation): the lr with the highest mean
   accuracy on the first half (validation) is the tuned lr; the gap is final train accuracy
   − accuracy on the second half (held-out test), per seed, with bootstrap CIs. Note the
   known confound at equal epochs: large batches take far fewer steps and may simply underfit
   (small gap, low accuracy) — the figure shows both accuracies. See Keskar et al. (2017)
   "On large-batch training … sharp minima"; Shallue et al. (2019) "Measuring the effects of
   data parallelism on neural network training"; Masters & Luschi (2018).

Verdict rules (rule objects below, unit-tested on synthetic numbers; their text is generated):
  noise       supported iff at every point (init, trained) the 95% CI of the mean per-seed
              slope of log E vs log B_eff lies inside [−1 − tol, −1 + tol]; contradicted iff
              at some point it lies wholly outside; else inconclusive (`noise_rule`).
  parallelism supported iff the 95% CI of the log-log slope of examples/s vs B is above 0
              (throughput rises with B); contradicted iff below 0 (`PARALLEL`).
  regularise  only batch sizes whose nets fit the training set about equally well are
              compared: those with mean final train accuracy within `fit_tolerance` of the best
              (`comparable_batch_sizes`; at equal epochs large batches may just underfit, which
              shrinks the gap for a trivial reason). Among them, supported iff the 95% CI of the
              paired (same seed) difference gap(largest B) − gap(smallest B) is above 0 (small
              batches generalize with a smaller gap); contradicted iff below 0; inconclusive if
              fewer than two sizes remain. The raw smallest-vs-largest difference is reported too.
  M9 = `m9_combine` of the parts after Holm's correction (`verdicts.judge`): all supported →
  supported, all contradicted → contradicted, a mix of supported and contradicted → depends,
  otherwise inconclusive.
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

from netalchemy import backprop, mlp, plots, stats, store, sweep, train
from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy.config import RANDOMNESS_STREAMS, Config, ModelConfig, OptimConfig, SeedsConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, all_hold, holm, judge

CLAIMS = ("M9",)
POINTS = ("init", "trained")


@dataclass(frozen=True)
class Settings:
    # The net, the data and the optimizer of the generalization-gap sweeps (lr comes from gap_lrs).
    base: Config = field(default_factory=lambda: Config(
        optim=OptimConfig(name="sgd", lr=0.1), seeds=SeedsConfig(n=16)))
    # (1) gradient noise
    noise_batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 2048)
    noise_minibatches: int = 256
    noise_seeds: int = 16
    pretrain_steps: int = 500  # Adam (lr pretrain_lr, batch 100) steps to the "trained" point
    pretrain_lr: float = 1e-2
    # (2) throughput
    throughput_batch_sizes: tuple[int, ...] = (8, 16, 32, 64, 128, 256, 512, 1024, 4000)
    throughput_examples: int = 131072
    throughput_repeats: int = 5
    # (3) generalization gap
    gap_batch_sizes: tuple[int, ...] = (8, 32, 128, 512, 4000)  # 4000 = the whole MNIST-1D train set
    gap_lrs: tuple[float, ...] = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
    epochs: int = 20
    evals: int = 5  # evaluations per run
    validation_size: int = 500  # taken from the test split to tune the lr; the rest is the held-out test
    # verdict thresholds
    slope_tolerance: float = 0.15
    fit_tolerance: float = 0.05  # batch sizes whose mean train acc is this far below the best are "underfit"

    def __post_init__(self) -> None:
        ok = config_lib.check
        ok(min(self.noise_batch_sizes) >= 1 and len(self.noise_batch_sizes) >= 3,
           "noise_batch_sizes: need at least three sizes >= 1")
        ok(len(self.throughput_batch_sizes) >= 2, "throughput_batch_sizes: need at least two sizes")
        ok(len(self.gap_batch_sizes) >= 2, "gap_batch_sizes: need at least two sizes")
        ok(self.epochs >= 1 and self.evals >= 1, "epochs and evals must be >= 1")
        ok(self.noise_minibatches >= 2 and self.noise_seeds >= 1, "noise_minibatches >= 2, noise_seeds >= 1")


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


# ----------------------------------------------------------------------------- (1) gradient noise


def flat_grad(params, bn_state, x, y, *, cfg: ModelConfig) -> jax.Array:
    """The minibatch gradient of the mean cross-entropy as one flat vector (training mode)."""
    grads, _ = backprop.autodiff_grad(params, bn_state, x, y, cfg=cfg, key=jax.random.key(0))
    return ravel_pytree(grads)[0]


@partial(jax.jit, static_argnames=("cfg", "batch_size", "minibatches"))
def minibatch_gradient_noise(params, bn_state, x, y, key, *, cfg: ModelConfig, batch_size: int,
                             minibatches: int) -> jax.Array:
    """E‖g_B − g_N‖² for one net: mean over `minibatches` random B-subsets drawn without replacement.

    Args:
      params, bn_state: one net (no leading seed axis).
      x, y: the whole training set (N, features), (N,).
      key: draws the minibatches.
    Returns:
      () the mean squared distance between minibatch and full-batch gradients.
    """
    n = x.shape[0]
    full = flat_grad(params, bn_state, x, y, cfg=cfg)  # (P,)

    def one(k):
        idx = jax.random.permutation(k, n)[:batch_size]  # (B,) without replacement
        return jnp.sum(jnp.square(flat_grad(params, bn_state, x[idx], y[idx], cfg=cfg) - full))

    keys = jax.random.split(key, minibatches)
    chunk = max(1, min(minibatches, 2**16 // batch_size))  # vmap `chunk` minibatches at a time
    return jnp.mean(jax.lax.map(one, keys, batch_size=chunk))


def effective_batch_size(batch_size, n: int) -> np.ndarray:
    """B_eff = 1/(1/B − 1/N): E‖g_B − g_N‖² ∝ 1/B_eff exactly for sampling without replacement."""
    b = np.asarray(batch_size, np.float64)
    return 1.0 / (1.0 / b - 1.0 / n)


def noise_slopes(batch_sizes, noise: np.ndarray, n: int) -> np.ndarray:
    """Per-seed slope of log E‖g_B − g_N‖² against log B_eff; `noise` is (seeds, batch sizes)."""
    x = effective_batch_size(batch_sizes, n)
    return np.array([stats.slope_loglog(x, row).slope for row in np.asarray(noise)])


def pretrain_config(s: Settings) -> Config:
    """The Adam run that takes each noise seed to its "trained" point."""
    return config_lib.override(s.base, [
        "optim.name=adam", f"optim.lr={s.pretrain_lr}", "train.batch_size=100", f"train.steps={s.pretrain_steps}",
        f"train.eval_every={s.pretrain_steps}", f"train.chunk_steps={s.pretrain_steps}", f"seeds.n={s.noise_seeds}"])


def noise_settings(s: Settings) -> dict:
    """Everything noise.npz depends on (its `store.cached` key)."""
    return {"pretrain": config_lib.to_dict(pretrain_config(s)), "batch_sizes": list(s.noise_batch_sizes),
            "minibatches": s.noise_minibatches}


def measure_noise(s: Settings, dataset: data_lib.Dataset, out_dir: Path) -> dict[str, np.ndarray]:
    """E‖g_B − g_N‖² (points, seeds, batch sizes) at init and after Adam pretraining."""
    cfg = s.base
    n = dataset.x_train.shape[0]
    sizes = [b for b in s.noise_batch_sizes if b < n]
    trained = sweep.run(pretrain_config(s), out_dir=out_dir / "pretrain", dataset=dataset, progress=False)
    seeds = np.asarray(trained.seeds)
    init_keys = jax.vmap(lambda sd: train.stream_key(sd, "init"))(jnp.asarray(seeds))
    at_init = jax.vmap(lambda k: mlp.init(k, cfg.model, in_features=dataset.x_train.shape[1],
                                          num_classes=dataset.num_classes))(init_keys)
    nets = {"init": at_init, "trained": (trained.final.params, trained.final.bn_state)}
    x = jnp.asarray(dataset.x_train, cfg.model.dtype)
    y = jnp.asarray(dataset.y_train, jnp.int32)
    out = np.zeros((len(POINTS), len(seeds), len(sizes)))
    for p, point in enumerate(POINTS):
        params, bn_state = nets[point]
        for i in range(len(seeds)):
            net = jax.tree.map(lambda a: jnp.asarray(a[i]), (params, bn_state))
            for j, b in enumerate(sizes):
                key = jax.random.fold_in(jax.random.key(int(seeds[i])), 1000 * p + b)
                out[p, i, j] = float(minibatch_gradient_noise(*net, x, y, key, cfg=cfg.model, batch_size=b,
                                                              minibatches=s.noise_minibatches))
    return {"noise": out, "batch_sizes": np.asarray(sizes), "seeds": seeds, "n_train": np.asarray(n)}


# ----------------------------------------------------------------------------- (2) throughput


def training_throughput(cfg: Config, dataset: data_lib.Dataset, *, examples: int, repeats: int) -> np.ndarray:
    """Examples per second of one training run at `cfg.train.batch_size`: `repeats` timings of a
    compiled scan of `examples // batch` steps, after a warm-up call (compilation excluded)."""
    b = cfg.train.batch_size
    steps = max(1, examples // b)
    dtype = cfg.model.dtype
    data = train.Data(jnp.asarray(dataset.x_train, dtype), jnp.asarray(dataset.y_train, jnp.int32),
                      jnp.asarray(dataset.x_test, dtype), jnp.asarray(dataset.y_test, jnp.int32))
    streams = train.Streams(*(train.stream_key(0, s) for s in RANDOMNESS_STREAMS))
    lr = jnp.asarray(cfg.optim.lr, dtype)
    state = train.init_state(streams, lr, cfg=cfg, in_features=dataset.x_train.shape[1],
                             num_classes=dataset.num_classes)

    @jax.jit
    def run_steps(state, streams, data, lr):
        body = lambda st, _: (train.train_step(st, streams, data, lr, cfg=cfg)[0], None)  # noqa: E731
        return jax.lax.scan(body, state, None, length=steps)[0]

    jax.block_until_ready(run_steps(state, streams, data, lr))  # compile and warm up
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(run_steps(state, streams, data, lr))
        seconds.append(time.perf_counter() - start)
    return steps * b / np.asarray(seconds)


def _device() -> dict:
    return {"device": str(jax.devices()[0]), "backend": jax.default_backend(), "device_count": jax.device_count()}


def throughput_settings(s: Settings) -> dict:
    """Everything throughput.npz depends on, the device included (its `store.cached` key)."""
    return {"config": config_lib.to_dict(s.base), "batch_sizes": list(s.throughput_batch_sizes),
            "examples": s.throughput_examples, "repeats": s.throughput_repeats, **_device()}


def measure_throughput(s: Settings, dataset: data_lib.Dataset) -> dict[str, np.ndarray]:
    """Examples/s (batch sizes, repeats) at each throughput batch size that fits the training set."""
    sizes = [b for b in s.throughput_batch_sizes if b <= dataset.x_train.shape[0]]
    rates = [training_throughput(config_lib.override(s.base, [f"train.batch_size={b}"]), dataset,
                                 examples=s.throughput_examples, repeats=s.throughput_repeats) for b in sizes]
    return {"batch_sizes": np.asarray(sizes), "examples_per_s": np.asarray(rates, np.float64),
            **{k: np.asarray(v) for k, v in _device().items()}}


# ----------------------------------------------------------------------------- (3) generalization gap


def gap_config(s: Settings, batch_size: int, n: int) -> Config:
    """SGD at batch `batch_size` for `epochs` epochs' worth of examples, `evals` evaluations."""
    steps = s.evals * math.ceil(s.epochs * n / (batch_size * s.evals))
    every = steps // s.evals
    return config_lib.override(s.base, [f"train.batch_size={batch_size}", f"train.steps={steps}",
                                        f"train.eval_every={every}", f"train.chunk_steps={steps}"])


def split_test(n_test: int, validation_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(validation indices, held-out test indices): a fixed permutation of the test split."""
    perm = np.random.default_rng(0).permutation(n_test)
    return np.sort(perm[:validation_size]), np.sort(perm[validation_size:])


def comparable_batch_sizes(batch_sizes, train_acc, tolerance: float) -> list:
    """The batch sizes whose mean final train accuracy is within `tolerance` of the best one.

    A generalization gap says something about regularisation only between nets that fit the
    training set about equally well: at equal epochs a large batch takes few steps and can
    simply underfit (then both accuracies are low and the gap is small for a trivial reason).
    """
    acc = np.asarray(train_acc, np.float64)
    best = np.nanmax(acc)
    return [b for b, v in zip(batch_sizes, acc) if np.isfinite(v) and v >= best - tolerance]


def tune_by_validation(val_acc: np.ndarray, diverged: np.ndarray, chance: float) -> int:
    """Index of the lr with the highest mean validation accuracy; (lrs, seeds), diverged = chance."""
    return int(np.argmax(np.where(diverged, chance, val_acc).mean(axis=1)))


# ----------------------------------------------------------------------------- run


def run(s: Settings, out_dir: Path) -> None:
    """Gradient noise, throughput and the per-batch-size lr sweeps; every part resumable.

    noise.npz and throughput.npz are `store.cached` values keyed by `noise_settings` and
    `throughput_settings`: an edited setting recomputes them, an unchanged rerun reuses them.
    """
    out_dir = Path(out_dir)
    dataset = data_lib.load(s.base.data)
    n = dataset.x_train.shape[0]
    store.cached("noise.npz", noise_settings(s), partial(measure_noise, s, dataset, out_dir), folder=out_dir)
    store.cached("throughput.npz", throughput_settings(s), partial(measure_throughput, s, dataset), folder=out_dir)
    for b in s.gap_batch_sizes:
        sweep.run(gap_config(s, b, n), lrs=s.gap_lrs, out_dir=out_dir / f"gap-B{b}", dataset=dataset, progress=False)
    val, test = split_test(len(dataset.y_test), s.validation_size)
    store.write_npz(out_dir / "split.npz", {"validation": val, "test": test, "y_test": dataset.y_test})
    store.write_json(out_dir / "settings.json", config_lib.to_dict(s))


# ----------------------------------------------------------------------------- verdict rules


def noise_rule(tolerance: float) -> Rule:
    """Noise ∝ 1/B_eff: the mean per-seed log-log slope inside [−1 − tol, −1 + tol]."""
    return Rule("the mean per-seed slope of log E‖g_B − g_N‖² vs log B_eff", (-1 - tolerance, -1 + tolerance),
                "inside", f"−1 ± {tolerance:g}: the 1/B law of sampling without replacement, read as a power law",
                unit="log-log slope")


PARALLEL = Rule("the log-log slope of examples/s vs B (t interval)", 0.0, "above",
                "any rise: larger batches put more examples through the hardware per second")
REGULARISE = Rule("the paired (same seed) difference gap(largest comparable B) − gap(smallest), gap = train − "
                  "test acc", 0.0, "above", "a larger gap with large batches is the regularising effect of small ones")


def m9_parts(noise_cis, throughput_ci, gap_difference_ci, *, tolerance: float) -> list[Part]:
    """The parts of M9: noise at each point (init, trained), parallelism, regularisation."""
    rule = noise_rule(tolerance)
    return [*(Part(f"noise {p}", rule, ci) for p, ci in zip(POINTS, noise_cis)),
            Part("parallelism", PARALLEL, throughput_ci), Part("regularise", REGULARISE, gap_difference_ci)]


def m9_combine(d: dict[str, str]) -> str:
    """Noise = both points hold (all_hold); M9 = noise, parallelism and regularise combined across."""
    noise = all_hold([v for k, v in d.items() if k.startswith("noise ")])
    return across([noise, d["parallelism"], d["regularise"]])


# ----------------------------------------------------------------------------- analysis and report


def _ci(values) -> dict:
    ci = stats.bootstrap_ci(values)
    return {"estimate": float(ci.estimate), "low": float(ci.low), "high": float(ci.high)}


def _paired_ci(a, b) -> dict:
    return stats.paired_bootstrap_ci(a, b)._asdict()


def analyse(s: Settings, out_dir: Path) -> dict:
    """Every number the report needs, read back from the files `run` wrote (JSON-able)."""
    noise = store.read_npz(out_dir / "noise.npz")
    n = int(noise["n_train"])
    sizes = noise["batch_sizes"]
    a: dict = {"n_train": n, "noise": {"batch_sizes": sizes.tolist(),
                                       "effective_batch_sizes": effective_batch_size(sizes, n).tolist()}}
    for p, point in enumerate(POINTS):
        values = noise["noise"][p]  # (seeds, sizes)
        slopes = noise_slopes(sizes, values, n)
        raw = [stats.slope_loglog(sizes, row).slope for row in values]
        pooled = stats.slope_loglog(effective_batch_size(sizes, n), values.mean(axis=0))
        a["noise"][point] = {"slope": _ci(slopes), "slope_vs_B": _ci(raw), "pooled_fit": pooled.as_dict(),
                             "mean_by_batch": values.mean(axis=0).tolist(), "per_seed": values.tolist()}

    tp = store.read_npz(out_dir / "throughput.npz")
    sizes_tp, rates = tp["batch_sizes"], tp["examples_per_s"]  # (sizes,), (sizes, repeats)
    fit = stats.slope_loglog(np.repeat(sizes_tp, rates.shape[1]), rates.ravel())
    medians = np.median(rates, axis=1).tolist()
    a["throughput"] = {"batch_sizes": sizes_tp.tolist(), "median_examples_per_s": medians,
                       "all": rates.tolist(), "fit": fit.as_dict(),
                       "ratio_largest_to_smallest": medians[-1] / medians[0], "device": str(tp["device"])}

    split = store.read_npz(out_dir / "split.npz")
    y_val, y_test = split["y_test"][split["validation"]], split["y_test"][split["test"]]
    rows, gaps = [], {}
    for b in s.gap_batch_sizes:
        r = sweep.load(out_dir / f"gap-B{b}")
        n_lrs = len(s.gap_lrs)
        chance = 1.0 / store.read_json(out_dir / f"gap-B{b}" / "config.json")["dataset"]["classes"]
        preds = r.test_predictions.reshape(n_lrs, -1, r.test_predictions.shape[-1])  # (lrs, seeds, n_test)
        val_acc = (preds[:, :, split["validation"]] == y_val).mean(axis=-1)
        test_acc = (preds[:, :, split["test"]] == y_test).mean(axis=-1)
        div = r.history["diverged"][:, -1].reshape(n_lrs, -1).astype(bool)
        train_acc = r.history["train_acc"][:, -1].reshape(n_lrs, -1)
        best = tune_by_validation(val_acc, div, chance)
        gap = np.where(div[best], np.nan, train_acc[best] - test_acc[best])
        gaps[b] = gap
        rows.append({"batch_size": b, "steps": r.cfg.train.steps, "tuned_lr": float(s.gap_lrs[best]),
                     "diverged_at_tuned": int(div[best].sum()), "gap": _ci(gap),
                     "train_acc": _ci(np.where(div[best], np.nan, train_acc[best])),
                     "test_acc": _ci(np.where(div[best], np.nan, test_acc[best])),
                     "val_acc_by_lr": np.where(div, chance, val_acc).mean(axis=1).tolist()})
    small, large = min(s.gap_batch_sizes), max(s.gap_batch_sizes)
    fits = comparable_batch_sizes([r["batch_size"] for r in rows], [r["train_acc"]["estimate"] for r in rows],
                                  s.fit_tolerance)
    nan_ci = {"estimate": math.nan, "low": math.nan, "high": math.nan}
    a["gap"] = {"rows": rows, "smallest": small, "largest": large,
                "difference_largest_minus_smallest": _paired_ci(gaps[large], gaps[small]),
                "comparable": fits,
                "difference_comparable": (_paired_ci(gaps[max(fits)], gaps[min(fits)]) if len(fits) >= 2 else nan_ci)}
    return a


def verdicts(s: Settings, a: dict) -> list[Verdict]:
    as_ci = lambda d: stats.CI(*(math.nan if d[k] is None else d[k] for k in ("estimate", "low", "high")))  # noqa: E731
    fit = a["throughput"]["fit"]
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    d = a["gap"]["difference_comparable"]
    parts = m9_parts([as_ci(a["noise"][p]["slope"]) for p in POINTS],
                     stats.CI(fit["slope"], nan(fit["slope_low"]), nan(fit["slope_high"])), as_ci(d),
                     tolerance=s.slope_tolerance)
    decisions = dict(zip((p.name for p in parts), holm(parts)))
    noise = all_hold([decisions[f"noise {p}"] for p in POINTS])
    parallel, regular = decisions["parallelism"], decisions["regularise"]
    raw = a["gap"]["difference_largest_minus_smallest"]
    fits = a["gap"]["comparable"]
    underfit = [r["batch_size"] for r in a["gap"]["rows"] if r["batch_size"] not in fits]
    i = a["noise"]["init"]["slope"]
    tp = a["throughput"]
    rows = {r["batch_size"]: r for r in a["gap"]["rows"]}
    sm, lg = rows[a["gap"]["smallest"]], rows[a["gap"]["largest"]]
    measurement = (
        f"slope of log E‖g_B − g_N‖² vs log B_eff after {s.pretrain_steps} Adam steps (mean over seeds; "
        f"at init {i['estimate']:.3f} [{i['low']:.3f}, {i['high']:.3f}]) → noise {noise}; "
        f"throughput slope vs B {fit['slope']:.2f} [{nan(fit['slope_low']):.2f}, {nan(fit['slope_high']):.2f}], "
        f"×{tp['ratio_largest_to_smallest']:.3g} examples/s from B={tp['batch_sizes'][0]} to "
        f"B={tp['batch_sizes'][-1]} ({tp['device']}) → parallelism {parallel}; gap (train − test acc) at "
        f"{s.epochs} epochs, lr tuned on validation: B={sm['batch_size']} {sm['gap']['estimate']:.3f} "
        f"(test acc {sm['test_acc']['estimate']:.3f}), B={lg['batch_size']} {lg['gap']['estimate']:.3f} "
        f"(test acc {lg['test_acc']['estimate']:.3f}), raw difference {raw['estimate']:.3f}; "
        f"underfit (train acc > {s.fit_tolerance:g} below the best, excluded): {underfit or 'none'}; "
        f"gap(B={max(fits)}) − gap(B={min(fits)}) = {d['estimate']:.3f} [{d['low']:.3f}, {d['high']:.3f}] "
        f"→ regularise {regular}")
    how = (f"regularise compares only batch sizes whose mean train accuracy is within {s.fit_tolerance:g} of the "
           f"best (others underfit at equal epochs and are excluded) and is inconclusive if fewer than two remain; "
           f"noise = both noise parts hold; M9: noise, parallelism and regularise all supported → supported, all "
           f"contradicted → contradicted, supported and contradicted → depends, else inconclusive")
    t = as_ci(a["noise"]["trained"]["slope"])
    return [judge("M9", parts, m9_combine, how=how, measurement=measurement, value=t, figure="grad_noise.png",
                  unit="log-log slope")[0]]


def plot_noise(a: dict, path: Path) -> None:
    """E‖g_B − g_N‖² vs B (log-log), seed bands at init and trained, with the fitted power law."""
    sizes = np.asarray(a["noise"]["batch_sizes"], np.float64)
    n = a["n_train"]
    fig, ax = plots.subplots(figsize=(6.5, 4.5))
    for point, color in zip(POINTS, ("C0", "C1")):
        d = a["noise"][point]
        plots.seed_band(ax, sizes, np.asarray(d["per_seed"]), label=f"{point}", color=color)
        ax.scatter(sizes, np.median(d["per_seed"], axis=0), color=color, s=12, zorder=3)
        fit = d["pooled_fit"]
        grid = np.geomspace(sizes[0], sizes[-1], 100)
        ax.plot(grid, np.exp(fit["intercept"]) * effective_batch_size(grid, n) ** fit["slope"], color=color, ls="--",
                lw=0.9, label=f"fit ∝ B_eff^{fit['slope']:.2f} (per-seed mean slope {d['slope']['estimate']:.2f} "
                              f"[{d['slope']['low']:.2f}, {d['slope']['high']:.2f}])")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"batch size B (without replacement; N = {n}; B_eff = 1/(1/B − 1/N))")
    ax.set_ylabel("E‖g_B − g_N‖²  (squared gradient norm)")
    ax.set_title("M9: minibatch gradient noise around the full gradient (theory: slope −1 in B_eff)", fontsize=9)
    ax.legend(fontsize=7)
    plots.save(fig, path)


def plot_throughput(a: dict, path: Path) -> None:
    tp = a["throughput"]
    b = np.asarray(tp["batch_sizes"], np.float64)
    med = np.asarray(tp["median_examples_per_s"])
    lo = np.array([min(r) for r in tp["all"]])
    hi = np.array([max(r) for r in tp["all"]])
    fig, ax = plots.subplots(figsize=(6.5, 4.5))
    ax.errorbar(b, med, yerr=[med - lo, hi - med], marker="o", capsize=3, label="median (bars: min–max of repeats)")
    fit = tp["fit"]
    ax.plot(b, np.exp(fit["intercept"]) * b ** fit["slope"], ls="--", color="gray",
            label=f"log-log fit, slope {fit['slope']:.2f}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("training throughput (examples / s, one run)")
    ax.set_title(f"M9: throughput vs batch size on {tp['device']}", fontsize=9)
    ax.legend(fontsize=7)
    plots.save(fig, path)


def plot_gap(s: Settings, a: dict, path: Path) -> None:
    rows = a["gap"]["rows"]
    b = np.asarray([r["batch_size"] for r in rows], np.float64)
    fig, axes = plots.subplots(1, 2, figsize=(12, 4.5))
    for ax, keys in zip(axes, (("gap",), ("train_acc", "test_acc"))):
        for key in keys:
            est = np.array([r[key]["estimate"] for r in rows])
            low, high = np.array([r[key]["low"] for r in rows]), np.array([r[key]["high"] for r in rows])
            err = np.clip(np.stack([est - low, high - est]), 0, None)
            ax.errorbar(b, est, yerr=err, marker="o", capsize=3, label=f"{key.replace('_', ' ')} (mean, 95% CI)")
        ax.set_xscale("log")
        ax.set_xlabel("batch size B")
        ax.legend(fontsize=7)
    fits = a["gap"]["comparable"]
    for i, (x, r) in enumerate(zip(b, rows)):
        if r["batch_size"] not in fits:
            axes[0].scatter([x], [r["gap"]["estimate"]], s=120, facecolor="none", edgecolor="red", zorder=3)
        label = f"lr {r['tuned_lr']:g}" + ("" if r["batch_size"] in fits else ", underfit")
        right_half = i >= len(rows) / 2  # notes point inwards, so they stay inside the panel
        axes[0].annotate(label, (x, r["gap"]["estimate"]), fontsize=7, textcoords="offset points",
                         xytext=(-4 if right_half else 4, 4), ha="right" if right_half else "left")
    axes[0].set_ylabel("generalization gap: train acc − held-out test acc")
    axes[1].set_ylabel("accuracy")
    fig.suptitle(f"M9: SGD, {s.epochs} epochs at every B, lr tuned per B on a validation half of the test split\n"
                 f"red circle = underfit (train acc more than {s.fit_tolerance:g} below the best), "
                 f"left out of the verdict",
                 fontsize=9)
    plots.save(fig, path)


def format_table(a: dict) -> str:
    lines = ["gradient noise E‖g_B − g_N‖² (mean over seeds)",
             "B        " + "  ".join(f"{b:>9d}" for b in a["noise"]["batch_sizes"])]
    for p in POINTS:
        lines.append(f"{p:8s} " + "  ".join(f"{v:9.3g}" for v in a["noise"][p]["mean_by_batch"]))
    lines += ["", f"throughput (examples/s, median) on {a['throughput']['device']}"]
    lines += [f"B={b:<6d} {m:12.0f}" for b, m in zip(a["throughput"]["batch_sizes"],
                                                     a["throughput"]["median_examples_per_s"])]
    lines += ["", "B       steps   tuned lr  train acc  test acc   gap [95% CI]"]
    for r in a["gap"]["rows"]:
        g = r["gap"]
        lines.append(f"{r['batch_size']:<7d} {r['steps']:<7d} {r['tuned_lr']:<9g} {r['train_acc']['estimate']:.3f}"
                     f"      {r['test_acc']['estimate']:.3f}      "
                     f"{g['estimate']:.3f} [{g['low']:.3f}, {g['high']:.3f}]")
    return "\n".join(lines)


def report(out_dir: Path) -> list[Verdict]:
    """Reads noise.npz, throughput.npz and the gap sweeps; writes analysis.json, table.txt, figures."""
    out_dir = Path(out_dir)
    s = config_lib.from_dict(store.read_json(out_dir / "settings.json"), Settings)
    a = analyse(s, out_dir)
    store.write_json(out_dir / "analysis.json", a)
    table = format_table(a)
    (out_dir / "table.txt").write_text(table + "\n")
    print(table)
    plot_noise(a, out_dir / "grad_noise.png")
    plot_throughput(a, out_dir / "throughput.png")
    plot_gap(s, a, out_dir / "gap.png")
    return verdicts(s, a)
