"""``rnn-compare run|sweep --checkpoint DIR`` / ``--resume DIR``: the CLI's checkpoints, one ``.npz`` each.

``run`` writes one ``DIR/<impl>.npz`` per implementation, after every epoch, in the project's one
checkpoint format (`jax_rnn.checkpoint`, shared with `jax_rnn.fit`): ``config`` is `Config.as_dict`
plus the input files; ``meta`` holds ``writer`` ("rnn-compare run"), ``impl``, ``initial_params`` (the
fingerprint), ``data`` (the data source), ``build_seconds`` and ``first_step_seconds``. Parameters and
Adagrad's accumulators are in the shared layout, the same arrays for JAX and TensorFlow. ``sweep`` writes
one ``DIR/sweep-<num_steps>-<state_size>-<impl>.npz`` per cell (`save_cell`): a JAX cell after every
epoch, with every seed's parameters; when the cell is done, its losses only. A resumed sweep loads the
finished cells and continues the others.
Writing (atomic, no pickle) and the regenerated data stream: `jax_rnn.checkpoint`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from jax_rnn import checkpoint as ckpt_io

from .config import Config, UsageError

WRITER = "rnn-compare run"
MATCHED = ("num_steps", "backprop_steps", "state_size", "batch_size", "learning_rate", "data_size", "seed",
           "num_classes", "init_params", "data", "deterministic")  # what a resumed run must share with the checkpoint


def path(directory, impl: str) -> Path:
    return Path(directory) / f"{impl}.npz"


def save(directory, impl: str, record: dict, history, trainer, initial_params: str, data: str) -> Path:
    """``DIR/<impl>.npz``: the training so far (a `jax_rnn.driver.History` and its trainer's parameters)."""
    meta = {"writer": WRITER, "impl": impl, "initial_params": initial_params, "data": data}
    return ckpt_io.save(path(directory, impl), history.checkpoint(record, trainer, meta))


def load(directory, impl: str, config: dict, initial_params: str, data: str) -> Optional[ckpt_io.Checkpoint]:
    """The checkpoint of ``impl`` in ``directory`` (None if there is none yet), checked against this run:
    UsageError naming what differs if it was written by another config, other starting parameters or
    other data, or if it is unreadable."""
    file = path(directory, impl)
    saved = _open(file, WRITER, f"an rnn-compare checkpoint of {impl}", lambda meta: meta.get("impl") == impl)
    if saved is None:
        return None
    _same(file, saved.config, config, MATCHED, "config")
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


def config_record(config: Config, init_params: Optional[str], data: Optional[str], deterministic: bool) -> dict:
    return {**config.as_dict(), "init_params": init_params, "data": data, "deterministic": deterministic}


CELL_WRITER = "rnn-compare sweep"


def cell_path(directory, record: dict) -> Path:
    """``sweep-<num_steps>-<state_size>-<impl>.npz``, ``sweep-<num_steps>x<backprop_steps>-...`` for TBPTT."""
    n, k2 = record["num_steps"], record["backprop_steps"]
    return Path(directory) / f"sweep-{n}{'' if k2 == n else f'x{k2}'}-{record['state_size']}-{record['impl']}.npz"


def save_cell(directory, record: dict, cell: ckpt_io.Checkpoint) -> Path:
    """Sweep cell ``record`` (grid config, impl, seeds) in the one checkpoint format, as its config: in
    progress, the trainer's checkpoint (parameters of every seed, `jax_rnn.driver.History.checkpoint`);
    finished, without parameters, ``step_losses: f32[seeds, epochs, epoch_size]`` and in ``meta`` its
    ``diverged`` per seed, ``seconds`` and ``time`` split."""
    return ckpt_io.save(cell_path(directory, record), cell._replace(config=record, meta={**cell.meta,
                                                                                       "writer": CELL_WRITER}))


def load_cell(directory, record: dict) -> Optional[ckpt_io.Checkpoint]:
    """Sweep cell ``record`` from ``directory``: finished (``params`` None) or in progress, or None if it is
    not there; UsageError if the file is unreadable or was written by another sweep."""
    file = cell_path(directory, record)
    saved = _open(file, CELL_WRITER, "an rnn-compare sweep checkpoint")
    if saved is not None:
        _same(file, saved.config, record, sorted(set(saved.config) | set(record)), "sweep")
    return saved


def _open(file: Path, writer: str, what: str, belongs=lambda meta: True) -> Optional[ckpt_io.Checkpoint]:
    """Checkpoint ``file`` (`jax_rnn.checkpoint`), None if there is none yet; UsageError if it is unreadable
    or not ``what`` (its writer, and ``belongs(meta)``)."""
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
    """UsageError naming every key of ``keys`` whose value differs between the checkpoint and this run."""
    differ = [k for k in keys if there.get(k) != here.get(k)]
    if differ:
        detail = ", ".join(f"{k}={there.get(k)!r} there vs {here.get(k)!r} here" for k in differ)
        raise UsageError(f"--resume: {file} was written by another {what} ({detail}); refusing to resume from it")
