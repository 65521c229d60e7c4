"""TensorFlow with legacy Keras (``TF_USE_LEGACY_KERAS=1`` and ``tf-keras``: Keras 3 lacks ``BasicRNNCell``; a
plain ``import keras`` stays Keras 3), its logs off unless ``RNN_SCAN_TF_VERBOSE=1`` or `set_verbose`."""

import contextlib
import importlib.util
import logging
import os
import sys
import tempfile
import warnings

LEGACY_KERAS_VAR = "TF_USE_LEGACY_KERAS"


def _truthy(value) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def _check_legacy_keras(find_spec=importlib.util.find_spec, environ=os.environ):
    """TF_USE_LEGACY_KERAS=1 unless the caller chose a value; an error if legacy Keras cannot work."""
    if not environ.get(LEGACY_KERAS_VAR, "").strip():
        environ[LEGACY_KERAS_VAR] = "1"
    if not _truthy(environ[LEGACY_KERAS_VAR]):
        raise RuntimeError(f"tf_rnn needs {LEGACY_KERAS_VAR}=1 (Keras 3 lacks the TF1 RNN cells), but it is set "
                           f"to {environ[LEGACY_KERAS_VAR]!r}; unset it or set it to 1.")
    try:
        found = find_spec("tf_keras") is not None
    except (ImportError, ValueError):  # a finder that refuses it, or a broken installation
        found = False
    if not found:
        raise ImportError("tf_rnn needs the tf-keras package (pip install tf-keras, or pip install -e '.[tf]'): "
                          "TensorFlow >= 2.16 ships Keras 3, which lacks the TF1 RNN cells.")


def check_legacy_cells(tf):
    """RuntimeError if TensorFlow already resolved its TF1 cells to the Keras 3 stubs."""
    try:
        tf.compat.v1.nn.rnn_cell.BasicRNNCell  # noqa: B018
    except AttributeError as err:
        raise RuntimeError(f"BasicRNNCell is unavailable: TensorFlow loaded Keras 3 first. Import tf_rnn before "
                           f"anything touches tf.keras, or export {LEGACY_KERAS_VAR}=1.") from err


@contextlib.contextmanager
def capture_fd2():
    """File descriptor 2 (C++ logs) swallowed in the block, shown if it raises."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2
        yield
        return
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tmp.seek(0)
            sys.stderr.write(tmp.read().decode("utf-8", "replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)


_TF_MODULES = r"(tensorflow|tf_keras|keras)(\.|$)"
_verbose = False


def set_verbose(verbose: bool) -> None:
    """TensorFlow's Python logs and warnings on or off (C++ start-up logs: ``RNN_SCAN_TF_VERBOSE=1``)."""
    global _verbose
    _verbose = bool(verbose)
    for name in ("tensorflow", "absl", "tf_keras"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.ERROR)
    warnings.filters[:] = [f for f in warnings.filters if getattr(f[3], "pattern", None) != _TF_MODULES]
    for category in (DeprecationWarning, UserWarning):
        warnings.filterwarnings("default" if verbose else "ignore", category=category, module=_TF_MODULES)


@contextlib.contextmanager
def quiet_warnings():
    """Warnings ignored in the block unless verbose (test runners reset `set_verbose`'s filters)."""
    with contextlib.nullcontext() if _verbose else warnings.catch_warnings():
        if not _verbose:
            warnings.simplefilter("ignore")
        yield


def import_tensorflow():
    """The ``tensorflow`` module, imported as above."""
    verbose = _truthy(os.environ.get("RNN_SCAN_TF_VERBOSE"))
    _check_legacy_keras()
    if not verbose and not os.environ.get("TF_CPP_MIN_LOG_LEVEL", "").strip():
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
    with contextlib.nullcontext() if verbose else capture_fd2():
        import tensorflow as tf
        tf.config.list_physical_devices()  # prints cuInit errors without a GPU: caught here, once
    check_legacy_cells(tf)
    set_verbose(verbose)
    return tf
