"""tf_rnn on its own: configuration, parameter round trips, isolation, environment, convergence."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import tf_rnn
from conftest import numpy_params
from jax_rnn.data import gen_data, windows
from tf_rnn import _env

IMPLS = tf_rnn.IMPLEMENTATIONS
SMALL = tf_rnn.ModelConfig(batch_size=16, num_steps=5, state_size=4)
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _small_windows(n: int = 30, seed: int = 0):
    return windows(*gen_data(SMALL.batch_size * SMALL.num_steps * n, seed=seed), SMALL.batch_size, SMALL.num_steps)


def _run_python(code: str, **env) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; ``env`` values override os.environ, None removes a variable."""
    environ = {k: v for k, v in {**os.environ, **env}.items() if v is not None}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, capture_output=True, text=True,
                          env=environ, timeout=120)


# --- configuration ---------------------------------------------------------------------------------

@pytest.mark.parametrize("field, value", [
    ("num_classes", 0), ("state_size", -1), ("batch_size", 2.5), ("num_steps", True),
    ("learning_rate", 0.0), ("learning_rate", float("nan")), ("learning_rate", float("inf")),
])
def test_config_rejects_bad_values_naming_field_and_value(field, value):
    with pytest.raises(ValueError) as err:
        tf_rnn.ModelConfig(**{field: value})
    message = str(err.value)
    assert field in message and repr(value) in message
    assert (">= 1" in message) if field != "learning_rate" else ("> 0" in message)


def test_config_is_frozen_and_defaults_are_the_tutorials():
    config = tf_rnn.ModelConfig()
    assert (config.num_classes, config.state_size, config.batch_size, config.num_steps, config.learning_rate) == (
        2, 4, 200, 5, 0.1)
    with pytest.raises(AttributeError):
        config.batch_size = 3  # type: ignore[misc]


def test_config_of_reads_the_fields_of_any_object():
    from types import SimpleNamespace

    fields = dict(num_classes=3, state_size=8, batch_size=16, num_steps=4, learning_rate=0.3, backprop_steps=6)
    assert tf_rnn.ModelConfig.of(SimpleNamespace(**fields, seed=1)) == tf_rnn.ModelConfig(**fields)
    assert tf_rnn.ModelConfig.of(SMALL) == SMALL
    with pytest.raises(TypeError, match="lacks learning_rate, backprop_steps"):
        tf_rnn.ModelConfig.of(SimpleNamespace(num_classes=2, state_size=4, batch_size=16, num_steps=5))
    with pytest.raises(ValueError, match="ModelConfig.num_steps must be an integer >= 1, got 0"):
        tf_rnn.ModelConfig.of(SimpleNamespace(**{**fields, "num_steps": 0}))


def test_build_takes_any_config_with_the_fields():
    from types import SimpleNamespace

    like = SimpleNamespace(**{f: getattr(SMALL, f) for f in ("num_classes", "state_size", "batch_size", "num_steps",
                                                                "learning_rate", "backprop_steps")})
    with tf_rnn.build("tf2", like, numpy_params(0)) as model:
        assert model.config == SMALL


def test_unknown_implementation_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="raw, static, dynamic, tf2"):
        tf_rnn.build("cudnn", SMALL, numpy_params(0))


def test_gpu_request_without_gpu_is_a_clear_error():
    from tf_rnn.graph import tf
    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    for name in ("dynamic", "tf2"):
        with pytest.raises(RuntimeError, match="sees no GPU"):
            tf_rnn.build(name, SMALL, numpy_params(0), device="gpu")


# --- parameters ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def models():
    built = {name: tf_rnn.build(name, SMALL, numpy_params(1)) for name in IMPLS}
    yield built
    for model in built.values():
        model.close()


