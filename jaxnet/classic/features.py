"""Pre-CNN image features: HOG and HSV colour histograms, batched NHWC.

The course's assignment-1 ``features.py`` computes these one image at a time in numpy
(``hog_feature``, ``color_histogram_hsv``, ``extract_features``). Here every function
takes a batch ``(N, H, W, 3)`` (uint8 or float, any scale), is vectorised over the batch
with ``jax.numpy`` and jit-compiled; :func:`extract_features` runs them in fixed-size
batches to bound memory. Feature normalisation (:func:`fit_feature_normalizer`) takes its
statistics from the training features only.

Differences from the course's code, on purpose:

* greyscale is ``0.299 R + 0.587 G + 0.114 B`` (ITU-R 601); the course's ``rgb2gray``
  has a typo (``0.144`` for blue);
* HOG orientations: the course takes ``atan2(gy, gx)`` in degrees ``+ 90`` (the edge
  direction, perpendicular to the gradient), which lies in ``(-90, 270]``, and bins only
  ``[0, 180)``, silently dropping every gradient that points "left" (``gx < 0``, about
  half of them). We fold the angle modulo 180 (the standard unsigned HOG of Dalal and
  Triggs), so every gradient is counted. ``course_compat=True`` reproduces the course's
  dropping instead;
* HOG cell layout is ``(cell_row, cell_col, orientation)`` flattened; the course's
  ``.T`` gives ``(cell_col, cell_row, orientation)``. Same numbers, other order.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "rgb_to_gray",
    "rgb_to_hsv",
    "hog_features",
    "color_histogram_hsv",
    "extract_features",
    "FeatureNormalizer",
    "fit_feature_normalizer",
    "feature_dataset",
    "DEFAULT_FEATURES",
]

_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


def _check_images(fn: str, images, channels: int | None = 3) -> None:
    if images.ndim != 4 or (channels is not None and images.shape[-1] != channels):
        want = f"(N, H, W, {channels})" if channels is not None else "(N, H, W, C)"
        raise ValueError(f"{fn}: expected a batch of NHWC images {want}, got shape {tuple(images.shape)}")


def _as_float(images) -> jax.Array:
    images = jnp.asarray(images)
    return images.astype(jnp.float32) if not jnp.issubdtype(images.dtype, jnp.floating) else images


@jax.jit
def rgb_to_gray(images) -> jax.Array:
    """(N, H, W, 3) RGB -> (N, H, W) luminance ``0.299 R + 0.587 G + 0.114 B`` (float, same scale)."""
    _check_images("rgb_to_gray", images)
    return _as_float(images) @ jnp.asarray(_GRAY_WEIGHTS, jnp.float32)


@jax.jit
def rgb_to_hsv(images) -> jax.Array:
    """(N, H, W, 3) RGB -> (N, H, W, 3) HSV, as ``matplotlib.colors.rgb_to_hsv``.

    H and S lie in [0, 1]; V is ``max(R, G, B)`` in the input's units (so RGB in [0, 1]
    gives V in [0, 1]). Grey pixels (max == min) get hue 0 and, when black, saturation 0.
    Where several channels tie for the maximum, blue wins over green over red (matplotlib's
    order). Hue does not depend on the input's scale.
    """
    _check_images("rgb_to_hsv", images)
    x = _as_float(images)
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = jnp.max(x, axis=-1)
    delta = v - jnp.min(x, axis=-1)
    pos = delta > 0
    safe = jnp.where(pos, delta, 1.0)
    h = jnp.where(b == v, 4.0 + (r - g) / safe,
                  jnp.where(g == v, 2.0 + (b - r) / safe, (g - b) / safe))
    h = jnp.where(pos, jnp.mod(h / 6.0, 1.0), 0.0)
    s = jnp.where(v > 0, delta / jnp.where(v > 0, v, 1.0), 0.0)
    return jnp.stack([h, s, v], axis=-1)


@partial(jax.jit, static_argnames=("orientations", "cell_size", "course_compat"))
def hog_features(images, *, orientations: int = 9, cell_size: int = 8, course_compat: bool = False) -> jax.Array:
    """Histogram of oriented gradients, the course's ``hog_feature`` on a batch.

    images: (N, H, W, 3) RGB or (N, H, W, 1) grey, uint8 or float (used in its own units;
      no rescaling). RGB is converted with :func:`rgb_to_gray`.
    Gradients are forward differences ``gx[:, j] = I[:, j+1] - I[:, j]``,
    ``gy[i, :] = I[i+1, :] - I[i, :]`` (0 in the last column/row). The orientation of a
    pixel is the edge direction ``atan2(gy, gx) + 90`` degrees folded into [0, 180) (see
    the module docstring; ``course_compat=True`` drops the gradients outside [0, 180)
    instead, as the course's code does), hard-assigned to one of ``orientations`` equal
    bins. Each ``cell_size`` x ``cell_size`` cell's histogram is the MEAN gradient
    magnitude per bin over the cell's pixels (the course's ``uniform_filter`` sampled at
    cell centres); partial cells at the right/bottom border are dropped. No block
    normalisation (as in the course): standardise the features afterwards.

    A vertical edge (intensity changing along x) has gx != 0, gy = 0, orientation 90
    degrees: bin ``orientations // 2`` (bin 4 of 9); a horizontal edge falls in bin 0.

    Returns (N, (H // cell_size) * (W // cell_size) * orientations) float32: for 32x32
    images (N, 144), ordered (cell_row, cell_col, orientation).
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(f"hog_features: expected NHWC images (N, H, W, 3) or (N, H, W, 1), got shape {tuple(images.shape)}")
    if orientations < 1 or cell_size < 1:
        raise ValueError(f"hog_features: orientations and cell_size must be >= 1, got {orientations}, {cell_size}")
    n, height, width, _ = images.shape
    rows, cols = height // cell_size, width // cell_size
    if rows == 0 or cols == 0:
        raise ValueError(f"hog_features: images {height}x{width} are smaller than one {cell_size}x{cell_size} cell")
    gray = rgb_to_gray(images) if images.shape[-1] == 3 else _as_float(images)[..., 0]
    gx = jnp.zeros_like(gray).at[:, :, :-1].set(jnp.diff(gray, axis=2))
    gy = jnp.zeros_like(gray).at[:, :-1, :].set(jnp.diff(gray, axis=1))
    magnitude = jnp.sqrt(gx * gx + gy * gy)
    width_deg = 180.0 / orientations
    # The edge direction atan2(gy, gx) + 90 degrees, computed as the angle of the gradient
    # turned by +90 degrees, (-gy, gx): atan2(gx, -gy) in (-180, 180]. Vertical edges
    # (gy = 0) give +-90, the middle of a bin; horizontal ones (gx = 0) are set to 0 exactly
    # below, so no float round-off decides between the first and the last bin.
    angle = jnp.degrees(jnp.arctan2(gx, -gy))
    if course_compat:
        # The course's atan2(gy, gx + 1e-15) + 90 keeps only 0 < angle < 180, i.e. gx > 0
        # (for gx == 0 the angle rounds to exactly 0 or 180 in float64 unless |gy| < ~1e-15,
        # so horizontal edges are dropped too, as is the whole last column).
        magnitude = jnp.where(gx > 0, magnitude, 0.0)
    else:
        angle = jnp.where(angle < 0, angle + 180.0, angle)
        angle = jnp.where((angle >= 180.0) | (gx == 0), 0.0, angle)
    bins = jnp.clip(jnp.floor(angle / width_deg).astype(jnp.int32), 0, orientations - 1)
    weighted = jax.nn.one_hot(bins, orientations, dtype=magnitude.dtype) * magnitude[..., None]
    weighted = weighted[:, : rows * cell_size, : cols * cell_size]
    cells = weighted.reshape(n, rows, cell_size, cols, cell_size, orientations).mean(axis=(2, 4))
    return cells.reshape(n, rows * cols * orientations)


@partial(jax.jit, static_argnames=("nbins",))
def color_histogram_hsv(images, nbins: int = 10) -> jax.Array:
    """Normalised histogram of the HSV hue, the course's ``color_histogram_hsv`` on a batch.

    images: (N, H, W, 3) RGB, uint8 or float (hue does not depend on the scale).
    Hue in [0, 1) (:func:`rgb_to_hsv`) goes to one of ``nbins`` equal bins (the course's
    ``np.histogram`` over ``linspace(0, 255, nbins + 1)`` of ``255 * hue``, same bins);
    grey pixels have hue 0, so they fall in bin 0. Returns (N, nbins) float32, each row
    the fraction of the image's pixels in each bin (sums to 1). Pure red is bin 0.
    """
    _check_images("color_histogram_hsv", images)
    if nbins < 1:
        raise ValueError(f"color_histogram_hsv: nbins must be >= 1, got {nbins}")
    hue = rgb_to_hsv(images)[..., 0]
    bins = jnp.clip(jnp.floor(hue * nbins).astype(jnp.int32), 0, nbins - 1)
    counts = jax.nn.one_hot(bins.reshape(bins.shape[0], -1), nbins, dtype=jnp.float32).sum(axis=1)
    return counts / (images.shape[1] * images.shape[2])


DEFAULT_FEATURES: tuple[Callable, ...] = (hog_features, color_histogram_hsv)


@lru_cache(maxsize=32)
def _concat_fn(fns: tuple) -> Callable:
    """One jitted function computing and concatenating all of ``fns`` (cached per tuple)."""

    @jax.jit
    def one(batch):
        return jnp.concatenate([jnp.asarray(f(batch), jnp.float32).reshape(batch.shape[0], -1) for f in fns], axis=1)

    return one


def extract_features(
    images,
    fns: Sequence[Callable] = DEFAULT_FEATURES,
    *,
    batch_size: int = 1000,
) -> np.ndarray:
    """Apply every batched feature function in ``fns`` and concatenate (the course's
    ``extract_features``, which loops over images; here it loops over batches).

    images: (N, H, W, C) numpy or jax array (uint8 stays uint8 until inside the jit).
    fns: callables ``(B, H, W, C) -> (B, D_i)``, e.g. ``hog_features`` or
      ``functools.partial(color_histogram_hsv, nbins=25)``. The jitted concatenation is
      cached per tuple of these objects (pass the same partial objects to reuse it).
    batch_size: images per call; the last batch is zero-padded to this size (one
      compilation per function) and the padding's rows dropped.
    Returns float32 numpy (N, sum D_i); N may be 0 (then the widths come from one padded
    batch).
    """
    if not fns:
        raise ValueError("extract_features: fns must name at least one feature function")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"extract_features: batch_size must be an int >= 1, got {batch_size!r}")
    images = np.asarray(images) if not isinstance(images, jax.Array) else images
    if images.ndim != 4:
        raise ValueError(f"extract_features: expected NHWC images (N, H, W, C), got shape {tuple(images.shape)}")
    n = images.shape[0]
    size = min(batch_size, max(n, 1))

    try:
        one = _concat_fn(tuple(fns))
    except TypeError:  # an unhashable callable: compile without the cache
        one = _concat_fn.__wrapped__(tuple(fns))
    out = []
    for start in range(0, max(n, 1), size):
        batch = images[start:start + size]
        real = batch.shape[0]
        if real < size:
            pad = np.zeros((size - real,) + tuple(images.shape[1:]), dtype=images.dtype)
            batch = np.concatenate([np.asarray(batch), pad], axis=0)
        out.append(np.asarray(one(batch))[:real])
    return np.concatenate(out, axis=0)


@dataclass(frozen=True, eq=False)
class FeatureNormalizer:
    """Standardise features with training statistics: ``(f - mean) / std`` (the course's
    ``X -= mean_feat; X /= std_feat``), then optionally append a constant-1 bias column
    (the bias trick). mean, std: (D,) float32; zero stds are replaced by 1."""

    mean: np.ndarray
    std: np.ndarray
    bias: bool = False

    def apply(self, feats) -> np.ndarray:
        """(N, D) -> float32 (N, D) or (N, D + 1) with the bias column last."""
        feats = np.asarray(feats, np.float32)
        if feats.ndim != 2 or feats.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"FeatureNormalizer.apply: expected (N, {self.mean.shape[0]}) features, got {feats.shape}"
            )
        out = (feats - self.mean) / self.std
        if self.bias:
            out = np.concatenate([out, np.ones((len(out), 1), np.float32)], axis=1)
        return out.astype(np.float32)


