"""jax_rnn.train: the scanned epoch against a loop of steps, vmap against one-by-one, determinism, convergence."""

import dataclasses
import json
import re
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import jax_rnn
from jax_rnn import tune
from jax_rnn import data as task
from conftest import numpy_params


def test_train_epoch_equals_a_python_loop_of_train_step(small_windows):
    x_windows, y_windows = small_windows
    params = jax.tree.map(jnp.asarray, numpy_params(0))
    opt = jax_rnn.adagrad(0.1)
    p_scan, o_scan, s_scan, losses_scan = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt)
    p, o, s = params, opt.init(params), jax_rnn.zero_state(20, 4)
    losses = []
    for x, y in zip(x_windows, y_windows):
        p, o, s, loss = jax_rnn.train_step(p, o, s, x, y, opt)
        losses.append(loss)
    assert losses_scan.shape == (300,) and losses_scan.dtype == jnp.float32
    np.testing.assert_allclose(losses_scan, np.array(losses), rtol=0, atol=1e-6)
    # The two compiled programs sum the batch in different orders: after 300 updates the state and
    # parameters differ by float rounding (~1e-6), within the project's 1e-5 equivalence bound.
    np.testing.assert_allclose(s_scan, s, atol=1e-5)
    for a, b in zip(jax.tree.leaves((p_scan, o_scan)), jax.tree.leaves((p, o))):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_state_is_carried_between_windows(small_windows):
    """Resetting the state each window (instead of carrying it) changes the losses from window 2 on."""
    x_windows, y_windows = small_windows
    params = jax.tree.map(jnp.asarray, numpy_params(0))
    opt = jax_rnn.adagrad(0.1)
    _, _, _, carried = jax_rnn.train_epoch(params, opt.init(params), x_windows[:3], y_windows[:3], opt)
    p, o, _, first = jax_rnn.train_step(params, opt.init(params), jax_rnn.zero_state(20, 4), x_windows[0], y_windows[0], opt)
    _, _, _, second_reset = jax_rnn.train_step(p, o, jax_rnn.zero_state(20, 4), x_windows[1], y_windows[1], opt)
    assert carried[0] == first and carried[1] != second_reset


def test_train_epoch_continues_from_a_given_state(small_windows):
    x_windows, y_windows = small_windows
    params = jax.tree.map(jnp.asarray, numpy_params(0))
    opt = jax_rnn.adagrad(0.1)
    p_all, o_all, s_all, l_all = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt)
    p, o, s, l1 = jax_rnn.train_epoch(params, opt.init(params), x_windows[:100], y_windows[:100], opt)
    p, o, s, l2 = jax_rnn.train_epoch(p, o, x_windows[100:], y_windows[100:], opt, state=s)
    np.testing.assert_allclose(np.concatenate([l1, l2]), l_all, atol=1e-6)
    np.testing.assert_allclose(s, s_all, atol=1e-6)


def test_vmapped_runs_equal_the_same_runs_one_by_one():
    runs, opt = 3, jax_rnn.adagrad(0.1)
    data = [task.windows(*task.gen_data(10_000, seed), batch_size=10, num_steps=5) for seed in range(runs)]
    params = [jax_rnn.init_params(jax.random.key(seed)) for seed in range(runs)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    p, o, s, losses = jax_rnn.train_runs(stack(params), stack([opt.init(q) for q in params]),
                                         jnp.stack([d[0] for d in data]), jnp.stack([d[1] for d in data]), opt)
    assert losses.shape == (runs, 200) and s.shape == (runs, 10, 4)
    for r in range(runs):
        p_r, o_r, s_r, losses_r = jax_rnn.train_epoch(params[r], opt.init(params[r]), *data[r], opt)
        np.testing.assert_allclose(losses[r], losses_r, atol=1e-6)
        np.testing.assert_allclose(s[r], s_r, atol=1e-6)
        for a, b in zip(jax.tree.leaves(jax.tree.map(lambda t: t[r], p)), jax.tree.leaves(p_r)):
            np.testing.assert_allclose(a, b, atol=1e-6)
    assert not np.allclose(losses[0], losses[1])


def test_same_seed_gives_bit_identical_losses():
    config = jax_rnn.FitConfig(data_size=20_000, batch_size=20, epochs=2, seed=5)
    a, b = jax_rnn.fit(config), jax_rnn.fit(config)
    np.testing.assert_array_equal(a.step_losses, b.step_losses)
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)
    c = jax_rnn.fit(jax_rnn.FitConfig(data_size=20_000, batch_size=20, epochs=2, seed=6))
    assert not np.array_equal(a.step_losses, c.step_losses)


