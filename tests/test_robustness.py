"""The engine under bad luck: uneven evaluation intervals, memory, damaged files, a full disk,
kill -9 leftovers, two processes on one folder, a device-count change, float64, divergence."""

import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import jax
import numpy as np
import pytest

from netalchemy import config as C
from netalchemy import checkpoints, store, sweep, train
from netalchemy.data import load

from sweep_helpers import TINY, interrupt_after_first_checkpoint, same, tiny


@pytest.fixture(scope="module")
def mnist1d():
    return load(C.DataConfig())


def one_line(error: pytest.ExceptionInfo) -> str:
    text = str(error.value)
    assert "\n" not in text
    return text


# ----------------------------------------------------------------------------- evaluation intervals


def test_evaluation_steps_end_at_the_last_step():
    steps = lambda s, e: train.evaluation_steps(C.override(C.Config(), [f"train.steps={s}", f"train.eval_every={e}"]))
    assert steps(100, 250) == [0, 100]
    assert steps(600, 250) == [0, 250, 500, 600]
    assert steps(500, 250) == [0, 250, 500]


def test_steps_not_a_multiple_of_eval_every_evaluate_at_the_final_step(mnist1d, finished):
    ragged = sweep.run(tiny("train.steps=25"), dataset=mnist1d, progress=False)
    even = finished[1]  # the same sweep run for 40 steps (its programs are compiled once for the module)
    np.testing.assert_array_equal(ragged.history["step"][0], [0, 10, 20, 25])
    assert (np.asarray(ragged.final.step) == 25).all()
    for m in sweep.METRICS:  # the first 20 steps are the same computation, bit for bit
        np.testing.assert_array_equal(ragged.history[m][:, :3], even.history[m][:, :3], err_msg=m)
    # One run on its own (train.train_run) evaluates at the same steps.
    one = C.override(C.Config(), ["model.hidden=16", "train.steps=25", "train.eval_every=10", "train.batch_size=25"])
    keys = train.Streams(*(k if k.ndim == 0 else k[0] for k in sweep.run_streams(one, np.array([0]))))
    data = train.Data(*(jax.numpy.asarray(a) for a in (mnist1d.x_train, mnist1d.y_train, mnist1d.x_test,
                                                      mnist1d.y_test)))
    state, hist = train.train_run(keys, data, jax.numpy.asarray(one.optim.lr), cfg=one, in_features=40, num_classes=10)
    np.testing.assert_array_equal(hist.step, [0, 10, 20, 25])
    assert int(state.step) == 25


def test_progress_advances_per_evaluation_interval(mnist1d, monkeypatch):
    import tqdm.auto

    updates = []

    class Recorder(tqdm.auto.tqdm):
        def update(self, n=1):
            updates.append(n)
            return super().update(n)

    monkeypatch.setattr(tqdm.auto, "tqdm", Recorder)
    sweep.run(tiny("train.steps=25"), dataset=mnist1d, progress=True)
    assert [n for n in updates if n] == [10, 10, 5]  # one update per interval, the short one last


# ----------------------------------------------------------------------------- memory


@pytest.mark.parametrize("setting", ["model.hidden=1000000000", "seeds.n=1000000"])
def test_a_sweep_that_cannot_fit_in_memory_is_refused_before_anything_is_written(mnist1d, tmp_path, setting):
    with pytest.raises(C.ConfigError) as e:
        sweep.run(tiny(setting), out_dir=tmp_path / "out", dataset=mnist1d, progress=False)
    assert "GiB are available" in one_line(e)
    assert not (tmp_path / "out").exists()


def test_memory_check_counts_the_chunk_and_every_run_s_results():
    cfg = tiny()
    sweep.check_memory(cfg, 3, per_run=100, per_result=10, n_devices=1, available=3 * 100 + 3 * 3 * 10)
    with pytest.raises(C.ConfigError):
        sweep.check_memory(cfg, 3, per_run=100, per_result=10, n_devices=1, available=3 * 100 + 3 * 3 * 10 - 1)
    sweep.check_memory(cfg, 3, per_run=10**15, per_result=10**15, n_devices=1, available=None)  # unknown: no check
    assert sweep.available_memory() > 0


