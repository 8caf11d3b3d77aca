"""Matplotlib figures for the experiments.

The library never chooses a backend: figures are `matplotlib.figure.Figure` objects made by
`subplots` (not registered with pyplot, so no window opens and nothing is shown twice), saved
to files by `save`. In a notebook, Jupyter's inline backend displays a returned figure.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt  # for callers that draw with pyplot; importing it picks no backend
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D


def subplots(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (6.4, 4.8),
             **kwargs: Any) -> tuple[Figure, Any]:
    """A figure with constrained layout (panels spaced so their labels stay apart) and its axes.

    Takes `plt.subplots`' arguments (sharex, squeeze, gridspec_kw, ...).

    The figure belongs to no pyplot backend: save it with `save`, or display it in a notebook.
    """
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols, **kwargs)


def caption(fig: Figure) -> str:
    """The figure described in its own words: its suptitle, else its panels' titles, else 'y vs x'.

    Whitespace (line breaks included) is collapsed to single spaces; "" when the figure has no words.
    """
    def words(text: str) -> str:
        return " ".join(text.split())

    if words(fig.get_suptitle()):
        return words(fig.get_suptitle())
    titles = [words(ax.get_title()) for ax in fig.axes if words(ax.get_title())]
    if not titles:
        titles = [f"{words(ax.get_ylabel())} vs {words(ax.get_xlabel())}" for ax in fig.axes
                  if words(ax.get_ylabel()) and words(ax.get_xlabel())]
    return "; ".join(dict.fromkeys(titles))


def save(fig: Figure, path: Path) -> Path:
    """Saves a figure with its `caption` as the PNG's Title; closes it if pyplot made it.

    The file is replaced atomically.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    metadata = {"Title": caption(fig)} if path.suffix.lower() == ".png" else None
    fig.savefig(tmp, dpi=120, bbox_inches="tight", metadata=metadata)
    plt.close(fig)  # a no-op for a figure of `subplots`
    tmp.replace(path)
    return path


def saved_caption(path: Path) -> str:
    """The caption `save` stored in a PNG ("" for a PNG without one)."""
    from PIL import Image  # matplotlib's own dependency

    with Image.open(path) as image:
        return " ".join(str(getattr(image, "text", {}).get("Title", "")).split())


def gradcheck_errors(rows: Sequence[Mapping], path: Path, *, thresholds: Mapping[str, float]) -> Path:
    """Worst relative error per parameter array, one marker per comparison, log scale."""
    series = [("hand_vs_autodiff_f64", "hand~auto f64", "o"), ("hand_vs_autodiff_f32", "hand~auto f32", "s"),
              ("hand_vs_fd", "hand~FD", "^"), ("hand_vs_fd_at_kinks", "hand~FD at ReLU kinks", "x")]
    names = [r["param"] for r in rows]
    fig, ax = subplots(figsize=(max(6, 0.6 * len(names)), 4))
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


def seed_band(ax: Axes, x: Any, values: Any, *, label: str, color: Any = None, log_y: bool = False) -> Line2D:
    """Median over seeds with an interquartile band; `values` is (seeds, points), NaN ignored."""
    values = np.asarray(values, np.float64)
    with np.errstate(all="ignore"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            median = np.nanmedian(values, axis=0)
            low, high = np.nanpercentile(values, [25, 75], axis=0)
    line, = ax.plot(x, median, label=f"{label} (median, IQR over {values.shape[0]} seeds)", color=color)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.25, lw=0)
    if log_y:
        ax.set_yscale("log")
    return line
