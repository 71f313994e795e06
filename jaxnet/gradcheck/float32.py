"""The float32 pass: both paths at extreme inputs, in the precision training uses.

The float64 audit cannot see overflow: a textbook sigmoid backward
``dy * exp(-x) / (1 + exp(-x))**2`` is right to 1e-16 at every sampled input
and returns NaN at x = -100 in float32 (``exp(100)`` overflows, inf / inf).
For every registered case, this pass draws one float32 sample, derives
extreme inputs from it (:mod:`jaxnet.gradcheck.extremes`: every floating
input scaled so the first one's largest entry is +-1e2, +-1e4 or +-1e-4; the
norms also get all-equal inputs, tiny and zero variances), adds a batch-of-one
copy of the first case of each op that has none, and requires, jitted as training runs:

- finite where the reference is: no manual output entry and no manual
  gradient entry is NaN or inf where the reference's output or its autodiff
  gradient is finite (entries where the reference is not finite are counted
  in ``reference_nonfinite`` and left out of the comparison);
- agreement: manual vs reference outputs and manual vs autodiff gradients
  within :data:`FLOAT32_TOL` of each tensor's scale
  (:func:`~jaxnet.gradcheck.report.norm_rel_error`, ``max |a - b| / max |b|``),
  or, where they differ by more, the manual tensor no further from the float64
  answer (the reference and its autodiff gradient computed in float64 at the same
  inputs) than the float32 reference is, within the same tolerance: at an
  ill-conditioned input (a batch norm of all-equal values, where x - mean is
  the rounding of the mean amplified by 1/sqrt(eps)) the float32 reference is
  itself rounding noise, and a kernel that rounds the other way (or exactly)
  is as right as it.  The error reported is then that excess over the reference's.

The tolerance: float32 rounds to 6e-8 (2**-24) relative; two correct
computations of the same quantity in a different order (a reduction over k
terms, the norms' backward ``m dxhat - sum(dxhat) - xhat sum(dxhat xhat)``)
differ by up to about k ulps of the tensor's scale, k <= a few hundred in the
registered cases.  1e-4 is about 1700 ulps: above that round-off, and far
below what a wrong backward produces (a wrong factor or term is off by O(1) of
the scale; NaN or inf fails outright).  It is measured against the tensor's
scale, not entry by entry: at x = -100 the sigmoid's gradient is 4e-44, and
an entry that small carries no relative precision in float32.  Exactness
(1e-9) is the float64 audit's job.
"""
from __future__ import annotations

import dataclasses
import time
import zlib
from typing import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import registry
from jaxnet.gradcheck.extremes import batch_of_one, extreme_inputs
from jaxnet.gradcheck.report import format_table

FLOAT32_TOL = 1e-4
DTYPE = jnp.float32


@dataclasses.dataclass(frozen=True)
class Float32Result:
    """One extreme input of one case: errors against each tensor's scale and non-finite counts."""
    op: str
    config: str                      # the case's label, then the extreme input's
    forward_rel_error: float         # manual vs reference outputs, of the tensor's scale
    manual_vs_autodiff_rel_error: float
    manual_nonfinite: int            # manual entries NaN/inf where the reference's are finite
    reference_nonfinite: int         # reference entries NaN/inf (left out of the comparison)
    tol: float
    seconds: float
    dtype: str = "float32"
    differentiated: tuple = ()
    worst: str = ""                  # the output or argument with the largest error
    check = "float32"

    @property
    def passed(self) -> bool:
        return (self.manual_nonfinite == 0 and self.forward_rel_error <= self.tol
                and self.manual_vs_autodiff_rel_error <= self.tol)

    def to_json(self) -> dict:
        d = {"check": self.check}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        d["differentiated"] = list(self.differentiated)
        d["passed"] = self.passed
        return d


