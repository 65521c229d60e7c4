"""End-to-end tests of ``rnn-compare`` (compare.cli) on small data, called in-process through ``main``."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from compare import io
from compare.cli import main
from jax_rnn.model import glorot_params
from compare.run import agreement
from jax_rnn import checkpoint as jax_rnn_checkpoint

ROOT = Path(__file__).resolve().parents[1]
SMALL = ["--data-size", "20000", "--batch-size", "20", "--quiet"]  # 200 windows of [20, 5] per epoch
RESULT_KEYS = {"step_losses", "avg_losses", "final_loss", "level", "compile_seconds", "epoch_seconds",
               "steps_per_second", "points_per_second"}


def _run(argv, tmp_path, name="r"):
    """Run the CLI into ``tmp_path``; return (exit status, parsed JSON)."""
    status = main([*argv, "--out", str(tmp_path), "--name", name])
    return status, json.loads((tmp_path / f"{name}.json").read_text())


def _usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """One small run of jax and tf-dynamic from the same params and data, final params saved."""
    out = tmp_path_factory.mktemp("run")
    status, result = _run(["run", "--impl", "jax,tf-dynamic", *SMALL, "--epochs", "2",
                           "--save-params", str(out / "final.npz")], out)
    return out, status, result


def test_run_writes_json_table_plot_and_params(demo):
    out, status, result = demo
    assert status == 0
    assert {"config", "environment", "targets", "results", "agreement"} <= set(result)
    assert {"python", "numpy", "jax", "jaxlib", "optax", "tensorflow", "cpu_count", "device"} <= set(result["environment"])
    assert result["environment"]["device"]["jax"]["kind"] == "cpu"
    assert result["targets"] == pytest.approx({"none": 0.6616, "first": 0.5192, "both": 0.4545}, abs=1e-4)
    for impl in ("jax", "tf-dynamic"):
        r = result["results"][impl]
        assert RESULT_KEYS <= set(r)
        assert len(r["step_losses"]) == 2 * 200 and len(r["avg_losses"]) == 2 * 2 and len(r["epoch_seconds"]) == 2
        assert r["final_loss"] == pytest.approx(np.mean(r["step_losses"][-100:]))
        assert r["level"] in ("none", "first", "both")
        assert r["steps_per_second"] == pytest.approx(r["timed_steps"] / sum(r["epoch_seconds"]))
        saved = io.load_params(str(out / f"final-{impl}.npz"), 2, 4)
        assert not np.allclose(saved["rnn_cell"]["W"], glorot_params(2, 4, 0)["rnn_cell"]["W"])  # trained
    jax, tf = result["results"]["jax"], result["results"]["tf-dynamic"]
    # compile apart from training on both sides: TF's first step is in compile_seconds, not in epoch 1
    assert jax["first_step_seconds"] is None and jax["compile_seconds"] == jax["build_seconds"]
    assert jax["timed_steps"] == 400 and tf["timed_steps"] == 399
    assert tf["compile_seconds"] == pytest.approx(tf["build_seconds"] + tf["first_step_seconds"])
    assert result["environment"]["tf_keras"] and result["config"]["device"] == "cpu"
    assert (out / "r.md").read_text().startswith("## rnn-compare run")
    assert (out / "r.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


def test_run_agreement_jax_vs_tf_dynamic(demo):
    _, _, result = demo
    (pair,) = result["agreement"]["pairs"]
    diff = np.max(np.abs(np.subtract(result["results"]["jax"]["step_losses"],
                                     result["results"]["tf-dynamic"]["step_losses"])))
    assert pair["max_abs_diff"] == pytest.approx(diff) and diff < 1e-4
    assert pair["same_params"] and pair["agree"] is True and result["agreement"]["all_agree"] is True


def test_agreement_flags_disagreement_and_different_starts():
    base = {"step_losses": [0.5, 0.6], "level": "first", "initial_params": "a", "data": "d"}
    results = {"x": base, "y": {**base, "step_losses": [0.5, 0.6003]}, "z": {**base, "initial_params": "b"}}
    pairs = {(p["a"], p["b"]): p for p in agreement(results)["pairs"]}
    assert pairs["x", "y"]["agree"] is False and pairs["x", "y"]["max_abs_diff"] == pytest.approx(3e-4)
    assert pairs["x", "z"]["agree"] is None and pairs["x", "z"]["same_params"] is False
    assert agreement(results)["all_agree"] is False


def test_outputs_never_replaced_without_overwrite(demo, capsys):
    out, _, _ = demo
    before = (out / "r.json").read_bytes()
    err = _usage_error(["run", "--impl", "jax", *SMALL, "--out", str(out), "--name", "r"], capsys)
    assert "exists; pass --overwrite" in err and (out / "r.json").read_bytes() == before
    err = _usage_error(["run", "--impl", "jax", *SMALL, "--out", str(out / "new"), "--json", str(out / "r.json")], capsys)
    assert "--json" in err and "exists" in err
    err = _usage_error(["run", "--impl", "jax", *SMALL, "--out", str(out / "new"),
                        "--save-params", str(out / "final.npz")], capsys)
    assert "final-jax.npz exists" in err


def test_default_names_are_new_each_time(tmp_path):
    stamp = "20250101-000000"
    first = io.output_paths("run", str(tmp_path), None, None, False, stamp)
    io.write_json(first["json"], {})
    second = io.output_paths("run", str(tmp_path), None, None, False, stamp)
    assert first["json"].name == f"run-{stamp}.json" and second["json"].name == f"run-{stamp}-2.json"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two initial-parameter files and two data files (2 epochs of 20,000 points)."""
    d = tmp_path_factory.mktemp("files")
    for k in (1, 2):
        np.savez(d / f"params{k}.npz", **io.flatten(glorot_params(2, 4, seed=10 + k)))
        rng = np.random.default_rng(10 + k)
        x = rng.integers(0, 2, (2, 20000))
        y = (rng.random((2, 20000)) < 0.5 + 0.5 * np.roll(x, 3, axis=1)).astype(np.int64)
        np.savez(d / f"data{k}.npz", x=x, y=y)
    return d


