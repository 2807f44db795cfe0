"""Two replicas on two logical CPUs train exactly like one replica on the same global batches.

This covers the measured Keras 3.15 / TF 2.21 pitfalls: loss scaling by the replica count,
optimizers built inside `strategy.scope()` (true step counts), a parent model with `call()`
under `fit`, and an XLA-compiled PGD nested in a non-XLA train step with 2 replicas.
"""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from generalist_tf import data, experiment
from generalist_tf.algorithm import mixing
from tests.helpers_train import config_from

STEPS = 4
VALIDATION_BATCH = 32  # several validation batches per epoch


def run(
    num_replicas,
    *,
    jit_compile="false",
    variant="generalist_d",
    epochs=2,
    steps_per_execution=1,
    communication_start=0.5,
    validation=False,
):
    cfg = config_from(
        "smoke.cfg",
        variant=variant,
        epochs=epochs,
        jit_compile=jit_compile,
        communication_start=communication_start,
        communication_period=1,
        steps_per_execution=steps_per_execution,
        workdir="/tmp/unused",
        steps_per_epoch=STEPS,
    )
    # Deterministic attacks, so both runs see the same adversarial examples.
    cfg = cfg.replace(
        linf_attack=dataclasses.replace(cfg.attacks.linf_attack, random_start=False),
        l2_attack=dataclasses.replace(cfg.attacks.l2_attack, random_start=False),
    )
    arrays = data.load("digits")
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(num_replicas)])
    model = experiment.build_experiment(cfg, strategy, arrays=arrays, checkpointing=False).model
    stream = data.train_dataset(
        arrays, batch_size=cfg.optimisation.batch_size, seed=cfg.runtime.seed
    )
    val = None
    if validation:
        val = data.eval_dataset(arrays.x_val, arrays.y_val, batch_size=VALIDATION_BATCH)
    model.fit(
        stream,
        epochs=epochs,
        steps_per_epoch=STEPS,
        validation_data=val,
        verbose=0,
    )
    return model


def weights(model):
    out = {"global": [w.numpy() for w in mixing.mixable_weights(model.global_network)]}
    for learner in model.learners:
        out[learner.name] = [w.numpy() for w in mixing.mixable_weights(learner.network)]
    return out


def assert_same_training(one, two, atol=2e-5):
    w1, w2 = weights(one), weights(two)
    for key in w1:
        for a, b in zip(w1[key], w2[key]):
            np.testing.assert_allclose(a, b, rtol=2e-4, atol=atol, err_msg=key)


def test_two_replicas_equal_one_replica():
    one, two = run(1), run(2)
    assert two.distribute_strategy.num_replicas_in_sync == 2
    assert_same_training(one, two)
    # True step counts: every learner's optimizer stepped once per global batch.
    for learner in two.learners:
        assert int(learner.optimizer.iterations.numpy()) == 2 * STEPS
    assert int(two.ema_updates.numpy()) == 2 * STEPS


def test_steps_per_execution_mixes_after_every_step():
    """N steps per compiled call: train_step mixes after each of them, same numbers as N = 1.

    Two replicas (Keras' own N-step loop fails there, keras-team/keras#19246); epoch 1 only
    mixes, epoch 2 also redistributes after every step; validation runs 4 batches per epoch.
    """
    one = run(2, epochs=2, communication_start=1.0, validation=True)
    two = run(2, epochs=2, communication_start=1.0, steps_per_execution=2, validation=True)
    assert_same_training(one, two, atol=1e-6)
    # Validation sees every batch (fit built its iterator for N-step calls).
    val_one, val_two = one.history.history, two.history.history
    for key in ("val_global/clean_accuracy", "val_global/pgd_accuracy", "val_global/loss"):
        np.testing.assert_allclose(val_two[key], val_one[key], rtol=1e-5, err_msg=key)
    assert int(two.ema_updates.numpy()) == 2 * STEPS
    for learner in two.learners:
        assert int(learner.optimizer.iterations.numpy()) == 2 * STEPS


def test_hand_made_mean_would_double_the_update():
    """Guards the scaling: the per-replica mean (a classic mistake) is caught by the check."""
    from generalist_tf.algorithm import learners

    original = learners.global_batch_mean
    learners.global_batch_mean = tf.reduce_mean
    try:
        one, two = run(1, epochs=1), run(2, epochs=1)
    finally:
        learners.global_batch_mean = original
    with pytest.raises(AssertionError):
        assert_same_training(one, two)


def test_xla_pgd_nested_in_two_replica_train_step():
    one, two = run(1, jit_compile="true", epochs=1), run(2, jit_compile="true", epochs=1)
    # XLA's CPU kernels sum in a batch-size-dependent order; a sign() step of PGD can flip
    # where a gradient coordinate is ~0, so the tolerance is looser than in graph mode.
    assert_same_training(one, two, atol=2e-4)


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["generalist_t", "msd", "avg"])
def test_two_replicas_equal_one_replica_other_variants(variant):
    # Not TRADES: its attack starts from Gaussian noise seeded per replica, so the examples of a
    # 1-replica and a 2-replica run differ by design (random_start does not switch it off).
    assert_same_training(run(1, variant=variant, epochs=1), run(2, variant=variant, epochs=1))


@pytest.mark.slow  # A fresh process with 3 devices; uneven batches on 2: test_compat (fast).
def test_three_replicas_train_and_evaluate_uneven_batches_like_one_device(tmp_path):
    """3 logical CPUs (a subprocess: this process has 2): training's final evaluation on 127
    examples (43 + 42 + 42) finishes, and `--mode=eval` on its export gives one device's masks."""
    import json

    from tests.helpers_train import run_main

    fast = ["--flagfile=flags/smoke.cfg", "--epochs=1", "--num_steps=2", "--eval_num_steps=2"]
    workdir = tmp_path / "run"
    result = run_main(
        *fast, "--num_cpu_replicas=3", "--batch_size=63", "--eval_examples=127",
        f"--workdir={workdir}", "--verbose=0",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    with open(workdir / "results.json") as f:
        test = json.load(f)["test"]
    assert round(test["global/clean_accuracy"] * 127, 4) % 1 == 0  # a count over 127 examples
    reports = []
    for replicas in (1, 3):
        out = tmp_path / f"eval{replicas}"
        result = run_main(
            "--mode=eval", f"--model={workdir}/export", "--dataset=digits",
            f"--workdir={out}", f"--num_cpu_replicas={replicas}", "--eval_examples=127",
            "--eval_batch_size=20", "--eval_attacks=fgsm_linf,pgd20_linf", "--verbose=0",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-3000:]
        with open(out / "report.json") as f:
            reports.append(json.load(f))
    one, three = reports
    assert three["clean_accuracy"] == one["clean_accuracy"]
    for name in ("fgsm_linf", "pgd20_linf"):
        assert three["attacks"][name]["accuracy"] == one["attacks"][name]["accuracy"], name
