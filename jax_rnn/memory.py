"""Memory as an input limit: what is available, and the refusal, before anything large is allocated, of a cell
whose `Plan.memory` does not fit, naming the argument behind it and what would fit instead."""

from __future__ import annotations

import os
from typing import Callable

from .plan import Memory

LIMIT_ENV = "RNN_SCAN_MEMORY_LIMIT"  # bytes, or e.g. 8G: the memory available, for tests and shared machines
PARTS = {"weights": "state_size", "data": "data_size", "activations": "num_steps"}


class MemoryLimitError(ValueError, MemoryError):
    """A cell needs more memory than is available: a bad argument (ValueError), raised instead of the allocation
    failure (MemoryError) that would come later."""


def available(device=None) -> int:
    """Bytes available: ``$RNN_SCAN_MEMORY_LIMIT`` if set, else the OS's MemAvailable; with a ``device`` that
    reports its memory (a GPU), the smaller of that and its free memory."""
    text = os.environ.get(LIMIT_ENV, "").strip()
    if text:
        try:
            return int(float(text.rstrip("KMGTkmgt")) * 1024 ** (" KMGT".index(text[-1].upper()) if text[-1].isalpha()
                                                                  else 0))
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


def check(config, need: Callable[..., Memory], free: int, name: Callable[[str], str] = str) -> Memory:
    """``need()``, the memory for ``config`` (with ``need(**changes)`` to its fields), if it fits in ``free`` bytes;
    else `MemoryLimitError`: "state_size 100000 needs about 419 GiB (419 GiB for its weights); 21 GiB are available",
    with what would fit (remat, at most a batch_size or data_size) where something would. ``name``: a field's name
    in the message (the CLI's options)."""
    memory = need()
    if memory.total <= free:
        return memory
    part = max(PARTS, key=memory._asdict().get)
    field = "backprop_steps" if part == "activations" and config.backprop_steps else PARTS[part]

    def fits(**changes):
        try:
            return need(**changes).total <= free
        except ValueError:  # no valid cell (too little data for a window): below the range, taken as fitting
            return None

    fit = [f"{name('remat')} (about {gib(need(remat=True).total)})"] if getattr(config, "remat", True) is False \
        and name("remat") and fits(remat=True) else []
    for size in ("batch_size", "data_size") if name("data_size") else ("batch_size",):
        low, high = 0, getattr(config, size)
        while high - low > 1:  # the largest value that fits
            middle = (low + high) // 2
            low, high = (middle, high) if fits(**{size: middle}) is not False else (low, middle)
        fit += [f"{name(size)} {low:,} or less"] if low and fits(**{size: low}) else []
    runs = f" for {memory.runs} runs" if memory.runs > 1 else ""
    raise MemoryLimitError(
        f"{name(field)} {getattr(config, field)} needs about {gib(memory.total)}{runs} ({gib(getattr(memory, part) * memory.runs)} "
        f"for its {part}); {gib(free)} are available" + (f"; it would fit with {' or '.join(fit)}" if fit else ""))
