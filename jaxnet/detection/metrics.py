"""Evaluation in NumPy: mean IoU for segmentation, COCO-style mAP and precision-recall curves for detection
(boxes) and instance segmentation (masks).

``mean_iou``: from the confusion matrix of predicted vs true pixel classes; pixels whose target
is ``ignore_index`` are left out; a class absent from both prediction and target (union 0) is
left out of the mean (NaN in ``per_class``).

``evaluate_detections``: the COCO protocol for boxes or masks (pycocotools' ``COCOeval`` with area range
"all" and ``maxDets`` = ``max_dets``, no crowd regions), re-implemented: per image and class the
detections sorted by score (at most ``max_dets`` kept), each matched greedily to the unmatched
ground truth of highest IoU >= t; per class the precision at the 101 recall points
0, 0.01, ..., 1 of the precision envelope (the precision made non-increasing from the right);
AP = the mean over the recall points, mAP = the mean over the classes that have ground truth.
mAP@[.5:.95] averages t = 0.50, 0.55, ..., 0.95. Tested against pycocotools on the same
predictions (tests/test_detection_metrics.py).

Inputs, per image i: ``detections[i] = (boxes (D, 4), scores (D,), labels (D,))`` and
``ground_truth[i] = (boxes (G, 4), labels (G,))``, boxes (x0, y0, x1, y1) in pixels. The padded
arrays of ``jaxnet.detection.scenes`` convert with ``unpad``.

Masks (instance segmentation): ``evaluate_detections(..., iou_type="segm")`` is COCOeval with
``iouType="segm"``: each detection entry is ``(boxes, scores, labels, masks)`` and each
ground-truth entry ``(boxes, labels, masks)``, masks bool or 0/1 (n, H, W) with one mask per box
and the same H, W on both sides of an image (when both sides have masks); the IoU between a
detection and a ground truth is the mask IoU ``mask_iou_numpy`` (shared pixels / pixels in either;
0 when both are empty), the rest of the protocol unchanged (the boxes are checked but not used).
Tested against pycocotools' ``COCOeval(iouType="segm")`` on RLE-encoded random masks
(tests/test_detection_metrics.py).
"""

from __future__ import annotations

import numpy as np

from jaxnet.detection.boxes import box_iou_numpy

__all__ = ["confusion_matrix", "mean_iou", "evaluate_detections", "precision_recall_curve", "unpad",
           "mask_iou_numpy", "COCO_IOU_THRESHOLDS", "RECALL_POINTS", "IOU_TYPES"]

COCO_IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
IOU_TYPES = ("bbox", "segm")


def _check_classes(fn, num_classes):
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"{fn}: num_classes must be a positive integer, got {num_classes!r}")
    return int(num_classes)


def confusion_matrix(pred, target, num_classes: int, ignore_index: int | None = None) -> np.ndarray:
    """int64 (C, C) counts, row = true class, column = predicted class, over pixels whose target is
    not ``ignore_index``. pred and target: integer arrays of the same shape with values in [0, C)
    (the prediction may not be ``ignore_index``)."""
    fn = "confusion_matrix"
    c = _check_classes(fn, num_classes)
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"{fn}: pred and target must have the same shape, got {pred.shape} and {target.shape}")
    if not (np.issubdtype(pred.dtype, np.integer) and np.issubdtype(target.dtype, np.integer)):
        raise ValueError(f"{fn}: pred and target must be integer class maps, got {pred.dtype} and {target.dtype}")
    keep = np.ones(target.shape, bool) if ignore_index is None else target != ignore_index
    p, t = pred[keep].ravel(), target[keep].ravel()
    if p.size and (p.min() < 0 or p.max() >= c or t.min() < 0 or t.max() >= c):
        raise ValueError(f"{fn}: class values must be in [0, {c}) (target may also be ignore_index={ignore_index}), "
                         f"got pred in [{p.min()}, {p.max()}] and target in [{t.min()}, {t.max()}]")
    return np.bincount(t.astype(np.int64) * c + p, minlength=c * c).reshape(c, c)


