"""Generative adversarial networks (the generative-models lecture, the course's GAN assignment):
DCGAN and MLP generators and discriminators, and one jitted training step.

The game (Goodfellow et al. 2014, as in the lecture)::

    min_G max_D  E_x log D(x) + E_z log(1 - D(G(z))),     D(x) = sigmoid(s(x)), s the logit

alternating a discriminator step and a generator step.  The pair of objectives is one of three
``loss`` kinds, all from the audited ops in :mod:`jaxnet.ops.generative`:

- ``"minimax"``: D minimises ``gan_discriminator_loss`` = ``mean softplus(-s_real) + mean
  softplus(s_fake)``; G minimises ``mean log(1 - D(G(z)))`` (``gan_generator_loss(saturating=True)``).
- ``"non_saturating"`` (the course's choice, the default): D as above; G minimises
  ``mean -log D(G(z))`` (``gan_generator_loss(saturating=False)``).
- ``"least_squares"`` (LSGAN): D minimises ``0.5 mean (s_real - 1)^2 + 0.5 mean s_fake^2``
  (``ls_discriminator_loss``); G minimises ``0.5 mean (s_fake - 1)^2`` (``ls_generator_loss``).

The saturation point: the minimax generator's gradient with respect to a fake's logit is
``-sigmoid(s)/N``, which vanishes when the discriminator confidently rejects the fakes
(s -> -inf), early in training; the non-saturating one's is ``-sigmoid(-s)/N`` -> ``-1/N`` there.
:func:`gan_train_step` reports the generator's gradient norm (``g_grad_norm``) so that this is
visible.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxnet import functional as F
from jaxnet._checks import check_number, check_positive_int
from jaxnet.nn.combinators import Sequential
from jaxnet.nn.init import small
from jaxnet.nn.layers import (Affine, BatchNorm, Conv2D, ConvTranspose2D, Flatten, Layer, LeakyReLU, ReLU, Reshape,
                              Tanh, _shape, with_impl)

__all__ = ["LOSS_KINDS", "Logit", "dcgan_init", "dcgan_generator", "dcgan_discriminator", "mlp_generator",
           "mlp_discriminator", "GANState", "init_gan_state", "gan_train_step", "make_gan_train_step",
           "generate"]

LOSS_KINDS = ("minimax", "non_saturating", "least_squares")


# ----------------------------------------------------------------------------- builders

@dataclasses.dataclass(frozen=True)
class Logit(Layer):
    """(N, 1) -> (N,): the discriminator's one logit per image, the shape the GAN losses take."""

    def output_shape(self, input_shape):
        shape = _shape(self, input_shape)
        if len(shape) != 2 or shape[1] != 1:
            raise ValueError(f"Logit: input must be (N, 1), got {shape}")
        return (shape[0],)

    def init(self, key, input_shape):
        self.output_shape(input_shape)
        return {}, {}

    def apply(self, params, state, x, *, train, key=None):
        return jnp.reshape(x, self.output_shape(x.shape)), state


def dcgan_init(key, shape, fan_in=None, fan_out=None, *, dtype=None):
    """DCGAN's weight initializer (Radford et al. 2016): ``0.02 * N(0, 1)``."""
    return small(key, shape, fan_in, fan_out, scale=0.02, dtype=dtype)


_DCGAN_CHANNELS = {  # image shape -> (generator channels, discriminator channels)
    (8, 8, 1): ((64, 32), (32, 64)),
    (32, 32, 3): ((256, 128, 64), (64, 128, 256)),
}


def _image_shape(fn, image_shape):
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
    if not shape or len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                               for d in shape):
        raise ValueError(f"{fn}: `image_shape` must be (H, W, C) with positive ints, got {image_shape!r}")
    return shape


