"""Same question, different answers: each claim's verdict across audit profiles and datasets.

Every audit stored under `runs/audit/` (one folder per profile and dataset, see
`audit.audit_dir`) is read back, together with the ledgers kept in the repository
(`experiments/ledgers/<audit>/<experiment>.json`: each experiment's verdicts.json as its run wrote it,
provenance included, so that audits run on different days and machines — a full audit takes hours —
can be compared long after their run folders are gone; a run folder's record replaces a kept one of the
same audit and experiment). A claim is marked

- **stable**: the same decisive verdict (supported, contradicted, depends) in every audit that measured it;
- **inconclusive everywhere**: no audit could decide it, so its sameness is no finding;
- **profile-sensitive**: on some dataset its verdict changes with the profile (seeds, steps);
- **dataset-sensitive**: at some profile its verdict changes with the dataset;
- **one audit only**: measured in a single audit, so nothing to compare;

and each change is explained in one line from the stored numbers (value, CI, flip point). A claim is a
*finding* only when it is stable and was measured at both profiles and on at least two datasets (a claim
whose experiment no dataset enters, `experiment.dataset_free`, needs only the two profiles); the table
ends by naming them.
Smoke-test profiles (tiny) are left out: their verdicts are not evidence. This is the
essay's "ask the same question twice" turned on the audit itself.
"""

from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Mapping, Optional

import experiments
from netalchemy import experiment, store
from netalchemy.md import md_table

PROFILES = ("quick", "full")  # evidence profiles, in order of size
UNDECIDED = "inconclusive"  # the verdict that decides nothing
DATASET_NAMES = {"mnist1d": "MNIST-1D", "fashion_mnist": "Fashion-MNIST", "article": "article pair"}
LEDGERS = Path(experiments.__file__).parent / "ledgers"  # the kept records, one folder per audit

Column = tuple[str, str]  # (dataset, profile)


def _column(path: Path, audit_name: str) -> Optional[tuple[Column, str, Mapping]]:
    """(column, experiment, record) of one verdicts record; None for a smoke-test profile or a record
    that sits in another audit's folder. Raises `store.StoreError` (one line) for a damaged file."""
    record = store.read_json(path)
    try:
        column = (record.get("dataset", "mnist1d"), record["profile"])
        name = record.get("experiment") or path.stem
        if not all(isinstance(v["claim"], str) and isinstance(v["verdict"], str) for v in record["verdicts"]):
            raise TypeError  # each verdict names its claim and its verdict
    except (AttributeError, KeyError, TypeError):
        raise store.StoreError(f"damaged file {path}: not an experiment's verdicts") from None
    if column[1] not in PROFILES or audit_name != _audit_name(*column):
        return None
    return column, name, record


def records(root: Path, ledgers: Optional[Path] = None) -> dict[tuple[Column, str], tuple[Path, Mapping]]:
    """(column, experiment) -> (its file, its verdicts record), from the kept `ledgers` folder (if any)
    and then every audit folder under `root`/audit, whose records replace kept ones."""
    found: dict[tuple[Column, str], tuple[Path, Mapping]] = {}
    kept = sorted(Path(ledgers).glob("*/*.json")) if ledgers is not None else []
    for path, audit_name in [(p, p.parent.name) for p in kept] + [
            (p, p.parts[-4]) for p in sorted(Path(root, "audit").glob("*/*/*/verdicts.json"))]:
        got = _column(path, audit_name)
        if got:
            found[got[:2]] = (path, got[2])
    return found


def collect(root: Path, ledgers: Optional[Path] = None) -> dict[Column, dict[str, Mapping]]:
    """(dataset, profile) -> claim -> its verdict, for every audit under `root`/audit and in `ledgers`.

    Raises `store.StoreError` (one line) for a damaged verdicts file.
    """
    out: dict[Column, dict[str, Mapping]] = {}
    for (column, _), (_, record) in records(root, ledgers).items():
        out.setdefault(column, {}).update({v["claim"]: v for v in record["verdicts"]})
    return out


def keep(root: Path, ledgers: Path = LEDGERS) -> list[Path]:
    """Copies every quick and full audit record under `root`/audit into `ledgers`/<audit>/<experiment>.json
    (replacing the kept one); returns the files written."""
    written = []
    for (column, name), (path, record) in records(root).items():
        target = Path(ledgers, _audit_name(*column), f"{name}.json")
        store.write_json(target, record)
        written.append(target)
    return written


def sources(root: Path, ledgers: Optional[Path] = None) -> list[str]:
    """One line per audit column: where its records come from and the commits that computed them."""
    by_column: dict[Column, list[tuple[Path, Mapping]]] = {}
    for (column, _), got in records(root, ledgers).items():
        by_column.setdefault(column, []).append(got)
    lines = []
    for column in columns(by_column):
        folders = sorted({str(path.parent if path.name != "verdicts.json" else path.parents[2])
                          for path, _ in by_column[column]})
        commits = sorted({str((record.get("provenance") or {}).get("git_commit") or "unknown")[:7]
                          for _, record in by_column[column]})
        n = len(by_column[column])
        lines.append(f"- {label(column)}: {n} experiment{'s' if n > 1 else ''} from {', '.join(folders)}; "
                     f"commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}")
    return lines


def _audit_name(dataset: str, profile: str) -> str:
    return profile if dataset == "mnist1d" else f"{profile}-{dataset}"


