"""One complete, immutable configuration per run, with `key=value` overrides.

A `Config` is a tree of frozen dataclasses. `override(cfg, ["optim.lr=3e-3"])` returns
a new config; unknown keys and bad values raise `ConfigError` with a one-line message.
Nothing is ever `exec`-ed: values are parsed by the field's declared type, a mistyped
key or choice gets a "did you mean" suggestion, and counts must be integers in
[1, 2**31 − 1] (JAX counts steps and seeds in int32). `CHOICES` lists the allowed values
of every choice key: the one table that validation, suggestions and `--help` read.
`config_hash(cfg)` is a stable short hash of the resolved config (used to name runs and
to refuse overwriting a finished run with a different config).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import math
import numbers
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Sequence


class ConfigError(ValueError):
    """A config key or value is invalid; the message is one line, fit for a user."""


RANDOMNESS_STREAMS = ("init", "data", "dropout")
OPTIMIZERS = ("sgd", "momentum", "nesterov", "adam", "adamw", "rmsprop")
SCHEDULES = ("constant", "cosine", "warmup_cosine")
ACTIVATIONS = ("relu", "linear")
INITS = ("he", "lecun")
DTYPES = ("float32", "float64")
SAMPLINGS = ("shuffle", "replace")
GRADS = ("autodiff", "hand")

# The allowed values of every choice key (for `seeds.vary`, of each listed stream).
CHOICES: dict[str, tuple[str, ...]] = {
    "model.activation": ACTIVATIONS,
    "model.init": INITS,
    "model.dtype": DTYPES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "train.sampling": SAMPLINGS,
    "train.grad": GRADS,
    "seeds.vary": RANDOMNESS_STREAMS,
}

MAX_INT = 2**31 - 1  # the largest int32: steps, widths and seeds are int32 inside JAX programs


def check(condition: bool, message: str) -> None:
    """Raises `ConfigError(message)` unless `condition`: validation for any settings dataclass."""
    if not condition:
        raise ConfigError(message)


def did_you_mean(word: str, options: Sequence[str]) -> str:
    """" (did you mean 'x'?)" for the option closest to `word` (difflib), or "" if none is close."""
    close = difflib.get_close_matches(str(word), [str(o) for o in options], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(key: str, value: Any) -> None:
    """Raises `ConfigError` unless `value` is one of `CHOICES[key]`."""
    options = CHOICES[key]
    check(value in options, f"{key} must be one of {', '.join(options)}, got {value!r}{did_you_mean(value, options)}")


def check_int(key: str, value: Any, low: int = 1, high: int = MAX_INT) -> None:
    """Raises `ConfigError` unless `value` is an integer (not a bool) in [low, high]."""
    check(isinstance(value, numbers.Integral) and not isinstance(value, bool),
          f"{key} must be an integer, got {value!r}")
    check(low <= value <= high, f"{key} must be in [{low}, {high}], got {_short(value)}")


def _short(value: int) -> str:
    """An integer for a one-line message: 1e+99, not a hundred digits."""
    if abs(value) < 10**15:
        return str(value)
    try:
        return f"{float(value):.3g}"
    except OverflowError:
        return f"a {len(str(abs(value)))}-digit number"


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
        for width in self.hidden:
            check_int("model.hidden width", width)
        check_choice("model.activation", self.activation)
        check(0.0 <= self.dropout < 1.0, "model.dropout must be in [0, 1)")
        check(0.0 <= self.bn_momentum < 1.0, "model.bn_momentum must be in [0, 1)")
        check(self.bn_eps > 0, "model.bn_eps must be > 0")
        check_choice("model.init", self.init)
        check_choice("model.dtype", self.dtype)


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
        check_choice("optim.name", self.name)
        check(self.lr > 0 and math.isfinite(self.lr), "optim.lr must be a positive number")
        check_choice("optim.schedule", self.schedule)
        check_int("optim.warmup_steps", self.warmup_steps, low=0)
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
    # Log each step's gradient norm (mean per interval)? It reads every gradient once more: measured
    # 1.13x faster without it on the 4096-input network, 1.08x at 256 MNIST-1D seeds; off, it logs NaN.
    grad_norm: bool = False
    chunk_steps: int = 1000  # steps between checkpoints
    memory_budget_gb: float = 4.0  # seeds are run in chunks that fit this budget

    def __post_init__(self) -> None:
        check_int("train.steps", self.steps)
        check_int("train.batch_size", self.batch_size)
        check_choice("train.sampling", self.sampling)
        check_int("train.eval_every", self.eval_every)  # need not divide steps: the last evaluation is at the end
        check(self.l1 >= 0 and self.l2 >= 0, "train.l1 and train.l2 must be >= 0")
        check_choice("train.grad", self.grad)
        check_int("train.chunk_steps", self.chunk_steps)
        check(self.memory_budget_gb > 0 and math.isfinite(self.memory_budget_gb),
              "train.memory_budget_gb must be a positive number")


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
    classes: str = ""  # original class ids to keep, e.g. "0,6", relabelled 0..k-1 in this order; "" = all

    def __post_init__(self) -> None:
        check(bool(self.name), "data.name must not be empty")
        check_int("data.train_size", self.train_size, low=0)
        check(0.0 <= self.label_noise <= 1.0, "data.label_noise must be in [0, 1]")
        check_int("data.image_size", self.image_size, high=2**16)
        check(0.0 < self.holdout_fraction < 1.0, "data.holdout_fraction must be in (0, 1)")
        check_int("data.seed", self.seed, low=0)


@dataclass(frozen=True)
class SeedsConfig:
    """Which seeds run, and which randomness streams vary between them (claim A2)."""

    n: int = 32
    start: int = 0
    vary: tuple[str, ...] = RANDOMNESS_STREAMS  # streams not listed are shared by all seeds

    def __post_init__(self) -> None:
        check_int("seeds.n", self.n)
        check_int("seeds.start", self.start, low=0, high=MAX_INT - self.n + 1)  # the last seed fits int32 too
        for stream in self.vary:
            check(stream in RANDOMNESS_STREAMS, f"seeds.vary: unknown stream {stream!r}; choose from "
                  f"{', '.join(RANDOMNESS_STREAMS)}{did_you_mean(stream, RANDOMNESS_STREAMS)}")


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
            try:
                return int(text)
            except ValueError:  # 1e3 or 1.5: read as a number, kept only if it is a whole one
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


def _apply(node: Any, tree: dict[str, Any], prefix: str = "", root: Any = None) -> Any:
    root = node if root is None else root
    names = [f.name for f in dataclasses.fields(node)]
    changes = {}
    for name, sub in tree.items():
        key = sub[0] if isinstance(sub, tuple) else _first_key(sub)
        if name not in names:
            raise ConfigError(f"unknown config key {key!r}: {name!r} is not one of {', '.join(names)}"
                              f"{_suggest_key(key, root)}")
        current = getattr(node, name)
        if isinstance(sub, tuple):
            if dataclasses.is_dataclass(current):
                raise ConfigError(f"{key} is a section; set one of its fields, e.g. {key}."
                                  f"{dataclasses.fields(current)[0].name}=...")
            changes[name] = _parse(sub[1], _field_types(type(node))[name], key)
        else:
            if not dataclasses.is_dataclass(current):
                raise ConfigError(f"unknown config key {key!r}: {prefix + name} is a value, not a section")
            changes[name] = _apply(current, sub, f"{prefix}{name}.", root)
    return dataclasses.replace(node, **changes)


def _first_key(tree: dict[str, Any]) -> str:
    """The first full key assigned under a section of the override tree."""
    sub = next(iter(tree.values()))
    return sub[0] if isinstance(sub, tuple) else _first_key(sub)


def _suggest_key(key: str, root: Any) -> str:
    """A "did you mean" for a mistyped key: the closest full key, else the key whose last part
    matches (`lr` → `optim.lr`)."""
    keys = list(all_keys(root))
    hint = did_you_mean(key, keys)
    if hint:
        return hint
    by_leaf = {}
    for k in keys:
        by_leaf.setdefault(k.rsplit(".", 1)[-1], k)
    close = difflib.get_close_matches(key.rsplit(".", 1)[-1], list(by_leaf), n=1)
    return f" (did you mean {by_leaf[close[0]]!r}?)" if close else ""


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain JSON-able data (tuples become lists)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def from_dict(data: dict[str, Any], cls: type = Config, prefix: str = "") -> Any:
    """Inverse of `to_dict`; unknown keys and values of the wrong type raise `ConfigError`."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__} must be a mapping, got {type(data).__name__}")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in types_:
            raise ConfigError(f"unknown config key {prefix + name!r} in {cls.__name__}")
        annotation = types_[name]
        if dataclasses.is_dataclass(annotation):
            value = from_dict(value, annotation, f"{prefix}{name}.")
        else:
            value = _typed(value, annotation, prefix + name)
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # a value of a type the field's own checks cannot compare
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from None


def _typed(value: Any, annotation: Any, key: str) -> Any:
    """`value` (read from JSON) checked against the field's type; lists become tuples."""
    origin = typing.get_origin(annotation)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {type(value).__name__}")
        (item_type, _ellipsis) = typing.get_args(annotation)
        return tuple(_typed(v, item_type, key) for v in value)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(annotation):
            return None
        return _typed(value, next(a for a in typing.get_args(annotation) if a is not type(None)), key)
    expected = {bool: (bool,), int: (numbers.Integral,), float: (numbers.Real,), str: (str,)}.get(annotation)
    if expected is None:
        return value
    if not isinstance(value, expected) or (annotation is not bool and isinstance(value, bool)):
        raise ConfigError(f"{key} must be {annotation.__name__}, got {type(value).__name__} {value!r:.40}")
    return value


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
