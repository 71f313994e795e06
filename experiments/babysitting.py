"""Babysitting the learning process (seeds-catalog §12.3, §12.2): the course's diagnostics.

    python -m experiments.babysitting [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]

- (a) update-to-weight ratio ``||lr * update|| / ||w||`` (= ``||w_new - w_old|| / ||w_old||``)
  recorded at every step for every weight tensor (``w`` leaves) while training with the
  "good" learning rate; the course's rule of thumb is about 1e-3. Figure
  ``update_ratios.png`` (log axis, the 1e-3 line); the median per layer goes to results.json;
- (b) the same net and data trained with plain SGD at a tiny (1e-6), a good (5e-2) and a
  huge (10) learning rate: the tiny one barely moves the loss, the huge one explodes (NaN
  or a batch loss > 3 x the initial loss: the course's early break), the good one goes
  down. Figure ``learning_rates.png`` (the three loss curves per step, log axis);
  final / initial loss (full training subset, train=False) per rate;
- (c) the sanity checks: the initial loss of the untrained net vs ln 10
  (``jaxnet.train.initial_loss_check``) and overfitting 20 examples without regularisation
  to 100 % train accuracy (``jaxnet.train.overfit_small_subset``, Adam).

Data: CIFAR-10 (a 5,000-image training subset, per-channel normalised) when ``--data-dir``
or ``$JAXNET_CIFAR10_DIR`` is given, else the embedded 8x8 digits (``jaxnet.data.load_digits``);
``results.json`` records which. Model: ``fully_connected_net((100, 100))`` (``--model conv``:
``small_convnet((16, 32))``). ``--quick``: fewer steps (well under 20 s on the digits).
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from experiments._common import Timer, cifar_or_digits, figure, parse_args, print_table, write_results

NAME = "babysitting"
HEALTHY_RATIO = 1e-3
EXPLODE_FACTOR = 3.0  # course: "if the cost is ever > 3 x original cost, break out early"
DEFAULT_LRS = {"tiny": 1e-6, "good": 5e-2, "huge": 10.0}


def _extra(parser) -> None:
    parser.add_argument("--model", choices=("fc", "conv"), default="fc",
                        help="fc: fully_connected_net((100, 100)); conv: small_convnet((16, 32)) (default fc)")
    parser.add_argument("--n-train", type=int, default=None, help="CIFAR-10 training subset (default 5000; quick 1000)")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per learning rate (default 10; quick 3)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 100; quick 64)")
    parser.add_argument("--lr-tiny", type=float, default=DEFAULT_LRS["tiny"])
    parser.add_argument("--lr-good", type=float, default=DEFAULT_LRS["good"])
    parser.add_argument("--lr-huge", type=float, default=DEFAULT_LRS["huge"])
    parser.add_argument("--overfit-epochs", type=int, default=None, help="full-batch Adam steps on 20 examples "
                        "(default 200; quick 100)")


def _model(kind: str):
    from jaxnet.nn import fully_connected_net, small_convnet

    if kind == "conv":
        return small_convnet(channels=(16, 32), num_classes=10)
    return fully_connected_net(hidden_dims=(100, 100), num_classes=10)


def _weight_paths(params) -> list[tuple]:
    import jax

    paths = []
    for path, _ in jax.tree_util.tree_leaves_with_path(params):
        keys = tuple(getattr(k, "key", getattr(k, "name", str(k))) for k in path)
        if keys and keys[-1] == "w":
            paths.append(keys)
    return paths


def make_sgd_runner(model, input_shape):
    """One SGD optimizer (``make_optimizer("sgd", 1.0)``) and one jitted step for all learning
    rates: the rate lives in the optimizer state (``inject_hyperparams``) and is set per run,
    so the step compiles once. The step also returns, per weight tensor (``w`` leaves),
    ``||w_new - w_old|| / ||w_old||`` (= ``||lr * update|| / ||w||``, :func:`jaxnet.train.update_ratios`)."""
    import jax
    import jax.numpy as jnp

    from jaxnet.optim import make_optimizer
    from jaxnet.train import make_train_step, update_ratios

    opt = make_optimizer("sgd", 1.0)
    step = make_train_step(model, opt, donate=False)
    holder = {}

    @functools.partial(jax.jit, donate_argnums=(0,))
    def step_with_ratios(ts, x, y, mask):
        new_ts, metrics = step(ts, x, y, mask)
        per_leaf = update_ratios(ts.params, new_ts.params)  # {"fc1/w": ||w_new - w_old|| / ||w_old||, ...}
        ratios = jnp.stack([per_leaf["/".join(p)] for p in holder["wpaths"]])
        return new_ts, metrics, ratios

    def init(seed: int, lr: float):
        import optax

        from jaxnet.train import create_train_state

        ts = create_train_state(model, opt, seed, input_shape)
        holder.setdefault("wpaths", _weight_paths(ts.params))
        opt_state = optax.tree_utils.tree_set(ts.opt_state, learning_rate=jnp.asarray(lr, jnp.float32))
        return ts.replace(opt_state=opt_state)

    return init, step_with_ratios, holder


def train_run(model, ds, lr: float, runner, *, epochs: int, batch_size: int, seed: int,
              record_ratios: bool) -> dict:
    """Plain SGD at ``lr``: per-step batch losses (and per-step update/weight ratios of every
    weight tensor when ``record_ratios``), early break on NaN or loss > 3 x the initial loss."""
    import jax

    from jaxnet.train import batches, evaluate

    init, step_with_ratios, holder = runner
    ts = init(seed, lr)
    wpaths = holder["wpaths"]

    init_loss, init_acc = evaluate(model, ts.params, ts.state, ds.x_train, ds.y_train, 256)
    losses, ratios, early_break, break_step = [], [], False, None
    data_key = jax.random.PRNGKey(seed + 1)
    for epoch in range(epochs):
        for xb, yb, mb in batches(ds.x_train, ds.y_train, batch_size, key=jax.random.fold_in(data_key, epoch)):
            ts, metrics, r = step_with_ratios(ts, xb, yb, mb)
            if record_ratios:
                ratios.append(np.asarray(r))
            if not losses:
                applied = float(metrics["learning_rate"])
                assert math.isclose(applied, lr, rel_tol=1e-6), (applied, lr)
            loss = float(metrics["loss"])
            losses.append(loss)
            if not math.isfinite(loss) or loss > EXPLODE_FACTOR * init_loss:
                early_break, break_step = True, len(losses)
                break
        if early_break:
            break
    final_loss, final_acc = evaluate(model, ts.params, ts.state, ds.x_train, ds.y_train, 256)
    val = evaluate(model, ts.params, ts.state, ds.x_val, ds.y_val, 256) if len(ds.y_val) else (math.nan, math.nan)
    finite = math.isfinite(final_loss)
    out = {
        "learning_rate": lr, "optimizer": "sgd", "steps": len(losses), "epochs_requested": epochs,
        "initial_loss": init_loss, "initial_train_acc": init_acc,
        "final_loss": final_loss if finite else None,
        "final_over_initial": final_loss / init_loss if finite else None,
        "final_train_acc": final_acc, "final_val_acc": val[1],
        "last_batch_loss": losses[-1] if losses else None,
        "early_break": early_break, "break_step": break_step,
        "exploded": early_break or not finite or final_loss > EXPLODE_FACTOR * init_loss,
        "loss_curve": losses,
    }
    if record_ratios:
        names = ["/".join(p[:-1]) or "w" for p in wpaths]
        arr = np.stack(ratios) if ratios else np.zeros((0, len(names)))
        out["ratio_layers"] = names
        out["ratios"] = arr
    return out


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def plot_ratios(names, ratios: np.ndarray, lr: float, path: str) -> str:
    fig = figure((7.5, 4.5))
    ax = fig.subplots()
    steps = np.arange(1, len(ratios) + 1)
    for i, name in enumerate(names):
        ax.plot(steps, ratios[:, i], lw=1, label=f"{name} (median {np.median(ratios[:, i]):.2g})")
    ax.axhline(HEALTHY_RATIO, color="k", ls="--", lw=1, label="1e-3 (rule of thumb)")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="||lr * update|| / ||w||",
           title=f"update / weight ratio per layer (SGD, lr = {lr:g})")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


def plot_learning_rates(runs: dict, path: str) -> str:
    fig = figure((7.5, 4.5))
    ax = fig.subplots()
    colors = {"tiny": "tab:blue", "good": "tab:green", "huge": "tab:red"}
    for label, run in runs.items():
        ys = np.asarray(run["loss_curve"], dtype=np.float64)
        xs = np.arange(1, len(ys) + 1)
        ok = np.isfinite(ys)
        tag = f"{label}: lr = {run['learning_rate']:g}"
        if run["early_break"]:
            tag += f" (early break at step {run['break_step']})"
        ax.plot(xs[ok], ys[ok], color=colors.get(label), lw=1, marker="o" if ok.sum() < 30 else None,
                markersize=3, label=tag)
    init = runs["good"]["initial_loss"]
    ax.axhline(EXPLODE_FACTOR * init, color="k", ls=":", lw=1, label="3 x initial loss (break)")
    ax.axhline(math.log(10), color="gray", ls="--", lw=1, label="ln 10")
    ax.set_yscale("log")
    ax.set(xlabel="step", ylabel="training batch loss", title="loss vs learning rate (SGD)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")
    return path


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, "Babysitting: update/weight ratios, learning-rate diagnostics, sanity checks.",
                      _extra, argv)
    import jax

    from jaxnet.train import initial_loss_check, overfit_small_subset

    q = args.quick
    n_train = args.n_train or (1000 if q else 5000)
    epochs = args.epochs or (3 if q else 10)
    batch_size = args.batch_size or (64 if q else 100)
    overfit_epochs = args.overfit_epochs or (100 if q else 200)
    lrs = {"tiny": args.lr_tiny, "good": args.lr_good, "huge": args.lr_huge}
    os.makedirs(args.out, exist_ok=True)
    timings = {}

    with Timer() as t:
        ds, _, desc = cifar_or_digits(args, n_train)
    timings["data_s"] = t.elapsed
    model = _model(args.model)
    print(f"{desc}; model {args.model}; SGD, batch {batch_size}, {epochs} epochs per lr", flush=True)

    runner = make_sgd_runner(model, (batch_size,) + ds.x_train.shape[1:])

    # (c) sanity: initial loss ~ ln 10, then overfit 20 examples
    with Timer() as t:
        ts0 = runner[0](args.seed, lrs["good"])
        loss0, expected, ok = initial_loss_check(model, ts0.params, ts0.state, ds.x_train, ds.y_train, 10)
    timings["initial_loss_s"] = t.elapsed
    with Timer() as t:
        overfit_acc = overfit_small_subset(model, ds, n=20, epochs=overfit_epochs, learning_rate=1e-3,
                                           key=args.seed)
    timings["overfit_s"] = t.elapsed

    # (a) + (b)
    runs = {}
    for label, lr in lrs.items():
        with Timer() as t:
            runs[label] = train_run(model, ds, lr, runner, epochs=epochs, batch_size=batch_size, seed=args.seed,
                                    record_ratios=(label == "good"))
        timings[f"train_{label}_s"] = t.elapsed
    good = runs["good"]
    names, ratios = good.pop("ratio_layers"), good.pop("ratios")
    ratio_stats = {
        name: {"median": float(np.median(ratios[:, i])), "min": float(np.min(ratios[:, i])),
               "max": float(np.max(ratios[:, i])), "first": float(ratios[0, i]), "last": float(ratios[-1, i])}
        for i, name in enumerate(names)
    }

    with Timer() as t:
        figures = {
            "update_ratios": plot_ratios(names, ratios, lrs["good"], os.path.join(args.out, "update_ratios.png")),
            "learning_rates": plot_learning_rates(runs, os.path.join(args.out, "learning_rates.png")),
        }
    timings["figures_s"] = t.elapsed

    results = {
        "dataset": desc,
        "data_source": "cifar10" if args.data_dir else "digits",
        "model": args.model,
        "protocol": {"n_train": int(len(ds.y_train)), "batch_size": batch_size, "epochs": epochs,
                     "optimizer": "sgd", "learning_rates": lrs, "explode_factor": EXPLODE_FACTOR,
                     "overfit": {"n": 20, "epochs": overfit_epochs, "optimizer": "adam", "learning_rate": 1e-3,
                                 "regularization": "none"}},
        "update_ratio": {"learning_rate": lrs["good"], "healthy": HEALTHY_RATIO, "per_layer": ratio_stats,
                         "median_per_layer": {n: s["median"] for n, s in ratio_stats.items()},
                         "per_step": {n: ratios[:, i] for i, n in enumerate(names)}},
        "learning_rates": runs,
        "summary": {
            "tiny_final_over_initial": runs["tiny"]["final_over_initial"],
            "good_final_over_initial": runs["good"]["final_over_initial"],
            "huge_final_over_initial": runs["huge"]["final_over_initial"],
            "huge_early_break": runs["huge"]["early_break"],
            "huge_break_step": runs["huge"]["break_step"],
        },
        "initial_loss": {"value": loss0, "expected_ln10": expected, "ratio": loss0 / expected, "ok_10pct": ok},
        "overfit_small_subset": {"n": 20, "train_accuracy": overfit_acc, "ok": overfit_acc == 1.0},
        "timings_s": timings,
        "figures": figures,
        "backend": jax.default_backend(),
    }
    path = write_results(args.out, results, args)

    print_table(["lr", "value", "steps", "initial loss", "final loss", "final/initial", "early break"],
                [[k, r["learning_rate"], r["steps"], r["initial_loss"],
                  r["final_loss"] if r["final_loss"] is not None else "nan",
                  r["final_over_initial"] if r["final_over_initial"] is not None else "nan",
                  f"step {r['break_step']}" if r["early_break"] else "no"] for k, r in runs.items()],
                title="\nSGD at three learning rates (loss on the training subset)")
    print_table(["weight", "median ratio", "min", "max"],
                [[n, s["median"], s["min"], s["max"]] for n, s in ratio_stats.items()],
                title=f"\nupdate / weight ratio per step, lr = {lrs['good']:g} (healthy ~ 1e-3)")
    print_table(["check", "value", "expected", "ok"],
                [["initial loss", loss0, expected, ok],
                 ["overfit 20 examples: train acc", overfit_acc, 1.0, overfit_acc == 1.0]],
                title="\nsanity checks")
    print(f"\nwrote {path} and {', '.join(os.path.basename(f) for f in figures.values())}")
    return results


if __name__ == "__main__":
    main()
