"""Which input pixels matter: saliency maps, SmoothGrad, guided backpropagation, Grad-CAM,
occlusion sensitivity, and the randomisation sanity check of saliency methods.

Every function takes a model (a hashable frozen dataclass: bind it statically under
``jax.jit``), its ``params`` and ``state``, images ``x`` (N, H, W, C) float and class
labels ``y`` (N,) int (or one int for every image), and runs the model in eval mode
(``train=False``).  The class score differentiated is the model's raw output (logit)
for class ``y[n]``, as in the course.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.nn.combinators import Sequential
from jaxnet.understand._common import (as_labels, check_choice, check_images, check_int, check_key,
                                       check_model, check_number, check_scores, scores, split_at, sub,
                                       with_guided_relu)

Array = jax.Array


def _target_score_grad(model, params, state, x, y):
    """d(Σ_n s[n, y_n]) / dx: each image's gradient of its own class score. (N, H, W, C)."""
    def total(v):
        s = scores(model, params, state, v)
        return jnp.sum(jnp.take_along_axis(s, y[:, None], axis=1))
    return jax.grad(total)(x)


def _prepare(fn, model, params, state, x, y):
    check_model(fn, model)
    check_images(fn, x)
    y = as_labels(fn, y, x.shape[0])
    check_scores(fn, jax.eval_shape(lambda v: scores(model, params, state, v), x), x.shape[0])
    return y


def input_gradient(model, params, state, x, y) -> Array:
    """The gradient of each image's class score ``s[n, y[n]]`` with respect to its pixels.

    x: (N, H, W, C) float; y: (N,) int or an int.  Returns (N, H, W, C), x's dtype.
    """
    y = _prepare("input_gradient", model, params, state, x, y)
    return _target_score_grad(model, params, state, x, y)


def saliency_map(model, params, state, x, y) -> Array:
    """Vanilla gradient saliency (Simonyan et al., 2014; the course's recipe):
    ``S[n, h, w] = max_c |∂s[n, y_n] / ∂x[n, h, w, c]|``.

    x: (N, H, W, C) float; y: (N,) int or an int.  Returns (N, H, W), x's dtype.
    """
    y = _prepare("saliency_map", model, params, state, x, y)
    return jnp.max(jnp.abs(_target_score_grad(model, params, state, x, y)), axis=-1)


def smoothgrad(model, params, state, x, y, key, *, num_samples: int = 16, noise: float = 0.15,
               reduce: str = "max_abs") -> Array:
    """SmoothGrad (Smilkov et al., 2017): the input gradient averaged over noisy copies,
    ``ḡ = (1/S) Σ_s ∇ s_y(x + ε_s)`` with ``ε_s ~ N(0, σ²)``, ``σ = noise · (max x − min x)``
    per image; then reduced over channels like :func:`saliency_map`.

    x: (N, H, W, C) float; y: (N,) int or an int; key: a PRNG key (the noise).
    num_samples: S >= 1 (the noisy copies run as one ``vmap``).  noise: >= 0 (0 gives the
    vanilla gradient).  reduce: ``"max_abs"`` (max_c |ḡ|, (N, H, W)) or ``"none"``
    (ḡ itself, (N, H, W, C)).
    """
    fn = "smoothgrad"
    y = _prepare(fn, model, params, state, x, y)
    check_key(fn, key)
    num_samples = check_int(fn, "num_samples", num_samples)
    noise = check_number(fn, "noise", noise, low=0.0)
    check_choice(fn, "reduce", reduce, ("max_abs", "none"))
    axes = tuple(range(1, x.ndim))
    sigma = noise * (jnp.max(x, axis=axes, keepdims=True) - jnp.min(x, axis=axes, keepdims=True))
    eps = jax.random.normal(key, (num_samples,) + x.shape, x.dtype) * sigma
    grads = jax.vmap(lambda e: _target_score_grad(model, params, state, x + e, y))(eps)
    g = jnp.mean(grads, axis=0)
    return jnp.max(jnp.abs(g), axis=-1) if reduce == "max_abs" else g


def guided_backprop(model, params, state, x, y) -> Array:
    """Guided backpropagation (Springenberg et al., 2015): the input gradient of the class score
    through ``with_guided_relu(model)``, where every ReLU passes only positive gradients at
    positive inputs.

    x: (N, H, W, C) float; y: (N,) int or an int.  Returns (N, H, W, C), x's dtype
    (visualise e.g. its per-image rescale to [0, 1]).  ValueError for a model without ReLU layers.
    """
    y = _prepare("guided_backprop", model, params, state, x, y)
    guided = with_guided_relu(model)
    return _target_score_grad(guided, params, state, x, y)


