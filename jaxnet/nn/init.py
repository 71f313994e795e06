"""Weight initializers from the course.

Every initializer has the signature
``init(key, shape, fan_in=None, fan_out=None, *, dtype=None) -> array``;
fans left as ``None`` are computed from ``shape`` by :func:`fans`.
``dtype=None`` is the default float type (float32, or float64 under
``jax.enable_x64``). Biases always start at zero.

=================  ==========================================  ===============================
name               distribution                                course form
=================  ==========================================  ===============================
``small``          ``scale * N(0, 1)``, scale 0.01              ``0.01 * randn(D, H)``
``xavier``         ``N(0, 1) / sqrt(fan_in)``                   ``randn(fan_in, fan_out) / sqrt(fan_in)``
``glorot_normal``  ``N(0, 1) * sqrt(2 / (fan_in + fan_out))``   Glorot & Bengio's average form
``he``             ``N(0, 1) * sqrt(2 / fan_in)``               ``randn(n) * sqrt(2.0 / n)`` ("Xavier/2")
``zeros``          all zeros (the symmetry pitfall)             ``W = 0``
=================  ==========================================  ===============================

Note the course's "Xavier" is ``1 / sqrt(fan_in)`` (what other libraries
call LeCun normal); the symmetric Glorot form is ``glorot_normal``.

The draws are ``jax.random.normal(key, shape, dtype)`` bit for bit (then scaled as
the table says).  Called eagerly (a concrete key), they come from one flat draw of
a power-of-two size >= 16,384, compiled once per size and dtype, cut to the
weight's shape in NumPy: with JAX's partitionable threefry (its default) element
i of a draw depends only on the key and i, so the prefix of a longer flat draw is
the same numbers.  Eagerly, ``jax.random.normal`` would compile a kernel for
every new shape (about a second each on a 2-core CPU: most of an eager model
``init``).  Under ``jit`` (a traced key) it is ``jax.random.normal`` itself.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

Initializer = Callable[..., jax.Array]

__all__ = ["fans", "small", "xavier", "glorot_normal", "he", "zeros", "get_initializer", "INITIALIZERS",
           "Initializer"]


def fans(shape) -> tuple[int, int]:
    """``(fan_in, fan_out)`` of a weight of this shape.

    Affine ``(D, M)``: ``(D, M)``.  Conv HWIO ``(KH, KW, Cin, Cout)``:
    ``(KH*KW*Cin, KH*KW*Cout)`` (generally the receptive field, every axis but
    the last two, times the last-but-one / last axis).  A vector ``(n,)``:
    ``(n, n)``; a scalar: ``(1, 1)``.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) == 0:
        return 1, 1
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return receptive * shape[-2], receptive * shape[-1]


def _resolve(shape, fan_in, fan_out, dtype):
    shape = tuple(int(s) for s in shape)
    fi, fo = fans(shape)
    fan_in = fi if fan_in is None else int(fan_in)
    fan_out = fo if fan_out is None else int(fan_out)
    if fan_in < 1 or fan_out < 1:
        raise ValueError(f"initializer: fans must be positive, got fan_in={fan_in}, fan_out={fan_out} "
                         f"for shape {shape}")
    return shape, fan_in, fan_out, (jnp.result_type(float) if dtype is None else dtype)


_MIN_DRAW = 1 << 14


@functools.partial(jax.jit, static_argnums=(1, 2))
def _flat_normal(key, size, dtype):
    return jax.random.normal(key, (size,), dtype)


def _fast_path(key) -> bool:
    return (not isinstance(key, jax.core.Tracer) and bool(jax.config.jax_threefry_partitionable)
            and (jnp.issubdtype(key.dtype, jax.dtypes.prng_key) and "threefry" in str(jax.random.key_impl(key))
                 or (key.dtype == jnp.uint32 and key.shape == (2,)
                     and jax.config.jax_default_prng_impl == "threefry2x32")))


