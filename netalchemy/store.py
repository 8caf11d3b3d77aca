"""Results on disk: JSON and `.npz` files written atomically, folder locks, a settings-keyed
cache, and run provenance.

Every write goes to a temporary file `.<name>.<8 random chars>.tmp` in the same folder, is
flushed and fsync-ed, and is then renamed over the target, so a reader (or a resumed run)
never sees half a file; `clean_tmp` removes the ones a `kill -9` left behind. Arrays are
stored as `.npz` and read with `allow_pickle=False`: nothing is unpickled. Every reader
turns a missing or damaged file into a one-line `StoreError` naming the file; a full disk
is a `NoSpace`.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import tempfile
import warnings
import zipfile
import zlib
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional, Sequence

import numpy as np


class StoreError(RuntimeError):
    """A results folder or file cannot be used; the message is one line, fit for a user."""


class NoSpace(StoreError):
    """The disk filled up while writing `path`; whatever was written before is intact.

    `safe` of `total` chunks are stored (None where the writer does not know): rerunning the
    same command after freeing space resumes from them.
    """

    def __init__(self, path: Path, safe: Optional[int] = None, total: Optional[int] = None):
        self.path, self.safe, self.total = Path(path), safe, total
        chunks = "" if safe is None else f"; {safe} of {total} chunks are safe"
        super().__init__(f"no space left writing {self.path}{chunks}, rerun to resume")


def is_no_space(error: BaseException) -> bool:
    """True if `error` or an exception it was raised from is a full disk (ENOSPC, EDQUOT)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, NoSpace) or (isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)):
            return True
        if "No space left on device" in str(error):  # libraries (tensorstore) that wrap the OSError in text
            return True
        error = error.__cause__ or error.__context__
    return False


# `.<target name>.<mkstemp's 8 characters>.tmp`, and `ensure_writable`'s `.probe.<8 characters>`.
_TMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$|^\.probe\.[A-Za-z0-9_]{8}$")


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if is_no_space(e) and not isinstance(e, NoSpace):
            raise NoSpace(path) from e
        raise


def clean_tmp(folder: Path) -> list[Path]:
    """Deletes the temporary files of interrupted atomic writes under `folder` (recursively).

    Only names this module creates are touched (see `_TMP_NAME`); call it while holding the
    folder's lock, so that no other process is writing them. Returns the deleted paths.
    """
    removed = []
    for root, _, files in os.walk(folder):
        for name in files:
            if _TMP_NAME.match(name):
                path = Path(root) / name
                path.unlink(missing_ok=True)
                removed.append(path)
    return removed


def _jsonable(value: Any) -> Any:
    """Plain JSON data: numpy scalars/arrays become Python numbers/lists, NaN/Inf become None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if hasattr(value, "__array__") and not isinstance(value, (str, bytes)):
        return _jsonable(np.asarray(value))
    return value


def as_json_data(data: Any) -> Any:
    """`data` as it reads back after a JSON round trip (for comparing with stored JSON)."""
    return json.loads(json.dumps(_jsonable(data)))


def write_text(path: Path, text: str) -> None:
    """Writes UTF-8 text atomically (a reader sees the old file or the new one, never half)."""
    _atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def write_json(path: Path, data: Any) -> None:
    """Writes `data` as indented JSON, atomically (NaN and Inf are stored as null)."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def _unreadable(path: Path, error: BaseException) -> StoreError:
    if isinstance(error, FileNotFoundError):
        return StoreError(f"missing file {path}")
    detail = " ".join(str(getattr(error, "strerror", None) or error or type(error).__name__).split())
    return StoreError(f"damaged file {path}: {detail}")


def read_json(path: Path) -> Any:
    """Parsed JSON; a missing, unreadable or invalid file is a one-line `StoreError`."""
    try:
        with open(path, "rb") as f:
            return json.loads(f.read().decode())
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise _unreadable(Path(path), e) from None


def write_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """Writes named arrays to `.npz`, atomically."""
    data = {k: np.asarray(v) for k, v in arrays.items()}
    _atomic_write(Path(path), lambda f: np.savez(f, **data))


def read_npz(path: Path, keys: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """Every array of an `.npz` (or only `keys`, each required), read in full.

    Reading a member in full checks its CRC-32, so flipped bits in the data are caught too.
    A missing, truncated or garbled file, or a missing array, is a one-line `StoreError`.
    """
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            if keys is None:
                return {k: z[k] for k in z.files}
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise StoreError(f"damaged file {path}: no array {missing[0]!r}")
            return {k: z[k] for k in keys}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error, NotImplementedError) as e:
        raise _unreadable(path, e) from None


