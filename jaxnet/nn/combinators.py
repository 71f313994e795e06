"""Combinators: layers made of layers, with the same ``init`` / ``apply`` protocol.

* :class:`Sequential` chains layers; params/state are dicts keyed by the
  child names (``"0", "1", ...`` or the names given), so nested Sequentials
  give nested dicts (named sub-models).
* :class:`Residual`: ``y = body(x) + shortcut(x)`` (identity shortcut by default).
* :class:`Parallel`: branches on the same input, concatenated on the last
  axis or summed (an Inception module).

Randomness: child ``i`` gets ``jax.random.fold_in(key, i)`` (for ``init`` and
for ``apply``); a ``key=None`` is passed on as ``None``, so a stochastic child
in train mode raises its own clear error.

The output hook: :func:`apply_tapped` runs ``layer.apply`` and reports
``on_output(path, y)`` for the output of every leaf layer and of every
``Residual`` / ``Parallel`` (the sum / merge), in execution order. Paths join
child names with ``"/"`` (``"block1/conv1"``); ``""`` is the layer passed in.
A leaf is any layer but these three combinators (their class attribute
``reports_children``): its own ``apply`` runs with the hook off, and its
output is one entry. The hook is a context variable read while ``apply`` is
traced: with it off, each child costs one ``ContextVar.get``.

Fusion: :class:`Sequential` runs a child and the next one as one op where the
child's :meth:`~jaxnet.nn.Layer.fused_with` offers it (a ``BatchNorm`` or a
``Conv2D`` followed by a ``ReLU`` of the same ``impl``:
:func:`jaxnet.functional.batch_norm_relu` / ``conv2d_relu``, which the oneDNN
kernels run fused); params and state keep one
entry per child.  With the hook on, the pair still runs fused (the result is
``apply``'s) and both outputs are reported: the first child's from running it
alone as well, the second's the fused op's.
"""
from __future__ import annotations

import contextvars
import dataclasses
from collections.abc import Mapping
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxnet.nn.layers import Layer, _shape

__all__ = ["Sequential", "Residual", "Parallel", "apply_tapped"]


def _child_key(key, i):
    return None if key is None else jax.random.fold_in(key, i)


# ----------------------------------------------------------------------------- the output hook

class _Tap(NamedTuple):
    on_output: Callable[[str, Any], None]
    path: str            # the path of the combinator now applying its children


_TAP: contextvars.ContextVar[Optional[_Tap]] = contextvars.ContextVar("jaxnet_nn_tap", default=None)


class _MissingEntry(ValueError):
    """params/state without the entry a combinator's child needs; ``detail`` is the message without the owner."""

    def __init__(self, owner: str, detail: str):
        super().__init__(f"{owner}: {detail}")
        self.detail = detail


def _join(path: str, name: str) -> str:
    return f"{path}/{name}" if path else name


def _entry(owner, tree, name, what, tap):
    if isinstance(tree, Mapping) and name in tree:
        return tree[name]
    have = sorted(tree) if isinstance(tree, Mapping) else type(tree).__name__
    where = name if tap is None else _join(tap.path, name)
    raise _MissingEntry(type(owner).__name__, f"{what} has no entry {name!r} for layer {where!r} (found {have}); "
                                              f"were params/state made by this model's init?")


def _apply_as(on_output, path, layer, params, state, x, train, key):
    """Apply ``layer`` at ``path`` with the hook on: walk it if it reports its children, else report its output."""
    walk = getattr(layer, "reports_children", False)
    token = _TAP.set(_Tap(on_output, path) if walk else None)
    try:
        y, new_state = layer.apply(params, state, x, train=train, key=key)
    finally:
        _TAP.reset(token)
    if not walk:
        on_output(path, y)
    return y, new_state


def _apply_child(owner, name, layer, params, state, x, train, key):
    """``layer.apply`` on ``params[name]`` / ``state[name]``, through the hook when it is on."""
    tap = _TAP.get()
    p, s = _entry(owner, params, name, "params", tap), _entry(owner, state, name, "state", tap)
    if tap is None:
        return layer.apply(p, s, x, train=train, key=key)
    return _apply_as(tap.on_output, _join(tap.path, name), layer, p, s, x, train, key)


def _report(y):
    """A merging combinator's own output, at its own path (when the hook is on)."""
    tap = _TAP.get()
    if tap is not None:
        tap.on_output(tap.path, y)
    return y


