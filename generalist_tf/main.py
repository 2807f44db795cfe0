"""Command line: `python -m generalist_tf.main --flagfile=flags/<experiment>.cfg [--flag=...]`.

The only module that reads FLAGS: it turns them into a validated `Config`, records the resolved
flags as `<workdir>/flags.cfg`, and calls the library. User errors (bad flags, data, files) end
with a one-line message and exit status 2, without a traceback.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from generalist_tf import cli  # noqa: E402

FLAGS = flags.FLAGS
FLAGS_RECORD = "flags.cfg"


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _quiet_library_logs() -> None:
    """Keeps TensorFlow's and Keras' INFO chatter out of absl's log; ours and warnings stay."""
    import logging as std_logging

    class _OursOrWarnings(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or "generalist_tf" in record.pathname

    logging.get_absl_handler().addFilter(_OursOrWarnings())


def _prepare_workdir(workdir: str) -> None:
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        _fail(f"--workdir={workdir} cannot be written ({e.strerror})")


def _accept_workdir(config):
    """Refuses a workdir that another live run holds, that holds another experiment, or (for
    evaluation) that holds a training run; records the experiment. Nothing of the run is
    written before this passes.

    Returns:
      The held `workdir.RunLock` (None for a follower worker of a multi-worker run).
    """
    from generalist_tf import workdir

    try:
        if config.mode == "eval" and workdir.holds_training_run(config.workdir):
            raise workdir.WorkdirError(
                f"--workdir={config.workdir} holds a training run, whose report.json --mode=eval "
                "would replace; evaluate into another --workdir"
            )
        lock = None if workdir.is_multiworker_follower() else workdir.RunLock(config.workdir)
        if lock is not None:
            lock.acquire()
        if config.mode == "train":
            current = workdir.fingerprint(FLAGS.flag_values_dict(), cli.flag_names())
            if workdir.check_fingerprint(config.workdir, current, restart=config.restart):
                if lock is not None:  # multi-worker followers share the chief's record
                    workdir.write_fingerprint(config.workdir, current)
    except workdir.WorkdirError as e:
        _fail(str(e))
    return lock


def main(argv):
    del argv
    # Imported here so that `--help` and flag errors do not pay for TensorFlow start-up.
    from generalist_tf import config as config_lib
    from generalist_tf import distribute

    try:
        config = config_lib.from_flags(FLAGS.flag_values_dict())
        # Logical CPU devices must exist before TensorFlow initialises its runtime.
        if config.num_cpu_replicas > 1:
            distribute.configure_cpu_replicas(config.num_cpu_replicas)
    except ValueError as e:
        _fail(str(e))
    _quiet_library_logs()
    if config.deterministic:
        import tensorflow as tf

        # Op determinism (plus our seeded data and stateless attacks): a resumed run is
        # bit-identical to an uninterrupted one.
        tf.config.experimental.enable_op_determinism()
    _prepare_workdir(config.workdir)
    lock = _accept_workdir(config)
    cli.write_flags(FLAGS, os.path.join(config.workdir, FLAGS_RECORD))

    from generalist_tf import callbacks, data, train

    try:
        if config.mode == "train":
            results = train.train(config)
            print(results["table"])
        else:
            from generalist_tf import evaluate

            report = evaluate.run_from_config(config)
            print(report["table"])
    except (ValueError, data.DataError, callbacks.TrainingDivergedError) as e:
        _fail(str(e))
    finally:
        if lock is not None:
            lock.release()
    logging.info("done: %s", config.workdir)


def _parse_flags(argv):
    """absl's parser with a one-line error (missing flagfile, malformed value, unknown flag)."""
    try:
        return FLAGS(argv)
    except flags.Error as e:
        _fail(str(e).splitlines()[0].replace("ERROR:: ", ""))


def run():
    cli.define_flags()
    app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
    run()
