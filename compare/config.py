"""The command line's settings: implementation names, option parsing, `UsageError`, and `fit_config`,
which builds the one configuration type, `jax_rnn.FitConfig`, with its errors named as options."""

from __future__ import annotations

import dataclasses

from jax_rnn.fit import FitConfig

IMPLS = ("jax", "tf-raw", "tf-static", "tf-dynamic", "tf2")
DEFAULT_RUN_IMPLS = ("jax", "tf-dynamic")
BASELINE = "tf-dynamic"  # bench reports every implementation's speed-up against this one
AGREEMENT_TOLERANCE = 1e-4  # same params + same data: per-step losses must agree this closely
FIELDS = tuple(f.name for f in dataclasses.fields(FitConfig))


class UsageError(ValueError):
    """A bad option or input file; the CLI reports it like argparse does and exits with status 2."""


def at_least(value: int, option: str, minimum: int = 1) -> int:
    if value < minimum:
        raise UsageError(f"{option} must be >= {minimum}, got {value}")
    return value


def parse_impls(text: str) -> tuple[str, ...]:
    """``"jax,tf-dynamic"`` -> ``("jax", "tf-dynamic")``; unknown, repeated or empty names are a UsageError."""
    names, choices = [part.strip() for part in str(text).split(",")], ", ".join(IMPLS)
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
    """``"1,5,10"`` -> ``(1, 5, 10)``, each >= ``minimum`` (or one of ``words``, kept as the string)."""
    values = []
    for part in (part.strip() for part in str(text).split(",")):
        if part in words:
            values.append(part)
            continue
        try:
            values.append(at_least(int(part), option, minimum))
        except ValueError as err:
            if isinstance(err, UsageError):
                raise
            raise UsageError(f"{option}: {part!r} is not an integer (expected e.g. 1,5,10)") from None
    return tuple(values)


def is_tf(impl: str) -> bool:
    return impl != "jax"


def option(field: str) -> str:
    return "--" + field.replace("_", "-")


def fit_config(**fields) -> FitConfig:
    """`FitConfig` of ``fields``; its errors ("num_steps must be ...") as UsageErrors naming the options."""
    try:
        return FitConfig(**fields)
    except ValueError as err:
        names, _, rest = str(err).partition(" ")
        parts = names.rstrip(":").split("/")
        if not set(parts) <= set(FIELDS):
            raise UsageError(str(err)) from None
        raise UsageError(f"{'/'.join(map(option, parts))}{':' if names.endswith(':') else ''} {rest}") from None


def record(config: FitConfig, impls=None) -> dict:
    """The JSON form of a config: its fields, ``epoch_size``, ``backprop_steps`` as trained, the impls."""
    out = {**dataclasses.asdict(config), "epoch_size": config.epoch_size, "backprop_steps": config.window_steps}
    return out if impls is None else {**out, "impls": list(impls)}


def points_per_epoch(config: FitConfig) -> int:
    """Points trained on per epoch (the remainder that fills no window is dropped)."""
    return config.epoch_size * config.batch_size * config.num_steps
