"""Truncated backpropagation through time: one window per optimizer step, the state carried.

The final state of window k is the initial state of window k+1; the gradient is not carried. A whole
epoch is ONE compiled call: a ``lax.scan`` over the windows carrying ``(params, opt_state, state)``.
Every function trains through a `Plan` (`jax_rnn.plan`; made from the shapes when not given) and
compiles `program` of it, so a cell runs the same program however it is reached.

Shapes: ``x_windows, y_windows: int[epoch_size, batch, num_steps]`` (`jax_rnn.data.windows`); the state
``f32[batch, state_size]``; ``losses: f32[epoch_size]``, each window's loss before its update.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import checks
from .backward import value_and_grad_window
from .model import Params, check_params, loss_window
from .plan import Plan, plan as make_plan


class GuardedEpoch(NamedTuple):
    """`train_epoch_guarded`'s result. ``params``, ``opt_state``, ``final_state``: after the last window
    whose loss, parameters and optimizer state were all finite; ``losses``: NaN after ``diverged_at``;
    ``diverged_at: int32[]``: -1, or the first window whose loss or update was not finite."""

    params: Params
    opt_state: Any
    final_state: jax.Array
    losses: jax.Array
    diverged_at: jax.Array


def _step(params, opt_state, state, x_t, y_t, start, optimizer, plan: Plan):
    """One update on a time-major window (``x_t: [k2, batch]``, ``y_t: [k1, batch]``), state in the plan's layout."""
    state = jax.lax.stop_gradient(state)  # truncation: nothing flows into earlier windows
    if plan.gradient == "by_hand":
        (mean_loss, final), grads = value_and_grad_window(params, x_t, y_t, state, plan)
    else:
        (mean_loss, final), grads = jax.value_and_grad(loss_window, has_aux=True)(params, x_t, y_t, state, plan, start)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, final, mean_loss


def _layout(state, plan: Plan):
    """``[batch, d]`` (the API's) <-> the plan's layout."""
    return state.T if plan.batch_last else state


