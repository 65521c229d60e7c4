"""PNG figures of a result dict, one function per command (matplotlib's Agg backend, loaded on the first
plot; nothing is shown, the PNG's bytes are returned)."""

from __future__ import annotations

import io

import numpy as np

from jax_rnn import data as task
from .report import fit_label, setting, truncation, truncation_steps
from .run import LOG_EVERY


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    _pyplot().close(fig)
    return buffer.getvalue()


def _targets(ax, labels: bool = True) -> None:
    """The three analytic targets as grey lines; ``labels``: named at the right end."""
    for (key, name), style in zip(task.LEVEL_NAMES.items(), (":", "--", "-.")):
        value = getattr(task.TARGETS, key)
        ax.axhline(value, color="grey", linestyle=style, linewidth=1)
        if labels:
            ax.annotate(f"{name.removeprefix('the ')} ({value:.4f})", (1.0, value), xycoords=("axes fraction", "data"),
                        xytext=(-4, 2), textcoords="offset points", ha="right", va="bottom", fontsize=8,
                        color="dimgrey")


def _spread(mean: np.ndarray, records: list[dict], low: str, high: str) -> np.ndarray:
    """Error bars ``[2, n]`` from ``mean`` down to each record's ``low`` and up to its ``high``."""
    return np.array([[m - r[low], r[high] - m] for m, r in zip(mean, records)]).T


def block_ends(epochs: int, epoch_size: int, every: int = LOG_EVERY) -> np.ndarray:
    """The training step at which each running average of `compare.run.running_averages` ends: block
    ``b`` of epoch ``e`` ends at step ``e * epoch_size + (b + 1) * every`` (``every`` capped at
    ``epoch_size``; the remainder of an epoch that fills no block has no point). ``int[epochs * blocks]``."""
    every = min(every, epoch_size)
    blocks = np.arange(1, epoch_size // every + 1) * every
    return (np.arange(epochs)[:, None] * epoch_size + blocks[None, :]).reshape(-1)


def run_plot(result: dict) -> bytes:
    """Loss every 100 steps (x: training step) for each implementation, with the target lines."""
    fig, ax = _pyplot().subplots(figsize=(8, 4.5))
    # Identical runs overlap exactly: distinct markers, shrinking, keep every curve visible.
    c = result["config"]
    x = block_ends(c["epochs"], c["epoch_size"])
    for k, (impl, r) in enumerate(result["results"].items()):
        avg = np.asarray(r["avg_losses"], np.float64)  # None (not a number) reads as NaN
        ax.plot(x[: len(avg)], avg, marker="osD^x"[k % 5], markersize=max(2, 7 - 1.2 * k),
                fillstyle="none", linewidth=1.2, label=impl)
    _targets(ax)
    ax.set(xlabel="training step", ylabel="mean loss of the last 100 steps", title=setting(c))
    ax.set_ylim(task.TARGETS.both - 0.03, max(0.72, ax.get_ylim()[1]))
    ax.legend(loc="upper center", ncol=min(5, len(result["results"])), fontsize=8)
    return _png(fig)


def truncation_plot(result: dict) -> bytes:
    """r2rt's "Styles of Truncated Backpropagation": final loss (seed mean, min-max bars) against
    backprop_steps k2, one line per num_steps k1 and implementation (its first point, k2 = k1, is the
    tutorial's truncation), one panel per state size."""
    c = result["config"]
    fig, axes = _pyplot().subplots(1, len(c["state_size"]), figsize=(5.5 * len(c["state_size"]), 4.2),
                                   sharey=True, squeeze=False, constrained_layout=True)
    for ax, state_size in zip(axes[0], c["state_size"]):
        lines: dict = {}
        for cell in result["cells"]:
            if cell["state_size"] == state_size and cell["mean"] is not None:
                lines.setdefault((cell["num_steps"], cell["impl"]), []).append(cell)
        for (k1, impl), cells in sorted(lines.items()):
            cells.sort(key=lambda cell: cell["backprop_steps"])
            mean = np.array([cell["mean"] for cell in cells])
            label = f"update every {k1} step{'s' if k1 > 1 else ''}" + (f" ({impl})" if len(c["impls"]) > 1 else "")
            ax.errorbar([cell["backprop_steps"] for cell in cells], mean, yerr=_spread(mean, cells, "min", "max"),
                        marker="o", capsize=3, linewidth=1.2, label=label)
        _targets(ax, labels=ax is axes[0][-1])
        ax.set(title=f"state {state_size}", xlabel="backprop steps k2 (first point of a line: k2 = k1, TF style)")
        ax.set_xticks(sorted({cell["backprop_steps"] for cell in result["cells"]}))
    axes[0][0].set_ylabel("final loss (seed mean, min-max)")
    axes[0][0].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"TBPTT(k1, k2): {len(c['seeds'])} seed(s), {c['epochs']} epoch(s) of {c['data_size']:,} points",
                 fontsize=10)
    return _png(fig)


