"""Classification + localization of one object (issue 18, task 2): a small convnet with a class head
and a box head on one-object scenes.

    python -m experiments.localization [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                       [--out DIR] [--seed S] [--epochs E] [--n-train N] [--size 64|96]

Data: ``jaxnet.detection.scenes`` with exactly one object per scene (an embedded handwritten digit on
a textured canvas, or a CIFAR-10 object cut out by its mask with ``--data-dir``), 64x64 by default,
object side 25-50 % of the canvas; train / test scenes from disjoint seeds and disjoint object images.

Model: pixels standardised, four 3x3 conv + ReLU + 2x2 max-pool stages (16, 32, 64, 64 channels;
64 -> 4 pixels), then two heads: a class head (global max pool, affine 128 + ReLU, C scores: which
object, wherever it is) and a box head (flatten, affine 128 + ReLU, C x 4 class-specific box deltas,
Fast R-CNN style: where it is). The box target is ``jaxnet.detection.boxes.encode_boxes`` of the true
box against the whole canvas as the anchor, (dx, dy, log dw, log dh). Loss: softmax cross-entropy +
smooth L1 (beta 1/9, summed over the 4 coordinates, on the true class's deltas; the registered ops
``softmax_cross_entropy`` and ``smooth_l1_loss``). Adam,
lr 2e-3, batch 64, every op on the manual backward path (``--impl``).

Reported on the test scenes: class accuracy; mean box IoU of the box of the predicted class (the
real prediction); the fraction localised (right class and IoU >= 0.5, ILSVRC's criterion); and
beside them the bounds that give the numbers meaning -- the **upper bound** of a regressor given
the true class (the box of the true class's head: what the localisation reaches when the
classification is perfect) and the **baseline** of always predicting the mean training box (and the
majority class).

Outputs in ``--out``: ``results.json``; ``localization_examples.png`` (16 test scenes with the true
box in green and the predicted box and class in red); ``localization_curves.png`` (loss per epoch
and test accuracy / IoU per epoch).

``--quick``: 4,000 training / 1,000 test scenes, 10 epochs; ``--smoke``: 192 / 64 scenes, 2 epochs, 8 examples in the figure.
Full: 20,000 / 2,000 scenes, 15 epochs.
"""

from __future__ import annotations

import os
import sys
import time

import numpy as np

from experiments._common import figure, grid_legend, parse_args, print_table, save_figure, sized, write_results

NAME = "localization"
DESCRIPTION = "Classification + localization of one object: a convnet with a class head and a box head."
BOX_WEIGHTS = (1.0, 1.0, 1.0, 1.0)
BETA = 1.0 / 9
PIXEL_MEAN, PIXEL_STD = 0.35, 0.2      # about the scenes' pixel statistics (textured grey-ish canvas)


def _extra(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 15; quick 8; smoke 2)")
    parser.add_argument("--n-train", type=int, default=None, help="training scenes (default 20000; quick 4000; smoke 192)")
    parser.add_argument("--n-test", type=int, default=None, help="test scenes (default 2000; quick 1000; smoke 64)")
    parser.add_argument("--size", type=int, default=64, choices=(64, 96), help="canvas side (default 64)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--box-weight", type=float, default=1.0, help="weight of the smooth L1 box loss")
    parser.add_argument("--impl", choices=("manual", "autodiff"), default="manual",
                        help="the ops' backward: the hand-written one (default) or autodiff")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


