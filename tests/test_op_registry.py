"""The op table is the one place an op is defined: everything else is derived from it."""
import ast
import dataclasses
import inspect
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnet
from jaxnet import functional as F
from jaxnet import manual, ops, registry
from jaxnet.gradcheck import audit_case
from jaxnet.ops import activations, norm
from jaxnet.ops._registry import OpSpec, case, register

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_namespaces_are_derived_from_the_table():
    assert ops.OP_NAMES == tuple(registry.REGISTRY)
    assert [s.name for s in registry.SPECS] == list(ops.OP_NAMES)
    for name, spec in registry.REGISTRY.items():
        assert getattr(ops, name) is spec.reference
        assert getattr(manual, name) is spec.manual
        assert spec.reference is not spec.manual
        assert spec.reference.__module__ == spec.manual.__module__ == f"jaxnet.ops.{spec.family}"
    assert set(manual.__all__) == set(ops.OP_NAMES)
    assert ops.conv_output_size(7, 3, stride=2) == 3


def test_functional_defines_exactly_the_op_names_explicitly():
    tree = ast.parse((ROOT / "jaxnet" / "functional.py").read_text())
    assigned = [t.id for node in tree.body if isinstance(node, ast.Assign)
                and isinstance(node.value, ast.Call) and getattr(node.value.func, "id", "") == "_dispatch"
                for t in node.targets]
    assert assigned == list(ops.OP_NAMES)
    dispatched = {n for n, v in vars(F).items() if hasattr(v, "reference") and hasattr(v, "manual")}
    assert dispatched == set(ops.OP_NAMES)
    assert F.__all__ == list(ops.OP_NAMES)
    for name, spec in registry.REGISTRY.items():
        fn = getattr(F, name)
        assert fn.reference is spec.reference and fn.manual is spec.manual, name
        assert fn.__name__ == name


def test_every_op_has_a_named_documented_hand_backward():
    for spec in registry.SPECS:
        assert spec.backward, spec.name
        for bwd in spec.backward:
            assert bwd.__name__.startswith("_") and bwd.__name__.endswith("_bwd"), (spec.name, bwd.__name__)
            assert bwd.__module__ == f"jaxnet.ops.{spec.family}"
            doc = inspect.getdoc(bwd) or ""
            assert "Residual" in doc or "residual" in doc, (spec.name, bwd.__name__)


def test_every_floating_argument_is_differentiated_by_default():
    names = {s.name: s.arg_names(s.diff_argnums) for s in registry.SPECS}
    assert names["batch_norm"] == ["x", "gamma", "beta", "running_mean", "running_var"]
    assert names["spatial_batch_norm"] == ["x", "gamma", "beta", "running_mean", "running_var"]
    assert names["affine"] == ["x", "w", "b"]
    assert names["softmax_cross_entropy"] == ["scores"]       # integer labels left out
    assert names["svm_hinge"] == ["scores"]
    assert names["dropout"] == ["x"]                          # the PRNG key left out
    assert names["sigmoid_cross_entropy"] == ["logits", "targets"]
    typed_key = (jnp.ones(3), jax.random.key(0))
    assert registry.get("dropout").differentiated(typed_key) == (0,)
    assert registry.get("affine").differentiated((jnp.ones((2, 3)), jnp.ones((3, 4)), None)) == (0, 1)


def test_narrowing_needs_a_reason_and_names_register_once():
    spec = registry.get("relu")
    with pytest.raises(ValueError, match="argnums_reason"):
        dataclasses.replace(spec, argnums=(0,))
    narrowed = dataclasses.replace(spec, name="x", argnums=(), argnums_reason="a test")
    assert narrowed.differentiated((jnp.ones(2),)) == ()
    with pytest.raises(ValueError, match="already registered"):
        register(spec)
    with pytest.raises(KeyError, match="registered ops"):
        registry.get("nope")


