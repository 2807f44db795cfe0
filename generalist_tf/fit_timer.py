"""`FitTimer`: where `fit`'s wall time goes (training, tracing, validation, set-up, teardown).

A Keras callback that adds its phases to a `timing.Phases` (`train` passes `timing.RUN`).
"""

from __future__ import annotations

import time

import keras
import numpy as np

from generalist_tf import timing


class FitTimer(keras.callbacks.Callback):
    """Wall time of `fit` by part, for `timing.RUN`: training, validation, and what lies between.

    An epoch runs from `on_epoch_begin` to `on_epoch_end`; its validation from `on_test_begin`
    to `on_test_end` (Keras' evaluate set-up before it counts as training). The first epoch's
    training time minus the median of the others' is its one-off cost: tracing and compiling
    the train function (and the first fill of the input pipeline). `between epochs` is the time
    from one epoch's end to the next one's begin (callbacks after this one, metric resets).
    """

    def __init__(self, phases: timing.Phases):
        super().__init__()
        self.phases = phases
        self.train_seconds: list[float] = []
        self._epoch = self._test = self._validation = 0.0
        self._last_end = None
        self._validations = 0
        self._first_begin = None

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._validation = time.perf_counter(), 0.0
        if self._first_begin is None:
            self._first_begin = self._epoch
        if self._last_end is not None:
            self.phases.add("between epochs", self._epoch - self._last_end)

    def on_test_begin(self, logs=None):
        self._test = time.perf_counter()

    def on_test_end(self, logs=None):
        seconds = time.perf_counter() - self._test
        self._validation += seconds
        self._validations += 1
        self.phases.add("first validation" if self._validations == 1 else "validation", seconds)

    def on_epoch_end(self, epoch, logs=None):
        self._last_end = time.perf_counter()
        self.train_seconds.append(self._last_end - self._epoch - self._validation)

    def record(self, fit_start: float) -> None:
        """Adds the training phases of the `fit` calls since `fit_start` (perf_counter)."""
        if not self.train_seconds:
            return
        first = self.train_seconds[0]
        steady = float(np.median(self.train_seconds[1:])) if len(self.train_seconds) > 1 else first
        self.phases.add("first epoch's extra (tracing)", first - steady)
        self.phases.add("training epochs", sum(self.train_seconds) - first + steady)
        self.phases.add("fit set-up", self._first_begin - fit_start)
        self.phases.add("fit teardown", time.perf_counter() - self._last_end)