def apply_tapped(layer, params, state, x, *, train: bool, key=None,
                 on_output: Callable[[str, Any], None]):
    """``layer.apply(params, state, x, train=train, key=key)``, reporting outputs to ``on_output``.

    ``on_output(path, y)`` is called, in execution order, with the output of
    every leaf layer and of every ``Residual`` / ``Parallel`` (after the add /
    merge); ``path`` joins the child names from ``layer`` down with ``"/"``,
    and is ``""`` for ``layer`` itself (reported when ``layer`` is a leaf or a
    ``Residual`` / ``Parallel``). The result is exactly ``layer.apply``'s:
    the same ops and the same keys (a pair a ``Sequential`` fuses, BatchNorm or
    Conv2D + ReLU, runs fused; the first layer's own output is computed alone
    for its report). Under ``jit`` the calls happen at trace
    time with traced arrays, so return what ``on_output`` collects from the
    jitted function.
    """
    return _apply_as(on_output, "", layer, params, state, x, train, key)


def _context(owner, name, layer, shape, e):
    """Re-raise ``e`` with the child's name and input shape in front (ValueError only)."""
    return ValueError(f"{type(owner).__name__}[{name!r}] ({type(layer).__name__}) with input {tuple(shape)}: {e}")


def _check_names(owner, names, n):
    names = tuple(str(i) for i in range(n)) if names is None else tuple(names)
    if len(names) != n:
        raise ValueError(f"{owner}: {len(names)} names for {n} layers: {names}")
    if not all(isinstance(s, str) and s for s in names):
        raise ValueError(f"{owner}: names must be non-empty strings, got {names}")
    if len(set(names)) != len(names):
        raise ValueError(f"{owner}: names must be unique, got {names}")
    return names


def _check_layers(owner, layers):
    for i, layer in enumerate(layers):
        if not (hasattr(layer, "init") and hasattr(layer, "apply") and hasattr(layer, "output_shape")):
            raise TypeError(f"{owner}: element {i} is not a layer (needs init/apply/output_shape): {layer!r}")


@dataclasses.dataclass(frozen=True)
class Sequential(Layer):
    """Apply ``layers`` in order. ``names``: one unique string per layer (default "0", "1", ...).

    params/state: ``{name: child_params}`` for every child (``{}`` for stateless ones).
    """
    layers: tuple
    names: Optional[tuple] = None
    reports_children = True

    def __post_init__(self):
        super().__post_init__()
        _check_layers("Sequential", self.layers)
        object.__setattr__(self, "names", _check_names("Sequential", self.names, len(self.layers)))

    def children(self, input_shape):
        """``(name, layer, input_shape)`` for every child, shapes threaded through."""
        shape = _shape(self, input_shape)
        out = []
        for name, layer in zip(self.names, self.layers):
            out.append((name, layer, shape))
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as e:
                raise _context(self, name, layer, shape, e) from None
        return out

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        for name, layer in zip(self.names, self.layers):
            try:
                shape = tuple(layer.output_shape(shape))
            except ValueError as e:
                raise _context(self, name, layer, shape, e) from None
        return shape

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        params, state = {}, {}
        for i, (name, layer) in enumerate(zip(self.names, self.layers)):
            try:
                params[name], state[name] = layer.init(jax.random.fold_in(key, i), shape)
                shape = tuple(layer.output_shape(shape))
            except ValueError as e:
                raise _context(self, name, layer, shape, e) from None
        return params, state

    def apply(self, params, state, x, *, train, key=None):
        new_state = {}
        names, layers, i = self.names, self.layers, 0
        while i < len(layers):
            name, layer = names[i], layers[i]
            pair = layer.fused_with(layers[i + 1]) if i + 1 < len(layers) else None
            if pair is None:
                x, new_state[name] = _apply_child(self, name, layer, params, state, x, train, _child_key(key, i))
                i += 1
                continue
            # this child and the next as one op (Layer.fused_with: BatchNorm / Conv2D + ReLU)
            tap, nxt = _TAP.get(), names[i + 1]
            if tap is not None:               # the hook reports the first one's own output too, run alone
                _apply_child(self, name, layer, params, state, x, train, _child_key(key, i))
            x, new_state[name] = pair(_entry(self, params, name, "params", tap),
                                      _entry(self, state, name, "state", tap), x, train=train)
            new_state[nxt] = _entry(self, state, nxt, "state", tap)
            if tap is not None:
                tap.on_output(_join(tap.path, nxt), x)
            i += 2
        return x, new_state

    def __len__(self):
        return len(self.layers)

    def __getitem__(self, item):
        """A child by name or position."""
        if isinstance(item, str):
            try:
                return self.layers[self.names.index(item)]
            except ValueError:
                raise KeyError(f"Sequential has no layer named {item!r}; names: {self.names}") from None
        return self.layers[item]


