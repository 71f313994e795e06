"""The backward-path switch: ``"autodiff"`` (reference + autodiff) or ``"manual"``.

``"auto"`` is accepted everywhere as an alias of ``"autodiff"``.

The choice is read when a function is *traced*. A jitted function keeps the
path it was traced with, so pick the path before the first call (or pass
``impl=`` explicitly, as the layers in :mod:`jaxnet.nn` do).
"""
from __future__ import annotations

import contextlib
import threading

IMPLS = ("autodiff", "manual")
ALIASES = {"auto": "autodiff"}
_state = threading.local()


def default_impl() -> str:
    """The path used when an op is called with ``impl=None`` (default ``"manual"``)."""
    return getattr(_state, "impl", "manual")


def resolve_impl(impl: str | None) -> str:
    """Return ``impl`` checked (aliases resolved), or the current default when it is ``None``."""
    if impl is None:
        return default_impl()
    if isinstance(impl, str):
        impl = ALIASES.get(impl, impl)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} (or the alias 'auto' for 'autodiff'), got {impl!r}")
    return impl


@contextlib.contextmanager
def use_impl(impl: str):
    """Context manager flipping the default path for every op called inside.

    >>> with jaxnet.use_impl("autodiff"):
    ...     loss = model_loss(params, x)   # reference ops, autodiff backward
    """
    impl = resolve_impl(impl)
    previous = default_impl()
    _state.impl = impl
    try:
        yield impl
    finally:
        _state.impl = previous
