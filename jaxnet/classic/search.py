"""Hyperparameter search as in the course: random search on a log scale, coarse -> fine.

A search space maps names to ``(low, high, scale)`` with scale "log" (sample
``10 ** uniform(log10 low, log10 high)``: learning rates and regularisation strengths act
multiplicatively) or "linear" (``uniform(low, high)``). ``train_eval_fn(params: dict)``
trains one model and returns ``(val_acc, train_acc)`` (extra returned items are ignored).

Results are lists of :class:`Trial` ``(params, val_acc, train_acc)`` sorted by validation
accuracy, best first (NaN last). Choose on the validation split; report test separately.
"""
from __future__ import annotations

import math
import os
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

__all__ = ["Trial", "sample_params", "random_search", "coarse_to_fine", "results_table", "plot_search"]

SCALES = ("log", "linear")


class Trial(NamedTuple):
    """One evaluated setting: ``params`` (dict), ``val_acc``, ``train_acc``."""
    params: dict
    val_acc: float
    train_acc: float


def _check_space(space: Mapping) -> dict:
    if not space:
        raise ValueError("search: the space is empty")
    out = {}
    for name, spec in space.items():
        try:
            low, high, scale = spec
        except (TypeError, ValueError):
            raise ValueError(f"search: space[{name!r}] must be (low, high, 'log'|'linear'), got {spec!r}") from None
        low, high = float(low), float(high)
        if scale not in SCALES:
            raise ValueError(f"search: space[{name!r}] scale must be 'log' or 'linear', got {scale!r}")
        if not low <= high:
            raise ValueError(f"search: space[{name!r}] needs low <= high, got ({low}, {high})")
        if scale == "log" and low <= 0:
            raise ValueError(f"search: space[{name!r}] is log-scaled, so low must be > 0, got {low}")
        out[name] = (low, high, scale)
    return out


def sample_params(space: Mapping, n: int, rng: np.random.Generator) -> list[dict]:
    """n independent draws from ``space`` (log-uniform or uniform per entry), as float dicts."""
    space = _check_space(space)
    cols = {}
    for name, (low, high, scale) in space.items():
        if scale == "log":
            v = 10.0 ** rng.uniform(math.log10(low), math.log10(high), n)
            cols[name] = np.clip(v, low, high)        # guard the last-ulp round-off of 10 ** x
        else:
            cols[name] = rng.uniform(low, high, n)
    return [{k: float(cols[k][i]) for k in space} for i in range(n)]


def _key(trial: Trial):
    v = trial.val_acc
    return (-v if v == v else math.inf, -(trial.train_acc if trial.train_acc == trial.train_acc else -math.inf))


def _evaluate(train_eval_fn, params_list, verbose, label=""):
    trials = []
    for i, params in enumerate(params_list):
        out = train_eval_fn(dict(params))
        if not isinstance(out, (tuple, list)) or len(out) < 2:
            raise TypeError(f"search: train_eval_fn must return (val_acc, train_acc, ...), got {out!r}")
        t = Trial(dict(params), float(out[0]), float(out[1]))
        trials.append(t)
        if verbose:
            ps = " ".join(f"{k}={v:.3g}" for k, v in params.items())
            print(f"  {label}trial {i + 1}/{len(params_list)}: {ps}  val {t.val_acc:.4f}  train {t.train_acc:.4f}",
                  flush=True)
    return trials


def random_search(train_eval_fn: Callable[[dict], Sequence[float]], space: Mapping, n_trials: int,
                  seed: int = 0, *, verbose: bool = False) -> list[Trial]:
    """Evaluate ``n_trials`` random settings; returns Trials sorted by val_acc, best first."""
    if n_trials < 1:
        raise ValueError(f"random_search: n_trials must be >= 1, got {n_trials}")
    params = sample_params(space, n_trials, np.random.default_rng(seed))
    return sorted(_evaluate(train_eval_fn, params, verbose), key=_key)


def _narrow(space: dict, best: Sequence[Trial], shrink: float) -> dict:
    """A new space around the best trials. Per entry (in log10 units for "log"): a range of
    ``shrink`` x the old width centred on the best trial, stretched to cover the other top
    trials, but never wider than the old range."""
    new = {}
    for name, (low, high, scale) in space.items():
        log = scale == "log"
        tf = math.log10 if log else float
        values = [tf(t.params[name]) for t in best]
        old = tf(high) - tf(low)
        c, w = values[0], shrink * old
        lo, hi = min(c - w / 2, min(values)), max(c + w / 2, max(values))
        if hi - lo > old:
            lo, hi = c - old / 2, c + old / 2
        if not log and low >= 0 and lo < 0:             # keep non-negative ranges non-negative
            lo, hi = 0.0, hi - lo
        new[name] = ((10.0 ** lo, 10.0 ** hi, scale) if log else (lo, hi, scale))
    return new


