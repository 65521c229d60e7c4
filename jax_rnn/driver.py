"""The one training loop of rnn-scan: every epoch that `fit`, ``rnn-compare run``, ``sweep`` and ``bench``
train, in JAX or in any of the four TensorFlow versions, goes through `train`.

A *trainer* holds one implementation's parameters and optimizer state (one run, or many at once) and
trains an epoch at a time::

    finish = trainer.start_epoch(x_windows, y_windows, progress)   # may return before the work is done
    stats = finish()          # .losses, .seconds, .first_step_seconds, .diverged_at
    trainer.get_params(), trainer.get_accumulators(), trainer.build_seconds, trainer.close()

`JaxTrainer` (here) compiles the epoch ahead of time, with its divergence check; ``tf_rnn.build``
returns TensorFlow models with the same methods. `train` feeds the epochs, records losses and times in a `History`,
stops when every run has diverged, and calls ``after_epoch(history, trainer)`` after every epoch it
goes on from (a checkpoint, a callback, a progress bar). JAX returns before the device is done, so the
next epoch's data is generated and cut while the current one trains.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Callable, Iterable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from . import data, optim
from .checkpoint import Checkpoint
from .layout import param_shapes
from .parallel import train_runs_sharded
from .train import train_epoch, train_epoch_guarded


class Divergence(NamedTuple):
    """Where a run stopped: window ``step`` (0-based) of epoch ``epoch`` (0-based) had a non-finite loss,
    or its update made a parameter or Adagrad accumulator non-finite; ``loss`` is that window's loss."""

    epoch: int
    step: int
    loss: float


class EpochStats(NamedTuple):
    """One epoch of a trainer. ``losses: f32[epoch_size]`` (``f32[runs, epoch_size]`` for many runs): each
    window's loss before its update; ``seconds``: wall time, the inputs as numpy to the losses back as
    numpy (JAX under `train`: the next epoch's data is made meanwhile, so the longer of the two);
    ``first_step_seconds``: TensorFlow's first step (included in ``seconds``), None for JAX;
    ``diverged_at``: the first window that was not finite, per run, -1 (or None) where none was."""

    losses: np.ndarray
    seconds: float
    first_step_seconds: Optional[float] = None
    diverged_at: object = None


@dataclasses.dataclass
class History:
    """What training produced so far (a resumed run starts from its checkpoint's, `from_checkpoint`).

    ``step_losses``: per epoch, ``f32[epoch_size]`` (``f32[runs, epoch_size]`` for many runs; a run's
    losses after its divergence are NaN); ``epoch_seconds``: training time of each epoch, TensorFlow's
    first step excluded (it is ``first_step_seconds``: TF1 optimises its graph there, tf2 traces);
    ``build_seconds``: compile / graph build; ``diverged``: per run, None or its `Divergence`.
    """

    step_losses: list = dataclasses.field(default_factory=list)
    epoch_seconds: list = dataclasses.field(default_factory=list)
    build_seconds: Optional[float] = None
    first_step_seconds: Optional[float] = None
    diverged: list = dataclasses.field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.step_losses)

    @property
    def stopped(self) -> bool:
        """Every run has diverged: nothing is left to train."""
        return bool(self.diverged) and all(d is not None for d in self.diverged)

    def losses(self, epochs: int | None = None) -> np.ndarray:
        """``f32[(runs,) epochs, epoch_size]``, NaN for the epochs after training stopped."""
        losses = np.stack(self.step_losses, axis=-2)
        missing = (epochs or self.epochs) - self.epochs
        if missing > 0:
            pad = [(0, 0)] * losses.ndim
            pad[-2] = (0, missing)
            losses = np.pad(losses, pad, constant_values=np.nan)
        return losses

    def record(self, stats) -> None:
        epoch = self.epochs
        losses = np.array(stats.losses, np.float32)
        at = np.atleast_1d(-1 if stats.diverged_at is None else np.asarray(stats.diverged_at))
        self.diverged = self.diverged or [None] * len(at)
        rows = losses.reshape(len(at), -1)  # a view: runs x epoch_size
        for run, step in enumerate(at):
            if self.diverged[run] is not None:  # stopped in an earlier epoch
                rows[run] = np.nan
            elif step >= 0:
                self.diverged[run] = Divergence(epoch, int(step), float(rows[run, step]))
        seconds = stats.seconds
        if self.first_step_seconds is None and stats.first_step_seconds is not None:
            self.first_step_seconds = stats.first_step_seconds
            seconds -= stats.first_step_seconds
        self.step_losses.append(losses)
        self.epoch_seconds.append(seconds)

    def checkpoint(self, config: dict, trainer, meta: dict) -> Checkpoint:
        """This history and the trainer's parameters as a `jax_rnn.checkpoint.Checkpoint`."""
        meta = {**meta, "build_seconds": self.build_seconds, "first_step_seconds": self.first_step_seconds,
                "diverged": [None if d is None else d._asdict() for d in self.diverged]}
        return Checkpoint(config, self.epochs, trainer.get_params(), trainer.get_accumulators(), self.losses(),
                          list(self.epoch_seconds), meta)

    @classmethod
    def from_checkpoint(cls, saved: Checkpoint) -> "History":
        losses = np.asarray(saved.step_losses, np.float32)
        runs = losses.shape[0] if losses.ndim == 3 else 1
        diverged = [None if d is None else Divergence(**d) for d in saved.meta.get("diverged") or [None] * runs]
        return cls(list(np.moveaxis(losses, -2, 0)),
                   [float(s) for s in saved.epoch_seconds], saved.meta.get("build_seconds"),
                   saved.meta.get("first_step_seconds"), diverged)


