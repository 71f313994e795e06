"""Elementwise activations (and maxout), reference forwards.

All take ``x`` of any shape and return the same shape (maxout shrinks the last
axis by ``pieces``).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet._checks import check_min_rank


def relu(x):
    """``max(0, x)``. x: any shape."""
    return jnp.maximum(x, 0)


def check_slope(op, name, value):
    if not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"{op}: `{name}` must be a non-negative number, got {value!r}")


def leaky_relu(x, *, slope=0.01):
    """``x if x > 0 else slope * x``. x: any shape; slope: float >= 0."""
    check_slope("leaky_relu", "slope", slope)
    return jnp.where(x > 0, x, slope * x)


def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed stably. x: any shape."""
    return jax.nn.sigmoid(x)


def tanh(x):
    """Hyperbolic tangent. x: any shape."""
    return jnp.tanh(x)


def elu(x, *, alpha=1.0):
    """``x if x > 0 else alpha * (exp(x) - 1)``. x: any shape; alpha: float >= 0."""
    check_slope("elu", "alpha", alpha)
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0)))


def check_prelu(op, x, alpha):
    if alpha.ndim not in (0, 1) or (alpha.ndim == 1 and (x.ndim == 0 or alpha.shape[0] != x.shape[-1])):
        raise ValueError(f"{op}: `alpha` must be a scalar or have shape ({x.shape[-1] if x.ndim else '?'},) "
                         f"= the last axis of `x` {tuple(x.shape)}, got {tuple(alpha.shape)}")


def prelu(x, alpha):
    """Parametric ReLU: ``x if x > 0 else alpha * x`` with a learnable slope.

    x: (..., C).  alpha: () or (C,), broadcast along the last axis.
    """
    check_prelu("prelu", x, alpha)
    return jnp.where(x > 0, x, alpha * x)


def check_maxout(op, x, pieces):
    check_min_rank(op, "x", x, 1)
    if not isinstance(pieces, int) or pieces < 1 or x.shape[-1] % pieces:
        raise ValueError(f"{op}: the last axis of `x` {tuple(x.shape)} must split into `pieces`={pieces!r} "
                         f"equal groups")


def maxout(x, *, pieces=2):
    """Maxout over consecutive groups of the last axis.

    x: (..., D * pieces) -> (..., D), ``y[..., d] = max_k x[..., d * pieces + k]``.
    Put an affine layer with D * pieces outputs in front for the course's
    ``max(w1.x + b1, w2.x + b2)``.
    """
    check_maxout("maxout", x, pieces)
    return jnp.max(jnp.reshape(x, x.shape[:-1] + (x.shape[-1] // pieces, pieces)), axis=-1)
