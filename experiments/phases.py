"""Training phases (fast learning → fine tuning → overfitting) and the untrained net.

Claims (experiments/claims.toml): M10, three phases: fast learning (epochs 1–50, largest gradients), fine
tuning (50–500, gradients shrink), overfitting (500+, the train loss falls while the test loss rises); M6,
random initial weights are pure chaos. Trained: one sweep of seeds, plain minibatch SGD on a MNIST-1D subset
small enough to overfit, evaluated once an epoch. Measured: per seed, `detect_phases` on log-smoothed curves;
M6, the sweep's own untrained nets (LeCun-init ones for contrast). Then the rules, the figures, the report.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import data as data_lib, mlp, per_run, plots, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M10", "M6")
ARTICLE_EPOCHS = {"fast_end": 50.0, "overfit_onset": 500.0}  # the article's boundaries
BOUNDARY_FACTOR = 3.0  # a boundary "matches" the article's if its CI lies within ×/÷ 3 of it
BOUNDARY_NAMES = {"fast_end": "end of fast learning", "overfit_onset": "overfitting onset"}
SMOOTH_DECADES = 0.05  # moving-average half-width in log10(epoch): ±12%
RATE_RATIO = 3.0  # phase 1 must lose loss ≥ 3× faster per epoch than phase 2
GRAD_SHRINK = 1.0  # grad norm at the end of phase 2 below this × at its start (the article: "decrease")
OVERFIT_RISE, TRAIN_FALL = 0.05, 0.1  # test loss ends ≥ 5% above its minimum, train loss ≥ 10% below its value
MOST = 0.5  # "most seeds": the CI of the fraction of seeds lies above 0.5
LOSS_TOLERANCE, ACC_TOLERANCE = 0.1, 0.05  # M6: loss CI within ln C × (1 ± 0.1), accuracy CI within 1/C ± 0.05


def _profile(train_size: int, batch: int, *, epochs: int, seeds: int, hidden=(100, 100)) -> Config:
    steps = epochs * (train_size // batch)  # plain minibatch SGD, the article's "gradient descent"
    train = TrainConfig(steps=steps, batch_size=batch, eval_every=train_size // batch, chunk_steps=min(steps, 5000))
    return Config(model=ModelConfig(hidden=hidden), optim=OptimConfig(name="sgd", lr=0.02), train=train,
                  data=DataConfig(train_size=train_size), seeds=SeedsConfig(n=seeds))


@dataclasses.dataclass(frozen=True)
class Settings:
    base: Config = _profile(500, 50, epochs=2000, seeds=32)  # 2000 epochs of 10 steps
    contrast_init: str = "lecun"  # M6 also reports the untrained net under this init


PROFILES = {"tiny": Settings(_profile(100, 20, epochs=150, seeds=4, hidden=(32, 32))),
            "quick": Settings(_profile(500, 50, epochs=500, seeds=16)), "full": Settings()}


def untrained(params, bn_state, x, y, *, cfg: Config) -> dict[str, jax.Array]:
    """One net on (x, y): loss, accuracy, and how confident and uniform its softmax outputs are (KL = ln C − H(p))."""
    logits = mlp.apply(params, bn_state, x, cfg=cfg.model, train=False)[0]  # (examples, classes)
    logp = jax.nn.log_softmax(logits)
    c, pred, top = logits.shape[-1], jnp.argmax(logits, -1), jnp.exp(jnp.max(logp, -1))
    return dict(loss=-jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=-1)), acc=jnp.mean(pred == y),
                max_prob=jnp.mean(top), kl_uniform=jnp.mean(jnp.sum(jnp.exp(logp) * logp, -1) + jnp.log(c)),
                logit_std=jnp.std(logits), top_class_share=jnp.max(jnp.bincount(pred, length=c)) / x.shape[0],
                max_prob_hist=jnp.histogram(top, bins=50, range=(0.0, 1.0))[0])


def measure(s: Settings, sweep_dir: Path) -> dict[str, np.ndarray]:
    """Curves (seeds, evaluations) over `epochs`, `untrained` per init (`init_<name>/<stat>`), the facts (0-d)."""
    cfg, dataset = s.base, data_lib.load(s.base.data)
    result = sweep.run(cfg, out_dir=sweep_dir, dataset=dataset, progress=False)
    (n_train, features), classes = dataset.x_train.shape, dataset.num_classes
    out = {"epochs": result.history["step"][0] / (n_train // cfg.train.batch_size), "seeds": result.seeds,
           **{m: result.history[m] for m in ("train_loss", "test_loss", "train_acc", "test_acc", "grad_norm")}}
    for init in dict.fromkeys((cfg.model.init, s.contrast_init)):
        c = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, init=init))
        nets = sweep.initial_params(c, result.seeds, in_features=features, num_classes=classes)  # as at step 0
        got = per_run.map_runs(untrained, nets, jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test), cfg=c)
        out |= {f"init_{init}/{k}": v for k, v in got.items()}
    return out | dict(n_train=n_train, batch_size=cfg.train.batch_size, num_classes=classes, init=cfg.model.init,
                      contrast_init=s.contrast_init, optimizer=cfg.optim.name, lr=cfg.optim.lr, dataset=dataset.name)


def run(s: Settings, out_dir: Path) -> None:
    """Trains every seed (resumable sweep in `out_dir/sweep`) and measures: curves.npz, cached by `s`."""
    store.cached("curves.npz", s, lambda: measure(s, out_dir / "sweep"), folder=out_dir)


def smooth_log(epochs: np.ndarray, values: np.ndarray, decades: float = SMOOTH_DECADES) -> np.ndarray:
    """Moving average of `values` (..., points) over ±`decades` of log10(epoch). Epoch ≤ 0 is its own
    window; non-finite values are left out; a window without finite values gives NaN."""
    e = np.asarray(epochs, np.float64)
    le = np.where(e > 0, np.log10(np.maximum(e, np.finfo(np.float64).tiny)), -np.inf)
    windows = zip(np.searchsorted(le, le - decades), np.searchsorted(le, le + decades, side="right"))
    v = np.ma.masked_invalid(np.asarray(values, np.float64))
    return np.ma.stack([v[..., a:b].mean(axis=-1) for a, b in windows], axis=-1).filled(np.nan)


def detect_phases(epochs: np.ndarray, train_loss: np.ndarray, test_loss: np.ndarray, grad_norm: np.ndarray,
                  test_acc: np.ndarray | None = None) -> dict[str, float | bool]:
    """One seed's boundaries (epochs), ratios and phase checks (the keys below; NaN or False where undefined)
    from its 1-D curves over `epochs`. `all_phases` is what `MOST_SEEDS` counts."""
    out = dict.fromkeys(("fast_end", "overfit_onset", "acc_peak", "rate_ratio", "grad_ratio", "grad_ratio_phase3",
                         "test_rise", "train_fall_ratio"), math.nan)
    out |= dict.fromkeys(("fast", "grad_max_in_phase1", "grad_shrinks", "overfits", "all_phases"), False)
    if not (np.all(np.isfinite(train_loss)) and np.all(np.isfinite(test_loss))):
        return out  # a diverged seed: no phases
    tr, te, gn = (smooth_log(epochs, v) for v in (train_loss, test_loss, grad_norm))
    ratio = lambda a, b: float(a / b) if np.isfinite(b) and b > 0 else math.nan  # noqa: E731
    if test_acc is not None:
        out["acc_peak"] = float(epochs[np.argmax(smooth_log(epochs, test_acc))])
    over = int(np.argmin(te))  # overfitting onset
    out |= dict(overfit_onset=float(epochs[over]), grad_ratio_phase3=ratio(gn[-1], gn[over]),
                test_rise=float(te[-1] / te[over] - 1.0), train_fall_ratio=ratio(tr[-1], tr[over]))
    out["overfits"] = bool(over < len(te) - 1 and out["test_rise"] >= OVERFIT_RISE
                           and tr[-1] <= (1.0 - TRAIN_FALL) * tr[over])
    e = epochs[: over + 1]
    chord = tr[0] + (tr[over] - tr[0]) * (e - e[0]) / (e[-1] - e[0]) if over >= 2 else tr[: over + 1]
    knee = int(np.argmax(chord - tr[: over + 1]))  # farthest below the chord; 0 without room for two phases
    if not 0 < knee < over:
        return out
    rate1, rate2 = (tr[0] - tr[knee]) / (e[knee] - e[0]), (tr[knee] - tr[over]) / (e[over] - e[knee])
    out |= dict(fast_end=float(epochs[knee]), rate_ratio=float(rate1 / rate2) if rate2 > 0 else math.inf,
                grad_ratio=ratio(gn[over], gn[knee]),
                grad_max_in_phase1=bool(np.any(np.isfinite(gn)) and np.nanargmax(gn) <= knee))
    out |= dict(fast=bool(rate1 > 0 and out["rate_ratio"] >= RATE_RATIO), grad_shrinks=out["grad_ratio"] < GRAD_SHRINK)
    out["all_phases"] = out["fast"] and out["grad_shrinks"] and out["overfits"]
    return out


def geometric_ci(values: np.ndarray) -> stats.CI:
    """Geometric mean over seeds (finite, positive values) with a 95% bootstrap CI."""
    v = np.asarray(values, np.float64)
    ci = stats.bootstrap_ci(np.log10(v[np.isfinite(v) & (v > 0)]))
    return stats.CI(*(10.0 ** x if np.isfinite(x) else math.nan for x in ci))


MOST_SEEDS = Rule(
    f"the fraction of seeds showing, in order, fast learning (phase-1 loss rate ≥ {RATE_RATIO:g}× phase-2 rate, "
    f"phase 1 ending at the knee of the smoothed train loss before the test-loss minimum), gradients shrinking "
    f"(grad norm at the test-loss minimum < {GRAD_SHRINK:g}× at the knee) and overfitting (test loss ends ≥ "
    f"{OVERFIT_RISE:.0%} above its minimum while train loss ends ≥ {TRAIN_FALL:.0%} below its value there) (Wilson "
    f"interval)", MOST, "above", "'the' phases of training should appear in most runs, not a lucky few",
    unit="fraction of seeds")
BOUNDARIES = {k: Rule(f"the {name} (geometric mean over seeds)", (ARTICLE_EPOCHS[k] / BOUNDARY_FACTOR,
                      ARTICLE_EPOCHS[k] * BOUNDARY_FACTOR), "inside", f"×/÷{BOUNDARY_FACTOR:g} around the article's "
                      f"{ARTICLE_EPOCHS[k]:g} epochs: its round numbers are orders of magnitude, not measurements",
                      unit="epochs") for k, name in BOUNDARY_NAMES.items()}


def m10_verdict(fraction: stats.CI, fast_end: stats.CI, overfit_onset: stats.CI, measurement: str = "") -> Verdict:
    """M10 from the fraction of seeds showing all three phases and the two boundaries' CIs (epochs)."""
    parts = [Part("most seeds", MOST_SEEDS, fraction), Part("fast end", BOUNDARIES["fast_end"], fast_end),
             Part("overfit onset", BOUNDARIES["overfit_onset"], overfit_onset)]

    def combine(d):  # the phases decide; the boundaries only between supported and depends
        if d["most seeds"] != "supported":
            return d["most seeds"]
        return "supported" if d["fast end"] == d["overfit onset"] == "supported" else "depends"
    return judge("M10", parts, combine, how="supported iff all three parts are; depends iff most seeds is "
                 "supported but a boundary is not; contradicted iff most seeds is contradicted; else inconclusive",
                 measurement=measurement, figure="phases.png", unit="fraction of seeds")[0]


