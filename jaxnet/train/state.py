"""The training state: one pytree holding everything a training run needs to continue."""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from typing import Any, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["TrainState", "create_train_state", "as_key", "init_key_for"]


def _pytree_dataclass(cls):
    """``flax.struct.dataclass`` for a class whose fields are all pytree nodes, without importing
    flax (``import flax`` imports ``flax.linen``: 0.1-0.2 s of every start-up, for a decorator).

    The same class: a frozen dataclass with ``replace(**updates)``, registered with
    ``jax.tree_util.register_dataclass`` (so the same leaves, order and key paths:
    ``.step``, ``.params['fc']['w']``, ...). Its ``flax.serialization`` state-dict functions are
    registered as flax registers them once ``flax.serialization`` is imported (see
    :func:`_register_flax_serialization`)."""
    cls = dataclasses.dataclass(frozen=True)(cls)
    names = [f.name for f in dataclasses.fields(cls)]

    def replace(self, **updates):
        """Returns a new object replacing the specified fields with new values."""
        return dataclasses.replace(self, **updates)

    cls.replace = replace
    jax.tree_util.register_dataclass(cls, names, [])
    return cls


@_pytree_dataclass
class TrainState:
    """Everything that changes during training, as one pytree (jit-, donate- and checkpoint-friendly).

    step: int32 scalar, the number of optimizer updates applied so far.
    params: the model's trainable parameters (nested dict of arrays).
    state: the model's non-trainable state, e.g. batch-norm running statistics (nested dict).
    opt_state: the optimizer's state (``optimizer.init(params)``).
    key: the PRNG key the next train step splits for dropout and augmentation
      (a raw ``uint32[2]`` key or a typed key array, both work).
    """

    step: jax.Array
    params: Any
    state: Any
    opt_state: Any
    key: jax.Array


def _register_flax_serialization(serialization) -> None:
    """Register :class:`TrainState` with ``flax.serialization`` (``to_state_dict`` /
    ``from_state_dict``), exactly as ``flax.struct.dataclass`` does. Called when this module is
    imported after ``flax.serialization``, and by :mod:`jaxnet.train.checkpoint` when it imports it;
    registers once."""
    global _FLAX_REGISTERED
    if _FLAX_REGISTERED:
        return
    names = [f.name for f in dataclasses.fields(TrainState)]

    def to_state_dict(x):
        return {name: serialization.to_state_dict(getattr(x, name)) for name in names}

    def from_state_dict(x, state):
        state = state.copy()
        updates = {}
        for name in names:
            if name not in state:
                raise ValueError(f"Missing field {name} in state dict while restoring an instance of "
                                 f"TrainState, at path {serialization.current_path()}")
            updates[name] = serialization.from_state_dict(getattr(x, name), state.pop(name), name=name)
        if state:
            raise ValueError(f'Unknown field(s) "{",".join(state.keys())}" in state dict while restoring an '
                             f"instance of TrainState at path {serialization.current_path()}")
        return x.replace(**updates)

    serialization.register_serialization_state(TrainState, to_state_dict, from_state_dict)
    _FLAX_REGISTERED = True


_FLAX_REGISTERED = False


if "flax.serialization" in sys.modules:
    _register_flax_serialization(sys.modules["flax.serialization"])


def as_key(key: Union[int, jax.Array]) -> jax.Array:
    """An int seed -> ``jax.random.PRNGKey(seed)`` (raw uint32[2]); a key is returned unchanged.

    For a seed in ``[0, 2**31)`` under the default threefry implementation the key is built on
    the host (``[0, seed]``, what ``PRNGKey`` computes) and placed with ``jax.device_put``:
    ``PRNGKey`` itself compiles two small programs on first use (tens of ms of start-up)."""
    if isinstance(key, (int,)) and not isinstance(key, bool):
        if (0 <= key < 2 ** 31 and jax.config.jax_default_prng_impl == "threefry2x32"
                and not jax.config.jax_enable_custom_prng):
            return jax.device_put(np.array([0, key], np.uint32))
        return jax.random.PRNGKey(key)
    if hasattr(key, "dtype") and (
        jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
        or (key.dtype == jnp.uint32 and key.shape == (2,))
    ):
        return key
    raise TypeError(f"expected an int seed or a jax.random key, got {key!r}")


def _strong_leaf(a: Any) -> Any:
    if hasattr(a, "dtype") and jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a
    a = jnp.asarray(a)
    return a if not a.weak_type else a.astype(a.dtype)


def _strong(tree: Any) -> Any:
    """Strip weak types so the first jitted step's outputs match its inputs (no retrace)."""
    return jax.tree.map(_strong_leaf, tree)


