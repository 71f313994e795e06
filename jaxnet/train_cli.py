"""``jaxnet train``: the main job, from the command line.

Writes into ``--out``: ``metrics.jsonl`` (one line per epoch), ``curves.png``,
``checkpoint`` (atomic, resumable) and ``summary.json``.

Every argument is checked before any work starts; bad input and faults are one line
(:mod:`jaxnet.errors`): exit status 2 for a bad argument or input, 1 for a fault (a diverged
run, a full disk, a folder in use by another run, out of memory), 130 for Ctrl-C (after
saving the last finished epoch).
"""
from __future__ import annotations

import contextlib
import json
import math
import sys
import time
import warnings
from pathlib import Path

from jaxnet.errors import FaultError, Interrupted, UsageError, one_line

DATASETS = ("digits", "cifar10")
IMPLS = {"manual": "manual", "autodiff": "auto", "auto": "auto"}  # flag value -> jaxnet impl
DEFAULTS = dict(model="convnet", data="digits", epochs=15, batch_size=64, optimizer="adam", lr=3e-3,
                schedule="cosine", weight_decay=1e-4, seed=0, out="runs/digits")
SEED_MAX = 2**32 - 1
#: settings a resumed run must share with the run that wrote the checkpoint (--allow-changed
#: overrides); --epochs, --impl, --devices, --data-dir and the output options may change
RESUME_SETTINGS = ("model", "data", "batch_size", "optimizer", "lr", "schedule", "weight_decay",
                   "clip_norm", "augment", "patience", "seed", "on_nonfinite")


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
                        "default: $JAXNET_CIFAR10_DIR; only with --data cifar10")
    t.add_argument("--epochs", type=int, default=DEFAULTS["epochs"], help="default %(default)s")
    t.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"], help="default %(default)s")
    t.add_argument("--optimizer", default=DEFAULTS["optimizer"], help=f"one of {', '.join(OPTIMIZER_NAMES)}")
    t.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate (default %(default)s)")
    t.add_argument("--schedule", default=DEFAULTS["schedule"], help=f"one of {', '.join(SCHEDULE_NAMES)}")
    t.add_argument("--weight-decay", type=float, default=DEFAULTS["weight_decay"],
                   help="L2 strength on weights (biases and norm parameters are skipped)")
    t.add_argument("--clip-norm", type=float, default=None, help="clip gradients to this global norm")
    t.add_argument("--impl", default="manual", metavar="{manual,autodiff}",
                   help="backward path: hand-written (manual) or autodiff; 'auto' is an alias of autodiff")
    t.add_argument("--augment", action="store_true", help="random crop (pad 4 on 32x32, 1 on 8x8) + flip")
    t.add_argument("--patience", type=int, default=None, help="early stopping after this many epochs")
    t.add_argument("--on-nonfinite", default="stop", choices=("stop", "skip"),
                   help="a step with a NaN/inf loss or gradient: stop the run (exit 1) or skip the "
                        "update (default %(default)s)")
    t.add_argument("--out", default=DEFAULTS["out"], help="output folder (default %(default)s)")
    t.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    t.add_argument("--overwrite", action="store_true",
                   help="start afresh in an --out that holds an earlier run's checkpoint")
    t.add_argument("--allow-changed", action="store_true",
                   help="--resume even if the settings differ from the checkpoint's run")
    t.add_argument("--devices", type=int, default=None,
                   help="data parallel over the first N devices (default: all; every process's with --coordinator)")
    t.add_argument("--model-parallel", type=int, default=1, metavar="M",
                   help="tensor parallel: split attention heads and feed-forward units over groups of M devices "
                        "(default 1: data parallel only)")
    t.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                   help="several processes: jax.distributed's coordinator (process 0 listens there)")
    t.add_argument("--num-processes", type=int, default=None, help="with --coordinator: how many processes")
    t.add_argument("--process-id", type=int, default=None, help="with --coordinator: this process's rank, 0..P-1")
    t.add_argument("--coordinator-timeout", type=int, default=120, metavar="SECONDS",
                   help="with --coordinator: how long to wait for every process to join (default %(default)s)")
    t.add_argument("--seed", type=int, default=DEFAULTS["seed"], help=f"0..{SEED_MAX} (default %(default)s)")
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


