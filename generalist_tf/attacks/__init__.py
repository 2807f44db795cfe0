"""Attacks, one module per family, all pure TensorFlow functions compiled per device.

  budget      the `Attack` budget type and the one argument check (pure Python: the config
              uses them without starting TensorFlow)
  compile     the one graph/XLA dispatch, trace key and budget-as-tensor convention
  geometry    balls, projections, steepest-ascent steps, random starts
  losses      the one margin, CE / CW, DLR, TRADES' KL
  classifier  the evaluation's wrapper (inference mode, float32 logits, zero-not-None gradients)
  projected   PGD (l_inf, l_2), FGSM, TRADES' KL-PGD, MSD: the training attacks
  momentum    MIM;  auto_pgd: APGD-CE / -DLR / -T;  random_search: Square (l_inf, l_2);  fab: FAB-T

Every attack runs the model with `training=False`, returns images inside its ball and [0, 1]
with no gradient, and computes exactly the number of steps (or queries) it is given. The public
names below load their module on first use, so `from generalist_tf.attacks import budget` (the
configuration does) does not start TensorFlow.
"""

import importlib

# Public name -> the module that defines it.
_HOME = {
    "APGD_LOSSES": "auto_pgd",
    "APGD_TARGET_CLASSES": "auto_pgd",
    "CW_KAPPA": "losses",
    "Classifier": "classifier",
    "Attack": "budget",
    "JIT_POLICIES": "budget",
    "LOSSES": "budget",
    "NORMS": "budget",
    "apgd": "auto_pgd",
    "apgd_checkpoints": "auto_pgd",
    "as_classifier": "classifier",
    "ascent_direction": "geometry",
    "attack_loss": "losses",
    "check_budget": "budget",
    "dlr_loss": "losses",
    "fab_t": "fab",
    "fgsm": "projected",
    "kl_divergence": "losses",
    "margin": "losses",
    "mim": "momentum",
    "minimal_adversarial": "fab",
    "msd": "projected",
    "pgd": "projected",
    "pgd_with": "projected",
    "project": "geometry",
    "random_init": "geometry",
    "resolve_jit_compile": "compile",
    "square": "random_search",
    "square_l2": "random_search",
    "square_p": "random_search",
    "trace_key": "compile",
    "trades_pgd": "projected",
}

__all__ = sorted(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_HOME))
