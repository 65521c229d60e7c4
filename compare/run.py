"""``rnn-compare run``: every chosen implementation, one after the other, on the same data and weights.

Each implementation starts from the same initial parameters and trains ``epochs`` epochs on the same
epochs of data (state reset to zeros at the start of each epoch, optimizer state carried). The result
is a JSON-ready dict: ``config``, ``environment``, ``targets``, ``results.<impl>`` and ``agreement``.
"""

from __future__ import annotations

import itertools
from typing import Optional

import numpy as np
from tqdm import tqdm

from . import io, task
from .config import AGREEMENT_TOLERANCE, Config
from .runners import make_trainer

LOG_EVERY = 100  # the tutorial's logging interval: avg_losses are means of 100 consecutive steps


def targets() -> dict:
    """The analytic losses (``compare.task.TARGETS``) as a dict."""
    return dict(task.TARGETS._asdict())


def running_averages(step_losses: np.ndarray, every: int = LOG_EVERY) -> np.ndarray:
    """``float[epochs, epoch_size]`` -> means of each block of ``every`` steps within each epoch
    (``float[epochs * (epoch_size // every)]``); one mean per epoch if an epoch is shorter than ``every``."""
    step_losses = np.atleast_2d(np.asarray(step_losses, np.float64))
    every = min(every, step_losses.shape[1])
    blocks = step_losses.shape[1] // every
    return step_losses[:, : blocks * every].reshape(step_losses.shape[0], blocks, every).mean(axis=2).reshape(-1)


def final_loss(step_losses: np.ndarray, last: int = LOG_EVERY) -> float:
    """Mean loss of the last ``last`` steps (epochs concatenated)."""
    flat = np.asarray(step_losses, np.float64).reshape(-1)
    return float(flat[-last:].mean())


def train_one(impl: str, config: Config, params: dict, data, device: str, quiet: bool = False):
    """Train one implementation; returns ``(result dict, final params)``. See the README for the keys."""
    steps = config.epochs * config.epoch_size
    with tqdm(total=steps, desc=f"{impl:>10}", unit="step", disable=quiet, leave=False) as bar:
        trainer = make_trainer(impl, config, params, device)
        try:
            losses, seconds, first_step = [], [], None
            for x, y in io.epoch_stream(config, data):
                xw, yw = task.windows(x, y, config.batch_size, config.num_steps)
                stats = trainer.train_epoch(xw, yw, progress=bar.update)
                losses.append(stats.losses)
                seconds.append(stats.seconds)
                first_step = stats.first_step_seconds if first_step is None else first_step
            final_params = trainer.get_params()
        finally:
            trainer.close()
    step_losses = np.stack(losses)
    total = float(sum(seconds))
    loss = final_loss(step_losses)
    compile_seconds = trainer.build_seconds + (first_step or 0.0)
    result = {
        "step_losses": [float(v) for v in step_losses.reshape(-1)],
        "avg_losses": [float(v) for v in running_averages(step_losses)],
        "final_loss": loss,
        "level": task.level(loss),
        "compile_seconds": compile_seconds,
        "build_seconds": trainer.build_seconds,
        "first_step_seconds": first_step,
        "epoch_seconds": seconds,
        "steps_per_second": steps / total,
        "points_per_second": config.points_per_epoch * config.epochs / total,
        "device": device,
        "initial_params": io.fingerprint(params),
        "data": "file" if data is not None else f"gen_data(seed={config.seed})",
    }
    return result, final_params


def agreement(results: dict) -> dict:
    """Pairwise comparison of the runs: the largest per-step loss difference, whether both started from
    the same parameters and data, and (if so) whether they agree within `AGREEMENT_TOLERANCE`."""
    pairs = []
    for a, b in itertools.combinations(results, 2):
        ra, rb = results[a], results[b]
        la, lb = np.asarray(ra["step_losses"]), np.asarray(rb["step_losses"])
        same_params = ra["initial_params"] == rb["initial_params"]
        same_data = ra["data"] == rb["data"]
        diff = float(np.max(np.abs(la - lb))) if la.shape == lb.shape else float("nan")
        pairs.append({
            "a": a, "b": b, "max_abs_diff": diff, "same_params": same_params, "same_data": same_data,
            "same_level": ra["level"] == rb["level"],
            "agree": bool(diff <= AGREEMENT_TOLERANCE) if same_params and same_data else None,
        })
    checked = [p["agree"] for p in pairs if p["agree"] is not None]
    return {"tolerance": AGREEMENT_TOLERANCE, "pairs": pairs,
            "all_agree": all(checked) if checked else None,
            "all_same_level": all(p["same_level"] for p in pairs)}


def run(config: Config, params: dict, devices, data=None, save_params: Optional[dict] = None,
        quiet: bool = False) -> dict:
    """Train every implementation of ``config.impls`` in turn and compare them.

    **Arguments:** ``params``: initial parameters (shared layout, numpy); ``devices``: an
    ``environment.Devices``; ``data``: ``(x, y)``, ``int32[epochs, data_size]``, or None for fresh
    ``gen_data`` epochs from ``config.seed``; ``save_params``: impl -> path for the final parameters.
    **Returns:** the result dict (``config``, ``environment``, ``targets``, ``results``, ``agreement``).
    """
    from .environment import describe

    results = {}
    for impl in tqdm(config.impls, desc="implementations", unit="impl", disable=quiet or len(config.impls) < 2,
                     leave=False):
        device = devices.jax if impl == "jax" else devices.tf
        results[impl], final_params = train_one(impl, config, params, data, device, quiet)
        if save_params and impl in save_params:
            io.save_params(save_params[impl], final_params)
            results[impl]["saved_params"] = str(save_params[impl])
    return {"command": "run", "config": config.as_dict(), "environment": describe(devices), "targets": targets(),
            "results": results, "agreement": agreement(results)}
