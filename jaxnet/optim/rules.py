"""The course's update rules, built from small optax transformations.

Each rule is a chain of pieces, as optax builds its own optimizers:

* a ``scale_by_*`` transformation (defined here) that only transforms the
  update: no learning rate and no sign, so its output has the direction of
  the gradient;
* ``optax.scale_by_learning_rate(lr)``, which multiplies by ``-lr`` (``lr`` a
  float or a schedule: a callable of the step count, e.g. from
  :mod:`jaxnet.optim.schedules`; a schedule is evaluated at its own count
  before the increment, so the first update uses ``lr(0)``).

Every piece and every rule follows optax's contract: ``init(params) -> state``
and ``update(updates, state, params=None) -> (updates, state)``; a rule's
updates carry the sign and the learning rate, so the step is
``params = optax.apply_updates(params, updates)``. All are jittable and work
on any pytree of float arrays; each equation below holds leaf by leaf,
elementwise, with every state array shaped like its parameter leaf.

Notation (CS231n notes): ``dx`` the gradient, ``u`` the incoming update of a
piece (``dx`` when the piece comes first in the chain), ``lr`` the learning
rate. The pieces:

``scale_by_momentum(mu)``: ``v = mu*v + u; out = v``.
``scale_by_nesterov(mu)``: ``v_prev = v; v = mu*v + u;``
``out = -mu*v_prev + (1+mu)*v``.
``scale_by_adagrad(eps)``: ``cache += u**2; out = u/(sqrt(cache) + eps)``.
``scale_by_rmsprop(decay, eps)``: ``cache = decay*cache + (1-decay)*u**2;``
``out = u/(sqrt(cache) + eps)``.
``scale_by_adam(b1, b2, eps, bias_correction)``: ``m = b1*m + (1-b1)*u;``
``v = b2*v + (1-b2)*u**2; mt = m/(1-b1**t); vt = v/(1-b2**t);``
``out = mt/(sqrt(vt) + eps)``.

Where the learning rate sits in the chain matters for the momentum pieces:
after the trace (``chain(scale_by_momentum, scale_by_learning_rate)``) the
whole velocity is rescaled by the current rate; before it
(``chain(scale_by_learning_rate, scale_by_momentum)``) each gradient keeps the
rate of the step it arrived at. The two orders are the notes' two momentum
forms. Pieces compose: RMSProp with momentum is
``optax.chain(scale_by_rmsprop(decay), scale_by_momentum(mu),
optax.scale_by_learning_rate(lr))``.

The rules, and where each stands against optax 0.2.8 (every claim is checked
step by step, in float64, in ``tests/test_optim.py``):

``sgd`` = ``scale_by_learning_rate``: ``x += -lr*dx``.
    Identical to ``optax.sgd(lr)``, schedules included.

``momentum(form="lr_outside")`` = ``chain(scale_by_momentum,
scale_by_learning_rate)``: ``v = mu*v + dx; x -= lr*v``.
    Identical to ``optax.sgd(lr, momentum=mu)`` (optax's ``trace``),
    schedules included.

``momentum(form="velocity")`` (default) = ``chain(scale_by_learning_rate,
scale_by_momentum)``: ``v = mu*v - lr*dx; x += v``.
    Same iterates as ``optax.sgd(lr, momentum=mu)`` for a *constant* lr
    (``v = -lr * v_optax``; equal to rounding). Under a schedule they differ
    from the second step on: here each gradient keeps the lr of the step it
    arrived at, optax rescales the whole accumulated trace by the current lr.

``nesterov`` = ``chain(scale_by_learning_rate, scale_by_nesterov)``:
``v_prev = v; v = mu*v - lr*dx; x += -mu*v_prev + (1+mu)*v``.
    Same iterates as ``optax.sgd(lr, momentum=mu, nesterov=True)`` for a
    constant lr: optax's ``v = dx + mu*v; x -= lr*(dx + mu*v)`` is the same
    look-ahead reparametrisation written "lr outside" (equal to rounding;
    ``chain(scale_by_nesterov, scale_by_learning_rate)`` is that form).
    Under a schedule they differ from the second step on, as for "velocity".

``adagrad`` = ``chain(scale_by_adagrad, scale_by_learning_rate)``:
``cache += dx**2; x += -lr*dx/(sqrt(cache) + eps)``, eps=1e-8.
    ``optax.adagrad`` differs three ways: its accumulator starts at
    ``initial_accumulator_value=0.1`` (here 0, as in the notes); its eps sits
    *inside* the root, ``dx/sqrt(cache + eps)``, default 1e-7; and it returns
    0 where ``cache == 0``. With ``initial_accumulator_value=0`` and ``eps=0``
    on both sides they agree to rounding, schedules included.

``rmsprop`` = ``chain(scale_by_rmsprop, scale_by_learning_rate)``:
``cache = decay*cache + (1-decay)*dx**2; x += -lr*dx/(sqrt(cache) + eps)``,
decay=0.99, eps=1e-8.
    ``optax.rmsprop`` defaults to eps *inside* the root (``eps_in_sqrt=True``,
    ``dx/sqrt(cache + eps)``) and to ``decay=0.9``.
    ``optax.rmsprop(lr, decay=d, eps=e, eps_in_sqrt=False)`` agrees to
    rounding, schedules included.

``adam`` = ``chain(scale_by_adam, scale_by_learning_rate)``:
``m = b1*m + (1-b1)*dx; v = b2*v + (1-b2)*dx**2;``
``mt = m/(1-b1**t); vt = v/(1-b2**t); x += -lr*mt/(sqrt(vt) + eps)``.
    Agrees with ``optax.adam(lr, b1, b2, eps)`` to rounding (eps outside the
    root, ``eps_root=0``, t counted from 1), schedules included.
    ``bias_correction=False`` (``mt, vt = m, v``) has no optax alias.

The course's eps for AdaGrad/RMSProp is 1e-7 (the notes) and the course never
pins Adam's; the defaults here are 1e-8 (optax's and Kingma & Ba's for Adam).
Pass ``eps=1e-7`` to reproduce the slides' numbers.

States: a rule's state is the tuple of its pieces' states (``optax.chain``).
``scale_by_learning_rate`` holds an ``int32`` ``count`` for a schedule and
nothing for a constant; ``AdamState`` has its own ``int32`` ``count`` (the
``t`` of the bias correction); the other pieces hold only their arrays.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import Any, NamedTuple, Union

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "ScalarOrSchedule",
    "MomentumState",
    "NesterovState",
    "AdagradState",
    "RMSPropState",
    "AdamState",
    "scale_by_momentum",
    "scale_by_nesterov",
    "scale_by_adagrad",
    "scale_by_rmsprop",
    "scale_by_adam",
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "MOMENTUM_FORMS",
]

ScalarOrSchedule = Union[float, jax.Array, Callable[[jax.Array], jax.Array]]
PyTree = Any

MOMENTUM_FORMS = ("velocity", "lr_outside")


class MomentumState(NamedTuple):
    velocity: PyTree


class NesterovState(NamedTuple):
    velocity: PyTree


class AdagradState(NamedTuple):
    cache: PyTree  # running sum of squared updates


class RMSPropState(NamedTuple):
    cache: PyTree  # leaky running mean of squared updates


class AdamState(NamedTuple):
    count: jax.Array  # int32 scalar: updates done so far
    m: PyTree  # first moment
    v: PyTree  # second moment


# ----------------------------------------------------------------- helpers


def _is_number(x) -> bool:
    """A concrete Python/NumPy real number (not a traced or device array)."""
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def check_learning_rate(learning_rate: ScalarOrSchedule) -> None:
    """Raise ``ValueError`` for a non-positive constant learning rate.

    Schedules and (traced) arrays are not checked: a schedule may be 0 at
    step 0 (warmup), and a traced value has no concrete value.
    """
    if callable(learning_rate):
        return
    if isinstance(learning_rate, bool) or not (
        _is_number(learning_rate) or hasattr(learning_rate, "dtype")
    ):
        raise ValueError(
            "learning_rate must be a positive number or a schedule "
            f"(callable of the step count), got {learning_rate!r}"
        )
    if _is_number(learning_rate) and not learning_rate > 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")


def _check_unit_interval(name: str, value) -> None:
    if _is_number(value) and not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")


def _check_nonnegative(name: str, value) -> None:
    if _is_number(value) and not value >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


def _cast(x, like: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=like.dtype)


def _zeros(params: PyTree) -> PyTree:
    # explicit dtype: never weakly typed, so the state's types don't change
    # after the first update (which would retrace a jitted step).
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)


def _lr(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    check_learning_rate(learning_rate)
    return optax.scale_by_learning_rate(learning_rate)


# ------------------------------------------------------------------ pieces


def scale_by_momentum(mu: float = 0.9) -> optax.GradientTransformation:
    """Momentum trace (optax's ``trace``), per leaf::

        v = mu * v + u        # v starts at 0
        out = v

    ``u`` is the incoming update. Placed after ``scale_by_learning_rate``
    (``u = -lr * dx``) this is the notes' velocity form ``v = mu*v - lr*dx;
    x += v``; placed before it, the "lr outside" form ``v = mu*v + dx;
    x -= lr*v``. ``mu`` is the "friction" (0.9 typical, 0.99 also common).
    """
    _check_unit_interval("mu", mu)

    def init_fn(params):
        return MomentumState(velocity=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        velocity = jax.tree.map(lambda u, v: mu * v + u, updates, state.velocity)
        return velocity, MomentumState(velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_nesterov(mu: float = 0.9) -> optax.GradientTransformation:
    """Nesterov momentum in the notes' reparametrised form, per leaf::

        v_prev = v            # v starts at 0
        v = mu * v + u
        out = -mu * v_prev + (1 + mu) * v

    (``out`` equals ``u + mu * v``.) After ``scale_by_learning_rate``
    (``u = -lr * dx``) this is the notes' ``v = mu*v - lr*dx;
    x += -mu*v_prev + (1+mu)*v``: the stored ``x`` is the look-ahead point
    ``x + mu*v`` of the textbook form ``v = mu*v - lr*grad(x + mu*v); x += v``,
    so the gradient is taken at the parameters as usual.
    """
    _check_unit_interval("mu", mu)

    def init_fn(params):
        return NesterovState(velocity=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        velocity = jax.tree.map(lambda u, v: mu * v + u, updates, state.velocity)
        out = jax.tree.map(
            lambda v_prev, v: -mu * v_prev + (1 + mu) * v, state.velocity, velocity
        )
        return out, NesterovState(velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adagrad(eps: float = 1e-8) -> optax.GradientTransformation:
    """AdaGrad's scaling as in the notes (cache starts at 0, eps outside the
    root), per leaf::

        cache += u ** 2
        out = u / (sqrt(cache) + eps)
    """
    _check_nonnegative("eps", eps)

    def init_fn(params):
        return AdagradState(cache=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        cache = jax.tree.map(lambda u, c: c + u * u, updates, state.cache)
        out = jax.tree.map(lambda u, c: u / (jnp.sqrt(c) + eps), updates, cache)
        return out, AdagradState(cache=cache)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_rmsprop(decay: float = 0.99, eps: float = 1e-8) -> optax.GradientTransformation:
    """RMSProp's scaling as in the notes (cache starts at 0, eps outside the
    root), per leaf::

        cache = decay * cache + (1 - decay) * u ** 2
        out = u / (sqrt(cache) + eps)
    """
    _check_unit_interval("decay", decay)
    _check_nonnegative("eps", eps)

    def init_fn(params):
        return RMSPropState(cache=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        cache = jax.tree.map(
            lambda u, c: decay * c + (1 - decay) * (u * u), updates, state.cache
        )
        out = jax.tree.map(lambda u, c: u / (jnp.sqrt(c) + eps), updates, cache)
        return out, RMSPropState(cache=cache)

    return optax.GradientTransformation(init_fn, update_fn)


def scale_by_adam(
    b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8, *, bias_correction: bool = True
) -> optax.GradientTransformation:
    """Adam's scaling, the notes' full form, per leaf (t counts updates from 1)::

        m = b1 * m + (1 - b1) * u       # m, v start at 0
        v = b2 * v + (1 - b2) * u ** 2
        mt = m / (1 - b1 ** t)          # bias correction
        vt = v / (1 - b2 ** t)
        out = mt / (sqrt(vt) + eps)

    With ``bias_correction=False`` ``mt, vt`` are ``m, v`` (the course's
    "first attempt", which takes a very large first step).
    """
    _check_unit_interval("b1", b1)
    _check_unit_interval("b2", b2)
    _check_nonnegative("eps", eps)

    def init_fn(params):
        return AdamState(count=jnp.zeros([], jnp.int32), m=_zeros(params), v=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        t = optax.safe_increment(state.count)
        m = jax.tree.map(lambda u, m: b1 * m + (1 - b1) * u, updates, state.m)
        v = jax.tree.map(lambda u, v: b2 * v + (1 - b2) * (u * u), updates, state.v)
        if bias_correction:
            # float exponent: with a concrete int count (eager use) jnp would
            # lower ``b ** t`` to integer_pow and compile once per step.
            tf = t.astype(jnp.result_type(float))
            c1 = 1 - b1**tf
            c2 = 1 - b2**tf
            mt = jax.tree.map(lambda m: m / _cast(c1, m), m)
            vt = jax.tree.map(lambda v: v / _cast(c2, v), v)
        else:
            mt, vt = m, v
        out = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), mt, vt)
        return out, AdamState(count=t, m=m, v=v)

    return optax.GradientTransformation(init_fn, update_fn)


# ------------------------------------------------------------------- rules


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Vanilla (minibatch) SGD: ``x += -lr * dx``; ``scale_by_learning_rate``."""
    return _lr(learning_rate)


