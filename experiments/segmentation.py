"""Semantic segmentation of digit scenes: an FCN with learnable upsampling and skip connections
against the same net with fixed bilinear upsampling (the detection-and-segmentation lecture).

    python -m experiments.segmentation [--quick] [--smoke] [--out DIR] [--seed S]
                                       [--epochs E] [--n-train N] [--size PX] [--width W] [--lr LR]

Data: ``jaxnet.detection.scenes.load_scenes``: 1-6 handwritten digits pasted on textured
``--size`` x ``--size`` canvases; every pixel is labelled background (0) or its digit's class + 1
(11 classes).  Fixed seeds, the scene generator's own train / val / test splits.

Model (``--width`` W, default 16): ``--convs`` (default 2) 3x3 conv + ReLU per stage at H, H/2, H/4 (W, 2W, 4W
channels, 2x2 max pools between), a 1x1 score layer at H/4, then FCN-8s-style decoding: upsample
the scores 2x, add a 1x1 score of the H/2 features (the skip), upsample 2x again, add a 1x1 score
of the H features.  The two variants differ only in the two upsampling steps:

- ``learned``: ``conv2d_transpose`` (4x4 kernel, stride 2, padding 1, a full C x C filter bank),
  initialised to bilinear interpolation (the FCN paper's choice) and trained;
- ``bilinear``: the fixed ``upsample_bilinear`` op (no parameters).

Both train with ``pixel_cross_entropy`` (the registered op, hand backward) weighted by
``1/sqrt(class pixel frequency)`` on the training set (``--class-weights``; the background covers
~80% of the pixels, and unweighted short runs settle on "all background"), Adam, on the manual
backward path throughout.  Reported on the test split: mean IoU over the 11 classes
(``jaxnet.detection.metrics.mean_iou``), pixel accuracy, per-class IoU; beside them the floor of
a predictor that says "background" everywhere, so the numbers mean something.

Outputs in ``--out``: ``results.json``; ``segmentation_masks.png`` (six test scenes: image, true
mask, both predictions); ``segmentation_curves.png`` (training loss and validation mIoU per epoch).

``--quick``: 600 training scenes of 64x64, 15 epochs; ``--smoke`` (the default test suite's run):
48 scenes of 32x32, width 4, one conv per stage, 2 epochs.
"""
from __future__ import annotations

import sys

import numpy as np

from experiments._common import Timer, figure, parse_args, print_table, save_figure, sized, write_results

NAME = "segmentation"
DESCRIPTION = "FCN with learnable upsampling + skips vs fixed bilinear upsampling on digit scenes: mIoU, masks."
VARIANTS = ("learned", "bilinear")
_NONE = None


def _extra(parser) -> None:
    parser.add_argument("--epochs", type=int, default=_NONE, help="epochs (default 30; quick 15; smoke 2)")
    parser.add_argument("--n-train", type=int, default=_NONE, help="training scenes (default 2000; quick 600; smoke 48)")
    parser.add_argument("--size", type=int, default=_NONE, help="canvas side, a multiple of 4 in [32, 512] "
                                                                "(default 64; smoke 32)")
    parser.add_argument("--width", type=int, default=_NONE, help="channels of the first stage (default 16; smoke 4)")
    parser.add_argument("--convs", type=int, default=_NONE, help="3x3 convolutions per stage (default 2; smoke 1)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam's learning rate")
    parser.add_argument("--class-weights", choices=("sqrt-inverse", "none"), default="sqrt-inverse",
                        help="pixel_cross_entropy's class weights: 1/sqrt(training pixel frequency) (default; "
                             "the background covers ~80%% of the pixels), or none")


