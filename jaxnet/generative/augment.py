"""SimCLR's data augmentation (Chen et al. 2020), jittable, on a PRNG key: random resized crop,
horizontal flip, colour jitter applied with a probability, random grayscale; two views per image.

Images are float NHWC in [0, 1] (C = 1 or 3 for the colour operations; crop and flip take
any C).  Each per-image function takes ``(key, image (H, W, C))`` and returns an image of the same
shape and dtype, clipped to [0, 1]; :func:`simclr_augment` chains them per image and vmaps over
a batch, :func:`two_views` makes the two augmented batches of the SimCLR loss
(``nt_xent_loss(concat([f(v1), f(v2)]))``).  Hyperparameters are Python numbers (static under
``jit``), checked before anything is traced.

Randomness: every random choice is a U[0, 1) number, and an operation draws all of its numbers
in one ``jax.random.uniform(key, (k,))`` (a probability p is ``u < p``; the random order of the
colour operations is the argsort of four of them); a batch draws one (N, 15) array, image n
using row n.  One random-bits op per call instead of one per choice: each costs compile time
under jit and vmap (a split key per choice made the pipeline's program 3x slower to compile).

Defaults are SimCLR's CIFAR-10 settings: crop scale (0.08, 1), aspect ratio (3/4, 4/3), flip
0.5, colour jitter of strength s = 0.5 (brightness, contrast, saturation 0.8 s = 0.4, hue
0.2 s = 0.1) applied with probability 0.8, grayscale with probability 0.2, no blur (SimCLR
blurs only on ImageNet).

Differences from torchvision's transforms, which SimCLR used:

- the crop box is continuous: area fraction ``s ~ U(scale)``, aspect ``r = exp(U(log ratio))``,
  box ``w = sqrt(H W s r)``, ``h = sqrt(H W s / r)`` clipped to [1, W] x [1, H] (torchvision
  re-draws up to 10 times, then falls back to a centre crop), and a sub-pixel offset uniform in
  [0, W - w] x [0, H - h]; the box is resized back to (H, W) bilinearly with half-pixel centres
  (output pixel i samples ``y0 + (i + 1/2) h / H - 1/2``), without antialiasing;
- the hue shift rotates the chroma plane of YIQ by ``2 pi U(-hue, hue)`` (torchvision rotates
  the H of HSV); brightness, contrast and saturation follow torchvision (blend with black, the
  image's mean gray level, the per-pixel gray), each clipped to [0, 1], in a random order per image.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number

__all__ = ["random_resized_crop", "random_flip", "color_jitter", "random_grayscale", "simclr_augment",
           "two_views", "SIMCLR_DEFAULTS"]

SIMCLR_DEFAULTS = {"scale": (0.08, 1.0), "ratio": (3 / 4, 4 / 3), "flip_p": 0.5, "brightness": 0.4,
                   "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "jitter_p": 0.8, "grayscale_p": 0.2}

_LUMA = np.array([0.299, 0.587, 0.114])            # ITU-R 601-2, torchvision's rgb_to_grayscale
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114],
                        [0.595716, -0.274453, -0.321263],
                        [0.211456, -0.522591, 0.311135]])
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ)

CROP_DRAWS = 4          # area fraction, log aspect ratio, y offset, x offset
JITTER_DRAWS = 9        # apply?, brightness, contrast, saturation, hue, 4 for the order
PIPELINE_DRAWS = CROP_DRAWS + 1 + JITTER_DRAWS + 1      # + flip?, grayscale?


# ----------------------------------------------------------------------------- checks

def _check_image(fn, image, rank=3, colour=False):
    what = "(H, W, C)" if rank == 3 else "(N, H, W, C)"
    if jnp.ndim(image) != rank:
        raise ValueError(f"{fn}: `{'image' if rank == 3 else 'images'}` must have rank {rank} {what}, "
                         f"got shape {tuple(jnp.shape(image))}")
    if not jnp.issubdtype(jnp.result_type(image), jnp.floating):
        raise ValueError(f"{fn}: images must be floats in [0, 1], got dtype {jnp.result_type(image)}")
    if colour and image.shape[-1] not in (1, 3):
        raise ValueError(f"{fn}: images must have 1 or 3 channels (gray or RGB), got shape {tuple(image.shape)}")


def _check_range(fn, name, value, *, high=None):
    ok = isinstance(value, (tuple, list)) and len(value) == 2
    if ok:
        try:
            lo, hi = (check_number(fn, name, v, low=0.0, low_open=True, high=high) for v in value)
        except ValueError:
            ok = False
        else:
            ok = lo <= hi
    if not ok:
        bound = f"0 < lo <= hi <= {high:g}" if high is not None else "0 < lo <= hi"
        raise ValueError(f"{fn}: `{name}` must be a pair (lo, hi) of numbers with {bound}, got {value!r}")
    return (float(value[0]), float(value[1]))


def _prob(fn, name, p):
    return check_number(fn, name, p, low=0.0, high=1.0)


def _strength(fn, name, v):
    return check_number(fn, name, v, low=0.0)


def _hue(fn, v):
    return check_number(fn, "hue", v, low=0.0, high=0.5)


# ----------------------------------------------------------------------------- the operations

def _bilinear_resize_box(image, y0, x0, h, w):
    """The box [y0, y0 + h) x [x0, x0 + w) of image (H, W, C) resized to (H, W), bilinear, half-pixel centres."""
    hh, ww = image.shape[0], image.shape[1]
    dt = image.dtype

    def axis(start, size, n):
        pos = start + (jnp.arange(n, dtype=dt) + 0.5) * (size / n) - 0.5
        pos = jnp.clip(pos, 0, n - 1)
        lo = jnp.floor(pos)
        frac = (pos - lo).astype(dt)
        lo = lo.astype(jnp.int32)
        return lo, jnp.minimum(lo + 1, n - 1), frac

    ylo, yhi, fy = axis(y0, h, hh)
    xlo, xhi, fx = axis(x0, w, ww)
    rows = image[ylo] * (1 - fy)[:, None, None] + image[yhi] * fy[:, None, None]
    return rows[:, xlo] * (1 - fx)[None, :, None] + rows[:, xhi] * fx[None, :, None]


def random_resized_crop(key, image, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
    """A random box of area fraction ``U(scale)`` and aspect ratio (width / height)
    ``exp(U(log ratio))``, resized back to the image's (H, W) bilinearly (the module docstring
    has the geometry).  image: (H, W, C) float in [0, 1].  scale: (lo, hi) with 0 < lo <= hi <= 1.
    ratio: (lo, hi) with 0 < lo <= hi.  ``scale=(1, 1), ratio=(1, 1)`` on a square image is the
    identity."""
    _check_image("random_resized_crop", image)
    scale = _check_range("random_resized_crop", "scale", scale, high=1.0)
    ratio = _check_range("random_resized_crop", "ratio", ratio)
    return _crop(key, image, scale, ratio)


def _uniforms(key, n, dt):
    """One draw of n U[0, 1) numbers: every random choice of an operation comes from it (one
    random-bits op per call, not one per choice: each costs compile time under jit and vmap)."""
    return jax.random.uniform(key, (n,), dt)


def _between(u, lo, hi):
    return lo + (hi - lo) * u


def _crop(key, image, scale, ratio):
    return _crop_u(_uniforms(key, CROP_DRAWS, image.dtype), image, scale, ratio)


def _crop_u(u, image, scale, ratio):
    hh, ww = image.shape[0], image.shape[1]
    dt = image.dtype
    s = _between(u[0], scale[0], scale[1])
    r = jnp.exp(_between(u[1], math.log(ratio[0]), math.log(ratio[1])))
    w = jnp.clip(jnp.sqrt(hh * ww * s * r), 1, ww)
    h = jnp.clip(jnp.sqrt(hh * ww * s / r), 1, hh)
    y0 = u[2] * (hh - h)
    x0 = u[3] * (ww - w)
    return jnp.clip(_bilinear_resize_box(image, y0, x0, h, w), 0, 1).astype(image.dtype)


def random_flip(key, image, *, p=0.5):
    """Flip left-right (the W axis) with probability p.  image: (H, W, C).  p in [0, 1]."""
    _check_image("random_flip", image)
    p = _prob("random_flip", "p", p)
    return _flip(key, image, p)


def _flip(key, image, p):
    return _flip_u(_uniforms(key, 1, image.dtype), image, p)


def _flip_u(u, image, p):
    return jnp.where(u[0] < p, image[:, ::-1], image)


def _gray(image):
    """(H, W, 1): the luma 0.299 R + 0.587 G + 0.114 B (the image itself when C = 1)."""
    if image.shape[-1] == 1:
        return image
    return jnp.tensordot(image, jnp.asarray(_LUMA, image.dtype), axes=([-1], [0]))[..., None]


def _factor(u, strength):
    return _between(u, max(0.0, 1.0 - strength), 1.0 + strength)


def color_jitter(key, image, *, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, p=0.8):
    """With probability p, torchvision's ColorJitter in a random order per image:

    - brightness: ``x * b``, b ~ U[max(0, 1 - brightness), 1 + brightness];
    - contrast: ``c x + (1 - c) mean(gray(x))``, c ~ U[max(0, 1 - contrast), 1 + contrast];
    - saturation: ``s x + (1 - s) gray(x)`` per pixel, s ~ U[max(0, 1 - saturation), 1 + saturation];
    - hue: the (I, Q) chroma of YIQ rotated by ``2 pi h``, h ~ U[-hue, hue] (hue in [0, 0.5]);

    each followed by a clip to [0, 1].  gray = 0.299 R + 0.587 G + 0.114 B.  Saturation and hue
    leave a 1-channel image unchanged; a strength of 0 leaves the image exactly unchanged.
    image: (H, W, C) float in [0, 1], C = 1 or 3.
    """
    _check_image("color_jitter", image, colour=True)
    cfg = (_strength("color_jitter", "brightness", brightness), _strength("color_jitter", "contrast", contrast),
           _strength("color_jitter", "saturation", saturation), _hue("color_jitter", hue),
           _prob("color_jitter", "p", p))
    return _jitter(key, image, *cfg)


def _hue_matrix(theta, dt):
    """RGB -> RGB: YIQ's chroma plane rotated by theta, ``P0 + cos(theta) P1 + sin(theta) P2``."""
    to, back = _RGB_TO_YIQ, _YIQ_TO_RGB
    p0 = back @ np.diag([1.0, 0.0, 0.0]) @ to
    p1 = back @ np.diag([0.0, 1.0, 1.0]) @ to
    p2 = back @ np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) @ to
    return (jnp.asarray(p0, dt) + jnp.cos(theta) * jnp.asarray(p1, dt) + jnp.sin(theta) * jnp.asarray(p2, dt))


