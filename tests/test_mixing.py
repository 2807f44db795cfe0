"""What the mixing averages (`algorithm.mixing`): every floating weight, BatchNorm statistics included."""

from generalist_tf.algorithm import mixing
from tests import helpers_train


def test_mixable_weights_include_batchnorm_statistics():
    names = [w.path for w in mixing.mixable_weights(helpers_train.bn_network())]
    assert any("moving_mean" in n for n in names) and any("moving_variance" in n for n in names)
