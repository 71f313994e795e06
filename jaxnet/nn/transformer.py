"""Transformer layers: multi-head attention, positions, feed-forward, encoder/decoder layers, ViT.

Every layer follows the protocol of :mod:`jaxnet.nn.layers` (``init``,
``apply(params, state, x, *, train, key=None) -> (y, state)``, ``output_shape``)
and is a composition of audited ops (:func:`jaxnet.functional.temporal_affine`,
``scaled_dot_product_attention``, ``layer_norm``, ``gelu``, ``dropout``,
``patch_embed``), each switched by ``impl=`` as everywhere else.  Sequences are
batch first, (N, T, D).  No layer here keeps ``state`` (it is ``{}``).

Masks: True (or 1) = attend / a valid token.

* ``mask``: broadcastable to (N, heads, Tq, Tk) -- e.g. (Tq, Tk) for every
  example, or (N, 1, Tq, Tk);
* ``key_padding_mask``: (N, Tk), False at the padding keys (the recurrent
  layers' convention: 1 = valid step);
* ``causal=True`` (a field of :class:`MultiHeadAttention`): query i sees keys j <= i.

A query row that sees no key at all returns 0 from the attention (the op's
rule), never NaN.

Multi-head attention (the course's form): ``q = x Wq + bq``, ``k = c Wk + bk``,
``v = c Wv + bv`` with ``c = context`` (cross-attention) or ``x``
(self-attention), each (N, T, D) cut into ``heads`` contiguous slices of
``D / heads`` features; per head ``softmax(q k^T / sqrt(D/heads) + masks) v``,
dropout on the weights; heads concatenated back in order and projected,
``out = concat Wo + bo``.  params: ``{"query", "key", "value", "out"}``, each
``{"w", "b"}``; ``w`` (D_in, D) with the course's Xavier ``N(0, 1) / sqrt(D_in)``.

Encoder / decoder layers are post-norm as the course writes them
(``x = LayerNorm(x + Dropout(sublayer(x)))``); ``norm_first=True`` gives the
pre-norm form (``x = x + Dropout(sublayer(LayerNorm(x)))``), which the stacks
then close with a final LayerNorm.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet.nn.init import get_initializer
from jaxnet.nn.init import small as init_small
from jaxnet.nn.layers import Layer, _check_train, _float, _name, _shape
from jaxnet.ops.attention import DEFAULT_BLOCK_SIZE
from jaxnet.ops.regularization import check_rate

__all__ = ["MultiHeadAttention", "FeedForward", "SinusoidalPositions", "LearnedPositions",
           "TransformerEncoderLayer", "TransformerDecoderLayer", "TransformerEncoder", "TransformerDecoder",
           "VisionTransformer", "sinusoidal_positions", "causal_mask", "attention_rollout"]


# ----------------------------------------------------------------------------------------- helpers

def _positive_int(layer, name, value):
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{_name(layer)}: `{name}` must be a positive int, got {value!r}")


def _bool(layer, name, value):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{_name(layer)}: `{name}` must be a bool, got {value!r}")


def _sequence_shape(layer, input_shape, what="input_shape"):
    shape = _shape(layer, input_shape)
    if len(shape) != 3:
        raise ValueError(f"{_name(layer)}: `{what}` must be (N, T, D), got {shape}")
    return shape


def _check_sequence(layer, name, x):
    if getattr(x, "ndim", None) != 3:
        raise ValueError(f"{_name(layer)}: `{name}` must be (N, T, D), got shape {tuple(np.shape(x))}")


def _needs_key(layer, train, key, rate):
    _check_train(layer, train)
    if train and rate > 0 and key is None:
        raise ValueError(f"{_name(layer)}(dropout_rate={rate}) in train mode needs a PRNG key: call "
                         f"apply(..., train=True, key=jax.random.key(...)), or use train=False")


def _sub(key, i):
    return None if key is None else jax.random.fold_in(key, i)


def _affine(key, d_in, d_out, w_init):
    return {"w": get_initializer(w_init)(key, (d_in, d_out), dtype=_float()), "b": jnp.zeros((d_out,), _float())}


def _dropout(x, key, rate, train, impl):
    if not train or rate == 0:
        return x
    return F.dropout(x, key, rate=rate, train=True, impl=impl)


def _norm_params(d):
    return {"gamma": jnp.ones((d,), _float()), "beta": jnp.zeros((d,), _float())}


def _layer_norm(p, x, impl):
    return F.layer_norm(x, p["gamma"], p["beta"], impl=impl)


def causal_mask(tq: int, tk: Optional[int] = None):
    """(Tq, Tk) bool, True where key j <= query i (the course's ``tril``)."""
    tk = tq if tk is None else tk
    return jnp.arange(tk)[None, :] <= jnp.arange(tq)[:, None]


def sinusoidal_positions(length: int, features: int, dtype=None):
    """The course's sinusoidal encoding (length, features)::

        PE[t, 2i]   = sin(t * 10000^(-2i / D))
        PE[t, 2i+1] = cos(t * 10000^(-2i / D))

    (for odd D the last column is a sine).  Computed in NumPy (float64) then cast.
    """
    t = np.arange(length, dtype=np.float64)[:, None]
    i2 = np.arange(0, features, 2, dtype=np.float64)
    angle = t * np.power(10000.0, -i2 / features)
    pe = np.zeros((length, features))
    pe[:, 0::2] = np.sin(angle)
    pe[:, 1::2] = np.cos(angle[:, : features // 2])
    return jnp.asarray(pe, dtype=_float() if dtype is None else dtype)


# ------------------------------------------------------------------------------------- attention

@dataclasses.dataclass(frozen=True)
class MultiHeadAttention(Layer):
    """Multi-head scaled dot-product attention (self- or cross-); module docstring for the formula.

    Input x (N, Tq, D) -> (N, Tq, D).  ``apply(..., context=None, mask=None,
    key_padding_mask=None)``: context (N, Tk, Dc) (None: x itself); mask broadcastable to
    (N, heads, Tq, Tk); key_padding_mask (N, Tk).  ``context_features`` is Dc when it
    differs from D (cross-attention onto another width).  D must be divisible by ``num_heads``.

    Decoding with a key/value cache: :meth:`init_cache` and :meth:`apply_cached`.
    """
    num_heads: int
    dropout_rate: float = 0.0
    causal: bool = False
    context_features: Optional[int] = None
    w_init: Union[str, Callable] = "xavier"
    block_size: int = DEFAULT_BLOCK_SIZE
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "num_heads", self.num_heads)
        check_rate(_name(self), self.dropout_rate)
        _bool(self, "causal", self.causal)
        if self.context_features is not None:
            _positive_int(self, "context_features", self.context_features)

    def _features(self, shape):
        d = shape[-1]
        if d % self.num_heads:
            raise ValueError(f"{_name(self)}: the features D={d} of input {tuple(shape)} must be divisible by "
                             f"num_heads={self.num_heads}")
        return d

    def output_shape(self, input_shape):
        shape = _sequence_shape(self, input_shape)
        self._features(shape)
        return shape

    def init(self, key, input_shape):
        d = self._features(_sequence_shape(self, input_shape))
        dc = d if self.context_features is None else self.context_features
        k = jax.random.split(key, 4)
        return {"query": _affine(k[0], d, d, self.w_init), "key": _affine(k[1], dc, d, self.w_init),
                "value": _affine(k[2], dc, d, self.w_init), "out": _affine(k[3], d, d, self.w_init)}, {}

    def _heads(self, t):
        n, s, d = t.shape
        return t.reshape(n, s, self.num_heads, d // self.num_heads).transpose(0, 2, 1, 3)   # (N, h, T, dh)

    def _project(self, p, x):
        return F.temporal_affine(x, p["w"], p["b"], impl=self.impl)

    def _combine(self, params, o):
        n, h, t, dh = o.shape
        return self._project(params["out"], o.transpose(0, 2, 1, 3).reshape(n, t, h * dh))

    @staticmethod
    def _merge_masks(mask, key_padding_mask):
        if key_padding_mask is not None:
            kpm = jnp.asarray(key_padding_mask)
            if kpm.ndim != 2:
                raise ValueError(f"MultiHeadAttention: `key_padding_mask` must be (N, Tk), got shape {kpm.shape}")
            kpm = (kpm != 0)[:, None, None, :]
            mask = kpm if mask is None else jnp.asarray(mask) & kpm
        return mask

    def apply(self, params, state, x, *, train, key=None, context=None, mask=None, key_padding_mask=None):
        _needs_key(self, train, key, self.dropout_rate)
        _check_sequence(self, "x", x)
        self._features(x.shape)
        c = x if context is None else context
        _check_sequence(self, "context", c)
        if c.shape[0] != x.shape[0]:
            raise ValueError(f"{_name(self)}: `context` batch {c.shape[0]} != x batch {x.shape[0]} "
                             f"(x {tuple(x.shape)}, context {tuple(c.shape)})")
        if key_padding_mask is not None and np.shape(key_padding_mask) != (c.shape[0], c.shape[1]):
            raise ValueError(f"{_name(self)}: `key_padding_mask` must be (N, Tk) = {(c.shape[0], c.shape[1])}, "
                             f"got shape {tuple(np.shape(key_padding_mask))}")
        q = self._heads(self._project(params["query"], x))
        k = self._heads(self._project(params["key"], c))
        v = self._heads(self._project(params["value"], c))
        rate = self.dropout_rate if train else 0.0
        o = F.scaled_dot_product_attention(q, k, v, mask=self._merge_masks(mask, key_padding_mask),
                                           causal=self.causal, dropout_rate=rate, key=key if rate else None,
                                           block_size=self.block_size, impl=self.impl)
        return self._combine(params, o), state

    def attention_weights(self, params, x, *, context=None, mask=None, key_padding_mask=None):
        """The attention weights P (N, heads, Tq, Tk) that :meth:`apply` uses in eval mode.

        For inspection (attention maps, rollout): P is the op applied to v = the identity,
        ``P I = P``, so masks, ``causal`` and fully masked rows (0) follow the op exactly.
        Materialises (Tq, Tk) per head.
        """
        c = x if context is None else context
        q = self._heads(self._project(params["query"], x))
        k = self._heads(self._project(params["key"], c))
        eye = jnp.broadcast_to(jnp.eye(k.shape[2], dtype=q.dtype), k.shape[:2] + (k.shape[2], k.shape[2]))
        return F.scaled_dot_product_attention(q, k, eye, mask=self._merge_masks(mask, key_padding_mask),
                                              causal=self.causal, impl="autodiff")

    # --- decoding, one query step at a time
    def init_cache(self, batch_size: int, max_len: int, features: int, dtype=None):
        """An empty key/value cache: ``{"k", "v"}`` each (N, heads, max_len, D/heads), zeros."""
        dh = features // self.num_heads
        z = jnp.zeros((batch_size, self.num_heads, max_len, dh), _float() if dtype is None else dtype)
        return {"k": z, "v": z}

    def apply_cached(self, params, x_t, cache, pos):
        """Self-attention of step ``pos`` (a traced int is fine) onto every step up to it.

        x_t (N, 1, D); cache from :meth:`init_cache` (or the previous call).  Writes this step's
        key and value at ``pos`` and attends over positions 0..pos (eval mode: no dropout).
        Returns (y_t (N, 1, D), cache).  Equal to :meth:`apply` with ``causal=True`` on the
        whole prefix, one row at a time, at O(T) cost per step instead of O(T^2).
        """
        k_t = self._heads(self._project(params["key"], x_t))
        v_t = self._heads(self._project(params["value"], x_t))
        cache = {"k": jax.lax.dynamic_update_slice_in_dim(cache["k"], k_t, pos, axis=2),
                 "v": jax.lax.dynamic_update_slice_in_dim(cache["v"], v_t, pos, axis=2)}
        q = self._heads(self._project(params["query"], x_t))
        visible = jnp.arange(cache["k"].shape[2])[None, None, None, :] <= pos
        o = F.scaled_dot_product_attention(q, cache["k"], cache["v"], mask=visible, block_size=self.block_size,
                                           impl=self.impl)
        return self._combine(params, o), cache


# -------------------------------------------------------------------------------------- positions

@dataclasses.dataclass(frozen=True)
class SinusoidalPositions(Layer):
    """Adds the course's sinusoidal encoding (:func:`sinusoidal_positions`), then dropout.

    (N, T, D) -> (N, T, D), T <= ``max_len``; no params.  ``apply(..., offset=0)`` starts at
    position ``offset`` (decoding one step at a time; may be traced).
    """
    max_len: int = 512
    dropout_rate: float = 0.0
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "max_len", self.max_len)
        check_rate(_name(self), self.dropout_rate)

    def output_shape(self, input_shape):
        shape = _sequence_shape(self, input_shape)
        self._check_len(shape[1])
        return shape

    def _check_len(self, t):
        if t > self.max_len:
            raise ValueError(f"{_name(self)}: sequence length T={t} exceeds max_len={self.max_len}")

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        return {}, {}

    def _table(self, params, d, dtype):
        return sinusoidal_positions(self.max_len, d, dtype)

    def apply(self, params, state, x, *, train, key=None, offset=0):
        _needs_key(self, train, key, self.dropout_rate)
        _check_sequence(self, "x", x)
        self._check_len(x.shape[1])
        pe = jax.lax.dynamic_slice_in_dim(self._table(params, x.shape[2], x.dtype), offset, x.shape[1], axis=0)
        return _dropout(x + pe, key, self.dropout_rate, train, self.impl), state


@dataclasses.dataclass(frozen=True)
class LearnedPositions(SinusoidalPositions):
    """Adds a learned position embedding ``w`` (max_len, D), drawn ``0.02 * N(0, 1)``, then dropout."""
    scale: float = 0.02

    def init(self, key, input_shape):
        shape = self.output_shape(input_shape)
        return {"w": init_small(key, (self.max_len, shape[2]), scale=self.scale, dtype=_float())}, {}

    def _table(self, params, d, dtype):
        w = params["w"]
        if w.shape[1] != d:
            raise ValueError(f"{_name(self)}: params w {tuple(w.shape)} do not match the input features D={d}")
        return w


# ---------------------------------------------------------------------------------- feed-forward

_ACTIVATIONS = ("gelu", "gelu_tanh", "relu")


@dataclasses.dataclass(frozen=True)
class FeedForward(Layer):
    """Position-wise feed-forward block: affine D -> hidden, activation, dropout, affine hidden -> D.

    (N, T, D) -> (N, T, D).  activation: ``"gelu"`` (exact erf form, the course's),
    ``"gelu_tanh"`` or ``"relu"``.  params ``{"fc1": {w, b}, "fc2": {w, b}}``.
    """
    hidden: int
    dropout_rate: float = 0.0
    activation: str = "gelu"
    w_init: Union[str, Callable] = "xavier"
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "hidden", self.hidden)
        check_rate(_name(self), self.dropout_rate)
        if self.activation not in _ACTIVATIONS:
            raise ValueError(f"{_name(self)}: `activation` must be one of {_ACTIVATIONS}, got {self.activation!r}")

    def output_shape(self, input_shape):
        return _sequence_shape(self, input_shape)

    def init(self, key, input_shape):
        d = _sequence_shape(self, input_shape)[2]
        k1, k2 = jax.random.split(key)
        return {"fc1": _affine(k1, d, self.hidden, self.w_init), "fc2": _affine(k2, self.hidden, d, self.w_init)}, {}

    def apply(self, params, state, x, *, train, key=None):
        _needs_key(self, train, key, self.dropout_rate)
        _check_sequence(self, "x", x)
        h = F.temporal_affine(x, params["fc1"]["w"], params["fc1"]["b"], impl=self.impl)
        if self.activation == "relu":
            h = F.relu(h, impl=self.impl)
        else:
            h = F.gelu(h, approximate=self.activation == "gelu_tanh", impl=self.impl)
        h = _dropout(h, key, self.dropout_rate, train, self.impl)
        return F.temporal_affine(h, params["fc2"]["w"], params["fc2"]["b"], impl=self.impl), state


# -------------------------------------------------------------------------- encoder / decoder layers

class _Block(Layer):
    """Shared fields and the residual wiring of the encoder and decoder layers."""

    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "num_heads", self.num_heads)
        _positive_int(self, "ff_hidden", self.ff_hidden)
        check_rate(_name(self), self.dropout_rate)
        _bool(self, "norm_first", self.norm_first)

    def _attention(self, causal=False, context_features=None):
        return MultiHeadAttention(self.num_heads, dropout_rate=self.attention_dropout_rate, causal=causal,
                                  context_features=context_features, w_init=self.w_init, impl=self.impl)

    def _ff(self):
        return FeedForward(self.ff_hidden, dropout_rate=self.dropout_rate, activation=self.activation,
                           w_init=self.w_init, impl=self.impl)

    def output_shape(self, input_shape):
        shape = _sequence_shape(self, input_shape)
        self._attention().output_shape(shape)
        return shape

    def _residual(self, params, name, x, sublayer, key, train):
        """``LN(x + drop(sub(x)))`` (post-norm) or ``x + drop(sub(LN(x)))`` (pre-norm)."""
        norm = params[f"norm_{name}"]
        h = sublayer(_layer_norm(norm, x, self.impl) if self.norm_first else x, _sub(key, 0))
        x = x + _dropout(h, _sub(key, 1), self.dropout_rate, train, self.impl)
        return x if self.norm_first else _layer_norm(norm, x, self.impl)


