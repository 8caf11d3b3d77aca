"""The audit on another dataset, and each claim's verdict across audits (stability marks)."""

import dataclasses
import re
import subprocess
import sys

import pytest

from netalchemy import audit, experiment, stability, store
from netalchemy.config import Config, DataConfig
from netalchemy.data import clear_cache
from netalchemy.data import fashion_mnist_builder as fm

from test_fashion_mnist import write_fashion


def _data_configs(node):
    """Every DataConfig inside a settings object."""
    if isinstance(node, Config):
        return [node.data]
    if isinstance(node, DataConfig):
        return [node]
    if isinstance(node, tuple):
        return [d for x in node for d in _data_configs(x)]
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        return [d for f in dataclasses.fields(node) for d in _data_configs(getattr(node, f.name))]
    return []


@pytest.mark.parametrize("name", experiment.EXPERIMENTS)
def test_every_run_config_of_every_profile_moves_to_the_dataset(name):
    module = experiment.load_module(name)
    if experiment.dataset_free(name):  # e.g. gradcheck: random inputs of each architecture
        assert not any(d.name == "mnist1d" for s in module.PROFILES.values() for d in _data_configs(s))
        return
    for profile, settings in module.PROFILES.items():
        before = _data_configs(settings)
        assert before, f"{name}/{profile} has no run config for a dataset to apply to"
        after = _data_configs(experiment.on_dataset(settings, "article"))
        assert len(after) == len(before)
        assert all((d.name, d.classes, d.image_size) == ("fashion_mnist", "0,6", 64) for d in after)
        # The dataset's 4 000-image subset replaces "the whole split" only: an experiment's own small
        # training set (regularization, memorization, phases) stays, or its question would change.
        assert [d.train_size for d in after] == [b.train_size or 4000 for b in before]
        # Nothing but the data changed, and MNIST-1D is the settings as they are.
        assert experiment.on_dataset(settings, "mnist1d") is settings