def _settings(args) -> None:
    """Fill the size-dependent defaults, then refuse what cannot run: one stderr line, exit 2."""
    for name, full, quick, smoke in (("epochs", 30, 15, 2), ("n_train", 2000, 600, 48), ("size", 64, 64, 32),
                                     ("width", 16, 16, 4), ("convs", 2, 2, 1)):
        if getattr(args, name) is None:
            setattr(args, name, sized(args, full, quick, smoke))
    args.n_val, args.n_test = sized(args, 200, 100, 16), sized(args, 500, 200, 16)
    problems = []
    for flag, v in (("--epochs", args.epochs), ("--n-train", args.n_train), ("--width", args.width),
                    ("--convs", args.convs), ("--batch-size", args.batch_size)):
        if v < 1:
            problems.append(f"{flag} must be >= 1, got {v}")
    if not (32 <= args.size <= 512 and args.size % 4 == 0):
        problems.append(f"--size must be a multiple of 4 in [32, 512], got {args.size}")
    if not (args.lr > 0 and np.isfinite(args.lr)):
        problems.append(f"--lr must be a finite number > 0, got {args.lr}")
    if problems:
        print(f"experiments.{NAME}: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)


# ---------------------------------------------------------------------------------------------- model

def bilinear_kernel(channels: int) -> np.ndarray:
    """(4, 4, C, C) transposed-conv filter (stride 2, padding 1) that upsamples each channel 2x
    bilinearly (half-pixel centres; equal to ``upsample_bilinear`` away from the border)."""
    k1 = np.array([0.25, 0.75, 0.75, 0.25])
    w = np.zeros((4, 4, channels, channels), np.float32)
    for c in range(channels):
        w[:, :, c, c] = np.outer(k1, k1)
    return w


def init_params(variant: str, width: int, num_classes: int, seed: int, convs: int = 2) -> dict:
    """He-normal convolutions (NumPy draws), zero biases; the learned variant's upsampling filters
    start as bilinear interpolation."""
    import jax.numpy as jnp

    rng = np.random.default_rng(seed)

    def conv(k, cin, cout):
        w = rng.standard_normal((k, k, cin, cout)) * np.sqrt(2.0 / (k * k * cin))
        return {"w": jnp.asarray(w, jnp.float32), "b": jnp.zeros(cout, jnp.float32)}

    w1, w2, w3 = width, 2 * width, 4 * width
    p = {}
    for stage, (cin, cout) in enumerate(((3, w1), (w1, w2), (w2, w3)), start=1):
        for i in range(convs):
            p[f"c{stage}{'abcdefgh'[i]}"] = conv(3, cin if i == 0 else cout, cout)
    p.update(score3=conv(1, w3, num_classes), score2=conv(1, w2, num_classes), score1=conv(1, w1, num_classes))
    for name in ("score3", "score2", "score1"):
        p[name]["w"] = p[name]["w"] * 0.1
    if variant == "learned":
        for name in ("up3", "up2"):
            p[name] = {"w": jnp.asarray(bilinear_kernel(num_classes)), "b": jnp.zeros(num_classes, jnp.float32)}
    return p


def forward(params: dict, x, variant: str):
    """Logits (N, H, W, K) for images x (N, H, W, 3); every op on the manual backward path."""
    from jaxnet import functional as F

    def conv(h, name, relu=True):
        pad = (params[name]["w"].shape[0] - 1) // 2
        h = F.conv2d(h, params[name]["w"], params[name]["b"], padding=pad, impl="manual")
        return F.relu(h, impl="manual") if relu else h

    def up(s, name):
        if variant == "learned":
            return F.conv2d_transpose(s, params[name]["w"], params[name]["b"], stride=2, padding=1, impl="manual")
        return F.upsample_bilinear(s, scale=2, impl="manual")

    def stage(h, k):
        for name in sorted(n for n in params if n.startswith(f"c{k}")):
            h = conv(h, name)
        return h

    f1 = stage(x, 1)
    f2 = stage(F.max_pool2d(f1, window=2, impl="manual"), 2)
    f3 = stage(F.max_pool2d(f2, window=2, impl="manual"), 3)
    s = up(conv(f3, "score3", relu=False), "up3") + conv(f2, "score2", relu=False)
    return up(s, "up2") + conv(f1, "score1", relu=False)


# ------------------------------------------------------------------------------------------- training

def class_weights(semantic, num_classes, kind="sqrt-inverse"):
    """(C,) float32: ``1/sqrt(frequency)`` of each class's training pixels (classes never seen get
    the largest weight), scaled so that the average pixel's weight is 1; ones for ``"none"``."""
    if kind == "none":
        return np.ones(num_classes, np.float32)
    freq = np.bincount(np.asarray(semantic).ravel(), minlength=num_classes) / np.asarray(semantic).size
    w = 1.0 / np.sqrt(np.maximum(freq, freq[freq > 0].min()))
    return (w / np.sum(freq * w)).astype(np.float32)


def train_variant(variant, args, splits, num_classes):
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm import tqdm

    from jaxnet import functional as F
    from jaxnet.detection.metrics import mean_iou
    from jaxnet.optim import make_optimizer

    params = init_params(variant, args.width, num_classes, args.seed, args.convs)
    opt = make_optimizer("adam", args.lr)
    state = opt.init(params)

    weights = jnp.asarray(class_weights(splits.train.semantic, num_classes, args.class_weights))

    def loss_fn(p, x, y):
        return F.pixel_cross_entropy(forward(p, x, variant), y, weights, impl="manual")

    @jax.jit
    def step(p, s, x, y):
        loss, g = jax.value_and_grad(loss_fn)(p, x, y)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, loss

    predict = jax.jit(lambda p, x: jnp.argmax(forward(p, x, variant), axis=-1))

    def segment(p, images):
        return np.concatenate([np.asarray(predict(p, images[i:i + 64])) for i in range(0, len(images), 64)])

    train, val = splits.train, splits.val
    n = len(train)
    bs = min(args.batch_size, n)
    rng = np.random.default_rng(args.seed)
    history = {"train_loss": [], "val_miou": [], "cum_train_time_s": []}
    cum = 0.0
    for _ in tqdm(range(args.epochs), desc=variant, disable=args.quick):
        order = rng.permutation(n)
        losses = []
        with Timer() as t:
            for i in range(0, n - bs + 1, bs):
                idx = order[i:i + bs]
                params, state, loss = step(params, state, train.images[idx], train.semantic[idx])
                losses.append(loss)
            losses = [float(v) for v in losses]
        cum += t.elapsed
        history["train_loss"].append(float(np.mean(losses)))
        history["val_miou"].append(mean_iou(segment(params, val.images), val.semantic, num_classes)["miou"])
        history["cum_train_time_s"].append(cum)
    pred = segment(params, splits.test.images)
    m = mean_iou(pred, splits.test.semantic, num_classes)
    n_params = int(sum(np.asarray(a).size for a in jax.tree_util.tree_leaves(params)))
    return {"miou": m["miou"], "pixel_accuracy": m["pixel_accuracy"], "per_class_iou": m["per_class"].tolist(),
            "n_params": n_params, "history": history, "train_time_s": cum}, pred


# -------------------------------------------------------------------------------------------- figures

def _palette(num_classes):
    from matplotlib import colormaps
    from matplotlib.colors import ListedColormap

    colors = colormaps["tab20"](np.linspace(0, 1, 20))[: num_classes - 1]
    return ListedColormap(np.concatenate([[[0.0, 0.0, 0.0, 1.0]], colors]))


def plot_masks(path, images, truth, preds, num_classes, n=6):
    n = min(n, len(images))
    cmap = _palette(num_classes)
    cols = ["image", "truth"] + [f"{v} upsampling" for v in preds]
    fig = figure((2.0 * len(cols), 2.0 * n))
    for i in range(n):
        panels = [images[i], truth[i]] + [p[i] for p in preds.values()]
        for j, (title, img) in enumerate(zip(cols, panels)):
            ax = fig.add_subplot(n, len(cols), i * len(cols) + j + 1)
            if j == 0:
                ax.imshow(np.clip(img, 0, 1))
            else:
                ax.imshow(img, cmap=cmap, vmin=0, vmax=num_classes - 1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title, fontsize=9)
    return save_figure(fig, path, "test scenes: black = background, colours = digit classes")


def plot_curves(path, results):
    fig = figure((9, 3.5))
    a, b = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    for v in VARIANTS:
        h = results[v]["history"]
        ep = np.arange(1, len(h["train_loss"]) + 1)
        a.plot(ep, h["train_loss"], marker="o", label=v)
        b.plot(ep, h["val_miou"], marker="o", label=v)
    b.axhline(results["floor_all_background"]["miou"], color="gray", ls="--", label="all background")
    a.set_xlabel("epoch")
    a.set_ylabel("training loss (pixel cross-entropy)")
    b.set_xlabel("epoch")
    b.set_ylabel("validation mIoU")
    for ax in (a, b):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, "FCN: learned (transposed conv) vs fixed bilinear upsampling")


