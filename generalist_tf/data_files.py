"""Datasets read from files: MNIST-format IDX files and a user's npz arrays, checked.

Each reader returns plain numpy arrays `(x_train, y_train, x_test, y_test)` (`data` carves the
validation split and serves them) and fails with a one-line `DataError` naming the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os

import numpy as np

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
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """A dataset that cannot be loaded; the message is one line meant for the user."""


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


def idx_arrays(name: str, data_dir: str | None):
    """MNIST or Fashion-MNIST from its four IDX files: (x_train, y_train, x_test, y_test)."""
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
    return x_full, y_full, x_test, y_test


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


def npz_arrays(path: str, *, require_train: bool):
    """A user's arrays: keys x_train, y_train, x_test, y_test (train keys optional for eval).

    Returns (x_train, y_train, x_test, y_test), checked; empty train arrays when absent.
    """
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
    return x_full, y_full, x_test, y_test
