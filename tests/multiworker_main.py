"""Tests only: `python -m generalist_tf.main`, plus a dump of this process's final G.

`python -m tests.multiworker_main <main's flags>` with `GENERALIST_TF_TEST_DUMP=PATH` in the
environment trains exactly like `generalist_tf.main`, then writes the weights of G and of the
best G held by *this* process to `PATH` (an `.npz`). Non-chief workers export nothing, so this
is how the multi-worker tests see that every worker ends with the same G.
"""

import os

import numpy as np

from generalist_tf import experiment, main, train

DUMP_ENV = "GENERALIST_TF_TEST_DUMP"


def _dump(model, path: str) -> None:
    arrays = {}
    for prefix, network in (("global", model.global_network), ("best", model.best_network)):
        for i, weight in enumerate(network.get_weights()):
            arrays[f"{prefix}/{i}"] = weight
    np.savez(path, **arrays)


def _install_dump(path: str) -> None:
    """Wraps `experiment.build_model` (to keep the model) and `train.train` (to dump it)."""
    built = []
    build_model, train_fn = experiment.build_model, train.train

    def keeping_build_model(*args, **kwargs):
        built.append(build_model(*args, **kwargs))
        return built[-1]

    def dumping_train(config, strategy=None):
        results = train_fn(config, strategy)
        _dump(built[-1], path)
        return results

    experiment.build_model = keeping_build_model
    train.train = dumping_train


if __name__ == "__main__":
    _install_dump(os.environ[DUMP_ENV])
    main.run()
