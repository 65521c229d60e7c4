"""Time one epoch of each TensorFlow version: ``python -m tf_rnn.bench [--epochs 3] [--impl raw,tf2]``.

The tutorial's setting (r2rt, "Recurrent Neural Networks in Tensorflow I"): batch 200, num_steps 5,
state 4, 1M points per epoch -> 1000 Adagrad steps. Reported per version, apart: build seconds (graph
construction + variable init, or tf2's variable creation + tracing), the first step (first
``session.run`` / first compiled call), and the steady state: seconds per epoch over ``--epochs`` further
epochs on fresh data (median, min, max) and steps/s from the median. Every epoch ends with its final
state read back as numpy, which synchronises. ``--tf2-jit both`` also times tf2 with and without XLA; ``--baseline`` adds "dynamic plain", the same
graph driven by the tutorial's own ``session.run(fetches, feed_dict)`` instead of ``make_callable``.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np

from . import IMPLEMENTATIONS, ModelConfig, build, glorot_uniform_params
from .graph import GraphModel
from .tf2 import EagerModel


def _plain_session_run(model: GraphModel) -> GraphModel:
    """Drive ``model`` with ``session.run([loss, state, train], feed_dict)`` per step, as the tutorial."""
    e, run = model._ends, model.session.run
    fetches = [e["total_loss"], e["final_state"], e["train_step"]]

    def step(x, y, state):
        loss, final_state, _ = run(fetches, {e["x"]: x, e["y"]: y, e["init_state"]: state})
        return loss, final_state

    model._step = step  # instance attribute: train_epoch's loop calls it
    return model


def _windows(config: ModelConfig, data_size: int, rng: np.random.Generator):
    """The task's data (``compare.task`` semantics) made here so that tf_rnn does not import compare."""
    x = rng.choice(2, size=data_size)
    p = 0.5 + 0.5 * np.roll(x, 3) - 0.25 * np.roll(x, 8)
    y = (rng.random(data_size) <= p).astype(np.int32)
    row, n = data_size // config.batch_size, data_size // config.batch_size // config.num_steps

    def cut(a):
        rows = a[: config.batch_size * row].reshape(config.batch_size, row)[:, : n * config.num_steps]
        return np.ascontiguousarray(rows.reshape(config.batch_size, n, config.num_steps).transpose(1, 0, 2),
                                    dtype=np.int32)

    return cut(x.astype(np.int32)), cut(y)


def time_model(model, config: ModelConfig, epochs: int, data_size: int, seed: int = 0) -> dict:
    """Build/first-step/steady-state figures of one built model (one warm-up epoch, then ``epochs``)."""
    rng = np.random.default_rng(seed)
    first = model.train_epoch(*_windows(config, data_size, rng))
    seconds = [model.train_epoch(*_windows(config, data_size, rng)).seconds for _ in range(epochs)]
    median = statistics.median(seconds)
    return dict(build=model.build_seconds, first_step=first.first_step_seconds, first_epoch=first.seconds,
                median=median, min=min(seconds), max=max(seconds), steps_per_s=len(first.losses) / median,
                final_loss=float(first.losses[-100:].mean()))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--impl", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs after the warm-up one (>= 1)")
    parser.add_argument("--data-size", type=int, default=1_000_000)
    parser.add_argument("--tf2-jit", choices=("default", "both"), default="default")
    parser.add_argument("--baseline", action="store_true", help="also time the tutorial's plain session.run loop")
    args = parser.parse_args(argv)
    config = ModelConfig()
    params = glorot_uniform_params(config, seed=0)
    print(f"config {config}, {args.data_size} points/epoch, {args.epochs} timed epochs after one warm-up")
    print(f"{'impl':<14}{'build s':>9}{'1st step s':>12}{'1st epoch s':>13}{'median s':>10}{'min s':>8}"
          f"{'max s':>8}{'steps/s':>9}")
    runs = [(name, lambda name=name: build(name, config, params)) for name in args.impl.split(",")]
    if args.tf2_jit == "both":
        runs = [r for r in runs if r[0] != "tf2"] + [
            (f"tf2 jit={jit}", lambda jit=jit: EagerModel(config, params, jit_compile=jit)) for jit in (False, True)]
    if args.baseline:
        runs.append(("dynamic plain", lambda: _plain_session_run(build("dynamic", config, params))))
    for label, make in runs:
        with make() as model:
            r = time_model(model, config, max(1, args.epochs), args.data_size)
        print(f"{label:<14}{r['build']:>9.3f}{r['first_step']:>12.4f}{r['first_epoch']:>13.3f}{r['median']:>10.3f}"
              f"{r['min']:>8.3f}{r['max']:>8.3f}{r['steps_per_s']:>9.0f}", flush=True)


if __name__ == "__main__":
    main()
