"""Fooling images and adversarial examples: the course's fooling loop, FGSM vs PGD, adversarial training.

    python -m experiments.fooling [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                  [--out DIR] [--checkpoint PATH] [--net-epochs E] [--n-fool 100]
                                  [--target T] [--lr 1.0] [--max-iterations 100] [--eps 0,1,2,4,8]
                                  [--pgd-steps 10] [--n-eval N] [--adv-eps 4] [--adv-kind pgd_linf]
                                  [--adv-steps 2] [--adv-epochs E] [--adv-n-train N] [--adv-lr 0.02]

The network is the understanding experiments' ``fast_convnet`` (``experiments._understand_net``:
trained once on CIFAR-10, or on the embedded digits without a copy, and cached).

1. **Fooling images** (the course's loop, ``jaxnet.understand.fooling_images``): ``--n-fool``
   (100) correctly classified test images (the first in a ``--seed`` permutation of the test
   split, which is sorted by class) are pushed towards a target class by gradient ascent on
   the target's score with a normalised step ``x <- x + lr g / ||g||_2``
   (``--lr`` 1, in the net's normalised input units as the course's notebook), clipped to the
   valid pixel range, until the net says the target or ``--max-iterations`` (100) steps.
   ``--target``: -1 (default) is each image's ``(y + 1) mod K``, so the target is never the
   image's own class; a class index T targets T for every image (images of class T skipped).
   Recorded: success rate, mean/median/max iterations, and the perturbation in pixel units
   (L-inf in 0..255 levels, L2 over the image in [0, 1] units). Figure ``fooling.png``: originals,
   fooling images, differences and the differences magnified 10x.
2. **Accuracy vs epsilon** (untargeted L-inf attacks on ``--n-eval`` test images drawn with
   ``--seed``, in pixel space:
   the net is wrapped with its normalisation so eps is ``k/255`` exactly and images stay in
   [0, 1]): FGSM and PGD (``--pgd-steps`` 10, step 2.5 eps/steps, random start) at each ``--eps``
   (in 0..255 levels), on the normally trained net and on an adversarially trained one.
3. **Adversarial training**: the normal net fine-tuned for ``--adv-epochs`` on ``--adv-n-train``
   training images with ``jaxnet.train.fit(..., adversarial=Adversarial(eps, kind, steps, clip=(0, 1)))``
   (Madry et al.'s "replace": the step trains on the batch's PGD examples; SGD with Nesterov
   momentum, ``--adv-lr`` warm-up-cosine, weight decay 5e-4, crops and flips); and, as the
   control, the same fine-tuning without the attack. Both cached next to
   the net's checkpoint (``...-adv-<kind>-<eps>-<steps>st-<epochs>ep-<n>-lr<lr>.ckpt``) and reused.

Figure ``robustness.png``: accuracy vs eps, FGSM and PGD, normal and adversarially trained.

Claims checked (``results.json`` ``claims``):

- ``every_image_fooled_under_100_steps`` (the course): all images reach the target, the
  slowest in fewer than 100 steps;
- ``pgd_at_most_fgsm_normal`` / ``pgd_at_most_fgsm_adversarial``: PGD's accuracy <= FGSM's at
  every eps (PGD is the stronger attack), on each net;
- ``adversarial_training_raises_robust_accuracy``: the adversarially trained net's PGD accuracy
  at ``--adv-eps`` is higher than the normal net's;
- ``adversarial_training_costs_clean_accuracy``: its clean accuracy (all test images) is lower
  than the control's (the known price, Tsipras et al. 2019). The control is the same
  fine-tuning (same images, epochs, schedule, seed) without the attack, cached likewise: the
  normal net itself is no fair baseline, as the fine-tuning also trains it longer.

Default: 100 fooling images, 500 evaluation images, the adversarial fine-tuning on 10,000
images for 2 epochs with PGD-2 at 4/255 (random start, step 1.25 eps: three forward-backward
passes per example, sized for a shared 2-core CPU). ``--quick``: the 4,000-image net, the
fine-tuning on 4,000 images;
``--smoke`` (the test suite): the digits net, 20 fooling images, 100 evaluation images,
eps 0 and 8/255, fine-tuning 1 epoch on 300 digits.
"""
from __future__ import annotations

import dataclasses
import functools
import os

import numpy as np

