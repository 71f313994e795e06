"""Object detection on digit scenes: a single-stage YOLO detector against a small two-stage detector
(region proposals + RoI Align), the detection lecture's two families (issue 18, task 3).

    python -m experiments.detection [--quick] [--smoke] [--out DIR] [--seed S] [--epochs E]
                                    [--n-train N] [--n-test N] [--width W] [--lr LR] [--impl manual|autodiff]

Data: ``jaxnet.detection.scenes.load_scenes``: 1-6 handwritten digits (25-50 % of the side) on
textured 64x64 canvases; boxes and classes; the generator's train / val / test splits.

Models (``jaxnet.detection.detectors``, every layer a registered op on the ``--impl`` backward):
the same stride-4 convolutional backbone under both heads.
- YOLO (v1): the 8 x 8 x (5B + C) tensor (B = 2, C = 10), trained with ``yolo_loss``, decoded with
  ``yolo_decode`` and class-aware NMS (IoU 0.5).
- Two-stage (Faster R-CNN in small): RPN over 3 anchors per position (16, 24, 32 px), 16 proposals
  per image (32 at test time) after NMS at 0.7, ``roi_align`` 5 x 5, a 128-unit head with C + 1
  class scores and class-specific box deltas; per-class candidates and class-aware NMS (IoU 0.5).

Both train with Adam (``--lr``), batch 32, the same epochs and data order. Reported on the test
split: COCO-style mAP@[.5:.95] and mAP@0.5 (``metrics.evaluate_detections``), the precision-recall
curve at IoU 0.5, and beside each the **upper bound of the detector given the true boxes' classes**
(each detection relabelled with the class of the ground-truth box it overlaps most: what the boxes
reach when the classification is perfect).

Outputs in ``--out``: ``results.json``; ``detection_pr.png`` (precision-recall at IoU 0.5 of both
detectors and their class-oracle bounds), ``detection_examples.png`` (test scenes: true boxes green,
detections scoring >= 0.3 red with class and score), ``detection_curves.png`` (training loss and
validation mAP@0.5 per epoch).

``--quick``: 1,500 training / 300 test scenes, 12 epochs; ``--smoke`` (the default test suite):
48 / 16 scenes of 32x32, width 4, 1 epoch. Full: 5,000 / 500 scenes, 24 epochs.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from experiments._common import figure, grid_legend, parse_args, print_table, save_figure, sized, write_results

NAME = "detection"
DESCRIPTION = "Single-stage YOLO vs a two-stage detector (RPN + RoI Align) on digit scenes: mAP, PR curves."
DETECTORS = ("yolo", "two_stage")
LABELS = {"yolo": "YOLO (single-stage)", "two_stage": "two-stage (RPN + RoI Align)"}


def add_flags(parser, full=(5000, 500, 24)) -> None:
    """The flags this experiment and ``experiments.instance_segmentation`` share."""
    parser.add_argument("--epochs", type=int, default=None, help=f"epochs (default {full[2]}; quick 12; smoke 1)")
    parser.add_argument("--n-train", type=int, default=None,
                        help=f"training scenes (default {full[0]}; quick 1500; smoke 48)")
    parser.add_argument("--n-test", type=int, default=None, help=f"test scenes (default {full[1]}; quick 300; smoke 16)")
    parser.add_argument("--width", type=int, default=None, help="backbone channels of the first stage (default 16; smoke 4)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam's learning rate")
    parser.add_argument("--impl", choices=("manual", "autodiff"), default="manual",
                        help="the ops' backward: the hand-written one (default) or autodiff")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def settings(args, name: str, full=(5000, 500, 24)) -> None:
    """Fill the size-dependent defaults, then refuse what cannot run: one stderr line, exit 2."""
    for attr, f, q, s in (("epochs", full[2], 12, 1), ("n_train", full[0], 1500, 48), ("n_test", full[1], 300, 16),
                          ("width", 16, 16, 4)):
        if getattr(args, attr) is None:
            setattr(args, attr, sized(args, f, q, s))
    args.size = sized(args, 64, 64, 32)
    args.n_val = sized(args, 200, 100, 16)
    problems = []
    for flag, v in (("--epochs", args.epochs), ("--n-train", args.n_train), ("--n-test", args.n_test),
                    ("--width", args.width), ("--batch-size", args.batch_size)):
        if v < 1:
            problems.append(f"{flag} must be >= 1, got {v}")
    if not (np.isfinite(args.lr) and args.lr > 0):
        problems.append(f"--lr must be a finite number > 0, got {args.lr}")
    if args.seed < 0:
        problems.append(f"--seed must be >= 0, got {args.seed}")
    if problems:
        print(f"experiments.{name}: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)


def load(args, name: str):
    from jaxnet.detection.scenes import load_scenes

    t0 = time.perf_counter()
    splits = load_scenes(args.n_train, args.n_val, args.n_test, seed=args.seed, size=args.size)
    n_obj = int(splits.test.valid.sum())
    print(f"digit scenes: {len(splits.train)} training, {len(splits.val)} validation, {len(splits.test)} test "
          f"({n_obj} test objects), {args.size}x{args.size} ({time.perf_counter() - t0:.1f} s)", flush=True)
    return splits


def batch_masks(instances, k):
    """Instance maps int (B, H, W) -> float32 (B, H, W, K), slot k's pixels."""
    return (instances[..., None] == np.arange(1, k + 1)).astype(np.float32)


