"""r2rt's vanilla RNN ("Recurrent Neural Networks in Tensorflow I") in pure JAX: S_t = tanh([onehot(X_t),
S_{t-1}] @ W + b), logits_t = S_t @ U + b_p, in TF's ``BasicRNNCell`` layout: ``{"rnn_cell": {"W": f32[n + d, d],
"b": f32[d]}, "softmax": {"W": f32[d, n], "b": f32[n]}}``."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from . import checks
from .plan import Plan, remat_block_size

Params = dict[str, dict[str, jax.Array]]
PARAM_KEYS = ("rnn_cell/W", "rnn_cell/b", "softmax/W", "softmax/b")  # the flat names in .npz files


def param_shapes(num_classes: int, state_size: int) -> dict[str, dict[str, tuple[int, ...]]]:
    n, d = num_classes, state_size
    return {"rnn_cell": {"W": (n + d, d), "b": (d,)}, "softmax": {"W": (d, n), "b": (n,)}}


def flatten(params) -> dict[str, np.ndarray]:
    """``{"rnn_cell": {"W": a}}`` -> ``{"rnn_cell/W": a}`` (float32 numpy); `nest` inverts it."""
    return {key: np.asarray(params[s][k], np.float32) for key in PARAM_KEYS for s, k in [key.split("/")]}


def nest(flat) -> dict:
    return {s: {k: np.asarray(flat[f"{s}/{k}"], np.float32) for k in ("W", "b")} for s in ("rnn_cell", "softmax")}


def check_params(params, where: str = "params") -> tuple[int, int]:
    """``(num_classes, state_size)``; an error names the key off the layout."""
    if not isinstance(params, dict) or set(params) != {"rnn_cell", "softmax"}:
        got = sorted(params) if isinstance(params, dict) else type(params).__name__
        raise ValueError(f"{where}: params must be a dict with keys ['rnn_cell', 'softmax'], got {got}")
    for scope in params:
        if not isinstance(params[scope], dict) or set(params[scope]) != {"W", "b"}:
            raise ValueError(f"{where}: params[{scope!r}] must have keys ['W', 'b'], got {params[scope]!r:.60}")
    n, d = np.shape(params["softmax"]["b"])[:1] + np.shape(params["rnn_cell"]["b"])[:1]
    for scope, leaves in param_shapes(n, d).items():
        for name, shape in leaves.items():
            leaf = params[scope][name]
            if tuple(np.shape(leaf)) != shape:
                raise ValueError(f"{where}: params[{scope!r}][{name!r}] must have shape {shape} for num_classes={n}, "
                                 f"state_size={d}; got {tuple(np.shape(leaf))}")
            if not jnp.issubdtype(leaf.dtype if hasattr(leaf, "dtype") else np.asarray(leaf).dtype, jnp.floating):
                raise TypeError(f"{where}: params must be floating point, got {scope}/{name} of dtype {leaf.dtype}")
    return int(n), int(d)


def init_params(key: jax.Array, num_classes: int = 2, state_size: int = 4) -> Params:
    """Glorot-uniform weights and zero biases from a JAX key (`glorot_params` draws from numpy)."""
    glorot = jax.nn.initializers.glorot_uniform()
    return {scope: {"W": glorot(k, shapes["W"], jnp.float32), "b": jnp.zeros(shapes["b"], jnp.float32)}
            for k, (scope, shapes) in zip(jax.random.split(key), param_shapes(num_classes, state_size).items())}


def glorot_params(num_classes: int, state_size: int, seed: int) -> dict:
    """A seed's initial parameters, numpy: Glorot-uniform ``W`` from ``default_rng(seed)``, zero biases."""
    rng = np.random.default_rng(seed)
    params: dict = {}
    for scope, leaves in param_shapes(num_classes, state_size).items():
        limit = math.sqrt(6.0 / sum(leaves["W"]))
        params[scope] = {"W": rng.uniform(-limit, limit, size=leaves["W"]).astype(np.float32),
                         "b": np.zeros(leaves["b"], np.float32)}
    return params


def zero_state(batch_size: int, state_size: int) -> jax.Array:
    """S_{-1}: ``f32[batch_size, state_size]`` zeros."""
    return jnp.zeros((batch_size, state_size), jnp.float32)


def product(w: jax.Array, s: jax.Array, plan: Plan, elementwise: bool) -> jax.Array:
    """``s @ w``: ``[..., batch, k] -> [..., batch, m]`` (batch-last: ``[..., k, batch] -> [..., m, batch]``, a
    broadcast product where ``elementwise``)."""
    if not plan.batch_last:
        return s @ w
    if elementwise:
        return jnp.sum(w.T[:, :, None] * s[..., None, :, :], axis=-2)
    return jnp.einsum("km,...kb->...mb", w, s)


