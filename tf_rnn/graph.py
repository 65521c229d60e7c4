"""The tutorial's three TF1-graph versions (raw, static, dynamic), each in its own ``tf.Graph``.

The TensorFlow code of r2rt, "Recurrent Neural Networks in Tensorflow I"
(https://r2rt.com/recurrent-neural-networks-in-tensorflow-i.html), through ``tf.compat.v1``:

* ``raw``: the cell written by hand (`_raw_rnn`) on the one-hot inputs ``tf.unstack``-ed over time, the
  outputs appended in a Python loop; one logits/loss tensor per step, ``total_loss = reduce_mean(losses)``.
* ``static``: ``BasicRNNCell(d)`` + ``static_rnn`` on the same list of per-step inputs.
* ``dynamic``: ``BasicRNNCell(d)`` + ``dynamic_rnn`` on a ``[batch, num_steps, n]`` one-hot tensor.

All three: placeholders ``x, y: int32[batch, num_steps]`` and ``init_state: float32[batch, d]``,
``AdagradOptimizer(lr)`` (initial accumulator 0.1, no epsilon), the state carried window to window
through ``feed_dict``, and a private graph and session, so nothing is added to the caller's default
graph and ``disable_eager_execution`` (global) is not needed.

TBPTT(k1, k2 > k1) (`tf_rnn.base`): ``x, y`` hold k2 steps and an int32 scalar placeholder
``window_start`` the stream position of the first; `present` and `keep_absent` keep the state through
the absent steps, in ``raw``'s loop or in `PresentWrapper` around ``BasicRNNCell``. Logits and loss only
for the last k1 steps; the next state is the one after step k1 - 1. With k2 == k1 none of these ops exist.
"""

from __future__ import annotations

import time
from typing import Optional

from ._env import import_tensorflow, quiet_warnings
from .base import Model
from .config import LAYOUT, ModelConfig, Params, check_params, glorot_uniform_params

tf = import_tensorflow()
v1 = tf.compat.v1


def present(start, steps: int):
    """``bool[steps]``: which steps of a TBPTT window from stream position ``start`` exist (position >= 0)."""
    return start + tf.range(steps) >= 0


def keep_absent(present_t, new_state, state):
    """The state after a step: ``new_state`` where ``present_t`` (bool scalar or ``[batch, 1]``), else ``state``."""
    return tf.where(present_t, new_state, state)


class PresentWrapper(v1.nn.rnn_cell.RNNCell):
    """An ``RNNCell`` whose input is ``(x_t, present_t: bool[batch, 1])``: it runs the wrapped cell on
    ``x_t`` and keeps the state where ``present_t`` is False (cf. TF's ``DropoutWrapper``). It calls the
    cell's ``__call__`` in the caller's scope, so the cell's variables are named as if unwrapped."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    @property
    def state_size(self):
        return self.cell.state_size

    @property
    def output_size(self):
        return self.cell.output_size

    def __call__(self, inputs, state, scope=None):
        x_t, present_t = inputs
        _, new_state = self.cell(x_t, state, scope=scope)
        new_state = keep_absent(present_t, new_state, state)
        return new_state, new_state


def _raw_rnn(rnn_inputs: list, init_state, config: ModelConfig, present_steps=None) -> tuple[list, object]:
    """The tutorial's hand-written cell, ``state = tanh(concat([x_t, state], 1) @ W + b)``, step by step."""
    n, d = config.num_classes, config.state_size
    with v1.variable_scope("rnn_cell"):
        v1.get_variable("W", [n + d, d])
        v1.get_variable("b", [d], initializer=v1.constant_initializer(0.0))

    def rnn_cell(rnn_input, state):
        with v1.variable_scope("rnn_cell", reuse=True):
            W = v1.get_variable("W", [n + d, d])
            b = v1.get_variable("b", [d], initializer=v1.constant_initializer(0.0))
        return tf.tanh(tf.matmul(tf.concat([rnn_input, state], 1), W) + b)

    state = init_state
    rnn_outputs = []
    for t, rnn_input in enumerate(rnn_inputs):
        new_state = rnn_cell(rnn_input, state)
        state = new_state if present_steps is None else keep_absent(present_steps[t], new_state, state)
        rnn_outputs.append(state)
    return rnn_outputs, state


def _softmax_variables(config: ModelConfig):
    with v1.variable_scope("softmax"):
        W = v1.get_variable("W", [config.state_size, config.num_classes])
        b = v1.get_variable("b", [config.num_classes], initializer=v1.constant_initializer(0.0))
    return W, b


