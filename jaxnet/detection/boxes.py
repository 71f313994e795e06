"""Box utilities, all jittable: pairwise IoU, box encoding against anchors / grid cells, NMS.

Boxes are (x0, y0, x1, y1) in pixels (float), x1 >= x0 and y1 >= y0; a box's area is
(x1 - x0) * (y1 - y0), so a zero-size box has area 0 and IoU 0 with everything (itself included).

Shape checks raise a one-line ``ValueError`` naming the function at trace time. Value checks
(negative sizes, NaN) only run on concrete inputs -- under ``jit`` the values are unknown, and
the functions then compute garbage-in-garbage-out without raising.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["box_iou", "box_area", "encode_boxes", "decode_boxes", "grid_cells", "anchor_boxes", "nms",
           "nms_numpy", "box_iou_numpy"]


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _check_boxes(fn: str, name: str, b, min_rank: int = 1):
    if b.ndim < min_rank or b.shape[-1] != 4:
        raise ValueError(f"{fn}: {name} must have shape (..., 4) as (x0, y0, x1, y1), got {tuple(b.shape)}")
    if _is_concrete(b):
        v = np.asarray(b)
        if v.size and not np.all(np.isfinite(v)):
            raise ValueError(f"{fn}: {name} has NaN or inf coordinates")
        if v.size and (np.any(v[..., 2] < v[..., 0]) or np.any(v[..., 3] < v[..., 1])):
            raise ValueError(f"{fn}: {name} has negative sizes (x1 < x0 or y1 < y0); boxes are (x0, y0, x1, y1)")


def _check_threshold(fn: str, name: str, t):
    if isinstance(t, bool) or not isinstance(t, (int, float, np.floating, np.integer)) or not 0.0 <= float(t) <= 1.0:
        raise ValueError(f"{fn}: {name} must be a number in [0, 1], got {t!r}")
    return float(t)


def box_area(boxes):
    """Area of (..., 4) boxes -> (...). Same dtype."""
    boxes = jnp.asarray(boxes)
    _check_boxes("box_area", "boxes", boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def _iou(a, b):
    lt = jnp.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = jnp.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = jnp.clip(rb - lt, 0)
    inter = wh[..., 0] * wh[..., 1]
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)


def box_iou(a, b):
    """Pairwise IoU: a (..., N, 4), b (..., M, 4) (same leading dims) -> (..., N, M), float.

    Pairs whose union is empty (two zero-area boxes) have IoU 0."""
    a, b = jnp.asarray(a), jnp.asarray(b)
    _check_boxes("box_iou", "a", a, 2)
    _check_boxes("box_iou", "b", b, 2)
    if a.shape[:-2] != b.shape[:-2]:
        raise ValueError(f"box_iou: a {tuple(a.shape)} and b {tuple(b.shape)} must share leading dims")
    dtype = jnp.result_type(a.dtype, b.dtype, jnp.float32)
    return _iou(a.astype(dtype), b.astype(dtype))


def _center_size(b):
    w, h = b[..., 2] - b[..., 0], b[..., 3] - b[..., 1]
    return b[..., 0] + 0.5 * w, b[..., 1] + 0.5 * h, w, h


def encode_boxes(boxes, anchors, weights=(1.0, 1.0, 1.0, 1.0)):
    """Regression targets of ``boxes`` against ``anchors`` (both (..., 4), broadcastable) -> (..., 4):
    (wx (cx - acx) / aw, wy (cy - acy) / ah, ww log(w / aw), wh log(h / ah)), the standard
    R-CNN parameterisation. Anchors (and boxes) need positive sizes (log of 0 is -inf)."""
    boxes, anchors = jnp.asarray(boxes), jnp.asarray(anchors)
    _check_boxes("encode_boxes", "boxes", boxes)
    _check_boxes("encode_boxes", "anchors", anchors)
    _check_weights("encode_boxes", weights)
    cx, cy, w, h = _center_size(boxes)
    acx, acy, aw, ah = _center_size(anchors)
    wx, wy, ww, wh = weights
    return jnp.stack([wx * (cx - acx) / aw, wy * (cy - acy) / ah, ww * jnp.log(w / aw), wh * jnp.log(h / ah)], -1)


def decode_boxes(deltas, anchors, weights=(1.0, 1.0, 1.0, 1.0), max_log_scale=float(np.log(1000.0 / 16))):
    """The inverse of ``encode_boxes``: deltas (..., 4) against anchors (..., 4) -> boxes (..., 4).
    The log-size deltas are clipped at ``max_log_scale`` so an untrained head cannot overflow."""
    deltas, anchors = jnp.asarray(deltas), jnp.asarray(anchors)
    if deltas.ndim < 1 or deltas.shape[-1] != 4:
        raise ValueError(f"decode_boxes: deltas must have shape (..., 4), got {tuple(deltas.shape)}")
    _check_boxes("decode_boxes", "anchors", anchors)
    _check_weights("decode_boxes", weights)
    acx, acy, aw, ah = _center_size(anchors)
    wx, wy, ww, wh = weights
    cx = deltas[..., 0] / wx * aw + acx
    cy = deltas[..., 1] / wy * ah + acy
    w = jnp.exp(jnp.minimum(deltas[..., 2] / ww, max_log_scale)) * aw
    h = jnp.exp(jnp.minimum(deltas[..., 3] / wh, max_log_scale)) * ah
    return jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)


def _check_weights(fn, weights):
    try:
        ok = len(weights) == 4 and all(float(w) > 0 for w in weights)
    except TypeError:
        ok = False
    if not ok:
        raise ValueError(f"{fn}: weights must be 4 positive numbers, got {weights!r}")


def grid_cells(image_size: int, grid: int) -> np.ndarray:
    """The S x S cells of a square image as boxes: float32 (S * S, 4), row-major (cell (i, j) at
    index i * S + j, i the row). Use as anchors for ``encode_boxes`` or for the YOLO targets."""
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or image_size < 1:
        raise ValueError(f"grid_cells: image_size must be a positive integer, got {image_size!r}")
    if isinstance(grid, bool) or not isinstance(grid, (int, np.integer)) or not 1 <= grid <= image_size:
        raise ValueError(f"grid_cells: grid must be an integer in [1, image_size={image_size}], got {grid!r}")
    c = image_size / grid
    i, j = np.meshgrid(np.arange(grid), np.arange(grid), indexing="ij")
    return np.stack([j * c, i * c, (j + 1) * c, (i + 1) * c], -1).reshape(-1, 4).astype(np.float32)


def anchor_boxes(image_size: int, stride: int, sizes=(16.0, 32.0), ratios=(0.5, 1.0, 2.0)) -> np.ndarray:
    """Anchors centred on a stride grid: float32 (G * G * len(sizes) * len(ratios), 4), G = image_size //
    stride, ordered (row, column, size, ratio); ratio = h / w, area = size**2."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or not 1 <= stride <= image_size:
        raise ValueError(f"anchor_boxes: stride must be an integer in [1, image_size={image_size}], got {stride!r}")
    sizes, ratios = np.asarray(sizes, np.float64), np.asarray(ratios, np.float64)
    if sizes.ndim != 1 or ratios.ndim != 1 or not sizes.size or not ratios.size or np.any(sizes <= 0) or np.any(
            ratios <= 0):
        raise ValueError(f"anchor_boxes: sizes and ratios must be non-empty lists of positive numbers, "
                         f"got {sizes.tolist()} and {ratios.tolist()}")
    g = image_size // stride
    centres = (np.arange(g) + 0.5) * stride
    w = (sizes[:, None] / np.sqrt(ratios[None, :])).ravel()
    h = (sizes[:, None] * np.sqrt(ratios[None, :])).ravel()
    cy, cx = np.meshgrid(centres, centres, indexing="ij")
    cx, cy = cx[..., None], cy[..., None]
    out = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    return out.reshape(-1, 4).astype(np.float32)


