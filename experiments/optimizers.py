"""The update rules compared: SGD, momentum, Nesterov, AdaGrad, RMSProp and Adam.

    python -m experiments.optimizers [--data-dir /path/to/cifar10-jpeg.tar.gz] [--quick] [--out DIR]

The course's rules from :mod:`jaxnet.optim.rules` (optax ``GradientTransformation``s),
three views of them:

(a) **the same net on the same data.** A small fully connected net
    (``fully_connected_net(hidden_dims=(100, 100))``, He init, ReLU) trained from the same
    initial weights on the same batch order by every rule (``jaxnet.train.fit`` with the same
    key; a :class:`StepLosses` callback records the per-step loss), each at its usual learning rate
    (``NET_LR``: 1e-2 for SGD, momentum, Nesterov and AdaGrad; 1e-3 for RMSProp and Adam),
    per-step training loss and per-epoch validation accuracy recorded, plus Adam without bias
    correction. Data: CIFAR-10 (10,000 training images, 1,000 validation, 5 epochs, batches
    of 100, per-channel normalisation) when ``--data-dir`` / ``$JAXNET_CIFAR10_DIR`` is set,
    else scikit-learn's embedded 8x8 digits (``results.json["net"]["data"]`` says which).
    Figure ``net_loss.png``.
(b) **an ill-conditioned 2-D quadratic** ``f(x, y) = 0.5 * (0.1 x^2 + 2 y^2)`` (curvatures
    0.1 and 2, condition number 20), every rule from the same start (-4, 1) at the *same*
    learning rate (``--quad-lr``, 0.2) for 100 steps: the trajectories drawn over the
    contours (the lecture's picture), the loss per step, the final loss and the steps to
    reach f < 1e-3. The same on the saddle ``f = 0.5 * (x^2 - y^2)`` from (-1, 1e-3)
    (lr 0.1, 50 steps): how fast each rule leaves it. Figure ``quadratic.png``.
    (The learning rates are comparable across rules only loosely: SGD's step is
    lr * gradient, Adam's and RMSProp's about lr per coordinate whatever the gradient's
    size. On this shallow bowl, gradients are below 1 along x, so at equal lr the
    adaptive rules move further, and momentum builds up about lr / (1 - mu).)
(c) **Adam's first step with and without bias correction.** With it, the first update is
    ``lr * g / (|g| + eps)`` ~= lr per coordinate; without it ``m = (1-b1) g``,
    ``v = (1-b2) g^2``, so the step is ``lr (1-b1) |g| / (sqrt(1-b2) |g| + eps)`` ~=
    ``lr (1-b1) / sqrt(1-b2)`` = 3.16 lr for the defaults b1 = 0.9, b2 = 0.999: measured
    on the quadratic (both coordinates) and on the net (median over the weights with
    |g| > 1e-6), next to the analytic values.

``--quick``: 2 epochs on 2,000 CIFAR images, or 5 epochs on the digits; the 2-D problems
are the same. ``--smoke`` (the default test suite's run): the net part with Adam and
Adam without bias correction only (``--net-rules``), 1 epoch on 300 images; (b) and (c)
unchanged. Everything goes to ``--out``
(``results.json`` + the PNGs); a short table is printed.
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments._common import (
    Timer, cifar_or_digits, figure, grid_legend, parse_args, print_table, save_figure, sized, write_results,
)

NAME = "optimizers"
DESCRIPTION = "SGD, momentum, Nesterov, AdaGrad, RMSProp and Adam: a net, a quadratic, Adam's first step."

RULES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")
NET_LR = {"sgd": 1e-2, "momentum": 1e-2, "nesterov": 1e-2, "adagrad": 1e-2, "rmsprop": 1e-3, "adam": 1e-3}
ADAM_NO_BC = "adam_no_bias_correction"
COLORS = {"sgd": "tab:gray", "momentum": "tab:blue", "nesterov": "tab:cyan", "adagrad": "tab:green",
          "rmsprop": "tab:orange", "adam": "tab:red", ADAM_NO_BC: "tab:purple"}

QUAD_CURVATURE = (0.1, 2.0)  # f = 0.5 * (a x^2 + b y^2)
QUAD_START = (-4.0, 1.0)
QUAD_STEPS = 100
QUAD_TARGET = 1e-3
SADDLE_START = (-1.0, 1e-3)
SADDLE_LR = 0.1
SADDLE_STEPS = 50
SMOKE_NET_RULES = ("adam", ADAM_NO_BC)   # the two the net part always trains (one train-step compile each)


def _extra(parser) -> None:
    parser.add_argument("--n-train", type=int, default=None,
                        help="training subsample (default 10000; quick 2000; smoke 300)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs for the net (default 5 on CIFAR-10, 20 on digits; quick 2 / 5; smoke 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 100 CIFAR, 64 digits)")
    parser.add_argument("--quad-lr", type=float, default=0.2, help="common lr on the quadratic (default 0.2)")
    parser.add_argument("--net-rules", default=None,
                        help=f"comma-separated rules trained on the net (default all: {','.join(RULES)} and "
                             f"{ADAM_NO_BC}; smoke {','.join(SMOKE_NET_RULES)}); Adam and {ADAM_NO_BC} "
                             f"are always included (part c)")


def make_rule(name: str, lr: float):
    """The course's rule ``name`` (or Adam without bias correction) at learning rate ``lr``."""
    from jaxnet.optim import rules

    if name == ADAM_NO_BC:
        return rules.adam(lr, bias_correction=False)
    return getattr(rules, name)(lr)


