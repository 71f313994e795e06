"""Neural style transfer (Gatys et al. 2016) with the issue-15 CIFAR-10 convnet's features.

    python -m experiments.style_transfer [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                         [--out DIR] [--checkpoint PATH] [--net-epochs E]
                                         [--content IMAGE] [--style IMAGE] [--size PX] [--iterations N]
                                         [--grid-iterations N] [--content-layer NAME] [--style-layers A,B,..]
                                         [--ratio R] [--tv T] [--lr LR]

``--content`` (default ``/work/shared/data/styles/tubingen.jpg``) is drawn in the style of
``--style`` (default ``starry_night.jpg`` there); any image paths Pillow reads work, a missing or
unreadable one is a one-line error.  Both are resized to ``--size`` pixels on the short side
(default 192, as the course; ``--quick`` 96, ``--smoke`` 16) and normalised with the net's own
CIFAR-10 channel statistics (not ImageNet's: the features are the CIFAR-10 net's).

**Features.** ``experiments._understand_net``'s ``fast_convnet`` (stem, block1..block3 at 1, 1/2,
1/4, 1/8 resolution with 16, 32, 64, 128 channels), its layers in eval mode, run fully
convolutionally on the large image.  Content layer ``block2`` (1/4 resolution, as the course's
SqueezeNet layer 3); style layers ``stem, block1, block2, block3`` (every depth, as the course's
early-to-middle layers 1, 4, 6, 7).  The smoke net (digits, one channel) has no ``block3`` and
sees grey images.

**Weights.** The raw losses are the course's (``jaxnet.understand``: ``content_loss``, ``style_loss``
on the registered op ``gram_matrix``, squared ``tv_loss``), but the feature scales of this net
are not SqueezeNet's, so the course's numbers (content 6e-2, style (3e5, 1e3, 15, 3), TV 2e-2)
mean nothing here.  The weights are set relative to the images instead:

    content_weight = 1 / ||φ_c(content)||²                  (content loss = relative feature error)
    style_weight_l = R / (L · ||A_l||²)                    (each layer's relative Gram error, L layers)
    tv_weight      = T / TV(content)                       (TV relative to the content image's)

so ``R = --ratio`` is the style/content weight ratio (default 10) and ``T = --tv`` the TV weight
(default 0.5).  The raw weights are in ``results.json``.

**Optimisers.** From the content image, on the pixels, ``--iterations`` steps each (default 200;
quick 100; smoke 4): Adam with lr ``--lr`` (default 0.1 in normalised units; divided by 30 for the
last 10% of the steps, as the course's 3 -> 0.1; clipped to the valid pixel range after each step),
Adam with the course's lr 3 (``adam_lr3``: on this net its first steps throw the image into
noise, the loss jumping ~100-3000x; it ends above the start after the quick 100 steps, below
after 200, still noisy), and ``optax.lbfgs`` (memory 10, zoom line search, not clipped).  The loop is the library's (``jaxnet.understand.style_transfer``'s
``lax.scan``) restated here to record the content, style and TV terms at every step (the test
checks that its total equals the library's loss curve).  Timed after compiling (the compile time
separately).  ``style_transfer.png`` (content, style, the three results), ``style_losses.png`` (the four
curves of each run).  The default run takes ~8 minutes on the loaded 2-core CPU, ``--quick`` ~2.

**Weight grid.** ``style_grid.png``: R in (R/10, R, 10R) by TV weight (0, T, 10T), L-BFGS
with ``--grid-iterations`` steps (default 100; quick 50; smoke 4), with each output's relative
content error, relative style error and TV relative to the content image.

``claims``: both optimisers (Adam at ``--lr``, L-BFGS) lower the total loss, and Adam at the
course's lr 3 (recorded); L-BFGS reaches a lower loss than Adam in the
same number of steps (Gatys et al. used L-BFGS; recorded too: the step at which each run first
comes within 10% of the better final loss); a higher style/content ratio gives a lower
style error and a higher content error (every TV column); a higher TV weight gives a smoother
image (every ratio row).  Whether the result *looks* like the style is for the figure to show.
"""
from __future__ import annotations

import functools
import os

import numpy as np

from experiments._common import Timer, fail, figure, finish, parse_args, save_figure, sized
from experiments._understand_net import add_net_flags, trained_net

