"""The training state: one pytree holding everything a training run needs to continue."""

from __future__ import annotations

import functools
from typing import Any, Union

import jax
import jax.numpy as jnp
import optax
from flax import struct

__all__ = ["TrainState", "create_train_state", "as_key", "init_key_for"]


@struct.dataclass
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


def as_key(key: Union[int, jax.Array]) -> jax.Array:
    """An int seed -> ``jax.random.PRNGKey(seed)`` (raw uint32[2]); a key is returned unchanged."""
    if isinstance(key, (int,)) and not isinstance(key, bool):
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
    """
    key = as_key(key)
    input_shape = tuple(int(d) for d in input_shape)
    try:
        init = _jitted_init(model, optimizer, input_shape)
    except TypeError:  # unhashable model or optimizer: no caching
        init = jax.jit(functools.partial(_init, model, optimizer, input_shape))
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


@functools.lru_cache(maxsize=16)
def _jitted_init(model, optimizer, input_shape):
    return jax.jit(functools.partial(_init, model, optimizer, input_shape))
