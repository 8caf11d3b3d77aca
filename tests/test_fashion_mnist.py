"""Tests for Fashion-MNIST: the IDX reader, the offline TFDS builder, class selection.

Every test writes its own small IDX files (a few dozen 28x28 images) in a tmp folder and
hides the Debian package's folder, so none depends on the real files; the one test that
reads the real files (when `dataset-fashion-mnist` is installed) skips otherwise.
"""

from __future__ import annotations

import gzip
import importlib
import os
import struct
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds

from netalchemy import presets
from netalchemy.config import DataConfig
from netalchemy.data import DataError, clear_cache, load
from netalchemy.data import fashion_mnist_builder as fm
from netalchemy.data import idx

load_module = importlib.import_module("netalchemy.data.load")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch):
    """No real files (the Debian folder is hidden) and no in-process dataset cache."""
    monkeypatch.setattr(fm, "SYSTEM_DIRS", ())
    clear_cache()
    yield
    clear_cache()


def write_fashion(folder, n_train: int = 40, n_test: int = 12, seed: int = 0,
                  compress: bool = True) -> dict[str, np.ndarray]:
    """Writes the four IDX files of a small Fashion-MNIST; returns their arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train_labels": rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "test_labels": rng.permutation(np.arange(n_test) % 10).astype(np.uint8),
    }
    os.makedirs(folder, exist_ok=True)
    for key, name in fm.FILES.items():
        path = os.path.join(folder, name if compress else name.removesuffix(".gz"))
        idx.write(path, arrays[key], compress=compress)
    return arrays


# ------------------------------------------------------------------------------------ IDX


def test_idx_reads_a_hand_written_file(tmp_path):
    """The byte layout of LeCun's format, written by hand: magic, big-endian sizes, data."""
    raw = bytes([0, 0, 0x08, 3]) + struct.pack(">3I", 2, 2, 3) + bytes(range(12))
    (tmp_path / "a").write_bytes(raw)
    (tmp_path / "a.gz").write_bytes(gzip.compress(raw))
    for name in ("a", "a.gz"):
        out = idx.read(tmp_path / name)
        assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
        np.testing.assert_array_equal(out, np.arange(12).reshape(2, 2, 3))
    ints = bytes([0, 0, 0x0C, 1]) + struct.pack(">I", 2) + struct.pack(">2i", -7, 1 << 20)
    (tmp_path / "i").write_bytes(ints)
    np.testing.assert_array_equal(idx.read(tmp_path / "i"), [-7, 1 << 20])


@pytest.mark.parametrize("dtype", ["uint8", "int8", "int16", "int32", "float32", "float64"])
@pytest.mark.parametrize("compress", [True, False])
def test_idx_write_read_round_trip(tmp_path, dtype, compress):
    array = (np.random.default_rng(1).normal(size=(3, 4, 5)) * 50).astype(dtype)
    idx.write(tmp_path / "x", array, compress=compress)
    assert ((tmp_path / "x").read_bytes()[:2] == b"\x1f\x8b") == compress
    out = idx.read(tmp_path / "x")
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)


def _damage(kind: str, good: bytes) -> bytes:
    packed = gzip.compress(good, mtime=0)
    return {
        "empty": b"",
        "not idx": b"PK\x03\x04" + good[4:],
        "bad type code": good[:2] + b"\x07" + good[3:],
        "short header": good[:6],
        "truncated data": good[:-5],
        "extra bytes": good + b"\0",
        "truncated gzip": packed[:len(packed) // 2],
        "corrupt gzip": packed[:20] + bytes([packed[20] ^ 0xFF]) + packed[21:],
    }[kind]


@pytest.mark.parametrize("kind", ["empty", "not idx", "bad type code", "short header",
                                  "truncated data", "extra bytes", "truncated gzip",
                                  "corrupt gzip"])
def test_damaged_idx_file_is_a_one_line_error_naming_it(tmp_path, kind):
    idx.write(tmp_path / "good", np.arange(600, dtype=np.uint8).reshape(6, 10, 10) % 251,
              compress=False)
    path = tmp_path / "damaged-idx3-ubyte.gz"
    path.write_bytes(_damage(kind, (tmp_path / "good").read_bytes()))
    with pytest.raises(DataError, match="damaged-idx3-ubyte.gz") as err:
        idx.read(path)
    assert "\n" not in str(err.value)


def test_missing_idx_file_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="cannot read .*nope.*No such file"):
        idx.read(tmp_path / "nope")


