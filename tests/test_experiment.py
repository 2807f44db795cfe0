"""`experiment.build_experiment`: one run assembled from a config, restored from its workdir."""

import os
import re

import numpy as np
import pytest
import tensorflow as tf

import generalist_tf as gtf
from generalist_tf import checkpoints, data, experiment, timing
from generalist_tf.algorithm import mixing
from tests.helpers_train import ROOT, config_from
from tests.user_network import build as user_network


def g_weights(model):
    return [w.numpy() for w in mixing.mixable_weights(model.global_network)]


@pytest.fixture(scope="module")
def digits():
    return data.load("digits")


def test_an_experiment_trains_checkpoints_and_resumes_where_it_stopped(tmp_path, digits):
    cfg = config_from("smoke.cfg", workdir=str(tmp_path))
    strategy = tf.distribute.get_strategy()
    exp = gtf.build_experiment(cfg, strategy, arrays=digits)
    assert exp.start_step == 0 and exp.steps_per_epoch == len(digits.x_train) // 64
    exp.model.fit(
        exp.train_data(),
        epochs=1,
        steps_per_epoch=exp.steps_per_epoch,
        validation_data=exp.validation_data(),
        callbacks=exp.callbacks(),
        verbose=0,
    )
    assert (tmp_path / checkpoints.CHECKPOINTS).is_dir()
    assert (tmp_path / experiment.TENSORBOARD).is_dir()  # the chief logs to TensorBoard
    again = gtf.build_experiment(cfg, strategy, arrays=digits)
    assert again.start_step == exp.steps_per_epoch
    for restored, trained in zip(g_weights(again.model), g_weights(exp.model), strict=True):
        np.testing.assert_array_equal(restored, trained)
    # The resumed stream starts at the restored step: its first batch is the fresh stream's
    # batch number `start_step`.
    resumed = next(iter(again.train_data()))[1].numpy()
    fresh = list(exp.train_data(0).take(exp.steps_per_epoch + 1))[-1][1].numpy()
    np.testing.assert_array_equal(resumed, fresh)


def test_your_own_network_and_no_checkpoints(tmp_path, digits):
    cfg = config_from("smoke.cfg", workdir=str(tmp_path))
    exp = experiment.build_experiment(
        cfg,
        tf.distribute.get_strategy(),
        arrays=digits,
        build_network=user_network_for(digits),
        checkpointing=False,
    )
    assert exp.manager is None and exp.callbacks()[0].__class__.__name__ == "TensorBoard"
    reference = user_network_for(digits)()
    assert [w.shape for w in exp.model.global_network.weights] == [
        w.shape for w in reference.weights
    ]
    assert not (tmp_path / checkpoints.CHECKPOINTS).exists()


def user_network_for(arrays):
    return lambda: user_network(arrays.image_shape, arrays.num_classes)


def test_a_batch_larger_than_the_split_is_refused_in_one_line(tmp_path, digits):
    cfg = config_from("smoke.cfg", workdir=str(tmp_path), batch_size=4096)
    with pytest.raises(ValueError, match=r"^--batch_size=4096 exceeds the \d+ training examples$"):
        experiment.build_experiment(cfg, tf.distribute.get_strategy(), arrays=digits)


def readme_example() -> str:
    with open(os.path.join(ROOT, "docs", "python_api.md")) as f:
        section = f.read().split("A whole run from a flagfile", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_experiment_example_runs_and_resumes(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    code = readme_example().replace("/tmp/qs_api", str(tmp_path))
    assert str(tmp_path) in code
    exec(code, {})
    epoch = int(re.search(r"epoch (\d+)", capsys.readouterr().out).group(1))
    assert epoch in (1, 2)
    exec(code, {})  # a second run finds both epochs done: fit runs nothing, the G is restored
    assert int(re.search(r"epoch (\d+)", capsys.readouterr().out).group(1)) == epoch


def test_phases_are_timed_only_for_the_caller_that_asks(tmp_path, monkeypatch):
    """`train` passes its run's timer; any other build leaves the process's timer alone (a
    later `train` in this process would otherwise report phases that were not its own)."""
    monkeypatch.setattr(timing, "RUN", timing.Phases())
    cfg = config_from("smoke.cfg", workdir=str(tmp_path))
    strategy = tf.distribute.get_strategy()
    experiment.build_experiment(cfg, strategy, checkpointing=False)
    assert timing.RUN.wall == {}
    mine = timing.Phases()
    experiment.build_experiment(cfg, strategy, checkpointing=False, phases=mine)
    assert list(mine.wall) == ["data", "build and restore"]
