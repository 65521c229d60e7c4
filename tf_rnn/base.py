"""The interface shared by the four TensorFlow versions, and the truncated-BPTT epoch loop.

Training as in r2rt's "Recurrent Neural Networks in Tensorflow I": one Adagrad step per window, the
final state of window k the initial state of window k+1 (state carried, gradient not), zeros at first.
Subclasses supply the compiled steps (`Model._step`) and their variables (`Model._read`, `_write`);
this module owns the rest, so all four versions are fed, timed and checked the same way.

TBPTT(k1, k2) (Williams and Peng; ../shared/TASK.md, "Truncation styles"), k1 = ``num_steps``, k2 =
``backprop_steps`` > k1: still one update per k1 new steps, but each update's graph runs over the last
k2 steps of the stream, a window cut here from the ordinary ones (`tbptt_windows`) and fed with its
start position: steps before the stream (position < 0) are absent, the state kept through them, no
loss on them. The loss is over the window's last k1 steps; the state carried on is the one after its
first k1 steps. With k2 == k1 (the default) none of this exists: graphs, feeds and loop are the tutorial's.
"""

from __future__ import annotations

import abc
import math
import operator
import time
from typing import Callable, NamedTuple, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .config import ModelConfig, Params, check_accumulators, check_params


NOT_REPRODUCED = (
    "the replay after a non-finite value did not reproduce the first run (TensorFlow ran "
    "non-deterministically), so the window where training diverged is unknown; build the model with "
    "tf_rnn.build(..., deterministic=True) (rnn-compare run --deterministic) and train again")