# ----------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def finished(mnist1d, tmp_path_factory):
    out = tmp_path_factory.mktemp("finished")
    result = sweep.run(tiny(), out_dir=out, dataset=mnist1d, progress=False)
    return out, result


def _truncate(path):
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _random_bytes(path):
    path.write_bytes(np.random.default_rng(0).bytes(len(path.read_bytes())))


def _wrong_types(path):
    record = json.loads(path.read_text())
    record["config"]["train"]["steps"] = "many"
    path.write_text(json.dumps(record))


def _drop_array(path):
    arrays = dict(np.load(path))
    del arrays["history/test_acc"]
    np.savez(path, **arrays)


def _wrong_shape(path):
    arrays = dict(np.load(path))
    arrays["test_predictions"] = arrays["test_predictions"][:, :10]
    np.savez(path, **arrays)


def _flip_a_data_byte(path):
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as z:
        info = z.getinfo("test_predictions.npy")
    data[info.header_offset + 200] ^= 0xFF  # inside the array's bytes: caught by the CRC-32
    path.write_bytes(bytes(data))


def _summary_not_a_summary(path):
    path.write_text(json.dumps({"runs": "three"}))


@pytest.mark.parametrize("name, damage", [
    ("summary.json", _truncate), ("summary.json", _summary_not_a_summary), ("history.npz", _random_bytes),
    ("history.npz", _truncate), ("history.npz", _drop_array), ("history.npz", _wrong_shape),
    ("history.npz", _flip_a_data_byte), ("config.json", _wrong_types), ("config.json", _truncate),
])
def test_a_damaged_file_is_one_line_naming_it(finished, tmp_path, name, damage):
    folder = tmp_path / "copy"
    shutil.copytree(finished[0], folder)
    damage(folder / name)
    with pytest.raises(store.StoreError) as e:
        sweep.load(folder)
    assert one_line(e).startswith(f"damaged file {folder / name}")


def test_missing_files_are_one_line_errors(tmp_path):
    with pytest.raises(store.StoreError, match="missing file"):
        store.read_json(tmp_path / "nope.json")
    with pytest.raises(store.StoreError, match="missing file"):
        store.read_npz(tmp_path / "nope.npz")
    store.write_npz(tmp_path / "a.npz", {"x": np.arange(3)})
    with pytest.raises(store.StoreError, match="no array 'y'"):
        store.read_npz(tmp_path / "a.npz", keys=["x", "y"])


def _partial_copy(finished, tmp_path):
    """The finished sweep as it was before its final merge: config, provenance, chunks."""
    folder = tmp_path / "partial"
    shutil.copytree(finished[0], folder)
    (folder / "summary.json").unlink()
    (folder / "history.npz").unlink()
    return folder


def test_a_damaged_chunk_is_named_never_trusted_and_retrained_once_deleted(mnist1d, finished, tmp_path):
    folder = _partial_copy(finished, tmp_path)
    chunk = folder / "chunks" / "chunk-0000.npz"
    _flip_a_data_byte(chunk)
    with pytest.raises(store.StoreError) as e:
        sweep.run(tiny(), out_dir=folder, dataset=mnist1d, progress=False)
    assert one_line(e).startswith(f"damaged file {chunk}") and one_line(e).endswith("delete it to retrain that chunk")
    chunk.unlink()
    assert same(sweep.run(tiny(), out_dir=folder, dataset=mnist1d, progress=False), finished[1])


def test_checkpoint_digest_is_sha256_of_paths_dtypes_shapes_and_bytes():
    one = {"x": np.array([1, 2], np.uint8)}
    assert checkpoints.digest(one).tobytes() == hashlib.sha256(b"['x'] uint8 (2,)" + b"\x01\x02").digest()
    tree = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.int32)}
    flipped = tree["a"].copy()
    flipped.reshape(-1).view(np.uint8)[5] ^= 1  # one bit of one float
    variants = [{**tree, "a": tree["a"].reshape(3, 2)}, {**tree, "b": tree["b"].astype(np.int64)},
                {"c": tree["a"], "b": tree["b"]}, {**tree, "a": flipped}]
    digests = {checkpoints.digest(t).tobytes() for t in [tree, *variants]}
    assert len(digests) == 1 + len(variants)  # each change of a path, dtype, shape or byte is seen
    leaves = checkpoints.flat(tree)
    assert list(leaves) == ["0000", "0001"] and leaves["0000"] is tree["a"]
    back = checkpoints.unflat(leaves, tree)
    assert list(back) == ["a", "b"] and back["a"] is tree["a"] and back["b"] is tree["b"]


