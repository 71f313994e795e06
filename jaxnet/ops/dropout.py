"""Inverted dropout, reference forward."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def check_rate(op, rate):
    if not isinstance(rate, (int, float)) or isinstance(rate, bool) or not 0.0 <= rate < 1.0:
        raise ValueError(f"{op}: `rate` is the probability of DROPPING a unit and must be in [0, 1), "
                         f"got {rate!r}")


def keep_mask(op, x, key, rate):
    """Boolean mask of kept units, shape of x, drawn from ``key``."""
    if key is None:
        raise ValueError(f"{op}: training-mode dropout needs an explicit PRNG `key` (x {tuple(x.shape)})")
    return jax.random.bernoulli(key, 1.0 - rate, x.shape)


def dropout(x, key, *, rate, train=True):
    """Inverted dropout: drop each unit with probability ``rate``, scale kept ones by 1/(1-rate).

    x: any shape.  key: a ``jax.random`` key (may be None when train=False).
    rate: probability of dropping (NOT of keeping; the course used both).
    At test time (train=False) it is the identity, so expectations match.
    """
    check_rate("dropout", rate)
    if not train or rate == 0.0:
        return x
    keep = keep_mask("dropout", x, key, rate)
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)
