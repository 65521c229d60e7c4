"""The ``tf2`` version: ``tf.Variable``s and a ``tf.function`` step with TF1's Adagrad kernel (accumulators
from 0.1, no epsilon, unlike Keras'). ``jit_compile`` is off: a step is mostly per-call overhead, which XLA
does not remove."""

import time

from ._env import import_tensorflow
from .base import LAYOUT, Model, ModelConfig, Params
from .graph import device_spec, raw_cell, step_losses, unroll

tf = import_tensorflow()


class EagerModel(Model):
    """The ``tf2`` version from ``params``."""

    def __init__(self, config: ModelConfig, params: Params, device: str = "cpu", jit_compile: bool = False):
        self.name, self.config = "tf2", config
        self._device, _ = device_spec(device)
        n, d = config.num_classes, config.state_size
        start = time.perf_counter()
        with tf.device(self._device):
            shapes = ([n + d, d], [d], [d, n], [n])
            self._variables = {kind: {key: tf.Variable(tf.fill(shape, value), name="/".join(key) + suffix)
                                      for key, shape in zip(LAYOUT, shapes)}
                               for kind, value, suffix in (("params", 0.0, ""), ("accumulators", 0.1, "/Adagrad"))}
        self.set_params(params)
        b_size, k2 = config.batch_size, config.window_steps
        spec = [tf.TensorSpec([b_size, k2], tf.int32)] * 2 + [tf.TensorSpec([b_size, d], tf.float32)]
        if k2 > config.num_steps:
            spec.append(tf.TensorSpec([], tf.int32))  # the window's start position
        self._train = tf.function(self._train_step, jit_compile=jit_compile).get_concrete_function(*spec)
        self._loss = tf.function(self._loss_step).get_concrete_function(*spec)
        self.build_seconds = time.perf_counter() - start

    def _train_step(self, x, y, state, *start):
        with tf.device(self._device):  # at trace time: the placement is part of the function
            with tf.GradientTape() as tape:
                loss, final_state = self._loss_step(x, y, state, *start)
            variables = list(self._variables["params"].values())
            grads = tape.gradient(loss, variables)
            for var, acc, grad in zip(variables, self._variables["accumulators"].values(), grads):
                tf.raw_ops.ResourceApplyAdagrad(var=var.handle, accum=acc.handle, lr=self.config.learning_rate,
                                                grad=grad)
            return loss, final_state

    def _loss_step(self, x, y, state, *start):
        W, b, U, b_p = self._variables["params"].values()
        with tf.device(self._device):
            present_steps = start[0] + tf.range(self.config.window_steps) >= 0 if start else None
            inputs = tf.unstack(tf.one_hot(x, self.config.num_classes), axis=1)
            outputs = unroll(raw_cell(W, b), inputs, state, present_steps)
            return step_losses(outputs, y, U, b_p, self.config)

    def _step(self, *args):
        loss, state = self._train(*args)
        return loss.numpy(), state

    def _forward(self, *args):
        return [t.numpy() for t in self._loss(*args)]

    def _read(self, kind):
        return {key: v.numpy() for key, v in self._variables[kind].items()}

    def _write(self, kind, values):
        for (scope, key), v in self._variables[kind].items():
            v.assign(values[scope][key])