NAME = "style_transfer"
DESCRIPTION = "Neural style transfer with the issue-15 CIFAR-10 convnet's features: Adam vs L-BFGS, weights, TV."
STYLE_DIR = "/work/shared/data/styles"


def _extra(parser) -> None:
    add_net_flags(parser)
    parser.add_argument("--content", default=os.path.join(STYLE_DIR, "tubingen.jpg"), help="content image path")
    parser.add_argument("--style", default=os.path.join(STYLE_DIR, "starry_night.jpg"), help="style image path")
    parser.add_argument("--size", type=int, default=None, help="short side in pixels (default 192; quick 96; smoke 16)")
    parser.add_argument("--iterations", type=int, default=None, help="steps of each optimiser (default 200; quick 100; smoke 4)")
    parser.add_argument("--grid-iterations", type=int, default=None,
                        help="L-BFGS steps of each weight-grid run (default 100; quick 50; smoke 4)")
    parser.add_argument("--content-layer", default="block2", help="content layer (default block2)")
    parser.add_argument("--style-layers", default=None,
                        help="comma-separated style layers (default stem and every block)")
    parser.add_argument("--ratio", type=float, default=10.0, help="style/content weight ratio R (default 10)")
    parser.add_argument("--tv", type=float, default=0.5, help="TV weight T relative to the content image's TV (default 0.5)")
    parser.add_argument("--lr", type=float, default=0.1,
                        help="Adam's learning rate (default 0.1; /30 for the last 10%% of the steps); the course's 3 also runs")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _net_layer_names(args) -> tuple:
    """The top-level layer names of the net ``trained_net`` builds for these flags (no training)."""
    from jaxnet.nn import fast_convnet

    from experiments._understand_net import SIZES, _size
    _, _, stem, widths = SIZES[_size(args)]
    return tuple(fast_convnet(stem=stem, widths=widths).names)


def _settings(args) -> dict:
    s = {"size": args.size if args.size is not None else sized(args, 192, 96, 16),
         "iterations": args.iterations if args.iterations is not None else sized(args, 200, 100, 4),
         "grid_iterations": args.grid_iterations if args.grid_iterations is not None else sized(args, 100, 50, 4)}
    for k, v in s.items():
        if v < 1:
            _fail(f"--{k.replace('_', '-')} must be >= 1, got {v}")
    if s["size"] < 8 or s["size"] > 1024:
        _fail(f"--size must be between 8 and 1024 pixels, got {s['size']}")
    for name, v in (("--ratio", args.ratio), ("--tv", args.tv), ("--lr", args.lr)):
        if not np.isfinite(v) or v < 0 or (name != "--tv" and v == 0):
            _fail(f"{name} must be a finite number {'>= 0' if name == '--tv' else '> 0'}, got {v}")
    names = _net_layer_names(args)
    feature_layers = [n for n in names if n == "stem" or n.startswith("block")]
    style_layers = (tuple(x.strip() for x in args.style_layers.split(",") if x.strip()) if args.style_layers
                    else tuple(feature_layers))
    if not style_layers:
        _fail("--style-layers must name at least one layer")
    for flag, layer in [("--content-layer", args.content_layer)] + [("--style-layers", x) for x in style_layers]:
        if layer not in feature_layers:
            _fail(f"{flag}: {layer!r} is not a feature layer of the net; layers: {', '.join(feature_layers)}")
    s.update(content_layer=args.content_layer, style_layers=style_layers)
    return s


def _load(flag: str, path: str, size: int) -> np.ndarray:
    from jaxnet.understand import load_image
    try:
        return load_image(path, size)
    except ValueError as e:
        _fail(f"{flag}: {e}")


def to_net_input(img: np.ndarray, net) -> np.ndarray:
    """(H, W, 3) [0, 1] RGB -> (1, H, W, C) normalised with the net's statistics (grey for C = 1)."""
    if len(net.mean) == 1:
        img = img @ np.array([0.299, 0.587, 0.114], np.float32)[:, None]
    return ((img - net.mean) / net.std)[None].astype(np.float32)


