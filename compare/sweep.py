"""``rnn-compare sweep``: the tutorial's grid, num_steps x state_size (x backprop steps), over seeds.

Seed ``s`` fixes the initial parameters (`jax_rnn.glorot_params`) and the data stream (`jax_rnn.data.epochs`),
so every implementation sees the same runs. With ``jax`` all seeds of a cell train in one `jax_rnn.train_runs`
call per epoch (its plan made for that many runs), split over every device JAX sees; ``--workers`` cells train
at once, one thread each. TensorFlow trains seed after seed. A seed whose loss or update becomes non-finite
stops there (``diverged`` per cell); a cell's statistics are over the other seeds. ``tutorial_level``: the
level the truncation allows (an error must travel more than 3, or 8, steps).
"""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import jax
import jax.monitoring
import jax_rnn
import numpy as np
from tqdm import tqdm

from jax_rnn import data as task
from jax_rnn.checkpoint import Checkpoint
from jax_rnn.model import glorot_params
from jax_rnn.trainer import History, JaxTrainer, train

from . import checkpoint
from .config import record as config_record
from .environment import describe
from .run import final_loss, json_safe, make_trainer, running_averages, targets


def tutorial_level(backprop_steps: int) -> str:
    """The level truncated BPTT can reach in principle: ``"none"``, ``"first"`` or ``"both"``. A dependency
    L steps back can be learned only if some error travels more than L steps: ``backprop_steps`` > L
    (num_steps in the tutorial's truncation, where it is the longest an error travels)."""
    return "none" if backprop_steps <= 3 else "first" if backprop_steps <= 8 else "both"


class Timings:
    """Where a sweep's time goes, in seconds, per worker thread: ``data`` (generating the epochs and cutting
    windows) and ``compile`` (JAX tracing, lowering and XLA compiling, from JAX's own monitoring events,
    which fire in the compiling thread; loads from the persistent compilation cache count here too).
    A cell's training time is its wall time less these two."""

    _COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                       "/jax/core/compile/backend_compile_duration")

    def __init__(self):
        self._by_thread: dict[int, dict[str, float]] = {}

    def add(self, kind: str, seconds: float) -> None:
        mine = self._by_thread.setdefault(threading.get_ident(), {"data": 0.0, "compile": 0.0})
        mine[kind] += seconds

    def mine(self) -> dict[str, float]:
        """This thread's totals so far."""
        return dict(self._by_thread.get(threading.get_ident(), {"data": 0.0, "compile": 0.0}))

    def _on_event(self, event: str, duration: float, **_) -> None:
        if event in self._COMPILE_EVENTS:
            self.add("compile", duration)

    def __enter__(self) -> "Timings":
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        return self

    def __exit__(self, *exc) -> None:
        from jax._src import monitoring  # the public module has no unregister (jax 0.10)

        monitoring.unregister_event_duration_listener(self._on_event)


class SharedData:
    """Every seed's epochs, generated once for the whole sweep: a cell differs from another only in how
    it cuts them into windows. Kept as int8 (the values are 0 and 1): seeds x epochs x data_size x 2 bytes."""

    def __init__(self, config, seeds: list[int], timings: Timings):
        start = time.perf_counter()
        self.epochs = {s: [(x.astype(np.int8), y.astype(np.int8)) for x, y in task.epochs(config.data_size, s, config.epochs)]
                       for s in seeds}
        self.timings = timings
        timings.add("data", time.perf_counter() - start)

    def windows(self, config, seeds: list[int], start: int = 0, stacked: bool = False):
        """Per epoch from ``start``, the epochs of ``seeds`` cut for ``config`` (`jax_rnn.data.windows`):
        ``(x_windows, y_windows)``, ``int32[epoch_size, batch, num_steps]`` for one seed, or, ``stacked``,
        ``int8[seeds, epoch_size, batch, num_steps]`` (one cut for all, a quarter of the bytes to move)."""
        for epoch in range(start, len(self.epochs[seeds[0]])):
            begin = time.perf_counter()
            x, y = (np.stack([self.epochs[s][epoch][i] for s in seeds]) for i in (0, 1))
            cut = task.windows(x, y, config.batch_size, config.num_steps, np.int8 if stacked else np.int32)
            self.timings.add("data", time.perf_counter() - begin)
            yield cut if stacked else (cut[0][0], cut[1][0])