@pytest.mark.parametrize("images, labels, message", [
    (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.uint8), r"expected uint8 \(n, 28, 28\)"),
    (np.zeros((4, 28, 28), np.float32), np.zeros(4, np.uint8), r"float32"),
    (np.zeros((4, 28, 28), np.uint8), np.zeros(4, np.int32), r"expected uint8 \(n,\) labels"),
    (np.zeros((4, 28, 28), np.uint8), np.zeros(5, np.uint8), r"4 images but .* 5 labels"),
    (np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 10, 2], np.uint8), r"label 10"),
])
def test_read_split_rejects_files_that_are_not_fashion_mnist(tmp_path, images, labels, message):
    idx.write(tmp_path / "img", images)
    idx.write(tmp_path / "lab", labels)
    with pytest.raises(DataError, match=message):
        fm.read_split(tmp_path / "img", tmp_path / "lab")


# ------------------------------------------------------------------------ finding the files


def test_search_order_and_the_first_complete_folder_wins(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    monkeypatch.setattr(fm, "SYSTEM_DIRS", (str(system),))
    root = tmp_path / "tfds"
    manual = root / "downloads" / "manual"
    assert fm.search_dirs(root) == [root, root / "fashion_mnist", manual,
                                    manual / "fashion_mnist", system]
    assert fm.find_files(fm.search_dirs(root)) is None
    write_fashion(system)
    assert fm.find_files(fm.search_dirs(root))["train_images"].parent == system
    write_fashion(manual, compress=False)  # unpacked files count too
    found = fm.find_files(fm.search_dirs(root))
    assert found["test_labels"] == manual / "t10k-labels-idx1-ubyte"
    write_fashion(root / "fashion_mnist")
    assert found != fm.find_files(fm.search_dirs(root))
    assert fm.find_files(fm.search_dirs(root))["train_labels"].parent == root / "fashion_mnist"
    os.makedirs(root, exist_ok=True)
    (root / fm.FILES["train_images"]).write_bytes(b"")  # an incomplete set is skipped
    assert fm.find_files(fm.search_dirs(root))["train_images"].parent == root / "fashion_mnist"


# ------------------------------------------------------------------------------ end to end


def test_load_end_to_end_from_idx_files(tmp_path):
    arrays = write_fashion(tmp_path / "fashion_mnist")
    data = load(DataConfig(name="fashion_mnist", image_size=28, data_dir=str(tmp_path)))
    assert data.name == "fashion_mnist" and data.num_classes == 10
    assert data.x_train.shape == (40, 784) and data.x_test.shape == (12, 784)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, arrays["train_labels"])  # file order kept
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"])
    pixels = arrays["train_images"].reshape(40, -1) / 255.0
    mean, std = pixels.mean(), pixels.std()  # one global mean/std of the training set
    np.testing.assert_allclose(data.x_train, (pixels - mean) / std, atol=1e-5)
    np.testing.assert_allclose(data.x_test, (arrays["test_images"].reshape(12, -1) / 255 - mean)
                               / std, atol=1e-5)
    assert os.path.isfile(tmp_path / "fashion_mnist" / "1.0.0" / "dataset_info.json")
    assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)


@pytest.mark.parametrize("name", ["fashion_mnist", "mnist1d"])
def test_loading_leaves_no_temporary_folder_behind(tmp_path, monkeypatch, name):
    """TFDS's bucket lookup made (and kept) an empty tmp…tfds folder per unprepared builder."""
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    if name == "fashion_mnist":
        write_fashion(tmp_path / "fashion_mnist")
    data = load(DataConfig(name=name, image_size=7, data_dir=str(tmp_path)))
    assert data.x_train.shape[0] > 0
    assert os.listdir(temp) == []


def test_resized_images_match_jax_image_resize(tmp_path):
    arrays = write_fashion(tmp_path, n_train=12, n_test=3)
    data = load(DataConfig(name="fashion_mnist", image_size=64, data_dir=str(tmp_path)))
    assert data.x_train.shape == (12, 4096) and data.x_test.shape == (3, 4096)
    images = arrays["train_images"][..., None].astype(np.float32)
    expected = np.asarray(jax.image.resize(images, (12, 64, 64, 1), "linear")) / 255
    expected = expected.reshape(12, -1)
    np.testing.assert_allclose(data.x_train, (expected - expected.mean()) / expected.std(),
                               atol=1e-4)