@dataclasses.dataclass(frozen=True)
class TransformerEncoderLayer(_Block):
    """Self-attention then feed-forward, each in a residual with LayerNorm. (N, T, D) -> (N, T, D).

    ``apply(..., mask=None, key_padding_mask=None)`` as :class:`MultiHeadAttention`.
    params ``{"attn", "norm_attn", "ff", "norm_ff"}``.  ``attention_dropout_rate``: dropout on
    the attention weights; ``dropout_rate``: on each sub-layer's output and inside the
    feed-forward block.
    """
    num_heads: int
    ff_hidden: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    norm_first: bool = False
    activation: str = "gelu"
    w_init: Union[str, Callable] = "xavier"
    impl: Optional[str] = None

    def init(self, key, input_shape):
        shape = self.output_shape(input_shape)
        k = jax.random.split(key, 2)
        return {"attn": self._attention().init(k[0], shape)[0], "norm_attn": _norm_params(shape[2]),
                "ff": self._ff().init(k[1], shape)[0], "norm_ff": _norm_params(shape[2])}, {}

    def apply(self, params, state, x, *, train, key=None, mask=None, key_padding_mask=None):
        _needs_key(self, train, key, max(self.dropout_rate, self.attention_dropout_rate))
        attn, ff = self._attention(), self._ff()
        x = self._residual(params, "attn", x, lambda h, k: attn.apply(
            params["attn"], {}, h, train=train, key=k, mask=mask, key_padding_mask=key_padding_mask)[0],
            _sub(key, 0), train)
        x = self._residual(params, "ff", x, lambda h, k: ff.apply(params["ff"], {}, h, train=train, key=k)[0],
                           _sub(key, 1), train)
        return x, state


