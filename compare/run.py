"""``rnn-compare run``: every chosen implementation, one after the other, on the same data and weights.

Each implementation starts from the same initial parameters and trains ``epochs`` epochs on the same
epochs of data (state reset to zeros at the start of each epoch, optimizer state carried). The result
is a JSON-ready dict: ``config``, ``environment``, ``targets``, ``results.<impl>`` and ``agreement``;
every non-finite float in it is None (`json_safe`), so the JSON is strict (no NaN / Infinity tokens).

Timing, the same split for JAX and TensorFlow: ``compile_seconds`` = ``build_seconds`` (JAX: ahead-of-
time compile; TF: graph build / tracing) + ``first_step_seconds`` (TF only: the first step, where TF1
optimises the graph and tf2 instantiates its function; None for JAX). ``epoch_seconds`` are training
only: the first epoch's excludes that first step, and ``steps_per_second`` / ``points_per_second``
count the steps actually timed (TF: one fewer than trained).
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np
from tqdm import tqdm

from jax_rnn.fit import running_averages  # noqa: F401  (re-exported: compare's one averaging rule)

from jax_rnn import data as task
from jax_rnn.checkpoint import Checkpoint
from jax_rnn.driver import History, train

from . import checkpoint, io
from .config import AGREEMENT_TOLERANCE, Config
from .environment import describe
from .runners import make_trainer

LOG_EVERY = 100  # the tutorial's logging interval: avg_losses are means of 100 consecutive steps
TIMING_NOTE = ("compile s = build (JAX: ahead-of-time compile; TF: graph build, tf2: tracing) + TF's first step; "
               "train s and steps/s exclude that first step, so nothing is counted twice.")


def json_safe(tree):
    """``tree`` (dicts, lists, tuples, numbers) with every NaN / inf float replaced by None, numpy scalars
    as Python numbers: what a strict JSON parser accepts. Readers treat None as "not a number"."""
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    if isinstance(tree, np.ndarray):
        return json_safe(tree.tolist())
    if isinstance(tree, np.generic):
        tree = tree.item()
    if isinstance(tree, float) and not math.isfinite(tree):
        return None
    return tree


def targets() -> dict:
    """The analytic losses (``jax_rnn.data.TARGETS``) as a dict."""
    return dict(task.TARGETS._asdict())


def final_loss(step_losses: np.ndarray, last: int = LOG_EVERY) -> float:
    """Mean loss of the last ``last`` steps (epochs concatenated)."""
    flat = np.asarray(step_losses, np.float64).reshape(-1)
    return float(flat[-last:].mean())


def provenance(config: Config, params: dict, data) -> tuple[str, str]:
    """What a run starts from, as results and checkpoints record it: the initial parameters' fingerprint
    (SHA-256) and the data source (``"file"``, or the generated stream of ``config.seed``)."""
    return io.fingerprint(params), "file" if data is not None else f"gen_data(seed={config.seed})"


def train_one(impl: str, config: Config, params: dict, data, device: str, quiet: bool = False,
              checkpoint_dir=None, resume: Optional[Checkpoint] = None, record: Optional[dict] = None,
              deterministic: bool = False):
    """Train one implementation (`jax_rnn.driver.train`); returns ``(result dict, final params)``. See the
    README for the keys.

    ``checkpoint_dir``: save ``<dir>/<impl>.npz`` after every epoch (`compare.checkpoint`); ``resume``:
    a loaded checkpoint to continue from; ``record``: the config record stored in checkpoints. Training
    stops at the first non-finite loss or update (``result["diverged"]``: epoch, step, loss); the final
    parameters are then the last finite ones.
    """
    fingerprint, data_source = provenance(config, params, data)
    history = History.from_checkpoint(resume) if resume else History()
    final_params = resume.params if resume else params

    def after_epoch(history: History, trainer) -> None:
        if checkpoint_dir is not None:
            checkpoint.save(checkpoint_dir, impl, record or {}, history, trainer, fingerprint, data_source)

    with tqdm(total=config.epochs * config.epoch_size, initial=history.epochs * config.epoch_size, desc=f"{impl:>10}",
              unit="step", disable=quiet, leave=False) as bar:
        if history.epochs < config.epochs:
            trainer = make_trainer(impl, config, final_params, device, resume.accumulators if resume else None,
                                   deterministic)
            try:
                dtype = getattr(trainer, "window_dtype", None)  # the JAX trainer's int8; TensorFlow: int32
                windows = task.epoch_windows(config, data, start=history.epochs,
                                             dtype=np.int32 if dtype is None else dtype)
                history = train(trainer, windows, history, after_epoch, progress=bar.update)
                final_params = trainer.get_params()
            finally:
                trainer.close()
    step_losses = history.losses().reshape(-1)
    d = history.diverged[0]
    diverged = None if d is None else {**d._asdict(), "global_step": d.epoch * config.epoch_size + d.step}
    if diverged is not None:
        step_losses = step_losses[: diverged["global_step"] + 1]  # up to the diverged window (NaN after it)
    seconds = history.epoch_seconds
    total = float(sum(seconds))
    loss = final_loss(step_losses) if diverged is None else None
    first_step = history.first_step_seconds
    timed = len(step_losses) - (1 if first_step is not None else 0)  # TF's first step is in compile_seconds
    result = {
        "step_losses": [float(v) for v in step_losses],
        "avg_losses": [float(v) for v in running_averages(history.losses())] if diverged is None else [],
        "final_loss": loss,
        "level": task.level(loss) if diverged is None else "diverged",
        "diverged": diverged,
        "compile_seconds": history.build_seconds + (first_step or 0.0),
        "build_seconds": history.build_seconds,
        "first_step_seconds": first_step,
        "epoch_seconds": seconds,
        "timed_steps": timed,
        "steps_per_second": timed / total if timed > 0 and total > 0 else None,
        "points_per_second": timed * config.batch_size * config.num_steps / total if timed > 0 and total > 0 else None,
        "device": device,
        "initial_params": fingerprint,
        "data": data_source,
    }
    return result, final_params


def agreement(results: dict) -> dict:
    """Pairwise comparison of the runs: the largest per-step loss difference, whether both started from
    the same parameters and data, and (if so) whether they agree within `AGREEMENT_TOLERANCE`."""
    pairs = []
    for a, b in itertools.combinations(results, 2):
        ra, rb = results[a], results[b]
        la, lb = np.asarray(ra["step_losses"], np.float64), np.asarray(rb["step_losses"], np.float64)
        same_params = ra["initial_params"] == rb["initial_params"]
        same_data = ra["data"] == rb["data"]
        # Diverged runs: the same divergence step, and the finite losses before it, count as agreeing.
        both = np.isfinite(la) & np.isfinite(lb) if la.shape == lb.shape else np.zeros(0, bool)
        same_nonfinite = la.shape == lb.shape and np.array_equal(np.isfinite(la), np.isfinite(lb))
        diff = float(np.max(np.abs(la[both] - lb[both]), initial=0.0)) if same_nonfinite else float("nan")
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
        quiet: bool = False, checkpoint_dir=None, resume_dir=None, record: Optional[dict] = None,
        deterministic: bool = False) -> dict:
    """Train every implementation of ``config.impls`` in turn and compare them.

    **Arguments:** ``params``: initial parameters (shared layout, numpy); ``devices``: an
    ``environment.Devices``; ``data``: ``(x, y)``, ``int32[epochs, data_size]``, or None for fresh
    ``gen_data`` epochs from ``config.seed``; ``save_params``: impl -> path for the final parameters;
    ``checkpoint_dir``/``resume_dir``: see `train_one` and `compare.checkpoint` (every checkpoint is
    loaded and checked before anything trains); ``record``: the config record kept in checkpoints;
    ``deterministic``: TensorFlow op determinism.
    **Returns:** the result dict (``config``, ``environment``, ``targets``, ``results``, ``agreement``,
    ``notes``), non-finite floats as None (`json_safe`).
    """

    record = record or checkpoint.config_record(config, None, None, deterministic)
    fingerprint, data_source = provenance(config, params, data)
    resumes = {impl: checkpoint.load(resume_dir, impl, record, fingerprint, data_source) if resume_dir else None
               for impl in config.impls}
    results = {}
    for impl in tqdm(config.impls, desc="implementations", unit="impl", disable=quiet or len(config.impls) < 2,
                     leave=False):
        device = devices.jax if impl == "jax" else devices.tf
        results[impl], final_params = train_one(impl, config, params, data, device, quiet, checkpoint_dir,
                                                resumes[impl], record, deterministic)
        if resumes[impl] is not None:
            results[impl]["resumed_from"] = {"file": str(checkpoint.path(resume_dir, impl)),
                                             "epochs_done": resumes[impl].epochs_done}
        if save_params and impl in save_params:
            io.save_params(save_params[impl], final_params)
            results[impl]["saved_params"] = str(save_params[impl])
    return json_safe({"command": "run", "config": config.as_dict(), "environment": describe(devices),
                      "targets": targets(), "results": results, "agreement": agreement(results),
                      "notes": TIMING_NOTE})
