"""The training loop: ``fit`` (epochs of jitted steps, validation, best model, early stopping,
an optional EMA of the params, metrics, curves, checkpoints, exact resume) and ``evaluate``.

``fit`` checks its inputs, then runs :func:`_fit_loop`, built from small pieces:
:func:`_train_epoch` (the step loop), :func:`_run_eval` (the evaluation), :func:`_end_epoch`
(history, best model, patience) and ``_Record`` (everything checkpointed besides the train
state). It stops with one-line errors on a non-finite step (:class:`NonFiniteError`), a
failed checkpoint write (:class:`CheckpointWriteError`) and Ctrl-C
(:class:`TrainingInterrupted`, after saving the last finished epoch); a callback ends it
cleanly by raising :class:`StopTraining`."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import re
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet.errors import FaultError
from jaxnet.train.averaging import ema_update
from jaxnet.train.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from jaxnet.train.parallel import (
    check_batch_divisible, gather, is_writer, make_mesh, param_shardings, place, resolve_devices,
    train_state_shardings,
)
from jaxnet.train.runfiles import atomic_write_text, hold_folder
from jaxnet.train.state import TrainState, as_key, create_train_state, train_state_like
from jaxnet.train.step import batches, make_eval_step, make_train_step, num_batches

__all__ = [
    "FitResult", "fit", "evaluate", "check_labels", "HISTORY_KEYS", "CHECKPOINT_NAME", "METRICS_NAME",
    "CURVES_NAME", "TrainingInterrupted", "NonFiniteError", "CheckpointWriteError", "DivergenceWarning",
    "StopTraining",
]

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
    stopped_early: whether the run ended before ``epochs``: early stopping (patience) or a
      callback's :class:`StopTraining`.
    skipped_steps: with ``on_nonfinite="skip"``: how many updates were skipped (non-finite).
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
    skipped_steps: int = 0


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
def _cached_steps(model, optimizer, loss_fn, impl, augment_fn, mesh, trace_hook, adversarial=None):
    train_step = make_train_step(model, optimizer, loss_fn=loss_fn, impl=impl, augment_fn=augment_fn,
                                 mesh=mesh, _trace_hook=trace_hook, adversarial=adversarial)
    eval_step = make_eval_step(model, loss_fn=loss_fn, impl=impl, mesh=mesh, _trace_hook=trace_hook)
    return train_step, eval_step


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


def start_from(ts: TrainState, init_params: Any, optimizer: optax.GradientTransformation) -> TrainState:
    """``ts`` with ``init_params = (params, state)`` in place of its own, and a fresh optimizer state.

    The given trees must match the model's (structure, shapes, dtypes), or a one-line
    ``ValueError`` names the first difference."""
    if not (isinstance(init_params, tuple) and len(init_params) == 2):
        raise ValueError(f"fit: init_params must be a (params, state) tuple, got {type(init_params).__name__}")
    for what, want, got in (("params", ts.params, init_params[0]), ("state", ts.state, init_params[1])):
        want_leaves, want_def = jax.tree_util.tree_flatten_with_path(want)
        got_leaves, got_def = jax.tree_util.tree_flatten_with_path(got)
        if want_def != got_def:
            want_keys = {jax.tree_util.keystr(p) for p, _ in want_leaves}
            got_keys = {jax.tree_util.keystr(p) for p, _ in got_leaves}
            diff = sorted(want_keys ^ got_keys)
            raise ValueError(f"fit: init_params' {what} do not have the model's structure"
                             + (f" (first difference: {diff[0]})" if diff else ""))
        for (path, w), (_, g) in zip(want_leaves, got_leaves):
            if tuple(np.shape(g)) != tuple(w.shape) or jnp.result_type(g) != w.dtype:
                raise ValueError(f"fit: init_params' {what}{jax.tree_util.keystr(path)} is "
                                 f"{jnp.result_type(g).name}{tuple(np.shape(g))}, the model's is "
                                 f"{w.dtype.name}{tuple(w.shape)}")
    params = jax.tree.map(jnp.array, init_params[0])          # copies: the steps donate their buffers
    state = jax.tree.map(jnp.array, init_params[1])
    opt_state = jax.jit(optimizer.init)(params)
    return ts.replace(params=params, state=state, opt_state=opt_state)


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


def _metrics_line(row: dict) -> str:
    return json.dumps({k: _json_value(v) for k, v in row.items()}) + "\n"


def _check_positive_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_labels(data: Any, splits: Sequence[str] = ("train", "val")) -> None:
    """Raise ValueError (one line, naming the split and the first bad label) unless every label
    of ``data.y_<split>`` is an integer in ``[0, data.num_classes)`` (only ``>= 0`` when the data
    set has no ``num_classes``) and each split has as many labels as examples."""
    num_classes = getattr(data, "num_classes", None)
    for split in splits:
        x, y = getattr(data, f"x_{split}", None), getattr(data, f"y_{split}", None)
        if y is None:
            continue
        y = np.asarray(y)
        if x is not None and len(x) != len(y):
            raise ValueError(f"fit: the {split} split has {len(x)} examples but {len(y)} labels")
        if y.size == 0:
            continue
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"fit: the {split} labels must be a 1-D array of integer class indices, "
                f"got dtype {y.dtype} and shape {y.shape}"
            )
        bad = (y < 0) | (y >= num_classes) if num_classes is not None else (y < 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            allowed = f"[0, {num_classes})" if num_classes is not None else ">= 0"
            raise ValueError(
                f"fit: bad label {int(y[i])} at index {i} of the {split} split "
                f"({int(bad.sum())} bad in all); labels must be integers in {allowed}"
            )


_IMPL_IN_REPR = re.compile(r"impl='(?:auto|manual)'")


def _model_key(model_repr: str) -> str:
    """A model's repr without its backward-path choice: both paths compute the same gradients,
    so a checkpoint of one resumes with the other."""
    return _IMPL_IN_REPR.sub("impl=*", model_repr)


def _first_difference(a: str, b: str, context: int = 30) -> str:
    i = next((k for k, (p, q) in enumerate(zip(a, b)) if p != q), min(len(a), len(b)))
    lo = max(0, i - context)
    return f"...{a[lo:i + context]}... vs ...{b[lo:i + context]}..."


def _check_resume_config(saved: dict, config: dict, path: str) -> None:
    """The settings a checkpoint's train state depends on must match (keys the checkpoint does
    not record, e.g. one written by :func:`save_checkpoint` alone, are not compared)."""
    for name in ("model", "batch_size", "n_train", "input_shape"):
        if name not in saved:
            continue
        old, new = saved[name], config[name]
        if name == "model":
            if _model_key(str(old)) != _model_key(str(new)):
                raise CheckpointError(
                    f"checkpoint {path!r} was written for another model "
                    f"({_first_difference(str(old), str(new))}); resume with the same model"
                )
        elif old != new:
            raise CheckpointError(
                f"checkpoint {path!r} was written for {name}={old!r}, "
                f"this run has {name}={new!r}; resume with the same settings"
            )


# ----------------------------------------------------------------------------- errors


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` was interrupted (Ctrl-C). The last finished epoch was saved first (with an
    ``out_dir``). Attributes: ``epoch`` (1-based, the epoch running), ``step`` (training steps
    of it done), ``checkpoint_epoch`` (the epoch in the checkpoint, None if there is none),
    ``path`` (the checkpoint, None without ``out_dir``)."""

    def __init__(self, epoch: int, step: int, checkpoint_epoch: Optional[int], path: Optional[str]):
        self.epoch, self.step, self.checkpoint_epoch, self.path = epoch, step, checkpoint_epoch, path
        if path is None:
            where = "nothing saved (no out_dir)"
        elif checkpoint_epoch is None:
            where = "no epoch finished, no checkpoint written"
        else:
            where = f"checkpoint of epoch {checkpoint_epoch} in {path}"
        super().__init__(f"interrupted at epoch {epoch} step {step}; {where}")


