"""Tests for netalchemy.data: the MNIST-1D TFDS builder, TFDS loading, preprocessing.

Everything runs offline in tmp dirs: MNIST-1D is generated, other datasets are either
mocked (`tfds.testing.mock_data` with real split metadata) or a tiny PNG dataset built
here, which goes through the real ArrayRecord write/read path without TensorFlow.
"""

from __future__ import annotations

import importlib
import io
import os
import sys

import jax
import numpy as np
import pytest
import requests
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from netalchemy.config import DataConfig
from netalchemy.data import DataError, Dataset, clear_cache, load, noisy_labels
from netalchemy.data import mnist1d_builder, preprocess

load_module = importlib.import_module("netalchemy.data.load")  # the attribute is the function


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_cache()
    yield
    clear_cache()


@pytest.fixture(scope="module")
def mnist1d_dir(tmp_path_factory) -> str:
    data_dir = str(tmp_path_factory.mktemp("tfds"))
    mnist1d_builder.prepare(data_dir)
    return data_dir


@pytest.fixture(scope="module")
def reference() -> dict:
    """The mnist1d package's own arrays (the independent reference)."""
    from mnist1d.data import get_dataset_args, make_dataset

    return make_dataset(get_dataset_args())


def _fake_mnist1d(n_train: int = 12, n_test: int = 5) -> dict:
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n_train, 40)), "y": np.arange(n_train) % 10,
            "x_test": rng.normal(size=(n_test, 40)), "y_test": np.arange(n_test) % 10}


# ------------------------------------------------------------------------------ MNIST-1D


def test_mnist1d_matches_the_mnist1d_package(mnist1d_dir, reference):
    data = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir))
    assert isinstance(data, Dataset) and data.name == "mnist1d" and data.num_classes == 10
    assert data.x_train.shape == (4000, 40) and data.x_test.shape == (1000, 40)
    assert data.x_train.dtype == np.float32 and data.x_test.dtype == np.float32
    assert data.y_train.dtype == np.int32 and data.y_test.dtype == np.int32
    np.testing.assert_array_equal(data.y_train, reference["y"])
    np.testing.assert_array_equal(data.y_test, reference["y_test"])
    # Standardised with the train set's global mean and std.
    mean, std = reference["x"].mean(), reference["x"].std()
    np.testing.assert_allclose(data.x_train, (reference["x"] - mean) / std, atol=2e-6)
    np.testing.assert_allclose(data.x_test, (reference["x_test"] - mean) / std, atol=2e-6)
    assert abs(data.x_train.mean()) < 1e-5 and abs(data.x_train.std() - 1) < 1e-5


def test_mnist1d_records_are_the_generated_arrays_in_order(mnist1d_dir, reference):
    source = tfds.data_source("mnist1d", data_dir=mnist1d_dir, split="test")
    assert len(source) == 1000
    for i in (0, 1, 500, 999):
        np.testing.assert_array_equal(source[i]["x"], reference["x_test"][i].astype(np.float32))
        assert source[i]["label"] == reference["y_test"][i]


def test_mnist1d_preparing_twice_reuses_the_files(mnist1d_dir, monkeypatch):
    version_dir = os.path.join(mnist1d_dir, "mnist1d", "1.0.0")
    before = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}

    def must_not_generate():
        raise AssertionError("regenerated a prepared dataset")

    monkeypatch.setattr(mnist1d_builder, "generate", must_not_generate)
    assert mnist1d_builder.prepare(mnist1d_dir).is_prepared()
    after = {f: os.stat(os.path.join(version_dir, f)).st_mtime_ns for f in os.listdir(version_dir)}
    assert after == before
    assert sorted(os.listdir(os.path.join(mnist1d_dir, "mnist1d"))) == ["1.0.0"]


def test_mnist1d_interrupted_preparation_leaves_no_dataset(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist1d_builder, "generate", _fake_mnist1d)
    real = mnist1d_builder.Mnist1d._generate_examples

    def interrupted(self, x, y):
        yield from list(real(self, x, y))[:3]
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist1d_builder.Mnist1d, "_generate_examples", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mnist1d_builder.prepare(str(tmp_path))
    assert not mnist1d_builder.Mnist1d(data_dir=str(tmp_path)).is_prepared()
    assert os.listdir(tmp_path / "mnist1d") == []  # the incomplete.* dir was removed

    monkeypatch.setattr(mnist1d_builder.Mnist1d, "_generate_examples", real)
    builder = mnist1d_builder.prepare(str(tmp_path))
    assert len(builder.as_data_source(split="train")) == 12


