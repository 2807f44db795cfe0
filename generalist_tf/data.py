"""Datasets: the embedded digits, IDX files, tfds image datasets and user npz files, as tf.data.

Every source is first loaded into in-memory arrays (`Arrays`), split into train / validation /
test (validation is always carved out of the training split, never out of the test split), and
then served by one pipeline whose order and augmentation are pure functions of
`(seed, epoch, position)`. That makes a run reproducible and lets a resumed run continue with
exactly the batches the interrupted run would have seen.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from generalist_tf import data_files
from generalist_tf.data_files import (  # noqa: F401 (`data.<name>` for callers)
    IDX_DATASETS,
    IDX_FILES,
    DataError,
    checksum,
    idx_directory,
    read_idx,
)
from generalist_tf.names import NPZ_PREFIX, TFDS_DATASETS, unknown_dataset

# Fixed seed of every split (not the run seed): the same examples are held out in every run.
_SPLIT_SEED = 20230323
_CROP_PADDING = 4
# The seed of every evaluation subset (`--eval_examples`, `--table_examples`, `--val_examples`):
# fixed, so every run of a comparison is evaluated on the same examples whatever its `--seed`.
EVAL_SUBSET_SEED = 0


@dataclasses.dataclass(frozen=True)
class Arrays:
    """A dataset held in memory.

    Images are NHWC, either uint8 in [0, 255] or float32 in [0, 1]; labels are int64. The train
    arrays may be empty (zero examples) when a dataset is only evaluated.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    augmentation: str = "none"

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_test.shape[1:])


def load(
    name: str,
    *,
    data_dir: str | None = None,
    require_train: bool = True,
    train_examples: int | None = None,
) -> Arrays:
    """Loads a dataset by name into memory.

    Args:
      name: `digits`, one of `TFDS_DATASETS`, or `npz:PATH`.
      data_dir: tfds data directory, or a directory of IDX files (None: the tfds default, then
        the Debian location of `IDX_DATASETS`).
      require_train: npz only; when False the train keys may be missing (evaluation only).
      train_examples: keep a fixed subset of this many training examples (after the
        validation split is carved out; the same subset in every run). None: all.

    Returns:
      The dataset as `Arrays`.

    Raises:
      DataError: unknown name, a dataset found nowhere, a malformed file, or `train_examples`
        larger than the training split.
    """
    arrays = _load(name, data_dir, require_train)
    if require_train:
        check_trainable(arrays, name)
    if train_examples is None or train_examples == len(arrays.x_train):
        return arrays
    if train_examples > len(arrays.x_train):
        raise DataError(
            f"--train_examples={train_examples} exceeds the {len(arrays.x_train)} training "
            f"examples of {arrays.name}"
        )
    keep, _ = _holdout(len(arrays.x_train), len(arrays.x_train) - train_examples)
    return dataclasses.replace(arrays, x_train=arrays.x_train[keep], y_train=arrays.y_train[keep])


def check_trainable(arrays: Arrays, name: str) -> None:
    """Refuses, before any work, data that would train but mean nothing.

    Raises:
      DataError: fewer than two classes in the training labels (every attack would fail and
        robust accuracy read 100%), or an empty validation split (a tenth of the training
        examples is held out, so fewer than 10 leave none and selection has nothing to read).
    """
    classes = np.unique(arrays.y_train)
    if len(classes) < 2:
        raise DataError(
            f"--dataset={name}: the training labels hold a single class ({classes.tolist()}); "
            "adversarial training and robust accuracy need at least two"
        )
    if len(arrays.x_val) == 0:
        raise DataError(
            f"--dataset={name}: {len(arrays.x_train)} training examples leave an empty "
            "validation split (a tenth is held out); give at least 10"
        )


