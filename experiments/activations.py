"""Activation functions: the same net with six nonlinearities.

    python -m experiments.activations [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]

The net is ``fully_connected_net(hidden_dims=(200, 200), num_classes=10, activation=NAME)``
for sigmoid, tanh, relu, leaky_relu and elu (the names ``jaxnet.nn.models.ACTIVATIONS``
supports). Maxout is not one of them, so its net is built here with the same layout and
names: ``flatten, {fc_i: Affine(2 * h), act_i: Maxout(pieces=2)} x 2, fc3: Affine(10, "small")``
(each maxout unit computes ``max(w1.x + b1, w2.x + b2)``, so it has twice the hidden weights).

Every net is trained with ``jaxnet.train.fit`` (Adam, lr 1e-3, batch 128) with the same
``key`` (hence the same initial-weight key and the same data order for every activation).
The test accuracy is measured with the best-validation-epoch parameters.

Outputs in ``--out``: ``results.json`` (per-activation history, final train loss, best/final
validation accuracy, test accuracy, time), ``curves.png`` (training loss and validation
accuracy per epoch, one line per activation) and a printed table.

Data: a CIFAR-10 subset (20,000 training images, 1,000 validation, the full 10,000 test,
per-channel normalised) when ``--data-dir`` or ``$JAXNET_CIFAR10_DIR`` is given, else the
embedded 8x8 digits (``jaxnet.data.load_digits``, normalised); ``results.json`` records which.
``--quick``: 4 epochs on at most 2,000 training images (well under 20 s on the digits).
``--smoke`` (the default test suite's run): ReLU and maxout only (``--activations``), 2 epochs on
300 images.
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, figure, grid_legend, parse_args, print_table, save_figure, sized, write_results,
)

NAME = "activations"
ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu", "elu", "maxout")
SMOKE_ACTIVATIONS = ("relu", "maxout")  # a library activation and the net built here
HIDDEN = (200, 200)
LEARNING_RATE = 1e-3
BATCH_SIZE = 128


def _extra(parser) -> None:
    parser.add_argument("--n-train", type=int, default=None,
                        help="training subset (default 20000; quick 2000; smoke 300)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per activation (default 15; quick 4; smoke 2)")
    parser.add_argument("--activations", default=None,
                        help=f"comma-separated subset of {','.join(ACTIVATIONS)} (default all; smoke "
                             f"{','.join(SMOKE_ACTIVATIONS)})")


def build_model(name: str, hidden_dims=HIDDEN, num_classes: int = 10):
    """The (200, 200) fully connected net with activation ``name`` (maxout: 2 pieces)."""
    from jaxnet.nn import Affine, Flatten, Maxout, Sequential, fully_connected_net

    if name != "maxout":
        return fully_connected_net(hidden_dims=hidden_dims, num_classes=num_classes, activation=name)
    layers, names = [Flatten()], ["flatten"]
    for i, h in enumerate(hidden_dims, start=1):
        layers += [Affine(2 * h, w_init="he"), Maxout(pieces=2)]
        names += [f"fc{i}", f"act{i}"]
    layers.append(Affine(num_classes, w_init="small"))  # same head init as fully_connected_net
    names.append(f"fc{len(hidden_dims) + 1}")
    return Sequential(tuple(layers), tuple(names))


def _count_params(params) -> int:
    import jax

    return int(sum(np.size(p) for p in jax.tree_util.tree_leaves(params)))


def run_one(name: str, ds, *, epochs: int, batch_size: int, seed: int) -> dict:
    from jaxnet.optim import make_optimizer
    from jaxnet.train import evaluate, fit

    model = build_model(name, num_classes=len(np.unique(ds.y_train)) if len(ds.y_train) else 10)
    with Timer() as t:
        res = fit(model, ds, optimizer=make_optimizer("adam", LEARNING_RATE), epochs=epochs,
                  batch_size=batch_size, key=seed, progress=False)
    train_s = t.elapsed
    with Timer() as te:
        test_loss, test_acc = evaluate(model, res.best_params, res.best_state, ds.x_test, ds.y_test, 500)
    h = {k: [float(v) for v in res.history[k]] for k in ("epoch", "train_loss", "train_acc", "val_loss",
                                                       "val_acc", "epoch_time")}
    return {
        "model": repr(model),
        "n_params": _count_params(res.best_params),
        "history": h,
        "initial_train_loss": h["train_loss"][0],
        "final_train_loss": h["train_loss"][-1],
        "final_train_acc": h["train_acc"][-1],
        "final_val_acc": h["val_acc"][-1],
        "best_val_acc": float(res.best_val_acc),
        "best_epoch": int(res.best_epoch),
        "test_loss": test_loss,
        "test_acc": test_acc,
        "train_time_s": train_s,
        "time_s": train_s + te.elapsed,
    }


# ---------------------------------------------------------------- figure (Agg, no pyplot)

def plot_curves(runs: dict, title: str, path: str) -> str:
    fig = figure((11, 4.2))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, r in runs.items():
        ep = r["history"]["epoch"]
        loss = np.asarray(r["history"]["train_loss"], dtype=np.float64)
        ok = np.isfinite(loss)
        ax_loss.plot(np.asarray(ep)[ok], loss[ok], marker="o", markersize=3, lw=1.3, label=name)
        ax_acc.plot(ep, r["history"]["val_acc"], marker="o", markersize=3, lw=1.3,
                    label=f"{name} (test {r['test_acc']:.3f})")
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    grid_legend((ax_loss, ax_acc))
    fig.suptitle(title, fontsize=10)
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, "Activation functions: sigmoid, tanh, ReLU, leaky ReLU, ELU, maxout in the "
                      "same fully connected net.", _extra, argv)
    import jax

    n_train = args.n_train or sized(args, 20000, 2000, 300)
    epochs = args.epochs or sized(args, 15, 4, 2)
    if args.activations is None:
        args.activations = ",".join(sized(args, ACTIVATIONS, ACTIVATIONS, SMOKE_ACTIVATIONS))
    names = [a.strip() for a in args.activations.split(",") if a.strip()]
    bad = [a for a in names if a not in ACTIVATIONS]
    if bad or not names:
        raise SystemExit(f"experiments.{NAME}: unknown activation(s) {bad}; choose from {list(ACTIVATIONS)}")
    os.makedirs(args.out, exist_ok=True)

    with Timer() as t:
        ds, source, desc = cifar_or_digits(args, n_train)
    data_s = t.elapsed
    batch_size = min(BATCH_SIZE, len(ds.y_train))
    print(f"{desc}; fully connected {HIDDEN}, Adam lr {LEARNING_RATE:g}, batch {batch_size}, {epochs} epochs",
          flush=True)

    runs = {}
    for name in names:
        runs[name] = run_one(name, ds, epochs=epochs, batch_size=batch_size, seed=args.seed)
        r = runs[name]
        print(f"  {name:<10s} train loss {r['initial_train_loss']:.3f} -> {r['final_train_loss']:.3f}  "
              f"val {r['final_val_acc']:.3f}  test {r['test_acc']:.3f}  ({r['time_s']:.1f} s)", flush=True)

    figure = plot_curves(runs, f"{desc}; same init key and data order", os.path.join(args.out, "curves.png"))
    ranking = sorted(runs, key=lambda n: -runs[n]["test_acc"])
    results = {
        "dataset": desc,
        "data_source": source,
        "protocol": {"model": f"fully_connected_net(hidden_dims={HIDDEN}, num_classes=10, activation=NAME); "
                              "maxout: Affine(2h) + Maxout(pieces=2) per hidden layer",
                     "n_train": int(len(ds.y_train)), "n_val": int(len(ds.y_val)), "n_test": int(len(ds.y_test)),
                     "optimizer": "adam", "learning_rate": LEARNING_RATE, "batch_size": batch_size,
                     "epochs": epochs, "key": args.seed, "normalization": "channel",
                     "test_params": "best validation epoch"},
        "activations": runs,
        "summary": {n: {"final_train_loss": r["final_train_loss"], "final_val_acc": r["final_val_acc"],
                        "best_val_acc": r["best_val_acc"], "test_acc": r["test_acc"], "time_s": r["time_s"]}
                    for n, r in runs.items()},
        "ranking_by_test_acc": ranking,
        "chance": 1.0 / 10,
        "timings_s": {"data_s": data_s},
        "figures": {"curves": figure},
        "backend": jax.default_backend(),
    }
    path = write_results(args.out, results, args)
    print_table(["activation", "params", "final train loss", "val acc", "best val acc", "test acc", "seconds"],
                [[n, r["n_params"], r["final_train_loss"], r["final_val_acc"], r["best_val_acc"], r["test_acc"],
                  r["time_s"]] for n, r in runs.items()],
                title=f"\n{desc} ({epochs} epochs; test accuracy at the best validation epoch)")
    print(f"\nwrote {path} and {os.path.basename(figure)}")
    return results


if __name__ == "__main__":
    main()