def test_mnist1d_concurrent_preparation_keeps_the_first_copy(tmp_path, monkeypatch):
    """A process that loses the rename race still returns the prepared dataset."""
    calls = []

    def generate_while_another_process_finishes():
        calls.append(1)
        if len(calls) == 1:  # the 'other process' prepares fully while we generate
            mnist1d_builder.prepare(str(tmp_path))
        return _fake_mnist1d()

    monkeypatch.setattr(mnist1d_builder, "generate", generate_while_another_process_finishes)
    builder = mnist1d_builder.prepare(str(tmp_path))
    assert len(calls) == 2 and builder.is_prepared()
    assert len(builder.as_data_source(split="test")) == 5
    assert sorted(os.listdir(tmp_path / "mnist1d")) == ["1.0.0"]


def test_load_is_cached_and_read_only(mnist1d_dir):
    cfg = DataConfig(name="mnist1d", data_dir=mnist1d_dir)
    data = load(cfg)
    assert load(cfg) is data
    for array in data[:4]:
        with pytest.raises(ValueError):
            array[0] = 0


# --------------------------------------------------------------------- subset, label noise


def test_train_subset_is_deterministic_nested_and_leaves_test_alone(mnist1d_dir):
    full = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir))
    small = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=500))
    big = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=1000))
    assert small.x_train.shape == (500, 40) and small.y_train.shape == (500,)
    np.testing.assert_array_equal(small.x_train, big.x_train[:500])  # nested
    rows = {row.tobytes(): label for row, label in zip(full.x_train, full.y_train)}
    assert all(rows[r.tobytes()] == y for r, y in zip(big.x_train, big.y_train))
    assert len({r.tobytes() for r in big.x_train}) == 1000  # without replacement
    np.testing.assert_array_equal(small.x_test, full.x_test)
    other = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=500, seed=1))
    assert not np.array_equal(other.y_train, small.y_train)
    clear_cache()
    again = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=500))
    np.testing.assert_array_equal(again.x_train, small.x_train)


def test_label_noise_changes_the_expected_fraction_of_train_labels_only(mnist1d_dir):
    clean = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir))
    noisy = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, label_noise=0.5))
    changed = np.mean(noisy.y_train != clean.y_train)
    assert abs(changed - 0.5 * (1 - 1 / 10)) < 0.02  # binomial sd ~ 0.003
    assert noisy.y_train.min() >= 0 and noisy.y_train.max() < 10
    np.testing.assert_array_equal(noisy.x_train, clean.x_train)
    np.testing.assert_array_equal(noisy.y_test, clean.y_test)
    clear_cache()
    np.testing.assert_array_equal(
        load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, label_noise=0.5)).y_train,
        noisy.y_train)
    reseeded = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, label_noise=0.5, seed=3))
    assert not np.array_equal(reseeded.y_train, noisy.y_train)
    everything = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, label_noise=1.0))
    assert abs(np.mean(everything.y_train != clean.y_train) - 0.9) < 0.03


def test_subset_and_noise_together(mnist1d_dir):
    data = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=200,
                           label_noise=0.25))
    subset = load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=200))
    assert data.y_train.shape == (200,)
    assert 0 < np.sum(data.y_train != subset.y_train) <= 50


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 300), fraction=st.floats(0, 1), k=st.integers(2, 20),
       seed=st.integers(0, 2**31))
def test_noisy_labels_touches_at_most_round_p_n_labels(n, fraction, k, seed):
    labels = np.arange(n, dtype=np.int32) % k
    out = noisy_labels(labels, fraction, k, np.random.default_rng(seed))
    assert out.dtype == np.int32 and out.shape == (n,)
    assert np.sum(out != labels) <= round(fraction * n)
    assert out.min() >= 0 and out.max() < k


# ---------------------------------------------------------------------------------- errors


def test_unknown_dataset_is_a_one_line_data_error():
    with pytest.raises(DataError, match="unknown dataset 'no_such_data'") as err:
        load(DataConfig(name="no_such_data"))
    assert "\n" not in str(err.value) and "mnist1d" in str(err.value)
    with pytest.raises(DataError, match="did you mean 'mnist'"):
        load(DataConfig(name="mnisst"))


LINUX = sys.platform.startswith("linux")


