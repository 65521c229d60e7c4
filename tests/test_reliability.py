"""Divergence stops training on both sides, runs reproduce, checkpoints resume bit for bit, writes are atomic."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rnn
from jax_rnn import data as task
from compare.cli import main
from conftest import numpy_params

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data-size", "20000", "--batch-size", "20", "--quiet"]


# --- divergence ------------------------------------------------------------------------------------

def _finite(tree) -> bool:
    return all(np.all(np.isfinite(np.asarray(a))) for a in jax.tree.leaves(tree))


@pytest.mark.parametrize("lr", [1e37, 3e38])
def test_guarded_epoch_stops_at_the_first_non_finite_step_and_keeps_finite_params(lr):
    xw, yw = task.windows(*task.gen_data(20_000, seed=0), 20, 5)
    params = jax.tree.map(jnp.asarray, numpy_params(0, state_size=16))
    opt = jax_rnn.adagrad(lr)
    plain = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt)
    out = jax_rnn.train_epoch_guarded(params, opt.init(params), xw, yw, opt)
    k = int(out.diverged_at)
    bad = np.flatnonzero(~np.isfinite(np.asarray(plain[3])))
    assert k >= 0 and k <= bad[0]                     # no later than the first non-finite loss
    np.testing.assert_array_equal(out.losses[:k], plain[3][:k])
    assert np.all(np.isnan(out.losses[k + 1:])) and _finite((out.params, out.opt_state))
    # The kept parameters are those before window k: k guarded steps reproduce them.
    p, o, _, _ = jax_rnn.train_epoch(params, opt.init(params), xw[:k], yw[:k], opt) if k else (params, opt.init(params), 0, 0)
    for a, b in zip(jax.tree.leaves((p, o)), jax.tree.leaves((out.params, out.opt_state))):
        np.testing.assert_array_equal(a, b)


def test_guarded_runs_equal_guarded_epochs_run_by_run(small_windows):
    """``train_runs(guard=True)``: each vmapped run stops where `train_epoch_guarded` stops it alone, with the
    same parameters to float rounding (vmapped and alone are other programs: at this learning rate the
    parameters reach 1e35, and the two roundings differ by about 1e-6 of that scale)."""
    xw, yw = small_windows
    opt = jax_rnn.adagrad(1e37)
    runs = [jax.tree.map(jnp.asarray, numpy_params(seed, state_size=16)) for seed in (0, 1, 2)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    out = jax_rnn.train_runs(stack(runs), stack([opt.init(p) for p in runs]), stack([xw] * 3), stack([yw] * 3), opt,
                             guard=True)
    for r, p in enumerate(runs):
        alone = jax_rnn.train_epoch_guarded(p, opt.init(p), xw, yw, opt)
        assert int(out.diverged_at[r]) == int(alone.diverged_at) >= 0
        for a, b in zip(jax.tree.leaves((out.params, out.opt_state)), jax.tree.leaves((alone.params, alone.opt_state))):
            np.testing.assert_allclose(a[r], b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))


@pytest.mark.parametrize("gradient", ["autodiff", "by_hand"])
def test_guard_changes_nothing_in_the_normal_case(gradient):
    """Where training stays finite the guarded epoch is the epoch, bit for bit, in either gradient."""
    xw, yw = task.windows(*task.gen_data(10_000, seed=0), 100, 5)
    params = jax.tree.map(jnp.asarray, numpy_params(0))
    plan = jax_rnn.plan(4, 100, 5, backend="cpu")
    assert plan.gradient == "by_hand"
    plan = dataclasses.replace(plan, gradient=gradient)
    opt = jax_rnn.adagrad(0.1)
    plain = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt, plan=plan)
    guarded = jax_rnn.train_epoch_guarded(params, opt.init(params), xw, yw, opt, plan=plan)
    assert int(guarded.diverged_at) == -1
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(tuple(guarded)[:4])):
        np.testing.assert_array_equal(a, b)


def test_fit_raises_training_diverged_with_epoch_step_and_last_finite_params():
    config = jax_rnn.FitConfig(state_size=16, learning_rate=1e37, data_size=20_000, batch_size=20)
    with pytest.raises(jax_rnn.TrainingDiverged, match=r"diverged at epoch 0, step 1 \(0-based\)") as err:
        jax_rnn.fit(config)
    e = err.value
    assert (e.epoch, e.step) == (0, 1) and _finite(e.params) and e.result.diverged.step == 1
    assert np.all(np.isnan(e.result.step_losses[0, 2:]))


def test_cli_reports_divergence_per_implementation(tmp_path):
    status = main(["run", "--impl", "jax,tf-dynamic", "--state-size", "16", "--learning-rate", "1e37", *SMALL,
                   "--out", str(tmp_path), "--name", "d"])
    result = json.loads((tmp_path / "d.json").read_text())
    for impl in ("jax", "tf-dynamic"):
        r = result["results"][impl]
        assert r["level"] == "diverged" and r["diverged"]["epoch"] == 0 and r["final_loss"] is None
        assert len(r["step_losses"]) == r["diverged"]["step"] + 1
    assert status == 0 and result["agreement"]["all_agree"] is True
    assert "diverged at epoch 0, step" in (tmp_path / "d.md").read_text()


def _reject(token):
    raise ValueError(f"non-standard JSON token {token}")


def test_a_diverged_run_writes_strict_json(tmp_path):
    main(["run", "--impl", "jax,tf-raw", "--state-size", "16", "--learning-rate", "1e37", *SMALL,
          "--out", str(tmp_path), "--name", "d"])
    result = json.loads((tmp_path / "d.json").read_text(), parse_constant=_reject)
    assert any(v is None for r in result["results"].values() for v in r["step_losses"] + [r["diverged"]["loss"]])


def test_sweep_reports_divergence_per_seed_and_stops_tf_there(tmp_path):
    assert main(["sweep", "--impl", "jax,tf-raw", "--num-steps", "5", "--state-size", "16", "--seeds", "2",
                 "--epochs", "2", "--learning-rate", "1e37", *SMALL, "--out", str(tmp_path), "--name", "s"]) == 0
    result = json.loads((tmp_path / "s.json").read_text(), parse_constant=_reject)
    for cell in result["cells"]:
        assert cell["level"] == "diverged" and cell["levels"] == ["diverged", "diverged"]
        assert all(d is not None and d["epoch"] == 0 for d in cell["diverged"]) and cell["mean"] is None
    jax_cell, tf = result["cells"]
    assert tf["impl"] == "tf-raw" and all(v is None for v in tf["avg_losses"][0][-5:])  # epoch 2 never ran
    assert jax_cell["diverged"] == tf["diverged"]  # both guards stop every seed at the same window
    assert all(v is None for v in jax_cell["avg_losses"][0][-5:])
    assert "diverged" in (tmp_path / "s.md").read_text()


# --- reproducibility -------------------------------------------------------------------------------

@pytest.mark.slow  # two processes importing TensorFlow: 10 s; `make test-all`
def test_tensorflow_with_op_determinism_is_bit_identical_across_processes():
    code = ("import numpy as np, sys, jax_rnn, tf_rnn; from jax_rnn import data as task; "
            "xw, yw = task.windows(*task.gen_data(20000, seed=0), 20, 5); cfg = tf_rnn.ModelConfig(batch_size=20); "
            "m = tf_rnn.build('dynamic', cfg, jax_rnn.glorot_params(2, 4, 0), deterministic=True); "
            "sys.stdout.write(m.train_epoch(xw, yw).losses.tobytes().hex())")
    runs = [subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
            for _ in range(2)]
    assert runs[0] == runs[1] and len(runs[0]) == 200 * 8


def test_run_from_json_reproduces_the_step_losses(tmp_path, capsys):
    assert main(["run", "--impl", "jax", *SMALL, "--epochs", "2", "--seed", "3", "--out", str(tmp_path), "--name", "a"]) == 0
    first = json.loads((tmp_path / "a.json").read_text())
    assert {"config", "environment"} <= set(first) and first["config"]["seed"] == 3 and "deterministic" in first["config"]
    assert main(["run", "--from", str(tmp_path / "a.json"), "--quiet", "--out", str(tmp_path), "--name", "b"]) == 0
    again = json.loads((tmp_path / "b.json").read_text())
    assert again["results"]["jax"]["step_losses"] == first["results"]["jax"]["step_losses"]
    assert again["rerun_of"]["identical"] == {"jax": True} and "identical" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["run", "--from", str(tmp_path / "a.json"), "--seed", "4", "--out", str(tmp_path)])
    assert "--from fixes the config; do not also give --seed" in capsys.readouterr().err


def test_run_from_json_restores_the_device(tmp_path, monkeypatch):
    from compare import cli, io

    assert main(["run", "--impl", "jax", *SMALL, "--out", str(tmp_path), "--name", "a"]) == 0
    saved = json.loads((tmp_path / "a.json").read_text())
    assert saved["config"]["device"] == "cpu"
    saved["config"]["device"] = "auto"  # as if recorded with --device auto
    (tmp_path / "auto.json").write_text(json.dumps(saved))
    asked = []
    real = io.resolve
    monkeypatch.setattr(io, "resolve", lambda requested, need_tf: asked.append(requested) or real("cpu", need_tf))
    assert main(["run", "--from", str(tmp_path / "auto.json"), "--out", str(tmp_path), "--name", "b"]) == 0
    assert asked == ["auto"]
    del saved["config"]["device"]  # written before the key existed: environment.device.requested
    saved["environment"]["device"]["requested"] = "gpu"
    (tmp_path / "old.json").write_text(json.dumps(saved))
    args = type("Args", (), {"from_json": str(tmp_path / "old.json"), "option_defaults": {},
                             **{name: None for name in cli.FROM_OPTIONS}})()
    cli.apply_from(args)
    assert args.device == "gpu"


# --- checkpoints -----------------------------------------------------------------------------------

def test_fit_resumed_from_a_checkpoint_equals_an_uninterrupted_run(tmp_path):
    config = jax_rnn.FitConfig(data_size=20_000, batch_size=20, epochs=3, seed=2)
    straight = jax_rnn.fit(config)
    ckpt = tmp_path / "fit.npz"
    jax_rnn.fit(dataclasses.replace(config, epochs=2), checkpoint=ckpt)      # "killed" after epoch 2
    resumed = jax_rnn.fit(config, resume=ckpt, checkpoint=ckpt)
    np.testing.assert_array_equal(resumed.step_losses, straight.step_losses)
    for a, b in zip(jax.tree.leaves((resumed.params, resumed.opt_state)), jax.tree.leaves((straight.params, straight.opt_state))):
        np.testing.assert_array_equal(a, b)
    assert jax_rnn.checkpoint.load(ckpt).epochs_done == 3
    with pytest.raises(ValueError, match="written by another config .state_size=4 there vs 16 here"):
        jax_rnn.fit(dataclasses.replace(config, state_size=16), resume=ckpt)


@pytest.mark.parametrize("truncation", [[], pytest.param(["--num-steps", "3", "--backprop-steps", "7"], marks=pytest.mark.slow)])
def test_cli_resume_equals_an_uninterrupted_run(tmp_path, capsys, truncation):
    base = ["run", "--impl", "jax,tf-dynamic", *SMALL, *truncation, "--out", str(tmp_path)]
    assert main([*base, "--epochs", "3", "--name", "straight"]) == 0
    assert main([*base, "--epochs", "2", "--name", "part", "--checkpoint", str(tmp_path / "ck")]) == 0
    assert main([*base, "--epochs", "3", "--name", "resumed", "--resume", str(tmp_path / "ck")]) == 0
    straight, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("straight", "resumed"))
    assert resumed["results"]["jax"]["step_losses"] == straight["results"]["jax"]["step_losses"]
    np.testing.assert_allclose(resumed["results"]["tf-dynamic"]["step_losses"],
                               straight["results"]["tf-dynamic"]["step_losses"], atol=1e-6)
    assert resumed["results"]["jax"]["resumed_from"]["epochs_done"] == 2
    with pytest.raises(SystemExit):
        main([*base, "--epochs", "3", "--state-size", "8", "--resume", str(tmp_path / "ck"), "--name", "x"])
    assert "was written by another config (state_size=4 there vs 8 here)" in capsys.readouterr().err
    if truncation:  # the truncation is part of the config a checkpoint continues
        with pytest.raises(SystemExit):
            main([*base, "--epochs", "3", "--backprop-steps", "9", "--resume", str(tmp_path / "ck"), "--name", "y"])
        assert "backprop_steps=7 there vs 9 here" in capsys.readouterr().err


def test_fit_checkpoints_its_plan_and_a_resumed_fit_trains_with_it(tmp_path, monkeypatch):
    """The plan a run trained with is in its checkpoint (``meta["plan"]``); resuming trains with that plan,
    not with one made anew (the rules may have changed in between)."""
    import importlib

    from jax_rnn import checkpoint

    fit_module = importlib.import_module("jax_rnn.fit")  # the module (``jax_rnn.fit`` is the function)

    config = jax_rnn.FitConfig(data_size=2_000, batch_size=20, epochs=2)
    ckpt = tmp_path / "fit.npz"
    jax_rnn.fit(dataclasses.replace(config, epochs=1), checkpoint=ckpt)
    saved = checkpoint.load(ckpt)
    plan = jax_rnn.plan(config.state_size, config.batch_size, config.num_steps)
    assert jax_rnn.Plan.from_record(saved.meta["plan"]) == plan
    # The checkpoint of a run trained with another plan: the plain program.
    checkpoint.save(ckpt, saved._replace(meta={**saved.meta, "plan": plan.plain().record()}))
    used = []
    real = fit_module.JaxTrainer

    def trainer(*args, **kwargs):
        t = real(*args, **kwargs)
        used.append(t.plan)
        return t

    monkeypatch.setattr(fit_module, "JaxTrainer", trainer)
    jax_rnn.fit(config, resume=ckpt, checkpoint=ckpt)
    assert used == [plan.plain()]
    assert jax_rnn.Plan.from_record(checkpoint.load(ckpt).meta["plan"]) == plan.plain()
    jax_rnn.fit(config, checkpoint=tmp_path / "fresh.npz")
    assert used[-1] == plan
    # Tuning on, and it would choose otherwise: the resumed run still trains with its checkpoint's plan.
    from jax_rnn import tune

    monkeypatch.setenv("RNN_SCAN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(tune.ENV, "1")
    tune._store(plan, {"plan": dataclasses.replace(plan, unroll=2).record()}, tune.wisdom_path())
    checkpoint.save(ckpt, saved._replace(meta={**saved.meta, "plan": plan.plain().record()}))
    jax_rnn.fit(config, resume=ckpt, checkpoint=ckpt)
    jax_rnn.fit(config, checkpoint=tmp_path / "tuned.npz")
    assert used[-2:] == [plan.plain(), dataclasses.replace(plan, unroll=2)]


def test_fit_and_the_cli_write_one_checkpoint_format(tmp_path):
    """`fit`'s checkpoint and ``rnn-compare run``'s are one format (`jax_rnn.checkpoint`): both load with the
    same reader and hold the same parameters and Adagrad accumulators after the same training; each
    writer refuses the other's file by name."""
    config = jax_rnn.FitConfig(batch_size=20, data_size=20_000, epochs=1, seed=3)
    jax_rnn.fit(config, checkpoint=tmp_path / "fit.npz")
    assert main(["run", "--impl", "jax", "--batch-size", "20", "--data-size", "20000", "--seed", "3", "--quiet",
                 "--out", str(tmp_path), "--checkpoint", str(tmp_path / "ck")]) == 0
    from_fit, from_cli = jax_rnn.checkpoint.load(tmp_path / "fit.npz"), jax_rnn.checkpoint.load(tmp_path / "ck" / "jax.npz")
    for a, b in zip(jax.tree.leaves((from_fit.params, from_fit.accumulators, from_fit.step_losses)),
                    jax.tree.leaves((from_cli.params, from_cli.accumulators, from_cli.step_losses))):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="was written by 'rnn-compare run', not by fit"):
        jax_rnn.fit(config, resume=tmp_path / "ck" / "jax.npz")