@dataclasses.dataclass(frozen=True)
class TransformerDecoderLayer(_Block):
    """Causal self-attention, cross-attention onto ``memory``, feed-forward; each residual + LayerNorm.

    x (N, T, D), memory (N, S, Dm) -> (N, T, D).  ``apply(..., memory, mask=None,
    key_padding_mask=None, memory_padding_mask=None)``: ``mask`` adds to the causal mask of
    the self-attention; ``key_padding_mask`` (N, T) marks padded target tokens,
    ``memory_padding_mask`` (N, S) padded memory positions.  ``memory_features`` = Dm when it
    differs from D.  params ``{"self_attn", "norm_self_attn", "cross_attn", "norm_cross_attn",
    "ff", "norm_ff"}``.
    """
    num_heads: int
    ff_hidden: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    norm_first: bool = False
    activation: str = "gelu"
    memory_features: Optional[int] = None
    w_init: Union[str, Callable] = "xavier"
    impl: Optional[str] = None

    def init(self, key, input_shape):
        shape = self.output_shape(input_shape)
        k = jax.random.split(key, 3)
        d = shape[2]
        return {"self_attn": self._attention(causal=True).init(k[0], shape)[0], "norm_self_attn": _norm_params(d),
                "cross_attn": self._attention(context_features=self.memory_features).init(k[1], shape)[0],
                "norm_cross_attn": _norm_params(d),
                "ff": self._ff().init(k[2], shape)[0], "norm_ff": _norm_params(d)}, {}

    def apply(self, params, state, x, *, train, key=None, memory=None, mask=None, key_padding_mask=None,
              memory_padding_mask=None):
        _needs_key(self, train, key, max(self.dropout_rate, self.attention_dropout_rate))
        if memory is None:
            raise ValueError(f"{_name(self)}: apply needs `memory` (N, S, Dm), the encoder's output")
        self_attn, cross, ff = self._attention(causal=True), self._attention(context_features=self.memory_features), self._ff()
        x = self._residual(params, "self_attn", x, lambda h, k: self_attn.apply(
            params["self_attn"], {}, h, train=train, key=k, mask=mask, key_padding_mask=key_padding_mask)[0],
            _sub(key, 0), train)
        x = self._residual(params, "cross_attn", x, lambda h, k: cross.apply(
            params["cross_attn"], {}, h, train=train, key=k, context=memory,
            key_padding_mask=memory_padding_mask)[0], _sub(key, 1), train)
        x = self._residual(params, "ff", x, lambda h, k: ff.apply(params["ff"], {}, h, train=train, key=k)[0],
                           _sub(key, 2), train)
        return x, state

    def apply_cached(self, params, x_t, cache, pos, *, memory, memory_padding_mask=None):
        """One decoding step (eval mode) with the self-attention's key/value ``cache``
        (:meth:`MultiHeadAttention.init_cache`). x_t (N, 1, D) -> (y_t (N, 1, D), cache)."""
        self_attn, cross, ff = self._attention(causal=True), self._attention(context_features=self.memory_features), self._ff()
        out = {}

        def sa(h, k):
            y, out["cache"] = self_attn.apply_cached(params["self_attn"], h, cache, pos)
            return y

        x = self._residual(params, "self_attn", x_t, sa, None, False)
        x = self._residual(params, "cross_attn", x, lambda h, k: cross.apply(
            params["cross_attn"], {}, h, train=False, context=memory, key_padding_mask=memory_padding_mask)[0],
            None, False)
        x = self._residual(params, "ff", x, lambda h, k: ff.apply(params["ff"], {}, h, train=False)[0], None, False)
        return x, out["cache"]


