"""``rnn-compare run|sweep --checkpoint DIR`` / ``--resume DIR``: one ``.npz`` per implementation (run) or
per cell (sweep), in the project's one checkpoint format (`jax_rnn.checkpoint`: atomic, no pickle).

``run`` writes ``DIR/<impl>.npz`` after every epoch; its ``config`` is the run's record (`config_record`),
its ``meta`` the implementation, the initial parameters' fingerprint, the data source and JAX's plan.
``sweep`` writes ``DIR/sweep-<num_steps>-<state_size>-<impl>.npz`` per cell: in progress with every
seed's parameters, finished with its losses only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jax_rnn import checkpoint as ckpt_io

from .config import UsageError, record

WRITER, CELL_WRITER = "rnn-compare run", "rnn-compare sweep"
FREE = ("epochs", "impls")  # what a resumed run may change; every other key of the record must match


def path(directory, impl: str) -> Path:
    return Path(directory) / f"{impl}.npz"


def config_record(config, impls, init_params: Optional[str], data: Optional[str], deterministic: bool) -> dict:
    return {**record(config, impls), "init_params": init_params, "data": data, "deterministic": deterministic}


def save(directory, impl: str, record: dict, history, trainer, initial_params: str, data: str) -> Path:
    meta = {"writer": WRITER, "impl": impl, "initial_params": initial_params, "data": data}
    return ckpt_io.save(path(directory, impl), history.checkpoint(record, trainer, meta))


def load(directory, impl: str, config: dict, initial_params: str, data: str) -> Optional[ckpt_io.Checkpoint]:
    """The checkpoint of ``impl`` in ``directory`` (None if none yet); UsageError naming what differs if it
    was written by another config, other starting parameters or other data, or is unreadable."""
    file = path(directory, impl)
    saved = _open(file, WRITER, f"an rnn-compare checkpoint of {impl}", lambda meta: meta.get("impl") == impl)
    if saved is None:
        return None
    _same(file, saved.config, config, [k for k in sorted(set(saved.config) | set(config)) if k not in FREE], "config")
    if saved.meta["initial_params"] != initial_params or saved.meta["data"] != data:
        raise UsageError(f"--resume: {file} started from other parameters or data than this run")
    if saved.epochs_done > config["epochs"]:
        raise UsageError(f"--resume: {file} holds {saved.epochs_done} epochs, more than --epochs {config['epochs']}")
    return saved


def check_dirs(checkpoint, resume) -> None:
    """UsageError before any work if ``--checkpoint`` is not a usable directory or ``--resume`` is missing."""
    if resume is not None and not Path(resume).is_dir():
        raise UsageError(f"--resume: {resume} is not a directory of checkpoints")
    if checkpoint is not None and Path(checkpoint).exists() and not Path(checkpoint).is_dir():
        raise UsageError(f"--checkpoint: {checkpoint} exists and is not a directory")
    if checkpoint is not None and resume is None and any(Path(checkpoint).glob("*.npz")):
        raise UsageError(f"--checkpoint: {checkpoint} already holds checkpoints; resume with --resume {checkpoint}, "
                         f"or choose an empty directory")


def cell_path(directory, record: dict) -> Path:
    """``sweep-<num_steps>-<state_size>-<impl>.npz``, ``sweep-<num_steps>x<backprop_steps>-...`` for TBPTT."""
    n, k2 = record["num_steps"], record["backprop_steps"]
    return Path(directory) / f"sweep-{n}{'' if k2 == n else f'x{k2}'}-{record['state_size']}-{record['impl']}.npz"


def save_cell(directory, record: dict, cell: ckpt_io.Checkpoint) -> Path:
    return ckpt_io.save(cell_path(directory, record), cell._replace(config=record, meta={**cell.meta,
                                                                                       "writer": CELL_WRITER}))


def load_cell(directory, record: dict) -> Optional[ckpt_io.Checkpoint]:
    """Sweep cell ``record``: finished (``params`` None), in progress, or None; UsageError if unreadable or
    written by another sweep."""
    file = cell_path(directory, record)
    saved = _open(file, CELL_WRITER, "an rnn-compare sweep checkpoint")
    if saved is not None:
        _same(file, saved.config, record, sorted(set(saved.config) | set(record)), "sweep")
    return saved


def _open(file: Path, writer: str, what: str, belongs=lambda meta: True) -> Optional[ckpt_io.Checkpoint]:
    if not file.is_file():
        return None
    try:
        saved = ckpt_io.load(file, where="--resume")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if saved.meta.get("writer") != writer or not belongs(saved.meta):
        raise UsageError(f"--resume: {file} is not {what}")
    return saved


def _same(file: Path, there: dict, here: dict, keys, what: str) -> None:
    differ = [k for k in keys if there.get(k) != here.get(k)]
    if differ:
        detail = ", ".join(f"{k}={there.get(k)!r} there vs {here.get(k)!r} here" for k in differ)
        raise UsageError(f"--resume: {file} was written by another {what} ({detail}); refusing to resume from it")
