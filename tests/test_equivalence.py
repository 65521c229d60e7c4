"""The project's central claim: TensorFlow (four ways) and JAX compute the same training run.

Same initial parameters (numpy Glorot-uniform), same windows (jax_rnn.data), 250 Adagrad steps with the
state carried: `raw`, `static`, `dynamic`, `tf2` and `jax_rnn.train_epoch` must give the same per-step
losses to 1e-5 absolute and the same final parameters to 1e-4. The tolerances are the claim: if this
fails, find the cause (initial accumulator, epsilon, concatenation order, averaging); do not widen them.
"""

from __future__ import annotations

import numpy as np
import pytest

import tf_rnn
from jax_rnn.data import gen_data, windows
from jax_rnn.model import glorot_params

LOSS_ATOL = 1e-5
PARAM_ATOL = 1e-4
CONFIGS = {
    "default-sizes": tf_rnn.ModelConfig(batch_size=20, num_steps=5, state_size=4),
    "long-window": tf_rnn.ModelConfig(batch_size=20, num_steps=10, state_size=16),
}
NUM_WINDOWS = 250
IMPLS = (*tf_rnn.IMPLEMENTATIONS, "jax")


def _data(config: tf_rnn.ModelConfig, seed: int = 1):
    size = config.batch_size * config.num_steps * NUM_WINDOWS
    x_windows, y_windows = windows(*gen_data(size, seed=seed), config.batch_size, config.num_steps)
    assert x_windows.shape == (NUM_WINDOWS, config.batch_size, config.num_steps)
    return x_windows, y_windows


def _train(impl: str, config: tf_rnn.ModelConfig, params, x_windows, y_windows):
    """-> (losses f32[epoch_size], final params (numpy, shared layout), final state f32[batch, d])."""
    if impl == "jax":
        import jax
        import jax.numpy as jnp
        import jax_rnn

        opt = jax_rnn.adagrad(config.learning_rate)
        jparams = jax.tree_util.tree_map(jnp.asarray, params)
        jparams, _, state, losses = jax_rnn.train_epoch(jparams, opt.init(jparams), jnp.asarray(x_windows),
                                                        jnp.asarray(y_windows), opt)
        return np.asarray(losses), jax.tree_util.tree_map(np.asarray, jparams), np.asarray(state)
    with tf_rnn.build(impl, config, params=params) as model:
        result = model.train_epoch(x_windows, y_windows)
        return result.losses, model.get_params(), result.final_state


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def runs(request):
    config = CONFIGS[request.param]
    params = tf_rnn.glorot_uniform_params(config, seed=7)
    x_windows, y_windows = _data(config)
    return config, params, x_windows, y_windows, {"raw": _train("raw", config, params, x_windows, y_windows)}


@pytest.mark.parametrize("impl", [i for i in IMPLS if i != "raw"])
def test_same_training_run_as_raw(runs, impl):
    config, params, x_windows, y_windows, results = runs
    losses, final, state = _train(impl, config, params, x_windows, y_windows)
    ref_losses, ref_final, ref_state = results["raw"]
    assert losses.shape == ref_losses.shape == (NUM_WINDOWS,)
    np.testing.assert_allclose(losses, ref_losses, rtol=0, atol=LOSS_ATOL, err_msg=f"{impl} vs raw: losses")
    for scope in ("rnn_cell", "softmax"):
        for key in ("W", "b"):
            np.testing.assert_allclose(final[scope][key], ref_final[scope][key], rtol=0, atol=PARAM_ATOL,
                                       err_msg=f"{impl} vs raw: {scope}/{key}")
    np.testing.assert_allclose(state, ref_state, rtol=0, atol=PARAM_ATOL, err_msg=f"{impl} vs raw: final state")
    # The run must actually move: otherwise agreement would prove little.
    assert not np.allclose(final["rnn_cell"]["W"], params["rnn_cell"]["W"], atol=1e-2)


def test_forward_loss_matches_jax():
    """One window's loss and final state from a non-zero state: TF (every version) vs jax_rnn.loss."""
    import jax.numpy as jnp
    import jax_rnn

    config = CONFIGS["default-sizes"]
    params = tf_rnn.glorot_uniform_params(config, seed=3)
    x_windows, y_windows = _data(config, seed=2)
    state = np.random.default_rng(0).uniform(-1, 1, (config.batch_size, config.state_size)).astype(np.float32)
    jloss, jstate = jax_rnn.loss({s: {k: jnp.asarray(v) for k, v in g.items()} for s, g in params.items()},
                                 jnp.asarray(x_windows[0]), jnp.asarray(y_windows[0]), jnp.asarray(state))
    for impl in tf_rnn.IMPLEMENTATIONS:
        with tf_rnn.build(impl, config, params=params) as model:
            loss, final_state = model.loss(x_windows[0], y_windows[0], state)
        assert abs(loss - float(jloss)) < LOSS_ATOL, impl
        np.testing.assert_allclose(final_state, np.asarray(jstate), rtol=0, atol=LOSS_ATOL, err_msg=impl)


def test_compare_and_tf_rnn_draw_the_same_numpy_initial_parameters():
    from compare import io

    for seed, state_size in ((0, 4), (5, 16)):
        ours = glorot_params(2, state_size, seed)
        theirs = tf_rnn.glorot_uniform_params(tf_rnn.ModelConfig(state_size=state_size), seed)
        for scope in ("rnn_cell", "softmax"):
            for leaf in ("W", "b"):
                np.testing.assert_array_equal(ours[scope][leaf], theirs[scope][leaf])