def m6_verdict(loss: stats.CI, accuracy: stats.CI, num_classes: int, measurement: str = "") -> Verdict:
    """M6 from the initial test loss and accuracy CIs; "depends": at chance, yet confidently non-uniform (chaos)."""
    chance, ln_c = 1.0 / num_classes, math.log(num_classes)
    uniform = Rule("the initial test loss", (ln_c * (1 - LOSS_TOLERANCE), ln_c * (1 + LOSS_TOLERANCE)), "inside",
                   f"ln C × (1 ± {LOSS_TOLERANCE:g}): the loss of a uniform prediction, give or take", unit="nats")
    at_chance = Rule("the initial test accuracy", (chance - ACC_TOLERANCE, chance + ACC_TOLERANCE), "inside",
                     f"1/C ± {ACC_TOLERANCE:g}: knows nothing about the labels")

    def combine(d):
        if d["chance"] != "supported":
            return d["chance"]
        above = d["uniform"] == "contradicted" and loss.low > uniform.edges[1]
        return "supported" if d["uniform"] == "supported" else "depends" if above else "inconclusive"
    return judge("M6", [Part("uniform", uniform, loss), Part("chance", at_chance, accuracy)], combine,
                 how="supported iff both parts are; depends iff chance is supported and the loss lies wholly above "
                 "the uniform band; contradicted iff chance is contradicted; else inconclusive",
                 measurement=measurement, figure="init.png", unit="nats")[0]


