"""Regularization: L2, dropout, data augmentation, ensembles, EMA.

    python -m experiments.regularization [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]

One fully connected net, ``fully_connected_net(hidden_dims=(256, 256))`` (He init, ReLU,
inverted dropout after each hidden layer when the rate is > 0), trained with
``jaxnet.train.fit`` (Adam, constant lr 1e-3, batch 128) on a training subset small enough
to overfit, and the train/validation gap measured under each regularizer:

1. **L2 strength** ``--l2`` (default 0, 1e-4, 1e-3, 1e-2, 1e-1): ``make_optimizer("adam", lr,
   weight_decay=lam)`` adds ``lam * w`` to the gradient of the weights (not the biases), the
   gradient of the course's ``0.5 * lam * sum(w**2)`` (Adam then rescales it);
2. **dropout rate** ``--dropout`` (probability of dropping; default 0, 0.25, 0.5, 0.75);
3. **data augmentation** off / on (``fit(augment=...)`` inside the jitted step: random crops
   with 4-pixel padding and horizontal flips on CIFAR-10; on the 8x8 digits crops with
   1-pixel padding and no flips, since mirrored digits are other symbols);
4. **an ensemble** of ``--members`` (default 5) nets of the unregularized configuration with
   seeds seed, seed + 1, ... (different initial weights and data order), their softmax
   probabilities averaged (``jaxnet.train.evaluate_ensemble``): every member's test accuracy
   vs the ensemble's (the course: "enjoy 2% extra performance");
5. **EMA / Polyak averaging** of the parameters: every run keeps an exponential moving
   average of its params (``fit(ema_decay=--ema-decay)``, default 0.995, warmup variant);
   its test accuracy vs the raw final params, per run, and the ensemble of the members' EMAs.

Every configuration shares the initial-weight key and data order (``key=seed``) with the
baseline (no L2, no dropout, no augmentation), which is run once and reused by the three
sweeps and as ensemble member 0. Measured per run, with the **final** params (no early
stopping; the best-validation epoch is recorded too): the training accuracy in eval mode on
the whole training subset (no dropout, no augmentation), the final validation accuracy, the
gap ``train_acc - val_acc``, the test accuracy, the EMA params' validation and test
accuracy, and the per-epoch history of ``fit`` (its ``train_acc`` is the running accuracy of
the epoch's training batches, i.e. with dropout and augmentation active).

Outputs in ``--out``: ``results.json``; ``regularization_sweeps.png`` (train, validation and
test accuracy and the shaded gap vs the L2 strength, the dropout rate and augmentation);
``regularization_gap.png`` (per epoch: training and validation accuracy, and their gap, one
line per setting, for each sweep); ``regularization_ensemble.png`` (member vs ensemble test
accuracy, raw vs EMA params); a printed table.

Data: CIFAR-10 (``--n-train`` default 10,000 training images, 1,000 validation, the full
10,000 test, per-channel normalised) with ``--data-dir`` / ``$JAXNET_CIFAR10_DIR``, else the
embedded 8x8 digits (all 1,257 training images). ``--quick``: fewer epochs, L2 0 / 1e-2 / 1e-1,
dropout 0 / 0.5, 3 members (and 2,000 CIFAR images); well under 60 s on the digits.
``--smoke`` (the default test suite's run): 300 training images, 2 epochs, no L2 sweep (0
only), dropout 0 / 0.5, 2 members: every part and figure with four trainings (baseline,
dropout, augmentation, a second member), mostly compile time.
"""

from __future__ import annotations

import os

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, figure, parse_args, print_table, save_figure, sized, write_results,
)

NAME = "regularization"
DESCRIPTION = "Regularization: L2 and dropout sweeps, data augmentation, ensembles, EMA of the params."

HIDDEN = (256, 256)
DEFAULT_L2 = "0,1e-4,1e-3,1e-2,1e-1"
DEFAULT_DROPOUT = "0,0.25,0.5,0.75"
QUICK_L2 = "0,1e-2,1e-1"
QUICK_DROPOUT = "0,0.5"
SMOKE_L2 = "0"
AUGMENT = {"cifar10": {"crop_padding": 4, "flip": True}, "digits": {"crop_padding": 1, "flip": False}}
EVAL_BATCH = 500


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"experiments.{NAME}: expected comma-separated numbers, got {text!r}") from None


