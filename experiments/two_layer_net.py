"""The course's two-layer net (affine - ReLU - affine, softmax) on CIFAR-10 raw pixels.

    python -m experiments.two_layer_net --data-dir /path/to/cifar10-jpeg.tar.gz [--quick]

Pipeline (CS231n assignment 1, "two_layer_net"):

1. CIFAR-10 as float in [0, 1], normalised per channel with TRAINING statistics
   (49,000 train / 1,000 val / 10,000 test).
2. Random search (``jaxnet.classic.search.random_search``) over hidden size, learning rate and
   L2 weight decay: each trial trains a short run (``--search-epochs`` on a
   ``--search-train`` subset of the training split) and is scored on the validation split.
3. The best setting is retrained on the whole training split for ``--epochs`` with Adam,
   a cosine learning-rate decay, L2 weight decay (``make_optimizer``'s ``weight_decay``: added
   to the gradient, i.e. ``0.5 * wd * ||W||^2`` in the loss, weights only) and random
   horizontal flips (``--augment flip``; the architecture stays affine-ReLU-affine). The
   weights of the epoch with the best validation accuracy are kept and evaluated once on the
   test split.

Without a CIFAR-10 copy (no ``--data-dir``, no ``$JAXNET_CIFAR10_DIR``) the same pipeline runs on
the embedded 8x8 digits (their own 1,257 / 270 / 270 split; no flips by default: a mirrored
digit is another symbol).

Writes in ``--out``: results.json (val/test accuracy, the chosen hyperparameters, every
search trial, history, wall times), curves.png (loss/accuracy per epoch), weights.png
(first-layer weights as 32x32x3 images, as in the course), search.png.

``--smoke`` (the default test suite's run): 400 training and 200 test images, one search trial
of 2 epochs, 2 final epochs.
"""
from __future__ import annotations

import math
import os

import numpy as np

from experiments._common import (
    Timer, figure, parse_args, print_table, quick_cifar_or_digits_uint8, save_figure, sized, write_results,
)

NAME = "two_layer_net"
DESCRIPTION = "Two-layer net (affine-relu-affine) on CIFAR-10 raw pixels, with a random hyperparameter search."


