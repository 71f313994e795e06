"""Optimizers: the course's update rules as optax transformations, schedules, glue.

* :mod:`jaxnet.optim.rules`: the pieces ``scale_by_momentum``,
  ``scale_by_nesterov``, ``scale_by_adagrad``, ``scale_by_rmsprop``,
  ``scale_by_adam`` (each an ``optax.GradientTransformation`` that transforms
  the update without a learning rate) and the rules ``sgd``, ``momentum``,
  ``nesterov``, ``adagrad``, ``rmsprop``, ``adam``, each a chain of pieces
  with ``optax.scale_by_learning_rate`` (its docstring has the equations and
  every difference from optax's versions).
* :mod:`jaxnet.optim.schedules`: ``step_decay``, ``exponential_decay``,
  ``inverse_time``, ``cosine``, ``warmup``, ``make_schedule``.
* Here: :func:`make_optimizer` (what the training loop uses),
  :func:`decay_mask` and :func:`current_learning_rate`.

Reading the learning rate for metrics
-------------------------------------
:func:`make_optimizer` wraps the update rule in ``optax.inject_hyperparams``
with only ``learning_rate`` injected, so the rate lives in the optimizer state
as an array (checkpointed with it; for a constant rate it can be changed in
place with ``optax.tree_utils.tree_set(state, learning_rate=...)``). :func:`current_learning_rate` reads it: right
after ``init`` it is ``lr(0)``; after ``n >= 1`` updates it is ``lr(n - 1)``,
the rate applied by the most recent update.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import rules, schedules
from .rules import (
    AdagradState,
    AdamState,
    MomentumState,
    NesterovState,
    RMSPropState,
    ScalarOrSchedule,
    adagrad,
    adam,
    check_learning_rate,
    momentum,
    nesterov,
    rmsprop,
    scale_by_adagrad,
    scale_by_adam,
    scale_by_momentum,
    scale_by_nesterov,
    scale_by_rmsprop,
    sgd,
)
from .schedules import (
    SCHEDULE_NAMES,
    Schedule,
    constant,
    cosine,
    exponential_decay,
    inverse_time,
    make_schedule,
    step_decay,
    warmup,
)

__all__ = [
    "rules",
    "schedules",
    # pieces
    "scale_by_momentum",
    "scale_by_nesterov",
    "scale_by_adagrad",
    "scale_by_rmsprop",
    "scale_by_adam",
    # rules
    "sgd",
    "momentum",
    "nesterov",
    "adagrad",
    "rmsprop",
    "adam",
    "MomentumState",
    "NesterovState",
    "AdagradState",
    "RMSPropState",
    "AdamState",
    "ScalarOrSchedule",
    # schedules
    "Schedule",
    "SCHEDULE_NAMES",
    "constant",
    "step_decay",
    "exponential_decay",
    "inverse_time",
    "cosine",
    "warmup",
    "make_schedule",
    # glue
    "OPTIMIZER_NAMES",
    "decay_mask",
    "make_optimizer",
    "current_learning_rate",
]

_FACTORIES: dict[str, Callable[..., optax.GradientTransformation]] = {
    # the course's rules (jaxnet.optim.rules)
    "sgd": sgd,
    "momentum": momentum,
    "nesterov": nesterov,
    "adagrad": adagrad,
    "rmsprop": rmsprop,
    "adam": adam,
    # optax's own
    "optax_sgd": optax.sgd,
    "optax_adam": optax.adam,
    "adamw": optax.adamw,
}

OPTIMIZER_NAMES = tuple(_FACTORIES)

_DECAYED_LEAF_NAMES = frozenset({"w"})


def _leaf_name(path) -> Optional[str]:
    if not path:
        return None
    last = path[-1]
    if isinstance(last, jax.tree_util.DictKey):
        return str(last.key)
    if isinstance(last, jax.tree_util.GetAttrKey):
        return last.name
    return None


def decay_mask(params: Any) -> Any:
    """Weight-decay mask: a pytree of bools, True only for leaves named ``w``.

    ``w`` is the weight of affine and conv layers; biases (``b``), norm
    parameters (``gamma``, ``beta``), PReLU slopes (``alpha``) and any other
    leaf are not decayed. The name is the leaf's own dict key (or attribute
    name), whatever its nesting: ``{"fc1": {"w": ..., "b": ...}}`` gives
    ``{"fc1": {"w": True, "b": False}}``.
    """
    return jax.tree_util.tree_map_with_path(
        lambda path, _: _leaf_name(path) in _DECAYED_LEAF_NAMES, params
    )


def _is_float_number(x) -> bool:
    return isinstance(x, (int, float, np.number)) and not isinstance(x, bool)


def make_optimizer(
    name: str,
    learning_rate: ScalarOrSchedule,
    *,
    weight_decay: float = 0.0,
    clip_norm: Optional[float] = None,
    mask: Union[None, Any, Callable[[Any], Any]] = None,
    **hyperparams: Any,
) -> optax.GradientTransformation:
    """The optimizer the training loop uses, by name.

    Args:
      name: one of the course's rules "sgd", "momentum", "nesterov",
        "adagrad", "rmsprop", "adam" (:mod:`jaxnet.optim.rules`), or optax's
        "optax_sgd", "optax_adam", "adamw".
      learning_rate: a positive float or a schedule (callable of the step).
      weight_decay: L2 strength ``lam``. For every name but "adamw" this adds
        ``lam * w`` to the gradient before the rule (the course's L2
        regularisation ``0.5 * lam * sum(w**2)`` in the loss; with adaptive
        rules it is therefore rescaled). For "adamw" it is optax's decoupled
        decay (``-lr * lam * w`` added to the Adam step).
      clip_norm: if given, gradients are first clipped to this global norm
        (``optax.clip_by_global_norm``), before the weight decay is added.
      mask: which leaves are decayed: a pytree of bools or a function of the
        params returning one. Default :func:`decay_mask` (only ``w`` leaves).
      **hyperparams: passed to the rule (``mu``, ``form``, ``eps``, ``decay``,
        ``b1``, ``b2``, ``bias_correction``; for "optax_sgd" ``momentum``,
        ``nesterov``, ...).

    Returns:
      ``chain(clip_by_global_norm?, add_decayed_weights?, rule)`` where the
      rule (for the course's names a chain of ``scale_by_*`` pieces and
      ``optax.scale_by_learning_rate``) is wrapped in
      ``optax.inject_hyperparams`` so that :func:`current_learning_rate` can
      read the rate from the state: the wrapper evaluates a schedule and
      builds the rule with that step's rate as a constant. Call
      ``update(grads, state, params)`` with params when ``weight_decay > 0``.

    Raises:
      ValueError: unknown ``name``, non-positive constant ``learning_rate``,
        negative ``weight_decay``, non-positive ``clip_norm``, or a bad
        hyperparameter.
    """
    if name not in _FACTORIES:
        raise ValueError(
            f"unknown optimizer {name!r}; expected one of {', '.join(OPTIMIZER_NAMES)}"
        )
    check_learning_rate(learning_rate)
    if not _is_float_number(weight_decay) or not weight_decay >= 0:
        raise ValueError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if clip_norm is not None and (not _is_float_number(clip_norm) or not clip_norm > 0):
        raise ValueError(f"clip_norm must be None or a number > 0, got {clip_norm!r}")
    if mask is None:
        mask = decay_mask

    factory = _FACTORIES[name]
    if name == "adamw":
        hyperparams = {"weight_decay": float(weight_decay), "mask": mask, **hyperparams}
    inner = functools.partial(factory, **hyperparams)
    try:  # build once now so that bad hyperparameters fail here, not at init
        inner(learning_rate)
    except TypeError as e:
        raise ValueError(f"bad hyperparameters for optimizer {name!r}: {e}") from e

    def rule(learning_rate):
        return inner(learning_rate)

    parts = []
    if clip_norm is not None:
        parts.append(optax.clip_by_global_norm(clip_norm))
    if weight_decay > 0 and name != "adamw":
        parts.append(optax.add_decayed_weights(weight_decay, mask=mask))
    parts.append(optax.inject_hyperparams(rule)(learning_rate=learning_rate))
    tx = optax.chain(*parts)

    def init_fn(params):
        # Weakly typed params (e.g. ``jnp.full(shape, 2.0)``) would give optax's
        # own rules a weakly typed state that turns strong after the first
        # update, retracing a jitted train step once. Strip the weak types.
        return tx.init(jax.tree.map(lambda p: jnp.asarray(p, dtype=jnp.result_type(p)), params))

    return optax.GradientTransformationExtraArgs(init_fn, tx.update)


def _is_array(path, value) -> bool:
    del path
    return isinstance(value, (jax.Array, np.ndarray))


def current_learning_rate(opt_state: Any) -> jax.Array:
    """The learning rate stored in a :func:`make_optimizer` state.

    ``lr(0)`` right after ``init``; after ``n >= 1`` updates, ``lr(n - 1)``:
    the rate the most recent update applied. Works under ``jit``.

    Raises:
      ValueError: the state holds no injected ``learning_rate`` (it was not
        built by :func:`make_optimizer` or ``optax.inject_hyperparams``).
    """
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "learning_rate")
    values = [v for p, v in found if _is_array(p, v)]
    if len(values) != 1:
        raise ValueError(
            "optimizer state has "
            + ("no" if not values else f"{len(values)}")
            + " injected 'learning_rate' entries; build the optimizer with "
            "jaxnet.optim.make_optimizer (or optax.inject_hyperparams)"
        )
    return values[0]
