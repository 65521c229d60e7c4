"""The task's data made on the device with ``jax.random``: the same distribution as the tutorial.

``X_t ~ Bernoulli(0.5)``; ``P(Y_t = 1) = 0.5 + 0.5 X_{t-3} - 0.25 X_{t-8}``, with the tutorial's
wrap-around (its ``X[i-3]`` reads the end of the array for the first steps: a circular shift here).
This is jax_rnn's own generator, so that `fit` needs nothing but JAX; ``compare.task`` holds the
numpy generator that reproduces the tutorial's stream bit for bit (the two agree in distribution:
``tests/test_data.py``).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

LAGS = (3, 8)
EFFECTS = (0.5, -0.25)


@partial(jax.jit, static_argnames="size")
def gen_data(key: jax.Array, size: int = 1_000_000) -> tuple[jax.Array, jax.Array]:
    """One epoch: ``(x, y)``, both ``int32[size]``, from one PRNG key."""
    key_x, key_y = jax.random.split(key)
    x = jax.random.bernoulli(key_x, 0.5, (size,)).astype(jnp.int32)
    x_float = x.astype(jnp.float32)
    p = 0.5 + sum(effect * jnp.roll(x_float, lag) for lag, effect in zip(LAGS, EFFECTS))
    y = (jax.random.uniform(key_y, (size,)) < p).astype(jnp.int32)
    return x, y


def windows(x: jax.Array, y: jax.Array, batch_size: int, num_steps: int) -> tuple[jax.Array, jax.Array]:
    """The tutorial's ``gen_batch`` cut, as arrays: ``int[size]`` -> ``int32[epoch_size, batch, num_steps]``.

    Rows of ``size // batch_size`` contiguous points, windows of ``num_steps`` columns; the remainder
    of each cut is dropped, as in the tutorial.
    """
    row = x.shape[-1] // batch_size
    epoch_size = row // num_steps

    def cut(a):
        rows = a[: batch_size * row].reshape(batch_size, row)[:, : epoch_size * num_steps]
        return jnp.swapaxes(rows.reshape(batch_size, epoch_size, num_steps), 0, 1).astype(jnp.int32)

    return cut(x), cut(y)