def _extra(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None,
                        help="final training epochs (default 25; quick 2; on the digits 100; quick 20; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=200, help="minibatch size (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=None, help="random-search trials (default 8; quick 2; smoke 1)")
    parser.add_argument("--search-epochs", type=int, default=None,
                        help="epochs per trial (default 3; quick 1; on the digits 20; quick 5; smoke 2)")
    parser.add_argument("--search-train", type=int, default=None,
                        help="training images per trial (default 20000; quick 2000)")
    parser.add_argument("--hidden", type=int, default=None,
                        help="fix the hidden size instead of searching it")
    parser.add_argument("--dropout", type=float, default=0.0,
                        help="dropout probability after the ReLU (0: the plain two_layer_net)")
    parser.add_argument("--augment", choices=("none", "flip", "flip+crop"), default=None,
                        help="training augmentation (default: flip on CIFAR-10, none on the digits)")


def _model(hidden: int, dropout: float):
    from jaxnet.nn import fully_connected_net, two_layer_net

    if dropout > 0:
        return fully_connected_net(hidden_dims=(hidden,), dropout=dropout)
    return two_layer_net(hidden)


def _augment(name: str):
    return {"none": None, "flip": {"crop_padding": 0, "flip": True},
            "flip+crop": {"crop_padding": 2, "flip": True}}[name]


def _optimizer(lr: float, weight_decay: float, total_steps: int):
    from jaxnet.optim import make_optimizer, schedules

    return make_optimizer("adam", schedules.cosine(lr, total_steps=max(1, total_steps), final_lr=lr * 0.01),
                          weight_decay=weight_decay)


def _steps(n: int, batch_size: int, epochs: int) -> int:
    return math.ceil(n / batch_size) * epochs


def plot_weight_grid(w, path, *, image_shape=(32, 32, 3), max_units: int = 100, title=None) -> str:
    """The course's ``visualize_grid`` of first-layer weights: each hidden unit's (D,) column
    of ``w`` (D, H) as an image, rescaled to [0, 1] by its own min/max, tiled in a square grid."""
    w = np.asarray(w, np.float32)
    n = min(w.shape[1], max_units)
    imgs = w[:, :n].T.reshape(n, *image_shape)
    lo = imgs.min(axis=(1, 2, 3), keepdims=True)
    hi = imgs.max(axis=(1, 2, 3), keepdims=True)
    imgs = (imgs - lo) / np.where(hi > lo, hi - lo, 1.0)
    side = math.ceil(math.sqrt(n))
    h, wd, c = image_shape
    pad = 1
    grid = np.ones((side * (h + pad) + pad, side * (wd + pad) + pad, c), np.float32)
    for i in range(n):
        r, col = divmod(i, side)
        y0, x0 = pad + r * (h + pad), pad + col * (wd + pad)
        grid[y0:y0 + h, x0:x0 + wd] = imgs[i]
    fig = figure((7, 7))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid if c == 3 else grid[..., 0], interpolation="nearest", cmap=None if c == 3 else "gray")
    ax.axis("off")
    ax.set_title(title or f"first-layer weights ({n} of {w.shape[1]} hidden units)")
    return save_figure(fig, path)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    quick = args.quick
    trials = args.trials or sized(args, 8, 2, 1)
    search_train = args.search_train or (2000 if quick else 20000)
    bs = args.batch_size

    import jax

    from jaxnet.classic.search import plot_search, random_search, results_table
    from jaxnet.data import subsample
    from jaxnet.train import evaluate, fit
    from jaxnet.viz import plot_history

    with Timer() as t_load:
        ds, source = quick_cifar_or_digits_uint8(args, val_size=1000, normalize=True)
    if args.augment is None:
        args.augment = "flip" if source == "cifar10" else "none"
    # the digits' 1,257 training images make 7 steps per epoch: more epochs for a comparable run
    # (--smoke: a trial as long as the final run, so the final run's programs are the trial's, cached)
    if source == "cifar10":
        epochs = args.epochs or sized(args, 25, 2, 2)
        search_epochs = args.search_epochs or sized(args, 3, 1, 2)
    else:
        epochs = args.epochs or sized(args, 100, 20, 2)
        search_epochs = args.search_epochs or sized(args, 20, 5, 2)
    augment = _augment(args.augment)

    # ---- random search on the validation split
    xs, ys = subsample(ds.x_train, ds.y_train, min(search_train, len(ds.y_train)), seed=args.seed + 1)
    search_ds = ds.replace(x_train=xs, y_train=ys)
    space = {"learning_rate": (3e-4, 3e-3, "log"), "weight_decay": (1e-5, 3e-3, "log")}
    if args.hidden is None:
        space["hidden"] = (200, 1000, "log") if not quick else (50, 100, "log")

    def hidden_of(p):
        return args.hidden if args.hidden is not None else int(round(p["hidden"] / 50.0) * 50) or 50

    def train_eval(p):
        h = hidden_of(p)
        opt = _optimizer(p["learning_rate"], p["weight_decay"], _steps(len(ys), bs, search_epochs))
        r = fit(_model(h, args.dropout), search_ds, optimizer=opt, epochs=search_epochs, batch_size=bs,
                key=args.seed, augment=augment, progress=False)
        return r.best_val_acc, r.history["train_acc"][r.best_epoch - 1]

    with Timer() as t_search:
        found = random_search(train_eval, space, trials, seed=args.seed, verbose=True)
    best = dict(found[0].params)
    hidden = hidden_of(best)
    print(results_table(found), flush=True)

    # ---- final run on the whole training split
    lr, wd = best["learning_rate"], best["weight_decay"]
    model = _model(hidden, args.dropout)
    opt = _optimizer(lr, wd, _steps(len(ds.y_train), bs, epochs))
    with Timer() as t_train:
        res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=bs, key=args.seed, augment=augment,
                  progress=not quick)
    val_loss, val_acc = evaluate(model, res.best_params, res.best_state, ds.x_val, ds.y_val, 1000)
    test_loss, test_acc = evaluate(model, res.best_params, res.best_state, ds.x_test, ds.y_test, 1000)
    train_loss, train_acc = evaluate(model, res.best_params, res.best_state, ds.x_train, ds.y_train, 1000)

    os.makedirs(args.out, exist_ok=True)
    figures = {
        "curves": plot_history(res.history, os.path.join(args.out, "curves.png"),
                               title=f"two-layer net, hidden {hidden}, Adam lr {lr:.2g}, wd {wd:.2g}"),
        "weights": plot_weight_grid(jax.device_get(res.best_params["fc1"]["w"]),
                                    os.path.join(args.out, "weights.png"), image_shape=ds.x_train.shape[1:]),
        "search": plot_search(found, os.path.join(args.out, "search.png"), x="learning_rate", y="weight_decay",
                              title="random search (short runs): accuracy by learning rate and weight decay"),
    }
    results = {
        "data_source": source,
        "model": "affine-relu-affine" + (f" (dropout {args.dropout})" if args.dropout > 0 else ""),
        "preprocessing": "float [0,1], per-channel mean/std from the training split",
        "hyperparameters": {
            "hidden": hidden, "learning_rate": lr, "weight_decay": wd, "dropout": args.dropout,
            "optimizer": "adam", "schedule": "cosine to 1% of lr", "epochs": epochs, "batch_size": bs,
            "augment": args.augment,
        },
        "train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc,
        "train_loss": train_loss, "val_loss": val_loss, "test_loss": test_loss,
        "best_epoch": res.best_epoch,
        "n_train": int(len(ds.y_train)), "n_val": int(len(ds.y_val)), "n_test": int(len(ds.y_test)),
        "search": {
            "space": {k: list(v) for k, v in space.items()}, "trials": trials, "epochs_per_trial": search_epochs,
            "train_images_per_trial": int(len(ys)),
            "results": [{"params": {**t.params, "hidden": hidden_of(t.params)}, "val_acc": t.val_acc,
                         "train_acc": t.train_acc} for t in found],
        },
        "history": res.history,
        "times_s": {"load": t_load.elapsed, "search": t_search.elapsed, "train": t_train.elapsed},
        "figures": {k: os.path.basename(v) for k, v in figures.items()},
    }
    path = write_results(args.out, results, args)
    print_table(
        ["model", "hidden", "lr", "weight decay", "epochs", "train acc", "val acc", "test acc", "train s"],
        [["two-layer net", hidden, lr, wd, epochs, train_acc, val_acc, test_acc, round(t_train.elapsed, 1)]],
        title=f"{'CIFAR-10' if source == 'cifar10' else ds.name} raw pixels ({len(ds.y_train)} train images); "
              f"search {t_search.elapsed:.0f} s",
    )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
