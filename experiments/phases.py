"""Training phases (fast learning → fine tuning → overfitting) and the untrained net.

Claims (experiments/claims.toml):
  M10 "Phase 1: fast learning (epochs 1–50), the loss falls rapidly, gradients are largest;
      phase 2: fine tuning (50–500), gradients shrink; phase 3 (500+): the training loss
      keeps falling while the validation loss rises."
  M6  "Random initial weights are pure chaos: the untrained net knows nothing."

Measurement: one compiled program trains every seed (`sweep.run`) on a training subset small
enough to overfit (MNIST-1D, `data.train_size` examples), for many epochs, evaluating the full
train and test sets every `eval_every` steps (one epoch by default). An epoch is
`train_size // batch_size` steps (the sweep's shuffling drops the remainder).

Phase boundaries, per seed, on curves smoothed by a moving average over ±`SMOOTH_DECADES`
decades of epochs (scale-free: a few points early on, many late):
  - overfitting onset T_over = the epoch of the minimum smoothed test loss;
  - end of fast learning T_fast = the knee of the smoothed training loss on [0, T_over]: the
    epoch farthest below the chord from (0, L_0) to (T_over, L(T_over)) (the "Kneedle" rule,
    Satopää et al. 2011; for a convex curve it is where the loss falls at the chord's mean
    rate: faster before, slower after). Parameter-free and invariant to the loss's units.
A seed shows the article's three phases, in order, when
  (1) fast: the mean rate of fall of the training loss on [0, T_fast] is ≥ RATE_RATIO × the
      rate on [T_fast, T_over];
  (2) gradients shrink in phase 2: smoothed minibatch gradient norm at T_over <
      GRAD_SHRINK (= 1) × its value at T_fast (any decrease: the article says only that
      gradients "decrease"; the size of the decrease is reported, and a flat gradient norm
      passes in only about half the seeds, which the across-seed rule below rejects);
  (3) overfitting: the smoothed test loss at the end is ≥ (1 + OVERFIT_RISE) × its minimum,
      while the smoothed training loss at the end is ≤ (1 − TRAIN_FALL) × its value at T_over.
Boundaries are reported as geometric means over seeds with 95% bootstrap CIs, next to the
article's 50 and 500 epochs (numbers that belong to the article's unnamed dataset).

M6: at step 0 (the sweep's own initial weights, evaluation mode): the test loss vs
ln(classes) (the loss of a uniform prediction), the test accuracy vs 1/classes, the mean
largest softmax probability vs 1/classes and KL(p ‖ uniform) = ln C − H(p) per example.
The same numbers for LeCun init (variance 1/fan_in, no ReLU gain) are reported for contrast.

Verdict rules (rule objects below, unit-tested on synthetic numbers): see `m10_verdict`
and `m6_verdict`.

References: Satopää et al. (2011) "Finding a 'Kneedle' in a haystack"; Prechelt (1998)
"Early stopping — but when?" (overfitting onset as the validation minimum); He et al. (2015)
and LeCun et al. (1998) (initial weight scale); Greydanus & Kobak (2024) (MNIST-1D).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import data as data_lib
from netalchemy import mlp, plots, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M10", "M6")

# ---------------------------------------------------------------- rule thresholds (M10)
ARTICLE_EPOCHS = {"fast_end": 50.0, "overfit_onset": 500.0}  # the article's boundaries
BOUNDARY_FACTOR = 3.0  # a boundary "matches" the article's if its CI lies within ×/÷ 3 of it
SMOOTH_DECADES = 0.05  # moving-average half-width in log10(epoch): ±12%
RATE_RATIO = 3.0  # phase 1 must lose loss ≥ 3× faster per epoch than phase 2
GRAD_SHRINK = 1.0  # gradient norm at the end of phase 2 must be below this × its value at the start
OVERFIT_RISE = 0.05  # test loss must rise ≥ 5% above its minimum by the end
TRAIN_FALL = 0.1  # ... while the train loss falls ≥ 10% below its value at the onset
MOST = 0.5  # "most seeds": the CI of the fraction of seeds lies above 0.5

# ---------------------------------------------------------------- rule thresholds (M6)
LOSS_TOLERANCE = 0.1  # initial loss ≈ ln C: its CI within ln C × (1 ± 0.1)
ACC_TOLERANCE = 0.05  # initial accuracy ≈ chance: its CI within 1/C ± 0.05


@dataclass(frozen=True)
class Settings:
    # Plain mini-batch SGD (the article's "gradient descent"), 500 training examples,
    # 10 steps an epoch, 2000 epochs, evaluated every epoch.
    base: Config = field(default_factory=lambda: Config(
        model=ModelConfig(hidden=(100, 100)),
        optim=OptimConfig(name="sgd", lr=0.02),
        train=TrainConfig(steps=20_000, batch_size=50, eval_every=10, chunk_steps=5000),
        data=DataConfig(train_size=500),
        seeds=SeedsConfig(n=32)))
    contrast_init: str = "lecun"  # M6 also reports the untrained net under this init


def _profile(*, train_size: int, batch: int, epochs: int, seeds: int, hidden=(100, 100)) -> Settings:
    per_epoch = train_size // batch
    return Settings(base=Config(
        model=ModelConfig(hidden=hidden), optim=OptimConfig(name="sgd", lr=0.02),
        train=TrainConfig(steps=epochs * per_epoch, batch_size=batch, eval_every=per_epoch,
                          chunk_steps=epochs * per_epoch),
        data=DataConfig(train_size=train_size), seeds=SeedsConfig(n=seeds)))


PROFILES = {
    "tiny": _profile(train_size=100, batch=20, epochs=150, seeds=4, hidden=(32, 32)),
    "quick": _profile(train_size=500, batch=50, epochs=500, seeds=16),
    "full": Settings(),
}


# ---------------------------------------------------------------- measurement


@partial(jax.jit, static_argnames="cfg")
def prediction_stats(params, state, x, y, *, cfg: ModelConfig):
    """Per seed: loss, accuracy, mean max softmax prob, mean KL(p ‖ uniform), logit std, and
    the share of examples given the most-predicted class. Params carry a leading seeds axis."""
    def one(p, s):
        logits, _ = mlp.apply(p, s, x, cfg=cfg, train=False)  # (examples, classes)
        logp = jax.nn.log_softmax(logits)
        probs = jnp.exp(logp)
        c = logits.shape[-1]
        loss = -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1))
        pred = jnp.argmax(logits, -1)
        kl = jnp.mean(jnp.sum(probs * logp, -1) + jnp.log(c))  # ln C − H(p)
        top_share = jnp.max(jnp.bincount(pred, length=c)) / x.shape[0]
        hist = jnp.histogram(jnp.max(probs, -1), bins=50, range=(0.0, 1.0))[0]
        return dict(loss=loss, acc=jnp.mean(pred == y), max_prob=jnp.mean(jnp.max(probs, -1)), kl_uniform=kl,
                    logit_std=jnp.std(logits), top_class_share=top_share, max_prob_hist=hist)
    return jax.vmap(one)(params, state)


def run(s: Settings, out_dir: Path) -> None:
    """Trains every seed once (resumable, `out_dir/sweep`), measures the untrained nets;
    writes curves.npz and results.json."""
    cfg = s.base
    dataset = data_lib.load(cfg.data)
    result = sweep.run(cfg, out_dir=out_dir / "sweep", dataset=dataset, progress=False)
    n_train, in_features = dataset.x_train.shape
    steps_per_epoch = n_train // cfg.train.batch_size
    h = result.history
    arrays = {"epochs": h["step"][0] / steps_per_epoch, "seeds": result.seeds,
              **{m: h[m] for m in ("train_loss", "test_loss", "train_acc", "test_acc", "grad_norm", "diverged")}}
    x, y = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test)
    for name in dict.fromkeys((cfg.model.init, s.contrast_init)):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=name))
        params, state = sweep.initial_params(c, result.seeds, in_features=in_features, num_classes=dataset.num_classes)
        for k, v in prediction_stats(params, state, x, y, cfg=c.model).items():
            arrays[f"init_{name}/{k}"] = np.asarray(v)
    store.write_npz(out_dir / "curves.npz", arrays)
    store.write_json(out_dir / "results.json", {
        "n_train": n_train, "batch_size": cfg.train.batch_size, "steps_per_epoch": steps_per_epoch,
        "num_classes": dataset.num_classes, "init": cfg.model.init, "contrast_init": s.contrast_init,
        "optimizer": cfg.optim.name, "lr": cfg.optim.lr, "dataset": dataset.name})


# ---------------------------------------------------------------- phase detection


def smooth_log(epochs: np.ndarray, values: np.ndarray, decades: float = SMOOTH_DECADES) -> np.ndarray:
    """Moving average of `values` (..., points) over a window of ±`decades` in log10(epoch).

    Epoch 0 (and any epoch ≤ 0) is its own window. Non-finite values are left out of the
    average; a window without finite values gives NaN.
    """
    epochs = np.asarray(epochs, np.float64)
    le = np.where(epochs > 0, np.log10(np.where(epochs > 0, epochs, 1.0)), -np.inf)
    lo = np.searchsorted(le, le - decades, side="left")
    hi = np.searchsorted(le, le + decades, side="right")
    v = np.asarray(values, np.float64)
    ok = np.isfinite(v)
    pad = np.zeros(v.shape[:-1] + (1,))
    total = np.concatenate([pad, np.cumsum(np.where(ok, v, 0.0), axis=-1)], axis=-1)
    count = np.concatenate([pad, np.cumsum(ok, axis=-1)], axis=-1)
    n = count[..., hi] - count[..., lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (total[..., hi] - total[..., lo]) / n, np.nan)


def detect_phases(epochs: np.ndarray, train_loss: np.ndarray, test_loss: np.ndarray,
                  grad_norm: np.ndarray, test_acc: np.ndarray | None = None) -> dict[str, float | bool]:
    """Phase boundaries and the three phase checks of one seed (1-D curves over `epochs`).

    Returns fast_end, overfit_onset, acc_peak (epochs; NaN where undefined), rate_ratio,
    grad_ratio (phase 2: end / start), grad_ratio_phase3 (last evaluation / onset), test_rise,
    train_fall_ratio, and the booleans fast, grad_shrinks, overfits, all_phases (the rule, see
    the module docstring) and grad_max_in_phase1 (reported only).
    """
    nan = math.nan
    out = dict(fast_end=nan, overfit_onset=nan, acc_peak=nan, rate_ratio=nan, grad_ratio=nan,
               grad_ratio_phase3=nan, test_rise=nan, train_fall_ratio=nan, fast=False, grad_max_in_phase1=False,
               grad_shrinks=False, overfits=False, all_phases=False)
    if not (np.all(np.isfinite(train_loss)) and np.all(np.isfinite(test_loss))):
        return out  # a diverged seed: no phases
    tr, te, gn = (smooth_log(epochs, v) for v in (train_loss, test_loss, grad_norm))
    if test_acc is not None:
        out["acc_peak"] = float(epochs[np.argmax(smooth_log(epochs, test_acc))])
    i_over = int(np.argmin(te))
    out["overfit_onset"] = float(epochs[i_over])
    if np.isfinite(gn[i_over]) and gn[i_over] > 0:
        out["grad_ratio_phase3"] = float(gn[-1] / gn[i_over])
    out["test_rise"] = float(te[-1] / te[i_over] - 1.0)
    out["train_fall_ratio"] = float(tr[-1] / tr[i_over]) if tr[i_over] > 0 else nan
    out["overfits"] = bool(i_over < len(te) - 1 and out["test_rise"] >= OVERFIT_RISE
                           and tr[-1] <= (1.0 - TRAIN_FALL) * tr[i_over])
    if i_over < 2:
        return out  # no room for two phases before the onset
    e = epochs[: i_over + 1]
    chord = tr[0] + (tr[i_over] - tr[0]) * (e - e[0]) / (e[-1] - e[0])
    i_fast = int(np.argmax(chord - tr[: i_over + 1]))
    if not 0 < i_fast < i_over:
        return out
    t_fast = float(epochs[i_fast])
    out["fast_end"] = t_fast
    rate1 = (tr[0] - tr[i_fast]) / (t_fast - epochs[0])
    rate2 = (tr[i_fast] - tr[i_over]) / (epochs[i_over] - t_fast)
    out["rate_ratio"] = float(rate1 / rate2) if rate2 > 0 else math.inf
    out["fast"] = bool(rate1 > 0 and out["rate_ratio"] >= RATE_RATIO)
    out["grad_max_in_phase1"] = bool(np.nanargmax(gn) <= i_fast) if np.any(np.isfinite(gn)) else False
    if np.isfinite(gn[i_fast]) and gn[i_fast] > 0:
        out["grad_ratio"] = float(gn[i_over] / gn[i_fast])
        out["grad_shrinks"] = bool(out["grad_ratio"] < GRAD_SHRINK)
    out["all_phases"] = out["fast"] and out["grad_shrinks"] and out["overfits"]
    return out


def detect_all(curves: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """`detect_phases` for every seed: each key becomes a (seeds,) array."""
    rows = [detect_phases(curves["epochs"], *(curves[m][i] for m in ("train_loss", "test_loss", "grad_norm", "test_acc")))
            for i in range(curves["train_loss"].shape[0])]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]}


def geometric_ci(values: np.ndarray) -> stats.CI:
    """Geometric mean over seeds (finite, positive values) with a 95% bootstrap CI."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v) & (v > 0)]
    ci = stats.bootstrap_ci(np.log10(v))
    return stats.CI(*(10.0 ** x if np.isfinite(x) else math.nan for x in ci))


