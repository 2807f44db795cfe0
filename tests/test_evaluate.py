"""The evaluation suite end to end: report shape, files, summaries, references, inputs.

One full run of every attack on 128 test digits (small APGD / Square budgets) is shared by the
report tests; other tests run the subsets they need. Reference libraries are checked against
our attacks on the whole test split: cleverhans' PGD and the Adversarial Robustness Toolbox's
PGD and APGD (`requirements-art.txt`; the test fails, with the install command, without it).
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from cleverhans.tf2.attacks.projected_gradient_descent import projected_gradient_descent

from generalist_tf import attacks, data, distribute, export
from generalist_tf.evaluation import per_example, plots, runner, suite, writers
from tests import helpers_eval, helpers_train

FAST_BUDGET = dict(square_queries=300, apgd_steps=50)
REPORT_KEYS = {
    "clean_accuracy",
    "num_examples",
    "attacks",
    "worst_case",
    "union_accuracy",
    "autoattack_standard",
    "autoattack_budgets",
    "intervals",
    "epsilons",
    "subset",
    "alarms",
}
ENTRY_KEYS = {
    "accuracy",
    "norm",
    "epsilon",
    "epsilon_text",
    "num_steps",
    "restarts",
    "seconds",
    "num_examples",
    "interval",
}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Agreement with the reference implementations (fractions of the test split).
CLEVERHANS_AGREEMENT = 0.02
ART_PGD_AGREEMENT = 0.02
ART_APGD_AGREEMENT = 0.015
REFERENCE_SEEDS = 3


def _evaluate(model, workdir, x=None, y=None, **kwargs):
    if x is None:
        x, y = helpers_eval.subset()
    arguments = dict(
        workdir=str(workdir),
        epsilon_linf=helpers_eval.EPSILON_LINF,
        epsilon_l2=helpers_eval.EPSILON_L2,
        verbose=0,
        **FAST_BUDGET,
    )
    arguments.update(kwargs)
    return runner.evaluate_model(model, x, y, **arguments)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("full")
    return _evaluate(helpers_eval.fitted(), workdir), str(workdir)


def test_report_json_has_exactly_the_documented_fields(full_run):
    report, workdir = full_run
    with open(os.path.join(workdir, writers.REPORT_JSON)) as f:
        written = json.load(f)
    assert written == report
    assert set(report) == REPORT_KEYS
    assert isinstance(report["clean_accuracy"], float) and report["num_examples"] == 128
    assert list(report["attacks"]) == list(suite.DEFAULT_ATTACKS)
    for name, entry in report["attacks"].items():
        assert set(entry) == ENTRY_KEYS | ({"queries"} if name.startswith("square") else set()), (
            name
        )
        assert isinstance(entry["accuracy"], float) and 0.0 <= entry["accuracy"] <= 1.0
        assert entry["norm"] == name.rsplit("_", 1)[1]
        assert entry["epsilon"] == (
            helpers_eval.EPSILON_LINF if entry["norm"] == "linf" else helpers_eval.EPSILON_L2
        )
        assert isinstance(entry["num_steps"], int) and isinstance(entry["restarts"], int)
        assert isinstance(entry["seconds"], float) and entry["seconds"] > 0
    steps = {name: entry["num_steps"] for name, entry in report["attacks"].items()}
    assert steps == {
        "fgsm_linf": 1,
        "pgd20_linf": 20,
        "pgd100_linf": 100,
        "cw_linf": 30,
        "mim_linf": 20,
        "apgd_ce_linf": 50,
        "apgd_t_linf": 50,
        "square_linf": 300,
        "pgd20_l2": 20,
        "pgd100_l2": 100,
        "apgd_ce_l2": 50,
    }
    assert set(report["worst_case"]) == {"linf", "l2"}
    assert all(isinstance(v, float) for v in report["worst_case"].values())
    assert isinstance(report["union_accuracy"], float) and isinstance(report["alarms"], list)


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


def test_markdown_report_is_a_paper_table(full_run):
    report, workdir = full_run
    with open(os.path.join(workdir, writers.REPORT_MD)) as f:
        text = f.read()
    assert (
        "| attack | norm | epsilon | steps | restarts | accuracy (%) | 95% interval (%) | seconds |"
        in text
    )
    for name in suite.DEFAULT_ATTACKS:
        assert f"| {name} |" in text
    assert "PGD-30 on the CW margin" in text
    assert (
        f"| cw_linf | linf | 0.1 | 30 | 1 | {100 * report['attacks']['cw_linf']['accuracy']:.2f} |"
        in text
    )


def test_accuracy_vs_epsilon_plots_and_curves(full_run):
    report, workdir = full_run
    for norm in ("linf", "l2"):
        with open(os.path.join(workdir, writers.curve_png(norm)), "rb") as f:
            assert f.read(8) == PNG_MAGIC
    with open(os.path.join(workdir, writers.CURVE_JSON)) as f:
        curves = json.load(f)
    for norm in ("linf", "l2"):
        accuracies = curves[norm]["accuracies"]
        assert curves[norm]["fractions"] == list(suite.EPSILON_FRACTIONS)
        assert accuracies[0] == report["clean_accuracy"]
        assert (
            accuracies[suite.EPSILON_FRACTIONS.index(1.0)]
            == (report["attacks"][f"pgd20_{norm}"]["accuracy"])
        )
        assert accuracies[-1] == 0.0


def test_plot_tradeoff_draws_several_models(tmp_path):
    path = str(tmp_path / "tradeoff.png")
    plots.plot_tradeoff(
        {"natural": (0.99, 0.0), "pgd_at": (0.9, 0.6), "generalist": (0.95, 0.55)}, path
    )
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    # With standard deviations as error bars and a named robust accuracy (as repro draws it).
    os.remove(path)
    plots.plot_tradeoff(
        {"pgd_at": (0.9, 0.6), "generalist": (0.95, 0.55)},
        path,
        robust="worst-case l_inf accuracy",
        spread={"pgd_at": (0.01, 0.02)},
    )
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    with pytest.raises(ValueError, match="at least one model"):
        plots.plot_tradeoff({}, path)


def _scalars(logdir: str) -> dict[str, dict[int, float]]:
    scalars = {}
    for name in os.listdir(logdir):
        for record in tf.data.TFRecordDataset(os.path.join(logdir, name)):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, {})[event.step] = number
    return scalars


def test_tensorboard_scalars(full_run):
    report, workdir = full_run
    scalars = _scalars(os.path.join(workdir, writers.SUMMARY_DIR))
    assert scalars[writers.CLEAN_ACCURACY_METRIC][0] == pytest.approx(report["clean_accuracy"])
    for name, entry in report["attacks"].items():
        assert scalars[f"eval/{name}/accuracy"][0] == pytest.approx(entry["accuracy"])
    assert scalars["eval/worst_case_linf"][0] == pytest.approx(report["worst_case"]["linf"])
    assert scalars[writers.UNION_ACCURACY_METRIC][0] == pytest.approx(report["union_accuracy"])
    assert scalars[writers.NUM_ALARMS_METRIC][0] == 0
    assert sorted(scalars["eval/accuracy_vs_epsilon_l2"]) == [0, 25, 50, 100, 200, 400]


CHEAP = ["pgd20_linf", "apgd_ce_linf", "pgd20_l2"]
NO_CURVES = dict(epsilon_fractions=(), tensorboard=False)


def test_deterministic_given_seed_and_independent_of_the_subset(tmp_path, full_run):
    full, _ = full_run
    runs = [
        _evaluate(helpers_eval.fitted(), tmp_path / str(i), attacks=CHEAP, **NO_CURVES)
        for i in range(2)
    ]
    other_seed = _evaluate(
        helpers_eval.fitted(), tmp_path / "seed1", attacks=CHEAP, seed=1, **NO_CURVES
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
    served = _evaluate(
        serving,
        tmp_path / "served",
        x,
        y,
        attacks=names,
        apgd_steps=10,
        square_queries=100,
        **NO_CURVES,
    )
    keras_run = _evaluate(
        network,
        tmp_path / "keras",
        x,
        y,
        attacks=names,
        apgd_steps=10,
        square_queries=100,
        **NO_CURVES,
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
    budget = dict(attacks=names, batch_size=16, apgd_steps=5, square_queries=50, **NO_CURVES)
    one = _evaluate(export.load_serving(path), tmp_path / "one", x, y, **budget)
    two = _evaluate(replicated, tmp_path / "two", x, y, strategy=strategy, **budget)
    assert two["clean_accuracy"] == one["clean_accuracy"] and two["num_examples"] == 72
    assert {n: e["accuracy"] for n, e in two["attacks"].items()} == {
        n: e["accuracy"] for n, e in one["attacks"].items()
    }
    assert two["worst_case"] == one["worst_case"] and two["union_accuracy"] < one["clean_accuracy"]
    assert two["autoattack_standard"] == one["autoattack_standard"]


def test_map_batches_runs_each_batch_on_one_replica():
    strategy = helpers_train.two_replica_strategy()
    devices = []

    def batch(index):
        value = tf.identity(tf.constant([index, index]))
        devices.append((index, value.device))
        return value

    done = []
    results = distribute.map_batches(strategy, batch, 3, on_done=done.append)
    assert [r.tolist() for r in results] == [[0, 0], [1, 1], [2, 2]] and done == [2, 1]
    assert sorted(devices) == sorted(
        [
            (0, "/job:localhost/replica:0/task:0/device:CPU:0"),
            (1, "/job:localhost/replica:0/task:0/device:CPU:1"),
            (2, "/job:localhost/replica:0/task:0/device:CPU:0"),
        ]
    )
    assert distribute.eval_strategy(strategy) is strategy
    assert distribute.eval_strategy(tf.distribute.MirroredStrategy(["/cpu:0"])) is None


def test_evaluates_an_npz_dataset_of_uint8_images(tmp_path):
    arrays = helpers_eval.digits()
    path = str(tmp_path / "digits.npz")
    x_uint8 = np.round(arrays.x_test[:64] * 255).astype(np.uint8)
    np.savez(path, x_test=x_uint8, y_test=arrays.y_test[:64])
    loaded = data.load(f"npz:{path}", require_train=False)
    report = _evaluate(
        helpers_eval.fitted(),
        tmp_path / "eval",
        loaded.x_test,
        loaded.y_test,
        attacks=["pgd20_linf", "pgd20_l2"],
        **NO_CURVES,
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
    report = _evaluate(
        three_classes,
        tmp_path,
        x,
        y % 3,
        attacks=["pgd20_linf", "apgd_t_linf"],
        apgd_steps=5,
        **NO_CURVES,
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
        _evaluate(None, tmp_path, **kwargs)


def test_pgd20_agrees_with_cleverhans():
    """Our pgd20_linf as the suite runs it vs cleverhans' PGD with the same budget, true labels."""
    arrays = helpers_eval.digits()
    x, y = arrays.x_test, arrays.y_test
    model = helpers_eval.fitted()
    classifier = attacks.as_classifier(model)
    epsilon = helpers_eval.EPSILON_LINF
    pgd20 = suite.attack_suite()["pgd20_linf"]
    ours = np.mean(
        [
            per_example.run_attack(classifier, x, y, pgd20, epsilon=epsilon, seed=seed).mean()
            for seed in range(REFERENCE_SEEDS)
        ]
    )
    tf.random.set_seed(0)
    reference = np.mean(
        [
            helpers_eval.accuracy(
                model,
                projected_gradient_descent(
                    model,
                    tf.constant(x),
                    epsilon,
                    suite.STEP_FRACTION * epsilon,
                    20,
                    np.inf,
                    clip_min=0.0,
                    clip_max=1.0,
                    y=tf.constant(y),
                    rand_init=True,
                    sanity_checks=False,
                ),
                y,
            )
            for _ in range(REFERENCE_SEEDS)
        ]
    )
    assert 0.2 < reference < 0.9
    assert abs(ours - reference) <= CLEVERHANS_AGREEMENT, (
        f"ours {ours:.4f}, cleverhans {reference:.4f}"
    )


