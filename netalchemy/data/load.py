"""Loads a dataset named by a `DataConfig` into in-memory numpy arrays.

`load(cfg)` reads every example of a TFDS dataset through `as_data_source` (ArrayRecord,
random access, no TensorFlow), then:

1. test split: the dataset's `test` split, or, when it has only `train`, a hold-out of
   `round(holdout_fraction * n)` examples: `np.random.default_rng(seed).permutation(n)`,
   the first ones are the test set (both parts keep the original order);
2. features: images are resized, optionally grayscaled, scaled to [0, 1] and flattened;
   vectors are flattened (see `netalchemy.data.preprocess`);
3. standardisation with the global mean/std of the whole training split (before 4, so
   that test inputs do not change with `train_size`);
4. `train_size > 0`: the first `train_size` of a permutation drawn from stream 1 of the
   seed (so smaller subsets are nested in larger ones for the same seed);
5. `label_noise = p`: `round(p * n_train)` training examples drawn from stream 2 get a
   label drawn uniformly from all classes (so about p * (1 - 1/K) labels change);
   test labels are never touched.

Streams are `np.random.default_rng([seed, stream])`; the hold-out uses
`default_rng(seed)`. Results are cached in-process (`clear_cache()` empties the caches)
and their arrays are read-only.

Under `tfds.testing.mock_data`, give the mock a data_dir holding the dataset's
`dataset_info.json` (policy AUTO or USE_FILES) so that its split names are known.
"""

from __future__ import annotations

import difflib
import functools
import inspect
import importlib.util
import re
import sys
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from netalchemy.config import DataConfig
from netalchemy.data import mnist1d_builder
from netalchemy.data import preprocess

KNOWN = "mnist1d, or a TFDS name such as mnist, fashion_mnist, cifar10, cats_vs_dogs"
TF_HINT = "pip install 'netalchemy[tensorflow]'"


class DataError(ValueError):
    """A dataset cannot be loaded; the message is one line, fit for a CLI user."""


class Dataset(NamedTuple):
    """A classification dataset held in memory (read-only arrays)."""

    x_train: np.ndarray  # (n_train, features) float32
    y_train: np.ndarray  # (n_train,) int32
    x_test: np.ndarray  # (n_test, features) float32
    y_test: np.ndarray  # (n_test,) int32
    num_classes: int
    name: str


@functools.lru_cache(maxsize=16)
def load(cfg: DataConfig) -> Dataset:
    """Loads, splits, preprocesses, subsets and label-noises the dataset `cfg.name`.

    Args:
      cfg: which dataset and how to preprocess it.

    Returns:
      A `Dataset` of read-only arrays. Cached: the same config returns the same object,
      and configs that differ only in `train_size` / `label_noise` share the
      preprocessed arrays (no subset: the very same `x_train`).

    Raises:
      DataError: unknown dataset name; dataset not prepared and it cannot be prepared
        here (no network, or TensorFlow missing); `train_size` larger than the split.
    """
    x_train, y_train, x_test, y_test, num_classes = _preprocessed(
        cfg.name, cfg.data_dir, cfg.image_size, cfg.grayscale, cfg.holdout_fraction, cfg.seed)
    if cfg.train_size:
        if cfg.train_size > len(y_train):
            raise DataError(f"data.train_size={cfg.train_size} is larger than the "
                            f"{len(y_train)} training examples of {cfg.name!r}")
        keep = _rng(cfg.seed, 1).permutation(len(y_train))[:cfg.train_size]
        x_train, y_train = _read_only(x_train[keep]), y_train[keep]
    if cfg.label_noise:
        y_train = noisy_labels(y_train, cfg.label_noise, num_classes, _rng(cfg.seed, 2))
    return Dataset(x_train, _read_only(y_train), x_test, y_test, num_classes, cfg.name)


@functools.lru_cache(maxsize=4)
def _preprocessed(name: str, data_dir: str, image_size: int, grayscale: bool,
                  holdout_fraction: float, seed: int) -> tuple:
    """(x_train, y_train, x_test, y_test, num_classes): steps 1-3 of the module docstring."""
    builder = _prepared_builder(name, data_dir)
    info = builder.info
    x_key, y_key = _feature_keys(info, name)
    num_classes = int(info.features[y_key].num_classes)
    splits = set(info.splits.keys())
    if splits and "train" not in splits:
        raise DataError(f"dataset {name!r} has no 'train' split (it has: "
                        f"{', '.join(sorted(splits))})")

    x_train, y_train = _read(builder, "train", x_key, y_key, name)
    if "test" in splits:
        x_test, y_test = _read(builder, "test", x_key, y_key, name)
    else:
        test_idx, train_idx = _holdout(len(y_train), holdout_fraction, seed)
        x_test, y_test = [x_train[i] for i in test_idx], y_train[test_idx]
        x_train, y_train = [x_train[i] for i in train_idx], y_train[train_idx]

    if isinstance(info.features[x_key], tfds.features.Image):
        x_train = preprocess.images_to_features(x_train, image_size, grayscale)
        x_test = preprocess.images_to_features(x_test, image_size, grayscale)
    else:
        x_train = preprocess.flatten(np.stack(x_train).astype(np.float32))
        x_test = preprocess.flatten(np.stack(x_test).astype(np.float32))
    x_train, x_test = preprocess.standardize(x_train, x_test)
    return (*(_read_only(a) for a in (x_train, y_train, x_test, y_test)), num_classes)