def mean_iou(pred, target, num_classes: int, ignore_index: int | None = None) -> dict:
    """{"miou", "per_class" (C,) float64 with NaN for classes absent from both, "pixel_accuracy",
    "confusion"} for integer class maps ``pred`` and ``target`` of the same shape."""
    cm = confusion_matrix(pred, target, num_classes, ignore_index)
    inter = np.diag(cm).astype(np.float64)
    union = cm.sum(0) + cm.sum(1) - np.diag(cm)
    with np.errstate(invalid="ignore", divide="ignore"):
        per = np.where(union > 0, inter / np.maximum(union, 1), np.nan)
    total = cm.sum()
    return {"miou": float(np.nanmean(per)) if np.any(union > 0) else float("nan"), "per_class": per,
            "pixel_accuracy": float(inter.sum() / total) if total else float("nan"), "confusion": cm}


def unpad(boxes, labels, valid, scores=None) -> list:
    """Padded (N, K, ...) arrays -> a per-image list of (boxes, [scores,] labels) of the valid slots."""
    boxes, labels, valid = np.asarray(boxes), np.asarray(labels), np.asarray(valid, bool)
    if boxes.ndim != 3 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:2] or valid.shape != labels.shape:
        raise ValueError(f"unpad: boxes must be (N, K, 4) with labels and valid (N, K), got {boxes.shape}, "
                         f"{labels.shape}, {valid.shape}")
    if scores is None:
        return [(boxes[i][valid[i]], labels[i][valid[i]]) for i in range(len(boxes))]
    scores = np.asarray(scores)
    if scores.shape != labels.shape:
        raise ValueError(f"unpad: scores must be (N, K) like labels, got {scores.shape}")
    return [(boxes[i][valid[i]], scores[i][valid[i]], labels[i][valid[i]]) for i in range(len(boxes))]


def _is_binary(m) -> bool:
    return m.dtype == bool or (m.size == 0) or bool(np.all((m == 0) | (m == 1)))


