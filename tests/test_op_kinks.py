"""Both paths take the same, documented gradient at the points where an op is not
differentiable (kinks, ties) or where a formula cancels.

Finite differences straddle a kink, so these points cannot be gradient-checked
numerically; instead each case states the chosen convention (PyTorch's) and
checks that the reference's autodiff gradient and the manual backward both
equal it exactly, in float64 and float32, eagerly and under jit.
"""
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import manual, ops, registry

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker; groups are handed out
# before single tests, so its long items start early instead of ending the run on one worker.
pytestmark = pytest.mark.xdist_group("op_kinks")

PATHS = {"autodiff": ops, "manual": manual}
DTYPES = ("float64", "float32")


def _grads(path, dtype, fn, args, argnums, jit):
    """The gradient of ``sum(fn(path)(*args) * 1)`` (a scalar output as is) for ``argnums``."""
    def loss(*a):
        out = fn(PATHS[path])(*a)
        return jnp.sum(out[0] if isinstance(out, tuple) else out)
    g = jax.grad(loss, argnums=argnums)
    g = jax.jit(g) if jit else g
    with jax.enable_x64(dtype == "float64"):
        a = tuple(jnp.asarray(v, dtype) if isinstance(v, (list, np.ndarray, float)) else v for v in args)
        return [np.asarray(v) for v in g(*a)]


T = np.array([[0.0, 1.0, 0.25], [1.0, 0.0, 0.5]])     # (1/2 - t) / 2 is exact in float32 too
_TIES = np.ones((1, 4, 4, 1))                       # every window of max pool is a tie

# op -> (fn(path), args, argnums, expected gradients).  Each sits exactly on the op's kink or tie.
KINKS = {
    "relu at 0": ("relu", lambda m: m.relu, ([-1.0, 0.0, 2.0],), (0,), ([0.0, 0.0, 1.0],)),
    # a 1x1 convolution with weight 1: the ReLU's input is x itself, 0 at the middle pixel
    "conv2d_relu at 0": ("conv2d_relu", lambda m: lambda x, w: m.conv2d_relu(x, w),
                         ([[[[-1.0], [0.0], [2.0]]]], [[[[1.0]]]]), (0,), ([[[[0.0], [0.0], [1.0]]]],)),
    "leaky_relu at 0": ("leaky_relu", lambda m: lambda x: m.leaky_relu(x, slope=0.25),
                        ([-1.0, 0.0, 2.0],), (0,), ([0.25, 0.25, 1.0],)),
    "elu at 0, alpha 0.5": ("elu", lambda m: lambda x: m.elu(x, alpha=0.5), ([0.0, 1.0],), (0,), ([0.5, 1.0],)),
    "elu at 0, alpha 1": ("elu", lambda m: m.elu, ([0.0],), (0,), ([1.0],)),
    "prelu at 0": ("prelu", lambda m: m.prelu, ([[0.0, 0.0], [2.0, -1.0]], [0.25, 0.5]), (0, 1),
                   ([[0.25, 0.5], [1.0, 0.5]], [0.0, -1.0])),
    "l1_loss at pred == target": ("l1_loss", lambda m: m.l1_loss, ([[1.0, 2.0]], [[1.0, 0.0]]), (0, 1),
                                  ([[0.0, 1.0]], [[0.0, -1.0]])),
    "l1_penalty at 0": ("l1_penalty", lambda m: m.l1_penalty, ([0.0, -2.0, 3.0],), (0,), ([0.0, -1.0, 1.0],)),
    # class 1's margin 0 - 1 + 1 is exactly 0: not violated; class 2 (2 - 1 + 1 = 2) is
    "svm_hinge at a tie": ("svm_hinge", lambda m: lambda s: m.svm_hinge(s, jnp.array([0])),
                           ([[1.0, 0.0, 2.0]],), (0,), ([[-1.0, 0.0, 1.0]],)),
    "maxout ties": ("maxout", lambda m: lambda x: m.maxout(x, pieces=2),
                    ([[1.0, 1.0, 2.0, 2.0, -1.0, 3.0]],), (0,), ([[1.0, 0.0, 1.0, 0.0, 0.0, 1.0]],)),
    "maxout three-way tie": ("maxout", lambda m: lambda x: m.maxout(x, pieces=3),
                             ([[5.0, 5.0, 5.0]],), (0,), ([[1.0, 0.0, 0.0]],)),
    "max_pool2d ties, tiling windows": (
        "max_pool2d", lambda m: lambda x: m.max_pool2d(x, window=2), (_TIES,), (0,),
        (np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0.0]).reshape(1, 4, 4, 1),)),
    "max_pool2d ties, overlapping windows": (
        "max_pool2d", lambda m: lambda x: m.max_pool2d(x, window=2, stride=1), (_TIES,), (0,),
        (np.array([1, 1, 1, 0, 1, 1, 1, 0, 1, 1, 1, 0, 0, 0, 0, 0.0]).reshape(1, 4, 4, 1),)),
    "max_pool2d ties with padding": (
        "max_pool2d", lambda m: lambda x: m.max_pool2d(x, window=3, stride=2, padding=1), (_TIES[:, :3, :3],), (0,),
        (np.array([1, 1, 0, 1, 1, 0, 0, 0, 0.0]).reshape(1, 3, 3, 1),)),
    "sigmoid_cross_entropy at 0": ("sigmoid_cross_entropy", lambda m: m.sigmoid_cross_entropy,
                                   (np.zeros((2, 3)), T), (0, 1), ((0.5 - T) / 2, np.zeros((2, 3)))),
    "softplus at 0": ("softplus", lambda m: m.softplus, ([0.0],), (0,), ([0.5],)),
    # one box over the whole 4x4 map, 2x2 bins of equal values: each bin's first entry takes dy
    "roi_pool ties in every bin": (
        "roi_pool", lambda m: lambda x: m.roi_pool(x, jnp.array([[0.0, 0.0, 3.0, 3.0]]), jnp.array([0]),
                                                   output_size=2), (_TIES,), (0,),
        (np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0, 0.0]).reshape(1, 4, 4, 1),)),
    "smooth_l1_loss at pred == target, beta 0": (
        "smooth_l1_loss", lambda m: lambda p, t: m.smooth_l1_loss(p, t, beta=0.0),
        ([[1.0, 2.0]], [[1.0, 0.0]]), (0, 1), ([[0.0, 0.5]], [[0.0, -0.5]])),
}


