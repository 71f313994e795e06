"""Attention ops: scaled dot-product attention (blockwise manual path) and patch embedding.

``scaled_dot_product_attention(q, k, v, *, mask, causal, dropout_rate, key, block_size)``
-----------------------------------------------------------------------------------------

q (..., Tq, dh), k (..., Tk, dh), v (..., Tk, dv): any number of leading
(batch, head) axes, the same for all three.  Returns (..., Tq, dv)::

    S = q k^T / sqrt(dh)                         (..., Tq, Tk)
    S[i, j] = -inf where mask[i, j] is False, and where j > i if causal
    P = softmax(S) over the keys                 (row-wise)
    P~ = P * keep / (1 - dropout_rate)           (dropout after the softmax, the course's order)
    out = P~ v

mask: broadcastable to (..., Tq, Tk), True = the query may attend to the key
(a bool array, or nested tuples/lists of bools or 0/1 numbers).  causal: key j
is visible to query i only when j <= i (top-left aligned when Tq != Tk, as
``jax.nn.dot_product_attention(is_causal=True)`` and flax's ``make_causal_mask``).
dropout_rate: the probability of DROPPING an attention weight (inverted
scaling 1 / (1 - rate)); ``key`` is required when it is > 0 and ignored when
it is 0.  Neither mask nor key is differentiated.

**Rows where every key is masked** (a padding query, or a mask row of False)
have no softmax: both paths return 0 for that output row, and its gradients
(to q's row, and its contributions to dk and dv) are 0.  Never NaN.

**The dropout mask** is a pure function of the key and the weight's position:
the flag of weight (n, i, j) (n the flattened leading index, i the query, j
the key) is ``hash(seed, n * Tq + i, j) >= round(rate * 2**32)``, with ``seed =
jax.random.bits(key, (2,), uint32)`` and ``hash`` built from MurmurHash3's
32-bit finaliser (:func:`dropout_keep`).  The reference builds all Tk columns at
once, the manual path the columns of one key block at a time, with the same
helper, so the two paths drop bit-identical weights whatever ``block_size`` is,
in float32 and float64 alike.  (A counter hash rather than ``jax.random`` per
block: XLA's CPU compiler takes seconds per threefry kernel, and every program
holding the op, reference or manual, forward or backward, would pay it.)

Reference path: the formula above in ``jax.numpy`` (its softmax guarded for
all-masked rows), differentiated by autodiff; it materialises the (Tq, Tk)
scores.  Manual path (:func:`scaled_dot_product_attention_manual`): a
blockwise forward over key blocks of ``block_size`` with an online softmax, and
a hand backward that recomputes the weights block by block; neither pass
holds a (Tq, Tk) array, so memory grows as Tq * block_size, not Tq * Tk (the
derivation: :func:`_scaled_dot_product_attention_bwd`; numbers:
docs/attention.md).

``patch_embed(x, w, b, *, patch)``
----------------------------------

Images NHWC (N, H, W, C) cut into non-overlapping p x p patches (p divides H
and W), each flattened in (row, column, channel) order to p*p*C values, in
row-major patch order, then projected: (N, H/p * W/p, p*p*C) @ w (p*p*C, D) + b
(D,) -> (N, H/p * W/p, D).  The same as ``conv2d(x, w.reshape(p, p, C, D),
stride=p)`` flattened over the output positions.
"""
from __future__ import annotations

import functools
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnet._checks import check_number, check_positive_int
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register

DEFAULT_BLOCK_SIZE = 128
"""The manual path's key-block length.  On 2 CPU cores at T = 1024 (8 heads of 64, batch 8) blocks
of 64, 128 and 256 timed the same within the machine's noise and 512 slower; 128 keeps the
(Tq, block) tiles small (docs/attention.md)."""


# ------------------------------------------------------------------------------------------ checks

def _shape(a):
    return tuple(getattr(a, "shape", ()))


def _is_key(key) -> bool:
    """A typed PRNG key (shape ()) or a raw uint32 key (shape (2,))."""
    dtype = getattr(key, "dtype", None)
    if dtype is None:
        return False
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key.ndim == 0
    return dtype == np.uint32 and _shape(key) == (2,)


