"""``rnn-compare bench`` and its modes: epoch timers, the C loop (reference_loop.c) among them."""

import contextlib
import dataclasses
import functools
import importlib.resources
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

import jax_rnn
from jax_rnn import data as task
from jax_rnn.model import flatten, glorot_params
from jax_rnn.train import program

from . import io, report
from .run import make_trainer

BASELINE = "tf-dynamic"
C_FLAGS = ["-O3", "-march=native", "-ffast-math"]
GRID = {"states": "4,16,64", "steps": "1,5,10", "large_states": "512,1024"}
TRUNCATION_GRID = {"states": "4,16", "steps": "1,3,5"}
GRID_IMPLS = ("jax", "tf-raw", "tf-static")  # the fastest TF versions


def summary(seconds):
    seconds = list(seconds)
    median, low, high = np.median(seconds), min(seconds), max(seconds)
    return dict(median=median, min=low, max=high, spread=(high - low) / median, seconds=seconds)


def _rss():
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """``m.peak_mib``: the largest RSS growth inside ``with PeakRss() as m``."""

    def __enter__(self):
        self.peak_mib, self._start, self._stop = None, _rss(), threading.Event()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.wait(0.005):
            self._peak = max(self._peak, _rss() or 0)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self.peak_mib = (max(self._peak, _rss() or 0) - self._start) / 2**20


@functools.cache
def _workdir():
    tmp = tempfile.TemporaryDirectory(prefix="rnn_scan_c_loop_")  # removed at exit
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if not cc:
        raise RuntimeError("the C reference loop needs a C compiler: none of cc, gcc, clang is on PATH")
    with importlib.resources.as_file(importlib.resources.files(__package__) / "reference_loop.c") as src:
        built = subprocess.run([cc, *C_FLAGS, "-o", f"{tmp.name}/c", str(src), "-lm"], capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"compiling the C reference loop failed ({cc} {' '.join(C_FLAGS)}):\n{built.stderr}")
    return tmp


def c_epoch(params, x_windows, y_windows, learning_rate):
    """A timer of one C epoch from ``params``; ``timer.losses``: ``f32[epoch_size]``."""
    xw, yw, tmp = np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32), Path(_workdir().name)
    sizes = [*xw.shape, len(params["softmax"]["b"]), len(params["rnn_cell"]["b"])]
    (tmp / "in").write_bytes(b"".join(np.asarray(a).tobytes() for a in (
        np.int32(sizes), np.float32(learning_rate), *flatten(params).values(), xw, yw)))

    def timer():
        subprocess.run([tmp / "c", tmp / "in", tmp / "out", "1"], check=True)
        raw = (tmp / "out").read_bytes()
        timer.losses = np.frombuffer(raw[: 4 * len(xw)], np.float32)
        return float(np.frombuffer(raw[4 * len(xw):], np.float64)[0])
    return timer


