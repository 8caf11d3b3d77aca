"""Loads a dataset named by a `DataConfig` into in-memory numpy arrays.

`load(cfg)` reads every example of a TFDS dataset through `as_data_source` (ArrayRecord,
random access, no TensorFlow), then:

1. test split: the dataset's `test` split, or, when it has only `train`, a hold-out of
   `round(holdout_fraction * n)` examples: `np.random.default_rng(seed).permutation(n)`,
   the first ones are the test set (both parts keep the original order);
1b. `classes = "a,b,..."`: only those original classes are kept, in both splits, and
   relabelled 0, 1, ... in the order given (after the hold-out, so a held-out example
   stays held out whichever classes are kept);
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

`data.name` is a TFDS name, `name[/config][:version]` (no path separators). Two names
resolve to this project's builders, which need no TensorFlow: `mnist1d` (generated,
`mnist1d_builder`) and `fashion_mnist` (read from its IDX files, `fashion_mnist_builder`);
every other name goes to TFDS's own builder. Bad names, versions and data folders raise
a one-line `DataError` before anything is written (see `netalchemy.data.names`).

Under `tfds.testing.mock_data`, give the mock a data_dir holding the dataset's
`dataset_info.json` (policy AUTO or USE_FILES) so that its split names are known.
"""

from __future__ import annotations

import functools
import inspect
import importlib.util
import os
import re
import sys
from typing import Any, NamedTuple

import numpy as np
import tensorflow_datasets as tfds

from netalchemy.config import DataConfig
from netalchemy.data import fashion_mnist_builder, mnist1d_builder
from netalchemy.data import names, preprocess
from netalchemy.data.errors import DataError

TF_HINT = "pip install 'netalchemy[tensorflow]'"

