"""Input files, outputs, checkpoints, a config's JSON, the machine; `UsageError`."""

import dataclasses
import hashlib
import importlib.metadata
import io
import json
import os
import platform
import sys
from pathlib import Path

import jax
import jax_rnn
import numpy as np
from jax_rnn import checkpoint as ckpt_io
from jax_rnn import data as task
from jax_rnn.cache import active_dir
from jax_rnn.checkpoint import atomic_write as write_bytes
from jax_rnn.model import PARAM_KEYS, flatten, nest, param_shapes

OUTPUT_EXTS = ("json", "md", "png")
DEVICES = ("cpu", "gpu", "auto")


class UsageError(ValueError):
    """A bad option or input file: reported argparse-style, exit status 2."""


def at_least(value, option):
    if value < 1:
        raise UsageError(f"{option} must be >= 1, got {value}")
    return value


def record(config, impls=None):
    out = {**dataclasses.asdict(config), "epoch_size": config.epoch_size, "backprop_steps": config.window_steps}
    return out if impls is None else {**out, "impls": list(impls)}


def result(command, config: dict, devices, **fields):
    return json_safe(dict(command=command, config=config, environment=describe(devices),
                          targets=task.TARGETS._asdict(), **fields))


def json_safe(tree):
    if isinstance(tree, (np.ndarray, np.generic)):
        tree = tree.tolist()
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    return None if isinstance(tree, float) and not np.isfinite(tree) else tree


def fingerprint(params):
    digest = hashlib.sha256()
    for key, value in flatten(params).items():
        digest.update(key.encode() + np.ascontiguousarray(value, np.float32).tobytes())
    return digest.hexdigest()[:16]


def _read(path, option, read, kind):
    if not os.path.isfile(path):
        raise UsageError(f"{option}: no such file: {path}")
    try:
        return read(path)
    except (OSError, ValueError) as err:
        raise UsageError(f"{option}: cannot read {path} as {kind} ({err})") from None


def _load_npz(path, option, keys):
    arrays = _read(path, option, ckpt_io.read_npz, "an .npz file")
    if set(arrays) != set(keys):
        raise UsageError(f"{option}: {path} must hold exactly the keys {', '.join(keys)}; "
                         f"got {', '.join(sorted(arrays)) or 'none'}")
    return arrays


def load_params(path, num_classes, state_size):
    arrays, shapes = _load_npz(path, "--init-params", PARAM_KEYS), param_shapes(num_classes, state_size)
    for key in PARAM_KEYS:
        a, (group, name) = arrays[key], key.split("/")
        if a.shape != (shape := shapes[group][name]):
            raise UsageError(f"--init-params: {path}: {key} must have shape {list(shape)} for state size {state_size}"
                             f", got {list(a.shape)}")
        if not np.issubdtype(a.dtype, np.floating) or not np.all(np.isfinite(a)):
            raise UsageError(f"--init-params: {path}: {key} must hold finite floats, got dtype {a.dtype}")
    return nest(arrays)


def load_data(path, num_classes=2):
    arrays = _load_npz(path, "--data", ("x", "y"))
    try:
        return task.check_rows(arrays["x"], arrays["y"], num_classes)
    except ValueError as err:
        raise UsageError(f"--data: {path}: {err}") from None


def load_result(path):
    result = _read(path, "--from", lambda p: json.loads(Path(p).read_text(encoding="utf-8")), "JSON")
    if not isinstance(result, dict) or result.get("command") != "run" or not isinstance(result.get("config"), dict):
        raise UsageError(f"--from: {path} is not the JSON of an 'rnn-compare run' (no command 'run' / config)")
    return result


def check_writable(path, overwrite, option):
    path = Path(path)
    if path.exists() and not overwrite:
        raise UsageError(f"{option}: {path} exists; pass --overwrite to replace it, or choose another name")
    for p in (path, path.parent):
        if p.exists() and (p is path) == p.is_dir():
            raise UsageError(f"{option}: {p} is {'a' if p is path else 'not a'} directory")
    return path


def write_text(path, text):
    return write_bytes(path, text.encode())


def write_json(path, obj):
    return write_text(path, json.dumps(obj, indent=1, allow_nan=False) + "\n")


def save_params(path, params):
    buffer = io.BytesIO()
    np.savez(buffer, **flatten(params))
    return write_bytes(path, buffer.getvalue())


def params_path(pattern, impl):
    if "{impl}" in pattern:
        return Path(pattern.replace("{impl}", impl))
    path = Path(pattern)
    return path.with_name(f"{path.stem}-{impl}{path.suffix or '.npz'}")


def output_paths(command, out_dir, name, json_path, overwrite, stamp):
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out: {out} is not a directory")
    if name is not None and (not name or "/" in name or name in (".", "..")):
        raise UsageError(f"--name: {name!r} must be a plain file name stem (no '/')")
    stem, k = name or f"{command}-{stamp}", 2
    while not name and any((out / f"{stem}.{ext}").exists() for ext in OUTPUT_EXTS):
        stem, k = f"{command}-{stamp}-{k}", k + 1
    paths = {ext: out / f"{stem}.{ext}" for ext in OUTPUT_EXTS}
    if json_path:
        paths["json"] = Path(json_path)
    for kind, path in paths.items():
        check_writable(path, overwrite, "--json" if kind == "json" and json_path else "--name/--out")
    return paths


