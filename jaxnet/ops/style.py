"""Style features: the Gram matrix of a feature map (neural style transfer).

Reference forward, manual op, NumPy oracle and audit registration of
``gram_matrix``, as in the course's style-transfer assignment: the features of
one image are flattened to ``F`` (H*W, C) and ``G = Fᵀ F``, divided by
``H * W * C`` when ``normalize`` (the assignment's default).  The hand backward
is ``dF = s · F (dG + dGᵀ)`` with ``s`` the normalisation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_rank
from jaxnet.ops import _oracle_inputs as O
from jaxnet.ops import _sampling as S
from jaxnet.ops._registry import OpSpec, case, register


def _check_gram(features, normalize):
    check_rank("gram_matrix", "features", features, 4, "(N, H, W, C)")
    if not isinstance(normalize, (bool, np.bool_)):
        raise ValueError(f"gram_matrix: `normalize` must be a bool, got {normalize!r}")


def _scale(shape, normalize) -> float:
    _, h, w, c = shape
    return 1.0 / max(h * w * c, 1) if normalize else 1.0


def gram_matrix(features, normalize=True):
    """The Gram matrix of each image's features: ``G[n] = Fₙᵀ Fₙ · s``.

    features: (N, H, W, C) float (NHWC feature maps); Fₙ is image n's map reshaped
    to (H*W, C).  normalize: a bool; True divides by ``H * W * C`` (the course's
    assignment), False leaves the plain sum.  Returns (N, C, C), the input's dtype.
    """
    _check_gram(features, normalize)
    n, h, w, c = features.shape
    f = jnp.reshape(features, (n, h * w, c))
    g = jnp.einsum("npc,npd->ncd", f, f)
    return g * jnp.asarray(_scale(features.shape, bool(normalize)), g.dtype)


@jax.custom_vjp
def _gram(features, scale):
    n, h, w, c = features.shape
    f = jnp.reshape(features, (n, h * w, c))
    return jnp.einsum("npc,npd->ncd", f, f) * scale


def _gram_fwd(features, scale):
    return _gram(features, scale), (features, scale)


def _gram_matrix_bwd(res, dg):
    """dF = s · F (dG + dGᵀ), F the features as (N, H*W, C).

    Residuals: the features (N, H, W, C) and the scale s (a scalar: 1 / (H·W·C) or 1).
    dg: (N, C, C).  Returns dfeatures (N, H, W, C) and a zero for the scale (a constant).
    """
    features, scale = res
    n, h, w, c = features.shape
    f = jnp.reshape(features, (n, h * w, c))
    sym = dg + jnp.swapaxes(dg, 1, 2)
    df = jnp.einsum("npc,ncd->npd", f, sym) * scale
    return jnp.reshape(df, features.shape), jnp.zeros_like(scale)


_gram.defvjp(_gram_fwd, _gram_matrix_bwd)


def gram_matrix_manual(features, normalize=True):
    """Manual twin of :func:`gram_matrix` (reverse mode only: ``custom_vjp``).

    features: (N, H, W, C).  normalize: a bool.  Returns (N, C, C).
    """
    _check_gram(features, normalize)
    scale = jnp.asarray(_scale(features.shape, bool(normalize)), features.dtype)
    return _gram(features, scale)


def _gram_matrix_oracle(features, normalize=True):
    """NumPy oracle: G[n, c, d] = Σ_{h,w} x[n,h,w,c]·x[n,h,w,d] (/ H·W·C), with loops over n, c and d."""
    n, h, w, c = features.shape
    g = np.zeros((n, c, c))
    for i in range(n):
        for a in range(c):
            for b in range(c):
                g[i, a, b] = np.sum(features[i, :, :, a] * features[i, :, :, b])
    return g / (h * w * c) if normalize else g


def _gram_matrix_oracle_cases():
    return O.drawn("gram_matrix",
                   ("x=2x3x4x3", O.normal(2, 3, 4, 3)),
                   ("x=1x2x2x4 normalize=False", O.normal(1, 2, 2, 4), {"normalize": False}),
                   ("x=1x1x5x1", O.normal(1, 1, 5, 1)))


register(OpSpec(
    "gram_matrix", gram_matrix, gram_matrix_manual, S.unary(S.normal),
    (case({"x": (2, 3, 4, 3)}), case({"x": (1, 4, 4, 5)}, normalize=False), case({"x": (3, 2, 3, 1)})),
    backward=_gram_matrix_bwd, oracle=_gram_matrix_oracle, oracle_cases=_gram_matrix_oracle_cases,
    note="features NHWC; normalize (default True) divides by H·W·C as the course's style-transfer assignment"))
