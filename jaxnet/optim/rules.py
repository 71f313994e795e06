"""The course's update rules, written from scratch as ``optax.GradientTransformation``.

Every rule follows optax's contract: ``init(params) -> state`` and
``update(grads, state, params=None) -> (updates, state)``, where ``updates``
already carry the sign and the learning rate, so the step is
``params = optax.apply_updates(params, updates)``. States are NamedTuples of
pytrees with an ``int32`` ``count`` (the number of updates done so far); all
functions are jittable and work on any pytree of float arrays.

``learning_rate`` is a float or a schedule (a callable of the step count, e.g.
from :mod:`jaxnet.optim.schedules`). As in optax, a schedule is evaluated at
``count`` *before* the increment: the first update uses ``lr(0)``.

Notation (CS231n notes): ``dx`` the gradient, ``lr`` the learning rate.

Where each rule stands against optax 0.2.8 (every claim is checked step by
step, in float64, in ``tests/test_optim.py``):

``sgd``: ``x += -lr*dx``.
    Bitwise identical to ``optax.sgd(lr)``, schedules included.

``momentum(form="lr_outside")``: ``v = mu*v + dx; x -= lr*v``.
    Bitwise identical to ``optax.sgd(lr, momentum=mu)`` (optax's ``trace``),
    schedules included.

``momentum(form="velocity")`` (default): ``v = mu*v - lr*dx; x += v``.
    Same iterates as ``optax.sgd(lr, momentum=mu)`` for a *constant* lr
    (``v = -lr * v_optax``; equal to rounding). Under a schedule they differ
    from the second step on: here each gradient keeps the lr of the step it
    arrived at, optax rescales the whole accumulated trace by the current lr.

``nesterov``: ``v_prev = v; v = mu*v - lr*dx; x += -mu*v_prev + (1+mu)*v``.
    Same iterates as ``optax.sgd(lr, momentum=mu, nesterov=True)`` for a
    constant lr: optax's ``v = dx + mu*v; x -= lr*(dx + mu*v)`` is the same
    look-ahead reparametrisation written "lr outside" (equal to rounding).
    Under a schedule they differ from the second step on, as for "velocity".

``adagrad``: ``cache += dx**2; x += -lr*dx/(sqrt(cache) + eps)``, eps=1e-8.
    ``optax.adagrad`` differs three ways: its accumulator starts at
    ``initial_accumulator_value=0.1`` (here 0, as in the notes); its eps sits
    *inside* the root, ``dx/sqrt(cache + eps)``, default 1e-7; and it returns
    0 where ``cache == 0``. With ``initial_accumulator_value=0`` and ``eps=0``
    on both sides they agree to rounding, schedules included.

``rmsprop``: ``cache = decay*cache + (1-decay)*dx**2;``
``x += -lr*dx/(sqrt(cache) + eps)``, decay=0.99, eps=1e-8.
    ``optax.rmsprop`` defaults to eps *inside* the root (``eps_in_sqrt=True``,
    ``dx/sqrt(cache + eps)``) and to ``decay=0.9``.
    ``optax.rmsprop(lr, decay=d, eps=e, eps_in_sqrt=False)`` agrees to
    rounding, schedules included.

``adam``: ``m = b1*m + (1-b1)*dx; v = b2*v + (1-b2)*dx**2;``
``mt = m/(1-b1**t); vt = v/(1-b2**t); x += -lr*mt/(sqrt(vt) + eps)``.
    Agrees with ``optax.adam(lr, b1, b2, eps)`` to rounding (eps outside the
    root, ``eps_root=0``, t counted from 1), schedules included.
    ``bias_correction=False`` (``mt, vt = m, v``) has no optax alias.

The course's eps for AdaGrad/RMSProp is 1e-7 (the notes) and the course never
pins Adam's; the defaults here are 1e-8 (optax's and Kingma & Ba's for Adam).
Pass ``eps=1e-7`` to reproduce the slides' numbers.
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
    "SgdState",
    "MomentumState",
    "NesterovState",
    "AdagradState",
    "RMSPropState",
    "AdamState",
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


class SgdState(NamedTuple):
    count: jax.Array  # int32 scalar: updates done so far


class MomentumState(NamedTuple):
    count: jax.Array
    velocity: PyTree


class NesterovState(NamedTuple):
    count: jax.Array
    velocity: PyTree


class AdagradState(NamedTuple):
    count: jax.Array
    cache: PyTree  # running sum of squared gradients


class RMSPropState(NamedTuple):
    count: jax.Array
    cache: PyTree  # leaky running mean of squared gradients


class AdamState(NamedTuple):
    count: jax.Array
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


def _lr_at(learning_rate: ScalarOrSchedule, count: jax.Array):
    return learning_rate(count) if callable(learning_rate) else learning_rate


def _cast(x, like: jax.Array) -> jax.Array:
    return jnp.asarray(x, dtype=like.dtype)


def _zeros(params: PyTree) -> PyTree:
    # explicit dtype: never weakly typed, so the state's types don't change
    # after the first update (which would retrace a jitted step).
    return jax.tree.map(lambda p: jnp.zeros(jnp.shape(p), jnp.result_type(p)), params)


def _count0() -> jax.Array:
    return jnp.zeros([], jnp.int32)


def _next(count: jax.Array) -> jax.Array:
    return optax.safe_increment(count)


# ------------------------------------------------------------------- rules


def sgd(learning_rate: ScalarOrSchedule) -> optax.GradientTransformation:
    """Vanilla (minibatch) SGD: ``x += -lr * dx``."""
    check_learning_rate(learning_rate)

    def init_fn(params):
        del params
        return SgdState(count=_count0())

    def update_fn(updates, state, params=None):
        del params
        lr = _lr_at(learning_rate, state.count)
        updates = jax.tree.map(lambda g: -(_cast(lr, g) * g), updates)
        return updates, SgdState(count=_next(state.count))

    return optax.GradientTransformation(init_fn, update_fn)


def momentum(
    learning_rate: ScalarOrSchedule, *, mu: float = 0.9, form: str = "velocity"
) -> optax.GradientTransformation:
    """SGD with momentum, in either of the course's two forms.

    ``form="velocity"`` (the notes' physics view, default)::

        v = mu * v - lr * dx
        x += v

    ``form="lr_outside"`` (the slides' form, optax's ``sgd(momentum=mu)``)::

        v = mu * v + dx
        x -= lr * v

    Both start from ``v = 0`` and give the same iterates for a constant
    learning rate (``v_velocity = -lr * v_lr_outside``). Under a schedule they
    differ: the velocity form weights each past gradient by the lr of the step
    it arrived at, the other rescales the whole velocity by the current lr.
    ``mu`` is the "friction" (0.9 typical, 0.99 also common).
    """
    check_learning_rate(learning_rate)
    _check_unit_interval("mu", mu)
    if form not in MOMENTUM_FORMS:
        raise ValueError(f"momentum form must be one of {MOMENTUM_FORMS}, got {form!r}")

    def init_fn(params):
        return MomentumState(count=_count0(), velocity=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        lr = _lr_at(learning_rate, state.count)
        if form == "velocity":
            velocity = jax.tree.map(
                lambda g, v: mu * v - _cast(lr, g) * g, updates, state.velocity
            )
            new_updates = velocity
        else:
            velocity = jax.tree.map(lambda g, v: mu * v + g, updates, state.velocity)
            new_updates = jax.tree.map(lambda v: -(_cast(lr, v) * v), velocity)
        return new_updates, MomentumState(count=_next(state.count), velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def nesterov(learning_rate: ScalarOrSchedule, *, mu: float = 0.9) -> optax.GradientTransformation:
    """Nesterov momentum in the notes' reparametrised form::

        v_prev = v
        v = mu * v - lr * dx           # dx evaluated at the stored x
        x += -mu * v_prev + (1 + mu) * v

    The stored ``x`` is the look-ahead point ``x + mu * v`` of the textbook
    form ``v = mu*v - lr*grad(x + mu*v); x += v``, so the gradient is taken
    at the parameters as usual.
    """
    check_learning_rate(learning_rate)
    _check_unit_interval("mu", mu)

    def init_fn(params):
        return NesterovState(count=_count0(), velocity=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        lr = _lr_at(learning_rate, state.count)
        velocity = jax.tree.map(
            lambda g, v: mu * v - _cast(lr, g) * g, updates, state.velocity
        )
        new_updates = jax.tree.map(
            lambda v_prev, v: -mu * v_prev + (1 + mu) * v, state.velocity, velocity
        )
        return new_updates, NesterovState(count=_next(state.count), velocity=velocity)

    return optax.GradientTransformation(init_fn, update_fn)


def adagrad(learning_rate: ScalarOrSchedule, *, eps: float = 1e-8) -> optax.GradientTransformation:
    """AdaGrad as in the notes (cache starts at 0, eps outside the root)::

        cache += dx ** 2
        x += -lr * dx / (sqrt(cache) + eps)
    """
    check_learning_rate(learning_rate)
    _check_nonnegative("eps", eps)

    def init_fn(params):
        return AdagradState(count=_count0(), cache=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        lr = _lr_at(learning_rate, state.count)
        cache = jax.tree.map(lambda g, c: c + g * g, updates, state.cache)
        new_updates = jax.tree.map(
            lambda g, c: -(_cast(lr, g) * (g / (jnp.sqrt(c) + eps))), updates, cache
        )
        return new_updates, AdagradState(count=_next(state.count), cache=cache)

    return optax.GradientTransformation(init_fn, update_fn)


def rmsprop(
    learning_rate: ScalarOrSchedule, *, decay: float = 0.99, eps: float = 1e-8
) -> optax.GradientTransformation:
    """RMSProp as in the notes (cache starts at 0, eps outside the root)::

        cache = decay * cache + (1 - decay) * dx ** 2
        x += -lr * dx / (sqrt(cache) + eps)
    """
    check_learning_rate(learning_rate)
    _check_unit_interval("decay", decay)
    _check_nonnegative("eps", eps)

    def init_fn(params):
        return RMSPropState(count=_count0(), cache=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        lr = _lr_at(learning_rate, state.count)
        cache = jax.tree.map(
            lambda g, c: decay * c + (1 - decay) * (g * g), updates, state.cache
        )
        new_updates = jax.tree.map(
            lambda g, c: -(_cast(lr, g) * (g / (jnp.sqrt(c) + eps))), updates, cache
        )
        return new_updates, RMSPropState(count=_next(state.count), cache=cache)

    return optax.GradientTransformation(init_fn, update_fn)


def adam(
    learning_rate: ScalarOrSchedule,
    *,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    bias_correction: bool = True,
) -> optax.GradientTransformation:
    """Adam, the notes' full form (t counts updates from 1)::

        m = b1 * m + (1 - b1) * dx
        v = b2 * v + (1 - b2) * dx ** 2
        mt = m / (1 - b1 ** t)          # bias correction
        vt = v / (1 - b2 ** t)
        x += -lr * mt / (sqrt(vt) + eps)

    With ``bias_correction=False`` ``mt, vt`` are ``m, v`` (the course's
    "first attempt", which takes a very large first step).
    """
    check_learning_rate(learning_rate)
    _check_unit_interval("b1", b1)
    _check_unit_interval("b2", b2)
    _check_nonnegative("eps", eps)

    def init_fn(params):
        return AdamState(count=_count0(), m=_zeros(params), v=_zeros(params))

    def update_fn(updates, state, params=None):
        del params
        lr = _lr_at(learning_rate, state.count)
        t = _next(state.count)
        m = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.m)
        v = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * (g * g), updates, state.v)
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
        new_updates = jax.tree.map(
            lambda m, v: -(_cast(lr, m) * (m / (jnp.sqrt(v) + eps))), mt, vt
        )
        return new_updates, AdamState(count=t, m=m, v=v)

    return optax.GradientTransformation(init_fn, update_fn)