def train(trainer, windows: Iterable[tuple], history: History | None = None,
          after_epoch: Callable[[History, object], None] | None = None,
          progress: Callable[[int], None] | None = None) -> History:
    """Train ``trainer`` on every epoch of ``windows`` and return the `History` (``history``, extended).

    **Arguments:** ``windows``: per epoch ``(x_windows, y_windows)``, ``int32[(runs,) epoch_size, batch,
    num_steps]`` (the next one is taken while the trainer works on the current one); ``history``: the
    epochs already done (a resumed run); ``after_epoch(history, trainer)``: called after every epoch
    unless every run has diverged in it; ``progress(n)``: called with the steps just trained.
    """
    history = history if history is not None else History()
    if history.build_seconds is None:
        history.build_seconds = trainer.build_seconds
    pending = None
    for xw, yw in windows:  # the next epoch is generated here, while the last one trains
        if pending is not None and not _finish(pending, history, trainer, after_epoch):
            return history
        pending = trainer.start_epoch(xw, yw, progress)
    if pending is not None:
        _finish(pending, history, trainer, after_epoch)
    return history


def _finish(pending, history: History, trainer, after_epoch) -> bool:
    history.record(pending())
    if history.stopped:
        return False
    if after_epoch is not None:
        after_epoch(history, trainer)
    return True


def _finite(losses, params, opt_state, runs: bool) -> np.ndarray:
    """Whether an epoch stayed finite (per run, ``runs``): its losses and its final parameters and optimizer
    state, checked on the host (numpy; a few thousand numbers, no program to compile)."""
    leaves = [np.asarray(a) for a in (losses, *jax.tree.leaves((params, opt_state)))]
    return np.logical_and.reduce([np.isfinite(a).reshape(len(a), -1).all(axis=1) if runs else np.isfinite(a).all()
                                  for a in leaves if np.issubdtype(a.dtype, np.floating)])


@functools.lru_cache(maxsize=32)
def _compiled(epoch, num_classes: int, state_size: int, window_shape: tuple, window_dtype, optimizer, backprop_steps,
              device):
    """``epoch`` compiled ahead of time for these shapes on ``device``, once per process: ``lower().compile()``
    bypasses JAX's in-memory cache, and a process that builds the same trainer again (a sweep, the tests)
    would otherwise compile it again."""
    sharding = jax.sharding.SingleDeviceSharding(device)
    params = {scope: {name: jax.ShapeDtypeStruct(shape, jnp.float32, sharding=sharding)
                      for name, shape in leaves.items()}
              for scope, leaves in param_shapes(num_classes, state_size).items()}
    opt_state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
                             jax.eval_shape(optimizer.init, params))
    windows = jax.ShapeDtypeStruct(window_shape, window_dtype, sharding=sharding)
    return epoch.lower(params, opt_state, windows, windows, optimizer, backprop_steps=backprop_steps).compile()


