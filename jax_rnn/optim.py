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

import optax


@functools.cache
def adagrad(learning_rate: float = 0.1, initial_accumulator_value: float = 0.1) -> optax.GradientTransformation:
    """TF1-compatible Adagrad: ``optax.adagrad(learning_rate, initial_accumulator_value, eps=0.0)``.

    Cached, so that ``adagrad(0.1)`` is the same object every time: the training functions take the
    optimizer as a static argument, and an equal object means no recompilation.

    **Example:** ``opt = adagrad(0.1); opt_state = opt.init(params)``.
    """
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (int, float)) \
            or not math.isfinite(learning_rate) or learning_rate <= 0:
        raise ValueError(f"learning_rate must be a finite number > 0, got {learning_rate!r}")
    if not math.isfinite(initial_accumulator_value) or initial_accumulator_value <= 0:
        raise ValueError(f"initial_accumulator_value must be a finite number > 0 (TF1 uses 0.1), "
                         f"got {initial_accumulator_value!r}")
    return optax.adagrad(float(learning_rate), initial_accumulator_value=float(initial_accumulator_value), eps=0.0)
