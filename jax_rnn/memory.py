"""Memory as an input limit: what is available, and `check`, which refuses a cell whose `Plan.memory` does not fit."""

from __future__ import annotations

import os

from .plan import Memory

LIMIT_ENV = "RNN_SCAN_MEMORY_LIMIT"  # bytes, or e.g. 8G
PARTS = {"weights": "state_size", "data": "data_size", "activations": "num_steps"}


class MemoryLimitError(ValueError, MemoryError):
    """Too large for the memory available: a bad argument, raised before allocating."""


def available(device=None) -> int:
    """Bytes: ``$RNN_SCAN_MEMORY_LIMIT``, else the OS's MemAvailable; the smaller of that and a GPU's free memory."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        try:
            return int(float(text.rstrip("KMGTkmgt")) * 1024 ** max(0, " KMGT".find(text[-1].upper())))
        except ValueError:
            raise ValueError(f"{LIMIT_ENV} must be bytes, or a number with K, M, G or T, got {text!r}") from None
    try:
        with open("/proc/meminfo") as f:
            free = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        free = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    stats = (getattr(device, "memory_stats", None) or dict)() or {}
    return min(free, stats["bytes_limit"] - stats.get("bytes_in_use", 0)) if "bytes_limit" in stats else free


def gib(size: int) -> str:
    return f"{size / 2**30:,.{0 if size >= 2**36 else 1 if size >= 2**30 else 2}f} GiB"


def check(config, need, free: int, name=str) -> Memory:
    """``need(**changes)``: the `Memory` of ``config`` with ``changes``. It, if it fits in ``free`` bytes; else
    `MemoryLimitError` naming (as ``name(field)``; None: leave it out) the argument behind the largest part and
    what fits: "state_size 100000 needs about 412 GiB (410 GiB for its weights); 22.8 GiB are available"."""
    memory = need()
    if memory.total <= free:
        return memory

    def fits(**changes):
        try:
            return need(**changes).total <= free
        except ValueError:  # no valid cell (too little data for a window): taken as fitting
            return None

    part = max(PARTS, key=memory._asdict().get)
    field = "backprop_steps" if part == "activations" and config.backprop_steps else PARTS[part]
    fit = [f"{name('remat')} (about {gib(need(remat=True).total)})"] if config.remat is False and name("remat") \
        and fits(remat=True) else []
    for size in ("batch_size", "data_size"):
        low, high = 0, getattr(config, size)
        while high - low > 1:  # the largest value that fits
            middle = (low + high) // 2
            low, high = (middle, high) if fits(**{size: middle}) is not False else (low, middle)
        fit += [f"{name(size)} {low:,} or less"] if low and fits(**{size: low}) else []
    runs, size = f" for {memory.runs} runs" * (memory.runs > 1), gib(getattr(memory, part) * memory.runs)
    raise MemoryLimitError(f"{name(field)} {getattr(config, field)} needs about {gib(memory.total)}{runs} ({size} for "
                           f"its {part}); {gib(free)} are available" + "; it would fit with " * bool(fit) + " or ".join(fit))
