"""Shared by the sweep tests: a tiny config, bitwise equality of two sweeps, an interruption."""

import jax
import numpy as np
import pytest

from netalchemy import checkpoints, sweep
from netalchemy import config as C

TINY = ["model.hidden=16", "train.steps=40", "train.eval_every=10", "train.chunk_steps=20",
        "train.batch_size=25", "seeds.n=3"]


def tiny(*extra):
    """The tiny sweep config (3 seeds × 40 steps of a 16-unit MLP) with `extra` overrides."""
    return C.override(C.Config(), [*TINY, *extra])


def same(a: sweep.SweepResult, b: sweep.SweepResult) -> bool:
    """Bitwise equality of histories, predictions and final states."""
    return (all(np.array_equal(a.history[m], b.history[m], equal_nan=True) for m in sweep.METRICS)
            and np.array_equal(a.test_predictions, b.test_predictions)
            and all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a.final), jax.tree.leaves(b.final))))


def interrupt_after_first_checkpoint(monkeypatch, train) -> list[int]:
    """Calls `train()` with the first checkpoint's save followed by a KeyboardInterrupt (as a
    Ctrl-C right after it); returns the steps saved. `Checkpoints.save` is restored after."""
    original, saved = checkpoints.Checkpoints.save, []

    def crash(self, step, tree):
        original(self, step, tree)
        saved.append(step)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints.Checkpoints, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        train()
    monkeypatch.setattr(checkpoints.Checkpoints, "save", original)
    return saved
