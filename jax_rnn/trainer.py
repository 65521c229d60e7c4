"""The one training loop, `train`, for `fit` and ``rnn-compare``. A trainer (`JaxTrainer`, a ``tf_rnn`` model) has
``start_epoch(x_windows, y_windows, progress) -> finish``, ``finish() -> EpochStats``, ``get_params``,
``get_accumulators``, ``build_seconds`` and ``close``."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from typing import Callable, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import data, optim
from .checkpoint import Checkpoint
from .model import param_shapes
from .plan import Plan, plan as make_plan
from .train import program, train_runs


class Divergence(NamedTuple):
    """Window ``step`` of ``epoch`` (0-based) had a non-finite loss or update."""

    epoch: int
    step: int
    loss: float


class EpochStats(NamedTuple):
    """``losses: f32[(runs,) epoch_size]``; ``first_step_seconds``: TF's, within ``seconds``; ``diverged_at``: per
    run the first non-finite window or -1 (None: none)."""

    losses: np.ndarray
    seconds: float
    first_step_seconds: float | None = None
    diverged_at: object = None


@dataclasses.dataclass
class History:
    """Per epoch ``f32[(runs,) epoch_size]`` losses (NaN once a run diverged) and seconds (without TF's first
    step); per run None or its `Divergence`."""

    step_losses: list = dataclasses.field(default_factory=list)
    epoch_seconds: list = dataclasses.field(default_factory=list)
    build_seconds: float | None = None
    first_step_seconds: float | None = None
    diverged: list = dataclasses.field(default_factory=list)

    @property
    def epochs(self) -> int:
        return len(self.step_losses)

    @property
    def stopped(self) -> bool:
        return bool(self.diverged) and all(d is not None for d in self.diverged)

    def losses(self, epochs: int | None = None) -> np.ndarray:
        """``f32[(runs,) epochs, epoch_size]``, NaN for epochs after training stopped."""
        losses = np.stack(self.step_losses, axis=-2)
        pad = [(0, 0)] * losses.ndim
        pad[-2] = (0, max(0, (epochs or self.epochs) - self.epochs))
        return np.pad(losses, pad, constant_values=np.nan)

    def record(self, stats: EpochStats) -> None:
        epoch, losses = self.epochs, np.array(stats.losses, np.float32)
        at = np.atleast_1d(-1 if stats.diverged_at is None else np.asarray(stats.diverged_at))
        self.diverged = self.diverged or [None] * len(at)
        rows = losses.reshape(len(at), -1)  # a view: runs x epoch_size
        for run, step in enumerate(at):
            if self.diverged[run] is not None:
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
        """This history, the trainer's parameters and plan as a `Checkpoint`."""
        meta = {**meta, "build_seconds": self.build_seconds, "first_step_seconds": self.first_step_seconds,
                "diverged": [None if d is None else d._asdict() for d in self.diverged]}
        if getattr(trainer, "plan", None) is not None:
            meta["plan"] = trainer.plan.record()
        return Checkpoint(config, self.epochs, trainer.get_params(), trainer.get_accumulators(), self.losses(),
                          list(self.epoch_seconds), meta)

    @classmethod
    def from_checkpoint(cls, saved: Checkpoint) -> "History":
        losses = np.asarray(saved.step_losses, np.float32)
        runs = losses.shape[0] if losses.ndim == 3 else 1
        diverged = [None if d is None else Divergence(**d) for d in saved.meta.get("diverged") or [None] * runs]
        return cls(list(np.moveaxis(losses, -2, 0)), [float(s) for s in saved.epoch_seconds],
                   saved.meta.get("build_seconds"), saved.meta.get("first_step_seconds"), diverged)


def train(trainer, windows: Iterable[tuple], history: History | None = None,
          after_epoch: Callable[[History, object], None] | None = None,
          progress: Callable[[int], None] | None = None) -> History:
    """Train on each epoch of ``windows``, extending ``history``, calling ``after_epoch(history, trainer)``, until
    every run has diverged."""
    history = history if history is not None else History()
    if history.build_seconds is None:
        history.build_seconds = trainer.build_seconds
    pending = None
    for epoch in itertools.chain(windows, [None]):  # the next epoch is made while the last one trains
        if pending is not None:
            history.record(pending())
            if history.stopped:
                break
            if after_epoch is not None:
                after_epoch(history, trainer)
        pending = None if epoch is None else trainer.start_epoch(*epoch, progress)
    return history


