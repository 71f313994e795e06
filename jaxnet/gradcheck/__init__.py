"""Gradient checking: numerical gradients, the course's relative error,
per-argument reports, and the audit of every registered op: float64 gradients
(:mod:`~jaxnet.gradcheck.audit`), float32 at extreme inputs
(:mod:`~jaxnet.gradcheck.float32`, :mod:`~jaxnet.gradcheck.extremes`) and NumPy
forward oracles (:mod:`~jaxnet.gradcheck.oracles`; each op's oracle is registered with
the op, ``ORACLES`` and ``ORACLE_CASES`` are views of the registry)."""
from jaxnet.gradcheck.numeric import numerical_gradient, numerical_vjp, sparse_numerical_gradient
from jaxnet.gradcheck.report import ArgReport, Comparison, compare, format_table, norm_rel_error, rel_error
from jaxnet.gradcheck.audit import (FORWARD_TOL, JIT_TOL, MANUAL_VS_AUTODIFF_TOL, SCALE_TOL, AuditResult, audit,
                                    audit_case, failure_details, results_table)
from jaxnet.gradcheck.float32 import FLOAT32_TOL, Float32Result, audit_float32, float32_case
from jaxnet.gradcheck.oracles import (ORACLE_CASES, ORACLE_TOL, ORACLES, OracleResult, check_oracles,
                                      missing_oracles, oracle_case)


def check_grads(f, args, *, argnums=0, h=1e-5):
    """Compare ``jax.grad`` of a scalar ``f`` with centered differences, in float64.

    Returns a :class:`Comparison` (print it for a per-argument table).
    Use it on a whole model loss: ``check_grads(loss_fn, (params_leaf, ...))``.
    """
    import jax
    t = argnums if isinstance(argnums, tuple) else (argnums,)
    analytic = jax.grad(f, argnums=t)(*args)
    numeric = numerical_gradient(f, args, argnums=t, h=h)
    return compare(analytic, numeric, [f"arg{i}" for i in t], "autodiff vs numeric")


__all__ = ["numerical_gradient", "numerical_vjp", "sparse_numerical_gradient", "ArgReport", "Comparison",
           "compare", "format_table", "rel_error", "AuditResult", "audit", "audit_case", "failure_details",
           "results_table", "check_grads", "FORWARD_TOL", "JIT_TOL", "MANUAL_VS_AUTODIFF_TOL", "SCALE_TOL",
           "norm_rel_error", "FLOAT32_TOL", "Float32Result", "audit_float32", "float32_case", "ORACLES",
           "ORACLE_CASES", "ORACLE_TOL", "OracleResult", "check_oracles", "missing_oracles", "oracle_case"]
