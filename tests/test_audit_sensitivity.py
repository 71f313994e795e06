"""The audit's sensitivity, locked: small, realistic mistakes in a hand backward must fail it.

Each mutant wraps a registered manual op in a ``custom_vjp`` whose backward is
the op's real hand backward (reached through ``jax.vjp`` of the real manual
op) followed by a mutation, and is audited through an ``OpSpec`` like any
registered op.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import registry
from jaxnet.gradcheck import MANUAL_VS_AUTODIFF_TOL, SCALE_TOL, audit_case
from jaxnet.gradcheck.extremes import rule_for
from jaxnet.gradcheck.float32 import float32_case


def mutant(spec, mutate, name=None):
    """An OpSpec whose manual op is ``spec.manual`` with ``mutate(grads, primals, ct) -> grads``
    applied after its real backward.  The differentiated arguments go through the
    custom_vjp; the others (labels, keys, None) are closed over."""
    def manual(*args, **kwargs):
        diff = spec.differentiated(args)

        def real(*d):
            full = list(args)
            for i, v in zip(diff, d):
                full[i] = v
            return spec.manual(*full, **kwargs)

        @jax.custom_vjp
        def wrapped(*d):
            return real(*d)

        def fwd(*d):
            return real(*d), d

        def bwd(d, ct):
            grads = jax.vjp(real, *d)[1](ct)
            return tuple(mutate(list(grads), d, ct))

        wrapped.defvjp(fwd, bwd)
        return wrapped(*(args[i] for i in diff))

    return dataclasses.replace(spec, name=name or f"mutant_{spec.name}", manual=manual)


def _y(ct):
    """The differentiable output's cotangent (batch norm: the cotangent of y)."""
    return ct[0] if isinstance(ct, tuple) else ct


def _manual_vs_autodiff(r):
    return {a.name: (a.max_rel_error, a.norm_error) for a in r.comparisons[0].args}


@pytest.mark.parametrize("name", ["affine", "relu", "conv2d", "batch_norm"])
def test_unmutated_wrapper_passes(name):
    spec = registry.get(name)
    r = audit_case(mutant(spec, lambda g, d, ct: g), spec.cases[0])
    assert r.passed, r


# Each mutant below is audited on some ops in the default suite and on the rest in the slow tier (make
# test-slow): every mutation and every op keeps a default case (one audit compiles ~1-2 s).
@pytest.mark.parametrize("name", ["affine", pytest.param("relu", marks=pytest.mark.slow), "conv2d",
                                  pytest.param("batch_norm", marks=pytest.mark.slow)])
def test_gradient_off_by_1e_6_relative_fails(name):
    spec = registry.get(name)
    r = audit_case(mutant(spec, lambda g, d, ct: [v * (1 + 1e-6) for v in g]), spec.cases[0])
    assert not r.passed
    assert r.manual_vs_autodiff_rel_error == pytest.approx(5e-7, rel=1e-2)    # |d| / (|a| + |b|)
    assert r.manual_vs_autodiff_scale_error == pytest.approx(1e-6, rel=1e-2)
    assert r.autodiff_vs_numeric_rel_error <= spec.numeric_tol                  # the reference is still right


def _bump_largest(v, rel):
    flat = jnp.ravel(v)
    i = jnp.argmax(jnp.abs(flat))
    return jnp.reshape(flat.at[i].add(rel * jnp.abs(flat[i])), v.shape)