@pytest.mark.parametrize("name, message", [
    ("../x", r"data.name='../x' is not a dataset name: expected name\[/config\]\[:version\]"),
    ("/etc/passwd", "is not a dataset name"),
    ("mnist/../../x", "is not a dataset name"),
    ("mnist 2", "is not a dataset name"),
    ("mnist:9.9.9", r"dataset 'mnist' has no version 9.9.9 \(available: 3.0.1\)"),
    ("mnist:3.0", "is not a dataset name"),
    ("mnist1d:2.0.0", r"dataset 'mnist1d' has no version 2.0.0 \(available: 1.0.0\)"),
    ("fashion_mnist:3.0.1", r"'fashion_mnist' has no version 3.0.1 \(available: 1.0.0\)"),
    ("mnist/foo", r"dataset 'mnist' has no config 'foo' \(it has no configs\)"),
    ("mnist1d/foo", "dataset 'mnist1d' has no config 'foo'"),
    ("cifar10_corrupted/fog_9", r"no config 'fog_9' \(configs: brightness_1, "),
])
def test_bad_dataset_names_are_one_line_errors_before_anything_is_written(tmp_path, name,
                                                                           message):
    with pytest.raises(DataError, match=message) as err:
        load(DataConfig(name=name, data_dir=str(tmp_path / "tfds")))
    assert "\n" not in str(err.value)
    assert not os.path.exists(tmp_path / "tfds" / "mnist") and not os.path.exists(tmp_path / "x")


def test_versions_that_exist_are_accepted(mnist1d_dir):
    for name in ("mnist1d:1.0.0", "mnist1d:1.*.*"):
        assert load(DataConfig(name=name, data_dir=mnist1d_dir)).x_train.shape == (4000, 40)


@pytest.mark.parametrize("data_dir, message", [
    pytest.param("/proc/nope", r"data.data_dir=/proc/nope cannot be created \(No such file",
                 marks=pytest.mark.skipif(not LINUX, reason="Linux /proc")),
    pytest.param("/proc", r"data.data_dir=/proc is not writable .* set data.data_dir",
                 marks=pytest.mark.skipif(not LINUX, reason="Linux /proc")),
    ("{file}", r"data.data_dir=.*a-file is not a folder"),
    ("{file}/sub", r"data.data_dir=.*a-file/sub cannot be created"),
])
@pytest.mark.parametrize("name", ["mnist1d", "fashion_mnist", "mnist"])
def test_a_data_dir_that_cannot_be_used_is_a_one_line_error(tmp_path, data_dir, message, name):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(DataError, match=message) as err:
        load(DataConfig(name=name, data_dir=data_dir.format(file=tmp_path / "a-file")))
    assert "\n" not in str(err.value)
    assert sorted(os.listdir(tmp_path)) == ["a-file"] and not os.path.exists("/proc/mnist1d")


@pytest.mark.parametrize("override", ["data.name=../x", "data.name=mnist:9.9.9",
                                      "data.data_dir=/proc/nope"])
def test_cli_bad_data_is_exit_2_one_line_nothing_written(tmp_path, override, capsys,
                                                         monkeypatch):
    if "/proc" in override and not LINUX:
        pytest.skip("Linux /proc")
    from netalchemy import cli

    monkeypatch.setattr(cli.devices, "use_cpu_cores", lambda *a, **k: None)  # keep JAX as is
    status = cli.main(["train", "--quiet", "--out", str(tmp_path / "runs"), override,
                       "seeds.n=1", "train.steps=10", "train.eval_every=10"])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("netalchemy: error: ") and err.count("\n") == 1
    assert not os.path.exists(tmp_path / "runs")


def test_train_size_larger_than_the_split_is_a_data_error(mnist1d_dir):
    with pytest.raises(DataError, match="train_size=4001 is larger than the 4000"):
        load(DataConfig(name="mnist1d", data_dir=mnist1d_dir, train_size=4001))


def test_unprepared_dataset_without_tensorflow_says_what_is_needed(tmp_path, monkeypatch):
    monkeypatch.setattr(load_module, "_has_tensorflow", lambda: False)
    with pytest.raises(DataError, match="TensorFlow.*netalchemy\\[tensorflow\\]") as err:
        load(DataConfig(name="cats_vs_dogs", data_dir=str(tmp_path)))
    assert "network" in str(err.value) and "\n" not in str(err.value)


def test_failed_download_is_a_data_error(tmp_path, monkeypatch):
    def offline(self, **kwargs):
        raise requests.exceptions.ConnectionError("Failed to resolve 'example.invalid'")

    monkeypatch.setattr(load_module, "_needs_tensorflow", lambda builder: False)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", offline)
    with pytest.raises(DataError, match="'mnist' is not prepared .* needs network") as err:
        load(DataConfig(name="mnist", data_dir=str(tmp_path)))
    assert "\n" not in str(err.value)