# ----------------------------------------------------------------------------------------- stacks

class _Stack(Layer):
    def __post_init__(self):
        super().__post_init__()
        _positive_int(self, "depth", self.depth)
        self.layer                                       # builds (and checks) the layer

    def output_shape(self, input_shape):
        return self.layer.output_shape(input_shape)

    def init(self, key, input_shape):
        shape = self.output_shape(input_shape)
        params = {str(i): self.layer.init(jax.random.fold_in(key, i), shape)[0] for i in range(self.depth)}
        if self.layer.norm_first:
            params["norm"] = _norm_params(shape[2])
        return params, {}

    def _finish(self, params, x):
        return _layer_norm(params["norm"], x, self.impl) if self.layer.norm_first else x


@dataclasses.dataclass(frozen=True)
class TransformerEncoder(_Stack):
    """``depth`` :class:`TransformerEncoderLayer` s (own weights each); pre-norm stacks end in a
    LayerNorm.  (N, T, D) -> (N, T, D).  params ``{"0", ..., "norm" (pre-norm only)}``."""
    depth: int
    num_heads: int
    ff_hidden: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    norm_first: bool = False
    activation: str = "gelu"
    w_init: Union[str, Callable] = "xavier"
    impl: Optional[str] = None

    @property
    def layer(self):
        return TransformerEncoderLayer(self.num_heads, self.ff_hidden, self.dropout_rate, self.attention_dropout_rate,
                                       self.norm_first, self.activation, self.w_init, self.impl)

    def apply(self, params, state, x, *, train, key=None, mask=None, key_padding_mask=None):
        layer = self.layer
        for i in range(self.depth):
            x = layer.apply(params[str(i)], {}, x, train=train, key=_sub(key, i), mask=mask,
                            key_padding_mask=key_padding_mask)[0]
        return self._finish(params, x), state

    def attention_weights(self, params, x, *, mask=None, key_padding_mask=None):
        """Every layer's self-attention weights in eval mode: a list of ``depth`` arrays (N, heads, T, T)."""
        layer, out = self.layer, []
        for i in range(self.depth):
            p = params[str(i)]
            h = _layer_norm(p["norm_attn"], x, self.impl) if self.norm_first else x
            out.append(layer._attention().attention_weights(p["attn"], h, mask=mask, key_padding_mask=key_padding_mask))
            x = layer.apply(p, {}, x, train=False, mask=mask, key_padding_mask=key_padding_mask)[0]
        return out