def _train_jax(config, seeds: list[int], device: str, bar, data: SharedData, saved=None, save=None):
    """All seeds in one `jax_rnn.train_runs` call per epoch over every device of that kind (a seed stops at its
    first non-finite window). ``saved``: this cell in progress (trained on with its plan); ``save(checkpoint)``
    after every epoch. Returns ``(float32[seeds, epochs, epoch_size], diverged per seed)``."""
    plan = None
    if saved is None:
        runs = [glorot_params(config.num_classes, config.state_size, s) for s in seeds]
        params, accumulators, history = jax.tree.map(lambda *leaves: np.stack(leaves), *runs), None, History()
    else:
        params, accumulators, history = saved.params, saved.accumulators, History.from_checkpoint(saved)
        plan = jax_rnn.Plan.from_record(saved.meta["plan"]) if "plan" in saved.meta else None
    trainer = JaxTrainer(config, params, accumulators, mesh=jax_rnn.run_mesh(jax.devices(device)), plan=plan)

    def after_epoch(history: History, trainer: JaxTrainer) -> None:
        bar.update(len(seeds))
        if save is not None:
            save(history.checkpoint(None, trainer, {}))

    history = train(trainer, data.windows(config, seeds, start=history.epochs, stacked=True), history, after_epoch)
    bar.update(len(seeds) * (config.epochs - history.epochs + 1) if history.stopped else 0)
    return history.losses(config.epochs), _as_json(history.diverged)


def _train_tf(impl: str, config, seeds: list[int], device: str, bar, data: SharedData):
    """Seed after seed, each stopped at its first non-finite loss or update (the rest of its losses
    NaN); returns ``(float32[seeds, epochs, epoch_size], diverged)`` as `_train_jax`."""
    out, diverged = [], []
    for s in seeds:
        trainer = make_trainer(impl, config, glorot_params(config.num_classes, config.state_size, s), device)
        try:
            history = train(trainer, data.windows(config, [s]), after_epoch=lambda h, t: bar.update(1))
        finally:
            trainer.close()
        bar.update(config.epochs - history.epochs + 1 if history.stopped else 0)
        out.append(history.losses(config.epochs))
        diverged.extend(_as_json(history.diverged))
    return np.stack(out), diverged


def _as_json(diverged: list) -> list:
    """Per seed, None or the `jax_rnn.Divergence` as a dict (``epoch``, ``step``, ``loss``)."""
    return [None if d is None else d._asdict() for d in diverged]


def _cell(config, impl: str, seeds: list[int], step_losses: np.ndarray, diverged: list,
          seconds: float) -> dict:
    finals = [None if d else final_loss(s) for s, d in zip(step_losses, diverged)]
    kept = [f for f in finals if f is not None]
    curves = np.stack([running_averages(s) for s in step_losses])
    finite_curves = curves[[d is None for d in diverged]]
    mean = float(np.mean(kept)) if kept else None
    return {
        "num_steps": config.num_steps, "backprop_steps": config.window_steps, "state_size": config.state_size,
        "impl": impl, "seeds": seeds,
        "final_losses": finals, "mean": mean, "std": float(np.std(kept)) if kept else None,
        "min": min(kept, default=None), "max": max(kept, default=None),
        "levels": ["diverged" if d else task.level(f) for f, d in zip(finals, diverged)],
        "level": "diverged" if any(diverged) else task.level(mean), "diverged": diverged,
        "tutorial_level": tutorial_level(config.window_steps), "seconds": seconds,
        "avg_losses": curves.tolist(),
        "avg_losses_mean": finite_curves.mean(axis=0).tolist() if len(finite_curves) else [None] * curves.shape[1],
    }


class _LockedBar:
    """A tqdm bar that several worker threads update (tqdm's own counter is not thread-safe)."""

    def __init__(self, bar):
        self._bar, self._lock = bar, threading.Lock()

    def update(self, n: int) -> None:
        with self._lock:
            self._bar.update(n)


def _cost(job: tuple) -> float:
    """A rough order of a cell's training cost, to start the longest cells first: state products dominate,
    each step computed k2 / k1 times (TBPTT(k1, k2))."""
    _, config, _ = job
    return max(config.state_size, 8) ** 2 * config.window_steps / config.num_steps


