"""k-nearest neighbours on CIFAR-10, the course's assignment-1 protocol.

    python -m experiments.knn --data-dir /path/to/cifar10-jpeg.tar.gz [--quick] [--out DIR]

Without a CIFAR-10 copy (no ``--data-dir``, no ``$JAXNET_CIFAR10_DIR``) the same protocol runs
on the embedded 8x8 digits (1,527 training / 270 test images, pixels on the same 0..255 scale,
D = 64); the subsample sizes are capped at what the digits have.

- 5,000 training / 500 test images subsampled with ``--seed``, pixels as float32 in [0, 1]
  (a uniform scale, so neighbours are those of the raw 0..255 pixels), flattened to 3072;
- k chosen by 5-fold cross-validation over ks = 1, 3, 5, 8, 10, 12, 15, 20, 50, 100 with
  L2 distance, then the test accuracy with that k (course: about 0.27; target >= 0.28);
- the same with L1 distance;
- the full 50,000 / 10,000 accuracy with the chosen k (and k = 1), chunked so the
  10,000 x 50,000 distance matrix is never held (skipped with ``--quick``);
- the course's two-loop, one-loop and vectorised L2 distances timed on a small subset
  (medians of 3 after one warm-up), reported as ratios to the vectorised time;
- figures: ``distances.png`` (the 500 x 5,000 test-train L2 distances) and ``cv.png``
  (accuracy vs k, every fold as a dot, mean +- std as error bars).

``--quick``: 1,000 / 100, 3 folds, ks = 1, 3, 5, 10, a 10 x 100 speed subset, no full
run: well under 30 s after the data are loaded. ``--smoke`` (the default test suite's run):
300 / 50, 2 folds, ks = 1, 3, a 5 x 50 speed subset. Everything goes to ``--out``
(``results.json`` + the PNGs); a short table is printed.
"""

from __future__ import annotations

import os
import statistics

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits_uint8, figure, parse_args, print_table, save_figure, sized, write_results,
)

NAME = "knn"
KS = (1, 3, 5, 8, 10, 12, 15, 20, 50, 100)
QUICK_KS = (1, 3, 5, 10)
SMOKE_KS = (1, 3)
COURSE_ACCURACY = 0.27
TARGET_ACCURACY = 0.28


def _extra(parser) -> None:
    parser.add_argument("--n-train", type=int, default=None, help="training subsample (default 5000; quick 1000; smoke 300)")
    parser.add_argument("--n-test", type=int, default=None, help="test subsample (default 500; quick 100; smoke 50)")
    parser.add_argument("--folds", type=int, default=None, help="cross-validation folds (default 5; quick 3; smoke 2)")
    parser.add_argument("--chunk-size", type=int, default=256, help="test rows per distance chunk (default 256)")
    parser.add_argument("--no-full", action="store_true", help="skip the 50,000 / 10,000 run")


def _flat_float(x) -> np.ndarray:
    from jaxnet.data import to_float

    return to_float(x).reshape(len(x), -1)


def _median_time(fn, repeats: int = 3) -> float:
    import jax

    jax.block_until_ready(fn())  # warm-up: compile
    times = []
    for _ in range(repeats):
        with Timer() as t:
            out = jax.block_until_ready(fn())
        times.append(t.elapsed)
    return statistics.median(times), out


def speed_ratios(x_test, x_train, repeats: int = 3) -> dict:
    """Median times of the three L2 implementations (+ the chunked default) and ratios."""
    from jaxnet.classic import knn

    impls = {
        "two_loops": lambda: knn.l2_distances_two_loops(x_test, x_train),
        "one_loop": lambda: knn.l2_distances_one_loop(x_test, x_train),
        "vectorized": lambda: knn.l2_distances_vectorized(x_test, x_train),
        "chunked_default": lambda: knn.pairwise_distances(x_test, x_train),
    }
    median, outputs = {}, {}
    for name, fn in impls.items():
        median[name], outputs[name] = _median_time(fn, repeats)
    ref = np.asarray(outputs["vectorized"])
    diff = {name: float(np.max(np.abs(np.asarray(out) - ref))) for name, out in outputs.items() if name != "vectorized"}
    return {
        "n_test": int(len(x_test)), "n_train": int(len(x_train)), "repeats": repeats,
        "median_s": median,
        "ratio_vs_vectorized": {name: median[name] / median["vectorized"] for name in median},
        "max_abs_diff_vs_vectorized": diff,
    }


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def plot_distances(dists, y_test, y_train, path: str) -> str:
    """Two panels: the test x train L2 distance matrix as sampled (the course's picture)
    and with rows and columns grouped by class (class boundaries marked)."""
    dists = np.asarray(dists)
    fig = figure((12, 4.6))
    ax_raw, ax_sorted = fig.subplots(1, 2)
    im = ax_raw.imshow(dists, aspect="auto", interpolation="none", cmap="gray")
    ax_raw.set(title="test x train L2 distances (sampled order)", xlabel="training image", ylabel="test image")
    rows, cols = np.argsort(y_test, kind="stable"), np.argsort(y_train, kind="stable")
    ax_sorted.imshow(dists[rows][:, cols], aspect="auto", interpolation="none", cmap="gray")
    ax_sorted.set(title="grouped by class (lines: class boundaries)", xlabel="training image (by class)",
                  ylabel="test image (by class)")
    for b in np.flatnonzero(np.diff(np.sort(y_train))) + 0.5:
        ax_sorted.axvline(b, color="tab:red", lw=0.5, alpha=0.7)
    for b in np.flatnonzero(np.diff(np.sort(y_test))) + 0.5:
        ax_sorted.axhline(b, color="tab:red", lw=0.5, alpha=0.7)
    fig.colorbar(im, ax=[ax_raw, ax_sorted], label="L2 distance (pixels in [0, 1])", fraction=0.03)
    fig.savefig(path, format="png")
    return path