def attention_rollout(weights, residual: float = 0.5):
    """Attention rollout (Abnar & Zuidema, 2020): how much each output token draws on each input token.

    weights: a list of per-layer attention weights (N, heads, T, T), first layer first.  Each
    layer's heads are averaged, the residual connection added as ``residual * I + (1 -
    residual) * A``, rows renormalised, and the layers multiplied: ``R = A_L ... A_1``.
    Returns R (N, T, T), each row summing to 1.
    """
    r = None
    for w in weights:
        a = jnp.mean(w, axis=1)
        a = residual * jnp.eye(a.shape[-1], dtype=a.dtype) + (1 - residual) * a
        a = a / jnp.sum(a, axis=-1, keepdims=True)
        r = a if r is None else a @ r
    return r


@dataclasses.dataclass(frozen=True)
class TransformerDecoder(_Stack):
    """``depth`` :class:`TransformerDecoderLayer` s over the same ``memory``. (N, T, D) -> (N, T, D).

    Decoding: :meth:`init_cache` (one self-attention cache per layer) and :meth:`apply_cached`.
    """
    depth: int
    num_heads: int
    ff_hidden: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    norm_first: bool = False
    activation: str = "gelu"
    memory_features: Optional[int] = None
    w_init: Union[str, Callable] = "xavier"
    impl: Optional[str] = None

    @property
    def layer(self):
        return TransformerDecoderLayer(self.num_heads, self.ff_hidden, self.dropout_rate, self.attention_dropout_rate,
                                       self.norm_first, self.activation, self.memory_features, self.w_init, self.impl)

    def apply(self, params, state, x, *, train, key=None, memory=None, mask=None, key_padding_mask=None,
              memory_padding_mask=None):
        layer = self.layer
        for i in range(self.depth):
            x = layer.apply(params[str(i)], {}, x, train=train, key=_sub(key, i), memory=memory, mask=mask,
                            key_padding_mask=key_padding_mask, memory_padding_mask=memory_padding_mask)[0]
        return self._finish(params, x), state

    def cross_attention_weights(self, params, x, *, memory, memory_padding_mask=None):
        """Every layer's cross-attention weights onto ``memory`` in eval mode: a list of ``depth``
        arrays (N, heads, T, S) -- which memory positions each target position reads."""
        layer, out = self.layer, []
        self_attn, cross = layer._attention(causal=True), layer._attention(context_features=self.memory_features)
        for i in range(self.depth):
            p = params[str(i)]
            h = layer._residual(p, "self_attn", x, lambda h, k: self_attn.apply(p["self_attn"], {}, h, train=False)[0],
                                None, False)
            q = _layer_norm(p["norm_cross_attn"], h, self.impl) if self.norm_first else h
            out.append(cross.attention_weights(p["cross_attn"], q, context=memory, key_padding_mask=memory_padding_mask))
            x = layer.apply(p, {}, x, train=False, memory=memory, memory_padding_mask=memory_padding_mask)[0]
        return out

    def init_cache(self, batch_size: int, max_len: int, features: int, dtype=None):
        """One :meth:`MultiHeadAttention.init_cache` per layer: ``{"0": {"k", "v"}, ...}``."""
        attn = self.layer._attention(causal=True)
        return {str(i): attn.init_cache(batch_size, max_len, features, dtype) for i in range(self.depth)}

    def apply_cached(self, params, x_t, cache, pos, *, memory, memory_padding_mask=None):
        """One decoding step through every layer: x_t (N, 1, D) -> (y_t (N, 1, D), cache)."""
        layer, new = self.layer, {}
        for i in range(self.depth):
            x_t, new[str(i)] = layer.apply_cached(params[str(i)], x_t, cache[str(i)], pos, memory=memory,
                                                  memory_padding_mask=memory_padding_mask)
        return self._finish(params, x_t), new