def sweep(configs: list, impls, num_seeds: int, devices, quiet: bool = False, workers: int = 1,
          checkpoint_dir=None, resume_dir=None) -> dict:
    """Train every config (grid cell) for seeds ``seed .. seed + num_seeds - 1`` with every implementation.

    ``workers``: how many JAX cells train at once, each in its own thread (JAX releases the GIL while it
    compiles and runs; the longest cells start first). The results do not depend on it. TensorFlow cells
    train afterwards, one after another on the calling thread. ``checkpoint_dir``: save every cell there
    (`compare.checkpoint.save_cell`, atomically): a JAX cell after every epoch, a TensorFlow cell when it
    is done; ``resume_dir``: load the cells found there, and continue those in progress (a sweep killed
    part-way recomputes at most the epoch each JAX cell was in, and a TensorFlow cell in progress, and ends
    with the same results: ``resumed_epochs`` per cell says how many epochs came from the checkpoint).

    **Returns:** ``command``, ``config`` (the grid), ``environment``, ``targets``, ``cells`` (one per
    num_steps x state_size x impl, with ``diverged`` per seed, and ``time``: its data, compile and training
    seconds), ``agreement`` (implementations compared seed by seed, on the steps where both losses are
    finite) and ``time`` (the sweep's wall time, and the cells' seconds added up); non-finite floats as None.
    """

    first = configs[0]
    seeds = [first.seed + i for i in range(num_seeds)]
    total = len(impls) * num_seeds * sum(c.epochs for c in configs)
    jobs = [(i, config, impl) for i, config in enumerate(configs) for impl in impls]
    wall = time.perf_counter()
    with tqdm(total=total, desc="sweep", unit="epoch", disable=quiet) as shared_bar, Timings() as timings:
        bar = _LockedBar(shared_bar)
        data = SharedData(first, seeds, timings)
        shared_data_seconds = timings.mine()["data"]

        def train_cell(job):
            _, config, impl = job
            record = {**config_record(config), "impl": impl, "seeds": seeds}
            saved = checkpoint.load_cell(resume_dir, record) if resume_dir is not None else None
            resumed = saved.epochs_done if saved is not None else 0
            if saved is not None and saved.params is None:  # finished
                bar.update(len(seeds) * config.epochs)
                meta = saved.meta
                return saved.step_losses, meta["diverged"], meta["seconds"], meta["time"], resumed
            save = None if checkpoint_dir is None else partial(checkpoint.save_cell, checkpoint_dir, record)
            if saved is not None:
                bar.update(len(seeds) * resumed)
            start, before = time.perf_counter(), timings.mine()
            if impl == "jax":
                losses, diverged = _train_jax(config, seeds, devices.jax, bar, data, saved, save)
            else:
                losses, diverged = _train_tf(impl, config, seeds, devices.tf, bar, data)
            seconds = time.perf_counter() - start
            spent = {k: v - before[k] for k, v in timings.mine().items()}
            spent["train"] = seconds - spent["data"] - spent["compile"]
            if save is not None:
                save(Checkpoint(None, config.epochs, None, None, losses, [],
                                {"diverged": diverged, "seconds": seconds, "time": spent}))
            return losses, diverged, seconds, spent, resumed

        jax_jobs = sorted((j for j in jobs if j[2] == "jax"), key=_cost, reverse=True)
        pool = ThreadPoolExecutor(max_workers=max(1, workers))
        try:
            futures = {j: pool.submit(train_cell, j) for j in jax_jobs}
            done = {j: f.result() for j, f in futures.items()}
        except BaseException:  # an error or Ctrl-C: start no more cells
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        pool.shutdown()
        done.update({j: train_cell(j) for j in jobs if j[2] != "jax"})  # TF after JAX: timed on a quiet machine

    cells, max_diff, same_level = [], 0.0, True
    for i, config in enumerate(configs):
        by_impl, levels = {}, {}
        for impl in impls:
            losses, diverged, seconds, spent, resumed = done[(i, config, impl)]
            by_impl[impl] = losses
            cells.append(_cell(config, impl, seeds, losses, diverged, seconds))
            cells[-1].update(time=spent, resumed_epochs=resumed)
            levels[impl] = tuple(cells[-1]["levels"])
        for a, b in itertools.combinations(by_impl, 2):
            both = np.isfinite(by_impl[a]) & np.isfinite(by_impl[b])
            max_diff = max(max_diff, float(np.max(np.abs(by_impl[a][both] - by_impl[b][both]), initial=0.0)))
        same_level &= len(set(levels.values())) <= 1
    grid = {"num_steps": sorted({c.num_steps for c in configs}), "state_size": sorted({c.state_size for c in configs}),
            "truncations": [list(t) for t in dict.fromkeys((c.num_steps, c.window_steps) for c in configs)],
            "impls": list(impls), "seeds": seeds, "epochs": first.epochs, "data_size": first.data_size,
            "batch_size": first.batch_size, "learning_rate": first.learning_rate,
            "jax_devices": len(jax.devices(devices.jax)) if "jax" in impls else None, "workers": workers}
    agreement = ({"max_abs_diff": max_diff, "same_level": same_level} if len(impls) > 1 else None)
    time_spent = {"total": time.perf_counter() - wall, "shared_data": shared_data_seconds,
                  **{k: sum(c["time"][k] for c in cells) for k in ("data", "compile", "train")}}
    return json_safe({"command": "sweep", "config": grid, "environment": describe(devices), "targets": targets(),
                      "cells": cells, "agreement": agreement, "time": time_spent})