# ----------------------------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    import os

    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    _settings(args)
    from jaxnet.detection.metrics import mean_iou
    from jaxnet.detection.scenes import load_scenes

    with Timer() as t_data:
        splits = load_scenes(args.n_train, args.n_val, args.n_test, seed=args.seed, size=args.size)
    num_classes = splits.train.num_classes + 1
    print(f"{args.n_train}/{args.n_val}/{args.n_test} scenes of {args.size}x{args.size}, {num_classes} classes "
          f"(background + digits), generated in {t_data.elapsed:.1f} s", flush=True)
    results = {"data": {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test, "size": args.size,
                        "num_classes": num_classes, "source": "digits"},
               "class_weights": class_weights(splits.train.semantic, num_classes, args.class_weights).tolist()}
    preds = {}
    for v in VARIANTS:
        results[v], preds[v] = train_variant(v, args, splits, num_classes)
    floor = mean_iou(np.zeros_like(splits.test.semantic), splits.test.semantic, num_classes)
    results["floor_all_background"] = {"miou": floor["miou"], "pixel_accuracy": floor["pixel_accuracy"]}
    results["claims"] = {"both_beat_the_all_background_floor": bool(all(results[v]["miou"] > floor["miou"]
                                                                         for v in VARIANTS)),
                         "learned_minus_bilinear_miou": results["learned"]["miou"] - results["bilinear"]["miou"]}
    plot_masks(os.path.join(args.out, "segmentation_masks.png"), splits.test.images, splits.test.semantic, preds,
               num_classes)
    plot_curves(os.path.join(args.out, "segmentation_curves.png"), results)
    rows = [[v, results[v]["miou"], results[v]["pixel_accuracy"], results[v]["n_params"], results[v]["train_time_s"]]
            for v in VARIANTS]
    rows.append(["all background (floor)", floor["miou"], floor["pixel_accuracy"], 0, 0.0])
    print_table(["upsampling", "test mIoU", "pixel acc", "params", "train s"], rows,
                title=f"semantic segmentation, {args.size}x{args.size} digit scenes, {args.epochs} epochs")
    print(f"claims: {results['claims']}", flush=True)
    path = write_results(args.out, results, args)
    print(f"wrote {path}", flush=True)
    return results


if __name__ == "__main__":
    main()
