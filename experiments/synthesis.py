"""Images synthesised from a trained convnet: class model visualisations, feature inversion, DeepDream.

    python -m experiments.synthesis [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                    [--out DIR] [--checkpoint PATH] [--net-epochs E] [--iterations N]
                                    [--inversion-iterations N] [--inversion-images K] [--inversion-tv W]
                                    [--dream-iterations N] [--dream-layer NAME]

The network is the issue-15 ``fast_convnet`` (``experiments._understand_net``: trained once on
CIFAR-10, or the embedded digits without ``--data-dir``, and cached).  Three of the lecture's
"what does the net want to see" pictures, all from ``jaxnet.understand``:

1. **Class model visualisation** (Simonyan et al. 2014 with Yosinski et al. 2015's regularisers,
   the course's recipe): from ``N(0, 1)`` noise in the net's normalised input space, gradient
   ascent on ``s_c(I) − λ||I||²`` for each of the 10 classes, with a random jitter (roll), the
   normalised step ``lr · g/||g||₂``, clipping to the valid pixel range and a Gaussian blur
   every 10 steps.  The course's numbers are for 224x224 images (lr 25, λ 1e-3, jitter 16 px,
   blur σ 0.5 every 10, 100 steps); here they are scaled to the image: the step by
   ``sqrt(H·W·C / (224·224·3))`` (the same per-pixel step: 3.6 on 32x32x3), the jitter by
   ``H/224`` (2 px; at least 1).  Recorded per class: the class score before and after, the
   softmax probability and the net's prediction of the image.  ``class_visualizations.png``.
2. **Feature inversion** (Mahendran and Vedaldi 2015) from an early block (``block1``) and the
   last block (``block3``; ``block2`` for the smoke net): Adam (lr 0.1) on
   ``||φ(I) − φ(I₀)||²/||φ(I₀)||² + w_tv·TV(I)`` from a grey (zero) image plus a little noise,
   for ``--inversion-images`` test images the net classifies correctly (the first of each
   class, among 500 spread over the test set).  ``w_tv`` is ``--inversion-tv`` (0.05) per image
   element: ``0.05 / (H·W·C)`` on the library's summed squared TV.  Recorded per image and
   layer: the relative feature error reached and the pixel-space RMSE of the reconstruction in
   [0, 1] pixels (the grey start's RMSE as the no-information baseline).  The course's claim:
   early layers keep the image's detail (a reconstruction close to the original), late layers
   keep less (the class-relevant parts, blurred and rearranged): checked as "the early block's
   pixel error is lower than the late block's for every image".  ``feature_inversion.png``.
3. **DeepDream** (Mordvintsev et al. 2015) on one test image at ``--dream-layer`` (default
   ``block2``): ascent on ``½||φ(I)||²`` with the step ``lr · g / mean|g|`` (lr 0.03 in
   normalised units, the course's 1.5 on 0..255 pixels divided by about 255·0.25) and a 1 px
   jitter.  Recorded: the layer's activation norm ``||φ(I)||₂`` before and after, and the
   net's prediction of both.  ``deepdream.png`` (before, after, and |after − before|).

``results.json`` has the numbers and ``claims``: every class visualisation is classified as its
class; the early block's reconstruction is closer to the image than the late block's (pixel
RMSE, every image); DeepDream raised the layer's activation norm.

Sizes: default 300 class-visualisation steps, 500 inversion steps for 4 images, 50 dream steps;
``--quick`` 200 / 300 / 4 / 30; ``--smoke`` (the test suite: digits, 8x8) 20 / 30 / 2 / 5.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from experiments._common import Timer, fail, figure, finish, parse_args, save_figure, sized
from experiments._understand_net import add_net_flags, trained_net

NAME = "synthesis"
DESCRIPTION = "Class model visualisations, feature inversion from two depths and DeepDream on the issue-15 convnet."


def _extra(parser) -> None:
    add_net_flags(parser)
    parser.add_argument("--iterations", type=int, default=None,
                        help="class-visualisation steps (default 300; quick 200; smoke 20)")
    parser.add_argument("--inversion-iterations", type=int, default=None,
                        help="feature-inversion Adam steps (default 500; quick 300; smoke 30)")
    parser.add_argument("--inversion-images", type=int, default=None,
                        help="test images inverted (default 4; quick 4; smoke 2)")
    parser.add_argument("--inversion-tv", type=float, default=0.05,
                        help="feature inversion's TV weight per image element (default 0.05)")
    parser.add_argument("--dream-iterations", type=int, default=None,
                        help="DeepDream steps (default 50; quick 30; smoke 5)")
    parser.add_argument("--dream-layer", default="block2", help="DeepDream's layer (default block2)")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _settings(args) -> dict:
    s = {
        "iterations": args.iterations if args.iterations is not None else sized(args, 300, 200, 20),
        "inversion_iterations": (args.inversion_iterations if args.inversion_iterations is not None
                                 else sized(args, 500, 300, 30)),
        "inversion_images": args.inversion_images if args.inversion_images is not None else sized(args, 4, 4, 2),
        "dream_iterations": args.dream_iterations if args.dream_iterations is not None else sized(args, 50, 30, 5),
    }
    for k, v in s.items():
        if v < 1:
            _fail(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if not np.isfinite(args.inversion_tv) or args.inversion_tv < 0:
        _fail(f"--inversion-tv must be a finite number >= 0, got {args.inversion_tv}")
    if s["inversion_images"] > 16:
        _fail(f"--inversion-images must be at most 16, got {s['inversion_images']}")
    return s


def course_scaled(shape) -> dict:
    """The course's class-visualisation numbers (for 224x224x3 images) scaled to ``shape`` (H, W, C):
    the step keeps its per-pixel size (× sqrt(HWC / 224·224·3)), the jitter its fraction of the
    image (× H/224, at least 1 px)."""
    h, w, c = shape
    return {"learning_rate": 25.0 * math.sqrt(h * w * c / (224 * 224 * 3)), "l2_reg": 1e-3,
            "max_jitter": max(1, round(16 * h / 224)), "blur_every": 10, "blur_sigma": 0.5}


def _net_layer_names(args) -> tuple:
    """The top-level layer names of the net ``trained_net`` builds for these flags (no training)."""
    from jaxnet.nn import fast_convnet

    from experiments._understand_net import SIZES, _size
    _, _, stem, widths = SIZES[_size(args)]
    return tuple(fast_convnet(stem=stem, widths=widths).names)


_JITTED: dict = {}


def layer_fn(net, layer):
    """Jitted ``(params, state, x) -> the output of layer`` (``"scores"``: the class scores), eval mode."""
    import jax

    from jaxnet import understand as U

    key = (net.model, layer)
    if key not in _JITTED:
        if layer == "scores":
            _JITTED[key] = jax.jit(lambda p, st, x: net.model.apply(p, st, x, train=False)[0])
        else:
            _JITTED[key] = jax.jit(lambda p, st, x: U.layer_output(net.model, p, st, x, layer))
    return lambda x: np.asarray(_JITTED[key](net.params, net.state, x))


def correct_test_images(net, n: int = 500) -> np.ndarray:
    """Indices of the test images the net classifies correctly among ``n`` spread evenly over the
    test set (its order may be by class), in order."""
    idx = np.linspace(0, len(net.y_test) - 1, min(n, len(net.y_test))).round().astype(int)
    return idx[layer_fn(net, "scores")(net.x_test[idx]).argmax(-1) == net.y_test[idx]]


def block_names(model) -> list[str]:
    """The ``block{b}`` layer names of a fast_convnet, in order."""
    return [n for n in model.names if n.startswith("block")]


def pixel_rmse(a, b) -> np.ndarray:
    """Per-image RMSE between two (N, H, W, C) image batches (already in [0, 1])."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    return np.sqrt(np.mean(d * d, axis=(1, 2, 3)))


