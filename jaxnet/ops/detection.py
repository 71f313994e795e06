"""Detection and segmentation ops: RoI Align, RoI pooling, smooth L1, per-pixel cross-entropy.
Reference forwards, manual ops, NumPy oracles, audit registrations.

Boxes are (K, 4) ``(x1, y1, x2, y2)`` in input-image pixels, ``box_batch_index`` (K,)
integer names each box's image, and ``spatial_scale`` maps image pixels to feature
pixels (1/16 for a stride-16 backbone), as ``torchvision.ops.roi_align`` / ``roi_pool``
with their boxes given as (K, 5) ``(index, x1, y1, x2, y2)``.

- ``roi_align``: torchvision's algorithm (``aligned=True`` shifts by half a pixel,
  Detectron2's default; ``aligned=False`` is the original Mask R-CNN, with a box at least
  1 pixel wide) with a fixed ``sampling_ratio`` (>= 1: the adaptive ``<= 0`` mode
  gives a data-dependent number of samples, which does not fit a static shape).  Each
  output bin is the mean of ``sampling_ratio²`` bilinear samples; a sample beyond one
  pixel outside the map is 0.  The sample grid is separable, so the manual op writes
  the bin means as two weight matrices per box, ``A_y`` (K, ph, H) and ``A_x`` (K, pw, W):
  ``y[k] = A_y[k] f[b_k] A_x[k]ᵀ``.  Hand backward: ``df[b_k] += A_y[k]ᵀ dy[k] A_x[k]``,
  every sample's gradient routed to its four neighbours with its bilinear weights
  (the reference gathers the four neighbours of every sample instead).
- ``roi_pool``: torchvision's (Fast R-CNN) quantised bins: box corners rounded, bin
  ``p`` spanning rows ``floor(p·h/ph) .. ceil((p+1)·h/ph)`` of the box, each bin's max
  (0 for an empty bin).  Hand backward: dy to each bin's recorded argmax (the first
  maximum in row-major order, torchvision's rule).
- Neither differentiates the boxes (torchvision neither): both paths stop their gradient,
  and the audit differentiates the features only.
- ``smooth_l1_loss(pred, target, beta=1)``: PyTorch's ``smooth_l1_loss`` (mean over every
  element): ``0.5 d²/β`` for ``|d| < β``, ``|d| - 0.5β`` otherwise; β = 0 is the L1 loss.
  Hand backward: ``clip(d/β, -1, 1) / n`` (``sign(d) / n`` at β = 0, slope 0 at d = 0).
- ``pixel_cross_entropy(logits, labels, class_weights=None, ignore_index=-1)``: softmax
  cross-entropy per pixel, averaged as PyTorch's ``CrossEntropyLoss(weight=w,
  ignore_index=i)``: ``Σ w[y] l / Σ w[y]`` over the pixels whose label is not
  ``ignore_index``.  A label outside ``[0, C)`` that is not ``ignore_index`` makes the
  loss NaN (as the classification losses); every pixel ignored gives NaN (0 / 0, as
  PyTorch).  Hand backward: ``dlogits = w[y] (softmax - onehot(y)) / Σ w[y]``,
  ``dw[c] = Σ_{y=c} (l - L) / Σ w[y]``.

Reverse mode only (``custom_vjp``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number, check_rank, check_same_shape, is_int
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._geometry import as_pair
from jaxnet.ops._registry import OpSpec, case, register


def _features_only(args, case):
    """Float32 extremes: the features scaled (both signs, 1e2, 1e4, 1e-4); boxes kept in the image."""
    from jaxnet.gradcheck.extremes import scaled
    return scaled(args, case, only=(0,))


# ------------------------------------------------------------------------------------------- RoI ops

def _check_rois(op, features, boxes, box_batch_index, output_size, spatial_scale):
    check_rank(op, "features", features, 4, "(N, H, W, C)")
    check_rank(op, "boxes", boxes, 2, "(K, 4) x1, y1, x2, y2")
    if boxes.shape[1] != 4:
        raise ValueError(f"{op}: `boxes` must have shape (K, 4) (x1, y1, x2, y2), got {tuple(boxes.shape)}")
    check_rank(op, "box_batch_index", box_batch_index, 1, "(K,)")
    if box_batch_index.shape[0] != boxes.shape[0]:
        raise ValueError(f"{op}: `box_batch_index` must have one entry per box, got boxes {tuple(boxes.shape)} "
                         f"and box_batch_index {tuple(box_batch_index.shape)}")
    if box_batch_index.dtype.kind not in "iu":
        raise ValueError(f"{op}: `box_batch_index` must be integers, got dtype {box_batch_index.dtype}")
    if 0 in features.shape[1:3]:
        raise ValueError(f"{op}: `features` {tuple(features.shape)} has an empty spatial axis")
    size = as_pair(op, "output_size", output_size)
    scale = check_number(op, "spatial_scale", spatial_scale, low=0, low_open=True)
    return size, scale


def _check_bool(op, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{op}: `{name}` must be a bool, got {value!r}")
    return bool(value)


def _align_axis(start, extent, bins, grid, n):
    """One axis of RoI Align's samples: start, extent (K,) in feature pixels.

    Returns (lo, hi, frac, valid), each (K, bins, grid): the two neighbouring rows, the
    upper one's weight and whether the sample is inside [-1, n] (torchvision's rule:
    clamped at 0; at or past the last row both neighbours are the last row).
    """
    step = extent / bins
    offs = jnp.arange(bins)[:, None] + (jnp.arange(grid)[None, :] + 0.5) / grid
    pos = start[:, None, None] + offs[None] * step[:, None, None]
    valid = (pos >= -1.0) & (pos <= n)
    pos = jnp.maximum(pos, 0.0)
    lo = jnp.floor(pos).astype(jnp.int32)
    last = lo >= n - 1
    lo = jnp.where(last, n - 1, lo)
    hi = jnp.where(last, n - 1, lo + 1)
    frac = jnp.where(last, 0.0, pos - lo).astype(start.dtype)
    return lo, hi, frac, valid


def _align_geometry(boxes, h, w, size, scale, ratio, aligned):
    b = jax.lax.stop_gradient(boxes) * scale - (0.5 if aligned else 0.0)
    ext_w, ext_h = b[:, 2] - b[:, 0], b[:, 3] - b[:, 1]
    if not aligned:
        ext_w, ext_h = jnp.maximum(ext_w, 1.0), jnp.maximum(ext_h, 1.0)
    return (_align_axis(b[:, 1], ext_h, size[0], ratio, h), _align_axis(b[:, 0], ext_w, size[1], ratio, w))


def _check_align(features, boxes, box_batch_index, output_size, spatial_scale, sampling_ratio, aligned):
    size, scale = _check_rois("roi_align", features, boxes, box_batch_index, output_size, spatial_scale)
    if not is_int(sampling_ratio) or sampling_ratio < 1:
        raise ValueError(f"roi_align: `sampling_ratio` must be a positive int (the adaptive mode <= 0 is not "
                         f"supported), got {sampling_ratio!r}")
    return size, scale, int(sampling_ratio), _check_bool("roi_align", "aligned", aligned)


def roi_align(features, boxes, box_batch_index, *, output_size=7, spatial_scale=1.0, sampling_ratio=2,
              aligned=True):
    """RoI Align: each box's (ph, pw) bins, each the mean of sampling_ratio² bilinear samples.

    features: (N, H, W, C) float.  boxes: (K, 4) float ``(x1, y1, x2, y2)`` in image pixels
    (times ``spatial_scale`` = feature pixels).  box_batch_index: (K,) int, each box's image.
    output_size: int or (ph, pw).  sampling_ratio: positive int, samples per bin and axis.
    aligned: True shifts the box by -0.5 pixel (torchvision's ``aligned=True``).
    Returns (K, ph, pw, C), the features' dtype.  Boxes are not differentiated.
    """
    size, scale, ratio, aligned = _check_align(features, boxes, box_batch_index, output_size, spatial_scale,
                                               sampling_ratio, aligned)
    _, h, w, _ = features.shape
    (ylo, yhi, ly, vy), (xlo, xhi, lx, vx) = _align_geometry(boxes, h, w, size, scale, ratio, aligned)
    b = box_batch_index[:, None, None, None, None]

    def at(yi, xi):                # (K, ph, g, pw, g, C)
        return features[b, yi[:, :, :, None, None], xi[:, None, None, :, :]]

    ly, lx = ly.astype(features.dtype), lx.astype(features.dtype)
    wy, wx = ly[:, :, :, None, None, None], lx[:, None, None, :, :, None]
    val = ((1 - wy) * ((1 - wx) * at(ylo, xlo) + wx * at(ylo, xhi))
           + wy * ((1 - wx) * at(yhi, xlo) + wx * at(yhi, xhi)))
    inside = (vy[:, :, :, None, None] & vx[:, None, None, :, :])[..., None]
    return jnp.mean(jnp.where(inside, val, 0), axis=(2, 4))


def _axis_matrix(lo, hi, frac, valid, n):
    """(K, bins, n): the mean over a bin's samples of their two-neighbour weights (0 outside)."""
    rows = jnp.arange(n)
    f = jnp.where(valid, frac, 0)[..., None]
    v = valid[..., None]
    m = jnp.where(v & (lo[..., None] == rows), 1 - f, 0) + jnp.where(v & (hi[..., None] == rows), f, 0)
    return jnp.mean(m, axis=2)


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _roi_align(features, ay, ax, box_batch_index, n_images):
    # one axis at a time (a three-operand einsum lets XLA pick a poor contraction order)
    return jnp.einsum("kph,khqc->kpqc", ay, jnp.einsum("kqw,khwc->khqc", ax, features[box_batch_index]))


def _roi_align_fwd(features, ay, ax, box_batch_index, n_images):
    return _roi_align(features, ay, ax, box_batch_index, n_images), (ay, ax, box_batch_index)


def _roi_align_bwd(n_images, res, dy):
    """df[b_k] += A_y[k]ᵀ dy[k] A_x[k]: each sample's gradient to its four neighbours, bilinear weights.

    Residuals: A_y (K, ph, H) and A_x (K, pw, W), each bin's mean over its samples of their
    two-neighbour weights per axis (0 for samples outside the map), and the boxes' image
    indices (K,); the batch size N is static.  dy: (K, ph, pw, C); returns dfeatures
    (N, H, W, C) (boxes of one image add up), zeros for A_y, A_x (the boxes are not
    differentiated) and None for the integer indices.
    """
    ay, ax, b = res
    dk = jnp.einsum("kqw,khqc->khwc", ax, jnp.einsum("kph,kpqc->khqc", ay, dy))
    df = jnp.zeros((n_images,) + dk.shape[1:], dk.dtype).at[b].add(dk)
    return df, jnp.zeros_like(ay), jnp.zeros_like(ax), None


_roi_align.defvjp(_roi_align_fwd, _roi_align_bwd)


def roi_align_manual(features, boxes, box_batch_index, *, output_size=7, spatial_scale=1.0, sampling_ratio=2,
                     aligned=True):
    """Manual twin of :func:`roi_align`. features (N, H, W, C), boxes (K, 4) -> (K, ph, pw, C)."""
    size, scale, ratio, aligned = _check_align(features, boxes, box_batch_index, output_size, spatial_scale,
                                               sampling_ratio, aligned)
    _, h, w, _ = features.shape
    gy, gx = _align_geometry(boxes, h, w, size, scale, ratio, aligned)
    ay = _axis_matrix(*gy, h).astype(features.dtype)
    ax = _axis_matrix(*gx, w).astype(features.dtype)
    return _roi_align(features, ay, ax, box_batch_index, features.shape[0])


def _bilinear_oracle(f, y, x):
    """torchvision's ``bilinear_interpolate`` on one (H, W, C) map, float64."""
    h, w = f.shape[:2]
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return np.zeros(f.shape[2])
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    return (1 - ly) * (1 - lx) * f[y0, x0] + (1 - ly) * lx * f[y0, x1] + ly * (1 - lx) * f[y1, x0] + ly * lx * f[y1, x1]


def _roi_align_oracle(features, boxes, box_batch_index, *, output_size=7, spatial_scale=1.0, sampling_ratio=2,
                      aligned=True):
    """NumPy oracle: torchvision's ``roi_align`` CPU kernel as loops over boxes, bins and samples."""
    ph, pw = O.pair(output_size)
    g = sampling_ratio
    off = 0.5 if aligned else 0.0
    out = np.zeros((boxes.shape[0], ph, pw, features.shape[3]))
    for k in range(boxes.shape[0]):
        f = features[int(box_batch_index[k])]
        x1, y1, x2, y2 = (float(v) * spatial_scale - off for v in boxes[k])
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bh, bw = rh / ph, rw / pw
        for p in range(ph):
            for q in range(pw):
                acc = np.zeros(features.shape[3])
                for iy in range(g):
                    yy = y1 + p * bh + (iy + 0.5) * bh / g
                    for ix in range(g):
                        acc += _bilinear_oracle(f, yy, x1 + q * bw + (ix + 0.5) * bw / g)
                out[k, p, q] = acc / (g * g)
    return out


def _random_boxes(r_uniform, k, h, w, spread=0.25):
    """(K, 4) boxes around the (H, W) image, a few reaching past its border (NumPy)."""
    cx, cy = r_uniform(-spread * w, (1 + spread) * w, k), r_uniform(-spread * h, (1 + spread) * h, k)
    bw, bh = r_uniform(0.3, 0.8 * w, k), r_uniform(0.3, 0.8 * h, k)
    return np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)