def test_fit_on_caller_data_equals_train_epoch_on_its_windows():
    config = jax_rnn.FitConfig(data_size=5_000, batch_size=10, num_steps=5, epochs=2)
    xs, ys = zip(*(task.gen_data(5_000, seed) for seed in (1, 2)))
    params = jax.tree.map(jnp.asarray, numpy_params(0))
    result = jax_rnn.fit(config, data=(np.stack(xs), np.stack(ys)), params=params)
    opt = jax_rnn.adagrad(0.1)
    p, o = params, opt.init(params)
    for epoch in range(2):
        p, o, _, losses = jax_rnn.train_epoch(p, o, *task.windows(xs[epoch], ys[epoch], 10, 5), opt)
        np.testing.assert_allclose(result.step_losses[epoch], losses, atol=1e-6)
    assert result.avg_losses.shape == (2,)  # 100 windows per epoch -> one log line each
    np.testing.assert_allclose(result.avg_losses, result.step_losses.mean(axis=1), rtol=1e-6)


def test_running_averages_average_exactly_100_steps_per_line():
    losses = np.arange(2 * 250, dtype=np.float32).reshape(2, 250)
    np.testing.assert_allclose(jax_rnn.running_averages(losses, 100), [49.5, 149.5, 299.5, 399.5])


@pytest.mark.parametrize("backprop_steps", [None, 9])
def test_fit_and_the_cli_train_the_same_run_for_the_same_seed(tmp_path, backprop_steps):
    """One data generator and one initialisation: ``jax_rnn.fit(FitConfig(seed=s))`` and
    ``rnn-compare run --impl jax --seed s`` start from the same weights on the same epochs and give the
    same per-step losses, bit for bit; so do ``FitConfig(backprop_steps=k2)`` and ``--backprop-steps k2``."""
    from compare.cli import main

    config = jax_rnn.FitConfig(batch_size=20, data_size=20_000, epochs=2, seed=7, backprop_steps=backprop_steps)
    fitted = jax_rnn.fit(config)
    extra = [] if backprop_steps is None else ["--backprop-steps", str(backprop_steps)]
    assert main(["run", "--impl", "jax", "--batch-size", "20", "--data-size", "20000", "--epochs", "2", "--seed", "7",
                 *extra, "--quiet", "--out", str(tmp_path), "--name", "r"]) == 0
    result = json.loads((tmp_path / "r.json").read_text())
    assert result["config"]["backprop_steps"] == (backprop_steps or 5)   # recorded as trained
    np.testing.assert_array_equal(fitted.step_losses.ravel(), np.asarray(result["results"]["jax"]["step_losses"], np.float32))


