"""Gradient check (claims M1, M2, M3): hand-derived backprop vs `jax.grad` vs finite differences.

Over a grid of MLPs (0–4 hidden layers, several widths, with and without batch norm and
dropout, L1/L2 penalties, batch sizes from 1 up, several seeds), at initialization and after
some SGD steps, the gradient of the training objective is computed three ways:
  hand      `netalchemy.backprop.hand_grad` (chain rule in jnp),
  autodiff  `jax.grad`,
  FD        central finite differences (θ ± h·e_i) in float64 on sampled coordinates,
by `netalchemy.gradcheck_numerics.gradient_errors` (relative errors as cs231n's, per array
for hand vs autodiff, entry-wise with the floor `fd_floor` for FD, whose own absolute error is
≈ 1e-11 at h = 1e-5). FD coordinates whose two evaluations straddle a kink (a ReLU input or,
under L1, a weight changing sign) are counted and reported apart, not hidden and not failed.

The trained point: each model of the grid (architecture, batch norm, dropout, L1, L2) is one
sweep of `seeds` seeds through the engine (`sweep.run`, float64): plain SGD at `train_lr`,
`train_steps` steps of `train_batch` examples from one epoch of a Gaussian random-label
training set (every step sees fresh examples). The check at initialization reads the same
runs' initial params (`sweep.initial_params`). The check batch (1 to 32 examples) and its
dropout key come from the grid row's seed. results.json is a `store.cached` value keyed by
the full settings; each sweep caches itself in sweeps/<config hash>, each model's checks in
checks/<config hash>.json, after which its compiled programs are dropped (the full grid compiles
~1 500 programs; kept, their code mappings exceed Linux's 65 530 per process and LLVM aborts).
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from netalchemy import gradcheck_numerics as gn
from netalchemy import losses, per_run, plots, stats, store, sweep
from netalchemy.config import Config, DataConfig, ModelConfig, OptimConfig, SeedsConfig, TrainConfig, config_hash
from netalchemy.data import Dataset
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, all_hold, judge

CLAIMS = ("M1", "M2", "M3")
# `--dataset` audits skip it (`experiment.dataset_free`): no dataset enters the check.
DATASET_FREE = "its gradients are checked on random inputs and labels, so no dataset enters"

# Pass thresholds: the largest relative error allowed, per parameter array.
HAND_VS_AUTODIFF = {"float64": 1e-10, "float32": 1e-5}
FD_VS_ANALYTIC = 1e-5  # float64, entry-wise, coordinates away from kinks (ReLU, |w|)
M1_STATED, M1_TOLERANCE = 0.357, 5e-4  # the article's rounded value and its rounding

# The rules. The numbers are exact computations, not samples: each is judged as a point interval.
M1_RULE = Rule(f"|−ln 0.7 − {M1_STATED}|", M1_TOLERANCE, "below", "half a unit in the stated value's last digit")
AUTODIFF_F64 = Rule("the worst relative error, hand vs jax.grad, float64", HAND_VS_AUTODIFF["float64"], "below",
                    "two computations of the same derivative in float64 agree to round-off, ~1e-16 per operation")
AUTODIFF_F32 = Rule("the worst relative error, hand vs jax.grad, float32", HAND_VS_AUTODIFF["float32"], "below",
                    "the same in float32, ~1e-7 per operation")
FD = Rule("the worst entry-wise relative error, hand vs central finite differences, float64, away from kinks "
          "(ReLU, |w|)", FD_VS_ANALYTIC, "below", "the O(h²) truncation plus round-off of a central difference")


def exact_verdict(claim: str, parts: list[tuple[str, Rule, float]], *, measurement: str,
                  figure: Optional[str] = None, value: Optional[float] = None) -> Verdict:
    """A claim judged on exact numbers: every part must hold (its value on the rule's side).
    The row shows `value` (default: the first part's) with no interval."""
    v, _ = judge(claim, [Part(name, rule, stats.CI(x, x, x)) for name, rule, x in parts],
                 lambda d: all_hold(list(d.values())), how="supported iff every part is", measurement=measurement,
                 figure=figure)
    return dataclasses.replace(v, ci_low=None, ci_high=None, value=v.value if value is None else value)


@dataclass(frozen=True)
class Settings:
    architectures: tuple[str, ...] = ("none", "8", "16-8", "8-8-8", "6-6-6-6")  # hidden widths
    batch_norm: tuple[bool, ...] = (False, True)
    dropout: tuple[float, ...] = (0.0, 0.5)
    l1: tuple[float, ...] = (0.0, 1e-3)
    l2: tuple[float, ...] = (0.0, 1e-2)
    batch_sizes: tuple[int, ...] = (1, 7, 32)  # of the checked batch
    seeds: int = 2
    max_configs: int = 0  # 0 = the full factorial grid; else a seeded random subset of it
    train_steps: int = 25  # SGD steps before the "trained" check
    train_lr: float = 0.1
    train_batch: int = 16
    fd_coords: int = 24  # coordinates sampled per parameter array for finite differences
    fd_step: float = 1e-5
    fd_floor: float = 1e-4
    in_features: int = 10
    num_classes: int = 4


PROFILES = {
    "tiny": Settings(architectures=("8-8",), batch_norm=(True,), dropout=(0.5,), l1=(1e-3,), l2=(1e-2,),
                     batch_sizes=(5,), seeds=1, train_steps=3, fd_coords=6),  # one row, every layer kind
    "quick": Settings(max_configs=12, fd_coords=8),
    "full": Settings(seeds=3),
}


def _hidden(arch: str) -> tuple[int, ...]:
    return () if arch == "none" else tuple(int(w) for w in arch.split("-"))


def grid(s: Settings) -> list[dict]:
    """The configurations checked: the factorial grid, or a seeded subset of it."""
    rows = []
    for arch, bn, drop, l1, l2, batch, seed in itertools.product(
            s.architectures, s.batch_norm, s.dropout, s.l1, s.l2, s.batch_sizes, range(s.seeds)):
        if (bn or drop) and arch == "none":
            continue  # no hidden layer to normalise or drop
        rows.append(dict(arch=arch, batch_norm=bn, dropout=drop, l1=l1, l2=l2, batch=batch, seed=seed))
    if s.max_configs and s.max_configs < len(rows):
        pick = np.random.default_rng(0).choice(len(rows), s.max_configs, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return rows


# ----------------------------------------------------------------------------- what is trained


def model_of(c: dict) -> tuple:
    """The part of a grid row that training depends on: (arch, batch_norm, dropout, l1, l2)."""
    return c["arch"], c["batch_norm"], c["dropout"], c["l1"], c["l2"]


def training_config(s: Settings, model: tuple) -> Config:
    """One model of the grid trained by SGD, float64; data.train_size is the random set's size."""
    arch, bn, drop, l1, l2 = model
    return Config(model=ModelConfig(hidden=_hidden(arch), batch_norm=bn, dropout=drop, dtype="float64"),
                  optim=OptimConfig(name="sgd", lr=s.train_lr),
                  train=TrainConfig(steps=s.train_steps, batch_size=s.train_batch, eval_every=s.train_steps,
                                    l1=l1, l2=l2),
                  data=DataConfig(name="gaussian-random-labels", train_size=s.train_batch * s.train_steps),
                  seeds=SeedsConfig(n=s.seeds))


def random_labels(cfg: Config, s: Settings) -> Dataset:
    """`cfg.data.train_size` N(0, 1) inputs (float64) with uniform labels, and one batch to test on."""
    rng = np.random.default_rng(cfg.data.seed)
    n, n_test = cfg.data.train_size, cfg.train.batch_size
    x = rng.standard_normal((n + n_test, s.in_features))
    y = rng.integers(0, s.num_classes, n + n_test).astype(np.int32)
    return Dataset(x[:n], y[:n], x[n:], y[n:], s.num_classes, cfg.data.name)


def trained_points(s: Settings, model: tuple, out_dir: Path) -> dict[str, tuple]:
    """{"init": (params, bn_state), "trained": (params, bn_state)}, leaves with a leading (seeds,) axis."""
    cfg = training_config(s, model)
    result = sweep.run(cfg, out_dir=out_dir / "sweeps" / config_hash(cfg), dataset=random_labels(cfg, s),
                       progress=False)
    initial = sweep.initial_params(cfg, result.seeds, in_features=s.in_features, num_classes=s.num_classes)
    return {"init": initial, "trained": (result.final.params, result.final.bn_state)}


# ----------------------------------------------------------------------------- what is measured


def check_row(s: Settings, c: dict, points: dict[str, tuple]) -> list[dict]:
    """The gradient check of one grid row at both stages; one record per parameter array and stage."""
    kx, ky, k_drop = jax.random.split(jax.random.key(c["seed"]), 3)
    x = jax.random.normal(kx, (c["batch"], s.in_features), jnp.float64)
    y = jax.random.randint(ky, (c["batch"],), 0, s.num_classes)
    cfg = training_config(s, model_of(c)).model
    rng = np.random.default_rng(c["seed"])  # FD coordinates, drawn for init, then for trained
    records = []
    for stage, point in points.items():
        params, state = per_run.at(point, c["seed"])  # run index = seed (seeds.start = 0)
        coords = gn.sample_coordinates(params, s.fd_coords, rng)
        records += [{**c, "stage": stage, **r} for r in gn.gradient_errors(
            params, state, x, y, coords, cfg=cfg, l1=c["l1"], l2=c["l2"], key=k_drop, step=s.fd_step,
            floor=s.fd_floor)]
    return records


def check_model(s: Settings, model: tuple, rows: list[dict], out_dir: Path) -> list[dict]:
    """Trains one model of the grid (one sweep) and checks its rows: cached, then its programs dropped."""
    def compute() -> list[dict]:
        with jax.enable_x64(True):
            points = trained_points(s, model, out_dir)
            return [r for c in rows for r in check_row(s, c, points)]

    name = f"{config_hash(training_config(s, model))}.json"
    records = store.cached(name, {"settings": dataclasses.asdict(s), "rows": rows}, compute, folder=out_dir / "checks")
    jax.clear_caches()
    return records


def run(s: Settings, out_dir: Path) -> None:
    """Checks every model of the grid (`check_model`); writes results.json."""
    def compute() -> dict:
        started, rows = time.perf_counter(), grid(s)
        records = [r for m in dict.fromkeys(map(model_of, rows))
                   for r in check_model(s, m, [c for c in rows if model_of(c) == m], out_dir)]
        return {"records": records, "seconds": time.perf_counter() - started, "n_configs": len(rows)}

    store.cached("results.json", s, compute, folder=out_dir)


# ----------------------------------------------------------------------------- report and rules


def report(out_dir: Path) -> list[Verdict]:
    """Prints the error table, writes table.txt and a figure, returns verdicts for M1–M3."""
    results = store.read_json(out_dir / "results.json")["value"]  # the store.cached record
    records, rows = results["records"], gn.worst_per_param(results["records"])
    table = gn.format_errors(rows)
    (out_dir / "table.txt").write_text(table + "\n")
    print(f"largest relative error per parameter over {results['n_configs']} configurations × 2 stages\n{table}")
    plots.gradcheck_errors(rows, out_dir / "errors.png",
                           thresholds={"hand~auto f64": HAND_VS_AUTODIFF["float64"],
                                       "hand~auto f32": HAND_VS_AUTODIFF["float32"], "hand~FD": FD_VS_ANALYTIC})

    worst = lambda key, rs=records: max((r[key] for r in rs if r.get(key) is not None), default=0.0)
    m1 = float(losses.cross_entropy_from_probs(jnp.array([1.0, 0.0]), jnp.array([0.7, 0.3])))
    delta_rows = [r for r in records if r["param"] == "dL/dz_out"]
    param_rows = [r for r in records if r["param"] != "dL/dz_out"]
    m2_auto, m2_fd = worst("hand_vs_autodiff_f64", delta_rows), worst("hand_vs_fd", delta_rows)
    f64, f32 = worst("hand_vs_autodiff_f64", param_rows), worst("hand_vs_autodiff_f32", param_rows)
    fd = worst("hand_vs_fd", param_rows)
    kinks = sum(r["kink_coords"] for r in param_rows)
    n_fd = sum(r["fd_coords"] for r in param_rows)
    return [
        exact_verdict("M1", [("M1", M1_RULE, abs(m1 - M1_STATED))],
                      measurement="cross-entropy of y_true=[1,0], y_pred=[0.7,0.3] (stated ≈ 0.357)", value=m1),
        exact_verdict("M2", [("vs jax.grad", AUTODIFF_F64, m2_auto), ("vs FD", FD, m2_fd)],
                      measurement=f"worst rel. error of (softmax − onehot)/B vs jax.grad over {len(delta_rows)} "
                                  f"checks (vs FD: {m2_fd:.1e})", figure="errors.png"),
        exact_verdict("M3", [("float64", AUTODIFF_F64, f64), ("float32", AUTODIFF_F32, f32), ("vs FD", FD, fd)],
                      measurement=f"worst rel. error, hand backprop vs jax.grad, float64 (float32: {f32:.1e}; vs FD: "
                                  f"{fd:.1e}; {kinks}/{n_fd} FD coordinates straddled a kink)", figure="errors.png"),
    ]