def train_detector(label, loss_fn, params, train, evaluate_val, args, with_masks=False):
    """Adam on ``loss_fn(params, images, boxes, labels, valid, masks, key) -> (loss, parts)``; after
    each epoch ``evaluate_val(params)`` -> a number. Returns (params, history)."""
    import jax
    import optax

    from jaxnet.optim import make_optimizer

    opt = make_optimizer("adam", args.lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(p, s, x, b, lab, v, m, key):
        (loss, parts), g = jax.value_and_grad(lambda q: loss_fn(q, x, b, lab, v, m, key), has_aux=True)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss, parts

    rng = np.random.default_rng(args.seed)
    n, bs = len(train), min(args.batch_size, len(train))
    steps = n // bs
    k = train.labels.shape[1]
    history = {"train_loss": [], "parts": [], "val_map50": [], "epoch_time_s": []}
    bar = None
    if not (args.quick or args.no_progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=args.epochs * steps, desc=label, leave=False)
    key = jax.random.key(args.seed)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        losses, parts_sum = [], {}
        for s in range(steps):
            idx = np.sort(perm[s * bs:(s + 1) * bs])
            m = batch_masks(train.instances[idx], k) if with_masks else np.zeros((), np.float32)
            params, opt_state, loss, parts = step(params, opt_state, train.images[idx], train.boxes[idx],
                                                  train.labels[idx], train.valid[idx], m,
                                                  jax.random.fold_in(key, epoch * steps + s))
            losses.append(loss)
            for name, v in parts.items():
                parts_sum[name] = parts_sum.get(name, 0.0) + v
            if bar is not None:
                bar.update(1)
        mean_loss = float(np.mean([float(v) for v in losses]))
        if not np.isfinite(mean_loss):
            raise FloatingPointError(f"{label}: the training loss is {mean_loss} in epoch {epoch + 1}")
        val = evaluate_val(params)
        history["train_loss"].append(mean_loss)
        history["parts"].append({name: float(v) / steps for name, v in parts_sum.items()})
        history["val_map50"].append(val)
        history["epoch_time_s"].append(time.perf_counter() - t0)
        msg = (f"{label} epoch {epoch + 1:2d}: loss {mean_loss:.4f} | val mAP@0.5 {val:.4f} "
               f"({history['epoch_time_s'][-1]:.1f} s)")
        if bar is None:
            print(msg, flush=True)
        else:
            bar.write(msg)
    if bar is not None:
        bar.close()
    return params, history


def run_detect(detect, params, scenes, batch=64) -> dict:
    """``detect(params, images) -> dict of (N, D, ...)`` over the scenes in batches, as NumPy."""
    out = {}
    for i in range(0, len(scenes), batch):
        for name, v in detect(params, scenes.images[i:i + batch]).items():
            out.setdefault(name, []).append(np.asarray(v))
    return {name: np.concatenate(v) for name, v in out.items()}


def detection_lists(dets: dict, scenes, oracle=False, masks=False) -> list:
    """Per image (boxes, scores, labels[, masks]) of the valid detections; ``oracle``: relabelled with
    the true classes (``detectors.relabel_with_true_classes``); ``masks``: probabilities >= 0.5."""
    from jaxnet.detection.detectors import relabel_with_true_classes

    out = []
    for i in range(len(scenes)):
        ok = dets["valid"][i]
        b, s, lab = dets["boxes"][i][ok], dets["scores"][i][ok], dets["labels"][i][ok]
        if oracle:
            v = scenes.valid[i]
            lab = relabel_with_true_classes(b, lab, scenes.boxes[i][v], scenes.labels[i][v])
        out.append((b, s, lab, dets["masks"][i][ok] >= 0.5) if masks else (b, s, lab))
    return out


def ground_truth(scenes, masks=False) -> list:
    from jaxnet.detection.metrics import unpad
    from jaxnet.detection.scenes import instance_masks

    gt = unpad(scenes.boxes, scenes.labels, scenes.valid)
    if not masks:
        return gt
    inst = instance_masks(scenes)
    return [(b, lab, inst[i][scenes.valid[i]]) for i, (b, lab) in enumerate(gt)]


def summarize(result: dict) -> dict:
    from jaxnet.detection.metrics import precision_recall_curve

    rec, prec = precision_recall_curve(result, 0.5)
    return {"map": result["map"], "map50": result["map50"],
            "ap50_per_class": [None if np.isnan(a) else float(a) for a in result["ap"][0]],
            "pr50": {"recall": rec.tolist(), "precision": prec.tolist()}}


def build(name, args, num_classes):
    """(params, loss_fn, detect_fn) of one detector."""
    import jax

    from jaxnet.detection import detectors as D

    if name == "yolo":
        params = D.init_yolo(args.seed, num_classes, args.width)

        def loss_fn(p, x, b, lab, v, m, key):
            return D.yolo_train_loss(p, x, b, lab, v, impl=args.impl)

        def detect(p, x):
            boxes, scores, labels, valid = D.yolo_detect(p, x, impl=args.impl)
            return {"boxes": boxes, "scores": scores, "labels": labels, "valid": valid}
    else:
        cfg = D.TwoStageConfig(num_classes, image_size=args.size, width=args.width,
                               anchor_sizes=tuple(s * args.size / 64 for s in (16.0, 24.0, 32.0)))
        params = D.init_two_stage(args.seed, cfg)

        def loss_fn(p, x, b, lab, v, m, key):
            return D.two_stage_loss(p, x, b, lab, v, key, cfg, impl=args.impl)

        def detect(p, x):
            return D.two_stage_detect(p, x, cfg, impl=args.impl)
    return params, loss_fn, jax.jit(detect)


def evaluate(detect, params, scenes, num_classes) -> dict:
    from jaxnet.detection.metrics import evaluate_detections

    dets = run_detect(detect, params, scenes)
    gt = ground_truth(scenes)
    real = evaluate_detections(detection_lists(dets, scenes), gt, num_classes=num_classes)
    oracle = evaluate_detections(detection_lists(dets, scenes, oracle=True), gt, num_classes=num_classes)
    return {"test": summarize(real), "true_classes": summarize(oracle)}, dets


# ------------------------------------------------------------------------------------------- figures

def plot_pr(results: dict, path: str) -> str:
    fig = figure((6.4, 4.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, (name, r) in enumerate(results.items()):
        for kind, ls in (("test", "-"), ("true_classes", ":")):
            pr = r[kind]["pr50"]
            tag = "" if kind == "test" else ", given the true classes"
            ax.plot(pr["recall"], pr["precision"], ls, color=f"C{i}",
                    label=f"{LABELS.get(name, name)}{tag} (AP@0.5 {r[kind]['map50']:.3f})")
    ax.set(xlabel="recall", ylabel="precision (mean over classes)", xlim=(0, 1), ylim=(0, 1.02),
           title="precision-recall at IoU 0.5, test scenes")
    grid_legend([ax])
    return save_figure(fig, path)


def plot_examples(scenes, dets_by_name: dict, path: str, n=6, min_score=0.3, masks=None) -> str:
    """One row per detector (plus one of masks when given): true boxes green, detections red."""
    from matplotlib.patches import Rectangle

    n = min(n, len(scenes))
    rows = list(dets_by_name.items())
    fig = figure((2.3 * n, 2.5 * (len(rows) + (masks is not None))))
    axes = np.atleast_2d(fig.subplots(len(rows) + (masks is not None), n, squeeze=False))
    for r, (name, dets) in enumerate(rows):
        for i in range(n):
            ax = axes[r, i]
            ax.axis("off")
            ax.imshow(scenes.images[i])
            for b in scenes.boxes[i][scenes.valid[i]]:
                ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, color="lime", lw=1))
            keep = dets["valid"][i] & (dets["scores"][i] >= min_score)
            for b, s, c in zip(dets["boxes"][i][keep], dets["scores"][i][keep], dets["labels"][i][keep]):
                ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, color="red", lw=1.2))
                ax.text(b[0], b[1] - 1, f"{scenes.classes[c]} {s:.2f}", color="red", fontsize=6, va="bottom")
            if i == 0:
                ax.set_title(LABELS.get(name, name), fontsize=8, loc="left")
    if masks is not None:
        for i in range(n):
            ax = axes[-1, i]
            ax.axis("off")
            ax.imshow(scenes.images[i] * 0.5)
            over = np.zeros(scenes.images[i].shape[:2] + (4,))
            keep = masks["valid"][i] & (masks["scores"][i] >= min_score)
            for j, m in enumerate(masks["masks"][i][keep] >= 0.5):
                colour = np.array(__import__("matplotlib").colormaps["tab10"](j % 10))
                over[m] = colour * [1, 1, 1, 0.6]
            ax.imshow(over)
            if i == 0:
                ax.set_title("predicted instance masks", fontsize=8, loc="left")
    return save_figure(fig, path, f"test scenes: true boxes (green), detections scoring >= {min_score} (red)")


