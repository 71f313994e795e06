"""Images made by gradient ascent on the input: class model visualisation, feature inversion,
DeepDream; and the image regularisers they use (jitter, Gaussian blur).

Each optimisation is one ``lax.fori_loop`` (jit-compatible with the model bound statically);
randomness (jitter) comes from an explicit key.  Images are (N, H, W, C) float in the model's
input space (normalise them as the model was trained; ``clip`` is that space's valid range).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jaxnet.understand._common import (as_labels, check_clip, check_images, check_int, check_key, check_layer_exists,
                                       check_model, check_number, clip_to, output_of, per_image_norm, scores)
from jaxnet.understand.style import tv_loss

Array = jax.Array


def gaussian_blur(x, sigma: float) -> Array:
    """Blur (N, H, W, C) images with a Gaussian of standard deviation ``sigma`` pixels, each
    channel separately (two 1-D passes, the kernel truncated at 4σ, edges reflected: as
    ``scipy.ndimage.gaussian_filter1d``, which the course uses).  sigma: > 0."""
    sigma = check_number("gaussian_blur", "sigma", sigma, low=0.0, low_open=True)
    check_images("gaussian_blur", x)
    radius = int(4.0 * sigma + 0.5)
    t = jnp.arange(-radius, radius + 1, dtype=x.dtype)
    k = jnp.exp(-0.5 * (t / sigma) ** 2)
    k = k / jnp.sum(k)

    def blur_axis(v, axis):
        size = v.shape[axis]
        pad = [(0, 0)] * v.ndim
        pad[axis] = (radius, radius)
        vp = jnp.pad(v, pad, mode="symmetric")    # scipy's "reflect": (d c b a | a b c d | d c b a)
        out = jnp.zeros_like(v)
        for i in range(2 * radius + 1):
            out = out + k[i] * jax.lax.slice_in_dim(vp, i, i + size, axis=axis)
        return out

    return blur_axis(blur_axis(x, 1), 2)


def jitter(x, ox, oy) -> Array:
    """Roll (N, H, W, C) images by ``ox`` columns and ``oy`` rows (wrapping around; traced
    offsets are fine)."""
    return jnp.roll(jnp.roll(x, oy, axis=1), ox, axis=2)


def _jitter_offsets(key, i, max_jitter):
    k = jax.random.fold_in(key, i)
    return jax.random.randint(k, (2,), -max_jitter, max_jitter + 1)


def class_visualization(model, params, state, x0, target, key, *, num_iterations: int = 100,
                        learning_rate: float = 25.0, l2_reg: float = 1e-3, max_jitter: int = 16,
                        blur_every: int = 10, blur_sigma: float = 0.5, clip=None) -> Array:
    """Class model visualisation (Simonyan et al., 2014; Yosinski et al., 2015), the course's
    recipe: gradient ascent on ``s_target(I) − λ ||I||²``.

    Each iteration: jitter the image by a random roll of up to ``max_jitter`` pixels, take the
    gradient ``g`` of the regularised score, step ``I ← I + lr · g / ||g||₂`` (per image),
    undo the jitter, clip to ``clip``, and every ``blur_every`` iterations blur with
    ``blur_sigma``.  The course's defaults: 100 iterations, lr 25, λ 1e-3, jitter 16, blur every
    10 with σ 0.5 (on 224x224 images: scale ``max_jitter`` down on small images).

    x0: (N, H, W, C) float, the start (e.g. ``1.2 * normal`` noise); target: (N,) int or an int;
    key: PRNG key of the jitter.  max_jitter >= 0; blur_every >= 1 (0 disables blurring).
    Returns (N, H, W, C).
    """
    fn = "class_visualization"
    check_model(fn, model)
    check_images(fn, x0, "x0")
    t = as_labels(fn, target, x0.shape[0], "target")
    check_key(fn, key)
    num_iterations = check_int(fn, "num_iterations", num_iterations)
    lr = check_number(fn, "learning_rate", learning_rate, low=0.0, low_open=True)
    l2_reg = check_number(fn, "l2_reg", l2_reg, low=0.0)
    max_jitter = check_int(fn, "max_jitter", max_jitter, minimum=0)
    blur_every = check_int(fn, "blur_every", blur_every, minimum=0)
    if blur_every:
        blur_sigma = check_number(fn, "blur_sigma", blur_sigma, low=0.0, low_open=True)
    clip = check_clip(fn, clip)

    def objective(v):
        s = jnp.take_along_axis(scores(model, params, state, v), t[:, None], axis=1)
        return jnp.sum(s) - l2_reg * jnp.sum(v * v)

    def body(i, v):
        ox, oy = _jitter_offsets(key, i, max_jitter)
        v = jitter(v, ox, oy)
        g = jax.grad(objective)(v)
        v = v + jnp.asarray(lr, v.dtype) * g / jnp.maximum(per_image_norm(g), 1e-12)
        v = clip_to(jitter(v, -ox, -oy), clip)
        if blur_every:
            v = jax.lax.cond((i + 1) % blur_every == 0, lambda u: gaussian_blur(u, blur_sigma), lambda u: u, v)
        return v

    return jax.lax.fori_loop(0, num_iterations, body, x0)


def feature_inversion(model, params, state, target_image, layer: str, x0, *, num_iterations: int = 200,
                      learning_rate: float = 0.1, tv_weight: float = 1e-2, l2_reg: float = 0.0,
                      clip=None) -> tuple[Array, Array]:
    """Feature inversion (Mahendran and Vedaldi, 2015): the image whose features at ``layer``
    match those of ``target_image``, ``min_I ||φ(I) − φ(I₀)||² / ||φ(I₀)||² + tv_weight · TV(I)
    + l2_reg · ||I||²``, optimised with Adam (``learning_rate``) from ``x0``.

    target_image, x0: (N, H, W, C) float, the same shape.  layer: a layer name or path
    (``"block1"``, ``"block1/relu1"``).  Returns ``(image (N, H, W, C), losses (num_iterations,))``.
    """
    fn = "feature_inversion"
    check_model(fn, model)
    check_images(fn, target_image, "target_image")
    check_images(fn, x0, "x0")
    if tuple(x0.shape) != tuple(target_image.shape):
        raise ValueError(f"{fn}: `x0` {tuple(x0.shape)} and `target_image` {tuple(target_image.shape)} "
                         f"must have the same shape")
    check_layer_exists(fn, model, layer)
    num_iterations = check_int(fn, "num_iterations", num_iterations)
    lr = check_number(fn, "learning_rate", learning_rate, low=0.0, low_open=True)
    tv_weight = check_number(fn, "tv_weight", tv_weight, low=0.0)
    l2_reg = check_number(fn, "l2_reg", l2_reg, low=0.0)
    clip = check_clip(fn, clip)
    target = jax.lax.stop_gradient(output_of(fn, model, params, state, target_image, layer))
    denom = jnp.maximum(jnp.sum(target * target), 1e-12)

    def loss(v):
        f = output_of(fn, model, params, state, v, layer)
        return jnp.sum(jnp.square(f - target)) / denom + tv_loss(v, tv_weight) + l2_reg * jnp.sum(v * v)

    return _adam_loop(loss, x0, lr, num_iterations, clip)


def _adam_loop(loss, x0, learning_rate, num_iterations, clip):
    opt = optax.adam(learning_rate)

    def step(carry, _):
        v, s = carry
        value, g = jax.value_and_grad(loss)(v)
        updates, s = opt.update(g, s, v)
        v = clip_to(optax.apply_updates(v, updates), clip)
        return (v, s), value

    (v, _), losses = jax.lax.scan(step, (x0, opt.init(x0)), None, length=num_iterations)
    return v, losses


def deepdream(model, params, state, x, layer: str, key, *, num_iterations: int = 20,
              learning_rate: float = 1.5, max_jitter: int = 4, clip=None) -> Array:
    """DeepDream (Mordvintsev et al., 2015): amplify whatever ``layer`` responds to, by gradient
    ascent on ``½ ||φ(I)||²`` with a jitter and the normalised step ``I ← I + lr · g / mean|g|``
    (per image).

    x: (N, H, W, C) float; layer: a layer name or path; key: PRNG key of the jitter.
    Returns (N, H, W, C).
    """
    fn = "deepdream"
    check_model(fn, model)
    check_images(fn, x)
    check_layer_exists(fn, model, layer)
    check_key(fn, key)
    num_iterations = check_int(fn, "num_iterations", num_iterations)
    lr = check_number(fn, "learning_rate", learning_rate, low=0.0, low_open=True)
    max_jitter = check_int(fn, "max_jitter", max_jitter, minimum=0)
    clip = check_clip(fn, clip)

    def objective(v):
        f = output_of(fn, model, params, state, v, layer)
        return 0.5 * jnp.sum(f * f)

    def body(i, v):
        ox, oy = _jitter_offsets(key, i, max_jitter)
        v = jitter(v, ox, oy)
        g = jax.grad(objective)(v)
        scale = jnp.maximum(jnp.mean(jnp.abs(g), axis=(1, 2, 3), keepdims=True), 1e-12)
        v = v + jnp.asarray(lr, v.dtype) * g / scale
        return clip_to(jitter(v, -ox, -oy), clip)

    return jax.lax.fori_loop(0, num_iterations, body, x)



__all__ = ["gaussian_blur", "jitter", "class_visualization", "feature_inversion", "deepdream"]
