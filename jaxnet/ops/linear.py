"""Affine (fully connected) layer: reference forward, manual op, NumPy oracle, audit registration.

The manual op's forward is the reference itself; its backward is the course's
``dx = dout W^T``, ``dW = x^T dout``, ``db = sum dout``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_min_rank, check_rank
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def check_affine(op, x, w, b):
    check_min_rank(op, "x", x, 2)
    check_rank(op, "w", w, 2, "(D, M)")
    d = 1
    for s in x.shape[1:]:
        d *= s
    if w.shape[0] != d:
        raise ValueError(f"{op}: `x` {tuple(x.shape)} flattens to D={d} features per example "
                         f"but `w` {tuple(w.shape)} expects D={w.shape[0]}")
    if b is not None and tuple(b.shape) != (w.shape[1],):
        raise ValueError(f"{op}: `b` must have shape ({w.shape[1]},) to match `w` {tuple(w.shape)}, "
                         f"got {tuple(b.shape)}")


def affine(x, w, b=None):
    """``x.reshape(N, D) @ w + b``.

    x: (N, d1, ..., dk), flattened to (N, D) with D = d1*...*dk (as in the course).
    w: (D, M).  b: (M,) or None.  Returns (N, M).
    """
    check_affine("affine", x, w, b)
    y = jnp.reshape(x, (x.shape[0], w.shape[0])) @ w      # explicit D, no -1: an empty batch reshapes too
    return y if b is None else y + b


@jax.custom_vjp
def _affine(x, w, b):
    return affine(x, w, b)


def _affine_fwd(x, w, b):
    return affine(x, w, b), (x, w, b)


def _affine_bwd(res, dout):
    """dx = dout·Wᵀ, dW = xᵀ·dout, db = Σ_n dout.

    Residuals: the inputs x (N, d1, ..., dk), w (D, M) and b (M,) or None.
    dout: (N, M).  Returns dx like x (dout·Wᵀ reshaped back), dw (D, M) with x
    flattened to (N, D), and db (M,) (None when b is None).
    """
    x, w, b = res
    x2 = jnp.reshape(x, (x.shape[0], w.shape[0]))
    dx = jnp.reshape(dout @ w.T, x.shape)
    dw = x2.T @ dout
    db = None if b is None else jnp.sum(dout, axis=0)
    return dx, dw, db


_affine.defvjp(_affine_fwd, _affine_bwd)


def affine_manual(x, w, b=None):
    """Manual twin of :func:`affine` (reverse mode only: ``custom_vjp``).

    x: (N, d1, ..., dk).  w: (D, M).  b: (M,) or None.  Returns (N, M).
    """
    check_affine("affine", x, w, b)
    return _affine(x, w, b)


def _sample_affine(key, d, dt):
    k = S.keys(key, 3)
    x = S.normal(k[0], d["x"], dt)
    dim = x.size // x.shape[0]
    args = (x, S.normal(k[1], (dim, d["m"]), dt) / float(np.sqrt(dim)))
    return args + ((S.normal(k[2], (d["m"],), dt),) if d.get("bias", True) else (None,))


def _affine_oracle(x, w, b=None):
    """NumPy oracle: ``x.reshape(N, D) @ w (+ b)``, float64. x: (N, d_1, ..., d_k); w: (D, M); b: (M,) or None."""
    y = x.reshape(x.shape[0], -1) @ w
    return y if b is None else y + b


def _affine_oracle_cases():
    return O.drawn(
        "affine",
        ("x=3x4 m=2", lambda r: (r.standard_normal((3, 4)), r.standard_normal((4, 2)), r.standard_normal(2))),
        ("x=2x3x2 m=3", lambda r: (r.standard_normal((2, 3, 2)), r.standard_normal((6, 3)), r.standard_normal(3))),
        ("x=1x5 m=2 bias=False", lambda r: (r.standard_normal((1, 5)), r.standard_normal((5, 2)), None)))


register(OpSpec(
    "affine", affine, affine_manual, _sample_affine,
    (case({"x": (4, 5), "m": 3}), case({"x": (2, 3, 4, 2), "m": 7}), case({"x": (1, 6), "m": 2}),
     case({"x": (3, 5), "m": 4, "bias": False})),
    backward=_affine_bwd, oracle=_affine_oracle, oracle_cases=_affine_oracle_cases))