def relative_feature_error(f, f0) -> np.ndarray:
    """Per-image ``||f − f0||² / ||f0||²`` of (N, ...) feature maps."""
    f, f0 = np.asarray(f, np.float64), np.asarray(f0, np.float64)
    ax = tuple(range(1, f.ndim))
    return np.sum((f - f0) ** 2, axis=ax) / np.maximum(np.sum(f0 ** 2, axis=ax), 1e-30)


def _show(ax, net, x, title):
    img = net.to_unit(x)
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              interpolation="nearest", vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def class_visualizations(net, s, args) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxnet import understand as U

    k = len(net.classes)
    hp = course_scaled(net.x_test.shape[1:])
    x0 = np.asarray(jax.random.normal(jax.random.PRNGKey(args.seed), (k, *net.x_test.shape[1:])), np.float32)
    targets = jnp.arange(k)
    run = jax.jit(lambda p, st, x, t, key: U.class_visualization(
        net.model, p, st, x, t, key, num_iterations=s["iterations"], clip=net.clip, **hp))
    score_fn = layer_fn(net, "scores")
    with Timer() as t:
        imgs = np.asarray(run(net.params, net.state, jnp.asarray(x0), targets, jax.random.PRNGKey(args.seed + 1)))
    before, after = score_fn(x0), score_fn(imgs)
    prob = np.asarray(jax.nn.softmax(after, axis=-1))
    pred = after.argmax(-1)
    rows = [{"class": net.classes[c], "score_before": float(before[c, c]), "score_after": float(after[c, c]),
             "probability": float(prob[c, c]), "predicted": net.classes[int(pred[c])]} for c in range(k)]
    return {"images": imgs, "rows": rows, "hyperparameters": hp, "time_s": t.elapsed,
            "all_classified_as_target": bool(np.all(pred == np.arange(k)))}


