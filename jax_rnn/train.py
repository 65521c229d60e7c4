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

import functools
from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree
# Whether no trace is active: JAX's own test (not public in jax 0.10). `_Jitted` needs it because a call
# that closes over a caller's tracers, e.g. ``jax.jit(lambda: train_epoch(p, ...))()``, has none in its
# arguments.
from jax._src.core import trace_state_clean as _trace_state_clean

from . import optim, validate
from .model import BY_HAND_BATCHES, BY_HAND_BELOW, Params, batch_last_for, loss_window, value_and_grad_window

# Windows up to this many steps are fully unrolled inside the compiled step (no loop overhead); longer
# windows are unrolled by this factor, which keeps compile time bounded for num_steps in the thousands.
MAX_UNROLL = 16


# XLA's CPU compiler hands some reductions to YNNPACK ("reduce" fusions). The batch sums of the
# small-matrix path (`model._product`) become such fusions under vmap and at large batches, and then cost
# several times the fused loops: state 4, num_steps 5, 3 runs vmapped, 155 ms against 65 ms per epoch;
# one run at batch 20,000, 17 ms against 4.5 ms per 100k points. Keeping YNNPACK for the dots only gives
# the fused loops back and leaves the dot-bound sizes as they were (state 16 and 64 within noise). A
# compile option of XLA's, scoped to these functions rather than a process-wide XLA_FLAGS.
COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
# One run at a time (`train_step`, `train_epoch`, `train_epoch_guarded`) also compiles with XLA's
# memory-optimised schedule: it reuses buffers more, so fewer independent kernels run at once on the other
# core (README, "Where the gap to C came from"): state 16 / num_steps 5 116 ms against 140, 64 / 5 504
# against 581, the rest of the grid within 5%, the results unchanged. Not for `train_runs`: the
# sweep's vmapped cells, two at a time, trained 3-13% slower with it.
ONE_RUN_OPTIONS = {**COMPILER_OPTIONS, "xla_cpu_scheduler_type": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED"}
_STATIC = ("optimizer", "remat")
_EPOCH_STATIC = (*_STATIC, "backprop_steps")


class _Jitted:
    """``fn`` jitted twice: with XLA's compile ``options`` when called from Python, without when traced
    inside a caller's own ``jit``/``vmap``/``grad`` (JAX accepts compile options on top-level jits only;
    the caller's compile then decides). ``check``, if given, runs first, in plain Python (values only when
    concrete; on tracers and ``ShapeDtypeStruct``s only shapes and dtypes). ``.lower`` is the top-level
    one's, after the same check."""

    def __init__(self, fn, name: str, check=None, static=_STATIC, options=ONE_RUN_OPTIONS):
        self.nested = jax.jit(fn, static_argnames=static)
        self.top_level = jax.jit(fn, static_argnames=static, compiler_options=options)
        self._check = check
        functools.update_wrapper(self, fn)
        self.__name__ = self.__qualname__ = name

    def __call__(self, *args, **kwargs):
        if self._check is not None:
            self._check(*args, **kwargs)
        # Inside a caller's trace (jit, vmap, grad, eval_shape; through its arguments or constants it
        # closes over), JAX's own test of that; no walk over the arguments on the hot path.
        return (self.top_level if _trace_state_clean() else self.nested)(*args, **kwargs)

    def lower(self, *args, **kwargs):
        if self._check is not None:
            self._check(*args, **kwargs)
        return self.top_level.lower(*args, **kwargs)

    def __getattr__(self, name):
        if name.startswith("__") or "top_level" not in self.__dict__:  # copy/pickle probe before __init__
            raise AttributeError(name)
        return getattr(self.top_level, name)


def _unroll(num_steps: int) -> int | bool:
    return True if num_steps <= MAX_UNROLL else MAX_UNROLL


def _step(params: Params, opt_state, state: jax.Array, x_t: jax.Array, y_t: jax.Array, start, optimizer,
          remat: bool = False, by_hand: bool = True, unravel=None):
    """One window, time-major (``x_t: [k2, batch]``, ``y_t: [k1, batch]``, ``start``: see `loss_window`),
    the state in the layout of `batch_last_for` (``[d, batch]`` or ``[batch, d]``).

    The gradient: `value_and_grad_window` (BPTT by hand) for the tutorial's windows (no ``remat``, not
    TBPTT(k1, k2 > k1)) below state ``BY_HAND_BELOW``, batches in ``BY_HAND_BATCHES``, if ``by_hand``; else
    ``jax.grad`` of `loss_window` (figures: `jax_rnn.model.BY_HAND_BELOW`). `train_runs` passes
    ``by_hand=False`` (via `_epoch`): under ``vmap`` the step-batched matrix products of the hand-written
    pass cost more, 3 runs at 4/5 +40%, 16/5 +20%.

    ``unravel``: ``params`` (and the optimizer's state) are one flat vector (`_epoch`), this makes the pytree."""
    state = jax.lax.stop_gradient(state)  # truncation: nothing flows into earlier windows
    flat, params = params, (params if unravel is None else unravel(params))
    d = params["rnn_cell"]["b"].shape[0]
    batch_last = batch_last_for(d)
    hand_sized = d < BY_HAND_BELOW and BY_HAND_BATCHES[0] <= x_t.shape[1] <= BY_HAND_BATCHES[1]
    if by_hand and hand_sized and not remat and start is None and x_t.shape[0] == y_t.shape[0]:
        (mean_loss, final_state), grads = value_and_grad_window(params, x_t, y_t, state, _unroll(x_t.shape[0]))
    else:
        grad_fn = jax.value_and_grad(loss_window, has_aux=True)
        (mean_loss, final_state), grads = grad_fn(params, x_t, y_t, state, _unroll(x_t.shape[0]), remat, batch_last,
                                                  start)
    if unravel is not None:
        grads = ravel_pytree(grads)[0]
    updates, opt_state = optimizer.update(grads, opt_state, flat)
    return optax.apply_updates(flat, updates), opt_state, final_state, mean_loss


def _to_layout(state: jax.Array, batch_last: bool) -> jax.Array:
    """``f32[batch, d]`` (the API's layout) <-> the training loop's layout (its own inverse)."""
    return state.T if batch_last else state


def _train_step(params: Params, opt_state, state: jax.Array, x: jax.Array, y: jax.Array,
               optimizer: optax.GradientTransformation, remat: bool = False, start: jax.Array | int | None = None):
    """One truncated-BPTT step on one window.

    **Arguments:** ``state: f32[batch, d]`` (a constant: no gradient flows into it);
    ``x, y: int[batch, num_steps]``; ``optimizer``: static (e.g. ``adagrad(0.1)``); ``remat``: static,
    rematerialise the scan in blocks of about sqrt(num_steps) steps (`loss_window`): less memory.
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], loss: f32[])``.

    **TBPTT(k1, k2)** in a loop of one's own: ``x: int[batch, k2]``, ``y: int[batch, k1]`` the labels of
    its last k1 steps (k1 <= k2); the loss is theirs, and the returned state is the one after the window's
    first k1 steps (where the next window starts). ``start``: the stream position of ``x``'s first step
    (a traced int is fine); steps at negative positions are absent (the state is kept through them).

    Checks keys, shapes and dtypes of every argument while tracing, i.e. once per new argument
    signature and never on a cached call (not the values: class ids outside ``[0, num_classes)`` are
    checked by `train_epoch`, `fit` and the CLI).
    """
    _check_step(params, opt_state, state, x, y, optimizer, remat)
    batch_last = batch_last_for(state.shape[1])
    params, opt_state, final_state, mean_loss = _step(params, opt_state, _to_layout(state, batch_last), x.T, y.T,
                                                      start, optimizer, remat)
    return params, opt_state, _to_layout(final_state, batch_last), mean_loss


def _updates(x_windows: jax.Array, y_windows: jax.Array, backprop_steps: int | None) -> list[tuple]:
    """The epoch's updates, in parts ``(xs, window, first)``: a scan runs over ``xs``, ``window`` turns one
    item into ``(x_t, y_t, start)`` (`loss_window`), ``first`` is the index of the part's first update.

    TF style (``backprop_steps`` None or num_steps): one part, the windows themselves, time-major.
    TBPTT(k1, k2): update u's inputs are the k2 steps of the stream ending with its k1 new ones, ``[u*k1 +
    k1 - k2, (u+1)*k1)``, sliced from the stream the windows form with k2 - k1 steps padded in front. Two
    parts: the first ceil((k2 - k1) / k1) updates, whose windows begin before the stream (their absent
    steps masked), then the rest, without a mask (its selects cost as much as the steps themselves at
    state 4: TBPTT(9, 10) 1.6x the TF-style epoch of 9 with them, 1.04x without).
    """
    windows_t = (jnp.swapaxes(x_windows, 1, 2), jnp.swapaxes(y_windows, 1, 2))   # [epoch_size, k1, batch]
    updates, k1, batch = x_windows.shape[0], x_windows.shape[2], x_windows.shape[1]
    k2 = k1 if backprop_steps is None else backprop_steps
    if k2 == k1:
        return [(windows_t, lambda window: (*window, None), 0)]
    stream = windows_t[0].reshape(updates * k1, batch)
    padded = jnp.concatenate([jnp.zeros((k2 - k1, batch), stream.dtype), stream])

    def window(update, masked: bool):
        u, y_t = update
        return jax.lax.dynamic_slice_in_dim(padded, u * k1, k2), y_t, (u * k1 + k1 - k2) if masked else None

    index, head = jnp.arange(updates, dtype=jnp.int32), -(-(k2 - k1) // k1)   # head < updates: k2 <= the row
    return [((index[:head], windows_t[1][:head]), partial(window, masked=True), 0),
            ((index[head:], windows_t[1][head:]), partial(window, masked=False), head)]


def _epoch(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array, optimizer, state, remat=False,
           guard=False, backprop_steps=None, alone=True):
    """The epoch (see `train_epoch`). ``alone``: one run, not under `train_runs`' ``vmap``: the gradient by
    hand (`_step`) and the flat carry below, both for small states, both measured faster alone and slower
    vmapped (3 runs, state 16 / num_steps 5: +20% and +12%)."""
    batch_size, state_size = x_windows.shape[1], params["rnn_cell"]["b"].shape[-1]
    batch_last = batch_last_for(state_size)
    state_t = _to_layout(jnp.zeros((batch_size, state_size), jnp.float32) if state is None else state, batch_last)
    # `adagrad` is elementwise: below state BY_HAND_BELOW the loop carries the parameters and accumulators
    # as one vector each, so that its update is two kernels per window, not two per parameter (one run,
    # state 4: num_steps 1 -9%, 5 -7%, 10 -3%; state 16 / 5 -2%). Not at large states, where gathering the
    # gradients into the vector is a large copy every window (num_steps 5: state 64 equal, 256 +11%, 1,024
    # +80%), and not for any other optax transformation, which may not be elementwise.
    unravel = None
    if alone and isinstance(optimizer, optim.Adagrad) and state_size < BY_HAND_BELOW:
        params, unravel = ravel_pytree(params)
        opt_state = optim.with_accumulators(opt_state, ravel_pytree(optim.accumulators(opt_state))[0])
    step = partial(_step, optimizer=optimizer, remat=remat, by_hand=alone, unravel=unravel)

    def body(window_of, carry, update):
        params, opt_state, state_t = carry
        params, opt_state, state_t, mean_loss = step(params, opt_state, state_t, *window_of(update))
        return (params, opt_state, state_t), mean_loss

    def guarded_body(window_of, carry, inputs):
        # The divergence guard: after window k, if its loss or any new parameter / accumulator is not
        # finite, keep the values from before window k (the last finite ones), record k, and from then
        # on report NaN losses. Elementwise selects on ~80 numbers per step: no measurable cost.
        old, diverged_at = carry[:3], carry[3]
        update, k = inputs
        new = step(*old, *window_of(update))
        finite = jnp.isfinite(new[3])
        for leaf in jax.tree.leaves(new[:2]):
            finite = finite & jnp.all(jnp.isfinite(leaf))
        ok = (diverged_at < 0) & finite
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new[:3], old)
        diverged_at = jnp.where((diverged_at < 0) & ~finite, k, diverged_at)
        mean_loss = jnp.where((diverged_at < 0) | (diverged_at == k), new[3], jnp.nan)
        return (*kept, diverged_at), mean_loss

    carry, losses = (params, opt_state, state_t, jnp.int32(-1)) if guard else (params, opt_state, state_t), []
    for xs, window_of, first in _updates(x_windows, y_windows, backprop_steps):
        if guard:
            steps = first + jnp.arange(jax.tree.leaves(xs)[0].shape[0], dtype=jnp.int32)
            carry, part = jax.lax.scan(partial(guarded_body, window_of), carry, (xs, steps))
        else:
            carry, part = jax.lax.scan(partial(body, window_of), carry, xs)
        losses.append(part)
    losses = losses[0] if len(losses) == 1 else jnp.concatenate(losses)
    params, opt_state, state_t = carry[:3]
    if unravel is not None:
        params, opt_state = unravel(params), optim.with_accumulators(opt_state, unravel(optim.accumulators(opt_state)))
    if not guard:
        return params, opt_state, _to_layout(state_t, batch_last), losses
    return GuardedEpoch(params, opt_state, _to_layout(state_t, batch_last), losses, carry[3])


class GuardedEpoch(NamedTuple):
    """What `train_epoch_guarded` returns (a pytree: usable under ``jit``/``vmap``).

    ``params``, ``opt_state``: after the last window whose loss, parameters and optimizer state were all
    finite (so always finite if the inputs were); ``final_state: f32[batch, d]``: the state after that
    window; ``losses: f32[epoch_size]``: each window's loss (with the parameters before its update),
    NaN after ``diverged_at``; ``diverged_at: int32[]``: -1 if every window was finite, else the first
    window k whose loss, or whose updated parameters / accumulators, were not finite (``losses[k]`` is
    that window's own loss, which may be finite if only the update blew up).
    """

    params: Params
    opt_state: Any
    final_state: jax.Array
    losses: jax.Array
    diverged_at: jax.Array


def _train_epoch(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array,
                optimizer: optax.GradientTransformation, state: jax.Array | None = None, remat: bool = False,
                backprop_steps: int | None = None):
    """A whole epoch of truncated BPTT as one compiled call (``lax.scan`` over the windows).

    **Arguments:** ``x_windows, y_windows: int32[epoch_size, batch, num_steps]``; ``optimizer``:
    static; ``state: f32[batch, d]`` or ``None`` for zeros (the tutorial resets it every epoch);
    ``remat``: static, see `train_step`; ``backprop_steps``: static, k2 of TBPTT(k1, k2) with k1 =
    num_steps: each update counts the loss of one window's num_steps new steps and backpropagates it
    through the k2 >= num_steps steps ending there (the stream's steps before the epoch are absent); the
    next update starts from the state after the window's first num_steps steps. ``None`` (or num_steps)
    is the tutorial's training, TBPTT(num_steps, num_steps).
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], losses: f32[epoch_size])``.
    """
    return _epoch(params, opt_state, x_windows, y_windows, optimizer, state, remat, backprop_steps=backprop_steps)


def _train_epoch_guarded(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array,
                             optimizer: optax.GradientTransformation, state: jax.Array | None = None,
                             remat: bool = False, backprop_steps: int | None = None) -> GuardedEpoch:
    """`train_epoch` that stops learning at the first non-finite loss, parameter or accumulator.

    Same arguments as `train_epoch`. **Returns:** a `GuardedEpoch`. With ``diverged_at == -1`` its first
    four fields equal `train_epoch`'s (bit for bit in the tutorial's TBPTT(n, n); with ``backprop_steps`` >
    num_steps XLA compiles the two differently, and they agree to float rounding). `fit` and
    ``rnn-compare`` replay an epoch with this when `jax_rnn.driver.JaxTrainer`'s end-of-epoch check fails.

    **Example:** ``r = train_epoch_guarded(p, o, xw, yw, opt); if r.diverged_at >= 0: ...``
    """
    return _epoch(params, opt_state, x_windows, y_windows, optimizer, state, remat, True, backprop_steps)


def _runs(params: Params, opt_state, x_windows: jax.Array, y_windows: jax.Array,
          optimizer: optax.GradientTransformation, state: jax.Array | None = None, remat: bool = False,
          guard: bool = False, backprop_steps: int | None = None):
    """`train_epoch` for R independent runs in one compiled call (``jax.vmap`` over a leading run axis).

    **Arguments:** every leaf of ``params`` and ``opt_state`` has a leading run axis ``[R, ...]``;
    ``x_windows, y_windows: int32[R, epoch_size, batch, num_steps]``; ``state: f32[R, batch, d]`` or
    ``None``; ``guard``: static, each run guarded as in `train_epoch_guarded`; ``backprop_steps``: as in
    `train_epoch`. **Returns:** as `train_epoch` (``guard``: `train_epoch_guarded`), with the leading run axis.
    """
    run = lambda p, o, xw, yw, s: _epoch(p, o, xw, yw, optimizer, s, remat, guard, backprop_steps, alone=False)
    return jax.vmap(run, in_axes=(0, 0, 0, 0, None if state is None else 0))(params, opt_state, x_windows, y_windows, state)


# --- the public functions: the ones above jitted (`_Jitted`), the epochs behind argument checks -------
# The epochs' checks (`jax_rnn.validate`) run in plain Python before the call, never inside the traced
# body. `train_step` checks while tracing instead: a Python loop of steps pays nothing per call.


def _check_epoch(where, params, opt_state, x_windows, y_windows, optimizer, state=None, remat=False, guard=False,
                 backprop_steps=None, runs=False):
    lead = 1 if runs else 0
    per_run = params
    if runs:
        leading = {tuple(np.shape(validate._arr(a)))[:1] for a in jax.tree.leaves(params)}
        if len(leading) != 1 or () in leading:
            raise ValueError(f"{where}: every leaf of params must have one leading run axis [R, ...], got "
                             f"leading sizes {sorted(leading)}")
        per_run = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(validate._arr(a))[1:], validate._arr(a).dtype), params)
    n, d = validate.sizes(where, per_run)
    validate.check_optimizer(where, optimizer, opt_state, params, leading=(None,) * lead)
    layout = "[R, epoch_size, batch, num_steps]" if runs else "[epoch_size, batch, num_steps]"
    dims = {0: (next(iter(leading))[0], "the run axis (params' leading axis)")} if runs else {}
    validate.check_classes(where, {"x_windows": x_windows, "y_windows": y_windows}, 3 + lead, layout, n, dims=dims)
    shape = tuple(np.shape(validate._arr(x_windows)))
    validate.check_state(where, state, shape[1 + lead], d, leading=shape[:1] if runs else ())
    validate.check_finite_params(where, params)
    for flag, value in (("remat", remat), ("guard", guard)):
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {flag} must be True or False, got {value!r}")
    if backprop_steps is not None:
        validate.check_backprop_steps(where, backprop_steps, shape[2 + lead], shape[lead] * shape[2 + lead])


