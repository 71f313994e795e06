"""Variational autoencoders (the generative-models lecture): the reparameterization trick, an MLP
(and a small convolutional) VAE with a Bernoulli decoder, the ELBO, bits per dimension.

The model (Kingma & Welling 2014, the lecture's VAE slides)::

    q(z | x) = N(mu(x), diag exp(logvar(x)))        the encoder: x -> (mu, logvar), (N, L) each
    p(z)     = N(0, I)                              the prior
    p(x | z) = prod_d Bernoulli(x_d; sigmoid(l_d(z)))  the decoder: z -> logits l, x's shape

    log p(x) >= ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z))

The loss is the negative ELBO with one sample ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``
(the reparameterization trick: the randomness is an input, so the gradient reaches mu and logvar)::

    loss = recon + beta * kl
    recon = mean_n sum_d [softplus(l_nd) - x_nd l_nd]        (sigmoid cross-entropy, summed over pixels)
    kl    = mean_n 0.5 sum_j (mu_nj^2 + exp(logvar_nj) - 1 - logvar_nj)

both from the audited ops (:func:`jaxnet.functional.sigmoid_cross_entropy`,
:func:`jaxnet.functional.gaussian_kl`), so ``impl=`` picks their backward.  ``beta = 1`` is the
ELBO; the targets ``x`` may be binary or in [0, 1] (the Bernoulli likelihood of grey levels, the
usual practice on MNIST-like digits).  Nats per example; :func:`bits_per_dim` converts.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp

from jaxnet import functional as F
from jaxnet._checks import check_number, check_positive_int, check_same_shape
from jaxnet.nn.combinators import Sequential
from jaxnet.nn.layers import (Affine, Conv2D, ConvTranspose2D, Flatten, Layer, ReLU, Reshape, _check_train,
                              _shape, with_impl)

__all__ = ["reparameterize", "VAE", "VAEOutput", "mlp_vae", "conv_vae", "vae_loss", "elbo", "bits_per_dim"]


def _check_float(fn, name, x):
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(f"{fn}: `{name}` must be a float array, got dtype {jnp.result_type(x)}")


def reparameterize(key, mu, logvar):
    """A sample of ``N(mu, diag exp(logvar))`` as ``z = mu + exp(logvar / 2) * eps``, ``eps ~ N(0, I)``.

    The reparameterization trick: ``eps = jax.random.normal(key, mu.shape)`` is drawn outside
    the parameters, so ``dz/dmu = 1`` and ``dz/dlogvar = exp(logvar / 2) * eps / 2`` flow back to
    the encoder.  mu, logvar: the same shape, any rank, float.  key: a PRNG key.  Returns z,
    mu's shape and dtype.  With mu and logvar zero arrays, z is the ``eps`` itself.
    """
    mu, logvar = jnp.asarray(mu), jnp.asarray(logvar)
    _check_float("reparameterize", "mu", mu)
    _check_float("reparameterize", "logvar", logvar)
    check_same_shape("reparameterize", "mu", mu, "logvar", logvar)
    eps = jax.random.normal(key, mu.shape, mu.dtype)
    return mu + jnp.exp(0.5 * logvar) * eps


class VAEOutput(NamedTuple):
    """What :meth:`VAE.apply` returns as its ``y``: the decoder's ``logits`` (N, *image),
    the posterior's ``mu`` and ``logvar`` (N, L), and the latent ``z`` (N, L) that was decoded."""
    logits: Any
    mu: Any
    logvar: Any
    z: Any