def plot_curves(r: dict, geo: dict[str, stats.CI], path: Path) -> Path:
    """Loss, accuracy and gradient-norm curves over log epochs: seed bands, the boundaries with their CIs."""
    e, keep = r["epochs"], r["epochs"] > 0
    span = lambda b: f"{b.estimate:.0f} ep [{b.low:.0f}, {b.high:.0f}]"  # noqa: E731
    fig, axes = plots.subplots(3, 1, figsize=(8, 11), sharex=True)
    panels = ((("train_loss", "test_loss"), "cross-entropy (nats)", True), (("train_acc", "test_acc"), "accuracy",
              False), (("grad_norm",), "minibatch gradient norm\n(mean over the epoch)", True))
    for ax, (metrics, ylabel, log_y) in zip(axes, panels):
        for m, color in zip(metrics, ("C0", "C1")):
            plots.seed_band(ax, e[keep], r[m][:, keep], label=m.replace("_", " "), color=color, log_y=log_y)
        for (key, name), color in zip(BOUNDARY_NAMES.items(), ("C2", "C3")):
            if np.isfinite((b := geo[key]).estimate):
                ax.axvspan(b.low, b.high, color=color, alpha=0.15, lw=0)
                ax.axvline(b.estimate, color=color, lw=1.2, label=f"{name}: {span(b)} (95% CI)")
            ax.axvline(ARTICLE_EPOCHS[key], color=color, ls=":", lw=1.2, label=f"article: {ARTICLE_EPOCHS[key]:g} ep")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    if np.isfinite((peak := geo["acc_peak"]).estimate):
        axes[1].axvline(peak.estimate, color="C1", ls="--", lw=1, label=f"test-accuracy peak: {span(peak)}")
    axes[0].axhline(math.log(r["num_classes"]), color="grey", lw=0.8, ls="--", label="ln(classes)")
    entries = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}  # each label once
    fig.legend(entries.values(), entries.keys(), fontsize=7, ncol=2, loc="outside lower center")
    axes[2].set(xscale="log", xlim=(e[keep][0], max(e[-1], ARTICLE_EPOCHS["overfit_onset"] * 1.2)), xlabel=f"epoch "
                f"(1 epoch = {r['n_train'] // r['batch_size']} steps of batch {r['batch_size']}; log scale)")
    axes[0].set_title(f"Training phases: {r['dataset']}, {r['n_train']} training examples, {r['optimizer']} lr "
                      f"{r['lr']:g}\n(shaded: 95% CI of each boundary; dotted: the article's)")
    return plots.save(fig, path)