def _check_step(params, opt_state, state, x, y, optimizer, remat=False):
    where = "train_step"
    n, d = validate.sizes(where, params)
    validate.check_optimizer(where, optimizer, opt_state, params)
    validate.check_classes(where, {"x": x}, 2, "[batch, num_steps]", n, values=False)
    x_shape = np.shape(validate._arr(x))
    validate.check_classes(where, {"y": y}, 2, "[batch, num_steps]", n, values=False,
                           dims={0: (x_shape[0], "the batch (x's first axis)")})
    if np.shape(validate._arr(y))[1] > x_shape[1]:
        raise ValueError(f"{where}: y has more steps than x ({np.shape(validate._arr(y))[1]} > {x_shape[1]}); "
                         f"y labels the last k1 <= k2 steps of x (TBPTT), or all of them")
    a = validate._arr(state)
    want = (np.shape(validate._arr(x))[0], d)
    if tuple(a.shape) != want:
        raise ValueError(f"{where}: state must have shape {want} ([batch, state_size]), got {tuple(a.shape)}")


train_step = _Jitted(_train_step, "train_step")
train_epoch = _Jitted(_train_epoch, "train_epoch", partial(_check_epoch, "train_epoch"), static=_EPOCH_STATIC)
train_epoch_guarded = _Jitted(_train_epoch_guarded, "train_epoch_guarded", partial(_check_epoch, "train_epoch_guarded"),
                              static=_EPOCH_STATIC)
train_runs = _Jitted(_runs, "train_runs", partial(_check_epoch, "train_runs", runs=True),
                     static=(*_EPOCH_STATIC, "guard"), options=COMPILER_OPTIONS)