def clear_cache() -> None:
    """Forgets every loaded dataset (e.g. after re-preparing one on disk)."""
    load.cache_clear()
    _preprocessed.cache_clear()


def _read_only(a: np.ndarray) -> np.ndarray:
    a = np.ascontiguousarray(a)
    a.setflags(write=False)
    return a


def noisy_labels(labels: np.ndarray, fraction: float, num_classes: int,
                 rng: np.random.Generator) -> np.ndarray:
    """Replaces `round(fraction * n)` random labels by uniformly random classes.

    A replaced label may equal the old one, so about fraction * (1 - 1/num_classes)
    labels change: the corruption of Zhang et al. 2017 ("Understanding deep learning
    requires rethinking generalization"), with an exact rather than binomial count.
    """
    labels = np.array(labels, dtype=np.int32)
    n_noisy = int(round(fraction * len(labels)))
    if n_noisy:
        which = rng.permutation(len(labels))[:n_noisy]
        labels[which] = rng.integers(0, num_classes, size=n_noisy)
    return labels


def _rng(seed: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([seed, stream])


def _holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(test indices, train indices), each sorted, from default_rng(seed).permutation(n)."""
    n_test = min(max(int(round(fraction * n)), 1), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[:n_test]), np.sort(perm[n_test:])


def _read(builder: Any, split: str, x_key: str, y_key: str,
          name: str) -> tuple[list[np.ndarray], np.ndarray]:
    """All examples of a split: a list of inputs and an int32 label array."""
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError:  # prepared in another format (TFRecord) by tfds.load
        raise DataError(
            f"dataset {name!r} in {builder.data_dir} is not stored as array_record "
            f"(probably prepared by tfds.load); delete that folder or set data.data_dir "
            f"to another folder") from None
    # One by one: `__getitems__` is not mocked correctly by tfds.testing.mock_data.
    examples = [source[i] for i in range(len(source))]
    xs = [np.asarray(ex[x_key]) for ex in examples]
    ys = np.asarray([ex[y_key] for ex in examples], dtype=np.int32)
    return xs, ys


def _feature_keys(info: Any, name: str) -> tuple[str, str]:
    """(input key, label key): the supervised keys, else the first Image/Tensor and ClassLabel."""
    if info.supervised_keys and all(isinstance(k, str) for k in info.supervised_keys[:2]):
        return info.supervised_keys[0], info.supervised_keys[1]
    features = info.features
    inputs = [k for k, f in features.items()
              if isinstance(f, (tfds.features.Image, tfds.features.Tensor))]
    labels = [k for k, f in features.items() if isinstance(f, tfds.features.ClassLabel)]
    if not inputs or not labels:
        raise DataError(f"dataset {name!r} is not an image/vector classification dataset "
                        f"(features: {', '.join(features.keys())})")
    return inputs[0], labels[0]


# ----------------------------------------------------------------------------- preparing


def _prepared_builder(name: str, data_dir: str) -> Any:
    """The TFDS builder for `name`, prepared as array_record in `data_dir` ("" = default)."""
    data_dir = data_dir or None
    if name == "mnist1d":
        return mnist1d_builder.prepare(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        names = ["mnist1d", *tfds.list_builders(with_community_datasets=False)]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise DataError(f"unknown dataset {name!r}{hint}; known: {KNOWN}") from None
    if builder.is_prepared():
        return builder

    where = builder.data_dir_root
    if _needs_tensorflow(builder) and not _has_tensorflow():
        raise DataError(
            f"dataset {name!r} is not prepared in {where}; preparing it needs network "
            f"access to download it and TensorFlow for TFDS's {name} builder "
            f"({TF_HINT})")
    try:
        builder.download_and_prepare(file_format="array_record")
    except FileExistsError:  # another process finished preparing it first
        builder = tfds.builder(name, data_dir=data_dir)
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("tensorflow"):
            raise
        raise DataError(f"preparing dataset {name!r} needs TensorFlow ({TF_HINT})"
                        ) from None
    except (OSError, tfds.download.DownloadError) as e:
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(
            f"dataset {name!r} is not prepared in {where} and downloading it failed; "
            f"it needs network access ({detail})") from None
    return builder


def _has_tensorflow() -> bool:
    return importlib.util.find_spec("tensorflow") is not None


def _needs_tensorflow(builder: Any) -> bool:
    """Whether the builder's module imports TensorFlow (to read or decode raw files).

    True for TFDS 4.9's mnist, fashion_mnist, cifar10 and cats_vs_dogs builders, which
    use `tf.io.gfile` / `tf.image` in `_generate_examples`.
    """
    module = sys.modules.get(type(builder).__module__)
    try:
        source = inspect.getsource(module) if module else ""
    except (OSError, TypeError):
        return False
    return re.search(r"\bimport tensorflow\b", source) is not None
