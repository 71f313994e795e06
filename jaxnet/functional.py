"""Every op, dispatched to its reference or manual twin.

``jaxnet.functional.conv2d(x, w, b, stride=2, impl="auto")`` calls the
reference (autodiff backward); ``impl="manual"`` the hand-written backward;
``impl=None`` (the default) follows :func:`jaxnet.use_impl`.
"""
from __future__ import annotations

import functools

from jaxnet import manual, ops
from jaxnet._impl import resolve_impl
from jaxnet.ops import OP_NAMES


def _dispatching(name):
    reference, hand = getattr(ops, name), getattr(manual, name)

    @functools.wraps(reference)
    def op(*args, impl=None, **kwargs):
        return (hand if resolve_impl(impl) == "manual" else reference)(*args, **kwargs)

    op.__doc__ = (reference.__doc__ or "") + "\n\n    impl: 'auto' | 'manual' | None (the current default).\n"
    return op


for _name in OP_NAMES:
    globals()[_name] = _dispatching(_name)

__all__ = list(OP_NAMES)
