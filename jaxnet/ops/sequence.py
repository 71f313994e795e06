"""Sequence ops: word embeddings, per-time-step affine and the masked temporal softmax loss.

Shapes follow the course's captioning assignment: N sequences of T steps,
a vocabulary of V words, D-dimensional embeddings or features, M outputs.

Hand gradients: the embedding scatter-adds dout into the rows of dw that the
indices picked (repeated indices accumulate); the temporal affine is the
affine layer on (N*T, D); the temporal softmax loss is
``mask * (p - onehot(y)) / N`` per position.

Indices and labels out of range, one rule with :mod:`jaxnet.ops.losses`:

* ``word_embedding``: an index outside [0, V) (negative ones included; JAX's
  gather would silently clamp it) gives a NaN output row (D,) at its position,
  on both paths, eagerly and under jit.  It has no row of ``w``, so it adds
  nothing to dw; the other positions are unaffected.
* ``temporal_softmax_cross_entropy``: a label outside [0, V) at a position the
  mask keeps gives a NaN loss and a NaN row (V,) of dscores at that position,
  on both paths.  Labels at masked-out positions are never read (padding may
  carry any id, e.g. -1).

A jitted function cannot raise on a value; run the computation under
:func:`jaxnet.ops.losses.checked` (``jax.experimental.checkify``) for an error
naming the op, the first bad index and its position.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import checkify

from jaxnet._checks import check_min_rank, check_rank
from jaxnet.ops import _sampling as S
from jaxnet.ops import linear as _linear, losses as _losses
from jaxnet.ops._registry import OpSpec, case, oracle_case, register


def _in_range(idx, v):
    return (idx >= 0) & (idx < v)


def _check_values(op, what, idx, ok, v, shape_note):
    """Under :func:`jaxnet.ops.losses.label_checks`: a checkify check that ``ok`` holds everywhere."""
    if _losses._LABEL_CHECKS.get():
        flat = jnp.reshape(ok, (-1,))
        first = jnp.argmin(flat)        # the first False (flat position)
        checkify.check(jnp.all(flat), f"{op}: {what} {{value}} at flat position {{pos}} is outside [0, {v}) "
                                      f"for {shape_note}",
                       value=jnp.reshape(idx, (-1,))[first], pos=first)


# ---------------------------------------------------------------------------------------- word embedding

def _check_embedding(op, idx, w):
    if not hasattr(idx, "dtype") or idx.dtype.kind not in "iu":
        raise ValueError(f"{op}: `idx` must be integer word indices, got dtype "
                         f"{getattr(idx, 'dtype', type(idx).__name__)} with shape {tuple(np.shape(idx))}")
    check_min_rank(op, "idx", idx, 1)
    check_rank(op, "w", w, 2, "(V, D)")
    ok = _in_range(idx, w.shape[0])
    _check_values(op, "index", idx, ok, w.shape[0], f"idx of shape {tuple(idx.shape)} and w of shape "
                                                      f"{tuple(w.shape)}")
    return ok


def word_embedding(idx, w):
    """``out[..., :] = w[idx[...], :]``: each word index replaced by its row of ``w``.

    idx: integer array of any shape of rank >= 1, usually (N, T), entries in
    [0, V).  w: (V, D) float.  Returns ``idx.shape + (D,)`` in the dtype of w.
    An index outside [0, V) gives a NaN output row and adds nothing to dw
    (module docstring; :func:`jaxnet.ops.losses.checked` for an error).
    """
    ok = _check_embedding("word_embedding", idx, w)
    rows = jnp.take(w, jnp.where(ok, idx, 0), axis=0)
    return jnp.where(ok[..., None], rows, jnp.nan)


@jax.custom_vjp
def _word_embedding(idx, w):
    return _word_embedding_fwd(idx, w)[0]


def _word_embedding_fwd(idx, w):
    ok = _in_range(idx, w.shape[0])
    safe = jnp.where(ok, idx, 0)
    out = jnp.where(ok[..., None], w[safe], jnp.nan)
    return out, (safe, ok, w.shape[0])


def _word_embedding_bwd(res, dout):
    """dw = scatter-add of dout into the rows the indices picked (repeats accumulate).

    Residuals: the indices with the out-of-range ones replaced by 0 (idx.shape,
    int), the in-range mask (idx.shape, bool) and V.  dout: idx.shape + (D,).
    Returns None for idx and dw (V, D): ``zeros.at[idx.reshape(-1)].add(dout
    reshaped to (-1, D))``, positions with an out-of-range index left out.
    """
    safe, ok, v = res
    d = dout.shape[-1]
    upd = jnp.where(ok[..., None], dout, 0).reshape(-1, d)
    dw = jnp.zeros((v, d), dout.dtype).at[safe.reshape(-1)].add(upd)
    return None, dw


_word_embedding.defvjp(_word_embedding_fwd, _word_embedding_bwd)


def word_embedding_manual(idx, w):
    """Manual twin of :func:`word_embedding`. idx: int, any shape; w (V, D). Returns idx.shape + (D,)."""
    _check_embedding("word_embedding", idx, w)
    return _word_embedding(idx, w)


def _sample_embedding(key, d, dt):
    k = S.keys(key, 2)
    v, dim = d["v"], d["d"]
    return S.randint(k[0], d["x"], 0, v), S.normal(k[1], (v, dim), dt)


def _word_embedding_oracle(idx, w):
    idx = np.asarray(idx)
    out = np.zeros(idx.shape + (w.shape[1],))
    for pos in np.ndindex(*idx.shape):
        out[pos] = w[idx[pos]]
    return out


def _word_embedding_oracle_cases():
    r = np.random.default_rng(11)
    return (oracle_case("idx=2x3 V=5 D=4", r.integers(0, 5, (2, 3)), r.standard_normal((5, 4))),
            oracle_case("idx=1x1 V=3 D=2", np.array([[2]]), r.standard_normal((3, 2))),
            oracle_case("idx=4 V=2 D=3 repeats", np.array([1, 0, 1, 1]), r.standard_normal((2, 3))))


register(OpSpec("word_embedding", word_embedding, word_embedding_manual, _sample_embedding,
                (case({"x": (2, 3), "v": 5, "d": 4}), case({"x": (1, 1), "v": 3, "d": 2}),
                 case({"x": (3, 4), "v": 2, "d": 3})),
                backward=_word_embedding_bwd,
                note="idx integer (not differentiated); V=2 with 12 positions exercises repeated indices",
                oracle=_word_embedding_oracle, oracle_cases=_word_embedding_oracle_cases))


# -------------------------------------------------------------------------------------- temporal affine

def _check_temporal_affine(op, x, w, b):
    check_rank(op, "x", x, 3, "(N, T, D)")
    check_rank(op, "w", w, 2, "(D, M)")
    if w.shape[0] != x.shape[2]:
        raise ValueError(f"{op}: `x` {tuple(x.shape)} has D={x.shape[2]} features per step "
                         f"but `w` {tuple(w.shape)} expects D={w.shape[0]}")
    if b is not None and tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"{op}: `b` must have shape ({w.shape[1]},) to match `w` {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")


def temporal_affine(x, w, b=None):
    """The same affine map at every time step: ``out[n, t] = x[n, t] @ w + b``.

    x: (N, T, D).  w: (D, M).  b: (M,) or None.  Returns (N, T, M).
    """
    _check_temporal_affine("temporal_affine", x, w, b)
    y = jnp.einsum("ntd,dm->ntm", x, w)
    return y if b is None else y + b


@jax.custom_vjp
def _temporal_affine(x, w, b):
    return _temporal_affine_fwd(x, w, b)[0]


def _temporal_affine_fwd(x, w, b):
    n, t, d = x.shape
    y = (jnp.reshape(x, (n * t, d)) @ w).reshape(n, t, w.shape[1])
    return (y if b is None else y + b), (x, w, b)


def _temporal_affine_bwd(res, dout):
    """dx = dout·Wᵀ, dW = xᵀ·dout, db = Σ_{n,t} dout, on x and dout reshaped to (N*T, ·).

    Residuals: the inputs x (N, T, D), w (D, M) and b (M,) or None.  dout:
    (N, T, M).  Returns dx (N, T, D), dw (D, M) and db (M,) (None when b is None).
    """
    x, w, b = res
    n, t, d = x.shape
    dx, dw, db = _linear._affine_bwd((jnp.reshape(x, (n * t, d)), w, b),
                                     jnp.reshape(dout, (n * t, w.shape[1])))
    return jnp.reshape(dx, x.shape), dw, db


_temporal_affine.defvjp(_temporal_affine_fwd, _temporal_affine_bwd)


def temporal_affine_manual(x, w, b=None):
    """Manual twin of :func:`temporal_affine`. x (N, T, D); w (D, M); b (M,) or None. Returns (N, T, M)."""
    _check_temporal_affine("temporal_affine", x, w, b)
    return _temporal_affine(x, w, b)


def _sample_temporal_affine(key, d, dt):
    k = S.keys(key, 3)
    x = S.normal(k[0], d["x"], dt)
    dim = x.shape[2]
    args = (x, S.normal(k[1], (dim, d["m"]), dt) / float(np.sqrt(dim)))
    return args + ((S.normal(k[2], (d["m"],), dt),) if d.get("bias", True) else (None,))


def _temporal_affine_oracle(x, w, b=None):
    n, t, _ = x.shape
    out = np.zeros((n, t, w.shape[1]))
    for i, j in itertools.product(range(n), range(t)):
        out[i, j] = x[i, j] @ w + (0.0 if b is None else b)
    return out


def _temporal_affine_oracle_cases():
    r = np.random.default_rng(12)
    return (oracle_case("x=2x3x4 m=5", r.standard_normal((2, 3, 4)), r.standard_normal((4, 5)),
                        r.standard_normal(5)),
            oracle_case("x=1x1x3 m=2", r.standard_normal((1, 1, 3)), r.standard_normal((3, 2)),
                        r.standard_normal(2)),
            oracle_case("x=2x2x2 m=3 bias=None", r.standard_normal((2, 2, 2)), r.standard_normal((2, 3)), None))


register(OpSpec("temporal_affine", temporal_affine, temporal_affine_manual, _sample_temporal_affine,
                (case({"x": (2, 3, 4), "m": 5}), case({"x": (1, 1, 3), "m": 2}),
                 case({"x": (3, 2, 2), "m": 3, "bias": False})),
                backward=_temporal_affine_bwd,
                oracle=_temporal_affine_oracle, oracle_cases=_temporal_affine_oracle_cases))


# ------------------------------------------------------------------------ temporal softmax cross-entropy

def _check_temporal_loss(op, scores, labels, mask):
    """Shapes and dtypes now; returns (mask as bool (N, T), in-range-or-masked (N, T) bool)."""
    check_rank(op, "scores", scores, 3, "(N, T, V)")
    if not hasattr(labels, "dtype") or labels.dtype.kind not in "iu":
        raise ValueError(f"{op}: `labels` must be integer word indices, got dtype "
                         f"{getattr(labels, 'dtype', type(labels).__name__)} with shape {tuple(np.shape(labels))}")
    check_rank(op, "labels", labels, 2, "(N, T)")
    if tuple(labels.shape) != tuple(scores.shape[:2]):
        raise ValueError(f"{op}: `labels` must have shape (N, T) = {tuple(scores.shape[:2])} to match `scores` "
                         f"{tuple(scores.shape)}, got {tuple(labels.shape)}")
    if mask is None:
        mask = jnp.ones(labels.shape, bool)
    else:
        if not hasattr(mask, "shape") or tuple(mask.shape) != tuple(labels.shape):
            raise ValueError(f"{op}: `mask` must have shape (N, T) = {tuple(labels.shape)} like `labels`, "
                             f"got {tuple(np.shape(mask))}")
        mask = jnp.asarray(mask) != 0
    v = scores.shape[2]
    ok = _in_range(labels, v) | ~mask
    _check_values(op, "label", labels, ok, v, f"scores of shape {tuple(scores.shape)} (masked-out positions "
                                              f"are not checked)")
    return mask, ok


def temporal_softmax_cross_entropy(scores, labels, mask=None):
    """Softmax cross-entropy summed over the kept time steps, divided by N.

    ``loss = (1/N) sum_{n,t} mask[n,t] * (-log softmax(scores[n,t])[labels[n,t]])``,
    numerically stable.  This is the course's convention (``temporal_softmax_loss``):
    the sum is divided by the batch size N, not by the number of kept tokens, so
    it differs from PyTorch's ``CrossEntropyLoss(ignore_index=...)`` (which
    averages over the non-ignored tokens) by the factor (kept tokens) / N.

    scores: (N, T, V) float.  labels: (N, T) int in [0, V).  mask: (N, T) bool
    or 0/1 numbers (nonzero keeps a position; never differentiated), or None
    to keep every position.  Returns a scalar.  A label outside [0, V) at a
    kept position gives a NaN loss and a NaN row of dscores there; labels at
    masked-out positions are ignored.
    """
    mask, ok = _check_temporal_loss("temporal_softmax_cross_entropy", scores, labels, mask)
    n, _, v = scores.shape
    scores = scores * jnp.where(ok, 1, jnp.nan).astype(scores.dtype)[..., None]     # NaN rows, NaN grads
    shifted = scores - jax.lax.stop_gradient(jnp.max(scores, axis=2, keepdims=True))
    log_z = jnp.log(jnp.sum(jnp.exp(shifted), axis=2))
    safe = jnp.where(_in_range(labels, v), labels, 0)
    correct = jnp.take_along_axis(shifted, safe[..., None], axis=2)[..., 0]
    return jnp.sum(jnp.where(mask, log_z - correct, 0)) / n


@jax.custom_vjp
def _temporal_softmax_cross_entropy(scores, labels, mask, ok):
    return _temporal_softmax_cross_entropy_fwd(scores, labels, mask, ok)[0]


def _temporal_softmax_cross_entropy_fwd(scores, labels, mask, ok):
    n, _, v = scores.shape
    shifted = scores - jnp.max(scores, axis=2, keepdims=True)
    exp = jnp.exp(shifted)
    z = jnp.sum(exp, axis=2, keepdims=True)
    safe = jnp.where(_in_range(labels, v), labels, 0)
    correct = jnp.take_along_axis(shifted, safe[..., None], axis=2)[..., 0]
    nll = jnp.where(ok, jnp.log(z[..., 0]) - correct, jnp.nan)
    loss = jnp.sum(jnp.where(mask, nll, 0)) / n
    return loss, (exp / z, safe, mask, ok)


def _temporal_softmax_cross_entropy_bwd(res, g):
    """dscores = g · mask · (p - onehot(y)) / N at every position.

    Residuals: the softmax probabilities p (N, T, V), the labels with the
    out-of-range ones replaced by 0 (N, T) int, the mask (N, T) bool and the
    "label in range or masked out" flags (N, T) bool.  g: the scalar cotangent.
    Returns dscores (N, T, V), zero rows where the mask is off and NaN rows at
    kept positions with an out-of-range label, and None for labels, mask and flags.
    """
    p, safe, mask, ok = res
    n, _, v = p.shape
    onehot = jax.nn.one_hot(safe, v, dtype=p.dtype)
    ds = g * jnp.where(mask[..., None], p - onehot, 0) / n
    return jnp.where(ok[..., None], ds, jnp.nan), None, None, None


_temporal_softmax_cross_entropy.defvjp(_temporal_softmax_cross_entropy_fwd, _temporal_softmax_cross_entropy_bwd)


def temporal_softmax_cross_entropy_manual(scores, labels, mask=None):
    """Manual twin of :func:`temporal_softmax_cross_entropy`. scores (N, T, V); labels (N, T) int;
    mask (N, T) or None."""
    mask, ok = _check_temporal_loss("temporal_softmax_cross_entropy", scores, labels, mask)
    return _temporal_softmax_cross_entropy(scores, labels, mask, ok)


def _lengths_mask(key, n, t):
    """(N, T) bool: row i keeps its first L_i steps, L_i uniform in [1, T], the first row all T."""
    lengths = S.randint(key, (n,), 1, t + 1)
    lengths[0] = t
    return np.arange(t)[None, :] < lengths[:, None]


def _sample_temporal_loss(key, d, dt):
    k = S.keys(key, 3)
    n, t = d["x"]
    scores = S.normal(k[0], (n, t, d["v"]), dt)
    labels = S.randint(k[1], (n, t), 0, d["v"])
    pad = d.get("mask", "none")
    mask = None if pad == "none" else np.ones((n, t), bool) if pad == "full" else _lengths_mask(k[2], n, t)
    return scores, labels, mask


def _temporal_softmax_cross_entropy_oracle(scores, labels, mask=None):
    n, t, v = scores.shape
    mask = np.ones((n, t)) if mask is None else np.asarray(mask, np.float64)
    total = 0.0
    for i, j in itertools.product(range(n), range(t)):
        s = scores[i, j]
        m = max(s)
        log_z = m + np.log(sum(np.exp(s[c] - m) for c in range(v)))
        total += mask[i, j] * (log_z - s[labels[i, j]])
    return total / n


def _temporal_softmax_cross_entropy_oracle_cases():
    r = np.random.default_rng(13)
    some = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    return (oracle_case("x=2x3 V=5 mask=None", r.standard_normal((2, 3, 5)), r.integers(0, 5, (2, 3)), None),
            oracle_case("x=3x4 V=4 mask=some", r.standard_normal((3, 4, 4)), r.integers(0, 4, (3, 4)), some),
            oracle_case("x=1x1 V=3 mask=full", r.standard_normal((1, 1, 3)), np.array([[2]]), np.ones((1, 1), bool)),
            oracle_case("x=2x2 V=3 mask=0|1 floats", r.standard_normal((2, 2, 3)), r.integers(0, 3, (2, 2)),
                        np.array([[1.0, 0.0], [1.0, 1.0]])))


register(OpSpec("temporal_softmax_cross_entropy", temporal_softmax_cross_entropy,
                temporal_softmax_cross_entropy_manual, _sample_temporal_loss,
                (case({"x": (3, 4), "v": 5, "mask": "some"}), case({"x": (2, 3), "v": 4, "mask": "none"}),
                 case({"x": (2, 2), "v": 3, "mask": "full"}), case({"x": (1, 1), "v": 3, "mask": "some"}),
                 case({"x": (2, 1), "v": 2, "mask": "none"})),
                backward=_temporal_softmax_cross_entropy_bwd,
                note="mask bool (not differentiated): none, all kept, or rows of random length >= 1",
                oracle=_temporal_softmax_cross_entropy_oracle, oracle_cases=_temporal_softmax_cross_entropy_oracle_cases))
