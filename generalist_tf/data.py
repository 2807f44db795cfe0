"""Datasets: the embedded digits, IDX files, tfds image datasets and user npz files, as tf.data.

Every source is first loaded into in-memory arrays (`Arrays`), split into train / validation /
test (validation is always carved out of the training split, never out of the test split), and
then served by one pipeline whose order and augmentation are pure functions of
`(seed, epoch, position)`. That makes a run reproducible and lets a resumed run continue with
exactly the batches the interrupted run would have seen.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os

import numpy as np
import tensorflow as tf

# Datasets served by tensorflow-datasets, with the size of the validation split carved out of
# their training split and the augmentation they get during training.
TFDS_DATASETS = {
    "mnist": (1_000, "none"),
    "fashion_mnist": (1_000, "none"),
    "cifar10": (5_000, "crop_flip"),
    "cifar100": (5_000, "crop_flip"),
    "svhn_cropped": (5_000, "crop"),
}
EMBEDDED_DATASETS = ("digits",)
# MNIST-format datasets that are also read from their original IDX files, without tfds: from
# --data_dir, else from a system location. Debian packages Fashion-MNIST
# (`apt-get install dataset-fashion-mnist`); it has no MNIST package, so that path is only a
# conventional place to put the files.
IDX_DATASETS = {  # name -> (system directory, Debian package or None)
    "mnist": ("/usr/share/datasets/mnist", None),
    "fashion_mnist": ("/usr/share/datasets/fashion-mnist", "dataset-fashion-mnist"),
}
IDX_FILES = {  # split -> (images, labels), as LeCun's and Zalando's releases name them
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_IDX_UBYTE = 0x08
NPZ_PREFIX = "npz:"
AUGMENTATIONS = ("none", "crop", "crop_flip")
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")

# Fixed seed of every split (not the run seed): the same examples are held out in every run.
_SPLIT_SEED = 20230323
_CROP_PADDING = 4
# The seed of every evaluation subset (`--eval_examples`, `--table_examples`, `--val_examples`):
# fixed, so every run of a comparison is evaluated on the same examples whatever its `--seed`.
EVAL_SUBSET_SEED = 0


class DataError(ValueError):
    """A dataset that cannot be loaded; the message is one line meant for the user."""


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


def is_known_dataset(name: str) -> bool:
    """Whether `name` names a dataset `load` understands (npz files are not opened)."""
    return name in EMBEDDED_DATASETS or name in TFDS_DATASETS or name.startswith(NPZ_PREFIX)


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
    known = ", ".join(list(EMBEDDED_DATASETS) + list(TFDS_DATASETS) + ["npz:PATH"])
    raise DataError(f"--dataset={name!r} is unknown; choose one of {known}")


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
    return _carve_validation(name, x_full, y_full, x_test, y_test, num_classes=num_classes)


def _carve_validation(name, x_full, y_full, x_test, y_test, *, num_classes: int) -> Arrays:
    """A `TFDS_DATASETS` dataset with its validation split held out of training (fixed seed)."""
    val_size, augmentation = TFDS_DATASETS[name]
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


def _idx_path(directory: str, stem: str) -> str | None:
    for candidate in (stem + ".gz", stem):
        path = os.path.join(directory, candidate)
        if os.path.isfile(path):
            return path
    return None


def read_idx(path: str, *, ndim: int) -> np.ndarray:
    """Reads one IDX file (gzipped or not) of unsigned bytes with `ndim` dimensions.

    The format (LeCun et al.): two zero bytes, the type code (0x08: unsigned byte), the number
    of dimensions, one big-endian uint32 per dimension, then the values in C order.

    Raises:
      DataError: a one-line message naming the file: not gzip, a wrong magic number or
        dimension count, or fewer bytes than the header announces.
    """
    try:
        opener = gzip.open if path.endswith(".gz") else open
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip raises BadGzipFile (an OSError) or EOFError.
        raise DataError(f"{path}: not a readable IDX file ({type(e).__name__}: {e})")
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != ndim:
        raise DataError(
            f"{path}: not an IDX file of {ndim}-d unsigned bytes (magic {raw[:4].hex() or 'empty'}, "
            f"expected 0000080{ndim})"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape))
    if len(raw) != expected:
        raise DataError(
            f"{path}: IDX shape {shape} needs {expected} bytes, the file has {len(raw)} "
            f"({'truncated' if len(raw) < expected else 'trailing data'})"
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def _load_idx_split(directory: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_stem, labels_stem = IDX_FILES[split]
    images_path = _idx_path(directory, images_stem)
    labels_path = _idx_path(directory, labels_stem)
    x = read_idx(images_path, ndim=3)[..., None]
    y = read_idx(labels_path, ndim=1).astype(np.int64)
    if len(x) != len(y):
        raise DataError(f"{images_path}: {len(x)} images but {labels_path} has {len(y)} labels")
    return np.ascontiguousarray(x), y


def _idx_candidates(name: str, data_dir: str | None) -> list[str]:
    return [d for d in (data_dir, IDX_DATASETS[name][0]) if d]


def idx_directory(name: str, data_dir: str | None) -> str | None:
    """The first of `data_dir`, then the Debian location, that holds all four IDX files."""
    for directory in _idx_candidates(name, data_dir):
        stems = [stem for pair in IDX_FILES.values() for stem in pair]
        if all(_idx_path(directory, stem) for stem in stems):
            return directory
    return None


def _load_idx_dataset(name: str, data_dir: str | None) -> Arrays:
    """MNIST or Fashion-MNIST from its four IDX files; validation carved out of training."""
    directory = idx_directory(name, data_dir)
    if directory is None:
        tried = ", ".join(_idx_candidates(name, data_dir))
        package = IDX_DATASETS[name][1]
        apt = f"install them with `apt-get install {package}` (Debian), or " if package else ""
        raise DataError(
            f"--dataset={name}: found neither a tfds copy nor the four IDX files (tried {tried}); "
            f"{apt}pass --data_dir=DIR holding {IDX_FILES['train'][0]}.gz and the other three, "
            f"or prepare it with `tfds build {name} --data_dir=DIR` on a machine with network"
        )
    x_full, y_full = _load_idx_split(directory, "train")
    x_test, y_test = _load_idx_split(directory, "test")
    return _carve_validation(name, x_full, y_full, x_test, y_test, num_classes=10)


def checksum(*arrays: np.ndarray) -> str:
    """SHA-256 of the arrays' bytes, shapes and dtypes (a fingerprint of a loaded dataset)."""
    digest = hashlib.sha256()
    for array in arrays:
        digest.update(f"{array.shape}{array.dtype}".encode())
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def _check_images(path: str, key: str, x: np.ndarray) -> np.ndarray:
    if x.ndim == 3:
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(
            f"{path}: {key} must have shape (N, H, W) or (N, H, W, C) with N > 0, got {x.shape}"
        )
    if x.dtype == np.uint8:
        return x
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(
            f"{path}: {key} must be uint8 in [0, 255] or float in [0, 1], got {x.dtype}"
        )
    lo, hi = float(np.min(x)), float(np.max(x))
    if lo < 0.0 or hi > 1.0 or not np.isfinite(lo + hi):
        raise DataError(f"{path}: float {key} must lie in [0, 1], got values in [{lo}, {hi}]")
    return x.astype(np.float32)


