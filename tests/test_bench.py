"""``rnn-compare bench``'s modes on tiny cells, and sweeps split over several devices."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from compare import bench, cli


@pytest.mark.skipif(not shutil.which("cc") and not shutil.which("gcc"), reason="needs a C compiler")
@pytest.mark.slow
def test_bench_grid_times_jax_c_and_tf_in_one_run(tmp_path, capsys):
    """``bench --grid``: one row per cell with JAX, the C loop (same losses as JAX) and the fastest TF version;
    the large states without the C loop."""
    assert cli.main(["bench", "--grid", "--impl", "jax,tf-raw", "--states", "3", "--steps", "2,4",
                     "--large-states", "8", "--data-size", "4000", "--batch-size", "20", "--repeats", "1",
                     "--out", str(tmp_path), "--name", "g", "--quiet"]) == 0
    result = json.loads((tmp_path / "g.json").read_text())
    assert [(c["state_size"], c["num_steps"], c["data_size"]) for c in result["cells"]] == \
           [(3, 2, 4000), (3, 4, 4000), (8, 10, 100_000)]
    small, large = result["cells"][:2], result["cells"][2]
    for cell in small:
        assert cell["results"]["c"]["max_loss_diff"] < 1e-5 and cell["jax_over_c"] > 0
        assert cell["fastest_tf"] == "tf-raw" and cell["fastest_tf_over_jax"] > 0
        assert len(cell["results"]["jax"]["epoch_seconds"]) == 1
    assert "c" not in large["results"] and large["jax_over_c"] is None
    assert (tmp_path / "g.png").read_bytes()[:4] == b"\x89PNG"
    assert capsys.readouterr().out.count("\n| 3 | ") == 2


TINY = ["--data-size", "20000", "--states", "4", "--steps", "5", "--repeats", "1", "--quiet"]


@pytest.mark.slow
def test_bench_truncation_times_each_k2_against_tf_style(tmp_path, capsys):
    assert cli.main(["bench", "--truncation", "3,9,10", *TINY, "--out", str(tmp_path), "--name", "t"]) == 0
    result = json.loads((tmp_path / "t.json").read_text())
    assert result["command"] == "bench --truncation" and not (tmp_path / "t.png").exists()
    rows = result["rows"]
    assert [(r["state_size"], r["num_steps"], r["backprop_steps"]) for r in rows] == [(4, 5, 9), (4, 5, 10)]  # k2 > k1
    for r in rows:
        assert r["cost"] == pytest.approx(r["tbptt"]["median"] / r["tf_style"]["median"]) and r["cost"] > 0
        assert r["bound"] == pytest.approx(1.2 * r["backprop_steps"] / 5) and r["compile_seconds"] > 0
        assert len(r["tbptt"]["seconds"]) == len(r["tf_style"]["seconds"]) == 1
    assert capsys.readouterr().out.count("\n| 4 | 5 | ") == 2


def test_bench_many_runs_times_r_runs_against_one(tmp_path, capsys):
    assert cli.main(["bench", "--many-runs", "2,3", *TINY, "--out", str(tmp_path), "--name", "m"]) == 0
    (row,) = json.loads((tmp_path / "m.json").read_text())["rows"]
    assert (row["state_size"], row["num_steps"]) == (4, 5) and set(row["per_run"]) == {"2", "3"}
    for r, per_run in row["per_run"].items():
        assert per_run == pytest.approx(row["runs"][r]["median"] / int(r) / row["one_run"]["median"])
    assert "R=2: " in capsys.readouterr().out


@pytest.mark.slow  # tunes a cell: about 10 compiles
def test_bench_random_cells_times_rule_and_tuned_plans_against_c(tmp_path, monkeypatch):
    monkeypatch.setenv("RNN_SCAN_CACHE_DIR", str(tmp_path / "cache"))
    assert cli.main(["bench", "--random-cells", "1", "--seed", "3", "--data-size", "20000", "--repeats", "1",
                     "--quiet", "--out", str(tmp_path), "--name", "r"]) == 0
    (row,) = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert 2 <= row["state_size"] <= 64 and 16 <= row["batch_size"] <= 1000 and 1 <= row["num_steps"] <= 20
    assert row["tuned_over_c"] == pytest.approx(row["tuned"]["median"] / row["c"]["median"]) and row["tuning_seconds"] > 0


SWEEP = [sys.executable, "-m", "compare", "sweep", "--impl", "jax", "--num-steps", "5", "--state-size", "4",
         "--seeds", "3", "--epochs", "1", "--data-size", "20000", "--batch-size", "20", "--quiet"]


@pytest.mark.slow  # a subprocess with 4 host devices: 10 s (the sharding itself: tests/test_parallel.py)
def test_sweep_splits_3_seeds_over_all_4_devices_with_the_same_results(tmp_path):
    results = {}
    for devices in (1, 4):
        env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu")
        out = subprocess.run(SWEEP + ["--out", str(tmp_path), "--name", f"d{devices}"], env=env,
                             capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        results[devices] = json.loads((tmp_path / f"d{devices}.json").read_text())
    assert results[1]["config"]["jax_devices"] == 1 and results[4]["config"]["jax_devices"] == 4
    a, b = (np.array(results[d]["cells"][0]["avg_losses"]) for d in (1, 4))
    # Bit-identical within one process (tests/test_parallel.py); across processes with another host
    # device count XLA may split CPU reductions differently: equal to float32 rounding.
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
