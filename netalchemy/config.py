"""One complete, immutable configuration per run, with `key=value` overrides.

A `Config` is a tree of frozen dataclasses. `override(cfg, ["optim.lr=3e-3"])` returns
a new config; unknown keys and bad values raise `ConfigError` with a one-line message.
Nothing is ever `exec`-ed: values are parsed by the field's declared type.
`config_hash(cfg)` is a stable short hash of the resolved config (used to name runs and
to refuse overwriting a finished run with a different config).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config key or value is invalid; the message is one line, fit for a user."""


RANDOMNESS_STREAMS = ("init", "data", "dropout")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine")


def check(condition: bool, message: str) -> None:
    """Raises `ConfigError(message)` unless `condition`: validation for any settings dataclass."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class ModelConfig:
    """The MLP: inputs -> hidden ReLU layers -> softmax outputs."""

    hidden: tuple[int, ...] = (100, 100)
    activation: str = "relu"  # "relu" or "linear" (a deep linear net, claim M4)
    dropout: float = 0.0  # inverted dropout rate after each hidden activation
    batch_norm: bool = False  # BN between each hidden dense layer and its activation
    bn_momentum: float = 0.9  # running average: r <- m r + (1 - m) batch_stat
    bn_eps: float = 1e-5
    init: str = "he"  # "he" (Kaiming normal, fan-in) or "lecun"
    dtype: str = "float32"  # "float32" or "float64" (needs jax_enable_x64)

    def __post_init__(self) -> None:
        check(all(h >= 1 for h in self.hidden), "model.hidden: every width must be >= 1")
        check(self.activation in ("relu", "linear"), "model.activation must be relu or linear")
        check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        check(0.0 <= self.bn_momentum < 1.0, "model.bn_momentum must be in [0, 1)")
        check(self.bn_eps > 0, "model.bn_eps must be > 0")
        check(self.init in ("he", "lecun"), "model.init must be he or lecun")
        check(self.dtype in ("float32", "float64"), "model.dtype must be float32 or float64")


@dataclass(frozen=True)
class OptimConfig:
    """An optax optimizer by name, its schedule and optional gradient clipping."""

    name: str = "adam"
    lr: float = 1e-2
    momentum: float = 0.9  # for momentum / nesterov
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 1e-4  # adamw only
    rms_decay: float = 0.9  # rmsprop only
    schedule: str = "constant"
    warmup_steps: int = 0
    clip_norm: float = 0.0  # 0 disables global-norm clipping

    def __post_init__(self) -> None:
        check(self.name in OPTIMIZERS, f"optim.name must be one of {', '.join(OPTIMIZERS)}")
        check(self.lr > 0 and math.isfinite(self.lr), "optim.lr must be a positive number")
        check(self.schedule in SCHEDULES, f"optim.schedule must be one of {', '.join(SCHEDULES)}")
        check(self.warmup_steps >= 0, "optim.warmup_steps must be >= 0")
        check(self.clip_norm >= 0, "optim.clip_norm must be >= 0")
        check(0 <= self.momentum < 1, "optim.momentum must be in [0, 1)")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: steps, minibatching, evaluation, regularization, gradients."""

    steps: int = 6000
    batch_size: int = 100
    sampling: str = "shuffle"  # "shuffle" (epochs without replacement) or "replace"
    eval_every: int = 250
    l1: float = 0.0
    l2: float = 0.0
    grad: str = "autodiff"  # "autodiff" (jax.grad) or "hand" (netalchemy.backprop)
    chunk_steps: int = 1000  # steps between checkpoints
    memory_budget_gb: float = 4.0  # seeds are run in chunks that fit this budget

    def __post_init__(self) -> None:
        check(self.steps >= 1, "train.steps must be >= 1")
        check(self.batch_size >= 1, "train.batch_size must be >= 1")
        check(self.sampling in ("shuffle", "replace"), "train.sampling must be shuffle or replace")
        check(self.eval_every >= 1, "train.eval_every must be >= 1")
        check(self.l1 >= 0 and self.l2 >= 0, "train.l1 and train.l2 must be >= 0")
        check(self.grad in ("autodiff", "hand"), "train.grad must be autodiff or hand")
        check(self.chunk_steps >= 1, "train.chunk_steps must be >= 1")
        check(self.steps % self.eval_every == 0,
               f"train.steps ({self.steps}) must be a multiple of train.eval_every ({self.eval_every})")
        check(self.memory_budget_gb > 0, "train.memory_budget_gb must be > 0")