def test_init_params_and_data_files_are_honoured(files, tmp_path):
    def losses(params, data, name):
        status, result = _run(["run", "--impl", "jax,tf-raw", "--batch-size", "20", "--quiet",
                               "--init-params", str(files / params), "--data", str(files / data)], tmp_path, name)
        assert status == 0 and result["config"]["epochs"] == 2 and result["config"]["data_size"] == 20000
        a, b = (np.asarray(result["results"][i]["step_losses"]) for i in ("jax", "tf-raw"))
        np.testing.assert_allclose(a, b, atol=1e-5)
        return a

    reference = losses("params1.npz", "data1.npz", "a")
    assert np.max(np.abs(losses("params2.npz", "data1.npz", "b") - reference)) > 1e-3
    assert np.max(np.abs(losses("params1.npz", "data2.npz", "c") - reference)) > 1e-3
    # The first step's loss is the loss of the file's parameters on the file's first window.
    import jax
    import jax.numpy as jnp
    import jax_rnn
    from jax_rnn import data as task

    with np.load(files / "data1.npz") as data:
        xw, yw = task.windows(data["x"][0], data["y"][0], 20, 5)
    params = jax.tree.map(jnp.asarray, io.load_params(str(files / "params1.npz"), 2, 4))
    first, _ = jax_rnn.loss(params, xw[0], yw[0], jax_rnn.zero_state(20, 4))
    assert reference[0] == pytest.approx(float(first), abs=1e-6)


def test_data_file_conflicting_with_options(files, capsys, tmp_path):
    data = ["run", "--impl", "jax", "--data", str(files / "data1.npz"), "--out", str(tmp_path)]
    assert "--data-size 1000 does not match" in _usage_error([*data, "--data-size", "1000"], capsys)
    assert "--epochs 3 is more than the 2 epoch(s)" in _usage_error([*data, "--epochs", "3"], capsys)
    assert "--batch-size 30000 is larger than the data" in _usage_error([*data, "--batch-size", "30000"], capsys)


def test_sweep_jax(tmp_path):
    status, result = _run(["sweep", "--impl", "jax", "--num-steps", "1,5", "--state-size", "4", "--seeds", "2",
                           "--epochs", "1", *SMALL], tmp_path)
    assert status == 0
    assert [(c["num_steps"], c["state_size"], c["impl"]) for c in result["cells"]] == [(1, 4, "jax"), (5, 4, "jax")]
    for cell in result["cells"]:
        assert len(cell["final_losses"]) == 2 and cell["seeds"] == [0, 1]
        assert cell["mean"] == pytest.approx(np.mean(cell["final_losses"]))
        assert set(cell["levels"]) <= {"none", "first", "both"}
    assert result["cells"][0]["tutorial_level"] == "none" and result["cells"][1]["tutorial_level"] == "first"
    assert result["cells"][0]["final_losses"][0] != result["cells"][0]["final_losses"][1]  # seeds differ
    assert (tmp_path / "r.png").exists() and "| num_steps" in (tmp_path / "r.md").read_text()
    for cell in result["cells"]:  # where the time went, per cell and in all
        assert set(cell["time"]) == {"data", "compile", "train"} and cell["time"]["compile"] > 0
    assert result["time"]["total"] > 0 and result["time"]["train"] == pytest.approx(sum(c["time"]["train"] for c in result["cells"]))
    assert "Time: " in (tmp_path / "r.md").read_text()


