"""Without a nonlinearity depth adds nothing (M4); how many ReLU units are active (M5).

Claims (experiments/claims.toml):
  M4 "Without a nonlinear activation the whole network, whatever its depth, reduces to one
     linear transformation."
  M5 "ReLU gives sparse activations: only ~50% of neurons are active at once."

Measurement: on MNIST-1D, one sweep per model (all seeds in one compiled program,
`sweep.run`): logistic regression (no hidden layer), deep linear nets (`activation=linear`,
`depths` hidden layers of `width` units) and ReLU nets of the same shapes, all trained alike
(Adam, as in Greydanus & Kobak's MNIST-1D MLP). The linear nets use LeCun init (variance
1/fan_in): He's gain of 2 compensates ReLU halving the signal and would make a deep linear
net's initial logits grow as 2^depth.

- M4, the algebra: for every trained linear net the product W1·W2·…·WL and the effective bias
  (b1·W2·…·WL + … + bL), computed in float64, reproduce the net's float32 test logits;
  `collapse_error` = max |net − collapsed| / max |net| over the test set (float32 rounding,
  ~1e-6, expected). The collapsed matrix's test accuracy and its agreement with the net's
  predictions are reported too.
- M4, the consequence: final test accuracy of each linear depth minus logistic regression's,
  paired by seed (same minibatch order), 95% bootstrap CI; and ReLU minus linear at each depth.
- M5: for every ReLU net, the fraction of (test example, unit) pairs with pre-activation > 0,
  per hidden layer, at initialization (the sweep's own initial weights) and after training;
  also the fraction of "dead" units (inactive on every test example).

Verdict rules (rule objects below, unit-tested on synthetic numbers): `m4_verdict`,
`m5_verdict`.

References: Saxe et al. (2014) "Exact solutions to the nonlinear dynamics of learning in
deep linear neural networks"; Glorot, Bordes & Bengio (2011) "Deep sparse rectifier neural
networks" (ReLU sparsity); Lu et al. (2020) "Dying ReLU and initialization"; Greydanus &
Kobak (2024) (MNIST-1D: logistic regression 32%, MLP 68%).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy import mlp, plots, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M4", "M5")

# ---------------------------------------------------------------- rule thresholds
COLLAPSE_TOL = 1e-4  # float32 logits: relative error of the collapsed map must be below this
EQUIV_MARGIN = 0.02  # accuracy: "the same" if the CI of the difference lies within ±2 points
ACTIVE_BAND = (0.35, 0.65)  # "~50% active": the CI of the active fraction lies within this band
REFERENCE_ACC = {"logistic regression (Greydanus & Kobak)": 0.32, "MLP (Greydanus & Kobak)": 0.68}


@dataclass(frozen=True)
class Settings:
    # Greydanus & Kobak's MNIST-1D recipe: Adam lr 1e-2, batch 100, 6000 steps.
    base: Config = field(default_factory=lambda: Config(
        train=TrainConfig(steps=6000, batch_size=100, eval_every=500, chunk_steps=6000),
        seeds=SeedsConfig(n=32)))
    depths: tuple[int, ...] = (1, 2, 3)  # hidden layers of the linear and ReLU nets
    width: int = 100
    linear_init: str = "lecun"

    def __post_init__(self) -> None:
        if not self.depths or min(self.depths) < 1:
            raise config_lib.ConfigError("depths: give at least one depth, each >= 1")
        if self.width < 1:
            raise config_lib.ConfigError("width must be >= 1")
        if self.base.model.batch_norm:
            raise config_lib.ConfigError("base.model.batch_norm must be false (the collapse assumes dense layers)")


def _profile(*, steps: int, eval_every: int, seeds: int, **kw) -> Settings:
    return Settings(base=Config(train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every,
                                                  chunk_steps=steps), seeds=SeedsConfig(n=seeds)), **kw)


PROFILES = {
    "tiny": _profile(steps=200, eval_every=100, seeds=3, depths=(2,), width=16),
    "quick": _profile(steps=2000, eval_every=500, seeds=8, depths=(1, 2)),
    "full": Settings(),
}


def models(s: Settings) -> dict[str, ModelConfig]:
    """name -> model: "logreg", "linear-d" and "relu-d" for each depth d."""
    m = s.base.model
    out = {"logreg": dataclasses.replace(m, hidden=())}
    for d in s.depths:
        out[f"linear-{d}"] = dataclasses.replace(m, hidden=(s.width,) * d, activation="linear", init=s.linear_init)
    for d in s.depths:
        out[f"relu-{d}"] = dataclasses.replace(m, hidden=(s.width,) * d, activation="relu")
    return out


# ---------------------------------------------------------------- measurements


def collapse(params) -> tuple[np.ndarray, np.ndarray]:
    """The one affine map a linear net computes, in float64: logits = x @ W + b.

    `params` are a linear net's layers, each leaf with a leading seeds axis:
    W = W1 @ W2 @ … @ WL (seeds, in, classes), b = (…(b1 @ W2 + b2) @ W3 …) + bL (seeds, classes).
    """
    w = np.asarray(params[0].w, np.float64)
    b = np.asarray(params[0].b, np.float64)
    for layer in params[1:]:
        lw = np.asarray(layer.w, np.float64)
        w = w @ lw
        b = np.einsum("si,sio->so", b, lw) + np.asarray(layer.b, np.float64)
    return w, b


@partial(jax.jit, static_argnames="cfg")
def _logits(params, state, x, *, cfg: ModelConfig):
    return jax.vmap(lambda p, s: mlp.apply(p, s, x, cfg=cfg, train=False)[0])(params, state)


def collapse_check(params, state, x: np.ndarray, y: np.ndarray, *, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """Per seed: relative error of the collapsed map's logits, its accuracy, agreement with the net."""
    net = np.asarray(_logits(params, state, jnp.asarray(x), cfg=cfg), np.float64)  # (seeds, examples, classes)
    w, b = collapse(params)
    flat = np.einsum("ei,sio->seo", np.asarray(x, np.float64), w) + b[:, None, :]
    err = np.max(np.abs(net - flat), axis=(1, 2)) / np.max(np.abs(net), axis=(1, 2))
    return {"collapse_error": err, "collapsed_acc": np.mean(flat.argmax(-1) == y, axis=1),
            "collapse_agreement": np.mean(flat.argmax(-1) == net.argmax(-1), axis=1)}


