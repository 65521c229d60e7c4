"""A sweep over N processes: ``jax.distributed`` connects them, `allgather` shares results; `launch` starts N here."""

import os
import pickle
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple

import jax
import numpy as np

from .io import UsageError

HEARTBEAT_SECONDS = 20  # JAX stops every process when one is silent this long


class Group(NamedTuple):
    index: int = 0
    count: int = 1


def _address(coordinator):
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator: expected HOST:PORT (PORT 1-65535), got {coordinator!r}")
    return host.strip("[]"), int(port)


def _port_free(port):
    try:
        socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True).close()
        return True
    except OSError:
        return False


def _reachable(host, port, seconds):
    end = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return True
        except OSError:
            if time.monotonic() > end:
                return False
            time.sleep(0.2)


def _die(message):
    print(f"rnn-compare sweep: {message}", file=sys.stderr, flush=True)
    os._exit(1)


def connect(cluster, coordinator, num_processes, process_id, timeout) -> Group:
    """Join the ``jax.distributed`` job (``cluster``: as JAX detects it) before anything touches a device. JAX
    aborts on a port in use, an absent coordinator or a process that never comes: checked first, within ``timeout``."""
    given = (coordinator, num_processes, process_id)
    if not cluster and given == (None,) * 3:
        return Group()
    if not cluster:
        if None in given:
            raise UsageError("--coordinator, --num-processes and --process-id go together (or --cluster alone)")
        host, port = _address(coordinator)
        if num_processes < 1 or not 0 <= process_id < num_processes:
            raise UsageError(f"--process-id {process_id}: must be 0 to {num_processes - 1} (--num-processes "
                             f"{num_processes})" if num_processes >= 1 else "--num-processes: must be >= 1")
        if process_id == 0 and not _port_free(port):
            raise UsageError(f"--coordinator {coordinator}: port {port} is in use here (process 0 serves on it)")
        if process_id and not _reachable(host, port, timeout):
            raise UsageError(f"--coordinator {coordinator}: nothing answered within {timeout} s (is process 0 "
                             "running, with this address?)")
    where = f"--coordinator {coordinator}" if coordinator else "the cluster's coordinator"
    watchdog = threading.Timer(timeout, _die, [f"not all processes joined {where} within {timeout} s: is every one "
                                               "started, with the same --num-processes?"])
    watchdog.daemon = True
    watchdog.start()
    jax.distributed.initialize(coordinator, num_processes, process_id, initialization_timeout=timeout + 30,
                               heartbeat_timeout_seconds=HEARTBEAT_SECONDS)
    watchdog.cancel()
    if num_processes is not None and jax.process_count() != num_processes:
        raise UsageError(f"--num-processes {num_processes}: the job at --coordinator {coordinator} has "
                         f"{jax.process_count()}")
    return Group(jax.process_index(), jax.process_count())


def allgather(obj, group: Group) -> list:
    """Every process's ``obj`` (picklable), in process order; every process calls it."""
    if group.count == 1:
        return [obj]
    from jax.experimental.multihost_utils import process_allgather
    blob = np.frombuffer(pickle.dumps(obj), np.uint8)
    sizes = process_allgather(np.array([blob.size])).ravel()
    blobs = process_allgather(np.pad(blob, (0, int(sizes.max()) - blob.size)))
    return [pickle.loads(b[:n].tobytes()) for b, n in zip(blobs, sizes)]


def _free_port():
    with socket.create_server(("127.0.0.1", 0)) as s:
        return s.getsockname()[1]


def _stop(children):
    for child in children:
        if child.poll() is None:
            child.terminate()
    end = time.monotonic() + 5
    for child in children:
        try:
            child.wait(max(0.0, end - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def launch(argv, processes, timeout):
    """Run ``rnn-compare argv`` (a sweep) as ``processes`` local processes, each on a share of the cores; exit status
    0, the first failure's (the others stopped), or 130 on Ctrl-C."""
    cores = sorted(os.sched_getaffinity(0))
    shares = [s.tolist() or [cores[i % len(cores)]] for i, s in enumerate(np.array_split(cores, processes))]
    where = ["--coordinator", f"127.0.0.1:{_free_port()}", "--num-processes", str(processes), "--timeout", str(timeout)]
    children, logs = [], []
    try:
        for i, share in enumerate(shares):
            logs.append(None if i == 0 else tempfile.TemporaryFile())
            children.append(subprocess.Popen(
                [sys.executable, "-m", "compare", *argv, *where, "--process-id", str(i)],
                stdout=None if i == 0 else subprocess.DEVNULL, stderr=logs[-1], start_new_session=True,
                preexec_fn=lambda share=share: os.sched_setaffinity(0, share)))
        while None in (codes := [c.poll() for c in children]) and not any(codes):
            time.sleep(0.05)
    except KeyboardInterrupt:
        _stop(children)
        print(f"rnn-compare sweep: stopped all {processes} processes (Ctrl-C); nothing written", file=sys.stderr)
        return 130
    failed = next((i for i, code in enumerate(codes) if code), None)
    _stop(children)
    if failed is None:
        return 0
    code = codes[failed]
    if failed and code > 0:
        logs[failed].seek(0)
        sys.stderr.write(logs[failed].read().decode(errors="replace")[-3000:])
    how = f"was killed (signal {-code})" if code < 0 else f"exited with status {code}"
    print(f"rnn-compare sweep: process {failed} of {processes} {how}; stopped the others; no result written "
          "(--checkpoint DIR keeps finished cells for --resume DIR)", file=sys.stderr)
    return code if code > 0 else 1
