"""Activations with hand-derived backward passes (reverse mode only: ``custom_vjp``).

Local gradients (course notes): relu 1[x > 0]; leaky relu 1 or slope;
sigmoid s(1 - s); tanh 1 - y^2; ELU 1 or y + alpha; PReLU 1 or alpha, and
dalpha = sum x * dy over x <= 0; maxout routes dy to the winning piece.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet.ops.activations import check_maxout, check_prelu, check_slope


@jax.custom_vjp
def relu(x):
    """Manual twin of :func:`jaxnet.ops.relu`. x: any shape."""
    return jnp.maximum(x, 0)


relu.defvjp(lambda x: (jnp.maximum(x, 0), x),
            lambda x, dy: (jnp.where(x > 0, dy, 0),))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _leaky(x, slope):
    return jnp.where(x > 0, x, slope * x)


_leaky.defvjp(lambda x, slope: (_leaky(x, slope), x),
              lambda slope, x, dy: (jnp.where(x > 0, dy, slope * dy),))


def leaky_relu(x, *, slope=0.01):
    """Manual twin of :func:`jaxnet.ops.leaky_relu`. x: any shape."""
    check_slope("leaky_relu", "slope", slope)
    return _leaky(x, float(slope))


@jax.custom_vjp
def sigmoid(x):
    """Manual twin of :func:`jaxnet.ops.sigmoid`. x: any shape."""
    return jax.nn.sigmoid(x)


def _sigmoid_fwd(x):
    y = jax.nn.sigmoid(x)
    return y, y


sigmoid.defvjp(_sigmoid_fwd, lambda y, dy: (dy * y * (1 - y),))


@jax.custom_vjp
def tanh(x):
    """Manual twin of :func:`jaxnet.ops.tanh`. x: any shape."""
    return jnp.tanh(x)


def _tanh_fwd(x):
    y = jnp.tanh(x)
    return y, y


tanh.defvjp(_tanh_fwd, lambda y, dy: (dy * (1 - y * y),))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _elu(x, alpha):
    return jnp.where(x > 0, x, alpha * jnp.expm1(jnp.minimum(x, 0)))


def _elu_fwd(x, alpha):
    y = _elu(x, alpha)
    return y, (x, y)


def _elu_bwd(alpha, res, dy):
    x, y = res
    return (jnp.where(x > 0, dy, dy * (y + alpha)),)


_elu.defvjp(_elu_fwd, _elu_bwd)


def elu(x, *, alpha=1.0):
    """Manual twin of :func:`jaxnet.ops.elu`. x: any shape."""
    check_slope("elu", "alpha", alpha)
    return _elu(x, float(alpha))


@jax.custom_vjp
def _prelu(x, alpha):
    return jnp.where(x > 0, x, alpha * x)


def _prelu_bwd(res, dy):
    x, alpha = res
    dx = jnp.where(x > 0, dy, alpha * dy)
    dalpha_full = jnp.where(x > 0, 0, x * dy)
    dalpha = jnp.sum(dalpha_full, axis=tuple(range(x.ndim - alpha.ndim)))
    return dx, jnp.reshape(dalpha, alpha.shape)


_prelu.defvjp(lambda x, alpha: (_prelu(x, alpha), (x, alpha)), _prelu_bwd)


def prelu(x, alpha):
    """Manual twin of :func:`jaxnet.ops.prelu`. x: (..., C); alpha: () or (C,)."""
    check_prelu("prelu", x, alpha)
    return _prelu(x, alpha)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _maxout(x, pieces):
    return _maxout_fwd(x, pieces)[0]


def _maxout_fwd(x, pieces):
    xr = jnp.reshape(x, x.shape[:-1] + (x.shape[-1] // pieces, pieces))
    winner = jnp.argmax(xr, axis=-1)          # recorded now, not re-derived as x == max in backward
    return jnp.take_along_axis(xr, winner[..., None], axis=-1)[..., 0], winner


def _maxout_bwd(pieces, winner, dy):
    onehot = winner[..., None] == jnp.arange(pieces)
    dx = jnp.where(onehot, dy[..., None], 0)
    return (jnp.reshape(dx, dx.shape[:-2] + (dx.shape[-2] * pieces,)),)


_maxout.defvjp(_maxout_fwd, _maxout_bwd)


def maxout(x, *, pieces=2):
    """Manual twin of :func:`jaxnet.ops.maxout`. x: (..., D * pieces) -> (..., D)."""
    check_maxout("maxout", x, pieces)
    return _maxout(x, pieces)