@partial(jax.jit, static_argnames="cfg")
def relu_activity(params, state, x, *, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
    """(active, dead), each (seeds, hidden layers): the fraction of (example, unit) pairs with
    pre-activation > 0, and the fraction of units with pre-activation ≤ 0 on every example."""
    def one(p, s):
        hidden = mlp.forward(p, s, x, cfg=cfg, train=False).hidden
        on = [c.pre_activation > 0 for c in hidden]  # (examples, units) each
        return (jnp.stack([jnp.mean(a) for a in on]),
                jnp.stack([jnp.mean(~jnp.any(a, axis=0)) for a in on]))
    return jax.vmap(one)(params, state)


def run(s: Settings, out_dir: Path) -> None:
    """One resumable sweep per model (`out_dir/<model>`); writes results.npz and results.json."""
    dataset = data_lib.load(s.base.data)
    n_train, in_features = dataset.x_train.shape
    arrays, names = {}, []
    for name, model in models(s).items():
        cfg = dataclasses.replace(s.base, model=model)
        result = sweep.run(cfg, out_dir=out_dir / name, dataset=dataset, progress=False)
        final_diverged = result.history["diverged"][:, -1].astype(bool)
        for m in ("test_acc", "train_acc", "test_loss", "train_loss"):
            arrays[f"{name}/{m}"] = np.where(final_diverged, np.nan, result.history[m][:, -1])
        params, state = result.final.params, result.final.bn_state
        if model.activation == "linear" and model.hidden:
            for k, v in collapse_check(params, state, dataset.x_test, dataset.y_test, cfg=model).items():
                arrays[f"{name}/{k}"] = v
        if model.activation == "relu" and model.hidden:
            p0, s0 = sweep.initial_params(cfg, result.seeds, in_features=in_features, num_classes=dataset.num_classes)
            for stage, (p, st) in (("init", (p0, s0)), ("trained", (params, state))):
                active, dead = relu_activity(p, st, jnp.asarray(dataset.x_test), cfg=model)
                arrays[f"{name}/active_{stage}"] = np.asarray(active)
                arrays[f"{name}/dead_{stage}"] = np.asarray(dead)
        names.append(name)
    store.write_npz(out_dir / "results.npz", arrays)
    store.write_json(out_dir / "results.json", {
        "models": names, "depths": list(s.depths), "width": s.width, "linear_init": s.linear_init,
        "num_classes": dataset.num_classes, "n_train": n_train, "dataset": dataset.name,
        "optimizer": s.base.optim.name, "lr": s.base.optim.lr, "steps": s.base.train.steps})


# ---------------------------------------------------------------- verdict rules


COLLAPSE = Rule("the worst relative error of the collapsed map W1·…·WL (+ effective bias) against the linear "
                "net's logits, over seeds and depths", COLLAPSE_TOL, "below",
                "float32 round-off of a product of a few matrices stays far below it; a real mismatch does not")
SAME = Rule("the paired (same seed) test-accuracy difference linear − logistic regression", (-EQUIV_MARGIN, EQUIV_MARGIN),
            "inside", "two points of accuracy: the same function class reaching about the same solution")
RELU_BETTER = Rule("the paired test-accuracy difference ReLU − linear at the same depth", EQUIV_MARGIN, "above",
                   "more than the equivalence margin: the nonlinearity adds what depth alone cannot")
ACTIVE = Rule("the active fraction of a hidden layer of a ReLU net", ACTIVE_BAND, "inside",
              "'~50% active' read generously: between about a third and two thirds")


def m4_verdict(collapse_error: float, linear_vs_logreg: list[stats.CI], relu_vs_linear: list[stats.CI],
               depths: Sequence[int] | None = None, measurement: str = "", value: stats.CI | None = None) -> Verdict:
    """M4 from the worst collapse error and the accuracy-difference CIs, one per depth: contradicted
    if the collapse misses; depends if it matches but some linear depth differs from logistic
    regression (same function class, different solution found); supported if every depth is the
    same and ReLU beats linear at every depth; else inconclusive."""
    depths = list(depths or range(1, len(linear_vs_logreg) + 1))
    err = float(collapse_error) if np.isfinite(collapse_error) else np.finfo(np.float64).max  # NaN: no collapse
    parts = [Part("collapse", COLLAPSE, stats.CI(err, err, err))]
    parts += [Part(f"same@{d}", SAME, ci) for d, ci in zip(depths, linear_vs_logreg)]
    parts += [Part(f"relu@{d}", RELU_BETTER, ci, can_contradict=False) for d, ci in zip(depths, relu_vs_linear)]

    def combine(d):
        if d["collapse"] != "supported":
            return "contradicted" if d["collapse"] == "contradicted" else "inconclusive"
        same = [d[f"same@{x}"] for x in depths]
        if "contradicted" in same:
            return "depends"
        rest = same + [d[f"relu@{x}"] for x in depths]
        return "supported" if all(v == "supported" for v in rest) else "inconclusive"

    return judge("M4", parts, combine, how="contradicted iff collapse is; depends iff collapse holds but some "
                 "same@depth is contradicted; supported iff every part is supported; else inconclusive",
                 measurement=measurement, value=value or (linear_vs_logreg[0] if linear_vs_logreg else None),
                 figure="accuracy.png", unit="accuracy")[0]


def m5_verdict(init_cis: list[stats.CI], trained_cis: list[stats.CI], measurement: str = "",
               value: stats.CI | None = None) -> Verdict:
    """M5 from the per-layer active-fraction CIs at init and after training. A stage is 'in' if every
    layer's part is supported, 'out' if some layer's is contradicted; supported if in at both stages,
    depends if in at one and out at the other, contradicted if out at both, else inconclusive."""
    parts = [Part(f"{stage} {i}", ACTIVE, ci) for stage, cis in (("init", init_cis), ("trained", trained_cis))
             for i, ci in enumerate(cis)]

    def combine(d):
        def status(stage):
            got = [v for k, v in d.items() if k.startswith(stage + " ")]
            return "out" if "contradicted" in got else "in" if got and all(v == "supported" for v in got) else "?"
        a, b = status("init"), status("trained")
        if a == b == "in":
            return "supported"
        if {a, b} == {"in", "out"}:
            return "depends"
        return "contradicted" if a == b == "out" else "inconclusive"

    return judge("M5", parts, combine, how="per stage (init, trained), in iff every layer is supported, out iff "
                 "some layer is contradicted; supported iff in at both, depends iff in at one and out at the other, "
                 "contradicted iff out at both, else inconclusive", measurement=measurement,
                 value=value or (trained_cis[0] if trained_cis else None), figure="activity.png",
                 unit="fraction active")[0]


# ---------------------------------------------------------------- figures


def plot_accuracy(r: dict[str, np.ndarray], meta: dict, path: Path) -> Path:
    """Final test accuracy per model with 95% CI whiskers; collapsed-map accuracy as crosses."""
    names = meta["models"]
    colors = {"logreg": "C0", "linear": "C1", "relu": "C2"}
    fig, ax = plots.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
    for i, name in enumerate(names):
        ci = stats.bootstrap_ci(r[f"{name}/test_acc"])
        ax.bar(i, ci.estimate, color=colors[name.split("-")[0]], alpha=0.8)
        ax.errorbar(i, ci.estimate, [[ci.estimate - ci.low], [ci.high - ci.estimate]], color="k", capsize=4)
        ax.scatter(np.full(r[f"{name}/test_acc"].size, i) + np.linspace(-0.25, 0.25, r[f"{name}/test_acc"].size),
                   r[f"{name}/test_acc"], s=6, color="k", alpha=0.4, zorder=3)
        if f"{name}/collapsed_acc" in r:
            c = stats.bootstrap_ci(r[f"{name}/collapsed_acc"])
            ax.plot(i + 0.3, c.estimate, "rx", ms=8, label="collapsed W1·…·WL (mean)" if i == 1 else None)
    for (label, acc), ls in zip(REFERENCE_ACC.items(), ("--", "-.")):
        ax.axhline(acc, color="grey", ls=ls, lw=1, label=f"{label}: {acc:.2f}")
    ax.axhline(1 / meta["num_classes"], color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(names)), [n.replace("-", "\n") + (" hidden" if "-" in n else "") for n in names])
    ax.set_ylabel("final test accuracy (bars: mean, 95% CI; dots: seeds)")
    ax.set_title(f"Depth without nonlinearity: {meta['dataset']}, width {meta['width']}, "
                 f"{meta['optimizer']} lr {meta['lr']:g}, {meta['steps']} steps")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_ylim(0, 1)
    return plots.save(fig, path)


