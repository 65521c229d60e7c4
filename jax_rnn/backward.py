"""BPTT written out, for ``gradient="by_hand"``: each weight's gradient one product over the window's steps and
batch, not a batch sum per step as under ``jax.grad``; equal to it to float rounding."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .model import Params, forward, product
from .plan import Plan


def value_and_grad_window(params: Params, x_t: jax.Array, y_t: jax.Array, state: jax.Array, plan: Plan):
    """``((mean_loss, final_state), grads)`` of `jax_rnn.model.loss_window`, batch-last: ``x_t, y_t: int[T,
    batch]``, ``state: f32[d, batch]`` (no gradient flows into it)."""
    w, u = params["rnn_cell"]["W"], params["softmax"]["W"]
    (steps, batch), n, d = x_t.shape, u.shape[1], u.shape[0]
    final, (states, logits_t) = forward(params, x_t, state, plan)               # [T, d, batch], [T, n, batch]
    log_p = jax.nn.log_softmax(logits_t, axis=-2)
    target = jax.nn.one_hot(y_t, n, dtype=log_p.dtype, axis=-2)
    mean_loss = -jnp.sum(target * log_p) / (steps * batch)
    d_logits = (jnp.exp(log_p) - target) / (steps * batch)
    softmax_elementwise = "softmax" in plan.elementwise
    if plan.softmax_grad == "difference":  # d_logits sums to zero over classes: one class fewer to sum
        d_states = product((u[:, :-1] - u[:, -1:]).T, d_logits[:, :-1], plan, softmax_elementwise)
    else:
        d_states = product(u.T, d_logits, plan, softmax_elementwise)

    def back(d_next, step):
        """``d_next`` reaches S_t from step t+1: the gradient for S_{t-1}, and dL/d(pre-tanh)_t."""
        d_state, s = step
        d_pre = (d_state + d_next) * (1.0 - s * s)
        return product(w[-d:].T, d_pre, plan, "state" in plan.elementwise), d_pre

    _, d_pre = jax.lax.scan(back, jnp.zeros_like(state), (d_states, states), reverse=True,
                            unroll=min(plan.unroll, steps))
    # [onehot(X_t), S_{t-1}]: [T, n + d, batch]
    cell_input = jnp.concatenate([jax.nn.one_hot(x_t, n, dtype=states.dtype, axis=-2),
                                  jnp.concatenate([state[None], states[:-1]])], axis=1)
    over_window = lambda a, g: jnp.einsum("tib,tjb->tij", a, g).sum(0)
    d_w = over_window(cell_input, d_pre)
    grads = {"rnn_cell": {"W": d_w, "b": d_w[:n].sum(0)},                       # one-hot rows sum to one
             "softmax": {"W": over_window(states, d_logits), "b": jnp.sum(d_logits, axis=(0, 2))}}
    return (mean_loss, final), grads
