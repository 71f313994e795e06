"""Neural style transfer (Gatys et al., 2016) as the course's assignment sets it up: content,
style and total-variation losses on a feature extractor's layers, optimised on the pixels with
Adam or L-BFGS; and image loading.

The Gram matrix is the registered op ``gram_matrix`` (``jaxnet.functional.gram_matrix``, with
its hand backward ``_gram_matrix_bwd`` in ``jaxnet/ops/style.py``).
"""
from __future__ import annotations

import os
from typing import NamedTuple, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet import functional as F
from jaxnet.understand._common import (check_choice, check_clip, check_images, check_int, check_key,
                                       check_layer_exists, check_model, check_number, clip_to, output_of)

Array = jax.Array


def content_loss(current, target, weight: float = 1.0) -> Array:
    """``weight · Σ (current − target)²`` (the course's content loss).

    current, target: feature maps of the same shape (e.g. (N, H, W, C)).  Returns a scalar."""
    if tuple(current.shape) != tuple(target.shape):
        raise ValueError(f"content_loss: `current` {tuple(current.shape)} and `target` {tuple(target.shape)} "
                         f"must have the same shape")
    return weight * jnp.sum(jnp.square(current - target))


def style_loss(features: Sequence, target_grams: Sequence, weights: Sequence[float], *,
               impl: Optional[str] = None) -> Array:
    """``Σ_l w_l · Σ (G_l − A_l)²`` with ``G_l = gram_matrix(features[l])`` (normalised by H·W·C)
    and ``A_l`` the style image's Gram matrices (the course's style loss).

    features: one (N, H_l, W_l, C_l) map per style layer; target_grams: one (N or 1, C_l, C_l)
    per layer; weights: one number per layer.  impl: the Gram op's path.  Returns a scalar.
    """
    if not (len(features) == len(target_grams) == len(weights)):
        raise ValueError(f"style_loss: need one target Gram matrix and one weight per layer, got "
                         f"{len(features)} features, {len(target_grams)} Gram matrices, {len(weights)} weights")
    total = 0.0
    for i, (f, a, w) in enumerate(zip(features, target_grams, weights)):
        g = F.gram_matrix(f, impl=impl)
        if g.shape[1:] != tuple(a.shape[-2:]):
            raise ValueError(f"style_loss: layer {i}: Gram matrix {tuple(g.shape)} does not match the target "
                             f"{tuple(a.shape)}")
        total = total + w * jnp.sum(jnp.square(g - a))
    return jnp.asarray(total)


def tv_loss(x, weight: float = 1.0) -> Array:
    """Total variation, the course's squared form:
    ``weight · (Σ (x[:, i+1, j] − x[:, i, j])² + Σ (x[:, i, j+1] − x[:, i, j])²)``.

    x: (N, H, W, C) float.  Returns a scalar."""
    check_images("tv_loss", x)
    dh = x[:, 1:, :, :] - x[:, :-1, :, :]
    dw = x[:, :, 1:, :] - x[:, :, :-1, :]
    return weight * (jnp.sum(dh * dh) + jnp.sum(dw * dw))


def extract_features(model, params, state, x, layers: Sequence[str]) -> list:
    """The outputs of ``layers`` (names or ``"/"`` paths) on x (N, H, W, C), in eval mode."""
    for layer in layers:
        check_layer_exists("extract_features", model, layer)
    return [output_of("extract_features", model, params, state, x, layer) for layer in layers]


class StyleTransferResult(NamedTuple):
    """image: (1, H, W, C) the result; losses: (num_iterations,) the total loss at each step's start."""
    image: Array
    losses: Array


