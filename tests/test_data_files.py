"""The IDX reader (`data_files`) on the real Fashion-MNIST files."""

import numpy as np
import pytest

from generalist_tf import data, data_files
from tests import helpers_train

FASHION_CHECKSUMS = {
    "train": "51bef9dd5f20a1f04a3c19da2d515ab4e6af86d0459e446c185cc9ddb4717369",
    "test": "0c149745b8a6bff9ff73c4367cc863e5e3606f901569925f3808a5f23bb8cdca",
}


@helpers_train.needs_fashion
@pytest.mark.parametrize("split, count", [("train", 60_000), ("test", 10_000)])
def test_idx_reader_on_the_real_fashion_mnist_files(split, count):
    x, y = data_files._load_idx_split(helpers_train.FASHION_DIR, split)
    assert x.shape == (count, 28, 28, 1) and x.dtype == np.uint8
    assert y.shape == (count,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [count // 10] * 10)
    assert data.checksum(x, y) == FASHION_CHECKSUMS[split]
