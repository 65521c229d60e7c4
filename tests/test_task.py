"""jax_rnn.data (the task): the data generator against the tutorial's loop, the windows against gen_batch, the targets."""

import math

import numpy as np
import pytest

from jax_rnn import data as task


@pytest.mark.parametrize("make_rng", [np.random.default_rng, np.random.RandomState], ids=["Generator", "RandomState"])
def test_vectorised_generator_equals_the_tutorial_loop_on_one_stream(make_rng):
    x_fast, y_fast = task.gen_data(20_000, make_rng(7))
    x_loop, y_loop = task.gen_data_reference(20_000, make_rng(7))
    np.testing.assert_array_equal(x_fast, x_loop)
    np.testing.assert_array_equal(y_fast, y_loop)


def test_tutorial_global_seed_is_reproduced_bit_for_bit():
    # The tutorial calls np.random.choice / np.random.rand on the global RandomState.
    np.random.seed(3)
    X = np.array(np.random.choice(2, size=(500,)))
    Y = [0 if np.random.rand() > 0.5 + 0.5 * (X[i - 3] == 1) - 0.25 * (X[i - 8] == 1) else 1 for i in range(500)]
    x, y = task.gen_data(500, np.random.RandomState(3))
    np.testing.assert_array_equal(x, X)
    np.testing.assert_array_equal(y, Y)


def test_conditional_probabilities_match_the_specification():
    x, y = task.gen_data(1_000_000, seed=1)
    x3, x8 = np.roll(x, 3), np.roll(x, 8)
    assert abs(x.mean() - 0.5) < 0.003
    for a in (0, 1):
        for b in (0, 1):
            expected = 0.5 + 0.5 * a - 0.25 * b
            observed = y[(x3 == a) & (x8 == b)].mean()
            assert abs(observed - expected) < 0.005, (a, b, observed)


def test_first_outputs_wrap_around_to_the_end_like_the_tutorial():
    # Y_0 depends on X[-3] (the end of the array): with X[-3] = 1 and X[-8] = 0, P(Y_0 = 1) = 1.
    ones = 0
    for seed in range(400):
        x, y = task.gen_data(50, seed)
        if x[-3] == 1 and x[-8] == 0:
            assert y[0] == 1
            ones += 1
    assert ones > 50


def tutorial_gen_batch(raw_data, batch_size, num_steps):
    """Transcribed from the tutorial (itself after TensorFlow's PTB reader)."""
    raw_x, raw_y = raw_data
    data_length = len(raw_x)
    batch_partition_length = data_length // batch_size
    data_x = np.zeros([batch_size, batch_partition_length], dtype=np.int32)
    data_y = np.zeros([batch_size, batch_partition_length], dtype=np.int32)
    for i in range(batch_size):
        data_x[i] = raw_x[batch_partition_length * i:batch_partition_length * (i + 1)]
        data_y[i] = raw_y[batch_partition_length * i:batch_partition_length * (i + 1)]
    epoch_size = batch_partition_length // num_steps
    for i in range(epoch_size):
        x = data_x[:, i * num_steps:(i + 1) * num_steps]
        y = data_y[:, i * num_steps:(i + 1) * num_steps]
        yield (x, y)


@pytest.mark.parametrize("size,batch_size,num_steps", [(10_000, 200, 5), (10_007, 13, 7), (1_000, 1, 1), (999, 10, 33)])
def test_windows_equal_the_tutorial_gen_batch(size, batch_size, num_steps):
    x, y = task.gen_data(size, seed=2)
    x_windows, y_windows = task.windows(x, y, batch_size, num_steps)
    expected = list(tutorial_gen_batch((x, y), batch_size, num_steps))
    assert x_windows.shape == (len(expected), batch_size, num_steps) == y_windows.shape
    assert x_windows.dtype == np.int32 and y_windows.dtype == np.int32
    assert len(expected) == task.epoch_size(size, batch_size, num_steps)
    for k, (ex, ey) in enumerate(expected):
        np.testing.assert_array_equal(x_windows[k], ex)
        np.testing.assert_array_equal(y_windows[k], ey)
    generated = list(task.gen_batch((x, y), batch_size, num_steps))
    assert len(generated) == len(expected)
    np.testing.assert_array_equal(generated[-1][0], expected[-1][0])


