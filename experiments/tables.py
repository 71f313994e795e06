"""The results tables of the docs pages, rendered from the committed ``docs/results/*.json``.

    python -m experiments.tables [--results DIR] [NAME ...]

Each function below reads the results files of one experiment (``results_dir``, default
``docs/results``) and returns one markdown table; :func:`render_all` returns all of them as
``{name: table}`` and :data:`PAGES` says which docs page shows each one. The command prints
every table (or the named ones) with the page it belongs to, for pasting; the test suite
checks that each page contains its table verbatim, so a page never shows numbers that the
results files do not hold.

Formatting: accuracies with 3 decimals in the experiment tables, headline accuracies with 4
significant digits; the best value of a column in bold where the page compares settings.
What the course says (its reference numbers and the claims it makes) is not in the results
files and is written here.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"
CMD = ".venv/bin/python -m experiments."

__all__ = ["PAGES", "TABLES", "render_all", "markdown_table", "load"]


# ---------------------------------------------------------------- helpers

def load(name: str, results_dir: str | os.PathLike | None = None) -> dict:
    """``<results_dir>/<name>.json`` as a dict."""
    return json.loads((Path(results_dir or RESULTS) / f"{name}.json").read_text())


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub markdown table (no trailing newline); cells are used as given."""
    for row in rows:
        if len(row) != len(headers):
            raise ValueError(f"markdown_table: a row of {len(row)} cells under {len(headers)} headers: {row}")
    lines = ["| " + " | ".join(headers) + " |", "| " + " | ".join("---" for _ in headers) + " |"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _exp(s: str) -> str:
    """'1e-02' -> '1e-2', '3.6e+03' -> '3.6e+03' kept readable: drop the exponent's leading zeros."""
    if "e" not in s:
        return s
    mant, ex = s.split("e")
    sign = "-" if ex.startswith("-") else ""
    return f"{mant}e{sign}{ex.lstrip('+-').lstrip('0') or '0'}"


def _g(x: float, digits: int = 3) -> str:
    """``digits`` significant digits, short exponents ('6.3e-4')."""
    return _exp(f"{x:.{digits}g}")


def _e(x: float) -> str:
    """Two significant digits in e-notation: '6.2e-4', '1e-4', '5e-31'."""
    mant, ex = f"{x:.1e}".split("e")
    return _exp(f"{mant.removesuffix('.0')}e{ex}")


def _f3(x: float) -> str:
    return f"{x:.3f}"


def _bold_best(rows: list[list[str]], values: list[list[float]], columns: dict[int, Callable]) -> None:
    """Bold, in place, the best cell of each column in ``columns`` (index -> max or min)."""
    for col, pick in columns.items():
        column = [v[col] for v in values]
        best = pick(column)
        for row, v in zip(rows, column):
            if v == best:
                row[col] = f"**{row[col]}**"


def _secs(s: float) -> str:
    return f"{s:,.0f} s"


# ---------------------------------------------------------------- CIFAR-10: the classic classifiers

# What the course reports for each classic experiment, and the target set for jaxnet.
CLASSIC_COURSE = {
    "knn": ("~0.27", "≥ 0.28"),
    "knn_full": ("0.354 (k = 1, L2)", ""),
    "linear_svm": ("~0.39", "≥ 0.39"),
    "softmax": ("> 0.35", "≥ 0.40"),
    "two_layer_net": ("> 0.48 (best > 0.52)", "≥ 0.53"),
    "features_net": ("~0.55-0.60", "≥ 0.58"),
}


def classic(results_dir=None) -> str:
    """kNN, linear SVM, softmax, two-layer net, features + net: test accuracy against the course."""
    knn = load("knn", results_dir)
    p, full = knn["protocol"], knn["full"]
    rows = [[f"kNN, {p['n_train']:,} train / {p['n_test']:,} test, k by {p['folds']}-fold CV "
             f"(`{CMD}knn --data-dir D`)", *CLASSIC_COURSE["knn"],
             f"**{_g(knn['test_accuracy']['l2'], 4)}** (L2, k = {knn['best_k']['l2']}); "
             f"L1: {_g(knn['test_accuracy']['l1'], 4)} (k = {knn['best_k']['l1']})", _secs(knn["wall_time_s"])]]
    if full:
        rows.append([f"kNN, full {full['n_train']:,} / {full['n_test']:,} (same command)", *CLASSIC_COURSE["knn_full"],
                     f"**{_g(full['accuracy'], 4)}** (L2, k = {full['k']}); k = 1: {_g(full['accuracy_k1'], 4)}",
                     "(in the above)"])
    for name, label in (("linear_svm", "linear SVM"), ("softmax", "softmax")):
        r = load(name, results_dir)
        rows.append([f"{label} (`{CMD}{name} --data-dir D`)", *CLASSIC_COURSE[name],
                     f"**{_g(r['final']['test_acc'], 4)}** (lr {_g(r['best']['learning_rate'], 2)}, "
                     f"reg {_g(r['best']['reg'], 2)})", _secs(r["wall_time_s"])])
    r = load("two_layer_net", results_dir)
    hp = r["hyperparameters"]
    rows.append([f"two-layer net, pixels (`{CMD}two_layer_net --data-dir D`)", *CLASSIC_COURSE["two_layer_net"],
                 f"**{_g(r['test_acc'], 4)}** (hidden {hp['hidden']}, {hp['optimizer'].capitalize()}, "
                 f"{hp['epochs']} epochs)", _secs(r["wall_time_s"])])
    r = load("features_net", results_dir)
    hp = r["hyperparameters"]
    rows.append([f"HOG + hue histogram + two-layer net (`{CMD}features_net --data-dir D`)",
                 *CLASSIC_COURSE["features_net"],
                 f"**{_g(r['test_acc'], 4)}** (hidden {hp['hidden']}, dropout {hp['dropout']:g}); "
                 f"linear SVM on the features: {_g(r['linear_svm']['test_acc'], 4)}", _secs(r["wall_time_s"])])
    return markdown_table(["experiment (command)", "course", "target", "**ours** (test accuracy)", "wall time"], rows)


# ---------------------------------------------------------------- training deep nets

INIT_LABELS = {"tanh_0.01": "tanh, W ~ 0.01·N(0,1)", "tanh_1.0": "tanh, W ~ 1.0·N(0,1)",
               "tanh_xavier": "tanh, Xavier", "relu_xavier": "ReLU, Xavier", "relu_he": "ReLU, He"}


def init_stats(results_dir=None) -> str:
    """Activation spread through 10 layers and weight-gradient size per initialisation."""
    r = load("init_stats", results_dir)
    layers = r["protocol"]["layers"]
    rows = []
    for key, label in INIT_LABELS.items():
        s, check = r["summary"][key], r["checks"][key]
        ratio = f"{s['std_ratio_per_layer']:.2f}"
        if key == "relu_xavier":
            ratio += " (≈ 1/√2)"
        if key == "tanh_1.0":       # saturated: the weight gradients are large, the local gradient ~0
            grad = f"(local gradient 1 − h² ≤ {_g(check['max_local_grad_mean'], 2)})"
        else:
            grad = _g(s["grad_vs_reference"], 2)
        rows.append([label, _g(s["first_std"], 2), _g(s["last_std"], 2), ratio, grad,
                     f"{check['claim']} ({'holds' if check['ok'] else 'FAILS'})"])
    return markdown_table(["setting", "std, layer 1", f"std, layer {layers}", "std ratio per layer",
                           "mean ‖dL/dW‖ vs the stable init", "course's claim"], rows)


ACTIVATION_LABELS = {"sigmoid": "sigmoid", "tanh": "tanh", "relu": "ReLU", "leaky_relu": "leaky ReLU",
                     "elu": "ELU", "maxout": "maxout (2 pieces)"}


def activations(results_dir=None) -> str:
    """The same net with each activation function: train loss, best validation and test accuracy."""
    r = load("activations", results_dir)
    runs = r["activations"]
    rows, values = [], []
    for key, label in ACTIVATION_LABELS.items():
        a = runs[key]
        ratio = a["n_params"] / runs["relu"]["n_params"]
        if key == "maxout":
            label += f", {ratio:.2g}x the parameters"
        rows.append([label, _f3(a["final_train_loss"]), _f3(a["best_val_acc"]), _f3(a["test_acc"])])
        values.append([None, a["final_train_loss"], a["best_val_acc"], a["test_acc"]])
    _bold_best(rows, values, {1: min, 2: max, 3: max})
    return markdown_table(["activation", "final train loss", "best val acc", "test acc"], rows)


def batchnorm_init(results_dir=None) -> str:
    """Weight scale without and with batch norm: initial loss, train accuracy, best validation accuracy."""
    r = load("batchnorm", results_dir)["scales"]
    base, bn = r["runs"]["baseline"], r["runs"]["batchnorm"]
    rows = [[_g(a["std"], 2), _g(a["initial_loss"], 3), _g(b["initial_loss"], 3), _f3(a["final_train_acc"]),
             _f3(b["final_train_acc"]), _f3(a["best_val_acc"]), _f3(b["best_val_acc"])]
            for a, b in zip(base, bn)]
    return markdown_table(["std", "initial loss", "initial loss, BN", "train acc", "train acc, BN", "best val acc",
                           "best val acc, BN"], rows)


def batchnorm_batch_size(results_dir=None) -> str:
    """Batch norm and layer norm at small batches: train accuracy in train and eval mode."""
    r = load("batchnorm", results_dir)["batch_size"]
    rows = [[b["norm"], str(b["batch_size"]), str(b["steps"]), _f3(b["final_train_acc"]),
             _f3(b["eval_mode_train_acc"]), _f3(b["final_val_acc"])] for b in r["runs"]]
    return markdown_table(["norm", "batch", "steps", "train acc (train mode)", "train acc (eval mode)",
                           "final val acc"], rows)


OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")


def optimizers(results_dir=None) -> str:
    """Each update rule on the net and on the ill-conditioned quadratic."""
    r = load("optimizers", results_dir)
    net, quad = r["net"], r["quadratic"]
    rows = []
    for name in OPTIMIZERS:
        n, q = net["optimizers"][name], quad["optimizers"][name]
        steps = q["steps_to_target"]
        rows.append([name, _exp(f"{net['learning_rates'][name]:.0e}"), _f3(n["final_train_loss"]),
                     _f3(n["final_val_acc"]), _e(q["final_loss"]), "never" if steps is None else str(steps)])
    return markdown_table(["optimizer", "lr (net)", "net train loss, last epoch", "val acc",
                           f"quadratic f after {quad['steps']} steps", f"steps to f < {_e(quad['target'])}"], rows)


def schedules(results_dir=None) -> str:
    """The same run under each learning-rate schedule."""
    r = load("schedules", results_dir)
    p = r["protocol"]
    warmup_epochs = p["warmup_steps"] / p["steps_per_epoch"]
    labels = {"constant": "constant", "step": "step (halve every quarter)", "exponential": "exponential",
              "inverse_time": "1/t", "cosine": "cosine", "warmup_cosine": f"warmup ({warmup_epochs:g} epochs) + cosine"}

    def lr(v):
        return "~0" if 0 < v < 1e-6 else _e(v) if 0 < v < 1e-3 else _g(v, 2)

    rows, values = [], []
    for key, label in labels.items():
        s = r["schedules"][key]
        rows.append([label, f"{lr(s['lr_start'])} / {lr(s['lr_middle'])} / {lr(s['lr_end'])}",
                     _f3(s["final_train_loss"]), _f3(s["best_val_acc"]), _f3(s["test_acc"])])
        values.append([None, None, s["final_train_loss"], s["best_val_acc"], s["test_acc"]])
    _bold_best(rows, values, {3: max, 4: max})
    return markdown_table(["schedule", "lr start / middle / end", "final train loss", "best val acc", "test acc"], rows)


def regularization(results_dir=None) -> str:
    """L2, dropout and augmentation sweeps: final train/val accuracy, gap, test accuracy (raw and EMA)."""
    r = load("regularization", results_dir)
    rows = []
    for key, run in r["runs"].items():
        if key.startswith("seed="):
            continue                                   # the ensemble members: the next table
        if key == "baseline":
            label = "none (baseline)"
        elif key == "augment":
            label = "crops + flips"
        elif key.startswith("l2="):
            label = f"L2 λ = {run['l2']:g}"
        else:
            label = f"dropout {run['dropout']:g}"
        rows.append([label, _f3(run["train_acc"]), _f3(run["val_acc"]), _f3(run["gap"]), _f3(run["test_acc"]),
                     _f3(run["ema_test_acc"])])
    return markdown_table(["setting", "train acc", "val acc", "gap", "test acc", "test acc, EMA params"], rows)


def ensembles(results_dir=None) -> str:
    """Five baseline nets: the ensemble against its members, EMA params against raw ones."""
    r = load("regularization", results_dir)
    e, ema = r["ensemble"], r["ema"]
    seeds = e["seeds"]
    n = len(seeds)
    runs = ema["runs_improved"] + ema["runs_worse"]
    rows = [
        [f"members (seeds {seeds[0]}-{seeds[-1]})", "", " / ".join(_f3(a) for a in e["member_test_acc"])],
        [f"ensemble of {n} vs mean member", '"2% extra performance"',
         f"**{_f3(e['ensemble_test_acc'])}** vs {_f3(e['mean_member_test_acc'])} "
         f"({100 * e['ensemble_gain']:+.1f} points; "
         f"{100 * (e['ensemble_test_acc'] - e['best_member_test_acc']):+.1f} over the best member)"],
        ["EMA params vs raw final params",
         '"keep a moving average of the parameter vector and use that at test time"',
         f"{100 * ema['mean_gain']:+.1f} points on average, better in {ema['runs_improved']} of {runs} runs"],
        [f"ensemble of the {n} EMAs", "", _f3(e["ema_ensemble_test_acc"])],
    ]
    return markdown_table(["", "course", "jaxnet (test acc)"], rows)


def fc_net(results_dir=None) -> str:
    """The best fully connected net against the course's assignment-2 numbers."""
    r = load("fc_net", results_dir)
    rows = [
        ["test accuracy", "≥ 0.50 validation, ~0.55 possible", f"≥ {r['target_test_acc']:g}",
         f"**{_g(r['test_acc'], 4)}**"],
        ["best validation accuracy", "", "", f"{_f3(r['best_val_acc'])} (epoch {r['best_epoch']})"],
        ["train accuracy, last epoch (train mode: dropout, augmentation)", "", "", _f3(r["final_train_acc"])],
        ["training time", "", "", f"{_secs(r['times_s']['fit'])} ({r['images_per_sec_median']:,.0f} images/s)"],
    ]
    return markdown_table(["", "course (assignment 2)", "target", "jaxnet"], rows)


def _time_to(best: dict) -> tuple[str, str]:
    """'262 s / 692 s / 977 s' and the epochs they end: '3 / 9 / 13'."""
    h = best["history"]
    times, epochs = [], []
    for _, t in sorted(best["time_to_s"].items()):
        times.append(_secs(t))
        epochs.append(str(min(h["epoch"], key=lambda e: abs(h["cum_train_time_s"][h["epoch"].index(e)] - t))))
    return " / ".join(times), " / ".join(epochs)


def convnets(results_dir=None) -> str:
    """The course's three-layer convnet after one epoch and the best convnet, two seeds."""
    runs = [load("convnets", results_dir), load("convnets_seed1", results_dir)]
    course = runs[0]["course"]
    targets = " / ".join(f"{float(k):.2f}" for k in sorted(runs[0]["best"]["time_to_s"]))

    def best_cells(r):
        b = r["best"]
        times, epochs = _time_to(b)
        return (f"**{_g(b['final_test_acc_tta'], 4)}** with flip test-time augmentation, "
                f"{_g(b['final_test_acc'], 4)} without",
                f"{times} (end of epochs {epochs})",
                f"{_secs(b['train_time_s'])} ({b['train_time_s'] / 60:.1f} min)",
                f"{b['images_per_second_median']:,.0f}")

    s0, s1 = best_cells(runs[0]), best_cells(runs[1])
    epochs = runs[0]["best"]["recipe"]["epochs"]
    rows = [
        ["three-layer convnet, train acc after 1 epoch", f"> {course['course_target_train_acc']:.2f}",
         f"**{_f3(course['train_acc_1000'])}**", ""],
        ["best convnet, test accuracy", ">= 0.70 (our target 0.85)", s0[0], s1[0]],
        [f"training time to {targets} test accuracy", "", s0[1], s1[1]],
        [f"training time, {epochs} epochs", "", s0[2], s1[2]],
        ["training images/s (median over epochs)", "", s0[3], s1[3]],
    ]
    return markdown_table(["", "course", f"jaxnet, seed {runs[0]['seed']}", f"jaxnet, seed {runs[1]['seed']}"], rows)


# ---------------------------------------------------------------- all of them

TABLES: dict[str, Callable[..., str]] = {
    "classic": classic,
    "init_stats": init_stats,
    "activations": activations,
    "batchnorm_init": batchnorm_init,
    "batchnorm_batch_size": batchnorm_batch_size,
    "optimizers": optimizers,
    "schedules": schedules,
    "regularization": regularization,
    "ensembles": ensembles,
    "fc_net": fc_net,
    "convnets": convnets,
}

# the docs page (relative to the repository root) that shows each table
PAGES = {name: "docs/classic.md" if name == "classic" else "docs/deep-experiments.md" for name in TABLES}


def render_all(results_dir=None) -> dict[str, str]:
    """Every table: ``{name: markdown}``, in the order of the pages."""
    return {name: fn(results_dir) for name, fn in TABLES.items()}


def main(argv=None) -> dict[str, str]:
    parser = argparse.ArgumentParser(prog="python -m experiments.tables", description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"tables to print (default: all): {', '.join(TABLES)}")
    parser.add_argument("--results", default=None, help=f"results folder (default: {RESULTS})")
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in TABLES]
    if unknown:
        parser.error(f"unknown table(s) {', '.join(unknown)}; expected some of {', '.join(TABLES)}")
    tables = {n: TABLES[n](args.results) for n in (args.names or TABLES)}
    for name, table in tables.items():
        print(f"<!-- {name}: {PAGES[name]} (python -m experiments.tables {name}) -->\n{table}\n")
    return tables


if __name__ == "__main__":
    main()
