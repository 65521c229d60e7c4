"""The command line: ``rnn-compare run|sweep|bench|cache`` (also ``python -m compare``).

Every option and input file is checked before any training starts; a bad one is reported argparse-style
with exit status 2. Outputs follow `OUTPUT_POLICY`. JAX's persistent compilation cache is on unless
``--no-compile-cache`` or ``RNN_SCAN_COMPILE_CACHE=0``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Optional, Sequence

from jax_rnn import cache as compile_cache
from jax_rnn.fit import FitConfig
from jax_rnn.model import glorot_params

from . import bench, checkpoint, environment, io, plots, report, rerun, run, scaling, sweep
from .bench import GRID_IMPLS, GRID_STATES, GRID_STEPS, LARGE_STATES
from .config import BASELINE, DEFAULT_RUN_IMPLS, FIELDS, IMPLS, UsageError, at_least, fit_config, is_tf, \
    parse_impls, parse_ints, points_per_epoch
from .environment import DEVICES

DEFAULT = FitConfig()  # the one set of defaults: the tutorial's

OUTPUT_POLICY = (
    "Outputs go to OUT/NAME.json, OUT/NAME.md (the table) and OUT/NAME.png (the plot); NAME defaults to "
    "'<command>-<date>-<time>', a new name each time, so nothing is ever replaced. An explicit --name or "
    "--json (or --save-params) that exists is refused unless --overwrite is given. Every file is written "
    "to a temporary file first and renamed into place, so none is ever half-written.")
# What each command writes besides its JSON: the Markdown table and the plot (matplotlib loads only to draw).
OUTPUTS = {"run": (report.run_markdown, plots.run_plot), "sweep": (report.sweep_markdown, plots.sweep_plot),
           "bench": (report.bench_markdown, plots.bench_plot), "scaling": (report.scaling_markdown, plots.scaling_plot),
           "grid": (report.grid_markdown, plots.grid_plot), "truncation": (report.truncation_markdown, None),
           "plan-options": (report.plan_options_markdown, None)}


def _command(sub, name: str, summary: str, description: str, epilog: Optional[str] = OUTPUT_POLICY):
    parser = sub.add_parser(name, help=summary, description=description, epilog=epilog)
    parser.set_defaults(error=parser.error)  # reports a UsageError under that command's usage
    return parser


def _common(p: argparse.ArgumentParser, impl_default: Optional[str], epochs_default: Optional[int],
            data_size_default: Optional[int], with_epochs: bool = True, impl_help: Optional[str] = None,
            data_size_help: Optional[str] = None) -> None:
    """The options every command shares (bench, ``with_epochs=False``, has ``--repeats`` instead of ``--epochs``);
    ``impl_help`` / ``data_size_help``: the default the help names, where the parser's is None (worked out later)."""
    p.add_argument("--impl", default=impl_default,
                   help=f"comma-separated implementations, from: {', '.join(IMPLS)} "
                        f"(default: {impl_help or impl_default})")
    p.add_argument("--batch-size", type=int, default=DEFAULT.batch_size,
                   help=f"sequences per batch (default: {DEFAULT.batch_size})")
    p.add_argument("--learning-rate", type=float, default=DEFAULT.learning_rate,
                   help=f"Adagrad learning rate (default: {DEFAULT.learning_rate})")
    if with_epochs:
        p.add_argument("--epochs", type=int, default=epochs_default,
                       help=f"epochs, fresh data each (default: {epochs_default or '1, or the rows of --data'})")
    p.add_argument("--data-size", type=int, default=data_size_default,
                   help=f"points per epoch (default: {data_size_help or data_size_default or f'{DEFAULT.data_size}, or the columns of --data'})")
    p.add_argument("--seed", type=int, default=DEFAULT.seed,
                   help=f"seed of the data stream and initial weights (default: {DEFAULT.seed})")
    p.add_argument("--device", choices=DEVICES, default="cpu",
                   help="cpu; gpu (an error if JAX or TensorFlow sees none); auto: the GPU wherever a "
                        "framework sees one (default: cpu)")
    p.add_argument("--out", default="results", help="output directory (default: results/)")
    p.add_argument("--name", help="file name stem of the outputs (default: '<command>-<date>-<time>')")
    p.add_argument("--json", help="write the JSON here instead of OUT/NAME.json")
    p.add_argument("--overwrite", action="store_true", help="allow replacing existing output files")
    p.add_argument("--quiet", action="store_true", help="no progress bars (the table is still printed)")
    p.add_argument("--no-compile-cache", action="store_true",
                   help="compile JAX afresh: neither read nor write the persistent compilation cache (see "
                        f"'rnn-compare cache'; {compile_cache.SWITCH_ENV}=0 turns it off for good)")