def plot_init(r: dict, path: Path) -> Path:
    """Initial loss per seed vs ln C, and the distribution of the largest softmax probability."""
    inits, c = list(dict.fromkeys((r["init"], r["contrast_init"]))), r["num_classes"]
    fig, (ax0, ax1) = plots.subplots(1, 2, figsize=(11, 4))
    for i, name in enumerate(inits):
        loss, hist = r[f"init_{name}/loss"], r[f"init_{name}/max_prob_hist"].sum(0)
        ax0.scatter(i + np.linspace(-0.15, 0.15, loss.size), loss, s=12, alpha=0.7, label=f"{name} init (dots: seeds)")
        ax1.stairs(hist / hist.sum(), np.linspace(0, 1, hist.size + 1), label=f"{name} init", fill=False, lw=1.5)
    ax0.axhline(math.log(c), color="k", ls="--", lw=1, label=f"ln {c} = {math.log(c):.3f} (uniform prediction)")
    ax0.set_xticks(range(len(inits)), [f"{n} init" for n in inits])
    ax0.set(xlim=(-0.5, len(inits) - 0.5), ylabel="initial test loss (nats)", title="Loss of the untrained net")
    ax1.axvline(1 / c, color="k", ls="--", lw=1, label=f"1/C = {1 / c:.2f} (uniform)")
    ax1.set(xlabel="largest softmax probability of a test example", ylabel="fraction of test examples (all seeds)",
            title="How confident the untrained net is")
    for ax in (ax0, ax1):
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Detects the phases per seed; writes phases.json, phases.png and init.png; returns M10 and M6."""
    r = store.read_npz(out_dir / "curves.npz")
    r |= {k: v.item() for k, v in r.items() if v.ndim == 0}  # the setting's facts
    n, c, init, contrast = r["train_loss"].shape[0], r["num_classes"], r["init"], r["contrast_init"]
    rows = [detect_phases(r["epochs"], *(r[m][i] for m in ("train_loss", "test_loss", "grad_norm", "test_acc")))
            for i in range(n)]
    det = {k: np.array([row[k] for row in rows]) for k in rows[0]}  # (seeds,) each
    frac = {k: stats.fraction_ci(v) for k, v in det.items() if v.dtype == bool}  # fractions of seeds
    geo = {k: geometric_ci(det[k]) for k in (*ARTICLE_EPOCHS, "acc_peak", "grad_ratio", "grad_ratio_phase3")}
    nets = {f"{i}/{k}": stats.bootstrap_ci(r[f"init_{i}/{k}"]) for i in dict.fromkeys((init, contrast))
            for k in ("loss", "acc", "max_prob", "kl_uniform", "logit_std", "top_class_share")}
    loss0, acc0 = (stats.bootstrap_ci(r[k][:, 0]) for k in ("test_loss", "test_acc"))  # the sweep's own step 0
    plot_curves(r, geo, out_dir / "phases.png")
    plot_init(r, out_dir / "init.png")
    store.write_json(out_dir / "phases.json", {"per_seed": det,
                                               **{k: v.as_dict() for k, v in (frac | geo | nets).items()}})
    m10 = (f"fraction of {n} seeds showing fast → gradients shrink → overfitting ({r['n_train']} train examples): "
           + "; ".join(f"{k.replace('_', ' ')} {v.text()}" for k, v in (frac | geo).items()) + " (ends, peak: epochs)")
    m6 = (f"initial test loss vs ln {c} = {math.log(c):.3f}, accuracy {acc0.text()} vs {1 / c:.2f} (the sweep's step "
          f"0, {init} init); untrained nets: " + "; ".join(f"{k} {v.text()}" for k, v in nets.items()))
    return [m10_verdict(frac["all_phases"], geo["fast_end"], geo["overfit_onset"], m10), m6_verdict(loss0, acc0, c, m6)]
