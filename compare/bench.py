"""``rnn-compare bench``: timers of training epochs (each ends reading its losses back, which synchronises),
the C loop (reference_loop.c) among them, and the ``--grid``, ``--truncation``, ``--plan-options`` and
``--scaling`` modes (the log-log slope of seconds as a parameter grows; JAX's memory with and without remat)."""

import atexit
import dataclasses
import functools
import importlib.resources
import itertools
import os
import shutil
import statistics
import subprocess
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

from . import io
from .report import format_grid, format_plan_options, format_truncation
from .run import make_trainer

BASELINE = "tf-dynamic"  # every speed-up is against this one
C_FLAGS = ["-O3", "-march=native", "-ffast-math"]
GRID_STATES, GRID_STEPS = (4, 16, 64), (1, 5, 10)
LARGE_STATES, LARGE_NUM_STEPS, LARGE_DATA_SIZE = (512, 1024), 10, 100_000
GRID_IMPLS = ("jax", "tf-raw", "tf-static")  # the fastest TF versions at every size measured
SWEEPS = {"state_size": (4, 16, 64, 256, 1024), "num_steps": (1, 3, 10, 30, 100), "batch_size": (20, 200, 2_000, 20_000)}
SCALING_IMPLS = ("jax", "tf-dynamic", "tf2")
SCALING_DATA_SIZE = 100_000
MEMORY_NUM_STEPS = (1_000, 10_000)
MEMORY_STATE_SIZE = 256


def summary(seconds) -> dict:
    seconds = list(seconds)
    median, low, high = statistics.median(seconds), min(seconds), max(seconds)
    return dict(median=median, min=low, max=high, spread=(high - low) / median, seconds=seconds)


