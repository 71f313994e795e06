"""Pooling over NHWC inputs: reference forwards (``lax.reduce_window``), manual ops,
NumPy oracles, audit registrations.

Manual max pool routes the upstream gradient to the element that won the
window, recorded as an index in the forward pass.  At a tie both paths send
all of a window's dy to its first maximum in row-major window order (the
manual op's argmax; the reference's ``reduce_window`` max, whose autodiff
select-and-scatter keeps the first of equal values), PyTorch's convention;
``tests/test_op_kinks.py`` checks it against a NumPy loop.  Padding counts as
-inf, and a window lying entirely in the padding is refused.  Manual average
pool spreads ``dy / (KH * KW)`` evenly.
Non-overlapping windows (window == stride, no padding, exact fit) use a reshape
instead of im2col, with no gather or scatter at all.  Reverse mode only
(``custom_vjp``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_rank
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._geometry import WindowGeometry, check_no_padding_window, window_geometry
from jaxnet.ops._patches import crop_hw, extract_patches, fold_patches, pad_hw
from jaxnet.ops._registry import OpSpec, case, register

_WINDOW_CASES = (
    case({"x": (2, 8, 8, 3)}, window=2),
    case({"x": (2, 9, 9, 2)}, window=3, stride=2, padding=1),
    case({"x": (1, 7, 7, 2)}, window=3, stride=1),
    case({"x": (2, 6, 9, 2)}, window=(2, 3), stride=(2, 3)),
    case({"x": (1, 7, 7, 3)}, window=2, stride=2, padding="SAME"),
)


def pool_geometry(op, x, *, window, stride, padding) -> WindowGeometry:
    """Validate a pooling call; ``stride=None`` means ``stride=window``.  A window lying
    entirely in the padding is refused."""
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    g = window_geometry(op, x.shape, window, stride=window if stride is None else stride, padding=padding,
                        kernel_name="window")
    check_no_padding_window(op, g, x.shape, padding)
    return g


def _reduce(x, g, init, fn):
    return jax.lax.reduce_window(x, init, fn, (1,) + g.kernel + (1,), (1,) + g.stride + (1,),
                                 ((0, 0),) + g.pads + ((0, 0),))


# ----------------------------------------------------------------------- window helpers (manual ops)

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


# ------------------------------------------------------------------------------------------- max pool

def max_pool2d(x, *, window=2, stride=None, padding=0):
    """Max over each window, per channel; padding counts as -inf.

    x: (N, H, W, C).  window, stride: int or pair (stride defaults to window).
    Returns (N, Ho, Wo, C) with ``Ho = (H + 2P - F) / S + 1``.
    """
    g = pool_geometry("max_pool2d", x, window=window, stride=stride, padding=padding)
    return _reduce(x, g, -jnp.inf, jax.lax.max)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _max_pool2d(x, geom):
    return _max_pool2d_fwd(x, geom)[0]


def _max_pool2d_fwd(x, geom):
    # Not the reference's reduce_window: the winner's position is recorded here.  Re-deriving
    # it in the backward pass as ``x == max`` is fragile under jit: XLA may recompute x with a
    # different rounding there, and a window would lose its winner.
    if _tiles(geom):
        win = _tile_windows(x, geom)
        idx = jnp.argmax(win, axis=-1)
        return jnp.take_along_axis(win, idx[..., None], axis=-1)[..., 0], idx
    win = _windows(x, geom, -jnp.inf)
    idx = jnp.argmax(win, axis=3)
    return jnp.take_along_axis(win, idx[:, :, :, None, :], axis=3)[:, :, :, 0, :], idx


def _max_pool2d_bwd(geom, idx, dy):
    """dx = dy at each window's recorded winner, summed where windows overlap; 0 elsewhere.

    Residual: the winner's row-major index inside its KH x KW window, int
    (N, Ho, Wo, C).  dy: (N, Ho, Wo, C); dx: (N, H, W, C).
    """
    area = geom.kernel[0] * geom.kernel[1]
    if _tiles(geom):
        onehot = idx[..., None] == jnp.arange(area)
        return (_untile_windows(jnp.where(onehot, dy[..., None], 0), geom),)
    onehot = idx[:, :, :, None, :] == jnp.arange(area)[:, None]
    return (_unwindows(jnp.where(onehot, dy[:, :, :, None, :], 0), geom),)


_max_pool2d.defvjp(_max_pool2d_fwd, _max_pool2d_bwd)


def max_pool2d_manual(x, *, window=2, stride=None, padding=0):
    """Manual twin of :func:`max_pool2d`. x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    return _max_pool2d(x, pool_geometry("max_pool2d", x, window=window, stride=stride, padding=padding))


