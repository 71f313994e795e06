"""Upsampling over NHWC inputs (the segmentation lecture's "in-network upsampling"): reference
forwards, manual ops, NumPy oracles, audit registrations.

- ``upsample_nearest(x, scale=s)``: each pixel repeated into an ``sh x sw`` block.  Hand
  backward: the transposed scatter, the sum of dy over each block.
- ``upsample_bilinear(x, scale=s)``: half-pixel centres, PyTorch's
  ``interpolate(mode="bilinear", align_corners=False)`` and ``jax.image.resize(...,
  "bilinear")`` for an integer upscale: output row ``i`` samples the input at
  ``src = (i + 0.5) / s - 0.5``, clamped to ``[0, H - 1]``, between rows ``floor(src)`` and
  ``floor(src) + 1`` with weights ``1 - frac`` and ``frac`` (the same along W).  The
  manual op writes this as two interpolation matrices ``A_H`` (Ho, H) and ``A_W``
  (Wo, W), ``y = A_H x A_Wᵀ`` per channel; its hand backward is the transpose,
  ``dx = A_Hᵀ dy A_W``: each output's gradient split to its four neighbours with the
  weights that made it.  The reference gathers the two neighbours per axis instead.
- ``max_unpool2d(x, indices, output_size=(H, W))``: SegNet's unpooling, each value put
  back at the position its max pool's window recorded (``indices`` from
  :func:`max_pool2d_with_indices`, flat ``h * W + w`` per image and channel, PyTorch's
  convention), zeros elsewhere.  Where overlapping windows recorded the same winner
  the values add up (so ``max_unpool2d(dy, indices)`` is exactly the max pool's
  backward; PyTorch keeps one of them; the two agree for non-overlapping windows).
  Indices outside ``[0, H * W)`` are dropped (a jitted function cannot raise on a
  value).  Hand backward: the gather ``dx = dy[indices]``.

``scale`` is a positive int or a pair (sh, sw) of them.  Reverse mode only (``custom_vjp``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_rank
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._geometry import as_pair
from jaxnet.ops._registry import OpSpec, case, register


def _check_upsample(op, x, scale):
    check_rank(op, "x", x, 4, "(N, H, W, C)")
    s = as_pair(op, "scale", scale)
    if 0 in x.shape[1:3]:
        raise ValueError(f"{op}: `x` {tuple(x.shape)} has an empty spatial axis")
    return s


# ------------------------------------------------------------------------------------------- nearest

def upsample_nearest(x, *, scale=2):
    """Nearest-neighbour upsampling: ``y[n, i, j, c] = x[n, i // sh, j // sw, c]``.

    x: (N, H, W, C) float.  scale: a positive int or a pair (sh, sw).
    Returns (N, H·sh, W·sw, C), x's dtype.
    """
    sh, sw = _check_upsample("upsample_nearest", x, scale)
    return jnp.repeat(jnp.repeat(x, sh, axis=1), sw, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _upsample_nearest(x, scale):
    n, h, w, c = x.shape
    sh, sw = scale
    return jnp.reshape(jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, sh, w, sw, c)), (n, h * sh, w * sw, c))


def _upsample_nearest_fwd(x, scale):
    return _upsample_nearest(x, scale), None


def _upsample_nearest_bwd(scale, _, dy):
    """dx[n, i, j, c] = Σ over the block (i·sh .. i·sh+sh-1, j·sw .. j·sw+sw-1) of dy.

    No residuals (the scale is static).  dy: (N, H·sh, W·sw, C); dx: (N, H, W, C).
    """
    n, ho, wo, c = dy.shape
    sh, sw = scale
    return (jnp.sum(jnp.reshape(dy, (n, ho // sh, sh, wo // sw, sw, c)), axis=(2, 4)),)


_upsample_nearest.defvjp(_upsample_nearest_fwd, _upsample_nearest_bwd)


def upsample_nearest_manual(x, *, scale=2):
    """Manual twin of :func:`upsample_nearest`. x: (N, H, W, C) -> (N, H·sh, W·sw, C)."""
    return _upsample_nearest(x, _check_upsample("upsample_nearest", x, scale))


def _upsample_nearest_oracle(x, *, scale=2):
    """NumPy oracle: a loop over output pixels copying ``x[:, i // sh, j // sw]``, float64."""
    sh, sw = O.pair(scale)
    n, h, w, c = x.shape
    y = np.empty((n, h * sh, w * sw, c))
    for i in range(h * sh):
        for j in range(w * sw):
            y[:, i, j] = x[:, i // sh, j // sw]
    return y


def _upsample_cases(name):
    return O.drawn(name, ("x=2x3x4x2 scale=2", O.normal(2, 3, 4, 2), {"scale": 2}),
                   ("x=1x2x3x1 scale=(3,2)", O.normal(1, 2, 3, 1), {"scale": (3, 2)}),
                   ("x=1x1x2x2 scale=4", O.normal(1, 1, 2, 2), {"scale": 4}))


_UPSAMPLE_CASES = (case({"x": (2, 3, 3, 2)}, scale=2), case({"x": (1, 2, 3, 1)}, scale=(3, 2)))

register(OpSpec("upsample_nearest", upsample_nearest, upsample_nearest_manual, S.unary(S.normal), _UPSAMPLE_CASES,
                backward=_upsample_nearest_bwd, oracle=_upsample_nearest_oracle,
                oracle_cases=lambda: _upsample_cases("upsample_nearest"),
                note="integer scale; y[i, j] = x[i // sh, j // sw] (PyTorch's and jax.image.resize's nearest)"))


# ------------------------------------------------------------------------------------------ bilinear

def _source(n_in: int, s: int):
    """Half-pixel sources of an upscale by ``s`` along one axis: (lower index, upper index,
    weight of the upper one), NumPy, each (n_in * s,).  ``src = (i + 0.5) / s - 0.5``
    clamped below at 0; the upper index is clamped to ``n_in - 1`` (PyTorch's rule)."""
    src = np.maximum((np.arange(n_in * s) + 0.5) / s - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    return lo, hi, src - lo


def interpolation_matrix(n_in: int, s: int) -> np.ndarray:
    """The bilinear upscale by ``s`` along one axis as a matrix A (n_in·s, n_in), float64:
    row i holds ``1 - frac`` at ``floor(src)`` and ``frac`` at the next row (clamped)."""
    lo, hi, frac = _source(n_in, s)
    a = np.zeros((n_in * s, n_in))
    rows = np.arange(n_in * s)
    np.add.at(a, (rows, lo), 1.0 - frac)
    np.add.at(a, (rows, hi), frac)
    return a


def upsample_bilinear(x, *, scale=2):
    """Bilinear upsampling with half-pixel centres (``align_corners=False``).

    Matches ``jax.image.resize(x, (N, H·sh, W·sw, C), "bilinear")`` and PyTorch's
    ``F.interpolate(..., scale_factor=s, mode="bilinear", align_corners=False)``.
    x: (N, H, W, C) float.  scale: a positive int or a pair (sh, sw).
    Returns (N, H·sh, W·sw, C), x's dtype.
    """
    sh, sw = _check_upsample("upsample_bilinear", x, scale)
    _, h, w, _ = x.shape
    out = x
    for axis, (n_in, s) in ((1, (h, sh)), (2, (w, sw))):
        lo, hi, frac = _source(n_in, s)
        shape = [1, 1, 1, 1]
        shape[axis] = n_in * s
        t = jnp.asarray(frac.reshape(shape), x.dtype)
        out = jnp.take(out, lo, axis=axis) * (1 - t) + jnp.take(out, hi, axis=axis) * t
    return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _upsample_bilinear(x, scale):
    return _upsample_bilinear_fwd(x, scale)[0]


def _matrices(shape, scale, dtype):
    _, h, w, _ = shape
    return (jnp.asarray(interpolation_matrix(h, scale[0]), dtype), jnp.asarray(interpolation_matrix(w, scale[1]), dtype))


def _upsample_bilinear_fwd(x, scale):
    ah, aw = _matrices(x.shape, scale, x.dtype)
    # one axis at a time (two small matmuls; a three-operand einsum lets XLA pick a poor order)
    return jnp.einsum("jw,niwc->nijc", aw, jnp.einsum("ih,nhwc->niwc", ah, x)), None


def _upsample_bilinear_bwd(scale, _, dy):
    """dx = A_Hᵀ dy A_W per image and channel: each output's gradient split to its four neighbours.

    No residuals: A_H (H·sh, H) and A_W (W·sw, W), the interpolation matrices
    (:func:`interpolation_matrix`), depend only on the static shapes.  dy: (N, H·sh, W·sw, C);
    dx: (N, H, W, C).
    """
    n, ho, wo, c = dy.shape
    ah, aw = _matrices((n, ho // scale[0], wo // scale[1], c), scale, dy.dtype)
    return (jnp.einsum("jw,nhjc->nhwc", aw, jnp.einsum("ih,nijc->nhjc", ah, dy)),)


_upsample_bilinear.defvjp(_upsample_bilinear_fwd, _upsample_bilinear_bwd)


def upsample_bilinear_manual(x, *, scale=2):
    """Manual twin of :func:`upsample_bilinear`. x: (N, H, W, C) -> (N, H·sh, W·sw, C)."""
    return _upsample_bilinear(x, _check_upsample("upsample_bilinear", x, scale))


def _upsample_bilinear_oracle(x, *, scale=2):
    """NumPy oracle: a loop over output pixels, each the weighted sum of its four half-pixel
    neighbours (PyTorch's ``upsample_bilinear2d`` with ``align_corners=False``), float64."""
    sh, sw = O.pair(scale)
    n, h, w, c = x.shape
    y = np.empty((n, h * sh, w * sw, c))
    for i in range(h * sh):
        sy = max((i + 0.5) / sh - 0.5, 0.0)
        y0 = min(int(np.floor(sy)), h - 1)
        y1, ly = min(y0 + 1, h - 1), sy - y0
        for j in range(w * sw):
            sx = max((j + 0.5) / sw - 0.5, 0.0)
            x0 = min(int(np.floor(sx)), w - 1)
            x1, lx = min(x0 + 1, w - 1), sx - x0
            y[:, i, j] = ((1 - ly) * ((1 - lx) * x[:, y0, x0] + lx * x[:, y0, x1])
                          + ly * ((1 - lx) * x[:, y1, x0] + lx * x[:, y1, x1]))
    return y


register(OpSpec("upsample_bilinear", upsample_bilinear, upsample_bilinear_manual, S.unary(S.normal),
                _UPSAMPLE_CASES, backward=_upsample_bilinear_bwd, oracle=_upsample_bilinear_oracle,
                oracle_cases=lambda: _upsample_cases("upsample_bilinear"),
                note="half-pixel centres (align_corners=False, = jax.image.resize 'bilinear'); integer scale"))


# -------------------------------------------------------------------------------------- max unpool

def max_pool2d_with_indices(x, *, window=2, stride=None, padding=0, impl=None):
    """Max pool that also returns where each window's maximum sits (for :func:`max_unpool2d`).

    x: (N, H, W, C).  window, stride, padding: as :func:`jaxnet.functional.max_pool2d`.
    Returns ``(y, indices)``: y (N, Ho, Wo, C) from ``jaxnet.functional.max_pool2d``
    (``impl`` picks its path) and indices int32 (N, Ho, Wo, C), the flat position
    ``h * W + w`` in the unpadded input of each window's first maximum in row-major
    window order (the pooling's own tie rule, PyTorch's ``return_indices``).
    """
    from jaxnet import functional as F
    from jaxnet.ops import pool

    y = F.max_pool2d(x, window=window, stride=stride, padding=padding, impl=impl)
    g = pool.pool_geometry("max_pool2d", x, window=window, stride=stride, padding=padding)
    win = pool._windows(jax.lax.stop_gradient(x), g, -jnp.inf)          # (N, Ho, Wo, KH*KW, C)
    arg = jnp.argmax(win, axis=3).astype(jnp.int32)
    (kh, kw), (sh, sw), ((top, _), (left, _)) = g.kernel, g.stride, g.pads
    ho, wo = g.out_hw
    rows = (jnp.arange(ho, dtype=jnp.int32) * sh - top)[:, None, None] + arg // kw
    cols = (jnp.arange(wo, dtype=jnp.int32) * sw - left)[None, :, None] + arg % kw
    return y, rows * x.shape[2] + cols


def _check_unpool(x, indices, output_size):
    op = "max_unpool2d"
    check_rank(op, "x", x, 4, "(N, Ho, Wo, C)")
    if tuple(indices.shape) != tuple(x.shape):
        raise ValueError(f"{op}: `indices` must have the shape of `x` {tuple(x.shape)}, got {tuple(indices.shape)}")
    if indices.dtype.kind not in "iu":
        raise ValueError(f"{op}: `indices` must be integers (flat h * W + w positions), got dtype {indices.dtype}")
    return as_pair(op, "output_size", output_size)


def _flat(x):
    """(N, Ho, Wo, C) -> (N, Ho·Wo, C)."""
    n, ho, wo, c = x.shape
    return jnp.reshape(x, (n, ho * wo, c))


def max_unpool2d(x, indices, *, output_size):
    """Max unpooling: ``y[n, indices[n,i,j,c] // W, indices[n,i,j,c] % W, c] += x[n, i, j, c]``, zeros elsewhere.

    x: (N, Ho, Wo, C) float.  indices: integer (N, Ho, Wo, C), flat positions ``h * W + w``
    (:func:`max_pool2d_with_indices`); out-of-range ones are dropped.  output_size: (H, W),
    positive ints (the pooled input's size).  Returns (N, H, W, C), x's dtype.
    """
    h, w = _check_unpool(x, indices, output_size)
    n, _, _, c = x.shape
    nn = jnp.arange(n)[:, None, None]
    cc = jnp.arange(c)[None, None, :]
    y = jnp.zeros((n, h * w, c), x.dtype).at[nn, _flat(indices), cc].add(_flat(x), mode="drop")
    return jnp.reshape(y, (n, h, w, c))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _max_unpool2d(x, indices, output_size):
    return _max_unpool2d_fwd(x, indices, output_size)[0]


def _max_unpool2d_fwd(x, indices, output_size):
    # One segment-sum over (image, channel, position) rows; the reference scatters in place.
    h, w = output_size
    n, _, _, c = x.shape
    idx = _flat(indices)
    ok = (idx >= 0) & (idx < h * w)
    seg = jnp.where(ok, (jnp.arange(n)[:, None, None] * (h * w) + idx) * c + jnp.arange(c), n * h * w * c)
    y = jax.ops.segment_sum(jnp.ravel(_flat(x)), jnp.ravel(seg), num_segments=n * h * w * c + 1)[:-1]
    return jnp.reshape(y, (n, h, w, c)), indices


def _max_unpool2d_bwd(output_size, indices, dy):
    """dx[n, i, j, c] = dy[n, indices[n,i,j,c] // W, indices[n,i,j,c] % W, c] (0 for a dropped index).

    Residual: the indices, integer (N, Ho, Wo, C).  dy: (N, H, W, C); dx: (N, Ho, Wo, C);
    the integer indices get no cotangent (None).
    """
    n, h, w, c = dy.shape
    dx = jnp.take_along_axis(jnp.reshape(dy, (n, h * w, c)), _flat(indices), axis=1, mode="fill", fill_value=0)
    return jnp.reshape(dx, indices.shape), None


_max_unpool2d.defvjp(_max_unpool2d_fwd, _max_unpool2d_bwd)


def max_unpool2d_manual(x, indices, *, output_size):
    """Manual twin of :func:`max_unpool2d`. x, indices: (N, Ho, Wo, C) -> (N, H, W, C)."""
    return _max_unpool2d(x, indices, _check_unpool(x, indices, output_size))


def _sample_unpool(key, d, dt):
    """x normal (N, Ho, Wo, C); indices: a random position inside each (window x window, stride)
    window of the (H, W) = d["out"] input, so overlapping windows may share one (values add)."""
    k = S.keys(key, 3)
    n, ho, wo, c = d["x"]
    kw_, st = d["window"], d["stride"]
    r = S.randint(k[1], (n, ho, wo, c), 0, kw_)
    q = S.randint(k[2], (n, ho, wo, c), 0, kw_)
    rows = np.arange(ho)[None, :, None, None] * st + r
    cols = np.arange(wo)[None, None, :, None] * st + q
    return S.normal(k[0], d["x"], dt), (rows * d["out"][1] + cols).astype(np.int32)


def _max_unpool2d_oracle(x, indices, *, output_size):
    """NumPy oracle: a loop over every input entry adding it at its recorded position, float64."""
    h, w = O.pair(output_size)
    n, ho, wo, c = x.shape
    y = np.zeros((n, h * w, c))
    for b in range(n):
        for i in range(ho):
            for j in range(wo):
                for ch in range(c):
                    p = int(indices[b, i, j, ch])
                    if 0 <= p < h * w:
                        y[b, p, ch] += x[b, i, j, ch]
    return y.reshape(n, h, w, c)


def _unpool_oracle_cases():
    def make(shape, window, stride, out, bad=False):
        def f(r):
            n, ho, wo, c = shape
            rows = np.arange(ho)[None, :, None, None] * stride + r.integers(0, window, shape)
            cols = np.arange(wo)[None, None, :, None] * stride + r.integers(0, window, shape)
            idx = (rows * out[1] + cols).astype(np.int64)
            if bad:
                idx[0, 0, 0, 0] = out[0] * out[1]          # out of range: dropped
            return r.standard_normal(shape), idx
        return f
    return O.drawn("max_unpool2d",
                   ("x=2x2x3x2 window=2 out=4x6", make((2, 2, 3, 2), 2, 2, (4, 6)), {"output_size": (4, 6)}),
                   ("x=1x3x3x2 window=3 stride=2 out=7x7 (shared winners)", make((1, 3, 3, 2), 3, 2, (7, 7)),
                    {"output_size": 7}),
                   ("x=1x2x2x1 out=5x4 one index out of range", make((1, 2, 2, 1), 2, 2, (5, 4), bad=True),
                    {"output_size": (5, 4)}))


register(OpSpec("max_unpool2d", max_unpool2d, max_unpool2d_manual, _sample_unpool,
                (case({"x": (2, 3, 3, 2), "window": 2, "stride": 2, "out": (6, 6)}, output_size=(6, 6)),
                 case({"x": (1, 3, 3, 2), "window": 3, "stride": 2, "out": (7, 7)}, output_size=7)),
                backward=_max_unpool2d_bwd, oracle=_max_unpool2d_oracle, oracle_cases=_unpool_oracle_cases,
                note="indices: a random position in each pooling window (overlapping windows may share one: "
                     "values add); integer indices not differentiated"))