@dataclasses.dataclass(frozen=True)
class Residual(Layer):
    """``y = body(x) + shortcut(x)``; ``shortcut=None`` is the identity.

    params/state: ``{"body": ..., "shortcut": ...}`` (no ``"shortcut"`` entry
    for the identity). The two shapes must match (checked at init, apply and
    output_shape); for a block that changes shape, give a projection shortcut
    such as ``Conv2D(features, kernel=1, stride=...)``.
    Keys: body ``fold_in(key, 0)``, shortcut ``fold_in(key, 1)``.
    """
    body: Layer
    shortcut: Optional[Layer] = None
    reports_children = True

    def __post_init__(self):
        super().__post_init__()
        _check_layers("Residual", (self.body,) if self.shortcut is None else (self.body, self.shortcut))

    def children(self, input_shape):
        shape = _shape(self, input_shape)
        out = [("body", self.body, shape)]
        if self.shortcut is not None:
            out.append(("shortcut", self.shortcut, shape))
        return out

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        try:
            body = tuple(self.body.output_shape(shape))
        except ValueError as e:
            raise _context(self, "body", self.body, shape, e) from None
        if self.shortcut is None:
            short = shape
        else:
            try:
                short = tuple(self.shortcut.output_shape(shape))
            except ValueError as e:
                raise _context(self, "shortcut", self.shortcut, shape, e) from None
        if body != short:
            what = "the input (identity shortcut)" if self.shortcut is None else "the shortcut output"
            raise ValueError(f"Residual: body output shape {body} does not match {what} {short} for input "
                             f"{shape}; they are added, so give a shortcut that maps the input to {body} "
                             f"(e.g. Conv2D(features, kernel=1, stride=...))")
        return body

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        self.output_shape(shape)
        params, state = {}, {}
        params["body"], state["body"] = self.body.init(jax.random.fold_in(key, 0), shape)
        if self.shortcut is not None:
            params["shortcut"], state["shortcut"] = self.shortcut.init(jax.random.fold_in(key, 1), shape)
        return params, state

    def apply(self, params, state, x, *, train, key=None):
        new_state = {}
        y, new_state["body"] = _apply_child(self, "body", self.body, params, state, x, train, _child_key(key, 0))
        if self.shortcut is None:
            s = x
        else:
            s, new_state["shortcut"] = _apply_child(self, "shortcut", self.shortcut, params, state, x, train,
                                                    _child_key(key, 1))
        if y.shape != s.shape:
            raise ValueError(f"Residual: body output shape {tuple(y.shape)} does not match the shortcut "
                             f"{tuple(s.shape)} for input {tuple(x.shape)}")
        return _report(y + s), new_state


@dataclasses.dataclass(frozen=True)
class Parallel(Layer):
    """Apply every branch to the same input and combine: ``"concat"`` on the last axis or ``"sum"``.

    params/state: ``{name: branch_params}`` (names default "0", "1", ...).
    Branch ``i`` gets ``fold_in(key, i)``.
    """
    branches: tuple
    combine: str = "concat"
    names: Optional[tuple] = None
    reports_children = True

    def __post_init__(self):
        super().__post_init__()
        if not self.branches:
            raise ValueError("Parallel: needs at least one branch")
        _check_layers("Parallel", self.branches)
        if self.combine not in ("concat", "sum"):
            raise ValueError(f"Parallel: combine must be 'concat' or 'sum', got {self.combine!r}")
        object.__setattr__(self, "names", _check_names("Parallel", self.names, len(self.branches)))

    def children(self, input_shape):
        shape = _shape(self, input_shape)
        return [(name, b, shape) for name, b in zip(self.names, self.branches)]

    def _combined(self, shapes, input_shape):
        shapes = [tuple(s) for s in shapes]
        if self.combine == "sum":
            if len(set(shapes)) != 1:
                raise ValueError(f"Parallel(combine='sum'): branch output shapes differ {dict(zip(self.names, shapes))} "
                                 f"for input {tuple(input_shape)}")
            return shapes[0]
        if len({(len(s),) + s[:-1] for s in shapes}) != 1:
            raise ValueError(f"Parallel(combine='concat'): branch outputs must agree on every axis but the "
                             f"last, got {dict(zip(self.names, shapes))} for input {tuple(input_shape)}")
        return shapes[0][:-1] + (sum(s[-1] for s in shapes),)

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        outs = []
        for name, b in zip(self.names, self.branches):
            try:
                outs.append(b.output_shape(shape))
            except ValueError as e:
                raise _context(self, name, b, shape, e) from None
        return self._combined(outs, shape)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        self.output_shape(shape)
        params, state = {}, {}
        for i, (name, b) in enumerate(zip(self.names, self.branches)):
            params[name], state[name] = b.init(jax.random.fold_in(key, i), shape)
        return params, state

    def apply(self, params, state, x, *, train, key=None):
        outs, new_state = [], {}
        for i, (name, b) in enumerate(zip(self.names, self.branches)):
            y, new_state[name] = _apply_child(self, name, b, params, state, x, train, _child_key(key, i))
            outs.append(y)
        self._combined([y.shape for y in outs], x.shape)
        if self.combine == "sum":
            y = outs[0]
            for o in outs[1:]:
                y = y + o
        else:
            y = jnp.concatenate(outs, axis=-1)
        return _report(y), new_state
