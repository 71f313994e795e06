"""The upsampling and detection ops (jaxnet/ops/upsample.py, jaxnet/ops/detection.py): nearest and
bilinear upsampling, max unpooling with the pool's argmax, RoI Align, RoI pooling, smooth L1 and the
per-pixel cross-entropy.

Properties that pin each formula and convention on both paths: bilinear against
``jax.image.resize`` (half-pixel centres), the hand backward as the transposed scatter, unpooling
as the max pool's backward, RoI Align exact on linear maps, RoI pooling's quantised bins, PyTorch's
weighting of the cross-entropy, NaN for bad labels, the one-line input errors.  The registry's
generic modules audit the same ops (float64 gradients against finite differences, the float32
extremes, the NumPy oracles, jit and vmap).  torchvision is not a reference here: the NumPy
oracles in jaxnet/ops/detection.py transcribe its CPU kernels.  Each test runs one jitted program.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import manual, ops
from jaxnet.ops.upsample import max_pool2d_with_indices

PATHS = {"reference": ops, "manual": manual}


def _rng(seed):
    return np.random.default_rng(seed)


def _vjp(fn, x, dy):
    y, pull = jax.vjp(fn, x)
    return y, pull(dy)[0]


# --------------------------------------------------------------------------------------- upsampling

def test_upsampling_matches_jax_image_resize_and_backward_is_the_transposed_scatter(x64):
    r = _rng(0)
    x = jnp.asarray(r.standard_normal((2, 3, 4, 2)))
    dy2 = jnp.asarray(r.standard_normal((2, 6, 8, 2)))
    dy32 = jnp.asarray(r.standard_normal((2, 9, 8, 2)))

    @jax.jit
    def run():
        out = {}
        for name, m in PATHS.items():
            out[name + " near"] = _vjp(lambda v: m.upsample_nearest(v, scale=2), x, dy2)
            out[name + " bil"] = _vjp(lambda v: m.upsample_bilinear(v, scale=2), x, dy2)
            out[name + " bil32"] = _vjp(lambda v: m.upsample_bilinear(v, scale=(3, 2)), x, dy32)
        out["resize"] = (jax.image.resize(x, (2, 6, 8, 2), "bilinear"), jax.image.resize(x, (2, 9, 8, 2), "bilinear"),
                         jax.image.resize(x, (2, 6, 8, 2), "nearest"))
        return out

    out = run()
    xn, d2 = np.asarray(x), np.asarray(dy2)
    block_sums = d2.reshape(2, 3, 2, 4, 2, 2).sum(axis=(2, 4))
    for name in PATHS:
        y, dx = out[name + " near"]
        np.testing.assert_array_equal(y, np.repeat(np.repeat(xn, 2, 1), 2, 2))
        np.testing.assert_array_equal(y, out["resize"][2])
        np.testing.assert_allclose(dx, block_sums, rtol=1e-13)
        for key, ref in (("bil", out["resize"][0]), ("bil32", out["resize"][1])):
            np.testing.assert_allclose(out[name + " " + key][0], ref, rtol=1e-12, atol=1e-13)
    # hand backward = autodiff of the reference; each output's dy is split with weights summing to 1
    for key in ("bil", "bil32"):
        np.testing.assert_allclose(out["manual " + key][1], out["reference " + key][1], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(np.sum(out["manual bil"][1]), np.sum(d2), rtol=1e-12)
    # at the corner pixel of a 2x upscale, output (0, 0) samples the input at (0, 0) exactly (clamped)
    np.testing.assert_allclose(out["manual bil"][0][:, 0, 0], xn[:, 0, 0], rtol=1e-13)
    # one interior value by hand: output (1, 1) sits at input (0.25, 0.25)
    want = 0.5625 * xn[:, 0, 0] + 0.1875 * (xn[:, 0, 1] + xn[:, 1, 0]) + 0.0625 * xn[:, 1, 1]
    np.testing.assert_allclose(out["manual bil"][0][:, 1, 1], want, rtol=1e-12)


# ------------------------------------------------------------------------------------- max unpooling

def _argmax_loop(x, window, stride, padding):
    n, h, w, c = x.shape
    xp = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)), constant_values=-np.inf)
    ho, wo = (h + 2 * padding - window) // stride + 1, (w + 2 * padding - window) // stride + 1
    idx = np.zeros((n, ho, wo, c), np.int64)
    for i in range(ho):
        for j in range(wo):
            win = xp[:, i * stride:i * stride + window, j * stride:j * stride + window].reshape(n, -1, c)
            a = np.argmax(win, axis=1)
            idx[:, i, j] = (i * stride - padding + a // window) * w + (j * stride - padding + a % window)
    return idx


@pytest.mark.parametrize("hw,window,stride,padding", [(6, 2, 2, 0), (7, 3, 2, 1)], ids=["tiling", "overlapping padded"])
def test_max_unpool_puts_values_back_at_the_pool_argmax_and_is_its_backward(x64, hw, window, stride, padding):
    r = _rng(1)
    x = jnp.asarray(r.permutation(np.linspace(-2, 2, 2 * hw * hw * 3)).reshape(2, hw, hw, 3))
    ho = (hw + 2 * padding - window) // stride + 1
    dy = jnp.asarray(r.standard_normal((2, ho, ho, 3)))
    du = jnp.asarray(r.standard_normal((2, hw, hw, 3)))
    p = hw * hw

    @jax.jit
    def run():
        out = {}
        for name, m in PATHS.items():
            y, idx = max_pool2d_with_indices(x, window=window, stride=stride, padding=padding,
                                             impl="manual" if m is manual else "autodiff")
            pool_bwd = jax.vjp(lambda v: m.max_pool2d(v, window=window, stride=stride, padding=padding), x)[1](dy)[0]
            unpooled = m.max_unpool2d(y, idx, output_size=(hw, hw))
            out[name] = (y, idx, pool_bwd, m.max_unpool2d(dy, idx, output_size=hw), unpooled,
                         _vjp(lambda v: m.max_unpool2d(v, idx, output_size=hw), dy, du)[1])
        return out

    out = run()
    want_idx = _argmax_loop(np.asarray(x), window, stride, padding)
    for name in PATHS:
        y, idx, pool_bwd, unpool_dy, unpooled, d_unpool = out[name]
        assert idx.dtype == jnp.int32
        np.testing.assert_array_equal(idx, want_idx)
        np.testing.assert_allclose(unpool_dy, pool_bwd, rtol=1e-13)         # unpooling = the pool's backward
        # the unpooled map: each max back at its position (counted once per window that chose it), 0 elsewhere
        want = np.zeros((2, p, 3))
        xf = np.asarray(x).reshape(2, p, 3)
        for b in range(2):
            for ch in range(3):
                np.add.at(want[b, :, ch], want_idx[b, ..., ch].ravel(), xf[b, want_idx[b, ..., ch].ravel(), ch])
        np.testing.assert_array_equal(np.asarray(unpooled).reshape(2, p, 3), want)
        assert np.count_nonzero(want) < p * 2 * 3 and (window == 2) == (np.count_nonzero(want) == y.size)
        # hand backward: gather du at the indices
        np.testing.assert_array_equal(d_unpool, np.take_along_axis(np.asarray(du).reshape(2, p, 3),
                                                                   want_idx.reshape(2, -1, 3), axis=1).reshape(dy.shape))


# ------------------------------------------------------------------------------------------ RoI ops

def test_roi_align_is_exact_on_linear_maps_and_routes_gradients_to_four_neighbours(x64):
    h = w = 8
    a, b, c0 = 0.7, -1.3, 0.25
    hh, ww = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    plane = a * hh + b * ww + c0
    features = jnp.asarray(np.stack([np.stack([plane, 2 * plane], -1), np.stack([-plane, plane], -1)]))
    # boxes inside the map (all samples within [0, H - 1]): image pixels, spatial_scale 0.5 on a 16x16 image
    boxes = jnp.asarray([[2.0, 3.0, 10.0, 9.0], [4.5, 2.5, 12.0, 14.0], [3.0, 3.0, 13.0, 11.0]])
    bidx = jnp.asarray([0, 1, 0])
    r = _rng(2)
    dy = jnp.asarray(r.standard_normal((3, 2, 3, 2)))
    feats2 = jnp.stack([features, -2 * features])

    @jax.jit
    def run():
        out = {}
        for name, m in PATHS.items():
            def f(v, bx=boxes, m=m):
                return m.roi_align(v, bx, bidx, output_size=(2, 3), spatial_scale=0.5, sampling_ratio=2)
            out[name] = _vjp(f, features, dy)
            out[name + " vmap"] = jax.vmap(f)(feats2)
            out[name + " dboxes"] = jax.grad(lambda bx: jnp.sum(f(features, bx) ** 2))(boxes)
        return out

    out = run()
    for name in PATHS:
        y = np.asarray(out[name][0])
        for k, (x1, y1, x2, y2) in enumerate(np.asarray(boxes) * 0.5 - 0.5):      # aligned: -0.5 pixel
            cy = y1 + (np.arange(2) + 0.5) * (y2 - y1) / 2                         # bin centres
            cx = x1 + (np.arange(3) + 0.5) * (x2 - x1) / 3
            val = a * cy[:, None] + b * cx[None, :] + c0
            sign = 1.0 if int(bidx[k]) == 0 else -1.0
            np.testing.assert_allclose(y[k, :, :, 0], sign * val, rtol=1e-12)
        np.testing.assert_allclose(out[name + " vmap"][0], y, rtol=1e-13)            # vmap over images
        np.testing.assert_allclose(out[name + " vmap"][1], -2 * y, rtol=1e-13)
        np.testing.assert_array_equal(out[name + " dboxes"], 0)      # the boxes are not differentiated
    np.testing.assert_allclose(out["manual"][1], out["reference"][1], rtol=1e-12, atol=1e-14)
    g = np.asarray(out["manual"][1])
    # every sample's gradient is split with weights summing to 1: per image and channel the
    # gradient's total is the sum of dy over that image's boxes
    for img in range(2):
        sel = np.asarray(bidx) == img
        np.testing.assert_allclose(g[img].sum(axis=(0, 1)), np.asarray(dy)[sel].sum(axis=(0, 1, 2)), rtol=1e-12)


def test_roi_pool_takes_each_quantised_bin_max_and_routes_dy_to_it(x64):
    x = np.arange(2 * 4 * 4 * 1, dtype=np.float64).reshape(2, 4, 4, 1)
    x[1] = -x[1]
    features = jnp.asarray(x)
    # box 0: the whole image 0 in 2x2 bins (quadrant maxima); box 1: image 1, one bin; box 2: past the
    # right and bottom border of image 0 with 4 bins over rows 2..3 (one row each, some bins empty)
    boxes = jnp.asarray([[0.0, 0.0, 3.0, 3.0], [0.2, 0.4, 2.6, 1.4], [2.0, 2.0, 5.0, 5.0]])
    bidx = jnp.asarray([0, 1, 0])
    dy = jnp.asarray(np.arange(1, 3 * 2 * 2 + 1, dtype=np.float64).reshape(3, 2, 2, 1))

    @jax.jit
    def run():
        return {name: _vjp(lambda v, m=m: m.roi_pool(v, boxes, bidx, output_size=2), features, dy)
                for name, m in PATHS.items()}

    out = run()
    for name in PATHS:
        y, g = (np.asarray(t) for t in out[name])
        np.testing.assert_array_equal(y[0, ..., 0], [[5, 7], [13, 15]])
        # box 1: rows round(0.4)=0 .. round(1.4)=1, cols 0 .. 3; bins of 1 row x 2 cols; image 1 is -x
        np.testing.assert_array_equal(y[1, ..., 0], -np.array([[16, 18], [20, 22]]))
        # box 2: rows/cols 2..5 clipped to 2..3; bins of 2 rows x 2 cols reach past the border
        np.testing.assert_array_equal(y[2, ..., 0], [[15, 0], [0, 0]])
        want = np.zeros_like(x)
        want[0, 1, 1], want[0, 1, 3], want[0, 3, 1] = 1, 2, 3
        want[0, 3, 3] = 4 + 9                        # box 0's last bin and box 2's first share the pixel
        want[1, 0, 0], want[1, 0, 2], want[1, 1, 0], want[1, 1, 2] = 5, 6, 7, 8
        np.testing.assert_array_equal(g, want)


# ------------------------------------------------------------------------------------------- losses

def test_smooth_l1_values_and_gradients(x64):
    d = np.array([-3.0, -0.5, 0.0, 0.2, 0.99, 1.5])
    pred, target = jnp.asarray(d + 1.0), jnp.ones(6)

    @jax.jit
    def run():
        out = {}
        for name, m in PATHS.items():
            for beta in (1.0, 0.5, 0.0):
                out[f"{name} {beta}"] = jax.value_and_grad(lambda p, t, b=beta: m.smooth_l1_loss(p, t, beta=b),
                                                     argnums=(0, 1))(pred, target)
        return out

    out = run()
    for beta in (1.0, 0.5, 0.0):
        a = np.abs(d)
        per = a if beta == 0 else np.where(a < beta, 0.5 * a ** 2 / beta, a - 0.5 * beta)
        slope = np.sign(d) if beta == 0 else np.clip(d / beta, -1, 1)
        for name in PATHS:
            loss, (gp, gt) = out[f"{name} {beta}"]
            np.testing.assert_allclose(loss, per.mean(), rtol=1e-14)
            np.testing.assert_allclose(gp, slope / 6, rtol=1e-14)
            np.testing.assert_allclose(gt, -slope / 6, rtol=1e-14)
    np.testing.assert_allclose(out["manual 1.0"][0], (2.5 + 0.125 + 0 + 0.02 + 0.5 * 0.99 ** 2 + 1.0) / 6, rtol=1e-14)


def _pixel_ce_numpy(logits, labels, weights, ignore):
    z = logits.reshape(-1, logits.shape[-1])
    y = labels.ravel()
    keep = y != ignore
    logp = z - z.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    w = np.ones(z.shape[1]) if weights is None else weights
    return np.sum(w[y[keep]] * -logp[keep, y[keep]]) / np.sum(w[y[keep]])


def test_pixel_cross_entropy_weights_ignores_and_bad_labels(x64):
    r = _rng(3)
    logits = r.standard_normal((2, 3, 4, 5)) * 2
    labels = r.integers(0, 5, (2, 3, 4))
    labels[0, 0, :2] = -1
    weights = r.uniform(0.3, 3.0, 5)
    bad = labels.copy()
    bad[1, 2, 3] = 5                     # out of range, not ignored
    z, y, wj = jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(weights)
    all_ignored = jnp.full((2, 3, 4), 7)
    labels2 = np.where(labels < 0, 2, labels)          # ignore_index=2 (the -1 pixels now class 2)

    @jax.jit
    def run():
        out = {}
        for name, m in PATHS.items():
            out[name] = jax.value_and_grad(lambda a, b: m.pixel_cross_entropy(a, y, b), argnums=(0, 1))(z, wj)
            out[name + " plain"] = m.pixel_cross_entropy(z, jnp.where(y < 0, 0, y))
            out[name + " bad"] = jax.value_and_grad(lambda a: m.pixel_cross_entropy(a, jnp.asarray(bad), wj))(z)
            out[name + " none"] = m.pixel_cross_entropy(z, all_ignored, ignore_index=7)
            out[name + " ignore 2"] = m.pixel_cross_entropy(z, jnp.asarray(labels2), ignore_index=2)
        out["sce"] = ops.softmax_cross_entropy(z.reshape(-1, 5), jnp.where(y < 0, 0, y).ravel())
        return out

    out = run()
    want = _pixel_ce_numpy(logits, labels, weights, -1)
    for name in PATHS:
        (loss, (gz, gw)) = out[name]
        np.testing.assert_allclose(loss, want, rtol=1e-13)
        np.testing.assert_array_equal(np.asarray(gz)[0, 0, :2], 0)          # ignored pixels: no gradient
        # no weights, no ignored pixel: the mean softmax cross-entropy over every pixel
        np.testing.assert_allclose(out[name + " plain"], out["sce"], rtol=1e-13)
        np.testing.assert_allclose(out[name + " ignore 2"], _pixel_ce_numpy(logits, labels2, None, 2), rtol=1e-13)
        bl, bg = out[name + " bad"]
        assert np.isnan(float(bl))
        bg = np.asarray(bg)
        assert np.isnan(bg[1, 2, 3]).all() and np.isfinite(np.delete(bg.reshape(-1, 5), 23, axis=0)).all()
        assert np.isnan(float(out[name + " none"]))                              # 0 / 0, as PyTorch
    for a, b in zip(out["manual"][1], out["reference"][1]):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-15)
    # the class weights' gradient by finite differences of the NumPy loss
    eps, num = 1e-6, np.zeros(5)
    for cls in range(5):
        e = np.eye(5)[cls] * eps
        num[cls] = (_pixel_ce_numpy(logits, labels, weights + e, -1) - _pixel_ce_numpy(logits, labels, weights - e, -1)) / (2 * eps)
    np.testing.assert_allclose(out["manual"][1][1], num, rtol=1e-7, atol=1e-10)


# --------------------------------------------------------------------------------------- bad inputs

def _z(*shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


_BOX, _BI = jnp.zeros((2, 4)), jnp.zeros(2, jnp.int32)
BAD = [
    (lambda m: m.upsample_nearest(_z(3, 4, 2)), r"upsample_nearest: `x` must have rank 4 \(\(N, H, W, C\)\), got shape \(3, 4, 2\)"),
    (lambda m: m.upsample_bilinear(_z(1, 0, 4, 2)), r"upsample_bilinear: `x` \(1, 0, 4, 2\) has an empty spatial axis"),
    (lambda m: m.upsample_bilinear(_z(1, 2, 2, 1), scale=1.5), r"upsample_bilinear: `scale` must be a positive int"),
    (lambda m: m.max_unpool2d(_z(1, 2, 2, 1), _z(1, 2, 3, 1, dtype=jnp.int32), output_size=4),
     r"max_unpool2d: `indices` must have the shape of `x` \(1, 2, 2, 1\), got \(1, 2, 3, 1\)"),
    (lambda m: m.max_unpool2d(_z(1, 2, 2, 1), _z(1, 2, 2, 1), output_size=4),
     r"max_unpool2d: `indices` must be integers .* got dtype float32"),
    (lambda m: m.roi_align(_z(1, 4, 4, 2), jnp.zeros((2, 5)), _BI), r"roi_align: `boxes` must have shape \(K, 4\) .* got \(2, 5\)"),
    (lambda m: m.roi_align(_z(1, 4, 4, 2), _BOX, jnp.zeros(3, jnp.int32)),
     r"roi_align: `box_batch_index` must have one entry per box, got boxes \(2, 4\) and box_batch_index \(3,\)"),
    (lambda m: m.roi_align(_z(4, 4, 2), _BOX, _BI), r"roi_align: `features` must have rank 4 .* got shape \(4, 4, 2\)"),
    (lambda m: m.roi_align(_z(1, 4, 4, 2), _BOX, jnp.zeros(2)), r"roi_align: `box_batch_index` must be integers"),
    (lambda m: m.roi_align(_z(1, 4, 4, 2), _BOX, _BI, sampling_ratio=0),
     r"roi_align: `sampling_ratio` must be a positive int \(the adaptive mode <= 0 is not supported\), got 0"),
    (lambda m: m.roi_pool(_z(1, 4, 4, 2), _BOX, _BI, spatial_scale=0.0), r"roi_pool: `spatial_scale` must be a positive number"),
    (lambda m: m.smooth_l1_loss(_z(3, 4), _z(4, 3)),
     r"smooth_l1_loss: `pred` and `target` must have the same shape, got \(3, 4\) and \(4, 3\)"),
    (lambda m: m.smooth_l1_loss(_z(0), _z(0)), r"smooth_l1_loss: `pred` must not be empty, got shape \(0,\)"),
    (lambda m: m.pixel_cross_entropy(_z(1, 2, 2, 3), _z(1, 2, 3, dtype=jnp.int32)),
     r"pixel_cross_entropy: `labels` must have shape \(N, H, W\) = \(1, 2, 2\), got \(1, 2, 3\)"),
    (lambda m: m.pixel_cross_entropy(_z(1, 2, 2, 3), _z(1, 2, 2)), r"pixel_cross_entropy: `labels` must be integer"),
    (lambda m: m.pixel_cross_entropy(_z(1, 2, 2, 3), _z(1, 2, 2, dtype=jnp.int32), _z(4)),
     r"pixel_cross_entropy: `class_weights` must have shape \(C,\) = \(3,\), got \(4,\)"),
    (lambda m: m.pixel_cross_entropy(_z(2, 3), _z(2, dtype=jnp.int32)), r"pixel_cross_entropy: `logits` must have rank 4"),
]


@pytest.mark.parametrize("path", list(PATHS))
def test_bad_inputs_raise_one_line_errors_naming_the_op(path):
    for call, pattern in BAD:
        with pytest.raises(ValueError, match=pattern) as e:
            call(PATHS[path])
        assert "\n" not in str(e.value)
    for call, pattern in BAD[:2]:                  # the dispatching functional API raises the same
        with pytest.raises(ValueError, match=pattern):
            call(type("M", (), {n: staticmethod(getattr(F, n)) for n in ("upsample_nearest", "upsample_bilinear")}))
