"""The YOLO pipeline end to end on real scenes: padded ground truth (``scenes.make_scenes``) ->
``yolo_targets`` -> the "perfect" S x S x (5B + C) tensor built from the targets -> ``yolo_decode``
-> class-aware ``nms`` (vmapped over the batch, score threshold) -> ``evaluate_detections``.

The perfect tensor (predictor 0 of each responsible cell = the target's offsets, sqrt w, sqrt h and
confidence 1, the one-hot class; everything else 0) decodes to the ground-truth boxes, survives NMS
alone and scores mAP 1 exactly, and its YOLO loss is 0. Shifting every predicted box by a fraction
f of its own width (or height) gives every box the IoU (1 - f) / (1 + f) with its object, so the
thresholds it clears -- and with them mAP@0.5 and mAP@[.5:.95] -- follow in NumPy.
One jitted function (one compile) serves the three predictions.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.detection import make_scenes, metrics
from jaxnet.detection.boxes import box_iou_numpy, nms
from jaxnet.detection.losses import yolo_decode, yolo_loss, yolo_targets

SIZE, S, B, N_SCENES = 64, 8, 2, 8
CELL = SIZE / S


def _cells(boxes):
    """Row-major cell index of each box centre (NumPy, the rule of yolo_targets)."""
    c = np.clip(np.floor((boxes[:, :2] + boxes[:, 2:]) / 2 / CELL), 0, S - 1).astype(int)
    return c[:, 1] * S + c[:, 0]


@pytest.fixture(scope="module")
def scenes():
    """The first N_SCENES of 16 val scenes (1-4 digits on 64x64) in which no two object centres
    share a cell (then every object has its own responsible cell) and no two boxes overlap with
    IoU > 0.3 (so class-aware NMS at 0.5 cannot remove a true box)."""
    sc = make_scenes(16, split="val", seed=1, size=SIZE, min_objects=1, max_objects=4)
    keep = []
    for i in range(len(sc)):
        b = sc.boxes[i][sc.valid[i]]
        iou = box_iou_numpy(b, b) - np.eye(len(b))
        if len(set(_cells(b))) == len(b) and iou.max() <= 0.3:
            keep.append(i)
    assert len(keep) >= N_SCENES
    sc = sc.take(np.asarray(keep[:N_SCENES]))
    assert sc.valid.sum() >= 16 and sc.valid.sum(1).max() >= 3              # several objects per scene, not a toy
    return sc


@jax.jit
def _pipeline(boxes, labels, valid, shift):
    """shift (2,): (fx, fy), each predicted box moved by fx of its width and fy of its height."""
    obj, box, cls = yolo_targets(boxes, labels, valid, grid=S, image_size=SIZE)
    n_cls = 10
    x = box[..., 0] + shift[0] * box[..., 2] * S                             # w as a fraction of the image -> cells
    y = box[..., 1] + shift[1] * box[..., 3] * S
    p0 = jnp.stack([x, y, jnp.sqrt(box[..., 2]), jnp.sqrt(box[..., 3]), obj], -1) * obj[..., None]
    probs = jax.nn.one_hot(cls, n_cls) * obj[..., None]
    pred = jnp.concatenate([p0, jnp.zeros_like(p0), probs], -1)            # predictor 1 all zeros
    loss_one = yolo_loss(pred, obj, box, cls, num_boxes=B, conf_target="one")
    loss_iou = yolo_loss(pred, obj, box, cls, num_boxes=B, conf_target="iou")
    dboxes, dscores, dlabels = yolo_decode(pred, num_boxes=B, image_size=SIZE)
    idx, keep = jax.vmap(lambda b, s, c: nms(b, s, iou_threshold=0.5, max_output=10, score_threshold=0.5,
                                             classes=c))(dboxes, dscores, dlabels)
    return {"pred": pred, "loss_one": loss_one, "loss_iou": loss_iou, "boxes": dboxes, "scores": dscores,
            "labels": dlabels, "idx": idx, "keep": keep}


def _run(sc, fx=0.0, fy=0.0):
    out = jax.device_get(_pipeline(sc.boxes, sc.labels, sc.valid, np.array([fx, fy], np.float32)))
    dets = []
    for i in range(len(sc)):
        k = out["idx"][i][out["keep"][i]]
        dets.append((out["boxes"][i][k].astype(np.float64), out["scores"][i][k], out["labels"][i][k]))
    return out, dets


def test_perfect_prediction_decodes_to_the_ground_truth_and_scores_map_1(scenes):
    out, dets = _run(scenes)
    gts = metrics.unpad(scenes.boxes, scenes.labels, scenes.valid)
    for i, (gb, gl) in enumerate(gts):
        resp = _cells(gb) * B                                               # predictor 0 of each object's cell
        np.testing.assert_allclose(out["boxes"][i][resp], gb, atol=1e-4, rtol=0)
        np.testing.assert_array_equal(out["labels"][i][resp], gl)
        assert np.all(out["scores"][i][resp] == 1.0)
        # NMS keeps exactly the responsible predictors: every other score is 0 < score_threshold
        assert sorted(out["idx"][i][out["keep"][i]].tolist()) == sorted(resp.tolist())
    assert np.count_nonzero(out["scores"]) == scenes.valid.sum()
    r = metrics.evaluate_detections(dets, gts, num_classes=10)
    assert r["map"] == 1.0 and r["map50"] == 1.0
    assert abs(float(out["loss_one"])) <= 1e-12                             # every term is (a - a)^2 or 0^2
    assert 0 <= float(out["loss_iou"]) < 1e-8                               # (1 - IoU)^2 with IoU 1 up to float32
    # the tensor's layout: predictor 0 = (x, y, sqrt w, sqrt h, 1) in the object cells, predictor 1 zero
    pred = out["pred"]
    assert np.all(pred[..., 5:10] == 0) and pred[..., 4].sum() == scenes.valid.sum()
    np.testing.assert_array_equal(pred[..., 10:].sum(-1), pred[..., 4])


@pytest.mark.parametrize("fx, fy", [(0.1, 0.0), (0.0, 0.2), (0.4, 0.0)])
def test_shifted_boxes_lose_the_map_numpy_predicts(scenes, fx, fy):
    out, dets = _run(scenes, fx, fy)
    gts = metrics.unpad(scenes.boxes, scenes.labels, scenes.valid)
    f = fx + fy                                                             # one of them is 0
    iou_own = (1 - f) / (1 + f)                                             # shift by f of the side along one axis
    thr = metrics.COCO_IOU_THRESHOLDS
    for i, ((gb, _), (db, _, _)) in enumerate(zip(gts, dets)):
        w, h = gb[:, 2] - gb[:, 0], gb[:, 3] - gb[:, 1]
        want = gb + np.stack([fx * w, fy * h, fx * w, fy * h], 1)
        resp = _cells(gb) * B
        np.testing.assert_allclose(out["boxes"][i][resp], want, atol=1e-4, rtol=0)
        assert len(db) == len(gb)                                           # NMS kept every shifted box
        iou = box_iou_numpy(want, gb)
        np.testing.assert_allclose(np.diag(iou), iou_own, atol=1e-5)
        assert (iou - np.diag(np.diag(iou))).max() < 0.5                   # never a match for another object
    # a box is a true positive at t exactly when (1 - f) / (1 + f) >= t, for every object alike:
    # AP is 1 at those thresholds and 0 at the others
    hits = iou_own >= thr
    assert np.all(np.abs(iou_own - thr) > 1e-3)                             # no threshold within float noise
    r = metrics.evaluate_detections(dets, gts, num_classes=10)
    assert r["map50"] == (1.0 if hits[0] else 0.0)
    assert r["map"] == pytest.approx(hits.mean(), abs=1e-12)
    # the loss sees only the moved centres: lambda_coord * mean over images of sum (f * side * S)^2
    w, h = [(scenes.boxes[..., k + 2] - scenes.boxes[..., k]) / SIZE for k in (0, 1)]
    coord = 5.0 * np.sum(scenes.valid * ((fx * w * S) ** 2 + (fy * h * S) ** 2)) / len(scenes)
    assert float(out["loss_one"]) == pytest.approx(coord, rel=1e-5)