@pytest.mark.parametrize("field,value,message", [
    ("num_steps", 0, "num_steps must be an integer >= 1, got 0"),
    ("state_size", 2.5, "state_size must be an integer >= 1, got 2.5"),
    ("learning_rate", float("nan"), "learning_rate must be a finite number > 0, got nan"),
    ("batch_size", 10**7, "batch_size 10000000 is larger than the data (1000000 points)"),
    ("backprop_steps", 4, "backprop_steps must be an integer from num_steps (5) to the steps in a row of data"),
    ("backprop_steps", 5001, "to the steps in a row of data (5000), got 5001"),
    ("backprop_steps", 9.0, "got 9.0"),
])
def test_fit_config_is_validated_on_construction(field, value, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        jax_rnn.FitConfig(**{field: value})


# --- Convergence on the real task, against the analytic targets ------------------------------------

def test_num_steps_5_learns_the_3_step_dependency():
    """Tutorial defaults (batch 200, state 4, 1M points per epoch): one epoch reaches the 3-step level."""
    result = jax_rnn.fit(jax_rnn.FitConfig(num_steps=5, state_size=4, epochs=1, seed=0))
    assert result.final_loss < 0.54
    assert task.level(result.final_loss) == "first"
    assert result.final_loss > task.TARGETS.both - 0.01  # nobody beats the Bayes loss on fresh data


def test_num_steps_1_learns_nothing():
    result = jax_rnn.fit(jax_rnn.FitConfig(num_steps=1, epochs=1, data_size=200_000, seed=0))
    assert task.level(result.final_loss) == "none"


def test_num_steps_10_state_16_learns_both_dependencies():
    """The gradient reaches 8 steps back: within 10 epochs the loss falls clearly below the 3-step level."""
    result = jax_rnn.fit(jax_rnn.FitConfig(num_steps=10, state_size=16, epochs=10, seed=0))
    assert result.final_loss < task.TARGETS.first - 0.03, result.avg_losses[-10:]
    assert task.level(result.final_loss) == "both"


needs_cc = pytest.mark.skipif(not (shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")),
                              reason="needs a C compiler")


@needs_cc
@pytest.mark.parametrize("state_size, num_steps", [(4, 5), (3, 7), (16, 1), (64, 10)])
def test_the_c_reference_loop_of_the_benchmark_computes_the_same_losses(state_size, num_steps):
    """compare/reference_loop.c (the speed reference of ``rnn-compare bench``) is the same training for any
    state size and window length (it reads them at run time): per-step losses equal train_epoch's.
    (``bench --grid`` itself: tests/test_scaling.py.)"""
    from compare.bench import c_epoch

    x_windows, y_windows = task.windows(*task.gen_data(10_000, seed=0), batch_size=20, num_steps=num_steps)
    params = jax.tree.map(jnp.asarray, numpy_params(0, 2, state_size))
    opt = jax_rnn.adagrad(0.1)
    _, _, _, losses = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt)
    c_loop = c_epoch(params, x_windows, y_windows, 0.1)
    assert c_loop() > 0 and c_loop.losses.shape == losses.shape
    np.testing.assert_allclose(c_loop.losses, losses, rtol=0, atol=1e-5)


def test_the_c_reference_loop_says_what_is_missing():
    """Without a C compiler on PATH, the C loop says so (in a fresh process: the build is cached per process)."""
    import subprocess
    import sys

    code = ("import numpy as np, jax_rnn; from compare.bench import c_epoch\n"
            "xw = np.zeros((2, 4, 5), np.int32)\n"
            "try:\n    c_epoch(jax_rnn.glorot_params(2, 4, 0), xw, xw, 0.1)\n"
            "except RuntimeError as err:\n    print(err)\n")
    out = subprocess.run([sys.executable, "-c", code], env={"PATH": "", "JAX_PLATFORMS": "cpu"},
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert "the C reference loop needs a C compiler" in out.stdout, out.stderr[-2000:]


def test_the_epoch_inside_a_callers_jit_equals_the_direct_call(small_windows):
    """The public functions run under a caller's own jit too (compiled there without this package's
    XLA compile options, which JAX allows on top-level jits only), with the same results."""
    x_windows, y_windows = small_windows
    params = jax.tree.map(jnp.asarray, numpy_params(0))
    opt = jax_rnn.adagrad(0.1)
    direct = jax_rnn.train_epoch(params, opt.init(params), x_windows, y_windows, opt)
    nested = jax.jit(lambda p, o: jax_rnn.train_epoch(p, o, x_windows, y_windows, opt))(params, opt.init(params))
    o0 = opt.init(params)
    closed_over = jax.jit(lambda: jax_rnn.train_epoch(params, o0, x_windows, y_windows, opt))()  # no traced argument
    for other in (nested, closed_over):
        for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(other)):
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    assert jax.eval_shape(lambda: jax_rnn.train_step(params, o0, jnp.zeros((20, 4)), x_windows[0], y_windows[0], opt))


def test_xla_options_change_speed_not_results(small_windows):
    """An XLA option of a plan (YNNPACK for dots only, one of the tuner's candidates) gives the same
    parameters, state and losses as XLA's defaults, bit for bit."""
    default = jax_rnn.plan(16, 20, 5, backend="cpu")
    (ynn,) = next(c.xla_options for c in tune.candidates(default) if c.xla_options)
    assert default.xla_options == ()
    plan = dataclasses.replace(default, xla_options=(ynn,))
    params = jax.tree.map(jnp.asarray, numpy_params(0, state_size=16))
    opt = jax_rnn.adagrad(0.1)
    out = {p: jax_rnn.train_epoch(params, opt.init(params), *small_windows, opt, plan=p) for p in (plan, default)}
    for a, b in zip(jax.tree.leaves(out[plan]), jax.tree.leaves(out[default])):
        np.testing.assert_array_equal(a, b)


def test_the_trainer_takes_the_sweeps_int8_windows_for_many_runs():
    """Many runs (a mesh): int8 windows, cut for all runs at once (`windows` with a leading run axis), train
    exactly as the int32 windows of each run cut alone."""
    from jax_rnn import JaxTrainer, train

    config = jax_rnn.FitConfig(batch_size=10, data_size=2_000, epochs=1)
    seeds = [0, 1, 2]
    rows = [task.gen_data(config.data_size, s) for s in seeds]
    stacked = task.windows(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows]), 10, 5, np.int8)
    one_by_one = [task.windows(*r, 10, 5) for r in rows]
    assert stacked[0].dtype == np.int8 and stacked[0].shape == (3, 40, 10, 5)
    for i, (xw, yw) in enumerate(one_by_one):
        np.testing.assert_array_equal(stacked[0][i], xw)
        np.testing.assert_array_equal(stacked[1][i], yw)
    params = jax.tree.map(lambda *a: np.stack(a), *[numpy_params(s) for s in seeds])
    losses = {}
    for name, windows in (("int8", stacked), ("int32", tuple(np.stack(w) for w in zip(*one_by_one)))):
        trainer = JaxTrainer(config, params, mesh=jax_rnn.run_mesh(jax.devices()[:1]))
        losses[name] = train(trainer, [windows]).losses()
    np.testing.assert_array_equal(losses["int8"], losses["int32"])