def _compare(manual, reference, names, truth=None):
    """(largest error of the tensors' scale, its name, manual non-finite where reference finite,
    reference non-finite), over finite entries of both.  With ``truth`` (the float64 answers), a
    tensor's error is at most how much further than the reference the manual one is from it."""
    worst, where, bad, ref_bad = 0.0, "", 0, 0
    for i, (name, m, r) in enumerate(zip(names, manual, reference)):
        m, r = np.asarray(m, np.float64), np.asarray(r, np.float64)
        fr, fm = np.isfinite(r), np.isfinite(m)
        ref_bad += int(np.sum(~fr))
        bad += int(np.sum(fr & ~fm))
        both = fr & fm
        if not both.any():
            continue
        scale = float(np.max(np.abs(r[both])))
        scale = max(scale, float(np.max(np.abs(m[both]))))
        err = float(np.max(np.abs(m[both] - r[both]))) / scale if scale > 0 else 0.0
        if truth is not None and err > FLOAT32_TOL:
            t = np.asarray(truth[i], np.float64)[both]
            excess = float(np.max(np.abs(m[both] - t)) - np.max(np.abs(r[both] - t))) / scale
            err = min(err, max(excess, 0.0))
        if err > worst or not where:
            worst, where = err, name
    return worst, where, bad, ref_bad


def _output_names(tree):
    leaves = jax.tree_util.tree_leaves(tree)
    return ["output"] if len(leaves) == 1 else [f"output[{i}]" for i in range(len(leaves))]


def _to_float32(a):
    """A float64 sample's argument in the pass's dtypes: floats to float32, signed integers to
    int32; PRNG keys (typed, or raw uint32) and None as they are."""
    if a is None or jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a
    a = np.asarray(a)
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32)
    if np.issubdtype(a.dtype, np.signedinteger):
        return a.astype(np.int32)
    return a


def sample_float32(spec: registry.OpSpec, case: registry.Case, key) -> tuple:
    """The op's sampler run in float64, rounded to float32 (NumPy arrays; keys as they are).

    Drawn in float64 so that one process running the float64 audit first reuses its
    compiled samplers (they are keyed by shape and dtype); the samplers' guarantees
    (kinks avoided, distinct values) survive the rounding, which moves an entry by
    6e-8 of itself against their 1e-3 margins.
    """
    with jax.enable_x64(True):
        args = spec.sample(key, case.dims, jnp.float64)
        return tuple(_to_float32(a) for a in args)


def _float64_answers(spec, case, diff, args, ct):
    """The reference's outputs and autodiff gradients in float64 at the same (float32) inputs:
    (output leaves, gradient leaves), NumPy."""
    def up(a):
        return a if a is None or not np.issubdtype(np.asarray(a).dtype, np.floating) else np.asarray(a, np.float64)

    with jax.enable_x64(True):
        a64 = tuple(a if a is None or jnp.issubdtype(a.dtype, jax.dtypes.prng_key) else up(a) for a in args)

        def run(args, ct):
            primals = tuple(args[i] for i in diff)
            g = jax.vjp(spec.of_differentiated("autodiff", args, case, diff), *primals)[1](ct)
            return spec.call("autodiff", args, case), g

        f, g = jax.device_get(jax.jit(run)(a64, np.asarray(ct, np.float64)))
    return jax.tree_util.tree_leaves(f), list(g)


