"""Centered finite differences, vectorised and jitted (no Python loop over elements).

Run them in float64 (``with jax.enable_x64(True):``): in float32 the
round-off of ``f(x + h) - f(x - h)`` swamps the signal, the course's most
common gradient-check pitfall.
"""
from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp

DEFAULT_STEP = 1e-5   # the course's h; error O(h^2) + O(eps / h) ~ 1e-10 in float64


def _as_tuple(argnums):
    return (argnums,) if isinstance(argnums, int) else tuple(argnums)


def _coordinate_diffs(f, args, argnum, indices, h, batch_size):
    x = jnp.asarray(args[argnum])
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise TypeError(f"numerical_gradient: argument {argnum} has dtype {x.dtype}; only float inputs "
                        "can be perturbed")
    flat = jnp.ravel(x)

    def value_at(flat_x):
        a = list(args)
        a[argnum] = jnp.reshape(flat_x, x.shape)
        return f(*a)

    @jax.jit
    def run(flat, idx):
        def one(i):
            return (value_at(flat.at[i].add(h)) - value_at(flat.at[i].add(-h))) / (2 * h)
        return jax.lax.map(one, idx, batch_size=min(batch_size, idx.shape[0]))

    return run(flat, indices)


def numerical_gradient(f: Callable, args: Sequence, *, argnums=0, h: float = DEFAULT_STEP,
                       batch_size: int = 256):
    """Centered-difference gradient of a scalar ``f(*args)``.

    Returns one array per entry of ``argnums`` (a tuple if ``argnums`` is a
    tuple), each shaped like its argument: ``(f(x + h e_i) - f(x - h e_i)) / 2h``.
    Coordinates are evaluated ``batch_size`` at a time with ``vmap``.
    """
    grads = []
    for a in _as_tuple(argnums):
        x = jnp.asarray(args[a])
        vals = _coordinate_diffs(f, args, a, jnp.arange(x.size), h, batch_size)
        grads.append(jnp.reshape(vals, x.shape))
    return tuple(grads) if isinstance(argnums, tuple) else grads[0]


def numerical_vjp(f: Callable, args: Sequence, cotangent, *, argnums=0, h: float = DEFAULT_STEP,
                  batch_size: int = 256):
    """Numerical vector-Jacobian product: the gradient of ``sum(f(*args) * cotangent)``."""
    def scalar(*a):
        return jnp.sum(f(*a) * cotangent)
    return numerical_gradient(scalar, args, argnums=argnums, h=h, batch_size=batch_size)


def sparse_numerical_gradient(f: Callable, args: Sequence, key, *, argnums=0, num_checks: int = 20,
                              h: float = DEFAULT_STEP):
    """Centered differences at ``num_checks`` random coordinates of each argument.

    For tensors too large to check exhaustively (the course's "check only a
    few dimensions").  Returns, per argnum, ``(flat_indices, values)``;
    compare with ``jnp.ravel(analytic)[flat_indices]``.
    """
    out = []
    for k, a in zip(jax.random.split(key, len(_as_tuple(argnums))), _as_tuple(argnums)):
        size = jnp.asarray(args[a]).size
        idx = jax.random.choice(k, size, (min(num_checks, size),), replace=False)
        out.append((idx, _coordinate_diffs(f, args, a, idx, h, num_checks)))
    return tuple(out) if isinstance(argnums, tuple) else out[0]
