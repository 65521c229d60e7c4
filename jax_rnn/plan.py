"""The plan: which program trains a cell. `plan` is the only code that looks at sizes to choose one.

Like an FFTW plan, a `Plan` names its cell and every choice; it is hashable (jit's static argument) and
JSON-able (`Plan.record`). What each choice gains: docs/performance.md.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax

from .data import window_dtype

# An XLA:CPU option for vmapped runs: YNNPACK keeps the dots only, so the batch sums stay fused loops.
_YNN_DOTS = ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
MAX_UNROLL = 16  # longer windows are unrolled by this factor: bounded compile time
# Measured (docs/performance.md, "Memory"): float32 copies of the weights while an epoch trains (the caller's; the
# epoch's parameters and accumulators in, out and carried; gradient, update), floats a step keeps per sequence and
# state unit, bytes a point takes while an epoch is drawn, the runtime's own (compiler, thread pools).
WEIGHT_COPIES, STEP_FLOATS, DRAW_BYTES, RUNTIME = 11, 6, 32, 2**27


def remat_block_size(num_steps: int) -> int:
    """``ceil(sqrt(num_steps))``: steps per rematerialised block."""
    return math.isqrt(num_steps - 1) + 1 if num_steps > 1 else 1


def weight_count(num_classes: int, state_size: int) -> int:
    return (num_classes + state_size + 1) * state_size + (state_size + 1) * num_classes


class Memory(NamedTuple):
    """Bytes at training's peak, per run: ``weights`` (parameters and Adagrad accumulators, every copy), ``data``
    (drawing an epoch, the windows held), ``activations`` (what one update keeps for its backward pass); once:
    ``runtime``. `Plan.memory`; ``tf_rnn.ModelConfig.memory`` counts TensorFlow's alike."""

    weights: int
    data: int
    activations: int
    runtime: int
    runs: int = 1

    @property
    def total(self) -> int:
        return self.runs * (self.weights + self.data + self.activations) + self.runtime


