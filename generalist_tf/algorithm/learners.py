"""Base learners: one `keras.Model` per sub-task, each with its own `train_step` and optimizer.

A learner owns a `network` (trained by its optimizer) and an `ema_network` (the exponential
moving average of it that the Generalist mixing reads; updated by `generalist.Generalist`, never
by gradients). Tasks differ in two hooks only:

  `make_inputs(x, y)`          the training inputs, made in inference mode outside the gradient
                               tape (clean images, PGD examples, ...);
  `per_example_loss(x, inputs, y)`  the loss per example and the logits of the training pass
                               (training-mode BatchNorm), inside the tape.

The registry `LEARNERS` maps task names (`natural`, `linf_pgd`, `l2_pgd`, `trades`, `avg`,
`max`, `msd`) to classes; the same names are flag values, metric prefixes and checkpoint keys.

Loss scaling under `tf.distribute`: each replica averages its per-example losses over the
*global* batch (`tf.nn.compute_average_loss`), and the Keras optimizer sums the replicas'
gradients. Dividing again by the number of replicas, or averaging over the per-replica batch,
would give an update off by the replica count with no error.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from generalist_tf import attacks, defaults, names
from generalist_tf.attacks.budget import Attack  # noqa: F401 (the budget type, `learners.Attack`)


def per_example_ce(y, logits) -> tf.Tensor:
    """Cross-entropy per example, in float32 whatever the compute dtype."""
    return tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(y, tf.int32), logits=tf.cast(logits, tf.float32)
    )


def global_batch_mean(per_example: tf.Tensor) -> tf.Tensor:
    """Mean over the global batch: sum over this replica / (replica batch * replicas)."""
    return tf.nn.compute_average_loss(per_example)


class BaseLearner(keras.Model):
    """A base learner (Generalist: one sub-task, one network, one optimizer).

    Args:
      network: the trained network (images in [0, 1] -> logits).
      ema_network: a network of the same architecture holding the EMA of `network`.
      attack: the training attack of adversarial learners (None for `natural`).
      jit_compile: compile policy of the attack (`auto`, `true`, `false`).
      seed: None (stateful random attack starts), or two integers: then the random start of
        step s on replica r is a pure function of (seed, s, r), so a resumed run is identical.
      clean_accuracy: adversarial learners also log `accuracy` on the clean images, at the
        cost of an extra forward pass per step that the algorithm does not need (off by default;
        the natural learner's `accuracy` comes free with its training pass).
      name: the task name (a key of `LEARNERS`).
    """

    adversarial = True

    def __init__(
        self,
        network,
        ema_network,
        *,
        attack=None,
        jit_compile="auto",
        seed=None,
        clean_accuracy=False,
        name=None,
    ):
        super().__init__(name=name or self.task)
        self.network = network
        self.ema_network = ema_network
        self.ema_network.trainable = False
        self.attack = attack
        self.attack_jit_compile = jit_compile
        self.seed = None if seed is None else tuple(int(s) for s in seed)
        self.clean_accuracy = bool(clean_accuracy) or not self.adversarial
        self.loss_metric = keras.metrics.Mean(name=f"{self.name}_loss")
        self.accuracy_metric = (
            keras.metrics.SparseCategoricalAccuracy(name=f"{self.name}_acc")
            if self.clean_accuracy
            else None
        )
        self.adv_accuracy_metric = (
            keras.metrics.SparseCategoricalAccuracy(name=f"{self.name}_adv_acc")
            if self.adversarial
            else None
        )
        # Its networks come built from their builder: nothing is left for Keras to build (an
        # unbuilt learner made Keras trace the whole Generalist before every fit and evaluate).
        self.built = True

    def call(self, x, training=False):
        return self.network(x, training=training)

    def attack_seed(self, stream: int = 0):
        """The stateless seed of this step's attack: (seed, step, replica, stream), or None."""
        if self.seed is None:
            return None
        seed = tf.constant(self.seed, tf.int64)
        context = tf.distribute.get_replica_context()
        replica = 0 if context is None else context.replica_id_in_sync_group
        for data in (self.optimizer.iterations, replica, stream):
            seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(data, tf.int64))
        return seed

    # --- the two task hooks -------------------------------------------------------------------
    def make_inputs(self, x, y):
        """Training inputs of this task (inference-mode attacks run here). Default: clean x."""
        return x

    def per_example_loss(self, x, inputs, y):
        """Per-example loss and training-pass logits (training-mode BN). Default: CE(f(inputs))."""
        logits = self.network(inputs, training=True)
        return per_example_ce(y, logits), logits

    # -----------------------------------------------------------------------------------------
    def train_step(self, data):
        """One SGD step of this learner on one (global) batch; only its network's weights move."""
        x, y = data
        inputs = self.make_inputs(x, y)
        extra_clean_pass = self.adversarial and self.clean_accuracy
        clean_logits = self.network(x, training=False) if extra_clean_pass else None
        with tf.GradientTape() as tape:
            per_example, logits = self.per_example_loss(x, inputs, y)
            loss = global_batch_mean(per_example)
            # Identity in fp32/bf16; with fp16 the LossScaleOptimizer's dynamic scale.
            scaled_loss = self.optimizer.scale_loss(loss)
        variables = self.network.trainable_variables
        self.optimizer.apply(tape.gradient(scaled_loss, variables), variables)
        # Per-replica mean for the running metric (the optimizer needs the global-batch scaling).
        self.loss_metric.update_state(tf.reduce_mean(per_example))
        if self.adversarial:
            self.adv_accuracy_metric.update_state(y, logits)
            if extra_clean_pass:
                self.accuracy_metric.update_state(y, clean_logits)
        else:
            self.accuracy_metric.update_state(y, logits)
        return {k: m.result() for k, m in self.named_metrics().items()}

    def named_metrics(self) -> dict[str, keras.metrics.Metric]:
        """Metrics by their logged name (`loss`, `accuracy` when logged, `adv_accuracy`)."""
        named = {"loss": self.loss_metric}
        if self.accuracy_metric is not None:
            named["accuracy"] = self.accuracy_metric
        if self.adversarial:
            named["adv_accuracy"] = self.adv_accuracy_metric
        return named

    @property
    def metrics(self):
        return list(self.named_metrics().values())


