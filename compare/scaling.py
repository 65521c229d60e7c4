"""``rnn-compare bench --scaling``: how each implementation's cost grows with the work.

Three one-parameter sweeps around the tutorial's cell (state 4, num_steps 5, batch 200) on the same data
(100,000 points by default), each point timed like ``bench`` (`compare.bench.time_trainers`), with the
fitted slope of log(seconds) on log(value) (1: linear, 0: flat). With ``--device auto`` on a GPU machine
every implementation is measured on CPU and GPU, with the crossover. Then JAX's memory for long windows
(num_steps 1,000 and 10,000 at state 256) with and without remat: XLA's temp buffers
(``memory_analysis``), resident memory growth, compile and epoch seconds.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax_rnn
import numpy as np
from tqdm import tqdm

from jax_rnn import data as task
from jax_rnn.model import glorot_params
from jax_rnn.train import program

from .bench import PeakRss, time_trainers
from .config import record
from .environment import Devices, describe, jax_device
from .run import json_safe, targets

SWEEPS = {
    "state_size": (4, 16, 64, 256, 1024),
    "num_steps": (1, 3, 10, 30, 100),
    "batch_size": (20, 200, 2_000, 20_000),
}
DEFAULT_IMPLS = ("jax", "tf-dynamic", "tf2")
DEFAULT_DATA_SIZE = 100_000
MEMORY_NUM_STEPS = (1_000, 10_000)
MEMORY_STATE_SIZE = 256


def slope(values, seconds) -> float | None:
    """Least-squares slope of log(seconds) on log(value): the exponent of the growth."""
    pairs = [(v, s) for v, s in zip(values, seconds) if s and s > 0]
    if len(pairs) < 2:
        return None
    x, y = np.log([p[0] for p in pairs]), np.log([p[1] for p in pairs])
    return float(np.polyfit(x, y, 1)[0])


def crossover(values, cpu_seconds, gpu_seconds):
    """The first swept value from which the GPU stays faster than the CPU (None if it never does)."""
    for i, value in enumerate(values):
        if all(g < c for g, c in zip(gpu_seconds[i:], cpu_seconds[i:])):
            return value
    return None


def _device_kinds(devices, impl: str) -> list[str]:
    """Where to measure ``impl``: its resolved device, plus the CPU when ``auto`` found a GPU."""
    kind = devices.jax if impl == "jax" else devices.tf
    return ["cpu", "gpu"] if devices.requested == "auto" and kind == "gpu" else [kind]


def study(base, impls, devices, repeats: int = 2, sweeps: dict | None = None, memory_steps=MEMORY_NUM_STEPS,
          quiet: bool = False) -> dict:
    """Run the scaling sweeps for ``base.impls`` around ``base``, then the memory study (if ``jax``).

    **Returns:** ``command`` ("bench --scaling"), ``config``, ``environment``, ``targets``, ``points``
    (one per parameter x value x implementation x device: the `time_cell` figures), ``fits`` (slope
    per parameter, implementation and device; GPU crossover where measured), ``memory`` and ``notes``;
    non-finite floats as None. `compare.report.scaling_markdown` makes its tables.
    """

    sweeps = SWEEPS if sweeps is None else sweeps
    runs = [(param, value, impl, kind) for param, values in sweeps.items() for value in values
            for impl in impls for kind in _device_kinds(devices, impl)]
    points = []
    with tqdm(total=len(runs) * (repeats + 1), desc="scaling", unit="epoch", disable=quiet) as bar:
        for param, value, impl, kind in runs:
            bar.set_postfix_str(f"{param}={value} {impl} ({kind})")
            config = dataclasses.replace(base, **{param: value})
            figures = time_trainers(config, (impl,), Devices(devices.requested, kind, kind), repeats, bar=bar)[impl]
            points.append({"parameter": param, "value": value, "impl": impl, "device": kind,
                           "epoch_size": config.epoch_size, **figures})
    fits = []
    for param, values in sweeps.items():
        for impl in impls:
            series = {}
            for kind in ("cpu", "gpu"):
                rows = [p for p in points if (p["parameter"], p["impl"], p["device"]) == (param, impl, kind)]
                if rows:
                    series[kind] = [r["median_epoch_seconds"] for r in rows]
                    fits.append({"parameter": param, "impl": impl, "device": kind, "values": list(values),
                                 "seconds": series[kind], "slope": slope(values, series[kind])})
            if len(series) == 2:
                fits[-1]["gpu_faster_from"] = crossover(values, series["cpu"], series["gpu"])
    memory = []
    if "jax" in impls and memory_steps:
        memory = memory_study(base, devices.jax, memory_steps, quiet)
    gpu_seen = any(p["device"] == "gpu" for p in points)
    notes = (f"Every point trains on the same {base.data_size:,} points (the other parameters at "
             f"state {base.state_size}, num_steps {base.num_steps}, batch {base.batch_size}); seconds are the "
             f"median of {repeats} timed epochs after a warm-up one. Slope: d log(seconds) / d log(value). "
             + ("GPU crossover: the first value from which the GPU stays faster." if gpu_seen else
                "No GPU was measured (none seen, or --device cpu): no CPU/GPU crossover."))
    return json_safe({"command": "bench --scaling", "config": {**record(base, impls), "repeats": repeats,
                                                                "sweeps": {k: list(v) for k, v in sweeps.items()}},
                      "environment": describe(devices), "targets": targets(), "points": points, "fits": fits,
                      "memory": memory, "notes": notes, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})


def memory_study(base, device: str, steps=MEMORY_NUM_STEPS, quiet: bool = False) -> list[dict]:
    """Long windows with and without rematerialisation: XLA temp memory, RSS growth, compile and epoch time."""

    dev = jax_device(device)
    optimizer = jax_rnn.adagrad(base.learning_rate)
    rows = []
    for num_steps in tqdm(steps, desc="memory", unit="window", disable=quiet):
        config = dataclasses.replace(base, num_steps=num_steps, state_size=MEMORY_STATE_SIZE,
                                     data_size=base.batch_size * num_steps)
        x, y = task.gen_data(config.data_size, np.random.default_rng(base.seed))
        xw, yw = jax.device_put(task.windows(x, y, config.batch_size, num_steps), dev)
        params = jax.device_put(glorot_params(2, config.state_size, base.seed), dev)
        opt_state = optimizer.init(params)
        for remat in (False, True):
            with PeakRss() as rss:
                start = time.perf_counter()
                plan = jax_rnn.plan(config.state_size, config.batch_size, num_steps, remat=remat, backend=dev.platform)
                compiled = program(plan).lower(params, opt_state, xw, yw, None, optimizer=optimizer, plan=plan,
                                               guard=False).compile()
                compile_seconds = time.perf_counter() - start
                start = time.perf_counter()
                losses = jax.block_until_ready(compiled(params, opt_state, xw, yw, None)[3])
                seconds = time.perf_counter() - start
            analysis = compiled.memory_analysis()
            temp = getattr(analysis, "temp_size_in_bytes", None) if analysis is not None else None
            rows.append({"num_steps": num_steps, "state_size": config.state_size, "batch_size": config.batch_size,
                         "remat": remat, "device": device, "compile_seconds": compile_seconds,
                         "epoch_seconds": seconds, "xla_temp_mib": None if temp is None else temp / 2**20,
                         "peak_rss_mib": rss.peak_mib, "loss": float(losses[0]),
                         "remat_block": jax_rnn.model.remat_block_size(num_steps) if remat else None})
            del compiled
    return rows

