"""The float32 pass: every registered op at extreme inputs, both paths finite and in agreement."""
import dataclasses

import numpy as np
import pytest

from jaxnet import ops, registry
from jaxnet.gradcheck import extremes
from jaxnet.gradcheck.extremes import OVERRIDES, SCALES, batch_of_one, extreme_inputs, rule_for
from jaxnet.gradcheck.float32 import (FLOAT32_TOL, float32_case, float32_cases, float32_failures,
                                      sample_float32)

import jax


def _sample(spec, case):
    return sample_float32(spec, case, jax.random.PRNGKey(0))


def test_every_registered_op_is_covered():
    covered = {spec.name for spec, _, _ in float32_cases()}
    assert covered == set(registry.REGISTRY) == set(ops.OP_NAMES)
    # every op's extreme inputs (at least both signs of every scale, distinct labels) are checked
    # per op in test_float32_extremes_pass, on the samples the pass itself draws
    assert set(OVERRIDES) <= set(registry.REGISTRY)


def test_generic_rule_reaches_plus_and_minus_100_and_1e4():
    spec = registry.get("sigmoid")
    case = spec.cases[0]
    (x0,) = _sample(spec, case)
    x0 = np.asarray(x0)
    sign = np.sign(x0.flat[np.argmax(np.abs(x0))])     # the factor t / max|x| keeps the largest entry's sign
    variants = dict(extreme_inputs(spec, case, (x0,)))
    for t in (1e2, -1e2, 1e4, -1e4, 1e-4, -1e-4):
        (x,) = variants[f"scale={t:+.0e}"]
        assert x.dtype == np.float32
        peak = x.flat[np.argmax(np.abs(x))]
        assert peak == pytest.approx(sign * t, rel=1e-6)


def test_common_factor_keeps_sampler_guarantees():
    # L1 loss: pred - target scaled by the same factor, so it stays away from 0
    spec = registry.get("l1_loss")
    for case in spec.cases:
        pred, target = _sample(spec, case)
        gap = np.min(np.abs(pred.astype(np.float64) - target))
        for _, (p, t) in extreme_inputs(spec, case, (pred, target)):
            scale = np.max(np.abs(p)) / np.max(np.abs(pred))
            assert np.min(np.abs(p.astype(np.float64) - t)) >= 0.5 * gap * scale
    # max pool: the scaled inputs are still distinct (no ties)
    spec = registry.get("max_pool2d")
    for _, (x,) in extreme_inputs(spec, spec.cases[0], _sample(spec, spec.cases[0])):
        assert len(np.unique(x)) == x.size


def test_norms_get_all_equal_zero_and_tiny_variances_and_a_batch_of_one():
    spec = registry.get("batch_norm")
    train = spec.cases[0]
    variants = dict(extreme_inputs(spec, train, _sample(spec, train)))
    assert {"x all 1.3", "x all -7", "running_var=0"} <= set(variants)
    x, gamma, beta, rm, rv = variants["scale=+1e-04"]
    assert np.max(np.abs(x)) == pytest.approx(1e-4, rel=1e-6) and np.max(rv) < 1e-7    # variance in c**2
    assert np.all(variants["running_var=0"][4] == 0)
    assert np.all(variants["x all 1.3"][0] == np.float32(1.3))
    labels = [label for s, _, label in float32_cases(["batch_norm"])]
    assert any(label.endswith("(batch of one)") for label in labels)
    one = batch_of_one(train)
    assert one.dims["x"] == (1,) + train.dims["x"][1:] and one.kwargs == train.kwargs
    for name in ("layer_norm", "group_norm", "spatial_batch_norm"):
        s = registry.get(name)
        assert "x all 1.3" in dict(extreme_inputs(s, s.cases[0], _sample(s, s.cases[0])))


def test_sigmoid_cross_entropy_targets_stay_in_range():
    spec = registry.get("sigmoid_cross_entropy")
    for _, (z, t) in extreme_inputs(spec, spec.cases[0], _sample(spec, spec.cases[0])):
        assert set(np.unique(t)) <= {0.0, 1.0}


def test_spec_hook_takes_precedence_over_the_table():
    def hook(args, case):
        return [("mine", args)]
    spec = dataclasses.replace(registry.get("batch_norm"), name="bn_hooked", extremes=hook)
    assert rule_for(spec) is hook
    assert rule_for(registry.get("batch_norm")) is OVERRIDES["batch_norm"]
    assert rule_for(registry.get("relu")) is extremes.scaled
    assert [v for v, _ in extreme_inputs(spec, spec.cases[0], _sample(spec, spec.cases[0]))] == ["mine"]


def _check_float32_cases(cases):
    results = []
    for spec, case, label in cases:
        rs = float32_case(spec, case, label=label)
        # this case's extreme inputs: both signs of every scale at least, each label once
        variants = [r.config[len(label) + 1:] for r in rs]
        assert all(r.config.startswith(label + " ") for r in rs), (label, variants)
        assert len(variants) >= 2 * len(SCALES) and len(set(variants)) == len(variants), (label, variants)
        results += rs
    assert results and {r.dtype for r in results} == {"float32"}
    detail = float32_failures(results)
    for r in results:
        assert r.manual_nonfinite == 0, detail
        # the extremes stay inside the reference's float32 range: every entry is compared
        assert r.reference_nonfinite == 0, (r.config, r.reference_nonfinite)
        assert r.forward_rel_error <= FLOAT32_TOL and r.manual_vs_autodiff_rel_error <= FLOAT32_TOL, detail
        assert r.passed
    assert len({r.config for r in results}) == len(results)


def _first_and_batch_of_one(name):
    cases = float32_cases([name])
    spec = cases[0][0]
    first = [c for c in cases if c[1] is spec.cases[0]]
    ones = [c for c in cases if c[2].endswith("(batch of one)")
            or (c[1] is not spec.cases[0] and c[1].dims.get("x", (0,))[0] == 1)]
    return first + ones[:1], [c for c in cases if c not in first + ones[:1]]


# The default suite runs each op's first configuration, and for the norms (whose statistics over a
# batch of one are degenerate) their batch of one too (each case compiles its own program, about
# 0.5 s); the other configurations, the other ops' batch of one included, are in the slow tier
# (`make test-slow`), and `make gradcheck` runs every one of them (`jaxnet gradcheck`'s float32 pass).
BATCH_OF_ONE_DEFAULT_FAMILIES = {"norm"}


def _default_and_slow(name):
    default, others = _first_and_batch_of_one(name)
    if registry.get(name).family in BATCH_OF_ONE_DEFAULT_FAMILIES:
        return default, others
    return default[:1], default[1:] + others


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_float32_extremes_pass(name):
    default, _ = _default_and_slow(name)
    _check_float32_cases(default)


@pytest.mark.slow
@pytest.mark.parametrize("name", [n for n in registry.REGISTRY if _default_and_slow(n)[1]])
def test_float32_extremes_pass_other_configurations(name):
    _check_float32_cases(_default_and_slow(name)[1])


def test_default_and_slow_tiers_together_cover_every_float32_case():
    for name in registry.REGISTRY:
        default, others = _default_and_slow(name)
        assert [c[2] for c in default + others] and \
            sorted(c[2] for c in default + others) == sorted(c[2] for c in float32_cases([name]))
        assert default[0][1] is registry.get(name).cases[0]