# ------------------------------------------------------------- TFDS datasets (mocked data)


def _write_metadata(root, name: str, splits: dict[str, int], fmt: str = "array_record") -> str:
    """Writes the dataset_info.json a prepared dataset would have (for mock_data)."""
    builder = tfds.builder(name, data_dir=str(root), file_format=fmt)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name=builder.name, filetype_suffix=fmt)
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=s, shard_lengths=[n], num_bytes=0,
                            filename_template=template.replace(split=s))
        for s, n in splits.items()]))
    os.makedirs(builder.data_dir, exist_ok=True)
    builder.info.write_to_directory(builder.data_dir)
    return str(root)


def test_dataset_prepared_as_tfrecord_is_a_data_error(tmp_path):
    _write_metadata(tmp_path, "mnist", {"train": 5}, fmt="tfrecord")
    with pytest.raises(DataError, match="not stored as array_record"):
        load(DataConfig(name="mnist", data_dir=str(tmp_path)))


def _expected_features(images, size: int, grayscale: bool) -> np.ndarray:
    """The image pipeline written with jax.image.resize as an independent reference."""
    rows = []
    for image in images:
        x = np.asarray(jax.image.resize(np.asarray(image, np.float32),
                                        (size, size, image.shape[-1]), "linear"))
        if grayscale and x.shape[-1] == 3:
            x = 0.299 * x[..., :1] + 0.587 * x[..., 1:2] + 0.114 * x[..., 2:3]
        rows.append(x.reshape(-1) / 255.0)
    return np.stack(rows)


def test_mocked_mnist_uses_its_test_split(tmp_path):
    meta = _write_metadata(tmp_path / "meta", "mnist", {"train": 60000, "test": 10000})
    with tfds.testing.mock_data(num_examples=20, data_dir=meta):
        data = load(DataConfig(name="mnist", image_size=8, data_dir=str(tmp_path / "x")))
        raw = tfds.data_source("mnist", split="train")
        images = [raw[i]["image"] for i in range(len(raw))]
        labels = [raw[i]["label"] for i in range(len(raw))]
    assert data.num_classes == 10 and data.name == "mnist"
    assert data.x_train.shape == (20, 64) and data.x_test.shape == (20, 64)  # 8 * 8 * 1
    np.testing.assert_array_equal(data.y_train, labels)
    expected = _expected_features(images, 8, grayscale=True)
    expected = (expected - expected.mean()) / expected.std()
    np.testing.assert_allclose(data.x_train, expected, atol=1e-4)


def test_mocked_cats_vs_dogs_gets_a_deterministic_holdout(tmp_path):
    meta = _write_metadata(tmp_path / "meta", "cats_vs_dogs", {"train": 23262})
    cfg = DataConfig(name="cats_vs_dogs", image_size=8, holdout_fraction=0.25,
                     data_dir=str(tmp_path / "x"))
    with tfds.testing.mock_data(num_examples=20, data_dir=meta):
        gray = load(cfg)
        clear_cache()
        again = load(cfg)
        rgb = load(DataConfig(**{**cfg.__dict__, "grayscale": False}))
        reseeded = load(DataConfig(**{**cfg.__dict__, "seed": 1}))
        raw = tfds.data_source("cats_vs_dogs", split="train")
        images = [raw[i]["image"] for i in range(len(raw))]
    assert len({image.shape for image in images}) > 1  # mocked images vary in size
    assert gray.num_classes == 2
    assert gray.x_train.shape == (15, 64) and gray.x_test.shape == (5, 64)
    assert rgb.x_train.shape == (15, 192) and rgb.x_test.shape == (5, 192)
    for a, b in zip(gray[:4], again[:4]):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(reseeded.x_test, gray.x_test)
    # The split is the documented permutation; features match the jax reference.
    perm = np.random.default_rng(0).permutation(20)
    test_idx, train_idx = np.sort(perm[:5]), np.sort(perm[5:])
    expected = _expected_features(images, 8, grayscale=False)
    mean, std = expected[train_idx].mean(), expected[train_idx].std()
    np.testing.assert_allclose(rgb.x_train, (expected[train_idx] - mean) / std, atol=1e-4)
    np.testing.assert_allclose(rgb.x_test, (expected[test_idx] - mean) / std, atol=1e-4)


# --------------------------------------------- a real TFDS image dataset built here (no TF)

COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255), (40, 80, 120)]