def test_the_one_run_trainer_takes_int8_windows_and_any_integer_type():
    """`data.window_dtype` is the smallest type for the class ids; the one-run trainer is compiled for it,
    and windows of another integer type (int32) train exactly the same."""
    from jax_rnn import JaxTrainer, train

    assert [task.window_dtype(n) for n in (1, 2, 128, 129, 32768, 32769)] == [
        np.int8, np.int8, np.int8, np.int16, np.int16, np.int32]
    config = jax_rnn.FitConfig(batch_size=10, data_size=2_000, epochs=2)
    losses = {}
    for dtype in (np.int8, np.int32):
        trainer = JaxTrainer(config, numpy_params(0))
        assert trainer.window_dtype == np.int8
        windows = list(task.epoch_windows(config, dtype=dtype))
        assert windows[0][0].dtype == dtype
        losses[dtype] = train(trainer, windows).losses()
    np.testing.assert_array_equal(losses[np.int8], losses[np.int32])


def test_adagrad_is_optax_adagrad_without_epsilon(small_windows):
    """`jax_rnn.adagrad` is optax's own Adagrad with TF1's settings (accumulators from 0.1, eps 0): an epoch
    with either is the same, bit for bit."""
    params = jax.tree.map(jnp.asarray, numpy_params(2))
    ours = jax_rnn.adagrad(0.1)
    plain = optax.adagrad(0.1, initial_accumulator_value=0.1, eps=0.0)
    assert isinstance(ours, optax.GradientTransformation) and ours is not plain
    out = {name: jax_rnn.train_epoch(params, opt.init(params), *small_windows, opt)
           for name, opt in (("ours", ours), ("optax", plain))}
    assert jax.tree.structure(out["ours"]) == jax.tree.structure(out["optax"])
    for a, b in zip(jax.tree.leaves(out["ours"]), jax.tree.leaves(out["optax"])):
        np.testing.assert_array_equal(a, b)


def test_the_hand_written_backward_pass_trains_as_jax_grad():
    """At the tutorial's batch of 200 one run's plan computes its gradients by hand (`jax_rnn.backward`);
    the same plan with ``jax.grad``, and `train_runs` vmapped with ``jax.grad`` (a GPU's plan), train the
    same epoch to float rounding. (Every cell the rules tell apart, the elementwise state 4 among them: tests/test_plan.py.)"""
    for state_size in (16,):
        params = jax.tree.map(jnp.asarray, numpy_params(3, state_size=state_size))
        xw, yw = task.windows(*task.gen_data(20_000, seed=4), batch_size=200, num_steps=5)
        opt = jax_rnn.adagrad(0.1)
        plan = jax_rnn.plan(state_size, 200, 5, backend="cpu")
        runs = dataclasses.replace(jax_rnn.plan(state_size, 200, 5, runs=2, backend="gpu"), backend="cpu")
        assert plan.gradient == "by_hand" and runs.gradient == "autodiff" and not runs.run_loop
        alone = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt, plan=plan)
        autodiff = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt,
                                       plan=dataclasses.replace(plan, gradient="autodiff"))
        stack = lambda tree: jax.tree.map(lambda a: jnp.stack([a, a]), tree)
        vmapped = jax_rnn.train_runs(stack(params), stack(opt.init(params)), stack(xw), stack(yw), opt, plan=runs)
        for other in (autodiff, jax.tree.map(lambda a: a[1], vmapped)):
            np.testing.assert_allclose(alone[3], other[3], rtol=0, atol=1e-6)
            for a, b in zip(jax.tree.leaves(alone[:3]), jax.tree.leaves(other[:3])):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
