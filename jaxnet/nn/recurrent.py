"""Sequence layers: embeddings, per-step affine, RNN / LSTM / GRU, stacking and bidirectional wrappers.

Every layer follows the protocol of :mod:`jaxnet.nn.layers` (``init``,
``apply(params, state, x, *, train, key=None) -> (y, state)``,
``output_shape``; ``impl=`` per layer through :mod:`jaxnet.functional`).
Sequences are batch first: (N, T, D).  The recurrent layers keep no state in
the protocol's ``state`` (it is ``{}``); the recurrent state is passed in and
handed back explicitly:

* ``apply(params, state, x, *, train, key=None, mask=None, initial_state=None)``
  - ``mask`` (N, T), bool or 0/1 (0 = padding): a masked step carries the state
  unchanged, so padded and unpadded sequences agree on their valid steps;
  ``initial_state`` the carry to start from (None: zeros).
* ``apply_with_state(params, x, *, mask=None, initial_state=None) -> (y, final_state)``:
  the same output and the carry after each sequence's last valid step (what
  truncated backpropagation through time feeds into the next chunk).
* ``step(params, x_t, carry) -> (y_t, carry)``: one time step on (N, D),
  ``lax.scan``-friendly, for decoding (:mod:`jaxnet.nn.decode`);
  ``zero_state(batch_size)`` the carry of zeros.

Carries: RNN and GRU ``h`` (N, H); LSTM ``(h, c)``; :class:`StackedRNN` a
tuple with one carry per layer; :class:`Bidirectional` ``(forward, backward)``.

``return_sequences=True`` outputs every hidden state (N, T, H);
``False`` the state at each sequence's last valid step (N, H) (the LSTM's h).

Weight initialisation (params ``wx`` (D, kH), ``wh`` (H, kH), ``b`` (kH,),
k = 1 RNN, 4 LSTM [i, f, o, g], 3 GRU [z, r, n]):

* ``wx``: the course's Xavier, ``N(0, 1) / sqrt(D)`` (``w_init``, any name of
  :mod:`jaxnet.nn.init` or a callable);
* ``wh``: each (H, H) gate block an independent random orthogonal matrix
  (``recurrent_init="orthogonal"``, :func:`jax.nn.initializers.orthogonal`), so
  the recurrence neither shrinks nor grows the state at the start; any
  :mod:`jaxnet.nn.init` name is accepted instead (then applied per block with
  fans (H, H));
* ``b``: zeros, except the LSTM's forget-gate block, ``forget_bias`` (1.0), so
  that the cell starts by remembering.

:class:`Embedding` ``w`` (V, D) starts at ``0.01 * N(0, 1)`` (``"small"``, the
course's ``randn(V, D) / 100``); :class:`TemporalAffine` ``w`` (D, M) Xavier, ``b`` zeros.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet.nn.init import get_initializer
from jaxnet.nn.layers import Layer, _check_train, _float, _name, _OpLayer, _shape

__all__ = ["Embedding", "TemporalAffine", "RNN", "LSTM", "GRU", "StackedRNN", "Bidirectional", "reverse_within_length"]


def _describe(layer) -> str:
    fields = ", ".join(f"{f.name}={getattr(layer, f.name)!r}" for f in dataclasses.fields(layer)
                       if f.name in ("hidden", "features", "vocab", "merge"))
    return f"{_name(layer)}({fields})"


def _reraise(layer, e: ValueError):
    """``e`` with the layer in front (the op's message already names the op and the shapes)."""
    return ValueError(f"{_describe(layer)}: {e}")


def _check_sequence_shape(layer, shape):
    if len(shape) != 3:
        raise ValueError(f"{_describe(layer)}: `input_shape` must be (N, T, D), got {tuple(shape)}")


def _check_return_sequences(layer):
    if not isinstance(layer.return_sequences, (bool, np.bool_)):
        raise TypeError(f"{_name(layer)}: `return_sequences` must be a bool, got {layer.return_sequences!r}")


# --------------------------------------------------------------------------------- embedding & affine

@dataclasses.dataclass(frozen=True)
class Embedding(Layer):
    """Word embedding: integer indices (N, T) (any shape) -> (N, T, features).

    params: ``w`` (vocab, features).  An index outside [0, vocab) gives a NaN
    output row (see :func:`jaxnet.ops.sequence.word_embedding`).  ``init`` and
    ``output_shape`` take the shape of the index array.
    """
    vocab: int
    features: int
    w_init: Union[str, Callable] = "small"
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        for name in ("vocab", "features"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Embedding: `{name}` must be a positive int, got {v!r}")

    def output_shape(self, input_shape):
        return _shape(self, input_shape) + (self.features,)

    def init(self, key, input_shape):
        _shape(self, input_shape)
        w = get_initializer(self.w_init)(key, (self.vocab, self.features), dtype=_float())
        return {"w": w}, {}

    def apply(self, params, state, x, *, train, key=None):
        _check_train(self, train)
        try:
            return F.word_embedding(x, params["w"], impl=self.impl), state
        except ValueError as e:
            raise _reraise(self, e) from None


@dataclasses.dataclass(frozen=True)
class TemporalAffine(_OpLayer):
    """The same affine map at every time step: (N, T, D) -> (N, T, features).

    params: ``w`` (D, features), ``b`` (features,) (no ``b`` when bias=False).
    """
    features: int
    w_init: Union[str, Callable] = "xavier"
    bias: bool = True
    impl: Optional[str] = None

    def _specs(self, shape):
        return {"w": ((shape[-1], self.features), "w"), **({"b": ((self.features,), 0.0)} if self.bias else {})}, {}

    def apply(self, params, state, x, *, train, key=None):
        return F.temporal_affine(x, params["w"], params.get("b"), impl=self.impl), state


# --------------------------------------------------------------------------------- recurrent layers

class _Recurrent(Layer):
    """Shared machinery of RNN / LSTM / GRU; subclasses set ``_gates`` and ``_op``."""
    _gates = 1

    def __post_init__(self):
        super().__post_init__()
        h = self.hidden
        if not isinstance(h, (int, np.integer)) or isinstance(h, bool) or h < 1:
            raise ValueError(f"{_name(self)}: `hidden` must be a positive int, got {h!r}")
        _check_return_sequences(self)

    # --- params
    def _recurrent_weight(self, key, dtype):
        h, k = self.hidden, self._gates
        keys = jax.random.split(key, k)
        if self.recurrent_init == "orthogonal":
            draw = jax.nn.initializers.orthogonal()
            blocks = [draw(keys[i], (h, h), dtype) for i in range(k)]
        else:
            draw = get_initializer(self.recurrent_init)
            blocks = [draw(keys[i], (h, h), dtype=dtype) for i in range(k)]
        return jnp.concatenate(blocks, axis=1)

    def _bias(self, dtype):
        return jnp.zeros((self._gates * self.hidden,), dtype)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        _check_sequence_shape(self, shape)
        return _init_recurrent(self, key, shape[2]), {}

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_sequence_shape(self, shape)
        n, t, _ = shape
        return (n, t, self.hidden) if self.return_sequences else (n, self.hidden)

    @property
    def feature_size(self) -> int:
        """The last axis of the output: H."""
        return self.hidden

    # --- running
    def zero_state(self, batch_size: int, dtype=None):
        """The carry of zeros for ``batch_size`` sequences."""
        z = jnp.zeros((batch_size, self.hidden), _float() if dtype is None else dtype)
        return z

    def _sequence(self, params, x, mask, initial_state):
        """(hs (N, T, H), final carry)."""
        raise NotImplementedError

    def apply_with_state(self, params, x, *, mask=None, initial_state=None):
        """``(y, final_state)``: y as :meth:`apply` gives it, final_state the carry after each
        sequence's last valid step (the initial state where a sequence has no valid step)."""
        try:
            hs, final = self._sequence(params, x, mask, initial_state)
        except ValueError as e:
            raise _reraise(self, e) from None
        return (hs if self.return_sequences else hs[:, -1]), final

    def apply(self, params, state, x, *, train, key=None, mask=None, initial_state=None):
        _check_train(self, train)
        return self.apply_with_state(params, x, mask=mask, initial_state=initial_state)[0], state


@functools.partial(jax.jit, static_argnums=(0, 2))
def _init_recurrent(layer, key, d):
    """The params of ``layer`` for D=d input features (one compiled program per layer and D)."""
    dtype = _float()
    kx, kh = jax.random.split(key)
    width = layer._gates * layer.hidden
    return {"wx": get_initializer(layer.w_init)(kx, (d, width), dtype=dtype),
            "wh": layer._recurrent_weight(kh, dtype), "b": layer._bias(dtype)}


@dataclasses.dataclass(frozen=True)
class RNN(_Recurrent):
    """Vanilla RNN, ``h_t = tanh(x_t wx + h_{t-1} wh + b)``: (N, T, D) -> (N, T, H) or (N, H).

    Carry: h (N, H).  params: ``wx`` (D, H), ``wh`` (H, H), ``b`` (H,).
    """
    hidden: int
    return_sequences: bool = True
    w_init: Union[str, Callable] = "xavier"
    recurrent_init: Union[str, Callable] = "orthogonal"
    impl: Optional[str] = None
    _gates = 1

    def _sequence(self, params, x, mask, initial_state):
        hs = F.rnn(x, initial_state, params["wx"], params["wh"], params["b"], mask=mask, impl=self.impl)
        return hs, hs[:, -1]

    def step(self, params, x_t, carry):
        """One step: x_t (N, D), carry h (N, H) -> (h_next, h_next)."""
        try:
            h = F.rnn_step(x_t, carry, params["wx"], params["wh"], params["b"], impl=self.impl)
        except ValueError as e:
            raise _reraise(self, e) from None
        return h, h


@dataclasses.dataclass(frozen=True)
class LSTM(_Recurrent):
    """LSTM, gate blocks [i, f, o, g]: (N, T, D) -> (N, T, H) or (N, H) (the h's).

    Carry: ``(h, c)``, each (N, H).  params: ``wx`` (D, 4H), ``wh`` (H, 4H),
    ``b`` (4H,) with the forget block ``b[H:2H]`` initialised to ``forget_bias``.
    """
    hidden: int
    return_sequences: bool = True
    forget_bias: float = 1.0
    w_init: Union[str, Callable] = "xavier"
    recurrent_init: Union[str, Callable] = "orthogonal"
    impl: Optional[str] = None
    _gates = 4

    def _bias(self, dtype):
        h = self.hidden
        return jnp.zeros((4 * h,), dtype).at[h:2 * h].set(self.forget_bias)

    def zero_state(self, batch_size: int, dtype=None):
        z = super().zero_state(batch_size, dtype)
        return (z, z)

    def _split(self, initial_state):
        if initial_state is None:
            return None, None
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == 2):
            raise ValueError(f"`initial_state` must be a pair (h0, c0) of (N, {self.hidden}) arrays, "
                             f"got {type(initial_state).__name__}")
        return tuple(initial_state)

    def _sequence(self, params, x, mask, initial_state):
        h0, c0 = self._split(initial_state)
        hs, c_last = F.lstm(x, h0, c0, params["wx"], params["wh"], params["b"], mask=mask, impl=self.impl)
        return hs, (hs[:, -1], c_last)

    def step(self, params, x_t, carry):
        """One step: x_t (N, D), carry (h, c) -> (h_next, (h_next, c_next))."""
        try:
            h, c = self._split(carry)
            h, c = F.lstm_step(x_t, h, c, params["wx"], params["wh"], params["b"], impl=self.impl)
        except ValueError as e:
            raise _reraise(self, e) from None
        return h, (h, c)


@dataclasses.dataclass(frozen=True)
class GRU(_Recurrent):
    """GRU, blocks [z, r, n] (Cho et al. 2014): (N, T, D) -> (N, T, H) or (N, H).

    Carry: h (N, H).  params: ``wx`` (D, 3H), ``wh`` (H, 3H), ``b`` (3H,).
    """
    hidden: int
    return_sequences: bool = True
    w_init: Union[str, Callable] = "xavier"
    recurrent_init: Union[str, Callable] = "orthogonal"
    impl: Optional[str] = None
    _gates = 3

    def _sequence(self, params, x, mask, initial_state):
        hs = F.gru(x, initial_state, params["wx"], params["wh"], params["b"], mask=mask, impl=self.impl)
        return hs, hs[:, -1]

    def step(self, params, x_t, carry):
        """One step: x_t (N, D), carry h (N, H) -> (h_next, h_next)."""
        try:
            h = F.gru_step(x_t, carry, params["wx"], params["wh"], params["b"], impl=self.impl)
        except ValueError as e:
            raise _reraise(self, e) from None
        return h, h


# --------------------------------------------------------------------------------------- combinators

def _check_recurrent(owner, layer, i=None):
    where = "" if i is None else f" {i}"
    if not all(hasattr(layer, a) for a in ("apply_with_state", "feature_size", "return_sequences")):
        raise TypeError(f"{owner}: layer{where} must be a recurrent layer (RNN, LSTM, GRU, StackedRNN, "
                        f"Bidirectional), got {type(layer).__name__}")


def _as_sequences(layer):
    return layer if layer.return_sequences else dataclasses.replace(layer, return_sequences=True)


@dataclasses.dataclass(frozen=True)
class StackedRNN(Layer):
    """Recurrent layers run one after the other, each on the previous one's hidden sequence.

    layers: a tuple of RNN / LSTM / GRU / Bidirectional (mixed freely; each
    runs with ``return_sequences=True`` inside the stack, whatever its own
    flag).  ``return_sequences`` of the stack picks the output: the last
    layer's (N, T, H_last) or its state at each sequence's last valid step
    (N, H_last); None (the default) takes the last layer's own flag.  The mask goes to every layer.  params: ``{"0": ..., "1": ...}``.
    Carry / ``initial_state`` / final state: a tuple with one carry per layer
    (``initial_state=None`` starts every layer at zeros).
    """
    layers: tuple
    return_sequences: Optional[bool] = None

    def __post_init__(self):
        super().__post_init__()
        if not isinstance(self.layers, tuple) or not self.layers:
            raise ValueError(f"StackedRNN: `layers` must be a non-empty tuple of recurrent layers, "
                             f"got {self.layers!r}")
        for i, layer in enumerate(self.layers):
            _check_recurrent("StackedRNN", layer, i)
        if self.return_sequences is None:
            object.__setattr__(self, "return_sequences", bool(self.layers[-1].return_sequences))
        _check_return_sequences(self)
        object.__setattr__(self, "layers", tuple(_as_sequences(l) for l in self.layers))

    @property
    def feature_size(self) -> int:
        return self.layers[-1].feature_size

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_sequence_shape(self, shape)
        for layer in self.layers:
            shape = layer.output_shape(shape)
        return shape if self.return_sequences else (shape[0], shape[2])

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        _check_sequence_shape(self, shape)
        params = {}
        for i, layer in enumerate(self.layers):
            params[str(i)], _ = layer.init(jax.random.fold_in(key, i), shape)
            shape = layer.output_shape(shape)
        return params, {}

    def zero_state(self, batch_size: int, dtype=None):
        return tuple(layer.zero_state(batch_size, dtype) for layer in self.layers)

    def _initial(self, initial_state):
        if initial_state is None:
            return (None,) * len(self.layers)
        if not (isinstance(initial_state, (tuple, list)) and len(initial_state) == len(self.layers)):
            raise ValueError(f"StackedRNN: `initial_state` must be a tuple of {len(self.layers)} carries "
                             f"(one per layer), got {type(initial_state).__name__}")
        return tuple(initial_state)

    def apply_with_state(self, params, x, *, mask=None, initial_state=None):
        finals = []
        for i, (layer, init) in enumerate(zip(self.layers, self._initial(initial_state))):
            try:
                x, final = layer.apply_with_state(params[str(i)], x, mask=mask, initial_state=init)
            except ValueError as e:
                raise ValueError(f"StackedRNN[{i}] {e}") from None
            finals.append(final)
        return (x if self.return_sequences else x[:, -1]), tuple(finals)

    def apply(self, params, state, x, *, train, key=None, mask=None, initial_state=None):
        _check_train(self, train)
        return self.apply_with_state(params, x, mask=mask, initial_state=initial_state)[0], state

    def step(self, params, x_t, carry):
        """One step through every layer: x_t (N, D), carry (one per layer) -> (y_t, carry)."""
        carry = self._initial(carry)
        out = []
        for i, (layer, c) in enumerate(zip(self.layers, carry)):
            if not hasattr(layer, "step"):
                raise TypeError(f"StackedRNN: layer {i} ({type(layer).__name__}) has no step "
                                f"(a bidirectional layer needs the whole sequence)")
            x_t, c = layer.step(params[str(i)], x_t, c)
            out.append(c)
        return x_t, tuple(out)


def reverse_within_length(x, mask=None):
    """Each sequence of x (N, T, ...) reversed among its valid steps; padded steps stay in place.

    mask: (N, T) bool or 0/1, or None (every step valid: a plain reversal of the
    time axis).  With valid positions p_0 < ... < p_{L-1} of a row, the value at
    p_i moves to p_{L-1-i} (for the usual mask of a prefix of ones, the first L
    steps are reversed).  The map is its own inverse.
    """
    if mask is None:
        return x[:, ::-1]
    mask = jnp.asarray(mask) != 0
    t = mask.shape[1]
    pos = jnp.arange(t)
    order = jnp.argsort(jnp.where(mask, pos, t + pos), axis=1)      # valid positions first, in order
    rank = jnp.cumsum(mask, axis=1) - 1
    length = jnp.sum(mask, axis=1, keepdims=True)
    target = jnp.take_along_axis(order, jnp.clip(length - 1 - rank, 0, t - 1), axis=1)
    perm = jnp.where(mask, target, pos[None, :])
    idx = perm.reshape(perm.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)


@dataclasses.dataclass(frozen=True)
class Bidirectional(Layer):
    """A recurrent layer run forwards and, with its own parameters, backwards in time.

    The backward direction sees each sequence reversed within its own length
    (:func:`reverse_within_length`; padding stays at the end) and its outputs
    are reversed back, so step t of the output combines the forward state after
    steps 0..t and the backward state after steps t..L-1.  merge: ``"concat"``
    (last axis 2H, forward first) or ``"sum"`` (H).  ``return_sequences``: None
    (the default) takes the wrapped layer's flag; ``False`` merges the two final states: the forward one after each sequence's last
    valid step, the backward one after its first.
    params: ``{"forward": ..., "backward": ...}``.  Carry / ``initial_state``:
    ``(forward carry, backward carry)``.  No ``step`` (it needs the whole sequence).
    """
    layer: Any
    merge: str = "concat"
    return_sequences: Optional[bool] = None

    def __post_init__(self):
        super().__post_init__()
        _check_recurrent("Bidirectional", self.layer)
        if self.merge not in ("concat", "sum"):
            raise ValueError(f"Bidirectional: `merge` must be 'concat' or 'sum', got {self.merge!r}")
        if self.return_sequences is None:
            object.__setattr__(self, "return_sequences", bool(self.layer.return_sequences))
        _check_return_sequences(self)
        object.__setattr__(self, "layer", _as_sequences(self.layer))

    @property
    def feature_size(self) -> int:
        h = self.layer.feature_size
        return 2 * h if self.merge == "concat" else h

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        _check_sequence_shape(self, shape)
        n, t, _ = self.layer.output_shape(shape)
        return (n, t, self.feature_size) if self.return_sequences else (n, self.feature_size)

    def init(self, key, input_shape):
        shape = _shape(self, input_shape)
        _check_sequence_shape(self, shape)
        pf, _ = self.layer.init(jax.random.fold_in(key, 0), shape)
        pb, _ = self.layer.init(jax.random.fold_in(key, 1), shape)
        return {"forward": pf, "backward": pb}, {}

    def zero_state(self, batch_size: int, dtype=None):
        return (self.layer.zero_state(batch_size, dtype), self.layer.zero_state(batch_size, dtype))

    def _merge(self, a, b):
        return jnp.concatenate([a, b], axis=-1) if self.merge == "concat" else a + b

    def apply_with_state(self, params, x, *, mask=None, initial_state=None):
        if initial_state is None:
            init_f = init_b = None
        elif isinstance(initial_state, (tuple, list)) and len(initial_state) == 2:
            init_f, init_b = initial_state
        else:
            raise ValueError(f"Bidirectional: `initial_state` must be a pair (forward, backward) of carries, "
                             f"got {type(initial_state).__name__}")
        try:
            yf, ff = self.layer.apply_with_state(params["forward"], x, mask=mask, initial_state=init_f)
            xr = reverse_within_length(x, mask)
            yb, fb = self.layer.apply_with_state(params["backward"], xr, mask=mask, initial_state=init_b)
        except ValueError as e:
            raise ValueError(f"Bidirectional({_name(self.layer)}) {e}") from None
        if self.return_sequences:
            y = self._merge(yf, reverse_within_length(yb, mask))
        else:
            y = self._merge(yf[:, -1], yb[:, -1])
        return y, (ff, fb)

    def apply(self, params, state, x, *, train, key=None, mask=None, initial_state=None):
        _check_train(self, train)
        return self.apply_with_state(params, x, mask=mask, initial_state=initial_state)[0], state