def test_a_damaged_checkpoint_is_named_and_says_how_to_recover(mnist1d, tmp_path, monkeypatch):
    interrupt_after_first_checkpoint(monkeypatch, lambda: sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d,
                                                                     progress=False))
    ckpt = tmp_path / "checkpoints" / "chunk-0000"
    files = [p for p in ckpt.rglob("*") if p.is_file()]
    biggest = max(files, key=lambda p: p.stat().st_size)
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    with pytest.raises(store.StoreError) as e:
        sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
    assert one_line(e).startswith(f"damaged checkpoint {ckpt}")
    assert one_line(e).endswith(f"delete {ckpt} to retrain that chunk from its start")
    shutil.rmtree(ckpt)
    assert sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False).summary["runs"] == 3


# ----------------------------------------------------------------------------- a full disk


def one_run_per_chunk():
    per_run = sweep.bytes_per_run(tiny(), in_features=40, num_classes=10, n_train=4000, n_test=1000)
    return tiny(f"train.memory_budget_gb={1.5 * per_run / 2**30}", "train.chunk_steps=40")  # 3 chunks, no checkpoints


def test_a_full_disk_is_one_line_and_the_rerun_resumes_bit_identical(mnist1d, tmp_path, monkeypatch):
    cfg = one_run_per_chunk()
    reference = sweep.run(cfg, out_dir=tmp_path / "ref", dataset=mnist1d, progress=False)
    original = store.write_npz

    def disk_full_at_the_second_chunk(path, arrays):
        if path.name == "chunk-0001.npz":
            def write(f):
                f.write(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return store._atomic_write(path, write)
        return original(path, arrays)

    monkeypatch.setattr(store, "write_npz", disk_full_at_the_second_chunk)
    folder = tmp_path / "full"
    with pytest.raises(store.NoSpace) as e:
        sweep.run(cfg, out_dir=folder, dataset=mnist1d, progress=False)
    assert one_line(e) == f"no space left writing {folder / 'chunks' / 'chunk-0001.npz'}; 1 of 3 chunks are safe, rerun to resume"
    assert not list(folder.rglob("*.tmp"))
    monkeypatch.setattr(store, "write_npz", original)
    assert same(sweep.run(cfg, out_dir=folder, dataset=mnist1d, progress=False), reference)


@pytest.fixture
def small_tmpfs():
    """A tmpfs mount (needs root); skipped where mounting is not permitted."""
    mount = tempfile.mkdtemp(prefix="netalchemy-tmpfs-")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mount], capture_output=True)
    if done.returncode != 0:
        os.rmdir(mount)
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", mount], check=True)
    os.rmdir(mount)


