"""Chance: seed-to-seed spread, which randomness matters, and how far one ulp carries (A1, A2, A7).

The essay (000) says that deep learning "depends on chance": ask the same question twice and
you get different answers (A1), nobody knows which randomness matters (A2), and input and
output are related by "correlation with a predominance of chance" (A7). Three measurements:

A1  Many seeds of the default MNIST-1D config (40-100-100-10 ReLU, Adam 1e-2, batch 100),
    trained at once by `sweep.run`: the spread of final test accuracy (std, range, bootstrap
    CI of the std), the pairwise disagreement of the seeds' test predictions ("churn",
    Fort et al. 2019; Bhojanapalli et al. 2021) against their error rates, and what the seeds
    are worth together (mean-softmax and majority-vote ensembles, Lakshminarayanan et al. 2017).
A2  One randomness stream varied at a time (init, data order, dropout masks; the other
    streams shared by all seeds) and all three together, on the same config with dropout
    0.1 so that the dropout stream exists: the accuracy spread each source causes alone,
    as a fraction of the spread of all sources together (Summers & Dinneen 2021,
    "Nondeterminism and Instability in Neural Network Optimization").
A7  Two tiny perturbations of one run, everything else identical: (a) one weight moved by
    one float32 ulp at init (`jnp.nextafter`), (b) hand-derived instead of autodiff
    gradients (equal up to rounding). Tracked over training: the relative parameter distance
    ‖θ_a − θ_b‖ / ‖θ_b‖ and the test-set churn, against the level of two different seeds.
    A fourth pair, an unperturbed copy trained side by side, is the control: it must stay
    bitwise identical, or the divergence could come from the batching itself.

Each verdict comes from a rule below (`a1_verdict`, `a2_verdict`, `a7_verdict`), pure
functions of confidence intervals over seeds.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import config as config_lib
from netalchemy import data as data_lib
from netalchemy import mlp, plots, spread, stats, store, sweep, train
from netalchemy.config import RANDOMNESS_STREAMS, Config, SeedsConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, across, judge

CLAIMS = ("A1", "A2", "A7")

# ----------------------------------------------------------------------------- the rules' constants

CHURN_THRESHOLD = 0.01  # A1: seeds "give different answers" when they disagree on > 1% of test examples
SPREAD_SHARE = 0.5  # A2: a source "matters" when alone it makes > 50% of the all-sources accuracy std
FAR_SHARE = 0.5  # A7: a perturbation carries "far" when it ends > 50% of the way to a different seed
A2_SOURCES = ("init", "data", "dropout", "all")  # "all" varies the three streams together
A7_PAIRS = ("ulp", "hand", "seed", "copy")  # each compared with the reference run of its seed


@dataclass(frozen=True)
class Settings:
    """What the three measurements train.

    `base` is the run config (model, optimizer, steps, data) of A1 and A7; A2 uses it with
    `model.dropout = a2_dropout`. Of `base.seeds` only `start` is used: the seed counts are
    below and each measurement sets which streams vary.
    """

    base: Config = field(default_factory=Config)
    a1_seeds: int = 64
    a2_seeds: int = 48  # per source, × 4 sources
    a2_dropout: float = 0.1
    a7_seeds: int = 16  # reference runs; each has 4 partners (ulp, hand, other seed, copy)
    a7_eval_every: int = 50  # steps between the A7 measurements
    n_resamples: int = 10_000  # bootstrap resamples per CI


def _base(steps: int, eval_every: int) -> Config:
    return config_lib.override(Config(), [f"train.steps={steps}", f"train.eval_every={eval_every}"])


PROFILES = {
    "tiny": Settings(base=_base(100, 50), a1_seeds=4, a2_seeds=3, a7_seeds=2, a7_eval_every=25, n_resamples=1000),
    "quick": Settings(base=_base(1000, 250), a1_seeds=32, a2_seeds=16, a7_seeds=8, a7_eval_every=25),
    "full": Settings(),  # the MNIST-1D reference run: 6000 steps
}


# ----------------------------------------------------------------------------- statistics


def pairwise_mean_ci(matrix: np.ndarray, *, n_resamples: int = 10_000, seed: int = 0,
                     confidence: float = 0.95) -> stats.CI:
    """Mean of a symmetric pairwise matrix over pairs i < j, with a seed-bootstrap CI.

    The seeds are resampled with replacement and the statistic is recomputed over the pairs
    of distinct resampled seeds (a pair of a seed with its own copy is left out, since its
    disagreement is 0 by construction). NaN rows (diverged seeds) should be removed first.
    A percentile interval by hand, not `scipy.stats.bootstrap`: a resample of one seed repeated
    has no pair, and such resamples must be dropped rather than given a value.
    """
    m = np.asarray(matrix, np.float64)
    n = m.shape[0]
    i, j = np.triu_indices(n, k=1)
    if i.size == 0:
        return stats.CI(math.nan, math.nan, math.nan)
    estimate = float(m[i, j].mean())
    rng = np.random.default_rng(seed)
    boot = []
    chunk = max(1, (1 << 22) // (n * n))
    for start in range(0, n_resamples, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_resamples - start), n))  # (B, n)
        sub = m[idx[:, :, None], idx[:, None, :]]  # (B, n, n)
        distinct = idx[:, :, None] != idx[:, None, :]
        count = distinct.sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            boot.append(np.where(distinct, sub, 0.0).sum(axis=(1, 2)) / count)
    boot = np.concatenate(boot)
    boot = boot[np.isfinite(boot)]  # a resample of one seed repeated has no pair
    alpha = 1.0 - confidence
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2])
    return stats.CI(estimate, float(low), float(high))


def std_ratio_ci(x: np.ndarray, y: np.ndarray, *, n_resamples: int = 10_000, seed: int = 0,
                 confidence: float = 0.95) -> stats.CI:
    """std(x) / std(y) (ddof 1) with a percentile-bootstrap CI; x and y resampled independently.

    Non-finite values (diverged seeds) are dropped. NaN when either side has < 2 values.
    A percentile interval by hand, not `scipy.stats.bootstrap`: resamples of `y` without spread
    make the ratio +inf, a legitimate end ("no spread at all in y") that BCa cannot handle.
    """
    a, b = (np.asarray(v, np.float64).ravel() for v in (x, y))
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if a.size < 2 or b.size < 2:
        return stats.CI(math.nan, math.nan, math.nan)
    rng = np.random.default_rng(seed)
    with np.errstate(invalid="ignore", divide="ignore"):
        estimate = float(np.std(a, ddof=1) / np.std(b, ddof=1))
        boot = (np.std(a[rng.integers(0, a.size, (n_resamples, a.size))], axis=-1, ddof=1)
                / np.std(b[rng.integers(0, b.size, (n_resamples, b.size))], axis=-1, ddof=1))
    boot = boot[~np.isnan(boot)]  # 0/0 is dropped; x/0 = inf is kept: "no spread at all in y"
    alpha = 1.0 - confidence
    # Order statistics, not interpolation: an interval may end at +inf.
    low, high = np.quantile(boot, [alpha / 2, 1 - alpha / 2], method="inverted_cdf")
    return stats.CI(estimate, float(low), float(high))


def std_ci(values: np.ndarray, *, n_resamples: int, seed: int = 0) -> stats.CI:
    """Sample std (ddof 1) over seeds with a percentile-bootstrap CI."""
    return stats.bootstrap_ci(values, statistic=partial(np.std, ddof=1), n_resamples=n_resamples, seed=seed)


def majority_vote(predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """The most frequent class per example over seeds (ties go to the lower class).

    predictions: (seeds, examples) int. Returns (examples,) int.
    """
    counts = (np.asarray(predictions)[..., None] == np.arange(num_classes)).sum(axis=0)  # (examples, classes)
    return counts.argmax(axis=-1)


def pair_error_and_churn(predictions: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every pair i < j of seeds: their mean test error rate and their churn.

    Churn can be no larger than the sum of the two error rates (two right answers agree),
    hence ≤ 2 × the mean error; it is no smaller than the difference of the error rates.
    """
    errors = (np.asarray(predictions) != np.asarray(labels)[None]).mean(axis=-1)  # (seeds,)
    matrix = spread.churn(predictions)
    i, j = np.triu_indices(len(errors), k=1)
    return (errors[i] + errors[j]) / 2, matrix[i, j]


