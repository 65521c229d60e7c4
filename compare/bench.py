"""``rnn-compare bench``: speed only, every implementation on the same data and weights, one process.

Per implementation: ``build_seconds`` (JAX: ahead-of-time compile; TF: graph build + variable init, or
tf2's tracing), one warm-up epoch (``first_epoch_seconds``: TF1's first ``session.run`` optimises the
graph), then ``repeats`` timed epochs on fresh data: median, min and max seconds per epoch, steps/s and
points/s from the median. Every epoch ends with its losses read back as numpy, which synchronises the
device. The data of every epoch is generated and windowed before any clock starts.

Memory: ``peak_rss_mib`` is the largest increase of this process's resident set size (``/proc/self/
statm``, sampled every 5 ms by a thread) over its value when the implementation started building. It
counts native allocations (XLA, TensorFlow) that ``tracemalloc`` cannot see; memory freed by an earlier
implementation and reused is not counted again, so read it as "extra memory this one needed".
"""

from __future__ import annotations

import os
import statistics
import threading
import time

from tqdm import tqdm

from jax_rnn import data as task
from jax_rnn.driver import train
from jax_rnn.model import glorot_params

from .config import BASELINE, Config
from .environment import describe
from .run import json_safe, targets
from .runners import make_trainer

NOTES = ("build s: JAX ahead-of-time compile, TF graph build + variable init (tf2: + tracing); 1st epoch: the "
         "warm-up epoch (TF1's first session.run optimises the graph); epoch s: steady state, median of the "
         "timed epochs; peak RSS MiB: largest increase of resident memory while that implementation built "
         "and trained (sampled); x vs {baseline}: its median epoch time divided by this one's.")


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


class PeakRss:
    """Context manager: ``peak_mib`` = the largest RSS increase seen while inside (None where
    ``/proc`` is unavailable, e.g. macOS)."""

    def __init__(self, interval: float = 0.005):
        self.interval, self.peak_mib = interval, None
        self._stop = threading.Event()

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            self._peak = max(self._peak, _rss_bytes() or 0)

    def __enter__(self) -> "PeakRss":
        self._start = _rss_bytes()
        self._peak = self._start or 0
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self._start is not None:
            self._peak = max(self._peak, _rss_bytes() or 0)
            self.peak_mib = (self._peak - self._start) / 2**20


def time_one(impl: str, config: Config, params: dict, windows: list, device: str, bar) -> dict:
    """Build ``impl``, train the warm-up epoch ``windows[0]`` and time the rest (`jax_rnn.driver.train`);
    the figures of one row."""
    with PeakRss() as memory:
        trainer = make_trainer(impl, config, params, device)
        try:
            history = train(trainer, windows, after_epoch=lambda h, t: bar.update(1))
        finally:
            trainer.close()
    if history.stopped:
        raise RuntimeError(f"bench: {impl} diverged at {history.diverged[0]}; lower --learning-rate")
    first, seconds = history.epoch_seconds[0] + (history.first_step_seconds or 0.0), history.epoch_seconds[1:]
    median = statistics.median(seconds)
    return {
        "build_seconds": history.build_seconds, "first_step_seconds": history.first_step_seconds,
        "first_epoch_seconds": first, "epoch_seconds": seconds, "median_epoch_seconds": median,
        "min_epoch_seconds": min(seconds), "max_epoch_seconds": max(seconds),
        "spread": (max(seconds) - min(seconds)) / median,
        "steps_per_second": config.epoch_size / median, "points_per_second": config.points_per_epoch / median,
        "peak_rss_mib": memory.peak_mib, "device": device,
    }


def bench(config: Config, devices, quiet: bool = False) -> dict:
    """Time every implementation of ``config.impls``: one warm-up epoch, then ``config.epochs - 1`` timed.

    **Returns:** ``command``, ``config`` (with ``repeats``), ``environment``, ``targets``, ``baseline``,
    ``results.<impl>`` (see `time_one`, plus ``speedup_vs_baseline``) and ``notes``; non-finite floats as
    None. TF's first step (graph optimisation / function instantiation) falls in the warm-up epoch,
    never in the timed ones, so steady-state figures do not include it.
    """

    params = glorot_params(config.num_classes, config.state_size, config.seed)
    windows = list(task.epoch_windows(config))
    results = {}
    with tqdm(total=len(config.impls) * config.epochs, desc="bench", unit="epoch", disable=quiet) as bar:
        for impl in config.impls:
            bar.set_postfix_str(impl)
            device = devices.jax if impl == "jax" else devices.tf
            results[impl] = time_one(impl, config, params, windows, device, bar)
    base = results.get(BASELINE)
    for r in results.values():
        r["speedup_vs_baseline"] = base["median_epoch_seconds"] / r["median_epoch_seconds"] if base else None
    return json_safe({"command": "bench", "config": {**config.as_dict(), "repeats": config.epochs - 1},
                      "environment": describe(devices), "targets": targets(), "baseline": BASELINE,
                      "results": results, "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "notes": NOTES.format(baseline=BASELINE) + ("" if base else f" ({BASELINE} was not run: no speed-ups.)")})