def _pages(path) -> int:
    return -(-path.stat().st_size // 4096) * 4096


def test_a_really_full_disk_then_freed_resumes_bit_identical(mnist1d, tmp_path, small_tmpfs):
    cfg = one_run_per_chunk()
    reference = sweep.run(cfg, out_dir=tmp_path / "ref", dataset=mnist1d, progress=False)
    # Leave room for exactly what the sweep writes before its last chunk, plus one page.
    before_last = ["config.json", "provenance.json", ".lock", "chunks/chunk-0000.npz", "chunks/chunk-0001.npz"]
    room = sum(_pages(tmp_path / "ref" / name) for name in before_last) + 4096
    filler = os.path.join(small_tmpfs, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    os.truncate(filler, os.path.getsize(filler) - room)
    folder = os.path.join(small_tmpfs, "sweep")
    with pytest.raises(store.NoSpace) as e:
        sweep.run(cfg, out_dir=folder, dataset=mnist1d, progress=False)
    assert one_line(e).endswith("of 3 chunks are safe, rerun to resume")
    assert 0 < e.value.safe < 3
    os.unlink(filler)
    assert same(sweep.run(cfg, out_dir=folder, dataset=mnist1d, progress=False), reference)


# ----------------------------------------------------------------------------- kill -9 leftovers, locks


def test_temporary_files_of_killed_writes_are_cleaned_on_the_next_run(mnist1d, finished, tmp_path):
    folder = _partial_copy(finished, tmp_path)
    ours = [tempfile.mkstemp(dir=folder, prefix=".summary.json.", suffix=".tmp")[1],  # as _atomic_write names them
            tempfile.mkstemp(dir=folder / "chunks", prefix=".chunk-0001.npz.", suffix=".tmp")[1],
            tempfile.mkstemp(dir=folder, prefix=".probe.")[1]]
    theirs = [folder / "notes.tmp", folder / ".notes.tmp", folder / "chunks" / "x.abcdefgh.tmp"]
    for path in theirs:
        path.write_text("keep me")
    sweep.run(tiny(), out_dir=folder, dataset=mnist1d, progress=False)
    assert not any(os.path.exists(p) for p in ours)
    assert all(p.exists() for p in theirs)


def test_a_locked_folder_is_refused_naming_the_owner_and_a_dead_owner_s_lock_is_taken_over(mnist1d, tmp_path):
    with store.locked(tmp_path):  # a second lock, even in the same process, is refused
        with pytest.raises(store.StoreError) as e:
            with store.locked(tmp_path):
                pass
        assert one_line(e).startswith(f"{tmp_path} is in use by process {os.getpid()}")
    code = ("import sys, time; from netalchemy import store\n"
            "with store.locked(sys.argv[1]):\n    print('locked', flush=True); time.sleep(120)")
    owner = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout.readline().strip() == "locked"
        with pytest.raises(store.StoreError) as e:
            sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
        assert f"is in use by process {owner.pid};" in one_line(e)
        assert not (tmp_path / "config.json").exists()
    finally:
        owner.kill()
        owner.wait()
    assert (tmp_path / store.LOCK_NAME).read_text().strip() == str(owner.pid)  # stale: its owner is dead
    sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
    assert (tmp_path / store.LOCK_NAME).read_text().strip() == str(os.getpid())


# ----------------------------------------------------------------------------- force, reuse, devices


def test_reuse_and_force(mnist1d, finished, tmp_path):
    folder = tmp_path / "copy"
    shutil.copytree(finished[0], folder)
    reused = sweep.run(tiny(), out_dir=folder, dataset=mnist1d, progress=False)
    assert reused.reused and same(reused, finished[1])
    assert reused.finished == json.loads((folder / "provenance.json").read_text())["finished"]
    forced = sweep.run(tiny(), out_dir=folder, dataset=mnist1d, progress=False, force=True)
    assert not forced.reused and same(forced, finished[1]) and forced.finished >= reused.finished
    # A forced retrain interrupted while deleting goes on deleting next time: the garbled chunk
    # it left is never read.
    (folder / "summary.json").unlink()
    (folder / sweep.RETRAINING).write_text("{}")
    _random_bytes(folder / "chunks" / "chunk-0000.npz")
    assert same(sweep.run(tiny(), out_dir=folder, dataset=mnist1d, progress=False), finished[1])
    assert not (folder / sweep.RETRAINING).exists()


def test_resuming_on_another_device_count_is_refused_and_segments_are_recorded(mnist1d, tmp_path):
    script = ("import sys; from netalchemy import checkpoints, sweep, config as C\n"
              "save = checkpoints.Checkpoints.save\n"
              "def crash(self, step, tree):\n    save(self, step, tree); raise SystemExit(3)\n"
              "checkpoints.Checkpoints.save = crash\n"
              f"sweep.run(C.override(C.Config(), {TINY!r}), out_dir=sys.argv[1], progress=False)")
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], env=env, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr
    assert len(jax.devices()) == 1
    with pytest.raises(store.StoreError) as e:
        sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
    assert one_line(e) == (f"{tmp_path} was partly trained on 2 devices and would resume on 1, which changes results "
                           "in the last bits; resume with 2 devices (e.g. NETALCHEMY_CPU_DEVICES=2) or retrain it with "
                           "force (netalchemy train --force)")
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert [s["mesh_devices"] for s in prov["segments"]] == [2]
    sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False, force=True)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert [s["mesh_devices"] for s in prov["segments"]] == [1] and "finished" in prov