@pytest.mark.slow
def test_sweep_takes_backprop_steps_as_a_third_axis(tmp_path):
    """``--backprop-steps num_steps,9``: each num_steps in both truncations (K2 >= num_steps only), recorded
    per cell, checkpointed under its own name; TBPTT(1, 9) can in principle learn what num_steps 1 cannot."""
    status, result = _run(["sweep", "--impl", "jax", "--num-steps", "1,9", "--backprop-steps", "num_steps,9",
                           "--state-size", "4", "--seeds", "1", "--epochs", "1", *SMALL,
                           "--checkpoint", str(tmp_path / "ck")], tmp_path)
    assert status == 0
    assert result["config"]["truncations"] == [[1, 1], [1, 9], [9, 9]]
    cells = {(c["num_steps"], c["backprop_steps"]): c for c in result["cells"]}
    assert set(cells) == {(1, 1), (1, 9), (9, 9)}
    assert cells[(1, 1)]["tutorial_level"] == "none" and cells[(1, 9)]["tutorial_level"] == "both"
    assert cells[(1, 9)]["final_losses"] != cells[(1, 1)]["final_losses"]
    assert sorted(p.name for p in (tmp_path / "ck").glob("*.npz")) == [
        "sweep-1-4-jax.npz", "sweep-1x9-4-jax.npz", "sweep-9-4-jax.npz"]
    assert "| backprop" in (tmp_path / "r.md").read_text()


def test_sweep_cells_trained_at_once_give_the_same_results(tmp_path):
    """Two JAX cells in two threads at once give the losses of one cell after another, bit for bit."""
    argv = ["sweep", "--impl", "jax", "--num-steps", "1,5", "--state-size", "4,8", "--seeds", "2", "--epochs", "2", *SMALL]
    results = [_run([*argv, "--workers", w], tmp_path, name=f"w{w}")[1] for w in ("1", "2")]
    assert [r["config"]["workers"] for r in results] == [1, 2]
    one, two = ([(c["num_steps"], c["state_size"], c["avg_losses"], c["final_losses"]) for c in r["cells"]] for r in results)
    assert one == two


def test_bench(tmp_path):
    status, result = _run(["bench", "--impl", "jax,tf-dynamic", "--repeats", "2", *SMALL], tmp_path)
    assert status == 0 and result["baseline"] == "tf-dynamic"
    for impl, r in result["results"].items():
        assert len(r["epoch_seconds"]) == 2 and r["min_epoch_seconds"] <= r["median_epoch_seconds"] <= r["max_epoch_seconds"]
        assert r["steps_per_second"] == pytest.approx(200 / r["median_epoch_seconds"])
        assert r["build_seconds"] > 0 and r["peak_rss_mib"] is not None and r["estimate_mib"] > 0
    assert result["results"]["tf-dynamic"]["speedup_vs_baseline"] == 1.0
    assert (tmp_path / "r.png").exists()


@pytest.mark.parametrize("command", [["run", "--epochs", "1"], ["bench", "--repeats", "1"]])
def test_jax_plan_is_recorded_and_named(command, tmp_path):
    """``run`` and ``bench`` record the plan JAX trained with: the one `jax_rnn.plan` makes for the options' cell."""
    import jax_rnn

    status, result = _run([*command, "--impl", "jax", "--state-size", "8", "--num-steps", "4", *SMALL], tmp_path)
    assert status == 0
    plan = result["plan"]
    assert (plan["state_size"], plan["batch_size"], plan["num_steps"]) == (8, 20, 4)
    assert plan == jax_rnn.plan(8, 20, 4).record() == result["results"]["jax"]["plan"]
    assert "JAX trained with the plan for state 8, batch 20, num_steps 4" in (tmp_path / "r.md").read_text()


def test_running_average_positions_follow_epochs_and_blocks():
    from compare.report import block_ends
    from compare.run import running_averages

    assert block_ends(2, 250).tolist() == [100, 200, 350, 450]
    assert len(block_ends(2, 250)) == len(running_averages(np.zeros((2, 250))))
    assert block_ends(3, 40).tolist() == [40, 80, 120]  # epochs shorter than 100: one point per epoch