def _sample_rois(draw):
    def sample(key, d, dt):
        k = S.keys(key, 3)
        n, h, w, _ = d["x"]
        gen = S.generator(k[1])
        img = 1.0 / d.get("scale", 1.0)
        boxes = _random_boxes(lambda lo, hi, m: gen.uniform(lo, hi, m), d["boxes"], h * img, w * img)
        return draw(k[0], d["x"], dt), boxes.astype(dt), S.randint(k[2], (d["boxes"],), 0, n)
    return sample


def _roi_oracle_cases(name, extra):
    def make(shape, k, scale=1.0):
        def f(r):
            n, h, w, _ = shape
            boxes = _random_boxes(lambda lo, hi, m: r.uniform(lo, hi, m), k, h / scale, w / scale)
            return r.standard_normal(shape), boxes, r.integers(0, n, k)
        return f
    return O.drawn(name, ("features=2x6x7x2 boxes=3 output_size=2", make((2, 6, 7, 2), 3), {"output_size": 2}),
                   ("features=1x5x5x1 boxes=2 output_size=(3,2) spatial_scale=0.5", make((1, 5, 5, 1), 2, 0.5),
                    {"output_size": (3, 2), "spatial_scale": 0.5}),
                   *[(label, make((2, 4, 5, 2), 3), kw) for label, kw in extra])


