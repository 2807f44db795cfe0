"""The evaluation section: validation and the selection of the exported G, the final table, the suite."""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from generalist_tf import names
from generalist_tf.attacks import budget
from generalist_tf.config.checks import fraction, require
from generalist_tf.evaluation import attack_names as suite

# Evaluation budgets by dataset family when --eval_epsilon_* is not given (issue protocol).
_EVAL_EPSILONS = {  # (linf, l2)
    "cifar10": (8 / 255, 0.5),
    "cifar100": (8 / 255, 0.5),
    "svhn_cropped": (8 / 255, 0.5),
    "mnist": (0.3, 2.0),
    "fashion_mnist": (0.1, 1.0),
    "digits": (0.3, 1.0),
}


@dataclasses.dataclass(frozen=True)
class Evaluation:
    """Per-epoch validation and the selection of the exported G; the final table; the suite."""

    eval_batch_size: int
    eval_attack: budget.Attack
    eval_epsilon_l2: float
    eval_examples: int | None
    table_examples: int | None
    eval_restarts: int
    eval_square_queries: int
    eval_apgd_steps: int
    eval_attacks: tuple[str, ...] | None
    reference: str | None
    surrogate: str | None
    final_eval: bool
    select_metric: str
    select_clean_floor: float
    val_examples: int | None
    val_every: int
    val_emas: bool
    train_clean_accuracy: bool

    @classmethod
    def from_flags(cls, v: Mapping[str, Any], learners: tuple[str, ...]) -> Evaluation:
        require(
            v["eval_batch_size"] >= 1, f"--eval_batch_size must be >= 1, got {v['eval_batch_size']}"
        )
        require(
            v["eval_examples"] >= 0,
            f"--eval_examples must be >= 0 (0: all), got {v['eval_examples']}",
        )
        if v["dataset"] not in _EVAL_EPSILONS:
            # No default budget for a user's npz: the scale of its threat model is theirs to state.
            for flag in ("eval_epsilon_linf", "eval_epsilon_l2"):
                require(bool(str(v[flag])), f"--{flag} is required with --dataset={v['dataset']}")
        default_linf, default_l2 = _EVAL_EPSILONS.get(v["dataset"], (None, None))
        eval_linf = (
            fraction(v, "eval_epsilon_linf") if str(v["eval_epsilon_linf"]) else default_linf
        )
        eval_l2 = fraction(v, "eval_epsilon_l2") if str(v["eval_epsilon_l2"]) else default_l2
        require(
            0 < eval_linf <= 1,
            f"--eval_epsilon_linf must be in (0, 1], got {v['eval_epsilon_linf']}",
        )
        require(eval_l2 > 0, f"--eval_epsilon_l2 must be > 0, got {v['eval_epsilon_l2']}")
        require(
            v["eval_num_steps"] >= 1, f"--eval_num_steps must be >= 1, got {v['eval_num_steps']}"
        )
        for flag in ("eval_restarts", "eval_square_queries", "eval_apgd_steps"):
            require(v[flag] >= 1, f"--{flag} must be >= 1, got {v[flag]}")
        require(
            v["reference"] in ("", "art"),
            f"--reference must be '' or 'art', got {v['reference']!r}",
        )
        if v["reference"] == "art" and (v["mode"] == "eval" or v["final_eval"]):
            import importlib.util

            require(
                importlib.util.find_spec("art") is not None,
                "--reference=art needs the Adversarial Robustness Toolbox: "
                "pip install -r requirements-art.txt",
            )
        eval_attacks = tuple(a.strip() for a in v["eval_attacks"].split(",") if a.strip()) or None
        if eval_attacks:
            eval_attacks = tuple(suite.expand_attacks(eval_attacks))
            unknown = sorted(set(eval_attacks) - set(suite.ATTACK_NAMES))
            require(
                not unknown,
                f"--eval_attacks: unknown {unknown}; choose from {', '.join(suite.ATTACK_NAMES)} "
                f"or one of the lists {', '.join(suite.ATTACK_SETS)}",
            )
        select_metric = select_key(v["select_metric"], learners)
        names.check_clean_floor(v["select_clean_floor"], "--select_clean_floor")
        require(
            v["val_examples"] >= 0, f"--val_examples must be >= 0 (0: all), got {v['val_examples']}"
        )
        require(v["val_every"] >= 1, f"--val_every must be >= 1, got {v['val_every']}")
        eval_examples = v["eval_examples"] or None
        return cls(
            eval_batch_size=v["eval_batch_size"],
            # PGD evaluation step: eps/4 (2/255 at 8/255, the protocol's setting).
            eval_attack=budget.validation_attack(eval_linf, v["eval_num_steps"]),
            eval_epsilon_l2=eval_l2,
            eval_examples=eval_examples,
            table_examples=(
                eval_examples if v["table_examples"] < 0 else (v["table_examples"] or None)
            ),
            eval_restarts=v["eval_restarts"],
            eval_square_queries=v["eval_square_queries"],
            eval_apgd_steps=v["eval_apgd_steps"],
            eval_attacks=eval_attacks,
            reference=v["reference"] or None,
            surrogate=v["surrogate"] or None,
            final_eval=v["final_eval"],
            select_metric=select_metric,
            select_clean_floor=v["select_clean_floor"],
            val_examples=v["val_examples"] or None,
            val_every=v["val_every"],
            val_emas=v["val_emas"],
            train_clean_accuracy=v["train_clean_accuracy"],
        )


# The selection rule's names and check live in `names` (the API runs them too).
CLEAN_PLUS_PGD = names.CLEAN_PLUS_PGD
SELECT_RULES = names.SELECT_RULES


def select_key(value: str, learner_names) -> str:
    """`names.select_key` naming `--select_metric`."""
    return names.select_key(value, learner_names, "--select_metric")