def test_environment_records_tensorflow_versions_without_importing_it(tmp_path):
    code = ("import sys; from compare import io; env = io.describe(io.resolve('cpu', False)); "
            "assert 'tensorflow' not in sys.modules; print(env['tensorflow'], env['tf_keras'])")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "None" not in out and len(out.split()) == 2


def test_bench_help_states_the_real_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps after hyphens
    assert "(default: all five, jax,tf-raw,tf-static,tf-dynamic,tf2)" in text
    assert "points per epoch (default: 1,000,000)" in text and "--epochs" not in text


@pytest.mark.parametrize("kind, arrays, message", [
    ("params", {"rnn_cell/W": np.zeros((6, 4))}, "must hold exactly the keys rnn_cell/W, rnn_cell/b"),
    ("params", {**io.flatten(glorot_params(2, 8, 0))}, "rnn_cell/W must have shape [6, 4]"),
    ("data", {"x": np.zeros((1, 100), int)}, "must hold exactly the keys x, y"),
    ("data", {"x": np.zeros(100, int), "y": np.zeros(100, int)}, "x must be a 2-D array [epochs, data_size]"),
    ("data", {"x": np.zeros((1, 100)), "y": np.zeros((1, 100))}, "x must hold integers"),
])
def test_bad_files(kind, arrays, message, capsys, tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    option = "--init-params" if kind == "params" else "--data"
    err = _usage_error(["run", "--impl", "jax", option, str(path), "--out", str(tmp_path / "out")], capsys)
    assert f"{option}: " in err and message in err


def test_gpu_absent_is_a_usage_error(capsys, tmp_path):
    import jax

    try:
        jax.devices("gpu")
        pytest.skip("this machine has a GPU")
    except RuntimeError:
        pass
    err = _usage_error(["run", "--impl", "jax", "--device", "gpu", "--out", str(tmp_path)], capsys)
    assert "--device gpu: JAX sees no GPU" in err and not list(tmp_path.iterdir())


@pytest.mark.slow
def test_module_help_and_jax_only_run_without_tensorflow(tmp_path):
    """``python -m compare --help`` works; ``--impl jax`` never imports TensorFlow."""
    help_text = subprocess.run([sys.executable, "-m", "compare", "--help"], cwd=ROOT, capture_output=True,
                               text=True, check=True).stdout
    assert "run" in help_text and "sweep" in help_text and "bench" in help_text and "--overwrite" in help_text
    code = ("import sys; from compare.cli import main; "
            f"status = main(['run', '--impl', 'jax', '--data-size', '2000', '--batch-size', '20', '--quiet', "
            f"'--out', {str(tmp_path)!r}]); assert status == 0; assert 'tensorflow' not in sys.modules, 'TF imported'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, capture_output=True)


def test_sweep_killed_part_way_and_resumed_gives_the_same_results(tmp_path):
    """A sweep SIGKILLed part-way, then resumed from its checkpoints, continues every cell from the epoch it
    had saved (nothing saved is trained again) and ends with the results of an uninterrupted sweep, seed for
    seed, bit for bit."""
    import time

    base = [sys.executable, "-m", "compare", "sweep", "--impl", "jax", "--num-steps", "1,5", "--state-size", "4",
            "--seeds", "2", "--epochs", "3", "--data-size", "100000", "--batch-size", "20", "--workers", "1",
            "--quiet", "--out", str(tmp_path)]
    subprocess.run([*base, "--name", "full"], check=True, cwd=ROOT, capture_output=True)
    ck = tmp_path / "ck"
    killed = subprocess.Popen([*base, "--name", "killed", "--checkpoint", str(ck)], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(ck.glob("*.npz")) and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    killed.kill()
    assert killed.wait() == -9, "the sweep finished before it could be killed"
    saved = {f.name: jax_rnn_checkpoint.load(f).epochs_done for f in ck.glob("*.npz")}
    assert saved and not (tmp_path / "killed.json").exists()
    subprocess.run([*base, "--name", "resumed", "--resume", str(ck)], check=True, cwd=ROOT, capture_output=True)
    full, resumed = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("full", "resumed"))
    assert [(c["final_losses"], c["avg_losses"]) for c in full["cells"]] == \
           [(c["final_losses"], c["avg_losses"]) for c in resumed["cells"]]
    loaded = {f"sweep-{c['num_steps']}-{c['state_size']}-jax.npz": c["resumed_epochs"] for c in resumed["cells"]}
    assert all(loaded[name] == epochs >= 1 for name, epochs in saved.items())  # continued, not trained again
    assert len(list(ck.glob("*.npz"))) == 2            # and the resumed sweep checkpointed the rest
