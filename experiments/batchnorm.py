"""Batch norm: does it allow higher learning rates (M12), and is it known why it helps (A4)?

M12 ("batch norm stabilises training and allows higher learning rates"). Plain SGD (no
momentum, constant rate: the optimizer whose stability depends on the learning rate alone)
trains the MNIST-1D MLP with and without batch norm over a log-spaced learning-rate grid,
every seed at every rate, in one vmapped sweep per variant. A run *trained stably* when its
loss never turned NaN/Inf and its final full-training-set loss is below
`progress_fraction · ln(classes)`. (The brief's "below the initial loss" is too weak: a net
whose ReLUs all died sits at ≈ ln(classes), which is below the He-init loss ≈ 3.1.) Per
seed, the *largest stable learning rate* is the largest grid rate at which that seed trained
stably; the verdict compares BN and no-BN seed by seed (the same seed number: the same
data order and the same init stream) through the geometric mean of the ratio
BN edge / no-BN edge, with a bootstrap CI over seeds.

A4 ("nobody knows why batch norm helps"), audited through the explanation of
Santurkar et al. 2018, "How Does Batch Normalization Help Optimization?" (NeurIPS): BN
makes the loss landscape smoother (the loss and its gradient change less along the
gradient direction), while internal covariate shift (ICS) is not what it reduces. Both
variants are trained with SGD at one rate, and every `measure_every` steps, on the
minibatch the next step will use, with BN in training mode (batch statistics):

  loss range (Lipschitzness)   max_η L(θ − η g) − min_η L(θ − η g)         over the η grid
  gradient predictiveness      max_η ‖g − ∇L(θ − η g)‖                    (Santurkar fig. 4b)
  effective β-smoothness       max_η ‖g − ∇L(θ − η g)‖ / ‖η g‖            (Santurkar fig. 4c)
  ICS of layer i (Def. 2.1)    G = ∇_{W_i} L(θ_t), G' = the same with layers < i already at
                               θ_{t+1} = θ_t − lr·g and layers ≥ i at θ_t: ‖G − G'‖, cos(G, G')

with g = ∇L(θ) and η = lr × `eta_multipliers`. Per seed each measure is averaged over the
measurement points; BN / no-BN ratios of those means get a stratified bootstrap CI. ICS is
compared through the relative change ‖G − G'‖ / ‖G‖, averaged over layers: the raw norm
depends on the gradient's scale, which BN changes. A caveat the paper also notes: these are
measured in parameter space, where BN's scale invariance changes what a step means, so a
smaller β at equal η is not by itself faster optimization.

Results: stability-nobn/ and stability-bn/ (sweep folders, resumable), landscape-nobn.npz
and landscape-bn.npz; the report writes stability.png, landscape.png, ics.png, summary.json.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from netalchemy import backprop, mlp, plots, stats, store, sweep, train
from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy.config import Config, ModelConfig, OptimConfig, SeedsConfig, TrainConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, judge

CLAIMS = ("M12", "A4")
VARIANTS = ("nobn", "bn")  # model.batch_norm = False, True
LABELS = {"nobn": "no batch norm", "bn": "batch norm"}
COLORS = {"nobn": "tab:blue", "bn": "tab:orange"}
LANDSCAPE_MEASURES = ("loss_range", "grad_pred", "beta")


@dataclass(frozen=True)
class Settings:
    """What the experiment trains. `base` is the stability sweep's config (batch norm is set
    per variant); the landscape runs reuse its model, data and batch size."""

    base: Config = field(default_factory=lambda: Config(
        optim=OptimConfig(name="sgd", lr=0.1),
        train=TrainConfig(steps=2000, eval_every=500, chunk_steps=1000),
        seeds=SeedsConfig(n=32)))
    # Part 1 (M12): the learning-rate grid, log-spaced from lr_min to lr_max.
    lr_min: float = 1e-3
    lr_max: float = 1e2
    lrs_per_decade: int = 3
    progress_fraction: float = 0.9  # stable: final train loss < progress_fraction · ln(classes)
    max_divergence: float = 0.1  # population edge: divergence rate ≤ this and median loss as above
    # Part 2 (A4): Santurkar et al. measurements along SGD training at one rate.
    landscape_seeds: int = 32
    landscape_lr: float = 0.1
    landscape_steps: int = 2000  # measured at 0, k, ..., steps − k (k = measure_every)
    measure_every: int = 100
    eta_multipliers: tuple[float, ...] = (0.25, 0.5, 1.0, 2.0, 4.0)  # η = landscape_lr × these

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise config_lib.ConfigError(message)

        check(0 < self.lr_min < self.lr_max, "lr_min must be positive and below lr_max")
        check(self.lrs_per_decade >= 1, "lrs_per_decade must be >= 1")
        check(0 < self.progress_fraction <= 1, "progress_fraction must be in (0, 1]")
        check(0 <= self.max_divergence < 1, "max_divergence must be in [0, 1)")
        check(self.landscape_seeds >= 1, "landscape_seeds must be >= 1")
        check(self.landscape_lr > 0, "landscape_lr must be > 0")
        check(self.measure_every >= 1 and self.landscape_steps % self.measure_every == 0,
              "landscape_steps must be a positive multiple of measure_every")
        check(len(self.eta_multipliers) >= 2 and all(m > 0 for m in self.eta_multipliers),
              "eta_multipliers needs at least two positive values")


def _base(steps: int, eval_every: int, seeds: int, hidden=(100, 100)) -> Config:
    return Config(model=ModelConfig(hidden=hidden), optim=OptimConfig(name="sgd", lr=0.1),
                  train=TrainConfig(steps=steps, eval_every=eval_every, chunk_steps=steps),
                  seeds=SeedsConfig(n=seeds))


PROFILES = {
    "tiny": Settings(base=_base(60, 30, 2, hidden=(32, 32)), lr_min=1e-2, lr_max=1e2, lrs_per_decade=1,
                     landscape_seeds=2, landscape_steps=40, measure_every=20, eta_multipliers=(0.5, 2.0)),
    "quick": Settings(base=_base(500, 250, 8), lr_min=1e-2, lr_max=1e2, lrs_per_decade=2,
                      landscape_seeds=8, landscape_steps=500, measure_every=50),
    "full": Settings(),
}


def lr_grid(s: Settings) -> np.ndarray:
    """The log-spaced learning-rate grid, lr_min … lr_max inclusive."""
    decades = math.log10(s.lr_max / s.lr_min)
    return np.logspace(math.log10(s.lr_min), math.log10(s.lr_max), int(round(decades * s.lrs_per_decade)) + 1)


def variant_config(cfg: Config, variant: str) -> Config:
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, batch_norm=variant == "bn"))


# ------------------------------------------------------------------ Santurkar et al. measures


class Landscape(NamedTuple):
    """Santurkar et al. 2018 measurements at one point θ on one minibatch (one seed)."""

    loss: jax.Array  # () L(θ)
    grad_norm: jax.Array  # () ‖g‖
    losses_along: jax.Array  # (etas,) L(θ − η g)
    grad_change: jax.Array  # (etas,) ‖g − ∇L(θ − η g)‖
    loss_range: jax.Array  # () max − min of losses_along
    grad_pred: jax.Array  # () max of grad_change
    beta: jax.Array  # () max of grad_change / (η ‖g‖)
    ics_l2: jax.Array  # (layers − 1,) ‖G_i − G'_i‖ for layers 2..L
    ics_rel: jax.Array  # (layers − 1,) ‖G_i − G'_i‖ / ‖G_i‖
    ics_cos: jax.Array  # (layers − 1,) cos(G_i, G'_i)


def layer_names(n_layers: int) -> list[str]:
    """Names of the layers ICS is measured for: 'L2', ..., 'out' (layer 1 has no predecessor)."""
    return [f"L{i + 1}" if i < n_layers - 1 else "out" for i in range(1, n_layers)]


def _axpy(a, x, y):
    """y + a·x over params; None leaves (no bias under BN) stay None."""
    return jax.tree.map(lambda xi, yi: yi + a * xi, x, y)


def measure_landscape(params: mlp.Params, bn_state: mlp.State, x: jax.Array, y: jax.Array, *,
                      cfg: ModelConfig, lr: jax.Array, etas: jax.Array) -> Landscape:
    """The loss landscape along the gradient and the ICS per layer, for one seed.

    Args:
      params, bn_state: the net at θ_t (the running statistics do not enter: training mode).
      x, y: the minibatch (batch, features), (batch,) — the same one for every measure.
      cfg: model config (static).
      lr: the SGD rate that defines θ_{t+1} = θ_t − lr·g for ICS.
      etas: (etas,) step sizes along −g.
    """
    def grad(p):
        g, aux = backprop.autodiff_grad(p, bn_state, x, y, cfg=cfg)
        return g, aux.loss

    g, loss = grad(params)
    gnorm = optax.tree.norm(g)

    def along(eta):
        g2, loss2 = grad(_axpy(-eta, g, params))
        return loss2, optax.tree.norm(_axpy(-1.0, g2, g))

    losses_along, grad_change = jax.vmap(along)(etas)  # (etas,), (etas,)
    safe = jnp.where(gnorm > 0, gnorm, jnp.nan)
    beta = jnp.max(grad_change / (etas * safe))

    stepped = _axpy(-lr, g, params)  # θ_{t+1} for every layer
    l2, rel, cos = [], [], []
    for i in range(1, len(params)):
        mixed = tuple(stepped[:i]) + tuple(params[i:])  # layers < i updated, layers ≥ i at θ_t
        g_mixed, _ = grad(mixed)
        a, _ = ravel_pytree(g[i])
        b, _ = ravel_pytree(g_mixed[i])
        na, nb = jnp.linalg.norm(a), jnp.linalg.norm(b)
        diff = jnp.linalg.norm(a - b)
        l2.append(diff)
        rel.append(diff / jnp.where(na > 0, na, jnp.nan))
        cos.append(jnp.dot(a, b) / jnp.where(na * nb > 0, na * nb, jnp.nan))
    stack = lambda xs: jnp.stack(xs) if xs else jnp.zeros((0,), loss.dtype)  # no hidden layer: no ICS
    return Landscape(loss, gnorm, losses_along, grad_change, jnp.max(losses_along) - jnp.min(losses_along),
                     jnp.max(grad_change), beta, stack(l2), stack(rel), stack(cos))


def landscape_run(streams: train.Streams, data: train.Data, lr: jax.Array, etas: jax.Array, *, cfg: Config,
                  in_features: int, num_classes: int):
    """One seed: SGD training with the library's `train_interval`, measuring before each interval.

    Returns (Landscape with a leading (points,) axis, Metrics (points,) after each interval).
    """
    state = train.init_state(streams, lr, cfg=cfg, in_features=in_features, num_classes=num_classes)
    n = data.x_train.shape[0]

    def body(state, _):
        idx = train.batch_indices(streams.data, state.step, n=n, batch_size=cfg.train.batch_size,
                                  sampling=cfg.train.sampling)  # the batch the next step uses
        m = measure_landscape(state.params, state.bn_state, data.x_train[idx], data.y_train[idx],
                              cfg=cfg.model, lr=lr, etas=etas)
        state, metrics = train.train_interval(state, streams, data, lr, cfg=cfg)
        return state, (m, metrics)

    _, (measures, metrics) = jax.lax.scan(body, state, None, length=cfg.train.steps // cfg.train.eval_every)
    return measures, metrics


@partial(jax.jit, static_argnames=("cfg", "axes", "in_features", "num_classes"))
def _landscape_seeds(streams, data, lr, etas, *, cfg, axes, in_features, num_classes):
    run = partial(landscape_run, cfg=cfg, in_features=in_features, num_classes=num_classes)
    return jax.vmap(lambda s: run(s, data, lr, etas), in_axes=(axes,))(streams)


def landscape_config(s: Settings, variant: str) -> Config:
    base = variant_config(s.base, variant)
    return dataclasses.replace(
        base, optim=dataclasses.replace(base.optim, lr=s.landscape_lr),
        train=dataclasses.replace(base.train, steps=s.landscape_steps, eval_every=s.measure_every,
                                  chunk_steps=s.landscape_steps),
        seeds=dataclasses.replace(base.seeds, n=s.landscape_seeds))


def landscape_settings(s: Settings, variant: str) -> dict:
    """Everything a stored landscape measurement depends on: its training config and its η grid."""
    return {"config": config_lib.to_dict(landscape_config(s, variant)), "eta_multipliers": list(s.eta_multipliers)}


def measure_variant(s: Settings, variant: str, dataset: data_lib.Dataset) -> dict[str, np.ndarray]:
    """All seeds of one variant in one compiled program; arrays for landscape-<variant>.npz."""
    cfg = landscape_config(s, variant)
    seeds = np.arange(cfg.seeds.start, cfg.seeds.start + cfg.seeds.n)
    dtype = cfg.model.dtype
    data = train.Data(jnp.asarray(dataset.x_train, dtype), jnp.asarray(dataset.y_train, jnp.int32),
                      jnp.asarray(dataset.x_test, dtype), jnp.asarray(dataset.y_test, jnp.int32))
    etas = jnp.asarray(s.landscape_lr * np.asarray(s.eta_multipliers), dtype)
    measures, metrics = jax.device_get(_landscape_seeds(
        sweep.run_streams(cfg, seeds), data, jnp.asarray(s.landscape_lr, dtype), etas, cfg=cfg,
        axes=sweep.stream_axes(cfg), in_features=dataset.x_train.shape[1], num_classes=dataset.num_classes))
    points = s.landscape_steps // s.measure_every
    return {**{k: np.asarray(v, np.float64) for k, v in measures._asdict().items()},  # (seeds, points, ...)
            "steps": np.arange(points) * s.measure_every, "etas": np.asarray(etas, np.float64),
            "train_loss_after": np.asarray(metrics.train_loss, np.float64),  # (seeds, points)
            "diverged": np.asarray(metrics.diverged, bool)}


# --------------------------------------------------------------------------------- run


def run(s: Settings, out_dir: Path) -> None:
    """Both stability sweeps (resumable) and both landscape measurements (`store.cached`, keyed
    by `landscape_settings`: reused while the settings stay, recomputed when one changes)."""
    out_dir = Path(out_dir)
    dataset = data_lib.load(s.base.data)
    seconds = {}
    for variant in VARIANTS:
        started = time.perf_counter()
        sweep.run(variant_config(s.base, variant), lrs=lr_grid(s), out_dir=out_dir / f"stability-{variant}",
                  dataset=dataset, progress=False)
        seconds[f"stability-{variant}"] = time.perf_counter() - started
    for variant in VARIANTS:
        started = time.perf_counter()
        store.cached(f"landscape-{variant}.npz", landscape_settings(s, variant),
                     partial(measure_variant, s, variant, dataset), folder=out_dir)
        seconds[f"landscape-{variant}"] = time.perf_counter() - started
    store.write_json(out_dir / "run.json", {
        "settings": config_lib.to_dict(s), "lr_grid": lr_grid(s), "num_classes": dataset.num_classes,
        "layers": layer_names(len(s.base.model.hidden) + 1), "seconds": seconds})


# ----------------------------------------------------------------------- statistics and rules


def stable_runs(diverged: np.ndarray, final_loss: np.ndarray, *, threshold: float) -> np.ndarray:
    """True where a run never diverged and ended with a finite train loss below `threshold`."""
    final = np.asarray(final_loss, np.float64)
    return ~np.asarray(diverged, bool) & np.isfinite(final) & (final < threshold)


def largest_stable_lr(stable: np.ndarray, lrs: np.ndarray) -> np.ndarray:
    """Per seed, the largest grid lr at which it trained stably; NaN if at none.

    Args:
      stable: (lrs, seeds) booleans; lrs: (lrs,) increasing.
    """
    lrs = np.asarray(lrs, np.float64)
    any_stable = stable.any(axis=0)
    top = len(lrs) - 1 - np.argmax(stable[::-1], axis=0)  # last True per seed
    return np.where(any_stable, lrs[top], np.nan)


def _ratio_of_means(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(a, axis=axis) / np.mean(b, axis=axis)


def ratio_ci(a: Sequence[float], b: Sequence[float], *, n_resamples: int = 10_000, seed: int = 0) -> stats.CI:
    """mean(a) / mean(b) with a stratified BCa bootstrap CI (a and b resampled apart).

    Non-finite values are dropped; NaN if either side is then empty or mean(b) is 0.
    """
    return stats.independent_bootstrap_ci(a, b, statistic=_ratio_of_means, n_resamples=n_resamples, seed=seed)


def geometric_ratio_ci(a: np.ndarray, b: np.ndarray, *, seed: int = 0) -> stats.CI:
    """Paired geometric-mean ratio a/b over seeds: 10^mean(log10 a − log10 b), bootstrap CI."""
    logs = np.log10(np.asarray(a, np.float64)) - np.log10(np.asarray(b, np.float64))
    ci = stats.bootstrap_ci(logs, seed=seed)
    return stats.CI(*(10.0 ** v for v in ci))


def m12_rule(progress_fraction: float) -> Rule:
    return Rule(f"the geometric mean over paired seeds of BN edge / no-BN edge, an edge being a seed's largest grid "
                f"lr at which SGD trained stably (no NaN/Inf loss and final train loss < {progress_fraction:g}·"
                f"ln(classes))", 1.0, "above", "1 is no higher learning rate with batch norm; exactly 1 (every seed "
                f"the same edge) fails", unit="×", ties_fail=True,
                contradict_only_if="the no-BN edge lies inside the grid (some stable lr, not the top one) for at "
                                   "least half the seeds (else the grid cannot show a difference)")


def m12_verdict(ratio: stats.CI, nobn_inside_fraction: float, *, progress_fraction: float = 0.9,
                measurement: str = "") -> Verdict:
    """M12 from the CI of the BN / no-BN largest-stable-lr ratio (see `m12_rule`)."""
    return m12_rule(progress_fraction).verdict("M12", ratio, measurement=measurement,
                                               settled=nobn_inside_fraction >= 0.5, figure="stability.png")


def reduced(measure: str) -> Rule:
    """A BN / no-BN ratio below 1: batch norm reduces `measure`."""
    return Rule(f"the BN / no-BN ratio of per-seed means over training of {measure} (seeds of each resampled apart)",
                1.0, "below", "below 1: batch norm reduces it (Santurkar et al. 2018 report smoothing); "
                              "above 1: it increases it", unit="×")


def a4_combine(d: Mapping[str, str]) -> str:
    """A4 from the parts (supported = reduced, contradicted = increased): contradicted (a measurable
    mechanism, Santurkar's) iff both landscape measures are reduced and ICS is not; depends iff both
    are reduced but ICS is reduced too (ICS not excluded), or the landscape measures disagree;
    supported (no smoothing seen) iff neither is reduced and at least one is increased; else
    inconclusive."""
    landscape = [d["loss range"], d["β-smoothness"]]
    if all(v == "supported" for v in landscape):
        return "depends" if d["relative ICS"] == "supported" else "contradicted"
    if "supported" in landscape:
        return "depends"
    return "supported" if "contradicted" in landscape else "inconclusive"


def a4_verdict(loss_range: stats.CI, beta: stats.CI, ics: stats.CI, measurement: str = "") -> Verdict:
    """A4 from the CIs of the BN / no-BN ratios (see `a4_combine`)."""
    parts = [Part("loss range", reduced("the loss range along −g"), loss_range),
             Part("β-smoothness", reduced("the effective β-smoothness"), beta),
             Part("relative ICS", reduced("the relative ICS ‖G−G'‖/‖G‖, layers 2..L"), ics)]
    return judge("A4", parts, a4_combine, how="contradicted iff both landscape parts are supported (reduced) and "
                 "relative ICS is not; depends iff all three are reduced, or the landscape parts disagree; "
                 "supported (no smoothing seen) iff neither landscape part is reduced and one is increased; else "
                 "inconclusive", measurement=measurement, value=beta, figure="landscape.png", unit="×")[0]


# ----------------------------------------------------------------------------- report


def stability_table(result: sweep.SweepResult, lrs: np.ndarray, *, threshold: float) -> dict[str, np.ndarray]:
    """(lrs, seeds) arrays of one stability sweep: diverged, final train loss, stable."""
    n_lrs = len(lrs)
    diverged = result.history["diverged"][:, -1].astype(bool).reshape(n_lrs, -1)  # runs are lr-major
    final = result.history["train_loss"][:, -1].reshape(n_lrs, -1)
    final = np.where(diverged, np.nan, final)
    return {"diverged": diverged, "final_loss": final, "stable": stable_runs(diverged, final, threshold=threshold)}


def population_edge(table: dict[str, np.ndarray], lrs: np.ndarray, *, max_divergence: float) -> Optional[float]:
    """The largest lr whose divergence rate ≤ max_divergence and whose median run was stable."""
    ok = (table["diverged"].mean(axis=1) <= max_divergence) & (table["stable"].mean(axis=1) > 0.5)
    return float(lrs[ok].max()) if ok.any() else None


def first_diverging_lr(table: dict[str, np.ndarray], lrs: np.ndarray) -> Optional[float]:
    """The smallest grid lr at which any seed diverged (NaN/Inf loss); None if none did."""
    rate = table["diverged"].mean(axis=1)
    return float(lrs[np.argmax(rate > 0)]) if (rate > 0).any() else None


def _plot_stability(tables, edges, lrs, threshold, path):
    fig, (ax1, ax2) = plots.subplots(1, 2, figsize=(12, 4.8))
    for v in VARIANTS:
        t = tables[v]
        rate = t["diverged"].mean(axis=1)
        n = t["diverged"].shape[1]
        ci = stats.CI(*np.array([stats.fraction_ci(row) for row in t["diverged"]]).T)  # Wilson, per lr
        ax1.plot(lrs, rate, "o-", color=COLORS[v], label=f"{LABELS[v]} ({n} seeds)")
        ax1.fill_between(lrs, ci.low, ci.high, color=COLORS[v], alpha=0.2, lw=0)
        plots.seed_band(ax2, lrs, t["final_loss"].T, label=LABELS[v], color=COLORS[v], log_y=True)
        if np.isfinite(edges[v]).any():
            ax2.axvline(np.nanmedian(edges[v]), color=COLORS[v], ls=":", lw=1)
    ax1.set_xscale("log")
    ax1.set_xlabel("SGD learning rate")
    ax1.set_ylabel("fraction of seeds diverged\n(NaN/Inf loss)")
    ax1.set_ylim(-0.03, 1.03)
    ax1.set_title("Divergence (SGD); band: 95% Wilson interval", fontsize=10)
    ax2.set_xscale("log")
    ax2.axhline(threshold, color="gray", ls="--", lw=1, label=f"stability threshold {threshold:.3g}")
    ax2.set_xlabel("SGD learning rate")
    ax2.set_ylabel("final train loss (nats)\ndiverged runs omitted")
    ax2.set_title("Final train loss; dotted: median largest stable lr", fontsize=10)
    h1, l1 = ax1.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    fig.legend(h1 + h2, l1 + l2, loc="outside lower center", ncol=3, fontsize=8)  # beside the data, not on it
    return plots.save(fig, path)


def _plot_landscape(land, path):
    panels = [("loss_range", "loss range along −g (nats)", "Loss landscape: max_η L − min_η L"),
              ("grad_pred", "max_η ‖∇L(θ) − ∇L(θ − ηg)‖", "Gradient predictiveness (ℓ2 change)"),
              ("beta", "max_η ‖Δ∇L‖ / ‖ηg‖", "Effective β-smoothness"),
              ("loss", "minibatch loss L(θ) (nats)", "Training loss at the measured points")]
    fig, axes = plots.subplots(2, 2, figsize=(11, 8), sharex=True)
    for ax, (key, ylabel, title) in zip(axes.flat, panels):
        for v in VARIANTS:
            plots.seed_band(ax, land[v]["steps"], land[v][key], label=LABELS[v], color=COLORS[v], log_y=True)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10)
    for ax in axes[-1]:
        ax.set_xlabel("training step")
    fig.legend(*axes.flat[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    return plots.save(fig, path)


def _plot_ics(ics, layers, path):
    panels = [("ics_l2", "‖G − G′‖ (ℓ2)"), ("ics_rel", "‖G − G′‖ / ‖G‖"), ("ics_cos", "cos(G, G′)")]
    fig, axes = plots.subplots(1, 3, figsize=(13, 4.6))
    x = np.arange(len(layers))
    width = 0.38
    for ax, (key, ylabel) in zip(axes, panels):
        for k, v in enumerate(VARIANTS):
            per_seed = ics[v][key]  # (seeds, layers)
            ci = stats.bootstrap_ci(per_seed.T)
            err = np.vstack([ci.estimate - ci.low, ci.high - ci.estimate])
            ax.bar(x + (k - 0.5) * width, ci.estimate, width, yerr=err, capsize=3, color=COLORS[v],
                   label=f"{LABELS[v]} ({per_seed.shape[0]} seeds)")
        ax.set_xticks(x, layers)
        ax.set_xlabel("layer (its predecessors updated first)")
        ax.set_ylabel(ylabel + ", mean over training")
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=8)
    fig.suptitle("Internal covariate shift (Santurkar et al. 2018, Def. 2.1): gradient of layer i before vs after\n"
                 "layers < i take their SGD step; error bars: 95% bootstrap CI over seeds", fontsize=10)
    return plots.save(fig, path)


def report(out_dir: Path) -> list[Verdict]:
    """Reads both parts, writes stability.png, landscape.png, ics.png, summary.json; returns verdicts."""
    out_dir = Path(out_dir)
    info = store.read_json(out_dir / "run.json")
    settings = info["settings"]
    lrs = np.asarray(info["lr_grid"], np.float64)
    threshold = settings["progress_fraction"] * math.log(info["num_classes"])
    tables, edges, pop_edge = {}, {}, {}
    for v in VARIANTS:
        tables[v] = stability_table(sweep.load(out_dir / f"stability-{v}"), lrs, threshold=threshold)
        edges[v] = largest_stable_lr(tables[v]["stable"], lrs)
        pop_edge[v] = population_edge(tables[v], lrs, max_divergence=settings["max_divergence"])
    # A seed stable at no grid lr gets one grid step below the grid (a censored value).
    below = lrs[0] / (lrs[1] / lrs[0])
    filled = {v: np.where(np.isnan(e), below, e) for v, e in edges.items()}
    ratio = geometric_ratio_ci(filled["bn"], filled["nobn"])
    nobn_inside = float(np.mean(~np.isnan(edges["nobn"]) & (edges["nobn"] < lrs[-1])))
    bn_censored = float(np.mean(edges["bn"] >= lrs[-1]))
    poi = stats.probability_of_improvement(filled["bn"], filled["nobn"])
    first_div = {v: first_diverging_lr(tables[v], lrs) for v in VARIANTS}
    _plot_stability(tables, edges, lrs, threshold, out_dir / "stability.png")

    land = {v: store.read_npz(out_dir / f"landscape-{v}.npz") for v in VARIANTS}
    layers = info["layers"]
    per_seed = {v: {m: np.nanmean(land[v][m], axis=1) for m in (*LANDSCAPE_MEASURES, "ics_l2", "ics_rel", "ics_cos")}
                for v in VARIANTS}  # (seeds,) or (seeds, layers)
    ratios = {m: ratio_ci(per_seed["bn"][m], per_seed["nobn"][m]) for m in LANDSCAPE_MEASURES}
    ratios["ics_rel"] = ratio_ci(per_seed["bn"]["ics_rel"].mean(axis=1), per_seed["nobn"]["ics_rel"].mean(axis=1))
    ratios["ics_cos"] = ratio_ci(per_seed["bn"]["ics_cos"].mean(axis=1), per_seed["nobn"]["ics_cos"].mean(axis=1))
    _plot_landscape(land, out_dir / "landscape.png")
    _plot_ics(per_seed, layers, out_dir / "ics.png")

    fmt_ci = lambda c: f"{c.estimate:.3g} [{c.low:.3g}, {c.high:.3g}]"
    fmt_lr = lambda x: "none" if x is None else f"{x:.3g}"
    rel = {v: per_seed[v]["ics_rel"] for v in VARIANTS}  # (seeds, layers)
    layer_ratios = ", ".join(f"{name} {rel['bn'][:, j].mean() / rel['nobn'][:, j].mean():.2f}"
                             for j, name in enumerate(layers))
    n_seeds = len(edges["bn"])
    store.write_json(out_dir / "summary.json", {
        "lr_grid": lrs, "stability_threshold": threshold,
        "largest_stable_lr": {v: edges[v] for v in VARIANTS},
        "population_edge": pop_edge, "first_lr_with_divergence": first_div,
        "divergence_rate": {v: tables[v]["diverged"].mean(axis=1) for v in VARIANTS},
        "edge_ratio": ratio._asdict(), "probability_bn_edge_higher": poi,
        "nobn_edge_inside_grid_fraction": nobn_inside, "bn_edge_censored_fraction": bn_censored,
        "landscape_ratios_bn_over_nobn": {k: c._asdict() for k, c in ratios.items()},
        "per_layer": {v: {k: {name: stats.summarize(per_seed[v][k][:, j]) for j, name in enumerate(layers)}
                          for k in ("ics_l2", "ics_rel", "ics_cos")} for v in VARIANTS},
        })
    print(f"largest stable SGD lr (median over {n_seeds} seeds): no BN {np.nanmedian(edges['nobn']):.3g}, "
          f"BN {np.nanmedian(edges['bn']):.3g}; first lr with a divergence: no BN {fmt_lr(first_div['nobn'])}, "
          f"BN {fmt_lr(first_div['bn'])}")
    print("BN / no-BN ratios (mean over training, 95% CI): " + ", ".join(
        f"{k} {fmt_ci(c)}" for k, c in ratios.items()))
    m12 = m12_verdict(ratio, nobn_inside, progress_fraction=settings["progress_fraction"], measurement=(
        f"BN / no-BN largest stable SGD lr, geometric mean over {n_seeds} paired seeds (grid {lrs[0]:.3g}…"
        f"{lrs[-1]:.3g}, {len(lrs)} lrs; P(BN edge higher) = {poi:.2f}; population edge no BN "
        f"{fmt_lr(pop_edge['nobn'])}, BN {fmt_lr(pop_edge['bn'])}; first lr with a NaN/Inf divergence: no BN "
        f"{fmt_lr(first_div['nobn'])}, BN {fmt_lr(first_div['bn'])}; BN edge at the grid top for {bn_censored:.0%} "
        f"of seeds)"))
    a4 = a4_verdict(ratios["loss_range"], ratios["beta"], ratios["ics_rel"], measurement=(
        f"BN / no-BN effective β-smoothness (Santurkar et al. 2018), SGD lr {settings['landscape_lr']:g}, mean over "
        f"training; loss range {fmt_ci(ratios['loss_range'])}, gradient predictiveness {fmt_ci(ratios['grad_pred'])}, "
        f"relative ICS {fmt_ci(ratios['ics_rel'])} (per layer: {layer_ratios}), ICS cosine {fmt_ci(ratios['ics_cos'])}"))
    return [m12, a4]
