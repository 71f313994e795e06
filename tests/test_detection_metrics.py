"""jaxnet.detection.metrics: mean IoU against hand counts, COCO-style mAP against pycocotools on the
same random predictions, precision-recall curves, bad inputs. NumPy only (no compiles)."""

import contextlib
import io

import numpy as np
import pytest

from jaxnet.detection import metrics as M


def test_mean_iou_hand_case_and_ignore_index():
    target = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    r = M.mean_iou(pred, target, 4, ignore_index=255)
    # class 0: inter 1, union 3; class 1: inter 3, union 4; class 2: inter 1, union 2; class 3 absent
    np.testing.assert_allclose(r["per_class"][:3], [1 / 3, 3 / 4, 1 / 2])
    assert np.isnan(r["per_class"][3]) and r["miou"] == pytest.approx((1 / 3 + 3 / 4 + 1 / 2) / 3)
    assert r["pixel_accuracy"] == pytest.approx(5 / 7) and r["confusion"].sum() == 7
    assert M.mean_iou(target, target, 256)["miou"] == 1.0                  # no ignore: 255 is a class


@pytest.mark.parametrize("call, message", [
    (lambda: M.mean_iou(np.zeros((2, 2), int), np.zeros((2, 3), int), 3), "confusion_matrix: pred and target must"),
    (lambda: M.mean_iou(np.full((2, 2), 3), np.zeros((2, 2), int), 3), "confusion_matrix: class values must be in [0, 3)"),
    (lambda: M.mean_iou(np.zeros((2, 2)), np.zeros((2, 2)), 3), "confusion_matrix: pred and target must be integer"),
    (lambda: M.mean_iou(np.zeros(2, int), np.zeros(2, int), 0), "confusion_matrix: num_classes must be"),
    (lambda: M.evaluate_detections([], [], iou_thresholds=[0.5, 1.2]), "evaluate_detections: iou_thresholds must be"),
    (lambda: M.evaluate_detections([], [], max_dets=0), "evaluate_detections: max_dets must be"),
    (lambda: M.evaluate_detections([(np.zeros((1, 4)), [1.0], [0])], []), "evaluate_detections: detections and"),
    (lambda: M.evaluate_detections([(np.zeros((1, 3)), [1.0], [0])], [(np.zeros((0, 4)), [])]),
     "evaluate_detections: image 0: detection boxes must be (n, 4)"),
    (lambda: M.evaluate_detections([(np.array([[3.0, 0, 1, 1]]), [1.0], [0])], [(np.zeros((0, 4)), [])]),
     "evaluate_detections: image 0: detection boxes must be finite with x1 >= x0"),
    (lambda: M.evaluate_detections([(np.zeros((2, 4)), [1.0], [0, 0])], [(np.zeros((0, 4)), [])]),
     "evaluate_detections: image 0: scores/labels must be 1-D"),
    (lambda: M.evaluate_detections([(np.zeros((1, 4)), [1.0], [3])], [(np.zeros((0, 4)), [])], num_classes=3),
     "evaluate_detections: image 0: labels must be in [0, 3)"),
    (lambda: M.unpad(np.zeros((2, 3, 4)), np.zeros((2, 3)), np.zeros((2, 2))), "unpad: boxes must be (N, K, 4)"),
])
def test_bad_inputs_raise_one_line(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


def _random_case(seed, n_images=12, n_classes=3):
    """Ground truth and noisy, partly wrong detections (with misses, duplicates and false positives)."""
    rng = np.random.default_rng(seed)
    dets, gts = [], []
    for _ in range(n_images):
        g = rng.integers(0, 6)
        xy = rng.uniform(0, 60, (g, 2))
        gb = np.concatenate([xy, xy + rng.uniform(6, 30, (g, 2))], 1)
        gl = rng.integers(0, n_classes, g)
        keep = rng.random(g) < 0.85
        db = gb[keep] + rng.normal(0, 3, (keep.sum(), 4))
        dl = np.where(rng.random(keep.sum()) < 0.85, gl[keep], rng.integers(0, n_classes, keep.sum()))
        dup = db[: rng.integers(0, len(db) + 1)] + rng.normal(0, 2, (1, 4))                 # duplicates
        fxy = rng.uniform(0, 60, (rng.integers(0, 4), 2))
        fp = np.concatenate([fxy, fxy + rng.uniform(5, 25, fxy.shape)], 1)                 # false positives
        db = np.concatenate([db, dup, fp])
        dl = np.concatenate([dl, dl[: len(dup)], rng.integers(0, n_classes, len(fp))])
        db[:, 2:] = np.maximum(db[:, 2:], db[:, :2] + 0.5)
        dets.append((db, rng.random(len(db)), dl))
        gts.append((gb, gl))
    return dets, gts


def _coco_stats(dets, gts, n_classes):
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images = [{"id": i + 1, "width": 100, "height": 100} for i in range(len(gts))]
    anns, results = [], []
    for i, ((gb, gl), (db, ds, dl)) in enumerate(zip(gts, dets)):
        for b, l in zip(gb, gl):
            w, h = b[2] - b[0], b[3] - b[1]
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(l) + 1,
                         "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
        for b, s, l in zip(db, ds, dl):
            results.append({"image_id": i + 1, "category_id": int(l) + 1, "score": float(s),
                            "bbox": [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]})
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_matches_pycocotools(seed):
    pytest.importorskip("pycocotools", reason="pycocotools (the dev extra) is needed to check mAP against COCO's code")
    dets, gts = _random_case(seed)
    ev = _coco_stats(dets, gts, 3)
    ours = M.evaluate_detections(dets, gts, num_classes=3)
    assert 0.05 < ours["map"] < 0.95                                        # a case where the details matter
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-12)
    # the full precision table (T, R, K) at area "all", maxDets 100
    coco_p = ev.eval["precision"][:, :, :, 0, -1]
    np.testing.assert_allclose(np.nan_to_num(ours["precision"], nan=-1), coco_p, atol=1e-12)


