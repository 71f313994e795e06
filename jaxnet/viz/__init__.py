"""Plots: training curves (more to come: image grids, saliency)."""

from jaxnet.viz.curves import plot_history

__all__ = ["plot_history"]
