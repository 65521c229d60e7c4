"""``rnn-compare sweep``: num_steps x state_size (x backprop steps) cells, each over seeds; seed ``s`` fixes
the weights and the data, so every implementation sees the same runs."""

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import jax
import jax.monitoring
import jax_rnn
import numpy as np
from tqdm import tqdm

from jax_rnn import checkpoint as ckpt_io
from jax_rnn import data as task
from jax_rnn.model import glorot_params
from jax_rnn.trainer import History, JaxTrainer, train

from . import io
from .run import final_loss, make_trainer, running_averages

WRITER = "rnn-compare sweep"  # of its checkpoints
COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration", "/jax/core/compile/jaxpr_to_mlir_module_duration",
                  "/jax/core/compile/backend_compile_duration")


def tutorial_level(backprop_steps) -> str:
    """The level TBPTT can reach: a lag of L steps needs errors that travel more than L steps."""
    return "none" if backprop_steps <= 3 else "first" if backprop_steps <= 8 else "both"


class Shared:
    """Every seed's epochs, made once (int8: the values are 0 and 1), and each thread's seconds of ``data``
    and ``compile`` (JAX's compile events fire in the compiling thread)."""

    def __init__(self, config, seeds):
        self.seconds, start = {}, time.perf_counter()
        jax.monitoring.register_event_duration_secs_listener(self._on_event)
        self.epochs = {s: [(x.astype(np.int8), y.astype(np.int8)) for x, y in task.epochs(config.data_size, s, config.epochs)]
                       for s in seeds}
        self.add("data", time.perf_counter() - start)

    def add(self, kind, seconds) -> None:
        self.mine()[kind] += seconds

    def mine(self) -> dict:
        return self.seconds.setdefault(threading.get_ident(), {"data": 0.0, "compile": 0.0})

    def _on_event(self, event, duration, **_):
        if event in COMPILE_EVENTS:
            self.add("compile", duration)

    def close(self) -> None:
        from jax._src import monitoring  # the public module has no unregister

        monitoring.unregister_event_duration_listener(self._on_event)

    def windows(self, config, seeds, start=0, stacked=False):
        """Per epoch: one seed's ``int32[epoch_size, batch, num_steps]`` windows, or ``stacked``,
        ``int8[seeds, epoch_size, batch, num_steps]``."""
        for epoch in range(start, len(self.epochs[seeds[0]])):
            begin = time.perf_counter()
            x, y = (np.stack([self.epochs[s][epoch][i] for s in seeds]) for i in (0, 1))
            cut = task.windows(x, y, config.batch_size, config.num_steps, np.int8 if stacked else np.int32)
            self.add("data", time.perf_counter() - begin)
            yield cut if stacked else (cut[0][0], cut[1][0])


def _train(impl, config, seeds, device, bar, data: Shared, saved=None, save=None):
    """``(f32[seeds, epochs, epoch_size], diverged per seed)``: JAX trains every seed at once (``saved``: the
    cell in progress; ``save(checkpoint)`` after every epoch), TensorFlow seed after seed."""
    out, diverged = [], []
    for group in [seeds] if impl == "jax" else [[s] for s in seeds]:
        params = [glorot_params(config.num_classes, config.state_size, s) for s in group]
        history = History.from_checkpoint(saved) if saved else History()
        if impl != "jax":
            trainer = make_trainer(impl, config, params[0], device)
        else:
            plan = saved and saved.meta.get("plan") and jax_rnn.Plan.from_record(saved.meta["plan"])
            params, accumulators = (saved.params, saved.accumulators) if saved else (
                jax.tree.map(lambda *a: np.stack(a), *params), None)
            trainer = JaxTrainer(config, params, accumulators, mesh=jax_rnn.run_mesh(jax.devices(device)), plan=plan)

        def after_epoch(history, trainer) -> None:
            bar(len(group))
            if save:
                save(history.checkpoint(None, trainer, {}))
        try:
            history = train(trainer, data.windows(config, group, history.epochs, impl == "jax"), history, after_epoch)
        finally:
            trainer.close()
        bar(len(group) * (config.epochs - history.epochs + 1) if history.stopped else 0)
        out.append(history.losses(config.epochs).reshape(len(group), config.epochs, -1))
        diverged += [d and d._asdict() for d in history.diverged]
    return np.concatenate(out), diverged


def _cell(config, impl, seeds, step_losses, diverged, seconds) -> dict:
    finals = [None if d else final_loss(s) for s, d in zip(step_losses, diverged)]
    kept = [f for f in finals if f is not None]
    curves = np.stack([running_averages(s) for s in step_losses])
    finite = curves[[d is None for d in diverged]]
    mean = float(np.mean(kept)) if kept else None
    return {
        "num_steps": config.num_steps, "backprop_steps": config.window_steps, "state_size": config.state_size,
        "impl": impl, "seeds": seeds, "final_losses": finals, "mean": mean,
        "std": float(np.std(kept)) if kept else None, "min": min(kept, default=None), "max": max(kept, default=None),
        "levels": ["diverged" if d else task.level(f) for f, d in zip(finals, diverged)],
        "level": "diverged" if any(diverged) else task.level(mean), "diverged": diverged,
        "tutorial_level": tutorial_level(config.window_steps), "seconds": seconds, "avg_losses": curves,
        "avg_losses_mean": finite.mean(axis=0) if len(finite) else [None] * curves.shape[1]}


