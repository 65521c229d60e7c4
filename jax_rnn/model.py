"""The vanilla RNN of r2rt's "Recurrent Neural Networks in Tensorflow I", as pure JAX functions.

    S_t = tanh([X_t, S_{t-1}] @ W + b)        (params["rnn_cell"])
    P_t = softmax(S_t @ U + b_p)               (params["softmax"])

Parameters are a plain pytree in the layout shared with TensorFlow's ``BasicRNNCell`` (input rows
first, state rows second in ``W``), so weights move between the frameworks unchanged::

    {"rnn_cell": {"W": f32[n + d, d], "b": f32[d]}, "softmax": {"W": f32[d, n], "b": f32[n]}}

with n = num_classes and d = state_size. Inputs are class indices (``int[batch, num_steps]``); the
one-hot ``X_t`` of the equation is never materialised: ``onehot(x) @ W[:n]`` is the row ``W[x]``.

Example::

    params = init_params(jax.random.key(0))
    states, final_state = rnn(params, x, zero_state(x.shape[0], 4))   # x: int32[batch, num_steps]
    mean_loss, final_state = loss(params, x, y, zero_state(x.shape[0], 4))
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import validate
from .data import check_int
from .layout import check_params, param_shapes  # noqa: F401 (part of the model's API)

Params = dict[str, dict[str, jax.Array]]


def init_params(key: jax.Array, num_classes: int = 2, state_size: int = 4) -> Params:
    """Glorot-uniform weights (TF's ``get_variable`` default) and zero biases, float32.

    **Arguments:** ``key``: a JAX PRNG key; ``num_classes`` n >= 1; ``state_size`` d >= 1.
    **Returns:** ``{"rnn_cell": {"W": [n+d, d], "b": [d]}, "softmax": {"W": [d, n], "b": [n]}}``.
    """
    check_int("num_classes", num_classes)
    check_int("state_size", state_size)
    k_cell, k_softmax = jax.random.split(key)
    glorot = jax.nn.initializers.glorot_uniform()
    n, d = num_classes, state_size
    return {
        "rnn_cell": {"W": glorot(k_cell, (n + d, d), jnp.float32), "b": jnp.zeros((d,), jnp.float32)},
        "softmax": {"W": glorot(k_softmax, (d, n), jnp.float32), "b": jnp.zeros((n,), jnp.float32)},
    }


def glorot_params(num_classes: int, state_size: int, seed: int) -> dict:
    """The initial parameters a seed stands for across the project, drawn with numpy: Glorot-uniform
    ``W`` (``np.random.default_rng(seed).uniform``, ``rnn_cell/W`` then ``softmax/W``, limit
    ``sqrt(6 / (fan_in + fan_out))``: the draws of ``tf_rnn.glorot_uniform_params``), zero biases,
    float32 numpy. `fit` and ``rnn-compare`` start from these; `init_params` is the ``jax.random`` way.
    """
    rng = np.random.default_rng(seed)
    params: dict = {}
    for scope, leaves in param_shapes(num_classes, state_size).items():
        params[scope] = {}
        for name, shape in leaves.items():
            limit = math.sqrt(6.0 / sum(shape))
            params[scope][name] = (rng.uniform(-limit, limit, size=shape).astype(np.float32) if name == "W"
                                   else np.zeros(shape, np.float32))
    return params


def zero_state(batch_size: int, state_size: int) -> jax.Array:
    """The initial state S_{-1}: ``f32[batch_size, state_size]`` zeros."""
    return jnp.zeros((batch_size, state_size), jnp.float32)


def rnn_cell(cell_params: dict[str, jax.Array], x_t: jax.Array, state: jax.Array) -> jax.Array:
    """One step: ``S_t = tanh([onehot(x_t), S_{t-1}] @ W + b)``.

    **Arguments:** ``cell_params``: ``{"W": [n+d, d], "b": [d]}``; ``x_t: int[batch]`` class indices;
    ``state: f32[batch, d]``. **Returns:** the new state ``f32[batch, d]``.
    """
    d = state.shape[-1]
    w_input, w_state = cell_params["W"][:-d], cell_params["W"][-d:]
    return jnp.tanh(w_input[x_t] + state @ w_state + cell_params["b"])


def rnn(params: Params, x: jax.Array, state: jax.Array, unroll: int | bool = 1) -> tuple[jax.Array, jax.Array]:
    """Run the cell over a window with ``jax.lax.scan``.

    **Arguments:** ``x: int[batch, num_steps]``; ``state: f32[batch, d]`` (S_{-1});
    ``unroll``: passed to ``lax.scan`` (``True`` unrolls the whole window).
    **Returns:** ``(states: f32[batch, num_steps, d], final_state: f32[batch, d])``.
    """
    def step(s, x_t):
        s = rnn_cell(params["rnn_cell"], x_t, s)
        return s, s

    final_state, states = jax.lax.scan(step, state, jnp.swapaxes(x, 0, 1), unroll=unroll)
    return jnp.swapaxes(states, 0, 1), final_state


def logits(params: Params, states: jax.Array) -> jax.Array:
    """``states: f32[..., d]`` -> ``f32[..., n]``: the softmax layer's pre-activations ``S @ U + b_p``."""
    return states @ params["softmax"]["W"] + params["softmax"]["b"]


def loss(params: Params, x: jax.Array, y: jax.Array, state: jax.Array, unroll: int | bool = 1,
         remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """Mean sparse softmax cross-entropy over batch and time of one window.

    **Arguments:** ``x, y: int[batch, num_steps]``; ``state: f32[batch, d]`` (S_{-1});
    ``unroll``: passed to ``lax.scan``; ``remat``: rematerialise blocks of steps in the backward pass (see `loss_window`).
    **Returns:** ``(mean_loss: f32[], final_state: f32[batch, d])``.

    Checks its arguments first (`jax_rnn.validate`; values only when concrete, so ``jax.grad(loss)``
    and ``jit`` work as before): ValueError/TypeError naming the argument. Runs in the layout the
    training loop uses for this state size (`batch_last_for`).
    """
    n, d = validate.sizes("loss", params)
    validate.check_classes("loss", {"x": x, "y": y}, 2, "[batch, num_steps]", n)
    validate.check_state("loss", state, validate._arr(x).shape[0], d)
    batch_last = batch_last_for(d)
    mean_loss, final_state = loss_window(params, x.T, y.T, state.T if batch_last else state, unroll, remat, batch_last)
    return mean_loss, final_state.T if batch_last else final_state


# How the training loop lays out a window, chosen by measurement on CPU (figures: README, "How the JAX
# epoch gets fast"). Layout: below BATCH_FIRST_FROM the state is batch-last (``[d, batch]``: short vector
# loops over the batch that XLA fuses), from it on batch-first (``[batch, d]``: plain matrix products).
# Contraction: in the batch-last layout a matrix of at most SMALL_CONTRACTION weights is applied
# elementwise, broadcast over the batch once per window (`_product`, `_input_projection`); larger ones
# use a dot and a gather.
BATCH_FIRST_FROM = 128
SMALL_CONTRACTION = 16
# Gradient: below this state size and for batches in BY_HAND_BATCHES the training loop runs BPTT written
# out (`value_and_grad_window`), elsewhere ``jax.grad`` of `loss_window`. Measured, one run, by hand against
# jax.grad, batch 200: state 4 -8% / -13% / -4% (num_steps 1 / 5 / 10), state 16 0 / -4% / -22%; state 64
# -4% / +8% / +3% (its [T, n + d, batch] input copy costs more than the per-step sums it saves). State 4 /
# num_steps 5 by batch: 20 +36%, 50 +17%, 100 +3%, 500 -20%, 2,000 -15%, 5,000 -4%, 20,000 +15% (small:
# the extra matrix-product calls; large: the input copy); state 16 / 5: batch 20 -29%, 20,000 +41%.
BY_HAND_BELOW = 64
BY_HAND_BATCHES = (100, 5000)


def batch_last_for(state_size: int) -> bool:
    """Whether the training loop runs a state of this size batch-last (see BATCH_FIRST_FROM)."""
    return state_size < BATCH_FIRST_FROM


def _product(w: jax.Array, batch_last: bool, batch_size: int):
    """``s -> s @ w`` on the feature axis (``w: [k, m]``), prepared once per window, outside the scan:
    ``s: [..., k, batch] -> [..., m, batch]`` when ``batch_last``, else ``[..., batch, k] -> [..., batch, m]``."""
    if not batch_last:
        return lambda s: s @ w
    if w.size > SMALL_CONTRACTION:
        return lambda s: jnp.einsum("km,...kb->...mb", w, s)
    w_b = jnp.broadcast_to(w.T[:, :, None], w.T.shape + (batch_size,))   # [m, k, batch]
    return lambda s: jnp.sum(w_b * s[..., None, :, :], axis=-2)


def _input_projection(w_input: jax.Array, x: jax.Array, batch_last: bool) -> jax.Array:
    """``onehot(x) @ w_input`` for ``x: int[steps, batch]``, ``w_input: [n, d]``: ``[steps, d, batch]`` when
    ``batch_last`` (a select per class for a small matrix, else a gather), else ``[steps, batch, d]``."""
    if not batch_last:
        return w_input[x]
    if w_input.size > SMALL_CONTRACTION:
        return jnp.moveaxis(w_input.T[:, x], 0, 1)
    return sum(jnp.where(x[:, None, :] == c, w_input[c][None, :, None], 0.0) for c in range(w_input.shape[0]))


def remat_block_size(num_steps: int) -> int:
    """Steps per rematerialised block: ``ceil(sqrt(num_steps))`` (the last block takes the remainder)."""
    return math.isqrt(num_steps - 1) + 1 if num_steps > 1 else 1


def loss_window(params: Params, x_t: jax.Array, y_t: jax.Array, state: jax.Array, unroll: int | bool = 1,
                remat: bool = False, batch_last: bool = True, start: jax.Array | int | None = None
                ) -> tuple[jax.Array, jax.Array]:
    """`loss` time-major, in the layout the training loop runs in (`batch_last_for`), for one window of
    truncated BPTT: TF style (``x_t`` and ``y_t`` of one length) or TBPTT(k1, k2) (``y_t`` shorter).

    A window of k2 steps whose labels ``y_t`` cover its last k1 <= k2 steps: the loss is the mean over
    those k1 steps (the update's new steps) and the batch; the returned state is the state after the
    window's *first* k1 steps, the one the next window of TBPTT(k1, k2) starts from (the final state when
    k1 == k2). ``start``: the stream position of the window's first step, for the windows that begin
    before the stream does: a step at a negative position is absent (it keeps the state unchanged and
    carries no loss). ``None``: every step is present.

    The input projection ``onehot(x) @ W[:n]`` of the steps is computed before the recurrence; the
    scanned step computes the new state and, on the steps that carry a loss, its logits.

    ``remat=True`` is for long windows (num_steps in the thousands): the window is cut into blocks of
    ``ceil(sqrt(num_steps))`` steps (`remat_block_size`; the last one shorter), each wrapped in
    ``jax.checkpoint``. The backward pass keeps only the state at each block boundary and recomputes one
    block at a time, so memory grows like ``sqrt(num_steps)`` instead of ``num_steps``, for about one
    more forward pass.

    **Arguments:** ``x_t: int[k2, batch]``; ``y_t: int[k1, batch]``; ``state: f32[d, batch]`` if
    ``batch_last``, else ``f32[batch, d]``. **Returns:** ``(mean_loss: f32[], state)``, the state in the
    same layout.
    """
    d, batch_size = params["rnn_cell"]["b"].shape[0], x_t.shape[1]
    k2, k1 = x_t.shape[0], y_t.shape[0]
    w, b = params["rnn_cell"]["W"], params["rnn_cell"]["b"]
    state_product = _product(w[-d:], batch_last, batch_size)                  # W: input rows, then state rows
    softmax_product = _product(params["softmax"]["W"], batch_last, batch_size)
    feature_axis = -2 if batch_last else -1

    # One scan over the window. TF style (k1 == k2, the tutorial): each step computes its logits. TBPTT(k1,
    # k2 > k1): the scan also keeps the states, for the one after step k1 (where the next window starts);
    # the logits of the first k2 - k1 steps are not needed. Measured (state 4: TBPTT(5, 15), TBPTT(9, 15);
    # state 16: TBPTT(1, 9)): cutting the window into segments, one scan each, cost more (3.1-3.5x the
    # TF-style epoch of 5, against 2.9x); logits inside the scan are free where the softmax product is
    # elementwise (the small-matrix path) and cost state 16 a dot per extra step (7.2x against 6.4x), so
    # there they are one product after the scan.
    tbptt = k1 < k2
    logits_in_scan = not tbptt or (batch_last and params["softmax"]["W"].size <= SMALL_CONTRACTION)

    def steps(s, block):
        """The steps of ``block = (x: int[k, batch], present: bool[k] | None)`` from state ``s``: ``(final
        state, per step (logits | None, state | None))``. ``present``: keep the state where False."""
        x_block, present = block
        inputs = _input_projection(w[:-d], x_block, batch_last) + (b[:, None] if batch_last else b)

        def step(s, step_inputs):
            input_t, present_t = step_inputs
            new = jnp.tanh(input_t + state_product(s))
            s = new if present_t is None else jnp.where(present_t, new, s)
            return s, (softmax_product(s) if logits_in_scan else None, s if tbptt else None)

        return jax.lax.scan(step, s, (inputs, present), unroll=unroll)

    present = None if start is None else start + jnp.arange(k2) >= 0
    if not remat:
        s, (logits_t, states) = steps(state, (x_t, present))
    else:
        k = remat_block_size(k2)
        full = k2 // k * k                                           # whole blocks, then the remainder
        block = jax.checkpoint(steps)
        blocks = jax.tree.map(lambda a: a[:full].reshape((full // k, k) + a.shape[1:]), (x_t, present))
        s, out = jax.lax.scan(block, state, blocks)
        logits_t, states = jax.tree.map(lambda a: a.reshape((full,) + a.shape[2:]), out)
        if full < k2:
            s, rest = block(s, jax.tree.map(lambda a: a[full:], (x_t, present)))
            logits_t, states = jax.tree.map(lambda a, r: jnp.concatenate([a, r]), (logits_t, states), rest)
    carried = states[k1 - 1] if tbptt else s
    if tbptt:
        logits_t = logits_t[k2 - k1:] if logits_in_scan else softmax_product(states[k2 - k1:])
    b_softmax = params["softmax"]["b"]                               # logits: [k1, (n, batch | batch, n)]
    log_p = jax.nn.log_softmax(logits_t + (b_softmax[:, None] if batch_last else b_softmax), axis=feature_axis)
    target = jax.nn.one_hot(y_t, log_p.shape[feature_axis], dtype=jnp.bool_, axis=feature_axis)
    nll = -jnp.sum(jnp.where(target, log_p, 0.0), axis=feature_axis)
    return jnp.mean(nll), carried


def value_and_grad_window(params: Params, x_t: jax.Array, y_t: jax.Array, state: jax.Array,
                          unroll: int | bool = 1) -> tuple[tuple[jax.Array, jax.Array], Params]:
    """`loss_window`'s value and its gradient with respect to ``params``, by backpropagation through time
    written out, for the tutorial's windows in the batch-last layout: ``x_t, y_t: int[T, batch]``,
    ``state: f32[d, batch]`` (a constant: no gradient flows into it). Equal to
    ``jax.value_and_grad(loss_window, has_aux=True)(params, x_t, y_t, state, unroll)`` to float rounding
    (tested), and what the training loop runs there.

    Why by hand: every weight's gradient is a sum over the window's steps and its batch. Derived by
    ``jax.grad``, each step adds its own batch sum, which XLA's CPU compiler splits into a two-pass
    reduction: about half of the state-4 epoch went there. Here each weight's gradient is one matrix
    product over all steps x batch (``einsum`` with the step as a batch axis, then a sum over <= num_steps
    terms), and the bias gradient the sum of the input rows' (their one-hot rows add up to one).

    **Returns:** ``((mean_loss: f32[], final_state: f32[d, batch]), grads)``, ``grads`` shaped like ``params``.
    """
    w, b = params["rnn_cell"]["W"], params["rnn_cell"]["b"]
    u, b_softmax = params["softmax"]["W"], params["softmax"]["b"]
    (num_steps, batch_size), n, d = x_t.shape, b_softmax.shape[0], b.shape[0]
    w_input, w_state = w[:-d], w[-d:]
    inputs = _input_projection(w_input, x_t, True) + b[:, None]                   # [T, d, batch]
    state_product, back_product = _product(w_state, True, batch_size), _product(w_state.T, True, batch_size)

    def forward(s, input_t):
        s = jnp.tanh(input_t + state_product(s))
        return s, s

    final_state, states = jax.lax.scan(forward, state, inputs, unroll=unroll)   # S_0 .. S_{T-1}: [T, d, batch]
    log_p = jax.nn.log_softmax(_product(u, True, batch_size)(states) + b_softmax[:, None], axis=-2)   # [T, n, batch]
    target = jax.nn.one_hot(y_t, n, dtype=jnp.bool_, axis=-2)
    mean_loss = -jnp.sum(jnp.where(target, log_p, 0.0)) / (num_steps * batch_size)

    d_logits = (jnp.exp(log_p) - target.astype(log_p.dtype)) / (num_steps * batch_size)   # d mean_loss / d logits
    # Through the softmax layer. d_logits sums to zero over the classes, so U's last column can be taken out
    # of the others and one class fewer summed: for two classes a plain product, no sum over classes. Measured
    # (one run, against the plain product): num_steps 1, state 4 -14%, state 16 -17%; at num_steps 5 and 10
    # the same change made XLA:CPU run more kernels at once on the two cores, and the epoch took 2x as long.
    if num_steps == 1:
        d_states = _product((u[:, :-1] - u[:, -1:]).T, True, batch_size)(d_logits[:, :-1])
    else:
        d_states = _product(u.T, True, batch_size)(d_logits)

    def backward(d_next, step):
        """``d_next``: the gradient reaching S_t from step t+1. Returns it for S_{t-1}, and dL/d(pre-tanh)_t."""
        d_state, s = step
        d_pre = (d_state + d_next) * (1.0 - s * s)
        return back_product(d_pre), d_pre

    _, d_pre = jax.lax.scan(backward, jnp.zeros_like(state), (d_states, states), reverse=True, unroll=unroll)
    # [onehot(X_t), S_{t-1}], the cell's input as TF concatenates it: [T, n + d, batch]
    cell_input = jnp.concatenate([jax.nn.one_hot(x_t, n, dtype=states.dtype, axis=-2),
                                  jnp.concatenate([state[None], states[:-1]])], axis=1)
    over_window = lambda a, g: jnp.einsum("tib,tjb->tij", a, g).sum(0)         # sum over steps and batch of a g^T
    d_w = over_window(cell_input, d_pre)
    grads = {"rnn_cell": {"W": d_w, "b": d_w[:n].sum(0)},
             "softmax": {"W": over_window(states, d_logits), "b": jnp.sum(d_logits, axis=(0, 2))}}
    return (mean_loss, final_state), grads


def loss_batch_last(params: Params, x_t: jax.Array, y_t: jax.Array, state_t: jax.Array,
                    unroll: int | bool = 1, remat: bool = False) -> tuple[jax.Array, jax.Array]:
    """`loss_window` with ``batch_last=True`` (``state_t: f32[d, batch]``): kept for existing callers."""
    return loss_window(params, x_t, y_t, state_t, unroll, remat, batch_last=True)
