"""FAB-T, the targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), l_inf and l_2.

FAB is a minimum-norm attack: it looks for the adversarial example closest to x, not for the
worst point of a fixed ball. Each iteration (Croce & Hein 2020, Algorithm 1):
  1. linearises the logit gap f = z_t - z_y of the target class t at the current point x_k
     (value and gradient: one backward pass), which gives a hyperplane pi;
  2. projects both x_k and the original x onto pi intersected with the pixel box
     (`project_onto_hyperplane`), giving the steps d_k and d_0;
  3. moves to a convex combination of the two projections, overshot by eta:
     x_{k+1} = clip((1 - a) (x_k + eta d_k) + a (x + eta d_0)), with
     a = min(|d_k| / (|d_k| + |d_0|), alpha_max), which biases the iterate towards x;
  4. if x_{k+1} fools the model, keeps it when it is the closest so far and pulls it back
     towards x: x_{k+1} = (1 - beta) x + beta x_{k+1}.
FAB-T (AutoAttack's version) runs once per target class, the `target_classes` most likely wrong
classes at x; the first run of a target starts at x itself, further restarts from a random
point around x. As an attack of the robustness suite it returns the closest adversarial example
found when it lies within epsilon, and x otherwise.

The model runs in inference mode; gradients that are missing or non-finite count as zero (as in
`apgd`), and the loops are compiled under the project's XLA policy.
"""

from __future__ import annotations

import tensorflow as tf

from generalist_tf.attacks import budget, geometry, losses
from generalist_tf.attacks.compile import compiled, scalar

# The reference's defaults (AutoAttack's FAB): the largest bias towards x, the overshoot, and the
# backward step after a success.
ALPHA_MAX = 0.1
ETA = 1.05
BETA = 0.9
TARGET_CLASSES = 9
# Bisection steps of the projection onto hyperplane and box: each halves the bracket of the
# multiplier (l_2, in log space over at most 2^-40 .. 2^40 of the unconstrained value) or of the
# radius (l_inf, over [0, 1]); 40 steps are below float32 resolution for both.
PROJECTION_STEPS = 40
_LOG_RANGE = 40.0


def _flat(v: tf.Tensor) -> tf.Tensor:
    return tf.reshape(v, [tf.shape(v)[0], -1])


def norm_of(v: tf.Tensor, norm: str) -> tf.Tensor:
    """Per-example l_inf or l_2 norm of a batch."""
    v = _flat(v)
    if norm == "linf":
        return tf.reduce_max(tf.abs(v), axis=1)
    return tf.sqrt(tf.reduce_sum(tf.square(v), axis=1))


def project_onto_hyperplane(w, c, lower, upper, norm: str) -> tf.Tensor:
    """The smallest step d (in `norm`) with w.d = -c and lower <= d <= upper, per example.

    The point z + d is then the projection of z onto the hyperplane {w.(z' - z) + c = 0}
    intersected with the box; `c` is the linearised gap at z. `lower <= 0 <= upper` (z lies in
    the box). When the box cannot reach the hyperplane, d is the box corner that gets closest.

    Both norms solve a monotone one-dimensional problem by bisection:
      * l_2: d = clip(lam * w', lower, upper) for the smallest lam >= 0 reaching the plane
        (the KKT conditions of min |d|^2 over the box and the half-space);
      * l_inf: d_i = the furthest point of [max(-t, lower_i), min(t, upper_i)] in the direction of
        w'_i, for the smallest radius t reaching the plane;
    where w' = -sign(c) w points towards the plane.

    Args:
      w: (B, ...) gradient of the gap; c: (B,) the gap; lower, upper: (B, ...) the box of d.

    Returns:
      d, shaped like `w`.
    """
    shape = tf.shape(w)
    w, lower, upper = _flat(w), _flat(lower), _flat(upper)
    towards = tf.where(c < 0.0, 1.0, -1.0)[:, None] * w  # w' (we need w'.d >= |c|).
    needed = tf.abs(c)
    positive, negative = towards > 0.0, towards < 0.0
    furthest = tf.where(positive, upper, tf.where(negative, lower, 0.0))
    reachable = tf.reduce_sum(towards * furthest, axis=1)

    if norm == "l2":
        scale = tf.reduce_sum(tf.square(towards), axis=1) + losses.TINY
        unconstrained = tf.math.log(needed / scale + losses.TINY)

        def step(log_lam):
            # Coordinates with w' = 0 stay at 0 (inf * 0 must not become NaN).
            scaled = tf.exp(tf.minimum(log_lam, 80.0))[:, None] * towards
            return tf.where(tf.equal(towards, 0.0), 0.0, tf.clip_by_value(scaled, lower, upper))

        low, high = unconstrained - _LOG_RANGE, unconstrained + _LOG_RANGE
    else:

        def step(radius):
            t = radius[:, None]
            return tf.where(
                positive,
                tf.minimum(t, upper),
                tf.where(negative, tf.maximum(-t, lower), 0.0),
            )

        low, high = tf.zeros_like(needed), tf.ones_like(needed)

    for _ in tf.range(PROJECTION_STEPS):
        middle = 0.5 * (low + high)
        enough = tf.reduce_sum(towards * step(middle), axis=1) >= needed
        low, high = tf.where(enough, low, middle), tf.where(enough, middle, high)
    d = tf.where((needed >= reachable)[:, None], furthest, step(high))
    d = tf.where((needed > 0.0)[:, None], d, 0.0)
    return tf.reshape(d, shape)