_ROI_NOTE = "boxes not differentiated (stop_gradient on both paths, as torchvision)"
_ROI_REASON = "boxes: the op does not differentiate its sampling grid (as torchvision); box_batch_index is integer"

register(OpSpec("roi_align", roi_align, roi_align_manual, _sample_rois(S.normal),
                (case({"x": (2, 6, 6, 2), "boxes": 3}, output_size=2),
                 case({"x": (1, 5, 6, 1), "boxes": 2, "scale": 0.5}, output_size=(2, 3), spatial_scale=0.5,
                      sampling_ratio=1, aligned=False)),
                backward=_roi_align_bwd, argnums=(0,), argnums_reason=_ROI_REASON, extremes=_features_only,
                oracle=_roi_align_oracle,
                oracle_cases=lambda: _roi_oracle_cases("roi_align", [
                    ("features=2x4x5x2 boxes=3 aligned=False sampling_ratio=3",
                     {"output_size": 2, "aligned": False, "sampling_ratio": 3})]),
                note=_ROI_NOTE + "; sampling_ratio fixed (>= 1)"))


def _round_half_away(v):
    return jnp.sign(v) * jnp.floor(jnp.abs(v) + 0.5)


def _pool_axis(start, end, bins, n):
    """Membership (K, bins, n) of RoI pooling's quantised bins along one axis, and (K, bins) emptiness."""
    extent = jnp.maximum(end - start + 1, 1)[:, None]
    p = jnp.arange(bins, dtype=jnp.int32)
    # floor(p·extent/bins) and ceil((p+1)·extent/bins) in integers (exact, unlike float bin sizes)
    lo = jnp.clip(p * extent // bins + start[:, None], 0, n)
    hi = jnp.clip(-(-(p + 1) * extent // bins) + start[:, None], 0, n)
    rows = jnp.arange(n)
    return (rows >= lo[..., None]) & (rows < hi[..., None]), hi <= lo


def _pool_geometry(boxes, h, w, size, scale):
    b = _round_half_away(jax.lax.stop_gradient(boxes) * scale).astype(jnp.int32)
    my, ey = _pool_axis(b[:, 1], b[:, 3], size[0], h)
    mx, ex = _pool_axis(b[:, 0], b[:, 2], size[1], w)
    return my, mx, ey[:, :, None] | ex[:, None, :]


def roi_pool(features, boxes, box_batch_index, *, output_size=7, spatial_scale=1.0):
    """RoI max pooling (Fast R-CNN): the max of each quantised bin of each box, 0 for an empty bin.

    features: (N, H, W, C) float.  boxes: (K, 4) float ``(x1, y1, x2, y2)`` in image pixels
    (corners rounded after ``spatial_scale``).  box_batch_index: (K,) int.  output_size:
    int or (ph, pw).  Returns (K, ph, pw, C), the features' dtype.  Boxes are not differentiated.
    """
    size, scale = _check_rois("roi_pool", features, boxes, box_batch_index, output_size, spatial_scale)
    _, h, w, _ = features.shape
    my, mx, empty = _pool_geometry(boxes, h, w, size, scale)
    fk = features[box_batch_index]                                                   # (K, H, W, C)
    # each bin's maximum taken at its first winner in row-major order (torchvision's), so autodiff
    # routes a tie's gradient to that one entry, as the manual backward does (a `max` would split it)
    idx = _roi_pool_argmax(jax.lax.stop_gradient(fk), my, mx, empty)                 # (K, ph, pw, C)
    k, _, _, c = fk.shape
    out = jnp.take_along_axis(jnp.reshape(fk, (k, h * w, c)), jnp.reshape(jnp.maximum(idx, 0), (k, -1, c)), axis=1)
    return jnp.where(idx >= 0, jnp.reshape(out, idx.shape), 0)


def _roi_pool_argmax(fk, my, mx, empty):
    """Each bin's flat argmax h * W + w in its box's image (-1 for an empty bin): the first
    maximum in row-major order (argmax along W per row, then along H).  fk: (K, H, W, C)."""
    w = fk.shape[2]
    masked = jnp.where(mx[:, None, :, :, None], fk[:, :, None], -jnp.inf)           # (K, H, pw, W, C)
    col = jnp.argmax(masked, axis=3)                                                 # (K, H, pw, C)
    rowmax = jnp.max(masked, axis=3)
    cand = jnp.where(my[:, :, :, None, None], rowmax[:, None], -jnp.inf)             # (K, ph, H, pw, C)
    row = jnp.argmax(cand, axis=2)                                                   # (K, ph, pw, C)
    ph = row.shape[1]
    colsel = jnp.take_along_axis(jnp.broadcast_to(col[:, None], (col.shape[0], ph) + col.shape[1:]),
                                 row[:, :, None], axis=2)[:, :, 0]
    return jnp.where(empty[..., None], -1, row * w + colsel).astype(jnp.int32)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _roi_pool(features, idx, box_batch_index, shape):
    return _roi_pool_fwd(features, idx, box_batch_index, shape)[0]


def _roi_pool_fwd(features, idx, box_batch_index, shape):
    # The recorded argmax gathered (0 for an empty bin).
    _, h, w, c = shape
    k = idx.shape[0]
    fk = jnp.reshape(features[box_batch_index], (k, h * w, c))
    out = jnp.take_along_axis(fk, jnp.reshape(jnp.maximum(idx, 0), (k, -1, c)), axis=1)
    return jnp.where(idx >= 0, jnp.reshape(out, idx.shape), 0), (idx, box_batch_index)


def _roi_pool_bwd(shape, res, dy):
    """df[b_k, argmax of bin (p, q)] += dy[k, p, q] per channel; nothing for an empty bin.

    Residuals: the recorded argmax, flat h * W + w per (K, ph, pw, C) (-1 for an empty bin)
    and the boxes' image indices (K,); the features' shape (N, H, W, C) is static.
    dy: (K, ph, pw, C); returns dfeatures (N, H, W, C) (boxes of one image add up) and None
    for the two integer arrays.
    """
    idx, b = res
    n, h, w, c = shape
    k = idx.shape[0]
    flat = jnp.reshape(jnp.where(idx >= 0, b[:, None, None, None] * (h * w) + idx, n * h * w), (k, -1, c))
    df = jnp.zeros((n * h * w, c), dy.dtype).at[flat, jnp.arange(c)].add(jnp.reshape(dy, (k, -1, c)), mode="drop")
    return jnp.reshape(df, shape), None, None


_roi_pool.defvjp(_roi_pool_fwd, _roi_pool_bwd)


def roi_pool_manual(features, boxes, box_batch_index, *, output_size=7, spatial_scale=1.0):
    """Manual twin of :func:`roi_pool`. features (N, H, W, C), boxes (K, 4) -> (K, ph, pw, C)."""
    size, scale = _check_rois("roi_pool", features, boxes, box_batch_index, output_size, spatial_scale)
    _, h, w, _ = features.shape
    my, mx, empty = _pool_geometry(boxes, h, w, size, scale)
    idx = _roi_pool_argmax(jax.lax.stop_gradient(features)[box_batch_index], my, mx, empty)
    return _roi_pool(features, idx, box_batch_index, tuple(features.shape))


def _roi_pool_oracle(features, boxes, box_batch_index, *, output_size=7, spatial_scale=1.0):
    """NumPy oracle: torchvision's ``roi_pool`` CPU kernel as loops over boxes and bins, float64."""
    ph, pw = O.pair(output_size)
    n, h, w, c = features.shape
    out = np.zeros((boxes.shape[0], ph, pw, c))

    def rnd(v):
        return int(np.sign(v) * np.floor(abs(v) + 0.5))

    for k in range(boxes.shape[0]):
        f = features[int(box_batch_index[k])]
        x1, y1, x2, y2 = (rnd(float(v) * spatial_scale) for v in boxes[k])
        rh, rw = max(y2 - y1 + 1, 1), max(x2 - x1 + 1, 1)
        bh, bw = rh / ph, rw / pw
        for p in range(ph):
            hs = min(max(int(np.floor(p * bh)) + y1, 0), h)
            he = min(max(int(np.ceil((p + 1) * bh)) + y1, 0), h)
            for q in range(pw):
                ws = min(max(int(np.floor(q * bw)) + x1, 0), w)
                we = min(max(int(np.ceil((q + 1) * bw)) + x1, 0), w)
                if he > hs and we > ws:
                    out[k, p, q] = f[hs:he, ws:we].max(axis=(0, 1))
    return out


register(OpSpec("roi_pool", roi_pool, roi_pool_manual, _sample_rois(S.distinct),
                (case({"x": (2, 6, 6, 2), "boxes": 3}, output_size=2),
                 case({"x": (1, 6, 5, 1), "boxes": 3, "scale": 0.5}, output_size=(3, 2), spatial_scale=0.5)),
                backward=_roi_pool_bwd, argnums=(0,), argnums_reason=_ROI_REASON, extremes=_features_only,
                oracle=_roi_pool_oracle,
                oracle_cases=lambda: _roi_oracle_cases("roi_pool", [
                    ("features=2x4x5x2 boxes=3 output_size=4 (empty bins)", {"output_size": 4})]),
                note=_ROI_NOTE + "; features distinct (no tie in a bin); empty bins are 0"))


# ------------------------------------------------------------------------------------------ smooth L1

def _check_smooth_l1(pred, target, beta):
    check_same_shape("smooth_l1_loss", "pred", pred, "target", target)
    if pred.size == 0:
        raise ValueError(f"smooth_l1_loss: `pred` must not be empty, got shape {tuple(pred.shape)}")
    return check_number("smooth_l1_loss", "beta", beta, low=0)


def smooth_l1_loss(pred, target, *, beta=1.0):
    """Smooth L1 (Huber / β) loss, the mean over every element (PyTorch's ``smooth_l1_loss``).

    pred, target: the same shape, float.  beta: a number >= 0 (0 gives the L1 loss).
    Per element ``d = pred - target``: ``0.5 d² / β`` where ``|d| < β``, else ``|d| - 0.5 β``.
    Returns a scalar of the inputs' dtype.
    """
    beta = _check_smooth_l1(pred, target, beta)
    d = pred - target
    a = jnp.where(d == 0, 0, jnp.abs(d))                 # slope 0 at d = 0 (matters for beta = 0)
    if beta == 0:
        return jnp.mean(a)
    return jnp.mean(jnp.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _smooth_l1(pred, target, beta):
    return _smooth_l1_fwd(pred, target, beta)[0]


def _smooth_l1_fwd(pred, target, beta):
    d = pred - target
    a = jnp.abs(d)
    per = a if beta == 0 else jnp.where(a < beta, 0.5 * d * d / beta, a - 0.5 * beta)
    return jnp.sum(per) / d.size, d


def _smooth_l1_loss_bwd(beta, d, g):
    """dpred = g · clip(d / β, -1, 1) / n = -dtarget (β = 0: g · sign(d) / n), d = pred - target.

    Residual: d = pred - target (any shape, n elements).  g: the scalar cotangent.
    """
    slope = jnp.sign(d) if beta == 0 else jnp.clip(d / beta, -1.0, 1.0)
    dp = g * slope / d.size
    return dp, -dp


_smooth_l1.defvjp(_smooth_l1_fwd, _smooth_l1_loss_bwd)


def smooth_l1_loss_manual(pred, target, *, beta=1.0):
    """Manual twin of :func:`smooth_l1_loss`. pred, target: the same shape -> a scalar."""
    return _smooth_l1(pred, target, _check_smooth_l1(pred, target, beta))


def _sample_smooth_l1(key, d, dt):
    """pred - target kept KINK_GAP * 10 away from 0 and from ±beta (the kinks of f'')."""
    k = S.keys(key, 2)
    beta = d.get("beta", 1.0)
    target = S.normal(k[1], d["x"], np.float64)
    diff = 2.0 * S.normal(k[0], d["x"], np.float64)
    gap = 10 * S.KINK_GAP
    sign, a = np.where(diff >= 0, 1.0, -1.0), np.abs(diff)
    for kink in (0.0, beta):
        a = np.where(np.abs(a - kink) < gap, np.where(a < kink, kink - gap, kink + gap), a)
    return (target + sign * a).astype(dt), target.astype(dt)


def _smooth_l1_oracle(pred, target, *, beta=1.0):
    """NumPy oracle: the mean of the elementwise piecewise formula, float64."""
    d = np.abs(pred - target)
    per = d if beta == 0 else np.where(d < beta, 0.5 * d ** 2 / beta, d - 0.5 * beta)
    return np.float64(per.mean())


register(OpSpec("smooth_l1_loss", smooth_l1_loss, smooth_l1_loss_manual, _sample_smooth_l1,
                (case({"x": (4, 4)}), case({"x": (3, 2, 2), "beta": 0.5}, beta=0.5),
                 case({"x": (1, 5), "beta": 0.0}, beta=0.0)),
                backward=_smooth_l1_loss_bwd, oracle=_smooth_l1_oracle,
                oracle_cases=lambda: O.drawn("smooth_l1_loss",
                                             ("x=4x4", lambda r: (2 * r.standard_normal((4, 4)),
                                                                  r.standard_normal((4, 4)))),
                                             ("x=3x2 beta=0.3", lambda r: (r.standard_normal((3, 2)),
                                                                           r.standard_normal((3, 2))),
                                              {"beta": 0.3}),
                                             ("x=5 beta=0", lambda r: (r.standard_normal(5), r.standard_normal(5)),
                                              {"beta": 0.0})),
                note="mean over every element (PyTorch); |pred - target| kept away from 0 and beta"))


# ------------------------------------------------------------------------------- pixel cross-entropy

def _check_pixel_ce(logits, labels, class_weights, ignore_index):
    op = "pixel_cross_entropy"
    check_rank(op, "logits", logits, 4, "(N, H, W, C)")
    check_rank(op, "labels", labels, 3, "(N, H, W)")
    if tuple(labels.shape) != tuple(logits.shape[:3]):
        raise ValueError(f"{op}: `labels` must have shape (N, H, W) = {tuple(logits.shape[:3])}, "
                         f"got {tuple(labels.shape)} (logits {tuple(logits.shape)})")
    if labels.dtype.kind not in "iu":
        raise ValueError(f"{op}: `labels` must be integer class indices, got dtype {labels.dtype}")
    if class_weights is not None and tuple(class_weights.shape) != (logits.shape[3],):
        raise ValueError(f"{op}: `class_weights` must have shape (C,) = ({logits.shape[3]},), "
                         f"got {tuple(class_weights.shape)}")
    if not is_int(ignore_index):
        raise ValueError(f"{op}: `ignore_index` must be an int, got {ignore_index!r}")
    return int(ignore_index)


def _pixel_terms(logits, labels, ignore_index):
    """Flattened pieces: z (P, C) with the rows of kept out-of-range labels made NaN (their loss
    and gradient row NaN on both paths), y (P,) clamped into [0, C), kept (P,) (not ignored)."""
    c = logits.shape[3]
    z = jnp.reshape(logits, (-1, c))
    y = jnp.reshape(labels, (-1,))
    kept = y != ignore_index
    valid = (y >= 0) & (y < c)
    z = z * jnp.where(kept & ~valid, jnp.nan, 1).astype(z.dtype)[:, None]
    return z, jnp.where(valid, y, 0), kept


def pixel_cross_entropy(logits, labels, class_weights=None, *, ignore_index=-1):
    """Per-pixel softmax cross-entropy, averaged as PyTorch's ``CrossEntropyLoss(weight, ignore_index)``.

    logits: (N, H, W, C) float.  labels: (N, H, W) int.  class_weights: None or (C,) float
    (differentiated).  ignore_index: an int; those pixels count for nothing.  Returns the
    scalar ``Σ w[y] l / Σ w[y]`` over the kept pixels, l = -log softmax(logits)[y]; NaN if a
    kept label is outside [0, C) or every pixel is ignored.
    """
    ignore_index = _check_pixel_ce(logits, labels, class_weights, ignore_index)
    z, y, kept = _pixel_terms(logits, labels, ignore_index)
    s = z - jnp.max(z, axis=1, keepdims=True)
    r = jnp.log1p(jnp.mean(jnp.expm1(s), axis=1)) - jnp.take_along_axis(s, y[:, None], axis=1)[:, 0]
    w = jnp.ones((z.shape[1],), z.dtype) if class_weights is None else class_weights
    wy = jnp.where(kept, w[y], 0)
    return np.log(z.shape[1]) + jnp.sum(jnp.where(kept, wy * r, 0)) / jnp.sum(wy)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _pixel_ce(logits, labels, weights, ignore_index):
    return _pixel_ce_fwd(logits, labels, weights, ignore_index)[0]


def _pixel_ce_fwd(logits, labels, weights, ignore_index):
    z, y, kept = _pixel_terms(logits, labels, ignore_index)
    c = z.shape[1]
    shifted = z - jnp.max(z, axis=1, keepdims=True)
    e = jnp.exp(shifted)
    # r = l - log C = log(mean exp(shifted)) - shifted[y], through log1p / expm1: near-uniform
    # logits give r ~ 1e-4 exactly, not as the difference of two numbers near log C
    r = jnp.log1p(jnp.sum(jnp.expm1(shifted), axis=1) / c) - jnp.take_along_axis(shifted, y[:, None], axis=1)[:, 0]
    wy = jnp.where(kept, weights[y], 0)
    total = jnp.sum(wy)
    mean_r = jnp.sum(jnp.where(kept, wy * r, 0)) / total
    p = e / jnp.sum(e, axis=1, keepdims=True)
    return np.log(c) + mean_r, (p, labels, y, kept, wy, r, mean_r, total)


def _pixel_cross_entropy_bwd(ignore_index, res, g):
    """dlogits = g·w[y]·(softmax - onehot(y)) / Σw[y] (0 at ignored pixels); dw[c] = g·Σ_{y=c}(l - L) / Σw[y].

    Residuals: softmax p (P, C) with P = N·H·W (NaN rows for kept out-of-range labels), the
    labels (N, H, W), the labels clamped into [0, C) (P,), the kept mask (P,), each pixel's
    weight w[y] (P,) (0 where ignored), its loss less log C, r = l - log C (P,), their weighted
    mean R = L - log C and Σw[y] (l - L = r - R, without cancelling two numbers near log C).
    Returns dlogits (N, H, W, C), None for the labels and dclass_weights (C,).
    """
    p, labels, y, kept, wy, r, mean_r, total = res
    c = p.shape[1]
    onehot = y[:, None] == jnp.arange(c)
    dz = jnp.where(kept[:, None], g * wy[:, None] * (p - onehot) / total, 0)
    dw = g * jnp.sum(jnp.where(kept[:, None] & onehot, (r - mean_r)[:, None], 0), axis=0) / total
    return jnp.reshape(dz, labels.shape + (c,)), None, dw


_pixel_ce.defvjp(_pixel_ce_fwd, _pixel_cross_entropy_bwd)


def pixel_cross_entropy_manual(logits, labels, class_weights=None, *, ignore_index=-1):
    """Manual twin of :func:`pixel_cross_entropy`. logits (N, H, W, C), labels (N, H, W) -> a scalar."""
    ignore_index = _check_pixel_ce(logits, labels, class_weights, ignore_index)
    w = jnp.ones((logits.shape[3],), logits.dtype) if class_weights is None else class_weights
    return _pixel_ce(logits, labels, w, ignore_index)


def _sample_pixel_ce(key, d, dt):
    """Logits 2·N(0, 1); labels in [0, C) with about a fifth set to the ignore index (at least one
    pixel kept); class weights uniform in [0.5, 2] when d["weights"]."""
    k = S.keys(key, 4)
    n, h, w, c = d["x"]
    ignore = d.get("ignore", -1)
    labels = S.randint(k[1], (n, h, w), 0, c)
    drop = S.uniform(k[2], (n, h, w), np.float64) < 0.2
    drop.flat[0] = False
    labels = np.where(drop, ignore, labels).astype(np.int32)
    weights = S.uniform(k[3], (c,), dt, 0.5, 2.0) if d.get("weights") else None
    return S.scaled_normal(2.0)(k[0], d["x"], dt), labels, weights


def _pixel_cross_entropy_oracle(logits, labels, class_weights=None, *, ignore_index=-1):
    """NumPy oracle: a loop over pixels, ``Σ w[y]·(-log softmax[y]) / Σ w[y]`` over kept pixels, float64."""
    n, h, w, c = logits.shape
    num = den = 0.0
    for i in range(n):
        for a in range(h):
            for b in range(w):
                y = int(labels[i, a, b])
                if y == ignore_index:
                    continue
                z = logits[i, a, b]
                m = z.max()
                nll = m + np.log(np.sum(np.exp(z - m))) - z[y]
                wy = 1.0 if class_weights is None else float(class_weights[y])
                num += wy * nll
                den += wy
    return np.float64(num / den)


def _pixel_ce_oracle_cases():
    def make(shape, weights, ignore=-1):
        def f(r):
            n, h, w, c = shape
            labels = r.integers(0, c, (n, h, w))
            labels[r.uniform(size=(n, h, w)) < 0.25] = ignore
            labels[0, 0, 0] = 0
            return 3 * r.standard_normal(shape), labels, (r.uniform(0.2, 3.0, c) if weights else None)
        return f
    return O.drawn("pixel_cross_entropy", ("logits=2x3x3x4 weights", make((2, 3, 3, 4), True)),
                   ("logits=1x2x4x3 no weights", make((1, 2, 4, 3), False)),
                   ("logits=1x3x2x5 weights ignore_index=255", make((1, 3, 2, 5), True, 255),
                    {"ignore_index": 255}))


register(OpSpec("pixel_cross_entropy", pixel_cross_entropy, pixel_cross_entropy_manual, _sample_pixel_ce,
                (case({"x": (2, 3, 3, 4), "weights": True}), case({"x": (1, 2, 3, 3), "ignore": 7}, ignore_index=7)),
                backward=_pixel_cross_entropy_bwd, extremes=_features_only, oracle=_pixel_cross_entropy_oracle,
                oracle_cases=_pixel_ce_oracle_cases,
                note="about 1/5 of the pixels ignored; weighted mean as PyTorch's CrossEntropyLoss"))
