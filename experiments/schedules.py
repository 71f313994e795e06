"""Learning-rate schedules compared: constant, step, exponential, 1/t, cosine, warmup + cosine.

    python -m experiments.schedules [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]

One fully connected net (``fully_connected_net(hidden_dims=(200, 200))``, He init, ReLU)
trained with ``jaxnet.train.fit`` once per schedule of
``jaxnet.optim.schedules.make_schedule(name, lr, total_steps=T)`` (T = epochs x steps per
epoch), with the same optimizer (``--optimizer``, momentum 0.9 by default, base lr
``--lr``), the same initial weights and the same batch order (``key=seed``) for every one:

* ``constant``: lr;  ``step``: halved every T/4 steps;  ``exponential``: lr e^{-kt}, ends
  at lr/100;  ``inverse_time``: lr / (1 + kt), ends at lr/10;  ``cosine``: to 0 at T;
* ``warmup_cosine``: linear warmup from 0 over ``--warmup-epochs`` epochs' worth of steps
  (default 2; ``make_schedule``'s own default, T/20, is shorter than one epoch here, so the
  per-epoch lr history would not show the ramp), then a cosine to 0 at T.

Recorded per schedule: the per-epoch history of ``fit`` (train loss/acc, val loss/acc, lr
of the epoch's last update), the final validation accuracy, the test accuracy of the best
(validation) epoch's weights (``jaxnet.train.evaluate``), the lr at the start / middle / end
(``s(0)``, ``s(T // 2)``, ``s(T - 1)`` from the schedule function) and the rate left in the
final optimizer state (``jaxnet.optim.current_learning_rate``, = ``s(T - 1)``).

Figures: ``schedules.png`` (lr vs step of every schedule, computed from the schedule
functions; linear and log axes) and ``curves.png`` (training loss and validation accuracy
per epoch, one line per schedule).

Data: CIFAR-10 (20,000 training images, 1,000 validation, the full 10,000 test set,
per-channel normalised) when ``--data-dir`` / ``$JAXNET_CIFAR10_DIR`` is given, else the
embedded 8x8 digits (``jaxnet.data.load_digits``, normalised); ``results.json["data_source"]``
says which. ``--quick``: fewer epochs (and 2,000 CIFAR images); well under 20 s on the digits.
``--smoke`` (the default test suite's run): the ``step`` and ``warmup_cosine`` schedules only
(``--schedules``), 4 epochs on 300 images.
"""

from __future__ import annotations

import os

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, figure, grid_legend, parse_args, print_table, save_figure, sized, write_results,
)

NAME = "schedules"
DESCRIPTION = "Learning-rate schedules: constant, step, exponential, 1/t, cosine, warmup + cosine."

SCHEDULES = ("constant", "step", "exponential", "inverse_time", "cosine", "warmup_cosine")
SMOKE_SCHEDULES = ("step", "warmup_cosine")
DEFAULT_LR = {"momentum": 1e-2, "adam": 1e-3}
COLORS = {"constant": "tab:gray", "step": "tab:blue", "exponential": "tab:green",
          "inverse_time": "tab:orange", "cosine": "tab:red", "warmup_cosine": "tab:purple"}


def _extra(parser) -> None:
    parser.add_argument("--optimizer", choices=("momentum", "adam"), default="momentum",
                        help="update rule for every schedule (default momentum, mu = 0.9)")
    parser.add_argument("--lr", type=float, default=None,
                        help="base (peak) learning rate (default 1e-2 for momentum, 1e-3 for adam)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="training subset (default 20000; quick 2000; smoke 300)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per schedule (default 10 on CIFAR-10, 30 on digits; quick 3 / 6; smoke 4)")
    parser.add_argument("--schedules", default=None,
                        help=f"comma-separated schedules to train (default all: {','.join(SCHEDULES)}; "
                             f"smoke {','.join(SMOKE_SCHEDULES)})")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--warmup-epochs", type=float, default=2.0,
                        help="warmup length of warmup_cosine in epochs (default 2)")


