"""Degradation and residual learning (He et al. 2016, figures 1 and 6): plain nets vs ResNets.

    python -m experiments.residual [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                   [--out DIR] [--depths 20,56] [--width 16] [--epochs E] [--n-train N]

Four nets from ``jaxnet.nn.zoo.cifar_resnet``: the plain nets and the ResNets of each depth in
``--depths`` (6n + 2; default 20 and 56), the same layers with and without the shortcuts
(projection shortcuts where the shape changes), ``--width`` channels in the first stage (16
in the paper).  Each is trained with ``jaxnet.train.fit`` from the same seed, on the manual
backward path (``--impl``): SGD with momentum 0.9 (``--lr`` 0.1, cosine to 0), weight decay
1e-4, batch 128, random crops and flips.  Recorded per epoch: the training error (running,
train mode, over the epoch's batches) and the test error (eval mode, all test images).

The lecture's claim (the degradation problem): the deeper *plain* net trains worse than the
shallower one (a higher training error: not overfitting, optimisation), while the deeper
*ResNet* trains better.  ``results.json`` records each run's curves and final errors and
``claims``: whether the final training errors order that way.  Figure ``residual.png``: the
plain nets (left) and ResNets (right), training error dashed, test error solid.

On this 2-core CPU the paper's recipe (64k steps on 50k images) is out of reach: the default
run uses ``--n-train`` 5,000 CIFAR-10 images and ``--epochs`` 10, sized from the ``--quick``
run's timings to fit about 50 minutes for the four nets (not yet confirmed by a full run);
the same script runs the full recipe unchanged on a GPU (``--n-train 50000 --epochs 160``).  ``--quick``: 2,000 images, 3 epochs (the embedded digits without ``--data-dir``);
``--smoke`` (the default test suite's run): depths 8 and 14, width 4, 300 digits, 1 epoch.
"""
from __future__ import annotations

import functools

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, fail, figure, finish, grid_legend, parse_args, save_figure, sized,
)

NAME = "residual"
DESCRIPTION = "Degradation and residual learning: plain nets vs ResNets of two depths (He et al. 2016)."


def _extra(parser) -> None:
    parser.add_argument("--depths", default=None, help="two or more depths 6n + 2, comma-separated (default 20,56)")
    parser.add_argument("--width", type=int, default=None, help="channels of the first stage (default 16)")
    parser.add_argument("--n-test", type=int, default=None,
                        help="test images for the per-epoch test error (default: all of the split)")
    parser.add_argument("--zero-init-residual", action="store_true",
                        help="start each ResNet block's last BN gamma at 0 (Goyal et al. 2017; the plain nets keep theirs)")
    recipe_flags(parser)


def recipe_flags(parser) -> None:
    """The training recipe's flags (shared with experiments.wide_deep)."""
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 10; quick 3; smoke 1)")
    parser.add_argument("--n-train", type=int, default=None, help="training images (default 5000; quick 2000)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine to 0)")
    parser.add_argument("--weight-decay", type=float, default=1e-4)
    parser.add_argument("--impl", default="manual", choices=("manual", "auto"), help="backward path of the ops")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _settings(args):
    depths_text = args.depths or sized(args, "20,56", "20,56", "8,14")
    try:
        depths = tuple(int(d) for d in depths_text.split(","))
    except ValueError:
        _fail(f"--depths must be comma-separated integers, got {depths_text!r}")
    if len(depths) < 2 or any(d < 8 or (d - 2) % 6 for d in depths):
        _fail(f"--depths must list two or more depths of the form 6n + 2 (8, 14, 20, 32, 44, 56, ...), got {depths_text!r}")
    width = args.width if args.width is not None else sized(args, 16, 16, 4)
    epochs = args.epochs if args.epochs is not None else sized(args, 10, 3, 1)
    n_train = args.n_train if args.n_train is not None else sized(args, 5000, 2000, 300)
    for name, v in (("--width", width), ("--epochs", epochs), ("--n-train", n_train), ("--batch-size", args.batch_size),
                     ("--n-test", 1 if args.n_test is None else args.n_test)):
        if v < 1:
            _fail(f"{name} must be >= 1, got {v}")
    for name, v in (("--lr", args.lr), ("--weight-decay", args.weight_decay)):
        if not np.isfinite(v) or v < 0 or (name == "--lr" and v == 0):
            _fail(f"{name} must be a finite number {'> 0' if name == '--lr' else '>= 0'}, got {v}")
    return sorted(depths), width, epochs, n_train


