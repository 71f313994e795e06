"""Generative models (jaxnet/generative: vae.py, gan.py, pixelcnn.py, augment.py): the VAE's
reparameterization and ELBO, DCGAN and MLP GAN nets and the GAN step (the saturating
generator's vanishing gradient), PixelCNN's masks and sampling, SimCLR's augmentations, the
input checks.

Cheap by construction: tiny shapes, params from NumPy where only their values matter, shapes
by ``jax.eval_shape``, one jitted program per check, random draws inside jit on "rbg" keys.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import nn, optim
from jaxnet.generative import augment as A
from jaxnet.generative import gan as G
from jaxnet.generative import pixelcnn as P
from jaxnet.generative import vae as V


def _key(seed):
    return jax.random.key(seed, impl="rbg")     # draws inside jit: threefry's program costs seconds to compile


def _np_params(model, shape, seed, scale=0.5):
    """``model.init``'s params and state (for the models here, without batch norm, a tree of empty
    dicts): the tree structure and shapes traced, nothing compiled, the params drawn by NumPy."""
    params, state = jax.eval_shape(lambda k: model.init(k, shape), _key(0))
    assert not jax.tree_util.tree_leaves(state)
    r = np.random.default_rng(seed)
    dt = jnp.result_type(float)
    return jax.tree_util.tree_map(lambda a: jnp.asarray(scale * r.standard_normal(a.shape), dt), params), state


def _softplus(x):
    return np.logaddexp(x, 0)


# ------------------------------------------------------------------------------------------------ VAE

def test_reparameterize_mean_std_and_gradient(x64):
    mu = np.array([1.0, -2.0, 0.5])
    logvar = np.log(np.array([4.0, 0.25, 1.0]))
    n = 20000
    key = _key(1)

    @jax.jit
    def run(m, lv):
        big_m, big_lv = jnp.broadcast_to(m, (n, 3)), jnp.broadcast_to(lv, (n, 3))
        z = V.reparameterize(key, big_m, big_lv)
        eps = V.reparameterize(key, jnp.zeros((n, 3)), jnp.zeros((n, 3)))
        dm, dlv = jax.grad(lambda a, b: jnp.sum(V.reparameterize(key, a, b)), argnums=(0, 1))(big_m, big_lv)
        return z, eps, dm, dlv

    z, eps, dm, dlv = map(np.asarray, run(mu, logvar))
    std = np.exp(0.5 * logvar)
    # 5 standard errors: the mean's is std/sqrt(n), the standard deviation's about std/sqrt(2n)
    np.testing.assert_array_less(np.abs(z.mean(0) - mu), 5 * std / math.sqrt(n))
    np.testing.assert_array_less(np.abs(z.std(0) - std), 5 * std / math.sqrt(2 * n))
    np.testing.assert_allclose(z, mu + std * eps, rtol=1e-14, atol=1e-14)     # z = mu + sigma * eps, same eps
    np.testing.assert_array_equal(dm, np.ones((n, 3)))
    np.testing.assert_allclose(dlv, 0.5 * std * eps, rtol=1e-14, atol=1e-14)


def test_elbo_matches_numpy_at_a_known_configuration(x64):
    n, latent, hidden = 3, 2, 5
    model = V.mlp_vae((4, 4, 1), (hidden,), latent)
    params, state = _np_params(model, (n, 4, 4, 1), seed=2)
    r = np.random.default_rng(3)
    x = (r.random((n, 4, 4, 1)) < 0.4).astype(np.float64)
    x[0, 0, 0, 0] = 0.3                                            # a grey level: the Bernoulli term takes [0, 1]
    key = _key(4)

    @jax.jit
    def run(params, x):
        loss, (metrics, _) = V.elbo(model, params, state, x, key, beta=1.0)
        eps = V.reparameterize(jax.random.split(key, 3)[1], jnp.zeros((n, latent)), jnp.zeros((n, latent)))
        return loss, metrics, eps

    loss, metrics, eps = run(params, jnp.asarray(x))
    e, d = jax.tree_util.tree_map(np.asarray, (params["encoder"], params["decoder"]))
    h = np.maximum(x.reshape(n, -1) @ e["fc1"]["w"] + e["fc1"]["b"], 0)
    stats = h @ e["stats"]["w"] + e["stats"]["b"]
    mu, logvar = stats[:, :latent], stats[:, latent:]
    z = mu + np.exp(logvar / 2) * np.asarray(eps)
    logits = np.maximum(z @ d["fc1"]["w"] + d["fc1"]["b"], 0) @ d["logits"]["w"] + d["logits"]["b"]
    xf = x.reshape(n, -1)
    recon = np.sum(-(xf * np.log(1 / (1 + np.exp(-logits))) + (1 - xf) * np.log(1 - 1 / (1 + np.exp(-logits))))) / n
    kl = np.sum(-0.5 * (1 + logvar - mu ** 2 - np.exp(logvar))) / n
    assert float(metrics["recon"]) == pytest.approx(recon, rel=1e-12)
    assert float(metrics["kl"]) == pytest.approx(kl, rel=1e-12)
    assert float(loss) == pytest.approx(recon + kl, rel=1e-12)
    assert float(metrics["elbo"]) == pytest.approx(-(recon + kl), rel=1e-12)
    # beta weighs the KL only; the metrics' elbo stays the ELBO
    loss2, m2 = V.vae_loss(jnp.asarray(logits.reshape(n, 4, 4, 1)), jnp.asarray(x), jnp.asarray(mu),
                           jnp.asarray(logvar), beta=2.0)
    assert float(loss2) == pytest.approx(recon + 2 * kl, rel=1e-12)
    assert float(m2["elbo"]) == pytest.approx(-(recon + kl), rel=1e-12)


def test_vae_shapes_modes_and_bits_per_dim():
    for model in (V.mlp_vae((8, 8, 1), (16,), 4), V.conv_vae((8, 8, 1), (4, 8), 4)):
        params, state = jax.eval_shape(lambda k, m=model: m.init(k, (2, 8, 8, 1)), _key(0))
        x = jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)
        out, _ = jax.eval_shape(lambda p, s, x, m=model: m.apply(p, s, x, train=True, key=_key(1)), params, state, x)
        assert (out.logits.shape, out.mu.shape, out.logvar.shape, out.z.shape) == ((2, 8, 8, 1), (2, 4), (2, 4), (2, 4))
        assert model.output_shape((2, 8, 8, 1)) == (2, 8, 8, 1)
        new = jax.eval_shape(lambda p, s, k, m=model: m.sample(p, s, k, 5), params, state, _key(2))
        assert new.shape == (5, 8, 8, 1)                                    # decoded from the prior
        with pytest.raises(ValueError, match="VAE in train mode needs a PRNG key"):
            jax.eval_shape(lambda p, s, x, m=model: m.apply(p, s, x, train=True), params, state, x)
    # bits per dimension: nats / (D ln 2)
    assert float(V.bits_per_dim(64 * math.log(2), 64)) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(V.bits_per_dim(np.array([0.0, 784 * 2 * math.log(2)]), 784), [0.0, 2.0], rtol=1e-6)
    with pytest.raises(ValueError, match="VAE: the decoder must map z"):
        V.VAE(V.mlp_vae((8, 8, 1), (4,), 2).encoder, V.mlp_vae((4, 4, 1), (4,), 2).decoder, 2).init(_key(0),
                                                                                                     (1, 8, 8, 1))


# ----------------------------------------------------------------------------------------------- GANs

def test_dcgan_shapes_for_digits_and_cifar():
    for shape, latent in (((8, 8, 1), 16), ((32, 32, 3), 8)):
        g, d = G.dcgan_generator(shape), G.dcgan_discriminator(shape)
        assert g.output_shape((5, latent)) == (5, *shape)
        assert d.output_shape((5, *shape)) == (5,)                    # one logit per image
        gp, gs = jax.eval_shape(lambda k: g.init(k, (1, latent)), _key(0))
        assert gp["fc"]["w"].shape[0] == latent and "mean" in gs["bn0"]
        dp, _ = jax.eval_shape(lambda k: d.init(k, (1, *shape)), _key(0))
        assert dp["fc"]["w"].shape[1] == 1
        fake = jax.eval_shape(lambda p, s, k: G.generate(g, p, s, k, 3, latent), gp, gs, _key(1))
        assert fake.shape == (3, *shape)
    g = G.dcgan_generator((8, 8, 1))
    assert [type(layer).__name__ for layer in g.layers][-2:] == ["ConvTranspose2D", "Tanh"]
    assert g.layers[g.names.index("reshape")].shape == (2, 2, 64)                     # 2x2 -> 4x4 -> 8x8
    assert G.mlp_generator((8, 8, 1), (32,)).output_shape((3, 7)) == (3, 8, 8, 1)
    assert G.mlp_discriminator((32,)).output_shape((3, 8, 8, 1)) == (3,)


LATENT = 4
GEN, DIS = G.mlp_generator((8, 8, 1), ()), G.mlp_discriminator(())       # affine-tanh / affine: cheap to compile
G_OPT, D_OPT = optim.sgd(2e-2), optim.sgd(1e-2)         # SGD: Adam's state costs compile time here


@pytest.fixture(scope="module")
def gan():
    state = G.init_gan_state(jax.random.key(0), GEN, DIS, G_OPT, D_OPT, latent_dim=LATENT, image_shape=(8, 8, 1))
    real = jnp.asarray(np.random.default_rng(5).uniform(-1, 1, (6, 8, 8, 1)), jnp.float32)
    return state, real


def _step(state, real, loss, seed=6):
    return G.gan_train_step(state, real, _key(seed), generator=GEN, discriminator=DIS, g_optimizer=G_OPT,
                            d_optimizer=D_OPT, latent_dim=LATENT, loss=loss)


def _changed(a, b):
    return [bool(np.any(np.asarray(x) != np.asarray(y))) for x, y in zip(jax.tree_util.tree_leaves(a),
                                                                        jax.tree_util.tree_leaves(b))]


@pytest.mark.parametrize("loss", ["non_saturating", "least_squares"])
def test_gan_train_step_updates_both_nets(gan, loss):
    state, real = gan
    new, metrics = _step(state, real, loss)
    assert int(new.step) == 1
    assert all(_changed(state.g_params, new.g_params)) and all(_changed(state.d_params, new.d_params))
    assert set(metrics) == {"d_loss", "g_loss", "d_grad_norm", "g_grad_norm", "d_real", "d_fake", "g_fake"}
    assert all(np.isfinite(float(v)) for v in metrics.values())
    assert float(metrics["g_grad_norm"]) > 0 and float(metrics["d_grad_norm"]) > 0
    if loss == "least_squares":      # raw scores s; D's loss 0.5 mean (s_r - 1)^2 + 0.5 mean s_f^2 >= its Jensen bound
        jensen = 0.5 * (float(metrics["d_real"]) - 1) ** 2 + 0.5 * float(metrics["d_fake"]) ** 2
        assert float(metrics["d_loss"]) >= jensen
    else:                            # D = sigmoid(s) in (0, 1); at init near 1/2, the loss near 2 log 2
        assert 0 < float(metrics["d_real"]) < 1 and 0 < float(metrics["d_fake"]) < 1
        assert float(metrics["d_loss"]) == pytest.approx(2 * math.log(2), abs=0.5)
    # a second step from the new state: the same program, the step count goes on
    assert int(_step(new, real, loss, seed=7)[0].step) == 2


def test_saturating_generator_gradient_vanishes_when_d_rejects_fakes(gan):
    state, real = gan
    # the discriminator confidently rejects everything: its logit's bias at -12, D(G(z)) ~ 6e-6
    d_params = jax.tree_util.tree_map(lambda a: a, state.d_params)
    d_params["fc1"]["b"] = jnp.full_like(d_params["fc1"]["b"], -12.0)
    confident = state._replace(d_params=d_params, d_opt_state=D_OPT.init(d_params))
    norms = {}
    for name, s in (("unsure", state), ("confident", confident)):
        for loss in ("minimax", "non_saturating"):
            _, m = _step(s, real, loss)
            norms[name, loss] = float(m["g_grad_norm"])
            if name == "confident":
                assert float(m["g_fake"]) < 1e-4
    # at D ~ 1/2 the two generator losses have gradients of the same size ...
    assert 0.3 < norms["unsure", "minimax"] / norms["unsure", "non_saturating"] < 3
    # ... when D rejects the fakes, the minimax (saturating) one's collapses, by sigmoid(-12) / sigmoid(12)
    assert norms["confident", "minimax"] < 1e-3 * norms["confident", "non_saturating"]
    assert norms["confident", "non_saturating"] > 0.1 * norms["unsure", "non_saturating"]


# -------------------------------------------------------------------------------------------- PixelCNN

def _raster_dependencies(jac):
    """jac (1, H, W, F, 1, H, W, C) -> bool (H, W, H, W): output pixel (i, j) depends on input pixel (p, q)."""
    return np.any(np.asarray(jac)[0, :, :, :, 0] != 0, axis=(2, 5))


def test_masked_conv_receptive_field_types_a_and_b(x64):
    h = w = 5
    layers = {t: P.MaskedConv2D(3, kernel=3, mask_type=t) for t in "AB"}
    params = {t: _np_params(layer, (1, h, w, 2), seed=8)[0] for t, layer in layers.items()}
    x = jnp.asarray(np.random.default_rng(9).standard_normal((1, h, w, 2)))

    @jax.jit
    def jacobians(params, x):
        return {t: jax.jacrev(lambda v, t=t: layers[t].apply(params[t], {}, v, train=False)[0])(x) for t in "AB"}

    jac = jacobians(params, x)
    for t in "AB":
        dep = _raster_dependencies(jac[t])
        for i in range(h):
            for j in range(w):
                want = np.zeros((h, w), bool)
                for p in range(h):
                    for q in range(w):
                        in_window = abs(p - i) <= 1 and abs(q - j) <= 1
                        before = (p, q) < (i, j) or (t == "B" and (p, q) == (i, j))
                        want[p, q] = in_window and before
                np.testing.assert_array_equal(dep[i, j], want, err_msg=f"type {t}, output pixel {(i, j)}")
    # the masks themselves
    np.testing.assert_array_equal(P.causal_mask(3, "A"), [[1, 1, 1], [1, 0, 0], [0, 0, 0]])
    np.testing.assert_array_equal(P.causal_mask(3, "B"), [[1, 1, 1], [1, 1, 0], [0, 0, 0]])


def _mask_relation(h, w, k, include_centre):
    """bool (H*W, H*W): output pixel o of a k x k masked conv reads input pixel i."""
    rel = np.zeros((h * w, h * w), bool)
    for i in range(h):
        for j in range(w):
            for p in range(h):
                for q in range(w):
                    before = (p, q) < (i, j) or (include_centre and (p, q) == (i, j))
                    rel[i * w + j, p * w + q] = abs(p - i) <= k // 2 and abs(q - j) <= k // 2 and before
    return rel


def test_pixelcnn_is_causal_through_the_stack(x64):
    model = P.pixelcnn(features=3, num_layers=2, kernel=3, hidden_kernel=3)
    h = w = 5
    params, state = _np_params(model, (1, h, w, 1), seed=10)
    # positive weights and biases on a non-negative input: every ReLU is active, so a path through
    # the masks is a nonzero derivative (a product of positive numbers), and none is missed
    params = jax.tree_util.tree_map(jnp.abs, params)
    x = jnp.asarray((np.random.default_rng(11).random((1, h, w, 1)) < 0.5).astype(np.float64))
    jac = jax.jit(jax.jacrev(lambda v: model.apply(params, state, v, train=False)[0]))(x)
    dep = _raster_dependencies(jac)
    for i in range(h):
        for j in range(w):
            for p in range(h):
                for q in range(w):
                    if (p, q) >= (i, j):
                        assert not dep[i, j, p, q], f"output {(i, j)} sees input {(p, q)}"
    assert not dep[0, 0].any()                              # the first pixel's logit is a constant
    # exactly the composed masks: A (3x3), B (3x3) twice, the 1x1 B; e.g. the blind spot: output
    # (2, 0) never sees input (0, 4), up and to the right beyond the stack's reach
    a, b, one = _mask_relation(h, w, 3, False), _mask_relation(h, w, 3, True), _mask_relation(h, w, 1, True)
    want = (one.astype(int) @ b @ b @ a) > 0
    np.testing.assert_array_equal(dep.reshape(h * w, h * w), want)
    assert not dep[2, 0, 0, 4] and dep[2, 0, 1, 1] and dep[4, 4, 3, 4]


def test_pixelcnn_nll_and_sampling():
    model = P.pixelcnn(features=4, num_layers=1, kernel=3, hidden_kernel=3)
    shape = (4, 4, 1)
    params, state = _np_params(model, (1, *shape), seed=12)
    a = P.sample(model, params, state, _key(13), 3, shape)
    b = P.sample(model, params, state, _key(13), 3, shape)
    c = P.sample(model, params, state, _key(14), 3, shape)
    assert a.shape == (3, *shape) and a.dtype == params["logits"]["w"].dtype
    np.testing.assert_array_equal(a, b)                                    # deterministic for a key
    assert set(np.unique(np.asarray(a))) <= {0.0, 1.0}                     # binary
    assert np.any(np.asarray(a) != np.asarray(c))                          # another key, other images
    # a logit of +-50 everywhere: every pixel is drawn 1 / 0
    for bias, want in ((50.0, 1.0), (-50.0, 0.0)):
        forced = {**params, "logits": {"w": jnp.zeros_like(params["logits"]["w"]),
                                       "b": jnp.full_like(params["logits"]["b"], bias)}}
        np.testing.assert_array_equal(P.sample(model, forced, state, _key(13), 3, shape), np.full((3, *shape), want))
    # the NLL is the Bernoulli cross-entropy summed over pixels, averaged over images
    logits = np.random.default_rng(15).standard_normal((2, *shape)).astype(np.float32)
    x = np.asarray(a[:2])
    want = np.sum(_softplus(logits) - x * logits) / 2
    assert float(P.pixelcnn_nll(jnp.asarray(logits), jnp.asarray(x))) == pytest.approx(want, rel=1e-6)


# -------------------------------------------------------------------------------------- augmentations

@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(16).random((6, 8, 8, 3)), jnp.float32)


def test_two_views_shape_range_and_determinism(images):
    v1, v2 = A.two_views(_key(17), images)
    again = A.two_views(_key(17), images)
    other = A.two_views(_key(18), images)
    for v in (v1, v2):
        assert v.shape == images.shape and v.dtype == images.dtype
        assert float(v.min()) >= 0.0 and float(v.max()) <= 1.0
    np.testing.assert_array_equal(v1, again[0])
    np.testing.assert_array_equal(v2, again[1])
    assert np.any(np.asarray(v1) != np.asarray(other[0]))                 # another key, other views
    assert np.all(np.any(np.asarray(v1) != np.asarray(v2), axis=(1, 2, 3)))   # the two views of each image differ
    assert np.all(np.any(np.asarray(v1) != np.asarray(images), axis=(1, 2, 3)))


@pytest.fixture(scope="module")
def ops_out(images):
    """Every per-image operation at settings with a known answer, in one jitted program (the
    inputs made inside it too: each eager op would compile a kernel of its own)."""
    n = images.shape[0]

    @jax.jit
    def run(images):
        ramp = jnp.broadcast_to(jnp.arange(8, dtype=jnp.float32)[None, :, None] / 7, (n, 8, 8, 3))
        dark_gray = jnp.broadcast_to(images[..., :1] * 0.5, images.shape)         # in [0, 0.5], R = G = B
        many = jnp.tile(images, (4, 1, 1, 1))                                      # 24 images: p = 0.5 is seen
        keys, many_keys = jax.random.split(_key(19), n), jax.random.split(_key(20), 4 * n)

        def per_image(fn, k, x, **kw):
            return jax.vmap(lambda k, v: fn(k, v, **kw))(k, x)

        return {
            "flip": per_image(A.random_flip, many_keys, many, p=0.5),
            "gray": per_image(A.random_grayscale, many_keys, many, p=0.5),
            "crop_all": per_image(A.random_resized_crop, keys, images, scale=(1.0, 1.0), ratio=(1.0, 1.0)),
            "crop_quarter": per_image(A.random_resized_crop, keys, ramp, scale=(0.25, 0.25), ratio=(1.0, 1.0)),
            "jitter": per_image(A.color_jitter, keys, dark_gray, brightness=0.4, contrast=0.0, saturation=0.9,
                                hue=0.5, p=1.0),
        }, (many, ramp, dark_gray)

    return run(images)


def _each_one_or_the_other(out, x, f):
    """bool (N,): image n of out is exactly f(x)[n]; asserts every other one is exactly x[n]."""
    out, x, fx = np.asarray(out), np.asarray(x), np.asarray(f(x))
    done = np.all(out == fx, axis=(1, 2, 3))
    kept = np.all(out == x, axis=(1, 2, 3))
    assert np.all(done | kept)
    assert not np.any(done & kept)                      # the images are not symmetric / not gray already
    return done


def test_flip_is_exactly_a_flip(ops_out):
    out, (many, _, _) = ops_out
    flipped = _each_one_or_the_other(out["flip"], many, lambda x: x[:, :, ::-1])
    assert 0 < flipped.sum() < len(flipped)                                 # p = 0.5: both happen


def test_grayscale_has_equal_channels(ops_out):
    out, (many, _, _) = ops_out
    luma = np.asarray(many) @ np.array([0.299, 0.587, 0.114], np.float32)
    g = np.asarray(out["gray"])
    gray = ~np.all(g == np.asarray(many), axis=(1, 2, 3))
    assert 0 < gray.sum() < len(gray)
    np.testing.assert_array_equal(g[gray][..., 0], g[gray][..., 1])
    np.testing.assert_array_equal(g[gray][..., 0], g[gray][..., 2])
    np.testing.assert_allclose(g[gray][..., 0], luma[gray], rtol=1e-6)
    np.testing.assert_array_equal(g[~gray], np.asarray(many)[~gray])


def test_resized_crop_geometry(images, ops_out):
    out, _ = ops_out
    np.testing.assert_array_equal(out["crop_all"], images)           # the whole image, resized to itself
    q = np.asarray(out["crop_quarter"])                                # a 4x4 box of a horizontal ramp, doubled
    np.testing.assert_array_equal(q, np.broadcast_to(q[:, :1], q.shape))           # rows stay equal
    np.testing.assert_allclose(np.diff(q[:, 0, 1:7, 0], axis=1), 0.5 / 7, rtol=1e-5)   # half the ramp's slope
    assert np.ptp(q[:, 0, 3, 0]) > 0                                   # at offsets that differ per image


def test_color_jitter_on_gray_images_is_brightness_alone(ops_out):
    # R = G = B: saturation and hue leave the image unchanged, contrast is off, so what is left is
    # one brightness factor per image, in [1 - 0.4, 1 + 0.4] (no clipping: the input is <= 0.5)
    out, (_, _, dark_gray) = ops_out
    ratio = np.asarray(out["jitter"]) / np.asarray(dark_gray)
    np.testing.assert_allclose(ratio, ratio[:, :1, :1, :1] * np.ones_like(ratio), rtol=1e-5)
    factors = ratio[:, 0, 0, 0]
    assert np.all((factors >= 0.6 - 1e-6) & (factors <= 1.4 + 1e-6)) and np.ptp(factors) > 0


# ------------------------------------------------------------------------------------------ bad inputs

def _img(shape=(8, 8, 3)):
    return jnp.zeros(shape, jnp.float32)


def _step_with_a_discriminator_of_64_outputs():
    """gan_train_step traced (not compiled) with a discriminator giving (N, 64)."""
    flat = nn.Flatten()
    gp, gs = jax.eval_shape(lambda k: GEN.init(k, (1, LATENT)), _key(0))
    state = jax.eval_shape(lambda p: G.GANState(p, gs, G_OPT.init(p), {}, {}, D_OPT.init({}), jnp.zeros((), jnp.int32)),
                           gp)
    return jax.eval_shape(lambda s: G.gan_train_step(s, jnp.zeros((2, 8, 8, 1)), _key(1), generator=GEN,
                                                     discriminator=flat, g_optimizer=G_OPT, d_optimizer=D_OPT,
                                                     latent_dim=LATENT), state)


BAD_INPUTS = [
    (lambda: V.reparameterize(_key(0), jnp.zeros((2, 3)), jnp.zeros((2, 4))), "reparameterize: `mu` and `logvar`"),
    (lambda: V.reparameterize(_key(0), jnp.zeros(3, jnp.int32), jnp.zeros(3)),
     "reparameterize: `mu` must be a float array, got dtype int32"),
    (lambda: V.bits_per_dim(1.0, 0), "bits_per_dim: `num_dims` must be a positive int, got 0"),
    (lambda: V.vae_loss(jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.zeros((2, 2)), jnp.zeros((2, 2)), beta=-1.0),
     "vae_loss: `beta` must be a non-negative number, got -1.0"),
    (lambda: V.vae_loss(jnp.zeros((2, 4)), jnp.zeros((2, 4)), jnp.zeros((2, 2)), jnp.zeros((2, 2)), beta=float("nan")),
     r"vae_loss: `beta` must be a non-negative number, got nan \(not a finite number\)"),
    (lambda: V.mlp_vae((8, 8, 1), (16,), 0), "mlp_vae: `latent_dim` must be a positive int, got 0"),
    (lambda: V.elbo(DIS, {}, {}, jnp.zeros((1, 8, 8, 1)), _key(0)), "elbo: `model` must be a VAE .* got Sequential"),
    (lambda: V.mlp_vae((8, 8, 1), (16, 0), 2), r"mlp_vae: `hidden` must be a tuple of positive ints, got \(16, 0\)"),
    (lambda: V.VAE(V.mlp_vae((8, 8, 1), (4,), 2).encoder, V.mlp_vae((8, 8, 1), (4,), 3).decoder, 3).init(
        _key(0), (1, 8, 8, 1)),
     r"VAE: the encoder must map input \(1, 8, 8, 1\) to \(N, 2 \* latent_dim\) = \(1, 6\), got \(1, 4\)"),
    (lambda: V.conv_vae((6, 6, 1), (4, 8), 2),
     r"conv_vae: H and W of image_shape \(6, 6, 1\) must be divisible by 2\^len\(channels\) = 4"),
    (lambda: G.dcgan_generator((8, 8, 1), (4, 4, 4, 4)),
     r"dcgan_generator: H and W of image_shape \(8, 8, 1\) must be divisible by 2\^len\(channels\) = 16"),
    (lambda: G.dcgan_discriminator((16, 16, 1)), "dcgan_discriminator: no default `channels` for image_shape"),
    (lambda: G.dcgan_generator((8, 8)),
     r"dcgan_generator: `image_shape` must be \(H, W, C\) with positive ints, got \(8, 8\)"),
    (lambda: G.mlp_discriminator((8,), slope=-0.1),
     "mlp_discriminator: `slope` must be a non-negative number, got -0.1"),
    (lambda: G.mlp_generator((8, 8, 1), (0,)), r"mlp_generator: `hidden` must be a tuple of positive ints, got \(0,\)"),
    (lambda: G.make_gan_train_step(GEN, DIS, G_OPT, D_OPT, latent_dim=0),
     "make_gan_train_step: `latent_dim` must be a positive int, got 0"),
    (lambda: G.gan_train_step(None, jnp.zeros((2, 8, 8, 1)), _key(0), generator=GEN, discriminator=DIS,
                              g_optimizer=G_OPT, d_optimizer=D_OPT, latent_dim=4),
     "gan_train_step: `state` must be a GANState .* got NoneType"),
    (lambda: G.gan_train_step(None, jnp.zeros(2), _key(0), generator=GEN, discriminator=DIS,
                              g_optimizer=G_OPT, d_optimizer=D_OPT, latent_dim=4),
     r"gan_train_step: `real` must be a batch of images \(N, \*image_shape\), got shape \(2,\)"),
    (_step_with_a_discriminator_of_64_outputs,
     r"gan_train_step: the discriminator must give one logit per image, \(N,\) or \(N, 1\), got \(2, 64\)"),
    (lambda: G.init_gan_state(_key(0), GEN, nn.Flatten(), G_OPT, D_OPT, latent_dim=4, image_shape=(8, 8, 1)),
     r"init_gan_state: the discriminator must give one logit per image, \(N,\) or \(N, 1\), got \(1, 64\)"),
    (lambda: G.make_gan_train_step(GEN, DIS, G_OPT, D_OPT, latent_dim=4, loss="wgan"),
     "make_gan_train_step: `loss` must be one of 'minimax', 'non_saturating', 'least_squares', got 'wgan'"),
    (lambda: G.gan_train_step(None, jnp.zeros((2, 8, 8, 1)), _key(0), generator=GEN, discriminator=DIS,
                              g_optimizer=G_OPT, d_optimizer=D_OPT, latent_dim=4, loss="hinge"),
     "gan_train_step: `loss` must be one of .* got 'hinge'"),
    (lambda: G.init_gan_state(_key(0), GEN, DIS, G_OPT, D_OPT, latent_dim=4, image_shape=(4, 4, 1)),
     r"init_gan_state: the generator maps z \(1, 4\) to \(1, 8, 8, 1\)"),
    (lambda: P.MaskedConv2D(4, 3, mask_type="C"), "MaskedConv2D: `mask_type` must be 'A' .* got 'C'"),
    (lambda: P.MaskedConv2D(4, 4, mask_type="A"), "MaskedConv2D: `kernel` must be odd in both axes .* got 4"),
    (lambda: P.MaskedConv2D(4, 3).init(_key(0), (1, 5, 5)), r"conv2d: `x` must have rank 4"),
    (lambda: P.MaskedConv2D(0, 3), "MaskedConv2D: `features` must be a positive int, got 0"),
    (lambda: P.pixelcnn(4, num_layers=-1), "pixelcnn: `num_layers` must be an int >= 0, got -1"),
    (lambda: P.sample(P.pixelcnn(2, 0, 3), {}, {}, _key(0), 0, (4, 4, 1)),
     "pixelcnn.sample: `num_samples` must be a positive int, got 0"),
    (lambda: P.sample(P.MaskedConv2D(2, 3), {}, {}, _key(0), 1, (4, 4, 1)),
     r"pixelcnn.sample: the model must give logits of its input's shape \(1, 4, 4, 1\), got \(1, 4, 4, 2\)"),
    (lambda: P.sample(P.pixelcnn(2, 0, 3), {}, {}, _key(0), 2, (4, 4)),
     r"pixelcnn.sample: `image_shape` must be \(H, W, C\)"),
    (lambda: P.pixelcnn_nll(jnp.zeros((4, 4)), jnp.zeros((4, 4))), r"pixelcnn_nll: `logits` must have rank 4"),
    (lambda: A.random_resized_crop(_key(0), _img(), scale=(0.0, 1.0)),
     r"random_resized_crop: `scale` must be a pair \(lo, hi\) of numbers with 0 < lo <= hi <= 1, got \(0.0, 1.0\)"),
    (lambda: A.random_resized_crop(_key(0), _img(), scale=(0.5, 1.5)),
     r"random_resized_crop: `scale` .* got \(0.5, 1.5\)"),
    (lambda: A.random_resized_crop(_key(0), _img(), ratio=(2.0, 1.0)),
     r"random_resized_crop: `ratio` .* got \(2.0, 1.0\)"),
    (lambda: A.random_resized_crop(_key(0), _img((4, 8, 8, 3))), r"random_resized_crop: `image` must have rank 3"),
    (lambda: A.random_flip(_key(0), _img(), p=1.5), r"random_flip: `p` must be in \[0, 1\], got 1.5"),
    (lambda: A.random_grayscale(_key(0), _img(), p=-0.1), r"random_grayscale: `p` must be in \[0, 1\], got -0.1"),
    (lambda: A.random_grayscale(_key(0), _img((8, 8, 2))), r"random_grayscale: images must have 1 or 3 channels"),
    (lambda: A.color_jitter(_key(0), _img(), p=2.0), r"color_jitter: `p` must be in \[0, 1\], got 2.0"),
    (lambda: A.color_jitter(_key(0), _img(), hue=0.6), r"color_jitter: `hue` must be in \[0, 0.5\], got 0.6"),
    (lambda: A.color_jitter(_key(0), _img(), brightness=-0.2), r"color_jitter: `brightness` must be a non-negative"),
    (lambda: A.color_jitter(_key(0), _img(), contrast="a"),
     r"color_jitter: `contrast` must be a non-negative number, got 'a'"),
    (lambda: A.random_flip(_key(0), _img(), p=float("nan")), r"random_flip: `p` must be in \[0, 1\], got nan"),
    (lambda: A.random_resized_crop(_key(0), _img(), scale=0.5),
     r"random_resized_crop: `scale` must be a pair .* got 0.5"),
    (lambda: A.two_views(_key(0), _img()),
     r"two_views: `images` must have rank 4 \(N, H, W, C\), got shape \(8, 8, 3\)"),
    (lambda: A.two_views(_key(0), _img((2, 8, 8, 3)), jitter_p=1.2),
     r"two_views: `jitter_p` must be in \[0, 1\], got 1.2"),
    (lambda: A.two_views(_key(0), _img((2, 8, 8, 3)), blur=0.5), r"two_views: unknown argument\(s\) \['blur'\]"),
    (lambda: A.simclr_augment(_key(0), jnp.zeros((2, 8, 8, 3), jnp.uint8)), r"simclr_augment: images must be floats"),
]


@pytest.mark.parametrize("call, message", BAD_INPUTS,
                         ids=[m.split(":")[0] + str(i) for i, (_, m) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_one_line_value_errors(call, message):
    with pytest.raises(ValueError, match=message) as e:
        call()
    assert "\n" not in str(e.value)