@dataclass(frozen=True)
class DataConfig:
    """Which dataset, and how it is preprocessed into in-memory arrays."""

    name: str = "mnist1d"  # "mnist1d" (generated offline) or any TFDS name
    train_size: int = 0  # 0 = the whole training split; else a fixed random subset
    label_noise: float = 0.0  # fraction of training labels replaced uniformly at random
    image_size: int = 64  # images are resized to image_size x image_size
    grayscale: bool = True
    holdout_fraction: float = 0.2  # test split carved from train when a dataset has none
    seed: int = 0  # subset, label noise and hold-out split (data, not training randomness)
    data_dir: str = ""  # TFDS data_dir; "" = TFDS default (~/tensorflow_datasets)

    def __post_init__(self) -> None:
        check(bool(self.name), "data.name must not be empty")
        check(self.train_size >= 0, "data.train_size must be >= 0")
        check(0.0 <= self.label_noise <= 1.0, "data.label_noise must be in [0, 1]")
        check(self.image_size >= 1, "data.image_size must be >= 1")
        check(0.0 < self.holdout_fraction < 1.0, "data.holdout_fraction must be in (0, 1)")


@dataclass(frozen=True)
class SeedsConfig:
    """Which seeds run, and which randomness streams vary between them (claim A2)."""

    n: int = 32
    start: int = 0
    vary: tuple[str, ...] = RANDOMNESS_STREAMS  # streams not listed are shared by all seeds

    def __post_init__(self) -> None:
        check(self.n >= 1, "seeds.n must be >= 1")
        check(self.start >= 0, "seeds.start must be >= 0")
        bad = [s for s in self.vary if s not in RANDOMNESS_STREAMS]
        check(not bad, f"seeds.vary: unknown stream {bad[0] if bad else ''!r}; "
               f"choose from {', '.join(RANDOMNESS_STREAMS)}")


@dataclass(frozen=True)
class Config:
    """The complete configuration of one run (a sweep over seeds)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)
    seeds: SeedsConfig = field(default_factory=SeedsConfig)


# --------------------------------------------------------------------------- overrides


def _parse(text: str, annotation: Any, key: str) -> Any:
    """Parses `text` as a value of the (resolved) type `annotation`."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(annotation)
        body = text.strip().strip("[]()")
        items = [t for t in (s.strip() for s in body.split(",")) if t]
        return tuple(_parse(t, item_type, key) for t in items)
    if origin in (typing.Union, types.UnionType):
        return _parse(text, next(a for a in typing.get_args(annotation) if a is not type(None)), key)
    try:
        if annotation is bool:
            lowered = text.strip().lower()
            if lowered in ("true", "1", "yes", "on"):
                return True
            if lowered in ("false", "0", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            value = float(text)
            if not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            value = float(text)
            if not math.isfinite(value):
                raise ValueError
            return value
        if annotation is str:
            return text
    except ValueError:
        raise ConfigError(f"{key}: cannot read {text!r} as {annotation.__name__}") from None
    raise ConfigError(f"{key}: unsupported type {annotation}")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def override(cfg: Any, assignments: Sequence[str]) -> Any:
    """Returns `cfg` with each `section.field=value` assignment applied.

    All assignments are applied before any section is validated, so
    `train.steps=100 train.eval_every=50` works whatever the order.

    Raises:
      ConfigError: on a malformed assignment, an unknown key or an invalid value.
    """
    tree: dict[str, Any] = {}
    for assignment in assignments:
        key, sep, text = assignment.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"expected key=value, got {assignment!r}")
        node = tree
        *sections, leaf = key.split(".")
        for name in sections:
            node = node.setdefault(name, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{key}: {name} is a value, not a section")
        node[leaf] = (key, text)
    return _apply(cfg, tree)


def _apply(node: Any, tree: dict[str, Any]) -> Any:
    names = [f.name for f in dataclasses.fields(node)]
    changes = {}
    for name, sub in tree.items():
        key = sub[0] if isinstance(sub, tuple) else name
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}: {name!r} is not one of {', '.join(names)}")
        current = getattr(node, name)
        if isinstance(sub, tuple):
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}."
                                  f"{dataclasses.fields(current)[0].name}=...")
            changes[name] = _parse(sub[1], _field_types(type(node))[name], key)
        else:
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"unknown config key: {name!r} has no fields")
            changes[name] = _apply(current, sub)
    return dataclasses.replace(node, **changes)


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(data: dict[str, Any], cls: type = Config) -> Any:
    """Inverse of `to_dict`; unknown keys raise `ConfigError`."""
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in types_:
            raise ConfigError(f"unknown config key {name!r} in {cls.__name__}")
        annotation = types_[name]
        if dataclasses.is_dataclass(annotation):
            value = from_dict(value, annotation)
        elif typing.get_origin(annotation) is tuple:
            value = tuple(value)
        kwargs[name] = value
    return cls(**kwargs)


def config_hash(cfg: Any) -> str:
    """A stable 12-hex-digit hash of the resolved config."""
    canonical = json.dumps(to_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def all_keys(cfg: Any, prefix: str = "") -> dict[str, Any]:
    """Flattens a config into {"section.field": value} (for help and reports)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            out.update(all_keys(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out
