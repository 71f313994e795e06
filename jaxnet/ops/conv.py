"""2-D convolution and transposed convolution (NHWC, HWIO), reference forwards."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet._checks import check_positive_int, check_rank
from jaxnet.ops._geometry import WindowGeometry, as_pair, window_geometry

_DN = ("NHWC", "HWIO", "NHWC")


def conv2d_geometry(op, x, w, b, *, stride, padding, dilation, groups) -> WindowGeometry:
    """Validate a conv2d call and return its window geometry."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    check_rank(op, "w", w, 4, "(KH, KW, C // groups, O)")
    check_positive_int(op, "groups", groups)
    c, o = x.shape[3], w.shape[3]
    if c % groups or o % groups:
        raise ValueError(f"{op}: groups={groups} must divide the input channels {c} (x {tuple(x.shape)}) "
                         f"and the output channels {o} (w {tuple(w.shape)})")
    if w.shape[2] * groups != c:
        raise ValueError(f"{op}: channel mismatch: x {tuple(x.shape)} has {c} channels, so `w` must have "
                         f"C // groups = {c // groups} input channels in axis 2, got w {tuple(w.shape)}")
    if b is not None and tuple(b.shape) != (o,):
        raise ValueError(f"{op}: `b` must have shape ({o},) for w {tuple(w.shape)}, got {tuple(b.shape)}")
    return window_geometry(op, x.shape, w.shape[:2], stride=stride, padding=padding,
                           dilation=dilation, kernel_desc=str(tuple(w.shape)))


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation as in deep learning (no kernel flip).

    x: (N, H, W, C).  w: (KH, KW, C // groups, O).  b: (O,) or None.
    stride, dilation: int or (sh, sw).  padding: int, (ph, pw),
    ((top, bottom), (left, right)), "SAME" or "VALID".
    Returns (N, Ho, Wo, O) with ``Ho = (H + 2P - D(KH - 1) - 1) / S + 1``.
    """
    g = conv2d_geometry("conv2d", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    y = jax.lax.conv_general_dilated(x, w, g.stride, g.pads, rhs_dilation=g.dilation,
                                     dimension_numbers=_DN, feature_group_count=groups)
    return y if b is None else y + b


def conv2d_transpose_geometry(op, x, w, b, *, stride, padding):
    """Validate a conv2d_transpose call; return (kernel, stride, padding, output hw)."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    check_rank(op, "w", w, 4, "(KH, KW, C, O)")
    if w.shape[2] != x.shape[3]:
        raise ValueError(f"{op}: channel mismatch: x {tuple(x.shape)} has {x.shape[3]} channels "
                         f"but w {tuple(w.shape)} expects {w.shape[2]} in axis 2")
    if b is not None and tuple(b.shape) != (w.shape[3],):
        raise ValueError(f"{op}: `b` must have shape ({w.shape[3]},), got {tuple(b.shape)}")
    k = tuple(w.shape[:2])
    s = as_pair(op, "stride", stride)
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"{op}: `padding` must be a non-negative int, got {padding!r}")
    out = tuple((n - 1) * si + ki - 2 * padding for n, si, ki in zip(x.shape[1:3], s, k))
    if min(out) < 1:
        raise ValueError(f"{op}: padding {padding} crops everything: x {tuple(x.shape)}, w {tuple(w.shape)}, "
                         f"stride {s} give output {out}")
    return k, s, padding, out


def conv2d_transpose(x, w, b=None, *, stride=1, padding=0):
    """Transposed ("fractionally strided") convolution, the input-gradient of conv2d.

    Every input pixel paints a copy of the filter weighted by its value at
    stride ``stride``; overlaps add up; ``padding`` is cropped from each side:
    ``y[n, s*h + i - p, s*w + j - p, o] += x[n, h, w, c] * w[i, j, c, o]``.
    x: (N, H, W, C).  w: (KH, KW, C, O).  b: (O,) or None.
    Returns (N, (H - 1) S + KH - 2P, (W - 1) S + KW - 2P, O).
    """
    k, s, p, _ = conv2d_transpose_geometry("conv2d_transpose", x, w, b, stride=stride, padding=padding)
    pads = tuple((ki - 1 - p, ki - 1 - p) for ki in k)
    y = jax.lax.conv_general_dilated(x, jnp.flip(w, (0, 1)), (1, 1), pads, lhs_dilation=s,
                                     dimension_numbers=_DN)
    return y if b is None else y + b
