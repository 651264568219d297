"""Independent NumPy reference of the ternarization formulas (METHOD.md sections 1-2)."""

import numpy as np


def _stats_axes(ndim, axis):
    return None if axis is None else tuple(a for a in range(ndim) if a != axis % ndim)


def ternarize_np(w, threshold=0.05, axis=None, method="paper"):
    """Returns (codes int8, alpha) computed slice by slice with plain loops over channels."""
    w = np.asarray(w, np.float64)
    if axis is None:
        return _ternarize_slice(w, threshold, method)
    moved = np.moveaxis(w, axis, -1)
    codes = np.zeros(moved.shape, np.int8)
    alphas = np.zeros(moved.shape[-1])
    for c in range(moved.shape[-1]):
        codes[..., c], alphas[c] = _ternarize_slice(moved[..., c], threshold, method)
    return np.moveaxis(codes, -1, axis), alphas


def _ternarize_slice(w, threshold, method):
    a = np.abs(w)
    if method == "absmean":
        scale = a.mean()
        if scale == 0:
            return np.zeros(w.shape, np.int8), 0.0
        return np.clip(np.round(w / scale), -1, 1).astype(np.int8), scale
    if method == "paper":
        delta = threshold * a.max()
        keep = (a >= delta) & (a > 0)
    else:  # twn
        delta = threshold * a.mean()
        keep = (a > delta) & (a > 0)
    alpha = a[keep].mean() if keep.any() else 0.0
    return (np.sign(w) * keep).astype(np.int8), alpha
