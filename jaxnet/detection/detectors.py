"""Two detectors of the detection lecture, built from jaxnet's audited ops: a single-stage YOLO (v1)
head and a small two-stage detector (region proposal network + RoI Align + box head, with an
optional Mask R-CNN mask head). Params are dicts of arrays, every function is pure and jittable,
every layer runs the registered ops (``impl`` picks their backward).

Shared backbone (``width`` W): standardised pixels, 3x3 conv + ReLU at H (W channels), 2x2 max
pool, conv at H/2 (2W), pool, two convs at H/4 (4W): features of stride 4, (N, H/4, W/4, 4W).

- **YOLO** (``init_yolo`` / ``yolo_forward``): a 2x2 pool to the S = H/8 grid, a 3x3 conv (8W),
  a 1x1 conv to 5B + C channels; sigmoids on (x, y, sqrt w, sqrt h, confidence), a softmax over
  the classes -- the layout of ``jaxnet.detection.losses.yolo_loss``. ``yolo_detect``: decode,
  clip, class-aware NMS per image.
- **Two-stage** (``init_two_stage``): an RPN on the stride-4 features (3x3 conv + ReLU, 1x1 convs
  to A objectness logits and 4A deltas per position against ``anchors``); proposals = the top
  ``pre_nms`` anchors by objectness, decoded, clipped, NMS at 0.7, the first ``num_proposals``;
  ``roi_align`` of each proposal to ``roi_size`` x ``roi_size`` x 4W, an affine + ReLU layer, then
  C + 1 class scores (0 = background) and class-specific box deltas (Fast R-CNN's
  (10, 10, 5, 5) weights). The mask head (``masks=True``): ``roi_align`` to ``mask_size``², two
  3x3 conv + ReLU, a 1x1 conv to C mask logits (one mask per class, Mask R-CNN's decoupling).

Training (``two_stage_loss``): approximate joint training -- proposals are constants
(``stop_gradient``), the ground-truth boxes join them as RoIs. RPN: anchors with IoU >= 0.6 with a
ground-truth box (and each box's best anchor, when their IoU is > 0.1) are positive, < 0.3 negative; ``rpn_samples``
anchors per image (positives first, then random negatives, drawn with ``key``) enter the
``sigmoid_cross_entropy``; positives' deltas the ``smooth_l1_loss``. RoI head: a RoI is
foreground when its IoU with a ground-truth box is >= 0.5 (class = that box's, else background);
``softmax_cross_entropy`` over all RoIs + smooth L1 on the foreground RoIs' class deltas; the mask
loss is the per-pixel ``sigmoid_cross_entropy`` of the true class's mask logits against the
instance mask resampled into the RoI by the same ``roi_align``, on foreground RoIs only.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet.detection.boxes import anchor_boxes, box_iou, decode_boxes, encode_boxes, nms
from jaxnet.detection.losses import yolo_decode, yolo_loss, yolo_targets

__all__ = ["TwoStageConfig", "init_backbone", "backbone", "init_yolo", "yolo_forward", "yolo_train_loss", "yolo_detect",
           "init_two_stage", "rpn_targets", "propose", "roi_targets", "two_stage_loss", "two_stage_detect",
           "paste_masks", "relabel_with_true_classes"]

PIXEL_MEAN, PIXEL_STD = 0.35, 0.2          # about the scenes' pixel statistics (textured grey-ish canvas)
ROI_BOX_WEIGHTS = (10.0, 10.0, 5.0, 5.0)    # Fast R-CNN's delta weights for the RoI head
_FAR = -40.0                                # a logit whose sigmoid cross-entropy against 0 is 4e-18: masks out a term


def _check_int(fn, name, v, low=1):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
        raise ValueError(f"{fn}: {name} must be an integer >= {low}, got {v!r}")
    return int(v)


def _check_images(fn, x):
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[1] % 8 or x.shape[2] % 8:
        raise ValueError(f"{fn}: images must be (N, H, W, 3) with H and W multiples of 8, got {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------ layers

def _conv_params(rng, k, cin, cout, scale=1.0):
    w = rng.standard_normal((k, k, cin, cout)) * math.sqrt(2.0 / (k * k * cin)) * scale
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(cout, jnp.float32)}


def _affine_params(rng, din, dout, scale=1.0):
    w = rng.standard_normal((din, dout)) * math.sqrt(2.0 / din) * scale
    return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(dout, jnp.float32)}


def _conv(p, h, impl, relu=True):
    y = F.conv2d(h, p["w"], p["b"], padding=(p["w"].shape[0] - 1) // 2, impl=impl)
    return F.relu(y, impl=impl) if relu else y


def init_backbone(seed: int, width: int = 16) -> dict:
    """He-normal convolutions (NumPy draws from ``seed``), zero biases."""
    width = _check_int("init_backbone", "width", width)
    rng = np.random.default_rng(seed)
    w = width
    return {"c1": _conv_params(rng, 3, 3, w), "c2": _conv_params(rng, 3, w, 2 * w),
            "c3": _conv_params(rng, 3, 2 * w, 4 * w), "c4": _conv_params(rng, 3, 4 * w, 4 * w)}


def backbone(p: dict, x, impl=None):
    """Images float (N, H, W, 3) in [0, 1] -> features (N, H/4, W/4, 4W) of stride 4."""
    h = (x - PIXEL_MEAN) / PIXEL_STD
    h = F.max_pool2d(_conv(p["c1"], h, impl), window=2, impl=impl)
    h = F.max_pool2d(_conv(p["c2"], h, impl), window=2, impl=impl)
    return _conv(p["c4"], _conv(p["c3"], h, impl), impl)


# -------------------------------------------------------------------------------------------- YOLO

def init_yolo(seed: int, num_classes: int, width: int = 16, num_boxes: int = 2) -> dict:
    fn = "init_yolo"
    c, b, w = _check_int(fn, "num_classes", num_classes), _check_int(fn, "num_boxes", num_boxes), _check_int(fn, "width", width)
    rng = np.random.default_rng((seed, 1))
    return {"backbone": init_backbone(seed, w), "y1": _conv_params(rng, 3, 4 * w, 8 * w),
            "y2": _conv_params(rng, 1, 8 * w, 5 * b + c, scale=0.1)}


def yolo_forward(p: dict, x, *, num_boxes: int = 2, impl=None):
    """Images (N, H, W, 3) -> the YOLO tensor (N, H/8, W/8, 5B + C): per predictor sigmoids of
    (x, y, sqrt w, sqrt h, confidence), then softmax class probabilities."""
    _check_images("yolo_forward", x)
    h = F.max_pool2d(backbone(p["backbone"], x, impl), window=2, impl=impl)
    out = _conv(p["y2"], _conv(p["y1"], h, impl), impl, relu=False)
    b5 = 5 * num_boxes
    return jnp.concatenate([F.sigmoid(out[..., :b5], impl=impl), jax.nn.softmax(out[..., b5:], axis=-1)], -1)


def yolo_train_loss(p, x, boxes, labels, valid, *, num_boxes: int = 2, impl=None):
    """``yolo_loss`` (IoU confidence targets) of ``yolo_forward`` against padded ground truth
    boxes (N, K, 4) pixels, labels (N, K), valid (N, K); returns (loss, parts)."""
    pred = yolo_forward(p, x, num_boxes=num_boxes, impl=impl)
    obj, box, cls = yolo_targets(boxes, labels, valid, grid=pred.shape[1], image_size=x.shape[1])
    return yolo_loss(pred, obj, box, cls, num_boxes=num_boxes, return_parts=True)


def _nms_batch(boxes, scores, labels, iou_threshold, max_output, score_threshold):
    def one(b, s, c):
        idx, ok = nms(b, s, iou_threshold=iou_threshold, max_output=max_output, score_threshold=score_threshold,
                      classes=c)
        return b[idx], jnp.where(ok, s[idx], 0.0), c[idx], ok
    return jax.vmap(one)(boxes, scores, labels)


def yolo_detect(p, x, *, num_boxes: int = 2, iou_threshold: float = 0.5, max_detections: int = 20,
                score_threshold: float = 0.01, impl=None):
    """Detections per image: boxes (N, D, 4) pixels clipped to the image, scores (N, D), labels
    int32 (N, D), valid bool (N, D); D = ``max_detections``, highest score first."""
    pred = yolo_forward(p, x, num_boxes=num_boxes, impl=impl)
    boxes, scores, labels = yolo_decode(pred, num_boxes=num_boxes, image_size=x.shape[1])
    boxes = jnp.clip(boxes, 0, x.shape[1])
    return _nms_batch(boxes, scores, labels, iou_threshold, max_detections, score_threshold)


# --------------------------------------------------------------------------------------- two-stage

class TwoStageConfig(NamedTuple):
    """Sizes of the two-stage detector (all static)."""
    num_classes: int
    image_size: int = 64
    width: int = 16
    anchor_sizes: tuple = (16.0, 24.0, 32.0)
    anchor_ratios: tuple = (1.0,)
    pre_nms: int = 128
    num_proposals: int = 16
    test_proposals: int = 32
    rpn_samples: int = 64
    roi_size: int = 5
    hidden: int = 128
    masks: bool = False
    mask_size: int = 14
    mask_rois: int = 6

    @property
    def num_anchors(self) -> int:
        return len(self.anchor_sizes) * len(self.anchor_ratios)

    def anchors(self) -> np.ndarray:
        return anchor_boxes(self.image_size, 4, self.anchor_sizes, self.anchor_ratios)


def _check_config(cfg: TwoStageConfig):
    fn = "TwoStageConfig"
    if not isinstance(cfg, TwoStageConfig):
        raise ValueError(f"{fn}: expected a TwoStageConfig, got {type(cfg).__name__}")
    for name in ("num_classes", "image_size", "width", "pre_nms", "num_proposals", "test_proposals", "rpn_samples",
                 "roi_size", "hidden", "mask_size", "mask_rois"):
        _check_int(fn, name, getattr(cfg, name))
    if cfg.image_size % 8:
        raise ValueError(f"{fn}: image_size must be a multiple of 8, got {cfg.image_size}")
    if max(cfg.num_proposals, cfg.test_proposals) > cfg.pre_nms:
        raise ValueError(f"{fn}: num_proposals ({cfg.num_proposals}) and test_proposals ({cfg.test_proposals}) "
                         f"must be <= pre_nms ({cfg.pre_nms})")
    n_anchors = (cfg.image_size // 4) ** 2 * cfg.num_anchors
    if cfg.pre_nms > n_anchors or cfg.rpn_samples > n_anchors:
        raise ValueError(f"{fn}: pre_nms ({cfg.pre_nms}) and rpn_samples ({cfg.rpn_samples}) must be <= the "
                         f"{n_anchors} anchors")
    return cfg


def init_two_stage(seed: int, cfg: TwoStageConfig) -> dict:
    """Params of the two-stage detector (He-normal, small final layers, zero biases)."""
    cfg = _check_config(cfg)
    rng = np.random.default_rng((seed, 2))
    c4, a, k = 4 * cfg.width, cfg.num_anchors, cfg.num_classes
    p = {"backbone": init_backbone(seed, cfg.width), "rpn": _conv_params(rng, 3, c4, c4),
         "rpn_obj": _conv_params(rng, 1, c4, a, scale=0.1), "rpn_box": _conv_params(rng, 1, c4, 4 * a, scale=0.1),
         "fc": _affine_params(rng, cfg.roi_size ** 2 * c4, cfg.hidden),
         "cls": _affine_params(rng, cfg.hidden, k + 1, scale=0.1), "box": _affine_params(rng, cfg.hidden, 4 * k, scale=0.1)}
    if cfg.masks:
        p.update(m1=_conv_params(rng, 3, c4, c4), m2=_conv_params(rng, 3, c4, c4),
                 m3=_conv_params(rng, 1, c4, k, scale=0.1))
    return p


def _rpn(p, f, cfg, impl):
    n = f.shape[0]
    h = _conv(p["rpn"], f, impl)
    obj = _conv(p["rpn_obj"], h, impl, relu=False).reshape(n, -1)              # (N, G*G*A): (row, col, anchor)
    deltas = _conv(p["rpn_box"], h, impl, relu=False).reshape(n, -1, 4)
    return obj, deltas


def rpn_targets(anchors, boxes, valid, pos_iou: float = 0.6, neg_iou: float = 0.3):
    """Per anchor of one image: positive (bool (A,): IoU >= ``pos_iou`` with a valid box, or a box's
    best anchor with IoU > 0.1), negative (bool (A,): IoU < ``neg_iou`` with every box, not positive),
    the regression target (A, 4) against the best-matching box (0 where not positive).
    anchors (A, 4), boxes (K, 4) pixels, valid (K,) bool."""
    iou = jnp.where(valid[None, :], box_iou(anchors, boxes), -1.0)              # (A, K)
    best = jnp.max(iou, 1)
    gt_best = jnp.max(iou, 0)                                                   # each box's best anchor
    pos = (best >= pos_iou) | jnp.any((iou >= gt_best[None, :]) & valid[None, :] & (gt_best[None, :] > 0.1), 1)
    neg = (best < neg_iou) & ~pos
    match = jnp.argmax(iou, 1)
    target = encode_boxes(jnp.maximum(boxes[match], 0) + jnp.array([0, 0, 1e-3, 1e-3]), anchors)
    return pos, neg, jnp.where(pos[:, None], target, 0.0)


def _sample_anchors(key, pos, neg, k):
    """k anchor indices per image: positives first (randomly ordered), then random negatives."""
    u = jax.random.uniform(key, pos.shape)
    priority = jnp.where(pos, 2.0 + u, jnp.where(neg, 1.0 + u, u - 1.0))
    return jax.lax.top_k(priority, k)[1]


def propose(obj, deltas, anchors, cfg: TwoStageConfig, count: int):
    """``count`` proposals of one image from its RPN output obj (A,), deltas (A, 4): boxes (count, 4)
    (the top ``cfg.pre_nms`` anchors, decoded, clipped, NMS at 0.7), valid (count,)."""
    score, idx = jax.lax.top_k(obj, cfg.pre_nms)
    boxes = jnp.clip(decode_boxes(deltas[idx], anchors[idx]), 0, cfg.image_size)
    keep, ok = nms(boxes, score, iou_threshold=0.7, max_output=count)
    ok = ok & (boxes[keep, 2] - boxes[keep, 0] >= 1) & (boxes[keep, 3] - boxes[keep, 1] >= 1)
    return jnp.where(ok[:, None], boxes[keep], jnp.array([0.0, 0.0, 1.0, 1.0])), ok


def roi_targets(rois, boxes, labels, valid, fg_iou: float = 0.5):
    """RoI head targets of one image: class (R,) int (0 background, else label + 1), the matched
    box index (R,), foreground (R,) bool, deltas (R, 4) (``ROI_BOX_WEIGHTS``)."""
    iou = jnp.where(valid[None, :], box_iou(rois, boxes), -1.0)
    match = jnp.argmax(iou, 1)
    fg = jnp.max(iou, 1) >= fg_iou
    cls = jnp.where(fg, labels[match] + 1, 0).astype(jnp.int32)
    safe = jnp.where(fg[:, None], boxes[match], rois)
    widen = jnp.array([0.0, 0.0, 1e-3, 1e-3])
    deltas = encode_boxes(safe + widen, jnp.maximum(rois, 0) + widen, ROI_BOX_WEIGHTS)
    return cls, match, fg, jnp.where(fg[:, None], deltas, 0.0)


def _roi_features(p, f, rois, cfg, impl):
    """f (N, h, w, C), rois (N, R, 4) -> the head's hidden (N*R, hidden) and the RoI batch index."""
    n, r = rois.shape[:2]
    bidx = jnp.repeat(jnp.arange(n), r)
    pooled = F.roi_align(f, rois.reshape(-1, 4), bidx, output_size=cfg.roi_size, spatial_scale=0.25,
                         sampling_ratio=2, impl=impl)
    hid = F.relu(F.affine(pooled.reshape(n * r, -1), p["fc"]["w"], p["fc"]["b"], impl=impl), impl=impl)
    return hid, bidx


