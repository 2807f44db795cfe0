"""Square Attack in l_2 (Andriushchenko et al., ECCV 2020, Sec. 3.2), vectorised over the batch.

Score-based random search on the margin loss z_y - max_{i != y} z_i (minimised), as the l_inf
version in `robust_attacks.square`; only the proposal differs. Each iteration, for every example
still classified correctly:
  1. draws two windows W1 and W2 of side h (h shrinks with the same p schedule as l_inf);
  2. moves the perturbation's mass in W1 u W2, plus an equal share per channel of the budget not
     yet used (epsilon^2 - |delta|^2), into W1, along the current perturbation there plus a new
     "meta-pattern" nu of random sign per channel, and sets W2 \\ W1 to zero;
  3. keeps the proposal when it lowers the margin.
The pattern nu is two adjacent blocks of opposite sign, each peaked at its centre:
eta_{r,s} = sum_{k=0}^{M(r,s)} 1 / (n + 1 - k)^2 with n = floor(h1 / 2) and M(r, s) =
n - max(|r - floor(h1/2) - 1|, |s - floor(h2/2) - 1|); nu = [eta^(h, k), -eta^(h, h - k)],
k = floor(h / 2), transposed with probability 1/2, unit l_2 norm.
The start is a 5 x 5 tiling of such patterns with random signs, scaled to norm epsilon. Every
proposal is clipped to the pixel box, which only shortens the perturbation, and projected on
the ball against float rounding.
"""

from __future__ import annotations

import tensorflow as tf

from generalist_tf import attacks
from generalist_tf import robust_attacks as ra

# The start tiles the image into INIT_TILES x INIT_TILES patterns.
INIT_TILES = 5
# The smallest window side (a pattern needs two blocks of at least one pixel).
MIN_SIDE = 2


def _peaked(rows, cols, h1, h2, inverse_squares):
    """eta^(h1, h2) at 1-based (rows, cols) inside the block (0 elsewhere), broadcasting."""
    n = h1 // 2
    inside = (rows >= 1) & (rows <= h1) & (cols >= 1) & (cols <= h2)
    depth = n - tf.maximum(tf.abs(rows - h1 // 2 - 1), tf.abs(cols - h2 // 2 - 1))
    # sum_{k=0}^{M} 1/(n+1-k)^2 = S(n+1) - S(n-M), with S(m) = sum_{j<=m} 1/j^2 (S(<=0) = 0).
    upper = tf.gather(inverse_squares, tf.clip_by_value(n + 1, 0, tf.size(inverse_squares) - 1))
    lower = tf.gather(inverse_squares, tf.clip_by_value(n - depth, 0, tf.size(inverse_squares) - 1))
    return tf.where(inside & (depth >= 0), upper - lower, 0.0)


def _pattern(rows, cols, top, left, side, transpose, inverse_squares):
    """nu of side `side` with its corner at (top, left), 0 outside the window; (B, H, W, 1)."""
    r = rows - top + 1
    c = cols - left + 1
    r, c = tf.where(transpose, c, r), tf.where(transpose, r, c)
    k = side // 2
    first = _peaked(r, c, side, k, inverse_squares)
    second = -_peaked(r, c - k, side, side - k, inverse_squares)
    return tf.where(c <= k, first, second)


def _unit(v, axes):
    return v / (tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True)) + ra._TINY)


