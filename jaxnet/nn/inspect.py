"""Look inside a model: every layer's output, and simple activation statistics.

* :func:`intermediates`: the output of every leaf layer, keyed by its path in the
  model tree (``"block1/conv1"``, ``"fc1"``), plus one entry per ``Residual`` add /
  ``Parallel`` merge keyed by the combinator's own path (the rows of
  :func:`jaxnet.nn.summary`, in the same order). The walk applies each leaf with the
  key ``Sequential`` / ``Residual`` / ``Parallel`` would give it (``fold_in(key, i)``),
  so the last entry *is* ``model.apply``'s output, dropout masks included.
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

from jaxnet.nn.combinators import Parallel, Residual, Sequential, _child_key

__all__ = ["intermediates", "forward_with_intermediates", "activation_stats"]

Array = jax.Array


def _sub(tree: Any, name: str, what: str, path: str) -> Any:
    if not isinstance(tree, Mapping) or name not in tree:
        have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
        where = f"{path}/{name}" if path else name
        raise ValueError(f"intermediates: {what} has no entry {name!r} for layer {where!r} (found {have}); "
                         f"were params/state made by this model's init?")
    return tree[name]


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _walk(layer, params, state, x, train, key, path, out):
    """Apply ``layer`` like its own ``apply`` does, recording leaf (and merge) outputs in ``out``."""
    if isinstance(layer, Sequential):
        new_state = {}
        for i, (name, child) in enumerate(zip(layer.names, layer.layers)):
            x, new_state[name] = _walk(child, _sub(params, name, "params", path), _sub(state, name, "state", path),
                                       x, train, _child_key(key, i), _join(path, name), out)
        return x, new_state
    if isinstance(layer, Residual):
        new_state = {}
        y, new_state["body"] = _walk(layer.body, _sub(params, "body", "params", path),
                                     _sub(state, "body", "state", path), x, train, _child_key(key, 0),
                                     _join(path, "body"), out)
        if layer.shortcut is None:
            s = x
        else:
            s, new_state["shortcut"] = _walk(layer.shortcut, _sub(params, "shortcut", "params", path),
                                             _sub(state, "shortcut", "state", path), x, train, _child_key(key, 1),
                                             _join(path, "shortcut"), out)
        if y.shape != s.shape:
            raise ValueError(f"intermediates: Residual {path or '(model)'!r}: body output shape {tuple(y.shape)} "
                             f"does not match the shortcut {tuple(s.shape)} for input {tuple(x.shape)}")
        y = y + s
        out[path or type(layer).__name__] = y
        return y, new_state
    if isinstance(layer, Parallel):
        outs, new_state = [], {}
        for i, (name, branch) in enumerate(zip(layer.names, layer.branches)):
            y, new_state[name] = _walk(branch, _sub(params, name, "params", path), _sub(state, name, "state", path),
                                       x, train, _child_key(key, i), _join(path, name), out)
            outs.append(y)
        layer._combined([o.shape for o in outs], x.shape)
        if layer.combine == "sum":
            y = outs[0]
            for o in outs[1:]:
                y = y + o
        else:
            y = jnp.concatenate(outs, axis=-1)
        out[path or type(layer).__name__] = y
        return y, new_state
    # a leaf (or a combinator we do not know: treated as one layer, its own apply decides)
    y, new_state = layer.apply(params, state, x, train=train, key=key)
    out[path or type(layer).__name__] = y
    return y, new_state


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
    try:
        y, new_state = _walk(model, params, state, jnp.asarray(x), train, key, "", acts)
    except ValueError as e:
        if str(e).startswith("intermediates:"):
            raise
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
