"""The interface shared by the four TensorFlow versions, and the truncated-BPTT epoch loop.

Training as in r2rt's "Recurrent Neural Networks in Tensorflow I": one Adagrad step per window; the
final state of window k is the initial state of window k+1 (state carried, gradient not); the state
starts at zeros unless given. Subclasses supply one compiled step (`Model._step`); this module owns the
loop, so all four versions are timed and fed the same way.

TBPTT(k1, k2) (Williams and Peng; ../shared/TASK.md, "Truncation styles"), k1 = ``num_steps``, k2 =
``backprop_steps`` > k1: still one update per k1 new steps, but each update's graph runs over a window
of the last k2 steps of the stream, built here once per epoch from the ordinary windows
(`tbptt_windows`). The window's start position (negative: its first steps lie before the stream and
are absent, state kept, no loss) is fed with it; the loss is over the window's last k1 steps; the state
carried to the next window is the one after its first k1 steps. With k2 == k1 (the default) nothing of
this exists: the graphs, feeds and loop are the tutorial's.
"""

from __future__ import annotations

import abc
import math
import operator
import time
from typing import Callable, NamedTuple, Optional

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from .config import ModelConfig, Params


NOT_REPRODUCED = (
    "the replay after a non-finite value did not reproduce the first run (TensorFlow ran "
    "non-deterministically), so the window where training diverged is unknown; build the model with "
    "tf_rnn.build(..., deterministic=True) (rnn-compare run --deterministic) and train again")


