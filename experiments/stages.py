"""Layers as stages (claims M14, A5): linear probes per layer, and linear CKA within and across seeds.

The essay likens the layers to the stages of the alchemical work — nigredo, albedo,
citrinitas, rubedo — and the structure shared by different runs to "homology". Here a
4-hidden-layer MLP is trained on MNIST-1D over many seeds (one `sweep.run`); each layer's
representation of the data (`per_run.layers`) is read out with a ridge probe (Alain & Bengio
2016), at initialization and after training, and compared with linear CKA (Kornblith et al.
2019) between every pair of layers within a net and across seeds. results.npz is a
`store.cached` value keyed by the full settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional, Sequence

import numpy as np

from netalchemy import per_run, plots, probes, spread, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.data import Dataset, load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M14", "A5")
STAGES = ("nigredo", "albedo", "citrinitas", "rubedo")
CORRESPONDENCE_THRESHOLD = 0.75  # share of hidden layers whose best match in another seed is itself


def _base(steps: int, seeds: int, eval_every: int) -> Config:
    return Config(model=ModelConfig(hidden=(100, 100, 100, 100)),
                  train=TrainConfig(steps=steps, eval_every=eval_every, chunk_steps=steps),
                  seeds=SeedsConfig(n=seeds))


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: _base(6000, 16, 500))
    probe_l2: float = 1e-3  # ridge strength of the linear probes (× n)
    cka_examples: int = 1000  # test examples the CKA is computed on
    cka_pairs: int = 24  # seed pairs compared across nets (at most)


PROFILES = {
    "tiny": Settings(base=_base(60, 3, 30), cka_examples=200, cka_pairs=3),
    "quick": Settings(base=_base(1500, 8, 250), cka_examples=500, cka_pairs=12),
    "full": Settings(),
}


def layer_names(depth: int) -> list[str]:
    """Names of the input, the `depth` hidden layers (the four stages when there are four) and the logits."""
    hidden = [STAGES[i] if depth == len(STAGES) else f"hidden {i + 1}" for i in range(depth)]
    return ["input", *hidden, "logits"]


# ----------------------------------------------------------------------------- measurements


class Nets(NamedTuple):
    """Parameters of several runs (leading runs axis), as `per_run` reads them."""

    params: Any
    bn_state: Any


def _probe(train_features, test_features, y_train, y_test, *, num_classes: int, l2: float):
    return probes.ridge_probe_accuracy(train_features, y_train, test_features, y_test, num_classes=num_classes, l2=l2)


def probe_accuracies(nets: Nets, data: Dataset, cfg: Config, *, l2: float) -> np.ndarray:
    """(runs, layers) test accuracy of a ridge probe fitted on each layer's training representation."""
    train_reps, test_reps = (per_run.layers(nets, x, cfg=cfg) for x in (data.x_train, data.x_test))
    return np.stack([per_run.map_runs(_probe, (a, b), data.y_train, data.y_test, num_classes=data.num_classes, l2=l2)
                     for a, b in zip(train_reps, test_reps)], axis=1)


def cka_matrix(reps_a: Sequence[np.ndarray], reps_b: Sequence[np.ndarray]) -> np.ndarray:
    """(layers, layers) linear CKA between every layer of one net and every layer of another."""
    return np.array([[probes.linear_cka(a, b) for b in reps_b] for a in reps_a])


def correspondence(cross: np.ndarray) -> float:
    """Share of hidden layers whose most CKA-similar layer in the other net is the same layer."""
    hidden = range(1, cross.shape[0] - 1)
    return float(np.mean([np.nanargmax(cross[i]) == i for i in hidden]))


def measure(s: Settings, out_dir: Path) -> dict[str, np.ndarray]:
    """Trains the sweep (resumable in out_dir/sweep) and measures probes, CKA and churn."""
    cfg, data = s.base, load(s.base.data)
    result = sweep.run(cfg, out_dir=out_dir / "sweep", dataset=data, progress=False)
    init = Nets(*sweep.initial_params(cfg, result.seeds, in_features=data.x_train.shape[1],
                                      num_classes=data.num_classes))
    reps = per_run.layers(result.final, data.x_test[: s.cka_examples], cfg=cfg)  # per layer (runs, examples, width)
    per_seed = [[r[k] for r in reps] for k in range(len(result.seeds))]
    pairs = [(a, b) for a in range(len(per_seed)) for b in range(a + 1, len(per_seed))][: s.cka_pairs]
    churn = spread.churn(result.test_predictions)
    return {"probe_init": probe_accuracies(init, data, cfg, l2=s.probe_l2),
            "probe_trained": probe_accuracies(result.final, data, cfg, l2=s.probe_l2),
            "cka_within": np.stack([cka_matrix(p, p) for p in per_seed]),
            "cka_cross": np.stack([cka_matrix(per_seed[a], per_seed[b]) for a, b in pairs]),
            "pairs": np.array(pairs), "pair_churn": np.array([churn[a, b] for a, b in pairs]),
            "test_acc": result.history["test_acc"][:, -1], "depth": len(cfg.model.hidden)}


def run(s: Settings, out_dir: Path) -> None:
    """Writes results.npz (`store.cached`, keyed by the full settings)."""
    out_dir = Path(out_dir)
    store.cached("results.npz", s, lambda: measure(s, out_dir), folder=out_dir)


# ---------------------------------------------------------------------------- verdict rules

STEP = Rule("the paired (same seed) gain in probe accuracy from one layer to the next", 0.0, "above",
            "any reliable gain: the layer's features are more linearly readable than its input's")
