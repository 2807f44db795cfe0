"""The reproduction suites: their methods, flagfiles, ablations and table columns."""

from __future__ import annotations

import dataclasses

METHODS = (
    "standard",
    "pgd_at",
    "trades",
    "avg",
    "max",
    "msd",
    "generalist_d",
    "generalist_d_multinorm",
    "generalist_t",
)
COLUMNS = (
    ("clean", "clean"),
    ("pgd20_linf", "PGD-20 l_inf"),
    ("worst_linf", "worst-case l_inf"),
    ("worst_l2", "worst-case l_2"),
    ("union", "union (l_inf and l_2)"),
)
# The exported G (the best on validation by `--select_metric`, default clean + PGD accuracy)
# against the last G, as generalist_tf/docs/algorithm.md asks.
SELECTION_COLUMNS = (
    ("exported_clean", "exported G clean"),
    ("exported_pgd20", "exported G PGD-20"),
    ("last_clean", "last G clean"),
    ("last_pgd20", "last G PGD-20"),
)


@dataclasses.dataclass(frozen=True)
class Suite:
    """A reproduction: which flagfiles (`flags/<prefix>_<method>.cfg`), overrides, outputs.

    `claim_margin`: the verdict's tolerance on worst-case l_inf (Generalist-D may trail PGD-AT
    by at most this many points and still count as "equal robustness").
    """

    prefix: str
    flags: dict
    results: str
    plot: str
    claim_margin: float
    ablations: tuple[str, ...]
    # The clean and PGD-20 columns from training's final table on the whole test split (the
    # suite then runs on a subset), not from the suite's report.
    table_columns_from_full_split: bool = False
    # The committed results ledger (`ledger`) that carries finished runs across sessions.
    ledger: str = ""


_DIGITS_ABLATIONS = (
    "gd_select_pgd",
    "gd_no_ema",
    "gd_period5",
    "gd_no_communication",
    "gd_robust_end_07",
    "multinorm_linf_first",
)
SUITES = {
    "digits": Suite(
        "digits", {}, "RESULTS.md", "tradeoff.png", 2.0, _DIGITS_ABLATIONS, ledger="RESULTS.json"
    ),
    "mnist": Suite(
        "digits",
        {"dataset": "mnist", "model": "small_cnn"},
        "RESULTS.md",
        "tradeoff.png",
        2.0,
        _DIGITS_ABLATIONS,
    ),
    "fashion_mnist": Suite(
        "fashion_mnist",
        {},
        "RESULTS_fashion_mnist.md",
        "tradeoff_fashion_mnist.png",
        1.0,
        (
            "gd_select_pgd",
            "gd_ema_0999",
            "gd_comm_after_mixing",
            "gd_period10",
            "gd_robust_end_07",
        ),
        table_columns_from_full_split=True,
        ledger="RESULTS_fashion_mnist.json",
    ),
}


# Single-seed ablations of the Generalist choices (generalist_tf/docs/algorithm.md): label -> (what, method, flags).
ABLATIONS = {
    "gd_select_pgd": (
        "Generalist-D, G selected on validation PGD accuracy alone (--select_metric=pgd)",
        "generalist_d",
        {"select_metric": "pgd"},
    ),
    "gd_no_ema": ("Generalist-D, no EMA (--ema_decay=0)", "generalist_d", {"ema_decay": 0}),
    "gd_ema_0999": (
        "Generalist-D, the official EMA alpha 0.999 unscaled (a 1,000-step window)",
        "generalist_d",
        {"ema_decay": 0.999},
    ),
    "gd_comm_after_mixing": (
        "Generalist-D, first redistribution after mixing starts (--communication_start=0.7)",
        "generalist_d",
        {"communication_start": "0.7"},
    ),
    "gd_period10": (
        "Generalist-D, redistribution every 10th epoch (twice the official period)",
        "generalist_d",
        {"communication_period": 10},
    ),
    "gd_period5": (
        "Generalist-D, redistribution every 5th epoch (the official period; ours is 2)",
        "generalist_d",
        {"communication_period": 5},
    ),
    "gd_no_communication": (
        "Generalist-D, no redistribution (--communication_mode=none)",
        "generalist_d",
        {"communication_mode": "none"},
    ),
    "gd_robust_end_07": (
        "Generalist-D, robust weight ends at 0.7 instead of 0.4",
        "generalist_d",
        {"mixing": "natural=0:0,2/3:0,1:0.3;linf_pgd=0:1,2/3:1,1:0.7"},
    ),
    "multinorm_linf_first": (
        "Generalist-D multi-norm, l_inf weight 1 until 2E/3, then to 0.5 (ours: 0.5 throughout)",
        "generalist_d_multinorm",
        {"mixing": "linf_pgd=0:1,2/3:1,1:0.5;l2_pgd=0:0,2/3:0,1:0.5"},
    ),
}


# The reference trade-off frontier (single seed): the baselines along their own knobs, each
# trained like its method's row but without the attack suite (`final_eval` false): the frontier
# evaluator scores every kept model alike (`models/<suite>/<label>_seed<seed>.keras`), so the
# points can be re-scored at any budget without training. Every radius is evaluated at the
# suite's `--eval_epsilon_linf`; the training step stays epsilon / 4.
def _pgd_at_radius(epsilon: float) -> dict:
    return {"epsilon": epsilon, "step_size": epsilon / 4, "final_eval": "false"}


REFERENCE_FRONTIER = {
    "ref_standard": ("Standard training (frontier end)", "standard", {"final_eval": "false"}),
    "ref_pgd_at_eps0.1": ("PGD-AT, l_inf 0.1", "pgd_at", _pgd_at_radius(0.1)),
    "ref_pgd_at_eps0.075": ("PGD-AT, l_inf 0.075", "pgd_at", _pgd_at_radius(0.075)),
    "ref_pgd_at_eps0.05": ("PGD-AT, l_inf 0.05", "pgd_at", _pgd_at_radius(0.05)),
    **{
        f"ref_trades_beta{beta}": (
            f"TRADES, beta {beta}",
            "trades",
            {"trades_beta": beta, "final_eval": "false"},
        )
        for beta in (1, 3, 6, 12)
    },
}
ABLATIONS.update(REFERENCE_FRONTIER)

# Generalist-D runs designed from the drift experiment: the natural learner's learning rate
# scaled (its drift per free window, at no extra cost), trained and kept like the reference runs.
DRIFT_RUNS = {
    f"gd_natural_lr{scale}": (
        f"Generalist-D, natural learner's learning rate x{scale} (drift per free window)",
        "generalist_d",
        {"natural_lr_scale": scale, "final_eval": "false"},
    )
    for scale in (4, 8, 16)
}
ABLATIONS.update(DRIFT_RUNS)


@dataclasses.dataclass(frozen=True)
class Run:
    """One trained and evaluated run; `label` is the method or the ablation's key."""

    label: str
    seed: int
    metrics: dict
    seconds: float
    # When the run ended, in seconds since its invocation started (0 for a reused run).
    ended: float = 0.0
    # The command that trains and evaluates it (`run_command`), as RESULTS.md lists it.
    command: str = ""
    # The commit of the tree whose invocation finished it (`ledger.commit`); "" if not recorded.
    commit: str = ""
    # Resumed from an earlier invocation's checkpoint: `seconds` then counts only the last one.
    resumed: bool = False
    # The CPU model that ran it (`ledger.machine`; "" if not recorded).
    cpu: str = ""
