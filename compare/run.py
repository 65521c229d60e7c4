"""``rnn-compare run``: the implementations one after another, from the same parameters on the same data."""

import itertools

import numpy as np
from tqdm import tqdm

import jax_rnn
from jax_rnn import checkpoint as ckpt_io
from jax_rnn import data as task
from jax_rnn.fit import running_averages
from jax_rnn.trainer import History, train

from . import io
from .io import UsageError

WRITER = "rnn-compare run"  # of its checkpoints
LOG_EVERY = 100  # the tutorial's logging interval
AGREEMENT_TOLERANCE = 1e-4  # same params and data: every step's loss within this
TIMING_NOTE = ("compile s = build (JAX: ahead-of-time compile; TF: graph build, tf2: tracing) + TF's first step; "
               "train s and steps/s exclude that first step, so nothing is counted twice.")


def make_trainer(impl, config, params, device="cpu", accumulators=None, deterministic=False, plan=None):
    """``impl`` (a CLI name) as a trainer of `jax_rnn.train`; ``plan``: JAX's, for a resumed run."""
    if impl == "jax":
        return jax_rnn.JaxTrainer(config, params, accumulators, io.jax_device(device), plan=plan)
    import tf_rnn  # only when a TensorFlow version is asked for

    model = tf_rnn.build(impl.removeprefix("tf-"), tf_rnn.ModelConfig.of(config), params=params, device=device,
                         deterministic=deterministic)
    if accumulators is not None:
        model.set_accumulators(accumulators)
    return model


def final_loss(step_losses, last=LOG_EVERY) -> float:
    """Mean loss of the last ``last`` steps, epochs concatenated."""
    return float(np.asarray(step_losses, np.float64).reshape(-1)[-last:].mean())


def start_of(config, params, data) -> tuple[str, str]:
    """``(parameters' fingerprint, data source)``."""
    return io.fingerprint(params), "file" if data is not None else f"gen_data(seed={config.seed})"


def train_one(impl, config, params, data, device, quiet=False, checkpoint_dir=None, resume=None, record=None,
              deterministic=False):
    """Train ``impl``; returns ``(result, final params)``. Stops at the first non-finite loss or update
    (``diverged``); the final parameters are then the last finite ones."""
    start = start_of(config, params, data)
    history, plan, final_params = (History.from_checkpoint(resume), resume.meta.get("plan"), resume.params) if resume \
        else (History(), None, params)

    def after_epoch(history: History, trainer) -> None:
        if checkpoint_dir is not None:
            meta = {"writer": WRITER, "impl": impl, "initial_params": start[0], "data": start[1]}
            ckpt_io.save(io.run_path(checkpoint_dir, impl), history.checkpoint(record or {}, trainer, meta))

    with tqdm(total=config.epochs * config.epoch_size, initial=history.epochs * config.epoch_size,
              desc=f"{impl:>10}", unit="step", disable=quiet, leave=False) as bar:
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
    step_losses, d = history.losses().reshape(-1), history.diverged[0]
    diverged = d and {**d._asdict(), "global_step": d.epoch * config.epoch_size + d.step}
    if diverged:
        step_losses = step_losses[: diverged["global_step"] + 1]
    total, first_step = float(sum(history.epoch_seconds)), history.first_step_seconds
    timed = len(step_losses) - (first_step is not None)  # TF's first step is in compile_seconds
    rate = lambda n: n / total if timed > 0 and total > 0 else None
    loss = None if diverged else final_loss(step_losses)
    result = {
        "step_losses": step_losses, "avg_losses": [] if diverged else running_averages(history.losses()),
        "final_loss": loss, "level": "diverged" if diverged else task.level(loss), "diverged": diverged,
        "compile_seconds": history.build_seconds + (first_step or 0.0), "build_seconds": history.build_seconds,
        "first_step_seconds": first_step, "epoch_seconds": history.epoch_seconds, "timed_steps": timed,
        "steps_per_second": rate(timed), "points_per_second": rate(timed * config.batch_size * config.num_steps),
        "device": device, "initial_params": start[0], "data": start[1], **({"plan": plan} if impl == "jax" else {})}
    return result, final_params