def _fab_run(model, x, y, target, norm, num_steps, alpha_max, eta, beta, start_radius, seed):
    """One FAB run towards `target` (Algorithm 1 of the paper, steps 1-4 of the module doc).

    Returns the closest adversarial point met and its distance to x (+inf where none was found;
    0 where x itself is misclassified).
    """
    x = tf.convert_to_tensor(x, tf.float32)
    shape = geometry.batch_shape(x)
    y = tf.cast(y, tf.int32)
    target = tf.cast(target, tf.int32)

    def gap_and_gradient(images):
        with tf.GradientTape(watch_accessed_variables=False) as tape:
            tape.watch(images)
            logits = tf.cast(model(images, training=False), tf.float32)
            gap = tf.gather(logits, target, batch_dims=1) - tf.gather(logits, y, batch_dims=1)
            objective = tf.reduce_sum(tf.where(tf.math.is_finite(gap), gap, 0.0))
        gradient = tape.gradient(
            objective, images, unconnected_gradients=tf.UnconnectedGradients.ZERO
        )
        return gap, geometry.finite_or_zero(gradient, images)

    clean_fooled = losses.fooled(model(x, training=False), y)
    x_best = x
    distance_best = tf.where(clean_fooled, 0.0, float("inf"))
    # A random start around x within start_radius (0: the run starts at x itself).
    x_cur = tf.clip_by_value(
        x + geometry.random_init(x, norm=norm, epsilon=start_radius, seed=seed), 0.0, 1.0
    )
    for _ in tf.range(num_steps):
        gap, w = gap_and_gradient(x_cur)
        # Step 2: the plane through the linearisation at x_k, seen from x_k and from x.
        d_cur = project_onto_hyperplane(w, gap, -x_cur, 1.0 - x_cur, norm)
        gap_at_x = gap + tf.reduce_sum(_flat(w) * _flat(x - x_cur), axis=1)
        d_orig = project_onto_hyperplane(w, gap_at_x, -x, 1.0 - x, norm)
        # Step 3: the biased, overshot combination of the two projections.
        n_cur, n_orig = norm_of(d_cur, norm), norm_of(d_orig, norm)
        alpha = tf.minimum(n_cur / (n_cur + n_orig + losses.TINY), alpha_max)
        alpha = tf.reshape(alpha, shape)
        x_next = tf.clip_by_value(
            (1.0 - alpha) * (x_cur + eta * d_cur) + alpha * (x + eta * d_orig), 0.0, 1.0
        )
        # Step 4: keep the closest success, then step back towards x.
        fooled = losses.fooled(model(x_next, training=False), y)
        distance = norm_of(x_next - x, norm)
        closer = fooled & (distance < distance_best)
        x_best = tf.where(tf.reshape(closer, shape), x_next, x_best)
        distance_best = tf.where(closer, distance, distance_best)
        x_cur = tf.where(tf.reshape(fooled, shape), (1.0 - beta) * x + beta * x_next, x_next)
        x_cur = tf.stop_gradient(x_cur)
    return tf.stop_gradient(x_best), distance_best


