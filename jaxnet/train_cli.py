"""``jaxnet train``: the main job, from the command line.

Writes into ``--out``: ``metrics.jsonl`` (one line per epoch), ``curves.png``,
``checkpoint`` (atomic, resumable) and ``summary.json``.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

DATASETS = ("digits", "cifar10")
DEFAULTS = dict(model="convnet", data="digits", epochs=15, batch_size=64, optimizer="adam", lr=3e-3,
                schedule="cosine", weight_decay=1e-4, seed=0, out="runs/digits")


def add_train_parser(sub) -> None:
    from jaxnet.nn import MODELS
    from jaxnet.optim import OPTIMIZER_NAMES
    from jaxnet.optim.schedules import SCHEDULE_NAMES

    t = sub.add_parser("train", help="train a model (default: the small convnet on the embedded digits)",
                       description=__doc__.splitlines()[0])
    t.add_argument("--model", default=DEFAULTS["model"], help=f"one of {', '.join(MODELS)} (default %(default)s)")
    t.add_argument("--data", default=DEFAULTS["data"], help=f"one of {', '.join(DATASETS)} (default %(default)s)")
    t.add_argument("--data-dir", default=None,
                   help="CIFAR-10 location (folder, image-folder root or the .tar.gz); "
                        "default: $JAXNET_CIFAR10_DIR")
    t.add_argument("--epochs", type=int, default=DEFAULTS["epochs"])
    t.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    t.add_argument("--optimizer", default=DEFAULTS["optimizer"], help=f"one of {', '.join(OPTIMIZER_NAMES)}")
    t.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate")
    t.add_argument("--schedule", default=DEFAULTS["schedule"], help=f"one of {', '.join(SCHEDULE_NAMES)}")
    t.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                   help="L2 strength on weights (biases and norm parameters are skipped)")
    t.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this global norm")
    t.add_argument("--impl", choices=("manual", "auto"), default="manual",
                   help="backward path: hand-written (manual) or autodiff (auto)")
    t.add_argument("--augment", action="store_true", help="random crop (pad 4 on 32x32, 1 on 8x8) + flip")
    t.add_argument("--patience", type=int, default=None, help="early stopping after this many epochs")
    t.add_argument("--out", default=DEFAULTS["out"], help="output folder (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--devices", type=int, default=None, help="data parallel over the first N local devices")
    t.add_argument("--seed", type=int, default=DEFAULTS["seed"])
    t.add_argument("--no-progress", action="store_true", help="no progress bar")
    t.set_defaults(func=run_train)


def load_dataset(name: str, data_dir=None, *, seed: int = 0):
    """A normalised float32 NHWC :class:`~jaxnet.data.Dataset` by name (per-channel stats of train)."""
    from jaxnet import data as D
    if name == "digits":
        ds = D.load_digits(seed=seed)
    elif name == "cifar10":
        raw = D.load_cifar10(data_dir, seed=seed)
        ds = raw.replace(x_train=D.to_float(raw.x_train), x_val=D.to_float(raw.x_val), x_test=D.to_float(raw.x_test))
    else:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return D.normalize_dataset(ds, "channel")


def _validate(args):
    from jaxnet.cli import UsageError
    from jaxnet.nn import MODELS
    from jaxnet.optim import OPTIMIZER_NAMES
    from jaxnet.optim.schedules import SCHEDULE_NAMES
    if args.model not in MODELS:
        raise UsageError(f"unknown model {args.model!r}; expected one of {', '.join(MODELS)}")
    if args.data not in DATASETS:
        raise UsageError(f"unknown data set {args.data!r}; expected one of {', '.join(DATASETS)}")
    if args.optimizer not in OPTIMIZER_NAMES:
        raise UsageError(f"unknown optimizer {args.optimizer!r}; expected one of {', '.join(OPTIMIZER_NAMES)}")
    if args.schedule not in SCHEDULE_NAMES:
        raise UsageError(f"unknown schedule {args.schedule!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"invalid learning rate {args.lr}: it must be a positive number")
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.weight_decay < 0:
        raise UsageError(f"--weight-decay must be >= 0, got {args.weight_decay}")
    if args.resume:
        ckpt = Path(args.out) / "checkpoint"
        if not Path(args.out).is_dir():
            raise UsageError(f"--resume: the folder {args.out!r} does not exist (pass the --out of an earlier run)")
        if not ckpt.exists():
            raise UsageError(f"--resume: no checkpoint in {args.out!r} (expected {ckpt})")


def build_model(name: str, num_classes: int, impl: str):
    from jaxnet.nn import get_model
    return get_model(name, num_classes=num_classes, impl=impl)


def run_train(args) -> int:
    from jaxnet.cli import UsageError
    _validate(args)
    import jax

    from jaxnet import enable_compilation_cache

    enable_compilation_cache()  # a second run reuses the compiled steps ($JAXNET_COMPILATION_CACHE=0: off)

    from jaxnet.nn import summary as model_summary
    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import CheckpointError, evaluate, fit

    try:
        ds = load_dataset(args.data, args.data_dir, seed=args.seed)
    except FileNotFoundError as err:
        raise UsageError(str(err).splitlines()[0]) from None
    n_train = ds.x_train.shape[0]
    if args.batch_size > n_train:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({n_train} examples)")

    model = build_model(args.model, ds.num_classes, args.impl)
    steps = args.epochs * math.ceil(n_train / args.batch_size)
    optimizer = make_optimizer(args.optimizer, make_schedule(args.schedule, args.lr, total_steps=steps),
                               weight_decay=args.weight_decay, clip_norm=args.clip_norm)
    augment = None
    if args.augment:
        augment = {"crop_padding": 4 if ds.input_shape[0] >= 32 else 1, "flip": args.data != "digits"}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"jaxnet train: {args.model} on {args.data} ({n_train} train / {ds.x_val.shape[0]} val / "
          f"{ds.x_test.shape[0]} test, {ds.input_shape}), impl={args.impl}, devices={jax.device_count()} "
          f"{jax.default_backend()}", file=sys.stderr)
    if not args.no_progress:
        print(model_summary(model, (args.batch_size,) + tuple(ds.input_shape)), file=sys.stderr)

    start = time.perf_counter()
    try:
        result = fit(model, ds, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                     key=args.seed, impl=args.impl, augment=augment, out_dir=out,
                     early_stopping_patience=args.patience, resume=args.resume,
                     progress=not args.no_progress, devices=args.devices)
    except (CheckpointError, ValueError) as err:
        raise UsageError(str(err)) from None
    train_seconds = time.perf_counter() - start
    test_loss, test_acc = evaluate(model, result.best_params, result.best_state, ds.x_test, ds.y_test,
                                   args.batch_size, impl=args.impl)
    h = result.history
    ips = h["images_per_sec"][1:] or h["images_per_sec"]       # epoch 1 includes compilation
    summary = {
        "test_accuracy": float(test_acc), "test_loss": float(test_loss),
        "val_accuracy": float(result.best_val_acc), "best_epoch": int(result.best_epoch),
        "epochs": len(h["epoch"]), "train_seconds": round(train_seconds, 3),
        "images_per_second": float(sorted(ips)[len(ips) // 2]) if ips else float("nan"),
        "impl": args.impl, "model": args.model, "data": args.data, "stopped_early": result.stopped_early,
        "devices": jax.device_count() if args.devices is None else args.devices,
        "backend": jax.default_backend(), "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    tmp = out / "summary.json.tmp"
    tmp.write_text(json.dumps(summary, indent=2))
    os.replace(tmp, out / "summary.json")
    print(f"test accuracy {test_acc:.4f} (best val {result.best_val_acc:.4f} at epoch {result.best_epoch}), "
          f"{train_seconds:.1f} s, {summary['images_per_second']:.0f} images/s (median epoch) -> {out}/")
    return 0
