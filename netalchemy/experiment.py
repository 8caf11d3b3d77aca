"""The shape every experiment shares: profiles, run, report, verdicts.

An experiment is a module in `experiments/` with
  CLAIMS:   the claim ids of experiments/claims.toml it tests, e.g. ("M2", "M3");
  PROFILES: {"tiny": settings, "quick": settings, "full": settings}, where settings is a
            frozen dataclass (overridable with `key=value`, as any config);
  run(settings, out_dir) -> None: measures and writes results into out_dir;
  report(out_dir) -> list[Verdict]: reads the results, writes figures, returns verdicts.
`run_experiment` resolves the settings, runs both steps and writes `verdicts.json`. Verdicts
come from rule objects (`netalchemy.verdicts`), which also write their rule text and flip point.

The same experiment runs on another dataset with `dataset=` (`DATASETS`): its data overrides
are applied to every run config (`Config`, `DataConfig`) inside the settings, so a profile
says what to train once and the audit asks the question again on real pictures.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Optional, Sequence

from netalchemy import config as config_lib
from netalchemy import presets, store
from netalchemy.config import Config, DataConfig

VERDICTS = ("supported", "contradicted", "inconclusive", "depends")
PROFILE_NAMES = ("tiny", "quick", "full")

# Every experiment module, in the order of the audit.
EXPERIMENTS = ("gradcheck", "chance", "hyperparams", "batch_size", "phases", "linearity",
               "regularization", "batchnorm", "stages", "memorization")


# The datasets an experiment or the audit can run on: `data.*` overrides of every run config.
# Fashion-MNIST (Xiao et al. 2017): real photographs, 10 classes, resized to 7x7 = 49 inputs, the size of
# MNIST-1D's 40, so that the dataset column changes what the data is and not the network's cost (28x28 = 784
# inputs costs 5.2x MNIST-1D's CPU time per step, 7x7 1.4x: measured, README); a fixed 4 000-image training
# subset (MNIST-1D's size; an experiment's own smaller subset stays) and all 10 000 test images. Profiles keep
# their seeds and steps on every dataset, so a verdict that changes between datasets at one profile is the
# data's doing (`stability`).
# "article": the article preset's data (T-shirt vs shirt, 64x64 = 4 096 inputs, two classes), same subset.
DATASETS: dict[str, tuple[str, ...]] = {
    "mnist1d": (),
    "fashion_mnist": ("data.name=fashion_mnist", "data.image_size=7", "data.train_size=4000"),
    "article": (*(o for o in presets.PRESETS["article"] if o.startswith("data.")), "data.train_size=4000"),
}


def describe_dataset(name: str) -> str:
    """`DATASETS[name]` in words, from its overrides, e.g. "fashion_mnist: 7x7, 4000 training images"."""
    if not DATASETS[name]:
        return f"{name}: the run configs' own data settings"
    data = config_lib.override(Config(), DATASETS[name]).data
    words = [f"{data.image_size}x{data.image_size}"]
    if data.classes:
        words.insert(0, f"{data.name} classes {data.classes}")
    if data.train_size:
        words.append(f"{data.train_size} training images")
    return f"{name}: " + ", ".join(words)


def dataset_free(name: str) -> Optional[str]:
    """Why experiment `name` does not depend on the dataset (its module's `DATASET_FREE`), or None."""
    return getattr(load_module(name), "DATASET_FREE", None)


class ExperimentError(ValueError):
    """Unknown experiment or profile; the message is one line."""


@dataclass(frozen=True)
class Verdict:
    """One row of the audit: a claim, its measurement, the value with a CI, and the verdict."""

    claim: str  # e.g. "M2"
    measurement: str  # what was measured, in words
    value: Optional[float]
    ci_low: Optional[float]
    ci_high: Optional[float]
    verdict: str  # one of VERDICTS
    rule: str  # the rule in code that produced the verdict, in words
    figure: Optional[str] = None  # path relative to the experiment's folder
    unit: str = ""
    flip_point: Optional[float] = None  # the threshold value at which the verdict would change
    flip_text: str = ""  # e.g. "supported; flips at 0.62" (see verdicts.Rule.flip_text)
    flip_of: str = ""  # the part whose threshold the flip point is, when not the value's own statistic
    flip_unit: Optional[str] = None  # that part's unit (None: `unit`)
    seeds_needed: Optional[int] = None  # inconclusive: ≈ seeds that would decide it (verdicts.Rule.seeds_needed)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


def load_module(name: str):
    if name not in EXPERIMENTS:
        raise ExperimentError(f"unknown experiment {name!r}; choose from {', '.join(EXPERIMENTS)}")
    return importlib.import_module(f"experiments.{name}")


def resolve_settings(name: str, profile: str, overrides: Sequence[str] = ()) -> Any:
    module = load_module(name)
    if profile not in module.PROFILES:
        raise ExperimentError(f"unknown profile {profile!r} for {name}; choose from "
                              f"{', '.join(module.PROFILES)}")
    return config_lib.override(module.PROFILES[profile], overrides)


def on_dataset(settings: Any, dataset: str) -> Any:
    """`settings` with the `DATASETS[dataset]` data overrides applied to every run config inside it
    (fields, nested dataclasses, tuples of them). A run config that trains on a subset of its own
    (`data.train_size` > 0: regularization's small set, memorization's, phases') keeps it."""
    if dataset not in DATASETS:
        raise ExperimentError(f"unknown dataset {dataset!r}{config_lib.did_you_mean(dataset, list(DATASETS))}; "
                              f"choose from {', '.join(DATASETS)}")
    assignments = DATASETS[dataset]
    if not assignments:
        return settings

    def data_assignments(data: DataConfig) -> list[str]:
        """The dataset's `data.*` overrides, less `train_size` where the experiment chose its own subset."""
        return [a for a in assignments if not (a.startswith("data.train_size=") and data.train_size)]

    def walk(node: Any) -> Any:
        if isinstance(node, Config):
            return config_lib.override(node, data_assignments(node.data))
        if isinstance(node, DataConfig):
            return config_lib.override(node, [a[len("data."):] for a in data_assignments(node)])
        if isinstance(node, tuple):
            return tuple(walk(x) for x in node)
        if is_dataclass(node) and not isinstance(node, type):
            return replace(node, **{f.name: walk(getattr(node, f.name)) for f in fields(node)})
        return node

    return walk(settings)


def experiment_dir(root: Path, name: str, profile: str, settings: Any, overridden: bool,
                   dataset: str = "mnist1d") -> Path:
    """runs/<name>/<profile>[-<dataset>], with -<hash> appended when overrides changed the settings."""
    suffix = "" if dataset == "mnist1d" else f"-{dataset}"
    suffix += f"-{config_lib.config_hash(settings)}" if overridden else ""
    return Path(root) / name / f"{profile}{suffix}"


def run_experiment(name: str, *, profile: str = "quick", overrides: Sequence[str] = (),
                   root: Path = Path("runs"), reuse: bool = False,
                   dataset: str = "mnist1d") -> tuple[Path, list[Verdict]]:
    """Runs one experiment (on `dataset`, see `DATASETS`) and its report; returns its folder and verdicts.

    With `reuse`, verdicts already stored for the same settings are returned as they are.
    """
    module = load_module(name)
    settings = on_dataset(resolve_settings(name, profile, overrides), dataset)
    out_dir = experiment_dir(root, name, profile, settings, bool(overrides), dataset)
    store.ensure_writable(out_dir)
    stored = out_dir / "verdicts.json"
    if reuse and stored.exists():
        record = store.read_json(stored)
        if record["settings"] == config_lib.to_dict(settings):
            return out_dir, [Verdict(**v) for v in record["verdicts"]]
    started = time.perf_counter()
    module.run(settings, out_dir)
    verdicts = module.report(out_dir)
    store.write_json(out_dir / "verdicts.json", {
        "experiment": name,
        "profile": profile,
        "dataset": dataset,
        "settings": config_lib.to_dict(settings),
        "verdicts": [asdict(v) for v in verdicts],
        "seconds": time.perf_counter() - started,
        "provenance": store.provenance(),
    })
    return out_dir, verdicts


def format_verdicts(verdicts: Sequence[Verdict]) -> str:
    """A plain-text table of verdicts, each with its flip point where a threshold decides and, for an inconclusive
    one, roughly how many seeds would decide it (`Verdict.seeds_needed`)."""
    def fmt(x: Optional[float]) -> str:
        return "—" if x is None else f"{x:.4g}"

    rows = [("claim", "value", "95% CI", "verdict", "measurement")]
    for v in verdicts:
        ci = "—" if v.ci_low is None else f"[{fmt(v.ci_low)}, {fmt(v.ci_high)}]"
        where = f" of {v.flip_of}" if v.flip_of else ""
        notes = ([] if v.flip_point is None else [f"flips at {v.flip_point:.3g}{where}"]) + (
            [f"≈{v.seeds_needed} seeds would decide"] if v.seeds_needed else [])
        verdict = v.verdict + (f" ({'; '.join(notes)})" if notes else "")
        rows.append((v.claim, fmt(v.value) + (f" {v.unit}" if v.unit else ""), ci, verdict, v.measurement))
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4] for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)
