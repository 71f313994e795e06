"""Sample-quality numbers for generative models, computed from a classifier's outputs (issue 16).

These are jaxnet's own measures: the formulas of the Inception Score and of the Fréchet
Inception Distance, applied to a small jaxnet classifier (a CIFAR-10 or digits convnet, see
``experiments/_judge.py``) instead of Inception-v3 on ImageNet.  The numbers rank models
judged by the same classifier on the same data; they are NOT comparable with published IS or
FID values (another network, another feature space, another number of samples).

Plain NumPy, float64 inside, whatever the inputs' dtype.

``probs`` arguments are (N, K) class probabilities p(y | x) of N images (each row >= 0, summing
to 1 within 1e-4); ``features`` arguments are (N, F) feature vectors (the classifier's
penultimate layer), N >= 2.  A bad input raises a one-line ValueError naming the function and
the shape it got.

* :func:`classifier_score` -- ``exp(mean_x KL(p(y|x) || p(y)))``, p(y) the mean prediction:
  in [1, K]; K when every image is classified with certainty and the classes are used equally often.
* :func:`confident_fraction` -- the fraction of images whose top probability is >= a threshold.
* :func:`class_coverage` -- the entropy of the mean prediction over log K: 1 when every class is
  predicted equally often on average, 0 when a single class takes all the mass.
* :func:`gaussian_stats` -- the mean (F,) and covariance (F, F) of a feature set.
* :func:`frechet_distance` -- ``||mu1 - mu2||^2 + tr(C1 + C2 - 2 sqrtm(C1 C2))`` between the
  Gaussians fitted to two feature sets (or precomputed ``(mean, cov)`` pairs).
"""
from __future__ import annotations

import numpy as np

__all__ = ["classifier_score", "confident_fraction", "class_coverage", "gaussian_stats", "frechet_distance"]

_SUM_TOL = 1e-4


def _as_probs(fn: str, probs) -> np.ndarray:
    p = np.asarray(probs)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ValueError(f"{fn}: `probs` must have shape (N, K) with N >= 1 and K >= 2 classes, "
                         f"got shape {tuple(p.shape)}")
    if not np.issubdtype(p.dtype, np.number) or np.issubdtype(p.dtype, np.complexfloating):
        raise ValueError(f"{fn}: `probs` must be real numbers, got dtype {p.dtype} with shape {tuple(p.shape)}")
    p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{fn}: `probs` must be finite, got non-finite values in shape {tuple(p.shape)}")
    if np.any(p < 0):
        raise ValueError(f"{fn}: `probs` must be >= 0, got minimum {p.min():.3g} in shape {tuple(p.shape)}")
    sums = p.sum(axis=1)
    worst = float(np.max(np.abs(sums - 1.0)))
    if worst > _SUM_TOL:
        raise ValueError(f"{fn}: every row of `probs` must sum to 1 (within {_SUM_TOL:g}), got a row summing to "
                         f"{sums[np.argmax(np.abs(sums - 1.0))]:.6g} in shape {tuple(p.shape)}")
    return p / sums[:, None]


def _as_features(fn: str, name: str, features) -> np.ndarray:
    f = np.asarray(features)
    if f.ndim != 2 or f.shape[0] < 2 or f.shape[1] < 1:
        raise ValueError(f"{fn}: `{name}` must have shape (N, F) with N >= 2 samples and F >= 1, "
                         f"got shape {tuple(f.shape)}")
    if not np.issubdtype(f.dtype, np.number) or np.issubdtype(f.dtype, np.complexfloating):
        raise ValueError(f"{fn}: `{name}` must be real numbers, got dtype {f.dtype} with shape {tuple(f.shape)}")
    f = f.astype(np.float64)
    if not np.all(np.isfinite(f)):
        raise ValueError(f"{fn}: `{name}` must be finite, got non-finite values in shape {tuple(f.shape)}")
    return f


