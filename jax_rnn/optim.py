"""Adagrad with the semantics of ``tf.compat.v1.train.AdagradOptimizer``, as an Optax transformation.

TF1 Adagrad (the tutorial's optimizer)::

    acc_0 = 0.1;   acc += g * g;   var -= lr * g / sqrt(acc)          (no epsilon)

``optax.adagrad`` computes the same thing but adds ``eps=1e-7`` inside the square root by default;
with ``initial_accumulator_value=0.1, eps=0.0`` the updates are identical (tested against a numpy
transcription to 1e-7, and against TensorFlow itself in ``tests/test_equivalence.py``).
"""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import optax

TF1_INITIAL_ACCUMULATOR = 0.1  # AdagradOptimizer's initial_accumulator_value


def check_positive(name: str, value, hint: str = "") -> None:
    """ValueError ``"{name} must be a finite number > 0{hint}, got ..."`` unless ``value`` is one (bools refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{hint}, got {value!r}")


class Adagrad(optax.GradientTransformation):
    """What `adagrad` returns: optax's Adagrad, marked as elementwise (each parameter's update depends on
    its own gradient and accumulator only). The training loop runs such an optimizer on all parameters
    as one vector (`jax_rnn.train`), which it cannot assume of any optax transformation."""

    __slots__ = ()


def adagrad(learning_rate: float = 0.1, initial_accumulator_value: float = TF1_INITIAL_ACCUMULATOR
            ) -> optax.GradientTransformation:
    """TF1-compatible Adagrad: ``optax.adagrad(learning_rate, initial_accumulator_value, eps=0.0)``.

    The same values give the same object, however they are passed (``adagrad(0.1)``,
    ``adagrad(learning_rate=0.1)``, ``adagrad(0.1, 0.1)``): the training functions take the optimizer as
    a static argument, and the same object means no recompilation.

    **Example:** ``opt = adagrad(0.1); opt_state = opt.init(params)``.
    """
    check_positive("learning_rate", learning_rate)
    check_positive("initial_accumulator_value", initial_accumulator_value, " (TF1 uses 0.1)")
    return _adagrad(float(learning_rate), float(initial_accumulator_value))


@functools.cache
def _adagrad(learning_rate: float, initial_accumulator_value: float) -> Adagrad:
    return Adagrad(*optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=0.0))


def accumulators(opt_state):
    """Adagrad's accumulators (optax's ``sum_of_squares``), a pytree in the layout of the parameters: the
    optimizer state that TensorFlow's ``AdagradOptimizer`` keeps in its ``accumulator`` slots."""
    return opt_state[0].sum_of_squares


def with_accumulators(opt_state, accumulators):
    """``opt_state`` (of `adagrad`) with its accumulators replaced, e.g. to resume from a checkpoint."""
    return (opt_state[0]._replace(sum_of_squares=accumulators), *opt_state[1:])


def initial_state(init, params, accumulator_values=None):
    """``init(params)`` (``init``: `adagrad`'s ``init`` with the default initial value, or it vmapped) without
    running a JAX program: its structure traced abstractly, the accumulators float32 numpy, at
    `TF1_INITIAL_ACCUMULATOR` or the ones given (a resumed run). Saves a process's first epoch the eager
    programs of optax's ``init``, one per leaf (about 0.05 s)."""
    state = jax.eval_shape(init, params)
    values = accumulator_values if accumulator_values is not None else jax.tree.map(
        lambda a: np.full(a.shape, TF1_INITIAL_ACCUMULATOR, np.float32), accumulators(state))
    return with_accumulators(state, jax.tree.map(lambda a: np.asarray(a, np.float32), values))
