"""NumPy oracles: an independent float64 forward per registered op, from the course's formulas.

The gradient audit compares the manual forward with the reference forward,
often the same expression: a formula both paths share (a biased variance
where the course asks for it, padding on the wrong side, a momentum the other
way round) passes it.  :data:`ORACLES` holds a plain-NumPy forward per op,
written out with loops and ``einsum`` (convolution and pooling loop over output
positions), and :data:`ORACLE_CASES` small fixed inputs for each: two or more
per op, covering its options (stride, padding, groups, dilation; train and
eval for the norms, whose three outputs, running statistics included, are all
compared).  :func:`check_oracles` runs both paths on them in float64 and
requires each output within :data:`ORACLE_TOL` of the oracle's, relative to
the tensor's scale (:func:`~jaxnet.gradcheck.report.norm_rel_error`): two
float64 evaluations of the same formula in a different order differ by a few
ulps of the scale (1e-16 each); a wrong formula is off by a large fraction of it.

Dropout's oracle applies ``jax.random.bernoulli(key, 1 - rate, x.shape)``, the
mask the op documents for its key (NumPy cannot reproduce JAX's generator);
``tests/test_oracle.py`` checks the mask's statistics separately.
"""
from __future__ import annotations

import dataclasses
import math
import time
import zlib
from typing import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import registry
from jaxnet.gradcheck.report import format_table, norm_rel_error

ORACLE_TOL = 1e-12


# ----------------------------------------------------------------------------------------- helpers

