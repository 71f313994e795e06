"""A replay buffer as a pytree ring buffer (pure functions, works under jit / vmap).

``ReplayBuffer`` is a NamedTuple ``(data, ptr, size)``: ``data`` a pytree whose leaves have a
leading axis of length ``capacity``; ``ptr`` (int32) the next slot to write; ``size`` (int32)
how many slots hold data (at most ``capacity``). Adding past the end wraps around and overwrites
the oldest items.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["ReplayBuffer", "buffer_init", "buffer_add", "buffer_sample"]


class ReplayBuffer(NamedTuple):
    data: Any
    ptr: jnp.ndarray
    size: jnp.ndarray


def buffer_init(example, capacity: int) -> ReplayBuffer:
    """An empty buffer for items shaped like ``example`` (a pytree of arrays, ONE item, no batch
    axis): every leaf becomes zeros of shape ``(capacity, *leaf.shape)`` and the leaf's dtype."""
    if not isinstance(capacity, int) or capacity < 1:
        raise ValueError(f"buffer_init: capacity must be a positive int, got {capacity!r}")
    data = jax.tree.map(lambda x: jnp.zeros((capacity,) + jnp.shape(x), jnp.asarray(x).dtype), example)
    return ReplayBuffer(data, jnp.int32(0), jnp.int32(0))


def _capacity(buf):
    return jax.tree.leaves(buf.data)[0].shape[0]


def buffer_add(buf: ReplayBuffer, items) -> ReplayBuffer:
    """Write a batch of ``B`` items (leaves with a leading axis B <= capacity) at ``ptr``,
    ``ptr + 1``, ... modulo the capacity; returns the new buffer."""
    cap = _capacity(buf)
    leaves = jax.tree.leaves(items)
    B = leaves[0].shape[0]
    if B > cap or any(l.shape[0] != B for l in leaves):
        raise ValueError(f"buffer_add: items need one leading batch size <= capacity {cap}, got "
                         f"{[l.shape for l in leaves]}")
    idx = (buf.ptr + jnp.arange(B)) % cap
    data = jax.tree.map(lambda d, x: d.at[idx].set(x.astype(d.dtype)), buf.data, items)
    return ReplayBuffer(data, ((buf.ptr + B) % cap).astype(jnp.int32),
                        jnp.minimum(buf.size + B, cap).astype(jnp.int32))


def buffer_sample(buf: ReplayBuffer, key, batch_size: int):
    """``batch_size`` items drawn uniformly with replacement from the filled slots (the buffer must
    not be empty); a pytree with leaves of leading axis ``batch_size``."""
    idx = jax.random.randint(key, (batch_size,), 0, jnp.maximum(buf.size, 1))
    return jax.tree.map(lambda d: d[idx], buf.data)
