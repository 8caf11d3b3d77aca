"""Stored sweeps as a user sees them: the list under OUT/train and a sweep's CSV export.

`list_runs` and `format_run_list` back `netalchemy show` without a RUN_DIR; `describe_config`
and `write_csv` back `netalchemy show RUN_DIR [--csv DIR]`. Reads only what `sweep.run` wrote.
"""

from __future__ import annotations

import csv
import datetime
from pathlib import Path
from typing import Any, Optional, Sequence

from netalchemy import config as config_lib
from netalchemy import store

FINAL_METRICS = ("train_loss", "train_acc", "test_loss", "test_acc")


def changed_keys(cfg: config_lib.Config) -> dict[str, Any]:
    """The config keys whose values differ from the defaults."""
    defaults = config_lib.all_keys(config_lib.Config())
    return {k: v for k, v in config_lib.all_keys(cfg).items() if defaults[k] != v}


def describe_config(cfg: config_lib.Config) -> str:
    """One line: 'config: defaults' followed by every non-default key=value."""
    return "config: defaults" + "".join(f" {k}={v}" for k, v in changed_keys(cfg).items())


def format_time(iso: Optional[str]) -> str:
    """An ISO time as 'YYYY-MM-DD HH:MM UTC' (or '?' when unknown)."""
    if not iso:
        return "?"
    try:
        t = datetime.datetime.fromisoformat(iso)
    except (TypeError, ValueError):
        return str(iso)
    if t.tzinfo is not None:
        t = t.astimezone(datetime.timezone.utc)
    return t.strftime("%Y-%m-%d %H:%M") + (" UTC" if t.tzinfo is not None else "")


def _headline(summary: dict) -> str:
    """Mean final test accuracy; with a learning-rate grid, the best lr's (and how many lrs)."""
    means = [g["metrics"]["test_acc"]["mean"] for g in summary["by_lr"]]
    finite = [m for m in means if m is not None]
    if not finite:
        return "—"
    best = f"{max(finite):.4f}"
    return best if len(means) == 1 else f"{best} (best of {len(means)} lrs)"


def _describe_run(folder: Path) -> dict[str, str]:
    """One row of `netalchemy show`: hash, finished, test_acc, config; raises on a damaged folder."""
    from netalchemy import sweep

    if not (folder / "summary.json").exists():  # config.json is written first, summary.json last
        cfg = config_lib.from_dict(store.read_json(folder / "config.json")["config"])
        return {"hash": folder.name, "finished": "unfinished", "test_acc": "—",
                "config": " ".join(f"{k}={v}" for k, v in changed_keys(cfg).items()) or "defaults"}
    result = sweep.load(folder)  # checks every file
    return {"hash": folder.name, "finished": format_time(result.finished), "test_acc": _headline(result.summary),
            "config": " ".join(f"{k}={v}" for k, v in changed_keys(result.cfg).items()) or "defaults"}


def list_runs(root: Path) -> list[dict[str, str]]:
    """A row per sweep folder under `root` (OUT/train), newest first; damaged ones say why.

    Each row has the keys hash, finished ('YYYY-MM-DD HH:MM UTC', 'unfinished' or 'damaged'),
    test_acc and config (the non-default keys, or for a damaged folder the first line of the error).
    """
    rows = []
    for folder in sorted(p for p in Path(root).glob("*") if p.is_dir() and not p.name.startswith(".")):
        try:
            rows.append(_describe_run(folder))
        except (store.StoreError, config_lib.ConfigError, OSError, ValueError, KeyError, TypeError,
                AttributeError) as e:
            message = str(e) if isinstance(e, (store.StoreError, config_lib.ConfigError)) else \
                f"{type(e).__name__}: {e}"
            rows.append({"hash": folder.name, "finished": "damaged", "test_acc": "—",
                         "config": message.splitlines()[0] if message else type(e).__name__})
    return sorted(rows, key=lambda r: r["finished"] if r["finished"][:1].isdigit() else "", reverse=True)


def format_run_list(rows: Sequence[dict[str, str]]) -> str:
    """The rows of `list_runs` as a plain-text table ('' when there are none)."""
    if not rows:
        return ""
    header = {"hash": "hash", "finished": "finished", "test_acc": "test_acc", "config": "config (not default)"}
    widths = {k: max(len(r[k]) for r in [header, *rows]) for k in ("hash", "finished", "test_acc")}
    lines = ["  ".join(r[k].ljust(widths[k]) for k in widths) + "  " + r["config"] for r in [header, *rows]]
    return "\n".join(lines)


def _cell(value: Any) -> Any:
    """A CSV cell: numbers as Python writes them (exact round trip), NaN and None as ''."""
    if value is None:
        return ""
    value = value.item() if hasattr(value, "item") else value
    if isinstance(value, float) and value != value:
        return ""
    return value


def write_csv(result: Any, folder: Path) -> tuple[Path, Path]:
    """Writes `folder/finals.csv` (a row per run) and `folder/history.csv` (a row per run, step, metric).

    Args:
      result: a `sweep.SweepResult` (`sweep.run` or `sweep.load`).
      folder: an existing, writable folder.

    Returns:
      The paths of finals.csv and history.csv.

    Finals come from `summary.json`'s per-run values (NaN for diverged runs is an empty cell;
    `diverged_at_step` is empty for runs that never diverged); the history is every metric at
    every evaluation, in long format for pandas (`pd.read_csv(...).pivot_table(...)`).
    """
    from netalchemy import train

    per_run = result.summary["per_run"]
    finals_path, history_path = Path(folder) / "finals.csv", Path(folder) / "history.csv"
    with open(finals_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "lr", *FINAL_METRICS, "diverged", "diverged_at_step"])
        for i, (seed, lr) in enumerate(zip(result.seeds, result.lrs)):
            at = per_run["diverged_at_step"][i]
            writer.writerow([_cell(seed), _cell(lr), *(_cell(per_run[m][i]) for m in FINAL_METRICS),
                             int(bool(per_run["diverged"][i])), "" if at is None or at < 0 else _cell(at)])
    metrics = {m: v for m, v in result.history.items() if m != "step"}  # the step is a column
    steps = train.evaluation_steps(result.cfg)  # 0, every eval_every, and the final step
    with open(history_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["seed", "lr", "step", "metric", "value"])
        for i, (seed, lr) in enumerate(zip(result.seeds, result.lrs)):
            seed, lr = _cell(seed), _cell(lr)
            for metric, values in metrics.items():
                writer.writerows([seed, lr, step, metric, _cell(v)] for step, v in zip(steps, values[i]))
    return finals_path, history_path