# ----------------------------------------------------------------------------- the rules


CHURN = Rule("the mean pairwise churn between seeds (the share of test examples two seeds label differently)",
             CHURN_THRESHOLD, "above", f"seeds disagreeing on more than {CHURN_THRESHOLD:.0%} of test examples give "
                                      f"different answers, beyond a few borderline cases", unit="fraction")
MATTERS = Rule("r = std(test acc, one randomness source varied alone) / std(all three varied)", SPREAD_SHARE, "above",
               f"alone it makes more than {SPREAD_SHARE:.0%} of the full spread: it matters; below: negligible")
FAR = Rule("ρ = final churn(perturbed twin, reference) / churn(other seed, reference), mean over seeds", FAR_SHARE,
           "above", f"more than {FAR_SHARE:.0%} of the way to a different seed: the perturbation carries far")


def a1_verdict(churn: stats.CI, measurement: str = "") -> Verdict:
    """A1 from the CI of the mean pairwise churn (see `CHURN`)."""
    return CHURN.verdict("A1", churn, measurement=measurement, figure="a1_churn_vs_error.png",
                         unit="fraction of test examples")


def a2_combine(d: Mapping[str, str]) -> str:
    """A2 from each single source's part (supported = matters, contradicted = negligible): supported (no
    single source can be blamed: each alone makes most of the spread) if all matter; contradicted (one
    identifiable culprit) if exactly one matters and the others are negligible; depends if two matter
    and one is negligible, or none matters alone; inconclusive if any is unclear."""
    if "inconclusive" in d.values():
        return "inconclusive"
    matters = [s for s, v in d.items() if v == "supported"]
    if len(matters) == len(d):
        return "supported"
    return "contradicted" if len(matters) == 1 else "depends"


