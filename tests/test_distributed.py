"""Sweeps and `train_runs` over several processes on jax.distributed (localhost): the one-process results, clean
errors on faults and bad input, resume. Every process a test starts is stopped before it ends."""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from compare.cli import main

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ["sweep", "--impl", "jax", "--num-steps", "1,5", "--state-size", "4,8", "--seeds", "2", "--epochs", "2",
         "--data-size", "20000", "--batch-size", "20", "--quiet"]


def _cli(argv, **kw):
    return subprocess.run([sys.executable, "-m", "compare", *argv], cwd=ROOT, capture_output=True, text=True, **kw)


def _finals(path):
    return [(c["num_steps"], c["state_size"], c["final_losses"], c["avg_losses"])
            for c in json.loads(Path(path).read_text())["cells"]]


def _children(pid):
    """The pids whose parent is ``pid`` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    out = tmp_path_factory.mktemp("one")
    assert _cli([*SWEEP, "--out", str(out), "--name", "one"]).returncode == 0
    return _finals(out / "one.json")


def test_two_processes_give_the_one_process_sweep_bit_for_bit(one_process, tmp_path):
    """Each process compiles the per-run program a single process would (all seeds of a cell, vmapped), so the
    losses are equal bit for bit; only process 0 writes files."""
    done = _cli([*SWEEP, "--processes", "2", "--out", str(tmp_path), "--name", "two"])
    assert done.returncode == 0, done.stderr
    assert _finals(tmp_path / "two.json") == one_process
    assert json.loads((tmp_path / "two.json").read_text())["config"]["processes"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["two.json", "two.md", "two.png"]


def test_a_killed_process_stops_the_sweep_cleanly_and_resume_finishes_it(one_process, tmp_path):
    """SIGKILL one of two processes part-way: the sweep exits non-zero within 60 s naming it, leaves no process
    and no result file; ``--resume`` over two processes then ends with the uninterrupted results."""
    ck = tmp_path / "ck"
    sweep = subprocess.Popen([sys.executable, "-m", "compare", *SWEEP, "--processes", "2", "--checkpoint", str(ck),
                              "--out", str(tmp_path), "--name", "killed"], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(ck.glob("*.npz")) and sweep.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        children = _children(sweep.pid)
        assert len(children) == 2, "the sweep finished before a process could be killed"
        os.kill(children[1], signal.SIGKILL)
        killed = time.monotonic()
        status = sweep.wait(60)
        assert time.monotonic() - killed < 60 and status != 0
        assert "process 1 of 2 was killed (signal 9)" in sweep.stderr.read()
        assert not _children(sweep.pid) and not list(tmp_path.glob("killed.*"))
    finally:
        sweep.kill()
        for pid in _children(sweep.pid):
            os.kill(pid, signal.SIGKILL)
    resumed = _cli([*SWEEP, "--processes", "2", "--resume", str(ck), "--out", str(tmp_path), "--name", "resumed"])
    assert resumed.returncode == 0, resumed.stderr
    assert _finals(tmp_path / "resumed.json") == one_process
    assert len(list(ck.glob("*.npz"))) == 4


def _free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


@pytest.mark.parametrize("argv, message", [
    (["--process-id", "2", "--num-processes", "2"], "--process-id 2: must be 0 to 1 (--num-processes 2)"),
    (["--process-id", "1", "--num-processes", "2", "--timeout", "1"], "nothing answered within 1 s"),
    (["--coordinator", "localhost", "--process-id", "0", "--num-processes", "2"], "--coordinator: expected HOST:PORT"),
    (["--processes", "2", "--process-id", "0"], "--processes starts its own jax.distributed job"),
    (["--process-id", "0"], "--coordinator, --num-processes and --process-id go together"),
])
def test_bad_process_options_are_named_before_anything_connects(argv, message, capsys, tmp_path):
    argv = ["--coordinator", f"127.0.0.1:{_free_port()}", *argv] if "--coordinator" not in argv else argv
    with pytest.raises(SystemExit) as exc:
        main([*SWEEP, "--out", str(tmp_path), *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_a_port_in_use_is_named(capsys, tmp_path):
    with socket.create_server(("", 0), family=socket.AF_INET6, dualstack_ipv6=True) as busy:
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit):
            main([*SWEEP, "--out", str(tmp_path), "--coordinator", f"127.0.0.1:{port}", "--num-processes", "2",
                  "--process-id", "0"])
    assert f"port {port} is in use here" in capsys.readouterr().err


def test_a_process_that_never_comes_is_named_within_the_timeout(tmp_path):
    """Process 0 of 2 alone (a mismatched --num-processes looks the same to it): a clear error after --timeout."""
    start = time.monotonic()
    done = _cli([*SWEEP, "--out", str(tmp_path), "--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", "2",
                 "--process-id", "0", "--timeout", "3"], timeout=60)
    assert done.returncode == 1 and time.monotonic() - start < 30
    assert "not all processes joined" in done.stderr and "--num-processes" in done.stderr
    assert not list(tmp_path.iterdir())


TRAIN_RUNS = textwrap.dedent("""
    import sys, jax, numpy as np
    if len(sys.argv) > 2:
        jax.distributed.initialize(sys.argv[2], 2, int(sys.argv[3]))
    from jax.experimental import multihost_utils
    import jax_rnn
    from jax_rnn import data as task, optim
    from jax_rnn.model import glorot_params

    runs = 4
    params = jax.tree.map(lambda *a: np.stack(a), *[glorot_params(2, 4, seed) for seed in range(runs)])
    optimizer = optim.adagrad(0.1)
    data = [next(task.epochs(10_000, seed, 1)) for seed in range(runs)]
    x, y = task.windows(np.stack([d[0] for d in data]), np.stack([d[1] for d in data]), 50, 5)
    mesh = jax_rnn.run_mesh(jax.devices())  # every process's devices
    *_, losses = jax_rnn.train_runs(params, jax.vmap(optimizer.init)(params), x, y, optimizer, mesh=mesh)
    np.save(sys.argv[1], multihost_utils.process_allgather(losses, tiled=True))
""")


def test_train_runs_on_a_mesh_over_two_processes_equals_one_process(tmp_path):
    import numpy as np

    script = tmp_path / "train_runs.py"
    script.write_text(TRAIN_RUNS)
    address = f"127.0.0.1:{_free_port()}"
    procs = [subprocess.Popen([sys.executable, str(script), tmp_path / f"{i}.npy", address, str(i)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for i in range(2)]
    try:
        assert [p.wait(120) for p in procs] == [0, 0]
    finally:
        for p in procs:
            p.kill()
    subprocess.run([sys.executable, str(script), tmp_path / "alone.npy"], cwd=ROOT, capture_output=True, check=True)
    expected = np.load(tmp_path / "alone.npy")
    assert expected.shape == (4, 40)
    for i in range(2):
        np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), expected)