def _bump_middle(v, rel):
    """Add ``rel`` times the tensor's scale to the entry whose magnitude is the median."""
    flat = jnp.ravel(v)
    i = jnp.argsort(jnp.abs(flat))[flat.size // 2]
    return jnp.reshape(flat.at[i].add(rel * jnp.max(jnp.abs(flat))), v.shape)


@pytest.mark.parametrize("name,bump", [("conv2d", _bump_largest),
                                       pytest.param("conv2d", _bump_middle, marks=pytest.mark.slow),
                                       pytest.param("affine", _bump_largest, marks=pytest.mark.slow),
                                       ("batch_norm", _bump_middle)])
def test_one_entry_off_by_1e_9_of_the_scale_fails(name, bump):
    """Entry by entry (the course's relative error, <= 1e-9) this reads 5e-10 at the tensor's
    largest entry and is let through; the scale criterion (<= 1e-12) catches it anywhere."""
    spec = registry.get(name)
    r = audit_case(mutant(spec, lambda g, d, ct: [bump(g[0], 1e-9)] + g[1:]), spec.cases[0])
    assert not r.passed
    rel, scale = _manual_vs_autodiff(r)[r.differentiated[0]]
    assert scale == pytest.approx(1e-9, rel=0.05) and scale > SCALE_TOL
    if bump is _bump_largest:
        assert rel < MANUAL_VS_AUTODIFF_TOL          # the entrywise criterion alone would miss it
    assert r.manual_vs_numeric_rel_error <= spec.numeric_tol      # far below finite differences too


def test_relu_leak_of_1e_8_into_a_true_zero_fails():
    spec = registry.get("relu")

    def leak(g, d, ct):
        (x,) = d
        return [jnp.where(x > 0, g[0], 1e-8 * ct)]

    for case in spec.cases:
        r = audit_case(mutant(spec, leak), case)
        assert not r.passed
        assert r.manual_vs_autodiff_rel_error > 1e-3      # |1e-8 dy| / max(1e-8, |1e-8 dy|)


def test_batch_norm_leak_into_the_zero_running_mean_gradient_fails():
    """In train mode y does not depend on the running statistics: their gradient is exactly 0."""
    spec = registry.get("batch_norm")
    train = spec.cases[0]
    r = audit_case(mutant(spec, lambda g, d, ct: g[:3] + [g[3] + 1e-8 * jnp.sum(_y(ct))] + g[4:]), train)
    assert not r.passed
    errors = _manual_vs_autodiff(r)
    assert errors["running_mean"][1] == 1.0               # all of it is wrong: the true tensor is 0
    assert max(errors[k][0] for k in ("x", "gamma", "beta", "running_var")) < MANUAL_VS_AUTODIFF_TOL


@pytest.mark.parametrize("name,arg,factor", [("affine", "b", 1.01), ("conv2d", "w", 1 + 1e-7),
                                             pytest.param("conv2d", "b", 1 + 1e-7, marks=pytest.mark.slow),
                                             pytest.param("batch_norm", "gamma", 1 + 1e-7, marks=pytest.mark.slow)])
def test_a_wrong_gradient_of_a_later_argument_fails(name, arg, factor):
    spec = registry.get(name)
    case = spec.cases[0]
    k = list(audit_case(spec, case).differentiated).index(arg)
    assert k > 0
    r = audit_case(mutant(spec, lambda g, d, ct: g[:k] + [g[k] * factor] + g[k + 1:]), case)
    assert not r.passed
    errors = _manual_vs_autodiff(r)
    assert errors[arg][0] == pytest.approx((factor - 1) / (factor + 1), rel=1e-2)
    assert max(v[0] for n, v in errors.items() if n != arg) < MANUAL_VS_AUTODIFF_TOL   # the others pass


# --------------------------------------------------------------------------------- float32 blind spot

@jax.custom_vjp
def textbook_sigmoid(x):
    return jax.nn.sigmoid(x)


def _textbook_fwd(x):
    return jax.nn.sigmoid(x), x


def _textbook_bwd(x, dy):
    e = jnp.exp(-x)
    return (dy * e / (1 + e) ** 2,)        # exp(100) overflows in float32: inf / inf = NaN


textbook_sigmoid.defvjp(_textbook_fwd, _textbook_bwd)


def test_textbook_sigmoid_passes_float64_and_fails_the_float32_pass():
    spec = dataclasses.replace(registry.get("sigmoid"), name="textbook_sigmoid", manual=textbook_sigmoid)
    for case in spec.cases:
        assert audit_case(spec, case).passed               # the float64 audit's blind spot
    results = float32_case(spec, spec.cases[0])
    failed = {r.config.split(" ", 1)[1]: r for r in results if not r.passed}
    # +-1e4: entries below -88.7 on both sides; +-1e2: the side whose largest entry is -100
    assert {"scale=-1e+04", "scale=+1e+04"} <= set(failed)
    assert {"scale=-1e+02", "scale=+1e+02"} & set(failed)
    assert all(r.manual_nonfinite > 0 and r.reference_nonfinite == 0 for r in failed.values())
    assert not any(k.endswith("e-04") for k in failed)     # tiny inputs are harmless
    with jax.enable_x64(False):
        g = jax.grad(lambda x: jnp.sum(textbook_sigmoid(x)))(jnp.array([-100.0, 0.0, 100.0], jnp.float32))
    assert np.isnan(np.asarray(g)[0])


def test_float32_pass_flags_disagreement_above_its_tolerance():
    spec = registry.get("sigmoid")
    results = float32_case(mutant(spec, lambda g, d, ct: [v * 1.001 for v in g]), spec.cases[0])
    failed = {r.config.split(" ", 1)[1] for r in results if not r.passed}
    assert {"scale=+1e-04", "scale=-1e-04", "scale=+1e+02", "scale=-1e+02"} <= failed
    # at +-1e4 every sigmoid gradient is 0 in float32, and 1.001 * 0 is still right
    assert all(r.manual_nonfinite == 0 for r in results)
    results = float32_case(mutant(spec, lambda g, d, ct: [v * (1 + 1e-6) for v in g]), spec.cases[0])
    assert all(r.passed for r in results)                  # below float32 resolution: the float64 audit's job


def test_float32_pass_measures_a_disagreement_against_float64_where_the_reference_is_noise():
    from jaxnet.gradcheck.float32 import FLOAT32_TOL, _compare
    truth = [np.array([0.0, 1.0, 2.0])]
    ref = [truth[0] + np.array([1e-3, 0, 0])]                # the float32 reference: 1e-3 of rounding noise
    mirror = [truth[0] - np.array([1e-3, 0, 0])]             # a kernel rounding the other way
    assert _compare(mirror, ref, ["y"])[0] > FLOAT32_TOL      # against the reference alone: 1e-3 apart
    assert _compare(mirror, ref, ["y"], truth)[0] == 0.0      # no further from float64 than the reference
    wrong = [truth[0] + np.array([1e-3, 1e-2, 0])]
    assert _compare(wrong, ref, ["y"], truth)[0] == pytest.approx((1e-2 - 1e-3) / 2.0)   # the excess, of the scale


def test_float32_pass_still_fails_a_wrong_gradient_at_a_zero_variance_input():
    spec = registry.get("batch_norm_relu")
    def by_variant(results):
        return {r.config[len(spec.cases[0].label) + 1:]: r for r in results}
    ok = by_variant(float32_case(spec, spec.cases[0]))
    assert ok["x all 1.3"].passed and ok["x all -7"].passed
    # dgamma off by the size of dbeta (O(1)) where every true dgamma is 0: caught
    wrong = mutant(spec, lambda g, d, ct: [g[0], g[1] + g[2]] + g[2:])
    bad = by_variant(float32_case(dataclasses.replace(wrong, extremes=rule_for(spec)), spec.cases[0]))
    assert not bad["x all 1.3"].passed and bad["x all 1.3"].worst == "dgamma"
    assert not bad["x all -7"].passed