def time_trainers(c, impls, devices, repeats, bar, c_loop=False):
    """Build, warm-up, ``repeats`` epochs per impl in turn (TF's spinning threads slow what runs beside); peak RSS:
    from the weights' draw to the warm-up's end, beside `io.memory`'s estimate."""
    figures = {}
    for impl in impls:
        kind = devices.of(impl)
        with contextlib.ExitStack() as stack:
            with PeakRss() as memory:
                params = glorot_params(c.num_classes, c.state_size, c.seed)
                dtype = task.window_dtype(c.num_classes) if impl == "jax" else np.int32
                epochs = list(task.epoch_windows(dataclasses.replace(c, epochs=repeats + 1), dtype=dtype))
                trainer = stack.enter_context(contextlib.closing(make_trainer(impl, c, params, kind)))
                mine = epochs if impl != "jax" else jax.device_put(  # on the device before any clock starts
                    [tuple(np.asarray(w, trainer.window_dtype) for w in e) for e in epochs], trainer.device)
                history = jax_rnn.train(trainer, mine[:1])
            bar.update(1)
            first_step, rest = history.first_step_seconds, iter(mine[1:])
            first_epoch = history.epoch_seconds[0] + (first_step or 0.0)
            r = figures[impl] = dict(build_seconds=history.build_seconds, first_step_seconds=first_step,
                                     first_epoch_seconds=first_epoch, peak_rss_mib=memory.peak_mib, device=kind,
                                     estimate_mib=io.memory(c, impl, kind, epochs=repeats + 1).total / 2**20)

            def timer():
                jax_rnn.train(trainer, [next(rest)], history)
                bar.update(1)
                return history.epoch_seconds[-1]
            seconds = [timer() for _ in range(repeats // 2)]
            if c_loop and impl == impls[0]:  # amid the impl's epochs: drift shows as a gap
                c_timer = c_epoch(params, *epochs[0], c.learning_rate)
                c_times = summary(c_timer() for _ in range(repeats))
                diff = np.max(np.abs(c_timer.losses - history.step_losses[0]))
                figures["c"] = dict(max_loss_diff=float(diff), **c_times)
            t = summary(seconds + [timer() for _ in range(repeats - repeats // 2)])
        if history.stopped:
            raise RuntimeError(f"bench: {impl} diverged at {history.diverged[0]}; lower the learning rate")
        r.update({f"{k}_epoch_seconds": t[k] for k in ("median", "min", "max")}, epoch_seconds=t["seconds"],
                 spread=t["spread"], steps_per_second=c.epoch_size / t["median"],
                 points_per_second=c.epoch_size * c.batch_size * c.num_steps / t["median"])
        if impl == "jax":
            r["plan"] = trainer.plan.record()
    return figures


def page(command, c, devices, repeats, impls=None, **fields):
    return io.result(command, {**io.record(c, impls), "repeats": repeats}, devices, **fields,
                     measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))


def bench(c, impls, devices, repeats, quiet):
    with tqdm(total=len(impls) * (repeats + 1), desc="bench", unit="epoch", disable=quiet) as bar:
        results = time_trainers(c, impls, devices, repeats, bar)
    base = results.get(BASELINE)
    for r in results.values():
        r["speedup_vs_baseline"] = base["median_epoch_seconds"] / r["median_epoch_seconds"] if base else None
    return page("bench", c, devices, repeats, impls, baseline=BASELINE, results=results,
                plan=results.get("jax", {}).get("plan"))


def grid(c, impls, devices, repeats, states, steps, large_states, quiet):
    cells = [(d, n, c.data_size, True) for d in states for n in steps]
    cells += [(d, 10, 100_000, False) for d in large_states]  # no C loop: minutes there
    rows = []
    with tqdm(total=len(cells) * len(impls) * (repeats + 1), desc="bench --grid", unit="epoch", disable=quiet) as bar:
        for d, n, size, c_loop in cells:
            results = time_trainers(dataclasses.replace(c, state_size=d, num_steps=n, data_size=size), impls, devices,
                                    repeats, bar, c_loop)
            tf = {name: r["median_epoch_seconds"] for name, r in results.items() if name not in ("c", "jax")}
            fastest, jax_s = min(tf, key=tf.get, default=None), results["jax"]["median_epoch_seconds"]
            rows.append(dict(state_size=d, num_steps=n, data_size=size, results=results,
                             jax_over_c=jax_s / results["c"]["median"] if c_loop else None, fastest_tf=fastest,
                             fastest_tf_over_jax=tf[fastest] / jax_s if fastest else None))
            if not quiet:
                bar.write(report.format_grid(rows[-1:], header=len(rows) == 1))
    return page("bench --grid", c, devices, repeats, impls, cells=rows)


def compile_epoch(plan, params, opt_state, xw, yw, optimizer, kind="epoch"):
    start = time.perf_counter()
    lowered = program(plan, kind).lower(params, opt_state, xw, yw, None, optimizer=optimizer, plan=plan, guard=False)
    compiled = lowered.compile()
    return compiled, time.perf_counter() - start


def _wall(call):
    begin = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - begin


def _versus(c, cells, plans, repeats, row, fmt, quiet, device="cpu", c_loop=False):
    """Per cell (a dict of `FitConfig` fields) ``plans(cell)``'s epochs (and the C loop's) timed in turns."""
    data, optimizer, rows = task.gen_data(c.data_size, seed=1), jax_rnn.adagrad(c.learning_rate), []
    for fields in cells:
        cell = dataclasses.replace(c, **fields)
        params = glorot_params(2, cell.state_size, 0)
        xw, yw = task.windows(*data, cell.batch_size, cell.num_steps, task.window_dtype(cell.num_classes))
        timers = {"c": c_epoch(params, xw, yw, c.learning_rate)} if c_loop else {}
        params, xw, yw = jax.device_put((params, xw, yw), io.jax_device(device))
        opt_state, seconds = optimizer.init(params), {}
        for name, plan in plans(cell).items():
            compiled, seconds[name] = compile_epoch(plan, params, opt_state, xw, yw, optimizer)
            timers[name] = functools.partial(_wall, functools.partial(compiled, params, opt_state, xw, yw, None))
        rounds = [{name: timer() for name, timer in timers.items()} for _ in range(repeats + 1)][1:]
        times = {name: summary(r[name] for r in rounds) for name in timers}
        for name in [n for n in timers if n != "c"][1:]:
            rows.append(row(cell, name, times, seconds[name]))
            if not quiet:
                tqdm.write(fmt(rows[-1:], header=len(rows) == 1))
    return rows


def _grid(states, steps):
    return [dict(state_size=d, num_steps=n) for d, n in itertools.product(states, steps)]


def truncation(c, states, steps, backprop, repeats, quiet, device="cpu"):
    def plans(c):
        return {k2: jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, backprop_steps=k2, backend=device)
                for k2 in (c.num_steps, *(k for k in backprop if k > c.num_steps))}

    def row(c, k2, times, seconds):
        k1 = c.num_steps
        return dict(state_size=c.state_size, num_steps=k1, backprop_steps=k2, tf_style=times[k1], tbptt=times[k2],
                    compile_seconds=seconds, cost=times[k2]["median"] / times[k1]["median"], bound=1.2 * k2 / k1)
    return _versus(c, _grid(states, steps), plans, repeats, row, report.format_truncation, quiet, device=device)


def many_runs(c, states, steps, counts, repeats, quiet, device="cpu"):
    """Per grid cell, the epoch of R vmapped runs (`jax_rnn.train_runs`) against R epochs of one run, timed in turns:
    ``per_run[R]`` = (R runs' seconds / R) / one run's seconds."""
    data, optimizer, rows = task.gen_data(c.data_size, seed=1), jax_rnn.adagrad(c.learning_rate), []
    for fields in _grid(states, steps):
        cell, timers, seconds = dataclasses.replace(c, **fields), {}, {}
        one = (glorot_params(2, cell.state_size, 0),
               *task.windows(*data, cell.batch_size, cell.num_steps, task.window_dtype(cell.num_classes)))
        for runs in (1, *counts):
            plan = jax_rnn.plan(cell.state_size, cell.batch_size, cell.num_steps, runs=runs, backend=device)
            params, xw, yw = jax.device_put(one if runs == 1 else jax.tree.map(
                lambda a: np.repeat(a[None], runs, axis=0), one), io.jax_device(device))
            opt_state = (optimizer.init if runs == 1 else jax.vmap(optimizer.init))(params)
            compiled, seconds[runs] = compile_epoch(plan, params, opt_state, xw, yw, optimizer,
                                                    "epoch" if runs == 1 else "runs")
            timers[runs] = functools.partial(_wall, functools.partial(compiled, params, opt_state, xw, yw, None))
        rounds = [{runs: timer() for runs, timer in timers.items()} for _ in range(repeats + 1)][1:]
        times = {runs: summary(r[runs] for r in rounds) for runs in timers}
        rows.append(dict(**fields, one_run=times[1], runs=times, per_run={
            runs: times[runs]["median"] / runs / times[1]["median"] for runs in counts}))
        if not quiet:
            tqdm.write(report.format_many_runs(rows[-1:], header=len(rows) == 1))
    return rows


def random_cells(c, count, seed, repeats, quiet, device="cpu"):
    """``count`` cells drawn with ``seed`` (state 2-64 and batch 16-1000 log-uniform, num_steps 1-20): the rule's
    plan and the tuned plan against the C loop, timed in turns."""
    rng, tuning = np.random.default_rng(seed), {}
    draw = lambda low, high: int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))
    cells = [dict(state_size=draw(2, 64), batch_size=draw(16, 1000), num_steps=int(rng.integers(1, 21)))
             for _ in range(count)]

    def plans(c):
        start = time.perf_counter()
        tuned = jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, backend=device, tune=True)
        tuning[c] = time.perf_counter() - start, tuned
        return {"rule": jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, backend=device, tune=False),
                "tuned": tuned}

    def row(c, name, times, seconds):
        return dict(state_size=c.state_size, batch_size=c.batch_size, num_steps=c.num_steps, c=times["c"],
                    rule=times["rule"], tuned=times["tuned"], rule_over_c=times["rule"]["median"] / times["c"]["median"],
                    tuned_over_c=times["tuned"]["median"] / times["c"]["median"], tuning_seconds=tuning[c][0],
                    plan=tuning[c][1].record())
    return _versus(c, cells, plans, repeats, row, report.format_random_cells, quiet, device=device, c_loop=True)