def test_an_interrupted_write_leaves_the_old_checkpoint_intact(tmp_path, monkeypatch):
    ckpt = tmp_path / "fit.npz"
    config = jax_rnn.FitConfig(data_size=2_000, batch_size=20, epochs=1)
    jax_rnn.fit(config, checkpoint=ckpt)
    before = ckpt.read_bytes()

    def crash(src, dst):
        raise KeyboardInterrupt("killed during the rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        jax_rnn.fit(dataclasses.replace(config, epochs=2), resume=ckpt, checkpoint=ckpt)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and jax_rnn.checkpoint.load(ckpt).epochs_done == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fit.npz"]  # the temporary file was removed


def test_sigkill_during_large_writes_never_leaves_a_loadable_partial_file(tmp_path):
    """A process rewriting a 40 MB checkpoint in a loop is SIGKILLed: the target still loads completely."""
    target = tmp_path / "big.npz"
    code = f"""
import numpy as np, sys
from jax_rnn import checkpoint as c
big = np.zeros((1000, 10000), np.float32)
params = {{"rnn_cell": {{"W": np.zeros((6, 4), np.float32), "b": np.zeros(4, np.float32)}},
          "softmax": {{"W": np.zeros((4, 2), np.float32), "b": np.zeros(2, np.float32)}}}}
for i in range(10**6):
    c.save({str(target)!r}, c.Checkpoint({{"i": i}}, 1, params, params, big, [0.0], {{}}))
    if i == 0:
        print("ready", flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    time.sleep(0.7)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    loaded = jax_rnn.checkpoint.load(target)
    assert loaded.step_losses.shape == (1000, 10000) and loaded.config["i"] >= 0
    leftovers = [p for p in tmp_path.iterdir() if p != target]
    assert all(p.name.startswith(".big.npz.") and p.name.endswith(".tmp") for p in leftovers)
