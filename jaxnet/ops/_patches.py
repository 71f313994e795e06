"""im2col / col2im on NHWC arrays, the course's convolution-as-matmul trick.

``extract_patches`` gathers every window into its own axes; ``fold_patches`` is
its exact adjoint (scatter-add), used by every manual conv/pool backward.
Both loop over the KH*KW window offsets in Python (static, small), each step a
strided slice, so XLA sees KH*KW slices and no gather.
"""
from __future__ import annotations

import jax.numpy as jnp


def _window_slice(i, j, out_hw, stride, dilation):
    (ho, wo), (sh, sw), (dh, dw) = out_hw, stride, dilation
    return (slice(None), slice(i * dh, i * dh + (ho - 1) * sh + 1, sh),
            slice(j * dw, j * dw + (wo - 1) * sw + 1, sw), slice(None))


def pad_hw(x, pads, value=0.0):
    """Pad the H and W axes of an NHWC array; pads = ((top, bottom), (left, right))."""
    if not any(any(p) for p in pads):
        return x
    return jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),), constant_values=value)


def crop_hw(x, pads):
    """Inverse of :func:`pad_hw`."""
    (t, b), (l, r) = pads
    return x[:, t:x.shape[1] - b, l:x.shape[2] - r, :]


def extract_patches(xp, kernel, stride, dilation, out_hw):
    """(N, Hp, Wp, C) -> (N, Ho, Wo, KH, KW, C): window (i, j) of every output position."""
    rows = [jnp.stack([xp[_window_slice(i, j, out_hw, stride, dilation)] for j in range(kernel[1])], axis=3)
            for i in range(kernel[0])]
    return jnp.stack(rows, axis=3)


def fold_patches(patches, padded_hw, stride, dilation):
    """Adjoint of :func:`extract_patches`: (N, Ho, Wo, KH, KW, C) -> (N, Hp, Wp, C), overlaps summed."""
    n, ho, wo, kh, kw, c = patches.shape
    out = jnp.zeros((n,) + tuple(padded_hw) + (c,), patches.dtype)
    for i in range(kh):
        for j in range(kw):
            out = out.at[_window_slice(i, j, (ho, wo), stride, dilation)].add(patches[:, :, :, i, j, :])
    return out
