"""Every default of the algorithm and its validation, defined once.

The command line's flags (`cli.define_flags`), the config and the Python API
(`api.build_generalist`, `api.frontier`, the learners and the optimizer) read these names, so the
two doors run one algorithm; `tests/test_defaults.py` compares the two doors parameter by
parameter. The values are the official CIFAR-10 ResNet-18 recipe (generalist_tf/docs/algorithm.md); flagfiles and
arguments override them per experiment. Pure Python: importing it starts nothing.
"""

from generalist_tf import names

VARIANT = "generalist_d"
# Optimisation: piecewise-linear learning rate in fractions of the epochs; PyTorch-form SGD.
LEARNING_RATE = "0:0.01,1/3:0.01,2/3:0.001,1:0.0001"
MOMENTUM = 0.9
NATURAL_WEIGHT_DECAY = 5e-4
# The official ResNet-18 value for every adversarial learner (WRN-34-10: 7e-4).
ROBUST_WEIGHT_DECAY = 3.5e-3
NATURAL_LR_SCALE = 1.0
# EMA of each learner (official alpha), TRADES' robustness weight.
EMA_DECAY = 0.999
TRADES_BETA = 6.0
# Redistribution of G into the learners: from 75/120 of training, every 5th epoch, every batch.
COMMUNICATION_START = 0.625
COMMUNICATION_PERIOD = 5
COMMUNICATION_MODE = "every_batch"
# Training attacks: l_inf 8/255 (step 2/255, 10 steps) and l_2 0.5 (step 0.125, 10 steps).
EPSILON = "8/255"
STEP_SIZE = "2/255"
NUM_STEPS = 10
L2_EPSILON = "0.5"
L2_STEP_SIZE = "0.125"
L2_NUM_STEPS = 10
# Validation and evaluation PGD: 20 steps of epsilon / 4.
EVAL_NUM_STEPS = 20
STEP_FRACTION = 0.25
# Iterations of every APGD run of the attack suite (AutoAttack's standard budget).
EVAL_APGD_STEPS = 100
# Choice of the exported G: best clean + PGD accuracy on validation, no clean floor.
SELECT_METRIC = names.CLEAN_PLUS_PGD
SELECT_CLEAN_FLOOR = 0.0


def eval_step(epsilon: float) -> float:
    """The step of every validation and evaluation PGD: epsilon / 4."""
    return epsilon * STEP_FRACTION