def a2_verdict(ratio_cis: Mapping[str, stats.CI], measurement: str = "", value: Optional[stats.CI] = None) -> Verdict:
    """A2 from each single source's spread-ratio CI (`MATTERS` per source, `a2_combine`)."""
    parts = [Part(source, MATTERS, ci) for source, ci in ratio_cis.items()]
    return judge("A2", parts, a2_combine, how="all sources matter → supported; exactly one matters and the rest "
                 "are negligible → contradicted (one culprit); two matter and one is negligible, or none matters "
                 "alone → depends; any unclear → inconclusive", measurement=measurement, value=value,
                 figure="a2_spread.png", unit="ratio of stds")[0]


def a7_verdict(ulp: stats.CI, hand: stats.CI, control_identical: bool, measurement: str = "") -> Verdict:
    """A7 from the CIs of the final churn ratios of the two perturbations: both far → supported, both
    near → contradicted, one each → depends (`verdicts.across`); inconclusive if the control (an
    unperturbed copy trained alongside) is not bitwise identical to its reference."""
    parts = [Part("one-ulp", FAR, ulp), Part("hand-vs-autodiff", FAR, hand)]
    combine = lambda d: across(list(d.values())) if control_identical else "inconclusive"  # noqa: E731
    return judge("A7", parts, combine, how="both far → supported, both near → contradicted, one of each → "
                 "depends, else inconclusive; inconclusive too if the unperturbed control is not bitwise identical "
                 "to its reference", measurement=measurement, value=ulp, figure="a7_divergence.png",
                 unit="ratio of churns")[0]


# ----------------------------------------------------------------------------- training pieces


def device_data(ds: data_lib.Dataset, dtype: str) -> train.Data:
    return train.Data(jnp.asarray(ds.x_train, dtype), jnp.asarray(ds.y_train, jnp.int32),
                      jnp.asarray(ds.x_test, dtype), jnp.asarray(ds.y_test, jnp.int32))


def source_streams(seeds: np.ndarray, vary: tuple[str, ...], start: int) -> train.Streams:
    """(runs,) keys per stream: the run's own seed for streams in `vary`, seed `start` for the rest.

    The same keys `sweep.run` uses with `seeds.vary = vary`, but every stream batched, so all
    sources of A2 run through one compiled program.
    """
    seeds = jnp.asarray(seeds)
    return train.Streams(*(
        jax.vmap(lambda s, name=name: train.stream_key(s, name))(
            seeds if name in vary else jnp.full_like(seeds, start))
        for name in RANDOMNESS_STREAMS))


@partial(jax.jit, static_argnames=("cfg", "in_features", "num_classes"))
def train_runs(streams: train.Streams, data: train.Data, lr: jax.Array, *, cfg: Config, in_features: int,
               num_classes: int):
    """Whole runs for a batch of streams (runs,): (final TrainState, Metrics history, test predictions)."""
    def one(s):
        state, history = train.train_run(s, data, lr, cfg=cfg, in_features=in_features, num_classes=num_classes)
        return state, history, train.predict(state.params, state.bn_state, data.x_test, cfg=cfg)

    return jax.vmap(one)(streams)


@partial(jax.jit, static_argnames=("cfg",))
def mean_softmax(params, bn_state, x: jax.Array, *, cfg: Config) -> jax.Array:
    """Softmax outputs (runs, examples, classes) of a batch of trained nets, evaluation mode."""
    def one(p, s):
        return jax.nn.softmax(mlp.apply(p, s, x, cfg=cfg.model, train=False)[0], axis=-1)

    return jax.vmap(one)(params, bn_state)


def perturb_one_ulp(params: mlp.Params) -> mlp.Params:
    """The same params with the first weight of the first layer moved up by one ulp."""
    first = params[0]
    w = first.w.at[0, 0].set(jnp.nextafter(first.w[0, 0], jnp.asarray(jnp.inf, first.w.dtype)))
    return (first._replace(w=w), *params[1:])


def _flat_params(params) -> jax.Array:
    return jax.vmap(lambda p: ravel_pytree(p)[0])(params)  # (runs, n_params)


def divergence(auto: train.TrainState, hand: train.TrainState, data: train.Data, *, cfg: Config) -> dict:
    """Distance and churn of each A7 pair to its reference run.

    `auto` holds 4n runs (reference, ulp-perturbed, other seed, copy) trained with autodiff,
    `hand` the n runs trained with the hand-derived backward pass from the reference init.
    Returns {"dist_<pair>", "churn_<pair>": (n,)} for each pair of A7_PAIRS.
    """
    n = hand.step.shape[0]
    predict = jax.vmap(lambda p, s: train.predict(p, s, data.x_test, cfg=cfg))
    flat_auto, flat_hand = _flat_params(auto.params), _flat_params(hand.params)  # (4n, P), (n, P)
    pred_auto, pred_hand = predict(auto.params, auto.bn_state), predict(hand.params, hand.bn_state)  # (4n, test)
    ref, ref_pred = flat_auto[:n], pred_auto[:n]
    partners = {"ulp": slice(n, 2 * n), "seed": slice(2 * n, 3 * n), "copy": slice(3 * n, 4 * n)}
    flat = {k: flat_auto[s] for k, s in partners.items()} | {"hand": flat_hand}
    pred = {k: pred_auto[s] for k, s in partners.items()} | {"hand": pred_hand}
    norm = jnp.linalg.norm(ref, axis=-1)
    out = {}
    for k in A7_PAIRS:
        out[f"dist_{k}"] = jnp.linalg.norm(flat[k] - ref, axis=-1) / norm
        out[f"churn_{k}"] = jnp.mean(pred[k] != ref_pred, axis=-1)
    out["test_acc_ref"] = jnp.mean(ref_pred == data.y_test, axis=-1)
    return out


