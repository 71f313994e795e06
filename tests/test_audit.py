"""The gradient audit, run from the registry: every op, every configuration, float64."""
import dataclasses
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from jaxnet import ops, registry
from jaxnet.gradcheck import FORWARD_TOL, JIT_TOL, MANUAL_VS_AUTODIFF_TOL, audit_case, failure_details

CASES = list(registry.all_cases())
FIRST = [(s, c) for s, c in CASES if c is s.cases[0]]
OTHERS = [(s, c) for s, c in CASES if c is not s.cases[0]]


def _ids(cases):
    return [f"{s.name}[{c.label}]" for s, c in cases]


@pytest.mark.parametrize("spec,case", FIRST, ids=_ids(FIRST))
def test_audit_case_passes(spec, case):
    """Every op's first configuration, with the eager (un-jitted) manual VJP as well."""
    r = audit_case(spec, case)
    assert r.jit_rel_error is not None
    _check(spec, r)


# The other configurations (strides, paddings, masks, batch of one, ...): the slow tier
# (`make test-slow`) and `make gradcheck` audit them all; the default suite keeps one per op, since
# each compiles its own program (about 1 s) and the suite must stay under 10 minutes.
@pytest.mark.slow
@pytest.mark.parametrize("spec,case", OTHERS, ids=_ids(OTHERS))
def test_audit_other_configurations_pass(spec, case):
    _check(spec, audit_case(spec, case))


def _check(spec, r):
    detail = failure_details([r])
    assert r.forward_rel_error <= FORWARD_TOL, detail
    assert r.manual_vs_autodiff_rel_error <= MANUAL_VS_AUTODIFF_TOL, detail
    assert r.manual_vs_numeric_rel_error <= spec.numeric_tol, detail
    assert r.autodiff_vs_numeric_rel_error <= spec.numeric_tol, detail
    assert r.jit_rel_error is None or r.jit_rel_error <= JIT_TOL, detail
    assert r.passed


def test_registry_covers_every_op():
    assert tuple(registry.REGISTRY) == ops.OP_NAMES
    for spec in registry.SPECS:
        assert spec.cases, spec.name
        assert spec.reference is not spec.manual
    assert {"softplus", "gelu"} <= set(ops.OP_NAMES)


def test_registry_sweeps_batch_size_one_and_conv_configs():
    conv = registry.get("conv2d")
    kwargs = [c.kwargs for c in conv.cases]
    assert any(c.dims["x"][0] == 1 for c in conv.cases)
    assert {k.get("stride") for k in kwargs} >= {1, 2, (1, 2)}
    assert {str(k.get("padding")) for k in kwargs} >= {"0", "1", "SAME", "VALID"}
    assert any(k.get("dilation", 1) > 1 for k in kwargs)
    assert any(k.get("groups", 1) > 1 for k in kwargs)


def _wrong_relu():
    @jax.custom_vjp
    def bad(x):
        return jnp.maximum(x, 0)
    bad.defvjp(lambda x: (jnp.maximum(x, 0), x), lambda x, g: (jnp.where(x > 0, 1.01 * g, 0),))
    return bad


def test_audit_catches_a_wrong_backward():
    spec = dataclasses.replace(registry.get("relu"), name="bad_relu", manual=_wrong_relu())
    r = audit_case(spec, spec.cases[0])
    assert not r.passed
    assert r.manual_vs_autodiff_rel_error > 1e-3
    assert r.manual_vs_numeric_rel_error > 1e-3
    assert r.autodiff_vs_numeric_rel_error < 1e-6     # the reference is still right
    assert "manual vs autodiff" in failure_details([r])


def test_cli_json_fields_and_exit_code(capsys):
    # in process (its programs are the per-op tests' own, from the run's compilation cache); the
    # `python -m jaxnet` entry point in a subprocess: test_cli_unknown_op_is_one_line_error
    from jaxnet.cli import main
    assert main(["gradcheck", "--op", "sigmoid", "--json", "--quiet"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["check"] for r in rows} == {"gradient", "float32", "oracle"}
    assert all(r["passed"] is True and r["op"] == "sigmoid" for r in rows)
    rows = [r for r in rows if r["check"] == "gradient"]
    assert len(rows) == len(registry.get("sigmoid").cases)
    for row in rows:
        assert {"op", "config", "forward_rel_error", "manual_vs_autodiff_rel_error",
                "manual_vs_numeric_rel_error", "autodiff_vs_numeric_rel_error", "passed"} <= set(row)
        assert row["op"] == "sigmoid" and row["passed"] is True


def test_cli_json_has_dtype_and_differentiated_arguments(capsys):
    from jaxnet.cli import main
    assert main(["gradcheck", "--op", "affine", "--json", "--quiet"]) == 0
    every = json.loads(capsys.readouterr().out)
    rows = [r for r in every if r["check"] == "gradient"]
    labels = [c.label for c in registry.get("affine").cases]
    assert [r["config"] for r in rows] == labels
    for row in rows:
        assert row["dtype"] == "float64" and row["passed"] is True
        assert row["forward_scale_error"] <= 1e-12 and row["manual_vs_autodiff_scale_error"] <= 1e-12
    # the bias-free case differentiates x and w only
    assert [r["differentiated"] for r in rows] == [["x", "w", "b"]] * 3 + [["x", "w"]]
    # the float32 pass: one row per case and extreme input, the same fields
    f32 = [r for r in every if r["check"] == "float32"]
    assert f32 and all(r["dtype"] == "float32" and r["passed"] is True for r in f32)
    for row in f32:
        label = next(l for l in labels if row["config"].startswith(l + " "))
        assert row["differentiated"] == (["x", "w"] if "bias=False" in label else ["x", "w", "b"])
        assert {"forward_rel_error", "manual_vs_autodiff_rel_error", "manual_nonfinite", "reference_nonfinite",
                "tol", "seconds"} <= set(row)
    assert {r["config"].split(" scale=")[0] for r in f32} == set(labels)
    oracle = [r for r in every if r["check"] == "oracle"]
    assert oracle and all(r["dtype"] == "float64" and r["passed"] is True for r in oracle)


def test_cli_skips_the_float32_pass_and_the_oracles(capsys):
    from jaxnet.cli import main
    assert main(["gradcheck", "--op", "relu", "--json", "--quiet", "--skip-float32", "--skip-oracle"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["check"] for r in rows} == {"gradient"}
    assert main(["gradcheck", "--op", "relu", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "cases passed" in text and "float32 extreme inputs passed" in text and "oracle inputs passed" in text


def test_cli_unknown_op_is_one_line_error():
    out = subprocess.run([sys.executable, "-m", "jaxnet", "gradcheck", "--op", "nope"],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert "unknown op 'nope'" in out.stderr and "Traceback" not in out.stderr
