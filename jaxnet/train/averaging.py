"""Parameter averaging (EMA / Polyak) and ensembles of independently trained models.

The course (lecture 7, "model ensembles"): average the *predictions* of several
independently trained models ("enjoy 2% extra performance"), or, within one run, keep a
moving average of the parameter vector and use that at test time (Polyak averaging).

Parameter averaging (pure functions of pytrees, jittable; every leaf keeps its dtype):

* :func:`ema_init` ``(params) -> ema``: a copy of the params to start the average from.
* :func:`ema_update` ``(ema, params, decay, step=None) -> ema``:
  ``decay * ema + (1 - decay) * params``. With ``step`` (the number of updates already
  folded in, 0 for the first) the *warmup* variant is used: the effective decay is
  ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's ``ExponentialMovingAverage``
  with ``num_updates``), so early on the average forgets the random initialisation quickly
  instead of staying anchored to it for ~1 / (1 - decay) steps.
* :func:`ema_decay_at` ``(decay, step)``: that effective decay.
* :func:`polyak_update` ``(avg, params, count) -> avg``: the running (uniform) mean,
  ``avg + (params - avg) / (count + 1)`` where ``count`` params are already in ``avg``.
* :func:`polyak_average` ``(params_list) -> avg``: the uniform mean of several param trees.

Ensembles (members share the model, not the params):

* :func:`ensemble_predict` ``(model, members, x, batch_size) -> probs (N, C)``: the mean of
  the members' softmax probabilities (``model.apply(..., train=False)``), jitted per batch
  of fixed shape; the last partial batch is padded and its padded rows dropped.
* :func:`evaluate_ensemble` ``(model, members, x, y, batch_size) -> dict``: each member's
  accuracy and the ensemble's (argmax of the mean probabilities), with the mean member's.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Sequence
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "ema_init",
    "ema_update",
    "ema_decay_at",
    "polyak_update",
    "polyak_average",
    "ensemble_predict",
    "ensemble_member_probs",
    "evaluate_ensemble",
]

EMA_WARMUP = 10.0


# ----------------------------------------------------------------------------- averaging

def ema_init(params: Any) -> Any:
    """A copy of ``params`` (same tree, shapes and dtypes) to start an EMA / running mean from."""
    return jax.tree.map(jnp.array, params)


def ema_decay_at(decay: Any, step: Any) -> jax.Array:
    """The warmup variant's effective decay ``min(decay, (1 + step) / (10 + step))`` (float32).

    ``step``: the number of updates already folded into the average (0 for the first update,
    whose decay is then at most 0.1). Jittable; ``step`` may be a traced int array.
    """
    step = jnp.asarray(step, jnp.float32)
    return jnp.minimum(jnp.asarray(decay, jnp.float32), (1.0 + step) / (EMA_WARMUP + step))


def _check_decay(fn: str, decay: Any) -> None:
    if isinstance(decay, (int, float, np.floating, np.integer)) and not isinstance(decay, bool):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"{fn}: decay must be in [0, 1], got {decay!r}")


def _check_same_tree(fn: str, a: Any, b: Any, a_name: str, b_name: str) -> None:
    ta, tb = jax.tree.structure(a), jax.tree.structure(b)
    if ta != tb:
        raise ValueError(f"{fn}: {a_name} and {b_name} have different tree structures: {ta} vs {tb}")
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(a)[0], jax.tree.leaves(b)):
        if jnp.shape(x) != jnp.shape(y):
            raise ValueError(
                f"{fn}: leaf {jax.tree_util.keystr(path)} has shape {jnp.shape(x)} in {a_name} "
                f"but {jnp.shape(y)} in {b_name}"
            )


def _mix(avg: Any, params: Any, w_old: jax.Array) -> Any:
    """``w_old * avg + (1 - w_old) * params`` per leaf, in the leaf's dtype (non-float leaves:
    the new value)."""

    def leaf(a, p):
        a, p = jnp.asarray(a), jnp.asarray(p)
        if not jnp.issubdtype(a.dtype, jnp.inexact):
            return p.astype(a.dtype)
        w = w_old.astype(a.dtype)
        return (w * a + (1 - w) * p.astype(a.dtype)).astype(a.dtype)

    return jax.tree.map(leaf, avg, params)


def ema_update(ema: Any, params: Any, decay: Any, step: Any = None) -> Any:
    """One EMA step: ``decay * ema + (1 - decay) * params`` per leaf (pure, jittable).

    Args:
      ema: the average so far (a pytree like ``params``; start with :func:`ema_init`).
      params: the new parameters (same tree and shapes).
      decay: in [0, 1]: 0 returns ``params``, 1 returns ``ema`` unchanged; typical 0.99-0.9999
        (the average spans roughly the last ``1 / (1 - decay)`` updates).
      step: None for the plain EMA, or the number of updates already folded in (int or int
        array) for the warmup variant: the decay used is :func:`ema_decay_at` ``(decay, step)``.

    Computed as ``d * ema + (1 - d) * params`` in each leaf's dtype (so decay 0 and 1 give
    ``params`` and ``ema`` bit for bit); integer leaves take the new value. Raises ValueError
    when the trees or leaf shapes differ or a python ``decay`` is outside [0, 1].
    """
    _check_decay("ema_update", decay)
    _check_same_tree("ema_update", ema, params, "ema", "params")
    d = ema_decay_at(decay, step) if step is not None else jnp.asarray(decay, jnp.float32)
    return _mix(ema, params, d)


def polyak_update(avg: Any, params: Any, count: Any) -> Any:
    """Running (uniform) mean: ``avg + (params - avg) / (count + 1)`` per leaf (pure, jittable).

    ``count``: how many param trees ``avg`` already averages (0: returns ``params``). The same as
    :func:`ema_update` with decay ``count / (count + 1)``.
    """
    _check_same_tree("polyak_update", avg, params, "avg", "params")
    if isinstance(count, (int, np.integer)) and not isinstance(count, bool) and count < 0:
        raise ValueError(f"polyak_update: count must be >= 0, got {count!r}")
    c = jnp.asarray(count, jnp.float32)
    return _mix(avg, params, c / (c + 1.0))


def polyak_average(params_list: Sequence[Any]) -> Any:
    """The uniform mean of a non-empty sequence of param trees (same structure and shapes)."""
    params_list = list(params_list)
    if not params_list:
        raise ValueError("polyak_average: params_list is empty")
    for i, p in enumerate(params_list[1:], start=1):
        _check_same_tree("polyak_average", params_list[0], p, "params_list[0]", f"params_list[{i}]")
    avg = ema_init(params_list[0])
    for i, p in enumerate(params_list[1:], start=1):
        avg = polyak_update(avg, p, i)
    return avg


# ----------------------------------------------------------------------------- ensembles

def _probs_fn(model: Any, impl: Optional[str]):
    def probs(params, state, x):
        ctx = contextlib.nullcontext()
        if impl is not None:
            from jaxnet._impl import use_impl

            ctx = use_impl(impl)
        with ctx:
            logits, _ = model.apply(params, state, x, train=False)
        return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

    return jax.jit(probs)


@functools.lru_cache(maxsize=32)
def _cached_probs_fn(model: Any, impl: Optional[str]):
    return _probs_fn(model, impl)


def _check_members(fn: str, members: Any) -> list:
    if isinstance(members, tuple) and len(members) == 2 and not isinstance(members[0], tuple):
        raise ValueError(f"{fn}: members must be a list of (params, state) pairs, got a single pair; "
                         f"wrap it in a list")
    try:
        members = list(members)
    except TypeError:
        raise ValueError(f"{fn}: members must be a list of (params, state) pairs, "
                         f"got {type(members).__name__}") from None
    if not members:
        raise ValueError(f"{fn}: members is empty (need at least one (params, state) pair)")
    for i, m in enumerate(members):
        if not isinstance(m, (tuple, list)) or len(m) != 2:
            raise ValueError(f"{fn}: members[{i}] must be a (params, state) pair, got {type(m).__name__}")
    for i, (p, _) in enumerate(members[1:], start=1):
        _check_same_tree(fn, members[0][0], p, "members[0] params", f"members[{i}] params")
    return members


def _check_batch(fn: str, batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"{fn}: batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def ensemble_member_probs(
    model: Any, members: Sequence[tuple[Any, Any]], x: np.ndarray, batch_size: int, *,
    impl: Optional[str] = None,
) -> np.ndarray:
    """Every member's softmax probabilities: float32 array (K, N, C) for K members, x (N, ...).

    ``model.apply(params, state, x, train=False)`` per member, jitted per fixed-shape batch of
    ``batch_size`` (one trace per model and input shape, cached); the last partial batch is
    padded with copies of its first rows, which are dropped from the result.
    """
    fn = "ensemble_member_probs"
    members = _check_members(fn, members)
    batch_size = _check_batch(fn, batch_size)
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: x must be (N, ...) with at least 2 dims, got shape {x.shape}")
    try:
        probs = _cached_probs_fn(model, impl)
    except TypeError:  # unhashable model
        probs = _probs_fn(model, impl)
    n = len(x)
    out = []
    for params, state in members:
        chunks = []
        for start in range(0, n, batch_size):
            xb = x[start:start + batch_size]
            real = len(xb)
            if real < batch_size:
                xb = np.resize(xb, (batch_size, *x.shape[1:]))  # repeats the rows cyclically
            chunks.append((probs(params, state, xb), real))
        host = [np.asarray(p)[:r] for p, r in jax.device_get(chunks)] if chunks else []
        out.append(np.concatenate(host, axis=0) if host else np.zeros((0, 0), np.float32))
    if n == 0:
        return np.zeros((len(members), 0, 0), np.float32)
    return np.stack(out).astype(np.float32)


def ensemble_predict(
    model: Any, members: Sequence[tuple[Any, Any]], x: np.ndarray, batch_size: int, *,
    impl: Optional[str] = None,
) -> np.ndarray:
    """The ensemble's class probabilities: the mean over members of softmax(logits), (N, C) float32.

    Args:
      model: the shared model (``apply(params, state, x, *, train)``), ideally hashable.
      members: non-empty list of ``(params, state)`` pairs with the same tree structure
        (e.g. independently seeded runs of ``jaxnet.train.fit``: ``(r.best_params, r.best_state)``).
      x: inputs (N, ...), e.g. float32 NHWC.
      batch_size: rows per jitted forward pass; the last partial batch is padded, never dropped.
      impl: ``"auto" | "manual" | None``: the ops' path inside the forward pass.

    The mean is accumulated in float64 on the host and returned as float32; each row sums to 1.
    """
    p = ensemble_member_probs(model, members, x, batch_size, impl=impl)
    return p.astype(np.float64).mean(axis=0).astype(np.float32)


def evaluate_ensemble(
    model: Any, members: Sequence[tuple[Any, Any]], x: np.ndarray, y: np.ndarray, batch_size: int, *,
    impl: Optional[str] = None,
) -> dict:
    """Accuracies of every member and of their probability-averaged ensemble on (x (N, ...), y (N,)).

    Returns a dict of python floats / lists:
      ``member_acc`` (K,), ``mean_member_acc``, ``best_member_acc``, ``ensemble_acc``
      (argmax of :func:`ensemble_predict`), ``ensemble_gain`` (ensemble − mean member),
      ``member_nll`` (K,) and ``ensemble_nll`` (mean −log p(y) of the members / of the
      averaged probabilities), ``n`` and ``num_members``.
    Raises ValueError when N = 0, y is not (N,) or a label is outside [0, C).
    """
    fn = "evaluate_ensemble"
    x = np.asarray(x)
    y = np.asarray(y)
    if y.ndim != 1 or x.ndim < 2 or len(y) != len(x):
        raise ValueError(f"{fn}: need x (N, ...) and y (N,), got x {x.shape} and y {y.shape}")
    if len(y) == 0:
        raise ValueError(f"{fn}: x and y are empty (N = 0)")
    member = ensemble_member_probs(model, members, x, batch_size, impl=impl).astype(np.float64)
    k, n, c = member.shape
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"{fn}: labels must be in [0, {c}), got min {y.min()} max {y.max()}")
    ens = member.mean(axis=0)
    rows = np.arange(n)
    member_acc = (member.argmax(-1) == y[None]).mean(axis=1)
    ens_acc = float((ens.argmax(-1) == y).mean())
    tiny = np.finfo(np.float64).tiny
    member_nll = -np.log(np.maximum(member[:, rows, y], tiny)).mean(axis=1)
    ens_nll = float(-np.log(np.maximum(ens[rows, y], tiny)).mean())
    mean_acc = float(member_acc.mean())
    return {
        "member_acc": [float(a) for a in member_acc],
        "mean_member_acc": mean_acc,
        "best_member_acc": float(member_acc.max()),
        "ensemble_acc": ens_acc,
        "ensemble_gain": ens_acc - mean_acc,
        "member_nll": [float(v) for v in member_nll],
        "ensemble_nll": ens_nll,
        "n": int(n),
        "num_members": int(k),
    }
