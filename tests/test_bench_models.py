"""The bench's measured cases (`experiments.bench_models`): the standard list against ART."""

import pytest

from generalist_tf.experiments import (
    bench_models,
    bench_settings,
    bench_timing,
)


def test_standard_list_against_art_declares_paired_ratios():
    """The standard l_inf list vs ART (tiny budgets): every variant timed, the shared-list sums
    are the per-repeat sums of their three attacks, each ratio is art / ours."""
    from tests import helpers_eval

    arrays = helpers_eval.digits()
    rec = bench_timing.Recorder()
    network = helpers_eval.build_digits_cnn()
    x, y = arrays.x_test[:16], arrays.y_test[:16]
    assert bench_models.bench_standard_vs_art(
        rec, network, x, y, epsilon=0.1, apgd_steps=2, square_queries=4, repeats=2
    )
    prefix = f"{bench_settings.DIGITS}/standard"
    for side, attacks in (
        ("ours", ("apgd_ce_linf", "apgd_t_linf", "fab_t_linf", "square_linf")),
        ("art", ("apgd_ce_linf", "apgd_t_linf", "square_linf")),
    ):
        for attack in attacks:
            assert len(rec.samples[f"{prefix}/{side}_{attack}"]) == 2
        shared = [rec.samples[f"{prefix}/{side}_{a}"] for a in attacks if a != "fab_t_linf"]
        assert rec.samples[f"{prefix}/{side}_shared"] == pytest.approx(
            [sum(parts) for parts in zip(*shared)]
        )
    ratios, medians = rec.ratio_values(), rec.medians()
    assert set(ratios) == {
        f"standard_{a}_speedup_vs_art" for a in ("apgd_ce_linf", "apgd_t_linf", "square_linf")
    } | {"standard_shared_speedup_vs_art"}
    for attack in ("apgd_t_linf", "shared"):
        expected = medians[f"{prefix}/art_{attack}"] / medians[f"{prefix}/ours_{attack}"]
        assert ratios[f"standard_{attack}_speedup_vs_art"] == pytest.approx(expected)
