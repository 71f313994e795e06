"""Property-based sweeps (hypothesis) over shapes, strides, paddings, dilations and groups.

For every drawn configuration, the manual op must match the reference op in
value and in VJP (float64), and the output size must follow the course's formula.

Every example compiles its own program (new shapes), 0.5 to 1.5 s of CPU each: the default
suite draws 3 configurations per sweep, ``make test-slow`` the full 15 (``*_full`` twins).
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from jaxnet import manual, ops
from jaxnet.gradcheck.report import scaled_rel_error as rel_error

# Manual and reference ops sum in different orders (im2col/col2im vs XLA's reduce_window and
# convolution, whose order also depends on XLA flags), so an output that cancels to ~1e-9 can
# differ by a few ulps of its summands: the course's 1e-8 floor would read that as a 1e-8
# "relative" error.  The scaled variant judges such entries against 1e-3 of the tensor's scale;
# a wrong window, stride or padding still shows up as an O(1) error.  Observed over 60 to 75 draws
# per test: values and VJPs within 4e-14 of the reference, hence the 1e-12 bounds.
# The random inputs and cotangents come from NumPy: jax.random compiles its kernels again for every
# new shape, which costs more than the ops under test; the ops themselves run under jax.jit.

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker; groups are handed out
# before single tests, so its long items start early instead of ending the run on one worker.
pytestmark = pytest.mark.xdist_group("properties")


SETTINGS = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])
SMOKE = settings(SETTINGS, max_examples=3)


def _sweeps(check, *, smoke_name, full_name, **strategies):
    """The default suite's sweep (``SMOKE``) and its slow full twin (``SETTINGS``) of one check."""
    smoke = SMOKE(given(**strategies)(check))
    full = pytest.mark.slow(SETTINGS(given(**strategies)(check)))
    smoke.__name__, full.__name__ = smoke_name, full_name
    return smoke, full


def _vjps(f_ref, f_man, args, seed):
    """Both outputs and both VJPs for one random cotangent, compiled as one program."""
    shape = jax.eval_shape(f_ref, *args)
    ct = jnp.asarray(np.random.default_rng([seed, 1]).standard_normal(shape.shape), shape.dtype)

    @jax.jit
    def both(args, ct):
        out, vjp_ref = jax.vjp(f_ref, *args)
        out_m, vjp_man = jax.vjp(f_man, *args)
        return out, out_m, vjp_ref(ct), vjp_man(ct)
    return both(args, ct)


