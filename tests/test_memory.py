"""Sizes that cannot fit: refused before anything large is allocated, naming the argument and what would fit; an
allocation that fails all the same is one line at the CLI. ``RNN_SCAN_MEMORY_LIMIT`` stands in for the machine."""

import time

import jax
import numpy as np
import pytest

import jax_rnn
from compare import cli
from compare.bench import PeakRss
from jax_rnn.memory import LIMIT_ENV, available

SMALL = ["--data-size", "20000", "--batch-size", "20", "--quiet"]


def test_the_plan_counts_weights_data_and_activations():
    plan = jax_rnn.plan(64, 50, 400, backend="cpu")
    m, remat = plan.memory(10**6), jax_rnn.plan(64, 50, 400, remat=True, backend="cpu").memory(10**6)
    assert m.weights == 11 * 4 * ((2 + 64 + 1) * 64 + 65 * 2) and m.data == 10**6 * (32 + 2 * 6)
    assert remat.activations < m.activations / 5 and remat[:2] == m[:2]
    assert jax_rnn.plan(64, 50, 400, runs=3).memory(10**6).total == 3 * (m.total - m.runtime) + m.runtime


def test_available_memory_is_the_os_s_or_the_limit_given(monkeypatch):
    assert 0 < available() < 2**50
    for text, size in ("1G", 2**30), ("1.5k", 1536), ("12345", 12345):
        monkeypatch.setenv(LIMIT_ENV, text)
        assert available() == size
    monkeypatch.setenv(LIMIT_ENV, "lots")
    with pytest.raises(ValueError, match=f"{LIMIT_ENV} must be bytes"):
        available()


def _refused(argv, capsys, tmp_path) -> str:
    jax.devices()  # JAX's runtime is not what is measured
    start = time.perf_counter()
    with PeakRss() as rss, pytest.raises(SystemExit) as exc:
        cli.main([*argv, "--out", str(tmp_path)])
    assert exc.value.code == 2 and time.perf_counter() - start < 10 and rss.peak_mib < 100
    assert not list(tmp_path.iterdir())  # no result file
    return capsys.readouterr().err


@pytest.mark.parametrize("argv, limit, message", [
    (["run", "--impl", "jax", "--state-size", "100000"], None,  # the machine's own memory
     r"--state-size 100000 needs about [\d,]+ GiB \([\d,]+ GiB for its weights\); [\d.,]+ GiB are available$"),
    (["bench", "--impl", "jax", "--state-size", "100000"], None, "--state-size 100000 needs about"),
    (["run", "--impl", "jax", "--data-size", "30000000"], "1G",
     r"--data-size 30000000 needs about 1\.\d GiB \(1\.\d GiB for its data\); 1\.0 GiB are available; it would fit "
     r"with --data-size 2[\d,]+ or less$"),
    (["run", "--impl", "jax", "--state-size", "256", "--num-steps", "2000", "--data-size", "400000"], "1G",
     r"--num-steps 2000 needs about 2\.\d GiB \(2\.\d GiB for its activations\); 1\.0 GiB are available; it would fit "
     r"with --remat \(about 0.\d\d GiB\) or --batch-size \d\d or less$"),
    (["run", "--impl", "jax", "--state-size", "256", "--num-steps", "5", "--backprop-steps", "2000",
      "--data-size", "400000"], "1G", r"--backprop-steps 2000 needs about 2\.\d GiB .* it would fit with --remat"),
    (["run", "--impl", "jax,tf-dynamic", "--state-size", "5000"], "1G", r"--state-size 5000 needs about 1\.\d GiB"),
    (["sweep", "--impl", "jax", "--state-size", "4000", "--num-steps", "5", "--seeds", "3", "--workers", "1"], "1G",
     r"--state-size 4000 needs about 2\.\d GiB for 3 runs"),
    (["sweep", "--impl", "jax", "--state-size", "64", "--num-steps", "2000", "--data-size", "400000"], "1G",
     r"--num-steps 2000 needs about .* it would fit with --batch-size \d+ or less$"),  # no --remat in a sweep
    (["bench", "--grid", "--states", "4", "--steps", "1", "--large-states", "8000"], "1G",
     "--large-states 8000 needs about"),
])
def test_a_size_that_cannot_fit_is_refused_before_anything_is_allocated(argv, limit, message, monkeypatch, capsys,
                                                                        tmp_path):
    if limit:
        monkeypatch.setenv(LIMIT_ENV, limit)
    if "tf-dynamic" in argv[2]:
        import tf_rnn  # noqa: F401  (TensorFlow's import is not what is measured)
    err = _refused(argv, capsys, tmp_path)
    assert "Traceback" not in err
    assert pytest.importorskip("re").search(message, err.splitlines()[-1]), err


def test_fit_raises_a_memory_limit_error_before_drawing_the_weights(monkeypatch):
    start = time.perf_counter()
    with pytest.raises(jax_rnn.MemoryLimitError, match=r"^state_size 100000 needs about [\d,]+ GiB") as err:
        jax_rnn.fit(jax_rnn.FitConfig(state_size=100_000))
    assert isinstance(err.value, ValueError) and isinstance(err.value, MemoryError)
    assert time.perf_counter() - start < 5
    monkeypatch.setenv(LIMIT_ENV, "1G")
    config = jax_rnn.FitConfig(state_size=256, num_steps=2000, data_size=400_000)
    with pytest.raises(jax_rnn.MemoryLimitError, match=r"^num_steps 2000 .* it would fit with remat \(about"):
        jax_rnn.fit(config)
    assert config.memory().total > 2**30 > jax_rnn.FitConfig(**{**config.__dict__, "remat": True}).memory().total


class JaxRuntimeError(RuntimeError):
    pass


class ResourceExhaustedError(Exception):
    pass


@pytest.mark.parametrize("error, caught", [
    (MemoryError("Unable to allocate 74.5 GiB for an array"), True),
    (JaxRuntimeError("RESOURCE_EXHAUSTED: Out of memory allocating 80000000000 bytes."), True),
    (ResourceExhaustedError("OOM when allocating tensor"), True),
    (JaxRuntimeError("INTERNAL: something else"), False),
])
def test_an_allocation_that_fails_all_the_same_is_one_line(error, caught, monkeypatch, capsys, tmp_path):
    def run_out(*args):
        raise error
    monkeypatch.setattr(jax_rnn.JaxTrainer, "start_epoch", run_out)
    argv = ["run", "--impl", "jax", *SMALL, "--out", str(tmp_path)]
    if not caught:
        with pytest.raises(JaxRuntimeError):
            cli.main(argv)
        return
    assert cli.main(argv) == 3
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rnn-compare: out of memory ({type(error).__name__}: ")
    assert not list(tmp_path.iterdir())
    with pytest.raises(type(error)):
        cli.main(["--debug", *argv])


def test_checkpoints_written_before_running_out_stay_intact(monkeypatch, capsys, tmp_path):
    start_epoch, calls = jax_rnn.JaxTrainer.start_epoch, []

    def second_runs_out(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("Unable to allocate")
        return start_epoch(self, *args)
    monkeypatch.setattr(jax_rnn.JaxTrainer, "start_epoch", second_runs_out)
    out, ckpt = tmp_path / "out", tmp_path / "ckpt"
    assert cli.main(["run", "--impl", "jax", *SMALL, "--epochs", "3", "--checkpoint", str(ckpt), "--out", str(out)]) == 3
    assert "out of memory" in capsys.readouterr().err and not out.exists()
    assert jax_rnn.checkpoint.load(ckpt / "jax.npz").epochs_done == 1