def input_rows(w_input: jax.Array, x: jax.Array, plan: Plan) -> jax.Array:
    """``onehot(x) @ w_input`` for class ids ``x: int[..., batch]``: ``[..., batch, d]`` or ``[..., d, batch]``."""
    if not plan.batch_last:
        return w_input[x]
    if "input" in plan.elementwise:
        return sum(jnp.where(x[..., None, :] == c, w_input[c][:, None], 0.0) for c in range(w_input.shape[0]))
    return jnp.moveaxis(w_input.T[:, x], 0, -2)


def _bias(b: jax.Array, plan: Plan) -> jax.Array:
    return b[:, None] if plan.batch_last else b


def to_layout(state: jax.Array, plan: Plan) -> jax.Array:
    """``[batch, d]`` <-> the plan's layout."""
    return state.T if plan.batch_last else state


def cell(params: Params, state: jax.Array, x_t: jax.Array, plan: Plan | None = None) -> tuple[jax.Array, jax.Array]:
    """One step for ``lax.scan``, ``(state: f32[batch, d], x_t: int[batch]) -> (state, logits_t: f32[batch, n])``
    (batch-last: ``[d, batch]``, ``[n, batch]``)."""
    plan = plan or _default_plan
    w, b = params["rnn_cell"]["W"], params["rnn_cell"]["b"]
    d = b.shape[0]
    pre = input_rows(w[:-d], x_t, plan) + product(w[-d:], state, plan, "state" in plan.elementwise)
    state = jnp.tanh(pre + _bias(b, plan))
    return state, logits(params, state, plan)


def logits(params: Params, states: jax.Array, plan: Plan | None = None) -> jax.Array:
    """``S @ U + b_p`` for states in the plan's layout."""
    plan = plan or _default_plan
    u, b = params["softmax"]["W"], params["softmax"]["b"]
    return product(u, states, plan, "softmax" in plan.elementwise) + _bias(b, plan)


def forward(params: Params, x_t: jax.Array, state: jax.Array, plan: Plan | None = None, start=None):
    """`cell` scanned over ``x_t: int[steps, batch]``: ``(final_state, (states, logits))``. ``start``: the first
    step's stream position (negative ones are absent: the state is kept); ``plan.remat``: checkpointed blocks."""
    plan, params = plan or _default_plan, jax.tree.map(jnp.asarray, params)  # numpy weights index with tracers
    steps = x_t.shape[0]
    present = None if start is None else start + jnp.arange(steps) >= 0

    def step(s, inputs):
        x, here = inputs
        new, out = cell(params, s, x, plan)
        s = new if here is None else jnp.where(here, new, s)
        return s, (s, out)

    scan = lambda s, xs: jax.lax.scan(step, s, xs, unroll=min(plan.unroll, len(xs[0])))
    if not plan.remat:
        return scan(state, (x_t, present))
    k = remat_block_size(steps)
    full = steps // k * k
    block = jax.checkpoint(scan)
    blocks = jax.tree.map(lambda a: a[:full].reshape((full // k, k) + a.shape[1:]), (x_t, present))
    state, outs = jax.lax.scan(block, state, blocks)
    outs = jax.tree.map(lambda a: a.reshape((full,) + a.shape[2:]), outs)
    if full < steps:
        state, rest = block(state, jax.tree.map(lambda a: a[full:], (x_t, present)))
        outs = jax.tree.map(lambda a, r: jnp.concatenate([a, r]), outs, rest)
    return state, outs


def loss_window(params: Params, x_t: jax.Array, y_t: jax.Array, state: jax.Array, plan: Plan, start=None):
    """One update's ``(mean cross-entropy, state after k1 steps)``: ``x_t: int[k2, batch]``, ``y_t: int[k1,
    batch]`` the labels of its last k1 steps."""
    k2, k1, axis = x_t.shape[0], y_t.shape[0], -2 if plan.batch_last else -1
    final, (states, logits_t) = forward(params, x_t, state, plan, start)
    log_p = jax.nn.log_softmax(logits_t[k2 - k1:], axis=axis)
    target = jax.nn.one_hot(y_t, log_p.shape[axis], dtype=jnp.bool_, axis=axis)
    return -jnp.mean(jnp.sum(jnp.where(target, log_p, 0.0), axis=axis)), states[k1 - 1] if k1 < k2 else final


def loss(params: Params, x: jax.Array, y: jax.Array, state: jax.Array, plan: Plan | None = None):
    """``(mean cross-entropy, final state f32[batch, d])`` of one window ``x, y: int[batch, num_steps]``."""
    n, d = check_params(params, "loss")
    batch = checks.class_ids("loss", {"x": x, "y": y}, "[batch, num_steps]", n)[0]
    checks.state("loss", state, (batch, d))
    plan = plan or _default_plan
    mean_loss, final = loss_window(params, x.T, y.T, to_layout(state, plan), plan)
    return mean_loss, to_layout(final, plan)


def rnn(params: Params, x: jax.Array, state: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(states: f32[batch, steps, d], final)`` for ``x: int[batch, steps]``, ``state: f32[batch, d]``."""
    final, (states, _) = forward(params, x.T, state)
    return jnp.swapaxes(states, 0, 1), final


_default_plan = Plan(1, 1, 1, 1, backend="any")  # the plain program: batch-first, autodiff
