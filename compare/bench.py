"""``rnn-compare bench``: the project's one benchmark harness.

Every implementation is a trainer of `jax_rnn.train` (built, one warm-up epoch, then ``repeats`` timed
epochs, each ending with its losses read back as numpy, which synchronises); the C reference loop
(reference_loop.c, a hand-fused single-thread loop of the same arithmetic) times its own training on the
same windows and weights. Ratios are measured side by side in one run: `around` times JAX's epochs in
two blocks around the C loop's, so drift shows as a gap between the blocks. Modes: the default (every
implementation on one cell), ``--grid``, ``--truncation`` and ``--plan-options``; ``--scaling`` is in
`compare.scaling`.
"""

from __future__ import annotations

import atexit
import dataclasses
import functools
import importlib.resources
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

from .config import BASELINE, record
from .environment import describe
from .run import json_safe, make_trainer, targets

C_FLAGS = ["-O3", "-march=native", "-ffast-math"]
GRID_STATES, GRID_STEPS = (4, 16, 64), (1, 5, 10)
LARGE_STATES, LARGE_NUM_STEPS, LARGE_DATA_SIZE = (512, 1024), 10, 100_000
GRID_IMPLS = ("jax", "tf-raw", "tf-static")  # the fastest TF versions at every size measured


def summary(seconds) -> dict:
    """``median``, ``min``, ``max``, ``spread`` = (max - min) / median, and the ``seconds``."""
    seconds = list(seconds)
    median = statistics.median(seconds)
    return dict(median=median, min=min(seconds), max=max(seconds), spread=(max(seconds) - min(seconds)) / median,
                seconds=seconds)