@pytest.mark.parametrize("source", IMPLS)
def test_params_exported_from_one_version_give_identical_losses_in_every_other(models, source):
    x_windows, y_windows = _small_windows(seed=IMPLS.index(source))
    models[source].train_epoch(x_windows[:20], y_windows[:20])  # move away from the initial values
    params = models[source].get_params()
    state = np.random.default_rng(1).uniform(-1, 1, (SMALL.batch_size, SMALL.state_size)).astype(np.float32)
    ref_loss, ref_state = models[source].loss(x_windows[-1], y_windows[-1], state)
    for name, model in models.items():
        model.set_params(params)
        got = model.get_params()
        for scope in params:
            for key in params[scope]:
                np.testing.assert_array_equal(got[scope][key], params[scope][key], err_msg=f"{source}->{name}")
        loss, final_state = model.loss(x_windows[-1], y_windows[-1], state)
        assert abs(loss - ref_loss) <= 1e-6, (source, name)
        np.testing.assert_allclose(final_state, ref_state, rtol=0, atol=1e-6, err_msg=f"{source}->{name}")


@pytest.mark.parametrize("name", IMPLS)
def test_params_layout_and_initialisation(name):
    """A model starts from exactly the params it was built from, in the shared layout, float32."""
    start = numpy_params(5)
    start["softmax"]["b"] = start["softmax"]["b"].astype(np.float64) + 0.5  # converted to float32
    with tf_rnn.build(name, SMALL, start) as model:
        params = model.get_params()
        accumulators = model.get_accumulators()
    n, d = SMALL.num_classes, SMALL.state_size
    shapes = {s: {k: v.shape for k, v in g.items()} for s, g in params.items()}
    assert shapes == {"rnn_cell": {"W": (n + d, d), "b": (d,)}, "softmax": {"W": (d, n), "b": (n,)}}
    assert all(v.dtype == np.float32 for g in params.values() for v in g.values())
    for scope in start:
        for key in start[scope]:
            np.testing.assert_array_equal(params[scope][key], np.float32(start[scope][key]), err_msg=f"{scope}/{key}")
            np.testing.assert_array_equal(accumulators[scope][key], np.full(shapes[scope][key], 0.1, np.float32))


@pytest.mark.parametrize("name", IMPLS)
def test_build_checks_params_against_the_models_variables(name):
    with pytest.raises(ValueError, match=r"params rnn_cell/W must have shape \(6, 4\).*got \(10, 8\)"):
        tf_rnn.build(name, SMALL, numpy_params(0, state_size=8))
    bad = numpy_params(0)
    bad["rnn_cell"]["b"] = np.full(4, np.inf, np.float32)
    with pytest.raises(ValueError, match="params rnn_cell/b contains non-finite values"):
        tf_rnn.build(name, SMALL, bad)
    with pytest.raises(ValueError, match="top-level keys"):
        tf_rnn.build(name, SMALL, None)


@pytest.mark.parametrize("name", IMPLS)
@pytest.mark.parametrize("scope, key, bad, pattern", [
    ("rnn_cell", "W", np.zeros((4, 4)), r"rnn_cell/W must have shape \(6, 4\)"),
    ("softmax", "b", np.zeros(3), r"softmax/b must have shape \(2,\)"),
    ("softmax", "U", np.zeros((4, 2)), r"params\['softmax'\] must have the keys \['W', 'b'\]"),
])
def test_set_params_rejects_bad_keys_and_shapes(models, name, scope, key, bad, pattern):
    params = models[name].get_params()
    params[scope][key] = bad  # a wrong shape, or an unexpected extra key
    with pytest.raises(ValueError, match=pattern):
        models[name].set_params(params)
    with pytest.raises(ValueError, match="top-level keys"):
        models[name].set_params({"rnn_cell": params["rnn_cell"]})


def test_train_epoch_result_and_input_checks(models):
    model = models["dynamic"]
    x_windows, y_windows = _small_windows(n=12)
    seen = []
    result = model.train_epoch(x_windows, y_windows, progress=seen.append)
    assert seen == list(range(12))
    assert result.losses.shape == (12,) and result.losses.dtype == np.float32 and np.isfinite(result.losses).all()
    assert result.final_state.shape == (SMALL.batch_size, SMALL.state_size)
    assert 0 < result.first_step_seconds <= result.seconds
    with pytest.raises(ValueError, match="state must have shape"):
        model.train_epoch(x_windows, y_windows, state=np.zeros((3, 4)))
    with pytest.raises(ValueError, match="batch_size, num_steps"):
        model.train_epoch(x_windows[:, :, :4], y_windows[:, :, :4])


