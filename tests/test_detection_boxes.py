"""jaxnet.detection.boxes: IoU and NMS against NumPy references on random boxes, encode/decode
round trips, jit / vmap, bad inputs. Inputs are NumPy; each jitted function compiles once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.detection import boxes as bx


def random_boxes(rng, n, size=64.0, min_side=0.0):
    xy = rng.uniform(0, size * 0.8, (n, 2))
    wh = rng.uniform(min_side, size * 0.4, (n, 2))
    return np.concatenate([xy, xy + wh], 1).astype(np.float32)


def test_iou_matches_numpy_reference_and_edge_cases():
    rng = np.random.default_rng(0)
    a, b = random_boxes(rng, 37), random_boxes(rng, 23)
    a[0] = [5, 5, 5, 9]                                             # zero width
    b[0] = a[1]                                                     # identical box
    b[1] = [a[2, 2], a[2, 1], a[2, 2] + 4, a[2, 3]]                 # touching edge: IoU 0
    got = np.asarray(jax.jit(bx.box_iou)(a, b))
    want = bx.box_iou_numpy(a, b)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert got.shape == (37, 23) and np.all(got[0] == 0) and got[1, 0] == pytest.approx(1.0)
    assert got[2, 1] == 0 and 0.05 < got.max() and np.all((got >= 0) & (got <= 1))
    # a hand case: [0,0,2,2] vs [1,1,3,3] overlap 1, union 7
    assert bx.box_iou_numpy([[0, 0, 2, 2]], [[1, 1, 3, 3]])[0, 0] == pytest.approx(1 / 7)


def test_nms_matches_numpy_reference_on_random_boxes():
    rng = np.random.default_rng(1)
    n, max_out = 60, 64
    run = jax.jit(jax.vmap(lambda b, s, c: bx.nms(b, s, iou_threshold=0.4, max_output=max_out, classes=c)))
    # clustered boxes so that suppression happens; two classes (class-aware NMS) in the second half
    centres = rng.uniform(10, 54, (6, 2))
    batch = []
    for t in range(6):
        c = centres[rng.integers(6, size=n)] + rng.normal(0, 3, (n, 2))
        wh = rng.uniform(8, 20, (n, 2))
        boxes = np.concatenate([c - wh / 2, c + wh / 2], 1).astype(np.float32)
        classes = (rng.integers(2, size=n) if t >= 3 else np.zeros(n)).astype(np.int32)
        batch.append((boxes, rng.permutation(n).astype(np.float32) / n, classes))
    b, s, c = (np.stack(x) for x in zip(*batch))
    idx, valid = (np.asarray(a) for a in run(b, s, c))
    assert idx.shape == valid.shape == (6, max_out) and idx.dtype == np.int32
    total = 0
    for t in range(6):
        want = bx.nms_numpy(b[t], s[t], 0.4, classes=c[t])
        k = int(valid[t].sum())
        assert np.all(valid[t, :k]) and not np.any(valid[t, k:])    # real entries first, then padding
        np.testing.assert_array_equal(idx[t, :k], want)
        assert np.all(idx[t, k:] == 0)
        total += k
    assert 6 * 6 <= total < 6 * n                                   # something kept, something suppressed


def test_nms_truncation_threshold_and_score_threshold():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [40, 40, 50, 50]], np.float32)
    scores = np.array([0.9, 0.8, 0.7, 0.1], np.float32)
    f = jax.jit(lambda b, s, t: bx.nms(b, s, iou_threshold=0.5, max_output=2, score_threshold=t))
    idx, valid = f(boxes, scores, 0.0)
    assert idx.tolist() == [0, 2] and valid.tolist() == [True, True]          # box 1 suppressed, cut at 2
    idx, valid = f(boxes, scores, 0.75)
    assert idx.tolist() == [0, 0] and valid.tolist() == [True, False]        # only box 0 scores >= 0.75
    idx, valid = bx.nms(boxes[:0], scores[:0], max_output=3)
    assert not np.asarray(valid).any()


def test_encode_decode_round_trip_and_values():
    rng = np.random.default_rng(2)
    anchors = bx.anchor_boxes(64, 16, sizes=(16.0, 32.0), ratios=(0.5, 1.0, 2.0))
    assert anchors.shape == (4 * 4 * 6, 4)
    a = anchors[5]                                                  # cell (0, 0), size 32, ratio 2
    np.testing.assert_allclose([a[2] - a[0], a[3] - a[1]], [32 / np.sqrt(2.0), 32 * np.sqrt(2.0)], rtol=1e-6)
    gt = random_boxes(rng, len(anchors), min_side=2.0)
    # the parameterisation by hand in slot 0: a box shifted by half the anchor's width and twice as tall
    anchors, gt[0] = anchors.copy(), [5.0, 0, 15, 20]
    anchors[0] = [0.0, 5, 10, 15]
    w = (10.0, 10.0, 5.0, 5.0)
    f = jax.jit(lambda g, a: (bx.encode_boxes(g, a, w), bx.decode_boxes(bx.encode_boxes(g, a, w), a, w)))
    enc, dec = (np.asarray(x) for x in f(gt, anchors))
    np.testing.assert_allclose(enc[0], [5.0, 0.0, 0.0, 5 * np.log(2.0)], atol=1e-5)
    np.testing.assert_allclose(dec, gt, rtol=1e-4, atol=1e-3)
    cells = bx.grid_cells(64, 4)
    assert cells.shape == (16, 4) and cells[5].tolist() == [16, 16, 32, 32] and cells[1].tolist() == [16, 0, 32, 16]


@pytest.mark.parametrize("call, message", [
    (lambda: bx.box_iou(np.zeros((3, 5)), np.zeros((2, 4))), "box_iou: a must have shape (..., 4)"),
    (lambda: bx.box_iou(np.array([[2.0, 0, 1, 1]]), np.zeros((2, 4))), "box_iou: a has negative sizes"),
    (lambda: bx.box_iou(np.zeros((2, 3, 4)), np.zeros((3, 2, 4))), "box_iou: a (2, 3, 4) and b (3, 2, 4)"),
    (lambda: bx.nms(np.zeros((3, 4)), np.zeros(2)), "nms: boxes must be (N, 4) and scores (N,)"),
    (lambda: bx.nms(np.zeros((3, 4)), np.zeros(3), iou_threshold=1.5), "nms: iou_threshold must be"),
    (lambda: bx.nms(np.zeros((3, 4)), np.zeros(3), max_output=0), "nms: max_output must be"),
    (lambda: bx.nms(np.zeros((3, 4)), np.zeros(3), classes=np.zeros(3)), "nms: classes must be integers"),
    (lambda: bx.encode_boxes(np.zeros((2, 4)), np.zeros((2, 4)), (1, 1, 0, 1)), "encode_boxes: weights must be"),
    (lambda: bx.decode_boxes(np.zeros((2, 3)), np.zeros((2, 4))), "decode_boxes: deltas must have shape"),
    (lambda: bx.grid_cells(64, 0), "grid_cells: grid must be"),
    (lambda: bx.anchor_boxes(64, 16, sizes=(-1.0,)), "anchor_boxes: sizes and ratios"),
    (lambda: bx.box_area(np.array([[0, 0, np.nan, 1.0]])), "box_area: boxes has NaN"),
])
def test_bad_inputs_raise_one_line(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- jaxnet.detection.losses: the YOLO composite loss (kept here beside the box code it builds on) ----

from jaxnet.detection import losses as L  # noqa: E402

targets = jax.jit(L.yolo_targets, static_argnames=("grid", "image_size"))   # one compile for (1, 3, 4) inputs


def _hand_case(x0=0.5):
    """S=2, B=2, C=2, one 16x32 object centred at (48, 16) of a 64x64 image: cell (row 0, column 1),
    offsets (0.5, 0.5), size (0.25, 0.5) of the image."""
    pred = np.zeros((1, 2, 2, 12), np.float32)
    pred[..., 4] = pred[..., 9] = 0.1                                       # every predictor's confidence
    pred[0, 0, 1, :5] = [x0, 0.5, 0.5, np.sqrt(0.5), 0.6]                   # predictor 0: the object's box
    pred[0, 0, 1, 5:10] = [0.1, 0.9, 0.3, 0.3, 0.2]                         # predictor 1: far away, IoU 0
    pred[0, 0, 1, 10:] = [0.3, 0.7]
    pred[0, 1, 0, 10:] = [0.9, 0.1]                                         # class scores of empty cells don't count
    boxes = np.array([[[40.0, 0, 56, 32], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    return pred, boxes, np.array([[1, -1, -1]], np.int32), np.array([[True, False, False]])


def test_yolo_targets_and_loss_by_hand():
    pred, boxes, labels, valid = _hand_case()
    obj, box, cls = targets(boxes, labels, valid, grid=2, image_size=64)
    assert np.asarray(obj).tolist() == [[[0, 1], [0, 0]]] and int(cls[0, 0, 1]) == 1
    np.testing.assert_allclose(np.asarray(box[0, 0, 1]), [0.5, 0.5, 0.25, 0.5])
    f = jax.jit(lambda p, o, b, c: L.yolo_loss(p, o, b, c, num_boxes=2, return_parts=True))
    loss, parts = f(pred, obj, box, cls)
    # coords exact (0); object conf (0.6 - IoU 1)^2; no-object 0.5 * (0.2^2 + 6 * 0.1^2); class 0.3^2 + 0.3^2
    want = {"coord_xy": 0.0, "coord_wh": 0.0, "obj": 0.16, "noobj": 0.05, "class": 0.18}
    for k, v in want.items():
        assert float(parts[k]) == pytest.approx(v, abs=1e-6), k
    assert float(loss) == pytest.approx(0.39, abs=1e-6)
    # predictor 0 shifted right by 0.2 of a cell: IoU 0.075 / 0.175 = 3/7, still responsible
    pred2 = _hand_case(x0=0.7)[0]
    loss2, parts2 = f(pred2, obj, box, cls)
    assert float(parts2["coord_xy"]) == pytest.approx(5 * 0.2 ** 2, abs=1e-6)
    assert float(parts2["obj"]) == pytest.approx((0.6 - 3 / 7) ** 2, abs=1e-6)
    assert float(loss2) == pytest.approx(0.2 + (0.6 - 3 / 7) ** 2 + 0.05 + 0.18, abs=1e-6)


def test_yolo_targets_collision_keeps_the_larger_box():
    boxes = np.array([[[0, 0, 10, 10], [2, 2, 30, 30], [40, 40, 50, 50]]], np.float32)
    labels, valid = np.array([[3, 4, 5]], np.int32), np.array([[True, True, False]])
    obj, box, cls = targets(boxes, labels, valid, grid=2, image_size=64)
    assert np.asarray(obj).sum() == 1 and int(cls[0, 0, 0]) == 4               # the 28x28 box wins; invalid slot ignored
    np.testing.assert_allclose(np.asarray(box[0, 0, 0]), [16 / 32, 16 / 32, 28 / 64, 28 / 64], rtol=1e-6)


def test_yolo_loss_grad_matches_finite_differences(x64):
    """With conf_target="one" the loss is a plain function of pred (the responsible predictor is
    piecewise constant), so its gradient is the finite differences'. (With "iou" the IoU target is
    held constant on purpose, stop_gradient, and finite differences would see it move.)"""
    pred = _hand_case(x0=0.7)[0]
    obj, box, cls = np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2), np.int32)
    obj[0, 0, 1], box[0, 0, 1], cls[0, 0, 1] = 1, [0.5, 0.5, 0.25, 0.5], 1       # the hand case's targets
    rng = np.random.default_rng(0)
    pred = pred.astype(np.float64) + 0.05 * rng.standard_normal(pred.shape)
    f = lambda p: L.yolo_loss(p, obj, box, cls, num_boxes=2, conf_target="one")   # noqa: E731
    loss, grad = jax.jit(f), jax.jit(jax.grad(f))
    g = np.asarray(grad(pred))
    assert np.all(np.isfinite(g)) and np.abs(g).max() > 0.1
    eps = 1e-6
    for idx in [(0, 0, 1, 0), (0, 0, 1, 3), (0, 0, 1, 4), (0, 0, 1, 9), (0, 1, 1, 4), (0, 0, 1, 11), (0, 1, 0, 11)]:
        d = np.zeros_like(pred)
        d[idx] = eps
        fd = (float(loss(pred + d)) - float(loss(pred - d))) / (2 * eps)
        assert g[idx] == pytest.approx(fd, rel=1e-5, abs=1e-8), idx


@pytest.mark.parametrize("call, message", [
    (lambda: L.yolo_loss(np.zeros((1, 2, 2, 10)), np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2), int)),
     "yolo_loss: pred must be (N, S, S, 5B + C) with B=2"),
    (lambda: L.yolo_loss(np.zeros((1, 2, 2, 12)), np.zeros((1, 3, 3)), np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2), int)),
     "yolo_loss: targets must be"),
    (lambda: L.yolo_loss(np.zeros((1, 2, 2, 12)), np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2), int),
                         lambda_coord=-1.0), "yolo_loss: lambda_coord must be"),
    (lambda: L.yolo_loss(np.zeros((1, 2, 2, 12)), np.zeros((1, 2, 2)), np.zeros((1, 2, 2, 4)), np.zeros((1, 2, 2), int),
                         conf_target="half"), "yolo_loss: conf_target must be"),
    (lambda: L.yolo_targets(np.zeros((1, 2, 5)), np.zeros((1, 2)), np.zeros((1, 2)), grid=2, image_size=64),
     "yolo_targets: boxes must be (N, K, 4)"),
    (lambda: L.yolo_targets(np.zeros((1, 2, 4)), np.zeros((1, 2)), np.zeros((1, 2)), grid=0, image_size=64),
     "yolo_targets: grid must be"),
    (lambda: L.yolo_decode(np.zeros((1, 2, 2, 10)), image_size=64), "yolo_decode: pred must be"),
    (lambda: L.yolo_decode(np.zeros((1, 2, 2, 12)), image_size=-64), "yolo_decode: image_size must be a positive"),
    (lambda: L.yolo_decode(np.zeros((1, 2, 2, 12)), image_size="64"), "yolo_decode: image_size must be a positive"),
])
def test_yolo_bad_inputs_raise_one_line(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert message in str(e.value) and "\n" not in str(e.value)
