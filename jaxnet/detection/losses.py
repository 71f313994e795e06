"""The YOLO (v1) composite loss of the detection lecture on the S x S x (5B + C) output tensor.

Layout of ``pred`` (N, S, S, 5B + C), per cell: for each of the B predictors b, channels
``5b .. 5b+4`` = (x, y, sqrt_w, sqrt_h, confidence), where (x, y) is the box centre's offset inside
the cell (0..1) and sqrt_w, sqrt_h the square roots of the box's width and height as fractions of
the image (the net predicts the square roots directly, so the loss never takes the root of a
negative number); then C class scores, compared to the one-hot class as probabilities (squared
error, as in the paper). The loss applies no activation: put sigmoids / softmax in the model.

Targets (``yolo_targets``): the cell holding an object's box centre is responsible for it (when two
centres share a cell, the larger box wins); in that cell, the predictor whose box has the highest
IoU with the target is responsible (``1obj_ij``). With lambda_coord = 5, lambda_noobj = 0.5::

    loss = 1/N sum_images [ lambda_coord sum_ij 1obj_ij ((x - x^)^2 + (y - y^)^2)
                          + lambda_coord sum_ij 1obj_ij ((sqrt_w - sqrt(w^))^2 + (sqrt_h - sqrt(h^))^2)
                          + sum_ij 1obj_ij (C_ij - IoU_ij)^2  + lambda_noobj sum_ij (1 - 1obj_ij) C_ij^2
                          + sum_i 1obj_i sum_c (p_i(c) - [c = c^_i])^2 ]

(``conf_target="one"`` uses 1 instead of the IoU, which is treated as a constant either way:
``stop_gradient``). Pure functions of arrays; jit / grad / vmap work.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["yolo_targets", "yolo_loss", "yolo_decode"]


def _check_size(fn, image_size):
    if isinstance(image_size, bool) or not isinstance(image_size, (int, float, np.integer, np.floating)) or not image_size > 0:
        raise ValueError(f"{fn}: image_size must be a positive number, got {image_size!r}")
    return image_size


def _check_int(fn, name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{fn}: {name} must be an integer >= {low}, got {v!r}")
    return int(v)


def yolo_targets(boxes, labels, valid, *, grid: int, image_size: float):
    """Targets for ``yolo_loss`` from padded ground truth (jittable).

    boxes float (N, K, 4) (x0, y0, x1, y1) pixels; labels int (N, K); valid bool (N, K).
    Returns ``obj`` float32 (N, S, S) (1 in a responsible cell), ``box`` float32 (N, S, S, 4) as
    (x offset in the cell, y offset, w / image_size, h / image_size), ``cls`` int32 (N, S, S)
    (0 where obj is 0).
    """
    fn = "yolo_targets"
    boxes, labels, valid = jnp.asarray(boxes), jnp.asarray(labels), jnp.asarray(valid)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2] or valid.shape != labels.shape:
        raise ValueError(f"{fn}: boxes must be (N, K, 4) with labels and valid (N, K), got {tuple(boxes.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(valid.shape)}")
    s = _check_int(fn, "grid", grid)
    _check_size(fn, image_size)
    boxes = boxes.astype(jnp.float32)
    cell = image_size / s
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    j = jnp.clip(jnp.floor(cx / cell), 0, s - 1).astype(jnp.int32)
    i = jnp.clip(jnp.floor(cy / cell), 0, s - 1).astype(jnp.int32)
    where = jax.nn.one_hot(i * s + j, s * s, dtype=jnp.float32) * valid[..., None]     # (N, K, S*S)
    # per cell, the largest valid box whose centre falls in it
    score = jnp.where(where > 0, (w * h)[..., None] + 1.0, 0.0)
    winner = jnp.argmax(score, axis=1)                                                   # (N, S*S)
    obj = (jnp.max(score, axis=1) > 0).astype(jnp.float32)
    pick = lambda a: jnp.take_along_axis(a, winner, axis=1)                              # noqa: E731
    box = jnp.stack([pick(cx / cell - j), pick(cy / cell - i), pick(w / image_size), pick(h / image_size)], -1)
    cls = jnp.where(obj > 0, pick(labels.astype(jnp.int32)), 0)
    n = boxes.shape[0]
    return (obj.reshape(n, s, s), (box * obj[..., None]).reshape(n, s, s, 4), cls.reshape(n, s, s))


def _cell_iou(x, y, w, h, tx, ty, tw, th, s):
    """IoU of boxes given as (cell offsets, image fractions), all in units of the image."""
    ax0, ax1 = x / s - w / 2, x / s + w / 2
    ay0, ay1 = y / s - h / 2, y / s + h / 2
    bx0, bx1 = tx / s - tw / 2, tx / s + tw / 2
    by0, by1 = ty / s - th / 2, ty / s + th / 2
    iw = jnp.clip(jnp.minimum(ax1, bx1) - jnp.maximum(ax0, bx0), 0)
    ih = jnp.clip(jnp.minimum(ay1, by1) - jnp.maximum(ay0, by0), 0)
    inter = iw * ih
    union = w * h + tw * th - inter
    return jnp.where(union > 0, inter / jnp.where(union > 0, union, 1), 0)


def yolo_loss(pred, obj, box, cls, *, num_boxes: int = 2, lambda_coord: float = 5.0, lambda_noobj: float = 0.5,
              conf_target: str = "iou", return_parts: bool = False):
    """The YOLO composite loss (module docstring); a float scalar (the mean over the N images of the
    per-image sum), or ``(loss, parts)`` with ``return_parts`` (parts: "coord_xy", "coord_wh",
    "obj", "noobj", "class", each already weighted, summing to the loss).

    pred float (N, S, S, 5B + C); obj (N, S, S), box (N, S, S, 4), cls int (N, S, S) from
    ``yolo_targets``; B = ``num_boxes``.
    """
    fn = "yolo_loss"
    pred, obj, box, cls = jnp.asarray(pred), jnp.asarray(obj), jnp.asarray(box), jnp.asarray(cls)
    b = _check_int(fn, "num_boxes", num_boxes)
    if pred.ndim != 4 or pred.shape[1] != pred.shape[2] or pred.shape[-1] <= 5 * b:
        raise ValueError(f"{fn}: pred must be (N, S, S, 5B + C) with B={b} and C >= 1, got {tuple(pred.shape)}")
    n, s = pred.shape[0], pred.shape[1]
    c = pred.shape[-1] - 5 * b
    if obj.shape != (n, s, s) or box.shape != (n, s, s, 4) or cls.shape != (n, s, s):
        raise ValueError(f"{fn}: targets must be obj (N, S, S), box (N, S, S, 4), cls (N, S, S) = "
                         f"{(n, s, s)}, got {tuple(obj.shape)}, {tuple(box.shape)}, {tuple(cls.shape)}")
    for name, v in (("lambda_coord", lambda_coord), ("lambda_noobj", lambda_noobj)):
        if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not v >= 0:
            raise ValueError(f"{fn}: {name} must be a number >= 0, got {v!r}")
    if conf_target not in ("iou", "one"):
        raise ValueError(f"{fn}: conf_target must be 'iou' or 'one', got {conf_target!r}")
    dtype = jnp.result_type(pred.dtype, jnp.float32)
    p = pred[..., :5 * b].reshape(n, s, s, b, 5).astype(dtype)
    obj = obj.astype(dtype)
    box = box.astype(dtype)
    tx, ty, tw, th = (box[..., k][..., None] for k in range(4))
    iou = jax.lax.stop_gradient(_cell_iou(p[..., 0], p[..., 1], p[..., 2] ** 2, p[..., 3] ** 2, tx, ty, tw, th, s))
    resp = jax.nn.one_hot(jnp.argmax(iou, axis=-1), b, dtype=dtype) * obj[..., None]          # 1obj_ij
    xy = jnp.sum(resp * ((p[..., 0] - tx) ** 2 + (p[..., 1] - ty) ** 2))
    wh = jnp.sum(resp * ((p[..., 2] - jnp.sqrt(tw)) ** 2 + (p[..., 3] - jnp.sqrt(th)) ** 2))
    target_conf = iou if conf_target == "iou" else jnp.ones_like(iou)
    conf_obj = jnp.sum(resp * (p[..., 4] - target_conf) ** 2)
    conf_noobj = jnp.sum((1 - resp) * p[..., 4] ** 2)
    onehot = jax.nn.one_hot(cls, c, dtype=dtype)
    cls_loss = jnp.sum(obj[..., None] * (pred[..., 5 * b:].astype(dtype) - onehot) ** 2)
    parts = {"coord_xy": lambda_coord * xy / n, "coord_wh": lambda_coord * wh / n, "obj": conf_obj / n,
             "noobj": lambda_noobj * conf_noobj / n, "class": cls_loss / n}
    loss = sum(parts.values())
    return (loss, parts) if return_parts else loss


def yolo_decode(pred, *, num_boxes: int = 2, image_size: float):
    """Detections from a YOLO output (jittable): boxes float (N, S*S*B, 4) (x0, y0, x1, y1) pixels,
    scores (N, S*S*B) = confidence x the cell's top class score, labels int32 (N, S*S*B). Feed each
    image to ``jaxnet.detection.boxes.nms``."""
    fn = "yolo_decode"
    pred = jnp.asarray(pred)
    b = _check_int(fn, "num_boxes", num_boxes)
    _check_size(fn, image_size)
    if pred.ndim != 4 or pred.shape[1] != pred.shape[2] or pred.shape[-1] <= 5 * b:
        raise ValueError(f"{fn}: pred must be (N, S, S, 5B + C) with B={b} and C >= 1, got {tuple(pred.shape)}")
    n, s = pred.shape[:2]
    p = pred[..., :5 * b].reshape(n, s, s, b, 5)
    probs = pred[..., 5 * b:]
    j = jnp.arange(s)[None, None, :, None]
    i = jnp.arange(s)[None, :, None, None]
    cx, cy = (j + p[..., 0]) / s * image_size, (i + p[..., 1]) / s * image_size
    w, h = p[..., 2] ** 2 * image_size, p[..., 3] ** 2 * image_size
    boxes = jnp.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1).reshape(n, -1, 4)
    best = jnp.max(probs, -1)[..., None] * p[..., 4]
    labels = jnp.broadcast_to(jnp.argmax(probs, -1)[..., None], best.shape).astype(jnp.int32)
    return boxes, best.reshape(n, -1), labels.reshape(n, -1)
