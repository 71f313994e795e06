"""Convnets on CIFAR-10: the course's three-layer convnet after one epoch, and the best convnet
this CPU trains in at most 20 minutes, with the time it takes to reach 0.70, 0.80 and 0.85.

    python -m experiments.convnets [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]
                                   [--part course|best|both] [--epochs E] [--time-budget S]

Part ``course`` (the course's ConvolutionalNetworks notebook): ``three_layer_convnet``
(conv7x7(32) - relu - 2x2 max pool - affine(500) - relu - affine, He init), Adam lr 1e-3,
L2 1e-3, batch 50, ONE epoch over 49,000 training images; reported: the training accuracy
on 1,000 training images (the course's check: more than 0.40) and the validation accuracy.

Part ``best``: ``jaxnet.nn.fast_convnet`` (stem 16, blocks 32/64/128: conv - pool - BN - relu -
conv - BN - relu, global max pool, affine; ~0.29 M parameters; all ops on the manual backward
path), trained on all 50,000 training images with

* SGD with Nesterov momentum 0.9, batch 256, peak lr 0.2 after a 2-epoch linear warmup,
  then a cosine to 0 at the last step (``make_schedule("warmup_cosine", ...)``);
* L2 5e-4 on the conv/affine weights (the course's ``reg``: added to the gradient);
* label smoothing 0.2 (``(1 - e) * CE + e * mean over classes of -log p``);
* augmentation inside the jitted step: random crop with 2-pixel zero padding, horizontal flip;
* evaluation after every epoch on the 10,000 test images with flip test-time augmentation
  (the mean of the scores of the image and its mirror; the plain accuracy is recorded too).

Both parts train with ``jaxnet.train.fit`` (key ``--seed``); the best net's per-epoch test
evaluation, times and budget stop are its :class:`EpochLog` callback.

No model selection uses the test set: the numbers are those of the last epoch, and the
schedule's length is fixed in advance (``--epochs``). Time to an accuracy = the training
wall time (steps only; compilation of the first step included, evaluation excluded) summed
up to the end of the first epoch whose test accuracy reaches it, so it is an upper bound
at one-epoch resolution. ``--time-budget`` (default 1200 s) stops training early if the
training time would pass it (recorded as ``stopped_at_budget``). images/s = training images /
training time, per epoch (median over epochs 2.., the first includes compilation).

The final params/state are saved to ``<out>/fast_convnet.ckpt`` (``jaxnet.train.save_checkpoint``)
for ``experiments.what_learned``.  ``--quick``: a few thousand images and 2 epochs (or the
embedded digits without ``--data-dir``).  ``--smoke`` (the default test suite's run): 300
training and 200 test images, the best net for 3 epochs.  Figures: ``convnet_curves.png`` (test accuracy vs
training minutes with the 0.70/0.80/0.85 lines; loss per epoch).
"""

from __future__ import annotations

import functools
import os

import numpy as np

from experiments._common import (
    Timer, figure, float_normalized, grid_legend, load_data, parse_args, print_table, quick_subset, save_figure,
    sized, write_results,
)

NAME = "convnets"
DESCRIPTION = "Convnets on CIFAR-10: the course's three-layer net, and the best net in 20 CPU minutes."
THRESHOLDS = (0.70, 0.80, 0.85)


