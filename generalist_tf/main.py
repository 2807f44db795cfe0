"""Command line: `python -m generalist_tf.main --flagfile=flags/<experiment>.cfg [--flag=...]`.

The only module that reads FLAGS: it turns them into a validated `Config`, records the resolved
flags as `<workdir>/flags.cfg`, and calls the library. User errors (bad flags, data, files) end
with a one-line message and exit status 2, without a traceback.
"""

from __future__ import annotations

import os
import sys
import time

# The user's own TensorFlow log level is theirs: only without one are the start-up lines quieted.
_USER_LOG_LEVEL = "TF_CPP_MIN_LOG_LEVEL" in os.environ
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app, flags, logging  # noqa: E402

from generalist_tf import cli, files, timing  # noqa: E402

# Before any TensorFlow import: the interpreter's own start-up, and where ours begins.
_INTERPRETER_SECONDS = timing.seconds_since_process_start()
_STARTED = time.perf_counter()

FLAGS = flags.FLAGS
FLAGS_RECORD = "flags.cfg"
CHECKPOINT_STATE = os.path.join("checkpoints", "checkpoint")  # names the latest checkpoint


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _disk_full(config, error: BaseException) -> None:
    """The one line for a full disk: what failed, and that finished files survived."""
    path = getattr(error, "filename", None)  # set by OSError, and so by files.DiskFullError
    if path is None:
        path = str(error).strip().splitlines()[0][:200]
    _fail(
        f"no space left on the device of --workdir={config.runtime.workdir} (writing {path}); the "
        "finished checkpoints and exports are kept: free space and rerun the same command to "
        "resume"
    )


# What TensorFlow's C++ runtime prints while it starts on a machine without a GPU, before its
# log level applies (absl's pre-initialisation lines): nothing a CPU-only run must act on.
CPU_START_UP_LINES = (
    "All log messages before absl::InitializeLog() is called",
    "cudart_stub.cc",
    "cuda_platform.cc",
    "failed call to cuInit",
    "Unable to register cu",
    "This TensorFlow binary is optimized to use available CPU instructions",
    "To enable the following instructions:",
    "oneDNN custom operations are on",
)


def start_tensorflow_quietly() -> None:
    """Imports TensorFlow and lists its devices with the CPU-only start-up lines dropped.

    Without a `TF_CPP_MIN_LOG_LEVEL` of the user's, stderr (file descriptor 2, which the C++
    runtime writes to directly) goes to a temporary file while TensorFlow imports and looks for
    GPUs; every line of it that is not one of `CPU_START_UP_LINES` is written back, so nothing
    else is lost. With the user's own level set, nothing is filtered.
    """
    if _USER_LOG_LEVEL or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401

        return
    import tempfile

    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf

            tf.config.list_physical_devices()
        finally:
            # Also when the import fails: what TensorFlow printed then is written back.
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode(errors="replace").splitlines(keepends=True)
            kept = [line for line in lines if not any(m in line for m in CPU_START_UP_LINES)]
            sys.stderr.write("".join(kept))
            sys.stderr.flush()


def _quiet_library_logs() -> None:
    """Keeps TensorFlow's and Keras' INFO chatter out of absl's log; ours and warnings stay."""
    import logging as std_logging

    class _OursOrWarnings(std_logging.Filter):
        def filter(self, record):
            return record.levelno >= std_logging.WARNING or "generalist_tf" in record.pathname

    logging.get_absl_handler().addFilter(_OursOrWarnings())


