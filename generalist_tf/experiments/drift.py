"""The drift experiment: how far must the natural learner move for Generalist to beat the frontier?

    python -m generalist_tf.experiments.drift --model=models/RESULTS_fashion_mnist/ref_pgd_at_eps0.1_seed0.keras \
        --protocol=flags/fashion_mnist_generalist_d.cfg --out=runs/drift

Between two redistributions Generalist's natural learner is a natural fine-tune of the network
it was handed, and G is an interpolation of it with the robust EMA. This driver measures that
mechanism on its own: from a robust export, natural fine-tunes of S steps (`--steps`) at the
protocol's free-window learning rate times each of `--lr_multipliers`, each swept from lambda 0
to 1 by `generalist_tf.tradeoff` (validation and test split, PGD-`--eval_num_steps`). Every
curve is compared with the reference frontier of the ledger's seed-0 baselines (their exported
G: clean and PGD-20 on the whole test split): the clean accuracy it gains at the robust
accuracy of `--at_label`'s point, and the largest gain along the curve. With `--test_examples`
the reference is re-scored from the ledger's kept models on the same examples. Writes
`<out>/drift.json` (finished curves are kept and reused by the next invocation) and each
curve's `frontier.json` / `frontier.png` in `<out>/<curve>/`.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags, logging

from generalist_tf import tradeoff

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    f = flag_values
    flags.DEFINE_string(
        "model", None, "The robust export (.keras, export or workdir).", flag_values=f
    )
    flags.DEFINE_string(
        "protocol", None, "The run's flagfile (data, schedule, evaluation).", flag_values=f
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=f)
    flags.DEFINE_list("steps", ["40", "160", "640", "2560"], "Fine-tune steps S.", flag_values=f)
    flags.DEFINE_list(
        "lr_multipliers", ["1", "4"], "Multiples of the free-window learning rate.", flag_values=f
    )
    flags.DEFINE_integer(
        "points", tradeoff.DEFAULT_POINTS, "Interpolation weights per curve.", flag_values=f
    )
    flags.DEFINE_integer(
        "test_examples", 0, "Test images per point (fixed subset; 0: all).", flag_values=f
    )
    flags.DEFINE_string(
        "ledger",
        "RESULTS_fashion_mnist.json",
        "The ledger of the reference frontier.",
        flag_values=f,
    )
    flags.DEFINE_string(
        "at_label",
        "ref_pgd_at_eps0.1",
        "The ledger run whose robust accuracy the gain is read at.",
        flag_values=f,
    )
    flags.DEFINE_bool(
        "summarise_only",
        False,
        "Train nothing: re-score the reference and recompute every finished curve's gains.",
        flag_values=f,
    )


def reference_points(entries: list[dict], seed: int = 0) -> dict[str, tuple[float, float]]:
    """label -> (test clean, test PGD-20) of the exported G of every reference run of `seed`."""
    from generalist_tf.experiments import repro_frontier

    points = {}
    for entry in entries:
        label, m = entry["label"], entry["metrics"]
        if entry["seed"] == seed and repro_frontier.is_reference(label):
            points[label] = (m["exported_clean"], m["exported_pgd20"])
    return points


def kept_references(entries: list[dict], ledger_dir: str, seed: int = 0) -> dict[str, str]:
    """label -> the kept `.keras` of every reference run of `seed` that has one."""
    kept = {}
    for entry in entries:
        model = entry.get("models", {}).get("exported")
        if model and entry["label"] in reference_points([entry], seed):
            kept[entry["label"]] = os.path.join(ledger_dir, model["path"])
    return kept


def rescore(paths: dict[str, str], test, attack, batch_size: int) -> dict[str, list[float]]:
    """label -> [clean, PGD] of each kept reference model on the curves' own test examples
    (the same function, attack and seeds as every curve point: `tradeoff.accuracy`)."""
    from generalist_tf import init_from

    scores = {}
    for label, path in sorted(paths.items()):
        network = init_from.load_network(path, "--ledger")
        scores[label] = [
            tradeoff.accuracy(network, *test, batch_size=batch_size),
            tradeoff.accuracy(network, *test, attack=attack, batch_size=batch_size),
        ]
    return scores


def free_window_learning_rate(cfg) -> float:
    """The mean learning rate of the protocol's first free window (the epochs after the first
    redistribution epoch, up to the next one): what the natural learner trains at there."""
    communication, opt = cfg.algorithm.communication, cfg.optimisation
    if communication is None:
        raise ValueError("--protocol has no redistribution, so no free window")
    first = next(
        e for e in range(1, opt.epochs + 1) if communication.is_communication_epoch(e, opt.epochs)
    )
    window = [first + k for k in range(1, communication.period)]
    return sum(opt.learning_rate(e, opt.epochs) for e in window) / len(window)


def curve_summary(points: list[dict], reference: list[tuple[float, float]], at: float) -> dict:
    """The gain at robust accuracy `at` and the largest gain along the curve (clean points),
    within the reference's robust range."""
    curve = [(p["test_clean"], p["test_pgd"]) for p in points]
    # Only where the reference has points on both sides: below its least robust point the
    # frontier's other end (standard training) may be missing, and a flat extension would
    # credit the curve with the standard network's clean accuracy.
    low, high = min(r for _, r in reference), max(r for _, r in reference)
    levels = sorted(
        r for r in {r for _, r in curve} | {r for _, r in reference} if low <= r <= high
    )
    gains = [(g, r) for r in levels if (g := tradeoff.gain_at(curve, reference, r)) is not None]
    best = max(gains, default=(None, None))
    return {
        "gain_at_reference": tradeoff.gain_at(curve, reference, at),
        "largest_gain": best[0],
        "largest_gain_at": best[1],
    }