def _cell(p: argparse.ArgumentParser) -> None:
    """The one cell that ``run`` and ``bench`` train (``sweep`` takes comma lists)."""
    p.add_argument("--num-steps", type=int, default=DEFAULT.num_steps,
                   help=f"truncated-BPTT window length (default: {DEFAULT.num_steps})")
    p.add_argument("--state-size", type=int, default=DEFAULT.state_size, help=f"RNN state size (default: {DEFAULT.state_size})")
    p.add_argument("--backprop-steps", type=int, default=None, metavar="K2",
                   help="K2 of truncated BPTT TBPTT(num_steps, K2): one update per num_steps new steps, each "
                        "backpropagating through the last K2 >= num_steps steps (default: num_steps, the "
                        "tutorial's 'TensorFlow style')")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnn-compare",
        description="Do JAX and TensorFlow learn the same thing, and how fast is each? Trains r2rt's vanilla "
                    "RNN (truncated BPTT on the binary toy task) with jax_rnn and tf_rnn and compares them.",
        epilog=OUTPUT_POLICY)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,sweep,bench,cache}")

    run = _command(sub, "run", "train implementations on the same data and weights; compare losses",
                   "Train each implementation in turn, from the same initial parameters on the same data; report "
                   "losses, levels, timings and whether they agree (same params and data: every step's loss "
                   "within 1e-4; exit status 1 if not).")
    _common(run, ",".join(DEFAULT_RUN_IMPLS), None, None)
    _cell(run)
    run.add_argument("--init-params", metavar="FILE.npz",
                     help="initial parameters, keys rnn_cell/W, rnn_cell/b, softmax/W, softmax/b (default: "
                          "Glorot-uniform from --seed, drawn with numpy)")
    run.add_argument("--data", metavar="FILE.npz",
                     help="training data, keys x, y: int arrays [epochs, data_size], one row per epoch "
                          "(default: fresh jax_rnn.data.gen_data epochs from --seed)")
    run.add_argument("--save-params", metavar="FILE.npz",
                     help="save each implementation's final parameters; '{impl}' in the name is replaced by "
                          "the implementation, otherwise '-<impl>' is added before .npz")
    run.add_argument("--checkpoint", metavar="DIR",
                     help="save DIR/<impl>.npz (params, Adagrad state, epoch, losses so far) after every epoch, "
                          "atomically")
    run.add_argument("--resume", metavar="DIR",
                     help="continue from the checkpoints in DIR (same config; --epochs may be larger); keeps "
                          "checkpointing there. Gives the same losses, bit for bit, as an uninterrupted run")
    run.add_argument("--from", dest="from_json", metavar="FILE.json",
                     help="rerun a previous 'run' result: its implementations, config, seed and input files "
                          "(config options may not be given too); reports whether the step losses are identical")
    run.add_argument("--deterministic", action="store_true",
                     help="TensorFlow op determinism (tf.config.experimental.enable_op_determinism); JAX on "
                          "CPU is deterministic already")
    run.set_defaults(option_defaults={a.dest: a.default for a in run._actions})

    sweep = _command(sub, "sweep", "the tutorial's grid: num_steps x state_size (x backprop steps), several seeds",
                     "Train every (num_steps, state_size) cell for every seed and report the final loss (mean and "
                     "spread over seeds) and the level reached. With jax, all seeds of a cell train in one vmapped "
                     "call. Defaults take about a minute with --impl jax on 2 CPU cores; TF implementations train "
                     "seed after seed and are much slower.")
    _common(sweep, "jax", 5, DEFAULT.data_size)
    sweep.add_argument("--num-steps", default="1,5,10", help="comma list (default: 1,5,10)")
    sweep.add_argument("--state-size", default="4,16", help="comma list (default: 4,16)")
    sweep.add_argument("--backprop-steps", default="num_steps", metavar="K2S",
                       help="comma list, a third axis: each cell trains TBPTT(num_steps, K2) for every K2 >= its "
                            "num_steps ('num_steps': the tutorial's truncation; e.g. num_steps,9,15) "
                            "(default: num_steps)")
    sweep.add_argument("--seeds", type=int, default=3, help="seeds per cell: --seed, --seed+1, ... (default: 3)")
    sweep.add_argument("--checkpoint", metavar="DIR",
                       help="save every finished cell to DIR/sweep-<num_steps>-<state_size>-<impl>.npz, atomically")
    sweep.add_argument("--resume", metavar="DIR",
                       help="load the cells finished in DIR and train the rest (same sweep); keeps checkpointing "
                            "there. Gives the same results as an uninterrupted sweep")
    sweep.add_argument("--workers", type=int, default=None,
                       help="JAX cells trained at once, one thread each (default: the number of CPU cores with "
                            "--device cpu, else 1); the results do not depend on it")

    bench = _command(sub, "bench", "speed only: build, first epoch, steady state, memory, speed-up",
                     f"Time every implementation on the same data: build/compile seconds, the first epoch, then "
                     f"--repeats epochs (median, min-max), steps/s, points/s, peak resident memory, and the "
                     f"speed-up against {BASELINE} measured in the same run.")
    scaling_impls = ",".join(scaling.DEFAULT_IMPLS)
    _common(bench, None, None, None, with_epochs=False,
            impl_help=f"all five, {','.join(IMPLS)}; with --scaling {scaling_impls}",
            data_size_help=f"1,000,000; with --scaling {scaling.DEFAULT_DATA_SIZE:,}")
    _cell(bench)
    bench.add_argument("--repeats", type=int, default=None,
                       help="timed epochs after the warm-up one (default: 3; 2 with --scaling)")
    bench.add_argument("--scaling", action="store_true",
                       help="the scaling study (compare/scaling.py): seconds per epoch as state_size (4..1024), "
                            "num_steps (1..100) and batch_size (20..20,000) grow one at a time, on the same "
                            f"{scaling.DEFAULT_DATA_SIZE:,} points, with fitted log-log slopes; then JAX memory with "
                            "and without remat for num_steps 1,000 and 10,000 at state 256. Defaults to --impl "
                            f"{scaling_impls}; about 3 minutes on 2 cores. With --device auto on a GPU machine: CPU "
                            "and GPU side by side, and where the GPU overtakes")
    bench.add_argument("--no-memory", action="store_true", help="with --scaling: skip the memory study")
    bench.add_argument("--grid", action="store_true",
                       help="every cell of --states x --steps (1,000,000 points each) with the C reference loop, "
                            "then --large-states at num_steps 10 on 100,000 points: JAX, C and the TF versions in one "
                            f"run, JAX / C and JAX against the fastest TF. Defaults to --impl {','.join(GRID_IMPLS)}; "
                            "about 3 minutes on 2 cores")
    bench.add_argument("--truncation", metavar="K2S",
                       help="JAX only: TBPTT(k1, K2) against the TF-style epoch of num_steps k1, for every K2 of the "
                            "comma list, k1 from --steps (default 1,3,5), on --states (default 4,16)")
    bench.add_argument("--plan-options", action="store_true",
                       help="JAX only: on every --states x --steps cell, each choice of jax_rnn.plan timed against "
                            "the plan without it (with --runs R: R runs at once)")
    bench.add_argument("--runs", type=int, default=1, help="with --plan-options: runs trained at once (default 1)")
    for option, values, what in (("--states", GRID_STATES, "state sizes"), ("--steps", GRID_STEPS, "num_steps values"),
                                 ("--large-states", LARGE_STATES, "large state sizes, without the C loop")):
        default = ",".join(map(str, values))
        bench.add_argument(option, default=None, help=f"with --grid/--plan-options: {what} (default: {default}"
                                                      + ("; none: skip)" if option == "--large-states" else ")"))

    cache = _command(sub, "cache", "where JAX's compilation cache is, and its size; --clear empties it",
                     f"JAX's persistent compilation cache: every command (unless --no-compile-cache) saves each "
                     f"compiled executable there, so the next run with the same shapes loads it instead of "
                     f"compiling. Directory: ${compile_cache.DIR_ENV}, else $XDG_CACHE_HOME/rnn-scan/jax "
                     f"(~/.cache/rnn-scan/jax); {compile_cache.SWITCH_ENV}=0 turns it off.", epilog=None)
    cache.add_argument("--clear", action="store_true",
                       help="delete the cached executables (then the directory, once empty)")
    return parser


