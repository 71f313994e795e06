"""Maximally activating patches (the lecture's "which image patches excite this unit"): the
images whose activation of one channel at one layer is largest, and the receptive-field crops
around the maximising position.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.nn import layers as L
from jaxnet.nn.combinators import Sequential
from jaxnet.ops._geometry import window_geometry
from jaxnet.understand._common import (check_images, check_int, check_layer_exists, check_model, output_of)

Array = jax.Array

# layers that keep H and W (elementwise, norms, dropout): the receptive field passes through
_SPATIAL_IDENTITY = tuple(c for c in (
    getattr(L, n, None) for n in ("ReLU", "LeakyReLU", "Sigmoid", "Tanh", "ELU", "PReLU", "GELU", "Softplus",
                                  "BatchNorm", "SpatialBatchNorm", "LayerNorm", "GroupNorm", "Dropout",
                                  "LocalResponseNorm", "Identity")) if isinstance(c, type))


class ReceptiveField(NamedTuple):
    """Output position (i, j) of a layer sees input rows ``start[0] + i·jump[0]`` ...
    ``+ size[0] − 1`` (and columns likewise); ``start`` may be negative (padding)."""
    size: tuple
    jump: tuple
    start: tuple


def receptive_field(model, layer: str, input_shape) -> ReceptiveField:
    """The receptive field of ``layer``'s units in a (nested) ``Sequential`` of convolutions,
    poolings and layers that keep H and W (activations, norms, dropout).

    Per axis, through a window k (dilated: d(k−1)+1), stride s and top/left padding p:
    ``size += (k_eff − 1)·jump``, ``start −= p·jump``, ``jump *= s``.
    input_shape: the model's (N, H, W, C) input shape.  ValueError for a layer whose geometry is
    unknown (a ``Residual``, a flatten, ...) on the way.
    """
    fn = "receptive_field"
    check_layer_exists(fn, model, layer)
    rf = ReceptiveField((1, 1), (1, 1), (0, 0))
    found, rf, _ = _walk(fn, model, layer.split("/"), rf, tuple(input_shape))
    assert found
    return rf


def _walk(fn, m, target, rf, shape):
    """Thread (rf, shape) through ``m`` until the path ``target`` (a list of names) is done."""
    if not isinstance(m, Sequential):
        raise ValueError(f"{fn}: cannot follow the path {'/'.join(target)!r} into a {type(m).__name__}")
    for name, layer in zip(m.names, m.layers):
        if target and name == target[0]:
            if len(target) == 1:
                return True, _through(fn, name, layer, rf, shape), layer.output_shape(shape)
            return _walk(fn, layer, target[1:], rf, shape)
        rf = _through(fn, name, layer, rf, shape)
        shape = tuple(layer.output_shape(shape))
    return False, rf, shape


def _through(fn, name, layer, rf, shape):
    if isinstance(layer, Sequential):
        for n, child in zip(layer.names, layer.layers):
            rf = _through(fn, f"{name}/{n}", child, rf, shape)
            shape = tuple(child.output_shape(shape))
        return rf
    if isinstance(layer, (L.Conv2D, L.MaxPool2D, L.AvgPool2D)):
        if isinstance(layer, L.Conv2D):
            g = window_geometry(fn, shape, layer.kernel, stride=layer.stride, padding=layer.padding,
                                dilation=layer.dilation)
        else:
            stride = layer.window if layer.stride is None else layer.stride
            g = window_geometry(fn, shape, layer.window, stride=stride, padding=layer.padding)
        size, jump, start = [], [], []
        for a in range(2):
            eff = g.dilation[a] * (g.kernel[a] - 1) + 1
            size.append(rf.size[a] + (eff - 1) * rf.jump[a])
            start.append(rf.start[a] - g.pads[a][0] * rf.jump[a])
            jump.append(rf.jump[a] * g.stride[a])
        return ReceptiveField(tuple(size), tuple(jump), tuple(start))
    if isinstance(layer, _SPATIAL_IDENTITY):
        return rf
    raise ValueError(f"{fn}: cannot compute the receptive field through layer {name!r} ({type(layer).__name__}); "
                     f"supported: convolutions, poolings and layers that keep H and W")


class TopPatches(NamedTuple):
    """indices: (k,) the images with the largest activations, best first; values: (k,) those
    activations; positions: (k, 2) the (row, col) of the maximum in the layer's output;
    boxes: (k, 4) the receptive field in the image, ``(top, left, bottom, right)`` (exclusive
    end, clipped to the image); patches: (k, rf_h, rf_w, C) the crops, the parts outside the
    image filled with ``fill``."""
    indices: np.ndarray
    values: np.ndarray
    positions: np.ndarray
    boxes: np.ndarray
    patches: np.ndarray


def max_activating_patches(model, params, state, images, layer: str, unit: int, *, k: int = 9,
                           batch_size: Optional[int] = 256, fill: float = 0.0) -> TopPatches:
    """The ``k`` images whose channel ``unit`` of ``layer`` reaches the largest value (its
    maximum over positions), and the receptive-field crops around those maxima.

    images: (N, H, W, C) float (run in batches of ``batch_size``, eval mode; one jitted program);
    layer: a layer name/path of a (nested) ``Sequential`` whose output is (N, h, w, K);
    unit: a channel in [0, K); k: 1 <= k <= N.
    """
    fn = "max_activating_patches"
    check_model(fn, model)
    check_images(fn, images, "images")
    check_layer_exists(fn, model, layer)
    n = images.shape[0]
    k = check_int(fn, "k", k)
    if k > n:
        raise ValueError(f"{fn}: `k`={k} is larger than the number of images {n}")
    bs = n if batch_size is None else check_int(fn, "batch_size", batch_size)
    out_shape = jax.eval_shape(lambda v: output_of(fn, model, params, state, v, layer),
                               jax.ShapeDtypeStruct((1,) + tuple(images.shape[1:]), images.dtype)).shape
    if len(out_shape) != 4:
        raise ValueError(f"{fn}: layer {layer!r} outputs shape {tuple(out_shape)}; need feature maps (N, h, w, K)")
    if not (isinstance(unit, (int, np.integer)) and not isinstance(unit, bool) and 0 <= unit < out_shape[-1]):
        raise ValueError(f"{fn}: `unit` must be a channel index in [0, {out_shape[-1]}) of layer {layer!r}, "
                         f"got {unit!r}")
    rf = receptive_field(model, layer, (1,) + tuple(images.shape[1:]))

    @jax.jit
    def best(xb):
        a = output_of(fn, model, params, state, xb, layer)[..., unit]           # (B, h, w)
        flat = a.reshape(a.shape[0], -1)
        arg = jnp.argmax(flat, axis=1)
        return jnp.max(flat, axis=1), arg // a.shape[2], arg % a.shape[2]

    vals, rows, cols = [], [], []
    x = np.asarray(images)
    for s in range(0, n, bs):
        chunk = x[s:s + bs]
        if len(chunk) < bs and n > bs:           # pad the last chunk: one compiled shape
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], bs - len(chunk), axis=0)])
        v, r, c = (np.asarray(t) for t in best(jnp.asarray(chunk)))
        m = min(bs, n - s)
        vals.append(v[:m]), rows.append(r[:m]), cols.append(c[:m])
    vals, rows, cols = np.concatenate(vals), np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(-vals, kind="stable")[:k]
    h, w, c = images.shape[1:]
    boxes, patches = [], []
    for i in order:
        top = rf.start[0] + rows[i] * rf.jump[0]
        left = rf.start[1] + cols[i] * rf.jump[1]
        crop = np.full((rf.size[0], rf.size[1], c), fill, x.dtype)
        t0, l0 = max(top, 0), max(left, 0)
        b0, r0 = min(top + rf.size[0], h), min(left + rf.size[1], w)
        crop[t0 - top:b0 - top, l0 - left:r0 - left] = x[i, t0:b0, l0:r0]
        boxes.append((t0, l0, b0, r0))
        patches.append(crop)
    return TopPatches(order, vals[order], np.stack([rows[order], cols[order]], axis=1),
                      np.asarray(boxes), np.stack(patches))


__all__ = ["ReceptiveField", "receptive_field", "TopPatches", "max_activating_patches"]
