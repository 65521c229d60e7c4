"""`fit`: the tutorial's whole experiment in one call, e.g. ``fit(FitConfig(num_steps=10, state_size=16,
epochs=5)).avg_losses[-1]``, ~0.455 once both dependencies are learned."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import numpy as np

from . import checkpoint as ckpt_io
from . import checks, memory, optim
from . import data as task
from .model import Params, check_params, glorot_params
from .plan import Memory, Plan, plan as make_plan
from .trainer import Divergence, History, JaxTrainer, train


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """The JAX side's configuration (the tutorial's defaults), validated on construction; ``backprop_steps``: k2
    of TBPTT(num_steps, k2), None for num_steps; ``remat``: see `Plan`."""

    num_classes: int = 2
    state_size: int = 4
    batch_size: int = 200
    num_steps: int = 5
    learning_rate: float = 0.1
    epochs: int = 1
    data_size: int = 1_000_000
    seed: int = 0
    log_every: int = 100
    backprop_steps: int | None = None
    remat: bool = False

    def __post_init__(self):
        # Messages start with the field's name: the CLI puts its option there.
        for name in ("num_classes", "state_size", "batch_size", "num_steps", "epochs", "data_size", "log_every"):
            task.check_int(name, getattr(self, name))
        task.check_int("seed", self.seed, minimum=0)
        task.check_int("data_size", self.data_size, 9, " (longer than the largest lag 8)")
        optim.check_positive("learning_rate", self.learning_rate)
        if self.batch_size > self.data_size:
            raise ValueError(f"batch_size {self.batch_size} is larger than the data ({self.data_size} points)")
        try:
            task.check_windowing(self.data_size, self.batch_size, self.num_steps)
        except ValueError as err:
            raise ValueError(f"batch_size/num_steps: {err}") from None
        if self.backprop_steps is not None:
            checks.backprop_steps("", self.backprop_steps, self.num_steps, self.data_size // self.batch_size)
        if not isinstance(self.remat, bool):
            raise ValueError(f"remat must be True or False, got {self.remat!r}")

    @property
    def epoch_size(self) -> int:
        return task.epoch_size(self.data_size, self.batch_size, self.num_steps)

    @property
    def window_steps(self) -> int:
        """k2: the steps each update backpropagates through."""
        return self.num_steps if self.backprop_steps is None else int(self.backprop_steps)

    def plan(self, runs: int = 1, backend: str | None = None, tune: bool | None = None) -> Plan:
        return make_plan(self.state_size, self.batch_size, self.num_steps, self.backprop_steps, runs, self.remat,
                         self.num_classes, backend, tune)

    def memory(self, runs: int = 1, backend: str | None = None, epochs: int = 2) -> Memory:
        """`Plan.memory` of ``runs`` at once with ``epochs`` of windows held."""
        return self.plan(runs, backend, tune=False).memory(self.data_size, epochs)


class FitResult(NamedTuple):
    params: Params
    opt_state: object         # Adagrad's state
    step_losses: np.ndarray   # f32[epochs, epoch_size]
    avg_losses: np.ndarray    # f64[epochs * (epoch_size // log_every)]: the tutorial's log lines
    epoch_seconds: list
    diverged: Divergence | None = None   # set on `TrainingDiverged`'s result
    build_seconds: float | None = None

    @property
    def final_loss(self) -> float:
        """The last log line."""
        return float(self.avg_losses[-1]) if len(self.avg_losses) else float(np.mean(self.step_losses[-1]))


class TrainingDiverged(RuntimeError):
    """`fit` at a non-finite loss or update: ``epoch``, ``step`` (0-based), the last finite ``params`` and
    ``opt_state``, ``result``."""

    def __init__(self, d: Divergence, result: FitResult, learning_rate: float):
        self.epoch, self.step, self.result = d.epoch, d.step, result
        self.params, self.opt_state = result.params, result.opt_state
        super().__init__(f"training diverged at epoch {d.epoch}, step {d.step} (0-based): loss {d.loss} or the update "
                         f"is not finite; kept the last finite parameters (learning_rate={learning_rate} too large?)")


def running_averages(step_losses: np.ndarray, every: int = 100) -> np.ndarray:
    """The tutorial's log lines: per epoch the mean of each ``every`` steps, ``[epochs, epoch_size] -> [epochs *
    (epoch_size // every)]``."""
    step_losses = np.atleast_2d(np.asarray(step_losses, np.float64))
    every = min(every, step_losses.shape[1])
    blocks = step_losses.shape[1] // every
    return step_losses[:, : blocks * every].reshape(step_losses.shape[0], blocks, every).mean(axis=2).reshape(-1)


def fit(config: FitConfig = FitConfig(), data=None, params: Params | None = None,
        callback: Callable[[int, np.ndarray], None] | None = None, checkpoint: str | Path | None = None,
        resume: str | Path | None = None) -> FitResult:
    """Train ``config.epochs`` epochs on ``data``, ``(x, y)`` ints ``[epochs, data_size]`` (None: the seed's), from
    ``params`` (None: the seed's); ``callback(epoch, losses)`` and a ``checkpoint`` after each; ``resume`` from a
    checkpoint of this config. `TrainingDiverged` at a non-finite loss or update; `MemoryLimitError` before
    anything is allocated if the config does not fit."""
    if not isinstance(config, FitConfig):
        raise TypeError(f"fit: config must be a FitConfig, got {type(config).__name__}")
    c = config
    memory.check(c, lambda **changes: dataclasses.replace(c, **changes).memory(), memory.available(jax.devices()[0]))
    if data is not None:
        try:
            x, y = data
        except (TypeError, ValueError):
            raise TypeError("fit: data must be None or a pair (x, y) of int arrays [epochs, data_size]") from None
        try:
            data = task.check_rows(x, y, c.num_classes, shape=(c.epochs, c.data_size))
        except ValueError as err:
            raise ValueError(f"fit: data {err}") from None
    rows = None if data is None else [ckpt_io.data_hash(x, y) for x, y in zip(*data)]
    history, acc, plan = History(), None, None
    if resume is not None:
        if params is not None:
            raise ValueError("fit: pass either params or resume, not both (the checkpoint holds the parameters)")
        saved = ckpt_io.load(resume)
        _check_resumable(saved, c, resume, rows)
        params, acc, history = saved.params, saved.accumulators, History.from_checkpoint(saved)
        plan = Plan.from_record(saved.meta["plan"]) if "plan" in saved.meta else None
    else:
        if params is None:
            params = glorot_params(c.num_classes, c.state_size, c.seed)
        n, d = check_params(params, "fit")
        if (n, d) != (c.num_classes, c.state_size):
            raise ValueError(f"fit: params are for num_classes={n}, state_size={d}, but the config has "
                             f"num_classes={c.num_classes}, state_size={c.state_size}")
        checks.finite("fit", "params", params)
    trainer = JaxTrainer(c, params, acc, plan=plan or c.plan())

    def after_epoch(history: History, trainer: JaxTrainer) -> None:
        if checkpoint is not None:
            meta = {"writer": "fit", "data_rows": rows[: history.epochs] if rows else ["generated"]}
            ckpt_io.save(checkpoint, history.checkpoint(dataclasses.asdict(c), trainer, meta))
        if callback is not None:
            callback(history.epochs - 1, history.step_losses[-1])

    epochs = task.epoch_windows(c, data, start=history.epochs, dtype=trainer.window_dtype)
    history = train(trainer, epochs, history, after_epoch)
    step_losses = history.losses()
    result = FitResult(trainer.params, trainer.opt_state, step_losses, running_averages(step_losses, c.log_every),
                       history.epoch_seconds, history.diverged[0], history.build_seconds)
    if result.diverged is not None:
        raise TrainingDiverged(result.diverged, result, c.learning_rate)
    return result


def _check_resumable(saved, c: FitConfig, path, rows) -> None:
    """Only the same training continues: same config (but ``epochs``), same data."""
    if saved.meta.get("writer") != "fit":
        raise ValueError(f"resume: {path} was written by {saved.meta.get('writer')!r}, not by fit")
    detail = ckpt_io.differences(saved.config, dataclasses.asdict(c), free=("epochs",))
    if detail:
        raise ValueError(f"resume: {path} was written by another config ({detail}); refusing to mix them")
    if saved.epochs_done > c.epochs:
        raise ValueError(f"resume: {path} holds {saved.epochs_done} epochs, more than config.epochs={c.epochs}")
    if saved.step_losses.shape != (saved.epochs_done, c.epoch_size):
        raise ValueError(f"resume: {path}: step_losses has shape {saved.step_losses.shape}, expected "
                         f"{(saved.epochs_done, c.epoch_size)}")
    if saved.meta["data_rows"] != (["generated"] if rows is None else rows[: saved.epochs_done]):
        raise ValueError(f"resume: {path} was trained on other data than its first {saved.epochs_done} epoch(s) here")
