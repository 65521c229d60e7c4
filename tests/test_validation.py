"""Bad input at every boundary gets a clear error naming the argument, the value and what is allowed.

One table per boundary (jax_rnn's functions, tf_rnn's models, the rnn-compare command line), each row a
bad input and a piece of the message it must get. Nothing here may reach XLA, TensorFlow or numpy.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rnn
from compare import io
from compare.cli import main
from jax_rnn.model import glorot_params
from conftest import numpy_params

OPT = jax_rnn.adagrad(0.1)
P = jax.tree.map(jnp.asarray, numpy_params(0))
O = OPT.init(P)
XW = np.zeros((3, 4, 5), np.int32)   # [epoch_size, batch, num_steps]
X = np.zeros((4, 5), np.int32)       # [batch, num_steps]


def _with(tree, scope, key, value):
    return {s: {k: (value if (s, k) == (scope, key) else v) for k, v in g.items()} for s, g in tree.items()}


def _runs(runs: int):
    """``(params, opt_state, x_windows, y_windows)`` of ``runs`` runs, each with a leading run axis."""
    return jax.tree.map(lambda a: jnp.stack([jnp.asarray(a)] * runs), (P, O, XW, XW))


JAX_CASES = {
    "x rank": (lambda: jax_rnn.train_epoch(P, O, X, X, OPT), "x_windows must be int[epoch_size, batch, num_steps] (rank 3), got shape (4, 5)"),
    "x float": (lambda: jax_rnn.train_epoch(P, O, XW.astype(np.float32), XW, OPT), "x_windows must hold integer class ids in [0, 2), got dtype float32"),
    "x and y shapes": (lambda: jax_rnn.train_epoch(P, O, XW, XW[:, :, :4], OPT), "must have one shape"),
    "y out of range": (lambda: jax_rnn.train_epoch(P, O, XW, XW + 2, OPT), "must hold class ids in [0, 2) (num_classes from params['softmax']['b']), got values in [0, 2]"),
    "x negative (jax array)": (lambda: jax_rnn.train_epoch(P, O, jnp.asarray(XW - 1), XW, OPT), "got values in [-1, 0]"),
    "empty windows": (lambda: jax_rnn.train_epoch(P, O, XW[:0], XW[:0], OPT), "x_windows is empty"),
    "missing key": (lambda: jax_rnn.train_epoch({"rnn_cell": P["rnn_cell"]}, O, XW, XW, OPT), "params must be a dict with keys ['rnn_cell', 'softmax'], got ['rnn_cell']"),
    "bad shape": (lambda: jax_rnn.train_epoch(_with(P, "softmax", "W", jnp.zeros((3, 2))), O, XW, XW, OPT), "params['softmax']['W'] must have shape (4, 2)"),
    "NaN param": (lambda: jax_rnn.train_epoch(_with(P, "rnn_cell", "b", jnp.full(4, jnp.nan)), O, XW, XW, OPT), "params['rnn_cell']['b'] contains NaN or inf"),
    "int params": (lambda: jax_rnn.train_epoch(jax.tree.map(lambda a: a.astype(jnp.int32), P), O, XW, XW, OPT), "params must be floating point"),
    "opt_state of other size": (lambda: jax_rnn.train_epoch(P, OPT.init(jax_rnn.init_params(jax.random.key(0), 2, 8)), XW, XW, OPT), "opt_state leaf shapes"),
    "not an optimizer": (lambda: jax_rnn.train_epoch(P, O, XW, XW, "adagrad"), "optimizer must be an optax.GradientTransformation"),
    "state shape": (lambda: jax_rnn.train_epoch(P, O, XW, XW, OPT, state=jnp.zeros((3, 4))), "state must have shape (4, 4)"),
    "state NaN": (lambda: jax_rnn.train_epoch(P, O, XW, XW, OPT, state=jnp.full((4, 4), jnp.nan)), "state contains NaN or inf"),
    "step: x rank": (lambda: jax_rnn.train_step(P, O, jnp.zeros((4, 4)), XW, XW, OPT), "train_step: x must be int[batch, num_steps] (rank 2)"),
    "step: state batch": (lambda: jax_rnn.train_step(P, O, jnp.zeros((3, 4)), X, X, OPT), "train_step: state must have shape (4, 4)"),
    "runs: no run axis": (lambda: jax_rnn.train_runs(P, O, XW[None], XW[None], OPT), "leading run axis"),
    "loss: y out of range": (lambda: jax_rnn.loss(P, X, X + 5, jnp.zeros((4, 4))), "loss: x and y must hold class ids in [0, 2)"),
    "loss: state NaN": (lambda: jax_rnn.loss(P, X, X, jnp.full((4, 4), jnp.nan)), "loss: state contains NaN or inf"),
    "step: y longer than x": (lambda: jax_rnn.train_step(P, O, jnp.zeros((4, 4)), X, np.zeros((4, 6), np.int32), OPT), "train_step: y (4, 6) must have x's batch (4) and at most its 5 steps"),
    "runs: guard not a bool": (lambda: jax_rnn.train_runs(*_runs(2), OPT, guard=1), "train_runs: guard must be True or False, got 1"),
    "runs: other run counts": (lambda: jax_rnn.train_runs(*_runs(2)[:2], np.stack([XW] * 3), np.stack([XW] * 3), OPT), "train_runs: x_windows has 3 runs, params 2"),
    "plan: not a Plan": (lambda: jax_rnn.train_epoch(P, O, XW, XW, OPT, plan="fast"), "train_epoch: plan must be a jax_rnn.Plan (jax_rnn.plan(...)), got str"),
    "plan: another cell": (lambda: jax_rnn.train_epoch(P, O, XW, XW, OPT, plan=jax_rnn.plan(4, 200, 5)), "train_epoch: the plan is for state 4, batch 200, num_steps 5, 1 run(s); the arguments have state 4, batch 4, num_steps 5, 1 run(s)"),
    "plan: backprop_steps below num_steps": (lambda: jax_rnn.plan(4, 4, 5, backprop_steps=4), "plan: backprop_steps must be an integer >= num_steps (5), got 4"),
    "plan: backprop_steps past the row": (lambda: jax_rnn.train_epoch(P, O, XW, XW, OPT, plan=jax_rnn.plan(4, 4, 5, backprop_steps=16)), "train_epoch: backprop_steps must be an integer from num_steps (5) to the steps in a row of data (15), got 16"),
    "plan: by hand in batch-first": (lambda: jax_rnn.Plan(4, 200, 5, 5, gradient="by_hand"), "plan: gradient='by_hand' needs layout='batch_last'"),
    "fit: lr": (lambda: jax_rnn.FitConfig(learning_rate=-1.0), "learning_rate must be a finite number > 0, got -1.0"),
    "fit: epochs": (lambda: jax_rnn.FitConfig(epochs=0), "epochs must be an integer >= 1, got 0"),
    "fit: data_size float": (lambda: jax_rnn.FitConfig(data_size=1e6), "data_size must be an integer >= 1, got 1000000.0"),
    "fit: params for other state": (lambda: jax_rnn.fit(jax_rnn.FitConfig(data_size=1000, batch_size=10), params=jax_rnn.init_params(jax.random.key(0), 2, 8)), "params are for num_classes=2, state_size=8"),
    "fit: data values": (lambda: jax_rnn.fit(jax_rnn.FitConfig(data_size=1000, batch_size=10), data=(np.full((1, 1000), 3), np.zeros((1, 1000), int))), "fit: data x values must lie in [0, 2), got [3, 3]"),
    "fit: resume missing": (lambda: jax_rnn.fit(jax_rnn.FitConfig(data_size=1000, batch_size=10), resume="/no/such.npz"), "resume: no checkpoint file at /no/such.npz"),
}


@pytest.mark.parametrize("case", JAX_CASES)
def test_jax_rnn_bad_input(case):
    call, message = JAX_CASES[case]
    with pytest.raises((ValueError, TypeError, FileNotFoundError)) as err:
        call()
    assert message in str(err.value)


def test_checks_on_tracers_are_shape_only():
    """Under the caller's own jit (or eval_shape), values cannot be checked but shapes and dtypes still are,
    by the public functions and by `train_step` when its program is traced."""
    f = jax.jit(lambda p, o, xw, yw: jax_rnn.train_epoch(p, o, xw, yw, OPT))
    jax.block_until_ready(f(P, O, XW, XW))
    with pytest.raises(ValueError, match=r"train_epoch: x_windows must be int\[epoch_size, batch, num_steps\] \(rank 3\)"):
        jax.eval_shape(lambda xw: jax_rnn.train_epoch(P, O, xw, XW, OPT), jax.ShapeDtypeStruct((4, 5), jnp.int32))
    with pytest.raises(TypeError, match="train_epoch: y_windows must hold integer class ids in .0, 2., got dtype float32"):
        f(P, O, XW, XW.astype(np.float32))
    with pytest.raises(ValueError, match=r"train_step: x must be int\[batch, num_steps\] \(rank 2\)"):
        jax.jit(lambda x: jax_rnn.train_step(P, O, jnp.zeros((4, 4)), x, X, OPT))(XW)
    with pytest.raises(ValueError, match=r"train_step: state must have shape \(4, 4\)"):
        jax.jit(lambda s: jax_rnn.train_step(P, O, s, X, X, OPT))(jnp.zeros((3, 4)))
    with pytest.raises(ValueError, match=r"loss: x \(4, 5\) and y \(4, 3\) must have one shape"):
        jax.jit(lambda y: jax_rnn.loss(P, X, y, jnp.zeros((4, 4))))(X[:, :3])


def _tf_cases():
    import tf_rnn

    cfg = tf_rnn.ModelConfig(batch_size=4, num_steps=5)
    return cfg, {
        "y out of range": (lambda m: m.train_epoch(XW, XW + 2), "y must hold class ids in [0, 2) (num_classes), got values in [2, 2]"),
        "x negative": (lambda m: m.loss(X - 1, X), "x must hold class ids in [0, 2)"),
        "x float": (lambda m: m.train_epoch(XW.astype(float), XW), "x must hold integer class ids, got dtype float64"),
        "NaN state": (lambda m: m.train_epoch(XW, XW, state=np.full((4, 4), np.nan)), "state contains NaN or inf"),
        "params of another size": (lambda m: m.set_params(numpy_params(0, state_size=8)), "params rnn_cell/W must have shape (6, 4)"),
        "NaN params": (lambda m: m.set_params(_with(numpy_params(0), "softmax", "b", np.full(2, np.nan))), "params softmax/b contains non-finite values"),
        "bad accumulators": (lambda m: m.set_accumulators(_with(m.get_accumulators(), "softmax", "b", np.zeros(2, np.float32))), "accumulators softmax/b must be > 0"),
        "config lr": (lambda m: tf_rnn.ModelConfig(learning_rate=float("inf")), "learning_rate must be a finite number > 0, got inf"),
    }


@pytest.mark.parametrize("impl", ["dynamic", "tf2"])
def test_tf_rnn_bad_input(impl):
    import tf_rnn

    cfg, cases = _tf_cases()
    with tf_rnn.build(impl, cfg, params=numpy_params(0)) as model:
        for name, (call, message) in cases.items():
            with pytest.raises((ValueError, TypeError)) as err:
                call(model)
            assert message in str(err.value), name


def _npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


RUN = ["run", "--impl", "jax", "--quiet", "--batch-size", "10"]
CLI_CASES = [  # every command's bad input: exit status 2, the usage, a message naming the option, nothing written
    ([*RUN, "--epochs", "0"], "--epochs must be an integer >= 1, got 0"),
    ([*RUN, "--epochs", "1.5"], "argument --epochs: invalid int value: '1.5'"),
    ([*RUN, "--data-size", "0"], "--data-size must be an integer >= 1, got 0"),
    ([*RUN, "--learning-rate", "nan"], "--learning-rate must be a finite number > 0, got nan"),
    ([*RUN, "--learning-rate", "0"], "--learning-rate must be a finite number > 0, got 0.0"),
    ([*RUN, "--state-size", "-4"], "--state-size must be an integer >= 1, got -4"),
    ([*RUN, "--init-params", "{tmp}/nan.npz"], "softmax/b must hold finite floats"),
    ([*RUN, "--init-params", "{tmp}/junk.npz"], "cannot read"),
    ([*RUN, "--data", "{tmp}/wrongkeys.npz"], "must hold exactly the keys x, y; got a, b"),
    ([*RUN, "--data", "{tmp}/range.npz"], "x values must lie in [0, 2), got [7, 7]"),
    ([*RUN, "--resume", "{tmp}/no-dir"], "--resume: {tmp}/no-dir is not a directory of checkpoints"),
    ([*RUN, "--from", "{tmp}/no.json"], "--from: no such file"),
    ([*RUN, "--from", "{tmp}/junk.npz"], "cannot read"),
    (["run", "--impl", "jax,pytorch"], "unknown implementation 'pytorch' (choose from jax, tf-raw"),
    (["run", "--impl", "jax,jax"], "named twice"),
    (["run", "--impl", "jax,,"], "--impl: an empty item in 'jax,,' (a stray comma?)"),
    (["run", "--num-steps", "0"], "--num-steps must be an integer >= 1"),
    (["run", "--batch-size", "300", "--data-size", "200"], "--batch-size 300 is larger than the data (200 points)"),
    (["run", "--impl", "jax", "--init-params", "no-such.npz"], "--init-params: no such file"),
    (["sweep", "--num-steps", "1,0"], "--num-steps must be >= 1"),
    (["sweep", "--workers", "0"], "--workers must be >= 1, got 0"),
    (["sweep", "--resume", "{tmp}/no-dir"], "--resume: {tmp}/no-dir is not a directory of checkpoints"),
    (["bench", "--num-steps", "50", "--batch-size", "200", "--data-size", "1000"], "not even one window fits"),
    (["bench", "--grid", "--many-runs", "2"], "--grid and --many-runs: choose one"),
    (["bench", "--grid", "--impl", "tf-raw"], "--impl: --grid times JAX against the C loop and TF; include jax"),
    (["bench", "--grid", "--states", "4,0"], "--states must be >= 1"),
    (["bench", "--grid", "--large-states", "big"], "--large-states: 'big' is not an integer"),
    # TBPTT(k1, k2): K2 below num_steps, below 1, not an integer, longer than a row of data
    (["run", "--num-steps", "5", "--backprop-steps", "3"],
     "--backprop-steps must be an integer from num_steps (5) to the steps in a row of data (5000), got 3"),
    (["run", "--num-steps", "1", "--backprop-steps", "0"], "--backprop-steps must be an integer from num_steps (1)"),
    (["bench", "--backprop-steps", "7.5"], "argument --backprop-steps: invalid int value: '7.5'"),
    (["run", "--data-size", "2000", "--batch-size", "200", "--backprop-steps", "11"],
     "to the steps in a row of data (10), got 11"),
    (["sweep", "--backprop-steps", "9,,"], "--backprop-steps: '' is not an integer"),
    (["sweep", "--backprop-steps", "nine"], "--backprop-steps: 'nine' is not an integer"),
    (["sweep", "--num-steps", "5,10", "--backprop-steps", "3,4"], "--backprop-steps: every value is below every --num-steps"),
    (["sweep", "--backprop-steps", "20000"], "to the steps in a row of data (5000), got 20000"),
    (["bench", "--many-runs", "2", "--backprop-steps", "9"], "--backprop-steps: --many-runs chooses the truncation itself"),
]


@pytest.mark.parametrize("argv, message", CLI_CASES)
def test_cli_bad_input(argv, message, tmp_path, capsys):
    params = io.flatten(glorot_params(2, 4, 0))
    _npz(tmp_path, "nan.npz", **{**params, "softmax/b": np.full(2, np.nan, np.float32)})
    (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 truncated")
    _npz(tmp_path, "wrongkeys.npz", a=np.zeros((1, 100), int), b=np.zeros((1, 100), int))
    _npz(tmp_path, "range.npz", x=np.full((1, 100), 7), y=np.zeros((1, 100), int))
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and message.replace("{tmp}", str(tmp_path)) in err, err
    assert "usage: rnn-compare" in err and "Traceback" not in err and not (tmp_path / "out").exists()


def test_cli_notes_dropped_points(tmp_path, capsys):
    assert main(["run", "--impl", "jax", "--quiet", "--data-size", "2017", "--batch-size", "20", "--num-steps", "7",
                 "--out", str(tmp_path)]) == 0
    assert "note: 2,017 points per epoch = 20 rows of 100 (+17 dropped), 14 windows of 7 per row: 57 points" in capsys.readouterr().err
