"""Image and vector preprocessing: resize, grayscale, flatten, standardise (pure numpy).

The pipeline that `netalchemy.data.load` applies to an image dataset is

    uint8 (h, w, c) --resize--> (s, s, c) --grayscale--> (s, s, 1) --/255--> [0, 1]
                    --flatten--> (s*s*c',)  --standardise (train statistics)--> float32

and to a vector dataset (MNIST-1D) only `standardize`.

* `resize` is antialiased bilinear resampling: a separable triangle (tent) filter,
  widened by the downscaling factor when shrinking, with half-pixel centres and weights
  renormalised at the borders. It is the same filter as
  `jax.image.resize(x, shape, "linear", antialias=True)` (checked in tests), written in
  numpy so that thousands of differently sized images (cats_vs_dogs) need no recompiles.
  A constant image stays constant; a same-size resize is the identity.
* `to_grayscale` is ITU-R BT.601 luma: Y = 0.299 R + 0.587 G + 0.114 B.
* `standardize` uses ONE global mean and standard deviation over every value of the
  training set, applied to both splits (an affine map, so it is invertible and keeps
  relative pixel intensities; per-feature statistics would blow up constant border
  pixels).
"""

from __future__ import annotations

import functools
from typing import Sequence

import numpy as np

LUMA_BT601 = (0.299, 0.587, 0.114)


@functools.lru_cache(maxsize=64)
def _weights(in_size: int, out_size: int) -> np.ndarray:
    """The (out_size, in_size) resampling matrix of an antialiased triangle filter."""
    inv_scale = in_size / out_size
    kernel_scale = max(inv_scale, 1.0)  # widen the tent when downscaling (antialias)
    centres = (np.arange(out_size) + 0.5) * inv_scale - 0.5  # output centres in input coords
    distance = np.abs(centres[:, None] - np.arange(in_size)[None, :]) / kernel_scale
    weights = np.maximum(0.0, 1.0 - distance)  # (out, in)
    weights /= weights.sum(axis=1, keepdims=True)
    weights.setflags(write=False)
    return weights


def resize(images: np.ndarray, size: int) -> np.ndarray:
    """Resizes images to size x size with antialiased bilinear resampling.

    Args:
      images: (..., h, w, c) array, any real dtype.
      size: the output height and width.

    Returns:
      (..., size, size, c) float32 array.
    """
    images = np.asarray(images, dtype=np.float32)
    h, w = images.shape[-3], images.shape[-2]
    if h == w == size:  # the filter is then the identity matrix
        return images
    rows = _weights(h, size).astype(np.float32)  # (size, h)
    cols = _weights(w, size).astype(np.float32)  # (size, w)
    return np.einsum("oh,...hwc,pw->...opc", rows, images, cols, optimize=True)


def to_grayscale(images: np.ndarray) -> np.ndarray:
    """ITU-R BT.601 luma of RGB(A) images; single-channel images are returned as is.

    Args:
      images: (..., c) array with c = 1, 3 (RGB) or 4 (RGBA; alpha is dropped).

    Returns:
      (..., 1) float32 array.
    """
    images = np.asarray(images, dtype=np.float32)
    channels = images.shape[-1]
    if channels == 1:
        return images
    if channels not in (3, 4):
        raise ValueError(f"to_grayscale: expected 1, 3 or 4 channels, got {channels}")
    return images[..., :3] @ np.asarray(LUMA_BT601, np.float32)[:, None]


def flatten(x: np.ndarray) -> np.ndarray:
    """(n, ...) -> (n, features), row-major (for images: height, width, channel)."""
    return np.reshape(x, (x.shape[0], -1))


def standardize(train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Scales every array by the training set's global mean and standard deviation.

    Args:
      train: (n, features) training inputs; its statistics are used for all arrays.
      *others: more arrays (e.g. the test inputs) to transform with the same statistics.

    Returns:
      (train, *others) as float32, where the training values have mean 0 and std 1.
    """
    train64 = np.asarray(train, np.float64)
    mean = train64.mean()
    std = train64.std()
    std = std if std > 0 else 1.0
    return tuple(((np.asarray(a, np.float64) - mean) / std).astype(np.float32)
                 for a in (train, *others))


def images_to_features(images: Sequence[np.ndarray], size: int, grayscale: bool) -> np.ndarray:
    """Resizes, optionally grayscales, scales to [0, 1] and flattens a list of images.

    Images may differ in size (they are resized in groups of equal shape).

    Args:
      images: n arrays (h_i, w_i, c) of uint8 in [0, 255] (h_i, w_i may vary).
      size: output height and width.
      grayscale: convert RGB to one luma channel.

    Returns:
      (n, size * size * c') float32 array in [0, 1], c' = 1 if grayscale else c.
    """
    if not len(images):
        raise ValueError("images_to_features: no images")
    channels = 1 if grayscale else np.shape(images[0])[-1]
    out = np.empty((len(images), size, size, channels), np.float32)
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, image in enumerate(images):
        by_shape.setdefault(np.shape(image), []).append(i)
    chunk = 4096  # bounds the float32 copy of the inputs
    for indices in by_shape.values():
        for start in range(0, len(indices), chunk):
            batch = indices[start:start + chunk]
            x = resize(np.stack([images[i] for i in batch]), size)  # (b, size, size, c)
            out[batch] = to_grayscale(x) if grayscale else x
    out /= 255.0
    return flatten(out)
