"""The generative family (jaxnet/ops/generative.py): GAN and least-squares GAN losses, the VAE's
KL term, the cosine-similarity matrix and SimCLR's NT-Xent.

Properties that pin the formulas and conventions, on both paths: landmark values, the lecture's
vanishing gradient of the saturating generator loss, the KL's zero and sign, the cosine matrix's
invariances and eps clamp, NT-Xent's closed form and pair layout, the input checks.  The
registry's generic modules audit the same ops (float64 gradients against finite differences,
the float32 extremes, the NumPy oracles, jit and vmap).  Each test runs one jitted program.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import manual, ops
from jaxnet.gradcheck.numeric import numerical_gradient

PATHS = {"reference": ops, "manual": manual}


def _rng(seed):
    return np.random.default_rng(seed)


# --------------------------------------------------------------------------------------- GAN losses

def test_gan_and_least_squares_losses_at_their_landmarks(x64):
    n = 4
    zero, one = jnp.zeros(n), jnp.ones(n)

    @jax.jit
    def values():
        out = {}
        for name, m in PATHS.items():
            out[name] = {
                "d": m.gan_discriminator_loss(zero, zero),
                "g": m.gan_generator_loss(zero),
                "g_sat": m.gan_generator_loss(zero, saturating=True),
                "dd": jax.grad(m.gan_discriminator_loss, argnums=(0, 1))(zero, zero),
                "dg": jax.grad(m.gan_generator_loss)(zero),
                "dg_sat": jax.grad(lambda s: m.gan_generator_loss(s, saturating=True))(zero),
                "ls_d_right": m.ls_discriminator_loss(one, zero), "ls_d_wrong": m.ls_discriminator_loss(zero, one),
                "ls_g_right": m.ls_generator_loss(one), "ls_g_wrong": m.ls_generator_loss(zero),
                "dls": jax.grad(m.ls_discriminator_loss, argnums=(0, 1))(zero, one),
            }
        return out

    for name, v in values().items():
        assert float(v["d"]) == pytest.approx(2 * math.log(2), rel=1e-15), name
        assert float(v["g"]) == pytest.approx(math.log(2), rel=1e-15), name
        assert float(v["g_sat"]) == pytest.approx(-math.log(2), rel=1e-15), name
        # sigmoid(0) = 1/2: BCE's gradient sigmoid(s) - target, over N
        np.testing.assert_allclose(v["dd"][0], -0.5 / n, rtol=1e-15)
        np.testing.assert_allclose(v["dd"][1], 0.5 / n, rtol=1e-15)
        np.testing.assert_allclose(v["dg"], -0.5 / n, rtol=1e-15)
        np.testing.assert_allclose(v["dg_sat"], -0.5 / n, rtol=1e-15)
        assert float(v["ls_d_right"]) == 0.0 and float(v["ls_g_right"]) == 0.0, name
        assert float(v["ls_d_wrong"]) == 1.0 and float(v["ls_g_wrong"]) == 0.5, name
        np.testing.assert_allclose(v["dls"][0], -1.0 / n, rtol=1e-15)   # (s_real - 1) / N
        np.testing.assert_allclose(v["dls"][1], 1.0 / n, rtol=1e-15)    # s_fake / N


def test_saturating_generator_gradient_vanishes_when_the_fakes_are_rejected(x64):
    """The lecture's point: where D confidently rejects the fakes (s_fake -> -inf), the minimax
    generator loss log(1 - D(G(z))) has gradient ~0, the non-saturating -log D(G(z)) about -1/N.
    Float64 at s = -30, and float32 at the extreme logits -100 and +100, where both are finite."""
    n = 5

    @jax.jit
    def run(s64, s32, big32):
        out = {}
        for name, m in PATHS.items():
            for label, s in (("f64", s64), ("f32", s32), ("f32 fooled", -s32)):
                out[name, label] = (m.gan_generator_loss(s), m.gan_generator_loss(s, saturating=True),
                                    jax.grad(m.gan_generator_loss)(s),
                                    jax.grad(lambda v: m.gan_generator_loss(v, saturating=True))(s))
            out[name, "d"] = (m.gan_discriminator_loss(-big32, big32),
                              jax.grad(m.gan_discriminator_loss, argnums=(0, 1))(-big32, big32))
        return out

    s32 = jnp.full(n, -100.0, jnp.float32)
    grads = run(jnp.full(n, -30.0), s32, -s32)
    for name in PATHS:
        value, value_sat, g, g_sat = grads[name, "f64"]
        assert g.dtype == jnp.float64
        np.testing.assert_allclose(g, -1.0 / n, rtol=1e-12)                  # 1 - sigmoid(-30) = 1 - 9e-14
        assert np.all(np.abs(np.asarray(g_sat)) < 1e-13) and np.all(np.asarray(g_sat) < 0)   # -sigmoid(-30) / N
        assert float(value) == pytest.approx(30.0, rel=1e-12) and abs(float(value_sat)) < 1e-12
        value, value_sat, g, g_sat = grads[name, "f32"]
        assert g.dtype == jnp.float32 and np.isfinite([float(value), float(value_sat)]).all()
        assert float(value) == 100.0 and float(value_sat) == pytest.approx(0.0, abs=1e-40)
        np.testing.assert_array_equal(g, np.float32(-1.0 / n))
        assert np.all(np.abs(np.asarray(g_sat)) < 1e-40)
        # the other way round: the discriminator is fooled (s = +100), and now the saturating loss has
        # the large gradient while the non-saturating one has none left to give
        value, value_sat, g, g_sat = grads[name, "f32 fooled"]
        assert float(value) == pytest.approx(0.0, abs=1e-40) and float(value_sat) == -100.0
        assert np.all(np.abs(np.asarray(g)) < 1e-40)
        np.testing.assert_array_equal(g_sat, np.float32(-1.0 / n))
        # the discriminator loss at +-100 logits, both wrong: 100 + 100, gradients -1/N and +1/N
        d, (d_real, d_fake) = grads[name, "d"]
        assert float(d) == 200.0
        np.testing.assert_array_equal(d_real, np.float32(-1.0 / n))
        np.testing.assert_array_equal(d_fake, np.float32(1.0 / n))


# ---------------------------------------------------------------------------------------- VAE: KL

def test_gaussian_kl_is_zero_at_the_prior_positive_elsewhere_and_exact_near_logvar_0(x64):
    r = _rng(0)
    mu, logvar = jnp.asarray(r.standard_normal((3, 4))), jnp.asarray(r.standard_normal((3, 4)))
    tiny = jnp.asarray(np.array([[1e-4, -1e-4, 3e-5, -7e-3]], np.float32))

    @jax.jit
    def run(mu, logvar, tiny):
        out = {}
        for name, m in PATHS.items():
            out[name] = (m.gaussian_kl(jnp.zeros((3, 4)), jnp.zeros((3, 4))), m.gaussian_kl(mu, logvar),
                         m.gaussian_kl(jnp.ones((2, 5)), jnp.zeros((2, 5))),
                         m.gaussian_kl(jnp.zeros((2, 5)), jnp.full((2, 5), math.log(2.0))),
                         jax.grad(m.gaussian_kl, argnums=(0, 1))(mu, logvar),
                         jax.grad(m.gaussian_kl, argnums=1)(jnp.zeros_like(tiny), tiny))
        return out

    # the formula as written, summed over D, averaged over N
    m_np, lv_np = np.asarray(mu), np.asarray(logvar)
    want = np.mean(np.sum(-0.5 * (1 + lv_np - m_np ** 2 - np.exp(lv_np)), axis=1))
    for name, (at_prior, kl, unit_mean, doubled_var, (dmu, dlogvar), dtiny) in run(mu, logvar, tiny).items():
        assert float(at_prior) == 0.0, name
        assert float(kl) > 0 and float(kl) == pytest.approx(want, rel=1e-14), name
        assert float(unit_mean) == pytest.approx(0.5 * 5, rel=1e-15)                  # mu = 1: 0.5 per dim
        assert float(doubled_var) == pytest.approx(0.5 * 5 * (1 - math.log(2.0)), rel=1e-14)
        np.testing.assert_allclose(dmu, m_np / 3, rtol=1e-14)
        np.testing.assert_allclose(dlogvar, 0.5 * np.expm1(lv_np) / 3, rtol=1e-13)
        # float32, logvar near 0: dlogvar = expm1(logvar) / 2 on both paths, to float32 precision
        # (autodiff of expm1(x) - x would form (expm1(x) + 1) - 1 and keep ~3 digits at 1e-4)
        assert dtiny.dtype == jnp.float32
        np.testing.assert_allclose(dtiny, 0.5 * np.expm1(np.asarray(tiny, np.float64)), rtol=1e-6)


# ------------------------------------------------------------------------------- cosine similarity

def test_cosine_similarity_matrix_diagonal_invariances_and_eps_clamp(x64):
    r = _rng(1)
    a, b = jnp.asarray(r.standard_normal((4, 5))), jnp.asarray(r.standard_normal((3, 5)))
    short = 0.5 * b[0] / jnp.linalg.norm(b[0])                 # norm 0.5 < eps = 1: divided by eps
    clamped = jnp.stack([short, jnp.zeros(5), b[1]])
    w = jnp.asarray(r.standard_normal((4, 3)))

    @jax.jit
    def run(a, b, clamped, w):
        out = {}
        for name, m in PATHS.items():
            f = m.cosine_similarity_matrix
            out[name] = (f(a, a), f(a, b), f(3.0 * a, 0.5 * b), f(-a, b), f(b, a), f(a, clamped, eps=1.0),
                         jax.grad(lambda c: jnp.sum(w * f(a, c, eps=1.0)))(clamped))
        return out

    unit_a = np.asarray(a) / np.linalg.norm(a, axis=1, keepdims=True)
    unit_b1 = np.asarray(b[1]) / np.linalg.norm(b[1])
    out = run(a, b, clamped, w)
    for name, (self_sim, c, scaled, flipped, swapped, with_clamp, dclamped) in out.items():
        np.testing.assert_allclose(np.diag(self_sim), 1.0, rtol=1e-15)
        assert np.all(np.abs(np.asarray(c)) <= 1.0)
        np.testing.assert_allclose(scaled, c, rtol=1e-14, atol=1e-15)               # scale invariant
        np.testing.assert_allclose(flipped, -np.asarray(c), rtol=1e-15)
        np.testing.assert_allclose(swapped, np.asarray(c).T, rtol=1e-14, atol=1e-15)
        # eps = 1: the short row is divided by eps (a·b / 1, not a cosine); the zero row gives 0
        np.testing.assert_allclose(with_clamp[:, 0], unit_a @ np.asarray(short), rtol=1e-14)
        np.testing.assert_array_equal(with_clamp[:, 1], 0.0)
        np.testing.assert_allclose(with_clamp[:, 2], unit_a @ unit_b1, rtol=1e-14)
        # clamped rows are linear, x / eps: their gradient is sum_i w_i a_i / (||a_i|| eps), finite at 0
        want = np.asarray(w).T @ unit_a
        np.testing.assert_allclose(dclamped[:2], want[:2], rtol=1e-14)
        assert np.isfinite(np.asarray(dclamped)).all(), name
    np.testing.assert_allclose(out["manual"][6], out["reference"][6], rtol=1e-13)


# ------------------------------------------------------------------------------------------- NT-Xent

def _aligned(n, d, scales):
    """z (2N, D): rows i and i + N both along e_i (positive lengths ``scales``); the pairs orthogonal."""
    z = np.zeros((2 * n, d))
    for i in range(2 * n):
        z[i, i % n] = scales[i]
    return jnp.asarray(z)


def test_nt_xent_closed_form_pair_layout_and_a_zero_row(x64):
    n, d = 3, 5
    aligned = _aligned(n, d, [1.0, 2.0, 0.5, 3.0, 0.1, 7.0])
    # the same vectors paired as (i, i + 1) instead of (i, i + N): rows i and i + N now differ
    misaligned = aligned[jnp.array([0, 3, 1, 4, 2, 5])]
    z = jnp.asarray(_rng(2).standard_normal((6, 4)))
    z0 = z.at[2].set(0.0)                      # a zero row: its norm clamped at 1e-8, similarities 0

    @jax.jit
    def run(aligned, misaligned, z0):
        out = {}
        for name, m in PATHS.items():
            out[name, "t"] = {t: (m.nt_xent_loss(aligned, temperature=t), m.nt_xent_loss(misaligned, temperature=t))
                         for t in (0.5, 0.1, 2.0)}
            out[name, "pair"] = m.nt_xent_loss(aligned[jnp.array([0, 3])])          # 2N = 2: loss 0
            out[name, "zero row"] = (m.nt_xent_loss(z0, temperature=0.2),
                                     jax.grad(lambda v: m.nt_xent_loss(v, temperature=0.2))(z0))
        return out

    out = run(aligned, misaligned, z0)
    for name in PATHS:
        for t, (loss, wrong) in out[name, "t"].items():
            # s_i,p(i) = 1/t, the 2N - 2 negatives 0: l_i = -1/t + log(e^(1/t) + 2N - 2) for every
            # anchor, i.e. log(1 + (2N - 2) e^(-1/t)) (the form without cancellation at small t)
            want = math.log1p((2 * n - 2) * math.exp(-1.0 / t))
            assert float(loss) == pytest.approx(want, rel=1e-13), (name, t)
            assert float(wrong) > float(loss) + 0.1, (name, t)
        assert float(out[name, "pair"]) == 0.0
        loss, g = out[name, "zero row"]
        assert np.isfinite(float(loss)) and np.isfinite(np.asarray(g)).all(), name
    # the gradients with a zero row, float64: the two paths agree, and match central differences
    # (h = 1e-5) on the other rows; the zero row is clamped, z / 1e-8, so its gradient is 1e8 times
    # that of v for z = 1e-8 v, whose differences stay inside the clamped region
    _, g_man = out["manual", "zero row"]
    _, g_ref = out["reference", "zero row"]
    np.testing.assert_allclose(g_man, g_ref, rtol=1e-9, atol=1e-9)

    def loss(v):
        return manual.nt_xent_loss(v, temperature=0.2)

    g_num = np.asarray(numerical_gradient(loss, (z0,)))
    others = np.arange(6) != 2
    np.testing.assert_allclose(g_man[others], g_num[others], rtol=1e-6, atol=1e-9)
    g_v = numerical_gradient(lambda v: loss(z0.at[2].set(1e-8 * v)), (jnp.zeros(4),))
    assert float(np.max(np.abs(g_v))) > 1e-3                    # the zero row does move the loss
    np.testing.assert_allclose(1e-8 * np.asarray(g_man[2]), g_v, rtol=1e-6, atol=1e-9)


# --------------------------------------------------------------------------------------- input checks

_zeros = jnp.zeros


BAD = [
    (lambda m: m.gan_discriminator_loss(_zeros((4, 1)), _zeros((4, 1))),
     r"gan_discriminator_loss: `logits_real` must have rank 1 \(\(N,\)\), got shape \(4, 1\)"),
    (lambda m: m.gan_discriminator_loss(_zeros(4), _zeros(3)),
     r"gan_discriminator_loss: `logits_real` and `logits_fake` must have the same shape, got \(4,\) and \(3,\)"),
    (lambda m: m.gan_generator_loss(_zeros((2, 2))), r"gan_generator_loss: `logits_fake` must have rank 1"),
    (lambda m: m.gan_generator_loss(_zeros(3), saturating=1), r"gan_generator_loss: `saturating` must be a bool, got 1"),
    (lambda m: m.gan_generator_loss(_zeros(3), saturating="yes"), r"gan_generator_loss: `saturating` must be a bool"),
    (lambda m: m.gan_generator_loss(_zeros(3), saturating=None), r"gan_generator_loss: `saturating` must be a bool"),
    (lambda m: m.ls_discriminator_loss(_zeros(4), _zeros(5)),
     r"ls_discriminator_loss: `scores_real` and `scores_fake` must have the same shape"),
    (lambda m: m.ls_generator_loss(_zeros(())), r"ls_generator_loss: `scores_fake` must have rank 1 .*got shape \(\)"),
    (lambda m: m.gaussian_kl(_zeros(4), _zeros(4)), r"gaussian_kl: `mu` must have rank 2 \(\(N, D\)\), got shape \(4,\)"),
    (lambda m: m.gaussian_kl(_zeros((2, 3)), _zeros((2, 4))),
     r"gaussian_kl: `mu` and `logvar` must have the same shape, got \(2, 3\) and \(2, 4\)"),
    (lambda m: m.cosine_similarity_matrix(_zeros(3), _zeros((2, 3))), r"cosine_similarity_matrix: `a` must have rank 2"),
    (lambda m: m.cosine_similarity_matrix(_zeros((2, 3)), _zeros((2, 3, 1))),
     r"cosine_similarity_matrix: `b` must have rank 2 \(\(M, D\)\)"),
    (lambda m: m.cosine_similarity_matrix(_zeros((2, 3)), _zeros((4, 2))),
     r"cosine_similarity_matrix: `a` and `b` must have the same feature size D, got shapes \(2, 3\) and \(4, 2\)"),
    (lambda m: m.cosine_similarity_matrix(_zeros((2, 3)), _zeros((2, 3)), eps=0.0),
     r"cosine_similarity_matrix: `eps` must be a positive number, got 0.0"),
    (lambda m: m.cosine_similarity_matrix(_zeros((2, 3)), _zeros((2, 3)), eps=float("nan")),
     r"cosine_similarity_matrix: `eps` must be a positive number"),
    (lambda m: m.nt_xent_loss(_zeros(6)), r"nt_xent_loss: `z` must have rank 2 \(\(2N, D\)\), got shape \(6,\)"),
    (lambda m: m.nt_xent_loss(_zeros((5, 3))), r"nt_xent_loss: `z` must have an even number 2N >= 2 of rows .* \(5, 3\)"),
    (lambda m: m.nt_xent_loss(_zeros((0, 3))), r"nt_xent_loss: `z` must have an even number 2N >= 2 of rows"),
    (lambda m: m.nt_xent_loss(_zeros((4, 3)), temperature=0.0),
     r"nt_xent_loss: `temperature` must be a positive number, got 0.0"),
    (lambda m: m.nt_xent_loss(_zeros((4, 3)), temperature=-0.5), r"nt_xent_loss: `temperature` must be a positive"),
    (lambda m: m.nt_xent_loss(_zeros((4, 3)), temperature=True), r"nt_xent_loss: `temperature` must be a positive"),
]


@pytest.mark.parametrize("path", list(PATHS))
def test_bad_inputs_are_one_line_value_errors_naming_the_op(path):
    for call, pattern in BAD:
        with pytest.raises(ValueError, match=pattern) as e:
            call(PATHS[path])
        assert "\n" not in str(e.value), str(e.value)


def test_functional_dispatches_the_family():
    z = jnp.asarray(_rng(3).standard_normal((4, 3)), jnp.float32)
    for impl in ("autodiff", "manual"):
        with pytest.raises(ValueError, match="nt_xent_loss: `temperature`"):
            F.nt_xent_loss(z, temperature=-1.0, impl=impl)
    assert F.nt_xent_loss.reference is ops.nt_xent_loss and F.nt_xent_loss.manual is manual.nt_xent_loss
    assert F.gaussian_kl.reference is ops.gaussian_kl and F.gan_generator_loss.manual is manual.gan_generator_loss
