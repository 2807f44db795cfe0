"""Square Attack (Andriushchenko et al., ECCV 2020), l_inf and l_2: score-based random search.

Both versions read only the logits (the margin loss z_y - max_{i != y} z_i, minimised) and never
a gradient, query each example `num_queries` times at most (the initialisation included) and stop
early once every example is misclassified. They share the schedule of the window size (`square_p`)
and differ in the proposal.

l_inf (Sec. 3.1): start with vertical stripes of width 1 at +-epsilon; each iteration sets a random
square window to +-epsilon per channel and keeps it if the margin decreases.

l_2 (Sec. 3.2), for every example still classified correctly:
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

from generalist_tf.attacks import budget, geometry, losses
from generalist_tf.attacks.compile import compiled, scalar

# p is halved at these iterations of a 10,000-query budget; other budgets rescale the iteration
# to that scale (the paper's schedule).
SQUARE_SCHEDULE_QUERIES = 10_000
SQUARE_HALVING_ITERATIONS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# The start tiles the image into INIT_TILES x INIT_TILES patterns.
INIT_TILES = 5
# The smallest window side (a pattern needs two blocks of at least one pixel).
MIN_SIDE = 2


def _check_square_budget(epsilon, num_queries, p_init) -> None:
    budget.check_epsilon(epsilon)
    budget.check_count("num_queries", num_queries, 1)
    budget.check_in("p_init", p_init, 0.0, 1.0, open_low=True)


def square_p(iteration: tf.Tensor, num_queries: int, p_init: float) -> tf.Tensor:
    """The fraction p of pixels a Square Attack window covers at `iteration` (0-indexed).

    Andriushchenko et al. 2020: p starts at `p_init` and is halved at iterations 10, 50, 200,
    500, 1000, 2000, 4000, 6000 and 8000 of a 10,000-query run; other budgets are rescaled.
    """
    scaled = tf.math.floordiv(
        tf.cast(iteration, tf.int64) * SQUARE_SCHEDULE_QUERIES, tf.cast(num_queries, tf.int64)
    )
    halvings = tf.reduce_sum(
        tf.cast(scaled > tf.constant(SQUARE_HALVING_ITERATIONS, tf.int64), tf.float32)
    )
    return p_init / tf.pow(2.0, halvings)


def _square(model, x, y, epsilon, num_queries, p_init, seed):
    """Square Attack, l_inf (Andriushchenko et al. 2020, Algorithm 1), vectorised over the batch.

    Score-based: it reads only the logits (the margin loss z_y - max_{i != y} z_i, minimised) and
    never a gradient. Each iteration proposes, for every example still classified correctly, a
    random square window set to +-epsilon per channel and keeps it if the margin decreases.
    """
    x = tf.convert_to_tensor(x, tf.float32)
    _, height, width, channels = x.shape
    num_examples = tf.shape(x)[0]
    seed = tf.cast(seed, tf.int64)

    def margin_of(images):
        return -losses.margin(model(images, training=False), y)

    def random_sign(shape, stream):
        draw = tf.random.stateless_uniform(shape, stream, 0, 2, dtype=tf.int32)
        return tf.cast(2 * draw - 1, tf.float32) * epsilon

    # Initialisation with vertical stripes of width 1 at +-epsilon (Sec. 3.1 of the paper).
    stripes = random_sign([num_examples, 1, width, channels], tf.stack([seed, -1]))
    x_best = tf.clip_by_value(x + stripes, 0.0, 1.0)
    margin_best = margin_of(x_best)
    rows = tf.reshape(tf.range(height), [1, height, 1, 1])
    cols = tf.reshape(tf.range(width), [1, 1, width, 1])
    for i in tf.range(num_queries - 1):
        active = margin_best > 0.0
        if not tf.reduce_any(active):
            break
        stream = tf.stack([seed, tf.cast(i, tf.int64)])
        p = square_p(i, num_queries, p_init)
        # Side s = round(sqrt(p * H * W)), between 1 and min(H, W) - 1 as in the paper's code.
        side = tf.cast(tf.round(tf.sqrt(p * float(height * width))), tf.int32)
        side = tf.clip_by_value(side, 1, max(min(height, width) - 1, 1))
        corner_streams = tf.random.experimental.stateless_split(stream, 3)
        top = tf.random.stateless_uniform(
            [num_examples], corner_streams[0], 0, height - side + 1, dtype=tf.int32
        )
        left = tf.random.stateless_uniform(
            [num_examples], corner_streams[1], 0, width - side + 1, dtype=tf.int32
        )
        top, left = tf.reshape(top, [-1, 1, 1, 1]), tf.reshape(left, [-1, 1, 1, 1])
        window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
        signs = random_sign([num_examples, 1, 1, channels], corner_streams[2])
        # The current perturbation with the window set to +-epsilon (per channel).
        proposal = tf.clip_by_value(x + tf.where(window, signs, x_best - x), 0.0, 1.0)
        # A proposal equal to the current image wastes a query; the paper's code resamples. The
        # opposite signs always change the window (clip(x + e) != clip(x - e) for e > 0).
        changed = tf.reduce_any(tf.abs(proposal - x_best) > 1e-7, axis=[1, 2, 3])
        signs = tf.where(tf.reshape(changed, [-1, 1, 1, 1]), signs, -signs)
        proposal = tf.clip_by_value(x + tf.where(window, signs, x_best - x), 0.0, 1.0)
        margin_proposal = margin_of(proposal)
        accept = active & (margin_proposal < margin_best)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), proposal, x_best)
        margin_best = tf.where(accept, margin_proposal, margin_best)
    return x_best


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
    return v / (tf.sqrt(tf.reduce_sum(tf.square(v), axis=axes, keepdims=True)) + losses.TINY)


def _square_l2(model, x, y, epsilon, num_queries, p_init, seed):
    """Square Attack, l_2 (the module docstring, steps 1-3), vectorised over the batch."""
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
        return -losses.margin(model(images, training=False), y)

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
    x_best = x + geometry.project(
        tf.clip_by_value(x + delta, 0.0, 1.0) - x, norm="l2", epsilon=epsilon
    )
    margin_best = margin_of(x_best)

    for i in tf.range(num_queries - 1):
        active = margin_best > 0.0
        if not tf.reduce_any(active):
            break
        stream = tf.stack([seed, tf.cast(i, tf.int64)])
        p = square_p(i, num_queries, p_init)
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
            tf.sqrt(tf.reduce_sum(tf.square(direction), axis=[1, 2], keepdims=True)) + losses.TINY
        )
        proposal_delta = tf.where(union, 0.0, delta) + tf.where(in_w1, direction * mass, 0.0)
        proposal = tf.clip_by_value(x + proposal_delta, 0.0, 1.0)
        proposal = x + geometry.project(proposal - x, norm="l2", epsilon=epsilon)
        margin_proposal = margin_of(proposal)
        accept = active & (margin_proposal < margin_best)
        x_best = tf.where(tf.reshape(accept, [-1, 1, 1, 1]), proposal, x_best)
        margin_best = tf.where(accept, margin_proposal, margin_best)
    return x_best


_SQUARE_LINF = compiled(_square)
_SQUARE_L2 = compiled(_square_l2)


def square(
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
    """Square Attack, l_inf (Andriushchenko et al. 2020): random search on the margin loss.

    Args:
      model: `model(images, training=False) -> logits`; only its logits are read.
      x: float32 images in [0, 1], (B, H, W, C).
      y: int labels, (B,).
      epsilon: l_inf radius.
      num_queries: queries per example, the stripe initialisation included; the attack stops
        early once every example is misclassified.
      p_init: initial fraction of pixels of a square window (0.8 in the paper for l_inf).
      seed: the random search is a pure function of it.
      jit_compile: compile policy (see `compile.resolve_jit_compile`).

    Returns:
      Adversarial images inside the l_inf ball and [0, 1].

    Raises:
      ValueError: an argument outside its range.
    """
    _check_square_budget(epsilon, num_queries, p_init)
    return _SQUARE_LINF(
        jit_compile,
        model,
        x,
        y,
        scalar(epsilon),
        num_queries,
        scalar(p_init),
        tf.constant(seed, tf.int64),
    )


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
      jit_compile: compile policy (see `compile.resolve_jit_compile`).

    Returns:
      Adversarial images inside the l_2 ball and [0, 1].

    Raises:
      ValueError: an argument outside its range, or images smaller than 3 x 3.
    """
    _check_square_budget(epsilon, num_queries, p_init)
    x = tf.convert_to_tensor(x, tf.float32)
    if min(x.shape[1], x.shape[2]) < MIN_SIDE + 1:
        raise ValueError(f"square_l2 needs images of at least 3 x 3 pixels, got {x.shape[1:3]}")
    return _SQUARE_L2(
        jit_compile,
        model,
        x,
        y,
        scalar(epsilon),
        num_queries,
        scalar(p_init),
        tf.constant(seed, tf.int64),
    )