# ------------------------------------------------------------------------------ vision transformer

@dataclasses.dataclass(frozen=True)
class VisionTransformer(Layer):
    """A vision transformer: patches -> tokens + learned positions -> encoder -> pooled -> classes.

    Images (N, H, W, C) NHWC, ``patch`` dividing H and W -> logits (N, num_classes).
    Tokens: :func:`jaxnet.functional.patch_embed` (N, L = HW/patch^2, features); learned
    positions (``0.02 * N(0, 1)``); ``pool="mean"`` averages the encoder's output tokens (the
    course's version), ``pool="cls"`` prepends a learned class token and reads it.  The
    encoder is pre-norm by default (``norm_first=True``, as the ViT paper; the stack's final
    LayerNorm precedes the pooling).  params ``{"embed", "pos", ("cls"), "encoder", "head"}``.
    """
    num_classes: int
    patch: int = 4
    depth: int = 4
    features: int = 128
    num_heads: int = 4
    ff_hidden: int = 256
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    pool: str = "mean"
    norm_first: bool = True
    activation: str = "gelu"
    w_init: Union[str, Callable] = "xavier"
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("num_classes", "patch", "features"):
            _positive_int(self, name, getattr(self, name))
        if self.pool not in ("mean", "cls"):
            raise ValueError(f"{_name(self)}: `pool` must be 'mean' or 'cls', got {self.pool!r}")
        self.encoder                                     # checks depth, heads, rates

    @property
    def encoder(self):
        return TransformerEncoder(self.depth, self.num_heads, self.ff_hidden, self.dropout_rate,
                                  self.attention_dropout_rate, self.norm_first, self.activation, self.w_init, self.impl)

    def tokens(self, input_shape) -> int:
        """The number of tokens the encoder sees for images of ``input_shape`` (N, H, W, C)."""
        shape = _shape(self, input_shape)
        if len(shape) != 4:
            raise ValueError(f"{_name(self)}: `input_shape` must be (N, H, W, C), got {shape}")
        _, h, w, _ = shape
        if h % self.patch or w % self.patch:
            raise ValueError(f"{_name(self)}: patch={self.patch} must divide the image's H={h} and W={w} "
                             f"(input_shape {shape})")
        return (h // self.patch) * (w // self.patch) + (self.pool == "cls")

    def output_shape(self, input_shape):
        self.tokens(input_shape)
        if self.features % self.num_heads:
            raise ValueError(f"{_name(self)}: features={self.features} must be divisible by num_heads={self.num_heads}")
        return (int(input_shape[0]), self.num_classes)

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        n_tokens, c = self.tokens(input_shape), int(input_shape[3])
        k = jax.random.split(key, 5)
        params = {"embed": _affine(k[0], self.patch * self.patch * c, self.features, self.w_init),
                  "pos": init_small(k[1], (n_tokens, self.features), scale=0.02, dtype=_float()),
                  "encoder": self.encoder.init(k[2], (1, n_tokens, self.features))[0],
                  "head": _affine(k[3], self.features, self.num_classes, self.w_init)}
        if self.pool == "cls":
            params["cls"] = jnp.zeros((self.features,), _float())
        return params, {}

    def encode(self, params, x, *, train=False, key=None):
        """The encoder's output tokens (N, L (+1 with a class token), features)."""
        t = _dropout(self._embed(params, x), _sub(key, 0), self.dropout_rate, train, self.impl)
        return self.encoder.apply(params["encoder"], {}, t, train=train, key=_sub(key, 1))[0]

    def _embed(self, params, x):
        """Patch tokens (+ the class token first) + positions: (N, L (+1), features)."""
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"{_name(self)}: images must be (N, H, W, C), got shape {tuple(np.shape(x))}")
        self.tokens(x.shape)
        t = F.patch_embed(x, params["embed"]["w"], params["embed"]["b"], patch=self.patch, impl=self.impl)
        if self.pool == "cls":
            t = jnp.concatenate([jnp.broadcast_to(params["cls"], (t.shape[0], 1, t.shape[2])), t], axis=1)
        return t + params["pos"]

    def attention_weights(self, params, x):
        """Each encoder layer's attention weights for images x (eval mode): a list of (N, heads, L, L)."""
        return self.encoder.attention_weights(params["encoder"], self._embed(params, x))

    def apply(self, params, state, x, *, train, key=None):
        _needs_key(self, train, key, max(self.dropout_rate, self.attention_dropout_rate))
        t = self.encode(params, x, train=train, key=key)
        pooled = t[:, 0] if self.pool == "cls" else jnp.mean(t, axis=1)
        return F.affine(pooled, params["head"]["w"], params["head"]["b"], impl=self.impl), state