def mask_iou_numpy(a, b) -> np.ndarray:
    """Pairwise mask IoU: a (n, H, W), b (m, H, W), bool or 0/1 -> float64 (n, m), the number of
    pixels in both masks over the number in either (COCO's mask IoU); 0 where both masks are empty.
    Exact: the counts are integers (one matrix product of the flattened masks)."""
    fn = "mask_iou_numpy"
    a, b = np.asarray(a), np.asarray(b)
    if a.ndim != 3 or b.ndim != 3 or a.shape[1:] != b.shape[1:]:
        raise ValueError(f"{fn}: a and b must be (n, H, W) and (m, H, W) with the same H, W, got {a.shape} and {b.shape}")
    if not (_is_binary(a) and _is_binary(b)):
        raise ValueError(f"{fn}: masks must be bool or 0/1, got values outside {{0, 1}} ({a.dtype}, {b.dtype})")
    hw = a.shape[1] * a.shape[2]
    dtype = np.float32 if hw <= 2 ** 24 else np.float64          # integer counts < 2**24 are exact in float32
    fa, fb = a.reshape(len(a), hw).astype(dtype), b.reshape(len(b), hw).astype(dtype)
    inter = (fa @ fb.T).astype(np.float64)
    union = fa.sum(1, dtype=np.float64)[:, None] + fb.sum(1, dtype=np.float64)[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def _check_masks(fn, i, name, m, n):
    if m.size == 0 and m.ndim != 3:
        m = m.reshape(0, 0, 0)
    if m.ndim != 3 or len(m) != n:
        raise ValueError(f"{fn}: image {i}: {name} masks must be (n, H, W) with one mask per box (n={n}), got {m.shape}")
    if not _is_binary(m):
        raise ValueError(f"{fn}: image {i}: {name} masks must be bool or 0/1, got {m.dtype} values outside {{0, 1}}")
    return m.astype(bool)


def _check_dets(fn, detections, ground_truth, segm=False):
    if len(detections) != len(ground_truth):
        raise ValueError(f"{fn}: detections and ground_truth must list the same images, got {len(detections)} "
                         f"and {len(ground_truth)}")
    dets, gts, masks = [], [], []
    for i, (d, g) in enumerate(zip(detections, ground_truth)):
        try:
            if segm:
                db, ds, dl, dm = (np.asarray(a) for a in d)
                gb, gl, gm = (np.asarray(a) for a in g)
            else:
                db, ds, dl = (np.asarray(a) for a in d)
                gb, gl = (np.asarray(a) for a in g)
        except (TypeError, ValueError):
            if segm:
                raise ValueError(f"{fn}: image {i}: with iou_type='segm' detections must be (boxes, scores, labels, "
                                 f"masks) and ground truth (boxes, labels, masks)") from None
            raise ValueError(f"{fn}: image {i}: detections must be (boxes, scores, labels) and ground truth "
                             f"(boxes, labels)") from None
        db, gb = db.reshape(-1, 4) if db.size == 0 else db, gb.reshape(-1, 4) if gb.size == 0 else gb
        for name, b in (("detection", db), ("ground-truth", gb)):
            if b.ndim != 2 or b.shape[1] != 4:
                raise ValueError(f"{fn}: image {i}: {name} boxes must be (n, 4), got {b.shape}")
            if b.size and (np.any(b[:, 2] < b[:, 0]) or np.any(b[:, 3] < b[:, 1]) or not np.all(np.isfinite(b))):
                raise ValueError(f"{fn}: image {i}: {name} boxes must be finite with x1 >= x0 and y1 >= y0")
        if ds.shape != (len(db),) or dl.shape != (len(db),) or gl.shape != (len(gb),):
            raise ValueError(f"{fn}: image {i}: scores/labels must be 1-D matching the boxes, got boxes {db.shape}, "
                             f"scores {ds.shape}, labels {dl.shape}, ground truth {gb.shape} / {gl.shape}")
        if segm:
            dm = _check_masks(fn, i, "detection", dm, len(db))
            gm = _check_masks(fn, i, "ground-truth", gm, len(gb))
            if len(dm) and len(gm) and dm.shape[1:] != gm.shape[1:]:
                raise ValueError(f"{fn}: image {i}: detection and ground-truth masks must share H, W, got "
                                 f"{dm.shape} and {gm.shape}")
            masks.append((dm, gm))
        dets.append((db.astype(np.float64), ds.astype(np.float64), dl.astype(np.int64)))
        gts.append((gb.astype(np.float64), gl.astype(np.int64)))
    return dets, gts, masks if segm else None


def evaluate_detections(detections, ground_truth, *, iou_thresholds=COCO_IOU_THRESHOLDS, max_dets: int = 100,
                        num_classes: int | None = None, iou_type: str = "bbox") -> dict:
    """COCO-style box (``iou_type="bbox"``) or mask (``"segm"``) evaluation (see the module docstring).

    Returns {"map" (mean over thresholds and classes), "map50" (at t=0.5 when 0.5 is among the
    thresholds, else None), "ap" (T, K) per threshold and class (NaN: no ground truth of that class),
    "precision" (T, 101, K) the interpolated precision at ``RECALL_POINTS`` (NaN: no ground truth),
    "recall" (T, K) the largest recall reached, "iou_thresholds", "classes" (the K class ids)}.
    Classes are 0..num_classes-1, or the labels seen when ``num_classes`` is None. With
    ``iou_type="segm"`` every entry carries its masks last: detections (boxes, scores, labels,
    masks (D, H, W)), ground truth (boxes, labels, masks (G, H, W)), matched by mask IoU.
    """
    fn = "evaluate_detections"
    if not isinstance(iou_type, str) or iou_type not in IOU_TYPES:
        raise ValueError(f"{fn}: iou_type must be 'bbox' or 'segm', got {iou_type!r}")
    dets, gts, masks = _check_dets(fn, detections, ground_truth, segm=iou_type == "segm")
    thr = np.atleast_1d(np.asarray(iou_thresholds, np.float64))
    if thr.ndim != 1 or not thr.size or np.any(~np.isfinite(thr)) or np.any(thr < 0) or np.any(thr > 1):
        raise ValueError(f"{fn}: iou_thresholds must be numbers in [0, 1], got {np.asarray(iou_thresholds).tolist()}")
    if isinstance(max_dets, bool) or not isinstance(max_dets, (int, np.integer)) or max_dets < 1:
        raise ValueError(f"{fn}: max_dets must be a positive integer, got {max_dets!r}")
    if num_classes is None:
        seen = [l for _, _, l in dets] + [l for _, l in gts]
        classes = np.unique(np.concatenate(seen)) if seen else np.zeros(0, np.int64)
    else:
        classes = np.arange(_check_classes(fn, num_classes))
        for i, ((_, _, dl), (_, gl)) in enumerate(zip(dets, gts)):
            lab = np.concatenate([dl, gl])
            if lab.size and (lab.min() < 0 or lab.max() >= num_classes):
                raise ValueError(f"{fn}: image {i}: labels must be in [0, {num_classes}), got {lab.min()}..{lab.max()}")
    t_eff = np.minimum(thr, 1 - 1e-10)
    n_t, n_k = len(thr), len(classes)
    precision = np.full((n_t, len(RECALL_POINTS), n_k), np.nan)
    recall = np.full((n_t, n_k), np.nan)
    for k, cls in enumerate(classes):
        scores_all, tp_all, n_gt = [], [], 0
        for im, ((db, ds, dl), (gb, gl)) in enumerate(zip(dets, gts)):
            d_sel = np.nonzero(dl == cls)[0]
            d_sel = d_sel[np.argsort(-ds[d_sel], kind="mergesort")][:max_dets]
            g_sel = gl == cls
            g = gb[g_sel]
            n_gt += len(g)
            if not len(d_sel):
                continue
            tp = np.zeros((n_t, len(d_sel)), bool)
            if len(g):
                if masks is None:
                    ious = box_iou_numpy(db[d_sel], g)
                else:
                    ious = mask_iou_numpy(masks[im][0][d_sel], masks[im][1][g_sel])
                for ti, t in enumerate(t_eff):
                    taken = np.zeros(len(g), bool)
                    for di in range(len(d_sel)):
                        best, m = t, -1
                        for gi in range(len(g)):
                            if taken[gi] or ious[di, gi] < best:
                                continue
                            best, m = ious[di, gi], gi
                        if m >= 0:
                            taken[m] = True
                            tp[ti, di] = True
            scores_all.append(ds[d_sel])
            tp_all.append(tp)
        if n_gt == 0:
            continue
        if not scores_all:
            precision[:, :, k], recall[:, k] = 0.0, 0.0
            continue
        s = np.concatenate(scores_all)
        order = np.argsort(-s, kind="mergesort")
        tp = np.concatenate(tp_all, axis=1)[:, order]
        tps, fps = np.cumsum(tp, axis=1).astype(np.float64), np.cumsum(~tp, axis=1).astype(np.float64)
        for ti in range(n_t):
            rc = tps[ti] / n_gt
            pr = tps[ti] / (tps[ti] + fps[ti] + np.spacing(1))
            recall[ti, k] = rc[-1] if len(rc) else 0.0
            pr = np.maximum.accumulate(pr[::-1])[::-1]
            inds = np.searchsorted(rc, RECALL_POINTS, side="left")
            q = np.zeros(len(RECALL_POINTS))
            ok = inds < len(pr)
            q[ok] = pr[inds[ok]]
            precision[ti, :, k] = q
    ap = np.full((n_t, n_k), np.nan)                    # a class's column is all NaN (no ground truth) or all set
    has_gt = ~np.isnan(precision[:, 0, :])
    ap[has_gt] = precision.mean(axis=1)[has_gt]
    has = ~np.isnan(ap)
    mean = float(ap[has].mean()) if has.any() else float("nan")
    at50 = np.nonzero(np.isclose(thr, 0.5))[0]
    map50 = None
    if at50.size:
        row = ap[at50[0]]
        map50 = float(row[~np.isnan(row)].mean()) if np.any(~np.isnan(row)) else float("nan")
    return {"map": mean, "map50": map50, "ap": ap, "precision": precision, "recall": recall,
            "iou_thresholds": thr, "classes": classes}


def precision_recall_curve(result: dict, iou_threshold: float = 0.5, cls=None):
    """(recall points (101,), precision (101,)) from ``evaluate_detections``'s result at one IoU
    threshold: one class (``cls``, a class id) or the mean over the classes with ground truth."""
    thr = np.asarray(result["iou_thresholds"])
    hit = np.nonzero(np.isclose(thr, iou_threshold))[0]
    if not hit.size:
        raise ValueError(f"precision_recall_curve: iou_threshold {iou_threshold!r} was not evaluated "
                         f"(thresholds {thr.tolist()})")
    p = result["precision"][hit[0]]
    if cls is None:
        has_gt = ~np.isnan(p[0])
        return RECALL_POINTS, p[:, has_gt].mean(axis=1) if has_gt.any() else np.full(len(RECALL_POINTS), np.nan)
    where = np.nonzero(np.asarray(result["classes"]) == cls)[0]
    if not where.size:
        raise ValueError(f"precision_recall_curve: class {cls!r} not among the evaluated classes")
    return RECALL_POINTS, p[:, where[0]]
