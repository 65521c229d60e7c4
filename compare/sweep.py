"""``rnn-compare sweep``: num_steps x state_size (x backprop steps) cells over seeds (a seed: weights, data)."""

import functools
import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing

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
from .distributed import Group, allgather
from .run import final_loss, make_trainer, running_averages

WRITER = "rnn-compare sweep"
FIELDS = ("epochs", "data_size", "batch_size", "learning_rate")
COMPILE_EVENTS = [f"/jax/core/compile/{e}_duration" for e in ("jaxpr_trace", "jaxpr_to_mlir_module", "backend_compile")]


def tutorial_level(backprop_steps):
    """The level TBPTT can reach: a lag of L steps needs errors that travel over L steps."""
    return "none" if backprop_steps <= 3 else "first" if backprop_steps <= 8 else "both"


_spent = threading.local()  # a cell's seconds (compile events fire in the compiling thread)


def _on_event(event, duration, **_):
    if event in COMPILE_EVENTS and hasattr(_spent, "seconds"):
        _spent.seconds["compile"] += duration


def _windows(epochs, c, seeds, start, stacked):
    for epoch in range(start, c.epochs):
        begin = time.perf_counter()
        x, y = (np.stack([epochs[s][epoch][i] for s in seeds]) for i in (0, 1))
        cut = task.windows(x, y, c.batch_size, c.num_steps, np.int8 if stacked else np.int32)
        _spent.seconds["data"] += time.perf_counter() - begin
        yield cut if stacked else (cut[0][0], cut[1][0])


def _train(impl, c, seeds, device, bar, epochs, saved, save):
    """``(losses[seeds, epochs, epoch_size], diverged per seed)``: JAX's seeds at once."""
    out, diverged = [], []
    for group in [seeds] if impl == "jax" else [[s] for s in seeds]:
        params = [glorot_params(c.num_classes, c.state_size, s) for s in group]
        history = History.from_checkpoint(saved) if saved else History()
        if impl != "jax":
            trainer = make_trainer(impl, c, params[0], device)
        else:
            plan = saved and saved.meta.get("plan") and jax_rnn.Plan.from_record(saved.meta["plan"])
            params, accumulators = (saved.params, saved.accumulators) if saved else (
                jax.tree.map(lambda *a: np.stack(a), *params), None)
            trainer = JaxTrainer(c, params, accumulators, mesh=jax_rnn.run_mesh(jax.local_devices(backend=device)), plan=plan)

        def after_epoch(history, trainer):
            bar(len(group))
            if save:
                save(history.checkpoint(None, trainer, {}))
        with closing(trainer):
            history = train(trainer, _windows(epochs, c, group, history.epochs, impl == "jax"), history, after_epoch)
        bar(len(group) * (c.epochs - history.epochs + 1) if history.stopped else 0)
        out.append(history.losses(c.epochs).reshape(len(group), c.epochs, -1))
        diverged += [d and d._asdict() for d in history.diverged]
    return np.concatenate(out), diverged


def _cell(c, impl, seeds, step_losses, meta, resumed):
    diverged = meta["diverged"]
    finals = [None if d else final_loss(s) for s, d in zip(step_losses, diverged)]
    kept = [f for f in finals if f is not None]
    curves = np.stack([running_averages(s) for s in step_losses])
    finite = curves[[d is None for d in diverged]]
    mean = float(np.mean(kept)) if kept else None
    return dict(
        num_steps=c.num_steps, backprop_steps=c.window_steps, state_size=c.state_size, impl=impl,
        seeds=seeds, final_losses=finals, mean=mean, std=float(np.std(kept)) if kept else None,
        min=min(kept, default=None), max=max(kept, default=None),
        levels=["diverged" if d else task.level(f) for f, d in zip(finals, diverged)],
        level="diverged" if any(diverged) else task.level(mean), diverged=diverged,
        tutorial_level=tutorial_level(c.window_steps), seconds=meta["seconds"], avg_losses=curves,
        avg_losses_mean=finite.mean(axis=0) if len(finite) else [None] * curves.shape[1], time=meta["time"],
        resumed_epochs=resumed)


