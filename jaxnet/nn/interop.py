"""PyTorch ``state_dict`` <-> jaxnet params, for the zoo's networks (and any model of the same layers).

:func:`from_torch_state_dict` fills a jaxnet model's ``(params, state)`` from a PyTorch
``state_dict`` (torch tensors or NumPy arrays); :func:`to_torch_state_dict` is its inverse.
No torch import is needed: the conversion is NumPy.

How the two are matched: by order.  The model's parametrised layers (:class:`Conv2D`,
:class:`BatchNorm`, :class:`Affine`), in the order the model applies them (a
:class:`Residual`'s body before its shortcut, a :class:`Parallel`'s branches in order), are
paired with the ``state_dict``'s modules in their registration order (the order
``state_dict()`` lists them), grouped by module prefix and recognised by their entries
(``running_mean``: batch norm; a 4-d ``weight``: convolution; a 2-d one: linear).  Every
pair must agree in kind and shape, or a one-line ``ValueError`` names both sides.
torchvision's AlexNet, VGG, ResNet and GoogLeNet (``aux_logits=False``) register their
modules in forward order, so they convert as they are.

Layouts (docs/zoo.md, "Loading torchvision weights"):

* convolution ``weight`` (O, I/groups, KH, KW) -> ``w`` (KH, KW, I/groups, O); ``bias`` -> ``b``;
* linear ``weight`` (out, in) -> ``w`` (in, out); after a :class:`Flatten` of an (H, W, C) map the
  input axis is also reordered from PyTorch's (C, H, W) flattening to jaxnet's (H, W, C);
* batch norm ``weight`` / ``bias`` -> params ``gamma`` / ``beta``; ``running_mean`` /
  ``running_var`` -> state ``mean`` / ``var``; ``num_batches_tracked`` is dropped.  The eps must
  match (torchvision: 1e-5, GoogLeNet's 1e-3; the zoo's layers use the same).
"""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.nn.layers import Affine, BatchNorm, Conv2D, Flatten

__all__ = ["from_torch_state_dict", "to_torch_state_dict", "parametrised_layers"]

_KINDS = {Conv2D: "conv", BatchNorm: "batchnorm", Affine: "linear"}


def parametrised_layers(model, input_shape) -> list[tuple[tuple, str, Any, tuple]]:
    """``(path, kind, layer, flatten_from)`` for every Conv2D / BatchNorm / Affine of ``model`` in
    the order it applies them; ``path`` is the key path into params, ``flatten_from`` the
    (H, W, C) map a :class:`Flatten` made the Affine's input from (``None`` otherwise)."""
    out: list = []
    pending = [None]     # the (H, W, C) shape a Flatten saw, until the next layer uses it

    def walk(layer, path, shape):
        if getattr(layer, "reports_children", False):
            for name, child, child_shape in layer.children(shape):
                walk(child, path + (name,), tuple(child_shape))
            return
        kind = _KINDS.get(type(layer))
        if isinstance(layer, Flatten):
            pending[0] = tuple(shape[1:]) if len(shape) == 4 else None
            return
        if kind is not None:
            out.append((path, kind, layer, pending[0] if kind == "linear" else None))
            pending[0] = None

    walk(model, (), tuple(input_shape))
    return out


def _numpy(t) -> np.ndarray:
    if hasattr(t, "detach"):           # a torch tensor, without importing torch
        t = t.detach().cpu().numpy()
    return np.asarray(t)


def _modules(state_dict: Mapping[str, Any]) -> list[tuple[str, dict]]:
    """``(prefix, {entry: array})`` per module, in the state_dict's order."""
    groups: dict[str, dict] = {}
    for key, value in state_dict.items():
        prefix, _, entry = key.rpartition(".")
        groups.setdefault(prefix, {})[entry] = value
    return list(groups.items())


def _kind(prefix: str, entries: dict) -> str:
    if "running_mean" in entries:
        return "batchnorm"
    w = entries.get("weight")
    if w is not None and _numpy(w).ndim == 4:
        return "conv"
    if w is not None and _numpy(w).ndim == 2:
        return "linear"
    raise ValueError(f"from_torch_state_dict: module {prefix!r} with entries {sorted(entries)} is not a "
                     f"convolution, batch norm or linear layer")


def _set(tree: dict, path: tuple, value: dict) -> None:
    node = tree
    for name in path[:-1]:
        node = node.setdefault(name, {})
    node[path[-1]] = value


def _get(tree: dict, path: tuple) -> dict:
    for name in path:
        tree = tree[name]
    return tree


