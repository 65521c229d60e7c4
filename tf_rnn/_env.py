"""Environment set-up for TensorFlow 2.16+: legacy Keras for the TF1 cells, and quiet logs.

TensorFlow >= 2.16 ships Keras 3, which lacks ``tf.compat.v1.nn.rnn_cell.BasicRNNCell`` ("not available
with Keras 3"), the cell of the static and dynamic versions. So before TensorFlow is first imported,
this module sets ``TF_USE_LEGACY_KERAS=1`` unless the caller set a non-empty value (other than 1: a
RuntimeError), and checks that the ``tf-keras`` package (Keras 2) is installed (else a clear
ImportError). In this process and its children, ``tf.keras`` and TensorFlow's lazily loaded
Keras-backed symbols (``tf.compat.v1.nn.rnn_cell``) then resolve to Keras 2; a plain ``import keras``
still imports Keras 3. TensorFlow reads the variable once, the first time such a symbol is touched: if
that happened before ``tf_rnn`` was imported, `check_legacy_cells` raises a RuntimeError saying so.

Log noise is off by default: ``TF_CPP_MIN_LOG_LEVEL=2`` (unless set), the ``tensorflow``/``absl``
loggers at ERROR, deprecation warnings off, and the C++ messages of loading TensorFlow and of first
listing devices (oneDNN, CUDA drivers, cuInit without a GPU) captured from file descriptor 2
(`capture_fd2`). ``RNN_SCAN_TF_VERBOSE=1`` before importing ``tf_rnn`` shows everything;
``set_verbose(True)`` later, the Python-side logs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import warnings
from typing import Callable, Iterator, MutableMapping

LEGACY_KERAS_VAR = "TF_USE_LEGACY_KERAS"
VERBOSE_VAR = "RNN_SCAN_TF_VERBOSE"

MISSING_TF_KERAS = (
    "tf_rnn needs the tf-keras package (pip install tf-keras, or pip install -e '.[tf]') because "
    "TensorFlow >= 2.16 ships Keras 3, which lacks BasicRNNCell and the other TF1 RNN cells that the "
    "tutorial's static_rnn / dynamic_rnn versions use."
)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _check_legacy_keras(find_spec: Callable = importlib.util.find_spec,
                        environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``TF_USE_LEGACY_KERAS=1`` unless the caller chose a value; fail clearly if it cannot work.
    ``find_spec`` and ``environ`` are injectable to simulate a missing ``tf_keras`` or a set variable."""
    if not environ.get(LEGACY_KERAS_VAR, "").strip():  # unset or empty: ours to set
        environ[LEGACY_KERAS_VAR] = "1"
    if not _truthy(environ.get(LEGACY_KERAS_VAR)):
        raise RuntimeError(
            f"tf_rnn needs {LEGACY_KERAS_VAR}=1 (the TF1 RNN cells are not available with Keras 3), "
            f"but it is set to {environ.get(LEGACY_KERAS_VAR)!r}; unset it or set it to 1."
        )
    try:
        found = find_spec("tf_keras") is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a broken installation
        found = False
    if not found:
        raise ImportError(MISSING_TF_KERAS)


def check_legacy_cells(tf) -> None:
    """Raise RuntimeError if ``tf.compat.v1.nn.rnn_cell`` already resolved to the Keras 3 stubs."""
    try:
        tf.compat.v1.nn.rnn_cell.BasicRNNCell  # noqa: B018  (attribute access is the probe)
    except AttributeError as err:
        raise RuntimeError(
            "tf.compat.v1.nn.rnn_cell.BasicRNNCell is unavailable: TensorFlow already loaded Keras 3 "
            f"before tf_rnn could set {LEGACY_KERAS_VAR}=1. Import tf_rnn before anything touches "
            f"tf.keras / tf.compat.v1.nn.rnn_cell, or export {LEGACY_KERAS_VAR}=1 before starting Python."
        ) from err


@contextlib.contextmanager
def capture_fd2() -> Iterator[None]:
    """Swallow file descriptor 2 (C++ logs) while the block runs; if the block raises, the captured text is
    written back to stderr first."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (unusual embedding): do nothing
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        failed = False
        try:
            yield
        except BaseException:
            failed = True
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            if failed:
                tmp.seek(0)
                sys.stderr.write(tmp.read().decode("utf-8", "replace"))


# Python warnings raised from TensorFlow's and Keras' own modules (deprecations, Keras UserWarnings).
_TF_MODULES = r"(tensorflow|tf_keras|keras)(\.|$)"
_FILTERS = {action: [(action, category, _TF_MODULES) for category in (DeprecationWarning, UserWarning)]
            for action in ("default", "ignore")}


class _Settings:
    """The current `set_verbose` setting."""

    verbose = False


def set_verbose(verbose: bool) -> None:
    """Turn TensorFlow's Python-side logging and deprecation warnings on (True) or off (False).

    Idempotent: its warning filters (scoped to TensorFlow's and Keras' modules) replace those of an
    earlier call. C++ messages printed at import time cannot be recalled; see ``RNN_SCAN_TF_VERBOSE``.
    """
    _Settings.verbose = bool(verbose)
    level = logging.INFO if verbose else logging.ERROR
    for name in ("tensorflow", "absl", "tf_keras"):
        logging.getLogger(name).setLevel(level)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        tf.get_logger().setLevel(level)
        try:
            from tensorflow.python.util import deprecation
            deprecation._PRINT_DEPRECATION_WARNINGS = verbose
        except ImportError:  # private module moved: the logger level still applies
            pass
    ours = {f for group in _FILTERS.values() for f in group}
    warnings.filters[:] = [f for f in warnings.filters
                           if (f[0], f[2], getattr(f[3], "pattern", f[3])) not in ours]
    for action, category, module in _FILTERS["default" if verbose else "ignore"]:
        warnings.filterwarnings(action, category=category, module=module)


@contextlib.contextmanager
def quiet_warnings() -> Iterator[None]:
    """Ignore Python warnings inside the block unless verbose (graph building's deprecation warnings
    otherwise survive test runners that reset warning filters)."""
    if _Settings.verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def import_tensorflow():
    """Prepare the environment, import TensorFlow quietly (unless verbose) and return the module."""
    verbose = _truthy(os.environ.get(VERBOSE_VAR))
    _check_legacy_keras()
    if not verbose and not os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # INFO and WARNING off, errors still shown
    with contextlib.nullcontext() if verbose else capture_fd2():
        import tensorflow as tf
        tf.config.list_physical_devices()  # its cuInit errors without a GPU, captured here once
    check_legacy_cells(tf)
    set_verbose(verbose)
    return tf
