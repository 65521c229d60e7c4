"""A `Plan` names a cell and the program that trains it, hashable (jit's static argument) and JSON-able; `plan`
is the only code that looks at sizes to choose one. What each choice gains: docs/performance.md."""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Optional

import jax

from .data import window_dtype

# An XLA:CPU tuning candidate: YNNPACK takes only the dots; the batch sums stay fused loops.
_YNN_DOTS = ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT")
MAX_UNROLL = 32  # longer windows are unrolled by this factor: bounded compile time


def remat_block_size(num_steps: int) -> int:
    """``ceil(sqrt(num_steps))``: steps per rematerialised block."""
    return math.isqrt(num_steps - 1) + 1 if num_steps > 1 else 1


class Memory(NamedTuple):
    """Bytes at training's peak: per run ``weights`` (with Adagrad's), ``data``, ``activations``; once ``runtime``
    (docs/performance.md, "Memory")."""

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

    The cell: sizes, TBPTT(``num_steps`` k1, ``backprop_steps`` k2 >= k1), ``runs`` trained at once, ``remat``
    (blocks of about sqrt(k2) steps recomputed), ``backend``. The program: ``gradient`` ("autodiff" or "by_hand":
    `jax_rnn.backward`); the state's ``layout`` ("batch_first" ``[batch, d]``, "batch_last" ``[d, batch]``);
    ``elementwise``: matrices ("input", "state", "softmax") applied as broadcast products (batch-last only);
    ``softmax_grad`` ("difference": by hand, one class fewer summed); ``unroll`` of the window's scan,
    ``epoch_unroll`` of the epoch's; ``run_loop``: runs in turn (``lax.map``), not vmapped; ``xla_options``.
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
    run_loop: bool = False
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
        """TBPTT(k1, k2 > k1)."""
        return self.backprop_steps > self.num_steps

    def memory(self, data_size: int, epochs: int = 2) -> Memory:
        """Training this cell on ``data_size`` points an epoch, ``epochs`` of windows held; the measured constants:
        docs/performance.md, "Memory"."""
        n, d, k2, b = self.num_classes, self.state_size, self.backprop_steps, self.batch_size
        k = remat_block_size(k2) if self.remat else k2
        return Memory(((n + d + 1) * d + (d + 1) * n) * 44, data_size * (32 + 6 * window_dtype(n).itemsize * epochs),
                      (-(-k2 // k) * d if self.remat else 0) * b * 4 + k * b * (6 * d + 4 * n) * 4,
                      2**27 * (1 + (self.unroll < k2)), self.runs)

    @property
    def batch_last(self) -> bool:
        return self.layout == "batch_last"

    def plain(self) -> "Plan":
        """The same cell with the plain program: ``jax.grad``, batch-first dots, XLA's defaults."""
        return dataclasses.replace(self, gradient="autodiff", layout="batch_first", elementwise=(),
                                   softmax_grad="full", run_loop=False, xla_options=())

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
        if self.run_loop:
            program.append("runs in turn")
        if self.gradient == "by_hand":
            program.append(f"softmax grad {self.softmax_grad}")
        if self.remat:
            program.append("remat")
        options = ", ".join(f"{name}={value}" for name, value in self.xla_options) or "XLA defaults"
        return f"plan for {cell} on {self.backend}: {', '.join(program)}; {options}"


def plan(state_size: int, batch_size: int, num_steps: int, backprop_steps: Optional[int] = None, runs: int = 1,
         remat: bool = False, num_classes: int = 2, backend: Optional[str] = None, tune: Optional[bool] = None) -> Plan:
    """The program for a cell (see `Plan`): a rule per choice on the CPU and a GPU, the plain program elsewhere.
    ``backprop_steps`` None: num_steps; ``backend`` None: JAX's default; ``tune``: measure the candidates here
    (`jax_rnn.tune`, cached; None: when ``RNN_SCAN_TUNE=1``; never inside a trace).
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
    unroll = k2 if type(k2) is int and 1 <= k2 <= MAX_UNROLL else MAX_UNROLL  # Plan refuses a bad k2
    cell = Plan(state_size, batch_size, num_steps, k2, runs, remat, num_classes,
                backend or jax.default_backend(), unroll=unroll)
    if cell.backend not in ("cpu", "gpu"):
        return cell
    cpu, d, n = cell.backend == "cpu", state_size, num_classes
    cell = dataclasses.replace(cell, run_loop=cpu and runs > 1)  # on a CPU vmap costs more
    if d >= (64 if cpu else 128):  # large states: plain batch-first dots
        return cell
    # Batch-last: each step is short fused loops over the batch; tiny matrices as broadcast products.
    sizes = {"input": n * d, "state": d * d, "softmax": d * n}
    elementwise = tuple(m for m, size in sizes.items() if size <= 16 and (cpu or m != "input"))
    by_hand = d < 64 and 100 <= batch_size <= 5000 and (runs == 1 or cpu) and not remat and k2 == num_steps
    return dataclasses.replace(
        cell, layout="batch_last", elementwise=elementwise,
        gradient="by_hand" if by_hand else "autodiff",
        softmax_grad="difference" if by_hand and num_steps == 1 else "full")

