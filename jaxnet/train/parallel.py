"""Data and tensor parallelism with ``jax.sharding``.

**Data parallel** (the default): a 1-D mesh, the batch split, everything else replicated.
The batch (x, y, mask) is sharded along its first axis over a ``Mesh`` of devices with one
axis named ``"data"`` (``NamedSharding(mesh, P("data"))``); params, model state, optimizer
state and key are replicated (``P()``). The train step is one ``jax.jit`` with those in/out
shardings: XLA's partitioner inserts the cross-device reductions itself, so the loss mean,
the gradient and batch-norm batch statistics are all over the *global* batch and the
result equals the single-device step up to float summation order.

**Tensor parallel** (``make_mesh(devices, model_parallel=m)``): a 2-D mesh
``("data", "model")`` of shape (n/m, m).  The batch is split over ``"data"`` as before;
the transformer's weights are split over ``"model"`` in the Megatron layout
(:func:`tensor_parallel_specs`): the query/key/value projections and the feed-forward
block's first affine by output columns (so each device holds whole heads, when
``num_heads`` is a multiple of m, and a slice of the hidden units), the attention's output
projection and the feed-forward block's second affine by input rows; everything else is
replicated.  The optimizer's state follows its params (:func:`train_state_shardings`).  The
step is still one ``jax.jit``: XLA's SPMD partitioner runs each device's heads and hidden
units locally and inserts the one all-reduce per block that sums the partial outputs, so
the numbers equal the single-device step up to float summation order.

**Several processes** (``jax.distributed.initialize`` first, e.g. ``jaxnet train
--coordinator HOST:PORT --num-processes P --process-id I``): the mesh spans
``jax.devices()`` (every process's devices); every process computes the same global batch
order and hands only its own rows to :func:`global_batch`, which assembles the global
array with ``jax.make_array_from_process_local_data``.  Replicated results (params,
metrics) are readable on every process; :func:`is_writer` says which one writes files.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "make_mesh",
    "data_parallel_size",
    "model_parallel_size",
    "tensor_parallel_specs",
    "param_shardings",
    "train_state_shardings",
    "place",
    "global_batch",
    "is_writer",
    "resolve_devices",
    "data_sharding",
    "replicated_sharding",
    "replicate",
    "shard_batch",
    "check_batch_divisible",
    "jit_data_parallel",
    "jit_sharded",
    "gather",
]

DATA_AXIS = "data"
MODEL_AXIS = "model"

Devices = Union[None, int, Sequence[Any]]


def resolve_devices(devices: Devices = None) -> list:
    """None -> ``jax.devices()`` (the local devices in one process; every process's under
    ``jax.distributed``); an int n -> the first n of them; a sequence -> a list of it."""
    local = jax.devices()
    if devices is None:
        return list(local)
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if not 1 <= devices <= len(local):
            raise ValueError(f"asked for {devices} devices, {len(local)} devices available")
        return list(local[: int(devices)])
    devices = list(devices)
    if not devices:
        raise ValueError("devices must not be empty")
    return devices


def make_mesh(devices: Devices = None, *, model_parallel: int = 1) -> Mesh:
    """A ``Mesh`` over ``devices`` (default: all devices).

    ``model_parallel=1``: 1-D, axis ``"data"``.  ``model_parallel=m > 1``: 2-D
    ``("data", "model")`` of shape (n/m, m), consecutive devices in one model group.
    ValueError unless m is a positive int dividing the number of devices.
    """
    devs = resolve_devices(devices)
    if isinstance(model_parallel, bool) or not isinstance(model_parallel, (int, np.integer)) \
            or model_parallel < 1:
        raise ValueError(f"model_parallel must be a positive int, got {model_parallel!r}")
    if model_parallel == 1:
        return Mesh(np.asarray(devs, dtype=object), (DATA_AXIS,))
    if len(devs) % model_parallel:
        raise ValueError(f"model_parallel={model_parallel} does not divide the {len(devs)} devices; "
                         f"use a divisor of {len(devs)}")
    grid = np.asarray(devs, dtype=object).reshape(len(devs) // model_parallel, model_parallel)
    return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def data_parallel_size(mesh: Mesh) -> int:
    """How many ways the batch is split (the size of the ``"data"`` axis)."""
    return int(mesh.shape[DATA_AXIS])


def model_parallel_size(mesh: Mesh) -> int:
    """How many ways the weights are split (the size of the ``"model"`` axis; 1 without one)."""
    return int(mesh.shape.get(MODEL_AXIS, 1))


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Split axis 0 over the mesh's ``"data"`` axis; the other axes are whole on every device."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
    """A full copy on every device of the mesh."""
    return NamedSharding(mesh, P())


def check_batch_divisible(batch_size: int, mesh: Mesh) -> None:
    """ValueError unless ``batch_size`` is a multiple of the mesh's data-parallel size."""
    n = data_parallel_size(mesh)
    what = f"{n} devices" if model_parallel_size(mesh) == 1 else f"{n} data-parallel groups"
    if batch_size % n:
        raise ValueError(
            f"batch size {batch_size} is not divisible by the {what} of the "
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


def _feeding(jitted: Callable, mesh: Mesh, num_batch_args: int) -> Callable:
    """``jitted`` whose last ``num_batch_args`` arguments go through :func:`global_batch`
    (a no-op in one process)."""
    if jax.process_count() == 1:
        return jitted

    def call(*args):
        k = len(args) - num_batch_args
        return jitted(*args[:k], *global_batch(tuple(args[k:]), mesh))

    return call


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
    (:func:`replicate`); numpy arrays and uncommitted arrays are placed by the call (in
    several processes, each process's rows of the batch arguments: :func:`global_batch`).
    """
    repl, data = replicated_sharding(mesh), data_sharding(mesh)
    jitted = jax.jit(
        fn,
        in_shardings=(repl,) * num_replicated_args + (data,) * num_batch_args,
        out_shardings=repl,
        donate_argnums=donate_argnums,
    )
    return _feeding(jitted, mesh, num_batch_args)


def jit_sharded(
    fn: Callable,
    mesh: Mesh,
    *,
    shardings_of: Callable[..., tuple],
    out_shardings_of: Callable[[tuple], Any],
    num_batch_args: int,
    donate_argnums: Union[int, tuple[int, ...]] = (),
) -> Callable:
    """``jax.jit(fn)`` with the leading (non-batch) arguments sharded as
    ``shardings_of(*leading_args)`` says (a tuple, one sharding tree per argument) and the
    last ``num_batch_args`` split on axis 0; outputs ``out_shardings_of(those shardings)``.

    The shardings depend on the arguments' structure (e.g. :func:`train_state_shardings`),
    so the jit is built on the first call for each tree structure and reused after.
    """
    data = data_sharding(mesh)
    built: dict = {}

    def call(*args):
        k = len(args) - num_batch_args
        lead = args[:k]
        sig = jax.tree.structure(lead)          # one train state's structure per fit: no per-leaf work per step
        jitted = built.get(sig)
        if jitted is None:
            sh = tuple(shardings_of(*lead))
            jitted = built[sig] = jax.jit(fn, in_shardings=sh + (data,) * num_batch_args,
                                          out_shardings=out_shardings_of(sh), donate_argnums=donate_argnums)
        return jitted(*lead, *global_batch(tuple(args[k:]), mesh))

    return call


def gather(tree: Any, mesh: Optional[Mesh] = None) -> Any:
    """``tree`` with every array readable in full on every process (host-side saving).

    Arrays that are already (fully addressable, or fully replicated) are returned as they
    are; otherwise one jitted identity makes them replicated over ``mesh`` (default: the
    mesh of the first such array).  Every process must call it.
    """
    def readable(x):
        return not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated

    split = [x for x in jax.tree.leaves(tree) if not readable(x)]
    if not split:
        return tree
    mesh = split[0].sharding.mesh if mesh is None else mesh
    return jax.jit(lambda t: t, out_shardings=replicated_sharding(mesh))(tree)


# ------------------------------------------------------------------------ tensor parallelism

_ATTENTION_KEYS = frozenset({"query", "key", "value", "out"})
_FEED_FORWARD_KEYS = frozenset({"fc1", "fc2"})
_COLUMNS, _ROWS = "columns", "rows"


def _is_affine(p: Any) -> bool:
    return isinstance(p, dict) and set(p) == {"w", "b"}


def _split_roles(params: Any) -> Any:
    """``params`` with every leaf replaced by "columns", "rows" or None (replicated)."""
    if not isinstance(params, dict):
        return jax.tree.map(lambda _: None, params)
    keys = set(params)
    if keys == _ATTENTION_KEYS and all(_is_affine(params[k]) for k in keys):
        return {k: {"w": _COLUMNS if k != "out" else _ROWS, "b": _COLUMNS if k != "out" else None}
                for k in params}
    if keys == _FEED_FORWARD_KEYS and all(_is_affine(params[k]) for k in keys):
        return {"fc1": {"w": _COLUMNS, "b": _COLUMNS}, "fc2": {"w": _ROWS, "b": None}}
    return {k: _split_roles(v) for k, v in params.items()}


def tensor_parallel_specs(params: Any) -> Any:
    """A ``PartitionSpec`` per leaf of ``params`` (same structure): the Megatron layout.

    Recognised by their params' structure, wherever they sit in the model:
    :class:`~jaxnet.nn.MultiHeadAttention` (``{query, key, value, out}`` of ``{w, b}``):
    query/key/value ``w`` (Din, D) -> ``P(None, "model")``, their ``b`` -> ``P("model")``
    (each device computes whole heads when num_heads is a multiple of the model size, as
    the heads are contiguous column slices); ``out.w`` (D, D) -> ``P("model", None)``, its
    bias replicated.  :class:`~jaxnet.nn.FeedForward` (``{fc1, fc2}``): ``fc1`` by columns,
    ``fc2.w`` by rows.  Every other leaf: ``P()``.
    """
    def leaf_spec(role, x):
        if role is None:
            return P()
        if role == _ROWS:
            return P(MODEL_AXIS, None)
        return P(*([None] * (np.ndim(x) - 1)), MODEL_AXIS)

    roles = _split_roles(params)
    return jax.tree.map(leaf_spec, roles, params, is_leaf=lambda r: r is None or isinstance(r, str))


def param_shardings(params: Any, mesh: Mesh) -> Any:
    """A ``NamedSharding`` per leaf of ``params``: :func:`tensor_parallel_specs` on a mesh with
    a ``"model"`` axis, replicated otherwise.  ValueError naming the parameter when a split
    dimension is not divisible by the model-parallel size."""
    m = model_parallel_size(mesh)
    if m == 1:
        return jax.tree.map(lambda _: replicated_sharding(mesh), params)
    specs = tensor_parallel_specs(params)

    def check(path, spec, x):
        for dim, axis in enumerate(spec):
            if axis == MODEL_AXIS and np.shape(x)[dim] % m:
                raise ValueError(
                    f"tensor parallel: parameter {jax.tree_util.keystr(path)} of shape {tuple(np.shape(x))} "
                    f"cannot be split {m} ways along axis {dim} ({np.shape(x)[dim]} is not a multiple of "
                    f"{m}); use a model_parallel that divides the width and hidden size")
        return NamedSharding(mesh, spec)

    return jax.tree_util.tree_map_with_path(check, specs, params, is_leaf=lambda s: isinstance(s, P))


def train_state_shardings(ts: Any, mesh: Mesh, optimizer: Any = None) -> Any:
    """A sharding per leaf of the train state ``ts``: params by :func:`param_shardings`, the
    optimizer state's param-shaped leaves (e.g. Adam's moments) like their params (found
    with ``optax.tree_map_params``, so ``optimizer`` is needed on a model axis), everything
    else (step, key, model state, counters) replicated."""
    repl = replicated_sharding(mesh)
    if model_parallel_size(mesh) == 1:
        return jax.tree.map(lambda _: repl, ts)
    if optimizer is None:
        raise ValueError("train_state_shardings: a tensor-parallel mesh needs the optimizer "
                         "(to find the param-shaped leaves of its state)")
    import optax

    p_sh = param_shardings(ts.params, mesh)
    opt_sh = optax.tree_map_params(optimizer, lambda _, sh: sh, ts.opt_state, p_sh,
                                   transform_non_params=lambda _: repl,
                                   is_leaf=lambda x: isinstance(x, NamedSharding))
    return ts.replace(step=repl, params=p_sh, state=jax.tree.map(lambda _: repl, ts.state),
                      opt_state=opt_sh, key=repl)


def place(tree: Any, shardings: Any) -> Any:
    """``tree``'s arrays placed with ``shardings`` (a matching tree of shardings).

    Works in several processes: each process puts its addressable shards of the (host-side,
    identical on every process) values."""
    if jax.process_count() == 1:
        return jax.device_put(tree, shardings)

    def put(x, sh):
        x = np.asarray(jax.device_get(x)) if not isinstance(x, jax.Array) or x.is_fully_addressable else x
        if isinstance(x, jax.Array):
            return jax.device_put(x, sh)
        return jax.make_array_from_callback(x.shape, sh, lambda idx: x[idx])

    return jax.tree.map(put, tree, shardings)


def _rows_of_this_process(sharding: NamedSharding, n: int) -> slice:
    """The contiguous rows of a length-``n`` axis-0 split that this process's devices hold."""
    idx = sharding.addressable_devices_indices_map((n,)).values()
    starts = [i[0].start or 0 for i in idx]
    stops = [n if i[0].stop is None else i[0].stop for i in idx]
    return slice(min(starts), max(stops))


def global_batch(batch: Any, mesh: Mesh) -> Any:
    """The global batch arrays for a data-sharded jitted step.

    One process: ``batch`` unchanged (jit places host arrays by its ``in_shardings``).
    Several: every process holds the same global batch on the host; each hands its own
    rows (those its devices hold) to ``jax.make_array_from_process_local_data``.
    """
    if jax.process_count() == 1:
        return batch
    sh = data_sharding(mesh)

    def assemble(x):
        x = np.asarray(x)
        rows = _rows_of_this_process(sh, x.shape[0])
        return jax.make_array_from_process_local_data(sh, x[rows], x.shape)

    return jax.tree.map(assemble, batch)


def is_writer() -> bool:
    """True on the process that writes files (checkpoints, metrics, figures): process 0."""
    return jax.process_index() == 0
