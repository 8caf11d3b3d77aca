"""The `netalchemy` command.

  netalchemy train [--out DIR] [--force] [preset=NAME] [key=value ...]  train a seed sweep
  netalchemy show [--out DIR]                                            list the stored sweeps
  netalchemy show RUN_DIR [--csv DIR]                                    a sweep's summary (and CSV)
  netalchemy run NAME [--profile P] [--dataset D] [--out DIR] [k=v ...]  run one experiment
  netalchemy audit [--profile quick|full] [--dataset D] [--out DIR]      every experiment, one report
  netalchemy stability [--out DIR] [--keep]                              verdicts across stored and kept audits
  netalchemy bench [--profile P] [--out DIR] [key=value ...]             throughput against peers
  netalchemy list                                                        experiments and their claims
  netalchemy --version

Bad input prints one line, `netalchemy: error: ...`, and exits with status 2 (a mistyped
command, experiment or config key gets a "did you mean"); a full disk prints one line and
exits with status 1.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

import netalchemy
from netalchemy import claims as claims_lib
from netalchemy import config as config_lib
from netalchemy import devices, experiment, presets, runs, store

SMOKE_BANNER = ("==== SMOKE TEST (tiny profile): these verdicts show that the code runs end to end; "
                "they say nothing about the claims ====")


class UsageError(Exception):
    """Bad command-line input."""


def _usage_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose one-line message is shown as `netalchemy: error:` with exit status 2."""
    from netalchemy.data import DataError  # imports TFDS: not needed for --help or --version

    return (UsageError, config_lib.ConfigError, experiment.ExperimentError, store.StoreError, DataError,
            devices.DeviceError, claims_lib.ClaimsError)


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and exit status 2 (no usage dump)."""

    def error(self, message: str):
        raise UsageError(message)


def _check_overrides(overrides: Sequence[str]) -> None:
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"expected key=value, got {item!r}")


def _check_dataset(dataset: str) -> None:
    if dataset not in experiment.DATASETS:
        raise UsageError(f"unknown dataset {dataset!r}; choose from {', '.join(experiment.DATASETS)}"
                         f"{config_lib.did_you_mean(dataset, list(experiment.DATASETS))}")


DATASET_HELP = ("the data every run config of the experiment trains on (default: mnist1d): "
                + "; ".join(experiment.describe_dataset(name) for name in experiment.DATASETS))


def _check_profile(profile: str) -> None:
    if profile not in experiment.PROFILE_NAMES:
        raise UsageError(f"unknown profile {profile!r}; choose from {', '.join(experiment.PROFILE_NAMES)}"
                         f"{config_lib.did_you_mean(profile, experiment.PROFILE_NAMES)}")


# ----------------------------------------------------------------------------- train


def config_help() -> str:
    """Every config key with its default and, for choice keys, the allowed values (`config.CHOICES`)."""
    defaults = config_lib.all_keys(config_lib.Config())
    width = max(len(f"{k} = {v}") for k, v in defaults.items())
    lines = []
    for key, value in defaults.items():
        line = f"  {key} = {value}"
        options = config_lib.CHOICES.get(key)
        if options:
            many = "any of" if isinstance(value, tuple) else "one of"
            line = f"{line:{width + 4}s}{many}: {' | '.join(options)}"
        lines.append(line)
    return "\n".join(lines)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a sweep of seeds and print its summary",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train cfg.seeds.n seeds at once (vmap), checkpointing as it goes; a rerun "
                                   "of the same command resumes an unfinished sweep or reloads a finished one "
                                   "(--force retrains it). Results go to OUT/train/<config hash>.",
                       epilog=f"config keys and defaults (choice keys list their allowed values):\n{config_help()}"
                              f"\n\npresets (preset=NAME applies these overrides before the others):\n"
                              + "\n".join(f"  {name}: {' '.join(o)}\n    {presets.DESCRIPTIONS.get(name, '')}"
                                          for name, o in presets.PRESETS.items()))
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.add_argument("--force", action="store_true", help="retrain even if this config's sweep is already stored")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="train one sweep over several processes (hosts): the address of process 0; every "
                        "process runs the same command with its own --process-id and a shared --out")
    p.add_argument("--processes", type=int, default=1, help="number of processes (with --coordinator)")
    p.add_argument("--process-id", type=int, default=0, help="this process's index, 0 … processes−1")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. optim.lr=3e-3, and preset=NAME")
    p.set_defaults(func=cmd_train)


def with_preset(overrides: Sequence[str]) -> list[str]:
    """`overrides` with `preset=NAME` replaced by that preset's own overrides, placed first so the
    user's other overrides win whatever their order (`netalchemy.presets`)."""
    chosen = [o for o in overrides if o.partition("=")[0].strip() == "preset"]
    rest = [o for o in overrides if o not in chosen]
    if len(chosen) > 1:
        raise UsageError(f"give one preset=NAME, got {len(chosen)}")
    return [*presets.overrides(chosen[0].partition("=")[2].strip()), *rest] if chosen else rest