def nms(boxes, scores, *, iou_threshold: float = 0.5, max_output: int = 100, score_threshold=None,
        classes=None):
    """Greedy non-maximum suppression under ``jit``: no Python loop, a fixed-size output.

    boxes (N, 4), scores (N,) float; optional ``classes`` (N,) int (suppression only within a class)
    and ``score_threshold`` (boxes scoring below it are never kept). Returns ``(indices, valid)``:
    int32 (max_output,) indices into the N boxes, highest score first, and bool (max_output,) marking
    the real entries (the rest are padding, index 0). A box is suppressed when its IoU with a kept,
    higher-scoring box is > ``iou_threshold``. Ties in score keep the lower index first.

    The algorithm: sort by score once, the (N, N) IoU matrix of the sorted boxes, then a
    ``lax.fori_loop`` over the sorted list in which a still-kept box i removes every later box it
    overlaps -- O(N^2) memory and work, fine for the few hundred boxes of a detector head.
    vmap over a batch dimension for batches.
    """
    fn = "nms"
    boxes, scores = jnp.asarray(boxes), jnp.asarray(scores)
    _check_boxes(fn, "boxes", boxes, 2)
    if boxes.ndim != 2 or scores.shape != boxes.shape[:1]:
        raise ValueError(f"nms: boxes must be (N, 4) and scores (N,), got {tuple(boxes.shape)} and {tuple(scores.shape)}")
    thr = _check_threshold(fn, "iou_threshold", iou_threshold)
    if isinstance(max_output, bool) or not isinstance(max_output, (int, np.integer)) or max_output < 1:
        raise ValueError(f"nms: max_output must be a positive integer, got {max_output!r}")
    if classes is not None:
        classes = jnp.asarray(classes)
        if classes.shape != scores.shape or not jnp.issubdtype(classes.dtype, jnp.integer):
            raise ValueError(f"nms: classes must be integers of shape {tuple(scores.shape)}, "
                             f"got {classes.dtype} {tuple(classes.shape)}")
    n = boxes.shape[0]
    if n == 0:
        return jnp.zeros(max_output, jnp.int32), jnp.zeros(max_output, bool)
    order = jnp.argsort(-scores, stable=True)
    b = boxes[order].astype(jnp.result_type(boxes.dtype, jnp.float32))
    over = _iou(b, b) > thr
    if classes is not None:
        c = classes[order]
        over = over & (c[:, None] == c[None, :])
    idx = jnp.arange(n)
    over = over & (idx[None, :] > idx[:, None])             # only later (lower-scoring) boxes
    keep = jnp.ones(n, bool)
    if score_threshold is not None:
        keep = scores[order] >= score_threshold
    keep = keep & jnp.isfinite(scores[order])

    def body(i, keep):
        return jnp.where(keep[i], keep & ~over[i], keep)

    keep = lax.fori_loop(0, n, body, keep)
    rank = jnp.where(keep, idx, n + idx)                     # kept boxes first, in score order
    first = jnp.argsort(rank)[:max_output]
    valid = keep[first]
    out = jnp.where(valid, order[first], 0).astype(jnp.int32)
    if max_output > n:
        pad = max_output - n
        out = jnp.concatenate([out, jnp.zeros(pad, jnp.int32)])
        valid = jnp.concatenate([valid, jnp.zeros(pad, bool)])
    return out, valid


def box_iou_numpy(a, b) -> np.ndarray:
    """NumPy reference of ``box_iou`` for 2-D inputs (the tests' and the metrics' version), float64."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih
    union = ((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]))[:, None] + ((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]))[None] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms_numpy(boxes, scores, iou_threshold: float = 0.5, classes=None) -> np.ndarray:
    """NumPy reference of greedy NMS with a Python loop: the kept indices, highest score first."""
    boxes, scores = np.asarray(boxes, np.float64), np.asarray(scores)
    order = list(np.argsort(-scores, kind="stable"))
    kept = []
    while order:
        i = order.pop(0)
        kept.append(i)
        if order:
            iou = box_iou_numpy(boxes[[i]], boxes[order])[0]
            same = np.ones(len(order), bool) if classes is None else np.asarray(classes)[order] == classes[i]
            order = [j for j, o, s in zip(order, iou, same) if not (o > iou_threshold and s)]
    return np.asarray(kept, np.int64)
