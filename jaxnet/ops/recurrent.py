"""Recurrent cells and whole-sequence recurrences (vanilla RNN, LSTM, GRU).

Shapes: x (N, D) for a step, (N, T, D) for a sequence (batch first, as in the
course); hidden and cell states (N, H); input weights wx (D, kH), recurrent
weights wh (H, kH), bias b (kH,), with k = 1 (RNN), 4 (LSTM), 3 (GRU).

- RNN: ``h' = tanh(x wx + h wh + b)``.
- LSTM, gate blocks in the course's order [i, f, o, g] along the kH axis:
  ``a = x wx + h wh + b``; i, f, o = sigmoid of their blocks, g = tanh of its
  block; ``c' = f*c + i*g``; ``h' = o*tanh(c')``.  (PyTorch's order is
  [i, f, g, o].)
- GRU, blocks [z, r, n], Cho et al. (2014): ``z = sigmoid(x Wz + h Uz + bz)``,
  ``r = sigmoid(x Wr + h Ur + br)``, ``n = tanh(x Wn + (r*h) Un + bn)``,
  ``h' = (1 - z)*n + z*h``.

Masks (N, T), bool or 0/1 numbers (anything nonzero is a valid step): where a
step is masked out the state is carried unchanged (``h_t = h_{t-1}``, and
``c_t = c_{t-1}`` for the LSTM), so ``hs[:, -1]`` is each sequence's state at
its last valid step.  The mask is never differentiated (its gradient is 0).

Reference path: ``lax.scan`` of the step's formula, differentiated by autodiff.
Manual path: one ``jax.custom_vjp`` over the whole sequence (backpropagation
through time by hand): the forward projects the inputs of all time steps in
one matmul (T*N, D) x (D, kH) before the ``lax.scan`` recurrence and saves the
hidden states and gate activations; the backward's reverse ``lax.scan``
computes only the per-step deltas (dh, dc and the pre-activation gradients
dA_t), and afterwards dx, dwx, dwh and db are each one matmul or reduction over
all time steps.  Internally the manual path runs time-major (T, N, ...).
Nothing is unrolled in Python: the compiled program's size does not depend on T.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, oracle_case, register

_GATES = {"rnn": 1, "lstm": 4, "gru": 3}


# --------------------------------------------------------------------------------------------- checks

def _shape(a):
    return tuple(getattr(a, "shape", ()))


def _is_float(a) -> bool:
    dtype = getattr(a, "dtype", None)
    return dtype is not None and jnp.issubdtype(dtype, jnp.floating)


def _check_array(op, name, a, rank, what):
    if not hasattr(a, "shape") or not hasattr(a, "dtype"):
        raise ValueError(f"{op}: `{name}` must be an array {what}, got {type(a).__name__}")
    if a.ndim != rank:
        raise ValueError(f"{op}: `{name}` must have rank {rank} {what}, got shape {_shape(a)}")
    if not _is_float(a):
        raise ValueError(f"{op}: `{name}` must be a floating-point array, got dtype {a.dtype} "
                         f"(shape {_shape(a)})")


def _check_weights(op, k, x_shape, wx, wh, b):
    """wx (D, kH), wh (H, kH), b (kH,): returns H."""
    kh = f"{k}H" if k > 1 else "H"
    _check_array(op, "wh", wh, 2, f"({'H, ' + kh})")
    h = wh.shape[0]
    if wh.shape[1] != k * h:
        raise ValueError(f"{op}: `wh` must have shape (H, {kh}) = ({h}, {k * h}), got {_shape(wh)}")
    _check_array(op, "wx", wx, 2, f"(D, {kh})")
    d = x_shape[-1]
    if wx.shape != (d, k * h):
        raise ValueError(f"{op}: `wx` must have shape (D, {kh}) = ({d}, {k * h}) for `x` {x_shape} (D={d}) and "
                         f"`wh` {_shape(wh)}, got {_shape(wx)}")
    _check_array(op, "b", b, 1, f"({kh},)")
    if b.shape != (k * h,):
        raise ValueError(f"{op}: `b` must have shape ({kh},) = ({k * h},) to match `wh` {_shape(wh)}, "
                         f"got {_shape(b)}")
    return h


def _check_state(op, name, s, n, h, x_shape, wh_shape):
    _check_array(op, name, s, 2, "(N, H)")
    if s.shape != (n, h):
        raise ValueError(f"{op}: `{name}` must have shape (N, H) = ({n}, {h}) for `x` {x_shape} and "
                         f"`wh` {wh_shape}, got {_shape(s)}")


def check_step(op, k, x, states, wx, wh, b):
    """Validate a step call; ``states`` maps names ('h', 'c') to (N, H) arrays."""
    _check_array(op, "x", x, 2, "(N, D)")
    h = _check_weights(op, k, _shape(x), wx, wh, b)
    for name, s in states.items():
        _check_state(op, name, s, x.shape[0], h, _shape(x), _shape(wh))


def check_sequence(op, k, x, states, wx, wh, b, mask):
    """Validate a whole-sequence call; returns the states (None replaced by zeros, (N, H) in x's
    dtype) and the mask as bool (N, T) (or None)."""
    _check_array(op, "x", x, 3, "(N, T, D)")
    n, t, d = x.shape
    if t < 1:
        raise ValueError(f"{op}: `x` (N, T, D) must have at least one time step (T >= 1), got {_shape(x)}")
    h = _check_weights(op, k, _shape(x), wx, wh, b)
    out = []
    for name, s in states.items():
        if s is None:
            s = jnp.zeros((n, h), jnp.result_type(x, wx, wh, b))
        else:
            _check_state(op, name, s, n, h, _shape(x), _shape(wh))
        out.append(s)
    if mask is not None:
        if isinstance(mask, (list, tuple)):
            mask = np.asarray(mask)
        if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
            raise ValueError(f"{op}: `mask` must be an (N, T) array, got {type(mask).__name__}")
        if _shape(mask) != (n, t):
            raise ValueError(f"{op}: `mask` must have shape (N, T) = ({n}, {t}) for `x` {_shape(x)}, "
                             f"got {_shape(mask)}")
        if not (mask.dtype == bool or jnp.issubdtype(mask.dtype, jnp.number)):
            raise ValueError(f"{op}: `mask` must be bool or numeric (0 = padding), got dtype {mask.dtype}")
        mask = lax.stop_gradient(jnp.asarray(mask)) != 0
    return out, mask


def _time_major(a):
    return None if a is None else jnp.swapaxes(a, 0, 1)


def _keep(m, new, old):
    """``new`` where the step is valid (m (N,) bool), ``old`` where it is padding."""
    return new if m is None else jnp.where(m[:, None], new, old)


# --------------------------------------------------------------------------------- reference steps

def _rnn_cell(x, h, wx, wh, b):
    return jnp.tanh(x @ wx + h @ wh + b)


def _lstm_cell(x, h, c, wx, wh, b):
    a = x @ wx + h @ wh + b
    hd = h.shape[-1]
    i = jax.nn.sigmoid(a[:, :hd])
    f = jax.nn.sigmoid(a[:, hd:2 * hd])
    o = jax.nn.sigmoid(a[:, 2 * hd:3 * hd])
    g = jnp.tanh(a[:, 3 * hd:])
    c_next = f * c + i * g
    return o * jnp.tanh(c_next), c_next


def _gru_cell(x, h, wx, wh, b):
    hd = h.shape[-1]
    ax = x @ wx + b
    ah = h @ wh[:, :2 * hd]
    z = jax.nn.sigmoid(ax[:, :hd] + ah[:, :hd])
    r = jax.nn.sigmoid(ax[:, hd:2 * hd] + ah[:, hd:])
    n = jnp.tanh(ax[:, 2 * hd:] + (r * h) @ wh[:, 2 * hd:])
    return (1 - z) * n + z * h


def rnn_step(x, h, wx, wh, b):
    """One vanilla RNN step: ``h_next = tanh(x wx + h wh + b)``.

    x: (N, D); h: (N, H); wx: (D, H); wh: (H, H); b: (H,).  Returns h_next (N, H).
    Floating dtypes (float32 or float64); the result has their promoted dtype.
    """
    check_step("rnn_step", 1, x, {"h": h}, wx, wh, b)
    return _rnn_cell(x, h, wx, wh, b)


def lstm_step(x, h, c, wx, wh, b):
    """One LSTM step, gate blocks [input i, forget f, output o, candidate g] (the course's order).

    ``a = x wx + h wh + b``; i, f, o = sigmoid of their H-wide blocks of a, g = tanh
    of the last; ``c_next = f*c + i*g``; ``h_next = o*tanh(c_next)``.
    x: (N, D); h, c: (N, H); wx: (D, 4H); wh: (H, 4H); b: (4H,).
    Returns (h_next, c_next), each (N, H).  PyTorch orders the blocks [i, f, g, o].
    """
    check_step("lstm_step", 4, x, {"h": h, "c": c}, wx, wh, b)
    return _lstm_cell(x, h, c, wx, wh, b)


def gru_step(x, h, wx, wh, b):
    """One GRU step, blocks [update z, reset r, candidate n], the form of Cho et al. (2014).

    ``z = sigmoid(x Wz + h Uz + bz)``, ``r = sigmoid(x Wr + h Ur + br)``,
    ``n = tanh(x Wn + (r*h) Un + bn)``, ``h_next = (1 - z)*n + z*h``, where
    wx = [Wz | Wr | Wn] (D, 3H), wh = [Uz | Ur | Un] (H, 3H), b = [bz | br | bn] (3H,).
    x: (N, D); h: (N, H).  Returns h_next (N, H).

    PyTorch's ``nn.GRU`` differs: it applies the reset gate after the matmul,
    ``n = tanh(x Wn + b_in + r*(h Un + b_hn))``, and has two biases per block
    (``b_ih`` and ``b_hh``; for z and r only their sum matters).  The two forms
    are not reparametrisations of each other, so PyTorch GRU weights cannot be
    copied into this op.
    """
    check_step("gru_step", 3, x, {"h": h}, wx, wh, b)
    return _gru_cell(x, h, wx, wh, b)


# ------------------------------------------------------------------------------ reference sequences

def rnn(x, h0, wx, wh, b, *, mask=None):
    """A vanilla RNN over a whole sequence: ``h_t = tanh(x_t wx + h_{t-1} wh + b)``.

    x: (N, T, D); h0: (N, H) or None (zeros); wx: (D, H); wh: (H, H); b: (H,).
    mask: optional (N, T), bool or 0/1: where it is 0 the state is carried
    unchanged (``h_t = h_{t-1}``), so ``hs[:, -1]`` is each sequence's state at
    its last valid step.  Returns hs (N, T, H).
    """
    (h0,), m = check_sequence("rnn", 1, x, {"h0": h0}, wx, wh, b, mask)

    def step(h, inp):
        xt, mt = inp
        h_next = _keep(mt, _rnn_cell(xt, h, wx, wh, b), h)
        return h_next, h_next

    _, hs = lax.scan(step, h0, (_time_major(x), _time_major(m)))
    return _time_major(hs)


def lstm(x, h0, c0, wx, wh, b, *, mask=None):
    """An LSTM over a whole sequence (gate blocks [i, f, o, g], see :func:`lstm_step`).

    x: (N, T, D); h0, c0: (N, H) or None (zeros); wx: (D, 4H); wh: (H, 4H); b: (4H,).
    mask: optional (N, T), bool or 0/1: where it is 0 both h and c are carried
    unchanged.  Returns (hs, c_last): hs (N, T, H) and c_last (N, H), the cell
    state after each sequence's last valid step.
    """
    (h0, c0), m = check_sequence("lstm", 4, x, {"h0": h0, "c0": c0}, wx, wh, b, mask)

    def step(carry, inp):
        h, c = carry
        xt, mt = inp
        hn, cn = _lstm_cell(xt, h, c, wx, wh, b)
        hn, cn = _keep(mt, hn, h), _keep(mt, cn, c)
        return (hn, cn), hn

    (_, c_last), hs = lax.scan(step, (h0, c0), (_time_major(x), _time_major(m)))
    return _time_major(hs), c_last


def gru(x, h0, wx, wh, b, *, mask=None):
    """A GRU over a whole sequence (blocks [z, r, n], Cho et al. 2014; see :func:`gru_step`).

    x: (N, T, D); h0: (N, H) or None (zeros); wx: (D, 3H); wh: (H, 3H); b: (3H,).
    mask: optional (N, T), bool or 0/1: where it is 0 the state is carried
    unchanged.  Returns hs (N, T, H).
    """
    (h0,), m = check_sequence("gru", 3, x, {"h0": h0}, wx, wh, b, mask)

    def step(h, inp):
        xt, mt = inp
        h_next = _keep(mt, _gru_cell(xt, h, wx, wh, b), h)
        return h_next, h_next

    _, hs = lax.scan(step, h0, (_time_major(x), _time_major(m)))
    return _time_major(hs)


# ------------------------------------------------------------------------------- manual: the steps

def _promote(*arrays):
    """The arrays in their common (promoted) dtype, as the reference's arithmetic would give."""
    dt = jnp.result_type(*arrays)
    return tuple(a.astype(dt) for a in arrays)


def _sig_grad(s):
    """sigmoid'(a) from s = sigmoid(a)."""
    return s * (1 - s)


def _tanh_grad(t):
    """tanh'(a) from t = tanh(a)."""
    return 1 - t * t


def _lstm_gates(a, hd):
    """Activations [i, f, o, g] (N, 4H) from the pre-activations a (N, 4H)."""
    return jnp.concatenate([jax.nn.sigmoid(a[..., :3 * hd]), jnp.tanh(a[..., 3 * hd:])], axis=-1)


def _lstm_delta(gh, gc, gates, c_prev, c_next, hd):
    """One LSTM step backwards to its pre-activations.

    gh, gc: the gradients reaching h_next and c_next (N, H); gates: [i, f, o, g]
    activations (N, 4H); c_prev, c_next: (N, H).  Returns (da (N, 4H), dc_prev (N, H)):
    with tc = tanh(c_next), dc = gc + gh*o*(1 - tc^2); di = dc*g, df = dc*c_prev,
    do = gh*tc, dg = dc*i, each times its nonlinearity's derivative; dc_prev = dc*f.
    """
    i, f, o, g = (gates[..., k * hd:(k + 1) * hd] for k in range(4))
    tc = jnp.tanh(c_next)
    dc = gc + gh * o * _tanh_grad(tc)
    da = jnp.concatenate([dc * g * _sig_grad(i), dc * c_prev * _sig_grad(f), gh * tc * _sig_grad(o),
                          dc * i * _tanh_grad(g)], axis=-1)
    return da, dc * f


def _gru_delta(gh, h_prev, zrn, wh, hd):
    """One GRU step backwards to its pre-activations.

    gh: the gradient reaching h_next (N, H); h_prev (N, H); zrn: [z, r, n] activations
    (N, 3H); wh (H, 3H).  Returns (da (N, 3H), dh_prev (N, H)):
    dz = gh*(h_prev - n), dn = gh*(1 - z); da_n = dn*(1 - n^2); d(r*h) = da_n Un^T;
    dr = d(r*h)*h_prev; da_z, da_r = dz, dr times sigmoid'; and
    dh_prev = gh*z + d(r*h)*r + [da_z, da_r] [Uz | Ur]^T.
    """
    z, r, n = (zrn[..., k * hd:(k + 1) * hd] for k in range(3))
    dan = gh * (1 - z) * _tanh_grad(n)
    drh = dan @ wh[:, 2 * hd:].T
    dzr = jnp.concatenate([gh * (h_prev - n) * _sig_grad(z), drh * h_prev * _sig_grad(r)], axis=-1)
    dh_prev = gh * z + drh * r + dzr @ wh[:, :2 * hd].T
    return jnp.concatenate([dzr, dan], axis=-1), dh_prev


def _gru_forward(xa, h, wh, hd):
    """One GRU step from the input projection xa = x wx + b (N, 3H): (h_next, [z, r, n] (N, 3H))."""
    ah = h @ wh[:, :2 * hd]
    zr = jax.nn.sigmoid(xa[..., :2 * hd] + ah)
    r = zr[..., hd:]
    n = jnp.tanh(xa[..., 2 * hd:] + (r * h) @ wh[:, 2 * hd:])
    z = zr[..., :hd]
    return (1 - z) * n + z * h, jnp.concatenate([zr, n], axis=-1)


def _gru_dwh(h_prev, zrn, da, hd):
    """dwh (H, 3H) = [H_prev^T dA_zr | (r*H_prev)^T dA_n], rows over every example (and step)."""
    r = zrn[..., hd:2 * hd]
    hp = h_prev.reshape(-1, hd)
    da2 = da.reshape(-1, 3 * hd)
    return jnp.concatenate([hp.T @ da2[:, :2 * hd], (r.reshape(-1, hd) * hp).T @ da2[:, 2 * hd:]], axis=1)


@jax.custom_vjp
def _rnn_step(x, h, wx, wh, b):
    return _rnn_cell(x, h, wx, wh, b)


def _rnn_step_fwd(x, h, wx, wh, b):
    h_next = _rnn_cell(x, h, wx, wh, b)
    return h_next, (x, h, wx, wh, h_next)


def _rnn_step_bwd(res, dh_next):
    """da = dh'·(1 - h'²); dx = da·wxᵀ, dh = da·whᵀ, dwx = xᵀ·da, dwh = hᵀ·da, db = Σ_n da.

    Residuals: the inputs x (N, D), h (N, H), wx (D, H), wh (H, H) and the
    output h' (N, H).  dh_next, da: (N, H).  Returns dx (N, D), dh (N, H),
    dwx (D, H), dwh (H, H), db (H,).
    """
    x, h, wx, wh, h_next = res
    da = dh_next * _tanh_grad(h_next)
    return da @ wx.T, da @ wh.T, x.T @ da, h.T @ da, jnp.sum(da, axis=0)


_rnn_step.defvjp(_rnn_step_fwd, _rnn_step_bwd)


def rnn_step_manual(x, h, wx, wh, b):
    """Manual twin of :func:`rnn_step` (reverse mode: ``custom_vjp``). Shapes as there."""
    check_step("rnn_step", 1, x, {"h": h}, wx, wh, b)
    return _rnn_step(*_promote(x, h, wx, wh, b))


@jax.custom_vjp
def _lstm_step(x, h, c, wx, wh, b):
    return _lstm_cell(x, h, c, wx, wh, b)


def _lstm_step_fwd(x, h, c, wx, wh, b):
    hd = h.shape[-1]
    gates = _lstm_gates(x @ wx + h @ wh + b, hd)
    c_next = gates[:, hd:2 * hd] * c + gates[:, :hd] * gates[:, 3 * hd:]
    h_next = gates[:, 2 * hd:3 * hd] * jnp.tanh(c_next)
    return (h_next, c_next), (x, h, c, wx, wh, gates, c_next)


def _lstm_step_bwd(res, cts):
    """dc = dc' + dh'·o·(1 - tanh²c'); da = [dc·g·i(1-i), dc·c·f(1-f), dh'·tanh c'·o(1-o), dc·i·(1-g²)]; dc_prev = dc·f.

    Then dx = da·wxᵀ, dh = da·whᵀ, dwx = xᵀ·da, dwh = hᵀ·da, db = Σ_n da.
    Residuals: the inputs x (N, D), h (N, H), c (N, H), wx (D, 4H), wh (H, 4H),
    the gate activations [i, f, o, g] (N, 4H) and c' (N, H).  dh', dc': (N, H);
    da: (N, 4H).  Returns dx (N, D), dh (N, H), dc (N, H), dwx (D, 4H),
    dwh (H, 4H), db (4H,).
    """
    x, h, c, wx, wh, gates, c_next = res
    dh_next, dc_next = cts
    da, dc = _lstm_delta(dh_next, dc_next, gates, c, c_next, h.shape[-1])
    return da @ wx.T, da @ wh.T, dc, x.T @ da, h.T @ da, jnp.sum(da, axis=0)


_lstm_step.defvjp(_lstm_step_fwd, _lstm_step_bwd)


def lstm_step_manual(x, h, c, wx, wh, b):
    """Manual twin of :func:`lstm_step` (reverse mode: ``custom_vjp``). Shapes as there."""
    check_step("lstm_step", 4, x, {"h": h, "c": c}, wx, wh, b)
    return _lstm_step(*_promote(x, h, c, wx, wh, b))


@jax.custom_vjp
def _gru_step(x, h, wx, wh, b):
    return _gru_cell(x, h, wx, wh, b)


def _gru_step_fwd(x, h, wx, wh, b):
    h_next, zrn = _gru_forward(x @ wx + b, h, wh, h.shape[-1])
    return h_next, (x, h, wx, wh, zrn)


def _gru_step_bwd(res, dh_next):
    """dz = dh'·(h - n), dn = dh'·(1 - z), d(r·h) = da_n·Unᵀ, dr = d(r·h)·h; dh = dh'·z + d(r·h)·r + [da_z, da_r]·[Uz|Ur]ᵀ.

    With da = [dz·z(1-z), dr·r(1-r), dn·(1-n²)] (N, 3H): dx = da·wxᵀ,
    dwx = xᵀ·da, db = Σ_n da, dwh = [hᵀ·da_zr | (r·h)ᵀ·da_n].
    Residuals: the inputs x (N, D), h (N, H), wx (D, 3H), wh (H, 3H) and the
    activations [z, r, n] (N, 3H).  dh': (N, H).  Returns dx (N, D), dh (N, H),
    dwx (D, 3H), dwh (H, 3H), db (3H,).
    """
    x, h, wx, wh, zrn = res
    hd = h.shape[-1]
    da, dh = _gru_delta(dh_next, h, zrn, wh, hd)
    return da @ wx.T, dh, x.T @ da, _gru_dwh(h, zrn, da, hd), jnp.sum(da, axis=0)


_gru_step.defvjp(_gru_step_fwd, _gru_step_bwd)


def gru_step_manual(x, h, wx, wh, b):
    """Manual twin of :func:`gru_step` (reverse mode: ``custom_vjp``). Shapes as there."""
    check_step("gru_step", 3, x, {"h": h}, wx, wh, b)
    return _gru_step(*_promote(x, h, wx, wh, b))


# --------------------------------------------------------------------- manual: whole sequences (BPTT)

def _project(x, wx, b):
    """All time steps' input projections in one matmul: (N*T, D) x (D, kH) + b, returned
    time-major (T, N, kH) for the scan."""
    n, t, d = x.shape
    return jnp.swapaxes((x.reshape(n * t, d) @ wx + b).reshape(n, t, -1), 0, 1)


def _shifted(first, states):
    """The previous states, time-major: [first, states[0], ..., states[T-2]] (T, N, H)."""
    return jnp.concatenate([first[None], states[:-1]], axis=0)


def _param_grads(x, wx, h_prev, da):
    """dx (N, T, D), dwx (D, kH), dwh (H, kH) = H_prev^T dA, db (kH,): one matmul or sum each
    over all N*T rows.  da: time-major (T, N, kH); h_prev: time-major (T, N, H), or None
    (then dwh is None: the GRU forms its own)."""
    n, t, d = x.shape
    kh = da.shape[-1]
    da_bm = jnp.swapaxes(da, 0, 1).reshape(n * t, kh)        # batch-major rows, as x's
    dx = (da_bm @ wx.T).reshape(n, t, d)
    dwx = x.reshape(n * t, d).T @ da_bm
    dwh = None if h_prev is None else h_prev.reshape(-1, h_prev.shape[-1]).T @ da.reshape(-1, kh)
    return dx, dwx, dwh, jnp.sum(da_bm, axis=0)


def _masked(m, grad_valid, grad_padding):
    """The step's gradient where it is valid, the carried one where it is padding (m (N,) or None)."""
    return grad_valid if m is None else jnp.where(m[:, None], grad_valid, grad_padding)


@jax.custom_vjp
def _rnn_seq(x, h0, wx, wh, b, m):
    return _rnn_seq_fwd(x, h0, wx, wh, b, m)[0]


def _rnn_seq_fwd(x, h0, wx, wh, b, m):
    def step(h, inp):
        xa_t, m_t = inp
        h_next = _keep(m_t, jnp.tanh(xa_t + h @ wh), h)
        return h_next, h_next

    mt = _time_major(m)
    _, hs = lax.scan(step, h0, (_project(x, wx, b), mt))
    return _time_major(hs), (x, h0, wx, wh, hs, mt)


def _rnn_bwd(res, dhs):
    """BPTT by hand: a reverse scan of da_t = (dhs_t + dh_t)·(1 - h_t²), dh_{t-1} = da_t·whᵀ; then one matmul per parameter.

    Residuals saved by the forward (time-major): the inputs x (N, T, D) (batch-major, as
    given), h0 (N, H), wx (D, H), wh (H, H); the hidden states hs (T, N, H)
    (after each step, carried through padding); the mask (T, N) bool or None.
    The reverse scan carries dh (N, H) and emits dA (T, N, H); at a padded step
    da_t = 0 and the gradient passes to h_{t-1} unchanged.  Afterwards, with
    H_prev = [h0, h_1, ..., h_{T-1}] (T, N, H): dx = dA·wxᵀ (N, T, D),
    dwx = Xᵀ·dA (D, H), dwh = H_prevᵀ·dA (H, H), db = Σ dA (H,), dh0 = the
    final carry (N, H); the mask gets no gradient (None).
    """
    x, h0, wx, wh, hs, mt = res

    def step(dh, inp):
        dh_t, h_t, m_t = inp
        g = dh_t + dh
        da = g * _tanh_grad(h_t)
        if m_t is not None:
            da = jnp.where(m_t[:, None], da, 0)
        return _masked(m_t, da @ wh.T, g), da

    dh0, da = lax.scan(step, jnp.zeros_like(h0), (_time_major(dhs), hs, mt), reverse=True)
    dx, dwx, dwh, db = _param_grads(x, wx, _shifted(h0, hs), da)
    return dx, dh0, dwx, dwh, db, None


_rnn_seq.defvjp(_rnn_seq_fwd, _rnn_bwd)


def rnn_manual(x, h0, wx, wh, b, *, mask=None):
    """Manual twin of :func:`rnn`: hand-written BPTT (``custom_vjp`` over the sequence). Shapes as there."""
    (h0,), m = check_sequence("rnn", 1, x, {"h0": h0}, wx, wh, b, mask)
    return _rnn_seq(*_promote(x, h0, wx, wh, b), m)


@jax.custom_vjp
def _lstm_seq(x, h0, c0, wx, wh, b, m):
    return _lstm_seq_fwd(x, h0, c0, wx, wh, b, m)[0]


def _lstm_seq_fwd(x, h0, c0, wx, wh, b, m):
    hd = h0.shape[-1]

    def step(carry, inp):
        h, c = carry
        xa_t, m_t = inp
        gates = _lstm_gates(xa_t + h @ wh, hd)
        c_next = gates[:, hd:2 * hd] * c + gates[:, :hd] * gates[:, 3 * hd:]
        h_next = gates[:, 2 * hd:3 * hd] * jnp.tanh(c_next)
        h_next, c_next = _keep(m_t, h_next, h), _keep(m_t, c_next, c)
        return (h_next, c_next), (h_next, c_next, gates)

    mt = _time_major(m)
    (_, c_last), (hs, cs, gates) = lax.scan(step, (h0, c0), (_project(x, wx, b), mt))
    return (_time_major(hs), c_last), (x, h0, c0, wx, wh, hs, cs, gates, mt)


def _lstm_bwd(res, cts):
    """BPTT by hand: a reverse scan carrying (dh, dc) that emits the pre-activation gradients dA_t (the step's delta); then one matmul per parameter.

    Residuals saved by the forward (time-major): the inputs x (N, T, D) (batch-major, as
    given), h0, c0 (N, H), wx (D, 4H), wh (H, 4H); the states after each step
    hs, cs (T, N, H) (carried through padding); the gate activations
    [i, f, o, g] (T, N, 4H); the mask (T, N) bool or None.  Cotangents: dhs
    (N, T, H) and dc_last (N, H), which starts the dc carry.  Per step, with
    gh = dhs_t + dh: dc = dc_carry + gh·o·(1 - tanh²c_t), dA_t =
    [dc·g·i(1-i), dc·c_{t-1}·f(1-f), gh·tanh c_t·o(1-o), dc·i·(1-g²)] (N, 4H),
    dh_{t-1} = dA_t·whᵀ, dc_{t-1} = dc·f; at a padded step dA_t = 0 and (dh, dc)
    pass through unchanged.  Afterwards, with H_prev = [h0, h_1, ..., h_{T-1}]:
    dx = dA·wxᵀ (N, T, D), dwx = Xᵀ·dA (D, 4H), dwh = H_prevᵀ·dA (H, 4H),
    db = Σ dA (4H,), (dh0, dc0) = the final carry; the mask gets None.
    """
    x, h0, c0, wx, wh, hs, cs, gates, mt = res
    dhs, dc_last = cts
    hd = h0.shape[-1]

    def step(carry, inp):
        dh, dc = carry
        dh_t, g_t, c_prev, c_t, m_t = inp
        gh = dh_t + dh
        da, dc_prev = _lstm_delta(gh, dc, g_t, c_prev, c_t, hd)
        if m_t is not None:
            da = jnp.where(m_t[:, None], da, 0)
        return (_masked(m_t, da @ wh.T, gh), _masked(m_t, dc_prev, dc)), da

    (dh0, dc0), da = lax.scan(step, (jnp.zeros_like(h0), dc_last),
                              (_time_major(dhs), gates, _shifted(c0, cs), cs, mt), reverse=True)
    dx, dwx, dwh, db = _param_grads(x, wx, _shifted(h0, hs), da)
    return dx, dh0, dc0, dwx, dwh, db, None


_lstm_seq.defvjp(_lstm_seq_fwd, _lstm_bwd)


def lstm_manual(x, h0, c0, wx, wh, b, *, mask=None):
    """Manual twin of :func:`lstm`: hand-written BPTT (``custom_vjp`` over the sequence). Shapes as there."""
    (h0, c0), m = check_sequence("lstm", 4, x, {"h0": h0, "c0": c0}, wx, wh, b, mask)
    return _lstm_seq(*_promote(x, h0, c0, wx, wh, b), m)


@jax.custom_vjp
def _gru_seq(x, h0, wx, wh, b, m):
    return _gru_seq_fwd(x, h0, wx, wh, b, m)[0]


def _gru_seq_fwd(x, h0, wx, wh, b, m):
    hd = h0.shape[-1]

    def step(h, inp):
        xa_t, m_t = inp
        h_next, zrn = _gru_forward(xa_t, h, wh, hd)
        h_next = _keep(m_t, h_next, h)
        return h_next, (h_next, zrn)

    mt = _time_major(m)
    _, (hs, zrn) = lax.scan(step, h0, (_project(x, wx, b), mt))
    return _time_major(hs), (x, h0, wx, wh, hs, zrn, mt)


def _gru_bwd(res, dhs):
    """BPTT by hand: a reverse scan carrying dh that emits the pre-activation gradients dA_t = [da_z, da_r, da_n]; then one matmul per parameter.

    Residuals saved by the forward (time-major): the inputs x (N, T, D) (batch-major, as
    given), h0 (N, H), wx (D, 3H), wh (H, 3H); the states after each step hs
    (T, N, H) (carried through padding); the activations [z, r, n] (T, N, 3H);
    the mask (T, N) bool or None.  Per step, with gh = dhs_t + dh and h_prev
    the previous state: dz = gh·(h_prev - n), dn = gh·(1 - z), da_n = dn·(1-n²),
    d(r·h) = da_n·Unᵀ, dr = d(r·h)·h_prev, da_z = dz·z(1-z), da_r = dr·r(1-r);
    dh_prev = gh·z + d(r·h)·r + [da_z, da_r]·[Uz|Ur]ᵀ; at a padded step dA_t = 0
    and dh passes through.  Afterwards, with H_prev = [h0, h_1, ..., h_{T-1}]
    and dA (T, N, 3H): dx = dA·wxᵀ (N, T, D), dwx = Xᵀ·dA (D, 3H), db = Σ dA
    (3H,), dwh = [H_prevᵀ·dA_zr | (r·H_prev)ᵀ·dA_n] (H, 3H), dh0 = the final
    carry; the mask gets None.
    """
    x, h0, wx, wh, hs, zrn, mt = res
    hd = h0.shape[-1]
    h_prev = _shifted(h0, hs)

    def step(dh, inp):
        dh_t, hp_t, zrn_t, m_t = inp
        gh = dh_t + dh
        da, dh_prev = _gru_delta(gh, hp_t, zrn_t, wh, hd)
        if m_t is not None:
            da = jnp.where(m_t[:, None], da, 0)
        return _masked(m_t, dh_prev, gh), da

    dh0, da = lax.scan(step, jnp.zeros_like(h0), (_time_major(dhs), h_prev, zrn, mt), reverse=True)
    dx, dwx, _, db = _param_grads(x, wx, None, da)
    return dx, dh0, dwx, _gru_dwh(h_prev, zrn, da, hd), db, None


_gru_seq.defvjp(_gru_seq_fwd, _gru_bwd)


def gru_manual(x, h0, wx, wh, b, *, mask=None):
    """Manual twin of :func:`gru`: hand-written BPTT (``custom_vjp`` over the sequence). Shapes as there."""
    (h0,), m = check_sequence("gru", 3, x, {"h0": h0}, wx, wh, b, mask)
    return _gru_seq(*_promote(x, h0, wx, wh, b), m)


# ----------------------------------------------------------------------------------- NumPy oracles

def _np_sigmoid(a):
    return 1.0 / (1.0 + np.exp(-a))


def _np(a):
    return None if a is None else np.asarray(a, np.float64)


def _np_mask(mask, n, t):
    return np.ones((n, t), bool) if mask is None else np.asarray(mask) != 0


def _np_rnn_cell(x, h, wx, wh, b):
    """One example: x (D,), h (H,) -> (H,)."""
    return np.tanh(x @ wx + h @ wh + b)


def _np_lstm_cell(x, h, c, wx, wh, b):
    hd = h.shape[0]
    a = x @ wx + h @ wh + b
    i, f, o = _np_sigmoid(a[:hd]), _np_sigmoid(a[hd:2 * hd]), _np_sigmoid(a[2 * hd:3 * hd])
    g = np.tanh(a[3 * hd:])
    c_next = f * c + i * g
    return o * np.tanh(c_next), c_next


def _np_gru_cell(x, h, wx, wh, b):
    hd = h.shape[0]
    wz, wr, wn = wx[:, :hd], wx[:, hd:2 * hd], wx[:, 2 * hd:]
    uz, ur, un = wh[:, :hd], wh[:, hd:2 * hd], wh[:, 2 * hd:]
    bz, br, bn = b[:hd], b[hd:2 * hd], b[2 * hd:]
    z = _np_sigmoid(x @ wz + h @ uz + bz)
    r = _np_sigmoid(x @ wr + h @ ur + br)
    n = np.tanh(x @ wn + (r * h) @ un + bn)
    return (1 - z) * n + z * h


def _rnn_step_oracle(x, h, wx, wh, b):
    x, h, wx, wh, b = map(_np, (x, h, wx, wh, b))
    return np.stack([_np_rnn_cell(x[n], h[n], wx, wh, b) for n in range(x.shape[0])])


def _lstm_step_oracle(x, h, c, wx, wh, b):
    x, h, c, wx, wh, b = map(_np, (x, h, c, wx, wh, b))
    out = [_np_lstm_cell(x[n], h[n], c[n], wx, wh, b) for n in range(x.shape[0])]
    return np.stack([o[0] for o in out]), np.stack([o[1] for o in out])


def _gru_step_oracle(x, h, wx, wh, b):
    x, h, wx, wh, b = map(_np, (x, h, wx, wh, b))
    return np.stack([_np_gru_cell(x[n], h[n], wx, wh, b) for n in range(x.shape[0])])


def _np_sequence(cell, x, states, wx, wh, b, mask):
    """Loop over examples and time steps; a masked-out step keeps every state. Returns (hs, states)."""
    x, wx, wh, b = map(_np, (x, wx, wh, b))
    n_ex, t_len, _ = x.shape
    hd = wh.shape[0]
    states = [np.zeros((n_ex, hd)) if s is None else _np(s).copy() for s in states]
    m = _np_mask(mask, n_ex, t_len)
    hs = np.zeros((n_ex, t_len, hd))
    for n in range(n_ex):
        for t in range(t_len):
            if m[n, t]:
                new = cell(x[n, t], *[s[n] for s in states], wx, wh, b)
                new = new if isinstance(new, tuple) else (new,)
                for s, v in zip(states, new):
                    s[n] = v
            hs[n, t] = states[0][n]
    return hs, states


def _rnn_oracle(x, h0, wx, wh, b, *, mask=None):
    return _np_sequence(_np_rnn_cell, x, [h0], wx, wh, b, mask)[0]


def _lstm_oracle(x, h0, c0, wx, wh, b, *, mask=None):
    hs, (_, c) = _np_sequence(_np_lstm_cell, x, [h0, c0], wx, wh, b, mask)
    return hs, c


def _gru_oracle(x, h0, wx, wh, b, *, mask=None):
    return _np_sequence(_np_gru_cell, x, [h0], wx, wh, b, mask)[0]


def _np_args(seed, k, n, t, d, hd, states=1, given=True, step=False):
    """Fixed float64 inputs: x (N, D) or (N, T, D), the states (N, H) (or None), wx, wh, b."""
    r = np.random.default_rng(seed)
    x = r.standard_normal((n, d) if step else (n, t, d))
    st = tuple(0.5 * r.standard_normal((n, hd)) if given else None for _ in range(states))
    return (x,) + st + (r.standard_normal((d, k * hd)) / np.sqrt(d), r.standard_normal((hd, k * hd)) / np.sqrt(hd),
                        0.5 * r.standard_normal(k * hd))


def _oracle_cases(op, k, states, step):
    def build():
        if step:
            return (oracle_case("x=3x4 h=5", *_np_args(1, k, 3, 1, 4, 5, states, step=True)),
                    oracle_case("x=1x2 h=3", *_np_args(2, k, 1, 1, 2, 3, states, step=True)))
        return (oracle_case("x=3x4x2 h=3", *_np_args(3, k, 3, 4, 2, 3, states)),
                oracle_case("x=2x3x4 h=2 h0=None", *_np_args(4, k, 2, 3, 4, 2, states, given=False)),
                oracle_case("x=3x4x3 h=4 mask", *_np_args(5, k, 3, 4, 3, 4, states),
                            mask=np.array([[1, 1, 0, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)),
                oracle_case("x=1x1x3 h=2", *_np_args(6, k, 1, 1, 3, 2, states)))
    return build


# -------------------------------------------------------------------------------------- registration

def _sampler(k, states, step=False):
    """``sample(key, dims, dtype)``: dims ``x`` ((N, D) or (N, T, D)), ``h`` (H) and ``h0``
    (False: the initial states are None).  Weights scaled by 1/sqrt(fan-in)."""
    def sample(key, d, dt):
        ks = S.keys(key, 6)
        xs, hd = tuple(d["x"]), d["h"]
        n, dim = xs[0], xs[-1]
        x = S.normal(ks[0], xs, dt)
        given = step or d.get("h0", True)
        st = tuple(0.5 * S.normal(ks[1 + i], (n, hd), dt) if given else None for i in range(states))
        wx = S.normal(ks[3], (dim, k * hd), dt) / float(np.sqrt(dim))
        wh = S.normal(ks[4], (hd, k * hd), dt) / float(np.sqrt(hd))
        return (x,) + st + (wx, wh, 0.5 * S.normal(ks[5], (k * hd,), dt))
    return sample


def _hs_and_c(result):
    """The LSTM's two outputs as one differentiable vector: hs (or h) flattened, then c."""
    h, c = result
    return jnp.concatenate([jnp.ravel(h), jnp.ravel(c)])


_STEP_CASES = (case({"x": (3, 5), "h": 4}), case({"x": (1, 2), "h": 3}), case({"x": (2, 4), "h": 4}))
_SEQ_CASES = (
    case({"x": (3, 4, 5), "h": 3}),
    case({"x": (1, 1, 3), "h": 2}),
    case({"x": (2, 3, 4), "h": 4, "h0": False}),
    case({"x": (3, 4, 2), "h": 3}, mask=((1, 1, 0, 0), (1, 0, 0, 0), (1, 1, 1, 1))),
    case({"x": (2, 3, 3), "h": 2, "h0": False}, mask=((1, 1, 1), (1, 0, 0))),
)
_SMOOTH = "smooth everywhere (sigmoid and tanh only); float32 saturation of sigmoid/tanh: the float32 pass at +-1e2, +-1e4"
_MASK_NOTE = "; masks are keywords (0/1 tuples), never differentiated"

for _name, _ref, _man, _k, _st, _oracle in (
        ("rnn_step", rnn_step, "rnn_step_manual", 1, 1, _rnn_step_oracle),
        ("lstm_step", lstm_step, "lstm_step_manual", 4, 2, _lstm_step_oracle),
        ("gru_step", gru_step, "gru_step_manual", 3, 1, _gru_step_oracle)):
    register(OpSpec(_name, _ref, globals()[_man], _sampler(_k, _st, step=True), _STEP_CASES,
                    backward=globals().get(f"_{_name}_bwd", ()), note=_SMOOTH,
                    output=_hs_and_c if _name == "lstm_step" else None,
                    oracle=_oracle, oracle_cases=_oracle_cases(_name, _k, _st, True)))

for _name, _ref, _man, _k, _st, _oracle in (
        ("rnn", rnn, "rnn_manual", 1, 1, _rnn_oracle),
        ("lstm", lstm, "lstm_manual", 4, 2, _lstm_oracle),
        ("gru", gru, "gru_manual", 3, 1, _gru_oracle)):
    register(OpSpec(_name, _ref, globals()[_man], _sampler(_k, _st), _SEQ_CASES,
                    backward=globals().get(f"_{_name}_bwd", ()), note=_SMOOTH + _MASK_NOTE,
                    output=_hs_and_c if _name == "lstm" else None,
                    oracle=_oracle, oracle_cases=_oracle_cases(_name, _k, _st, False)))