def _float32_range(flag: str, value: float, *, minimum: float, allow_zero: bool) -> None:
    """A finite value >= minimum (> 0 unless allow_zero) that float32 represents as nonzero."""
    import numpy as np
    tiny, big = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    lowest = "0" if allow_zero else f"{minimum:g}"
    if not math.isfinite(value) or value < minimum or (value == minimum and not allow_zero):
        raise UsageError(f"{flag} {value} is invalid: it must be a finite number "
                         f"{'>=' if allow_zero else '>'} {lowest}")
    if value > big:
        raise UsageError(f"{flag} {value} is too large: float32 holds at most {big:.3g}")
    if value != 0 and value < tiny:
        raise UsageError(f"{flag} {value} is 0 in float32 training (the smallest normal float32 is {tiny:.3g})")


def _validate(args) -> None:
    """Every check that needs neither jax nor the data: names, numbers, flag combinations, --out."""
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
    if args.impl not in IMPLS:
        raise UsageError(f"unknown --impl {args.impl!r}; expected manual or autodiff")
    args.impl = "autodiff" if IMPLS[args.impl] == "auto" else args.impl
    if not (math.isfinite(args.lr) and args.lr > 0):
        raise UsageError(f"invalid learning rate {args.lr}: it must be a positive number")
    _float32_range("--lr", args.lr, minimum=0.0, allow_zero=False)
    _float32_range("--weight-decay", args.weight_decay, minimum=0.0, allow_zero=True)
    if args.clip_norm is not None:
        _float32_range("--clip-norm", args.clip_norm, minimum=0.0, allow_zero=False)
    if args.epochs < 1:
        raise UsageError(f"--epochs must be >= 1, got {args.epochs}")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.patience is not None and args.patience < 1:
        raise UsageError(f"--patience must be >= 1, got {args.patience}")
    if not 0 <= args.seed <= SEED_MAX:
        raise UsageError(f"--seed must be in 0..{SEED_MAX}, got {args.seed}")
    if args.devices is not None and args.devices < 1:
        raise UsageError(f"--devices must be >= 1, got {args.devices}")
    if args.model_parallel < 1:
        raise UsageError(f"--model-parallel must be >= 1, got {args.model_parallel}")
    if args.devices and args.devices % args.model_parallel:
        raise UsageError(f"--model-parallel {args.model_parallel} does not divide --devices {args.devices}")
    groups = args.devices // args.model_parallel if args.devices else None
    if args.batch_size and groups and args.batch_size % groups:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by the {groups} data-parallel "
                         f"groups (--devices {args.devices} / --model-parallel {args.model_parallel})")
    _validate_processes(args)
    if args.data_dir is not None and args.data != "cifar10":
        raise UsageError(f"--data-dir is only used with --data cifar10 (this run uses --data {args.data})")
    if args.resume and args.overwrite:
        raise UsageError("--resume and --overwrite contradict each other: pass one")
    if args.allow_changed and not args.resume:
        raise UsageError("--allow-changed only applies with --resume")
    if not args.out or not args.out.strip():
        raise UsageError("--out must name a folder, got an empty string")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {args.out!r} is a file, not a folder")
    if args.resume:
        ckpt = out / "checkpoint"
        if not out.is_dir():
            raise UsageError(f"--resume: the folder {args.out!r} does not exist (pass the --out of an earlier run)")
        if not ckpt.exists():
            raise UsageError(f"--resume: no checkpoint in {args.out!r} (expected {ckpt})")


def _validate_processes(args) -> None:
    """--coordinator, --num-processes and --process-id: all three or none, and consistent."""
    given = [args.coordinator is not None, args.num_processes is not None, args.process_id is not None]
    if not any(given):
        return
    if not all(given):
        raise UsageError("--coordinator, --num-processes and --process-id go together: pass all three")
    host, _, port = args.coordinator.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise UsageError(f"--coordinator must be HOST:PORT (e.g. localhost:12355), got {args.coordinator!r}")
    if args.num_processes < 1:
        raise UsageError(f"--num-processes must be >= 1, got {args.num_processes}")
    if not 0 <= args.process_id < args.num_processes:
        raise UsageError(f"--process-id must be in 0..{args.num_processes - 1}, got {args.process_id}")
    if args.coordinator_timeout < 1:
        raise UsageError(f"--coordinator-timeout must be >= 1 second, got {args.coordinator_timeout}")


