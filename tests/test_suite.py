"""The attack suite (`evaluation.suite`): the named attack sets and the default list."""

from generalist_tf.evaluation import suite


def test_attack_sets_expand_and_default_is_unchanged():
    assert suite.expand_attacks(None) == list(suite.DEFAULT_ATTACKS)
    assert suite.expand_attacks("standard") == [
        "apgd_ce_linf",
        "apgd_t_linf",
        "fab_t_linf",
        "square_linf",
        "apgd_ce_l2",
        "apgd_t_l2",
        "fab_t_l2",
        "square_l2",
    ]
    assert set(suite.expand_attacks(["all"])) == set(suite.ATTACK_NAMES)
    # Random streams are append-only: the attacks of earlier releases keep their seeds.
    assert suite.STREAM_ORDER[: len(suite.DEFAULT_ATTACKS)] == suite.DEFAULT_ATTACKS
    assert suite.STREAM_ORDER.index(suite.TRANSFER_ATTACK) == 11
    assert set(suite.STREAM_ORDER) == set(suite.ATTACK_NAMES) | {suite.TRANSFER_ATTACK}