def test_an_unknown_dataset_is_a_one_line_error_with_a_suggestion():
    with pytest.raises(experiment.ExperimentError, match="did you mean 'fashion_mnist'"):
        experiment.on_dataset(None, "fashon_mnist")
    r = subprocess.run([sys.executable, "-m", "netalchemy.cli", "audit", "--dataset", "fashon_mnist"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "did you mean 'fashion_mnist'" in r.stderr


def test_the_help_describes_each_dataset_from_its_overrides():
    assert experiment.describe_dataset("fashion_mnist") == "fashion_mnist: 7x7, 4000 training images"
    assert experiment.describe_dataset("article") == "article: fashion_mnist classes 0,6, 64x64, 4000 training images"
    from netalchemy import cli

    assert all(experiment.describe_dataset(name) in cli.DATASET_HELP for name in experiment.DATASETS)


def test_folders_name_the_dataset(tmp_path):
    assert audit.audit_dir(tmp_path, "quick") == tmp_path / "audit" / "quick"
    assert audit.audit_dir(tmp_path, "full", "fashion_mnist") == tmp_path / "audit" / "full-fashion_mnist"
    assert experiment.experiment_dir(tmp_path, "chance", "quick", None, False, "article") == \
        tmp_path / "chance" / "quick-article"


def test_an_experiment_runs_on_fashion_mnist_files(tmp_path, monkeypatch):
    """End to end on small IDX files the test writes (the real ones need not be installed)."""
    write_fashion(tmp_path / "tfds", n_train=4000, n_test=200)
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())  # never the real files, never the user's TFDS folder:
    monkeypatch.setitem(experiment.DATASETS, "fashion_mnist",  # prepared into the test's own data_dir
                        (*experiment.DATASETS["fashion_mnist"], f"data.data_dir={tmp_path / 'tfds'}"))
    clear_cache()
    out_dir, verdicts = experiment.run_experiment("memorization", profile="tiny", root=tmp_path / "runs",
                                                  dataset="fashion_mnist")
    clear_cache()
    record = store.read_json(out_dir / "verdicts.json")
    assert out_dir == tmp_path / "runs" / "memorization" / "tiny-fashion_mnist"
    assert record["dataset"] == "fashion_mnist" and verdicts
    assert all(d.name == "fashion_mnist" for d in _data_configs(
        experiment.on_dataset(experiment.resolve_settings("memorization", "tiny"), "fashion_mnist")))


def _audit(root, profile, dataset, verdicts):
    """A stored audit folder holding one experiment's verdicts.json."""
    folder = audit.audit_dir(root, profile, dataset) / "chance" / (profile if dataset == "mnist1d" else
                                                                   f"{profile}-{dataset}")
    store.write_json(folder / "verdicts.json", {"experiment": "chance", "profile": profile, "dataset": dataset,
                                                "verdicts": [{"claim": c, "verdict": v, "value": x, "ci_low": lo,
                                                              "ci_high": hi, "flip_point": 0.5}
                                                             for c, (v, x, lo, hi) in verdicts.items()]})


def _stability_cli(root, *args, ledgers=None):
    """`netalchemy stability` on `root`, with an empty ledgers folder unless one is given (the repository's
    own kept ledgers would otherwise join every test's audits)."""
    return subprocess.run([sys.executable, "-m", "netalchemy.cli", "stability", "--out", str(root),
                           "--ledgers", str(ledgers or root / "no-ledgers"), *args], capture_output=True, text=True)


def test_marks_and_explanations_from_stored_audits(tmp_path):
    ok = ("supported", 0.7, 0.6, 0.8)
    undecided = ("inconclusive", 0.5, 0.4, 0.6)
    _audit(tmp_path, "quick", "mnist1d", {"A1": ok, "A2": ok, "A7": ok, "M1": ok, "M3": undecided})
    _audit(tmp_path, "full", "mnist1d", {"A1": ok, "A2": ("contradicted", 0.3, 0.2, 0.4), "A7": ok, "M1": ok})
    _audit(tmp_path, "quick", "fashion_mnist", {"A1": ok, "A2": ok, "A7": ("inconclusive", 0.55, 0.45, 0.65),
                                                "M3": undecided})
    _audit(tmp_path, "tiny", "mnist1d", {"A1": ("contradicted", 0.1, 0.0, 0.2)})  # a smoke test: left out
    found = stability.collect(tmp_path)
    assert stability.columns(found) == [("mnist1d", "quick"), ("mnist1d", "full"), ("fashion_mnist", "quick")]
    assert stability.mark({c: found[c]["A1"] for c in found}) == ("stable", [])
    kind, lines = stability.mark({c: found[c]["A2"] for c in found})
    assert kind == "profile-sensitive"
    assert lines == ["MNIST-1D quick supported (0.7 [0.6, 0.8], flips at 0.5) → "
                     "MNIST-1D full contradicted (0.3 [0.2, 0.4], flips at 0.5)"]
    assert stability.mark({c: found[c]["A7"] for c in found})[0] == "dataset-sensitive"
    assert stability.mark({c: found[c]["M3"] for c in found if "M3" in found[c]}) == ("inconclusive everywhere", [])
    text = "\n".join(stability.table(tmp_path, ["A1", "A2", "A7", "M1", "M2", "M3"]))
    assert "| A1 | supported | supported | supported | stable |" in text
    assert "| M1 | supported | supported | — | stable |" in text
    assert "| M2 | — | — | — | not measured |" in text
    assert stability.mark({("mnist1d", "quick"): found[("mnist1d", "quick")]["A1"]}) == ("one audit only", [])
    assert "Marks: stable 2, profile-sensitive 1, dataset-sensitive 1, not measured 1, inconclusive everywhere 1." in text
    # A finding is stable at both profiles and on two or more datasets: M1 is stable on MNIST-1D alone, M3 never
    # decided; a dataset-free claim (gradcheck's) needs only both profiles.
    assert "Findings (stable at both profiles and on two or more datasets): A1 supported." in text
    quick_only = [("mnist1d", "quick"), ("fashion_mnist", "quick")]
    assert not stability.is_finding("stable", quick_only)
    assert stability.is_finding("stable", [("mnist1d", "quick"), ("mnist1d", "full")], dataset_free=True)
    assert not stability.is_finding("inconclusive everywhere", [*quick_only, ("mnist1d", "full")])
    # Two audits that differ in both dataset and profile: the change is explained, but blamed on neither.
    kind, lines = stability.mark({("mnist1d", "quick"): found[("mnist1d", "quick")]["A7"],
                                  ("fashion_mnist", "full"): found[("fashion_mnist", "quick")]["A7"]})
    assert kind == "changes only across both dataset and profile"
    assert lines == ["MNIST-1D quick supported (0.7 [0.6, 0.8], flips at 0.5) → "
                     "Fashion-MNIST full inconclusive (0.55 [0.45, 0.65], flips at 0.5)"]
    # The command prints it and writes stability.md; a damaged file is one line.
    r = _stability_cli(tmp_path)
    assert r.returncode == 0 and "| A2 | supported | contradicted | supported | profile-sensitive |" in r.stdout
    assert (tmp_path / "audit" / "stability.md").read_text().startswith("| claim | MNIST-1D quick |")
    (tmp_path / "audit" / "full" / "chance" / "full" / "verdicts.json").write_text("{not json")
    r = _stability_cli(tmp_path)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "verdicts.json" in r.stderr


def test_fewer_than_two_audits_is_a_one_line_error(tmp_path):
    assert stability.table(tmp_path) == []
    r = _stability_cli(tmp_path)
    assert r.returncode == 2 and "fewer than two" in r.stderr and r.stderr.count("\n") == 1


def test_an_audit_on_another_dataset_skips_dataset_free_experiments_and_says_why(tmp_path):
    folder = audit.run_audit("quick", root=tmp_path, names=("gradcheck",), dataset="fashion_mnist", log=lambda _: None)
    assert folder == tmp_path / "audit" / "quick-fashion_mnist" and not (folder / "gradcheck").exists()
    report = (folder / "report.md").read_text()
    assert report.startswith("# netalchemy audit, quick profile, fashion_mnist")
    assert ("Skipped: gradcheck, not rerun on fashion_mnist: its gradients are checked on random inputs and labels, "
            "so no dataset enters; see the MNIST-1D audit.") in report
    rows = {r["claim"]: r for r in audit.ledger([], skipped={"gradcheck": "why"})}
    assert rows["M1"]["verdict"] == audit.NOT_MEASURED and rows["M1"]["measurement"] == "why"


def test_kept_ledgers_join_the_table_and_a_run_folder_replaces_its_kept_record(tmp_path):
    ok, no = ("supported", 0.7, 0.6, 0.8), ("contradicted", 0.3, 0.2, 0.4)
    runs, ledgers = tmp_path / "runs", tmp_path / "ledgers"
    _audit(runs, "full", "fashion_mnist", {"A1": no})
    r = _stability_cli(runs, "--keep", ledgers=ledgers)  # one audit only: kept, then refused in one line
    kept = ledgers / "full-fashion_mnist" / "chance.json"
    assert r.returncode == 2 and f"kept: {kept}" in r.stdout and r.stderr.count("\n") == 1
    assert store.read_json(kept)["verdicts"][0]["verdict"] == "contradicted"
    # The run folder is gone (a new machine); another audit is run: the kept ledger still counts.
    runs2 = tmp_path / "runs2"
    _audit(runs2, "quick", "fashion_mnist", {"A1": ok})
    text = "\n".join(stability.table(runs2, ["A1"], ledgers))
    assert "| A1 | supported | contradicted | profile-sensitive |" in text
    assert stability.sources(runs2, ledgers) == [
        f"- Fashion-MNIST quick: 1 experiment from {runs2 / 'audit' / 'quick-fashion_mnist'}; commit unknown",
        f"- Fashion-MNIST full: 1 experiment from {ledgers / 'full-fashion_mnist'}; commit unknown"]
    # The same audit and experiment in a run folder replaces the kept record.
    _audit(runs2, "full", "fashion_mnist", {"A1": ok})
    assert stability.collect(runs2, ledgers)[("fashion_mnist", "full")]["A1"]["verdict"] == "supported"
    r = _stability_cli(runs2, ledgers=ledgers)
    assert r.returncode == 0 and "| A1 | supported | supported | stable |" in r.stdout
    assert "Where each audit's verdicts come from:" in r.stdout
    # A record kept in the wrong audit's folder is not counted there; a damaged one is one line.
    store.write_json(ledgers / "quick" / "chance.json", store.read_json(kept))
    assert ("mnist1d", "quick") not in stability.collect(runs2, ledgers)
    kept.write_text('{"profile": "full"}')
    r = _stability_cli(runs2, ledgers=ledgers)
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "chance.json" in r.stderr


def test_the_repository_ledgers_are_readable_audit_records():
    """Every kept ledger parses as an experiment's verdicts, in the folder of its own audit."""
    for path in sorted(stability.LEDGERS.glob("*/*.json")):
        record = store.read_json(path)
        assert path.parent.name == stability._audit_name(record["dataset"], record["profile"]), path
        assert path.stem == record["experiment"] and record["verdicts"] and record["provenance"]["git_commit"]


def test_a_quick_or_full_report_shows_the_kept_audits_and_a_smoke_test_does_not(tmp_path, monkeypatch):
    old, runs, ledgers = tmp_path / "old", tmp_path / "runs", tmp_path / "ledgers"
    _audit(old, "full", "mnist1d", {"A1": ("contradicted", 0.3, 0.2, 0.4)})
    stability.keep(old, ledgers)  # a full audit run on another machine, kept
    monkeypatch.setattr(stability, "LEDGERS", ledgers)
    _audit(runs, "quick", "mnist1d", {"A1": ("supported", 0.7, 0.6, 0.8)})
    reports = {}
    for profile in ("quick", "tiny"):
        folder = audit.audit_dir(runs, profile, "mnist1d")
        audit.write_report(folder, profile, [], 1.0)
        reports[profile] = (folder / "report.md").read_text()
    assert "| A1 | supported | contradicted | profile-sensitive |" in reports["quick"]
    assert f"- MNIST-1D full: 1 experiment from {ledgers / 'full'}; commit unknown" in reports["quick"]
    assert "Stability across audits" not in reports["tiny"]  # one stored audit, and a smoke test reads no ledgers
    # In report.html every row of the cross-table has as many cells as its header.
    page = (audit.audit_dir(runs, "quick", "mnist1d") / "report.html").read_text()
    table = next(t for t in re.findall(r"<table.*?</table>", page, re.S) if "profile-sensitive" in t)
    assert {len(re.findall(r"<t[hd][ >]", row)) for row in re.findall(r"<tr.*?</tr>", table, re.S)} == {4}
    assert table.startswith('<table class="stability">')  # styled so that no verdict breaks inside a word