class NonFiniteError(FaultError):
    """A training step produced a non-finite loss or gradient and ``fit`` stopped.
    Attributes: ``epoch`` (1-based), ``step`` (1-based within the epoch), ``checkpoint_epoch``
    (the last good checkpoint's epoch, None if there is none), ``path``, ``all_skipped``
    (True: ``on_nonfinite="skip"`` skipped every step of the epoch)."""

    def __init__(self, epoch: int, step: int, checkpoint_epoch: Optional[int], path: Optional[str],
                 all_skipped: bool = False):
        self.epoch, self.step, self.checkpoint_epoch, self.path = epoch, step, checkpoint_epoch, path
        self.all_skipped = all_skipped
        super().__init__(
            f"{self.what()}; {self.last_good()}; try a lower learning rate, gradient clipping "
            f"or fit(..., on_nonfinite='skip')"
        )

    def what(self) -> str:
        if self.all_skipped:
            return f"every step of epoch {self.epoch} had a non-finite loss or gradient (all skipped)"
        return f"non-finite loss or gradient at epoch {self.epoch} step {self.step}: the run diverged"

    def last_good(self) -> str:
        if self.path is None:
            return "nothing saved (no out_dir)"
        if self.checkpoint_epoch is None:
            return "no checkpoint was written"
        return f"the last good checkpoint is epoch {self.checkpoint_epoch} in {self.path}"