_MISSING = object()  # a setting one of the two records lacks


def _leaves(data: Any, prefix: str = "") -> dict[str, Any]:
    """A nested JSON mapping as {"config.optim.lr": 0.01, ...}; lists stay whole values."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(_leaves(value, f"{prefix}.{key}" if prefix else str(key)))
    return out


def json_difference(stored: Any, wanted: Any, *, limit: int = 3) -> str:
    """The leaves that differ between two JSON records (e.g. a results folder's config.json and the
    config asked for), in words: "config.data.train_size: stored 4000, now 500" (at most `limit`
    named, then a count)."""
    old, new = _leaves(stored), _leaves(wanted)
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k, _MISSING) != new.get(k, _MISSING))
    words = [f"{k}: stored {_word(old.get(k, _MISSING))}, now {_word(new.get(k, _MISSING))}" for k in keys[:limit]]
    if len(keys) > limit:
        words.append(f"{len(keys) - limit} more")
    return "; ".join(words) or "its record differs"


def _word(value: Any) -> str:
    return "nothing" if value is _MISSING else json.dumps(value)


def settings_key(settings: Any) -> str:
    """sha256 (hex) of the canonical JSON of `settings` (dataclasses, mappings, arrays, numbers)."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    canonical = json.dumps(_jsonable(settings), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


_CACHE_KEY = "__settings_sha256__"


def cached(name: str, settings: Any, compute: Callable[[], Any], *, folder: Path) -> Any:
    """`compute()`, stored as `folder/name` and reused while `settings` stay the same.

    The file holds the sha256 of the full settings (`settings_key`) beside the value, in one
    atomic write; any edited setting recomputes and overwrites it. A damaged file is
    recomputed too, with a one-line warning (a cache can always be rebuilt).

    Args:
      name: file name; `.npz` stores a mapping of arrays, `.json` any JSON-able value.
      settings: everything the value depends on (a dataclass, a mapping, ...).
      compute: a function of no arguments that computes the value.
      folder: where the file lives.

    Returns:
      The value as it reads back from disk (`.npz`: dict of numpy arrays; `.json`: plain JSON
      data), on a cold call as on a warm one.
    """
    path, key = Path(folder) / name, settings_key(settings)
    if path.suffix not in (".npz", ".json"):
        raise ValueError(f"cache name must end in .npz or .json, got {name!r}")
    if path.exists():
        try:
            if path.suffix == ".npz":
                stored = read_npz(path)
                if _CACHE_KEY in stored and str(stored.pop(_CACHE_KEY)) == key:
                    return stored
            else:
                stored = read_json(path)
                if isinstance(stored, dict) and stored.get("settings_sha256") == key and "value" in stored:
                    return stored["value"]
        except StoreError as e:
            warnings.warn(f"{e}; recomputing it", stacklevel=2)
    value = compute()
    if path.suffix == ".npz":
        arrays = {k: np.asarray(v) for k, v in value.items()}
        write_npz(path, {**arrays, _CACHE_KEY: np.asarray(key)})
        return arrays
    write_json(path, {"settings_sha256": key, "value": value})
    return as_json_data(value)


LOCK_NAME = ".lock"


@contextmanager
def locked(folder: Path) -> Iterator[Path]:
    """Holds an exclusive `fcntl.flock` on `folder/.lock` (which records the owner's pid).

    A second process (or a second open in this one) is refused with a one-line `StoreError`
    naming the owner's pid. The kernel drops the lock when its owner dies, so a stale lock
    file left by a killed process is simply taken over.
    """
    path = ensure_writable(folder) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise StoreError(f"{folder} is in use by process {owner}; wait for it to finish "
                             f"or use another output folder") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield path
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def ensure_writable(folder: Path) -> Path:
    """Creates `folder` if needed and checks that files can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe."):
            pass
    except OSError as e:
        raise StoreError(f"cannot write to {folder}: {e.strerror or e}") from None
    return folder


PACKAGES = ("jax", "jaxlib", "optax", "flax", "orbax-checkpoint", "tensorflow-datasets", "numpy", "scipy")


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


# The commit of the code this process imported: read once, so that a long run records the code
# it ran even if the checkout moves on meanwhile.
LOADED_COMMIT = _git_commit()


def provenance() -> dict[str, Any]:
    """Package versions, platform, devices and git commit: recorded with every result."""
    import jax

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "versions": versions,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "process_count": jax.process_count(),
        "git_commit": LOADED_COMMIT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