def style_transfer(model, params, state, content_image, style_image, *, content_layer: str,
                   style_layers: Sequence[str], style_weights: Sequence[float], content_weight: float = 5e-2,
                   tv_weight: float = 5e-2, num_iterations: int = 200, optimizer: str = "adam",
                   learning_rate: float = 3.0, decayed_lr: float = 0.1, decay_lr_at: int = 180,
                   init: str = "content", key=None, clip=None, impl: Optional[str] = None) -> StyleTransferResult:
    """Style transfer by optimising the pixels of one image:
    ``content_loss(φ_c(I), φ_c(content)) + style_loss({φ_l(I)}, {G(φ_l(style))}, w) + TV(I)``.

    content_image: (1, H, W, C); style_image: (1, H', W', C) (any size: only its Gram matrices
    are used).  content_layer, style_layers: layer names/paths of ``model`` (e.g. a feature
    extractor).  optimizer: ``"adam"`` (the course: lr ``learning_rate`` until iteration
    ``decay_lr_at``, then ``decayed_lr``) or ``"lbfgs"`` (``optax.lbfgs`` with its zoom line
    search; ``learning_rate`` unused).  init: ``"content"`` (start from the content image) or
    ``"random"`` (uniform in [0, 1) scaled to ``clip`` when given; needs ``key``).  clip: the
    valid pixel range, applied after each Adam step (L-BFGS: not clipped, its line search needs
    the unclipped step).  The whole loop is one ``lax.scan``.
    """
    fn = "style_transfer"
    check_model(fn, model)
    check_images(fn, content_image, "content_image")
    check_images(fn, style_image, "style_image")
    if content_image.shape[0] != 1 or style_image.shape[0] != 1:
        raise ValueError(f"{fn}: one content and one style image, shapes (1, H, W, C); got "
                         f"{tuple(content_image.shape)} and {tuple(style_image.shape)}")
    if content_image.shape[-1] != style_image.shape[-1]:
        raise ValueError(f"{fn}: `content_image` {tuple(content_image.shape)} and `style_image` "
                         f"{tuple(style_image.shape)} must have the same channels")
    style_layers, style_weights = tuple(style_layers), tuple(style_weights)
    if len(style_layers) != len(style_weights) or not style_layers:
        raise ValueError(f"{fn}: one weight per style layer, got {len(style_layers)} layers and "
                         f"{len(style_weights)} weights")
    for layer in (content_layer, *style_layers):
        check_layer_exists(fn, model, layer)
    for w in style_weights:
        check_number(fn, "style_weights entries", w, low=0.0)
    content_weight = check_number(fn, "content_weight", content_weight, low=0.0)
    tv_weight = check_number(fn, "tv_weight", tv_weight, low=0.0)
    num_iterations = check_int(fn, "num_iterations", num_iterations)
    check_choice(fn, "optimizer", optimizer, ("adam", "lbfgs"))
    check_choice(fn, "init", init, ("content", "random"))
    clip = check_clip(fn, clip)

    target_content = output_of(fn, model, params, state, content_image, content_layer)
    target_grams = [F.gram_matrix(f, impl=impl) for f in extract_features(model, params, state, style_image,
                                                                          style_layers)]

    def loss(v):
        feats = extract_features(model, params, state, v, (content_layer, *style_layers))
        return (content_loss(feats[0], target_content, content_weight)
                + style_loss(feats[1:], target_grams, style_weights, impl=impl) + tv_loss(v, tv_weight))

    if init == "content":
        x0 = content_image
    else:
        check_key(fn, key)
        u = jax.random.uniform(key, content_image.shape, content_image.dtype)
        x0 = u if clip is None else clip[0] + (jnp.asarray(clip[1]) - jnp.asarray(clip[0])) * u

    if optimizer == "adam":
        lr = check_number(fn, "learning_rate", learning_rate, low=0.0, low_open=True)
        dlr = check_number(fn, "decayed_lr", decayed_lr, low=0.0, low_open=True)
        decay_at = check_int(fn, "decay_lr_at", decay_lr_at, minimum=0)
        opt = optax.adam(optax.piecewise_constant_schedule(lr, {decay_at: dlr / lr}))

        def step(carry, _):
            v, s = carry
            value, g = jax.value_and_grad(loss)(v)
            updates, s = opt.update(g, s, v)
            return (clip_to(optax.apply_updates(v, updates), clip), s), value
    else:
        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(loss)

        def step(carry, _):
            v, s = carry
            value, g = value_and_grad(v, state=s)
            updates, s = opt.update(g, s, v, value=value, grad=g, value_fn=loss)
            return (optax.apply_updates(v, updates), s), value

    (image, _), losses = jax.lax.scan(step, (x0, opt.init(x0)), None, length=num_iterations)
    return StyleTransferResult(image, losses)


def load_image(path, size=None, *, dtype=np.float32) -> np.ndarray:
    """An image file (any format Pillow reads) as an (H, W, 3) float array in [0, 1] (RGB).

    size: None (as stored), an int (the smaller side resized to it, the aspect ratio kept, as
    the course's ``preprocess(..., size)``) or ``(H, W)``.  Raises ValueError naming the path
    when the file is missing or not an image, or for a bad ``size``.
    """
    from PIL import Image, UnidentifiedImageError

    fn = "load_image"
    path = os.fspath(path)
    if size is not None:
        ok = (isinstance(size, int) and not isinstance(size, bool) and size >= 1) or (
            isinstance(size, (tuple, list)) and len(size) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in size))
        if not ok:
            raise ValueError(f"{fn}: `size` must be None, a positive int or (H, W), got {size!r}")
    if not os.path.isfile(path):
        raise ValueError(f"{fn}: no image file at {path!r}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if size is not None:
                w, h = im.size
                if isinstance(size, int):
                    s = size / min(w, h)
                    new = (max(1, round(w * s)), max(1, round(h * s)))
                else:
                    new = (size[1], size[0])
                im = im.resize(new, Image.BICUBIC)
            a = np.asarray(im, np.float64) / 255.0
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"{fn}: cannot read {path!r} as an image ({type(e).__name__}: {e})") from None
    return a.astype(dtype)


__all__ = ["content_loss", "style_loss", "tv_loss", "extract_features", "StyleTransferResult", "style_transfer",
           "load_image"]
