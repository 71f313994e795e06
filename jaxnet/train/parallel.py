"""Data parallelism with ``jax.sharding``: a 1-D mesh, the batch split, everything else replicated.

The batch (x, y, mask) is sharded along its first axis over a ``Mesh`` of devices with one
axis named ``"data"`` (``NamedSharding(mesh, P("data"))``); params, model state, optimizer
state and key are replicated (``P()``). The train step is one ``jax.jit`` with those in/out
shardings: XLA's partitioner inserts the cross-device reductions itself, so the loss mean,
the gradient and batch-norm batch statistics are all over the *global* batch and the
result equals the single-device step up to float summation order.

Multi-host: call ``jax.distributed.initialize()`` on every process first, then build the
mesh over ``jax.devices()`` (all processes' devices) instead of ``jax.local_devices()``,
feed each process its own slice of every global batch and assemble the global arrays with
``jax.make_array_from_process_local_data(data_sharding(mesh), local_batch)``. Everything
else here is unchanged; :func:`jaxnet.train.fit` itself only drives local devices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "resolve_devices",
    "data_sharding",
    "replicated_sharding",
    "replicate",
    "shard_batch",
    "check_batch_divisible",
    "jit_data_parallel",
]

DATA_AXIS = "data"

Devices = Union[None, int, Sequence[Any]]


def resolve_devices(devices: Devices = None) -> list:
    """None -> ``jax.local_devices()``; an int n -> the first n of them; a sequence -> a list of it."""
    local = jax.local_devices()
    if devices is None:
        return list(local)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ValueError(f"asked for {devices} devices, {len(local)} local devices available")
        return list(local[: int(devices)])
    devices = list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return devices


def make_mesh(devices: Devices = None) -> Mesh:
    """A 1-D ``Mesh`` with axis ``"data"`` over ``devices`` (default: all local devices)."""
    return Mesh(np.asarray(resolve_devices(devices), dtype=object), (DATA_AXIS,))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Split axis 0 over the mesh's ``"data"`` axis; the other axes are whole on every device."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """ValueError unless ``batch_size`` is a multiple of the number of devices in ``mesh``."""
    n = mesh.devices.size
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {n} devices of the data-parallel "
            f"mesh; use a multiple of {n} (e.g. {max(n, batch_size // n * n)}) or fewer devices "
            f"(devices=[jax.local_devices()[0]] for a single device)"
        )


def replicate(tree: Any, mesh: Mesh) -> Any:
    """``tree`` with every array placed, whole, on every device of ``mesh``."""
    return jax.device_put(tree, replicated_sharding(mesh))


def shard_batch(batch: Any, mesh: Mesh) -> Any:
    """Every array of ``batch`` (an array or a pytree of arrays, same leading size B) split along
    axis 0 over the mesh. ValueError unless B is divisible by the number of devices."""
    for leaf in jax.tree.leaves(batch):
        check_batch_divisible(np.shape(leaf)[0], mesh)
    return jax.device_put(batch, data_sharding(mesh))


def jit_data_parallel(
    fn: Callable,
    mesh: Mesh,
    *,
    num_replicated_args: int,
    num_batch_args: int,
    donate_argnums: Union[int, tuple[int, ...]] = (),
) -> Callable:
    """``jax.jit(fn)`` whose first ``num_replicated_args`` arguments are replicated and next
    ``num_batch_args`` are sharded on axis 0; every output is replicated.

    Arguments that are already committed to another sharding must be placed first
    (:func:`replicate`); numpy arrays and uncommitted arrays are placed by the call.
    """
    repl, data = replicated_sharding(mesh), data_sharding(mesh)
    return jax.jit(
        fn,
        in_shardings=(repl,) * num_replicated_args + (data,) * num_batch_args,
        out_shardings=repl,
        donate_argnums=donate_argnums,
    )
