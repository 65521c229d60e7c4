"""Shared fixtures. Strict dtype promotion (as in Equinox's tests): silent float64/int mixing fails loudly.
JAX's persistent compilation cache is off (tests/test_compile_cache.py turns it on in subprocesses)."""

import os

import jax
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")
os.environ["RNN_SCAN_COMPILE_CACHE"] = "0"  # hermetic: no test reads or fills the user's compilation cache


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def small_windows():
    """Real task data, cut small: ``int32[300, 20, 5]`` windows from 30,000 points (seed 0)."""
    from jax_rnn import data as task

    x, y = task.gen_data(30_000, seed=0)
    return task.windows(x, y, batch_size=20, num_steps=5)


def numpy_params(seed: int = 0, num_classes: int = 2, state_size: int = 4) -> dict:
    """Glorot-uniform parameters as numpy float32, the ones a seed stands for (``jax_rnn.glorot_params``)."""
    from jax_rnn.model import glorot_params

    return glorot_params(num_classes, state_size, seed)
