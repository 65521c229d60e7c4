"""Truncated backpropagation through time: one update per window, the state carried, the gradient not.

A whole epoch is ONE compiled call, a ``lax.scan`` over the windows carrying ``(params, opt_state, state)``.
Every function executes a `Plan` (made from the shapes when not given) through `program`, so a cell runs
the same program however it is reached. ``losses``: each window's loss before its update.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax._src.core import trace_state_clean as _trace_state_clean  # whether no trace is active (not public)
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
    """The epoch's updates as parts ``(xs, window_of, first)``, a scan each: ``window_of(item) -> (x_t, y_t,
    start)``. TBPTT(k1, k2): update u reads the stream's steps ``[u*k1 + k1 - k2, (u+1)*k1)``; those that
    begin before the stream (masked) are a scan of their own, so the rest carry no mask."""
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
    _check_step(params, opt_state, state, x, y, optimizer, plan)  # while tracing: once per signature
    params, opt_state, final, mean_loss = _step(params, opt_state, _layout(state, plan), x.T, y.T, start,
                                                optimizer, plan)
    return params, opt_state, _layout(final, plan), mean_loss


@functools.cache
def _jit(fn, xla_options: tuple):
    static = [name for name in ("optimizer", "plan", "guard") if name in inspect.signature(fn).parameters]
    return jax.jit(fn, static_argnames=static, compiler_options=dict(xla_options) or None)


def program(plan: Plan, kind: str = "epoch", nested: bool = False):
    """The jitted function ("epoch", "runs" or "step") that executes ``plan``, with its XLA options unless
    ``nested`` in a caller's trace (JAX takes compile options at the top level only)."""
    fn = {"epoch": _epoch, "runs": _runs, "step": _one_step}[kind]
    return _jit(fn, () if nested else plan.xla_options)


def _traced(*trees) -> bool:
    """Inside a caller's trace: a tracer among the arguments, or a trace active (a call that closes over the
    caller's values, e.g. ``jax.jit(lambda: train_epoch(p, ...))()``, has no tracer among its arguments)."""
    return not _trace_state_clean() or any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(trees))


def _plan(where: str, plan, d: int, batch: int, k1: int, k2: int | None = None, runs: int = 1) -> Plan:
    """``plan``, or the plan of this cell if None; an error if it was made for another cell."""
    if plan is None:
        return make_plan(d, batch, k1, k2, runs)
    if not isinstance(plan, Plan):
        raise TypeError(f"{where}: plan must be a jax_rnn.Plan (jax_rnn.plan(...)), got {type(plan).__name__}")
    got = (plan.state_size, plan.batch_size, plan.num_steps, plan.backprop_steps if k2 else None, plan.runs)
    if got != (d, batch, k1, k2, runs):
        raise ValueError(f"{where}: the plan is for {_cell(*got)}; the arguments have {_cell(d, batch, k1, k2, runs)}")
    return plan


def _cell(d, batch, k1, k2, runs) -> str:
    return f"state {d}, batch {batch}, " + (f"TBPTT({k1}, {k2})" if k2 else f"num_steps {k1}, {runs} run(s)")


def _check_epoch(where: str, params, opt_state, x_windows, y_windows, optimizer, state, plan, runs: bool) -> Plan:
    per_run = params
    if runs:
        sizes = {np.shape(a)[:1] for a in jax.tree.leaves(params)}
        if len(sizes) != 1 or () in sizes:
            raise ValueError(f"{where}: every leaf of params must have one leading run axis [R, ...], got {sorted(sizes)}")
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
    plan = _plan(where, plan, d, batch, num_steps, runs=shape[0] if runs else 1)
    if plan.backprop_steps > epoch_size * num_steps:
        raise ValueError(f"{where}: backprop_steps must be an integer from num_steps ({num_steps}) to the steps in "
                         f"a row of data ({epoch_size * num_steps}), got {plan.backprop_steps}")
    return plan


