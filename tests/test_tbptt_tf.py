"""TBPTT(k1, k2) in tf_rnn's four versions (docs/task.md, "Truncation styles").

The definition itself is checked literally on the JAX side (tests/test_tbptt.py), and every TF version
gives `jax_rnn.train_epoch(..., backprop_steps=k2)`'s numbers in tests/test_equivalence.py. Here, what
needs no JAX: the windows the loop cuts, the first update (all earlier steps absent, so it is the
TF-style update), TBPTT(k1, k1) being today's graph op for op, and what the guard keeps.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

import tf_rnn
from conftest import numpy_params
from jax_rnn.data import gen_data, windows
from tf_rnn.base import tbptt_windows

IMPLS = tf_rnn.IMPLEMENTATIONS
BATCH, STATE = 8, 4


def _config(k1, k2=None, **kwargs) -> tf_rnn.ModelConfig:
    return tf_rnn.ModelConfig(batch_size=BATCH, state_size=STATE, num_steps=k1, backprop_steps=k2, **kwargs)


def _windows(k1, points=400, seed=0):
    return windows(*gen_data(points, seed=seed), BATCH, k1)


def _assert_params_close(got, want, atol=1e-5):
    for scope in want:
        for key in want[scope]:
            np.testing.assert_allclose(got[scope][key], want[scope][key], rtol=0, atol=atol, err_msg=f"{scope}/{key}")


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [4, 0, -1, 5.0, 7.5, True, "7"])
def test_config_rejects_bad_backprop_steps_naming_field_and_range(value):
    with pytest.raises(ValueError, match=r"ModelConfig.backprop_steps must be None or an integer >= "
                                         r"num_steps \(5\), got " + repr(value).replace(".", r"\.")):
        tf_rnn.ModelConfig(num_steps=5, backprop_steps=value)


def test_config_window_steps():
    assert tf_rnn.ModelConfig(num_steps=5).window_steps == 5
    assert tf_rnn.ModelConfig(num_steps=5, backprop_steps=5).window_steps == 5
    assert tf_rnn.ModelConfig(num_steps=5, backprop_steps=np.int64(9)).window_steps == 9


# --- the windows the loop cuts ----------------------------------------------------------------------

@pytest.mark.parametrize("k1, k2", [(2, 5), (3, 4), (1, 1)])
def test_tbptt_windows_hold_the_stream_positions_of_the_definition(k1, k2):
    n = 6
    rows = 1000 * np.arange(BATCH)[:, None] + np.arange(n * k1) + 1        # row b, position p: 1000 b + p + 1
    xw = rows.reshape(BATCH, n, k1).transpose(1, 0, 2).astype(np.int32)     # the ordinary windows
    x, y, starts = tbptt_windows(xw, 2 * xw, k2)
    assert x.shape == y.shape == (n, BATCH, k2) and x.dtype == y.dtype == np.int32
    np.testing.assert_array_equal(starts, np.arange(n) * k1 + k1 - k2)
    position = (starts[:, None] + np.arange(k2))[:, None, :]                 # [U, 1, k2]
    want = np.where(position >= 0, 1000 * np.arange(BATCH)[:, None] + position + 1, 0)
    np.testing.assert_array_equal(x, want)
    np.testing.assert_array_equal(y, 2 * want)


# --- what the table of implementations does not see (tests/test_equivalence.py compares the runs) ---

@pytest.mark.parametrize("name", IMPLS)
def test_set_params_reaches_the_graph_and_loss_with_start_gives_the_logged_loss(name):
    k1, k2 = 2, 5
    config, (xw, yw) = _config(k1, k2), _windows(k1)
    params = numpy_params(1)
    x0, y0, starts = tbptt_windows(xw, yw, k2)
    with tf_rnn.build(name, config, params=params) as model:
        result = model.train_epoch(xw, yw)
        # set_params reaches the variables the graph uses (static/dynamic: inside PresentWrapper), and
        # loss() on one TBPTT window with its start gives that window's logged loss.
        model.set_params(params)
        _assert_params_close(model.get_params(), params, atol=0)
        loss, _ = model.loss(x0[0], y0[0], start=int(starts[0]))
        assert loss == pytest.approx(float(result.losses[0]), abs=1e-6), name


# --- what needs no JAX: TBPTT(k1, k1) is today's graph; the first update is the TF-style one -------

def _ops(model) -> list[tuple[str, str]]:
    graph = model.graph if hasattr(model, "graph") else model._train.graph
    return [(op.name, op.type) for op in graph.get_operations()]


@pytest.mark.parametrize("name", IMPLS)
def test_n_n_is_todays_graph_and_the_first_update_is_the_tf_style_one(name):
    k1, k2 = 2, 5
    xw, yw = _windows(k1, points=BATCH * k1 * 3)
    params = numpy_params(2)
    with tf_rnn.build(name, _config(k1), params=params) as plain, \
            tf_rnn.build(name, _config(k1, k1), params=params) as same, \
            tf_rnn.build(name, _config(k1, k2), params=params) as tbptt:
        assert _ops(same) == _ops(plain)
        with pytest.raises(ValueError, match="backprop_steps > num_steps"):
            same.loss(xw[0], yw[0], start=0)
        a, b = plain.train_epoch(xw, yw), same.train_epoch(xw, yw)
        np.testing.assert_array_equal(a.losses, b.losses)
        _assert_params_close(same.get_params(), plain.get_params(), atol=0)
        # Update 0 of TBPTT(k1, k2): steps [k1 - k2, k1), the first k2 - k1 absent, so the state stays
        # zero through them and the update is the TF-style update on window 0. The state it hands on is
        # the one after its first k1 steps, at position 2 k1 - k2 - 1 < 0: still the zero state.
        plain.set_params(params)
        plain.set_accumulators(tbptt.get_accumulators())
        first, ref = tbptt.train_epoch(xw[:1], yw[:1]), plain.train_epoch(xw[:1], yw[:1])
        assert float(first.losses[0]) == pytest.approx(float(ref.losses[0]), abs=1e-6)
        np.testing.assert_array_equal(first.final_state, 0.0)
        _assert_params_close(tbptt.get_params(), plain.get_params(), atol=1e-6)


# --- the divergence guard --------------------------------------------------------------------------

@pytest.mark.parametrize("name", IMPLS)
def test_what_the_guard_kept_is_training_on_the_windows_before_the_divergence(name):
    k1, k2 = 2, 5
    config = _config(k1, k2, learning_rate=1e37)
    xw, yw = _windows(k1, points=BATCH * k1 * 10)
    params = numpy_params(0)
    with tf_rnn.build(name, config, params=params) as model:
        r = model.train_epoch(xw, yw)
        k = r.diverged_at
        assert k is not None and 0 < k < len(xw) - 1
        kept = model.get_params()
        # What the guard kept is what training on the first k windows alone gives.
        model.set_params(params)
        model.set_accumulators(jax.tree.map(lambda a: np.full_like(a, 0.1), params))
        replay = model.train_epoch(xw[:k], yw[:k])
        np.testing.assert_array_equal(replay.losses, r.losses[:k])
        np.testing.assert_array_equal(replay.final_state, r.final_state)
        _assert_params_close(model.get_params(), kept, atol=0)
