"""rnn-scan's functional JAX RNN: r2rt's vanilla-RNN tutorial with ``lax.scan``, ``jit`` and ``vmap``.

Parameters are a pytree ``{"rnn_cell": {"W", "b"}, "softmax": {"W", "b"}}`` (TensorFlow's layout);
every function is pure. Quick use::

    import jax, jax_rnn
    params = jax_rnn.init_params(jax.random.key(0))
    opt = jax_rnn.adagrad(0.1)                          # TF1 Adagrad semantics
    params, opt_state, state, losses = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt)

or simply ``jax_rnn.fit(jax_rnn.FitConfig(num_steps=10, state_size=16, epochs=5))``. Importing
changes no JAX setting; ``jax_rnn.enable_compile_cache()`` turns on JAX's persistent compilation cache.
"""

from . import checkpoint, data, driver
from .compile_cache import clear_compile_cache, enable_compile_cache
from .fit import Divergence, FitConfig, FitResult, TrainingDiverged, fit, running_averages
from .model import (Params, batch_last_for, check_params, glorot_params, init_params, logits, loss, loss_batch_last,
                    loss_window, param_shapes, rnn, rnn_cell, value_and_grad_window, zero_state)
from .optim import adagrad
from .parallel import run_mesh, shard_runs, train_runs_sharded
from .train import GuardedEpoch, train_epoch, train_epoch_guarded, train_runs, train_step

__all__ = [
    "Divergence", "FitConfig", "FitResult", "GuardedEpoch", "Params", "TrainingDiverged", "adagrad",
    "batch_last_for", "check_params", "checkpoint", "clear_compile_cache", "data", "driver",
    "enable_compile_cache", "fit", "glorot_params", "init_params", "logits", "loss", "loss_batch_last",
    "loss_window", "param_shapes", "rnn", "rnn_cell", "run_mesh", "running_averages", "shard_runs", "train_epoch",
    "train_epoch_guarded", "train_runs", "train_runs_sharded", "train_step", "value_and_grad_window", "zero_state",
]
