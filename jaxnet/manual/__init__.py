"""Manual ops: the same signatures as :mod:`jaxnet.ops`, with the course's
hand-derived backward passes attached through ``jax.custom_vjp``.

They support reverse-mode differentiation (``grad``, ``vjp``) and ``jit`` /
``vmap``; forward-mode (``jvp``, ``jacfwd``) is not defined for custom_vjp.

Each manual op lives next to its reference forward in its family module
(``jaxnet/ops/<family>.py``, as ``<name>_manual``); this namespace is derived
from the op table.
"""
import jaxnet.ops  # noqa: F401  (registers every op)
from jaxnet.ops._registry import REGISTRY as _REGISTRY

globals().update({_name: _spec.manual for _name, _spec in _REGISTRY.items()})

__all__ = list(_REGISTRY)
