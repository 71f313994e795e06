"""A per-layer table of a model: output shapes, parameter counts, activation memory.

Nothing runs: parameter shapes come from ``jax.eval_shape(model.init, ...)``
and output shapes from ``output_shape`` arithmetic.

>>> print(summary(small_convnet(), (128, 32, 32, 3)))
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax

__all__ = ["Summary", "SummaryRow", "summary", "count_params", "available_memory", "format_bytes"]

FLOAT32_BYTES = 4


def count_params(tree: Any) -> int:
    """Number of scalars in a pytree of arrays (or ``ShapeDtypeStruct``s)."""
    return int(sum(math.prod(leaf.shape) for leaf in jax.tree_util.tree_leaves(tree)))


@dataclasses.dataclass(frozen=True)
class SummaryRow:
    path: str                 # "block1/conv1"; "/" joins the names of nested combinators
    layer_type: str           # class name, e.g. "Conv2D"; "Residual (add)" for a combinator's own output
    output_shape: tuple
    params: int
    state: int
    activation_bytes: int     # the output's size in float32 bytes, for the whole batch
    macs: int = 0             # multiply-adds of a convolution or affine layer, for the whole batch


@dataclasses.dataclass(frozen=True)
class Summary:
    """Rows per leaf layer (plus a row for each Residual add / Parallel merge) and totals."""
    rows: tuple
    input_shape: tuple
    output_shape: tuple
    total_params: int
    total_state: int
    total_activation_bytes: int

    @property
    def total_macs(self) -> int:
        """Multiply-adds of the convolutions and affine layers for the whole batch (the count the
        lecture uses; elementwise ops, pooling and norms are not counted)."""
        return sum(r.macs for r in self.rows)

    @property
    def macs_per_example(self) -> float:
        return self.total_macs / max(self.input_shape[0], 1)

    @property
    def param_bytes(self) -> int:
        return self.total_params * FLOAT32_BYTES

    @property
    def activation_bytes_per_example(self) -> float:
        """The activations of one example (float32 bytes): ``total_activation_bytes / batch``."""
        return self.total_activation_bytes / max(self.input_shape[0], 1)

    def training_bytes(self, batch_size: int | None = None) -> int:
        """A rough lower bound on a training step's memory for ``batch_size`` (default: the
        summary's batch): the activations twice (kept for the backward pass, and their
        gradients) plus the parameters four times (values, gradients, two optimizer moments)."""
        batch = self.input_shape[0] if batch_size is None else batch_size
        return int(2 * self.activation_bytes_per_example * batch + 4 * self.param_bytes)

    def largest_batch(self, available_bytes: int) -> int:
        """The largest batch size whose :meth:`training_bytes` fits ``available_bytes`` (0 if none)."""
        per_example = 2 * self.activation_bytes_per_example
        room = available_bytes - 4 * self.param_bytes
        return max(int(room // per_example), 0) if per_example > 0 else 0

    def __str__(self) -> str:
        header = ("layer", "type", "output shape", "params", "state", "activations", "mult-adds")
        body = [(r.path, r.layer_type, str(r.output_shape), f"{r.params:,}", f"{r.state:,}",
                 _bytes(r.activation_bytes), f"{r.macs:,}" if r.macs else "") for r in self.rows]
        widths = [max(len(h), *(len(row[i]) for row in body)) if body else len(h) for i, h in enumerate(header)]
        right = {3, 4, 5, 6}

        def line(cells):
            return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

        rule = "-" * len(line(header))
        out = [f"input {self.input_shape} -> output {self.output_shape}", rule, line(header), rule]
        out += [line(row) for row in body]
        out += [rule,
                f"total params: {self.total_params:,} ({_bytes(self.param_bytes)} as float32)",
                f"total state (non-trained): {self.total_state:,}",
                f"activations per batch of {self.input_shape[0]} (float32): {_bytes(self.total_activation_bytes)}",
                f"per example: {self.macs_per_example / 1e6:,.1f} M multiply-adds; activations "
                f"{_bytes(self.activation_bytes_per_example)} forward, "
                f"{_bytes(2 * self.activation_bytes_per_example)} training (kept + their gradients)"]
        return "\n".join(out)


def format_bytes(n: float) -> str:
    """``n`` bytes in B, KiB, MiB or GiB, e.g. ``"11.9 GiB"``."""
    return _bytes(n)


def available_memory(device=None) -> int | None:
    """Bytes free for a new computation on ``device`` (default: the first local device), or None
    if unknown. Accelerators: ``bytes_limit - bytes_in_use`` from ``device.memory_stats()``;
    the CPU: ``MemAvailable`` from ``/proc/meminfo`` (Linux)."""
    try:
        device = device if device is not None else jax.local_devices()[0]
    except RuntimeError:  # pragma: no cover - no backend
        return None
    if device.platform != "cpu":
        try:
            stats = device.memory_stats() or {}
        except Exception:  # noqa: BLE001 - backends without memory statistics
            stats = {}
        if "bytes_limit" in stats:
            return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError  # pragma: no cover


def _macs(layer, params, in_shape, out_shape) -> int:
    """Multiply-adds of a leaf layer for the whole batch: convolutions and affine layers only."""
    kind, w = type(layer).__name__, params.get("w") if isinstance(params, dict) else None
    if w is None:
        return 0
    if kind == "Conv2D":              # each output value: KH * KW * C/groups products
        return math.prod(out_shape) * w.shape[0] * w.shape[1] * w.shape[2]
    if kind == "ConvTranspose2D":     # each input value scatters into KH * KW * F outputs
        return math.prod(in_shape) * w.shape[0] * w.shape[1] * w.shape[3]
    if kind == "Affine":
        return in_shape[0] * w.shape[0] * w.shape[1]
    return 0


def _walk(layer, params, state, shape, path, rows):
    out_shape = tuple(layer.output_shape(shape))
    children = getattr(layer, "children", None)
    if children is None:
        rows.append(SummaryRow(path or type(layer).__name__, type(layer).__name__, out_shape,
                               count_params(params), count_params(state),
                               math.prod(out_shape) * FLOAT32_BYTES, _macs(layer, params, shape, out_shape)))
        return
    for name, child, child_shape in children(shape):
        _walk(child, params.get(name, {}), state.get(name, {}), child_shape,
              f"{path}/{name}" if path else name, rows)
    merge = {"Residual": "add", "Parallel": getattr(layer, "combine", None)}.get(type(layer).__name__)
    if merge:
        rows.append(SummaryRow(path or type(layer).__name__, f"{type(layer).__name__} ({merge})", out_shape,
                               0, 0, math.prod(out_shape) * FLOAT32_BYTES))


def summary(model, input_shape) -> Summary:
    """Summarise ``model`` for a batch of shape ``input_shape`` (batch axis included); runs nothing."""
    input_shape = tuple(int(s) for s in input_shape)
    params, state = jax.eval_shape(lambda k: model.init(k, input_shape), jax.random.PRNGKey(0))
    rows: list = []
    _walk(model, params, state, input_shape, "", rows)
    return Summary(rows=tuple(rows), input_shape=input_shape, output_shape=tuple(model.output_shape(input_shape)),
                   total_params=count_params(params), total_state=count_params(state),
                   total_activation_bytes=sum(r.activation_bytes for r in rows))
