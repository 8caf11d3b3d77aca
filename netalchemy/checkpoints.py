"""orbax checkpoints of one chunk of a sweep, each with a sha256 of its content.

A checkpoint is a pytree of arrays (global `jax.Array`s across processes, or numpy); its
sha256 covers every leaf's path, dtype, shape and bytes, so a checkpoint damaged on disk
in a way orbax does not notice is still refused with a one-line `store.StoreError`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Optional

import jax
import numpy as np

from netalchemy import store


def flat(tree: Any) -> dict[str, Any]:
    """A pytree's leaves as {"0000": leaf, "0001": ...} (flattening order), the way files store it."""
    return {f"{i:04d}": leaf for i, leaf in enumerate(jax.tree.leaves(tree))}


def unflat(leaves: dict[str, np.ndarray], like: Any) -> Any:
    """Inverse of `flat`: the leaves put back into the structure of `like`."""
    treedef = jax.tree.structure(like)
    return jax.tree.unflatten(treedef, [leaves[f"{i:04d}"] for i in range(treedef.num_leaves)])


def to_host(tree: Any) -> Any:
    """numpy copies of global arrays, on every process (gathered across processes)."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


def digest(tree: Any) -> np.ndarray:
    """sha256 (32,) uint8 of a pytree of host arrays: every leaf's path, dtype, shape and bytes."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        a = np.ascontiguousarray(leaf)
        h.update(f"{jax.tree_util.keystr(path)} {a.dtype} {a.shape}".encode())
        h.update(a.tobytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


class Checkpoints:
    """orbax checkpoints of one chunk's state and history (with their sha256), the latest kept."""

    def __init__(self, folder: Path):
        import orbax.checkpoint as ocp

        self._ocp, self.folder = ocp, folder
        self.manager = ocp.CheckpointManager(
            folder.absolute(), options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False))

    def restore(self, like: dict) -> Optional[tuple[int, dict]]:
        """(intervals done, the tree shaped like `like`, numpy) of the latest checkpoint, None if there is none."""
        step = self.manager.latest_step()
        if step is None:
            return None
        where, fix = self.folder / str(step), f"delete {self.folder} to retrain that chunk from its start"
        abstract = jax.tree.map(self._ocp.utils.to_shape_dtype_struct, {**like, "digest": np.zeros(32, np.uint8)})
        try:
            tree = self.manager.restore(step, args=self._ocp.args.StandardRestore(abstract))
        except Exception as e:  # orbax and tensorstore raise many types for a damaged checkpoint
            detail = " ".join(str(e).split())[:160]
            raise store.StoreError(f"damaged checkpoint {where} ({type(e).__name__}: {detail}); {fix}") from None
        tree = jax.tree.map(np.asarray, tree)
        if not np.array_equal(tree.pop("digest"), digest(tree)):
            raise store.StoreError(f"damaged checkpoint {where} (its content does not match its sha256); {fix}")
        return step, tree

    def save(self, step: int, tree: dict) -> None:
        """Writes `tree` as checkpoint `step` (the previous one removed); a full disk raises `store.NoSpace`."""
        tree = {**tree, "digest": digest(to_host(tree))}
        try:
            self.manager.save(step, args=self._ocp.args.StandardSave(tree), force=True)
            self.manager.wait_until_finished()
        except Exception as e:
            if store.is_no_space(e):
                raise store.NoSpace(self.folder / str(step)) from e
            raise

    def close(self) -> None:
        self.manager.close()