def _xlogy_ratio(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """p log(p / q) elementwise with 0 log 0 = 0 (q > 0 wherever p > 0 here: q is a mean of p's)."""
    out = np.zeros_like(p)
    m = p > 0
    out[m] = p[m] * (np.log(p[m]) - np.log(q[m]))
    return out


def classifier_score(probs) -> float:
    """The Inception-Score formula on jaxnet's classifier: ``exp(mean_x KL(p(y|x) || p(y)))``.

    probs: (N, K) class probabilities of N images, rows summing to 1.  p(y) is the mean row
    (the marginal over the N images).  Returns a float in [1, K]: 1 when every image gets the
    same prediction (constant rows), K when every image is classified with certainty (one-hot
    rows) and the K classes occur equally often.  Higher is better; it rewards confident and
    diverse predictions, and says nothing about whether the images look like the real ones.
    """
    p = _as_probs("classifier_score", probs)
    marginal = p.mean(axis=0, keepdims=True)
    kl = _xlogy_ratio(p, np.broadcast_to(marginal, p.shape)).sum(axis=1)
    return float(np.exp(np.mean(kl)))


def confident_fraction(probs, threshold: float = 0.9) -> float:
    """The fraction of images whose largest class probability is >= ``threshold``.

    probs: (N, K) class probabilities, rows summing to 1.  threshold: a number in (0, 1].
    Returns a float in [0, 1]: how often the classifier recognises a class in the images.
    """
    p = _as_probs("confident_fraction", probs)
    t = float(threshold) if isinstance(threshold, (int, float, np.floating, np.integer)) \
        and not isinstance(threshold, bool) else float("nan")
    if not (0.0 < t <= 1.0):
        raise ValueError(f"confident_fraction: `threshold` must be a number in (0, 1], got {threshold!r}")
    return float(np.mean(p.max(axis=1) >= t))


def class_coverage(probs) -> float:
    """How evenly the predictions cover the classes: ``H(p(y)) / log K``.

    probs: (N, K) class probabilities, rows summing to 1; p(y) is the mean row.  Returns a
    float in [0, 1]: 1 when the mean prediction is uniform (every class equally often), 0 when
    one class takes all the mass (e.g. a collapsed generator).
    """
    p = _as_probs("class_coverage", probs)
    m = p.mean(axis=0)
    nz = m[m > 0]
    h = float(-np.sum(nz * np.log(nz)))
    return float(min(max(h / np.log(p.shape[1]), 0.0), 1.0))


def gaussian_stats(features) -> tuple[np.ndarray, np.ndarray]:
    """The Gaussian fitted to a feature set: ``(mean (F,), cov (F, F))``, float64.

    features: (N, F), N >= 2 samples.  The covariance is the unbiased one (divisor N - 1),
    as ``np.cov(features, rowvar=False)``.
    """
    return _fit(_as_features("gaussian_stats", "features", features))


def _fit(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = f.mean(axis=0)
    d = f - mu
    return mu, (d.T @ d) / (f.shape[0] - 1)


def _stats(name: str, x) -> tuple[np.ndarray, np.ndarray]:
    """Features (N, F) -> their stats; a (mean, cov) pair -> checked and returned as float64."""
    if isinstance(x, tuple):
        if len(x) != 2:
            raise ValueError(f"frechet_distance: `{name}` must be features (N, F) or a (mean, cov) pair, "
                             f"got a tuple of {len(x)}")
        mu, cov = (np.asarray(v, np.float64) for v in x)
        if mu.ndim != 1 or cov.shape != (mu.shape[0], mu.shape[0]):
            raise ValueError(f"frechet_distance: `{name}` as (mean, cov) needs shapes (F,) and (F, F), "
                             f"got {tuple(mu.shape)} and {tuple(cov.shape)}")
        if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(cov))):
            raise ValueError(f"frechet_distance: `{name}` (mean, cov) must be finite, got non-finite values "
                             f"in shapes {tuple(mu.shape)}, {tuple(cov.shape)}")
        return mu, cov
    return _fit(_as_features("frechet_distance", name, x))


def frechet_distance(feats_a, feats_b) -> float:
    """The Fréchet distance between the Gaussians fitted to two feature sets.

    ``d^2 = ||mu_a - mu_b||^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2))`` (the FID formula), with the
    matrix square root from ``scipy.linalg.sqrtm``; its real part is kept (round-off leaves tiny
    imaginary parts) and a tiny negative total (round-off on identical sets) is clamped to 0.

    feats_a, feats_b: (N_a, F) and (N_b, F) features (N >= 2 each), or precomputed
    ``(mean (F,), cov (F, F))`` pairs from :func:`gaussian_stats`.  Returns a float, 0 for
    identical sets; lower means the two sets' feature statistics are closer (a negative value
    beyond round-off is returned as it is: it flags an inaccurate square root of near-singular
    covariances).  Like FID, it is biased upwards for small N (more so for large F): compare
    values for the same N.
    """
    import warnings

    from scipy import linalg

    mu_a, c_a = _stats("feats_a", feats_a)
    mu_b, c_b = _stats("feats_b", feats_b)
    if mu_a.shape != mu_b.shape:
        raise ValueError(f"frechet_distance: the two feature sets must have the same width F, got "
                         f"{mu_a.shape[0]} and {mu_b.shape[0]}")
    diff = mu_a - mu_b
    with warnings.catch_warnings():          # a singular product warns; the result is checked below instead
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        root = linalg.sqrtm(c_a @ c_b)
        if not np.all(np.isfinite(root)):    # singular product: offset both covariances a little (as FID code does)
            eps = 1e-6 * np.eye(c_a.shape[0])
            root = linalg.sqrtm((c_a + eps) @ (c_b + eps))
    d2 = float(diff @ diff + np.trace(c_a) + np.trace(c_b) - 2.0 * np.trace(np.real(root)))
    scale = max(float(np.trace(c_a) + np.trace(c_b)), 1.0)
    if -1e-6 * scale < d2 < 0:               # round-off only; a larger negative value is left visible
        d2 = 0.0
    return d2
