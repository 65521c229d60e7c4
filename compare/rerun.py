"""``rnn-compare run --from FILE.json``: rerun a saved ``run`` result and say whether it reproduced.

`apply` turns the result's ``config`` back into command-line options; `compare` checks the new step losses
against the old ones and lists what differs in the ``environment``, since another JAX, TensorFlow or CPU
may legitimately change the last bits.
"""

from __future__ import annotations

import json
import os

import numpy as np

from .config import FIELDS, UsageError
from .run import json_safe

# The options --from sets -> the config key each comes from: every FitConfig field the command has, and these.
OPTIONS = {"impl": "impls", **{name: name for name in (*FIELDS, "init_params", "data", "deterministic", "device")
                               if name not in ("num_classes", "log_every")}}
# Keys that results written before they were recorded lack, and where else to find them.
OPTIONAL = {"deterministic": lambda result: False, "backprop_steps": lambda result: result["config"]["num_steps"],
            "device": lambda result: result.get("environment", {}).get("device", {}).get("requested", "cpu")}


def load(path: str) -> dict:
    if not os.path.isfile(path):
        raise UsageError(f"--from: no such file: {path}")
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError) as err:
        raise UsageError(f"--from: cannot read {path} as JSON ({err})") from None
    if not isinstance(result, dict) or result.get("command") != "run" or not isinstance(result.get("config"), dict):
        raise UsageError(f"--from: {path} is not the JSON of an 'rnn-compare run' (no command 'run' / config)")
    missing = [k for k in OPTIONS.values() if k not in result["config"] and k not in OPTIONAL]
    if missing:
        raise UsageError(f"--from: {path}: config lacks {', '.join(missing)}")
    return result


def apply(args) -> dict:
    """Set ``args``' config options from the file; UsageError if one was also given on the command line."""
    original = load(args.from_json)
    given = [name for name in OPTIONS if getattr(args, name) != args.option_defaults.get(name)]
    if given:
        raise UsageError(f"--from fixes the config; do not also give {', '.join('--' + g.replace('_', '-') for g in given)}")
    c = original["config"]
    for name, key in OPTIONS.items():
        value = c[key] if key in c else OPTIONAL[key](original)
        setattr(args, name, ",".join(value) if key == "impls" else value)
    return original


def compare(path: str, original: dict, result: dict) -> dict:
    """Per implementation: identical step losses?, the largest difference; and the environment changes.
    A None among the step losses (a non-finite value, `compare.run.json_safe`) reads as NaN."""
    out = {"file": path, "identical": {}, "max_abs_diff": {}, "environment_changes": {}}
    for impl, r in result["results"].items():
        old = original.get("results", {}).get(impl)
        if old is None:
            continue
        a, b = np.asarray(old["step_losses"], np.float64), np.asarray(r["step_losses"], np.float64)
        same = a.shape == b.shape
        out["identical"][impl] = bool(same and np.array_equal(a, b, equal_nan=True))
        out["max_abs_diff"][impl] = float(np.nanmax(np.abs(a - b), initial=0.0)) if same else None
    old_env, new_env = original.get("environment", {}), result["environment"]
    for key in sorted(set(old_env) | set(new_env)):
        if old_env.get(key) != new_env.get(key):
            out["environment_changes"][key] = [old_env.get(key), new_env.get(key)]
    return json_safe(out)


def summary(info: dict) -> str:
    parts = [f"{impl}: {'identical' if same else 'differs (max ' + format(info['max_abs_diff'][impl] or float('nan'), '.2e') + ')'}"
             for impl, same in info["identical"].items()]
    env = ", ".join(info["environment_changes"]) or "none"
    return f"rerun of {info['file']}: step losses " + "; ".join(parts) + f" (environment changes: {env})"