def test_gen_epochs_yields_fresh_data_each_epoch():
    epochs = [list(batches) for batches in task.gen_epochs(2, batch_size=10, num_steps=5, data_size=1_000, seed=0)]
    assert len(epochs) == 2 and len(epochs[0]) == 20
    assert not np.array_equal(epochs[0][0][0], epochs[1][0][0])


def test_targets_are_the_analytic_losses():
    assert task.TARGETS.none == pytest.approx(-(0.625 * math.log(0.625) + 0.375 * math.log(0.375)))
    assert task.TARGETS.none == pytest.approx(0.6616, abs=1e-4)
    assert task.TARGETS.first == pytest.approx(0.5192, abs=1e-4)
    assert task.TARGETS.both == pytest.approx(0.4545, abs=1e-4)
    # "first": half the time X_{t-3} = 1 (p = 0.875), else p = 0.375.
    assert task.TARGETS.first == pytest.approx(0.5 * task.entropy(0.875) + 0.5 * task.entropy(0.375))


def test_empirical_loss_of_the_perfect_predictor_matches_the_target():
    x, y = task.gen_data(500_000, seed=4)
    p = task.y_probability(x)
    ce = -np.mean(np.where(y == 1, np.log(np.clip(p, 1e-12, 1)), np.log(np.clip(1 - p, 1e-12, 1))))
    assert ce == pytest.approx(task.TARGETS.both, abs=0.003)


@pytest.mark.parametrize("loss,expected", [(0.70, "none"), (0.66, "none"), (0.55, "first"), (0.52, "first"),
                                           (0.47, "both"), (0.45, "both"), (float("nan"), "none")])
def test_level_names_a_loss(loss, expected):
    assert task.level(loss) == expected


@pytest.mark.parametrize("kwargs,message", [
    (dict(batch_size=0, num_steps=5), "batch_size must be an integer >= 1, got 0"),
    (dict(batch_size=10, num_steps=0), "num_steps must be an integer >= 1, got 0"),
    (dict(batch_size=100, num_steps=20), "larger than the data"),
])
def test_windows_refuse_bad_arguments(kwargs, message):
    x, y = task.gen_data(1_000, 0)
    with pytest.raises(ValueError, match=message):
        task.windows(x, y, **kwargs)


def test_windows_take_a_dtype_and_keep_leading_axes():
    rows = [task.gen_data(1_000, seed) for seed in (0, 1)]
    x_windows, y_windows = task.windows(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), 10, 5, np.int8)
    assert x_windows.dtype == y_windows.dtype == np.int8 and x_windows.shape == (2, 20, 10, 5)
    for i, row in enumerate(rows):
        for got, want in zip((x_windows[i], y_windows[i]), task.windows(*row, 10, 5)):
            np.testing.assert_array_equal(got, want)


def test_epoch_windows_are_the_seeds_epochs_or_the_given_rows():
    """`epoch_windows`: every epoch's windows from the epochs a seed stands for, or from rows; ``start``
    skips the epochs done (a resumed run continues the same stream)."""
    from jax_rnn import FitConfig

    config = FitConfig(data_size=1_000, batch_size=10, num_steps=5, epochs=3, seed=4)
    want = [task.windows(x, y, 10, 5) for x, y in task.epochs(1_000, 4, 3)]
    rows = tuple(np.stack(a) for a in zip(*task.epochs(1_000, 4, 3)))
    for got, skip in ((list(task.epoch_windows(config)), 0), (list(task.epoch_windows(config, start=1)), 1),
                      (list(task.epoch_windows(config, rows, start=2, dtype=np.int8)), 2)):
        assert len(got) == 3 - skip
        for (gx, gy), (wx, wy) in zip(got, want[skip:]):
            np.testing.assert_array_equal(gx, wx)
            np.testing.assert_array_equal(gy, wy)
    assert got[0][0].dtype == np.int8
