"""jax_rnn.plan: every choice a plan makes trains the same run as the plain autodiff program.

A `Plan` names a cell and the program that trains it (`jax_rnn.plan`'s rules, measured on the CPU:
docs/performance.md). The rules change the program, never the result: on both sides of every threshold
the plan's epoch equals the epoch of ``plan.plain()`` (``jax.grad``, batch-first dots, XLA's defaults) to
float rounding, and so does each option forced on its own. The hand-written backward pass
(`jax_rnn.backward`) equals ``jax.value_and_grad`` of the window loss in float64.
"""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jax_rnn
from jax_rnn import tune
from jax_rnn import data as task
from jax_rnn.backward import value_and_grad_window
from jax_rnn.model import loss_window
from jax_rnn.plan import MAX_UNROLL, Plan

RTOL, ATOL = 1e-5, 1e-6  # float rounding of another summation order, after a few Adagrad updates
OPT = jax_rnn.adagrad(0.1)


def _inputs(state_size, batch, num_steps, windows=4, num_classes=2, runs=1, seed=0):
    """``windows`` windows of ``[batch, num_steps]`` (task data for 2 classes, uniform ids otherwise) and
    the Glorot parameters of ``seed``, with a leading run axis when ``runs > 1``."""
    size = batch * num_steps * windows
    data, params = [], []
    for r in range(runs):
        if num_classes == 2:
            x, y = task.gen_data(max(size, 9), seed + r)
        else:
            x, y = np.random.default_rng(seed + r).integers(0, num_classes, (2, size), dtype=np.int32)
        data.append(task.windows(x, y, batch, num_steps))
        params.append(jax.tree.map(jnp.asarray, jax_rnn.glorot_params(num_classes, state_size, seed + r)))
    if runs == 1:
        return params[0], data[0][0], data[0][1]
    stack = lambda *trees: jax.tree.map(lambda *a: jnp.stack(a), *trees)
    return stack(*params), np.stack([d[0] for d in data]), np.stack([d[1] for d in data])


def _train(plan: Plan, params, xw, yw):
    """The epoch (``train_runs`` for a plan of several runs) from the zero state, as numpy."""
    if plan.runs > 1:
        out = jax_rnn.train_runs(params, jax.vmap(OPT.init)(params), xw, yw, OPT, plan=plan)
    else:
        out = jax_rnn.train_epoch(params, OPT.init(params), xw, yw, OPT, plan=plan)
    return jax.tree.map(np.asarray, out)


def _assert_same_run(got, want, what: str) -> None:
    names = ("params", "opt_state", "final_state", "losses")
    for name, a, b in zip(names, got, want):
        assert jax.tree.structure(a) == jax.tree.structure(b), f"{what}: {name}"
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
            assert x.shape == y.shape and x.dtype == y.dtype, f"{what}: {name}"
            np.testing.assert_allclose(x, y, rtol=RTOL, atol=ATOL, err_msg=f"{what}: {name}")
    assert np.all(np.isfinite(want[3])) and not np.allclose(got[3], got[3][..., :1])  # a run that moves