def momentum(
    learning_rate: ScalarOrSchedule, *, mu: float = 0.9, form: str = "velocity"
) -> optax.GradientTransformation:
    """SGD with momentum, in either of the course's two forms.

    ``form="velocity"`` (the notes' physics view, default;
    ``chain(scale_by_learning_rate, scale_by_momentum)``)::

        v = mu * v - lr * dx
        x += v

    ``form="lr_outside"`` (the slides' form, optax's ``sgd(momentum=mu)``;
    ``chain(scale_by_momentum, scale_by_learning_rate)``)::

        v = mu * v + dx
        x -= lr * v

    Both start from ``v = 0`` and give the same iterates for a constant
    learning rate (``v_velocity = -lr * v_lr_outside``). Under a schedule they
    differ: the velocity form weights each past gradient by the lr of the step
    it arrived at, the other rescales the whole velocity by the current lr.
    """
    if form not in MOMENTUM_FORMS:
        raise ValueError(f"momentum form must be one of {MOMENTUM_FORMS}, got {form!r}")
    lr, trace = _lr(learning_rate), scale_by_momentum(mu)
    return optax.chain(lr, trace) if form == "velocity" else optax.chain(trace, lr)


def nesterov(learning_rate: ScalarOrSchedule, *, mu: float = 0.9) -> optax.GradientTransformation:
    """Nesterov momentum in the notes' reparametrised form
    (``chain(scale_by_learning_rate, scale_by_nesterov)``)::

        v_prev = v
        v = mu * v - lr * dx           # dx evaluated at the stored x
        x += -mu * v_prev + (1 + mu) * v
    """
    lr = _lr(learning_rate)
    return optax.chain(lr, scale_by_nesterov(mu))


