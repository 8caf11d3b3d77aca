"""Gradient check (claims M1, M2, M3): hand-derived backprop vs `jax.grad` vs finite differences.

Over a grid of MLPs (0–4 hidden layers, several widths, with and without batch norm and
dropout, L1/L2 penalties, batch sizes from 1 up, several seeds), at initialization and after
some SGD steps, the gradient of the training objective is computed three ways:
  hand      `netalchemy.backprop.hand_grad` (chain rule in jnp),
  autodiff  `jax.grad`,
  FD        central finite differences (θ ± h·e_i) in float64 on sampled coordinates.
Relative error (cs231n): |a − b| / max(|a|, |b|), 0 when a = b. Per parameter array,
hand vs autodiff uses the largest entry-wise difference over the array's largest entry,
floored at 1e-12 (float64) / 1e-6 (float32) so round-off of an exactly-zero gradient
does not read as a 100% error.
Entry-wise FD comparisons add a floor `fd_floor` to the denominator: FD's own absolute error
is ≈ ε·|L|/h + h²·|L‴|/6 ≈ 1e-11 for h = 1e-5, so a relative error of 1e-5 can be resolved
only for entries well above 1e-6; entries below the floor 1e-4 are compared in absolute terms
(|a − b| / 1e-4).

A finite difference straddles a kink, where the loss is not differentiable, when its two
evaluations θ ± h·e_i see different ReLU patterns, or, with an L1 penalty, when the bumped
weight changes sign (|w| has its kink at 0; L1 drives trained weights there). Such
coordinates are detected, counted and reported separately instead of being hidden or allowed
to fail the check.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree

from netalchemy import backprop, losses, mlp, plots, stats, store
from netalchemy.config import ModelConfig
from netalchemy.experiment import Verdict
from netalchemy.verdicts import Part, Rule, all_hold, judge

CLAIMS = ("M1", "M2", "M3")

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
    batch_sizes: tuple[int, ...] = (1, 7, 32)
    seeds: int = 2
    max_configs: int = 0  # 0 = the full factorial grid; else a seeded random subset of it
    train_steps: int = 25  # SGD steps before the "trained" check
    train_lr: float = 0.1
    fd_coords: int = 24  # coordinates sampled per parameter array for finite differences
    fd_step: float = 1e-5
    fd_floor: float = 1e-4
    in_features: int = 10
    num_classes: int = 4


PROFILES = {
    "tiny": Settings(architectures=("none", "8-8"), batch_sizes=(1, 5), seeds=1, max_configs=6,
                     train_steps=3, fd_coords=6),
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


def rel_error(a: np.ndarray, b: np.ndarray, floor: float = 0.0) -> np.ndarray:
    """cs231n's |a − b| / max(|a|, |b|, floor), entry-wise; 0 where a == b."""
    diff = np.abs(a - b)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), floor)
    return np.where(diff == 0, 0.0, diff / np.where(scale == 0, 1.0, scale))


ZERO_FLOOR = {"float64": 1e-12, "float32": 1e-6}  # gradients below this are round-off of an exact 0


