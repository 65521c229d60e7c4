"""The comparison's settings: implementation names, one frozen `Config` validated once, `UsageError`.

Everything the command line accepts is checked here (or while loading a file, `compare.io`) before
any work starts; a bad value raises `UsageError`, which the CLI turns into an argparse-style message
and exit status 2.
"""

from __future__ import annotations

import dataclasses
import math

from jax_rnn import data as task

IMPLS = ("jax", "tf-raw", "tf-static", "tf-dynamic", "tf2")
DEFAULT_RUN_IMPLS = ("jax", "tf-dynamic")
BASELINE = "tf-dynamic"  # bench reports every implementation's speed-up against this one
AGREEMENT_TOLERANCE = 1e-4  # same params + same data: per-step losses must agree this closely


class UsageError(ValueError):
    """A bad option or input file; the CLI reports it like argparse does and exits with status 2."""


def parse_impls(text: str) -> tuple[str, ...]:
    """``"jax,tf-dynamic"`` -> ``("jax", "tf-dynamic")``; unknown, repeated or empty names are a UsageError."""
    names = [part.strip() for part in str(text).split(",")]
    if not any(names):
        raise UsageError(f"--impl: give at least one implementation (choose from {', '.join(IMPLS)})")
    if not all(names):
        raise UsageError(f"--impl: an empty item in {text!r} (a stray comma?); choose from {', '.join(IMPLS)}")
    for name in names:
        if name not in IMPLS:
            raise UsageError(f"--impl: unknown implementation {name!r} (choose from {', '.join(IMPLS)})")
    if len(set(names)) != len(names):
        raise UsageError(f"--impl: an implementation is named twice in {text!r}")
    return tuple(names)


def parse_ints(text: str, option: str, minimum: int = 1) -> tuple[int, ...]:
    """``"1,5,10"`` -> ``(1, 5, 10)``; every value must be an integer >= ``minimum``."""
    values = []
    for part in str(text).split(","):
        try:
            value = int(part.strip())
        except ValueError:
            raise UsageError(f"{option}: {part.strip()!r} is not an integer (expected e.g. 1,5,10)") from None
        if value < minimum:
            raise UsageError(f"{option} must be >= {minimum}, got {value}")
        values.append(value)
    return tuple(values)


def tf_name(impl: str) -> str:
    """CLI name -> ``tf_rnn`` name: ``"tf-dynamic"`` -> ``"dynamic"``, ``"tf2"`` -> ``"tf2"``."""
    return impl[3:] if impl.startswith("tf-") else impl


def is_tf(impl: str) -> bool:
    return impl != "jax"


@dataclasses.dataclass(frozen=True)
class Config:
    """One training setting, shared by every implementation of a run (tutorial defaults).

    ``epoch_size = (data_size // batch_size) // num_steps`` windows of ``[batch_size, num_steps]`` points.
    """

    impls: tuple[str, ...] = DEFAULT_RUN_IMPLS
    num_steps: int = 5
    state_size: int = 4
    batch_size: int = 200
    learning_rate: float = 0.1
    epochs: int = 1
    data_size: int = 1_000_000
    seed: int = 0
    num_classes: int = 2

    def __post_init__(self):
        for name in ("num_steps", "state_size", "batch_size", "epochs", "data_size", "num_classes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be an integer >= 1, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"--seed must be an integer >= 0, got {self.seed!r}")
        lr = self.learning_rate
        if not isinstance(lr, (int, float)) or not math.isfinite(lr) or lr <= 0:
            raise UsageError(f"--learning-rate must be a finite number > 0, got {lr!r}")
        if self.data_size < 9:
            raise UsageError(f"--data-size must be >= 9 (longer than the task's largest lag, 8), got {self.data_size}")
        if self.batch_size > self.data_size:
            raise UsageError(f"--batch-size {self.batch_size} is larger than the data ({self.data_size} points)")
        try:
            task.check_windowing(self.data_size, self.batch_size, self.num_steps)
        except ValueError as err:
            raise UsageError(f"--batch-size/--num-steps: {err}") from None
        parse_impls(",".join(self.impls))

    @property
    def epoch_size(self) -> int:
        return task.epoch_size(self.data_size, self.batch_size, self.num_steps)

    @property
    def points_per_epoch(self) -> int:
        """Points actually trained on per epoch (the remainder that fills no window is dropped)."""
        return self.epoch_size * self.batch_size * self.num_steps

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "impls": list(self.impls), "epoch_size": self.epoch_size}