def around(a, b, repeats: int) -> tuple[dict, dict]:
    """Timer ``a`` in two blocks of runs around ``repeats`` runs of ``b``: the `summary` of each."""
    first = [a() for _ in range(repeats // 2)]
    seconds_b = [b() for _ in range(repeats)]
    return summary(first + [a() for _ in range(repeats - repeats // 2)]), summary(seconds_b)


def interleaved(timers: dict, repeats: int) -> dict:
    """A warm-up round, then ``repeats`` rounds calling every timer once: per name its `summary`."""
    rounds = [{name: timer() for name, timer in timers.items()} for _ in range(repeats + 1)][1:]
    return {name: summary(r[name] for r in rounds) for name in timers}


class PeakRss:
    """``with PeakRss() as m:`` sets ``m.peak_mib``, the largest growth of resident memory inside (sampled
    from /proc/self/statm by a thread; None where there is no /proc). Counts XLA's and TF's allocations."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak_mib, self._stop = interval, None, threading.Event()

    @staticmethod
    def _rss() -> int | None:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, self._rss() or 0)

    def __enter__(self) -> "PeakRss":
        self._start = self._rss()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self.peak_mib = (max(self._peak, self._rss() or 0) - self._start) / 2**20


@functools.cache
def c_program() -> tuple[Path, float]:
    """Build reference_loop.c once per process: ``(executable, compile seconds)``."""
    source = importlib.resources.files(__package__) / "reference_loop.c"
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc is None:
        raise RuntimeError("the C reference loop needs a C compiler: none of cc, gcc, clang is on PATH")
    tmp = Path(tempfile.mkdtemp(prefix="rnn_scan_c_loop_"))
    atexit.register(shutil.rmtree, tmp, ignore_errors=True)
    src, exe = tmp / "reference_loop.c", tmp / "reference_loop"
    src.write_text(source.read_text())
    start = time.perf_counter()
    built = subprocess.run([cc, *C_FLAGS, "-o", str(exe), str(src), "-lm"], capture_output=True, text=True)
    if built.returncode:
        raise RuntimeError(f"compiling the C reference loop failed ({cc} {' '.join(C_FLAGS)}):\n{built.stderr}")
    return exe, time.perf_counter() - start


def c_epoch(params, x_windows, y_windows, learning_rate: float):
    """The C loop as a timer: each call trains one epoch from ``params`` and returns the seconds it measured;
    ``timer.losses`` holds the last call's ``f32[epoch_size]``."""
    exe, _ = c_program()
    xw, yw = np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32)
    n, d = params["softmax"]["b"].shape[0], params["rnn_cell"]["b"].shape[0]
    flat = np.concatenate([a.ravel() for a in flatten(params).values()])
    workdir = tempfile.TemporaryDirectory(prefix="rnn_scan_c_loop_")
    inp, out = Path(workdir.name) / "in.bin", Path(workdir.name) / "out.bin"
    inp.write_bytes(np.array([*xw.shape, n, d], np.int32).tobytes() + np.float32(learning_rate).tobytes()
                    + flat.tobytes() + xw.tobytes() + yw.tobytes())

    def timer() -> float:
        subprocess.run([str(exe), str(inp), str(out), "1"], check=True)
        raw = out.read_bytes()
        timer.losses = np.frombuffer(raw[: 4 * xw.shape[0]], np.float32)
        return float(np.frombuffer(raw[4 * xw.shape[0]:], np.float64)[0])
    timer.workdir = workdir  # removed with the timer
    return timer


def time_trainers(config, impls, devices, repeats: int, c_loop: bool = False, bar=None) -> dict:
    """Every implementation of ``impls`` on the same ``repeats + 1`` epochs from the same weights, one after
    another (each closed before the next is built: TF's spinning thread pools slow whatever runs next):
    build and a warm-up epoch under `PeakRss`, then ``repeats`` timed epochs; the C loop `around` the first.

    **Returns:** per impl ``build_seconds``, ``first_step_seconds``, ``first_epoch_seconds``, ``peak_rss_mib``,
    the timed ``epoch_seconds`` and their ``median_/min_/max_epoch_seconds``, ``spread``, ``steps_per_second``,
    ``points_per_second``, ``device``, and JAX's ``plan``; ``"c"``: the C loop's `summary` and
    ``max_loss_diff`` (its losses against the first implementation's on the warm-up epoch).
    """
    params = glorot_params(config.num_classes, config.state_size, config.seed)
    epochs = list(task.epoch_windows(dataclasses.replace(config, epochs=repeats + 1)))
    points = config.epoch_size * config.batch_size * config.num_steps
    figures, times = {}, {}
    for impl in impls:
        device = devices.jax if impl == "jax" else devices.tf
        with PeakRss() as memory:
            trainer = make_trainer(impl, config, params, device)
            try:
                mine = epochs
                if impl == "jax":  # on the device, in the trainer's dtype, before any clock starts
                    mine = jax.device_put([tuple(np.asarray(w, trainer.window_dtype) for w in e) for e in epochs],
                                          trainer.device)
                history = jax_rnn.train(trainer, mine[:1])
            except BaseException:
                trainer.close()
                raise
        if bar is not None:
            bar.update(1)
        figures[impl] = {"build_seconds": history.build_seconds, "first_step_seconds": history.first_step_seconds,
                         "first_epoch_seconds": history.epoch_seconds[0] + (history.first_step_seconds or 0.0),
                         "peak_rss_mib": memory.peak_mib, "device": device}
        if impl == "jax":
            figures[impl]["plan"] = trainer.plan.record()
        rest = iter(mine[1:])

        def timer() -> float:
            jax_rnn.train(trainer, [next(rest)], history)
            if bar is not None:
                bar.update(1)
            return history.epoch_seconds[-1]
        try:
            if c_loop and impl == impls[0]:
                c_timer = c_epoch(params, *epochs[0], learning_rate=config.learning_rate)
                times[impl], times["c"] = around(timer, c_timer, repeats)
                figures["c"] = {"max_loss_diff": float(np.max(np.abs(c_timer.losses - history.step_losses[0])))}
            else:
                times[impl] = summary(timer() for _ in range(repeats))
        finally:
            trainer.close()
        if history.stopped:
            raise RuntimeError(f"bench: {impl} diverged at {history.diverged[0]}; lower the learning rate")
        t = times[impl]
        figures[impl].update(epoch_seconds=t["seconds"], median_epoch_seconds=t["median"], min_epoch_seconds=t["min"],
                             max_epoch_seconds=t["max"], spread=t["spread"],
                             steps_per_second=config.epoch_size / t["median"], points_per_second=points / t["median"])
    if c_loop:
        figures["c"].update(times["c"])
    return figures


def page(command: str, config, devices, repeats: int, **fields) -> dict:
    return json_safe({"command": command, "config": {**record(config), "repeats": repeats}, "environment": describe(devices),
                      "targets": targets(), **fields, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})


def bench(config, impls, devices, repeats: int, quiet: bool = False) -> dict:
    """Every implementation on one cell, with the speed-up of each against `BASELINE` and JAX's plan."""
    with tqdm(total=len(impls) * (repeats + 1), desc="bench", unit="epoch", disable=quiet) as bar:
        results = time_trainers(config, impls, devices, repeats, bar=bar)
    base = results.get(BASELINE)
    for r in results.values():
        r["speedup_vs_baseline"] = base["median_epoch_seconds"] / r["median_epoch_seconds"] if base else None
    plan = results["jax"]["plan"] if "jax" in results else None
    return page("bench", config, devices, repeats, impls=list(impls), baseline=BASELINE, results=results, plan=plan)


def grid_cells(states=GRID_STATES, steps=GRID_STEPS, data_size=1_000_000, large_states=LARGE_STATES) -> list[tuple]:
    """``(state_size, num_steps, data_size, c_loop)``: ``states`` x ``steps`` with the C loop, then the
    large states at num_steps 10 on 100,000 points without it (its plain loops take minutes there)."""
    return ([(d, n, data_size, True) for d in states for n in steps]
            + [(d, LARGE_NUM_STEPS, LARGE_DATA_SIZE, False) for d in large_states])


def grid(config, impls, devices, repeats: int, cells, quiet: bool = False, on_row=print) -> dict:
    """`time_trainers` on every cell: per cell JAX / C and how many times faster JAX is than the fastest TF."""
    rows = []
    with tqdm(total=len(cells) * len(impls) * (repeats + 1), desc="bench --grid", unit="epoch", disable=quiet) as bar:
        for state_size, num_steps, data_size, c_loop in cells:
            cell = dataclasses.replace(config, state_size=state_size, num_steps=num_steps, data_size=data_size)
            results = time_trainers(cell, impls, devices, repeats, c_loop, bar)
            median = {name: r["median_epoch_seconds"] for name, r in results.items() if name != "c"}
            others = {name: s for name, s in median.items() if name != "jax"}
            fastest = min(others, key=others.get) if others else None
            rows.append({"state_size": state_size, "num_steps": num_steps, "data_size": data_size, "results": results,
                         "jax_over_c": median["jax"] / results["c"]["median"] if c_loop else None,
                         "fastest_tf": fastest, "fastest_tf_over_jax": others[fastest] / median["jax"] if fastest else None})
            bar.write(format_grid(rows[-1:], header=len(rows) == 1)) if on_row else None
    return page("bench --grid", config, devices, repeats, impls=list(impls), cells=rows)


def _wall(call):
    """A timer of ``call``: runs it, synchronises, returns the seconds."""
    def timer() -> float:
        begin = time.perf_counter()
        jax.block_until_ready(call())
        return time.perf_counter() - begin
    return timer


def _epoch_timer(plan, params, optimizer, xw, yw, kind: str = "epoch"):
    """``(timer, compile seconds)`` of ``plan``'s epoch (or runs) compiled ahead of time on these windows."""
    opt_state = (optimizer.init if kind == "epoch" else jax.vmap(optimizer.init))(params)
    start = time.perf_counter()
    compiled = program(plan, kind).lower(params, opt_state, xw, yw, None, optimizer=optimizer, plan=plan,
                                         guard=False).compile()
    return _wall(lambda: compiled(params, opt_state, xw, yw, None)), time.perf_counter() - start


def _windows(config, data):
    xw, yw = task.windows(*data, config.batch_size, config.num_steps, task.window_dtype(config.num_classes))
    return jax.device_put((xw, yw))


def truncation(config, states=(4, 16), steps=(1, 3, 5), backprop=(9, 10, 15), repeats: int = 5) -> list[dict]:
    """TBPTT(k1, k2) against the TF-style epoch of num_steps k1, per state: cost ratio and the bound 1.2 k2/k1."""
    data, rows = task.gen_data(config.data_size, seed=1), []
    for state_size in states:
        for k1 in steps:
            cell = dataclasses.replace(config, state_size=state_size, num_steps=k1)
            params, optimizer = jax.device_put(glorot_params(2, state_size, 0)), jax_rnn.adagrad(config.learning_rate)
            xw, yw = _windows(cell, data)
            timers, compile_seconds = {}, {}
            for k2 in (k1, *(k for k in backprop if k > k1)):
                plan = jax_rnn.plan(state_size, cell.batch_size, k1, backprop_steps=k2)
                timers[k2], compile_seconds[k2] = _epoch_timer(plan, params, optimizer, xw, yw)
            times = interleaved(timers, repeats)
            for k2 in list(timers)[1:]:
                rows.append(dict(state_size=state_size, num_steps=k1, backprop_steps=k2, tf_style=times[k1],
                                 tbptt=times[k2], compile_seconds=compile_seconds[k2],
                                 cost=times[k2]["median"] / times[k1]["median"], bound=1.2 * k2 / k1))
                print(format_truncation(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def _without(plan: jax_rnn.Plan) -> dict:
    """Each choice of ``plan`` that differs from the plain program -> the plan with that choice made plain
    (a choice the plan's others require goes with them: by-hand BPTT needs the batch-last layout)."""
    plain, out = plan.plain(), {}
    if plan.gradient != plain.gradient:
        out["by-hand gradient"] = dataclasses.replace(plan, gradient="autodiff", softmax_grad="full")
    if plan.softmax_grad != plain.softmax_grad:
        out["softmax grad difference"] = dataclasses.replace(plan, softmax_grad="full")
    if plan.layout != plain.layout:
        out["batch-last layout"] = dataclasses.replace(plain, unroll=plan.unroll, xla_options=plan.xla_options)
    for matrix in plan.elementwise:
        out[f"elementwise {matrix}"] = dataclasses.replace(plan, elementwise=tuple(m for m in plan.elementwise if m != matrix))
    for name, value in plan.xla_options:
        out[f"{name}={value}"] = dataclasses.replace(plan, xla_options=tuple(o for o in plan.xla_options if o[0] != name))
    return out


def plan_options(config, states=GRID_STATES, steps=GRID_STEPS, runs: int = 1, repeats: int = 5) -> list[dict]:
    """For every cell, each choice of its plan timed against the plan without it, interleaved, same data and
    weights; ``gain`` = 1 - plan / without (0.10: the plan is 10% faster for that choice)."""
    data, rows = task.gen_data(config.data_size, seed=1), []
    for state_size in states:
        for num_steps in steps:
            cell = dataclasses.replace(config, state_size=state_size, num_steps=num_steps)
            plan = jax_rnn.plan(state_size, cell.batch_size, num_steps, runs=runs)
            params, optimizer = glorot_params(2, state_size, 0), jax_rnn.adagrad(config.learning_rate)
            xw, yw = _windows(cell, data)
            if runs > 1:
                params, xw, yw = jax.tree.map(lambda a: np.broadcast_to(a, (runs,) + a.shape), (params, xw, yw))
            params = jax.device_put(params)
            timers = {name: _epoch_timer(p, params, optimizer, xw, yw, "runs" if runs > 1 else "epoch")[0]
                      for name, p in {"plan": plan, **_without(plan)}.items()}
            times = interleaved(timers, repeats)
            for name in list(timers)[1:]:
                rows.append(dict(state_size=state_size, num_steps=num_steps, runs=runs, option=name,
                                 plan=times["plan"], without=times[name],
                                 gain=1 - times["plan"]["median"] / times[name]["median"]))
                print(format_plan_options(rows[-1:], header=len(rows) == 1), flush=True)
    return rows


def _spread(t: dict, suffix: str = "") -> str:
    return f"{t['median' + suffix]:.4f} [{t['min' + suffix]:.4f}, {t['max' + suffix]:.4f}]"


def format_truncation(rows, header: bool = True) -> str:
    lines = ["| state | k1 | k2 | TF-style k1: epoch s | TBPTT(k1, k2): epoch s | compile s | cost | bound 1.2 k2/k1 |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"] if header else []
    return "\n".join(lines + [f"| {r['state_size']} | {r['num_steps']} | {r['backprop_steps']} | {_spread(r['tf_style'])} | "
                              f"{_spread(r['tbptt'])} | {r['compile_seconds']:.2f} | {r['cost']:.2f}x | {r['bound']:.1f}x |"
                              for r in rows])


def format_plan_options(rows, header: bool = True) -> str:
    lines = ["| state | num_steps | runs | option | plan: epoch s | without it: epoch s | gain |",
             "|---:|---:|---:|---|---:|---:|---:|"] if header else []
    return "\n".join(lines + [f"| {r['state_size']} | {r['num_steps']} | {r['runs']} | {r['option']} | {_spread(r['plan'])} | "
                              f"{_spread(r['without'])} | {100 * r['gain']:+.0f}% |" for r in rows])


def format_grid(rows, header: bool = True) -> str:
    """Markdown rows of `grid`: JAX, the C loop and the fastest other implementation, with the ratios."""
    seconds = lambda name, r: _spread(r["results"][name], "_epoch_seconds") if name in r["results"] else ""
    ratio = lambda value: "" if value is None else f"{value:.2f}x"
    lines = ["| state | num_steps | points | JAX compile s | JAX epoch s | C epoch s | JAX / C | fastest TF | its epoch s "
             "| JAX faster by |", "|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"] if header else []
    return "\n".join(lines + [
        f"| {r['state_size']} | {r['num_steps']} | {r['data_size']:,} | {r['results']['jax']['build_seconds']:.2f} | "
        f"{seconds('jax', r)} | {_spread(r['results']['c']) if 'c' in r['results'] else ''} | {ratio(r['jax_over_c'])} | "
        f"{r['fastest_tf'] or ''} | {seconds(r['fastest_tf'], r) if r['fastest_tf'] else ''} | "
        f"{ratio(r['fastest_tf_over_jax'])} |" for r in rows])
