"""jaxnet.detection.metrics: mean IoU against hand counts, COCO-style mAP against pycocotools on the
same random predictions (boxes, and masks with iou_type="segm"), mask IoU by hand, precision-recall
curves, bad inputs. NumPy only (no compiles)."""

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


def _coco_stats(dets, gts, n_classes, iou_type="bbox", size=100):
    """pycocotools' COCOeval on the same inputs. With iou_type "segm" the entries carry masks last
    (dets (boxes, scores, labels, masks), gts (boxes, labels, masks)): each mask goes in as
    compressed RLE (pycocotools.mask.encode of a Fortran-ordered uint8 array), the ground truth's
    'area' is its pixel count, and the results carry no 'bbox' (loadRes would take the box branch)."""
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    segm = iou_type == "segm"
    rle = lambda m: mask_utils.encode(np.asfortranarray(np.asarray(m, np.uint8)))  # noqa: E731
    images = [{"id": i + 1, "width": size, "height": size} for i in range(len(gts))]
    anns, results = [], []
    for i, (g, d) in enumerate(zip(gts, dets)):
        (gb, gl), (db, ds, dl) = g[:2], d[:3]
        gm, dm = (g[2], d[3]) if segm else ([None] * len(gb), [None] * len(db))
        for b, l, m in zip(gb, gl, gm):
            w, h = b[2] - b[0], b[3] - b[1]
            ann = {"id": len(anns) + 1, "image_id": i + 1, "category_id": int(l) + 1,
                   "bbox": [float(b[0]), float(b[1]), float(w), float(h)], "area": float(w * h), "iscrowd": 0}
            if segm:
                ann.update(segmentation=rle(m), area=float(np.sum(m)))
            anns.append(ann)
        for b, s, l, m in zip(db, ds, dl, dm):
            res = {"image_id": i + 1, "category_id": int(l) + 1, "score": float(s)}
            if segm:
                res["segmentation"] = rle(m)
            else:
                res["bbox"] = [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]
            results.append(res)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": anns,
                      "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
        gt.createIndex()
        dt = gt.loadRes(results)
        ev = COCOeval(gt, dt, iou_type)
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