class JaxTrainer:
    """``jax_rnn``'s trainer: the whole epoch is one compiled call.

    One run: `train_epoch` (with the check below), compiled ahead of time (``build_seconds``) for
    ``config``'s window shape on ``device`` (default: JAX's first). Many runs (``mesh`` given, every leaf of ``params`` with a leading
    run axis): `train_runs_sharded`, the runs split over the mesh's devices, compiled on the first epoch.
    ``config`` needs ``learning_rate``, ``epoch_size``, ``batch_size``, ``num_steps`` and ``backprop_steps``
    (a `FitConfig`); ``accumulators``: Adagrad's state to start from (a resumed run), in the shared layout.
    ``params`` and ``opt_state``: where training stands (JAX arrays); ``device``: the one device (None for
    many runs).

    **The divergence guard, at no cost while training is finite.** A non-finite parameter stays non-finite
    through every later update (``p + u`` is inf or NaN for any ``u``), and so does an Adagrad accumulator
    (``acc + g**2``). So an epoch was finite throughout exactly when its losses and its final parameters and
    accumulators are: that is checked on the host after the plain epoch (`train_epoch`), and only if it
    fails is the epoch replayed from its start with `train_epoch_guarded` (compiled then), which stops at
    the first non-finite window and keeps the last finite parameters. A per-window check inside the
    compiled epoch cost 10-15% of the state-4 epoch; this costs nothing measurable.
    """

    def __init__(self, config, params, accumulators: dict | None = None, device=None, mesh=None):
        start = time.perf_counter()
        self._optimizer, self._mesh, self._k2 = optim.adagrad(config.learning_rate), mesh, config.backprop_steps
        params = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
        init = self._optimizer.init if mesh is None else jax.vmap(self._optimizer.init)
        opt_state = optim.initial_state(init, params, accumulators)
        self._epoch = self._guarded = None
        self.window_dtype = None  # many runs: any integer type
        if mesh is not None:
            self.params, self.opt_state, self.device, self.build_seconds = params, opt_state, None, 0.0
            return
        self.device = device if device is not None else jax.devices()[0]
        self.params, self.opt_state = jax.device_put((params, opt_state), self.device)
        d, n = config.state_size, config.num_classes
        self.window_dtype = data.window_dtype(n)
        self._key = (n, d, (config.epoch_size, config.batch_size, config.num_steps), self.window_dtype, self._optimizer,
                     self._k2, self.device)
        self._epoch = _compiled(train_epoch, *self._key)
        self.build_seconds = time.perf_counter() - start

    def _plain(self, params, opt_state, xw, yw):
        """One epoch without the guard (many runs with a mesh)."""
        if self._mesh is None:
            return self._epoch(params, opt_state, xw, yw)
        return train_runs_sharded(params, opt_state, xw, yw, self._optimizer, mesh=self._mesh, backprop_steps=self._k2)

    def _replay(self, params, opt_state, xw, yw):
        """The epoch again, with a check after every window (`train_epoch_guarded`; compiled on first use)."""
        if self._mesh is not None:
            return train_runs_sharded(params, opt_state, xw, yw, self._optimizer, mesh=self._mesh, guard=True,
                                      backprop_steps=self._k2)
        self._guarded = self._guarded or _compiled(train_epoch_guarded, *self._key)
        return self._guarded(params, opt_state, xw, yw)

    def start_epoch(self, x_windows, y_windows, progress=None):
        """Dispatch one epoch and return ``finish() -> EpochStats`` (which waits for it, then checks that it
        stayed finite). The windows may be numpy or JAX arrays already on the trainer's device, of any integer
        type; one run is compiled for ``window_dtype`` (`jax_rnn.data.window_dtype`), and windows made in it
        (``epoch_windows(..., dtype=trainer.window_dtype)``) need no conversion."""
        start = time.perf_counter()
        dtype = self.window_dtype
        xw, yw = (w if isinstance(w, jax.Array) and dtype in (None, w.dtype) else np.asarray(w, dtype)
                  for w in (x_windows, y_windows))
        if self.device is not None:  # (a no-op device_put still costs about 1 ms)
            xw, yw = (w if isinstance(w, jax.Array) and w.devices() == {self.device} else jax.device_put(w, self.device)
                      for w in (xw, yw))
        before = self.params, self.opt_state
        params, opt_state, _, losses = self._plain(*before, xw, yw)

        def finish() -> EpochStats:
            nonlocal params, opt_state, losses
            finite = _finite(losses, params, opt_state, runs=self._mesh is not None)
            diverged_at = np.full(np.shape(finite), -1, np.int32)
            if not finite.all():  # replay the epoch with a check after every window
                params, opt_state, _, losses, diverged_at = self._replay(*before, xw, yw)
            self.params, self.opt_state = params, opt_state
            losses = np.asarray(losses, np.float32)
            seconds = time.perf_counter() - start
            if progress is not None:
                progress(losses.size)
            return EpochStats(losses, seconds, None, np.asarray(diverged_at))

        return finish

    def get_params(self) -> dict:
        return jax.tree.map(lambda a: np.asarray(a, np.float32), self.params)

    def get_accumulators(self) -> dict:
        """Adagrad's accumulators in the shared layout (optax's ``sum_of_squares``), float32 numpy."""
        return jax.tree.map(lambda a: np.asarray(a, np.float32), optim.accumulators(self.opt_state))

    def close(self) -> None:
        pass


__all__ = ["Divergence", "EpochStats", "History", "JaxTrainer", "train"]
