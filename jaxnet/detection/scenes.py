"""Synthetic detection / segmentation scenes: 1-6 objects pasted on textured canvases.

Objects are the embedded handwritten digits (``jaxnet.data.load_digits``, always available) or,
when a CIFAR-10 copy is given, CIFAR-10 images cut out by a simple mask (an inscribed ellipse
intersected with the pixels that differ from the image's border colour). Each object is resized
to a random side in ``scale`` x canvas size, pasted at a random position (a placement that would
hide more than half of an earlier object, or have half of itself hidden, is redrawn), and recorded
with its class, its box and its masks.

Generated with NumPy on the host and cached in memory (``load_scenes``), not under ``jit``: the
paste needs variable-size resizing and rejection sampling of positions, which under ``jit`` would
mean fixed-size padding of every object and a ``while_loop`` per placement for no gain -- a
64x64 scene costs ~3 ms of NumPy (2,000 scenes in ~6 s on a 2-core CPU, once), and the arrays (padded to
``max_objects`` with a validity mask) then batch under ``jit`` like any other data.

Determinism: scene ``i`` of split ``s`` is drawn by ``numpy.random.default_rng((seed, s, i))``
with ``s`` = 0, 1, 2 for train, val, test, so the splits never share a seed and a scene does not
depend on how many were asked for. The object images come from disjoint pools too: the digits'
(or CIFAR-10's) own train / val / test splits.

Arrays of a ``Scenes`` (N scenes, K = ``max_objects`` slots, canvas H = W = ``size``):

- ``images``: float32 (N, H, W, 3) in [0, 1]
- ``labels``: int32 (N, K), class in [0, num_classes) or -1 in an empty slot
- ``boxes``: float32 (N, K, 4) as (x0, y0, x1, y1) in pixels, x1/y1 exclusive (a box covering
  pixel columns 3..7 is x0=3, x1=8); zeros in an empty slot. The box is the tight box of the
  object's pasted mask (before occlusion by later objects).
- ``valid``: bool (N, K), True for the slots holding an object (slots fill from 0)
- ``semantic``: int32 (N, H, W), 0 = background, class + 1 on the visible object pixels
- ``instances``: int32 (N, H, W), 0 = background, k + 1 where slot k's object is visible (later
  objects drawn over earlier ones); ``instance_masks`` expands it to bool (N, K, H, W).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

__all__ = ["Scenes", "SceneSplits", "make_scenes", "load_scenes", "instance_masks", "object_pool",
           "SPLITS", "DIGIT_CLASSES"]

SPLITS = ("train", "val", "test")
DIGIT_CLASSES = tuple(str(c) for c in range(10))
MAX_TRIES = 50          # placements tried per object before the scene keeps fewer objects
MAX_HIDDEN = 0.5        # largest fraction of an object's mask another object may cover


class Scenes(NamedTuple):
    """A batch of scenes; see the module docstring for shapes and dtypes."""

    images: np.ndarray
    labels: np.ndarray
    boxes: np.ndarray
    valid: np.ndarray
    semantic: np.ndarray
    instances: np.ndarray
    classes: tuple

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.images)

    def take(self, idx) -> "Scenes":
        """The scenes at ``idx`` (an index array or slice)."""
        return Scenes(*(a[idx] for a in self[:6]), self.classes)


class SceneSplits(NamedTuple):
    train: Scenes
    val: Scenes
    test: Scenes


class ObjectPool(NamedTuple):
    """Object images of one split: ``images`` float32 (M, h, w, 3) in [0, 1], ``masks`` bool (M, h, w),
    ``labels`` int32 (M,)."""

    images: np.ndarray
    masks: np.ndarray
    labels: np.ndarray
    classes: tuple


def _check_int(fn, name, value, low, high=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low or (
            high is not None and value > high):
        rng = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{fn}: {name} must be an integer {rng}, got {value!r}")
    return int(value)


def _ellipse(h, w, frac=0.95):
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    return ((yy - cy) / (frac * h / 2)) ** 2 + ((xx - cx) / (frac * w / 2)) ** 2 <= 1.0


def _cifar_masks(images: np.ndarray) -> np.ndarray:
    """The simple cut-out of CIFAR-10 objects: inside the inscribed ellipse, and either within the
    central half-size ellipse or further than 0.12 (RGB distance, [0, 1] pixels) from the mean
    border colour. bool (M, 32, 32)."""
    border = np.concatenate([images[:, 0], images[:, -1], images[:, :, 0], images[:, :, -1]], axis=1)
    dist = np.linalg.norm(images - border.mean(axis=1)[:, None, None, :], axis=-1)
    h, w = images.shape[1:3]
    return _ellipse(h, w) & ((dist > 0.12) | _ellipse(h, w, 0.5))


@functools.lru_cache(maxsize=2)
def _source(source: str, data_dir: str | None, seed: int):
    if source == "digits":
        from jaxnet.data import load_digits
        return load_digits(seed=seed)
    if source == "cifar10":
        if not data_dir:
            raise ValueError("object_pool: source='cifar10' needs data_dir (a CIFAR-10 copy)")
        from jaxnet.data import load_cifar10
        from jaxnet.data.splits import split_indices
        ds = load_cifar10(data_dir, val_size=0, seed=seed)
        n_val = min(1000, len(ds.y_train) // 10)          # 1,000 of the 50,000; a tenth of a small copy
        tr, va, _ = split_indices(ds.y_train, val_fraction=n_val, test_fraction=0, seed=seed)
        return ds.replace(x_train=ds.x_train[tr], y_train=ds.y_train[tr], x_val=ds.x_train[va], y_val=ds.y_train[va])
    raise ValueError(f"object_pool: source must be 'digits' or 'cifar10', got {source!r}")


@functools.lru_cache(maxsize=6)
def object_pool(source: str = "digits", data_dir: str | None = None, seed: int = 0,
                split: str = "train") -> ObjectPool:
    """The object images of one split.

    source "digits": the embedded 8x8 digits (split by ``load_digits(seed=seed)``), grey levels as
    an intensity in (0, 1] and mask = intensity > 0.25; source "cifar10": CIFAR-10 from
    ``data_dir`` (its val split: 1,000 training images held out, a tenth of a smaller copy), masked
    by ``_cifar_masks``.
    """
    if split not in SPLITS:
        raise ValueError(f"object_pool: split must be one of {SPLITS}, got {split!r}")
    ds = _source(source, data_dir, seed)
    if not len(getattr(ds, f"y_{split}")):
        raise ValueError(f"object_pool: the {source} {split} split is empty (data_dir={data_dir!r})")
    x, y = getattr(ds, f"x_{split}"), np.asarray(getattr(ds, f"y_{split}"), np.int32)
    if source == "digits":
        x = np.asarray(x, np.float32)
        masks = x[..., 0] > 0.25
        x = np.repeat(x, 3, axis=-1)
    else:
        x = np.asarray(x, np.float32) / 255.0
        masks = _cifar_masks(x)
    return ObjectPool(x, masks, y, tuple(ds.classes))


def _resize(img: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of (h, w, C) to (out_h, out_w, C) (pixel centres aligned)."""
    h, w = img.shape[:2]
    ys = np.clip((np.arange(out_h) + 0.5) * h / out_h - 0.5, 0, h - 1)
    xs = np.clip((np.arange(out_w) + 0.5) * w / out_w - 0.5, 0, w - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    wy, wx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
    top = img[y0][:, x0] * (1 - wx) + img[y0][:, x1] * wx
    bot = img[y1][:, x0] * (1 - wx) + img[y1][:, x1] * wx
    return top * (1 - wy) + bot * wy


def _texture(rng, size: int) -> np.ndarray:
    """A muted random background: three random low-frequency sinusoid gratings per channel plus noise."""
    t = np.arange(size, dtype=np.float32) / size
    base = rng.uniform(0.15, 0.45, size=3).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    for c in range(3):
        f = rng.uniform(1, 6, size=(3, 2)) * rng.choice([-1, 1], size=(3, 2))
        ph = rng.uniform(0, 2 * np.pi, size=3)
        wave = np.zeros((size, size), np.float32)
        for j in range(3):      # sin(a x + b y + p) = sin(a x) cos(b y + p) + cos(a x) sin(b y + p): outer products
            ax, by = 2 * np.pi * f[j, 0] * t, 2 * np.pi * f[j, 1] * t + ph[j]
            wave += np.outer(np.cos(by), np.sin(ax)) + np.outer(np.sin(by), np.cos(ax))
        img[..., c] = base[c] + 0.05 * wave
    img += rng.normal(0, 0.03, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 1)


def _draw_scene(rng, pool: ObjectPool, size, min_objects, max_objects, scale, source):
    image = _texture(rng, size)
    instances = np.zeros((size, size), np.int32)
    labels = np.full(max_objects, -1, np.int32)
    boxes = np.zeros((max_objects, 4), np.float32)
    n_target = int(rng.integers(min_objects, max_objects + 1))
    areas = []                                          # full mask area of each placed object
    lo, hi = max(4, int(round(scale[0] * size))), max(4, int(round(scale[1] * size)))
    k, draws = 0, 0
    while k < n_target and draws < 4 * max_objects:
        draws += 1
        placed = False
        j = int(rng.integers(len(pool.labels)))
        obj, omask = pool.images[j], pool.masks[j]
        side = int(rng.integers(lo, hi + 1))
        aspect = rng.uniform(0.8, 1.25)
        oh, ow = max(4, min(size, int(round(side * aspect)))), max(4, min(size, int(round(side / aspect))))
        big = _resize(obj, oh, ow)
        bmask = _resize(omask[..., None].astype(np.float32), oh, ow)[..., 0] > 0.5
        if not bmask.any():
            continue
        if source == "digits":                          # a bright colour times the stroke intensity
            colour = rng.uniform(0.55, 1.0, size=3).astype(np.float32)
            colour[rng.integers(3)] = rng.uniform(0.0, 0.3)
            big = np.clip(big[..., :1] * 1.15, 0, 1) * colour
        for _ in range(MAX_TRIES):
            y, x = int(rng.integers(0, size - oh + 1)), int(rng.integers(0, size - ow + 1))
            region = instances[y:y + oh, x:x + ow]
            covered = region[bmask]
            if covered.size and np.any(covered > 0):
                # how much of each earlier object this one would hide, and how much of itself overlaps
                ids, counts = np.unique(covered[covered > 0], return_counts=True)
                visible_before = np.bincount(instances.ravel(), minlength=k + 1)
                if np.any(counts > MAX_HIDDEN * visible_before[ids]) or counts.sum() > MAX_HIDDEN * bmask.sum():
                    continue
            sub = image[y:y + oh, x:x + ow]
            sub[bmask] = big[bmask]
            region[bmask] = k + 1
            ys, xs = np.nonzero(bmask)
            boxes[k] = (x + xs.min(), y + ys.min(), x + xs.max() + 1, y + ys.max() + 1)
            labels[k] = pool.labels[j]
            areas.append(bmask.sum())
            placed = True
            break
        if not placed and k >= min_objects:
            break
        k += placed
    semantic = np.where(instances > 0, labels[np.maximum(instances - 1, 0)] + 1, 0).astype(np.int32)
    return image, labels, boxes, labels >= 0, semantic, instances


def make_scenes(n: int, *, split: str = "train", seed: int = 0, size: int = 64, min_objects: int = 1,
                max_objects: int = 6, scale=(0.25, 0.5), source: str = "digits", data_dir=None) -> Scenes:
    """``n`` scenes of ``split`` (see the module docstring for the arrays and the determinism).

    size: canvas side in [32, 512] (the issue's canvases are 64 and 96); objects per scene drawn
    uniformly in [min_objects, max_objects]; an object that finds no placement in ``MAX_TRIES``
    positions ends the scene once ``min_objects`` are placed (otherwise another object is drawn, at
    most ``4 * max_objects`` times), so crowded settings may hold fewer objects than drawn.
    scale: (lo, hi) fractions of ``size`` for an object's side (aspect jittered by 0.8-1.25).
    """
    fn = "make_scenes"
    n = _check_int(fn, "n", n, 0)
    size = _check_int(fn, "size", size, 32, 512)
    max_objects = _check_int(fn, "max_objects", max_objects, 1, 32)
    min_objects = _check_int(fn, "min_objects", min_objects, 1, max_objects)
    if split not in SPLITS:
        raise ValueError(f"{fn}: split must be one of {SPLITS}, got {split!r}")
    seed = _check_int(fn, "seed", seed, 0)
    try:
        lo, hi = (float(s) for s in scale)
    except (TypeError, ValueError):
        raise ValueError(f"{fn}: scale must be a pair (lo, hi), got {scale!r}") from None
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"{fn}: scale must satisfy 0 < lo <= hi <= 1, got {scale!r}")
    pool = object_pool(source, None if data_dir is None else str(data_dir), seed, split)
    s = SPLITS.index(split)
    parts = [_draw_scene(np.random.default_rng((seed, s, i)), pool, size, min_objects, max_objects, (lo, hi), source)
             for i in range(n)]
    if n == 0:
        return Scenes(np.zeros((0, size, size, 3), np.float32), np.zeros((0, max_objects), np.int32),
                      np.zeros((0, max_objects, 4), np.float32), np.zeros((0, max_objects), bool),
                      np.zeros((0, size, size), np.int32), np.zeros((0, size, size), np.int32), pool.classes)
    return Scenes(*(np.stack(a) for a in zip(*parts)), pool.classes)


