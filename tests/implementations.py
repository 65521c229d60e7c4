"""The one table of the five implementations, for every property that must hold across them.

Each row trains an epoch, or evaluates one window's loss, from given parameters and data, and answers in
numpy, so a cross-implementation test is one parametrisation over `IMPLEMENTATIONS` (tests/test_equivalence.py).
`jax` is ``jax_rnn.train_epoch_guarded`` with the cell's plan (`jax_rnn.plan`, as `fit` and ``rnn-compare``
train): like ``tf_rnn``'s ``train_epoch`` it stops at the first non-finite window, and where training stays
finite it equals `jax_rnn.train_epoch` bit for bit (tests/test_reliability.py). The other four are
``tf_rnn.build(name, ...)``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import jax_rnn
import tf_rnn

REFERENCE = "jax"
IMPLEMENTATIONS = (REFERENCE, *tf_rnn.IMPLEMENTATIONS)
OTHERS = IMPLEMENTATIONS[1:]


class Trained(NamedTuple):
    """One epoch: ``losses: f32[epoch_size]``, the final ``params`` (shared layout), ``final_state: f32[batch,
    d]``, ``diverged_at``: the first non-finite window, -1 if none."""

    losses: np.ndarray
    params: dict
    final_state: np.ndarray
    diverged_at: int


def _numpy(tree):
    return jax.tree.map(np.asarray, tree)


def train(impl: str, config: tf_rnn.ModelConfig, params: dict, x_windows, y_windows) -> Trained:
    """One epoch of ``impl`` from ``params`` (numpy, shared layout), TBPTT(num_steps, ``config.window_steps``)."""
    if impl == REFERENCE:
        opt, start = jax_rnn.adagrad(config.learning_rate), jax.tree.map(jnp.asarray, params)
        plan = jax_rnn.plan(config.state_size, config.batch_size, config.num_steps, config.backprop_steps,
                            num_classes=config.num_classes)
        r = jax_rnn.train_epoch_guarded(start, opt.init(start), x_windows, y_windows, opt, plan=plan)
        return Trained(np.asarray(r.losses), _numpy(r.params), np.asarray(r.final_state), int(r.diverged_at))
    with tf_rnn.build(impl, config, params=params) as model:
        r = model.train_epoch(x_windows, y_windows)
        return Trained(r.losses, model.get_params(), r.final_state, -1 if r.diverged_at is None else r.diverged_at)


def loss(impl: str, config: tf_rnn.ModelConfig, params: dict, x, y, state) -> tuple[float, np.ndarray]:
    """One window's mean loss and final state from ``state: f32[batch, d]`` (``x, y: int[batch, num_steps]``)."""
    if impl == REFERENCE:
        value, final = jax_rnn.loss(jax.tree.map(jnp.asarray, params), jnp.asarray(x), jnp.asarray(y), jnp.asarray(state))
        return float(value), np.asarray(final)
    with tf_rnn.build(impl, config, params=params) as model:
        return model.loss(x, y, state)