def _coordinator_reachable(args) -> None:
    """Process 0: the coordinator's port is free to listen on; the others: it accepts connections
    within --coordinator-timeout.  (jax.distributed aborts the whole process, past any Python
    handler, when it cannot connect: check first, and say it in one line.)"""
    import socket
    host, _, port = args.coordinator.rpartition(":")
    port = int(port)
    if args.process_id == 0:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("", port))
            except OSError as err:
                raise FaultError(f"--coordinator {args.coordinator}: process 0 cannot listen on port {port} "
                                 f"({err.strerror or err}); choose a free port") from None
        return
    deadline = time.monotonic() + args.coordinator_timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return
        except OSError as err:
            if time.monotonic() >= deadline:
                raise FaultError(f"--coordinator {args.coordinator}: no coordinator answered within "
                                 f"{args.coordinator_timeout} s ({err.strerror or err}); start process 0 "
                                 f"there, or raise --coordinator-timeout") from None
            time.sleep(0.2)


def _start_processes(args, jax) -> None:
    """``jax.distributed.initialize`` when --coordinator is given (before any device is used)."""
    if args.coordinator is None:
        return
    _coordinator_reachable(args)
    try:
        jax.distributed.initialize(args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id,
                                   initialization_timeout=args.coordinator_timeout)
    except Exception as err:  # noqa: BLE001 - the coordinator's errors are long C++ messages
        raise FaultError(f"--coordinator {args.coordinator}: cannot join the {args.num_processes} processes as "
                         f"process {args.process_id} ({one_line(err)[:300]})") from None


def _validate_devices(args) -> None:
    import jax
    n = jax.device_count()
    if args.devices is not None and args.devices > n:
        raise UsageError(f"--devices {args.devices}: only {n} device{'s' if n != 1 else ''} "
                         f"({jax.default_backend()})")
    used = n if args.devices is None else args.devices
    if used % args.model_parallel:
        raise UsageError(f"--model-parallel {args.model_parallel} does not divide the {used} devices used "
                         f"(pass --devices or another --model-parallel)")
    groups = used // args.model_parallel
    if args.batch_size % groups:
        raise UsageError(f"--batch-size {args.batch_size} is not divisible by the {groups} data-parallel groups "
                         f"of the {used} devices used (pass --devices or another --batch-size)")


def _make_out(args) -> Path:
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UsageError(f"--out {args.out!r}: cannot create the folder ({err.strerror or err})") from None
    return out


def run_settings(args) -> dict:
    """The settings stored in the checkpoint and compared on ``--resume``."""
    return {name: getattr(args, name) for name in RESUME_SETTINGS}


def _changed_settings(saved: dict, now: dict) -> list[str]:
    return [f"{name} {saved[name]!r} -> {now[name]!r}".replace("'", "")
            for name in RESUME_SETTINGS if name in saved and saved[name] != now[name]]


def _check_out_contents(args, out: Path) -> None:
    """Under the folder's lock: no silent overwrite; on --resume, the same settings."""
    from jaxnet.train import CheckpointError, read_checkpoint
    ckpt = out / "checkpoint"
    if not args.resume:
        if ckpt.exists() and not args.overwrite:
            raise UsageError(f"--out {args.out!r} holds the checkpoint of an earlier run; pass --resume to "
                             f"continue it or --overwrite to start afresh")
        return
    try:
        _, config, _, _ = read_checkpoint(ckpt)
    except CheckpointError as err:
        raise UsageError(f"--resume: {err}") from None
    saved = config.get("run")
    if not isinstance(saved, dict):
        return  # a checkpoint without the run's settings: nothing to compare
    changed = _changed_settings(saved, run_settings(args))
    if changed and not args.allow_changed:
        raise UsageError(f"--resume: the run's settings changed: {', '.join(changed)}; "
                         f"pass --allow-changed to resume anyway")
    if changed:
        print(f"jaxnet: warning: resuming with changed settings: {', '.join(changed)}", file=sys.stderr)


def build_model(name: str, num_classes: int, impl: str):
    from jaxnet.nn import get_model
    return get_model(name, num_classes=num_classes, impl=impl)