def _oracle_pool(x, window, stride, padding, fill, reduce):
    """The pooling oracles' loop over output positions: ``reduce`` of each (N, KH, KW, C) window of x,
    padded with ``fill`` (:func:`~jaxnet.ops._oracle_inputs.pads`); stride defaults to the window."""
    n, h, wd, c = x.shape
    kh, kw = O.pair(window)
    sh, sw = O.pair(window if stride is None else stride)
    xp = O.pad_hw(x, O.pads(padding, (h, wd), (kh, kw), (sh, sw)), fill)
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.empty((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            y[:, i, j, :] = reduce(xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :])
    return y


def _oracle_window_cases(name):
    """The fixed inputs both 2-D pools share: a plain window, stride and int padding, SAME with a (2, 3) window."""
    return O.drawn(name, ("x=2x4x4x2 window=2", O.normal(2, 4, 4, 2), {"window": 2}),
                   ("x=1x5x5x2 window=3 stride=2 padding=1", O.normal(1, 5, 5, 2),
                    {"window": 3, "stride": 2, "padding": 1}),
                   ("x=1x5x6x1 window=(2,3) stride=1 padding=SAME", O.normal(1, 5, 6, 1),
                    {"window": (2, 3), "stride": 1, "padding": "SAME"}))


def _max_pool2d_oracle(x, *, window=2, stride=None, padding=0):
    """NumPy oracle: the max of each window, padding as -inf; a loop over output positions, float64."""
    return _oracle_pool(x, window, stride, padding, -np.inf, lambda f: f.max(axis=(1, 2)))


register(OpSpec("max_pool2d", max_pool2d, max_pool2d_manual, S.unary(S.distinct), _WINDOW_CASES,
                backward=_max_pool2d_bwd,
                note="inputs are distinct values, so no window has a tie; ties: tests/test_op_kinks.py",
                oracle=_max_pool2d_oracle, oracle_cases=lambda: _oracle_window_cases("max_pool2d")))


# --------------------------------------------------------------------------------------- average pool

def avg_pool2d(x, *, window=2, stride=None, padding=0):
    """Mean over each window, per channel; padded zeros count (PyTorch's default).

    x: (N, H, W, C).  Returns (N, Ho, Wo, C).
    """
    g = pool_geometry("avg_pool2d", x, window=window, stride=stride, padding=padding)
    return _reduce(x, g, 0.0, jax.lax.add) / (g.kernel[0] * g.kernel[1])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _avg_pool2d(x, geom):
    # Windows summed by reshape (tiling windows) or im2col, not the reference's reduce_window.
    area = geom.kernel[0] * geom.kernel[1]
    if _tiles(geom):
        return jnp.sum(_blocks(x, geom), axis=(2, 4)) / area
    return jnp.sum(_windows(x, geom, 0.0), axis=3) / area


def _avg_pool2d_fwd(x, geom):
    return _avg_pool2d(x, geom), None


def _avg_pool2d_bwd(geom, _, dy):
    """dx = Σ over the windows containing a pixel of dy / (KH · KW).

    No residuals (the geometry is static).  dy: (N, Ho, Wo, C); dx: (N, H, W, C)
    (gradients falling on the padding are cropped).
    """
    area = geom.kernel[0] * geom.kernel[1]
    share = dy / area
    if _tiles(geom):
        n, ho, wo, c = dy.shape
        spread = jnp.broadcast_to(share[:, :, None, :, None, :], (n, ho) + geom.kernel[:1] + (wo,)
                                  + geom.kernel[1:] + (c,))
        return (_unblocks(spread, geom),)
    spread = jnp.broadcast_to(share[:, :, :, None, :], share.shape[:3] + (area,) + share.shape[3:])
    return (_unwindows(spread, geom),)


_avg_pool2d.defvjp(_avg_pool2d_fwd, _avg_pool2d_bwd)


def avg_pool2d_manual(x, *, window=2, stride=None, padding=0):
    """Manual twin of :func:`avg_pool2d`. x: (N, H, W, C) -> (N, Ho, Wo, C)."""
    return _avg_pool2d(x, pool_geometry("avg_pool2d", x, window=window, stride=stride, padding=padding))


def _avg_pool2d_oracle(x, *, window=2, stride=None, padding=0):
    """NumPy oracle: each window's sum over KH * KW, padded zeros counted; a loop over output positions."""
    kh, kw = O.pair(window)
    return _oracle_pool(x, window, stride, padding, 0.0, lambda f: f.sum(axis=(1, 2)) / (kh * kw))


register(OpSpec("avg_pool2d", avg_pool2d, avg_pool2d_manual, S.unary(S.normal), _WINDOW_CASES,
                backward=_avg_pool2d_bwd,
                oracle=_avg_pool2d_oracle, oracle_cases=lambda: _oracle_window_cases("avg_pool2d")))


# -------------------------------------------------------------------------------- global average pool

def global_avg_pool(x):
    """Mean over H and W. x: (N, H, W, C) -> (N, C)."""
    check_rank("global_avg_pool", "x", x, 4, "(N, H, W, C)")
    return jnp.mean(x, axis=(1, 2))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _global_avg_pool(x, shape):
    return global_avg_pool(x)


def _global_avg_pool_fwd(x, shape):
    return global_avg_pool(x), None


def _global_avg_pool_bwd(shape, _, dy):
    """dx = dy / (H · W), broadcast over H and W.

    No residuals (only the static input shape (N, H, W, C)).  dy: (N, C); dx: (N, H, W, C).
    """
    n, h, w, c = shape
    return (jnp.broadcast_to(dy[:, None, None, :] / (h * w), shape),)


_global_avg_pool.defvjp(_global_avg_pool_fwd, _global_avg_pool_bwd)


def global_avg_pool_manual(x):
    """Manual twin of :func:`global_avg_pool`. x: (N, H, W, C) -> (N, C)."""
    check_rank("global_avg_pool", "x", x, 4, "(N, H, W, C)")
    return _global_avg_pool(x, tuple(x.shape))


def _global_avg_pool_oracle(x):
    """NumPy oracle: the mean over H and W, float64. x: (N, H, W, C) -> (N, C)."""
    return x.mean(axis=(1, 2))


register(OpSpec("global_avg_pool", global_avg_pool, global_avg_pool_manual, S.unary(S.normal),
                (case({"x": (2, 4, 4, 3)}), case({"x": (1, 3, 5, 2)})), backward=_global_avg_pool_bwd,
                oracle=_global_avg_pool_oracle,
                oracle_cases=lambda: O.drawn("global_avg_pool", ("x=2x3x3x2", O.normal(2, 3, 3, 2)),
                                             ("x=1x2x4x3", O.normal(1, 2, 4, 3)))))
