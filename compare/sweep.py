"""``rnn-compare sweep``: the tutorial's TODO grid, num_steps x state_size, over several seeds.

Seed ``s`` fixes both the initial parameters (numpy Glorot, `io.glorot_params`) and the data stream
(`io.epoch_stream`), so every implementation sees the same runs. With ``jax`` all seeds of a cell
train together: one ``jax_rnn.train_runs`` call (``vmap`` over a leading seed axis) per epoch. The
TensorFlow versions train seed after seed. Where JAX sees several devices (GPUs, or CPU devices made
with ``XLA_FLAGS=--xla_force_host_platform_device_count=N``), the seeds are split over them with a
``Mesh`` on the run axis; the losses are bit-identical to the single-device ones.

The tutorial's reasoning, recorded per cell as ``tutorial_level``: the gradient is truncated after
``num_steps`` steps, so the 3-step dependency can be learned only if ``num_steps > 3`` and the 8-step
one only if ``num_steps > 8`` (its runs: 1 -> nothing, 5 -> the 3-step one, 10 -> both).
"""

from __future__ import annotations

import itertools
import math
import time

import numpy as np
from tqdm import tqdm

from . import io, task
from .config import Config
from .run import final_loss, running_averages, targets
from .runners import make_trainer


def tutorial_level(num_steps: int) -> str:
    """The level truncated BPTT can reach in principle: ``"none"``, ``"first"`` or ``"both"``."""
    return "none" if num_steps <= 3 else "first" if num_steps <= 8 else "both"


def _epoch_windows(config: Config, seeds: list[int]):
    """Per epoch, the windows of every seed: ``int32[seeds, epoch_size, batch, num_steps]`` x2."""
    streams = [io.epoch_stream(config, seed=s) for s in seeds]
    for epoch in zip(*streams):
        pairs = [task.windows(x, y, config.batch_size, config.num_steps) for x, y in epoch]
        yield np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])


def run_devices(kind: str, num_runs: int) -> list:
    """The devices of ``kind`` that the runs are split over: as many as divide ``num_runs`` evenly."""
    import jax

    devices = jax.devices(kind)
    return devices[: math.gcd(num_runs, len(devices))]


def _train_jax(config: Config, seeds: list[int], device: str, bar) -> np.ndarray:
    """All seeds in one vmapped call per epoch, the seeds split over every device JAX sees of that kind
    (`jax_rnn.train_runs_sharded`; one device: plain `train_runs`). Returns ``float32[seeds, epochs, epoch_size]``."""
    import jax
    import jax_rnn

    mesh = jax_rnn.run_mesh(run_devices(device, len(seeds)))
    runs = [io.glorot_params(config.num_classes, config.state_size, s) for s in seeds]
    params = jax.tree.map(lambda *leaves: np.stack(leaves), *runs)
    optimizer = jax_rnn.adagrad(config.learning_rate)
    params, opt_state = jax_rnn.shard_runs((params, jax.vmap(optimizer.init)(params)), mesh)
    losses = []
    for xw, yw in _epoch_windows(config, seeds):
        params, opt_state, _, epoch_losses = jax_rnn.train_runs_sharded(params, opt_state, xw, yw, optimizer, mesh=mesh)
        losses.append(np.asarray(epoch_losses, np.float32))
        bar.update(len(seeds))
    return np.stack(losses, axis=1)


def _train_tf(impl: str, config: Config, seeds: list[int], device: str, bar) -> np.ndarray:
    """Seed after seed; returns ``float32[seeds, epochs, epoch_size]``."""
    out = []
    for s in seeds:
        trainer = make_trainer(impl, config, io.glorot_params(config.num_classes, config.state_size, s), device)
        try:
            losses = []
            for x, y in io.epoch_stream(config, seed=s):
                losses.append(trainer.train_epoch(*task.windows(x, y, config.batch_size, config.num_steps)).losses)
                bar.update(1)
            out.append(np.stack(losses))
        finally:
            trainer.close()
    return np.stack(out)


def _cell(config: Config, impl: str, seeds: list[int], step_losses: np.ndarray, seconds: float) -> dict:
    finals = [final_loss(s) for s in step_losses]
    curves = np.stack([running_averages(s) for s in step_losses])
    mean = float(np.mean(finals))
    return {
        "num_steps": config.num_steps, "state_size": config.state_size, "impl": impl, "seeds": seeds,
        "final_losses": finals, "mean": mean, "std": float(np.std(finals)), "min": float(min(finals)),
        "max": float(max(finals)), "levels": [task.level(f) for f in finals], "level": task.level(mean),
        "tutorial_level": tutorial_level(config.num_steps), "seconds": seconds,
        "avg_losses": curves.tolist(), "avg_losses_mean": curves.mean(axis=0).tolist(),
    }


def sweep(configs: list[Config], num_seeds: int, devices, quiet: bool = False) -> dict:
    """Train every config (grid cell) for seeds ``seed .. seed + num_seeds - 1`` with every implementation.

    **Returns:** ``command``, ``config`` (the grid), ``environment``, ``targets``, ``cells`` (one per
    num_steps x state_size x impl) and ``agreement`` (implementations compared seed by seed).
    """
    from .environment import describe

    first = configs[0]
    seeds = [first.seed + i for i in range(num_seeds)]
    total = sum(len(c.impls) * num_seeds * c.epochs for c in configs)
    cells, max_diff, same_level = [], 0.0, True
    with tqdm(total=total, desc="sweep", unit="epoch", disable=quiet) as bar:
        for config in configs:
            by_impl = {}
            for impl in config.impls:
                bar.set_postfix_str(f"num_steps {config.num_steps}, state {config.state_size}, {impl}")
                start = time.perf_counter()
                device = devices.jax if impl == "jax" else devices.tf
                train = _train_jax if impl == "jax" else (lambda *a, impl=impl: _train_tf(impl, *a))
                by_impl[impl] = train(config, seeds, device, bar)
                cells.append(_cell(config, impl, seeds, by_impl[impl], time.perf_counter() - start))
            for a, b in itertools.combinations(by_impl, 2):
                max_diff = max(max_diff, float(np.max(np.abs(by_impl[a] - by_impl[b]))))
            levels = {impl: [task.level(final_loss(s)) for s in losses] for impl, losses in by_impl.items()}
            same_level &= len({tuple(v) for v in levels.values()}) <= 1
    grid = {"num_steps": sorted({c.num_steps for c in configs}), "state_size": sorted({c.state_size for c in configs}),
            "impls": list(first.impls), "seeds": seeds, "epochs": first.epochs, "data_size": first.data_size,
            "batch_size": first.batch_size, "learning_rate": first.learning_rate,
            "jax_devices": len(run_devices(devices.jax, num_seeds)) if "jax" in first.impls else None}
    agreement = ({"max_abs_diff": max_diff, "same_level": same_level} if len(first.impls) > 1 else None)
    return {"command": "sweep", "config": grid, "environment": describe(devices), "targets": targets(),
            "cells": cells, "agreement": agreement}
