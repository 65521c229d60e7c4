"""The interface shared by the four TensorFlow versions, and the truncated-BPTT epoch loop.

Training as in r2rt's "Recurrent Neural Networks in Tensorflow I": one Adagrad step per window; the
final state of window k is the initial state of window k+1 (state carried, gradient not); the state
starts at zeros unless given. Subclasses supply one compiled step (`Model._step`); this module owns the
loop, so all four versions are timed and fed the same way.
"""

from __future__ import annotations

import abc
import math
import time
from typing import Callable, NamedTuple, Optional

import numpy as np

from .config import ModelConfig, Params


NOT_REPRODUCED = (
    "the replay after a non-finite value did not reproduce the first run (TensorFlow ran "
    "non-deterministically), so the window where training diverged is unknown; build the model with "
    "tf_rnn.build(..., deterministic=True) (rnn-compare run --deterministic) and train again")


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
    def _step(self, x: np.ndarray, y: np.ndarray, state) -> tuple[float, object]:
        """One Adagrad step on ``x, y: int32[batch, num_steps]`` from ``state``; ``(loss, new_state)``."""

    @abc.abstractmethod
    def _forward(self, x: np.ndarray, y: np.ndarray, state: np.ndarray) -> tuple[float, np.ndarray]:
        """Loss and final state without updating anything."""

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

    def _check_inputs(self, x, y, leading: tuple[int, ...] = ()) -> tuple[np.ndarray, np.ndarray]:
        want = (*leading, self.config.batch_size, self.config.num_steps)
        x, y = np.asarray(x), np.asarray(y)
        for label, a in (("x", x), ("y", y)):
            if a.shape[len(leading):] != want[len(leading):] or a.ndim != len(want):
                raise ValueError(f"{label} must have shape [..., batch_size, num_steps] = "
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
        ``jax_rnn.data.windows``); ``state: float32[batch_size, state_size]`` or None for zeros;
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
        current = self._prepare_state(initial)
        snapshot = (self.get_params(), self.get_accumulators()) if guard else None
        losses = np.empty(n, np.float32)
        step = self._step
        bad = None
        start = time.perf_counter()
        for k in range(n):
            loss, current = step(x_windows[k], y_windows[k], current)
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
        k, final_state = self._roll_back(snapshot, x_windows, y_windows, initial, losses[:bad + 1])
        losses[k + 1:] = np.nan
        return EpochResult(losses, final_state, first, time.perf_counter() - start, k)

    def _finite(self) -> bool:
        return all(np.all(np.isfinite(v)) for tree in (self.get_params(), self.get_accumulators())
                   for group in tree.values() for v in group.values())

    def _roll_back(self, snapshot, x_windows, y_windows, initial, seen: np.ndarray):
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
            loss, current = self._step(x_windows[k], y_windows[k], current)
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

    def loss(self, x: np.ndarray, y: np.ndarray, state: Optional[np.ndarray] = None) -> tuple[float, np.ndarray]:
        """Forward pass only: ``(mean loss, final_state: float32[batch_size, state_size])`` on one window.

        ``x, y: int[batch_size, num_steps]``; ``state`` None means zeros. Changes nothing.
        """
        x, y = self._check_inputs(x, y)
        loss, final_state = self._forward(x, y, self._check_state(state))
        return float(loss), np.asarray(final_state, np.float32)
