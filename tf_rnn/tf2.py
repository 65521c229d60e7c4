"""The ``tf2`` version: ``tf.Variable``s and a ``tf.function`` train step, the TensorFlow 2 way.

`forward` unrolls the model of `tf_rnn.config` at trace time like the raw graph (TBPTT: the window's
start is a further int32 argument); the state is carried in Python, window to window, as a tensor.
The variables live on the chosen device and the functions are traced inside its ``tf.device``, so no
step enters a device scope.

Adagrad: TF1's ``AdagradOptimizer`` kernel, ``tf.raw_ops.ResourceApplyAdagrad``, on accumulators
created at 0.1: ``acc += g*g; var -= lr * g / sqrt(acc)``, no epsilon (Keras 3's ``Adagrad`` adds
``epsilon=1e-7``).

``jit_compile`` is off (`JIT_COMPILE`): slower here. On the default config (1000 steps per epoch), 2
shared CPU cores, TF 2.21, two runs, median seconds per epoch of 3 / 5 epochs: 0.59 / 0.73 without,
0.64 / 1.05 with, plus 0.8-1.4 s of XLA compilation on the first step (0.06 s without). Each step is
per-call overhead, which XLA does not remove. Try ``EagerModel(..., jit_compile=True)`` (e.g. on a
GPU); ``rnn-compare bench --impl tf2`` times the default.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from ._env import import_tensorflow
from .base import Model
from .config import LAYOUT, ModelConfig, Params, check_params
from .graph import device_spec, keep_absent, present

tf = import_tensorflow()

JIT_COMPILE = False  # slower here: figures in the module docstring


def forward(params: dict, x, y, state, config: ModelConfig, start=None):
    """``(total_loss, next_state)`` for ``x, y: int32[batch, window_steps]``, ``state: float32[batch, d]``,
    ``params: {(scope, key): variable}`` and ``start`` (TBPTT only, else None), as in the graphs."""
    x_one_hot = tf.one_hot(x, config.num_classes)
    W, b, U, b_p = (params[key] for key in LAYOUT)
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
    """The ``tf2`` version (see the module docstring); ``jit_compile`` None means `JIT_COMPILE`."""

    def __init__(self, config: ModelConfig, params: Optional[Params] = None, seed: int = 0,
                 device: str = "cpu", jit_compile: Optional[bool] = None) -> None:
        self.name, self.config = "tf2", config
        self.jit_compile = JIT_COMPILE if jit_compile is None else bool(jit_compile)
        checked = None if params is None else check_params(params, config)
        self._device, _ = device_spec(device)
        start = time.perf_counter()
        with tf.device(self._device):
            initial = checked if checked is not None else self._initial_params(seed)
            variables = {(scope, key): tf.Variable(initial[scope][key], name=f"{scope}/{key}", dtype=tf.float32)
                         for scope, key in LAYOUT}
            accumulators = {key: tf.Variable(tf.fill(v.shape, 0.1), name=v.name.split(":")[0] + "/Adagrad")
                            for key, v in variables.items()}
            self._variables = {"params": variables, "accumulators": accumulators}
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
                loss, final_state = self._loss_step(x, y, state, *start)
            variables = list(self._variables["params"].values())
            grads = tape.gradient(loss, variables)
            for var, acc, grad in zip(variables, self._variables["accumulators"].values(), grads):
                tf.raw_ops.ResourceApplyAdagrad(var=var.handle, accum=acc.handle, lr=self._lr, grad=grad)
            return loss, final_state

    def _loss_step(self, x, y, state, *start):
        with tf.device(self._device):
            return forward(self._variables["params"], x, y, state, self.config, *start)

    def _prepare_state(self, state):
        with tf.device(self._device):
            return tf.constant(state)

    def _step(self, x, y, state, *start):
        loss, final_state = self._train(x, y, state, *start)
        return loss.numpy(), final_state

    def _forward(self, x, y, state, *start):
        loss, final_state = self._loss(x, y, state, *start)
        return loss.numpy(), final_state.numpy()

    def _read(self, kind):
        return {key: v.numpy() for key, v in self._variables[kind].items()}

    def _write(self, kind, values):
        for (scope, key), v in self._variables[kind].items():
            v.assign(values[scope][key])
