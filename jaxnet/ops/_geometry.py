"""Window geometry shared by convolution and pooling (reference and manual).

Sizes follow the course: ``out = (in + pad_lo + pad_hi - eff_kernel) // stride + 1``
with ``eff_kernel = dilation * (kernel - 1) + 1``. With integer padding the
stride must fit exactly (the course's "7x7 input, 3x3 filter, stride 3 does not
fit"); ``"VALID"`` drops the remainder and ``"SAME"`` pads like TensorFlow.

Shapes refused here, with an error naming the op and the shapes, before XLA
sees them: an empty spatial axis, negative padding in any form, a window
larger than the padded input (an empty output), a stride that does not fit
integer padding and, for pooling, a window lying entirely in the padding.
Integers may be Python or NumPy integers.
"""
from __future__ import annotations

import dataclasses
from typing import Union

from jaxnet._checks import is_int

Pair = tuple[int, int]
Padding = Union[int, Pair, tuple[Pair, Pair], str]


def as_pair(op: str, name: str, value) -> Pair:
    """``3 -> (3, 3)``; ``(2, 1) -> (2, 1)``; validates positivity; returns Python ints."""
    try:
        pair = (value, value) if is_int(value) else tuple(value)
    except TypeError:
        pair = ()
    if len(pair) != 2 or not all(is_int(v) and v >= 1 for v in pair):
        raise ValueError(f"{op}: `{name}` must be a positive int or a pair of them, got {value!r}")
    return (int(pair[0]), int(pair[1]))


@dataclasses.dataclass(frozen=True)
class WindowGeometry:
    """Static description of a sliding window over an NHWC input."""
    kernel: Pair
    stride: Pair
    dilation: Pair
    pads: tuple[Pair, Pair]      # ((top, bottom), (left, right))
    in_hw: Pair
    out_hw: Pair

    @property
    def padded_hw(self) -> Pair:
        (t, b), (l, r) = self.pads
        return (self.in_hw[0] + t + b, self.in_hw[1] + l + r)


def _resolve_pads(op, padding, in_hw, eff, stride):
    if isinstance(padding, str):
        mode = padding.upper()
        if mode == "VALID":
            return ((0, 0), (0, 0)), False
        if mode == "SAME":
            pads = []
            for n, k, s in zip(in_hw, eff, stride):
                out = -(-n // s)
                total = max((out - 1) * s + k - n, 0)
                pads.append((total // 2, total - total // 2))
            return tuple(pads), False
        raise ValueError(f"{op}: `padding` string must be 'SAME' or 'VALID', got {padding!r}")
    if is_int(padding):
        if padding < 0:
            raise ValueError(f"{op}: `padding` must be >= 0, got {padding}")
        return ((int(padding), int(padding)), (int(padding), int(padding))), True
    pads = None
    try:
        p = tuple(padding)
        if len(p) == 2 and all(is_int(v) for v in p):
            pads = ((p[0], p[0]), (p[1], p[1]))
        elif len(p) == 2 and all(len(tuple(v)) == 2 and all(is_int(a) for a in v) for v in p):
            pads = tuple(tuple(v) for v in p)
    except TypeError:
        pass
    if pads is None:
        raise ValueError(f"{op}: `padding` must be an int, (ph, pw), ((top, bottom), (left, right)), "
                         f"'SAME' or 'VALID'; got {padding!r}")
    if min(min(v) for v in pads) < 0:
        raise ValueError(f"{op}: `padding` must be >= 0 everywhere, got {padding!r}")
    return tuple((int(a), int(b)) for a, b in pads), True


def check_spatial(op: str, name: str, shape) -> None:
    """Refuse an NHWC shape with an empty H or W axis (XLA would see an empty window)."""
    if shape[1] < 1 or shape[2] < 1:
        raise ValueError(f"{op}: `{name}` {tuple(shape)} has an empty spatial axis (H and W must be >= 1)")


def window_geometry(op: str, x_shape, kernel, *, stride, padding, dilation=1,
                    kernel_desc: str = "", kernel_name: str = "kernel") -> WindowGeometry:
    """Resolve a window over an NHWC input of shape ``x_shape``; raise on misfit."""
    check_spatial(op, "x", x_shape)
    kernel = as_pair(op, kernel_name, kernel)
    stride = as_pair(op, "stride", stride)
    dilation = as_pair(op, "dilation", dilation)
    in_hw = (int(x_shape[1]), int(x_shape[2]))
    eff = tuple(d * (k - 1) + 1 for k, d in zip(kernel, dilation))
    pads, strict = _resolve_pads(op, padding, in_hw, eff, stride)
    out = []
    desc = f" and kernel {kernel_desc}" if kernel_desc else f" and window {kernel}"
    for axis, (n, k, s, (lo, hi)) in enumerate(zip(in_hw, eff, stride, pads)):
        span = n + lo + hi - k
        if span < 0:
            raise ValueError(
                f"{op}: the (effective) window {k} is larger than the padded input {n + lo + hi} "
                f"along {'HW'[axis]} (input {tuple(x_shape)}{desc}, padding {padding!r})")
        if strict and span % s:
            raise ValueError(
                f"{op}: stride {s} does not fit along {'HW'[axis]}: (in {n} + pad {lo + hi} - window {k}) = "
                f"{span} is not divisible by {s} (input {tuple(x_shape)}{desc}); "
                f"change the stride or padding, or pass padding='VALID' to drop the remainder")
        out.append(span // s + 1)
    return WindowGeometry(kernel, stride, dilation, pads, in_hw, tuple(out))


def check_no_padding_window(op: str, geom: WindowGeometry, x_shape, padding) -> None:
    """Refuse a pooling geometry in which some window covers only padding (its max would
    be -inf, its average 0)."""
    for axis, (n, k, s, (lo, _), o) in enumerate(zip(geom.in_hw, geom.kernel, geom.stride, geom.pads,
                                                     geom.out_hw)):
        if lo >= k or (o - 1) * s >= lo + n:
            raise ValueError(
                f"{op}: padding {padding!r} leaves a window entirely in the padding along {'HW'[axis]} "
                f"(input {tuple(x_shape)}, window {geom.kernel}, stride {geom.stride}); "
                f"use padding smaller than the window")


def conv_output_size(n: int, f: int, *, stride: int = 1, pad: int = 0, dilation: int = 1) -> int:
    """The course's ``(N - F + 2P) / S + 1`` for one spatial axis; raises if it does not fit."""
    g = window_geometry("conv_output_size", (1, n, n, 1), f, stride=stride, padding=pad, dilation=dilation)
    return g.out_hw[0]
