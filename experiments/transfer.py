"""Transfer learning with convnets (the course's notes: "you rarely train a convnet from scratch").

    python -m experiments.transfer [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--smoke]
                                   [--out DIR] [--pretrain-n N] [--pretrain-epochs E] [--per-class K]
                                   [--epochs E] [--lr LR] [--backbone-lr-scale S]

Pretrain ``nn.fast_convnet`` on CIFAR-10's classes 0-4 (airplane ... deer; ``--pretrain-n``
images), then learn classes 5-9 (dog ... truck) from ``--per-class`` (100) images each, four ways:

* **linear probe**: the pretrained features frozen, a new linear classifier trained;
* **fine-tune the last block**: ``block3`` and a new classifier trained, the rest frozen;
* **full fine-tuning**: everything trained, the pretrained layers at ``--backbone-lr-scale``
  (0.1) of the classifier's learning rate;
* **from scratch**: the same net from a random initialisation, everything trained.

Freezing and the per-group learning rates are ``optax.multi_transform`` over the parameters'
top-level names (``optax.set_to_zero()`` for the frozen groups), not hand-written masks;
training is ``jaxnet.train.fit`` with ``init_params`` on the hand backward passes.  In train
mode the frozen layers' batch norms still update their running statistics to the new classes
(what PyTorch does too unless the frozen modules are put in eval mode).  Adam, cosine decay,
batch 50, flips and crops; the test accuracy on all test images of classes 5-9 after every
epoch, ``transfer.png`` (curves) and ``results.json``.

``--quick``: 4,000 pretraining images, 3 + 15 epochs; ``--smoke`` (the default test suite):
the embedded digits (0-4 -> 5-9), a narrow net, 1 + 2 epochs, one strategy (fine-tune the last
block).  Without ``--data-dir`` the
digits are used.
"""
from __future__ import annotations

import functools

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, fail, figure, finish, grid_legend, parse_args, save_figure, sized,
)

NAME = "transfer"
DESCRIPTION = "Transfer learning: linear probe vs fine-tuning vs training from scratch on 100 images per class."
STRATEGIES = ("linear probe", "fine-tune last block", "full fine-tuning", "from scratch")
# --smoke adapts one way only (each strategy is one more train-step and init compile, ~10 s): the pretrained
# net with frozen and trained groups. Every strategy's labels and learning rates are unit-tested
# (tests/test_exp_transfer.py); the slow tier runs the smoke with all four.
SMOKE_STRATEGIES = ("fine-tune last block",)


def _extra(parser) -> None:
    parser.add_argument("--pretrain-n", type=int, default=None, help="pretraining images of classes 0-4 "
                        "(default 25000, i.e. all; quick 4000)")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="default 8; quick 3; smoke 1")
    parser.add_argument("--per-class", type=int, default=None, help="training images per new class (default 100)")
    parser.add_argument("--epochs", type=int, default=None, help="fine-tuning epochs (default 30; quick 15; smoke 2)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (the classifier's; cosine to 0)")
    parser.add_argument("--backbone-lr-scale", type=float, default=0.1,
                        help="full fine-tuning: the pretrained layers' learning rate / --lr (default 0.1)")
    parser.add_argument("--impl", default="manual", choices=("manual", "auto"), help="backward path of the ops")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _settings(args):
    s = {"pretrain_n": args.pretrain_n if args.pretrain_n is not None else sized(args, 25000, 4000, 400),
         "pretrain_epochs": args.pretrain_epochs if args.pretrain_epochs is not None else sized(args, 8, 3, 1),
         "per_class": args.per_class if args.per_class is not None else sized(args, 100, 100, 20),
         "epochs": args.epochs if args.epochs is not None else sized(args, 30, 15, 2)}
    for name, v in s.items():
        if v < 1:
            _fail(f"--{name.replace('_', '-')} must be >= 1, got {v}")
    for name, v in (("--lr", args.lr), ("--backbone-lr-scale", args.backbone_lr_scale)):
        if not np.isfinite(v) or v <= 0:
            _fail(f"{name} must be a finite number > 0, got {v}")
    return s