def _perm_chw_to_hwc(hwc: tuple) -> np.ndarray:
    """Index p such that x_hwc_flat = x_chw_flat[p] for an (H, W, C) map."""
    h, w, c = hwc
    return np.arange(h * w * c).reshape(c, h, w).transpose(1, 2, 0).ravel()


def from_torch_state_dict(model, state_dict: Mapping[str, Any], input_shape, *, dtype=None):
    """``(params, state)`` for ``model`` (at ``input_shape``, NHWC) from a PyTorch ``state_dict``.

    ``dtype``: of the arrays (default: JAX's default float).  Raises ``ValueError`` (one line,
    naming the module and the shapes) where the two networks do not line up.
    """
    dtype = jnp.result_type(float) if dtype is None else dtype
    params_like, state_like = jax.eval_shape(lambda k: model.init(k, tuple(input_shape)), jax.random.key(0))
    layers = parametrised_layers(model, input_shape)
    modules = _modules(state_dict)
    if len(modules) != len(layers):
        raise ValueError(f"from_torch_state_dict: the state_dict has {len(modules)} parametrised modules, "
                         f"the model {len(layers)} (Conv2D, BatchNorm, Affine)")
    params: dict = {}
    state: dict = {}
    for (path, kind, layer, hwc), (prefix, entries) in zip(layers, modules):
        where = f"{prefix!r} -> {'/'.join(path)}"
        tkind = _kind(prefix, entries)
        if tkind != kind:
            raise ValueError(f"from_torch_state_dict: {where}: a torch {tkind} paired with a jaxnet {kind}")
        want = _get(params_like, path)
        if kind == "conv":
            p = {"w": _numpy(entries["weight"]).transpose(2, 3, 1, 0)}
        elif kind == "linear":
            w = _numpy(entries["weight"])
            if hwc is not None and int(np.prod(hwc)) == w.shape[1]:
                w = w[:, _perm_chw_to_hwc(hwc)]
            p = {"w": w.T}
        else:
            p = {"gamma": _numpy(entries["weight"]), "beta": _numpy(entries["bias"])}
            _set(state, path, {"mean": jnp.asarray(_numpy(entries["running_mean"]), dtype),
                               "var": jnp.asarray(_numpy(entries["running_var"]), dtype)})
        if kind != "batchnorm" and "bias" in entries and entries["bias"] is not None:
            p["b"] = _numpy(entries["bias"])
        if set(p) != set(want):
            raise ValueError(f"from_torch_state_dict: {where}: torch gives {sorted(p)}, the model wants "
                             f"{sorted(want)} (a bias on one side only?)")
        for name, value in p.items():
            if tuple(value.shape) != tuple(want[name].shape):
                raise ValueError(f"from_torch_state_dict: {where}: {name} has shape {tuple(value.shape)} after "
                                 f"conversion, the model wants {tuple(want[name].shape)}")
        _set(params, path, {k: jnp.asarray(v, dtype) for k, v in p.items()})
    # the parameter-free layers' (empty) entries, so the trees have the model's structure
    return _fill(params_like, params), _fill(state_like, state)


def _fill(like, got):
    """``got`` with ``{}`` wherever ``like`` has a sub-tree ``got`` lacks (parameter-free layers)."""
    if isinstance(like, dict):
        return {k: _fill(v, got.get(k, {}) if isinstance(got, dict) else got) for k, v in like.items()}
    return got


def to_torch_state_dict(model, params, state, input_shape) -> dict[str, np.ndarray]:
    """The inverse of :func:`from_torch_state_dict`, with jaxnet's key paths as module names
    (``stage1.block1.add.body.conv1.weight``): NumPy arrays in PyTorch's layouts."""
    out: dict[str, np.ndarray] = {}
    for path, kind, layer, hwc in parametrised_layers(model, input_shape):
        prefix = ".".join(path)
        p = _get(params, path)
        if kind == "conv":
            out[prefix + ".weight"] = np.asarray(p["w"]).transpose(3, 2, 0, 1)
        elif kind == "linear":
            w = np.asarray(p["w"]).T
            if hwc is not None and int(np.prod(hwc)) == w.shape[1]:
                w = w[:, np.argsort(_perm_chw_to_hwc(hwc))]
            out[prefix + ".weight"] = w
        else:
            s = _get(state, path)
            out[prefix + ".weight"], out[prefix + ".bias"] = np.asarray(p["gamma"]), np.asarray(p["beta"])
            out[prefix + ".running_mean"], out[prefix + ".running_var"] = np.asarray(s["mean"]), np.asarray(s["var"])
        if kind != "batchnorm" and "b" in p:
            out[prefix + ".bias"] = np.asarray(p["b"])
    return out
