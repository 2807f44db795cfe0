"""Every command-line flag of generalist_tf, defined in one place (`define_flags`).

Importing this module defines nothing; `main` calls `define_flags()` once. Defaults are the
official CIFAR-10 ResNet-18 hyperparameters (generalist_tf/docs/algorithm.md); flagfiles override them.
"""

from __future__ import annotations

import os

from absl import flags

from generalist_tf import config, defaults, files

# The repository root: flagfiles name their nested flagfiles relative to it (`flags/...`).
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines all flags on `flag_values` (the global FLAGS by default)."""
    f = flag_values

    def string(name, default, help_):
        flags.DEFINE_string(name, default, help_, flag_values=f)

    def integer(name, default, help_):
        flags.DEFINE_integer(name, default, help_, flag_values=f)

    def floating(name, default, help_):
        flags.DEFINE_float(name, default, help_, flag_values=f)

    def boolean(name, default, help_):
        flags.DEFINE_bool(name, default, help_, flag_values=f)

    # Run.
    string("workdir", None, "Directory of checkpoints, TensorBoard logs, export and results.")
    string("mode", "train", "train: train and evaluate; eval: evaluate a SavedModel (--model).")
    boolean("restart", False, "Start over even if --workdir holds a checkpoint.")
    integer("seed", 0, "Seed of initialisation, data order, augmentation and attacks.")
    boolean("deterministic", False, "Enable TF op determinism (exact resume; slower).")
    integer("verbose", 2, "Keras progress: 0 silent, 1 progress bar, 2 one line per epoch.")
    # Data and model.
    string(
        "dataset",
        "digits",
        "digits (embedded), mnist, fashion_mnist, cifar10, cifar100, svhn_cropped, or npz:PATH.",
    )
    string("data_dir", None, "tensorflow-datasets data directory (prepared beforehand).")
    string(
        "model",
        "digits_cnn",
        "train: resnet18, preact_resnet18, wide_resnet, small_cnn, digits_cnn, or your own "
        "builder package.module:function (function(image_shape, num_classes) -> keras.Model of "
        "logits); eval: a SavedModel directory.",
    )
    integer("wrn_depth", 34, "wide_resnet depth (6n+4).")
    integer("wrn_width", 10, "wide_resnet width factor.")
    string(
        "bn_moving_variance",
        "unbiased",
        "BatchNorm moving-variance update: unbiased (PyTorch's and the paper's) or biased (Keras').",
    )
    string(
        "init_from",
        "",
        "Start every learner, EMA and G from a trained network of the same architecture: a "
        ".keras file, one of our exports or workdirs, or a checkpoint.",
    )
    integer(
        "train_examples",
        0,
        "Train on a fixed subset of this many training examples, the same in every run (0: all).",
    )
    boolean(
        "normalize",
        False,
        "Normalise inputs inside the model with the training split's per-channel mean/std.",
    )
    # Algorithm.
    string(
        "variant",
        defaults.VARIANT,
        "generalist_d, generalist_d_multinorm, generalist_t, standard, pgd_at, trades, avg, max, msd, or custom.",
    )
    string(
        "learners",
        "",
        "custom variant: comma-separated learners (natural, linf_pgd, l2_pgd, trades, avg, max, msd).",
    )
    string(
        "mixing",
        "",
        "Per-learner mixing weights 'name=frac:w,frac:w;name=...' (fractions of --epochs, may be 1/3); empty: the variant's.",
    )
    floating(
        "ema_decay",
        defaults.EMA_DECAY,
        "EMA ceiling alpha of d = min(alpha, (k+1)/(k+10)); 0 disables averaging.",
    )
    string(
        "communication_start",
        str(defaults.COMMUNICATION_START),
        "First redistribution epoch as a fraction of --epochs (official 75/120).",
    )
    integer(
        "communication_period",
        defaults.COMMUNICATION_PERIOD,
        "Redistribute in epochs e >= start with e % period == 0.",
    )
    string(
        "communication_mode",
        defaults.COMMUNICATION_MODE,
        "every_batch (official), once_per_period, or none.",
    )
    floating("trades_beta", defaults.TRADES_BETA, "TRADES robustness weight.")
    # Optimisation.
    integer("epochs", 120, "Number of epochs.")
    integer(
        "steps_per_epoch",
        0,
        "Steps of an epoch, the unit of every schedule (0: one pass over the training split; "
        "fewer makes short epochs over the whole split).",
    )
    integer("batch_size", 128, "Global batch size (split across replicas).")
    string(
        "learning_rate",
        defaults.LEARNING_RATE,
        "Piecewise-linear learning rate 'frac:lr,...' in fractions of --epochs, at the integer epoch.",
    )
    floating("momentum", defaults.MOMENTUM, "SGD momentum (PyTorch form).")
    floating(
        "natural_weight_decay", defaults.NATURAL_WEIGHT_DECAY, "Coupled L2 of the natural learner."
    )
    floating(
        "natural_lr_scale",
        defaults.NATURAL_LR_SCALE,
        "Multiplies the natural learner's learning rate from the first redistribution on (its "
        "drift in each free window; Generalist's own schedule: 1).",
    )
    floating(
        "robust_weight_decay",
        defaults.ROBUST_WEIGHT_DECAY,
        "Coupled L2 of every adversarial learner (ResNet-18: 3.5e-3, WRN: 7e-4).",
    )
    # Training attacks.
    string("epsilon", defaults.EPSILON, "l_inf training radius (images in [0, 1]; ratios allowed).")
    string("step_size", defaults.STEP_SIZE, "l_inf training PGD step.")
    integer("num_steps", defaults.NUM_STEPS, "l_inf training PGD steps (exact).")
    string("l2_epsilon", defaults.L2_EPSILON, "l_2 training radius.")
    string("l2_step_size", defaults.L2_STEP_SIZE, "l_2 training PGD step.")
    integer("l2_num_steps", defaults.L2_NUM_STEPS, "l_2 training PGD steps (exact).")
    # Evaluation.
    string(
        "eval_epsilon_linf",
        "",
        "l_inf evaluation radius; empty: per dataset (8/255 CIFAR/SVHN, 0.3 MNIST and digits, 0.1 Fashion-MNIST).",
    )
    string(
        "eval_epsilon_l2",
        "",
        "l_2 evaluation radius; empty: per dataset (0.5 CIFAR/SVHN, 2.0 MNIST, 1.0 digits and Fashion-MNIST).",
    )
    integer(
        "eval_num_steps",
        defaults.EVAL_NUM_STEPS,
        "Steps of the l_inf PGD of validation and the final table (exact; step eps/4).",
    )
    integer("eval_batch_size", 256, "Evaluation batch size.")
    integer(
        "eval_examples",
        0,
        "Run the attack suite on a fixed subset of this many test examples, the same in every "
        "run (0: all).",
    )
    integer(
        "table_examples",
        -1,
        "Test examples of the final clean/PGD table of G and the EMAs (-1: as --eval_examples; "
        "0: all).",
    )
    string(
        "select_metric",
        defaults.SELECT_METRIC,
        "Validation score that selects the exported G (never the test split): clean_plus_pgd "
        "(official: clean + PGD accuracy of G), pgd, clean, or an epoch-log key like "
        "val_global/pgd_accuracy.",
    )
    floating(
        "select_clean_floor",
        defaults.SELECT_CLEAN_FLOOR,
        "Epochs whose validation clean accuracy of G reaches this floor always beat those below "
        "it (official CIFAR-10: 0.88); 0: no floor.",
    )
    integer(
        "val_examples", 0, "Validate on a fixed subset of this many validation examples (0: all)."
    )
    integer(
        "val_every",
        1,
        "Validate (and so may select) every N-th epoch and the last one; the rest are skipped.",
    )
    boolean(
        "val_emas",
        True,
        "Also validate each learner's EMA (G alone selects) and put them in the final table; "
        "--noval_emas evaluates only the exported and the last G.",
    )
    boolean(
        "train_clean_accuracy",
        False,
        "Log adversarial learners' training accuracy on clean images (an extra forward pass).",
    )
    integer("eval_restarts", 1, "Random restarts of PGD, CW and APGD in the attack suite.")
    integer("eval_square_queries", 5000, "Queries per example of the Square attack.")
    integer("eval_apgd_steps", defaults.EVAL_APGD_STEPS, "Iterations of each APGD run.")
    string(
        "eval_attacks",
        "",
        "Comma-separated attacks of the suite, or one list: default (empty), standard "
        "(AutoAttack's standard attacks of both norms), all.",
    )
    string("reference", "", "Third-party cross-check: '' or 'art' (requirements-art.txt).")
    string("surrogate", "", "SavedModel of an independent model for the transfer-attack alarm.")
    boolean("final_eval", True, "After training, run the attack suite on the exported G.")
    # Checkpoints.
    integer("keep_checkpoints", 3, "Number of checkpoints kept.")
    integer(
        "checkpoint_every_steps",
        0,
        "Also checkpoint every N steps (0: at epoch ends only); a killed run resumes mid-epoch.",
    )
    # Devices and speed.
    integer(
        "num_cpu_replicas",
        1,
        "Split the CPU into N logical devices (N-replica MirroredStrategy without a GPU).",
    )
    string(
        "jit_compile",
        "auto",
        "XLA for attacks: auto (XLA on GPU/TPU, graph mode on CPU), true, false.",
    )
    integer(
        "steps_per_execution",
        1,
        "Train steps per compiled call (fewer host round trips on TPU/GPU; same numbers).",
    )
    string(
        "precision",
        "fp32",
        "fp32, bf16, fp16 or auto (bf16 where the device computes it natively: GPUs of compute "
        "capability >= 8.0, CPUs with AMX or AVX512-BF16; else fp32). Attack gradients, mixing, "
        "exports and the final evaluation stay float32.",
    )
    string("tpu", None, "TPU address: selects TPUStrategy (documented, untested here).")


def flag_names() -> list[str]:
    """Names of the flags `define_flags` defines (absl's own flags excluded)."""
    values = flags.FlagValues()
    define_flags(values)
    return sorted(values)


def write_flags(flag_values: flags.FlagValues, path: str) -> None:
    """Writes the resolved value of every generalist_tf flag, one `--name=value` per line.

    The file is a flagfile: `--flagfile=<path>` repeats the run (convention: provenance).
    """
    lines = [flag_values[name].serialize() for name in flag_names()]
    header = "# Resolved flags of this run; repeat it with --flagfile=<this file>.\n"
    files.write_text(path, header + "\n".join(line for line in lines if line) + "\n")


def _flagfile_path(path: str) -> str:
    """A flagfile's path: as given when absolute or present from here, else from the root."""
    if os.path.isabs(path) or os.path.exists(path):
        return path
    return os.path.join(ROOT, path)


def expand_flagfiles(args) -> list[str]:
    """`args` with every `--flagfile=PATH` replaced by that file's flags, nested files included.

    The file format is absl's: one flag per line; blank lines and lines starting with `#` or
    `//` are skipped. A relative PATH is read from the current directory when it exists there,
    else from the repository root (the shipped flagfiles nest by paths from the root).

    Raises:
      flags.Error: a flagfile that cannot be read, naming it.
    """
    expanded = []
    for arg in args:
        name, _, value = arg.partition("=")
        if name not in ("--flagfile", "-flagfile"):
            expanded.append(arg)
            continue
        path = _flagfile_path(value)
        try:
            with open(path) as f:
                lines = [line.strip() for line in f]
        except OSError as e:
            raise flags.Error(f"--flagfile={value}: cannot read it ({e.strerror})") from None
        lines = [line for line in lines if line and not line.startswith(("#", "//"))]
        expanded.extend(expand_flagfiles(lines))
    return expanded


def parse(*args: str) -> flags.FlagValues:
    """A fresh FlagValues with every flag, parsed from `args` (no program name).

    Relative flagfile paths (`--flagfile=flags/...`, and the nested flagfile lines of the
    shipped flagfiles) are read from the repository root when they are not found from the
    current directory, as the README's commands run (`expand_flagfiles`); the process's working
    directory is never changed.
    """
    values = flags.FlagValues()
    define_flags(values)
    values(["generalist_tf", *expand_flagfiles(args)])
    return values


def config_from_flagfile(flagfile: str, **overrides) -> config.Config:
    """The validated `Config` of a flagfile plus `--name=value` overrides (tests, the bench)."""
    args = [f"--flagfile={flagfile}"] + [f"--{k}={v}" for k, v in overrides.items()]
    return config.from_flags(parse(*args).flag_values_dict())
