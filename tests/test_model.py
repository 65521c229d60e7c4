"""jax_rnn.model: the cell and window loss against literal references in every layout a plan can choose,
gradients against finite differences. (The hand-written gradient: tests/test_plan.py.)"""

import dataclasses

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


# The layouts and products a plan can choose for the state-4 cell of `window`: plain batch-first, batch-last
# with dots, batch-last with every matrix elementwise (what `jax_rnn.plan` picks), and one matrix alone.
PLAIN = jax_rnn.plan(4, 6, 7, backend="cpu").plain()
PLANS = {
    "plain": PLAIN,
    "batch-last dots": dataclasses.replace(PLAIN, layout="batch_last"),
    "batch-last elementwise": jax_rnn.plan(4, 6, 7, backend="cpu"),
    "elementwise state only": dataclasses.replace(PLAIN, layout="batch_last", elementwise=("state",)),
}


@pytest.mark.parametrize("plan", PLANS)
def test_the_cell_is_the_equation_of_the_task(key, plan):
    """``cell(params, state, x_t) -> (S_t, logits_t)``, in the plan's layout (batch-last: transposed)."""
    plan = PLANS[plan]
    assert plan.batch_last == (plan != PLAIN)
    params = jax_rnn.init_params(key, state_size=4)
    x_t = jnp.array([0, 1, 1], jnp.int32)
    state = jax.random.normal(jax.random.key(1), (3, 4))
    concat = jnp.concatenate([jax.nn.one_hot(x_t, 2), state], axis=1)
    expected = jnp.tanh(concat @ params["rnn_cell"]["W"] + params["rnn_cell"]["b"])
    expected_logits = expected @ params["softmax"]["W"] + params["softmax"]["b"]
    layout = (lambda a: a.T) if plan.batch_last else (lambda a: a)
    new, logits_t = jax_rnn.cell(params, layout(state), x_t, plan)
    np.testing.assert_allclose(layout(new), expected, atol=1e-6)
    np.testing.assert_allclose(layout(logits_t), expected_logits, atol=1e-6)
    np.testing.assert_allclose(layout(jax_rnn.logits(params, new, plan)), expected_logits, atol=1e-6)
    if plan == PLAIN:  # the default is the plain program
        for a, b in zip(jax_rnn.cell(params, state, x_t), (new, logits_t)):
            np.testing.assert_array_equal(a, b)


def test_rnn_scan_equals_a_loop_of_the_cell(key):
    params = jax_rnn.init_params(key, state_size=4)
    x, _ = window()
    states, final = jax_rnn.rnn(params, x, jax_rnn.zero_state(6, 4))
    assert states.shape == (6, 7, 4) and final.shape == (6, 4)
    s = jax_rnn.zero_state(6, 4)
    for t in range(7):
        s, _ = jax_rnn.cell(params, s, x[:, t])
        np.testing.assert_allclose(states[:, t], s, atol=1e-6)
    np.testing.assert_allclose(final, s, atol=1e-6)


@pytest.mark.parametrize("plan", PLANS)
def test_forward_is_scan_ready_and_time_major_in_every_layout(key, plan):
    """`forward` is ``lax.scan`` of `cell`: per step the states and logits of the cell, time-major."""
    plan = PLANS[plan]
    params = jax_rnn.init_params(key, state_size=4)
    x, _ = window()
    layout = (lambda a: a.T) if plan.batch_last else (lambda a: a)
    state = layout(0.5 * jax.random.normal(jax.random.key(2), (6, 4)))
    final, (states, logits_t) = jax_rnn.forward(params, x.T, state, plan)
    assert states.shape == (7,) + state.shape and logits_t.shape == (7,) + layout(jnp.zeros((6, 2))).shape
    def step(s, x_t):
        s, logits_step = jax_rnn.cell(params, s, x_t, plan)
        return s, (s, logits_step)

    scanned = jax.lax.scan(step, state, x.T)
    np.testing.assert_allclose(final, scanned[0], atol=1e-6)
    np.testing.assert_allclose(states, scanned[1][0], atol=1e-6)
    np.testing.assert_allclose(logits_t, scanned[1][1], atol=1e-6)
    np.testing.assert_allclose(final, states[-1], atol=0)
    # ``start``: steps at negative stream positions are absent (the state is kept through them).
    late, (kept, _) = jax_rnn.forward(params, x.T, state, plan, start=-3)
    np.testing.assert_array_equal(kept[:3], jnp.stack([state] * 3))
    np.testing.assert_allclose(late, jax_rnn.forward(params, x.T[3:], state, plan)[0], atol=1e-6)


