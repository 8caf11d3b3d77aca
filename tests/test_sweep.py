"""The training engine: reproducibility, resumption, sharding, divergence, sweeps over lr."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from netalchemy import config as C
from netalchemy import store, sweep, train
from netalchemy.data import load

from sweep_helpers import TINY, interrupt_after_first_checkpoint, same, tiny

pytestmark = pytest.mark.exact_bits  # bits compared across differently compiled programs (Makefile)


@pytest.fixture(scope="module")
def mnist1d():
    return load(C.DataConfig())


def test_same_command_twice_gives_identical_results_and_seeds_differ(mnist1d, tmp_path):
    a = sweep.run(tiny(), out_dir=tmp_path / "a", dataset=mnist1d, progress=False)
    b = sweep.run(tiny(), out_dir=tmp_path / "b", dataset=mnist1d, progress=False)
    assert same(a, b)
    assert (tmp_path / "a" / "summary.json").read_text() == (tmp_path / "b" / "summary.json").read_text()
    acc = a.history["test_acc"][:, -1]
    assert len(set(acc.tolist())) == 3  # different seeds, different nets
    assert a.history["test_acc"].shape == (3, 5)  # step 0 + 4 evaluations
    np.testing.assert_array_equal(a.history["step"][0], [0, 10, 20, 30, 40])
    assert (acc > 0.18).all()  # 40 Adam steps beat chance (0.1) on MNIST-1D
    # Loading the stored sweep gives the same arrays.
    assert same(a, sweep.load(tmp_path / "a"))


def test_a_finished_sweep_is_never_overwritten_by_another_config(mnist1d, tmp_path):
    sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
    before = (tmp_path / "history.npz").read_bytes()
    with pytest.raises(Exception, match="different config"):
        sweep.run(tiny("optim.lr=0.1"), out_dir=tmp_path, dataset=mnist1d, progress=False)
    assert (tmp_path / "history.npz").read_bytes() == before


def test_resume_after_interruption_is_bit_identical(mnist1d, tmp_path, monkeypatch):
    reference = sweep.run(tiny(), out_dir=tmp_path / "ref", dataset=mnist1d, progress=False)
    calls = interrupt_after_first_checkpoint(monkeypatch, lambda: sweep.run(
        tiny(), out_dir=tmp_path / "cut", dataset=mnist1d, progress=False))
    assert calls == [2] and not (tmp_path / "cut" / "summary.json").exists()
    resumed = sweep.run(tiny(), out_dir=tmp_path / "cut", dataset=mnist1d, progress=False)
    assert same(reference, resumed)


def test_kill_9_during_training_then_resume_is_bit_identical(tmp_path):
    args = [sys.executable, "-m", "netalchemy.cli", "train", "--quiet", "--out", str(tmp_path),
            "model.hidden=16", "train.steps=600", "train.eval_every=10", "train.chunk_steps=10",
            "train.batch_size=25", "seeds.n=2"]
    cfg = C.override(C.Config(), args[7:])
    run_dir = tmp_path / "train" / C.config_hash(cfg)
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    ckpts = run_dir / "checkpoints" / "chunk-0000"
    while time.time() < deadline and not (ckpts.exists() and any(p.name.isdigit() for p in ckpts.iterdir())):
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "summary.json").exists(), "the run finished before it could be killed"
    subprocess.run(args, check=True, capture_output=True)
    resumed = sweep.load(run_dir)
    # The reference runs the same way (the command, one CPU device per core): the device
    # count moves results by rounding, so only equal counts can be compared bit for bit.
    subprocess.run([*args[:6], str(tmp_path / "ref"), *args[7:]], check=True, capture_output=True)
    reference = sweep.load(tmp_path / "ref" / "train" / C.config_hash(cfg))
    assert same(reference, resumed)


def test_divergent_runs_are_marked_frozen_and_counted(mnist1d):
    cfg = tiny("optim.name=sgd", "model.hidden=64,64")
    result = sweep.run(cfg, lrs=[0.05, 1e4], dataset=mnist1d, progress=False)
    diverged = result.history["diverged"][:, -1].astype(bool)
    assert not diverged[:3].any() and diverged[3:].all()
    # Frozen at the start of the interval where the loss went non-finite: finite params.
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(result.final.params))
    by_lr = {g["lr"]: g for g in result.summary["by_lr"]}
    assert by_lr[1e4]["diverged"] == 3 and by_lr[1e4]["metrics"]["test_acc"]["n_finite"] == 0
    assert by_lr[0.05]["metrics"]["test_acc"]["mean"] is not None
    assert (np.asarray(result.summary["per_run"]["diverged_at_step"])[3:] >= 0).all()


def test_lr_grid_runs_equal_single_lr_sweeps(mnist1d):
    grid = sweep.run(tiny(), lrs=[1e-3, 1e-2], dataset=mnist1d, progress=False)
    np.testing.assert_array_equal(grid.lrs, [1e-3] * 3 + [1e-2] * 3)
    alone = sweep.run(tiny("optim.lr=1e-3"), dataset=mnist1d, progress=False)
    np.testing.assert_allclose(grid.history["test_loss"][:3], alone.history["test_loss"], rtol=1e-5)


def test_chunking_over_seeds_gives_the_same_numbers(mnist1d):
    one = sweep.run(tiny(), dataset=mnist1d, progress=False)
    per_run = sweep.bytes_per_run(tiny(), in_features=40, num_classes=10, n_train=4000, n_test=1000)
    budget = 1.5 * per_run / 2**30  # one run per chunk
    chunked = sweep.run(tiny(f"train.memory_budget_gb={budget}"), dataset=mnist1d, progress=False)
    assert sweep.runs_per_chunk(tiny(f"train.memory_budget_gb={budget}"), 3, per_run, 1) == 1
    np.testing.assert_allclose(one.history["test_loss"], chunked.history["test_loss"], rtol=1e-5)


def test_shared_streams_are_shared(mnist1d):
    all_shared = sweep.run(tiny("seeds.vary="), dataset=mnist1d, progress=False)
    assert (all_shared.history["test_loss"] == all_shared.history["test_loss"][:1]).all()
    init_only = sweep.run(tiny("seeds.vary=data,dropout"), dataset=mnist1d, progress=False)
    # Same initial weights for every seed -> same step-0 evaluation; different data order after.
    assert (init_only.history["test_loss"][:, 0] == init_only.history["test_loss"][0, 0]).all()
    assert len(set(init_only.history["test_loss"][:, -1].tolist())) == 3


def test_without_the_gradient_norm_training_is_bit_identical_and_the_norm_is_nan(mnist1d):
    logged = sweep.run(tiny("train.grad_norm=true"), dataset=mnist1d, progress=False)
    unlogged = sweep.run(tiny(), dataset=mnist1d, progress=False)  # the default: not logged
    for name in (m for m in sweep.METRICS if m != "grad_norm"):
        np.testing.assert_array_equal(logged.history[name], unlogged.history[name])
    np.testing.assert_array_equal(logged.test_predictions, unlogged.test_predictions)
    for a, b in zip(jax.tree.leaves(logged.final), jax.tree.leaves(unlogged.final)):
        np.testing.assert_array_equal(a, b)  # the final parameters and optimizer states, bit for bit
    assert np.isfinite(logged.history["grad_norm"][:, 1:]).all()
    assert np.isnan(unlogged.history["grad_norm"][:, 1:]).all()


def test_hand_gradients_train_like_autodiff(mnist1d):
    auto = sweep.run(tiny("model.batch_norm=true", "train.l2=1e-4"), dataset=mnist1d, progress=False)
    hand = sweep.run(tiny("model.batch_norm=true", "train.l2=1e-4", "train.grad=hand"), dataset=mnist1d, progress=False)
    np.testing.assert_allclose(auto.history["test_loss"], hand.history["test_loss"], rtol=2e-3)


def test_four_devices_give_the_same_numbers_as_one(tmp_path):
    script = (
        "import sys, numpy as np, jax; from netalchemy import sweep, config as C; "
        f"cfg = C.override(C.Config(), {TINY!r} + ['seeds.n=8']); "
        "r = sweep.run(cfg, progress=False); "
        "np.savez(sys.argv[1], n=len(jax.devices()), **{m: r.history[m] for m in sweep.METRICS}, pred=r.test_predictions)")
    outs = []
    for n in (1, 4):
        env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        path = tmp_path / f"{n}.npz"
        subprocess.run([sys.executable, "-c", script, str(path)], check=True, env=env, capture_output=True)
        outs.append(np.load(path))
    assert int(outs[0]["n"]) == 1 and int(outs[1]["n"]) == 4
    # Same predictions; losses agree to float32 rounding. (Not bitwise: XLA tiles the sharded
    # program's batched matmuls differently, which moves results by an ulp or two.)
    np.testing.assert_array_equal(outs[0]["pred"], outs[1]["pred"])
    for m in sweep.METRICS:
        np.testing.assert_allclose(outs[0][m], outs[1][m], rtol=1e-5, err_msg=m)


def test_batch_indices_shuffle_covers_each_example_once_per_epoch():
    key = jax.random.key(0)
    idx = np.concatenate([np.asarray(train.batch_indices(key, t, n=100, batch_size=10, sampling="shuffle"))
                          for t in range(10)])
    assert sorted(idx.tolist()) == list(range(100))
    nxt = np.asarray(train.batch_indices(key, 10, n=100, batch_size=10, sampling="shuffle"))
    assert not np.array_equal(nxt, idx[:10])  # a new permutation each epoch
    rep = train.batch_indices(key, 3, n=5, batch_size=50, sampling="replace")
    assert rep.shape == (50,) and int(rep.max()) < 5


def test_batch_larger_than_training_set_is_a_config_error(mnist1d):
    with pytest.raises(C.ConfigError, match="exceeds"):
        sweep.run(tiny("train.batch_size=5000"), dataset=mnist1d, progress=False)


@pytest.mark.parametrize("n, batch", [(1000, 100), (4000, 100), (103, 7), (50, 49)])
def test_shuffled_batches_cover_each_epoch_once_for_large_and_small_sets(n, batch):
    key = jax.random.key(7)
    per_epoch = n // batch
    for epoch in (0, 3):
        idx = np.concatenate([np.asarray(train.batch_indices(key, epoch * per_epoch + t, n=n, batch_size=batch,
                                                             sampling="shuffle")) for t in range(per_epoch)])
        assert len(set(idx.tolist())) == per_epoch * batch and idx.min() >= 0 and idx.max() < n


def test_another_config_is_refused_with_the_settings_that_differ(mnist1d, tmp_path):
    sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
    with pytest.raises(store.StoreError) as refused:
        sweep.run(tiny("optim.lr=0.1", "train.batch_size=50"), out_dir=tmp_path, dataset=mnist1d, progress=False)
    message = str(refused.value)
    assert "\n" not in message
    stored_lr = store.read_json(tmp_path / "config.json")["config"]["optim"]["lr"]
    assert f"config.optim.lr: stored {stored_lr}, now 0.1" in message
    assert "config.train.batch_size: stored" in message and "now 50" in message
    assert "delete that folder to retrain it there" in message


def test_json_difference_names_missing_settings_and_counts_the_rest():
    stored = {"a": {"b": 1, "c": [1, 2]}, "d": 1, "e": 1, "f": 1}
    wanted = {"a": {"b": 2, "c": [1, 2]}, "d": 2, "e": 2, "g": 1}
    assert store.json_difference(stored, wanted) == (
        "a.b: stored 1, now 2; d: stored 1, now 2; e: stored 1, now 2; 2 more")
    assert store.json_difference({"x": 1}, {}) == "x: stored 1, now nothing"