def _check_args(args) -> None:
    problems = []
    if args.epochs < 1 or args.batch_size < 1 or args.n_train < 1 or args.n_test < 1:
        problems.append(f"--epochs, --batch-size, --n-train and --n-test must be >= 1 (got {args.epochs}, "
                        f"{args.batch_size}, {args.n_train}, {args.n_test})")
    if not args.lr > 0 or not args.box_weight >= 0:
        problems.append(f"--lr must be > 0 and --box-weight >= 0 (got {args.lr}, {args.box_weight})")
    if args.seed < 0:
        problems.append(f"--seed must be >= 0 (got {args.seed})")
    if problems:
        print(f"experiments.{NAME}: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)


def build_model(num_classes: int, impl=None):
    """(backbone, class head, box head) as jaxnet layers. The backbone's (N, H/16, W/16, 64) features
    go to the class head through a global max pool (translation invariant: which digit, wherever it
    is) and to the box head flattened (where it is): affine 128 + ReLU, then num_classes x 4 deltas."""
    from jaxnet.nn import Affine, Conv2D, Flatten, GlobalMaxPool, MaxPool2D, ReLU, Sequential

    stages = []
    for c in (16, 32, 64, 64):
        stages += [Conv2D(c, 3, impl=impl), ReLU(impl=impl), MaxPool2D(2, 2, impl=impl)]
    cls_head = Sequential((GlobalMaxPool(impl=impl), Affine(128, impl=impl), ReLU(impl=impl),
                           Affine(num_classes, w_init="xavier", impl=impl)))
    box_head = Sequential((Flatten(), Affine(128, impl=impl), ReLU(impl=impl),
                           Affine(4 * num_classes, w_init="small", impl=impl)))
    return Sequential(tuple(stages)), cls_head, box_head


def init_params(model, key, image_shape):
    import jax

    backbone, cls_head, box_head = model
    k1, k2, k3 = jax.random.split(key, 3)
    pb, sb = backbone.init(k1, image_shape)
    feat = backbone.output_shape(image_shape)
    pc, sc = cls_head.init(k2, feat)
    pr, sr = box_head.init(k3, feat)
    return {"backbone": pb, "cls": pc, "box": pr}, {"backbone": sb, "cls": sc, "box": sr}


def forward(model, params, state, x):
    """x (N, H, W, 3) -> class logits (N, C), box deltas (N, C, 4). (No layer has running state:
    ``state`` is init's, passed through.)"""
    backbone, cls_head, box_head = model
    x = (x - PIXEL_MEAN) / PIXEL_STD
    h, _ = backbone.apply(params["backbone"], state["backbone"], x, train=False)
    logits, _ = cls_head.apply(params["cls"], state["cls"], h, train=False)
    deltas, _ = box_head.apply(params["box"], state["box"], h, train=False)
    return logits, deltas.reshape(len(x), -1, 4)


def loss_fn(model, params, state, x, y, target, box_weight, impl=None):
    """Softmax cross-entropy + ``box_weight`` x smooth L1 (beta 1/9) summed over the 4 coordinates of
    the true class's deltas, both averaged over the batch: the registered ops
    ``softmax_cross_entropy`` and ``smooth_l1_loss`` (a mean over all N x 4 elements, hence the 4)."""
    import jax.numpy as jnp

    from jaxnet import functional as F

    logits, deltas = forward(model, params, state, x)
    ce = F.softmax_cross_entropy(logits, y, impl=impl)
    d = jnp.take_along_axis(deltas, y[:, None, None], 1)[:, 0]
    box = 4 * F.smooth_l1_loss(d, target, beta=BETA, impl=impl)
    return ce + box_weight * box, (ce, box)


def canvas_anchor(size):
    return np.array([0.0, 0.0, size, size], np.float32)


def make_predict(model, state, size):
    """A jitted (params, x) -> (predicted class, box of the predicted class, box of every class (N, C, 4))."""
    import jax
    import jax.numpy as jnp

    from jaxnet.detection.boxes import decode_boxes

    anchor = canvas_anchor(size)

    @jax.jit
    def predict(params, x):
        logits, deltas = forward(model, params, state, x)
        boxes = jnp.clip(decode_boxes(deltas, anchor, BOX_WEIGHTS), 0, size)
        cls = jnp.argmax(logits, -1)
        return cls, jnp.take_along_axis(boxes, cls[:, None, None], 1)[:, 0], boxes

    return predict


def evaluate(predict, params, scenes, batch=256):
    """Accuracy, mean IoU of the predicted class's box, of the true class's box (the upper bound),
    fraction localised; plus the predictions."""
    cls, box, all_boxes = [], [], []
    for i in range(0, len(scenes), batch):
        c, b, a = predict(params, scenes.images[i:i + batch])
        cls.append(np.asarray(c)), box.append(np.asarray(b)), all_boxes.append(np.asarray(a))
    cls, box, all_boxes = np.concatenate(cls), np.concatenate(box), np.concatenate(all_boxes)
    y, gt = scenes.labels[:, 0], scenes.boxes[:, 0]
    iou = _paired_iou(box, gt)
    oracle = _paired_iou(all_boxes[np.arange(len(y)), y], gt)
    acc = float(np.mean(cls == y))
    return {"accuracy": acc, "mean_iou": float(iou.mean()), "mean_iou_true_class": float(oracle.mean()),
            "localized": float(np.mean((cls == y) & (iou >= 0.5))), "iou_ge_0.5": float(np.mean(iou >= 0.5)),
            "localized_true_class": float(np.mean(oracle >= 0.5))}, \
        (cls, box)


def _paired_iou(a, b, iou_fn=None):
    """IoU of a[i] with b[i]: (N, 4), (N, 4) -> (N,)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    iw = np.clip(np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]), 0, None)
    ih = np.clip(np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]), 0, None)
    inter = iw * ih
    union = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]) + (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1]) - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def baseline(train, test):
    """Always the mean training box and the majority class."""
    from jaxnet.detection.boxes import box_iou_numpy

    mean_box = train.boxes[:, 0].mean(0, keepdims=True)
    iou = box_iou_numpy(mean_box, test.boxes[:, 0])[0]
    major = np.bincount(train.labels[:, 0]).argmax()
    return {"accuracy": float(np.mean(test.labels[:, 0] == major)), "mean_iou": float(iou.mean()),
            "localized": float(np.mean((test.labels[:, 0] == major) & (iou >= 0.5)))}


def train(args, model, data, test):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxnet.detection.boxes import encode_boxes
    from jaxnet.optim import make_optimizer

    size = args.size
    gt_boxes = np.asarray(data.boxes[:, 0])
    labels = data.labels[:, 0].astype(np.int32)
    params, state = init_params(model, jax.random.key(args.seed), (1, size, size, 3))
    opt = make_optimizer("adam", args.lr)
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, x, y, b):
        t = encode_boxes(b, canvas_anchor(size), BOX_WEIGHTS)          # the regression target, in the one program
        loss_of = lambda p: loss_fn(model, p, state, x, y, t, args.box_weight, args.impl)   # noqa: E731
        (loss, (ce, box)), g = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, jnp.stack([loss, ce, box])

    predict = make_predict(model, state, size)
    rng = np.random.default_rng(args.seed)
    n, bs = len(labels), min(args.batch_size, len(labels))
    steps = n // bs
    history = {"train_loss": [], "train_ce": [], "train_box": [], "test_accuracy": [], "test_mean_iou": [],
               "epoch_time_s": []}
    bar = None
    if not (args.quick or args.no_progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=args.epochs * steps, desc="localization", leave=False)
    for epoch in range(args.epochs):
        t0 = time.perf_counter()
        perm = rng.permutation(n)
        sums = np.zeros(3)
        for s in range(steps):
            idx = np.sort(perm[s * bs:(s + 1) * bs])
            params, opt_state, parts = step(params, opt_state, data.images[idx], labels[idx], gt_boxes[idx])
            sums += np.asarray(parts)
            if bar is not None:
                bar.update(1)
        ev, _ = evaluate(predict, params, test)
        sums /= steps
        for k, v in zip(("train_loss", "train_ce", "train_box"), sums):
            history[k].append(float(v))
        history["test_accuracy"].append(ev["accuracy"])
        history["test_mean_iou"].append(ev["mean_iou"])
        history["epoch_time_s"].append(time.perf_counter() - t0)
        msg = (f"epoch {epoch + 1:2d}: loss {sums[0]:.4f} (ce {sums[1]:.4f}, box {sums[2]:.4f}) | "
               f"test acc {ev['accuracy']:.4f}, box IoU {ev['mean_iou']:.4f} ({history['epoch_time_s'][-1]:.1f} s)")
        (bar.write if bar is not None else print)(msg)
    if bar is not None:
        bar.close()
    return params, predict, history


def plot_examples(scenes, cls, box, path, n=16) -> str:
    """The first n test scenes: true box (green), predicted box (red), predicted class and IoU above."""
    from matplotlib.patches import Rectangle

    from jaxnet.detection.boxes import box_iou_numpy

    n = min(n, len(scenes))
    cols = 8
    rows = -(-n // cols)
    fig = figure((2 * cols, 2.2 * rows))
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(scenes.images[i])
        for b, colour in ((scenes.boxes[i, 0], "lime"), (box[i], "red")):
            ax.add_patch(Rectangle((b[0] - 0.5, b[1] - 0.5), b[2] - b[0], b[3] - b[1], fill=False, color=colour, lw=1.5))
        iou = box_iou_numpy(box[i:i + 1], scenes.boxes[i:i + 1, 0])[0, 0]
        ok = cls[i] == scenes.labels[i, 0]
        name = scenes.classes[cls[i]] if ok else f"{scenes.classes[cls[i]]}, true {scenes.classes[scenes.labels[i, 0]]}"
        ax.set_title(f"{name}  IoU {iou:.2f}", fontsize=7, color="black" if ok else "red")
    return save_figure(fig, path, "test scenes: true box (green), predicted class and box (red)")


def plot_curves(history, bounds, path) -> str:
    fig = figure((10, 3.8))
    a1, a2 = fig.subplots(1, 2)
    ep = np.arange(1, len(history["train_loss"]) + 1)
    a1.plot(ep, history["train_loss"], "o-", label="total")
    a1.plot(ep, history["train_ce"], "s--", label="cross-entropy")
    a1.plot(ep, history["train_box"], "^--", label="smooth L1 (box)")
    a1.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    a2.plot(ep, history["test_accuracy"], "o-", label="test accuracy")
    a2.plot(ep, history["test_mean_iou"], "s-", label="test mean box IoU")
    a2.axhline(bounds["true_class_iou"], color="C1", ls=":", label="box IoU given the true class (final)")
    a2.axhline(bounds["baseline_iou"], color="0.5", ls="--", label="mean-box baseline IoU")
    a2.set(xlabel="epoch", ylim=(0, 1), title="test")
    grid_legend((a1, a2))
    return save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    args.epochs = args.epochs if args.epochs is not None else sized(args, 15, 10, 2)
    args.n_train = args.n_train if args.n_train is not None else sized(args, 20000, 4000, 192)
    args.n_test = args.n_test if args.n_test is not None else sized(args, 2000, 1000, 64)
    _check_args(args)
    from jaxnet.detection.scenes import load_scenes

    source = "cifar10" if args.data_dir else "digits"
    t0 = time.perf_counter()
    try:
        splits = load_scenes(args.n_train, 0, args.n_test, seed=args.seed, size=args.size, min_objects=1,
                             max_objects=1, source=source, data_dir=args.data_dir)
    except (FileNotFoundError, ValueError, OSError) as e:
        print(f"experiments.{NAME}: {str(e).splitlines()[0] if str(e) else type(e).__name__}", file=sys.stderr)
        raise SystemExit(2) from None
    data, test = splits.train, splits.test
    print(f"{source} scenes: {len(data)} training, {len(test)} test, {args.size}x{args.size} "
          f"({time.perf_counter() - t0:.1f} s)", flush=True)
    model = build_model(data.num_classes, args.impl)
    params, predict, history = train(args, model, data, test)
    final, (cls, box) = evaluate(predict, params, test)
    base = baseline(data, test)
    os.makedirs(args.out, exist_ok=True)
    figures = {
        "examples": os.path.basename(plot_examples(test, cls, box, os.path.join(args.out, "localization_examples.png"),
                                                   n=8 if args.smoke else 16)),
        "curves": os.path.basename(plot_curves(history, {"true_class_iou": final["mean_iou_true_class"],
                                                         "baseline_iou": base["mean_iou"]},
                                               os.path.join(args.out, "localization_curves.png"))),
    }
    results = {"data_source": source, "size": args.size, "n_train": len(data), "n_test": len(test),
               "classes": list(data.classes), "model": "standardised pixels; conv16-conv32-conv64-conv64 (3x3, ReLU, 2x2 max-pool); "
               "class head: global max pool, affine 128, ReLU, affine C; box head: flatten, affine 128, ReLU, "
               "affine 4C (class-specific deltas)", "epochs": args.epochs,
               "loss": f"cross-entropy + {args.box_weight} x smooth L1 (beta {BETA:.4f}) on encode_boxes deltas "
                       f"against the canvas, weights {BOX_WEIGHTS}",
               "test": final, "upper_bound_true_class": {"accuracy": 1.0, "mean_iou": final["mean_iou_true_class"],
                                                         "localized": final["localized_true_class"]},
               "baseline_mean_box": base, "history": history, "figures": figures,
               "train_time_s": float(sum(history["epoch_time_s"]))}
    rows = [["convnet (predicted class)", final["accuracy"], final["mean_iou"], final["localized"]],
            ["upper bound: box of the true class", 1.0, final["mean_iou_true_class"], final["localized_true_class"]],
            ["baseline: mean box, majority class", base["accuracy"], base["mean_iou"], base["localized"]]]
    print_table(["model", "accuracy", "mean box IoU", "localized (class ok, IoU>=0.5)"], rows,
                title=f"\nclassification + localization on {source} scenes ({len(test)} test)")
    path = write_results(args.out, results, args)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
