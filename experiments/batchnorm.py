"""Batch normalization: init scales, batch size, manual vs autodiff backward.

    python -m experiments.batchnorm [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]

Three parts, all on the same deep fully connected ReLU net (``--hidden``, default six hidden
layers of 100 units, i.e. a 7-layer net ``{affine - [norm] - relu} x 6 - affine``), trained
with ``jaxnet.train.fit`` (Adam, ``--lr`` 1e-3, the course's BatchNormalization.ipynb
settings), every run with the same ``key`` (same data order):

1. **Batch norm and initialization** (the notebook's "weight initialization" experiment):
   every affine layer, the classifier included, starts at ``std * N(0, 1)`` for ``std`` in
   ``logspace(-4, 0, --num-scales)`` (:class:`FixedStd`, a hashable initializer built on
   ``jaxnet.nn.init.small``), once without normalization ("baseline") and once with
   ``BatchNorm`` after every hidden affine layer. Recorded per run: the initial loss (train
   mode, batch statistics, on the first 500 training images, with the exact weights ``fit``
   starts from), the final training loss and accuracy (running means over the last epoch,
   train mode), the best and final validation accuracy. The course's claim: batch norm
   makes training far less sensitive to the init scale; without it, tiny scales make the
   activations vanish through the layers (nothing trains), large scales make them explode
   (the initial loss is huge). Figure ``batchnorm_scales.png``.
2. **Batch size** (the notebook's "batch normalization and batch size" and layer-norm parts):
   the He-initialised net with ``BatchNorm`` and with ``LayerNorm``, for every batch size in
   ``--batch-sizes`` (default 5, 10, 50, 200), plus the baseline (no norm) at batch 10, the
   same number of epochs each (so small batches take more steps, as in the course).
   Recorded: per-epoch training (train mode) and validation (eval mode) accuracy, and the
   final weights' accuracy on the training set in eval mode: batch norm trained on tiny
   batches uses noisy batch statistics, so its eval mode (running statistics) disagrees
   with its train mode; layer norm normalises each example by itself and does not care
   (batch norm depends on the batch size). Figure ``batchnorm_batch_size.png``.
3. **Manual vs autodiff backward**: the He-initialised batch-norm net trained twice from the
   same key, ``fit(..., impl="manual")`` (the hand-written backward passes, batch norm's
   included) and ``fit(..., impl="auto")`` (``jax.grad`` of the reference ops). Recorded:
   both per-epoch histories, the per-step loss of both runs (a :class:`StepLosses`
   callback of the same ``fit`` runs), the
   largest absolute/relative difference of the two loss curves and of the final weights,
   and the gradients of one batch at initialization (relative error). The gradients agree to
   float32 round-off (~1e-7); training amplifies that round-off (a deep net under Adam is
   chaotic), so the float32 curves drift apart while staying equally good; the same pair of
   runs in float64 (``results["impl"]["float64"]``) agrees to ~1e-14. Figure ``batchnorm_impl.png``. The hidden affine layers followed by a
   batch norm have no bias (``Affine(bias=False)``; BN's beta plays its role): BN's mean
   subtraction cancels such a bias exactly, so its true gradient is 0 and each backward
   returns only its own round-off; Adam divides by the root of its square, turning it into
   ±lr steps that differ between the two backward passes, and the comparison would measure
   that noise instead of the backward passes.

Data: a CIFAR-10 subset (``--n-train``, default 2,000 training images, 1,000 validation,
the full 10,000 test, per-channel normalised) when ``--data-dir`` or ``$JAXNET_CIFAR10_DIR``
is given, else the embedded 8x8 digits (1,257 training images). ``--quick``: a 6-layer net
(five hidden layers of 50), 3 scales (1e-4, 1e-2, 1), batch sizes (5, 50), 4 epochs (2 in
part 3) on at most 1,000 images (17 training runs).

Shapes: images x (N, H, W, C) float32, labels y (N,) int32; the net flattens to (N, H*W*C),
every hidden activation is (N, 100), the scores (N, 10).

Outputs in ``--out``: ``results.json`` (all numbers, per-run histories) and the three figures.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Optional, Sequence

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, figure, grid_legend, parse_args, print_table, save_figure, write_results,
)

NAME = "batchnorm"
DESCRIPTION = "Batch norm: init-scale sweep with/without BN, batch size BN vs LN, manual vs autodiff backward."
HIDDEN = (100,) * 6
QUICK_HIDDEN = (50,) * 5
NORMS = {"baseline": None, "batchnorm": "batchnorm", "layernorm": "layernorm"}
COLORS = {"baseline": "tab:gray", "batchnorm": "tab:blue", "layernorm": "tab:green",
          "manual": "tab:blue", "auto": "tab:orange"}


@dataclasses.dataclass(frozen=True)
class FixedStd:
    """Initializer ``std * N(0, 1)`` for every weight, whatever its fans (the course's
    ``weight_scale``). Frozen, so a model built with it stays hashable (a static jit argument)
    and two models with the same ``std`` compare equal."""

    std: float

    def __post_init__(self):
        if not (isinstance(self.std, (int, float)) and math.isfinite(self.std) and self.std > 0):
            raise ValueError(f"FixedStd: std must be a positive finite number, got {self.std!r}")

    def __call__(self, key, shape, fan_in=None, fan_out=None, *, dtype=None):
        from jaxnet.nn.init import small

        return small(key, shape, fan_in, fan_out, scale=float(self.std), dtype=dtype)


def build_net(hidden_dims: Sequence[int] = HIDDEN, norm: Optional[str] = None, *, w_init="he",
              head_init=None, num_classes: int = 10, impl: Optional[str] = None):
    """``{affine - [norm] - relu} x len(hidden_dims) - affine`` with the names of
    ``jaxnet.nn.fully_connected_net``. ``w_init`` for the hidden affine layers; ``head_init``
    for the classifier (None: the same as ``w_init``, as the course's ``weight_scale``).
    The hidden affine layers have no bias when a batch norm follows (its beta plays that role;
    see the module docstring, part 3). Input (N, ...) -> scores (N, num_classes)."""
    from jaxnet.nn import Affine, BatchNorm, Flatten, LayerNorm, ReLU, Sequential, with_impl

    norm_layers = {None: None, "batchnorm": BatchNorm, "layernorm": LayerNorm}
    if norm not in norm_layers:
        raise ValueError(f"build_net: norm must be None, 'batchnorm' or 'layernorm', got {norm!r}")
    head_init = w_init if head_init is None else head_init
    layers, names = [Flatten()], ["flatten"]
    for i, h in enumerate(hidden_dims, start=1):
        # no bias before a batch norm: its mean subtraction cancels the bias exactly
        layers.append(Affine(int(h), w_init=w_init, bias=norm != "batchnorm"))
        names.append(f"fc{i}")
        if norm is not None:
            layers.append(norm_layers[norm]())
            names.append(f"norm{i}")
        layers.append(ReLU())
        names.append(f"act{i}")
    layers.append(Affine(num_classes, w_init=head_init))
    names.append(f"fc{len(hidden_dims) + 1}")
    return with_impl(Sequential(tuple(layers), tuple(names)), impl)


def _extra(parser) -> None:
    parser.add_argument("--n-train", type=int, default=None,
                        help="CIFAR-10 training subset (default 2000; quick 1000)")
    parser.add_argument("--hidden", default=None,
                        help=f"hidden layer widths, comma-separated (default {','.join(map(str, HIDDEN))}; "
                             f"quick {','.join(map(str, QUICK_HIDDEN))})")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default 1e-3)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs of every run of parts 1 and 2 (default 10; quick 4)")
    parser.add_argument("--num-scales", type=int, default=None,
                        help="weight scales in logspace(-4, 0, n) (default 9; quick 3)")
    parser.add_argument("--scale-batch-size", type=int, default=50, help="batch size of part 1 (default 50)")
    parser.add_argument("--batch-sizes", default=None,
                        help="batch sizes of part 2, comma-separated (default 5,10,50,200; quick 5,50)")
    parser.add_argument("--impl-epochs", type=int, default=None,
                        help="epochs of part 3 (manual vs auto; default 5, quick 2)")
    parser.add_argument("--parts", default="scales,batch_size,impl",
                        help="which parts to run, comma-separated subset of %(default)s")


def _ints(text: str, what: str) -> tuple:
    try:
        vals = tuple(int(v) for v in str(text).split(",") if v.strip())
    except ValueError:
        raise SystemExit(f"experiments.{NAME}: {what} must be comma-separated integers, got {text!r}") from None
    if not vals or any(v < 1 for v in vals):
        raise SystemExit(f"experiments.{NAME}: {what} must be positive integers, got {text!r}")
    return vals


def _history(res) -> dict:
    return {k: [float(x) for x in res.history[k]] for k in ("epoch", "train_loss", "train_acc", "val_loss",
                                                         "val_acc")}


def initial_params(model, optimizer, ds, batch_size: int, seed: int):
    """The (params, state) ``fit(model, ds, optimizer=optimizer, batch_size=batch_size, key=seed)``
    starts from (``fit`` with 0 epochs returns its untrained TrainState)."""
    from jaxnet.train import fit

    res = fit(model, ds, optimizer=optimizer, epochs=0, batch_size=batch_size, key=seed, progress=False)
    return res.train_state.params, res.train_state.state


def train_mode_loss(model, params, state, x, y, seed: int = 0) -> float:
    """Softmax loss of ``model`` in train mode (batch statistics) on x (N, ...), y (N,): one batch."""
    import jax

    from jaxnet.functional import softmax_cross_entropy

    scores, _ = model.apply(params, state, x, train=True, key=jax.random.key(seed))
    return float(softmax_cross_entropy(scores, y))


# ---------------------------------------------------------------- part 1: init scales

def run_scales(ds, hidden, scales, *, epochs, batch_size, lr, seed) -> dict:
    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit

    out = {"scales": [float(s) for s in scales], "runs": {name: [] for name in ("baseline", "batchnorm")}}
    n0 = min(500, len(ds.y_train))
    for s in scales:
        for name in ("baseline", "batchnorm"):
            model = build_net(hidden, NORMS[name], w_init=FixedStd(float(s)))
            opt = make_optimizer("adam", lr)
            with Timer() as t:
                p0, s0 = initial_params(model, opt, ds, batch_size, seed)
                init_loss = train_mode_loss(model, p0, s0, ds.x_train[:n0], ds.y_train[:n0], seed)
                res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=batch_size, key=seed, progress=False)
            h = _history(res)
            r = {"std": float(s), "initial_loss": init_loss, "history": h,
                 "final_train_loss": h["train_loss"][-1], "final_train_acc": h["train_acc"][-1],
                 "best_train_acc": max(h["train_acc"]), "final_val_acc": h["val_acc"][-1],
                 "best_val_acc": float(res.best_val_acc), "time_s": t.elapsed}
            out["runs"][name].append(r)
            print(f"  std {s:8.2e} {name:>9}: initial loss {init_loss:10.4g}  final train loss "
                  f"{r['final_train_loss']:8.4g}  train acc {r['final_train_acc']:.3f}  "
                  f"best val acc {r['best_val_acc']:.3f}  ({t.elapsed:.1f} s)", flush=True)
    return out


# ---------------------------------------------------------------- part 2: batch size

def run_batch_size(ds, hidden, batch_sizes, *, epochs, lr, seed) -> dict:
    from jaxnet.optim import make_optimizer
    from jaxnet.train import evaluate, fit

    runs = []
    settings = [(name, bs) for name in ("batchnorm", "layernorm") for bs in batch_sizes]
    settings.append(("baseline", 10 if 10 <= len(ds.y_train) else min(batch_sizes)))
    for name, bs in settings:
        if bs > len(ds.y_train):
            raise SystemExit(f"experiments.{NAME}: batch size {bs} is larger than the training set "
                             f"({len(ds.y_train)} images)")
        model = build_net(hidden, NORMS[name], w_init="he", head_init="small")
        with Timer() as t:
            res = fit(model, ds, optimizer=make_optimizer("adam", lr), epochs=epochs, batch_size=bs, key=seed,
                      progress=False)
            ts = res.train_state
            _, eval_train_acc = evaluate(model, ts.params, ts.state, ds.x_train, ds.y_train, 500)
        h = _history(res)
        r = {"norm": name, "batch_size": bs, "history": h, "final_train_acc": h["train_acc"][-1],
             "final_train_loss": h["train_loss"][-1], "final_val_acc": h["val_acc"][-1],
             "best_val_acc": float(res.best_val_acc), "eval_mode_train_acc": float(eval_train_acc),
             "train_minus_eval_mode_acc": h["train_acc"][-1] - float(eval_train_acc),
             "steps": epochs * -(-len(ds.y_train) // bs), "time_s": t.elapsed}
        runs.append(r)
        print(f"  {name:>9} batch {bs:4d}: train acc {r['final_train_acc']:.3f} (train mode) / "
              f"{r['eval_mode_train_acc']:.3f} (eval mode)  val acc {r['final_val_acc']:.3f}  "
              f"({t.elapsed:.1f} s)", flush=True)
    return {"batch_sizes": list(batch_sizes), "runs": runs}


# ---------------------------------------------------------------- part 3: manual vs auto

class StepLosses:
    """``fit`` callback: every training step's loss and real-example count (left on the device
    until :meth:`fetch`)."""

    def __init__(self):
        self.metrics = []

    def on_step(self, info) -> None:
        m = info["metrics"]
        self.metrics.append((m["loss"], m["count"]))

    def fetch(self) -> tuple[np.ndarray, np.ndarray]:
        """``(losses (float64), counts)``, one entry per step."""
        import jax

        fetched = jax.device_get(self.metrics)
        return np.array([m[0] for m in fetched], np.float64), np.array([m[1] for m in fetched])


def _max_diffs(a, b) -> tuple[float, float]:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    d = np.abs(a - b)
    return float(d.max()), float((d / np.maximum(np.abs(b), 1e-12)).max())


def init_gradients(model_of_impl, ds, batch_size: int, seed: int) -> dict:
    """Manual vs autodiff gradients of one training batch at initialization (train mode):
    the largest absolute difference, the largest |gradient|, the largest per-leaf relative
    error ``||g_m - g_a|| / ||g_a||`` and the global one over all leaves.
    ``model_of_impl(impl) -> model``."""
    import jax

    from jaxnet.functional import softmax_cross_entropy

    x, y = ds.x_train[:batch_size], ds.y_train[:batch_size]
    grads = {}
    for impl in ("manual", "auto"):
        model = model_of_impl(impl)
        params, state = model.init(jax.random.key(seed), x.shape)

        def loss(p):
            return softmax_cross_entropy(model.apply(p, state, x, train=True)[0], y)

        grads[impl] = jax.tree_util.tree_leaves(jax.grad(loss)(params))
    pairs = [(np.asarray(m, np.float64), np.asarray(a, np.float64)) for m, a in zip(grads["manual"], grads["auto"])]
    abs_d = max(float(np.abs(m - a).max()) for m, a in pairs)
    g_max = max(float(np.abs(a).max()) for _, a in pairs)
    rel = max(float(np.linalg.norm(m - a) / max(np.linalg.norm(a), 1e-30)) for m, a in pairs)
    glob = math.sqrt(sum(float(np.sum((m - a) ** 2)) for m, a in pairs)) / max(
        math.sqrt(sum(float(np.sum(a ** 2)) for _, a in pairs)), 1e-30)
    return {"max_abs_diff": abs_d, "max_abs_grad": g_max, "max_rel_error_per_leaf": rel,
            "global_rel_error": glob, "batch_size": int(len(y))}


def run_impl(ds, hidden, *, epochs, batch_size, lr, seed) -> dict:
    import jax

    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit

    def model_of(impl):
        return build_net(hidden, "batchnorm", w_init="he", head_init="small", impl=impl)

    out = {"batch_size": batch_size, "epochs": epochs, "fit": {}, "steps": {}}
    params = {}
    for impl in ("manual", "auto"):
        model = model_of(impl)
        rec = StepLosses()
        with Timer() as t:
            res = fit(model, ds, optimizer=make_optimizer("adam", lr), epochs=epochs, batch_size=batch_size,
                      key=seed, impl=impl, progress=False, callbacks=[rec])
        losses, counts = rec.fetch()
        params[impl] = jax.device_get(res.train_state.params)
        h = _history(res)
        spe = len(losses) // epochs
        epoch_means = [float(np.dot(losses[e * spe:(e + 1) * spe], counts[e * spe:(e + 1) * spe])
                             / counts[e * spe:(e + 1) * spe].sum()) for e in range(epochs)]
        out["fit"][impl] = {"history": h, "best_val_acc": float(res.best_val_acc), "time_s": t.elapsed}
        out["steps"][impl] = {"loss": losses.tolist(), "epoch_means": epoch_means}
        print(f"  impl {impl:>6}: final train loss {h['train_loss'][-1]:.6f}  val acc {h['val_acc'][-1]:.4f}  "
              f"({t.elapsed:.1f} s)", flush=True)
    m, a = out["fit"]["manual"]["history"], out["fit"]["auto"]["history"]
    sm, sa = out["steps"]["manual"]["loss"], out["steps"]["auto"]["loss"]
    leaves_m = jax.tree_util.tree_leaves(params["manual"])
    leaves_a = jax.tree_util.tree_leaves(params["auto"])
    out["diff"] = {
        "train_loss_epoch": dict(zip(("max_abs", "max_rel"), _max_diffs(m["train_loss"], a["train_loss"]))),
        "val_loss_epoch": dict(zip(("max_abs", "max_rel"), _max_diffs(m["val_loss"], a["val_loss"]))),
        "val_acc_epoch_max_abs": _max_diffs(m["val_acc"], a["val_acc"])[0],
        "step_loss": dict(zip(("max_abs", "max_rel"), _max_diffs(sm, sa))),
        "final_params_max_abs": max(float(np.abs(np.asarray(x) - np.asarray(y)).max())
                                    for x, y in zip(leaves_m, leaves_a)),
        "final_params_max_rel": max(float(np.linalg.norm(np.asarray(x) - np.asarray(y))
                                          / max(np.linalg.norm(np.asarray(y)), 1e-30))
                                    for x, y in zip(leaves_m, leaves_a)),
        "final_params_rel_by_leaf": {
            jax.tree_util.keystr(path): float(np.linalg.norm(np.asarray(x) - np.asarray(y))
                                              / max(np.linalg.norm(np.asarray(y)), 1e-30))
            for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(params["manual"])[0], leaves_a)},
        "init_gradients": init_gradients(model_of, ds, batch_size, seed),
        "float32_eps": float(np.finfo(np.float32).eps),
    }
    d = out["diff"]
    print(f"  manual vs auto: step loss max |diff| {d['step_loss']['max_abs']:.3g} "
          f"(rel {d['step_loss']['max_rel']:.3g}), "
          f"init gradient rel error {d['init_gradients']['global_rel_error']:.3g} (global), "
          f"{d['init_gradients']['max_rel_error_per_leaf']:.3g} (worst leaf), "
          f"final params max |diff| {d['final_params_max_abs']:.3g}", flush=True)
    return out


def run_impl_float64(ds, hidden, *, epochs, batch_size, lr, seed) -> dict:
    """:func:`run_impl` in float64 (``jax.enable_x64``, float64 images and params): its ``diff``.

    In float32 the two backward passes differ by ~1e-7 relative per gradient, and 200 Adam
    steps of a deep net amplify that into visibly different (equally good) trajectories;
    in float64 the same two runs stay together to ~1e-14, which shows the drift is round-off
    amplified by training, not a difference between the backward passes."""
    import jax

    with jax.enable_x64(True):
        d = ds.replace(x_train=ds.x_train.astype(np.float64), x_val=ds.x_val.astype(np.float64),
                       x_test=ds.x_test.astype(np.float64))
        out = run_impl(d, hidden, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    return {"diff": out["diff"], "final_train_loss": {k: v["history"]["train_loss"][-1]
                                                      for k, v in out["fit"].items()}}


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def plot_scales(part: dict, path: str, title: str) -> str:
    fig = figure((12, 8.5))
    axes = fig.subplots(2, 2).ravel()
    panels = [("final_train_acc", "final training accuracy (train mode)", False),
              ("best_val_acc", "best validation accuracy", False),
              ("initial_loss", "initial loss (train mode)", True),
              ("final_train_loss", "final training loss", True)]
    for ax, (key, label, logy) in zip(axes, panels):
        for name, runs in part["runs"].items():
            s = [r["std"] for r in runs]
            v = [r[key] if r[key] is not None and math.isfinite(r[key]) else np.nan for r in runs]
            ax.plot(s, v, marker="o", color=COLORS[name], label=name)
        if key == "initial_loss":
            ax.axhline(math.log(10), color="k", ls=":", lw=1, label="ln 10")
        ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        ax.set(xlabel="weight init std (every layer)", ylabel=label, title=f"{label} vs weight scale")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def plot_batch_size(part: dict, path: str, title: str) -> str:
    fig = figure((13, 8.5))
    (ax_bn, ax_ln), (ax_bnv, ax_lnv) = fig.subplots(2, 2)
    sizes = part["batch_sizes"]
    cmap = {bs: c for bs, c in zip(sizes, ("tab:red", "tab:orange", "tab:blue", "tab:purple", "tab:brown",
                                            "tab:pink", "tab:olive", "tab:cyan"))}
    base = [r for r in part["runs"] if r["norm"] == "baseline"]
    for norm, ax, axv in (("batchnorm", ax_bn, ax_bnv), ("layernorm", ax_ln, ax_lnv)):
        for r in [r for r in part["runs"] if r["norm"] == norm] + base:
            h = r["history"]
            style = dict(color=cmap.get(r["batch_size"], "k"), marker="o", markersize=3)
            if r["norm"] == "baseline":
                style = dict(color="tab:gray", ls="--", marker="x", markersize=4)
            label = f"{r['norm']} batch {r['batch_size']}"
            ax.plot(h["epoch"], h["train_acc"], label=label, **style)
            axv.plot(h["epoch"], h["val_acc"], label=label, **style)
        ax.set(xlabel="epoch", ylabel="training accuracy (train mode)", title=f"{norm}: training accuracy")
        axv.set(xlabel="epoch", ylabel="validation accuracy (eval mode)", title=f"{norm}: validation accuracy")
        for a in (ax, axv):
            a.grid(True, alpha=0.3)
            a.legend(fontsize=8)
    return save_figure(fig, path, title)


def plot_impl(part: dict, path: str, title: str) -> str:
    fig = figure((13, 4.8))
    ax_loss, ax_diff = fig.subplots(1, 2)
    sm = np.asarray(part["steps"]["manual"]["loss"])
    sa = np.asarray(part["steps"]["auto"]["loss"])
    t = np.arange(1, len(sm) + 1)
    ax_loss.plot(t, sm, color=COLORS["manual"], lw=2.5, alpha=0.6, label="impl='manual'")
    ax_loss.plot(t, sa, color=COLORS["auto"], lw=1, ls="--", label="impl='auto' (jax.grad)")
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", title="per-step training loss")
    ax_loss.set_yscale("log")
    d = np.abs(sm - sa)
    ax_diff.semilogy(t, np.where(d > 0, d, np.nan), ".", color="k", markersize=2, label="|manual - auto|")
    ax_diff.semilogy(t, np.finfo(np.float32).eps * np.abs(sa), color="tab:red", lw=1,
                     label="float32 eps x loss")
    ax_diff.set(xlabel="step", ylabel="absolute difference",
                title=f"max |diff| {d.max():.2g} (exact zeros not drawn)")
    grid_legend((ax_loss, ax_diff), which="both")
    return save_figure(fig, path, title)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    q = args.quick
    hidden = _ints(args.hidden, "--hidden") if args.hidden else (QUICK_HIDDEN if q else HIDDEN)
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    bad = sorted(set(parts) - {"scales", "batch_size", "impl"})
    if bad or not parts:
        raise SystemExit(f"experiments.{NAME}: unknown part(s) {bad or parts}; choose from scales, batch_size, impl")
    n_train = args.n_train or (1000 if q else 2000)
    epochs = args.epochs or (4 if q else 10)
    num_scales = args.num_scales or (3 if q else 9)
    impl_epochs = args.impl_epochs or (2 if q else 5)
    batch_sizes = _ints(args.batch_sizes or ("5,50" if q else "5,10,50,200"), "--batch-sizes")
    for name, v in (("--n-train", n_train), ("--epochs", epochs), ("--num-scales", num_scales),
                    ("--impl-epochs", impl_epochs), ("--scale-batch-size", args.scale_batch_size)):
        if v < 1:
            raise SystemExit(f"experiments.{NAME}: {name} must be >= 1, got {v}")
    if not (args.lr > 0 and math.isfinite(args.lr)):
        raise SystemExit(f"experiments.{NAME}: --lr must be a positive number, got {args.lr}")

    with Timer() as t_load:
        ds, source, desc = cifar_or_digits(args, n_train)
    print(f"{desc}  ({t_load.elapsed:.1f} s)", flush=True)
    for name, bs in (("--scale-batch-size", args.scale_batch_size),
                     *(("--batch-sizes", b) for b in batch_sizes)):
        if bs > len(ds.y_train):
            raise SystemExit(f"experiments.{NAME}: {name} {bs} is larger than the training set "
                             f"({len(ds.y_train)} images)")
    net = f"{len(hidden) + 1}-layer fc net {'-'.join(map(str, hidden))}"
    os.makedirs(args.out, exist_ok=True)
    results = {
        "dataset": desc, "data_source": source,
        "model": f"{{affine - [norm] - relu}} x {len(hidden)} - affine, hidden {list(hidden)}",
        "protocol": {"n_train": int(len(ds.y_train)), "n_val": int(len(ds.y_val)), "n_test": int(len(ds.y_test)),
                     "optimizer": "adam", "lr": args.lr, "epochs": epochs, "seed": args.seed,
                     "scale_batch_size": args.scale_batch_size, "num_scales": num_scales,
                     "batch_sizes": list(batch_sizes), "impl_epochs": impl_epochs},
        "figures": {}, "times_s": {"load": t_load.elapsed},
    }

    if "scales" in parts:
        print(f"\n[1] weight init scale, baseline vs batch norm ({net}, batch {args.scale_batch_size}, "
              f"{epochs} epochs)", flush=True)
        with Timer() as t:
            part = run_scales(ds, hidden, np.logspace(-4, 0, num_scales), epochs=epochs,
                              batch_size=args.scale_batch_size, lr=args.lr, seed=args.seed)
        results["scales"] = part
        results["times_s"]["scales"] = t.elapsed
        results["figures"]["scales"] = os.path.basename(plot_scales(
            part, os.path.join(args.out, "batchnorm_scales.png"),
            f"{net} on {source} ({len(ds.y_train)} images), Adam {args.lr:g}, batch {args.scale_batch_size}, "
            f"{epochs} epochs: every layer initialised std * N(0, 1)"))
        rows = [[b["std"], b["initial_loss"], n["initial_loss"], b["final_train_acc"], n["final_train_acc"],
                 b["best_val_acc"], n["best_val_acc"]]
                for b, n in zip(part["runs"]["baseline"], part["runs"]["batchnorm"])]
        print_table(["std", "init loss", "init loss BN", "train acc", "train acc BN", "val acc", "val acc BN"],
                    rows, title="\n[1] baseline vs batch norm")

    if "batch_size" in parts:
        print(f"\n[2] batch size, batch norm vs layer norm ({net}, He init, {epochs} epochs)", flush=True)
        with Timer() as t:
            part = run_batch_size(ds, hidden, batch_sizes, epochs=epochs, lr=args.lr, seed=args.seed)
        results["batch_size"] = part
        results["times_s"]["batch_size"] = t.elapsed
        results["figures"]["batch_size"] = os.path.basename(plot_batch_size(
            part, os.path.join(args.out, "batchnorm_batch_size.png"),
            f"{net} on {source} ({len(ds.y_train)} images), Adam {args.lr:g}, {epochs} epochs per run"))
        print_table(["norm", "batch", "steps", "train acc (train mode)", "train acc (eval mode)", "final val acc"],
                    [[r["norm"], r["batch_size"], r["steps"], r["final_train_acc"], r["eval_mode_train_acc"],
                      r["final_val_acc"]] for r in part["runs"]], title="\n[2] batch size")

    if "impl" in parts:
        bs = min(args.scale_batch_size, len(ds.y_train))
        print(f"\n[3] manual vs autodiff backward ({net} with batch norm, batch {bs}, {impl_epochs} epochs)",
              flush=True)
        with Timer() as t:
            part = run_impl(ds, hidden, epochs=impl_epochs, batch_size=bs, lr=args.lr, seed=args.seed)
            print("  the same in float64 (jax.enable_x64): round-off 1e-16 instead of 1e-7", flush=True)
            part["float64"] = run_impl_float64(ds, hidden, epochs=impl_epochs, batch_size=bs, lr=args.lr,
                                               seed=args.seed)
        results["impl"] = part
        results["times_s"]["impl"] = t.elapsed
        results["figures"]["impl"] = os.path.basename(plot_impl(
            part, os.path.join(args.out, "batchnorm_impl.png"),
            f"{net} + batch norm on {source}: impl='manual' vs impl='auto', same key, batch {bs}"))

    path = write_results(args.out, results, args)
    print(f"\nwrote {path}, " + ", ".join(results["figures"].values()))
    return results


if __name__ == "__main__":
    main()