def _updates(x_windows, y_windows, k2: int) -> list[tuple]:
    """The epoch's updates as parts ``(xs, window_of, first)``: a scan runs over ``xs``, ``window_of`` makes
    one item ``(x_t, y_t, start)``, ``first`` is the index of the part's first update.

    TF style (k2 == k1): the windows, time-major. TBPTT(k1, k2): update u reads the k2 steps ``[u*k1 + k1 -
    k2, (u+1)*k1)`` of the stream, padded in front; the updates whose windows begin before the stream
    (masked steps) are a scan of their own, so that the rest carry no mask.
    """
    x_t, y_t = jnp.swapaxes(x_windows, 1, 2), jnp.swapaxes(y_windows, 1, 2)   # [epoch_size, k1, batch]
    updates, k1, batch = x_t.shape
    if k2 == k1:
        return [((x_t, y_t), lambda w: (*w, None), 0)]
    stream = jnp.concatenate([jnp.zeros((k2 - k1, batch), x_t.dtype), x_t.reshape(updates * k1, batch)])

    def window_of(masked, update):
        u, y = update
        return jax.lax.dynamic_slice_in_dim(stream, u * k1, k2), y, (u * k1 + k1 - k2) if masked else None

    index, head = jnp.arange(updates, dtype=jnp.int32), -(-(k2 - k1) // k1)
    return [((index[:head], y_t[:head]), functools.partial(window_of, True), 0),
            ((index[head:], y_t[head:]), functools.partial(window_of, False), head)]


def _epoch(params, opt_state, x_windows, y_windows, state, optimizer, plan: Plan, guard: bool):
    batch, d = x_windows.shape[1], params["rnn_cell"]["b"].shape[0]
    state = _layout(jnp.zeros((batch, d), jnp.float32) if state is None else state, plan)
    step = functools.partial(_step, optimizer=optimizer, plan=plan)

    def body(window_of, carry, update):
        params, opt_state, state, mean_loss = step(*carry, *window_of(update))
        return (params, opt_state, state), mean_loss

    def guarded(window_of, carry, inputs):
        # After window k: if its loss or any new parameter or accumulator is not finite, keep the values
        # from before it, record k, and report NaN losses from then on.
        (old, diverged_at), (update, k) = (carry[:3], carry[3]), inputs
        new = step(*old, *window_of(update))
        finite = jnp.all(jnp.array([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves((new[:2], new[3]))]))
        ok = (diverged_at < 0) & finite
        kept = jax.tree.map(lambda n, o: jnp.where(ok, n, o), new[:3], old)
        diverged_at = jnp.where((diverged_at < 0) & ~finite, k, diverged_at)
        return (*kept, diverged_at), jnp.where((diverged_at < 0) | (diverged_at == k), new[3], jnp.nan)

    carry, losses = (params, opt_state, state, jnp.int32(-1)) if guard else (params, opt_state, state), []
    for xs, window_of, first in _updates(x_windows, y_windows, plan.backprop_steps):
        if guard:
            ks = first + jnp.arange(len(xs[0]), dtype=jnp.int32)
            carry, part = jax.lax.scan(functools.partial(guarded, window_of), carry, (xs, ks))
        else:
            carry, part = jax.lax.scan(functools.partial(body, window_of), carry, xs)
        losses.append(part)
    out = (*carry[:2], _layout(carry[2], plan), jnp.concatenate(losses) if len(losses) > 1 else losses[0])
    return GuardedEpoch(*out, carry[3]) if guard else out


def _runs(params, opt_state, x_windows, y_windows, state, optimizer, plan: Plan, guard: bool):
    epoch = functools.partial(_epoch, optimizer=optimizer, plan=plan, guard=guard)
    return jax.vmap(epoch, in_axes=(0, 0, 0, 0, None if state is None else 0))(params, opt_state, x_windows,
                                                                                y_windows, state)


def _one_step(params, opt_state, state, x, y, start, optimizer, plan: Plan):
    params, opt_state, final, mean_loss = _step(params, opt_state, _layout(state, plan), x.T, y.T, start,
                                                optimizer, plan)
    return params, opt_state, _layout(final, plan), mean_loss


@functools.cache
def _jit(fn, xla_options: tuple):
    return jax.jit(fn, static_argnames=("optimizer", "plan", "guard"), compiler_options=dict(xla_options) or None)


def program(plan: Plan, kind: str = "epoch", nested: bool = False):
    """The jitted function that executes ``plan``: ``kind`` "epoch", "runs" or "step", with the plan's XLA
    compile options unless ``nested`` (inside a caller's trace, JAX takes compile options from the top
    level only). ``program(plan).lower(...).compile()`` compiles it ahead of time."""
    fn = {"epoch": _epoch, "runs": _runs, "step": _one_step}[kind]
    return _jit(fn, () if nested else plan.xla_options)


def _traced(*trees) -> bool:
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _plan(where: str, given, state_size: int, batch: int, num_steps: int, runs: int = 1) -> Plan:
    if given is None:
        return make_plan(state_size, batch, num_steps, runs=runs)
    if not isinstance(given, Plan):
        raise TypeError(f"{where}: plan must be a jax_rnn.Plan (jax_rnn.plan(...)), got {type(given).__name__}")
    cell = (given.state_size, given.batch_size, given.num_steps, given.runs)
    if cell != (state_size, batch, num_steps, runs):
        raise ValueError(f"{where}: the plan is for state {cell[0]}, batch {cell[1]}, num_steps {cell[2]}, "
                         f"{cell[3]} run(s); the arguments have {state_size}, {batch}, {num_steps}, {runs}")
    return given


def _check_epoch(where: str, params, opt_state, x_windows, y_windows, optimizer, state, plan, runs: bool) -> Plan:
    lead = (" [R, ...]" if runs else "")
    per_run = params
    if runs:
        sizes = {np.shape(a)[:1] for a in jax.tree.leaves(params)}
        if len(sizes) != 1 or () in sizes:
            raise ValueError(f"{where}: every leaf of params must have one leading run axis{lead}, got {sorted(sizes)}")
        per_run = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a)[1:], a.dtype), params)
    n, d = check_params(per_run, where)
    checks.optimizer(where, optimizer, opt_state, params)
    layout = "[R, epoch_size, batch, num_steps]" if runs else "[epoch_size, batch, num_steps]"
    shape = checks.class_ids(where, {"x_windows": x_windows, "y_windows": y_windows}, layout, n)
    if runs and shape[0] != next(iter(sizes))[0]:
        raise ValueError(f"{where}: x_windows has {shape[0]} runs, params {next(iter(sizes))[0]}")
    checks.state(where, state, (*shape[:-3], shape[-2], d))
    checks.finite(where, "params", params)
    epoch_size, batch, num_steps = shape[-3:]
    plan = _plan(where, plan, d, batch, num_steps, shape[0] if runs else 1)
    if plan.backprop_steps > epoch_size * num_steps:
        raise ValueError(f"{where}: backprop_steps must be an integer from num_steps ({num_steps}) to the steps in "
                         f"a row of data ({epoch_size * num_steps}), got {plan.backprop_steps}")
    return plan