_FAB = compiled(_fab_run)


def minimal_adversarial(
    model,
    x,
    y,
    *,
    norm: str,
    num_steps: int = 100,
    target_classes: int = TARGET_CLASSES,
    restarts: int = 1,
    start_radius: float = 0.0,
    alpha_max: float = ALPHA_MAX,
    eta: float = ETA,
    beta: float = BETA,
    seed: int = 0,
    jit_compile="auto",
) -> tuple[tf.Tensor, tf.Tensor]:
    """FAB-T's closest adversarial examples and their distances (+inf where none was found).

    Args:
      model: `model(images, training=False) -> logits`.
      x: float32 images in [0, 1], (B, H, W, C); y: int labels, (B,).
      norm: `linf` or `l2`, the norm minimised.
      num_steps: exact number of iterations per run (one gradient and one forward pass each).
      target_classes: the most likely wrong classes at x attacked in turn (capped at K - 1).
      restarts: runs per target; the first starts at x, the others at a random point of the
        `start_radius` ball around x.
      alpha_max, eta, beta: the paper's bias bound, overshoot and backward step.
      seed: the random starts are a pure function of it.
      jit_compile: compile policy (see `compile.resolve_jit_compile`).

    Raises:
      ValueError: an argument outside its range.
    """
    budget.check_budget(norm=norm, num_steps=num_steps, min_steps=1)
    budget.check_count("target_classes", target_classes, 1)
    budget.check_count("restarts", restarts, 1)
    budget.check_in("alpha_max", alpha_max, 0.0, 1.0)
    budget.check_in("beta", beta, 0.0, 1.0)
    if not eta >= 1.0:
        raise ValueError(f"eta must be >= 1, got {eta}")
    if restarts > 1 and not start_radius > 0:
        raise ValueError(f"start_radius must be > 0 with restarts > 1, got {start_radius}")
    x = tf.convert_to_tensor(x, tf.float32)
    y = tf.cast(tf.convert_to_tensor(y), tf.int32)
    logits = tf.cast(model(x, training=False), tf.float32)
    targets = losses.likely_wrong_classes(logits, y, target_classes)
    best, best_distance = x, tf.fill(tf.shape(y), float("inf"))
    for t in range(targets.shape[-1]):
        for restart in range(restarts):
            radius = 0.0 if restart == 0 else float(start_radius)
            found, distance = _FAB(
                jit_compile,
                model,
                x,
                y,
                targets[:, t],
                norm,
                num_steps,
                scalar(alpha_max),
                scalar(eta),
                scalar(beta),
                scalar(radius),
                tf.constant([seed, t * restarts + restart], tf.int64),
            )
            closer = distance < best_distance
            best = tf.where(tf.reshape(closer, geometry.batch_shape(x)), found, best)
            best_distance = tf.where(closer, distance, best_distance)
    return best, best_distance


def fab_t(model, x, y, *, norm: str, epsilon: float, seed: int = 0, **kwargs) -> tf.Tensor:
    """FAB-T as a bounded attack: the closest adversarial example if within epsilon, else x.

    `kwargs` go to `minimal_adversarial`; restarts start in the epsilon ball, as AutoAttack's.

    Returns:
      Images inside the `norm` ball of radius epsilon and [0, 1].
    """
    budget.check_epsilon(epsilon)
    kwargs.setdefault("start_radius", float(epsilon))
    x = tf.convert_to_tensor(x, tf.float32)
    found, distance = minimal_adversarial(model, x, y, norm=norm, seed=seed, **kwargs)
    inside = tf.reshape(distance <= epsilon, geometry.batch_shape(x))
    return tf.where(inside, found, x)