def _prepare_workdir(config) -> None:
    probe = os.path.join(config.runtime.workdir, f".write-test-{os.getpid()}")
    try:
        os.makedirs(config.runtime.workdir, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
    except OSError as e:
        if files.is_disk_full(e):
            _disk_full(config, files.DiskFullError(config.runtime.workdir))
        _fail(f"--workdir={config.runtime.workdir} cannot be written ({e.strerror})")
    finally:
        if os.path.exists(probe):
            os.remove(probe)


def _accept_workdir(config):
    """Refuses a workdir that another live run holds, that holds another experiment, or (for
    evaluation) that holds a training run; records the experiment. Nothing of the run is
    written before this passes.

    Returns:
      The held `workdir.RunLock` (None for a follower worker of a multi-worker run).
    """
    from generalist_tf import workdir

    try:
        if config.runtime.mode == "eval" and workdir.holds_training_run(config.runtime.workdir):
            raise workdir.WorkdirError(
                f"--workdir={config.runtime.workdir} holds a training run, whose report.json --mode=eval "
                "would replace; evaluate into another --workdir"
            )
        lock = (
            None if workdir.is_multiworker_follower() else workdir.RunLock(config.runtime.workdir)
        )
        if lock is not None:
            lock.acquire()
        if config.runtime.mode == "train":
            current = workdir.fingerprint(FLAGS.flag_values_dict(), cli.flag_names())
            if workdir.check_fingerprint(
                config.runtime.workdir, current, restart=config.runtime.restart
            ):
                if lock is not None:  # multi-worker followers share the chief's record
                    workdir.write_fingerprint(config.runtime.workdir, current)
    except workdir.WorkdirError as e:
        _fail(str(e))
    return lock


def main(argv):
    del argv
    # Imported here so that `--help` and flag errors do not pay for TensorFlow start-up.
    from generalist_tf import config as config_lib

    try:
        config = config_lib.from_flags(FLAGS.flag_values_dict())
    except ValueError as e:
        _fail(str(e))
    start_tensorflow_quietly()  # after the flags are valid: a flag error starts no TensorFlow
    from generalist_tf import distribute

    try:
        # Logical CPU devices must exist before TensorFlow initialises its runtime.
        if config.runtime.num_cpu_replicas > 1:
            distribute.configure_cpu_replicas(config.runtime.num_cpu_replicas)
    except ValueError as e:
        _fail(str(e))
    _quiet_library_logs()
    if config.runtime.deterministic:
        import tensorflow as tf

        # Op determinism (plus our seeded data and stateless attacks): a resumed run is
        # bit-identical to an uninterrupted one.
        tf.config.experimental.enable_op_determinism()
    _prepare_workdir(config)
    lock = None
    records = _read_records(config.runtime.workdir)
    try:
        strategy = _strategy(config)
        lock = _accept_workdir(config)
        cli.write_flags(FLAGS, os.path.join(config.runtime.workdir, FLAGS_RECORD))
        try:
            _run(config, strategy)
        except Exception as e:  # noqa: BLE001 -- only a full disk is handled; the rest re-raised
            if not files.is_disk_full(e):
                raise
            _disk_full(config, e)
    except BaseException:
        if lock is not None:  # the records are ours to restore only while we hold the workdir
            _restore_records(config.runtime.workdir, records)
        raise
    finally:
        if lock is not None:
            lock.release()
    logging.info("done: %s", config.runtime.workdir)


def _read_records(workdir_path: str) -> dict[str, bytes | None]:
    """The files that describe the run (and its latest checkpoint), as they are now."""
    from generalist_tf import workdir

    contents = {}
    for name in (FLAGS_RECORD, workdir.FINGERPRINT, CHECKPOINT_STATE):
        try:
            with open(os.path.join(workdir_path, name), "rb") as f:
                contents[name] = f.read()
        except OSError:
            contents[name] = None
    return contents


def _restore_records(workdir_path: str, before: dict[str, bytes | None]) -> None:
    """After a failed run that committed no checkpoint, puts back the records it replaced.

    So `flags.cfg` and `experiment.json` keep describing what the workdir holds: a rerun with
    another --model that the old checkpoint refuses leaves them as they were.
    """
    now = _read_records(workdir_path)
    if now[CHECKPOINT_STATE] != before[CHECKPOINT_STATE]:
        return  # the run committed a checkpoint: the new records describe it
    for name, content in before.items():
        if now[name] == content:
            continue
        path = os.path.join(workdir_path, name)
        try:
            if content is None:
                os.remove(path)
            else:
                files.write_bytes(path, content)
        except OSError as e:  # e.g. the disk is full: the record stays as the run wrote it
            logging.warning("could not restore %s: %s", path, e)


def _strategy(config):
    """The training strategy (None for evaluation), checked before the workdir is accepted."""
    if config.runtime.mode != "train":
        return None
    from generalist_tf import experiment

    try:
        return experiment.make_strategy(config)
    except ValueError as e:
        _fail(str(e))


def _run(config, strategy) -> None:
    from generalist_tf import data, train
    from generalist_tf.algorithm import callbacks

    if _INTERPRETER_SECONDS is not None:
        timing.RUN.add("interpreter start-up", _INTERPRETER_SECONDS)
    # Flags, TensorFlow's import and initialisation, the strategy, the workdir checks.
    timing.RUN.add("imports and set-up", time.perf_counter() - _STARTED)
    try:
        if config.runtime.mode == "train":
            results = train.train(config, strategy)
            print(results["table"])
        else:
            from generalist_tf.evaluation import commands

            report = commands.run_from_config(config)
            print(report["table"])
    except (ValueError, data.DataError, callbacks.TrainingDivergedError) as e:
        _fail(str(e))


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
