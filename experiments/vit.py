"""A vision transformer on CIFAR-10 within 20 minutes of CPU training, beside the convnet, with
attention maps.

    python -m experiments.vit [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke] [--out DIR]
                              [--epochs E] [--time-budget S] [--depth D] [--features F] [--patch P]

Model: ``jaxnet.nn.VisionTransformer`` (patch 4 on 32x32 images: 64 tokens; width 96, depth 4,
4 heads, feed-forward 192: about 0.31 M parameters, 2.7 minutes an epoch on this 2-core CPU (augmentation included),
so 7 epochs fit the budget; pre-norm encoder,
GELU feed-forward, learned positions, mean-pooled tokens, the course's version), every op on
the manual backward path (``--impl``).  Recipe: AdamW (optax, decoupled weight decay 0.05),
peak lr 1e-3 after a linear warmup, cosine to 0 at the last step; batch 128; label smoothing
0.1; random crop (pad 4) and horizontal flip inside the jitted step; flip test-time
augmentation at evaluation (the convnet experiment's).  ``--time-budget`` (default 1200 s)
stops training before an epoch that would pass it.  The schedule's length is fixed in
advance (``--epochs``), and no choice looks at the test set.

Outputs in ``--out``: ``results.json`` (per-epoch history, final accuracies, images/s);
``vit_vs_convnet.png``: test accuracy against training minutes beside the convnet's curve from
``--convnet-results`` (default ``docs/results/convnets.json``, the committed run of
``python -m experiments.convnets``; left out when that file is missing);
``attention_rollout.png``: for 8 test images, the image and the attention rollout
(:func:`jaxnet.nn.transformer.attention_rollout`) of the mean-pooled output onto the patches.

``--quick``: 3,000 training / 1,000 test images, 2 epochs (the embedded 8x8 digits with patch 2
without ``--data-dir``); ``--smoke`` (the default test suite's run): 300 / 200 images, a
one-layer model, 2 epochs.
"""

from __future__ import annotations

import functools
import json
import os
import sys

import numpy as np

from experiments._common import (
    Timer, figure, float_normalized, grid_legend, load_data, parse_args, print_table, quick_subset, save_figure,
    sized, write_results,
)

NAME = "vit"
DESCRIPTION = "A vision transformer on CIFAR-10 in 20 CPU minutes, beside the convnet, with attention maps."
TARGET = 0.60


# the flags' defaults, which --smoke and the digits adapt unless the flag is given
_DEFAULTS = {"patch": 4, "crop_padding": 4, "batch_size": 128, "depth": 4, "features": 96, "heads": 4,
             "ff_hidden": 192}


def _extra(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 7; quick 2; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--warmup-epochs", type=float, default=1.0)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--label-smoothing", type=float, default=0.1)
    parser.add_argument("--crop-padding", type=int, default=_DEFAULTS["crop_padding"])
    parser.add_argument("--patch", type=int, default=_DEFAULTS["patch"])
    parser.add_argument("--depth", type=int, default=_DEFAULTS["depth"])
    parser.add_argument("--features", type=int, default=_DEFAULTS["features"])
    parser.add_argument("--heads", type=int, default=_DEFAULTS["heads"])
    parser.add_argument("--ff-hidden", type=int, default=_DEFAULTS["ff_hidden"])
    parser.add_argument("--pool", choices=("mean", "cls"), default="mean")
    parser.add_argument("--impl", choices=("manual", "auto"), default="manual")
    parser.add_argument("--time-budget", type=float, default=1200.0,
                        help="stop before an epoch that would take training past this many seconds")
    parser.add_argument("--convnet-results", default=os.path.join("docs", "results", "convnets.json"),
                        help="the convnet experiment's results.json, for the side-by-side curve "
                             "(default: the committed run of python -m experiments.convnets)")


def build_model(args, num_classes=10):
    from jaxnet.nn import VisionTransformer
    return VisionTransformer(num_classes, patch=args.patch, depth=args.depth, features=args.features,
                             num_heads=args.heads, ff_hidden=args.ff_hidden, pool=args.pool,
                             impl="manual" if args.impl == "manual" else "autodiff")