# ---------------------------------------------------------------- verdict rules


PHASES = (f"the fraction of seeds showing, in order, fast learning (phase-1 loss rate ≥ {RATE_RATIO:g}× phase-2 "
          f"rate, phase 1 ending at the knee of the smoothed train loss before the test-loss minimum), gradients "
          f"shrinking (grad norm at the test-loss minimum < {GRAD_SHRINK:g}× at the knee) and overfitting (test loss "
          f"ends ≥ {OVERFIT_RISE:.0%} above its minimum while train loss ends ≥ {TRAIN_FALL:.0%} below its value "
          f"there) (Wilson interval)")
MOST_SEEDS = Rule(PHASES, MOST, "above", "'the' phases of training should appear in most runs, not a lucky few",
                  unit="fraction of seeds")


def boundary_rule(name: str, reference: float, factor: float = BOUNDARY_FACTOR) -> Rule:
    """A boundary (geometric mean over seeds, epochs) within ×/÷ `factor` of the article's `reference`."""
    return Rule(f"the {name.replace('_', ' ')} (geometric mean over seeds)", (reference / factor, reference * factor),
                "inside", f"×/÷{factor:g} around the article's {reference:g} epochs: its round numbers are "
                          f"orders of magnitude, not measurements", unit="epochs")


def m10_verdict(fraction: stats.CI, fast_end: stats.CI, overfit_onset: stats.CI, measurement: str = "") -> Verdict:
    """M10 from the fraction of seeds showing all three phases and the boundary CIs (epochs):
    supported if most seeds show the phases and both boundaries match the article's; depends if
    the phases exist but a boundary does not match; contradicted if most seeds do not show them."""
    parts = [Part("most seeds", MOST_SEEDS, fraction),
             Part("fast end", boundary_rule("end of fast learning", ARTICLE_EPOCHS["fast_end"]), fast_end),
             Part("overfit onset", boundary_rule("overfitting onset", ARTICLE_EPOCHS["overfit_onset"]), overfit_onset)]

    def combine(d):
        if d["most seeds"] == "supported":
            return "supported" if d["fast end"] == d["overfit onset"] == "supported" else "depends"
        return "contradicted" if d["most seeds"] == "contradicted" else "inconclusive"

    return judge("M10", parts, combine, how="supported iff all three parts are; depends iff most seeds is "
                 "supported but a boundary is not; contradicted iff most seeds is contradicted; else inconclusive",
                 measurement=measurement, figure="phases.png", unit="fraction of seeds")[0]


