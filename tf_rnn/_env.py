"""Environment set-up for TensorFlow 2.16+: legacy Keras for the TF1 cells, and quiet logs.

TensorFlow >= 2.16 ships Keras 3, in which ``tf.compat.v1.nn.rnn_cell.BasicRNNCell`` raises "not
available with Keras 3". The tutorial this package reimplements (r2rt, "Recurrent Neural Networks in
Tensorflow I") needs that cell, so before TensorFlow is first imported this module

* sets ``TF_USE_LEGACY_KERAS=1`` unless it is set to a non-empty value (an explicit value of the caller
  wins; a value other than 1 is a RuntimeError),
  and checks that the ``tf-keras`` package (Keras 2) is installed: a clear ImportError if it is not.

What that changes for the caller, in this process and in child processes that inherit the
environment: ``tf.keras`` (and TensorFlow's lazily loaded Keras-backed symbols such as
``tf.compat.v1.nn.rnn_cell``) resolve to ``tf_keras`` (Keras 2) instead of Keras 3. A plain
``import keras`` is not affected: it still imports Keras 3. TensorFlow reads the variable once, the
first time such a symbol is touched, so if the caller touched one before importing ``tf_rnn``,
`check_legacy_keras` raises a RuntimeError saying to import ``tf_rnn`` first.

Log noise is kept out of the way by default: ``TF_CPP_MIN_LOG_LEVEL=2`` (setdefault), the Python
``tensorflow``/``absl`` loggers at ERROR, deprecation warnings off, and the C++ messages TensorFlow
prints while loading (oneDNN, "could not find cuda drivers", CPU features) and while first listing
devices (cuInit failures on machines without a GPU) captured from file descriptor 2; they are kept in
`CAPTURED_STDERR` and replayed if the import fails. Set ``RNN_SCAN_TF_VERBOSE=1`` before importing
``tf_rnn`` to see everything, or call ``set_verbose(True)`` afterwards (Python-side logs only).
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
CAPTURED_STDERR: list[str] = []  # C++ log lines swallowed while importing TensorFlow / listing devices

MISSING_TF_KERAS = (
    "tf_rnn needs the tf-keras package (pip install tf-keras, or pip install -e '.[tf]') because "
    "TensorFlow >= 2.16 ships Keras 3, which lacks BasicRNNCell and the other TF1 RNN cells that the "
    "tutorial's static_rnn / dynamic_rnn versions use."
)


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def verbose_requested(environ: MutableMapping[str, str] = os.environ) -> bool:
    """True when ``RNN_SCAN_TF_VERBOSE`` asks for TensorFlow's full log output."""
    return _truthy(environ.get(VERBOSE_VAR))


def _check_legacy_keras(find_spec: Callable = importlib.util.find_spec,
                        environ: MutableMapping[str, str] = os.environ) -> None:
    """Set ``TF_USE_LEGACY_KERAS=1`` unless the caller chose a value; fail clearly if it cannot work.

    Raises ImportError if ``tf_keras`` cannot be found (``find_spec`` is injectable to simulate it) and
    RuntimeError if the caller set the variable to something other than 1.
    """
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
    """Raise RuntimeError if ``tf.compat.v1.nn.rnn_cell`` already resolved to the Keras 3 stubs.

    That happens when TensorFlow was imported, and its rnn_cell module touched, before ``tf_rnn``
    set ``TF_USE_LEGACY_KERAS`` (TensorFlow reads the variable once and caches the result).
    """
    try:
        tf.compat.v1.nn.rnn_cell.BasicRNNCell  # noqa: B018  (attribute access is the probe)
    except AttributeError as err:
        raise RuntimeError(
            "tf.compat.v1.nn.rnn_cell.BasicRNNCell is unavailable: TensorFlow already loaded Keras 3 "
            f"before tf_rnn could set {LEGACY_KERAS_VAR}=1. Import tf_rnn before anything touches "
            f"tf.keras / tf.compat.v1.nn.rnn_cell, or export {LEGACY_KERAS_VAR}=1 before starting Python."
        ) from err


@contextlib.contextmanager
def capture_fd2(enabled: bool = True) -> Iterator[None]:
    """Redirect the process's file descriptor 2 (C++ logs) to a temporary file while the block runs.

    The captured text is appended to `CAPTURED_STDERR`; if the block raises, it is written back to
    stderr first so that nothing needed to understand the error is lost.
    """
    if not enabled:
        yield
        return
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
            tmp.seek(0)
            text = tmp.read().decode("utf-8", "replace")
            if text:
                CAPTURED_STDERR.append(text)
                if failed:
                    sys.stderr.write(text)


# Python warnings raised from TensorFlow's and Keras' own modules (deprecations, Keras UserWarnings).
_TF_MODULES = r"(tensorflow|tf_keras|keras)(\.|$)"
_FILTERS = {action: [(action, category, _TF_MODULES) for category in (DeprecationWarning, UserWarning)]
            for action in ("default", "ignore")}


class _Settings:
    """The current `set_verbose` setting."""

    verbose = False


def set_verbose(verbose: bool) -> None:
    """Turn TensorFlow's Python-side logging and deprecation warnings on (True) or off (False).

    Idempotent: the warning filters it installs (scoped to TensorFlow's and Keras' modules) replace the
    ones of an earlier call instead of piling up. C++ messages printed at import time cannot be
    recalled; see ``RNN_SCAN_TF_VERBOSE``.
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
    """Ignore Python warnings inside the block unless verbose (the deprecated-cell warnings of graph
    building are raised each time and otherwise survive test runners that reset warning filters)."""
    if _Settings.verbose:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def import_tensorflow():
    """Prepare the environment, import TensorFlow quietly (unless verbose) and return the module."""
    verbose = verbose_requested()
    _check_legacy_keras()
    if not verbose and not os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # INFO and WARNING off, errors still shown
    with capture_fd2(enabled=not verbose):
        import tensorflow as tf
        # Listing devices initialises the CUDA platform; on a machine without a GPU it logs a cuInit
        # ERROR that is pure noise for a CPU run. Capture it here once, with the import messages.
        tf.config.list_physical_devices()
    check_legacy_cells(tf)
    set_verbose(verbose)
    return tf
