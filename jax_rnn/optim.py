"""TF1's Adagrad, ``acc_0 = 0.1; acc += g * g; var -= lr * g / sqrt(acc)``: ``optax.adagrad`` with ``eps=0.0``."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import optax

TF1_INITIAL_ACCUMULATOR = 0.1


def check_positive(name: str, value, hint: str = "") -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{hint}, got {value!r}")


def adagrad(learning_rate: float = 0.1, initial_accumulator_value: float = TF1_INITIAL_ACCUMULATOR
            ) -> optax.GradientTransformation:
    """TF1 Adagrad; equal values give the same object (one compile as a static argument)."""
    check_positive("learning_rate", learning_rate)
    check_positive("initial_accumulator_value", initial_accumulator_value, " (TF1 uses 0.1)")
    return _adagrad(float(learning_rate), float(initial_accumulator_value))


@functools.cache
def _adagrad(learning_rate: float, initial_accumulator_value: float) -> optax.GradientTransformation:
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=0.0)


def accumulators(opt_state):
    """Adagrad's accumulators (optax's ``sum_of_squares``), in the layout of the parameters."""
    return opt_state[0].sum_of_squares


def initial_state(init, params, values=None):
    """``init(params)`` without a JAX program, the accumulators at 0.1 or ``values``."""
    state = jax.eval_shape(init, params)
    if values is None:
        values = jax.tree.map(lambda a: np.full(a.shape, TF1_INITIAL_ACCUMULATOR), accumulators(state))
    values = jax.tree.map(lambda a: np.asarray(a, np.float32), values)
    return (state[0]._replace(sum_of_squares=values), *state[1:])
