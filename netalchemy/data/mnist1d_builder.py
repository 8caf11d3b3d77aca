"""A TFDS builder for MNIST-1D, generated offline from the `mnist1d` package.

MNIST-1D (Greydanus & Kobak, "Scaling down deep learning with MNIST-1D", ICML 2024;
arXiv:2011.14439): 10 classes of 1-D templates, randomly padded, translated, sheared,
scaled and noised into length-40 signals. `make_dataset(get_dataset_args())` (seed 42)
gives 4000 train and 1000 test examples, already centred and scaled to std 1 over all
5000; nothing is downloaded.

Features: `x` float32 (40,), `label` ClassLabel(10); splits `train` and `test`, stored in
the generated order (`disable_shuffling=True`), so record i is `make_dataset(...)["x"][i]`.

TFDS 4.9.10 without TensorFlow (what was checked):
* `download_and_prepare(file_format="array_record")` writes ArrayRecord files with no
  TensorFlow: Tensor and ClassLabel features serialise through TFDS's own protobuf code,
  and `array_record` is a C++ extension. (TFRecord, the default, would need TF.)
* `as_data_source()` / `tfds.data_source` read the records back at random access, no TF.
* `dataset_info_from_configs` reads metadata files next to the builder's module; this
  builder builds `tfds.core.DatasetInfo` directly instead.
* Preparation writes into `<data_dir>/mnist1d/incomplete.XXXXXX_1.0.0/` and renames it to
  `<data_dir>/mnist1d/1.0.0/` only after `dataset_info.json` is written, so `1.0.0/` is
  always complete. An exception (Ctrl-C included) removes the `incomplete.*` folder; a
  SIGKILLed run leaves it behind, unused and safe to delete. A second run finds `1.0.0/`
  and returns at once. When two processes prepare at the same time, the later rename
  fails with FileExistsError (epath refuses an existing destination); `prepare` treats
  that as success once the winner's copy is there (checked with two real processes).
* A folder prepared in TFRecord by `tfds.load` (with TF) cannot be opened as a data
  source; building the builder with `file_format="array_record"` would even raise, so
  the format is passed to `download_and_prepare` only.
"""

from __future__ import annotations

import random
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from netalchemy.data.local_info import LocalDatasetInfo

NUM_CLASSES = 10
LENGTH = 40

_CITATION = """\
@inproceedings{greydanus2024scaling,
  title={Scaling down deep learning with {MNIST}-{1D}},
  author={Greydanus, Sam and Kobak, Dmitry},
  booktitle={International Conference on Machine Learning},
  year={2024}
}"""


def generate() -> dict[str, np.ndarray]:
    """The mnist1d package's default dataset: x (4000, 40), y (4000,), x_test, y_test.

    `make_dataset` seeds Python's and numpy's global generators; their states are
    restored afterwards so that callers' global randomness is untouched.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        data = make_dataset(get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {k: data[k] for k in ("x", "y", "x_test", "y_test")}


class Mnist1d(tfds.core.GeneratorBasedBuilder):
    """MNIST-1D with the mnist1d package's default arguments."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "mnist1d defaults (seed 42): 4000 train, 1000 test, length 40."}

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description="MNIST-1D: a small 1-D stand-in for MNIST, generated offline.",
            features=tfds.features.FeaturesDict({
                "x": tfds.features.Tensor(shape=(LENGTH,), dtype=np.float32),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            }),
            supervised_keys=("x", "label"),
            disable_shuffling=True,
            homepage="https://github.com/greydanus/mnist1d",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # nothing to download
        data = generate()
        return {
            "train": self._generate_examples(data["x"], data["y"]),
            "test": self._generate_examples(data["x_test"], data["y_test"]),
        }

    def _generate_examples(self, x: np.ndarray, y: np.ndarray) -> Iterator:
        for i, (xi, yi) in enumerate(zip(x, y)):
            yield i, {"x": xi.astype(np.float32), "label": int(yi)}


def prepare(data_dir: str | None = None) -> Mnist1d:
    """Returns the MNIST-1D builder with its ArrayRecord files prepared in `data_dir`.

    Idempotent: a prepared dataset is reused. Safe when several processes prepare at
    once (see the module docstring).

    Args:
      data_dir: TFDS data directory; None = TFDS's default (TFDS_DATA_DIR or
        ~/tensorflow_datasets).
    """
    builder = Mnist1d(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    try:
        builder.download_and_prepare(file_format="array_record")
    except OSError:  # another process renamed its finished copy into place first
        builder = Mnist1d(data_dir=data_dir)
        if not builder.is_prepared():
            raise
    return builder
