"""NumPy pieces for the ops' oracles and their fixed inputs (``OpSpec.oracle``, ``OpSpec.oracle_cases``).

Each family module writes its ops' oracles (independent float64 forwards in
plain NumPy, never calling the op) and their fixed inputs next to the ops;
what several families share lives here: the padding forms of conv and
pooling (:func:`pads`, :func:`pad_hw`), the per-input random generator seeded
from the op's name (:func:`rng`), and the builders :func:`drawn` and
:func:`unary`.  Only NumPy and the registry's :class:`OracleCase` are
imported, and the inputs are built when the oracle check first asks for them
(``oracle_cases`` is a zero-argument callable), so importing the ops stays as
cheap as before.
"""
from __future__ import annotations

import zlib
from typing import Callable

import numpy as np

from jaxnet.ops._registry import OracleCase

Make = Callable[[np.random.Generator], tuple]


# ------------------------------------------------------------------------------------- fixed inputs

def rng(name: str, i: int) -> np.random.Generator:
    """The generator of op ``name``'s ``i``-th fixed input: seeded from the name's CRC-32 and ``i``,
    so an op's inputs do not change when other ops are added or reordered."""
    return np.random.default_rng([zlib.crc32(name.encode()), i])


def drawn(name: str, *rows) -> tuple[OracleCase, ...]:
    """Fixed inputs of op ``name``, one per row ``(label, make)`` or ``(label, make, kwargs)``.

    ``make(rng(name, i)) -> tuple`` draws the ``i``-th row's positional arguments
    (float64 arrays, integer labels, ``None``); ``kwargs`` are the op's keywords.
    """
    out = []
    for i, row in enumerate(rows):
        label, make, kwargs = row if len(row) == 3 else (*row, {})
        out.append(OracleCase(label, tuple(make(rng(name, i))), dict(kwargs)))
    return tuple(out)


def normal(*shape) -> Make:
    """``make`` for an op of one array argument: a standard normal of ``shape``."""
    return lambda r: (r.standard_normal(shape),)


def unary(name: str, shapes, configs=({},)) -> tuple[OracleCase, ...]:
    """Fixed inputs of an elementwise op: ``3 * N(0, 1)`` of every shape, under every keyword config."""
    rows = []
    for shape in shapes:
        for kw in configs:
            label = "x=" + "x".join(map(str, shape)) + "".join(f" {k}={v}" for k, v in kw.items())
            rows.append((label, lambda r, s=shape: (3 * r.standard_normal(s),), kw))
    return drawn(name, *rows)


# ------------------------------------------------------------------------------------------ padding

def pair(v) -> tuple:
    """``3 -> (3, 3)``; a pair stays a pair."""
    return (v, v) if isinstance(v, int) else tuple(v)


def pads(padding, in_hw, eff, stride) -> tuple:
    """``((top, bottom), (left, right))`` from the documented padding forms (int, ``(ph, pw)``,
    ``((top, bottom), (left, right))``, ``"VALID"``, ``"SAME"`` as TensorFlow pads it).

    in_hw: the input's (H, W); eff: the effective (dilated) window; stride: a pair.
    """
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        out = []
        for n, k, s in zip(in_hw, eff, stride):
            total = max((-(-n // s) - 1) * s + k - n, 0)
            out.append((total // 2, total - total // 2))
        return tuple(out)
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    a, b = padding
    if isinstance(a, int):
        return ((a, a), (b, b))
    return (tuple(a), tuple(b))


def pad_hw(x: np.ndarray, hw_pads, value: float = 0.0) -> np.ndarray:
    """Pad an NHWC array's H and W axes by ``hw_pads`` (from :func:`pads`) with ``value``."""
    return np.pad(x, ((0, 0), hw_pads[0], hw_pads[1], (0, 0)), constant_values=value)
