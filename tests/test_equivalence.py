"""The project's central claim: JAX and TensorFlow (four ways) compute the same training run.

Every property here is one parametrisation over the table of the five implementations
(tests/implementations.py), each checked against the reference row (``jax``) on the same initial
parameters (numpy Glorot-uniform) and the same windows (jax_rnn.data): per-step losses to 1e-5 absolute,
final parameters and state to 1e-4, in the tutorial's truncation and in TBPTT(k1, k2); the same
window for the divergence guard; one window's loss from a non-zero state; and the convergence each
one reaches on the real task. The tolerances are the claim: if this fails, find the cause (initial
accumulator, epsilon, concatenation order, averaging); do not widen them.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import tf_rnn
from implementations import IMPLEMENTATIONS, OTHERS, REFERENCE, loss, train
from jax_rnn.data import TARGETS, gen_data, level, windows
from jax_rnn.model import glorot_params

LOSS_ATOL = 1e-5
PARAM_ATOL = 1e-4
# name: (config, windows per epoch, seed of the data, seed of the parameters)
RUNS = {
    "default-sizes": (tf_rnn.ModelConfig(batch_size=20, num_steps=5, state_size=4), 250, 1, 7),
    "long-window": (tf_rnn.ModelConfig(batch_size=20, num_steps=10, state_size=16), 250, 1, 7),
    # TBPTT(k1, k2): k2 > 2 k1 (the state handed on lies in the next window's backprop-only steps),
    # k2 < 2 k1, and r2rt's "true" truncation TBPTT(1, n).
    "tbptt-2-5": (tf_rnn.ModelConfig(batch_size=8, num_steps=2, backprop_steps=5), 25, 0, 1),
    "tbptt-3-5": (tf_rnn.ModelConfig(batch_size=8, num_steps=3, backprop_steps=5), 16, 0, 1),
    "tbptt-1-4": (tf_rnn.ModelConfig(batch_size=8, num_steps=1, backprop_steps=4), 50, 0, 1),
    # lr 1e37: every implementation must stop at the same window, keeping finite parameters.
    "diverging": (tf_rnn.ModelConfig(batch_size=20, num_steps=5, state_size=16, learning_rate=1e37), 200, 0, 0),
    "diverging-tbptt": (tf_rnn.ModelConfig(batch_size=8, num_steps=2, backprop_steps=5, learning_rate=1e37), 10, 0, 0),
}


def _inputs(name: str):
    config, count, data_seed, param_seed = RUNS[name]
    size = config.batch_size * config.num_steps * count
    x_windows, y_windows = windows(*gen_data(size, seed=data_seed), config.batch_size, config.num_steps)
    assert x_windows.shape == (count, config.batch_size, config.num_steps)
    return config, glorot_params(config.num_classes, config.state_size, param_seed), x_windows, y_windows


@functools.lru_cache(maxsize=None)
def _reference(name: str):
    return train(REFERENCE, *_inputs(name))


def _assert_params_close(got: dict, want: dict, err_msg: str, **tolerance) -> None:
    for scope in want:
        for key in want[scope]:
            np.testing.assert_allclose(got[scope][key], want[scope][key], err_msg=f"{err_msg}: {scope}/{key}", **tolerance)


@pytest.mark.parametrize("run", [r for r in RUNS if not r.startswith("diverging")])
@pytest.mark.parametrize("impl", OTHERS)
def test_same_training_run_as_the_reference(impl, run):
    config, params, x_windows, y_windows = _inputs(run)
    got, want = train(impl, config, params, x_windows, y_windows), _reference(run)
    assert got.diverged_at == want.diverged_at == -1
    assert got.losses.shape == want.losses.shape == (len(x_windows),)
    np.testing.assert_allclose(got.losses, want.losses, rtol=0, atol=LOSS_ATOL, err_msg=f"{impl}: losses")
    _assert_params_close(got.params, want.params, impl, rtol=0, atol=PARAM_ATOL)
    np.testing.assert_allclose(got.final_state, want.final_state, rtol=0, atol=PARAM_ATOL, err_msg=f"{impl}: state")
    # The run must actually move: otherwise agreement would prove little.
    assert not np.allclose(want.params["rnn_cell"]["W"], params["rnn_cell"]["W"], atol=1e-2)


@pytest.mark.parametrize("run", ["diverging", "diverging-tbptt"])
@pytest.mark.parametrize("impl", OTHERS)
def test_the_guard_stops_at_the_references_window_and_keeps_finite_params(impl, run):
    config, params, x_windows, y_windows = _inputs(run)
    got, want = train(impl, config, params, x_windows, y_windows), _reference(run)
    k = got.diverged_at
    assert k == want.diverged_at and 0 < k < len(x_windows) - 1
    assert np.all(np.isfinite(got.losses[:k])) and np.all(np.isnan(got.losses[k + 1:]))
    np.testing.assert_allclose(got.losses[:k], want.losses[:k], rtol=1e-5)
    assert all(np.all(np.isfinite(v)) for group in got.params.values() for v in group.values())
    _assert_params_close(got.params, want.params, impl, rtol=1e-3)  # values up to ~1e36


@pytest.mark.parametrize("impl", OTHERS)
def test_one_windows_loss_from_a_non_zero_state(impl):
    config, _, x_windows, y_windows = _inputs("default-sizes")
    params = glorot_params(config.num_classes, config.state_size, 3)
    state = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, config.state_size)).astype(np.float32)
    got, got_state = loss(impl, config, params, x_windows[0], y_windows[0], state)
    want, want_state = loss(REFERENCE, config, params, x_windows[0], y_windows[0], state)
    assert got == pytest.approx(want, abs=LOSS_ATOL)
    np.testing.assert_allclose(got_state, want_state, rtol=0, atol=LOSS_ATOL)


def _reaches_first_level(impl: str, seed: int) -> None:
    """One epoch of the real task (1M points, batch 200, num_steps 5: 1000 updates) from numpy init."""
    config = tf_rnn.ModelConfig()
    x_windows, y_windows = windows(*gen_data(1_000_000, seed=seed), config.batch_size, config.num_steps)
    losses = train(impl, config, glorot_params(config.num_classes, config.state_size, seed), x_windows, y_windows).losses
    final = float(losses[-100:].mean())
    assert final < 0.54, f"{impl}: final 100-step average loss {final:.4f} (3-step target {TARGETS.first:.4f})"
    assert level(final) in ("first", "both")


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_each_implementation_learns_the_three_step_dependency(impl):
    _reaches_first_level(impl, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
def test_three_step_dependency_over_seeds(impl, seed):
    _reaches_first_level(impl, seed)