def _load(name: str, data_dir: str | None, require_train: bool) -> Arrays:
    if name == "digits":
        return _load_digits()
    if name in IDX_DATASETS and not _tfds_prepared(name, data_dir):
        return _load_idx_dataset(name, data_dir)
    if name in TFDS_DATASETS:
        return _load_tfds(name, data_dir)
    if name.startswith(NPZ_PREFIX):
        return _load_npz(name[len(NPZ_PREFIX) :], require_train=require_train)
    raise DataError(unknown_dataset(name))


def _holdout(n: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out) of a fixed random hold-out of `size` out of `n` examples."""
    order = np.random.default_rng(_SPLIT_SEED).permutation(n)
    return np.sort(order[size:]), np.sort(order[:size])


def _load_digits() -> Arrays:
    """scikit-learn's 8x8 digits (1,797 real images), split 70/10/20 stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[..., None]
    y = digits.target.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=_SPLIT_SEED % 2**31
    )
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=0.125, stratify=y_rest, random_state=_SPLIT_SEED % 2**31
    )
    return Arrays("digits", x_train, y_train, x_val, y_val, x_test, y_test, num_classes=10)


def _load_tfds(name: str, data_dir: str | None) -> Arrays:
    """A tfds dataset that is already prepared on disk; never downloads.

    A plain `tfds.load` with no network spends minutes in retries before failing, so readiness is
    checked first and a missing dataset fails at once with instructions.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        where = data_dir or "the tfds default (~/tensorflow_datasets)"
        raise DataError(
            f"--dataset={name} is not prepared in --data_dir={where}: on a machine with network "
            f"run `pip install -r requirements.txt && tfds build {name} --data_dir=DIR`, copy DIR "
            f"here and pass --data_dir=DIR"
        )

    def split_arrays(split):
        ds = builder.as_dataset(split=split, as_supervised=True, batch_size=-1)
        x, y = tfds.as_numpy(ds)
        return np.asarray(x, np.uint8), np.asarray(y, np.int64)

    x_full, y_full = split_arrays("train")
    x_test, y_test = split_arrays("test")
    num_classes = int(builder.info.features["label"].num_classes)
    return _carve_validation(
        name, x_full, y_full, x_test, y_test, num_classes, *TFDS_DATASETS[name]
    )


def _carve_validation(
    name, x_full, y_full, x_test, y_test, num_classes: int, val_size: int, augmentation="none"
) -> Arrays:
    """The dataset with a validation split of at most `val_size` (and a tenth of the training
    split) held out of training, with a fixed seed."""
    keep, held = _holdout(len(x_full), min(val_size, len(x_full) // 10))
    return Arrays(
        name,
        x_full[keep],
        y_full[keep],
        x_full[held],
        y_full[held],
        x_test,
        y_test,
        num_classes=num_classes,
        augmentation=augmentation,
    )


def _tfds_prepared(name: str, data_dir: str | None) -> bool:
    """Whether tfds has `name` prepared in `data_dir` (never downloads)."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir).is_prepared()
    except Exception:  # A directory that is not a tfds directory (e.g. raw IDX files).
        return False


def _load_idx_dataset(name: str, data_dir: str | None) -> Arrays:
    """MNIST or Fashion-MNIST from its four IDX files; validation carved out of training."""
    x_full, y_full, x_test, y_test = data_files.idx_arrays(name, data_dir)
    return _carve_validation(name, x_full, y_full, x_test, y_test, 10, *TFDS_DATASETS[name])


def _load_npz(path: str, *, require_train: bool) -> Arrays:
    """A user's arrays (see `data_files.npz_arrays`); validation carved out of training."""
    x_full, y_full, x_test, y_test = data_files.npz_arrays(path, require_train=require_train)
    num_classes = int(max(y_full.max(initial=0), y_test.max(initial=0)) + 1)
    return _carve_validation(f"npz:{path}", x_full, y_full, x_test, y_test, num_classes, 5_000)