def fit_feature_normalizer(train_feats, *, bias: bool = False) -> FeatureNormalizer:
    """A :class:`FeatureNormalizer` from (N, D) TRAINING features only (float64 statistics)."""
    train_feats = np.asarray(train_feats)
    if train_feats.ndim != 2 or len(train_feats) == 0:
        raise ValueError(f"fit_feature_normalizer: expected non-empty (N, D) features, got {train_feats.shape}")
    mean = train_feats.mean(axis=0, dtype=np.float64)
    std = train_feats.std(axis=0, dtype=np.float64)
    std = np.where(std > 0, std, 1.0)
    return FeatureNormalizer(mean.astype(np.float32), std.astype(np.float32), bool(bias))


def feature_dataset(ds, fns: Sequence[Callable] = DEFAULT_FEATURES, *, batch_size: int = 1000,
                    bias: bool = False):
    """Features of every split of a :class:`jaxnet.data.Dataset`, normalised with
    training statistics, as a new Dataset of shape (N, 1, 1, D) (so that
    :func:`jaxnet.train.fit` and the ``Flatten`` of the models take it unchanged; do not
    augment it). Returns ``(feature_ds, normalizer)``."""
    raw = {s: extract_features(getattr(ds, f"x_{s}"), fns, batch_size=batch_size) for s in ("train", "val", "test")}
    norm = fit_feature_normalizer(raw["train"], bias=bias)

    def shaped(f):
        f = norm.apply(f)
        return f.reshape(len(f), 1, 1, f.shape[1])

    out = ds.replace(x_train=shaped(raw["train"]), x_val=shaped(raw["val"]), x_test=shaped(raw["test"]),
                     name=f"{ds.name}-features")
    return out, norm