def coarse_to_fine(train_eval_fn: Callable[[dict], Sequence[float]], space: Mapping, *, stages: int = 2,
                   trials_per_stage: int | Sequence[int] = 10, shrink: float = 0.4, top_k: int = 3,
                   seed: int = 0, verbose: bool = False, return_stages: bool = False):
    """The course's coarse -> fine search: random search, then narrow every range around the
    ``top_k`` best trials (each new range is ``shrink`` x the old width, in log10 units for
    log entries, centred on the best and covering the top trials) and search again.

    The narrowed ranges are not clipped to the first space: a best value on the border moves
    the next stage's range outward (the course's "careful with best values on the border").
    ``trials_per_stage`` is one count or one per stage. Returns all Trials sorted (best
    first); with ``return_stages=True`` also a list of ``{"stage", "space", "trials"}``.
    """
    if stages < 1:
        raise ValueError(f"coarse_to_fine: stages must be >= 1, got {stages}")
    if not 0 < shrink <= 1:
        raise ValueError(f"coarse_to_fine: shrink must be in (0, 1], got {shrink}")
    counts = [int(trials_per_stage)] * stages if np.ndim(trials_per_stage) == 0 else list(trials_per_stage)
    if len(counts) != stages or min(counts) < 1:
        raise ValueError(f"coarse_to_fine: need {stages} positive trial counts, got {trials_per_stage!r}")
    cur = _check_space(space)
    rng = np.random.default_rng(seed)
    everything, history = [], []
    for s, n in enumerate(counts):
        params = sample_params(cur, n, rng)
        trials = sorted(_evaluate(train_eval_fn, params, verbose, label=f"stage {s + 1} "), key=_key)
        history.append({"stage": s + 1, "space": dict(cur), "trials": trials})
        everything.extend(trials)
        if s + 1 < stages:
            best = sorted(everything, key=_key)[:max(1, top_k)]
            cur = _narrow(cur, best, shrink)
    everything.sort(key=_key)
    return (everything, history) if return_stages else everything


def results_table(results: Sequence[Trial], *, top: int | None = None) -> str:
    """A plain-text table: one row per trial (best first), params then val / train accuracy."""
    results = list(results)[:top] if top else list(results)
    if not results:
        return "(no trials)"
    names = list(results[0].params)
    header = ["#"] + names + ["val_acc", "train_acc"]
    rows = [[str(i + 1)] + [f"{t.params.get(k, float('nan')):.3g}" for k in names]
            + [f"{t.val_acc:.4f}", f"{t.train_acc:.4f}"] for i, t in enumerate(results)]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def plot_search(results: Sequence[Trial], path, *, x: str = "learning_rate", y: str = "reg",
                title: str | None = None) -> str:
    """The course's figure: two scatter panels (training and validation accuracy) over
    (x, y) on log axes when all values are positive, colour = accuracy; the best
    validation trial is starred. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = list(results)
    if not results:
        raise ValueError("plot_search: no results")
    xs = np.array([t.params[x] for t in results], float)
    ys = np.array([t.params[y] for t in results], float)
    fig = Figure(figsize=(11, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    best = max(range(len(results)), key=lambda i: results[i].val_acc if results[i].val_acc == results[i].val_acc
               else -math.inf)
    for k, (field, label) in enumerate((("train_acc", "training accuracy"), ("val_acc", "validation accuracy"))):
        ax = fig.add_subplot(1, 2, k + 1)
        acc = np.array([getattr(t, field) for t in results], float)
        sc = ax.scatter(xs, ys, c=acc, s=60, cmap="viridis", edgecolors="k", linewidths=0.4)
        ax.scatter([xs[best]], [ys[best]], marker="*", s=260, facecolors="none", edgecolors="red",
                   linewidths=1.5, label=f"best val {results[best].val_acc:.3f}")
        if np.all(xs > 0):
            ax.set_xscale("log")
        if np.all(ys > 0):
            ax.set_yscale("log")
        ax.set(xlabel=x, ylabel=y, title=label)
        ax.grid(True, alpha=0.3, which="both")
        ax.legend(loc="best", fontsize=8)
        fig.colorbar(sc, ax=ax)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path