def _is_out_of_memory(err: BaseException) -> bool:
    text = str(err)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _memory_advice(info, batch_size: int) -> str:
    from jaxnet.nn.summary import format_bytes
    s, avail = info
    per = f"about {format_bytes(s.activation_bytes_per_example)} of activations per example"
    if avail is None:
        return per
    fits = s.largest_batch(avail)
    fit_text = f"about --batch-size {fits} would fit" if fits >= 1 else "not even a batch of 1 fits"
    return f"{per}; {fit_text} in the {format_bytes(avail)} available"


def _memory_check(model, args, input_shape, devices: int):
    """The model summary (nothing runs) and the memory available; warns (one line) when the
    estimate of a training step exceeds it. Returns ``(summary, available bytes or None)``."""
    from jaxnet.nn import summary as model_summary
    from jaxnet.nn.summary import available_memory, format_bytes
    per_device = max(args.batch_size // max(devices, 1), 1)
    s = model_summary(model, (per_device,) + tuple(input_shape))
    avail = available_memory()
    need = s.training_bytes()
    if avail is not None and need > avail:
        print(f"jaxnet: warning: a training step at --batch-size {args.batch_size} needs about "
              f"{format_bytes(need)} ({format_bytes(s.total_activation_bytes)} of activations), more than the "
              f"{format_bytes(avail)} available; {_memory_advice((s, avail), args.batch_size)}", file=sys.stderr)
    return s, avail


@contextlib.contextmanager
def _one_line_warnings():
    """Python warnings raised while training printed as ``jaxnet: warning: ...`` (one line)."""
    def show(message, category, filename, lineno, file=None, line=None):
        print(f"jaxnet: warning: {one_line(message)}", file=sys.stderr if file is None else file)

    with warnings.catch_warnings():
        warnings.showwarning = show
        yield


def run_train(args) -> int:
    _validate(args)
    from jaxnet.ops.onednn import keep_large_blocks_at_start
    keep_large_blocks_at_start()   # before JAX's threads start (see there; JAXNET_MALLOC=0 opts out)
    import jax

    _start_processes(args, jax)
    _validate_devices(args)
    out = _make_out(args)

    from jaxnet.train.runfiles import FolderInUseError, hold_folder
    with contextlib.ExitStack() as stack:
        try:
            if jax.process_index() == 0:  # several processes: process 0 writes --out
                stack.enter_context(hold_folder(out))
        except FolderInUseError as err:
            raise FaultError(f"--out {args.out!r} is in use by another jaxnet run (pid {err.pid}; lock file "
                             f"{err.path}); wait for it to finish or choose another --out") from None
        except OSError as err:
            raise UsageError(f"--out {args.out!r} is not writable ({err.strerror or err})") from None
        with _one_line_warnings():
            return _run_locked(args, out, jax)


def _to_host(result, jax):
    """(best params, best state) as host numpy arrays (gathered first when split over processes)."""
    from jaxnet.train.parallel import gather
    return jax.device_get(gather((result.best_params, result.best_state)))


def _run_locked(args, out: Path, jax) -> int:
    _check_out_contents(args, out)

    from jaxnet import enable_compilation_cache

    enable_compilation_cache()  # a second run reuses the compiled steps ($JAXNET_COMPILATION_CACHE=0: off)

    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import CheckpointError, evaluate, fit
    from jaxnet.train.fit import CheckpointWriteError, NonFiniteError, TrainingInterrupted
    from jaxnet.train.runfiles import atomic_write_text

    try:
        ds = load_dataset(args.data, args.data_dir, seed=args.seed)
    except (FileNotFoundError, NotADirectoryError, ValueError) as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise FaultError(f"cannot read the {args.data} data: {err}") from None
    n_train = ds.x_train.shape[0]
    if args.batch_size > n_train:
        raise UsageError(f"--batch-size {args.batch_size} is larger than the training set ({n_train} examples)")

    impl = IMPLS[args.impl]
    model = build_model(args.model, ds.num_classes, impl)
    steps = args.epochs * math.ceil(n_train / args.batch_size)
    optimizer = make_optimizer(args.optimizer, make_schedule(args.schedule, args.lr, total_steps=steps),
                               weight_decay=args.weight_decay, clip_norm=args.clip_norm)
    augment = None
    if args.augment:
        augment = {"crop_padding": 4 if ds.input_shape[0] >= 32 else 1, "flip": args.data != "digits"}
    devices = jax.device_count() if args.devices is None else args.devices
    writer = jax.process_index() == 0
    memory = _memory_check(model, args, ds.input_shape, devices // args.model_parallel)
    print(f"jaxnet train: {args.model} on {args.data} ({n_train} train / {ds.x_val.shape[0]} val / "
          f"{ds.x_test.shape[0]} test, {ds.input_shape}), impl={args.impl}, devices={devices} "
          f"{jax.default_backend()}" + (f", model parallel {args.model_parallel}" if args.model_parallel > 1 else "")
          + (f", process {jax.process_index()}/{jax.process_count()}" if jax.process_count() > 1 else ""),
          file=sys.stderr)
    if not args.no_progress and writer:
        print(memory[0], file=sys.stderr)

    start = time.perf_counter()
    try:
        result = fit(model, ds, optimizer=optimizer, epochs=args.epochs, batch_size=args.batch_size,
                     key=args.seed, impl=impl, augment=augment, out_dir=out,
                     early_stopping_patience=args.patience, resume=args.resume,
                     progress=not args.no_progress and writer, devices=args.devices,
                     model_parallel=args.model_parallel, on_nonfinite=args.on_nonfinite,
                     run_config=run_settings(args))
        train_seconds = time.perf_counter() - start
        best = _to_host(result, jax)  # each process evaluates its own copy: no collectives
        test_loss, test_acc = evaluate(model, *best, ds.x_test, ds.y_test, args.batch_size, impl=impl)
    except TrainingInterrupted as err:
        where = (f"checkpoint of epoch {err.checkpoint_epoch} in {err.path}; resume with --resume"
                 if err.checkpoint_epoch is not None else "no epoch finished, no checkpoint written")
        raise Interrupted(f"interrupted at epoch {err.epoch} step {err.step}; {where}") from None
    except NonFiniteError as err:
        advice = "a lower --lr or --clip-norm" if err.all_skipped else \
            "a lower --lr, --clip-norm or --on-nonfinite skip"
        raise FaultError(f"{err.what()}; {err.last_good()}; try {advice}") from None
    except CheckpointWriteError as err:
        raise FaultError(str(err)) from None
    except CheckpointError as err:
        raise UsageError(str(err)) from None
    except ValueError as err:
        raise UsageError(str(err)) from None
    except OSError as err:
        raise FaultError(f"{err.strerror or err}" + (f": {err.filename}" if err.filename else "")) from None
    except Exception as err:  # noqa: BLE001 - only XLA's out-of-memory errors become one line
        if _is_out_of_memory(err):
            raise FaultError(f"out of memory at --batch-size {args.batch_size}: "
                             f"{_memory_advice(memory, args.batch_size)}; lower --batch-size") from None
        raise
    h = result.history
    ips = h["images_per_sec"][1:] or h["images_per_sec"]       # epoch 1 includes compilation
    summary = {
        "test_accuracy": float(test_acc), "test_loss": float(test_loss),
        "val_accuracy": float(result.best_val_acc), "best_epoch": int(result.best_epoch),
        "epochs": len(h["epoch"]), "train_seconds": round(train_seconds, 3),
        "images_per_second": float(sorted(ips)[len(ips) // 2]) if ips else float("nan"),
        "impl": args.impl, "model": args.model, "data": args.data, "stopped_early": result.stopped_early,
        "skipped_steps": int(result.skipped_steps),
        "devices": devices, "model_parallel": args.model_parallel, "processes": jax.process_count(),
        "backend": jax.default_backend(),
        "args": {k: v for k, v in vars(args).items() if k != "func"},
    }
    if not writer:
        return 0
    try:
        atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    except OSError as err:
        raise FaultError(f"cannot write {out / 'summary.json'} ({err.strerror or err})") from None
    if result.skipped_steps:
        print(f"jaxnet: skipped {result.skipped_steps} update(s) with a non-finite loss or gradient "
              f"(--on-nonfinite skip)", file=sys.stderr)
    print(f"test accuracy {test_acc:.4f} (best val {result.best_val_acc:.4f} at epoch {result.best_epoch}), "
          f"{train_seconds:.1f} s, {summary['images_per_second']:.0f} images/s (median epoch) -> {out}/")
    return 0
