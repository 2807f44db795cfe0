"""Third-party cross-checks of our attacks: the Adversarial Robustness Toolbox (ART)."""

from __future__ import annotations

import time

import keras
import numpy as np
from absl import logging

from generalist_tf.evaluation import suite

# Our attacks that the reference cross-check mirrors, with ART's class and norm for each.
_ART_MIRRORS = {
    "pgd20_linf": ("ProjectedGradientDescent", "inf"),
    "pgd20_l2": ("ProjectedGradientDescent", 2),
    "apgd_ce_linf": ("AutoProjectedGradientDescent", "inf"),
    "apgd_ce_l2": ("AutoProjectedGradientDescent", 2),
}


def _import_art():
    """The `art` package.

    Raises:
      RuntimeError: ART is not installed (with the command that installs it).
    """
    try:
        import art
        import art.attacks.evasion
        import art.estimators.classification
    except ImportError as e:
        raise RuntimeError(
            "reference='art' needs the Adversarial Robustness Toolbox: "
            f"pip install -r requirements-art.txt ({e})"
        ) from None
    return art


def art_estimator(model, x):
    """`model` (images in [0, 1] -> logits) as ART's `TensorFlowV2Classifier`, shaped after `x`:
    the pixel box as its clip values, cross-entropy on logits as its loss.

    Raises:
      RuntimeError: ART is not installed (with the command that installs it).
    """
    return _import_art().estimators.classification.TensorFlowV2Classifier(
        model=model,
        nb_classes=int(model(x[:1]).shape[-1]),
        input_shape=tuple(x.shape[1:]),
        loss_object=keras.losses.CategoricalCrossentropy(from_logits=True),
        clip_values=(0.0, 1.0),
    )


def art_reference(
    model, x, y, *, names, epsilons, apgd_steps, restarts, batch_size, seed, ours
) -> dict:
    """Runs ART's PGD and APGD-CE on the same examples, with every parameter explicit.

    ART's defaults differ from the protocol (e.g. eps 0.3, eps_step 0.1, 5 random inits for
    APGD), so each is set: PGD-20 with eps_step epsilon/4 and one random start per restart; APGD
    with eps_step 2 * epsilon (its initial step), `max_iter=apgd_steps`, `nb_random_init=
    restarts` and the cross-entropy loss; always the true labels. ART draws its random starts
    from NumPy's global generator: it is seeded here and restored afterwards.

    Returns:
      {"library", "version", "labels", "attacks": {art_<ours>: {"class", "parameters",
      "accuracy", "ours", "ours_accuracy", "difference", "seconds"}}}.

    Raises:
      RuntimeError: ART is not installed (with the command that installs it).
    """
    art = _import_art()
    evasion = art.attacks.evasion
    classifier = art_estimator(model, x)
    results = {}
    state = np.random.get_state()
    try:
        for name in names:
            if name not in _ART_MIRRORS:
                continue
            class_name, art_norm = _ART_MIRRORS[name]
            epsilon = epsilons["linf" if art_norm == "inf" else "l2"]
            if class_name == "ProjectedGradientDescent":
                parameters = dict(
                    norm=art_norm,
                    eps=epsilon,
                    eps_step=suite.STEP_FRACTION * epsilon,
                    max_iter=20,
                    num_random_init=restarts,
                    targeted=False,
                    batch_size=batch_size,
                )
            else:
                parameters = dict(
                    norm=art_norm,
                    eps=epsilon,
                    eps_step=2.0 * epsilon,
                    max_iter=apgd_steps,
                    nb_random_init=restarts,
                    loss_type="cross_entropy",
                    targeted=False,
                    batch_size=batch_size,
                )
            np.random.seed(seed)
            started = time.perf_counter()
            attack = getattr(evasion, class_name)(classifier, verbose=False, **parameters)
            x_adv = attack.generate(x, y=y).astype(np.float32)
            suite.check_threat_model(
                f"ART {class_name}", x_adv, x, "linf" if art_norm == "inf" else "l2", epsilon
            )
            accuracy = float(np.mean(suite.predict_labels(model, x_adv) == y))
            results[f"art_{name}"] = {
                "class": f"art.attacks.evasion.{class_name}",
                "parameters": parameters,
                "accuracy": accuracy,
                "ours": name,
                "ours_accuracy": ours[name]["accuracy"],
                "difference": ours[name]["accuracy"] - accuracy,
                "seconds": round(time.perf_counter() - started, 3),
            }
            logging.info(
                "ART %s: accuracy %.4f (ours %s: %.4f)",
                class_name,
                accuracy,
                name,
                ours[name]["accuracy"],
            )
    finally:
        np.random.set_state(state)
    return {
        "library": "adversarial-robustness-toolbox",
        "version": art.__version__,
        "labels": "true labels y",
        "attacks": results,
    }
