"""NumPy oracles: an independent float64 forward per registered op, compared with both paths."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import registry
from jaxnet.gradcheck.oracles import (ORACLE_CASES, ORACLE_TOL, ORACLES, OracleCase, check_oracles, oracle_case,
                                      oracle_failures)


def test_every_registered_op_has_an_oracle_and_fixed_inputs():
    assert set(ORACLES) == set(registry.REGISTRY)
    assert set(ORACLE_CASES) == set(registry.REGISTRY)
    for name, cases in ORACLE_CASES.items():
        assert len(cases) >= 2, name
        assert len({c.label for c in cases}) == len(cases), name


def test_oracle_inputs_cover_the_options():
    kw = {name: [c.kwargs for c in cases] for name, cases in ORACLE_CASES.items()}
    conv = kw["conv2d"]
    assert {str(k.get("padding")) for k in conv} >= {"0", "1", "SAME", "VALID", "((1, 0), (0, 1))"}
    assert any(k.get("stride") == 2 for k in conv) and any(k.get("stride") == (1, 2) for k in conv)
    assert any(k.get("dilation", 1) > 1 for k in conv) and any(k.get("groups", 1) > 1 for k in conv)
    assert any(c.args[2] is None for c in ORACLE_CASES["conv2d"])
    for name in ("batch_norm", "spatial_batch_norm"):
        assert {k["train"] for k in kw[name]} == {True, False}
    assert {k.get("train", True) for k in kw["dropout"]} == {True, False}
    assert {k["approximate"] for k in kw["gelu"]} == {True, False}
    assert any(k.get("padding") == "SAME" for k in kw["max_pool2d"])


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_both_paths_match_the_oracle(name):
    results = check_oracles([name])
    assert len(results) == len(ORACLE_CASES[name])
    for r in results:
        assert r.reference_rel_error <= ORACLE_TOL and r.manual_rel_error <= ORACLE_TOL, oracle_failures(results)


def test_batch_norm_oracle_compares_all_three_outputs():
    spec = registry.get("batch_norm")
    train = ORACLE_CASES["batch_norm"][0]
    good = oracle_case(spec, train)
    assert good.passed

    def wrong_momentum(x, gamma, beta, rm, rv, *, train, momentum=0.9, eps=1e-5):
        # the running-mean update the other way round, (1 - momentum) * running + momentum * batch:
        # both paths share it, only the oracle sees it
        y, m, v = spec.reference(x, gamma, beta, rm, rv, train=train, momentum=momentum, eps=eps)
        batch_mean = (m - momentum * rm) / (1 - momentum)
        return y, (1 - momentum) * rm + momentum * batch_mean, v

    bad = dataclasses.replace(spec, name="bn_wrong_momentum", reference=wrong_momentum, manual=wrong_momentum)
    assert not oracle_case(bad, train, ORACLES["batch_norm"]).passed


def test_a_formula_both_paths_share_fails_the_oracle():
    """The gradient audit cannot see a forward both paths share; the oracle can."""
    spec = registry.get("layer_norm")

    def unbiased(x, gamma, beta, *, eps=1e-5):
        mu = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.var(x, axis=-1, keepdims=True, ddof=1)
        return gamma * (x - mu) / jnp.sqrt(var + eps) + beta

    bad = dataclasses.replace(spec, name="ln_unbiased", reference=unbiased, manual=unbiased)
    r = oracle_case(bad, ORACLE_CASES["layer_norm"][0], ORACLES["layer_norm"])
    assert not r.passed and r.reference_rel_error > 1e-3 and r.manual_rel_error > 1e-3

    conv = registry.get("conv2d")

    def pads_on_one_side(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
        p = padding if isinstance(padding, int) else 0
        return conv.reference(x, w, b, stride=stride, padding=((0, 2 * p), (0, 2 * p)), dilation=dilation,
                              groups=groups)

    bad = dataclasses.replace(conv, name="conv_one_sided", reference=pads_on_one_side, manual=pads_on_one_side)
    (padded,) = [c for c in ORACLE_CASES["conv2d"] if c.kwargs.get("padding") == 1 and c.kwargs.get("stride") == 2]
    assert not oracle_case(bad, padded, ORACLES["conv2d"]).passed


def test_oracle_flags_a_forward_off_by_1e_10():
    spec = registry.get("affine")

    def off(x, w, b=None):
        return spec.reference(x, w, b) * (1 + 1e-10)

    bad = dataclasses.replace(spec, name="affine_off", manual=off)
    r = oracle_case(bad, ORACLE_CASES["affine"][0], ORACLES["affine"])
    assert r.reference_rel_error <= ORACLE_TOL < r.manual_rel_error


def test_dropout_mask_statistics_and_inverted_scaling():
    """The oracle reuses JAX's mask for the key; here the mask itself is checked: its keep
    rate, exact 1 / (1 - rate) scaling of kept units, and zeros elsewhere, in both paths."""
    spec = registry.get("dropout")
    x = np.ones((200, 500))
    n = x.size
    for rate in (0.1, 0.5):
        ys = []
        with jax.enable_x64(True):
            for impl in ("autodiff", "manual"):
                ys.append(np.asarray(spec.call(impl, (jnp.asarray(x), jax.random.PRNGKey(7)),
                                               registry.Case(kwargs={"rate": rate}, dims={}))))
        assert np.array_equal(ys[0], ys[1])
        y = ys[0]
        kept = y != 0
        assert set(np.unique(y)) == {0.0, 1.0 / (1 - rate)}
        keep_rate = kept.mean()
        sigma = np.sqrt(rate * (1 - rate) / n)
        assert abs(keep_rate - (1 - rate)) < 5 * sigma, (rate, keep_rate)
        assert abs(y.mean() - 1.0) < 5 * sigma / (1 - rate)       # inverted dropout keeps the expectation
        # rows and columns are not constant: the mask is drawn per unit
        assert 0 < kept.mean(axis=0).min() and kept.mean(axis=0).max() < 1
    eval_case = OracleCase("eval", (x, None), {"rate": 0.5, "train": False})
    assert oracle_case(spec, eval_case).passed