def _config(args, **fields) -> FitConfig:
    """The `FitConfig` of the options (every field the command has), ``fields`` overriding them."""
    config = fit_config(**{**{f: getattr(args, f) for f in FIELDS if getattr(args, f, None) is not None}, **fields})
    dropped = config.data_size - points_per_epoch(config)
    if dropped:  # the tutorial drops the remainder too; say so rather than fail
        row = config.data_size // config.batch_size
        print(f"note: {config.data_size:,} points per epoch = {config.batch_size} rows of {row:,} "
              f"(+{config.data_size - config.batch_size * row} dropped), {config.epoch_size} windows of "
              f"{config.num_steps} per row: {dropped:,} points per epoch are not trained on", file=sys.stderr)
    return config


def _paths(args, kind: str) -> dict:
    return io.output_paths(kind, args.out, args.name, args.json, args.overwrite, time.strftime("%Y%m%d-%H%M%S"))


def _devices(args, impls) -> environment.Devices:
    return environment.resolve(args.device, any(map(is_tf, impls)))


def _write(result: dict, paths: dict, kind: str) -> None:
    """Write the JSON, the table and the plot of ``kind`` (`OUTPUTS`); print the table."""
    markdown, plot = OUTPUTS[kind]
    markdown = markdown(result)
    if plot is None:
        paths = {k: v for k, v in paths.items() if k != "png"}
    else:
        io.write_bytes(paths["png"], plot(result))
    io.write_json(paths["json"], result)
    io.write_text(paths["md"], markdown)
    print(markdown)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def _run(args) -> int:
    original = rerun.apply(args) if args.from_json else None
    impls = parse_impls(args.impl)
    data = io.load_data(args.data) if args.data else None
    epochs, data_size = args.epochs, args.data_size
    if data is not None:
        rows, cols = data[0].shape
        if data_size is not None and data_size != cols:
            raise UsageError(f"--data-size {data_size} does not match --data {args.data} ({cols} points per row)")
        if epochs is not None and epochs > rows:
            raise UsageError(f"--epochs {epochs} is more than the {rows} epoch(s) in --data {args.data}")
        epochs, data_size = rows if epochs is None else epochs, cols
    config = _config(args, epochs=epochs or 1, data_size=data_size or DEFAULT.data_size)
    if args.init_params:
        params = io.load_params(args.init_params, config.num_classes, config.state_size)
    else:
        params = glorot_params(config.num_classes, config.state_size, config.seed)
    checkpoint.check_dirs(args.checkpoint, args.resume)
    paths = _paths(args, "run")
    save = None
    if args.save_params:
        save = {impl: io.check_writable(io.params_path(args.save_params, impl), args.overwrite, "--save-params")
                for impl in impls}
        if len(set(save.values())) != len(save):
            raise UsageError("--save-params: the implementations' files would collide; put {impl} in the name")
    devices = _devices(args, impls)
    record = checkpoint.config_record(config, impls, args.init_params, args.data, args.deterministic)
    result = run.run(config, impls, params, devices, data=data, save_params=save, quiet=args.quiet,
                     checkpoint_dir=args.checkpoint or args.resume, resume_dir=args.resume, record=record,
                     deterministic=args.deterministic)
    result["config"].update(init_params=args.init_params, data=args.data, deterministic=args.deterministic,
                            device=args.device)
    if original is not None:
        result["rerun_of"] = rerun.compare(args.from_json, original, result)
    _write(result, paths, "run")
    if original is not None:
        print(rerun.summary(result["rerun_of"]))
    return 1 if result["agreement"]["all_agree"] is False else 0