def train_epoch(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
                state=None, plan: Plan | None = None):
    """A whole epoch of truncated BPTT as one compiled call.

    **Arguments:** ``x_windows, y_windows: int[epoch_size, batch, num_steps]``; ``optimizer`` (static,
    e.g. `jax_rnn.adagrad`); ``state: f32[batch, d]`` or None for zeros (the tutorial resets it every
    epoch); ``plan``: `jax_rnn.plan` of this cell, None to make it from the shapes. TBPTT(k1, k2) and
    remat are the plan's (``plan(..., backprop_steps=k2, remat=True)``).
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], losses: f32[epoch_size])``.
    """
    plan = _check_epoch("train_epoch", params, opt_state, x_windows, y_windows, optimizer, state, plan, False)
    nested = _traced(params, opt_state, x_windows, y_windows, state)
    return program(plan, nested=nested)(params, opt_state, x_windows, y_windows, state, optimizer=optimizer,
                                        plan=plan, guard=False)


def train_epoch_guarded(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
                        state=None, plan: Plan | None = None) -> GuardedEpoch:
    """`train_epoch` that stops learning at the first non-finite loss, parameter or accumulator; returns a
    `GuardedEpoch`, equal to `train_epoch`'s result where everything stays finite."""
    plan = _check_epoch("train_epoch_guarded", params, opt_state, x_windows, y_windows, optimizer, state, plan, False)
    nested = _traced(params, opt_state, x_windows, y_windows, state)
    return program(plan, nested=nested)(params, opt_state, x_windows, y_windows, state, optimizer=optimizer,
                                        plan=plan, guard=True)


def train_runs(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
               state=None, plan: Plan | None = None, guard: bool = False, mesh: Mesh | None = None):
    """`train_epoch` for R independent runs in one call (``vmap`` over a leading run axis R).

    **Arguments:** every leaf of ``params``, ``opt_state`` and the windows has a leading run axis ``[R,
    ...]``; ``state: f32[R, batch, d]`` or None; ``plan``: made with ``runs=R``; ``guard``: each run as
    `train_epoch_guarded`; ``mesh``: a 1-D `run_mesh` to split the runs over its devices (runs never
    interact, so no communication; R is padded with copies of the last run to a multiple of the devices).
    **Returns:** as `train_epoch` (or `GuardedEpoch`), with the leading run axis.
    """
    if not isinstance(guard, bool):
        raise TypeError(f"train_runs: guard must be True or False, got {guard!r}")
    plan = _check_epoch("train_runs", params, opt_state, x_windows, y_windows, optimizer, state, plan, True)
    inputs = (params, opt_state, x_windows, y_windows, state)
    runs, pad = plan.runs, 0
    if mesh is not None:
        pad = -runs % mesh.devices.size
        if pad:
            inputs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), inputs)
        inputs = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])))
    out = program(plan, "runs", nested=_traced(inputs))(*inputs, optimizer=optimizer, plan=plan, guard=guard)
    return jax.tree.map(lambda a: a[:runs], out) if pad else out


def run_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``"runs"`` over ``devices`` (default: every device JAX sees) for `train_runs`."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("runs",))


def train_step(params: Params, opt_state, state, x, y, optimizer: optax.GradientTransformation,
               plan: Plan | None = None, start=None):
    """One truncated-BPTT update on one window, for a loop of one's own.

    **Arguments:** ``state: f32[batch, d]`` (no gradient flows into it); ``x, y: int[batch, num_steps]``;
    TBPTT(k1, k2): ``x: int[batch, k2]``, ``y: int[batch, k1]`` the labels of its last k1 steps, ``start``
    the stream position of ``x``'s first step (steps before 0 are absent), and a plan with
    ``backprop_steps=k2``. Checks shapes only (a loop pays nothing per call).
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], loss: f32[])``; with k2 > k1 the state
    after the window's first k1 steps.
    """
    n, d = check_params(params, "train_step")
    checks.optimizer("train_step", optimizer, opt_state, params)
    (batch, k2) = checks.class_ids("train_step", {"x": x}, "[batch, num_steps]", n, values=False)
    y_shape = checks.class_ids("train_step", {"y": y}, "[batch, num_steps]", n, values=False)
    if y_shape[0] != batch or y_shape[1] > k2:
        raise ValueError(f"train_step: y {y_shape} must have x's batch ({batch}) and at most its {k2} steps "
                         f"(y labels the last k1 <= k2 steps of x)")
    if tuple(np.shape(state)) != (batch, d):
        raise ValueError(f"train_step: state must have shape {(batch, d)} ([batch, state_size]), got {np.shape(state)}")
    if plan is None:
        plan = make_plan(d, batch, y_shape[1], backprop_steps=k2)
    if (plan.state_size, plan.batch_size, plan.num_steps, plan.backprop_steps) != (d, batch, y_shape[1], k2):
        raise ValueError(f"train_step: the plan is for state {plan.state_size}, batch {plan.batch_size}, "
                         f"TBPTT({plan.num_steps}, {plan.backprop_steps}); the arguments have {d}, {batch}, "
                         f"TBPTT({y_shape[1]}, {k2})")
    nested = _traced(params, opt_state, state, x, y, start)
    return program(plan, "step", nested)(params, opt_state, state, x, y, start, optimizer=optimizer, plan=plan)
