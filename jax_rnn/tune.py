"""A measured plan, as FFTW's ``FFTW_MEASURE`` or Triton's autotune: `tuned` times a few candidate programs on the
cell's shapes, keeps the fastest whose losses match the plain program's within `TOLERANCE`, and stores the choice
("wisdom") beside JAX's compilation cache, keyed by the cell, the device, the CPU model and the JAX versions."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import json
import logging
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from . import cache, data, optim
from .checkpoint import atomic_write
from .model import glorot_params
from .plan import _YNN_DOTS, Plan

ENV = "RNN_SCAN_TUNE"
TOLERANCE = 1e-5
WINDOWS, REPEATS, SAMPLE_SECONDS = 128, 5, 0.02
MARGIN = 0.05  # a candidate replaces the rule's plan only if this much faster
FORMAT = 1
CELL = ("state_size", "batch_size", "num_steps", "backprop_steps", "runs", "remat", "num_classes", "backend")
log = logging.getLogger(__name__)


def enabled() -> bool:
    """``RNN_SCAN_TUNE=1``: every plan made without ``tune=`` is tuned."""
    return os.environ.get(ENV, "").strip().lower() in ("1", "on", "true", "yes")


def candidates(plan: Plan) -> list[Plan]:
    """The rule's ``plan``, the plain program, then one change at a time, each valid for the cell."""
    rep, plain, small = dataclasses.replace, plan.plain(), plan.state_size * max(plan.state_size, plan.num_classes)
    last = rep(plain, layout="batch_last")
    products = ("input", "state", "softmax") if small <= 64 else ()
    by_hand = [] if plan.tbptt or plan.remat else [
        rep(plan, layout="batch_last", gradient="by_hand", softmax_grad=s) for s in ("full", "difference")]
    shapes = [plan, plain, last, rep(last, elementwise=products), rep(plan, elementwise=()), *by_hand]
    unrolls = [rep(plan, unroll=u) for u in (1, 4, plan.backprop_steps) if u <= plan.backprop_steps]
    epochs = [rep(plan, epoch_unroll=u) for u in ((2, 8) if plan.backend == "gpu" else (2,))]
    options = [rep(plan, xla_options=() if plan.xla_options else (_YNN_DOTS,))] if plan.backend == "cpu" else []
    runs = [rep(plan, run_loop=not plan.run_loop)] if plan.runs > 1 else []
    return list(dict.fromkeys([*shapes, *unrolls, *epochs, *options, *runs]))


