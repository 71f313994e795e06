"""batch_norm_relu (the fused batch norm + ReLU), its oneDNN kernel, and Sequential's fusion.

- the op: both paths against ``relu(batch_norm(...))`` (the registry's audit, oracle and float32
  passes cover it like every op; here: the composition, eval mode, bad input naming the op);
- with the oneDNN kernel (the ``cpu-fast`` extra): the manual path's forward, running statistics,
  dx, dgamma and dbeta against the reference in float32 at fast_convnet's shapes and odd ones,
  (N, D) input, under vmap; the custom calls really in the program; float64 takes XLA;
- ``Sequential``: a BatchNorm followed by a ReLU of the same impl runs as the one op (same values,
  same state tree, fewer ops), not when the impls differ or the hook is on.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import nn
from jaxnet.ops import norm, onednn

SHAPES = ((8, 32, 32, 16), (8, 16, 16, 32), (4, 4, 4, 128), (3, 5, 7, 3), (6, 10), (1, 2, 2, 5))


def _args(shape, dtype=np.float32, seed=0):
    r = np.random.default_rng(seed)
    c = shape[-1]
    return ((2 * r.standard_normal(shape) + 0.5).astype(dtype), (1 + 0.2 * r.standard_normal(c)).astype(dtype),
            r.standard_normal(c).astype(dtype), (0.1 * r.standard_normal(c)).astype(dtype),
            r.uniform(0.5, 1.5, c).astype(dtype))


def _run(op, args, ct, train=True):
    """(y, running mean, running var, dx, dgamma, dbeta) of sum(y * ct)."""
    x, g, b, rm, rv = args

    def f(x, g, b):
        return op(x, g, b, rm, rv, train=train)
    (y, m, v), vjp = jax.vjp(f, x, g, b)
    return (y, m, v) + vjp((ct, jnp.zeros_like(m), jnp.zeros_like(v)))


def _scaled_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


def test_reference_is_relu_of_batch_norm():
    args = _args((2, 3, 3, 4), np.float64)
    with jax.enable_x64(True):
        y, m, v = norm.batch_norm_relu(*args, train=True)
        y0, m0, v0 = norm.batch_norm(*args, train=True)
        np.testing.assert_array_equal(y, jnp.where(y0 <= 0, 0, y0))
        np.testing.assert_array_equal(m, m0)
        assert np.any(np.asarray(y) == 0) and np.any(np.asarray(y) > 0)
        ye, me, ve = norm.batch_norm_relu_manual(*args, train=False)
        np.testing.assert_allclose(ye, np.maximum(norm.batch_norm(*args, train=False)[0], 0), rtol=1e-12, atol=1e-12)
        assert me is args[3] and ve is args[4]          # eval mode: running statistics unchanged


def test_xla_path_float64_matches_the_reference():
    with jax.enable_x64(True):
        for shape in ((2, 3, 3, 4), (6, 5)):
            args = _args(shape, np.float64)
            ct = np.cos(np.arange(np.prod(shape))).reshape(shape)
            ref, man = _run(norm.batch_norm_relu, args, ct), _run(norm.batch_norm_relu_manual, args, ct)
            for r, m in zip(ref, man):
                np.testing.assert_allclose(m, r, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("bad, match", [
    (lambda a: (a[0][..., :2],) + a[1:], r"batch_norm_relu: .*\(3,\)"),
    (lambda a: (a[0][0, 0, 0],) + a[1:], r"batch_norm_relu: .*x"),
])
def test_bad_input_is_one_error_naming_the_op(bad, match):
    args = bad(_args((2, 3, 3, 3)))
    for impl in ("autodiff", "manual"):
        with pytest.raises(ValueError, match=match) as e:
            F.batch_norm_relu(*args, train=True, impl=impl)
        assert "\n" not in str(e.value)


def test_manual_on_onednn_matches_the_reference_float32(onednn_kernel):
    for shape in SHAPES:
        args = _args(shape)
        ct = np.cos(np.arange(np.prod(shape))).reshape(shape).astype(np.float32)
        hlo = jax.jit(lambda *a: _run(norm.batch_norm_relu_manual, a, ct)).lower(*args).as_text()
        assert "jaxnet_onednn_bn_fwd" in hlo and "jaxnet_onednn_bn_bwd" in hlo, shape
        ref = jax.jit(lambda *a: _run(norm.batch_norm_relu, a, ct))(*args)
        man = jax.jit(lambda *a: _run(norm.batch_norm_relu_manual, a, ct))(*args)
        for name, r, m in zip(("y", "mean", "var", "dx", "dgamma", "dbeta"), ref, man):
            assert m.dtype == jnp.float32 and m.shape == r.shape
            assert _scaled_err(m, r) < 2e-5, (shape, name, _scaled_err(m, r))


def test_onednn_workspace_is_one_bit_per_value_and_empty_without_relu(onednn_kernel):
    assert onednn.bn_workspace_bytes((8, 32, 32, 16), 1e-5) == 8 * 32 * 32 * 16 // 8
    assert onednn.bn_workspace_bytes((8, 32, 32, 16), 1e-5, relu=False) == 0
    y, m, v, ws = onednn.bn_fwd(*_args((2, 3, 3, 4))[:3], 1e-5, relu=False)
    assert ws.shape == (0,) and float(jnp.min(y)) < 0                  # no ReLU: negatives stay


def test_onednn_under_vmap_matches_the_reference(onednn_kernel):
    xs, g, b, rm, rv = _args((3, 4, 5, 5, 6))
    f = lambda op: jax.vmap(lambda x: jax.grad(lambda x: jnp.sum(jnp.sin(op(x, g, b, rm, rv, train=True)[0])))(x))
    np.testing.assert_allclose(jax.jit(f(norm.batch_norm_relu_manual))(xs), jax.jit(f(norm.batch_norm_relu))(xs),
                               rtol=2e-4, atol=2e-4)


def test_float64_takes_xla(onednn_kernel):
    with jax.enable_x64(True):
        args = _args((2, 3, 3, 4), np.float64)
        hlo = jax.jit(lambda *a: _run(norm.batch_norm_relu_manual, a, np.ones((2, 3, 3, 4)))).lower(*args).as_text()
        assert "jaxnet_onednn" not in hlo


def _net(impl_bn="manual", impl_relu="manual"):
    return nn.Sequential((nn.Conv2D(4, kernel=3, padding="SAME", impl="manual"), nn.BatchNorm(impl=impl_bn),
                          nn.ReLU(impl=impl_relu), nn.Flatten(), nn.Affine(3)), ("conv", "bn", "relu", "flat", "fc"))


def _loss_and_grads(model, params, state, x):
    def loss(p):
        y, s = model.apply(p, state, x, train=True)
        return jnp.sum(y ** 2), s
    return jax.value_and_grad(loss, has_aux=True)(params)


def test_sequential_fuses_batch_norm_and_relu_with_the_same_values(x64, monkeypatch):
    model = _net()
    params, state = model.init(jax.random.key(0), (4, 6, 6, 3))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6, 6, 3)))
    (l, s), g = _loss_and_grads(model, params, state, x)
    with monkeypatch.context() as m:
        m.setattr(nn.BatchNorm, "fused_with", lambda self, following: None)     # each layer alone
        (l0, s0), g0 = _loss_and_grads(model, params, state, x)
    np.testing.assert_allclose(l, l0, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert jax.tree.structure(s) == jax.tree.structure(state) and s["relu"] == {}
    np.testing.assert_allclose(s["bn"]["mean"], s0["bn"]["mean"], rtol=1e-12)
    # the fused op ran: one custom_vjp for batch norm + ReLU, no separate ReLU select
    traced = str(jax.make_jaxpr(lambda p: model.apply(p, state, x, train=True))(params))
    assert "_normalize_relu" in traced and "relu_manual" not in traced


def test_sequential_does_not_fuse_across_impls_and_reports_both_outputs_with_the_hook_on(x64):
    x = jnp.asarray(np.random.default_rng(1).standard_normal((4, 6, 6, 3)))
    mixed = _net(impl_relu="autodiff")
    params, state = mixed.init(jax.random.key(0), (4, 6, 6, 3))
    traced = str(jax.make_jaxpr(lambda p: mixed.apply(p, state, x, train=True))(params))
    assert "_normalize_relu" not in traced and "_normalize" in traced
    model = _net()
    seen = []
    y, _ = nn.apply_tapped(model, params, state, x, train=True, on_output=lambda p, v: seen.append((p, v)))
    assert [p for p, _ in seen[:3]] == ["conv", "bn", "relu"]               # both outputs reported
    bn, relu = seen[1][1], seen[2][1]
    np.testing.assert_allclose(relu, np.maximum(bn, 0), rtol=1e-12, atol=1e-12)
    assert np.any(np.asarray(bn) < 0)                                        # the BatchNorm's own output
    np.testing.assert_array_equal(y, model.apply(params, state, x, train=True)[0])     # the fused run's result


def test_fast_convnet_runs_every_norm_relu_pair_fused(onednn_kernel):
    model = nn.with_impl(nn.fast_convnet(), "manual")
    params, state = model.init(jax.random.key(0), (2, 32, 32, 3))
    x = jnp.zeros((2, 32, 32, 3), jnp.float32)
    hlo = jax.jit(jax.grad(lambda p: jnp.sum(model.apply(p, state, x, train=True)[0]))).lower(params).as_text()
    assert hlo.count("jaxnet_onednn_bn_fwd") == 7 and hlo.count("jaxnet_onednn_bn_bwd") == 7
