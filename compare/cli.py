"""``rnn-compare run|sweep|bench|cache``; options and input files are checked before any work."""

import argparse
import dataclasses
import itertools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from jax_rnn import cache as compile_cache
import jax_rnn
from jax_rnn import tune
from jax_rnn.fit import FitConfig
from jax_rnn.model import glorot_params

from . import bench, distributed, io, report, run, sweep
from .io import UsageError, at_least

IMPLS = ("jax", "tf-raw", "tf-static", "tf-dynamic", "tf2")
DEFAULT = FitConfig()
FIELDS = tuple(f.name for f in dataclasses.fields(FitConfig))
# --from: option -> config key
FROM_OPTIONS = {"impl": "impls", **{name: name for name in (*FIELDS, "init_params", "data", "deterministic", "device")
                                    if name not in ("num_classes", "log_every")}}
OUTPUT_POLICY = "Writes OUT/NAME.json, .md and .png (NAME: <command>-<date>-<time>, or --name); --overwrite replaces."


def option(name):
    return "--" + name.replace("_", "-")


def parse_impls(text):
    names = [part.strip() for part in text.split(",")]
    for name in names:
        if name not in IMPLS:
            what = f"unknown implementation {name!r}" if name else f"an empty item in {text!r} (a stray comma?)"
            raise UsageError(f"--impl: {what} (choose from {', '.join(IMPLS)})")
    if len(set(names)) != len(names):
        raise UsageError(f"--impl: an implementation is named twice in {text!r}")
    return tuple(names)


def parse_ints(text, name, words=()):
    values = []
    for part in (part.strip() for part in text.split(",")):
        if part not in words:
            try:
                part = int(part)
            except ValueError:
                raise UsageError(f"{name}: {part!r} is not an integer (expected e.g. 1,5,10)") from None
            at_least(part, name)
        values.append(part)
    return tuple(values)


def fit_config(**fields):
    try:
        return FitConfig(**fields)
    except ValueError as err:
        names, _, rest = str(err).partition(" ")
        parts = names.rstrip(":").split("/")
        if not set(parts) <= set(FIELDS):
            raise UsageError(str(err)) from None
        raise UsageError(f"{'/'.join(map(option, parts))}{':' if names.endswith(':') else ''} {rest}") from None


def apply_from(args):
    original = io.load_result(args.from_json)
    c = {"deterministic": False, "remat": False, "backprop_steps": original["config"].get("num_steps"),
         "device": original.get("environment", {}).get("device", {}).get("requested", "cpu"), **original["config"]}
    missing = [k for k in FROM_OPTIONS.values() if k not in c]
    if missing:
        raise UsageError(f"--from: {args.from_json}: config lacks {', '.join(missing)}")
    given = [name for name in FROM_OPTIONS if getattr(args, name) != args.option_defaults.get(name)]
    if given:
        raise UsageError(f"--from fixes the config; do not also give {', '.join(map(option, given))}")
    for name, key in FROM_OPTIONS.items():
        setattr(args, name, ",".join(c[key]) if key == "impls" else c[key])
    return original