@st.composite
def conv_configs(draw):
    n = draw(st.integers(1, 2))
    groups = draw(st.sampled_from([1, 2]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = draw(st.sampled_from(["SAME", "VALID", 0, 1, 2]))
    eff = [d * (k - 1) + 1 for k, d in zip((kh, kw), dilation)]
    hw = []
    for e, s in zip(eff, stride):                  # an input size for which the stride fits exactly
        p = padding if isinstance(padding, int) else 0
        steps = draw(st.integers(0, 3))
        hw.append(max(e - 2 * p, 1) + steps * s if isinstance(padding, int) else draw(st.integers(e, e + 5)))
    return dict(x=(n, hw[0], hw[1], cin), w=(kh, kw, cin // groups, cout),
                kwargs=dict(stride=stride, padding=padding, dilation=dilation, groups=groups))


def _fits(shape, cfg):
    p = cfg["kwargs"]["padding"]
    if not isinstance(p, int):
        return True
    w = cfg["w"]
    for n, k, s, d in zip(shape[1:3], w[:2], cfg["kwargs"]["stride"], cfg["kwargs"]["dilation"]):
        span = n + 2 * p - (d * (k - 1) + 1)
        if span < 0 or span % s:
            return False
    return True


def _check_conv2d(cfg, seed):
    assume(_fits(cfg["x"], cfg))
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        x, w, b = (jnp.asarray(rng.standard_normal(s), jnp.float64) for s in (cfg["x"], cfg["w"], cfg["w"][-1:]))
        kw = cfg["kwargs"]
        out, out_m, g_ref, g_man = _vjps(lambda *a: ops.conv2d(*a, **kw), lambda *a: manual.conv2d(*a, **kw),
                                         (x, w, b), seed)
        sh, sw = kw["stride"]
        if kw["padding"] == "SAME":
            assert out.shape[1:3] == (-(-x.shape[1] // sh), -(-x.shape[2] // sw))
        elif isinstance(kw["padding"], int):
            p = kw["padding"]
            eff = [d * (kk - 1) + 1 for kk, d in zip(w.shape[:2], kw["dilation"])]
            assert out.shape[1:3] == ((x.shape[1] + 2 * p - eff[0]) // sh + 1, (x.shape[2] + 2 * p - eff[1]) // sw + 1)
        assert rel_error(out, out_m) < 1e-12
        assert rel_error(g_ref, g_man) < 1e-12


test_conv2d_manual_matches_reference, test_conv2d_manual_matches_reference_full = _sweeps(
    _check_conv2d, smoke_name="test_conv2d_manual_matches_reference",
    full_name="test_conv2d_manual_matches_reference_full", cfg=conv_configs(), seed=st.integers(0, 1000))


def _check_pooling(n, h, w, c, window, stride, padding, kind, seed):
    if isinstance(padding, int):
        assume(padding * 2 < window and not any((s + 2 * padding - window) % stride or s + 2 * padding < window
                                                for s in (h, w)))
    elif padding == "VALID":
        assume(min(h, w) >= window)
    with jax.enable_x64(True):
        size = n * h * w * c           # distinct values: no ties inside a max-pool window
        x = jnp.asarray(np.random.default_rng(seed).permutation(np.linspace(-1, 1, size)).reshape(n, h, w, c))
        name = f"{kind}_pool2d"
        kw = dict(window=window, stride=stride, padding=padding)
        out, out_m, g_ref, g_man = _vjps(lambda v: getattr(ops, name)(v, **kw),
                                         lambda v: getattr(manual, name)(v, **kw), (x,), seed)
        assert rel_error(out, out_m) < 1e-12
        assert rel_error(g_ref, g_man) < 1e-12


test_pooling_manual_matches_reference, test_pooling_manual_matches_reference_full = _sweeps(
    _check_pooling, smoke_name="test_pooling_manual_matches_reference",
    full_name="test_pooling_manual_matches_reference_full",
    n=st.integers(1, 2), h=st.integers(2, 9), w=st.integers(2, 9), c=st.integers(1, 3),
    window=st.integers(1, 3), stride=st.integers(1, 3), padding=st.sampled_from(["SAME", "VALID", 0, 1]),
    kind=st.sampled_from(["max", "avg"]), seed=st.integers(0, 1000))


def _check_conv_transpose(n, h, w, cin, cout, k, stride, padding, seed):
    assume(min((h - 1) * stride + k, (w - 1) * stride + k) - 2 * padding >= 1)
    with jax.enable_x64(True):
        rng = np.random.default_rng(seed)
        x = jnp.asarray(rng.standard_normal((n, h, w, cin)), jnp.float64)
        wt = jnp.asarray(rng.standard_normal((k, k, cin, cout)), jnp.float64)
        kw = dict(stride=stride, padding=padding)
        out, out_m, g_ref, g_man = _vjps(lambda *a: ops.conv2d_transpose(*a, **kw),
                                         lambda *a: manual.conv2d_transpose(*a, **kw), (x, wt), seed)
        assert out.shape == (n, (h - 1) * stride + k - 2 * padding, (w - 1) * stride + k - 2 * padding, cout)
        assert rel_error(out, out_m) < 1e-12
        assert rel_error(g_ref, g_man) < 1e-12


test_conv_transpose_manual_matches_reference, test_conv_transpose_manual_matches_reference_full = _sweeps(
    _check_conv_transpose, smoke_name="test_conv_transpose_manual_matches_reference",
    full_name="test_conv_transpose_manual_matches_reference_full",
    n=st.integers(1, 2), h=st.integers(1, 4), w=st.integers(1, 4), cin=st.integers(1, 3),
    cout=st.integers(1, 3), k=st.integers(1, 4), stride=st.integers(1, 3), padding=st.integers(0, 1),
    seed=st.integers(0, 1000))


def test_conv_transpose_is_the_input_gradient_of_conv(x64):
    """The course's claim: transposed convolution = the input-gradient of convolution."""
    rng = np.random.default_rng(0)  # NumPy: jax.random compiles a sampler per shape
    x, w, dy = (jnp.asarray(rng.standard_normal(s)) for s in ((2, 7, 7, 3), (3, 3, 3, 4), (2, 3, 3, 4)))
    dx = jax.vjp(lambda v: ops.conv2d(v, w, stride=2), x)[1](dy)[0]
    # conv2d_transpose takes (KH, KW, C_in_of_transpose, C_out) = w with its channel axes swapped
    y = manual.conv2d_transpose(dy, jnp.swapaxes(w, 2, 3), stride=2)
    np.testing.assert_allclose(y, dx, rtol=1e-12, atol=1e-12)
