"""PixelCNN (the generative-models lecture; van den Oord et al. 2016): masked convolutions, a
small PixelCNN for binarised images, its negative log-likelihood, autoregressive sampling.

The lecture's fully visible belief network: with the pixels in raster order (row by row, left
to right), ``p(x) = prod_i p(x_i | x_1, ..., x_{i-1})``.  A PixelCNN computes every conditional
at once with convolutions whose kernels are masked so that the output at pixel (i, j) sees
only pixels before (i, j):

- type ``"A"`` (the first layer): the kernel's centre row up to but *excluding* the centre, and
  every row above it, so the output at (i, j) never sees x[i, j] itself;
- type ``"B"`` (the layers after it): the same, *including* the centre: it may see the
  features at (i, j), which after a type-A layer only carry information from earlier pixels.

For a 5x5 kernel (1 = kept)::

    type A          type B
    1 1 1 1 1       1 1 1 1 1
    1 1 1 1 1       1 1 1 1 1
    1 1 0 0 0       1 1 1 0 0
    0 0 0 0 0       0 0 0 0 0
    0 0 0 0 0       0 0 0 0 0

Channels (the rule used here): the mask is spatial only, the same for every (input channel,
output channel) pair.  So all C channels of pixel (i, j) are predicted from the pixels strictly
before (i, j), conditionally independent of one another given them.  For the single-channel
binarised images this module is built for, that is exactly the raster-order model.  The
paper's ordering *within* a pixel (R, then G given R, then B given R and G: the output and
input channels split into three groups and the centre tap masked between groups) is not
implemented.

Known limitation: the stacked 3x3 masks of a vanilla PixelCNN have a blind spot (pixels up and
to the right of (i, j) beyond the kernel's reach are never seen); the gated PixelCNN's two
stacks fix it and are not built here.  Training is one parallel pass; sampling is sequential,
one full forward pass per pixel (H·W passes), the lecture's "generation must still proceed
sequentially".
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet._checks import check_positive_int
from jaxnet.nn.combinators import Sequential
from jaxnet.nn.layers import ReLU, _OpLayer, with_impl
from jaxnet.ops._geometry import as_pair

__all__ = ["MaskedConv2D", "causal_mask", "pixelcnn", "pixelcnn_nll", "sample"]

MASK_TYPES = ("A", "B")


def causal_mask(kernel, mask_type: str) -> np.ndarray:
    """The (KH, KW) 0/1 mask of a :class:`MaskedConv2D` (float64 NumPy): rows above the centre
    kept, the centre row kept left of the centre, the centre itself kept for type ``"B"`` only."""
    kh, kw = _kernel("causal_mask", kernel)
    _mask_type("causal_mask", mask_type)
    m = np.zeros((kh, kw))
    m[:kh // 2] = 1.0
    m[kh // 2, :kw // 2 + (mask_type == "B")] = 1.0
    return m


def _kernel(fn, kernel):
    kh, kw = as_pair(fn, "kernel", kernel)
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"{fn}: `kernel` must be odd in both axes (the mask is centred), got {kernel!r}")
    return kh, kw


def _mask_type(fn, mask_type):
    if not isinstance(mask_type, str) or mask_type not in MASK_TYPES:
        raise ValueError(f"{fn}: `mask_type` must be 'A' (excludes the centre pixel) or 'B' (includes it), "
                         f"got {mask_type!r}")


@dataclasses.dataclass(frozen=True)
class MaskedConv2D(_OpLayer):
    """A PixelCNN masked convolution: stride 1, "SAME" padding, the kernel multiplied by
    :func:`causal_mask` in ``apply`` (the masked weights get zero gradient and never act).

    (N, H, W, C) -> (N, H, W, features).  kernel: an odd int or pair.  mask_type: ``"A"`` (the
    output at (i, j) depends only on input pixels strictly before (i, j) in raster order) or
    ``"B"`` (before or at (i, j)); the same spatial mask for every channel pair (the module
    docstring's rule).  params: ``w`` (KH, KW, C, features), ``b`` (features,).
    """
    features: int
    kernel: Any = 3
    mask_type: str = "B"
    w_init: Union[str, Callable] = "he"
    bias: bool = True
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        check_positive_int("MaskedConv2D", "features", self.features)
        _kernel("MaskedConv2D", self.kernel)
        _mask_type("MaskedConv2D", self.mask_type)

    def _specs(self, shape):
        kh, kw = _kernel("MaskedConv2D", self.kernel)
        return {"w": ((kh, kw, shape[-1], self.features), "w"),
                **({"b": ((self.features,), 0.0)} if self.bias else {})}, {}

    def apply(self, params, state, x, *, train, key=None):
        w = params["w"]
        mask = jnp.asarray(causal_mask(self.kernel, self.mask_type)[:, :, None, None], w.dtype)
        return F.conv2d(x, w * mask, params.get("b"), stride=1, padding="SAME", impl=self.impl), state


def pixelcnn(features: int = 32, num_layers: int = 3, kernel: int = 7, hidden_kernel: int = 3, channels: int = 1,
             *, impl: Optional[str] = None) -> Sequential:
    """A small PixelCNN for binarised images: (N, H, W, C) in {0, 1} -> Bernoulli logits (N, H, W, C).

    ``conv_a`` MaskedConv2D(features, kernel, "A") - ``relu0``, then ``num_layers`` x
    [``conv_b{i}`` MaskedConv2D(features, hidden_kernel, "B") - ``relu{i}``], then ``logits``
    MaskedConv2D(channels, 1, "B") (a 1x1 convolution).  ``logits[n, i, j, c]`` is the logit of
    ``p(x[n, i, j, c] = 1 | pixels before (i, j))``.
    """
    for name, v in (("features", features), ("kernel", kernel), ("hidden_kernel", hidden_kernel),
                    ("channels", channels)):
        check_positive_int("pixelcnn", name, v)
    if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
        raise ValueError(f"pixelcnn: `num_layers` must be an int >= 0, got {num_layers!r}")
    layers = [("conv_a", MaskedConv2D(features, kernel, "A")), ("relu0", ReLU())]
    for i in range(1, num_layers + 1):
        layers += [(f"conv_b{i}", MaskedConv2D(features, hidden_kernel, "B")), (f"relu{i}", ReLU())]
    layers.append(("logits", MaskedConv2D(channels, 1, "B", w_init="xavier")))
    names, items = zip(*layers)
    return with_impl(Sequential(tuple(items), tuple(names)), impl)


def pixelcnn_nll(logits, x, *, impl: Optional[str] = None):
    """The PixelCNN's negative log-likelihood in nats per image: ``-log p(x) = sum over pixels
    and channels of the Bernoulli cross-entropy``, averaged over the batch
    (:func:`jaxnet.functional.sigmoid_cross_entropy`).  logits, x: (N, H, W, C), x in {0, 1}.
    :func:`jaxnet.generative.vae.bits_per_dim` with ``H * W * C`` converts it."""
    if jnp.ndim(logits) != 4:
        raise ValueError(f"pixelcnn_nll: `logits` must have rank 4 (N, H, W, C), got shape {jnp.shape(logits)}")
    return F.sigmoid_cross_entropy(logits, x, impl=impl)


@functools.partial(jax.jit, static_argnames=("model", "num_samples", "image_shape"))
def _sample(model, params, state, key, num_samples, image_shape):
    h, w, c = image_shape
    dtype = jax.tree_util.tree_leaves(params)[0].dtype

    def body(t, x):
        i, j = t // w, t % w
        logits = model.apply(params, state, x, train=False)[0]
        pixel = jax.lax.dynamic_slice(logits, (0, i, j, 0), (num_samples, 1, 1, c))
        bits = jax.random.bernoulli(jax.random.fold_in(key, t), jax.nn.sigmoid(pixel)).astype(dtype)
        return jax.lax.dynamic_update_slice(x, bits, (0, i, j, 0))

    return jax.lax.fori_loop(0, h * w, body, jnp.zeros((num_samples, h, w, c), dtype))


def sample(model, params, state, key, num_samples: int, image_shape):
    """Autoregressive sampling under ``jit``: ``num_samples`` binary images (N, H, W, C), 0./1. in
    the params' dtype.

    Starting from zeros, a ``lax.fori_loop`` over the H·W pixels in raster order runs the model
    (eval mode) on the current images and draws pixel t's channels from ``Bernoulli(sigmoid(logits
    at t))`` with the key ``jax.random.fold_in(key, t)``; later pixels, still 0, cannot affect
    pixel t's logits (the masks).  Deterministic for a key.  model: a PixelCNN (a hashable layer
    whose output is logits of its input's shape).  image_shape: (H, W, C).
    """
    n = check_positive_int("pixelcnn.sample", "num_samples", num_samples)
    shape = tuple(image_shape) if isinstance(image_shape, (tuple, list)) else None
    if not shape or len(shape) != 3 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1
                                               for d in shape):
        raise ValueError(f"pixelcnn.sample: `image_shape` must be (H, W, C) with positive ints, got {image_shape!r}")
    out = tuple(model.output_shape((n, *shape)))
    if out != (n, *shape):
        raise ValueError(f"pixelcnn.sample: the model must give logits of its input's shape {(n, *shape)}, got {out}")
    return _sample(model, params, state, key, n, shape)