def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _pads(padding, in_hw, eff, stride):
    """((top, bottom), (left, right)) from the documented padding forms; SAME as TensorFlow."""
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        pads = []
        for n, k, s in zip(in_hw, eff, stride):
            out = -(-n // s)
            total = max((out - 1) * s + k - n, 0)
            pads.append((total // 2, total - total // 2))
        return tuple(pads)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    a, b = padding
    if isinstance(a, int):
        return ((a, a), (b, b))
    return (tuple(a), tuple(b))


def _pad_hw(x, pads, value=0.0):
    return np.pad(x, ((0, 0), pads[0], pads[1], (0, 0)), constant_values=value)


# ----------------------------------------------------------------------------------------- oracles

def affine(x, w, b=None):
    y = x.reshape(x.shape[0], -1) @ w
    return y if b is None else y + b


def relu(x):
    return np.maximum(x, 0.0)


def leaky_relu(x, *, slope=0.01):
    return np.where(x > 0, x, slope * x)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def tanh(x):
    return np.tanh(x)


def elu(x, *, alpha=1.0):
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def prelu(x, alpha):
    return np.where(x > 0, x, alpha * x)


def maxout(x, *, pieces=2):
    d = x.shape[-1] // pieces
    y = np.empty(x.shape[:-1] + (d,))
    for j in range(d):
        y[..., j] = np.max(x[..., j * pieces:(j + 1) * pieces], axis=-1)
    return y


def softplus(x):
    return np.log1p(np.exp(x))


_erf = np.vectorize(math.erf, otypes=[np.float64])


def gelu(x, *, approximate=False):
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def softmax_cross_entropy(scores, labels):
    losses = []
    for s, y in zip(scores, labels):
        s = s - s.max()
        losses.append(-s[y] + np.log(np.sum(np.exp(s))))
    return np.mean(losses)


def svm_hinge(scores, labels, *, margin=1.0):
    total = 0.0
    for s, y in zip(scores, labels):
        for j in range(len(s)):
            if j != y:
                total += max(0.0, s[j] - s[y] + margin)
    return total / len(scores)


def sigmoid_cross_entropy(logits, targets):
    p = sigmoid(logits)
    return np.sum(-(targets * np.log(p) + (1 - targets) * np.log(1 - p))) / logits.shape[0]


def l2_loss(pred, target):
    return np.sum((pred - target) ** 2) / pred.shape[0]


def l1_loss(pred, target):
    return np.sum(np.abs(pred - target)) / pred.shape[0]


def l2_penalty(w):
    return np.sum(w ** 2)


def l1_penalty(w):
    return np.sum(np.abs(w))


def conv2d(x, w, b=None, *, stride=1, padding=0, dilation=1, groups=1):
    n, h, wd, c = x.shape
    kh, kw, cg, o = w.shape
    (sh, sw), (dh, dw) = _pair(stride), _pair(dilation)
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    pads = _pads(padding, (h, wd), (eh, ew), (sh, sw))
    xp = _pad_hw(x, pads)
    ho, wo = (xp.shape[1] - eh) // sh + 1, (xp.shape[2] - ew) // sw + 1
    og = o // groups
    y = np.zeros((n, ho, wo, o))
    for i in range(ho):
        for j in range(wo):
            field = xp[:, i * sh:i * sh + eh:dh, j * sw:j * sw + ew:dw, :]       # (N, KH, KW, C)
            for g in range(groups):
                y[:, i, j, g * og:(g + 1) * og] = np.einsum(
                    "nabc,abco->no", field[..., g * cg:(g + 1) * cg], w[..., g * og:(g + 1) * og])
    return y if b is None else y + b


def conv2d_transpose(x, w, b=None, *, stride=1, padding=0):
    n, h, wd, c = x.shape
    kh, kw, _, o = w.shape
    sh, sw = _pair(stride)
    full = np.zeros((n, (h - 1) * sh + kh, (wd - 1) * sw + kw, o))
    for i in range(h):
        for j in range(wd):       # every input pixel paints the filter, weighted by its value
            full[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :] += np.einsum("nc,abco->nabo", x[:, i, j, :], w)
    p = padding
    y = full[:, p:full.shape[1] - p, p:full.shape[2] - p, :]
    return y if b is None else y + b


def _pool(x, window, stride, padding, fill, reduce):
    n, h, wd, c = x.shape
    kh, kw = _pair(window)
    sh, sw = _pair(window if stride is None else stride)
    xp = _pad_hw(x, _pads(padding, (h, wd), (kh, kw), (sh, sw)), fill)
    ho, wo = (xp.shape[1] - kh) // sh + 1, (xp.shape[2] - kw) // sw + 1
    y = np.empty((n, ho, wo, c))
    for i in range(ho):
        for j in range(wo):
            y[:, i, j, :] = reduce(xp[:, i * sh:i * sh + kh, j * sw:j * sw + kw, :])
    return y


def max_pool2d(x, *, window=2, stride=None, padding=0):
    return _pool(x, window, stride, padding, -np.inf, lambda f: f.max(axis=(1, 2)))


def avg_pool2d(x, *, window=2, stride=None, padding=0):
    kh, kw = _pair(window)
    return _pool(x, window, stride, padding, 0.0, lambda f: f.sum(axis=(1, 2)) / (kh * kw))


def global_avg_pool(x):
    return x.mean(axis=(1, 2))


def batch_norm(x, gamma, beta, running_mean, running_var, *, train, momentum=0.9, eps=1e-5):
    if not train:
        return (gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta, running_mean, running_var)
    flat = x.reshape(-1, x.shape[-1])
    mu = flat.mean(axis=0)
    var = ((flat - mu) ** 2).mean(axis=0)            # biased, as in the course
    y = gamma * (x - mu) / np.sqrt(var + eps) + beta
    return (y, momentum * running_mean + (1 - momentum) * mu, momentum * running_var + (1 - momentum) * var)


spatial_batch_norm = batch_norm


def layer_norm(x, gamma, beta, *, eps=1e-5):
    mu = x.mean(axis=-1, keepdims=True)
    var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
    return gamma * (x - mu) / np.sqrt(var + eps) + beta


def group_norm(x, gamma, beta, *, groups, eps=1e-5):
    n, h, w, c = x.shape
    cg = c // groups
    xhat = np.empty_like(x)
    for i in range(n):
        for g in range(groups):
            block = x[i, :, :, g * cg:(g + 1) * cg]
            xhat[i, :, :, g * cg:(g + 1) * cg] = (block - block.mean()) / np.sqrt(block.var() + eps)
    return gamma * xhat + beta


def dropout(x, key, *, rate, train=True):
    if not train or rate == 0.0:
        return x
    keep = np.asarray(jax.random.bernoulli(key, 1.0 - rate, x.shape))
    return np.where(keep, x / (1.0 - rate), 0.0)


ORACLES: dict[str, Callable] = {name: globals()[name] for name in (
    "affine", "relu", "leaky_relu", "sigmoid", "tanh", "elu", "prelu", "maxout", "softplus", "gelu",
    "softmax_cross_entropy", "svm_hinge", "sigmoid_cross_entropy", "l2_loss", "l1_loss", "l2_penalty",
    "l1_penalty", "conv2d", "conv2d_transpose", "max_pool2d", "avg_pool2d", "global_avg_pool", "batch_norm",
    "spatial_batch_norm", "layer_norm", "group_norm", "dropout")}
"""The NumPy forward of every registered op, by name: same positional arguments and keywords."""


# ------------------------------------------------------------------------------------- fixed inputs

OracleCase = registry.OracleCase


def _rng(name, i):
    return np.random.default_rng([zlib.crc32(name.encode()), i])


def _oc(name, i, label, make, **kwargs):
    return OracleCase(label, tuple(make(_rng(name, i))), kwargs)


def _n(*shape):
    return lambda r: (r.standard_normal(shape),)


def _unary(name, shapes, configs=({},)):
    out, i = [], 0
    for shape in shapes:
        for kw in configs:
            label = "x=" + "x".join(map(str, shape)) + "".join(f" {k}={v}" for k, v in kw.items())
            out.append(_oc(name, i, label, lambda r, s=shape: (3 * r.standard_normal(s),), **kw))
            i += 1
    return tuple(out)


def _conv_args(xs, ws, bias=True):
    def make(r):
        return (r.standard_normal(xs), r.standard_normal(ws), r.standard_normal(ws[-1]) if bias else None)
    return make


def _norm_args(xs, running=True):
    def make(r):
        c = xs[-1]
        args = (2 * r.standard_normal(xs) + 0.5, 1 + 0.2 * r.standard_normal(c), r.standard_normal(c))
        return args + ((0.1 * r.standard_normal(c), 0.5 + r.random(c)) if running else ())
    return make


def _labels(n, c):
    return lambda r: (r.standard_normal((n, c)), r.integers(0, c, n))


def _pair_args(shape):
    return lambda r: (r.standard_normal(shape), r.standard_normal(shape))


def _build_cases() -> dict:
    cases = {
        "affine": (_oc("affine", 0, "x=3x4 m=2", lambda r: (r.standard_normal((3, 4)), r.standard_normal((4, 2)),
                                                             r.standard_normal(2))),
                   _oc("affine", 1, "x=2x3x2 m=3", lambda r: (r.standard_normal((2, 3, 2)),
                                                               r.standard_normal((6, 3)), r.standard_normal(3))),
                   _oc("affine", 2, "x=1x5 m=2 bias=False", lambda r: (r.standard_normal((1, 5)),
                                                                        r.standard_normal((5, 2)), None))),
        "relu": _unary("relu", ((3, 4), (1, 2, 2, 3))),
        "leaky_relu": _unary("leaky_relu", ((3, 4),), ({"slope": 0.01}, {"slope": 0.3})),
        "sigmoid": _unary("sigmoid", ((3, 4), (1, 2, 2, 3))),
        "tanh": _unary("tanh", ((3, 4), (1, 2, 2, 3))),
        "elu": _unary("elu", ((3, 4),), ({"alpha": 1.0}, {"alpha": 0.5})),
        "prelu": (_oc("prelu", 0, "x=3x4 alpha=4", lambda r: (r.standard_normal((3, 4)), 0.1 + 0.3 * r.random(4))),
                  _oc("prelu", 1, "x=2x3 alpha=()", lambda r: (r.standard_normal((2, 3)), np.array(0.25)))),
        "maxout": (_oc("maxout", 0, "x=3x6 pieces=2", _n(3, 6), pieces=2),
                   _oc("maxout", 1, "x=2x2x6 pieces=3", _n(2, 2, 6), pieces=3)),
        "softplus": _unary("softplus", ((3, 4), (1, 2, 2, 3))),
        "gelu": _unary("gelu", ((3, 4),), ({"approximate": False}, {"approximate": True})),
        "softmax_cross_entropy": (_oc("softmax_cross_entropy", 0, "x=4x5", _labels(4, 5)),
                                  _oc("softmax_cross_entropy", 1, "x=1x3", _labels(1, 3))),
        "svm_hinge": (_oc("svm_hinge", 0, "x=4x5", _labels(4, 5)),
                      _oc("svm_hinge", 1, "x=3x3 margin=0.5", _labels(3, 3), margin=0.5)),
        "sigmoid_cross_entropy": (
            _oc("sigmoid_cross_entropy", 0, "x=3x4", lambda r: (r.standard_normal((3, 4)), r.random((3, 4)))),
            _oc("sigmoid_cross_entropy", 1, "x=2x2x2 hard targets",
                lambda r: (r.standard_normal((2, 2, 2)), r.integers(0, 2, (2, 2, 2)).astype(np.float64)))),
        "l2_loss": (_oc("l2_loss", 0, "x=3x4", _pair_args((3, 4))), _oc("l2_loss", 1, "x=1x2x2", _pair_args((1, 2, 2)))),
        "l1_loss": (_oc("l1_loss", 0, "x=3x4", _pair_args((3, 4))), _oc("l1_loss", 1, "x=1x2x2", _pair_args((1, 2, 2)))),
        "l2_penalty": (_oc("l2_penalty", 0, "w=4x3", _n(4, 3)), _oc("l2_penalty", 1, "w=2x2x2x3", _n(2, 2, 2, 3))),
        "l1_penalty": (_oc("l1_penalty", 0, "w=4x3", _n(4, 3)), _oc("l1_penalty", 1, "w=2x2x2x3", _n(2, 2, 2, 3))),
        "conv2d": (
            _oc("conv2d", 0, "x=2x5x5x3 w=3x3x3x2 stride=1 padding=0", _conv_args((2, 5, 5, 3), (3, 3, 3, 2)),
                stride=1, padding=0),
            _oc("conv2d", 1, "x=1x7x7x2 w=3x3x2x3 stride=2 padding=1", _conv_args((1, 7, 7, 2), (3, 3, 2, 3)),
                stride=2, padding=1),
            _oc("conv2d", 2, "x=1x6x7x2 w=3x2x2x2 stride=2 padding=SAME",
                _conv_args((1, 6, 7, 2), (3, 2, 2, 2)), stride=2, padding="SAME"),
            _oc("conv2d", 3, "x=1x7x7x2 w=3x3x2x2 dilation=2 padding=VALID",
                _conv_args((1, 7, 7, 2), (3, 3, 2, 2)), padding="VALID", dilation=2),
            _oc("conv2d", 4, "x=2x4x4x4 w=3x3x2x6 groups=2 padding=1", _conv_args((2, 4, 4, 4), (3, 3, 2, 6)),
                padding=1, groups=2),
            _oc("conv2d", 5, "x=1x5x6x2 w=2x3x2x2 bias=False stride=(1,2) padding=((1,0),(0,1))",
                _conv_args((1, 5, 6, 2), (2, 3, 2, 2), bias=False), stride=(1, 2), padding=((1, 0), (0, 1)))),
        "conv2d_transpose": (
            _oc("conv2d_transpose", 0, "x=2x3x3x2 w=3x3x2x2 stride=1", _conv_args((2, 3, 3, 2), (3, 3, 2, 2)),
                stride=1, padding=0),
            _oc("conv2d_transpose", 1, "x=1x3x4x2 w=3x3x2x3 stride=2 padding=1",
                _conv_args((1, 3, 4, 2), (3, 3, 2, 3)), stride=2, padding=1),
            _oc("conv2d_transpose", 2, "x=1x2x3x2 w=2x3x2x2 bias=False stride=(2,1)",
                _conv_args((1, 2, 3, 2), (2, 3, 2, 2), bias=False), stride=(2, 1), padding=0)),
        "max_pool2d": (
            _oc("max_pool2d", 0, "x=2x4x4x2 window=2", _n(2, 4, 4, 2), window=2),
            _oc("max_pool2d", 1, "x=1x5x5x2 window=3 stride=2 padding=1", _n(1, 5, 5, 2), window=3, stride=2,
                padding=1),
            _oc("max_pool2d", 2, "x=1x5x6x1 window=(2,3) stride=1 padding=SAME", _n(1, 5, 6, 1), window=(2, 3),
                stride=1, padding="SAME")),
        "avg_pool2d": (
            _oc("avg_pool2d", 0, "x=2x4x4x2 window=2", _n(2, 4, 4, 2), window=2),
            _oc("avg_pool2d", 1, "x=1x5x5x2 window=3 stride=2 padding=1", _n(1, 5, 5, 2), window=3, stride=2,
                padding=1),
            _oc("avg_pool2d", 2, "x=1x5x6x1 window=(2,3) stride=1 padding=SAME", _n(1, 5, 6, 1), window=(2, 3),
                stride=1, padding="SAME")),
        "global_avg_pool": (_oc("global_avg_pool", 0, "x=2x3x3x2", _n(2, 3, 3, 2)),
                            _oc("global_avg_pool", 1, "x=1x2x4x3", _n(1, 2, 4, 3))),
        "batch_norm": (
            _oc("batch_norm", 0, "x=5x3 train", _norm_args((5, 3)), train=True),
            _oc("batch_norm", 1, "x=4x2 train momentum=0.5 eps=1e-3", _norm_args((4, 2)), train=True,
                momentum=0.5, eps=1e-3),
            _oc("batch_norm", 2, "x=2x3x3x2 train", _norm_args((2, 3, 3, 2)), train=True),
            _oc("batch_norm", 3, "x=5x3 eval", _norm_args((5, 3)), train=False)),
        "spatial_batch_norm": (
            _oc("spatial_batch_norm", 0, "x=2x3x3x2 train", _norm_args((2, 3, 3, 2)), train=True),
            _oc("spatial_batch_norm", 1, "x=1x2x3x3 train momentum=0.7", _norm_args((1, 2, 3, 3)), train=True,
                momentum=0.7),
            _oc("spatial_batch_norm", 2, "x=2x2x2x3 eval eps=1e-3", _norm_args((2, 2, 2, 3)), train=False,
                eps=1e-3)),
        "layer_norm": (_oc("layer_norm", 0, "x=3x5", _norm_args((3, 5), running=False)),
                       _oc("layer_norm", 1, "x=2x2x4 eps=1e-3", _norm_args((2, 2, 4), running=False), eps=1e-3)),
        "group_norm": (_oc("group_norm", 0, "x=2x2x3x4 groups=2", _norm_args((2, 2, 3, 4), running=False), groups=2),
                       _oc("group_norm", 1, "x=1x2x2x3 groups=1", _norm_args((1, 2, 2, 3), running=False), groups=1),
                       _oc("group_norm", 2, "x=1x2x2x4 groups=4 eps=1e-3", _norm_args((1, 2, 2, 4), running=False),
                           groups=4, eps=1e-3)),
        "dropout": (
            _oc("dropout", 0, "x=4x6 rate=0.5", lambda r: (r.standard_normal((4, 6)), np.array([0, 3], np.uint32)),
                rate=0.5),
            _oc("dropout", 1, "x=2x3x3x2 rate=0.2", lambda r: (r.standard_normal((2, 3, 3, 2)),
                                                                np.array([0, 4], np.uint32)), rate=0.2),
            _oc("dropout", 2, "x=3x4 rate=0.5 eval", lambda r: (r.standard_normal((3, 4)), None), rate=0.5,
                train=False)),
    }
    return cases


ORACLE_CASES: dict[str, tuple] = _build_cases()
"""Small fixed inputs per op name (:class:`OracleCase`), covering the op's options."""


# ------------------------------------------------------------------------------------------- the check

@dataclasses.dataclass(frozen=True)
class OracleResult:
    """One fixed input: each path's largest error against the oracle, of the tensor's scale."""
    op: str
    config: str
    reference_rel_error: float
    manual_rel_error: float
    tol: float
    seconds: float
    dtype: str = "float64"
    check = "oracle"

    @property
    def passed(self) -> bool:
        return self.reference_rel_error <= self.tol and self.manual_rel_error <= self.tol

    def to_json(self) -> dict:
        d = {"check": self.check}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)})
        d["passed"] = self.passed
        return d


