"""The tutorial's TF1 versions, each in a private ``tf.Graph`` and session: ``raw`` (the hand-written cell
in a Python loop), ``static`` and ``dynamic`` (``BasicRNNCell`` with ``static_rnn`` / ``dynamic_rnn``);
the state carried through a placeholder."""

import time

from ._env import import_tensorflow, quiet_warnings
from .base import LAYOUT, Model, ModelConfig, Params

tf = import_tensorflow()
v1 = tf.compat.v1


class PresentWrapper(v1.nn.rnn_cell.RNNCell):
    """The cell on ``(x_t, present_t: bool[batch, 1])``, the state kept where not present; in the caller's
    scope, so the variables keep their names."""

    def __init__(self, cell):
        super().__init__()
        self.cell = cell

    state_size = property(lambda self: self.cell.state_size)
    output_size = property(lambda self: self.cell.output_size)

    def __call__(self, inputs, state, scope=None):
        x_t, present_t = inputs
        new_state = tf.where(present_t, self.cell(x_t, state, scope=scope)[1], state)
        return new_state, new_state


def raw_cell(W, b):
    """The tutorial's hand-written cell, ``state = tanh([x_t, state] @ W + b)``."""
    return lambda x_t, state: tf.tanh(tf.matmul(tf.concat([x_t, state], 1), W) + b)


def unroll(cell, inputs: list, state, present_steps=None) -> list:
    """The tutorial's loop, ``state = cell(x_t, state)``, kept where ``present_steps[t]`` (TBPTT) is False;
    returns the states."""
    outputs = []
    for t, x_t in enumerate(inputs):
        new_state = cell(x_t, state)
        state = new_state if present_steps is None else tf.where(present_steps[t], new_state, state)
        outputs.append(state)
    return outputs


def step_losses(outputs: list, y, W, b, config: ModelConfig):
    """The tutorial's per-step logits and mean loss, over the last k1 steps, and the next window's state."""
    k1, steps = config.num_steps, config.window_steps
    logits = [tf.matmul(rnn_output, W) + b for rnn_output in outputs[steps - k1:]]
    y_as_list = tf.unstack(y, num=steps, axis=1)[steps - k1:]
    losses = [tf.nn.sparse_softmax_cross_entropy_with_logits(labels=label, logits=logit)
              for logit, label in zip(logits, y_as_list)]
    return tf.reduce_mean(losses), outputs[k1 - 1]


def build_graph(name: str, config: ModelConfig):
    """``name``'s training graph in the current default graph: ``(feeds, total_loss, final_state,
    train_step, optimizer)``, feeds ``[x, y, init_state]`` plus ``window_start`` with TBPTT."""
    b_size, n, d = config.batch_size, config.num_classes, config.state_size
    k1, steps = config.num_steps, config.window_steps
    tbptt = steps > k1
    zeros = v1.constant_initializer(0.0)
    v1.set_random_seed(0)  # op determinism needs it; the initial draws are overwritten
    x = v1.placeholder(tf.int32, [b_size, steps], name="input_placeholder")
    y = v1.placeholder(tf.int32, [b_size, steps], name="labels_placeholder")
    init_state = v1.placeholder(tf.float32, [b_size, d], name="init_state")
    feeds = [x, y, init_state]
    present_steps = None
    if tbptt:
        feeds.append(v1.placeholder(tf.int32, [], name="window_start"))
        present_steps = feeds[3] + tf.range(steps) >= 0
    x_one_hot = tf.one_hot(x, n)
    if name == "raw":
        with v1.variable_scope("rnn_cell"):
            cell = raw_cell(v1.get_variable("W", [n + d, d]), v1.get_variable("b", [d], initializer=zeros))
        outputs = unroll(cell, tf.unstack(x_one_hot, axis=1), init_state, present_steps)
    else:
        cell = v1.nn.rnn_cell.BasicRNNCell(d)
        inputs = x_one_hot if name == "dynamic" else tf.unstack(x_one_hot, axis=1)
        if tbptt:
            cell = PresentWrapper(cell)
            flags = tf.broadcast_to(present_steps[None, :, None], [b_size, steps, 1])
            inputs = (inputs, flags) if name == "dynamic" else list(zip(inputs, tf.unstack(flags, axis=1)))
        rnn = v1.nn.dynamic_rnn if name == "dynamic" else v1.nn.static_rnn
        outputs, final_state = rnn(cell, inputs, initial_state=init_state)
    with v1.variable_scope("softmax"):
        W = v1.get_variable("W", [d, n])
        b = v1.get_variable("b", [n], initializer=zeros)
    if name == "dynamic":
        labels = y
        if tbptt:
            final_state, outputs, labels = outputs[:, k1 - 1], outputs[:, steps - k1:], y[:, steps - k1:]
        logits = tf.reshape(tf.matmul(tf.reshape(outputs, [-1, d]), W) + b, [b_size, k1, n])
        total_loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
    else:
        total_loss, final_state = step_losses(outputs, y, W, b, config)
    optimizer = v1.train.AdagradOptimizer(config.learning_rate)
    return feeds, total_loss, final_state, optimizer.minimize(total_loss), optimizer


def device_spec(device: str):
    """``"cpu"`` / ``"gpu"`` -> (TF device name, ConfigProto device_count)."""
    if device == "cpu":
        return "/CPU:0", {"GPU": 0}
    if device == "gpu":
        if not tf.config.list_physical_devices("GPU"):
            raise RuntimeError("device='gpu', but TensorFlow sees no GPU")
        return "/GPU:0", {}
    raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")


class GraphModel(Model):
    """``raw``, ``static`` or ``dynamic``, starting from ``params``."""

    def __init__(self, name: str, config: ModelConfig, params: Params, device: str = "cpu"):
        self.name, self.config = name, config
        device_name, device_count = device_spec(device)
        start = time.perf_counter()
        self.graph = tf.Graph()
        with self.graph.as_default(), tf.device(device_name), quiet_warnings():
            feeds, total_loss, final_state, train_step, optimizer = build_graph(name, config)
            variables = dict(zip(LAYOUT, v1.trainable_variables()))
            self._variables = {"params": variables, "accumulators": {
                key: optimizer.get_slot(v, "accumulator") for key, v in variables.items()}}
            init = v1.global_variables_initializer()
        self.graph.finalize()
        checked = self._check(params, "params")
        self.session = v1.Session(graph=self.graph, config=v1.ConfigProto(device_count=device_count))
        self.session.run(init)
        self._write("params", checked)
        # One C++ call per step, without session.run's feed/fetch parsing.
        train = self.session.make_callable([total_loss, final_state, train_step], feeds)
        self._step = lambda *args: train(*args)[:2]
        self._forward = self.session.make_callable([total_loss, final_state], feeds)
        self.build_seconds = time.perf_counter() - start

    def _read(self, kind):
        return self.session.run(self._variables[kind])

    def _write(self, kind, values):
        # The initializers, their initial values fed: no new ops in the finalized graph.
        variables = self._variables[kind].items()
        self.session.run([v.initializer for _, v in variables],
                         {v.initializer.inputs[1]: values[scope][key] for (scope, key), v in variables})

    def close(self):
        self.session.close()