def _scaled_normal(key, shape, dtype, scale, divide=False):
    """``jax.random.normal(key, shape, dtype) * scale`` (``/ scale`` when ``divide``), cast to dtype."""
    if not _fast_path(key):
        z = jax.random.normal(key, shape, dtype)
        return ((z / scale) if divide else (scale * z)).astype(dtype)
    n = math.prod(shape)
    size = max(_MIN_DRAW, 1 << max(n - 1, 0).bit_length())
    flat = _flat_normal(key, size, jnp.dtype(dtype))
    if isinstance(flat, jax.core.Tracer):
        # a concrete key inside a trace (``jax.jit`` or ``jax.eval_shape`` of a function that
        # closes over it): the draw is staged, so draw the shape itself, as under jit
        z = jax.random.normal(key, shape, dtype)
        return ((z / scale) if divide else (scale * z)).astype(dtype)
    z = np.asarray(flat)[:n].reshape(shape)
    # one IEEE multiply in the draw's dtype, as XLA's eager kernel does it (its division by a
    # constant is a multiplication by the constant's reciprocal rounded to the dtype)
    t = z.dtype.type
    out = z * (t(1) / t(scale)) if divide else t(scale) * z
    return jnp.asarray(out.astype(dtype))


def small(key, shape, fan_in: Optional[int] = None, fan_out: Optional[int] = None, scale: float = 0.01,
          *, dtype=None):
    """``scale * N(0, 1)`` (the course's ``0.01 * np.random.randn(D, H)``); ignores the fans."""
    shape, _, _, dtype = _resolve(shape, fan_in, fan_out, dtype)
    return _scaled_normal(key, shape, dtype, scale)


def xavier(key, shape, fan_in: Optional[int] = None, fan_out: Optional[int] = None, *, dtype=None):
    """The course's Xavier: ``N(0, 1) / sqrt(fan_in)`` (variance 1/fan_in; for tanh / linear units)."""
    shape, fan_in, _, dtype = _resolve(shape, fan_in, fan_out, dtype)
    return _scaled_normal(key, shape, dtype, math.sqrt(fan_in), divide=True)


def glorot_normal(key, shape, fan_in: Optional[int] = None, fan_out: Optional[int] = None, *, dtype=None):
    """Glorot & Bengio: ``N(0, 1) * sqrt(2 / (fan_in + fan_out))``."""
    shape, fan_in, fan_out, dtype = _resolve(shape, fan_in, fan_out, dtype)
    return _scaled_normal(key, shape, dtype, math.sqrt(2.0 / (fan_in + fan_out)))


def he(key, shape, fan_in: Optional[int] = None, fan_out: Optional[int] = None, *, dtype=None):
    """He / MSRA / "Xavier/2": ``N(0, 1) * sqrt(2 / fan_in)``, the recommendation for ReLU nets."""
    shape, fan_in, _, dtype = _resolve(shape, fan_in, fan_out, dtype)
    return _scaled_normal(key, shape, dtype, math.sqrt(2.0 / fan_in))


def zeros(key, shape, fan_in: Optional[int] = None, fan_out: Optional[int] = None, *, dtype=None):
    """All zeros. For weights this is the course's symmetry pitfall: every hidden unit stays equal."""
    shape, _, _, dtype = _resolve(shape, fan_in, fan_out, dtype)
    return jnp.zeros(shape, dtype)


INITIALIZERS: dict[str, Initializer] = {
    "small": small, "xavier": xavier, "glorot_normal": glorot_normal, "he": he, "zeros": zeros,
}


def get_initializer(name) -> Initializer:
    """The initializer called ``name`` (see :data:`INITIALIZERS`); a callable is returned as is."""
    if callable(name):
        return name
    if isinstance(name, str) and name in INITIALIZERS:
        return INITIALIZERS[name]
    raise ValueError(f"unknown initializer {name!r}; choose one of {sorted(INITIALIZERS)} "
                     f"or pass a callable init(key, shape, fan_in, fan_out)")
