"""The evaluation suite end to end: report shape, files, summaries, references, inputs.

One full run of every attack on 128 test digits (small APGD / Square budgets) is shared by the
report tests; other tests run the subsets they need. Reference libraries are checked against
our attacks on the whole test split: cleverhans' PGD and the Adversarial Robustness Toolbox's
PGD and APGD (`requirements-art.txt`; the test fails, with the install command, without it).
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import data, export
from generalist_tf.evaluation import runner, suite
from tests import helpers_eval, helpers_train


def test_normal_model_numbers_are_sane_and_raise_no_alarm(full_run):
    report, _ = full_run
    assert report["alarms"] == []
    accuracy = {name: entry["accuracy"] for name, entry in report["attacks"].items()}
    assert report["clean_accuracy"] > 0.95
    for norm in ("linf", "l2"):
        worst = report["worst_case"][norm]
        of_norm = [a for name, a in accuracy.items() if name.endswith(norm)]
        assert worst <= min(of_norm)
        assert report["union_accuracy"] <= worst
        assert accuracy[f"apgd_ce_{norm}"] <= accuracy[f"pgd20_{norm}"]
    assert accuracy["pgd20_linf"] < accuracy["fgsm_linf"]
    assert 0.2 < report["worst_case"]["linf"] < 0.8


def test_worst_case_and_union_come_from_per_example_masks():
    clean = np.array([True, True, True, True, False])
    masks = {
        "a_linf": np.array([True, True, False, False, True]),
        "b_linf": np.array([False, False, True, True, True]),
        "c_l2": np.array([True, False, True, True, True]),
    }
    entries = {
        name: {"norm": name.rsplit("_", 1)[1], "accuracy": float(m.mean())}
        for name, m in masks.items()
    }
    report = runner.summarise(clean, masks, entries)
    # Each l_inf attack alone leaves 40-60%, together none survives; x misclassified counts too.
    assert report["worst_case"] == {"linf": 0.0, "l2": 0.6}
    assert report["union_accuracy"] == 0.0
    masks["a_linf"] = np.array([True, True, True, True, True])
    report = runner.summarise(clean, masks, entries)
    assert report["worst_case"]["linf"] == 0.4 and report["union_accuracy"] == 0.4


CHEAP = ["pgd20_linf", "apgd_ce_linf", "pgd20_l2"]


def test_deterministic_given_seed_and_independent_of_the_subset(tmp_path, full_run):
    full, _ = full_run
    runs = [
        helpers_eval.evaluate(
            helpers_eval.fitted(), tmp_path / str(i), attacks=CHEAP, **helpers_eval.NO_CURVES
        )
        for i in range(2)
    ]
    other_seed = helpers_eval.evaluate(
        helpers_eval.fitted(), tmp_path / "seed1", attacks=CHEAP, seed=1, **helpers_eval.NO_CURVES
    )

    def accuracies(report):
        return {name: entry["accuracy"] for name, entry in report["attacks"].items()}

    assert accuracies(runs[0]) == accuracies(runs[1])
    assert runs[0]["worst_case"] == runs[1]["worst_case"]
    # Each attack draws its own random stream: running it in a subset changes nothing.
    assert accuracies(runs[0]) == {name: full["attacks"][name]["accuracy"] for name in CHEAP}
    assert set(runs[0]["attacks"]) == set(CHEAP)
    assert accuracies(other_seed) != accuracies(runs[0])


def _load_serving(path):
    """`export.load_serving`, with the loaded SavedModel kept alive by the returned function.

    `export.load_serving` returns a function that does not reference the loaded object: once it
    is garbage collected, calling the function inside a `tf.function` (every attack) fails with
    "Called a function referencing variables which have been deleted".
    """
    loaded = tf.saved_model.load(path)
    signature = loaded.signatures[export.SIGNATURE]

    def serving(images):
        return signature(images=tf.convert_to_tensor(images, tf.float32))["logits"]

    serving.saved_model = loaded
    return serving


def test_evaluates_an_exported_saved_model(tmp_path):
    """The serving function of an export is a plain callable: same numbers as the Keras model."""
    network = helpers_eval.fitted()
    path = str(tmp_path / "export")
    export.export_saved_model(network, helpers_eval.build_digits_cnn, path)
    serving = _load_serving(path)
    x, y = helpers_eval.subset(64)
    names = ["fgsm_linf", "pgd20_linf", "apgd_t_linf", "square_linf", "apgd_ce_l2"]
    served = helpers_eval.evaluate(
        serving,
        tmp_path / "served",
        x,
        y,
        attacks=names,
        apgd_steps=10,
        square_queries=100,
        **helpers_eval.NO_CURVES,
    )
    keras_run = helpers_eval.evaluate(
        network,
        tmp_path / "keras",
        x,
        y,
        attacks=names,
        apgd_steps=10,
        square_queries=100,
        **helpers_eval.NO_CURVES,
    )
    assert served["clean_accuracy"] == keras_run["clean_accuracy"]
    for name in names:
        assert served["attacks"][name]["accuracy"] == pytest.approx(
            keras_run["attacks"][name]["accuracy"], abs=1.5 / len(x)
        ), name
    assert served["alarms"] == []


def test_two_replicas_give_the_numbers_of_one_device(tmp_path):
    """Under the training strategy each replica attacks whole batches with their own seeds."""
    network = helpers_eval.fitted()
    path = str(tmp_path / "export")
    export.export_saved_model(network, helpers_eval.build_digits_cnn, path)
    strategy = helpers_train.two_replica_strategy()
    with strategy.scope():
        replicated = export.load_serving(path)
    x, y = helpers_eval.subset(72)  # 5 batches of 16: the last round leaves a replica idle
    # The standard lists of both norms (APGD-CE/T, FAB-T, Square) and PGD.
    names = ["pgd20_linf", "pgd20_l2", *suite.ATTACK_SETS["standard"]]
    budget = dict(
        attacks=names, batch_size=16, apgd_steps=5, square_queries=50, **helpers_eval.NO_CURVES
    )
    one = helpers_eval.evaluate(export.load_serving(path), tmp_path / "one", x, y, **budget)
    two = helpers_eval.evaluate(replicated, tmp_path / "two", x, y, strategy=strategy, **budget)
    assert two["clean_accuracy"] == one["clean_accuracy"] and two["num_examples"] == 72
    assert {n: e["accuracy"] for n, e in two["attacks"].items()} == {
        n: e["accuracy"] for n, e in one["attacks"].items()
    }
    assert two["worst_case"] == one["worst_case"] and two["union_accuracy"] < one["clean_accuracy"]
    assert two["autoattack_standard"] == one["autoattack_standard"]


def test_evaluates_an_npz_dataset_of_uint8_images(tmp_path):
    arrays = helpers_eval.digits()
    path = str(tmp_path / "digits.npz")
    x_uint8 = np.round(arrays.x_test[:64] * 255).astype(np.uint8)
    np.savez(path, x_test=x_uint8, y_test=arrays.y_test[:64])
    loaded = data.load(f"npz:{path}", require_train=False)
    report = helpers_eval.evaluate(
        helpers_eval.fitted(),
        tmp_path / "eval",
        loaded.x_test,
        loaded.y_test,
        attacks=["pgd20_linf", "pgd20_l2"],
        **helpers_eval.NO_CURVES,
    )
    assert report["num_examples"] == 64 and set(report["attacks"]) == {"pgd20_linf", "pgd20_l2"}
    assert report["clean_accuracy"] == helpers_eval.accuracy(
        helpers_eval.fitted(), x_uint8 / 255.0, loaded.y_test
    )


def test_apgd_t_is_left_out_below_four_classes(tmp_path):
    keras.utils.set_random_seed(0)
    three_classes = keras.Sequential(
        [keras.Input((8, 8, 1)), keras.layers.Flatten(), keras.layers.Dense(3)]
    )
    x, y = helpers_eval.subset(32)
    report = helpers_eval.evaluate(
        three_classes,
        tmp_path,
        x,
        y % 3,
        attacks=["pgd20_linf", "apgd_t_linf"],
        apgd_steps=5,
        **helpers_eval.NO_CURVES,
    )
    assert set(report["attacks"]) == {"pgd20_linf"}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(attacks=["pgd7_linf"]), "attacks must be"),
        (dict(epsilon_linf=0.0), "epsilon_linf"),
        (dict(epsilon_l2=-1.0), "epsilon_l2"),
        (dict(restarts=0), "restarts"),
        (dict(reference="foolbox"), "reference"),
        (dict(epsilon_fractions=(1.0, 0.5)), "epsilon_fractions"),
    ],
)
def test_rejects_invalid_arguments(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message):
        helpers_eval.evaluate(None, tmp_path, **kwargs)


@pytest.mark.slow
def test_full_budgets_on_the_whole_test_split(tmp_path):
    """The default budgets (APGD 100 steps, Square 5000 queries) on all 360 test digits."""
    arrays = helpers_eval.digits()
    report = helpers_eval.evaluate(
        helpers_eval.fitted(),
        tmp_path,
        arrays.x_test,
        arrays.y_test,
        square_queries=5000,
        apgd_steps=100,
    )
    assert report["alarms"] == []
    accuracy = {name: entry["accuracy"] for name, entry in report["attacks"].items()}
    assert accuracy["apgd_ce_linf"] <= accuracy["pgd20_linf"]
    assert accuracy["apgd_t_linf"] <= accuracy["apgd_ce_linf"]