_divergence = jax.jit(divergence, static_argnames=("cfg",))


@partial(jax.jit, static_argnames=("cfg", "in_features", "num_classes"))
def a7_init(ref_streams: train.Streams, seed_streams: train.Streams, lr, *, cfg: Config, in_features: int,
            num_classes: int) -> tuple[train.TrainState, train.TrainState]:
    """Initial states: autodiff runs (reference, ulp, other seed, copy) and hand runs (reference init)."""
    n = ref_streams.init.shape[0]
    init = jax.vmap(partial(train.init_state, lr=lr, cfg=cfg, in_features=in_features, num_classes=num_classes))
    both = init(jax.tree.map(lambda a, b: jnp.concatenate([a, b]), ref_streams, seed_streams))  # one init program
    ref, other = jax.tree.map(lambda a: a[:n], both), jax.tree.map(lambda a: a[n:], both)
    ulp = ref._replace(params=jax.vmap(perturb_one_ulp)(ref.params))
    auto = jax.tree.map(lambda *xs: jnp.concatenate(xs), ref, ulp, other, ref)
    return auto, ref


@partial(jax.jit, static_argnames=("cfg_auto", "cfg_hand", "intervals"))
def a7_chunk(auto, hand, auto_streams, hand_streams, data, lr, *, cfg_auto: Config, cfg_hand: Config,
             intervals: int):
    """`intervals` evaluation intervals of both programs in lockstep, measuring after each."""
    step_all = lambda cfg: jax.vmap(lambda st, s: train.train_interval(st, s, data, lr, cfg=cfg))

    def body(carry, _):
        a, h = carry
        a, metrics_a = step_all(cfg_auto)(a, auto_streams)
        h, metrics_h = step_all(cfg_hand)(h, hand_streams)
        out = divergence(a, h, data, cfg=cfg_auto)
        out["diverged"] = jnp.concatenate([metrics_a.diverged, metrics_h.diverged])
        return (a, h), out

    return jax.lax.scan(body, (auto, hand), None, length=intervals)


# ----------------------------------------------------------------------------- run


def _log(message: str, started: float) -> None:
    print(f"[chance {time.perf_counter() - started:6.1f}s] {message}", flush=True)


def run_a1(s: Settings, out_dir: Path, ds: data_lib.Dataset) -> dict:
    """A1: `a1_seeds` seeds of the base config with `sweep.run`; ensembles from the final params."""
    cfg = dataclasses.replace(s.base, seeds=SeedsConfig(n=s.a1_seeds, start=s.base.seeds.start))
    result = sweep.run(cfg, out_dir=out_dir / "a1", dataset=ds, progress=False)

    def compute() -> dict:
        diverged = result.history["diverged"][:, -1].astype(bool)
        ok = ~diverged
        probs = np.asarray(mean_softmax(result.final.params, result.final.bn_state,
                                        jnp.asarray(ds.x_test, cfg.model.dtype), cfg=cfg))[ok]  # (seeds, test, C)
        preds = result.test_predictions[ok]
        y = np.asarray(ds.y_test)
        sizes = sorted({k for k in (2 ** np.arange(int(np.log2(max(len(preds), 1))) + 1)) if k <= len(preds)}
                       | {len(preds)})
        rng = np.random.default_rng(0)
        reps = 32
        soft, vote = np.full((reps, len(sizes)), np.nan), np.full((reps, len(sizes)), np.nan)
        for c, k in enumerate(sizes):
            for r in range(reps):
                pick = rng.choice(len(preds), k, replace=False)
                soft[r, c] = np.mean(probs[pick].mean(axis=0).argmax(axis=-1) == y)
                vote[r, c] = np.mean(majority_vote(preds[pick], ds.num_classes) == y)
        return {
            "seeds": result.seeds, "test_acc": np.where(diverged, np.nan, result.history["test_acc"][:, -1]),
            "train_acc": np.where(diverged, np.nan, result.history["train_acc"][:, -1]),
            "diverged": diverged, "predictions": result.test_predictions, "y_test": y,
            "ensemble_softmax_acc": np.mean(probs.mean(axis=0).argmax(axis=-1) == y) if len(probs) else np.nan,
            "ensemble_vote_acc": np.mean(majority_vote(preds, ds.num_classes) == y) if len(preds) else np.nan,
            "ensemble_sizes": np.asarray(sizes), "ensemble_softmax_curve": soft, "ensemble_vote_curve": vote,
        }

    return store.cached("a1.npz", {"config": config_lib.to_dict(cfg)}, compute, folder=out_dir)