def split_tasks(ds, pretrain_n: int, per_class: int, seed: int):
    """(source, target) Datasets: classes 0-4 (at most ``pretrain_n`` training images) and classes
    5-9 relabelled 0-4 with ``per_class`` training images of each; val and test split the same way."""
    rng = np.random.default_rng(seed)

    def part(lo, train_idx):
        pick = lambda y: (y >= lo) & (y < lo + 5)  # noqa: E731
        v, t = pick(ds.y_val), pick(ds.y_test)
        return ds.replace(x_train=ds.x_train[train_idx], y_train=ds.y_train[train_idx] - lo,
                          x_val=ds.x_val[v], y_val=ds.y_val[v] - lo, x_test=ds.x_test[t], y_test=ds.y_test[t] - lo,
                          classes=tuple(ds.classes[lo:lo + 5]))

    src = np.flatnonzero(ds.y_train < 5)
    src = np.sort(rng.permutation(src)[:pretrain_n])
    tgt = []
    for c in range(5, 10):
        idx = np.flatnonzero(ds.y_train == c)
        if len(idx) < per_class:
            _fail(f"--per-class {per_class}: class {c} has only {len(idx)} training images")
        tgt.append(rng.permutation(idx)[:per_class])
    return part(0, src), part(5, np.sort(np.concatenate(tgt)))


def labels_for(strategy: str):
    """The ``optax.multi_transform`` labels: a function of the params' tree, top-level names."""
    import jax

    def group(name):
        if strategy == "linear probe":
            return "head" if name == "fc" else "frozen"
        if strategy == "fine-tune last block":
            return "head" if name in ("fc", "block3") else "frozen"
        if strategy == "full fine-tuning":
            return "head" if name == "fc" else "backbone"
        return "head"                                     # from scratch: one learning rate

    return lambda params: {k: jax.tree.map(lambda _: group(k), v) for k, v in params.items()}


def optimizer_for(strategy: str, lr: float, backbone_scale: float, total_steps: int):
    import optax
    from jaxnet.optim.schedules import make_schedule

    adam = lambda peak: optax.adam(make_schedule("cosine", peak, total_steps=total_steps))  # noqa: E731
    return optax.multi_transform({"head": adam(lr), "backbone": adam(lr * backbone_scale),
                                  "frozen": optax.set_to_zero()}, labels_for(strategy))


class _TestAccuracy:
    """An ``on_epoch`` callback: test accuracy after every epoch (eval mode)."""

    def __init__(self, model, ds):
        self.model, self.ds, self.acc = model, ds, []

    def on_epoch(self, info):
        from jaxnet.train import evaluate
        ts = info["train_state"]
        self.acc.append(evaluate(self.model, ts.params, ts.state, self.ds.x_test, self.ds.y_test, 500)[1])