def _jitter(key, image, brightness, contrast, saturation, hue, p):
    return _jitter_u(_uniforms(key, JITTER_DRAWS, image.dtype), image, brightness, contrast, saturation, hue, p)


def _jitter_u(u, image, brightness, contrast, saturation, hue, p):
    """Every operation is ``x -> clip(M x + beta mean(gray(x)), 0, 1)`` with M (C, C) acting on
    each pixel's channels: brightness M = b I; contrast M = c I, beta = 1 - c; saturation
    M = s I + (1 - s) 1 luma^T; hue the YIQ rotation.  The four (M, beta) are stacked and applied
    in a random order (one gather per position, no branches under vmap)."""
    dt = image.dtype
    c = image.shape[-1]
    b, con, s = _factor(u[1], brightness), _factor(u[2], contrast), _factor(u[3], saturation)
    eye = jnp.eye(c, dtype=dt)
    zero = jnp.zeros((), dt)
    if c == 3:
        gray_rows = jnp.broadcast_to(jnp.asarray(_LUMA, dt), (3, 3))         # (gray x) in every channel
        sat = s * eye + (1 - s) * gray_rows
        hue_m = _hue_matrix(2 * math.pi * _between(u[4], -hue, hue), dt) if hue > 0 else eye
    else:
        sat = hue_m = eye
    mats = jnp.stack([b * eye, con * eye, sat, hue_m])                   # (4, C, C)
    betas = jnp.stack([zero, 1 - con, zero, zero])                       # (4,)
    # a uniform random order: operation k goes to position rank(u_k) among the four u's
    keys = u[5:9]
    rank = jnp.sum(keys[None, :] < keys[:, None], axis=1)                # (4,), a permutation of 0..3
    out = image
    for t in range(4):
        pick = (rank == t).astype(dt)                                     # one-hot over the operations
        m = jnp.sum(pick[:, None, None] * mats, axis=0)
        beta = jnp.sum(pick * betas)
        # M x per pixel as a broadcast sum (one fused loop; a dot is a kernel of its own on CPU)
        mixed = jnp.sum(out[..., None, :] * m, axis=-1)
        out = jnp.clip(mixed + beta * jnp.mean(_gray(out)), 0, 1)
    return jnp.where(u[0] < p, out, image).astype(dt)