def array_error(a, b, floor: float = 0.0) -> float:
    """max|a − b| / max(max|a|, max|b|, floor) over one parameter array; 0 when equal.

    The floor keeps an array that is zero in exact arithmetic (all its units dropped, say),
    computed as ±1e-17 one way and 0 the other, from counting as a 100% error.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    diff = float(np.max(np.abs(a - b)))
    scale = max(float(np.max(np.abs(a))), float(np.max(np.abs(b))), floor)
    return 0.0 if diff == 0 else diff / scale


def leaf_names(params: mlp.Params) -> list[str]:
    """'L1.w', 'L1.b', ..., 'out.w' for each leaf, in `ravel_pytree` order."""
    names = []
    for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
        index, field = path[0].idx, path[1].name
        names.append(f"{'out' if index == len(params) - 1 else f'L{index + 1}'}.{field}")
    return names


def relu_pattern(params, state, x, *, cfg, key) -> jax.Array:
    """Signs of every ReLU input, concatenated: (batch · Σ widths,) booleans."""
    out = mlp.forward(params, state, x, cfg=cfg, train=True, key=key)
    if not out.hidden:
        return jnp.zeros((0,), bool)
    return jnp.concatenate([(c.pre_activation > 0).ravel() for c in out.hidden])


_hand_grad = jax.jit(backprop.hand_grad, static_argnames="cfg")
_autodiff_grad = jax.jit(backprop.autodiff_grad, static_argnames="cfg")


@partial(jax.jit, static_argnames="cfg")
def finite_differences(params, state, x, y, bumps, *, cfg: ModelConfig, l1, l2, key):
    """Central differences along each row of `bumps` (coords, n_params), and a kink flag per row.

    Returns (fd (coords,), kink (coords,)): kink is True where the difference straddles a
    point of non-differentiability: θ + bump and θ − bump see different ReLU on/off patterns,
    or (l1 ≠ 0) a weight-matrix entry has a different sign at the two.
    """
    theta, unravel = ravel_pytree(params)
    penalised, _ = ravel_pytree(penalised_mask(params))
    loss_at = lambda t: backprop.objective(unravel(t), state, x, y, cfg=cfg, l1=l1, l2=l2, key=key)[0]
    pattern_at = lambda t: relu_pattern(unravel(t), state, x, cfg=cfg, key=key)
    plus, minus = theta + bumps, theta - bumps
    step = jnp.max(bumps, axis=-1)
    fd = (jax.vmap(loss_at)(plus) - jax.vmap(loss_at)(minus)) / (2 * step)
    relu_kink = jnp.any(jax.vmap(pattern_at)(plus) != jax.vmap(pattern_at)(minus), axis=-1)
    abs_kink = (l1 != 0) & jnp.any(penalised & (jnp.sign(plus) != jnp.sign(minus)), axis=-1)
    return fd, relu_kink | abs_kink


def penalised_mask(params) -> mlp.Params:
    """Like `params`: True on the entries the L1/L2 penalties act on (`losses.weights`), else False."""
    return type(params)(layer._replace(**{f: None if v is None else jnp.full(v.shape, f == "w")
                                          for f, v in layer._asdict().items()}) for layer in params)


@partial(jax.jit, static_argnames="cfg")
def output_delta_check(logits, y, step, *, cfg: ModelConfig):
    """(softmax − onehot)/B, jax.grad of the mean cross-entropy in the logits, and its FD."""
    delta = backprop.output_delta(logits, y)
    auto = jax.grad(losses.cross_entropy)(logits, y)
    eye = jnp.eye(logits.size, dtype=logits.dtype).reshape(logits.size, *logits.shape) * step
    ce = jax.vmap(lambda z: losses.cross_entropy(z, y))
    fd = ((ce(logits + eye) - ce(logits - eye)) / (2 * step)).reshape(logits.shape)
    return delta, auto, fd


def check_point(params, state, x, y, *, cfg: ModelConfig, l1, l2, key, s: Settings, rng) -> list[dict]:
    """Compares the three gradients at one point; one record per parameter array."""
    cfg32 = dataclasses.replace(cfg, dtype="float32")
    to32 = lambda t: jax.tree.map(lambda a: a.astype(jnp.float32), t)
    kw = dict(l1=l1, l2=l2, key=key)
    hand64, aux = _hand_grad(params, state, x, y, cfg=cfg, **kw)
    auto64, _ = _autodiff_grad(params, state, x, y, cfg=cfg, **kw)
    hand32, _ = _hand_grad(to32(params), to32(state), x.astype(jnp.float32), y, cfg=cfg32, **kw)
    auto32, _ = _autodiff_grad(to32(params), to32(state), x.astype(jnp.float32), y, cfg=cfg32, **kw)

    flat_hand, _ = ravel_pytree(hand64)
    flat_auto, _ = ravel_pytree(auto64)
    sizes = [leaf.size for leaf in jax.tree.leaves(params)]
    offsets = np.cumsum([0] + sizes)
    coords = np.concatenate([
        o + rng.choice(n, min(n, s.fd_coords), replace=False) for o, n in zip(offsets[:-1], sizes)])
    bumps = np.zeros((len(coords), offsets[-1]))
    bumps[np.arange(len(coords)), coords] = s.fd_step
    fd, kink = map(np.asarray, finite_differences(params, state, x, y, bumps, cfg=cfg, **kw))
    err_hand_fd = rel_error(np.asarray(flat_hand)[coords], fd, s.fd_floor)
    err_auto_fd = rel_error(np.asarray(flat_auto)[coords], fd, s.fd_floor)

    records = []
    leaves = zip(leaf_names(params), jax.tree.leaves(hand64), jax.tree.leaves(auto64),
                 jax.tree.leaves(hand32), jax.tree.leaves(auto32))
    for i, (name, h64, a64, h32, a32) in enumerate(leaves):
        in_leaf = (coords >= offsets[i]) & (coords < offsets[i + 1])
        smooth, kinked = in_leaf & ~kink, in_leaf & kink
        records.append(dict(
            param=name,
            hand_vs_autodiff_f64=array_error(h64, a64, ZERO_FLOOR["float64"]),
            hand_vs_autodiff_f32=array_error(h32, a32, ZERO_FLOOR["float32"]),
            hand_vs_fd=float(err_hand_fd[smooth].max(initial=0.0)),
            autodiff_vs_fd=float(err_auto_fd[smooth].max(initial=0.0)),
            fd_coords=int(in_leaf.sum()),
            kink_coords=int(kinked.sum()),
            hand_vs_fd_at_kinks=float(err_hand_fd[kinked].max(initial=0.0)),
        ))
    # Claim M2: the output delta (softmax − onehot)/B against jax.grad and FD of the loss in the logits.
    delta, auto_delta, fd_delta = map(np.asarray, output_delta_check(aux.logits, y, s.fd_step, cfg=cfg))
    records.append(dict(param="dL/dz_out", hand_vs_autodiff_f64=array_error(delta, auto_delta, ZERO_FLOOR["float64"]),
                        hand_vs_fd=float(rel_error(delta, fd_delta, s.fd_floor).max())))
    return records


@partial(jax.jit, static_argnames=("cfg", "s"))
def sgd_steps(params, state, *, cfg: ModelConfig, l1, l2, key, s: Settings):
    """A few SGD steps on random batches, so the second check sees trained weights."""
    def step(carry, i):
        params, state = carry
        kx, ky, kd = jax.random.split(jax.random.fold_in(key, i), 3)
        x = jax.random.normal(kx, (16, s.in_features), jnp.float64)
        y = jax.random.randint(ky, (16,), 0, s.num_classes)
        grads, aux = backprop.autodiff_grad(params, state, x, y, cfg=cfg, l1=l1, l2=l2, key=kd)
        return (jax.tree.map(lambda p, g: p - s.train_lr * g, params, grads), aux.state), None

    (params, state), _ = jax.lax.scan(step, (params, state), jnp.arange(s.train_steps))
    return params, state


def run(s: Settings, out_dir: Path) -> None:
    """Checks every configuration of the grid; writes results.json."""
    started = time.perf_counter()
    records = []
    with jax.enable_x64(True):
        for c in grid(s):
            cfg = ModelConfig(hidden=_hidden(c["arch"]), batch_norm=c["batch_norm"], dropout=c["dropout"],
                              dtype="float64")
            k_init, k_data, k_drop, k_train = jax.random.split(jax.random.key(c["seed"]), 4)
            params, state = mlp.init(k_init, cfg, in_features=s.in_features, num_classes=s.num_classes)
            kx, ky = jax.random.split(k_data)
            x = jax.random.normal(kx, (c["batch"], s.in_features), jnp.float64)
            y = jax.random.randint(ky, (c["batch"],), 0, s.num_classes)
            rng = np.random.default_rng(c["seed"])
            for stage in ("init", "trained"):
                if stage == "trained":
                    params, state = sgd_steps(params, state, cfg=cfg, l1=c["l1"], l2=c["l2"], key=k_train, s=s)
                for r in check_point(params, state, x, y, cfg=cfg, l1=c["l1"], l2=c["l2"], key=k_drop, s=s, rng=rng):
                    records.append({**c, "stage": stage, **r})
    store.write_json(out_dir / "results.json", {
        "records": records, "seconds": time.perf_counter() - started, "n_configs": len(grid(s))})


def summarize(records: list[dict]) -> list[dict]:
    """Worst errors per parameter position ("L1.w", ..., "out.b", "dL/dz_out") over the grid."""
    rows = []
    for name in sorted({r["param"] for r in records}, key=lambda n: (n[0] != "L", n)):
        rs = [r for r in records if r["param"] == name]
        worst = lambda k: max((r[k] for r in rs if r.get(k) is not None), default=None)
        rows.append(dict(
            param=name, checks=len(rs),
            hand_vs_autodiff_f64=worst("hand_vs_autodiff_f64"),
            hand_vs_autodiff_f32=worst("hand_vs_autodiff_f32"),
            hand_vs_fd=worst("hand_vs_fd"), autodiff_vs_fd=worst("autodiff_vs_fd"),
            fd_coords=sum(r.get("fd_coords", 0) for r in rs),
            kink_coords=sum(r.get("kink_coords", 0) for r in rs),
            hand_vs_fd_at_kinks=worst("hand_vs_fd_at_kinks")))
    return rows


def format_table(rows: list[dict]) -> str:
    cols = [("param", "param"), ("checks", "checks"), ("hand_vs_autodiff_f64", "hand~auto f64"),
            ("hand_vs_autodiff_f32", "hand~auto f32"), ("hand_vs_fd", "hand~FD"),
            ("autodiff_vs_fd", "auto~FD"), ("kink_coords", "kinks/FD coords"),
            ("hand_vs_fd_at_kinks", "hand~FD at kinks")]
    fmt = lambda v: "—" if v is None else (f"{v:.2e}" if isinstance(v, float) else str(v))
    table = [[h for _, h in cols]]
    for r in rows:
        cells = [fmt(r[k]) for k, _ in cols]
        cells[6] = f"{r['kink_coords']}/{r['fd_coords']}" if r["fd_coords"] else "—"
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = ["  ".join(c.rjust(w) if j else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths)))
             for row in table]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def report(out_dir: Path) -> list[Verdict]:
    """Prints the error table, writes table.txt and a figure, returns verdicts for M1–M3."""
    results = store.read_json(out_dir / "results.json")
    records, rows = results["records"], summarize(results["records"])
    table = format_table(rows)
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
