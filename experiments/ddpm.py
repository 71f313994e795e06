"""DDPM on the digits (and CIFAR-10 with ``--data cifar10``): the loss curve, samples, and
classifier-free guidance at a few guidance weights, scored by the sample judge.

    python -m experiments.ddpm [--data digits|cifar10] [--data-dir PATH] [--quick] [--smoke] [--out DIR]
                               [--steps S] [--batch-size B] [--lr LR] [--widths W,W] [--timesteps T]
                               [--schedule cosine|linear] [--cond-drop P] [--ema D] [--guidance W,W,..]
                               [--per-class K] [--judge-samples N] [--no-progress]

Model: ``jaxnet.generative.UNet(widths, num_classes=10)`` (default widths (32, 64) on the 8x8
digits, 0.5 M parameters; (32, 64, 128) on CIFAR-10) predicting the noise, trained with
``ddpm_loss`` (epsilon prediction, each label replaced by the null label with probability
``--cond-drop`` 0.1: one network is both the conditional and the unconditional model) on a
``--schedule`` cosine schedule of ``--timesteps`` T = 100 steps (the linear schedule needs
T ~ 1000). Adam (optax), peak lr ``--lr`` 2e-3 after a 5% linear warmup, cosine to 5% of it;
batch 128 drawn uniformly inside the jitted step; an exponential moving average of the weights
(``--ema`` 0.999) is what samples. Real images scaled to [-1, 1].

Sampling: ``jaxnet.generative.sample`` (ancestral, one ``lax.scan``, x0 clipped to [-1, 1]) at
each guidance weight w in ``--guidance`` (default 0, 1, 3; w = 0: the conditional model
alone; smoke 1, 3: every w > 0 shares one compiled sampler), for the labels 0..9, ``--per-class`` K (default 10) per class in each batch of 10 K;
every w uses the same keys (the same x_T and noise), so the rows differ only by w.
``--judge-samples`` per w (default: as many as the judge's real reference row, 270 on the digits,
since the Fréchet distance grows as n shrinks), balanced over the classes, go to the sample judge
(``experiments._judge``), beside its row for as many real held-out images
(``judge.real_score(n)``) and uniform noise's row; ``label_agreement`` is the fraction of samples
the judge's classifier puts in the class they were generated for (what guidance should raise).
The UNet trains on the digits' training split (1,257 images) only: the judge's reference
(validation) and Fréchet (test) images are unseen.

Outputs in ``--out``: ``results.json`` (the loss curve in 50 chunks, the judge's scores per w, the
times); ``ddpm_loss.png``; ``ddpm_samples.png`` (one panel per w, a row per class);
``ddpm_trajectory.png`` (x_T to x_0 for one sample per class at the first w, 11 frames at T = 100).
Sizes: default 2,500 steps (about 0.4 s each on this loaded 2-core CPU); quick 800 steps, widths
(16, 32); smoke 20 steps of a one-level UNet (8,), T = 10. ``--data cifar10`` (UNet (32, 64, 128),
20,000 images; quick 5,000) is supported but was not run: a step costs seconds on this CPU.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np

from experiments._common import Timer, fail, figure, finish, grid_legend, load_data, parse_args, save_figure, sized

NAME = "ddpm"
DESCRIPTION = "DDPM on the digits: loss curve, samples and classifier-free guidance, scored by the judge."
JUDGE_KEYS = ("classifier_score", "confident_fraction", "class_coverage", "frechet")
NUM_CLASSES = 10


def _extra(parser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits (embedded 8x8, default) or cifar10 (--data-dir or $JAXNET_CIFAR10_DIR)")
    parser.add_argument("--steps", type=int, default=None, help="training steps (default 2500; quick 800; smoke 20)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (default 128; smoke 32)")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak Adam learning rate (default 2e-3)")
    parser.add_argument("--widths", default=None,
                        help="UNet widths, one per level (default 32,64 digits, 32,64,128 CIFAR-10; quick 16,32; "
                             "smoke 8)")
    parser.add_argument("--timesteps", type=int, default=None, help="diffusion steps T (default 100; smoke 10)")
    parser.add_argument("--schedule", default="cosine", help="cosine (default) or linear")
    parser.add_argument("--cond-drop", type=float, default=0.1,
                        help="probability of training on the null label (classifier-free guidance; default 0.1)")
    parser.add_argument("--ema", type=float, default=None,
                        help="EMA decay of the sampling weights (default 0.999; quick 0.995; smoke 0.9)")
    parser.add_argument("--guidance", default=None,
                        help="guidance weights w >= 0 (default 0,1,3; smoke 1,3: every w > 0 shares one compiled "
                             "sampler, w = 0 is another)")
    parser.add_argument("--per-class", type=int, default=None,
                        help="samples per class in each sampling batch and figure row (default 10; smoke 2)")
    parser.add_argument("--judge-samples", type=int, default=None,
                        help="samples per guidance weight scored by the judge, a multiple of 10 (default: as many as "
                             "its real reference row has, 270 digits, 2,000 CIFAR-10; smoke 20)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _check_args(args) -> None:
    """Resolve the sized defaults; one stderr line and exit 2 for a value that cannot run."""
    if args.data not in ("digits", "cifar10"):
        _fail(f"--data must be digits or cifar10, got {args.data!r}")
    if args.schedule not in ("cosine", "linear"):
        _fail(f"--schedule must be cosine or linear, got {args.schedule!r}")
    args.steps = args.steps if args.steps is not None else sized(args, 2500, 800, 20)
    args.batch_size = args.batch_size if args.batch_size is not None else sized(args, 128, 128, 32)
    args.timesteps = args.timesteps if args.timesteps is not None else sized(args, 100, 100, 10)
    args.ema = args.ema if args.ema is not None else sized(args, 0.999, 0.995, 0.9)
    args.per_class = args.per_class if args.per_class is not None else sized(args, 10, 10, 2)
    args.judge_samples = args.judge_samples if args.judge_samples is not None else sized(args, None, None, 20)
    if args.judge_samples is not None and (args.judge_samples < NUM_CLASSES or args.judge_samples % NUM_CLASSES):
        _fail(f"--judge-samples must be a positive multiple of {NUM_CLASSES} (balanced classes), "
              f"got {args.judge_samples}")
    for flag in ("steps", "batch_size", "timesteps", "per_class"):
        v = getattr(args, flag)
        if v < 1:
            _fail(f"--{flag.replace('_', '-')} must be >= 1, got {v}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        _fail(f"--lr must be a positive finite number, got {args.lr}")
    if not 0.0 <= args.cond_drop <= 1.0:
        _fail(f"--cond-drop must be in [0, 1], got {args.cond_drop}")
    if not 0.0 <= args.ema < 1.0:
        _fail(f"--ema must be in [0, 1), got {args.ema}")
    args.guidance = args.guidance if args.guidance is not None else sized(args, "0,1,3", "0,1,3", "1,3")
    try:
        ws = [float(v) for v in args.guidance.split(",") if v.strip()]
    except ValueError:
        ws = []
    if not ws or any(not (math.isfinite(w) and w >= 0) for w in ws):
        _fail(f"--guidance must be comma-separated numbers >= 0, got {args.guidance!r}")
    args.guidance_list = ws
    default_widths = "32,64,128" if args.data == "cifar10" else "32,64"
    text = args.widths if args.widths is not None else sized(args, default_widths, "16,32", "8")
    try:
        widths = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        widths = ()
    if not widths or any(w < 1 for w in widths):
        _fail(f"--widths must be comma-separated positive ints, got {text!r}")
    args.widths_t = widths


# ------------------------------------------------------------------------------------------------ data

def load_images(args):
    """(images in [-1, 1] float32 NHWC, labels int32, source)."""
    if args.data == "cifar10":
        if not args.data_dir:
            _fail("--data cifar10 needs a CIFAR-10 copy: pass --data-dir PATH (e.g. cifar10-jpeg.tar.gz) or set "
                  "$JAXNET_CIFAR10_DIR")
        ds = load_data(args, val_size=5000)   # the judge's split: its 5,000 held-out (reference) images unseen
        n = sized(args, 20000, 5000, 256)
    else:
        from experiments._common import digits_uint8
        ds = digits_uint8(args.seed)            # the judge's training split (1,257): its reference and test unseen
        n = sized(args, len(ds.y_train), len(ds.y_train), 256)
    x, y = ds.x_train, ds.y_train
    if n < len(x):
        idx = np.random.default_rng(args.seed).permutation(len(x))[:n]
        x, y = x[idx], y[idx]
    return x.astype(np.float32) / 255.0 * 2.0 - 1.0, y.astype(np.int32), args.data


def to_unit(images) -> np.ndarray:
    """Samples in about [-1, 1] -> float32 images in [0, 1] (the judge's input)."""
    return np.clip((np.asarray(images, np.float32) + 1.0) / 2.0, 0.0, 1.0)


def tile(images, rows: int, cols: int, pad: int = 1, value: float = 1.0) -> np.ndarray:
    """(rows*cols, H, W, C) images -> one (rows*(H+pad)-pad, cols*(W+pad)-pad, C) array, row-major."""
    from experiments.gan import tile as _tile
    return _tile(images, rows, cols, pad, value)


# ------------------------------------------------------------------------------------------------ training

def build_unet(args, image_shape):
    from jaxnet.generative import UNet
    unet = UNet(args.widths_t, num_classes=NUM_CLASSES)
    try:
        unet.output_shape((1, *image_shape))
    except ValueError as e:
        _fail(f"--widths {','.join(map(str, args.widths_t))}: {e}")
    return unet


def make_train_step(unet, schedule, opt, *, batch_size: int, cond_drop: float, ema: float):
    """``step(carry, key, x, y) -> (carry, loss)``, jitted; carry = (params, opt_state, ema_params).

    A batch of ``batch_size`` indices drawn uniformly from the device-resident data, ``ddpm_loss``
    (keys: ``k_batch, k_loss = split(key)``), Adam's update, the EMA of the weights."""
    import jax
    import optax

    from jaxnet.generative import ddpm_loss

    @jax.jit
    def step(carry, key, x, y):
        params, opt_state, ema_params = carry
        k_batch, k_loss = jax.random.split(key)
        i = jax.random.randint(k_batch, (batch_size,), 0, x.shape[0])

        def loss_fn(p):
            return ddpm_loss(unet.eps, p, x[i], k_loss, schedule, labels=y[i], cond_drop=cond_drop)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = opt.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        ema_params = jax.tree.map(lambda e, p: ema * e + (1.0 - ema) * p, ema_params, params)
        return (params, opt_state, ema_params), loss

    return step


def train(args, unet, schedule, x, y, progress: bool) -> dict:
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm.auto import tqdm

    # init: eager with a threefry key (on this CPU: ~2 s; a jitted init compiles for 5-20 s); the
    # training steps' keys: rbg (the loss and the sampler compile several times faster with them)
    params, _ = unet.init(jax.random.key(args.seed), (1, *x.shape[1:]))
    k_steps = jax.random.key(args.seed + 1, impl="rbg")
    warmup = max(1, args.steps // 20)
    lr = optax.warmup_cosine_decay_schedule(0.0, args.lr, warmup, max(args.steps, warmup + 1),
                                            end_value=0.05 * args.lr)
    opt = optax.adam(lr)
    step = make_train_step(unet, schedule, opt, batch_size=args.batch_size, cond_drop=args.cond_drop, ema=args.ema)
    carry = (params, opt.init(params), params)
    xd, yd = jnp.asarray(x), jnp.asarray(y)
    keys = jax.random.split(k_steps, args.steps)
    losses, pending = [], []
    with Timer() as t_first:
        carry, loss = step(carry, keys[0], xd, yd)
        pending.append(jax.block_until_ready(loss))
    with Timer() as t_train:
        for s in tqdm(range(1, args.steps), desc="ddpm", disable=not progress, mininterval=2.0):
            carry, loss = step(carry, keys[s], xd, yd)
            pending.append(loss)
            if len(pending) >= 200:
                losses.extend(np.asarray(jax.device_get(pending), np.float64).tolist())
                pending = []
        losses.extend(np.asarray(jax.device_get(pending), np.float64).tolist())
    n_params = int(sum(np.prod(a.shape) for a in jax.tree.leaves(params)))
    print(f"UNet{args.widths_t}: {n_params:,} params; {args.steps} steps at batch {args.batch_size}: "
          f"{t_train.elapsed:.1f} s (+ {t_first.elapsed:.1f} s first step); loss {losses[0]:.4f} -> "
          f"{np.mean(losses[-max(1, len(losses) // 20):]):.4f}", flush=True)
    return {"params": carry[0], "ema_params": carry[2], "losses": np.asarray(losses), "n_params": n_params,
            "train_time_s": t_train.elapsed, "first_step_s": t_first.elapsed, "warmup_steps": warmup}


def loss_curve(losses, chunks: int = 50) -> dict:
    """The per-step losses as ``chunks`` consecutive means (the first chunk starts at step 1)."""
    losses = np.asarray(losses, np.float64)
    parts = np.array_split(np.arange(len(losses)), min(chunks, len(losses)))
    return {"step_end": [int(p[-1]) + 1 for p in parts], "mean_loss": [float(losses[p].mean()) for p in parts]}


# ------------------------------------------------------------------------------------------------ sampling

def draw_samples(args, unet, params, schedule, image_shape, progress: bool) -> dict:
    """Per guidance weight: the samples (judge batches of 10 K, balanced labels; the first batch is
    the figure's grid) and the w = 0 trajectory frames of the first batch."""
    import jax
    import jax.numpy as jnp

    from jaxnet.generative import sample

    k = args.per_class
    n_batch = NUM_CLASSES * k
    labels = jnp.asarray(np.arange(n_batch) // k, jnp.int32)          # rows of the grid: class 0..9
    q = args.judge_samples // NUM_CLASSES                              # samples per class for the judge
    batches = max(1, math.ceil(q / k))
    keep = np.concatenate([np.flatnonzero(np.arange(n_batch) % k < min(k, q - b * k)) + b * n_batch
                           for b in range(batches)])                  # balanced: the first columns of the last batch
    t_steps = schedule.num_steps                                      # frames every `every` steps, x_0 the last
    every = min(d for d in range(1, t_steps + 1) if t_steps % d == 0 and t_steps // d <= 10)
    key = jax.random.key(args.seed + 2, impl="rbg")
    out, frames, times = {}, None, {}
    for w in args.guidance_list:
        got = []
        with Timer() as t:
            for b in range(batches):
                x0, fr = sample(unet.eps, params, jax.random.fold_in(key, b), (n_batch, *image_shape), schedule,
                                labels=labels, guidance=w, clip=1.0, every=every)
                got.append(np.asarray(x0))
                if b == 0 and frames is None:
                    frames = np.asarray(fr)
        times[w] = t.elapsed
        out[w] = to_unit(np.concatenate(got))
        print(f"sampled {len(out[w])} images at w = {w:g} ({batches} x {n_batch}, {schedule.num_steps} steps): "
              f"{t.elapsed:.1f} s", flush=True)
    return {"samples": out, "keep": keep, "labels": np.tile(np.asarray(labels), batches)[keep],
            "frames": to_unit(frames), "every": every, "times": times}


def judge_scores(judge, images, labels) -> dict:
    """The judge's score dict plus ``label_agreement``: the fraction of samples the judge's
    classifier puts in the class they were generated for (what guidance should raise)."""
    out = dict(judge.score(images))
    out["label_agreement"] = float(np.mean(np.argmax(judge.probs(images), axis=1) == np.asarray(labels)))
    return out


# ------------------------------------------------------------------------------------------------ figures

def plot_loss(losses, path: str, title: str) -> str:
    from experiments.gan import smooth
    fig = figure((7.5, 4.2))
    ax = fig.subplots()
    steps = np.arange(1, len(losses) + 1)
    ax.plot(steps, losses, color="0.7", lw=0.5, label="per step")
    ax.plot(steps, smooth(losses, max(1, len(losses) // 40)), color="C0", label="moving average")
    ax.set(xlabel="step", ylabel="ddpm_loss (MSE of the predicted noise)", yscale="log", title=title)
    grid_legend((ax,))
    return save_figure(fig, path)


def plot_samples(draw: dict, scores: dict, per_class: int, path: str) -> str:
    ws = list(draw["samples"])
    fig = figure((3.2 * len(ws) + 0.4, 3.6))
    axes = fig.subplots(1, len(ws), squeeze=False)[0]
    n = NUM_CLASSES * per_class
    for ax, w in zip(axes, ws):
        img = tile(draw["samples"][w][:n], NUM_CLASSES, per_class)
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img, cmap="gray", vmin=0, vmax=1,
                  interpolation="nearest")
        h = img.shape[0] / NUM_CLASSES
        ax.set_yticks([(i + 0.5) * h for i in range(NUM_CLASSES)], [str(i) for i in range(NUM_CLASSES)], fontsize=7)
        ax.set_xticks([])
        sc = scores.get(w, {})
        extra = (f"\nFréchet {sc['frechet']:.3g}, classifier score {sc['classifier_score']:.3g}"
                 if "frechet" in sc else "")
        ax.set_title(f"w = {w:g}{extra}", fontsize=9)
    axes[0].set_ylabel("class label", fontsize=8)
    return save_figure(fig, path, "DDPM samples per guidance weight (rows: the class asked for)")


def plot_trajectory(frames, every: int, num_steps: int, per_class: int, path: str, w: float = 0.0) -> str:
    """One image: a row per class (its first sample), a column per frame, x_T on the left."""
    idx = [c * per_class for c in range(NUM_CLASSES)]                # the first sample of each class
    cols = frames.shape[0]
    grid = tile(np.stack([frames[c, i] for i in idx for c in range(cols)]), len(idx), cols)
    fig = figure((0.75 * cols + 0.8, 0.75 * len(idx) + 0.8))
    ax = fig.subplots()
    ax.imshow(grid.squeeze(-1) if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    w = grid.shape[1] / cols
    ax.set_xticks([(c + 0.5) * w for c in range(cols)], [f"t={num_steps - c * every}" for c in range(cols)], fontsize=8)
    h = grid.shape[0] / len(idx)
    ax.set_yticks([(r + 0.5) * h for r in range(len(idx))], [str(r) for r in range(len(idx))], fontsize=8)
    ax.set_ylabel("class label")
    return save_figure(fig, path, f"reverse process, w = {w:g} (x_T on the left)")


# ------------------------------------------------------------------------------------------------ main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    _check_args(args)
    from experiments._judge import load_judge
    from jaxnet.generative import make_schedule

    with Timer() as t_load:
        x, y, source = load_images(args)
    image_shape = tuple(x.shape[1:])
    unet = build_unet(args, image_shape)
    if args.batch_size > len(x):
        _fail(f"--batch-size {args.batch_size} is larger than the {len(x)} training images")
    schedule = make_schedule(args.timesteps, args.schedule, *((1e-4 * 1000 / args.timesteps,
                                                                0.02 * 1000 / args.timesteps)
                                                               if args.schedule == "linear" and args.timesteps < 1000
                                                               else ()))
    print(f"{source}: {len(x)} training images {image_shape} in [-1, 1] ({t_load.elapsed:.1f} s); "
          f"{args.schedule} schedule, T = {args.timesteps}", flush=True)
    with Timer() as t_judge:
        judge = load_judge(source, args)
    if args.judge_samples is None:
        args.judge_samples = judge.n_reference // NUM_CLASSES * NUM_CLASSES
    print(f"judge: {judge!r} ({t_judge.elapsed:.1f} s); {args.judge_samples} samples per guidance weight", flush=True)
    progress = not (args.smoke or args.no_progress)
    tr = train(args, unet, schedule, x, y, progress)
    draw = draw_samples(args, unet, tr["ema_params"], schedule, image_shape, progress)

    with Timer() as t_judge:
        scores = {w: judge_scores(judge, s[draw["keep"]], draw["labels"]) for w, s in draw["samples"].items()}
        noise = np.random.default_rng(args.seed).uniform(0, 1, (args.judge_samples, *image_shape)).astype(np.float32)
        noise_scores = dict(judge.score(noise))
        n_ref = min(args.judge_samples, judge.n_reference)
        reference = {**judge.real_score(n_ref), "n": n_ref}
    print(f"judge scores: {t_judge.elapsed:.1f} s", flush=True)

    os.makedirs(args.out, exist_ok=True)
    losses = tr["losses"]
    n20 = min(max(5, len(losses) // 20), max(1, len(losses) // 2))   # 5% of the steps, at least 5
    first, last = float(np.mean(losses[:n20])), float(np.mean(losses[-n20:]))
    figures = {
        "loss": os.path.basename(plot_loss(losses, os.path.join(args.out, "ddpm_loss.png"),
                                           f"DDPM on {source}: loss {first:.3f} (first 5%) -> {last:.3f} (last 5%)")),
        "samples": os.path.basename(plot_samples(draw, scores, args.per_class,
                                                 os.path.join(args.out, "ddpm_samples.png"))),
        "trajectory": os.path.basename(plot_trajectory(draw["frames"], draw["every"], args.timesteps, args.per_class,
                                                       os.path.join(args.out, "ddpm_trajectory.png"),
                                                       args.guidance_list[0])),
    }
    claims = {"loss_decreases": last < first, "finite": bool(np.all(np.isfinite(losses))),
              "frechet_below_noise": {f"{w:g}": scores[w]["frechet"] < noise_scores["frechet"] for w in scores},
              "frechet_ratio_to_noise": {f"{w:g}": scores[w]["frechet"] / noise_scores["frechet"] for w in scores},
              "label_agreement": {f"{w:g}": scores[w]["label_agreement"] for w in scores}}
    results = {"data_source": source, "n_train": int(len(x)), "image_shape": list(image_shape),
               "model": f"UNet(widths={args.widths_t}, blocks=1, num_classes={NUM_CLASSES})",
               "n_params": tr["n_params"], "schedule": args.schedule, "timesteps": args.timesteps,
               "steps": args.steps, "batch_size": args.batch_size, "peak_lr": args.lr,
               "warmup_steps": tr["warmup_steps"], "ema": args.ema, "cond_drop": args.cond_drop,
               "train_time_s": tr["train_time_s"], "first_step_s": tr["first_step_s"],
               "loss_first_5pct": first, "loss_last_5pct": last, "loss_curve": loss_curve(losses),
               "guidance": args.guidance_list, "judge_samples": args.judge_samples,
               "sample_time_s": {f"{w:g}": t for w, t in draw["times"].items()},
               "judge": {f"{w:g}": s for w, s in scores.items()}, "judge_reference": reference,
               "judge_test_accuracy": judge.test_accuracy, "judge_checkpoint": judge.path,
               "judge_noise": noise_scores, "figures": figures, "claims": claims}
    rows = [[f"DDPM, w = {w:g}", *[float(scores[w][k]) for k in JUDGE_KEYS], scores[w]["label_agreement"]]
            for w in args.guidance_list]
    rows.append([f"real held-out images (n = {n_ref})", *[float(reference[k]) for k in JUDGE_KEYS], "-"])
    rows.append(["uniform noise", *[float(noise_scores[k]) for k in JUDGE_KEYS], "-"])
    return finish(args, results, ["samples", *JUDGE_KEYS, "label_agreement"], rows,
                  f"\nDDPM on {source} ({args.steps} steps, loss {first:.3f} -> {last:.3f}): the judge's scores of "
                  f"{args.judge_samples} samples per guidance weight")


if __name__ == "__main__":
    main()
