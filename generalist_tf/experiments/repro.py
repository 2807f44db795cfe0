"""Small-scale reproduction: every method x several seeds, evaluated alike, summarised in RESULTS.md.

    python -m generalist_tf.experiments.repro --suite=digits --workdir=runs/repro

Trains each method from its flagfile (`flags/digits_<method>.cfg`; the `mnist` suite runs the
same recipes on MNIST with the SmallCNN), evaluates the exported G of every run with the full
attack suite of `runner.evaluate_model` on the test split, and writes `RESULTS.md` (mean and
standard deviation over seeds, the commands, the machine, the wall time, and a verdict computed
from the numbers) and `tradeoff.png` (natural vs worst-case l_inf accuracy of every method).

A suite may span sessions: every finished run goes into the suite's committed results ledger
(`RESULTS_fashion_mnist.json`, `RESULTS.json`; see `ledger`), and a later invocation reuses the
entries whose commands still resolve to the same flags; `--notrain` writes the results of the
runs finished so far.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
import time

from absl import app, flags, logging

from generalist_tf.experiments.repro_runs import (
    command,
    kept_model_files,
    read_metrics,
    recorded_commits,
    reusable,
    run_command,
    run_dir,
    run_flags,
    run_one,
)
from generalist_tf.experiments.repro_suites import ABLATIONS, METHODS, SUITES, Run
from generalist_tf.experiments.repro_tables import write_results


def run_plan(
    plan: list[tuple[str, str, int, dict]],
    *,
    root: str,
    suite: str,
    extra: dict,
    done: dict[tuple[str, int], float],
    jobs: int = 1,
    restart: bool = False,
    ledger_path: str = "",
    train: bool = True,
) -> list[Run]:
    """Runs every (label, method, seed, overrides) of `plan` not in `done`, `jobs` at a time.

    Each run is its own process (`run_one`), so runs in parallel cannot share TensorFlow state;
    with `--deterministic` their numbers do not depend on `jobs`. `<root>/runs.json` is rewritten
    in plan order after every finished run, so an interrupted invocation resumes with `--reuse`.
    A failed run does not stop the others; the first failure is raised once all have ended.

    With `ledger_path` (see `ledger`), a run that is neither in `done` nor trained here is taken
    from the ledger when its command still resolves to the flags recorded there, and every run
    finished or collected here is written to it. With `train=False` nothing is trained: the result
    is the runs found (in `done` or the ledger), in plan order.
    """
    from generalist_tf.experiments import ledger

    os.makedirs(root, exist_ok=True)
    start = time.time()
    # Each entry's flags beyond its flagfile: the invocation's, then the entry's own.
    extras = [{**extra, **overrides} for _, _, _, overrides in plan]
    results: dict[int, Run] = {}
    resolved: dict[int, dict[str, str]] = {}
    entries = ledger.read(ledger_path) if ledger_path and not restart else []
    defaults = ledger.defaults()
    tree = ledger.commit() if ledger_path else ""
    # A run reused from disk keeps the commit that finished it, not this invocation's.
    finished_by = recorded_commits(root)
    from_ledger = set()
    # Entries whose workdir holds another experiment (flags changed since): retrained from scratch.
    stale = set()
    for i, (label, method, seed, _) in enumerate(plan):
        resolved[i] = ledger.resolved_flags(
            command(method, run_flags(seed, suite, extras[i]), suite)[3:]
        )
        recorded = os.path.join(run_dir(root, label, seed), "flags.cfg")
        if os.path.exists(recorded):
            changed = ledger.differing(
                ledger.resolved_flags([f"--flagfile={recorded}"]), resolved[i], defaults
            )
            if changed:
                logging.warning("%s seed %d: its workdir ran %s otherwise", label, seed, changed)
                stale.add(i)
        if (label, seed) in done and i not in stale:
            metrics = read_metrics(run_dir(root, label, seed))
            results[i] = Run(
                label,
                seed,
                metrics,
                done[(label, seed)],
                command=run_command(method, seed, suite, extras[i]),
                commit=finished_by.get((label, seed)) or tree,
            )
            continue
        entry = ledger.find(entries, label, seed)  # entries is [] without a ledger
        if entry is None:
            continue
        changed = ledger.differing(entry["flags"], resolved[i], defaults)
        if changed:
            logging.warning(
                "%s seed %d: the ledger's run differs in %s; retraining", label, seed, changed
            )
            continue
        results[i] = Run(
            label,
            seed,
            entry["metrics"],
            entry["seconds"],
            command=run_command(method, seed, suite, extras[i]),
            commit=entry.get("commit", ""),
            resumed=entry.get("resumed", False),
            cpu=entry.get("cpu", ""),
        )
        from_ledger.add(i)

    def record():
        with open(os.path.join(root, "runs.json"), "w") as f:
            json.dump([dataclasses.asdict(results[i]) for i in sorted(results)], f, indent=1)
        for i in sorted(set(results) - from_ledger) if ledger_path else ():
            run = results[i]
            workdir = run_dir(root, run.label, run.seed)
            kept = ledger.keep_models(ledger_path, run.label, run.seed, kept_model_files(workdir))
            ledger.upsert(
                ledger_path,
                {
                    "models": kept,
                    "cpu": run.cpu or ledger.machine(),
                    "label": run.label,
                    "seed": run.seed,
                    "method": plan[i][1],
                    "metrics": run.metrics,
                    "seconds": run.seconds,
                    "command": run.command,
                    "commit": run.commit or tree,
                    "resumed": run.resumed,
                    "flags": resolved[i],
                },
            )
            from_ledger.add(i)

    if not train:
        record()
        return [results[i] for i in sorted(results)]

    failures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            pool.submit(
                run_one,
                method,
                seed,
                root=root,
                suite=suite,
                extra=extras[i],
                label=label,
                restart=restart or i in stale,
            ): i
            for i, (label, method, seed, _) in enumerate(plan)
            if i not in results
        }
        for future in concurrent.futures.as_completed(futures):
            try:
                run = future.result()
            except RuntimeError as e:
                failures.append(e)
                logging.error("%s", e)
                continue
            run = dataclasses.replace(
                run, ended=time.time() - start, commit=tree, cpu=ledger.machine()
            )
            results[futures[future]] = run
            logging.warning(
                "%s seed %d: %s (%.0f s)", run.label, run.seed, run.metrics, run.seconds
            )
            record()
    if failures:
        raise failures[0]
    record()
    return [results[i] for i in sorted(results)]


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The driver's flags (only when run as a program)."""
    flags.DEFINE_enum(
        "suite", "digits", list(SUITES), "Which reproduction.", flag_values=flag_values
    )
    flags.DEFINE_string(
        "workdir", "runs/repro", "Where runs and RESULTS.md go.", flag_values=flag_values
    )
    flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds of every method.", flag_values=flag_values)
    flags.DEFINE_list("methods", list(METHODS), "Methods to run.", flag_values=flag_values)
    flags.DEFINE_list(
        "ablations",
        None,
        f"Ablations to run (of {', '.join(ABLATIONS)}; 'none': none); default: the suite's.",
        flag_values=flag_values,
    )
    flags.DEFINE_list("ablation_seeds", ["0"], "Seeds of the ablations.", flag_values=flag_values)
    flags.DEFINE_bool(
        "reuse",
        True,
        "Reuse the finished runs recorded in <workdir>/runs.json and resume interrupted ones; "
        "--noreuse retrains every run from scratch (--restart).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "data_dir", None, "tfds data directory (mnist suite).", flag_values=flag_values
    )
    flags.DEFINE_integer(
        "epochs",
        0,
        "Override every method's epochs (0: keep the flagfile's).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "square_queries",
        0,
        "Override the Square attack's query budget (0: the flagfile's).",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "results",
        "",
        "Output file (relative to the repo root); default: the suite's.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "ledger",
        "",
        "Results ledger (relative to the repo root) that finished runs are read from and written "
        "to, so a suite spans sessions; default: the suite's; 'none': no ledger.",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "train",
        True,
        "Train the runs that are neither finished in --workdir nor in the ledger; --notrain only "
        "collects finished runs (into the ledger) and writes the results of those.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "precision",
        "",
        "Override every run's --precision (fp32, bf16, auto; empty: flagfile's).",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "jobs",
        2,
        "Runs trained at once, each in its own process (2 fills this 2-core CPU).",
        lower_bound=1,
        flag_values=flag_values,
    )


