"""Adagrad with ``tf.compat.v1.train.AdagradOptimizer``'s semantics: ``acc_0 = 0.1; acc += g * g; var -= lr *
g / sqrt(acc)``, no epsilon: ``optax.adagrad`` with ``eps=0.0`` (tested against numpy and TensorFlow)."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import optax

TF1_INITIAL_ACCUMULATOR = 0.1


def check_positive(name: str, value, hint: str = "") -> None:
    """ValueError ``"{name} must be a finite number > 0{hint}, got ..."`` unless ``value`` is one."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0{hint}, got {value!r}")


def adagrad(learning_rate: float = 0.1, initial_accumulator_value: float = TF1_INITIAL_ACCUMULATOR
            ) -> optax.GradientTransformation:
    """TF1 Adagrad; equal values give the same object (a static argument: no recompilation).
    **Example:** ``opt = adagrad(0.1); opt_state = opt.init(params)``."""
    check_positive("learning_rate", learning_rate)
    check_positive("initial_accumulator_value", initial_accumulator_value, " (TF1 uses 0.1)")
    return _adagrad(float(learning_rate), float(initial_accumulator_value))


@functools.cache
def _adagrad(learning_rate: float, initial_accumulator_value: float) -> optax.GradientTransformation:
    return optax.adagrad(learning_rate, initial_accumulator_value=initial_accumulator_value, eps=0.0)


def accumulators(opt_state):
    """Adagrad's accumulators (optax's ``sum_of_squares``), in the layout of the parameters."""
    return opt_state[0].sum_of_squares


def with_accumulators(opt_state, values):
    """``opt_state`` of `adagrad` with its accumulators replaced (a resumed run)."""
    return (opt_state[0]._replace(sum_of_squares=values), *opt_state[1:])


def initial_state(init, params, values=None):
    """``init(params)`` without running a JAX program, the accumulators at 0.1 or ``values`` (numpy)."""
    state = jax.eval_shape(init, params)
    if values is None:
        values = jax.tree.map(lambda a: np.full(a.shape, TF1_INITIAL_ACCUMULATOR, np.float32), accumulators(state))
    return with_accumulators(state, jax.tree.map(lambda a: np.asarray(a, np.float32), values))
