"""Pooling over NHWC inputs, reference forwards (``lax.reduce_window``)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet._checks import check_rank
from jaxnet.ops._geometry import WindowGeometry, window_geometry


def pool_geometry(op, x, *, window, stride, padding) -> WindowGeometry:
    """Validate a pooling call; ``stride=None`` means ``stride=window``."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    return window_geometry(op, x.shape, window, stride=window if stride is None else stride, padding=padding)


def _reduce(x, g, init, fn):
    return jax.lax.reduce_window(x, init, fn, (1,) + g.kernel + (1,), (1,) + g.stride + (1,),
                                 ((0, 0),) + g.pads + ((0, 0),))


def max_pool2d(x, *, window=2, stride=None, padding=0):
    """Max over each window, per channel; padding counts as -inf.

    x: (N, H, W, C).  window, stride: int or pair (stride defaults to window).
    Returns (N, Ho, Wo, C) with ``Ho = (H + 2P - F) / S + 1``.
    """
    g = pool_geometry("max_pool2d", x, window=window, stride=stride, padding=padding)
    return _reduce(x, g, -jnp.inf, jax.lax.max)


def avg_pool2d(x, *, window=2, stride=None, padding=0):
    """Mean over each window, per channel; padded zeros count (PyTorch's default).

    x: (N, H, W, C).  Returns (N, Ho, Wo, C).
    """
    g = pool_geometry("avg_pool2d", x, window=window, stride=stride, padding=padding)
    return _reduce(x, g, 0.0, jax.lax.add) / (g.kernel[0] * g.kernel[1])


def global_avg_pool(x):
    """Mean over H and W. x: (N, H, W, C) -> (N, C)."""
    check_rank("global_avg_pool", "x", x, 4, "(N, H, W, C)")
    return jnp.mean(x, axis=(1, 2))
