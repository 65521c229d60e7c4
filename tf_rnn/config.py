"""Model configuration and the shared parameter layout (numpy only, no TensorFlow).

The model of r2rt's "Recurrent Neural Networks in Tensorflow I" (../shared/TASK.md) is
``S_t = tanh([X_t, S_{t-1}] @ W + b)``, ``logits_t = S_t @ U + b_p``. Parameters travel between the
implementations (and to ``jax_rnn``) as nested dicts of float32 numpy arrays::

    {"rnn_cell": {"W": [n + d, d], "b": [d]}, "softmax": {"W": [d, n], "b": [n]}}

with ``n = num_classes`` and ``d = state_size``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Optional

import numpy as np

Params = dict[str, dict[str, np.ndarray]]

# The layout's (scope, key) pairs, in the order the models create and list their variables.
LAYOUT = (("rnn_cell", "W"), ("rnn_cell", "b"), ("softmax", "W"), ("softmax", "b"))


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Sizes and learning rate of the tutorial's model; validated once, at construction.

    **Arguments:** ``num_classes`` n (2 for the binary task), ``state_size`` d, ``batch_size`` and
    ``num_steps`` k1 (each update's new steps), integers >= 1; ``learning_rate`` (Adagrad's, finite,
    > 0); ``backprop_steps`` k2, the steps each update backpropagates through (an integer >= num_steps;
    None means num_steps, the tutorial's TBPTT(n, n); k2 > k1: see `tf_rnn.base`).
    """

    num_classes: int = 2
    state_size: int = 4
    batch_size: int = 200
    num_steps: int = 5
    learning_rate: float = 0.1
    backprop_steps: Optional[int] = None

    def __post_init__(self) -> None:
        for name in ("num_classes", "state_size", "batch_size", "num_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an integer >= 1, got {value!r}")
        lr = self.learning_rate
        if (not isinstance(lr, (int, float, np.floating, np.integer)) or isinstance(lr, bool)
                or not math.isfinite(lr) or lr <= 0):
            raise ValueError(f"ModelConfig.learning_rate must be a finite number > 0, got {lr!r}")
        k2 = self.backprop_steps
        if k2 is not None and (not _is_int(k2) or k2 < self.num_steps):
            raise ValueError(f"ModelConfig.backprop_steps must be None or an integer >= num_steps "
                             f"({self.num_steps}), got {k2!r}")

    @property
    def window_steps(self) -> int:
        """k2, the length of each update's window: ``backprop_steps``, or ``num_steps`` if it is None."""
        return self.num_steps if self.backprop_steps is None else int(self.backprop_steps)

    def param_shapes(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """The shapes of the shared layout for this config."""
        n, d = self.num_classes, self.state_size
        return {"rnn_cell": {"W": (n + d, d), "b": (d,)}, "softmax": {"W": (d, n), "b": (n,)}}


def check_params(params: Mapping, config: ModelConfig) -> Params:
    """Validate ``params`` against the shared layout; return a float32 numpy copy.

    Raises ValueError naming the missing/unexpected key or the bad shape (e.g. ``rnn_cell/W``).
    """
    def check_keys(mapping, want: dict, what: str) -> None:
        if not isinstance(mapping, Mapping) or set(mapping) != set(want):
            got = sorted(mapping) if isinstance(mapping, Mapping) else type(mapping).__name__
            raise ValueError(f"{what} {sorted(want)}, got {got}")

    shapes = config.param_shapes()
    check_keys(params, shapes, "params must have the top-level keys")
    out: Params = {}
    for scope, leaves in shapes.items():
        group = params[scope]
        check_keys(group, leaves, f"params[{scope!r}] must have the keys")
        out[scope] = {}
        for key, shape in leaves.items():
            value = np.asarray(group[key], dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"params {scope}/{key} must have shape {shape} for {config}, got {value.shape}")
            if not np.all(np.isfinite(value)):
                raise ValueError(f"params {scope}/{key} contains non-finite values")
            out[scope][key] = value.copy()
    return out


def check_accumulators(accumulators: Mapping, config: ModelConfig) -> Params:
    """Adagrad accumulators in the shared layout: like `check_params`, and every value must be > 0."""
    try:
        out = check_params(accumulators, config)
    except ValueError as err:
        raise ValueError(str(err).replace("params", "accumulators", 1)) from None
    for scope, group in out.items():
        for key, value in group.items():
            if np.any(value <= 0):
                raise ValueError(f"accumulators {scope}/{key} must be > 0 (Adagrad starts them at 0.1)")
    return out


def glorot_uniform_params(config: ModelConfig, seed: int = 0) -> Params:
    """Initial parameters in the shared layout: weights Glorot-uniform (numpy, from ``seed``), biases 0.

    The same distribution as ``tf.compat.v1.get_variable``'s default initializer, but drawn with numpy
    so that every implementation (and ``jax_rnn``) can start from identical values.
    """
    rng = np.random.default_rng(seed)
    out: Params = {}
    for scope, leaves in config.param_shapes().items():
        fan_in, fan_out = leaves["W"]
        limit = math.sqrt(6.0 / (fan_in + fan_out))
        out[scope] = {"W": rng.uniform(-limit, limit, size=leaves["W"]).astype(np.float32),
                      "b": np.zeros(leaves["b"], dtype=np.float32)}
    return out