@dataclasses.dataclass(frozen=True)
class VAE(Layer):
    """A VAE as a layer: ``encoder`` maps x (N, *image) to (N, 2L), the first L columns the
    posterior mean ``mu``, the last L its log-variance ``logvar``; ``decoder`` maps z (N, L) to
    Bernoulli logits of x's shape.  Build one with :func:`mlp_vae` or :func:`conv_vae`, or pass
    any two layers of those shapes.

    ``init(key, (N, *image))`` -> params, state ``{"encoder": ..., "decoder": ...}``; it checks
    that the encoder gives (N, 2L) and the decoder gives x's shape back.
    ``apply(params, state, x, *, train, key=None)`` -> (:class:`VAEOutput`, state):
    with a key, ``z = reparameterize(k_z, mu, logvar)`` where ``k_enc, k_z, k_dec =
    jax.random.split(key, 3)`` (the encoder and decoder get ``k_enc`` and ``k_dec``); without a
    key, ``z = mu`` (the posterior mean: deterministic reconstructions at eval).
    ``train=True`` needs a key (the ELBO is an expectation over z).  ``output_shape`` is the
    logits' shape, x's.
    """
    encoder: Layer
    decoder: Layer
    latent_dim: int

    def __post_init__(self):
        super().__post_init__()
        check_positive_int("VAE", "latent_dim", self.latent_dim)
        for name in ("encoder", "decoder"):
            layer = getattr(self, name)
            if not all(hasattr(layer, a) for a in ("init", "apply", "output_shape")):
                raise ValueError(f"VAE: `{name}` must be a layer (init/apply/output_shape), got {layer!r}")

    def _check_shapes(self, shape):
        enc = tuple(self.encoder.output_shape(shape))
        if enc != (shape[0], 2 * self.latent_dim):
            raise ValueError(f"VAE: the encoder must map input {shape} to (N, 2 * latent_dim) = "
                             f"{(shape[0], 2 * self.latent_dim)}, got {enc}")
        dec = tuple(self.decoder.output_shape((shape[0], self.latent_dim)))
        if dec != shape:
            raise ValueError(f"VAE: the decoder must map z {(shape[0], self.latent_dim)} back to the input's "
                             f"shape {shape}, got {dec}")

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        self._check_shapes(shape)
        return shape

    def init(self, key, input_shape):
        shape = self.output_shape(input_shape)
        k_enc, k_dec = jax.random.split(key)
        pe, se = self.encoder.init(k_enc, shape)
        pd, sd = self.decoder.init(k_dec, (shape[0], self.latent_dim))
        return {"encoder": pe, "decoder": pd}, {"encoder": se, "decoder": sd}

    def encode(self, params, state, x, *, train=False, key=None):
        """(mu, logvar) (N, L) each, and the encoder's new state."""
        h, s = self.encoder.apply(params["encoder"], state["encoder"], x, train=train, key=key)
        return h[:, :self.latent_dim], h[:, self.latent_dim:], s

    def decode(self, params, state, z, *, train=False, key=None):
        """The decoder's Bernoulli logits (N, *image) for z (N, L), and its new state.
        ``jax.nn.sigmoid`` of them is the pixel probabilities (the mean image)."""
        return self.decoder.apply(params["decoder"], state["decoder"], z, train=train, key=key)

    def apply(self, params, state, x, *, train, key=None):
        _check_train(self, train)
        if train and key is None:
            raise ValueError("VAE in train mode needs a PRNG key (z is sampled): call "
                             "apply(..., train=True, key=jax.random.key(...)), or use train=False")
        k_enc, k_z, k_dec = (None, None, None) if key is None else tuple(jax.random.split(key, 3))
        mu, logvar, se = self.encode(params, state, x, train=train, key=k_enc)
        z = mu if k_z is None else reparameterize(k_z, mu, logvar)
        logits, sd = self.decode(params, state, z, train=train, key=k_dec)
        return VAEOutput(logits, mu, logvar, z), {"encoder": se, "decoder": sd}

    def sample(self, params, state, key, num_samples: int):
        """Bernoulli logits (num_samples, *image) of the decoder at ``z ~ N(0, I)`` (the prior):
        new images are ``jax.nn.sigmoid`` of them (the means) or Bernoulli draws from them."""
        n = check_positive_int("VAE.sample", "num_samples", num_samples)
        z = jax.random.normal(key, (n, self.latent_dim), jnp.result_type(float))
        return self.decode(params, state, z, train=False)[0]


def _check_image_shape(fn, image_shape):
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
    if not shape or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in shape):
        raise ValueError(f"{fn}: `image_shape` must be a tuple of positive ints (one example's shape, "
                         f"e.g. (8, 8, 1)), got {image_shape!r}")
    return shape


def _check_sizes(fn, name, sizes):
    sizes = tuple(sizes) if isinstance(sizes, (tuple, list)) else None
    if sizes is None or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in sizes):
        raise ValueError(f"{fn}: `{name}` must be a tuple of positive ints, got {sizes!r}")
    return sizes


def mlp_vae(image_shape: Sequence[int] = (8, 8, 1), hidden: Sequence[int] = (256,), latent_dim: int = 16, *,
            impl: Optional[str] = None) -> VAE:
    """The MLP VAE of the course's VAE assignment: encoder ``flatten - {affine - relu} x len(hidden)
    - affine(2L)``; decoder ``{affine - relu} x len(hidden) (reversed sizes) - affine(prod(image))
    - reshape(image)`` to logits.  image_shape: one example's shape, e.g. (8, 8, 1) or (784,).
    hidden: the hidden sizes, e.g. (256,) or (400, 200).  latent_dim: L."""
    image_shape = _check_image_shape("mlp_vae", image_shape)
    hidden = _check_sizes("mlp_vae", "hidden", hidden)
    check_positive_int("mlp_vae", "latent_dim", latent_dim)
    enc, enc_names = [Flatten()], ["flatten"]
    for i, h in enumerate(hidden, start=1):
        enc += [Affine(h), ReLU()]
        enc_names += [f"fc{i}", f"relu{i}"]
    enc.append(Affine(2 * latent_dim, w_init="xavier"))
    enc_names.append("stats")
    dec, dec_names = [], []
    for i, h in enumerate(reversed(hidden), start=1):
        dec += [Affine(h), ReLU()]
        dec_names += [f"fc{i}", f"relu{i}"]
    dec += [Affine(math.prod(image_shape), w_init="xavier"), Reshape(image_shape)]
    dec_names += ["logits", "reshape"]
    return with_impl(VAE(Sequential(tuple(enc), tuple(enc_names)), Sequential(tuple(dec), tuple(dec_names)),
                         latent_dim), impl)