def build_parser():
    parser = argparse.ArgumentParser(prog="rnn-compare", epilog=OUTPUT_POLICY, description=(
        "Do jax_rnn and tf_rnn learn r2rt's vanilla RNN alike, and how fast is each?"))
    parser.add_argument("--debug", action="store_true", help="show a failure's traceback")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,sweep,bench,cache}")

    def command(name, summary, impl, epochs=None, impl_help=None, size_help=None):
        p = sub.add_parser(name, help=summary, description=summary, epilog=OUTPUT_POLICY, allow_abbrev=False)
        p.set_defaults(error=p.error)
        add = p.add_argument
        add("--impl", default=impl, help=f"comma list of {', '.join(IMPLS)} (default: {impl_help or impl})")
        if name != "bench":
            add("--epochs", type=int, default=epochs, help=f"(default: {epochs or '1, or the rows of --data'})")
        add("--data-size", type=int, default=None if size_help else DEFAULT.data_size,
            help=f"points per epoch (default: {size_help or f'{DEFAULT.data_size:,}'})")
        fields = {"batch_size": "sequences per batch", "learning_rate": "Adagrad's", "seed": "of the data and weights"}
        if name != "sweep":
            fields.update(num_steps="steps per window", state_size="RNN state size")
        for field, text in fields.items():
            value = getattr(DEFAULT, field)
            add(option(field), type=type(value), default=value, help=f"{text} (default: {value})")
        if name != "sweep":
            add("--backprop-steps", type=int, metavar="K2", help="train TBPTT(num_steps, K2) (default: num_steps)")
            add("--remat", action="store_true", help="JAX recomputes activations in the backward pass: less memory")
        add("--device", choices=io.DEVICES, default="cpu", help="auto: the GPU where seen (default: cpu)")
        add("--out", default="results", help="output directory (default: results)")
        add("--name", help="the outputs' file name stem")
        add("--json", help="the JSON's path instead")
        add("--overwrite", action="store_true")
        add("--quiet", action="store_true", help="only the table")
        add("--no-compile-cache", action="store_true", help="don't use JAX's compilation cache")
        add("--tune", action="store_true", help=f"measure each cell's plan here ({tune.ENV}=1)")
        if name != "bench":
            add("--checkpoint", metavar="DIR", help="save checkpoints in DIR")
            more = " (--epochs may be larger)" if name == "run" else ""
            add("--resume", metavar="DIR", help=f"continue from DIR's checkpoints{more}")
        return p, add

    p, add = command("run", "Train implementations from the same weights on the same data; compare losses (exit "
                     "status 1 if they differ by over 1e-4).", "jax,tf-dynamic",
                     size_help=f"{DEFAULT.data_size:,}, or the columns of --data")
    add("--init-params", metavar="FILE.npz", help="initial rnn_cell/W, rnn_cell/b, softmax/W, softmax/b")
    add("--data", metavar="FILE.npz", help="training data: x, y int[epochs, data_size]")
    add("--save-params", metavar="FILE.npz", help="save the final parameters ({impl}: the implementation)")
    add("--from", dest="from_json", metavar="FILE.json", help="rerun a run's result: are the losses identical?")
    add("--deterministic", action="store_true", help="TensorFlow op determinism")
    p.set_defaults(option_defaults={a.dest: a.default for a in p._actions})

    _, add = command("sweep", "The tutorial's grid, num_steps x state_size (x backprop steps), over seeds: final "
                     "loss (mean, spread) and level.", "jax", 5)
    for name, value in ("num_steps", "1,5,10"), ("state_size", "4,16"):
        add(option(name), default=value, help=f"comma list (default: {value})")
    add("--backprop-steps", default="num_steps", metavar="K2S", help="comma list: each num_steps also trains "
        "TBPTT(num_steps, K2) for each K2 >= it (default: num_steps)")
    add("--seeds", type=int, default=3, help="seeds per cell: --seed, --seed+1, ... (default: 3)")
    add("--workers", type=int, help="JAX cells trained at once per process (default: its CPU cores, on a GPU 1)")
    add("--processes", type=int, metavar="N", help="start N local processes, each on a share of the cores")
    add("--coordinator", metavar="HOST:PORT", help="jax.distributed: process 0's address")
    add("--num-processes", type=int, metavar="N", help="jax.distributed: processes in the job")
    add("--process-id", type=int, metavar="I", help="jax.distributed: this process, 0 to N-1 (0 writes the results)")
    add("--cluster", action="store_true", help="jax.distributed: what JAX detects (SLURM, Open MPI, ...)")
    add("--timeout", type=int, default=60, metavar="S", help="seconds for all processes to join (default: 60)")

    _, add = command("bench", f"Speed on the same data: build, first epoch, --repeats epochs, memory, speed-up vs "
                     f"{bench.BASELINE}.", None, impl_help=f"all five, {','.join(IMPLS)}")
    add("--repeats", type=int, default=3, help="timed epochs after a warm-up one (default: 3)")
    add("--grid", action="store_true", help="JAX, the C loop and TF on --states x --steps, then --large-states")
    add("--truncation", metavar="K2S", help="JAX's TBPTT(k1, K2) against num_steps k1 on --states x --steps "
        "(default: 4,16 x 1,3,5)")
    add("--many-runs", metavar="RS", help="R runs at once (e.g. 2,4,8) against one, per run, on --states x --steps")
    add("--random-cells", type=int, metavar="N", help="N cells drawn with --seed: rule's and tuned plan vs C")
    add("--processes", metavar="NS", help="a sweep as N processes (e.g. 1,2,4) vs the C limit")
    for name, values in bench.GRID.items():
        add(option(name), help=f"comma list (default: {values}" + ("; none: skip)" if "large" in name else ")"))

    p = sub.add_parser("cache", help="Where JAX's compilation cache is, its size; --clear empties it.", description=(
        f"JAX's compilation cache: ${compile_cache.DIR_ENV}, else $XDG_CACHE_HOME/rnn-scan/jax; "
        f"{compile_cache.SWITCH_ENV}=0 or --no-compile-cache: off."))
    p.add_argument("--clear", action="store_true", help="delete the cached executables")
    return parser


