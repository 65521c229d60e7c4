"""Benchmark of jax_rnn's training on the tutorial's default config: ``python -m jax_rnn.bench``.

For each way of running one epoch (1M points: 1000 windows of [200, 5] by default) it reports the
compile time apart from the steady state, then the steady state over ``--repeats`` timed epochs
(after one warm-up): median, min and max seconds per epoch, steps/s and points/s:

- ``train_epoch``: the whole epoch as one compiled ``lax.scan``;
- ``step loop``: a Python loop of the jitted ``train_step`` (one dispatch per window);
- ``vmap xR``: ``train_runs`` training R independent runs at once (per-run cost shown too);
- ``--c-reference``: ``bench/reference_loop.c``, a hand-fused single-thread C loop of the same
  arithmetic (compiled here with ``cc -O3 -march=native -ffast-math``), on the same windows and weights; its
  per-step losses are checked against ``train_epoch``'s and its time is the speed reference.

Every timed call ends with ``jax.block_until_ready``. Speed ratios are measured in this one run.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from .data import gen_data, windows
from .model import init_params
from .optim import adagrad
from .train import train_epoch, train_runs, train_step


def _timed(fn, repeats: int) -> list[float]:
    jax.block_until_ready(fn())  # warm-up (caches, allocator)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        seconds.append(time.perf_counter() - start)
    return seconds


def _stack(tree, runs: int):
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (runs,) + a.shape), tree)


C_SOURCE = Path(__file__).resolve().parents[1] / "bench" / "reference_loop.c"
C_FLAGS = ["-O3", "-march=native", "-ffast-math"]  # see the header of reference_loop.c


def c_reference(params, x_windows, y_windows, learning_rate: float, repeats: int):
    """Build and run ``bench/reference_loop.c`` on these windows: ``(compile s, [epoch s], losses)``."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or not C_SOURCE.is_file():
        raise RuntimeError(f"--c-reference needs a C compiler (cc) and {C_SOURCE} (a source checkout)")
    xw, yw = np.asarray(x_windows, np.int32), np.asarray(y_windows, np.int32)
    n, d = params["softmax"]["b"].shape[0], params["rnn_cell"]["b"].shape[0]
    flat = np.concatenate([np.asarray(params[s][k], np.float32).ravel()
                           for s, k in (("rnn_cell", "W"), ("rnn_cell", "b"), ("softmax", "W"), ("softmax", "b"))])
    with tempfile.TemporaryDirectory() as tmp:
        exe, inp, out = Path(tmp) / "reference_loop", Path(tmp) / "in.bin", Path(tmp) / "out.bin"
        start = time.perf_counter()
        subprocess.run([cc, *C_FLAGS, "-o", str(exe), str(C_SOURCE), "-lm"], check=True)
        compile_seconds = time.perf_counter() - start
        with open(inp, "wb") as f:
            f.write(np.array([*xw.shape, n, d], np.int32).tobytes() + np.float32(learning_rate).tobytes())
            f.write(flat.tobytes() + xw.tobytes() + yw.tobytes())
        subprocess.run([str(exe), str(inp), str(out), str(repeats + 1)], check=True)
        raw = out.read_bytes()
    losses = np.frombuffer(raw[: 4 * xw.shape[0]], np.float32)
    seconds = np.frombuffer(raw[4 * xw.shape[0]:], np.float64).tolist()
    return compile_seconds, seconds[1:], losses  # the first repeat is the warm-up