class NaturalLearner(BaseLearner):
    """Standard training: cross-entropy on clean images."""

    task = "natural"
    adversarial = False


class PGDLearner(BaseLearner):
    """Adversarial training (Madry et al. 2018): CE on PGD examples of the learner's own network."""

    def make_inputs(self, x, y):
        return attacks.pgd_with(
            self.attack,
            self.network,
            x,
            y,
            jit_compile=self.attack_jit_compile,
            seed=self.attack_seed(),
        )


class LinfPGDLearner(PGDLearner):
    task = "linf_pgd"


class L2PGDLearner(PGDLearner):
    task = "l2_pgd"


class TradesLearner(BaseLearner):
    """TRADES (Zhang et al. 2019): CE(f(x), y) + beta * KL(f(x) || f(x')), x' from the KL attack.

    Both forward passes of the loss run in training mode, as in the TRADES reference code.

    Args:
      beta: the robustness weight (6 in the paper).
    """

    task = "trades"

    def __init__(self, *args, beta=defaults.TRADES_BETA, **kwargs):
        super().__init__(*args, **kwargs)
        self.beta = beta

    def make_inputs(self, x, y):
        a = self.attack
        return attacks.trades_pgd(
            self.network,
            x,
            epsilon=a.epsilon,
            step_size=a.step_size,
            num_steps=a.num_steps,
            jit_compile=self.attack_jit_compile,
            seed=self.attack_seed(),
        )

    def per_example_loss(self, x, inputs, y):
        clean_logits = tf.cast(self.network(x, training=True), tf.float32)
        adv_logits = self.network(inputs, training=True)
        kl = attacks.kl_divergence(
            tf.nn.softmax(clean_logits), tf.nn.log_softmax(tf.cast(adv_logits, tf.float32))
        )
        return per_example_ce(y, clean_logits) + self.beta * kl, adv_logits


class _MultiNormLearner(BaseLearner):
    """Multi-norm training on an l_inf and an l_2 PGD example of every image (Tramer & Boneh)."""

    def __init__(self, *args, l2_attack=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.l2_attack = l2_attack

    def make_inputs(self, x, y):
        return (
            attacks.pgd_with(
                self.attack,
                self.network,
                x,
                y,
                jit_compile=self.attack_jit_compile,
                seed=self.attack_seed(0),
            ),
            attacks.pgd_with(
                self.l2_attack,
                self.network,
                x,
                y,
                jit_compile=self.attack_jit_compile,
                seed=self.attack_seed(1),
            ),
        )

    def _both_losses(self, inputs, y):
        linf_logits = self.network(inputs[0], training=True)
        l2_logits = self.network(inputs[1], training=True)
        return per_example_ce(y, linf_logits), per_example_ce(y, l2_logits), linf_logits, l2_logits


class AvgLearner(_MultiNormLearner):
    """AVG: the mean of the l_inf and l_2 adversarial losses (adv accuracy: l_inf examples)."""

    task = "avg"

    def per_example_loss(self, x, inputs, y):
        linf_loss, l2_loss, linf_logits, _ = self._both_losses(inputs, y)
        return 0.5 * (linf_loss + l2_loss), linf_logits


class MaxLearner(_MultiNormLearner):
    """MAX: per example, the worse of the l_inf and l_2 adversarial losses (adv acc: that one)."""

    task = "max"

    def per_example_loss(self, x, inputs, y):
        linf_loss, l2_loss, linf_logits, l2_logits = self._both_losses(inputs, y)
        worse_is_linf = linf_loss >= l2_loss
        logits = tf.where(worse_is_linf[:, None], linf_logits, l2_logits)
        return tf.maximum(linf_loss, l2_loss), logits


class MSDLearner(_MultiNormLearner):
    """MSD (Maini et al. 2020): CE on multi-steepest-descent examples over l_inf and l_2."""

    task = "msd"

    def make_inputs(self, x, y):
        linf, l2 = self.attack, self.l2_attack
        return attacks.msd(
            self.network,
            x,
            y,
            norms=("linf", "l2"),
            epsilons=(linf.epsilon, l2.epsilon),
            step_sizes=(linf.step_size, l2.step_size),
            num_steps=max(linf.num_steps, l2.num_steps),
            jit_compile=self.attack_jit_compile,
        )

    def per_example_loss(self, x, inputs, y):
        return BaseLearner.per_example_loss(self, x, inputs, y)


LEARNERS: dict[str, type[BaseLearner]] = {
    cls.task: cls
    for cls in (
        NaturalLearner,
        LinfPGDLearner,
        L2PGDLearner,
        TradesLearner,
        AvgLearner,
        MaxLearner,
        MSDLearner,
    )
}

assert set(LEARNERS) == set(names.TRAINING_NORMS), (
    "learners.LEARNERS and names.TRAINING_NORMS differ"
)