def plot_activity(r: dict[str, np.ndarray], meta: dict, path: Path) -> Path:
    """Active fraction and dead-unit fraction per ReLU layer, at init vs trained, 95% CIs."""
    layers = [(name, j) for name in meta["models"] if name.startswith("relu-")
              for j in range(r[f"{name}/active_init"].shape[1])]
    fig, axes = plots.subplots(1, 2, figsize=(max(8, 1.2 * len(layers) + 4), 4))
    x = np.arange(len(layers))
    for ax, kind, ylabel in ((axes[0], "active", "fraction of (example, unit) pairs active"),
                             (axes[1], "dead", "fraction of units")):
        for k, (stage, color) in enumerate((("init", "C0"), ("trained", "C3"))):
            cis = [stats.bootstrap_ci(r[f"{n}/{kind}_{stage}"][:, j]) for n, j in layers]
            est = np.array([c.estimate for c in cis])
            err = np.array([[c.estimate - c.low for c in cis], [c.high - c.estimate for c in cis]])
            ax.bar(x + (k - 0.5) * 0.38, est, 0.38, yerr=err, capsize=3, color=color, alpha=0.8, label=stage)
        ax.set_xticks(x, [f"{n}\nlayer {j + 1}" for n, j in layers])
        ax.set_ylabel(ylabel)
    axes[0].axhspan(*ACTIVE_BAND, color="grey", alpha=0.15, label=f"'~50%' band {ACTIVE_BAND}")
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8)
    axes[0].set_ylim(0, 1)
    axes[1].set_ylim(0, max(0.05, 1.2 * max(float(np.nanmax(r[f"{n}/dead_{s}"])) for n, _ in layers
                                            for s in ("init", "trained"))))
    for ax in axes:
        ax.legend(fontsize=8)
    axes[0].set_title("Active ReLU units per test example\n(mean, 95% CI over seeds)")
    axes[1].set_title("Dead ReLU units\n(never active on the test set)")
    return plots.save(fig, path)


