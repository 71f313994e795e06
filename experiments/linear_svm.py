"""Linear SVM on CIFAR-10 raw pixels (CS231n assignment 1), with the course's checks.

    python -m experiments.linear_svm --data-dir /path/to/cifar10-jpeg.tar.gz [--quick]

Steps: the course's split (49,000 train / 1,000 val held out of the training set / 10,000
test); preprocessing (float pixels in 0..255, the mean training image subtracted, the
bias column appended; ``--normalize`` switches to per-channel or per-pixel standardisation);
the initial-loss sanity check (small W, reg = 0: SVM ~ (C - 1) delta = 9, softmax ~ ln 10);
naive-vs-vectorised agreement and speed (loss + hand gradient on 500 training rows, median
of 3); a search over learning rate and regularisation scored on the validation split; the
best setting retrained on the training split only for ``--iters`` steps; test accuracy of
that single model. Writes results.json, templates.png, search.png and loss.png in --out.

Without a CIFAR-10 copy (no ``--data-dir``, no ``$JAXNET_CIFAR10_DIR``) the same pipeline runs
on the embedded 8x8 digits (pixels on the same 0..255 scale; their own 1,257 / 270 / 270 split).

``--quick``: 5,000 training images, a 4-trial random search; ``--smoke`` (the default test
suite's run): 400 images, 2 trials, checks on 100 rows.

:func:`run` is shared with ``experiments.softmax`` (same pipeline, the other loss).
"""
from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments._common import Timer, cifar_or_digits_uint8, parse_args, print_table, sized, write_results
from jaxnet.classic.linear import (
    accuracy, linear_features, plot_loss_curve, plot_templates, softmax_loss_naive, softmax_loss_vectorized,
    svm_loss_naive, svm_loss_vectorized, train_linear,
)
from jaxnet.classic.search import coarse_to_fine, plot_search, random_search, results_table
from jaxnet.gradcheck import rel_error, sparse_numerical_gradient

LOSS_FNS = {
    "svm": (svm_loss_naive, svm_loss_vectorized),
    "softmax": (softmax_loss_naive, softmax_loss_vectorized),
}

# --smoke (the default test suite's run): the quick protocol on 400 training images, 2 trials of
# 50 steps, 50 final steps (as many as a trial's: one compiled scan for the search and the final run);
# the sanity checks on 100 rows instead of 500.
SMOKE = dict(search="random", stages=1, trials=2, search_iters=50, iters=50, batch_size=100, lr_decay=0.9,
             train_subset=400, check_rows=100)

# Settings per loss: full run, --quick and --smoke. Ranges are for 0..255 pixels (mean-image subtracted);
# lr and reg move together with the pixel scale, so other --normalize modes get their own.
# The digits (65 columns instead of 3,073, same 0..255 scale) take larger steps: ``space_digits``
# replaces a mode's ranges on the digits where it is given.
DEFAULTS = {
    "svm": dict(
        full=dict(search="coarse-to-fine", stages=2, trials=12, search_iters=1500, iters=5000, batch_size=500,
                  lr_decay=0.9),
        quick=dict(search="random", stages=1, trials=4, search_iters=200, iters=300, batch_size=200,
                   lr_decay=0.9, train_subset=5000),
        smoke=SMOKE,
        space={"mean_image": {"learning_rate": (1e-8, 1e-6, "log"), "reg": (1e1, 1e5, "log")},
               "channel": {"learning_rate": (1e-5, 1e-2, "log"), "reg": (1e-3, 1e1, "log")},
               "feature": {"learning_rate": (1e-5, 1e-2, "log"), "reg": (1e-3, 1e1, "log")}},
        space_digits={"mean_image": {"learning_rate": (1e-6, 1e-4, "log"), "reg": (1e-2, 1e3, "log")}},
        expected_initial=9.0,
    ),
    "softmax": dict(
        full=dict(search="coarse-to-fine", stages=2, trials=12, search_iters=1500, iters=5000, batch_size=500,
                  lr_decay=0.9),
        quick=dict(search="random", stages=1, trials=4, search_iters=200, iters=300, batch_size=200,
                   lr_decay=0.9, train_subset=5000),
        smoke=SMOKE,
        space={"mean_image": {"learning_rate": (1e-8, 1e-5, "log"), "reg": (1e0, 1e5, "log")},
               "channel": {"learning_rate": (1e-5, 1e-1, "log"), "reg": (1e-4, 1e1, "log")},
               "feature": {"learning_rate": (1e-5, 1e-1, "log"), "reg": (1e-4, 1e1, "log")}},
        space_digits={"mean_image": {"learning_rate": (1e-5, 1e-3, "log"), "reg": (1e-2, 1e3, "log")}},
        expected_initial=float(np.log(10.0)),
    ),
}