def main(argv):
    del argv
    spec = SUITES[FLAGS.suite]
    if FLAGS.ablations is None:
        FLAGS.ablations = list(spec.ablations)
    elif FLAGS.ablations == ["none"]:
        FLAGS.ablations = []
    unknown = sorted(set(FLAGS.ablations) - set(ABLATIONS))
    if unknown:
        raise app.UsageError(f"--ablations: unknown {unknown}; choose from {list(ABLATIONS)}")
    extra = {"data_dir": FLAGS.data_dir} if FLAGS.data_dir else {}
    if FLAGS.epochs:
        extra["epochs"] = FLAGS.epochs
    if FLAGS.square_queries:
        extra["eval_square_queries"] = FLAGS.square_queries
    if FLAGS.precision:
        extra["precision"] = FLAGS.precision
    os.makedirs(FLAGS.workdir, exist_ok=True)
    done = reusable(FLAGS.workdir) if FLAGS.reuse else {}
    plan = [(m, m, int(s), {}) for m in FLAGS.methods for s in FLAGS.seeds]
    plan += [
        (key, ABLATIONS[key][1], int(s), ABLATIONS[key][2])
        for key in FLAGS.ablations
        for s in FLAGS.ablation_seeds
    ]
    start = time.time()
    finished = run_plan(
        plan,
        root=FLAGS.workdir,
        suite=FLAGS.suite,
        extra=extra,
        done=done,
        jobs=FLAGS.jobs,
        restart=not FLAGS.reuse,
        ledger_path="" if FLAGS.ledger == "none" else (FLAGS.ledger or spec.ledger),
        train=FLAGS.train,
    )
    if not finished:
        raise app.UsageError("no finished run to write results from (--notrain)")
    command = "python -m generalist_tf.experiments.repro " + " ".join(
        f"--{name}={FLAGS[name].serialize().split('=', 1)[-1]}"
        for name in ("suite", "workdir", "seeds", "methods", "ablations", "ablation_seeds", "jobs")
    )
    methods = set(FLAGS.methods)
    write_results(
        FLAGS.results or spec.results,
        [r for r in finished if r.label in methods],
        suite=FLAGS.suite,
        seeds=FLAGS.seeds,
        wall=time.time() - start,
        command=command,
        ablation_runs=[r for r in finished if r.label not in methods],
        jobs=FLAGS.jobs,
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