# (state_size, batch, num_steps, extra plan arguments): both sides of every threshold of `jax_rnn.plan`,
# with the choices the plan must make there (checked by name in test_the_thresholds_by_name too).
CELLS = {
    "state 4: all elementwise, by hand": ((4, 200, 5, {}), dict(gradient="by_hand", elementwise=("input", "state", "softmax"))),
    "state 8: input and softmax elementwise": ((8, 200, 5, {}), dict(gradient="by_hand", elementwise=("input", "softmax"))),
    "state 16, 1 step: difference softmax grad": ((16, 200, 1, {}), dict(gradient="by_hand", softmax_grad="difference", elementwise=())),
    "state 63: by hand": ((63, 200, 5, {}), dict(gradient="by_hand", layout="batch_last")),
    "state 64: autodiff, batch-first": ((64, 200, 5, {}), dict(gradient="autodiff", layout="batch_first")),
    "state 63, batch 40: batch-last": ((63, 40, 3, {}), dict(gradient="autodiff", layout="batch_last")),
    "state 128: batch-first": ((128, 40, 3, {}), dict(gradient="autodiff", layout="batch_first")),
    "batch 99: autodiff": ((4, 99, 5, {}), dict(gradient="autodiff", layout="batch_last")),
    "batch 100: by hand": ((4, 100, 5, {}), dict(gradient="by_hand")),
    "batch 5000: by hand": ((4, 5000, 2, {}), dict(gradient="by_hand")),
    "batch 5001: autodiff": ((4, 5001, 2, {}), dict(gradient="autodiff")),
    "3 classes: elementwise at 12 entries": ((4, 120, 3, {"num_classes": 3}), dict(gradient="by_hand", elementwise=("input", "state", "softmax"))),
    "remat (blocks of 3 steps and 1)": ((4, 200, 7, {"remat": True}), dict(gradient="autodiff", layout="batch_last", remat=True)),
    "TBPTT(2, 5)": ((4, 200, 2, {"backprop_steps": 5}), dict(gradient="autodiff", layout="batch_last", backprop_steps=5)),
    "2 runs in turn": ((4, 200, 5, {"runs": 2}), dict(gradient="by_hand", run_loop=True)),
    "TBPTT(6, 40) state 16: unroll capped": ((16, 40, 6, {"backprop_steps": 40}), dict(gradient="autodiff", unroll=MAX_UNROLL)),
}
# The default run trains every kind of program the rules choose (by hand with elementwise products and with
# dots, the difference softmax grad, batch-first, autodiff batch-last under TBPTT, remat, runs in turn); the
# cells on the other side of each threshold run with `make test-all` (each cell compiles two programs).
SLOW_CELLS = {"state 8: input and softmax elementwise", "state 64: autodiff", "state 127: batch-last",
              "batch 99: autodiff", "batch 100: by hand", "batch 5000: by hand", "batch 5001: autodiff",
              "TBPTT(6, 40) state 16: unroll capped"}


@pytest.mark.parametrize("cell", [pytest.param(c, marks=pytest.mark.slow) if c in SLOW_CELLS else c for c in CELLS])
def test_the_plans_epoch_equals_the_plain_autodiff_epoch(cell):
    (d, batch, num_steps, extra), choices = CELLS[cell]
    plan = jax_rnn.plan(d, batch, num_steps, backend="cpu", **extra)
    assert {k: getattr(plan, k) for k in choices} == choices, str(plan)
    plain = plan.plain()
    assert (plain.gradient, plain.layout, plain.elementwise, plain.xla_options) == ("autodiff", "batch_first", (), ())
    windows = 3 if batch > 1000 else 8 if plan.tbptt else 4
    inputs = _inputs(d, batch, num_steps, windows, plan.num_classes, plan.runs)
    _assert_same_run(_train(plan, *inputs), _train(plain, *inputs), str(plan))