def sweep(configs, impls, num_seeds, devices, quiet, workers, checkpoint_dir, resume_dir, group=Group()):
    """The sweep's result on process 0 (None on the others): each process trains its share of the cells,
    ``workers`` JAX cells at a time; results (and process 0's checkpoints) gather per round."""
    first, wall, lock = configs[0], time.perf_counter(), threading.Lock()
    seeds = [first.seed + i for i in range(num_seeds)]
    jobs = [(c, impl) for c in configs for impl in impls]
    records = [{**io.record(c), "impl": impl, "seeds": seeds} for c, impl in jobs]
    files = [io.cell_path(checkpoint_dir or resume_dir or "", cell) for cell in records]
    progress = tqdm(total=len(jobs) * num_seeds * first.epochs, desc="sweep", unit="epoch",
                    disable=quiet or group.index > 0)

    def bar(n):
        with lock:  # tqdm is not thread-safe
            progress.update(n)

    def save(k, ckpt):  # by process 0 only
        ckpt_io.save(files[k], ckpt._replace(config=records[k], meta={**ckpt.meta, "writer": WRITER}))

    def finish(k, losses, meta):
        if checkpoint_dir and group.index == 0:
            save(k, ckpt_io.Checkpoint(None, jobs[k][0].epochs, None, None, losses, [], meta))

    def train_cell(k):
        (c, impl), saved = jobs[k], resumed_from.get(k)
        resumed, finished = (saved.epochs_done, saved.params is None) if saved else (0, False)
        bar(len(seeds) * (c.epochs if finished else resumed))
        if finished:
            return saved.step_losses, saved.meta, resumed, True
        spent = _spent.seconds = {"data": 0.0, "compile": 0.0}
        start = time.perf_counter()
        every_epoch = impl == "jax" and checkpoint_dir and group.index == 0 and functools.partial(save, k)
        losses, diverged = _train(impl, c, seeds, devices.of(impl), bar, epochs, saved, every_epoch)
        meta = {"diverged": diverged, "seconds": time.perf_counter() - start, "time": spent}
        spent["train"] = meta["seconds"] - spent["data"] - spent["compile"]
        finish(k, losses, meta)
        return losses, meta, resumed, False

    # every seed's epochs, made once (values 0 and 1)
    epochs = {s: [(np.int8(x), np.int8(y)) for x, y in task.epochs(first.data_size, s, first.epochs)] for s in seeds}
    shared_data = time.perf_counter() - wall
    resumed_from = {k: io.load_checkpoint(f, cell, WRITER, "sweep") for k, (f, cell) in enumerate(zip(files, records))
                    if resume_dir and group.index == 0}
    resumed_from = allgather({k: v for k, v in resumed_from.items() if v}, group)[0]
    workers = allgather(max(1, workers), group)
    # longest first (state_size² x k2 / k1), TF after JAX; round-robin over processes
    cost = lambda k: (jobs[k][1] != "jax", -max(jobs[k][0].state_size, 8) ** 2 * jobs[k][0].window_steps
                      / jobs[k][0].num_steps)
    order = sorted(range(len(jobs)), key=cost)
    size = sum(workers) if checkpoint_dir and group.count > 1 else len(order)  # a round ends in a gather
    jax.monitoring.register_event_duration_secs_listener(_on_event)
    pool, done = ThreadPoolExecutor(max_workers=workers[group.index]), {}
    try:
        for begin in range(0, len(order), size):
            mine = order[begin:begin + size][group.index::group.count]
            ran = {k: pool.submit(train_cell, k) for k in mine if jobs[k][1] == "jax"}
            ran = {k: f.result() for k, f in ran.items()} | {k: train_cell(k) for k in mine if jobs[k][1] != "jax"}
            for index, part in enumerate(allgather(ran, group)):
                if index != group.index:
                    bar(len(seeds) * first.epochs * len(part))
                for k, (losses, meta, resumed, finished) in part.items():
                    if index != group.index and not finished:
                        finish(k, losses, meta)
                    done[k] = losses, _cell(*jobs[k], seeds, losses, meta, resumed)
    finally:  # start no more cells
        pool.shutdown(wait=False, cancel_futures=True)
        jax.monitoring.unregister_event_duration_listener(_on_event)
        progress.close()
    if group.index:
        return None
    cells = [done[k][1] for k in range(len(jobs))]
    groups = [[done[i * len(impls) + m] for m in range(len(impls))] for i in range(len(configs))]
    diffs = [np.abs(a - b)[np.isfinite(a) & np.isfinite(b)]
             for g in groups for (a, _), (b, _) in itertools.combinations(g, 2)]
    grid = dict(num_steps=sorted({c.num_steps for c in configs}), state_size=sorted({c.state_size for c in configs}),
                truncations=[list(t) for t in dict.fromkeys((c.num_steps, c.window_steps) for c in configs)],
                impls=list(impls), seeds=seeds, **{k: getattr(first, k) for k in FIELDS},
                jax_devices=len(jax.local_devices(backend=devices.jax)) if "jax" in impls else None,
                workers=workers[group.index], processes=group.count)
    time_spent = dict(total=time.perf_counter() - wall, shared_data=shared_data,
                      **{k: sum(c["time"][k] for c in cells) for k in ("data", "compile", "train")})
    agreement = None if len(impls) < 2 else dict(
        max_abs_diff=max((float(d.max(initial=0.0)) for d in diffs), default=0.0),
        same_level=all(len({tuple(c["levels"]) for _, c in g}) == 1 for g in groups))
    return io.result("sweep", grid, devices, cells=cells, time=time_spent, agreement=agreement)