def build_schedule(name: str, lr: float, total_steps: int, warmup_steps: int):
    from jaxnet.optim.schedules import make_schedule

    if name == "warmup_cosine":
        return make_schedule(name, lr, total_steps=total_steps, warmup_steps=warmup_steps)
    return make_schedule(name, lr, total_steps=total_steps)


def schedule_values(schedule, total_steps: int) -> np.ndarray:
    """``s(t)`` for t = 0 .. total_steps - 1 (the rate of every update of the run)."""
    import jax
    import jax.numpy as jnp

    return np.asarray(jax.vmap(schedule)(jnp.arange(total_steps, dtype=jnp.int32)), np.float64)


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def plot_schedules(values: dict, steps_per_epoch: int, path: str, title: str) -> str:
    fig = figure((13, 4.8))
    ax_lin, ax_log = fig.subplots(1, 2)
    for name, v in values.items():
        t = np.arange(len(v))
        ax_lin.plot(t, v, color=COLORS.get(name), lw=1.5, label=name)
        pos = v > 0
        ax_log.plot(t[pos], v[pos], color=COLORS.get(name), lw=1.5, label=name)
    total = len(next(iter(values.values())))
    for ax in (ax_lin, ax_log):
        for e in range(steps_per_epoch, total, steps_per_epoch):
            ax.axvline(e, color="0.9", lw=0.6, zorder=0)
        ax.set(xlabel="step", ylabel="learning rate")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
    ax_log.set_yscale("log")
    ax_lin.set_title("lr vs step (faint lines: epoch boundaries)")
    ax_log.set_title("lr vs step (log axis)")
    return save_figure(fig, path, title)


