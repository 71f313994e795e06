"""Inverted dropout: reference forward, manual op, NumPy oracle, audit registration.

The manual op applies the same mask and scale as the reference; its backward
sends the upstream gradient through that mask and scale.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def check_rate(op, rate) -> float:
    """A finite number in [0, 1) (Python or NumPy scalar), returned as a Python float."""
    return check_number(op, "rate", rate, low=0.0, high=1.0, high_open=True,
                        what=" is the probability of DROPPING a unit and")


def keep_mask(op, x, key, rate):
    """Boolean mask of kept units, shape of x, drawn from ``key``."""
    if key is None:
        raise ValueError(f"{op}: training-mode dropout needs an explicit PRNG `key` (x {tuple(x.shape)})")
    return jax.random.bernoulli(key, 1.0 - rate, x.shape)


def scale_kept(x, keep, rate):
    """``x / (1 - rate)`` where ``keep``, 0 elsewhere, in x's dtype."""
    return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


def dropout(x, key, *, rate, train=True):
    """Inverted dropout: drop each unit with probability ``rate``, scale kept ones by 1/(1-rate).

    x: any shape.  key: a ``jax.random`` key (may be None when train=False).
    rate: probability of dropping (NOT of keeping; the course used both).
    At test time (train=False) it is the identity, so expectations match.
    """
    rate = check_rate("dropout", rate)
    if not train or rate == 0.0:
        return x
    return scale_kept(x, keep_mask("dropout", x, key, rate), rate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dropout(x, keep, rate):
    return scale_kept(x, keep, rate)


def _dropout_fwd(x, keep, rate):
    return scale_kept(x, keep, rate), keep


def _dropout_bwd(rate, keep, dy):
    """dx = dy / (1 - rate) where the unit was kept, 0 where it was dropped.

    Residual: the keep mask, bool, the shape of x.  dy, dx: the shape of x;
    the mask gets no cotangent (None).
    """
    return scale_kept(dy, keep, rate), None


_dropout.defvjp(_dropout_fwd, _dropout_bwd)


def dropout_manual(x, key, *, rate, train=True):
    """Manual twin of :func:`dropout`; the same key gives the same mask.

    x: any shape.  key: ``jax.random`` key.  rate: probability of dropping.
    """
    rate = check_rate("dropout", rate)
    if not train or rate == 0.0:
        return x
    return _dropout(x, keep_mask("dropout", x, key, rate), rate)


def _sample_dropout(key, d, dt):
    k = S.keys(key, 2)
    return S.normal(k[0], d["x"], dt), k[1]


def _dropout_oracle(x, key, *, rate, train=True):
    """NumPy oracle: kept units scaled by ``1 / (1 - rate)``, dropped ones 0; x itself in eval mode.

    The mask is ``jax.random.bernoulli(key, 1 - rate, x.shape)``, the one the op documents for its
    key (NumPy cannot reproduce JAX's generator); ``tests/test_oracle.py`` checks the mask's
    statistics separately.
    """
    if not train or rate == 0.0:
        return x
    keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
    return np.where(keep, x / (1.0 - rate), 0.0)


def _dropout_oracle_cases():
    return O.drawn(
        "dropout",
        ("x=4x6 rate=0.5", lambda r: (r.standard_normal((4, 6)), np.array([0, 3], np.uint32)), {"rate": 0.5}),
        ("x=2x3x3x2 rate=0.2", lambda r: (r.standard_normal((2, 3, 3, 2)), np.array([0, 4], np.uint32)),
         {"rate": 0.2}),
        ("x=3x4 rate=0.5 eval", lambda r: (r.standard_normal((3, 4)), None), {"rate": 0.5, "train": False}))


register(OpSpec("dropout", dropout, dropout_manual, _sample_dropout, (
    case({"x": (4, 6)}, rate=0.5), case({"x": (2, 3, 3, 2)}, rate=0.1), case({"x": (5, 4)}, rate=0.5, train=False),
), backward=_dropout_bwd, note="the key is an input: the same key gives the same mask in both paths",
   oracle=_dropout_oracle, oracle_cases=_dropout_oracle_cases))
