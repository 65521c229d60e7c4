"""Truncated BPTT: one update per window, the state carried, the gradient not. An epoch is one compiled
``lax.scan`` of a `Plan` (`program`); ``losses``: each window's before its update."""

from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax._src.core import trace_state_clean as _trace_state_clean  # not public
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from . import checks
from .backward import value_and_grad_window
from .model import Params, check_params, loss_window, to_layout
from .plan import Plan, plan as make_plan


class GuardedEpoch(NamedTuple):
    """``diverged_at: int32[]``: -1, or the first window whose loss or update was not finite (the values from
    before it kept, NaN losses after)."""

    params: Params
    opt_state: Any
    final_state: jax.Array
    losses: jax.Array
    diverged_at: jax.Array


def _step(params, opt_state, state, x_t, y_t, start, optimizer, plan: Plan):
    """One update on a time-major window ``x_t: [k2, batch]``, ``y_t: [k1, batch]``."""
    state = jax.lax.stop_gradient(state)  # truncation: nothing flows into earlier windows
    if plan.gradient == "by_hand":
        (mean_loss, final), grads = value_and_grad_window(params, x_t, y_t, state, plan)
    else:
        (mean_loss, final), grads = jax.value_and_grad(loss_window, has_aux=True)(params, x_t, y_t, state, plan, start)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, final, mean_loss


def _updates(x_windows, y_windows, k2: int) -> list[tuple]:
    """The epoch's updates as parts ``(xs, window_of, first)``, a scan each, ``window_of(item) -> (x_t, y_t,
    start)``. Update u reads steps ``[u*k1 + k1 - k2, (u+1)*k1)`` of the stream; those that begin before it
    (masked) are a scan of their own."""
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
    state = to_layout(jnp.zeros((batch, d), jnp.float32) if state is None else state, plan)
    step = functools.partial(_step, optimizer=optimizer, plan=plan)

    def body(window_of, carry, update):
        params, opt_state, state, mean_loss = step(*carry, *window_of(update))
        return (params, opt_state, state), mean_loss

    def guarded(window_of, carry, inputs):
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
            carry, part = jax.lax.scan(functools.partial(guarded, window_of), carry, (xs, ks), unroll=plan.epoch_unroll)
        else:
            carry, part = jax.lax.scan(functools.partial(body, window_of), carry, xs, unroll=plan.epoch_unroll)
        losses.append(part)
    out = (*carry[:2], to_layout(carry[2], plan), jnp.concatenate(losses) if len(losses) > 1 else losses[0])
    return GuardedEpoch(*out, carry[3]) if guard else out


def _runs(params, opt_state, x_windows, y_windows, state, optimizer, plan: Plan, guard: bool):
    epoch = functools.partial(_epoch, optimizer=optimizer, plan=plan, guard=guard)
    if plan.run_loop:
        return jax.lax.map(lambda run: epoch(*run), (params, opt_state, x_windows, y_windows, state))
    in_axes = (0, 0, 0, 0, None if state is None else 0)
    return jax.vmap(epoch, in_axes=in_axes)(params, opt_state, x_windows, y_windows, state)


def _one_step(params, opt_state, state, x, y, start, optimizer, plan: Plan):
    _check_step(params, opt_state, state, x, y, optimizer, plan)  # while tracing
    params, opt_state, final, mean_loss = _step(params, opt_state, to_layout(state, plan), x.T, y.T, start,
                                                optimizer, plan)
    return params, opt_state, to_layout(final, plan), mean_loss


@functools.cache
def _jit(fn, xla_options: tuple):
    static = [name for name in ("optimizer", "plan", "guard") if name in inspect.signature(fn).parameters]
    return jax.jit(fn, static_argnames=static, compiler_options=dict(xla_options) or None)


def program(plan: Plan, kind: str = "epoch", nested: bool = False):
    """The jitted "epoch", "runs" or "step" of ``plan``, with its XLA options unless ``nested`` in a trace."""
    fn = {"epoch": _epoch, "runs": _runs, "step": _one_step}[kind]
    return _jit(fn, () if nested else plan.xla_options)