def _model(args):
    from jaxnet import nn
    widths = (8, 16, 32) if args.smoke else (32, 64, 128)
    return nn.fast_convnet(stem=widths[0] // 2 if args.smoke else 16, widths=widths, num_classes=5, impl=args.impl)


def _augment(ds):
    small = ds.x_train.shape[1] < 32
    return {"crop_padding": 1 if small else 4, "flip": not small}


def pretrain(model, src, epochs, args) -> tuple:
    """(params, state, test accuracy on classes 0-4, seconds)."""
    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import evaluate, fit, num_batches

    steps = epochs * num_batches(len(src.y_train), 50)
    opt = make_optimizer("adam", make_schedule("cosine", args.lr, total_steps=steps))
    with Timer() as t:
        res = fit(model, src, optimizer=opt, epochs=epochs, batch_size=50, key=args.seed, augment=_augment(src),
                  progress=False)
    ts = res.train_state
    acc = evaluate(model, ts.params, ts.state, src.x_test, src.y_test, 500)[1]
    print(f"  pretrained on classes 0-4: test accuracy {acc:.4f}, {t.elapsed:.0f} s", flush=True)
    return ts.params, ts.state, acc, t.elapsed


def fresh_init(model, tgt, args) -> tuple:
    """The new classifier's (and the from-scratch net's) initialisation: the same for every strategy."""
    import jax
    batch = min(50, len(tgt.y_train))
    return model.init(jax.random.fold_in(jax.random.PRNGKey(args.seed), 1), (batch,) + tgt.x_train.shape[1:])


def adapt(strategy, model, tgt, pretrained, epochs, args, fresh=None) -> dict:
    import jax
    from jaxnet.train import fit, num_batches

    batch = min(50, len(tgt.y_train))
    fresh_params, fresh_state = fresh if fresh is not None else fresh_init(model, tgt, args)
    if strategy == "from scratch":
        params, state = fresh_params, fresh_state
    else:                                   # the pretrained net with a new classifier
        params = {**pretrained[0], "fc": fresh_params["fc"]}
        state = pretrained[1]
    steps = epochs * num_batches(len(tgt.y_train), batch)
    opt = optimizer_for(strategy, args.lr, args.backbone_lr_scale, steps)
    acc = _TestAccuracy(model, tgt)
    with Timer() as t:
        res = fit(model, tgt, optimizer=opt, epochs=epochs, batch_size=batch, key=args.seed + 1,
                  augment=_augment(tgt), progress=False, init_params=(params, state), callbacks=[acc])
    final = res.train_state.params
    trained = {k: bool(not np.array_equal(np.asarray(jax.tree.leaves(final[k])[0]),
                                          np.asarray(jax.tree.leaves(params[k])[0])))
               for k in params if jax.tree.leaves(params[k])}
    print(f"  {strategy}: test accuracy {acc.acc[-1]:.4f}, {t.elapsed:.0f} s", flush=True)
    return {"strategy": strategy, "test_accuracy": acc.acc, "final_test_accuracy": acc.acc[-1],
            "final_train_accuracy": res.history["train_acc"][-1], "trained_groups": trained,
            "train_time_s": t.elapsed}


def plot(runs: list, path: str, title: str) -> str:
    fig = figure((6.5, 4.2))
    ax = fig.add_subplot(1, 1, 1)
    for r in runs:
        ax.plot(np.arange(1, len(r["test_accuracy"]) + 1), 100 * np.asarray(r["test_accuracy"]), label=r["strategy"])
    ax.set_xlabel("fine-tuning epoch")
    ax.set_ylabel("test accuracy, new classes (%)")
    grid_legend([ax], fontsize=8)
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    s = _settings(args)
    ds, source, desc = cifar_or_digits(args, 10 ** 9)
    src, tgt = split_tasks(ds, s["pretrain_n"], s["per_class"], args.seed)
    print(f"{desc}; pretraining on {len(src.y_train)} images of classes 0-4, adapting to classes 5-9 from "
          f"{len(tgt.y_train)} images ({s['per_class']} per class)", flush=True)
    model = _model(args)
    p, st, src_acc, src_time = pretrain(model, src, s["pretrain_epochs"], args)
    fresh = fresh_init(model, tgt, args)          # one init (one compile) shared by the strategies
    runs = [adapt(strategy, model, tgt, (p, st), s["epochs"], args, fresh)
            for strategy in (SMOKE_STRATEGIES if args.smoke else STRATEGIES)]
    final = {r["strategy"]: r["final_test_accuracy"] for r in runs}
    claims = {name: final[a] > final["from scratch"]       # (--smoke: those of the strategies it ran)
              for name, a in (("linear_probe_beats_scratch", "linear probe"),
                              ("fine_tuning_beats_scratch", "full fine-tuning")) if a in final}
    results = {"data_source": source, "data": desc, **s, "pretrain_test_accuracy": src_acc,
               "pretrain_time_s": src_time, "n_target_train": len(tgt.y_train), "n_target_test": len(tgt.y_test),
               "runs": runs, "claims": claims}
    results["figures"] = {"curves": plot(runs, f"{args.out}/transfer.png",
                                         f"transfer to classes 5-9, {s['per_class']} images per class ({source})")}
    return finish(args, results, ["strategy", "final test accuracy", "final train accuracy", "seconds"],
                  [[r["strategy"], r["final_test_accuracy"], r["final_train_accuracy"], r["train_time_s"]]
                   for r in runs], f"transfer ({source})")


if __name__ == "__main__":
    main()