OVERALL = Rule("the paired gain in probe accuracy from the input to the last hidden layer", 0.0, "above",
               "no gain at all over the raw input would mean the layers add no readable features")
HOMOLOGY = Rule("the share of hidden layers whose best CKA match in another seed is the same layer",
                CORRESPONDENCE_THRESHOLD, "above",
                "three layers in four matched to themselves is shared structure, not a chance alignment")


def m14_verdict(probe_trained: np.ndarray, measurement: str = "", figure: Optional[str] = None) -> Verdict:
    """From (seeds, layers) probe accuracies: does each hidden layer beat the one before?

    Supported iff every step is; contradicted iff the overall gain is; otherwise depends
    (abstraction rises, then saturates or falls).
    """
    hidden = probe_trained[:, :-1]  # input and hidden layers (logits excluded)
    parts = [Part(f"layer {k}→{k + 1}", STEP, stats.paired_bootstrap_ci(hidden[:, k + 1], hidden[:, k]))
             for k in range(hidden.shape[1] - 1)]
    parts.append(Part("input→last", OVERALL, stats.paired_bootstrap_ci(hidden[:, -1], hidden[:, 0])))

    def combine(d):
        if all(d[p.name] == "supported" for p in parts[:-1]):
            return "supported"
        return "contradicted" if d["input→last"] == "contradicted" else "depends"

    return judge("M14", parts, combine, how="supported iff every layer step is supported; contradicted iff "
                 "input→last is contradicted; else depends", measurement=measurement, value=parts[-1].ci,
                 figure=figure, unit="accuracy")[0]


def a5_verdict(cross: np.ndarray, probe_verdict: str, measurement: str = "", figure: Optional[str] = None) -> Verdict:
    """Homology (corresponding layers of different seeds are each other's best CKA match) and stages
    (M14 supported or depends): supported iff both hold, contradicted iff neither, else depends."""
    ci = stats.bootstrap_ci([correspondence(c) for c in cross])
    stages_hold = probe_verdict in ("supported", "depends")

    def combine(d):
        if d["homology"] == "supported" and stages_hold:
            return "supported"
        return "contradicted" if d["homology"] == "contradicted" and not stages_hold else "depends"

    return judge("A5", [Part("homology", HOMOLOGY, ci)], combine,
                 how=f"stages hold iff M14 is supported or depends (M14: {probe_verdict}); supported iff homology "
                     f"is supported and stages hold, contradicted iff homology is contradicted and stages do not, "
                     f"else depends", measurement=measurement, figure=figure, unit="share of layers")[0]


# ----------------------------------------------------------------------------- report


def plot_probes(r: dict, names: list[str], path: Path) -> Path:
    """Probe accuracy per layer at initialization and after training (mean, 95% CI over seeds)."""
    fig, ax = plots.subplots(figsize=(7, 4))
    x = np.arange(len(names))
    for key, label in (("probe_init", "at initialization"), ("probe_trained", "after training")):
        cis = [stats.bootstrap_ci(r[key][:, k]) for k in x]
        est = np.array([c.estimate for c in cis])
        ax.errorbar(x, est, yerr=[est - [c.low for c in cis], [c.high for c in cis] - est], marker="o", capsize=3,
                    label=f"{label} (mean, 95% CI over {r[key].shape[0]} seeds)")
    ax.set_xticks(x, names)
    ax.set_ylabel("linear-probe test accuracy")
    ax.set_title("What each layer makes linearly readable (MNIST-1D)")
    ax.legend()
    return plots.save(fig, path)


def plot_cka(r: dict, names: list[str], path: Path) -> Path:
    """Mean linear CKA between layers, within a net and across seeds, as two annotated heat maps."""
    fig, axes = plots.subplots(1, 2, figsize=(12, 4.5))
    x = np.arange(len(names))
    for ax, matrix, title in ((axes[0], np.nanmean(r["cka_within"], 0), "within a net (mean over seeds)"),
                              (axes[1], np.nanmean(r["cka_cross"], 0), "across seeds (mean over pairs)")):
        im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(x, names, rotation=45, ha="right")
        ax.set_yticks(x, names)
        ax.set_title(f"linear CKA {title}")
        for (i, j), value in np.ndenumerate(matrix):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if value < 0.5 else "black")
    fig.colorbar(im, ax=axes, shrink=0.8, label="linear CKA")
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Draws probes.png and cka.png; returns the verdicts for M14 and A5."""
    out_dir = Path(out_dir)
    r = store.read_npz(out_dir / "results.npz")
    names = layer_names(int(r["depth"]))
    plot_probes(r, names, out_dir / "probes.png")
    plot_cka(r, names, out_dir / "cka.png")
    diag = np.mean([np.diag(c)[1:-1].mean() for c in r["cka_cross"]])
    off = np.mean([c[1:-1, 1:-1][~np.eye(c.shape[0] - 2, dtype=bool)].mean() for c in r["cka_cross"]])
    accs = ", ".join(f"{n} {a:.3f}" for n, a in zip(names, r["probe_trained"].mean(0)))
    m14 = m14_verdict(r["probe_trained"], f"probe accuracy gain from input to the last hidden layer (trained; "
                                          f"per layer: {accs})", "probes.png")
    a5 = a5_verdict(r["cka_cross"], m14.verdict,
                    f"share of hidden layers whose best CKA match in another seed is the same layer (same-layer "
                    f"CKA {diag:.2f} vs other layers {off:.2f}; seeds disagree on {np.mean(r['pair_churn']):.1%} "
                    f"of test predictions)", "cka.png")
    return [m14, a5]