# Every kink stays in the default suite jitted, float64 and float32 (as training runs); the eager twins
# are in the slow tier (make test-slow): eagerly each small op compiles its own kernel (~25 s for all),
# and the manual VJP run op by op is already checked against its jitted self by test_audit, per op.
@pytest.mark.parametrize("dtype,jit", [pytest.param("float64", False, marks=pytest.mark.slow), ("float64", True),
                                       pytest.param("float32", False, marks=pytest.mark.slow), ("float32", True)],
                         ids=["float64", "float64-jit", "float32", "float32-jit"])
@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("name", list(KINKS))
def test_gradient_at_the_kink_is_the_convention(name, path, dtype, jit):
    _, fn, args, argnums, want = KINKS[name]
    got = _grads(path, dtype, fn, args, argnums, jit)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, np.asarray(w, dtype), err_msg=f"{name}, {path}, {dtype}")


def test_every_op_with_a_kink_or_tie_has_a_kink_case():
    covered = {v[0] for v in KINKS.values()}
    flagged = {s.name for s in registry.REGISTRY.values() if "kink" in s.note or "tie" in s.note or "hinge" in s.note}
    assert flagged <= covered, flagged - covered
    assert {"relu", "leaky_relu", "elu", "prelu", "l1_loss", "l1_penalty", "svm_hinge", "maxout",
            "max_pool2d", "sigmoid_cross_entropy", "roi_pool", "smooth_l1_loss"} <= covered


def _first_winner_pool(x, window, stride, pad):
    """NumPy: dx of sum(max_pool2d(x)) with every window's first maximum (row-major) taking dy = 1."""
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    dxp = np.zeros_like(xp)
    ho, wo = (h + 2 * pad - window) // stride + 1, (w + 2 * pad - window) // stride + 1
    for b in range(n):
        for k in range(c):
            for i in range(ho):
                for j in range(wo):
                    win = xp[b, i * stride:i * stride + window, j * stride:j * stride + window, k]
                    r, q = np.unravel_index(np.argmax(win), win.shape)
                    dxp[b, i * stride + r, j * stride + q, k] += 1
    return dxp[:, pad:pad + h, pad:pad + w]