def adagrad(learning_rate: ScalarOrSchedule, *, eps: float = 1e-8) -> optax.GradientTransformation:
    """AdaGrad as in the notes (``chain(scale_by_adagrad,
    scale_by_learning_rate)``)::

        cache += dx ** 2
        x += -lr * dx / (sqrt(cache) + eps)
    """
    lr = _lr(learning_rate)
    return optax.chain(scale_by_adagrad(eps), lr)


def rmsprop(
    learning_rate: ScalarOrSchedule, *, decay: float = 0.99, eps: float = 1e-8
) -> optax.GradientTransformation:
    """RMSProp as in the notes (``chain(scale_by_rmsprop,
    scale_by_learning_rate)``)::

        cache = decay * cache + (1 - decay) * dx ** 2
        x += -lr * dx / (sqrt(cache) + eps)
    """
    lr = _lr(learning_rate)
    return optax.chain(scale_by_rmsprop(decay, eps), lr)


def adam(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    """Adam, the notes' full form (``chain(scale_by_adam,
    scale_by_learning_rate)``; t counts updates from 1)::

        m = b1 * m + (1 - b1) * dx
        v = b2 * v + (1 - b2) * dx ** 2
        mt = m / (1 - b1 ** t)          # bias correction
        vt = v / (1 - b2 ** t)
        x += -lr * mt / (sqrt(vt) + eps)

    With ``bias_correction=False`` ``mt, vt`` are ``m, v`` (the course's
    "first attempt", which takes a very large first step).
    """
    lr = _lr(learning_rate)
    return optax.chain(scale_by_adam(b1, b2, eps, bias_correction=bias_correction), lr)