def plot_curves(histories: dict, path: str) -> str:
    fig = figure((10, 3.8))
    a1, a2 = fig.subplots(1, 2)
    for i, (name, h) in enumerate(histories.items()):
        ep = np.arange(1, len(h["train_loss"]) + 1)
        a1.plot(ep, np.asarray(h["train_loss"]) / h["train_loss"][0], "o-", color=f"C{i}", label=LABELS.get(name, name))
        a2.plot(ep, h["val_map50"], "o-", color=f"C{i}", label=LABELS.get(name, name))
    a1.set(xlabel="epoch", ylabel="training loss / first epoch's", yscale="log", title="training loss")
    a2.set(xlabel="epoch", ylabel="mAP@0.5", ylim=(0, 1), title="validation mAP@0.5")
    grid_legend((a1, a2))
    return save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, add_flags, argv)
    settings(args, NAME)
    from jaxnet.detection.metrics import evaluate_detections

    splits = load(args, NAME)
    c = splits.train.num_classes
    gt_val = ground_truth(splits.val)
    results, histories, dets_by_name = {}, {}, {}
    for name in DETECTORS:
        params, loss_fn, detect = build(name, args, c)

        def val_map50(p, detect=detect):
            dets = run_detect(detect, p, splits.val)
            return evaluate_detections(detection_lists(dets, splits.val), gt_val, num_classes=c,
                                       iou_thresholds=(0.5,))["map50"]

        t0 = time.perf_counter()
        params, histories[name] = train_detector(name, loss_fn, params, splits.train, val_map50, args)
        train_s = time.perf_counter() - t0
        results[name], dets_by_name[name] = evaluate(detect, params, splits.test, c)
        results[name]["train_time_s"] = train_s
        results[name]["history"] = histories[name]
    os.makedirs(args.out, exist_ok=True)
    figures = {"pr": os.path.basename(plot_pr(results, os.path.join(args.out, "detection_pr.png"))),
               "examples": os.path.basename(plot_examples(splits.test, dets_by_name,
                                                          os.path.join(args.out, "detection_examples.png"))),
               "curves": os.path.basename(plot_curves(histories, os.path.join(args.out, "detection_curves.png")))}
    rows = []
    for name, r in results.items():
        rows.append([LABELS[name], r["test"]["map"], r["test"]["map50"], r["true_classes"]["map"],
                     r["true_classes"]["map50"], r["train_time_s"]])
    print_table(["detector", "mAP", "mAP@0.5", "mAP, true classes", "mAP@0.5, true classes", "train s"], rows,
                title=f"\ndetection on {len(splits.test)} test scenes ({int(splits.test.valid.sum())} objects)")
    out = {"data": {"n_train": len(splits.train), "n_val": len(splits.val), "n_test": len(splits.test),
                    "size": args.size, "test_objects": int(splits.test.valid.sum()), "classes": list(splits.train.classes)},
           "epochs": args.epochs, "detectors": results, "figures": figures}
    path = write_results(args.out, out, args)
    print(f"\nwrote {path}")
    return out


if __name__ == "__main__":
    main()