def _sweep(args) -> int:
    impls = parse_impls(args.impl)
    num_steps = parse_ints(args.num_steps, "--num-steps")
    state_sizes = parse_ints(args.state_size, "--state-size")
    at_least(args.seeds, "--seeds")
    if args.workers is not None:
        at_least(args.workers, "--workers")
    checkpoint.check_dirs(args.checkpoint, args.resume)
    backprop = parse_ints(args.backprop_steps, "--backprop-steps", words=("num_steps",))
    # Every (num_steps, K2) with K2 >= num_steps, once each ("num_steps" is K2 = num_steps).
    truncations = list(dict.fromkeys((n, n if k == "num_steps" else k) for n in num_steps for k in backprop
                                     if k == "num_steps" or k >= n))
    if not truncations:
        raise UsageError(f"--backprop-steps: every value is below every --num-steps ({args.num_steps}); "
                         f"each cell needs K2 >= its num_steps")
    configs = [_config(args, num_steps=n, state_size=d, backprop_steps=None if k == n else k)
               for n, k in truncations for d in state_sizes]
    paths = _paths(args, "sweep")
    devices = _devices(args, impls)
    workers = args.workers or ((os.cpu_count() or 1) if devices.jax == "cpu" else 1)
    result = sweep.sweep(configs, impls, args.seeds, devices, quiet=args.quiet, workers=workers,
                         checkpoint_dir=args.checkpoint or args.resume, resume_dir=args.resume)
    _write(result, paths, "sweep")
    return 0