def conv_vae(image_shape: Sequence[int] = (8, 8, 1), channels: Sequence[int] = (16, 32), latent_dim: int = 16, *,
             impl: Optional[str] = None) -> VAE:
    """A small convolutional VAE.  Encoder: per entry c of ``channels``, a 4x4 conv with stride 2
    and padding 1 (halves H and W) to c channels, relu; then flatten - affine(2L).  Decoder:
    affine - reshape to (H / 2^k, W / 2^k, channels[-1]) - relu, then per remaining channel
    (reversed) a 4x4 transposed conv with stride 2 and padding 1 (doubles H and W), relu, and a
    last one to the image's C channels (logits).  H and W must be divisible by 2^k,
    k = len(channels)."""
    image_shape = _check_image_shape("conv_vae", image_shape)
    channels = _check_sizes("conv_vae", "channels", channels)
    check_positive_int("conv_vae", "latent_dim", latent_dim)
    if len(image_shape) != 3 or not channels:
        raise ValueError(f"conv_vae: `image_shape` must be (H, W, C) and `channels` non-empty, got "
                         f"{image_shape} and {channels}")
    k = 2 ** len(channels)
    h, w, c = image_shape
    if h % k or w % k:
        raise ValueError(f"conv_vae: H and W of image_shape {image_shape} must be divisible by 2^len(channels) = {k}")
    enc, enc_names = [], []
    for i, ch in enumerate(channels, start=1):
        enc += [Conv2D(ch, kernel=4, stride=2, padding=1), ReLU()]
        enc_names += [f"conv{i}", f"relu{i}"]
    enc += [Flatten(), Affine(2 * latent_dim, w_init="xavier")]
    enc_names += ["flatten", "stats"]
    top = channels[-1]
    dec = [Affine((h // k) * (w // k) * top), Reshape((h // k, w // k, top)), ReLU()]
    dec_names = ["fc", "reshape", "relu0"]
    for i, ch in enumerate(reversed(channels[:-1]), start=1):
        dec += [ConvTranspose2D(ch, kernel=4, stride=2, padding=1), ReLU()]
        dec_names += [f"deconv{i}", f"relu{i}"]
    dec.append(ConvTranspose2D(c, kernel=4, stride=2, padding=1, w_init="xavier"))
    dec_names.append("logits")
    return with_impl(VAE(Sequential(tuple(enc), tuple(enc_names)), Sequential(tuple(dec), tuple(dec_names)),
                         latent_dim), impl)


def vae_loss(logits, x, mu, logvar, *, beta: float = 1.0, impl: Optional[str] = None):
    """The negative ELBO of one z sample: ``loss = recon + beta * kl`` and its parts.

    recon: ``sigmoid_cross_entropy(logits, x)``, the Bernoulli negative log-likelihood summed
    over the pixels, averaged over the batch; kl: ``gaussian_kl(mu, logvar)``, summed over the
    latent dimensions, averaged over the batch.  logits, x: (N, *image), x in [0, 1]; mu, logvar:
    (N, L).  beta: >= 0 (1 = the ELBO; the beta-VAE otherwise).  impl: the ops' backward path.
    Returns (loss, metrics) with metrics ``{"loss", "recon", "kl", "elbo"}`` (scalars;
    ``elbo = -(recon + kl)``, nats per example, whatever beta).
    """
    beta = check_number("vae_loss", "beta", beta, low=0.0)
    recon = F.sigmoid_cross_entropy(logits, x, impl=impl)
    kl = F.gaussian_kl(mu, logvar, impl=impl)
    loss = recon + beta * kl
    return loss, {"loss": loss, "recon": recon, "kl": kl, "elbo": -(recon + kl)}


def elbo(model: VAE, params, state, x, key, *, train: bool = True, beta: float = 1.0,
         impl: Optional[str] = None):
    """The model's forward pass on x with one z sample, and :func:`vae_loss` on it.

    Returns ``(loss, (metrics, new_state))``, the form ``jax.value_and_grad(elbo, argnums=1,
    has_aux=True)`` takes: loss the negative ELBO (plus (beta - 1) KL), metrics as
    :func:`vae_loss`'s.  key: the PRNG key of :meth:`VAE.apply` (``None`` decodes z = mu,
    train=False only).  x: (N, *image) in [0, 1].
    """
    if not isinstance(model, VAE):
        raise ValueError(f"elbo: `model` must be a VAE (mlp_vae, conv_vae), got {type(model).__name__}")
    out, new_state = model.apply(params, state, x, train=train, key=key)
    loss, metrics = vae_loss(out.logits, x, out.mu, out.logvar, beta=beta, impl=impl)
    return loss, (metrics, new_state)


def bits_per_dim(nll_nats, num_dims: int):
    """A negative log-likelihood in nats per example as bits per dimension:
    ``nll / (num_dims * ln 2)``.  nll_nats: a number or array (e.g. the negative ELBO, an upper
    bound of -log p(x), or :func:`jaxnet.generative.pixelcnn.pixelcnn_nll`).  num_dims: the
    dimensions of one example (H * W * C), a positive int."""
    d = check_positive_int("bits_per_dim", "num_dims", num_dims)
    return jnp.asarray(nll_nats) / (d * math.log(2.0))