from experiments._common import Timer, fail, figure, finish, grid_legend, parse_args, save_figure, sized
from experiments._understand_net import add_net_flags, plain_arrays, trained_net

NAME = "fooling"
DESCRIPTION = ("Fooling images (the course's loop), FGSM and PGD accuracy-vs-epsilon curves on a normally "
               "and an adversarially trained net.")
ADV_KINDS = ("fgsm", "pgd_linf")


def _extra(parser) -> None:
    add_net_flags(parser)
    parser.add_argument("--n-fool", type=int, default=None, help="correctly classified test images to fool (default 100; smoke 20)")
    parser.add_argument("--target", type=int, default=-1,
                        help="target class: -1 (default) = each image's (y + 1) mod K, else one class for every image")
    parser.add_argument("--lr", type=float, default=1.0, help="the fooling loop's step length (normalised units; default 1)")
    parser.add_argument("--max-iterations", type=int, default=100, help="the fooling loop's step limit (default 100)")
    parser.add_argument("--eps", default=None, help="L-inf radii in 0..255 pixel levels, comma-separated (default 0,1,2,4,8; smoke 0,8)")
    parser.add_argument("--pgd-steps", type=int, default=10, help="PGD iterations (default 10)")
    parser.add_argument("--n-eval", type=int, default=None, help="test images for the curves (default 1000; quick 500; smoke 100)")
    parser.add_argument("--adv-eps", type=float, default=None, help="adversarial training's radius in 0..255 levels (default 4; smoke 8)")
    parser.add_argument("--adv-kind", default="pgd_linf", choices=ADV_KINDS, help="adversarial training's attack (default pgd_linf)")
    parser.add_argument("--adv-steps", type=int, default=2, help="PGD steps in adversarial training (default 2)")
    parser.add_argument("--adv-epochs", type=int, default=None, help="adversarial fine-tuning epochs (default 2; smoke 1)")
    parser.add_argument("--adv-n-train", type=int, default=None,
                        help="training images for the adversarial fine-tuning (default 20000; quick 4000; smoke 300)")
    parser.add_argument("--adv-lr", type=float, default=0.02, help="adversarial fine-tuning's peak learning rate (default 0.02)")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def parse_eps(text: str) -> list:
    """'0,1,2,4,8' -> [0.0, 1.0, 2.0, 4.0, 8.0] (0..255 levels, sorted, unique); ValueError otherwise."""
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError(f"--eps must be comma-separated numbers in 0..255 levels, got {text!r}") from None
    if not vals or any(not np.isfinite(v) or v < 0 or v > 255 for v in vals):
        raise ValueError(f"--eps values must be finite numbers in [0, 255], got {text!r}")
    return sorted(set(vals))


def _settings(args) -> dict:
    try:
        eps = parse_eps(args.eps or sized(args, "0,1,2,4,8", "0,1,2,4,8", "0,8"))
    except ValueError as e:
        _fail(str(e))
    s = {
        "n_fool": args.n_fool if args.n_fool is not None else sized(args, 100, 100, 20),
        "n_eval": args.n_eval if args.n_eval is not None else sized(args, 500, 500, 100),
        "adv_eps": args.adv_eps if args.adv_eps is not None else sized(args, 4.0, 4.0, 8.0),
        "adv_epochs": args.adv_epochs if args.adv_epochs is not None else sized(args, 2, 2, 1),
        "adv_n_train": args.adv_n_train if args.adv_n_train is not None else sized(args, 10000, 4000, 300),
        "eps": eps,
    }
    for name, v in (("--n-fool", s["n_fool"]), ("--n-eval", s["n_eval"]), ("--max-iterations", args.max_iterations),
                    ("--pgd-steps", args.pgd_steps), ("--adv-steps", args.adv_steps), ("--adv-epochs", s["adv_epochs"]),
                    ("--adv-n-train", s["adv_n_train"])):
        if v < 1:
            _fail(f"{name} must be >= 1, got {v}")
    for name, v in (("--lr", args.lr), ("--adv-lr", args.adv_lr)):
        if not np.isfinite(v) or v <= 0:
            _fail(f"{name} must be a finite number > 0, got {v}")
    if not np.isfinite(s["adv_eps"]) or not 0 < s["adv_eps"] <= 255:
        _fail(f"--adv-eps must be a number in (0, 255] (pixel levels), got {s['adv_eps']}")
    if args.target < -1:
        _fail(f"--target must be -1 ((y + 1) mod K) or a class index, got {args.target}")
    if s["adv_eps"] not in eps:
        s["eps"] = sorted(eps + [s["adv_eps"]])
    return s


