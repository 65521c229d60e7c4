"""r2rt's vanilla RNN in functional JAX: `fit` for the whole experiment, `train_epoch` and `train_step` for one's own
loop. Importing changes no JAX setting."""

from . import checkpoint, data, memory
from .cache import clear_compile_cache, enable_compile_cache
from .fit import FitConfig, FitResult, TrainingDiverged, fit, running_averages
from .memory import MemoryLimitError
from .model import Params, cell, check_params, forward, glorot_params, init_params, logits, loss, rnn, zero_state
from .optim import adagrad
from .plan import Memory, Plan, plan
from .train import GuardedEpoch, run_mesh, train_epoch, train_epoch_guarded, train_runs, train_step
from .trainer import Divergence, History, JaxTrainer, train

__all__ = [
    "Divergence", "FitConfig", "FitResult", "GuardedEpoch", "History", "JaxTrainer", "Memory", "MemoryLimitError",
    "Params", "Plan", "TrainingDiverged", "adagrad", "cell", "check_params", "checkpoint", "clear_compile_cache", "data",
    "enable_compile_cache", "fit", "forward", "glorot_params", "init_params", "logits", "loss", "memory", "plan", "rnn",
    "run_mesh", "running_averages", "train", "train_epoch", "train_epoch_guarded", "train_runs", "train_step",
    "zero_state",
]