def test_eval_mode_batch_norm_audits_the_running_statistics(monkeypatch):
    """Multiplying the hand running-var gradient by 7 must fail the audit, on running_var alone."""
    spec = registry.get("batch_norm")
    (eval_case,) = [c for c in spec.cases if c.kwargs.get("train") is False]
    good = audit_case(spec, eval_case)
    assert good.passed and "running_var" in good.differentiated and "running_mean" in good.differentiated

    original = norm._batch_norm_eval.bwd

    def wrong(eps, res, dy):
        dx, dgamma, dbeta, drm, drv = original(eps, res, dy)
        return dx, dgamma, dbeta, drm, 7 * drv

    monkeypatch.setattr(norm._batch_norm_eval, "bwd", wrong)
    bad = audit_case(spec, eval_case)
    assert not bad.passed
    manual_vs_autodiff = {a.name: a.max_rel_error for a in bad.comparisons[0].args}
    assert manual_vs_autodiff["running_var"] > 0.5
    assert max(v for k, v in manual_vs_autodiff.items() if k != "running_var") < 1e-9
    assert bad.autodiff_vs_numeric_rel_error < 1e-6          # the reference is still right


def test_softplus_and_gelu_match_jax_nn(x64):
    x = jnp.asarray(np.linspace(-30.0, 30.0, 121))

    @jax.jit            # one program: eagerly, each of the small ops below compiled its own kernel (~5 s)
    def values(x):
        out = {"softplus": (ops.softplus(x), manual.softplus(x), jax.nn.softplus(x)),
               "softplus(800)": ops.softplus(jnp.float64(800.0)),
               "dsoftplus": (jax.grad(lambda v: jnp.sum(manual.softplus(v)))(x), jax.nn.sigmoid(x))}
        for approximate in (False, True):
            out[f"gelu {approximate}"] = (ops.gelu(x, approximate=approximate),
                                          jax.nn.gelu(x, approximate=approximate))
            out[f"dgelu {approximate}"] = (
                jax.grad(lambda v: jnp.sum(jnp.sin(v) * manual.gelu(v, approximate=approximate)))(x),
                jax.grad(lambda v: jnp.sum(jnp.sin(v) * jax.nn.gelu(v, approximate=approximate)))(x))
        return out

    out = values(x)
    ref, man, want = out["softplus"]
    np.testing.assert_allclose(ref, want, rtol=1e-14, atol=1e-300)
    np.testing.assert_allclose(man, want, rtol=1e-14, atol=1e-300)
    assert float(out["softplus(800)"]) == 800.0           # no overflow
    for approximate in (False, True):
        np.testing.assert_allclose(*out[f"gelu {approximate}"], rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(*out[f"dgelu {approximate}"], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(*out["dsoftplus"], rtol=1e-14)
    assert F.gelu(x, approximate=True, impl="autodiff").shape == x.shape


def test_manual_ops_reuse_the_reference_forward():
    """Where the course's forward is the reference's computation, the custom_vjp forward calls it."""
    from jaxnet.ops import linear, losses, pool, regularization
    calls = {activations._relu_fwd: "relu(x)", activations._sigmoid_fwd: "sigmoid(x)",
             activations._softplus_fwd: "softplus(x)", linear._affine_fwd: "affine(x, w, b)",
             losses._sigmoid_cross_entropy_fwd: "sigmoid_cross_entropy(logits, targets)",
             losses._l2_loss_fwd: "l2_loss(pred, target)", pool._global_avg_pool_fwd: "global_avg_pool(x)",
             regularization._dropout_fwd: "scale_kept(x, keep, rate)"}
    for fwd, call in calls.items():
        assert call in inspect.getsource(fwd), fwd.__name__


def test_docs_page_has_the_generated_op_table():
    table = registry.op_table()
    assert table.count("\n") == len(registry.SPECS) + 1
    assert "`running_mean`, `running_var`" in table
    page = (ROOT / "docs" / "ops.md").read_text()
    assert table in page, "docs/ops.md is stale: paste the output of `python -m jaxnet.registry`"
    for fn in (activations.softplus, activations.softplus_manual, activations._softplus_bwd,
               activations._softplus_oracle):                                                   # the worked example
        assert inspect.getsource(fn) in page, fn.__name__
    readme = (ROOT / "README.md").read_text()
    assert 'oracle=_softplus_oracle, oracle_cases=lambda: O.unary("softplus", _ORACLE_SHAPES)' in readme


def test_impl_names():
    assert jaxnet.IMPLS == ("autodiff", "manual")
    y = F.relu(jnp.array([-1.0, 2.0]), impl="auto")
    assert y.tolist() == [0.0, 2.0]


# One new op, written the way docs/ops.md's "Adding an op" says: reference, manual twin with its
# named backward, NumPy oracle with fixed inputs and the registration, all in one family module.
_THROWAWAY_FAMILY = '''
"""A throwaway family: one op, cube(x) = x^3."""
import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def cube(x):
    """x^3. x: any shape."""
    return x * x * x


@jax.custom_vjp
def cube_manual(x):
    """Manual twin of cube. x: any shape."""
    return cube(x)


def _cube_fwd(x):
    return cube(x), x


def _cube_bwd(x, dy):
    """dx = 3 x^2 dy.

    Residual: the input x (any shape).  dy, dx: the shape of x.
    """
    return (3 * x * x * dy,)


cube_manual.defvjp(_cube_fwd, _cube_bwd)


def _cube_oracle(x):
    """NumPy oracle: x ** 3, float64."""
    return np.power(x, 3)


SPEC = register(OpSpec("cube", cube, cube_manual, S.unary(S.normal), (case({"x": (3, 4)}), case({"x": (1, 2, 2, 3)})),
                       backward=_cube_bwd, oracle=_cube_oracle,
                       oracle_cases=lambda: O.unary("cube", ((3, 4), (2, 3)))))
'''


@pytest.fixture
def throwaway_family(tmp_path):
    """The module above, imported from a file as ``throwaway``; its registration is removed afterwards."""
    import importlib.util
    import sys

    from jaxnet.ops import _registry
    path = tmp_path / "throwaway.py"
    path.write_text(_THROWAWAY_FAMILY)
    module_spec = importlib.util.spec_from_file_location("throwaway", path)
    module = importlib.util.module_from_spec(module_spec)
    assert "cube" not in registry.REGISTRY
    try:
        module_spec.loader.exec_module(module)
        yield module
    finally:
        _registry._TABLE.pop("cube", None)
        sys.modules.pop("throwaway", None)
    assert "cube" not in registry.REGISTRY


def test_adding_an_op_is_its_family_module(throwaway_family, capsys):
    """Registering in one module is all the audit, the float32 pass, the oracle check, the CLI and
    the op table need (``jaxnet.functional``'s explicit line is the one other edit)."""
    from jaxnet.cli import main
    from jaxnet.gradcheck import ORACLE_CASES, ORACLES, audit, audit_float32, check_oracles, oracle_case
    from jaxnet.gradcheck.oracles import missing_oracles
    spec = throwaway_family.SPEC
    assert registry.get("cube") is spec and spec.family == "throwaway"

    assert [c for s, c in registry.all_cases() if s.name == "cube"] == list(spec.cases)
    results = audit(["cube"])
    assert len(results) == 2 and all(r.passed for r in results)
    assert all(r.passed for r in audit_float32(["cube"]))

    assert ORACLES["cube"] is throwaway_family._cube_oracle
    assert [c.label for c in ORACLE_CASES["cube"]] == ["x=3x4", "x=2x3"]
    checked = check_oracles(["cube"])
    assert len(checked) == 2 and all(r.passed for r in checked)
    assert "cube" in ORACLES and "cube" not in missing_oracles()            # check_oracles() runs it too
    wrong = dataclasses.replace(spec, name="cube_wrong", oracle=lambda x: np.power(x, 2))
    assert not oracle_case(wrong, ORACLE_CASES["cube"][0]).passed          # the check is not vacuous

    assert "| `cube` | throwaway | `x` | dx = 3 x^2 dy |" in registry.op_table()
    assert main(["gradcheck", "--op", "cube", "--quiet", "--skip-float32"]) == 0
    out = capsys.readouterr().out
    assert "2/2 cases passed" in out and "2/2 oracle inputs passed" in out
