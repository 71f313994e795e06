"""Layers: frozen dataclasses of hyperparameters with ``init`` / ``apply``.

The protocol (every layer, combinators and models included):

* ``init(key, input_shape) -> (params, state)``; ``input_shape`` is the shape
  of one batch *including* the batch axis, e.g. ``(N, 8, 8, 1)`` (any N,
  use 1 when only the shapes matter).
* ``apply(params, state, x, *, train, key=None) -> (y, state)``; stateless
  layers return ``state`` unchanged; ``train`` must be a Python bool (static
  under ``jit``).
* ``output_shape(input_shape) -> tuple``, nothing computed: a layer that wraps
  an op traces its own ``apply`` abstractly (``jax.eval_shape`` on the
  parameter shapes ``init`` would make), so the shape and every error about a
  bad input come from the op itself.

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
import functools
import math
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet._checks import check_rank
from jaxnet._impl import resolve_impl
from jaxnet.nn.init import get_initializer
from jaxnet.ops._geometry import as_pair
from jaxnet.ops.regularization import check_rate

__all__ = [
    "Layer", "with_impl", "Affine", "Conv2D", "ConvTranspose2D", "ReLU", "LeakyReLU", "Sigmoid", "Tanh",
    "ELU", "PReLU", "Maxout", "MaxPool2D", "AvgPool2D", "GlobalAvgPool", "GlobalMaxPool", "Flatten", "Reshape",
    "StochasticDepth", "BatchNorm",
    "LayerNorm", "GroupNorm", "LocalResponseNorm", "Dropout",
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
    ``init`` + ``apply`` in eval mode); the built-in layers that wrap an op
    trace ``apply`` alone on their parameter shapes, the combinators combine
    their children's shapes.
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

    def fused_with(self, following) -> Optional[Callable]:
        """How :class:`~jaxnet.nn.Sequential` runs this layer and the ``following`` one as one op:
        ``apply(params, state, x, *, train) -> (y, state)`` on this layer's params and state
        (``following`` must have neither), or None (the default: each runs alone)."""
        return None

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


# ----------------------------------------------------------------------------- layers that wrap an op

def _abstract(specs, dtype):
    return {name: jax.ShapeDtypeStruct(shape, dtype) for name, (shape, _) in specs.items()}


def _trace_output_shape(layer, shape, dtype):
    """The shape ``layer.apply`` returns for an input of ``shape`` (eval mode), traced, not run.

    The layer is traced on the reference path (``impl="autodiff"``): the manual
    ops share the reference's checks and geometry, and tracing them costs more.
    """
    ref = layer if layer.impl == "autodiff" else dataclasses.replace(layer, impl="autodiff")
    params, state = ref._specs(shape)

    def run(x, params, state):
        return ref.apply(params, state, x, train=False)[0]

    out = jax.eval_shape(run, jax.ShapeDtypeStruct(shape, dtype), _abstract(params, dtype), _abstract(state, dtype))
    return tuple(int(d) for d in out.shape)


_cached_output_shape = functools.lru_cache(maxsize=4096)(_trace_output_shape)


class _OpLayer(Layer):
    """A layer whose ``apply`` calls an op: shapes and input checks come from that op.

    Subclasses define ``_specs(input_shape) -> (params, state)``, each a dict
    ``{name: (shape, fill)}`` where ``fill`` is ``"w"`` (the layer's
    ``w_init``) or a number (a constant). ``init`` fills those shapes;
    ``output_shape`` traces ``apply`` on them with ``jax.eval_shape``, so a bad
    input raises the op's own error, at ``init`` as at ``apply``. ``_specs``
    must not fail on an input of the wrong rank: the op reports that.
    """

    def _specs(self, shape) -> tuple[dict, dict]:
        return {}, {}

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        dtype = jnp.dtype(_float())
        try:
            hash(self)
        except TypeError:                    # an unhashable field (e.g. an array hyperparameter)
            return _trace_output_shape(self, shape, dtype)
        return _cached_output_shape(self, shape, dtype)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        self.output_shape(shape)
        params, state = self._specs(shape)
        return _fill(self, key, params), _fill(self, key, state)


def _fill(layer, key, specs):
    out = {}
    for name, (shape, fill) in specs.items():
        if isinstance(fill, str):
            out[name] = get_initializer(layer.w_init)(key, shape, dtype=_float())
        else:
            out[name] = jnp.full(shape, fill, _float())
    return out


def _bias(layer, features):
    return {"b": ((features,), 0.0)} if layer.bias else {}


def _divide(c, groups):
    """``c // groups`` for a valid ``groups``; ``c`` otherwise, so the op reports the bad value."""
    ok = isinstance(groups, int) and not isinstance(groups, bool) and groups >= 1
    return c // groups if ok else c


# ----------------------------------------------------------------------------- affine & conv