def _check_art_reference(tmp_path, names):
    try:
        import art  # noqa: F401
    except ImportError as e:  # A failure, not a skip: the cross-check must not vanish silently.
        pytest.fail(f"ART is not installed ({e}): pip install -r requirements-art.txt")
    arrays = helpers_eval.digits()
    report = _evaluate(
        helpers_eval.fitted(),
        tmp_path,
        arrays.x_test,
        arrays.y_test,
        attacks=names,
        apgd_steps=100,
        reference="art",
        batch_size=360,
        epsilon_fractions=(),
    )
    reference = report["reference"]
    assert (
        reference["library"] == "adversarial-robustness-toolbox"
        and reference["labels"] == "true labels y"
    )
    assert set(reference["attacks"]) == {f"art_{name}" for name in names}
    for name in names:
        entry = reference["attacks"][f"art_{name}"]
        parameters = entry["parameters"]
        epsilon = report["attacks"][name]["epsilon"]
        assert parameters["eps"] == epsilon and parameters["targeted"] is False
        if name.startswith("pgd20"):
            assert entry["class"] == "art.attacks.evasion.ProjectedGradientDescent"
            assert parameters["max_iter"] == 20 and parameters["num_random_init"] == 1
            assert parameters["eps_step"] == pytest.approx(epsilon / 4)
            tolerance = ART_PGD_AGREEMENT
        else:
            assert entry["class"] == "art.attacks.evasion.AutoProjectedGradientDescent"
            assert parameters["max_iter"] == 100 and parameters["nb_random_init"] == 1
            assert parameters["eps_step"] == pytest.approx(2 * epsilon)
            assert parameters["loss_type"] == "cross_entropy"
            tolerance = ART_APGD_AGREEMENT
        assert entry["ours_accuracy"] == report["attacks"][name]["accuracy"]
        assert abs(entry["difference"]) <= tolerance, (name, entry)
    with open(os.path.join(str(tmp_path), writers.REPORT_JSON)) as f:
        assert json.load(f)["reference"] == reference