def _mask_logits(p, f, rois, cfg, impl):
    """Mask logits (N*R, M, M, C) of rois (N, R, 4)."""
    n, r = rois.shape[:2]
    bidx = jnp.repeat(jnp.arange(n), r)
    m = F.roi_align(f, rois.reshape(-1, 4), bidx, output_size=cfg.mask_size, spatial_scale=0.25, sampling_ratio=2,
                    impl=impl)
    return _conv(p["m3"], _conv(p["m2"], _conv(p["m1"], m, impl), impl), impl, relu=False)


def _take_class(x, cls):
    """x (R, C, ...) at each row's class (R,) -> (R, ...)."""
    return jnp.take_along_axis(x, cls.reshape((-1,) + (1,) * (x.ndim - 1)), 1)[:, 0]


def two_stage_loss(p, x, boxes, labels, valid, key, cfg: TwoStageConfig, instance_masks=None, impl=None):
    """The training loss of the two-stage detector and its parts (module docstring).

    x (N, H, W, 3); boxes float (N, K, 4) pixels, labels int (N, K), valid bool (N, K); key: a PRNG
    key (the RPN's anchor sample); instance_masks float (N, H, W, K) (slot k's pixels) when
    ``cfg.masks``. Returns (loss, parts dict of scalars)."""
    fn = "two_stage_loss"
    _check_images(fn, x)
    if cfg.masks and instance_masks is None:
        raise ValueError(f"{fn}: cfg.masks is set, so instance_masks (N, H, W, K) are needed")
    n, k = labels.shape
    anchors = jnp.asarray(cfg.anchors())
    f = backbone(p["backbone"], x, impl)
    obj, deltas = _rpn(p, f, cfg, impl)
    pos, neg, target = jax.vmap(lambda b, v: rpn_targets(anchors, b, v))(boxes, valid)
    pick = jax.vmap(lambda kk, ps, ng: _sample_anchors(kk, ps, ng, cfg.rpn_samples))(jax.random.split(key, n), pos, neg)
    take = lambda a: jnp.take_along_axis(a, pick if a.ndim == 2 else pick[..., None], 1)   # noqa: E731
    rpn_cls = F.sigmoid_cross_entropy(take(obj), take(pos).astype(x.dtype), impl=impl) / cfg.rpn_samples
    posm = take(pos)[..., None].astype(x.dtype)
    n_pos = jnp.maximum(jnp.sum(posm), 1.0)
    rpn_box = F.smooth_l1_loss(take(deltas) * posm, take(target) * posm, beta=1 / 9, impl=impl) * posm.size / n_pos

    props, pvalid = jax.vmap(lambda o, d: propose(o, d, anchors, cfg, cfg.num_proposals))(
        jax.lax.stop_gradient(obj), jax.lax.stop_gradient(deltas))
    rois = jnp.concatenate([props, jnp.where(valid[..., None], boxes, jnp.array([0.0, 0.0, 1.0, 1.0]))], 1)
    cls_t, match, fg, delta_t = jax.vmap(roi_targets)(rois, boxes, labels, valid)
    hid, _ = _roi_features(p, f, rois, cfg, impl)
    scores = F.affine(hid, p["cls"]["w"], p["cls"]["b"], impl=impl)
    box_d = F.affine(hid, p["box"]["w"], p["box"]["b"], impl=impl).reshape(-1, cfg.num_classes, 4)
    cls_t, fg, delta_t = cls_t.reshape(-1), fg.reshape(-1), delta_t.reshape(-1, 4)
    roi_cls = F.softmax_cross_entropy(scores, cls_t, impl=impl)
    fgm = fg[:, None].astype(x.dtype)
    n_fg = jnp.maximum(jnp.sum(fgm), 1.0)
    d = _take_class(box_d, jnp.maximum(cls_t - 1, 0))
    roi_box = F.smooth_l1_loss(d * fgm, delta_t * fgm, beta=1.0, impl=impl) * fgm.size / n_fg
    parts = {"rpn_cls": rpn_cls, "rpn_box": rpn_box, "roi_cls": roi_cls, "roi_box": roi_box}
    if cfg.masks:          # on cfg.mask_rois foreground RoIs per image (fewer when there are fewer)
        m, r = cfg.mask_size, rois.shape[1]
        fg2 = fg.reshape(n, r)
        u = jax.random.uniform(jax.random.fold_in(key, 1), fg2.shape)
        sel = jax.lax.top_k(jnp.where(fg2, 1.0 + u, u - 1.0), cfg.mask_rois)[1]           # (N, Rm)
        sel_fg = jnp.take_along_axis(fg2, sel, 1).reshape(-1)
        sel_rois = jnp.take_along_axis(rois, sel[..., None], 1)
        sel_cls = jnp.take_along_axis(cls_t.reshape(n, r), sel, 1).reshape(-1)
        sel_match = jnp.take_along_axis(match, sel, 1).reshape(-1)
        logits = _take_class(jnp.moveaxis(_mask_logits(p, f, sel_rois, cfg, impl), -1, 1),
                             jnp.maximum(sel_cls - 1, 0))
        bidx = jnp.repeat(jnp.arange(n), cfg.mask_rois)
        inst = F.roi_align(jax.lax.stop_gradient(instance_masks.astype(x.dtype)), sel_rois.reshape(-1, 4), bidx,
                           output_size=m, spatial_scale=1.0, sampling_ratio=2)         # (N*Rm, M, M, K)
        target = (_take_class(jnp.moveaxis(inst, -1, 1), sel_match) >= 0.5).astype(x.dtype)
        fg3 = sel_fg[:, None, None]
        n_sel = jnp.maximum(jnp.sum(sel_fg), 1.0)
        per_roi = F.sigmoid_cross_entropy(jnp.where(fg3, logits, _FAR), jnp.where(fg3, target, 0.0), impl=impl)
        parts["mask"] = per_roi * sel_fg.shape[0] / (n_sel * m * m)
    return sum(parts.values()), parts