def plot_class_visualizations(net, cv, path) -> str:
    k = len(cv["rows"])
    cols = 5
    fig = figure((2.2 * cols, 2.5 * math.ceil(k / cols)))
    for c, r in enumerate(cv["rows"]):
        ax = fig.add_subplot(math.ceil(k / cols), cols, c + 1)
        _show(ax, net, cv["images"][c], f"{r['class']}: s={r['score_after']:.1f}\np={r['probability']:.3f}, "
                                         f"pred {r['predicted']}")
    return save_figure(fig, path, "Class model visualisations (score reached, softmax p, prediction)")


def inversions(net, s, args, correct) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxnet import understand as U

    blocks = block_names(net.model)
    layers = (blocks[0], blocks[-1])
    firsts = [int(correct[net.y_test[correct] == c][0]) for c in range(len(net.classes)) if np.any(net.y_test[correct] == c)]
    idx = np.array((firsts + [int(i) for i in correct if i not in firsts])[: s["inversion_images"]], int)
    if len(idx) < s["inversion_images"]:
        idx = np.arange(s["inversion_images"])
    x = jnp.asarray(net.x_test[idx])
    h, w, c = net.x_test.shape[1:]
    tv_weight = args.inversion_tv / (h * w * c)
    start = 0.1 * jax.random.normal(jax.random.PRNGKey(args.seed + 2), x.shape)
    out = {"indices": idx, "layers": list(layers), "tv_weight": tv_weight, "learning_rate": 0.1, "per_layer": {}}
    x_unit = net.to_unit(x)
    out["baseline_pixel_rmse"] = pixel_rmse(net.to_unit(start), x_unit)
    for layer in layers:
        run = jax.jit(lambda p, st, target, x0, layer=layer: U.feature_inversion(
            net.model, p, st, target, layer, x0, num_iterations=s["inversion_iterations"], learning_rate=0.1,
            tv_weight=tv_weight, clip=net.clip))
        with Timer() as t:
            img, losses = run(net.params, net.state, x, start)
            img = np.asarray(img)
        f0, f = layer_fn(net, layer)(x), layer_fn(net, layer)(img)
        out["per_layer"][layer] = {
            "images": img, "losses": np.asarray(losses), "time_s": t.elapsed,
            "relative_feature_error": relative_feature_error(f, f0),
            "pixel_rmse": pixel_rmse(net.to_unit(img), x_unit),
            "feature_shape": list(f0.shape[1:]),
        }
    return out


def plot_inversions(net, inv, path) -> str:
    layers = inv["layers"]
    n = len(inv["indices"])
    fig = figure((2.2 * (1 + len(layers)), 2.4 * n))
    for i in range(n):
        ax = fig.add_subplot(n, 1 + len(layers), i * (1 + len(layers)) + 1)
        _show(ax, net, net.x_test[inv["indices"][i]], f"original ({net.classes[net.y_test[inv['indices'][i]]]})")
        for j, layer in enumerate(layers):
            r = inv["per_layer"][layer]
            ax = fig.add_subplot(n, 1 + len(layers), i * (1 + len(layers)) + 2 + j)
            _show(ax, net, r["images"][i], f"from {layer}: feat err {r['relative_feature_error'][i]:.3f}\n"
                                           f"pixel RMSE {r['pixel_rmse'][i]:.3f}")
    return save_figure(fig, path, "Feature inversion: an early and the last block")


def dream(net, s, args, correct) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxnet import understand as U

    layer = args.dream_layer
    i = int(correct[0]) if len(correct) else 0
    x = jnp.asarray(net.x_test[i:i + 1])
    run = jax.jit(lambda p, st, v, key: U.deepdream(net.model, p, st, v, layer, key,
                                                    num_iterations=s["dream_iterations"], learning_rate=0.03,
                                                    max_jitter=1, clip=net.clip))
    with Timer() as t:
        out = np.asarray(run(net.params, net.state, x, jax.random.PRNGKey(args.seed + 3)))
    both = np.concatenate([np.asarray(x), out])
    f = layer_fn(net, layer)(both)
    norms = np.sqrt(np.sum(np.asarray(f, np.float64) ** 2, axis=tuple(range(1, f.ndim))))
    pred = layer_fn(net, "scores")(both).argmax(-1)
    return {"index": i, "layer": layer, "image": out[0], "original": np.asarray(x[0]), "learning_rate": 0.03,
            "max_jitter": 1, "norm_before": float(norms[0]), "norm_after": float(norms[1]), "time_s": t.elapsed,
            "predicted_before": net.classes[int(pred[0])], "predicted_after": net.classes[int(pred[1])],
            "label": net.classes[int(net.y_test[i])]}