@dataclasses.dataclass(frozen=True)
class Affine(_OpLayer):
    """Fully connected: ``x.reshape(N, D) @ w + b``. Input (N, ...) -> (N, features).

    params: ``w`` (D, features), ``b`` (features,) (no ``b`` when bias=False).
    """
    features: int
    w_init: Union[str, Callable] = "he"
    bias: bool = True
    impl: Optional[str] = None

    def _specs(self, shape):
        return {"w": ((math.prod(shape[1:]), self.features), "w"), **_bias(self, self.features)}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.affine(x, params["w"], params.get("b"), impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class Conv2D(_OpLayer):
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

    def _specs(self, shape):
        kh, kw = as_pair("Conv2D", "kernel", self.kernel)
        w = (kh, kw, _divide(shape[-1], self.groups), self.features)
        return {"w": (w, "w"), **_bias(self, self.features)}, {}

    def apply(self, params, state, x, *, train, key=None):
        return self._run(F.conv2d, params, state, x)

    def _run(self, op, params, state, x):
        y = op(x, params["w"], params.get("b"), stride=self.stride, padding=self.padding,
               dilation=self.dilation, groups=self.groups, impl=self.impl)
        return y, state

    def fused_with(self, following):
        """A ``ReLU`` with the same ``impl`` right after: one :func:`jaxnet.functional.conv2d_relu`
        (the same values; with the oneDNN kernel, the ReLU runs inside the convolution)."""
        if type(following) is not ReLU or following.impl != self.impl:
            return None
        return lambda params, state, x, *, train: self._run(F.conv2d_relu, params, state, x)


@dataclasses.dataclass(frozen=True)
class ConvTranspose2D(_OpLayer):
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

    def _specs(self, shape):
        kh, kw = as_pair("ConvTranspose2D", "kernel", self.kernel)
        return {"w": ((kh, kw, shape[-1], self.features), "w"), **_bias(self, self.features)}, {}

    def apply(self, params, state, x, *, train, key=None):
        y = F.conv2d_transpose(x, params["w"], params.get("b"), stride=self.stride, padding=self.padding,
                               impl=self.impl)
        return y, state


# ----------------------------------------------------------------------------- activations

class _Elementwise(_OpLayer):
    """No params; ``_f`` is the op."""

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
class PReLU(_OpLayer):
    """Parametric ReLU with a learnable slope; params ``alpha``: (C,) (last axis) or () if not per_channel."""
    init_alpha: float = 0.25
    per_channel: bool = True
    impl: Optional[str] = None

    def _specs(self, shape):
        return {"alpha": ((shape[-1],) if self.per_channel else (), self.init_alpha)}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.prelu(x, params["alpha"], impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class Maxout(_Elementwise):
    """Max over ``pieces`` consecutive groups of the last axis: (..., D * pieces) -> (..., D).

    Put ``Affine(D * pieces)`` in front for the course's ``max(w1.x + b1, w2.x + b2)``.
    """
    pieces: int = 2
    impl: Optional[str] = None

    def _f(self, x):
        return F.maxout(x, pieces=self.pieces, impl=self.impl)


# ----------------------------------------------------------------------------- pooling & reshaping

@dataclasses.dataclass(frozen=True)
class MaxPool2D(_OpLayer):
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
class AvgPool2D(_OpLayer):
    """Average pooling (padded zeros count); same geometry as :class:`MaxPool2D`."""
    window: Any = 2
    stride: Any = None
    padding: Any = 0
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        return F.avg_pool2d(x, window=self.window, stride=self.stride, padding=self.padding,
                            impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class GlobalAvgPool(_OpLayer):
    """Mean over H and W: (N, H, W, C) -> (N, C)."""
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        return F.global_avg_pool(x, impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class GlobalMaxPool(_OpLayer):
    """Max over H and W: (N, H, W, C) -> (N, C); a max pool whose window is the whole image
    (the same audited op as :class:`MaxPool2D`)."""
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        check_rank("GlobalMaxPool", "x", x, 4, "(N, H, W, C)")
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


@dataclasses.dataclass(frozen=True)
class Reshape(Layer):
    """(N, ...) -> (N, *shape): each example reshaped (one entry of ``shape`` may be -1).
    No op behind it, so no ``impl``."""
    shape: tuple

    def __post_init__(self):
        super().__post_init__()
        shape = tuple(self.shape) if isinstance(self.shape, (tuple, list)) else None
        if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and (d > 0 or d == -1)
                                for d in shape) or shape.count(-1) > 1:
            raise ValueError(f"Reshape: `shape` must be a tuple of positive ints with at most one -1, "
                             f"got {self.shape!r}")
        object.__setattr__(self, "shape", shape)

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        size, known = math.prod(shape[1:]), math.prod(d for d in self.shape if d != -1)
        if (-1 in self.shape and size % known) or (-1 not in self.shape and size != known):
            raise ValueError(f"Reshape: cannot reshape each example of input {shape} ({size} values) to "
                             f"{self.shape}")
        return (shape[0],) + tuple(size // known if d == -1 else d for d in self.shape)

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        return jnp.reshape(x, self.output_shape(x.shape)), state


# ----------------------------------------------------------------------------- normalization

def _gamma_beta(shape, gamma=1.0):
    c = (shape[-1],)
    return {"gamma": (c, gamma), "beta": (c, 0.0)}


@dataclasses.dataclass(frozen=True)
class BatchNorm(_OpLayer):
    """Batch norm over every axis but the last: (N, D) or spatial (N, H, W, C).

    params ``gamma`` (C,) = ``gamma_init`` (1), ``beta`` (C,) = 0; state ``mean`` (C,) = 0,
    ``var`` (C,) = 1. train=True normalises with the batch statistics and returns the updated
    running statistics; train=False uses the running ones and returns the
    state unchanged. See the module docstring for the conventions. ``gamma_init=0`` last in a
    residual body starts the block as the identity (Goyal et al. 2017, torchvision's
    ``zero_init_residual``).
    """
    momentum: float = 0.9
    eps: float = 1e-5
    impl: Optional[str] = None
    gamma_init: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        g = self.gamma_init
        if isinstance(g, bool) or not isinstance(g, (int, float)) or not math.isfinite(g):
            raise ValueError(f"BatchNorm: `gamma_init` must be a finite number, got {g!r}")

    def _specs(self, shape):
        c = (shape[-1],)
        return _gamma_beta(shape, float(self.gamma_init)), {"mean": (c, 0.0), "var": (c, 1.0)}

    def apply(self, params, state, x, *, train, key=None):
        return self._run(F.batch_norm, params, state, x, train)

    def _run(self, op, params, state, x, train):
        _check_train(self, train)
        y, mean, var = op(x, params["gamma"], params["beta"], state["mean"], state["var"],
                          train=bool(train), momentum=self.momentum, eps=self.eps, impl=self.impl)
        if not train:
            return y, state
        return y, {"mean": mean, "var": var}

    def fused_with(self, following):
        """A ``ReLU`` with the same ``impl`` right after: one :func:`jaxnet.functional.batch_norm_relu`
        (the same values; with the oneDNN kernel, one fused kernel each way)."""
        if type(following) is not ReLU or following.impl != self.impl:
            return None
        return lambda params, state, x, *, train: self._run(F.batch_norm_relu, params, state, x, train)


@dataclasses.dataclass(frozen=True)
class LayerNorm(_OpLayer):
    """Normalise each example over its last axis (features / channels); same at train and eval.

    params ``gamma``, ``beta``: (C,) with C the last axis.
    """
    eps: float = 1e-5
    impl: Optional[str] = None

    def _specs(self, shape):
        return _gamma_beta(shape), {}

    def apply(self, params, state, x, *, train, key=None):
        return F.layer_norm(x, params["gamma"], params["beta"], eps=self.eps, impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class GroupNorm(_OpLayer):
    """Group norm on (N, H, W, C): per example, statistics over H, W and the channels of a group.

    params ``gamma``, ``beta``: (C,). ``groups`` must divide C.
    """
    groups: int = 8
    eps: float = 1e-5
    impl: Optional[str] = None

    def _specs(self, shape):
        return _gamma_beta(shape), {}

    def apply(self, params, state, x, *, train, key=None):
        return F.group_norm(x, params["gamma"], params["beta"], groups=self.groups, eps=self.eps,
                            impl=self.impl), state


@dataclasses.dataclass(frozen=True)
class LocalResponseNorm(_OpLayer):
    """Local response normalization across channels (AlexNet's "NORM"), (N, H, W, C) -> same.

    ``y = x / (k + alpha / size * sum of x^2 over size neighbouring channels)^beta``
    (:func:`jaxnet.ops.local_response_norm`, PyTorch's convention; no params).
    """
    size: int = 5
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    impl: Optional[str] = None

    def apply(self, params, state, x, *, train, key=None):
        return F.local_response_norm(x, size=self.size, alpha=self.alpha, beta=self.beta, k=self.k,
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
        check_rate(type(self).__name__, self.rate)

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
            raise ValueError(f"{type(self).__name__}(rate={self.rate}) in train mode needs a PRNG key: call "
                             f"apply(..., train=True, key=jax.random.key(...)), or use train=False")
        return self._drop(x, key), state

    def _drop(self, x, key):
        return F.dropout(x, key, rate=self.rate, train=True, impl=self.impl)


@dataclasses.dataclass(frozen=True)
class StochasticDepth(Dropout):
    """Stochastic depth (Huang et al. 2016) as torchvision's ``StochasticDepth(p, "row")``: in
    training, each example's whole input is dropped with probability ``rate`` and kept ones are
    scaled by 1 / (1 - rate); eval is the identity (a key is needed in training, as for
    :class:`Dropout`).  Put it last in a residual body
    (``Residual(Sequential((..., StochasticDepth(0.1))))``): a dropped example takes the
    shortcut alone.  The per-example mask is the dropout op applied to ones (N, 1, ..., 1).
    """
    rate: float = 0.1
    impl: Optional[str] = None

    def _drop(self, x, key):
        keep = F.dropout(jnp.ones((x.shape[0],) + (1,) * (x.ndim - 1), x.dtype), key, rate=self.rate, train=True,
                         impl=self.impl)
        return x * jax.lax.stop_gradient(keep)
