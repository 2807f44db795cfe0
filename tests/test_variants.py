"""The paper's variants as presets (`algorithm.variants`): known learners, valid mixing."""

from generalist_tf.algorithm import learners, schedules, variants


def test_every_variant_names_known_learners_and_weights_that_sum_to_one():
    for name, variant in variants.VARIANTS.items():
        assert set(variant.learners) <= set(learners.LEARNERS), name
        mixing = schedules.parse_mixing(variant.mixing, flag=name)
        schedules.check_mixing(mixing, variant.learners, 120, flag=name)
        assert variant.communicate == (len(variant.learners) > 1), name
        assert variant.description


def test_custom_is_not_a_preset():
    assert variants.CUSTOM not in variants.VARIANTS