def tbptt_windows(x_windows: np.ndarray, y_windows: np.ndarray, backprop_steps: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TBPTT(k1, k2)'s windows of k2 steps, one per update, from the ordinary windows of k1 steps.

    **Arguments:** ``x_windows, y_windows: int[U, batch, k1]`` (``jax_rnn.data.windows``); ``backprop_steps`` k2.

    **Returns:** ``(x, y, starts)``: ``x, y: int[U, batch, k2]`` (new arrays, k2 / k1 times the memory),
    window u the stream positions ``[u*k1 + k1 - k2, (u+1)*k1)`` of each row (class 0 where < 0), and
    ``starts: int64[U]``, the position of each window's first step.
    """
    n, batch, k1 = x_windows.shape
    pad = backprop_steps - k1

    def cut(w: np.ndarray) -> np.ndarray:
        rows = np.concatenate([np.zeros((batch, pad), w.dtype), w.transpose(1, 0, 2).reshape(batch, n * k1)], 1)
        return np.ascontiguousarray(sliding_window_view(rows, backprop_steps, axis=1)[:, ::k1].transpose(1, 0, 2))

    return cut(x_windows), cut(y_windows), np.arange(n) * k1 - pad


def _nest(values: dict) -> Params:
    """``{(scope, key): array}`` -> the shared layout, float32 numpy copies."""
    out: Params = {"rnn_cell": {}, "softmax": {}}
    for (scope, key), value in values.items():
        out[scope][key] = np.array(value, np.float32)
    return out


class EpochResult(NamedTuple):
    """What `Model.train_epoch` returns.

    ``losses: float32[epoch_size]``: each window's loss, with the parameters *before* its update
    (fetched in the same run as the update, as in the tutorial);
    ``final_state: float32[batch_size, state_size]``; ``first_step_seconds``: wall time of the first
    step (see `Model`); ``seconds``: wall time of the whole epoch loop, first step included;
    ``diverged_at``: None if every loss, parameter and accumulator stayed finite, else the first window
    k whose loss, or whose update, was not finite: training stopped there, the model holds the
    parameters and accumulators from before window k (the last finite ones), ``losses[k]`` is that
    window's loss and later losses are NaN (the semantics of ``jax_rnn.train_epoch_guarded``), and
    ``final_state`` is the state entering window k.
    """

    losses: np.ndarray
    final_state: np.ndarray
    first_step_seconds: float
    seconds: float
    diverged_at: Optional[int] = None


class Model(abc.ABC):
    """One trainable instance of the model. Use as a context manager, or call `close`.

    Attributes: ``name`` (one of ``tf_rnn.IMPLEMENTATIONS``), ``config`` (`ModelConfig`),
    ``build_seconds``: graph construction, session creation, variable initialisation and assignment
    (TF1), or variable creation and tracing of the train and loss functions (tf2). The first run after
    that (TF1: Grappler optimisation, executor creation; tf2: function instantiation, with XLA its
    compilation) counts in `EpochResult.first_step_seconds`.
    """

    name: str
    config: ModelConfig
    build_seconds: float

    # --- what a subclass implements --------------------------------------------------------------
    @abc.abstractmethod
    def _step(self, x: np.ndarray, y: np.ndarray, state, *start: int) -> tuple[float, object]:
        """One Adagrad step on ``x, y: int32[batch, window_steps]`` from ``state``; ``(loss, new_state)``.
        ``start``: the window's stream position, passed (one int) exactly when backprop_steps > num_steps."""

    @abc.abstractmethod
    def _forward(self, x: np.ndarray, y: np.ndarray, state: np.ndarray, *start: int) -> tuple[float, np.ndarray]:
        """Loss and next state without updating anything (arguments as `_step`)."""

    @abc.abstractmethod
    def _read(self, kind: str) -> dict:
        """``{(scope, key): value}`` of the ``"params"`` or ``"accumulators"`` variables."""

    @abc.abstractmethod
    def _write(self, kind: str, values: Params) -> None:
        """Assign ``values`` (shared layout, checked) to the ``"params"`` or ``"accumulators"`` variables."""

    def _prepare_state(self, state: np.ndarray):
        """Convert the initial state to what `_step` carries (numpy for TF1, a tensor for tf2)."""
        return state

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the session / resources. Idempotent."""

    # --- shared ----------------------------------------------------------------------------------
    def get_params(self) -> Params:
        """The current parameters in the shared layout, float32 numpy copies."""
        return _nest(self._read("params"))

    def set_params(self, params: Params) -> None:
        """Overwrite the parameters (validated with `check_params`); Adagrad accumulators are kept."""
        self._write("params", check_params(params, self.config))

    def get_accumulators(self) -> Params:
        """Adagrad's accumulators (the optimizer state) in the shared layout, float32 numpy copies."""
        return _nest(self._read("accumulators"))

    def set_accumulators(self, accumulators: Params) -> None:
        """Overwrite the accumulators (shared layout, values > 0), e.g. to resume from a checkpoint."""
        self._write("accumulators", check_accumulators(accumulators, self.config))

    def __enter__(self) -> "Model":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<tf_rnn {self.name} model {self.config}>"

    def zero_state(self) -> np.ndarray:
        """``float32[batch_size, state_size]`` zeros: the state at the start of every epoch."""
        return np.zeros((self.config.batch_size, self.config.state_size), np.float32)

    def _check_state(self, state) -> np.ndarray:
        if state is None:
            return self.zero_state()
        state = np.asarray(state, dtype=np.float32)
        want = (self.config.batch_size, self.config.state_size)
        if state.shape != want:
            raise ValueError(f"state must have shape {want} (batch_size, state_size), got {state.shape}")
        if not np.all(np.isfinite(state)):
            raise ValueError("state contains NaN or inf")
        return state

    def _check_inputs(self, x, y, ndim: int = 2, steps: str = "num_steps") -> tuple[np.ndarray, np.ndarray]:
        want = (self.config.batch_size, self.config.num_steps if steps == "num_steps" else self.config.window_steps)
        x, y = np.asarray(x), np.asarray(y)
        for label, a in (("x", x), ("y", y)):
            if a.ndim != ndim or a.shape[-2:] != want:
                raise ValueError(f"{label} must have shape [..., batch_size, {steps}] = "
                                 f"[..., {want[0]}, {want[1]}] for {self.config}, got {a.shape}")
            if not np.issubdtype(a.dtype, np.integer):
                raise ValueError(f"{label} must hold integer class ids, got dtype {a.dtype}")
        if x.shape != y.shape:
            raise ValueError(f"x and y must have one shape, got {x.shape} and {y.shape}")
        n = self.config.num_classes
        for label, a in (("x", x), ("y", y)):
            if a.size and (a.min() < 0 or a.max() >= n):
                raise ValueError(f"{label} must hold class ids in [0, {n}) (num_classes), got values in "
                                 f"[{a.min()}, {a.max()}]")
        return np.ascontiguousarray(x, np.int32), np.ascontiguousarray(y, np.int32)

    def train_epoch(self, x_windows: np.ndarray, y_windows: np.ndarray, state: Optional[np.ndarray] = None,
                    progress: Optional[Callable[[int], None]] = None, guard: bool = True) -> EpochResult:
        """Train on one epoch of windows, one Adagrad step per window, carrying the state.

        **Arguments:** ``x_windows, y_windows: int32[epoch_size, batch_size, num_steps]`` (from
        ``jax_rnn.data.windows``, whatever ``backprop_steps``); ``state: float32[batch_size, state_size]``
        or None for zeros; ``progress``: optional ``callable(step_index)`` called after every step;
        ``guard``: stop at the first non-finite loss, parameter or accumulator (`EpochResult.diverged_at`).

        The guard copies nothing per step: it checks each loss, and the parameters and accumulators,
        copied at the start of the epoch, at its end. Only if something is not finite, it restores the
        copy and replays the epoch up to the failing window, checking the parameters after every step.
        That relies on deterministic steps (the CPU's; elsewhere ``tf_rnn.build(deterministic=True)``):
        a replay that differs from the first run raises RuntimeError rather than report a divergence at
        a window that may not have diverged.

        **Returns:** `EpochResult`.
        """
        x_windows, y_windows = self._check_inputs(x_windows, y_windows, ndim=3)
        n = x_windows.shape[0]
        if n == 0:
            raise ValueError("x_windows holds no windows (epoch_size 0)")
        initial = self._check_state(state)
        x_windows, y_windows, extra = self._updates(x_windows, y_windows)
        current = self._prepare_state(initial)
        snapshot = self._snapshot() if guard else None
        losses = np.empty(n, np.float32)
        step = self._step
        bad = None
        start = time.perf_counter()
        for k in range(n):
            loss, current = step(x_windows[k], y_windows[k], current, *extra[k])
            losses[k] = loss
            if k == 0:
                first = time.perf_counter() - start
            if progress is not None:
                progress(k)
            if guard and not math.isfinite(losses[k]):
                bad = k
                break
        final_state = np.array(current, dtype=np.float32)  # synchronises (tf2: reads the tensor)
        if guard and bad is None and not self._finite():
            bad = n  # every loss finite, but the last update was not
        if bad is None:
            return EpochResult(losses, final_state, first, time.perf_counter() - start)
        k, final_state = self._roll_back(snapshot, x_windows, y_windows, extra, initial, losses[:bad + 1])
        losses[k + 1:] = np.nan
        return EpochResult(losses, final_state, first, time.perf_counter() - start, k)

    def start_epoch(self, x_windows: np.ndarray, y_windows: np.ndarray,
                    progress: Optional[Callable[[int], None]] = None) -> Callable[[], EpochResult]:
        """`train_epoch` from the zero state, as a trainer of ``jax_rnn.driver.train``: TensorFlow steps
        from Python, so the epoch runs here and the callable returned only hands over the result;
        ``progress(1)`` after every step."""
        result = self.train_epoch(x_windows, y_windows, progress=None if progress is None else lambda k: progress(1))
        return lambda: result

    def _updates(self, x_windows: np.ndarray, y_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """Each update's ``_step`` arguments but the state: ``x[k], y[k], *extra[k]``."""
        k2 = self.config.window_steps
        if k2 == self.config.num_steps:
            return x_windows, y_windows, [()] * len(x_windows)
        x, y, starts = tbptt_windows(x_windows, y_windows, k2)
        return x, y, [(start,) for start in starts.tolist()]

    def _snapshot(self) -> tuple[Params, Params]:
        return self.get_params(), self.get_accumulators()

    def _restore(self, snapshot: tuple[Params, Params]) -> None:
        self.set_params(snapshot[0])
        self.set_accumulators(snapshot[1])

    def _finite(self) -> bool:
        return all(np.all(np.isfinite(v)) for tree in self._snapshot() for group in tree.values()
                   for v in group.values())

    def _roll_back(self, snapshot, x_windows, y_windows, extra, initial, seen: np.ndarray):
        """The guard's replay (`train_epoch`), reproducing ``seen``, the first run's losses; returns the
        first window k whose loss or update is not finite and the state entering it, the values before
        it restored."""
        self._restore(snapshot)
        current = self._prepare_state(initial)
        for k in range(len(seen)):
            kept, state = self._snapshot(), current
            loss, current = self._step(x_windows[k], y_windows[k], current, *extra[k])
            if not np.array_equal(loss, seen[k], equal_nan=True):
                raise RuntimeError(NOT_REPRODUCED + f" (window {k}: loss {float(seen[k])!r}, replayed {float(loss)!r})")
            if not math.isfinite(float(loss)) or not self._finite():
                self._restore(kept)
                return k, np.array(state, dtype=np.float32)
        raise RuntimeError(NOT_REPRODUCED + " (every replayed loss and update was finite)")

    def loss(self, x: np.ndarray, y: np.ndarray, state: Optional[np.ndarray] = None,
             start: Optional[int] = None) -> tuple[float, np.ndarray]:
        """Forward pass only: ``(mean loss, next state: float32[batch_size, state_size])`` on one window.

        ``x, y: int[batch_size, num_steps]``, or with ``backprop_steps`` one TBPTT window ``int[batch_size,
        backprop_steps]`` and ``start`` its stream position (default 0); ``state`` None means zeros.
        """
        tbptt = self.config.window_steps > self.config.num_steps
        if start is not None and not tbptt:
            raise ValueError("start applies only to a model with backprop_steps > num_steps")
        x, y = self._check_inputs(x, y, steps="backprop_steps" if tbptt else "num_steps")
        extra = (operator.index(start or 0),) if tbptt else ()
        loss, final_state = self._forward(x, y, self._check_state(state), *extra)
        return float(loss), np.asarray(final_state, np.float32)
