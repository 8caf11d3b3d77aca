"""Sweeps that differ only in what the compiled programs never read (data settings, seeds) share one
compiled program (`sweep.program_config`), and get the very bits a program of their own gives."""

import jax

from netalchemy import data, sweep

from sweep_helpers import same, tiny


def test_data_and_seeds_do_not_reach_the_program():
    cfg = tiny("seeds.start=7", "data.label_noise=0.5", "data.seed=3")
    program = sweep.program_config(cfg)
    assert program == sweep.program_config(tiny())  # nothing of data or seeds is left
    assert (program.model, program.optim, program.train) == (cfg.model, cfg.optim, cfg.train)


def test_sweeps_differing_only_in_data_or_seeds_share_one_program_with_the_same_bits(monkeypatch):
    first, other = tiny(), tiny("seeds.start=5", "data.label_noise=0.5")
    sweep.run(first, dataset=data.load(first.data), progress=False)
    compiled = sweep.train_chunk._cache_size()
    noisy = data.load(other.data)
    shared = sweep.run(other, dataset=noisy, progress=False)
    assert sweep.train_chunk._cache_size() == compiled  # no new training program
    jax.clear_caches()
    monkeypatch.setattr(sweep, "program_config", lambda cfg: cfg)  # a program compiled for `other` itself
    own = sweep.run(other, dataset=noisy, progress=False)
    assert same(shared, own)
