"""Results on disk: JSON and `.npz` files written atomically, and run provenance.

Every write goes to a temporary file in the same folder, is flushed and fsync-ed, and is
then renamed over the target, so a reader (or a resumed run) never sees half a file.
Arrays are stored as `.npz` and read with `allow_pickle=False`: nothing is unpickled.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Mapping, Optional

import numpy as np


class StoreError(RuntimeError):
    """A results folder cannot be used; the message is one line, fit for a user."""


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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


def write_json(path: Path, data: Any) -> None:
    """Writes `data` as indented JSON, atomically (NaN and Inf are stored as null)."""
    text = json.dumps(_jsonable(data), indent=2, sort_keys=False) + "\n"
    _atomic_write(Path(path), lambda f: f.write(text.encode()))


def read_json(path: Path) -> Any:
    with open(path) as f:
        return json.load(f)


def write_npz(path: Path, arrays: Mapping[str, Any]) -> None:
    """Writes named arrays to `.npz`, atomically."""
    data = {k: np.asarray(v) for k, v in arrays.items()}
    _atomic_write(Path(path), lambda f: np.savez(f, **data))


def read_npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


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