def _check_labels(path: str, key: str, y: np.ndarray, n: int) -> np.ndarray:
    if y.ndim != 1 or y.shape[0] != n:
        raise DataError(f"{path}: {key} must have shape ({n},) to match the images, got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or (n and y.min() < 0):
        raise DataError(f"{path}: {key} must hold non-negative integer labels, got dtype {y.dtype}")
    return y.astype(np.int64)


def _load_npz(path: str, *, require_train: bool) -> Arrays:
    """A user's arrays: keys x_train, y_train, x_test, y_test (train keys optional for eval)."""
    if not os.path.isfile(path):
        raise DataError(f"--dataset=npz:{path}: no such file")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except Exception as e:  # np.load raises several types for a file that is not an npz.
        raise DataError(f"--dataset=npz:{path}: not a readable .npz file ({type(e).__name__})")
    needed = NPZ_KEYS if require_train else ("x_test", "y_test")
    missing = [k for k in needed if k not in arrays]
    if missing:
        raise DataError(f"{path}: missing keys {missing}; an npz dataset needs {list(needed)}")
    x_test = _check_images(path, "x_test", arrays["x_test"])
    y_test = _check_labels(path, "y_test", arrays["y_test"], len(x_test))
    if "x_train" in arrays and "y_train" in arrays:
        x_full = _check_images(path, "x_train", arrays["x_train"])
        y_full = _check_labels(path, "y_train", arrays["y_train"], len(x_full))
        if x_full.shape[1:] != x_test.shape[1:]:
            raise DataError(
                f"{path}: x_train images {x_full.shape[1:]} and x_test images "
                f"{x_test.shape[1:]} differ in shape"
            )
    else:
        x_full, y_full = x_test[:0], y_test[:0]
    keep, held = _holdout(len(x_full), min(5_000, len(x_full) // 10))
    num_classes = int(max(y_full.max(initial=0), y_test.max(initial=0)) + 1)
    return Arrays(
        f"npz:{path}",
        x_full[keep],
        y_full[keep],
        x_full[held],
        y_full[held],
        x_test,
        y_test,
        num_classes=num_classes,
    )


def _to_float(images: tf.Tensor) -> tf.Tensor:
    """uint8 [0, 255] or float [0, 1] images to float32 in [0, 1]."""
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
            image = _to_float(tf.gather(images, index))
            image_seed = tf.stack([tf.cast(seed, tf.int64) * 1_000_003 + epoch, position])
            return _augment(image, image_seed, augmentation), tf.gather(labels, index)

        ds = tf.data.Dataset.from_tensor_slices((order, positions))
        ds = ds.map(example, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        return ds.batch(batch_size, drop_remainder=True)

    ds = tf.data.Dataset.range(start_epoch, 2**62).flat_map(epoch_batches).skip(skip)
    return ds.prefetch(tf.data.AUTOTUNE)


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
    if num_examples is not None and num_examples < len(x):
        index = np.sort(np.random.default_rng(seed).permutation(len(x))[:num_examples])
        x, y = x[index], y[index]
    ds = tf.data.Dataset.from_tensor_slices((x, y))
    ds = ds.map(lambda image, label: (_to_float(image), label), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
