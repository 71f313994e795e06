"""SimCLR on CIFAR-10 within 20 minutes of CPU pre-training: a linear probe on the learned features
against the same probe on the same encoder at random initialisation (issue 16, experiment 5).

    python -m experiments.simclr [--data cifar10|digits] [--data-dir /path/to/cifar10-jpeg.tar.gz]
                                 [--quick] [--smoke] [--out DIR] [--seed S] [--minutes M] [--steps N]
                                 [--encoder convnet|resnet] [--width W] [--batch-size B] [--lr LR]
                                 [--temperature T] [--proj-dim D] [--probe-train N] [--probe-test N]

**Pre-training.** The encoder is a jaxnet classifier without its last layer: ``--encoder convnet``
(default): ``jaxnet.nn.fast_convnet`` with stem W/2 and widths (W, 2W, 4W) on CIFAR-10, (W, 2W) on
the digits, (W,) under ``--smoke`` (batch norm, global max pool: the last width is the feature
size F); ``--encoder resnet``: ``jaxnet.nn.zoo.cifar_resnet(8, width=W/2)`` (global average pool,
F = 2W).  W (``--width``) defaults to 16 on CIFAR-10 (F = 64) and 32 on the digits.  The
projection head is an MLP (affine F - ReLU - affine ``--proj-dim``, default 64) on top; the loss
is ``jaxnet.ops.nt_xent_loss`` (temperature ``--temperature``, default 0.5) of the two views of
each image, made by ``jaxnet.generative.two_views`` (SimCLR's CIFAR-10 augmentations: random
resized crop (0.08, 1), flip, colour jitter 0.4/0.4/0.4/0.1 with p 0.8, grayscale p 0.2) inside
the jitted train step; both views go through the encoder as one batch (its batch norm sees 2B
images).  Optimiser: optax AdamW (weight decay 1e-6, decoupled), batch ``--batch-size`` (default
128), peak lr ``--lr`` (default 4e-3 on CIFAR-10, 2e-3 on the digits) after a 50-step linear
warm-up (a fifth of ``--steps`` when fewer), then a decay over the budget measured in *time*: the
rate at a step is ``peak * cos(pi/2 * f)``, 0 at f = 1, where f is the larger of the elapsed
fraction of ``--minutes`` and the fraction of ``--steps`` done (a run stopped by the clock still
ends with a small rate; its length in steps cannot be known in advance).  Pre-training stops at
``--minutes`` of wall time (default 20; compile included) or ``--steps`` steps, whichever comes
first; the process CPU time (``time.process_time``, all threads) is reported beside it.  The
CIFAR-10 defaults (W 16, batch 128, lr 4e-3) were chosen by 3-4 minute pilots on a loaded CPU
(W 32 / batch 256 / lr 2e-3: +1.2 points after 50 steps; W 16 / 256 / 2e-3: +5.2 after 140;
W 16 / 128 / 4e-3: +7.7 after 270): on a CPU, more and cheaper steps win.

**Probe.** The frozen encoder's features (eval mode, un-augmented images, normalised per
channel), standardised, then multinomial logistic regression (scikit-learn's objective, fitted
with SciPy's L-BFGS: :func:`fit_logistic`); its regularisation C is chosen among (0.01, 0.1, 1)
on the last 20% of the probe's training images, then refit on all of them. The same probe, with the
same images, on the same encoder at its random initialisation (the weights pre-training started
from) is the baseline. CIFAR-10:
``--probe-train`` (default 10,000) training images and ``--probe-test`` (default all 10,000)
test images.  The claim: the learned features' probe beats the random encoder's by at least
10 points of test accuracy (``claims["gap_at_least_10_points"]``, on CIFAR-10 only).

**Data.** ``--data cifar10`` (the default when a copy is given by ``--data-dir`` or
``$JAXNET_CIFAR10_DIR``): all 50,000 training images for pre-training.  ``--data digits``
(the default otherwise, and under ``--smoke``): the embedded 8x8 digits (1,527 training images
with the validation split, 270 test), crop scale (0.3, 1) and no flips (a mirrored digit is
another symbol).  ``--quick``: 2 minutes (digits: 300 steps); ``--smoke``: 30 steps of batch 32 on
the digits, a one-block width-16 encoder (stem 8), peak lr 1e-2.

Outputs in ``--out``: ``results.json`` (the recipe, the loss curve, the step count, wall and CPU
time, both probes' accuracies and the gap), ``simclr_loss.png`` (NT-Xent loss against step and
against minutes), ``simclr_pairs.png`` (images of the first training batch and the two views the
first step trained on).
"""
from __future__ import annotations

