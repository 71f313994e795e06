"""Instance segmentation on digit scenes: the two-stage detector of ``experiments.detection`` with a
Mask R-CNN mask head (issue 18, task 4).

    python -m experiments.instance_segmentation [--quick] [--smoke] [--out DIR] [--seed S] [--epochs E]
                                                [--n-train N] [--n-test N] [--width W] [--lr LR]
                                                [--impl manual|autodiff]

Data: ``jaxnet.detection.scenes`` (1-6 digits on textured 64x64 canvases) with their instance maps:
each object's visible pixels (a later object pasted over an earlier one hides it there).

Model (``jaxnet.detection.detectors`` with ``masks=True``): the two-stage detector (RPN, 16
proposals per image, ``roi_align`` 5 x 5, class + box head) and a mask head: ``roi_align`` of each
RoI to 14 x 14, two 3x3 conv + ReLU, a 1x1 conv to one mask logit map per class; trained on up to
6 foreground RoIs per image with the per-pixel ``sigmoid_cross_entropy`` of the true class's map
against the instance mask resampled into the RoI by the same ``roi_align``. At test time the mask
of each detection's class is pasted into its box (bilinear) and thresholded at 0.5.

Reported on the test split: mask mAP@[.5:.95] and mask mAP@0.5 (``evaluate_detections`` with
``iou_type="segm"``: COCO's protocol on mask IoU), the box mAP of the same detections, and beside
them two upper bounds: the detector **given the true boxes' classes** (each detection relabelled
with the class of the ground-truth box it overlaps most), and the mask head **given the true boxes
and classes** (its masks on the ground-truth boxes, score 1: what the masks reach when detection
is perfect).

Outputs in ``--out``: ``results.json``; ``instance_examples.png`` (test scenes: detections and
their masks), ``instance_pr.png`` (precision-recall at IoU 0.5, masks and boxes),
``instance_curves.png`` (training loss parts and validation mask mAP@0.5 per epoch).

``--quick``: 1,500 training / 300 test scenes, 12 epochs; ``--smoke``: 48 / 16 scenes of 32x32,
width 4, 1 epoch. Full: 5,000 / 500 scenes, 24 epochs.
"""
from __future__ import annotations

import os
import time

import numpy as np

from experiments import detection as det
from experiments._common import figure, grid_legend, parse_args, print_table, save_figure, write_results

NAME = "instance_segmentation"
DESCRIPTION = "Instance segmentation: the two-stage detector with a Mask R-CNN mask head; mask mAP."


def build(args, num_classes):
    import jax

    from jaxnet.detection import detectors as D

    cfg = D.TwoStageConfig(num_classes, image_size=args.size, width=args.width, masks=True,
                           anchor_sizes=tuple(s * args.size / 64 for s in (16.0, 24.0, 32.0)),
                           mask_size=14 if args.size >= 64 else 7)
    params = D.init_two_stage(args.seed, cfg)

    def loss_fn(p, x, b, lab, v, m, key):
        return D.two_stage_loss(p, x, b, lab, v, key, cfg, instance_masks=m, impl=args.impl)

    detect = jax.jit(lambda p, x: D.two_stage_detect(p, x, cfg, impl=args.impl))
    given = jax.jit(lambda p, x, b, lab: D.two_stage_detect(p, x, cfg, boxes=b, labels=lab, impl=args.impl))
    return params, loss_fn, detect, given


def evaluate(detect, given, params, scenes, num_classes) -> tuple:
    from jaxnet.detection.metrics import evaluate_detections

    dets = det.run_detect(detect, params, scenes)
    gt_masks, gt_boxes = det.ground_truth(scenes, masks=True), det.ground_truth(scenes)
    ev = lambda d, g, kind: det.summarize(evaluate_detections(d, g, num_classes=num_classes, iou_type=kind))  # noqa: E731
    out = {"mask": ev(det.detection_lists(dets, scenes, masks=True), gt_masks, "segm"),
           "box": ev(det.detection_lists(dets, scenes), gt_boxes, "bbox"),
           "mask_true_classes": ev(det.detection_lists(dets, scenes, oracle=True, masks=True), gt_masks, "segm")}
    on_gt = {}
    for i in range(0, len(scenes), 64):
        r = given(params, scenes.images[i:i + 64], scenes.boxes[i:i + 64], scenes.labels[i:i + 64])
        for k, v in r.items():
            on_gt.setdefault(k, []).append(np.asarray(v))
    on_gt = {k: np.concatenate(v) for k, v in on_gt.items()}
    on_gt["valid"] = on_gt["valid"] & scenes.valid
    out["mask_true_boxes_and_classes"] = ev(det.detection_lists(on_gt, scenes, masks=True), gt_masks, "segm")
    return out, dets


