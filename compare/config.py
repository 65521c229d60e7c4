"""The comparison's settings: implementation names, one frozen `Config` validated once, `UsageError`
for whatever the command line accepts (input files are checked in `compare.io`)."""

from __future__ import annotations

import dataclasses

from jax_rnn.fit import FitConfig

IMPLS = ("jax", "tf-raw", "tf-static", "tf-dynamic", "tf2")
DEFAULT_RUN_IMPLS = ("jax", "tf-dynamic")
BASELINE = "tf-dynamic"  # bench reports every implementation's speed-up against this one
AGREEMENT_TOLERANCE = 1e-4  # same params + same data: per-step losses must agree this closely


class UsageError(ValueError):
    """A bad option or input file; the CLI reports it like argparse does and exits with status 2."""


def at_least(value: int, option: str, minimum: int = 1) -> int:
    """``value``, or a UsageError ``"--seeds must be >= 1, got 0"``."""
    if value < minimum:
        raise UsageError(f"{option} must be >= {minimum}, got {value}")
    return value


def parse_impls(text: str) -> tuple[str, ...]:
    """``"jax,tf-dynamic"`` -> ``("jax", "tf-dynamic")``; unknown, repeated or empty names are a UsageError."""
    names = [part.strip() for part in str(text).split(",")]
    choices = ", ".join(IMPLS)
    if not any(names):
        raise UsageError(f"--impl: give at least one implementation (choose from {choices})")
    if not all(names):
        raise UsageError(f"--impl: an empty item in {text!r} (a stray comma?); choose from {choices}")
    for name in names:
        if name not in IMPLS:
            raise UsageError(f"--impl: unknown implementation {name!r} (choose from {choices})")
    if len(set(names)) != len(names):
        raise UsageError(f"--impl: an implementation is named twice in {text!r}")
    return tuple(names)


def parse_ints(text: str, option: str, minimum: int = 1, words: tuple[str, ...] = ()) -> tuple:
    """``"1,5,10"`` -> ``(1, 5, 10)``; every value must be an integer >= ``minimum`` (or one of ``words``,
    kept as the string)."""
    values = []
    for part in (part.strip() for part in str(text).split(",")):
        if part in words:
            values.append(part)
            continue
        try:
            value = int(part)
        except ValueError:
            raise UsageError(f"{option}: {part!r} is not an integer (expected e.g. 1,5,10)") from None
        values.append(at_least(value, option, minimum))
    return tuple(values)


def is_tf(impl: str) -> bool:
    return impl != "jax"


@dataclasses.dataclass(frozen=True)
class Config(FitConfig):
    """One training setting, shared by every implementation of a run: `jax_rnn.FitConfig` (the one set of
    hyperparameters, with the tutorial's defaults and its checks) plus the implementations to run. A bad
    value is a UsageError naming the command-line option (``--num-steps must be an integer >= 1, got 0``).
    """

    impls: tuple[str, ...] = dataclasses.field(default=DEFAULT_RUN_IMPLS, kw_only=True)

    def __post_init__(self):
        try:
            super().__post_init__()
        except ValueError as err:  # "num_steps must be ...", "batch_size/num_steps: ..." -> the options
            names, _, rest = str(err).partition(" ")
            fields = names.rstrip(":").split("/")
            if not set(fields) <= _FIELDS:
                raise UsageError(str(err)) from None
            options = "/".join(f"--{f.replace('_', '-')}" for f in fields)
            raise UsageError(f"{options}{':' if names.endswith(':') else ''} {rest}") from None
        parse_impls(",".join(self.impls))

    @property
    def points_per_epoch(self) -> int:
        """Points actually trained on per epoch (the remainder that fills no window is dropped)."""
        return self.epoch_size * self.batch_size * self.num_steps

    def as_dict(self) -> dict:
        """The JSON form; ``backprop_steps`` as trained (``num_steps`` when not given)."""
        return {**dataclasses.asdict(self), "impls": list(self.impls), "epoch_size": self.epoch_size,
                "backprop_steps": self.window_steps}


_FIELDS = {f.name for f in dataclasses.fields(FitConfig)}