@functools.lru_cache(maxsize=8)
def _cached(sizes, seed, size, min_objects, max_objects, scale, source, data_dir):
    out = []
    for split, n in zip(SPLITS, sizes):
        sc = make_scenes(n, split=split, seed=seed, size=size, min_objects=min_objects, max_objects=max_objects,
                         scale=scale, source=source, data_dir=data_dir)
        for a in sc[:6]:
            a.setflags(write=False)                     # the cache hands out shared arrays
        out.append(sc)
    return SceneSplits(*out)


def load_scenes(n_train: int = 2000, n_val: int = 200, n_test: int = 500, *, seed: int = 0, size: int = 64,
                min_objects: int = 1, max_objects: int = 6, scale=(0.25, 0.5), source: str = "digits",
                data_dir=None) -> SceneSplits:
    """Train / val / test ``Scenes`` (``make_scenes`` per split), cached in memory per argument set.
    The arrays are read-only (shared by the cache); copy before writing."""
    try:
        scale = tuple(float(s) for s in scale)
    except (TypeError, ValueError):
        raise ValueError(f"load_scenes: scale must be a pair (lo, hi), got {scale!r}") from None
    return _cached((n_train, n_val, n_test), seed, size, min_objects, max_objects, scale, source,
                   None if data_dir is None else str(data_dir))


def instance_masks(scenes_or_instances, max_objects: int | None = None) -> np.ndarray:
    """bool (N, K, H, W): slot k's visible pixels, from a ``Scenes`` or an int (N, H, W) instance map
    (then ``max_objects`` = K is required)."""
    if isinstance(scenes_or_instances, Scenes):
        inst, k = scenes_or_instances.instances, scenes_or_instances.labels.shape[1]
    else:
        inst = np.asarray(scenes_or_instances)
        if max_objects is None:
            raise ValueError("instance_masks: an instance map needs max_objects")
        k = _check_int("instance_masks", "max_objects", max_objects, 1)
    if inst.ndim != 3:
        raise ValueError(f"instance_masks: instances must be (N, H, W), got shape {inst.shape}")
    return inst[:, None] == np.arange(1, k + 1)[None, :, None, None]