def plot_dream(net, d, path) -> str:
    fig = figure((7.5, 2.8))
    _show(fig.add_subplot(1, 3, 1), net, d["original"],
          f"before ({d['label']}; pred {d['predicted_before']})\n||φ|| = {d['norm_before']:.1f}")
    _show(fig.add_subplot(1, 3, 2), net, d["image"],
          f"after {d['layer']} dream (pred {d['predicted_after']})\n||φ|| = {d['norm_after']:.1f}")
    diff = np.abs(net.to_unit(d["image"]) - net.to_unit(d["original"]))
    ax = fig.add_subplot(1, 3, 3)
    ax.imshow(diff.mean(-1) / max(diff.max(), 1e-12), cmap="magma", interpolation="nearest")
    ax.set_title("|after − before| (scaled)", fontsize=8)
    ax.axis("off")
    return save_figure(fig, path, "DeepDream")


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    s = _settings(args)
    names = _net_layer_names(args)
    if args.dream_layer not in names:
        _fail(f"--dream-layer {args.dream_layer!r} is not a layer of the net; layers: {', '.join(names)}")
    net = trained_net(args)
    if args.dream_layer not in net.model.names or len(block_names(net.model)) < 2:
        _fail(f"the checkpoint's net has layers {net.model.names}: need --dream-layer and two blocks")

    cv = class_visualizations(net, s, args)
    print(f"class visualisations: {s['iterations']} steps, {cv['time_s']:.1f} s", flush=True)
    correct = correct_test_images(net)
    inv = inversions(net, s, args, correct)
    print(f"feature inversion: {s['inversion_iterations']} steps x {len(inv['layers'])} layers", flush=True)
    d = dream(net, s, args, correct)
    print(f"deepdream: {s['dream_iterations']} steps, {d['time_s']:.1f} s", flush=True)

    figures = [plot_class_visualizations(net, cv, f"{args.out}/class_visualizations.png"),
               plot_inversions(net, inv, f"{args.out}/feature_inversion.png"),
               plot_dream(net, d, f"{args.out}/deepdream.png")]
    early, late = inv["layers"]
    pe, pl = inv["per_layer"][early]["pixel_rmse"], inv["per_layer"][late]["pixel_rmse"]
    claims = {
        "class_visualizations_classified_as_their_class": cv["all_classified_as_target"],
        "early_layer_inversion_closer_to_image_than_late": bool(np.all(pe < pl)),
        "deepdream_raises_layer_activation_norm": bool(d["norm_after"] > d["norm_before"]),
    }
    results = {
        "source": net.source, "checkpoint": net.checkpoint, "net_test_accuracy": net.test_accuracy,
        "sizes": s,
        "class_visualization": {"rows": cv["rows"], "hyperparameters": cv["hyperparameters"],
                                "iterations": s["iterations"], "time_s": cv["time_s"]},
        "feature_inversion": {
            "indices": inv["indices"], "layers": inv["layers"], "tv_weight": inv["tv_weight"],
            "learning_rate": inv["learning_rate"], "iterations": s["inversion_iterations"],
            "baseline_pixel_rmse": inv["baseline_pixel_rmse"],
            "per_layer": {k: {kk: vv for kk, vv in v.items() if kk not in ("images", "losses")}
                          | {"loss_first": float(v["losses"][0]), "loss_last": float(v["losses"][-1])}
                          for k, v in inv["per_layer"].items()},
        },
        "deepdream": {k: v for k, v in d.items() if k not in ("image", "original")} | {"iterations": s["dream_iterations"]},
        "figures": figures,
        "claims": claims,
    }
    rows = [[f"class viz {r['class']}", r["score_before"], r["score_after"], r["probability"], r["predicted"]]
            for r in cv["rows"]]
    for layer in inv["layers"]:
        r = inv["per_layer"][layer]
        rows.append([f"inversion {layer}", float(np.mean(r["relative_feature_error"])), float(np.mean(r["pixel_rmse"])),
                     float(np.mean(inv["baseline_pixel_rmse"])), "(feat err, pixel RMSE, grey RMSE)"])
    rows.append([f"deepdream {d['layer']}", d["norm_before"], d["norm_after"], float("nan"),
                 f"pred {d['predicted_before']} -> {d['predicted_after']}"])
    return finish(args, results, ["what", "before / feat err", "after / RMSE", "p / baseline", "note"], rows,
                  f"synthesis ({net.source}, net test accuracy {net.test_accuracy:.3f})")


if __name__ == "__main__":
    main()
