"""NumPy oracles: an independent float64 forward per registered op, compared with both paths.

Each op's oracle and fixed inputs are registered with the op, in its family module
(``OpSpec.oracle``, ``OpSpec.oracle_cases``); ``ORACLES`` and ``ORACLE_CASES`` are views of
the registry.  These tests cover whatever is registered.
"""
import dataclasses
import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import registry
from jaxnet.gradcheck import ORACLE_CASES as EXPORTED_CASES
from jaxnet.gradcheck import ORACLES as EXPORTED_ORACLES
from jaxnet.gradcheck.oracles import (NO_ORACLE, ORACLE_CASES, ORACLE_TOL, ORACLES, OracleCase, check_oracles,
                                      missing_oracles, oracle_case, oracle_failures)
from jaxnet.ops import _registry
from jaxnet.ops._registry import OpSpec, case, register


def test_every_registered_op_has_an_oracle_and_fixed_inputs():
    missing = missing_oracles()
    assert not missing, ("registered ops without a NumPy oracle and fixed inputs (register them with "
                         f"OpSpec(..., oracle=..., oracle_cases=...)): {', '.join(missing)}")
    assert list(ORACLES) == list(ORACLE_CASES) == list(registry.REGISTRY)
    assert EXPORTED_ORACLES is ORACLES and EXPORTED_CASES is ORACLE_CASES
    for name, spec in registry.REGISTRY.items():
        assert ORACLES[name] is spec.oracle, name
        cases = ORACLE_CASES[name]
        assert cases == spec.oracle_inputs() and all(isinstance(c, OracleCase) for c in cases), name
        assert len(cases) >= 2, name
        assert len({c.label for c in cases}) == len(cases), name
        # the oracle lives with the op, in its family module
        assert spec.oracle.__module__ == f"jaxnet.ops.{spec.family}", (name, spec.oracle.__module__)


@pytest.mark.parametrize("name", list(registry.REGISTRY))
def test_oracle_is_numpy_and_never_calls_the_op(name, monkeypatch):
    """The oracle returns NumPy float64 (a JAX array would mean it ran JAX code), and it still
    runs with the op's two paths replaced, in their module, by functions that raise."""
    spec = registry.get(name)
    module = importlib.import_module(spec.oracle.__module__)

    def called(*args, **kwargs):
        raise AssertionError(f"the oracle of {name!r} called the op")

    for fn in (spec.reference, spec.manual):
        if getattr(module, fn.__name__, None) is fn:
            monkeypatch.setattr(module, fn.__name__, called)
    for oc in spec.oracle_inputs():
        out = spec.oracle(*oc.args, **oc.kwargs)
        for leaf in jax.tree_util.tree_leaves(out):
            assert isinstance(leaf, (np.ndarray, np.generic, float)), (name, oc.label, type(leaf))
            assert np.asarray(leaf).dtype == np.float64, (name, oc.label, np.asarray(leaf).dtype)


def _sample_square(key, d, dt):
    return (jax.random.normal(key, d["x"], dt),)


def test_an_op_without_an_oracle_fails_the_check_by_name():
    """A registration without ``oracle=`` is a failing row of the check and is named by the
    coverage test's message; it is removed again at the end."""
    spec = OpSpec("square_without_oracle", lambda x: x * x, jax.custom_vjp(lambda x: x * x), _sample_square,
                  (case({"x": (3,)}),), family="throwaway")
    register(spec)
    try:
        assert "square_without_oracle" in missing_oracles()
        assert "square_without_oracle" not in ORACLES and "square_without_oracle" not in ORACLE_CASES
        with pytest.raises(KeyError, match="square_without_oracle"):
            ORACLE_CASES["square_without_oracle"]
        (row,) = check_oracles(["square_without_oracle"])
        assert not row.passed and row.op == "square_without_oracle" and row.config == NO_ORACLE
        assert oracle_failures([row]) == f"square_without_oracle: {NO_ORACLE}"
        with pytest.raises(ValueError, match="'square_without_oracle' has no NumPy oracle"):
            oracle_case(spec, OracleCase("x", (np.ones(3),), {}))
    finally:
        del _registry._TABLE["square_without_oracle"]
    assert "square_without_oracle" not in registry.REGISTRY and not missing_oracles()
    with pytest.raises(ValueError, match="oracle_cases` without an `oracle`"):
        dataclasses.replace(spec, oracle_cases=(OracleCase("x", (np.ones(3),), {}),))


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
    assert len(results) == len(ORACLE_CASES[name]) >= 2
    assert [r.config for r in results] == [c.label for c in ORACLE_CASES[name]]
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
