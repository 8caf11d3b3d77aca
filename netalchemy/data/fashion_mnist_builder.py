"""A TFDS builder for Fashion-MNIST that reads the four IDX files: offline, no TensorFlow.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747): 70 000 grayscale 28x28
photographs of Zalando articles in 10 classes (0 T-shirt/top, 1 trouser, 2 pullover,
3 dress, 4 coat, 5 sandal, 6 shirt, 7 sneaker, 8 bag, 9 ankle boot); 60 000 train and
10 000 test, stored in the file order (`disable_shuffling=True`).

The four standard files (`train-images-idx3-ubyte.gz`, `train-labels-idx1-ubyte.gz`,
`t10k-images-idx3-ubyte.gz`, `t10k-labels-idx1-ubyte.gz`, gzipped or not) are taken from
the first of these folders that holds all four (`search_dirs`):

1. the TFDS data folder (`data.data_dir`, else TFDS's default), or its `fashion_mnist/`;
2. TFDS's manual-download folder `<data folder>/downloads/manual` (or its `fashion_mnist/`);
3. `/usr/share/datasets/fashion-mnist`, where the Debian/Ubuntu package
   `dataset-fashion-mnist` installs them (`apt-get install dataset-fashion-mnist`).

Only when none has them are they downloaded, by TFDS's download manager from the official
URLs (checked against TFDS's registered checksums). Once the files are local, nothing
needs a network or TensorFlow. Preparation writes ArrayRecord files under
`<data folder>/fashion_mnist/1.0.0/`, atomically as for MNIST-1D (see mnist1d_builder).

The image feature is a raw uint8 `Tensor` (28, 28, 1), not TFDS's PNG-encoded `Image`:
without TensorFlow or OpenCV, PIL would spend about a minute encoding the 70 000 PNGs
and half a minute decoding them on every load; raw bytes need neither. The builder is
not registered with TFDS (TFDS's own `fashion_mnist`, which needs TensorFlow to prepare,
keeps the name); `netalchemy.data.load` maps `data.name=fashion_mnist` to this one.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from netalchemy.data import idx
from netalchemy.data.errors import DataError
from netalchemy.data.local_info import LocalDatasetInfo

NAME = "fashion_mnist"
SIZE = 28
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"  # as TFDS's builder
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"  # package dataset-fashion-mnist
SYSTEM_DIRS: tuple[str, ...] = (DEBIAN_DIR,)

_CITATION = """\
@article{xiao2017fashion,
  title={Fashion-{MNIST}: a Novel Image Dataset for Benchmarking Machine Learning Algorithms},
  author={Xiao, Han and Rasul, Kashif and Vollgraf, Roland},
  journal={arXiv preprint arXiv:1708.07747},
  year={2017}
}"""


def search_dirs(data_dir: str | os.PathLike) -> list[Path]:
    """The folders searched for the IDX files, in order (see the module docstring)."""
    root = Path(data_dir).expanduser()
    manual = root / "downloads" / "manual"
    return [root, root / NAME, manual, manual / NAME, *map(Path, SYSTEM_DIRS)]


def find_files(dirs: list[Path]) -> dict[str, Path] | None:
    """{key of FILES: path} from the first folder holding all four files, else None.

    A file may be stored gzipped (the standard name) or unpacked (without `.gz`).
    """
    for folder in dirs:
        found = {}
        for key, name in FILES.items():
            for candidate in (folder / name, folder / name.removesuffix(".gz")):
                if candidate.is_file():
                    found[key] = candidate
                    break
        if len(found) == len(FILES):
            return found
    return None


def read_split(images_path: str | os.PathLike,
               labels_path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """One split from its IDX files: images (n, 28, 28, 1) uint8 and labels (n,) int64.

    Raises:
      DataError: a damaged file, images that are not uint8 28x28, labels that are not
        uint8 in 0..9, or different numbers of images and labels.
    """
    images, labels = idx.read(images_path), idx.read(labels_path)
    if images.dtype != np.uint8 or images.shape[1:] != (SIZE, SIZE):
        raise DataError(f"{os.fspath(images_path)} holds {images.dtype.name} {images.shape}, "
                        f"expected uint8 (n, {SIZE}, {SIZE}) images")
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(f"{os.fspath(labels_path)} holds {labels.dtype.name} {labels.shape}, "
                        f"expected uint8 (n,) labels")
    if len(images) != len(labels):
        raise DataError(f"{os.fspath(images_path)} has {len(images)} images but "
                        f"{os.fspath(labels_path)} has {len(labels)} labels")
    if len(labels) and labels.max() >= len(CLASS_NAMES):
        raise DataError(f"{os.fspath(labels_path)} has label {labels.max()}, expected 0..9")
    return images[..., None], labels.astype(np.int64)


class FashionMnist(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Fashion-MNIST from its IDX files (local, else downloaded)."""

    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "The four IDX files as uint8 tensors: 60000 train, 10000 test."}

    def _info(self) -> tfds.core.DatasetInfo:
        return LocalDatasetInfo(
            builder=self,
            description="Fashion-MNIST: 28x28 grayscale photographs of clothing, 10 classes.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(SIZE, SIZE, 1), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True,
            homepage="https://github.com/zalandoresearch/fashion-mnist",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        paths = find_files(search_dirs(self.data_dir_root))
        if paths is None:
            paths = dl_manager.download({k: URL + name for k, name in FILES.items()})
        train = read_split(paths["train_images"], paths["train_labels"])
        test = read_split(paths["test_images"], paths["test_labels"])
        return {"train": self._generate_examples(*train), "test": self._generate_examples(*test)}

    def _generate_examples(self, images: np.ndarray, labels: np.ndarray) -> Iterator:
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image, "label": int(label)}

    def read_arrays(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """A prepared split as arrays: images (n, 28, 28, 1) uint8, labels (n,) int64.

        The same arrays as `as_data_source(split)` record by record (tested), in about a
        third of the CPU time: TFDS decodes each record in Python (0.1 ms, 9 s for the
        70 000); here the serialized `tf.train.Example`s are read in bulk and the raw image
        bytes and labels taken straight out of the protobufs.
        """
        from tensorflow_datasets.proto import tf_example_pb2

        source = self.as_data_source(split=split)
        records = source.data_source.__getitems__(range(len(source)))
        features = [tf_example_pb2.Example.FromString(r).features.feature for r in records]
        images = np.frombuffer(b"".join(f["image"].bytes_list.value[0] for f in features),
                               np.uint8).reshape(-1, SIZE, SIZE, 1)
        labels = np.array([f["label"].int64_list.value[0] for f in features], np.int64)
        return images, labels


def prepare(data_dir: str | None = None) -> FashionMnist:
    """Returns the builder with its ArrayRecord files prepared in `data_dir`.

    Idempotent and safe when several processes prepare at once (as `mnist1d_builder.prepare`).

    Args:
      data_dir: TFDS data directory; None = TFDS's default (TFDS_DATA_DIR or
        ~/tensorflow_datasets). It is also the first place searched for the IDX files.

    Raises:
      DataError: the files are nowhere local and downloading them failed, or a file is
        damaged.
    """
    builder = FashionMnist(data_dir=data_dir)
    if builder.is_prepared():
        return builder
    try:
        builder.download_and_prepare(file_format="array_record")
    except FileExistsError:  # another process renamed its finished copy into place first
        builder = FashionMnist(data_dir=data_dir)
        if not builder.is_prepared():
            raise
    except (OSError, tfds.download.DownloadError) as e:
        if find_files(search_dirs(builder.data_dir_root)) is not None:
            raise
        detail = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        raise DataError(
            f"the Fashion-MNIST IDX files ({FILES['train_images']} and the three others) are "
            f"in none of {', '.join(map(str, search_dirs(builder.data_dir_root)))} and "
            f"downloading them failed ({detail}); put them in one of these folders, or "
            f"apt-get install dataset-fashion-mnist") from None
    return builder
