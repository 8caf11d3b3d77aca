"""Without a nonlinearity depth adds nothing (M4); how many ReLU units are active (M5).

Claims (experiments/claims.toml): M4 "Without a nonlinear activation the whole network, whatever its depth,
reduces to one linear transformation."; M5 "ReLU gives sparse activations: only ~50% of neurons are active".
Trained: one MNIST-1D sweep per model, all alike (Adam, Greydanus & Kobak 2024): logistic regression, deep
linear nets (LeCun init: He's gain of 2 would grow their logits as 2^depth) and ReLU nets of the same shapes.
Measured: M4, the float64 product W1·…·WL and effective bias against each linear net's test logits (Saxe et
al. 2014), final test accuracy paired by seed; M5, inside training (the hook `measures.relu_activity`), active
(example, unit) pairs and dead units per layer at step 0 and at the end (Glorot et al. 2011; Lu et al. 2020).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from netalchemy import config as config_lib, data as data_lib, measures, per_run, plots, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M4", "M5")
COLLAPSE_TOL = 1e-4  # float32 logits: relative error of the collapsed map must be below this
EQUIV_MARGIN = 0.02  # accuracy: "the same" if the CI of the difference lies within ±2 points
ACTIVE_BAND = (0.35, 0.65)  # "~50% active": the CI of the active fraction lies within this band
REFERENCE_ACC = {"logistic regression (Greydanus & Kobak)": 0.32, "MLP (Greydanus & Kobak)": 0.68}
STAGES = ("init", "trained")  # the ReLU nets' activity at step 0 and after the last step


def _base(*, steps: int, eval_every: int, seeds: int) -> Config:
    return Config(train=TrainConfig(steps=steps, batch_size=100, eval_every=eval_every, chunk_steps=steps),
                  seeds=SeedsConfig(n=seeds))


@dataclasses.dataclass(frozen=True)
class Settings:
    base: Config = _base(steps=6000, eval_every=500, seeds=32)  # Greydanus & Kobak: Adam lr 1e-2, batch 100
    depths: tuple[int, ...] = (1, 2, 3)  # hidden layers of the linear and ReLU nets
    width: int = 100
    linear_init: str = "lecun"

    def __post_init__(self) -> None:
        config_lib.check(bool(self.depths) and min(self.depths) >= 1, "depths: give at least one depth, each >= 1")
        config_lib.check(self.width >= 1, "width must be >= 1")
        config_lib.check(not self.base.model.batch_norm, "base.model.batch_norm must be false (the collapse: dense)")


PROFILES = {"tiny": Settings(_base(steps=200, eval_every=100, seeds=3), depths=(2,), width=16),
            "quick": Settings(_base(steps=2000, eval_every=500, seeds=8), depths=(1, 2)), "full": Settings()}


def models(s: Settings) -> dict[str, ModelConfig]:
    """name -> model: "logreg", "linear-d" and "relu-d" for each depth d."""
    m, hidden = s.base.model, lambda d: (s.width,) * d
    return {"logreg": dataclasses.replace(m, hidden=()),
            **{f"linear-{d}": dataclasses.replace(m, hidden=hidden(d), activation="linear", init=s.linear_init)
               for d in s.depths},
            **{f"relu-{d}": dataclasses.replace(m, hidden=hidden(d), activation="relu") for d in s.depths}}


def collapse(params) -> tuple[np.ndarray, np.ndarray]:
    """The one affine map a linear net computes, in float64: logits = x @ W + b. `params`: its layers, each
    leaf with a leading runs axis; W = W1 @ … @ WL (runs, in, classes), b = (…(b1 @ W2 + b2) @ W3 …) + bL."""
    w, b = np.asarray(params[0].w, np.float64), np.asarray(params[0].b, np.float64)
    for layer in params[1:]:
        lw = np.asarray(layer.w, np.float64)
        w, b = w @ lw, np.einsum("si,sio->so", b, lw) + np.asarray(layer.b, np.float64)
    return w, b


def collapse_check(final, x: np.ndarray, y: np.ndarray, *, cfg: Config) -> dict[str, np.ndarray]:
    """Per run of `final` (.params, .bn_state with a leading runs axis): the collapsed map's relative logit error
    against the net's own (`per_run.logits`), its accuracy, and its agreement with the net's predictions."""
    net = np.asarray(per_run.logits(final, x, cfg=cfg), np.float64)  # (runs, examples, classes)
    w, b = collapse(final.params)
    flat = np.einsum("ei,sio->seo", np.asarray(x, np.float64), w) + b[:, None, :]
    err = np.max(np.abs(net - flat), axis=(1, 2)) / np.max(np.abs(net), axis=(1, 2))
    return {"collapse_error": err, "collapsed_acc": np.mean(flat.argmax(-1) == y, axis=1),
            "collapse_agreement": np.mean(flat.argmax(-1) == net.argmax(-1), axis=1)}


def measure(s: Settings, out_dir: Path) -> dict[str, np.ndarray]:
    """One resumable sweep per model (`out_dir/<model>`): final accuracies and losses (NaN where diverged), the
    collapse of linear nets, `measures.relu_activity` of ReLU nets per stage (seeds, layers), and the facts."""
    dataset = data_lib.load(s.base.data)
    out = dict(models=np.array(list(models(s))), depths=np.array(s.depths), width=s.width, steps=s.base.train.steps,
               num_classes=dataset.num_classes, dataset=dataset.name, optimizer=s.base.optim.name, lr=s.base.optim.lr)
    for name, model in models(s).items():
        cfg = dataclasses.replace(s.base, model=model)
        hook = measures.relu_activity if model.activation == "relu" and model.hidden else None
        result = sweep.run(cfg, out_dir=out_dir / name, dataset=dataset, progress=False, measure=hook)
        diverged = result.history["diverged"][:, -1].astype(bool)
        out |= {f"{name}/{m}": np.where(diverged, np.nan, result.history[m][:, -1])
                for m in ("test_acc", "train_acc", "test_loss", "train_loss")}
        if model.activation == "linear" and model.hidden:
            check = collapse_check(result.final, dataset.x_test, dataset.y_test, cfg=cfg)
            out |= {f"{name}/{k}": v for k, v in check.items()}
        out |= {f"{name}/{k}_{stage}": v[:, i] for k, v in result.measures.items() for stage, i in zip(STAGES, (0, -1))}
    return out


def run(s: Settings, out_dir: Path) -> None:
    """Trains and measures every model: results.npz, cached by `s` (each sweep is resumable in its folder)."""
    store.cached("results.npz", s, lambda: measure(s, out_dir), folder=out_dir)


COLLAPSE = Rule("the worst relative error of the collapsed map W1·…·WL (+ effective bias) against the linear "
                "net's logits, over seeds and depths", COLLAPSE_TOL, "below",
                "float32 round-off of a product of a few matrices stays far below it; a real mismatch does not")
SAME = Rule("the paired (same seed) test-accuracy difference linear − logistic regression",
            (-EQUIV_MARGIN, EQUIV_MARGIN), "inside",
            "two points of accuracy: the same function class reaching about the same solution")
RELU_BETTER = Rule("the paired test-accuracy difference ReLU − linear at the same depth", EQUIV_MARGIN, "above",
                   "more than the equivalence margin: the nonlinearity adds what depth alone cannot")
ACTIVE = Rule("the active fraction of a hidden layer of a ReLU net", ACTIVE_BAND, "inside",
              "'~50% active' read generously: between about a third and two thirds")


def m4_verdict(collapse_error: float, linear_vs_logreg: list[stats.CI], relu_vs_linear: list[stats.CI],
               depths: Sequence[int] | None = None, measurement: str = "", value: stats.CI | None = None,
               seeds: Mapping[str, int] | None = None) -> Verdict:
    """M4 from the worst collapse error (exact, no seeds) and one accuracy-difference CI per depth, over
    `seeds[part name]` paired seeds (the combination: `how` below)."""
    depths, n = list(depths or range(1, len(linear_vs_logreg) + 1)), seeds or {}
    err = float(collapse_error) if np.isfinite(collapse_error) else np.finfo(np.float64).max  # NaN: no collapse
    parts = [Part("collapse", COLLAPSE, stats.CI(err, err, err))]
    parts += [Part(f"same@{d}", SAME, ci, n=n.get(f"same@{d}")) for d, ci in zip(depths, linear_vs_logreg)]
    parts += [Part(f"relu@{d}", RELU_BETTER, ci, n=n.get(f"relu@{d}"), can_contradict=False)
              for d, ci in zip(depths, relu_vs_linear)]

    def combine(d):  # a relu@ part cannot be contradicted: only same@ parts make "depends"
        if d["collapse"] != "supported":
            return d["collapse"]
        rest = [v for k, v in d.items() if k != "collapse"]
        return "depends" if "contradicted" in rest else "supported" if set(rest) <= {"supported"} else "inconclusive"
    return judge("M4", parts, combine, how="contradicted iff collapse is; depends iff collapse holds but some "
                 "same@depth is contradicted; supported iff every part is supported; else inconclusive",
                 measurement=measurement, value=value or (linear_vs_logreg[0] if linear_vs_logreg else None),
                 figure="accuracy.png", unit="accuracy")[0]


def m5_verdict(init_cis: list[stats.CI], trained_cis: list[stats.CI], measurement: str = "",
               value: stats.CI | None = None, seeds: Mapping[str, int] | None = None) -> Verdict:
    """M5 from the per-layer active-fraction CIs at init and after training, over `seeds[part name]` finite
    seeds (the combination: `how` below)."""
    parts = [Part(f"{stage} {i}", ACTIVE, ci, n=(seeds or {}).get(f"{stage} {i}"))
             for stage, cis in zip(STAGES, (init_cis, trained_cis)) for i, ci in enumerate(cis)]

    def combine(d):
        def status(stage):
            got = [v for k, v in d.items() if k.startswith(stage + " ")]
            return "out" if "contradicted" in got else "in" if got and set(got) == {"supported"} else "?"
        a, b = status("init"), status("trained")
        return ("supported" if a == b == "in" else "depends" if {a, b} == {"in", "out"}
                else "contradicted" if a == b == "out" else "inconclusive")
    return judge("M5", parts, combine, how="per stage (init, trained), in iff every layer is supported, out iff "
                 "some layer is contradicted; supported iff in at both, depends iff in at one and out at the other, "
                 "contradicted iff out at both, else inconclusive", measurement=measurement,
                 value=value or (trained_cis[0] if trained_cis else None), figure="activity.png",
                 unit="fraction active")[0]


def plot_accuracy(r: dict, cis: dict[str, stats.CI], path: Path) -> Path:
    """Final test accuracy per model with 95% CI whiskers and seeds as dots; collapsed-map accuracy as crosses."""
    names = list(r["models"])
    fig, ax = plots.subplots(figsize=(max(6, 0.9 * len(names) + 2), 4.5))
    for i, name in enumerate(names):
        acc, ci = r[f"{name}/test_acc"], cis[f"test_acc/{name}"]
        ax.bar(i, ci.estimate, color={"logreg": "C0", "linear": "C1", "relu": "C2"}[name.split("-")[0]], alpha=0.8)
        ax.errorbar(i, ci.estimate, [[ci.estimate - ci.low], [ci.high - ci.estimate]], color="k", capsize=4)
        ax.scatter(i + np.linspace(-0.25, 0.25, acc.size), acc, s=6, color="k", alpha=0.4, zorder=3)
        if f"collapsed_acc/{name}" in cis:
            ax.plot(i + 0.3, cis[f"collapsed_acc/{name}"].estimate, "rx", ms=8,
                    label="collapsed W1·…·WL (mean)" if i == 1 else None)
    for (label, acc), ls in zip(REFERENCE_ACC.items(), ("--", "-.")):
        ax.axhline(acc, color="grey", ls=ls, lw=1, label=f"{label}: {acc:.2f}")
    ax.axhline(1 / r["num_classes"], color="grey", ls=":", lw=1, label="chance")
    ax.set_xticks(range(len(names)), [n.replace("-", "\n") + (" hidden" if "-" in n else "") for n in names])
    ax.set(ylabel="final test accuracy (bars: mean, 95% CI; dots: seeds)", ylim=(0, 1),
           title=f"Depth without nonlinearity: {r['dataset']}, width {r['width']}, {r['optimizer']} lr {r['lr']:g}, "
                 f"{r['steps']} steps")
    ax.legend(fontsize=7, loc="upper left")
    return plots.save(fig, path)


def plot_activity(r: dict, cis: dict[str, stats.CI], path: Path) -> Path:
    """Active fraction and dead-unit fraction per ReLU layer, at init vs trained, 95% CIs."""
    layers = [k.split("/", 1)[1] for k in cis if k.startswith("active_init/relu-")]  # "relu-d/layer j"
    fig, axes = plots.subplots(1, 2, figsize=(max(8, 1.2 * len(layers) + 4), 4))
    for ax, kind in zip(axes, ("active", "dead")):
        for k, (stage, color) in enumerate(zip(STAGES, ("C0", "C3"))):
            est, low, high = np.array([cis[f"{kind}_{stage}/{layer}"] for layer in layers]).T  # (layers,) each
            ax.bar(np.arange(len(layers)) + (k - 0.5) * 0.38, est, 0.38, yerr=[est - low, high - est], capsize=3,
                   alpha=0.8, color=color, label=stage)
        ax.set_xticks(range(len(layers)), [layer.replace("/", "\n") for layer in layers])
        ax.set_ylabel({"active": "fraction of (example, unit) pairs active", "dead": "fraction of units"}[kind])
    axes[0].axhspan(*ACTIVE_BAND, color="grey", alpha=0.15, label=f"'~50%' band {ACTIVE_BAND}")
    axes[0].axhline(0.5, color="grey", ls="--", lw=0.8)
    dead = max(float(np.nanmax(r[k])) for k in r if k.startswith("relu-") and "/dead_" in k)
    axes[0].set(ylim=(0, 1), title="Active ReLU units per test example\n(mean, 95% CI over seeds)")
    axes[1].set(ylim=(0, max(0.05, 1.2 * dead)), title="Dead ReLU units\n(never active on the test set)")
    for ax in axes:
        ax.legend(fontsize=8)
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Writes summary.json (every CI), accuracy.png and activity.png; returns the M4 and M5 verdicts."""
    r = store.read_npz(out_dir / "results.npz")
    r |= {k: v.item() for k, v in r.items() if v.ndim == 0}  # the setting's facts
    depths, relus = [int(d) for d in r["depths"]], [f"relu-{d}" for d in r["depths"]]
    acc = lambda name: r[f"{name}/test_acc"]  # (seeds,)
    both = lambda a, b: int(np.isfinite(acc(a) - acc(b)).sum())  # seeds finite in both: a paired CI's n
    cis, seeds = {f"test_acc/{n}": stats.bootstrap_ci(acc(n)) for n in r["models"]}, {}
    for d in depths:  # paired by seed: the same minibatch order
        seeds |= {f"same@{d}": both(f"linear-{d}", "logreg"), f"relu@{d}": both(f"relu-{d}", f"linear-{d}")}
        cis |= {f"linear_minus_logreg/{d}": stats.paired_bootstrap_ci(acc(f"linear-{d}"), acc("logreg")),
                f"relu_minus_linear/{d}": stats.paired_bootstrap_ci(acc(f"relu-{d}"), acc(f"linear-{d}")),
                f"p_linear_beats_logreg/{d}": stats.probability_of_improvement_ci(acc(f"linear-{d}"), acc("logreg")),
                f"collapsed_acc/linear-{d}": stats.bootstrap_ci(r[f"linear-{d}/collapsed_acc"])}
    cis |= {f"{kind}_{stage}/{n}/layer {j + 1}": stats.bootstrap_ci(v) for kind in ("active", "dead")
            for stage in STAGES for n in relus for j, v in enumerate(r[f"{n}/{kind}_{stage}"].T)}
    layers = {s: [v for n in relus for v in r[f"{n}/active_{s}"].T] for s in STAGES}  # M5's parts, (seeds,) each
    seeds |= {f"{s} {i}": int(np.isfinite(v).sum()) for s in STAGES for i, v in enumerate(layers[s])}
    pooled = lambda s: np.hstack([r[f"{n}/active_{s}"] for n in relus]).mean(1)  # (seeds,): over every ReLU layer
    cis |= {f"active_{s}_pooled": stats.bootstrap_ci(pooled(s)) for s in STAGES}
    err = max(float(np.max(r[f"linear-{d}/collapse_error"])) for d in depths)
    agreement = min(float(np.min(r[f"linear-{d}/collapse_agreement"])) for d in depths)
    plot_accuracy(r, cis, out_dir / "accuracy.png")
    plot_activity(r, cis, out_dir / "activity.png")
    store.write_json(out_dir / "summary.json", {"collapse_error_max": err, "collapse_agreement_min": agreement,
                                                **{k: ci.as_dict() for k, ci in cis.items()}})
    pick = lambda prefix: [ci for k, ci in cis.items() if k.startswith(prefix)]
    say = lambda prefix: ", ".join(f"{k.split('/', 1)[1]}: {c.text(2)}" for k, c in cis.items() if k.startswith(prefix))
    same = pick("linear_minus_logreg/")
    worst = max(range(len(depths)), key=lambda i: abs(same[i].estimate))
    m4 = (f"test accuracy, linear − logistic regression (paired by seed), worst depth ({depths[worst]} hidden); all "
          f"depths: {say('linear_minus_logreg/')}; P(linear > logreg) {say('p_linear_beats_logreg/')}; logreg acc "
          f"{cis['test_acc/logreg'].text()}; ReLU − linear {say('relu_minus_linear/')}; collapsed map: max rel. "
          f"logit error {err:.1e}, prediction agreement ≥ {agreement:.4f}")
    m5 = (f"fraction of ReLU units active on a test example after training, mean over layers of {', '.join(relus)} "
          f"(per layer {say('active_trained/')}); at init {cis['active_init_pooled'].text()} (per layer "
          f"{say('active_init/')}); dead units after training ≤ {max(c.estimate for c in pick('dead_trained/')):.3f}")
    return [m4_verdict(err, same, pick("relu_minus_linear/"), depths, m4, same[worst], seeds),
            m5_verdict(pick("active_init/"), pick("active_trained/"), m5, cis["active_trained_pooled"], seeds)]
