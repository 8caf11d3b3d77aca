"""Training phases (fast learning → fine tuning → overfitting) and the untrained net.

Claims (experiments/claims.toml): M10, fast learning (epochs 1–50), fine tuning (50–500, gradients shrink), overfitting
(500+); M6, random initial weights are pure chaos. Trained: one sweep of seeds, minibatch SGD on a MNIST-1D subset small
enough to overfit, evaluated once an epoch. Per seed, on log-smoothed curves (`netalchemy.curves`): the end of fast
learning and the overfitting onset. An epoch's length depends on the dataset, so M10 is judged on their ratio (the
article's 500 / 50 = 10). M6: the sweep's untrained nets, and the same draws with another output-layer gain.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import curves, data as data_lib, mlp, per_run, plots, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M10", "M6")
ARTICLE_EPOCHS = {"fast_end": 50.0, "overfit_onset": 500.0}  # the article's boundaries (drawn, not judged)
BOUNDARY_NAMES = {"fast_end": "end of fast learning", "overfit_onset": "overfitting onset"}
RATIO_BAND = (10 ** 0.5, 10 ** 1.5)  # the ratios whose nearest power of ten is the article's 500 / 50 = 10
RATE_RATIO = 3.0  # phase 1 must lose loss ≥ 3× faster per epoch than phase 2
OVERFIT_RISE, TRAIN_FALL = 0.05, 0.1  # test loss ends ≥ 5% above its minimum, train loss ≥ 10% below its value
MOST = 0.5  # "most seeds": the CI of the fraction of seeds lies above 0.5
LOSS_TOLERANCE, ACC_TOLERANCE = 0.1, 0.05  # M6: loss CI within ln C × (1 ± 0.1), accuracy CI within 1/C ± 0.05
GAINS = {"he": 2.0, "lecun": 1.0}  # the gain `mlp.init` gives every layer, by `model.init`
JUDGED_UNDER = ("M6 is judged on the sweep's own init, the net training starts from; He et al. 2015 give the ReLU "
                "gain to every layer fed by ReLUs, the output layer included. Rescaling the output layer changes no "
                "prediction (biases start at 0): only how confident the wrong answers are differs")


def _profile(train_size: int, batch: int, *, epochs: int, seeds: int, hidden=(100, 100)) -> Config:
    steps = epochs * (train_size // batch)  # plain minibatch SGD ("gradient descent"); grad_norm: a phase measure
    train = TrainConfig(steps, batch, eval_every=train_size // batch, chunk_steps=min(steps, 5000), grad_norm=True)
    return Config(model=ModelConfig(hidden=hidden), optim=OptimConfig(name="sgd", lr=0.02), train=train,
                  data=DataConfig(train_size=train_size), seeds=SeedsConfig(n=seeds))


@dataclasses.dataclass(frozen=True)
class Settings:
    base: Config = _profile(500, 50, epochs=2000, seeds=32)  # 2000 epochs of 10 steps
    contrast_output_gain: float = 1.0  # M6 also reports the untrained nets with this gain on the output layer


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


def with_output_gain(params: tuple, gain: float, own: float) -> tuple:
    """The same nets with the output layer's weights ~ N(0, gain / fan_in) instead of N(0, own / fan_in)."""
    *hidden, out = params
    return (*hidden, out._replace(w=out.w * math.sqrt(gain / own)))