def test_map_perfect_empty_and_pr_curve():
    gb = np.array([[0, 0, 10, 10], [20, 20, 30, 30.0]])
    gts = [(gb, np.array([0, 1])), (np.zeros((0, 4)), np.zeros(0, int))]
    perfect = [(gb, np.array([0.9, 0.8]), np.array([0, 1])), (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))]
    r = M.evaluate_detections(perfect, gts, num_classes=3)
    assert r["map"] == pytest.approx(1.0, abs=1e-12) and r["map50"] == pytest.approx(1.0, abs=1e-12) and np.all(np.isnan(r["ap"][:, 2]))   # class 2: no ground truth
    nothing = [(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))] * 2
    assert M.evaluate_detections(nothing, gts, num_classes=2)["map"] == 0.0
    # one hit (score .9) after one false positive (score .95): precision 1/2 up to recall 1/2 on class 0
    fp = [(np.array([[50.0, 50, 60, 60], [0, 0, 10, 10]]), np.array([0.95, 0.9]), np.array([0, 0])),
          (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))]
    gts0 = [(np.array([[0, 0, 10, 10], [30, 30, 40, 40.0]]), np.array([0, 0])), gts[1]]
    r = M.evaluate_detections(fp, gts0, iou_thresholds=[0.5])
    rec, prec = M.precision_recall_curve(r, 0.5, cls=0)
    np.testing.assert_array_equal(M.precision_recall_curve(r, 0.5)[1], prec)      # the only class with ground truth
    assert prec[0] == pytest.approx(0.5) and prec[50] == pytest.approx(0.5) and prec[51] == 0
    assert r["ap"][0, 0] == pytest.approx(51 * 0.5 / 101) and r["map50"] == r["map"]
    with pytest.raises(ValueError, match="precision_recall_curve: iou_threshold 0.75 was not evaluated"):
        M.precision_recall_curve(r, 0.75)


def test_unpad_round_trip():
    boxes = np.arange(2 * 3 * 4, dtype=float).reshape(2, 3, 4)
    valid = np.array([[True, True, False], [False, False, False]])
    labels = np.array([[1, 2, -1], [-1, -1, -1]])
    out = M.unpad(boxes, labels, valid)
    assert len(out) == 2 and out[0][0].shape == (2, 4) and out[0][1].tolist() == [1, 2] and len(out[1][0]) == 0
