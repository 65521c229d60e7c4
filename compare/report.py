"""A result as Markdown (``<kind>_markdown``, printed and saved; None prints as ``-``) and as a PNG figure
(``<kind>_plot``, matplotlib's Agg backend, loaded on the first plot)."""

import io
import sys

import numpy as np

from jax_rnn import data as task
from jax_rnn.plan import Plan

from .run import LOG_EVERY

BENCH_NOTES = ("build s: JAX's compile, TF's graph build (tf2: tracing); 1st epoch: the warm-up; epoch s: median of "
               "the timed epochs; peak RSS MiB: memory growth while building and warming up; x vs {}: its epoch s / "
               "this one's.")
SWEEP_NOTES = ("level: of the mean final loss; none/first/both/diverged: seeds per level (final loss, std, min-max: "
               "over those not diverged); tutorial: the level the truncation allows (errors must travel more than "
               "3, or 8, steps); backprop: the steps each update backpropagates through.")


def _table(header, rows, top=True, pad=True):
    """``pad=False``: rows that can be printed one by one as they are measured."""
    widths = [max(len(str(c)) for c in col) if pad else 0 for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join(([line(header), "|" + "|".join("-" * max(w + 2, 3) for w in widths) + "|"] if top else [])
                     + [line(r) for r in rows])


def _f(value, fmt=".4f"):
    return "-" if value is None else format(value, fmt)


def _spread(t, suffix=""):
    return f"{t['median' + suffix]:.4f} [{t['min' + suffix]:.4f}, {t['max' + suffix]:.4f}]"


def truncation_steps(c) -> tuple[int, int]:
    return c["num_steps"], c.get("backprop_steps") or c["num_steps"]


def truncation(c) -> str:
    k1, k2 = truncation_steps(c)
    return f"num_steps {k1}" if k2 == k1 else f"TBPTT({k1}, {k2})"


def setting(c) -> str:
    return f"{truncation(c)}, state_size {c['state_size']}, batch {c['batch_size']}, lr {c['learning_rate']}"


def _label(fit):
    return fit["impl"] + (" (gpu)" if fit["device"] == "gpu" else "")


def _page(title, result, *paragraphs):
    env, c = result["environment"], result["config"]
    dev, cache = env["device"], "; JAX compilation cache on" if env.get("jax_compile_cache") else ""
    if "{setting}" in title:
        title = title.replace("{setting}", f"{setting(c)}, {c['data_size']:,} points x {c['epochs']} epoch(s), seed {c['seed']}")
    machine = (f"JAX {env['jax']} on {dev['jax']['kind']} ({dev['jax']['name']})"
               + (f", TensorFlow {env['tensorflow']} on {dev['tf']['kind']}" if "tf" in dev else "")
               + f"; {env['cpu_count']} CPUs, {env['processor']}, Python {env['python']}{cache}")
    return "\n\n".join(p for p in [f"## rnn-compare {title}", machine, *paragraphs] if p) + "\n"


TARGETS = ("Targets (expected loss of a perfect predictor): " + ", ".join(
    f"{key} = {name} {getattr(task.TARGETS, key):.4f}" for key, name in task.LEVEL_NAMES.items())
    + ". final loss: mean of the last 100 steps; level: the target it is closest to.")


def _plan_line(record):
    return record and f"JAX trained with the {Plan.from_record(record)}."


def run_markdown(result) -> str:
    rows, results, a = [], result["results"], result["agreement"]
    for impl, r in results.items():
        d = r.get("diverged")
        level = f"diverged at epoch {d['epoch']}, step {d['step']} (loss {_f(d['loss'], 'g')})" if d else r["level"]
        rows.append([impl, _f(r["final_loss"]), level, _f(r["compile_seconds"], ".2f"), _f(sum(r["epoch_seconds"]), ".2f"),
                     _f(r["steps_per_second"], ",.0f"), _f(r["points_per_second"], ",.0f")])
    diverged = any(r.get("diverged") for r in results.values()) and (
        "diverged: a loss or update became NaN/inf at that window (0-based); training stopped there. Lower --learning-rate.")
    agreement = a["pairs"] and (
        f"Agreement (same params and data: per-step losses within {a['tolerance']:g}):\n\n"
        + _table(["pair", "max step-loss diff", "same params", "agree"],
                 [[f"{p['a']} vs {p['b']}", _f(p["max_abs_diff"], ".2e"), "yes" if p["same_params"] else "no",
                   {True: "PASS", False: "FAIL", None: "n/a"}[p["agree"]]] for p in a["pairs"]]))
    return _page("run: {setting}", result,
                 _table(["impl", "final loss", "level", "compile s", "train s", "steps/s", "points/s"], rows),
                 TARGETS, result.get("notes"), _plan_line(result.get("plan")), diverged, agreement)


def sweep_markdown(result) -> str:
    rows = [[*truncation_steps(cell), cell["state_size"], cell["impl"], _f(cell["mean"]), _f(cell["std"]),
             f"{_f(cell['min'])}-{_f(cell['max'])}", cell["level"],
             "/".join(str(cell["levels"].count(k)) for k in (*task.LEVEL_NAMES, "diverged")),
             cell["tutorial_level"], _f(cell["seconds"], ".1f")] for cell in result["cells"]]
    header = ["num_steps", "backprop", "state", "impl", "final loss", "std", "min-max", "level",
              "none/first/both/diverged", "tutorial", "seconds"]
    c, a, t = result["config"], result.get("agreement"), result["time"]
    notes = [TARGETS, SWEEP_NOTES, a and (
        f"Implementations on the same seed: largest per-step loss difference {_f(a['max_abs_diff'], '.2e')}; "
        f"same level on every seed: {'yes' if a['same_level'] else 'no'}."),
        f"Time: {t['total']:.1f} s wall, {c['workers']} JAX cell(s) at a time; over the cells: data {t['data']:.1f} s "
        f"(made once: {t['shared_data']:.1f} s), JAX compile {t['compile']:.1f} s, training {t['train']:.1f} s."]
    return _page(f"sweep: {len(c['seeds'])} seed(s) x {c['epochs']} epoch(s) of {c['data_size']:,} points, "
                 f"batch {c['batch_size']}, lr {c['learning_rate']}", result, _table(header, rows),
                 "\n".join(filter(None, notes)))


def bench_markdown(result) -> str:
    rows = [[impl, _f(r["build_seconds"], ".2f"), _f(r["first_epoch_seconds"], ".3f"), _f(r["median_epoch_seconds"], ".3f"),
             f"{_f(r['min_epoch_seconds'], '.3f')}-{_f(r['max_epoch_seconds'], '.3f')}", _f(r["steps_per_second"], ",.0f"),
             _f(r["points_per_second"], ",.0f"), _f(r["peak_rss_mib"], ".0f"), _f(r["speedup_vs_baseline"], ".2f")]
            for impl, r in result["results"].items()]
    header = ["impl", "build s", "1st epoch s", "epoch s (median)", "min-max", "steps/s", "points/s", "peak RSS MiB",
              f"x vs {result['baseline']}"]
    return _page(f"bench: {{setting}}, {result['config']['repeats']} timed epoch(s) after one warm-up", result,
                 _table(header, rows), BENCH_NOTES.format(result["baseline"]), _plan_line(result.get("plan")))


def format_grid(rows, header=True) -> str:
    seconds = lambda name, r: _spread(r["results"][name], "_epoch_seconds") if name else ""
    ratio = lambda value: "" if value is None else f"{value:.2f}x"
    return _table("state|num_steps|points|JAX compile s|JAX epoch s|C epoch s|JAX / C|fastest TF|its epoch s|"
                  "JAX faster by".split("|"),
                  [[r["state_size"], r["num_steps"], f"{r['data_size']:,}", f"{r['results']['jax']['build_seconds']:.2f}",
                    seconds("jax", r), _spread(r["results"]["c"]) if "c" in r["results"] else "", ratio(r["jax_over_c"]),
                    r["fastest_tf"] or "", seconds(r["fastest_tf"], r), ratio(r["fastest_tf_over_jax"])] for r in rows],
                  header, pad=False)


def format_truncation(rows, header=True) -> str:
    return _table("state|k1|k2|TF-style k1: epoch s|TBPTT(k1, k2): epoch s|compile s|cost|bound 1.2 k2/k1".split("|"),
                  [[r["state_size"], r["num_steps"], r["backprop_steps"], _spread(r["tf_style"]), _spread(r["tbptt"]),
                    f"{r['compile_seconds']:.2f}", f"{r['cost']:.2f}x", f"{r['bound']:.1f}x"] for r in rows], header, False)


def format_plan_options(rows, header=True) -> str:
    return _table("state|num_steps|runs|option|plan: epoch s|without it: epoch s|gain".split("|"),
                  [[r["state_size"], r["num_steps"], r["runs"], r["option"], _spread(r["plan"]), _spread(r["without"]),
                    f"{100 * r['gain']:+.0f}%"] for r in rows], header, False)


def _rows_markdown(mode, key, table, note):
    def markdown(result) -> str:
        c = result["config"]
        return _page(f"bench --{mode}: batch {c['batch_size']}, median of {c['repeats']} epochs", result,
                     table(result[key]), note)
    return markdown


grid_markdown = _rows_markdown("grid", "cells", format_grid, "Seconds per epoch, median [min, max]; the "
                               "implementations one after another, JAX's epochs around the C loop's.")
truncation_markdown = _rows_markdown("truncation", "rows", format_truncation, "cost: TBPTT(k1, k2) / TF-style k1.")
plan_options_markdown = _rows_markdown("plan-options", "rows", format_plan_options,
                                       "gain: 1 - (the plan's epoch s) / (without that choice).")


def scaling_markdown(result) -> str:
    c, parts = result["config"], []
    for param, values in c["sweeps"].items():
        rows = [[_label(fit), *map(_f, fit["seconds"]), _f(fit["slope"], ".2f"),
                 "never" if (cross := fit.get("gpu_faster_from", "-")) is None else cross]  # "-": no GPU measured
                for fit in result["fits"] if fit["parameter"] == param]
        parts.append(f"Seconds per epoch as {param} grows:\n\n"
                     + _table([f"{param} ->", *(f"{v:,}" for v in values), "slope", "GPU faster from"], rows))
    if result["memory"]:
        rows = [[f"{m['num_steps']:,}", m["state_size"], "yes" if m["remat"] else "no", _f(m["xla_temp_mib"], ",.1f"),
                 _f(m["peak_rss_mib"], ",.1f"), _f(m["compile_seconds"], ".2f"), _f(m["epoch_seconds"], ".2f")]
                for m in result["memory"]]
        parts.append("Memory, JAX, one window of [batch, num_steps] (remat: jax.checkpoint of sqrt-sized blocks):\n\n"
                     + _table(["num_steps", "state", "remat", "XLA temp MiB", "RSS growth MiB", "compile s", "epoch s"], rows))
    return _page(f"bench --scaling: {c['data_size']:,} points per epoch, median of {c['repeats']} epochs", result,
                 *parts, result["notes"])


# --- figures ---

def _subplots(*args, **kwargs):
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def _png(fig):
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    sys.modules["matplotlib.pyplot"].close(fig)
    return buffer.getvalue()


def _targets(ax, labels=True):
    for (key, name), style in zip(task.LEVEL_NAMES.items(), (":", "--", "-.")):
        value = getattr(task.TARGETS, key)
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        if labels:
            ax.annotate(f"{name.removeprefix('the ')} ({value:.4f})", (1.0, value), xycoords=("axes fraction", "data"),
                        xytext=(-4, 2), textcoords="offset points", ha="right", va="bottom", fontsize=8, color="dimgrey")


def _bars(mean, records, low, high):
    return np.array([[m - r[low], r[high] - m] for m, r in zip(mean, records)]).T


def block_ends(epochs, epoch_size, every=LOG_EVERY) -> np.ndarray:
    """The step at which each running average ends, ``int[epochs * blocks]`` (a short epoch: one block)."""
    every = min(every, epoch_size)
    return (np.arange(epochs)[:, None] * epoch_size + np.arange(every, epoch_size + 1, every)).reshape(-1)


def run_plot(result) -> bytes:
    fig, ax = _subplots(figsize=(8, 4.5))
    c = result["config"]
    x = block_ends(c["epochs"], c["epoch_size"])
    for k, (impl, r) in enumerate(result["results"].items()):
        avg = np.asarray(r["avg_losses"], np.float64)  # None reads as NaN
        # Identical runs overlap exactly: distinct, shrinking markers keep every curve visible.
        ax.plot(x[: len(avg)], avg, marker="osD^x"[k % 5], markersize=max(2, 7 - 1.2 * k), fillstyle="none",
                linewidth=1.2, label=impl)
    _targets(ax)
    ax.set(xlabel="training step", ylabel="mean loss of the last 100 steps", title=setting(c))
    ax.set_ylim(task.TARGETS.both - 0.03, max(0.72, ax.get_ylim()[1]))
    ax.legend(loc="upper center", ncol=min(5, len(result["results"])), fontsize=8)
    return _png(fig)


def _truncation_plot(result):
    """r2rt's "Styles of Truncated Backpropagation": final loss against k2, a line per k1, a panel per state."""
    c, cells = result["config"], sorted(result["cells"], key=lambda cell: cell["backprop_steps"])
    fig, axes = _subplots(1, len(c["state_size"]), figsize=(5.5 * len(c["state_size"]), 4.2), sharey=True,
                          squeeze=False, constrained_layout=True)
    for ax, d in zip(axes[0], c["state_size"]):
        for k1, impl in sorted({(cell["num_steps"], cell["impl"]) for cell in cells}):
            line = [x for x in cells if (x["state_size"], x["num_steps"], x["impl"]) == (d, k1, impl) and x["mean"]]
            mean = np.array([x["mean"] for x in line])
            if line:
                ax.errorbar([x["backprop_steps"] for x in line], mean, yerr=_bars(mean, line, "min", "max"), marker="o",
                            capsize=3, label=f"update every {k1} step(s)" + (f" ({impl})" if len(c["impls"]) > 1 else ""))
        _targets(ax, labels=ax is axes[0][-1])
        ax.set(title=f"state {d}", xlabel="backprop steps k2 (first point of a line: k2 = k1, TF style)",
               xticks=sorted({x["backprop_steps"] for x in cells}))
    axes[0][0].set_ylabel("final loss (seed mean, min-max)")
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"TBPTT(k1, k2): {len(c['seeds'])} seed(s), {c['epochs']} epoch(s) of {c['data_size']:,} points")
    return _png(fig)