def float32_case(spec: registry.OpSpec, case: registry.Case, *, seed: int = 0,
                 label: str | None = None) -> list[Float32Result]:
    """Run one case's extreme inputs through both paths in float32 (one compiled program)."""
    label = case.label if label is None else label
    crc = zlib.crc32(f"float32 {spec.name} {label}".encode())
    with jax.enable_x64(False):
        sample = sample_float32(spec, case, jax.random.fold_in(jax.random.PRNGKey(seed), crc))
        diff = spec.differentiated(sample)
        names = spec.arg_names(diff)

        def outputs(args, ct):
            def restricted(impl):
                return spec.of_differentiated(impl, args, case, diff)
            primals = tuple(args[i] for i in diff)
            fwd = (spec.call("autodiff", args, case), spec.call("manual", args, case))
            g_ref = jax.vjp(restricted("autodiff"), *primals)[1](ct)
            g_man = jax.vjp(restricted("manual"), *primals)[1](ct)
            return fwd, g_ref, g_man

        out_shape = jax.eval_shape(lambda a: spec.differentiable_output(spec.call("autodiff", a, case)), sample)
        rng = np.random.default_rng([seed, crc])          # the cotangent: no compile per output shape
        ct = jnp.asarray(rng.standard_normal(out_shape.shape).astype(np.float32))
        run = jax.jit(outputs)        # one compile per case: the extreme inputs share shapes and dtypes
        results = []
        for variant, args in extreme_inputs(spec, case, sample):
            start = time.perf_counter()
            (f_ref, f_man), g_ref, g_man = jax.device_get(run(args, ct))
            f_ref, f_man = jax.tree_util.tree_leaves(f_ref), jax.tree_util.tree_leaves(f_man)
            fe, fw, fbad, fref = _compare(f_man, f_ref, _output_names(f_ref))
            ge, gw, gbad, gref = _compare(g_man, g_ref, [f"d{n}" for n in names])
            if max(fe, ge) > FLOAT32_TOL:     # is the float32 reference itself that far from float64?
                f64, g64 = _float64_answers(spec, case, diff, args, ct)
                fe, fw, fbad, fref = _compare(f_man, f_ref, _output_names(f_ref), f64)
                ge, gw, gbad, gref = _compare(g_man, g_ref, [f"d{n}" for n in names], g64)
            results.append(Float32Result(
                spec.name, f"{label} {variant}", fe, ge, fbad + gbad, fref + gref, FLOAT32_TOL,
                time.perf_counter() - start, jnp.dtype(DTYPE).name, tuple(names), fw if fe >= ge else gw))
    return results


def float32_cases(names: Iterable[str] | None = None):
    """(spec, case, label) for the pass: every registered case, plus, for an op none of whose
    cases has a batch of one, a batch-of-one copy of its first case."""
    out = []
    for name in (list(names) if names else list(registry.REGISTRY)):
        spec = registry.get(name)
        out.extend((spec, c, c.label) for c in spec.cases)
        ones = [batch_of_one(c) for c in spec.cases]
        one = None if any(c.dims.get("x", (0,))[0] == 1 for c in spec.cases) else \
            next((b for b in ones if b is not None), None)
        if one is not None:
            out.append((spec, one, one.label + " (batch of one)"))
    return out


def audit_float32(names: Iterable[str] | None = None, *, seed: int = 0, progress=None) -> list[Float32Result]:
    """The float32 pass over every registered op (or only ``names``)."""
    cases = float32_cases(names)
    results = []
    for spec, case, label in (progress(cases) if progress else cases):
        results.extend(float32_case(spec, case, seed=seed, label=label))
    return results


def float32_table(results: list[Float32Result]) -> str:
    """One row per op: extreme inputs run, the worst errors and where, non-finite counts."""
    by_op: dict[str, list[Float32Result]] = {}
    for r in results:
        by_op.setdefault(r.op, []).append(r)
    rows = []
    for op, rs in by_op.items():
        worst = max(rs, key=lambda r: max(r.forward_rel_error, r.manual_vs_autodiff_rel_error))
        rows.append([op, str(len(rs)), f"{max(r.forward_rel_error for r in rs):.1e}",
                     f"{max(r.manual_vs_autodiff_rel_error for r in rs):.1e}",
                     str(sum(r.manual_nonfinite for r in rs)), str(sum(r.reference_nonfinite for r in rs)),
                     worst.config, "ok" if all(r.passed for r in rs) else "FAIL"])
    return format_table(["op", "inputs", "forward", "manual/autodiff", "manual non-finite",
                         "reference non-finite", "worst at", "pass"], rows)


def float32_failures(results: list[Float32Result]) -> str:
    """One line per failing extreme input."""
    return "\n".join(f"{r.op} [{r.config}]: forward {r.forward_rel_error:.2e}, manual vs autodiff "
                     f"{r.manual_vs_autodiff_rel_error:.2e} (worst: {r.worst}), {r.manual_nonfinite} manual "
                     f"entries non-finite where the reference is finite" for r in results if not r.passed)
