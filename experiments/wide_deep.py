"""Wide vs deep at an equal parameter budget, and stochastic depth (Zagoruyko & Komodakis 2016;
Huang et al. 2016), on the CIFAR ResNets of ``jaxnet.nn.zoo.cifar_resnet``.

    python -m experiments.wide_deep [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                    [--out DIR] [--epochs E] [--n-train N] [--drop-path P]

Four nets of about 0.47 M parameters each (pinned in ``NETS``): deep and thin (ResNet-32, width
16: 466,906), middle (ResNet-14, width 26: 460,548), shallow and wide (ResNet-8, width 40:
481,170), and the deep one with stochastic depth (``--drop-path`` 0.2 for its last block, the
linear decay rule, same parameters).  The recipe is ``experiments.residual``'s (SGD + momentum,
cosine, weight decay 1e-4, batch 128, crops and flips, the hand backward passes); per epoch
the training and test errors, ``wide_deep.png`` and ``results.json`` with the parameter
counts, seconds and ``claims``.

Default: 5,000 CIFAR-10 images, 10 epochs; ``--quick``: 2,000 images, 3 epochs; ``--smoke``
(the default test suite): the embedded digits, small nets, 1 epoch.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from experiments._common import cifar_or_digits, fail, figure, finish, grid_legend, parse_args, save_figure, sized
from experiments.residual import recipe_flags, train_net

NAME = "wide_deep"
DESCRIPTION = "Wide vs deep ResNets at an equal parameter budget, and stochastic depth."
#: (name, depth, width, uses --drop-path); the smoke run's nets are (depth, width) scaled down
NETS = (("deep: ResNet-32 x16", 32, 16, False), ("middle: ResNet-14 x26", 14, 26, False),
        ("wide: ResNet-8 x40", 8, 40, False), ("deep + stochastic depth", 32, 16, True))
SMOKE_NETS = {32: (8, 4), 14: (8, 6), 8: (8, 8)}


def _extra(parser) -> None:
    parser.add_argument("--drop-path", type=float, default=0.2, help="stochastic depth of the last block (default 0.2)")
    recipe_flags(parser)


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _settings(args):
    epochs = args.epochs if args.epochs is not None else sized(args, 10, 3, 1)
    n_train = args.n_train if args.n_train is not None else sized(args, 5000, 2000, 300)
    for name, v in (("--epochs", epochs), ("--n-train", n_train), ("--batch-size", args.batch_size)):
        if v < 1:
            _fail(f"{name} must be >= 1, got {v}")
    if not (np.isfinite(args.drop_path) and 0 < args.drop_path < 1):
        _fail(f"--drop-path must be in (0, 1), got {args.drop_path}")
    for name, v in (("--lr", args.lr), ("--weight-decay", args.weight_decay)):
        if not np.isfinite(v) or v < 0 or (name == "--lr" and v == 0):
            _fail(f"{name} must be a finite number {'> 0' if name == '--lr' else '>= 0'}, got {v}")
    return epochs, n_train


def build(depth, width, drop_path, num_classes, args):
    from jaxnet.nn import zoo
    if args.smoke:
        depth, width = SMOKE_NETS[depth]
    return zoo.cifar_resnet(depth, num_classes, width=width, drop_path=drop_path, impl=args.impl)


def count(model, shape) -> int:
    import jax
    params, _ = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
    return sum(math.prod(a.shape) for a in jax.tree.leaves(params))


def plot(runs: list, path: str, title: str) -> str:
    fig = figure((11, 4.2))
    for col, key in enumerate(("train_error", "test_error")):
        ax = fig.add_subplot(1, 2, col + 1)
        for r in runs:
            ax.plot(np.arange(1, len(r[key]) + 1), 100 * np.asarray(r[key]), label=f"{r['name']} ({r['params']:,})")
        ax.set_xlabel("epoch")
        ax.set_ylabel(("training" if col == 0 else "test") + " error (%)")
        grid_legend([ax], fontsize=7)
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    epochs, n_train = _settings(args)
    ds, source, desc = cifar_or_digits(args, n_train)
    classes = int(ds.y_train.max()) + 1
    print(f"{desc}; {epochs} epochs", flush=True)
    runs = []
    for name, depth, width, sd in NETS:
        model = build(depth, width, args.drop_path if sd else 0.0, classes, args)
        r = train_net(model, name, ds, epochs=epochs, args=args)
        runs.append({**r, "depth": depth, "width": width, "drop_path": args.drop_path if sd else 0.0,
                     "params": count(model, (1,) + ds.x_train.shape[1:])})
    test = {r["name"]: r["final_test_error"] for r in runs}
    deep, wide, sd = runs[0]["name"], runs[2]["name"], runs[3]["name"]
    claims = {"wide_beats_deep_on_test_error": test[wide] < test[deep],
              "stochastic_depth_helps_the_deep_net": test[sd] < test[deep]}
    results = {"data_source": source, "data": desc, "n_train": len(ds.y_train), "epochs": epochs,
               "drop_path": args.drop_path, "runs": runs, "claims": claims}
    results["figures"] = {"curves": plot(runs, f"{args.out}/wide_deep.png",
                                         f"equal-budget ResNets, {source}, {len(ds.y_train)} training images")}
    return finish(args, results, ["net", "parameters", "final train error", "final test error", "seconds"],
                  [[r["name"], r["params"], r["final_train_error"], r["final_test_error"], r["train_time_s"]]
                   for r in runs], f"wide vs deep ({source})")


if __name__ == "__main__":
    main()
