"""TBPTT(k1, k2) in jax_rnn: the compiled epoch against the definition (docs/task.md) written out.

The reference below follows the definition literally, one update at a time in Python, on the public
plain-``lax.scan`` forward pass (`jax_rnn.rnn`, `jax_rnn.logits`): it runs only the window's steps that
exist (no mask), so it shares no code with the epoch's segments, masks and layouts. TBPTT(k1, k2) is the
plan's: ``jax_rnn.plan(d, batch, k1, backprop_steps=k2)``.
"""

import dataclasses

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_rnn
from jax_rnn import data as task


@partial(jax.jit, static_argnames=("k1", "after_k1"))
def _reference_loss(params, state, x, y, k1, after_k1):
    """Mean loss of the last ``k1`` of the window's present steps ``x: [batch, steps]`` (labels ``y: [batch,
    k1]``), and the state after the window's k1-th step (index ``after_k1`` of ``x``; < 0: before it)."""
    states, _ = jax_rnn.rnn(params, x, state)
    log_p = jax.nn.log_softmax(jax_rnn.logits(params, states[:, -k1:]))
    mean = -jnp.mean(jnp.take_along_axis(log_p, y[..., None], axis=-1))
    return mean, (states[:, after_k1] if after_k1 >= 0 else state)


def reference_tbptt(params, x_windows, y_windows, k2, learning_rate=0.1):
    """Losses and final parameters of TBPTT(k1, k2), k1 = the windows' num_steps, from the zero state."""
    updates, batch, k1 = x_windows.shape
    x = np.concatenate(list(x_windows), axis=1)                      # the stream's rows: [batch, U * k1]
    y = np.concatenate(list(y_windows), axis=1)
    d = params["rnn_cell"]["b"].shape[0]
    opt = jax_rnn.adagrad(learning_rate)
    grad_fn = jax.value_and_grad(_reference_loss, has_aux=True)
    opt_state, state, losses = opt.init(params), jnp.zeros((batch, d), jnp.float32), []
    for u in range(updates):
        start = u * k1 + k1 - k2
        first = max(start, 0)                                         # steps before 0 are absent
        (value, state), grads = grad_fn(params, state, x[:, first:(u + 1) * k1], y[:, u * k1:(u + 1) * k1],
                                        k1=k1, after_k1=start + k1 - 1 - first)
        step, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, step)
        losses.append(float(value))
    return np.array(losses, np.float32), params


def _windows(k1, state_size=4, points=1_200, batch=8, seed=0):
    x_windows, y_windows = task.windows(*task.gen_data(points, seed), batch, k1)
    return x_windows, y_windows, jax_rnn.glorot_params(2, state_size, seed)


def _plan(k1, k2, state_size=4, batch=8, **kwargs):
    return jax_rnn.plan(state_size, batch, k1, backprop_steps=k2, **kwargs)


@pytest.mark.parametrize("k1, k2, state_size, learning_rate", [
    pytest.param(2, 5, 4, 0.1, marks=pytest.mark.slow),  # k2 > 2 k1: the state handed on lies in the backprop-only steps
    (3, 4, 4, 0.1),      # k2 < 2 k1
    (1, 4, 4, 0.1),      # r2rt's "true" truncation
    pytest.param(2, 5, 16, 0.1, marks=pytest.mark.slow),  # dots (the state matrix has more than 16 entries: not elementwise)
    pytest.param(3, 7, 128, 0.01, marks=pytest.mark.slow),  # batch-first layout (at 0.1, batch 8 and state 128 make rounding grow chaotically)
])
def test_the_epoch_follows_the_definition_update_for_update(k1, k2, state_size, learning_rate):
    x_windows, y_windows, params = _windows(k1, state_size)
    want_losses, want_params = reference_tbptt(params, x_windows, y_windows, k2, learning_rate)
    opt = jax_rnn.adagrad(learning_rate)
    plan = _plan(k1, k2, state_size)
    assert plan.tbptt and plan.layout == ("batch_first" if state_size >= 64 else "batch_last")
    got_params, _, _, got_losses = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt,
                                                       plan=plan)
    np.testing.assert_allclose(got_losses, want_losses, rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves(got_params), jax.tree.leaves(want_params)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)