class NetalchemyTestSolidColours(tfds.core.GeneratorBasedBuilder):
    """Solid-colour RGB PNGs of varying size, train split only; label = colour index."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "label": tfds.features.ClassLabel(num_classes=len(COLOURS)),
            }),
            supervised_keys=("image", "label"),
            disable_shuffling=True)  # records stay in generation order

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(40):
            label = i % len(COLOURS)
            image = np.full((5 + i % 7, 9 + i % 4, 3), COLOURS[label], np.uint8)
            png = io.BytesIO()
            Image.fromarray(image).save(png, format="PNG")  # bytes: no TF encoder needed
            yield i, {"image": png.getvalue(), "label": label}


def test_real_array_record_image_dataset_end_to_end(tmp_path):
    cfg = DataConfig(name="netalchemy_test_solid_colours", image_size=4,
                     data_dir=str(tmp_path))
    data = load(cfg)
    assert data.num_classes == 5
    assert data.x_train.shape == (32, 16) and data.x_test.shape == (8, 16)  # 20% held out
    assert os.path.isdir(tmp_path / "netalchemy_test_solid_colours" / "1.0.0")
    luma = np.array([0.299 * r + 0.587 * g + 0.114 * b for r, g, b in COLOURS]) / 255
    raw_train, raw_test = luma[data.y_train], luma[data.y_test]
    mean, std = raw_train.mean(), raw_train.std()
    np.testing.assert_allclose(data.x_train, np.repeat(((raw_train - mean) / std)[:, None], 16, 1),
                               atol=1e-5)
    np.testing.assert_allclose(data.x_test, np.repeat(((raw_test - mean) / std)[:, None], 16, 1),
                               atol=1e-5)
    perm = np.random.default_rng(0).permutation(40)
    np.testing.assert_array_equal(data.y_test, np.sort(perm[:8]) % len(COLOURS))


# ---------------------------------------------------------------------------- preprocess


def test_grayscale_uses_bt601_weights():
    pixels = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], np.uint8)
    np.testing.assert_allclose(preprocess.to_grayscale(pixels)[0, :, 0],
                               [0.299 * 255, 0.587 * 255, 0.114 * 255, 255], rtol=1e-6)
    single = np.ones((2, 2, 1))
    np.testing.assert_array_equal(preprocess.to_grayscale(single), single)


@pytest.mark.parametrize("shape, size", [((28, 28, 1), 8), ((5, 5, 3), 13), ((7, 11, 3), 4)])
def test_resize_keeps_a_constant_image_constant(shape, size):
    out = preprocess.resize(np.full(shape, 173, np.uint8), size)
    assert out.shape == (size, size, shape[-1]) and out.dtype == np.float32
    np.testing.assert_allclose(out, 173, rtol=1e-6)


@pytest.mark.parametrize("shape, size", [((28, 28, 1), 8), ((6, 9, 3), 20), ((32, 32, 3), 32)])
def test_resize_matches_jax_image_resize_linear_antialiased(shape, size):
    image = np.random.default_rng(0).integers(0, 256, shape).astype(np.float32)
    expected = jax.image.resize(image, (size, size, shape[-1]), "linear", antialias=True)
    np.testing.assert_allclose(preprocess.resize(image, size), expected, atol=1e-3)
    batch = np.stack([image, image[::-1]])
    np.testing.assert_allclose(preprocess.resize(batch, size)[1],
                               preprocess.resize(image[::-1], size), atol=1e-4)


def test_resize_to_the_same_size_is_the_identity():
    image = np.random.default_rng(1).integers(0, 256, (9, 9, 3)).astype(np.float32)
    np.testing.assert_array_equal(preprocess.resize(image, 9), image)
    np.testing.assert_array_equal(preprocess._weights(9, 9), np.eye(9))  # so skipping it is exact


def test_standardize_uses_train_statistics_for_every_split():
    train = np.random.default_rng(2).normal(3.0, 2.0, (50, 7))
    x_train, x_test = preprocess.standardize(train, train + 2.0)
    assert abs(x_train.mean()) < 1e-6 and abs(x_train.std() - 1) < 1e-6
    np.testing.assert_allclose(x_test - x_train, 2.0 / train.std(), rtol=1e-5)
    assert x_train.dtype == np.float32 and x_test.dtype == np.float32


def test_images_to_features_handles_mixed_sizes():
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3)).astype(np.uint8) for h, w in [(5, 7), (9, 4), (5, 7)]]
    x = preprocess.images_to_features(images, 6, grayscale=False)
    assert x.shape == (3, 108) and x.dtype == np.float32
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_allclose(x[2], preprocess.resize(images[2], 6).reshape(-1) / 255, atol=1e-6)
    assert preprocess.images_to_features(images, 6, grayscale=True).shape == (3, 36)