def m6_verdict(loss: stats.CI, accuracy: stats.CI, num_classes: int, measurement: str = "") -> Verdict:
    """M6 from the CIs of the initial test loss and accuracy: supported if at chance and uniform;
    depends if at chance but the loss lies wholly above the band (knows nothing, yet confidently
    non-uniform: chaos rather than ignorance); contradicted if the accuracy lies away from chance."""
    chance, ln_c = 1.0 / num_classes, math.log(num_classes)
    uniform = Rule("the initial test loss", (ln_c * (1 - LOSS_TOLERANCE), ln_c * (1 + LOSS_TOLERANCE)), "inside",
                   f"ln C × (1 ± {LOSS_TOLERANCE:g}): the loss of a uniform prediction, give or take", unit="nats")
    at_chance = Rule("the initial test accuracy", (chance - ACC_TOLERANCE, chance + ACC_TOLERANCE), "inside",
                     f"1/C ± {ACC_TOLERANCE:g}: knows nothing about the labels")
    parts = [Part("uniform", uniform, loss), Part("chance", at_chance, accuracy)]

    def combine(d):
        if d["chance"] != "supported":
            return "contradicted" if d["chance"] == "contradicted" else "inconclusive"
        if d["uniform"] == "supported":
            return "supported"
        return "depends" if d["uniform"] == "contradicted" and loss.low > uniform.edges[1] else "inconclusive"

    return judge("M6", parts, combine, how="supported iff both parts are; depends iff chance is supported and the "
                 "loss lies wholly above the uniform band; contradicted iff chance is contradicted; else "
                 "inconclusive", measurement=measurement, figure="init.png", unit="nats")[0]


