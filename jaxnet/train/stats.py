"""Per-layer training statistics: a second jitted train step that also reports them.

The course's babysitting numbers, per parameter tensor and per layer:

* ``grad_norm`` and ``param_norm`` (L2, per leaf), ``update_ratio`` =
  ``||w_new - w_old|| / ||w_old||`` (= ``||lr * update|| / ||w||``; about 1e-3 is healthy);
* the train-mode forward's activation ``mean`` / ``std`` / ``frac_zero`` per leaf layer
  (:func:`jaxnet.nn.activation_stats` of :func:`jaxnet.nn.intermediates`).

:func:`make_stats_step` is a *separate* jitted function with the train step's signature and
exactly its ``TrainState`` update, so the normal step (:func:`jaxnet.train.make_train_step`)
stays as lean as it was; call the stats step instead of it every k steps::

    step = train.make_train_step(model, opt)
    stats_step = train.make_stats_step(model, opt)
    for i, (xb, yb, mb) in enumerate(batches):
        if i % 100 == 0:
            ts, metrics, stats = stats_step(ts, xb, yb, mb)
        else:
            ts, metrics = step(ts, xb, yb, mb)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Optional

import jax
import jax.numpy as jnp
import optax

from jaxnet.nn.inspect import activation_stats, forward_with_intermediates
from jaxnet.train.state import TrainState
from jaxnet.train.step import _impl_context, default_loss, step_core

__all__ = ["make_stats_step", "update_ratios", "param_norms", "flatten_paths"]

Array = jax.Array


def _key_name(k: Any) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def flatten_paths(tree: Any) -> dict[str, Any]:
    """``{"block1/conv1/w": leaf, ...}``: every leaf of a nested-dict pytree keyed by its
    ``"/"``-joined path (the order of ``jax.tree_util.tree_leaves``)."""
    return OrderedDict(("/".join(_key_name(k) for k in path) or "(root)", leaf)
                       for path, leaf in jax.tree_util.tree_leaves_with_path(tree))


def _norm(a: Array) -> Array:
    a = jnp.asarray(a, jnp.float32)
    return jnp.sqrt(jnp.sum(jnp.square(a)))


def param_norms(tree: Any) -> dict[str, Array]:
    """``{path: ||leaf||_2}`` (float32 scalars) for every leaf of ``tree`` (params or grads)."""
    return OrderedDict((p, _norm(a)) for p, a in flatten_paths(tree).items())


def update_ratios(params: Any, new_params: Any) -> dict[str, Array]:
    """``{path: ||new - old|| / ||old||}`` per parameter leaf, float32 scalars.

    params, new_params: the same pytree of arrays before and after one update (e.g.
    ``ts.params`` and the returned ``ts.params``). ``||new - old||`` is the applied update
    ``||lr * update||``; the course's rule of thumb is a ratio of about 1e-3 for weights.
    A leaf that is all zeros (a bias at init) gives ``inf`` (or NaN when it did not move).
    Pure jnp: works under ``jit``.
    Raises ValueError (naming ``update_ratios``) when the two trees or leaf shapes differ.
    """
    old, new = flatten_paths(params), flatten_paths(new_params)
    if list(old) != list(new):
        raise ValueError(f"update_ratios: params and new_params have different structures: "
                         f"{sorted(set(old) ^ set(new)) or list(old)} vs {list(new)}")
    out = OrderedDict()
    for path, a in old.items():
        b = new[path]
        if jnp.shape(a) != jnp.shape(b):
            raise ValueError(f"update_ratios: leaf {path!r} has shape {tuple(jnp.shape(a))} in params but "
                             f"{tuple(jnp.shape(b))} in new_params")
        diff = jnp.asarray(b, jnp.float32) - jnp.asarray(a, jnp.float32)
        out[path] = _norm(diff) / _norm(a)
    return out


def make_stats_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: Optional[Callable] = None,
    impl: Optional[str] = None,
    augment_fn: Optional[Callable[[Array, Array], Array]] = None,
    donate: bool = True,
    _trace_hook: Optional[Callable[[Callable], Callable]] = None,
) -> Callable:
    """A jitted ``stats_step(ts, x, y, mask) -> (ts, metrics, stats)``.

    Arguments, ``ts`` update and ``metrics`` exactly as :func:`jaxnet.train.make_train_step`'s
    step (same key splits, dropout, augmentation, masked loss, optimizer update); ``donate``
    and ``_trace_hook`` as there. The model is run through
    :func:`jaxnet.nn.forward_with_intermediates` (the same ops as ``model.apply``), so the
    activations come from the very forward pass that is differentiated.

    x (B, ...), y (B,) int32, mask (B,) float32 0/1. ``stats``, float32 scalars:

    * ``stats["params"][path]`` for every parameter leaf (``"fc1/w"``, ``"block1/norm1/gamma"``):
      ``grad_norm`` (of this batch's gradient), ``param_norm`` (before the update),
      ``update_ratio`` (:func:`update_ratios`: ``||w_new - w_old|| / ||w_old||``);
    * ``stats["activations"][path]`` for every leaf layer (:func:`jaxnet.nn.intermediates`
      paths): ``mean``, ``std``, ``frac_zero`` of the train-mode output over the real
      (mask = 1) rows.

    A separate jitted function: the normal train step is not touched or slowed; call this
    one every k steps in its place.
    """
    loss_fn = default_loss if loss_fn is None else loss_fn

    def stats_step(ts: TrainState, x: Array, y: Array, mask: Array):
        if getattr(x, "ndim", 0) < 1 or jnp.shape(y) != (x.shape[0],) or jnp.shape(mask) != (x.shape[0],):
            raise ValueError(f"stats_step: expected x (B, ...), y (B,), mask (B,); got x "
                             f"{tuple(jnp.shape(x))}, y {tuple(jnp.shape(y))}, mask {tuple(jnp.shape(mask))}")
        def forward(params, state, x, key):
            return forward_with_intermediates(model, params, state, x, train=True, key=key)

        with _impl_context(impl):
            new_ts, metrics, grads, acts = step_core(forward, optimizer, loss_fn, augment_fn, ts, x, y, mask)
            params, mask = new_ts.params, mask.astype(jnp.float32)
            grad_norms, p_norms, ratios = param_norms(grads), param_norms(ts.params), update_ratios(ts.params, params)
            stats = {
                "params": OrderedDict((p, {"grad_norm": grad_norms[p], "param_norm": p_norms[p],
                                               "update_ratio": ratios[p]}) for p in p_norms),
                "activations": activation_stats(jax.lax.stop_gradient(acts), mask),
            }
            return new_ts, metrics, stats

    fn = _trace_hook(stats_step) if _trace_hook is not None else stats_step
    return jax.jit(fn, donate_argnums=(0,) if donate else ())