def bench(batch_size=200, num_steps=5, state_size=4, data_size=1_000_000, repeats=5, runs=(8, 32), loop=True,
          c_loop=False):
    """Run the benchmark; returns a list of result dicts (one per method) and prints a table."""
    opt = adagrad(0.1)
    params = init_params(jax.random.key(0), 2, state_size)
    opt_state = opt.init(params)
    x_windows, y_windows = windows(*gen_data(jax.random.key(1), data_size), batch_size, num_steps)
    epoch_size = x_windows.shape[0]
    points = epoch_size * batch_size * num_steps
    rows = []

    def record(name, compile_seconds, seconds, runs_in_call=1):
        median = statistics.median(seconds)
        rows.append(dict(method=name, compile_seconds=compile_seconds, epoch_seconds_median=median,
                         epoch_seconds_min=min(seconds), epoch_seconds_max=max(seconds),
                         per_run_seconds=median / runs_in_call,
                         steps_per_second=runs_in_call * epoch_size / median,
                         points_per_second=runs_in_call * points / median))

    start = time.perf_counter()
    compiled = train_epoch.lower(params, opt_state, x_windows, y_windows, opt).compile()
    record("train_epoch (scan)", time.perf_counter() - start,
           _timed(lambda: compiled(params, opt_state, x_windows, y_windows), repeats))

    if c_loop:
        _, _, _, scan_losses = compiled(params, opt_state, x_windows, y_windows)
        compile_seconds, seconds, c_losses = c_reference(params, x_windows, y_windows, 0.1, repeats)
        record("C reference loop (1 thread)", compile_seconds, seconds)
        rows[-1]["max_loss_diff_vs_scan"] = float(np.max(np.abs(c_losses - np.asarray(scan_losses))))

    if loop:
        state0 = jnp.zeros((batch_size, state_size), jnp.float32)
        start = time.perf_counter()
        train_step.lower(params, opt_state, state0, x_windows[0], y_windows[0], opt).compile()
        compile_seconds = time.perf_counter() - start
        window_list = list(zip(x_windows, y_windows))  # slicing the device array outside the timed loop

        def step_loop():  # the jitted function itself (its C++ dispatch path), warmed up by _timed
            p, o, s = params, opt_state, state0
            for x, y in window_list:
                p, o, s, loss = train_step(p, o, s, x, y, opt)
            return p, loss

        record("train_step loop", compile_seconds, _timed(step_loop, repeats))

    for r in runs:
        p_r, o_r = _stack(params, r), _stack(opt_state, r)
        xw_r, yw_r = _stack(x_windows, r), _stack(y_windows, r)
        start = time.perf_counter()
        compiled_r = train_runs.lower(p_r, o_r, xw_r, yw_r, opt).compile()
        record(f"train_runs vmap x{r}", time.perf_counter() - start,
               _timed(lambda: compiled_r(p_r, o_r, xw_r, yw_r), repeats), runs_in_call=r)
    return rows


def format_table(rows, reference: str = "train_epoch (scan)") -> str:
    ref = next(r for r in rows if r["method"] == reference)["per_run_seconds"]
    lines = ["| method | compile s | epoch s median [min, max] | per run s | steps/s | points/s | vs scan |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['compile_seconds']:.2f} | {r['epoch_seconds_median']:.4f} "
            f"[{r['epoch_seconds_min']:.4f}, {r['epoch_seconds_max']:.4f}] | {r['per_run_seconds']:.4f} | "
            f"{r['steps_per_second']:,.0f} | {r['points_per_second']:,.0f} | {ref / r['per_run_seconds']:.2f}x |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m jax_rnn.bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=200)
    parser.add_argument("--num-steps", type=int, default=5)
    parser.add_argument("--state-size", type=int, default=4)
    parser.add_argument("--data-size", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5, help="timed epochs per method (default 5)")
    parser.add_argument("--runs", default="8,32", help="vmapped run counts, comma list (default 8,32)")
    parser.add_argument("--no-loop", action="store_true", help="skip the Python loop of train_step")
    parser.add_argument("--c-reference", action="store_true",
                        help="also time bench/reference_loop.c, a hand-fused C loop of the same arithmetic")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")
    runs = tuple(int(r) for r in args.runs.split(",") if r)
    device = jax.devices()[0]
    print(f"device: {device.platform} ({device.device_kind}); batch {args.batch_size}, num_steps {args.num_steps}, "
          f"state {args.state_size}, {args.data_size:,} points per epoch; {args.repeats} timed epochs after a warm-up")
    rows = bench(args.batch_size, args.num_steps, args.state_size, args.data_size, args.repeats, runs, not args.no_loop,
                 args.c_reference)
    print(format_table(rows))
    for r in rows:
        if "max_loss_diff_vs_scan" in r:
            scan = next(q for q in rows if q["method"].startswith("train_epoch"))
            print(f"C loop vs train_epoch: largest per-step loss difference {r['max_loss_diff_vs_scan']:.2e}; "
                  f"train_epoch takes {scan['epoch_seconds_median'] / r['epoch_seconds_median']:.2f}x the C loop's time")


if __name__ == "__main__":
    main()
