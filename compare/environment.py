"""Which device each framework runs on (``--device cpu|gpu|auto``), and what the machine is. TensorFlow
is imported (through ``tf_rnn``, which prepares legacy Keras first) only for a TensorFlow implementation."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import os
import platform
import sys

import jax
import numpy as np
from jax_rnn.cache import active_dir

from .config import UsageError

DEVICES = ("cpu", "gpu", "auto")
GPU_HELP = ("install the CUDA builds on a Linux machine with an NVIDIA driver: pip install -e '.[tf,cuda]' "
            "(jax[cuda12] and tensorflow[and-cuda]); or use --device cpu")


@dataclasses.dataclass(frozen=True)
class Devices:
    """The resolved device kind (``"cpu"`` or ``"gpu"``) for each framework; ``tf`` is None without TF."""

    requested: str
    jax: str
    tf: str | None


def _jax_gpus() -> list:
    try:
        return list(jax.devices("gpu"))
    except RuntimeError:  # no GPU backend
        return []


def _tf_gpus() -> list:
    import tf_rnn  # noqa: F401  (sets TF_USE_LEGACY_KERAS before TensorFlow is imported)
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def resolve(requested: str, need_tf: bool) -> Devices:
    """``--device``: ``cpu``; ``gpu`` (UsageError, before any work, if a framework sees none); ``auto``
    (the GPU wherever that framework sees one). Imports TensorFlow only if ``need_tf``."""
    if requested not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if requested == "cpu":
        if need_tf:
            import tf_rnn  # noqa: F401  (import now, so that loading TF is not timed as training)
        return Devices(requested, "cpu", "cpu" if need_tf else None)
    jax_gpu = bool(_jax_gpus())
    tf_gpu = bool(_tf_gpus()) if need_tf else False
    if requested == "gpu":
        if not jax_gpu:
            raise UsageError(f"--device gpu: JAX sees no GPU (jax.devices('gpu') failed); {GPU_HELP}")
        if need_tf and not tf_gpu:
            raise UsageError(f"--device gpu: TensorFlow sees no GPU (tf.config.list_physical_devices('GPU') "
                             f"is empty); {GPU_HELP}")
    return Devices(requested, "gpu" if jax_gpu else "cpu", ("gpu" if tf_gpu else "cpu") if need_tf else None)


def jax_device(kind: str):
    """The first JAX device of that kind (``"cpu"`` or ``"gpu"``)."""
    return jax.devices(kind)[0]


def _version(*dists: str) -> str | None:
    """The installed version of the first of ``dists`` that is installed (None if none is)."""
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    return None


def describe(devices: Devices) -> dict:
    """The ``environment`` block of a result: versions, devices, machine, JAX's compilation cache
    directory (None when off). The TensorFlow and tf-keras versions are always recorded, read from the
    installed packages' metadata without importing them (None if not installed); the TensorFlow device
    only if TensorFlow was used."""
    jd = jax_device(devices.jax)
    env = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "jax": jax.__version__,
        "jaxlib": _version("jaxlib"),
        "optax": _version("optax"),
        "tensorflow": _version("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
        "tf_keras": _version("tf-keras"),
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "jax_compile_cache": active_dir(),  # None: compile_seconds is a real compile, else maybe a cache load
        "device": {"requested": devices.requested,
                   "jax": {"kind": devices.jax, "name": getattr(jd, "device_kind", str(jd)), "id": str(jd)}},
    }
    tf = sys.modules.get("tensorflow")
    if tf is not None and devices.tf is not None:
        name = "cpu"
        if devices.tf == "gpu":
            gpus = _tf_gpus()
            try:
                name = tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)
            except (ValueError, IndexError):
                name = gpus[0].name if gpus else "gpu"
        env["device"]["tf"] = {"kind": devices.tf, "name": name}
    return env
