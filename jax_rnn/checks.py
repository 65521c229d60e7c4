"""Argument checks before anything is traced: errors naming the function, the argument, the value and what is
allowed; on tracers (a caller's ``jit``) shapes and dtypes only."""

from __future__ import annotations

import jax
import numpy as np
import optax


def concrete(a) -> bool:
    return isinstance(a, (np.ndarray, np.generic)) or (isinstance(a, jax.Array) and not isinstance(a, jax.core.Tracer))


def class_ids(where: str, arrays: dict, layout: str, num_classes: int, values: bool = True) -> tuple:
    """The one shape of ``arrays`` (name -> class ids ``int{layout}``), values in ``[0, num_classes)`` where
    concrete and ``values``."""
    rank = layout.count(",") + 1
    for name, a in arrays.items():
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise TypeError(f"{where}: {name} must be an array (numpy or JAX), got {type(a).__name__}")
        if a.ndim != rank:
            raise ValueError(f"{where}: {name} must be int{layout} (rank {rank}), got shape {tuple(a.shape)}")
        if not np.issubdtype(a.dtype, np.integer):
            raise TypeError(f"{where}: {name} must hold integer class ids in [0, {num_classes}), got dtype {a.dtype}")
        if 0 in a.shape:
            raise ValueError(f"{where}: {name} is empty (shape {tuple(a.shape)})")
    shapes = [tuple(a.shape) for a in arrays.values()]
    if len(set(shapes)) > 1:
        raise ValueError(f"{where}: {' and '.join(f'{k} {s}' for k, s in zip(arrays, shapes))} must have one shape")
    if values and all(map(concrete, arrays.values())):
        hosted = [np.asarray(a) for a in arrays.values()]
        # One unsigned max finds negative ids too (they wrap to large values).
        if max(int(a.view(f"u{a.dtype.itemsize}").max()) for a in hosted) >= num_classes:
            low, high = min(int(a.min()) for a in hosted), max(int(a.max()) for a in hosted)
            raise ValueError(f"{where}: {' and '.join(arrays)} must hold class ids in [0, {num_classes}) (num_classes "
                             f"from params['softmax']['b']), got values in [{low}, {high}]")
    return shapes[0]


def finite(where: str, name: str, tree) -> None:
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
        if concrete(leaf) and not np.isfinite(np.asarray(leaf)).all():
            raise ValueError(f"{where}: {name}{jax.tree_util.keystr(path)} contains NaN or inf")


def state(where: str, state, shape: tuple) -> None:
    if state is not None:
        if tuple(np.shape(state)) != shape:
            raise ValueError(f"{where}: state must have shape {shape} ([batch, state_size]), got {np.shape(state)}")
        finite(where, "state", state)


def optimizer(where: str, optimizer, opt_state, params) -> None:
    """``optimizer`` an Optax transformation, ``opt_state`` shaped like ``optimizer.init(params)``."""
    if not isinstance(optimizer, optax.GradientTransformation):
        raise TypeError(f"{where}: optimizer must be an optax.GradientTransformation (e.g. jax_rnn.adagrad(0.1)), "
                        f"got {type(optimizer).__name__}")
    expected = jax.eval_shape(optimizer.init, params)
    if jax.tree.structure(opt_state) != jax.tree.structure(expected):
        raise ValueError(f"{where}: opt_state does not have the structure of optimizer.init(params)")
    got, want = ([tuple(np.shape(a)) for a in jax.tree.leaves(tree)] for tree in (opt_state, expected))
    if got != want:
        raise ValueError(f"{where}: opt_state leaf shapes {got} do not match optimizer.init(params): {want}")


def backprop_steps(where: str, k2, num_steps: int, row: int) -> None:
    """TBPTT's k2 from k1 to a row's steps; ``where``: the message's prefix, e.g. ``"train_epoch: "``."""
    if isinstance(k2, bool) or not isinstance(k2, (int, np.integer)) or not num_steps <= k2 <= row:
        raise ValueError(f"{where}backprop_steps must be an integer from num_steps ({num_steps}) to the steps in a "
                         f"row of data ({row}), got {k2!r}")
