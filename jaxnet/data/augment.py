"""Jittable data augmentation on batched NHWC images, driven by an explicit jax.random key.

Each image in the batch draws its own randomness; the same key gives the same result.
Configuration arguments are static (hashable Python values) under jax.jit.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp

__all__ = ["random_crop", "random_flip", "augment"]


def _check_nhwc(fn: str, x) -> None:
    if x.ndim != 4:
        raise ValueError(f"{fn}: expected a batch of NHWC images (N, H, W, C), got shape {x.shape}")


@partial(jax.jit, static_argnames=("padding",))
def random_crop(key, x, *, padding: int = 4):
    """Zero-pad H and W by `padding`, then crop each image back to (H, W) at its own
    uniform random offset in [0, 2 * padding]. x (N, H, W, C) -> same shape and dtype."""
    _check_nhwc("random_crop", x)
    if padding < 0:
        raise ValueError(f"random_crop: padding must be >= 0, got {padding}")
    if padding == 0:
        return x
    n, h, w, c = x.shape
    padded = jnp.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(key, (n, 2), 0, 2 * padding + 1)

    def crop(img, off):
        return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

    return jax.vmap(crop)(padded, offsets)


@jax.jit
def random_flip(key, x):
    """Flip each image left-right (the W axis) with probability 0.5.
    x (N, H, W, C) -> same shape and dtype."""
    _check_nhwc("random_flip", x)
    flip = jax.random.bernoulli(key, 0.5, (x.shape[0],))
    return jnp.where(flip[:, None, None, None], x[:, :, ::-1, :], x)


@partial(jax.jit, static_argnames=("crop_padding", "flip"))
def augment(key, x, *, crop_padding: int = 4, flip: bool = True):
    """`random_crop` (skipped when crop_padding == 0) then `random_flip` (when flip)."""
    _check_nhwc("augment", x)
    crop_key, flip_key = jax.random.split(key)
    if crop_padding:
        x = random_crop(crop_key, x, padding=crop_padding)
    if flip:
        x = random_flip(flip_key, x)
    return x
