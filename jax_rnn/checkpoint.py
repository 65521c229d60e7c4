"""The one checkpoint format (`fit`, ``rnn-compare run`` and ``sweep``): a `Checkpoint` as an ``.npz`` (no
pickle), written atomically. A seed's epochs are regenerated and skipped, so the data needs no state."""

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

from .model import PARAM_KEYS, flatten, nest

FORMAT = "rnn-scan checkpoint v1"
GROUPS = ("params", "accumulators")


class Checkpoint(NamedTuple):
    config: dict               # what it continues (JSON-able, as ``meta``)
    epochs_done: int
    params: dict | None        # shared layout, float32 numpy (None: losses only)
    accumulators: dict | None  # Adagrad's, shared layout
    step_losses: np.ndarray    # f32[..., epochs_done, epoch_size]
    epoch_seconds: list
    meta: dict                 # the writer's record: the plan, what resuming checks


def atomic_write(path, data: bytes) -> Path:
    """``data`` to ``path`` atomically: an fsync'ed temporary file beside it, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600
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
    """Every array of an ``.npz`` file, without pickle; ValueError with the cause for anything else."""
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


def differences(saved: dict, config: dict, free=()) -> str:
    """Where a checkpoint's config and ``config`` differ (but ``free``): "key=a there vs b here, ..." or ""; no
    ``remat`` recorded: trained without."""
    saved = {"remat": False, **saved}
    return ", ".join(f"{k}={saved.get(k)!r} there vs {config.get(k)!r} here" for k in sorted({*saved, *config})
                     if k not in free and saved.get(k) != config.get(k))


def save(path, ckpt: Checkpoint) -> Path:
    arrays = {"format": np.array(FORMAT), "epochs_done": np.array(ckpt.epochs_done, np.int64),
              "step_losses": np.asarray(ckpt.step_losses, np.float32),
              "epoch_seconds": np.asarray(ckpt.epoch_seconds, np.float64),
              **{key: np.array(json.dumps(getattr(ckpt, key), sort_keys=True)) for key in ("config", "meta")}}
    for group in GROUPS:
        if getattr(ckpt, group) is not None:
            arrays.update({f"{group}/{key}": a for key, a in flatten(getattr(ckpt, group)).items()})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return atomic_write(path, buffer.getvalue())


def load(path, where: str = "resume") -> Checkpoint:
    """Read a checkpoint; FileNotFoundError/ValueError starting with ``where``, naming the path and the fault."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: no checkpoint file at {path}")
    try:
        arrays = read_npz(path)
    except ValueError as err:
        raise ValueError(f"{where}: cannot read {path} as an rnn-scan checkpoint ({err})") from None
    fmt = str(arrays.get("format", ""))
    if fmt != FORMAT:
        raise ValueError(f"{where}: {path} is not a {FORMAT!r} file (format {fmt or 'missing'!r})")
    groups = [g for g in GROUPS if any(k.startswith(g + "/") for k in arrays)]
    missing = sorted({*Checkpoint._fields, *(f"{g}/{k}" for g in groups for k in PARAM_KEYS)} - {*GROUPS, *arrays})
    if missing:
        raise ValueError(f"{where}: {path} lacks {', '.join(missing)}")
    trees = {}
    for group in groups:
        flat = {key: arrays[f"{group}/{key}"] for key in PARAM_KEYS}
        for key, a in flat.items():
            if not np.isfinite(a).all():
                raise ValueError(f"{where}: {path}: {group} {key} contains NaN or inf")
        trees[group] = nest(flat)
    config, meta = (json.loads(str(arrays[key])) for key in ("config", "meta"))
    return Checkpoint(config, int(arrays["epochs_done"]), trees.get("params"), trees.get("accumulators"),
                      arrays["step_losses"], list(arrays["epoch_seconds"]), meta)
