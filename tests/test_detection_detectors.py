"""jaxnet.detection.detectors: the two detectors' targets, mask pasting and class oracle by hand; the
composed losses' hand-backward gradients against autodiff (float64); shapes of the detections; bad
inputs. (The experiments that train them: tests/test_exp_detection.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.detection import detectors as D
from jaxnet.detection.boxes import decode_boxes

pytestmark = pytest.mark.xdist_group("detection_detectors")


def test_rpn_targets_by_hand():
    anchors = np.array([[0, 0, 16, 16], [2, 2, 18, 18], [40, 40, 56, 56], [8, 0, 24, 16]], np.float32)
    boxes = np.array([[1, 1, 17, 17], [0, 0, 0, 0]], np.float32)
    valid = np.array([True, False])
    pos, neg, target = jax.jit(D.rpn_targets)(anchors, boxes, valid)
    # IoUs with the box: 225/287 = 0.78, 225/287, 0, 120/392 = 0.31 (neither positive nor negative)
    np.testing.assert_array_equal(np.asarray(pos), [True, True, False, False])
    np.testing.assert_array_equal(np.asarray(neg), [False, False, True, False])
    back = np.asarray(decode_boxes(target[:2], anchors[:2]))
    np.testing.assert_allclose(back, [[1, 1, 17.001, 17.001]] * 2, atol=1e-4)
    assert np.all(np.asarray(target[2:]) == 0)


def test_rpn_targets_each_box_gets_its_best_anchor():
    anchors = np.array([[0, 0, 32, 32], [30, 30, 62, 62]], np.float32)
    boxes = np.array([[4, 4, 16, 16]], np.float32)                   # IoU 144/1024 < 0.6 with the best anchor
    pos, neg, _ = jax.jit(D.rpn_targets)(anchors, boxes, np.array([True]))
    np.testing.assert_array_equal(np.asarray(pos), [True, False])
    np.testing.assert_array_equal(np.asarray(neg), [False, True])


def test_roi_targets_by_hand():
    boxes = np.array([[10, 10, 30, 30], [40, 40, 60, 60], [0, 0, 0, 0]], np.float32)
    labels = np.array([3, 7, 0])
    valid = np.array([True, True, False])
    rois = np.array([[10, 10, 30, 30], [12, 10, 32, 30], [0, 40, 10, 50], [40, 40, 60, 60]], np.float32)
    cls, match, fg, deltas = jax.jit(D.roi_targets)(rois, boxes, labels, valid)
    np.testing.assert_array_equal(np.asarray(cls), [4, 4, 0, 8])          # label + 1; 0 = background
    np.testing.assert_array_equal(np.asarray(fg), [True, True, False, True])
    np.testing.assert_array_equal(np.asarray(match)[[0, 1, 3]], [0, 0, 1])
    d = np.asarray(deltas)
    np.testing.assert_allclose(d[[0, 3]], 0, atol=1e-4)
    np.testing.assert_allclose(d[1], [10 * -2 / 20, 0, 0, 0], atol=1e-4)     # the box is 2 px left of the RoI
    assert np.all(d[2] == 0)


def test_paste_masks_by_hand():
    masks = np.zeros((1, 2, 4, 4), np.float32)
    masks[0, 0] = 1.0
    masks[0, 1, :, :2] = 1.0                                               # left half
    boxes = np.array([[[2, 3, 6, 11], [0, 0, 8, 8]]], np.float32)
    out = np.asarray(jax.jit(D.paste_masks, static_argnums=2)(masks, boxes, 12))
    c = np.arange(12) + 0.5
    inside = ((c >= 2) & (c <= 6))[None, :] & ((c >= 3) & (c <= 11))[:, None]
    np.testing.assert_allclose(out[0, 0], inside.astype(np.float32), atol=1e-6)
    assert np.all(out[0, 1][:8, :3] == 1) and np.all(out[0, 1][:8, 5:8] == 0)   # bilinear edge at the middle
    np.testing.assert_allclose(out[0, 1][:8, 3:5], 0.5 * np.ones((8, 2)) + [[0.25, -0.25]], atol=1e-6)
    assert np.all(out[0, 1][8:] == 0) and np.all(out[0, 1][:, 8:] == 0)


def test_relabel_with_true_classes():
    det = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], np.float32)
    gt = np.array([[1, 1, 11, 11], [19, 19, 29, 29]], np.float32)
    out = D.relabel_with_true_classes(det, np.array([5, 5, 5]), gt, np.array([2, 8]))
    np.testing.assert_array_equal(out, [2, 8, 5])


def _batch(size=32, n=2):
    from jaxnet.detection.scenes import make_scenes

    sc = make_scenes(n, split="val", seed=3, size=size, max_objects=3)
    masks = (sc.instances[..., None] == np.arange(1, 4)).astype(np.float64)
    return sc, masks


@pytest.mark.slow          # 12-16 s of compile (two value_and_grad programs of the whole detector); each op is audited
def test_two_stage_loss_hand_backward_equals_autodiff(x64):
    sc, masks = _batch()
    cfg = D.TwoStageConfig(10, image_size=32, width=2, anchor_sizes=(8.0, 16.0), pre_nms=32, num_proposals=4,
                           test_proposals=4, rpn_samples=16, roi_size=3, hidden=8, masks=True, mask_size=4,
                           mask_rois=2)
    p = jax.tree.map(lambda a: a.astype(jnp.float64), D.init_two_stage(0, cfg))
    x = sc.images.astype(np.float64)

    @jax.jit
    def grads(p):
        out = []
        for impl in ("manual", "autodiff"):
            f = lambda q: D.two_stage_loss(q, x, sc.boxes, sc.labels, sc.valid, jax.random.key(0), cfg,  # noqa: E731
                                           instance_masks=masks, impl=impl)
            out.append(jax.value_and_grad(f, has_aux=True)(p))
        return out

    ((lm, parts), gm), ((la, _), ga) = grads(p)
    assert set(parts) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box", "mask"}
    assert np.isfinite(float(lm)) and abs(float(lm) - float(la)) < 1e-12
    assert abs(float(lm) - sum(float(v) for v in parts.values())) < 1e-12
    for path, a, b in zip(jax.tree_util.tree_leaves_with_path(gm), jax.tree.leaves(gm), jax.tree.leaves(ga)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12, err_msg=str(path[0]))
    assert float(jnp.abs(gm["m3"]["w"]).sum()) > 0 and float(jnp.abs(gm["rpn_obj"]["w"]).sum()) > 0


def test_yolo_loss_hand_backward_equals_autodiff(x64):
    sc, _ = _batch()
    p = jax.tree.map(lambda a: a.astype(jnp.float64), D.init_yolo(0, 10, width=2))
    x = sc.images.astype(np.float64)

    @jax.jit
    def grads(p):
        return [jax.grad(lambda q: D.yolo_train_loss(q, x, sc.boxes, sc.labels, sc.valid, impl=i)[0])(p)
                for i in ("manual", "autodiff")]

    gm, ga = grads(p)
    for a, b in zip(jax.tree.leaves(gm), jax.tree.leaves(ga)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


def test_two_stage_loss_parts_and_both_paths_agree_forward():
    """The default tier's check of the composed two-stage loss: every part present and finite, the
    manual and autodiff paths' values equal (float32: the same forward ops)."""
    sc, masks = _batch()
    cfg = D.TwoStageConfig(10, image_size=32, width=2, anchor_sizes=(8.0, 16.0), pre_nms=32, num_proposals=4,
                           test_proposals=4, rpn_samples=16, roi_size=3, hidden=8, masks=True, mask_size=4,
                           mask_rois=2)
    p = D.init_two_stage(0, cfg)

    @jax.jit
    def losses(p):
        return [D.two_stage_loss(p, sc.images, sc.boxes, sc.labels, sc.valid, jax.random.key(0), cfg,
                                 instance_masks=masks.astype(np.float32), impl=i) for i in ("manual", "autodiff")]

    (lm, parts), (la, _) = losses(p)
    assert set(parts) == {"rpn_cls", "rpn_box", "roi_cls", "roi_box", "mask"}
    assert all(np.isfinite(float(v)) for v in parts.values()) and float(parts["rpn_cls"]) > 0
    np.testing.assert_allclose(float(lm), float(la), rtol=1e-5)


