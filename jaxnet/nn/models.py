"""The course's models as layers (each a :class:`~jaxnet.nn.Sequential` with readable names).

Every constructor takes ``num_classes`` and ``impl`` (``"auto"``, ``"manual"``
or ``None`` = follow :func:`jaxnet.use_impl`), which is set on every layer.
Input shapes are not arguments: ``init(key, (N, H, W, C))`` infers them.
Pooling in the models uses ``padding="VALID"``, so odd spatial sizes drop
their last row/column instead of raising.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

from jaxnet.nn.combinators import Sequential
from jaxnet.nn.layers import (ELU, Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool,
                              GlobalMaxPool, GroupNorm, LayerNorm, LeakyReLU, MaxPool2D, ReLU, Sigmoid, Tanh, with_impl)

__all__ = ["two_layer_net", "fully_connected_net", "three_layer_convnet", "small_convnet", "fast_convnet",
           "get_model",
           "MODELS", "ACTIVATIONS"]

ACTIVATIONS: dict[str, Callable] = {
    "relu": ReLU, "leaky_relu": LeakyReLU, "tanh": Tanh, "sigmoid": Sigmoid, "elu": ELU,
}


def _activation(name):
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def _check_int(model, name, value, minimum=1):
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{model}: `{name}` must be an int >= {minimum}, got {value!r}")


def _head(init):
    """The classifier's initializer: 0.01 * N(0, 1) ("small"), so that the untrained scores are
    near 0 and the initial loss is near ln C, the course's first sanity check; "zeros" stays
    zeros so the symmetry demonstration keeps every layer at zero."""
    return "zeros" if init == "zeros" else "small"


def _build(layers: list, impl):
    names, items = zip(*layers)
    return with_impl(Sequential(tuple(items), tuple(names)), impl)


def two_layer_net(hidden: int = 100, num_classes: int = 10, *, init="he", impl: Optional[str] = None):
    """The course's TwoLayerNet: flatten - affine - relu - affine.

    params: ``fc1`` {w, b}, ``fc2`` {w, b} (plus empty ``flatten``, ``relu1``).
    """
    _check_int("two_layer_net", "hidden", hidden)
    _check_int("two_layer_net", "num_classes", num_classes)
    return _build([("flatten", Flatten()), ("fc1", Affine(hidden, w_init=init)), ("relu1", ReLU()),
                   ("fc2", Affine(num_classes, w_init=_head(init)))], impl)


def fully_connected_net(hidden_dims: Sequence[int] = (100, 100), num_classes: int = 10, *,
                        normalization: Optional[str] = None, dropout: float = 0.0, init="he",
                        activation: str = "relu", impl: Optional[str] = None):
    """The course's FullyConnectedNet: {affine - [norm] - act - [dropout]} x (L - 1) - affine.

    normalization: None, "batchnorm" or "layernorm".  dropout: probability of
    DROPPING (0 = no dropout layers).  Names: ``flatten``, then per hidden
    layer i = 1..L-1 ``fc{i}``, ``norm{i}``, ``act{i}``, ``drop{i}``, and ``fc{L}``.
    """
    hidden_dims = tuple(hidden_dims)
    for h in hidden_dims:
        _check_int("fully_connected_net", "hidden_dims entries", h)
    _check_int("fully_connected_net", "num_classes", num_classes)
    norms = {None: None, "batchnorm": BatchNorm, "layernorm": LayerNorm}
    if normalization not in norms:
        raise ValueError(f"fully_connected_net: normalization must be None, 'batchnorm' or 'layernorm', "
                         f"got {normalization!r}")
    _activation(activation)
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"fully_connected_net: dropout (probability of dropping) must be in [0, 1), got {dropout!r}")
    layers = [("flatten", Flatten())]
    for i, h in enumerate(hidden_dims, start=1):
        layers.append((f"fc{i}", Affine(h, w_init=init)))
        if normalization is not None:
            layers.append((f"norm{i}", norms[normalization]()))
        layers.append((f"act{i}", _activation(activation)))
        if dropout > 0:
            layers.append((f"drop{i}", Dropout(float(dropout))))
    layers.append((f"fc{len(hidden_dims) + 1}", Affine(num_classes, w_init=_head(init))))
    return _build(layers, impl)


def three_layer_convnet(num_filters: int = 32, filter_size: int = 7, hidden_dim: int = 100,
                        num_classes: int = 10, *, init="he", impl: Optional[str] = None):
    """The course's ThreeLayerConvNet: conv - relu - 2x2 max pool - affine - relu - affine.

    The conv keeps the spatial size ("SAME"); names ``conv1``, ``relu1``,
    ``pool1``, ``fc2``, ``relu2``, ``fc3``.
    """
    for name, v in (("num_filters", num_filters), ("filter_size", filter_size), ("hidden_dim", hidden_dim),
                    ("num_classes", num_classes)):
        _check_int("three_layer_convnet", name, v)
    return _build([
        ("conv1", Conv2D(num_filters, kernel=filter_size, padding="SAME", w_init=init)),
        ("relu1", ReLU()),
        ("pool1", MaxPool2D(2, padding="VALID")),
        ("fc2", Affine(hidden_dim, w_init=init)),
        ("relu2", ReLU()),
        ("fc3", Affine(num_classes, w_init=_head(init))),
    ], impl)


def small_convnet(channels: Sequence[int] = (32, 64), num_classes: int = 10, *, norm: Optional[str] = "batchnorm",
                  groups: int = 8, dropout: float = 0.0, pool: str = "max", convs_per_block: int = 1,
                  head: str = "gap", init="he", impl: Optional[str] = None):
    """A small VGG-style convnet: blocks of [conv3x3 - norm - relu] x convs_per_block - 2x2 pool,
    then global average pool (``head="gap"``) or flatten (``head="flatten"``), [dropout], affine.

    One block per entry of ``channels``; each halves H and W, so an 8x8
    input takes at most 3 blocks (8 -> 4 -> 2 -> 1); the default two blocks
    suit 8x8 digits and 32x32 CIFAR alike.
    norm: "batchnorm", "groupnorm" (``groups`` must divide every channel
    count) or None.  pool: "max" or "avg".  Convs have no bias when followed
    by a norm (its beta plays that role).
    Names: ``block{b}`` = Sequential(``conv{j}``, ``norm{j}``, ``relu{j}``, ..., ``pool``),
    then ``gap``/``flatten``, ``drop``, ``fc``.
    """
    channels = tuple(channels)
    if not channels:
        raise ValueError("small_convnet: `channels` must list at least one block")
    for c in channels:
        _check_int("small_convnet", "channels entries", c)
    _check_int("small_convnet", "num_classes", num_classes)
    _check_int("small_convnet", "convs_per_block", convs_per_block)
    if norm not in (None, "batchnorm", "groupnorm"):
        raise ValueError(f"small_convnet: norm must be 'batchnorm', 'groupnorm' or None, got {norm!r}")
    if norm == "groupnorm":
        _check_int("small_convnet", "groups", groups)
        bad = [c for c in channels if c % groups]
        if bad:
            raise ValueError(f"small_convnet: groups={groups} must divide every channel count, not {bad}")
    pools = {"max": MaxPool2D, "avg": AvgPool2D}
    if pool not in pools:
        raise ValueError(f"small_convnet: pool must be 'max' or 'avg', got {pool!r}")
    if head not in ("gap", "flatten"):
        raise ValueError(f"small_convnet: head must be 'gap' or 'flatten', got {head!r}")
    if not isinstance(dropout, (int, float)) or not 0.0 <= dropout < 1.0:
        raise ValueError(f"small_convnet: dropout (probability of dropping) must be in [0, 1), got {dropout!r}")
    layers = []
    for b, c in enumerate(channels, start=1):
        block = []
        for j in range(1, convs_per_block + 1):
            block.append((f"conv{j}", Conv2D(c, kernel=3, padding="SAME", w_init=init, bias=norm is None)))
            if norm == "batchnorm":
                block.append((f"norm{j}", BatchNorm()))
            elif norm == "groupnorm":
                block.append((f"norm{j}", GroupNorm(groups)))
            block.append((f"relu{j}", ReLU()))
        block.append(("pool", pools[pool](2, padding="VALID")))
        names, items = zip(*block)
        layers.append((f"block{b}", Sequential(tuple(items), tuple(names))))
    layers.append(("gap", GlobalAvgPool()) if head == "gap" else ("flatten", Flatten()))
    if dropout > 0:
        layers.append(("drop", Dropout(float(dropout))))
    layers.append(("fc", Affine(num_classes, w_init=_head(init))))
    return _build(layers, impl)


def _norm_layer(model, norm, groups, channels):
    if norm == "batchnorm":
        return BatchNorm()
    if norm == "groupnorm":
        if channels % groups:
            raise ValueError(f"{model}: groups={groups} must divide every channel count, not {channels}")
        return GroupNorm(groups)
    raise ValueError(f"{model}: norm must be 'batchnorm' or 'groupnorm', got {norm!r}")


def fast_convnet(stem: int = 16, widths: Sequence[int] = (32, 64, 128), num_classes: int = 10, *,
                 norm: str = "batchnorm", groups: int = 8, init="he", impl: Optional[str] = None):
    """A compact VGG-style convnet for 32x32 images.

    stem: conv3x3(``stem``) - norm - relu at full resolution; then one block per
    entry of ``widths``: conv3x3(c) - 2x2 max pool - norm - relu - conv3x3(c) - norm - relu
    (pooling right after the first conv makes the second conv 4x cheaper); then a max pool over what is left of H x W (4x4 for 32x32
    inputs), flatten, affine.  Input (N, H, W, C) with H, W divisible by 2**len(widths).
    norm: "batchnorm" (spatial batch norm) or "groupnorm" (``groups`` divides every width).
    Convs have no bias (the norm's beta plays that role).  Names: ``stem`` = Sequential(conv,
    norm, relu), ``block{b}`` = Sequential(conv1, pool, norm1, relu1, conv2, norm2, relu2),
    ``pool`` (global max), ``fc``.  The defaults have about 0.29 M parameters.
    """
    widths = tuple(widths)
    if not widths:
        raise ValueError("fast_convnet: `widths` must list at least one block")
    _check_int("fast_convnet", "stem", stem)
    for c in widths:
        _check_int("fast_convnet", "widths entries", c)
    _check_int("fast_convnet", "num_classes", num_classes)
    _check_int("fast_convnet", "groups", groups)

    def seq(items):
        names, layers = zip(*items)
        return Sequential(tuple(layers), tuple(names))

    def conv(c):
        return Conv2D(c, kernel=3, padding="SAME", w_init=init, bias=False)

    layers = [("stem", seq([("conv", conv(stem)), ("norm", _norm_layer("fast_convnet", norm, groups, stem)),
                            ("relu", ReLU())]))]
    for b, c in enumerate(widths, start=1):
        layers.append((f"block{b}", seq([
            ("conv1", conv(c)), ("pool", MaxPool2D(2, padding="VALID")),
            ("norm1", _norm_layer("fast_convnet", norm, groups, c)), ("relu1", ReLU()),
            ("conv2", conv(c)), ("norm2", _norm_layer("fast_convnet", norm, groups, c)), ("relu2", ReLU()),
        ])))
    layers.append(("pool", GlobalMaxPool()))
    layers.append(("fc", Affine(num_classes, w_init=_head(init))))
    return _build(layers, impl)


def vit(num_classes: int = 10, *, patch: int = 4, depth: int = 4, features: int = 64, num_heads: int = 4,
        ff_hidden: int = 128, impl: Optional[str] = None):
    """A small vision transformer (:class:`~jaxnet.nn.transformer.VisionTransformer`, pre-norm,
    mean-pooled tokens): patch 4 (8x8 digits -> 4 tokens, 32x32 CIFAR-10 -> 64), depth 4, width 64,
    4 heads, feed-forward 128; about 0.13 M parameters.  Its attention heads and feed-forward
    units split over devices with ``jaxnet train --model-parallel``."""
    from jaxnet.nn.transformer import VisionTransformer
    return VisionTransformer(num_classes, patch=patch, depth=depth, features=features, num_heads=num_heads,
                             ff_hidden=ff_hidden, impl=impl)


MODELS: dict[str, Callable] = {
    "two_layer": two_layer_net,
    "fc": fully_connected_net,
    "three_layer_convnet": three_layer_convnet,
    "convnet": small_convnet,
    "fast_convnet": fast_convnet,
    "vit": vit,
}


def get_model(name: str, **kwargs):
    """Build the model registered as ``name`` (see :data:`MODELS`) with ``kwargs``."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {sorted(MODELS)}")
    return MODELS[name](**kwargs)
