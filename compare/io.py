"""Files in and out: the input ``.npz`` files (validated), parameters under their flat keys (``rnn_cell/W``...),
and the outputs, written atomically and never over an existing file unless ``--overwrite``."""

from __future__ import annotations

import hashlib
import io
import json
import os
from pathlib import Path

import numpy as np
from jax_rnn import data as task
from jax_rnn.checkpoint import atomic_write, read_npz
from jax_rnn.model import PARAM_KEYS, flatten, nest, param_shapes

from .config import UsageError

OUTPUT_EXTS = ("json", "md", "png")


def fingerprint(params: dict) -> str:
    """A short SHA-256 of the parameter values: equal fingerprints mean identical starting points."""
    digest = hashlib.sha256()
    for key, value in flatten(params).items():
        digest.update(key.encode())
        digest.update(np.ascontiguousarray(value, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _load_npz(path: str, option: str, keys: tuple[str, ...]) -> dict:
    """The arrays of ``path``; UsageError unless it is a readable ``.npz`` file of exactly ``keys``."""
    if not os.path.isfile(path):
        raise UsageError(f"{option}: no such file: {path}")
    try:
        arrays = read_npz(path)
    except ValueError as err:
        raise UsageError(f"{option}: cannot read {path} as an .npz file ({err})") from None
    if set(arrays) != set(keys):
        raise UsageError(f"{option}: {path} must hold exactly the keys {', '.join(keys)}; "
                         f"got {', '.join(sorted(arrays)) or 'none'}")
    return arrays


def load_params(path: str, num_classes: int, state_size: int) -> dict:
    """Read initial parameters (``--init-params``); UsageError naming a missing/extra key or bad shape."""
    arrays = _load_npz(path, "--init-params", PARAM_KEYS)
    shapes = param_shapes(num_classes, state_size)
    for key in PARAM_KEYS:
        a, shape = arrays[key], shapes[key.split("/")[0]][key.split("/")[1]]
        if a.shape != shape:
            raise UsageError(f"--init-params: {path}: {key} must have shape {list(shape)} for state size "
                             f"{state_size}, got {list(a.shape)}")
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            raise UsageError(f"--init-params: {path}: {key} must hold finite floats, got dtype {a.dtype}")
    return nest(arrays)


def load_data(path: str, num_classes: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Read ``--data``: keys ``x``, ``y``, integer arrays ``[epochs, data_size]`` with values in [0, n).

    **Returns:** ``(x, y)``, both ``int32[epochs, data_size]``.
    """
    arrays = _load_npz(path, "--data", ("x", "y"))
    try:
        return task.check_rows(arrays["x"], arrays["y"], num_classes)
    except ValueError as err:
        raise UsageError(f"--data: {path}: {err}") from None


def check_writable(path: Path, overwrite: bool, option: str) -> Path:
    """UsageError if ``path`` exists (and not ``overwrite``) or its directory cannot be created."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{option}: {path} exists; pass --overwrite to replace it, or choose another name")
    if path.is_dir():
        raise UsageError(f"{option}: {path} is a directory")
    parent = path.parent
    if parent.exists() and not parent.is_dir():
        raise UsageError(f"{option}: {parent} is not a directory")
    return path


write_bytes = atomic_write  # the project's one writer: a temporary file in the same directory, then os.replace


def write_text(path: Path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def save_params(path: Path, params: dict) -> Path:
    """Save parameters as ``.npz`` with the flat keys (atomically)."""
    buffer = io.BytesIO()
    np.savez(buffer, **flatten(params))
    return write_bytes(path, buffer.getvalue())


def params_path(pattern: str, impl: str) -> Path:
    """``--save-params`` path of one implementation: ``{impl}`` in the pattern is replaced by the name;
    without it, ``-<impl>`` is inserted before the suffix (``p.npz`` -> ``p-jax.npz``)."""
    if "{impl}" in pattern:
        return Path(pattern.replace("{impl}", impl))
    path = Path(pattern)
    return path.with_name(f"{path.stem}-{impl}{path.suffix or '.npz'}")


def output_paths(command: str, out_dir: str, name: str | None, json_path: str | None, overwrite: bool,
                 stamp: str) -> dict[str, Path]:
    """``{"json", "md", "png"}`` -> ``<out_dir>/<name>.<ext>``, checked before any work. ``name`` defaults to
    ``<command>-<stamp>``, then ``-2``, ``-3``... until no file of that name exists."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is not a directory")
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise UsageError(f"--name: {name!r} must be a plain file name stem (no '/')")
    stem, k = name or f"{command}-{stamp}", 2
    while not name and any((out / f"{stem}.{ext}").exists() for ext in OUTPUT_EXTS):
        stem, k = f"{command}-{stamp}-{k}", k + 1
    paths = {ext: out / f"{stem}.{ext}" for ext in OUTPUT_EXTS}
    if json_path:
        paths["json"] = Path(json_path)
    for kind, path in paths.items():
        check_writable(path, overwrite, "--json" if kind == "json" and json_path else "--name/--out")
    return paths