def tbptt_windows(x_windows: np.ndarray, y_windows: np.ndarray, backprop_steps: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """TBPTT(k1, k2)'s windows of k2 steps, one per update, from the ordinary windows of k1 steps.

    **Arguments:** ``x_windows, y_windows: int[U, batch, k1]``, consecutive windows of each row of the
    stream (``jax_rnn.data.windows``); ``backprop_steps`` k2 >= k1.

    **Returns:** ``(x, y, starts)``: ``x, y: int[U, batch, k2]`` (new arrays, the inputs' dtype), window
    u = the stream positions ``[u*k1 + k1 - k2, (u+1)*k1)`` of each row, and ``starts: int64[U]`` =
    ``u*k1 + k1 - k2``, the position of each window's first step. Positions before 0 are absent: they
    hold class 0 here, and the models keep the state through them and count no loss on them (``present =
    start + t >= 0``, `tf_rnn.graph.present`). Memory: ``U * batch * k2`` per array (k2 / k1 times the
    inputs').
    """
    n, batch, k1 = x_windows.shape
    pad = backprop_steps - k1

    def cut(w: np.ndarray) -> np.ndarray:
        rows = np.concatenate([np.zeros((batch, pad), w.dtype), w.transpose(1, 0, 2).reshape(batch, n * k1)], 1)
        return np.ascontiguousarray(sliding_window_view(rows, backprop_steps, axis=1)[:, ::k1].transpose(1, 0, 2))

    return cut(x_windows), cut(y_windows), np.arange(n) * k1 - pad


class EpochResult(NamedTuple):
    """What `Model.train_epoch` returns.

    ``losses: float32[epoch_size]``: the loss of each window, computed with the parameters *before*
    that window's update (fetched in the same run as the update, as in the tutorial);
    ``final_state: float32[batch_size, state_size]``; ``first_step_seconds``: wall time of the first
    step (includes TF1's first-run graph optimisation / tf2's function instantiation and XLA compile);
    ``seconds``: wall time of the whole epoch loop, first step included; ``diverged_at``: None if every
    loss, parameter and accumulator stayed finite, else the first window k whose loss, or whose update,
    was not finite: training stopped there, the model holds the parameters and accumulators from before
    window k (the last finite ones), ``losses[k]`` is that window's loss and later losses are NaN (the
    same semantics as ``jax_rnn.train_epoch_guarded``), and ``final_state`` is the state entering window k.
    """

    losses: np.ndarray
    final_state: np.ndarray
    first_step_seconds: float
    seconds: float
    diverged_at: Optional[int] = None


class Model(abc.ABC):
    """One trainable instance of the model. Use as a context manager, or call `close`.

    Attributes: ``name`` (one of ``tf_rnn.IMPLEMENTATIONS``), ``config`` (`ModelConfig`),
    ``build_seconds`` (see the subclass: graph construction + variable initialisation for the TF1
    versions; variable creation + tracing of the train step for tf2).
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
    def get_params(self) -> Params:
        """The current parameters in the shared layout, float32 numpy copies."""

    @abc.abstractmethod
    def set_params(self, params: Params) -> None:
        """Overwrite the parameters (validated with `check_params`); Adagrad accumulators are kept."""

    @abc.abstractmethod
    def get_accumulators(self) -> Params:
        """Adagrad's accumulators (the optimizer state) in the shared layout, float32 numpy copies."""

    @abc.abstractmethod
    def set_accumulators(self, accumulators: Params) -> None:
        """Overwrite the accumulators (shared layout, values > 0), e.g. to resume from a checkpoint."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Release the session / resources. Idempotent."""

    # --- shared ----------------------------------------------------------------------------------
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

    def _check_inputs(self, x, y, leading: tuple[int, ...] = (),
                      steps: str = "num_steps") -> tuple[np.ndarray, np.ndarray]:
        want = (*leading, self.config.batch_size,
                self.config.num_steps if steps == "num_steps" else self.config.window_steps)
        x, y = np.asarray(x), np.asarray(y)
        for label, a in (("x", x), ("y", y)):
            if a.shape[len(leading):] != want[len(leading):] or a.ndim != len(want):
                raise ValueError(f"{label} must have shape [..., batch_size, {steps}] = "
                                 f"[..., {want[-2]}, {want[-1]}] for {self.config}, got {a.shape}")
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
        ``jax_rnn.data.windows``; with ``backprop_steps`` k2 > k1 as well: each update's window of k2
        steps is cut from them here, see `tbptt_windows`, and the state carried is the one after each
        window's first k1 steps); ``state: float32[batch_size, state_size]`` or None for zeros;
        ``progress``: optional ``callable(step_index)`` called after every step; ``guard``: stop at the
        first non-finite loss, parameter or accumulator (see `EpochResult.diverged_at`).

        How the guard keeps the last finite parameters without a copy per step: the losses arrive on
        the host anyway (a float check each), the parameters and accumulators are copied once at the
        start of the epoch and checked once at its end. Only when something is not finite, the epoch is
        rolled back to that copy and replayed up to the failing window, checking the parameters after
        every replayed step, so the normal case costs two reads of 8 small arrays per epoch. The replay
        relies on the steps being deterministic (they are on the CPU; elsewhere pass
        ``deterministic=True`` to `tf_rnn.build`): a replayed loss that differs from the first run's, or
        a replay that never reaches a non-finite value, raises RuntimeError rather than report a
        divergence at a window that may not have diverged.

        **Returns:** `EpochResult`.
        """
        x_windows, y_windows = self._check_inputs(x_windows, y_windows, leading=(-1,))
        n = x_windows.shape[0]
        if n == 0:
            raise ValueError("x_windows holds no windows (epoch_size 0)")
        initial = self._check_state(state)
        x_windows, y_windows, extra = self._updates(x_windows, y_windows)
        current = self._prepare_state(initial)
        snapshot = (self.get_params(), self.get_accumulators()) if guard else None
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
        """`train_epoch` from the zero state, as a trainer of ``jax_rnn.driver.train`` (``rnn-compare``'s
        one training loop): TensorFlow steps from Python, so the epoch runs here and the callable it
        returns only hands over the result; ``progress(1)`` after every step."""
        result = self.train_epoch(x_windows, y_windows, progress=None if progress is None else lambda k: progress(1))
        return lambda: result

    def _updates(self, x_windows: np.ndarray, y_windows: np.ndarray) -> tuple[np.ndarray, np.ndarray, list]:
        """Each update's ``_step`` arguments but the state: ``(x, y, extra)``, ``x[k], y[k]`` the window
        and ``extra[k]`` ``()``, or ``(start,)`` in TBPTT(k1, k2 > k1) mode (`tbptt_windows`)."""
        k2 = self.config.window_steps
        if k2 == self.config.num_steps:
            return x_windows, y_windows, [()] * len(x_windows)
        x, y, starts = tbptt_windows(x_windows, y_windows, k2)
        return x, y, [(start,) for start in starts.tolist()]

    def _finite(self) -> bool:
        return all(np.all(np.isfinite(v)) for tree in (self.get_params(), self.get_accumulators())
                   for group in tree.values() for v in group.values())

    def _roll_back(self, snapshot, x_windows, y_windows, extra, initial, seen: np.ndarray):
        """Restore the epoch-start copy and replay the epoch up to the first window whose loss or update
        is not finite; restore the parameters and accumulators from before it. ``seen``: the losses of
        the first run up to the one that was not finite (all of them if only the end-of-epoch check
        failed); every replayed loss must reproduce it exactly. Returns ``(k, state entering k)``;
        RuntimeError if the replay does not reproduce the first run."""
        self.set_params(snapshot[0])
        self.set_accumulators(snapshot[1])
        current = self._prepare_state(initial)
        for k in range(len(seen)):
            kept = (self.get_params(), self.get_accumulators(), current)
            loss, current = self._step(x_windows[k], y_windows[k], current, *extra[k])
            if float(loss) != float(seen[k]) and not (math.isnan(float(loss)) and math.isnan(float(seen[k]))):
                raise RuntimeError(NOT_REPRODUCED + f" (window {k}: loss {float(seen[k])!r}, replayed {float(loss)!r})")
            if not math.isfinite(float(loss)) or not self._finite():
                self.set_params(kept[0])
                self.set_accumulators(kept[1])
                return k, np.array(kept[2], dtype=np.float32)
        raise RuntimeError(NOT_REPRODUCED + " (every replayed loss and update was finite)")

    def _prepare_state(self, state: np.ndarray):
        """Convert the initial state to what `_step` carries (numpy for TF1, a tensor for tf2)."""
        return state

    def loss(self, x: np.ndarray, y: np.ndarray, state: Optional[np.ndarray] = None,
             start: Optional[int] = None) -> tuple[float, np.ndarray]:
        """Forward pass only: ``(mean loss, next state: float32[batch_size, state_size])`` on one window.

        ``x, y: int[batch_size, num_steps]``; ``state`` None means zeros. Changes nothing. With
        ``backprop_steps`` k2 > k1, one window of a TBPTT(k1, k2) epoch: ``x, y: int[batch_size,
        backprop_steps]``, ``start`` its first step's stream position (default 0; steps at negative
        positions are absent), the loss over its last k1 steps and the state after its first k1 steps.
        """
        tbptt = self.config.window_steps > self.config.num_steps
        if start is not None and not tbptt:
            raise ValueError("start applies only to a model with backprop_steps > num_steps")
        x, y = self._check_inputs(x, y, steps="backprop_steps" if tbptt else "num_steps")
        extra = (operator.index(start or 0),) if tbptt else ()
        loss, final_state = self._forward(x, y, self._check_state(state), *extra)
        return float(loss), np.asarray(final_state, np.float32)
