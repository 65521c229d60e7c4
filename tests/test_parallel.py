import pytest
"""Runs split across devices (``train_runs(..., mesh=run_mesh())``) equal the single-device runs exactly;
remat (a plan's ``remat=True``) trains the same as without."""

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
    sharded = jax_rnn.train_runs(params, opt_state, xw, yw, opt, mesh=jax_rnn.run_mesh())
    assert len(sharded[3].sharding.device_set) == 4, sharded[3].sharding
    for a, b in zip(jax.tree.leaves(single), jax.tree.leaves(sharded)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    six = jax.tree.map(lambda a: a[:6], (params, opt_state, xw, yw))  # 6 runs on 4 devices: padded to 8
    for a, b in zip(jax.tree.leaves(jax_rnn.train_runs(*six, opt)),
                    jax.tree.leaves(jax_rnn.train_runs(*six, opt, mesh=jax_rnn.run_mesh()))):
        assert a.shape == b.shape and a.shape[0] == 6
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # The guard, a given state and the plan go with the runs onto the devices (padded too).
    state, plan = jnp.full((6, 8, 4), 0.5, jnp.float32), jax_rnn.plan(4, 8, 5, runs=6)
    alone = jax_rnn.train_runs(*six, opt, state, plan, guard=True)
    split = jax_rnn.train_runs(*six, opt, state, plan, guard=True, mesh=jax_rnn.run_mesh())
    assert type(alone) is type(split) is jax_rnn.GuardedEpoch and split.losses.shape == (6, 100)
    for a, b in zip(jax.tree.leaves(alone), jax.tree.leaves(split)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print("OK sharded equals single")
""")


@pytest.mark.slow
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
    b = jax_rnn.train_runs(params, jax.vmap(opt.init)(params), xw, yw, opt, mesh=jax_rnn.run_mesh(jax.devices()[:1]))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_array_equal(x, y)
    mesh = jax_rnn.run_mesh()
    assert mesh.axis_names == ("runs",) and mesh.devices.size == len(jax.devices())


def test_remat_gives_the_same_training_as_without():
    opt = jax_rnn.adagrad(0.1)
    params = jax_rnn.init_params(jax.random.key(0), state_size=8)
    xw, yw = task.windows(*task.gen_data(2_600, 0), batch_size=10, num_steps=13)   # blocks of 4 steps and 1
    plan = jax_rnn.plan(8, 10, 13)
    remat = jax_rnn.plan(8, 10, 13, remat=True)
    assert remat.remat and not plan.remat and jax_rnn.model.remat_block_size(13) == 4
    plain = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt, plan=plan)
    rematted = jax_rnn.train_epoch(params, opt.init(params), xw, yw, opt, plan=remat)
    np.testing.assert_allclose(plain[3], rematted[3], rtol=0, atol=1e-6)
    for a, b in zip(jax.tree.leaves(plain[:3]), jax.tree.leaves(rematted[:3])):
        np.testing.assert_allclose(a, b, atol=1e-6)


@pytest.mark.slow
def test_remat_blocks_handle_a_prime_number_of_steps_and_save_memory():
    """num_steps 997 (prime): blocks of 32 steps plus a remainder of 5; same loss and gradient as without."""
    assert jax_rnn.model.remat_block_size(997) == 32 and jax_rnn.model.remat_block_size(1) == 1
    params = jax_rnn.init_params(jax.random.key(1), state_size=8)
    x, y = (np.asarray(a[0]) for a in task.windows(*task.gen_data(4 * 997, 0), batch_size=4, num_steps=997))
    state = jax_rnn.zero_state(4, 8)
    plans = {remat: jax_rnn.plan(8, 4, 997, remat=remat) for remat in (False, True)}
    assert all(p.unroll == 16 for p in plans.values())
    compiled = {remat: jax.jit(jax.value_and_grad(lambda p, plan=plan: jax_rnn.loss(p, x, y, state, plan)[0]))
                .lower(params).compile() for remat, plan in plans.items()}          # each compiled once
    (plain, g_plain), (remat, g_remat) = compiled[False](params), compiled[True](params)
    np.testing.assert_allclose(remat, plain, rtol=1e-6)
    for a, b in zip(jax.tree.leaves(g_plain), jax.tree.leaves(g_remat)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
    temp = {remat: c.memory_analysis().temp_size_in_bytes for remat, c in compiled.items()}
    assert temp[True] < temp[False] / 5