class Problem:
    """The style-transfer loss on one net: targets, the raw weights from the relative ones, and the
    terms. ``parts(v) -> (total, (content, style, tv))``."""

    def __init__(self, net, content, style, content_layer, style_layers, ratio, tv):
        import jax.numpy as jnp

        from jaxnet import functional as F
        from jaxnet import understand as U

        import jax

        self.net, self.content_layer, self.style_layers = net, content_layer, tuple(style_layers)
        m = net.model

        @jax.jit
        def targets(p, st, c, s):
            target = U.layer_output(m, p, st, c, content_layer)
            grams = [F.gram_matrix(f) for f in U.extract_features(m, p, st, s, self.style_layers)]
            return target, grams, jnp.sum(target ** 2), [jnp.sum(a ** 2) for a in grams], U.tv_loss(c)

        self.target, self.grams, cn, gn, tv0 = targets(net.params, net.state, jnp.asarray(content), jnp.asarray(style))
        self.content_norm, self.gram_norms, self.content_tv = float(cn), [float(g) for g in gn], float(tv0)
        self.set_weights(ratio, tv)

    def set_weights(self, ratio, tv):
        self.ratio, self.tv = float(ratio), float(tv)
        self.content_weight = 1.0 / self.content_norm
        self.style_weights = tuple(self.ratio / (len(self.grams) * g) for g in self.gram_norms)
        self.tv_weight = self.tv / self.content_tv
        return self

    def raw_weights(self) -> dict:
        return {"content_weight": self.content_weight, "style_weights": list(self.style_weights),
                "tv_weight": self.tv_weight}

    def weights(self) -> tuple:
        """The raw weights as the pytree ``parts`` takes: (content, (style per layer), TV)."""
        return (np.float32(self.content_weight), tuple(np.float32(w) for w in self.style_weights),
                np.float32(self.tv_weight))

    def parts(self, v, w):
        """``(total, (content, style, TV))`` at image v (1, H, W, C) with weights w (``weights()``)."""
        from jaxnet import understand as U

        m, p, st = self.net.model, self.net.params, self.net.state
        feats = U.extract_features(m, p, st, v, (self.content_layer, *self.style_layers))
        c = U.content_loss(feats[0], self.target, w[0])
        s = U.style_loss(feats[1:], self.grams, w[1])
        t = U.tv_loss(v, w[2])
        return c + s + t, (c, s, t)

    def relative(self, v) -> dict:
        """The output's relative content error, relative style error (mean over layers) and TV
        relative to the content image's."""
        import jax.numpy as jnp

        from jaxnet import functional as F
        from jaxnet import understand as U

        m, p, st = self.net.model, self.net.params, self.net.state
        v = jnp.asarray(v)
        feats = U.extract_features(m, p, st, v, (self.content_layer, *self.style_layers))
        rc = float(jnp.sum((feats[0] - self.target) ** 2)) / self.content_norm
        rs = float(np.mean([float(jnp.sum((F.gram_matrix(f) - a) ** 2)) / n
                            for f, a, n in zip(feats[1:], self.grams, self.gram_norms)]))
        return {"content_error": rc, "style_error": rs, "tv_relative": float(U.tv_loss(v)) / self.content_tv}


_COMPILED: dict = {}


def optimise(problem: Problem, x0, *, optimizer: str, iterations: int, lr: float = 3.0, clip=None):
    """``(image, curves (iterations, 4): total, content, style, TV at each step's start, seconds,
    compile seconds)``: the library's ``style_transfer`` loop (Adam: lr ``lr``, ``lr/30`` for the
    last 10% of the steps, clipped; or ``optax.lbfgs``), recording the terms, at the problem's current
    weights and ``lr`` (arguments of the compiled program: one compile per optimiser and step count)."""
    import jax
    import jax.numpy as jnp

    key = (id(problem), optimizer, iterations) + ((clip is None,) if optimizer == "adam" else ())
    x0, w, lr = jnp.asarray(x0), problem.weights(), np.float32(lr)
    comp = 0.0
    if key not in _COMPILED:
        with Timer() as tc:
            _COMPILED[key] = jax.jit(_program(problem, optimizer, iterations, clip)).lower(x0, w, lr).compile()
        comp = tc.elapsed
    with Timer() as t:
        v, curves = _COMPILED[key](x0, w, lr)
        v = np.asarray(jax.block_until_ready(v))
    return v, np.asarray(curves, np.float64), t.elapsed, comp