def _square_l2(model, x, y, epsilon, num_queries, p_init, seed):
    x = tf.convert_to_tensor(x, tf.float32)
    _, height, width, channels = x.shape
    num_examples = tf.shape(x)[0]
    seed = tf.cast(seed, tf.int64)
    size = max(height, width) + 2
    inverse_squares = tf.math.cumsum(
        tf.concat([[0.0], 1.0 / tf.square(tf.range(1, size, dtype=tf.float32))], axis=0)
    )
    rows = tf.reshape(tf.range(height), [1, height, 1, 1])
    cols = tf.reshape(tf.range(width), [1, 1, width, 1])
    image_axes = [1, 2, 3]

    def margin_of(images):
        return -ra.margin(model(images, training=False), y)

    def signs(shape, stream):
        draw = tf.random.stateless_uniform(shape, stream, 0, 2, dtype=tf.int32)
        return tf.cast(2 * draw - 1, tf.float32)

    # The start: a tiling by patterns of side `tile`, a random sign per tile and channel.
    tile = max(height // INIT_TILES, 1)
    local = _pattern(rows % tile, cols % tile, 0, 0, tile, False, inverse_squares)
    tile_signs = signs(
        [num_examples, -(-height // tile), -(-width // tile), channels], tf.stack([seed, -1])
    )
    per_pixel = tf.gather(
        tf.gather(tile_signs, tf.range(height) // tile, axis=1), tf.range(width) // tile, axis=2
    )
    start = local * per_pixel
    delta = epsilon * _unit(start, image_axes)
    x_best = x + attacks.project(
        tf.clip_by_value(x + delta, 0.0, 1.0) - x, norm="l2", epsilon=epsilon
    )
    margin_best = margin_of(x_best)

    for i in tf.range(num_queries - 1):
        active = margin_best > 0.0
        if not tf.reduce_any(active):
            break
        stream = tf.stack([seed, tf.cast(i, tf.int64)])
        p = ra.square_p(i, num_queries, p_init)
        side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
        side = tf.clip_by_value(side, min(MIN_SIDE, min(height, width)), min(height, width) - 1)
        draws = tf.random.experimental.stateless_split(stream, 6)
        corners = [
            tf.random.stateless_uniform([num_examples], draws[j], 0, bound - side + 1, tf.int32)
            for j, bound in enumerate((height, width, height, width))
        ]
        top1, left1, top2, left2 = (tf.reshape(c, [-1, 1, 1, 1]) for c in corners)
        in_w1 = (rows >= top1) & (rows < top1 + side) & (cols >= left1) & (cols < left1 + side)
        in_w2 = (rows >= top2) & (rows < top2 + side) & (cols >= left2) & (cols < left2 + side)
        union = in_w1 | in_w2
        transpose = tf.reshape(
            tf.random.stateless_uniform([num_examples], draws[4], 0, 2, tf.int32) > 0,
            [-1, 1, 1, 1],
        )
        nu = _unit(_pattern(rows, cols, top1, left1, side, transpose, inverse_squares), image_axes)

        delta = x_best - x
        # Step 2: the mass of W1 u W2 per channel, plus a share of the unused budget, into W1.
        union_mass = tf.reduce_sum(
            tf.where(union, tf.square(delta), 0.0), axis=[1, 2], keepdims=True
        )
        used = tf.reduce_sum(tf.square(delta), axis=image_axes, keepdims=True)
        unused = tf.maximum(tf.square(epsilon) - used, 0.0)
        mass = tf.sqrt(union_mass + unused / float(channels))
        direction = (
            tf.where(in_w1, delta, 0.0)
            + nu * signs([num_examples, 1, 1, channels], draws[5]) * mass
        )
        direction = direction / (
            tf.sqrt(tf.reduce_sum(tf.square(direction), axis=[1, 2], keepdims=True)) + ra._TINY
        )
        proposal_delta = tf.where(union, 0.0, delta) + tf.where(in_w1, direction * mass, 0.0)
        proposal = tf.clip_by_value(x + proposal_delta, 0.0, 1.0)
        proposal = x + attacks.project(proposal - x, norm="l2", epsilon=epsilon)
        margin_proposal = margin_of(proposal)
        accept = active & (margin_proposal < margin_best)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), proposal, x_best)
        margin_best = tf.where(accept, margin_proposal, margin_best)
    return x_best


_GRAPH = tf.function(_square_l2, jit_compile=False)
_XLA = tf.function(_square_l2, jit_compile=True)


def square_l2(
    model,
    x,
    y,
    *,
    epsilon: float,
    num_queries: int = 5000,
    p_init: float = 0.8,
    seed: int = 0,
    jit_compile="auto",
) -> tf.Tensor:
    """Square Attack, l_2 (see the module docstring).

    Args:
      model: `model(images, training=False) -> logits`; only its logits are read.
      x: float32 images in [0, 1], (B, H, W, C); y: int labels, (B,).
      epsilon: l_2 radius.
      num_queries: queries per example, the start included; stops early once every example is
        misclassified.
      p_init: initial fraction of the image a window covers (0.8, AutoAttack's setting).
      seed: the random search is a pure function of it.
      jit_compile: compile policy (see `attacks.resolve_jit_compile`).

    Returns:
      Adversarial images inside the l_2 ball and [0, 1].

    Raises:
      ValueError: an argument outside its range, or images smaller than 3 x 3.
    """
    ra.check_square_budget(epsilon, num_queries, p_init)
    x = tf.convert_to_tensor(x, tf.float32)
    if min(x.shape[1], x.shape[2]) < MIN_SIDE + 1:
        raise ValueError(f"square_l2 needs images of at least 3 x 3 pixels, got {x.shape[1:3]}")
    compiled = _XLA if attacks.resolve_jit_compile(jit_compile) else _GRAPH
    return compiled(
        model,
        x,
        y,
        ra._scalar(epsilon),
        num_queries,
        ra._scalar(p_init),
        tf.constant(seed, tf.int64),
    )
