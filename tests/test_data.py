"""Datasets: the digits split, the reproducible training stream, augmentation, npz and tfds loading.

The tfds path runs under `tfds.testing.mock_data` (no download, no network); the not-prepared path
runs against an empty directory and must fail fast with a message naming dataset and directory.
"""

import collections
import contextlib
import gzip
import time
from unittest import mock

import numpy as np
import pytest
import tensorflow_datasets as tfds

from generalist_tf import data, data_files
from tests import helpers_train

DIGITS_TOTAL = 1_797
# train_test_split rounds the held-out part up: 20% of 1,797 -> 360, then 12.5% of 1,437 -> 180.
DIGITS_SPLIT = (1_257, 180, 360)
NOT_PREPARED_SECONDS = 20
# The mock serves this many random examples for every split (train and test alike).
MOCK_EXAMPLES = 60


def take(ds, num_batches):
    return [(x.numpy(), y.numpy()) for x, y in ds.take(num_batches)]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)


def indexed_arrays(n=40, shape=(8, 8, 1), augmentation="none"):
    """Arrays whose label is the example's index, so a batch says which examples it holds."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
    index = np.arange(n, dtype=np.int64)
    return data.Arrays(
        "indexed", x, index, x[:0], index[:0], x, index, num_classes=n, augmentation=augmentation
    )


def image_counts(*splits):
    return collections.Counter(image.tobytes() for split in splits for image in split)


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_digits_shapes_ranges_and_split_sizes(digits):
    sizes = (len(digits.x_train), len(digits.x_val), len(digits.x_test))
    assert sizes == DIGITS_SPLIT and sum(sizes) == DIGITS_TOTAL
    np.testing.assert_allclose(np.array(sizes) / DIGITS_TOTAL, [0.7, 0.1, 0.2], atol=0.005)
    assert digits.image_shape == (8, 8, 1) and digits.num_classes == 10
    assert digits.augmentation == "none"
    for x, y in [
        (digits.x_train, digits.y_train),
        (digits.x_val, digits.y_val),
        (digits.x_test, digits.y_test),
    ]:
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.min() == 0.0 and x.max() == 1.0
        assert set(np.unique(y)) == set(range(10))


def test_digits_splits_partition_the_data_by_class(digits):
    from sklearn.datasets import load_digits

    full = load_digits()
    full_images = (full.images / 16.0).astype(np.float32)[..., None]
    # Every image of the dataset is used exactly once (duplicates as often as they occur).
    assert image_counts(digits.x_train, digits.x_val, digits.x_test) == image_counts(full_images)
    # Stratified: each class is split 70/10/20 up to rounding.
    class_counts = np.bincount(full.target, minlength=10)
    for y, fraction in [(digits.y_train, 0.7), (digits.y_val, 0.1), (digits.y_test, 0.2)]:
        np.testing.assert_allclose(np.bincount(y, minlength=10), fraction * class_counts, atol=2)


def test_digits_split_is_fixed():
    a, b = data.load("digits"), data.load("digits")
    np.testing.assert_array_equal(a.x_val, b.x_val)
    np.testing.assert_array_equal(a.y_test, b.y_test)


def test_unknown_dataset_raises():
    with pytest.raises(data.DataError, match="'imagenet'"):
        data.load("imagenet")


def test_train_stream_is_a_function_of_the_seed(digits):
    first = take(data.train_dataset(digits, batch_size=32, seed=3), 3)
    again = take(data.train_dataset(digits, batch_size=32, seed=3), 3)
    other = take(data.train_dataset(digits, batch_size=32, seed=4), 3)
    assert_same_batches(first, again)
    assert not np.array_equal(first[0][1], other[0][1])
    for x, y in first:
        assert x.shape == (32, 8, 8, 1) and x.dtype == np.float32
        assert y.shape == (32,) and y.dtype == np.int64


def test_each_epoch_is_a_new_permutation_without_repeats():
    arrays = indexed_arrays(n=42)  # 5 batches of 8 per epoch; 2 examples dropped each epoch.
    batches = take(data.train_dataset(arrays, batch_size=8, seed=0), 10)
    epochs = [
        np.concatenate([y for _, y in batches[:5]]),
        np.concatenate([y for _, y in batches[5:]]),
    ]
    for seen in epochs:
        assert len(seen) == 40 and len(set(seen)) == 40
    assert not np.array_equal(epochs[0], epochs[1])


@pytest.mark.parametrize("start_step", [3, 5, 7, 12])
def test_start_step_resumes_the_stream_exactly(start_step):
    # With augmentation, so the augmentation seeds must resume too (5 steps per epoch).
    arrays = indexed_arrays(n=40, shape=(32, 32, 3), augmentation="crop_flip")
    stream = data.train_dataset(arrays, batch_size=8, seed=1)
    expected = take(stream.skip(start_step), 4)
    resumed = take(data.train_dataset(arrays, batch_size=8, seed=1, start_step=start_step), 4)
    assert_same_batches(resumed, expected)


def test_batch_larger_than_train_split_raises():
    with pytest.raises(data.DataError, match="--batch_size=64"):
        data.train_dataset(indexed_arrays(n=40), batch_size=64, seed=0)


def test_crop_flip_changes_images_but_keeps_shape_and_range():
    arrays = indexed_arrays(n=64, shape=(32, 32, 3), augmentation="crop_flip")
    augmented = take(data.train_dataset(arrays, batch_size=32, seed=0), 2)
    plain = take(data.train_dataset(arrays, batch_size=32, seed=0, augment=False), 2)
    for (xa, ya), (xp, yp) in zip(augmented, plain):
        # Same examples in the same order; only the pixels differ.
        np.testing.assert_array_equal(ya, yp)
        np.testing.assert_array_equal(xp, arrays.x_train[yp] / np.float32(255.0))
        assert xa.shape == xp.shape == (32, 32, 32, 3) and xa.dtype == np.float32
        assert xa.min() >= 0.0 and xa.max() <= 1.0
        changed = np.any(xa != xp, axis=(1, 2, 3))
        assert changed.mean() > 0.8


def test_digits_are_not_augmented(digits):
    augmented = take(data.train_dataset(digits, batch_size=64, seed=0), 2)
    plain = take(data.train_dataset(digits, batch_size=64, seed=0, augment=False), 2)
    assert_same_batches(augmented, plain)
    train_images = image_counts(digits.x_train)
    assert all(image.tobytes() in train_images for x, _ in augmented for image in x)


def test_eval_dataset_keeps_order_and_the_last_partial_batch(digits):
    batches = take(data.eval_dataset(digits.x_test, digits.y_test, batch_size=100), 10)
    assert [len(y) for _, y in batches] == [100, 100, 100, 60]
    np.testing.assert_array_equal(np.concatenate([y for _, y in batches]), digits.y_test)
    subset = take(
        data.eval_dataset(digits.x_test, digits.y_test, batch_size=100, num_examples=50), 10
    )
    assert sum(len(y) for _, y in subset) == 50


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return f"npz:{path}"


def npz_arrays(n_train=50, n_test=20, shape=(6, 6, 3), dtype=np.uint8):
    rng = np.random.default_rng(0)

    def images(n):
        if dtype == np.uint8:
            return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)
        return rng.uniform(size=(n, *shape)).astype(dtype)

    return dict(
        x_train=images(n_train),
        y_train=rng.integers(0, 5, size=n_train),
        x_test=images(n_test),
        y_test=rng.integers(0, 5, size=n_test),
    )


@pytest.mark.parametrize("dtype", [np.uint8, np.float64])
def test_npz_loads_uint8_and_float(tmp_path, dtype):
    arrays = npz_arrays(dtype=dtype)
    loaded = data.load(write_npz(tmp_path / "mine.npz", **arrays))
    # A tenth of the training split is held out for validation; the test split is untouched.
    assert (len(loaded.x_train), len(loaded.x_val), len(loaded.x_test)) == (45, 5, 20)
    assert loaded.image_shape == (6, 6, 3)
    assert loaded.x_train.dtype == (np.uint8 if dtype == np.uint8 else np.float32)
    assert loaded.y_train.dtype == np.int64
    np.testing.assert_array_equal(loaded.x_test, arrays["x_test"].astype(loaded.x_test.dtype))
    assert image_counts(loaded.x_train, loaded.x_val) == image_counts(
        arrays["x_train"].astype(loaded.x_train.dtype)
    )
    assert loaded.num_classes == 5
    x, _ = take(data.train_dataset(loaded, batch_size=8, seed=0), 1)[0]
    assert x.dtype == np.float32 and 0.0 <= x.min() and x.max() <= 1.0


def test_npz_three_dimensional_images_get_a_channel_axis(tmp_path):
    arrays = npz_arrays(shape=(6, 6))
    loaded = data.load(write_npz(tmp_path / "gray.npz", **arrays))
    assert loaded.image_shape == (6, 6, 1)
    assert loaded.x_train.shape[1:] == (6, 6, 1)


def test_npz_without_train_keys_for_evaluation(tmp_path):
    arrays = npz_arrays()
    name = write_npz(tmp_path / "eval.npz", x_test=arrays["x_test"], y_test=arrays["y_test"])
    loaded = data.load(name, require_train=False)
    assert len(loaded.x_train) == 0 and len(loaded.x_test) == 20
    with pytest.raises(data.DataError, match="x_train"):
        data.load(name)


def bad_npz_cases():
    good = npz_arrays()
    out_of_range = npz_arrays(dtype=np.float32)
    out_of_range["x_test"] = out_of_range["x_test"] * 255.0
    return {
        "missing_key": ({k: v for k, v in good.items() if k != "y_test"}, "missing keys"),
        "label_count": (dict(good, y_train=good["y_train"][:-1]), "y_train must have shape"),
        "flat_images": (
            dict(good, x_test=good["x_test"].reshape(20, -1)),
            "x_test must have shape",
        ),
        "image_shapes_differ": (dict(good, x_test=good["x_test"][:, :5]), "differ in shape"),
        "float_out_of_range": (out_of_range, r"must lie in \[0, 1\]"),
        "float_labels": (dict(good, y_test=good["y_test"].astype(np.float32)), "integer labels"),
    }


@pytest.mark.parametrize("case", sorted(bad_npz_cases()))
def test_malformed_npz_raises_naming_the_file(tmp_path, case):
    arrays, message = bad_npz_cases()[case]
    path = tmp_path / f"{case}.npz"
    with pytest.raises(data.DataError, match=message) as error:
        data.load(write_npz(path, **arrays))
    assert str(path) in str(error.value)


def test_not_an_npz_raises_naming_the_file(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("x_train,y_train\n1,2\n")
    with pytest.raises(data.DataError, match="not a readable .npz") as error:
        data.load(f"npz:{path}")
    assert str(path) in str(error.value)
    missing = tmp_path / "absent.npz"
    with pytest.raises(data.DataError, match="no such file") as error:
        data.load(f"npz:{missing}")
    assert str(missing) in str(error.value)


@contextlib.contextmanager
def mock_tfds(num_examples):
    """tfds mocked for a prepared dataset with `num_examples` random examples in every split.

    `mock_data` does not mock `is_prepared`, and its dataset info has no split sizes, so
    `as_dataset(batch_size=-1)` would batch by `sys.maxsize` (and abort the process); both are
    patched to what a prepared dataset reports.
    """
    with (
        tfds.testing.mock_data(num_examples=num_examples),
        mock.patch.object(tfds.core.DatasetBuilder, "is_prepared", return_value=True),
        mock.patch.object(
            tfds.core.SplitDict,
            "total_num_examples",
            new_callable=mock.PropertyMock,
            return_value=2 * num_examples,
        ),
    ):
        yield


@pytest.mark.parametrize(
    "name, num_examples, image_shape",
    [("cifar10", MOCK_EXAMPLES, (32, 32, 3)), ("mnist", 10_000, (28, 28, 1))],
)
def test_tfds_dataset_under_mock_data(name, num_examples, image_shape):
    with mock_tfds(num_examples):
        loaded = data.load(name)
    configured_val, augmentation = data.TFDS_DATASETS[name]
    val_size = min(configured_val, num_examples // 10)
    assert name != "mnist" or val_size == configured_val  # mnist runs at the configured size.
    assert len(loaded.x_val) == val_size
    assert len(loaded.x_train) == num_examples - val_size
    assert len(loaded.x_test) == num_examples  # The test split is never carved.
    assert loaded.image_shape == image_shape
    assert loaded.x_train.dtype == np.uint8 and loaded.y_train.dtype == np.int64
    assert loaded.num_classes == 10 and loaded.augmentation == augmentation
    # mock_data serves the same examples for every split, so the test split is the full train
    # split: validation and train together must be exactly that.
    assert image_counts(loaded.x_train, loaded.x_val) == image_counts(loaded.x_test)


def test_tfds_not_prepared_fails_fast_naming_dataset_and_dir(tmp_path):
    start = time.monotonic()
    with pytest.raises(data.DataError) as error:
        data.load("cifar10", data_dir=str(tmp_path))
    assert time.monotonic() - start < NOT_PREPARED_SECONDS
    assert "cifar10" in str(error.value)
    assert str(tmp_path) in str(error.value)


# The real Fashion-MNIST IDX files of `apt-get install dataset-fashion-mnist` (.ci/run installs
# it): SHA-256 of `data.checksum(images, labels)` of each split, computed once from those files.


@helpers_train.needs_fashion
def test_fashion_mnist_loads_without_tfds_and_carves_validation_from_train(tmp_path):
    loaded = data.load("fashion_mnist", data_dir=str(tmp_path))  # no tfds copy, no IDX there
    assert (len(loaded.x_train), len(loaded.x_val), len(loaded.x_test)) == (59_000, 1_000, 10_000)
    x_train, _ = data_files._load_idx_split(helpers_train.FASHION_DIR, "train")
    assert image_counts(loaded.x_train, loaded.x_val) == image_counts(x_train)
    subset = data.load("fashion_mnist", train_examples=5_000)
    assert len(subset.x_train) == 5_000 and len(subset.x_val) == 1_000
    assert image_counts(subset.x_train) <= image_counts(loaded.x_train)
    np.testing.assert_array_equal(subset.x_val, loaded.x_val)  # validation does not move
    again = data.load("fashion_mnist", train_examples=5_000)
    np.testing.assert_array_equal(subset.x_train, again.x_train)  # the same subset every run


def write_idx(path, array, *, gz=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    with (gzip.open if gz else open)(path, "wb") as f:
        f.write(payload)
    return payload


def fake_idx_dir(directory, n_train=30, n_test=10):
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = data.IDX_FILES[split]
        write_idx(directory / f"{images}.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(directory / f"{labels}.gz", np.arange(n) % 10)


def test_idx_data_dir_is_read_first_and_plain_files_work(tmp_path):
    fake_idx_dir(tmp_path)
    loaded = data.load("mnist", data_dir=str(tmp_path))
    assert len(loaded.x_train) + len(loaded.x_val) == 30 and len(loaded.x_test) == 10
    images = tmp_path / "t10k-images-idx3-ubyte"
    write_idx(images, np.full((4, 2, 2), 7), gz=False)
    np.testing.assert_array_equal(data.read_idx(str(images), ndim=3), np.full((4, 2, 2), 7))


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[:-5], "truncated"),
        (lambda raw: raw + b"xx", "trailing data"),
        (lambda raw: b"\x00\x00\x0d\x03" + raw[4:], "magic 00000d03"),
        (lambda raw: raw[:6], "truncated IDX header"),
    ],
)
def test_corrupt_or_truncated_idx_fails_in_one_line_naming_the_file(tmp_path, damage, message):
    fake_idx_dir(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    with gzip.open(path, "rb") as f:
        raw = f.read()
    with gzip.open(path, "wb") as f:
        f.write(damage(raw))
    with pytest.raises(data.DataError) as error:
        data.load("fashion_mnist", data_dir=str(tmp_path))
    text = str(error.value)
    assert str(path) in text and message in text and "\n" not in text


def test_not_gzip_idx_fails_naming_the_file(tmp_path):
    fake_idx_dir(tmp_path)
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match=f"{path}: not a readable IDX file"):
        data.load("mnist", data_dir=str(tmp_path))


def test_missing_idx_names_both_ways_and_the_paths_tried(tmp_path):
    with pytest.raises(data.DataError) as error:
        data.load("mnist", data_dir=str(tmp_path))
    text = str(error.value)
    assert str(tmp_path) in text and data.IDX_DATASETS["mnist"][0] in text
    assert "tfds build mnist" in text and "\n" not in text
    with mock.patch.dict(data.IDX_DATASETS, {"fashion_mnist": (str(tmp_path / "none"), "pkg")}):
        with pytest.raises(data.DataError, match="apt-get install pkg.*tfds build fashion_mnist"):
            data.load("fashion_mnist", data_dir=str(tmp_path))


def test_train_examples_larger_than_the_split_is_refused():
    with pytest.raises(data.DataError, match="--train_examples=5000 exceeds the 1257"):
        data.load("digits", train_examples=5_000)