def test_bulk_decoding_equals_tfds_record_by_record(tmp_path):
    arrays = write_fashion(tmp_path, n_train=25, n_test=7)
    builder = fm.prepare(str(tmp_path))
    for split, n in (("train", 25), ("test", 7)):
        images, labels = builder.read_arrays(split)
        source = builder.as_data_source(split=split)
        assert images.shape == (n, 28, 28, 1) and images.dtype == np.uint8
        np.testing.assert_array_equal(images, np.stack([source[i]["image"] for i in range(n)]))
        np.testing.assert_array_equal(labels, [source[i]["label"] for i in range(n)])
        np.testing.assert_array_equal(labels, arrays[f"{split}_labels"])
        np.testing.assert_array_equal(images[..., 0], arrays[f"{split}_images"])


def test_once_prepared_the_idx_files_are_no_longer_needed(tmp_path, monkeypatch):
    write_fashion(tmp_path / "downloads" / "manual")
    cfg = DataConfig(name="fashion_mnist", image_size=28, data_dir=str(tmp_path))
    first = load(cfg)
    for name in fm.FILES.values():
        os.remove(tmp_path / "downloads" / "manual" / name)
    monkeypatch.setattr(tfds.download.DownloadManager, "download",
                        lambda *a, **k: pytest.fail("downloaded although prepared"))
    clear_cache()
    again = load(cfg)
    for a, b in zip(first[:4], again[:4]):
        np.testing.assert_array_equal(a, b)


def test_downloads_from_the_official_urls_only_when_no_folder_has_the_files(tmp_path,
                                                                            monkeypatch):
    elsewhere = tmp_path / "mirror"
    arrays = write_fashion(elsewhere, n_train=20, n_test=10)
    requested = []

    def download(self, urls):
        requested.append(urls)
        return {k: elsewhere / url.rsplit("/", 1)[1] for k, url in urls.items()}

    monkeypatch.setattr(tfds.download.DownloadManager, "download", download)
    data = load(DataConfig(name="fashion_mnist", image_size=28, data_dir=str(tmp_path / "d")))
    assert requested == [{k: fm.URL + name for k, name in fm.FILES.items()}]
    assert fm.URL == "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
    np.testing.assert_array_equal(data.y_test, arrays["test_labels"])


def test_no_files_and_no_network_is_a_one_line_error(tmp_path, monkeypatch):
    def offline(self, urls):
        raise requests.exceptions.ConnectionError("Failed to resolve 'fashion-mnist.s3'")

    monkeypatch.setattr(tfds.download.DownloadManager, "download", offline)
    with pytest.raises(DataError, match="in none of .*downloading them failed .*"
                                        "apt-get install dataset-fashion-mnist") as err:
        load(DataConfig(name="fashion_mnist", data_dir=str(tmp_path)))
    assert "\n" not in str(err.value) and str(tmp_path / "downloads" / "manual") in str(err.value)
    assert not os.path.exists(tmp_path / "fashion_mnist" / "1.0.0")


def test_a_damaged_file_is_a_one_line_error_and_prepares_nothing(tmp_path):
    write_fashion(tmp_path)
    path = tmp_path / fm.FILES["train_labels"]
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz") as err:
        load(DataConfig(name="fashion_mnist", data_dir=str(tmp_path)))
    assert "\n" not in str(err.value)
    assert not fm.FashionMnist(data_dir=str(tmp_path)).is_prepared()


@pytest.mark.skipif(fm.find_files([Path(fm.DEBIAN_DIR)]) is None,
                    reason="the Debian package dataset-fashion-mnist is not installed")
def test_the_debian_package_files_are_fashion_mnist():
    files = fm.find_files([Path(fm.DEBIAN_DIR)])
    images, labels = fm.read_split(files["test_images"], files["test_labels"])
    assert images.shape == (10000, 28, 28, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)  # balanced, as published
    assert images.max() == 255 and images.min() == 0


# --------------------------------------------------------------------------- class subsets


