"""TensorFlow versions of r2rt's "Recurrent Neural Networks in Tensorflow I": the TF1 graphs ``"raw"``,
``"static"``, ``"dynamic"`` (`tf_rnn.graph`) and ``"tf2"`` (`tf_rnn.tf2`), behind one interface::

    import tf_rnn
    from jax_rnn import glorot_params
    from jax_rnn.data import gen_data, windows
    config = tf_rnn.ModelConfig(batch_size=200, num_steps=5)
    xw, yw = windows(*gen_data(1_000_000, seed=0), config.batch_size, config.num_steps)
    with tf_rnn.build("dynamic", config, glorot_params(2, 4, seed=0)) as model:
        losses = model.train_epoch(xw, yw).losses     # float32[1000]

Importing tf_rnn makes ``tf.keras`` Keras 2 (tf-keras) and quiets TensorFlow.
"""

from ._env import set_verbose
from .base import EpochResult, Model, ModelConfig, Params
from .graph import GraphModel, tf
from .tf2 import EagerModel

IMPLEMENTATIONS = ("raw", "static", "dynamic", "tf2")

__all__ = ["IMPLEMENTATIONS", "EpochResult", "Model", "ModelConfig", "Params", "build", "set_verbose"]


def build(name: str, config, params: Params, device: str = "cpu", deterministic: bool = False) -> Model:
    """Implementation ``name`` of ``config`` (any object with `ModelConfig`'s fields) from ``params``: float32
    ``{"rnn_cell": {"W": [n+d, d], "b": [d]}, "softmax": {"W": [d, n], "b": [n]}}``; ``device``: "cpu" or
    "gpu"; ``deterministic``: TensorFlow's op determinism (process-wide)."""
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"unknown implementation {name!r}; expected one of {', '.join(IMPLEMENTATIONS)}")
    config = ModelConfig.of(config)
    if deterministic:
        tf.config.experimental.enable_op_determinism()
    return EagerModel(config, params, device) if name == "tf2" else GraphModel(name, config, params, device)