def grad_cam(model, params, state, x, y, layer: str, *, size: Optional[tuple] = None) -> Array:
    """Grad-CAM (Selvaraju et al., 2017) at the top-level layer ``layer`` of a ``Sequential``.

    The model is split after ``layer``: ``A = prefix(x)`` (N, h, w, K) and the scores
    ``s = suffix(A)``; then ``α[n, k] = mean_{i,j} ∂s[n, y_n] / ∂A[n, i, j, k]`` and
    ``CAM[n] = ReLU(Σ_k α[n, k] A[n, :, :, k])``.

    x: (N, H, W, C) float; y: (N,) int or an int; layer: a top-level name with layers after it
    whose output is (N, h, w, K).  size: None (the map at the layer's resolution, (N, h, w)) or
    ``(H', W')``: bilinearly resized (``jax.image.resize``), (N, H', W').
    """
    fn = "grad_cam"
    y = _prepare(fn, model, params, state, x, y)
    prefix, suffix, pn, sn = split_at(fn, model, layer)
    if suffix is None:
        raise ValueError(f"{fn}: layer {layer!r} is the model's last layer; Grad-CAM needs layers after it")
    pp, ps, sp, ss = sub(params, pn), sub(state, pn), sub(params, sn), sub(state, sn)
    feat_shape = jax.eval_shape(lambda v: prefix.apply(pp, ps, v, train=False)[0], x).shape
    if len(feat_shape) != 4:
        raise ValueError(f"{fn}: layer {layer!r} outputs shape {tuple(feat_shape)}; Grad-CAM needs feature "
                         f"maps (N, h, w, K)")
    if size is not None and not (isinstance(size, (tuple, list)) and len(size) == 2
                                 and all(isinstance(s, int) and s >= 1 for s in size)):
        raise ValueError(f"{fn}: `size` must be None or (H, W) positive ints, got {size!r}")
    a = prefix.apply(pp, ps, x, train=False)[0]

    def total(feats):
        s = suffix.apply(sp, ss, feats, train=False)[0]
        return jnp.sum(jnp.take_along_axis(s, y[:, None], axis=1))

    g = jax.grad(total)(a)
    alpha = jnp.mean(g, axis=(1, 2))                                  # (N, K)
    cam = jax.nn.relu(jnp.einsum("nhwk,nk->nhw", a, alpha))
    if size is not None:
        cam = jax.image.resize(cam, (cam.shape[0], *size), "bilinear")
    return cam


def occlusion_positions(height: int, width: int, patch: int, stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-left corners of the occluder: rows ``0, stride, ...`` up to ``height - patch`` (and the
    columns likewise).  Returns (rows (h',), cols (w',)) int arrays."""
    return np.arange(0, height - patch + 1, stride), np.arange(0, width - patch + 1, stride)


def occlusion_map(model, params, state, x, y, *, patch: int = 4, stride: int = 2, fill: float = 0.0,
                  batch_positions: Optional[int] = None) -> Array:
    """Occlusion sensitivity (Zeiler and Fergus, 2014): the probability of class ``y[n]`` when a
    ``patch`` x ``patch`` square of every channel is set to ``fill``, for every position.

    Every occluded copy is built at once and the model runs on them batched with ``jax.vmap``
    over positions (``batch_positions`` > 0: in chunks of that many positions with
    ``jax.lax.map``, to bound memory), not a Python loop.

    x: (N, H, W, C) float; y: (N,) int or an int; patch, stride: positive ints, patch <= H, W.
    fill: the occluder's value (0 is the mean of normalised images).  Returns (N, h', w') with
    ``h' = (H - patch) // stride + 1`` (and w' likewise): softmax probabilities, x's dtype.
    """
    fn = "occlusion_map"
    y = _prepare(fn, model, params, state, x, y)
    patch = check_int(fn, "patch", patch)
    stride = check_int(fn, "stride", stride)
    fill = check_number(fn, "fill", fill)
    n, h, w, c = x.shape
    if patch > h or patch > w:
        raise ValueError(f"{fn}: `patch`={patch} is larger than the images' H, W of x {tuple(x.shape)}")
    rows, cols = occlusion_positions(h, w, patch, stride)
    r = jnp.arange(h)[None, :, None]
    q = jnp.arange(w)[None, None, :]
    top = jnp.asarray(np.repeat(rows, len(cols)))[:, None, None]
    left = jnp.asarray(np.tile(cols, len(rows)))[:, None, None]
    masks = ((r >= top) & (r < top + patch) & (q >= left) & (q < left + patch))      # (P, H, W)

    def prob(m):
        xo = jnp.where(m[None, :, :, None], jnp.asarray(fill, x.dtype), x)
        p = jax.nn.softmax(scores(model, params, state, xo), axis=-1)
        return jnp.take_along_axis(p, y[:, None], axis=1)[:, 0]                       # (N,)

    if batch_positions is None:
        out = jax.vmap(prob)(masks)
    else:
        bp = check_int(fn, "batch_positions", batch_positions)
        out = jax.lax.map(prob, masks, batch_size=bp)
    return jnp.transpose(out).reshape(n, len(rows), len(cols))


# ----------------------------------------------------------------------------- the sanity check

def rank_correlation(a, b) -> float:
    """Spearman's rank correlation of two arrays of the same size (flattened): Pearson's
    correlation of their ranks, ties given their average rank (as ``scipy.stats.spearmanr``).
    NaN when either is constant."""
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f"rank_correlation: `a` and `b` must have the same size, got {a.size} and {b.size}")
    ra, rb = _rankdata(a), _rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = np.sqrt(np.sum(ra * ra) * np.sum(rb * rb))
    return float(np.sum(ra * rb) / den) if den > 0 else float("nan")


def _rankdata(a: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties averaged."""
    sorter = np.argsort(a, kind="mergesort")
    inv = np.empty_like(sorter)
    inv[sorter] = np.arange(a.size)
    s = a[sorter]
    first = np.r_[True, s[1:] != s[:-1]]
    dense = np.cumsum(first)[inv]
    bounds = np.r_[np.nonzero(first)[0], a.size]
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


