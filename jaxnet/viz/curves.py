"""Training curves: loss and accuracy per epoch, as a PNG (matplotlib, Agg canvas, no pyplot state)."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["plot_history"]


def _finite(xs: Sequence[Any], ys: Sequence[Any]) -> tuple[list, list]:
    pairs = [(x, y) for x, y in zip(xs, ys) if y is not None and math.isfinite(float(y))]
    return [p[0] for p in pairs], [float(p[1]) for p in pairs]


def plot_history(history: Any, path: str | os.PathLike, *, title: str | None = None) -> str:
    """Write a two-panel PNG: loss per epoch (train, and val when present) and accuracy
    per epoch (train and val).

    history: a dict of per-epoch lists with ``train_loss``, ``train_acc`` and optionally
      ``epoch``, ``val_loss``, ``val_acc`` (e.g. ``FitResult.history``), or an object with a
      ``history`` attribute holding one. NaN/None values are skipped. Returns the path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    if not isinstance(history, Mapping):
        history = getattr(history, "history", history)
    if not isinstance(history, Mapping) or "train_loss" not in history:
        raise ValueError("plot_history: expected a dict of per-epoch lists with 'train_loss'")
    n = len(history["train_loss"])
    epochs = list(history.get("epoch") or range(1, n + 1))

    fig = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for key, label, ax in (
        ("train_loss", "train", ax_loss), ("val_loss", "val", ax_loss),
        ("train_acc", "train", ax_acc), ("val_acc", "val", ax_acc),
    ):
        if key in history:
            xs, ys = _finite(epochs, history[key])
            if ys:
                ax.plot(xs, ys, marker="o" if len(ys) < 30 else None, markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title="Accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fig.savefig(path, format="png")
    return path
