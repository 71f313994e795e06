"""Which pixels matter: saliency, SmoothGrad, guided backprop, Grad-CAM, occlusion, and their sanity check.

    python -m experiments.saliency [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                   [--out DIR] [--checkpoint PATH] [--net-epochs E] [--images 8]
                                   [--samples 16] [--noise 0.15] [--patch P] [--stride S] [--layer NAME]

The network is the understanding experiments' ``fast_convnet`` (``experiments._understand_net``:
trained once on CIFAR-10, or on the embedded digits without a copy, and cached). ``--images``
test images (default 8: the first correctly classified test image of each of the first 8
classes) get five maps of their own class's score, computed with ``jaxnet.understand``, each
under ``jax.jit``:

1. vanilla gradient saliency ``max_c |ds_y/dx|`` (Simonyan et al. 2014; the course's recipe);
2. SmoothGrad (Smilkov et al. 2017): ``--samples`` noisy copies, noise ``--noise`` x the image's range;
3. guided backpropagation (Springenberg et al. 2015), shown as the gradient image rescaled to [0, 1];
4. Grad-CAM (Selvaraju et al. 2017) at ``--layer`` (default the last conv block, ``block3``),
   upsampled bilinearly to the image;
5. occlusion sensitivity (Zeiler and Fergus 2014): the drop of p(y) when a ``--patch`` square
   (default H/4: 8 pixels on CIFAR-10) of the normalised image is set to 0 (the mean), every
   ``--stride`` pixels (default 2), all positions in one vmap.

Figure ``saliency.png``: one row per image, the image and the five maps side by side.

The sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps", cascading model
parameter randomisation): from the top (``fc``) down to the stem, each layer's parameters in
turn are replaced by a fresh draw of the model's initializer, cumulatively; after each, the
maps of the same images are recomputed and compared with the trained net's maps by Spearman's
rank correlation (per image; of the absolute maps: vanilla ``max_c |g|``, guided backprop
``max_c |g|``, Grad-CAM as upsampled). Figures ``sanity_curves.png`` (mean rho per randomised
layer, the band the images' min..max) and ``sanity_maps.png`` (two images' maps as layers are
randomised). Batch-norm running statistics are kept (the paper re-initialises weights only).

Claims checked (``results.json`` ``claims``), thresholds stated here:

- ``vanilla_gradient_changes``: the vanilla gradient's mean rho with all layers randomised is
  < 0.5 (the paper: the map depends on the weights, as an explanation must);
- ``grad_cam_changes``: the same for Grad-CAM;
- ``guided_backprop_barely_changes``: the paper's finding that guided backprop is nearly
  invariant to the randomisation (it acts like an edge detector of the input): its mean rho
  stays >= 0.5 at every step of the cascade. True reproduces the paper's (negative) finding.
  Recorded with it, per method: ``steps_above_threshold``, how many layers (from the top) are
  randomised before the mean rho first falls below 0.5.

``--quick``: the 4,000-image net (4 epochs), 8 samples; ``--smoke`` (the test suite): the digits
net (8x8, 2 blocks), 4 images, 4 SmoothGrad samples.
"""
from __future__ import annotations

import functools

import numpy as np

from experiments._common import Timer, fail, figure, finish, grid_legend, parse_args, save_figure, sized
from experiments._understand_net import add_net_flags, trained_net

NAME = "saliency"
DESCRIPTION = ("Saliency, SmoothGrad, guided backprop, Grad-CAM and occlusion maps of the same test images, "
               "and the cascading randomisation sanity check (Adebayo et al. 2018).")
METHODS = ("vanilla", "smoothgrad", "guided", "gradcam", "occlusion")
TITLES = {"vanilla": "gradient", "smoothgrad": "SmoothGrad", "guided": "guided backprop",
          "gradcam": "Grad-CAM", "occlusion": "occlusion (drop of p)"}
SANITY = ("vanilla", "guided", "gradcam")
THRESHOLD = 0.5