class SanityCheck(NamedTuple):
    """The cascading randomisation test's result.

    layers: the randomised parameter groups, top first (paths like ``"fc"``, ``"block2/conv1"``).
    maps: (L + 1, N, ...) the original map first, then the map after randomising each
      successive group (cumulatively, from the top), NumPy float64.
    rank_correlation: (L, N) Spearman correlation of each randomised map with the original one,
      per image.
    """
    layers: tuple
    maps: np.ndarray
    rank_correlation: np.ndarray


def param_groups(model, params) -> list[str]:
    """The model's layers that own parameters, in forward order, as ``"/"``-joined paths; a
    ``Sequential`` is walked into, any other layer (``Residual``, ``Parallel``, ...) is one group."""
    out: list[str] = []

    def walk(m, p, path):
        if isinstance(m, Sequential):
            for name, layer in zip(m.names, m.layers):
                walk(layer, p.get(name, {}), f"{path}/{name}" if path else name)
        elif jax.tree_util.tree_leaves(p):
            out.append(path)
    walk(model, params, "")
    return out


def _get(tree, path):
    for part in path.split("/"):
        tree = tree[part]
    return tree


def _set(tree, path, value):
    parts = path.split("/")
    if len(parts) == 1:
        return {**tree, parts[0]: value}
    return {**tree, parts[0]: _set(tree[parts[0]], "/".join(parts[1:]), value)}


def cascading_randomization(model, params, state, x, y, key, *, method: Callable = saliency_map,
                            input_shape: Optional[tuple] = None) -> SanityCheck:
    """The model-parameter randomisation test of Adebayo et al. (2018), cascading version.

    Starting from the top (the output layer), each parameter group (:func:`param_groups`) in turn
    is replaced by a fresh draw of the model's own initializer (``model.init(key, ...)``), keeping
    the groups randomised before it; after each step the saliency map is recomputed with
    ``method(model, params, state, x, y)`` and compared with the original map by Spearman's rank
    correlation (per image).  A method that explains the model must change: correlations near 1
    all the way down mean the map does not depend on the weights.

    x: (N, H, W, C) float; y: (N,) int or an int; key: a PRNG key (the random weights).
    method: any map of this module's signature (:func:`saliency_map`, :func:`guided_backprop`,
    ``functools.partial(grad_cam, layer=...)``, ...).  input_shape: the shape to init with
    (default ``x.shape``).  The model state (e.g. batch-norm running statistics) is kept.
    """
    fn = "cascading_randomization"
    check_model(fn, model)
    check_images(fn, x)
    check_key(fn, key)
    y = as_labels(fn, y, x.shape[0])
    if not callable(method):
        raise ValueError(f"{fn}: `method` must be a saliency function (model, params, state, x, y) -> maps, "
                         f"got {method!r}")
    groups = param_groups(model, params)
    if not groups:
        raise ValueError(f"{fn}: the model has no parameters to randomise")
    fresh, _ = model.init(key, tuple(input_shape) if input_shape is not None else tuple(x.shape))
    original = np.asarray(method(model, params, state, x, y), np.float64)
    maps, corr, names = [original], [], []
    current = params
    for path in reversed(groups):
        current = _set(current, path, _get(fresh, path))
        m = np.asarray(method(model, current, state, x, y), np.float64)
        maps.append(m)
        corr.append([rank_correlation(original[i], m[i]) for i in range(x.shape[0])])
        names.append(path)
    return SanityCheck(tuple(names), np.stack(maps), np.asarray(corr))


__all__ = ["input_gradient", "saliency_map", "smoothgrad", "guided_backprop", "grad_cam", "occlusion_map",
           "occlusion_positions", "rank_correlation", "SanityCheck", "param_groups", "cascading_randomization"]