import functools
import math
import os
import time

import numpy as np

from experiments._common import Timer, fail, figure, finish, grid_legend, parse_args, save_figure, sized

NAME = "simclr"
DESCRIPTION = "SimCLR on CIFAR-10: a linear probe on the learned features vs the same encoder at random init."
TARGET_GAP = 0.10
WARMUP_STEPS = 50
PROBE_CS = (0.01, 0.1, 1.0)
FEATURE_BATCH = 500


def _extra(parser) -> None:
    parser.add_argument("--data", choices=("cifar10", "digits"), default=None,
                        help="cifar10 (the default when a copy is given) or digits (otherwise, and under --smoke)")
    parser.add_argument("--minutes", type=float, default=None,
                        help="pre-training wall-time budget in minutes (default 20; quick 2)")
    parser.add_argument("--steps", type=int, default=None,
                        help="at most this many pre-training steps (default: no limit; quick digits 300; smoke 12)")
    parser.add_argument("--encoder", choices=("convnet", "resnet"), default="convnet")
    parser.add_argument("--width", type=int, default=None,
                        help="encoder width W (default CIFAR-10 16, digits 32; smoke 16)")
    parser.add_argument("--batch-size", type=int, default=None, help="images per step (default 128; smoke 32)")
    parser.add_argument("--lr", type=float, default=None,
                        help="peak learning rate (AdamW; default CIFAR-10 4e-3, digits 2e-3, smoke 1e-2)")
    parser.add_argument("--temperature", type=float, default=0.5, help="NT-Xent temperature")
    parser.add_argument("--proj-dim", type=int, default=64, help="projection output size")
    parser.add_argument("--probe-train", type=int, default=10_000, help="probe training images (CIFAR-10)")
    parser.add_argument("--probe-test", type=int, default=10_000, help="probe test images (CIFAR-10)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _check_args(args) -> None:
    """One line on stderr and exit status 2 for a setting that cannot run (never a traceback)."""
    if not (math.isfinite(args.minutes) and args.minutes > 0):
        _fail(f"--minutes must be > 0, got {args.minutes}")
    if args.steps is not None and args.steps < 1:
        _fail(f"--steps must be >= 1, got {args.steps}")
    if args.width < 2 or args.width % 2:
        _fail(f"--width must be an even int >= 2, got {args.width}")
    if args.batch_size < 2:
        _fail(f"--batch-size must be >= 2 (NT-Xent needs negatives), got {args.batch_size}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        _fail(f"--lr must be > 0, got {args.lr}")
    if not (math.isfinite(args.temperature) and args.temperature > 0):
        _fail(f"--temperature must be > 0, got {args.temperature}")
    if args.proj_dim < 1:
        _fail(f"--proj-dim must be >= 1, got {args.proj_dim}")
    if args.probe_train < 50 or args.probe_test < 10:
        _fail(f"--probe-train must be >= 50 and --probe-test >= 10, got {args.probe_train}, {args.probe_test}")


# ----------------------------------------------------------------------------- data

def load(args):
    """(x_pretrain uint8 (N, H, W, C), (x_probe_tr, y_probe_tr), (x_probe_te, y_probe_te), source):
    the probe's images are float32 in [0, 1]."""
    from jaxnet.data import subsample, to_float

    from experiments._common import digits_uint8, load_data

    if args.data == "cifar10":
        ds = load_data(args, val_size=0)
        x_tr, y_tr = subsample(ds.x_train, ds.y_train, min(args.probe_train, len(ds.y_train)), seed=args.seed)
        x_te, y_te = subsample(ds.x_test, ds.y_test, min(args.probe_test, len(ds.y_test)), seed=args.seed)
        pre = ds.x_train
    else:
        ds = digits_uint8(args.seed, val_size=0)               # training + validation: 1,527 images
        pre, x_tr, y_tr, x_te, y_te = ds.x_train, ds.x_train, ds.y_train, ds.x_test, ds.y_test
    return pre, (to_float(x_tr), np.asarray(y_tr)), (to_float(x_te), np.asarray(y_te)), args.data


def augment_options(source: str) -> dict:
    """two_views' keyword arguments: SimCLR's CIFAR-10 defaults; for the 8x8 digits milder crops, no flips."""
    return {} if source == "cifar10" else {"scale": (0.3, 1.0), "flip_p": 0.0}


def augment_description(source: str) -> dict:
    """The augmentation settings used (SimCLR's defaults with the source's changes), JSON-friendly."""
    from jaxnet.generative.augment import SIMCLR_DEFAULTS
    used = {**SIMCLR_DEFAULTS, **augment_options(source)}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in used.items()}


# ----------------------------------------------------------------------------- model

def encoder_widths(args) -> tuple:
    """The convnet encoder's block widths: (W, 2W, 4W) on CIFAR-10, (W, 2W) on the digits, (W,) under --smoke."""
    blocks = 3 if args.data == "cifar10" else 1 if getattr(args, "smoke", False) else 2
    return tuple(args.width * 2 ** b for b in range(blocks))


def build_encoder(args, channels: int):
    """(encoder Sequential without the classifier, feature size)."""
    from jaxnet.nn import Sequential, fast_convnet
    from jaxnet.nn.zoo import cifar_resnet

    if args.encoder == "convnet":
        widths = encoder_widths(args)
        net, feat = fast_convnet(stem=args.width // 2, widths=widths), widths[-1]
    else:
        net, feat = cifar_resnet(8, width=args.width // 2), 2 * args.width
    return Sequential(net.layers[:-1], net.names[:-1]), feat


def build_head(args, feat: int):
    from jaxnet.nn import Affine, ReLU, Sequential

    return Sequential((Affine(feat), ReLU(), Affine(args.proj_dim)), ("fc1", "relu", "fc2"))


def describe(args, feat: int) -> str:
    if args.encoder == "convnet":
        enc = f"fast_convnet(stem={args.width // 2}, widths={encoder_widths(args)}) without fc"
    else:
        enc = f"cifar_resnet(8, width={args.width // 2}) without fc"
    return f"{enc} ({feat} features) + MLP head {feat}-{feat}-{args.proj_dim}"


def make_step(encoder, head, optimizer, mean, std, temperature: float, aug: dict, n_show: int):
    """The jitted pre-training step ``(params, state, opt_state, key, x_uint8, lr) -> (params, state,
    opt_state, loss, view1[:n_show], view2[:n_show])``."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxnet.generative import two_views
    from jaxnet.ops import nt_xent_loss

    mean, std = jnp.asarray(mean), jnp.asarray(std)

    def loss_fn(params, state, x):
        h, new_state = encoder.apply(params["encoder"], state["encoder"], (x - mean) / std, train=True)
        z, _ = head.apply(params["head"], state["head"], h, train=True)
        return nt_xent_loss(z, temperature=temperature), {"encoder": new_state, "head": state["head"]}

    @jax.jit
    def step(params, state, opt_state, key, xb, lr):
        x = xb.astype(jnp.float32) / 255.0
        v1, v2 = two_views(key, x, **aug)
        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, state, jnp.concatenate([v1, v2]))
        opt_state.hyperparams["learning_rate"] = lr
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss, v1[:n_show], v2[:n_show]

    return step


def warmup_steps(args) -> int:
    """WARMUP_STEPS, or a fifth of --steps when that is fewer (the smoke run's 12 steps warm up in 2)."""
    return min(WARMUP_STEPS, max(1, args.steps // 5)) if args.steps else WARMUP_STEPS


def learning_rate(peak: float, step: int, fraction: float, warmup: int = WARMUP_STEPS) -> float:
    """Linear warm-up over ``warmup`` steps, then ``peak * cos(pi/2 * fraction)`` (0 at the budget's end)."""
    warm = min(1.0, (step + 1) / max(1, warmup))
    return float(peak * warm * math.cos(0.5 * math.pi * min(max(fraction, 0.0), 1.0)))


def pretrain(args, pre_x: np.ndarray, mean, std, source: str):
    """Pre-train for --minutes / --steps. Returns (history dict, encoder, initial (params, state),
    final (params, state), (images, view1, view2) of the first step)."""
    import jax
    import optax

    from jaxnet.nn import count_params

    encoder, feat = build_encoder(args, pre_x.shape[-1])
    head = build_head(args, feat)
    bs = min(args.batch_size, len(pre_x))
    k_init, k_head, k_data = jax.random.split(jax.random.PRNGKey(args.seed), 3)
    shape = (2 * bs,) + pre_x.shape[1:]
    p_enc, s_enc = encoder.init(k_init, shape)
    p_head, s_head = head.init(k_head, (2 * bs, feat))
    params, state = {"encoder": p_enc, "head": p_head}, {"encoder": s_enc, "head": s_head}
    init = (jax.tree.map(np.asarray, p_enc), jax.tree.map(np.asarray, s_enc))
    optimizer = optax.inject_hyperparams(optax.adamw)(learning_rate=args.lr, weight_decay=1e-6)
    opt_state = optimizer.init(params)
    n_show = min(8, bs)
    step = make_step(encoder, head, optimizer, mean, std, args.temperature, augment_options(source), n_show)
    n_params = count_params(p_enc)
    print(f"encoder: {describe(args, feat)}, {n_params:,} encoder parameters; batch {bs} (x2 views), "
          f"AdamW peak lr {args.lr}, temperature {args.temperature}; budget {args.minutes:g} min"
          + (f" / {args.steps} steps" if args.steps else ""), flush=True)

    budget = args.minutes * 60.0
    warmup = warmup_steps(args)
    max_steps = args.steps if args.steps is not None else 10 ** 9
    rng = np.random.default_rng(args.seed)
    order, pos = rng.permutation(len(pre_x)), 0
    losses, times, lrs = [], [], []
    pending = []
    first = None
    bar = None
    if not (args.quick or args.no_progress):
        from tqdm.auto import tqdm
        bar = tqdm(total=args.steps or None, desc="simclr", unit="step", dynamic_ncols=True)
    t0, c0 = time.perf_counter(), time.process_time()
    i = 0
    while i < max_steps:
        elapsed = time.perf_counter() - t0
        if elapsed >= budget:
            break
        frac = max(elapsed / budget, i / max_steps if args.steps else 0.0)
        if pos + bs > len(order):
            order, pos = rng.permutation(len(pre_x)), 0
        idx = order[pos:pos + bs]
        pos += bs
        lr = learning_rate(args.lr, i, frac, warmup)
        params, state, opt_state, loss, v1, v2 = step(params, state, opt_state, jax.random.fold_in(k_data, i),
                                                      pre_x[idx], np.float32(lr))
        if first is None:
            first = (pre_x[idx[:n_show]], np.asarray(v1), np.asarray(v2))
        pending.append(loss)
        lrs.append(lr)
        i += 1
        if i % 10 == 0 or i == max_steps or i == 1:
            vals = [float(v) for v in pending]          # waits for the device: the clock then counts the work
            now = time.perf_counter() - t0
            losses.extend(vals)                         # the steps since the last sync, spread evenly over its time
            times.extend(np.linspace(times[-1] if times else 0.0, now, len(vals) + 1)[1:].tolist())
            pending = []
            if not all(math.isfinite(v) for v in vals):
                _fail(f"the NT-Xent loss became non-finite at step {i} (lr {lr:.3g}): lower --lr")
            if bar is not None:
                bar.update(len(vals))
                bar.set_postfix(loss=f"{vals[-1]:.3f}", lr=f"{lr:.2g}", min=f"{now / 60:.1f}")
    if pending:
        vals = [float(v) for v in pending]
        losses.extend(vals)
        times.extend(np.linspace(times[-1] if times else 0.0, time.perf_counter() - t0, len(vals) + 1)[1:].tolist())
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    if bar is not None:
        bar.close()
    stopped = "steps" if i >= max_steps else "time"
    print(f"pre-training: {i} steps in {wall / 60:.2f} min wall, {cpu / 60:.2f} min process CPU "
          f"(stopped by {stopped}); loss {losses[0]:.4f} -> {np.mean(losses[-10:]):.4f}", flush=True)
    history = {"loss": losses, "time_s": times, "lr": lrs}
    summary = {"steps": i, "batch_size": bs, "wall_s": wall, "cpu_s": cpu, "stopped_by": stopped,
               "images_per_s": i * bs / wall, "epochs": i * bs / len(pre_x),
               "first_loss": losses[0], "final_loss_mean_last10": float(np.mean(losses[-10:])),
               "n_params_encoder": int(n_params), "feature_dim": feat}
    final = (params["encoder"], state["encoder"])
    return history, summary, encoder, init, final, first


# ----------------------------------------------------------------------------- probe

_FEATURES = {}


def features(encoder, params, state, x: np.ndarray, mean, std) -> np.ndarray:
    """Eval-mode encoder features (N, F) of float images in [0, 1], in padded batches (one program)."""
    import jax

    if encoder not in _FEATURES:
        _FEATURES[encoder] = jax.jit(lambda p, s, xb: encoder.apply(p, s, xb, train=False)[0])
    f = _FEATURES[encoder]
    bs = FEATURE_BATCH                      # one program for every call (the probe's splits differ in size)
    out = []
    for i in range(0, len(x), bs):
        xb = ((x[i:i + bs] - mean) / std).astype(np.float32)
        pad = np.zeros((bs - len(xb), *xb.shape[1:]), np.float32)
        out.append(np.asarray(f(params, state, np.concatenate([xb, pad])), np.float64)[:len(xb)])
    return np.concatenate(out)


def fit_logistic(a: np.ndarray, y: np.ndarray, c: float, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression ``(W (D, K), b (K,))`` minimising scikit-learn's objective
    ``C * sum_i CE_i + ||W||^2 / 2`` (bias not penalised; here divided by C N) with SciPy's L-BFGS
    (gradient tolerance 1e-7, at most 500 iterations),
    float64, from zeros: deterministic."""
    from scipy.optimize import minimize

    n, d = a.shape
    onehot = np.eye(num_classes)[y]
    lam = 1.0 / (c * n)

    def objective(theta):
        w, b = theta[:d * num_classes].reshape(d, num_classes), theta[d * num_classes:]
        s = a @ w + b
        s -= s.max(axis=1, keepdims=True)
        lse = np.log(np.exp(s).sum(axis=1))
        loss = np.mean(lse - np.sum(s * onehot, axis=1)) + 0.5 * lam * np.sum(w * w)
        g = (np.exp(s - lse[:, None]) - onehot) / n
        return loss, np.concatenate([(a.T @ g + lam * w).ravel(), g.sum(axis=0)])

    res = minimize(objective, np.zeros(d * num_classes + num_classes), jac=True, method="L-BFGS-B",
                   options={"maxiter": 500, "gtol": 1e-7, "ftol": 1e-13})
    return res.x[:d * num_classes].reshape(d, num_classes), res.x[d * num_classes:]


def _accuracy(wb, a, y) -> float:
    return float(np.mean(np.argmax(a @ wb[0] + wb[1], axis=1) == y))


def linear_probe(f_tr, y_tr, f_te, y_te, num_classes: int = 10) -> dict:
    """Standardised features (training statistics), multinomial logistic regression
    (:func:`fit_logistic`); C chosen among PROBE_CS on the last 20% of the training features
    (ties: the smaller C), then refit on all of them. Returns accuracies and the chosen C."""
    f_tr, f_te = np.asarray(f_tr, np.float64), np.asarray(f_te, np.float64)
    y_tr, y_te = np.asarray(y_tr), np.asarray(y_te)
    mu, sd = f_tr.mean(axis=0), f_tr.std(axis=0) + 1e-8
    a, b = (f_tr - mu) / sd, (f_te - mu) / sd
    n_fit = int(0.8 * len(a))
    val = {c: _accuracy(fit_logistic(a[:n_fit], y_tr[:n_fit], c, num_classes), a[n_fit:], y_tr[n_fit:])
           for c in PROBE_CS}
    best = max(PROBE_CS, key=lambda c: (val[c], -c))
    wb = fit_logistic(a, y_tr, best, num_classes)
    return {"test_acc": _accuracy(wb, b, y_te), "train_acc": _accuracy(wb, a, y_tr), "C": best,
            "val_acc_by_C": {str(c): v for c, v in val.items()}}


# ----------------------------------------------------------------------------- figures

def plot_loss(history: dict, path: str, title: str) -> str:
    fig = figure((10, 3.8))
    ax1, ax2 = fig.subplots(1, 2)
    loss = np.asarray(history["loss"])
    steps = np.arange(1, len(loss) + 1)
    k = max(1, len(loss) // 50)
    smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
    ax1.plot(steps, loss, lw=0.6, alpha=0.4, label="per step")
    ax1.plot(steps[k - 1:], smooth, lw=1.5, label=f"mean of {k}")
    ax1.set(xlabel="step", ylabel="NT-Xent loss", title="loss by step")
    ax2.plot(np.asarray(history["time_s"]) / 60, loss, lw=0.8, label="per step")
    ax2.set(xlabel="wall minutes (compile included)", ylabel="NT-Xent loss", title="loss by time")
    grid_legend((ax1, ax2))
    return save_figure(fig, path, title)


def plot_pairs(first, path: str) -> str:
    images, v1, v2 = first
    n = len(images)
    fig = figure((1.3 * n, 4.2))
    axes = fig.subplots(3, n, squeeze=False)
    gray = images.shape[-1] == 1
    for i in range(n):
        for r, (img, label) in enumerate(((images[i] / 255.0, "image"), (v1[i], "view 1"), (v2[i], "view 2"))):
            ax = axes[r, i]
            ax.imshow(np.clip(img.squeeze(), 0, 1), cmap="gray" if gray else None, vmin=0, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_ylabel(label)
    return save_figure(fig, path, "the first training step's images and their two augmented views (the positive pairs)")


# ----------------------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    if args.data is None:
        args.data = "cifar10" if (args.data_dir and not args.smoke) else "digits"
    cifar = args.data == "cifar10"
    if args.minutes is None:
        args.minutes = sized(args, 20.0, 2.0)
    if args.steps is None and not cifar:
        args.steps = sized(args, None, 300, 30)
    if args.width is None:
        args.width = 16 if (cifar or args.smoke) else 32
    if args.lr is None:                      # the CIFAR-10 values were chosen by 4-minute pilots (docs/generative.md)
        args.lr = sized(args, 4e-3 if cifar else 2e-3, 4e-3 if cifar else 2e-3, 1e-2)
    if args.batch_size is None:
        args.batch_size = sized(args, 128, 128, 32)
    _check_args(args)
    from jaxnet.data import fit_normalizer

    with Timer() as t_load:
        pre, (x_tr, y_tr), (x_te, y_te), source = load(args)
    norm = fit_normalizer(pre[:5000].astype(np.float32) / 255.0, mode="channel")   # the pre-training images' statistics
    mean = np.asarray(norm.mean, np.float32).reshape(-1)
    std = np.asarray(norm.std, np.float32).reshape(-1)
    print(f"{source}: {len(pre)} pre-training images; probe {len(y_tr)} training / {len(y_te)} test images "
          f"({t_load.elapsed:.1f} s)", flush=True)

    history, pre_summary, encoder, init, final, first = pretrain(args, pre, mean, std, source)

    with Timer() as t_probe:
        probes = {}
        for name, (p, s) in (("simclr", final), ("random_init", init)):
            f_tr = features(encoder, p, s, x_tr, mean, std)
            f_te = features(encoder, p, s, x_te, mean, std)
            if not (np.all(np.isfinite(f_tr)) and np.all(np.isfinite(f_te))):
                _fail(f"the {name} encoder's features are not finite")
            probes[name] = linear_probe(f_tr, y_tr, f_te, y_te)
    gap = probes["simclr"]["test_acc"] - probes["random_init"]["test_acc"]
    print(f"linear probes: {t_probe.elapsed:.1f} s", flush=True)

    os.makedirs(args.out, exist_ok=True)
    figures = {
        "loss": os.path.basename(plot_loss(history, os.path.join(args.out, "simclr_loss.png"),
                                           f"SimCLR on {source}: {pre_summary['steps']} steps, "
                                           f"{pre_summary['wall_s'] / 60:.1f} wall minutes")),
        "pairs": os.path.basename(plot_pairs(first, os.path.join(args.out, "simclr_pairs.png"))),
    }
    feat = pre_summary["feature_dim"]
    results = {
        "data_source": source, "n_pretrain": int(len(pre)), "n_probe_train": int(len(y_tr)),
        "n_probe_test": int(len(y_te)),
        "model": describe(args, feat),
        "recipe": {"optimizer": "adamw (optax), weight decay 1e-6", "peak_lr": args.lr,
                   "schedule": f"linear warm-up {warmup_steps(args)} steps, cosine over the time/step budget",
                   "batch_size": pre_summary["batch_size"], "temperature": args.temperature,
                   "proj_dim": args.proj_dim, "augment": augment_description(source),
                   "minutes_budget": args.minutes, "steps_budget": args.steps},
        "pretrain": pre_summary, "history": history, "probe": probes,
        "probe_simclr_test_acc": probes["simclr"]["test_acc"],
        "probe_random_test_acc": probes["random_init"]["test_acc"],
        "gap": gap, "target_gap": TARGET_GAP, "figures": figures,
        "claims": {"gap_at_least_10_points": bool(gap >= TARGET_GAP) if cifar else None,
                   "loss_went_down": bool(np.mean(history["loss"][-5:]) < history["loss"][0])},
    }
    rows = [["random init", probes["random_init"]["test_acc"], probes["random_init"]["C"]],
            ["SimCLR", probes["simclr"]["test_acc"], probes["simclr"]["C"]],
            ["gap (points)", 100 * gap, "-"]]
    title = (f"\nSimCLR on {source}: linear probe test accuracy ({pre_summary['steps']} steps, "
             f"{pre_summary['wall_s'] / 60:.1f} wall / {pre_summary['cpu_s'] / 60:.1f} CPU minutes of pre-training)")
    return finish(args, results, ["encoder", "probe test accuracy", "C"], rows, title)


if __name__ == "__main__":
    main()