# ---------------------------------------------------------------- figures


def _mark_boundaries(ax, bounds: dict[str, stats.CI]) -> None:
    for (key, ci), color, label in zip(bounds.items(), ("C2", "C3"), ("end of fast learning", "overfitting onset")):
        if np.isfinite(ci.estimate):
            ax.axvspan(ci.low, ci.high, color=color, alpha=0.15, lw=0)
            ax.axvline(ci.estimate, color=color, lw=1.2, label=f"{label}: {ci.estimate:.0f} ep "
                                                              f"[{ci.low:.0f}, {ci.high:.0f}] (95% CI)")
        ax.axvline(ARTICLE_EPOCHS[key], color=color, ls=":", lw=1.2,
                   label=f"article: {ARTICLE_EPOCHS[key]:.0f} epochs")


def plot_curves(curves: dict[str, np.ndarray], bounds: dict[str, stats.CI], meta: dict, path: Path,
                acc_peak: stats.CI | None = None) -> Path:
    """Loss, accuracy and gradient-norm curves over log epochs with seed bands and boundaries."""
    e = curves["epochs"]
    keep = e > 0
    fig, axes = plots.subplots(3, 1, figsize=(8, 11), sharex=True)
    for ax, metrics, ylabel, log_y in (
            (axes[0], ("train_loss", "test_loss"), "cross-entropy (nats)", True),
            (axes[1], ("train_acc", "test_acc"), "accuracy", False),
            (axes[2], ("grad_norm",), "minibatch gradient norm\n(mean over the epoch)", True)):
        for m, color in zip(metrics, ("C0", "C1")):
            plots.seed_band(ax, e[keep], curves[m][:, keep], label=m.replace("_", " "), color=color, log_y=log_y)
        _mark_boundaries(ax, bounds)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    if acc_peak is not None and np.isfinite(acc_peak.estimate):
        axes[1].axvline(acc_peak.estimate, color="C1", ls="--", lw=1,
                        label=f"test-accuracy peak: {acc_peak.estimate:.0f} ep [{acc_peak.low:.0f}, {acc_peak.high:.0f}]")
    axes[0].axhline(math.log(meta["num_classes"]), color="grey", lw=0.8, ls="--", label="ln(classes)")
    entries = {}  # label -> handle, each entry once (the boundaries are marked in every panel)
    for ax in axes:
        entries.update({label: handle for handle, label in zip(*ax.get_legend_handles_labels())
                        if label not in entries})
    fig.legend(entries.values(), entries.keys(), fontsize=7, ncol=2, loc="outside lower center")
    axes[2].set_xscale("log")
    axes[2].set_xlim(e[keep][0], max(e[-1], ARTICLE_EPOCHS["overfit_onset"] * 1.2))
    axes[2].set_xlabel(f"epoch (1 epoch = {meta['steps_per_epoch']} steps of batch {meta['batch_size']}; log scale)")
    axes[0].set_title(f"Training phases: {meta['dataset']}, {meta['n_train']} training examples, "
                      f"{meta['optimizer']} lr {meta['lr']:g}\n(shaded: 95% CI of each boundary; dotted: the article's)")
    return plots.save(fig, path)