def random_grayscale(key, image, *, p=0.2):
    """With probability p, every channel replaced by the luma 0.299 R + 0.587 G + 0.114 B
    (torchvision's RandomGrayscale; the shape is kept).  image: (H, W, C), C = 1 or 3."""
    _check_image("random_grayscale", image, colour=True)
    return _grayscale(key, image, _prob("random_grayscale", "p", p))


def _grayscale(key, image, p):
    return _grayscale_u(_uniforms(key, 1, image.dtype), image, p)


def _grayscale_u(u, image, p):
    gray = jnp.broadcast_to(_gray(image), image.shape)
    return jnp.where(u[0] < p, gray, image).astype(image.dtype)


# ----------------------------------------------------------------------------- the pipeline

def _config(fn, scale, ratio, flip_p, brightness, contrast, saturation, hue, jitter_p, grayscale_p):
    return (_check_range(fn, "scale", scale, high=1.0), _check_range(fn, "ratio", ratio), _prob(fn, "flip_p", flip_p),
            _strength(fn, "brightness", brightness), _strength(fn, "contrast", contrast),
            _strength(fn, "saturation", saturation), _hue(fn, hue), _prob(fn, "jitter_p", jitter_p),
            _prob(fn, "grayscale_p", grayscale_p))


def _one(u, image, cfg):
    scale, ratio, flip_p, brightness, contrast, saturation, hue, jitter_p, grayscale_p = cfg
    c, f, j = CROP_DRAWS, CROP_DRAWS + 1, CROP_DRAWS + 1 + JITTER_DRAWS
    x = _crop_u(u[:c], image, scale, ratio)
    x = _flip_u(u[c:f], x, flip_p)
    x = _jitter_u(u[f:j], x, brightness, contrast, saturation, hue, jitter_p)
    return _grayscale_u(u[j:], x, grayscale_p)


