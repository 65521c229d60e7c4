"""`ModelConfig`, and the `Model` interface with the epoch loop the four versions share: one Adagrad step
per window from the previous window's final state. TBPTT(k1, k2 > k1) (docs/task.md): each update runs over
the last k2 steps of the stream (`tbptt_windows`; steps before the stream keep the state), the loss over the
last k1, the state after the first k1 carried on."""

from __future__ import annotations

import dataclasses
import math
import operator
import time
from typing import Mapping, NamedTuple, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

Params = dict[str, dict[str, np.ndarray]]
LAYOUT = (("rnn_cell", "W"), ("rnn_cell", "b"), ("softmax", "W"), ("softmax", "b"))  # variable creation order

NOT_REPRODUCED = ("the replay after a non-finite value did not reproduce the first run (TensorFlow ran "
                  "non-deterministically), so where training diverged is unknown; train again with "
                  "tf_rnn.build(..., deterministic=True) (rnn-compare run --deterministic)")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """n, d, batch, k1, Adagrad's learning rate, k2 (None: k1)."""

    num_classes: int = 2
    state_size: int = 4
    batch_size: int = 200
    num_steps: int = 5
    learning_rate: float = 0.1
    backprop_steps: Optional[int] = None

    def __post_init__(self):
        for name in ("num_classes", "state_size", "batch_size", "num_steps"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise ValueError(f"ModelConfig.{name} must be an integer >= 1, got {value!r}")
        lr, k2 = self.learning_rate, self.backprop_steps
        if not isinstance(lr, (int, float, np.number)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"ModelConfig.learning_rate must be a finite number > 0, got {lr!r}")
        if k2 is not None and (not _is_int(k2) or k2 < self.num_steps):
            raise ValueError(f"ModelConfig.backprop_steps must be None or an integer >= num_steps "
                             f"({self.num_steps}), got {k2!r}")

    @classmethod
    def of(cls, config) -> ModelConfig:
        """A ModelConfig from any object with attributes named like its fields."""
        names = [field.name for field in dataclasses.fields(cls)]
        missing = [name for name in names if not hasattr(config, name)]
        if missing:
            raise TypeError(f"config {type(config).__name__} lacks {', '.join(missing)}")
        return cls(**{name: getattr(config, name) for name in names})

    @property
    def window_steps(self) -> int:
        """k2, each update's window."""
        return self.num_steps if self.backprop_steps is None else int(self.backprop_steps)

    def memory(self, data_size: int, epochs: int = 2) -> dict:
        """Bytes, as ``jax_rnn.Plan.memory`` counts them, measured: 10 + k2 float32 copies of the weights,
        int32 windows, 3 floats a step and unit."""
        n, d, k1, k2, b = self.num_classes, self.state_size, self.num_steps, self.window_steps, self.batch_size
        return dict(weights=((n + d + 1) * d + (d + 1) * n) * 4 * (10 + k2), runtime=2**22,
                    data=data_size * (32 + 8 * epochs + (8 * k2 // k1 if k2 > k1 else 0)),
                    activations=k2 * b * (3 * d + 4 * n) * 4)


def tbptt_windows(x_windows: np.ndarray, y_windows: np.ndarray, backprop_steps: int):
    """``int[U, batch, k1]`` windows -> ``(x, y: int[U, batch, k2], starts: int[U])``: window u holds stream
    positions ``starts[u] = u*k1 + k1 - k2`` to ``(u+1)*k1 - 1`` of each row, class 0 where < 0."""
    n, batch, k1 = x_windows.shape
    pad = backprop_steps - k1

    def cut(w: np.ndarray) -> np.ndarray:
        rows = np.concatenate([np.zeros((batch, pad), w.dtype), w.transpose(1, 0, 2).reshape(batch, n * k1)], 1)
        return np.ascontiguousarray(sliding_window_view(rows, backprop_steps, axis=1)[:, ::k1].transpose(1, 0, 2))

    return cut(x_windows), cut(y_windows), np.arange(n) * k1 - pad


class EpochResult(NamedTuple):
    """``losses: float32[epoch_size]`` (each before its update), ``final_state: float32[batch, d]``; ``diverged_at``:
    None, or the first window k with a non-finite loss or update: the model keeps the values before k, later
    losses are NaN, ``final_state`` enters k."""

    losses: np.ndarray
    final_state: np.ndarray
    first_step_seconds: float
    seconds: float
    diverged_at: Optional[int] = None


class Model:
    """One trainable model; close it, or use ``with``. Subclasses set ``_variables = {"params" |
    "accumulators": {(scope, key): variable}}``, ``_step`` / ``_forward`` (``(loss, next state)``, with /
    without an update), ``_read``, ``_write`` and ``build_seconds``."""

    name: str
    config: ModelConfig
    build_seconds: float

    def close(self):
        pass

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc):
        self.close()

    def _check(self, tree, kind: str) -> Params:
        want: dict = {}
        for (scope, key), v in self._variables[kind].items():
            want.setdefault(scope, {})[key] = tuple(v.shape.as_list())

        def keys(mapping, names, what):
            got = sorted(mapping) if isinstance(mapping, Mapping) else type(mapping).__name__
            if got != sorted(names):
                raise ValueError(f"{kind}{what} keys {sorted(names)}, got {got}")

        keys(tree, want, " must have the top-level")
        out: Params = {}
        for scope, shapes in want.items():
            keys(tree[scope], shapes, f"[{scope!r}] must have the")
            out[scope] = {}
            for key, shape in shapes.items():
                value = out[scope][key] = np.array(tree[scope][key], np.float32)
                if value.shape != shape:
                    raise ValueError(f"{kind} {scope}/{key} must have shape {shape}, got {value.shape}")
                if not np.isfinite(value).all():
                    raise ValueError(f"{kind} {scope}/{key} contains non-finite values")
                if kind == "accumulators" and (value <= 0).any():
                    raise ValueError(f"accumulators {scope}/{key} must be > 0 (Adagrad starts them at 0.1)")
        return out

    def _get(self, kind: str) -> Params:
        out: Params = {"rnn_cell": {}, "softmax": {}}
        for (scope, key), value in self._read(kind).items():
            out[scope][key] = np.array(value, np.float32)
        return out

    def get_params(self) -> Params:
        """``{"rnn_cell": {"W", "b"}, "softmax": {"W", "b"}}``, float32 numpy copies."""
        return self._get("params")

    def set_params(self, params: Params) -> None:
        """Overwrite the parameters, checked against the variables; the accumulators are kept."""
        self._write("params", self._check(params, "params"))

    def get_accumulators(self) -> Params:
        """Adagrad's accumulators, laid out like the parameters."""
        return self._get("accumulators")

    def set_accumulators(self, accumulators: Params) -> None:
        self._write("accumulators", self._check(accumulators, "accumulators"))

    def _check_state(self, state) -> np.ndarray:
        want = (self.config.batch_size, self.config.state_size)
        state = np.zeros(want, np.float32) if state is None else np.asarray(state, np.float32)
        if state.shape != want:
            raise ValueError(f"state must have shape {want} (batch_size, state_size), got {state.shape}")
        if not np.isfinite(state).all():
            raise ValueError("state contains NaN or inf")
        return state

    def _check_inputs(self, x, y, ndim=2, steps="num_steps"):
        c = self.config
        want = (c.batch_size, getattr(c, steps))
        x, y = np.asarray(x), np.asarray(y)
        for label, a in (("x", x), ("y", y)):
            if a.ndim != ndim or a.shape[-2:] != want:
                raise ValueError(f"{label} must have shape [..., batch_size, {steps}] = "
                                 f"[..., {want[0]}, {want[1]}], got {a.shape}")
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{label} must hold integer class ids, got dtype {a.dtype}")
            if a.size and (a.min() < 0 or a.max() >= c.num_classes):
                raise ValueError(f"{label} must hold class ids in [0, {c.num_classes}) (num_classes), got values "
                                 f"in [{a.min()}, {a.max()}]")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have one shape, got {x.shape} and {y.shape}")
        return np.ascontiguousarray(x, np.int32), np.ascontiguousarray(y, np.int32)

    def train_epoch(self, x_windows, y_windows, state=None, progress=None, guard: bool = True) -> EpochResult:
        """One step per window of ``x_windows, y_windows: int[epoch_size, batch_size, num_steps]`` from
        ``state`` (None: zeros); ``progress(k)`` after step k. ``guard`` checks each loss and, at the end, the
        variables; after a non-finite one it replays from the start to find the window (`EpochResult`)."""
        x_windows, y_windows = self._check_inputs(x_windows, y_windows, ndim=3)
        if not len(x_windows):
            raise ValueError("x_windows holds no windows (epoch_size 0)")
        current = initial = self._check_state(state)
        k2 = self.config.window_steps
        if k2 == self.config.num_steps:
            updates = list(zip(x_windows, y_windows))
        else:
            x, y, starts = tbptt_windows(x_windows, y_windows, k2)
            updates = list(zip(x, y, starts.tolist()))
        saved, losses, bad = self._values() if guard else None, np.empty(len(updates), np.float32), None
        start = time.perf_counter()
        for k, (x, y, *position) in enumerate(updates):
            losses[k], current = self._step(x, y, current, *position)
            if k == 0:
                first = time.perf_counter() - start
            if progress is not None:
                progress(k)
            if guard and not math.isfinite(losses[k]):
                bad = k
                break
        final_state = np.array(current, np.float32)
        if guard and bad is None and not self._finite():
            bad = len(updates)
        if bad is not None:
            bad, final_state = self._replay(saved, updates, initial, losses[:bad + 1])
            losses[bad + 1:] = np.nan
        return EpochResult(losses, final_state, first, time.perf_counter() - start, bad)

    def start_epoch(self, x_windows, y_windows, progress=None):
        """`train_epoch` for ``jax_rnn.train``: runs now; the callable returns the result."""
        result = self.train_epoch(x_windows, y_windows, progress=None if progress is None else lambda k: progress(1))
        return lambda: result

    def _values(self) -> dict:
        return {kind: self._get(kind) for kind in self._variables}

    def _finite(self) -> bool:
        return all(np.isfinite(v).all() for kind in self._variables for v in self._read(kind).values())

    def _restore(self, values: dict):
        for kind, tree in values.items():
            self._write(kind, tree)

    def _replay(self, saved, updates, current, seen):
        """The first non-finite window and the state entering it; the values before it restored."""
        self._restore(saved)
        for k, (x, y, *position) in enumerate(updates[:len(seen)]):
            kept, state = self._values(), current
            loss, current = self._step(x, y, current, *position)
            if not np.array_equal(loss, seen[k], equal_nan=True):
                raise RuntimeError(NOT_REPRODUCED + f" (window {k}: loss {float(seen[k])!r}, replayed {float(loss)!r})")
            if not math.isfinite(loss) or not self._finite():
                self._restore(kept)
                return k, np.array(state, np.float32)
        raise RuntimeError(NOT_REPRODUCED + " (every replayed loss and update was finite)")

    def loss(self, x, y, state=None, start: Optional[int] = None) -> tuple[float, np.ndarray]:
        """``(mean loss, next state)`` of ``x, y: int[batch_size, num_steps]`` (TBPTT: ``backprop_steps``, from
        position ``start``, default 0), no update."""
        tbptt = self.config.window_steps > self.config.num_steps
        if start is not None and not tbptt:
            raise ValueError("start applies only to a model with backprop_steps > num_steps")
        x, y = self._check_inputs(x, y, steps="backprop_steps" if tbptt else "num_steps")
        position = (operator.index(start or 0),) if tbptt else ()
        loss, final_state = self._forward(x, y, self._check_state(state), *position)
        return float(loss), np.asarray(final_state, np.float32)
