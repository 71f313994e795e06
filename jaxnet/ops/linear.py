"""Affine (fully connected) layer, reference forward."""
from __future__ import annotations

import jax.numpy as jnp

from jaxnet._checks import check_min_rank, check_rank


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
    y = jnp.reshape(x, (x.shape[0], -1)) @ w
    return y if b is None else y + b