def agreement(results) -> dict:
    """Per pair: the largest step-loss difference (NaN unless both diverge at the same step), and whether
    they agree within `AGREEMENT_TOLERANCE` (None: different starts)."""
    pairs = []
    for a, b in itertools.combinations(results, 2):
        ra, rb = results[a], results[b]
        la, lb = np.asarray(ra["step_losses"], np.float64), np.asarray(rb["step_losses"], np.float64)
        same = la.shape == lb.shape and np.array_equal(np.isfinite(la), np.isfinite(lb))
        diff = float(np.max(np.abs(la - lb)[np.isfinite(la) & np.isfinite(lb)], initial=0.0)) if same else float("nan")
        same_params, same_data = ra["initial_params"] == rb["initial_params"], ra["data"] == rb["data"]
        pairs.append({"a": a, "b": b, "max_abs_diff": diff, "same_params": same_params, "same_data": same_data,
                      "same_level": ra["level"] == rb["level"],
                      "agree": bool(diff <= AGREEMENT_TOLERANCE) if same_params and same_data else None})
    checked = [p["agree"] for p in pairs if p["agree"] is not None]
    return {"tolerance": AGREEMENT_TOLERANCE, "pairs": pairs, "all_agree": all(checked) if checked else None,
            "all_same_level": all(p["same_level"] for p in pairs)}


def _resume(directory, impl, config, start):
    file = io.run_path(directory, impl)
    saved = io.load_checkpoint(file, config, WRITER, "config", impl, free=("epochs", "impls"))
    if saved is not None and (saved.meta["initial_params"], saved.meta["data"]) != start:
        raise UsageError(f"--resume: {file} started from other parameters or data than this run")
    if saved is not None and saved.epochs_done > config["epochs"]:
        raise UsageError(f"--resume: {file} holds {saved.epochs_done} epochs, more than --epochs {config['epochs']}")
    return saved


def run(config, impls, params, devices, data=None, save_params=None, quiet=False, checkpoint_dir=None,
        resume_dir=None, record=None, deterministic=False) -> dict:
    """Train every impl on ``config`` (a `FitConfig`) from ``params``; ``data``: ``int32[epochs, data_size]``
    ``(x, y)``, or None for ``config.seed``'s; ``save_params``: impl -> path. Returns ``config``, ``environment``,
    ``targets``, ``plan`` (JAX's), ``results.<impl>``, ``agreement``; non-finite floats as None."""
    record = record or io.record(config, impls)
    start = start_of(config, params, data)
    resumes = {impl: _resume(resume_dir, impl, record, start) if resume_dir else None for impl in impls}
    results = {}
    for impl in tqdm(impls, desc="implementations", unit="impl", disable=quiet or len(impls) < 2, leave=False):
        results[impl], final_params = train_one(impl, config, params, data, devices.of(impl), quiet, checkpoint_dir,
                                                resumes[impl], record, deterministic)
        if resumes[impl] is not None:
            results[impl]["resumed_from"] = {"file": str(io.run_path(resume_dir, impl)),
                                             "epochs_done": resumes[impl].epochs_done}
        if save_params and impl in save_params:
            io.save_params(save_params[impl], final_params)
            results[impl]["saved_params"] = str(save_params[impl])
    return io.result("run", record, devices, plan=results.get("jax", {}).get("plan"), results=results,
                     agreement=agreement(results), notes=TIMING_NOTE)


def rerun_of(path, original, result) -> dict:
    """``--from``: per impl, identical losses? the largest difference; and what in the environment changed."""
    out = {"file": path, "identical": {}, "max_abs_diff": {}, "environment_changes": {}}
    for impl, r in result["results"].items():
        if impl in original.get("results", {}):
            a = np.asarray(original["results"][impl]["step_losses"], np.float64)  # None reads as NaN
            b = np.asarray(r["step_losses"], np.float64)
            out["identical"][impl] = bool(a.shape == b.shape and np.array_equal(a, b, equal_nan=True))
            out["max_abs_diff"][impl] = float(np.nanmax(np.abs(a - b), initial=0.0)) if a.shape == b.shape else None
    old, new = original.get("environment", {}), result["environment"]
    out["environment_changes"] = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    return io.json_safe(out)


def rerun_summary(info) -> str:
    parts = [f"{impl}: " + ("identical" if same else f"differs (max {info['max_abs_diff'][impl] or float('nan'):.2e})")
             for impl, same in info["identical"].items()]
    return (f"rerun of {info['file']}: step losses " + "; ".join(parts)
            + f" (environment changes: {', '.join(info['environment_changes']) or 'none'})")
