"""Look inside a model: every layer's output, and simple activation statistics.

* :func:`intermediates`: the output of every leaf layer, keyed by its path in the
  model tree (``"block1/conv1"``, ``"fc1"``), plus one entry per ``Residual`` add /
  ``Parallel`` merge keyed by the combinator's own path (the rows of
  :func:`jaxnet.nn.summary`, in the same order). It runs ``model.apply`` itself with
  the combinators' output hook (:func:`jaxnet.nn.combinators.apply_tapped`), so the
  last entry *is* ``model.apply``'s output, dropout masks included.
* :func:`activation_stats`: per entry ``mean``, ``std`` and ``frac_zero`` (fraction of
  exact zeros: dead ReLUs, dropped units), float32 scalars; jittable.

>>> acts = nn.intermediates(model, params, state, x)              # eval mode
>>> stats = nn.activation_stats(acts)                              # {"fc1": {"mean", "std", "frac_zero"}, ...}

Both are pure functions of arrays; under ``jax.jit`` bind ``model`` and ``train``
statically: ``jax.jit(nn.intermediates, static_argnums=0, static_argnames="train")``.
:func:`jaxnet.train.make_stats_step` uses them inside a jitted train step.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.nn.combinators import _MissingEntry, apply_tapped

__all__ = ["intermediates", "forward_with_intermediates", "activation_stats"]

Array = jax.Array


def _check_inputs(fn: str, model, x, train) -> None:
    if not (hasattr(model, "apply") and hasattr(model, "init")):
        raise TypeError(f"{fn}: `model` must be a layer/model with init/apply, got {type(model).__name__}")
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{fn}: `train` must be a Python bool (bind it statically under jit), "
                        f"got {type(train).__name__}")
    if not hasattr(x, "shape") or len(x.shape) < 1:
        raise ValueError(f"{fn}: `x` must be an array with a leading batch axis, "
                         f"got {getattr(x, 'shape', type(x).__name__)}")


def forward_with_intermediates(model, params, state, x, *, train: bool = False,
                               key: Optional[Array] = None) -> tuple[Array, Any, dict[str, Array]]:
    """``model.apply`` that also returns every layer's output: ``(y, new_state, acts)``.

    ``y`` and ``new_state`` are what ``model.apply(params, state, x, train=train, key=key)``
    returns (same ops, same keys); ``acts`` as in :func:`intermediates`.
    """
    _check_inputs("forward_with_intermediates", model, x, train)
    acts: dict[str, Array] = OrderedDict()  # keeps execution order through jit (a plain dict is sorted)

    def record(path, y):
        acts[path or type(model).__name__] = y

    try:
        y, new_state = apply_tapped(model, params, state, jnp.asarray(x), train=train, key=key, on_output=record)
    except _MissingEntry as e:
        raise ValueError(f"intermediates: {e.detail}") from None
    except ValueError as e:
        raise ValueError(f"intermediates: {type(model).__name__} on input {tuple(x.shape)}: {e}") from None
    return y, new_state, acts


def intermediates(model, params, state, x, *, train: bool = False, key: Optional[Array] = None) -> dict[str, Array]:
    """The output of every leaf layer of ``model`` on ``x``, keyed by path.

    Args:
      model: a layer or model (``Sequential`` / ``Residual`` / ``Parallel`` trees are walked;
        any other layer is one leaf).
      params, state: from ``model.init``.
      x: the input batch (N, ...), e.g. (N, H, W, C) images.
      train: Python bool; True uses batch statistics and dropout (then ``key`` is needed).
      key: the key you would pass to ``model.apply``; child ``i`` gets ``fold_in(key, i)``.

    Returns:
      ``{path: array}`` in execution order (an ``OrderedDict``, so the order survives ``jit``),
      each array the layer's output (N, ...); paths join the names of nested combinators
      with ``"/"`` (``"block1/conv1"``). A ``Residual`` or
      ``Parallel`` also has an entry at its own path (``"block1"``; ``"Residual"`` for the
      root) holding the sum / merge, so the last entry always equals
      ``model.apply(params, state, x, train=train, key=key)[0]``.
    Raises:
      ValueError (naming ``intermediates`` and the path/shape) on params/state that do not
      fit the model or an input of the wrong shape; TypeError for a non-bool ``train``.
    """
    _check_inputs("intermediates", model, x, train)
    return forward_with_intermediates(model, params, state, x, train=train, key=key)[2]


def _as_mask(mask, n: int, path: str):
    mask = jnp.asarray(mask, jnp.float32)
    if mask.shape != (n,):
        raise ValueError(f"activation_stats: mask has shape {tuple(mask.shape)} but activation {path!r} has "
                         f"batch size {n}; pass a (N,) 0/1 mask matching the batch axis")
    return mask


def activation_stats(acts: Mapping[str, Array], mask: Optional[Array] = None) -> dict[str, dict[str, Array]]:
    """Per entry of ``acts`` (e.g. :func:`intermediates`): ``mean``, ``std`` and ``frac_zero``.

    Args:
      acts: ``{path: array (N, ...)}``.
      mask: optional (N,) float 0/1 over the batch axis (the train step's padding mask):
        statistics over the real rows only. None: over every element.

    Returns:
      ``{path: {"mean": f32[], "std": f32[], "frac_zero": f32[]}}`` (an ``OrderedDict`` in the order of
      ``acts``): the mean and (population)
      standard deviation of all the entry's elements, and the fraction of elements exactly 0
      (dead ReLUs, dropped units). Pure jnp: use it inside ``jit``.
    """
    if not isinstance(acts, Mapping):
        raise ValueError(f"activation_stats: `acts` must be a dict {{path: array}}, got {type(acts).__name__}")
    out = OrderedDict()
    for path, a in acts.items():
        if not hasattr(a, "shape") or a.size == 0:
            raise ValueError(f"activation_stats: entry {path!r} must be a non-empty array, "
                             f"got {getattr(a, 'shape', type(a).__name__)}")
        a = jnp.asarray(a, jnp.float32)
        zero = (a == 0).astype(jnp.float32)
        if mask is None:
            mean = jnp.mean(a)
            std = jnp.sqrt(jnp.mean(jnp.square(a - mean)))
            frac_zero = jnp.mean(zero)
        else:
            if a.ndim < 1:
                raise ValueError(f"activation_stats: entry {path!r} is a scalar; a mask needs a batch axis")
            m = _as_mask(mask, a.shape[0], path).reshape((-1,) + (1,) * (a.ndim - 1))
            count = jnp.maximum(jnp.sum(m) * (a.size // a.shape[0]), 1.0)
            mean = jnp.sum(a * m) / count
            std = jnp.sqrt(jnp.sum(jnp.square(a - mean) * m) / count)
            frac_zero = jnp.sum(zero * m) / count
        out[path] = {"mean": mean, "std": std, "frac_zero": frac_zero}
    return out
