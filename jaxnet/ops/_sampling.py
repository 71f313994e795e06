"""Building blocks for the audit's input samplers.

A sampler is ``sample(key, dims, dtype) -> tuple`` of an op's positional
arguments.  Samplers keep inputs away from points where the op is not
differentiable (ReLU-family kinks at 0, hinge and L1 kinks, max-pool and
maxout ties): there a finite difference straddling the kink is wrong, not the
gradient.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

KINK_GAP = 1e-3   # samplers keep every kink at least this far away (>> the 1e-5 step)


def keys(key, n):
    return jax.random.split(key, n)


def normal(key, shape, dtype):
    return jax.random.normal(key, shape, dtype)


def scaled_normal(scale):
    """A sampler of ``scale * N(0, 1)`` draws."""
    def draw(key, shape, dtype):
        return scale * normal(key, shape, dtype)
    return draw


def away_from_zero(key, shape, dtype):
    """Normal draws pushed at least KINK_GAP * 10 away from 0 (for ReLU-family kinks)."""
    x = jax.random.normal(key, shape, dtype)
    return jnp.where(x >= 0, x + 10 * KINK_GAP, x - 10 * KINK_GAP)


def distinct(key, shape, dtype):
    """A random permutation of evenly spaced values in [-2, 2]: no ties anywhere."""
    n = 1
    for s in shape:
        n *= s
    values = jnp.linspace(-2.0, 2.0, n, dtype=dtype)
    return jnp.reshape(jax.random.permutation(key, values), shape)


def unary(draw):
    """The sampler of a one-argument op: ``(draw(key, dims["x"], dtype),)``."""
    def sample(key, dims, dtype):
        return (draw(key, dims["x"], dtype),)
    return sample