def cmd_train(args) -> int:
    from netalchemy import sweep

    _check_overrides(args.overrides)
    cfg = config_lib.override(config_lib.Config(), with_preset(args.overrides))
    out_dir = args.out / "train" / config_lib.config_hash(cfg)
    result = sweep.run(cfg, out_dir=out_dir, progress=not args.quiet, force=args.force)
    if args.process_id == 0:
        if result.reused:
            print(f"reusing {out_dir}, finished {runs.format_time(result.finished)}; use --force to retrain",
                  file=sys.stderr)
        print(sweep.format_summary(result))
        print(f"\nresults: {out_dir}")
    return 0


# ----------------------------------------------------------------------------- show


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="list stored sweeps, or print one's summary (and export it as CSV)",
                       description="Without RUN_DIR: list the sweeps stored under OUT/train (hash, when it "
                                   "finished, mean test accuracy, the config keys that differ from the "
                                   "defaults); damaged folders are listed as damaged. With RUN_DIR: print that "
                                   "sweep's config and summary table; --csv DIR also writes DIR/finals.csv (one "
                                   "row per run: seed, lr, final metrics, diverged_at_step) and DIR/history.csv "
                                   "(long format: seed, lr, step, metric, value), empty cells for NaN.")
    p.add_argument("run_dir", type=Path, nargs="?", help="a folder written by `netalchemy train`")
    p.add_argument("--out", default="runs", type=Path, help="results root folder to list (default: runs)")
    p.add_argument("--csv", type=Path, metavar="DIR", help="write finals.csv and history.csv into DIR "
                                                           "(created if needed; RUN_DIR itself is fine)")
    p.set_defaults(func=cmd_show)


def cmd_show(args) -> int:
    if args.run_dir is None:
        if args.csv is not None:
            raise UsageError("--csv needs a RUN_DIR to export")
        root = args.out / "train"
        print(runs.format_run_list(runs.list_runs(root)) or f"no stored sweeps under {root}")
        return 0
    from netalchemy import sweep

    result = sweep.load(args.run_dir)
    print(runs.describe_config(result.cfg))
    print(sweep.format_summary(result))
    if args.csv is not None:
        finals, history = runs.write_csv(result, store.ensure_writable(args.csv))
        print(f"\nwrote {finals} and {history}")
    return 0


# ----------------------------------------------------------------------------- experiments


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run one experiment and print its verdicts",
                       description="Run one experiment, write its results, figures and verdicts.json under "
                                   "OUT/NAME/PROFILE. Experiments: " + ", ".join(experiment.EXPERIMENTS)
                                   + " (`netalchemy list` says which claims each tests). The tiny profile is "
                                     "a smoke test: its verdicts are marked so.")
    p.add_argument("name", help="experiment name: " + " | ".join(experiment.EXPERIMENTS))
    p.add_argument("--profile", default="quick", help="tiny | quick | full (default: quick)")
    p.add_argument("--dataset", default="mnist1d", help=DATASET_HELP)
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides")
    p.set_defaults(func=cmd_run)