@dataclasses.dataclass(frozen=True)
class Plan:
    """A cell and the program that trains it.

    The cell: sizes, ``num_steps`` k1 and ``backprop_steps`` k2 >= k1 of TBPTT(k1, k2), ``runs`` trained
    at once (vmap), ``remat`` (blocks of about sqrt(k2) steps recomputed in the backward pass), ``backend``.
    The program: ``gradient`` ("autodiff": ``jax.grad``; "by_hand": `jax_rnn.backward`); the state's
    ``layout`` ("batch_first" ``[batch, d]``, "batch_last" ``[d, batch]``); ``elementwise``: the matrices
    ("input", "state", "softmax") applied as broadcast products, not dots (batch-last only); ``softmax_grad``
    ("difference": the by-hand softmax backward sums one class fewer);
    ``unroll``: the window's scan's, ``epoch_unroll``: the epoch's scan over windows; ``xla_options``: ``(name,
    value)`` pairs.
    """

    state_size: int
    batch_size: int
    num_steps: int
    backprop_steps: int
    runs: int = 1
    remat: bool = False
    num_classes: int = 2
    backend: str = "cpu"
    gradient: str = "autodiff"
    layout: str = "batch_first"
    elementwise: tuple[str, ...] = ()
    softmax_grad: str = "full"
    unroll: int = 1
    epoch_unroll: int = 1
    xla_options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self):
        for name in ("state_size", "batch_size", "num_steps", "runs", "num_classes", "unroll", "epoch_unroll"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"plan: {name} must be an integer >= 1, got {value!r}")
        if isinstance(self.backprop_steps, bool) or not isinstance(self.backprop_steps, int) \
                or self.backprop_steps < self.num_steps:
            raise ValueError(f"plan: backprop_steps must be an integer >= num_steps ({self.num_steps}), "
                             f"got {self.backprop_steps!r}")
        for name, allowed in (("gradient", ("autodiff", "by_hand")), ("layout", ("batch_first", "batch_last")),
                              ("softmax_grad", ("full", "difference"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"plan: {name} must be one of {allowed}, got {getattr(self, name)!r}")
        if not set(self.elementwise) <= {"input", "state", "softmax"}:
            raise ValueError(f"plan: elementwise names matrices from ('input', 'state', 'softmax'), got {self.elementwise}")
        if self.elementwise and self.layout != "batch_last":
            raise ValueError("plan: elementwise products need layout='batch_last'")
        if self.gradient == "by_hand" and (self.layout != "batch_last" or self.tbptt or self.remat):
            raise ValueError("plan: gradient='by_hand' needs layout='batch_last', TF-style windows and no remat")

    @property
    def tbptt(self) -> bool:
        """Whether updates backpropagate further than their new steps: TBPTT(k1, k2 > k1)."""
        return self.backprop_steps > self.num_steps

    def memory(self, data_size: int, epochs: int = 2) -> Memory:
        """What training this cell on ``data_size`` points an epoch needs, with ``epochs`` of windows held at once
        (`jax_rnn.train` draws the next while one trains): windows, their device copy and the epoch's time-major
        copy; without remat every step's activations, with it a state per block and one block's."""
        n, d, k2, b = self.num_classes, self.state_size, self.backprop_steps, self.batch_size
        k = remat_block_size(k2) if self.remat else k2
        kept = -(-k2 // k) * b * d * 4 if self.remat else 0
        return Memory(weight_count(n, d) * 4 * WEIGHT_COPIES, data_size * (DRAW_BYTES + 6 * window_dtype(n).itemsize
                      * epochs), kept + k * b * (STEP_FLOATS * d + 4 * n) * 4, RUNTIME * (1 + (self.unroll < k2)), self.runs)

    @property
    def batch_last(self) -> bool:
        return self.layout == "batch_last"

    def plain(self) -> "Plan":
        """The same cell with the plain program: ``jax.grad``, batch-first dots, XLA's defaults."""
        return dataclasses.replace(self, gradient="autodiff", layout="batch_first", elementwise=(),
                                   softmax_grad="full", xla_options=())

    def record(self) -> dict:
        """The plan as JSON (results, checkpoints)."""
        return {**dataclasses.asdict(self), "elementwise": list(self.elementwise),
                "xla_options": dict(self.xla_options)}

    @classmethod
    def from_record(cls, record: dict) -> "Plan":
        return cls(**{**record, "elementwise": tuple(record["elementwise"]),
                      "xla_options": tuple(sorted(record["xla_options"].items()))})

    def __str__(self) -> str:
        k = f"TBPTT({self.num_steps}, {self.backprop_steps})" if self.tbptt else f"num_steps {self.num_steps}"
        cell = f"state {self.state_size}, batch {self.batch_size}, {k}" + (f", {self.runs} runs" if self.runs > 1 else "")
        program = [f"gradient {self.gradient}", self.layout.replace("_", "-"),
                   f"elementwise {'+'.join(self.elementwise) or 'none'}", f"unroll {self.unroll}"]
        if self.epoch_unroll > 1:
            program.append(f"epoch unroll {self.epoch_unroll}")
        if self.gradient == "by_hand":
            program.append(f"softmax grad {self.softmax_grad}")
        if self.remat:
            program.append("remat")
        options = ", ".join(f"{name}={value}" for name, value in self.xla_options) or "XLA defaults"
        return f"plan for {cell} on {self.backend}: {', '.join(program)}; {options}"


def plan(state_size: int, batch_size: int, num_steps: int, backprop_steps: Optional[int] = None, runs: int = 1,
         remat: bool = False, num_classes: int = 2, backend: Optional[str] = None, tune: Optional[bool] = None) -> Plan:
    """The program for a cell (see `Plan`): a rule per choice, measured on the CPU and on a GPU (there
    without the CPU's XLA options and elementwise input); the plain program on any other backend.
    ``backprop_steps`` None: num_steps; ``backend`` None: JAX's default; ``tune``: the candidates measured
    here instead (`jax_rnn.tune`, cached; None: when ``RNN_SCAN_TUNE=1``; never inside a trace).
    **Example:** ``print(jax_rnn.plan(state_size=16, batch_size=200, num_steps=10))``.
    """
    chosen = _rule(state_size, batch_size, num_steps, backprop_steps, runs, remat, num_classes, backend)
    from .train import _traced  # these import this module
    from .tune import enabled, tuned

    if (tune or (tune is None and enabled())) and not _traced():
        return tuned(chosen)
    return chosen


def _rule(state_size, batch_size, num_steps, backprop_steps, runs, remat, num_classes, backend) -> Plan:
    k2 = num_steps if backprop_steps is None else backprop_steps
    valid = isinstance(k2, int) and not isinstance(k2, bool)  # a bad k2 is refused by Plan, by its own name
    unroll = k2 if valid and 1 <= k2 <= MAX_UNROLL else MAX_UNROLL
    cell = Plan(state_size, batch_size, num_steps, k2, runs, remat, num_classes,
                backend or jax.default_backend(), unroll=unroll)
    if cell.backend not in ("cpu", "gpu"):
        return cell
    cpu, d, n = cell.backend == "cpu", state_size, num_classes
    options = (_YNN_DOTS,) if cpu and runs > 1 else ()
    if d >= (64 if cpu else 128):  # large states: plain matrix products, batch-first
        return dataclasses.replace(cell, xla_options=options)
    # Batch-last: each step is short loops over the batch that XLA fuses; tiny matrices as broadcast products.
    sizes = {"input": n * d, "state": d * d, "softmax": d * n}
    elementwise = tuple(m for m, size in sizes.items() if size <= 16 and (cpu or m != "input"))
    by_hand = d < 64 and 100 <= batch_size <= 5000 and runs == 1 and not remat and k2 == num_steps
    return dataclasses.replace(
        cell, layout="batch_last", elementwise=elementwise,
        gradient="by_hand" if by_hand else "autodiff",
        softmax_grad="difference" if by_hand and num_steps == 1 else "full", xla_options=options)

