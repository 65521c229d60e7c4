"""Runs split across devices (a Mesh over the run axis) equal the single-device runs exactly; remat is exact."""

import os
import subprocess
import sys
import textwrap

import jax
import numpy as np

import jax_rnn
from jax_rnn import data as task

SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np, jax_rnn
    from jax_rnn import data as task
    assert len(jax.devices()) == 4, jax.devices()
    runs, opt = 8, jax_rnn.adagrad(0.1)
    data = [task.windows(*task.gen_data(4_000, seed), batch_size=8, num_steps=5) for seed in range(runs)]
    stack = lambda trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    params = stack([jax_rnn.init_params(jax.random.key(s)) for s in range(runs)])
    opt_state = jax.vmap(opt.init)(params)
    xw, yw = jnp.stack([d[0] for d in data]), jnp.stack([d[1] for d in data])
    single = jax_rnn.train_runs(params, opt_state, xw, yw, opt)
    sharded = jax_rnn.train_runs_sharded(params, opt_state, xw, yw, opt)
    assert len(sharded[3].sharding.device_set) == 4, sharded[3].sharding
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    six = jax.tree.map(lambda a: a[:6], (params, opt_state, xw, yw))  # 6 runs on 4 devices: padded to 8
    for a, b in zip(jax.tree.leaves(jax_rnn.train_runs(*six, opt)), jax.tree.leaves(jax_rnn.train_runs_sharded(*six, opt))):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    try:
        jax_rnn.shard_runs(six, jax_rnn.run_mesh())
    except ValueError as e:
        assert "divisible by the number of devices" in str(e), e
    else:
        raise AssertionError("shard_runs: 6 runs on 4 devices should be refused")
    print("OK sharded equals single")
""")


def test_sharded_runs_on_4_cpu_devices_equal_single_device_runs():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4", JAX_PLATFORMS="cpu")
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "OK sharded equals single" in out.stdout


def test_sharded_on_one_device_is_train_runs():
    opt = jax_rnn.adagrad(0.1)
    params = jax.tree.map(lambda a: a[None], jax_rnn.init_params(jax.random.key(0)))
    xw, yw = (a[None] for a in task.windows(*task.gen_data(2_000, 0), 10, 5))
    a = jax_rnn.train_runs(params, jax.vmap(opt.init)(params), xw, yw, opt)
    b = jax_rnn.train_runs_sharded(params, jax.vmap(opt.init)(params), xw, yw, opt, mesh=jax_rnn.run_mesh(jax.devices()[:1]))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)


def test_remat_gives_the_same_training_as_without():
    opt = jax_rnn.adagrad(0.1)
    params = jax_rnn.init_params(jax.random.key(0), state_size=8)
    xw, yw = task.windows(*task.gen_data(20_000, 0), batch_size=10, num_steps=40)
    plain = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt)
    remat = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt, remat=True)
    np.testing.assert_allclose(plain[3], remat[3], rtol=0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(plain[0]), jax.tree.leaves(remat[0])):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_remat_blocks_handle_a_prime_number_of_steps_and_save_memory():
    """num_steps 997 (prime): blocks of 32 steps plus a remainder of 5; same loss and gradient as without."""
    assert jax_rnn.model.remat_block_size(997) == 32 and jax_rnn.model.remat_block_size(1) == 1
    params = jax_rnn.init_params(jax.random.key(1), state_size=8)
    x, y = (np.asarray(a[0]) for a in task.windows(*task.gen_data(4 * 997, 0), batch_size=4, num_steps=997))
    state = jax_rnn.zero_state(4, 8)
    compiled = {remat: jax.jit(jax.value_and_grad(lambda p: jax_rnn.loss(p, x, y, state, unroll=16, remat=remat)[0]))
                .lower(params).compile() for remat in (False, True)}          # each compiled once
    (plain, g_plain), (remat, g_remat) = compiled[False](params), compiled[True](params)
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    temp = {remat: c.memory_analysis().temp_size_in_bytes for remat, c in compiled.items()}
    assert temp[True] < temp[False] / 5
