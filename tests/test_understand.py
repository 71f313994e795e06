"""jaxnet.understand: saliency, guided backprop, Grad-CAM, occlusion, the randomisation check,
class visualisation, fooling images, FGSM/PGD, inversion, DeepDream, style transfer (with the
registered gram_matrix op), maximally activating patches, adversarial training in fit.

Tiny models (an Affine-only net, a one-conv net on the 8x8 digits) and jitted calls keep the
module cheap: XLA compiles each program once.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet import functional as F
from jaxnet import manual, nn, ops, registry
from jaxnet import understand as U
from jaxnet.train import make_train_step
from jaxnet.train.state import create_train_state

pytestmark = pytest.mark.xdist_group("understand")

KEY = jax.random.key(0, impl="rbg")   # random draws inside jit: threefry's program costs seconds to compile
# model inits (eager) take a threefry key: jaxnet.nn.init's eager draws then come from one flat draw compiled
# once (with an rbg key every weight shape compiles its own jax.random.normal)
INIT_KEY = jax.random.PRNGKey(0)


def rbg(seed):
    return jax.random.key(seed, impl="rbg")


def _np(shape, seed=0, scale=1.0):
    return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def jit(fn, **static):
    """``fn`` jitted with the model (argument 0) and the named keywords static."""
    return jax.jit(fn, static_argnums=0, static_argnames=tuple(static))


# --------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def linear():
    """An Affine-only classifier on (N, 4, 4, 2) images: scores = flatten(x) @ W + b."""
    model = nn.Sequential((nn.Flatten(), nn.Affine(3)), names=("flat", "fc"))
    params, state = model.init(jax.random.PRNGKey(1), (2, 4, 4, 2))
    return model, params, state


@pytest.fixture(scope="module")
def mlp():
    """A small nonlinear net on (N, 4, 4, 2) images (its input gradient depends on x)."""
    model = nn.Sequential((nn.Flatten(), nn.Affine(6), nn.Tanh(), nn.Affine(3)))
    params, state = model.init(jax.random.PRNGKey(4), (2, 4, 4, 2))
    return model, params, state


@pytest.fixture(scope="module")
def digits_net():
    """A one-conv net trained for 150 full-batch Adam steps on 600 digits (one scan, ~1 s)."""
    from jaxnet.data import load_digits
    d = load_digits(seed=0)
    model = nn.Sequential((nn.Conv2D(8, kernel=3), nn.ReLU(), nn.MaxPool2D(2), nn.Flatten(), nn.Affine(10)),
                          names=("conv", "relu", "pool", "flat", "fc"))
    params, state = model.init(jax.random.PRNGKey(2), (1, 8, 8, 1))
    x, y = jnp.asarray(d.x_train[:600]), jnp.asarray(d.y_train[:600])
    opt = optax.adam(1e-2)

    @jax.jit
    def train(params):
        def step(c, _):
            p, s = c
            g = jax.grad(lambda q: jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
                model.apply(q, state, x, train=False)[0], y)))(p)
            u, s = opt.update(g, s, p)
            return (optax.apply_updates(p, u), s), None
        return jax.lax.scan(step, (params, opt.init(params)), None, length=150)[0][0]

    params = train(params)
    xt, yt = jnp.asarray(d.x_test[:64]), jnp.asarray(d.y_test[:64])
    return model, params, state, xt, yt


@functools.partial(jax.jit, static_argnums=0)
def _scores(model, params, state, x):
    return model.apply(params, state, x, train=False)[0]


def _accuracy(model, params, state, x, y):
    return float(np.mean(np.argmax(_scores(model, params, state, x), -1) == np.asarray(y)))


# ------------------------------------------------------------------------------------------ saliency

def test_saliency_of_a_linear_model_is_its_abs_weight_row(linear):
    model, params, state = linear
    x, y = _np((2, 4, 4, 2)), jnp.array([2, 0])
    sal = jit(U.saliency_map)(model, params, state, x, y)
    w = np.asarray(params["fc"]["w"])                                   # (32, 3)
    for n in range(2):
        want = np.max(np.abs(w[:, int(y[n])].reshape(4, 4, 2)), axis=-1)
        np.testing.assert_allclose(sal[n], want, rtol=1e-6)
    g = jit(U.input_gradient)(model, params, state, x, 1)               # one int: the same class
    np.testing.assert_allclose(g[0], w[:, 1].reshape(4, 4, 2), rtol=1e-6)
    # SmoothGrad of a linear model is the same map (the gradient does not depend on x); noise 0 too
    sg = jit(U.smoothgrad, num_samples=True, noise=True)(model, params, state, x, y, KEY, num_samples=4, noise=0.3)
    np.testing.assert_allclose(sg, sal, rtol=1e-5)


def test_smoothgrad_averages_noisy_gradients(mlp):
    model, params, state = mlp
    x, y = _np((2, 4, 4, 2), seed=8), jnp.array([0, 2])
    sg = jit(U.smoothgrad, num_samples=True, noise=True, reduce=True)
    g = sg(model, params, state, x, y, KEY, num_samples=3, noise=0.2, reduce="none")

    @jax.jit
    def want(x):
        sigma = 0.2 * (jnp.max(x, axis=(1, 2, 3), keepdims=True) - jnp.min(x, axis=(1, 2, 3), keepdims=True))
        eps = jax.random.normal(KEY, (3,) + x.shape, x.dtype) * sigma
        grads = [U.input_gradient(model, params, state, x + eps[i], y) for i in range(3)]
        return sum(grads) / 3, U.input_gradient(model, params, state, x, y)

    w, g0 = want(x)
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6)
    assert not np.allclose(g, g0, rtol=1e-3)


def test_guided_relu_zeroes_negative_gradients_and_negative_inputs():
    x = jnp.array([-2.0, -0.5, 0.5, 2.0, 1.0, -1.0])
    dy = jnp.array([1.0, -1.0, 1.0, -1.0, 3.0, 3.0])
    y, vjp = jax.vjp(U.guided_relu, x)
    np.testing.assert_array_equal(y, jnp.maximum(x, 0))
    np.testing.assert_array_equal(vjp(dy)[0], [0.0, 0.0, 1.0, 0.0, 3.0, 0.0])
    # the plain ReLU would pass the negative gradient at x = 2
    assert float(jax.vjp(jax.nn.relu, x)[1](dy)[0][3]) == -1.0


def test_with_guided_relu_replaces_every_relu_and_keeps_the_forward(digits_net):
    model = nn.small_convnet(channels=(4, 4), num_classes=3, norm=None)
    guided = U.with_guided_relu(model)
    assert "ReLU(" not in repr(guided).replace("GuidedReLU(", "") and repr(guided).count("GuidedReLU(") == 2
    params, state = model.init(INIT_KEY, (2, 8, 8, 1))
    x = _np((2, 8, 8, 1))
    np.testing.assert_array_equal(_scores(model, params, state, x), _scores(guided, params, state, x))
    m, p, s, xt, yt = digits_net
    gb = jit(U.guided_backprop)(m, p, s, xt[:2], yt[:2])
    vanilla = jit(U.input_gradient)(m, p, s, xt[:2], yt[:2])
    assert gb.shape == xt[:2].shape and not np.allclose(gb, vanilla)
    with pytest.raises(ValueError, match="with_guided_relu: the model has no nn.ReLU layer"):
        U.with_guided_relu(nn.Sequential((nn.Flatten(), nn.Affine(2))))


def test_grad_cam_of_an_identity_conv_matches_the_hand_computation():
    """conv (1x1, identity weights, no bias) -> global average pool -> affine: A = x, so
    dS/dA[i, j, k] = W[k, y] / (h w), alpha_k = W[k, y] / (h w), CAM = relu(sum_k alpha_k x_k)."""
    model = nn.Sequential((nn.Conv2D(3, kernel=1, bias=False), nn.GlobalAvgPool(), nn.Affine(4)),
                          names=("feat", "gap", "fc"))
    params, state = model.init(INIT_KEY, (2, 5, 6, 3))
    params = {**params, "feat": {"w": jnp.eye(3).reshape(1, 1, 3, 3)}}
    x, y = _np((2, 5, 6, 3), seed=3), jnp.array([1, 3])
    cam = jit(U.grad_cam, layer=True)(model, params, state, x, y, layer="feat")
    w = np.asarray(params["fc"]["w"])
    for n in range(2):
        alpha = w[:, int(y[n])] / 30.0
        want = np.maximum(np.einsum("hwk,k->hw", np.asarray(x[n]), alpha), 0)
        np.testing.assert_allclose(cam[n], want, rtol=1e-5, atol=1e-7)
    big = jit(U.grad_cam, layer=True, size=True)(model, params, state, x, y, layer="feat", size=(10, 12))
    assert big.shape == (2, 10, 12)
    with pytest.raises(ValueError, match=r"grad_cam: layer 'nope' is not a top-level layer"):
        U.grad_cam(model, params, state, x, y, "nope")
    with pytest.raises(ValueError, match=r"grad_cam: layer 'fc' is the model's last layer"):
        U.grad_cam(model, params, state, x, y, "fc")
    with pytest.raises(ValueError, match=r"grad_cam: layer 'gap' outputs shape \(2, 3\)"):
        U.grad_cam(model, params, state, x, y, "gap")


def test_occlusion_equals_a_python_loop(linear):
    model, params, state = linear
    x, y = _np((2, 4, 4, 2), seed=4), jnp.array([0, 2])
    got = jit(U.occlusion_map, patch=True, stride=True, fill=True)(model, params, state, x, y,
                                                                  patch=2, stride=1, fill=0.5)
    assert got.shape == (2, 3, 3)
    probs = lambda v: jax.nn.softmax(model.apply(params, state, v, train=False)[0], -1)  # noqa: E731
    want = np.zeros((2, 3, 3))
    for i in range(3):
        for j in range(3):
            xo = np.array(x)
            xo[:, i:i + 2, j:j + 2, :] = 0.5
            p = np.asarray(probs(jnp.asarray(xo)))
            want[:, i, j] = p[np.arange(2), np.asarray(y)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    chunked = jit(U.occlusion_map, patch=True, stride=True, fill=True, batch_positions=True)(
        model, params, state, x, y, patch=2, stride=1, fill=0.5, batch_positions=4)
    np.testing.assert_allclose(chunked, got, rtol=1e-6)


def test_rank_correlation_matches_spearman_with_ties():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 5, 40).astype(float), rng.standard_normal(40)
    assert U.rank_correlation(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic, abs=1e-12)
    assert U.rank_correlation(a, a) == pytest.approx(1.0)
    assert U.rank_correlation(a, -a) == pytest.approx(-1.0)
    assert np.isnan(U.rank_correlation(np.ones(4), b[:4]))


def test_cascading_randomization_goes_from_the_top_and_changes_the_map(digits_net):
    model, params, state, x, y = digits_net
    assert U.param_groups(model, params) == ["conv", "fc"]
    res = U.cascading_randomization(model, params, state, x[:3], y[:3], jax.random.PRNGKey(7),   # eager inits
                                    method=jit(U.saliency_map))
    assert res.layers == ("fc", "conv")
    assert res.maps.shape == (3, 3, 8, 8) and res.rank_correlation.shape == (2, 3)
    assert np.all(res.rank_correlation < 0.9)          # random weights: a different map
    np.testing.assert_allclose(res.maps[0], jit(U.saliency_map)(model, params, state, x[:3], y[:3]))


# ----------------------------------------------------------------------------------- adversarial

def test_fgsm_step_is_eps_times_the_sign_of_the_input_gradient(digits_net):
    model, params, state, x, y = digits_net
    x, y = x[:8], y[:8]
    g = jit(U.loss_gradient)(model, params, state, x, y)
    adv = jit(U.fgsm, eps=True)(model, params, state, x, y, eps=0.05)
    np.testing.assert_allclose(adv - x, 0.05 * np.sign(g), atol=1e-7)
    tgt = jit(U.fgsm, eps=True, targeted=True)(model, params, state, x, y, eps=0.05, targeted=True)
    np.testing.assert_allclose(tgt - x, -0.05 * np.sign(g), atol=1e-7)


@pytest.mark.parametrize("norm", ["linf", pytest.param("l2", marks=pytest.mark.slow)])
def test_pgd_stays_in_its_ball_and_range_and_beats_fgsm(digits_net, norm):
    model, params, state, x, y = digits_net
    eps = 0.1 if norm == "linf" else 1.0
    clip = (0.0, 1.0)
    pgd = jit(U.pgd, eps=True, norm=True, steps=True, random_start=True, clip=True, step_size=True)
    adv = pgd(model, params, state, x, y, eps=eps, norm=norm, steps=10, random_start=True, key=KEY, clip=clip)
    d = np.asarray(adv - x).reshape(len(x), -1)
    size = np.max(np.abs(d), 1) if norm == "linf" else np.linalg.norm(d, axis=1)
    assert np.all(size <= eps * (1 + 1e-5))
    assert float(adv.min()) >= 0.0 and float(adv.max()) <= 1.0
    clean = _accuracy(model, params, state, x, y)
    # one step of size eps from x: FGSM (L-inf) or the normalised-gradient step (L2)
    one = pgd(model, params, state, x, y, eps=eps, norm=norm, steps=1, random_start=False, step_size=eps, clip=clip)
    if norm == "linf":
        np.testing.assert_allclose(one, jit(U.fgsm, eps=True, clip=True)(model, params, state, x, y, eps=eps,
                                                                         clip=clip), atol=1e-6)
    acc_fgsm = _accuracy(model, params, state, one, y)
    acc_pgd = _accuracy(model, params, state, adv, y)
    assert clean > 0.8, clean
    assert acc_pgd <= acc_fgsm and acc_pgd < clean, (clean, acc_fgsm, acc_pgd)


def test_project_onto_the_balls():
    d = jnp.array([[[[3.0, -4.0]]], [[[0.1, 0.2]]]])                  # (2, 1, 1, 2): norms 5 and ~0.22
    np.testing.assert_allclose(U.project(d, 1.0, "l2")[0].ravel(), [0.6, -0.8], rtol=1e-6)
    np.testing.assert_allclose(U.project(d, 1.0, "l2")[1], d[1])
    np.testing.assert_allclose(U.project(d, 0.15, "linf").ravel(), [0.15, -0.15, 0.1, 0.15])


def test_fooling_images_reach_the_target_and_report_iterations(digits_net):
    model, params, state, x, y = digits_net
    x, y = x[:6], y[:6]
    target = (y + 1) % 10
    res = jit(U.fooling_images, learning_rate=True, max_iterations=True)(
        model, params, state, x, target, learning_rate=1.0, max_iterations=100)
    assert bool(jnp.all(res.fooled))
    np.testing.assert_array_equal(jnp.argmax(_scores(model, params, state, res.images), -1), target)
    assert np.all(np.asarray(res.iterations) >= 1) and np.all(np.asarray(res.iterations) <= 100)
    # already classified as the target: no step, unchanged
    same = jit(U.fooling_images, learning_rate=True, max_iterations=True)(
        model, params, state, x, jnp.argmax(_scores(model, params, state, x), -1),
        learning_rate=1.0, max_iterations=100)
    np.testing.assert_array_equal(same.iterations, 0)
    np.testing.assert_array_equal(same.images, x)


# ------------------------------------------------------------------------------------- synthesis

def test_class_visualization_raises_the_target_score(digits_net):
    model, params, state, x, y = digits_net
    x0 = _np((2, 8, 8, 1), seed=5, scale=0.1)
    t = jnp.array([3, 7])
    cv = jit(U.class_visualization, num_iterations=True, learning_rate=True, max_jitter=True, blur_every=True)
    img = cv(model, params, state, x0, t, KEY, num_iterations=20, learning_rate=1.0, max_jitter=1, blur_every=5)
    s0, s1 = np.asarray(_scores(model, params, state, x0)), np.asarray(_scores(model, params, state, img))
    assert np.all(s1[[0, 1], [3, 7]] > s0[[0, 1], [3, 7]] + 1.0)
    assert np.array_equal(np.argmax(s1, -1), [3, 7])


def test_gaussian_blur_matches_scipy():
    ndimage = pytest.importorskip("scipy.ndimage")
    x = _np((1, 7, 9, 2), seed=6)
    got = jax.jit(U.gaussian_blur, static_argnums=1)(x, 0.8)
    want = ndimage.gaussian_filter1d(ndimage.gaussian_filter1d(np.asarray(x), 0.8, axis=1), 0.8, axis=2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_feature_inversion_and_deepdream(digits_net):
    model, params, state, x, y = digits_net
    inv = jit(U.feature_inversion, layer=True, num_iterations=True, learning_rate=True)
    img, losses = inv(model, params, state, x[:1], layer="conv", x0=jnp.zeros_like(x[:1]), num_iterations=30,
                      learning_rate=0.05)
    assert losses.shape == (30,) and float(losses[-1]) < 0.5 * float(losses[0])
    dd = jit(U.deepdream, layer=True, num_iterations=True, learning_rate=True)
    out = dd(model, params, state, x[:1], layer="relu", key=KEY, num_iterations=5, learning_rate=0.05)
    act = jax.jit(lambda v: jnp.sum(U.layer_output(model, params, state, v, "relu") ** 2))
    assert float(act(out)) > float(act(x[:1]))


# ------------------------------------------------------------------------------ gram op and style

def test_gram_matrix_values_and_hand_backward_in_float64(x64):
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 3, 4, 5)))
    f = np.asarray(x).reshape(2, 12, 5)
    want = np.einsum("npc,npd->ncd", f, f) / 60.0
    for fn in (ops.gram_matrix, manual.gram_matrix):
        np.testing.assert_allclose(fn(x), want, rtol=1e-13)
        np.testing.assert_allclose(fn(x, normalize=False), want * 60.0, rtol=1e-13)
    dg = jnp.asarray(np.random.default_rng(1).standard_normal((2, 5, 5)))
    for normalize in (True, False):
        ref = jax.vjp(lambda v: ops.gram_matrix(v, normalize), x)[1](dg)[0]
        hand = jax.vjp(lambda v: manual.gram_matrix(v, normalize), x)[1](dg)[0]
        np.testing.assert_allclose(hand, ref, rtol=1e-12, atol=1e-14)
    # and against centred differences of a scalar function of G
    from jaxnet.gradcheck.numeric import numerical_gradient
    loss = lambda v: jnp.sum(jnp.sin(manual.gram_matrix(v)))          # noqa: E731
    np.testing.assert_allclose(jax.grad(loss)(x), numerical_gradient(loss, (x,)), rtol=1e-6, atol=1e-9)


def test_gram_matrix_is_a_registered_op():
    spec = registry.get("gram_matrix")
    assert spec.reference is ops.gram_matrix and spec.manual is manual.gram_matrix
    assert F.gram_matrix.reference is ops.gram_matrix and F.gram_matrix.manual is manual.gram_matrix
    assert set(registry.REGISTRY) == set(ops.OP_NAMES) and "gram_matrix" in ops.OP_NAMES
    with pytest.raises(ValueError, match=r"gram_matrix: `features` must have rank 4"):
        F.gram_matrix(jnp.ones((3, 4)))
    with pytest.raises(ValueError, match=r"gram_matrix: `normalize` must be a bool"):
        manual.gram_matrix(jnp.ones((1, 2, 2, 3)), "yes")


def test_style_losses_by_hand():
    a, b = _np((1, 2, 3, 2), seed=1), _np((1, 2, 3, 2), seed=2)
    np.testing.assert_allclose(U.content_loss(a, b, 0.5), 0.5 * np.sum((np.asarray(a) - np.asarray(b)) ** 2),
                               rtol=1e-6)
    x = np.asarray(a)
    tv = np.sum((x[:, 1:] - x[:, :-1]) ** 2) + np.sum((x[:, :, 1:] - x[:, :, :-1]) ** 2)
    np.testing.assert_allclose(U.tv_loss(a, 2.0), 2.0 * tv, rtol=1e-6)
    ga, gb = F.gram_matrix(a), F.gram_matrix(b)
    got = U.style_loss([a, b], [gb, ga], [1.0, 3.0])
    np.testing.assert_allclose(got, 4.0 * np.sum((np.asarray(ga) - np.asarray(gb)) ** 2), rtol=1e-5)
    with pytest.raises(ValueError, match="style_loss: need one target Gram matrix and one weight per layer"):
        U.style_loss([a], [ga, gb], [1.0])
    with pytest.raises(ValueError, match=r"content_loss: `current` \(1, 2, 3, 2\) and `target` \(1, 2\)"):
        U.content_loss(a, a[:, :, 0, 0])


@pytest.fixture(scope="module")
def extractor():
    model = nn.Sequential((nn.Conv2D(4, kernel=3), nn.ReLU()), names=("c1", "r1"))
    params, state = model.init(INIT_KEY, (1, 6, 6, 3))
    return model, params, state


@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_style_transfer_loss_decreases(extractor, optimizer):
    model, params, state = extractor
    rng = np.random.default_rng(0)
    content, style = jnp.asarray(rng.uniform(size=(1, 6, 6, 3)), jnp.float32), jnp.asarray(rng.uniform(size=(1, 5, 5, 3)), jnp.float32)
    st = jit(U.style_transfer, content_layer=True, style_layers=True, style_weights=True, num_iterations=True,
             optimizer=True, learning_rate=True, init=True, clip=True)
    res = st(model, params, state, content, style, content_layer="r1", style_layers=("c1",),
             style_weights=(100.0,), num_iterations=15, optimizer=optimizer, learning_rate=0.05,
             init="random", key=rbg(3), clip=(0.0, 1.0))
    assert res.losses.shape == (15,) and res.image.shape == (1, 6, 6, 3)
    assert np.all(np.isfinite(res.losses)) and float(res.losses[-1]) < 0.7 * float(res.losses[0]), res.losses


def test_load_image_reads_any_path(tmp_path):
    from PIL import Image
    arr = (np.arange(6 * 10 * 3) % 256).astype(np.uint8).reshape(6, 10, 3)
    Image.fromarray(arr).save(tmp_path / "a picture.png")
    img = U.load_image(tmp_path / "a picture.png")
    assert img.dtype == np.float32 and img.shape == (6, 10, 3)
    np.testing.assert_allclose(img, arr / 255.0, atol=1e-7)
    assert U.load_image(str(tmp_path / "a picture.png"), 3).shape == (3, 5, 3)
    assert U.load_image(tmp_path / "a picture.png", (4, 4)).shape == (4, 4, 3)
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"load_image: cannot read '.*bad.jpg' as an image"):
        U.load_image(tmp_path / "bad.jpg")
    with pytest.raises(ValueError, match=r"load_image: no image file at '.*missing.jpg'"):
        U.load_image(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match=r"load_image: `size` must be None, a positive int or \(H, W\)"):
        U.load_image(tmp_path / "a picture.png", 0)


# ------------------------------------------------------------------------------------------ patches

def test_receptive_field_and_max_activating_patches(digits_net):
    model, params, state, x, y = digits_net
    rf = U.receptive_field(model, "pool", (1, 8, 8, 1))       # conv3x3 SAME (pad 1) then pool 2: 4x4, jump 2
    assert rf == U.ReceptiveField((4, 4), (2, 2), (-1, -1))
    assert U.receptive_field(model, "conv", (1, 8, 8, 1)) == U.ReceptiveField((3, 3), (1, 1), (-1, -1))
    top = U.max_activating_patches(model, params, state, x, "pool", 5, k=4, batch_size=24)
    acts = np.asarray(jit(U.layer_output, layer=True)(model, params, state, x, layer="pool"))[..., 5]  # (64, 4, 4)
    best = acts.reshape(64, -1).max(1)
    np.testing.assert_array_equal(top.indices, np.argsort(-best, kind="stable")[:4])
    np.testing.assert_allclose(top.values, best[top.indices], rtol=1e-6)
    assert top.patches.shape == (4, 4, 4, 1)
    for i, (n, (r, c)) in enumerate(zip(top.indices, top.positions)):
        assert acts[n, r, c] == pytest.approx(top.values[i], rel=1e-6)
        t, l0, b, rr = top.boxes[i]
        top_, left = -1 + 2 * r, -1 + 2 * c
        np.testing.assert_array_equal(top.patches[i][t - top_:b - top_, l0 - left:rr - left], np.asarray(x)[n, t:b, l0:rr])
    with pytest.raises(ValueError, match=r"max_activating_patches: `unit` must be a channel index in \[0, 8\)"):
        U.max_activating_patches(model, params, state, x, "pool", 8)
    with pytest.raises(ValueError, match=r"receptive_field: cannot compute the receptive field through layer 'flat'"):
        U.receptive_field(model, "fc", (1, 8, 8, 1))


# --------------------------------------------------------------------------- adversarial training

def test_adversarial_train_step(linear):
    model, params, state = linear
    opt = optax.sgd(0.1)
    ts0 = create_train_state(model, opt, 0, (8, 4, 4, 2))
    xb, yb, mask = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 4, 4, 2)), jnp.float32), jnp.arange(8) % 3, jnp.ones(8)
    plain = make_train_step(model, opt, donate=False)
    a, ma = plain(ts0, xb, yb, mask)
    aug = make_train_step(model, opt, donate=False,
                          adversarial=U.Adversarial(0.3, kind="pgd_linf", steps=2, mode="augment",
                                                    random_start=False, clip=(0.0, 1.0)))
    c, mc = aug(ts0, xb, yb, mask)
    assert float(mc["count"]) == 16.0 and float(ma["count"]) == 8.0
    assert float(mc["loss"]) > float(ma["loss"])                      # the adversarial half costs more


@pytest.mark.slow
def test_adversarial_step_at_eps_0_is_the_plain_step(linear):
    model, params, state = linear
    opt = optax.sgd(0.1)
    ts0 = create_train_state(model, opt, 0, (8, 4, 4, 2))
    xb, yb, mask = jnp.asarray(np.random.default_rng(0).uniform(size=(8, 4, 4, 2)), jnp.float32), jnp.arange(8) % 3, jnp.ones(8)
    a, ma = make_train_step(model, opt, donate=False)(ts0, xb, yb, mask)
    zero = make_train_step(model, opt, donate=False, adversarial=U.Adversarial(0.0, kind="fgsm"))
    b, mb = zero(ts0, xb, yb, mask)
    # eps = 0: the adversarial batch is the batch itself, and the keys are untouched: the same update
    jax.tree_util.tree_map(lambda u, v: np.testing.assert_allclose(u, v, rtol=1e-6, atol=1e-7), a.params, b.params)
    np.testing.assert_array_equal(jax.random.key_data(a.key), jax.random.key_data(b.key))
    np.testing.assert_allclose(ma["loss"], mb["loss"], rtol=1e-6)


def _tiny_data():
    from jaxnet.data import Dataset
    rng = np.random.default_rng(0)
    xs = rng.uniform(0, 1, (48, 4, 4, 1)).astype(np.float32)
    ys = (xs.mean(axis=(1, 2, 3)) > 0.5).astype(np.int32)
    return Dataset(xs[:32], ys[:32], xs[32:], ys[32:], xs[32:], ys[32:], ("a", "b"))


def test_fit_validates_its_adversarial_argument():
    from jaxnet.train import fit
    with pytest.raises(ValueError, match="fit: adversarial must be None or a jaxnet.understand.Adversarial"):
        fit(nn.Sequential((nn.Flatten(), nn.Affine(2))), _tiny_data(), optimizer=optax.sgd(0.1), epochs=1,
            batch_size=16, key=0, progress=False, adversarial={"eps": 0.1})


@pytest.mark.slow
def test_fit_with_adversarial_runs():
    from jaxnet.train import fit
    model = nn.Sequential((nn.Flatten(), nn.Affine(2)))
    res = fit(model, _tiny_data(), optimizer=optax.sgd(0.1), epochs=1, batch_size=16, key=0, progress=False,
              adversarial=U.Adversarial(0.05, kind="pgd_l2", steps=2, clip=(0.0, 1.0)))
    assert len(res.history["epoch"]) == 1 and np.isfinite(res.history["train_loss"][0])


# ------------------------------------------------------------------------------------- bad inputs

def _bad_calls(linear):
    model, params, state = linear
    x, y = _np((2, 4, 4, 2)), jnp.array([0, 1])
    return [
        (lambda: U.fgsm(model, params, state, x, y, -0.1), r"fgsm: `eps` must be a non-negative number, got -0.1"),
        (lambda: U.pgd(model, params, state, x, y, -1.0), r"pgd: `eps` must be a non-negative number"),
        (lambda: U.pgd(model, params, state, x, y, 0.1, norm="l3"), r"pgd: `norm` must be one of 'linf', 'l2'"),
        (lambda: U.pgd(model, params, state, x, y, 0.1, random_start=True), r"pgd: `key` must be a PRNG key"),
        (lambda: U.pgd(model, params, state, x, y, 0.1, clip=(1.0, 0.0)), r"pgd: `clip` low must be <= high"),
        (lambda: U.saliency_map(model, params, state, x[0], y),
         r"saliency_map: `x` must be images of rank 4 \(N, H, W, C\), got shape \(4, 4, 2\)"),
        (lambda: U.saliency_map(model, params, state, x, y[:1]),
         r"saliency_map: `y` must be integer class labels of shape \(2,\)"),
        (lambda: U.smoothgrad(model, params, state, x, y, KEY, num_samples=0),
         r"smoothgrad: `num_samples` must be an int >= 1"),
        (lambda: U.occlusion_map(model, params, state, x, y, patch=5),
         r"occlusion_map: `patch`=5 is larger than the images' H, W of x \(2, 4, 4, 2\)"),
        (lambda: U.fooling_images(model, params, state, x, y, learning_rate=0.0),
         r"fooling_images: `learning_rate` must be a positive number"),
        (lambda: U.feature_inversion(model, params, state, x, "nope", x),
         r"feature_inversion: layer 'nope' is not in the model"),
        (lambda: U.deepdream(model, params, state, x, "fc/w", KEY), r"deepdream: layer 'fc/w' is not in the model"),
        (lambda: U.class_visualization(model, params, state, x, y, KEY, blur_every=-1),
         r"class_visualization: `blur_every` must be an int >= 0"),
        (lambda: U.style_transfer(model, params, state, x, x[:1], content_layer="fc", style_layers=("fc",),
                                  style_weights=(1.0,)), r"style_transfer: one content and one style image"),
        (lambda: U.grad_cam(nn.Flatten(), {}, {}, x, y, "a"), r"grad_cam: splitting at layer 'a' needs a Sequential"),
        (lambda: U.Adversarial(-0.1), r"Adversarial: `eps` must be a non-negative number"),
        (lambda: U.Adversarial(0.1, kind="cw"), r"Adversarial: `kind` must be one of 'fgsm', 'pgd_linf', 'pgd_l2'"),
        (lambda: U.Adversarial(0.1, mode="mix"), r"Adversarial: `mode` must be one of 'replace', 'augment'"),
        (lambda: U.cascading_randomization(model, params, state, x, y, None), r"cascading_randomization: `key`"),
    ]


def test_bad_inputs_get_one_line_value_errors(linear):
    for call, match in _bad_calls(linear):
        with pytest.raises(ValueError, match=match) as e:
            call()
        assert "\n" not in str(e.value), str(e.value)


def test_functions_are_pure_under_jit(linear):
    """Same inputs, same outputs, jitted or not (no hidden state, keys explicit)."""
    model, params, state = linear
    x, y = _np((2, 4, 4, 2)), jnp.array([0, 1])
    f = functools.partial(U.pgd, eps=0.2, norm="l2", steps=3, step_size=0.1, random_start=True, key=KEY)
    a = jit(f)(model, params, state, x, y)
    b = jit(f)(model, params, state, x, y)
    np.testing.assert_array_equal(a, b)
    assert np.all(np.linalg.norm(np.asarray(a - x).reshape(2, -1), axis=1) <= 0.2 * (1 + 1e-5))   # in the L2 ball
    c = jit(functools.partial(U.pgd, eps=0.2, norm="l2", steps=3, step_size=0.1, random_start=True, key=rbg(1)))(
        model, params, state, x, y)
    assert not np.array_equal(a, c)                                   # the key is the only randomness