def sweep_plot(result) -> bytes:
    """Seed-mean curves, a panel per truncation x state_size (with a backprop-steps axis: `_truncation_plot`)."""
    c = result["config"]
    rows, cols = [tuple(t) for t in c["truncations"]], c["state_size"]
    if any(k1 != k2 for k1, k2 in rows):
        return _truncation_plot(result)
    fig, axes = _subplots(len(rows), len(cols), figsize=(4 * len(cols), (2.8 if len(rows) <= 4 else 2) * len(rows)),
                          sharey=True, squeeze=False, constrained_layout=True)
    for cell in result["cells"]:
        ax = axes[rows.index(truncation_steps(cell))][cols.index(cell["state_size"])]
        curve = np.asarray(cell["avg_losses_mean"], np.float64)
        ax.plot(c["epochs"] * np.arange(1, len(curve) + 1) / len(curve), curve, linewidth=1.2, label=cell["impl"])
        ax.set_title(f"{truncation(cell)}, state {cell['state_size']}: {cell['level']}", fontsize=9)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            _targets(ax, labels=(i == 0 and j == len(row) - 1))
            ax.set_ylim(task.TARGETS.both - 0.03, 0.72)
            ax.set(xlabel="epoch" if i == len(axes) - 1 else None, ylabel="mean loss" if j == 0 else None)
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"final loss over {len(c['seeds'])} seed(s), {c['epochs']} epoch(s)")
    return _png(fig)


