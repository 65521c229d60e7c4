"""``rnn-compare run``: every chosen implementation, one after the other, on the same data and weights.

Each starts from the same parameters and trains the same epochs (state reset each epoch, optimizer state
carried). The result: ``config``, ``environment``, ``targets``, ``plan`` (JAX's), ``results.<impl>`` and
``agreement``; non-finite floats are None (`json_safe`). ``compile_seconds`` = ``build_seconds`` (JAX:
ahead-of-time compile; TF: graph build or tracing) + ``first_step_seconds`` (TF's first step, where TF1
optimises its graph); ``epoch_seconds`` and the rates exclude that first step.
"""

from __future__ import annotations

import itertools
import math
from typing import Optional

import numpy as np
from tqdm import tqdm

import jax_rnn
from jax_rnn import data as task
from jax_rnn.checkpoint import Checkpoint
from jax_rnn.fit import running_averages
from jax_rnn.trainer import History, train

from . import checkpoint, io
from .config import AGREEMENT_TOLERANCE, is_tf
from .environment import describe, jax_device

LOG_EVERY = 100  # the tutorial's logging interval
TIMING_NOTE = ("compile s = build (JAX: ahead-of-time compile; TF: graph build, tf2: tracing) + TF's first step; "
               "train s and steps/s exclude that first step, so nothing is counted twice.")


def make_trainer(impl: str, config, params: dict, device: str = "cpu", accumulators: Optional[dict] = None,
                 deterministic: bool = False, plan=None):
    """Implementation ``impl`` (a CLI name) as a trainer of `jax_rnn.train`, from ``params`` on ``device``;
    ``accumulators``: Adagrad's state to start from; ``plan``: JAX's (a resumed run's)."""
    if not is_tf(impl):
        return jax_rnn.JaxTrainer(config, params, accumulators, jax_device(device), plan=plan)
    import tf_rnn  # heavy and optional: only when a TensorFlow version is asked for

    model = tf_rnn.build(impl.removeprefix("tf-"), tf_rnn.ModelConfig.of(config), params=params, device=device,
                         deterministic=deterministic)
    if accumulators is not None:
        model.set_accumulators(accumulators)
    return model


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


def provenance(config, params: dict, data) -> tuple[str, str]:
    """What a run starts from, as results and checkpoints record it: the initial parameters' fingerprint
    (SHA-256) and the data source (``"file"``, or the generated stream of ``config.seed``)."""
    return io.fingerprint(params), "file" if data is not None else f"gen_data(seed={config.seed})"


def train_one(impl: str, config, params: dict, data, device: str, quiet: bool = False, checkpoint_dir=None,
              resume: Optional[Checkpoint] = None, record: Optional[dict] = None, deterministic: bool = False):
    """Train one implementation; returns ``(result dict, final params)``. ``checkpoint_dir``: save
    ``<dir>/<impl>.npz`` after every epoch; ``resume``: a loaded checkpoint to continue from (JAX trains on
    with its plan); ``record``: the config record kept in checkpoints. Training stops at the first
    non-finite loss or update (``result["diverged"]``); the final parameters are the last finite ones."""
    fingerprint, data_source = provenance(config, params, data)
    history = History.from_checkpoint(resume) if resume else History()
    plan = resume.meta.get("plan") if resume else None
    final_params = resume.params if resume else params

    def after_epoch(history: History, trainer) -> None:
        if checkpoint_dir is not None:
            checkpoint.save(checkpoint_dir, impl, record or {}, history, trainer, fingerprint, data_source)

    with tqdm(total=config.epochs * config.epoch_size, initial=history.epochs * config.epoch_size, desc=f"{impl:>10}",
              unit="step", disable=quiet, leave=False) as bar:
        if history.epochs < config.epochs:
            trainer = make_trainer(impl, config, final_params, device, resume.accumulators if resume else None,
                                   deterministic, plan and jax_rnn.Plan.from_record(plan))
            plan = trainer.plan.record() if impl == "jax" else None
            try:
                windows = task.epoch_windows(config, data, start=history.epochs,
                                             dtype=getattr(trainer, "window_dtype", np.int32))
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
    if impl == "jax":
        result["plan"] = plan
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


def run(config, impls, params: dict, devices, data=None, save_params: Optional[dict] = None, quiet: bool = False,
        checkpoint_dir=None, resume_dir=None, record: Optional[dict] = None, deterministic: bool = False) -> dict:
    """Train every implementation of ``impls`` in turn on ``config`` (a `jax_rnn.FitConfig`) and compare them.

    ``params``: initial parameters (numpy); ``devices``: an `environment.Devices`; ``data``: ``(x, y)``,
    ``int32[epochs, data_size]``, or None for the epochs of ``config.seed``; ``save_params``: impl -> path;
    ``checkpoint_dir``/``resume_dir``: every checkpoint is loaded and checked before anything trains.
    """
    record = record or checkpoint.config_record(config, impls, None, None, deterministic)
    fingerprint, data_source = provenance(config, params, data)
    resumes = {impl: checkpoint.load(resume_dir, impl, record, fingerprint, data_source) if resume_dir else None
               for impl in impls}
    results = {}
    for impl in tqdm(impls, desc="implementations", unit="impl", disable=quiet or len(impls) < 2, leave=False):
        device = devices.jax if impl == "jax" else devices.tf
        results[impl], final_params = train_one(impl, config, params, data, device, quiet, checkpoint_dir,
                                                resumes[impl], record, deterministic)
        if resumes[impl] is not None:
            results[impl]["resumed_from"] = {"file": str(checkpoint.path(resume_dir, impl)),
                                             "epochs_done": resumes[impl].epochs_done}
        if save_params and impl in save_params:
            io.save_params(save_params[impl], final_params)
            results[impl]["saved_params"] = str(save_params[impl])
    return json_safe({"command": "run", "config": record, "environment": describe(devices), "targets": targets(),
                      "plan": results["jax"]["plan"] if "jax" in results else None, "results": results,
                      "agreement": agreement(results), "notes": TIMING_NOTE})