def test_detect_shapes_and_given_boxes():
    sc, _ = _batch()
    cfg = D.TwoStageConfig(10, image_size=32, width=2, anchor_sizes=(8.0, 16.0), pre_nms=32, num_proposals=4,
                           test_proposals=8, rpn_samples=16, roi_size=3, hidden=8, masks=True, mask_size=4)
    p = D.init_two_stage(0, cfg)

    @jax.jit
    def run(p, x, b, lab):
        return D.two_stage_detect(p, x, cfg, max_detections=5), D.two_stage_detect(p, x, cfg, boxes=b, labels=lab)

    out, given = run(p, sc.images, sc.boxes, sc.labels)
    assert out["boxes"].shape == (2, 5, 4) and out["masks"].shape == (2, 5, 32, 32)
    b = np.asarray(out["boxes"])
    assert np.all(b >= 0) and np.all(b <= 32) and np.all(b[..., 2:] >= b[..., :2])
    for i in range(2):
        si = np.asarray(out["scores"][i])[np.asarray(out["valid"][i])]
        assert np.all(np.diff(si) <= 1e-7)                          # highest score first
    np.testing.assert_array_equal(np.asarray(given["labels"]), sc.labels)
    assert np.all(np.asarray(given["scores"]) == 1)
    m = np.asarray(given["masks"])
    c = np.arange(32) + 0.5
    for i in range(2):
        for k in np.nonzero(sc.valid[i])[0]:
            x0, y0, x1, y1 = sc.boxes[i, k]
            outside = ~(((c >= x0) & (c <= x1))[None, :] & ((c >= y0) & (c <= y1))[:, None])
            assert np.all(m[i, k][outside] == 0) and np.all((m[i, k] >= 0) & (m[i, k] <= 1))