def _config(args, **fields):
    c = fit_config(**{f: getattr(args, f) for f in FIELDS if getattr(args, f, None) is not None} | fields)
    dropped, row = c.data_size - c.epoch_size * c.batch_size * c.num_steps, c.data_size // c.batch_size
    if dropped:
        print(f"note: {c.data_size:,} points per epoch = {c.batch_size} rows of {row:,} (+{c.data_size % c.batch_size} "
              f"dropped), {c.epoch_size} windows of {c.num_steps} per row: {dropped:,} points not trained on",
              file=sys.stderr)
    return c


def _paths(args, kind):
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return io.output_paths(kind.replace("_", "-"), args.out, args.name, args.json, args.overwrite, stamp)


def _start(args, kind, impls):
    return _paths(args, kind), io.resolve(args.device, set(impls) != {"jax"})


def _write(result, paths, kind):
    markdown, plot = getattr(report, f"{kind}_markdown")(result), getattr(report, f"{kind}_plot", None)
    if not plot:
        del paths["png"]
    else:
        io.write_bytes(paths["png"], plot(result))
    io.write_json(paths["json"], result)
    io.write_text(paths["md"], markdown)
    print(f"{markdown}\nwrote {', '.join(map(str, paths.values()))}")


def _run(args):
    original = apply_from(args) if args.from_json else None
    impls = parse_impls(args.impl)
    data = io.load_data(args.data) if args.data else None
    epochs, size = args.epochs, args.data_size
    if data:
        rows, cols = data[0].shape
        if size is not None and size != cols:
            raise UsageError(f"--data-size {size} does not match --data {args.data} ({cols} points per row)")
        if epochs is not None and epochs > rows:
            raise UsageError(f"--epochs {epochs} is more than the {rows} epoch(s) in --data {args.data}")
        epochs, size = rows if epochs is None else epochs, cols
    c = _config(args, epochs=1 if epochs is None else epochs, data_size=DEFAULT.data_size if size is None else size)
    paths, devices = _start(args, "run", impls)
    io.check_memory([c], impls, devices)
    params = (io.load_params(args.init_params, c.num_classes, c.state_size) if args.init_params
              else glorot_params(c.num_classes, c.state_size, c.seed))
    io.check_dirs(args.checkpoint, args.resume)
    save = args.save_params and {impl: io.check_writable(io.params_path(args.save_params, impl), args.overwrite,
                                                         "--save-params") for impl in impls}
    if save and len(set(save.values())) != len(save):
        raise UsageError("--save-params: the implementations' files would collide; put {impl} in the name")
    record = {**io.record(c, impls), "init_params": args.init_params, "data": args.data,
              "deterministic": args.deterministic}
    result = run.run(c, impls, params, devices, data, save, args.quiet, args.checkpoint or args.resume, args.resume,
                     record, args.deterministic)
    result["config"]["device"] = args.device
    if original:
        result["rerun_of"] = run.rerun_of(args.from_json, original, result)
    _write(result, paths, "run")
    if original:
        print(run.rerun_summary(result["rerun_of"]))
    return 1 if result["agreement"]["all_agree"] is False else 0