def test_art_reference_linf(tmp_path):
    _check_art_reference(tmp_path, ["pgd20_linf", "apgd_ce_linf"])


@pytest.mark.slow
def test_art_reference_l2(tmp_path):
    _check_art_reference(tmp_path, ["pgd20_l2", "apgd_ce_l2"])


@pytest.mark.slow
def test_full_budgets_on_the_whole_test_split(tmp_path):
    """The default budgets (APGD 100 steps, Square 5000 queries) on all 360 test digits."""
    arrays = helpers_eval.digits()
    report = _evaluate(
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


def test_a_bf16_keras_model_is_attacked_in_float32(tmp_path, monkeypatch):
    """A network built under the bf16 policy gives, by default, the numbers of its float32 copy
    (same weights, same seed); `compute_dtype=None` attacks it in bf16; it is restored after."""
    from generalist_tf import models, precision

    fitted = helpers_eval.fitted()
    with precision.dtype_policy("bf16"):
        half = models.build("digits_cnn", (8, 8, 1), 10)
    half.set_weights(fitted.get_weights())
    seen = set()
    as_classifier = attacks.as_classifier

    def spy(model):
        if model is half:
            seen.add(model.compute_dtype)
        return as_classifier(model)

    monkeypatch.setattr(runner, "as_classifier", spy)
    x, y = helpers_eval.subset(64)
    options = dict(x=x, y=y, attacks=["pgd20_linf"], **NO_CURVES)
    ours = _evaluate(half, tmp_path / "half", **options)
    assert seen == {"float32"}
    reference = _evaluate(fitted, tmp_path / "fp32", **options)
    seen.clear()
    as_is = _evaluate(half, tmp_path / "as_is", compute_dtype=None, **options)
    assert seen == {"bfloat16"}
    assert half.compute_dtype == "bfloat16"
    for key in ("clean_accuracy", "union_accuracy"):
        assert ours[key] == reference[key], key
    assert (
        ours["attacks"]["pgd20_linf"]["accuracy"] == reference["attacks"]["pgd20_linf"]["accuracy"]
    )
    assert as_is["attacks"]["pgd20_linf"]["accuracy"] >= 0.0
    with pytest.raises(ValueError, match="compute_dtype"):
        _evaluate(half, tmp_path / "bad", compute_dtype="bfloat16", **options)
