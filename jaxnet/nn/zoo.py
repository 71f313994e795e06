"""The CNN-architectures lecture's networks, built from jaxnet's audited layers.

Each constructor returns a :class:`~jaxnet.nn.Sequential` (readable names, ``impl`` on every
layer) whose parameter count equals torchvision's for the same configuration (LeNet-5: the
lecture's 61,706), pinned by ``tests/test_zoo.py``.  NHWC images; ``init(key, (N, H, W, C))``.

Layout notes (what a torchvision user should know):

* Convolutions are NHWC with HWIO weights; linear layers are (in, out).  A flattened
  (H, W, C) feature map is in (row, column, channel) order, torchvision's (C, H, W).
* Strided layers: torchvision pads symmetrically and floors the output size, dropping
  the last padded row when the windows do not fit; jaxnet's windows must fit exactly, so
  the same windows are written with that row left off: ``Conv2d(k=7, s=2, p=3)`` is
  ``padding=((3, 2), (3, 2))``, a stride-2 ``Conv2d(k=3, p=1)`` or ``MaxPool2d(3, 2, 1)`` is
  ``((1, 0), (1, 0))``, AlexNet's ``Conv2d(k=11, s=4, p=2)`` is ``((2, 1), (2, 1))`` and a
  stride-2 1x1 shortcut ``padding="VALID"``: the same outputs for even input sizes (224,
  112, ..., 32, 16).
* torchvision's ``AdaptiveAvgPool2d`` before the classifiers is the identity at 224 x 224
  input (AlexNet 6 x 6, VGG 7 x 7); jaxnet leaves it out, so these two nets expect 224 x 224
  (or any size giving those maps).  The ResNets end in a global average pool, any size works.
* Batch norm: ``gamma``/``beta`` are params, the running statistics state (torchvision's
  buffers, not counted as parameters there either).
* The CIFAR ResNets (He et al. 2016, section 4.2) use projection shortcuts (a 1x1
  convolution and batch norm, "option B") where the shape changes; the paper's CIFAR nets
  use zero-padding ("option A", 0.27 M parameters for ResNet-20), which is not an audited op.
"""
from __future__ import annotations

from typing import Optional, Sequence

from jaxnet.nn.combinators import Parallel, Residual, Sequential
from jaxnet.nn.layers import (Affine, AvgPool2D, BatchNorm, Conv2D, Dropout, Flatten, GlobalAvgPool,
                              LocalResponseNorm, MaxPool2D, ReLU, StochasticDepth, Tanh, with_impl)

__all__ = ["lenet5", "alexnet", "zfnet", "vgg", "resnet", "cifar_resnet", "googlenet", "inception", "wide_resnet", "mobilenet",
           "ZOO", "RESNET_BLOCKS",
           "VGG_CONFIGS", "GOOGLENET_INCEPTIONS"]