class CheckpointWriteError(FaultError):
    """Writing a checkpoint failed (e.g. a full disk); the previous checkpoint is intact."""


class DivergenceWarning(RuntimeWarning):
    """The training loss of an epoch rose above 3x its initial value."""


class StopTraining(Exception):
    """Raised by a callback's ``on_step`` or ``on_epoch`` to end :func:`fit` cleanly.

    From ``on_step``: the rest of the epoch's steps are not run; the epoch is finished with
    the steps that ran (history row, validation, best model, checkpoint, ``on_epoch``).
    From ``on_epoch``: no further epoch runs. Either way ``fit`` returns its
    :class:`FitResult` with ``stopped_early=True`` (also saved in the checkpoint: resuming
    the run does not train further). The message is free text for the caller."""


# ----------------------------------------------------------------------------- bookkeeping

#: what a checkpoint written by ``fit`` holds besides the train state
FIT_EXTRA_KEYS = ("epoch", "history", "best_params", "best_state", "best_epoch", "best_metric",
                  "bad_epochs", "stopped_early", "data_key")
EXPLODING_FACTOR = 3.0


@dataclasses.dataclass
class _Record:
    """Everything ``fit`` tracks across epochs besides the train state (checkpointed with it)."""

    history: dict
    best_params: Any
    best_state: Any
    best_epoch: int = 0
    best_metric: float = -math.inf
    bad_epochs: int = 0
    epoch: int = 0                   # epochs finished
    stopped_early: bool = False
    initial_loss: float = math.nan   # the first training step's loss
    skipped_steps: int = 0           # steps skipped with on_nonfinite="skip"

    def extra(self, data_key: jax.Array, ema_params: Any) -> dict:
        return {
            "epoch": self.epoch, "history": self.history,
            "best_params": _flat(self.best_params), "best_state": _flat(self.best_state),
            "best_epoch": self.best_epoch, "best_metric": self.best_metric,
            "bad_epochs": self.bad_epochs, "stopped_early": self.stopped_early,
            "initial_loss": self.initial_loss, "skipped_steps": self.skipped_steps,
            "data_key": _key_bits(data_key),
            **({"ema_params": _flat(ema_params)} if ema_params is not None else {}),
        }

    @classmethod
    def restore(cls, extra: dict, ts: TrainState, path: str) -> "_Record":
        return cls(
            history={k: list(extra["history"][k]) for k in HISTORY_KEYS},
            best_params=_unflat(extra["best_params"], ts.params, "params", path),
            best_state=_unflat(extra["best_state"], ts.state, "state", path),
            best_epoch=int(extra["best_epoch"]), best_metric=float(extra["best_metric"]),
            bad_epochs=int(extra["bad_epochs"]), epoch=int(extra["epoch"]),
            stopped_early=bool(extra["stopped_early"]),
            initial_loss=float(extra.get("initial_loss", math.nan)),
            skipped_steps=int(extra.get("skipped_steps", 0)),
        )


@dataclasses.dataclass
class _Position:
    epoch: int = 0        # 1-based epoch running
    step: int = 0         # its training steps done
    phase: str = "steps"  # "steps" | "end" (ts and the record describe the same finished epoch)


@jax.jit
def _tree_finite(tree: Any) -> jax.Array:
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def _callback_methods(callbacks: Optional[Sequence[Any]], name: str) -> list[Callable]:
    methods = []
    for cb in callbacks or ():
        m = getattr(cb, name, None)
        if m is not None and callable(m):
            methods.append(m)
    return methods


def _epoch_summary(fetched: list[dict]) -> tuple[float, float, float, np.ndarray]:
    """(train loss, train accuracy, last learning rate, indices of non-finite steps) of one
    epoch's fetched step metrics; the means are weighted by real examples, finite steps only."""
    finite = np.array([bool(m.get("finite", True)) for m in fetched])
    counts = np.array([m["count"] for m in fetched], np.float64) * finite
    total = counts.sum()
    if total > 0:
        loss = float(np.dot(np.where(finite, [m["loss"] for m in fetched], 0.0), counts) / total)
        acc = float(np.dot(np.where(finite, [m["accuracy"] for m in fetched], 0.0), counts) / total)
    else:
        loss = acc = float("nan")
    return loss, acc, float(fetched[-1]["learning_rate"]), np.flatnonzero(~finite)


