"""A small UNet noise predictor for diffusion models (:mod:`jaxnet.generative.diffusion`).

Built from jaxnet's layers (``Conv2D``, ``GroupNorm``, ``Affine``; the ops' ``impl=`` switch
reaches every one), with a sinusoidal time embedding and an optional class embedding for
classifier-free guidance.  Images are NHWC.

Inputs are passed as one tuple, following the layer protocol::

    eps_hat, state = unet.apply(params, state, (x, t, y), train=False)    # or (x, t)
    eps_hat = unet.eps(params, x, t, y)                                   # the same, as a model_fn

* x: (N, H, W, C) float, H and W divisible by ``2 ** (len(widths) - 1)``;
* t: (N,) (or a scalar, the same for every example) step indices, int or float;
* y: (N,) int class labels in [0, num_classes), or -1 (:data:`~jaxnet.generative.diffusion.NULL_LABEL`)
  or ``num_classes`` for "no label" (the null class); ``None`` means the null class for every
  example.  Only with ``num_classes`` set.

Output: (N, H, W, C), x's shape (the predicted noise).  ``state`` is ``{}`` (no batch
statistics: group norm only), ``train`` has no effect (no dropout).

Architecture (Ho et al.'s, without attention), widths w_0 .. w_{L-1}:

* conditioning: ``e = fc2(silu(fc1(PE(t)))) (+ label_table[y])``, PE the sinusoidal
  embedding of :func:`timestep_embedding` with ``w_0`` features, fc1/fc2 to ``time_features``
  (default 4 w_0);
* ``stem``: 3x3 conv C -> w_0;
* down, level l: ``blocks`` residual blocks to w_l, the output kept as level l's skip, then
  (not at the last level) a 3x3 stride-2 conv halving H and W;
* middle: two residual blocks at w_{L-1};
* up, level l from L-1 to 0: (not at the last level) nearest-neighbour upsampling x2
  (``repeat``) and a 3x3 conv, concatenation with level l's skip, ``blocks`` residual blocks
  to w_l;
* head: group norm, SiLU, 3x3 conv w_0 -> C.

Residual block (c_in -> c): ``h = conv1(silu(gn1(x))) + affine(silu(e))[:, None, None, :]``,
``h = conv2(silu(gn2(h)))``, output ``h + skip(x)`` (skip a 1x1 conv when c_in != c, the
identity otherwise).  Group norms use ``gcd(groups, channels)`` groups.  ``silu(x) = x
sigmoid(x)``.

Sizes: ``UNet((8, 16))`` for 8x8 digits (31k parameters for one channel), ``UNet((32, 64,
128))`` for 32x32 CIFAR-10 (1.9M; ``UNet((64, 128, 256), blocks=2)``, 11M, is closer to the
paper's CIFAR model, which also has attention at 16x16).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import functional as F
from jaxnet._checks import is_int
from jaxnet.generative.diffusion import NULL_LABEL
from jaxnet.nn.init import small as init_small
from jaxnet.nn.layers import Affine, Conv2D, GroupNorm, Layer, _check_train, _float, _shape

__all__ = ["UNet", "timestep_embedding"]


def timestep_embedding(t, features: int, dtype=None):
    """The sinusoidal embedding of (possibly traced, possibly fractional) time steps t (N,) -> (N, features)::

        PE[n, 2i]   = sin(t_n * 10000^(-2i / D))
        PE[n, 2i+1] = cos(t_n * 10000^(-2i / D))

    the transformer's :func:`~jaxnet.nn.transformer.sinusoidal_positions` at rows t (for odd D
    the last column is a sine).  dtype: default JAX's default float.
    """
    dt = _float() if dtype is None else dtype
    t = jnp.asarray(t, dt)
    freq = jnp.asarray(np.power(10000.0, -np.arange(0, features, 2, dtype=np.float64) / features), dt)
    angle = t[:, None] * freq
    pe = jnp.stack([jnp.sin(angle), jnp.cos(angle)], axis=-1).reshape(t.shape[0], -1)
    return pe[:, :features]


def _silu(x, impl):
    return x * F.sigmoid(x, impl=impl)


@dataclasses.dataclass(frozen=True)
class _ResBlock:
    """The UNet's residual block (module docstring).

    ``apply(p, x (N, H, W, c_in), e (N, E)) -> (N, H, W, features)``.
    """
    c_in: int
    features: int
    groups: int
    impl: Optional[str]
    w_init: Union[str, Callable]

    def _layers(self):
        c, f = self.c_in, self.features
        out = {"norm1": GroupNorm(math.gcd(self.groups, c), impl=self.impl),
               "conv1": Conv2D(f, 3, w_init=self.w_init, impl=self.impl),
               "emb": Affine(f, w_init=self.w_init, impl=self.impl),
               "norm2": GroupNorm(math.gcd(self.groups, f), impl=self.impl),
               "conv2": Conv2D(f, 3, w_init=self.w_init, impl=self.impl)}
        if c != f:
            out["skip"] = Conv2D(f, 1, w_init=self.w_init, impl=self.impl)
        return out

    def init(self, key, hw, emb_features):
        shapes = {"norm1": (1, *hw, self.c_in), "conv1": (1, *hw, self.c_in), "emb": (1, emb_features),
                  "norm2": (1, *hw, self.features), "conv2": (1, *hw, self.features), "skip": (1, *hw, self.c_in)}
        return {name: layer.init(jax.random.fold_in(key, i), shapes[name])[0]
                for i, (name, layer) in enumerate(self._layers().items())}

    def apply(self, p, x, e):
        ly = self._layers()

        def run(name, v):
            return ly[name].apply(p[name], {}, v, train=False)[0]

        h = run("conv1", _silu(run("norm1", x), self.impl))
        h = h + run("emb", _silu(e, self.impl))[:, None, None, :]
        h = run("conv2", _silu(run("norm2", h), self.impl))
        return h + (run("skip", x) if "skip" in ly else x)


@dataclasses.dataclass(frozen=True)
class UNet(Layer):
    """A UNet noise predictor eps_theta(x, t, y) (module docstring for the inputs and the architecture).

    ``apply(params, state, (x, t) or (x, t, y), *, train, key=None) -> (eps_hat, state)``:
    x (N, H, W, C) float, t (N,) or scalar step indices, y (N,) int labels / None; eps_hat
    (N, H, W, C) in x's dtype.  ``init(key, input_shape)`` takes x's shape (N, H, W, C).
    widths: channels per resolution level (one level per entry; H and W are halved between
    levels).  blocks: residual blocks per level.  num_classes: the classes of a conditional
    model (the label table has num_classes + 1 rows, the last the null class), None for an
    unconditional one.  time_features: the conditioning width (default 4 * widths[0]).
    groups: the group norms' groups (gcd with each width).
    params: ``{"time": {"fc1", "fc2"}, ("label": {"w"}), "stem", "down": {"0": {"block0", ...,
    ("down")}, ...}, "mid": {"block0", "block1"}, "up": {"0": {("up"), "block0", ...}, ...},
    "head": {"norm", "conv"}}``.
    """
    widths: tuple = (32, 64)
    blocks: int = 1
    num_classes: Optional[int] = None
    time_features: Optional[int] = None
    groups: int = 8
    w_init: Union[str, Callable] = "he"
    impl: Optional[str] = None

    def __post_init__(self):
        super().__post_init__()
        w = self.widths
        if not isinstance(w, tuple) or not w or not all(is_int(c) and c >= 1 for c in w):
            raise ValueError(f"UNet: `widths` must be a non-empty tuple of positive ints, got {w!r}")
        for name in ("blocks", "groups") + (("num_classes",) if self.num_classes is not None else ()) + \
                (("time_features",) if self.time_features is not None else ()):
            v = getattr(self, name)
            if not is_int(v) or v < 1:
                raise ValueError(f"UNet: `{name}` must be a positive int, got {v!r}")

    # ------------------------------------------------------------------ structure
    @property
    def levels(self) -> int:
        return len(self.widths)

    @property
    def emb_features(self) -> int:
        return 4 * self.widths[0] if self.time_features is None else self.time_features

    def _block(self, c_in, c):
        return _ResBlock(c_in, c, self.groups, self.impl, self.w_init)

    def _conv(self, c, kernel=3, stride=1):
        return Conv2D(c, kernel, stride=stride, padding="SAME", w_init=self.w_init, impl=self.impl)

    def _plan(self):
        """The residual blocks: ``down`` [level] -> [(name, block)], ``up`` [(level, [(name, block)])],
        levels from L-1 down to 0."""
        w = self.widths
        down, c = [], w[0]
        for wl in w:
            blocks = []
            for b in range(self.blocks):
                blocks.append((f"block{b}", self._block(c, wl)))
                c = wl
            down.append(blocks)
        up = []
        for lvl in reversed(range(self.levels)):
            c_in = w[lvl] + (w[lvl + 1] if lvl < self.levels - 1 else w[-1])
            up.append((lvl, [(f"block{b}", self._block(c_in if b == 0 else w[lvl], w[lvl]))
                             for b in range(self.blocks)]))
        return down, up

    def _time_mlp(self):
        e = self.emb_features
        return Affine(e, w_init=self.w_init, impl=self.impl), Affine(e, w_init=self.w_init, impl=self.impl)

    def _head_norm(self):
        return GroupNorm(math.gcd(self.groups, self.widths[0]), impl=self.impl)

    def _check_shape(self, input_shape, what="input_shape"):
        shape = _shape(self, input_shape)
        if len(shape) != 4:
            raise ValueError(f"UNet: `{what}` must be (N, H, W, C), got shape {shape}")
        f = 2 ** (self.levels - 1)
        if shape[1] % f or shape[2] % f:
            raise ValueError(f"UNet: H and W of {what} {shape} must be divisible by 2^(levels - 1) = {f} "
                             f"(widths {self.widths})")
        return shape

    def output_shape(self, input_shape):
        return self._check_shape(input_shape)

    def init(self, key, input_shape):
        """Params for images of ``input_shape`` (N, H, W, C); state ``{}``."""
        _, h, wd, c = self._check_shape(input_shape)
        w, e = self.widths, self.emb_features
        count = iter(range(1 << 20))

        def k():
            return jax.random.fold_in(key, next(count))

        fc1, fc2 = self._time_mlp()
        params = {"time": {"fc1": fc1.init(k(), (1, w[0]))[0], "fc2": fc2.init(k(), (1, e))[0]}}
        if self.num_classes is not None:
            params["label"] = {"w": init_small(k(), (self.num_classes + 1, e), scale=1.0, dtype=_float())}
        params["stem"] = self._conv(w[0]).init(k(), (1, h, wd, c))[0]
        down, up = self._plan()
        params["down"], params["up"] = {}, {}
        size = (h, wd)
        for lvl, blocks in enumerate(down):
            p = {name: blk.init(k(), size, e) for name, blk in blocks}
            if lvl < self.levels - 1:
                p["down"] = self._conv(w[lvl], 3, 2).init(k(), (1, *size, w[lvl]))[0]
                size = (size[0] // 2, size[1] // 2)
            params["down"][str(lvl)] = p
        params["mid"] = {f"block{i}": self._block(w[-1], w[-1]).init(k(), size, e) for i in range(2)}
        for lvl, blocks in up:
            p = {}
            if lvl < self.levels - 1:
                size = (size[0] * 2, size[1] * 2)
                p["up"] = self._conv(w[lvl + 1]).init(k(), (1, *size, w[lvl + 1]))[0]
            p.update({name: blk.init(k(), size, e) for name, blk in blocks})
            params["up"][str(lvl)] = p
        params["head"] = {"norm": self._head_norm().init(k(), (1, *size, w[0]))[0],
                          "conv": self._conv(c).init(k(), (1, *size, w[0]))[0]}
        return params, {}

    # ------------------------------------------------------------------ forward
    def _inputs(self, inputs):
        if not isinstance(inputs, (tuple, list)) or len(inputs) not in (2, 3):
            raise ValueError(f"UNet: apply takes the tuple (x, t) or (x, t, y) as its input, got "
                             f"{type(inputs).__name__}" + (f" of length {len(inputs)}"
                                                           if isinstance(inputs, (tuple, list)) else ""))
        x, t, y = (tuple(inputs) + (None,))[:3]
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"UNet: `x` must be (N, H, W, C), got shape {tuple(np.shape(x))}")
        n = self._check_shape(x.shape, "x")[0]
        return (x, *self._check_t_y(n, t, y))

    def _check_t_y(self, n, t, y):
        t = jnp.asarray(t) if not isinstance(t, jax.core.Tracer) else t
        if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] != n):
            raise ValueError(f"UNet: `t` must be a scalar or (N,) = ({n},), got shape {tuple(t.shape)}")
        t = jnp.broadcast_to(t, (n,))
        if y is not None:
            if self.num_classes is None:
                raise ValueError("UNet: labels `y` given to an unconditional UNet (num_classes=None)")
            y = jnp.asarray(y) if not isinstance(y, jax.core.Tracer) else y
            if y.shape != (n,) or not jnp.issubdtype(y.dtype, jnp.integer):
                raise ValueError(f"UNet: `y` must be (N,) = ({n},) integer labels, got shape {tuple(y.shape)} "
                                 f"dtype {y.dtype}")
            if not isinstance(y, jax.core.Tracer) and y.size:
                v = np.asarray(y)
                if v.min() < -1 or v.max() > self.num_classes:
                    raise ValueError(f"UNet: labels `y` must be in [0, {self.num_classes}) or -1 / "
                                     f"{self.num_classes} (the null class), got values in [{v.min()}, {v.max()}]")
        return t, y

    def conditioning(self, params, t, y=None, dtype=None):
        """The vector every residual block receives: ``fc2(silu(fc1(PE(t)))) (+ label_table[y])``.

        t: (N,) step indices; y: (N,) labels (-1 or num_classes: the null class) or None (the
        null class for all, with ``num_classes`` set).  Returns (N, time_features) in ``dtype``
        (default JAX's default float).
        """
        t = jnp.asarray(t) if not isinstance(t, jax.core.Tracer) else t
        if t.ndim != 1:
            raise ValueError(f"UNet: `t` must be (N,) step indices, got shape {tuple(t.shape)}")
        t, y = self._check_t_y(t.shape[0], t, y)
        return self._conditioning(params, t, y, _float() if dtype is None else dtype)

    def _conditioning(self, params, t, y, dtype):
        fc1, fc2 = self._time_mlp()
        e = timestep_embedding(t, self.widths[0], dtype)
        e = fc2.apply(params["time"]["fc2"], {}, _silu(fc1.apply(params["time"]["fc1"], {}, e, train=False)[0],
                                                       self.impl), train=False)[0]
        if self.num_classes is not None:
            idx = jnp.full((t.shape[0],), self.num_classes, jnp.int32) if y is None else \
                jnp.where(y == NULL_LABEL, self.num_classes, y).astype(jnp.int32)
            e = e + F.word_embedding(idx, params["label"]["w"], impl=self.impl)
        return e

    def eps(self, params, x, t, y=None):
        """The predicted noise, ``apply(params, {}, (x, t, y), train=False)[0]``: a diffusion ``model_fn``."""
        return self.apply(params, {}, (x, t, y), train=False)[0]

    def apply(self, params, state, inputs, *, train, key=None):
        _check_train(self, train)
        x, t, y = self._inputs(inputs)
        w, impl = self.widths, self.impl

        def run(layer, p, v):
            return layer.apply(p, {}, v, train=False)[0]

        e = self._conditioning(params, t, y, x.dtype)
        h = run(self._conv(w[0]), params["stem"], x)
        down, up = self._plan()
        skips = []
        for lvl, blocks in enumerate(down):
            p = params["down"][str(lvl)]
            for name, blk in blocks:
                h = blk.apply(p[name], h, e)
            skips.append(h)
            if lvl < self.levels - 1:
                h = run(self._conv(w[lvl], 3, 2), p["down"], h)
        for i in range(2):
            h = self._block(w[-1], w[-1]).apply(params["mid"][f"block{i}"], h, e)
        for lvl, blocks in up:
            p = params["up"][str(lvl)]
            if lvl < self.levels - 1:
                h = run(self._conv(w[lvl + 1]), p["up"], jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2))
            h = jnp.concatenate([h, skips[lvl]], axis=-1)
            for name, blk in blocks:
                h = blk.apply(p[name], h, e)
        h = _silu(run(self._head_norm(), params["head"]["norm"], h), impl)
        return run(self._conv(x.shape[-1]), params["head"]["conv"], h), state
