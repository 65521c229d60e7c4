"""One interface over every implementation: build it, train it epoch by epoch, read its parameters.

`make_trainer` returns a `JaxTrainer` (``jax_rnn``: the whole epoch is one compiled ``lax.scan``) or
a `TfTrainer` (``tf_rnn``: one ``session.run`` / ``tf.function`` call per window). Both take the same
numpy inputs (``x_windows, y_windows: int32[epoch_size, batch_size, num_steps]``) and start every epoch
from the zero state, as the tutorial does; the optimizer state is carried across epochs.

Timing, the same for both (seconds, ``time.perf_counter``):

* ``build_seconds``: JAX: ``lower`` + ``compile`` of the epoch (ahead of time, before any data);
  TF1: graph construction, session creation, variable initialisation; tf2: variable creation + tracing.
* `EpochStats`: ``seconds``: the epoch, inputs given as numpy up to the losses back as numpy (JAX: the
  transfer to the device, the compiled call and ``block_until_ready``; TF: the Python loop of steps);
  ``first_step_seconds``: TF only, the first step (TF1's first ``session.run`` optimises the graph).

``train_epoch(x_windows, y_windows, progress)``: ``progress(n)``, if given, is called with the number
of steps just completed (TF: 1 after every step; JAX: ``epoch_size`` once, at the end of the call).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import numpy as np

from .config import Config, is_tf, tf_name


class EpochStats(NamedTuple):
    losses: np.ndarray                    # float32[epoch_size]: each window's loss before its update
    seconds: float                        # wall time of the epoch (see the module docstring)
    first_step_seconds: Optional[float]   # TF: the first step of the epoch; JAX: None (one call)


class JaxTrainer:
    """``jax_rnn`` on one device, the epoch compiled ahead of time for the config's window shape."""

    def __init__(self, config: Config, params: dict, device: str = "cpu"):
        import jax
        import jax_rnn

        from .environment import jax_device

        self.impl, self.config = "jax", config
        self._jax, self._device = jax, jax_device(device)
        self._optimizer = jax_rnn.adagrad(config.learning_rate)
        start = time.perf_counter()
        self._params = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), params), self._device)
        self._opt_state = jax.device_put(self._optimizer.init(self._params), self._device)
        shape = (config.epoch_size, config.batch_size, config.num_steps)
        spec = jax.ShapeDtypeStruct(shape, np.int32, sharding=jax.sharding.SingleDeviceSharding(self._device))
        self._epoch = jax_rnn.train_epoch.lower(self._params, self._opt_state, spec, spec, self._optimizer).compile()
        self.build_seconds = time.perf_counter() - start

    def train_epoch(self, x_windows: np.ndarray, y_windows: np.ndarray,
                    progress: Optional[Callable[[int], None]] = None) -> EpochStats:
        jax = self._jax
        start = time.perf_counter()
        xw, yw = jax.device_put((np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32)), self._device)
        self._params, self._opt_state, _, losses = self._epoch(self._params, self._opt_state, xw, yw)
        losses = np.asarray(jax.block_until_ready(losses), np.float32)
        seconds = time.perf_counter() - start
        if progress is not None:
            progress(len(losses))
        return EpochStats(losses, seconds, None)

    def get_params(self) -> dict:
        return self._jax.tree.map(lambda a: np.asarray(a, np.float32), self._params)

    def close(self) -> None:
        pass


class TfTrainer:
    """One of ``tf_rnn``'s four versions (raw, static, dynamic, tf2) behind the same interface."""

    def __init__(self, impl: str, config: Config, params: dict, device: str = "cpu"):
        import tf_rnn

        self.impl, self.config = impl, config
        model_config = tf_rnn.ModelConfig(config.num_classes, config.state_size, config.batch_size,
                                          config.num_steps, config.learning_rate)
        self._model = tf_rnn.build(tf_name(impl), model_config, params=params, seed=config.seed, device=device)
        self.build_seconds = self._model.build_seconds

    def train_epoch(self, x_windows: np.ndarray, y_windows: np.ndarray,
                    progress: Optional[Callable[[int], None]] = None) -> EpochStats:
        tick = None if progress is None else (lambda k: progress(1))
        r = self._model.train_epoch(x_windows, y_windows, state=None, progress=tick)
        return EpochStats(np.asarray(r.losses, np.float32), r.seconds, r.first_step_seconds)

    def get_params(self) -> dict:
        return self._model.get_params()

    def close(self) -> None:
        self._model.close()


def make_trainer(impl: str, config: Config, params: dict, device: str = "cpu"):
    """Build implementation ``impl`` (a CLI name) from ``params`` (shared layout) on ``device``."""
    if is_tf(impl):
        return TfTrainer(impl, config, params, device)
    return JaxTrainer(config, params, device)