def _channels(fn, image_shape, channels, which):
    if channels is None:
        if image_shape not in _DCGAN_CHANNELS:
            raise ValueError(f"{fn}: no default `channels` for image_shape {image_shape} (defaults exist for "
                             f"{sorted(_DCGAN_CHANNELS)}); pass channels=(...)")
        return _DCGAN_CHANNELS[image_shape][which]
    ch = tuple(channels) if isinstance(channels, (tuple, list)) else None
    if not ch or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in ch):
        raise ValueError(f"{fn}: `channels` must be a non-empty tuple of positive ints, got {channels!r}")
    k = 2 ** len(ch)
    if image_shape[0] % k or image_shape[1] % k:
        raise ValueError(f"{fn}: H and W of image_shape {image_shape} must be divisible by 2^len(channels) = {k} "
                         f"(each of the {len(ch)} stages halves or doubles them), got channels {ch}")
    return ch


def dcgan_generator(image_shape: Sequence[int] = (8, 8, 1), channels: Optional[Sequence[int]] = None, *,
                    batchnorm: bool = True, impl: Optional[str] = None) -> Sequential:
    """DCGAN's generator: z (N, L) -> images (N, H, W, C) in (-1, 1).

    ``fc`` Affine(s·s·c0) - ``reshape`` (s, s, c0) - [``bn0``] - ``relu0``, then per further
    channel count c_i a 4x4 transposed conv with stride 2 and padding 1 (doubles H and W)
    ``deconv{i}`` - [``bn{i}``] - ``relu{i}``, and a last ``deconv{k}`` to C channels - ``tanh``;
    s = H / 2^k with k = len(channels).  Defaults: (64, 32) for 8x8x1 digits (2x2 -> 4x4 -> 8x8),
    (256, 128, 64) for 32x32x3 CIFAR (4x4 -> 8x8 -> 16x16 -> 32x32).  Weights 0.02·N(0, 1)
    (:func:`dcgan_init`).  Scale real images to [-1, 1] to match the tanh.
    """
    image_shape = _image_shape("dcgan_generator", image_shape)
    ch = _channels("dcgan_generator", image_shape, channels, 0)
    h, w, c = image_shape
    k = 2 ** len(ch)
    layers = [("fc", Affine((h // k) * (w // k) * ch[0], w_init=dcgan_init)),
              ("reshape", Reshape((h // k, w // k, ch[0])))]
    if batchnorm:
        layers.append(("bn0", BatchNorm()))
    layers.append(("relu0", ReLU()))
    for i, ci in enumerate(ch[1:], start=1):
        layers.append((f"deconv{i}", ConvTranspose2D(ci, kernel=4, stride=2, padding=1, w_init=dcgan_init)))
        if batchnorm:
            layers.append((f"bn{i}", BatchNorm()))
        layers.append((f"relu{i}", ReLU()))
    layers += [(f"deconv{len(ch)}", ConvTranspose2D(c, kernel=4, stride=2, padding=1, w_init=dcgan_init)),
               ("tanh", Tanh())]
    names, items = zip(*layers)
    return with_impl(Sequential(tuple(items), tuple(names)), impl)


def dcgan_discriminator(image_shape: Sequence[int] = (8, 8, 1), channels: Optional[Sequence[int]] = None, *,
                        batchnorm: bool = False, slope: float = 0.2, impl: Optional[str] = None) -> Sequential:
    """DCGAN's discriminator: images (N, H, W, C) -> one logit per image (N,).

    Per channel count c_i a 4x4 conv with stride 2 and padding 1 (halves H and W) ``conv{i}`` -
    [``bn{i}``, not after the first conv, as in DCGAN] - ``lrelu{i}`` (LeakyReLU, slope 0.2), then
    ``flatten`` - ``fc`` Affine(1) - ``logit`` (:class:`Logit`).  Defaults: (32, 64) for 8x8x1
    (8 -> 4 -> 2), (64, 128, 256) for 32x32x3 (32 -> 16 -> 8 -> 4).  ``batchnorm`` is off by
    default (the course's assignment discriminator has none; with it, :func:`gan_train_step`
    normalises the real and the fake batch separately).
    """
    image_shape = _image_shape("dcgan_discriminator", image_shape)
    ch = _channels("dcgan_discriminator", image_shape, channels, 1)
    slope = check_number("dcgan_discriminator", "slope", slope, low=0.0)
    layers = []
    for i, ci in enumerate(ch, start=1):
        layers.append((f"conv{i}", Conv2D(ci, kernel=4, stride=2, padding=1, w_init=dcgan_init)))
        if batchnorm and i > 1:
            layers.append((f"bn{i}", BatchNorm()))
        layers.append((f"lrelu{i}", LeakyReLU(slope)))
    layers += [("flatten", Flatten()), ("fc", Affine(1, w_init=dcgan_init)), ("logit", Logit())]
    names, items = zip(*layers)
    return with_impl(Sequential(tuple(items), tuple(names)), impl)


def _hidden(fn, hidden):
    hidden = tuple(hidden) if isinstance(hidden, (tuple, list)) else None
    if hidden is None or not all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden):
        raise ValueError(f"{fn}: `hidden` must be a tuple of positive ints, got {hidden!r}")
    return hidden


def mlp_generator(image_shape: Sequence[int] = (8, 8, 1), hidden: Sequence[int] = (1024, 1024), *,
                  impl: Optional[str] = None) -> Sequential:
    """The course's vanilla GAN generator: z (N, L) -> {affine - relu} x len(hidden) -
    affine(prod(image)) - tanh - reshape: images (N, *image_shape) in (-1, 1).  The assignment's
    sizes: hidden (1024, 1024), L = 96, 784 = 28x28 outputs.  Xavier weights."""
    if not isinstance(image_shape, (tuple, list)) or not image_shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in image_shape):
        raise ValueError(f"mlp_generator: `image_shape` must be a tuple of positive ints, got {image_shape!r}")
    hidden = _hidden("mlp_generator", hidden)
    layers = []
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", Affine(h, w_init="xavier")), (f"relu{i}", ReLU())]
    layers += [(f"fc{len(hidden) + 1}", Affine(math.prod(image_shape), w_init="xavier")), ("tanh", Tanh()),
               ("reshape", Reshape(tuple(image_shape)))]
    names, items = zip(*layers)
    return with_impl(Sequential(tuple(items), tuple(names)), impl)


def mlp_discriminator(hidden: Sequence[int] = (256, 256), *, slope: float = 0.01,
                      impl: Optional[str] = None) -> Sequential:
    """The course's vanilla GAN discriminator: images (N, ...) -> ``flatten`` - {affine -
    LeakyReLU(0.01)} x len(hidden) - affine(1) - ``logit``: one logit per image (N,).
    The assignment's sizes: hidden (256, 256).  Xavier weights."""
    hidden = _hidden("mlp_discriminator", hidden)
    slope = check_number("mlp_discriminator", "slope", slope, low=0.0)
    layers = [("flatten", Flatten())]
    for i, h in enumerate(hidden, start=1):
        layers += [(f"fc{i}", Affine(h, w_init="xavier")), (f"lrelu{i}", LeakyReLU(slope))]
    layers += [(f"fc{len(hidden) + 1}", Affine(1, w_init="xavier")), ("logit", Logit())]
    names, items = zip(*layers)
    return with_impl(Sequential(tuple(items), tuple(names)), impl)


# ----------------------------------------------------------------------------- training

class GANState(NamedTuple):
    """Both players' params, layer state (batch-norm statistics) and optimizer state, and the step count."""
    g_params: Any
    g_state: Any
    g_opt_state: Any
    d_params: Any
    d_state: Any
    d_opt_state: Any
    step: Any


def _check_loss(fn, loss):
    if not isinstance(loss, str) or loss not in LOSS_KINDS:
        raise ValueError(f"{fn}: `loss` must be one of {', '.join(repr(k) for k in LOSS_KINDS)}, got {loss!r}")
    return loss


def init_gan_state(key, generator, discriminator, g_optimizer: optax.GradientTransformation,
                   d_optimizer: optax.GradientTransformation, *, latent_dim: int,
                   image_shape: Sequence[int]) -> GANState:
    """Both nets' params and state (``generator.init(k_g, (1, latent_dim))``,
    ``discriminator.init(k_d, (1, *image_shape))``, ``k_g, k_d = jax.random.split(key)``), both
    optimizers' states, step 0.  Checks that the generator makes images of ``image_shape`` and
    the discriminator gives one logit per image, (N,) or (N, 1)."""
    latent_dim = check_positive_int("init_gan_state", "latent_dim", latent_dim)
    image_shape = tuple(image_shape)
    out = tuple(generator.output_shape((1, latent_dim)))
    if out != (1, *image_shape):
        raise ValueError(f"init_gan_state: the generator maps z (1, {latent_dim}) to {out}, not to images of "
                         f"image_shape {image_shape}")
    d_out = tuple(discriminator.output_shape((1, *image_shape)))
    if d_out not in ((1,), (1, 1)):
        raise ValueError(f"init_gan_state: the discriminator must give one logit per image, (N,) or (N, 1), got "
                         f"{d_out} for images (1, *{image_shape})")
    k_g, k_d = jax.random.split(key)
    g_params, g_state = generator.init(k_g, (1, latent_dim))
    d_params, d_state = discriminator.init(k_d, (1, *image_shape))
    return GANState(g_params, g_state, g_optimizer.init(g_params), d_params, d_state, d_optimizer.init(d_params),
                    jnp.zeros((), jnp.int32))


def _scores(discriminator, params, state, x, key):
    s, new_state = discriminator.apply(params, state, x, train=True, key=key)
    if s.ndim == 2 and s.shape[1] == 1:
        s = s[:, 0]
    if s.shape != (x.shape[0],):
        raise ValueError(f"gan_train_step: the discriminator must give one logit per image, (N,) or (N, 1), got "
                         f"{tuple(s.shape)} for images {tuple(x.shape)}")
    return s, new_state


def _d_loss(kind, s_real, s_fake, impl):
    if kind == "least_squares":
        return F.ls_discriminator_loss(s_real, s_fake, impl=impl)
    return F.gan_discriminator_loss(s_real, s_fake, impl=impl)


def _g_loss(kind, s_fake, impl):
    if kind == "least_squares":
        return F.ls_generator_loss(s_fake, impl=impl)
    return F.gan_generator_loss(s_fake, saturating=kind == "minimax", impl=impl)


def _summary(kind, s):
    """The mean discriminator output: D = sigmoid(s) for the logistic losses, the raw score for least squares."""
    return jnp.mean(s if kind == "least_squares" else jax.nn.sigmoid(s))


@functools.partial(jax.jit, static_argnames=("generator", "discriminator", "g_optimizer", "d_optimizer",
                                             "latent_dim", "loss", "impl"))
def _step(state, real, key, *, generator, discriminator, g_optimizer, d_optimizer, latent_dim, loss, impl):
    n = real.shape[0]
    k_z, k_drop = jax.random.split(key)
    z_d, z_g = jax.random.normal(k_z, (2, n, latent_dim), real.dtype)     # one draw for both steps' z
    kg_d, kg_g, kd_real, kd_fake, kd_g = jax.random.split(k_drop, 5)       # the layers' keys (dropout)

    # the discriminator: descend its loss on a real batch and a (constant) fake batch
    z = z_d
    fake, g_state = generator.apply(state.g_params, state.g_state, z, train=True, key=kg_d)
    fake = jax.lax.stop_gradient(fake)

    def d_objective(d_params):
        s_real, d_state = _scores(discriminator, d_params, state.d_state, real, kd_real)
        s_fake, d_state = _scores(discriminator, d_params, d_state, fake, kd_fake)
        return _d_loss(loss, s_real, s_fake, impl), (d_state, s_real, s_fake)

    (d_loss, (d_state, s_real, s_fake)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(state.d_params)
    d_updates, d_opt_state = d_optimizer.update(d_grads, state.d_opt_state, state.d_params)
    d_params = optax.apply_updates(state.d_params, d_updates)

    # the generator: descend its loss through the updated discriminator (whose state is not updated)
    z = z_g

    def g_objective(g_params):
        images, new_g_state = generator.apply(g_params, g_state, z, train=True, key=kg_g)
        s, _ = _scores(discriminator, d_params, d_state, images, kd_g)
        return _g_loss(loss, s, impl), (new_g_state, s)

    (g_loss, (g_state, s_g)), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.g_params)
    g_updates, g_opt_state = g_optimizer.update(g_grads, state.g_opt_state, state.g_params)
    g_params = optax.apply_updates(state.g_params, g_updates)

    metrics = {"d_loss": d_loss, "g_loss": g_loss,
               "d_grad_norm": optax.tree.norm(d_grads), "g_grad_norm": optax.tree.norm(g_grads),
               "d_real": _summary(loss, s_real), "d_fake": _summary(loss, s_fake), "g_fake": _summary(loss, s_g)}
    new = GANState(g_params, g_state, g_opt_state, d_params, d_state, d_opt_state, state.step + 1)
    return new, metrics


def gan_train_step(state: GANState, real, key, *, generator, discriminator, g_optimizer: optax.GradientTransformation,
                   d_optimizer: optax.GradientTransformation, latent_dim: int, loss: str = "non_saturating",
                   impl: Optional[str] = None):
    """One jitted GAN step: a discriminator update, then a generator update.

    1. z ~ N(0, I) (N, latent_dim); fakes = G(z) (train mode, held constant); the discriminator
       descends its loss (table in the module docstring) on ``real`` and the fakes, scored in two
       separate passes (batch norm sees real and fake batches apart); ``d_optimizer`` updates it.
    2. a fresh z; the generator descends its loss on the updated discriminator's scores of G(z)
       (the discriminator in train mode, its state not updated by this pass); ``g_optimizer``
       updates it.

    state: a :class:`GANState` (:func:`init_gan_state`).  real: (N, *image_shape), scaled like the
    generator's outputs ([-1, 1] for a tanh).  key: the step's PRNG key (``k_z, k_drop = split(key)``:
    both z batches are ``normal(k_z, (2, N, latent_dim))``, the layers' keys ``split(k_drop, 5)``).
    generator, discriminator: layers (hashable: static under jit);
    g_optimizer, d_optimizer: optax transformations (static: build them once, e.g.
    ``jaxnet.optim.adam(2e-4, b1=0.5)``, and reuse them, or every call compiles again).
    loss: ``"minimax"`` | ``"non_saturating"`` | ``"least_squares"``.  impl: the loss ops' path.

    Returns ``(new_state, metrics)``; metrics (scalars): ``d_loss``, ``g_loss``, ``d_grad_norm``,
    ``g_grad_norm`` (global L2 norms of the two gradients: the minimax generator's collapses
    when D confidently rejects the fakes), ``d_real``, ``d_fake`` (the mean D(x) = sigmoid(s) of
    the step's real and fake batches, before D's update; the mean raw score for least squares),
    ``g_fake`` (the same for the generator step's fakes, after D's update).
    """
    _check_loss("gan_train_step", loss)
    latent_dim = check_positive_int("gan_train_step", "latent_dim", latent_dim)
    if jnp.ndim(real) < 2:
        raise ValueError(f"gan_train_step: `real` must be a batch of images (N, *image_shape), got shape "
                         f"{tuple(jnp.shape(real))}")
    if not isinstance(state, GANState):
        raise ValueError(f"gan_train_step: `state` must be a GANState (init_gan_state), got {type(state).__name__}")
    return _step(state, real, key, generator=generator, discriminator=discriminator, g_optimizer=g_optimizer,
                 d_optimizer=d_optimizer, latent_dim=latent_dim, loss=loss, impl=impl)


def make_gan_train_step(generator, discriminator, g_optimizer, d_optimizer, *, latent_dim: int,
                        loss: str = "non_saturating", impl: Optional[str] = None):
    """``step(state, real, key) -> (state, metrics)``: :func:`gan_train_step` with everything
    static bound (checked here, once)."""
    _check_loss("make_gan_train_step", loss)
    check_positive_int("make_gan_train_step", "latent_dim", latent_dim)
    return functools.partial(gan_train_step, generator=generator, discriminator=discriminator,
                             g_optimizer=g_optimizer, d_optimizer=d_optimizer, latent_dim=latent_dim, loss=loss,
                             impl=impl)


def generate(generator, params, state, key, num_samples: int, latent_dim: int):
    """``num_samples`` images from the generator at z ~ N(0, I), eval mode (batch norm's running statistics)."""
    n = check_positive_int("generate", "num_samples", num_samples)
    latent_dim = check_positive_int("generate", "latent_dim", latent_dim)
    z = jax.random.normal(key, (n, latent_dim), jnp.result_type(float))
    return generator.apply(params, state, z, train=False)[0]