def _train_epoch(train_step, ema_step, ts, ema_params, data, batch_size, key, pos: _Position,
                 first_global_step: int, on_step: list, bar, stop_on_nonfinite: bool):
    """One pass of training steps. Returns ``(ts, ema_params, fetched step metrics, seconds,
    stopped)``; ``stopped``: an ``on_step`` callback raised :class:`StopTraining`.

    The step metrics stay on the device until the epoch's end (one fetch), except for the
    progress bar's every ``_POSTFIX_EVERY`` steps, which also checks the finite flag early.
    """
    t0 = time.perf_counter()
    step_metrics = []
    seen = 0
    stop = False
    for i, (xb, yb, mb) in enumerate(batches(data.x_train, data.y_train, batch_size, key=key)):
        ts, m = train_step(ts, xb, yb, mb)
        if ema_step is not None:
            ema_params = ema_step(ema_params, ts.params, ts.step)
        step_metrics.append(m)
        pos.step = i + 1
        try:
            for cb in on_step:
                cb({"epoch": pos.epoch, "step": i + 1, "global_step": first_global_step + i + 1,
                    "metrics": m, "train_state": ts})
        except StopTraining:
            stop = True
            break
        if bar is not None:
            seen += batch_size
            bar.update(1)
            if (i + 1) % _POSTFIX_EVERY == 0:
                last = jax.device_get(m)
                if stop_on_nonfinite and not bool(last["finite"]):
                    break  # the caller finds the first non-finite step in what ran
                bar.set_postfix({
                    "loss": f"{last['loss']:.4f}", "acc": f"{last['accuracy']:.3f}",
                    "lr": f"{last['learning_rate']:.3g}",
                    "img/s": f"{seen / (time.perf_counter() - t0):.0f}",
                }, refresh=False)
    fetched = jax.device_get(step_metrics)
    return ts, ema_params, fetched, time.perf_counter() - t0, stop


def _end_epoch(rec: _Record, row: dict, ts: TrainState, has_val: bool,
               patience: Optional[int]) -> _Record:
    """The record after an epoch: history, best model (never a non-finite one), patience."""
    history = {k: rec.history[k] + [row[k]] for k in HISTORY_KEYS}
    new = dataclasses.replace(rec, history=history, epoch=row["epoch"])
    metric = row["val_acc"] if has_val else row["train_acc"]
    if metric > rec.best_metric and bool(_tree_finite(ts.params)):
        new.best_metric, new.best_epoch, new.bad_epochs = metric, row["epoch"], 0
        new.best_params, new.best_state = _copy(ts.params), _copy(ts.state)
    else:
        new.bad_epochs = rec.bad_epochs + 1
    if patience is not None and new.bad_epochs >= patience:
        new.stopped_early = True
    return new


