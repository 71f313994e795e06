"""Generative and self-supervised losses: GANs (minimax and least squares), the VAE's KL term,
cosine similarity and SimCLR's NT-Xent.

Reference forwards, manual ops, NumPy oracles and audit registrations of the losses of the
course's generative-models lecture (GANs, VAEs) and of its GAN and self-supervised
assignments.  Every loss returns a scalar, the mean over the batch; ``cosine_similarity_matrix``
returns the (N, M) matrix.

Hand gradients (g the scalar cotangent, N the batch):

- GAN losses on the discriminator's logits s, with ``softplus(x) = log(1 + e^x)``, so that
  ``-log sigmoid(s) = softplus(-s)`` and ``-log(1 - sigmoid(s)) = softplus(s)``:
  discriminator ``mean softplus(-s_real) + mean softplus(s_fake)``: ``ds_real = -g·sigmoid(-s_real)/N``,
  ``ds_fake = g·sigmoid(s_fake)/N``; non-saturating generator ``mean softplus(-s)``:
  ``ds = -g·sigmoid(-s)/N``, tending to ``-g/N`` as s -> -inf; saturating (minimax) generator
  ``mean log(1 - sigmoid(s)) = -mean softplus(s)``: ``ds = -g·sigmoid(s)/N``, which vanishes as
  s -> -inf, i.e. when the discriminator confidently rejects the fakes (the lecture's point).
- least squares: ``ds_real = g·(s_real - 1)/N``, ``ds_fake = g·s_fake/N``; generator ``g·(s - 1)/N``.
- ``gaussian_kl``: ``dmu = g·mu/N``, ``dlogvar = g·(exp(logvar) - 1)/(2N)``.
- ``cosine_similarity_matrix``: C = Â B̂ᵀ with the unit rows; ``dÂ = dC B̂``, ``dB̂ = dCᵀ Â``, then
  each row through its normalisation: ``dx = (dx̂ - x̂ (x̂·dx̂)) / ||x||``, or ``dx̂ / eps`` where the
  norm is clamped.
- ``nt_xent_loss``: S = Ẑ Ẑᵀ / τ; ``dS = g·(P - Pos)/(2N)`` with P each row's softmax over the
  other rows and Pos the positive pairs; ``dẐ = (dS + dSᵀ) Ẑ / τ``; then the rows' normalisation.

Stability, both paths: every log-sigmoid is a softplus written ``jnp.logaddexp(x, 0)`` (its
derivative is sigmoid(x), exactly 1/2 at 0), so float32 logits of +-1e2 and +-1e4 give finite,
correct values and gradients; the hand backward forms ``sigmoid(-s)`` directly, never
``1 - sigmoid(s)``; NT-Xent's log-sum-exp subtracts each row's maximum; the KL is written with
``expm1``.  Row norms are clamped at eps with a select whose square root never sees 0, so a
zero row has a finite gradient on both paths.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number, check_rank, check_same_shape
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def _softplus(x):
    """``log(1 + e^x)`` as ``logaddexp(x, 0)``: no overflow; autodiff gives sigmoid(x)."""
    return jnp.logaddexp(x, 0)


def _check_pair(op, a_name, a, b_name, b):
    """Two (N,) vectors of the same shape."""
    check_rank(op, a_name, a, 1, "(N,)")
    check_rank(op, b_name, b, 1, "(N,)")
    check_same_shape(op, a_name, a, b_name, b)


def _sample_pair(key, d, dt):
    """Two (N,) draws of 3·N(0, 1): logits or scores for the real and the fake batch."""
    k = S.keys(key, 2)
    draw = S.scaled_normal(3)
    return draw(k[0], d["x"], dt), draw(k[1], d["x"], dt)


def _oracle_pair(n):
    """Fixed-input ``make``: two (n,) draws of 2·N(0, 1)."""
    return lambda r: (2 * r.standard_normal(n), 2 * r.standard_normal(n))


def _oracle_one(n):
    """Fixed-input ``make``: one (n,) draw of 2·N(0, 1)."""
    return lambda r: (2 * r.standard_normal(n),)


# ------------------------------------------------------------------------- GAN: discriminator loss

def gan_discriminator_loss(logits_real, logits_fake):
    """The course's GAN discriminator loss on logits: ``mean_i [BCE(s_real_i, 1) + BCE(s_fake_i, 0)]``.

    ``= mean_i [-log sigmoid(s_real_i) - log(1 - sigmoid(s_fake_i))]``, computed as
    ``softplus(-s_real) + softplus(s_fake)`` (``softplus = logaddexp(., 0)``): finite for any
    finite logits.  This is minus the lecture's minimax objective, which the discriminator
    maximises.  logits_real, logits_fake: (N,) float each, the discriminator's scores of N real
    and N generated images.  Returns a scalar, 2 log 2 at logits 0.
    """
    _check_pair("gan_discriminator_loss", "logits_real", logits_real, "logits_fake", logits_fake)
    return jnp.sum(_softplus(-logits_real) + _softplus(logits_fake)) / logits_real.shape[0]


@jax.custom_vjp
def _gan_discriminator_loss(logits_real, logits_fake):
    return gan_discriminator_loss(logits_real, logits_fake)


def _gan_discriminator_loss_fwd(logits_real, logits_fake):
    return gan_discriminator_loss(logits_real, logits_fake), (logits_real, logits_fake)


def _gan_discriminator_loss_bwd(res, g):
    """dlogits_real = -g · sigmoid(-s_real) / N, dlogits_fake = g · sigmoid(s_fake) / N.

    d softplus(-s)/ds = -sigmoid(-s) (= sigmoid(s) - 1, BCE's gradient with target 1) and
    d softplus(s)/ds = sigmoid(s) (target 0).  sigmoid(-s_real) is formed directly: as
    1 - sigmoid(s_real) it rounds to 0 in float32 once s_real > 17, where it is e^-s.
    Residuals: the logits s_real, s_fake, (N,) each.  g: the scalar cotangent.  Returns
    dlogits_real, dlogits_fake, (N,) each, in their inputs' dtypes.
    """
    real, fake = res
    n = real.shape[0]
    return ((-g * jax.nn.sigmoid(-real) / n).astype(real.dtype),
            (g * jax.nn.sigmoid(fake) / n).astype(fake.dtype))


_gan_discriminator_loss.defvjp(_gan_discriminator_loss_fwd, _gan_discriminator_loss_bwd)


def gan_discriminator_loss_manual(logits_real, logits_fake):
    """Manual twin of :func:`gan_discriminator_loss`. logits_real, logits_fake: (N,) each."""
    _check_pair("gan_discriminator_loss", "logits_real", logits_real, "logits_fake", logits_fake)
    return _gan_discriminator_loss(logits_real, logits_fake)


def _gan_discriminator_loss_oracle(logits_real, logits_fake):
    """NumPy oracle: ``mean of -log D(x) - log(1 - D(G(z)))`` with ``D = 1 / (1 + exp(-s))``, a loop, float64."""
    total = 0.0
    for s_real, s_fake in zip(logits_real, logits_fake):
        d_real, d_fake = 1.0 / (1.0 + np.exp(-s_real)), 1.0 / (1.0 + np.exp(-s_fake))
        total += -np.log(d_real) - np.log(1.0 - d_fake)
    return np.float64(total / len(logits_real))


register(OpSpec("gan_discriminator_loss", gan_discriminator_loss, gan_discriminator_loss_manual, _sample_pair,
                (case({"x": (6,)}), case({"x": (1,)}), case({"x": (9,)})),
                backward=_gan_discriminator_loss_bwd, oracle=_gan_discriminator_loss_oracle,
                oracle_cases=lambda: O.drawn("gan_discriminator_loss", ("x=5", _oracle_pair(5)),
                                             ("x=1", _oracle_pair(1)))))


# ----------------------------------------------------------------------------- GAN: generator loss

def _check_generator(logits_fake, saturating) -> bool:
    check_rank("gan_generator_loss", "logits_fake", logits_fake, 1, "(N,)")
    if not isinstance(saturating, (bool, np.bool_)):
        raise ValueError(f"gan_generator_loss: `saturating` must be a bool, got {saturating!r}")
    return bool(saturating)


def gan_generator_loss(logits_fake, *, saturating=False):
    """The GAN generator's loss on the discriminator's logits of N generated images.

    saturating=False (the default, the course's choice, "standard in practice"): the
    non-saturating ``mean_i -log sigmoid(s_i) = mean softplus(-s)``, the generator maximising
    the likelihood of the discriminator being wrong; log 2 at logits 0.
    saturating=True: the minimax form ``mean_i log(1 - sigmoid(s_i)) = -mean softplus(s)``, which
    the generator minimises; -log 2 at logits 0.  Its gradient ``-sigmoid(s)/N`` vanishes when the
    discriminator confidently rejects the fakes (s -> -inf), where the non-saturating one tends
    to -1/N: the lecture's reason for the switch.
    logits_fake: (N,) float.  saturating: a bool.  Returns a scalar.
    """
    if _check_generator(logits_fake, saturating):
        return -jnp.mean(_softplus(logits_fake))
    return jnp.mean(_softplus(-logits_fake))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _gan_generator_loss(logits_fake, saturating):
    return gan_generator_loss(logits_fake, saturating=saturating)


def _gan_generator_loss_fwd(logits_fake, saturating):
    return gan_generator_loss(logits_fake, saturating=saturating), logits_fake


def _gan_generator_loss_bwd(saturating, s, g):
    """dlogits_fake = -g · sigmoid(-s) / N (non-saturating), -g · sigmoid(s) / N (saturating).

    d softplus(-s)/ds = -sigmoid(-s); d (-softplus(s))/ds = -sigmoid(s).  Residual: the logits
    s (N,).  g: the scalar cotangent.  Returns dlogits_fake (N,), the input's dtype.
    """
    sig = jax.nn.sigmoid(s) if saturating else jax.nn.sigmoid(-s)
    return ((-g * sig / s.shape[0]).astype(s.dtype),)


_gan_generator_loss.defvjp(_gan_generator_loss_fwd, _gan_generator_loss_bwd)


def gan_generator_loss_manual(logits_fake, *, saturating=False):
    """Manual twin of :func:`gan_generator_loss`. logits_fake: (N,); saturating: a bool."""
    return _gan_generator_loss(logits_fake, _check_generator(logits_fake, saturating))


def _gan_generator_loss_oracle(logits_fake, *, saturating=False):
    """NumPy oracle: ``mean of log(1 - D)`` (saturating) or ``-log D``, ``D = 1 / (1 + exp(-s))``, a loop."""
    total = 0.0
    for s in logits_fake:
        d = 1.0 / (1.0 + np.exp(-s))
        total += np.log(1.0 - d) if saturating else -np.log(d)
    return np.float64(total / len(logits_fake))


register(OpSpec("gan_generator_loss", gan_generator_loss, gan_generator_loss_manual, S.unary(S.scaled_normal(3)),
                (case({"x": (6,)}), case({"x": (7,)}, saturating=True), case({"x": (1,)}, saturating=True)),
                backward=_gan_generator_loss_bwd, oracle=_gan_generator_loss_oracle,
                oracle_cases=lambda: O.drawn("gan_generator_loss", ("x=5", _oracle_one(5)),
                                             ("x=4 saturating=True", _oracle_one(4), {"saturating": True}),
                                             ("x=1 saturating=True", _oracle_one(1), {"saturating": True}))))


# ------------------------------------------------------------------------- least-squares GAN losses

def ls_discriminator_loss(scores_real, scores_fake):
    """The least-squares GAN discriminator loss: ``0.5 mean (s_real - 1)^2 + 0.5 mean s_fake^2``.

    The course's assignment formula (LSGAN, Mao et al. 2017, targets 1 for real and 0 for fake).
    scores_real, scores_fake: (N,) float each (raw scores, no sigmoid).  Returns a scalar.
    """
    _check_pair("ls_discriminator_loss", "scores_real", scores_real, "scores_fake", scores_fake)
    return 0.5 * jnp.mean((scores_real - 1) ** 2) + 0.5 * jnp.mean(scores_fake ** 2)


@jax.custom_vjp
def _ls_discriminator_loss(scores_real, scores_fake):
    return ls_discriminator_loss(scores_real, scores_fake)


def _ls_discriminator_loss_fwd(scores_real, scores_fake):
    return ls_discriminator_loss(scores_real, scores_fake), (scores_real, scores_fake)


def _ls_discriminator_loss_bwd(res, g):
    """dscores_real = g · (s_real - 1) / N, dscores_fake = g · s_fake / N.

    d [0.5 (s - t)^2] / ds = s - t, over the N of the mean.  Residuals: the scores s_real,
    s_fake, (N,) each.  g: the scalar cotangent.  Returns dscores_real, dscores_fake, (N,) each.
    """
    real, fake = res
    n = real.shape[0]
    return (g * (real - 1) / n).astype(real.dtype), (g * fake / n).astype(fake.dtype)


_ls_discriminator_loss.defvjp(_ls_discriminator_loss_fwd, _ls_discriminator_loss_bwd)


def ls_discriminator_loss_manual(scores_real, scores_fake):
    """Manual twin of :func:`ls_discriminator_loss`. scores_real, scores_fake: (N,) each."""
    _check_pair("ls_discriminator_loss", "scores_real", scores_real, "scores_fake", scores_fake)
    return _ls_discriminator_loss(scores_real, scores_fake)


def _ls_discriminator_loss_oracle(scores_real, scores_fake):
    """NumPy oracle: ``0.5 mean (s_real - 1)^2 + 0.5 mean s_fake^2``, a loop, float64."""
    real = sum((s - 1.0) ** 2 for s in scores_real) / len(scores_real)
    fake = sum(s ** 2 for s in scores_fake) / len(scores_fake)
    return np.float64(0.5 * real + 0.5 * fake)


register(OpSpec("ls_discriminator_loss", ls_discriminator_loss, ls_discriminator_loss_manual, _sample_pair,
                (case({"x": (6,)}), case({"x": (1,)})),
                backward=_ls_discriminator_loss_bwd, oracle=_ls_discriminator_loss_oracle,
                oracle_cases=lambda: O.drawn("ls_discriminator_loss", ("x=5", _oracle_pair(5)),
                                             ("x=1", _oracle_pair(1)))))


def ls_generator_loss(scores_fake):
    """The least-squares GAN generator loss: ``0.5 mean (s_fake - 1)^2``. scores_fake: (N,). Returns a scalar."""
    check_rank("ls_generator_loss", "scores_fake", scores_fake, 1, "(N,)")
    return 0.5 * jnp.mean((scores_fake - 1) ** 2)


@jax.custom_vjp
def ls_generator_loss_manual(scores_fake):
    """Manual twin of :func:`ls_generator_loss`. scores_fake: (N,)."""
    check_rank("ls_generator_loss", "scores_fake", scores_fake, 1, "(N,)")
    return ls_generator_loss(scores_fake)


def _ls_generator_loss_fwd(scores_fake):
    return ls_generator_loss(scores_fake), scores_fake


def _ls_generator_loss_bwd(s, g):
    """dscores_fake = g · (s_fake - 1) / N.

    Residual: the scores s_fake (N,).  g: the scalar cotangent.  Returns dscores_fake (N,).
    """
    return ((g * (s - 1) / s.shape[0]).astype(s.dtype),)


ls_generator_loss_manual.defvjp(_ls_generator_loss_fwd, _ls_generator_loss_bwd)


def _ls_generator_loss_oracle(scores_fake):
    """NumPy oracle: ``0.5 mean (s_fake - 1)^2``, a loop, float64."""
    return np.float64(0.5 * sum((s - 1.0) ** 2 for s in scores_fake) / len(scores_fake))


register(OpSpec("ls_generator_loss", ls_generator_loss, ls_generator_loss_manual, S.unary(S.scaled_normal(3)),
                (case({"x": (6,)}), case({"x": (1,)})),
                backward=_ls_generator_loss_bwd, oracle=_ls_generator_loss_oracle,
                oracle_cases=lambda: O.drawn("ls_generator_loss", ("x=5", _oracle_one(5)),
                                             ("x=1", _oracle_one(1)))))


# ------------------------------------------------------------------------------------ VAE: the KL term

def _check_gaussian_kl(mu, logvar):
    check_rank("gaussian_kl", "mu", mu, 2, "(N, D)")
    check_same_shape("gaussian_kl", "mu", mu, "logvar", logvar)


KL_SERIES_BELOW = 1e-2
"""``gaussian_kl`` uses the Taylor series of ``expm1(x) - x`` where |logvar| is below this."""


def _expm1_minus_x(x):
    """``e^x - 1 - x`` (>= 0), as ``expm1(x) - x``, and below |x| < 0.01 as its Taylor series
    ``x^2/2 + x^3/6 + ... + x^8/8!`` (the next term is 5e-20 of the first there).

    Both have the value to a few ulps; the series is for autodiff: ``expm1``'s derivative is
    formed as ``expm1(x) + 1``, so the derivative of ``expm1(x) - x`` comes out as
    ``(expm1(x) + 1) - 1``, which cancels to ~1e-3 of itself in float32 at |x| = 1e-4.  The
    series differentiates term by term, without cancellation (the hand backward's ``expm1(x)``
    is exact there anyway).  Above 0.01 the cancellation costs at most eps/0.01 of the value.
    """
    small = jnp.abs(x) < KL_SERIES_BELOW
    t = jnp.where(small, x, 0)
    series = t * t * (1 / 2 + t * (1 / 6 + t * (1 / 24 + t * (1 / 120 + t * (1 / 720 + t * (1 / 5040 + t / 40320))))))
    return jnp.where(small, series, jnp.expm1(x) - x)


def gaussian_kl(mu, logvar):
    """The VAE's KL term: ``KL(N(mu, diag exp(logvar)) || N(0, I))``, summed over D, averaged over N.

    Per example ``-0.5 sum_d (1 + logvar_d - mu_d^2 - exp(logvar_d))``, computed as
    ``0.5 sum_d (mu_d^2 + (exp(logvar_d) - 1 - logvar_d))`` with the bracket, >= 0, formed without
    ``1 - exp`` cancellation near logvar = 0, in the value and in its autodiff gradient
    (:func:`_expm1_minus_x`).  Reduction: the sum over the latent dimensions D is the KL of one
    example's posterior (the ELBO is a bound per example), and the batch is averaged, as in the
    course's VAE assignment (the batch's sum divided by N); the seed notes' VAE slides give the
    KL only in figures, so nothing there disagrees.  mu, logvar: (N, D) float, the encoder's mean
    and log-variance.  Returns a scalar: 0 at mu = 0, logvar = 0, positive elsewhere.
    """
    _check_gaussian_kl(mu, logvar)
    return 0.5 * jnp.sum(mu * mu + _expm1_minus_x(logvar)) / mu.shape[0]


@jax.custom_vjp
def _gaussian_kl(mu, logvar):
    return gaussian_kl(mu, logvar)


def _gaussian_kl_fwd(mu, logvar):
    return gaussian_kl(mu, logvar), (mu, logvar)


def _gaussian_kl_bwd(res, g):
    """dmu = g · mu / N, dlogvar = g · (exp(logvar) - 1) / (2N).

    d/dmu 0.5 mu^2 = mu; d/dlogvar 0.5 (expm1(logvar) - logvar) = 0.5 expm1(logvar), formed by
    ``expm1`` (exact near 0, -1 for logvar -> -inf).  Residuals: mu, logvar, (N, D) each.
    g: the scalar cotangent.  Returns dmu, dlogvar, (N, D) each.
    """
    mu, logvar = res
    n = mu.shape[0]
    return (g * mu / n).astype(mu.dtype), (0.5 * g * jnp.expm1(logvar) / n).astype(logvar.dtype)


_gaussian_kl.defvjp(_gaussian_kl_fwd, _gaussian_kl_bwd)


def gaussian_kl_manual(mu, logvar):
    """Manual twin of :func:`gaussian_kl`. mu, logvar: (N, D)."""
    _check_gaussian_kl(mu, logvar)
    return _gaussian_kl(mu, logvar)


def _sample_gaussian_kl(key, d, dt):
    k = S.keys(key, 2)
    return S.normal(k[0], d["x"], dt), S.normal(k[1], d["x"], dt)


LOGVAR_CAP = 80.0
"""The float32 pass caps logvar here: exp(logvar) overflows float32 above 88.7, and so does the KL."""


def _gaussian_kl_extremes(args, case):
    """The float32 pass's inputs: mu and logvar scaled by one factor (the generic rule: the
    largest |mu| at +-1e2, +-1e4, +-1e-4), then logvar capped at :data:`LOGVAR_CAP`: above
    88.7 exp(logvar), and the KL with it, is beyond float32 on any formulation."""
    from jaxnet.gradcheck.extremes import scaled      # here: jaxnet.gradcheck imports the ops
    return [(f"{label} logvar<={LOGVAR_CAP:g}", (mu, np.minimum(lv, LOGVAR_CAP).astype(lv.dtype)))
            for label, (mu, lv) in scaled(args, case)]


def _oracle_gaussian(shape):
    """Fixed-input ``make``: mu and logvar, standard normal of ``shape`` each."""
    return lambda r: (r.standard_normal(shape), r.standard_normal(shape))


def _gaussian_kl_oracle(mu, logvar):
    """NumPy oracle: ``mean_n -0.5 sum_d (1 + logvar - mu^2 - exp(logvar))``, loops over n and d, float64."""
    total = 0.0
    for m_row, lv_row in zip(mu, logvar):
        for m, lv in zip(m_row, lv_row):
            total += -0.5 * (1.0 + lv - m ** 2 - np.exp(lv))
    return np.float64(total / mu.shape[0])


register(OpSpec("gaussian_kl", gaussian_kl, gaussian_kl_manual, _sample_gaussian_kl,
                (case({"x": (4, 3)}), case({"x": (1, 5)}), case({"x": (3, 1)})),
                backward=_gaussian_kl_bwd, extremes=_gaussian_kl_extremes,
                note="float32 extremes: logvar capped at 80 (exp(logvar) overflows float32 above 88.7)",
                oracle=_gaussian_kl_oracle,
                oracle_cases=lambda: O.drawn("gaussian_kl", ("x=3x4", _oracle_gaussian((3, 4))),
                                             ("x=1x2", _oracle_gaussian((1, 2))))))


# ------------------------------------------------------------------------------- cosine similarity

def _row_norms(x, eps):
    """(norms (K, 1), unclamped (K, 1) bool) of the rows of x (K, D): ``max(||x_k||, eps)``.

    The clamp is decided on the squares, ``||x_k||^2 > eps^2``, and the square root only ever
    sees those rows (the others see 1): a zero row's norm is eps with a zero gradient under
    autodiff, where ``sqrt`` at 0 would give an infinite one and a NaN through the select.
    """
    sq = jnp.sum(x * x, axis=1, keepdims=True)
    unclamped = sq > eps * eps
    return jnp.where(unclamped, jnp.sqrt(jnp.where(unclamped, sq, 1)), eps), unclamped


def _unit_rows(x, eps):
    """(x̂, norms, unclamped): the rows of x (K, D) divided by their clamped norms (:func:`_row_norms`)."""
    norms, unclamped = _row_norms(x, eps)
    return x / norms, norms, unclamped


def _unit_rows_bwd(u, norms, unclamped, du):
    """dx of ``x -> x / max(||x||, eps)``, row by row, from the unit rows u (K, D), their norms
    and clamp flags (K, 1) and du (K, D).

    Unclamped: x̂ = x / ||x|| has the Jacobian (I - x̂ x̂ᵀ) / ||x|| (symmetric), so
    dx = (du - x̂ (x̂·du)) / ||x||; clamped, the norm is the constant eps: dx = du / eps.
    """
    radial = jnp.sum(u * du, axis=1, keepdims=True)
    return (du - jnp.where(unclamped, u * radial, 0)) / norms


def _check_cosine(a, b, eps) -> float:
    check_rank("cosine_similarity_matrix", "a", a, 2, "(N, D)")
    check_rank("cosine_similarity_matrix", "b", b, 2, "(M, D)")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"cosine_similarity_matrix: `a` and `b` must have the same feature size D, "
                         f"got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    return check_number("cosine_similarity_matrix", "eps", eps, low=0.0, low_open=True)


def cosine_similarity_matrix(a, b, *, eps=1e-8):
    """Every pairwise cosine similarity: ``C[i, j] = a_i·b_j / (max(||a_i||, eps) · max(||b_j||, eps))``.

    Each row's L2 norm is clamped below at eps separately (as the current
    ``torch.nn.functional.cosine_similarity`` documents; older PyTorch clamped the product
    ``||a_i||·||b_j||``), so a row shorter than eps is divided by eps, not normalised, and a zero
    row gives similarities 0 and a finite gradient.  The clamp is decided on the squares,
    ``||x||^2 > eps^2`` (see :func:`_row_norms`); a row exactly at ``||x||^2 = eps^2`` counts as
    clamped (gradient ``dx̂ / eps``), on both paths.  a: (N, D), b: (M, D) float; eps > 0.
    Returns (N, M), in [-1, 1].
    """
    eps = _check_cosine(a, b, eps)
    ua, _, _ = _unit_rows(a, eps)
    ub, _, _ = _unit_rows(b, eps)
    return ua @ ub.T


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _cosine_similarity_matrix(a, b, eps):
    return _cosine_similarity_matrix_fwd(a, b, eps)[0]


def _cosine_similarity_matrix_fwd(a, b, eps):
    # The reference's computation, keeping the unit rows, their norms and clamp flags, which
    # the backward needs and the reference never returns.
    ua, na, ca = _unit_rows(a, eps)
    ub, nb, cb = _unit_rows(b, eps)
    return ua @ ub.T, (ua, na, ca, ub, nb, cb)


def _cosine_similarity_matrix_bwd(eps, res, dc):
    """dÂ = dC·B̂, dB̂ = dCᵀ·Â; then per row da = (dâ − â (â·dâ)) / ‖a‖ (dâ / eps where the norm is clamped), db likewise.

    C = Â B̂ᵀ with Â (N, D), B̂ (M, D) the rows over their clamped norms, so dÂ = dC B̂ and
    dB̂ = dCᵀ Â; each row then goes back through its normalisation (:func:`_unit_rows_bwd`).
    Residuals: Â (N, D), ‖a‖ clamped (N, 1), the unclamped flags (N, 1) bool, and the same three
    for b (M, ...).  dc: (N, M).  Returns da (N, D), db (M, D).
    """
    ua, na, ca, ub, nb, cb = res
    da = _unit_rows_bwd(ua, na, ca, dc @ ub)
    db = _unit_rows_bwd(ub, nb, cb, dc.T @ ua)
    return da.astype(ua.dtype), db.astype(ub.dtype)


_cosine_similarity_matrix.defvjp(_cosine_similarity_matrix_fwd, _cosine_similarity_matrix_bwd)


def cosine_similarity_matrix_manual(a, b, *, eps=1e-8):
    """Manual twin of :func:`cosine_similarity_matrix`. a: (N, D), b: (M, D); eps > 0."""
    return _cosine_similarity_matrix(a, b, _check_cosine(a, b, eps))


def _rows_away_from_eps(x, eps, clamped):
    """x (K, D) float64 with its first ``clamped`` rows rescaled to norm 0.3·eps (clamped) and every
    other row shorter than 2·eps rescaled to 2·eps: no norm within KINK_GAP of the clamp."""
    x = np.array(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    for k in range(x.shape[0]):
        want = 0.3 * eps if k < clamped else max(norms[k], 2 * eps)
        x[k] *= want / norms[k]
    return x


def _sample_cosine(key, d, dt):
    """a (N, D), b (M, D) standard normal, norms kept away from eps; with ``clamped`` > 0, that
    many of a's first rows are shorter than eps and b's first row is all zeros (both clamped)."""
    k = S.keys(key, 2)
    (n, dim), eps, clamped = d["x"], d.get("eps", 1e-8), d.get("clamped", 0)
    a = _rows_away_from_eps(S.normal(k[0], (n, dim), np.float64), eps, clamped)
    b = _rows_away_from_eps(S.normal(k[1], (d["m"], dim), np.float64), eps, 0)
    if clamped:
        b[0] = 0.0
    return np.asarray(a, np.dtype(dt)), np.asarray(b, np.dtype(dt))


def _cosine_similarity_matrix_oracle(a, b, *, eps=1e-8):
    """NumPy oracle: ``C[i, j] = sum_d a_id b_jd / (max(||a_i||, eps) max(||b_j||, eps))``, loops over i and j."""
    c = np.zeros((a.shape[0], b.shape[0]))
    for i in range(a.shape[0]):
        for j in range(b.shape[0]):
            na, nb = max(np.sqrt(np.sum(a[i] ** 2)), eps), max(np.sqrt(np.sum(b[j] ** 2)), eps)
            c[i, j] = np.sum(a[i] * b[j]) / (na * nb)
    return c


def _cosine_oracle_clamped(r):
    """a (3, 4) with a row of norm 0.2 (below eps = 0.5), b (2, 4) with a zero row."""
    a, b = r.standard_normal((3, 4)), r.standard_normal((2, 4))
    a[1] *= 0.2 / np.linalg.norm(a[1])
    b[0] = 0.0
    return a, b


register(OpSpec("cosine_similarity_matrix", cosine_similarity_matrix, cosine_similarity_matrix_manual,
                _sample_cosine,
                (case({"x": (4, 3), "m": 5}), case({"x": (1, 6), "m": 1}),
                 case({"x": (3, 2), "m": 4, "eps": 1.0, "clamped": 1}, eps=1.0)),
                backward=_cosine_similarity_matrix_bwd,
                note="norms kept >= 2 eps, except in the eps=1.0 case: a's first row at 0.3 eps and b's "
                     "first row all zeros (clamped: linear there)",
                oracle=_cosine_similarity_matrix_oracle,
                oracle_cases=lambda: O.drawn(
                    "cosine_similarity_matrix",
                    ("a=3x4 b=5x4", lambda r: (r.standard_normal((3, 4)), r.standard_normal((5, 4)))),
                    ("a=1x2 b=1x2", lambda r: (r.standard_normal((1, 2)), r.standard_normal((1, 2)))),
                    ("a=3x4 b=2x4 eps=0.5, a short and a zero row", _cosine_oracle_clamped, {"eps": 0.5}))))


# --------------------------------------------------------------------------------- SimCLR: NT-Xent

NT_XENT_EPS = 1e-8
"""nt_xent_loss's clamp of the row norms (as cosine_similarity_matrix's default)."""


def _check_nt_xent(z, temperature) -> float:
    check_rank("nt_xent_loss", "z", z, 2, "(2N, D)")
    if z.shape[0] < 2 or z.shape[0] % 2:
        raise ValueError(f"nt_xent_loss: `z` must have an even number 2N >= 2 of rows (rows i and i + N "
                         f"are the positive pairs), got shape {tuple(z.shape)}")
    return check_number("nt_xent_loss", "temperature", temperature, low=0.0, low_open=True)


def _positives(two_n):
    """(2N,) int: the positive of row i, (i + N) mod 2N."""
    return (np.arange(two_n) + two_n // 2) % two_n


def _nt_xent_terms(z, temperature):
    """Each anchor's loss, and what the hand backward needs, for both paths' forward.

    Relative to the positive, ``r_ik = s_ik - s_i,p(i)`` for the negatives k (not i, not p(i)),
    ``l_i = log(1 + sum_k exp(r_ik))``, computed with the shift ``M_i = max(0, max_k r_ik)`` as
    ``M_i + log1p(expm1(-M_i) + sum_k exp(r_ik - M_i))``: every exponent <= 0 (no overflow at any
    temperature), and the positive's own term is the literal 1 of ``log1p`` (``expm1(-0) = 0``),
    so a small loss (the positive far above the negatives) keeps its relative precision.  (Taking
    the positive's term as ``exp(s_ip - m)`` would need ``s_ip - s_ip`` to be exactly 0, which XLA,
    recomputing s in two fusions under jit, does not guarantee: 5e-12 of a 1e-4 loss.)  M_i is
    a shift the value does not depend on: held constant (``stop_gradient``).
    Returns (l (2N,), e (2N, 2N) = exp(r - M) at the negatives, exp(-M) at the positive, 0 on the
    diagonal, so that P = e / (1 + rest) is each row's softmax over k != i; rest (2N,); the unit
    rows (2N, D); the clamped norms and unclamped flags (2N, 1)).
    """
    u, norms, unclamped = _unit_rows(z, NT_XENT_EPS)
    two_n = z.shape[0]
    s = (u @ u.T) / temperature
    positive = jnp.asarray(np.roll(np.eye(two_n, dtype=bool), two_n // 2, axis=1))      # [i, p(i)]
    negative = ~(positive | jnp.eye(two_n, dtype=bool))
    pos = s[np.arange(two_n), _positives(two_n)][:, None]
    r = jnp.where(negative, s - pos, -jnp.inf)
    shift = jax.lax.stop_gradient(jnp.maximum(jnp.max(r, axis=1, keepdims=True), 0))   # (2N, 1)
    e = jnp.exp(r - shift)
    rest = jnp.expm1(-shift[:, 0]) + jnp.sum(e, axis=1)
    e = jnp.where(positive, jnp.exp(-shift), e)
    return shift[:, 0] + jnp.log1p(rest), e, rest, u, norms, unclamped


def nt_xent_loss(z, *, temperature=0.5):
    """SimCLR's NT-Xent (normalised temperature-scaled cross-entropy) loss.

    z: (2N, D) float, the projections of 2N augmented views, laid out so that rows i and i + N
    (i < N) are the two views of one image, the positive pair: ``z = concat([z_left, z_right])``,
    as in the course's self-supervised (SimCLR) assignment.  With ``s_ik = cos(z_i, z_k) / τ``
    (row norms clamped at 1e-8, as :func:`cosine_similarity_matrix`) and p(i) = (i + N) mod 2N::

        l_i = -log( exp(s_i,p(i)) / sum_{k != i} exp(s_ik) )      loss = mean over all 2N anchors

    Each anchor's own similarity is excluded from the denominator; the positive is in it.  The
    log-sum-exp is shifted by each row's maximum and keeps a small loss's precision with
    ``log1p`` (:func:`_nt_xent_terms`).  The seed notes have no self-supervised text: the
    definition is the assignment's and SimCLR's (Chen et al. 2020).  temperature: τ > 0.
    Returns a scalar: 0 when 2N = 2 (each anchor's only candidate is its positive).
    """
    t = _check_nt_xent(z, temperature)
    return jnp.mean(_nt_xent_terms(z, t)[0])


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _nt_xent_loss(z, temperature):
    return _nt_xent_loss_fwd(z, temperature)[0]


def _nt_xent_loss_fwd(z, temperature):
    # The reference's computation, keeping the unit rows and each row's softmax over the other
    # rows, P = e / (1 + rest) (2N, 2N) with P_ii = 0, which the reference never forms.
    losses, e, rest, u, norms, unclamped = _nt_xent_terms(z, temperature)
    return jnp.mean(losses), (u, norms, unclamped, e / (1 + rest)[:, None])


def _nt_xent_loss_bwd(temperature, res, g):
    """dS = g (P − Pos) / 2N, dẐ = (dS + dSᵀ) Ẑ / τ, then dz = (dẑ − ẑ (ẑ·dẑ)) / ‖z‖ per row.

    l_i = logsumexp_{k≠i} S_ik − S_i,p(i) gives dl_i/dS_ik = P_ik − [k = p(i)], P the softmax of
    row i over k ≠ i (P_ii = 0), each over the 2N of the mean.  S = Ẑ Ẑᵀ / τ uses Ẑ twice:
    dẐ = (dS + dSᵀ) Ẑ / τ.  The rows then go back through their normalisation (dẑ / eps for a
    row whose norm is clamped at 1e-8).  Residuals: the unit rows Ẑ (2N, D), the clamped norms
    and unclamped flags (2N, 1), P (2N, 2N).  g: the scalar cotangent.  Returns dz (2N, D).
    """
    u, norms, unclamped, p = res
    two_n = u.shape[0]
    pos = jnp.asarray(np.roll(np.eye(two_n), two_n // 2, axis=1), p.dtype)    # Pos[i, p(i)] = 1
    ds = g * (p - pos) / two_n
    du = (ds + ds.T) @ u / temperature
    return (_unit_rows_bwd(u, norms, unclamped, du).astype(u.dtype),)


_nt_xent_loss.defvjp(_nt_xent_loss_fwd, _nt_xent_loss_bwd)


def nt_xent_loss_manual(z, *, temperature=0.5):
    """Manual twin of :func:`nt_xent_loss`. z: (2N, D), rows i and i + N the positive pairs; temperature > 0."""
    return _nt_xent_loss(z, _check_nt_xent(z, temperature))


def _sample_nt_xent(key, d, dt):
    """z (2N, D) standard normal (row norms about sqrt(D), far above the 1e-8 clamp)."""
    return (S.normal(key, d["z"], dt),)


def _nt_xent_loss_oracle(z, *, temperature=0.5):
    """NumPy oracle: the mean over the 2N anchors of ``-log(exp(sim(i, p(i))/τ) / sum_{k != i} exp(sim(i, k)/τ))``,
    sim the cosine similarity, loops over the anchors and the candidates, float64."""
    two_n = z.shape[0]
    n = two_n // 2
    norms = [max(np.sqrt(np.sum(row ** 2)), 1e-8) for row in z]

    def sim(i, k):
        return np.sum(z[i] * z[k]) / (norms[i] * norms[k]) / temperature

    total = 0.0
    for i in range(two_n):
        positive = i + n if i < n else i - n
        denominator = sum(np.exp(sim(i, k)) for k in range(two_n) if k != i)
        total += -np.log(np.exp(sim(i, positive)) / denominator)
    return np.float64(total / two_n)


register(OpSpec("nt_xent_loss", nt_xent_loss, nt_xent_loss_manual, _sample_nt_xent,
                (case({"z": (6, 4)}), case({"z": (4, 5)}, temperature=0.1), case({"z": (8, 3)}, temperature=1.0)),
                backward=_nt_xent_loss_bwd,
                note="rows i and i + N are the positive pairs; norms about sqrt(D), far above the 1e-8 clamp",
                oracle=_nt_xent_loss_oracle,
                oracle_cases=lambda: O.drawn(
                    "nt_xent_loss", ("z=6x4", lambda r: (r.standard_normal((6, 4)),)),
                    ("z=4x3 temperature=0.1", lambda r: (r.standard_normal((4, 3)),), {"temperature": 0.1}),
                    ("z=8x2 temperature=2.0", lambda r: (r.standard_normal((8, 2)),), {"temperature": 2.0}))))
