"""The trade-off frontier of a run or of any exported model.

    # A Generalist run's own ends: the robust and natural EMAs of its last free window.
    python -m generalist_tf.experiments.frontier --workdir=RUN --out=RUN/frontier
    # Any exported model: a natural fine-tune of a copy for S steps is the natural end.
    python -m generalist_tf.experiments.frontier --model=ROBUST.keras --natural_steps=640 \
        --natural_learning_rate=0.008 --protocol=flags/fashion_mnist_common.cfg --out=DIR

Data, validation subset, evaluation attack (PGD-`--eval_num_steps` at `--eval_epsilon_linf`,
step epsilon / 4), fixed suite subset and batch sizes come from the protocol: the run's own
`flags.cfg` with `--workdir`, `--protocol=FLAGFILE` otherwise (a training flagfile, read exactly
as `generalist_tf.main` reads it). Writes `frontier.json`, `frontier.png` and, with
`--operating_point`, the chosen point's export; see `generalist_tf/tradeoff.py`.
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags, logging

from generalist_tf import tradeoff as frontier

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The program's flags (only when run as a program)."""
    f = flag_values
    flags.DEFINE_string(
        "workdir", None, "A finished Generalist run (its free_window/).", flag_values=f
    )
    flags.DEFINE_string(
        "model", None, "The robust end: a .keras file, an export or a workdir.", flag_values=f
    )
    flags.DEFINE_string(
        "natural",
        None,
        "With --model: the natural end (same architecture); default: a natural fine-tune of "
        "--model for --natural_steps.",
        flag_values=f,
    )
    flags.DEFINE_string(
        "learners",
        "",
        "With --workdir: ROBUST,NATURAL learner names (default: the first adversarial learner "
        "and natural, or the first two learners).",
        flag_values=f,
    )
    flags.DEFINE_string(
        "protocol", None, "Flagfile of the data and evaluation settings (see above).", flag_values=f
    )
    flags.DEFINE_string("out", None, "Output directory.", flag_values=f)
    flags.DEFINE_integer("natural_steps", 0, "Natural fine-tune steps (--model).", flag_values=f)
    flags.DEFINE_float(
        "natural_learning_rate", 0.0, "Fine-tune learning rate (constant; > 0).", flag_values=f
    )
    flags.DEFINE_integer(
        "points", frontier.DEFAULT_POINTS, "Interpolation weights from 0 to 1.", flag_values=f
    )
    flags.DEFINE_enum(
        "batchnorm",
        "interpolate",
        ["interpolate", "reestimate"],
        "BatchNorm moving statistics: interpolated like every weight (as G's are), or "
        "re-estimated on training images at every point.",
        flag_values=f,
    )
    flags.DEFINE_integer(
        "batchnorm_batches", 50, "Training batches of a re-estimation.", flag_values=f
    )
    flags.DEFINE_integer(
        "test_examples",
        0,
        "Test images scored per point (a fixed subset; 0: the whole test split).",
        flag_values=f,
    )
    flags.DEFINE_bool(
        "worst_case",
        True,
        "APGD-CE + APGD-T (l_inf) on the protocol's fixed suite subset for the Pareto points.",
        flag_values=f,
    )
    flags.DEFINE_integer(
        "apgd_steps", 0, "APGD iterations (0: the protocol's --eval_apgd_steps).", flag_values=f
    )
    flags.DEFINE_string(
        "operating_point", "", "clean:A or robust:A, chosen on validation; exported.", flag_values=f
    )
    flags.DEFINE_string(
        "ledger", "", "A results ledger whose runs are drawn as baselines.", flag_values=f
    )


def _flag_error(exc: Exception) -> str:
    """A library message (naming the argument) with the flag's `--` added."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    for argument in ("operating_point", "natural_steps", "natural_learning_rate", "points"):
        if text.startswith(argument):
            return "--" + text
    return text


def protocol_config(workdir: str | None, protocol: str | None, out: str):
    """The run's (or the flagfile's) validated `Config`; its `--workdir` is set to `out` (the
    config requires one; nothing of the run is written)."""
    from generalist_tf import cli, config

    if workdir:
        path = os.path.join(workdir, "flags.cfg")
        if not os.path.exists(path):
            raise ValueError(f"--workdir={workdir}: no flags.cfg (not a run directory)")
        values = cli.parse(f"--flagfile={path}", f"--workdir={out}")
    elif protocol:
        path = protocol if os.path.exists(protocol) else os.path.join(cli.ROOT, protocol)
        if not os.path.exists(path):
            raise ValueError(f"--protocol={protocol}: no such flagfile")
        values = cli.parse(f"--flagfile={os.path.abspath(path)}", f"--workdir={out}")
    else:
        raise ValueError("--protocol is required with --model (the data and evaluation settings)")
    return config.from_flags(values.flag_values_dict())


def protocol_data(cfg):
    """The protocol's dataset, as training loads it (its `--train_examples` subset included)."""
    from generalist_tf import data

    return data.load(
        cfg.data.dataset,
        data_dir=cfg.data.data_dir,
        train_examples=cfg.data.train_examples or None,
    )


def natural_fine_tune(robust, arrays, cfg, *, steps: int, learning_rate: float):
    """`tradeoff.fine_tune` of `robust` on the protocol's training stream, with its batch size,
    momentum, natural weight decay and seed (the natural learner's settings)."""
    from generalist_tf import data

    return frontier.fine_tune(
        robust,
        data.train_dataset(arrays, batch_size=cfg.optimisation.batch_size, seed=cfg.runtime.seed),
        steps=steps,
        learning_rate=learning_rate,
        momentum=cfg.optimisation.momentum,
        weight_decay=cfg.optimisation.natural_weight_decay,
        seed=cfg.runtime.seed,
    )


