"""The vocabulary (`names`): one home for the names, and the registries that must match it."""

import pytest

from generalist_tf import names


def test_the_registries_list_exactly_the_vocabulary():
    from generalist_tf import models
    from generalist_tf.algorithm import learners

    assert tuple(models.MODELS) == names.MODELS
    assert set(learners.LEARNERS) == set(names.TRAINING_NORMS)


def test_dataset_names():
    assert names.is_known_dataset("digits") and names.is_known_dataset("fashion_mnist")
    assert names.is_known_dataset("npz:/any/path.npz")  # the file is opened by `data` only
    assert not names.is_known_dataset("imagenet")
    assert "npz:PATH" in names.known_datasets() and "cifar10" in names.known_datasets()


def test_a_user_model_names_an_importable_function():
    assert names.is_user_model("tests.user_network:build") and not names.is_user_model("resnet18")
    assert callable(names.user_builder("tests.user_network:build"))
    with pytest.raises(ValueError, match=r"^model=no_such_module:f: cannot import"):
        names.user_builder("no_such_module:f")
    # The command line's configuration names the flag.
    with pytest.raises(ValueError, match=r"^--model=tests.user_network:nope: .* no function"):
        names.user_builder("tests.user_network:nope", "--model")


def test_metric_keys():
    assert names.metric_key(names.GLOBAL, "pgd_accuracy") == "val_global/pgd_accuracy"
    assert names.metric_key("best", "clean_accuracy", validation=False) == "best/clean_accuracy"