def _bench(args) -> int:
    modes = [m for m in ("grid", "scaling", "truncation", "plan_options") if getattr(args, m)]
    if len(modes) > 1:
        raise UsageError(f"{' and '.join(map(_option, modes))}: choose one")
    mode = modes[0] if modes else None
    if mode and args.backprop_steps is not None:
        raise UsageError(f"--backprop-steps: {_option(mode)} chooses the truncation itself; give it without {_option(mode)}")
    default_impls = {"scaling": scaling.DEFAULT_IMPLS, "grid": GRID_IMPLS, None: IMPLS}.get(mode, ("jax",))
    impls = parse_impls(args.impl or ",".join(default_impls))
    if mode in ("grid", "truncation", "plan_options") and "jax" not in impls:
        raise UsageError(f"--impl: {_option(mode)} times JAX; include jax")
    repeats = at_least(args.repeats if args.repeats is not None else (2 if mode == "scaling" else 3), "--repeats")
    data_size = args.data_size or (scaling.DEFAULT_DATA_SIZE if mode == "scaling" else DEFAULT.data_size)
    config = _config(args, epochs=repeats + 1, data_size=data_size)
    steps_default = "1,3,5" if mode == "truncation" else ",".join(map(str, GRID_STEPS))
    states = parse_ints(args.states or ("4,16" if mode == "truncation" else ",".join(map(str, GRID_STATES))), "--states")
    steps = parse_ints(args.steps or steps_default, "--steps")
    paths = _paths(args, {"plan_options": "plan-options"}.get(mode, mode or "bench"))
    devices = _devices(args, impls)
    if mode == "grid":
        large = args.large_states or ",".join(map(str, LARGE_STATES))
        large = () if large == "none" else parse_ints(large, "--large-states")
        result = bench.grid(config, impls, devices, repeats, bench.grid_cells(states, steps, data_size, large),
                            quiet=args.quiet)
    elif mode == "scaling":
        result = scaling.study(config, impls, devices, repeats, memory_steps=() if args.no_memory else
                               scaling.MEMORY_NUM_STEPS, quiet=args.quiet)
    elif mode == "truncation":
        k2s = parse_ints(args.truncation, "--truncation")
        if max(k2s) > data_size // config.batch_size:
            raise UsageError(f"--truncation: at most the steps in a row of data ({data_size // config.batch_size}), "
                             f"got {max(k2s)}")
        rows = bench.truncation(config, states, steps, k2s, repeats)
        result = bench.page("bench --truncation", config, devices, repeats, rows=rows)
    elif mode == "plan_options":
        rows = bench.plan_options(config, states, steps, at_least(args.runs, "--runs"), repeats)
        result = bench.page("bench --plan-options", config, devices, repeats, rows=rows)
    else:
        result = bench.bench(config, impls, devices, repeats, quiet=args.quiet)
    _write(result, paths, {"plan_options": "plan-options"}.get(mode, mode or "bench"))
    return 0


def _option(mode: str) -> str:
    return "--" + mode.replace("_", "-")


def _cache(args) -> int:
    directory = compile_cache.default_dir()
    entries, size = (compile_cache.clear_compile_cache if args.clear else compile_cache.cache_size)(directory)
    state = "on"
    if compile_cache.disabled_by_env():
        state = f"off: {compile_cache.SWITCH_ENV}={os.environ[compile_cache.SWITCH_ENV]}"
    print(f"JAX compilation cache: {directory} ({state}): {'cleared ' if args.clear else ''}{entries} entries, "
          f"{size / 1e6:.1f} MB")
    return 0


COMMANDS = {"run": _run, "sweep": _sweep, "bench": _bench, "cache": _cache}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point: parse ``argv`` (default ``sys.argv[1:]``), run the command, return the exit status.

    Bad options raise ``SystemExit(2)`` after printing the usage and the reason to stderr.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "cache" and not args.no_compile_cache:
        try:
            compile_cache.enable_compile_cache()  # before anything compiles
        except OSError as err:  # an unwritable cache directory costs only the cache
            print(f"note: JAX compilation cache off: {err}", file=sys.stderr)
    try:
        return COMMANDS[args.command](args)
    except UsageError as err:
        args.error(str(err))  # prints usage + message, exits with status 2
        return 2


if __name__ == "__main__":
    sys.exit(main())