def create_train_state(
    model: Any,
    optimizer: optax.GradientTransformation,
    key: Union[int, jax.Array],
    input_shape: tuple[int, ...],
) -> TrainState:
    """Initialise a model and its optimizer.

    Args:
      model: follows the model protocol (``init(key, input_shape) -> (params, state)``).
      optimizer: an optax transformation (e.g. :func:`jaxnet.optim.make_optimizer`).
      key: int seed or PRNG key; split into the init key and the training key.
      input_shape: the input shape including the batch dimension, e.g. ``(B, H, W, C)``.

    Returns:
      ``TrainState(step=0 (int32), params, state, opt_state, key)``.

    The init is one jitted program, compiled on CPU with :data:`INIT_COMPILE_OPTIONS` (about half
    the compile time, the same bits as XLA's default compile).
    """
    key = as_key(key)
    input_shape = tuple(int(d) for d in input_shape)
    try:
        init = _jitted_init(model, optimizer, input_shape, _init_compile_options())
    except TypeError:  # unhashable model or optimizer: no caching
        init = jax.jit(functools.partial(_init, model, optimizer, input_shape),
                       compiler_options=_init_compile_options())
    try:  # one compiled program instead of many small eager ones (seconds on CPU)
        ts = init(key)
    except jax.errors.JAXTypeError:  # an init that needs concrete values: run it eagerly
        ts = _init(model, optimizer, input_shape, key)
    return jax.tree.map(_strong_leaf, ts)


_GOLDEN = 0x9E3779B9  # mixes the second half of an rbg key's data from the first


def init_key_for(key: jax.Array) -> jax.Array:
    """The key :func:`create_train_state` initialises the model with: ``key`` re-wrapped as an
    ``"rbg"`` key (XLA's RngBitGenerator) when it is a threefry key (raw ``uint32[2]`` or typed).

    Why: on CPU, compiling threefry samplers for every weight shape took seconds (3.5 s for a
    3-conv net, 5x the rbg compile); the params stay a deterministic function of ``key``.
    rbg streams are not promised to be identical across backends or jax versions, so the
    same seed can give different initial weights on CPU and GPU. Other key types pass through.
    """
    typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    if typed and jax.random.key_impl(key) != jax.random.key_impl(jax.random.key(0, impl="threefry2x32")):
        return key
    data = jax.random.key_data(key) if typed else key
    if data.shape != (2,) or data.dtype != jnp.uint32:
        return key
    return jax.random.wrap_key_data(jnp.concatenate([data, data ^ jnp.uint32(_GOLDEN)]), impl="rbg")


def _init(model, optimizer, input_shape, key) -> TrainState:
    init_key, train_key = jax.random.split(key)
    params, state = model.init(init_key_for(init_key), input_shape)
    params, state = _strong(params), _strong(state)
    opt_state = _strong(optimizer.init(params))
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params, state=state, opt_state=opt_state, key=train_key
    )


def train_state_like(model: Any, optimizer: optax.GradientTransformation, key: Union[int, jax.Array],
                     input_shape: tuple[int, ...]) -> TrainState:
    """What :func:`create_train_state` returns without computing the weights: ``step`` (0) and
    ``key`` exactly as it sets them, ``params``/``state``/``opt_state`` as ``jax.ShapeDtypeStruct``
    trees (``jax.eval_shape``: nothing is compiled). For starting from given params
    (``fit(init_params=...)``), where the model's own initial weights would be thrown away.
    Falls back to :func:`create_train_state` for an init that needs concrete values."""
    key = as_key(key)
    input_shape = tuple(int(d) for d in input_shape)
    try:
        abstract = jax.eval_shape(functools.partial(_init, model, optimizer, input_shape), key)
    except jax.errors.JAXTypeError:
        return create_train_state(model, optimizer, key, input_shape)
    _, train_key = jax.random.split(key)          # as _init splits it
    return TrainState(step=jnp.zeros((), jnp.int32), params=abstract.params, state=abstract.state,
                      opt_state=abstract.opt_state, key=_strong_leaf(train_key))


# How the init program is compiled on CPU: XLA's loop emitters for its fusions instead of the
# MLIR fusion emitters, and its kernels code-generated as one LLVM module instead of split for
# parallel compilation. The init runs once, so only its compile time matters: for the benchmark
# convnet it compiles in about half the CPU time (1.1-1.9 s -> 0.6-1.0 s on the shared 2-core
# machine, side by side in one process), every output bit-identical to XLA's default compile
# (tests/test_cold_start.py compares them; -O0 would be faster still but changes the weights in
# the last bit). Not applied to the train step: the loop emitters halve its compile too, but
# the step then runs 3-6% slower (docs/performance.md).
INIT_COMPILE_OPTIONS = {"xla_cpu_use_fusion_emitters": False, "xla_cpu_parallel_codegen_split_count": 1}


def _init_compile_options() -> dict | None:
    """:data:`INIT_COMPILE_OPTIONS` on a CPU backend, less any option the user set in
    ``XLA_FLAGS``; None with ``JAXNET_XLA_FLAGS=0`` (jaxnet's XLA tuning off) or on GPU/TPU."""
    if os.environ.get("JAXNET_XLA_FLAGS", "1") == "0" or jax.default_backend() != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "")
    opts = {k: v for k, v in INIT_COMPILE_OPTIONS.items() if f"--{k}" not in flags}
    return opts or None


def _hashable_options(options):
    return None if options is None else tuple(sorted(options.items()))


def _jitted_init(model, optimizer, input_shape, options=None):
    return _jitted_init_cached(model, optimizer, input_shape, _hashable_options(options))


@functools.lru_cache(maxsize=16)
def _jitted_init_cached(model, optimizer, input_shape, options):
    return jax.jit(functools.partial(_init, model, optimizer, input_shape),
                   compiler_options=None if options is None else dict(options))