def plot_pr(r: dict, path: str) -> str:
    fig = figure((6.4, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for key, label, style in (("mask", "masks", "C0-"), ("box", "boxes", "C1-"),
                              ("mask_true_classes", "masks, given the true classes", "C0:"),
                              ("mask_true_boxes_and_classes", "masks on the true boxes and classes", "C2--")):
        pr = r[key]["pr50"]
        ax.plot(pr["recall"], pr["precision"], style, label=f"{label} (AP@0.5 {r[key]['map50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision (mean over classes)", xlim=(0, 1), ylim=(0, 1.02),
           title="instance segmentation: precision-recall at IoU 0.5")
    grid_legend([ax])
    return save_figure(fig, path)


def plot_curves(h: dict, path: str) -> str:
    fig = figure((10, 3.8))
    a1, a2 = fig.subplots(1, 2)
    ep = np.arange(1, len(h["train_loss"]) + 1)
    for name in h["parts"][0]:
        a1.plot(ep, [p[name] for p in h["parts"]], "o-", label=name)
    a1.set(xlabel="epoch", ylabel="training loss", yscale="log", title="loss parts")
    a2.plot(ep, h["val_map50"], "o-", label="mask mAP@0.5")
    a2.set(xlabel="epoch", ylim=(0, 1), title="validation")
    grid_legend((a1, a2))
    return save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, det.add_flags, argv)
    det.settings(args, NAME)
    from jaxnet.detection.metrics import evaluate_detections

    splits = det.load(args, NAME)
    c = splits.train.num_classes
    params, loss_fn, detect, given = build(args, c)
    gt_val = det.ground_truth(splits.val, masks=True)

    def val_map50(p):
        dets = det.run_detect(detect, p, splits.val)
        return evaluate_detections(det.detection_lists(dets, splits.val, masks=True), gt_val, num_classes=c,
                                   iou_thresholds=(0.5,), iou_type="segm")["map50"]

    t0 = time.perf_counter()
    params, history = det.train_detector("mask head", loss_fn, params, splits.train, val_map50, args, with_masks=True)
    train_s = time.perf_counter() - t0
    res, dets = evaluate(detect, given, params, splits.test, c)
    os.makedirs(args.out, exist_ok=True)
    figures = {"examples": os.path.basename(det.plot_examples(splits.test, {"two_stage": dets},
                                                              os.path.join(args.out, "instance_examples.png"),
                                                              masks=dets)),
               "pr": os.path.basename(plot_pr(res, os.path.join(args.out, "instance_pr.png"))),
               "curves": os.path.basename(plot_curves(history, os.path.join(args.out, "instance_curves.png")))}
    rows = [[label, res[k]["map"], res[k]["map50"]] for k, label in (
        ("mask", "masks (mask IoU)"), ("box", "boxes of the same detections"),
        ("mask_true_classes", "masks, given the true classes"),
        ("mask_true_boxes_and_classes", "masks on the true boxes and classes"))]
    print_table(["", "mAP", "mAP@0.5"], rows,
                title=f"\ninstance segmentation on {len(splits.test)} test scenes ({int(splits.test.valid.sum())} objects)")
    out = {"data": {"n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
                    "size": args.size, "test_objects": int(splits.test.valid.sum())},
           "epochs": args.epochs, "results": res, "history": history, "train_time_s": train_s, "figures": figures}
    path = write_results(args.out, out, args)
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
