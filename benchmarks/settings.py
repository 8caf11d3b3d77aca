"""What the benchmark measures: workloads and their FLOPs, ways of training, settings and the plan.

Pure functions and data only (no timing, no processes): `plan_cells` turns settings into the
cells a run measures, each "ok" or "skipped" with a reason.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from netalchemy import config as C  # light: the workers import this module before JAX or torch

# ----------------------------------------------------------------------------- workloads


class Workload(NamedTuple):
    name: str
    widths: tuple[int, ...]  # (inputs, hidden..., classes)
    batch: int
    lr: float
    data: str  # where the inputs come from, in words


WORKLOADS = {
    "W1": Workload("W1", (40, 100, 100, 10), 100, 1e-2, "MNIST-1D training set (4000 × 40)"),
    "W2": Workload("W2", (4096, 512, 256, 2), 128, 1e-3,
                   "synthetic 64×64 grayscale-shaped inputs (standard normal, random labels)"),
}


def flops_per_step(widths: Sequence[int], batch: int) -> int:
    """Matmul FLOPs of one training step of one seed (forward + backward).

    forward 2·B·Σ fan_in·fan_out; weight gradients the same; input gradients the same except
    the first layer's (nothing needs the gradient of the data).
    """
    layers = [a * b for a, b in zip(widths[:-1], widths[1:])]
    return 2 * batch * (3 * sum(layers) - layers[0])


def matmul_flops(n: int) -> int:
    """FLOPs of one n×n by n×n matmul (n multiply-adds per output)."""
    return 2 * n ** 3


# ----------------------------------------------------------------------------- ways


class Way(NamedTuple):
    label: str
    backend: str  # "jax" or "torch"
    vmapped: bool  # trains many seeds in one program; False: one seed per run
    modules: tuple[str, ...]  # imported by the worker before it is ready (not timed)
    builder: str  # "module:function" in this package that builds its runner in the worker
    xla_flags: str = ""  # XLA_FLAGS added in its worker: a lever measured against the same program without
    variant: str = ""  # comma-separated changes its builder makes to the program (see VARIANTS)
    base: str = ""  # a lever: the way it is measured against, the same program without the change


# A lever way's program changes (issue 13), each measured against its base way in the same run:
VARIANTS = {
    "shared_data": "every seed draws the same minibatches (seeds.vary without 'data'): the first layer's "
                   "input is shared, so its matmul is one (batch, in) x (in, seeds*width) product",
    "eval_once": "evaluates only at the start and the end of a call (eval_every = steps), not every interval",
    "hand_grad": "train.grad='hand': the hand-derived backward pass forms each weight gradient as inputs^T @ delta, "
                 "in the weight's own layout; jax.grad under vmap emits it transposed, (out, in)",
    "highest": "jax_default_matmul_precision='highest' (float32 dots asked for full precision explicitly)",
    "sgd": "plain SGD update instead of Adam: no first and second moments to read and write",
    "fixed_batch": "one fixed minibatch every step: no gather from the training set",
    "grad_norm": "train.grad_norm=true: the gradient norm logged every step, one more pass over the gradients",
}


# XLA's CPU dot libraries (issue 13): JAX 0.10.2 routes dots through YNNPACK by default;
# oneDNN and XNNPACK are the alternatives, and an empty YNN fusion type leaves dots to XLA.
ONEDNN = "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot"
NO_YNN = "--xla_cpu_experimental_ynn_fusion_type="
XNN = f"{NO_YNN} --xla_cpu_experimental_xnn_fusion_type=dot"
# XLA's CPU multi-output fusion: sibling loops that read the same operand become one loop, e.g.
# Adam's two moment updates, which otherwise read each gradient twice.
MULTI_OUTPUT = "--xla_backend_extra_options=xla_cpu_use_multi_output_fusion"

WAYS = {
    "engine": Way("netalchemy sweep.run", "jax", True, ("netalchemy.sweep",), "engine:sweep_runner"),
    "engine_chunk": Way("engine program (train_chunk)", "jax", True, ("netalchemy.sweep",), "engine:program_runner"),
    "jax_ref": Way("plain JAX scan+vmap", "jax", True, ("jax", "optax"), "peers_jax:jax_ref_runner"),
    "flax_nnx": Way("Flax NNX loop", "jax", False, ("flax.nnx", "optax"), "peers_flax:flax_nnx_runner"),
    "torch_eager": Way("PyTorch eager", "torch", False, ("torch",), "peers_torch:eager_runner"),
    "torch_compile": Way("torch.compile", "torch", False, ("torch",), "peers_torch:compiled_runner"),
    "torch_func": Way("torch.func ensemble", "torch", True, ("torch", "torch.func"), "peers_torch:ensemble_runner"),
    "engine_chunk_onednn": Way("engine program, oneDNN dots", "jax", True, ("netalchemy.sweep",),
                               "engine:program_runner", ONEDNN, base="engine_chunk"),
    "engine_chunk_xnn": Way("engine program, XNNPACK dots", "jax", True, ("netalchemy.sweep",),
                            "engine:program_runner", XNN, base="engine_chunk"),
    "engine_chunk_no_ynn": Way("engine program, XLA's own dots", "jax", True, ("netalchemy.sweep",),
                               "engine:program_runner", NO_YNN, base="engine_chunk"),
    "engine_chunk_mof": Way("engine program, multi-output fusion", "jax", True, ("netalchemy.sweep",),
                            "engine:program_runner", MULTI_OUTPUT, base="engine_chunk"),
    "jax_ref_mof": Way("plain JAX, multi-output fusion", "jax", True, ("jax", "optax"), "peers_jax:jax_ref_runner",
                       MULTI_OUTPUT, base="jax_ref"),
    "engine_chunk_shared_data": Way("engine program, one minibatch order for all seeds", "jax", True,
                                    ("netalchemy.sweep",), "engine:program_runner", variant="shared_data",
                                    base="engine_chunk"),
    "engine_chunk_eval_once": Way("engine program, evaluated at the ends of a call only", "jax", True,
                                  ("netalchemy.sweep",), "engine:program_runner", variant="eval_once",
                                  base="engine_chunk"),
    "engine_chunk_hand_grad": Way("engine program, hand-derived backward pass", "jax", True, ("netalchemy.sweep",),
                                  "engine:program_runner", variant="hand_grad", base="engine_chunk"),
    "engine_chunk_grad_norm": Way("engine program, gradient norm logged", "jax", True, ("netalchemy.sweep",),
                                  "engine:program_runner", variant="grad_norm", base="engine_chunk"),
    "engine_chunk_highest": Way("engine program, matmul precision 'highest'", "jax", True, ("netalchemy.sweep",),
                                "engine:program_runner", variant="highest", base="engine_chunk"),
    "jax_ref_sgd": Way("plain JAX, SGD update", "jax", True, ("jax", "optax"), "peers_jax:jax_ref_runner",
                       variant="sgd", base="jax_ref"),
    "jax_ref_fixed_batch": Way("plain JAX, one fixed minibatch", "jax", True, ("jax", "optax"),
                               "peers_jax:jax_ref_runner", variant="fixed_batch", base="jax_ref"),
    "jax_ref_dots": Way("plain JAX, SGD on one fixed minibatch (the step's dots and little else)", "jax", True,
                        ("jax", "optax"), "peers_jax:jax_ref_runner", variant="sgd,fixed_batch", base="jax_ref"),
}
LEVERS = tuple(w for w, way in WAYS.items() if way.base)  # measured on request: ways=engine_chunk,...
MATMUL_BUILDERS = {"jax": "peers_jax:matmul_runner", "torch": "peers_torch:matmul_runner"}
PEERS = ("engine_chunk", "jax_ref", "flax_nnx", "torch_eager", "torch_compile", "torch_func")
TORCH_MISSING = ("PyTorch is not installed: skipping torch_eager, torch_compile and torch_func "
                 "(pip install 'netalchemy[bench]' to compare with PyTorch)")


def variants(spec: dict) -> frozenset[str]:
    """The program changes (`VARIANTS`) of the way a worker spec names (none for a plain way)."""
    way = WAYS.get(spec.get("way", ""))
    return frozenset(v for v in (way.variant.split(",") if way else ()) if v)


def torch_available() -> bool:
    return importlib.util.find_spec("torch") is not None


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class BenchSettings:
    """What the benchmark measures; any field can be overridden with `key=value`."""

    workloads: tuple[str, ...] = ("W1", "W2")
    ways: tuple[str, ...] = tuple(w for w in WAYS if w not in LEVERS)
    seeds: tuple[int, ...] = (1, 32, 256, 1024)  # one-seed ways run in the seeds=1 group
    w1_steps: int = 500  # steps per timed call, at most (W1)
    w2_steps: int = 100  # the same for W2
    max_gflop_per_call: float = 1000.0  # fewer steps for big groups: seeds·steps·FLOPs ≤ this ...
    min_steps: int = 20  # ... and a group that would need fewer steps than this is skipped
    engine_eval_every: int = 250  # the engine default; lowered to `steps` for shorter calls
    repeats: int = 3  # timed calls per cell, interleaved round-robin over the ways
    memory_limit_gb: float = 8.0  # skip a (workload, seeds) group whose engine estimate exceeds it
    w2_train_size: int = 1024  # synthetic W2 examples (the engine evaluates all of them)
    w2_test_size: int = 256
    matmul_size: int = 2048
    torch_threads: int = 0  # 0 = PyTorch's default (one per core)
    engine_cpu_devices: int = 0  # JAX CPU devices for the engine ways; 0 = one per core, as the CLI
    timeout_s: float = 1800.0  # per worker request
    # "W:N": the step's ceilings of workload W at N seeds (`step_dots`: its dots, PyTorch's kernels for
    # them, Adam's update, the streaming rate), each in a process of its own, after the timed cells
    step_profiles: tuple[str, ...] = ("W1:256", "W2:4")
    step_profile_repeats: int = 10

    def __post_init__(self) -> None:
        def check(ok: bool, message: str) -> None:
            if not ok:
                raise C.ConfigError(message)

        bad = [w for w in self.workloads if w not in WORKLOADS]
        check(not bad, f"workloads: unknown {bad[:1]}; choose from {', '.join(WORKLOADS)}")
        bad = [w for w in self.ways if w not in WAYS]
        check(not bad, f"ways: unknown {bad[:1]}; choose from {', '.join(WAYS)}")
        check(bool(self.seeds) and all(s >= 1 for s in self.seeds), "seeds: every count must be >= 1")
        single = [w for w in self.ways if not WAYS[w].vmapped]
        check(not single or 1 in self.seeds, f"seeds must include 1 for the one-seed ways {', '.join(single)}")
        check(1 <= self.min_steps <= min(self.w1_steps, self.w2_steps), "need 1 <= min_steps <= w1_steps, w2_steps")
        check(self.engine_eval_every >= 1, "engine_eval_every must be >= 1")
        check(self.repeats >= 1, "repeats must be >= 1")
        check(self.max_gflop_per_call > 0 and self.memory_limit_gb > 0, "budgets must be > 0")
        check(self.w2_train_size >= WORKLOADS["W2"].batch and self.w2_test_size >= 1,
              "w2_train_size must be >= the W2 batch (128)")
        check(self.matmul_size >= 1 and self.torch_threads >= 0 and self.engine_cpu_devices >= 0,
              "matmul_size >= 1, torch_threads >= 0, engine_cpu_devices >= 0")
        for item in self.step_profiles:
            w, _, n = item.partition(":")
            check(w in WORKLOADS and n.isdigit() and int(n) >= 1,
                  f"step_profiles: {item!r} is not WORKLOAD:SEEDS, e.g. W1:256 ({', '.join(WORKLOADS)})")
        check(self.step_profile_repeats >= 1, "step_profile_repeats must be >= 1")


PROFILES = {
    # Seconds (for tests): W1 at one seed, 40 steps per call, no torch.compile (a cold compile
    # takes 20-70 s here), one PyTorch thread (two collapse when pytest workers share the cores).
    "tiny": BenchSettings(workloads=("W1",), ways=("engine", "jax_ref", "flax_nnx", "torch_eager", "torch_func"),
                          seeds=(1,), w1_steps=40, min_steps=20, engine_eval_every=20, repeats=2,
                          matmul_size=512, torch_threads=1, timeout_s=300.0, step_profiles=()),
    # A few minutes on 2 cores: every way; W1 at 1, 4, 32 and 256 seeds; W2 at 1 and 4 seeds (32
    # would need fewer than min_steps steps within the per-call budget, so it is skipped). W2 at 4
    # seeds is its figure: at 1 seed XLA compiles the size-1 vmap with the first layer's weight
    # gradient transposed, which halves the step rate (measured; README, Performance).
    "quick": BenchSettings(seeds=(1, 4, 32, 256), w1_steps=250, w2_steps=100, max_gflop_per_call=250.0,
                           min_steps=50, repeats=2),
    # The real measurement, about 20 minutes on 2 cores: every seed count of the issue (W2 up to
    # 32 seeds: 256 and 1024 exceed the memory limit).
    "full": BenchSettings(),
}


# ----------------------------------------------------------------------------- planning


def engine_config(workload: Workload, seeds: int, *, steps: int, eval_every: int) -> C.Config:
    """The netalchemy config of a workload (engine defaults for everything else)."""
    return C.Config(model=C.ModelConfig(hidden=tuple(workload.widths[1:-1])),
                    optim=C.OptimConfig(name="adam", lr=workload.lr),
                    train=C.TrainConfig(steps=steps, batch_size=workload.batch, eval_every=eval_every),
                    seeds=C.SeedsConfig(n=seeds))


def engine_bytes(workload: Workload, seeds: int, *, n_train: int, n_test: int) -> int:
    """The engine's own memory estimate for `seeds` runs: `sweep.bytes_per_run × seeds`."""
    from netalchemy import sweep

    cfg = engine_config(workload, seeds, steps=1, eval_every=1)
    return seeds * sweep.bytes_per_run(cfg, in_features=workload.widths[0], num_classes=workload.widths[-1],
                                       n_train=n_train, n_test=n_test)


