"""Convolutions with the course's hand-derived backward: im2col + matmul, or, for
plain convolutions, the backward written as the two convolutions the course derives.

Forward: gather each receptive field into a row (im2col) and multiply by the
filters reshaped to a matrix.  Backward, with P the patches and dY the
upstream gradient: dW = P^T dY, db = sum dY, dP = dY W^T and dX = col2im(dP)
(overlapping windows add up).  The transposed convolution is the same two
halves swapped.  Reverse mode only (``custom_vjp``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet.manual._patches import crop_hw, extract_patches, fold_patches, pad_hw
from jaxnet.ops.conv import conv2d_geometry, conv2d_transpose_geometry


def _grouped(w, groups):
    kh, kw, cg, o = w.shape
    return jnp.reshape(w, (kh, kw, cg, groups, o // groups))


def _patches(x, geom, groups):
    p = extract_patches(pad_hw(x, geom.pads), geom.kernel, geom.stride, geom.dilation, geom.out_hw)
    n, ho, wo, kh, kw, c = p.shape
    return jnp.reshape(p, (n, ho, wo, kh, kw, groups, c // groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv(x, w, b, geom, groups):
    return _conv_fwd(x, w, b, geom, groups)[0]


def _native(geom, groups):
    """Plain convolutions (no dilation, no groups) use XLA's convolution for the three
    products below; the rest use im2col.  Chosen by measurement (``jaxnet bench``): on
    this CPU XLA's convolution beat im2col + matmul by 2-3x for 64->64 at 16x16."""
    return groups == 1 and geom.dilation == (1, 1)


_DN = ("NHWC", "HWIO", "NHWC")


def _conv_fwd(x, w, b, geom, groups):
    if _native(geom, groups):
        y = jax.lax.conv_general_dilated(x, w, geom.stride, geom.pads, dimension_numbers=_DN)
        return (y if b is None else y + b), (x, w, b)
    p = _patches(x, geom, groups)
    if groups == 1:          # one (N*Ho*Wo, KH*KW*C) x (KH*KW*C, O) matmul, the course's X_col . W_row
        n, ho, wo = p.shape[:3]
        y = jnp.reshape(jnp.reshape(p, (n * ho * wo, -1)) @ jnp.reshape(w, (-1, w.shape[3])), (n, ho, wo, -1))
    else:
        y = jnp.einsum("nhwijgc,ijcgo->nhwgo", p, _grouped(w, groups))
        y = jnp.reshape(y, y.shape[:3] + (-1,))
    return (y if b is None else y + b), (x, w, b)


def _native_bwd(geom, x, w, dy):
    """The course's result: both gradients of a convolution are convolutions.

    dX = the "full" convolution of dY (stride s -> s-1 zeros between its pixels)
         with the spatially flipped filters, in/out channels swapped;
    dW = the correlation of the padded input with dY (dY as the filter, dilated by s).
    """
    (kh, kw), s = w.shape[:2], geom.stride
    ho, wo = dy.shape[1:3]
    pads = []
    for k, (lo, hi), n, o, st in zip((kh, kw), geom.pads, geom.in_hw, (ho, wo), s):
        rest = n + lo + hi - k - (o - 1) * st                      # rows the last window did not reach
        pads.append((k - 1 - lo, k - 1 - hi + rest))
    w_flip = jnp.swapaxes(jnp.flip(w, (0, 1)), 2, 3)
    dx = jax.lax.conv_general_dilated(dy, w_flip, (1, 1), pads, lhs_dilation=s, dimension_numbers=_DN)
    dw = jax.lax.conv_general_dilated(x, dy, (1, 1), geom.pads, rhs_dilation=s,
                                      dimension_numbers=("CHWN", "IHWO", "HWNC"))
    return dx, dw[:kh, :kw]


def _conv_bwd(geom, groups, res, dy):
    x, w, b = res
    n, ho, wo, o = dy.shape
    if _native(geom, groups):
        dx, dw = _native_bwd(geom, x, w, dy)
        return dx, dw, (None if b is None else jnp.sum(dy, axis=(0, 1, 2)))
    p = _patches(x, geom, groups)                                        # recomputed, not stored
    if groups == 1:
        p2, dy2 = jnp.reshape(p, (n * ho * wo, -1)), jnp.reshape(dy, (n * ho * wo, o))
        dw = jnp.reshape(p2.T @ dy2, w.shape)                            # dW = X_col^T . dY
        dp = jnp.reshape(dy2 @ jnp.reshape(w, (-1, o)).T, p.shape[:5] + (-1,))   # dX_col = dY . W_row^T
    else:
        dyg = jnp.reshape(dy, (n, ho, wo, groups, o // groups))
        dw = jnp.reshape(jnp.einsum("nhwijgc,nhwgo->ijcgo", p, dyg), w.shape)
        dp = jnp.einsum("nhwgo,ijcgo->nhwijgc", dyg, _grouped(w, groups))
        dp = jnp.reshape(dp, dp.shape[:5] + (-1,))
    dx = crop_hw(fold_patches(dp, geom.padded_hw, geom.stride, geom.dilation), geom.pads)   # col2im
    db = None if b is None else jnp.sum(dy, axis=(0, 1, 2))
    return dx, dw, db


_conv.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Manual twin of :func:`jaxnet.ops.conv2d` (im2col forward, col2im backward).

    x: (N, H, W, C).  w: (KH, KW, C // groups, O).  b: (O,) or None.
    Returns (N, Ho, Wo, O).
    """
    geom = conv2d_geometry("conv2d", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _conv(x, w, b, geom, groups)


def _paint(x, w, stride, pad, out_hw):
    """conv2d_transpose forward: every input pixel paints the filter (col2im of x . W)."""
    q = jnp.einsum("nhwc,ijco->nhwijo", x, w)
    full = tuple((n - 1) * s + k for n, s, k in zip(x.shape[1:3], stride, w.shape[:2]))
    y = fold_patches(q, full, stride, (1, 1))
    return crop_hw(y, ((pad, pad), (pad, pad)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv_t(x, w, b, stride, pad, out_hw):
    y = _paint(x, w, stride, pad, out_hw)
    return y if b is None else y + b


def _conv_t_fwd(x, w, b, stride, pad, out_hw):
    return _conv_t(x, w, b, stride, pad, out_hw), (x, w, b)


def _conv_t_bwd(stride, pad, out_hw, res, dy):
    x, w, b = res
    dq = extract_patches(pad_hw(dy, ((pad, pad), (pad, pad))), w.shape[:2], stride, (1, 1), x.shape[1:3])
    dx = jnp.einsum("nhwijo,ijco->nhwc", dq, w)        # a plain strided convolution of dy
    dw = jnp.einsum("nhwc,nhwijo->ijco", x, dq)
    db = None if b is None else jnp.sum(dy, axis=(0, 1, 2))
    return dx, dw, db


_conv_t.defvjp(_conv_t_fwd, _conv_t_bwd)


def conv2d_transpose(x, w, b=None, *, stride=1, padding=0):
    """Manual twin of :func:`jaxnet.ops.conv2d_transpose`.

    x: (N, H, W, C).  w: (KH, KW, C, O).  b: (O,) or None.
    Returns (N, (H - 1) S + KH - 2P, (W - 1) S + KW - 2P, O).
    """
    _, s, p, out = conv2d_transpose_geometry("conv2d_transpose", x, w, b, stride=stride, padding=padding)
    return _conv_t(x, w, b, s, p, out)
