"""``rnn-compare bench``: speed only, every implementation on the same data and weights, in one process.

The timing is `jax_rnn.bench`'s harness, the project's one: `time_trainers`, `around`, `summary`,
`PeakRss` and the C reference loop. Here each implementation is a timer of one epoch of the one training loop
(`jax_rnn.driver.train`). Per implementation: ``build_seconds`` (JAX: ahead-of-time compile; TF: graph
build + variable init, or tf2's tracing), one warm-up epoch (``first_epoch_seconds``: TF1's first
``session.run`` optimises the graph), then ``repeats`` timed epochs on fresh data, one implementation
after another (`time_trainers`; JAX's epochs around the C loop's runs): median, min and max seconds per epoch, and
steps/s and points/s from the median. Every epoch ends with its losses read back as numpy, which
synchronises the device; every epoch's data is made before any clock starts (JAX's already on its device).

Memory: ``peak_rss_mib`` (`jax_rnn.bench.PeakRss`; memory freed by an earlier implementation and
reused is not counted again: "extra memory this one needed"). ``--grid``: the same on every cell, with
the C loop beside JAX (`grid`).
"""

from __future__ import annotations

import time

from tqdm import tqdm

from jax_rnn import bench as jax_bench
from jax_rnn.bench import (GRID_STATES, GRID_STEPS, LARGE_DATA_SIZE, LARGE_NUM_STEPS, LARGE_STATES, grid_cells,
                           time_trainers)

from .config import BASELINE, Config
from .environment import describe
from .run import json_safe, targets
from .runners import make_trainer

NOTES = ("build s: JAX ahead-of-time compile, TF graph build + variable init (tf2: + tracing); 1st epoch: the "
         "warm-up epoch (TF1's first session.run optimises the graph); epoch s: steady state, median of the "
         "timed epochs, one implementation after another; peak RSS MiB: largest increase of resident "
         "memory while that implementation built and trained its warm-up epoch (sampled); x vs {baseline}: its "
         "median epoch time divided by this one's.")
GRID_IMPLS = ("jax", "tf-raw", "tf-static")  # the fastest TF versions at every size measured (README)


def _make(devices):
    """`jax_rnn.bench`'s trainer factory for any implementation, each on its framework's device."""
    return lambda impl, config, params: make_trainer(impl, config, params, devices.jax if impl == "jax" else devices.tf)


def time_cell(config: Config, devices, repeats: int, c_loop: bool = False, bar=None) -> dict:
    """`jax_rnn.bench.time_trainers` for every implementation of ``config.impls``, each figure with its device."""
    figures = time_trainers(config, _make(devices), config.impls, repeats, c_loop, bar)
    for impl in config.impls:
        figures[impl]["device"] = devices.jax if impl == "jax" else devices.tf
    return figures


def bench(config: Config, devices, quiet: bool = False) -> dict:
    """Time every implementation of ``config.impls``: one warm-up epoch, then ``config.epochs - 1`` rounds.

    **Returns:** ``command``, ``config`` (with ``repeats``), ``environment``, ``targets``, ``baseline``,
    ``results.<impl>`` (see `time_cell`, plus ``speedup_vs_baseline``) and ``notes``; non-finite floats as
    None. TF's first step (graph optimisation / function instantiation) falls in the warm-up epoch,
    never in the timed ones, so steady-state figures do not include it.
    """
    repeats = config.epochs - 1
    with tqdm(total=len(config.impls) * config.epochs, desc="bench", unit="epoch", disable=quiet) as bar:
        results = time_cell(config, devices, repeats, bar=bar)
    base = results.get(BASELINE)
    for r in results.values():
        r["speedup_vs_baseline"] = base["median_epoch_seconds"] / r["median_epoch_seconds"] if base else None
    return json_safe({"command": "bench", "config": {**config.as_dict(), "repeats": repeats},
                      "environment": describe(devices), "targets": targets(), "baseline": BASELINE,
                      "results": results, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "notes": NOTES.format(baseline=BASELINE) + ("" if base else f" ({BASELINE} was not run: no speed-ups.)")})


def grid(base: Config, devices, repeats: int = 3, states=GRID_STATES, steps=GRID_STEPS, large_states=LARGE_STATES,
         quiet: bool = False) -> dict:
    """``--grid``: `jax_rnn.bench.grid` over every implementation of ``base.impls``, on the cells of
    `jax_rnn.bench.grid_cells` (``states`` x ``steps`` at ``base.data_size`` with the C loop, then
    ``large_states`` at num_steps 10, without the C loop, whose plain loops take minutes there), in one run:
    per cell JAX / C and how many times faster JAX is than the fastest TF version.

    **Returns:** ``command`` ("bench --grid"), ``config``, ``environment``, ``targets``, ``cells`` (the rows of
    `jax_rnn.bench.grid`), ``notes``, ``measured_at``; non-finite floats as None.
    """
    cells = grid_cells(states, steps, base.data_size, large_states)
    with tqdm(total=len(cells) * len(base.impls) * (repeats + 1), desc="bench --grid", unit="epoch",
              disable=quiet) as bar:
        rows = jax_bench.grid(base, _make(devices), base.impls, repeats, cells, bar)
    notes = (f"Every cell: each implementation built, warmed up with one epoch and timed for {repeats} more, one after "
             f"another, JAX's epochs in two blocks around the C loop's {repeats} runs; same data and weights; seconds "
             f"per epoch, median [min, max]. Large states (num_steps {LARGE_NUM_STEPS}, {LARGE_DATA_SIZE:,} points) "
             f"without the C loop.")
    return json_safe({"command": "bench --grid", "config": {**base.as_dict(), "repeats": repeats,
                                                             "states": list(states), "steps": list(steps),
                                                             "large_states": list(large_states)},
                      "environment": describe(devices), "targets": targets(), "cells": rows, "notes": notes,
                      "measured_at": time.strftime("%Y-%m-%d %H:%M:%S")})