# Builders of this project (no TensorFlow): name -> (builder class, prepare(data_dir)).
OWN_BUILDERS = {
    "mnist1d": (mnist1d_builder.Mnist1d, mnist1d_builder.prepare),
    "fashion_mnist": (fashion_mnist_builder.FashionMnist, fashion_mnist_builder.prepare),
}


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
      DataError: a malformed or unknown dataset name, config or version; a data_dir
        that cannot be created or written when the dataset must be prepared there; a
        dataset not prepared that cannot be prepared here (no network, or TensorFlow
        missing; damaged files); bad `classes`; `train_size` larger than the split.
    """
    x_train, y_train, x_test, y_test, num_classes = _preprocessed(
        cfg.name, cfg.data_dir, cfg.image_size, cfg.grayscale, cfg.holdout_fraction, cfg.seed,
        cfg.classes)
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
                  holdout_fraction: float, seed: int, classes: Any = "") -> tuple:
    """(x_train, y_train, x_test, y_test, num_classes): steps 1-3 of the module docstring."""
    builder = _prepared_builder(name, data_dir)
    info = builder.info
    x_key, y_key = _feature_keys(info, name)
    num_classes = int(info.features[y_key].num_classes)
    keep = parse_classes(classes, num_classes)
    splits = set(info.splits.keys())
    if splits and "train" not in splits:
        raise DataError(f"dataset {name!r} has no 'train' split (it has: "
                        f"{', '.join(sorted(splits))})")

    bulk = names.base_name(name) in OWN_BUILDERS
    x_train, y_train = _read(builder, "train", x_key, y_key, name, bulk=bulk)
    if "test" in splits:
        x_test, y_test = _read(builder, "test", x_key, y_key, name, bulk=bulk)
    else:
        test_idx, train_idx = _holdout(len(y_train), holdout_fraction, seed)
        x_test, y_test = [x_train[i] for i in test_idx], y_train[test_idx]
        x_train, y_train = [x_train[i] for i in train_idx], y_train[train_idx]
    if keep:
        (x_train, y_train), (x_test, y_test) = (
            select_classes(x, y, keep) for x, y in ((x_train, y_train), (x_test, y_test)))
        if not len(y_train) or not len(y_test):
            raise DataError(f"data.classes={_classes_text(classes)} leaves no "
                            f"{'training' if not len(y_train) else 'test'} examples of {name!r}")
        num_classes = len(keep)

    if _is_image(info.features[x_key]):
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


def parse_classes(classes: Any, num_classes: int) -> tuple[int, ...]:
    """The original class ids that `data.classes` keeps, in order; () keeps every class.

    Args:
      classes: "" (all), "a,b,..." (comma-separated ids), or a sequence of ints.
      num_classes: the dataset's number of classes (ids must be in 0..num_classes-1).

    Raises:
      DataError: not integers, repeated, out of range, or fewer than two classes.
    """
    if isinstance(classes, str):
        items = [c.strip() for c in classes.split(",")] if classes.strip() else []
    else:
        items = list(classes)
    if not items:
        return ()
    text = _classes_text(classes)
    try:
        ids = tuple(int(c) for c in items)
    except (TypeError, ValueError):
        raise DataError(f"data.classes={text}: expected comma-separated class ids, "
                        f"e.g. 2,4") from None
    if len(set(ids)) != len(ids):
        raise DataError(f"data.classes={text}: a class is listed twice")
    if len(ids) < 2:
        raise DataError(f"data.classes={text}: keep at least two classes")
    bad = [i for i in ids if not 0 <= i < num_classes]
    if bad:
        raise DataError(f"data.classes={text}: class {bad[0]} does not exist "
                        f"(ids are 0..{num_classes - 1})")
    return ids


def select_classes(xs: list[np.ndarray], ys: np.ndarray,
                   keep: tuple[int, ...]) -> tuple[list[np.ndarray], np.ndarray]:
    """The examples whose label is in `keep`, in their order, relabelled `keep.index(y)`."""
    new_label = np.full(max(int(np.max(ys, initial=0)), *keep) + 1, -1, np.int32)
    new_label[list(keep)] = np.arange(len(keep))
    which = np.flatnonzero(new_label[ys] >= 0)
    return [xs[i] for i in which], new_label[ys[which]]


def _classes_text(classes: Any) -> str:
    return classes if isinstance(classes, str) else ",".join(map(str, classes))


def _is_image(feature: Any) -> bool:
    """An `Image`, or a uint8 `Tensor` of shape (h, w, c) (fashion_mnist_builder's images)."""
    if isinstance(feature, tfds.features.Image):
        return True
    return (isinstance(feature, tfds.features.Tensor) and len(feature.shape) == 3
            and np.dtype(feature.np_dtype) == np.uint8)


def _read(builder: Any, split: str, x_key: str, y_key: str, name: str,
          bulk: bool = False) -> tuple[list[np.ndarray], np.ndarray]:
    """All examples of a split: a list of inputs and an int32 label array.

    A builder with a `read_arrays(split)` method (Fashion-MNIST's) decodes its records
    itself. `bulk` reads with `__getitems__` (about half the CPU time of one by one, as
    measured on Fashion-MNIST's records), which `tfds.testing.mock_data` does not mock
    correctly: it is used for this project's builders, which tests never mock.
    """
    try:
        source = builder.as_data_source(split=split)
    except NotImplementedError:  # prepared in another format (TFRecord) by tfds.load
        raise DataError(
            f"dataset {name!r} in {builder.data_dir} is not stored as array_record "
            f"(probably prepared by tfds.load); delete that folder or set data.data_dir "
            f"to another folder") from None
    if hasattr(builder, "read_arrays"):  # fashion_mnist_builder's fast bulk decoding
        xs, ys = builder.read_arrays(split)
        return list(xs), ys.astype(np.int32)
    if bulk:
        step = 10_000
        examples = [ex for start in range(0, len(source), step)
                    for ex in source.__getitems__(range(start, min(start + step, len(source))))]
    else:
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
    base, config, version = names.parse_name(name)
    if data_dir:
        data_dir = os.path.expanduser(data_dir)
        names.check_data_dir(data_dir, writable=False)
    data_dir = data_dir or None
    if base in OWN_BUILDERS:
        cls, prepare = OWN_BUILDERS[base]
        names.check_own_version(base, cls, config, version)
        builder = cls(data_dir=data_dir)
        if builder.is_prepared():
            return builder
        where = os.fspath(builder.data_dir_root)
        names.check_data_dir(where, writable=True, default=not data_dir)
        try:
            return prepare(data_dir)
        except OSError as e:  # e.g. no space left
            raise DataError(f"preparing dataset {base!r} in {where} failed "
                            f"({str(e).splitlines()[0][:160] or type(e).__name__})") from None
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError:
        raise names.unknown_name_error(base, list(OWN_BUILDERS)) from None
    except (AssertionError, ValueError) as e:  # TFDS: no such version or config
        raise names.version_or_config_error(base, config, version, e) from None
    if builder.is_prepared():
        return builder

    where = builder.data_dir_root
    names.check_data_dir(os.fspath(where), writable=True, default=not data_dir)
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
