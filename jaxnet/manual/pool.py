"""Pooling with hand-derived backward passes (reverse mode only: ``custom_vjp``).

Max pool routes the upstream gradient to the element that won the window,
recorded as an index in the forward pass (at a tie, the first in row-major
window order; autodiff's select-and-scatter may pick another, and the
samplers avoid ties).  Average pool spreads ``dy / (KH * KW)``
evenly.  Non-overlapping windows (window == stride, no padding, exact fit) use
a reshape instead of im2col, with no gather or scatter at all.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet._checks import check_rank
from jaxnet.manual._patches import crop_hw, extract_patches, fold_patches, pad_hw
from jaxnet.ops.pool import pool_geometry


def _tiles(geom):
    """True when windows tile the input exactly (the reshape fast path)."""
    return (geom.kernel == geom.stride and not any(any(p) for p in geom.pads)
            and all(o * k == n for o, k, n in zip(geom.out_hw, geom.kernel, geom.in_hw)))


def _blocks(x, geom):
    n, h, w, c = x.shape
    (kh, kw), (ho, wo) = geom.kernel, geom.out_hw
    return jnp.reshape(x, (n, ho, kh, wo, kw, c))


def _unblocks(xb, geom):
    n, ho, kh, wo, kw, c = xb.shape
    return jnp.reshape(xb, (n, ho * kh, wo * kw, c))


def _windows(x, geom, pad_value):
    xp = pad_hw(x, geom.pads, pad_value)
    p = extract_patches(xp, geom.kernel, geom.stride, (1, 1), geom.out_hw)
    n, ho, wo, kh, kw, c = p.shape
    return jnp.reshape(p, (n, ho, wo, kh * kw, c))


def _unwindows(dp, geom):
    n, ho, wo, _, c = dp.shape
    dp = jnp.reshape(dp, (n, ho, wo) + geom.kernel + (c,))
    return crop_hw(fold_patches(dp, geom.padded_hw, geom.stride, (1, 1)), geom.pads)


def _tile_windows(x, geom):
    """(N, H, W, C) -> (N, Ho, Wo, C, KH*KW): the non-overlapping windows, window last."""
    n, ho, kh, wo, kw, c = _blocks(x, geom).shape
    return jnp.reshape(jnp.transpose(_blocks(x, geom), (0, 1, 3, 5, 2, 4)), (n, ho, wo, c, kh * kw))


def _untile_windows(w, geom):
    n, ho, wo, c, _ = w.shape
    (kh, kw) = geom.kernel
    return _unblocks(jnp.transpose(jnp.reshape(w, (n, ho, wo, c, kh, kw)), (0, 1, 4, 2, 5, 3)), geom)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool(x, geom):
    return _max_pool_fwd(x, geom)[0]


def _max_pool_fwd(x, geom):
    # The winner's position is recorded in the forward pass.  Re-deriving it in the
    # backward pass as ``x == max`` is fragile under jit: XLA may recompute x with a
    # different rounding there, and a window would lose its winner.
    if _tiles(geom):
        win = _tile_windows(x, geom)
        idx = jnp.argmax(win, axis=-1)
        return jnp.take_along_axis(win, idx[..., None], axis=-1)[..., 0], idx
    win = _windows(x, geom, -jnp.inf)
    idx = jnp.argmax(win, axis=3)
    return jnp.take_along_axis(win, idx[:, :, :, None, :], axis=3)[:, :, :, 0, :], idx


def _max_pool_bwd(geom, idx, dy):
    area = geom.kernel[0] * geom.kernel[1]
    if _tiles(geom):
        onehot = idx[..., None] == jnp.arange(area)
        return (_untile_windows(jnp.where(onehot, dy[..., None], 0), geom),)
    onehot = idx[:, :, :, None, :] == jnp.arange(area)[:, None]
    return (_unwindows(jnp.where(onehot, dy[:, :, :, None, :], 0), geom),)


_max_pool.defvjp(_max_pool_fwd, _max_pool_bwd)


def max_pool2d(x, *, window=2, stride=None, padding=0):
    """Manual twin of :func:`jaxnet.ops.max_pool2d`. x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    return _max_pool(x, pool_geometry("max_pool2d", x, window=window, stride=stride, padding=padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool(x, geom):
    area = geom.kernel[0] * geom.kernel[1]
    if _tiles(geom):
        return jnp.sum(_blocks(x, geom), axis=(2, 4)) / area
    return jnp.sum(_windows(x, geom, 0.0), axis=3) / area


def _avg_pool_bwd(geom, _, dy):
    area = geom.kernel[0] * geom.kernel[1]
    share = dy / area
    if _tiles(geom):
        n, ho, wo, c = dy.shape
        spread = jnp.broadcast_to(share[:, :, None, :, None, :], (n, ho) + geom.kernel[:1] + (wo,)
                                  + geom.kernel[1:] + (c,))
        return (_unblocks(spread, geom),)
    spread = jnp.broadcast_to(share[:, :, :, None, :], share.shape[:3] + (area,) + share.shape[3:])
    return (_unwindows(spread, geom),)


_avg_pool.defvjp(lambda x, geom: (_avg_pool(x, geom), None), _avg_pool_bwd)


def avg_pool2d(x, *, window=2, stride=None, padding=0):
    """Manual twin of :func:`jaxnet.ops.avg_pool2d`. x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    return _avg_pool(x, pool_geometry("avg_pool2d", x, window=window, stride=stride, padding=padding))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gap(x, shape):
    return jnp.mean(x, axis=(1, 2))


def _gap_bwd(shape, _, dy):
    n, h, w, c = shape
    return (jnp.broadcast_to(dy[:, None, None, :] / (h * w), shape),)


_gap.defvjp(lambda x, shape: (_gap(x, shape), None), _gap_bwd)


def global_avg_pool(x):
    """Manual twin of :func:`jaxnet.ops.global_avg_pool`. x: (N, H, W, C) -> (N, C)."""
    check_rank("global_avg_pool", "x", x, 4, "(N, H, W, C)")
    return _gap(x, tuple(x.shape))