def measure(s: Settings, sweep_dir: Path) -> dict[str, np.ndarray]:
    """Curves (seeds, evaluations) over `epochs`; `untrained` per output-layer gain (`out_gain_<g>/<stat>`); facts."""
    cfg, dataset = s.base, data_lib.load(s.base.data)
    result = sweep.run(cfg, out_dir=sweep_dir, dataset=dataset, progress=False)
    (n_train, features), classes = dataset.x_train.shape, dataset.num_classes
    out = {"epochs": result.history["step"][0] / (n_train // cfg.train.batch_size), "seeds": result.seeds,
           **{m: result.history[m] for m in ("train_loss", "test_loss", "train_acc", "test_acc", "grad_norm")}}
    params, bn_state = sweep.initial_params(cfg, result.seeds, in_features=features, num_classes=classes)  # step 0
    x, y, own = jnp.asarray(dataset.x_test), jnp.asarray(dataset.y_test), GAINS[cfg.model.init]
    for gain in dict.fromkeys((own, s.contrast_output_gain)):
        nets = (with_output_gain(params, gain, own), bn_state)
        out |= {f"out_gain_{gain:g}/{k}": v for k, v in per_run.map_runs(untrained, nets, x, y, cfg=cfg).items()}
    return out | dict(n_train=n_train, batch_size=cfg.train.batch_size, num_classes=classes, own_gain=own,
                      contrast_gain=s.contrast_output_gain, init=cfg.model.init, optimizer=cfg.optim.name,
                      lr=cfg.optim.lr, dataset=dataset.name)


def run(s: Settings, out_dir: Path) -> None:
    """Trains every seed (resumable sweep in `out_dir/sweep`) and measures: curves.npz, cached by `s`."""
    store.cached("curves.npz", s, lambda: measure(s, out_dir / "sweep"), folder=out_dir)


def detect_phases(epochs: np.ndarray, train_loss: np.ndarray, test_loss: np.ndarray,
                  grad_norm: np.ndarray) -> dict[str, float | bool]:
    """One seed's boundaries (epochs), their ratio and the phase checks (NaN or False where undefined)
    from its 1-D curves over `epochs`. `phases` (fast learning, then overfitting) is what `MOST_SEEDS` counts."""
    out = dict.fromkeys(("fast_end", "overfit_onset", "onset_over_fast_end", "rate_ratio", "grad_ratio", "test_rise"),
                        math.nan)
    out |= dict.fromkeys(("fast", "overfits", "phases", "grad_shrinks"), False)
    if not (np.all(np.isfinite(train_loss)) and np.all(np.isfinite(test_loss))):
        return out  # a diverged seed: no phases
    tr, te, gn = (curves.smooth_log(epochs, v) for v in (train_loss, test_loss, grad_norm))
    knee, onset, fast_rate, slow_rate = curves.phase_boundaries(epochs, tr, te)
    out |= dict(overfit_onset=float(epochs[onset]), test_rise=float(te[-1] / te[onset] - 1.0))
    out["overfits"] = bool(onset < len(te) - 1 and out["test_rise"] >= OVERFIT_RISE
                           and tr[-1] <= (1.0 - TRAIN_FALL) * tr[onset])
    if knee < 0:
        return out  # no room for a fast phase before the onset
    out |= dict(fast_end=float(epochs[knee]), rate_ratio=fast_rate / slow_rate if slow_rate > 0 else math.inf,
                grad_ratio=float(gn[onset] / gn[knee]))
    out |= dict(fast=bool(fast_rate > 0 and out["rate_ratio"] >= RATE_RATIO), grad_shrinks=out["grad_ratio"] < 1.0)
    out["phases"] = out["fast"] and out["overfits"]
    out["onset_over_fast_end"] = out["overfit_onset"] / out["fast_end"] if out["phases"] else math.nan
    return out


MOST_SEEDS = Rule(
    f"the fraction of seeds showing fast learning (the smoothed train loss falls ≥ {RATE_RATIO:g}× faster per epoch "
    f"before its knee than from there to the test-loss minimum), then overfitting (test loss ends ≥ {OVERFIT_RISE:.0%} "
    f"above its minimum, train loss ≥ {TRAIN_FALL:.0%} below its value there) (Wilson interval)", MOST, "above",
    "'the' phases of training should appear in most runs, not a lucky few", unit="fraction of seeds")
GRADIENTS_NOT_JUDGED = ("Gradient shrink not judged: cross-entropy's gradient scales with p − y, which falls with the "
                        "train loss from the knee to the onset, so it holds by construction (shown: grad shrinks; "
                        "grad ratio = norm at the onset ÷ at the knee)")
RATIO = Rule(  # min_n: a CI over 1–2 seeds decides nothing
    "overfitting onset ÷ end of fast learning (geometric mean over the seeds showing both)", RATIO_BAND, "inside",
    "the article's 500 / 50 = 10 is a ratio of round numbers, an order of magnitude: it matches when its nearest "
    "power of ten is 10 (10^0.5 to 10^1.5); a ratio stays put when an epoch holds more or fewer steps", unit="ratio",
    min_n=3)


def m10_verdict(fraction: stats.CI, ratio: stats.CI, *, n_ratio: int | None = None, n: int | None = None,
                measurement: str = "") -> Verdict:
    """M10 from the fraction of the `n` seeds showing the phases and the CI of onset ÷ fast end over `n_ratio` seeds."""
    parts = [Part("most seeds", MOST_SEEDS, fraction, n=n), Part("ratio", RATIO, ratio, n=n_ratio)]

    def combine(d):  # the phases decide; their timing only between supported, depends and inconclusive
        if d["most seeds"] != "supported":
            return d["most seeds"]
        return {"supported": "supported", "contradicted": "depends"}.get(d["ratio"], "inconclusive")
    return judge("M10", parts, combine, how="supported iff both parts are; depends iff most seeds is supported and "
                 "the ratio contradicted (the phases exist, their timing differs); contradicted iff most seeds is; "
                 "else inconclusive", measurement=measurement, figure="phases.png", unit="fraction of seeds")[0]


def m6_verdict(loss: stats.CI, accuracy: stats.CI, num_classes: int, *, convention: str = "the sweep's own init",
               measurement: str = "", n: int | None = None) -> Verdict:
    """M6 from the initial test loss and accuracy CIs (`n` seeds); "depends": at chance yet confidently non-uniform."""
    chance, ln_c = 1.0 / num_classes, math.log(num_classes)
    uniform = Rule(f"the initial test loss ({convention})", (ln_c * (1 - LOSS_TOLERANCE), ln_c * (1 + LOSS_TOLERANCE)),
                   "inside", f"ln C × (1 ± {LOSS_TOLERANCE:g}): the loss of a uniform prediction, give or take",
                   unit="nats")
    at_chance = Rule(f"the initial test accuracy ({convention})", (chance - ACC_TOLERANCE, chance + ACC_TOLERANCE),
                     "inside", f"1/C ± {ACC_TOLERANCE:g}: knows nothing about the labels")

    def combine(d):
        if d["chance"] != "supported":
            return d["chance"]
        above = d["uniform"] == "contradicted" and loss.low > uniform.edges[1]
        return "supported" if d["uniform"] == "supported" else "depends" if above else "inconclusive"
    return judge("M6", [Part("uniform", uniform, loss, n=n), Part("chance", at_chance, accuracy, n=n)], combine,
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
    axes[0].axhline(math.log(r["num_classes"]), color="grey", lw=0.8, ls="--", label="ln(classes)")
    entries = {label: h for ax in axes for h, label in zip(*ax.get_legend_handles_labels())}  # each label once
    fig.legend(entries.values(), entries.keys(), fontsize=7, ncol=2, loc="outside lower center")
    axes[2].set(xscale="log", xlim=(e[keep][0], max(e[-1], ARTICLE_EPOCHS["overfit_onset"] * 1.2)), xlabel=f"epoch "
                f"(1 epoch = {r['n_train'] // r['batch_size']} steps of batch {r['batch_size']}; log scale)")
    axes[0].set_title(f"Training phases: {r['dataset']}, {r['n_train']} training examples, {r['optimizer']} lr "
                      f"{r['lr']:g}\nonset ÷ fast end {geo['onset_over_fast_end'].text(2)} (article 10); shaded: "
                      f"95% CI of each boundary; dotted: the article's")
    return plots.save(fig, path)


def plot_init(r: dict, gains: list[float], path: Path) -> Path:
    """Initial loss per seed vs ln C per output-layer gain, and the distribution of the largest softmax probability."""
    c = r["num_classes"]
    fig, (ax0, ax1) = plots.subplots(1, 2, figsize=(11, 4))
    for i, g in enumerate(gains):
        loss, hist = r[f"out_gain_{g:g}/loss"], r[f"out_gain_{g:g}/max_prob_hist"].sum(0)
        ax0.scatter(i + np.linspace(-0.15, 0.15, loss.size), loss, s=12, alpha=0.7, label=f"output gain {g:g} (seeds)")
        ax1.stairs(hist / hist.sum(), np.linspace(0, 1, hist.size + 1), label=f"output gain {g:g}", fill=False, lw=1.5)
    ax0.axhline(math.log(c), color="k", ls="--", lw=1, label=f"ln {c} = {math.log(c):.3f} (uniform prediction)")
    ax0.axhspan(*(math.log(c) * (1 + t) for t in (-LOSS_TOLERANCE, LOSS_TOLERANCE)), color="k", alpha=0.08, lw=0,
                label=f"ln {c} × (1 ± {LOSS_TOLERANCE:g}): M6's band")
    ax0.set_xticks(range(len(gains)), [f"output gain {g:g}" + " (trained)" * (g == r["own_gain"]) for g in gains])
    ax0.set(xlim=(-0.5, len(gains) - 0.5), ylabel="initial test loss (nats)", title="Loss of the untrained net")
    ax1.axvline(1 / c, color="k", ls="--", lw=1, label=f"1/C = {1 / c:.2f} (uniform)")
    ax1.set(xlabel="largest softmax probability of a test example", ylabel="fraction of test examples (all seeds)",
            title=f"How confident the untrained net is ({r['init']} hidden layers)")
    for ax in (ax0, ax1):
        ax.legend(fontsize=7)
    return plots.save(fig, path)


def m6_judged(nets: dict[float, dict[str, stats.CI]], r: dict) -> Verdict:
    """M6 under the sweep's own init (`nets`' first gain); the other gains' numbers, verdicts and why in its text."""
    c, (own, *others) = r["num_classes"], list(nets)
    name = lambda g: f"output layer gain {g:g}, " + (  # noqa: E731
        f"the sweep's own {r['init']} init" if g == own else "same draws")
    verdict = lambda g, text="": m6_verdict(nets[g]["loss"], nets[g]["acc"], c, convention=name(g),  # noqa: E731
                                            measurement=text, n=int(np.isfinite(r[f"out_gain_{g:g}/loss"]).sum()))
    numbers = "; ".join(f"[{name(g)}] " + ", ".join(f"{k} {v.text()}" for k, v in nets[g].items()) for g in nets)
    contrast = "".join(f". Under output gain {g:g} M6 would be {verdict(g).verdict}" for g in others)
    return verdict(own, f"initial test loss vs ln {c} = {math.log(c):.3f}, accuracy vs {1 / c:.2f}: {numbers}"
                        f"{contrast}. {JUDGED_UNDER}")


def report(out_dir: Path) -> list[Verdict]:
    """Detects the phases per seed; writes phases.json, phases.png and init.png; returns M10 and M6."""
    r = store.read_npz(out_dir / "curves.npz")
    r |= {k: v.item() for k, v in r.items() if v.ndim == 0}  # the setting's facts
    n, gains = r["train_loss"].shape[0], list(dict.fromkeys((r["own_gain"], r["contrast_gain"])))
    rows = [detect_phases(r["epochs"], *(r[m][i] for m in ("train_loss", "test_loss", "grad_norm"))) for i in range(n)]
    det = {k: np.array([row[k] for row in rows]) for k in rows[0]}  # (seeds,) each
    frac = {k: stats.fraction_ci(v) for k, v in det.items() if v.dtype == bool}  # fractions of seeds
    geo = {k: stats.geometric_ci(det[k]) for k in ("onset_over_fast_end", *ARTICLE_EPOCHS, "grad_ratio")}
    nets = {g: {k: stats.bootstrap_ci(r[f"out_gain_{g:g}/{k}"])
                for k in ("loss", "acc", "max_prob", "kl_uniform", "logit_std", "top_class_share")} for g in gains}
    plot_curves(r, geo, out_dir / "phases.png")
    plot_init(r, gains, out_dir / "init.png")
    cis = frac | geo | {f"out_gain_{g:g}/{k}": v for g in gains for k, v in nets[g].items()}
    store.write_json(out_dir / "phases.json", {"per_seed": det, **{k: v.as_dict() for k, v in cis.items()}})
    listed = lambda cis: "; ".join(f"{k.replace('_', ' ')} {v.text()}" for k, v in cis.items())  # noqa: E731
    m10 = (f"{n} seeds, {r['n_train']} train examples: fractions of seeds {listed(frac)}; geometric means "
           f"{listed(geo)} (boundaries: epochs). {GRADIENTS_NOT_JUDGED}")
    ratio, n_ratio = geo["onset_over_fast_end"], int(np.isfinite(det["onset_over_fast_end"]).sum())
    return [m10_verdict(frac["phases"], ratio, n_ratio=n_ratio, n=n, measurement=m10), m6_judged(nets, r)]