def build_graph(name: str, config: ModelConfig, seed: int = 0) -> dict:
    """Build one version's training graph in the *current* default graph; return its endpoints: the
    placeholders ``x``, ``y``, ``init_state`` and ``start`` (None unless TBPTT), ``total_loss``,
    ``final_state`` (the next window's initial state), ``train_step``, ``init`` and ``optimizer``."""
    b_size, n, d = config.batch_size, config.num_classes, config.state_size
    k1, steps = config.num_steps, config.window_steps
    tbptt = steps > k1
    v1.set_random_seed(seed)  # graph-level seed: the Glorot-uniform default initializer of get_variable
    x = v1.placeholder(tf.int32, [b_size, steps], name="input_placeholder")
    y = v1.placeholder(tf.int32, [b_size, steps], name="labels_placeholder")
    init_state = v1.placeholder(tf.float32, [b_size, d], name="init_state")
    start = v1.placeholder(tf.int32, [], name="window_start") if tbptt else None
    present_steps = present(start, steps) if tbptt else None
    x_one_hot = tf.one_hot(x, n)

    if name in ("static", "dynamic"):
        cell = v1.nn.rnn_cell.BasicRNNCell(d)
        if tbptt:  # the cell's input: (one-hot step, present flag: bool[batch, 1])
            cell = PresentWrapper(cell)
            flags = tf.broadcast_to(present_steps[None, :, None], [b_size, steps, 1])
    if name == "dynamic":
        rnn_inputs = (x_one_hot, flags) if tbptt else x_one_hot
        rnn_outputs, final_state = v1.nn.dynamic_rnn(cell, rnn_inputs, initial_state=init_state)
        labels = y
        if tbptt:
            final_state, rnn_outputs, labels = rnn_outputs[:, k1 - 1], rnn_outputs[:, steps - k1:], y[:, steps - k1:]
        W, b = _softmax_variables(config)
        logits = tf.reshape(tf.matmul(tf.reshape(rnn_outputs, [-1, d]), W) + b, [b_size, k1, n])
        losses = v1.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
    else:
        rnn_inputs = tf.unstack(x_one_hot, axis=1)
        if name == "raw":
            rnn_outputs, final_state = _raw_rnn(rnn_inputs, init_state, config, present_steps)
        elif name == "static":
            if tbptt:
                rnn_inputs = list(zip(rnn_inputs, tf.unstack(flags, axis=1)))
            rnn_outputs, final_state = v1.nn.static_rnn(cell, rnn_inputs, initial_state=init_state)
        else:
            raise ValueError(f"unknown graph version {name!r}; expected raw, static or dynamic")
        if tbptt:
            final_state = rnn_outputs[k1 - 1]
        W, b = _softmax_variables(config)
        logits = [tf.matmul(rnn_output, W) + b for rnn_output in rnn_outputs[steps - k1:]]
        y_as_list = tf.unstack(y, num=steps, axis=1)[steps - k1:]
        losses = [v1.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logit)
                  for logit, label in zip(logits, y_as_list)]
    total_loss = tf.reduce_mean(losses)
    optimizer = v1.train.AdagradOptimizer(config.learning_rate)
    train_step = optimizer.minimize(total_loss)
    return dict(x=x, y=y, init_state=init_state, start=start, total_loss=total_loss, final_state=final_state,
                train_step=train_step, init=v1.global_variables_initializer(), optimizer=optimizer)


def device_spec(device: str) -> tuple[str, Optional[dict]]:
    """``"cpu"``/``"gpu"`` -> (TF device string, ConfigProto device_count). Raises if no GPU is seen."""
    if device == "cpu":
        return "/CPU:0", {"GPU": 0}
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("device='gpu' requested, but TensorFlow sees no GPU "
                               "(tf.config.list_physical_devices('GPU') is empty)")
        return "/GPU:0", None
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


class GraphModel(Model):
    """A TF1 version (``raw``, ``static`` or ``dynamic``) in a private graph and session."""

    def __init__(self, name: str, config: ModelConfig, params: Optional[Params] = None, seed: int = 0,
                 device: str = "cpu") -> None:
        self.name, self.config = name, config
        if params is not None:
            checked = check_params(params, config)
        else:  # BasicRNNCell draws its kernel with an unseeded Keras initializer: other weights in every process
            checked = None if name == "raw" else glorot_uniform_params(config, seed)
        device_name, device_count = device_spec(device)
        start = time.perf_counter()
        self.graph = tf.Graph()
        with self.graph.as_default(), tf.device(device_name), quiet_warnings():
            self._ends = build_graph(name, config, seed)
            # Created in layout order: the cell's W and b (static, dynamic: rnn/basic_rnn_cell/kernel and
            # bias), softmax/W, softmax/b; Adagrad's accumulators are their slots.
            variables = dict(zip(LAYOUT, v1.trainable_variables()))
            accumulators = {key: self._ends["optimizer"].get_slot(v, "accumulator") for key, v in variables.items()}
            self._variables = {"params": variables, "accumulators": accumulators}
            # One placeholder and assign op per variable, made now so that setting them never grows the graph.
            names = {key: v.op.name.replace("/", "_") for key, v in variables.items()}
            self._setters = {}
            for kind, prefix in (("params", "set_"), ("accumulators", "set_acc_")):
                feeds = {key: v1.placeholder(tf.float32, v.shape, name=prefix + names[key])
                         for key, v in self._variables[kind].items()}
                self._setters[kind] = feeds, [v.assign(feeds[key]) for key, v in self._variables[kind].items()]
        self.graph.finalize()  # any op created later is a bug: fail loudly
        session_config = v1.ConfigProto(device_count=device_count) if device_count else v1.ConfigProto()
        self.session = v1.Session(graph=self.graph, config=session_config)
        self.session.run(self._ends["init"])
        if checked is not None:
            self.set_params(checked)
        e = self._ends
        feeds = [e["x"], e["y"], e["init_state"]] + ([e["start"]] if e["start"] is not None else [])
        # make_callable skips session.run's per-call fetch/feed parsing: the step is one C++ call.
        self._train_callable = self.session.make_callable([e["total_loss"], e["final_state"], e["train_step"]], feeds)
        self._loss_callable = self.session.make_callable([e["total_loss"], e["final_state"]], feeds)
        self.build_seconds = time.perf_counter() - start

    def _step(self, x, y, state, *start):
        loss, final_state, _ = self._train_callable(x, y, state, *start)
        return loss, final_state

    def _forward(self, x, y, state, *start):
        return self._loss_callable(x, y, state, *start)

    def _read(self, kind):
        return self.session.run(self._variables[kind])

    def _write(self, kind, values):
        feeds, assign = self._setters[kind]
        self.session.run(assign, {feed: values[scope][key] for (scope, key), feed in feeds.items()})

    def close(self) -> None:
        session = getattr(self, "session", None)
        if session is not None:
            session.close()
            self.session = None