def plot_init(curves: dict[str, np.ndarray], meta: dict, path: Path) -> Path:
    """Initial loss per seed vs ln C, and the distribution of the largest softmax probability."""
    inits = list(dict.fromkeys((meta["init"], meta["contrast_init"])))
    c = meta["num_classes"]
    fig, (ax0, ax1) = plots.subplots(1, 2, figsize=(11, 4))
    rng = np.random.default_rng(0)
    for i, name in enumerate(inits):
        loss = curves[f"init_{name}/loss"]
        ax0.scatter(i + rng.uniform(-0.15, 0.15, loss.size), loss, s=12, alpha=0.7, label=f"{name} init (one dot per seed)")
        hist = curves[f"init_{name}/max_prob_hist"].sum(0)
        ax1.stairs(hist / hist.sum(), np.linspace(0, 1, hist.size + 1), label=f"{name} init", fill=False, lw=1.5)
    ax0.axhline(math.log(c), color="k", ls="--", lw=1, label=f"ln {c} = {math.log(c):.3f} (uniform prediction)")
    ax0.set_xticks(range(len(inits)), [f"{n} init" for n in inits])
    ax0.set_xlim(-0.5, len(inits) - 0.5)
    ax0.set_ylabel("initial test loss (nats)")
    ax0.set_title("Loss of the untrained net")
    ax0.legend(fontsize=7)
    ax1.axvline(1 / c, color="k", ls="--", lw=1, label=f"1/C = {1 / c:.2f} (uniform)")
    ax1.set_xlabel("largest softmax probability of a test example")
    ax1.set_ylabel("fraction of test examples (all seeds)")
    ax1.set_title("How confident the untrained net is")
    ax1.legend(fontsize=7)
    return plots.save(fig, path)


