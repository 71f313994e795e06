"""The op registry: every op with its reference, manual twin, input sampler and
the configurations to sweep.  The gradient audit and the test suite both run
from it.

The specs are registered by the family modules that define the ops
(``jaxnet/ops/<family>.py``, each ending its op with ``register(OpSpec(...))``);
this module gathers them.  ``python -m jaxnet.registry`` prints :func:`op_table`.
"""
from __future__ import annotations

import jaxnet.ops  # noqa: F401  (importing the family modules registers every op)
from jaxnet.ops._registry import (REGISTRY, Case, OpSpec, OracleCase, all_cases, case, get, op_table,
                                  oracle_case, register)
from jaxnet.ops._sampling import KINK_GAP

SPECS: tuple[OpSpec, ...] = tuple(REGISTRY.values())

__all__ = ["REGISTRY", "SPECS", "Case", "OpSpec", "KINK_GAP", "all_cases", "case", "get", "op_table", "register"]

if __name__ == "__main__":
    print(op_table())