def test_a_resumed_sweep_records_every_segment(mnist1d, tmp_path, monkeypatch):
    interrupt_after_first_checkpoint(monkeypatch, lambda: sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d,
                                                                     progress=False))
    sweep.run(tiny(), out_dir=tmp_path, dataset=mnist1d, progress=False)
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert [s["mesh_devices"] for s in prov["segments"]] == [1, 1]


# ----------------------------------------------------------------------------- float64, divergence


def test_float64_trains_in_float64(mnist1d):
    result = sweep.run(tiny("model.dtype=float64", "seeds.n=2"), dataset=mnist1d, progress=False)
    assert all(leaf.dtype == np.float64 for leaf in jax.tree.leaves(result.final.params))
    loss = result.history["train_loss"]
    assert loss.dtype == np.float64 and (loss != loss.astype(np.float32).astype(np.float64)).any()
    assert not jax.config.jax_enable_x64  # only that run was in 64-bit mode


def test_diverged_at_step_is_the_step_where_the_loss_went_non_finite(mnist1d):
    cfg = tiny("optim.name=sgd", "optim.lr=1e4", "seeds.n=2")  # the tiny net diverges within 10 steps too
    result = sweep.run(cfg, dataset=mnist1d, progress=False)
    streams = sweep.run_streams(cfg, result.seeds)
    data = train.Data(*(jax.numpy.asarray(a) for a in (mnist1d.x_train, mnist1d.y_train, mnist1d.x_test)),
                      jax.numpy.asarray(mnist1d.y_test))
    step = jax.jit(lambda s, k: train.train_step(s, k, data, jax.numpy.asarray(cfg.optim.lr), cfg=cfg))
    by_hand = []
    for i in range(len(result.seeds)):
        keys = train.Streams(*(k[i] for k in streams))
        state = train.init_state(keys, jax.numpy.asarray(cfg.optim.lr), cfg=cfg, in_features=40, num_classes=10)
        for t in range(cfg.train.steps):
            state, (loss, _) = step(state, keys)
            if not np.isfinite(float(loss)):
                by_hand.append(t)
                break
    assert len(by_hand) == 2 and max(by_hand) < cfg.train.eval_every  # diverges inside the first interval
    assert result.summary["per_run"]["diverged_at_step"] == by_hand
    np.testing.assert_array_equal(result.final.diverged_at, by_hand)


# ----------------------------------------------------------------------------- one cache


def test_cached_recomputes_exactly_when_a_setting_changes(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return {"x": np.arange(len(calls) + 2.0)}

    settings = C.override(C.Config(), ["train.steps=100"])
    first = store.cached("noise.npz", settings, compute, folder=tmp_path)
    again = store.cached("noise.npz", settings, compute, folder=tmp_path)
    assert len(calls) == 1 and np.array_equal(first["x"], again["x"]) and set(again) == {"x"}
    edited = store.cached("noise.npz", C.override(settings, ["train.l2=1e-4"]), compute, folder=tmp_path)
    assert len(calls) == 2 and len(edited["x"]) == 4
    (tmp_path / "noise.npz").write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="damaged file .*noise.npz.*recomputing"):
        store.cached("noise.npz", C.override(settings, ["train.l2=1e-4"]), compute, folder=tmp_path)
    assert len(calls) == 3
    value = store.cached("t.json", {"b": [1, 2], "a": 0.5}, lambda: {"rate": 3.5}, folder=tmp_path)
    assert value == {"rate": 3.5} == store.cached("t.json", {"a": 0.5, "b": [1, 2]}, lambda: 1 / 0, folder=tmp_path)
    with pytest.raises(ValueError, match="must end in .npz or .json"):
        store.cached("t.txt", {}, lambda: 0, folder=tmp_path)
