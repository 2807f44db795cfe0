"""The names of the evaluation's attacks and of their lists, in pure Python.

`--eval_attacks` is checked against these by the configuration, without starting TensorFlow;
`suite` builds the attacks themselves.
"""

from __future__ import annotations

# Every attack of the suite, in report order: l_inf, then l_2.
ATTACK_NAMES = (
    "fgsm_linf",
    "pgd20_linf",
    "pgd100_linf",
    "cw_linf",
    "mim_linf",
    "apgd_ce_linf",
    "apgd_t_linf",
    "fab_t_linf",
    "square_linf",
    "pgd20_l2",
    "pgd100_l2",
    "apgd_ce_l2",
    "apgd_t_l2",
    "fab_t_l2",
    "square_l2",
)
# Attacks added after the first suite (FAB-T, the l_2 targeted and black-box attacks), in the
# order they were added. They run only when asked for, so that published numbers and the guarded
# reproduction rows keep their meaning: the default is every other attack.
LATER_ATTACKS = ("apgd_t_l2", "fab_t_linf", "fab_t_l2", "square_l2")
DEFAULT_ATTACKS = tuple(name for name in ATTACK_NAMES if name not in LATER_ATTACKS)
# Added when a surrogate model is given: PGD-20 on the surrogate, evaluated on the model.
TRANSFER_ATTACK = "transfer_pgd20_linf"
# AutoAttack's standard version (Croce & Hein 2020; RobustBench's rule), per norm: APGD-CE,
# APGD-T (9 targets), FAB-T (9 targets), Square (5,000 queries); 100 iterations each.
STANDARD_ATTACKS = {
    "linf": ("apgd_ce_linf", "apgd_t_linf", "fab_t_linf", "square_linf"),
    "l2": ("apgd_ce_l2", "apgd_t_l2", "fab_t_l2", "square_l2"),
}
STANDARD_ITERATIONS = 100
STANDARD_SQUARE_QUERIES = 5000
# Named lists for `--eval_attacks` (alone): the default, the standard list of both norms, all.
ATTACK_SETS = {
    "default": DEFAULT_ATTACKS,
    "standard": tuple(name for names in STANDARD_ATTACKS.values() for name in names),
    "all": ATTACK_NAMES,
}
# The random stream of an attack is its position here: append only, so that adding an attack
# never changes another one's numbers.
STREAM_ORDER = DEFAULT_ATTACKS + (TRANSFER_ATTACK,) + LATER_ATTACKS
# Black-box and transfer attacks; every other attack is a white-box gradient attack.
NON_GRADIENT_ATTACKS = ("square_linf", "square_l2", TRANSFER_ATTACK)
# Targeted DLR needs at least 4 classes; these are left out (with a warning) below that.
TARGETED_DLR_ATTACKS = ("apgd_t_linf", "apgd_t_l2")
# Third-party libraries that `evaluate_model(reference=...)` can cross-check against.
REFERENCES = ("art",)


def expand_attacks(attacks) -> list[str]:
    """The attack names of `attacks`: None (the default list), a name of `ATTACK_SETS`, or names."""
    if attacks is None:
        return list(DEFAULT_ATTACKS)
    if isinstance(attacks, str):
        attacks = [attacks]
    attacks = list(attacks)
    if len(attacks) == 1 and attacks[0] in ATTACK_SETS:
        return list(ATTACK_SETS[attacks[0]])
    return attacks
