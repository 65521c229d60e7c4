"""``make_trainer``: any implementation by its CLI name, as a trainer of `jax_rnn.driver.train`.

``jax`` is a `jax_rnn.driver.JaxTrainer` (the whole epoch one compiled ``lax.scan``); ``tf-raw``,
``tf-static``, ``tf-dynamic`` and ``tf2`` are ``tf_rnn`` models (one ``session.run`` / ``tf.function``
call per window). Both start every epoch from the zero state, as the tutorial does, and carry the
optimizer state across epochs. Their timings (``build_seconds``, an epoch's ``seconds`` and TF's
``first_step_seconds``) are described in `jax_rnn.driver.EpochStats` and ``compare.run``.
"""

from __future__ import annotations

from typing import Optional

from jax_rnn.driver import JaxTrainer

from .config import Config, is_tf
from .environment import jax_device


def make_trainer(impl: str, config: Config, params: dict, device: str = "cpu", accumulators: Optional[dict] = None,
                 deterministic: bool = False):
    """Build implementation ``impl`` (a CLI name) from ``params`` (shared layout) on ``device`` (``"cpu"``
    or ``"gpu"``); ``accumulators``: Adagrad state to start from (a resumed run; default 0.1 everywhere);
    ``deterministic``: TensorFlow's op determinism (process-wide; JAX on CPU is deterministic anyway)."""
    if not is_tf(impl):
        return JaxTrainer(config, params, accumulators, jax_device(device))
    import tf_rnn  # heavy and optional: only when a TensorFlow version is asked for

    model_config = tf_rnn.ModelConfig(config.num_classes, config.state_size, config.batch_size, config.num_steps,
                                      config.learning_rate, config.backprop_steps)
    model = tf_rnn.build(impl.removeprefix("tf-"), model_config, params=params, seed=config.seed, device=device,
                         deterministic=deterministic)
    if accumulators is not None:
        model.set_accumulators(accumulators)
    return model
