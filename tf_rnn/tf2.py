"""The same model, trained the TensorFlow 2 way: ``tf.Variable``s and a ``tf.function`` train step.

The model and training of r2rt's "Recurrent Neural Networks in Tensorflow I" (see ../shared/TASK.md):
``S_t = tanh(concat([onehot(x_t), S_{t-1}]) @ W + b)``, ``logits_t = S_t @ U + b_p``, loss the mean
sparse softmax cross-entropy over batch and time, one Adagrad step per window, the state carried in
Python from one window to the next (a tensor, never converted to numpy inside the loop).

TBPTT(k1, k2 > k1) (``ModelConfig.backprop_steps``, see `tf_rnn.base`): the same loop over the k2 steps
of the window, the window's start position a further int32 scalar argument of the traced functions, the
state kept through the absent steps (``graph.present``, ``graph.keep_absent``), the loss over the last
k1 steps, and the state after step k1 - 1 returned for the next window.

Adagrad: applied with ``tf.raw_ops.ResourceApplyAdagrad``, the kernel that TF1's ``AdagradOptimizer``
runs, on accumulators created at 0.1: ``acc += g*g; var -= lr * g / sqrt(acc)``, no epsilon. (Keras 3's
``Adagrad`` adds ``epsilon=1e-7`` and is deliberately not used.)

``jit_compile``: off (`JIT_COMPILE` = False), because it was slower here. Measured during development
on the default config (batch 200, num_steps 5, state 4, 1000 steps per epoch), 2 shared CPU cores,
TF 2.21, two runs: seconds per epoch, median of 3 / 5 epochs, ``jit_compile=False`` 0.59 / 0.73,
``jit_compile=True`` 0.64 / 1.05, and XLA adds 0.8-1.4 s of compilation to the first step (0.06 s
without). The model is so small that each step is dominated by per-call overhead, which XLA does not
remove. Pass ``jit_compile=True`` to `EagerModel` to try it (e.g. on a GPU); ``rnn-compare bench --impl
tf2`` times the default.

Device: the variables are created on the chosen device and the train and loss functions are traced
inside ``tf.device`` of it, so the placement is part of the traced graph and no step enters a device
scope.

Timing: ``build_seconds`` = variable creation + tracing the train and loss functions
(``get_concrete_function``). The first call (function instantiation and, with XLA, compilation) is
counted in ``EpochResult.first_step_seconds``.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ._env import import_tensorflow
from .base import Model
from .config import ModelConfig, Params, check_accumulators, check_params
from .graph import device_spec, keep_absent, present

tf = import_tensorflow()

# Measured during development on the default config; figures in the module docstring.
JIT_COMPILE = False

# The shared layout's (scope, key) pairs, in the order of the flat variable and accumulator lists.
LAYOUT = (("rnn_cell", "W"), ("rnn_cell", "b"), ("softmax", "W"), ("softmax", "b"))


def forward(params: dict, x, y, state, config: ModelConfig, start=None):
    """``(total_loss, next_state)`` for ``x, y: int32[batch, window_steps]``, ``state: float32[batch, d]``;
    ``start`` (TBPTT only, else None): int32 scalar, the window's stream position. The loss is over the
    last ``num_steps`` steps, ``next_state`` the state after the first ``num_steps``."""
    x_one_hot = tf.one_hot(x, config.num_classes)
    W, b = params["rnn_cell"]["W"], params["rnn_cell"]["b"]
    U, b_p = params["softmax"]["W"], params["softmax"]["b"]
    k1, steps = config.num_steps, config.window_steps
    present_steps = None if start is None else present(start, steps)
    losses = []
    for t in range(steps):  # unrolled at trace time, like the tutorial's static graph
        new_state = tf.tanh(tf.matmul(tf.concat([x_one_hot[:, t], state], 1), W) + b)
        state = new_state if present_steps is None else keep_absent(present_steps[t], new_state, state)
        if t == k1 - 1:
            next_state = state
        if t >= steps - k1:
            logits = tf.matmul(state, U) + b_p
            losses.append(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y[:, t], logits=logits))
    return tf.reduce_mean(tf.stack(losses)), next_state


class EagerModel(Model):
    """The ``tf2`` version: variables + a compiled train step; no graph, no session."""

    def __init__(self, config: ModelConfig, params: Optional[Params] = None, seed: int = 0,
                 device: str = "cpu", jit_compile: Optional[bool] = None) -> None:
        self.name, self.config = "tf2", config
        self.jit_compile = JIT_COMPILE if jit_compile is None else bool(jit_compile)
        checked = None if params is None else check_params(params, config)
        self._device, _ = device_spec(device)
        start = time.perf_counter()
        with tf.device(self._device):
            initial = checked if checked is not None else self._initial_params(seed)
            self._params = {scope: {key: tf.Variable(value, name=f"{scope}/{key}", dtype=tf.float32)
                                    for key, value in group.items()} for scope, group in initial.items()}
            self._flat = [self._params[scope][key] for scope, key in LAYOUT]
            self._accumulators = [tf.Variable(tf.fill(v.shape, 0.1), name=v.name.split(":")[0] + "/Adagrad")
                                  for v in self._flat]
            self._lr = tf.constant(config.learning_rate, tf.float32)
        spec = (tf.TensorSpec([config.batch_size, config.window_steps], tf.int32),) * 2 + (
            tf.TensorSpec([config.batch_size, config.state_size], tf.float32),)
        if config.window_steps > config.num_steps:
            spec += (tf.TensorSpec([], tf.int32),)  # the window's start position
        self._train = tf.function(self._train_step, jit_compile=self.jit_compile).get_concrete_function(*spec)
        self._loss = tf.function(self._loss_step).get_concrete_function(*spec)
        self.build_seconds = time.perf_counter() - start

    def _initial_params(self, seed: int) -> Params:
        """Glorot-uniform weights from ``seed`` (stateless TF draws), zero biases."""
        out: Params = {}
        for i, (scope, leaves) in enumerate(self.config.param_shapes().items()):
            fan_in, fan_out = leaves["W"]
            limit = (6.0 / (fan_in + fan_out)) ** 0.5
            W = tf.random.stateless_uniform(leaves["W"], seed=[seed, i], minval=-limit, maxval=limit)
            out[scope] = {"W": W.numpy(), "b": np.zeros(leaves["b"], np.float32)}
        return out

    def _train_step(self, x, y, state, *start):  # start: TBPTT only (a concrete function has no defaults)
        with tf.device(self._device):  # at trace time: the placement is baked into the function
            with tf.GradientTape() as tape:
                loss, final_state = forward(self._params, x, y, state, self.config, *start)
            grads = tape.gradient(loss, self._flat)
            for var, acc, grad in zip(self._flat, self._accumulators, grads):
                tf.raw_ops.ResourceApplyAdagrad(var=var.handle, accum=acc.handle, lr=self._lr, grad=grad)
            return loss, final_state

    def _loss_step(self, x, y, state, *start):
        with tf.device(self._device):
            return forward(self._params, x, y, state, self.config, *start)

    def _prepare_state(self, state):
        with tf.device(self._device):
            return tf.constant(state)

    def _step(self, x, y, state, *start):
        loss, final_state = self._train(x, y, state, *start)
        return loss.numpy(), final_state

    def _forward(self, x, y, state, *start):
        loss, final_state = self._loss(x, y, state, *start)
        return loss.numpy(), final_state.numpy()

    def get_params(self) -> Params:
        return {scope: {key: v.numpy().astype(np.float32) for key, v in group.items()}
                for scope, group in self._params.items()}

    def get_accumulators(self) -> Params:
        out: Params = {"rnn_cell": {}, "softmax": {}}
        for (scope, key), acc in zip(LAYOUT, self._accumulators):
            out[scope][key] = acc.numpy().astype(np.float32)
        return out

    def set_accumulators(self, accumulators: Params) -> None:
        checked = check_accumulators(accumulators, self.config)
        for (scope, key), acc in zip(LAYOUT, self._accumulators):
            acc.assign(checked[scope][key])

    def set_params(self, params: Params) -> None:
        checked = check_params(params, self.config)
        for scope, group in self._params.items():
            for key, var in group.items():
                var.assign(checked[scope][key])
