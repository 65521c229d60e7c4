"""Checks of what a user passes to the public training functions: a ValueError/TypeError naming the
function, the argument, the value and what is allowed, before anything is traced. Shapes and dtypes are
checked on tracers too (a caller's own ``jit``); values only on concrete arrays."""

from __future__ import annotations

import functools

import jax
import numpy as np
import optax


def concrete(a) -> bool:
    return isinstance(a, (np.ndarray, np.generic)) or (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer))


def class_ids(where: str, arrays: dict, layout: str, num_classes: int, values: bool = True) -> tuple:
    """``arrays``: name -> class ids ``int{layout}`` (e.g. ``[epoch_size, batch, num_steps]``), one shape;
    values in ``[0, num_classes)`` where concrete and ``values``. **Returns:** the shape."""
    rank = layout.count(",") + 1
    shapes = []
    for name, a in arrays.items():
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{where}: {name} must be an array (numpy or JAX), got {type(a).__name__}")
        if a.ndim != rank:
            raise ValueError(f"{where}: {name} must be int{layout} (rank {rank}), got shape {tuple(a.shape)}")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{where}: {name} must hold integer class ids in [0, {num_classes}), got dtype {a.dtype}")
        if 0 in a.shape:
            raise ValueError(f"{where}: {name} is empty (shape {tuple(a.shape)}); every axis of int{layout} must be >= 1")
        shapes.append(tuple(a.shape))
    if len(set(shapes)) > 1:
        raise ValueError(f"{where}: " + " and ".join(f"{k} {s}" for k, s in zip(arrays, shapes)) + " must have one shape")
    if values and all(concrete(a) for a in arrays.values()):
        hosted = [np.asarray(a) for a in arrays.values()]
        # One unsigned max finds negative ids too (they wrap to large values).
        if max(int(a.view(f"u{a.dtype.itemsize}").max()) for a in hosted) >= num_classes:
            low, high = min(int(a.min()) for a in hosted), max(int(a.max()) for a in hosted)
            raise ValueError(f"{where}: {' and '.join(arrays)} must hold class ids in [0, {num_classes}) (num_classes "
                             f"from params['softmax']['b']), got values in [{low}, {high}]")
    return shapes[0]


def finite(where: str, name: str, tree) -> None:
    """ValueError naming the leaf if a concrete leaf of ``tree`` (params, state) holds NaN or inf."""
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if concrete(leaf) and not np.isfinite(np.asarray(leaf)).all():
            raise ValueError(f"{where}: {name}{jax.tree_util.keystr(path)} contains NaN or inf")


def state(where: str, state, shape: tuple) -> None:
    if state is None:
        return
    if tuple(np.shape(state)) != shape:
        raise ValueError(f"{where}: state must have shape {shape} ([batch, state_size]), got {tuple(np.shape(state))}")
    finite(where, "state", state)


def optimizer(where: str, optimizer, opt_state, params) -> None:
    """``optimizer`` an Optax transformation, ``opt_state`` shaped like ``optimizer.init(params)``."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{where}: optimizer must be an optax.GradientTransformation (e.g. jax_rnn.adagrad(0.1)), "
                        f"got {type(optimizer).__name__}")
    shapes = jax.tree.map(lambda a: jax.ShapeDtypeStruct(np.shape(a), a.dtype), params)
    try:
        structure, want = _expected(optimizer, jax.tree.structure(shapes), tuple(jax.tree.leaves(shapes)))
    except TypeError:  # an unhashable optimizer
        structure, want = _expected.__wrapped__(optimizer, jax.tree.structure(shapes), tuple(jax.tree.leaves(shapes)))
    if jax.tree.structure(opt_state) != structure:
        raise ValueError(f"{where}: opt_state does not have the structure of optimizer.init(params)")
    got = [tuple(np.shape(a)) for a in jax.tree.leaves(opt_state)]
    if got != want:
        raise ValueError(f"{where}: opt_state leaf shapes {got} do not match optimizer.init(params): {want}")


@functools.lru_cache(maxsize=64)
def _expected(optimizer, treedef, leaves: tuple):
    """The structure and leaf shapes of ``optimizer.init`` for parameters of these shapes (cached: a loop of
    `train_step` calls pays for it once)."""
    expected = jax.eval_shape(optimizer.init, jax.tree.unflatten(treedef, leaves))
    return jax.tree.structure(expected), [tuple(a.shape) for a in jax.tree.leaves(expected)]