def _extra(parser) -> None:
    parser.add_argument("--part", choices=("course", "best", "both"), default="both")
    parser.add_argument("--epochs", type=int, default=None, help="epochs of the best net (default 16; quick 2, on the digits 8; smoke 3)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--lr", type=float, default=0.2, help="peak learning rate (default 0.2)")
    parser.add_argument("--warmup-epochs", type=float, default=2.0)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--label-smoothing", type=float, default=0.2)
    parser.add_argument("--crop-padding", type=int, default=2)
    parser.add_argument("--stem", type=int, default=16)
    parser.add_argument("--widths", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--norm", choices=("batchnorm", "groupnorm"), default="batchnorm")
    parser.add_argument("--impl", choices=("manual", "auto"), default="manual")
    parser.add_argument("--time-budget", type=float, default=1200.0,
                        help="stop the best net's training once this many training seconds are used")


def smoothed_cross_entropy(scores, labels, *, smoothing: float):
    """Label-smoothed softmax cross-entropy, batch mean: ``(1 - e) CE + e mean_c(-log p_c)``.
    scores (N, C) float, labels (N,) int. The CE term is jaxnet's (manual/auto) op."""
    import jax
    import jax.numpy as jnp

    from jaxnet.functional import softmax_cross_entropy

    ce = softmax_cross_entropy(scores, labels)
    if smoothing == 0:
        return ce
    uniform = jnp.mean(jax.nn.logsumexp(scores, axis=-1) - jnp.mean(scores, axis=-1))
    return (1.0 - smoothing) * ce + smoothing * uniform


def make_tta_eval(model):
    """Jitted ``(params, state, x, y, mask) -> (correct_plain, correct_flip_tta, count)`` sums."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def step(params, state, x, y, mask):
        s1, _ = model.apply(params, state, x, train=False)
        s2, _ = model.apply(params, state, x[:, :, ::-1, :], train=False)
        plain = (jnp.argmax(s1, -1) == y).astype(jnp.float32) * mask
        tta = (jnp.argmax(s1 + s2, -1) == y).astype(jnp.float32) * mask
        return jnp.sum(plain), jnp.sum(tta), jnp.sum(mask)

    return step


def evaluate_tta(step, params, state, x, y, batch_size):
    import jax

    from jaxnet.train import batches

    sums = [step(params, state, xb, yb, mb) for xb, yb, mb in batches(x, y, batch_size)]
    plain, tta, count = np.sum(np.asarray(jax.device_get(sums), np.float64), axis=0)
    return float(plain / count), float(tta / count)


# ---------------------------------------------------------------- part 1: the course's net

def run_course(args, ds, quick: bool) -> dict:
    from jaxnet.nn import three_layer_convnet
    from jaxnet.optim import make_optimizer
    from jaxnet.train import evaluate, fit

    model = three_layer_convnet(num_filters=32, filter_size=7, hidden_dim=500, num_classes=10,
                                impl=args.impl)
    opt = make_optimizer("adam", 1e-3, weight_decay=1e-3)
    res = fit(model, ds, optimizer=opt, epochs=1, batch_size=50, key=args.seed, progress=False)
    ts = res.train_state
    train_time = len(ds.y_train) / res.history["images_per_sec"][0]  # the steps only, compilation included
    n_check = min(1000, len(ds.y_train))
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(len(ds.y_train), n_check, replace=False)
    _, train_acc = evaluate(model, ts.params, ts.state, ds.x_train[idx], ds.y_train[idx], 500)
    val_acc = res.history["val_acc"][0]
    _, test_acc = evaluate(model, ts.params, ts.state, ds.x_test, ds.y_test, 500)
    out = {"model": "three_layer_convnet(num_filters=32, filter_size=7, hidden_dim=500), He init",
           "optimizer": "adam lr 1e-3, L2 1e-3, batch 50, 1 epoch", "n_train": int(len(ds.y_train)),
           "train_acc_1000": train_acc, "val_acc": val_acc, "test_acc": test_acc, "time_s": train_time,
           "images_per_second": res.history["images_per_sec"][0], "course_target_train_acc": 0.40}
    print(f"three-layer convnet, 1 epoch: train acc (1,000 images) {train_acc:.3f}, val {val_acc:.3f}, "
          f"test {test_acc:.3f}  ({train_time:.0f} s)", flush=True)
    return out


# ---------------------------------------------------------------- part 2: the best net

class EpochLog:
    """``fit`` callback of the best net: after every epoch, the test accuracy (plain and with
    flip test-time augmentation), the training time (steps only) and a progress line; raises
    :class:`jaxnet.train.StopTraining` when the next epoch would pass ``time_budget`` seconds
    of training, or once the ``headline`` accuracy reaches ``stop_at`` (when given)."""

    KEYS = ("epoch", "train_loss", "train_acc", "test_acc", "test_acc_tta", "lr", "train_time_s",
            "cum_train_time_s", "images_per_second")

    def __init__(self, model, ds, epochs: int, time_budget: float, stop_at: float | None = None,
                 headline: str = "test_acc_tta"):
        self.ds, self.epochs, self.time_budget = ds, epochs, time_budget
        self.stop_at, self.headline = stop_at, headline
        self.tta_eval = make_tta_eval(model)
        self.history = {k: [] for k in self.KEYS}
        self.cum, self.stopped = 0.0, False

    def on_epoch(self, info) -> None:
        from tqdm.auto import tqdm

        from jaxnet.train import StopTraining

        n, h, ts = len(self.ds.y_train), self.history, info["train_state"]
        dt = n / info["images_per_sec"]
        self.cum += dt
        acc, acc_tta = evaluate_tta(self.tta_eval, ts.params, ts.state, self.ds.x_test, self.ds.y_test, 500)
        for k, v in (("epoch", info["epoch"]), ("train_loss", info["train_loss"]), ("train_acc", info["train_acc"]),
                     ("test_acc", acc), ("test_acc_tta", acc_tta), ("lr", info["lr"]), ("train_time_s", dt),
                     ("cum_train_time_s", self.cum), ("images_per_second", n / dt)):
            h[k].append(v)
        epoch = info["epoch"]
        tqdm.write(f"epoch {epoch:2d}: train loss {info['train_loss']:.4f} acc {info['train_acc']:.4f} | "
                   f"test {acc:.4f} (flip TTA {acc_tta:.4f}) | {self.cum / 60:.1f} min of training, "
                   f"{n / dt:.0f} img/s")
        if self.stop_at is not None and h[self.headline][-1] >= self.stop_at and epoch < self.epochs:
            tqdm.write(f"stopping: {self.headline} {h[self.headline][-1]:.4f} reached {self.stop_at}")
            raise StopTraining("target reached")
        if epoch < self.epochs and self.cum + dt > self.time_budget:
            self.stopped = True
            tqdm.write(f"stopping: the next epoch would pass the {self.time_budget:.0f} s budget")
            raise StopTraining("time budget")


class FirstStepLoss:
    """``fit`` callback keeping the loss of the first training step (a float; None before it)."""

    def __init__(self):
        self.loss = None

    def on_step(self, info) -> None:
        if self.loss is None:
            self.loss = float(info["metrics"]["loss"])


def warmup_cosine_plan(args, n: int, epochs: int):
    """(batch size, steps per epoch, warmup steps, schedule) for ``n`` training images: peak
    ``args.lr`` after ``args.warmup_epochs`` of linear warmup (at least one step, at most all but
    one), then a cosine to 0 at the last of ``epochs`` epochs of ``args.batch_size``."""
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import num_batches

    bs = min(args.batch_size, n)
    steps = num_batches(n, bs)
    total = epochs * steps
    warmup = max(1, min(total - 1, int(round(args.warmup_epochs * steps))))
    return bs, steps, warmup, make_schedule("warmup_cosine", args.lr, total_steps=total, warmup_steps=warmup)


def run_best(args, ds, quick: bool, epochs: int, stop_at: float | None = None) -> dict:
    """Trains the best net (the module docstring's recipe); ``stop_at``: end after the first epoch
    whose headline test accuracy reaches it (the schedule stays that of ``epochs``). Also records
    the first training step's loss (``first_step_loss``)."""
    from jaxnet.data import augment
    from jaxnet.nn import count_params, fast_convnet
    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit, save_checkpoint

    model = fast_convnet(stem=args.stem, widths=tuple(args.widths), norm=args.norm, impl=args.impl)
    ds = ds.replace(x_val=ds.x_val[:0], y_val=ds.y_val[:0])  # evaluated on the test split, no validation
    bs, steps_per_epoch, warmup, sched = warmup_cosine_plan(args, len(ds.y_train), epochs)
    opt = make_optimizer("nesterov", sched, weight_decay=args.weight_decay)
    loss_fn = functools.partial(smoothed_cross_entropy, smoothing=args.label_smoothing)
    flip = getattr(args, "flip", True)
    aug = functools.partial(augment, crop_padding=args.crop_padding, flip=flip)
    headline = "test_acc_tta" if flip else "test_acc"  # no mirror TTA for digits
    log = EpochLog(model, ds, epochs, args.time_budget, stop_at=stop_at, headline=headline)
    first = FirstStepLoss()
    res = fit(model, ds, optimizer=opt, epochs=0, batch_size=bs, key=args.seed, progress=False)  # its initial state
    n_params = count_params(res.train_state.params)
    print(f"fast_convnet(stem={args.stem}, widths={tuple(args.widths)}, {args.norm}): {n_params:,} params; "
          f"{epochs} epochs x {steps_per_epoch} steps, batch {bs}, nesterov peak lr {args.lr}, "
          f"warmup {warmup} steps", flush=True)
    res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=bs, key=args.seed, loss_fn=loss_fn, augment=aug,
              progress=not quick, callbacks=[log, first])
    ts, history, cum = res.train_state, log.history, log.cum

    def time_to(th):
        for a, c in zip(history[headline], history["cum_train_time_s"]):
            if a >= th:
                return c
        return None

    ips = history["images_per_second"]
    ckpt = save_checkpoint(os.path.join(args.out, "fast_convnet.ckpt"), ts, config={
        "model": "fast_convnet", "stem": args.stem, "widths": list(args.widths), "norm": args.norm,
        "input_shape": list(ds.x_train.shape[1:])})
    return {
        "model": f"fast_convnet(stem={args.stem}, widths={tuple(args.widths)}, norm={args.norm!r})",
        "n_params": int(n_params), "impl": args.impl,
        "recipe": {"optimizer": "nesterov, mu 0.9", "peak_lr": args.lr, "schedule": "warmup_cosine",
                   "warmup_steps": warmup, "weight_decay": args.weight_decay,
                   "label_smoothing": args.label_smoothing,
                   "augment": f"crop pad {args.crop_padding}" + (" + flip" if flip else ""),
                   "batch_size": bs, "epochs": epochs, "steps_per_epoch": steps_per_epoch},
        "history": history,
        "final_test_acc": history["test_acc"][-1],
        "final_test_acc_tta": history["test_acc_tta"][-1],
        "headline": headline,
        "train_time_s": cum,
        "stopped_at_budget": log.stopped,
        "first_step_loss": first.loss,
        "time_to_s": {f"{th:.2f}": time_to(th) for th in THRESHOLDS},
        "images_per_second_median": float(np.median(ips[1:] if len(ips) > 1 else ips)),
        "checkpoint": os.path.basename(ckpt),
    }


def plot_best(best: dict, path: str, title: str) -> str:
    h = best["history"]
    fig = figure((13, 4.8))
    ax_acc, ax_loss = fig.subplots(1, 2)
    minutes = np.asarray(h["cum_train_time_s"]) / 60
    ax_acc.plot(minutes, h["test_acc_tta"], "o-", ms=3, label="test (flip TTA)")
    ax_acc.plot(minutes, h["test_acc"], "o-", ms=3, label="test")
    ax_acc.plot(minutes, h["train_acc"], "o-", ms=3, alpha=0.6, label="train (augmented, running)")
    for th in THRESHOLDS:
        ax_acc.axhline(th, color="0.6", lw=0.8, ls="--")
    ax_acc.set(xlabel="training time (minutes, 2-core CPU)", ylabel="accuracy", ylim=(0.3, 1.0),
               title="accuracy vs training time")
    ax_loss.plot(h["epoch"], h["train_loss"], "o-", ms=3, label="train loss (label-smoothed)")
    ax2 = ax_loss.twinx()
    ax2.plot(h["epoch"], h["lr"], color="tab:gray", lw=1, label="lr")
    ax2.set_ylabel("learning rate (end of epoch)")
    ax_loss.set(xlabel="epoch", ylabel="training loss", title="loss and learning rate")
    grid_legend((ax_acc,), loc="lower right")
    grid_legend((ax_loss,), loc="upper right")
    return save_figure(fig, path, title)


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    from jaxnet.data import load_digits

    q = args.quick
    os.makedirs(args.out, exist_ok=True)
    with Timer() as t_load:
        if args.data_dir:
            ds = load_data(args, val_size=1000)
            source = "cifar10"
        else:
            ds = load_digits(seed=args.seed)
            source = "digits"
        if args.smoke:
            ds = quick_subset(ds, n_train=300, n_test=200, seed=args.seed)
        elif q and source == "cifar10":
            ds = quick_subset(ds, n_train=3000, n_test=1000, seed=args.seed)
        ds = float_normalized(ds)
    print(f"{source}: {len(ds.y_train)} training, {len(ds.y_val)} validation, {len(ds.y_test)} test images "
          f"({t_load.elapsed:.1f} s)", flush=True)
    results = {"data_source": source, "n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test))}
    if args.part in ("course", "both"):
        results["course"] = run_course(args, ds, q)
    if args.part in ("best", "both"):
        epochs = args.epochs or sized(args, 16, 2, 3)
        if source == "digits":  # 1,257 8x8 digits: smaller batches, more epochs, no mirror images
            epochs = args.epochs or sized(args, 8, 8, 3)
            args.batch_size = min(args.batch_size, 64)
            args.crop_padding = min(args.crop_padding, 1)
            args.flip = False
        best_ds = ds
        if source == "cifar10" and not q:  # the best net trains on all 50,000 (train + val)
            best_ds = ds.replace(x_train=np.concatenate([ds.x_train, ds.x_val]),
                                 y_train=np.concatenate([ds.y_train, ds.y_val]))
        if source == "digits":  # 8x8 inputs: two blocks (8 -> 4 -> 2)
            args.widths = args.widths[:2]
        results["best"] = run_best(args, best_ds, q, epochs)
        b = results["best"]
        results["figures"] = {"curves": os.path.basename(plot_best(
            b, os.path.join(args.out, "convnet_curves.png"),
            f"{b['model']} on {source}: {b['final_test_acc_tta']:.4f} test accuracy after "
            f"{b['train_time_s'] / 60:.1f} training minutes"))}
        print_table(["target", "time to reach (s)"],
                    [[k, v if v is not None else "not reached"] for k, v in b["time_to_s"].items()],
                    title=f"\nfinal test accuracy {b['final_test_acc']:.4f}, with flip TTA "
                          f"{b['final_test_acc_tta']:.4f}; {b['images_per_second_median']:.0f} img/s")
    path = write_results(args.out, results, args)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