# ------------------------------------------------------------------------- the net in pixel space

def _layer_base():
    from jaxnet.nn.layers import Layer
    return Layer


@dataclasses.dataclass(frozen=True)
class Normalize(_layer_base()):
    """``(x - mean) / std`` per channel, no parameters: the net's normalisation as its first layer,
    so attacks run on [0, 1] pixels. mean, std: tuples of floats (C,)."""
    mean: tuple
    std: tuple

    def init(self, key, input_shape):
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        import jax.numpy as jnp
        return (x - jnp.asarray(self.mean, x.dtype)) / jnp.asarray(self.std, x.dtype), state

    def output_shape(self, input_shape):
        return tuple(input_shape)


def pixel_model(net):
    """``(model, params, state)``: the net taking [0, 1] pixels."""
    from jaxnet.nn import Sequential

    norm = Normalize(tuple(float(v) for v in net.mean), tuple(float(v) for v in net.std))
    return (Sequential((norm, net.model), ("normalize", "net")), {"normalize": {}, "net": net.params},
            {"normalize": {}, "net": net.state})


def to_pixels(net, x) -> np.ndarray:
    """Normalised images -> [0, 1] pixels (exact inverse, no clipping)."""
    return (np.asarray(x, np.float32) * net.std + net.mean).astype(np.float32)


def fooling_targets(y, target: int, num_classes: int) -> np.ndarray:
    """Each image's target: ``(y + 1) mod K`` for target -1, else ``target``."""
    y = np.asarray(y)
    return ((y + 1) % num_classes if target == -1 else np.full_like(y, target)).astype(np.int32)


def perturbation_sizes(net, x, x_fooled) -> dict:
    """Per image, in pixel units: L-inf in 0..255 levels and L2 over the image in [0, 1] units."""
    d = to_pixels(net, x_fooled) - to_pixels(net, x)
    d = d.reshape(len(d), -1).astype(np.float64)
    return {"linf_255": 255.0 * np.max(np.abs(d), axis=1), "l2": np.sqrt(np.sum(d * d, axis=1))}


# ------------------------------------------------------------------------------------------ attacks

_PREDICT = {}


def _predict_fn(model):
    """The jitted eval-mode argmax of ``model`` (one per model: the curves of both nets share it)."""
    import jax
    import jax.numpy as jnp

    if model not in _PREDICT:
        _PREDICT[model] = jax.jit(lambda p, s, v: jnp.argmax(model.apply(p, s, v, train=False)[0], axis=-1))
    return _PREDICT[model]


def attack_accuracies(model, params, state, x, y, eps_levels, *, pgd_steps, key, batch=250) -> dict:
    """Accuracy under FGSM and PGD (L-inf, random start) at each eps (0..255 levels), pixels x in [0, 1]."""
    import jax
    import jax.numpy as jnp

    from jaxnet import understand as U

    fgsm = jax.jit(U.fgsm, static_argnums=0, static_argnames=("eps",))
    pgd = jax.jit(U.pgd, static_argnums=0, static_argnames=("eps", "norm", "steps", "random_start"))
    predict = _predict_fn(model)
    clip = (jnp.zeros((), x.dtype), jnp.ones((), x.dtype))
    out = {"fgsm": [], "pgd": []}
    for e in eps_levels:
        eps = float(e) / 255.0
        correct = {"fgsm": 0, "pgd": 0}
        for i in range(0, len(x), batch):
            xb, yb = jnp.asarray(x[i:i + batch]), jnp.asarray(y[i:i + batch])
            if eps == 0:
                c = int(jnp.sum(predict(params, state, xb) == yb))
                correct["fgsm"] += c
                correct["pgd"] += c
                continue
            xf = fgsm(model, params, state, xb, yb, eps=eps, clip=clip)
            xp = pgd(model, params, state, xb, yb, eps=eps, norm="linf", steps=pgd_steps, random_start=True,
                     key=jax.random.fold_in(key, i), clip=clip)
            correct["fgsm"] += int(jnp.sum(predict(params, state, xf) == yb))
            correct["pgd"] += int(jnp.sum(predict(params, state, xp) == yb))
        for k in out:
            out[k].append(correct[k] / len(x))
    return out