def bench_plot(result) -> bytes:
    names, c = list(result["results"]), result["config"]
    r = list(result["results"].values())
    median = np.array([x["median_epoch_seconds"] for x in r], np.float64)
    fig, ax = _subplots(figsize=(1.4 * len(names) + 2, 4))
    bars = ax.bar(names, median, yerr=_bars(median, r, "min_epoch_seconds", "max_epoch_seconds"), capsize=4)
    for bar, x in zip(bars, r):
        speedup = x.get("speedup_vs_baseline")
        ax.annotate(f"{x['median_epoch_seconds']:.3f}s" + (f"\n{speedup:.2f}x" if speedup is not None else ""),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 3), textcoords="offset points",
                    ha="center", va="bottom", fontsize=8)
    ax.set(ylabel="seconds per epoch (median)", ylim=(0, max(median.max() * 1.35, 1e-3)),
           title=f"{c['epoch_size']} steps of [{c['batch_size']} x {c['num_steps']}] per epoch ({truncation(c)}), "
                 f"speed-up vs {result['baseline']}")
    return _png(fig)


def grid_plot(result) -> bytes:
    cells = result["cells"]
    fig, ax = _subplots(figsize=(len(cells) + 3, 4))
    median = lambda cell, name: cell["results"][name]["median_epoch_seconds"] if name else np.nan
    series = {"jax": [median(c, "jax") for c in cells], "fastest TF": [median(c, c["fastest_tf"]) for c in cells],
              "C loop": [c["results"]["c"]["median"] if "c" in c["results"] else np.nan for c in cells]}
    for (name, seconds), marker in zip(series.items(), "o^s"):
        ax.semilogy([f"{c['state_size']}/{c['num_steps']}" for c in cells], seconds, marker=marker, linestyle="", label=name)
    ax.set(xlabel="state size / num_steps", ylabel="seconds per epoch (median)",
           title="rnn-compare bench --grid (large states: 100,000 points, no C loop)")
    ax.legend()
    return _png(fig)


def scaling_plot(result) -> bytes:
    params = list(result["config"]["sweeps"])
    fig, axes = _subplots(1, len(params), figsize=(5 * len(params), 4), squeeze=False)
    for ax, param in zip(axes[0], params):
        for fit in (f for f in result["fits"] if f["parameter"] == param):
            ax.loglog(fit["values"], np.asarray(fit["seconds"], np.float64), marker="o",
                      linestyle="--" if fit["device"] == "gpu" else "-",
                      label=_label(fit) + ("" if fit["slope"] is None else f", slope {fit['slope']:.2f}"))
        ax.set(xlabel=param, ylabel="seconds per epoch (median)", title=f"cost as {param} grows")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['config']['data_size']:,} points per epoch; the other parameters at the tutorial's")
    return _png(fig)