def test_state_is_carried_between_windows(models):
    """Two half-epochs, the second starting from the first's final state, equal one epoch."""
    x_windows, y_windows = _small_windows(n=10, seed=4)
    start = numpy_params(2)
    with tf_rnn.build("raw", SMALL, params=start) as a, tf_rnn.build("raw", SMALL, params=start) as b:
        whole = a.train_epoch(x_windows, y_windows)
        first = b.train_epoch(x_windows[:5], y_windows[:5])
        second = b.train_epoch(x_windows[5:], y_windows[5:], state=first.final_state)
        np.testing.assert_array_equal(np.concatenate([first.losses, second.losses]), whole.losses)
        reset = b.train_epoch(x_windows[5:], y_windows[5:])  # state None: zeros, so a different loss
        assert reset.losses[0] != second.losses[0] or not first.final_state.any()


# --- isolation and environment ---------------------------------------------------------------------

def test_building_does_not_touch_the_callers_graph_or_eager_mode():
    from tf_rnn.graph import tf
    with tf.Graph().as_default() as mine:
        tf.constant(1.0, name="callers_op")
        before = [op.name for op in mine.get_operations()]
        with tf_rnn.build("static", SMALL, numpy_params(0)) as a, tf_rnn.build("dynamic", SMALL, numpy_params(0)) as b:
            assert a.graph is not b.graph and mine not in (a.graph, b.graph)
            assert tf.compat.v1.get_default_graph() is mine
        assert [op.name for op in mine.get_operations()] == before
    assert tf.executing_eagerly()


def test_missing_tf_keras_is_a_clear_error_simulated():
    with pytest.raises(ImportError, match=r"tf-keras package \(pip install tf-keras"):
        _env._check_legacy_keras(find_spec=lambda name: None, environ={})
    with pytest.raises(RuntimeError, match="TF_USE_LEGACY_KERAS=1"):
        _env._check_legacy_keras(find_spec=lambda name: object(), environ={"TF_USE_LEGACY_KERAS": "0"})
    environ: dict = {}
    _env._check_legacy_keras(find_spec=lambda name: object(), environ=environ)
    assert environ == {"TF_USE_LEGACY_KERAS": "1"}


def test_missing_tf_keras_in_a_fresh_process():
    result = _run_python("""
        import importlib.abc, sys
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name == "tf_keras" or name.startswith("tf_keras."):
                    raise ModuleNotFoundError(name)
        sys.meta_path.insert(0, Block())
        import tf_rnn
    """, TF_USE_LEGACY_KERAS=None)
    assert result.returncode != 0
    assert "tf_rnn needs the tf-keras package" in result.stderr and "Keras 3" in result.stderr


def test_keras3_already_loaded_is_a_clear_error():
    class FakeCompat:  # what tf.compat.v1.nn.rnn_cell looks like once Keras 3 is loaded
        class v1:
            class nn:
                class rnn_cell:
                    def __getattr__(self, name):
                        raise AttributeError(f"`{name}` is not available with Keras 3.")
                rnn_cell = rnn_cell()

    class FakeTF:
        compat = FakeCompat

    with pytest.raises(RuntimeError, match="Import tf_rnn before"):
        _env.check_legacy_cells(FakeTF)


@pytest.mark.slow
def test_keras3_already_loaded_in_a_fresh_process():
    result = _run_python("""
        import tensorflow as tf
        try:
            tf.compat.v1.nn.rnn_cell.BasicRNNCell  # resolves (and caches) the Keras 3 stub
        except AttributeError:
            pass
        import tf_rnn
    """, TF_USE_LEGACY_KERAS=None)
    assert result.returncode != 0
    assert "RuntimeError" in result.stderr and "Import tf_rnn before" in result.stderr