def run_a2(s: Settings, out_dir: Path, ds: data_lib.Dataset, started: float) -> dict:
    """A2: one stream varied at a time, and all three, on the base config with dropout; one program."""
    cfg = dataclasses.replace(s.base, model=dataclasses.replace(s.base.model, dropout=s.a2_dropout),
                              seeds=SeedsConfig(n=s.a2_seeds, start=s.base.seeds.start))
    data = device_data(ds, cfg.model.dtype)
    seeds = np.arange(cfg.seeds.start, cfg.seeds.start + cfg.seeds.n)
    out = {}
    for source in A2_SOURCES:
        vary = RANDOMNESS_STREAMS if source == "all" else (source,)
        settings = {"config": config_lib.to_dict(cfg), "vary": list(vary)}

        def compute(vary=vary) -> dict:
            state, history, preds = train_runs(source_streams(seeds, vary, cfg.seeds.start), data,
                                               jnp.asarray(cfg.optim.lr, cfg.model.dtype), cfg=cfg,
                                               in_features=ds.x_train.shape[1], num_classes=ds.num_classes)
            diverged = np.asarray(history.diverged[:, -1])
            return {"test_acc": np.where(diverged, np.nan, np.asarray(history.test_acc[:, -1], np.float64)),
                    "diverged": diverged, "predictions": np.asarray(preds)}

        arrays = store.cached(f"a2-{source}.npz", settings, compute, folder=out_dir)
        _log(f"A2 source {source}: {s.a2_seeds} seeds done", started)
        out |= {f"{k}_{source}": v for k, v in arrays.items()}
    return out


