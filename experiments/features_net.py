"""Image features (HOG + HSV colour histogram) -> linear SVM and two-layer net, on CIFAR-10.

    python -m experiments.features_net --data-dir /path/to/cifar10-jpeg.tar.gz [--quick]

The "features" part of CS231n assignment 1:

1. Per image, ``jaxnet.classic.features``: HOG on the greyscale image (8x8 cells, 9
   unsigned orientation bins, 144 numbers for 32x32) and a 10-bin histogram of the HSV hue;
   concatenated (154 numbers), batched and jit-compiled.
2. Standardised with the TRAINING split's mean and std (the course's normalisation).
3. A linear SVM (``jaxnet.classic.linear.train_linear``, minibatch SGD, bias column) with a
   random search over learning rate and regularisation on the validation split.
4. The two-layer net (affine - ReLU - affine, softmax; dropout after the ReLU when the search
   picks it) with a random search over hidden size, learning rate, weight decay and dropout,
   each trial trained on the whole training split for ``--search-epochs``; the best is
   retrained for ``--epochs`` with Adam + cosine decay and the best-validation weights are
   evaluated once on the test split.

Without a CIFAR-10 copy (no ``--data-dir``, no ``$JAXNET_CIFAR10_DIR``) the same pipeline runs on
the embedded 8x8 digits (their own 1,257 / 270 / 270 split): grey images, so no hue histogram
(``--hsv-bins`` is ignored), and HOG with ``DIGITS_CELL_SIZE`` = 2-pixel cells (a 4 x 4 grid,
144 numbers; an 8-pixel cell would be the whole image).

Writes in ``--out``: results.json, curves.png, search.png.

``--smoke`` (the default test suite's run): 400 training and 200 test images, one SVM trial of
50 iterations, one net trial of 2 epochs, 2 final epochs.
"""
from __future__ import annotations

import math
import os
from functools import partial

import numpy as np

from experiments._common import Timer, parse_args, print_table, quick_cifar_or_digits_uint8, sized, write_results

NAME = "features_net"
DESCRIPTION = "HOG + HSV colour-histogram features -> linear SVM and two-layer net on CIFAR-10."
CIFAR_CELL_SIZE = 8
DIGITS_CELL_SIZE = 2