def two_stage_detect(p, x, cfg: TwoStageConfig, *, iou_threshold: float = 0.5, max_detections: int = 20,
                     score_threshold: float = 0.01, boxes=None, labels=None, impl=None):
    """Detections per image: boxes (N, D, 4), scores (N, D), labels (N, D) int32, valid (N, D) and,
    with ``cfg.masks``, mask probabilities (N, D, H, W) pasted into the image. Each proposal gives C
    candidates (class probability, the class's decoded box); class-aware NMS keeps D.

    ``boxes`` (N, K, 4) and ``labels`` (N, K) given: no detection -- the mask head runs on these
    boxes with these classes (the upper bound of a mask head given the true boxes and classes);
    the scores are 1."""
    _check_images("two_stage_detect", x)
    n, size = x.shape[0], x.shape[1]
    f = backbone(p["backbone"], x, impl)
    if boxes is None:
        anchors = jnp.asarray(cfg.anchors())
        obj, deltas = _rpn(p, f, cfg, impl)
        rois, rvalid = jax.vmap(lambda o, d: propose(o, d, anchors, cfg, cfg.test_proposals))(obj, deltas)
        hid, _ = _roi_features(p, f, rois, cfg, impl)
        r, c = rois.shape[1], cfg.num_classes
        probs = jax.nn.softmax(F.affine(hid, p["cls"]["w"], p["cls"]["b"], impl=impl), -1)[:, 1:].reshape(n, r, c)
        box_d = F.affine(hid, p["box"]["w"], p["box"]["b"], impl=impl).reshape(n, r, c, 4)
        cand = jnp.clip(decode_boxes(box_d, rois[:, :, None, :], ROI_BOX_WEIGHTS), 0, size).reshape(n, r * c, 4)
        scores = jnp.where(rvalid[:, :, None], probs, -jnp.inf).reshape(n, r * c)
        cls = jnp.broadcast_to(jnp.arange(c, dtype=jnp.int32), (n, r, c)).reshape(n, r * c)
        det_b, det_s, det_c, det_ok = _nms_batch(cand, scores, cls, iou_threshold, max_detections, score_threshold)
    else:
        det_b, det_c = jnp.asarray(boxes, x.dtype), jnp.asarray(labels, jnp.int32)
        det_s, det_ok = jnp.ones(det_c.shape, x.dtype), jnp.ones(det_c.shape, bool)
    out = {"boxes": det_b, "scores": det_s, "labels": det_c, "valid": det_ok}
    if cfg.masks:
        d = det_b.shape[1]
        logits = _mask_logits(p, f, det_b, cfg, impl)                                  # (N*D, M, M, C)
        prob = F.sigmoid(_take_class(jnp.moveaxis(logits, -1, 1), det_c.reshape(-1)), impl=impl)
        out["masks"] = paste_masks(prob.reshape(n, d, cfg.mask_size, cfg.mask_size), det_b, size)
    return out


