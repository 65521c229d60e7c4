"""JAX's persistent compilation cache (jax_rnn.cache, ``rnn-compare cache``, ``--no-compile-cache``).

Whatever turns the cache on runs in a subprocess, so this process's JAX configuration never changes
(conftest.py turns the cache off for the test session: RNN_SCAN_COMPILE_CACHE=0).
"""

import json
import os
import subprocess
import sys

import jax
import pytest
from test_cli import ROOT, SMALL

from compare.cli import main
from jax_rnn import cache as compile_cache


def _env(cache_dir) -> dict:
    env = {k: v for k, v in os.environ.items() if k != compile_cache.SWITCH_ENV}
    return {**env, compile_cache.DIR_ENV: str(cache_dir)}


def _entries(cache_dir) -> set:
    return {p.name for p in cache_dir.iterdir() if p.name.endswith("-cache")}


def test_enable_writes_entries_and_a_fresh_compile_loads_them(tmp_path):
    """The AOT path the trainers use (``lower().compile()``): a miss that writes, then a hit."""
    code = ("import sys, jax, jax.numpy as jnp; from jax_rnn import enable_compile_cache\n"
            "from jax_rnn.cache import active_dir\n"
            "events = []; jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))\n"
            "assert active_dir() is None and enable_compile_cache(sys.argv[1]) is not None\n"
            "assert active_dir() == sys.argv[1], active_dir()\n"
            "f = jax.jit(lambda x: jnp.tanh(x) * 2.0); x = jax.ShapeDtypeStruct((3,), jnp.float32)\n"
            "f.lower(x).compile(); jax.clear_caches(); f.lower(x).compile()\n"
            "print(*(events.count(f'/jax/compilation_cache/cache_{e}') for e in ('misses', 'hits')))")
    cache = tmp_path / "cache"
    out = subprocess.run([sys.executable, "-c", code, str(cache)], cwd=ROOT, env=_env(tmp_path / "unused"),
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["1", "1"]
    assert len(_entries(cache)) == 1 and compile_cache.cache_size(cache)[0] == 1
    assert not (tmp_path / "unused").exists()  # an explicit path wins over RNN_SCAN_CACHE_DIR


@pytest.mark.parametrize("value", ["0", "off", "False", "no"])
def test_env_var_turns_it_off(value, tmp_path, monkeypatch):
    monkeypatch.setenv(compile_cache.SWITCH_ENV, value)
    assert compile_cache.disabled_by_env()
    assert compile_cache.enable_compile_cache(tmp_path / "cache") is None and compile_cache.active_dir() is None
    assert not (tmp_path / "cache").exists() and jax.config.jax_compilation_cache_dir is None


@pytest.mark.parametrize("value", ["", "1", "on", "yes"])
def test_other_values_leave_it_on(value, monkeypatch):
    monkeypatch.setenv(compile_cache.SWITCH_ENV, value)
    assert not compile_cache.disabled_by_env()


def test_default_dir(tmp_path, monkeypatch):
    monkeypatch.delenv(compile_cache.DIR_ENV, raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert compile_cache.default_dir() == tmp_path / ".cache" / "rnn-scan" / "jax"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert compile_cache.default_dir() == tmp_path / "xdg" / "rnn-scan" / "jax"
    monkeypatch.setenv(compile_cache.DIR_ENV, str(tmp_path / "mine"))
    assert compile_cache.default_dir() == tmp_path / "mine"


def test_clear_deletes_only_jax_files(tmp_path):
    cache = tmp_path / "cache"
    (cache / "xla_gpu_per_fusion_autotune_cache_dir").mkdir(parents=True)
    for name, size in [("jit_f-abc-cache", 100), ("jit_f-abc-atime", 8), ("jit_g-def-cache", 50),
                       ("xla_gpu_per_fusion_autotune_cache_dir/x", 10), ("notes.txt", 1000)]:
        (cache / name).write_bytes(b"x" * size)
    assert compile_cache.cache_size(cache) == (2, 168)
    assert compile_cache.clear_compile_cache(cache) == (2, 168)
    assert [p.name for p in cache.iterdir()] == ["notes.txt"]  # not JAX's: kept, and so the directory
    (cache / "notes.txt").unlink()
    (cache / "jit_h-cache").write_bytes(b"x")
    assert compile_cache.clear_compile_cache(cache) == (1, 1) and not cache.exists()
    assert compile_cache.cache_size(cache) == compile_cache.clear_compile_cache(cache) == (0, 0)


@pytest.mark.slow
def test_cli_caches_by_default_and_results_are_bit_identical(tmp_path, monkeypatch, capsys):
    """Run 1 fills the cache; run 2 finds every executable there (it writes nothing new); run 3
    (--no-compile-cache) neither reads nor writes it. All three give the same losses, bit for bit."""
    def run(name, cache, *extra):
        argv = [sys.executable, "-m", "compare", "run", "--impl", "jax", *SMALL, "--out", str(tmp_path),
                "--name", name, *extra]
        subprocess.run(argv, cwd=ROOT, env=_env(cache), check=True, capture_output=True)
        return json.loads((tmp_path / f"{name}.json").read_text())

    cache = tmp_path / "cache"
    first = run("a", cache)
    written = _entries(cache)
    second = run("b", cache)
    assert written and _entries(cache) == written
    fresh = run("c", tmp_path / "off", "--no-compile-cache")
    assert not (tmp_path / "off").exists()
    assert [r["environment"]["jax_compile_cache"] for r in (first, second, fresh)] == [str(cache)] * 2 + [None]
    losses = [r["results"]["jax"]["step_losses"] for r in (first, second, fresh)]
    assert losses[0] == losses[1] == losses[2]

    monkeypatch.setenv(compile_cache.DIR_ENV, str(cache))
    assert main(["cache"]) == 0 and cache.exists()
    out = capsys.readouterr().out
    assert str(cache) in out and "(off: RNN_SCAN_COMPILE_CACHE=0)" in out and f": {len(written)} entries" in out
    assert main(["cache", "--clear"]) == 0 and not cache.exists()
    assert f"cleared {len(written)} entries" in capsys.readouterr().out
