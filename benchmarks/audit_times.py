"""The audit's wall time beside the throughput tables: what each stored audit took to compute.

`netalchemy audit --profile P [--dataset D]` stores one verdicts.json per experiment under
`<folder>/<P>[-<D>]/<experiment>/<P>[-<D>]/` (`audit.audit_dir`, `experiment.experiment_dir`),
with its compute time (`seconds`) and provenance (commit, devices, backend, created). Each
quick and full audit found is read back into one row: experiments complete, the sum of their
recorded times, the slowest, the commits and devices they were recorded on. An experiment
stored before the audit's last command started (report.md's "Time" and "Written" lines, or
another commit than report.md's) was reused by that command: its time is an earlier command's.
An experiment whose run folder is gone is read from the ledgers the repository keeps
(`stability.LEDGERS`, `netalchemy stability --keep`), and the row says which came from there.
"""

from __future__ import annotations

import datetime
import re
from collections import Counter
from pathlib import Path
from typing import Any, Optional

from netalchemy import audit, experiment, stability, store

HOW = ("run `netalchemy audit --profile quick` (add `--dataset fashion_mnist` or `--dataset article`, "
       "or `--profile full`) to store one")


def expected(dataset: str) -> list[str]:
    """The experiments an audit on `dataset` runs: all of them on MNIST-1D, less the dataset-free ones elsewhere."""
    return [n for n in experiment.EXPERIMENTS if dataset == "mnist1d" or not experiment.dataset_free(n)]


def _when(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text)


def read_record(path: Path) -> dict[str, Any]:
    """One experiment's seconds, short commit, devices ("2 cpu") and creation time.

    Raises:
      store.StoreError: one line, for a missing, unreadable or damaged verdicts.json.
    """
    record = store.read_json(path)
    try:
        prov = record["provenance"]
        return {"seconds": float(record["seconds"]), "commit": (prov.get("git_commit") or "unknown")[:10],
                "devices": f"{len(prov['devices'])} {prov['backend']}", "created": _when(prov["created"])}
    except (AttributeError, KeyError, TypeError, ValueError):
        raise store.StoreError(f"damaged file {path}: not an experiment's verdicts") from None


def last_command(folder: Path) -> Optional[dict[str, Any]]:
    """The start, seconds and commit of the audit command that wrote folder/report.md; None without one."""
    try:
        text = (folder / "report.md").read_text()
    except (OSError, UnicodeDecodeError):
        return None
    found = {k: re.search(rf"^- {k}: (\S+)", text, re.M) for k in ("Time", "Written", "Git commit")}
    if not (found["Time"] and found["Written"]):
        return None
    try:
        seconds, written = float(found["Time"][1]), _when(found["Written"][1])
    except ValueError:
        return None
    commit = found["Git commit"][1][:10] if found["Git commit"] and found["Git commit"][1] != "None" else None
    return {"seconds": seconds, "start": written - datetime.timedelta(seconds=seconds), "commit": commit}


def audit_row(folder: Path, profile: str, dataset: str, kept: Optional[Path] = None) -> dict[str, Any]:
    """One stored audit: experiments complete / missing / damaged, times, commits, devices, reuse.

    `kept`: the audit's folder of kept ledgers (<experiment>.json), read for experiments `folder` lacks.
    """
    names = expected(dataset)
    records, damaged, from_kept = {}, {}, []
    for name in names:
        path = folder / name / folder.name / "verdicts.json"
        if not path.exists() and kept is not None and (kept / f"{name}.json").exists():
            path = kept / f"{name}.json"
            from_kept.append(name)
        if path.exists():
            try:
                records[name] = read_record(path)
            except store.StoreError as e:
                damaged[name] = str(e)
    command = last_command(folder)
    reused = [n for n, r in records.items() if command and n not in from_kept and (
        r["created"] < command["start"] or command["commit"] not in (None, r["commit"]))]
    slowest = max(records, key=lambda n: records[n]["seconds"], default=None)
    return {
        "audit": folder.name, "label": stability.label((dataset, profile)), "profile": profile, "dataset": dataset,
        "expected": len(names), "not_rerun": [n for n in experiment.EXPERIMENTS if n not in names],
        "complete": list(records), "missing": [n for n in names if n not in records and n not in damaged],
        "damaged": damaged, "total_s": sum(r["seconds"] for r in records.values()),
        "slowest": slowest, "slowest_s": records[slowest]["seconds"] if slowest else None,
        "commits": dict(Counter(r["commit"] for r in records.values())),
        "devices": dict(Counter(r["devices"] for r in records.values())),
        "reused": reused, "kept": from_kept, "command_s": command["seconds"] if command else None,
        "command_commit": command["commit"] if command else None,
    }


def collect(folder: Path, ledgers: Optional[Path] = None) -> dict[str, Any]:
    """Every quick and full audit stored under `folder` (default runs/audit) or kept in `ledgers`
    (`stability.LEDGERS`: one folder per audit), as JSON-able rows.

    Returns:
      {"folder": str, "ledgers": str or None, "rows": [audit_row, ...]}, datasets in
      `experiment.DATASETS` order, then quick before full; no rows when none is stored (`HOW` says
      how to store one).
    """
    folder = Path(folder)
    rows = []
    for dataset in experiment.DATASETS:
        for profile in stability.PROFILES:
            name = audit.audit_dir(Path(), profile, dataset).name
            kept = Path(ledgers, name) if ledgers is not None else None
            if (folder / name).is_dir() or (kept is not None and kept.is_dir()):
                rows.append(audit_row(folder / name, profile, dataset, kept))
    return {"folder": str(folder), "ledgers": None if ledgers is None else str(ledgers), "rows": rows}