def paste_masks(masks, boxes, image_size: int):
    """RoI masks (N, D, M, M) in [0, 1] resampled into their boxes (N, D, 4) on an image_size
    canvas: (N, D, S, S), bilinear at pixel centres (edge values held), 0 outside the box."""
    m = masks.shape[-1]
    c = jnp.arange(image_size, dtype=masks.dtype) + 0.5

    def one(mask, box):
        x0, y0, x1, y1 = box[0], box[1], box[2], box[3]
        u = (c - x0) / jnp.maximum(x1 - x0, 1e-6) * m - 0.5
        v = (c - y0) / jnp.maximum(y1 - y0, 1e-6) * m - 0.5
        vv, uu = jnp.meshgrid(v, u, indexing="ij")
        val = jax.scipy.ndimage.map_coordinates(mask, [vv, uu], order=1, mode="nearest")
        inside = ((c >= x0) & (c <= x1))[None, :] & ((c >= y0) & (c <= y1))[:, None]
        return jnp.where(inside, val, 0.0)

    return jax.vmap(jax.vmap(one))(masks, boxes)


def relabel_with_true_classes(det_boxes, det_labels, gt_boxes, gt_labels):
    """The class oracle (NumPy, one image): each detection takes the class of the ground-truth box
    it overlaps most (kept when it overlaps none). det_boxes (D, 4), det_labels (D,), gt (K, 4), (K,)."""
    from jaxnet.detection.boxes import box_iou_numpy

    det_labels = np.asarray(det_labels).copy()
    if len(det_boxes) and len(gt_boxes):
        iou = box_iou_numpy(det_boxes, gt_boxes)
        hit = iou.max(1) > 0
        det_labels[hit] = np.asarray(gt_labels)[iou.argmax(1)[hit]]
    return det_labels