def _inputs(plan: Plan):
    """``(params, x_windows, y_windows)`` in the cell's shapes on its device."""
    windows = max(WINDOWS, -(-plan.backprop_steps // plan.num_steps))
    x, y = data.gen_data(windows * plan.batch_size * plan.num_steps, seed=0)
    xw, yw = data.windows(x, y, plan.batch_size, plan.num_steps, data.window_dtype(plan.num_classes))
    params = glorot_params(plan.num_classes, plan.state_size, 0)
    if plan.runs > 1:
        params, xw, yw = jax.tree.map(lambda a: np.broadcast_to(a, (plan.runs, *a.shape)), (params, xw, yw))
    return jax.device_put((params, xw, yw), jax.devices(plan.backend)[0])


def measure(plan: Plan, inputs) -> tuple[float, np.ndarray, float]:
    """``(median seconds of REPEATS runs after a warm-up, losses, compile seconds)`` of ``plan`` on ``inputs``."""
    from .train import program  # train imports plan

    params, xw, yw = inputs
    optimizer, kind = optim.adagrad(0.1), "runs" if plan.runs > 1 else "epoch"
    opt_state = (jax.vmap(optimizer.init) if plan.runs > 1 else optimizer.init)(params)
    start = time.perf_counter()
    compiled = program(plan, kind).lower(params, opt_state, xw, yw, None, optimizer=optimizer, plan=plan,
                                         guard=False).compile()
    compile_seconds = time.perf_counter() - start
    run = lambda: jax.block_until_ready(compiled(params, opt_state, xw, yw, None))

    def sample(calls):
        start = time.perf_counter()
        for _ in range(calls):
            out = run()
        return (time.perf_counter() - start) / calls, out
    first, out = sample(1)  # the warm-up
    calls = max(1, round(SAMPLE_SECONDS / first))
    return statistics.median(sample(calls)[0] for _ in range(REPEATS)), np.asarray(out[3]), compile_seconds


def choose(plan: Plan, measure=measure) -> tuple[Plan, list[dict]]:
    """The fastest candidate whose losses are within `TOLERANCE` of the plain program's (the rule's plan unless
    `MARGIN` slower), and a row per candidate; one that fails is skipped."""
    inputs, rows, reference = _inputs(plan), [], None
    for candidate in [plan.plain(), *(c for c in candidates(plan) if c != plan.plain())]:
        try:
            seconds, losses, compile_seconds = measure(candidate, inputs)
        except Exception as err:  # noqa: BLE001
            rows.append(dict(plan=candidate.record(), error=f"{type(err).__name__}: {err}"[:200]))
            continue
        reference = losses if reference is None else reference
        diff = float(np.max(np.abs(losses - reference), initial=0.0))
        rows.append(dict(plan=candidate.record(), seconds=seconds, compile_seconds=compile_seconds,
                         max_loss_diff=diff, accepted=bool(diff <= TOLERANCE)))
    accepted = {Plan.from_record(r["plan"]): r["seconds"] for r in rows if r.get("accepted")}
    best = min(accepted, key=accepted.get)
    return plan if plan in accepted and accepted[best] > (1 - MARGIN) * accepted[plan] else best, rows


def _machine(backend: str) -> dict:
    import jaxlib

    cpu = platform.processor()
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    return dict(device=jax.devices(backend)[0].device_kind, cpu=cpu, jax=jax.__version__, jaxlib=jaxlib.__version__)


def wisdom_path() -> Path:
    return cache.default_dir() / "wisdom.json"


def key(plan: Plan) -> str:
    """What a tuned choice depends on: the cell, float32, the machine and the versions."""
    return json.dumps({**{k: getattr(plan, k) for k in CELL}, "dtype": "float32", **_machine(plan.backend)},
                      sort_keys=True)


def read_wisdom(path: Path | None = None) -> dict:
    """``{key: entry}`` from the wisdom file; an unreadable or foreign file reads as empty."""
    try:
        stored = json.loads(Path(path or wisdom_path()).read_text())
        return stored["entries"] if stored.get("format") == FORMAT and isinstance(stored["entries"], dict) else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {}


def _recall(plan: Plan, entry) -> Plan | None:
    """The stored plan if it is a valid plan for ``plan``'s cell, else None."""
    try:
        stored = Plan.from_record(entry["plan"])
    except (KeyError, TypeError, ValueError, AttributeError):
        return None
    return stored if all(getattr(stored, k) == getattr(plan, k) for k in CELL) else None


def _store(plan: Plan, entry: dict, path: Path) -> None:
    """Add ``entry`` under ``plan``'s key, atomically under a lock."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        entries = {**read_wisdom(path), key(plan): entry}
        atomic_write(path, json.dumps({"format": FORMAT, "entries": entries}, indent=1).encode())


def clear_wisdom(path: Path | None = None) -> int:
    """Delete the wisdom file; the number of entries it held."""
    path = Path(path or wisdom_path())
    entries = len(read_wisdom(path))
    path.unlink(missing_ok=True)
    return entries


def tuned(plan: Plan, measure=measure, path: Path | None = None) -> Plan:
    """``plan``'s cell with the program measured fastest here: from the wisdom file, else measured and stored."""
    return _tuned(plan, measure, Path(path or wisdom_path()))


@functools.lru_cache(maxsize=256)
def _tuned(plan: Plan, measure, path: Path) -> Plan:
    found = _recall(plan, read_wisdom(path).get(key(plan)))
    if found is not None:
        return found
    start = time.perf_counter()
    best, rows = choose(plan, measure)
    seconds = time.perf_counter() - start
    _store(plan, dict(plan=best.record(), tuning_seconds=seconds, candidates=rows,
                      measured_at=time.strftime("%Y-%m-%d %H:%M:%S")), path)
    log.info("tuned %s in %.1f s (%d candidates): %s", plan, seconds, len(rows), best)
    return best