def _extra(parser) -> None:
    add_net_flags(parser)
    parser.add_argument("--images", type=int, default=None, help="test images (default 8; smoke 4)")
    parser.add_argument("--samples", type=int, default=None, help="SmoothGrad's noisy copies (default 16; quick 8; smoke 4)")
    parser.add_argument("--noise", type=float, default=0.15, help="SmoothGrad's noise level, a fraction of the image's range")
    parser.add_argument("--patch", type=int, default=None, help="occlusion patch side in pixels (default H/4)")
    parser.add_argument("--stride", type=int, default=None, help="occlusion stride in pixels (default 2; 1 on 8x8 images)")
    parser.add_argument("--layer", default=None, help="Grad-CAM's layer (default the last conv block)")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _check_flags(args) -> None:
    """The flags that need no data (before the net is loaded or trained)."""
    for name, v in (("--images", args.images), ("--samples", args.samples), ("--patch", args.patch),
                    ("--stride", args.stride)):
        if v is not None and v < 1:
            _fail(f"{name} must be >= 1, got {v}")
    if not np.isfinite(args.noise) or args.noise < 0:
        _fail(f"--noise must be a finite number >= 0, got {args.noise}")


def pick_images(y_true, y_pred, n: int, num_classes: int) -> np.ndarray:
    """Indices of ``n`` correctly classified images: the first of each class in turn (classes
    0, 1, ...; more than one per class when ``n`` exceeds the classes), in test-set order."""
    correct = np.flatnonzero(np.asarray(y_true) == np.asarray(y_pred))
    per_class = [list(correct[np.asarray(y_true)[correct] == c]) for c in range(num_classes)]
    out = []
    while len(out) < n and any(per_class):
        for c in range(num_classes):
            if per_class[c] and len(out) < n:
                out.append(per_class[c].pop(0))
    if len(out) < n:
        raise ValueError(f"only {len(out)} correctly classified test images, {n} asked for")
    return np.asarray(out)


def unit_scale(m) -> np.ndarray:
    """Each map (first axis = images) rescaled to [0, 1] by its own min and max (constant -> 0)."""
    m = np.asarray(m, np.float64)
    axes = tuple(range(1, m.ndim))
    lo, hi = m.min(axis=axes, keepdims=True), m.max(axis=axes, keepdims=True)
    return np.where(hi > lo, (m - lo) / np.where(hi > lo, hi - lo, 1.0), 0.0)


def summarize_sanity(rho) -> dict:
    """Per-step statistics of a (L, N) rank-correlation array (NaN = a constant map, left out)."""
    rho = np.asarray(rho, np.float64)
    finite = np.isfinite(rho)
    mean = np.array([np.mean(r[f]) if f.any() else np.nan for r, f in zip(rho, finite)])
    lo = np.array([np.min(r[f]) if f.any() else np.nan for r, f in zip(rho, finite)])
    hi = np.array([np.max(r[f]) if f.any() else np.nan for r, f in zip(rho, finite)])
    return {"mean": mean, "min": lo, "max": hi, "constant_maps": int((~finite).sum()),
            "after_top": float(mean[0]), "after_all": float(mean[-1]), "lowest_mean": float(np.nanmin(mean)),
            "steps_above_threshold": int(np.argmax(~(mean >= THRESHOLD))) if np.any(~(mean >= THRESHOLD)) else len(mean)}


def _methods(net, layer, size, samples, noise, patch, stride, key):
    """name -> jitted (params, x, y) -> maps (N, H, W) or (N, H', W') for occlusion; also the raw
    guided gradient for display."""
    import jax
    import jax.numpy as jnp

    from jaxnet import understand as U

    model, state = net.model, net.state

    def vanilla(p, x, y):
        return U.saliency_map(model, p, state, x, y)

    def smooth(p, x, y):
        return U.smoothgrad(model, p, state, x, y, key, num_samples=samples, noise=noise)

    def guided(p, x, y):   # the raw gradient (N, H, W, C); reduced with max_abs_channels
        return U.guided_backprop(model, p, state, x, y)

    def gradcam(p, x, y):
        return U.grad_cam(model, p, state, x, y, layer, size=size)

    def occlusion(p, x, y):
        full = jax.nn.softmax(model.apply(p, state, x, train=False)[0], axis=-1)
        p_y = jnp.take_along_axis(full, y[:, None], axis=1)[:, :, None]
        return p_y - U.occlusion_map(model, p, state, x, y, patch=patch, stride=stride)

    fns = {"vanilla": vanilla, "smoothgrad": smooth, "guided": guided, "gradcam": gradcam,
           "occlusion": occlusion}
    return {k: jax.jit(f) for k, f in fns.items()}


def max_abs_channels(g) -> np.ndarray:
    """(N, H, W, C) gradients -> (N, H, W) maps ``max_c |g|`` (the vanilla map's reduction)."""
    return np.max(np.abs(np.asarray(g, np.float64)), axis=-1)


