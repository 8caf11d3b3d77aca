"""Layers as stages (claims M14, A5): linear probes per layer, and linear CKA within and across seeds.

The essay likens the layers to the stages of the alchemical work — nigredo, albedo, citrinitas,
rubedo — and the structure shared by different runs to "homology". A 4-hidden-layer MLP is trained
on MNIST-1D over many seeds (one `sweep.run`); each layer's representation (`per_run.layers`) is read
out with a ridge probe (Alain & Bengio 2016) after training and — the random-features control: a
probe on an untrained ReLU layer already reads a lot — in the same net at initialization. The
verdicts judge the probe accuracy training added (trained − init, same seed). Layers are compared
with linear CKA (Kornblith et al. 2019) within a net and across every pair of seeds; pairs sharing a
seed are not independent, so the CI resamples seeds (`seed_bootstrap_ci`). results.npz: `store.cached`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, Optional

import numpy as np

from netalchemy import per_run, plots, probes, spread, stats, store, sweep
from netalchemy.config import Config, ModelConfig, SeedsConfig, TrainConfig
from netalchemy.data import Dataset, load
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, judge

CLAIMS = ("M14", "A5")
STAGES = ("nigredo", "albedo", "citrinitas", "rubedo")
MOST_LAYERS = 0.75  # "most" hidden layers or stage transitions: three in four


def _base(steps: int, seeds: int, eval_every: int) -> Config:
    return Config(model=ModelConfig(hidden=(100, 100, 100, 100)),
                  train=TrainConfig(steps=steps, eval_every=eval_every, chunk_steps=steps),
                  seeds=SeedsConfig(n=seeds))


@dataclass(frozen=True)
class Settings:
    base: Config = field(default_factory=lambda: _base(6000, 16, 500))
    probe_l2: float = 1e-3  # ridge strength of the linear probes (× n)
    cka_examples: int = 1000  # test examples the CKA is computed on


PROFILES = {
    "tiny": Settings(base=_base(60, 4, 30), cka_examples=200),
    "quick": Settings(base=_base(1500, 8, 250), cka_examples=500),
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


def seed_bootstrap_ci(values: np.ndarray, pairs: np.ndarray, n_seeds: int) -> stats.CI:
    """BCa CI of the mean of a per-pair statistic `values` (pairs,) over the seed `pairs` (pairs, 2),
    resampling seeds, not pairs: a pair shares the fate of both its seeds. In a resample every two
    draws of distinct seeds count as a pair; a resample of one seed only (chance n·n⁻ⁿ) has no pair
    and counts as the full-sample mean."""
    v = np.full((n_seeds, n_seeds), np.nan)
    v[pairs[:, 0], pairs[:, 1]] = v[pairs[:, 1], pairs[:, 0]] = values  # NaN on the diagonal: no self-pairs

    def mean_over_pairs(draws: np.ndarray, axis: int = -1) -> np.ndarray:  # draws (..., n) seed indices
        m = v[draws[..., :, None].astype(int), draws[..., None, :].astype(int)]  # (..., n, n)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nan_to_num(np.nansum(m, (-2, -1)) / np.isfinite(m).sum((-2, -1)), nan=np.nanmean(v))

    return stats.bootstrap_ci(np.arange(n_seeds), statistic=mean_over_pairs)


def probe_gain(probe_trained: np.ndarray, probe_init: np.ndarray) -> np.ndarray:
    """(seeds, input + hidden layers) probe accuracy training added over the same net at initialization
    (the random-features control; 0 at the input, logits dropped)."""
    return (np.asarray(probe_trained) - np.asarray(probe_init))[:, :-1]


def stage_share(probe_trained: np.ndarray, probe_init: np.ndarray) -> np.ndarray:
    """(seeds,) share of stage transitions (input → first hidden, …, → last hidden) at which the
    `probe_gain` rises: the stage adds readable features that training built."""
    return np.mean(np.diff(probe_gain(probe_trained, probe_init), axis=1) > 0, axis=1)


def measure(s: Settings, out_dir: Path) -> dict[str, np.ndarray]:
    """Trains the sweep (resumable in out_dir/sweep) and measures probes, CKA and churn."""
    cfg, data = s.base, load(s.base.data)
    result = sweep.run(cfg, out_dir=out_dir / "sweep", dataset=data, progress=False)
    init = Nets(*sweep.initial_params(cfg, result.seeds, in_features=data.x_train.shape[1],
                                      num_classes=data.num_classes))
    reps = per_run.layers(result.final, data.x_test[: s.cka_examples], cfg=cfg)  # per layer (runs, examples, width)
    per_seed = [[r[k] for r in reps] for k in range(len(result.seeds))]
    pairs = [(a, b) for a in range(len(per_seed)) for b in range(a + 1, len(per_seed))]
    churn = spread.churn(result.test_predictions)
    return {"probe_init": probe_accuracies(init, data, cfg, l2=s.probe_l2),
            "probe_trained": probe_accuracies(result.final, data, cfg, l2=s.probe_l2),
            "cka_within": np.stack([probes.cka_matrix(p, p) for p in per_seed]),
            "cka_cross": np.stack([probes.cka_matrix(per_seed[a], per_seed[b]) for a, b in pairs]),
            "pairs": np.array(pairs), "pair_churn": np.array([churn[a, b] for a, b in pairs]),
            "test_acc": result.history["test_acc"][:, -1], "depth": len(cfg.model.hidden)}


def run(s: Settings, out_dir: Path) -> None:
    """Writes results.npz (`store.cached`, keyed by the full settings)."""
    store.cached("results.npz", s, lambda: measure(s, Path(out_dir)), folder=out_dir)


# ---------------------------------------------------------------------------- verdict rules

GAIN_STEP = Rule("the paired (same seed) rise from one layer to the next in the probe accuracy training added "
                 "over the same net at initialization", 0.0, "above",
                 "any reliable rise: the layer is more readable than the one before beyond what random "
                 "features at that depth give")
GROWTH = Rule("the paired change in the probe accuracy training added, from the first hidden layer to the last",
              0.0, "above", "the gain training adds should grow with depth; a reliable fall means the deeper "
              "layers built less readable structure than the first")
HOMOLOGY = Rule("the share of hidden layers whose best CKA match in another seed is the same layer (mean over "
                "seed pairs; seeds resampled)", MOST_LAYERS, "above", "more than three layers in four matched to "
                "themselves is shared structure; a chance best match is one layer in six")
STAGE_RISE = Rule("the per-seed share of stage transitions at which the probe accuracy training added rises",
                  MOST_LAYERS, "above",
                  "three stages in four adding readable features is a likeness of stages; an analogy need not "
                  "hold at every layer (M14 asks that)")


def m14_verdict(probe_trained: np.ndarray, probe_init: np.ndarray, measurement: str = "",
                figure: Optional[str] = None) -> Verdict:
    """From (seeds, layers) probe accuracies after training and at initialization: does training make
    each hidden layer more readable than the one before, beyond random features (`probe_gain`)?

    Supported iff every step is; contradicted iff the growth from the first hidden layer to the last
    is; depends iff that growth is supported but not every step (abstraction rises, then saturates);
    else inconclusive. The ledger value is that growth.
    """
    gain = probe_gain(probe_trained, probe_init)
    steps = [Part(f"layer {k}→{k + 1}", GAIN_STEP, stats.paired_bootstrap_ci(gain[:, k + 1], gain[:, k]),
                  n=len(gain)) for k in range(gain.shape[1] - 1)]
    growth = Part("first→last", GROWTH, stats.paired_bootstrap_ci(gain[:, -1], gain[:, 1]), n=len(gain))

    def combine(d):
        if all(d[p.name] == "supported" for p in steps):
            return "supported"
        return {"contradicted": "contradicted", "supported": "depends"}.get(d["first→last"], "inconclusive")

    return judge("M14", [*steps, growth], combine, how="supported iff every layer step is supported; contradicted "
                 "iff first→last is contradicted; depends iff first→last is supported; else inconclusive",
                 measurement=measurement, value=growth.ci, figure=figure, unit="accuracy")[0]


def a5_verdict(cross: np.ndarray, pairs: np.ndarray, probe_trained: np.ndarray, probe_init: np.ndarray,
               measurement: str = "", figure: Optional[str] = None) -> Verdict:
    """Homology (corresponding layers best match in seed `pairs`' CKA `cross` (pairs, layers, layers),
    `seed_bootstrap_ci`) and stages (`stage_share` per seed), combined as the `how` below says."""
    parts = [Part("homology", HOMOLOGY, seed_bootstrap_ci(np.array([probes.correspondence(c) for c in cross]),
                                                          pairs, len(probe_trained)), n=len(probe_trained)),
             Part("stages", STAGE_RISE, stats.bootstrap_ci(stage_share(probe_trained, probe_init)), n=len(probe_init))]
    return judge("A5", parts, lambda d: across([d["homology"], d["stages"]]),
                 how="supported iff homology and stages are both supported, contradicted iff both are contradicted, "
                     "depends iff one is supported and the other contradicted, else inconclusive",
                 measurement=measurement, figure=figure, unit="share of layers")[0]


# ----------------------------------------------------------------------------- report


def _errorbar(ax, x, values: np.ndarray, **kwargs) -> None:
    """Mean and 95% bootstrap CI over seeds of each column of `values` (seeds, len(x))."""
    cis = [stats.bootstrap_ci(values[:, k]) for k in range(len(x))]
    est = np.array([c.estimate for c in cis])
    ax.errorbar(x, est, yerr=[est - [c.low for c in cis], [c.high for c in cis] - est], marker="o", capsize=3,
                **kwargs)


def plot_probes(r: dict, names: list[str], path: Path) -> Path:
    """Probe accuracy per layer at initialization and after training (left), and the gain training
    added — what M14 and A5 judge (right); mean, 95% CI over seeds."""
    fig, (left, right) = plots.subplots(1, 2, figsize=(12, 4.2))
    x, seeds = np.arange(len(names)), r["probe_trained"].shape[0]
    for key, label in (("probe_init", "at initialization"), ("probe_trained", "after training")):
        _errorbar(left, x, r[key], label=f"{label} (mean, 95% CI over {seeds} seeds)")
    left.set(ylabel="linear-probe test accuracy", title="What each layer makes linearly readable")
    left.legend(fontsize=8)
    _errorbar(right, x[:-1], probe_gain(r["probe_trained"], r["probe_init"]), color="C2",
              label=f"trained − init, same seed (mean, 95% CI over {seeds} seeds)")
    right.axhline(0, color="k", lw=0.8)
    right.set(ylabel="probe accuracy added by training", title="Gain over the random-features control")
    right.legend(fontsize=8)
    for ax, ticks in ((left, x), (right, x[:-1])):  # the gain has no logits point (M14 and A5 judge hidden layers)
        ax.set_xticks(ticks, names[: len(ticks)], rotation=30, ha="right")
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
    out_dir, r = Path(out_dir), store.read_npz(Path(out_dir) / "results.npz")
    names = layer_names(int(r["depth"]))
    plot_probes(r, names, out_dir / "probes.png")
    plot_cka(r, names, out_dir / "cka.png")
    trained, init = r["probe_trained"], r["probe_init"]
    diag = np.mean([np.diag(c)[1:-1].mean() for c in r["cka_cross"]])
    off = np.mean([c[1:-1, 1:-1][~np.eye(c.shape[0] - 2, dtype=bool)].mean() for c in r["cka_cross"]])
    per_layer = ", ".join(f"{n} {t:.3f} (init {i:.3f})" for n, t, i in zip(names, trained.mean(0), init.mean(0)))
    share = stats.bootstrap_ci(stage_share(trained, init)).text()
    return [m14_verdict(trained, init, f"growth from the first hidden layer to the last of the probe accuracy training "
                                       f"added over the same net at initialization (mean per layer: {per_layer})",
                        "probes.png"),
            a5_verdict(r["cka_cross"], r["pairs"], trained, init, f"share of hidden layers whose best CKA match in "
                       f"another seed is the same layer, mean over {len(r['cka_cross'])} seed pairs (same-layer CKA "
                       f"{diag:.2f} vs other layers {off:.2f}; seeds disagree on {np.mean(r['pair_churn']):.1%} of "
                       f"test predictions); stages: share of transitions where training's probe gain rises {share}",
                       "cka.png")]