def sweep(configs, impls, num_seeds, devices, quiet=False, workers=1, checkpoint_dir=None, resume_dir=None) -> dict:
    """Every config (cell) for seeds ``seed .. seed + num_seeds - 1`` with every impl: ``workers`` JAX cells at
    once, then TensorFlow's. A JAX cell is checkpointed after every epoch, a TF cell when done; neither
    changes the results. Returns ``config`` (the grid), ``cells``, ``agreement``, ``time`` and the rest."""
    first, wall, lock = configs[0], time.perf_counter(), threading.Lock()
    seeds = [first.seed + i for i in range(num_seeds)]
    jobs = [(i, config, impl) for i, config in enumerate(configs) for impl in impls]
    progress = tqdm(total=len(jobs) * num_seeds * first.epochs, desc="sweep", unit="epoch", disable=quiet)

    def bar(n) -> None:
        with lock:  # tqdm's counter is not thread-safe
            progress.update(n)

    def train_cell(job):
        _, config, impl = job
        cell = {**io.record(config), "impl": impl, "seeds": seeds}
        file = io.cell_path(checkpoint_dir or resume_dir or "", cell)
        saved = io.load_checkpoint(file, cell, WRITER, "sweep") if resume_dir else None
        resumed = saved.epochs_done if saved else 0
        bar(len(seeds) * (config.epochs if saved and saved.params is None else resumed))
        if saved and saved.params is None:  # finished
            return saved.step_losses, saved.meta["diverged"], saved.meta["seconds"], saved.meta["time"], resumed
        save = checkpoint_dir and (lambda c: ckpt_io.save(file, c._replace(config=cell, meta={**c.meta, "writer": WRITER})))
        start, before = time.perf_counter(), dict(data.mine())
        losses, diverged = _train(impl, config, seeds, devices.of(impl), bar, data, saved, impl == "jax" and save)
        seconds = time.perf_counter() - start
        spent = {k: v - before[k] for k, v in data.mine().items()}
        spent["train"] = seconds - spent["data"] - spent["compile"]
        if save:
            save(ckpt_io.Checkpoint(None, config.epochs, None, None, losses, [],
                                    {"diverged": diverged, "seconds": seconds, "time": spent}))
        return losses, diverged, seconds, spent, resumed

    data = Shared(first, seeds)
    shared_data_seconds = data.mine()["data"]
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    # Longest first: state products dominate, each step computed k2 / k1 times.
    cost = lambda job: -max(job[1].state_size, 8) ** 2 * job[1].window_steps / job[1].num_steps
    try:
        done = {j: pool.submit(train_cell, j) for j in sorted((j for j in jobs if j[2] == "jax"), key=cost)}
        done = {j: f.result() for j, f in done.items()}
        done.update({j: train_cell(j) for j in jobs if j[2] != "jax"})  # TF after JAX: timed on a quiet machine
    finally:  # an error or Ctrl-C: start no more cells
        pool.shutdown(wait=False, cancel_futures=True)
        data.close()
        progress.close()
    cells, max_diff = [], 0.0
    for i, config in enumerate(configs):
        for impl in impls:
            losses, diverged, seconds, spent, resumed = done[(i, config, impl)]
            cells.append({**_cell(config, impl, seeds, losses, diverged, seconds), "time": spent, "resumed_epochs": resumed})
        for a, b in itertools.combinations([done[(i, config, impl)][0] for impl in impls], 2):
            both = np.isfinite(a) & np.isfinite(b)
            max_diff = max(max_diff, float(np.max(np.abs(a[both] - b[both]), initial=0.0)))
    same_level = all(len({tuple(c["levels"]) for c in cells[k:k + len(impls)]}) == 1 for k in range(0, len(cells), len(impls)))
    grid = {"num_steps": sorted({c.num_steps for c in configs}), "state_size": sorted({c.state_size for c in configs}),
            "truncations": [list(t) for t in dict.fromkeys((c.num_steps, c.window_steps) for c in configs)],
            "impls": list(impls), "seeds": seeds, "epochs": first.epochs, "data_size": first.data_size,
            "batch_size": first.batch_size, "learning_rate": first.learning_rate,
            "jax_devices": len(jax.devices(devices.jax)) if "jax" in impls else None, "workers": workers}
    time_spent = {"total": time.perf_counter() - wall, "shared_data": shared_data_seconds,
                  **{k: sum(c["time"][k] for c in cells) for k in ("data", "compile", "train")}}
    return io.result("sweep", grid, devices, cells=cells, time=time_spent,
                     agreement={"max_abs_diff": max_diff, "same_level": same_level} if len(impls) > 1 else None)
