"""Benchmark of jax_rnn's training: ``python -m jax_rnn.bench``.

Default mode, on the tutorial's config (1M points: 1000 windows of [200, 5]): for each way of running one
epoch, the compile time, then median, min and max seconds of ``--repeats`` timed epochs after a warm-up:

- ``train_epoch``: the whole epoch as one compiled ``lax.scan``;
- ``step loop``: a Python loop of the jitted ``train_step`` (one dispatch per window);
- ``vmap xR``: ``train_runs`` training R independent runs at once (per-run cost shown too); where JAX
  sees several devices (``XLA_FLAGS=--xla_force_host_platform_device_count=2``: one CPU device per core),
  also ``train_runs_sharded``, the runs split over them;
- ``--c-reference``: ``jax_rnn/reference_loop.c`` (package data), a hand-fused single-thread C loop of the
  same arithmetic (built once per process with ``cc -O3 -march=native -ffast-math``), on the same windows
  and weights; its per-step losses are checked against ``train_epoch``'s: the speed reference.

``--grid``: JAX's trainer (`jax_rnn.driver.JaxTrainer`: the guarded epoch, as ``fit`` trains) against the
C loop on every state_size x num_steps cell (``--states``, ``--steps``; default {4, 16, 64} x {1, 5, 10}),
one Markdown row per cell (`grid`); ``rnn-compare bench --grid`` runs the same with the TensorFlow
versions beside them and the large states. ``--json FILE`` writes the rows.

``--truncation``: the price of TBPTT(k1, k2) (`truncation`).

This module is the project's one benchmark harness (timers: `interleaved`, `around`, `summary`, `PeakRss`;
the C loop: `c_epoch`; any implementation's trainers: `time_trainers`, `grid`). JAX calls are timed up to
``jax.block_until_ready``; the C loop times its own training. The persistent compilation cache is on: on
a hit, "compile s" is the time to load the executable (``RNN_SCAN_COMPILE_CACHE=0``: real compiles).
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import functools
import importlib.resources
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .compile_cache import enable_compile_cache
from .data import epoch_windows, gen_data, windows
from .driver import History, JaxTrainer, train
from .fit import FitConfig
from .layout import flatten
from .model import glorot_params, init_params
from .parallel import run_mesh, shard_runs, train_runs_sharded
from .optim import adagrad
from .train import train_epoch, train_runs, train_step

C_FLAGS = ["-O3", "-march=native", "-ffast-math"]  # see the header of reference_loop.c
DEFAULT = FitConfig()  # the tutorial's settings, the one set of defaults
LEARNING_RATE = DEFAULT.learning_rate


def wall(fn):
    """``fn`` as a timer: a callable that runs it, synchronises, and returns the seconds it took."""
    def timer() -> float:
        start = time.perf_counter()
        jax.block_until_ready(fn())
        return time.perf_counter() - start
    return timer


def summary(seconds) -> dict:
    """``{"median", "min", "max", "spread", "seconds"}`` of timed runs; spread = (max - min) / median."""
    seconds = list(seconds)
    median = statistics.median(seconds)
    return dict(median=median, min=min(seconds), max=max(seconds), spread=(max(seconds) - min(seconds)) / median,
                seconds=seconds)


def interleaved(timers: dict, repeats: int, warmup: bool = True) -> dict[str, dict]:
    """The project's one way to time: a warm-up round (unless ``warmup=False``), then ``repeats`` rounds
    calling every timer once, back to back, so that their ratios are measured side by side on a noisy
    machine. A timer is a callable returning the seconds of one run (`wall`, `c_epoch`, or
    ``compare.bench``'s epochs of any implementation). **Returns:** per name, its `summary`."""
    rounds = [{name: timer() for name, timer in timers.items()} for _ in range(repeats + warmup)][warmup:]
    return {name: summary(r[name] for r in rounds) for name in timers}


def around(a, b, repeats: int) -> tuple[dict, dict]:
    """``repeats`` runs of timer ``a`` in two blocks around ``repeats`` runs of ``b`` (A B A), each block back
    to back: the `summary` of each. Side by side in one run, so drift shows up as a gap between the A
    blocks, without alternating every run: a JAX epoch right after a run of the C loop's process took 25-35%
    longer than one after another JAX epoch here, and epochs of real training follow each other."""
    first = [a() for _ in range(repeats // 2)]
    seconds_b = [b() for _ in range(repeats)]
    return summary(first + [a() for _ in range(repeats - repeats // 2)]), summary(seconds_b)


def _timed(fn, repeats: int) -> dict:
    """One function alone: `interleaved` of ``fn`` timed by the wall clock."""
    return interleaved({"": wall(fn)}, repeats)[""]


class PeakRss:
    """Context manager: ``peak_mib`` = the largest increase of this process's resident memory seen while
    inside (``/proc/self/statm``, sampled every ``interval`` seconds by a thread; None where ``/proc`` is
    unavailable, e.g. macOS). It counts native allocations (XLA, TensorFlow) that ``tracemalloc`` cannot see."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak_mib = interval, None
        self._stop = threading.Event()

    @staticmethod
    def _rss_bytes() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss_bytes() or 0)

    def __enter__(self) -> "PeakRss":
        self._start = self._rss_bytes()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self._peak = max(self._peak, self._rss_bytes() or 0)
            self.peak_mib = (self._peak - self._start) / 2**20


def _compiled(fn, *args, **kwargs):
    """``(fn compiled for these arguments, compile seconds)``."""
    start = time.perf_counter()
    compiled = fn.lower(*args, **kwargs).compile()
    return compiled, time.perf_counter() - start


@functools.cache
def c_program() -> tuple[Path, float]:
    """Build ``reference_loop.c`` once per process: ``(executable, compile seconds)``.

    It reads every size (state_size, num_steps, batch, ...) from its input at run time, so one build serves
    every cell. Raises `RuntimeError` naming what is missing: the source (package data) or a C compiler.
    """
    source = importlib.resources.files(__package__) / "reference_loop.c"
    if not source.is_file():
        raise RuntimeError(f"the C reference loop's source {source} is missing (package data of jax_rnn: "
                           "reinstall rnn-scan)")
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("the C reference loop needs a C compiler: none of cc, gcc, clang is on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="jax_rnn_reference_loop_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    src, exe = tmp / "reference_loop.c", tmp / "reference_loop"
    src.write_text(source.read_text())
    start = time.perf_counter()
    built = subprocess.run([cc, *C_FLAGS, "-o", str(exe), str(src), "-lm"], capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"compiling the C reference loop failed ({cc} {' '.join(C_FLAGS)}):\n{built.stderr}")
    return exe, time.perf_counter() - start


def c_epoch(params, x_windows, y_windows, learning_rate: float = LEARNING_RATE):
    """The C loop on these windows and weights, as a timer: each call trains one epoch from ``params`` and
    returns the seconds the C program measured; ``timer.losses`` holds the last call's ``f32[epoch_size]``."""
    exe, _ = c_program()
    xw, yw = np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32)
    n, d = params["softmax"]["b"].shape[0], params["rnn_cell"]["b"].shape[0]
    flat = np.concatenate([a.ravel() for a in flatten(params).values()])  # PARAM_KEYS' order, float32
    workdir = tempfile.TemporaryDirectory(prefix="jax_rnn_reference_loop_")  # removed with the timer
    inp, out = Path(workdir.name) / "in.bin", Path(workdir.name) / "out.bin"
    inp.write_bytes(np.array([*xw.shape, n, d], np.int32).tobytes() + np.float32(learning_rate).tobytes()
                    + flat.tobytes() + xw.tobytes() + yw.tobytes())

    def timer() -> float:
        subprocess.run([str(exe), str(inp), str(out), "1"], check=True)
        raw = out.read_bytes()
        timer.losses = np.frombuffer(raw[: 4 * xw.shape[0]], np.float32)
        return float(np.frombuffer(raw[4 * xw.shape[0]:], np.float64)[0])
    timer.workdir = workdir
    return timer


def _setup(state_size: int, num_steps: int, batch_size: int, data):
    params = init_params(jax.random.key(0), 2, state_size)
    opt = adagrad(LEARNING_RATE)
    # On the device once, before any clock starts: a numpy array would be copied in again by every call.
    return params, opt, opt.init(params), jax.device_put(windows(*data, batch_size, num_steps))


def bench(batch_size=DEFAULT.batch_size, num_steps=DEFAULT.num_steps, state_size=DEFAULT.state_size,
          data_size=DEFAULT.data_size, repeats=5, runs=(8, 32), loop=True, c_loop=False):
    """The default mode: one result dict per method (compile s, epoch s median/min/max, rates)."""
    params, opt, opt_state, (x_windows, y_windows) = _setup(state_size, num_steps, batch_size,
                                                            gen_data(data_size, seed=1))
    epoch_size = x_windows.shape[0]
    points = epoch_size * batch_size * num_steps
    rows = []

    def record(name, compile_seconds, t, runs_in_call=1, **extra):
        rows.append(dict(method=name, compile_seconds=compile_seconds, epoch_seconds=t,
                         per_run_seconds=t["median"] / runs_in_call,
                         steps_per_second=runs_in_call * epoch_size / t["median"],
                         points_per_second=runs_in_call * points / t["median"], **extra))

    compiled, compile_seconds = _compiled(train_epoch, params, opt_state, x_windows, y_windows, opt)
    scan = wall(lambda: compiled(params, opt_state, x_windows, y_windows))
    if not c_loop:
        record("train_epoch (scan)", compile_seconds, _timed(scan, repeats))
    else:
        c = c_epoch(params, x_windows, y_windows)
        scan(), c()  # warm-up
        scan_times, c_times = around(scan, c, repeats)
        losses = np.asarray(compiled(params, opt_state, x_windows, y_windows)[3])
        record("train_epoch (scan)", compile_seconds, scan_times)
        record("C reference loop (1 thread)", c_program()[1], c_times,
               max_loss_diff_vs_scan=float(np.max(np.abs(c.losses - losses))))

    if loop:
        state0 = jnp.zeros((batch_size, state_size), jnp.float32)
        _, compile_seconds = _compiled(train_step, params, opt_state, state0, x_windows[0], y_windows[0], opt)
        window_list = list(zip(x_windows, y_windows))  # slicing the device array outside the timed loop

        def step_loop():  # the public train_step (a Python check of tracing, then jit dispatch), warmed up
            p, o, s = params, opt_state, state0
            for x, y in window_list:
                p, o, s, loss = train_step(p, o, s, x, y, opt)
            return p, loss

        record("train_step loop", compile_seconds, _timed(step_loop, repeats))

    for r in runs:
        p_r, o_r, xw_r, yw_r = jax.tree.map(lambda a: jnp.broadcast_to(a, (r,) + a.shape),
                                            (params, opt_state, x_windows, y_windows))
        compiled_r, compile_seconds = _compiled(train_runs, p_r, o_r, xw_r, yw_r, opt)
        record(f"train_runs vmap x{r}", compile_seconds, _timed(lambda: compiled_r(p_r, o_r, xw_r, yw_r), repeats),
               runs_in_call=r)
        if len(jax.devices()) > 1:  # e.g. XLA_FLAGS=--xla_force_host_platform_device_count=2: a CPU device per core
            mesh = run_mesh()
            sharded = (p_r, o_r, xw_r, yw_r)
            if r % len(jax.devices()) == 0:  # placed once; otherwise train_runs_sharded pads and places per call
                sharded = shard_runs(sharded, mesh)
            start = time.perf_counter()
            jax.block_until_ready(train_runs_sharded(*sharded, opt, mesh=mesh))  # compiles
            record(f"train_runs_sharded x{r}, {len(jax.devices())} devices", time.perf_counter() - start,
                   _timed(lambda: train_runs_sharded(*sharded, opt, mesh=mesh), repeats), runs_in_call=r)
    return rows


def _epoch_timer(trainer, history: History, windows: list, bar):
    """A timer that trains the next epoch of ``windows`` (`jax_rnn.driver.train`) and returns its seconds."""
    epochs = iter(windows)

    def timer() -> float:
        train(trainer, [next(epochs)], history)
        if bar is not None:
            bar.update(1)
        return history.epoch_seconds[-1]
    return timer


def time_trainers(config, make, names, repeats: int, c_loop: bool = False, bar=None) -> dict:
    """Trainers ``make(name, config, params)`` for every name of ``names`` (JAX's, or any implementation's:
    ``compare.bench`` passes TensorFlow's) and the C loop (``c_loop``), on the same ``repeats + 1`` epochs
    from the same weights (`glorot_params` of ``config.seed``), one trainer after another: it builds and
    trains the warm-up epoch (under `PeakRss`), then ``repeats`` timed epochs back to back (the first
    name's `around` the C loop's runs), and is closed: interleaved with JAX, TensorFlow's thread pools, still
    spinning after its epoch, slowed the JAX epoch that followed by up to 3x on 2 cores.

    **Returns:** per name: ``build_seconds``, ``first_step_seconds``, ``first_epoch_seconds``, ``peak_rss_mib``,
    ``epoch_seconds`` (the timed ones), their ``median_epoch_seconds``, ``min_...``, ``max_...``, ``spread``,
    ``steps_per_second`` and ``points_per_second``; ``"c"``: the C loop's `summary` and ``max_loss_diff``
    (its per-step losses against the first name's on the warm-up epoch).
    """
    params = glorot_params(config.num_classes, config.state_size, config.seed)
    epochs = list(epoch_windows(dataclasses.replace(config, epochs=repeats + 1)))
    points = config.epoch_size * config.batch_size * config.num_steps
    histories, times, figures = {}, {}, {}
    for name in names:  # one after another, each closed before the next is built
        with PeakRss() as memory:
            trainer = make(name, config, params)
            try:
                device = getattr(trainer, "device", None)  # JAX: the windows go to its device before any clock
                dtype = getattr(trainer, "window_dtype", None)  # JAX: int8 windows, cut as such by fit and run
                mine = epochs if device is None else jax.device_put(
                    [tuple(np.asarray(w, dtype) for w in epoch) for epoch in epochs], device)
                history = histories[name] = train(trainer, mine[:1])
            except BaseException:
                trainer.close()
                raise
        if bar is not None:
            bar.update(1)
        figures[name] = {"build_seconds": history.build_seconds, "first_step_seconds": history.first_step_seconds,
                         "first_epoch_seconds": history.epoch_seconds[0] + (history.first_step_seconds or 0.0),
                         "peak_rss_mib": memory.peak_mib}
        timer = _epoch_timer(trainer, history, mine[1:], bar)
        try:
            if c_loop and name == names[0]:  # the C loop side by side with the first (JAX)
                c_loop_timer = c_epoch(params, *epochs[0], learning_rate=config.learning_rate)
                times[name], times["c"] = around(timer, c_loop_timer, repeats)
            else:
                times[name] = summary(timer() for _ in range(repeats))
        finally:
            trainer.close()
    for name, history in histories.items():
        if history.stopped:
            raise RuntimeError(f"bench: {name} diverged at {history.diverged[0]}; lower the learning rate")
        t = times[name]
        figures[name].update(epoch_seconds=t["seconds"], median_epoch_seconds=t["median"], min_epoch_seconds=t["min"],
                             max_epoch_seconds=t["max"], spread=t["spread"],
                             steps_per_second=config.epoch_size / t["median"], points_per_second=points / t["median"])
    if c_loop:
        first = histories[names[0]].step_losses[0]
        figures["c"] = {**times["c"], "max_loss_diff": float(np.max(np.abs(c_loop_timer.losses - first)))}
    return figures


GRID_STATES, GRID_STEPS = (4, 16, 64), (1, 5, 10)   # the tutorial's grid: every cell within 1.5x of C (issue)
LARGE_STATES, LARGE_NUM_STEPS, LARGE_DATA_SIZE = (512, 1024), 10, 100_000


def grid_cells(states=GRID_STATES, steps=GRID_STEPS, data_size=DEFAULT.data_size, large_states=LARGE_STATES) -> list[tuple]:
    """The cells of `grid`: ``states`` x ``steps`` on ``data_size`` points with the C loop, then
    ``large_states`` at num_steps 10 on 100,000 points without it (its plain loops take minutes there)."""
    return ([(d, n, data_size, True) for d in states for n in steps]
            + [(d, LARGE_NUM_STEPS, LARGE_DATA_SIZE, False) for d in large_states])


def grid(config, make, names, repeats: int, cells, bar=None, on_row=None) -> list[dict]:
    """`time_trainers` on every cell ``(state_size, num_steps, data_size, c_loop)`` of ``cells`` (``config``
    gives the rest), in one run; ``on_row(row)`` after each. **Returns:** one row per cell: ``state_size``,
    ``num_steps``, ``data_size``, ``results`` (`time_trainers`), ``jax_over_c``, ``fastest_tf`` (the fastest
    name other than ``jax``) and ``fastest_tf_over_jax``."""
    rows = []
    for state_size, num_steps, data_size, c_loop in cells:
        cell = dataclasses.replace(config, state_size=state_size, num_steps=num_steps, data_size=data_size)
        results = time_trainers(cell, make, names, repeats, c_loop, bar)
        median = {name: r["median_epoch_seconds"] for name, r in results.items() if name != "c"}
        others = {name: s for name, s in median.items() if name != "jax"}
        fastest = min(others, key=others.get) if others else None
        rows.append({"state_size": state_size, "num_steps": num_steps, "data_size": data_size, "results": results,
                     "jax_over_c": median["jax"] / results["c"]["median"] if "c" in results and "jax" in median else None,
                     "fastest_tf": fastest,
                     "fastest_tf_over_jax": others[fastest] / median["jax"] if fastest and "jax" in median else None})
        if on_row is not None:
            on_row(rows[-1])
    return rows


def truncation(states=(4, 16), steps=(1, 3, 5), backprop=(9, 10, 15), batch_size=DEFAULT.batch_size,
               data_size=DEFAULT.data_size, repeats=5) -> list[dict]:
    """``--truncation``: per state and k1, the TF-style epoch of num_steps k1 and TBPTT(k1, k2) for every k2
    > k1 of ``backprop``, timed interleaved on the same data and weights; one row per (state, k1, k2), its
    cost ratio beside the bound 1.2 x k2 / k1 (each window recomputes its k2 - k1 overlapping steps)."""
    data = gen_data(data_size, seed=1)
    rows = []
    for state_size in states:
        for k1 in steps:
            params, opt, opt_state, (xw, yw) = _setup(state_size, k1, batch_size, data)
            timers, compile_seconds = {}, {}
            for k2 in (k1, *(k for k in backprop if k > k1)):
                compiled, compile_seconds[k2] = _compiled(train_epoch, params, opt_state, xw, yw, opt, backprop_steps=k2)
                timers[k2] = wall(functools.partial(compiled, params, opt_state, xw, yw))
            times = interleaved(timers, repeats)
            for k2 in list(timers)[1:]:
                rows.append(dict(state_size=state_size, num_steps=k1, backprop_steps=k2, tf_style=times[k1],
                                 tbptt=times[k2], compile_seconds=compile_seconds[k2],
                                 cost=times[k2]["median"] / times[k1]["median"], bound=1.2 * k2 / k1))
                print(format_truncation(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def format_truncation(rows, header: bool = True) -> str:
    lines = ["| state | k1 | k2 | TF-style num_steps k1: epoch s | TBPTT(k1, k2): epoch s | compile s | cost | "
             "bound 1.2 k2/k1 |", "|---:|---:|---:|---:|---:|---:|---:|---:|"] if header else []
    lines += [f"| {r['state_size']} | {r['num_steps']} | {r['backprop_steps']} | {_spread(r['tf_style'])} | "
              f"{_spread(r['tbptt'])} | {r['compile_seconds']:.2f} | {r['cost']:.2f}x | {r['bound']:.1f}x |" for r in rows]
    return "\n".join(lines)


def _spread(t: dict, suffix: str = "") -> str:
    """``median [min, max]`` of a `summary` (or of `time_trainers`' figures, ``suffix="_epoch_seconds"``)."""
    return f"{t['median' + suffix]:.4f} [{t['min' + suffix]:.4f}, {t['max' + suffix]:.4f}]"


def format_grid(rows, header: bool = True) -> str:
    """Markdown rows of `grid`: JAX, the C loop and the fastest other implementation, with the ratios."""
    def seconds(name, r):
        return _spread(r["results"][name], "_epoch_seconds") if name in r["results"] else ""

    def ratio(value):
        return "" if value is None else f"{value:.2f}x"

    lines = ["| state | num_steps | points | JAX compile s | JAX epoch s | C epoch s | JAX / C | fastest TF | its epoch s "
             "| JAX faster by |", "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"] if header else []
    lines += [f"| {r['state_size']} | {r['num_steps']} | {r['data_size']:,} | "
              f"{r['results']['jax']['build_seconds']:.2f} | {seconds('jax', r)} | "
              f"{_spread(r['results']['c']) if 'c' in r['results'] else ''} | {ratio(r['jax_over_c'])} | "
              f"{r['fastest_tf'] or ''} | {seconds(r['fastest_tf'], r) if r['fastest_tf'] else ''} | "
              f"{ratio(r['fastest_tf_over_jax'])} |" for r in rows]
    return "\n".join(lines)


def format_table(rows, reference: str = "train_epoch (scan)") -> str:
    ref = next(r for r in rows if r["method"] == reference)["per_run_seconds"]
    lines = ["| method | compile s | epoch s median [min, max] | per run s | steps/s | points/s | vs scan |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['method']} | {r['compile_seconds']:.2f} | {_spread(r['epoch_seconds'])} | "
              f"{r['per_run_seconds']:.4f} | {r['steps_per_second']:,.0f} | {r['points_per_second']:,.0f} | "
              f"{ref / r['per_run_seconds']:.2f}x |" for r in rows]
    return "\n".join(lines)


def _ints(parser: argparse.ArgumentParser, option: str, text: str, minimum: int = 1) -> tuple[int, ...]:
    """A comma list of integers >= ``minimum``, or the parser's error (exit status 2) naming the option."""
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        parser.error(f"{option}: expected a comma list of integers, got {text!r}")
    if any(v < minimum for v in values):
        parser.error(f"{option}: every value must be >= {minimum}, got {text!r}")
    return values


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jax_rnn.bench", description=__doc__.split("\n\n")[0])
    for option in ("batch_size", "num_steps", "state_size", "data_size"):
        parser.add_argument(f"--{option.replace('_', '-')}", type=int, default=getattr(DEFAULT, option))
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per method (default 5)")
    parser.add_argument("--runs", default="8,32", help="vmapped run counts, comma list (default 8,32)")
    parser.add_argument("--no-loop", action="store_true", help="skip the Python loop of train_step")
    parser.add_argument("--c-reference", action="store_true",
                        help="also time jax_rnn/reference_loop.c, a hand-fused C loop of the same arithmetic")
    parser.add_argument("--grid", action="store_true",
                        help="train_epoch against the C loop on every --states x --steps cell")
    parser.add_argument("--truncation", action="store_true",
                        help="TBPTT(k1, k2) against the tutorial's epoch of num_steps k1 (k1 from --steps, k2 from "
                             "--backprop-steps, on every --states)")
    parser.add_argument("--states", default=None,
                        help="with --grid/--truncation: state sizes, comma list (default 4,16,64 / 4,16)")
    parser.add_argument("--steps", default=None,
                        help="with --grid/--truncation: num_steps (k1) values, comma list (default 1,5,10 / 1,3,5)")
    parser.add_argument("--backprop-steps", default="9,10,15",
                        help="with --truncation: k2 values, comma list (default 9,10,15)")
    parser.add_argument("--json", metavar="FILE", help="also write the rows to FILE as JSON")
    args = parser.parse_args(argv)
    for option in ("batch_size", "num_steps", "state_size", "data_size", "repeats"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be >= 1, got {getattr(args, option)}")
    if args.grid and args.truncation:
        parser.error("--grid and --truncation: choose one")
    states = _ints(parser, "--states", args.states or ("4,16" if args.truncation else "4,16,64"))
    steps = _ints(parser, "--steps", args.steps or ("1,3,5" if args.truncation else "1,5,10"))
    backprop = _ints(parser, "--backprop-steps", args.backprop_steps)
    if args.truncation and max(backprop) > args.data_size // args.batch_size:
        parser.error(f"--backprop-steps: at most the steps in a row of data ({args.data_size // args.batch_size}), "
                     f"got {max(backprop)}")
    runs = _ints(parser, "--runs", args.runs) if args.runs else ()
    try:
        cache = enable_compile_cache()  # a cache hit makes "compile s" the time to load the executable
    except OSError as err:  # an unwritable cache directory costs only the cache
        cache = None
        print(f"note: JAX compilation cache off: {err}")
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}); batch {args.batch_size}, "
          + ("" if args.grid or args.truncation else f"num_steps {args.num_steps}, state {args.state_size}, ")
          + f"{args.data_size:,} points per epoch; {args.repeats} timed epochs after a warm-up; "
          + f"compile cache: {cache or 'off'}")
    if args.grid:
        shown = []

        def show(row: dict) -> None:
            print(format_grid([row], header=not shown), flush=True)
            shown.append(row)

        rows = grid(FitConfig(batch_size=args.batch_size, data_size=args.data_size),
                    lambda _, config, params: JaxTrainer(config, params), ("jax",), args.repeats,
                    grid_cells(states, steps, args.data_size, large_states=()), on_row=show)
    elif args.truncation:
        rows = truncation(states, steps, backprop, args.batch_size, args.data_size, args.repeats)
    else:
        rows = bench(args.batch_size, args.num_steps, args.state_size, args.data_size, args.repeats,
                     runs, not args.no_loop, args.c_reference)
        print(format_table(rows))
        if args.c_reference:
            scan, c = rows[0], rows[1]
            print(f"C loop vs train_epoch: largest per-step loss difference {c['max_loss_diff_vs_scan']:.2e}; "
                  f"train_epoch takes {scan['per_run_seconds'] / c['per_run_seconds']:.2f}x the C loop's time")
    if args.json:
        Path(args.json).write_text(json.dumps(dict(device=f"{device.platform} ({device.device_kind})",
                                                   settings=vars(args), rows=rows), indent=1) + "\n")


if __name__ == "__main__":
    main()
