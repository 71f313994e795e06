"""The oracle check: both paths of every registered op against its NumPy oracle, in float64.

The gradient audit compares the manual forward with the reference forward,
often the same expression: a formula both paths share (a biased variance
where the course asks for it, padding on the wrong side, a momentum the other
way round) passes it.  So every op registers, next to its two paths in its
family module (``jaxnet/ops/<family>.py``), an oracle: a plain-NumPy float64
forward written out with loops and ``einsum`` (``OpSpec.oracle``; convolution
and pooling loop over output positions), and small fixed inputs for it
(``OpSpec.oracle_cases``): two or more per op, covering its options (stride,
padding, groups, dilation; train and eval for the norms, whose three outputs,
running statistics included, are all compared).  This module holds only the
check: :func:`check_oracles` runs both paths on those inputs in float64 and
requires each output within :data:`ORACLE_TOL` of the oracle's, relative to
the tensor's scale (:func:`~jaxnet.gradcheck.report.norm_rel_error`): two
float64 evaluations of the same formula in a different order differ by a few
ulps of the scale (1e-16 each); a wrong formula is off by a large fraction of it.

:data:`ORACLES` and :data:`ORACLE_CASES` are read-only views of the registry
(op name to oracle, op name to fixed inputs), so they follow every
registration.  A registered op without an oracle gets one failing row from
:func:`check_oracles` (:func:`missing_oracles` names them).

Dropout's oracle applies ``jax.random.bernoulli(key, 1 - rate, x.shape)``, the
mask the op documents for its key (NumPy cannot reproduce JAX's generator);
``tests/test_oracle.py`` checks the mask's statistics separately.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from typing import Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import registry
from jaxnet.gradcheck.report import format_table, norm_rel_error

ORACLE_TOL = 1e-12

OracleCase = registry.OracleCase

NO_ORACLE = "no oracle registered (OpSpec.oracle, OpSpec.oracle_cases)"
"""The ``config`` of the failing row :func:`check_oracles` gives an op without an oracle or fixed inputs."""


# -------------------------------------------------------------------------------- views of the registry

class _RegistryView(Mapping):
    """Op name -> ``value(spec)`` for every registered op that has an oracle, in registration order.

    Computed on each lookup from the live registry, so an op registered later (or a
    temporary registration removed again) is seen as it is now.
    """

    def __init__(self, value: Callable, what: str):
        self._value, self._what = value, what

    def __getitem__(self, name: str):
        spec = registry.REGISTRY.get(name)
        if spec is None or spec.oracle is None:
            raise KeyError(f"{name!r} has no {self._what}" + ("" if spec is None else
                           " (register it with OpSpec(..., oracle=..., oracle_cases=...))"))
        return self._value(spec)

    def __iter__(self) -> Iterator[str]:
        return iter([n for n, spec in registry.REGISTRY.items() if spec.oracle is not None])

    def __len__(self) -> int:
        return sum(spec.oracle is not None for spec in registry.REGISTRY.values())

    def __repr__(self) -> str:
        return f"<{self._what} of {len(self)} registered ops: {', '.join(self)}>"


ORACLES: Mapping[str, Callable] = _RegistryView(lambda spec: spec.oracle, "NumPy oracle")
"""Op name -> its NumPy float64 forward (``OpSpec.oracle``): same positional arguments and keywords as the op."""

ORACLE_CASES: Mapping[str, tuple] = _RegistryView(lambda spec: spec.oracle_inputs(), "oracle fixed inputs")
"""Op name -> its fixed inputs (``OpSpec.oracle_cases``, :class:`OracleCase`), covering the op's options."""


def missing_oracles(names: Iterable[str] | None = None) -> list[str]:
    """The registered ops (or those of ``names``) without an oracle or without fixed inputs for it."""
    specs = [registry.get(n) for n in names] if names else list(registry.REGISTRY.values())
    return [s.name for s in specs if s.oracle is None or not s.oracle_inputs()]


# ------------------------------------------------------------------------------------------- the check

