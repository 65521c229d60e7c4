"""``rnn-compare run``: the implementations in turn, from the same parameters on the same data."""

import itertools
from contextlib import closing

import numpy as np
from tqdm import tqdm

import jax_rnn
from jax_rnn import checkpoint as ckpt_io
from jax_rnn import data as task
from jax_rnn.fit import running_averages
from jax_rnn.trainer import History, train

from . import io

WRITER = "rnn-compare run"
LOG_EVERY = 100
AGREEMENT_TOLERANCE = 1e-4


def make_trainer(impl, c, params, device="cpu", accumulators=None, deterministic=False, plan=None):
    if impl == "jax":
        return jax_rnn.JaxTrainer(c, params, accumulators, io.jax_device(device), plan=plan or c.plan(backend=device))
    import tf_rnn  # only when asked for

    model = tf_rnn.build(impl.removeprefix("tf-"), tf_rnn.ModelConfig.of(c), params=params, device=device,
                         deterministic=deterministic)
    if accumulators:
        model.set_accumulators(accumulators)
    return model


def final_loss(step_losses):
    return float(np.asarray(step_losses, np.float64).reshape(-1)[-LOG_EVERY:].mean())


def _losses(r):
    return np.asarray(r["step_losses"], np.float64)  # None reads as NaN


def train_one(impl, c, params, data, start, device, quiet, checkpoint_dir, resume, record, deterministic):
    history, plan = (History.from_checkpoint(resume), resume.meta.get("plan")) if resume else (History(), None)
    final_params = resume.params if resume else params

    def after_epoch(history, trainer):
        if checkpoint_dir:
            meta = {"writer": WRITER, "impl": impl, "initial_params": start[0], "data": start[1]}
            ckpt_io.save(io.run_path(checkpoint_dir, impl), history.checkpoint(record or {}, trainer, meta))

    with tqdm(total=c.epochs * c.epoch_size, initial=history.epochs * c.epoch_size,
              desc=f"{impl:>10}", unit="step", disable=quiet, leave=False) as bar:
        if history.epochs < c.epochs:
            with closing(make_trainer(impl, c, final_params, device, resume and resume.accumulators, deterministic,
                                      plan and jax_rnn.Plan.from_record(plan))) as trainer:
                plan = trainer.plan.record() if impl == "jax" else None
                windows = task.epoch_windows(c, data, start=history.epochs,
                                             dtype=getattr(trainer, "window_dtype", np.int32))
                history = train(trainer, windows, history, after_epoch, progress=bar.update)
                final_params = trainer.get_params()
    step_losses, d = history.losses().reshape(-1), history.diverged[0]
    diverged = d and {**d._asdict(), "global_step": d.epoch * c.epoch_size + d.step}
    if diverged:
        step_losses = step_losses[: diverged["global_step"] + 1]
    total, first_step = float(sum(history.epoch_seconds)), history.first_step_seconds
    timed = len(step_losses) - (first_step is not None)  # TF's first step is in compile_seconds
    rate = lambda n: n / total if timed > 0 and total > 0 else None
    loss = None if diverged else final_loss(step_losses)
    result = dict(
        step_losses=step_losses, avg_losses=[] if diverged else running_averages(history.losses()), final_loss=loss,
        level="diverged" if diverged else task.level(loss), diverged=diverged,
        compile_seconds=history.build_seconds + (first_step or 0.0), build_seconds=history.build_seconds,
        first_step_seconds=first_step, epoch_seconds=history.epoch_seconds, timed_steps=timed,
        steps_per_second=rate(timed), points_per_second=rate(timed * c.batch_size * c.num_steps),
        device=device, initial_params=start[0], data=start[1], **({"plan": plan} if impl == "jax" else {}))
    return result, final_params


def agreement(results):
    """Per pair: the largest step-loss difference (NaN unless both diverge at one step); ``agree`` (None: other
    starts)."""
    pairs = []
    for a, b in itertools.combinations(results, 2):
        ra, rb = results[a], results[b]
        la, lb = _losses(ra), _losses(rb)
        same = la.shape == lb.shape and np.array_equal(np.isfinite(la), np.isfinite(lb))
        diff = float(np.max(np.abs(la - lb)[np.isfinite(la)], initial=0.0)) if same else np.nan
        same_params, same_data = ra["initial_params"] == rb["initial_params"], ra["data"] == rb["data"]
        pairs.append(dict(a=a, b=b, max_abs_diff=diff, same_params=same_params, same_data=same_data,
                          same_level=ra["level"] == rb["level"],
                          agree=bool(diff <= AGREEMENT_TOLERANCE) if same_params and same_data else None))
    checked = [p["agree"] for p in pairs if p["agree"] is not None]
    return dict(tolerance=AGREEMENT_TOLERANCE, pairs=pairs, all_agree=all(checked) if checked else None,
                all_same_level=all(p["same_level"] for p in pairs))


def _resume(directory, impl, c, start):
    file = io.run_path(directory, impl)
    saved = io.load_checkpoint(file, c, WRITER, "config", impl, free=("epochs", "impls"))
    if saved and (saved.meta["initial_params"], saved.meta["data"]) != start:
        raise io.UsageError(f"--resume: {file} started from other parameters or data than this run")
    if saved and saved.epochs_done > c["epochs"]:
        raise io.UsageError(f"--resume: {file} holds {saved.epochs_done} epochs, more than --epochs {c['epochs']}")
    return saved


def run(c, impls, params, devices, data, save_params, quiet, checkpoint_dir, resume_dir, record, deterministic):
    start = io.fingerprint(params), "file" if data else f"gen_data(seed={c.seed})"
    resumes = {impl: resume_dir and _resume(resume_dir, impl, record, start) for impl in impls}
    results = {}
    for impl in tqdm(impls, desc="implementations", unit="impl", disable=quiet or len(impls) < 2, leave=False):
        results[impl], final_params = train_one(
            impl, c, params, data, start, devices.of(impl), quiet, checkpoint_dir, resumes[impl], record, deterministic)
        r = results[impl]
        if resumes[impl]:
            r["resumed_from"] = {"file": str(io.run_path(resume_dir, impl)), "epochs_done": resumes[impl].epochs_done}
        if save_params and impl in save_params:
            io.save_params(save_params[impl], final_params)
            r["saved_params"] = str(save_params[impl])
    return io.result("run", record, devices, plan=results.get("jax", {}).get("plan"), results=results,
                     agreement=agreement(results),
                     notes="compile s: build + TF's first step, which train s and steps/s leave out.")


def rerun_of(path, original, result):
    out = {"file": path, "identical": {}, "max_abs_diff": {}}
    for impl, r in result["results"].items():
        if impl in original.get("results", {}):
            a, b = _losses(original["results"][impl]), _losses(r)
            out["identical"][impl] = np.array_equal(a, b, equal_nan=True)
            out["max_abs_diff"][impl] = float(np.nanmax(np.abs(a - b), initial=0.0)) if a.shape == b.shape else None
    old, new = original.get("environment", {}), result["environment"]
    out["environment_changes"] = {k: [old.get(k), new.get(k)] for k in sorted({*old, *new}) if old.get(k) != new.get(k)}
    return io.json_safe(out)


def rerun_summary(info):
    parts = [f"{impl}: " + ("identical" if same else f"differs (max {info['max_abs_diff'][impl] or np.nan:.2e})")
             for impl, same in info["identical"].items()]
    return (f"rerun of {info['file']}: step losses " + "; ".join(parts)
            + f" (environment changes: {', '.join(info['environment_changes']) or 'none'})")
