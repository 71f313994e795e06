"""Inverted dropout with a hand-written backward: the upstream gradient goes
through the same mask and scale (reverse mode only: ``custom_vjp``)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxnet.ops.dropout import check_rate, keep_mask


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _masked(x, keep, rate):
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def _masked_bwd(rate, keep, dy):
    return jnp.where(keep, dy / (1.0 - rate), 0).astype(dy.dtype), None


_masked.defvjp(lambda x, keep, rate: (_masked(x, keep, rate), keep), _masked_bwd)


def dropout(x, key, *, rate, train=True):
    """Manual twin of :func:`jaxnet.ops.dropout`; the same key gives the same mask.

    x: any shape.  key: ``jax.random`` key.  rate: probability of dropping.
    """
    check_rate("dropout", rate)
    if not train or rate == 0.0:
        return x
    return _masked(x, keep_mask("dropout", x, key, rate), float(rate))
