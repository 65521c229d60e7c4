"""The toy task (docs/task.md) in numpy, the one data generator: a seed means the same epochs in `fit`,
``rnn-compare`` and the tests. P(Y_t = 1) = 0.5 + 0.5 X_{t-3} - 0.25 X_{t-8}; `TARGETS`: the losses to reach.
"""

from __future__ import annotations

import itertools
import math
from typing import Iterator, NamedTuple

import numpy as np

LAGS = (3, 8)  # Y depends on X this many steps back,
EFFECTS = (0.5, -0.25)  # shifting P(Y = 1) by this much when that X is 1
BASE_PROBABILITY = 0.5

Seed = int | None | np.random.Generator | np.random.RandomState


def _rng(seed: Seed) -> np.random.Generator | np.random.RandomState:
    if isinstance(seed, (np.random.Generator, np.random.RandomState)):
        return seed
    if seed is not None and (not isinstance(seed, (int, np.integer)) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int, None, np.random.Generator or RandomState, got {seed!r}")
    return np.random.default_rng(seed)


def check_int(name: str, value, minimum: int = 1, why: str = "") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}{why}, got {value!r}")
    return int(value)


def _start(size: int, seed: Seed):
    return check_int("size", size, 9, " (longer than the largest lag 8)"), _rng(seed)


def y_probability(x: np.ndarray) -> np.ndarray:
    """P(Y_t = 1) for every t of ``x: int[size]`` (``np.roll`` wraps around like ``X[i - lag]``)."""
    x = np.asarray(x, dtype=np.int8)
    return BASE_PROBABILITY + sum(effect * np.roll(x, lag) for lag, effect in zip(LAGS, EFFECTS))


def gen_data(size: int = 1_000_000, seed: Seed = None) -> tuple[np.ndarray, np.ndarray]:
    """One epoch ``(x, y)``, both ``int32[size]``, drawn as the tutorial's loop (`gen_data_reference`) draws:
    ``seed=np.random.RandomState(s)`` gives its arrays bit for bit."""
    size, rng = _start(size, seed)
    x = np.asarray(rng.choice(2, size=(size,)))
    y = rng.random(size) <= y_probability(x)  # the loop's "u > threshold -> 0, else 1"
    return x.astype(np.int32), y.astype(np.int32)


def gen_data_reference(size: int = 1_000_000, seed: Seed = None) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's loop (a second per 1M points), the reference."""
    size, rng = _start(size, seed)
    X = np.array(rng.choice(2, size=(size,)))
    Y = []
    for i in range(size):
        threshold = 0.5 + (0.5 if X[i - 3] == 1 else 0.0) - (0.25 if X[i - 8] == 1 else 0.0)
        Y.append(0 if rng.random() > threshold else 1)
    return X.astype(np.int32), np.array(Y, dtype=np.int32)


