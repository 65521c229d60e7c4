"""jax_rnn.model: the cell and window loss against literal references, gradients against finite differences."""

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_rnn
from conftest import numpy_params


def reference_loss(params, x, y, state):
    """The tutorial's graph as a Python loop: one-hot inputs, ``concat([x, s]) @ W``, per-step losses."""
    n = params["softmax"]["W"].shape[1]
    losses = []
    for t in range(x.shape[1]):
        inputs = jnp.concatenate([jax.nn.one_hot(x[:, t], n, dtype=state.dtype), state], axis=1)
        state = jnp.tanh(inputs @ params["rnn_cell"]["W"] + params["rnn_cell"]["b"])
        logits = state @ params["softmax"]["W"] + params["softmax"]["b"]
        losses.append(optax.softmax_cross_entropy_with_integer_labels(logits, y[:, t]))
    return jnp.mean(jnp.stack(losses)), state


def window(seed=0, batch=6, num_steps=7, num_classes=2):
    rng = np.random.default_rng(seed)
    return (jnp.asarray(rng.integers(0, num_classes, (batch, num_steps)), jnp.int32),
            jnp.asarray(rng.integers(0, num_classes, (batch, num_steps)), jnp.int32))


def test_init_params_layout_dtype_and_glorot_bounds(key):
    params = jax_rnn.init_params(key, num_classes=3, state_size=5)
    shapes = jax.tree.map(jnp.shape, params)
    assert shapes == {"rnn_cell": {"W": (8, 5), "b": (5,)}, "softmax": {"W": (5, 3), "b": (3,)}}
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))
    assert not params["rnn_cell"]["b"].any() and not params["softmax"]["b"].any()
    assert jnp.abs(params["rnn_cell"]["W"]).max() <= np.sqrt(6 / (8 + 5))
    assert jnp.abs(params["softmax"]["W"]).max() <= np.sqrt(6 / (5 + 3))
    assert jnp.std(params["rnn_cell"]["W"]) > 0.1


def test_rnn_cell_is_the_equation_of_the_task(key):
    params = jax_rnn.init_params(key, state_size=4)
    x_t = jnp.array([0, 1, 1], jnp.int32)
    state = jax.random.normal(jax.random.key(1), (3, 4))
    concat = jnp.concatenate([jax.nn.one_hot(x_t, 2), state], axis=1)
    expected = jnp.tanh(concat @ params["rnn_cell"]["W"] + params["rnn_cell"]["b"])
    np.testing.assert_allclose(jax_rnn.rnn_cell(params["rnn_cell"], x_t, state), expected, atol=1e-6)


def test_rnn_scan_equals_a_loop_of_the_cell(key):
    params = jax_rnn.init_params(key, state_size=4)
    x, _ = window()
    states, final = jax_rnn.rnn(params, x, jax_rnn.zero_state(6, 4))
    assert states.shape == (6, 7, 4) and final.shape == (6, 4)
    s = jax_rnn.zero_state(6, 4)
    for t in range(7):
        s = jax_rnn.rnn_cell(params["rnn_cell"], x[:, t], s)
        np.testing.assert_allclose(states[:, t], s, atol=1e-6)
    np.testing.assert_allclose(final, s, atol=1e-6)


@pytest.mark.parametrize("num_classes,state_size,unroll", [(2, 4, 1), (2, 16, True), (3, 5, 2)])
def test_loss_and_final_state_equal_the_reference_loop(num_classes, state_size, unroll):
    params = jax.tree.map(jnp.asarray, numpy_params(1, num_classes, state_size))
    x, y = window(num_classes=num_classes)
    state = 0.5 * jax.random.normal(jax.random.key(2), (6, state_size))
    loss, final = jax_rnn.loss(params, x, y, state, unroll=unroll)
    ref_loss, ref_final = reference_loss(params, x, y, state)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(final, ref_final, atol=1e-6)