VGG_CONFIGS = {
    11: (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    13: (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    16: (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
    19: (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}
#: depth -> (block kind, blocks per stage), He et al. 2016 table 1
RESNET_BLOCKS = {18: ("basic", (2, 2, 2, 2)), 34: ("basic", (3, 4, 6, 3)), 50: ("bottleneck", (3, 4, 6, 3)),
                 101: ("bottleneck", (3, 4, 23, 3)), 152: ("bottleneck", (3, 8, 36, 3))}


def _seq(items, impl=None):
    names, layers = zip(*items)
    seq = Sequential(tuple(layers), tuple(names))
    return seq if impl is None else with_impl(seq, impl)


def _positive(model, name, value):
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{model}: `{name}` must be a positive int, got {value!r}")


def lenet5(num_classes: int = 10, *, impl: Optional[str] = None):
    """LeNet-5 (LeCun et al. 1998) as the lecture draws it, for 32x32x1 input:
    conv5x5(6) - tanh - avgpool2 - conv5x5(16) - tanh - avgpool2 - fc120 - tanh - fc84 - tanh - fc.
    61,706 parameters with 10 classes (C3 fully connected, not the paper's sparse table)."""
    _positive("lenet5", "num_classes", num_classes)
    return _seq([("c1", Conv2D(6, kernel=5, padding="VALID")), ("tanh1", Tanh()), ("s2", AvgPool2D(2)),
                 ("c3", Conv2D(16, kernel=5, padding="VALID")), ("tanh2", Tanh()), ("s4", AvgPool2D(2)),
                 ("flatten", Flatten()), ("f5", Affine(120)), ("tanh3", Tanh()), ("f6", Affine(84)),
                 ("tanh4", Tanh()), ("out", Affine(num_classes))], impl)


def alexnet(num_classes: int = 1000, *, dropout: float = 0.5, lrn: bool = False, impl: Optional[str] = None):
    """AlexNet as torchvision's (the one-GPU variant of Krizhevsky et al. 2012, 64/192/384/256/256
    filters, no LRN), for 224x224x3: 61,100,840 parameters with 1000 classes.

    features: conv11x11/4 (64, pad 2) - relu - maxpool3/2 - conv5x5 (192, pad 2) - relu - maxpool3/2 -
    conv3x3 384, 256, 256 (pad 1, relu each) - maxpool3/2 -> 6x6x256; classifier: dropout - fc4096 -
    relu - dropout - fc4096 - relu - fc.  ``lrn=True`` adds the paper's local response normalization
    ("NORM": size 5, k 2, alpha 1e-4 per channel summed, beta 0.75) after the first two ReLUs; it
    has no parameters."""
    _positive("alexnet", "num_classes", num_classes)
    pool = lambda: MaxPool2D(3, 2, padding="VALID")                       # noqa: E731
    norm = lambda i: [(f"norm{i}", LocalResponseNorm(5, alpha=5 * 1e-4, beta=0.75, k=2.0))] if lrn else []  # noqa
    return _seq([
        ("conv1", Conv2D(64, kernel=11, stride=4, padding=((2, 1), (2, 1)))), ("relu1", ReLU()), *norm(1),
        ("pool1", pool()),
        ("conv2", Conv2D(192, kernel=5, padding=2)), ("relu2", ReLU()), *norm(2), ("pool2", pool()),
        ("conv3", Conv2D(384, kernel=3, padding=1)), ("relu3", ReLU()),
        ("conv4", Conv2D(256, kernel=3, padding=1)), ("relu4", ReLU()),
        ("conv5", Conv2D(256, kernel=3, padding=1)), ("relu5", ReLU()), ("pool5", pool()),
        ("flatten", Flatten()), ("drop6", Dropout(dropout)), ("fc6", Affine(4096)), ("relu6", ReLU()),
        ("drop7", Dropout(dropout)), ("fc7", Affine(4096)), ("relu7", ReLU()), ("fc8", Affine(num_classes)),
    ], impl)


def zfnet(num_classes: int = 1000, *, dropout: float = 0.5, impl: Optional[str] = None):
    """ZFNet (Zeiler & Fergus 2013) as the lecture describes it, AlexNet with CONV1 7x7 stride 2
    (instead of 11x11 stride 4) and CONV3, 4, 5 of 512, 1024, 512 filters (instead of 384, 384, 256),
    on the original AlexNet's 96 / 256 filters in CONV1 / CONV2, for 224x224x3:
    110x110x96 - pool 55 - conv5x5/2 26x26x256 - pool 13 - 13x13x512, 1024, 512 - pool 6x6x512 -
    fc4096 - fc4096 - fc.  No torchvision twin: its count (tests/test_zoo.py) is this layout's."""
    _positive("zfnet", "num_classes", num_classes)
    pool = lambda: MaxPool2D(3, 2, padding=((1, 0), (1, 0)))              # noqa: E731
    return _seq([
        ("conv1", Conv2D(96, kernel=7, stride=2, padding=((1, 0), (1, 0)))), ("relu1", ReLU()), ("pool1", pool()),
        ("conv2", Conv2D(256, kernel=5, stride=2, padding=0)), ("relu2", ReLU()), ("pool2", pool()),
        ("conv3", Conv2D(512, kernel=3, padding=1)), ("relu3", ReLU()),
        ("conv4", Conv2D(1024, kernel=3, padding=1)), ("relu4", ReLU()),
        ("conv5", Conv2D(512, kernel=3, padding=1)), ("relu5", ReLU()), ("pool5", MaxPool2D(3, 2, padding="VALID")),
        ("flatten", Flatten()), ("drop6", Dropout(dropout)), ("fc6", Affine(4096)), ("relu6", ReLU()),
        ("drop7", Dropout(dropout)), ("fc7", Affine(4096)), ("relu7", ReLU()), ("fc8", Affine(num_classes)),
    ], impl)


def vgg(depth: int = 16, num_classes: int = 1000, *, batch_norm: bool = False, dropout: float = 0.5,
        impl: Optional[str] = None):
    """VGG-11/13/16/19 (Simonyan & Zisserman 2015, configurations A, B, D, E), with or without batch
    norm after each convolution, for 224x224x3.  VGG-16: 138,357,544 parameters, VGG-19: 143,667,240.

    Stages of conv3x3 (pad 1) - [bn] - relu, each ending in maxpool 2x2 -> 7x7x512; classifier
    fc4096 - relu - dropout - fc4096 - relu - dropout - fc (torchvision's order)."""
    if depth not in VGG_CONFIGS:
        raise ValueError(f"vgg: depth must be one of {sorted(VGG_CONFIGS)}, got {depth!r}")
    _positive("vgg", "num_classes", num_classes)
    items, stage, k = [], 1, 1
    for c in VGG_CONFIGS[depth]:
        if c == "M":
            items.append((f"pool{stage}", MaxPool2D(2)))
            stage, k = stage + 1, 1
            continue
        items.append((f"conv{stage}_{k}", Conv2D(c, kernel=3, padding=1)))
        if batch_norm:
            items.append((f"bn{stage}_{k}", BatchNorm()))
        items.append((f"relu{stage}_{k}", ReLU()))
        k += 1
    items += [("flatten", Flatten()), ("fc6", Affine(4096)), ("relu6", ReLU()), ("drop6", Dropout(dropout)),
              ("fc7", Affine(4096)), ("relu7", ReLU()), ("drop7", Dropout(dropout)), ("fc8", Affine(num_classes))]
    return _seq(items, impl)


def _torch_pad(kernel, stride):
    """torchvision's padding kernel // 2 with its floor, for even input sizes (module docstring)."""
    p = kernel // 2
    if stride == 1:
        return p
    if kernel == 1:
        return "VALID"
    return ((p, p - 1), (p, p - 1))


def _conv_bn(features, kernel, stride=1, padding=None):
    pad = _torch_pad(kernel, stride) if padding is None else padding
    return [("conv", Conv2D(features, kernel=kernel, stride=stride, padding=pad, bias=False)), ("bn", BatchNorm())]


def _basic_block(width, stride, project, residual=True, drop=0.0, zero_init=False):
    """Two 3x3 conv-bn (relu between); out width channels; ``drop`` > 0 ends the body in
    stochastic depth; ``zero_init``: the last BN's gamma starts at 0 (the block starts as its
    shortcut)."""
    body = [("conv1", Conv2D(width, kernel=3, stride=stride, padding=_torch_pad(3, stride), bias=False)),
            ("bn1", BatchNorm()),
            ("relu1", ReLU()), ("conv2", Conv2D(width, kernel=3, padding=1, bias=False)),
            ("bn2", BatchNorm(gamma_init=0.0 if zero_init else 1.0))]
    if drop > 0:
        body.append(("drop", StochasticDepth(drop)))
    return _block(_seq(body), width, stride, project, residual)


def _bottleneck_block(width, stride, project, residual=True, expansion=4, zero_init=False):
    """1x1 (width) - 3x3 (width, the stride: torchvision's "v1.5") - 1x1 (expansion * width)."""
    body = _seq([("conv1", Conv2D(width, kernel=1, padding=0, bias=False)), ("bn1", BatchNorm()), ("relu1", ReLU()),
                 ("conv2", Conv2D(width, kernel=3, stride=stride, padding=_torch_pad(3, stride), bias=False)),
                 ("bn2", BatchNorm()),
                 ("relu2", ReLU()),
                 ("conv3", Conv2D(expansion * width, kernel=1, padding=0, bias=False)),
                 ("bn3", BatchNorm(gamma_init=0.0 if zero_init else 1.0))])
    return _block(body, expansion * width, stride, project, residual)


def _block(body, out_channels, stride, project, residual):
    if not residual:
        return _seq([("body", body), ("relu", ReLU())])
    shortcut = _seq(_conv_bn(out_channels, 1, stride)) if project else None
    return _seq([("add", Residual(body, shortcut)), ("relu", ReLU())])


def resnet(depth: int = 50, num_classes: int = 1000, *, zero_init_residual: bool = False,
           impl: Optional[str] = None):
    """ResNet-18/34/50/101/152 (He et al. 2016) as torchvision's: conv7x7/2 (64) - bn - relu -
    maxpool3/2 - four stages (64, 128, 256, 512 wide; stride 2 from the second) of basic or
    bottleneck blocks, projection shortcuts where the shape changes - global average pool - fc.
    Parameters with 1000 classes: 11,689,512 / 21,797,672 / 25,557,032 / 44,549,160 / 60,192,808.
    ``zero_init_residual``: each block's last BN gamma starts at 0 (torchvision's option of that
    name; Goyal et al. 2017), so every block starts as its shortcut."""
    if depth not in RESNET_BLOCKS:
        raise ValueError(f"resnet: depth must be one of {sorted(RESNET_BLOCKS)}, got {depth!r}")
    _positive("resnet", "num_classes", num_classes)
    kind, counts = RESNET_BLOCKS[depth]
    expansion = 1 if kind == "basic" else 4
    make = _basic_block if kind == "basic" else _bottleneck_block
    items = [("stem", _seq(_conv_bn(64, 7, 2) + [("relu", ReLU())])),
             ("pool", MaxPool2D(3, 2, padding=((1, 0), (1, 0))))]
    channels = 64
    for s, (width, n) in enumerate(zip((64, 128, 256, 512), counts), start=1):
        blocks = []
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            project = stride != 1 or channels != width * expansion
            blocks.append((f"block{b + 1}", make(width, stride, project, zero_init=bool(zero_init_residual))))
            channels = width * expansion
        items.append((f"stage{s}", _seq(blocks)))
    items += [("avgpool", GlobalAvgPool()), ("fc", Affine(num_classes))]
    return _seq(items, impl)


def cifar_resnet(depth: int = 20, num_classes: int = 10, *, plain: bool = False, width: int = 16,
                 drop_path: float = 0.0, zero_init_residual: bool = False, impl: Optional[str] = None):
    """He et al.'s CIFAR-10 nets (section 4.2), depth = 6n + 2 (20, 32, 44, 56, 110, ...):
    conv3x3 (width) - bn - relu - three stages of n basic blocks (width, 2 width, 4 width; stride 2
    from the second) - global average pool - fc.  ``plain=True``: the same layers without the
    shortcuts (the degradation experiment's twin).  Projection shortcuts ("option B") where the
    shape changes: 272,474 parameters for ResNet-20 with 10 classes (the paper's zero-padding
    "option A": 0.27 M).  ``drop_path`` > 0: stochastic depth (Huang et al. 2016), block l of L
    dropped with probability ``drop_path * l / L`` (the linear decay rule; the last block's is
    ``drop_path``), no parameters added.  ``zero_init_residual``: each block's last BN gamma
    starts at 0 (Goyal et al. 2017; torchvision's option), so the net starts as its shortcuts."""
    _positive("cifar_resnet", "depth", depth)
    if not (isinstance(drop_path, (int, float)) and not isinstance(drop_path, bool) and 0 <= drop_path < 1):
        raise ValueError(f"cifar_resnet: `drop_path` must be a number in [0, 1), got {drop_path!r}")
    if drop_path and plain:
        raise ValueError("cifar_resnet: `drop_path` needs the shortcuts (plain=False)")
    if zero_init_residual and plain:
        raise ValueError("cifar_resnet: `zero_init_residual` needs the shortcuts (plain=False): a plain "
                         "block starting at zero passes nothing on")
    if (depth - 2) % 6:
        raise ValueError(f"cifar_resnet: depth must be 6n + 2 (20, 32, 44, 56, 110, ...), got {depth}")
    _positive("cifar_resnet", "num_classes", num_classes)
    _positive("cifar_resnet", "width", width)
    n = (depth - 2) // 6
    items = [("stem", _seq(_conv_bn(width, 3) + [("relu", ReLU())]))]
    channels, index = width, 0
    for s, w in enumerate((width, 2 * width, 4 * width), start=1):
        blocks = []
        for b in range(n):
            stride = 2 if (b == 0 and s > 1) else 1
            index += 1
            blocks.append((f"block{b + 1}", _basic_block(w, stride, stride != 1 or channels != w, residual=not plain,
                                                         drop=drop_path * index / (3 * n),
                                                         zero_init=bool(zero_init_residual))))
            channels = w
        items.append((f"stage{s}", _seq(blocks)))
    items += [("avgpool", GlobalAvgPool()), ("fc", Affine(num_classes))]
    return _seq(items, impl)


#: Szegedy et al. 2015 table 1: name -> (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj)
GOOGLENET_INCEPTIONS = {
    "3a": (64, 96, 128, 16, 32, 32), "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64), "4b": (160, 112, 224, 24, 64, 64), "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64), "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128), "5b": (384, 192, 384, 48, 128, 128),
}


def _basic_conv(features, kernel, stride=1, padding=None):
    """GoogLeNet's unit (torchvision's BasicConv2d): conv without bias - batch norm (eps 1e-3) - relu."""
    pad = _torch_pad(kernel, stride) if padding is None else padding
    return _seq([("conv", Conv2D(features, kernel=kernel, stride=stride, padding=pad, bias=False)),
                 ("bn", BatchNorm(eps=1e-3)), ("relu", ReLU())])


def inception(c1, c3r, c3, c5r, c5, pool_proj, *, five_by_five: bool = False):
    """An Inception-v1 module with dimension reductions: four branches concatenated on channels,
    1x1 | 1x1 -> 3x3 | 1x1 -> 5x5 | maxpool3/1 -> 1x1; out c1 + c3 + c5 + pool_proj channels.
    ``five_by_five=False`` uses a 3x3 kernel in the "5x5" branch, as torchvision's GoogLeNet does
    (its parameter count, 6,624,904, assumes it); True is the paper's 5x5."""
    k5 = 5 if five_by_five else 3
    return Parallel((
        _basic_conv(c1, 1),
        _seq([("reduce", _basic_conv(c3r, 1)), ("conv", _basic_conv(c3, 3))]),
        _seq([("reduce", _basic_conv(c5r, 1)), ("conv", _basic_conv(c5, k5))]),
        _seq([("pool", MaxPool2D(3, 1, padding=1)), ("proj", _basic_conv(pool_proj, 1))]),
    ), combine="concat", names=("branch1x1", "branch3x3", "branch5x5", "branch_pool"))


def googlenet(num_classes: int = 1000, *, five_by_five: bool = False, dropout: float = 0.2,
              impl: Optional[str] = None):
    """GoogLeNet (Szegedy et al. 2015) as torchvision's, without the auxiliary heads, for 224x224x3:
    6,624,904 parameters with 1000 classes.  conv7x7/2 (64) - maxpool - conv1x1 (64) - conv3x3 (192) -
    maxpool - inception 3a, 3b - maxpool - 4a..4e - maxpool - 5a, 5b - global average pool - dropout - fc.
    The stride-2 max pools are torchvision's ``ceil_mode=True`` ones, written as padding
    ``((0, 1), (0, 1))`` (for even sizes).  The paper's "naive" module and the operation counts:
    docs/zoo.md."""
    _positive("googlenet", "num_classes", num_classes)
    ceil_pool = lambda: MaxPool2D(3, 2, padding=((0, 1), (0, 1)))           # noqa: E731
    items = [("conv1", _basic_conv(64, 7, 2)), ("pool1", ceil_pool()), ("conv2", _basic_conv(64, 1)),
             ("conv3", _basic_conv(192, 3)), ("pool2", ceil_pool())]
    for name, dims in GOOGLENET_INCEPTIONS.items():
        items.append((f"inception{name}", inception(*dims, five_by_five=five_by_five)))
        if name == "3b":
            items.append(("pool3", ceil_pool()))
        if name == "4e":
            items.append(("pool4", MaxPool2D(2, 2)))
    items += [("avgpool", GlobalAvgPool()), ("dropout", Dropout(dropout)), ("fc", Affine(num_classes))]
    return _seq(items, impl)


def _preact_block(width, stride, project, dropout):
    """Wide ResNet's pre-activation block: bn - relu - conv3x3 - bn - relu - dropout - conv3x3, plus the
    input (or a 1x1 projection of the pre-activated input where the shape changes)."""
    body = [("conv1", Conv2D(width, kernel=3, stride=stride, padding=_torch_pad(3, stride), bias=False)),
            ("bn2", BatchNorm()), ("relu2", ReLU())]
    if dropout:
        body.append(("dropout", Dropout(dropout)))
    body.append(("conv2", Conv2D(width, kernel=3, padding=1, bias=False)))
    pre = [("bn1", BatchNorm()), ("relu1", ReLU())]
    if not project:
        return Residual(_seq(pre + body))
    shortcut = Conv2D(width, kernel=1, stride=stride, padding=_torch_pad(1, stride), bias=False)
    return _seq(pre + [("add", Residual(_seq(body), shortcut))])


def wide_resnet(depth: int = 28, widen: int = 10, num_classes: int = 10, *, dropout: float = 0.0,
                impl: Optional[str] = None):
    """WRN-depth-widen (Zagoruyko & Komodakis 2016) for 32x32 images: conv3x3 (16) - three groups of
    (depth - 4) / 6 pre-activation blocks, 16k / 32k / 64k wide (stride 2 from the second) - bn - relu -
    global average pool - fc.  WRN-28-10: 36,479,194 parameters with 10 classes."""
    _positive("wide_resnet", "depth", depth)
    _positive("wide_resnet", "widen", widen)
    if (depth - 4) % 6:
        raise ValueError(f"wide_resnet: depth must be 6n + 4 (16, 22, 28, 40, ...), got {depth}")
    _positive("wide_resnet", "num_classes", num_classes)
    n = (depth - 4) // 6
    items, channels = [("stem", Conv2D(16, kernel=3, padding=1, bias=False))], 16
    for g, w in enumerate((16 * widen, 32 * widen, 64 * widen), start=1):
        blocks = []
        for b in range(n):
            stride = 2 if (b == 0 and g > 1) else 1
            blocks.append((f"block{b + 1}", _preact_block(w, stride, stride != 1 or channels != w, dropout)))
            channels = w
        items.append((f"group{g}", _seq(blocks)))
    items += [("bn", BatchNorm()), ("relu", ReLU()), ("avgpool", GlobalAvgPool()), ("fc", Affine(num_classes))]
    return _seq(items, impl)


#: MobileNet v1 (Howard et al. 2017) table 1: (pointwise width, depthwise stride) per separable block
MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1),
                    (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet(num_classes: int = 1000, *, width: float = 1.0, impl: Optional[str] = None):
    """MobileNet v1 on depthwise separable convolutions, for 224x224x3: conv3x3/2 (32) - 13 blocks of
    depthwise conv3x3 (``groups`` = channels) - bn - relu - pointwise conv1x1 - bn - relu - global
    average pool - fc.  4,231,976 parameters with 1000 classes at width 1.0 (``width`` scales every
    layer's channels, the paper's alpha)."""
    _positive("mobilenet", "num_classes", num_classes)
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not width > 0:
        raise ValueError(f"mobilenet: `width` must be a positive number, got {width!r}")
    ch = lambda c: max(1, int(c * width))                                  # noqa: E731
    items = [("stem", _seq(_conv_bn(ch(32), 3, 2) + [("relu", ReLU())]))]
    channels = ch(32)
    for i, (c, stride) in enumerate(MOBILENET_BLOCKS, start=1):
        items.append((f"block{i}", _seq([
            ("dw", Conv2D(channels, kernel=3, stride=stride, padding=_torch_pad(3, stride), groups=channels,
                          bias=False)), ("dw_bn", BatchNorm()), ("dw_relu", ReLU()),
            ("pw", Conv2D(ch(c), kernel=1, padding=0, bias=False)), ("pw_bn", BatchNorm()), ("pw_relu", ReLU())])))
        channels = ch(c)
    items += [("avgpool", GlobalAvgPool()), ("fc", Affine(num_classes))]
    return _seq(items, impl)


#: name -> (constructor, the input shape it is built for)
ZOO = {
    "lenet5": (lambda **kw: lenet5(**kw), (32, 32, 1)),
    "alexnet": (lambda **kw: alexnet(**kw), (224, 224, 3)),
    "zfnet": (lambda **kw: zfnet(**kw), (224, 224, 3)),
    "googlenet": (lambda **kw: googlenet(**kw), (224, 224, 3)),
    **{f"vgg{d}": ((lambda d: lambda **kw: vgg(d, **kw))(d), (224, 224, 3)) for d in VGG_CONFIGS},
    **{f"vgg{d}_bn": ((lambda d: lambda **kw: vgg(d, batch_norm=True, **kw))(d), (224, 224, 3)) for d in VGG_CONFIGS},
    **{f"resnet{d}": ((lambda d: lambda **kw: resnet(d, **kw))(d), (224, 224, 3)) for d in RESNET_BLOCKS},
    **{f"cifar_resnet{d}": ((lambda d: lambda **kw: cifar_resnet(d, **kw))(d), (32, 32, 3))
       for d in (20, 32, 44, 56, 110)},
    **{f"cifar_plain{d}": ((lambda d: lambda **kw: cifar_resnet(d, plain=True, **kw))(d), (32, 32, 3))
       for d in (20, 32, 44, 56, 110)},
    "wrn16_4": (lambda **kw: wide_resnet(16, 4, **kw), (32, 32, 3)),
    "wrn28_10": (lambda **kw: wide_resnet(28, 10, **kw), (32, 32, 3)),
    "mobilenet": (lambda **kw: mobilenet(**kw), (224, 224, 3)),
}
