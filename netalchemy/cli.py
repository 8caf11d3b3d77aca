"""The `netalchemy` command.

  netalchemy run NAME [--profile P] [--out DIR] [key=value ...]   run one experiment
  netalchemy list                                                  list experiments and claims
  netalchemy audit [--profile quick|full] [--out DIR]              every experiment, one report
  netalchemy bench [--profile P] [--out DIR] [key=value ...]       throughput against peers
  netalchemy train [--out DIR] [key=value ...]                     train a seed sweep
  netalchemy show RUN_DIR                                          print a stored sweep's summary

Bad input prints one line, `netalchemy: error: ...`, and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from netalchemy import config as config_lib
from netalchemy import devices, experiment, store
from netalchemy.data import DataError

USAGE_ERRORS = (config_lib.ConfigError, experiment.ExperimentError, store.StoreError, DataError,
                devices.DeviceError)


class UsageError(Exception):
    """Bad command-line input."""


class Parser(argparse.ArgumentParser):
    """argparse, but an error is one line and exit status 2 (no usage dump)."""

    def error(self, message: str):
        raise UsageError(message)


def _add_run(sub) -> None:
    p = sub.add_parser("run", help="run one experiment and print its verdicts",
                       description="Run one experiment (see `netalchemy list`), write its results, "
                                   "figures and verdicts.json under OUT/NAME/PROFILE.")
    p.add_argument("name", help="experiment name, e.g. gradcheck")
    p.add_argument("--profile", default="quick", help="tiny | quick | full (default: quick)")
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="settings overrides")
    p.set_defaults(func=cmd_run)


def _add_list(sub) -> None:
    p = sub.add_parser("list", help="list experiments and the claims they test",
                       description="List the experiments and the claim ids of CLAIMS.md each tests.")
    p.set_defaults(func=cmd_list)


def _add_train(sub) -> None:
    defaults = config_lib.all_keys(config_lib.Config())
    keys = "\n".join(f"  {k} = {v}" for k, v in defaults.items())
    p = sub.add_parser("train", help="train a sweep of seeds and print its summary",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train cfg.seeds.n seeds at once (vmap), checkpointing as it goes; a rerun "
                                   "of the same command resumes or reloads. Results go to OUT/train/<config hash>.",
                       epilog=f"config keys and defaults:\n{keys}")
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="train one sweep over several processes (hosts): the address of process 0; every "
                        "process runs the same command with its own --process-id and a shared --out")
    p.add_argument("--processes", type=int, default=1, help="number of processes (with --coordinator)")
    p.add_argument("--process-id", type=int, default=0, help="this process's index, 0 … processes−1")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. optim.lr=3e-3")
    p.set_defaults(func=cmd_train)


def _add_show(sub) -> None:
    p = sub.add_parser("show", help="print the summary of a stored sweep",
                       description="Print the summary table of a finished sweep folder.")
    p.add_argument("run_dir", type=Path, help="a folder written by `netalchemy train`")
    p.set_defaults(func=cmd_show)


def _check_overrides(overrides) -> None:
    for item in overrides:
        if "=" not in item:
            raise UsageError(f"expected key=value, got {item!r}")


def cmd_train(args) -> int:
    from netalchemy import sweep

    _check_overrides(args.overrides)
    cfg = config_lib.override(config_lib.Config(), args.overrides)
    out_dir = args.out / "train" / config_lib.config_hash(cfg)
    result = sweep.run(cfg, out_dir=out_dir, progress=not args.quiet)
    if args.process_id == 0:
        print(sweep.format_summary(result))
        print(f"\nresults: {out_dir}")
    return 0


def cmd_show(args) -> int:
    from netalchemy import sweep

    result = sweep.load(args.run_dir)
    print(describe_config(result.cfg))
    print(sweep.format_summary(result))
    return 0


def describe_config(cfg) -> str:
    changed = {k: v for k, v in config_lib.all_keys(cfg).items()
               if config_lib.all_keys(config_lib.Config())[k] != v}
    return "config: defaults" + "".join(f" {k}={v}" for k, v in changed.items())


def cmd_run(args) -> int:
    _check_overrides(args.overrides)
    out_dir, verdicts = experiment.run_experiment(args.name, profile=args.profile,
                                                  overrides=args.overrides, root=args.out)
    print()
    print(experiment.format_verdicts(verdicts))
    print(f"\nresults: {out_dir}")
    return 0


def _add_audit(sub) -> None:
    p = sub.add_parser("audit", help="run every experiment and write the audit report",
                       description="Run every experiment at one profile and write OUT/audit/PROFILE/report.md "
                                   "and a self-contained report.html, opening with the ledger of every claim. "
                                   "Experiments already finished with the same settings are reused.")
    p.add_argument("--profile", default="quick", help="tiny | quick | full (default: quick)")
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.set_defaults(func=cmd_audit)


def cmd_audit(args) -> int:
    from netalchemy import audit

    folder = audit.run_audit(args.profile, root=args.out)
    print((folder / "report.md").read_text().split("\n## Rules")[0])
    print(f"report: {folder / 'report.md'} and {folder / 'report.html'}")
    return 0


def _add_bench(sub) -> None:
    p = sub.add_parser("bench", help="measure training throughput against plain JAX, Flax and PyTorch",
                       description="Time netalchemy's sweep engine and its peers side by side, in one run, "
                                   "and write OUT/bench/PROFILE/{bench.json,table.txt,scaling.png}. "
                                   "PyTorch peers need the bench extra (pip install -e '.[bench]').")
    p.add_argument("--profile", default="quick", help="tiny | quick | full (default: quick)")
    p.add_argument("--out", default="runs", type=Path, help="results root folder (default: runs)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="benchmark settings overrides")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    from netalchemy import bench

    _check_overrides(args.overrides)
    if args.profile not in bench.PROFILES:
        raise UsageError(f"unknown profile {args.profile!r}; choose from {', '.join(bench.PROFILES)}")
    settings = config_lib.override(bench.PROFILES[args.profile], args.overrides)
    out_dir = store.ensure_writable(args.out / "bench" / args.profile)
    results = bench.run_benchmark(settings, out_dir=out_dir)
    print(bench.format_table(results))
    print(f"\nresults: {out_dir}")
    return 0


def cmd_list(args) -> int:
    for name in experiment.EXPERIMENTS:
        module = experiment.load_module(name)
        summary = (module.__doc__ or "").strip().splitlines()[0]
        print(f"{name:14s} {', '.join(module.CLAIMS):14s} {summary}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="netalchemy", description="Audit claims about how neural networks learn: "
                                                   "small MLPs in JAX, many seeds at once.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _add_train(sub)
    _add_show(sub)
    _add_run(sub)
    _add_audit(sub)
    _add_bench(sub)
    _add_list(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        devices.use_cpu_cores()  # one JAX device per core: sweeps shard their runs over the cores
        if getattr(args, "coordinator", None):
            devices.initialize_processes(args.coordinator, args.processes, args.process_id)
        return args.func(args)
    except (UsageError, *USAGE_ERRORS) as e:
        print(f"netalchemy: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("netalchemy: interrupted; finished work is saved and a rerun resumes", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