def to_float(images) -> tf.Tensor:
    """uint8 [0, 255] or float [0, 1] images (arrays or tensors) to float32 in [0, 1]."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 255.0
    return tf.cast(images, tf.float32)


def _augment(image: tf.Tensor, seed: tf.Tensor, augmentation: str) -> tf.Tensor:
    """Pad-4 random crop (+ horizontal flip) with a stateless per-example seed."""
    if augmentation == "none":
        return image
    height, width, channels = image.shape
    padded = tf.pad(image, [[_CROP_PADDING] * 2, [_CROP_PADDING] * 2, [0, 0]], mode="CONSTANT")
    image = tf.image.stateless_random_crop(padded, [height, width, channels], seed=seed)
    if augmentation == "crop_flip":
        flip_seed = tf.random.experimental.stateless_fold_in(seed, 1)
        image = tf.image.stateless_random_flip_left_right(image, seed=flip_seed)
    return image


def train_dataset(
    arrays: Arrays,
    *,
    batch_size: int,
    seed: int,
    augment: bool = True,
    start_step: int = 0,
) -> tf.data.Dataset:
    """An endless stream of shuffled, augmented training batches, epoch after epoch.

    Epoch `e` (0-indexed) visits the examples in the stateless permutation seeded by
    `(seed, e)` and drops the last partial batch, so every step has the same static shape and
    every replica the same share. Augmentation of the example at position `p` in epoch `e` is
    seeded by `(seed, e, p)`. Batch `s` of the stream is therefore a pure function of
    `(seed, s)`, and `start_step` resumes the stream exactly.

    Args:
      arrays: the dataset.
      batch_size: the global batch size.
      seed: the run seed.
      augment: apply the dataset's augmentation.
      start_step: number of batches to skip (a resumed run).

    Returns:
      A `tf.data.Dataset` of `(images float32 [B, H, W, C], labels int64 [B])`.

    Raises:
      DataError: when the training split has fewer examples than one batch.
    """
    n = len(arrays.x_train)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise DataError(
            f"--batch_size={batch_size} exceeds the {n} training examples of {arrays.name}"
        )
    images = tf.constant(arrays.x_train)
    labels = tf.constant(arrays.y_train)
    augmentation = arrays.augmentation if augment else "none"
    start_epoch, skip = divmod(start_step, steps_per_epoch)

    def epoch_batches(epoch):
        order = tf.random.experimental.stateless_shuffle(
            tf.range(n, dtype=tf.int64), seed=tf.stack([tf.cast(seed, tf.int64), epoch])
        )[: steps_per_epoch * batch_size]
        positions = tf.range(steps_per_epoch * batch_size, dtype=tf.int64)

        def example(index, position):
            image = to_float(tf.gather(images, index))
            image_seed = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch, position])
            return _augment(image, image_seed, augmentation), tf.gather(labels, index)

        ds = tf.data.Dataset.from_tensor_slices((order, positions))
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size, drop_remainder=True)

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_batches).skip(skip)
    return ds.prefetch(tf.data.AUTOTUNE)


def eval_subset(x, y, num_examples: int | None, seed: int = EVAL_SUBSET_SEED):
    """`(x, y)`, or a subset of `num_examples` of them chosen by `seed`, in their order.

    The validation split, the final table and the attack suite all take their subsets here, so
    every run of a comparison is measured on the same examples (the seed is fixed, not the run's).
    """
    if num_examples is not None and num_examples < len(x):
        index = np.sort(np.random.default_rng(seed).permutation(len(x))[:num_examples])
        x, y = x[index], y[index]
    return x, y


def eval_dataset(
    x: np.ndarray,
    y: np.ndarray,
    *,
    batch_size: int,
    num_examples: int | None = None,
    seed: int = EVAL_SUBSET_SEED,
) -> tf.data.Dataset:
    """Batches of an evaluation split in a fixed order; the last batch may be partial.

    Args:
      x, y: images and labels.
      batch_size: the global batch size.
      num_examples: when set and smaller than the split, a subset chosen by `seed`.
      seed: the seed of that subset (default: the fixed `EVAL_SUBSET_SEED`, the same subset
        for every run).
    """
    x, y = eval_subset(x, y, num_examples, seed)
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.map(lambda image, label: (to_float(image), label), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
