"""Babysitting the learning process: the course's diagnostics.

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
``small_convnet((16, 32))``). ``--quick``: fewer images and epochs. ``--smoke`` (the default test
suite's run): 300 images.

Every run is ``jaxnet.train.fit`` (same key: same initial weights and batch order for the
three rates) with a :class:`Babysitter` callback that records the per-step losses and update
ratios and raises ``StopTraining`` for the early break.
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, figure, grid_legend, parse_args, print_table, save_figure, sized, write_results,
)

NAME = "babysitting"
HEALTHY_RATIO = 1e-3
EXPLODE_FACTOR = 3.0  # course: "if the cost is ever > 3 x original cost, break out early"
DEFAULT_LRS = {"tiny": 1e-6, "good": 5e-2, "huge": 10.0}


def _extra(parser) -> None:
    parser.add_argument("--model", choices=("fc", "conv"), default="fc",
                        help="fc: fully_connected_net((100, 100)); conv: small_convnet((16, 32)) (default fc)")
    parser.add_argument("--n-train", type=int, default=None, help="training subset (default 5000; quick 1000; smoke 300)")
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


def start_state(model, ds, batch_size: int, seed: int):
    """The (params, state) ``fit(model, ds, batch_size=batch_size, key=seed)`` starts from
    (``fit`` with 0 epochs returns its untrained TrainState; the optimizer does not change it)."""
    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit

    res = fit(model, ds, optimizer=make_optimizer("sgd", 1.0), epochs=0, batch_size=batch_size, key=seed,
              progress=False)
    return res.train_state.params, res.train_state.state


class Babysitter:
    """``fit`` callback: every step's batch loss, and with ``ratio_paths`` each of those weight
    tensors' ``||w_new - w_old|| / ||w_old||`` (= ``||lr * update|| / ||w||``,
    :func:`jaxnet.train.update_ratios`); raises :class:`jaxnet.train.StopTraining` at a
    non-finite batch loss or one above ``EXPLODE_FACTOR`` x ``initial_loss`` (the early break).
    ``last_state`` is the train state after the last step run."""

    def __init__(self, initial_loss: float, params0=None, ratio_paths=()):
        import jax
        import jax.numpy as jnp

        from jaxnet.train import update_ratios

        self.initial_loss = initial_loss
        self.losses, self.ratios, self.break_step, self.last_state = [], [], None, None
        self._prev = params0
        names = ["/".join(p) for p in ratio_paths]
        self._ratios = jax.jit(lambda old, new: jnp.stack([update_ratios(old, new)[n] for n in names])) \
            if names else None

    def on_step(self, info) -> None:
        import jax
        import jax.numpy as jnp

        from jaxnet.train import StopTraining

        ts = self.last_state = info["train_state"]
        if self._ratios is not None:
            self.ratios.append(np.asarray(self._ratios(self._prev, ts.params)))
            self._prev = jax.tree.map(jnp.copy, ts.params)  # the next step donates ts's buffers
        loss = float(info["metrics"]["loss"])
        self.losses.append(loss)
        if not math.isfinite(loss) or loss > EXPLODE_FACTOR * self.initial_loss:
            self.break_step = len(self.losses)
            raise StopTraining(f"batch loss {loss:.4g} at step {self.break_step}")


def train_run(model, ds, lr: float, start, *, epochs: int, batch_size: int, seed: int,
              record_ratios: bool) -> dict:
    """Plain SGD at ``lr`` with ``fit(..., key=seed)``: per-step batch losses (and per-step
    update/weight ratios of every weight tensor when ``record_ratios``), early break on NaN or
    loss > 3 x the initial loss (:class:`Babysitter`). ``start``: the (params, state) that run
    begins from (:func:`start_state`)."""
    from jaxnet.optim import make_optimizer
    from jaxnet.train import evaluate, fit
    from jaxnet.train.fit import NonFiniteError

    params0, state0 = start
    wpaths = _weight_paths(params0) if record_ratios else []
    init_loss, init_acc = evaluate(model, params0, state0, ds.x_train, ds.y_train, 256)
    watch = Babysitter(init_loss, params0, wpaths)
    try:
        # init_params=start: the weights fit(key=seed) would draw, given (no init program compiled per lr)
        res = fit(model, ds, optimizer=make_optimizer("sgd", lr), epochs=epochs, batch_size=batch_size, key=seed,
                  progress=False, callbacks=[watch], init_params=start)
        applied = res.history["lr"][0]
        assert math.isclose(applied, lr, rel_tol=1e-6), (applied, lr)
    except NonFiniteError:  # the break step's loss was NaN: its diverged state is the final one
        pass
    losses, early_break, break_step = watch.losses, watch.break_step is not None, watch.break_step
    ts = watch.last_state
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
        arr = np.stack(watch.ratios) if watch.ratios else np.zeros((0, len(names)))
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
    grid_legend((ax,), which="both")
    return save_figure(fig, path)


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
    grid_legend((ax,), which="both")
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, "Babysitting: update/weight ratios, learning-rate diagnostics, sanity checks.",
                      _extra, argv)
    import jax

    from jaxnet.train import initial_loss_check, overfit_small_subset

    q = args.quick
    n_train = args.n_train or sized(args, 5000, 1000, 300)
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

    # (c) sanity: initial loss ~ ln 10, then overfit 20 examples
    with Timer() as t:
        start = start_state(model, ds, batch_size, args.seed)  # every run starts from these weights
        loss0, expected, ok = initial_loss_check(model, *start, ds.x_train, ds.y_train, 10)
    timings["initial_loss_s"] = t.elapsed
    with Timer() as t:
        overfit_acc = overfit_small_subset(model, ds, n=20, epochs=overfit_epochs, learning_rate=1e-3,
                                           key=args.seed)
    timings["overfit_s"] = t.elapsed

    # (a) + (b)
    runs = {}
    for label, lr in lrs.items():
        with Timer() as t:
            runs[label] = train_run(model, ds, lr, start, epochs=epochs, batch_size=batch_size, seed=args.seed,
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
