"""Datasets as in-memory arrays: TFDS loading, offline builders (MNIST-1D, Fashion-MNIST), preprocessing.

    from netalchemy.data import load
    data = load(DataConfig(name="mnist1d"))   # data.x_train: (4000, 40) float32
"""

from netalchemy.data.errors import DataError
from netalchemy.data.load import Dataset, clear_cache, load, noisy_labels

__all__ = ["DataError", "Dataset", "clear_cache", "load", "noisy_labels"]