def adversarial_net(net, args, s, model, params, state, *, attack: bool = True):
    """The normal net fine-tuned with adversarial training (``attack=False``: the same fine-tuning
    without the attack, the control), read from its cache or trained now. Returns (params, state, info)."""
    from experiments.what_learned import load_fast_convnet
    from jaxnet.data import subsample
    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import TrainState, fit, num_batches, read_checkpoint, save_checkpoint
    from jaxnet.understand import Adversarial

    eps_text = f"{s['adv_eps']:g}"
    tag = f"adv-{args.adv_kind}-{eps_text}-{args.adv_steps}st" if attack else "clean"
    path = (os.path.splitext(net.checkpoint)[0] + f"-{tag}-{s['adv_epochs']}ep-{s['adv_n_train']}-lr{args.adv_lr:g}.ckpt")
    what = "adversarially trained" if attack else "control (clean fine-tuning)"
    info = {"checkpoint": path, "epochs": s["adv_epochs"], "n_train": s["adv_n_train"], "lr": args.adv_lr}
    if attack:
        info.update(eps_255=s["adv_eps"], kind=args.adv_kind, steps=args.adv_steps)
    if os.path.exists(path):
        try:
            _, p, st, _ = load_fast_convnet(path)
        except Exception as e:  # noqa: BLE001 - a bad file is a one-line exit
            _fail(f"cannot read the {what} net's checkpoint: {str(e).splitlines()[0]}")
        print(f"{what} net: {path}", flush=True)
        return {"normalize": {}, "net": p}, {"normalize": {}, "net": st}, {**info, "trained_now": False}
    x, y = net.x_train, net.y_train
    if len(y) > s["adv_n_train"]:
        x, y = subsample(x, y, s["adv_n_train"], seed=args.seed)
    from jaxnet.data import Dataset
    ds = Dataset(x_train=to_pixels(net, x), y_train=y, x_val=to_pixels(net, x[:0]), y_val=y[:0],
                 x_test=to_pixels(net, net.x_test[:0]), y_test=net.y_test[:0], classes=net.classes)
    bs = 128 if not args.smoke else 50
    total = s["adv_epochs"] * num_batches(len(y), bs)
    opt = make_optimizer("nesterov", make_schedule("warmup_cosine", args.adv_lr, total_steps=total,
                                                   warmup_steps=max(1, total // 10)), weight_decay=5e-4)
    adv = Adversarial(s["adv_eps"] / 255.0, kind=args.adv_kind, steps=args.adv_steps, clip=(0.0, 1.0))
    small = x.shape[1] < 32
    with Timer() as t:
        res = fit(model, ds, optimizer=opt, epochs=s["adv_epochs"], batch_size=bs, key=args.seed + 1,
                  augment={"crop_padding": 1 if small else 4, "flip": not small}, init_params=(params, state),
                  adversarial=adv if attack else None, progress=not args.quick)
    ts = res.train_state
    _, config, _, _ = read_checkpoint(net.checkpoint)
    inner = TrainState(step=ts.step, params=ts.params["net"], state=ts.state["net"], opt_state={}, key=ts.key)
    save_checkpoint(path, inner, config={**config, "adversarial": repr(adv) if attack else None,
                                         "fine_tuned_from": net.checkpoint, "adv_epochs": s["adv_epochs"],
                                         "adv_n_train": len(y), "adv_lr": args.adv_lr})
    print(f"{what} net: fine-tuned {s['adv_epochs']} epochs on {len(y)} images"
          f"{f' with {args.adv_kind} eps {eps_text}/255' if attack else ''}, {t.elapsed:.0f} s -> {path}", flush=True)
    params, state = plain_arrays((ts.params, ts.state))   # as read from the cache: the attacks compile once
    return params, state, {**info, "trained_now": True, "train_time_s": t.elapsed}


# ------------------------------------------------------------------------------------------ figures

def plot_fooling(net, x, x_fooled, y, t, its, path, title, n_show=5) -> str:
    n = min(n_show, len(x))
    orig, fool = to_pixels(net, x[:n]), to_pixels(net, x_fooled[:n])
    diff = fool - orig
    gray = orig.shape[-1] == 1
    cols = ("original", "fooling image", "difference", "difference x10")
    fig = figure((2.0 * len(cols), 2.0 * n + 0.4))
    for i in range(n):
        m = max(float(np.max(np.abs(diff[i]))), 1e-12)
        panels = (orig[i], fool[i], 0.5 + 0.5 * diff[i] / m, np.clip(0.5 + 10 * diff[i], 0, 1))
        for j, img in enumerate(panels):
            ax = fig.add_subplot(n, len(cols), i * len(cols) + j + 1)
            img = np.clip(img, 0, 1)
            ax.imshow(img[..., 0] if gray else img, cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(f"{net.classes[int(y[i])]}", fontsize=8)
            if j == 1:
                ax.set_xlabel(f"-> {net.classes[int(t[i])]} ({int(its[i])} steps)", fontsize=7)
            if j == 2:
                ax.set_xlabel(f"max |d| = {255 * m:.1f}/255 (rescaled)", fontsize=7)
            if i == 0:
                ax.set_title(cols[j], fontsize=8)
    return save_figure(fig, path, title)


def plot_curves(eps, curves, adv_eps, path, title) -> str:
    fig = figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for net_name, ls in (("normal", "-"), ("adversarial", "--")):
        for attack, color in (("fgsm", "C0"), ("pgd", "C3")):
            ax.plot(eps, 100 * np.asarray(curves[net_name][attack]), ls, color=color, marker="o", ms=4,
                    label=f"{attack.upper()}, {net_name} training")
    ax.axvline(adv_eps, color="gray", lw=0.8, ls=":", label=f"training eps {adv_eps:g}/255")
    ax.set_xlabel("L-inf eps (pixel levels /255)")
    ax.set_ylabel("test accuracy under attack (%)")
    ax.set_ylim(0, 100)
    grid_legend([ax])
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxnet import understand as U

    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    s = _settings(args)
    net = trained_net(args)
    k = len(net.classes)
    if args.target >= k:
        _fail(f"--target must be -1 or a class index below {k}, got {args.target}")
    pred = net.predict(net.x_test)
    order = np.random.default_rng(args.seed).permutation(len(net.y_test))   # the test split is sorted by class
    ok = order[((pred == net.y_test) & ((net.y_test != args.target) if args.target >= 0 else True))[order]]
    if len(ok) < s["n_fool"]:
        _fail(f"only {len(ok)} correctly classified test images to fool, --n-fool {s['n_fool']} asked for")
    idx = ok[:s["n_fool"]]
    x, y = net.x_test[idx], net.y_test[idx]
    t = fooling_targets(y, args.target, k)
    lo, hi = net.clip
    fool = jax.jit(U.fooling_images, static_argnums=0, static_argnames=("learning_rate", "max_iterations"))
    with Timer() as t_fool:
        res = fool(net.model, net.params, net.state, jnp.asarray(x), jnp.asarray(t), learning_rate=args.lr,
                   max_iterations=args.max_iterations, clip=(jnp.asarray(lo), jnp.asarray(hi)))
        x_fooled, its, fooled = (np.asarray(a) for a in res)
    fooled_pred = net.predict(x_fooled)
    sizes = perturbation_sizes(net, x, x_fooled)
    fooled_sizes = {k_: v[fooled] for k_, v in sizes.items()}
    fooling = {
        "n_images": len(idx), "target_rule": "(y + 1) mod K" if args.target == -1 else f"class {args.target}",
        "success_rate": float(np.mean(fooled)), "n_fooled": int(fooled.sum()),
        "prediction_matches_target": float(np.mean(fooled_pred == t)),
        "mean_iterations": float(its[fooled].mean()) if fooled.any() else None,
        "median_iterations": float(np.median(its[fooled])) if fooled.any() else None,
        "max_iterations": int(its.max()), "iterations": its,
        "linf_255_mean": float(fooled_sizes["linf_255"].mean()) if fooled.any() else None,
        "linf_255_max": float(fooled_sizes["linf_255"].max()) if fooled.any() else None,
        "l2_mean": float(fooled_sizes["l2"].mean()) if fooled.any() else None,
        "l2_max": float(fooled_sizes["l2"].max()) if fooled.any() else None,
        "time_s": t_fool.elapsed,
    }
    print(f"fooling: {fooling['n_fooled']}/{len(idx)} fooled, mean {fooling['mean_iterations']} / max "
          f"{fooling['max_iterations']} steps, L-inf {fooling['linf_255_mean']}/255, L2 {fooling['l2_mean']} "
          f"({t_fool.elapsed:.1f} s)", flush=True)
    figures = {"fooling": plot_fooling(net, x, x_fooled, y, t, its, f"{args.out}/fooling.png",
                                       f"{net.source}: fooling images (lr {args.lr:g}, target {fooling['target_rule']})")}

    model, params, state = pixel_model(net)
    n_eval = min(s["n_eval"], len(net.y_test))
    eval_idx = np.sort(order[:n_eval])
    xe, ye = to_pixels(net, net.x_test[eval_idx]), net.y_test[eval_idx].astype(np.int32)
    key = jax.random.key(args.seed)
    curves = {}
    with Timer() as t_normal:
        curves["normal"] = attack_accuracies(model, params, state, xe, ye, s["eps"], pgd_steps=args.pgd_steps,
                                             key=jax.random.fold_in(key, 1))
    adv_params, adv_state, adv_info = adversarial_net(net, args, s, model, params, state)
    with Timer() as t_adv:
        curves["adversarial"] = attack_accuracies(model, adv_params, adv_state, xe, ye, s["eps"],
                                                  pgd_steps=args.pgd_steps, key=jax.random.fold_in(key, 1))
    from jaxnet.train import evaluate
    x_test_pix = to_pixels(net, net.x_test)
    adv_info["test_accuracy"] = float(evaluate(model, adv_params, adv_state, x_test_pix, net.y_test, 500)[1])
    ctl_params, ctl_state, ctl_info = adversarial_net(net, args, s, model, params, state, attack=False)
    ctl_info["test_accuracy"] = float(evaluate(model, ctl_params, ctl_state, x_test_pix, net.y_test, 500)[1])
    print(f"test accuracy (all {len(net.y_test)} images): normal {net.test_accuracy:.4f}, adversarially trained "
          f"{adv_info['test_accuracy']:.4f}, control {ctl_info['test_accuracy']:.4f}", flush=True)
    figures["robustness"] = plot_curves(s["eps"], curves, s["adv_eps"], f"{args.out}/robustness.png",
                                        f"{net.source}: L-inf attacks on {n_eval} test images")
    i_adv = s["eps"].index(s["adv_eps"])
    claims = {
        "every_image_fooled_under_100_steps": bool(fooled.all() and its.max() < 100),
        "pgd_at_most_fgsm_normal": bool(all(p <= f for p, f in zip(curves["normal"]["pgd"], curves["normal"]["fgsm"]))),
        "pgd_at_most_fgsm_adversarial": bool(all(p <= f for p, f in zip(curves["adversarial"]["pgd"],
                                                                          curves["adversarial"]["fgsm"]))),
        "adversarial_training_raises_robust_accuracy": bool(curves["adversarial"]["pgd"][i_adv]
                                                            > curves["normal"]["pgd"][i_adv]),
        "adversarial_training_costs_clean_accuracy": bool(adv_info["test_accuracy"] < ctl_info["test_accuracy"]),
    }
    results = {
        "source": net.source, "checkpoint": net.checkpoint, "net_test_accuracy": net.test_accuracy,
        "net_trained_now": net.trained_now, "fooling": fooling, "fooling_images": idx,
        "eps_255": s["eps"], "n_eval": n_eval, "eval_images": eval_idx, "pgd_steps": args.pgd_steps, "curves": curves,
        "curve_time_s": {"normal": t_normal.elapsed, "adversarial": t_adv.elapsed},
        "adversarial_training": adv_info, "control_fine_tuning": ctl_info, "figures": figures, "claims": claims,
    }
    rows = [[f"{e:g}/255"] + [curves[n][a][i] for n in ("normal", "adversarial") for a in ("fgsm", "pgd")]
            for i, e in enumerate(s["eps"])]
    return finish(args, results, ["eps", "normal FGSM", "normal PGD", "adv FGSM", "adv PGD"], rows,
                  f"{net.source}: accuracy under L-inf attacks ({n_eval} test images; adversarial training "
                  f"{args.adv_kind} {s['adv_eps']:g}/255)")


if __name__ == "__main__":
    main()
