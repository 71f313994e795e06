"""The training loop: ``fit`` (epochs of jitted steps, validation, best model, early stopping,
an optional EMA of the params, metrics, curves, checkpoints, exact resume) and ``evaluate``."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
import warnings
from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet.train.averaging import ema_update
from jaxnet.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jaxnet.train.parallel import check_batch_divisible, make_mesh, replicate, resolve_devices
from jaxnet.train.state import TrainState, as_key, create_train_state
from jaxnet.train.step import batches, make_eval_step, make_train_step, num_batches

__all__ = ["FitResult", "fit", "evaluate", "HISTORY_KEYS", "CHECKPOINT_NAME", "METRICS_NAME", "CURVES_NAME"]

HISTORY_KEYS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec", "epoch_time",
)
CHECKPOINT_NAME = "checkpoint"
METRICS_NAME = "metrics.jsonl"
CURVES_NAME = "curves.png"
_POSTFIX_EVERY = 20


@dataclasses.dataclass
class FitResult:
    """What :func:`fit` returns.

    history: dict of per-epoch lists, keys :data:`HISTORY_KEYS`: ``epoch`` (1-based),
      ``train_loss`` and ``train_acc`` (running masked means over the epoch's training
      batches, in train mode), ``val_loss`` and ``val_acc`` (eval mode, whole validation
      split; NaN if it is empty), ``lr`` (the rate of the epoch's last update),
      ``images_per_sec`` (training examples / training time; epoch 1 includes compilation),
      ``epoch_time`` (seconds, validation included).
    best_params, best_state: copies taken at the epoch with the highest validation accuracy
      (training accuracy when there is no validation split); first such epoch on ties.
    best_epoch: that epoch (1-based; 0 if no epoch ran). best_val_acc: its accuracy.
    train_state: the final :class:`TrainState` (after the last epoch run).
    stopped_early: whether early stopping ended the run.
    ema_params: with ``fit(..., ema_decay=d)``: the exponential moving average of the params
      after the last update (warmup variant, :func:`jaxnet.train.averaging.ema_update` with
      ``step``); evaluate it with the final state, ``train_state.state``. None otherwise.
    """

    history: dict[str, list]
    best_params: Any
    best_state: Any
    best_epoch: int
    best_val_acc: float
    train_state: TrainState
    stopped_early: bool = False
    ema_params: Any = None


def _run_eval(eval_step: Callable, params, state, x, y, batch_size: int) -> tuple[float, float]:
    if len(x) == 0:
        return float("nan"), float("nan")
    sums = [eval_step(params, state, xb, yb, mb) for xb, yb, mb in batches(x, y, batch_size)]
    loss, correct, count = np.sum(np.asarray(jax.device_get(sums), np.float64), axis=0)
    return float(loss / count), float(correct / count)


@functools.lru_cache(maxsize=32)
def _cached_eval_step(model, loss_fn, impl):
    return make_eval_step(model, loss_fn=loss_fn, impl=impl)


@functools.lru_cache(maxsize=8)
def _cached_ema_step(decay: float) -> Callable:
    """Jitted ``(ema, params, step) -> ema`` (ema donated); ``step`` = updates applied so far (>= 1)."""

    def ema_step(ema, params, step):
        return ema_update(ema, params, decay, step=step - 1)

    return jax.jit(ema_step, donate_argnums=(0,))


def evaluate(
    model: Any,
    params: Any,
    state: Any,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    loss_fn: Optional[Callable] = None,
    impl: Optional[str] = None,
) -> tuple[float, float]:
    """Mean loss and accuracy of ``model`` (train=False) over all of (x (N, ...), y (N,)).

    Fixed batches of ``batch_size``; the last partial batch is padded and masked, never
    dropped. Returns python floats (NaN, NaN) for N = 0. The jitted eval step is cached
    per (model, loss_fn, impl).
    """
    try:
        step = _cached_eval_step(model, loss_fn, impl)
    except TypeError:  # unhashable model or loss
        step = make_eval_step(model, loss_fn=loss_fn, impl=impl)
    return _run_eval(step, params, state, x, y, batch_size)


def _resolve_augment(augment: Any) -> Optional[Callable]:
    if augment is None or augment is False:
        return None
    from jaxnet.data import augment as augment_images

    if augment is True:
        return augment_images
    if isinstance(augment, dict):
        return functools.partial(augment_images, **augment)
    if callable(augment):
        return augment
    raise TypeError(
        f"augment must be None, True, a dict of jaxnet.data.augment options or a callable "
        f"(key, x) -> x, got {augment!r}"
    )


def _flat(tree: Any) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(tree))[0]
    return {jax.tree_util.keystr(p): np.asarray(v) for p, v in leaves}


def _unflat(flat: dict, like: Any, what: str, path: str) -> Any:
    leaves, treedef = jax.tree_util.tree_flatten_with_path(like)
    names = [jax.tree_util.keystr(p) for p, _ in leaves]
    if sorted(names) != sorted(flat):
        raise CheckpointError(f"checkpoint {path!r}: the saved best {what} do not match the model")
    return jax.tree_util.tree_unflatten(
        treedef, [jnp.asarray(flat[n], dtype=jnp.result_type(v)) for n, (_, v) in zip(names, leaves)]
    )


def _key_bits(key: jax.Array) -> np.ndarray:
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.asarray(key, np.uint32)


def _copy(tree: Any) -> Any:
    return jax.tree.map(jnp.copy, tree)


def _json_value(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _write_metrics_line(f, row: dict) -> None:
    f.write(json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n")
    f.flush()


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def fit(
    model: Any,
    data: Any,
    *,
    optimizer: optax.GradientTransformation,
    epochs: int,
    batch_size: int,
    key: Union[int, jax.Array],
    impl: Optional[str] = None,
    augment: Any = None,
    out_dir: Optional[Union[str, os.PathLike]] = None,
    early_stopping_patience: Optional[int] = None,
    checkpoint_every: int = 1,
    resume: bool = False,
    progress: bool = True,
    devices: Any = None,
    loss_fn: Optional[Callable] = None,
    ema_decay: Optional[float] = None,
    _trace_hook: Optional[Callable[[Callable], Callable]] = None,
) -> FitResult:
    """Train ``model`` on ``data.x_train``/``data.y_train``, validating on ``data.x_val`` each epoch.

    Args:
      model: the model protocol (``init``/``apply``), hashable.
      data: a :class:`jaxnet.data.Dataset` (x float32 NHWC, y int32).
      optimizer: optax transformation, e.g. ``jaxnet.optim.make_optimizer("adam", 1e-3)``.
      epochs: total number of epochs (a resumed run continues up to it).
      batch_size: examples per step, at most the training-set size; each epoch samples a fresh
        permutation (without replacement) from ``fold_in(data_key, epoch)``, the last partial
        batch is padded and masked.
      key: int seed or PRNG key; split into the init/step key and the data-order key.
      impl: ``"auto" | "manual" | None``: the ops' backward path inside the steps.
      augment: None, True (``jaxnet.data.augment`` defaults), a dict of its options, or a
        callable ``(key, x) -> x``; applied inside the train step.
      out_dir: if given: ``metrics.jsonl`` (one JSON line per epoch, flushed), ``curves.png``
        (at the end) and ``checkpoint`` (every ``checkpoint_every`` epochs and at the end).
      early_stopping_patience: stop after this many epochs without a new best validation accuracy.
      resume: continue from ``out_dir/checkpoint`` if it exists (same model and batch size),
        reproducing the uninterrupted run exactly (data order, dropout keys, optimizer state,
        history, best model and early-stopping counter all come from the checkpoint).
      progress: a tqdm bar with loss/acc/lr/img/s (refreshed every 20 steps).
      devices: data parallelism over these devices (None: all local devices, an int: the first
        n, or a list); the batch size must be divisible by their number.
      loss_fn: batch-mean loss ``(scores, labels) -> scalar``; default softmax cross-entropy.
      ema_decay: if given (in [0, 1)), keep an exponential moving average of the params (Polyak
        averaging), updated by a jitted step after every training step: the k-th update
        (k = 1, 2, ...) uses decay ``min(ema_decay, k / (9 + k))`` (the warmup variant of
        :func:`jaxnet.train.averaging.ema_update`). Returned as ``FitResult.ema_params``,
        saved in the checkpoint and restored on resume. It does not change training.
      _trace_hook: testing hook passed to :func:`make_train_step`/:func:`make_eval_step`.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError: bad epochs/batch size (e.g. larger than the training set), batch size not
        divisible by the device count, ``resume`` without ``out_dir``, ``ema_decay`` outside [0, 1).
      CheckpointError: the checkpoint to resume from is corrupted or from a different model.
    """
    epochs = _check_positive_int("epochs", epochs, minimum=0)
    batch_size = _check_positive_int("batch_size", batch_size)
    checkpoint_every = _check_positive_int("checkpoint_every", checkpoint_every)
    if early_stopping_patience is not None:
        early_stopping_patience = _check_positive_int("early_stopping_patience", early_stopping_patience)
    n_train = len(data.x_train)
    if batch_size > n_train:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({n_train} examples)")
    if resume and out_dir is None:
        raise ValueError("resume=True needs out_dir (where the checkpoint is)")
    if ema_decay is not None:
        if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float, np.floating)) \
                or not 0.0 <= float(ema_decay) < 1.0:
            raise ValueError(f"fit: ema_decay must be None or a float in [0, 1), got {ema_decay!r}")
        ema_decay = float(ema_decay)
    has_val = len(data.x_val) > 0

    mesh = make_mesh(resolve_devices(devices))
    check_batch_divisible(batch_size, mesh)
    augment_fn = _resolve_augment(augment)
    train_step = make_train_step(
        model, optimizer, loss_fn=loss_fn, impl=impl, augment_fn=augment_fn, mesh=mesh,
        _trace_hook=_trace_hook,
    )
    eval_step = make_eval_step(model, loss_fn=loss_fn, impl=impl, mesh=mesh, _trace_hook=_trace_hook)

    root = as_key(key)
    init_key, data_key = jax.random.split(root)
    input_shape = (batch_size, *data.x_train.shape[1:])
    ts = create_train_state(model, optimizer, init_key, input_shape)
    config = {
        "model": repr(model),
        "dataset": getattr(data, "name", "dataset"),
        "n_train": n_train,
        "input_shape": list(input_shape),
        "batch_size": batch_size,
        "epochs": epochs,
        "impl": impl,
        "augment": repr(augment),
        "ema_decay": ema_decay,
    }

    history: dict[str, list] = {k: [] for k in HISTORY_KEYS}
    best_params, best_state = _copy(ts.params), _copy(ts.state)
    best_epoch, best_metric, bad_epochs, start_epoch, stopped_early = 0, -math.inf, 0, 0, False
    ema_params = None
    ckpt_path = metrics_path = None
    if out_dir is not None:
        out_dir = os.fspath(out_dir)
        os.makedirs(out_dir, exist_ok=True)
        ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
        metrics_path = os.path.join(out_dir, METRICS_NAME)

    if resume and os.path.exists(ckpt_path):
        ts, saved_config, extra = load_checkpoint(ckpt_path, ts)
        for name in ("model", "batch_size", "n_train", "input_shape"):
            if saved_config.get(name) != config[name]:
                raise CheckpointError(
                    f"checkpoint {ckpt_path!r} was written for {name}={saved_config.get(name)!r}, "
                    f"this run has {name}={config[name]!r}; resume with the same settings"
                )
        saved_key = np.asarray(extra["data_key"], np.uint32)
        if not np.array_equal(saved_key, _key_bits(data_key)):
            warnings.warn(
                f"resuming {ckpt_path!r}: `key` differs from the run that wrote it; the data "
                f"order continues from the checkpoint's key", stacklevel=2,
            )
        data_key = jnp.asarray(saved_key)
        if jnp.issubdtype(root.dtype, jax.dtypes.prng_key):
            data_key = jax.random.wrap_key_data(data_key, impl=jax.random.key_impl(root))
        history = {k: list(extra["history"][k]) for k in HISTORY_KEYS}
        best_params = _unflat(extra["best_params"], ts.params, "params", ckpt_path)
        best_state = _unflat(extra["best_state"], ts.state, "state", ckpt_path)
        best_epoch, best_metric = int(extra["best_epoch"]), float(extra["best_metric"])
        bad_epochs, start_epoch = int(extra["bad_epochs"]), int(extra["epoch"])
        stopped_early = bool(extra["stopped_early"])
        if ema_decay is not None:
            if "ema_params" not in extra:
                raise CheckpointError(
                    f"checkpoint {ckpt_path!r} has no EMA of the params (written without ema_decay); "
                    f"resume with the same settings"
                )
            ema_params = _unflat(extra["ema_params"], ts.params, "EMA params", ckpt_path)
    ts = replicate(ts, mesh)
    ema_step = None
    if ema_decay is not None:
        if ema_params is None:
            ema_params = _copy(ts.params)
        ema_params = replicate(ema_params, mesh)
        ema_step = _cached_ema_step(ema_decay)

    if metrics_path is not None:  # rewrite: exactly the epochs of the state we continue from
        with open(metrics_path, "w") as f:
            for i in range(len(history["epoch"])):
                _write_metrics_line(f, {k: history[k][i] for k in HISTORY_KEYS})

    def save(epoch: int) -> None:
        save_checkpoint(
            ckpt_path, ts, config=config,
            extra={
                "epoch": epoch,
                "history": history,
                "best_params": _flat(best_params),
                "best_state": _flat(best_state),
                "best_epoch": best_epoch,
                "best_metric": best_metric,
                "bad_epochs": bad_epochs,
                "stopped_early": stopped_early,
                "data_key": _key_bits(data_key),
                **({"ema_params": _flat(ema_params)} if ema_params is not None else {}),
            },
        )

    steps_per_epoch = num_batches(n_train, batch_size)
    bar = None
    if progress and not stopped_early and start_epoch < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
                   unit="step", dynamic_ncols=True, leave=True)
    metrics_file = open(metrics_path, "a") if metrics_path is not None else None
    try:
        epoch = start_epoch
        while epoch < epochs and not stopped_early:
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
            t0 = time.perf_counter()
            step_metrics = []
            seen = 0
            for i, (xb, yb, mb) in enumerate(
                batches(data.x_train, data.y_train, batch_size, key=jax.random.fold_in(data_key, epoch))
            ):
                ts, m = train_step(ts, xb, yb, mb)
                if ema_step is not None:
                    ema_params = ema_step(ema_params, ts.params, ts.step)
                step_metrics.append(m)
                if bar is not None:
                    seen += batch_size
                    bar.update(1)
                    if (i + 1) % _POSTFIX_EVERY == 0:
                        last = jax.device_get(m)
                        bar.set_postfix({
                            "loss": f"{last['loss']:.4f}", "acc": f"{last['accuracy']:.3f}",
                            "lr": f"{last['learning_rate']:.3g}",
                            "img/s": f"{seen / (time.perf_counter() - t0):.0f}",
                        }, refresh=False)
            fetched = jax.device_get(step_metrics)
            train_time = time.perf_counter() - t0
            counts = np.array([m["count"] for m in fetched], np.float64)
            train_loss = float(np.dot([m["loss"] for m in fetched], counts) / counts.sum())
            train_acc = float(np.dot([m["accuracy"] for m in fetched], counts) / counts.sum())
            lr = float(fetched[-1]["learning_rate"])
            val_loss, val_acc = _run_eval(
                eval_step, ts.params, ts.state, data.x_val, data.y_val, batch_size
            )
            row = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                "images_per_sec": n_train / train_time, "epoch_time": time.perf_counter() - t0,
            }
            for k in HISTORY_KEYS:
                history[k].append(row[k])
            if metrics_file is not None:
                _write_metrics_line(metrics_file, row)

            metric = val_acc if has_val else train_acc
            if metric > best_metric:
                best_metric, best_epoch, bad_epochs = metric, epoch + 1, 0
                best_params, best_state = _copy(ts.params), _copy(ts.state)
            else:
                bad_epochs += 1
            if early_stopping_patience is not None and bad_epochs >= early_stopping_patience:
                stopped_early = True
            epoch += 1
            if bar is not None:
                bar.set_postfix({
                    "loss": f"{train_loss:.4f}", "acc": f"{train_acc:.3f}",
                    "val_acc": f"{val_acc:.3f}", "lr": f"{lr:.3g}",
                    "img/s": f"{row['images_per_sec']:.0f}",
                })
            if ckpt_path is not None and (
                epoch % checkpoint_every == 0 or epoch == epochs or stopped_early
            ):
                save(epoch)
    finally:
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()

    if out_dir is not None and history["epoch"]:
        from jaxnet.viz.curves import plot_history

        plot_history(history, os.path.join(out_dir, CURVES_NAME))
    return FitResult(
        history=history, best_params=best_params, best_state=best_state, best_epoch=best_epoch,
        best_val_acc=best_metric if best_epoch else float("nan"), train_state=ts,
        stopped_early=stopped_early, ema_params=ema_params,
    )