def _program(problem, optimizer, iterations, clip):
    import jax
    import jax.numpy as jnp
    import optax

    from jaxnet.understand._common import clip_to

    decay_at = int(0.9 * iterations)

    def make_opt(lr):   # Adam: lr, then lr/30 from step decay_at (optax.piecewise_constant_schedule's rule)
        if optimizer == "adam":
            return optax.adam(lambda count: jnp.where(count < decay_at, lr, lr / 30))
        return optax.lbfgs()

    if optimizer == "adam":
        def step(carry, w, opt):
            v, s = carry
            (value, terms), g = jax.value_and_grad(problem.parts, has_aux=True)(v, w)
            updates, s = opt.update(g, s, v)
            return (clip_to(optax.apply_updates(v, updates), clip), s), jnp.stack([value, *terms])
    else:
        def step(carry, w, opt):
            v, s = carry
            total = lambda u: problem.parts(u, w)[0]  # noqa: E731
            value, g = optax.value_and_grad_from_state(total)(v, state=s)
            terms = problem.parts(v, w)[1]
            updates, s = opt.update(g, s, v, value=value, grad=g, value_fn=total)
            return (optax.apply_updates(v, updates), s), jnp.stack([value, *terms])

    def run(v0, w, lr):
        opt = make_opt(lr)
        (v, _), curves = jax.lax.scan(lambda carry, _: step(carry, w, opt), (v0, opt.init(v0)), None,
                                      length=iterations)
        return v, curves

    return run


def _show(ax, net, x, title):
    img = net.to_unit(x)[0]
    ax.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None,
              vmin=0, vmax=1)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def plot_results(net, content, style, runs, path) -> str:
    fig = figure((4 * (2 + len(runs)), 3.6))
    _show(fig.add_subplot(1, 2 + len(runs), 1), net, content, "content")
    _show(fig.add_subplot(1, 2 + len(runs), 2), net, style, "style")
    for i, (name, r) in enumerate(runs.items()):
        _show(fig.add_subplot(1, 2 + len(runs), 3 + i), net, r["image"],
              f"{name}: loss {r['final_loss']:.3g}, {r['time_s']:.0f} s")
    return save_figure(fig, path, "Style transfer with CIFAR-10 fast_convnet features")


def plot_curves(runs, path) -> str:
    fig = figure((13, 3.2))
    for j, term in enumerate(("total", "content", "style", "TV")):
        ax = fig.add_subplot(1, 4, j + 1)
        for name, r in runs.items():
            c = r["curves"][:, j]
            ax.plot(np.arange(1, len(c) + 1), np.maximum(c, 1e-12), label=name)
        ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(f"{term} loss", fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, "Style-transfer losses (weighted terms)")


