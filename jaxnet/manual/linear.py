"""Affine layer with the course's hand-derived backward pass."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxnet.ops.linear import check_affine


@jax.custom_vjp
def _affine(x, w, b):
    y = jnp.reshape(x, (x.shape[0], -1)) @ w
    return y if b is None else y + b


def _affine_fwd(x, w, b):
    return _affine(x, w, b), (x, w, b)


def _affine_bwd(res, dout):
    x, w, b = res
    x2 = jnp.reshape(x, (x.shape[0], -1))
    dx = jnp.reshape(dout @ w.T, x.shape)          # dL/dx = dout . W^T
    dw = x2.T @ dout                               # dL/dW = x^T . dout
    db = None if b is None else jnp.sum(dout, axis=0)  # dL/db = sum over the batch
    return dx, dw, db


_affine.defvjp(_affine_fwd, _affine_bwd)


def affine(x, w, b=None):
    """Manual twin of :func:`jaxnet.ops.affine` (reverse mode only: ``custom_vjp``).

    x: (N, d1, ..., dk).  w: (D, M).  b: (M,) or None.  Returns (N, M).
    """
    check_affine("affine", x, w, b)
    return _affine(x, w, b)
