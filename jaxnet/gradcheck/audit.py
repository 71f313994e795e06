"""The gradient audit: every registered op and configuration, in float64.

For each case it measures
- forward: manual vs reference outputs;
- manual vs autodiff: the VJP of the manual op against ``jax.vjp`` of the
  reference, with a random cotangent;
- manual vs numeric and autodiff vs numeric: both against centered
  differences of ``sum(f * cotangent)``, measured with
  :func:`~jaxnet.gradcheck.report.scaled_rel_error` (see there why);
- jit: the jitted manual VJP against the un-jitted one.

Forward and manual vs autodiff are judged twice: entry by entry with the
course's relative error (<= 1e-9), and against each tensor's scale with
:func:`~jaxnet.gradcheck.report.norm_rel_error` (<= 1e-12).  The second
catches one entry off by 1e-9 of its tensor's largest entry, which the first
reads as 5e-10 at that entry (``|d| / (|a| + |b|)``) and lets through; two
float64 computations of the same quantity differ by a few ulps of the scale
(at most 2e-15 over the registered cases and seeds 0-2), so 1e-12 leaves a
margin of 500.

The float32 pass (``jaxnet/gradcheck/float32.py``) and the NumPy oracles
(``jaxnet/gradcheck/oracles.py``) cover what this float64 audit cannot see:
overflow at extreme inputs, and a forward formula both paths share.

Every floating-point array argument is differentiated (``OpSpec.differentiated``:
integer labels, PRNG keys and absent arguments are left out), unless the op's
spec narrows the set and says why.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Iterable

import jax
import jax.numpy as jnp

from jaxnet import registry
from jaxnet.ops import _sampling as S
from jaxnet.gradcheck.numeric import numerical_vjp
from jaxnet.gradcheck.report import Comparison, compare, format_table, norm_rel_error, rel_error

FORWARD_TOL = 1e-9
MANUAL_VS_AUTODIFF_TOL = 1e-9
JIT_TOL = 1e-9
SCALE_TOL = 1e-12     # forward and manual vs autodiff: max |a - b| / the tensor's scale
DTYPE = jnp.float64   # the audit's precision: finite differences need double precision


@dataclasses.dataclass(frozen=True)
class AuditResult:
    op: str
    config: str
    forward_rel_error: float
    manual_vs_autodiff_rel_error: float
    manual_vs_numeric_rel_error: float
    autodiff_vs_numeric_rel_error: float
    jit_rel_error: float
    numeric_tol: float
    seconds: float
    dtype: str = "float64"
    differentiated: tuple = ()   # names of the arguments whose gradients were compared
    forward_scale_error: float = 0.0                 # norm_rel_error of the forward outputs
    manual_vs_autodiff_scale_error: float = 0.0      # norm_rel_error of the gradients
    comparisons: tuple = dataclasses.field(default=(), repr=False, compare=False)
    check = "gradient"

    @property
    def passed(self) -> bool:
        return (self.forward_rel_error <= FORWARD_TOL
                and self.manual_vs_autodiff_rel_error <= MANUAL_VS_AUTODIFF_TOL
                and self.forward_scale_error <= SCALE_TOL
                and self.manual_vs_autodiff_scale_error <= SCALE_TOL
                and self.jit_rel_error <= JIT_TOL
                and self.manual_vs_numeric_rel_error <= self.numeric_tol
                and self.autodiff_vs_numeric_rel_error <= self.numeric_tol)

    def to_json(self) -> dict:
        d = {"check": self.check}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "comparisons"})
        d["differentiated"] = list(self.differentiated)
        d["passed"] = self.passed
        return d


def audit_case(spec: registry.OpSpec, case: registry.Case, *, seed: int = 0) -> AuditResult:
    """Audit one op configuration in float64, differentiating ``spec.differentiated(args)``.

    Compared: forwards, manual vs autodiff vs central differences (one jitted program), and
    the manual VJP run op by op without ``jit`` against its jitted self.
    """
    start = time.perf_counter()
    with jax.enable_x64(True):
        key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(f"{spec.name} {case.label}".encode()))
        k_args, k_ct = jax.random.split(key)
        args = spec.sample(k_args, case.dims, DTYPE)
        diff = spec.differentiated(args)

        f_ref, f_man = (spec.of_differentiated(impl, args, case, diff) for impl in ("autodiff", "manual"))
        primals = tuple(args[i] for i in diff)
        out = jax.eval_shape(f_ref, *primals)
        ct = jnp.asarray(S.normal(k_ct, out.shape, DTYPE))   # NumPy's draw: no kernel to compile

        @jax.jit
        def jitted(primals, ct):
            # everything but the un-jitted manual VJP is compiled as one program
            forward = (spec.call("autodiff", args, case), spec.call("manual", args, case))
            g_ref = jax.vjp(f_ref, *primals)[1](ct)
            g_man = jax.vjp(f_man, *primals)[1](ct)
            g_num = numerical_vjp(f_ref, primals, ct, argnums=tuple(range(len(primals))))
            return forward, g_ref, g_man, g_num

        (fwd_ref, fwd_man), g_ref, g_man_jit, g_num = jitted(primals, ct)
        g_man = jax.vjp(f_man, *primals)[1](ct)          # eager: op by op, no jit

        names = spec.arg_names(diff)
        comps = (compare(g_man, g_ref, names, "manual vs autodiff"),
                 compare(g_man, g_num, names, "manual vs numeric"),
                 compare(g_ref, g_num, names, "autodiff vs numeric"),
                 compare(g_man_jit, g_man, names, "jit vs no jit"))
    return AuditResult(spec.name, case.label, rel_error(fwd_ref, fwd_man), comps[0].max_rel_error,
                       comps[1].max_scaled_error, comps[2].max_scaled_error,
                       comps[3].max_rel_error,
                       spec.numeric_tol, time.perf_counter() - start, jnp.dtype(DTYPE).name, tuple(names),
                       forward_scale_error=norm_rel_error(fwd_ref, fwd_man),
                       manual_vs_autodiff_scale_error=comps[0].max_norm_error, comparisons=comps)


def audit(names: Iterable[str] | None = None, *, seed: int = 0, progress=None) -> list[AuditResult]:
    """Audit every registered op and configuration (or only ``names``)."""
    cases = list(registry.all_cases(list(names) if names else None))
    results = []
    for spec, case in (progress(cases) if progress else cases):
        results.append(audit_case(spec, case, seed=seed))
    return results


def results_table(results: list[AuditResult]) -> str:
    """The audit as a table (Markdown-compatible)."""
    rows = [[r.op, r.config, f"{r.forward_rel_error:.1e}", f"{r.manual_vs_autodiff_rel_error:.1e}",
             f"{max(r.forward_scale_error, r.manual_vs_autodiff_scale_error):.1e}",
             f"{r.manual_vs_numeric_rel_error:.1e}", f"{r.autodiff_vs_numeric_rel_error:.1e}",
             f"{r.jit_rel_error:.1e}", "ok" if r.passed else "FAIL"] for r in results]
    return format_table(["op", "config", "forward", "manual/autodiff", "of scale", "manual/numeric",
                         "autodiff/numeric", "jit", "pass"], rows)


def failure_details(results: list[AuditResult]) -> str:
    """Per-argument tables of every failing case."""
    parts = []
    for r in results:
        if not r.passed:
            parts.append(f"## {r.op} [{r.config}]")
            parts.extend(c.table() for c in r.comparisons)
    return "\n\n".join(parts)
