"""The parameter layout shared by every implementation: TensorFlow's ``BasicRNNCell`` layout as a pytree.

    {"rnn_cell": {"W": f32[n + d, d], "b": f32[d]}, "softmax": {"W": f32[d, n], "b": f32[n]}}

with n = num_classes and d = state_size (``W``: input rows first, state rows second). `PARAM_KEYS` are
the flat names ``scope/name`` used in ``.npz`` files (checkpoints, ``--init-params``, ``--save-params``).
Its own module so that `jax_rnn.model`, `jax_rnn.validate`, the checkpoints and ``compare`` all read it
from one place (``tf_rnn``, which imports no ``jax_rnn``, states the same layout in its config).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PARAM_KEYS = ("rnn_cell/W", "rnn_cell/b", "softmax/W", "softmax/b")


def param_shapes(num_classes: int, state_size: int) -> dict[str, dict[str, tuple[int, ...]]]:
    """The shapes of the parameter pytree for a config (used to validate parameters passed in)."""
    n, d = num_classes, state_size
    return {"rnn_cell": {"W": (n + d, d), "b": (d,)}, "softmax": {"W": (d, n), "b": (n,)}}


def flatten(params: dict) -> dict[str, np.ndarray]:
    """Nested params -> ``{"rnn_cell/W": f32 array, ...}`` (`PARAM_KEYS`: the ``.npz`` form)."""
    return {key: np.asarray(params[key.split("/")[0]][key.split("/")[1]], np.float32) for key in PARAM_KEYS}


def nest(flat: dict) -> dict[str, dict[str, np.ndarray]]:
    """The inverse of `flatten`: ``{"rnn_cell/W": a, ...}`` -> ``{"rnn_cell": {"W": a, ...}, ...}`` (float32)."""
    out: dict = {}
    for key, value in flat.items():
        scope, name = key.split("/")
        out.setdefault(scope, {})[name] = np.asarray(value, np.float32)
    return out


def check_keys(params: Any) -> None:
    """Raise ValueError naming the key if ``params`` is not the nested dict of the layout's keys."""
    expected = param_shapes(1, 1)  # its keys
    if not isinstance(params, dict) or set(params) != set(expected):
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"params must be a dict with keys {sorted(expected)}, got {got}")
    for scope, leaves in expected.items():
        if not isinstance(params[scope], dict) or set(params[scope]) != set(leaves):
            got = sorted(params[scope]) if isinstance(params[scope], dict) else type(params[scope]).__name__
            raise ValueError(f"params[{scope!r}] must have keys {sorted(leaves)}, got {got}")


def check_params(params: Any, num_classes: int, state_size: int) -> None:
    """Raise ValueError naming the key if ``params`` is not the layout and shapes of the config."""
    check_keys(params)
    for scope, leaves in param_shapes(num_classes, state_size).items():
        for name, shape in leaves.items():
            got_shape = tuple(np.shape(params[scope][name]))
            if got_shape != shape:
                raise ValueError(
                    f"params[{scope!r}][{name!r}] must have shape {shape} for num_classes={num_classes}, "
                    f"state_size={state_size}; got {got_shape}")