def _train(where: str, guard: bool, params, opt_state, x_windows, y_windows, optimizer, state, plan):
    plan = _check_epoch(where, params, opt_state, x_windows, y_windows, optimizer, state, plan, False)
    nested = _traced(params, opt_state, x_windows, y_windows, state)
    return program(plan, nested=nested)(params, opt_state, x_windows, y_windows, state, optimizer=optimizer,
                                        plan=plan, guard=guard)


def train_epoch(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
                state=None, plan: Plan | None = None):
    """A whole epoch of truncated BPTT as one compiled call.

    **Arguments:** ``x_windows, y_windows: int[epoch_size, batch, num_steps]``; ``optimizer`` (static,
    e.g. `jax_rnn.adagrad`); ``state: f32[batch, d]`` or None for zeros (the tutorial resets it every
    epoch); ``plan``: `jax_rnn.plan` of this cell, None to make it from the shapes. TBPTT(k1, k2) and
    remat are the plan's (``plan(..., backprop_steps=k2, remat=True)``).
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], losses: f32[epoch_size])``.
    """
    return _train("train_epoch", False, params, opt_state, x_windows, y_windows, optimizer, state, plan)


def train_epoch_guarded(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
                        state=None, plan: Plan | None = None) -> GuardedEpoch:
    """`train_epoch` that stops learning at the first non-finite loss, parameter or accumulator; returns a
    `GuardedEpoch`, equal to `train_epoch`'s result where everything stays finite."""
    return _train("train_epoch_guarded", True, params, opt_state, x_windows, y_windows, optimizer, state, plan)


def train_runs(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
               state=None, plan: Plan | None = None, guard: bool = False, mesh: Mesh | None = None):
    """`train_epoch` for R independent runs at once (``vmap`` over a leading run axis on every argument).

    ``plan``: made with ``runs=R``; ``guard``: as `train_epoch_guarded`; ``mesh``: a `run_mesh` to split the
    runs over its devices (no communication; R padded with copies of the last run to fill them).
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
    """One update on one window, for a loop of one's own: ``x, y: int[batch, num_steps]``, ``state:
    f32[batch, d]``. TBPTT(k1, k2): ``x: int[batch, k2]``, ``y`` the labels of its last k1 steps, ``start``
    the stream position of its first step (earlier ones are absent); the state returned is the one after
    k1 steps. Shapes are checked when it compiles, so a loop pays nothing for them.
    **Returns:** ``(params, opt_state, state, loss)``.
    """
    if plan is None:
        shapes = tuple(tuple(np.shape(a)) for a in (state, x, y))
        if any(len(shape) != 2 for shape in shapes):
            _check_step(params, opt_state, state, x, y, optimizer, None)
        try:
            plan = _step_plan(*shapes)
        except ValueError:  # shapes no plan fits (y longer than x, an empty axis): name the argument
            _check_step(params, opt_state, state, x, y, optimizer, None)
            raise
    nested = _traced(params, opt_state, state, x, y, start)
    return program(plan, "step", nested)(params, opt_state, state, x, y, start, optimizer=optimizer, plan=plan)


@functools.lru_cache(maxsize=64)
def _step_plan(state_shape, x_shape, y_shape) -> Plan:
    return make_plan(state_shape[1], x_shape[0], y_shape[1], backprop_steps=x_shape[1])


def _check_step(params, opt_state, state, x, y, optimizer, plan) -> None:
    n, d = check_params(params, "train_step")
    checks.optimizer("train_step", optimizer, opt_state, params)
    batch, k2 = checks.class_ids("train_step", {"x": x}, "[batch, num_steps]", n, values=False)
    y_shape = checks.class_ids("train_step", {"y": y}, "[batch, num_steps]", n, values=False)
    if y_shape[0] != batch or y_shape[1] > k2:
        raise ValueError(f"train_step: y {y_shape} must have x's batch ({batch}) and at most its {k2} steps "
                         f"(y labels the last k1 <= k2 steps of x)")
    if tuple(np.shape(state)) != (batch, d):
        raise ValueError(f"train_step: state must have shape {(batch, d)} ([batch, state_size]), got {np.shape(state)}")
    if plan is not None:
        _plan("train_step", plan, d, batch, y_shape[1], k2)