def plot_grid(net, grid, ratios, tvs, path) -> str:
    fig = figure((3.2 * len(tvs), 2.9 * len(ratios)))
    for i, r in enumerate(ratios):
        for j, t in enumerate(tvs):
            g = grid[(r, t)]
            _show(fig.add_subplot(len(ratios), len(tvs), i * len(tvs) + j + 1), net, g["image"],
                  f"R={r:g}, T={t:g}\ncontent {g['content_error']:.2f} style {g['style_error']:.3f} "
                  f"TV {g['tv_relative']:.2f}")
    return save_figure(fig, path, "Style/content ratio R (rows) by TV weight T (columns)")


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    s = _settings(args)
    content_img, style_img = _load("--content", args.content, s["size"]), _load("--style", args.style, s["size"])
    net = trained_net(args)
    import jax.numpy as jnp

    content, style = to_net_input(content_img, net), to_net_input(style_img, net)
    print(f"content {content.shape[1:3]}, style {style.shape[1:3]}; content layer {s['content_layer']}, "
          f"style layers {', '.join(s['style_layers'])}", flush=True)
    problem = Problem(net, content, style, s["content_layer"], s["style_layers"], args.ratio, args.tv)

    runs = {}
    for name, opt, lr in (("adam", "adam", args.lr), ("adam_lr3", "adam", 3.0), ("lbfgs", "lbfgs", args.lr)):
        img, curves, sec, comp = optimise(problem, content, optimizer=opt, iterations=s["iterations"], lr=lr,
                                          clip=net.clip)
        runs[name] = {"lr": lr if opt == "adam" else None, "image": img, "curves": curves, "time_s": sec, "compile_s": comp,
                     "initial_loss": float(curves[0, 0]), "final_loss": float(problem.parts(jnp.asarray(img), problem.weights())[0]),
                     **problem.relative(img)}
        print(f"{name}: loss {curves[0, 0]:.4g} -> {runs[name]['final_loss']:.4g} in {sec:.1f} s "
              f"(+{comp:.1f} s compile)", flush=True)

    best = min(runs[k]["final_loss"] for k in ("adam", "lbfgs"))
    for r in runs.values():       # the step at which each run is first within 10% of the better final loss
        hit = np.flatnonzero(r["curves"][:, 0] <= 1.1 * best)
        r["steps_to_within_10pct_of_best"] = int(hit[0]) + 1 if len(hit) else None
    ratios = (args.ratio / 10, args.ratio, args.ratio * 10)
    tvs = (0.0, args.tv, args.tv * 10) if args.tv > 0 else (0.0, 0.5, 5.0)
    grid = {}
    with Timer() as t_grid:
        for r in ratios:
            for t in tvs:
                problem.set_weights(r, t)
                img, _, sec, _ = optimise(problem, content, optimizer="lbfgs", iterations=s["grid_iterations"])
                grid[(r, t)] = {"image": img, "ratio": r, "tv": t, "time_s": sec, **problem.relative(img)}
    problem.set_weights(args.ratio, args.tv)
    print(f"grid: {len(grid)} runs of {s['grid_iterations']} L-BFGS steps, {t_grid.elapsed:.0f} s", flush=True)

    figures = [plot_results(net, content, style, runs, f"{args.out}/style_transfer.png"),
               plot_curves(runs, f"{args.out}/style_losses.png"),
               plot_grid(net, grid, ratios, tvs, f"{args.out}/style_grid.png")]
    g = lambda r, t, k: grid[(r, t)][k]  # noqa: E731
    claims = {
        "both_optimisers_lower_the_loss": all(runs[k]["final_loss"] < runs[k]["initial_loss"] for k in ("adam", "lbfgs")),
        "adam_course_lr3_lowers_the_loss": runs["adam_lr3"]["final_loss"] < runs["adam_lr3"]["initial_loss"],
        "lbfgs_lower_loss_than_adam_same_steps": runs["lbfgs"]["final_loss"] < runs["adam"]["final_loss"],
        "higher_style_ratio_lower_style_error": all(
            g(a, t, "style_error") > g(b, t, "style_error") for t in tvs for a, b in zip(ratios, ratios[1:])),
        "higher_style_ratio_higher_content_error": all(
            g(a, t, "content_error") < g(b, t, "content_error") for t in tvs for a, b in zip(ratios, ratios[1:])),
        "higher_tv_weight_smoother_image": all(
            g(r, a, "tv_relative") > g(r, b, "tv_relative") for r in ratios for a, b in zip(tvs, tvs[1:])),
    }
    results = {
        "source": net.source, "checkpoint": net.checkpoint, "net_test_accuracy": net.test_accuracy,
        "content": args.content, "style": args.style, "content_shape": list(content.shape[1:]),
        "style_shape": list(style.shape[1:]), "sizes": {k: v for k, v in s.items()},
        "ratio": args.ratio, "tv": args.tv, "adam_lr": args.lr, "weights": problem.raw_weights(),
        "runs": {k: {kk: vv for kk, vv in v.items() if kk not in ("image", "curves")}
                 | {"curves": {"total": v["curves"][:, 0], "content": v["curves"][:, 1], "style": v["curves"][:, 2],
                               "tv": v["curves"][:, 3]}} for k, v in runs.items()},
        "grid": [{k: v for k, v in x.items() if k != "image"} for x in grid.values()],
        "grid_time_s": t_grid.elapsed,
        "figures": figures,
        "claims": claims,
    }
    rows = [[name, r["initial_loss"], r["final_loss"], r["content_error"], r["style_error"], r["tv_relative"],
             r["time_s"]] for name, r in runs.items()]
    rows += [[f"grid R={x['ratio']:g} T={x['tv']:g}", float("nan"), float("nan"), x["content_error"],
              x["style_error"], x["tv_relative"], x["time_s"]] for x in grid.values()]
    return finish(args, results, ["run", "initial loss", "final loss", "content err", "style err", "TV rel", "seconds"],
                  rows, f"style transfer ({net.source} net, {content.shape[1]}x{content.shape[2]})")


if __name__ == "__main__":
    main()