@dataclasses.dataclass(frozen=True)
class OracleResult:
    """One fixed input: each path's largest error against the oracle, of the tensor's scale."""
    op: str
    config: str
    reference_rel_error: float
    manual_rel_error: float
    tol: float
    seconds: float
    dtype: str = "float64"
    check = "oracle"

    @property
    def passed(self) -> bool:
        return self.reference_rel_error <= self.tol and self.manual_rel_error <= self.tol

    def to_json(self) -> dict:
        d = {"check": self.check}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        d["passed"] = self.passed
        return d


def _as_leaves(result):
    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(result)]


def oracle_case(spec: registry.OpSpec, oc: OracleCase, oracle: Callable | None = None) -> OracleResult:
    """Both paths of ``spec`` on ``oc`` against ``oracle`` (default: the op's own, ``spec.oracle``), float64."""
    oracle = spec.oracle if oracle is None else oracle
    if oracle is None:
        raise ValueError(f"op {spec.name!r} has no NumPy oracle: register it with OpSpec(..., oracle=..., "
                         f"oracle_cases=...)")
    start = time.perf_counter()
    with jax.enable_x64(True):       # dropout's mask: drawn in the mode the op runs in
        want = _as_leaves(oracle(*oc.args, **oc.kwargs))
        args = tuple(a if a is None or np.asarray(a).dtype == np.uint32 else jnp.asarray(a) for a in oc.args)
        case = registry.Case(kwargs=oc.kwargs, dims={})
        # each path as one jitted program: eagerly, every small op would compile its own kernel
        # (jit and eager agree: tests/test_transforms.py)
        got = {impl: _as_leaves(jax.jit(lambda a, impl=impl: spec.call(impl, a, case))(args))
               for impl in ("autodiff", "manual")}
    errors = []
    for impl in ("autodiff", "manual"):
        if len(got[impl]) != len(want) or any(g.shape != w.shape for g, w in zip(got[impl], want)):
            errors.append(float("inf"))
        else:
            errors.append(norm_rel_error(got[impl], want))
    return OracleResult(spec.name, oc.label, errors[0], errors[1], ORACLE_TOL, time.perf_counter() - start)


def check_oracles(names: Iterable[str] | None = None, progress=None) -> list[OracleResult]:
    """Every fixed input of every registered op (or only ``names``) against its oracle.

    An op without an oracle or fixed inputs gives one failing row (``config`` :data:`NO_ORACLE`,
    errors inf, after the others), so neither the CLI nor the tests pass it silently.
    """
    specs = [registry.get(n) for n in (list(names) if names else list(registry.REGISTRY))]
    missing = missing_oracles([s.name for s in specs])
    todo = [(spec, oc) for spec in specs if spec.name not in missing for oc in spec.oracle_inputs()]
    results = [oracle_case(spec, oc) for spec, oc in (progress(todo) if progress else todo)]
    return results + [OracleResult(name, NO_ORACLE, float("inf"), float("inf"), ORACLE_TOL, 0.0) for name in missing]


def oracle_table(results: list[OracleResult]) -> str:
    """One row per op: fixed inputs run, each path's worst error against the oracle."""
    by_op: dict[str, list[OracleResult]] = {}
    for r in results:
        by_op.setdefault(r.op, []).append(r)
    rows = [[op, str(len(rs)), f"{max(r.reference_rel_error for r in rs):.1e}",
             f"{max(r.manual_rel_error for r in rs):.1e}", "ok" if all(r.passed for r in rs) else "FAIL"]
            for op, rs in by_op.items()]
    return format_table(["op", "inputs", "reference vs oracle", "manual vs oracle", "pass"], rows)


def oracle_failures(results: list[OracleResult]) -> str:
    """One line per failed input (an op without an oracle: one line saying so)."""
    return "\n".join(f"{r.op}: {NO_ORACLE}" if r.config == NO_ORACLE else
                     f"{r.op} [{r.config}]: reference vs oracle {r.reference_rel_error:.2e}, manual vs oracle "
                     f"{r.manual_rel_error:.2e}" for r in results if not r.passed)