def _options(parser):
    parser.add_argument("--normalize", choices=("mean_image", "channel", "feature"), default="mean_image",
                        help="pixel preprocessing (default: the course's mean-image subtraction)")
    parser.add_argument("--search", choices=("random", "coarse-to-fine"), default=None)
    parser.add_argument("--trials", type=int, default=None, help="trials per search stage")
    parser.add_argument("--stages", type=int, default=None, help="coarse-to-fine stages")
    parser.add_argument("--search-iters", type=int, default=None, help="SGD steps per search trial")
    parser.add_argument("--iters", type=int, default=None, help="SGD steps of the final model")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--lr-decay", type=float, default=None,
                        help="learning-rate factor applied after every epoch (default 0.9)")
    parser.add_argument("--lr", type=float, default=None, help="skip the search: use this learning rate")
    parser.add_argument("--reg", type=float, default=None, help="skip the search: use this regularisation")


def _median_time(fn, repeats=3):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _checks(loss, X_dev, y_dev, seed, reg):
    """Initial loss at small W, naive vs vectorised agreement (float64) and speed (float32)."""
    naive, vec = LOSS_FNS[loss]
    W = 1e-4 * np.random.default_rng(seed).standard_normal((X_dev.shape[1], 10)).astype(np.float32)
    initial = float(vec(W, X_dev, y_dev, 0.0)[0])
    initial_tiny = float(vec(W * 1e-3, X_dev, y_dev, 0.0)[0])      # W ~ 1e-7: scores ~ 0 exactly
    with jax.enable_x64(True):
        W64, X64 = W.astype(np.float64), X_dev.astype(np.float64)
        ln, gn = naive(W64, X64, y_dev, reg)
        lv, gv = vec(W64, X64, y_dev, reg)
        # finite differences at 10 random coordinates on 20 rows (the course: fewer rows, fewer kinks)
        X20, y20 = X64[:20], y_dev[:20]
        idx, num = sparse_numerical_gradient(lambda w: vec(w, X20, y20, reg)[0], (jnp.asarray(W64),),
                                             jax.random.PRNGKey(seed), num_checks=10)
        g20 = np.ravel(np.asarray(vec(W64, X20, y20, reg)[1]))[np.asarray(idx)]
        agree = {"reg": reg, "loss_rel_error": rel_error(ln, lv), "grad_rel_error": rel_error(gn, gv),
                 "numeric_grad_rel_error_10_coords_20_rows": rel_error(g20, num)}
    # speed: float32, loss + hand gradient, median of 3 (the jitted one warmed up first)
    Wj, Xj, yj = jnp.asarray(W), jnp.asarray(X_dev), jnp.asarray(y_dev)     # on device before timing
    jax.block_until_ready(vec(Wj, Xj, yj, 1.0))                               # compile outside the timing
    t_naive = _median_time(lambda: naive(W, X_dev, y_dev, 1.0)[1])
    t_vec = _median_time(lambda: vec(Wj, Xj, yj, 1.0)[1])
    speed = {"n_rows": int(len(X_dev)), "naive_s": t_naive, "vectorized_s": t_vec,
             "speedup": t_naive / max(t_vec, 1e-9)}
    return (initial, initial_tiny), agree, speed