def train(args, ds, epochs: int, quick: bool) -> tuple[dict, object]:
    from jaxnet.data import augment
    from jaxnet.nn import count_params
    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit

    from experiments.convnets import EpochLog, smoothed_cross_entropy, warmup_cosine_plan

    model = build_model(args)
    ds = ds.replace(x_val=ds.x_val[:0], y_val=ds.y_val[:0])
    bs, steps, warmup, sched = warmup_cosine_plan(args, len(ds.y_train), epochs)
    opt = make_optimizer("adamw", sched, weight_decay=args.weight_decay)
    loss_fn = functools.partial(smoothed_cross_entropy, smoothing=args.label_smoothing)
    flip = getattr(args, "flip", True)
    aug = functools.partial(augment, crop_padding=args.crop_padding, flip=flip)
    log = EpochLog(model, ds, epochs, args.time_budget)
    res = fit(model, ds, optimizer=opt, epochs=0, batch_size=bs, key=args.seed, progress=False)
    n_params = count_params(res.train_state.params)
    print(f"{_describe(model)}: {n_params:,} params, {model.tokens((1,) + ds.x_train.shape[1:])} tokens; "
          f"{epochs} epochs x {steps} steps, batch {bs}, adamw peak lr {args.lr}, warmup {warmup} steps", flush=True)
    res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=bs, key=args.seed, loss_fn=loss_fn, augment=aug,
              progress=not quick, callbacks=[log])
    h = log.history
    headline = "test_acc_tta" if flip else "test_acc"
    ips = h["images_per_second"]
    return {
        "model": _describe(model), "n_params": int(n_params), "impl": args.impl,
        "recipe": {"optimizer": "adamw (optax)", "peak_lr": args.lr, "schedule": "warmup_cosine",
                   "warmup_steps": warmup, "weight_decay": args.weight_decay,
                   "label_smoothing": args.label_smoothing,
                   "augment": f"crop pad {args.crop_padding}" + (" + flip" if flip else ""),
                   "batch_size": bs, "epochs": epochs, "steps_per_epoch": steps},
        "history": h, "headline": headline,
        "final_test_acc": h["test_acc"][-1], "final_test_acc_tta": h["test_acc_tta"][-1],
        "final": h[headline][-1], "train_time_s": log.cum, "stopped_at_budget": log.stopped,
        "images_per_second_median": float(np.median(ips[1:] if len(ips) > 1 else ips)),
    }, (model, res.train_state)


def _unless_given(args, **values) -> None:
    """Set each option to its value when it still has the parser's default (so flags win)."""
    for name, value in values.items():
        if getattr(args, name) == _DEFAULTS[name]:
            setattr(args, name, value)


def _check_args(args, epochs, image_shape) -> None:
    """One line on stderr and exit status 2 for a setting that cannot run (never a traceback)."""
    problems = []
    if epochs < 1 or args.batch_size < 1:
        problems.append(f"--epochs and --batch-size must be >= 1 (got {epochs}, {args.batch_size})")
    if not (args.lr > 0 and args.weight_decay >= 0 and args.time_budget > 0 and args.warmup_epochs >= 0):
        problems.append(f"--lr and --time-budget must be > 0, --weight-decay and --warmup-epochs >= 0 (got {args.lr}, "
                        f"{args.time_budget}, {args.weight_decay}, {args.warmup_epochs})")
    if not 0 <= args.label_smoothing < 1 or args.crop_padding < 0:
        problems.append(f"--label-smoothing must be in [0, 1) and --crop-padding >= 0 (got {args.label_smoothing}, "
                        f"{args.crop_padding})")
    if not problems:
        try:
            build_model(args).output_shape((1,) + tuple(image_shape[1:]))
        except (ValueError, TypeError) as e:
            problems.append(str(e))
    if problems:
        print(f"experiments.vit: {problems[0]}", file=sys.stderr)
        raise SystemExit(2)


def _describe(model) -> str:
    return (f"VisionTransformer(patch={model.patch}, depth={model.depth}, features={model.features}, "
            f"heads={model.num_heads}, ff={model.ff_hidden}, pool={model.pool!r})")


def rollout_maps(model, params, x):
    """(N, H/p, W/p) maps: the attention rollout from the pooled output onto each patch."""
    import jax
    import jax.numpy as jnp

    from jaxnet.nn.transformer import attention_rollout

    weights = jax.jit(model.attention_weights)(params, jnp.asarray(x))
    r = attention_rollout(weights)                         # (N, T, T)
    r = r[:, 0, 1:] if model.pool == "cls" else jnp.mean(r, axis=1)
    side = x.shape[1] // model.patch
    m = np.asarray(r).reshape(len(x), side, -1)
    return m / m.max(axis=(1, 2), keepdims=True)