# ---------------------------------------------------------------- report


def report(out_dir: Path) -> list[Verdict]:
    """Detects phases per seed, writes phases.json and two figures, returns M10 and M6 verdicts."""
    curves = store.read_npz(out_dir / "curves.npz")
    meta = store.read_json(out_dir / "results.json")
    det = detect_all(curves)
    n = det["all_phases"].size
    frac = {k: stats.fraction_ci(det[k]) for k in ("fast", "grad_shrinks", "overfits", "all_phases")}
    bounds = {"fast_end": geometric_ci(det["fast_end"]), "overfit_onset": geometric_ci(det["overfit_onset"])}
    acc_peak = geometric_ci(det["acc_peak"])
    grad_ratio = geometric_ci(det["grad_ratio"])
    grad_ratio3 = geometric_ci(det["grad_ratio_phase3"])
    grad_max1 = stats.fraction_ci(det["grad_max_in_phase1"])
    plot_curves(curves, bounds, meta, out_dir / "phases.png", acc_peak)
    plot_init(curves, meta, out_dir / "init.png")

    c = meta["num_classes"]
    init = meta["init"]
    loss0 = stats.bootstrap_ci(curves["test_loss"][:, 0])
    acc0 = stats.bootstrap_ci(curves["test_acc"][:, 0])
    init_ci = {f"{name}/{k}": stats.bootstrap_ci(curves[f"init_{name}/{k}"])
               for name in dict.fromkeys((init, meta["contrast_init"]))
               for k in ("loss", "acc", "max_prob", "kl_uniform", "logit_std", "top_class_share")}
    store.write_json(out_dir / "phases.json", {
        "per_seed": {k: v for k, v in det.items()},
        "fractions": {k: v.as_dict() for k, v in frac.items()},
        "boundaries_epochs": {k: v.as_dict() for k, v in bounds.items()},
        "test_acc_peak_epochs": acc_peak.as_dict(), "grad_ratio_phase2": grad_ratio.as_dict(),
        "grad_ratio_phase3": grad_ratio3.as_dict(), "grad_max_in_phase1": grad_max1.as_dict(),
        "article_epochs": ARTICLE_EPOCHS, "initial": {k: v.as_dict() for k, v in init_ci.items()},
        "initial_from_history": {"test_loss": loss0.as_dict(), "test_acc": acc0.as_dict()}})

    print(f"phases over {n} seeds: fast {frac['fast'].estimate:.2f}, gradients shrink {frac['grad_shrinks'].estimate:.2f}, "
          f"overfitting {frac['overfits'].estimate:.2f}, all three {frac['all_phases'].estimate:.2f} (fraction of seeds)")
    print(f"end of fast learning {bounds['fast_end'].text()} epochs (article 50); overfitting onset "
          f"{bounds['overfit_onset'].text()} epochs (article 500); test-accuracy peak {acc_peak.text()} epochs; "
          f"grad-norm ratio end/start of phase 2 {grad_ratio.text()}, of phase 3 {grad_ratio3.text()}; "
          f"largest gradients in phase 1 in {grad_max1.estimate:.2f} of seeds")
    m10_measure = (f"fraction of {n} seeds showing fast → gradients shrink → overfitting (fast {frac['fast'].estimate:.2f}, "
                   f"grad shrinks {frac['grad_shrinks'].estimate:.2f} [end/start ratio {grad_ratio.text(2)}; "
                   f"in phase 3 {grad_ratio3.text(2)}], "
                   f"overfits {frac['overfits'].estimate:.2f}); fast phase ends at {bounds['fast_end'].text()} epochs "
                   f"(article 50), overfitting onset (test-loss min) {bounds['overfit_onset'].text()} epochs "
                   f"(article 500; test-accuracy peak {acc_peak.text()}), {meta['n_train']} train examples")
    contrast = meta["contrast_init"]
    m6_measure = (f"initial test loss ({init} init) vs ln {c} = {math.log(c):.3f}; initial test accuracy "
                  f"{acc0.text()} vs chance {1 / c:.2f}; mean max softmax prob {init_ci[f'{init}/max_prob'].text()} "
                  f"vs {1 / c:.2f}; KL(p‖uniform) {init_ci[f'{init}/kl_uniform'].text()} nats; most-predicted class "
                  f"gets {init_ci[f'{init}/top_class_share'].text()} of test examples")
    if contrast != init:
        m6_measure += f"; {contrast} init: loss {init_ci[f'{contrast}/loss'].text()}, acc {init_ci[f'{contrast}/acc'].text()}"
    return [m10_verdict(frac["all_phases"], bounds["fast_end"], bounds["overfit_onset"], m10_measure),
            m6_verdict(loss0, acc0, c, m6_measure)]