def _downsample(h, n=500):
    h = np.asarray(h, float)
    step = max(1, len(h) // n)
    return {"every": step, "values": h[::step].round(5).tolist()}


def run(loss: str, name: str, description: str, argv=None) -> dict:
    args = parse_args(name, description, extra=_options, argv=argv)
    cfg = dict(DEFAULTS[loss][sized(args, "full", "quick", "smoke")])
    for key in ("search", "trials", "stages", "search_iters", "iters", "batch_size", "lr_decay"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)

    with Timer() as t_load:
        ds, source = cifar_or_digits_uint8(args, val_size=1000)
        if cfg.get("train_subset") and cfg["train_subset"] < len(ds.y_train):
            rng = np.random.default_rng(args.seed)
            keep = np.sort(rng.permutation(len(ds.y_train))[:cfg["train_subset"]])
            ds = ds.replace(x_train=ds.x_train[keep], y_train=ds.y_train[keep])
        X_train, X_val, X_test, prep = linear_features(ds, normalize=args.normalize)
        y_train, y_val, y_test = ds.y_train, ds.y_val, ds.y_test
    space = DEFAULTS[loss]["space"][args.normalize]
    if source == "digits":
        space = DEFAULTS[loss]["space_digits"].get(args.normalize, space)
    print(f"{name}: {ds!r}; features {prep} ({t_load.elapsed:.1f} s)", flush=True)

    # ---- sanity checks on a 500-row dev set (smoke: 100)
    check_rows = cfg.get("check_rows", 500)
    dev = np.random.default_rng(args.seed).permutation(len(X_train))[:check_rows]
    with Timer() as t_checks:
        reg_check = float(np.sqrt(space["reg"][0] * space["reg"][1]))
        (initial, initial_tiny), agree, speed = _checks(loss, X_train[dev], y_train[dev], args.seed, reg_check)
    expected = DEFAULTS[loss]["expected_initial"]
    print(f"initial loss (reg = 0): {initial:.4f} with W = 1e-4 randn (the course's init), {initial_tiny:.4f} "
          f"with W = 1e-7 randn (expected ~ {expected:.4f})")
    print(f"naive vs vectorised: {agree}; speed on {speed['n_rows']} rows: naive {speed['naive_s'] * 1e3:.1f} ms, "
          f"vectorised {speed['vectorized_s'] * 1e3:.2f} ms, x{speed['speedup']:.0f}", flush=True)

    # ---- hyperparameter search on the validation split
    Xtr, ytr = jnp.asarray(X_train), jnp.asarray(y_train)
    Xva, yva = jnp.asarray(X_val), jnp.asarray(y_val)

    def train_eval(params, iters=cfg["search_iters"]):
        W, _ = train_linear(Xtr, ytr, loss=loss, learning_rate=params["learning_rate"], reg=params["reg"],
                            num_iters=iters, batch_size=cfg["batch_size"], seed=args.seed, num_classes=10,
                            lr_decay=cfg["lr_decay"])
        return accuracy(W, Xva, yva), accuracy(W, Xtr, ytr)

    stages = []
    with Timer() as t_search:
        if args.lr is not None and args.reg is not None:
            results = []
            best = {"learning_rate": args.lr, "reg": args.reg}
        elif cfg["search"] == "random":
            results = random_search(train_eval, space, cfg["trials"], seed=args.seed, verbose=True)
            best = results[0].params
        else:
            results, hist = coarse_to_fine(train_eval, space, stages=cfg["stages"], trials_per_stage=cfg["trials"],
                                           seed=args.seed, verbose=True, return_stages=True)
            stages = [{"stage": h["stage"], "space": h["space"], "n_trials": len(h["trials"])} for h in hist]
            best = results[0].params
    if results:
        print(results_table(results, top=10))

    # ---- the chosen setting, trained on the training split only; val chose it, test is reported
    with Timer() as t_final:
        W, history = train_linear(Xtr, ytr, loss=loss, learning_rate=best["learning_rate"], reg=best["reg"],
                                  num_iters=cfg["iters"], batch_size=cfg["batch_size"], seed=args.seed,
                                  num_classes=10, lr_decay=cfg["lr_decay"])
        final = {"train_acc": accuracy(W, Xtr, ytr), "val_acc": accuracy(W, Xva, yva),
                 "test_acc": accuracy(W, X_test, y_test)}

    title = f"{loss} on CIFAR-10 (JPEG copy)" if source == "cifar10" else f"{loss} on {ds.name} (embedded, 8x8)"
    image_shape = tuple(ds.x_train.shape[1:])
    figures = {
        "templates": plot_templates(W, ds.classes, f"{args.out}/templates.png", image_shape=image_shape,
                                    title=f"{title}: class templates"),
        "loss_curve": plot_loss_curve(history, f"{args.out}/loss.png",
                                      title=f"{title}: lr {best['learning_rate']:.3g}, reg {best['reg']:.3g}"),
    }
    if results:
        figures["search"] = plot_search(results, f"{args.out}/search.png", title=f"{title}: search")

    out = {
        "loss": loss,
        "data": {"name": ds.name, "train": len(y_train), "val": len(y_val), "test": len(y_test)},
        "data_source": source,
        "preprocessing": prep,
        "initial_loss": {"value": initial, "W_init": "1e-4 * randn(D, C)", "value_W_1e-7": initial_tiny,
                         "expected": expected, "reg": 0.0, "rows": int(len(dev))},
        "naive_vs_vectorized": agree,
        "speed": speed,
        "search": {"method": "fixed" if not results else cfg["search"], "space": space, "stages": stages,
                   "iters_per_trial": cfg["search_iters"], "batch_size": cfg["batch_size"],
                   "lr_decay_per_epoch": cfg["lr_decay"], "scored_on": f"val ({len(y_val):,} held-out training images)",
                   "n_trials": len(results),
                   "trials": [{**t.params, "val_acc": t.val_acc, "train_acc": t.train_acc} for t in results]},
        "best": {**best, "search_val_acc": results[0].val_acc if results else None},
        "final": {**final, "iters": cfg["iters"], "batch_size": cfg["batch_size"], "lr_decay_per_epoch": cfg["lr_decay"],
                  "trained_on": "train split only (val chose the setting; test reported once)",
                  "initial_minibatch_loss": float(history[0]),
                  "final_minibatch_loss_mean_last_100": float(np.mean(history[-100:]))},
        "loss_history": _downsample(history),
        "timings_s": {"load_and_preprocess": t_load.elapsed, "checks": t_checks.elapsed,
                      "search": t_search.elapsed, "final_train_eval": t_final.elapsed},
        "figures": figures,
    }
    path = write_results(args.out, out, args)
    print_table(
        ["loss", "lr", "reg", "iters", "train acc", "val acc", "test acc", "initial loss", "speedup"],
        [[loss, f"{best['learning_rate']:.3g}", f"{best['reg']:.3g}", cfg["iters"], final["train_acc"],
          final["val_acc"], final["test_acc"], initial, f"x{speed['speedup']:.0f}"]],
        title=f"{title} ({sized(args, 'full', 'quick', 'smoke')}; results in {path})",
    )
    return out


def main(argv=None) -> dict:
    return run("svm", "linear_svm", "Linear multiclass SVM on CIFAR-10 raw pixels (CS231n A1).", argv)


if __name__ == "__main__":
    main()