def _traced() -> bool:
    """Inside a caller's trace (jit, vmap, grad)."""
    return not _trace_state_clean()


def _plan(where: str, plan, d: int, batch: int, k1: int, k2: int | None = None, runs: int = 1) -> Plan:
    """``plan``, or this cell's if None; an error if it is another cell's."""
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
            raise ValueError(f"{where}: every leaf of params must have one leading run axis [R, ...], "
                             f"got {sorted(sizes)}")
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
    checks.backprop_steps(f"{where}: ", plan.backprop_steps, num_steps, epoch_size * num_steps)
    return plan


def _train(where: str, kind: str, guard: bool, params, opt_state, x_windows, y_windows, optimizer, state, plan,
           mesh: Mesh | None = None):
    plan = _check_epoch(where, params, opt_state, x_windows, y_windows, optimizer, state, plan, kind == "runs")
    inputs, pad = (params, opt_state, x_windows, y_windows, state), 0
    if mesh is not None:  # the runs split over its devices, padded with copies of the last run
        pad = -plan.runs % mesh.devices.size
        if pad:
            inputs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), inputs)
        inputs = jax.device_put(inputs, NamedSharding(mesh, PartitionSpec(mesh.axis_names[0])))
    out = program(plan, kind, nested=_traced())(*inputs, optimizer=optimizer, plan=plan, guard=guard)
    return jax.tree.map(lambda a: a[:plan.runs], out) if pad else out


def train_epoch(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation, state=None,
                plan: Plan | None = None):
    """An epoch of truncated BPTT in one compiled call: ``x_windows, y_windows: int[epoch_size, batch,
    num_steps]``, ``state: f32[batch, d]`` (None: zeros), ``plan`` (None: from the shapes).
    **Returns:** ``(params, opt_state, final_state: f32[batch, d], losses: f32[epoch_size])``."""
    return _train("train_epoch", "epoch", False, params, opt_state, x_windows, y_windows, optimizer, state, plan)


def train_epoch_guarded(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
                        state=None, plan: Plan | None = None) -> GuardedEpoch:
    """`train_epoch` that stops learning at the first non-finite loss or update: a `GuardedEpoch`."""
    return _train("train_epoch_guarded", "epoch", True, params, opt_state, x_windows, y_windows, optimizer, state, plan)


def train_runs(params: Params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
               state=None, plan: Plan | None = None, guard: bool = False, mesh: Mesh | None = None):
    """`train_epoch` (or `train_epoch_guarded`) for R runs at once, a leading run axis on every argument,
    ``plan`` with ``runs=R``; ``mesh``: a `run_mesh` to split them over."""
    if not isinstance(guard, bool):
        raise TypeError(f"train_runs: guard must be True or False, got {guard!r}")
    return _train("train_runs", "runs", guard, params, opt_state, x_windows, y_windows, optimizer, state, plan, mesh)


def run_mesh(devices=None) -> Mesh:
    """A 1-D mesh ``"runs"`` over ``devices`` (default: all) for `train_runs`."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), ("runs",))


def train_step(params: Params, opt_state, state, x, y, optimizer: optax.GradientTransformation,
               plan: Plan | None = None, start=None):
    """One update, ``(params, opt_state, state after k1 steps, loss)``: ``state: f32[batch, d]``, ``x: int[batch,
    k2]``, ``y: int[batch, k1]`` its last steps' labels, ``start``: x's stream position (earlier steps absent)."""
    if plan is None:
        try:
            plan = _step_plan(*(tuple(np.shape(a)) for a in (state, x, y)))
        except (ValueError, IndexError):  # name the argument
            _check_step(params, opt_state, state, x, y, optimizer, None)
            raise
    return program(plan, "step", _traced())(params, opt_state, state, x, y, start, optimizer=optimizer, plan=plan)


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