# tiling and padded-overlapping windows in the default suite; the other two geometries in the slow tier
@pytest.mark.parametrize("size,window,stride,pad", [(4, 2, 2, 0), pytest.param(5, 3, 1, 0, marks=pytest.mark.slow),
                                                    (5, 3, 2, 1), pytest.param(5, 2, 1, 1, marks=pytest.mark.slow)])
def test_max_pool_ties_go_to_the_first_winner_on_both_paths(size, window, stride, pad):
    x = np.round(np.random.default_rng(0).normal(size=(2, size, size, 2))).clip(-1, 1)    # many ties
    want = _first_winner_pool(x, window, stride, pad)
    for m in (ops, manual):
        g = jax.grad(lambda v: jnp.sum(m.max_pool2d(v, window=window, stride=stride, padding=pad)))(
            jnp.asarray(x, jnp.float32))
        np.testing.assert_array_equal(np.asarray(g), want)


@pytest.mark.parametrize("path", list(PATHS))
def test_elu_gradient_far_below_zero_does_not_cancel(path):
    m = PATHS[path]
    for dtype, x in (("float64", -50.0), ("float64", -700.0), ("float32", -30.0), ("float32", -80.0)):
        with jax.enable_x64(dtype == "float64"):
            v = jnp.asarray([x], dtype)
            for alpha in (1.0, 0.5):
                g = np.asarray(jax.grad(lambda t: jnp.sum(m.elu(t, alpha=alpha)))(v))
                want = alpha * np.exp(np.asarray([x], dtype))
                assert g[0] > 0, (dtype, x, alpha)
                np.testing.assert_allclose(g, want, rtol=1e-6 if dtype == "float32" else 1e-14)
                y = np.asarray(m.elu(v, alpha=alpha))
                np.testing.assert_allclose(y, alpha * np.expm1(np.asarray([x], dtype)), rtol=1e-7)


def test_elu_forward_keeps_expm1_accuracy_near_zero(x64):
    x = jnp.asarray([-1e-12, -1e-6, -0.5, -1.0, -1.5, -20.0])
    for m in (ops, manual):
        np.testing.assert_allclose(m.elu(x, alpha=0.7), 0.7 * np.expm1(np.asarray(x)), rtol=1e-15)
        g = jax.grad(lambda v: jnp.sum(m.elu(v, alpha=0.7)))(x)
        np.testing.assert_allclose(g, 0.7 * np.exp(np.asarray(x)), rtol=1e-15)


def test_sigmoid_cross_entropy_gradient_at_zero_logits(x64):
    t = jnp.asarray([[0.0, 1.0, 0.3], [1.0, 0.0, 0.5]])
    for m in (ops, manual):
        g = jax.grad(lambda v: m.sigmoid_cross_entropy(v, t))(jnp.zeros((2, 3)))
        np.testing.assert_array_equal(g, [[0.25, -0.25, 0.1], [-0.25, 0.25, 0.0]])


def test_sigmoid_cross_entropy_gradient_is_sigmoid_minus_target_everywhere(x64):
    z = jnp.asarray([[-800.0, -40.0, -1.0, 0.0, 1e-300, 2.0, 40.0, 800.0]])
    t = jnp.asarray([[0.0, 0.2, 1.0, 0.3, 0.5, 1.0, 0.0, 1.0]])
    for m in (ops, manual):
        g = jax.grad(lambda v: m.sigmoid_cross_entropy(v, t))(z)
        np.testing.assert_allclose(g, jax.nn.sigmoid(z) - t, rtol=1e-15, atol=1e-300)
        loss = m.sigmoid_cross_entropy(z, t)
        assert np.isfinite(float(loss))


# --------------------------------------------------------------------------------- shapes that used to abort

