"""Elementwise activations (and maxout): reference forwards, manual ops, NumPy oracles, audit registrations.

All take ``x`` of any shape and return the same shape (maxout shrinks the last
axis by ``pieces``).  Each manual op's forward is the reference itself, except
maxout's, which also records the winning piece.  Local gradients:
relu 1[x > 0]; leaky relu 1 or slope; sigmoid s(1 - s); tanh 1 - y^2;
ELU 1 or alpha e^x; PReLU 1 or alpha, and dalpha = sum x dy over x <= 0;
maxout routes dy to the winning piece; softplus sigmoid(x); GELU
Phi(x) + x phi(x) (or the tanh approximation's derivative).

Kinks: both paths take the same subgradient, written into the reference's
formula so that autodiff produces it.  At x = 0 the slope is the left one:
relu 0, leaky relu ``slope``, PReLU ``alpha`` (and dalpha gets 0 * dy), ELU
``alpha`` (the true derivative when alpha = 1).  At a maxout tie the first
winning piece takes all of dy.  ``tests/test_op_kinks.py`` checks each.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_min_rank, check_number, check_positive_int
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register

_SHAPES = ({"x": (4, 5)}, {"x": (1, 3, 3, 2)})
_AWAY = "inputs kept away from the kink at 0; the kink itself: tests/test_op_kinks.py"
_ORACLE_SHAPES = ((3, 4), (1, 2, 2, 3))      # the oracle check's fixed input shapes


# ----------------------------------------------------------------------------------------------- relu

def relu(x):
    """``max(0, x)``. x: any shape.

    Written as a select so that autodiff's derivative at exactly 0 is 0 (``jnp.maximum``
    splits ties and would give 1/2); NaN passes through.
    """
    return jnp.where(x <= 0, 0, x)


@jax.custom_vjp
def relu_manual(x):
    """Manual twin of :func:`relu`. x: any shape."""
    return relu(x)


def _relu_fwd(x):
    return relu(x), x


def _relu_bwd(x, dy):
    """dx = dy · 1[x > 0].

    Residual: the input x (any shape).  dy, dx: the shape of x.  At x = 0 the
    gradient is 0; at x = NaN dy passes, as in the reference's select.
    """
    return (jnp.where(x <= 0, 0, dy),)


relu_manual.defvjp(_relu_fwd, _relu_bwd)


def _relu_oracle(x):
    """NumPy oracle: ``max(x, 0)``, float64."""
    return np.maximum(x, 0.0)


register(OpSpec("relu", relu, relu_manual, S.unary(S.away_from_zero), tuple(case(d) for d in _SHAPES),
                backward=_relu_bwd, note=_AWAY,
                oracle=_relu_oracle, oracle_cases=lambda: O.unary("relu", _ORACLE_SHAPES)))


# ----------------------------------------------------------------------------------------- leaky relu

def check_slope(op, name, value) -> float:
    """A finite number >= 0 (Python or NumPy scalar), returned as a Python float."""
    return check_number(op, name, value, low=0.0)


def leaky_relu(x, *, slope=0.01):
    """``x if x > 0 else slope * x``. x: any shape; slope: float >= 0.

    The derivative at exactly 0 is ``slope`` (the select takes the second branch).
    """
    slope = check_slope("leaky_relu", "slope", slope)
    return jnp.where(x > 0, x, slope * x)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _leaky_relu(x, slope):
    return leaky_relu(x, slope=slope)


def _leaky_relu_fwd(x, slope):
    return leaky_relu(x, slope=slope), x


def _leaky_relu_bwd(slope, x, dy):
    """dx = dy where x > 0, slope · dy elsewhere.

    Residual: the input x (any shape).  dy, dx: the shape of x.
    """
    return (jnp.where(x > 0, dy, slope * dy),)


_leaky_relu.defvjp(_leaky_relu_fwd, _leaky_relu_bwd)


def leaky_relu_manual(x, *, slope=0.01):
    """Manual twin of :func:`leaky_relu`. x: any shape."""
    return _leaky_relu(x, check_slope("leaky_relu", "slope", slope))


def _leaky_relu_oracle(x, *, slope=0.01):
    """NumPy oracle: ``x`` where ``x > 0``, else ``slope * x``, float64."""
    return np.where(x > 0, x, slope * x)


register(OpSpec("leaky_relu", leaky_relu, leaky_relu_manual, S.unary(S.away_from_zero),
                tuple(case(d, slope=s) for d in _SHAPES for s in (0.01, 0.2)),
                backward=_leaky_relu_bwd, note=_AWAY, oracle=_leaky_relu_oracle,
                oracle_cases=lambda: O.unary("leaky_relu", ((3, 4),), ({"slope": 0.01}, {"slope": 0.3}))))


# -------------------------------------------------------------------------------------------- sigmoid

def sigmoid(x):
    """``1 / (1 + exp(-x))``, computed stably. x: any shape."""
    return jax.nn.sigmoid(x)


@jax.custom_vjp
def sigmoid_manual(x):
    """Manual twin of :func:`sigmoid`. x: any shape."""
    return sigmoid(x)


def _sigmoid_fwd(x):
    y = sigmoid(x)
    return y, y


def _sigmoid_bwd(y, dy):
    """dx = dy · y (1 - y), with y = sigmoid(x).

    Residual: the output y (the shape of x).  dy, dx: the shape of x.
    """
    return (dy * y * (1 - y),)


sigmoid_manual.defvjp(_sigmoid_fwd, _sigmoid_bwd)


def _sigmoid_oracle(x):
    """NumPy oracle: ``1 / (1 + exp(-x))``, float64."""
    return 1.0 / (1.0 + np.exp(-x))


register(OpSpec("sigmoid", sigmoid, sigmoid_manual, S.unary(S.scaled_normal(3)),
                tuple(case(d) for d in _SHAPES), backward=_sigmoid_bwd,
                oracle=_sigmoid_oracle, oracle_cases=lambda: O.unary("sigmoid", _ORACLE_SHAPES)))


# ----------------------------------------------------------------------------------------------- tanh

def tanh(x):
    """Hyperbolic tangent. x: any shape."""
    return jnp.tanh(x)


@jax.custom_vjp
def tanh_manual(x):
    """Manual twin of :func:`tanh`. x: any shape."""
    return tanh(x)


def _tanh_fwd(x):
    y = tanh(x)
    return y, y


def _tanh_bwd(y, dy):
    """dx = dy · (1 - y²), with y = tanh(x).

    Residual: the output y (the shape of x).  dy, dx: the shape of x.
    """
    return (dy * (1 - y * y),)


tanh_manual.defvjp(_tanh_fwd, _tanh_bwd)


def _tanh_oracle(x):
    """NumPy oracle: ``np.tanh``, float64."""
    return np.tanh(x)


register(OpSpec("tanh", tanh, tanh_manual, S.unary(S.scaled_normal(2)),
                tuple(case(d) for d in _SHAPES), backward=_tanh_bwd,
                oracle=_tanh_oracle, oracle_cases=lambda: O.unary("tanh", _ORACLE_SHAPES)))


# ------------------------------------------------------------------------------------------------ elu

def elu(x, *, alpha=1.0):
    """``x if x > 0 else alpha * (exp(x) - 1)``. x: any shape; alpha: float >= 0.

    The derivative is 1 for x > 0 and ``alpha * exp(x)`` for x <= 0, so ``alpha``
    at exactly 0 (the true derivative when alpha = 1).  The formula is arranged
    for autodiff: the negative branch's input is a select (derivative 1 at 0;
    ``jnp.minimum`` would split the tie and give alpha / 2), and below -1 it is
    ``exp(x) - 1``, whose derivative is ``exp(x)`` itself.  ``expm1``'s derivative
    is formed as ``expm1(x) + 1``, which cancels to 0 once ``expm1(x)`` rounds to
    -1 (x below about -37 in float64, -17 in float32) while ``alpha * exp(x)`` is
    still representable; near 0, where ``exp(x) - 1`` would cancel in the value,
    ``expm1`` is kept.
    """
    alpha = check_slope("elu", "alpha", alpha)
    neg = jnp.where(x > 0, 0, x)           # 0 on the positive side: exp never overflows
    em1 = jnp.where(neg > -1, jnp.expm1(neg), jnp.exp(neg) - 1)
    return jnp.where(x > 0, x, alpha * em1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _elu(x, alpha):
    return elu(x, alpha=alpha)


def _elu_fwd(x, alpha):
    return elu(x, alpha=alpha), x


def _elu_bwd(alpha, x, dy):
    """dx = dy where x > 0, dy · α·eˣ elsewhere (α at x = 0).

    Residual: the input x (any shape).  α·eˣ is computed from x, not as y + α
    from the output: that sum cancels to 0 once y rounds to -α (x below about
    -37 in float64, -17 in float32) while α·eˣ is still representable.
    dy, dx: the shape of x.
    """
    return (jnp.where(x > 0, dy, dy * (alpha * jnp.exp(jnp.minimum(x, 0)))),)


_elu.defvjp(_elu_fwd, _elu_bwd)


def elu_manual(x, *, alpha=1.0):
    """Manual twin of :func:`elu`. x: any shape."""
    return _elu(x, check_slope("elu", "alpha", alpha))


def _elu_oracle(x, *, alpha=1.0):
    """NumPy oracle: ``x`` where ``x > 0``, else ``alpha * (exp(x) - 1)``, float64."""
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


register(OpSpec("elu", elu, elu_manual, S.unary(S.away_from_zero),
                tuple(case(d, alpha=a) for d in _SHAPES for a in (1.0, 0.5)),
                backward=_elu_bwd, note=_AWAY, oracle=_elu_oracle,
                oracle_cases=lambda: O.unary("elu", ((3, 4),), ({"alpha": 1.0}, {"alpha": 0.5}))))


# ---------------------------------------------------------------------------------------------- prelu

def check_prelu(op, x, alpha):
    if alpha.ndim not in (0, 1) or (alpha.ndim == 1 and (x.ndim == 0 or alpha.shape[0] != x.shape[-1])):
        raise ValueError(f"{op}: `alpha` must be a scalar or have shape ({x.shape[-1] if x.ndim else '?'},) "
                         f"= the last axis of `x` {tuple(x.shape)}, got {tuple(alpha.shape)}")


def prelu(x, alpha):
    """Parametric ReLU: ``x if x > 0 else alpha * x`` with a learnable slope.

    x: (..., C).  alpha: () or (C,), broadcast along the last axis.  At exactly
    x = 0 the derivative is alpha (and the entry adds 0 to dalpha).
    """
    check_prelu("prelu", x, alpha)
    return jnp.where(x > 0, x, alpha * x)


@jax.custom_vjp
def _prelu(x, alpha):
    return prelu(x, alpha)


def _prelu_fwd(x, alpha):
    return prelu(x, alpha), (x, alpha)


def _prelu_bwd(res, dy):
    """dx = dy or α·dy; dα = Σ x·dy over the entries with x ≤ 0 (summed to the shape of α).

    Residuals: the inputs x (..., C) and alpha () or (C,).  dy, dx: (..., C);
    dalpha sums over every axis alpha broadcasts along: the shape of alpha.
    """
    x, alpha = res
    dx = jnp.where(x > 0, dy, alpha * dy)
    dalpha_full = jnp.where(x > 0, 0, x * dy)
    dalpha = jnp.sum(dalpha_full, axis=tuple(range(x.ndim - alpha.ndim)))
    return dx, jnp.reshape(dalpha, alpha.shape)


_prelu.defvjp(_prelu_fwd, _prelu_bwd)


def prelu_manual(x, alpha):
    """Manual twin of :func:`prelu`. x: (..., C); alpha: () or (C,)."""
    check_prelu("prelu", x, alpha)
    return _prelu(x, alpha)


def _sample_prelu(key, d, dt):
    k = S.keys(key, 2)
    return S.away_from_zero(k[0], d["x"], dt), S.uniform(k[1], d["alpha"], dt, 0.1, 0.4)


def _prelu_oracle(x, alpha):
    """NumPy oracle: ``x`` where ``x > 0``, else ``alpha * x`` (alpha broadcast over the last axis), float64."""
    return np.where(x > 0, x, alpha * x)


def _prelu_oracle_cases():
    return O.drawn("prelu",
                   ("x=3x4 alpha=4", lambda r: (r.standard_normal((3, 4)), 0.1 + 0.3 * r.random(4))),
                   ("x=2x3 alpha=()", lambda r: (r.standard_normal((2, 3)), np.array(0.25))))


register(OpSpec("prelu", prelu, prelu_manual, _sample_prelu,
                (case({"x": (4, 5), "alpha": (5,)}), case({"x": (2, 3, 3, 4), "alpha": (4,)}),
                 case({"x": (3, 4), "alpha": ()})),
                backward=_prelu_bwd, note=_AWAY, oracle=_prelu_oracle, oracle_cases=_prelu_oracle_cases))


# --------------------------------------------------------------------------------------------- maxout

def check_maxout(op, x, pieces) -> int:
    """Validate a maxout call; returns ``pieces`` as a Python int."""
    check_min_rank(op, "x", x, 1)
    pieces = check_positive_int(op, "pieces", pieces)
    if x.shape[-1] % pieces:
        raise ValueError(f"{op}: the last axis of `x` {tuple(x.shape)} must split into `pieces`={pieces!r} "
                         f"equal groups")
    return pieces


def _maxout_winner(x, pieces):
    """(value, index) of the first winning piece of each group: x (..., D * pieces) -> (..., D) twice."""
    xr = jnp.reshape(x, x.shape[:-1] + (x.shape[-1] // pieces, pieces))
    winner = jnp.argmax(xr, axis=-1)
    return jnp.take_along_axis(xr, winner[..., None], axis=-1)[..., 0], winner


def maxout(x, *, pieces=2):
    """Maxout over consecutive groups of the last axis.

    x: (..., D * pieces) -> (..., D), ``y[..., d] = max_k x[..., d * pieces + k]``.
    Put an affine layer with D * pieces outputs in front for the course's
    ``max(w1.x + b1, w2.x + b2)``.  The maximum is picked with argmax, so at a
    tie autodiff sends all of dy to the first winning piece (``jnp.max`` would
    split it evenly).
    """
    pieces = check_maxout("maxout", x, pieces)
    return _maxout_winner(x, pieces)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _maxout(x, pieces):
    return _maxout_fwd(x, pieces)[0]


def _maxout_fwd(x, pieces):
    # The reference's computation, keeping the winner: it is recorded here, not re-derived
    # as x == max in the backward pass (under jit XLA may recompute x there with another
    # rounding).
    return _maxout_winner(x, pieces)


def _maxout_bwd(pieces, winner, dy):
    """dx = dy at the winning piece of each group, 0 at the others.

    At a tie the first winning piece (argmax) takes all of dy.  Residual: the
    index of the winning piece, int (..., D).  dy: (..., D); dx: (..., D * pieces).
    """
    onehot = winner[..., None] == jnp.arange(pieces)
    dx = jnp.where(onehot, dy[..., None], 0)
    return (jnp.reshape(dx, dx.shape[:-2] + (dx.shape[-2] * pieces,)),)


_maxout.defvjp(_maxout_fwd, _maxout_bwd)


def maxout_manual(x, *, pieces=2):
    """Manual twin of :func:`maxout`. x: (..., D * pieces) -> (..., D)."""
    return _maxout(x, check_maxout("maxout", x, pieces))


def _maxout_oracle(x, *, pieces=2):
    """NumPy oracle: output unit j is the max of input units ``j*pieces .. (j+1)*pieces - 1``, a loop over j."""
    d = x.shape[-1] // pieces
    y = np.empty(x.shape[:-1] + (d,))
    for j in range(d):
        y[..., j] = np.max(x[..., j * pieces:(j + 1) * pieces], axis=-1)
    return y


def _maxout_oracle_cases():
    return O.drawn("maxout", ("x=3x6 pieces=2", O.normal(3, 6), {"pieces": 2}),
                   ("x=2x2x6 pieces=3", O.normal(2, 2, 6), {"pieces": 3}))


register(OpSpec("maxout", maxout, maxout_manual, S.unary(S.distinct),
                (case({"x": (4, 6)}, pieces=2), case({"x": (2, 3, 9)}, pieces=3), case({"x": (1, 4)}, pieces=4)),
                backward=_maxout_bwd,
                note="inputs are distinct (no ties between pieces); ties: tests/test_op_kinks.py",
                oracle=_maxout_oracle, oracle_cases=_maxout_oracle_cases))


# ------------------------------------------------------------------------------------------- softplus

def softplus(x):
    """``log(1 + exp(x))``, computed stably as ``logaddexp(x, 0)``. x: any shape.

    ``jnp.logaddexp``'s derivative is ``exp(x - softplus(x)) = sigmoid(x)``,
    exactly 1/2 at 0 (the form ``max(x, 0) + log1p(exp(-|x|))`` differentiates
    to 0 there: its two kinks at 0 pick 1/2 and -1/2).
    """
    return jnp.logaddexp(x, 0)


@jax.custom_vjp
def softplus_manual(x):
    """Manual twin of :func:`softplus`. x: any shape."""
    return softplus(x)


def _softplus_fwd(x):
    return softplus(x), x


def _softplus_bwd(x, dy):
    """dx = dy · sigmoid(x).

    d/dx log(1 + e^x) = e^x / (1 + e^x) = sigmoid(x).  Residual: the input x
    (any shape).  sigmoid(x) is computed from x, not from the output y as
    1 - e^-y, which cancels catastrophically for large negative x.
    dy, dx: the shape of x.
    """
    return (dy * jax.nn.sigmoid(x),)


softplus_manual.defvjp(_softplus_fwd, _softplus_bwd)


def _softplus_oracle(x):
    """NumPy oracle: ``log(1 + exp(x))`` as written, float64 (the fixed inputs stay far from overflow)."""
    return np.log1p(np.exp(x))


register(OpSpec("softplus", softplus, softplus_manual, S.unary(S.scaled_normal(3)),
                tuple(case(d) for d in _SHAPES), backward=_softplus_bwd,
                oracle=_softplus_oracle, oracle_cases=lambda: O.unary("softplus", _ORACLE_SHAPES)))


# ----------------------------------------------------------------------------------------------- gelu

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_GELU_CUBIC = 0.044715


def _gelu_cdf(x, approximate):
    """The factor ``Phi(x)`` of ``gelu(x) = x * Phi(x)``: exact, or its tanh approximation."""
    if approximate:
        return 0.5 * (1 + jnp.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x)))
    return 0.5 * jax.lax.erfc(-x * _INV_SQRT_2)       # = 0.5 (1 + erf(x / sqrt 2)), no cancellation at x << 0


def gelu(x, *, approximate=False):
    """Gaussian error linear unit ``x * Phi(x)``, Phi the standard normal CDF (PyTorch's formulas).

    approximate=False: ``0.5 x (1 + erf(x / sqrt 2))``;
    approximate=True: ``0.5 x (1 + tanh(sqrt(2 / pi) (x + 0.044715 x^3)))``.
    x: any shape.
    """
    return x * _gelu_cdf(x, approximate)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gelu(x, approximate):
    return gelu(x, approximate=approximate)


def _gelu_fwd(x, approximate):
    cdf = _gelu_cdf(x, approximate)
    return x * cdf, (x, cdf)


def _gelu_bwd(approximate, res, dy):
    """dx = dy · (Φ(x) + x·Φ'(x)), Φ' the normal density (exact) or the tanh form's derivative.

    Exact: Phi(x) = (1 + erf(x / sqrt 2)) / 2 and Phi'(x) = exp(-x^2 / 2) / sqrt(2 pi).
    Tanh approximation: Phi(x) = (1 + t) / 2 with t = tanh(u), u = sqrt(2 / pi) (x + 0.044715 x^3),
    so Phi'(x) = (1 - t^2) / 2 · du/dx = 2 Phi (1 - Phi) · sqrt(2 / pi) (1 + 3 · 0.044715 x^2),
    using 1 - t^2 = (1 - t)(1 + t) = 4 Phi (1 - Phi).
    Residuals: the input x and Phi(x) from the forward pass (both the shape of x).
    dy, dx: the shape of x.
    """
    x, cdf = res
    if approximate:
        density = 2 * cdf * (1 - cdf) * _SQRT_2_OVER_PI * (1 + 3 * _GELU_CUBIC * x * x)
    else:
        density = jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI
    return (dy * (cdf + x * density),)


_gelu.defvjp(_gelu_fwd, _gelu_bwd)


def gelu_manual(x, *, approximate=False):
    """Manual twin of :func:`gelu`. x: any shape."""
    return _gelu(x, bool(approximate))


_np_erf = np.vectorize(math.erf, otypes=[np.float64])


def _gelu_oracle(x, *, approximate=False):
    """NumPy oracle: ``0.5 x (1 + erf(x / sqrt 2))`` with ``math.erf``, or the tanh form, float64."""
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _np_erf(x / math.sqrt(2.0)))


register(OpSpec("gelu", gelu, gelu_manual, S.unary(S.scaled_normal(2)),
                tuple(case(d, approximate=a) for d in _SHAPES for a in (False, True)),
                backward=_gelu_bwd, oracle=_gelu_oracle,
                oracle_cases=lambda: O.unary("gelu", ((3, 4),), ({"approximate": False}, {"approximate": True}))))