def plot_curves(runs: dict, path: str, title: str) -> str:
    fig = figure((13, 4.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for name, r in runs.items():
        h = r["history"]
        ax_loss.plot(h["epoch"], h["train_loss"], color=COLORS.get(name), marker="o", markersize=3, label=name)
        ax_acc.plot(h["epoch"], h["val_acc"], color=COLORS.get(name), marker="o", markersize=3, label=name)
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="training loss")
    ax_loss.set_yscale("log")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    grid_legend((ax_loss, ax_acc), which="both")
    return save_figure(fig, path, title)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    import jax

    from jaxnet.nn import fully_connected_net
    from jaxnet.optim import current_learning_rate, make_optimizer
    from jaxnet.train import evaluate, fit
    from jaxnet.train import num_batches

    cifar = bool(args.data_dir)
    n_train = args.n_train or sized(args, 20000, 2000, 300)
    epochs = args.epochs or sized(args, 10 if cifar else 30, 3 if cifar else 6, 4)
    if args.schedules is None:
        names = sized(args, SCHEDULES, SCHEDULES, SMOKE_SCHEDULES)
    else:
        asked = [n.strip() for n in args.schedules.split(",") if n.strip()]
        unknown = [n for n in asked if n not in SCHEDULES]
        if unknown or not asked:
            raise SystemExit(f"experiments.{NAME}: --schedules: unknown or no schedule in {args.schedules!r} "
                             f"(choose from {', '.join(SCHEDULES)})")
        names = tuple(n for n in SCHEDULES if n in asked)
    bs = args.batch_size
    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]

    with Timer() as t_load:
        ds, source, desc = cifar_or_digits(args, n_train)
    print(f"{desc}  ({t_load.elapsed:.1f} s)", flush=True)
    bs = min(bs, len(ds.y_train))
    steps_per_epoch = num_batches(len(ds.y_train), bs)
    total = epochs * steps_per_epoch
    warmup_steps = max(1, min(total - 1, int(round(args.warmup_epochs * steps_per_epoch))))
    print(f"{args.optimizer}, lr {lr:g}, batch {bs}, {epochs} epochs x {steps_per_epoch} steps = {total} steps; "
          f"warmup {warmup_steps} steps", flush=True)

    model = fully_connected_net(hidden_dims=(200, 200), num_classes=10)
    schedules = {name: build_schedule(name, lr, total, warmup_steps) for name in names}
    values = {name: schedule_values(s, total) for name, s in schedules.items()}

    runs, times, start = {}, {}, None
    for name, sched in schedules.items():
        with Timer() as t:
            opt = make_optimizer(args.optimizer, sched)
            if start is None:   # the weights fit(key=seed) draws (the same for every schedule): drawn once,
                ts = fit(model, ds, optimizer=opt, epochs=0, batch_size=bs, key=args.seed, progress=False).train_state
                start = (ts.params, ts.state)     # then given, not one init program compiled per schedule
            res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=bs, key=args.seed, progress=False,
                      init_params=start)
            test_loss, test_acc = evaluate(model, res.best_params, res.best_state, ds.x_test, ds.y_test, 500)
        times[name] = t.elapsed
        v = values[name]
        h = {k: [float(x) for x in res.history[k]] for k in ("epoch", "train_loss", "train_acc", "val_loss",
                                                             "val_acc", "lr")}
        runs[name] = {
            "history": h,
            "final_train_loss": h["train_loss"][-1],
            "final_train_acc": h["train_acc"][-1],
            "final_val_acc": h["val_acc"][-1],
            "best_val_acc": float(res.best_val_acc),
            "best_epoch": int(res.best_epoch),
            "test_acc": float(test_acc),
            "test_loss": float(test_loss),
            "lr_start": float(v[0]),
            "lr_middle": float(v[total // 2]),
            "lr_end": float(v[-1]),
            "lr_max": float(v.max()),
            "lr_final_state": float(jax.device_get(current_learning_rate(res.train_state.opt_state))),
            "time_s": t.elapsed,
        }
        print(f"  {name:>14}: train loss {h['train_loss'][-1]:.4f}  val acc {h['val_acc'][-1]:.3f}  "
              f"test acc {test_acc:.3f}  ({t.elapsed:.1f} s)", flush=True)

    os.makedirs(args.out, exist_ok=True)
    subtitle = (f"fully_connected_net(200, 200) on {source}: {len(ds.y_train)} images, {epochs} epochs, "
                f"batch {bs}, {args.optimizer} lr {lr:g}")
    figures = {
        "schedules": plot_schedules(values, steps_per_epoch, os.path.join(args.out, "schedules.png"),
                                    f"learning-rate schedules, T = {total} steps"),
        "curves": plot_curves(runs, os.path.join(args.out, "curves.png"), subtitle),
    }
    results = {
        "dataset": desc,
        "data_source": source,
        "model": "fully_connected_net(hidden_dims=(200, 200), num_classes=10), He init, ReLU",
        "protocol": {"n_train": int(len(ds.y_train)), "n_val": int(len(ds.y_val)), "n_test": int(len(ds.y_test)),
                     "normalisation": "channel", "epochs": epochs, "batch_size": bs,
                     "steps_per_epoch": steps_per_epoch, "total_steps": total, "optimizer": args.optimizer,
                     "lr": lr, "warmup_steps": warmup_steps, "seed": args.seed,
                     "test_weights": "best validation epoch"},
        "schedules": runs,
        "schedule_values": {name: v for name, v in values.items()},
        "times_s": {"load": t_load.elapsed, "runs": times},
        "figures": {k: os.path.basename(p) for k, p in figures.items()},
    }
    path = write_results(args.out, results, args)
    print_table(["schedule", "lr start", "lr middle", "lr end", "final train loss", "final val acc",
                 "best val acc", "test acc"],
                [[n, r["lr_start"], r["lr_middle"], r["lr_end"], r["final_train_loss"], r["final_val_acc"],
                  r["best_val_acc"], r["test_acc"]] for n, r in runs.items()],
                title=f"\n{subtitle}")
    print(f"\nwrote {path}, schedules.png, curves.png")
    return results


if __name__ == "__main__":
    main()
