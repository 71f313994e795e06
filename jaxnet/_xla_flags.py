"""XLA flags jaxnet sets for speed, before the backend starts, on CPU only.

``--xla_cpu_experimental_ynn_fusion_type=-individual_convolution`` keeps XLA's
YNNPACK fusions but sends single convolutions to XLA's own (Eigen) CPU
convolution, which `jaxnet bench` measures about 2x faster for CIFAR-sized
NHWC convolutions on CPU (docs/performance.md).  The flag only
concerns the CPU backend; on GPU/TPU it changes nothing.

Opt out with ``JAXNET_XLA_FLAGS=0``; a value the user already put in
``XLA_FLAGS`` for the same flag is never overridden.  Nothing is changed once a
JAX backend is running (flags are read only at start-up).
"""
from __future__ import annotations

import os

CPU_FLAGS = ("--xla_cpu_experimental_ynn_fusion_type=-individual_convolution",)


def backend_may_have_started() -> bool:
    """True once a JAX backend runs (or when this jax cannot say): process-start settings no longer apply."""
    try:
        from jax._src import xla_bridge
        return bool(xla_bridge.backends_are_initialized())
    except (ImportError, AttributeError):  # pragma: no cover - other jax versions: be conservative
        return True


def apply() -> list[str]:
    """Append jaxnet's CPU flags to ``XLA_FLAGS`` if allowed; return the flags added."""
    if os.environ.get("JAXNET_XLA_FLAGS", "1") == "0" or backend_may_have_started():
        return []
    current = os.environ.get("XLA_FLAGS", "")
    added = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
    if added:
        os.environ["XLA_FLAGS"] = " ".join([current] + added).strip()
    return added