class _TestError:
    """An ``on_epoch`` callback: the test error of the train state after each epoch (eval mode)."""

    def __init__(self, model, ds, batch_size):
        self.model, self.ds, self.batch_size, self.errors = model, ds, batch_size, []

    def on_epoch(self, info):
        from jaxnet.train import evaluate
        ts = info["train_state"]
        _, acc = evaluate(self.model, ts.params, ts.state, self.ds.x_test, self.ds.y_test, 500)
        self.errors.append(1.0 - acc)


def run_one(depth, plain, ds, *, width, epochs, args) -> dict:
    from jaxnet.nn import zoo

    model = zoo.cifar_resnet(depth, int(ds.y_train.max()) + 1, plain=plain, width=width, impl=args.impl,
                             zero_init_residual=bool(args.zero_init_residual and not plain))
    r = train_net(model, f"{'plain' if plain else 'resnet'}-{depth}", ds, epochs=epochs, args=args)
    return {"name": r.pop("name"), "depth": depth, "plain": plain, **r}


def train_net(model, name, ds, *, epochs, args) -> dict:
    """Train ``model`` with the experiment's recipe; per-epoch training and test errors."""
    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import fit, num_batches

    steps = epochs * num_batches(len(ds.y_train), args.batch_size)
    opt = make_optimizer("momentum", make_schedule("cosine", args.lr, total_steps=steps),
                         weight_decay=args.weight_decay)
    small = ds.x_train.shape[1] < 32
    test_error = _TestError(model, ds, args.batch_size)
    with Timer() as t:
        res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=args.batch_size, key=args.seed,
                  augment={"crop_padding": 1 if small else 4, "flip": not small}, progress=False,
                  callbacks=[test_error])
    train_error = [1.0 - a for a in res.history["train_acc"]]
    print(f"  {name}: train error {train_error[-1]:.4f}, test error {test_error.errors[-1]:.4f}, "
          f"{t.elapsed:.0f} s", flush=True)
    return {"name": name, "train_error": train_error,
            "test_error": test_error.errors, "final_train_error": train_error[-1],
            "final_test_error": test_error.errors[-1], "train_time_s": t.elapsed}


def plot(runs: list, path: str, title: str) -> str:
    fig = figure((11, 4.2))
    for col, plain in enumerate((True, False)):
        ax = fig.add_subplot(1, 2, col + 1)
        for r in (r for r in runs if r["plain"] == plain):
            epochs = np.arange(1, len(r["train_error"]) + 1)
            line, = ax.plot(epochs, 100 * np.asarray(r["test_error"]), label=f"{r['name']} test")
            ax.plot(epochs, 100 * np.asarray(r["train_error"]), "--", color=line.get_color(),
                    label=f"{r['name']} train")
        ax.set_xlabel("epoch")
        ax.set_ylabel("error (%)")
        ax.set_title("plain nets" if plain else "ResNets")
        grid_legend([ax], fontsize=7)
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    depths, width, epochs, n_train = _settings(args)
    ds, source, desc = cifar_or_digits(args, n_train)
    if args.n_test is not None and args.n_test < len(ds.y_test):
        from jaxnet.data import subsample
        x, y = subsample(ds.x_test, ds.y_test, args.n_test, seed=args.seed)
        ds = ds.replace(x_test=x, y_test=y)
        desc += f" (test error on {len(y)} of them)"
    print(f"{desc}; depths {depths}, width {width}, {epochs} epochs"
          f"{', zero-init residual' if args.zero_init_residual else ''}", flush=True)
    runs = [run_one(d, plain, ds, width=width, epochs=epochs, args=args)
            for plain in (True, False) for d in depths]
    final = {r["name"]: r["final_train_error"] for r in runs}
    shallow, deep = depths[0], depths[-1]
    claims = {
        "plain_deeper_trains_worse": final[f"plain-{deep}"] > final[f"plain-{shallow}"],
        "resnet_deeper_trains_better": final[f"resnet-{deep}"] < final[f"resnet-{shallow}"],
    }
    results = {"data_source": source, "data": desc, "n_train": len(ds.y_train), "n_test": len(ds.y_test),
               "depths": depths, "width": width, "epochs": epochs, "zero_init_residual": bool(args.zero_init_residual),
               "runs": runs, "claims": claims}
    results["figures"] = {"curves": plot(runs, f"{args.out}/residual.png",
                                         f"plain vs residual nets, {source}, {len(ds.y_train)} training images")}
    return finish(args, results, ["net", "final train error", "final test error", "seconds"],
                  [[r["name"], r["final_train_error"], r["final_test_error"], r["train_time_s"]] for r in runs],
                  f"degradation ({source})")


if __name__ == "__main__":
    main()
