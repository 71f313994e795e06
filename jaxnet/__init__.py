"""jaxnet: the CS231n course as a JAX library.

Pure ops with hand-derived backward passes (:mod:`jaxnet.manual`) next to
their autodiff references (:mod:`jaxnet.ops`), a gradient audit
(:mod:`jaxnet.gradcheck`), layers, models and a jit-compiled training loop.
"""
from jaxnet import _xla_flags

XLA_FLAGS_ADDED = _xla_flags.apply()   # before anything starts a JAX backend

from jaxnet._cache import enable_compilation_cache
from jaxnet._impl import IMPLS, default_impl, resolve_impl, use_impl
from jaxnet import functional, manual, ops

__version__ = "0.1.0"
__all__ = ["IMPLS", "default_impl", "resolve_impl", "use_impl", "functional", "manual", "ops",
           "enable_compilation_cache"]