def _free_window(workdir: str, learners: str) -> tuple[str, str, dict]:
    from generalist_tf.algorithm import callbacks

    folder = os.path.join(workdir, callbacks.FREE_WINDOW)
    meta = os.path.join(folder, callbacks.FREE_WINDOW_META)
    if not os.path.exists(meta):
        raise ValueError(
            f"--workdir={workdir}: no {callbacks.FREE_WINDOW}/ checkpoint (a Generalist run "
            "with redistribution writes one; runs from before it existed, and baselines, do not)"
        )
    with open(meta) as f:
        window = json.load(f)
    names = window["learners"]
    if learners:
        robust, _, natural = learners.partition(",")
        for name in (robust, natural):
            if name not in names:
                raise ValueError(f"--learners={learners}: {name!r} is not one of {names}")
    else:
        natural = "natural" if "natural" in names else names[1]
        robust = next(n for n in names if n != natural)
    return (
        os.path.join(folder, f"{robust}.keras"),
        os.path.join(folder, f"{natural}.keras"),
        {"free_window_epoch": window["last_free_epoch"], "learners": [robust, natural]},
    )


def _baselines(path: str) -> dict[str, tuple[float, float]]:
    from generalist_tf.experiments import ledger

    points = {}
    for entry in ledger.read(path):
        m = entry["metrics"]
        if "exported_clean" in m:
            points[f"{entry['label']} s{entry['seed']}"] = (
                m["exported_clean"],
                m["exported_pgd20"],
            )
    return points


def main(argv):
    del argv
    from generalist_tf import data, init_from

    try:
        if bool(FLAGS.workdir) == bool(FLAGS.model):
            raise ValueError("give one of --workdir (a run) or --model (an exported robust model)")
        if not FLAGS.out:
            raise ValueError("--out is required")
        frontier.parse_operating_point(FLAGS.operating_point)
        frontier.grid(FLAGS.points)
        if FLAGS.model and not FLAGS.natural:  # the fine-tune runs: its budget, before any work
            frontier.check_fine_tune(FLAGS.natural_steps, FLAGS.natural_learning_rate, min_steps=1)
        cfg = protocol_config(FLAGS.workdir, FLAGS.protocol, FLAGS.out)
        provenance = {}
        if FLAGS.workdir:
            robust_path, natural_path, provenance = _free_window(FLAGS.workdir, FLAGS.learners)
            robust = init_from.load_network(robust_path, "--workdir")
            natural = init_from.load_network(natural_path, "--workdir")
            provenance.update(workdir=os.path.abspath(FLAGS.workdir))
        else:
            robust = init_from.load_network(FLAGS.model, "--model")
            natural = init_from.load_network(FLAGS.natural, "--natural") if FLAGS.natural else None
            provenance.update(model=os.path.abspath(FLAGS.model))
        if natural is not None:
            try:
                frontier.check_same_architecture(robust, natural)
            except ValueError as e:
                raise ValueError(f"--natural={FLAGS.natural}: {e}") from None
        arrays = protocol_data(cfg)
    except (ValueError, data.DataError) as e:
        print(f"error: {_flag_error(e)}", file=sys.stderr)
        sys.exit(2)

    evaluation = cfg.evaluation
    if natural is None:
        logging.info(
            "natural fine-tune: %d steps at learning rate %g",
            FLAGS.natural_steps,
            FLAGS.natural_learning_rate,
        )
        natural = natural_fine_tune(
            robust,
            arrays,
            cfg,
            steps=FLAGS.natural_steps,
            learning_rate=FLAGS.natural_learning_rate,
        )
        provenance.update(
            natural_steps=FLAGS.natural_steps, natural_learning_rate=FLAGS.natural_learning_rate
        )
    validation = data.eval_subset(arrays.x_val, arrays.y_val, evaluation.val_examples)
    test = data.eval_subset(arrays.x_test, arrays.y_test, FLAGS.test_examples or None)
    worst = (
        data.eval_subset(arrays.x_test, arrays.y_test, evaluation.eval_examples or None)
        if FLAGS.worst_case
        else None
    )
    reestimate = (
        (arrays.x_train, cfg.optimisation.batch_size, FLAGS.batchnorm_batches)
        if FLAGS.batchnorm == "reestimate"
        else None
    )
    record = frontier.run(
        robust,
        natural,
        validation=validation,
        test=test,
        attack=evaluation.eval_attack,
        out=FLAGS.out,
        points=FLAGS.points,
        operating_point=FLAGS.operating_point or None,
        reestimate=reestimate,
        worst_case=worst,
        apgd_steps=FLAGS.apgd_steps or evaluation.eval_apgd_steps,
        baselines=_baselines(FLAGS.ledger) if FLAGS.ledger else None,
        batch_size=evaluation.eval_batch_size,
        provenance=provenance,
        on_point=lambda p: logging.info(
            "lambda %.2f: validation clean %.4f, PGD %.4f", p.lam, p.val_clean, p.val_pgd
        ),
    )
    for p in record["points"]:
        print(
            f"lambda {p['lambda']:.2f}  val {100 * p['val_clean']:.2f} / {100 * p['val_pgd']:.2f}"
            f"  test {100 * p['test_clean']:.2f} / {100 * p['test_pgd']:.2f}"
            + (f"  worst l_inf {100 * p['worst_linf']:.2f}" if p["worst_linf"] is not None else "")
            + ("  pareto" if p["pareto"] else "")
        )
    if record["operating_point"]:
        print(
            f"operating point ({FLAGS.operating_point}): lambda {record['operating_point']['lambda']:.2f}"
        )


if __name__ == "__main__":
    define_flags()
    app.run(main)