@functools.partial(jax.jit, static_argnames=("cfg",))
def _batch(key, images, cfg):
    u = jax.random.uniform(key, (images.shape[0], PIPELINE_DRAWS), images.dtype)
    return jax.vmap(lambda row, x: _one(row, x, cfg))(u, images)


def simclr_augment(key, images, *, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, brightness=0.4,
                   contrast=0.4, saturation=0.4, hue=0.1, jitter_p=0.8, grayscale_p=0.2):
    """SimCLR's augmentation of a batch, jitted: per image (row n of ``jax.random.uniform(key,
    (N, 15))``: 4 numbers for the crop, 1 the flip, 9 the jitter, 1 the grayscale) :func:`random_resized_crop` ->
    :func:`random_flip` (flip_p) -> :func:`color_jitter` (applied with probability jitter_p) ->
    :func:`random_grayscale` (grayscale_p).  images: (N, H, W, C) float in [0, 1], C = 1 or 3.
    Returns the same shape and dtype, in [0, 1]; the same key gives the same result."""
    _check_image("simclr_augment", images, rank=4, colour=True)
    cfg = _config("simclr_augment", scale, ratio, flip_p, brightness, contrast, saturation, hue, jitter_p,
                  grayscale_p)
    return _batch(key, images, cfg)


def two_views(key, images, **kwargs):
    """Two independently augmented copies of a batch, ``(simclr_augment(k1, images),
    simclr_augment(k2, images))`` with ``k1, k2 = jax.random.split(key)``: the positive pairs
    of SimCLR (row n of each view comes from image n).  images: (N, H, W, C) float in [0, 1];
    keyword arguments as :func:`simclr_augment`'s.  Returns (view1, view2), each images' shape and dtype."""
    _check_image("two_views", images, rank=4, colour=True)
    unknown = sorted(set(kwargs) - set(SIMCLR_DEFAULTS))
    if unknown:
        raise ValueError(f"two_views: unknown argument(s) {unknown}; choose from {sorted(SIMCLR_DEFAULTS)}")
    cfg = _config("two_views", **{**SIMCLR_DEFAULTS, **kwargs})
    k1, k2 = jax.random.split(key)
    return _batch(k1, images, cfg), _batch(k2, images, cfg)
