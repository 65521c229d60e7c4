"""Markdown tables of a result dict, printed and saved as ``.md``; a None (a non-finite value) prints as ``-``."""

from __future__ import annotations

from jax_rnn import data as task
from jax_rnn.plan import Plan

from .bench import format_grid, format_plan_options, format_truncation


NOTES = ("build s: JAX ahead-of-time compile, TF graph build + variable init (tf2: + tracing); 1st epoch: the warm-up "
         "epoch (TF1's first session.run optimises the graph); epoch s: median of the timed epochs, one implementation "
         "after another; peak RSS MiB: growth of resident memory while it built and trained its warm-up epoch; "
         "x vs {baseline}: its median epoch time divided by this one's.")
GRID_NOTES = ("Every cell: each implementation built, warmed up with one epoch and timed for {repeats} more, one after "
              "another, JAX's epochs in two blocks around the C loop's runs; same data and weights; seconds per epoch, "
              "median [min, max]. Large states (num_steps 10, 100,000 points) without the C loop.")


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def _f(value, fmt: str = ".4f") -> str:
    return "-" if value is None else format(value, fmt)


def truncation_steps(c: dict) -> tuple[int, int]:
    """``(k1, k2)`` of a config or cell record: num_steps, and backprop_steps (num_steps if not recorded)."""
    return c["num_steps"], c.get("backprop_steps") or c["num_steps"]


def truncation(c: dict) -> str:
    """``"num_steps 5"``, or ``"TBPTT(1, 9)"`` when the record's ``backprop_steps`` is larger."""
    k1, k2 = truncation_steps(c)
    return f"num_steps {k1}" if k2 == k1 else f"TBPTT({k1}, {k2})"


def setting(c: dict) -> str:
    """``"num_steps 5, state_size 4, batch 200, lr 0.1"``: the model and optimiser of a config record."""
    return f"{truncation(c)}, state_size {c['state_size']}, batch {c['batch_size']}, lr {c['learning_rate']}"


def _full_setting(c: dict) -> str:
    return f"{setting(c)}, {c['data_size']:,} points x {c['epochs']} epoch(s), seed {c['seed']}"


def fit_label(fit: dict) -> str:
    """A scaling fit's implementation, marked ``(gpu)`` where it ran on one."""
    return fit["impl"] + (" (gpu)" if fit["device"] == "gpu" else "")


def _machine(env: dict) -> str:
    dev = env["device"]
    tf = f", TensorFlow {env['tensorflow']} on {dev['tf']['kind']}" if "tf" in dev else ""
    cache = "; JAX compilation cache on (its compile s may be a load from it)" if env.get("jax_compile_cache") else ""
    return (f"JAX {env['jax']} on {dev['jax']['kind']} ({dev['jax']['name']}){tf}; {env['cpu_count']} CPUs, "
            f"{env['processor']}, Python {env['python']}{cache}")


def _page(title: str, result: dict, *paragraphs) -> str:
    """``## rnn-compare <title>``, the machine, then the paragraphs (a None is left out)."""
    parts = [f"## rnn-compare {title}", _machine(result["environment"]), *paragraphs]
    return "\n\n".join(p for p in parts if p) + "\n"


def targets_line() -> str:
    levels = ", ".join(f"{key} = {name} {getattr(task.TARGETS, key):.4f}" for key, name in task.LEVEL_NAMES.items())
    return (f"Targets (expected loss of a perfect predictor): {levels}. final loss: mean of the last 100 steps; "
            f"level: the target it is closest to.")


def run_markdown(result: dict) -> str:
    """The ``run`` table: final loss, level, timings per implementation, then the agreement check."""
    rows = []
    for impl, r in result["results"].items():
        level, div = r["level"], r.get("diverged")
        if div:
            level = f"diverged at epoch {div['epoch']}, step {div['step']} (loss {_f(div['loss'], 'g')})"
        rows.append([impl, _f(r["final_loss"]), level, _f(r["compile_seconds"], ".2f"),
                     _f(sum(r["epoch_seconds"]), ".2f"), _f(r["steps_per_second"], ",.0f"),
                     _f(r["points_per_second"], ",.0f")])
    diverged = None
    if any(r.get("diverged") for r in result["results"].values()):
        diverged = ("diverged: a loss, parameter or Adagrad accumulator became NaN/inf at that window (0-based); "
                    "training stopped there and the final parameters are the last finite ones. Lower "
                    "--learning-rate.")
    a, agreement = result["agreement"], None
    if a["pairs"]:
        pair_rows = [[f"{p['a']} vs {p['b']}", _f(p["max_abs_diff"], ".2e"), "yes" if p["same_params"] else "no",
                      {True: "PASS", False: "FAIL", None: "n/a"}[p["agree"]]] for p in a["pairs"]]
        agreement = (f"Agreement (same params and data: per-step losses within {a['tolerance']:g}):\n\n"
                     + _table(["pair", "max step-loss diff", "same params", "agree"], pair_rows))
    c = result["config"]
    return _page(f"run: {_full_setting(c)}", result,
                 _table(["impl", "final loss", "level", "compile s", "train s", "steps/s", "points/s"], rows),
                 targets_line(), result.get("notes"), plan_line(result.get("plan")), diverged, agreement)