def epochs(data_size: int, seed: int, count: int, start: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The epochs a seed stands for: `gen_data` ``count`` times on one ``default_rng(seed)`` stream, from ``start``."""
    rng = _rng(seed)
    for epoch in range(count):
        x, y = gen_data(data_size, rng)
        if epoch >= start:
            yield x, y


def epoch_size(data_size: int, batch_size: int, num_steps: int) -> int:
    """Windows per epoch, the remainder dropped."""
    return (data_size // batch_size) // num_steps


def check_windowing(data_size: int, batch_size: int, num_steps: int) -> None:
    check_int("batch_size", batch_size)
    check_int("num_steps", num_steps)
    if batch_size * num_steps > data_size:
        raise ValueError(f"batch_size * num_steps = {batch_size} * {num_steps} = {batch_size * num_steps} is larger "
                         f"than the data ({data_size} points): not even one window fits")


def windows(x: np.ndarray, y: np.ndarray, batch_size: int, num_steps: int, dtype=np.int32
            ) -> tuple[np.ndarray, np.ndarray]:
    """The tutorial's windows of ``x, y: int[..., size]``: ``dtype[..., epoch_size, batch_size, num_steps]``,
    row b of window k+1 continuing row b of window k (``batch_size`` contiguous rows)."""
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be arrays of one shape [..., size], got shapes {x.shape} and {y.shape}")
    check_windowing(x.shape[-1], batch_size, num_steps)
    row = x.shape[-1] // batch_size
    n = epoch_size(x.shape[-1], batch_size, num_steps)

    def cut(a: np.ndarray) -> np.ndarray:
        lead = a.shape[:-1]
        rows = a[..., : batch_size * row].reshape(*lead, batch_size, row)[..., : n * num_steps]
        return np.ascontiguousarray(np.swapaxes(rows.reshape(*lead, batch_size, n, num_steps), -3, -2), dtype=dtype)

    return cut(x), cut(y)


def check_rows(x, y, num_classes: int = 2, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``x, y: int[epochs, data_size]`` in ``[0, num_classes)`` as int32 (`fit`'s ``data``, ``--data``)."""
    x, y = np.asarray(x), np.asarray(y)
    for name, a in (("x", x), ("y", y)):
        if a.ndim != 2 or a.shape[0] < 1 or shape is not None and a.shape != tuple(shape):
            raise ValueError(f"{name} must be a 2-D array [epochs, data_size]{f' = {list(shape)}' if shape else ''}, "
                             f"got shape {list(a.shape)}")
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integers (class indices), got dtype {a.dtype}")
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise ValueError(f"{name} values must lie in [0, {num_classes}), got [{a.min()}, {a.max()}]")
    if x.shape != y.shape:
        raise ValueError(f"x and y must have one shape, got {list(x.shape)} and {list(y.shape)}")
    return x.astype(np.int32), y.astype(np.int32)


def window_dtype(num_classes: int) -> np.dtype:
    """The smallest integer type for class ids below ``num_classes``."""
    return np.dtype(next(t for t in (np.int8, np.int16, np.int32) if num_classes - 1 <= np.iinfo(t).max))


def epoch_windows(config, rows: tuple[np.ndarray, np.ndarray] | None = None, start: int = 0, dtype=np.int32):
    """The `windows` of epochs ``start`` to ``config.epochs`` of ``rows = (x, y)``, ``int[epochs, data_size]``, or
    of the seed's `epochs`."""
    c = config
    stream = (zip(rows[0][start: c.epochs], rows[1][start: c.epochs]) if rows is not None
              else epochs(c.data_size, c.seed, c.epochs, start))
    for x, y in stream:
        yield windows(x, y, c.batch_size, c.num_steps, dtype)


def gen_batch(raw_data: tuple[np.ndarray, np.ndarray], batch_size: int, num_steps: int
              ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The tutorial's generator: ``(x, y)`` windows ``int32[batch_size, num_steps]``."""
    yield from zip(*windows(raw_data[0], raw_data[1], batch_size, num_steps))


def gen_epochs(n: int, batch_size: int, num_steps: int, data_size: int = 1_000_000, seed: Seed = None):
    """The tutorial's ``gen_epochs``: ``n`` `gen_batch` generators of fresh data from one stream."""
    rng = _rng(seed)
    for _ in range(n):
        yield gen_batch(gen_data(data_size, rng), batch_size, num_steps)


def expected_loss(known_lags: tuple[int, ...]) -> float:
    """Expected cross-entropy of the best predictor seeing X at ``known_lags``: the entropy of P(Y=1) averaged
    over the lags it does not see."""
    groups: dict = {}
    for xs in itertools.product((0, 1), repeat=len(LAGS)):
        seen = tuple(v for v, lag in zip(xs, LAGS) if lag in known_lags)
        groups.setdefault(seen, []).append(BASE_PROBABILITY + sum(e * v for e, v in zip(EFFECTS, xs)))
    return float(np.mean([entropy(np.mean(p)) for p in groups.values()]))


def entropy(p: float) -> float:
    """Binary entropy in nats."""
    return -sum(q * math.log(q) for q in (p, 1.0 - p) if q > 0.0)


class Targets(NamedTuple):
    none: float   # learned nothing: H(0.625) ~= 0.6616
    first: float  # learned the 3-step dependency ~= 0.5192
    both: float   # learned both dependencies ~= 0.4545


TARGETS = Targets(none=expected_loss(()), first=expected_loss((LAGS[0],)), both=expected_loss(LAGS))
LEVEL_NAMES = {"none": "nothing learned", "first": "the 3-step dependency", "both": "both dependencies"}


def level(loss: float) -> str:
    """The level a loss stands for: "none", "first" or "both" (thresholds halfway between targets)."""
    if not math.isfinite(loss) or loss > (TARGETS.none + TARGETS.first) / 2:
        return "none"
    return "first" if loss > (TARGETS.first + TARGETS.both) / 2 else "both"
