"""Shared fixtures. Strict dtype promotion (as in Equinox's tests): silent float64/int mixing fails loudly."""

import jax
import numpy as np
import pytest

jax.config.update("jax_numpy_dtype_promotion", "strict")


@pytest.fixture
def key():
    return jax.random.key(0)


@pytest.fixture
def small_windows():
    """Real task data, cut small: ``int32[300, 20, 5]`` windows from 30,000 points (seed 0)."""
    from compare import task

    x, y = task.gen_data(30_000, seed=0)
    return task.windows(x, y, batch_size=20, num_steps=5)


def numpy_params(seed: int = 0, num_classes: int = 2, state_size: int = 4) -> dict:
    """Glorot-uniform parameters as numpy float32, made without JAX or TF (shared by the cross-framework tests)."""
    rng = np.random.default_rng(seed)
    n, d = num_classes, state_size

    def glorot(shape):
        limit = np.sqrt(6.0 / sum(shape))
        return rng.uniform(-limit, limit, shape).astype(np.float32)

    return {"rnn_cell": {"W": glorot((n + d, d)), "b": np.zeros(d, np.float32)},
            "softmax": {"W": glorot((d, n)), "b": np.zeros(n, np.float32)}}
