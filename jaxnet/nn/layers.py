"""Layers: frozen dataclasses of hyperparameters with ``init`` / ``apply``.

The protocol (every layer, combinators and models included):

* ``init(key, input_shape) -> (params, state)``; ``input_shape`` is the shape
  of one batch *including* the batch axis, e.g. ``(N, 8, 8, 1)`` (any N,
  use 1 when only the shapes matter).
* ``apply(params, state, x, *, train, key=None) -> (y, state)``; stateless
  layers return ``state`` unchanged; ``train`` must be a Python bool (static
  under ``jit``).
* ``output_shape(input_shape) -> tuple``, by arithmetic, nothing runs.

Params and state are nested dicts: affine/conv ``{"w", "b"}``, norms
``{"gamma", "beta"}``, batch-norm state ``{"mean", "var"}``, PReLU
``{"alpha"}``; stateless layers have ``{}``.

Every layer that wraps an op has ``impl: str | None = None`` and calls
``jaxnet.functional.<op>(..., impl=self.impl)``: ``"auto"`` (reference op,
autodiff backward), ``"manual"`` (hand-written backward), ``None`` (follow
:func:`jaxnet.use_impl` at trace time). :func:`with_impl` sets it for a whole
model.

Layers are hashable, so they can be static arguments of ``jax.jit``; the
weight-initializer field is called ``w_init`` because ``init`` is the method.

Batch norm conventions (the course's assignment values are the defaults):

=========================  ==================================================
momentum                   0.9; ``running = momentum * running + (1 - momentum) * batch``
running statistics init    mean 0, var 1
variance                   biased (divide by m), for both normalising and running
eps                        1e-5, inside the square root
train / eval               batch statistics + updated state / running statistics, state unchanged
=========================  ==================================================

Dropout: ``rate`` is the probability of DROPPING a unit (inverted dropout,
kept units scaled by ``1 / (1 - rate)``; identity at eval). The course used
the keep probability in one year: ``Dropout(rate=0.2)`` keeps 80%.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet._impl import resolve_impl
from jaxnet.nn.init import get_initializer
from jaxnet.ops._geometry import as_pair, window_geometry

__all__ = [
    "Layer", "with_impl", "Affine", "Conv2D", "ConvTranspose2D", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
    "ELU", "PReLU", "Maxout", "MaxPool2D", "AvgPool2D", "GlobalAvgPool", "GlobalMaxPool", "Flatten", "BatchNorm",
    "LayerNorm", "GroupNorm", "Dropout",
]


def _float():
    return jnp.result_type(float)


def _shape(layer, input_shape) -> tuple:
    try:
        shape = tuple(int(s) for s in input_shape)
    except TypeError:
        raise TypeError(f"{_name(layer)}: `input_shape` must be a tuple of ints (batch axis included), "
                        f"got {input_shape!r}") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"{_name(layer)}: `input_shape` must be a non-empty tuple of positive ints "
                         f"(batch axis included), got {input_shape!r}")
    return shape


def _name(layer) -> str:
    return type(layer).__name__


def _check_rank(layer, shape, ranks, what):
    if len(shape) not in ranks:
        raise ValueError(f"{_name(layer)} expects input of rank {' or '.join(map(str, ranks))} {what}, "
                         f"got shape {tuple(shape)}")


def _check_train(layer, train):
    if not isinstance(train, (bool, np.bool_)):
        raise TypeError(f"{_name(layer)}: `train` must be a Python bool (bind it statically under jit), "
                        f"got {type(train).__name__}")


def _freeze(value):
    """Lists (unhashable) to tuples, recursively, so layers stay hashable."""
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_freeze(v) for v in value)
    return value


class Layer:
    """Base class of every layer. Subclasses are frozen dataclasses.

    ``output_shape`` here is the generic fallback (``jax.eval_shape`` of
    ``init`` + ``apply`` in eval mode); built-in layers override it with
    arithmetic.
    """

    def init(self, key, input_shape) -> tuple[dict, dict]:  # pragma: no cover - abstract
        raise NotImplementedError

    def apply(self, params, state, x, *, train: bool, key=None):  # pragma: no cover - abstract
        raise NotImplementedError

    def output_shape(self, input_shape) -> tuple:
        shape = _shape(self, input_shape)

        def run(x):
            params, state = self.init(jax.random.PRNGKey(0), shape)
            return self.apply(params, state, x, train=False)[0]

        return tuple(jax.eval_shape(run, jax.ShapeDtypeStruct(shape, _float())).shape)

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, list):
                object.__setattr__(self, f.name, _freeze(v))
        impl = getattr(self, "impl", None)
        if impl is not None:
            try:
                resolve_impl(impl)
            except ValueError as e:
                raise ValueError(f"{_name(self)}: {e}") from None


def with_impl(layer, impl: Optional[str]):
    """A copy of ``layer`` (or model) with ``impl`` set on it and every layer inside it.

    impl: ``"auto"``, ``"manual"`` or ``None`` (follow :func:`jaxnet.use_impl`).
    """
    if impl is not None:
        resolve_impl(impl)
    if isinstance(layer, tuple):
        return tuple(with_impl(v, impl) for v in layer)
    if not (isinstance(layer, Layer) and dataclasses.is_dataclass(layer)):
        return layer
    changes = {}
    for f in dataclasses.fields(layer):
        v = getattr(layer, f.name)
        if f.name == "impl":
            changes["impl"] = impl
        elif isinstance(v, Layer) or (isinstance(v, tuple) and any(isinstance(e, Layer) for e in v)):
            changes[f.name] = with_impl(v, impl)
    return dataclasses.replace(layer, **changes) if changes else layer


# ----------------------------------------------------------------------------- affine & conv

def _weight(layer, key, shape):
    init = get_initializer(layer.w_init)
    return init(key, shape, dtype=_float())


@dataclasses.dataclass(frozen=True)
class Affine(Layer):
    """Fully connected: ``x.reshape(N, D) @ w + b``. Input (N, ...) -> (N, features).

    params: ``w`` (D, features), ``b`` (features,) (no ``b`` when bias=False).
    """
    features: int
    w_init: Union[str, Callable] = "he"
    bias: bool = True
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        if len(shape) < 2:
            raise ValueError(f"Affine expects input (N, d1, ...), got shape {shape}")
        return (shape[0], self.features)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        self.output_shape(shape)
        d = math.prod(shape[1:])
        params = {"w": _weight(self, key, (d, self.features))}
        if self.bias:
            params["b"] = jnp.zeros((self.features,), _float())
        return params, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.affine(x, params["w"], params.get("b"), impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class Conv2D(Layer):
    """2-D convolution, NHWC input, HWIO weight. (N, H, W, C) -> (N, Ho, Wo, features).

    padding: int, pair, ((top, bottom), (left, right)), "SAME" or "VALID".
    params: ``w`` (KH, KW, C // groups, features), ``b`` (features,).
    """
    features: int
    kernel: Any = 3
    stride: Any = 1
    padding: Any = "SAME"
    dilation: Any = 1
    groups: int = 1
    w_init: Union[str, Callable] = "he"
    bias: bool = True
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_rank(self, shape, (4,), "(N, H, W, C)")
        c = shape[3]
        if c % self.groups or self.features % self.groups:
            raise ValueError(f"Conv2D: groups={self.groups} must divide the input channels {c} "
                             f"(input {shape}) and features={self.features}")
        g = window_geometry("Conv2D", shape, self.kernel, stride=self.stride, padding=self.padding,
                            dilation=self.dilation)
        return (shape[0],) + g.out_hw + (self.features,)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        self.output_shape(shape)
        kh, kw = as_pair("Conv2D", "kernel", self.kernel)
        params = {"w": _weight(self, key, (kh, kw, shape[3] // self.groups, self.features))}
        if self.bias:
            params["b"] = jnp.zeros((self.features,), _float())
        return params, {}

    def apply(self, params, state, x, *, train, key=None):
        y = F.conv2d(x, params["w"], params.get("b"), stride=self.stride, padding=self.padding,
                     dilation=self.dilation, groups=self.groups, impl=self.impl)
        return y, state


@dataclasses.dataclass(frozen=True)
class ConvTranspose2D(Layer):
    """Transposed convolution. (N, H, W, C) -> (N, (H-1)S + KH - 2P, (W-1)S + KW - 2P, features).

    params: ``w`` (KH, KW, C, features), ``b`` (features,).
    """
    features: int
    kernel: Any
    stride: Any
    padding: int = 0
    w_init: Union[str, Callable] = "he"
    bias: bool = True
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_rank(self, shape, (4,), "(N, H, W, C)")
        k = as_pair("ConvTranspose2D", "kernel", self.kernel)
        s = as_pair("ConvTranspose2D", "stride", self.stride)
        p = self.padding
        if not isinstance(p, int) or isinstance(p, bool) or p < 0:
            raise ValueError(f"ConvTranspose2D: `padding` must be a non-negative int, got {p!r}")
        out = tuple((n - 1) * si + ki - 2 * p for n, si, ki in zip(shape[1:3], s, k))
        if min(out) < 1:
            raise ValueError(f"ConvTranspose2D: padding {p} crops everything for input {shape}: output {out}")
        return (shape[0],) + out + (self.features,)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        self.output_shape(shape)
        kh, kw = as_pair("ConvTranspose2D", "kernel", self.kernel)
        params = {"w": _weight(self, key, (kh, kw, shape[3], self.features))}
        if self.bias:
            params["b"] = jnp.zeros((self.features,), _float())
        return params, {}

    def apply(self, params, state, x, *, train, key=None):
        y = F.conv2d_transpose(x, params["w"], params.get("b"), stride=self.stride, padding=self.padding,
                               impl=self.impl)
        return y, state


# ----------------------------------------------------------------------------- activations

class _Elementwise(Layer):
    """Stateless, shape-preserving, no params."""

    def output_shape(self, input_shape):
        return _shape(self, input_shape)

    def init(self, key, input_shape):
        _shape(self, input_shape)
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        return self._f(x), state


@dataclasses.dataclass(frozen=True)
class ReLU(_Elementwise):
    """``max(0, x)``."""
    impl: Optional[str] = None

    def _f(self, x):
        return F.relu(x, impl=self.impl)


@dataclasses.dataclass(frozen=True)
class LeakyReLU(_Elementwise):
    """``x if x > 0 else slope * x``."""
    slope: float = 0.01
    impl: Optional[str] = None

    def _f(self, x):
        return F.leaky_relu(x, slope=self.slope, impl=self.impl)


@dataclasses.dataclass(frozen=True)
class Sigmoid(_Elementwise):
    """``1 / (1 + exp(-x))``."""
    impl: Optional[str] = None

    def _f(self, x):
        return F.sigmoid(x, impl=self.impl)


@dataclasses.dataclass(frozen=True)
class Tanh(_Elementwise):
    """``tanh(x)``."""
    impl: Optional[str] = None

    def _f(self, x):
        return F.tanh(x, impl=self.impl)


@dataclasses.dataclass(frozen=True)
class ELU(_Elementwise):
    """``x if x > 0 else alpha * (exp(x) - 1)``."""
    alpha: float = 1.0
    impl: Optional[str] = None

    def _f(self, x):
        return F.elu(x, alpha=self.alpha, impl=self.impl)


@dataclasses.dataclass(frozen=True)
class PReLU(Layer):
    """Parametric ReLU with a learnable slope; params ``alpha``: (C,) (last axis) or () if not per_channel."""
    init_alpha: float = 0.25
    per_channel: bool = True
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        return _shape(self, input_shape)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        alpha_shape = (shape[-1],) if self.per_channel else ()
        return {"alpha": jnp.full(alpha_shape, self.init_alpha, _float())}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.prelu(x, params["alpha"], impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class Maxout(Layer):
    """Max over ``pieces`` consecutive groups of the last axis: (..., D * pieces) -> (..., D).

    Put ``Affine(D * pieces)`` in front for the course's ``max(w1.x + b1, w2.x + b2)``.
    """
    pieces: int = 2
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        if not isinstance(self.pieces, int) or self.pieces < 1 or shape[-1] % self.pieces:
            raise ValueError(f"Maxout: the last axis of the input {shape} must split into pieces="
                             f"{self.pieces!r} equal groups")
        return shape[:-1] + (shape[-1] // self.pieces,)

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.maxout(x, pieces=self.pieces, impl=self.impl), state


# ----------------------------------------------------------------------------- pooling & reshaping

class _Pool(Layer):
    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_rank(self, shape, (4,), "(N, H, W, C)")
        g = window_geometry(_name(self), shape, self.window,
                            stride=self.window if self.stride is None else self.stride, padding=self.padding)
        return (shape[0],) + g.out_hw + (shape[3],)

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        return {}, {}


@dataclasses.dataclass(frozen=True)
class MaxPool2D(_Pool):
    """Max pooling; ``stride=None`` means ``stride=window``; padding int, pair, "SAME" or "VALID".

    With an int padding the windows must fit exactly (the course's rule);
    ``padding="VALID"`` drops the remainder (odd sizes).
    """
    window: Any = 2
    stride: Any = None
    padding: Any = 0
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        return F.max_pool2d(x, window=self.window, stride=self.stride, padding=self.padding,
                            impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class AvgPool2D(_Pool):
    """Average pooling (padded zeros count); same geometry as :class:`MaxPool2D`."""
    window: Any = 2
    stride: Any = None
    padding: Any = 0
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        return F.avg_pool2d(x, window=self.window, stride=self.stride, padding=self.padding,
                            impl=self.impl), state


class _GlobalPool(Layer):
    """(N, H, W, C) -> (N, C): the shape arithmetic of the global pools."""

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_rank(self, shape, (4,), "(N, H, W, C)")
        return (shape[0], shape[3])

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        return {}, {}


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(_GlobalPool):
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        return F.global_avg_pool(x, impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class GlobalMaxPool(_GlobalPool):
    """Max over H and W: (N, H, W, C) -> (N, C); a max pool whose window is the whole image
    (the same audited op as :class:`MaxPool2D`)."""
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        if x.ndim != 4:
            raise ValueError(f"GlobalMaxPool: expected (N, H, W, C), got {tuple(x.shape)}")
        hw = (int(x.shape[1]), int(x.shape[2]))
        y = F.max_pool2d(x, window=hw, stride=hw, padding=0, impl=self.impl)
        return jnp.reshape(y, (x.shape[0], x.shape[3])), state


@dataclasses.dataclass(frozen=True)
class Flatten(Layer):
    """(N, d1, ..., dk) -> (N, d1 * ... * dk). No op behind it, so no ``impl``."""

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        return (shape[0], math.prod(shape[1:]))

    def init(self, key, input_shape):
        _shape(self, input_shape)
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        return jnp.reshape(x, (x.shape[0], -1)), state


# ----------------------------------------------------------------------------- normalization

@dataclasses.dataclass(frozen=True)
class BatchNorm(Layer):
    """Batch norm over every axis but the last: (N, D) or spatial (N, H, W, C).

    params ``gamma`` (C,) = 1, ``beta`` (C,) = 0; state ``mean`` (C,) = 0, ``var`` (C,) = 1.
    train=True normalises with the batch statistics and returns the updated
    running statistics; train=False uses the running ones and returns the
    state unchanged. See the module docstring for the conventions.
    """
    momentum: float = 0.9
    eps: float = 1e-5
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_rank(self, shape, (2, 4), "(N, D) or (N, H, W, C)")
        return shape

    def init(self, key, input_shape):
        c = self.output_shape(input_shape)[-1]
        return ({"gamma": jnp.ones((c,), _float()), "beta": jnp.zeros((c,), _float())},
                {"mean": jnp.zeros((c,), _float()), "var": jnp.ones((c,), _float())})

    def apply(self, params, state, x, *, train, key=None):
        _check_train(self, train)
        y, mean, var = F.batch_norm(x, params["gamma"], params["beta"], state["mean"], state["var"],
                                    train=bool(train), momentum=self.momentum, eps=self.eps, impl=self.impl)
        if not train:
            return y, state
        return y, {"mean": mean, "var": var}


@dataclasses.dataclass(frozen=True)
class LayerNorm(Layer):
    """Normalise each example over its last axis (features / channels); same at train and eval.

    params ``gamma``, ``beta``: (C,) with C the last axis.
    """
    eps: float = 1e-5
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        return _shape(self, input_shape)

    def init(self, key, input_shape):
        c = _shape(self, input_shape)[-1]
        return {"gamma": jnp.ones((c,), _float()), "beta": jnp.zeros((c,), _float())}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.layer_norm(x, params["gamma"], params["beta"], eps=self.eps, impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class GroupNorm(Layer):
    """Group norm on (N, H, W, C): per example, statistics over H, W and the channels of a group.

    params ``gamma``, ``beta``: (C,). ``groups`` must divide C.
    """
    groups: int = 8
    eps: float = 1e-5
    impl: Optional[str] = None

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_rank(self, shape, (4,), "(N, H, W, C)")
        if not isinstance(self.groups, int) or self.groups < 1 or shape[3] % self.groups:
            raise ValueError(f"GroupNorm: groups={self.groups!r} must divide the channels {shape[3]} "
                             f"of the input {shape}")
        return shape

    def init(self, key, input_shape):
        c = self.output_shape(input_shape)[-1]
        return {"gamma": jnp.ones((c,), _float()), "beta": jnp.zeros((c,), _float())}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.group_norm(x, params["gamma"], params["beta"], groups=self.groups, eps=self.eps,
                            impl=self.impl), state


# ----------------------------------------------------------------------------- dropout

@dataclasses.dataclass(frozen=True)
class Dropout(Layer):
    """Inverted dropout. ``rate`` is the probability of DROPPING a unit (not keeping it).

    train=True needs ``key`` (a ValueError otherwise, even for rate 0, so a
    forgotten key is caught early); train=False is the identity.
    """
    rate: float = 0.5
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        r = self.rate
        if not isinstance(r, (int, float)) or isinstance(r, bool) or not 0.0 <= r < 1.0:
            raise ValueError(f"Dropout: `rate` is the probability of DROPPING a unit and must be in [0, 1), "
                             f"got {r!r}")

    def output_shape(self, input_shape):
        return _shape(self, input_shape)

    def init(self, key, input_shape):
        _shape(self, input_shape)
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        _check_train(self, train)
        if not train:
            return x, state
        if key is None:
            raise ValueError(f"Dropout(rate={self.rate}) in train mode needs a PRNG key: call "
                             f"apply(..., train=True, key=jax.random.key(...)), or use train=False")
        return F.dropout(x, key, rate=self.rate, train=True, impl=self.impl), state