def _as_leaves(result):
    return [np.asarray(a, np.float64) for a in jax.tree_util.tree_leaves(result)]


def oracle_of(spec: registry.OpSpec) -> Callable | None:
    """The op's NumPy oracle: ``spec.oracle`` where the op's registration sets one, else :data:`ORACLES`."""
    return spec.oracle if spec.oracle is not None else ORACLES.get(spec.name)


def oracle_inputs(spec: registry.OpSpec) -> tuple:
    """The op's fixed inputs: ``spec.oracle_inputs()`` where set, else :data:`ORACLE_CASES`."""
    return spec.oracle_inputs() if spec.oracle is not None else ORACLE_CASES.get(spec.name, ())


def oracle_case(spec: registry.OpSpec, oc: OracleCase, oracle: Callable | None = None) -> OracleResult:
    """Both paths of ``spec`` on ``oc`` against the oracle (default :func:`oracle_of`), float64."""
    oracle = oracle_of(spec) if oracle is None else oracle
    start = time.perf_counter()
    with jax.enable_x64(True):       # dropout's mask: drawn in the mode the op runs in
        want = _as_leaves(oracle(*oc.args, **oc.kwargs))
        args = tuple(a if a is None or np.asarray(a).dtype == np.uint32 else jnp.asarray(a) for a in oc.args)
        got = {impl: _as_leaves(spec.call(impl, args, registry.Case(kwargs=oc.kwargs, dims={})))
               for impl in ("autodiff", "manual")}
    errors = []
    for impl in ("autodiff", "manual"):
        if len(got[impl]) != len(want) or any(g.shape != w.shape for g, w in zip(got[impl], want)):
            errors.append(float("inf"))
        else:
            errors.append(norm_rel_error(got[impl], want))
    return OracleResult(spec.name, oc.label, errors[0], errors[1], ORACLE_TOL, time.perf_counter() - start)