@pytest.mark.parametrize("make, message", [
    (lambda: D.init_two_stage(0, D.TwoStageConfig(10, num_proposals=64, pre_nms=32)), "num_proposals (64)"),
    (lambda: D.init_two_stage(0, D.TwoStageConfig(10, image_size=60)), "image_size must be a multiple of 8"),
    (lambda: D.init_two_stage(0, D.TwoStageConfig(0)), "num_classes must be an integer >= 1"),
    (lambda: D.init_two_stage(0, D.TwoStageConfig(10, image_size=32, pre_nms=1000)), "must be <= the 192 anchors"),
    (lambda: D.init_two_stage(0, (10, 64)), "expected a TwoStageConfig"),
    (lambda: D.init_yolo(0, 10, width=0), "init_yolo: width must be an integer >= 1"),
    (lambda: D.yolo_forward(D.init_yolo(0, 10, width=2), np.zeros((1, 30, 30, 3))), "images must be (N, H, W, 3)"),
    (lambda: D.two_stage_loss(D.init_two_stage(0, D.TwoStageConfig(10, width=2, masks=True)), np.zeros((1, 64, 64, 3)),
                              np.zeros((1, 2, 4)), np.zeros((1, 2), int), np.zeros((1, 2), bool), jax.random.key(0),
                              D.TwoStageConfig(10, width=2, masks=True)), "instance_masks (N, H, W, K) are needed"),
])
def test_bad_inputs_raise_one_line(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert message in str(e.value) and "\n" not in str(e.value)
