"""Truncated backpropagation through time: one window per optimizer step, the state carried.

The final state of window k is the initial state of window k+1; the gradient is not carried (it
flows at most ``num_steps`` steps back), exactly like the tutorial's ``feed_dict`` loop. Here the
whole epoch is ONE compiled call: a ``lax.scan`` over the windows carrying ``(params, opt_state,
state)``. Everything is pure, so ``jax.vmap`` trains many independent runs at once (`train_runs`).

Shapes: ``x_windows, y_windows: int32[epoch_size, batch, num_steps]`` (from ``windows``); the state
is ``f32[batch, state_size]``; ``losses`` is ``f32[epoch_size]``, the loss of each window computed
with the parameters *before* that window's update (what the tutorial logs).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from .model import Params, loss_batch_last

# Windows up to this many steps are fully unrolled inside the compiled step (no loop overhead); longer
# windows are unrolled by this factor, which keeps compile time bounded for num_steps in the thousands.
MAX_UNROLL = 16


def _unroll(num_steps: int) -> int | bool:
    return True if num_steps <= MAX_UNROLL else MAX_UNROLL


def _step_batch_last(params: Params, opt_state, state_t: jax.Array, x_t: jax.Array, y_t: jax.Array, optimizer,
                     remat: bool = False):
    """One window in the batch-last layout (``state_t: [d, batch]``, ``x_t, y_t: [num_steps, batch]``)."""
    state_t = jax.lax.stop_gradient(state_t)  # truncation: nothing flows into earlier windows
    grad_fn = jax.value_and_grad(loss_batch_last, has_aux=True)
    (mean_loss, final_state_t), grads = grad_fn(params, x_t, y_t, state_t, _unroll(x_t.shape[0]), remat)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, final_state_t, mean_loss


@partial(jax.jit, static_argnames=("optimizer", "remat"))
def train_step(params: Params, opt_state, state: jax.Array, x: jax.Array, y: jax.Array,
               optimizer: optax.GradientTransformation, remat: bool = False):
    """One truncated-BPTT step on one window.

    **Arguments:** ``state: f32[batch, d]`` (a constant: no gradient flows into it);
    ``x, y: int[batch, num_steps]``; ``optimizer``: static (e.g. ``adagrad(0.1)``); ``remat``: static,
    rematerialise the scan in blocks of about sqrt(num_steps) steps (`loss_batch_last`): less memory.
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], loss: f32[])``.
    """
    params, opt_state, final_state_t, mean_loss = _step_batch_last(params, opt_state, state.T, x.T, y.T, optimizer, remat)
    return params, opt_state, final_state_t.T, mean_loss


def _epoch(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array, optimizer, state, remat=False):
    batch_size, state_size = x_windows.shape[1], params["rnn_cell"]["b"].shape[-1]
    state_t = jnp.zeros((state_size, batch_size), jnp.float32) if state is None else state.T

    def body(carry, window):
        params, opt_state, state_t = carry
        params, opt_state, state_t, mean_loss = _step_batch_last(params, opt_state, state_t, *window, optimizer, remat)
        return (params, opt_state, state_t), mean_loss

    windows_t = (jnp.swapaxes(x_windows, 1, 2), jnp.swapaxes(y_windows, 1, 2))   # [epoch_size, num_steps, batch]
    (params, opt_state, state_t), losses = jax.lax.scan(body, (params, opt_state, state_t), windows_t)
    return params, opt_state, state_t.T, losses


@partial(jax.jit, static_argnames=("optimizer", "remat"))
def train_epoch(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array,
                optimizer: optax.GradientTransformation, state: jax.Array | None = None, remat: bool = False):
    """A whole epoch of truncated BPTT as one compiled call (``lax.scan`` over the windows).

    **Arguments:** ``x_windows, y_windows: int32[epoch_size, batch, num_steps]``; ``optimizer``:
    static; ``state: f32[batch, d]`` or ``None`` for zeros (the tutorial resets it every epoch);
    ``remat``: static, see `train_step`.
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], losses: f32[epoch_size])``.
    """
    return _epoch(params, opt_state, x_windows, y_windows, optimizer, state, remat)


@partial(jax.jit, static_argnames=("optimizer", "remat"))
def train_runs(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array,
               optimizer: optax.GradientTransformation, state: jax.Array | None = None, remat: bool = False):
    """`train_epoch` for R independent runs in one compiled call (``jax.vmap`` over a leading run axis).

    **Arguments:** every leaf of ``params`` and ``opt_state`` has a leading run axis ``[R, ...]``;
    ``x_windows, y_windows: int32[R, epoch_size, batch, num_steps]``; ``state: f32[R, batch, d]`` or
    ``None``. **Returns:** as `train_epoch`, each with the leading run axis (``losses: f32[R, epoch_size]``).
    """
    run = lambda p, o, xw, yw, s: _epoch(p, o, xw, yw, optimizer, s, remat)
    return jax.vmap(run, in_axes=(0, 0, 0, 0, None if state is None else 0))(params, opt_state, x_windows, y_windows, state)