def sweep_plot(result: dict) -> bytes:
    """A grid: rows the truncations (num_steps, backprop_steps), columns state_size; in each, the seed-mean
    curve of every implementation. A sweep with a backprop-steps axis: `truncation_plot`."""
    c = result["config"]
    if any(k1 != k2 for k1, k2 in c.get("truncations") or ()):
        return truncation_plot(result)
    rows = [tuple(t) for t in c.get("truncations") or [(n, n) for n in c["num_steps"]]]
    cols = c["state_size"]
    height = 2.8 if len(rows) <= 4 else 2.0
    fig, axes = _pyplot().subplots(len(rows), len(cols), figsize=(4 * len(cols), height * len(rows)), sharey=True,
                                   squeeze=False, constrained_layout=True)
    for cell in result["cells"]:
        ax = axes[rows.index(truncation_steps(cell))][cols.index(cell["state_size"])]
        curve = np.asarray(cell["avg_losses_mean"], np.float64)
        # One point per 100 steps (or one per epoch if an epoch is shorter): x in epochs.
        ax.plot(c["epochs"] * np.arange(1, len(curve) + 1) / len(curve), curve, linewidth=1.2, label=cell["impl"])
        ax.set_title(f"{truncation(cell)}, state {cell['state_size']}: {cell['level']}", fontsize=9)
    for i, row in enumerate(axes):
        for j, ax in enumerate(row):
            _targets(ax, labels=(i == 0 and j == len(row) - 1))
            ax.set_ylim(task.TARGETS.both - 0.03, 0.72)
            if i == len(axes) - 1:
                ax.set_xlabel("epoch")
            if j == 0:
                ax.set_ylabel("mean loss")
    axes[0][0].legend(fontsize=8)
    fig.suptitle(f"final loss over {len(c['seeds'])} seed(s), {c['epochs']} epoch(s)", fontsize=10)
    return _png(fig)


def bench_plot(result: dict) -> bytes:
    """Steady-state seconds per epoch per implementation: median bars, min-max error bars."""
    names = list(result["results"])
    r = [result["results"][n] for n in names]
    median = np.array([x["median_epoch_seconds"] for x in r], np.float64)
    fig, ax = _pyplot().subplots(figsize=(1.4 * len(names) + 2, 4))
    bars = ax.bar(names, median, yerr=_spread(median, r, "min_epoch_seconds", "max_epoch_seconds"), capsize=4,
                  color="tab:blue")
    for bar, x in zip(bars, r):
        label = f"{x['median_epoch_seconds']:.3f}s"
        if x.get("speedup_vs_baseline") is not None:
            label += f"\n{x['speedup_vs_baseline']:.2f}x"
        ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 3),
                    textcoords="offset points", ha="center", va="bottom", fontsize=8)
    c = result["config"]
    ax.set(ylabel="seconds per epoch (median)",
           title=f"{c['epoch_size']} steps of [{c['batch_size']} x {c['num_steps']}] per epoch ({truncation(c)}), "
                 f"speed-up vs {result['baseline']}")
    ax.set_ylim(0, max(median.max() * 1.35, 1e-3))
    return _png(fig)


def grid_plot(result: dict) -> bytes:
    """``bench --grid``: seconds per epoch per cell (log scale) of JAX, the C loop and the fastest TF version."""
    cells = result["cells"]
    labels = [f"{c['state_size']}/{c['num_steps']}" for c in cells]
    fig, ax = _pyplot().subplots(figsize=(1.0 * len(cells) + 3, 4))
    series = {"jax": [c["results"]["jax"]["median_epoch_seconds"] for c in cells],
              "C loop": [c["results"]["c"]["median"] if "c" in c["results"] else np.nan for c in cells],
              "fastest TF": [c["results"][c["fastest_tf"]]["median_epoch_seconds"] if c["fastest_tf"] else np.nan
                             for c in cells]}
    for (name, seconds), marker in zip(series.items(), "os^"):
        ax.semilogy(labels, np.asarray(seconds, np.float64), marker=marker, linestyle="", label=name)
    ax.set(xlabel="state size / num_steps", ylabel="seconds per epoch (median)",
           title="rnn-compare bench --grid (large states: 100,000 points, no C loop)")
    ax.legend()
    return _png(fig)


def scaling_plot(result: dict) -> bytes:
    """One log-log panel per swept parameter: median seconds per epoch, a line per implementation/device."""
    params = list(result["config"]["sweeps"])
    fig, axes = _pyplot().subplots(1, len(params), figsize=(5 * len(params), 4), squeeze=False)
    for ax, param in zip(axes[0], params):
        for fit in (f for f in result["fits"] if f["parameter"] == param):
            label = fit_label(fit) + ("" if fit["slope"] is None else f", slope {fit['slope']:.2f}")
            ax.loglog(fit["values"], np.asarray(fit["seconds"], np.float64), marker="o",
                      linestyle="--" if fit["device"] == "gpu" else "-", label=label)
        ax.set(xlabel=param, ylabel="seconds per epoch (median)", title=f"cost as {param} grows")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"{result['config']['data_size']:,} points per epoch; other parameters at the tutorial's defaults",
                 fontsize=10)
    return _png(fig)