def plot_cv(cvs: dict, path: str, folds: int) -> str:
    """Accuracy vs k for each metric: every fold as a dot, mean +- std as error bars."""
    fig = figure((6.5 * len(cvs), 4.5))
    axes = fig.subplots(1, len(cvs), squeeze=False)[0]
    for ax, (metric, cv) in zip(axes, cvs.items()):
        ks = np.asarray(cv.ks)
        for f in range(cv.accuracies.shape[1]):
            ax.scatter(ks, cv.accuracies[:, f], s=12, color="tab:gray", alpha=0.6,
                       label="folds" if f == 0 else None)
        ax.errorbar(ks, cv.mean, yerr=cv.std, color="tab:blue", marker="o", capsize=3, label="mean +- std")
        ax.axvline(cv.best_k, color="tab:red", ls="--", lw=1, label=f"best k = {cv.best_k}")
        ax.set(title=f"{metric.upper()}: {folds}-fold cross-validation on k", xlabel="k",
               ylabel="validation accuracy")
        if ks.max() / max(ks.min(), 1) >= 20:
            ax.set_xscale("log")
            ax.set_xticks(ks)
            ax.set_xticklabels([str(k) for k in ks])
            ax.minorticks_off()
        ax.grid(True, alpha=0.3)
        ax.legend()
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, "k-nearest neighbours on CIFAR-10 (course assignment 1).", _extra, argv)
    quick = args.quick
    n_train = args.n_train or sized(args, 5000, 1000, 300)
    n_test = args.n_test or sized(args, 500, 100, 50)
    folds = args.folds or sized(args, 5, 3, 2)
    ks = sized(args, KS, QUICK_KS, SMOKE_KS)
    speed_shape = sized(args, (50, 500), (10, 100), (5, 50))
    run_full = not (quick or args.no_full)

    with Timer() as t_load:
        ds, source = cifar_or_digits_uint8(args, val_size=0)
    import jax.numpy as jnp

    from jaxnet.classic import knn
    from jaxnet.data import subsample

    os.makedirs(args.out, exist_ok=True)
    timings = {"data_load_s": t_load.elapsed}
    n_train, n_test = min(n_train, len(ds.y_train)), min(n_test, len(ds.y_test))
    x_tr_u8, y_tr = subsample(ds.x_train, ds.y_train, n_train, seed=args.seed)
    x_te_u8, y_te = subsample(ds.x_test, ds.y_test, n_test, seed=args.seed)
    x_tr, x_te = _flat_float(x_tr_u8), _flat_float(x_te_u8)
    num_classes = ds.num_classes
    print(f"kNN on {ds.name}: {n_train} train / {n_test} test subsample (seed {args.seed}), "
          f"D = {x_tr.shape[1]}, {folds}-fold CV over k in {list(ks)}", flush=True)

    cvs, test_acc, test_acc_k1 = {}, {}, {}
    for metric in ("l2", "l1"):
        with Timer() as t:
            cvs[metric] = knn.cross_validate_k(x_tr, y_tr, ks, folds=folds, seed=args.seed, metric=metric,
                                               chunk_size=args.chunk_size, num_classes=num_classes)
        timings[f"cv_{metric}_s"] = t.elapsed
        with Timer() as t:
            best = cvs[metric].best_k
            _, idx = knn.nearest_neighbors(x_tr, x_te, max(best, 1), metric=metric, chunk_size=args.chunk_size)
            nb = jnp.asarray(y_tr)[idx]
            test_acc[metric] = float(jnp.mean(knn.majority_vote(nb[:, :best], num_classes) == y_te))
            test_acc_k1[metric] = float(jnp.mean(nb[:, 0] == y_te))
        timings[f"test_{metric}_s"] = t.elapsed

    print_table(
        ["k"] + [f"{m.upper()} {s}" for m in cvs for s in ("mean", "std")],
        [[k] + [v for m in cvs for v in (cvs[m].mean[i], cvs[m].std[i])] for i, k in enumerate(ks)],
        title=f"\n{folds}-fold cross-validation accuracy",
    )

    with Timer() as t:
        dists = knn.pairwise_distances(x_te, x_tr, chunk_size=args.chunk_size)
        figures = [plot_distances(dists, y_te, y_tr, os.path.join(args.out, "distances.png")),
                   plot_cv(cvs, os.path.join(args.out, "cv.png"), folds)]
    timings["figures_s"] = t.elapsed

    with Timer() as t:
        speed = speed_ratios(x_te[: speed_shape[0]], x_tr[: speed_shape[1]])
    timings["speed_s"] = t.elapsed

    full = None
    if run_full:
        k = cvs["l2"].best_k
        print(f"\nfull run: {len(ds.y_train)} train / {len(ds.y_test)} test, L2, k = {k} ...", flush=True)
        with Timer() as t:
            xf_tr, xf_te = _flat_float(ds.x_train), _flat_float(ds.x_test)
            _, idx = knn.nearest_neighbors(xf_tr, xf_te, k, metric="l2", chunk_size=args.chunk_size)
            nb = jnp.asarray(ds.y_train)[idx]
            full = {
                "n_train": int(len(ds.y_train)), "n_test": int(len(ds.y_test)), "metric": "l2", "k": k,
                "accuracy": float(jnp.mean(knn.majority_vote(nb, num_classes) == ds.y_test)),
                "accuracy_k1": float(jnp.mean(nb[:, 0] == ds.y_test)),
                "chunk_size": args.chunk_size,
            }
            del xf_tr, xf_te
        full["time_s"] = timings["full_s"] = t.elapsed

    results = {
        "dataset": f"{ds.name} ({args.data_dir})" if source == "cifar10" else f"{ds.name} (embedded, 8x8)",
        "data_source": source,
        "protocol": {"n_train": n_train, "n_test": n_test, "folds": folds, "ks": list(ks),
                     "pixels": "float32 in [0, 1], flattened", "subsample_seed": args.seed},
        "cv": {m: cv.as_dict() for m, cv in cvs.items()},
        "best_k": {m: cv.best_k for m, cv in cvs.items()},
        "test_accuracy": test_acc,
        "test_accuracy_k1": test_acc_k1,
        "course_accuracy": COURSE_ACCURACY,
        "target_accuracy": TARGET_ACCURACY,
        "meets_target": test_acc["l2"] >= TARGET_ACCURACY if source == "cifar10" else None,  # a CIFAR-10 target
        "full": full,
        "speed": speed,
        "timings_s": timings,
        "figures": [os.path.basename(f) for f in figures],
    }
    path = write_results(args.out, results, args)

    rows = [
        [f"L2, k = {cvs['l2'].best_k} (CV)", f"{n_train}/{n_test}", test_acc["l2"]],
        ["L2, k = 1", f"{n_train}/{n_test}", test_acc_k1["l2"]],
        [f"L1, k = {cvs['l1'].best_k} (CV)", f"{n_train}/{n_test}", test_acc["l1"]],
        ["L1, k = 1", f"{n_train}/{n_test}", test_acc_k1["l1"]],
    ]
    if full:
        rows += [[f"L2, k = {full['k']} (CV)", f"{full['n_train']}/{full['n_test']}", full["accuracy"]],
                 ["L2, k = 1", f"{full['n_train']}/{full['n_test']}", full["accuracy_k1"]]]
    print_table(["classifier", "train/test", "test accuracy"], rows,
                title=f"\ntest accuracy (course ~{COURSE_ACCURACY}, target >= {TARGET_ACCURACY})" if source == "cifar10"
                else f"\ntest accuracy on {ds.name} (the CIFAR-10 course value ~{COURSE_ACCURACY} does not apply)")
    sp = speed
    print_table(["L2 implementation", "median s", "x vectorized"],
                [[name, sp["median_s"][name], sp["ratio_vs_vectorized"][name]] for name in sp["median_s"]],
                title=f"\ndistance timings on {sp['n_test']} test x {sp['n_train']} train (median of {sp['repeats']})")
    print(f"\nwrote {path} and {', '.join(results['figures'])}")
    return results


if __name__ == "__main__":
    main()