def main(argv):
    del argv
    from generalist_tf import data, files, init_from
    from generalist_tf.experiments import frontier, ledger

    try:
        if not (FLAGS.model and FLAGS.protocol and FLAGS.out):
            raise ValueError("--model, --protocol and --out are required")
        cfg = frontier.protocol_config(None, FLAGS.protocol, FLAGS.out)
        base_lr = free_window_learning_rate(cfg)
        steps = [int(s) for s in FLAGS.steps]
        multipliers = [float(m) for m in FLAGS.lr_multipliers]
        entries = ledger.read(FLAGS.ledger)
        reference = reference_points(entries)
        if FLAGS.at_label not in reference:
            raise ValueError(
                f"--at_label={FLAGS.at_label}: not a seed-0 run of --ledger={FLAGS.ledger}"
            )
        robust = init_from.load_network(FLAGS.model, "--model")
        arrays = frontier.protocol_data(cfg)
    except (ValueError, data.DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    os.makedirs(FLAGS.out, exist_ok=True)
    path = os.path.join(FLAGS.out, "drift.json")
    record = json.load(open(path)) if os.path.exists(path) else {"curves": {}}
    record.update(
        model=FLAGS.model,
        model_sha256=ledger.sha256(init_from.keras_file(FLAGS.model)),
        protocol=FLAGS.protocol,
        free_window_learning_rate=base_lr,
        reference=reference,
        at_label=FLAGS.at_label,
        cpu=ledger.machine(),
    )
    evaluation = cfg.evaluation
    validation = data.eval_subset(arrays.x_val, arrays.y_val, evaluation.val_examples)
    test = data.eval_subset(arrays.x_test, arrays.y_test, FLAGS.test_examples or None)
    if FLAGS.test_examples:
        # A subset's accuracies differ from the whole split's by more than the gains measured
        # here: the reference is re-scored on the same examples from the kept models.
        reference = rescore(
            kept_references(entries, os.path.dirname(os.path.abspath(FLAGS.ledger))),
            test,
            evaluation.eval_attack,
            evaluation.eval_batch_size,
        )
        if FLAGS.at_label not in reference:
            print(f"error: --at_label={FLAGS.at_label}: no kept model to re-score", file=sys.stderr)
            sys.exit(2)
        record.update(reference=reference, reference_examples=len(test[0]))
    at = reference[FLAGS.at_label][1]
    for c in record["curves"].values():  # the summaries follow the reference as it grows
        c.update(curve_summary(c["points"], list(reference.values()), at))
    for multiplier in multipliers:
        for s in steps:
            key = f"S{s}_lr{multiplier:g}x"
            if key in record["curves"] or FLAGS.summarise_only:
                continue
            start = time.time()
            lr = base_lr * multiplier
            natural = frontier.natural_fine_tune(robust, arrays, cfg, steps=s, learning_rate=lr)
            tuned = time.time() - start
            curve = tradeoff.run(
                robust,
                natural,
                validation=validation,
                test=test,
                attack=evaluation.eval_attack,
                out=os.path.join(FLAGS.out, key),
                points=FLAGS.points,
                baselines=reference,
                batch_size=evaluation.eval_batch_size,
            )
            record["curves"][key] = {
                "steps": s,
                "learning_rate": lr,
                "multiplier": multiplier,
                "drift": s * lr,
                "points": curve["points"],
                "seconds": {"fine_tune": tuned, "total": time.time() - start},
                **curve_summary(curve["points"], list(reference.values()), at),
            }
            files.write_json(path, record, indent=1)
            c = record["curves"][key]
            logging.warning(
                "%s: drift %.2f, gain at %.4f: %s, largest %s (%.0f s)",
                key,
                c["drift"],
                at,
                c["gain_at_reference"],
                c["largest_gain"],
                c["seconds"]["total"],
            )

    files.write_json(path, record, indent=1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
