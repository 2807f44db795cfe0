"""generalist_tf: Generalist adversarial training (CVPR 2023) and Generalist++ in TensorFlow/Keras.

The public API (`import generalist_tf as gtf`): `gtf.build_generalist`, `gtf.Attack`, `gtf.Communication`,
`gtf.evaluate_robustness`, `gtf.export_model`, `gtf.frontier`, `gtf.VARIANTS` (see `generalist_tf/api.py`), and
`gtf.build_experiment` (a whole run from a config: `generalist_tf/experiment.py`). Everything else is
internal. The names load on first use, so `import generalist_tf` alone does not start
TensorFlow (the command line's `--help` stays fast).
"""

__all__ = [
    "Attack",
    "Communication",
    "VARIANTS",
    "build_experiment",
    "build_generalist",
    "evaluate_robustness",
    "export_model",
    "frontier",
]


def __getattr__(name):
    if name == "build_experiment":
        from generalist_tf import experiment

        return experiment.build_experiment
    if name in __all__:
        from generalist_tf import api

        return getattr(api, name)
    raise AttributeError(f"module 'generalist_tf' has no attribute {name!r}")
