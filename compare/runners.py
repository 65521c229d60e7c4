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
  ``first_step_seconds``: TF only, the first step (TF1's first ``session.run`` optimises the graph);
  ``seconds`` includes it. `compare.run` moves the first epoch's first step into ``compile_seconds``.

``train_epoch(x_windows, y_windows, progress)``: ``progress(n)``, if given, is called with the number
of steps just completed (TF: 1 after every step; JAX: ``epoch_size`` once, at the end of the call).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple, Optional

import jax
import jax_rnn
import numpy as np

from .config import Config, is_tf, tf_name
from .environment import jax_device


class EpochStats(NamedTuple):
    losses: np.ndarray                    # float32[epoch_size]: each window's loss before its update
    seconds: float                        # wall time of the epoch (see the module docstring)
    first_step_seconds: Optional[float]   # TF: the first step of the epoch; JAX: None (one call)
    diverged_at: Optional[int] = None     # None, or the first window whose loss/update was not finite: the
                                          # trainer then holds the last finite parameters (see train_epoch_guarded)


class JaxTrainer:
    """``jax_rnn`` on one device, the epoch compiled ahead of time for the config's window shape."""

    def __init__(self, config: Config, params: dict, device: str = "cpu", accumulators: Optional[dict] = None):

        self.impl, self.config = "jax", config
        self._jax, self._device = jax, jax_device(device)
        self._optimizer = jax_rnn.adagrad(config.learning_rate)
        start = time.perf_counter()
        self._params = jax.device_put(jax.tree.map(lambda a: np.asarray(a, np.float32), params), self._device)
        opt_state = self._optimizer.init(self._params)
        if accumulators is not None:
            opt_state = jax_rnn.optim.with_accumulators(opt_state, jax.tree.map(lambda a: np.asarray(a, np.float32),
                                                                                accumulators))
        self._opt_state = jax.device_put(opt_state, self._device)
        shape = (config.epoch_size, config.batch_size, config.num_steps)
        spec = jax.ShapeDtypeStruct(shape, np.int32, sharding=jax.sharding.SingleDeviceSharding(self._device))
        self._epoch = jax_rnn.train_epoch_guarded.lower(self._params, self._opt_state, spec, spec, self._optimizer,
                                                        backprop_steps=config.backprop_steps).compile()
        self.build_seconds = time.perf_counter() - start

    def train_epoch(self, x_windows: np.ndarray, y_windows: np.ndarray,
                    progress: Optional[Callable[[int], None]] = None) -> EpochStats:
        jax = self._jax
        start = time.perf_counter()
        xw, yw = jax.device_put((np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32)), self._device)
        out = self._epoch(self._params, self._opt_state, xw, yw)
        losses = np.asarray(jax.block_until_ready(out.losses), np.float32)
        seconds = time.perf_counter() - start
        self._params, self._opt_state = out.params, out.opt_state
        if progress is not None:
            progress(len(losses))
        diverged = int(out.diverged_at)
        return EpochStats(losses, seconds, None, diverged if diverged >= 0 else None)

    def get_params(self) -> dict:
        return self._jax.tree.map(lambda a: np.asarray(a, np.float32), self._params)

    def get_accumulators(self) -> dict:
        """Adagrad's accumulators in the shared layout (optax's ``sum_of_squares``), float32 numpy."""
        return self._jax.tree.map(lambda a: np.asarray(a, np.float32), jax_rnn.optim.accumulators(self._opt_state))

    def close(self) -> None:
        pass


class TfTrainer:
    """One of ``tf_rnn``'s four versions (raw, static, dynamic, tf2) behind the same interface."""

    def __init__(self, impl: str, config: Config, params: dict, device: str = "cpu",
                 accumulators: Optional[dict] = None, deterministic: bool = False):
        import tf_rnn

        self.impl, self.config = impl, config
        model_config = tf_rnn.ModelConfig(config.num_classes, config.state_size, config.batch_size,
                                          config.num_steps, config.learning_rate, config.backprop_steps)
        self._model = tf_rnn.build(tf_name(impl), model_config, params=params, seed=config.seed, device=device,
                                   deterministic=deterministic)
        if accumulators is not None:
            self._model.set_accumulators(accumulators)
        self.build_seconds = self._model.build_seconds

    def train_epoch(self, x_windows: np.ndarray, y_windows: np.ndarray,
                    progress: Optional[Callable[[int], None]] = None) -> EpochStats:
        tick = None if progress is None else (lambda k: progress(1))
        r = self._model.train_epoch(x_windows, y_windows, state=None, progress=tick)
        return EpochStats(np.asarray(r.losses, np.float32), r.seconds, r.first_step_seconds, r.diverged_at)

    def get_params(self) -> dict:
        return self._model.get_params()

    def get_accumulators(self) -> dict:
        return self._model.get_accumulators()

    def close(self) -> None:
        self._model.close()


def make_trainer(impl: str, config: Config, params: dict, device: str = "cpu", accumulators: Optional[dict] = None,
                 deterministic: bool = False):
    """Build implementation ``impl`` (a CLI name) from ``params`` (shared layout) on ``device``;
    ``accumulators``: Adagrad state to start from (a resumed run; default 0.1 everywhere);
    ``deterministic``: TensorFlow's op determinism (process-wide; JAX on CPU is deterministic anyway)."""
    if is_tf(impl):
        return TfTrainer(impl, config, params, device, accumulators, deterministic)
    return JaxTrainer(config, params, device, accumulators)