def test_tbptt_n_n_is_the_tutorials_training_bit_for_bit():
    x_windows, y_windows, params = _windows(5)
    opt = jax_rnn.adagrad(0.1)
    plain = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt)
    same = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt, plan=_plan(5, 5))
    assert _plan(5, 5) == jax_rnn.plan(4, 8, 5) and not _plan(5, 5).tbptt
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(same)):
        np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_guard_remat_and_vmapped_runs_work_in_the_new_mode():
    k1, k2 = 2, 7
    x_windows, y_windows, params = _windows(k1)
    opt = jax_rnn.adagrad(0.1)
    plan = _plan(k1, k2)
    plain = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt, plan=plan)
    guarded = jax_rnn.train_epoch_guarded(params, opt.init(params), x_windows, y_windows, opt, plan=plan)
    remat = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt, plan=_plan(k1, k2, remat=True))
    assert int(guarded.diverged_at) == -1
    for other in (guarded[:4], remat):          # other compiled programs: equal up to float rounding
        for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    # Two runs vmapped (the second on other data) equal the runs one by one.
    x2, y2, _ = _windows(k1, seed=1)
    stack = lambda *trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    runs = jax_rnn.train_runs(stack(params, params), stack(opt.init(params), opt.init(params)),
                              np.stack([x_windows, x2]), np.stack([y_windows, y2]), opt, plan=_plan(k1, k2, runs=2),
                              guard=True)
    second = jax_rnn.train_epoch(params, opt.init(params), x2, y2, opt, plan=plan)
    np.testing.assert_allclose(runs.losses[0], plain[3], rtol=0, atol=1e-6)
    np.testing.assert_allclose(runs.losses[1], second[3], rtol=0, atol=1e-6)
    # The guard: a learning rate that blows up stops at a window, keeps finite parameters, NaN after.
    wild = jax_rnn.adagrad(1e38)
    out = jax_rnn.train_epoch_guarded(params, wild.init(params), x_windows, y_windows, wild, plan=plan)
    k = int(out.diverged_at)
    assert 0 <= k < len(x_windows) - 1 and np.all(np.isnan(out.losses[k + 1:]))
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(out.params))


@pytest.mark.parametrize("value", [3, 0, -1, 2.5, True, "7", 10_000])
def test_bad_backprop_steps_is_refused_before_compiling(value):
    """Below num_steps or not an integer: refused by the plan; longer than a row of data: by the epoch,
    which knows the row. Either way the message names backprop_steps and what it must be."""
    x_windows, y_windows, params = _windows(5)                      # k1 = 5, rows of 150 steps
    opt = jax_rnn.adagrad(0.1)
    message = (r"train_epoch: backprop_steps must be an integer from num_steps \(5\) to the steps in a row of data "
               r"\(150\), got 10000" if value == 10_000 else r"plan: backprop_steps must be an integer >= num_steps \(5\)")
    with pytest.raises(ValueError, match=message):
        jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt, plan=_plan(5, value))


def test_a_loop_of_train_step_trains_the_same_tbptt_as_the_epoch():
    """`train_step` with ``x`` of k2 steps, ``y`` of the last k1 and ``start``: the epoch, one step at a time."""
    k1, k2 = 2, 5
    x_windows, y_windows, params = _windows(k1)
    opt = jax_rnn.adagrad(0.1)
    want = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt, plan=_plan(k1, k2))
    x = np.concatenate([np.zeros((8, k2 - k1), np.int32), *x_windows], axis=1)   # the padded stream rows
    p, o, s, losses = params, opt.init(params), jax_rnn.zero_state(8, 4), []
    for u, y in enumerate(y_windows):
        p, o, s, loss = jax_rnn.train_step(p, o, s, x[:, u * k1:u * k1 + k2], y, opt, start=u * k1 + k1 - k2)
        losses.append(loss)
    np.testing.assert_allclose(losses, want[3], rtol=0, atol=1e-5)
    for a, b in zip(jax.tree.leaves((p, s)), jax.tree.leaves((want[0], want[2]))):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    # The plan of the shapes, given explicitly: the same steps.
    p2, _, s2, loss2 = jax_rnn.train_step(params, opt.init(params), jax_rnn.zero_state(8, 4), x[:, :k2], y_windows[0],
                                          opt, _plan(k1, k2), start=k1 - k2)
    np.testing.assert_allclose(loss2, losses[0], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"train_step: y \(8, 3\) must have x's batch \(8\) and at most its 2 steps"):
        jax_rnn.train_step(params, opt.init(params), jax_rnn.zero_state(8, 4), x[:, :2], x[:, :3], opt)