def test_gradient_equals_the_reference_loop_and_finite_differences():
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), numpy_params(2, 2, 4))
        x, y = window(batch=5, num_steps=6)
        state = 0.3 * jax.random.normal(jax.random.key(3), (5, 4), jnp.float64)
        f = jax.jit(lambda p: jax_rnn.loss(p, x, y, state)[0])
        grads = jax.grad(f)(params)
        ref_grads = jax.grad(lambda p: reference_loss(p, x, y, state)[0])(params)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-12)
        # Central finite differences on every parameter entry.
        flat, unravel = jax.flatten_util.ravel_pytree(params)
        eps = 1e-6
        fd = np.array([(f(unravel(flat.at[i].add(eps))) - f(unravel(flat.at[i].add(-eps)))) / (2 * eps)
                       for i in range(flat.size)])
        np.testing.assert_allclose(jax.flatten_util.ravel_pytree(grads)[0], fd, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("num_classes,state_size,num_steps,unroll",
                         [(2, 4, 1, True), (3, 4, 1, True), (2, 4, 6, True), (3, 4, 6, 2), (2, 16, 1, True),
                          (2, 16, 5, True), (2, 20, 3, 1)])
def test_explicit_bptt_equals_jax_grad_of_the_window_loss(num_classes, state_size, num_steps, unroll):
    """The training loop's hand-written backward pass (`value_and_grad_window`) against ``jax.grad`` of
    `loss_window` in float64: both small-matrix paths (elementwise, state 4; ``einsum``, states 16 and 20),
    one step and several, rolled and unrolled scans, two and three classes."""
    with jax.enable_x64(True):
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), numpy_params(4, num_classes, state_size))
        x, y = window(seed=5, batch=7, num_steps=num_steps, num_classes=num_classes)
        state_t = 0.4 * jax.random.normal(jax.random.key(4), (state_size, 7), jnp.float64)
        (loss, final), grads = jax.jit(jax_rnn.value_and_grad_window, static_argnums=4)(
            params, x.T, y.T, state_t, unroll)
        (ref_loss, ref_final), ref_grads = jax.value_and_grad(jax_rnn.loss_window, has_aux=True)(
            params, x.T, y.T, state_t, unroll)
        np.testing.assert_allclose(loss, ref_loss, rtol=1e-12)
        np.testing.assert_allclose(final, ref_final, rtol=1e-12, atol=1e-14)
        assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
        for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
            assert g.shape == r.shape
            np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13)


def test_truncation_earlier_windows_reach_the_gradient_only_through_the_state_value():
    """Window 1's update inside an epoch depends on window 0 only through the state value handed over,
    and that is a real truncation: full BPTT through both windows would give another gradient."""
    params = jax.tree.map(jnp.asarray, numpy_params(3))
    opt = jax_rnn.adagrad(0.1)
    (x0, y0), (x1, y1) = window(10), window(12)
    zero = jax_rnn.zero_state(6, 4)
    # The epoch, two windows, state carried.
    p_epoch, o_epoch, _, _ = jax_rnn.train_epoch(params, opt.init(params), jnp.stack([x0, x1]), jnp.stack([y0, y1]), opt)
    # The same by hand: window 0, then window 1 from the handed-over state as a plain numpy constant
    # (no history at all): the epoch's second update must be exactly this one.
    p1, o1, state1, _ = jax_rnn.train_step(params, opt.init(params), zero, x0, y0, opt)
    p2, o2, _, _ = jax_rnn.train_step(p1, o1, np.asarray(state1), x1, y1, opt)
    for a, b in zip(jax.tree.leaves((p_epoch, o_epoch)), jax.tree.leaves((p2, o2))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-7)
    # What was cut off: at p1, the gradient of window 1's loss with the state recomputed from window 0
    # (full BPTT across the window boundary) differs from the gradient with the state held constant.
    state_of = lambda p: jax_rnn.loss(p, x0, y0, zero)[1]
    full = jax.jit(jax.grad(lambda p: jax_rnn.loss(p, x1, y1, state_of(p))[0]))(p1)
    truncated = jax.jit(jax.grad(lambda p: jax_rnn.loss(p, x1, y1, jax.lax.stop_gradient(state_of(p)))[0]))(p1)
    constant = jax.jit(jax.grad(lambda p: jax_rnn.loss(p, x1, y1, state_of(p1))[0]))(p1)
    for t, c in zip(jax.tree.leaves(truncated), jax.tree.leaves(constant)):
        np.testing.assert_array_equal(t, c)
    gap = max(float(jnp.max(jnp.abs(f - t))) for f, t in zip(jax.tree.leaves(full), jax.tree.leaves(truncated)))
    assert gap > 1e-4, gap
    # And train_step passes no gradient back into the state it is given.

    def loss_after_step(state):
        p, _, _, _ = jax_rnn.train_step(params, opt.init(params), state, x1, y1, opt)
        return jax_rnn.loss(p, x1, y1, zero)[0]

    assert not jnp.any(jax.grad(loss_after_step)(state1))


def test_check_params_names_the_bad_leaf(key):
    params = jax_rnn.init_params(key)
    jax_rnn.check_params(params, 2, 4)
    with pytest.raises(ValueError, match=r"params\['rnn_cell'\]\['W'\] must have shape \(6, 4\).*got \(7, 5\)"):
        jax_rnn.check_params(jax_rnn.init_params(key, 2, 5) | {"softmax": params["softmax"]}, 2, 4)
    with pytest.raises(ValueError, match="keys"):
        jax_rnn.check_params({"rnn_cell": params["rnn_cell"]}, 2, 4)