def _finite(runs: bool, *trees) -> np.ndarray:
    """Per run (or overall): every float in ``trees`` finite? On the host."""
    leaves = [np.asarray(a) for a in jax.tree.leaves(trees)]
    return np.logical_and.reduce([np.isfinite(a).reshape(len(a), -1).all(axis=1) if runs else np.isfinite(a).all()
                                  for a in leaves if np.issubdtype(a.dtype, np.floating)])


_host = functools.partial(jax.tree.map, lambda a: np.asarray(a, np.float32))


@functools.lru_cache(maxsize=32)
def _compiled(plan: Plan, optimizer, epoch_size: int, device, guard: bool):
    """The plan's epoch compiled ahead of time, once per process."""
    spec = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype, sharding=jax.sharding.SingleDeviceSharding(device))
    params = {s: {k: spec(shape, jnp.float32) for k, shape in leaves.items()}
              for s, leaves in param_shapes(plan.num_classes, plan.state_size).items()}
    opt_state = jax.tree.map(lambda a: spec(a.shape, a.dtype), jax.eval_shape(optimizer.init, params))
    windows = spec((epoch_size, plan.batch_size, plan.num_steps), data.window_dtype(plan.num_classes))
    return program(plan).lower(params, opt_state, windows, windows, None, optimizer=optimizer, plan=plan,
                               guard=guard).compile()


class JaxTrainer:
    """Each epoch of a `FitConfig` one call of the cell's `Plan` on ``device`` (or `train_runs` over ``mesh``); an
    epoch that ends non-finite is replayed with the per-window guard."""

    def __init__(self, config, params, accumulators: dict | None = None, device=None, mesh=None,
                 plan: Plan | None = None):
        start = time.perf_counter()
        self._optimizer, self._mesh = optim.adagrad(config.learning_rate), mesh
        params = _host(params)
        runs = 1 if mesh is None else len(jax.tree.leaves(params)[0])
        self.device = None if mesh is not None else device if device is not None else jax.devices()[0]
        backend = (mesh.devices.flat[0] if mesh is not None else self.device).platform
        self.plan = plan or make_plan(config.state_size, config.batch_size, config.num_steps, config.backprop_steps,
                                      runs, num_classes=config.num_classes, backend=backend)
        init = self._optimizer.init if mesh is None else jax.vmap(self._optimizer.init)
        opt_state = optim.initial_state(init, params, accumulators)
        self._key = (self.plan, self._optimizer, config.epoch_size, self.device)
        self.window_dtype = data.window_dtype(config.num_classes)
        if mesh is None:
            params, opt_state = jax.device_put((params, opt_state), self.device)
            self._epoch = _compiled(*self._key, guard=False)
        self.params, self.opt_state = params, opt_state
        self.build_seconds = time.perf_counter() - start

    def _run(self, params, opt_state, xw, yw, guard: bool):
        if self._mesh is not None:
            return train_runs(params, opt_state, xw, yw, self._optimizer, plan=self.plan, guard=guard, mesh=self._mesh)
        return (_compiled(*self._key, guard=True) if guard else self._epoch)(params, opt_state, xw, yw, None)

    def start_epoch(self, x_windows, y_windows, progress=None):
        """Dispatch one epoch; ``finish()`` waits for it."""
        start = time.perf_counter()
        xw, yw = (w if isinstance(w, jax.Array) and w.dtype == self.window_dtype else np.asarray(w, self.window_dtype)
                  for w in (x_windows, y_windows))
        if self.device is not None:
            xw, yw = jax.device_put((xw, yw), self.device)
        before = self.params, self.opt_state
        params, opt_state, _, losses = self._run(*before, xw, yw, guard=False)

        def finish() -> EpochStats:
            nonlocal params, opt_state, losses
            finite = _finite(self._mesh is not None, losses, params, opt_state)
            diverged_at = np.full(np.shape(finite), -1, np.int32)
            if not finite.all():
                params, opt_state, _, losses, diverged_at = self._run(*before, xw, yw, guard=True)
            self.params, self.opt_state = params, opt_state
            losses = np.asarray(losses, np.float32)
            if progress is not None:
                progress(losses.size)
            return EpochStats(losses, time.perf_counter() - start, None, np.asarray(diverged_at))

        return finish

    def get_params(self) -> dict:
        return _host(self.params)

    def get_accumulators(self) -> dict:
        return _host(optim.accumulators(self.opt_state))

    def close(self) -> None:
        pass
