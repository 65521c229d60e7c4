"""A result as Markdown (``<kind>_markdown``; None prints as ``-``) and as a PNG (``<kind>_plot``)."""

import io

import numpy as np

from jax_rnn import data as task
from jax_rnn.plan import Plan

from .run import LOG_EVERY

LEVELS = {key: (name, getattr(task.TARGETS, key)) for key, name in task.LEVEL_NAMES.items()}
TARGETS = ("Targets (a perfect predictor's loss): " + ", ".join(f"{k} = {n} {v:.4f}" for k, (n, v) in LEVELS.items())
           + ". final loss: of the last 100 steps; level: the nearest target.")


def _table(header, rows, top=True, pad=True):
    header = header.split("|")
    widths = [max(len(str(c)) for c in col) if pad else 0 for col in zip(header, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    head = [line(header), "|" + "|".join("-" * max(w + 2, 3) for w in widths) + "|"] if top else []
    return "\n".join(head + [line(r) for r in rows])


def _f(value, fmt=".4f"):
    return "-" if value is None else format(value, fmt)


def _spread(t, suffix=""):
    return f"{t['median' + suffix]:.4f} [{t['min' + suffix]:.4f}, {t['max' + suffix]:.4f}]"


def truncation_steps(c):
    return c["num_steps"], c.get("backprop_steps") or c["num_steps"]


def truncation(c):
    k1, k2 = truncation_steps(c)
    return f"num_steps {k1}" if k2 == k1 else f"TBPTT({k1}, {k2})"


def setting(c):
    return f"{truncation(c)}, state_size {c['state_size']}, batch {c['batch_size']}, lr {c['learning_rate']}"


def _all(c):
    return f"{setting(c)}, {c['data_size']:,} points x {c['epochs']} epoch(s), seed {c['seed']}"


def _page(title, result, *paragraphs):
    env = result["environment"]
    dev, cache = env["device"], "; JAX compilation cache on" if env.get("jax_compile_cache") else ""
    machine = (f"JAX {env['jax']} on {dev['jax']['kind']} ({dev['jax']['name']})"
               + (f", TensorFlow {env['tensorflow']} on {dev['tf']['kind']}" if "tf" in dev else "")
               + f"; {env['cpu_count']} CPUs, {env['processor']}, Python {env['python']}{cache}")
    plan = result.get("plan") and f"JAX trained with the {Plan.from_record(result['plan'])}."
    return "\n\n".join(p for p in [f"## rnn-compare {title}", machine, *paragraphs, plan] if p) + "\n"


def _rates(r):
    return [_f(r["steps_per_second"], ",.0f"), _f(r["points_per_second"], ",.0f")]


def run_markdown(result):
    rows, a = [], result["agreement"]
    for impl, r in result["results"].items():
        d = r.get("diverged")
        level = f"diverged at epoch {d['epoch']}, step {d['step']} (loss {_f(d['loss'], 'g')})" if d else r["level"]
        rows.append([impl, _f(r["final_loss"]), level, _f(r["compile_seconds"], ".2f"),
                     _f(sum(r["epoch_seconds"]), ".2f"), *_rates(r)])
    diverged = "diverged" in (r["level"] for r in result["results"].values()) and (
        "diverged: a loss or update became NaN/inf at that window (0-based); lower --learning-rate.")
    agreement = a["pairs"] and f"Agreement (same params and data: per-step losses within {a['tolerance']:g}):\n\n" + (
        _table("pair|max step-loss diff|same params|agree", [
            [f"{p['a']} vs {p['b']}", _f(p["max_abs_diff"], ".2e"), "yes" if p["same_params"] else "no",
             {True: "PASS", False: "FAIL", None: "n/a"}[p["agree"]]] for p in a["pairs"]]))
    header = "impl|final loss|level|compile s|train s|steps/s|points/s"
    return _page(f"run: {_all(result['config'])}", result, _table(header, rows), TARGETS, result.get("notes"), diverged,
                 agreement)


def sweep_markdown(result):
    c, a, t = result["config"], result.get("agreement"), result["time"]
    counts = lambda x: "/".join(str(x["levels"].count(k)) for k in (*LEVELS, "diverged"))
    rows = [[*truncation_steps(x), x["state_size"], x["impl"], _f(x["mean"]), _f(x["std"]),
             f"{_f(x['min'])}-{_f(x['max'])}", x["level"], counts(x), x["tutorial_level"], _f(x["seconds"], ".1f")]
            for x in result["cells"]]
    notes = [TARGETS, "level: of the mean; none/first/both/diverged: seeds per level; tutorial: the level the "
             "truncation allows.", a and f"Same seed: largest step-loss difference {_f(a['max_abs_diff'], '.2e')}; "
             f"same levels: {'yes' if a['same_level'] else 'no'}.",
             f"Time: {t['total']:.1f} s wall, {c['workers']} JAX cell(s) at a time; cells: data "
             f"{t['data']:.1f} s (made once: {t['shared_data']:.1f} s), JAX compile {t['compile']:.1f} s, "
             f"training {t['train']:.1f} s."]
    return _page(f"sweep: {len(c['seeds'])} seed(s) x {c['epochs']} epoch(s) of {c['data_size']:,} points, "
                 f"batch {c['batch_size']}, lr {c['learning_rate']}", result, _table(
                     "num_steps|backprop|state|impl|final loss|std|min-max|level|none/first/both/diverged|tutorial|"
                     "seconds", rows), "\n".join(filter(None, notes)))


def bench_markdown(result):
    c, base, fmt = result["config"], result["baseline"], lambda r, k: _f(r[k + "_epoch_seconds"], ".3f")
    rows = [[impl, _f(r["build_seconds"], ".2f"), fmt(r, "first"), fmt(r, "median"), f"{fmt(r, 'min')}-{fmt(r, 'max')}",
             *_rates(r), _f(r["estimate_mib"], ",.0f"), _f(r["peak_rss_mib"], ",.0f"), _f(r["speedup_vs_baseline"], ".2f")]
            for impl, r in result["results"].items()]
    header = f"impl|build s|1st epoch s|epoch s (median)|min-max|steps/s|points/s|estimate MiB|peak RSS MiB|x vs {base}"
    return _page(f"bench: {_all(c)}, {c['repeats']} timed epoch(s) after one warm-up", result, _table(header, rows),
                 f"build s: JAX compile, TF graph build; estimate: the memory the cell needs (jax_rnn.Plan.memory); "
                 f"peak RSS: growth from the weights' draw to the warm-up's end; x vs {base}: its epoch s / this one's.")


def _mode(mode, key, columns, cells, note):
    """bench ``--mode``'s table ``format(rows, header=True)`` (printable row by row) and page."""
    table = lambda rows, header=True: _table(columns, [cells(r) for r in rows], header, pad=False)
    return table, lambda result: _page(f"bench --{mode}: batch {result['config']['batch_size']}, median of "
                                       f"{result['config']['repeats']} epochs", result, table(result[key]), note)


def _grid_cells(r):
    res, tf, ratio = r["results"], r["fastest_tf"], lambda v: "" if v is None else f"{v:.2f}x"
    return [r["state_size"], r["num_steps"], f"{r['data_size']:,}", f"{res['jax']['build_seconds']:.2f}",
            _spread(res["jax"], "_epoch_seconds"), _spread(res["c"]) if "c" in res else "", ratio(r["jax_over_c"]),
            tf or "", _spread(res[tf], "_epoch_seconds") if tf else "", ratio(r["fastest_tf_over_jax"])]


format_grid, grid_markdown = _mode(
    "grid", "cells", "state|num_steps|points|JAX compile s|JAX epoch s|C epoch s|JAX / C|fastest TF|its epoch s|"
    "JAX faster by", _grid_cells, "Seconds per epoch: median [min, max].")
format_truncation, truncation_markdown = _mode(
    "truncation", "rows", "state|k1|k2|TF-style k1: epoch s|TBPTT(k1, k2): epoch s|compile s|cost|bound 1.2 k2/k1",
    lambda r: [r["state_size"], r["num_steps"], r["backprop_steps"], _spread(r["tf_style"]), _spread(r["tbptt"]),
               f"{r['compile_seconds']:.2f}", f"{r['cost']:.2f}x", f"{r['bound']:.1f}x"],
    "cost: TBPTT(k1, k2) / TF-style k1.")
format_random_cells, random_cells_markdown = _mode(
    "random-cells", "rows", "state|batch|num_steps|C epoch s|rule: epoch s|tuned: epoch s|rule / C|tuned / C|tuning s",
    lambda r: [r["state_size"], r["batch_size"], r["num_steps"], _spread(r["c"]), _spread(r["rule"]),
               _spread(r["tuned"]), f"{r['rule_over_c']:.2f}x", f"{r['tuned_over_c']:.2f}x", f"{r['tuning_seconds']:.1f}"],
    "rule: jax_rnn.plan's rules; tuned: plan(..., tune=True); tuning s: its first-use cost (0 when cached).")
format_many_runs, many_runs_markdown = _mode(
    "many-runs", "rows", "state|num_steps|one run: epoch s|per run, R runs at once",
    lambda r: [r["state_size"], r["num_steps"], _spread(r["one_run"]),
               ", ".join(f"R={k}: {v:.2f}x" for k, v in r["per_run"].items())],
    "per run: (the epoch of R runs at once / R) / one run's epoch.")
format_processes, processes_markdown = _mode(
    "processes", "rows", "processes|sweep s (second run)|first run s|C limit s|x the limit",
    lambda r: [r["processes"], f"{r['seconds']:.2f}", f"{r['first_seconds']:.2f}", f"{r['limit']:.2f}",
               f"{r['over_limit']:.2f}x"], "rnn-compare sweep (defaults) end to end; C limit: the C loop's seconds "
    "for the sweep's run-epochs over this machine's cores.")


def _figure(rows=1, cols=1, sharey=False, **kwargs):
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    fig = Figure(**kwargs)
    return fig, fig.subplots(rows, cols, squeeze=False, sharey=sharey)


def _png(fig, title=None):
    if title:
        fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    return buffer.getvalue()


def _targets(ax, labels=True, top=None):
    for (name, value), style in zip(LEVELS.values(), (":", "--", "-.")):
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        if labels:
            ax.annotate(f"{name.removeprefix('the ')} ({value:.4f})", (1, value), xycoords=("axes fraction", "data"),
                        xytext=(-4, 2), textcoords="offset points", ha="right", va="bottom", size=8, color="dimgrey")
    if top:
        ax.set_ylim(task.TARGETS.both - 0.03, top)


def _bars(mean, records, low, high):
    return np.array([[m - r[low], r[high] - m] for m, r in zip(mean, records)]).T


def block_ends(epochs, epoch_size, every=LOG_EVERY):
    every = min(every, epoch_size)
    return (np.arange(epochs)[:, None] * epoch_size + np.arange(every, epoch_size + 1, every)).reshape(-1)


def run_plot(result):
    fig, ((ax,),) = _figure(figsize=(8, 4.5))
    c, results = result["config"], result["results"]
    x = block_ends(c["epochs"], c["epoch_size"])
    for k, (impl, r) in enumerate(results.items()):
        avg = np.asarray(r["avg_losses"], np.float64)  # None reads as NaN
        # shrinking markers: identical runs stay visible
        ax.plot(x[: len(avg)], avg, marker="osD^x"[k % 5], markersize=max(2, 7 - 1.2 * k), fillstyle="none",
                linewidth=1.2, label=impl)
    _targets(ax, top=max(0.72, ax.get_ylim()[1]))
    ax.set(xlabel="training step", ylabel="mean loss of the last 100 steps", title=setting(c))
    ax.legend(loc="upper center", ncol=min(5, len(results)), fontsize=8)
    return _png(fig)


def _truncation_plot(result):
    c, cells = result["config"], sorted(result["cells"], key=lambda x: x["backprop_steps"])
    states = c["state_size"]
    fig, axes = _figure(1, len(states), figsize=(5.5 * len(states), 4.2), sharey=True, constrained_layout=True)
    for ax, d in zip(axes[0], states):
        for k1, impl in sorted({(x["num_steps"], x["impl"]) for x in cells}):
            line = [x for x in cells if (x["state_size"], x["num_steps"], x["impl"]) == (d, k1, impl) and x["mean"]]
            mean, label = np.array([x["mean"] for x in line]), f" ({impl})" if len(c["impls"]) > 1 else ""
            if line:
                ax.errorbar([x["backprop_steps"] for x in line], mean, yerr=_bars(mean, line, "min", "max"), marker="o",
                            capsize=3, label=f"update every {k1} step(s){label}")
        _targets(ax, labels=ax is axes[0][-1])
        ax.set(title=f"state {d}", xlabel="backprop steps k2 (first point of a line: k2 = k1, TF style)",
               xticks=sorted({x["backprop_steps"] for x in cells}))
    axes[0][0].set_ylabel("final loss (seed mean, min-max)")
    axes[0][0].legend(fontsize=8, loc="upper right")
    return _png(fig, f"TBPTT(k1, k2): {len(c['seeds'])} seed(s), {c['epochs']} epoch(s) of {c['data_size']:,} points")


def sweep_plot(result):
    c = result["config"]
    rows, cols = [tuple(t) for t in c["truncations"]], c["state_size"]
    if any(k1 != k2 for k1, k2 in rows):
        return _truncation_plot(result)
    fig, axes = _figure(len(rows), len(cols), figsize=(4 * len(cols), (2.8 if len(rows) <= 4 else 2) * len(rows)),
                        sharey=True, constrained_layout=True)
    for cell in result["cells"]:
        ax = axes[rows.index(truncation_steps(cell))][cols.index(cell["state_size"])]
        curve = np.asarray(cell["avg_losses_mean"], np.float64)
        ax.plot(c["epochs"] * np.arange(1, len(curve) + 1) / len(curve), curve, linewidth=1.2, label=cell["impl"])
        ax.set_title(f"{truncation(cell)}, state {cell['state_size']}: {cell['level']}", fontsize=9)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            _targets(ax, labels=i == 0 and j == len(row) - 1, top=0.72)
            ax.set(xlabel="epoch" if i == len(axes) - 1 else None, ylabel="mean loss" if j == 0 else None)
    axes[0][0].legend(fontsize=8)
    return _png(fig, f"final loss over {len(c['seeds'])} seed(s), {c['epochs']} epoch(s)")


def bench_plot(result):
    c, r = result["config"], list(result["results"].values())
    median = np.array([x["median_epoch_seconds"] for x in r], np.float64)
    fig, ((ax,),) = _figure(figsize=(1.4 * len(r) + 2, 4))
    bars = ax.bar(list(result["results"]), median, yerr=_bars(median, r, "min_epoch_seconds", "max_epoch_seconds"),
                  capsize=4)
    speedup = lambda s: "" if s is None else f"\n{s:.2f}x"
    ax.bar_label(bars, [f"{x['median_epoch_seconds']:.3f}s{speedup(x['speedup_vs_baseline'])}" for x in r], padding=3,
                 fontsize=8)
    ax.set(ylabel="seconds per epoch (median)", ylim=(0, max(median.max() * 1.35, 1e-3)),
           title=f"{c['epoch_size']} steps of [{c['batch_size']} x {c['num_steps']}] per epoch ({truncation(c)}), "
                 f"speed-up vs {result['baseline']}")
    return _png(fig)


def grid_plot(result):
    cells = result["cells"]
    fig, ((ax,),) = _figure(figsize=(len(cells) + 3, 4))
    median = lambda cell, name: cell["results"][name]["median_epoch_seconds"] if name else np.nan
    series = {"jax": [median(c, "jax") for c in cells], "fastest TF": [median(c, c["fastest_tf"]) for c in cells],
              "C loop": [c["results"]["c"]["median"] if "c" in c["results"] else np.nan for c in cells]}
    for (name, seconds), marker in zip(series.items(), "o^s"):
        ax.semilogy([f"{c['state_size']}/{c['num_steps']}" for c in cells], seconds, marker=marker, linestyle="",
                    label=name)
    ax.set(xlabel="state size / num_steps", ylabel="seconds per epoch (median)",
           title="rnn-compare bench --grid (large states: 100,000 points, no C loop)")
    ax.legend()
    return _png(fig)