def sweep_markdown(result: dict) -> str:
    """The ``sweep`` table: one row per (num_steps, backprop_steps, state_size, impl) cell, mean and spread
    over seeds."""
    rows = [[*truncation_steps(cell), cell["state_size"], cell["impl"], _f(cell["mean"]), _f(cell["std"]),
             f"{_f(cell['min'])}-{_f(cell['max'])}", cell["level"],
             "/".join(str(cell["levels"].count(k)) for k in (*task.LEVEL_NAMES, "diverged")),
             cell["tutorial_level"], _f(cell["seconds"], ".1f")] for cell in result["cells"]]
    header = ["num_steps", "backprop", "state", "impl", "final loss", "std", "min-max", "level", "none/first/both/diverged",
              "tutorial", "seconds"]
    notes = [targets_line(),
             "level: of the mean final loss (\"diverged\" if any seed did); none/first/both/diverged: how many "
             "seeds reached each level or diverged (a NaN/inf loss; final loss, std and min-max are over the "
             "other seeds); tutorial: the level the tutorial's reasoning allows for that truncation (an error "
             "must travel more than 3, or 8, steps: backprop > 3, or > 8); backprop: the steps each update "
             "backpropagates through (num_steps: the tutorial's TBPTT(n, n))."]
    c = result["config"]
    if result.get("agreement"):
        a = result["agreement"]
        notes.append(f"Implementations on the same seed: largest per-step loss difference {_f(a['max_abs_diff'], '.2e')}; "
                     f"same level on every seed: {'yes' if a['same_level'] else 'no'}.")
    if result.get("time"):
        t = result["time"]
        notes.append(f"Time: {_f(t['total'], '.1f')} s wall, {c.get('workers') or 1} JAX cell(s) at a time. Added up over "
                     f"the cells: data {_f(t['data'], '.1f')} s (every seed's epochs made once, "
                     f"{_f(t['shared_data'], '.1f')} s, then cut per cell), JAX compile {_f(t['compile'], '.1f')} s (or "
                     f"loads from the compilation cache), training {_f(t['train'], '.1f')} s.")
    return _page(f"sweep: {len(c['seeds'])} seed(s) x {c['epochs']} epoch(s) of {c['data_size']:,} points, "
                 f"batch {c['batch_size']}, lr {c['learning_rate']}", result, _table(header, rows), "\n".join(notes))


def bench_markdown(result: dict) -> str:
    """The ``bench`` table: build, first epoch, steady state (median, min-max), rates, memory, speed-up."""
    rows = [[impl, _f(r["build_seconds"], ".2f"), _f(r["first_epoch_seconds"], ".3f"),
             _f(r["median_epoch_seconds"], ".3f"), f"{_f(r['min_epoch_seconds'], '.3f')}-{_f(r['max_epoch_seconds'], '.3f')}",
             _f(r["steps_per_second"], ",.0f"), _f(r["points_per_second"], ",.0f"),
             _f(r["peak_rss_mib"], ".0f"), _f(r["speedup_vs_baseline"], ".2f")] for impl, r in result["results"].items()]
    header = ["impl", "build s", "1st epoch s", "epoch s (median)", "min-max", "steps/s", "points/s",
              "peak RSS MiB", f"x vs {result['baseline']}"]
    c = result["config"]
    return _page(f"bench: {_full_setting(c)}, {c['repeats']} timed epoch(s) after one warm-up", result,
                 _table(header, rows), NOTES.format(baseline=result["baseline"]), plan_line(result.get("plan")))


def grid_markdown(result: dict) -> str:
    c = result["config"]
    return _page(f"bench --grid: batch {c['batch_size']}, {c['repeats']} timed epoch(s) after one warm-up", result,
                 format_grid(result["cells"]), GRID_NOTES.format(repeats=c["repeats"]))


def truncation_markdown(result: dict) -> str:
    c = result["config"]
    return _page(f"bench --truncation: batch {c['batch_size']}, {c['data_size']:,} points, median of {c['repeats']}",
                 result, format_truncation(result["rows"]))


def plan_options_markdown(result: dict) -> str:
    c = result["config"]
    return _page(f"bench --plan-options: batch {c['batch_size']}, {c['data_size']:,} points, median of {c['repeats']}",
                 result, format_plan_options(result["rows"]), "gain: 1 - (plan's epoch s) / (without that choice).")


def plan_line(record) -> str | None:
    return None if record is None else f"JAX trained with the {Plan.from_record(record)}."


def scaling_markdown(result: dict) -> str:
    """The ``bench --scaling`` tables: seconds per point, fitted slopes (and GPU crossovers), memory."""
    c = result["config"]
    parts = [f"Scaling ({c['data_size']:,} points per epoch, median of {c['repeats']} epochs) on "
             f"{_machine(result['environment'])}"]
    for param, values in c["sweeps"].items():
        rows = []
        for fit in (f for f in result["fits"] if f["parameter"] == param):
            cross = fit.get("gpu_faster_from", "-")  # "-": no GPU measured
            rows.append([fit_label(fit), *map(_f, fit["seconds"]), _f(fit["slope"], ".2f"),
                         "never" if cross is None else str(cross)])
        header = [f"{param} ->"] + [f"{v:,}" for v in values] + ["slope", "GPU faster from"]
        parts.append(f"Seconds per epoch as {param} grows:\n\n" + _table(header, rows))
    if result["memory"]:
        rows = [[f"{m['num_steps']:,}", str(m["state_size"]), "yes" if m["remat"] else "no",
                 _f(m["xla_temp_mib"], ",.1f"), _f(m["peak_rss_mib"], ",.1f"),
                 _f(m["compile_seconds"], ".2f"), _f(m["epoch_seconds"], ".2f")] for m in result["memory"]]
        parts.append("Memory, JAX, one window of [200, num_steps] (remat: jax.checkpoint of sqrt-sized blocks):\n\n" +
                     _table(["num_steps", "state", "remat", "XLA temp MiB", "RSS growth MiB", "compile s", "epoch s"],
                            rows))
    return "\n\n".join([*parts, result["notes"]])
