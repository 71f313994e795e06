"""Shared pieces of :mod:`jaxnet.understand`: input checks, the model's scores, a layer's
output by name, splitting a ``Sequential`` at a layer, the guided ReLU.

Every check raises a one-line ``ValueError`` that starts with the public function's name
and names the bad argument with its shape or value.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number, is_int  # noqa: F401 - shared with the ops (check_number re-exported here)
from jaxnet.nn.combinators import Residual, Sequential
from jaxnet.nn.inspect import intermediates
from jaxnet.nn.layers import Layer, ReLU

Array = jax.Array


# ------------------------------------------------------------------------------------------- checks

def check_model(fn: str, model) -> None:
    if not (hasattr(model, "apply") and hasattr(model, "init")):
        raise ValueError(f"{fn}: `model` must be a jaxnet layer/model with init/apply, got {type(model).__name__}")


def check_images(fn: str, x, name: str = "x") -> None:
    """``x`` must be a floating (N, H, W, C) array with N, H, W, C >= 1."""
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != 4:
        raise ValueError(f"{fn}: `{name}` must be images of rank 4 (N, H, W, C), got "
                         f"{'shape ' + str(tuple(shape)) if shape is not None else type(x).__name__}")
    if min(shape) < 1:
        raise ValueError(f"{fn}: `{name}` must be non-empty (N, H, W, C), got shape {tuple(shape)}")
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{fn}: `{name}` must be a floating-point array, got dtype {jnp.result_type(x)}")


def check_labels(fn: str, y, n: int, name: str = "y") -> None:
    """``y`` must be an integer (N,) array (a Python int is broadcast by :func:`as_labels`)."""
    shape = getattr(y, "shape", None)
    if shape is None or tuple(shape) != (n,):
        raise ValueError(f"{fn}: `{name}` must be integer class labels of shape ({n},) (one per image), got "
                         f"{'shape ' + str(tuple(shape)) if shape is not None else repr(y)}")
    if not jnp.issubdtype(jnp.result_type(y), jnp.integer):
        raise ValueError(f"{fn}: `{name}` must be integer class labels, got dtype {jnp.result_type(y)}")


def as_labels(fn: str, y, n: int, name: str = "y") -> Array:
    """``y`` as an int32 (N,) array; an int means the same class for every image."""
    if is_int(y):
        return jnp.full((n,), int(y), jnp.int32)
    if getattr(y, "shape", None) == () and jnp.issubdtype(jnp.result_type(y), jnp.integer):
        return jnp.full((n,), y, jnp.int32)          # a scalar array (e.g. traced under jit)
    check_labels(fn, y, n, name)
    return jnp.asarray(y, jnp.int32)


def check_int(fn: str, name: str, value, minimum: int = 1) -> int:
    if not is_int(value) or value < minimum:
        raise ValueError(f"{fn}: `{name}` must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_choice(fn: str, name: str, value, choices) -> str:
    if value not in choices:
        raise ValueError(f"{fn}: `{name}` must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def check_clip(fn: str, clip) -> Optional[tuple]:
    """``clip``: None or ``(low, high)``, each a number or an array broadcastable to the images
    (e.g. per-channel bounds (C,) of normalised pixels), with low <= high where both are concrete."""
    if clip is None:
        return None
    if not (isinstance(clip, (tuple, list)) and len(clip) == 2):
        raise ValueError(f"{fn}: `clip` must be None or a pair (low, high) of the valid pixel range, got {clip!r}")
    lo, hi = clip
    try:
        bad = bool(np.any(np.asarray(lo) > np.asarray(hi)))
    except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerArrayConversionError):
        bad = False
    if bad:
        raise ValueError(f"{fn}: `clip` low must be <= high, got {clip!r}")
    return (lo, hi)


def clip_to(x, clip):
    return x if clip is None else jnp.clip(x, jnp.asarray(clip[0], x.dtype), jnp.asarray(clip[1], x.dtype))


def check_key(fn: str, key, name: str = "key") -> Array:
    if key is None or not hasattr(key, "dtype"):
        raise ValueError(f"{fn}: `{name}` must be a PRNG key (jax.random.key(seed)), got {key!r}")
    return key


# ------------------------------------------------------------------------------------ model helpers

def scores(model, params, state, x) -> Array:
    """The model's class scores in eval mode: ``model.apply(params, state, x, train=False)[0]``."""
    return model.apply(params, state, x, train=False)[0]


def check_scores(fn: str, s, n: int) -> None:
    if s.ndim != 2 or s.shape[0] != n:
        raise ValueError(f"{fn}: the model must return class scores (N, K) = ({n}, K), got shape {tuple(s.shape)}")


def split_at(fn: str, model, layer: str):
    """``(prefix, suffix, names_prefix, names_suffix)``: ``model`` (a ``Sequential``) split after
    its top-level layer ``layer``; ``suffix`` is None when ``layer`` is the last one."""
    if not isinstance(model, Sequential):
        raise ValueError(f"{fn}: splitting at layer {layer!r} needs a Sequential model, got {type(model).__name__}")
    if layer not in model.names:
        raise ValueError(f"{fn}: layer {layer!r} is not a top-level layer of the model; names: {model.names}")
    i = model.names.index(layer) + 1
    prefix = Sequential(model.layers[:i], model.names[:i])
    suffix = Sequential(model.layers[i:], model.names[i:]) if i < len(model.layers) else None
    return prefix, suffix, model.names[:i], model.names[i:]