# ---------------------------------------------------------------- report


def report(out_dir: Path) -> list[Verdict]:
    """Writes summary.json and two figures; returns the M4 and M5 verdicts."""
    r = store.read_npz(out_dir / "results.npz")
    meta = store.read_json(out_dir / "results.json")
    depths = meta["depths"]
    acc = {n: stats.bootstrap_ci(r[f"{n}/test_acc"]) for n in meta["models"]}
    lin_vs_log = [stats.paired_bootstrap_ci(r[f"linear-{d}/test_acc"], r["logreg/test_acc"]) for d in depths]
    relu_vs_lin = [stats.paired_bootstrap_ci(r[f"relu-{d}/test_acc"], r[f"linear-{d}/test_acc"]) for d in depths]
    poi = [stats.probability_of_improvement_ci(r[f"linear-{d}/test_acc"], r["logreg/test_acc"]) for d in depths]
    collapse_err = max(float(np.max(r[f"linear-{d}/collapse_error"])) for d in depths)
    agreement = min(float(np.min(r[f"linear-{d}/collapse_agreement"])) for d in depths)
    collapsed = {d: stats.bootstrap_ci(r[f"linear-{d}/collapsed_acc"]) for d in depths}
    relus = [f"relu-{d}" for d in depths]
    act = {(n, stage): [stats.bootstrap_ci(r[f"{n}/active_{stage}"][:, j]) for j in range(r[f"{n}/active_{stage}"].shape[1])]
           for n in relus for stage in ("init", "trained")}
    dead = {(n, stage): [stats.bootstrap_ci(r[f"{n}/dead_{stage}"][:, j]) for j in range(r[f"{n}/dead_{stage}"].shape[1])]
            for n in relus for stage in ("init", "trained")}
    # One number per seed and stage: the active fraction averaged over every layer of every ReLU net.
    pooled = {stage: stats.bootstrap_ci(np.mean(np.concatenate([r[f"{n}/active_{stage}"] for n in relus], axis=1), axis=1))
              for stage in ("init", "trained")}
    plot_accuracy(r, meta, out_dir / "accuracy.png")
    plot_activity(r, meta, out_dir / "activity.png")
    store.write_json(out_dir / "summary.json", {
        "test_acc": {n: ci.as_dict() for n, ci in acc.items()},
        "linear_minus_logreg": {d: ci.as_dict() for d, ci in zip(depths, lin_vs_log)},
        "relu_minus_linear": {d: ci.as_dict() for d, ci in zip(depths, relu_vs_lin)},
        "p_linear_beats_logreg": {d: ci.as_dict() for d, ci in zip(depths, poi)},
        "collapse_error_max": collapse_err, "collapse_agreement_min": agreement,
        "collapsed_acc": {d: ci.as_dict() for d, ci in collapsed.items()},
        "active": {f"{n}/{stage}": [ci.as_dict() for ci in cis] for (n, stage), cis in act.items()},
        "dead": {f"{n}/{stage}": [ci.as_dict() for ci in cis] for (n, stage), cis in dead.items()},
        "active_pooled": {k: v.as_dict() for k, v in pooled.items()}})

    print("final test accuracy (mean, 95% CI): " + "; ".join(f"{n} {ci.text()}" for n, ci in acc.items()))
    for (n, stage), cis in act.items():
        print(f"{n} {stage}: active per layer " + ", ".join(ci.text() for ci in cis)
              + "; dead " + ", ".join(ci.text() for ci in dead[(n, stage)]))

    worst = max(range(len(depths)), key=lambda i: abs(lin_vs_log[i].estimate))
    w_ci = lin_vs_log[worst]
    m4_measure = (f"test accuracy, linear − logistic regression (paired by seed), worst depth ({depths[worst]} hidden); "
                  f"all depths: " + ", ".join(f"{d}: {ci.text(2)}" for d, ci in zip(depths, lin_vs_log))
                  + "; P(linear > logreg) " + ", ".join(f"{ci.text(2)}" for ci in poi)
                  + f"; logreg acc {acc['logreg'].text()}; ReLU − linear " + ", ".join(ci.text(2) for ci in relu_vs_lin)
                  + f"; collapsed map: max rel. logit error {collapse_err:.1e}, prediction agreement ≥ {agreement:.4f}")
    layer_range = lambda stage: (min(ci.estimate for n in relus for ci in act[(n, stage)]),
                                 max(ci.estimate for n in relus for ci in act[(n, stage)]))
    dead_max = max(ci.estimate for n in relus for ci in dead[(n, "trained")])
    lo_i, hi_i = layer_range("init")
    lo_t, hi_t = layer_range("trained")
    m5_measure = (f"fraction of ReLU units active on a test example after training, mean over layers of "
                  f"{', '.join(relus)} (per layer {lo_t:.2f}–{hi_t:.2f}); at init {pooled['init'].text()} "
                  f"(per layer {lo_i:.2f}–{hi_i:.2f}); dead units after training ≤ {dead_max:.3f} per layer")
    init_cis = [ci for n in relus for ci in act[(n, "init")]]
    trained_cis = [ci for n in relus for ci in act[(n, "trained")]]
    return [m4_verdict(collapse_err, lin_vs_log, relu_vs_lin, depths, m4_measure, w_ci),
            m5_verdict(init_cis, trained_cis, m5_measure, pooled["trained"])]