# Each option of a plan on its own, on the plain program (with the layout it needs).
OPTIONS = {
    "batch-last": dict(layout="batch_last"),
    "elementwise input": dict(layout="batch_last", elementwise=("input",)),
    "elementwise state": dict(layout="batch_last", elementwise=("state",)),
    "elementwise softmax": dict(layout="batch_last", elementwise=("softmax",)),
    "by hand": dict(layout="batch_last", gradient="by_hand"),
    "by hand, difference softmax grad": dict(layout="batch_last", gradient="by_hand", softmax_grad="difference"),
    "XLA: YNNPACK dots only": dict(xla_options=(("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),)),
    "unroll 1": dict(unroll=1),
}
# With `make test-all`: the XLA option (alone, bit for bit: tests/test_train.py) and the unroll.
SLOW_OPTIONS = {"XLA: YNNPACK dots only", "unroll 1"}


@pytest.mark.parametrize("option", [pytest.param(o, marks=pytest.mark.slow) if o in SLOW_OPTIONS else o for o in OPTIONS])
@pytest.mark.parametrize("d, batch, num_steps, num_classes", [(6, 120, 3, 3), pytest.param(4, 200, 5, 2, marks=pytest.mark.slow)])
def test_each_option_alone_equals_the_plain_program(option, d, batch, num_steps, num_classes):
    plain = jax_rnn.plan(d, batch, num_steps, num_classes=num_classes, backend="cpu").plain()
    forced = dataclasses.replace(plain, **OPTIONS[option])
    assert forced != plain
    if option.startswith("XLA"):  # the option names are the plan's own
        assert forced.xla_options[0] in {c.xla_options[0] for c in tune.candidates(jax_rnn.plan(d, batch, num_steps))
                                         if c.xla_options}
    inputs = _inputs(d, batch, num_steps, 4, num_classes)
    _assert_same_run(_train(forced, *inputs), _train(plain, *inputs), f"{option}: {forced}")


def test_positional_and_keyword_calls_are_the_same_call():
    """``train_epoch(p, o, xw, yw, opt, None, plan)`` is ``train_epoch(..., state=None, plan=plan)``, and
    `train_step` takes its plan positionally too; the default plan is the plan of the shapes."""
    params, xw, yw = _inputs(4, 20, 5, 4)
    plan = jax_rnn.plan(4, 20, 5)
    o = OPT.init(params)
    state = jax_rnn.zero_state(20, 4)
    calls = {"epoch": (jax_rnn.train_epoch(params, o, xw, yw, OPT, None, plan),
                       jax_rnn.train_epoch(params, o, xw, yw, OPT, state=None, plan=plan),
                       jax_rnn.train_epoch(params, o, xw, yw, OPT)),
             "step": (jax_rnn.train_step(params, o, state, xw[0], yw[0], OPT, plan),
                      jax_rnn.train_step(params, o, state, xw[0], yw[0], OPT, plan=plan),
                      jax_rnn.train_step(params, o, state, xw[0], yw[0], OPT))}
    for name, (positional, keyword, default) in calls.items():
        for other in (keyword, default):
            assert jax.tree.structure(positional) == jax.tree.structure(other), name
            for a, b in zip(jax.tree.leaves(positional), jax.tree.leaves(other)):
                np.testing.assert_array_equal(a, b, err_msg=name)


# --- The hand-written gradient -------------------------------------------------------------------------

slow = pytest.mark.slow


@pytest.mark.parametrize("num_classes,state_size,num_steps,unroll", [
    (2, 4, 6, 6), (3, 4, 6, 2), (2, 20, 3, 1), pytest.param(2, 16, 1, 1, marks=slow),
    pytest.param(2, 8, 4, 4, marks=slow), pytest.param(2, 4, 1, 1, marks=slow), pytest.param(3, 4, 1, 1, marks=slow), pytest.param(2, 16, 5, 5, marks=slow)])
def test_the_hand_written_gradient_equals_jax_grad_in_float64(num_classes, state_size, num_steps, unroll):
    """`value_and_grad_window` against ``jax.value_and_grad(loss_window)`` in float64, both of the plan's own
    batch-last program and of the plain batch-first one, for both softmax grads: elementwise products
    (states 4 and 8) and dots (16, 20), one step and several, rolled and unrolled scans, two and three classes."""
    with jax.enable_x64(True):
        batch = 7
        params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), jax_rnn.glorot_params(num_classes, state_size, 4))
        rng = np.random.default_rng(5)
        x_t, y_t = (jnp.asarray(rng.integers(0, num_classes, (num_steps, batch)), jnp.int32) for _ in range(2))
        state_t = 0.4 * jax.random.normal(jax.random.key(4), (state_size, batch), jnp.float64)
        plan = dataclasses.replace(jax_rnn.plan(state_size, batch, num_steps, num_classes=num_classes, backend="cpu"),
                                   gradient="by_hand", unroll=unroll)
        assert plan.batch_last and bool(plan.elementwise) == (state_size <= 8)
        reference = jax.jit(jax.value_and_grad(loss_window, has_aux=True), static_argnums=4)
        references = {"autodiff, the plan's layout": (reference(params, x_t, y_t, state_t, dataclasses.replace(
                          plan, gradient="autodiff")), lambda s: s),
                      "autodiff, plain": (reference(params, x_t, y_t, state_t.T, plan.plain()), lambda s: s.T)}
        by_hand = jax.jit(value_and_grad_window, static_argnums=4)
        for softmax_grad in ("full", "difference"):
            (loss, final), grads = by_hand(params, x_t, y_t, state_t, dataclasses.replace(plan, softmax_grad=softmax_grad))
            assert loss.dtype == jnp.float64 and final.shape == (state_size, batch)
            for name, (((ref_loss, ref_final), ref_grads), to_batch_last) in references.items():
                name = f"{softmax_grad} softmax grad against {name}"
                np.testing.assert_allclose(loss, ref_loss, rtol=1e-12, err_msg=name)
                np.testing.assert_allclose(final, to_batch_last(ref_final), rtol=1e-12, atol=1e-14, err_msg=name)
                assert jax.tree.structure(grads) == jax.tree.structure(ref_grads)
                for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
                    assert g.shape == r.shape and g.dtype == jnp.float64
                    np.testing.assert_allclose(g, r, rtol=1e-10, atol=1e-13, err_msg=name)


# --- The rules ------------------------------------------------------------------------------------------

def test_the_thresholds_by_name():
    p = lambda *a, **k: jax_rnn.plan(*a, backend="cpu", **k)
    # By hand below state 64, for batches 100..5000, no remat, TF-style windows (on a GPU one run).
    assert p(63, 200, 5).gradient == "by_hand" and p(64, 200, 5).gradient == "autodiff"
    assert p(4, 99, 5).gradient == "autodiff" and p(4, 100, 5).gradient == "by_hand"
    assert p(4, 5000, 5).gradient == "by_hand" and p(4, 5001, 5).gradient == "autodiff"
    assert p(4, 200, 5, runs=2).gradient == "by_hand" and jax_rnn.plan(4, 200, 5, runs=2, backend="gpu").gradient == "autodiff"
    assert p(4, 200, 5, remat=True).gradient == "autodiff"
    assert p(4, 200, 5, backprop_steps=6).gradient == "autodiff"
    # Batch-last below state 64 (below 128 on a GPU).
    assert p(63, 40, 3).layout == "batch_last" and p(64, 40, 3).layout == "batch_first"
    assert p(64, 200, 5).gradient == "autodiff" and p(64, 200, 5).elementwise == ()
    gpu = lambda *a, **k: jax_rnn.plan(*a, backend="gpu", **k)
    assert gpu(127, 40, 3).layout == "batch_last" and gpu(128, 40, 3).layout == "batch_first"
    # Elementwise for matrices of at most 16 entries: input n*d, state d*d, softmax d*n.
    assert p(4, 200, 5).elementwise == ("input", "state", "softmax")
    assert p(5, 200, 5).elementwise == ("input", "softmax")      # 10, 25, 10
    assert p(8, 200, 5).elementwise == ("input", "softmax")      # 16, 64, 16
    assert p(9, 200, 5).elementwise == ()                        # 18, 81, 18
    assert p(4, 200, 5, num_classes=4).elementwise == ("input", "state", "softmax")
    assert p(4, 200, 5, num_classes=5).elementwise == ("state",)
    # The difference softmax grad: one step, by hand.
    assert p(16, 200, 1).softmax_grad == "difference" and p(16, 200, 2).softmax_grad == "full"
    assert p(16, 99, 1).softmax_grad == "full"
    # XLA's defaults; several runs in turn on a CPU, vmapped on a GPU.
    assert p(4, 200, 5).xla_options == () and p(128, 40, 3, runs=2).xla_options == ()
    assert p(4, 200, 5, runs=2).run_loop and p(128, 40, 3, runs=2).run_loop and not p(4, 200, 5).run_loop
    assert not jax_rnn.plan(4, 200, 5, runs=2, backend="gpu").run_loop
    # Unroll: the whole window up to MAX_UNROLL steps (k2 with TBPTT).
    assert p(4, 200, 5).unroll == 5 and p(4, 200, 2, backprop_steps=9).unroll == 9
    assert p(4, 200, MAX_UNROLL).unroll == MAX_UNROLL and p(4, 200, MAX_UNROLL + 1).unroll == MAX_UNROLL
    assert p(4, 200, 5).backprop_steps == 5 and not p(4, 200, 5).tbptt and p(4, 200, 2, backprop_steps=3).tbptt


@pytest.mark.parametrize("backend", ["cuda", "tpu", "METAL"])
def test_backends_not_measured_get_the_plain_program(backend):
    for cell in [(4, 200, 5), (16, 200, 1), (63, 200, 5), (128, 40, 3)]:
        plan = jax_rnn.plan(*cell, backend=backend)
        assert plan.backend == backend and plan == plan.plain()
        assert plan == dataclasses.replace(jax_rnn.plan(*cell, backend="cpu").plain(), backend=backend)


def test_a_gpu_takes_the_cpus_choices_without_its_xla_options_and_elementwise_input():
    for cell in [(4, 200, 5), (16, 200, 1), (63, 200, 5), (128, 40, 3)]:
        cpu, gpu = jax_rnn.plan(*cell, backend="cpu"), jax_rnn.plan(*cell, backend="gpu")
        assert gpu.xla_options == () and "input" not in gpu.elementwise
        same = dict(backend="gpu", xla_options=(), elementwise=tuple(m for m in cpu.elementwise if m != "input"))
        assert gpu == dataclasses.replace(cpu, **same)


def test_the_default_backend_is_jaxs():
    assert jax_rnn.plan(4, 200, 5).backend == jax.default_backend()
    assert jax_rnn.plan(4, 200, 5) == jax_rnn.plan(4, 200, 5, backend=jax.default_backend())


@pytest.mark.parametrize("changes, message", [
    (dict(gradient="by_hand"), "gradient='by_hand' needs layout='batch_last'"),
    (dict(gradient="by_hand", layout="batch_last", remat=True), "gradient='by_hand' needs layout='batch_last', TF-style windows and no remat"),
    (dict(gradient="by_hand", layout="batch_last", backprop_steps=7), "TF-style windows"),
    (dict(elementwise=("input",)), "elementwise products need layout='batch_last'"),
    (dict(layout="batch_last", elementwise=("bias",)), "elementwise names matrices from ('input', 'state', 'softmax')"),
    (dict(gradient="grad"), "gradient must be one of ('autodiff', 'by_hand'), got 'grad'"),
    (dict(layout="time_major"), "layout must be one of ('batch_first', 'batch_last')"),
    (dict(softmax_grad="half"), "softmax_grad must be one of ('full', 'difference')"),
    (dict(backprop_steps=4), "backprop_steps must be an integer >= num_steps (5), got 4"),
    (dict(backprop_steps=True), "backprop_steps must be an integer >= num_steps (5), got True"),
    (dict(state_size=0), "state_size must be an integer >= 1, got 0"),
    (dict(batch_size=2.0), "batch_size must be an integer >= 1, got 2.0"),
    (dict(runs=True), "runs must be an integer >= 1, got True"),
    (dict(unroll=0), "unroll must be an integer >= 1, got 0"),
])
def test_a_plan_that_cannot_be_is_refused(changes, message):
    plain = jax_rnn.plan(4, 200, 5, backend="cpu").plain()
    with pytest.raises(ValueError) as err:
        dataclasses.replace(plain, **changes)
    assert str(err.value).startswith("plan: ") and message in str(err.value)


@pytest.mark.parametrize("value", [4, 0, 2.5, True, "7"])
def test_plan_refuses_a_bad_backprop_steps_by_its_name(value):
    with pytest.raises(ValueError, match=r"plan: backprop_steps must be an integer >= num_steps \(5\)"):
        jax_rnn.plan(4, 200, 5, backprop_steps=value)


def test_the_training_functions_refuse_a_plan_for_another_cell():
    params, xw, yw = _inputs(4, 20, 5, 2)
    o = OPT.init(params)
    with pytest.raises(ValueError, match=r"train_epoch: the plan is for state 4, batch 200, num_steps 5, 1 run\(s\); "
                                         r"the arguments have state 4, batch 20, num_steps 5, 1 run\(s\)"):
        jax_rnn.train_epoch(params, o, xw, yw, OPT, plan=jax_rnn.plan(4, 200, 5))
    with pytest.raises(ValueError, match="train_epoch_guarded: the plan is for state 8"):
        jax_rnn.train_epoch_guarded(params, o, xw, yw, OPT, plan=jax_rnn.plan(8, 20, 5))
    with pytest.raises(ValueError, match=r"train_runs: the plan is for .* 1 run.*the arguments have state 4, batch 20, num_steps 5, 2 run\(s\)"):
        runs = jax.tree.map(lambda a: jnp.stack([a, a]), (params, o, xw, yw))
        jax_rnn.train_runs(*runs, OPT, plan=jax_rnn.plan(4, 20, 5))
    with pytest.raises(ValueError, match=r"train_step: the plan is for state 4, batch 20, TBPTT\(5, 5\); the arguments "
                                         r"have state 4, batch 20, TBPTT\(5, 7\)"):
        x = np.zeros((20, 7), np.int32)
        jax_rnn.train_step(params, o, jax_rnn.zero_state(20, 4), x, x[:, :5], OPT, plan=jax_rnn.plan(4, 20, 5))
    with pytest.raises(TypeError, match="train_epoch: plan must be a jax_rnn.Plan .jax_rnn.plan......, got dict"):
        jax_rnn.train_epoch(params, o, xw, yw, OPT, plan=jax_rnn.plan(4, 20, 5).record())
    with pytest.raises(ValueError, match=r"train_epoch: backprop_steps must be an integer from num_steps \(5\) to the "
                                         r"steps in a row of data \(10\), got 11"):
        jax_rnn.train_epoch(params, o, xw, yw, OPT, plan=jax_rnn.plan(4, 20, 5, backprop_steps=11))


@pytest.mark.parametrize("cell", [(4, 200, 5, {}), (16, 200, 1, {}), (4, 200, 2, {"backprop_steps": 5, "runs": 3}),
                                  (128, 40, 3, {"remat": True, "num_classes": 3}), (4, 200, 5, {"backend": "gpu"})])
def test_record_round_trips_through_json(cell):
    d, batch, num_steps, extra = cell
    plan = jax_rnn.plan(d, batch, num_steps, **extra)
    record = json.loads(json.dumps(plan.record()))
    assert record["state_size"] == d and isinstance(record["xla_options"], dict)
    again = Plan.from_record(record)
    assert again == plan and hash(again) == hash(plan) and str(again) == str(plan)


def test_str_names_the_cell_and_every_choice():
    text = str(jax_rnn.plan(16, 200, 1, backend="cpu"))
    assert text.startswith("plan for state 16, batch 200, num_steps 1 on cpu: gradient by_hand, batch-last")
    assert "softmax grad difference" in text and "XLA defaults" in text
    assert "runs in turn" in str(jax_rnn.plan(4, 200, 5, runs=3, backend="cpu"))
    text = str(jax_rnn.plan(4, 200, 2, backprop_steps=5, runs=3, remat=True, backend="tpu"))
    assert "TBPTT(2, 5), 3 runs on tpu" in text and "gradient autodiff, batch-first" in text
    assert text.endswith("remat; XLA defaults")


def test_a_plan_is_a_static_argument_one_compile_per_plan():
    """Equal plans are one static argument (`jax_rnn.train.program` compiles a plan once)."""
    from jax_rnn.train import program

    a, b = jax_rnn.plan(4, 20, 5), jax_rnn.plan(4, 20, 5)
    assert a == b and a is not b and hash(a) == hash(b)
    assert program(a) is program(b) and program(a, "runs") is not program(a)
    params, xw, yw = _inputs(4, 20, 5, 2)
    lowered = program(a).lower(params, OPT.init(params), xw, yw, None, optimizer=OPT, plan=a, guard=False)
    assert "while" in lowered.as_text() or "scan" in lowered.as_text()