def sub(tree, names) -> dict:
    return {k: tree[k] for k in names}


def layer_output(model, params, state, x, layer: str) -> Array:
    """The output of ``layer`` (a top-level name or a ``"/"`` path) on x, in eval mode (see
    :func:`output_of`)."""
    check_model("layer_output", model)
    return output_of("layer_output", model, params, state, x, layer)


def output_of(fn: str, model, params, state, x, layer: str) -> Array:
    """The output of ``layer`` in eval mode: a top-level name of a ``Sequential`` runs the prefix
    up to it only; a nested path (``"block1/conv1"``) is read from :func:`jaxnet.nn.intermediates`."""
    if isinstance(model, Sequential) and layer in model.names:
        prefix, _, names, _ = split_at(fn, model, layer)
        return prefix.apply(sub(params, names), sub(state, names), x, train=False)[0]
    acts = intermediates(model, params, state, x, train=False)
    if layer not in acts:
        raise ValueError(f"{fn}: layer {layer!r} is not in the model; layer paths: {tuple(acts)}")
    return acts[layer]


def check_layer_exists(fn: str, model, layer) -> None:
    """A cheap structural check of a layer path (``"a/b"``) against the model's names."""
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"{fn}: `layer` must be a layer name (a non-empty str), got {layer!r}")
    node = model
    for part in layer.split("/"):
        names = getattr(node, "names", None)
        children = getattr(node, "layers", None) or getattr(node, "branches", None)
        if isinstance(node, Residual):
            names, children = ("body", "shortcut"), (node.body, node.shortcut)
        if names is None or children is None or part not in names:
            raise ValueError(f"{fn}: layer {layer!r} is not in the model; names at this level: {names}")
        node = children[list(names).index(part)]


def per_image_norm(g, ord_: str = "l2"):
    """(N, 1, 1, 1) per-image norms of an (N, H, W, C) array (L2, or max-abs for "linf")."""
    axes = tuple(range(1, g.ndim))
    if ord_ == "linf":
        return jnp.max(jnp.abs(g), axis=axes, keepdims=True)
    return jnp.sqrt(jnp.sum(jnp.square(g), axis=axes, keepdims=True))


# ------------------------------------------------------------------------------------- guided ReLU

@jax.custom_vjp
def guided_relu(x):
    """ReLU whose backward is guided backpropagation's (Springenberg et al., 2015).

    Forward: ``max(x, 0)``.  Backward: ``dx = dy · 1[x > 0] · 1[dy > 0]``: the
    gradient passes only where the input was positive (ReLU's own rule) *and* the
    incoming gradient is positive (the "deconvnet" rule).  x: any shape, float.
    """
    return jnp.maximum(x, 0)


def _guided_relu_fwd(x):
    return jnp.maximum(x, 0), x


def _guided_relu_bwd(x, dy):
    """dx = dy · 1[x > 0] · 1[dy > 0]. Residual: x (any shape); dy, dx: the shape of x."""
    return (jnp.where((x > 0) & (dy > 0), dy, jnp.zeros_like(dy)),)


guided_relu.defvjp(_guided_relu_fwd, _guided_relu_bwd)


@dataclasses.dataclass(frozen=True)
class GuidedReLU(Layer):
    """A parameter-free layer applying :func:`guided_relu`: ReLU forward, guided backward.
    (N, ...) -> the same shape."""

    def init(self, key, input_shape):
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        return guided_relu(x), state

    def output_shape(self, input_shape):
        return tuple(input_shape)


def _replace_relus(layer, count: list):
    if isinstance(layer, tuple):
        return tuple(_replace_relus(v, count) for v in layer)
    if isinstance(layer, ReLU):
        count[0] += 1
        return GuidedReLU()
    if not (isinstance(layer, Layer) and dataclasses.is_dataclass(layer)):
        return layer
    changes = {}
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if isinstance(v, Layer) or (isinstance(v, tuple) and any(isinstance(e, Layer) for e in v)):
            changes[f.name] = _replace_relus(v, count)
    return dataclasses.replace(layer, **changes) if changes else layer


def with_guided_relu(model):
    """``model`` with every :class:`jaxnet.nn.ReLU` layer (at any depth) replaced by a
    :class:`GuidedReLU`; params and state are unchanged (ReLU has none).

    Raises ValueError when the model has no ``nn.ReLU`` layer (ReLUs applied inside other
    layers' code, e.g. a transformer's feed-forward, are not layers and are not replaced).
    """
    check_model("with_guided_relu", model)
    count = [0]
    out = _replace_relus(model, count)
    if count[0] == 0:
        raise ValueError(f"with_guided_relu: the model has no nn.ReLU layer to replace ({type(model).__name__})")
    return out


__all__ = ["guided_relu", "GuidedReLU", "with_guided_relu", "scores", "layer_output", "split_at"]

