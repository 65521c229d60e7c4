"""JAX's persistent compilation cache in a per-user directory: compile an epoch once, load it afterwards.

XLA compiles ``train_epoch_guarded`` for one config in about 1-2 s on 2 CPU cores. With the cache on,
a later process asking for the same computation (same shapes, options, XLA flags, device and jax/jaxlib
version) loads the executable from disk instead (~0.05 s; tracing and lowering, ~0.15 s, still run); a
change to any of these is a new entry, never a stale one. Nothing here runs on import: the entry points
(``rnn-compare``, ``python -m jax_rnn.bench``) call `enable_compile_cache`; ``jax_rnn.fit`` users may too.

Where, how to turn it off and how to clear it: `default_dir`, `disabled_by_env`, `clear_compile_cache`
(and the README's "Compilation cache").

JAX options set (see ``jax/_src/config.py``): ``jax_compilation_cache_dir``;
``jax_persistent_cache_min_compile_time_secs = 0`` (the default, 1 s, would skip our sub-second
compiles); ``jax_persistent_cache_min_entry_size_bytes = -1`` (no size floor). On CPU nothing else is
needed; ``jax_persistent_cache_enable_xla_caches`` only concerns GPU autotuning, kept at JAX's default.
JAX's own ``JAX_ENABLE_COMPILATION_CACHE=false`` still wins. As JAX warns, the cache is trusted code:
keep it where only you can write (the directory is created ``0700``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional, Union

import jax
from jax.experimental.compilation_cache import compilation_cache

DIR_ENV = "RNN_SCAN_CACHE_DIR"
SWITCH_ENV = "RNN_SCAN_COMPILE_CACHE"
OFF_VALUES = ("0", "off", "false", "no")
_ENTRY_SUFFIXES = ("-cache", "-atime")  # jax._src.lru_cache: <key>-cache, and <key>-atime when evicting
_JAX_EXTRAS = (".lockfile", "xla_gpu_per_fusion_autotune_cache_dir", "xla_gpu_kernel_cache_file")


def default_dir() -> Path:
    """``$RNN_SCAN_CACHE_DIR``, else ``$XDG_CACHE_HOME/rnn-scan/jax`` (``XDG_CACHE_HOME``: ``~/.cache``)."""
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rnn-scan" / "jax"


def disabled_by_env() -> bool:
    """True when ``RNN_SCAN_COMPILE_CACHE`` is ``0``, ``off``, ``false`` or ``no`` (any case)."""
    return os.environ.get(SWITCH_ENV, "").strip().lower() in OFF_VALUES


def enable_compile_cache(path: Union[str, os.PathLike, None] = None) -> Optional[Path]:
    """Turn on JAX's persistent compilation cache for this process, from now on.

    **Arguments:** ``path``: the cache directory (default: `default_dir`), created if missing.
    **Returns:** the directory, or None when ``RNN_SCAN_COMPILE_CACHE`` turns the cache off (then
    nothing changes).

        from jax_rnn.compile_cache import enable_compile_cache
        enable_compile_cache()               # before the first compile
        jax_rnn.fit(jax_rnn.FitConfig())     # a second process doing this loads the compiled epoch
    """
    if disabled_by_env():
        return None
    directory = Path(path).expanduser() if path is not None else default_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(directory):
        compilation_cache.reset_cache()  # JAX opens its cache once per process: reopen it at the new path
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory


def active_dir() -> Optional[str]:
    """The directory JAX caches executables in for this process, or None if the cache is off."""
    if not jax.config.jax_enable_compilation_cache:
        return None
    return jax.config.jax_compilation_cache_dir


def _jax_items(directory: Path) -> list[Path]:
    """JAX's files and folders directly in ``directory`` (nothing else there is ever counted or deleted)."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir()
            if (p.is_file() and p.name.endswith(_ENTRY_SUFFIXES)) or p.name in _JAX_EXTRAS]


def cache_size(path: Union[str, os.PathLike, None] = None) -> tuple[int, int]:
    """``(entries, bytes)`` of the cache directory (default: `default_dir`); ``(0, 0)`` if it is absent.
    Entries are JAX's ``<key>-cache`` files, one compiled executable each; bytes count all of JAX's files."""
    items = _jax_items(Path(path) if path is not None else default_dir())
    files = [f for item in items for f in ([item] if item.is_file() else item.rglob("*")) if f.is_file()]
    return sum(f.name.endswith("-cache") for f in items), sum(f.stat().st_size for f in files)


def clear_compile_cache(path: Union[str, os.PathLike, None] = None) -> tuple[int, int]:
    """Delete the cache (default: `default_dir`); returns the ``(entries, bytes)`` it held.

    Only JAX's files are deleted (``*-cache``, ``*-atime``, its lock file and GPU cache folders), then
    the directory itself once empty: a mistaken ``RNN_SCAN_CACHE_DIR`` never costs anything else."""
    directory = Path(path) if path is not None else default_dir()
    held = cache_size(directory)
    for item in _jax_items(directory):
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item)
        else:
            item.unlink()
    if directory.is_dir() and not any(directory.iterdir()):
        directory.rmdir()
    return held
