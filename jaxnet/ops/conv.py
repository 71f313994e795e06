"""2-D convolution and transposed convolution (NHWC, HWIO): reference forwards,
manual ops, NumPy oracles, audit registrations.

Manual ops: plain convolutions (no dilation, one group) run the reference's
XLA convolution forward and write the backward as the two convolutions the
course derives.  Dilated and grouped convolutions use im2col: gather each
receptive field into a row and multiply by the filters reshaped to a matrix;
with P the patches and dY the upstream gradient, dW = P^T dY, db = sum dY,
dP = dY W^T and dX = col2im(dP) (overlapping windows add up).  The transposed
convolution is the same two halves swapped.  Reverse mode only (``custom_vjp``).
With the optional oneDNN kernel loaded (:mod:`jaxnet.ops.onednn`, the ``cpu-fast`` extra),
float32 plain convolutions on the CPU run those three convolutions (forward, dX, dW + db) as
oneDNN custom calls instead of XLA's convolution.

XLA's convolution is used only for shapes where none of the convolutions of
the forward and backward passes has a window larger than its input
(:func:`_xla_conv_safe`, :func:`_xla_conv_transpose_safe`): XLA's CPU
simplifier may swap the operands of such a convolution, and for some shapes
(a size-2 window over a 2x-dilated input on one axis, or the extra axis XLA
adds for grouped convolutions, next to a window larger than the input on the
other) the swapped convolution is malformed and aborts the process.  Those
shapes are computed by im2col in both paths, which uses no convolution.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_positive_int, check_rank, is_int
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops import onednn
from jaxnet.ops._geometry import WindowGeometry, as_pair, check_spatial, window_geometry
from jaxnet.ops._patches import crop_hw, extract_patches, fold_patches, pad_hw
from jaxnet.ops._registry import OpSpec, case, register
from jaxnet.ops.activations import relu

_DN = ("NHWC", "HWIO", "NHWC")


def _sample_conv(key, d, dt):
    k = S.keys(key, 3)
    x = S.normal(k[0], d["x"], dt)
    w = S.normal(k[1], d["w"], dt)
    return x, w, (S.normal(k[2], (d["w"][-1],), dt) if d.get("bias", True) else None)


# --------------------------------------------------------------------------------------------- conv2d

def conv2d_geometry(op, x, w, b, *, stride, padding, dilation, groups) -> WindowGeometry:
    """Validate a conv2d call and return its window geometry."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    check_rank(op, "w", w, 4, "(KH, KW, C // groups, O)")
    groups = check_positive_int(op, "groups", groups)
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


def _xla_conv_safe(geom) -> bool:
    """True when no convolution XLA sees for this geometry (forward, and dX and dW of
    the backward pass) has a window larger than its input.

    Forward: the kernel over x; dX: the kernel over dY (dilated by the stride; a
    size-2 window there can look like one of XLA's group axes, so it is checked
    per axis); dW: dY over x.  XLA's simplifier considers swapping the operands
    of a convolution whose window is the larger one; for some of those shapes
    the swapped convolution is malformed and XLA aborts the process.
    """
    (kh, kw), (nh, nw), (oh, ow) = geom.kernel, geom.in_hw, geom.out_hw
    return kh * kw <= nh * nw and kh <= oh and kw <= ow and oh * ow <= nh * nw


def _conv2d_xla(x, w, b, geom, groups):
    """XLA's convolution on a resolved geometry, then the bias."""
    y = jax.lax.conv_general_dilated(x, w, geom.stride, geom.pads, rhs_dilation=geom.dilation,
                                     dimension_numbers=_DN, feature_group_count=groups)
    return y if b is None else y + b


def _conv2d_im2col(x, w, b, geom, groups):
    """im2col on a resolved geometry: the patches times the filters, then the bias."""
    p = _patches(x, geom, groups)
    if groups == 1:          # one (N*Ho*Wo, KH*KW*C) x (KH*KW*C, O) matmul, the course's X_col . W_row
        n, ho, wo = p.shape[:3]
        kh, kw, c, o = w.shape        # explicit sizes, no -1: an empty batch must reshape too
        y = jnp.reshape(jnp.reshape(p, (n * ho * wo, kh * kw * c)) @ jnp.reshape(w, (kh * kw * c, o)),
                        (n, ho, wo, o))
    else:
        y = jnp.einsum("nhwijgc,ijcgo->nhwgo", p, _grouped(w, groups))
        y = jnp.reshape(y, y.shape[:3] + (w.shape[3],))
    return y if b is None else y + b


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Cross-correlation as in deep learning (no kernel flip).

    x: (N, H, W, C).  w: (KH, KW, C // groups, O).  b: (O,) or None.
    stride, dilation: int or (sh, sw).  padding: int, (ph, pw),
    ((top, bottom), (left, right)), "SAME" or "VALID".
    Returns (N, Ho, Wo, O) with ``Ho = (H + 2P - D(KH - 1) - 1) / S + 1``.
    XLA's convolution, or im2col for shapes where a window of the forward or
    backward pass is larger than its input (see :func:`_xla_conv_safe`).
    """
    groups = check_positive_int("conv2d", "groups", groups)
    g = conv2d_geometry("conv2d", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return (_conv2d_xla if _xla_conv_safe(g) else _conv2d_im2col)(x, w, b, g, groups)


def _grouped(w, groups):
    kh, kw, cg, o = w.shape
    return jnp.reshape(w, (kh, kw, cg, groups, o // groups))


def _patches(x, geom, groups):
    p = extract_patches(pad_hw(x, geom.pads), geom.kernel, geom.stride, geom.dilation, geom.out_hw)
    n, ho, wo, kh, kw, c = p.shape
    return jnp.reshape(p, (n, ho, wo, kh, kw, groups, c // groups))


def _native(geom, groups):
    """Plain convolutions (no dilation, no groups) use XLA's convolution for the forward
    pass and both backward products; the rest use im2col.  Chosen by measurement with
    ``jaxnet bench``: XLA's convolution is the faster of the two for plain convolutions.
    Shapes that :func:`_xla_conv_safe` refuses use im2col too."""
    return groups == 1 and geom.dilation == (1, 1) and _xla_conv_safe(geom)


def _onednn(geom, *arrays):
    """The native path's three convolutions run on oneDNN (:mod:`jaxnet.ops.onednn`, the optional
    ``cpu-fast`` extra) when its kernel is loaded, the arrays are float32 and the backend is the CPU."""
    return min(min(p) for p in geom.pads) >= 0 and onednn.usable(*arrays)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d(x, w, b, geom, groups):
    return _conv2d_fwd(x, w, b, geom, groups)[0]


def _conv2d_fwd(x, w, b, geom, groups):
    if _native(geom, groups):
        if _onednn(geom, x, w, b):
            if onednn.winograd_pair(x.shape, w.shape, geom.stride, geom.pads):
                # the residual is x in oneDNN's blocked layout (flat), which the backward pair takes
                y, xb = onednn.conv_fwd_winograd(x, w, b, geom.stride, geom.pads)
                return y, (xb, w, b)
            return onednn.conv_fwd(x, w, b, geom.stride, geom.pads), (x, w, b)
        return _conv2d_xla(x, w, b, geom, groups), (x, w, b)
    return _conv2d_im2col(x, w, b, geom, groups), (x, w, b)


def _conv2d_native_bwd(geom, x, w, dy):
    """The course's result: both gradients of a convolution are convolutions.

    dX = the "full" convolution of dY (stride s -> s-1 zeros between its pixels)
         with the spatially flipped filters, in/out channels swapped;
    dW = the correlation of the padded input with dY (dY as the filter, dilated by s).
    x: (N, H, W, C), w: (KH, KW, C, O), dy: (N, Ho, Wo, O).  Returns dx like x, dw like w.
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


def _conv2d_bwd(geom, groups, res, dy):
    """dX = col2im(dY·Wᵀ) (plain convs: dY fully convolved with the flipped filters), dW = Pᵀ·dY, db = Σ dY.

    Residuals: the inputs x (N, H, W, C), w (KH, KW, C // groups, O) and b (O,)
    or None; the patches P (N, Ho, Wo, KH, KW, C) are recomputed from x rather
    than stored.  dy: (N, Ho, Wo, O).  Returns dx like x, dw like w, db (O,) or None.
    """
    x, w, b = res
    n, ho, wo, o = dy.shape
    if x.ndim == 1:       # a Winograd pair's forward kept x in oneDNN's blocked layout (flat): its backward
        return onednn.conv_bwd_winograd(x, dy, w, (n,) + tuple(geom.in_hw) + (w.shape[2],), geom.stride, geom.pads,
                                        bias=b is not None)
    if _native(geom, groups) and _onednn(geom, x, w, b, dy):     # the same two convolutions, by oneDNN
        dx = onednn.conv_bwd_data(dy, w, x.shape, geom.stride, geom.pads)
        dw, db = onednn.conv_bwd_weights(x, dy, w.shape, geom.stride, geom.pads, bias=b is not None)
        return dx, dw, db
    if _native(geom, groups):
        dx, dw = _conv2d_native_bwd(geom, x, w, dy)
        return dx, dw, (None if b is None else jnp.sum(dy, axis=(0, 1, 2)))
    p = _patches(x, geom, groups)
    if groups == 1:
        kkc = w.shape[0] * w.shape[1] * w.shape[2]
        p2, dy2 = jnp.reshape(p, (n * ho * wo, kkc)), jnp.reshape(dy, (n * ho * wo, o))
        dw = jnp.reshape(p2.T @ dy2, w.shape)                            # dW = X_col^T . dY
        dp = jnp.reshape(dy2 @ jnp.reshape(w, (kkc, o)).T, p.shape[:5] + (x.shape[3],))   # dX_col = dY . W_row^T
    else:
        dyg = jnp.reshape(dy, (n, ho, wo, groups, o // groups))
        dw = jnp.reshape(jnp.einsum("nhwijgc,nhwgo->ijcgo", p, dyg), w.shape)
        dp = jnp.einsum("nhwgo,ijcgo->nhwijgc", dyg, _grouped(w, groups))
        dp = jnp.reshape(dp, dp.shape[:5] + (x.shape[3],))
    dx = crop_hw(fold_patches(dp, geom.padded_hw, geom.stride, geom.dilation), geom.pads)   # col2im
    db = None if b is None else jnp.sum(dy, axis=(0, 1, 2))
    return dx, dw, db


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv2d_manual(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Manual twin of :func:`conv2d` (plain: XLA convolution, or oneDNN's for float32 on the CPU
    when its kernel is loaded; dilated or grouped: im2col).

    x: (N, H, W, C).  w: (KH, KW, C // groups, O).  b: (O,) or None.
    Returns (N, Ho, Wo, O).
    """
    groups = check_positive_int("conv2d", "groups", groups)
    geom = conv2d_geometry("conv2d", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _conv2d(x, w, b, geom, groups)


def _conv2d_oracle(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """NumPy oracle: a loop over output positions, each the ``einsum`` of the dilated receptive field
    (padded by :func:`~jaxnet.ops._oracle_inputs.pads`) with each group's filters, float64.
    x: (N, H, W, C); w: (KH, KW, C // groups, O); b: (O,) or None.  Returns (N, Ho, Wo, O)."""
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    (sh, sw), (dh, dw) = O.pair(stride), O.pair(dilation)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    xp = O.pad_hw(x, O.pads(padding, (h, wd), (eh, ew), (sh, sw)))
    ho, wo = (xp.shape[1] - eh) // sh + 1, (xp.shape[2] - ew) // sw + 1
    og = o // groups
    y = np.zeros((n, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            field = xp[:, i * sh:i * sh + eh:dh, j * sw:j * sw + ew:dw, :]       # (N, KH, KW, C)
            for g in range(groups):
                y[:, i, j, g * og:(g + 1) * og] = np.einsum(
                    "nabc,abco->no", field[..., g * cg:(g + 1) * cg], w[..., g * og:(g + 1) * og])
    return y if b is None else y + b


def _oracle_conv_args(xs, ws, bias=True):
    """Fixed-input ``make``: x of shape ``xs``, w of shape ``ws``, a bias of ``ws[-1]`` (or None), N(0, 1)."""
    def make(r):
        return (r.standard_normal(xs), r.standard_normal(ws), r.standard_normal(ws[-1]) if bias else None)
    return make


# (label, make, kwargs): the fixed-input oracle cases of conv2d, and of conv2d_relu
_CONV_ORACLE_CASES = (
    ("x=2x5x5x3 w=3x3x3x2 stride=1 padding=0", _oracle_conv_args((2, 5, 5, 3), (3, 3, 3, 2)),
     {"stride": 1, "padding": 0}),
    ("x=1x7x7x2 w=3x3x2x3 stride=2 padding=1", _oracle_conv_args((1, 7, 7, 2), (3, 3, 2, 3)),
     {"stride": 2, "padding": 1}),
    ("x=1x6x7x2 w=3x2x2x2 stride=2 padding=SAME", _oracle_conv_args((1, 6, 7, 2), (3, 2, 2, 2)),
     {"stride": 2, "padding": "SAME"}),
    ("x=1x7x7x2 w=3x3x2x2 dilation=2 padding=VALID", _oracle_conv_args((1, 7, 7, 2), (3, 3, 2, 2)),
     {"padding": "VALID", "dilation": 2}),
    ("x=2x4x4x4 w=3x3x2x6 groups=2 padding=1", _oracle_conv_args((2, 4, 4, 4), (3, 3, 2, 6)),
     {"padding": 1, "groups": 2}),
    ("x=1x5x6x2 w=2x3x2x2 bias=False stride=(1,2) padding=((1,0),(0,1))",
     _oracle_conv_args((1, 5, 6, 2), (2, 3, 2, 2), bias=False), {"stride": (1, 2), "padding": ((1, 0), (0, 1))}))


def _conv2d_oracle_cases():
    return O.drawn("conv2d", *_CONV_ORACLE_CASES)


register(OpSpec("conv2d", conv2d, conv2d_manual, _sample_conv, (
    case({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=1, padding=0),
    case({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=2, padding=0),
    case({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=1, padding=1),
    case({"x": (1, 8, 9, 3), "w": (3, 3, 3, 2)}, stride=2, padding="SAME"),
    case({"x": (2, 9, 9, 2), "w": (3, 3, 2, 3)}, stride=1, padding="VALID", dilation=2),
    case({"x": (2, 6, 6, 4), "w": (3, 3, 2, 6)}, stride=1, padding=1, groups=2),
    case({"x": (1, 5, 5, 3), "w": (3, 3, 1, 3)}, stride=1, padding="SAME", groups=3),
    case({"x": (3, 4, 4, 5), "w": (1, 1, 5, 2)}, stride=1, padding=0),
    case({"x": (2, 5, 7, 2), "w": (2, 3, 2, 3), "bias": False}, stride=(1, 2), padding=(1, 0)),
    case({"x": (1, 7, 7, 3), "w": (5, 5, 3, 2)}, stride=2, padding=2, dilation=1),
    # 32 -> 16 channels, 3x3, stride 1, padding 1: the oneDNN kernel's Winograd shape (odd H, W: part tiles)
    case({"x": (2, 6, 5, 32), "w": (3, 3, 32, 16)}, stride=1, padding=1),
), backward=_conv2d_bwd, oracle=_conv2d_oracle, oracle_cases=_conv2d_oracle_cases))


# ---------------------------------------------------------------------------------------- conv2d_relu

def conv2d_relu(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """``relu(conv2d(x, w, b, ...))`` as one op: a conv layer followed by its ReLU.

    Same arguments and shapes as :func:`conv2d`; returns (N, Ho, Wo, O), every entry >= 0 (or NaN).
    :class:`jaxnet.nn.Sequential` runs a ``Conv2D`` followed by a ``ReLU`` (same ``impl``) as this op.
    """
    groups = check_positive_int("conv2d_relu", "groups", groups)
    g = conv2d_geometry("conv2d_relu", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return relu((_conv2d_xla if _xla_conv_safe(g) else _conv2d_im2col)(x, w, b, g, groups))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _conv2d_relu(x, w, b, geom, groups):
    return _conv2d_relu_fwd(x, w, b, geom, groups)[0]


def _conv2d_relu_fwd(x, w, b, geom, groups):
    # oneDNN applies the ReLU inside the convolution (a post-op: no second pass over y); otherwise
    # conv2d's forward, then the ReLU.  The output y is the residual the mask comes from.
    if _native(geom, groups) and _onednn(geom, x, w, b):
        y = onednn.conv_fwd(x, w, b, geom.stride, geom.pads, relu=True)
    else:
        y = relu(_conv2d_fwd(x, w, b, geom, groups)[0])
    return y, (x, w, b, y)


def _conv2d_relu_bwd(geom, groups, res, dy):
    """dz = dy·1[y > 0] (the ReLU's, from its output y), then conv2d's backward of dz: dX, dW = Pᵀ·dz, db = Σ dz.

    Residuals: x (N, H, W, C), w (KH, KW, C // groups, O), b (O,) or None and the output y
    (N, Ho, Wo, O); y <= 0 exactly where the convolution was <= 0 (NaN passes dy, as relu's
    backward).  dy: like y.  Returns dx like x, dw like w, db (O,) or None.
    """
    x, w, b, y = res
    return _conv2d_bwd(geom, groups, (x, w, b), jnp.where(y <= 0, 0, dy))


_conv2d_relu.defvjp(_conv2d_relu_fwd, _conv2d_relu_bwd)


def conv2d_relu_manual(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Manual twin of :func:`conv2d_relu` (on oneDNN with the ReLU fused into the convolution for
    float32 on the CPU when its kernel is loaded).  Shapes as :func:`conv2d`."""
    groups = check_positive_int("conv2d_relu", "groups", groups)
    geom = conv2d_geometry("conv2d_relu", x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    return _conv2d_relu(x, w, b, geom, groups)


def _conv2d_relu_oracle(x, w, b=None, **kwargs):
    """NumPy oracle: ``max(conv2d oracle, 0)``, float64."""
    return np.maximum(_conv2d_oracle(x, w, b, **kwargs), 0.0)


def _conv2d_relu_oracle_cases():
    return O.drawn("conv2d_relu", *_CONV_ORACLE_CASES)


register(OpSpec("conv2d_relu", conv2d_relu, conv2d_relu_manual, _sample_conv, (
    case({"x": (2, 7, 7, 3), "w": (3, 3, 3, 4)}, stride=1, padding=1),
    case({"x": (1, 8, 9, 3), "w": (3, 3, 3, 2)}, stride=2, padding="SAME"),
    case({"x": (2, 9, 9, 2), "w": (3, 3, 2, 3)}, stride=1, padding="VALID", dilation=2),
    case({"x": (2, 6, 6, 4), "w": (3, 3, 2, 6)}, stride=1, padding=1, groups=2),
    case({"x": (2, 5, 7, 2), "w": (2, 3, 2, 3), "bias": False}, stride=(1, 2), padding=(1, 0)),
), backward=_conv2d_relu_bwd, note="the convolution's outputs are continuous draws: none within a finite-difference "
   "step of the ReLU's kink at the sampled inputs", oracle=_conv2d_relu_oracle, oracle_cases=_conv2d_relu_oracle_cases))


# ----------------------------------------------------------------------------------- conv2d_transpose

def conv2d_transpose_geometry(op, x, w, b, *, stride, padding):
    """Validate a conv2d_transpose call; return (kernel, stride, padding, output hw)."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    check_rank(op, "w", w, 4, "(KH, KW, C, O)")
    check_spatial(op, "x", x.shape)
    if w.shape[2] != x.shape[3]:
        raise ValueError(f"{op}: channel mismatch: x {tuple(x.shape)} has {x.shape[3]} channels "
                         f"but w {tuple(w.shape)} expects {w.shape[2]} in axis 2")
    if b is not None and tuple(b.shape) != (w.shape[3],):
        raise ValueError(f"{op}: `b` must have shape ({w.shape[3]},), got {tuple(b.shape)}")
    k = as_pair(op, "kernel", tuple(w.shape[:2]))
    s = as_pair(op, "stride", stride)
    if not is_int(padding) or padding < 0:
        raise ValueError(f"{op}: `padding` must be a non-negative int, got {padding!r}")
    padding = int(padding)
    out = tuple((n - 1) * si + ki - 2 * padding for n, si, ki in zip(x.shape[1:3], s, k))
    if min(out) < 1:
        raise ValueError(f"{op}: padding {padding} crops everything: x {tuple(x.shape)}, w {tuple(w.shape)}, "
                         f"stride {s} give output {out}")
    return k, s, padding, out


def _xla_conv_transpose_safe(in_hw, kernel, stride, out_hw) -> bool:
    """True when no convolution XLA sees for this transposed convolution has a window
    larger than its input where that can abort XLA (see :func:`_xla_conv_safe`).

    Forward: the kernel over x dilated by the stride (per axis: a size-2 window
    there can look like one of XLA's group axes); autodiff's dX: the kernel over
    dY; its dW: dY over the dilated x, larger in every upsampling layer and
    harmless unless dY has size 2 along a stride-2 axis (again a group-axis look-alike).
    """
    (kh, kw), (oh, ow) = kernel, out_hw
    return (all(k <= n for k, n in zip(kernel, in_hw)) and kh * kw <= oh * ow
            and not any(s == 2 and o == 2 for s, o in zip(stride, out_hw)))


def conv2d_transpose(x, w, b=None, *, stride=1, padding=0):
    """Transposed ("fractionally strided") convolution, the input-gradient of conv2d.

    Every input pixel paints a copy of the filter weighted by its value at
    stride ``stride``; overlaps add up; ``padding`` is cropped from each side:
    ``y[n, s*h + i - p, s*w + j - p, o] += x[n, h, w, c] * w[i, j, c, o]``.
    x: (N, H, W, C).  w: (KH, KW, C, O).  b: (O,) or None.
    Returns (N, (H - 1) S + KH - 2P, (W - 1) S + KW - 2P, O).
    XLA's dilated convolution, or the col2im form of the manual op for shapes
    where that could abort XLA (see :func:`_xla_conv_transpose_safe`).
    """
    k, s, p, out = conv2d_transpose_geometry("conv2d_transpose", x, w, b, stride=stride, padding=padding)
    if not _xla_conv_transpose_safe(x.shape[1:3], k, s, out):
        y = _paint(x, w, s, p, out)
        return y if b is None else y + b
    pads = tuple((ki - 1 - p, ki - 1 - p) for ki in k)
    y = jax.lax.conv_general_dilated(x, jnp.flip(w, (0, 1)), (1, 1), pads, lhs_dilation=s,
                                     dimension_numbers=_DN)
    return y if b is None else y + b


def _paint(x, w, stride, pad, out_hw):
    """conv2d_transpose forward: every input pixel paints the filter (col2im of x . W)."""
    q = jnp.einsum("nhwc,ijco->nhwijo", x, w)
    full = tuple((n - 1) * s + k for n, s, k in zip(x.shape[1:3], stride, w.shape[:2]))
    y = fold_patches(q, full, stride, (1, 1))
    return crop_hw(y, ((pad, pad), (pad, pad)))


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def _conv2d_transpose(x, w, b, stride, pad, out_hw):
    return _conv2d_transpose_fwd(x, w, b, stride, pad, out_hw)[0]


def _conv2d_transpose_fwd(x, w, b, stride, pad, out_hw):
    # im2col's second half (col2im) instead of the reference's dilated XLA convolution
    y = _paint(x, w, stride, pad, out_hw)
    return (y if b is None else y + b), (x, w, b)


def _conv2d_transpose_bwd(stride, pad, out_hw, res, dy):
    """dQ = im2col(dY); dX = dQ·Wᵀ (a strided convolution of dY), dW = xᵀ·dQ, db = Σ dY.

    Residuals: the inputs x (N, H, W, C), w (KH, KW, C, O) and b (O,) or None.
    dy: (N, Ho, Wo, O), padded back by ``pad`` on every side; its patches
    dQ: (N, H, W, KH, KW, O).  Returns dx like x, dw like w, db (O,) or None.
    """
    x, w, b = res
    dq = extract_patches(pad_hw(dy, ((pad, pad), (pad, pad))), w.shape[:2], stride, (1, 1), x.shape[1:3])
    dx = jnp.einsum("nhwijo,ijco->nhwc", dq, w)
    dw = jnp.einsum("nhwc,nhwijo->ijco", x, dq)
    db = None if b is None else jnp.sum(dy, axis=(0, 1, 2))
    return dx, dw, db


_conv2d_transpose.defvjp(_conv2d_transpose_fwd, _conv2d_transpose_bwd)


def conv2d_transpose_manual(x, w, b=None, *, stride=1, padding=0):
    """Manual twin of :func:`conv2d_transpose`.

    x: (N, H, W, C).  w: (KH, KW, C, O).  b: (O,) or None.
    Returns (N, (H - 1) S + KH - 2P, (W - 1) S + KW - 2P, O).
    """
    _, s, p, out = conv2d_transpose_geometry("conv2d_transpose", x, w, b, stride=stride, padding=padding)
    return _conv2d_transpose(x, w, b, s, p, out)


def _conv2d_transpose_oracle(x, w, b=None, *, stride=1, padding=0):
    """NumPy oracle: every input pixel paints the filter, weighted by its value, at its strided position
    (a loop over input positions); then ``padding`` is cropped from each side, float64.
    x: (N, H, W, C); w: (KH, KW, C, O); b: (O,) or None."""
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    sh, sw = O.pair(stride)
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, o))
    for i in range(h):
        for j in range(wd):
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += np.einsum("nc,abco->nabo", x[:, i, j, :], w)
    p = padding
    y = full[:, p:full.shape[1] - p, p:full.shape[2] - p, :]
    return y if b is None else y + b


def _conv2d_transpose_oracle_cases():
    return O.drawn(
        "conv2d_transpose",
        ("x=2x3x3x2 w=3x3x2x2 stride=1", _oracle_conv_args((2, 3, 3, 2), (3, 3, 2, 2)), {"stride": 1, "padding": 0}),
        ("x=1x3x4x2 w=3x3x2x3 stride=2 padding=1", _oracle_conv_args((1, 3, 4, 2), (3, 3, 2, 3)),
         {"stride": 2, "padding": 1}),
        ("x=1x2x3x2 w=2x3x2x2 bias=False stride=(2,1)", _oracle_conv_args((1, 2, 3, 2), (2, 3, 2, 2), bias=False),
         {"stride": (2, 1), "padding": 0}))


register(OpSpec("conv2d_transpose", conv2d_transpose, conv2d_transpose_manual, _sample_conv, (
    case({"x": (2, 4, 4, 3), "w": (3, 3, 3, 2)}, stride=1, padding=0),
    case({"x": (2, 4, 4, 3), "w": (3, 3, 3, 2)}, stride=2, padding=1),
    case({"x": (1, 3, 5, 2), "w": (2, 3, 2, 4), "bias": False}, stride=(2, 1), padding=0),
    case({"x": (2, 3, 3, 2), "w": (4, 4, 2, 2)}, stride=2, padding=1),
), backward=_conv2d_transpose_bwd, oracle=_conv2d_transpose_oracle, oracle_cases=_conv2d_transpose_oracle_cases))