def _check_experiment(name: str) -> None:
    if name not in experiment.EXPERIMENTS:
        raise UsageError(f"unknown experiment {name!r}; choose from {', '.join(experiment.EXPERIMENTS)}"
                         f"{config_lib.did_you_mean(name, experiment.EXPERIMENTS)}")


def smoke_marked(text: str, profile: str) -> str:
    """`text` between smoke-test banners when `profile` is tiny, else unchanged."""
    return f"{SMOKE_BANNER}\n{text}\n{SMOKE_BANNER}" if profile == "tiny" else text


def cmd_run(args) -> int:
    _check_experiment(args.name)
    _check_profile(args.profile)
    _check_dataset(args.dataset)
    _check_overrides(args.overrides)
    out_dir, verdicts = experiment.run_experiment(args.name, profile=args.profile, overrides=args.overrides,
                                                  root=args.out, dataset=args.dataset)
    print()
    print(smoke_marked(experiment.format_verdicts(verdicts), args.profile))
    print(f"\nresults: {out_dir}")
    return 0


def _add_audit(sub) -> None:
    p = sub.add_parser("audit", help="run every experiment and write the audit report",
                       description="Run every experiment at one profile and write OUT/audit/PROFILE/report.md "
                                   "and a self-contained report.html, opening with the ledger of every claim, "
                                   "and print the ledger (ledger.md). Experiments already finished with the "
                                   "same settings are reused. On another dataset the folder is "
                                   "OUT/audit/PROFILE-DATASET.")
    p.add_argument("--profile", default="quick", help="tiny | quick | full (default: quick)")
    p.add_argument("--dataset", default="mnist1d", help=DATASET_HELP)
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.set_defaults(func=cmd_audit)


def _add_stability(sub) -> None:
    p = sub.add_parser("stability", help="each claim's verdict across the stored audits",
                       description="Read every audit stored under OUT/audit (quick and full, on each dataset) and "
                                   "the ledgers kept in the repository (experiments/ledgers, one folder per audit), "
                                   "print the claim x audit table of verdicts with a stability mark per claim "
                                   "(stable, profile-sensitive, dataset-sensitive, inconclusive everywhere), each "
                                   "change explained from the numbers, the findings (claims stable at both profiles "
                                   "and on two or more datasets) and the commits each audit came from, and write it "
                                   "to OUT/audit/stability.md.")
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.add_argument("--ledgers", type=Path, default=None,
                   help="folder of kept ledgers (default: the repository's experiments/ledgers)")
    p.add_argument("--keep", action="store_true",
                   help="first copy every quick and full audit record under OUT/audit into the ledgers folder, "
                        "so that it outlives the run folder")
    p.set_defaults(func=cmd_stability)


def cmd_stability(args) -> int:
    from netalchemy import stability

    ledgers = stability.LEDGERS if args.ledgers is None else args.ledgers
    if args.keep:
        for path in stability.keep(args.out, ledgers):
            print(f"kept: {path}")
    lines = stability.table(args.out, list(claims_lib.load()), ledgers)
    if not lines:
        raise UsageError(f"fewer than two quick or full audits under {args.out / 'audit'} or in {ledgers}; run e.g. "
                         "`netalchemy audit` and `netalchemy audit --dataset fashion_mnist` first")
    text = "\n".join(lines + ["", "Where each audit's verdicts come from:", ""]
                     + stability.sources(args.out, ledgers)) + "\n"
    store.write_text(args.out / "audit" / "stability.md", text)
    print(text, end="")
    print(f"\nwritten: {args.out / 'audit' / 'stability.md'}")
    return 0


