"""rnn-scan's functional JAX RNN: r2rt's vanilla-RNN tutorial with ``lax.scan``, ``jit`` and ``vmap``::

    import jax_rnn
    params = jax_rnn.glorot_params(2, 4, seed=0)
    opt = jax_rnn.adagrad(0.1)                                   # TF1 Adagrad semantics
    plan = jax_rnn.plan(state_size=4, batch_size=200, num_steps=5)   # the program for this cell
    params, opt_state, state, losses = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt,
                                                           plan=plan)

or ``jax_rnn.fit(jax_rnn.FitConfig(num_steps=10, state_size=16, epochs=5))``. Importing changes no JAX setting.
"""

from . import checkpoint, data
from .cache import clear_compile_cache, enable_compile_cache
from .fit import FitConfig, FitResult, TrainingDiverged, fit, running_averages
from .model import Params, cell, check_params, forward, glorot_params, init_params, logits, loss, rnn, zero_state
from .optim import adagrad
from .plan import Plan, plan
from .train import GuardedEpoch, run_mesh, train_epoch, train_epoch_guarded, train_runs, train_step
from .trainer import Divergence, History, JaxTrainer, train

__all__ = [
    "Divergence", "FitConfig", "FitResult", "GuardedEpoch", "History", "JaxTrainer", "Params", "Plan",
    "TrainingDiverged", "adagrad", "cell", "check_params", "checkpoint", "clear_compile_cache", "data",
    "enable_compile_cache", "fit", "forward", "glorot_params", "init_params", "logits", "loss", "plan", "rnn",
    "run_mesh", "running_averages", "train", "train_epoch", "train_epoch_guarded", "train_runs", "train_step",
    "zero_state",
]
