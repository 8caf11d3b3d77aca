"""Checks of figures as drawn, for the tests: no panel's text runs into another panel, no legend
inside a panel covers that panel's lines, and every figure has a caption in words.

`checking_figures` wraps `plots.save` around a run (an experiment's tiny profile, an audit) and
`assert_clean` then checks every PNG the run left in a folder.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from netalchemy import audit, plots


def _drawn_texts(ax) -> list:
    """The texts an axes draws: title, axis labels, annotations, tick labels of ticks in view."""
    texts = [ax.title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
    for axis in (ax.xaxis, ax.yaxis):
        low, high = sorted(axis.get_view_interval())
        for tick in axis.get_major_ticks() + axis.get_minor_ticks():
            if low <= tick.get_loc() <= high:
                texts += [tick.label1, tick.label2]
    return [t for t in texts if t.get_visible() and t.get_text().strip()]


def _overlap(a: Bbox, b: Bbox) -> bool:
    box = Bbox.intersection(a, b)
    return box is not None and box.width > 1 and box.height > 1  # touching is not overlapping


def label_overlaps(fig: Figure) -> list[str]:
    """Texts of one panel (or the figure's title and legends) that run into another panel's texts
    or plotting area; [] when none do."""
    fig.draw_without_rendering()
    axes = [ax for ax in fig.axes if ax.get_visible()]
    texts = {i: [(t.get_text(), t.get_window_extent()) for t in _drawn_texts(ax)] for i, ax in enumerate(axes)}
    texts[-1] = [(t.get_text(), t.get_window_extent()) for t in [fig._suptitle] if t is not None and t.get_text()]
    texts[-1] += [("figure legend", legend.get_window_extent()) for legend in fig.legends]
    frames = {i: ax.get_window_extent() for i, ax in enumerate(axes)}
    out = []
    for i, mine in texts.items():
        for j in frames:
            if j == i:
                continue
            out += [f"{text!r} runs into panel {j}'s area" for text, box in mine if _overlap(box, frames[j])]
            out += [f"{text!r} runs into {other!r}" for text, box in mine for other, obox in texts[j]
                    if j > i and _overlap(box, obox)]
    return out


def legends_over_data(fig: Figure, *, samples: int = 64) -> list[str]:
    """Legends drawn inside a panel that cover any point of that panel's lines (densely sampled)."""
    fig.draw_without_rendering()
    out = []
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is None or not legend.get_visible():
            continue
        box = legend.get_window_extent()
        for line in ax.get_lines():
            xy = np.column_stack(line.get_data()).astype(float)
            xy = xy[np.isfinite(xy).all(axis=1)]
            if len(xy) == 0:
                continue
            pts = line.get_transform().transform(xy)  # display coordinates
            if len(pts) > 1 and line.get_linestyle() not in ("None", "none", "", " "):  # along each drawn segment
                t = np.linspace(0, 1, samples)[:, None, None]
                pts = (pts[:-1] * (1 - t) + pts[1:] * t).reshape(-1, 2)
            inside = (pts[:, 0] > box.x0) & (pts[:, 0] < box.x1) & (pts[:, 1] > box.y0) & (pts[:, 1] < box.y1)
            if inside.any():
                out.append(f"legend of {ax.get_title()!r} covers {line.get_label()!r}")
                break
    return out


@contextlib.contextmanager
def checking_figures() -> Iterator[dict[str, list[str]]]:
    """Within, every figure saved through `plots.save` is checked as it is drawn; yields
    {"<experiment>/<file>.png": problems found}, filled as figures are saved."""
    drawn: dict[str, list[str]] = {}
    save = plots.save

    def checked_save(fig, path):
        fig.set_dpi(120)  # as plots.save writes it: a legend's "best" place depends on the resolution
        path = Path(path)
        drawn[f"{path.parent.parent.name}/{path.name}"] = label_overlaps(fig) + legends_over_data(fig)
        return save(fig, path)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plots, "save", checked_save)
        yield drawn


def assert_clean(drawn: dict[str, list[str]], folder: Path, *, pattern: str = "*.png") -> None:
    """Every PNG under `folder` matching `pattern` was saved through `plots.save` inside
    `checking_figures` (`drawn`), drawn clean, and has a caption in words."""
    pngs = sorted(Path(folder).glob(pattern))
    assert pngs and {f"{p.parent.parent.name}/{p.name}" for p in pngs} <= set(drawn), (pngs, list(drawn))
    assert not {name: p for name, p in drawn.items() if p}
    for png in pngs:
        caption = audit.figure_caption(png.parent.parent.name, png)
        name_only = png.stem.replace("_", " ").replace("-", " ").lower()
        assert caption and ".png" not in caption and caption.lower() != name_only, (png, caption)  # words


def tiny_run_fixtures(name: str):
    """Module fixtures `tiny_run` — experiment `name`'s tiny profile, run once per test module,
    its figures checked as drawn: (folder, verdicts, checks) — and `tiny`: (folder, verdicts).

    Use as `tiny_run, tiny = tiny_run_fixtures("chance")` at a test module's top level.
    """
    from netalchemy.experiment import run_experiment

    @pytest.fixture(scope="module")
    def tiny_run(tmp_path_factory):
        with checking_figures() as drawn:
            out, verdicts = run_experiment(name, profile="tiny", root=tmp_path_factory.mktemp("runs"))
        return out, verdicts, drawn

    @pytest.fixture(scope="module")
    def tiny(tiny_run):
        return tiny_run[:2]

    return tiny_run, tiny