def sanity_check(net, fn, x, y, key, reduce=None) -> "object":
    """``jaxnet.understand.cascading_randomization`` with the jitted map ``fn(params, x, y)``
    (then ``reduce``, e.g. :func:`max_abs_channels`, when given)."""
    from jaxnet import understand as U

    reduce = reduce or np.asarray
    return U.cascading_randomization(net.model, net.params, net.state, x, y, key,
                                     method=lambda m, p, s, xx, yy: reduce(fn(p, xx, yy)))


def plot_maps(net, x, y, maps, guided_raw, classes, path, title) -> str:
    n = len(x)
    cols = ["image"] + [TITLES[m] for m in METHODS]
    fig = figure((1.6 * len(cols), 1.6 * n + 0.4))
    imgs = net.to_unit(x)
    gray = imgs.shape[-1] == 1
    for i in range(n):
        panels = [imgs[i], None, None, unit_scale(guided_raw)[i], None, None]
        for j, name in enumerate(cols):
            ax = fig.add_subplot(n, len(cols), i * len(cols) + j + 1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.imshow(imgs[i][..., 0] if gray else imgs[i], cmap="gray" if gray else None)
                ax.set_ylabel(classes[int(y[i])], fontsize=8)
            elif METHODS[j - 1] == "guided":
                g = panels[3]
                ax.imshow(g[..., 0] if gray else g, cmap="gray" if gray else None)
            elif METHODS[j - 1] == "gradcam":
                ax.imshow(imgs[i][..., 0] if gray else imgs[i], cmap="gray" if gray else None)
                ax.imshow(unit_scale(maps["gradcam"])[i], cmap="jet", alpha=0.5)
            elif METHODS[j - 1] == "occlusion":
                v = max(float(np.max(np.abs(maps["occlusion"][i]))), 1e-6)   # symmetric, per image
                ax.imshow(maps["occlusion"][i], cmap="RdBu_r", vmin=-v, vmax=v)
            else:
                ax.imshow(unit_scale(maps[METHODS[j - 1]])[i], cmap="hot")
            if i == 0:
                ax.set_title(name, fontsize=8)
    return save_figure(fig, path, title)


def plot_curves(layers, summaries, path, title) -> str:
    fig = figure((max(6.0, 0.45 * len(layers) + 2), 4.0))
    ax = fig.add_subplot(1, 1, 1)
    xs = np.arange(len(layers) + 1)
    for name in SANITY:
        s = summaries[name]
        line, = ax.plot(xs, np.r_[1.0, s["mean"]], "o-", ms=3, label=TITLES[name])
        ax.fill_between(xs, np.r_[1.0, s["min"]], np.r_[1.0, s["max"]], color=line.get_color(), alpha=0.15)
    ax.axhline(THRESHOLD, color="gray", lw=0.8, ls="--")
    ax.set_xticks(xs)
    ax.set_xticklabels(["trained"] + list(layers), rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("Spearman rho with the trained map")
    ax.set_xlabel("cascading randomisation: layers randomised so far, from the top")
    ax.set_ylim(-1.05, 1.05)
    grid_legend([ax])
    return save_figure(fig, path, title)


def plot_sanity_maps(net, x, layers, checks, path, title, images=(0, 1)) -> str:
    images = [i for i in images if i < len(x)]
    steps = len(layers) + 1
    rows = [(i, m) for i in images for m in SANITY]
    fig = figure((0.9 * (steps + 1) + 0.6, 0.95 * len(rows) + 0.8))
    imgs = net.to_unit(x)
    gray = imgs.shape[-1] == 1
    for r, (i, m) in enumerate(rows):
        ax = fig.add_subplot(len(rows), steps + 1, r * (steps + 1) + 1)
        ax.imshow(imgs[i][..., 0] if gray else imgs[i], cmap="gray" if gray else None)
        ax.set_xticks([]), ax.set_yticks([])
        ax.set_ylabel(TITLES[m], fontsize=6)
        maps = unit_scale(checks[m].maps[:, i])
        for s in range(steps):
            ax = fig.add_subplot(len(rows), steps + 1, r * (steps + 1) + s + 2)
            ax.imshow(maps[s], cmap="hot")
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("trained" if s == 0 else layers[s - 1], fontsize=5, rotation=45)
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    import jax
    import jax.numpy as jnp

    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    _check_flags(args)
    net = trained_net(args)
    h, w, c = net.x_test.shape[1:]
    n_images = args.images if args.images is not None else sized(args, 8, 8, 4)
    samples = args.samples if args.samples is not None else sized(args, 16, 8, 4)
    patch = args.patch if args.patch is not None else max(1, h // 4)
    stride = args.stride if args.stride is not None else max(1, h // 16)
    if patch > min(h, w):
        _fail(f"--patch {patch} is larger than the {h}x{w} images")
    blocks = [n for n in net.model.names if n.startswith("block")]
    layer = args.layer or blocks[-1]
    if layer not in net.model.names or layer == net.model.names[-1]:
        _fail(f"--layer must be a top-level layer before the last one, one of {net.model.names[:-1]}, got {layer!r}")
    pred = net.predict(net.x_test)
    try:
        idx = pick_images(net.y_test, pred, n_images, len(net.classes))
    except ValueError as e:
        _fail(str(e))
    x, y = jnp.asarray(net.x_test[idx]), jnp.asarray(net.y_test[idx].astype(np.int32))
    print(f"{len(idx)} test images {idx.tolist()}, classes {[net.classes[int(v)] for v in y]}; "
          f"Grad-CAM at {layer!r}, occlusion patch {patch} stride {stride}, SmoothGrad {samples} x {args.noise}",
          flush=True)

    key = jax.random.key(args.seed)
    fns = _methods(net, layer, (h, w), samples, args.noise, patch, stride, jax.random.fold_in(key, 1))
    maps, times = {}, {}
    for name in METHODS:
        fn = fns[name]
        with Timer() as t_first:
            fn(net.params, x, y).block_until_ready()
        with Timer() as t:
            out = fn(net.params, x, y).block_until_ready()
        maps["guided_raw" if name == "guided" else name] = np.asarray(out, np.float64)
        times[name] = {"first_call_s": t_first.elapsed, "per_image_ms": 1e3 * t.elapsed / len(idx)}
    maps["guided"] = max_abs_channels(maps["guided_raw"])
    figures = {"maps": plot_maps(net, x, y, maps, maps["guided_raw"], net.classes, f"{args.out}/saliency.png",
                                 f"{net.source}: saliency methods on {len(idx)} test images (net test acc "
                                 f"{net.test_accuracy:.3f})")}

    checks, summaries = {}, {}
    with Timer() as t_sanity:
        for name in SANITY:
            checks[name] = sanity_check(net, fns[name], x, y, jax.random.fold_in(key, 2),
                                        max_abs_channels if name == "guided" else None)
            summaries[name] = summarize_sanity(checks[name].rank_correlation)
    layers = list(checks["vanilla"].layers)
    figures["sanity_curves"] = plot_curves(layers, summaries, f"{args.out}/sanity_curves.png",
                                           "Cascading randomisation (Adebayo et al. 2018): rank correlation")
    figures["sanity_maps"] = plot_sanity_maps(net, x, layers, checks, f"{args.out}/sanity_maps.png",
                                              "Maps as the layers are randomised, top first",
                                              images=sized(args, (0, 1), (0, 1), (0,)))

    s = summaries
    claims = {
        "vanilla_gradient_changes": bool(s["vanilla"]["after_all"] < THRESHOLD),
        "grad_cam_changes": bool(s["gradcam"]["after_all"] < THRESHOLD),
        "guided_backprop_barely_changes": bool(s["guided"]["lowest_mean"] >= THRESHOLD),
    }
    results = {
        "source": net.source, "checkpoint": net.checkpoint, "net_test_accuracy": net.test_accuracy,
        "net_trained_now": net.trained_now, "images": idx, "labels": np.asarray(y),
        "classes": [net.classes[int(v)] for v in y], "gradcam_layer": layer, "occlusion_patch": patch,
        "occlusion_stride": stride, "smoothgrad_samples": samples, "smoothgrad_noise": args.noise,
        "threshold": THRESHOLD, "times": times, "sanity_time_s": t_sanity.elapsed,
        "sanity": {"layers": layers, **{name: {"rank_correlation": checks[name].rank_correlation, **s[name]}
                                        for name in SANITY}},
        "figures": figures, "claims": claims,
    }
    rows = [[TITLES[name], times[name]["per_image_ms"],
             s[name]["after_top"] if name in SANITY else "-", s[name]["after_all"] if name in SANITY else "-",
             s[name]["lowest_mean"] if name in SANITY else "-"] for name in METHODS]
    return finish(args, results, ["method", "ms/image", f"rho ({layers[0]} random)", "rho (all random)",
                                  "lowest mean rho"], rows,
                  f"{net.source}: saliency maps of {len(idx)} images and the randomisation check "
                  f"({len(layers)} layers)")


if __name__ == "__main__":
    main()
