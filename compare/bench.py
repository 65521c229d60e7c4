"""``rnn-compare bench`` and its modes: epoch timers, the C loop (reference_loop.c) among them."""

import contextlib
import dataclasses
import functools
import importlib.resources
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
    s = list(seconds)
    median = np.median(s)
    return dict(median=median, min=min(s), max=max(s), spread=(max(s) - min(s)) / median, seconds=s)


def _wall(fn, *args, **kwargs):
    begin = time.perf_counter()
    jax.block_until_ready(fn(*args, **kwargs))
    return time.perf_counter() - begin


def _rss():
    try:
        return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """``m.peak_mib``: the largest RSS growth inside ``with PeakRss() as m`` (None without /proc)."""

    def __enter__(self):
        self.peak_mib, self._stop, start = None, threading.Event(), _rss()

        def sample(peak=start or 0):
            while not self._stop.wait(0.005):
                peak = max(peak, _rss() or 0)
            if start is not None:
                self.peak_mib = (max(peak, _rss() or 0) - start) / 2**20
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


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
    """Per impl in turn (TF's spinning threads slow what runs beside): build, warm-up, ``repeats`` timed epochs; peak
    RSS from the weights' draw to the warm-up's end."""
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
            r = figures[impl] = dict(build_seconds=history.build_seconds, first_step_seconds=first_step,
                                     first_epoch_seconds=history.epoch_seconds[0] + (first_step or 0.0),
                                     peak_rss_mib=memory.peak_mib, device=kind,
                                     estimate_mib=io.memory(c, impl, kind, epochs=repeats + 1).total / 2**20)

            def timer():
                jax_rnn.train(trainer, [next(rest)], history)
                bar.update(1)
                return history.epoch_seconds[-1]
            seconds = [timer() for _ in range(repeats // 2)]
            if c_loop and impl == impls[0]:  # amid the impl's epochs: drift shows as a gap
                c_timer = c_epoch(params, *epochs[0], c.learning_rate)
                c_times = summary(c_timer() for _ in range(repeats))
                figures["c"] = dict(max_loss_diff=float(np.max(np.abs(c_timer.losses - history.step_losses[0]))),
                                    **c_times)
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


def _in_turns(c, cells, plans, rows, repeats, quiet, device, fmt, c_loop=False):
    """Per cell (`FitConfig` fields): the epochs of ``plans(cell)`` (name -> plan) and the C loop's, timed in turns
    after one untimed round; ``rows(cell, times, compile_seconds)``: its rows."""
    data, optimizer, out = task.gen_data(c.data_size, seed=1), jax_rnn.adagrad(c.learning_rate), []
    for fields in cells:
        cell = dataclasses.replace(c, **fields)
        one = (glorot_params(2, cell.state_size, 0),
               *task.windows(*data, cell.batch_size, cell.num_steps, task.window_dtype(cell.num_classes)))
        timers, seconds = {"c": c_epoch(*one, c.learning_rate)} if c_loop else {}, {}
        for name, plan in plans(cell).items():
            runs = plan.runs
            params, xw, yw = jax.device_put(one if runs == 1 else jax.tree.map(
                lambda a: np.repeat(a[None], runs, axis=0), one), io.jax_device(device))
            args = params, (optimizer.init if runs == 1 else jax.vmap(optimizer.init))(params), xw, yw, None
            start = time.perf_counter()
            compiled = program(plan, "epoch" if runs == 1 else "runs").lower(
                *args, optimizer=optimizer, plan=plan, guard=False).compile()
            seconds[name], timers[name] = time.perf_counter() - start, functools.partial(_wall, compiled, *args)
        rounds = [{name: timer() for name, timer in timers.items()} for _ in range(repeats + 1)][1:]
        new = rows(cell, {name: summary(r[name] for r in rounds) for name in timers}, seconds)
        if not quiet:
            tqdm.write(fmt(new, header=not out))
        out += new
    return out


def _grid(states, steps):
    return [dict(state_size=d, num_steps=n) for d in states for n in steps]


def truncation(c, states, steps, backprop, repeats, quiet, device="cpu"):
    def plans(c):
        return {k2: jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, backprop_steps=k2, backend=device)
                for k2 in (c.num_steps, *(k for k in backprop if k > c.num_steps))}

    def rows(c, times, seconds):
        k1 = c.num_steps
        return [dict(state_size=c.state_size, num_steps=k1, backprop_steps=k2, tf_style=times[k1], tbptt=times[k2],
                     compile_seconds=seconds[k2], cost=times[k2]["median"] / times[k1]["median"], bound=1.2 * k2 / k1)
                for k2 in list(times)[1:]]
    return _in_turns(c, _grid(states, steps), plans, rows, repeats, quiet, device, report.format_truncation)


def many_runs(c, states, steps, counts, repeats, quiet, device="cpu"):
    """``per_run[R]``: (the epoch of R runs at once / R) / one run's epoch."""
    def plans(c):
        return {runs: jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, runs=runs, backend=device)
                for runs in (1, *counts)}

    def rows(c, times, _):
        return [dict(state_size=c.state_size, num_steps=c.num_steps, one_run=times[1], runs=times,
                     per_run={runs: times[runs]["median"] / runs / times[1]["median"] for runs in counts})]
    return _in_turns(c, _grid(states, steps), plans, rows, repeats, quiet, device, report.format_many_runs)


def random_cells(c, count, seed, repeats, quiet, device="cpu"):
    """The rule's and the tuned plan against the C loop in ``count`` cells drawn with ``seed`` (state 2-64, batch
    16-1000 log-uniform; num_steps 1-20)."""
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

    def rows(c, times, _):
        over_c = lambda name: times[name]["median"] / times["c"]["median"]
        return [dict(state_size=c.state_size, batch_size=c.batch_size, num_steps=c.num_steps, c=times["c"],
                     rule=times["rule"], tuned=times["tuned"], rule_over_c=over_c("rule"), tuned_over_c=over_c("tuned"),
                     tuning_seconds=tuning[c][0], plan=tuning[c][1].record())]
    return _in_turns(c, cells, plans, rows, repeats, quiet, device, report.format_random_cells, c_loop=True)


def _sweep(argv):
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"{' '.join(argv[2:])} failed ({done.returncode}):\n{done.stderr[-2000:]}")


def processes(counts, quiet, out):
    """``rnn-compare sweep`` (defaults) as N processes, the second of two runs (caches warm), against the C loop's
    seconds for its run-epochs over this machine's cores."""
    rows = []
    for n in tqdm(counts, desc="bench --processes", unit="sweep", disable=quiet):
        argv = [sys.executable, "-m", "compare", "sweep", "--quiet", "--out", str(out), "--name", f"sweep-{n}",
                "--overwrite", "--processes", str(n)]
        first, second = (_wall(_sweep, argv) for _ in range(2))
        rows.append(dict(processes=n, seconds=second, first_seconds=first))
    sweep = json.loads((out / f"sweep-{counts[-1]}.json").read_text())
    c, cores, limit = sweep["config"], len(os.sched_getaffinity(0)), 0.0
    for cell in sweep["cells"]:
        xw, yw = task.windows(*task.gen_data(c["data_size"], 0), c["batch_size"], cell["num_steps"])
        timer = c_epoch(glorot_params(2, cell["state_size"], 0), xw, yw, c["learning_rate"])
        limit += np.median([timer() for _ in range(3)]) * len(cell["seeds"]) * c["epochs"] / cores
    return [{**r, "limit": limit, "over_limit": r["seconds"] / limit} for r in rows]
