"""`DatasetInfo` for the project's own TFDS builders, whose data never lives on TFDS's bucket.

TFDS 4.9 calls `DatasetInfo.initialize_from_bucket()` whenever a builder is made before its
dataset is prepared; that method first makes a temporary folder (`tempfile.mkdtemp("tfds")`),
then finds no files on the bucket and returns without removing it. Each load of an unprepared
MNIST-1D or Fashion-MNIST folder left one empty `/tmp/tmp…tfds` behind (hundreds per test
run). The project's builders have nothing on the bucket, so they skip the lookup.
"""

from __future__ import annotations

import tensorflow_datasets as tfds


class LocalDatasetInfo(tfds.core.DatasetInfo):
    """A `tfds.core.DatasetInfo` that never looks on TFDS's bucket (and so leaves no temp folder)."""

    def initialize_from_bucket(self) -> None:
        return None