# ----------------------------------------------------------------------------- fit


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
    model_parallel: int = 1,
    loss_fn: Optional[Callable] = None,
    ema_decay: Optional[float] = None,
    on_nonfinite: str = "stop",
    callbacks: Optional[Sequence[Any]] = None,
    run_config: Optional[dict] = None,
    init_params: Optional[tuple] = None,
    adversarial: Any = None,
    _trace_hook: Optional[Callable[[Callable], Callable]] = None,
) -> FitResult:
    """Train ``model`` on ``data.x_train``/``data.y_train``, validating on ``data.x_val`` each epoch.

    Args:
      model: the model protocol (``init``/``apply``), hashable.
      data: a :class:`jaxnet.data.Dataset` (x float32 NHWC, y integer labels in
        ``[0, num_classes)``, checked on the host before anything runs).
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
        The folder is locked while ``fit`` runs (:func:`jaxnet.train.runfiles.hold_folder`):
        a second run into it raises :class:`~jaxnet.train.runfiles.FolderInUseError`.
      early_stopping_patience: stop after this many epochs without a new best validation accuracy.
      resume: continue from ``out_dir/checkpoint`` if it exists (same model and batch size;
        the backward path may differ), reproducing the uninterrupted run exactly (data order,
        dropout keys, optimizer state, history, best model and early-stopping counter all
        come from the checkpoint). A checkpoint written by :func:`save_checkpoint` without
        fit's history continues from its train state with a fresh history (a warning says so).
      progress: a tqdm bar with loss/acc/lr/img/s (refreshed every 20 steps).
      devices: data parallelism over these devices (None: all devices, every process's under
        ``jax.distributed``; an int: the first n, or a list); the batch size must be divisible
        by their number (divided by ``model_parallel``).  Under ``jax.distributed`` every
        process runs ``fit`` with the same arguments: each feeds its own rows of every global
        batch, and only process 0 writes ``out_dir``'s files (all read it to resume).
      model_parallel: tensor parallelism: split the transformer blocks' attention heads and
        feed-forward hidden units (and their optimizer state) over groups of this many
        devices (:func:`jaxnet.train.parallel.tensor_parallel_specs`), the batch over the
        groups.  1 (default): data parallel only.
      loss_fn: batch-mean loss ``(scores, labels) -> scalar``; default softmax cross-entropy.
      ema_decay: if given (in [0, 1)), keep an exponential moving average of the params (Polyak
        averaging), updated by a jitted step after every training step: the k-th update
        (k = 1, 2, ...) uses decay ``min(ema_decay, k / (9 + k))`` (the warmup variant of
        :func:`jaxnet.train.averaging.ema_update`). Returned as ``FitResult.ema_params``,
        saved in the checkpoint and restored on resume. It does not change training.
      on_nonfinite: what a step with a non-finite loss or gradient does. ``"stop"``: raise
        :class:`NonFiniteError` naming the epoch and step and the last good checkpoint; the
        diverged model is neither saved nor kept as best. ``"skip"``: the optimizer is wrapped
        in ``optax.apply_if_finite``, so such updates are not applied; their number is
        ``FitResult.skipped_steps`` (an epoch whose every step is skipped raises
        :class:`NonFiniteError`). The steps' ``finite`` flags are fetched with the other step
        metrics (once per epoch, and every 20 steps with the progress bar): no extra sync.
        Either way, one :class:`DivergenceWarning` is issued when an epoch's training loss
        exceeds 3x the first step's loss.
      callbacks: objects with optional methods ``on_step(info)`` (after each training step;
        info: ``epoch``, ``step`` (1-based in the epoch), ``global_step``, ``metrics``, the
        step's metrics still on the device, and ``train_state``, the state after the step)
        and ``on_epoch(info)`` (after each epoch's bookkeeping, before its checkpoint; info:
        the epoch's history row plus ``best_epoch``, ``stopped_early``, ``skipped_steps`` and
        ``train_state``). The next step donates the train state's buffers: read or copy what
        is needed before returning. Either method may raise :class:`StopTraining` to end the
        run (see there).
      init_params: ``(params, state)`` to start from instead of ``model.init`` (fine-tuning,
        transfer learning): the same tree structure, shapes and dtypes as the model's own
        (a one-line ``ValueError`` names the first difference); the optimizer state starts fresh.
        Freeze parts or give them their own learning rate with ``optax.multi_transform``.
      adversarial: None (default: plain training, the step unchanged) or a
        :class:`jaxnet.understand.Adversarial` (``Adversarial(eps, kind="fgsm" | "pgd_linf" |
        "pgd_l2", steps=..., mode="replace" | "augment", clip=...)``): inside the jitted train step
        each batch is replaced by (or joined with) its FGSM/PGD examples for the current params.
        Recorded in the checkpoint's config as its repr.
      run_config: a JSON-serialisable dict stored in the checkpoint's config as ``"run"``
        (e.g. the command line's settings, to compare when resuming).
      _trace_hook: testing hook passed to :func:`make_train_step`/:func:`make_eval_step`.

    Returns:
      A :class:`FitResult`.

    Raises:
      ValueError: bad epochs/batch size (e.g. larger than the training set), batch size not
        divisible by the device count, ``resume`` without ``out_dir``, ``ema_decay`` outside
        [0, 1), bad labels, an unknown ``on_nonfinite``.
      CheckpointError: the checkpoint to resume from is corrupted or from a different model.
      CheckpointWriteError: a checkpoint could not be written (e.g. a full disk); the previous
        one is intact.
      NonFiniteError: see ``on_nonfinite``.
      TrainingInterrupted: a ``KeyboardInterrupt`` arrived; the last finished epoch was
        checkpointed first (with ``out_dir``).
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
    if on_nonfinite not in ("stop", "skip"):
        raise ValueError(f"fit: on_nonfinite must be 'stop' or 'skip', got {on_nonfinite!r}")
    if adversarial is not None:
        from jaxnet.understand.adversarial import Adversarial
        if not isinstance(adversarial, Adversarial):
            raise ValueError(f"fit: adversarial must be None or a jaxnet.understand.Adversarial, got {adversarial!r}")
    check_labels(data)
    has_val = len(data.x_val) > 0
    if on_nonfinite == "skip":
        optimizer = optax.apply_if_finite(optimizer, max_consecutive_errors=2**31 - 1)

    mesh = make_mesh(resolve_devices(devices), model_parallel=model_parallel)
    check_batch_divisible(batch_size, mesh)
    augment_fn = _resolve_augment(augment)
    try:  # the same model and optimizer objects in a later fit reuse the compiled steps
        train_step, eval_step = _cached_steps(model, optimizer, loss_fn, impl, augment_fn, mesh, _trace_hook,
                                              adversarial)
    except TypeError:  # something unhashable
        train_step, eval_step = _cached_steps.__wrapped__(
            model, optimizer, loss_fn, impl, augment_fn, mesh, _trace_hook, adversarial)

    root = as_key(key)
    init_key, data_key = jax.random.split(root)
    input_shape = (batch_size, *data.x_train.shape[1:])
    if init_params is not None:   # the model's own initial weights are not needed: only their shapes
        ts = start_from(train_state_like(model, optimizer, init_key, input_shape), init_params, optimizer)
    else:
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
        "on_nonfinite": on_nonfinite,
        **({"run": run_config} if run_config is not None else {}),
        **({"init": "init_params"} if init_params is not None else {}),
        **({"adversarial": repr(adversarial)} if adversarial is not None else {}),
    }

    with contextlib.ExitStack() as stack:
        ckpt_path = metrics_path = None
        if out_dir is not None:
            out_dir = os.fspath(out_dir)
            os.makedirs(out_dir, exist_ok=True)
            if is_writer():
                stack.enter_context(hold_folder(out_dir))
            ckpt_path = os.path.join(out_dir, CHECKPOINT_NAME)
            metrics_path = os.path.join(out_dir, METRICS_NAME)
        return _fit_loop(
            model=model, data=data, ts=ts, root=root, data_key=data_key, config=config,
            train_step=train_step, eval_step=eval_step, epochs=epochs, batch_size=batch_size,
            mesh=mesh, optimizer=optimizer, has_val=has_val, ckpt_path=ckpt_path, metrics_path=metrics_path,
            out_dir=out_dir, checkpoint_every=checkpoint_every, resume=resume,
            patience=early_stopping_patience, progress=progress, ema_decay=ema_decay,
            on_nonfinite=on_nonfinite, callbacks=callbacks,
        )


def _restore(ckpt_path: str, ts: TrainState, root: jax.Array, data_key: jax.Array, config: dict,
             ema_decay: Optional[float]):
    """``(ts, record, data_key, ema_params, saved_epoch)`` from a checkpoint to resume."""
    ts, saved_config, extra = load_checkpoint(ckpt_path, ts)
    _check_resume_config(saved_config, config, ckpt_path)
    missing = [k for k in FIT_EXTRA_KEYS if k not in extra]
    if missing:
        warnings.warn(
            f"checkpoint {ckpt_path!r} holds no training history (written by save_checkpoint, not "
            f"fit; missing {', '.join(missing)}): training continues from its train state "
            f"(step {int(ts.step)}) with a fresh history", stacklevel=3,
        )
        rec = _Record(history={k: [] for k in HISTORY_KEYS}, best_params=_copy(ts.params),
                      best_state=_copy(ts.state))
        return ts, rec, data_key, None, None
    saved_key = np.asarray(extra["data_key"], np.uint32)
    if not np.array_equal(saved_key, _key_bits(data_key)):
        warnings.warn(
            f"resuming {ckpt_path!r}: `key` differs from the run that wrote it; the data "
            f"order continues from the checkpoint's key", stacklevel=3,
        )
    data_key = jnp.asarray(saved_key)
    if jnp.issubdtype(root.dtype, jax.dtypes.prng_key):
        data_key = jax.random.wrap_key_data(data_key, impl=jax.random.key_impl(root))
    rec = _Record.restore(extra, ts, ckpt_path)
    ema_params = None
    if ema_decay is not None:
        if "ema_params" not in extra:
            raise CheckpointError(
                f"checkpoint {ckpt_path!r} has no EMA of the params (written without ema_decay); "
                f"resume with the same settings"
            )
        ema_params = _unflat(extra["ema_params"], ts.params, "EMA params", ckpt_path)
    return ts, rec, data_key, ema_params, rec.epoch


def _fit_loop(*, model, data, ts, root, data_key, config, train_step, eval_step, epochs, batch_size,
              mesh, optimizer, has_val, ckpt_path, metrics_path, out_dir, checkpoint_every, resume,
              patience, progress, ema_decay, on_nonfinite, callbacks) -> FitResult:
    writer = is_writer()
    rec = _Record(history={k: [] for k in HISTORY_KEYS}, best_params=_copy(ts.params),
                  best_state=_copy(ts.state))
    ema_params = None
    saved_epoch: Optional[int] = None  # the epoch in the checkpoint file (None: no checkpoint)
    if resume and os.path.exists(ckpt_path):
        ts, rec, data_key, ema_params, saved_epoch = _restore(ckpt_path, ts, root, data_key, config, ema_decay)
    ts = place(ts, train_state_shardings(ts, mesh, optimizer))
    ema_step = None
    if ema_decay is not None:
        if ema_params is None:
            ema_params = _copy(ts.params)
        ema_params = place(ema_params, param_shardings(ema_params, mesh))
        ema_step = _cached_ema_step(ema_decay)

    if metrics_path is not None and writer:  # exactly the epochs of the state we continue from, replaced atomically
        atomic_write_text(metrics_path, "".join(
            _metrics_line({k: rec.history[k][i] for k in HISTORY_KEYS}) for i in range(len(rec.history["epoch"]))
        ))

    def save(epoch_ts: TrainState, epoch_rec: _Record, epoch_ema: Any) -> None:
        nonlocal saved_epoch
        epoch_ts, epoch_ema, best = gather((epoch_ts, epoch_ema, (epoch_rec.best_params, epoch_rec.best_state)), mesh)
        if not writer:  # every process gathers (a collective); process 0 writes
            saved_epoch = epoch_rec.epoch
            return
        epoch_rec = dataclasses.replace(epoch_rec, best_params=best[0], best_state=best[1])
        try:
            save_checkpoint(ckpt_path, epoch_ts, config=config, extra=epoch_rec.extra(data_key, epoch_ema))
        except OSError as e:
            kept = f"the checkpoint of epoch {saved_epoch} is intact" if saved_epoch is not None \
                else "no earlier checkpoint"
            raise CheckpointWriteError(
                f"cannot write the checkpoint {ckpt_path!r} for epoch {epoch_rec.epoch} "
                f"({e.strerror or e}); {kept}"
            ) from e
        saved_epoch = epoch_rec.epoch

    on_step, on_epoch = _callback_methods(callbacks, "on_step"), _callback_methods(callbacks, "on_epoch")
    steps_per_epoch = num_batches(len(data.x_train), batch_size)
    bar = None
    if progress and writer and not rec.stopped_early and rec.epoch < epochs:
        from tqdm.auto import tqdm

        bar = tqdm(total=epochs * steps_per_epoch, initial=rec.epoch * steps_per_epoch,
                   unit="step", dynamic_ncols=True, leave=True)
    pos = _Position(epoch=rec.epoch, step=0, phase="end")
    snapshot = None  # (ts, record, ema) of the last finished epoch when it was not checkpointed
    warned = False
    metrics_file = open(metrics_path, "a") if metrics_path is not None and writer else None
    try:
        while rec.epoch < epochs and not rec.stopped_early:
            epoch = rec.epoch  # 0-based index of the epoch to run
            if bar is not None:
                bar.set_description(f"epoch {epoch + 1}/{epochs}")
            pos.epoch, pos.step, pos.phase = epoch + 1, 0, "steps"
            t0 = time.perf_counter()
            ts, ema_params, fetched, train_time, stop = _train_epoch(
                train_step, ema_step, ts, ema_params, data, batch_size,
                jax.random.fold_in(data_key, epoch), pos, epoch * steps_per_epoch, on_step, bar,
                stop_on_nonfinite=on_nonfinite == "stop",
            )
            train_loss, train_acc, lr, bad = _epoch_summary(fetched)
            if on_nonfinite == "stop" and bad.size:
                raise NonFiniteError(epoch + 1, int(bad[0]) + 1, saved_epoch, ckpt_path)
            if bad.size == len(fetched):
                raise NonFiniteError(epoch + 1, len(fetched), saved_epoch, ckpt_path, all_skipped=True)
            skipped = rec.skipped_steps + int(bad.size)
            initial_loss = rec.initial_loss
            if not math.isfinite(initial_loss):
                initial_loss = next(float(m["loss"]) for m in fetched if bool(m.get("finite", True)))
            val_loss, val_acc = _run_eval(eval_step, ts.params, ts.state, data.x_val, data.y_val, batch_size)
            row = {
                "epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc,
                "val_loss": val_loss, "val_acc": val_acc, "lr": lr,
                "images_per_sec": len(data.x_train) / train_time, "epoch_time": time.perf_counter() - t0,
            }
            new_rec = _end_epoch(rec, row, ts, has_val, patience)
            new_rec.initial_loss, new_rec.skipped_steps = initial_loss, skipped
            new_rec.stopped_early = new_rec.stopped_early or stop
            if metrics_file is not None:
                metrics_file.write(_metrics_line(row))
                metrics_file.flush()
            rec = new_rec
            pos.phase = "end"
            if not warned and train_loss > EXPLODING_FACTOR * initial_loss > 0:
                warned = True
                warnings.warn(DivergenceWarning(
                    f"epoch {epoch + 1}: the training loss {train_loss:.4g} is more than "
                    f"{EXPLODING_FACTOR:g}x its initial {initial_loss:.4g}; the run looks like it is "
                    f"diverging (try a lower learning rate)"), stacklevel=3)
            if bar is not None:
                bar.set_postfix({
                    "loss": f"{train_loss:.4f}", "acc": f"{train_acc:.3f}",
                    "val_acc": f"{val_acc:.3f}", "lr": f"{lr:.3g}",
                    "img/s": f"{row['images_per_sec']:.0f}",
                })
            try:
                for cb in on_epoch:
                    cb({**row, "best_epoch": rec.best_epoch, "stopped_early": rec.stopped_early,
                        "skipped_steps": rec.skipped_steps, "train_state": ts})
            except StopTraining:
                rec.stopped_early = True
            if ckpt_path is not None:
                if rec.epoch % checkpoint_every == 0 or rec.epoch == epochs or rec.stopped_early:
                    save(ts, rec, ema_params)
                    snapshot = None
                else:  # kept to be saved if the next epoch is interrupted
                    snapshot = (_copy(ts), rec, None if ema_params is None else _copy(ema_params))
    except KeyboardInterrupt as err:
        if isinstance(err, TrainingInterrupted) or ckpt_path is None:
            raise TrainingInterrupted(pos.epoch, pos.step, saved_epoch, ckpt_path) from None
        if saved_epoch != rec.epoch and rec.epoch > 0:  # save the last finished epoch
            with contextlib.suppress(CheckpointWriteError):
                if pos.phase == "end":
                    save(ts, rec, ema_params)
                elif snapshot is not None and snapshot[1].epoch == rec.epoch:
                    save(*snapshot)
        raise TrainingInterrupted(pos.epoch, pos.step, saved_epoch, ckpt_path) from None
    finally:
        if bar is not None:
            bar.close()
        if metrics_file is not None:
            metrics_file.close()

    if out_dir is not None and writer and rec.history["epoch"]:
        from jaxnet.viz.curves import plot_history

        plot_history(rec.history, os.path.join(out_dir, CURVES_NAME))
    best_params, best_state, ts, ema_params = _unplaced((rec.best_params, rec.best_state, ts, ema_params), mesh)
    return FitResult(
        history=rec.history, best_params=best_params, best_state=best_state,
        best_epoch=rec.best_epoch, best_val_acc=rec.best_metric if rec.best_epoch else float("nan"),
        train_state=ts, stopped_early=rec.stopped_early, ema_params=ema_params,
        skipped_steps=rec.skipped_steps,
    )


def _unplaced(tree: Any, mesh) -> Any:
    """On one device (the default one) in one process: ``tree``'s arrays as ``jnp.asarray``
    makes them (uncommitted), not placed on the one-device mesh the training ran on.

    Why: ``jax.jit`` compiles a program per input sharding; a jitted function of the user's
    fed both ``fit``'s results (mesh-placed) and freshly made arrays (e.g. ``model.init``'s)
    would compile twice. Values are copied exactly (through the host: small, once per fit).
    """
    if jax.process_count() != 1 or mesh.devices.size != 1 or mesh.devices.flat[0] != jax.devices()[0]:
        return tree

    def plain(x):
        if not isinstance(x, jax.Array):
            return x
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(plain(jax.random.key_data(x)), impl=jax.random.key_impl(x))
        return jax.device_put(np.asarray(x))

    return jax.tree.map(plain, tree)
