"""Argument checks for jax_rnn's public functions: a clear ValueError/TypeError before anything is traced.

Each check names the function, the argument, the value and what is allowed. They run in plain Python
around the jitted functions (never inside a traced body). Shapes and dtypes are checked always, also on
tracers (a caller's own ``jit``/``vmap``) and ``jax.ShapeDtypeStruct`` (``.lower``); checks that need
the values (class ids in ``[0, num_classes)``, finite parameters and state) run only on concrete arrays.
Cost of the value checks: one fused min/max reduction over the windows and one ``isfinite`` over the
parameters, i.e. one device round trip per call (about 1 ms per 1M-point epoch on CPU). `train_step`
checks shapes and dtypes only, and only while it is traced, so that a Python loop of steps pays nothing.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .layout import check_keys, check_params


def _arr(a: Any):
    """Arrays, tracers and ShapeDtypeStructs as they are; anything else (lists...) as numpy."""
    if hasattr(a, "shape") and hasattr(a, "dtype"):
        return a
    try:
        return np.asarray(a)
    except Exception as err:  # noqa: BLE001  (ragged lists and the like)
        raise TypeError(f"expected an array, got {type(a).__name__} ({err})") from None


def _require_array(where: str, name: str, a) -> None:
    """TypeError unless ``a`` is an array (numpy, JAX, a tracer or a ShapeDtypeStruct): a list would pass
    the checks as numpy but fail inside the jitted function."""
    if not (hasattr(a, "shape") and hasattr(a, "dtype")):
        raise TypeError(f"{where}: {name} must be an array (numpy or JAX; e.g. np.asarray({name})), "
                        f"got {type(a).__name__}")


def concrete(a) -> bool:
    """True if ``a`` holds values we can look at (not a tracer, not a ShapeDtypeStruct)."""
    return isinstance(a, (np.ndarray, np.generic)) or (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer))


@jax.jit
def _min_max(*arrays):
    low = jnp.min(jnp.stack([jnp.min(a).astype(jnp.int32) for a in arrays]))
    high = jnp.max(jnp.stack([jnp.max(a).astype(jnp.int32) for a in arrays]))
    return jnp.stack([low, high])


def sizes(where: str, params) -> tuple[int, int]:
    """``(num_classes, state_size)`` read from ``params``, after checking its keys and shapes."""
    try:
        check_keys(params)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    for scope in ("rnn_cell", "softmax"):
        group = params[scope]
        if len(np.shape(_arr(group["b"]))) != 1:
            raise ValueError(f"{where}: params[{scope!r}]['b'] must be 1-D, got shape {tuple(np.shape(_arr(group['b'])))}")
    n, d = int(np.shape(_arr(params["softmax"]["b"]))[0]), int(np.shape(_arr(params["rnn_cell"]["b"]))[0])
    try:
        check_params(params, n, d)
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None
    for leaf in jax.tree.leaves(params):
        dtype = _arr(leaf).dtype
        if not jnp.issubdtype(dtype, jnp.floating):
            raise TypeError(f"{where}: params must be floating point, got a leaf of dtype {dtype}")
    return n, d


def check_finite_params(where: str, params, name: str = "params") -> None:
    """ValueError naming the leaf if a concrete parameter holds NaN or inf."""
    if not all(concrete(leaf) for leaf in jax.tree.leaves(params)):
        return
    for scope, group in params.items():  # on the host: a few numbers, no program to compile
        for key, leaf in group.items():
            if not np.isfinite(np.asarray(leaf)).all():
                raise ValueError(f"{where}: {name}[{scope!r}][{key!r}] contains NaN or inf")


def check_classes(where: str, arrays: dict, rank: int, layout: str, num_classes: int, values: bool = True,
                  dims: dict | None = None) -> None:
    """``arrays``: name -> array of class ids; each must have ``rank`` axes (``layout`` describes them),
    an integer dtype, one common shape, the sizes in ``dims`` (axis -> (size, what)) and, if ``values``
    and concrete, values in ``[0, num_classes)``."""
    shapes = {}
    for name, a in arrays.items():
        _require_array(where, name, a)
        a = _arr(a)
        shape = tuple(a.shape)
        if len(shape) != rank:
            raise ValueError(f"{where}: {name} must be int{layout} (rank {rank}), got shape {shape}")
        if not jnp.issubdtype(a.dtype, jnp.integer):
            raise TypeError(f"{where}: {name} must hold integer class ids in [0, {num_classes}), got dtype {a.dtype}")
        if any(s == 0 for s in shape):
            raise ValueError(f"{where}: {name} is empty (shape {shape}); every axis of int{layout} must be >= 1")
        for axis, (size, what) in (dims or {}).items():
            if shape[axis] != size:
                raise ValueError(f"{where}: {name} has {shape[axis]} along {what} (shape {shape}), but the "
                                 f"state/params imply {size}")
        shapes[name] = shape
    if len(set(shapes.values())) > 1:
        raise ValueError(f"{where}: " + " and ".join(f"{k} {v}" for k, v in shapes.items()) + " must have one shape")
    live = [a for a in arrays.values() if concrete(a)]
    if values and len(live) == len(arrays):
        low, high = _range(live, num_classes)
        if low < 0 or high >= num_classes:
            names = " and ".join(arrays)
            raise ValueError(f"{where}: {names} must hold class ids in [0, {num_classes}) (num_classes from "
                             f"params['softmax']['b']), got values in [{low}, {high}]")


def _on_cpu(a) -> bool:
    return isinstance(a, (np.ndarray, np.generic)) or all(d.platform == "cpu" for d in a.devices())


def _range(arrays: list, num_classes: int) -> tuple[int, int]:
    """``(min, max)`` over ``arrays`` if some value is outside ``[0, num_classes)``, else ``(0, 0)``.

    On the host (numpy, or JAX arrays on the CPU: zero-copy views) one unsigned max per array finds any
    negative or too large id (about 0.2 ms per 1M ids); on an accelerator, one jitted reduction."""
    if all(_on_cpu(a) for a in arrays):
        hosted = [np.asarray(a) for a in arrays]
        if max(int(a.view(np.dtype(f"u{a.dtype.itemsize}")).max()) for a in hosted) < num_classes:
            return 0, 0
        return min(int(a.min()) for a in hosted), max(int(a.max()) for a in hosted)
    with jax.ensure_compile_time_eval():
        low, high = (int(v) for v in jax.device_get(_min_max(*arrays)))
    return low, high


def check_backprop_steps(where: str | None, backprop_steps, num_steps: int, row: int) -> None:
    """k2 of TBPTT(k1, k2): an integer from ``num_steps`` (k1) to ``row``, the steps of one row of data.
    The message starts with ``where: `` if given, else with the argument's name (`FitConfig`'s style)."""
    if (isinstance(backprop_steps, bool) or not isinstance(backprop_steps, (int, np.integer))
            or not num_steps <= backprop_steps <= row):
        raise ValueError(f"{where + ': ' if where else ''}backprop_steps must be an integer from num_steps "
                         f"({num_steps}) to the steps in a row of data ({row}), got {backprop_steps!r}")


def check_state(where: str, state, batch: int, state_size: int, leading: tuple = ()) -> None:
    """``state`` must be float ``[*leading, batch, state_size]`` and, when concrete, finite."""
    if state is None:
        return
    _require_array(where, "state", state)
    a = _arr(state)
    want = (*leading, batch, state_size)
    if tuple(a.shape) != want:
        raise ValueError(f"{where}: state must have shape {want} ([batch, state_size]), got {tuple(a.shape)}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        raise TypeError(f"{where}: state must be floating point, got dtype {a.dtype}")
    if concrete(state) and not np.all(np.isfinite(np.asarray(state))):
        raise ValueError(f"{where}: state contains NaN or inf")


@functools.lru_cache(maxsize=64)
def _expected_opt_state(optimizer, shapes: tuple):
    params = {"rnn_cell": {"W": jax.ShapeDtypeStruct(shapes[0], jnp.float32), "b": jax.ShapeDtypeStruct(shapes[1], jnp.float32)},
              "softmax": {"W": jax.ShapeDtypeStruct(shapes[2], jnp.float32), "b": jax.ShapeDtypeStruct(shapes[3], jnp.float32)}}
    out = jax.eval_shape(optimizer.init, params)
    return jax.tree.structure(out), [tuple(leaf.shape) for leaf in jax.tree.leaves(out)]


def check_optimizer(where: str, optimizer, opt_state, params, leading: tuple = ()) -> None:
    """``optimizer`` must be an Optax transformation and ``opt_state`` look like ``optimizer.init(params)``."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{where}: optimizer must be an optax.GradientTransformation (e.g. jax_rnn.adagrad(0.1)), "
                        f"got {type(optimizer).__name__}")
    shapes = tuple(tuple(np.shape(_arr(params[s][k]))[len(leading):]) for s in ("rnn_cell", "softmax") for k in ("W", "b"))
    try:
        structure, leaf_shapes = _expected_opt_state(optimizer, shapes)
    except TypeError:  # an unhashable optimizer: compute without the cache
        structure, leaf_shapes = _expected_opt_state.__wrapped__(optimizer, shapes)
    if jax.tree.structure(opt_state) != structure:
        raise ValueError(f"{where}: opt_state does not have the structure of optimizer.init(params): expected "
                         f"{structure}, got {jax.tree.structure(opt_state)}")
    got = [tuple(np.shape(_arr(leaf)))[len(leading):] for leaf in jax.tree.leaves(opt_state)]
    if got != leaf_shapes:
        raise ValueError(f"{where}: opt_state leaf shapes {got} do not match optimizer.init(params): {leaf_shapes}")
