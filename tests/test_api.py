"""The public Python API: the README example runs as written; bad inputs fail in one line."""

import os
import re
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import generalist_tf as gtf
from generalist_tf import api
from tests import helpers_eval, helpers_train
from tests.helpers_train import ROOT


def readme_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    section = text.split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_example_runs_as_written(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", readme_example()],
        cwd=tmp_path,
        env=dict(os.environ, PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL="2"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    clean = float(re.search(r"clean (\d\.\d+)", result.stdout).group(1))
    assert clean > 0.5, result.stdout  # trained well above chance (0.1) in 5 short epochs
    reloaded = keras.models.load_model("/tmp/my_generalist.keras")
    served = tf.saved_model.load("/tmp/my_generalist").signatures["serving_default"]
    images = np.random.default_rng(0).uniform(size=(3, 8, 8, 1)).astype(np.float32)
    np.testing.assert_allclose(reloaded(images), served(images=images)["logits"], atol=1e-5)


def test_the_package_s_public_names_are_the_api_module_s():
    """`gtf.<name>` resolves lazily to `api.<name>` (`build_experiment`: `experiment`'s)."""
    assert api.__all__ == gtf.__all__
    for name in gtf.__all__:
        if name != "build_experiment":
            assert getattr(gtf, name) is getattr(api, name), name


def small_network(softmax=False, classes=10):
    inputs = keras.Input((8, 8, 1))
    h = keras.layers.Flatten()(inputs)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(h)
    return keras.Model(inputs, outputs)


def build(**kwargs):
    kwargs.setdefault("epochs", 3)
    kwargs.setdefault("steps_per_epoch", 2)
    kwargs.setdefault("linf_attack", gtf.Attack("linf", 0.1, 0.05, 1))
    kwargs.setdefault("communication", None)
    return gtf.build_generalist(kwargs.pop("network", small_network), **kwargs)


def dataset(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(4)


def test_a_builder_returning_probabilities_is_refused():
    with pytest.raises(ValueError, match="build_network returns probabilities"):
        build(network=lambda: small_network(softmax=True))


@pytest.mark.parametrize(
    "images, labels, message",
    [
        (
            np.full((8, 8, 8, 1), 255.0, np.float32),
            np.zeros(8, np.int64),
            r"images must be floats in \[0, 1\]",
        ),
        (
            np.zeros((8, 8, 8, 1), np.float32),
            np.full(8, 10, np.int64),
            r"labels must lie in \[0, 10\)",
        ),
    ],
)
def test_fit_checks_the_pipeline_before_any_work(images, labels, message):
    model = build()
    model.compile()
    with pytest.raises(ValueError, match=message):
        model.fit(dataset(images, labels), validation_data=dataset(images, labels), epochs=1)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="variant='generalist_x' is unknown"):
        build(variant="generalist_x")
    with pytest.raises(ValueError, match="^variant=custom needs tasks and mixing"):
        build(variant="custom", tasks=["natural", "linf_pgd"])
    with pytest.raises(ValueError, match=r"tasks: unknown \['linf_fgsm'\]"):
        build(variant="custom", tasks=["linf_fgsm"], mixing="linf_fgsm=0:1")
    with pytest.raises(
        ValueError,
        match="^tasks is only read with variant=custom, got tasks=natural with variant=pgd_at",
    ):
        build(variant="pgd_at", tasks=["natural"])
    model = build(
        variant="custom", tasks=["natural", "linf_pgd"], mixing="natural=0:0.5;linf_pgd=0:0.5"
    )
    assert [learner.task for learner in model.learners] == ["natural", "linf_pgd"]
    model = build()
    with pytest.raises(ValueError, match="Generalist.compile takes only steps_per_execution"):
        model.compile(optimizer="adam")
    model.compile()
    x, y = np.zeros((8, 8, 8, 1), np.float32), np.zeros(8, np.int64)
    with pytest.raises(ValueError, match="validation_data is empty"):
        model.fit(dataset(x, y), validation_data=dataset(x, y).take(0), epochs=1, verbose=0)
    model.fit(dataset(x, y), epochs=1, verbose=0)  # no validation: trains, selects nothing
    with pytest.raises(ValueError, match="no validated epoch yet; fit with validation_data"):
        model.best_model()


def test_g_comes_back_as_a_plain_model_sharing_nothing():
    model = build()
    g = model.global_model()
    assert isinstance(g, keras.Model) and not isinstance(g, type(model))
    shared = {id(v) for v in g.weights} & {id(v) for v in model.weights}
    assert not shared
    for got, want in zip(g.get_weights(), model.global_network.get_weights()):
        np.testing.assert_array_equal(got, want)


# The command-line twin of tests/api_two_replicas_main.py: every setting it passes, as flags.
API_VS_CLI_FLAGS = (
    "--dataset=digits",
    "--model=tests.user_network:build",
    "--variant=generalist_d",
    "--epochs=2",
    "--batch_size=64",
    "--epsilon=0.3",
    "--step_size=0.075",
    "--num_steps=3",
    "--eval_epsilon_linf=0.3",
    "--eval_num_steps=2",
    "--eval_batch_size=64",
    "--learning_rate=0:0.05,1:0.005",
    "--natural_weight_decay=5e-4",
    "--robust_weight_decay=5e-4",
    "--ema_decay=0.9",
    "--communication_start=0.5",
    "--communication_period=1",
    "--mixing=natural=0:0,1/2:0,1:0.5;linf_pgd=0:1,1/2:1,1:0.5",
    "--seed=3",
    "--deterministic",
    "--num_cpu_replicas=2",
    "--noval_emas",
    "--nofinal_eval",
    "--verbose=0",
)


def test_api_on_two_replicas_gives_the_g_of_the_command_line(tmp_path):
    """A network outside our registry (functional, BatchNorm, Dropout) trained through the API
    on a tf.data pipeline on 2 logical CPU replicas, and through the command line
    (`--model=tests.user_network:build`, 2 replicas, same flags and seed): the same G."""
    cli = helpers_train.run_main(*API_VS_CLI_FLAGS, f"--workdir={tmp_path / 'cli'}")
    assert cli.returncode == 0, cli.stderr[-2000:]
    api_g = str(tmp_path / "api_g.keras")
    api = subprocess.run(
        [sys.executable, "-m", "tests.api_two_replicas_main", api_g],
        cwd=helpers_train.ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert api.returncode == 0, api.stderr[-2000:]
    ours = keras.models.load_model(api_g)
    theirs = keras.models.load_model(str(tmp_path / "cli" / "export_last.keras"))
    assert [w.shape for w in ours.weights] == [w.shape for w in theirs.weights]
    assert any(isinstance(layer, keras.layers.Dropout) for layer in ours.layers)
    for a, b in zip(ours.weights, theirs.weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6, err_msg=a.path)
    x = helpers_eval.digits().x_test[:64]
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-5)


def test_natural_lr_scale_moves_only_the_natural_learner_and_is_refused_alike():
    """One rate schedule, scaled for the natural learner; a scale <= 0 is refused by the same
    check through both doors (`natural_lr_scale` here, `--natural_lr_scale` on the command line)."""
    model = gtf.build_generalist(
        small_network,
        epochs=4,
        steps_per_epoch=2,
        linf_attack=gtf.Attack("linf", 0.1, 0.05, 1),
        communication=gtf.Communication(0.5, 1),
        natural_lr_scale=4.0,
        learning_rate="0:0.02,1:0.01",
    )
    natural, robust = (
        learner.optimizer.get_config()["learning_rate"] for learner in model.learners
    )
    # Scaled from the first redistribution (epoch 2 of 4) on; the robust learner never.
    assert natural["config"]["scale"] == 4.0 and natural["config"]["scale_from_epoch"] == 2
    assert robust["config"]["scale"] == 1.0
    with pytest.raises(ValueError, match="^natural_lr_scale must be > 0, got 0"):
        build(natural_lr_scale=0.0)
    from tests import helpers_train

    with pytest.raises(ValueError, match="^--natural_lr_scale must be > 0, got -1"):
        helpers_train.config_from("quickstart.cfg", workdir="/tmp/x", natural_lr_scale=-1)


def test_a_callback_fit_attaches_itself_is_refused_not_dropped():
    from generalist_tf.algorithm import callbacks

    model = build()
    model.compile()
    x, y = np.zeros((8, 8, 8, 1), np.float32), np.zeros(8, np.int64)
    mine = callbacks.BestGlobalCallback("val_global/pgd_accuracy")
    with pytest.raises(ValueError, match="^callbacks: BestGlobalCallback is attached by"):
        model.fit(dataset(x, y), validation_data=dataset(x, y), epochs=1, callbacks=[mine])


@pytest.mark.parametrize(
    "argument, value, message",
    [
        ("ema_decay", 1.0, r"ema_decay must be in \[0, 1\), got 1.0"),
        ("trades_beta", -1.0, "trades_beta must be >= 0, got -1.0"),
        ("momentum", 1.0, r"momentum must be in \[0, 1\), got 1.0"),
        ("natural_weight_decay", -1.0, "natural_weight_decay must be >= 0, got -1.0"),
        ("robust_weight_decay", -0.5, "robust_weight_decay must be >= 0, got -0.5"),
        ("learning_rate", "0:0.1,1:0", "learning_rate values must be > 0, got 0:0.1,1:0"),
        ("epochs", 0, "epochs must be an integer >= 1, got 0"),
        ("variant", "generalist_x", "variant='generalist_x' is unknown"),
        ("mixing", "natural=0:1,1:1", r"mixing must give one schedule per learner"),
    ],
)
def test_python_refuses_what_the_command_line_refuses(argument, value, message):
    """One check for both doors: the argument's name from Python, the flag's on the command line."""
    from tests import helpers_train

    with pytest.raises(ValueError, match=f"^{message}"):
        build(**{argument: value})
    with pytest.raises(ValueError, match=f"^--{message}"):
        helpers_train.config_from("quickstart.cfg", workdir="/tmp/x", **{argument: value})


def test_a_repeated_learner_is_refused_alike():
    from tests import helpers_train

    mixing = "natural=0:0.5,1:0.5;linf_pgd=0:0.5,1:0.5"
    with pytest.raises(ValueError, match="^tasks must not repeat a learner, got natural,natural"):
        build(variant="custom", tasks=["natural", "natural"], mixing=mixing)
    with pytest.raises(ValueError, match="^--learners must not repeat a learner"):
        helpers_train.config_from(
            "quickstart.cfg",
            workdir="/tmp/x",
            variant="custom",
            learners="natural,natural",
            mixing=mixing,
        )


def test_a_communication_that_never_fires_is_refused_alike():
    """3 epochs, first communication at epoch 7: Python names the fields, the flags theirs."""
    from tests import helpers_train

    with pytest.raises(
        ValueError,
        match=r"^communication.start=1 with communication.period=7 "
        r"first communicates at epoch 7, after the last epoch 3",
    ):
        build(communication=gtf.Communication(1.0, 7))
    with pytest.raises(ValueError, match="^communication.mode must be one of"):
        build(communication=gtf.Communication(0.5, 1, "sometimes"))
    with pytest.raises(ValueError, match=r"^--communication_start=1 with --communication_period=7"):
        helpers_train.config_from(
            "quickstart.cfg",
            workdir="/tmp/x",
            epochs=3,
            communication_start=1,
            communication_period=7,
        )


def test_selection_and_attack_budgets_are_refused_alike():
    from tests import helpers_train

    def cli(**overrides):
        return helpers_train.config_from("quickstart.cfg", workdir="/tmp/x", **overrides)

    with pytest.raises(ValueError, match="^select_metric='val_global/pgd_acc' is neither a rule"):
        build(select_metric="val_global/pgd_acc")
    with pytest.raises(ValueError, match="^--select_metric='val_global/pgd_acc' is neither"):
        cli(select_metric="val_global/pgd_acc")
    with pytest.raises(ValueError, match=r"^select_clean_floor must be in \[0, 1\], got 1.5"):
        build(select_clean_floor=1.5)
    with pytest.raises(ValueError, match=r"^--select_clean_floor must be in \[0, 1\], got 1.5"):
        cli(select_clean_floor=1.5)
    # A named rule means the same key from both doors (it used to reach fit unresolved).
    assert build(select_metric="pgd").algorithm.select_metric == "val_global/pgd_accuracy"
    with pytest.raises(
        ValueError, match=r"^linf_attack.step_size must be in \(0, linf_attack.epsilon=0.1\]"
    ):
        build(linf_attack=gtf.Attack("linf", 0.1, 0.5, 1))
    with pytest.raises(ValueError, match=r"^--step_size must be in \(0, --epsilon=0.3\], got 0.5"):
        cli(step_size=0.5)
    with pytest.raises(ValueError, match="^eval_attack.num_steps must be an integer >= 1, got 0"):
        build(eval_attack=gtf.Attack("linf", 0.1, 0.025, 0))
    with pytest.raises(ValueError, match="^--eval_num_steps must be >= 1, got 0"):
        cli(eval_num_steps=0)