def _extra(parser) -> None:
    parser.add_argument("--n-train", type=int, default=None,
                        help="training subset (default 10000; quick 2000; smoke 300)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per run (default 20 on CIFAR-10, 40 on digits; quick 3 / 12; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, constant (default 1e-3)")
    parser.add_argument("--l2", default=None,
                        help=f"comma-separated L2 strengths to sweep, 0 included (default {DEFAULT_L2}; "
                             f"quick {QUICK_L2}; smoke {SMOKE_L2})")
    parser.add_argument("--dropout", default=None,
                        help=f"comma-separated dropout rates (probability of dropping), 0 included "
                             f"(default {DEFAULT_DROPOUT}; quick {QUICK_DROPOUT})")
    parser.add_argument("--members", type=int, default=None, help="ensemble size (default 5; quick 3; smoke 2)")
    parser.add_argument("--ema-decay", type=float, default=0.995,
                        help="decay of the EMA of the params (default %(default)s)")


# ---------------------------------------------------------------- runs

def run_config(ds, *, l2: float, dropout: float, augment, seed: int, epochs: int, batch_size: int,
               lr: float, ema_decay: float) -> dict:
    """Train one net; returns its record (accuracies with the final and the EMA params, history)
    plus the final ``params``/``state``/``ema_params`` under ``"_members"`` (not saved)."""
    from jaxnet.nn import fully_connected_net
    from jaxnet.optim import make_optimizer
    from jaxnet.train import evaluate, fit

    model = fully_connected_net(hidden_dims=HIDDEN, num_classes=10, dropout=dropout)
    opt = make_optimizer("adam", lr, weight_decay=l2)
    with Timer() as t:
        res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=batch_size, key=seed,
                  augment=augment, ema_decay=ema_decay, progress=False)
        params, state = res.train_state.params, res.train_state.state
        _, train_acc = evaluate(model, params, state, ds.x_train, ds.y_train, EVAL_BATCH)
        _, val_acc = evaluate(model, params, state, ds.x_val, ds.y_val, EVAL_BATCH)
        test_loss, test_acc = evaluate(model, params, state, ds.x_test, ds.y_test, EVAL_BATCH)
        _, ema_train_acc = evaluate(model, res.ema_params, state, ds.x_train, ds.y_train, EVAL_BATCH)
        _, ema_val_acc = evaluate(model, res.ema_params, state, ds.x_val, ds.y_val, EVAL_BATCH)
        _, ema_test_acc = evaluate(model, res.ema_params, state, ds.x_test, ds.y_test, EVAL_BATCH)
    h = {k: [float(v) for v in res.history[k]] for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc")}
    return {
        "l2": l2, "dropout": dropout, "augment": augment is not None, "seed": seed,
        "train_acc": train_acc, "val_acc": val_acc, "gap": train_acc - val_acc,
        "test_acc": test_acc, "test_loss": test_loss,
        "running_train_acc": h["train_acc"][-1], "final_train_loss": h["train_loss"][-1],
        "best_val_acc": float(res.best_val_acc), "best_epoch": int(res.best_epoch),
        "ema_train_acc": ema_train_acc, "ema_val_acc": ema_val_acc, "ema_test_acc": ema_test_acc,
        "ema_gain": ema_test_acc - test_acc,
        "history": h, "time_s": t.elapsed,
        "_model": model, "_members": {"raw": (params, state), "ema": (res.ema_params, state)},
    }


def _public(r: dict) -> dict:
    return {k: v for k, v in r.items() if not k.startswith("_")}


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def _label(kind: str, value) -> str:
    if kind == "l2":
        return "0" if value == 0 else f"{value:g}"
    if kind == "dropout":
        return f"{value:g}"
    return "on" if value else "off"


SWEEP_TITLES = {"l2": "L2 strength λ", "dropout": "dropout rate (p drop)", "augment": "data augmentation"}


def plot_sweeps(sweeps: dict, path: str, title: str) -> str:
    fig = figure((15, 4.6))
    axes = fig.subplots(1, len(sweeps), sharey=True)
    for ax, (kind, entries) in zip(np.atleast_1d(axes), sweeps.items()):
        x = np.arange(len(entries))
        tr = [e["train_acc"] for e in entries]
        va = [e["val_acc"] for e in entries]
        te = [e["test_acc"] for e in entries]
        ax.fill_between(x, va, tr, color="tab:red", alpha=0.12, label="gap (train − val)")
        ax.plot(x, tr, "o-", color="tab:blue", label="train (eval mode)")
        ax.plot(x, va, "s-", color="tab:orange", label="validation")
        ax.plot(x, te, "^--", color="tab:green", label="test")
        for xi, e in zip(x, entries):
            ax.annotate(f"{e['gap']:+.2f}", (xi, (e["train_acc"] + e["val_acc"]) / 2), ha="center",
                        fontsize=8, color="tab:red")
        ax.set_xticks(x, [_label(kind, e["value"]) for e in entries])
        ax.set(xlabel=SWEEP_TITLES[kind], title=SWEEP_TITLES[kind])
        ax.grid(True, alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("accuracy (final params)")
    np.atleast_1d(axes)[0].legend(fontsize=8, loc="lower left")
    return save_figure(fig, path, title)


def plot_gap(sweeps: dict, path: str, title: str) -> str:
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    fig = figure((15, 8))
    axes = fig.subplots(2, len(sweeps), sharex=True)
    axes = np.asarray(axes).reshape(2, len(sweeps))
    for j, (kind, entries) in enumerate(sweeps.items()):
        top, bottom = axes[0, j], axes[1, j]
        for i, e in enumerate(entries):
            c = cmap(i / max(1, len(entries) - 1) * 0.9)
            h = e["history"]
            lab = f"{kind} {_label(kind, e['value'])}"
            top.plot(h["epoch"], h["train_acc"], "-", color=c, label=f"{lab} train")
            top.plot(h["epoch"], h["val_acc"], "--", color=c, label=f"{lab} val")
            bottom.plot(h["epoch"], np.subtract(h["train_acc"], h["val_acc"]), "o-", color=c, markersize=3,
                        label=lab)
        top.set(title=f"{SWEEP_TITLES[kind]}: train (solid) / val (dashed)", ylabel="accuracy")
        bottom.set(xlabel="epoch", ylabel="train − val accuracy", title="gap per epoch")
        bottom.axhline(0, color="0.5", lw=0.8)
        for ax in (top, bottom):
            ax.grid(True, alpha=0.3)
        bottom.legend(fontsize=8)
    fig.suptitle(title + "\n(train accuracy per epoch: running mean over the training batches, "
                         "with dropout / augmentation active)", fontsize=10)
    return save_figure(fig, path)


def plot_ensemble(ens: dict, ema_rows: list, path: str, title: str) -> str:
    fig = figure((13, 4.6))
    ax_e, ax_m = fig.subplots(1, 2)
    k = len(ens["member_test_acc"])
    x = np.arange(k)
    ax_e.bar(x - 0.2, ens["member_test_acc"], width=0.4, color="tab:blue", alpha=0.8, label="member (raw params)")
    ax_e.bar(x + 0.2, ens["ema_member_test_acc"], width=0.4, color="tab:purple", alpha=0.6, label="member (EMA)")
    ax_e.bar([k + 0.3], [ens["ensemble_test_acc"]], width=0.4, color="tab:red", label="ensemble (raw)")
    ax_e.bar([k + 0.7], [ens["ema_ensemble_test_acc"]], width=0.4, color="tab:pink", label="ensemble (EMAs)")
    ax_e.axhline(ens["mean_member_test_acc"], color="k", ls="--", lw=1, label="mean member (raw)")
    ax_e.set_xticks(list(x) + [k + 0.5], [f"seed {s}" for s in ens["seeds"]] + ["ensemble"], fontsize=8)
    lo = min(ens["member_test_acc"] + ens["ema_member_test_acc"]) - 0.03
    hi = max(ens["ensemble_test_acc"], ens["ema_ensemble_test_acc"], max(ens["member_test_acc"])) + 0.02
    ax_e.set_ylim(max(0.0, lo), min(1.0, hi))
    ax_e.set(ylabel="test accuracy",
             title=f"{k} members: ensemble {ens['ensemble_test_acc']:.3f} vs mean member "
                   f"{ens['mean_member_test_acc']:.3f} ({ens['ensemble_gain']:+.3f})")
    ax_e.legend(fontsize=8, loc="lower right")
    names = [r["run"] for r in ema_rows]
    y = np.arange(len(names))
    ax_m.barh(y, [r["ema_gain"] for r in ema_rows], color=["tab:green" if r["ema_gain"] >= 0 else "tab:red"
                                                          for r in ema_rows])
    ax_m.set_yticks(y, names, fontsize=8)
    ax_m.axvline(0, color="k", lw=0.8)
    ax_m.set(xlabel="EMA − raw final params, test accuracy", title="EMA of the params, per run")
    ax_m.grid(True, axis="x", alpha=0.3)
    return save_figure(fig, path, title)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    from jaxnet.train import evaluate_ensemble

    cifar = bool(args.data_dir)
    n_train = args.n_train or sized(args, 10000, 2000, 300)
    epochs = args.epochs or sized(args, 20 if cifar else 40, 3 if cifar else 12, 2)
    members = args.members or sized(args, 5, 3, 2)
    l2_values = _floats(args.l2 or sized(args, DEFAULT_L2, QUICK_L2, SMOKE_L2))
    dropout_values = _floats(args.dropout or sized(args, DEFAULT_DROPOUT, QUICK_DROPOUT))
    if 0.0 not in l2_values or 0.0 not in dropout_values:
        raise SystemExit(f"experiments.{NAME}: --l2 and --dropout must include 0 (the baseline)")
    if members < 2:
        raise SystemExit(f"experiments.{NAME}: --members must be >= 2, got {members}")

    with Timer() as t_load:
        ds, source, desc = cifar_or_digits(args, n_train)
    print(f"{desc}  ({t_load.elapsed:.1f} s)", flush=True)
    bs = min(args.batch_size, len(ds.y_train))
    aug = AUGMENT[source]
    common = dict(epochs=epochs, batch_size=bs, lr=args.lr, ema_decay=args.ema_decay)
    print(f"fully_connected_net{HIDDEN}, adam lr {args.lr:g}, batch {bs}, {epochs} epochs; "
          f"EMA decay {args.ema_decay:g}; augmentation {aug}", flush=True)

    cache: dict = {}

    def run(name: str, *, l2=0.0, dropout=0.0, augment=False, seed=args.seed) -> dict:
        key = (l2, dropout, bool(augment), seed)
        if key not in cache:
            r = run_config(ds, l2=l2, dropout=dropout, augment=aug if augment else None, seed=seed, **common)
            r["run"] = name
            cache[key] = r
            print(f"  {name:>14}: train {r['train_acc']:.3f}  val {r['val_acc']:.3f}  gap {r['gap']:+.3f}  "
                  f"test {r['test_acc']:.3f}  EMA test {r['ema_test_acc']:.3f}  ({r['time_s']:.1f} s)", flush=True)
        return cache[key]

    run("baseline")
    sweeps = {"l2": [], "dropout": [], "augment": []}
    for v in l2_values:
        sweeps["l2"].append({"value": v, **run("baseline" if v == 0 else f"l2={v:g}", l2=v)})
    for v in dropout_values:
        sweeps["dropout"].append({"value": v, **run("baseline" if v == 0 else f"dropout={v:g}", dropout=v)})
    for v in (False, True):
        sweeps["augment"].append({"value": v, **run("augment" if v else "baseline", augment=v)})

    seeds = [args.seed + i for i in range(members)]
    member_runs = [run("baseline" if s == args.seed else f"seed={s}", seed=s) for s in seeds]
    model = member_runs[0]["_model"]
    with Timer() as t_ens:
        raw = evaluate_ensemble(model, [r["_members"]["raw"] for r in member_runs], ds.x_test, ds.y_test,
                                EVAL_BATCH)
        raw_val = evaluate_ensemble(model, [r["_members"]["raw"] for r in member_runs], ds.x_val, ds.y_val,
                                    EVAL_BATCH)
        ema = evaluate_ensemble(model, [r["_members"]["ema"] for r in member_runs], ds.x_test, ds.y_test,
                                EVAL_BATCH)
    ensemble = {
        "seeds": seeds, "config": "baseline (no L2, no dropout, no augmentation)",
        "member_test_acc": raw["member_acc"], "mean_member_test_acc": raw["mean_member_acc"],
        "best_member_test_acc": raw["best_member_acc"], "ensemble_test_acc": raw["ensemble_acc"],
        "ensemble_gain": raw["ensemble_gain"],
        "member_test_nll": raw["member_nll"], "ensemble_test_nll": raw["ensemble_nll"],
        "member_val_acc": raw_val["member_acc"], "ensemble_val_acc": raw_val["ensemble_acc"],
        "mean_member_val_acc": raw_val["mean_member_acc"],
        "ema_member_test_acc": ema["member_acc"], "ema_mean_member_test_acc": ema["mean_member_acc"],
        "ema_ensemble_test_acc": ema["ensemble_acc"], "ema_ensemble_gain": ema["ensemble_gain"],
        "time_s": t_ens.elapsed,
    }
    runs = {r["run"]: _public(r) for r in cache.values()}
    ema_rows = [{"run": r["run"], "test_acc": r["test_acc"], "ema_test_acc": r["ema_test_acc"],
                 "ema_gain": r["ema_gain"]} for r in runs.values()]
    ema_summary = {
        "decay": args.ema_decay,
        "warmup": "the k-th update uses decay min(decay, k / (9 + k))",
        "per_run": ema_rows,
        "mean_gain": float(np.mean([r["ema_gain"] for r in ema_rows])),
        "runs_improved": int(sum(r["ema_gain"] > 0 for r in ema_rows)),
        "runs_worse": int(sum(r["ema_gain"] < 0 for r in ema_rows)),
        "members_mean_gain": ensemble["ema_mean_member_test_acc"] - ensemble["mean_member_test_acc"],
    }
    print(f"ensemble of {members}: members {np.round(raw['member_acc'], 4).tolist()}  mean "
          f"{raw['mean_member_acc']:.4f}  ensemble {raw['ensemble_acc']:.4f} ({raw['ensemble_gain']:+.4f}); "
          f"EMA members mean {ema['mean_member_acc']:.4f}, EMA ensemble {ema['ensemble_acc']:.4f}", flush=True)

    os.makedirs(args.out, exist_ok=True)
    subtitle = (f"fully_connected_net{HIDDEN} on {source}: {len(ds.y_train)} images, {epochs} epochs, "
                f"batch {bs}, adam lr {args.lr:g}")
    sweeps_public = {k: [{"value": e["value"], **_public(e)} for e in v] for k, v in sweeps.items()}
    figures = {
        "sweeps": plot_sweeps(sweeps_public, os.path.join(args.out, "regularization_sweeps.png"), subtitle),
        "gap": plot_gap(sweeps_public, os.path.join(args.out, "regularization_gap.png"), subtitle),
        "ensemble": plot_ensemble(ensemble, ema_rows, os.path.join(args.out, "regularization_ensemble.png"),
                                  subtitle + f"; EMA decay {args.ema_decay:g}"),
    }
    results = {
        "dataset": desc,
        "data_source": source,
        "model": f"fully_connected_net(hidden_dims={HIDDEN}, num_classes=10, dropout=p), He init, ReLU",
        "protocol": {"n_train": int(len(ds.y_train)), "n_val": int(len(ds.y_val)), "n_test": int(len(ds.y_test)),
                     "normalisation": "channel", "epochs": epochs, "batch_size": bs, "optimizer": "adam",
                     "lr": args.lr, "schedule": "constant", "seed": args.seed,
                     "l2_values": list(l2_values), "dropout_values": list(dropout_values),
                     "augment": aug, "members": members, "ema_decay": args.ema_decay,
                     "weights": "final params (no early stopping)",
                     "train_acc": "eval mode on the whole training subset", "gap": "train_acc - val_acc"},
        "sweeps": sweeps_public,
        "ensemble": ensemble,
        "ema": ema_summary,
        "runs": runs,
        "times_s": {"load": t_load.elapsed, "runs": {n: r["time_s"] for n, r in runs.items()},
                    "ensemble_eval": t_ens.elapsed},
        "figures": {k: os.path.basename(p) for k, p in figures.items()},
    }
    path = write_results(args.out, results, args)
    rows = []
    for kind, entries in sweeps_public.items():
        for e in entries:
            rows.append([f"{kind} {_label(kind, e['value'])}", e["train_acc"], e["val_acc"], e["gap"],
                         e["test_acc"], e["ema_test_acc"]])
    print_table(["setting", "train acc", "val acc", "gap", "test acc", "EMA test acc"], rows,
                title=f"\n{subtitle}")
    print_table(["", "test acc"],
                [[f"member seed {s}", a] for s, a in zip(seeds, raw["member_acc"])]
                + [["mean member", raw["mean_member_acc"]], [f"ensemble of {members}", raw["ensemble_acc"]],
                   [f"ensemble of {members} EMAs", ema["ensemble_acc"]]])
    print(f"\nwrote {path}, " + ", ".join(os.path.basename(p) for p in figures.values()))
    return results


if __name__ == "__main__":
    main()
