"""The evaluation's attack vocabulary (`evaluation.attack_names`): named lists expand to names."""

from generalist_tf.evaluation import attack_names


def test_expand_attacks_default_sets_and_names():
    assert attack_names.expand_attacks(None) == list(attack_names.DEFAULT_ATTACKS)
    for name, members in attack_names.ATTACK_SETS.items():
        assert attack_names.expand_attacks(name) == list(members)
        assert attack_names.expand_attacks([name]) == list(members)
    assert attack_names.expand_attacks("pgd20_linf") == ["pgd20_linf"]
    assert attack_names.expand_attacks(("pgd20_l2", "square_l2")) == ["pgd20_l2", "square_l2"]


def test_the_lists_name_known_attacks_only():
    known = set(attack_names.ATTACK_NAMES)
    for members in attack_names.ATTACK_SETS.values():
        assert set(members) <= known | {attack_names.TRANSFER_ATTACK}
    assert set(attack_names.LATER_ATTACKS) <= known
    assert not set(attack_names.DEFAULT_ATTACKS) & set(attack_names.LATER_ATTACKS)
    assert sorted(attack_names.STREAM_ORDER) == sorted(known | {attack_names.TRANSFER_ATTACK})