def check_dirs(checkpoint, resume):
    if resume and not Path(resume).is_dir():
        raise UsageError(f"--resume: {resume} is not a directory of checkpoints")
    ck = checkpoint and Path(checkpoint)
    if ck and ck.exists() and not ck.is_dir():
        raise UsageError(f"--checkpoint: {checkpoint} exists and is not a directory")
    if ck and resume is None and any(ck.glob("*.npz")):
        raise UsageError(f"--checkpoint: {checkpoint} already holds checkpoints; resume with --resume {checkpoint}, "
                         "or choose an empty directory")


def run_path(directory, impl):
    return Path(directory) / f"{impl}.npz"


def cell_path(directory, cell):
    n, k2 = cell["num_steps"], cell["backprop_steps"]
    return Path(directory) / f"sweep-{n}{'' if k2 == n else f'x{k2}'}-{cell['state_size']}-{cell['impl']}.npz"


def load_checkpoint(file, config, writer, kind, impl=None, free=()):
    """``file``'s checkpoint, None if none; UsageError unless ``writer``'s with ``config`` (but ``free``)."""
    if not file.is_file():
        return None
    try:
        saved = ckpt_io.load(file, where="--resume")
    except ValueError as err:
        raise UsageError(str(err)) from None
    if saved.meta.get("writer") != writer or saved.meta.get("impl") != impl:
        raise UsageError(f"--resume: {file} is not a checkpoint of {writer!r}" + (f" for {impl}" if impl else ""))
    if detail := ckpt_io.differences(saved.config, config, free):
        raise UsageError(f"--resume: {file} was written by another {kind} ({detail}); refusing to resume from it")
    return saved


@dataclasses.dataclass(frozen=True)
class Devices:
    requested: str
    jax: str
    tf: str | None

    def of(self, impl):
        return self.jax if impl == "jax" else self.tf


def _gpus(framework):
    if framework == "jax":
        try:
            return jax.devices("gpu")
        except RuntimeError:
            return []
    import tf_rnn  # noqa: F401  (prepares legacy Keras before TensorFlow loads)
    import tensorflow as tf

    return tf.config.list_physical_devices("GPU")


def resolve(requested, need_tf):
    """``auto``: the GPU wherever seen; imports TensorFlow now if ``need_tf``."""
    if requested not in DEVICES:
        raise UsageError(f"--device must be one of {', '.join(DEVICES)}, got {requested!r}")
    if need_tf:
        import tf_rnn  # noqa: F401
    kinds = {}
    for framework, name in (("jax", "JAX"), ("tf", "TensorFlow"))[: 1 + need_tf]:
        kinds[framework] = "gpu" if requested != "cpu" and _gpus(framework) else "cpu"
        if requested == "gpu" and kinds[framework] == "cpu":
            raise UsageError(f"--device gpu: {name} sees no GPU; install the CUDA builds (pip install -e "
                             "'.[tf,cuda]'), or use --device cpu")
    return Devices(requested, kinds["jax"], kinds.get("tf"))


def jax_device(kind):
    return jax.local_devices(backend=kind)[0]


def memory(c, impl, device="cpu", runs=1, epochs=2):
    """The `jax_rnn.Memory` training ``c`` with ``impl`` needs: `FitConfig.memory`, or TensorFlow's graph's."""
    if impl == "jax":
        return c.memory(runs, device, epochs)
    import tf_rnn

    return jax_rnn.Memory(**tf_rnn.ModelConfig.of(c).memory(c.data_size, epochs))


def check_memory(configs, impls, devices, runs=1, at_once=1, epochs=2, names=None, sweep=False):
    """UsageError (`jax_rnn.memory.check`) unless each config fits: its ``impls`` one after another, JAX ``runs``
    at once in ``at_once`` cells; a ``sweep`` also holds every run's epochs (int8 x, y). ``names``: field -> option
    (None: none)."""
    free = jax_rnn.memory.available(jax_device(devices.jax) if "jax" in impls else None)
    free -= 2 * runs * configs[0].epochs * configs[0].data_size if sweep else 0
    names = {"remat": None} if sweep else names or {}
    name = lambda field: names.get(field, "--" + field.replace("_", "-"))
    for c in configs:
        def need(c=c, **changes):
            c = dataclasses.replace(c, **changes)
            return max((memory(c, i, devices.of(i), runs, epochs)._replace(runs=runs * at_once) if i == "jax" else
                        memory(c, i, epochs=epochs) for i in impls), key=lambda m: m.total)
        try:
            jax_rnn.memory.check(c, need, free, name)
        except jax_rnn.MemoryLimitError as err:
            raise UsageError(str(err)) from None


def _version(*dists):
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass


def describe(devices: Devices):
    jd = jax_device(devices.jax)
    env = dict(python=platform.python_version(), numpy=np.__version__, jax=jax.__version__, jaxlib=_version("jaxlib"),
               optax=_version("optax"), tensorflow=_version("tensorflow", "tensorflow-cpu", "tensorflow-macos"),
               tf_keras=_version("tf-keras"), platform=platform.platform(),
               processor=platform.processor() or platform.machine(), cpu_count=os.cpu_count(),
               jax_compile_cache=active_dir(), device={"requested": devices.requested, "jax": {
                   "kind": devices.jax, "name": getattr(jd, "device_kind", str(jd)), "id": str(jd)}})
    if devices.tf and "tensorflow" in sys.modules:
        gpus = _gpus("tf") if devices.tf == "gpu" else []
        details = sys.modules["tensorflow"].config.experimental.get_device_details(gpus[0]) if gpus else {}
        env["device"]["tf"] = {"kind": devices.tf, "name": details.get("device_name", gpus[0].name) if gpus else "cpu"}
    return env