def processes(counts, quiet, out):
    """``rnn-compare sweep`` (its defaults) end to end as N processes, the second of two runs (caches warm), beside
    the limit: the C loop's seconds for the same run-epochs spread over this machine's cores."""
    rows, cores = [], len(os.sched_getaffinity(0))
    for n in tqdm(counts, desc="bench --processes", unit="sweep", disable=quiet):
        argv = [sys.executable, "-m", "compare", "sweep", "--quiet", "--out", str(out), "--name", f"sweep-{n}",
                "--overwrite", "--processes", str(n)]
        seconds = []
        for _ in range(2):
            begin = time.perf_counter()
            subprocess.run(argv, check=True, capture_output=True)
            seconds.append(time.perf_counter() - begin)
        rows.append(dict(processes=n, seconds=seconds[1], first_seconds=seconds[0]))
    sweep = json.loads((out / f"sweep-{counts[-1]}.json").read_text())
    c, limit = sweep["config"], 0.0
    for cell in sweep["cells"]:
        xw, yw = task.windows(*task.gen_data(c["data_size"], 0), c["batch_size"], cell["num_steps"])
        timer = c_epoch(glorot_params(2, cell["state_size"], 0), xw, yw, c["learning_rate"])
        limit += np.median([timer() for _ in range(3)]) * len(cell["seeds"]) * c["epochs"] / cores
    return [{**r, "limit": limit, "over_limit": r["seconds"] / limit} for r in rows]
