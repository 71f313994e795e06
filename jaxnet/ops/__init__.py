"""Reference ops: plain ``jax.numpy`` forwards, differentiated by autodiff.

Each op is defined, with its manual twin and its audit registration, in one
family module (``linear``, ``activations``, ``losses``, ``conv``, ``pool``,
``norm``, ``regularization``, ``sequence``, ``recurrent``, ``attention``, ``style``,
``generative``, ``upsample``, ``detection``).  This namespace,
:mod:`jaxnet.manual` and ``OP_NAMES`` are derived from the op table those modules fill
(:mod:`jaxnet.ops._registry`); :mod:`jaxnet.functional` picks a path per call.
"""
# Importing the family modules registers their ops; this order is the order of
# OP_NAMES and of the gradient audit.
from jaxnet.ops import linear, activations, losses, conv, pool, norm, regularization  # noqa: F401
from jaxnet.ops import sequence, recurrent  # noqa: F401
from jaxnet.ops import attention  # noqa: F401
from jaxnet.ops import style  # noqa: F401
from jaxnet.ops import generative  # noqa: F401
from jaxnet.ops import upsample, detection  # noqa: F401
from jaxnet.ops._geometry import conv_output_size
from jaxnet.ops._registry import REGISTRY as _REGISTRY

OP_NAMES: tuple[str, ...] = tuple(_REGISTRY)

globals().update({_name: _spec.reference for _name, _spec in _REGISTRY.items()})

__all__ = [*OP_NAMES, "OP_NAMES", "conv_output_size"]