def _sweep(args):
    impls = parse_impls(args.impl)
    num_steps, state_sizes = (parse_ints(getattr(args, k), option(k)) for k in ("num_steps", "state_size"))
    at_least(args.seeds, "--seeds")
    workers = args.workers if args.workers is None else at_least(args.workers, "--workers")
    at_least(args.timeout, "--timeout")
    io.check_dirs(args.checkpoint, args.resume)
    backprop = parse_ints(args.backprop_steps, "--backprop-steps", words=("num_steps",))
    truncations = list(dict.fromkeys((n, n if k == "num_steps" else k) for n in num_steps for k in backprop
                                     if k == "num_steps" or k >= n))
    if not truncations:
        raise UsageError(f"--backprop-steps: every value is below every --num-steps ({args.num_steps}); "
                         "each cell needs K2 >= its num_steps")
    configs = [_config(args, num_steps=n, state_size=d, backprop_steps=None if k == n else k)
               for n, k in truncations for d in state_sizes]
    joined = [n for n in ("coordinator", "num_processes", "process_id", "cluster") if getattr(args, n) not in (None, False)]
    if args.processes is not None:
        if joined:
            raise UsageError(f"--processes starts its own jax.distributed job; do not also give {option(joined[0])}")
        argv = [a for i, a in enumerate(args.argv) if not a.startswith("--processes") and
                (i == 0 or args.argv[i - 1] != "--processes")]
        return distributed.launch(argv, at_least(args.processes, "--processes"), args.timeout)
    paths = _paths(args, "sweep") if not args.process_id and not args.cluster else None
    group = distributed.connect(args.cluster, args.coordinator, args.num_processes, args.process_id, args.timeout)
    if group.index == 0 and paths is None:
        paths = _paths(args, "sweep")
    devices = io.resolve(args.device, set(impls) != {"jax"})
    workers = workers or (len(os.sched_getaffinity(0)) if devices.jax == "cpu" else 1)
    io.check_memory(configs, impls, devices, args.seeds, workers, sweep=True)
    result = sweep.sweep(configs, impls, args.seeds, devices, args.quiet, workers, args.checkpoint or args.resume,
                         args.resume, group)
    if result:
        _write(result, paths, "sweep")
    return 0


