"""Many independent runs across all the devices JAX sees: `train_runs` with the run axis sharded.

`train_runs` vmaps a whole epoch over a leading run axis R. Here that axis is laid over a 1-D
``jax.sharding.Mesh`` of devices (axis name ``"runs"``): each device trains R / num_devices runs, and
since runs never interact, XLA partitions the compiled epoch with no communication at all. On one
device nothing changes. Results equal the single-device results exactly (tested on 4 simulated CPU
devices with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``).

The same code runs unchanged on a multi-GPU machine (``jax.devices()`` lists the GPUs) and on several
hosts: call ``jax.distributed.initialize()`` first on every host, then build the mesh over
``jax.devices()`` (all hosts' devices); each host must then pass the same global arrays, or build them
with ``jax.make_array_from_process_local_data``. The multi-host path is not exercised here.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .train import train_runs

RUN_AXIS = "runs"


def run_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh named ``"runs"`` over ``devices`` (default: every device JAX sees)."""
    return Mesh(np.asarray(devices if devices is not None else jax.devices()), (RUN_AXIS,))


def shard_runs(tree, mesh: Mesh):
    """Place every leaf of ``tree`` (leading run axis R) split along R over ``mesh``.

    Raises ValueError if R is not divisible by the number of devices (pad the runs, or pass a mesh
    over fewer devices).
    """
    devices = mesh.devices.size
    for leaf in jax.tree.leaves(tree):
        if leaf.shape[0] % devices:
            raise ValueError(f"the run axis ({leaf.shape[0]} runs) must be divisible by the number of devices "
                             f"in the mesh ({devices}); use a multiple of {devices} runs or a smaller mesh")
    sharding = NamedSharding(mesh, PartitionSpec(RUN_AXIS))
    return jax.tree.map(lambda a: jax.device_put(a, sharding), tree)


def train_runs_sharded(params, opt_state, x_windows, y_windows, optimizer: optax.GradientTransformation,
                       state=None, mesh: Mesh | None = None, remat: bool = False, guard: bool = False,
                       backprop_steps: int | None = None):
    """`train_runs` with the run axis split over ``mesh`` (default: all devices). Same shapes and results.

    If the number of runs R is not a multiple of the number of devices, the last run is repeated to fill
    the mesh (the copies are computed and dropped), so that every device is used.

    **Arguments:** as `train_runs` (leading run axis R on every array).
    **Returns:** as `train_runs`, R runs; the outputs stay laid out over the devices.
    """
    mesh = mesh if mesh is not None else run_mesh()
    inputs = (params, opt_state, x_windows, y_windows) + (() if state is None else (state,))
    runs = {np.shape(leaf)[0] for leaf in jax.tree.leaves(inputs)}
    if len(runs) != 1:
        raise ValueError(f"train_runs_sharded: every array needs the same leading run axis, got sizes {sorted(runs)}")
    (num_runs,) = runs
    pad = -num_runs % mesh.devices.size
    if pad:
        inputs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), inputs)
    params, opt_state, x_windows, y_windows, *rest = shard_runs(inputs, mesh)
    out = train_runs(params, opt_state, x_windows, y_windows, optimizer, rest[0] if rest else None, remat, guard,
                     backprop_steps)
    return jax.tree.map(lambda a: a[:num_runs], out) if pad else out
