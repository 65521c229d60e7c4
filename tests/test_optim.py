"""jax_rnn.adagrad: identical to TF1's AdagradOptimizer (accumulator from 0.1, no epsilon)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_rnn


def tf1_adagrad_numpy(params, grads_seq, lr=0.1, initial_accumulator_value=0.1):
    """A transcription of tf.compat.v1.train.AdagradOptimizer's dense update (ApplyAdagrad)."""
    params = {k: v.copy() for k, v in params.items()}  # computed in the dtype given, like TF
    acc = {k: np.full_like(v, initial_accumulator_value) for k, v in params.items()}
    for grads in grads_seq:
        for k in params:
            acc[k] += grads[k] * grads[k]
            params[k] -= lr * grads[k] / np.sqrt(acc[k])
    return params


@pytest.mark.parametrize("dtype,atol", [(np.float64, 1e-12), (np.float32, 1e-7)])
def test_adagrad_matches_the_tf1_update(dtype, atol):
    """50 steps in float64 (the semantics); 3 steps in float32 (what TF computes), both to atol=rtol=1e-7 or tighter."""
    rng = np.random.default_rng(0)
    steps = 50 if dtype == np.float64 else 3
    params = {"a": rng.normal(size=(3, 4)).astype(dtype), "b": rng.normal(size=5).astype(dtype)}
    grads_seq = [{k: (rng.normal(size=v.shape) * 10 ** rng.uniform(-4, 1)).astype(dtype) for k, v in params.items()}
                 for _ in range(steps)]
    with jax.enable_x64(dtype == np.float64):
        opt = jax_rnn.adagrad(0.1)
        p, state = jax.tree.map(jnp.asarray, params), opt.init(params)
        for grads in grads_seq:
            updates, state = opt.update(grads, state, p)
            p = optax.apply_updates(p, updates)
        expected = tf1_adagrad_numpy(params, grads_seq)
        for k in params:
            assert p[k].dtype == dtype
            np.testing.assert_allclose(p[k], expected[k], rtol=atol, atol=atol)


def test_optax_default_epsilon_would_differ_for_small_gradients():
    """Why eps=0 matters: with tiny gradients, optax's default eps=1e-7 changes the very first update."""
    p = {"w": jnp.zeros(1)}
    g = {"w": jnp.full(1, 1e-4)}
    ours = jax_rnn.adagrad(0.1).update(g, jax_rnn.adagrad(0.1).init(p))[0]["w"]
    default = optax.adagrad(0.1).update(g, optax.adagrad(0.1).init(p))[0]["w"]
    np.testing.assert_allclose(ours, -0.1 * 1e-4 / np.sqrt(0.1 + 1e-8), rtol=1e-6)
    assert not np.allclose(ours, default, rtol=1e-7, atol=0)


def test_adagrad_is_cached_so_jit_does_not_recompile():
    opt = jax_rnn.adagrad(0.1)
    assert opt is jax_rnn.adagrad(0.1) is jax_rnn.adagrad(learning_rate=0.1) is jax_rnn.adagrad(0.1, 0.1)
    assert jax_rnn.adagrad(0.2) is not opt


@pytest.mark.parametrize("lr", [0, -0.1, float("nan"), float("inf"), "0.1"])
def test_adagrad_refuses_bad_learning_rates(lr):
    with pytest.raises(ValueError, match="learning_rate must be a finite number > 0"):
        jax_rnn.adagrad(lr)


@pytest.mark.parametrize("runs", [False, True])
def test_initial_state_equals_optax_init_without_running_it(runs):
    """`initial_state` (the trainer's, numpy) has the structure and values of ``opt.init`` (vmapped too),
    and takes given accumulators (a resumed run)."""
    from jax_rnn import optim
    from conftest import numpy_params

    opt = jax_rnn.adagrad(0.1)
    params = numpy_params(0)
    init = opt.init
    if runs:
        params, init = jax.tree.map(lambda a: np.stack([a, a + 1]), params), jax.vmap(opt.init)
    expected, got = init(params), optim.initial_state(init, params)
    assert jax.tree.structure(got) == jax.tree.structure(expected)
    for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got)):
        assert isinstance(b, np.ndarray) and b.dtype == np.float32
        np.testing.assert_array_equal(a, b)
    given = jax.tree.map(lambda a: np.full_like(a, 2.5), optim.accumulators(expected))
    for leaf in jax.tree.leaves(optim.accumulators(optim.initial_state(init, params, given))):
        np.testing.assert_array_equal(leaf, 2.5)