def _bench(args):
    modes = [m for m in ("grid", "truncation", "many_runs", "random_cells", "processes") if getattr(args, m)]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(map(option, modes))}: choose one")
    mode = modes[0] if modes else None
    if mode and args.backprop_steps is not None:
        raise UsageError(f"--backprop-steps: {option(mode)} chooses the truncation itself")
    impls = parse_impls(args.impl or ",".join({"grid": bench.GRID_IMPLS, None: IMPLS}.get(mode, ("jax",))))
    if mode and "jax" not in impls:
        raise UsageError(f"--impl: {option(mode)} times JAX{' against the C loop and TF' * (mode == 'grid')}; "
                         "include jax")
    repeats = at_least(args.repeats, "--repeats")
    c = _config(args, epochs=repeats + 1, data_size=args.data_size or DEFAULT.data_size)
    grid = bench.GRID | (bench.TRUNCATION_GRID if mode == "truncation" else {})
    states, steps = (parse_ints(getattr(args, k) or grid[k], option(k)) for k in ("states", "steps"))
    large = args.large_states or grid["large_states"]
    large = () if large == "none" else parse_ints(large, "--large-states")
    k2s, row = parse_ints(args.truncation, "--truncation") if args.truncation else (), c.data_size // c.batch_size
    if max(k2s, default=0) > row:
        raise UsageError(f"--truncation: at most the steps in a row of data ({row}), got {max(k2s)}")
    counts, k2 = parse_ints(args.many_runs, "--many-runs") if args.many_runs else (), max(k2s, default=None)
    cells = [fit_config(**dataclasses.asdict(c) | {"state_size": d, "num_steps": n, "backprop_steps": k2 and max(k2, n)})
             for d, n in itertools.product(states, steps)] if mode in ("grid", "truncation", "many_runs") else [c]
    paths, devices = _start(args, mode or "bench", impls)
    io.check_memory(cells, impls, devices, max(counts, default=1), epochs=repeats + 1 if mode in (None, "grid") else 1,
                    names={"state_size": "--states", "num_steps": "--steps", "backprop_steps": "--truncation"} if mode
                    else None)
    io.check_memory([dataclasses.replace(c, state_size=d, num_steps=10, data_size=100_000) for d in large]
                    if mode == "grid" else [], impls, devices, epochs=repeats + 1, names={"state_size": "--large-states"})
    if mode == "grid":
        result = bench.grid(c, impls, devices, repeats, states, steps, large, args.quiet)
    elif mode:
        with tempfile.TemporaryDirectory() as out:
            rows = {"truncation": lambda: bench.truncation(c, states, steps, k2s, repeats, args.quiet, devices.jax),
                    "many_runs": lambda: bench.many_runs(c, states, steps, counts, repeats, args.quiet, devices.jax),
                    "random_cells": lambda: bench.random_cells(c, at_least(args.random_cells, "--random-cells"),
                                                               args.seed, repeats, args.quiet, devices.jax),
                    "processes": lambda: bench.processes(parse_ints(args.processes, "--processes"), args.quiet,
                                                         Path(out))}[mode]()
        result = bench.page(f"bench {option(mode)}", c, devices, repeats, rows=rows)
    else:
        result = bench.bench(c, impls, devices, repeats, args.quiet)
    _write(result, paths, mode or "bench")
    return 0


def _cache(args):
    directory, env = compile_cache.default_dir(), compile_cache.SWITCH_ENV
    entries, size = (compile_cache.clear_compile_cache if args.clear else compile_cache.cache_size)(directory)
    state = f"off: {env}={os.environ[env]}" if compile_cache.disabled_by_env() else "on"
    print(f"JAX compilation cache: {directory} ({state}): {'cleared ' if args.clear else ''}{entries} entries, "
          f"{size / 1e6:.1f} MB")
    stored, path = tune.read_wisdom(), tune.wisdom_path()
    print(f"Tuned plans: {path}: {'cleared ' if args.clear else ''}{tune.clear_wisdom() if args.clear else len(stored)} "
          "entries" + "".join(f"\n  {e.get('plan') and jax_rnn.Plan.from_record(e['plan'])}" for e in
                               ([] if args.clear else stored.values())))
    return 0


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # for a sweep's --processes
    if args.command != "cache" and not args.no_compile_cache:
        try:
            compile_cache.enable_compile_cache()  # before anything compiles
        except OSError as err:
            print(f"note: JAX compilation cache off: {err}", file=sys.stderr)
    tuning, before = getattr(args, "tune", False) or tune.enabled(), os.environ.get(tune.ENV)
    if tuning:  # every plan from here on, in child processes too
        os.environ[tune.ENV] = "1"
        logging.basicConfig(format="%(message)s")
        tune.log.setLevel(logging.INFO)
    try:
        return {"run": _run, "sweep": _sweep, "bench": _bench, "cache": _cache}[args.command](args)
    except UsageError as err:
        args.error(str(err))  # exits, status 2
        return 2
    except Exception as err:  # an allocation that failed all the same
        names = {k.__name__ for k in type(err).__mro__}
        if args.debug or not (isinstance(err, MemoryError) or "ResourceExhaustedError" in names or (
                names & {"JaxRuntimeError", "XlaRuntimeError"} and "RESOURCE_EXHAUSTED" in str(err))):
            raise
        print(f"rnn-compare: out of memory ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
              "nothing written but finished checkpoints; try smaller sizes, --debug shows the traceback", file=sys.stderr)
        return 3
    finally:
        if before is None:
            os.environ.pop(tune.ENV, None)


if __name__ == "__main__":
    sys.exit(main())