def check_oracles(names: Iterable[str] | None = None, progress=None) -> list[OracleResult]:
    """Every fixed input of every registered op (or only ``names``) against its oracle."""
    todo = [(registry.get(n), oc) for n in (list(names) if names else list(registry.REGISTRY))
            for oc in oracle_inputs(registry.get(n))]
    return [oracle_case(spec, oc) for spec, oc in (progress(todo) if progress else todo)]


def oracle_table(results: list[OracleResult]) -> str:
    """One row per op: fixed inputs run, each path's worst error against the oracle."""
    by_op: dict[str, list[OracleResult]] = {}
    for r in results:
        by_op.setdefault(r.op, []).append(r)
    rows = [[op, str(len(rs)), f"{max(r.reference_rel_error for r in rs):.1e}",
             f"{max(r.manual_rel_error for r in rs):.1e}", "ok" if all(r.passed for r in rs) else "FAIL"]
            for op, rs in by_op.items()]
    return format_table(["op", "inputs", "reference vs oracle", "manual vs oracle", "pass"], rows)


def oracle_failures(results: list[OracleResult]) -> str:
    return "\n".join(f"{r.op} [{r.config}]: reference vs oracle {r.reference_rel_error:.2e}, manual vs oracle "
                     f"{r.manual_rel_error:.2e}" for r in results if not r.passed)
