"""Preprocessing whose statistics come from the training split only (numpy, host side).

Fit on x_train (N, H, W, C), apply to any split. Statistics are computed in float64
and stored as float32; outputs are float32. PCA/whitening follow the CS231n notes:
X -= mean; cov = X.T @ X / N; U, S, V = svd(cov); Xrot = X @ U; Xwhite = Xrot / sqrt(S + eps).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

from jaxnet.data.splits import Dataset

__all__ = [
    "to_float", "mean_image", "channel_stats", "Normalizer", "fit_normalizer",
    "normalize_dataset", "PCA", "pca_fit", "pca_transform", "whiten",
]


def _nhwc(fn: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"{fn}: expected a non-empty NHWC batch (N, H, W, C), got shape {x.shape}")
    return x


def to_float(x):
    """uint8 images in [0, 255] -> float32 in [0, 1]; other dtypes are only cast to float32."""
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255.0)
    return x.astype(np.float32)


def mean_image(x_train) -> np.ndarray:
    """The mean training image, float32 (H, W, C)."""
    x = _nhwc("mean_image", x_train)
    return x.mean(axis=0, dtype=np.float64).astype(np.float32)


def channel_stats(x_train) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (mean (C,), std (C,)) float32 over all training pixels."""
    x = _nhwc("channel_stats", x_train)
    mean = x.mean(axis=(0, 1, 2), dtype=np.float64)
    std = x.std(axis=(0, 1, 2), dtype=np.float64)
    return mean.astype(np.float32), std.astype(np.float32)


@dataclass(frozen=True, eq=False)
class Normalizer:
    """x -> (x - mean) / std, broadcast over NHWC batches.

    mode "channel": mean, std (C,) (a zero std is replaced by 1);
    mode "mean_image": mean (H, W, C), std ones (CS231n mean-image subtraction).
    """

    mode: str
    mean: np.ndarray
    std: np.ndarray

    def _check(self, x) -> None:
        want = self.mean.shape
        if x.ndim != 4 or tuple(x.shape[4 - len(want):]) != want:
            raise ValueError(
                f"Normalizer.apply ({self.mode}): expected NHWC images ending in {want}, "
                f"got shape {tuple(x.shape)}"
            )

    def apply(self, x):
        """float32 (N, H, W, C) normalised images (numpy in -> numpy out; jax in -> jax out)."""
        self._check(x)
        return (x.astype(np.float32) - self.mean) / self.std

    def invert(self, x):
        """Undo `apply` (e.g. to display images)."""
        self._check(x)
        return x.astype(np.float32) * self.std + self.mean


def fit_normalizer(x_train, *, mode: Literal["channel", "mean_image"] = "channel") -> Normalizer:
    """A `Normalizer` whose statistics come from x_train (N, H, W, C) only."""
    if mode == "channel":
        mean, std = channel_stats(x_train)
        return Normalizer(mode, mean, np.where(std > 0, std, np.float32(1.0)))
    if mode == "mean_image":
        mean = mean_image(x_train)
        return Normalizer(mode, mean, np.ones_like(mean))
    raise ValueError(f"fit_normalizer: mode must be 'channel' or 'mean_image', got {mode!r}")


def normalize_dataset(ds: Dataset, mode: Literal["channel", "mean_image"] = "channel") -> Dataset:
    """Fit a `Normalizer` on ds.x_train and apply it to all three splits (float32 out).

    Statistics are in the units of ds (uint8 data gives 0..255-scale statistics; after
    "channel" mode that scale no longer matters).
    """
    norm = fit_normalizer(ds.x_train, mode=mode)
    return ds.replace(
        x_train=norm.apply(ds.x_train), x_val=norm.apply(ds.x_val), x_test=norm.apply(ds.x_test)
    )


class PCA(NamedTuple):
    """mean (D,), components (D, k) (columns = eigenvectors of the covariance, by
    decreasing eigenvalue), eigenvalues (k,); float64. D = H * W * C."""

    mean: np.ndarray
    components: np.ndarray
    eigenvalues: np.ndarray


def _flat(fn: str, x) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: expected a batch (N, ...) of at least 2 dims, got shape {x.shape}")
    return x.reshape(len(x), -1).astype(np.float64)


def pca_fit(x_train, k: int) -> PCA:
    """Top-k principal directions of x_train (N, ...) flattened to (N, D)."""
    x = _flat("pca_fit", x_train)
    n, d = x.shape
    if not 1 <= k <= d or n == 0:
        raise ValueError(f"pca_fit: need 1 <= k <= D={d} and N > 0, got k={k} for x of shape {x.shape}")
    mean = x.mean(axis=0)
    x = x - mean
    cov = x.T @ x / n
    u, s, _ = np.linalg.svd(cov)
    return PCA(mean=mean, components=u[:, :k], eigenvalues=s[:k])


def pca_transform(x, pca: PCA) -> np.ndarray:
    """Coordinates of x (N, ...) in the top-k basis: float32 (N, k)."""
    xf = _flat("pca_transform", x)
    if xf.shape[1] != pca.mean.shape[0]:
        raise ValueError(
            f"pca_transform: x {np.shape(x)} flattens to D={xf.shape[1]}, PCA was fit with D={pca.mean.shape[0]}"
        )
    return ((xf - pca.mean) @ pca.components).astype(np.float32)


def whiten(x, pca: PCA, *, eps: float = 1e-5) -> np.ndarray:
    """PCA-whitened x: float32 (N, k) with covariance ~ identity on the fitting data."""
    return (pca_transform(x, pca) / np.sqrt(pca.eigenvalues + eps)).astype(np.float32)