def plot_rollout(model, params, ds, raw_test, path, n=8) -> str:
    maps = rollout_maps(model, params, ds.x_test[:n])
    fig = figure((2 * n, 4.2))
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        img = raw_test[i]
        axes[0, i].imshow(img.squeeze(), cmap=None if img.shape[-1] == 3 else "gray")
        axes[0, i].set_title(f"label {int(ds.y_test[i])}", fontsize=8)
        axes[1, i].imshow(img.squeeze(), cmap=None if img.shape[-1] == 3 else "gray")
        axes[1, i].imshow(np.kron(maps[i], np.ones((model.patch, model.patch))), cmap="inferno", alpha=0.6)
        for ax in axes[:, i]:
            ax.axis("off")
    return save_figure(fig, path, "attention rollout onto the patches (bright: the pooled output draws on it)")


def plot_curves(vit: dict, convnet: dict | None, path: str, title: str) -> str:
    fig = figure((7.5, 4.8))
    ax = fig.subplots()
    h = vit["history"]
    ax.plot(np.asarray(h["cum_train_time_s"]) / 60, h[vit["headline"]], "o-", ms=3, label="ViT (test)")
    if convnet is not None:
        c = convnet["history"]
        ax.plot(np.asarray(c["cum_train_time_s"]) / 60, c[convnet.get("headline", "test_acc")], "s-", ms=3,
                label="fast_convnet (test)")
    ax.axhline(TARGET, color="0.6", lw=0.8, ls="--")
    ax.set(xlabel="training time (minutes, 2-core CPU)", ylabel="test accuracy", title="accuracy vs training time")
    grid_legend((ax,), loc="lower right")
    return save_figure(fig, path, title)


def _load_convnet(path):
    try:
        with open(path) as f:
            best = json.load(f).get("best")
    except (OSError, ValueError):
        return None
    return best if best and "history" in best else None


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    from jaxnet.data import load_digits

    os.makedirs(args.out, exist_ok=True)
    with Timer() as t_load:
        if args.data_dir:
            ds, source = load_data(args, val_size=0), "cifar10"
        else:
            ds, source = load_digits(seed=args.seed), "digits"
        if args.smoke:
            ds = quick_subset(ds, n_train=300, n_test=200, seed=args.seed)
        elif args.quick and source == "cifar10":
            ds = quick_subset(ds, n_train=3000, n_test=1000, seed=args.seed)
        raw_test = ds.x_test[:8]
        ds = float_normalized(ds)
    print(f"{source}: {len(ds.y_train)} training, {len(ds.y_test)} test images ({t_load.elapsed:.1f} s)", flush=True)
    if source == "digits":                      # 8x8 images: patch 2 (16 tokens), no mirror images
        _unless_given(args, patch=2, crop_padding=1, batch_size=64)
        args.flip = False
    if args.smoke:                              # a one-layer model, unless the flags say otherwise
        _unless_given(args, depth=1, features=32, heads=2, ff_hidden=64)
    epochs = args.epochs if args.epochs is not None else sized(args, 7, 2, 2)
    _check_args(args, epochs, ds.x_train.shape)
    vit, (model, ts) = train(args, ds, epochs, args.quick)
    convnet = _load_convnet(args.convnet_results) if source == "cifar10" else None
    figures = {"curves": os.path.basename(plot_curves(
        vit, convnet, os.path.join(args.out, "vit_vs_convnet.png"),
        f"ViT on {source}: {vit['final']:.4f} test accuracy after {vit['train_time_s'] / 60:.1f} training minutes")),
        "rollout": os.path.basename(plot_rollout(model, ts.params, ds, raw_test,
                                                 os.path.join(args.out, "attention_rollout.png")))}
    results = {"data_source": source, "n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test)),
               "vit": vit, "target": TARGET, "figures": figures,
               "convnet_at_equal_time": _convnet_at(convnet, vit["train_time_s"]) if convnet else None}
    rows = [["ViT", vit["final"], vit["train_time_s"] / 60, vit["images_per_second_median"]]]
    if convnet:
        c = results["convnet_at_equal_time"]
        rows.append(["fast_convnet at the same time", c["test_acc"], c["minutes"], None])
    print_table(["model", "test accuracy", "training minutes", "images/s"], rows,
                title=f"\nViT on {source} (target {TARGET} on CIFAR-10 in 20 minutes)")
    path = write_results(args.out, results, args)
    print(f"\nwrote {path}")
    return results


def _convnet_at(convnet: dict, seconds: float) -> dict:
    """The convnet's last evaluated test accuracy at or before ``seconds`` of training."""
    h = convnet["history"]
    key = convnet.get("headline", "test_acc")
    best = {"test_acc": None, "minutes": 0.0}
    for a, t in zip(h[key], h["cum_train_time_s"]):
        if t <= seconds:
            best = {"test_acc": a, "minutes": t / 60}
    return best


if __name__ == "__main__":
    main()
