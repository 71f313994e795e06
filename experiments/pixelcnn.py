"""PixelCNN on binarised digits: test negative log-likelihood, samples.

    python -m experiments.pixelcnn [--quick] [--smoke] [--out DIR] [--epochs E] [--features F]
                                   [--layers N] [--kernel K] [--hidden-kernel K] [--lr LR]

Data: the embedded 8x8 digits binarised (grey level >= 8 of 16 is 1), the digits' stratified
split (1,257 training, 270 validation, 270 test images): the same binary images
``experiments.vae`` scores, so the two models' numbers compare.

Model: :func:`jaxnet.generative.pixelcnn.pixelcnn` (a 7x7 type-A masked convolution, ``--layers``
3x3 type-B ones, a 1x1 type-B output; ReLUs between), trained with a jitted step and optax's Adam
on :func:`jaxnet.generative.pixelcnn_nll`, the exact -log p(x) of the raster-order model in nats
per image. The parameters kept are those of the epoch with the best validation NLL; the test
split is scored once with them (the per-epoch test NLL is recorded for the curve, never used).

For scale, the table has the trivial baseline "every pixel independent, Bernoulli with its
training frequency" (Laplace-smoothed) and, when ``--vae-results`` holds a digits run of
``experiments.vae`` with the same seed, that VAE's test -ELBO and IWAE bounds (upper bounds of
its -log p(x); the PixelCNN's number is exact).

Samples: :func:`jaxnet.generative.pixelcnn_sample` (one ``lax.fori_loop`` over the 64 pixels under
``jit``). Where ``experiments/_judge.py`` exists, the samples' judge scores and the real (binarised)
test images' reference row are added.

Outputs in ``--out``: ``results.json``, ``pixelcnn_curves.png`` (NLL per epoch), ``pixelcnn_samples.png``
(samples beside real binarised test digits). Defaults: 64 features, 5 hidden layers (188 k
parameters), 60 epochs of batch 64, Adam 1e-3, 270 samples (about 3.5 minutes on the loaded
2-core machine). ``--quick``: 30 epochs; ``--smoke``: 300 training images, one hidden layer of 8
features, 2 epochs, 64 samples, the training programs compiled at XLA's optimisation level 0.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

import numpy as np

from experiments._common import fail, figure, finish, grid_legend, parse_args, save_figure, sized
from experiments.vae import _show, _tile, binary_digits, independent_bernoulli_nll, jit, judge_scores, print_judge

NAME = "pixelcnn"
DESCRIPTION = "PixelCNN on binarised digits: test negative log-likelihood, samples."


def _extra(parser) -> None:
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default 60; quick 30; smoke 2)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--features", type=int, default=None, help="feature maps per layer (default 64; smoke 8)")
    parser.add_argument("--layers", type=int, default=None, help="type-B 3x3 layers (default 5; smoke 1)")
    parser.add_argument("--kernel", type=int, default=7, help="the type-A layer's kernel (odd; default 7)")
    parser.add_argument("--hidden-kernel", type=int, default=3, help="the type-B layers' kernel (odd; default 3)")
    parser.add_argument("--samples", type=int, default=None,
                        help="samples drawn for the judge (default 270, the judge's held-out count; smoke 64); "
                             "the figure shows 64")
    parser.add_argument("--vae-results", default=os.path.join("docs", "results", "vae_digits.json"),
                        help="a digits results.json of experiments.vae for the comparison row "
                             "(default: %(default)s; left out when missing or of another seed)")
    parser.add_argument("--no-judge", action="store_true", help="skip the sample judge (experiments/_judge.py)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def resolve(args) -> None:
    """Size defaults, then every flag checked (one stderr line, exit 2) before any work."""
    if args.epochs is None:
        args.epochs = sized(args, 60, 30, 2)
    if args.features is None:
        args.features = sized(args, 64, 64, 8)
    if args.layers is None:
        args.layers = sized(args, 5, 5, 1)
    if args.samples is None:
        args.samples = sized(args, 270, 270, 64)
    for flag, v in (("--epochs", args.epochs), ("--batch-size", args.batch_size), ("--features", args.features),
                    ("--samples", args.samples)):
        if v < 1:
            _fail(f"{flag} must be >= 1, got {v}")
    if args.layers < 0:
        _fail(f"--layers must be >= 0, got {args.layers}")
    for flag, v in (("--kernel", args.kernel), ("--hidden-kernel", args.hidden_kernel)):
        if v < 1 or v % 2 == 0:
            _fail(f"{flag} must be an odd int >= 1 (the mask is centred), got {v}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        _fail(f"--lr must be a finite number > 0, got {args.lr}")


def build_model(args):
    from jaxnet.generative.pixelcnn import pixelcnn
    return pixelcnn(features=args.features, num_layers=args.layers, kernel=args.kernel,
                    hidden_kernel=args.hidden_kernel, channels=1)


def describe(args) -> str:
    return (f"pixelcnn(features={args.features}, num_layers={args.layers}, kernel={args.kernel}, "
            f"hidden_kernel={args.hidden_kernel})")


def train(args, model, ds) -> dict:
    import jax
    import optax
    from tqdm.auto import tqdm

    from jaxnet.generative import pixelcnn_nll
    from jaxnet.nn import count_params

    x_tr = ds.x_train
    opt = optax.adam(args.lr)

    fast = bool(args.smoke)

    @functools.partial(jit, fast_compile=True)
    def init(seed):
        params, state = model.init(jax.random.key(seed, impl="rbg"), (args.batch_size,) + x_tr.shape[1:])
        return params, state, opt.init(params)

    params, state, opt_state = init(args.seed)
    n_params = count_params(params)

    def loss_fn(params, state, x):
        logits, new_state = model.apply(params, state, x, train=True)
        return pixelcnn_nll(logits, x), new_state

    @functools.partial(jit, fast_compile=fast)
    def step(params, state, opt_state, x):
        (loss, new_state), g = jax.value_and_grad(loss_fn, has_aux=True)(params, state, x)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), new_state, opt_state, loss

    @functools.partial(jit, fast_compile=fast)
    def nll(params, state, x):
        return pixelcnn_nll(model.apply(params, state, x, train=False)[0], x)

    bs = min(args.batch_size, len(x_tr))
    steps = len(x_tr) // bs
    rng = np.random.default_rng(args.seed)
    hist = {k: [] for k in ("epoch", "train_nll", "val_nll", "test_nll", "epoch_time_s", "cum_train_time_s")}
    best = (math.inf, 0, params, state)
    cum = 0.0
    print(f"{describe(args)}: {n_params:,} params; {args.epochs} epochs x {steps} steps of {bs}, adam lr {args.lr}",
          flush=True)
    bar = tqdm(range(1, args.epochs + 1), desc="pixelcnn", disable=args.no_progress or args.quick, leave=False)
    for epoch in bar:
        t0 = time.perf_counter()
        perm = rng.permutation(len(x_tr))
        losses = []
        for s in range(steps):
            params, state, opt_state, loss = step(params, state, opt_state, x_tr[perm[s * bs:(s + 1) * bs]])
            losses.append(loss)
        train_nll = float(np.mean(jax.device_get(losses)))
        val = float(nll(params, state, ds.x_val))
        dt = time.perf_counter() - t0
        cum += dt
        hist["epoch"].append(epoch)
        hist["train_nll"].append(train_nll)
        hist["val_nll"].append(val)
        hist["test_nll"].append(float(nll(params, state, ds.x_test)))   # for the curve only
        hist["epoch_time_s"].append(dt)
        hist["cum_train_time_s"].append(cum)
        if not math.isfinite(train_nll):
            _fail(f"the training NLL became {train_nll} at epoch {epoch} (try a smaller --lr)")
        if val < best[0]:
            best = (val, epoch, params, state)
        bar.set_postfix(train=f"{train_nll:.2f}", val=f"{val:.2f}")
        if not args.quick and (epoch % max(1, args.epochs // 10) == 0 or epoch == 1):
            tqdm.write(f"pixelcnn epoch {epoch:3d}: train NLL {train_nll:.3f} | val NLL {val:.3f} | {cum:.0f} s")
    _, best_epoch, params, state = best
    return {"history": hist, "best_epoch": best_epoch, "params": params, "state": state, "n_params": int(n_params),
            "train_time_s": cum, "steps_per_epoch": steps, "batch_size": bs,
            "test_nll": float(nll(params, state, ds.x_test)), "val_nll": best[0],
            "train_nll_kept": float(nll(params, state, x_tr))}


def plot_curves(run, baseline, path, title) -> str:
    h = run["history"]
    fig = figure((7.5, 4.6))
    ax = fig.subplots()
    ax.plot(h["epoch"], h["train_nll"], label="train (running mean over the epoch)")
    ax.plot(h["epoch"], h["val_nll"], label="validation")
    ax.plot(h["epoch"], h["test_nll"], label="test (recorded, not used)", alpha=0.8)
    ax.axhline(baseline, color="0.4", ls="--", lw=1, label=f"independent pixels: {baseline:.1f}")
    ax.axvline(run["best_epoch"], color="0.5", ls=":", lw=1, label=f"kept: epoch {run['best_epoch']}")
    lo = min(min(h["train_nll"]), min(h["val_nll"]))
    ax.set_ylim(lo - 0.05 * (baseline - lo) - 0.5, baseline + 0.15 * (baseline - lo) + 0.5)
    ax.set(xlabel="epoch", ylabel="-log p(x) (nats / image)", title="negative log-likelihood")
    grid_legend((ax,))
    return save_figure(fig, path, title)


def plot_samples(samples, real, path, title) -> str:
    side = int(math.isqrt(len(samples)))
    fig = figure((10, 5.3))
    ax1, ax2 = fig.subplots(1, 2)
    _show(ax1, _tile(samples, side, side), f"{side * side} PixelCNN samples")
    _show(ax2, _tile(real, side, side), "real binarised test digits")
    return save_figure(fig, path, title)


def vae_reference(path, seed):
    """The digits VAE's test bounds from its results.json, or None (missing, another data set or seed)."""
    try:
        with open(path) as f:
            r = json.load(f)
    except (OSError, ValueError):
        return None
    if r.get("data_source") != "digits" or r.get("seed") != seed or "test" not in r:
        return None
    t = r["test"]
    return {"source": path, "model": r.get("model"), "nelbo_nats": t["nelbo_nats"], "bits_per_dim": t["bits_per_dim"],
            "iwae_nll_nats": t["iwae_nll_nats"], "iwae_bits_per_dim": t["iwae_bits_per_dim"],
            "iw_samples": t["iw_samples"]}


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    resolve(args)
    os.makedirs(args.out, exist_ok=True)
    import jax

    from jaxnet.generative import bits_per_dim, pixelcnn_sample

    ds = binary_digits(args.seed, smoke=args.smoke)
    shape = tuple(ds.x_train.shape[1:])
    d = int(np.prod(shape))
    print(f"digits, binarised (level >= 8/16): {len(ds.x_train)} training, {len(ds.x_val)} validation, "
          f"{len(ds.x_test)} test images of {shape}", flush=True)
    model = build_model(args)
    run = train(args, model, ds)
    base = independent_bernoulli_nll(ds.x_train, ds.x_test)
    t0 = time.perf_counter()
    samples = np.asarray(pixelcnn_sample(model, run["params"], run["state"],
                                         jax.random.key(args.seed + 1, impl="rbg"), args.samples, shape))
    sample_time = time.perf_counter() - t0
    real = ds.x_test
    figures = {
        "curves": os.path.basename(plot_curves(run, base, os.path.join(args.out, "pixelcnn_curves.png"),
                                               f"PixelCNN on binarised digits: test NLL {run['test_nll']:.2f} nats")),
        "samples": os.path.basename(plot_samples(samples[:64], real[:64], os.path.join(args.out, "pixelcnn_samples.png"),
                                                 "PixelCNN samples (pixelcnn_sample under jit)")),
    }
    to_bpd = lambda v: float(bits_per_dim(v, d))   # noqa: E731
    vae = vae_reference(args.vae_results, args.seed) if not args.smoke else None
    judge = judge_scores(args, "digits", samples, "PixelCNN samples (binary)",
                         ("real held-out digits, binarised", ds.x_val))
    res = {
        "data_source": "digits", "binarisation": "grey level >= 8 of 16 -> 1", "likelihood": "bernoulli (exact)",
        "n_train": len(ds.x_train), "n_val": len(ds.x_val), "n_test": len(ds.x_test), "image_shape": shape,
        "num_dims": d, "model": describe(args), "n_params": run["n_params"],
        "recipe": {"optimizer": "adam (optax)", "lr": args.lr, "batch_size": run["batch_size"], "epochs": args.epochs,
                   "steps_per_epoch": run["steps_per_epoch"], "kept": "the epoch with the best validation NLL"},
        "history": run["history"], "best_epoch": run["best_epoch"], "train_time_s": run["train_time_s"],
        "test": {"nll_nats": run["test_nll"], "bits_per_dim": to_bpd(run["test_nll"])},
        "val_nll_nats": run["val_nll"], "train_nll_nats_kept": run["train_nll_kept"],
        "baseline": {"name": "independent Bernoulli pixels, training marginals (Laplace-smoothed)",
                     "nll_nats": base, "bits_per_dim": to_bpd(base)},
        "vae_reference": vae,
        "samples": {"n": args.samples, "seconds": sample_time, "mean": float(samples.mean()),
                    "binary": bool(np.all((samples == 0) | (samples == 1))), "real_test_mean": float(ds.x_test.mean())},
        "judge": judge, "figures": figures,
    }
    res["claims"] = {"beats_independent_pixels": bool(run["test_nll"] < base)}
    rows = [[describe(args), "exact", run["test_nll"], to_bpd(run["test_nll"])],
            ["independent Bernoulli pixels", "exact", base, to_bpd(base)]]
    if vae:
        rows += [[f"VAE {vae['model']}", "-ELBO (bound)", vae["nelbo_nats"], vae["bits_per_dim"]],
                 [f"VAE {vae['model']}", f"IWAE-{vae['iw_samples']} (bound)", vae["iwae_nll_nats"],
                  vae["iwae_bits_per_dim"]]]
    print_judge(judge)
    finish(args, res, ["model", "kind", "test NLL (nats/image)", "bits/dim"], rows,
           f"\nPixelCNN on binarised digits, {len(ds.x_test)} test images")
    return res


if __name__ == "__main__":
    main()
