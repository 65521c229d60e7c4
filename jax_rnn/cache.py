"""JAX's persistent compilation cache in ``$RNN_SCAN_CACHE_DIR`` or ``$XDG_CACHE_HOME/rnn-scan/jax``, made ``0700``
(the cache is trusted code); ``RNN_SCAN_COMPILE_CACHE=0`` turns it off."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import jax
from jax.experimental.compilation_cache import compilation_cache

DIR_ENV, SWITCH_ENV = "RNN_SCAN_CACHE_DIR", "RNN_SCAN_COMPILE_CACHE"
_ENTRY_SUFFIXES = ("-cache", "-atime")  # JAX's <key>-cache files, <key>-atime when evicting
_JAX_EXTRAS = (".lockfile", "xla_gpu_per_fusion_autotune_cache_dir", "xla_gpu_kernel_cache_file")


def default_dir() -> Path:
    if os.environ.get(DIR_ENV):
        return Path(os.environ[DIR_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "rnn-scan" / "jax"


def disabled_by_env() -> bool:
    return os.environ.get(SWITCH_ENV, "").strip().lower() in ("0", "off", "false", "no")


def enable_compile_cache(path=None) -> Path | None:
    """Cache every compile of this process in ``path`` (default `default_dir`); the directory, or None if off."""
    if disabled_by_env():
        return None
    directory = Path(path).expanduser() if path is not None else default_dir()
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if jax.config.jax_compilation_cache_dir != str(directory):
        compilation_cache.reset_cache()  # JAX opens its cache once per process
    jax.config.update("jax_compilation_cache_dir", str(directory))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return directory


def active_dir() -> str | None:
    return jax.config.jax_compilation_cache_dir if jax.config.jax_enable_compilation_cache else None


def _jax_items(directory: Path) -> list[Path]:
    """JAX's files and folders in ``directory``, nothing else."""
    if not directory.is_dir():
        return []
    return [p for p in directory.iterdir()
            if (p.is_file() and p.name.endswith(_ENTRY_SUFFIXES)) or p.name in _JAX_EXTRAS]


def cache_size(path=None) -> tuple[int, int]:
    """``(entries, bytes)`` in the cache directory (default `default_dir`)."""
    items = _jax_items(Path(path) if path is not None else default_dir())
    files = [f for item in items for f in ([item] if item.is_file() else item.rglob("*")) if f.is_file()]
    return sum(f.name.endswith("-cache") for f in items), sum(f.stat().st_size for f in files)


def clear_compile_cache(path=None) -> tuple[int, int]:
    """Delete JAX's files in the cache directory, then the directory if empty; `cache_size` before."""
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