def cmd_audit(args) -> int:
    from netalchemy import audit

    _check_profile(args.profile)
    _check_dataset(args.dataset)
    folder = audit.run_audit(args.profile, root=args.out, dataset=args.dataset)
    print()
    print(smoke_marked((folder / "ledger.md").read_text().rstrip("\n"), args.profile))
    print(f"\nreport: {folder / 'report.md'} and {folder / 'report.html'}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training throughput against plain JAX, Flax and PyTorch",
                       description="Time netalchemy's sweep engine and its peers side by side, in one run, "
                                   "and write OUT/bench/PROFILE/{bench.json,table.txt,summary.md,scaling.png}. "
                                   "Needs a source checkout: the benchmark lives in benchmarks/, which the "
                                   "wheel does not ship. PyTorch peers need the bench extra "
                                   "(pip install -e '.[bench]').")
    p.add_argument("--profile", default="quick", help="tiny | quick | full (default: quick)")
    p.add_argument("--out", default="runs", type=Path,
                   help="results root folder; the audit wall-time table reads its audit/ (default: runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="benchmark settings overrides")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from netalchemy import bench

    _check_overrides(args.overrides)
    if args.profile not in bench.PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; choose from {', '.join(bench.PROFILES)}"
                         f"{config_lib.did_you_mean(args.profile, list(bench.PROFILES))}")
    settings = config_lib.override(bench.PROFILES[args.profile], args.overrides)
    out_dir = store.ensure_writable(args.out / "bench" / args.profile)
    results = bench.run_benchmark(settings, out_dir=out_dir, audits=args.out / "audit")
    print(bench.format_table(results))
    print(f"\nresults: {out_dir}")
    return 0


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list experiments and the claims they test",
                       description="List the experiments and the claim ids of CLAIMS.md each tests.")
    p.set_defaults(func=cmd_list)


def cmd_list(args) -> int:
    """Each experiment, then the claims of experiments/claims.toml it tests, with their statements."""
    tested_by: dict[str, list] = {}
    for claim in claims_lib.load().values():
        tested_by.setdefault(claim.experiment, []).append(claim)
    for name in experiment.EXPERIMENTS:
        print(name)
        for claim in tested_by.get(name, []):
            print(f"  {claim.id:4s} {claim.statement}")
    return 0


# ----------------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="netalchemy", description="Audit claims about how neural networks learn: "
                                                   "small MLPs in JAX, many seeds at once.")
    parser.add_argument("--version", action="version", version=f"netalchemy {netalchemy.__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(sub)
    _add_show(sub)
    _add_run(sub)
    _add_audit(sub)
    _add_stability(sub)
    _add_bench(sub)
    _add_list(sub)
    parser.commands = tuple(sub.choices)
    return parser


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """parse_args, with key=value overrides allowed after options too (`run NAME --profile tiny k=v`):
    argparse gives a `nargs="*"` positional only the words before the first option (bpo-15112)."""
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = [*args.overrides, *extra]
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    return args


def _check_command(argv: Sequence[str], commands: Sequence[str]) -> None:
    """A mistyped command gets a suggestion (the command is the first argument: the top level
    has only --help and --version)."""
    if argv and not argv[0].startswith("-") and argv[0] not in commands:
        raise UsageError(f"unknown command {argv[0]!r}; choose from {', '.join(commands)}"
                         f"{config_lib.did_you_mean(argv[0], commands)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    if argv is None:  # the command itself: figures go to files (the library never picks a backend)
        os.environ.setdefault("MPLBACKEND", "Agg")
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        _check_command(argv, parser.commands)
        args = _parse(parser, argv)
        devices.use_cpu_cores()  # one JAX device per core, before JAX runs anything: sweeps shard runs over them
        if getattr(args, "coordinator", None):
            devices.initialize_processes(args.coordinator, args.processes, args.process_id)
        return args.func(args)
    except SystemExit:  # --help, --version
        raise
    except store.NoSpace as e:  # a StoreError, but the input was fine: exit status 1
        print(f"netalchemy: error: {e}", file=sys.stderr)
        return 1
    except _usage_errors() as e:
        print(f"netalchemy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netalchemy: interrupted; finished work is saved and a rerun resumes", file=sys.stderr)
        return 130
    except Exception as e:  # a full disk that no layer below turned into store.NoSpace (e.g. a CSV export)
        if not store.is_no_space(e):
            raise
        print(f"netalchemy: error: no space left on the device ({e}); free some and rerun", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