@pytest.mark.parametrize("num_classes,state_size,unroll", [(2, 4, 1), (2, 16, 7), (3, 5, 2)])
@pytest.mark.parametrize("program", ["plain", "plan"])
def test_loss_and_final_state_equal_the_reference_loop(num_classes, state_size, unroll, program):
    """`loss` (batch-major) in the plain program and in the plan's (batch-last; elementwise products for
    the small matrices), with a rolled, partly and fully unrolled scan."""
    params = jax.tree.map(jnp.asarray, numpy_params(1, num_classes, state_size))
    x, y = window(num_classes=num_classes)
    state = 0.5 * jax.random.normal(jax.random.key(2), (6, state_size))
    plan = jax_rnn.plan(state_size, 6, 7, num_classes=num_classes, backend="cpu")
    plan = dataclasses.replace(plan.plain() if program == "plain" else plan, unroll=unroll)
    loss, final = jax_rnn.loss(params, x, y, state, plan)
    ref_loss, ref_final = reference_loss(params, x, y, state)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6)
    np.testing.assert_allclose(final, ref_final, atol=1e-6)
    if program == "plain" and unroll == 1:  # the default plan of `loss` is the plain program
        np.testing.assert_array_equal(jax_rnn.loss(params, x, y, state)[0], loss)


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


def test_check_params_returns_the_sizes_and_names_the_bad_leaf(key):
    params = jax_rnn.init_params(key)
    assert jax_rnn.check_params(params) == (2, 4) and jax_rnn.check_params(jax_rnn.init_params(key, 3, 5)) == (3, 5)
    # Sizes come from the biases; the leaf that does not fit them is named, with where it was checked.
    with pytest.raises(ValueError, match=r"^mine: params\['softmax'\]\['W'\] must have shape \(5, 2\) for "
                                         r"num_classes=2, state_size=5; got \(4, 2\)"):
        jax_rnn.check_params(jax_rnn.init_params(key, 2, 5) | {"softmax": params["softmax"]}, "mine")
    with pytest.raises(ValueError, match=r"params\['rnn_cell'\]\['W'\] must have shape \(6, 4\).*got \(7, 4\)"):
        jax_rnn.check_params({"rnn_cell": {"W": jnp.zeros((7, 4)), "b": jnp.zeros(4)}, "softmax": params["softmax"]})
    with pytest.raises(ValueError, match=r"params must be a dict with keys \['rnn_cell', 'softmax'\], got \['rnn_cell'\]"):
        jax_rnn.check_params({"rnn_cell": params["rnn_cell"]})
    with pytest.raises(ValueError, match=r"params\['softmax'\] must have keys \['W', 'b'\]"):
        jax_rnn.check_params({"rnn_cell": params["rnn_cell"], "softmax": {"W": params["softmax"]["W"]}})
    with pytest.raises(TypeError, match="params must be floating point, got rnn_cell/W of dtype int32"):
        jax_rnn.check_params(jax.tree.map(lambda a: a.astype(jnp.int32), params))


def test_flatten_and_nest_are_the_npz_layout():
    from jax_rnn.model import PARAM_KEYS, flatten, nest, param_shapes

    params = numpy_params(3, 3, 5)
    flat = flatten(jax.tree.map(jnp.asarray, params))
    assert tuple(flat) == PARAM_KEYS == ("rnn_cell/W", "rnn_cell/b", "softmax/W", "softmax/b")
    assert all(isinstance(a, np.ndarray) and a.dtype == np.float32 for a in flat.values())
    assert jax.tree.map(np.shape, nest(flat)) == param_shapes(3, 5) == jax.tree.map(np.shape, params)
    for a, b in zip(jax.tree.leaves(nest(flat)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_glorot_params_are_the_seeds_numpy_draws():
    a, b, c = (jax_rnn.glorot_params(2, 4, seed) for seed in (0, 0, 1))
    assert all(isinstance(leaf, np.ndarray) and leaf.dtype == np.float32 for leaf in jax.tree.leaves(a))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a["rnn_cell"]["W"], c["rnn_cell"]["W"])
    assert not a["rnn_cell"]["b"].any() and np.abs(a["rnn_cell"]["W"]).max() <= np.sqrt(6 / (6 + 4))