def group_steps(settings: BenchSettings, workload: Workload, seeds: int) -> tuple[int, int]:
    """(steps per timed call, engine eval_every) of a (workload, seeds) group.

    At most `w1_steps` / `w2_steps`, fewer when seeds·steps·FLOPs would exceed
    `max_gflop_per_call`; rounded down to a multiple of the engine's eval_every, which is
    `engine_eval_every` or, for calls shorter than that, the whole call. A result below
    `min_steps` means the group is skipped (see `plan_cells`).
    """
    per_step = flops_per_step(workload.widths, workload.batch) * seeds
    cap = settings.w1_steps if workload.name == "W1" else settings.w2_steps
    steps = max(1, min(cap, int(settings.max_gflop_per_call * 1e9 // per_step)))
    every = min(settings.engine_eval_every, steps)
    return steps // every * every, every


def eval_flop_share(workload: Workload, steps: int, eval_every: int, *, n_train: int, n_test: int) -> float:
    """The share of the engine's matmul FLOPs in one call that go to evaluation, not training.

    The engine evaluates the whole train and test sets at step 0 and every `eval_every`
    steps: (1 + steps / eval_every) forward passes over n_train + n_test examples.
    Short timed calls evaluate relatively more often than a real run does.
    """
    forward = 2 * sum(a * b for a, b in zip(workload.widths[:-1], workload.widths[1:]))  # per example
    evaluation = (1 + steps // eval_every) * (n_train + n_test) * forward
    return evaluation / (evaluation + steps * flops_per_step(workload.widths, workload.batch))


def plan_cells(settings: BenchSettings, workload: Workload, seeds: int, *, n_train: int, n_test: int,
               have_torch: bool) -> list[dict]:
    """The cells of one (workload, seeds) group, each "ok" (to run) or "skipped" with a reason.

    One-seed ways belong to the seeds=1 group only; PyTorch ways are skipped without
    PyTorch; the whole group is skipped when the engine's estimate exceeds `memory_limit_gb`
    or when fewer than `min_steps` steps fit in `max_gflop_per_call`.
    """
    steps, every = group_steps(settings, workload, seeds)
    estimate = engine_bytes(workload, seeds, n_train=n_train, n_test=n_test)
    cells = []
    for way in settings.ways:
        if not WAYS[way].vmapped and seeds != 1:
            continue
        cell = {"workload": workload.name, "way": way, "seeds": seeds, "steps": steps, "status": "ok", "reason": "",
                "times_s": [], "cpu_s": [], "first_call_s": None, "peak_rss_bytes": None,
                "rss_after_import_bytes": None, "engine_estimate_bytes": estimate, "info": {},
                "eval_flop_share": (eval_flop_share(workload, steps, every, n_train=n_train, n_test=n_test)
                                    if way in ("engine", "engine_chunk") else 0.0)}
        if WAYS[way].backend == "torch" and not have_torch:
            cell.update(status="skipped", reason="PyTorch not installed")
        elif estimate > settings.memory_limit_gb * 2**30:
            cell.update(status="skipped", reason=f"engine estimate {estimate / 2**30:.1f} GiB > memory_limit_gb")
        elif steps < settings.min_steps:
            cell.update(status="skipped", reason=f"{steps} steps < min_steps within max_gflop_per_call "
                                                 f"({settings.max_gflop_per_call:g})")
        cells.append(cell)
    return cells