# ---------------------------------------------------------------- (b) 2-D problems

def quadratic(p):
    a, b = QUAD_CURVATURE
    return 0.5 * (a * p[0] ** 2 + b * p[1] ** 2)


def saddle(p):
    return 0.5 * (p[0] ** 2 - p[1] ** 2)


def run_2d(f, opt, start, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``steps`` updates of ``opt`` on ``f`` from ``start`` in one ``lax.scan``:
    the path (steps + 1, 2) including the start, and f along it (steps + 1,)."""
    import jax
    import jax.numpy as jnp
    import optax

    p0 = jnp.asarray(start, jnp.float32)

    def step(carry, _):
        p, s = carry
        u, s = opt.update(jax.grad(f)(p), s, p)
        p = optax.apply_updates(p, u)
        return (p, s), p

    @jax.jit
    def go(p0):
        _, ps = jax.lax.scan(step, (p0, opt.init(p0)), None, length=steps)
        path = jnp.concatenate([p0[None], ps])
        return path, jax.vmap(f)(path)

    path, values = go(p0)
    return np.asarray(path, np.float64), np.asarray(values, np.float64)


def steps_to(values: np.ndarray, target: float):
    """First step (0 = the start) with f < target, None if never."""
    hit = np.flatnonzero(values < target)
    return int(hit[0]) if hit.size else None


def compare_2d(lr: float, *, rules=RULES) -> dict:
    """Every rule at the same lr on the quadratic and the saddle."""
    quad, sad = {}, {}
    for name in rules:
        path, values = run_2d(quadratic, make_rule(name, lr), QUAD_START, QUAD_STEPS)
        quad[name] = {"final_loss": float(values[-1]), "steps_to_target": steps_to(values, QUAD_TARGET),
                      "path": path, "loss": values}
        path, values = run_2d(saddle, make_rule(name, SADDLE_LR), SADDLE_START, SADDLE_STEPS)
        sad[name] = {"final_loss": float(values[-1]), "final_abs_y": float(abs(path[-1, 1])),
                     "path": path, "loss": values}
    return {"quadratic": quad, "saddle": sad}


# ---------------------------------------------------------------- (c) Adam's first step

def adam_first_step_analytic(g, lr: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> dict:
    """|first update| per coordinate with and without bias correction (m0 = v0 = 0)."""
    g = np.abs(np.asarray(g, np.float64))
    return {"bias_correction": lr * g / (g + eps),
            "no_bias_correction": lr * (1 - b1) * g / (math.sqrt(1 - b2) * g + eps)}


def adam_first_step_quadratic(lr: float) -> dict:
    """Measured vs analytic first Adam step on the quadratic from QUAD_START."""
    import jax
    import jax.numpy as jnp

    g = np.asarray(jax.grad(quadratic)(jnp.asarray(QUAD_START, jnp.float32)), np.float64)
    measured = {}
    for key, name in (("bias_correction", "adam"), ("no_bias_correction", ADAM_NO_BC)):
        path, _ = run_2d(quadratic, make_rule(name, lr), QUAD_START, 1)
        measured[key] = np.abs(path[1] - path[0])
    analytic = adam_first_step_analytic(g, lr)
    return {
        "lr": lr, "gradient": g,
        "measured": measured, "analytic": analytic,
        "measured_over_lr": {k: v / lr for k, v in measured.items()},
        "ratio_no_bc_over_bc": measured["no_bias_correction"] / measured["bias_correction"],
        "analytic_ratio_limit": (1 - 0.9) / math.sqrt(1 - 0.999),
    }


# ---------------------------------------------------------------- (a) the net

def start_state(model, ds, batch_size: int, seed: int) -> tuple:
    """The (params, state) ``fit(model, ds, batch_size=batch_size, key=seed)`` starts from, as
    host arrays (``fit`` with 0 epochs returns its untrained TrainState; the initial weights
    do not depend on the optimizer)."""
    import jax

    from jaxnet.optim import rules
    from jaxnet.train import fit

    res = fit(model, ds, optimizer=rules.sgd(1.0), epochs=0, batch_size=batch_size, key=seed, progress=False)
    return jax.device_get((res.train_state.params, res.train_state.state))


def first_batch(ds, batch_size: int, seed: int):
    """The first training batch of ``fit(..., batch_size=batch_size, key=seed)``: the key splits
    into the init key and the data-order key, epoch e draws its order from ``fold_in(data key, e)``."""
    import jax

    from jaxnet.train import batches
    from jaxnet.train.state import as_key

    data_key = jax.random.split(as_key(seed))[1]
    return next(batches(ds.x_train, ds.y_train, batch_size, key=jax.random.fold_in(data_key, 0)))


class StepLosses:
    """``fit`` callback: every step's loss (left on the device until the end) and the first
    update, ``params after step 1 - params0`` (host arrays)."""

    def __init__(self, params0):
        self.params0, self.losses, self.first_update = params0, [], None

    def on_step(self, info) -> None:
        import jax

        self.losses.append(info["metrics"]["loss"])
        if self.first_update is None:
            self.first_update = jax.tree.map(lambda a, b: np.asarray(a) - b,
                                             jax.device_get(info["train_state"].params), self.params0)


def train_curves(model, ds, opt, *, epochs: int, batch_size: int, seed: int, params0, state0=None) -> dict:
    """Per-step training loss and per-epoch validation accuracy of ``opt`` on ``model`` with
    ``fit`` (key ``seed``: the same initial weights ``params0`` and the same batch order for
    every optimizer). Also the first update. With ``state0`` (the model state ``params0`` comes
    with), fit starts from ``(params0, state0)`` as given: the weights it would draw, without
    compiling an init program per optimizer."""
    import jax

    from jaxnet.train import fit

    rec = StepLosses(params0)
    res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=batch_size, key=seed, progress=False,
              callbacks=[rec], init_params=None if state0 is None else (params0, state0))
    val_acc = [float(a) for a in res.history["val_acc"]]
    losses = np.asarray(jax.device_get(rec.losses), np.float64)
    per_epoch = losses.reshape(epochs, -1).mean(axis=1)
    return {"step_loss": losses, "epoch_train_loss": per_epoch, "val_acc": val_acc,
            "final_train_loss": float(per_epoch[-1]), "final_val_acc": val_acc[-1],
            "first_update": rec.first_update}


def net_first_step(model, ds, batch_size: int, seed: int, lr: float, updates: dict, start: tuple) -> dict:
    """Adam's first update on the net: median |update| / lr over weights with |g| > 1e-6; ``g``
    the gradient at ``start`` = (params, state) on the first batch of the runs."""
    import jax

    from jaxnet.train.step import default_loss

    params, state = start
    xb, yb, _ = first_batch(ds, batch_size, seed)

    def loss(params):  # the net has no dropout: the key does not matter
        logits, _ = model.apply(params, state, xb, train=True, key=jax.random.key(seed))
        return default_loss(logits, yb)

    grads = jax.device_get(jax.jit(jax.grad(loss))(params))  # one compiled program, not op by op
    g = np.concatenate([np.abs(np.ravel(a)) for a in jax.tree.leaves(grads)])
    sel = g > 1e-6
    out = {"lr": lr, "n_weights": int(g.size), "n_used": int(sel.sum())}
    for key, name in (("bias_correction", "adam"), ("no_bias_correction", ADAM_NO_BC)):
        u = np.concatenate([np.abs(np.ravel(a)) for a in jax.tree.leaves(updates[name])])
        out[f"{key}_median_over_lr"] = float(np.median(u[sel]) / lr)
        out[f"{key}_max_over_lr"] = float(np.max(u) / lr)
    analytic = adam_first_step_analytic(g[sel], lr)
    out["analytic_bias_correction_median_over_lr"] = float(np.median(analytic["bias_correction"]) / lr)
    out["analytic_no_bias_correction_median_over_lr"] = float(np.median(analytic["no_bias_correction"]) / lr)
    out["ratio_no_bc_over_bc_median"] = out["no_bias_correction_median_over_lr"] / out["bias_correction_median_over_lr"]
    return out


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def _smooth(y: np.ndarray, k: int) -> np.ndarray:
    if k <= 1 or len(y) < k:
        return y
    c = np.cumsum(np.insert(y, 0, 0.0))
    return (c[k:] - c[:-k]) / k


def plot_net(curves: dict, lrs: dict, steps_per_epoch: int, path: str, title: str) -> str:
    """Per-step training loss (moving average, raw faint) and validation accuracy per epoch."""
    fig = figure((13, 4.8))
    ax_loss, ax_acc = fig.subplots(1, 2)
    k = max(1, steps_per_epoch // 5)
    for name, c in curves.items():
        y = c["step_loss"]
        style = "--" if name == ADAM_NO_BC else "-"
        label = f"{name} (lr {lrs[name]:g})"
        ax_loss.plot(np.arange(1, len(y) + 1), y, color=COLORS[name], alpha=0.15, lw=0.7)
        ax_loss.plot(np.arange(k, len(y) + 1), _smooth(y, k), color=COLORS[name], ls=style, lw=1.5, label=label)
        ax_acc.plot(np.arange(1, len(c["val_acc"]) + 1), c["val_acc"], color=COLORS[name], ls=style,
                    marker="o", markersize=3, label=label)
    ax_loss.set(xlabel="step", ylabel="training loss (batch)", title=f"training loss (moving average over {k} steps)")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy", title="validation accuracy")
    grid_legend((ax_loss, ax_acc))
    return save_figure(fig, path, title)


def plot_2d(cmp: dict, lr: float, path: str) -> str:
    """Trajectories over the contours of the quadratic and the saddle, and f per step."""
    fig = figure((18, 5.2))
    ax_q, ax_f, ax_s = fig.subplots(1, 3)
    a, b = QUAD_CURVATURE
    xs, ys = np.linspace(-4.5, 4.5, 300), np.linspace(-1.6, 1.6, 200)
    X, Y = np.meshgrid(xs, ys)
    ax_q.contour(X, Y, 0.5 * (a * X ** 2 + b * Y ** 2), levels=np.geomspace(1e-3, 4, 14), colors="0.75",
                 linewidths=0.7)
    for name, r in cmp["quadratic"].items():
        p = r["path"]
        ax_q.plot(p[:, 0], p[:, 1], color=COLORS[name], marker="o", markersize=2, lw=1, label=name)
        ax_f.semilogy(np.maximum(r["loss"], 1e-16), color=COLORS[name], label=name)
    ax_q.plot(*QUAD_START, "k*", markersize=10)
    ax_q.plot(0, 0, "k+", markersize=10)
    ax_q.set(xlim=(xs[0], xs[-1]), ylim=(ys[0], ys[-1]), xlabel="x", ylabel="y",
             title=f"f = 0.5 (0.1 x² + 2 y²), condition 20: lr {lr:g}, {QUAD_STEPS} steps")
    ax_f.axhline(QUAD_TARGET, color="k", ls=":", lw=1)
    ax_f.set(xlabel="step", ylabel="f (log)", ylim=(1e-12, None), title="loss on the quadratic (same lr)")
    S = np.linspace(-1.5, 1.5, 200)
    SX, SY = np.meshgrid(S, S)
    ax_s.contour(SX, SY, 0.5 * (SX ** 2 - SY ** 2), levels=np.linspace(-1, 1, 15), colors="0.75", linewidths=0.7)
    for name, r in cmp["saddle"].items():
        p = r["path"]
        ax_s.plot(p[:, 0], p[:, 1], color=COLORS[name], marker="o", markersize=2, lw=1, label=name)
    ax_s.plot(*SADDLE_START, "k*", markersize=10)
    ax_s.set(xlim=(-1.5, 1.5), ylim=(-1.5, 1.5), xlabel="x", ylabel="y",
             title=f"saddle f = 0.5 (x² - y²): lr {SADDLE_LR:g}, {SADDLE_STEPS} steps")
    grid_legend((ax_q, ax_f, ax_s))
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    all_rules = (*RULES, ADAM_NO_BC)
    if args.net_rules is None:
        net_rules = sized(args, all_rules, all_rules, SMOKE_NET_RULES)
    else:
        asked = {r.strip() for r in args.net_rules.split(",") if r.strip()}
        unknown = sorted(asked - set(all_rules))
        if unknown:
            raise SystemExit(f"experiments.{NAME}: --net-rules: unknown rule(s) {', '.join(unknown)} "
                             f"(choose from {', '.join(all_rules)})")
        net_rules = tuple(r for r in all_rules if r in asked | {"adam", ADAM_NO_BC})

    from jaxnet.nn import fully_connected_net

    # ---- (b) and (c) on the 2-D problems (fast)
    with Timer() as t_2d:
        cmp = compare_2d(args.quad_lr)
        first_quad = adam_first_step_quadratic(args.quad_lr)

    # ---- (a) the net
    with Timer() as t_load:
        ds, data_name, _ = cifar_or_digits(args, args.n_train or sized(args, 10000, 2000, 300))
    cifar = data_name == "cifar10"
    epochs = args.epochs or sized(args, 5 if cifar else 20, 2 if cifar else 5, 1)
    bs = args.batch_size or (100 if cifar else 64)
    print(f"data: {data_name} {ds}  ({t_load.elapsed:.1f} s)", flush=True)
    model = fully_connected_net(hidden_dims=(100, 100), num_classes=10)
    lrs = dict(NET_LR, **{ADAM_NO_BC: NET_LR["adam"]})
    curves, times = {}, {}
    start = start_state(model, ds, bs, args.seed)
    for name in net_rules:
        with Timer() as t:
            curves[name] = train_curves(model, ds, make_rule(name, lrs[name]), epochs=epochs, batch_size=bs,
                                        seed=args.seed, params0=start[0], state0=start[1])
        times[name] = t.elapsed
        print(f"  {name:>24}: train loss {curves[name]['final_train_loss']:.4f}  "
              f"val acc {curves[name]['final_val_acc']:.3f}  ({t.elapsed:.1f} s)", flush=True)
    first_net = net_first_step(model, ds, bs, args.seed, lrs["adam"],
                               {k: curves[k]["first_update"] for k in ("adam", ADAM_NO_BC)}, start)

    os.makedirs(args.out, exist_ok=True)
    steps = len(curves["adam"]["step_loss"])
    steps_per_epoch = steps // epochs
    figures = {
        "net_loss": plot_net(curves, lrs, steps_per_epoch, os.path.join(args.out, "net_loss.png"),
                             f"fully connected net (100, 100) on {data_name}: {len(ds.y_train)} training images, "
                             f"{epochs} epochs, batch {bs}"),
        "quadratic": plot_2d(cmp, args.quad_lr, os.path.join(args.out, "quadratic.png")),
    }
    results = {
        "net": {
            "data": data_name, "model": "fully_connected_net(hidden_dims=(100, 100)), He init, ReLU",
            "n_train": int(len(ds.y_train)), "n_val": int(len(ds.y_val)), "epochs": epochs, "batch_size": bs,
            "steps": int(steps), "learning_rates": {name: lrs[name] for name in net_rules},
            "optimizers": {name: {k: v for k, v in c.items() if k != "first_update"} | {"time_s": times[name]}
                           for name, c in curves.items()},
        },
        "quadratic": {
            "f": "0.5 * (0.1 x^2 + 2 y^2)", "condition_number": QUAD_CURVATURE[1] / QUAD_CURVATURE[0],
            "start": QUAD_START, "lr": args.quad_lr, "steps": QUAD_STEPS, "target": QUAD_TARGET,
            "optimizers": cmp["quadratic"],
        },
        "saddle": {"f": "0.5 * (x^2 - y^2)", "start": SADDLE_START, "lr": SADDLE_LR, "steps": SADDLE_STEPS,
                   "optimizers": cmp["saddle"]},
        "adam_first_step": {"quadratic": first_quad, "net": first_net,
                            "analytic_limit_over_lr": {"bias_correction": 1.0,
                                                       "no_bias_correction": (1 - 0.9) / math.sqrt(1 - 0.999)}},
        "times_s": {"load": t_load.elapsed, "2d": t_2d.elapsed, "net": times},
        "figures": {k: os.path.basename(v) for k, v in figures.items()},
    }
    path = write_results(args.out, results, args)
    rows = []
    for name in all_rules:
        q, s = cmp["quadratic"].get(name), cmp["saddle"].get(name)
        c = curves.get(name, {"final_train_loss": "-", "final_val_acc": "-"})
        rows.append([name, lrs[name], c["final_train_loss"], c["final_val_acc"],
                     q["final_loss"] if q else "-", (q["steps_to_target"] if q["steps_to_target"] is not None
                                                       else "never") if q else "-",
                     s["final_abs_y"] if s else "-"])
    print_table(["optimizer", "net lr", "net train loss", "net val acc", f"quad f ({QUAD_STEPS} st)",
                 f"steps to f<{QUAD_TARGET:g}", "saddle |y|"], rows,
                title=f"{data_name}: {len(ds.y_train)} images x {epochs} epochs; quadratic lr {args.quad_lr:g}")
    fq = first_quad["measured_over_lr"]
    print(f"Adam first step / lr on the quadratic: with bias correction {np.round(fq['bias_correction'], 4)}, "
          f"without {np.round(fq['no_bias_correction'], 4)} (analytic limit 1 and "
          f"{results['adam_first_step']['analytic_limit_over_lr']['no_bias_correction']:.4f}); on the net (median): "
          f"{first_net['bias_correction_median_over_lr']:.4f} and {first_net['no_bias_correction_median_over_lr']:.4f}")
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