def test_classes_keeps_and_relabels_in_the_given_order(tmp_path):
    arrays = write_fashion(tmp_path, n_train=60, n_test=30)
    full = load(DataConfig(name="fashion_mnist", image_size=28, data_dir=str(tmp_path)))
    pair = load(DataConfig(name="fashion_mnist", image_size=28, data_dir=str(tmp_path),
                              classes="4,2"))
    assert pair.num_classes == 2
    for split, y_full in (("train", full.y_train), ("test", full.y_test)):
        keep = np.isin(y_full, [4, 2])
        y_pair = pair.y_train if split == "train" else pair.y_test
        np.testing.assert_array_equal(y_pair, np.where(y_full[keep] == 4, 0, 1))
    kept = arrays["train_images"][np.isin(arrays["train_labels"], [4, 2])].reshape(12, -1) / 255
    np.testing.assert_allclose(pair.x_train, (kept - kept.mean()) / kept.std(), atol=1e-5)
    assert pair.x_test.shape == (6, 784)


@pytest.mark.parametrize("classes, message", [
    ("2,x", "expected comma-separated class ids"),
    ("2,2", "a class is listed twice"),
    ("2", "keep at least two"),
    ("2,10", "class 10 does not exist .*0..9"),
    ("-1,2", "class -1 does not exist"),
])
def test_bad_classes_are_one_line_errors(tmp_path, classes, message):
    write_fashion(tmp_path)
    with pytest.raises(DataError, match=f"data.classes={classes}: {message}"):
        load(DataConfig(name="fashion_mnist", data_dir=str(tmp_path), classes=classes))


def test_parse_classes_accepts_empty_and_sequences():
    assert load_module.parse_classes("", 10) == ()
    assert load_module.parse_classes(" 6, 0 ", 10) == (6, 0)
    assert load_module.parse_classes((3, 1), 4) == (3, 1)


# --------------------------------------------------------------------------------- presets


def test_every_preset_has_a_one_line_description_and_valid_overrides():
    from netalchemy.config import Config, override

    assert set(presets.DESCRIPTIONS) == set(presets.PRESETS)
    for name, items in presets.PRESETS.items():
        assert presets.DESCRIPTIONS[name] and "\n" not in presets.DESCRIPTIONS[name]
        assert all("=" in item for item in items)
        override(Config(), items)  # every key exists and every value parses


def test_unknown_preset_is_a_one_line_error_with_a_suggestion():
    from netalchemy.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown preset 'articel' \(did you mean 'article'\?\)"):
        presets.overrides("articel")


def test_article_preset_is_the_essays_4096_512_256_2_network(tmp_path):
    from netalchemy import mlp
    from netalchemy.config import Config, override

    arrays = write_fashion(tmp_path, n_train=50, n_test=20)
    cfg = override(Config(), [*presets.overrides("article"), f"data.data_dir={tmp_path}"])
    data = load(cfg.data)
    n_train = int(np.isin(arrays["train_labels"], [0, 6]).sum())
    assert data.x_train.shape == (n_train, 64 * 64) and data.num_classes == 2
    shirt = arrays["train_labels"][np.isin(arrays["train_labels"], [0, 6])] == 6
    np.testing.assert_array_equal(data.y_train, shirt.astype(np.int32))  # T-shirt 0, shirt 1
    params, _ = mlp.init(jax.random.key(0), cfg.model, in_features=data.x_train.shape[1],
                         num_classes=data.num_classes)
    assert [layer.w.shape for layer in params] == [(4096, 512), (512, 256), (256, 2)]
    assert cfg.train.steps % cfg.train.eval_every == 0
    assert cfg.train.steps * cfg.train.batch_size == 10 * 12000  # 10 epochs of the real pair


@pytest.mark.slow
def test_cli_trains_the_article_preset_offline(tmp_path, monkeypatch, capsys):
    from netalchemy import cli

    write_fashion(tmp_path / "idx", n_train=30, n_test=10)
    monkeypatch.setattr(cli.devices, "use_cpu_cores", lambda *a, **k: None)  # keep JAX as is
    status = cli.main(["train", "--quiet", "--out", str(tmp_path / "runs"), "preset=article",
                       f"data.data_dir={tmp_path / 'idx'}", "seeds.n=1", "train.steps=2",
                       "train.eval_every=2", "train.batch_size=3"])
    out = capsys.readouterr().out
    assert status == 0 and "test_acc" in out and "1 runs, 0 diverged" in out