def run_a7(s: Settings, out_dir: Path, ds: data_lib.Dataset, started: float) -> dict:
    """A7: reference, one-ulp, hand-gradient, other-seed and copy runs in lockstep, measured every interval."""
    cfg = config_lib.override(s.base, [f"train.eval_every={s.a7_eval_every}", "train.grad=autodiff"])
    cfg = dataclasses.replace(cfg, seeds=SeedsConfig(n=s.a7_seeds, start=s.base.seeds.start))
    cfg_hand = config_lib.override(cfg, ["train.grad=hand"])

    def compute() -> dict:
        n, start = s.a7_seeds, cfg.seeds.start
        data = device_data(ds, cfg.model.dtype)
        lr = jnp.asarray(cfg.optim.lr, cfg.model.dtype)
        ref_streams = source_streams(np.arange(start, start + n), RANDOMNESS_STREAMS, start)
        seed_streams = source_streams(np.arange(start + n, start + 2 * n), RANDOMNESS_STREAMS, start)
        auto_streams = jax.tree.map(lambda *xs: jnp.concatenate(xs), ref_streams, ref_streams, seed_streams,
                                    ref_streams)
        auto, hand = a7_init(ref_streams, seed_streams, lr, cfg=cfg, in_features=ds.x_train.shape[1],
                             num_classes=ds.num_classes)
        trace = [jax.device_get(_divergence(auto, hand, data, cfg=cfg))]
        trace[0]["diverged"] = np.zeros(5 * n, bool)
        total = cfg.train.steps // cfg.train.eval_every
        per_call = math.gcd(total, max(1, cfg.train.chunk_steps // cfg.train.eval_every))
        for done in range(0, total, per_call):
            (auto, hand), out = a7_chunk(auto, hand, auto_streams, ref_streams, data, lr, cfg_auto=cfg,
                                         cfg_hand=cfg_hand, intervals=per_call)
            out = jax.device_get(out)
            trace += [{k: v[t] for k, v in out.items()} for t in range(per_call)]
            _log(f"A7 step {(done + per_call) * cfg.train.eval_every}/{cfg.train.steps}", started)
        arrays = {k: np.stack([t[k] for t in trace], axis=-1) for k in trace[0]}  # (runs, evals)
        arrays["steps"] = np.arange(total + 1) * cfg.train.eval_every
        return arrays

    return store.cached("a7.npz", {"config": config_lib.to_dict(cfg)}, compute, folder=out_dir)


def run(s: Settings, out_dir: Path) -> None:
    """Trains A1, A2 and A7 and writes their arrays (a1.npz, a2-<source>.npz, a7.npz).

    Each file is a `store.cached` value keyed by the full config of its part: a rerun with
    the same settings reuses it, an edited profile or override recomputes it.
    """
    started = time.perf_counter()
    out_dir = Path(out_dir)
    ds = data_lib.load(s.base.data)
    run_a1(s, out_dir, ds)
    _log(f"A1: {s.a1_seeds} seeds × {s.base.train.steps} steps done", started)
    run_a2(s, out_dir, ds, started)
    run_a7(s, out_dir, ds, started)
    store.write_json(out_dir / "run.json", {"seconds": time.perf_counter() - started,
                                            "settings": config_lib.to_dict(s)})


# ----------------------------------------------------------------------------- report


def _ci_dict(ci: stats.CI) -> dict:
    return ci.as_dict()


def _fig_a1(a1: dict, churn: stats.CI, path_hist: Path, path_scatter: Path) -> None:
    acc = a1["test_acc"][np.isfinite(a1["test_acc"])]
    fig, (ax, bx) = plots.subplots(1, 2, figsize=(11, 4.6))
    ax.hist(100 * acc, bins=max(5, min(30, len(acc) // 2)), color="C0", alpha=0.8, label=f"{len(acc)} seeds")
    ax.axvline(100 * acc.mean(), color="k", ls="--", label=f"mean {100 * acc.mean():.1f}%")
    ax.axvline(100 * float(a1["ensemble_softmax_acc"]), color="C3", label="ensemble of all (mean softmax)")
    ax.axvline(100 * float(a1["ensemble_vote_acc"]), color="C2", ls=":", label="ensemble of all (majority vote)")
    ax.set_xlabel("final test accuracy (%)")
    ax.set_ylabel("seeds")
    ax.set_title("A1: same config, different seeds")
    sizes = a1["ensemble_sizes"]
    for key, label, color in (("ensemble_softmax_curve", "mean softmax", "C3"),
                              ("ensemble_vote_curve", "majority vote", "C2")):
        curve = 100 * a1[key]
        low, mid, high = np.nanpercentile(curve, [25, 50, 75], axis=0)
        bx.plot(sizes, mid, "o-", color=color, label=f"{label} (median, IQR over {curve.shape[0]} random subsets)")
        bx.fill_between(sizes, low, high, color=color, alpha=0.25, lw=0)
    bx.set_xscale("log", base=2)
    bx.set_xlabel("ensemble size (seeds)")
    bx.set_ylabel("ensemble test accuracy (%)")
    bx.set_title("what the seeds are worth together")
    fig.legend(fontsize=8, ncol=3, loc="outside lower center")  # both panels' entries, off the data
    plots.save(fig, path_hist)

    ok = ~a1["diverged"].astype(bool)
    err, ch = pair_error_and_churn(a1["predictions"][ok], a1["y_test"])
    fig, ax = plots.subplots(figsize=(5.5, 5.2))
    ax.scatter(100 * err, 100 * ch, s=8, alpha=0.5, label=f"{len(err)} pairs of seeds")
    lim = np.array([0.0, 100 * max(err.max(initial=0.01), ch.max(initial=0.01) / 2) * 1.1])
    ax.plot(lim, 2 * lim, "k--", lw=0.8, label="upper bound: churn = err$_i$ + err$_j$")
    ax.plot(lim, lim, "k:", lw=0.8, label="churn = mean error")
    ax.axhline(100 * CHURN_THRESHOLD, color="C3", lw=0.8, label=f"rule threshold {CHURN_THRESHOLD:.0%}")
    ax.set_xlim(left=min(100 * err.min(initial=0) * 0.9, lim[1] * 0.5), right=lim[1])
    ax.set_ylim(0, 100 * max(ch.max(initial=0.01), 2 * CHURN_THRESHOLD) * 1.15)
    ax.set_xlabel("mean test error rate of the pair (%)")
    ax.set_ylabel("churn: test examples the pair disagrees on (%)")
    ax.set_title(f"A1: disagreement vs error (mean churn {100 * churn.estimate:.1f}%)")
    fig.legend(fontsize=8, ncol=2, loc="outside lower center")
    plots.save(fig, path_scatter)


def _fig_a2(rows: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10, 4))
    x = np.arange(len(A2_SOURCES))
    labels = [("all three" if s == "all" else f"{s} only") for s in A2_SOURCES]
    for axis, key, scale, ylabel in ((ax, "std", 100, "std of final test accuracy (percentage points)"),
                                     (bx, "churn", 100, "mean pairwise test churn (%)")):
        est = np.array([rows[s][key]["estimate"] if rows[s][key]["estimate"] is not None else np.nan
                        for s in A2_SOURCES]) * scale
        low = np.array([rows[s][key]["low"] if rows[s][key]["low"] is not None else np.nan for s in A2_SOURCES]) * scale
        high = np.array([rows[s][key]["high"] if rows[s][key]["high"] is not None else np.nan
                         for s in A2_SOURCES]) * scale
        axis.bar(x, est, color=["C0", "C1", "C2", "0.5"], alpha=0.85)
        axis.errorbar(x, est, yerr=[np.nan_to_num(est - low), np.nan_to_num(high - est)], fmt="none", color="k",
                      capsize=4, label="95% bootstrap CI over seeds")
        axis.set_xticks(x, labels)
        axis.set_ylabel(ylabel)
        axis.set_xlabel("randomness varied between seeds (the rest shared)")
    ax.axhline(SPREAD_SHARE * 100 * (rows["all"]["std"]["estimate"] or np.nan), color="C3", ls="--", lw=0.8,
               label=f"{SPREAD_SHARE:g} × all-sources std (rule threshold)")
    ax.set_title("A2: accuracy spread by source")
    bx.set_title("A2: prediction disagreement by source")
    ax.legend(fontsize=8)
    bx.legend(fontsize=8)
    plots.save(fig, path)


def _fig_a7(a7: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    steps = a7["steps"]
    fig, (ax, bx) = plt.subplots(1, 2, figsize=(12, 4.5))
    styles = {"ulp": ("one float32 ulp in one weight at init", "C0"),
              "hand": ("hand-derived vs autodiff gradients", "C1"),
              "seed": ("a different seed (reference level)", "0.3"),
              "copy": ("unperturbed copy (control)", "C2")}
    for pair, (label, color) in styles.items():
        dist, ch = a7[f"dist_{pair}"], a7[f"churn_{pair}"]
        if pair == "copy" and not np.any(dist):
            ax.plot([], [], color=color, label=f"{label}: bitwise identical, distance 0 throughout")
            continue
        with np.errstate(divide="ignore"):
            plots.seed_band(ax, steps, np.where(dist > 0, dist, np.nan), label=label, color=color, log_y=True)
        plots.seed_band(bx, steps, 100 * ch, label=label, color=color)
    ax.set_xlabel("training step")
    ax.set_ylabel("‖θ$_{perturbed}$ − θ$_{ref}$‖ / ‖θ$_{ref}$‖")
    ax.set_title("A7: how far apart the nets drift (parameters)")
    ax.legend(fontsize=7)
    bx.set_xlabel("training step")
    bx.set_ylabel("test examples predicted differently (%)")
    bx.set_title("A7: how far apart the answers drift (churn)")
    bx.legend(fontsize=7)
    plots.save(fig, path)


def _fmt_ci(ci: dict, scale: float = 1.0, digits: int = 3) -> str:
    if ci["estimate"] is None:
        return "—"
    f = lambda v: "—" if v is None else f"{scale * v:.{digits}f}"
    return f"{f(ci['estimate'])} [{f(ci['low'])}, {f(ci['high'])}]"


def report(out_dir: Path) -> list[Verdict]:
    """Reads run's arrays, writes summary.json and four figures, prints a table; verdicts for A1, A2, A7."""
    out_dir = Path(out_dir)
    settings = store.read_json(out_dir / "run.json")["settings"]
    b = settings["n_resamples"]
    a1 = store.read_npz(out_dir / "a1.npz")
    a2 = {s: store.read_npz(out_dir / f"a2-{s}.npz") for s in A2_SOURCES}
    a7 = store.read_npz(out_dir / "a7.npz")

    # A1 -------------------------------------------------------------------
    ok = ~a1["diverged"].astype(bool)
    acc = a1["test_acc"][ok]
    churn_ci = pairwise_mean_ci(spread.churn(a1["predictions"][ok]), n_resamples=b)
    acc_std = std_ci(acc, n_resamples=b)
    err_pair, churn_pair = pair_error_and_churn(a1["predictions"][ok], a1["y_test"])
    summary_a1 = {
        "seeds": int(ok.size), "diverged": int((~ok).sum()),
        "test_acc_mean": _ci_dict(stats.bootstrap_ci(acc, n_resamples=b)), "test_acc_std": _ci_dict(acc_std),
        "test_acc_min": float(acc.min()) if acc.size else None, "test_acc_max": float(acc.max()) if acc.size else None,
        "mean_pairwise_churn": _ci_dict(churn_ci),
        "mean_error": float(1 - acc.mean()) if acc.size else None,
        "churn_over_mean_pair_error": float(np.mean(churn_pair) / np.mean(err_pair)) if err_pair.size else None,
        "ensemble_softmax_acc": float(a1["ensemble_softmax_acc"]), "ensemble_vote_acc": float(a1["ensemble_vote_acc"]),
    }
    _fig_a1(a1, churn_ci, out_dir / "a1_accuracy.png", out_dir / "a1_churn_vs_error.png")

    # A2 -------------------------------------------------------------------
    all_acc = a2["all"]["test_acc"]
    rows = {}
    for source in A2_SOURCES:
        acc_s, keep = a2[source]["test_acc"], ~a2[source]["diverged"].astype(bool)
        rows[source] = {
            "std": _ci_dict(std_ci(acc_s, n_resamples=b)),
            "ratio_to_all": _ci_dict(std_ratio_ci(acc_s, all_acc, n_resamples=b)),
            "churn": _ci_dict(pairwise_mean_ci(spread.churn(a2[source]["predictions"][keep]), n_resamples=b)),
            "test_acc_mean": float(np.nanmean(acc_s)), "diverged": int((~keep).sum()),
        }
    singles = [s for s in A2_SOURCES if s != "all"]
    ratio_cis = {s: std_ratio_ci(a2[s]["test_acc"], all_acc, n_resamples=b) for s in singles}  # keeps +inf ends
    weakest = min(singles, key=lambda s: (rows[s]["ratio_to_all"]["estimate"]
                                          if rows[s]["ratio_to_all"]["estimate"] is not None else np.inf))
    _fig_a2(rows, out_dir / "a2_spread.png")

    # A7 -------------------------------------------------------------------
    final = {f"{m}_{p}": a7[f"{m}_{p}"][..., -1] for m in ("dist", "churn") for p in A7_PAIRS}
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = {p: final[f"churn_{p}"] / final["churn_seed"] for p in ("ulp", "hand")}
        dist_ratios = {p: final[f"dist_{p}"] / final["dist_seed"] for p in ("ulp", "hand")}
    ratio_ci = {p: stats.bootstrap_ci(r, n_resamples=b) for p, r in ratios.items()}
    control_identical = bool(np.all(a7["dist_copy"] == 0) and np.all(a7["churn_copy"] == 0))
    # A one-ulp change can be rounded away by the first updates: the twin is then bitwise the reference.
    absorbed = {p: int(np.sum(final[f"dist_{p}"] == 0)) for p in ("ulp", "hand")}
    half_step = {}
    for p in ("ulp", "hand"):  # first step where the median pair's churn reaches half the seed-pair level
        reached = np.median(a7[f"churn_{p}"], axis=0) >= FAR_SHARE * np.median(a7["churn_seed"], axis=0)
        half_step[p] = int(a7["steps"][reached.argmax()]) if reached.any() else None
    summary_a7 = {
        "pairs": int(final["churn_seed"].size), "steps": int(a7["steps"][-1]),
        "control_bitwise_identical": control_identical,
        **{f"final_churn_{p}": _ci_dict(stats.bootstrap_ci(final[f"churn_{p}"], n_resamples=b)) for p in A7_PAIRS},
        **{f"final_dist_{p}": _ci_dict(stats.bootstrap_ci(final[f"dist_{p}"], n_resamples=b)) for p in A7_PAIRS},
        **{f"churn_ratio_{p}": _ci_dict(ratio_ci[p]) for p in ratio_ci},
        **{f"dist_ratio_{p}": _ci_dict(stats.bootstrap_ci(r, n_resamples=b)) for p, r in dist_ratios.items()},
        **{f"first_step_half_seed_churn_{p}": half_step[p] for p in half_step},
        "initial_dist_ulp": float(np.median(a7["dist_ulp"][:, 0])),
        **{f"absorbed_{p}": absorbed[p] for p in absorbed},
    }
    _fig_a7(a7, out_dir / "a7_divergence.png")

    store.write_json(out_dir / "summary.json", {"A1": summary_a1, "A2": rows, "A7": summary_a7})
    acc_range = 100 * np.ptp(acc) if acc.size else math.nan
    print(f"A1  test acc over {acc.size} seeds: mean {_fmt_ci(summary_a1['test_acc_mean'], 100, 1)}%, "
          f"std {_fmt_ci(summary_a1['test_acc_std'], 100, 2)} pp, range {acc_range:.1f} pp; "
          f"churn {_fmt_ci(summary_a1['mean_pairwise_churn'], 100, 1)}%; "
          f"ensemble {100 * float(a1['ensemble_softmax_acc']):.1f}%")
    print("A2  source    acc std (pp)          std / all std        churn (%)")
    for s in A2_SOURCES:
        print(f"    {s:8s}  {_fmt_ci(rows[s]['std'], 100, 2):20s}  {_fmt_ci(rows[s]['ratio_to_all'], 1, 2):20s} "
              f"{_fmt_ci(rows[s]['churn'], 100, 1)}")
    print(f"A7  final churn / seed churn: ulp {_fmt_ci(summary_a7['churn_ratio_ulp'], 1, 2)}, "
          f"hand {_fmt_ci(summary_a7['churn_ratio_hand'], 1, 2)}; param distance / seed distance: "
          f"ulp {_fmt_ci(summary_a7['dist_ratio_ulp'], 1, 2)}, hand {_fmt_ci(summary_a7['dist_ratio_hand'], 1, 2)}; "
          f"control identical: {control_identical}")

    pp = lambda ci, key: 100 * (ci[key] if stats.finite_or_none(ci[key]) is not None else math.nan)
    std_a1, std_all = summary_a1["test_acc_std"], rows["all"]["std"]
    churn_ratio = {k: (rows[k]["churn"]["estimate"] or math.nan) / (rows["all"]["churn"]["estimate"] or math.nan)
                   for k in singles}
    return [
        a1_verdict(churn_ci, f"mean pairwise test-set disagreement (churn) between {acc.size} seeds of one config; "
                             f"their test acc {100 * np.mean(acc):.1f}%, std {pp(std_a1, 'estimate'):.2f} pp "
                             f"[{pp(std_a1, 'low'):.2f}, {pp(std_a1, 'high'):.2f}], range {acc_range:.1f} pp; "
                             f"churn = {summary_a1['churn_over_mean_pair_error'] or math.nan:.2f} × the pair's mean "
                             f"error; all-seed ensemble {100 * summary_a1['ensemble_softmax_acc']:.1f}% (mean softmax)"),
        a2_verdict(ratio_cis, f"test-acc std with one randomness source varied ÷ std with all three varied "
                              f"({pp(std_all, 'estimate'):.2f} pp), {settings['a2_seeds']} seeds each, dropout "
                              f"{settings['a2_dropout']}: " + ", ".join(f"{k} {_fmt_ci(rows[k]['ratio_to_all'], 1, 2)}"
                                                                      for k in singles)
                   + f"; value = the smallest ({weakest}); supplementary, test churn ÷ all-sources churn: "
                   + ", ".join(f"{k} {churn_ratio[k]:.2f}" for k in singles), value=ratio_cis[weakest]),
        a7_verdict(ratio_ci["ulp"], ratio_ci["hand"], control_identical,
                   f"final test churn between a run and its one-ulp-perturbed twin ÷ churn between two different "
                   f"seeds, {summary_a7['pairs']} seeds × {summary_a7['steps']} steps; hand-vs-autodiff twin "
                   f"{_fmt_ci(summary_a7['churn_ratio_hand'], 1, 2)}; parameter-distance ratio ulp "
                   f"{_fmt_ci(summary_a7['dist_ratio_ulp'], 1, 2)}, hand {_fmt_ci(summary_a7['dist_ratio_hand'], 1, 2)}; "
                   f"ulp twins rounded back to bitwise identity: {absorbed['ulp']}/{summary_a7['pairs']}; "
                   f"unperturbed control bitwise identical: {control_identical}"),
    ]
