"""`fit`'s checkpoints: one ``.npz`` file (no pickle), written atomically at the end of every epoch.

Contents: ``format``; ``config`` (the `FitConfig` as JSON); ``epochs_done``; ``params/<scope>/<name>``
(float32); ``opt/<i>``, the leaves of the optimizer state in ``jax.tree.leaves`` order (rebuilt on load
with the structure of ``optimizer.init(params)``); ``step_losses: f32[epochs_done, epoch_size]``;
``epoch_seconds``; ``rng``, the data seed (``[seed]``: the epochs are `jax_rnn.data.epochs` of it, so
the data of the remaining epochs follows from it); ``data_rows``, a SHA-256 of each epoch's data when the
caller passed ``data`` ("generated" otherwise).

Atomic: the bytes go to a temporary file in the same directory (``.NAME.<random>.tmp``), are flushed
and fsync'ed, then ``os.replace``-d over the target, so the target is always either the previous
complete checkpoint or the new complete one, even if the process is killed mid-write. A stray
temporary file (left by a SIGKILL) is never read: `load` opens only the path it is given.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import NamedTuple

import numpy as np

from .layout import PARAM_KEYS

FORMAT = "jax_rnn.fit checkpoint v2"  # v2: rng holds [seed] (v1: a jax.random key)


class Checkpoint(NamedTuple):
    config: dict               # FitConfig fields
    epochs_done: int
    params: dict               # shared layout, float32 numpy
    opt_leaves: list           # numpy arrays, jax.tree.leaves order
    step_losses: np.ndarray    # f32[epochs_done, epoch_size]
    epoch_seconds: list
    rng: np.ndarray            # [seed] of the data stream
    data_rows: list            # per-epoch data hashes, or ["generated"]


def atomic_write(path, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same directory and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def read_npz(path) -> dict:
    """Every array of an ``.npz`` file, read without pickle; ValueError (with the cause) for anything else:
    a damaged or truncated archive, a plain ``.npy`` file, a pickle, text."""
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
        if magic != b"PK\x03\x04":
            what = "a single .npy array" if magic == b"\x93NUM" else "not a zip archive"
            raise ValueError(f"not an .npz archive ({what})")
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise ValueError(f"{type(err).__name__}: {err}") from None


def data_hash(x: np.ndarray, y: np.ndarray) -> str:
    """SHA-256 (16 hex digits) of one epoch's ``x, y`` as int32."""
    digest = hashlib.sha256(np.ascontiguousarray(x, np.int32).tobytes())
    digest.update(np.ascontiguousarray(y, np.int32).tobytes())
    return digest.hexdigest()[:16]


def save(path, ckpt: Checkpoint) -> Path:
    arrays = {"format": np.array(FORMAT), "config": np.array(json.dumps(ckpt.config, sort_keys=True)),
              "epochs_done": np.array(ckpt.epochs_done, np.int64),
              "step_losses": np.asarray(ckpt.step_losses, np.float32),
              "epoch_seconds": np.asarray(ckpt.epoch_seconds, np.float64),
              "rng": np.asarray(ckpt.rng, np.int64), "data_rows": np.array(json.dumps(list(ckpt.data_rows)))}
    for key in PARAM_KEYS:
        scope, name = key.split("/")
        arrays[f"params/{key}"] = np.asarray(ckpt.params[scope][name], np.float32)
    for i, leaf in enumerate(ckpt.opt_leaves):
        arrays[f"opt/{i}"] = np.asarray(leaf)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(path, buffer.getvalue())


def load(path) -> Checkpoint:
    """Read a checkpoint; FileNotFoundError / ValueError naming the path and what is wrong."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint file at {path}")
    try:
        arrays = read_npz(path)
    except ValueError as err:
        raise ValueError(f"resume: cannot read {path} as a jax_rnn checkpoint ({err})") from None
    fmt = str(arrays.get("format", ""))
    if fmt != FORMAT:
        raise ValueError(f"resume: {path} is not a {FORMAT!r} file (format {fmt or 'missing'!r})")
    required = {"config", "epochs_done", "step_losses", "epoch_seconds", "rng", "data_rows",
                *(f"params/{k}" for k in PARAM_KEYS)}
    missing = sorted(required - set(arrays))
    if missing:
        raise ValueError(f"resume: {path} lacks {', '.join(missing)}")
    params: dict = {}
    for key in PARAM_KEYS:
        scope, name = key.split("/")
        value = arrays[f"params/{key}"]
        if not np.all(np.isfinite(value)):
            raise ValueError(f"resume: {path}: params {key} contains NaN or inf")
        params.setdefault(scope, {})[name] = value
    count = sum(1 for key in arrays if key.startswith("opt/"))
    opt_leaves = [arrays[f"opt/{i}"] for i in range(count)]
    return Checkpoint(json.loads(str(arrays["config"])), int(arrays["epochs_done"]), params, opt_leaves,
                      arrays["step_losses"], list(arrays["epoch_seconds"]), arrays["rng"],
                      json.loads(str(arrays["data_rows"])))