def _ellipse(rng, size, cx, cy, rx, ry, drop=0.05):
    """A bool (size, size) ellipse mask with a fraction ``drop`` of its pixels knocked out (so masks
    are not box-like and mask IoU differs from box IoU)."""
    yy, xx = np.mgrid[0:size, 0:size]
    return (((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1) & (rng.random((size, size)) >= drop)


def _tight_boxes(masks):
    out = np.zeros((len(masks), 4))
    for k, m in enumerate(masks):
        ys, xs = np.nonzero(m)
        if len(xs):
            out[k] = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    return out


def _random_mask_case(seed, n_images=10, n_classes=3, size=32):
    """Instance masks (ellipses with holes) and noisy, partly wrong detected masks: misses, wrong
    classes, duplicates and false positives, as in ``_random_case``."""
    rng = np.random.default_rng(seed)
    draw = lambda params: np.array([_ellipse(rng, size, *p) for p in params], bool).reshape(-1, size, size)  # noqa: E731
    dets, gts = [], []
    for _ in range(n_images):
        g = rng.integers(0, 6)
        gp = np.concatenate([rng.uniform(4, size - 4, (g, 2)), rng.uniform(2.5, 8, (g, 2))], 1)
        gm, gl = draw(gp), rng.integers(0, n_classes, g)
        keep = rng.random(g) < 0.85
        dp = gp[keep] + np.concatenate([rng.normal(0, 0.8, (keep.sum(), 2)), rng.normal(0, 0.5, (keep.sum(), 2))], 1)
        dl = np.where(rng.random(keep.sum()) < 0.85, gl[keep], rng.integers(0, n_classes, keep.sum()))
        dup = dp[: rng.integers(0, len(dp) + 1)] + rng.normal(0, 0.7, (1, 4))                # duplicates
        nf = rng.integers(0, 4)
        fp = np.concatenate([rng.uniform(4, size - 4, (nf, 2)), rng.uniform(2.5, 8, (nf, 2))], 1)   # false positives
        dp = np.concatenate([dp, dup, fp])
        dp[:, 2:] = np.maximum(dp[:, 2:], 1.5)
        dl = np.concatenate([dl, dl[: len(dup)], rng.integers(0, n_classes, len(fp))])
        dm = draw(dp)
        dets.append((_tight_boxes(dm), rng.random(len(dm)), dl, dm))
        gts.append((_tight_boxes(gm), gl, gm))
    return dets, gts


@pytest.mark.parametrize("seed", [0, 1])
def test_mask_map_matches_pycocotools_segm(seed):
    pytest.importorskip("pycocotools", reason="pycocotools (the dev extra) is needed to check mask mAP against COCO's code")
    dets, gts = _random_mask_case(seed)
    assert all(m.any() for d in dets for m in d[3]) and all(m.any() for g in gts for m in g[2])
    ev = _coco_stats(dets, gts, 3, iou_type="segm", size=32)
    ours = M.evaluate_detections(dets, gts, num_classes=3, iou_type="segm")
    assert 0.05 < ours["map"] < 0.95                                        # a case where the details matter
    assert ours["map"] == pytest.approx(ev.stats[0], abs=1e-12)
    assert ours["map50"] == pytest.approx(ev.stats[1], abs=1e-12)
    coco_p = ev.eval["precision"][:, :, :, 0, -1]
    np.testing.assert_allclose(np.nan_to_num(ours["precision"], nan=-1), coco_p, atol=1e-12)
    # the masks, not the boxes, were matched: box mAP of the same detections differs
    boxes_only = M.evaluate_detections([d[:3] for d in dets], [g[:2] for g in gts], num_classes=3)
    assert abs(boxes_only["map"] - ours["map"]) > 1e-3


def test_mask_iou_numpy_by_hand_and_segm_uses_the_masks():
    a = np.zeros((2, 4, 4), bool)
    a[0, :2, :2] = True                                                     # 4 pixels; a[1] empty
    b = np.zeros((3, 4, 4), np.uint8)
    b[0, 0, :] = 1                                                          # the top row: 4 pixels, 2 shared with a[0]
    b[1, :2, :2] = 1                                                        # = a[0]
    iou = M.mask_iou_numpy(a, b)                                            # b[2] empty: empty vs empty is 0
    assert iou.dtype == np.float64 and iou.shape == (2, 3)
    np.testing.assert_array_equal(iou, [[2 / 6, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_array_equal(M.mask_iou_numpy(b.astype(bool), a), iou.T)
    # same boxes, disjoint masks: box mAP 1, mask mAP 0; the true masks: mask mAP 1
    gm = np.zeros((1, 8, 8), bool)
    gm[0, 0:4, 0:4] = True
    gm[0, 0:2, 0:2] = False                                                 # an L-ish shape inside the 4x4 box
    other = np.zeros_like(gm)
    other[0, 0:2, 0:2] = True
    other[0, 3, 3] = True                                                   # inside the same box, no shared pixel
    box, lab = np.array([[0.0, 0, 4, 4]]), np.array([0])
    gts = [(box, lab, gm)]
    assert M.evaluate_detections([(box, [0.9], lab)], [(box, lab)])["map"] == pytest.approx(1.0, abs=1e-12)
    assert M.evaluate_detections([(box, [0.9], lab, other)], gts, iou_type="segm")["map"] == 0.0
    assert M.evaluate_detections([(box, [0.9], lab, gm.astype(np.int64))], gts, iou_type="segm")["map"] == pytest.approx(
        1.0, abs=1e-12)
    # an image with no detections (masks (0, H, W)) and one with nothing at all still evaluates
    no_det = (np.zeros((0, 4)), np.zeros(0), np.zeros(0, int), np.zeros((0, 8, 8), bool))
    no_gt = (np.zeros((0, 4)), np.zeros(0, int), np.zeros((0, 8, 8), bool))
    r = M.evaluate_detections([(box, [0.9], lab, gm), no_det, no_det], [gts[0], gts[0], no_gt], iou_type="segm")
    assert r["ap"][0, 0] == pytest.approx(51 / 101, abs=1e-12)               # recall stops at 1/2 with precision 1


_m = lambda *shape: np.zeros(shape, bool)  # noqa: E731
_D1 = (np.array([[0.0, 0, 2, 2]]), [1.0], [0])
_G1 = (np.array([[0.0, 0, 2, 2]]), [0])


@pytest.mark.parametrize("call, message", [
    (lambda: M.evaluate_detections([_D1], [_G1], iou_type="mask"), "evaluate_detections: iou_type must be 'bbox' or 'segm'"),
    (lambda: M.evaluate_detections([_D1], [_G1 + (_m(1, 4, 4),)], iou_type="segm"),
     "evaluate_detections: image 0: with iou_type='segm' detections must be (boxes, scores, labels, masks)"),
    (lambda: M.evaluate_detections([_D1 + (_m(2, 4, 4),)], [_G1 + (_m(1, 4, 4),)], iou_type="segm"),
     "evaluate_detections: image 0: detection masks must be (n, H, W) with one mask per box (n=1), got (2, 4, 4)"),
    (lambda: M.evaluate_detections([_D1 + (_m(1, 4, 4),)], [_G1 + (_m(4, 4),)], iou_type="segm"),
     "evaluate_detections: image 0: ground-truth masks must be (n, H, W)"),
    (lambda: M.evaluate_detections([_D1 + (_m(1, 4, 4),)], [_G1 + (_m(1, 4, 5),)], iou_type="segm"),
     "evaluate_detections: image 0: detection and ground-truth masks must share H, W, got (1, 4, 4) and (1, 4, 5)"),
    (lambda: M.evaluate_detections([_D1 + (np.full((1, 4, 4), 0.5),)], [_G1 + (_m(1, 4, 4),)], iou_type="segm"),
     "evaluate_detections: image 0: detection masks must be bool or 0/1"),
    (lambda: M.mask_iou_numpy(_m(2, 4, 4), _m(1, 4, 5)), "mask_iou_numpy: a and b must be (n, H, W) and (m, H, W)"),
    (lambda: M.mask_iou_numpy(_m(4, 4), _m(1, 4, 4)), "mask_iou_numpy: a and b must be"),
    (lambda: M.mask_iou_numpy(np.full((1, 2, 2), 2), _m(1, 2, 2)), "mask_iou_numpy: masks must be bool or 0/1"),
])
def test_mask_bad_inputs_raise_one_line(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


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
