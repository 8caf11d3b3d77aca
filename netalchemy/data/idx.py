"""The IDX file format of MNIST and Fashion-MNIST, read (and written, for tests) with numpy.

An IDX file (LeCun et al., http://yann.lecun.com/exdb/mnist/) is a 4-byte magic number,
`0x00 0x00 <type> <ndim>`, then `ndim` big-endian uint32 sizes, then the values in
row-major order, big-endian. Type codes: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64. The distributed files are gzipped (`*.gz`); `read` accepts
both forms (recognised by gzip's magic bytes, not by the file name).

Damaged files raise `DataError` with one line naming the file: a bad magic number, sizes
that disagree with the file's length, a truncated or corrupt gzip stream (gzip's CRC-32
covers the decompressed bytes).
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib

import numpy as np

from netalchemy.data.errors import DataError

DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_CODES = {np.dtype(v).newbyteorder("="): k for k, v in DTYPES.items()}
_GZIP_MAGIC = b"\x1f\x8b"


def parse(raw: bytes, name: str = "IDX data") -> np.ndarray:
    """The array stored in the (decompressed) bytes of an IDX file.

    Args:
      raw: the file's bytes, not gzipped.
      name: how to call the file in an error message.

    Returns:
      A read-only array in native byte order, shape given by the header.

    Raises:
      DataError: a bad magic number or type code, or a length that disagrees with the header.
    """
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in DTYPES:
        raise DataError(f"{name} is not an IDX file (magic number {raw[:4].hex() or 'missing'}, "
                        f"expected 0000 then a type code in {sorted(DTYPES)} and a rank)")
    dtype, ndim = np.dtype(DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name} is truncated: its header needs {header} bytes, the file has "
                        f"{len(raw)}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    expected = header + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{name} has {len(raw)} bytes but its header {shape} of "
                        f"{dtype.newbyteorder('=').name} implies {expected}"
                        f"{' (truncated)' if len(raw) < expected else ''}")
    array = np.frombuffer(raw, dtype, offset=header).reshape(shape)
    return array if dtype.itemsize == 1 else array.astype(dtype.newbyteorder("="))


def read(path: str | os.PathLike) -> np.ndarray:
    """Reads an IDX file, gzipped or not. Raises `DataError` (one line) if it is damaged."""
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
        if raw[:2] == _GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        raise DataError(f"cannot read {name}: {_reason(e)}") from None
    return parse(raw, name)


def write(path: str | os.PathLike, array: np.ndarray, *, compress: bool = True) -> None:
    """Writes `array` as an IDX file (gzipped when `compress`): the inverse of `read`."""
    array = np.asarray(array)
    code = _CODES.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    raw = (bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
           + array.astype(DTYPES[code]).tobytes())
    with open(path, "wb") as f:
        f.write(gzip.compress(raw, mtime=0) if compress else raw)


def _reason(e: BaseException) -> str:
    text = getattr(e, "strerror", None) or str(e) or type(e).__name__
    if isinstance(e, EOFError):
        text = f"truncated gzip stream ({text})"
    return text.splitlines()[0]
