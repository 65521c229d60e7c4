"""The TensorFlow versions of r2rt's "Recurrent Neural Networks in Tensorflow I", behind one interface.

Four implementations of one model (`tf_rnn.config`, ../shared/TASK.md) and its truncated-BPTT training
(`tf_rnn.base`): ``"raw"``, ``"static"`` and ``"dynamic"``, the tutorial's hand-written cell,
``static_rnn`` and ``dynamic_rnn`` in TF1 graphs (`tf_rnn.graph`), and ``"tf2"``, ``tf.Variable``s and a
``tf.function`` train step (`tf_rnn.tf2`). ``ModelConfig(num_steps=k1, backprop_steps=k2)`` trains
TBPTT(k1, k2) from the same windows; k2 = k1 (the default) is the tutorial.

Example::

    import tf_rnn
    from jax_rnn.data import gen_data, windows   # the task (numpy); any int32 windows will do
    config = tf_rnn.ModelConfig(batch_size=200, num_steps=5)
    xw, yw = windows(*gen_data(1_000_000, seed=0), config.batch_size, config.num_steps)
    with tf_rnn.build("dynamic", config, seed=0) as model:
        result = model.train_epoch(xw, yw)     # result.losses: float32[1000]
        params = model.get_params()            # {"rnn_cell": {"W", "b"}, "softmax": {"W", "b"}}

Importing this package prepares TensorFlow (`tf_rnn._env`): ``tf.keras`` becomes tf-keras (Keras 2) in
this process, and TensorFlow's logs are silenced unless ``RNN_SCAN_TF_VERBOSE=1`` or `set_verbose`.
"""

from __future__ import annotations

from typing import Optional

from ._env import set_verbose
from .base import EpochResult, Model
from .config import ModelConfig, Params, check_params, glorot_uniform_params
from .graph import GraphModel
from .tf2 import EagerModel

IMPLEMENTATIONS = ("raw", "static", "dynamic", "tf2")

__all__ = ["IMPLEMENTATIONS", "EpochResult", "Model", "ModelConfig", "Params", "build", "check_params",
           "glorot_uniform_params", "set_verbose"]


def build(name: str, config: Optional[ModelConfig] = None, params: Optional[Params] = None, seed: int = 0,
          device: str = "cpu", deterministic: bool = False) -> Model:
    """Build one implementation, ready to train.

    **Arguments:** ``name`` one of `IMPLEMENTATIONS`; ``config`` (default `ModelConfig()`); ``params``
    initial parameters in the shared layout (default: Glorot-uniform weights from ``seed``, zero biases,
    the same in every process: ``raw`` draws them with the graph-level seed like the tutorial, ``static``
    and ``dynamic`` take `glorot_uniform_params` (their ``BasicRNNCell`` would draw with an unseeded Keras
    initializer), ``tf2`` its own draw; for identical starting points across versions pass ``params``);
    ``device`` ``"cpu"`` or ``"gpu"`` (RuntimeError if TensorFlow sees no GPU); ``deterministic`` calls
    ``tf.config.experimental.enable_op_determinism()`` (process-wide, and it cannot be turned off).

    **Returns:** a `Model`; close it (or use ``with``) to free its session.
    """
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r}; expected one of {', '.join(IMPLEMENTATIONS)}")
    config = ModelConfig() if config is None else config
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config must be a tf_rnn.ModelConfig, got {type(config).__name__}")
    if deterministic:
        from .graph import tf
        tf.config.experimental.enable_op_determinism()
    if name == "tf2":
        return EagerModel(config, params, seed=seed, device=device)
    return GraphModel(name, config, params, seed=seed, device=device)
