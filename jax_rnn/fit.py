"""`fit`: the tutorial's whole experiment in one call, for users who just want to train.

Example::

    from jax_rnn import FitConfig, fit
    result = fit(FitConfig(num_steps=10, state_size=16, epochs=5))
    print(result.avg_losses[-1])      # ~0.455 once both dependencies are learned
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from . import data as device_data
from .model import Params, check_params, init_params
from .optim import adagrad
from .train import train_epoch


def _check_int(name: str, value, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class FitConfig:
    """Hyperparameters, with the tutorial's defaults; validated on construction.

    ``epoch_size = (data_size // batch_size) // num_steps`` windows (1000 by default); the points that
    do not fill a window are dropped, as in the tutorial.
    """

    num_classes: int = 2
    state_size: int = 4
    batch_size: int = 200
    num_steps: int = 5
    learning_rate: float = 0.1
    epochs: int = 1
    data_size: int = 1_000_000
    seed: int = 0
    log_every: int = 100

    def __post_init__(self):
        for name in ("num_classes", "state_size", "batch_size", "num_steps", "epochs", "data_size", "log_every"):
            _check_int(name, getattr(self, name))
        _check_int("seed", self.seed, minimum=0)
        lr = self.learning_rate
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise ValueError(f"learning_rate must be a finite number > 0, got {lr!r}")
        if self.batch_size * self.num_steps > self.data_size:
            raise ValueError(
                f"batch_size * num_steps = {self.batch_size * self.num_steps} is larger than data_size = "
                f"{self.data_size}: not even one window fits")

    @property
    def epoch_size(self) -> int:
        return (self.data_size // self.batch_size) // self.num_steps


class FitResult(NamedTuple):
    params: Params            # the trained parameters
    opt_state: object         # Adagrad's accumulators
    step_losses: np.ndarray   # f32[epochs, epoch_size]: the loss of every window
    avg_losses: np.ndarray    # f32[epochs * (epoch_size // log_every)]: the tutorial's log lines
    epoch_seconds: list       # wall time of each epoch (the first includes compilation)

    @property
    def final_loss(self) -> float:
        """Mean of the last ``log_every`` step losses (the tutorial's last log line, computed right)."""
        return float(self.avg_losses[-1]) if len(self.avg_losses) else float(np.mean(self.step_losses[-1]))


def running_averages(step_losses: np.ndarray, every: int = 100) -> np.ndarray:
    """Mean of each consecutive block of ``every`` steps within each epoch: ``[epochs, epoch_size]`` ->
    ``[epochs * (epoch_size // every)]``. (The tutorial summed 101 losses for its first line; not here.)"""
    step_losses = np.atleast_2d(np.asarray(step_losses))
    blocks = step_losses.shape[1] // every
    return step_losses[:, : blocks * every].reshape(step_losses.shape[0], blocks, every).mean(axis=2).reshape(-1)


def fit(config: FitConfig = FitConfig(), data=None, params: Params | None = None,
        callback: Callable[[int, np.ndarray], None] | None = None) -> FitResult:
    """Train for ``config.epochs`` epochs of truncated BPTT, fresh data every epoch, state reset each epoch.

    **Arguments:**
    - ``config``: a `FitConfig`.
    - ``data``: ``None`` to generate each epoch on the device (``jax.random``, keyed by ``config.seed``
      and the epoch number), or ``(x, y)`` int arrays ``[epochs, data_size]`` (one row per epoch,
      e.g. from ``compare.task.gen_data``).
    - ``params``: initial parameters in the shared layout; ``None`` for `init_params` from the seed.
    - ``callback``: called as ``callback(epoch, losses: f32[epoch_size])`` after every epoch.

    **Returns:** a `FitResult`.
    """
    if not isinstance(config, FitConfig):
        raise TypeError(f"config must be a FitConfig, got {type(config).__name__}")
    c = config
    key_init, key_data = jax.random.split(jax.random.key(c.seed))
    if params is None:
        params = init_params(key_init, c.num_classes, c.state_size)
    check_params(params, c.num_classes, c.state_size)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params)
    if data is not None:
        data = _check_data(data, c)
    optimizer = adagrad(c.learning_rate)
    opt_state = optimizer.init(params)
    losses, seconds = [], []
    for epoch in range(c.epochs):
        start = time.perf_counter()
        if data is None:
            x, y = device_data.gen_data(jax.random.fold_in(key_data, epoch), c.data_size)
        else:
            x, y = jnp.asarray(data[0][epoch]), jnp.asarray(data[1][epoch])
        x_windows, y_windows = device_data.windows(x, y, c.batch_size, c.num_steps)
        params, opt_state, _, epoch_losses = train_epoch(params, opt_state, x_windows, y_windows, optimizer)
        epoch_losses = np.asarray(epoch_losses)  # waits for the device
        seconds.append(time.perf_counter() - start)
        losses.append(epoch_losses)
        if callback is not None:
            callback(epoch, epoch_losses)
    step_losses = np.stack(losses)
    return FitResult(params, opt_state, step_losses, running_averages(step_losses, c.log_every), seconds)


def _check_data(data, c: FitConfig):
    try:
        x, y = data
    except (TypeError, ValueError):
        raise TypeError("data must be None or a pair (x, y) of int arrays [epochs, data_size]") from None
    x, y = np.asarray(x), np.asarray(y)
    for name, a in (("x", x), ("y", y)):
        if a.shape != (c.epochs, c.data_size):
            raise ValueError(f"data {name} must have shape [epochs, data_size] = {[c.epochs, c.data_size]}, got {list(a.shape)}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"data {name} must be integers (class indices), got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= c.num_classes):
            raise ValueError(f"data {name} values must lie in [0, {c.num_classes}), got [{a.min()}, {a.max()}]")
    return x, y
