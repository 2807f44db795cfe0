"""Trains `tests.user_network` through the Python API on 2 logical CPU replicas and saves G.

    python -m tests.api_two_replicas_main OUT.keras

The same run as `tests/test_api.py`'s command line (`API_VS_CLI_FLAGS`): the same digits
pipeline (`data.train_dataset` / `data.eval_dataset`, a user's tf.data would do), seed and every
hyperparameter passed explicitly to `gtf.build_generalist`; a fresh process, as the CLI's is.
"""

import sys

from generalist_tf import distribute

distribute.configure_cpu_replicas(2)

import tensorflow as tf  # noqa: E402

import generalist_tf as gtf  # noqa: E402
from generalist_tf import data  # noqa: E402
from tests import user_network  # noqa: E402

EPOCHS, BATCH, SEED = 2, 64, 3


def main(out: str) -> None:
    tf.config.experimental.enable_op_determinism()
    arrays = data.load("digits")
    steps = len(arrays.x_train) // BATCH
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = gtf.build_generalist(
            lambda: user_network.build(arrays.image_shape, arrays.num_classes),
            epochs=EPOCHS,
            steps_per_epoch=steps,
            variant="generalist_d",
            linf_attack=gtf.Attack("linf", 0.3, 0.075, 3),
            eval_attack=gtf.Attack("linf", 0.3, 0.075, 2),
            learning_rate="0:0.05,1:0.005",
            natural_weight_decay=5e-4,
            robust_weight_decay=5e-4,
            ema_decay=0.9,
            communication=gtf.Communication(0.5, 1, "every_batch"),
            mixing="natural=0:0,1/2:0,1:0.5;linf_pgd=0:1,1/2:1,1:0.5",
            seed=SEED,
        )
        model.compile()
    train = data.train_dataset(arrays, batch_size=BATCH, seed=SEED, start_step=0)
    val = data.eval_dataset(arrays.x_val, arrays.y_val, batch_size=BATCH)
    model.fit(train, epochs=EPOCHS, steps_per_epoch=steps, validation_data=val, verbose=0)
    model.global_model().save(out)  # G, a plain keras.Model sharing nothing with the learners


if __name__ == "__main__":
    main(sys.argv[1])
