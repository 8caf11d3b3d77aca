"""Matplotlib figures for the experiments (Agg backend: files only, no screen needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig, path: Path) -> Path:
    """Saves and closes a figure; the file is replaced atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def gradcheck_errors(rows: Sequence[Mapping], path: Path, *, thresholds: Mapping[str, float]) -> Path:
    """Worst relative error per parameter array, one marker per comparison, log scale."""
    series = [("hand_vs_autodiff_f64", "hand~auto f64", "o"), ("hand_vs_autodiff_f32", "hand~auto f32", "s"),
              ("hand_vs_fd", "hand~FD", "^"), ("hand_vs_fd_at_kinks", "hand~FD at ReLU kinks", "x")]
    names = [r["param"] for r in rows]
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(names)), 4))
    floor = 1e-18  # exact agreement (error 0) is drawn at the bottom of the axis
    for k, (key, label, marker) in enumerate(series):
        values = [r.get(key) for r in rows]
        xs = [i + 0.12 * (k - 1.5) for i, v in enumerate(values) if v is not None]
        ys = [max(v, floor) for v in values if v is not None]
        ax.scatter(xs, ys, marker=marker, label=label)
    for (label, t), color in zip(thresholds.items(), ("C0", "C1", "C2")):
        ax.axhline(t, color=color, ls="--", lw=0.8, label=f"threshold {label} = {t:g}")
    ax.set_yscale("log")
    ax.set_ylim(floor / 3, 10)
    ax.set_xticks(np.arange(len(names)), names, rotation=45, ha="right")
    ax.set_ylabel("largest relative error (0 drawn at 1e-18)")
    ax.set_title("Gradient check: hand-derived backprop vs jax.grad vs finite differences")
    ax.legend(fontsize=7, loc="upper left", ncol=2)
    return save(fig, path)


def seed_band(ax, x, values, *, label: str, color=None, log_y: bool = False):
    """Median over seeds with an interquartile band; `values` is (seeds, points), NaN ignored."""
    values = np.asarray(values, np.float64)
    with np.errstate(all="ignore"):
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, axis=0)
            low, high = np.nanpercentile(values, [25, 75], axis=0)
    line, = ax.plot(x, median, label=f"{label} (median, IQR over {values.shape[0]} seeds)", color=color)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.25, lw=0)
    if log_y:
        ax.set_yscale("log")
    return line