def columns(found: Mapping[Column, object]) -> list[Column]:
    """The audits present, datasets in `experiment.DATASETS` order, then profile size."""
    order = list(experiment.DATASETS)
    return sorted(found, key=lambda c: (order.index(c[0]) if c[0] in order else len(order), PROFILES.index(c[1])))


def label(column: Column) -> str:
    return f"{DATASET_NAMES.get(column[0], column[0])} {column[1]}"


def _numbers(v: Mapping) -> str:
    value, low, high = v.get("value"), v.get("ci_low"), v.get("ci_high")
    text = "—" if value is None else f"{value:.3g}"
    if low is not None and high is not None:
        text += f" [{low:.3g}, {high:.3g}]"
    if v.get("flip_point") is not None:
        text += f", flips at {v['flip_point']:.3g}" + (f" ({v['flip_of']})" if v.get("flip_of") else "")
    return text


def mark(by_column: Mapping[Column, Mapping]) -> tuple[str, list[str]]:
    """A claim's stability mark and one line per pair of audits whose verdicts differ.

    Only pairs that differ in one respect mark a claim: the same dataset at two profiles
    (profile-sensitive), or the same profile on two datasets (dataset-sensitive). Pairs that differ in
    both are explained only when no such pair differs, since neither change alone can be blamed.
    """
    if not by_column:
        return "not measured", []
    if len(by_column) == 1:  # nothing to compare with: no mark either way
        return "one audit only", []
    kinds, lines, across_both = set(), [], []
    for a, b in combinations(columns(by_column), 2):
        va, vb = by_column[a], by_column[b]
        if va["verdict"] == vb["verdict"]:
            continue
        line = f"{label(a)} {va['verdict']} ({_numbers(va)}) → {label(b)} {vb['verdict']} ({_numbers(vb)})"
        if a[0] != b[0] and a[1] != b[1]:  # two changes at once: shown only when no cleaner pair exists
            across_both.append(line)
            continue
        kinds.add("profile-sensitive" if a[0] == b[0] else "dataset-sensitive")
        lines.append(line)
    if not kinds:
        verdicts = {v["verdict"] for v in by_column.values()}
        if len(verdicts) > 1:
            return "changes only across both dataset and profile", across_both
        return ("inconclusive everywhere" if verdicts == {UNDECIDED} else "stable"), lines
    return " and ".join(sorted(kinds)), lines


def is_finding(kind: str, measured_in: list[Column], dataset_free: bool = False) -> bool:
    """A stable claim measured at every evidence profile and, unless no dataset enters it, on two or more
    datasets: a verdict that held when both the seeds and steps and the data changed."""
    return (kind == "stable" and {c[1] for c in measured_in} == set(PROFILES)
            and (dataset_free or len({c[0] for c in measured_in}) >= 2))


def _dataset_free_claims(root: Path, ledgers: Optional[Path]) -> set[str]:
    return {v["claim"] for (_, name), (_, record) in records(root, ledgers).items()
            if name in experiment.EXPERIMENTS and experiment.dataset_free(name) for v in record["verdicts"]}


def table(root: Path, claim_ids: Optional[list[str]] = None, ledgers: Optional[Path] = None) -> list[str]:
    """The cross-table (claim × audit, then the mark) and the explanations, as markdown lines;
    [] when fewer than two audits are stored (under `root`/audit or kept in `ledgers`)."""
    found = collect(root, ledgers)
    cols = columns(found)
    if len(cols) < 2:
        return []
    ids = claim_ids or sorted({c for verdicts in found.values() for c in verdicts})
    rows, notes, found_claims, free = [], [], [], _dataset_free_claims(root, ledgers)
    for claim in ids:
        by_column = {c: found[c][claim] for c in cols if claim in found[c]}
        kind, lines = mark(by_column)
        rows.append((claim, *(found[c][claim]["verdict"] if claim in found[c] else "—" for c in cols), kind))
        notes += [f"- {claim}: {line}" for line in lines]
        if is_finding(kind, list(by_column), claim in free):
            found_claims.append(f"{claim} {next(iter(by_column.values()))['verdict']}")
    counts = {k: sum(r[-1] == k for r in rows) for k in dict.fromkeys(r[-1] for r in rows)}
    out = md_table(("claim", *(label(c) for c in cols), "stability"), rows)
    out += ["", "Marks: " + ", ".join(f"{k} {n}" for k, n in counts.items()) + ".", "",
            f"Findings (stable at both profiles and on two or more datasets): {', '.join(found_claims) or 'none yet'}."]
    return out + ([""] + notes if notes else [])


def report_section(root: Path, claim_ids: list[str], kept: bool = True) -> list[str]:
    """An audit report's "Stability across audits" section (markdown lines; [] with fewer than two audits):
    the audits stored under `root`/audit and, when `kept` (not for a smoke test, which is no evidence),
    the repository's ledgers."""
    ledgers = LEDGERS if kept else None
    across = table(root, claim_ids, ledgers)
    if not across:
        return []
    where = " or kept in the repository (`experiments/ledgers`; a stored audit replaces its kept record)"
    return ["## Stability across audits", "", "Each claim's verdict in every quick and full audit stored beside "
            f"this one{where if kept else ''}; a change is explained from the two audits' numbers.", "", *across,
            "", "Where each audit's verdicts come from:", "", *sources(root, ledgers)]
