"""What one training step costs on each audit dataset, against MNIST-1D, in one interleaved run.

    python -m benchmarks.dataset_cost [--seeds 16] [--steps 400] [--repeats 2] [--sizes 28,14,10,7]

Each variant is the default run config (40-100-100-10-style MLP, Adam) on MNIST-1D, on Fashion-MNIST at
every side length in `--sizes` (`experiment.DATASETS["fashion_mnist"]` with `data.image_size` replaced) and,
with `--article`, on the article pair at 64x64: one sweep of `--seeds` seeds, compiled once, then timed
`--repeats` times with the variants interleaved so that load on the machine falls on all alike. Printed per
variant: median wall and CPU seconds, CPU seconds ÷ MNIST-1D's, CPU utilisation (CPU ÷ wall ÷ cores), and
the mean final test accuracy (the same in every repeat: the sweep is deterministic). This is the measurement
behind the audit's choice of 7x7 Fashion-MNIST (README, "Fashion-MNIST and the article's network").
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

from netalchemy import config as config_lib, data as data_lib, devices, sweep
from netalchemy.experiment import DATASETS


def variants(sizes: list[int], article: bool) -> dict[str, list[str]]:
    """Variant name -> its run-config overrides."""
    fashion = [o for o in DATASETS["fashion_mnist"] if not o.startswith("data.image_size=")]
    out = {"mnist1d": []}
    out.update({f"fashion{s}": [*fashion, f"data.image_size={s}"] for s in sizes})
    if article:
        out["article64"] = list(DATASETS["article"])
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=16)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--sizes", default="28,14,10,7", help="Fashion-MNIST side lengths, comma-separated")
    parser.add_argument("--article", action="store_true", help="also the article pair at 64x64")
    args = parser.parse_args(argv)
    devices.use_cpu_cores()
    base = [f"seeds.n={args.seeds}", f"train.steps={args.steps}", f"train.eval_every={args.steps // 2}"]
    configs = {name: config_lib.override(config_lib.Config(), [*base, *extra])
               for name, extra in variants([int(s) for s in args.sizes.split(",")], args.article).items()}
    datasets = {name: data_lib.load(cfg.data) for name, cfg in configs.items()}
    accuracy = {}
    for name, cfg in configs.items():  # compile (and warm the caches) outside the timing
        result = sweep.run(cfg, dataset=datasets[name], progress=False)
        accuracy[name] = float(result.history["test_acc"][:, -1].mean())
    wall = {name: [] for name in configs}
    cpu = {name: [] for name in configs}
    for _ in range(args.repeats):
        for name, cfg in configs.items():
            t0, c0 = time.perf_counter(), time.process_time()
            sweep.run(cfg, dataset=datasets[name], progress=False)
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    cores = os.cpu_count() or 1
    reference = statistics.median(cpu["mnist1d"])
    print(f"{args.seeds} seeds x {args.steps} steps, median of {args.repeats} interleaved repeats, {cores} cores")
    print(f"{'variant':<10} {'inputs':>6} {'wall s':>7} {'cpu s':>7} {'cpu ÷ mnist1d':>13} {'cpu use':>7} {'test acc':>8}")
    for name, cfg in configs.items():
        w, c = statistics.median(wall[name]), statistics.median(cpu[name])
        print(f"{name:<10} {datasets[name].x_train.shape[1]:>6} {w:>7.2f} {c:>7.2f} {c / reference:>13.2f} "
              f"{c / w / cores:>7.0%} {accuracy[name]:>8.4f}")


if __name__ == "__main__":
    main()
