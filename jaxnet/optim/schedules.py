"""Learning-rate schedules named after the course (thin wrappers over optax).

A schedule is a function of the step count ``t`` (the number of updates
already done: the first update uses ``t = 0``) returning the learning rate.
Every one here can be passed as ``learning_rate`` to the rules in
:mod:`jaxnet.optim.rules`, to optax's optimizers and to
:func:`jaxnet.optim.make_optimizer`.

* ``step_decay``: ``lr * factor ** floor(t / every)``
  (``optax.exponential_decay(staircase=True)``).
* ``exponential_decay``: ``lr * exp(-k t)`` (``optax.exponential_decay`` with
  rate ``exp(-k)`` per step).
* ``inverse_time``: ``lr / (1 + k t)`` (a plain function; optax has no 1/t
  schedule).
* ``cosine``: ``final + (lr - final) * (1 + cos(pi t / T)) / 2`` for t <= T,
  then ``final`` (``optax.cosine_decay_schedule``).
* ``warmup``: ``s(0) * t / W`` for t < W, then ``s(t - W)``
  (``optax.linear_schedule`` + ``optax.join_schedules``).

The optax-based ones are evaluated at a float count (see ``_float_count``):
given the int32 step counts that optimizer states carry, several of optax's
schedules (``exponential_decay``, ``linear_schedule``,
``warmup_cosine_decay_schedule``) compute in float32 even with
``jax_enable_x64``; these return float64 under x64.

``make_schedule(name, lr, total_steps=...)`` builds one by name for the CLI:
"constant", "step", "exponential", "inverse_time", "cosine", "warmup_cosine".
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Union

import jax
import jax.numpy as jnp
import optax

__all__ = [
    "Schedule",
    "SCHEDULE_NAMES",
    "constant",
    "step_decay",
    "exponential_decay",
    "inverse_time",
    "cosine",
    "warmup",
    "make_schedule",
]

Schedule = Callable[[jax.Array], jax.Array]

SCHEDULE_NAMES = ("constant", "step", "exponential", "inverse_time", "cosine", "warmup_cosine")


def _positive(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")


def _nonnegative(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def _float_count(schedule: Schedule) -> Schedule:
    """Evaluate ``schedule`` at a float step count.

    Several optax schedules compute in the dtype that ``count / steps``
    promotes to, which is float32 for the ``int32`` counts that optimizer
    states carry, even with ``jax_enable_x64``. Casting the count to the default float
    dtype first makes them float64 under x64 (unchanged otherwise).
    """

    def wrapped(count):
        return schedule(jnp.asarray(count, dtype=jnp.result_type(float)))

    return wrapped


def constant(lr: float) -> Schedule:
    """``lr`` at every step (``optax.constant_schedule``)."""
    _positive("lr", lr)
    return optax.constant_schedule(lr)


def step_decay(lr: float, *, every: int, factor: float = 0.5) -> Schedule:
    """Step decay: multiply by ``factor`` every ``every`` steps.

    ``lr * factor ** floor(t / every)``; the course's "decay by half every few
    epochs" is ``factor=0.5`` with ``every`` = a few epochs' worth of steps.
    """
    _positive("lr", lr)
    _positive_int("every", every)
    if isinstance(factor, bool) or not isinstance(factor, numbers.Real) or not 0 < factor <= 1:
        raise ValueError(f"factor must be in (0, 1], got {factor!r}")
    return _float_count(
        optax.exponential_decay(lr, transition_steps=every, decay_rate=factor, staircase=True)
    )


def exponential_decay(lr: float, *, k: float) -> Schedule:
    """Exponential decay ``lr * exp(-k t)`` (the notes' ``a0 * e^{-kt}``)."""
    _positive("lr", lr)
    _nonnegative("k", k)
    return _float_count(optax.exponential_decay(lr, transition_steps=1, decay_rate=math.exp(-k)))


def inverse_time(lr: float, *, k: float) -> Schedule:
    """1/t decay ``lr / (1 + k t)`` (the notes' ``a0 / (1 + kt)``)."""
    _positive("lr", lr)
    _nonnegative("k", k)

    def schedule(count):
        return lr / (1.0 + k * jnp.asarray(count, dtype=jnp.result_type(float)))

    return schedule


def cosine(lr: float, *, total_steps: int, final_lr: float = 0.0) -> Schedule:
    """Cosine decay from ``lr`` at t = 0 to ``final_lr`` at t = ``total_steps``.

    ``final_lr + (lr - final_lr) * (1 + cos(pi * t / total_steps)) / 2``,
    then ``final_lr`` for ``t >= total_steps``.
    """
    _positive("lr", lr)
    _positive_int("total_steps", total_steps)
    _nonnegative("final_lr", final_lr)
    return _float_count(
        optax.cosine_decay_schedule(lr, decay_steps=total_steps, alpha=final_lr / lr)
    )


def warmup(schedule_or_lr: Union[float, Schedule], *, warmup_steps: int) -> Schedule:
    """Linear warmup from 0, then ``schedule_or_lr``.

    For ``t < warmup_steps`` the rate is ``s(0) * t / warmup_steps`` (0 at the
    first step); from ``t = warmup_steps`` on it is ``s(t - warmup_steps)``:
    the wrapped schedule starts its own clock when the warmup ends (so a
    cosine over ``total_steps - warmup_steps`` ends at ``total_steps``).
    """
    _positive_int("warmup_steps", warmup_steps)
    if callable(schedule_or_lr):
        after = schedule_or_lr
        peak = float(after(0))
    else:
        _positive("lr", schedule_or_lr)
        peak = float(schedule_or_lr)
        after = optax.constant_schedule(peak)
    ramp = optax.linear_schedule(0.0, peak, transition_steps=warmup_steps)
    return _float_count(optax.join_schedules([ramp, after], boundaries=[warmup_steps]))


def make_schedule(
    name: str,
    lr: float,
    *,
    total_steps: int,
    every: int | None = None,
    factor: float = 0.5,
    k: float | None = None,
    final_lr: float = 0.0,
    warmup_steps: int | None = None,
) -> Schedule:
    """Build a schedule by name (used by the CLI).

    ========================  ==================================================================
    name                      schedule (defaults for the options left as ``None``)
    ========================  ==================================================================
    ``"constant"``            ``lr``
    ``"step"``                ``step_decay(lr, every=every, factor=factor)``;
                              ``every = max(1, total_steps // 4)`` (halves 3 times by the end)
    ``"exponential"``         ``exponential_decay(lr, k=k)``; ``k = ln(100) / total_steps``
                              (ends at ``lr / 100``)
    ``"inverse_time"``        ``inverse_time(lr, k=k)``; ``k = 9 / total_steps``
                              (ends at ``lr / 10``)
    ``"cosine"``              ``cosine(lr, total_steps=total_steps, final_lr=final_lr)``
    ``"warmup_cosine"``       ``warmup(cosine(lr, total_steps=total_steps - W, final_lr), W)``;
                              ``W = warmup_steps = max(1, total_steps // 20)``
    ========================  ==================================================================
    """
    _positive_int("total_steps", total_steps)
    if name == "constant":
        return constant(lr)
    if name == "step":
        return step_decay(lr, every=every if every is not None else max(1, total_steps // 4),
                          factor=factor)
    if name == "exponential":
        return exponential_decay(lr, k=k if k is not None else math.log(100.0) / total_steps)
    if name == "inverse_time":
        return inverse_time(lr, k=k if k is not None else 9.0 / total_steps)
    if name == "cosine":
        return cosine(lr, total_steps=total_steps, final_lr=final_lr)
    if name == "warmup_cosine":
        w = warmup_steps if warmup_steps is not None else max(1, total_steps // 20)
        _positive_int("warmup_steps", w)
        if w >= total_steps:
            raise ValueError(
                f"warmup_steps ({w}) must be smaller than total_steps ({total_steps})"
            )
        return warmup(cosine(lr, total_steps=total_steps - w, final_lr=final_lr), warmup_steps=w)
    raise ValueError(f"unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}")