def _extra(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None,
                        help="final training epochs (default 30; quick 2; on the digits 100; quick 20; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=200, help="minibatch size (default: %(default)s)")
    parser.add_argument("--trials", type=int, default=None, help="net random-search trials (default 12; quick 2; smoke 1)")
    parser.add_argument("--search-epochs", type=int, default=None,
                        help="epochs per net trial (default 10; quick 1; on the digits 20; quick 5; smoke 2)")
    parser.add_argument("--svm-trials", type=int, default=None, help="linear SVM trials (default 10; quick 2; smoke 1)")
    parser.add_argument("--svm-iters", type=int, default=None, help="SGD iterations per SVM (default 2000; quick 200; smoke 50)")
    parser.add_argument("--hsv-bins", type=int, default=10, help="hue histogram bins (default: %(default)s)")
    parser.add_argument("--cell-size", type=int, default=None,
                        help=f"HOG cell size in pixels (default: {CIFAR_CELL_SIZE}; {DIGITS_CELL_SIZE} on the digits)")


def _model(hidden: int, dropout: float):
    from jaxnet.nn import fully_connected_net, two_layer_net

    if dropout > 0:
        return fully_connected_net(hidden_dims=(hidden,), dropout=dropout)
    return two_layer_net(hidden)


def _optimizer(lr: float, weight_decay: float, total_steps: int):
    from jaxnet.optim import make_optimizer, schedules

    return make_optimizer("adam", schedules.cosine(lr, total_steps=max(1, total_steps), final_lr=lr * 0.01),
                          weight_decay=weight_decay)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    quick = args.quick
    trials = args.trials or sized(args, 12, 2, 1)
    svm_trials = args.svm_trials or sized(args, 10, 2, 1)
    svm_iters = args.svm_iters or sized(args, 2000, 200, 50)
    bs = args.batch_size

    from jaxnet.classic.features import color_histogram_hsv, feature_dataset, hog_features
    from jaxnet.classic.linear import accuracy, add_bias_column, train_linear
    from jaxnet.classic.search import plot_search, random_search, results_table
    from jaxnet.train import evaluate, fit
    from jaxnet.viz import plot_history

    with Timer() as t_load:
        ds, source = quick_cifar_or_digits_uint8(args, val_size=1000, normalize=False)

    # the digits' 1,257 training images make 7 steps per epoch: more epochs for a comparable run
    # (--smoke: a trial as long as the final run, so the final run's programs are the trial's, cached)
    if source == "cifar10":
        epochs = args.epochs or sized(args, 30, 2, 2)
        search_epochs = args.search_epochs or sized(args, 10, 1, 2)
    else:
        epochs = args.epochs or sized(args, 100, 20, 2)
        search_epochs = args.search_epochs or sized(args, 20, 5, 2)
    if args.cell_size is None:
        args.cell_size = CIFAR_CELL_SIZE if source == "cifar10" else DIGITS_CELL_SIZE
    hsv_bins = args.hsv_bins if ds.x_train.shape[-1] == 3 else 0      # grey images have no hue
    fns = (partial(hog_features, cell_size=args.cell_size),)
    if hsv_bins:
        fns += (partial(color_histogram_hsv, nbins=hsv_bins),)
    with Timer() as t_feat:
        fds, norm = feature_dataset(ds, fns, batch_size=1000)
    dim = fds.x_train.shape[-1]
    n_hog = dim - hsv_bins
    print(f"features: {dim} per image (HOG {n_hog} + hue histogram {hsv_bins}) in {t_feat.elapsed:.1f} s "
          f"for {len(ds.y_train) + len(ds.y_val) + len(ds.y_test)} images", flush=True)

    # ---- linear SVM on the features (bias trick)
    X = {s: add_bias_column(getattr(fds, f"x_{s}").reshape(-1, dim)) for s in ("train", "val", "test")}
    Y = {s: getattr(fds, f"y_{s}") for s in ("train", "val", "test")}
    svm_models = {}

    def svm_eval(p):
        W, _ = train_linear(X["train"], Y["train"], loss="svm", learning_rate=p["learning_rate"], reg=p["reg"],
                            num_iters=svm_iters, batch_size=bs, seed=args.seed, num_classes=fds.num_classes)
        svm_models[(p["learning_rate"], p["reg"])] = W
        return accuracy(W, X["val"], Y["val"]), accuracy(W, X["train"], Y["train"])

    with Timer() as t_svm:
        svm_found = random_search(svm_eval, {"learning_rate": (1e-3, 1e-1, "log"), "reg": (1e-4, 1e-1, "log")},
                                  svm_trials, seed=args.seed)
    svm_best = svm_found[0]
    W = svm_models[(svm_best.params["learning_rate"], svm_best.params["reg"])]
    svm_test = accuracy(W, X["test"], Y["test"])
    print("linear SVM search:\n" + results_table(svm_found, top=5), flush=True)

    # ---- two-layer net on the features
    space = {"learning_rate": (3e-4, 3e-3, "log"), "weight_decay": (1e-5, 1e-2, "log"),
             "hidden": (200, 2000, "log") if not quick else (50, 100, "log"), "dropout": (0.0, 0.6, "linear")}

    def hidden_of(p):
        return max(50, int(round(p["hidden"] / 50.0) * 50))

    def dropout_of(p):
        return round(p["dropout"], 2) if p["dropout"] >= 0.05 else 0.0

    n_train = len(fds.y_train)
    steps_per_epoch = math.ceil(n_train / bs)

    def net_eval(p):
        opt = _optimizer(p["learning_rate"], p["weight_decay"], steps_per_epoch * search_epochs)
        r = fit(_model(hidden_of(p), dropout_of(p)), fds, optimizer=opt, epochs=search_epochs, batch_size=bs,
                key=args.seed, progress=False)
        return r.best_val_acc, r.history["train_acc"][r.best_epoch - 1]

    with Timer() as t_search:
        found = random_search(net_eval, space, trials, seed=args.seed, verbose=True)
    print(results_table(found), flush=True)
    best = found[0].params
    hidden, dropout, lr, wd = hidden_of(best), dropout_of(best), best["learning_rate"], best["weight_decay"]

    model = _model(hidden, dropout)
    with Timer() as t_train:
        res = fit(model, fds, optimizer=_optimizer(lr, wd, steps_per_epoch * epochs), epochs=epochs, batch_size=bs,
                  key=args.seed, progress=False)
    train_loss, train_acc = evaluate(model, res.best_params, res.best_state, fds.x_train, fds.y_train, 1000)
    val_loss, val_acc = evaluate(model, res.best_params, res.best_state, fds.x_val, fds.y_val, 1000)
    test_loss, test_acc = evaluate(model, res.best_params, res.best_state, fds.x_test, fds.y_test, 1000)

    os.makedirs(args.out, exist_ok=True)
    figures = {
        "curves": plot_history(res.history, os.path.join(args.out, "curves.png"),
                               title=f"features -> two-layer net, hidden {hidden}, dropout {dropout}, "
                                     f"Adam lr {lr:.2g}, wd {wd:.2g}"),
        "search": plot_search(found, os.path.join(args.out, "search.png"), x="learning_rate", y="weight_decay",
                              title=f"features -> two-layer net: random search ({search_epochs} epochs per trial)"),
    }
    results = {
        "features": {
            "hog": {"cell_size": args.cell_size, "orientations": 9, "dims": n_hog, "orientation": "unsigned, folded mod 180",
                    "gray": "0.299 R + 0.587 G + 0.114 B" if ds.x_train.shape[-1] == 3 else "the one channel"},
            "hsv_hue_bins": hsv_bins, "dims": dim, "normalisation": "train mean/std",
            "extract_time_s": t_feat.elapsed,
        },
        "data_source": source,
        "linear_svm": {"learning_rate": svm_best.params["learning_rate"], "reg": svm_best.params["reg"],
                       "num_iters": svm_iters, "batch_size": bs, "train_acc": svm_best.train_acc,
                       "val_acc": svm_best.val_acc, "test_acc": svm_test, "search_time_s": t_svm.elapsed,
                       "trials": [{"params": t.params, "val_acc": t.val_acc, "train_acc": t.train_acc}
                                  for t in svm_found]},
        "model": "affine-relu-affine" + (f" (dropout {dropout})" if dropout > 0 else ""),
        "hyperparameters": {"hidden": hidden, "learning_rate": lr, "weight_decay": wd, "dropout": dropout,
                            "optimizer": "adam", "schedule": "cosine to 1% of lr", "epochs": epochs,
                            "batch_size": bs},
        "train_acc": train_acc, "val_acc": val_acc, "test_acc": test_acc,
        "train_loss": train_loss, "val_loss": val_loss, "test_loss": test_loss,
        "best_epoch": res.best_epoch,
        "n_train": int(n_train), "n_val": int(len(fds.y_val)), "n_test": int(len(fds.y_test)),
        "search": {"space": {k: list(v) for k, v in space.items()}, "trials": trials,
                   "epochs_per_trial": search_epochs,
                   "results": [{"params": {**t.params, "hidden": hidden_of(t.params), "dropout": dropout_of(t.params)},
                                "val_acc": t.val_acc, "train_acc": t.train_acc} for t in found]},
        "history": res.history,
        "times_s": {"load": t_load.elapsed, "features": t_feat.elapsed, "svm_search": t_svm.elapsed,
                    "net_search": t_search.elapsed, "train": t_train.elapsed},
        "figures": {k: os.path.basename(v) for k, v in figures.items()},
    }
    path = write_results(args.out, results, args)
    print_table(
        ["classifier", "settings", "train acc", "val acc", "test acc"],
        [["linear SVM", f"lr {svm_best.params['learning_rate']:.2g}, reg {svm_best.params['reg']:.2g}",
          svm_best.train_acc, svm_best.val_acc, svm_test],
         ["two-layer net", f"hidden {hidden}, dropout {dropout}, lr {lr:.2g}, wd {wd:.2g}, {epochs} ep",
          train_acc, val_acc, test_acc]],
        title=f"CIFAR-10, HOG + hue-histogram features ({dim} dims, {n_train} train images)" if source == "cifar10"
        else f"{ds.name}, HOG features ({args.cell_size}-pixel cells, {dim} dims, {n_train} train images)",
    )
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