def _check_qkv(op, q, k, v):
    for name, a in (("q", q), ("k", k), ("v", v)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise ValueError(f"{op}: `{name}` must be an array (..., T, d), got {type(a).__name__}")
        if not jnp.issubdtype(a.dtype, jnp.floating):
            raise ValueError(f"{op}: `{name}` must be floating point, got dtype {a.dtype} (shape {_shape(a)})")
    if q.ndim < 2:
        raise ValueError(f"{op}: `q` must have rank >= 2 (..., Tq, dh), got shape {_shape(q)}")
    if k.ndim != q.ndim or v.ndim != q.ndim:
        raise ValueError(f"{op}: `q`, `k`, `v` must have the same rank (..., T, d), got shapes "
                         f"{_shape(q)}, {_shape(k)}, {_shape(v)}")
    if q.shape[:-2] != k.shape[:-2] or q.shape[:-2] != v.shape[:-2]:
        raise ValueError(f"{op}: `q`, `k`, `v` must have the same leading (batch, head) axes, got shapes "
                         f"{_shape(q)}, {_shape(k)}, {_shape(v)}")
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"{op}: `q` {_shape(q)} and `k` {_shape(k)} must have the same head size dh "
                         f"(last axis)")
    if k.shape[-2] != v.shape[-2]:
        raise ValueError(f"{op}: `k` {_shape(k)} and `v` {_shape(v)} must have the same number of keys Tk "
                         f"(second to last axis)")
    if q.shape[-1] == 0 or k.shape[-2] == 0:
        raise ValueError(f"{op}: need dh >= 1 and at least one key, got `q` {_shape(q)} and `k` {_shape(k)}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"{op}: `q`, `k`, `v` must have one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")


def _check_mask(op, mask, q, k):
    """None, or the mask as a bool array of rank q.ndim that broadcasts to (..., Tq, Tk)."""
    if mask is None:
        return None
    if isinstance(mask, (list, tuple)):
        arr = np.asarray(mask)
        if arr.dtype != bool and not np.issubdtype(arr.dtype, np.integer):
            raise ValueError(f"{op}: `mask` given as a sequence must hold bools or 0/1, got dtype {arr.dtype}")
        mask = arr != 0
    if not hasattr(mask, "shape") or not hasattr(mask, "dtype"):
        raise ValueError(f"{op}: `mask` must be a bool array broadcastable to (..., Tq, Tk), "
                         f"got {type(mask).__name__}")
    if mask.dtype != bool:
        raise ValueError(f"{op}: `mask` must be bool (True = may attend), got dtype {mask.dtype} "
                         f"with shape {_shape(mask)}")
    target = q.shape[:-1] + (k.shape[-2],)
    ms = _shape(mask)
    if len(ms) > len(target) or any(m not in (1, t) for m, t in zip(ms[::-1], target[::-1])):
        raise ValueError(f"{op}: `mask` of shape {ms} does not broadcast to (..., Tq, Tk) = {target} "
                         f"for `q` {_shape(q)} and `k` {_shape(k)}")
    mask = lax.stop_gradient(jnp.asarray(mask))
    return jnp.reshape(mask, (1,) * (len(target) - len(ms)) + ms)


def check_attention(op, q, k, v, mask, causal, dropout_rate, key, block_size):
    """Validate a call; returns (mask as bool (rank of q) or None, causal, rate, block_size)."""
    _check_qkv(op, q, k, v)
    mask = _check_mask(op, mask, q, k)
    if not isinstance(causal, (bool, np.bool_)):
        raise ValueError(f"{op}: `causal` must be True or False, got {causal!r}")
    rate = check_number(op, "dropout_rate", dropout_rate, low=0.0, high=1.0, high_open=True,
                        what=" is the probability of DROPPING an attention weight and")
    block = check_positive_int(op, "block_size", block_size)
    if rate > 0 and key is None:
        raise ValueError(f"{op}: `dropout_rate`={rate:g} needs an explicit PRNG `key` (q {_shape(q)})")
    if rate > 0 and not _is_key(key):
        raise ValueError(f"{op}: `key` must be a jax.random key (typed, shape (), or raw uint32 (2,)), "
                         f"got {type(key).__name__} with shape {_shape(key)}")
    return mask, bool(causal), rate, block


# ------------------------------------------------------------------------------------ shared pieces

_GOLDEN = 0x9E3779B9


def _fmix32(x):
    """MurmurHash3's 32-bit finaliser: a bijection of uint32 with full avalanche."""
    x = x ^ (x >> 16)
    x = x * np.uint32(0x85EBCA6B)
    x = x ^ (x >> 13)
    x = x * np.uint32(0xC2B2AE35)
    return x ^ (x >> 16)


def dropout_seed(key):
    """The two uint32 words the dropout flags are hashed with: ``jax.random.bits(key, (2,), uint32)``."""
    return jax.random.bits(key, (2,), jnp.uint32)


def _threshold(rate) -> np.uint32:
    return np.uint32(min(int(round(rate * 2.0 ** 32)), 2 ** 32 - 1))


def dropout_keep(seed, cols, lead, tq, rate):
    """Keep flags of the key positions ``cols`` (an int array (B,)): bool (*lead, tq, B).

    seed: :func:`dropout_seed` of the key.  The flag of weight (n, i, j), n the flattened
    leading index, is ``h >= round(rate * 2**32)`` with ``a = fmix32((n * tq + i) ^ seed[0])``,
    ``b = fmix32(j * 0x9E3779B9 + seed[1])`` and ``h = fmix32(a ^ b)``: it depends on the seed
    and the position only, so the reference (all columns) and the manual path (one key block)
    agree bit for bit, and a weight is kept with probability 1 - rate (to 2**-32).
    """
    n = int(np.prod(lead)) if len(lead) else 1
    rows = jnp.arange(n * tq, dtype=jnp.uint32).reshape(tuple(lead) + (tq, 1))
    a = _fmix32(rows ^ seed[0])
    b = _fmix32(jnp.asarray(cols).astype(jnp.uint32) * np.uint32(_GOLDEN) + seed[1])
    return _fmix32(a ^ b) >= _threshold(rate)


def _np_dropout_keep(seed, lead, tq, tk, rate):
    """:func:`dropout_keep` of all Tk columns in NumPy (the oracle's flags): bool (*lead, tq, tk)."""
    def fmix(x):
        x = x ^ (x >> np.uint32(16))
        x = x * np.uint32(0x85EBCA6B)
        x = x ^ (x >> np.uint32(13))
        x = x * np.uint32(0xC2B2AE35)
        return x ^ (x >> np.uint32(16))
    seed = np.asarray(seed, np.uint32)
    n = int(np.prod(lead)) if len(lead) else 1
    with np.errstate(over="ignore"):
        a = fmix(np.arange(n * tq, dtype=np.uint32).reshape(tuple(lead) + (tq, 1)) ^ seed[0])
        b = fmix(np.arange(tk, dtype=np.uint32) * np.uint32(_GOLDEN) + seed[1])
        return fmix(a ^ b) >= _threshold(rate)


def _scores(q, k, scale):
    """q (..., Tq, dh) k (..., B, dh) -> q k^T * scale (..., Tq, B); one expression for both paths."""
    return jnp.einsum("...qd,...kd->...qk", q, k) * scale


def _causal(rows, cols):
    """(Tq, B) bool: key col visible to query row (col <= row)."""
    return cols[None, :] <= rows[:, None]


# --------------------------------------------------------------------------------------- reference

def scaled_dot_product_attention(q, k, v, *, mask=None, causal=False, dropout_rate=0.0, key=None,
                                 block_size=DEFAULT_BLOCK_SIZE):
    """``softmax(q k^T / sqrt(dh) + masks) v``, dropout on the weights; the plain formula.

    q (..., Tq, dh), k (..., Tk, dh), v (..., Tk, dv) -> (..., Tq, dv).  mask: broadcastable
    to (..., Tq, Tk), True = may attend.  causal: keys j <= i only.  dropout_rate: probability
    of dropping a weight (after the softmax; kept ones scaled by 1 / (1 - rate)); key:
    required when dropout_rate > 0.  block_size: the manual path's key block (checked here,
    not used: the reference materialises the (Tq, Tk) scores).  A row with every key masked
    gives 0 (and zero gradients).  Module docstring for the details.
    """
    mask, causal, rate, _ = check_attention("scaled_dot_product_attention", q, k, v, mask, causal,
                                            dropout_rate, key, block_size)
    lead, tq, dh = q.shape[:-2], q.shape[-2], q.shape[-1]
    tk = k.shape[-2]
    s = _scores(q, k, 1.0 / math.sqrt(dh))
    allowed = mask
    if causal:
        c = _causal(jnp.arange(tq), jnp.arange(tk))
        allowed = c if allowed is None else allowed & c
    visible = None
    if allowed is not None:
        visible = jnp.any(allowed, axis=-1, keepdims=True)    # False: a row with every key masked
        s = jnp.where(allowed, s, -jnp.inf)
        s = jnp.where(visible, s, 0)                           # ... made finite, its weights zeroed below
    p = jax.nn.softmax(s, axis=-1)
    if visible is not None:
        p = jnp.where(visible, p, 0)                           # out = 0 and zero gradients, no NaN
    if rate > 0:
        keep = dropout_keep(dropout_seed(key), jnp.arange(tk), lead, tq, rate)
        p = jnp.where(keep, p * (1.0 / (1.0 - rate)), 0)
    return jnp.einsum("...qk,...kd->...qd", p, v)


# ------------------------------------------------------------------------------------------ manual

def _blocks(a, nb, block, axis_from_end):
    """Split axis ``-axis_from_end`` of ``a`` (padded with zeros/False to nb * block) into nb
    blocks of ``block`` and move the block index to the front: (nb, ..., block, ...)."""
    ax = a.ndim - axis_from_end
    pad = nb * block - a.shape[ax]
    if pad:
        a = jnp.pad(a, [(0, pad if i == ax else 0) for i in range(a.ndim)])
    a = jnp.reshape(a, a.shape[:ax] + (nb, block) + a.shape[ax + 1:])
    return jnp.moveaxis(a, ax, 0)


def _unblock(a, n):
    """Inverse of :func:`_blocks` for k- and v-shaped stacks (nb, ..., block, d): (..., n, d)."""
    a = jnp.moveaxis(a, 0, -3)
    a = jnp.reshape(a, a.shape[:-3] + (a.shape[-3] * a.shape[-2], a.shape[-1]))
    return lax.slice_in_dim(a, 0, n, axis=a.ndim - 2)


def _plan(q, k, mask, causal, block):
    """The static layout shared by the forward and the backward: (block, nb, padded, mask blocks)."""
    tk = k.shape[-2]
    b = min(block, tk)
    nb = -(-tk // b)
    mask_blocks = None
    if mask is not None and mask.shape[-1] != 1:
        mask_blocks = _blocks(mask, nb, b, 1)              # (nb, ..., Tq or 1, b)
    return b, nb, nb * b != tk, mask_blocks


def _block_allowed(j, b, tq, tk, padded, mask, mask_j, causal):
    """The key block j's (..., Tq, b) bool of visible (query, key) pairs, or None if all are."""
    cols = j * b + jnp.arange(b)
    allowed = None
    if mask is not None:
        allowed = mask if mask_j is None else mask_j           # a mask with Tk = 1 broadcasts as is
    if causal:
        c = _causal(jnp.arange(tq), cols)
        allowed = c if allowed is None else allowed & c
    if padded:
        valid = (cols < tk)[None, :]
        allowed = valid if allowed is None else allowed & valid
    return allowed, cols


def _attention_forward(q, k, v, mask, key, causal, rate, block):
    """Blockwise forward: (out, m, inv_l) with m the row maxima (0 for all-masked rows) and
    inv_l = 1 / (row sums of exp(S - m)) (0 for all-masked rows)."""
    lead, tq, dh = q.shape[:-2], q.shape[-2], q.shape[-1]
    tk, dv = k.shape[-2], v.shape[-1]
    scale = 1.0 / math.sqrt(dh)
    b, nb, padded, mask_blocks = _plan(q, k, mask, causal, block)
    kb, vb = _blocks(k, nb, b, 2), _blocks(v, nb, b, 2)
    inv_keep = 1.0 / (1.0 - rate) if rate > 0 else 1.0
    seed = dropout_seed(key) if rate > 0 else None

    def step(carry, xs):
        m, l, acc = carry
        j, kj, vj, mask_j = xs
        s = _scores(q, kj, scale)
        allowed, cols = _block_allowed(j, b, tq, tk, padded, mask, mask_j, causal)
        if allowed is not None:
            s = jnp.where(allowed, s, -jnp.inf)
        m_new = jnp.maximum(m, jnp.max(s, axis=-1))
        m_safe = jnp.where(m_new == -jnp.inf, 0, m_new)        # nothing visible yet in this row
        p = jnp.exp(s - m_safe[..., None])
        alpha = jnp.exp(m - m_safe)                            # rescales the old sums; 0 when m = -inf
        l = alpha * l + jnp.sum(p, axis=-1)
        if rate > 0:
            p = jnp.where(dropout_keep(seed, cols, lead, tq, rate), p * inv_keep, 0)
        acc = alpha[..., None] * acc + jnp.einsum("...qk,...kd->...qd", p, vj)
        return (m_new, l, acc), None

    init = (jnp.full(lead + (tq,), -jnp.inf, q.dtype), jnp.zeros(lead + (tq,), q.dtype),
            jnp.zeros(lead + (tq, dv), q.dtype))
    (m, l, acc), _ = lax.scan(step, init, (jnp.arange(nb), kb, vb, mask_blocks))
    inv_l = jnp.where(l > 0, 1 / jnp.where(l > 0, l, 1), 0)
    m = jnp.where(m == -jnp.inf, 0, m)
    return acc * inv_l[..., None], m, inv_l


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _attention(q, k, v, mask, key, causal, rate, block):
    return _attention_forward(q, k, v, mask, key, causal, rate, block)[0]


def _attention_fwd(q, k, v, mask, key, causal, rate, block):
    out, m, inv_l = _attention_forward(q, k, v, mask, key, causal, rate, block)
    return out, (q, k, v, mask, key, out, m, inv_l)


def _scaled_dot_product_attention_bwd(causal, rate, block, res, dout):
    """D = rowsum(dO ∘ O); dV = P~ᵀ dO, dP = Z ∘ (dO Vᵀ), dS = P ∘ (dP − D), dQ = dS K / √d, dK = dSᵀ Q / √d.

    Residuals: the inputs q (..., Tq, dh), k (..., Tk, dh), v (..., Tk, dv), the mask and
    key, the output O (..., Tq, dv) and the row statistics m (..., Tq) (the row maxima of S)
    and inv_l (..., Tq) (1 / the row sums of exp(S - m)); nothing of size Tq x Tk.  dout =
    dO (..., Tq, dv).  Returns dq, dk, dv (the shapes of q, k, v) and None for mask and key.

    Derivation.  With S = Q Kᵀ / √d (masked entries -inf), P = softmax(S) row-wise, the
    dropout scale Z = keep / (1 - rate) (Z = 1 without dropout), P~ = P ∘ Z and O = P~ V:

    - dV = P~ᵀ dO and dP~ = dO Vᵀ, so dP = Z ∘ dP~;
    - the softmax's Jacobian: dS_ij = P_ij (dP_ij − Σ_k P_ik dP_ik);
    - Σ_k P_ik dP_ik = Σ_k P~_ik (dO Vᵀ)_ik = Σ_c dO_ic (P~ V)_ic = rowsum(dO ∘ O)_i = D_i,
      so the row sum needs O, not the (Tq, Tk) matrix P, and holds with dropout too;
    - S = Q Kᵀ / √d gives dQ = dS K / √d and dK = dSᵀ Q / √d.

    Where P_ij = 1 (a row with one visible key, or a saturated softmax) dS_ij is set to 0:
    dS_ij = P_ij Σ_(k≠j) P_ik (dP_ij − dP_ik) is bounded by (1 − P_ij) · 2 max |dP|, which is
    below one ulp when P_ij rounds to 1, and it is exactly 0 in the reference's autodiff,
    whereas dP_ij − D_i (two roundings of the same dot product) would leave round-off there.

    Per key block (lax.scan), the weights are recomputed from the saved statistics,
    P = exp(S − m) · inv_l (0 at masked entries and in all-masked rows, where inv_l = 0),
    the keep flags regenerated from the seed (:func:`dropout_keep`); dV and dK of the block
    are its outputs and dQ accumulates in the scan's carry.
    """
    q, k, v, mask, key, out, m, inv_l = res
    lead, tq, dh = q.shape[:-2], q.shape[-2], q.shape[-1]
    tk = k.shape[-2]
    scale = 1.0 / math.sqrt(dh)
    b, nb, padded, mask_blocks = _plan(q, k, mask, causal, block)
    kb, vb = _blocks(k, nb, b, 2), _blocks(v, nb, b, 2)
    d_row = jnp.sum(dout * out, axis=-1)[..., None]           # D (..., Tq, 1)
    m, inv_l = m[..., None], inv_l[..., None]
    inv_keep = 1.0 / (1.0 - rate) if rate > 0 else 1.0
    seed = dropout_seed(key) if rate > 0 else None

    def step(dq, xs):
        j, kj, vj, mask_j = xs
        s = _scores(q, kj, scale)
        allowed, cols = _block_allowed(j, b, tq, tk, padded, mask, mask_j, causal)
        if allowed is not None:
            s = jnp.where(allowed, s, -jnp.inf)
        p = jnp.exp(s - m) * inv_l                             # P of this block
        dp = jnp.einsum("...qd,...kd->...qk", dout, vj)        # dP~ = dO Vᵀ
        if rate > 0:
            z = jnp.where(dropout_keep(seed, cols, lead, tq, rate), inv_keep, 0).astype(p.dtype)
            pt, dp = p * z, dp * z                             # P~ and dP = Z ∘ dP~
        else:
            pt = p
        dvj = jnp.einsum("...qk,...qd->...kd", pt, dout)
        ds = jnp.where(p == 1, 0, p * (dp - d_row))           # P = 1: one visible key, dS = 0 exactly
        dq = dq + jnp.einsum("...qk,...kd->...qd", ds, kj) * scale
        dkj = jnp.einsum("...qk,...qd->...kd", ds, q) * scale
        return dq, (dkj, dvj)

    dq, (dk, dv) = lax.scan(step, jnp.zeros_like(q), (jnp.arange(nb), kb, vb, mask_blocks))
    return dq, _unblock(dk, tk), _unblock(dv, tk), None, None


_attention.defvjp(_attention_fwd, _scaled_dot_product_attention_bwd)


def scaled_dot_product_attention_manual(q, k, v, *, mask=None, causal=False, dropout_rate=0.0, key=None,
                                        block_size=DEFAULT_BLOCK_SIZE):
    """Manual twin of :func:`scaled_dot_product_attention`: blockwise, memory O(Tq * block_size).

    The forward scans over key blocks of ``block_size`` (the last one padded with masked
    keys) with an online softmax: per block, S_j = q k_jᵀ / √dh, the running row maximum
    m' = max(m, rowmax S_j), the running row sum l' = e^(m - m') l + rowsum e^(S_j - m'), and
    the output accumulator acc' = e^(m - m') acc + (e^(S_j - m') ∘ Z_j) v_j; at the end
    out = acc / l.  All queries of a block are processed at once (vectorised); only out, m
    and 1 / l are saved for the backward (:func:`_scaled_dot_product_attention_bwd`).
    """
    mask, causal, rate, block = check_attention("scaled_dot_product_attention", q, k, v, mask, causal,
                                                dropout_rate, key, block_size)
    return _attention(q, k, v, mask, key if rate > 0 else None, causal, rate, block)


def _sample_attention(key, d, dt):
    ks = S.keys(key, 3)
    lead, dh = d["x"][:-2], d["x"][-1]
    return (S.normal(ks[0], d["x"], dt), S.normal(ks[1], lead + (d["tk"], dh), dt),
            S.normal(ks[2], lead + (d["tk"], d["dv"]), dt))


def _scaled_dot_product_attention_oracle(q, k, v, *, mask=None, causal=False, dropout_rate=0.0, key=None,
                                         block_size=DEFAULT_BLOCK_SIZE):
    """NumPy oracle: loops over the leading index and the query; per query, the visible keys'
    scores, their softmax, dropout, and the weighted sum of v rows, float64.

    The dropout keep flags are the documented hash written again in NumPy
    (:func:`_np_dropout_keep`); only the seed, ``jax.random.bits(key, (2,), uint32)``, comes from
    JAX (NumPy cannot reproduce JAX's generator).  ``tests/test_attention_ops.py`` checks the
    flags' statistics.
    """
    q, k, v = (np.asarray(a, np.float64) for a in (q, k, v))
    lead, tq, dh = q.shape[:-2], q.shape[-2], q.shape[-1]
    tk = k.shape[-2]
    allowed = np.ones(lead + (tq, tk), bool)
    if mask is not None:
        allowed = allowed & np.broadcast_to(np.asarray(mask) != 0, allowed.shape)
    keep = None
    if dropout_rate > 0:
        keep = _np_dropout_keep(np.asarray(dropout_seed(key)), lead, tq, tk, dropout_rate)
    out = np.zeros(lead + (tq, v.shape[-1]))
    for idx in np.ndindex(*lead):
        for i in range(tq):
            visible = [j for j in range(tk) if allowed[idx + (i, j)] and (not causal or j <= i)]
            if not visible:
                continue                                      # every key masked: the row stays 0
            s = np.array([sum(q[idx + (i, c)] * k[idx + (j, c)] for c in range(dh)) / math.sqrt(dh)
                          for j in visible])
            w = np.exp(s - s.max())
            w = w / w.sum()
            for weight, j in zip(w, visible):
                if keep is not None:
                    weight = weight / (1.0 - dropout_rate) if keep[idx + (i, j)] else 0.0
                out[idx + (i,)] += weight * v[idx + (j,)]
    return out


def _attention_oracle_cases():
    rows = np.ones((5, 8), bool)
    rows[2] = False                                           # an all-masked query row
    rows[0, 5:] = False
    rows[4, :3] = False
    return O.drawn(
        "scaled_dot_product_attention",
        ("q=2x5x4 tk=7 dv=3 block=4", lambda r: (r.standard_normal((2, 5, 4)), r.standard_normal((2, 7, 4)),
                                                 r.standard_normal((2, 7, 3))), {"block_size": 4}),
        ("q=1x2x6x4 tk=9 causal key-padding block=4",
         lambda r: (r.standard_normal((1, 2, 6, 4)), r.standard_normal((1, 2, 9, 4)), r.standard_normal((1, 2, 9, 4))),
         {"causal": True, "mask": np.arange(9) < 7, "block_size": 4}),
        ("q=2x5x4 tk=8 mask 5x8 all-masked row block=4",
         lambda r: (r.standard_normal((2, 5, 4)), r.standard_normal((2, 8, 4)), r.standard_normal((2, 8, 2))),
         {"mask": rows, "block_size": 4}),
        ("q=2x6x4 tk=6 dv=3 dropout=0.3 causal block=4",
         lambda r: (r.standard_normal((2, 6, 4)), r.standard_normal((2, 6, 4)), r.standard_normal((2, 6, 3))),
         {"dropout_rate": 0.3, "key": np.array([0, 11], np.uint32), "causal": True, "block_size": 4}))


def _attention_extremes(args, case):
    """The float32 pass's extreme inputs (``OpSpec.extremes``): v and the logits on their own.

    - ``v scale=+-1e+02 / +-1e+04 / +-1e-04``: v times a factor bringing its largest entry to
      +-T (the magnitudes of ``jaxnet.gradcheck.extremes.SCALES``), q and k as sampled: the
      outputs and dv at extreme magnitudes, the weights as sampled;
    - ``logits=+-1e+02 / +-1e-04``: q and k times one factor (q also by the sign) so that the
      largest |score| is 1e2 (a softmax near saturation: exp would overflow float32 without
      the max subtraction) or 1e-4 (uniform weights), v as sampled;
    - ``scale=+-1e-04``: q, k and v times one factor, q's largest entry +-1e-4.

    Not here: logits of 1e4 (the generic rule's q, k, v all times 1e2 or more).  There a row's
    weights are 1 - e and e with e tiny, and dS = P * (dP - D) is the difference of two
    numbers of size |dP| that leaves about e |dP|: float32 round-off, 6e-8 |dP|, is a fraction
    6e-8 / e of it on any implementation (the reference's softmax backward subtracts the same
    way), and when every row is that saturated it is also that fraction of dq's and dk's
    scale, beyond the pass's 1e-4.  tests/test_attention_ops.py checks that regime against a
    float64 reference, relative to |dP| |k| instead.
    """
    q, k, v = args
    out = []
    for t in (1e2, 1e4, 1e-4):
        for sign in (1.0, -1.0):
            c = sign * t / float(np.max(np.abs(v)))
            out.append((f"v scale={sign * t:+.0e}", (q, k, v * c)))
    peak = float(np.max(np.abs(np.einsum("...qd,...kd->...qk", q.astype(np.float64), k) / math.sqrt(q.shape[-1]))))
    for t in (1e2, 1e-4):
        for sign in (1.0, -1.0):
            c = math.sqrt(t / peak)
            out.append((f"logits={sign * t:+.0e}", (q * (sign * c), k * c, v)))
    for sign in (1.0, -1.0):
        c = sign * 1e-4 / float(np.max(np.abs(q)))
        out.append((f"scale={sign * 1e-4:+.0e}", (q * c, k * c, v * c)))
    return out


_ROWS_MASK = ((1, 1, 1, 1, 1, 0, 0, 0), (1, 1, 1, 1, 1, 1, 1, 1), (0, 0, 0, 0, 0, 0, 0, 0), (0, 1, 1, 1, 1, 1, 1, 1),
              (0, 0, 0, 1, 1, 1, 1, 1))

register(OpSpec(
    "scaled_dot_product_attention", scaled_dot_product_attention, scaled_dot_product_attention_manual,
    _sample_attention,
    (case({"x": (2, 7, 4), "tk": 7, "dv": 3}, block_size=4),
     case({"x": (1, 2, 6, 4), "tk": 9, "dv": 4}, causal=True, mask=(1, 1, 1, 1, 1, 1, 1, 0, 0), block_size=4),
     case({"x": (2, 5, 4), "tk": 8, "dv": 4}, mask=_ROWS_MASK, block_size=4),
     case({"x": (2, 6, 4), "tk": 6, "dv": 3}, causal=True, dropout_rate=0.3, key=np.array([0, 7], np.uint32),
          block_size=4)),
    backward=_scaled_dot_product_attention_bwd, extremes=_attention_extremes,
    note="mask (0/1 tuples), causal, dropout key: keywords, never differentiated; block_size=4 runs 2-3 key "
         "blocks, the last padded when Tk is not a multiple; the third case has an all-masked query row (output 0)",
    oracle=_scaled_dot_product_attention_oracle, oracle_cases=_attention_oracle_cases))


# ------------------------------------------------------------------------------------- patch embed

def check_patch_embed(op, x, w, b, patch) -> int:
    """Validate a call; returns ``patch`` as a Python int."""
    patch = check_positive_int(op, "patch", patch)
    for name, a in (("x", x), ("w", w)):
        if not hasattr(a, "shape") or not hasattr(a, "dtype"):
            raise ValueError(f"{op}: `{name}` must be an array, got {type(a).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{op}: `x` must have rank 4 (N, H, W, C), got shape {_shape(x)}")
    n, h, wd, c = x.shape
    if h % patch or wd % patch:
        raise ValueError(f"{op}: `patch`={patch} must divide H and W of `x` {_shape(x)} "
                         f"(H % patch = {h % patch}, W % patch = {wd % patch})")
    if w.ndim != 2 or w.shape[0] != patch * patch * c:
        raise ValueError(f"{op}: `w` must have shape (patch*patch*C, D) = ({patch * patch * c}, D) for patch "
                         f"{patch} and `x` {_shape(x)}, got {_shape(w)}")
    if b is not None and _shape(b) != (w.shape[1],):
        raise ValueError(f"{op}: `b` must have shape ({w.shape[1]},) to match `w` {_shape(w)}, got {_shape(b)}")
    return patch


def patchify(x, patch):
    """(N, H, W, C) -> (N, H/p * W/p, p*p*C): row-major patches, each in (row, column, channel) order."""
    n, h, w, c = x.shape
    x = jnp.reshape(x, (n, h // patch, patch, w // patch, patch, c))
    return jnp.reshape(jnp.transpose(x, (0, 1, 3, 2, 4, 5)), (n, (h // patch) * (w // patch), patch * patch * c))


def unpatchify(t, patch, shape):
    """Inverse of :func:`patchify`: (N, H/p * W/p, p*p*C) -> ``shape`` (N, H, W, C)."""
    n, h, w, c = shape
    t = jnp.reshape(t, (n, h // patch, w // patch, patch, patch, c))
    return jnp.reshape(jnp.transpose(t, (0, 1, 3, 2, 4, 5)), shape)


def patch_embed(x, w, b=None, *, patch):
    """Non-overlapping p x p patches of NHWC images, each flattened and projected.

    x (N, H, W, C), p dividing H and W; w (p*p*C, D); b (D,) or None.  Returns
    (N, H/p * W/p, D): tokens in row-major patch order, ``patchify(x) @ w + b``.
    """
    patch = check_patch_embed("patch_embed", x, w, b, patch)
    y = jnp.einsum("nlk,kd->nld", patchify(x, patch), w)
    return y if b is None else y + b


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def _patch_embed(x, w, b, patch):
    return _patch_embed_fwd(x, w, b, patch)[0]


def _patch_embed_fwd(x, w, b, patch):
    t = patchify(x, patch)
    n, l, kk = t.shape
    y = jnp.reshape(jnp.reshape(t, (n * l, kk)) @ w, (n, l, w.shape[1]))
    return (y if b is None else y + b), (x.shape, t, w, b)


def _patch_embed_bwd(patch, res, dy):
    """dw = patchesᵀ dY, db = Σ_{n,l} dY, dx = unpatchify(dY wᵀ), on (N*L, .) reshapes.

    Residuals: x's shape, the patches (N, L, p*p*C) (x rearranged, L = H/p * W/p), w
    (p*p*C, D) and b (D,) or None.  dy: (N, L, D).  Returns dx (N, H, W, C), dw
    (p*p*C, D) and db (D,) (None when b is None).
    """
    shape, t, w, b = res
    n, l, kk = t.shape
    d2 = jnp.reshape(dy, (n * l, w.shape[1]))
    dw = jnp.reshape(t, (n * l, kk)).T @ d2
    dx = unpatchify(jnp.reshape(d2 @ w.T, (n, l, kk)), patch, shape)
    db = None if b is None else jnp.sum(d2, axis=0)
    return dx, dw, db


_patch_embed.defvjp(_patch_embed_fwd, _patch_embed_bwd)


def patch_embed_manual(x, w, b=None, *, patch):
    """Manual twin of :func:`patch_embed`. x (N, H, W, C); w (p*p*C, D); b (D,) or None."""
    patch = check_patch_embed("patch_embed", x, w, b, patch)
    return _patch_embed(x, w, b, patch)


def _sample_patch_embed(key, d, dt):
    ks = S.keys(key, 3)
    c, p = d["x"][3], d["p"]
    fan_in = p * p * c
    w = S.normal(ks[1], (fan_in, d["d"]), dt) / jnp.sqrt(fan_in)
    return (S.normal(ks[0], d["x"], dt), w, S.normal(ks[2], (d["d"],), dt) if d.get("bias", True) else None)


def _patch_embed_oracle(x, w, b=None, *, patch):
    """NumPy oracle: a loop over images and patch positions; each patch's pixels read in
    (row, column, channel) order into one vector, times w, plus b, float64."""
    n, h, wd, c = x.shape
    gh, gw = h // patch, wd // patch
    out = np.zeros((n, gh * gw, w.shape[1]))
    for i, r, s in itertools.product(range(n), range(gh), range(gw)):
        vec = [x[i, r * patch + a, s * patch + e, ch] for a in range(patch) for e in range(patch) for ch in range(c)]
        out[i, r * gw + s] = np.asarray(vec) @ w + (0.0 if b is None else b)
    return out


def _patch_embed_oracle_cases():
    return O.drawn(
        "patch_embed",
        ("x=2x4x4x3 patch=2 d=5", lambda r: (r.standard_normal((2, 4, 4, 3)), r.standard_normal((12, 5)),
                                             r.standard_normal(5)), {"patch": 2}),
        ("x=1x6x3x2 patch=3 d=4", lambda r: (r.standard_normal((1, 6, 3, 2)), r.standard_normal((18, 4)),
                                             r.standard_normal(4)), {"patch": 3}),
        ("x=2x2x4x1 patch=2 d=3 bias=None", lambda r: (r.standard_normal((2, 2, 4, 1)), r.standard_normal((4, 3)),
                                                       None), {"patch": 2}))


register(OpSpec("patch_embed", patch_embed, patch_embed_manual, _sample_patch_embed,
                (case({"x": (2, 4, 4, 3), "p": 2, "d": 5}, patch=2), case({"x": (1, 6, 4, 2), "p": 2, "d": 3}, patch=2),
                 case({"x": (2, 3, 6, 1), "p": 3, "d": 4, "bias": False}, patch=3)),
                backward=_patch_embed_bwd, note="tokens in row-major patch order, each patch in (row, column, channel) "
                                                "order: conv2d with a (p, p, C, D) kernel and stride p",
                oracle=_patch_embed_oracle, oracle_cases=_patch_embed_oracle_cases))
