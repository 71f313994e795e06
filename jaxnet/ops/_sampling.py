"""Building blocks for the audit's input samplers.

A sampler is ``sample(key, dims, dtype) -> tuple`` of an op's positional
arguments.  Samplers keep inputs away from points where the op is not
differentiable (ReLU-family kinks at 0, hinge and L1 kinks, max-pool and
maxout ties): there a finite difference straddling the kink is wrong, not the
gradient.

The draws are NumPy's, seeded from the JAX key's bits: the same key gives the
same arrays, and no sampler compiles anything (an eager ``jax.random`` draw
compiles a kernel for every new shape, which made sampling the largest cost of
the audit's small cases).  The building blocks return NumPy arrays, so a
sampler's arithmetic on them stays in NumPy; :class:`~jaxnet.ops._registry.OpSpec`
turns every NumPy array a sampler returns into a JAX array.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

KINK_GAP = 1e-3   # samplers keep every kink at least this far away (>> the 1e-5 step)


def keys(key, n):
    """``n`` independent JAX keys from ``key`` (``jax.random.split``)."""
    return jax.random.split(key, n)


def generator(key) -> np.random.Generator:
    """A NumPy generator seeded from the bits of a JAX key (raw uint32 or typed)."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng(np.asarray(key, np.uint32).ravel().tolist())


def _as(dtype, a):
    return np.asarray(a, dtype=np.dtype(dtype))


def normal(key, shape, dtype):
    """Standard normal draws, a NumPy array of ``shape`` and ``dtype``."""
    return _as(dtype, generator(key).standard_normal(tuple(shape)))


def uniform(key, shape, dtype, low=0.0, high=1.0):
    """Uniform draws in [low, high), a NumPy array of ``shape`` and ``dtype``."""
    return _as(dtype, generator(key).uniform(low, high, tuple(shape)))


def randint(key, shape, low, high):
    """Integers uniform in [low, high), int32, a NumPy array of ``shape``."""
    return generator(key).integers(low, high, tuple(shape)).astype(np.int32)


def scaled_normal(scale):
    """A sampler of ``scale * N(0, 1)`` draws."""
    def draw(key, shape, dtype):
        return _as(dtype, scale * normal(key, shape, np.float64))
    return draw


def away_from_zero(key, shape, dtype):
    """Normal draws pushed at least KINK_GAP * 10 away from 0 (for ReLU-family kinks)."""
    x = normal(key, shape, np.float64)
    return _as(dtype, np.where(x >= 0, x + 10 * KINK_GAP, x - 10 * KINK_GAP))


def distinct(key, shape, dtype):
    """A random permutation of evenly spaced values in [-2, 2]: no ties anywhere."""
    n = int(np.prod(shape, dtype=np.int64))
    values = np.linspace(-2.0, 2.0, n)
    return _as(dtype, generator(key).permutation(values).reshape(tuple(shape)))


def unary(draw):
    """The sampler of a one-argument op: ``(draw(key, dims["x"], dtype),)``."""
    def sample(key, dims, dtype):
        return (draw(key, dims["x"], dtype),)
    return sample