_ABORT_SCRIPT = textwrap.dedent('''
    import jax, jax.numpy as jnp, numpy as np
    jax.config.update("jax_enable_x64", True)
    from jaxnet import ops, manual
    cases = [
        ("conv2d_transpose", (1, 3, 1, 2), (2, 3, 2, 2), dict(stride=(2, 1), padding=1)),
        ("conv2d_transpose", (1, 5, 3, 2), (2, 4, 2, 3), dict(stride=2, padding=1)),
        ("conv2d_transpose", (1, 1, 4, 2), (3, 2, 2, 2), dict(stride=(1, 2), padding=1)),
        ("conv2d", (1, 2, 4, 2), (4, 2, 1, 4), dict(stride=(3, 2), padding=1, groups=2)),
        ("conv2d", (1, 2, 4, 2), (4, 2, 2, 4), dict(stride=(3, 2), padding=1)),
        ("conv2d", (1, 1, 4, 2), (3, 2, 2, 2), dict(stride=(1, 2), padding=1)),
        ("conv2d", (1, 1, 6, 4), (3, 2, 2, 4), dict(stride=(1, 2), padding=(1, 1), groups=2)),
    ]
    for dt in (jnp.float64, jnp.float32):
        for op, xs, ws, kw in cases:
            rng = np.random.default_rng(0)      # NumPy: jax.random would compile per shape
            x, w = jnp.asarray(rng.standard_normal(xs), dt), jnp.asarray(rng.standard_normal(ws), dt)

            def both_paths(x, w):
                res = []
                for m in (ops, manual):
                    f = getattr(m, op)
                    y, g = jax.value_and_grad(lambda x, w: (jnp.sum(f(x, w, **kw) ** 2), f(x, w, **kw)),
                                              argnums=(0, 1), has_aux=True)(x, w)
                    res.append((y[1],) + tuple(g))
                return res
            # the forward and both gradients of both paths as one program (eagerly each small op would
            # compile alone; one program per path takes ~1.6x as long to compile)
            res = jax.jit(both_paths)(x, w)
            for a, b in zip(*res):
                np.testing.assert_allclose(a, b, rtol=1e-4 if dt == jnp.float32 else 1e-10, atol=1e-5)
            print("ok", jnp.dtype(dt).name, op, xs, ws, flush=True)
    print("ok")
''')


def test_shapes_that_aborted_xla_run_on_both_paths():
    """Run in a subprocess: an XLA abort kills the process, not an exception. One process runs
    every shape in both dtypes and prints one line per shape that ran and agreed on both paths."""
    r = subprocess.run([sys.executable, "-c", _ABORT_SCRIPT], capture_output=True, text=True, timeout=600)
    lines = r.stdout.strip().splitlines()
    for dt in ("float64", "float32"):
        for op, xs, ws in (("conv2d_transpose", (1, 3, 1, 2), (2, 3, 2, 2)),
                           ("conv2d_transpose", (1, 5, 3, 2), (2, 4, 2, 3)),
                           ("conv2d_transpose", (1, 1, 4, 2), (3, 2, 2, 2)),
                           ("conv2d", (1, 2, 4, 2), (4, 2, 1, 4)), ("conv2d", (1, 2, 4, 2), (4, 2, 2, 4)),
                           ("conv2d", (1, 1, 4, 2), (3, 2, 2, 2)), ("conv2d", (1, 1, 6, 4), (3, 2, 2, 4))):
            assert f"ok {dt} {op} {xs} {ws}" in lines, (dt, op, xs, ws, r.stderr[-3000:])
    assert r.returncode == 0 and lines[-1] == "ok", r.stderr[-3000:]


def test_xla_is_kept_for_ordinary_shapes():
    from jaxnet.ops import conv
    g = conv.conv2d_geometry("conv2d", jnp.zeros((2, 8, 8, 3)), jnp.zeros((3, 3, 3, 4)), None,
                             stride=1, padding=1, dilation=1, groups=1)
    assert conv._native(g, 1) and conv._xla_conv_safe(g)
    assert conv._xla_conv_transpose_safe((4, 4), (3, 3), (2, 2), (7, 7))
    assert conv._xla_conv_transpose_safe((8, 8), (4, 4), (2, 2), (16, 16))
    g = conv.conv2d_geometry("conv2d", jnp.zeros((1, 2, 4, 2)), jnp.zeros((4, 2, 1, 4)), None,
                             stride=(3, 2), padding=1, dilation=1, groups=2)
    assert not conv._xla_conv_safe(g)
    assert not conv._xla_conv_transpose_safe((3, 1), (2, 3), (2, 1), (4, 1))
