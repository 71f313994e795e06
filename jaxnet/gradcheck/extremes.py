"""Extreme inputs for the float32 pass, derived from each op's registered sampler.

:func:`extreme_inputs` turns one float32 sample of a case into labelled
argument tuples.  Where an op's :class:`~jaxnet.ops._registry.OpSpec` sets
``extremes``, that hook decides; otherwise :data:`OVERRIDES` (keyed by op
name) does; otherwise the generic rule :func:`scaled`:

every floating-point array argument is multiplied by one common factor,
chosen so that the first one's largest entry has magnitude 1e2, 1e4 and 1e-4,
with both signs (the largest entry is then exactly +T or -T: logits of +-100
and +-1e4, and tiny inputs).  One common factor keeps the relations the
samplers arrange: ReLU inputs stay away from 0, max-pool and maxout inputs
stay distinct, ``pred - target`` of the L1 loss stays away from 0.  Integer
labels, PRNG keys and ``None`` are left alone.

A hook or an override has the signature ``extremes(args, case) -> iterable of
(label, args)``; the floating and integer arguments arrive as NumPy arrays
(float32, int32), so deriving inputs compiles nothing.  The batch-of-one copies (each op's first case with a larger
batch, resampled with a leading 1) come from the pass, not from the hooks.
Nothing here sits exactly on a kink (0 for the ReLU family, the hinge, ties
for max pool): scaling by a nonzero factor cannot move an input onto one.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np

from jaxnet.ops._registry import Case, OpSpec, _is_float_array

SCALES = (1e2, 1e4, 1e-4)
"""The first floating input's largest magnitude after scaling (each with both signs)."""

ALL_EQUAL = (1.3, -7.0)
"""Constants for the norms' all-equal (zero-variance) inputs: one O(1), one large and
not a sum of few powers of two, so the mean may round and the variance is ulps, not 0."""


def _label(t: float) -> str:
    return f"{t:+.0e}"


def _factor(x, target: float) -> float:
    peak = float(np.max(np.abs(x)))
    return target / peak if peak > 0 else target


def _scale_args(args, factors: dict) -> tuple:
    """``args`` with ``args[i] * factors[i]`` (Python floats keep each array's dtype)."""
    return tuple(a * factors[i] if i in factors else a for i, a in enumerate(args))


def _float_indices(args) -> list:
    return [i for i, a in enumerate(args) if _is_float_array(a)]


def _signed_targets():
    for t in SCALES:
        for sign in (1.0, -1.0):
            yield sign * t


def scaled(args, case: Case, only: Iterable[int] | None = None) -> list:
    """The generic rule: every floating input (or those at ``only``) times one common factor.

    The factor brings the first scaled input's largest entry to each signed
    target in :data:`SCALES`.  Labels: ``"scale=+1e+02"``: the first input's
    largest entry is +-100 and the factor is positive.
    """
    idx = list(only) if only is not None else _float_indices(args)
    if not idx:
        return [("as sampled", tuple(args))]
    out = []
    for t in _signed_targets():
        c = _factor(args[idx[0]], t)
        out.append((f"scale={_label(t)}", _scale_args(args, {i: c for i in idx})))
    return out


# ------------------------------------------------------------------------------------- the overrides

def _prelu(args, case):
    """PReLU: only x is scaled; alpha stays a slope in (0.1, 0.4)."""
    return scaled(args, case, only=(0,))


def _sigmoid_cross_entropy(args, case):
    """Logits scaled; targets at the ends of their range [0, 1] (rounded to 0 or 1)."""
    logits, targets = args
    hard = np.round(targets)
    return [(label + " targets=0|1", (z, hard)) for label, (z, _) in scaled(args, case, only=(0,))]


def _constant_like(x, value):
    return np.full_like(x, value)


def _batch_norm(args, case):
    """Batch norm: x and the running mean scaled by c, the running variance by c**2 (its units),
    gamma and beta kept; then all-equal x (zero batch variance) and a zero running variance."""
    x, gamma, beta, rm, rv = args
    out = []
    for t in _signed_targets():
        c = _factor(x, t)
        out.append((f"scale={_label(t)}", (x * c, gamma, beta, rm * c, rv * (c * c))))
    for v in ALL_EQUAL:
        out.append((f"x all {v:g}", (_constant_like(x, v), gamma, beta, rm, rv)))
    out.append(("running_var=0", (x, gamma, beta, rm, np.zeros_like(rv))))
    return out


def _feature_norm(args, case):
    """Layer and group norm: x scaled (both signs), gamma and beta kept; then all-equal x."""
    out = scaled(args, case, only=(0,))
    x = args[0]
    for v in ALL_EQUAL:
        out.append((f"x all {v:g}", (_constant_like(x, v),) + tuple(args[1:])))
    return out


OVERRIDES: dict[str, Callable] = {
    "prelu": _prelu,
    "sigmoid_cross_entropy": _sigmoid_cross_entropy,
    "batch_norm": _batch_norm,
    "spatial_batch_norm": _batch_norm,
    "batch_norm_relu": _batch_norm,
    "layer_norm": _feature_norm,
    "group_norm": _feature_norm,
}
"""Per-op rules where the generic one does not fit, keyed by op name.  A family can
register its own with ``OpSpec(..., extremes=...)``, which takes precedence."""


def rule_for(spec: OpSpec) -> Callable:
    """The op's extreme-input rule: its spec's hook, else its override, else :func:`scaled`."""
    if spec.extremes is not None:
        return spec.extremes
    return OVERRIDES.get(spec.name, scaled)


def extreme_inputs(spec: OpSpec, case: Case, args) -> list:
    """Labelled argument tuples for one float32 sample of ``case``."""
    return [(label, tuple(a)) for label, a in rule_for(spec)(tuple(args), case)]


def batch_of_one(case: Case) -> Case | None:
    """``case`` with its batch (the leading axis of ``dims["x"]``) set to 1, or None if it is 1."""
    x = case.dims.get("x")
    if not x or x[0] == 1:
        return None
    return Case(kwargs=case.kwargs, dims={**case.dims, "x": (1,) + tuple(x[1:])})