def around(a, b, repeats) -> tuple[dict, dict]:
    """Timer ``a`` in two blocks around ``repeats`` calls of ``b`` (drift shows as a gap): both `summary`s."""
    first = [a() for _ in range(repeats // 2)]
    seconds_b = [b() for _ in range(repeats)]
    return summary(first + [a() for _ in range(repeats - repeats // 2)]), summary(seconds_b)


def interleaved(timers, repeats) -> dict:
    """A warm-up round, then ``repeats`` rounds of every timer: per name its `summary`."""
    rounds = [{name: timer() for name, timer in timers.items()} for _ in range(repeats + 1)][1:]
    return {name: summary(r[name] for r in rounds) for name in timers}


def _rss():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """``with PeakRss() as m:`` sets ``m.peak_mib``, the largest growth of resident memory inside (XLA's and
    TF's allocations too), sampled by a thread; None without /proc."""

    def __enter__(self) -> "PeakRss":
        self.peak_mib, self._start, self._stop = None, _rss(), threading.Event()
        self._peak = self._start or 0

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._peak = max(self._peak, _rss() or 0)
        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self.peak_mib = (max(self._peak, _rss() or 0) - self._start) / 2**20


@functools.cache
def _workdir() -> Path:
    """The C loop built in a directory for its input and output, removed at exit."""
    tmp = tempfile.mkdtemp(prefix="rnn_scan_c_loop_")
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("the C reference loop needs a C compiler: none of cc, gcc, clang is on PATH")
    with importlib.resources.as_file(importlib.resources.files(__package__) / "reference_loop.c") as src:
        built = subprocess.run([cc, *C_FLAGS, "-o", f"{tmp}/c", str(src), "-lm"], capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"compiling the C reference loop failed ({cc} {' '.join(C_FLAGS)}):\n{built.stderr}")
    return Path(tmp)


def c_epoch(params, x_windows, y_windows, learning_rate):
    """A timer: one C epoch from ``params``, its own measured seconds; ``timer.losses``: ``f32[epoch_size]``."""
    xw, yw, tmp = np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32), _workdir()
    sizes = [*xw.shape, len(params["softmax"]["b"]), len(params["rnn_cell"]["b"])]
    (tmp / "in").write_bytes(b"".join(np.asarray(a).tobytes() for a in (
        np.int32(sizes), np.float32(learning_rate), *flatten(params).values(), xw, yw)))

    def timer() -> float:
        subprocess.run([tmp / "c", tmp / "in", tmp / "out", "1"], check=True)
        raw = (tmp / "out").read_bytes()
        timer.losses = np.frombuffer(raw[: 4 * len(xw)], np.float32)
        return float(np.frombuffer(raw[4 * len(xw):], np.float64)[0])
    return timer


def time_trainers(config, impls, devices, repeats, c_loop=False, bar=None) -> dict:
    """Every impl built, a warm-up epoch, ``repeats`` timed ones, on the same data, one after another (TF's
    spinning thread pools slow what runs beside them), the C loop `around` the first. Per impl: seconds,
    rates, ``peak_rss_mib``, JAX's ``plan``; ``"c"``: its `summary` and ``max_loss_diff``."""
    params = glorot_params(config.num_classes, config.state_size, config.seed)
    epochs = list(task.epoch_windows(dataclasses.replace(config, epochs=repeats + 1)))
    tick = bar.update if bar is not None else lambda n: None
    figures = {}
    for impl in impls:
        trainer = None
        try:
            with PeakRss() as memory:
                trainer = make_trainer(impl, config, params, devices.of(impl))
                mine = epochs if impl != "jax" else jax.device_put(  # on the device before any clock starts
                    [tuple(np.asarray(w, trainer.window_dtype) for w in e) for e in epochs], trainer.device)
                history = jax_rnn.train(trainer, mine[:1])
            tick(1)
            first_step, rest = history.first_step_seconds, iter(mine[1:])
            r = figures[impl] = {"build_seconds": history.build_seconds, "first_step_seconds": first_step,
                                 "first_epoch_seconds": history.epoch_seconds[0] + (first_step or 0.0),
                                 "peak_rss_mib": memory.peak_mib, "device": devices.of(impl)}

            def timer() -> float:
                jax_rnn.train(trainer, [next(rest)], history)
                tick(1)
                return history.epoch_seconds[-1]
            if c_loop and impl == impls[0]:
                c_timer = c_epoch(params, *epochs[0], learning_rate=config.learning_rate)
                t, c = around(timer, c_timer, repeats)
                figures["c"] = {"max_loss_diff": float(np.max(np.abs(c_timer.losses - history.step_losses[0]))), **c}
            else:
                t = summary(timer() for _ in range(repeats))
        finally:
            if trainer is not None:
                trainer.close()
        if history.stopped:
            raise RuntimeError(f"bench: {impl} diverged at {history.diverged[0]}; lower the learning rate")
        r.update({f"{k}_epoch_seconds": t[k] for k in ("median", "min", "max")}, epoch_seconds=t["seconds"],
                 spread=t["spread"], steps_per_second=config.epoch_size / t["median"],
                 points_per_second=config.epoch_size * config.batch_size * config.num_steps / t["median"])
        if impl == "jax":
            r["plan"] = trainer.plan.record()
    return figures


def page(command, config, devices, repeats, impls=None, **fields) -> dict:
    return io.result(command, {**io.record(config, impls), "repeats": repeats}, devices, **fields,
                     measured_at=time.strftime("%Y-%m-%d %H:%M:%S"))


def bench(config, impls, devices, repeats, quiet=False) -> dict:
    with tqdm(total=len(impls) * (repeats + 1), desc="bench", unit="epoch", disable=quiet) as bar:
        results = time_trainers(config, impls, devices, repeats, bar=bar)
    base = results.get(BASELINE)
    for r in results.values():
        r["speedup_vs_baseline"] = base["median_epoch_seconds"] / r["median_epoch_seconds"] if base else None
    return page("bench", config, devices, repeats, impls, baseline=BASELINE, results=results,
                plan=results.get("jax", {}).get("plan"))


def grid_cells(states, steps, data_size, large_states) -> list[tuple]:
    """``(state, num_steps, data_size, c_loop)``: the large states without the C loop (minutes there)."""
    return ([(d, n, data_size, True) for d in states for n in steps]
            + [(d, LARGE_NUM_STEPS, LARGE_DATA_SIZE, False) for d in large_states])


def grid(config, impls, devices, repeats, cells, quiet=False) -> dict:
    rows = []
    with tqdm(total=len(cells) * len(impls) * (repeats + 1), desc="bench --grid", unit="epoch", disable=quiet) as bar:
        for state_size, num_steps, data_size, c_loop in cells:
            cell = dataclasses.replace(config, state_size=state_size, num_steps=num_steps, data_size=data_size)
            results = time_trainers(cell, impls, devices, repeats, c_loop, bar)
            tf = {name: r["median_epoch_seconds"] for name, r in results.items() if name not in ("c", "jax")}
            fastest, jax_s = min(tf, key=tf.get, default=None), results["jax"]["median_epoch_seconds"]
            rows.append({"state_size": state_size, "num_steps": num_steps, "data_size": data_size, "results": results,
                         "jax_over_c": jax_s / results["c"]["median"] if c_loop else None, "fastest_tf": fastest,
                         "fastest_tf_over_jax": tf[fastest] / jax_s if fastest else None})
            if not quiet:
                bar.write(format_grid(rows[-1:], header=len(rows) == 1))
    return page("bench --grid", config, devices, repeats, impls, cells=rows)


def compile_epoch(plan, params, opt_state, xw, yw, optimizer, kind="epoch"):
    """``(compiled, seconds)``: ``plan``'s epoch (or ``"runs"``) compiled ahead of time for these arrays."""
    start = time.perf_counter()
    compiled = program(plan, kind).lower(params, opt_state, xw, yw, None, optimizer=optimizer, plan=plan,
                                         guard=False).compile()
    return compiled, time.perf_counter() - start


def _versus(config, states, steps, plans, repeats, row, fmt, quiet, runs=1):
    """Per cell, ``plans(cell)`` timed `interleaved` on the same data; ``row(cell, name, times, compile s)``
    for each but the first, the reference."""
    data, optimizer, rows = task.gen_data(config.data_size, seed=1), jax_rnn.adagrad(config.learning_rate), []
    for state_size in states:
        for num_steps in steps:
            cell = dataclasses.replace(config, state_size=state_size, num_steps=num_steps)
            params = glorot_params(2, state_size, 0)
            xw, yw = task.windows(*data, cell.batch_size, num_steps, task.window_dtype(cell.num_classes))
            if runs > 1:
                params, xw, yw = jax.tree.map(lambda a: np.broadcast_to(a, (runs,) + a.shape), (params, xw, yw))
            params, xw, yw = jax.device_put((params, xw, yw))
            opt_state = (optimizer.init if runs == 1 else jax.vmap(optimizer.init))(params)
            timers, seconds = {}, {}
            for name, plan in plans(cell).items():
                compiled, seconds[name] = compile_epoch(plan, params, opt_state, xw, yw, optimizer,
                                                        "epoch" if runs == 1 else "runs")
                timers[name] = functools.partial(_wall, functools.partial(compiled, params, opt_state, xw, yw, None))
            times = interleaved(timers, repeats)
            for name in list(timers)[1:]:
                rows.append(row(cell, name, times, seconds[name]))
                if not quiet:
                    tqdm.write(fmt(rows[-1:], header=len(rows) == 1))
    return rows


def _wall(call):
    begin = time.perf_counter()
    jax.block_until_ready(call())
    return time.perf_counter() - begin


def truncation(config, states, steps, backprop, repeats, quiet=False) -> list:
    """TBPTT(k1, k2) against the TF-style epoch of num_steps k1: ``cost`` ratio, ``bound`` 1.2 k2/k1."""
    def plans(c):
        return {k2: jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, backprop_steps=k2)
                for k2 in (c.num_steps, *(k for k in backprop if k > c.num_steps))}

    def row(c, k2, times, seconds):
        k1 = c.num_steps
        return dict(state_size=c.state_size, num_steps=k1, backprop_steps=k2, tf_style=times[k1], tbptt=times[k2],
                    compile_seconds=seconds, cost=times[k2]["median"] / times[k1]["median"], bound=1.2 * k2 / k1)
    return _versus(config, states, steps, plans, repeats, row, format_truncation, quiet)


def _without(plan: jax_rnn.Plan):
    """Each choice of ``plan`` -> ``plan`` without it (by-hand BPTT needs batch-last: they go together)."""
    plain, out, replace = plan.plain(), {}, dataclasses.replace
    if plan.gradient != plain.gradient:
        out["by-hand gradient"] = replace(plan, gradient="autodiff", softmax_grad="full")
    if plan.softmax_grad != plain.softmax_grad:
        out["softmax grad difference"] = replace(plan, softmax_grad="full")
    if plan.layout != plain.layout:
        out["batch-last layout"] = replace(plain, unroll=plan.unroll, xla_options=plan.xla_options)
    for matrix in plan.elementwise:
        out[f"elementwise {matrix}"] = replace(plan, elementwise=tuple(m for m in plan.elementwise if m != matrix))
    for name, value in plan.xla_options:
        out[f"{name}={value}"] = replace(plan, xla_options=tuple(o for o in plan.xla_options if o[0] != name))
    return out


def plan_options(config, states, steps, runs, repeats, quiet=False) -> list:
    """``gain`` = 1 - plan / without the choice, per choice of each cell's plan."""
    def plans(c):
        plan = jax_rnn.plan(c.state_size, c.batch_size, c.num_steps, runs=runs)
        return {"plan": plan, **_without(plan)}

    def row(c, name, times, seconds):
        return dict(state_size=c.state_size, num_steps=c.num_steps, runs=runs, option=name, plan=times["plan"],
                    without=times[name], gain=1 - times["plan"]["median"] / times[name]["median"])
    return _versus(config, states, steps, plans, repeats, row, format_plan_options, quiet, runs)


# --- the scaling study: seconds per epoch as one parameter grows, and memory for long windows ---

def slope(values, seconds) -> float | None:
    """Least-squares slope of log(seconds) on log(value)."""
    pairs = [(v, s) for v, s in zip(values, seconds) if s and s > 0]
    if len(pairs) < 2:
        return None
    return float(np.polyfit(*np.log(np.array(pairs, np.float64)).T, 1)[0])


def crossover(values, cpu_seconds, gpu_seconds):
    """The first value from which the GPU stays faster (None: never)."""
    for i, value in enumerate(values):
        if all(g < c for g, c in zip(gpu_seconds[i:], cpu_seconds[i:])):
            return value
    return None


def scaling(base, impls, devices, repeats=2, sweeps=None, memory_steps=MEMORY_NUM_STEPS, quiet=False) -> dict:
    """Returns ``points`` (`time_trainers`' figures per parameter, value, impl, device), ``fits`` (slope per
    parameter, impl, device; ``gpu_faster_from``), ``memory`` (`memory_study`) and ``notes``."""
    sweeps = SWEEPS if sweeps is None else sweeps
    # Where to measure: the resolved device, and the CPU too when ``auto`` found a GPU.
    kinds = lambda impl: ["cpu", "gpu"] if devices.requested == "auto" and devices.of(impl) == "gpu" else [devices.of(impl)]
    runs = [(param, value, impl, kind) for param, values in sweeps.items() for value in values
            for impl in impls for kind in kinds(impl)]
    points, fits = [], []
    with tqdm(total=len(runs) * (repeats + 1), desc="scaling", unit="epoch", disable=quiet) as bar:
        for param, value, impl, kind in runs:
            bar.set_postfix_str(f"{param}={value} {impl} ({kind})")
            config = dataclasses.replace(base, **{param: value})
            figures = time_trainers(config, (impl,), io.Devices(devices.requested, kind, kind), repeats, bar=bar)[impl]
            points.append({"parameter": param, "value": value, "impl": impl, "device": kind,
                           "epoch_size": config.epoch_size, **figures})
    for (param, values), impl in itertools.product(sweeps.items(), impls):
        series = {kind: [p["median_epoch_seconds"] for p in points if (p["parameter"], p["impl"], p["device"])
                         == (param, impl, kind)] for kind in ("cpu", "gpu")}
        fits += [{"parameter": param, "impl": impl, "device": kind, "values": list(values), "seconds": seconds,
                  "slope": slope(values, seconds)} for kind, seconds in series.items() if seconds]
        if all(series.values()):
            fits[-1]["gpu_faster_from"] = crossover(values, series["cpu"], series["gpu"])
    memory = memory_study(base, devices.jax, memory_steps, quiet) if "jax" in impls and memory_steps else []
    notes = (f"Every point on the same {base.data_size:,} points, the other parameters at state {base.state_size}, "
             f"num_steps {base.num_steps}, batch {base.batch_size}; seconds: the median of {repeats} epochs. "
             + ("GPU faster from: the first value from which the GPU stays faster." if any(p["device"] == "gpu" for p in
                points) else "No GPU was measured (none seen, or --device cpu): no CPU/GPU crossover."))
    result = page("bench --scaling", base, devices, repeats, impls, points=points, fits=fits, memory=memory, notes=notes)
    result["config"]["sweeps"] = {k: list(v) for k, v in sweeps.items()}
    return result


def memory_study(base, device, steps=MEMORY_NUM_STEPS, quiet=False) -> list[dict]:
    """One window per num_steps, with and without remat: XLA's temp buffers, RSS growth, seconds."""
    dev, optimizer, rows, d = io.jax_device(device), jax_rnn.adagrad(base.learning_rate), [], MEMORY_STATE_SIZE
    for num_steps in tqdm(steps, desc="memory", unit="window", disable=quiet):
        x, y = task.gen_data(base.batch_size * num_steps, np.random.default_rng(base.seed))
        xw, yw = jax.device_put(task.windows(x, y, base.batch_size, num_steps), dev)
        params = jax.device_put(glorot_params(2, d, base.seed), dev)
        opt_state = optimizer.init(params)
        for remat in (False, True):
            with PeakRss() as rss:
                plan = jax_rnn.plan(d, base.batch_size, num_steps, remat=remat, backend=dev.platform)
                compiled, compile_seconds = compile_epoch(plan, params, opt_state, xw, yw, optimizer)
                start = time.perf_counter()
                loss = float(compiled(params, opt_state, xw, yw, None)[3][0])  # float() waits for it
                seconds = time.perf_counter() - start
            temp = getattr(compiled.memory_analysis(), "temp_size_in_bytes", None)
            rows.append({"num_steps": num_steps, "state_size": d, "batch_size": base.batch_size, "remat": remat,
                         "device": device, "compile_seconds": compile_seconds, "epoch_seconds": seconds,
                         "xla_temp_mib": temp and temp / 2**20, "peak_rss_mib": rss.peak_mib, "loss": loss,
                         "remat_block": jax_rnn.model.remat_block_size(num_steps) if remat else None})
            del compiled
    return rows