# TensorFlow's start-up and deprecation noise; none of it may reach stderr unless asked for.
TF_NOISE = ("oneDNN", "cuda", "cuInit", "TF-TRT", "This TensorFlow binary is optimized", "deprecat")


@pytest.mark.slow  # two processes importing TensorFlow and building every version: 12 s; `make test-all`
def test_import_and_training_are_quiet_by_default_and_verbose_on_request():
    code = """
        import numpy as np, tf_rnn
        from jax_rnn.model import glorot_params
        for name in tf_rnn.IMPLEMENTATIONS:
            with tf_rnn.build(name, tf_rnn.ModelConfig(batch_size=4, num_steps=3), glorot_params(2, 4, 0)) as m:
                m.train_epoch(np.zeros((2, 4, 3), np.int32), np.zeros((2, 4, 3), np.int32))
        tf_rnn.set_verbose(False)  # a second call changes nothing
        import keras  # still Keras 3 for the caller
        print("keras", keras.__version__.split(".")[0])
    """
    quiet = _run_python(code, RNN_SCAN_TF_VERBOSE="0", TF_CPP_MIN_LOG_LEVEL=None, TF_USE_LEGACY_KERAS=None)
    assert quiet.returncode == 0, quiet.stderr
    noise = [pattern for pattern in TF_NOISE if pattern.lower() in quiet.stderr.lower()]
    assert not noise, f"TensorFlow noise on stderr ({noise}):\n{quiet.stderr}"
    assert "keras 3" in quiet.stdout
    loud = _run_python(code, RNN_SCAN_TF_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL=None, TF_USE_LEGACY_KERAS=None)
    assert loud.returncode == 0, loud.stderr
    assert "deprecated" in loud.stderr


def test_tf2_with_xla_trains_identically():
    """jit_compile is a speed choice only (see tf_rnn.tf2): both settings give the same run."""
    from tf_rnn.tf2 import EagerModel
    x_windows, y_windows = _small_windows(n=20, seed=6)
    start = numpy_params(4)
    runs = []
    for jit in (False, True):
        with EagerModel(SMALL, start, jit_compile=jit) as model:
            runs.append((model.train_epoch(x_windows, y_windows).losses, model.get_params()))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=0, atol=1e-5)
    np.testing.assert_allclose(runs[0][1]["rnn_cell"]["W"], runs[1][1]["rnn_cell"]["W"], rtol=0, atol=1e-5)


def test_set_verbose_is_idempotent_and_scoped_to_tensorflow_modules():
    import warnings

    with warnings.catch_warnings():
        tf_rnn.set_verbose(False)
        before = list(warnings.filters)
        for verbose in (True, False, True, False):
            tf_rnn.set_verbose(verbose)
        assert warnings.filters == before
        assert all(f[3] is not None and f[3].pattern.startswith("(tensorflow") for f in before[:2])


# --- divergence guard: a replay that does not reproduce ---------------------------------------------

@pytest.mark.parametrize("where", ["loss", "update"])
def test_a_non_finite_value_that_the_replay_does_not_reproduce_is_a_clear_error(monkeypatch, where):
    """Non-deterministic TF: the first run saw a NaN (a loss at window 3, or the end-of-epoch
    parameter check), the replay does not; this must not be reported as a divergence anywhere."""
    x_windows, y_windows = _small_windows(n=6, seed=7)
    with tf_rnn.build("raw", SMALL, numpy_params(3)) as model:
        if where == "loss":
            real, calls = model._step, []

            def flaky(x, y, state):
                loss, state = real(x, y, state)
                calls.append(1)
                return (np.float32(np.nan) if len(calls) == 4 else loss), state

            monkeypatch.setattr(model, "_step", flaky)
        else:
            checks = []
            monkeypatch.setattr(model, "_finite", lambda: bool(checks.append(1)) or len(checks) > 1)
        with pytest.raises(RuntimeError, match="did not reproduce.*deterministic=True"):
            model.train_epoch(x_windows, y_windows)
