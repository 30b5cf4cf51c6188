"""Linear resampling onto a model's grid, as weight matrices: numpy only, any sample positions.

A volume's slices may sit at irregular positions along their normal (a missing slice) and be
shifted within their plane from one to the next (a gantry tilt); a regular grid cannot describe
them, a matrix of weights can. ``weights(out, src, step)`` gives, for every output position (mm),
the weights of the source samples: linear interpolation between the two samples that bracket it,
widened to a triangle of half-width ``step`` (the output's spacing) when the output is coarser than
the source (antialiasing, as PIL's bilinear resize does when it shrinks). A plane is resampled as
``Wy @ plane @ Wx.T``, the slices along their normal as ``Wz @ stack``: separable, so exactly a
trilinear interpolation (with antialiasing where the output is coarser).

Output positions farther than half a source step beyond the source's first or last sample are
outside it: their rows are flagged (``valid`` False), and the caller marks them (``NaN``).
"""

from __future__ import annotations

import numpy as np


def weights(out: np.ndarray, src: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Interpolation weights (len(out), len(src)) float64, rows summing to 1, and which rows are inside the source.

    Args:
        out: output positions (mm), any order.
        src: source positions (mm), increasing.
        step: the output's spacing (mm): the triangle's least half-width.
    """
    out = np.asarray(out, dtype=np.float64)
    src = np.asarray(src, dtype=np.float64)
    if len(src) == 1:
        w = np.ones((len(out), 1))
        return w, np.abs(out - src[0]) <= step / 2
    gaps = np.diff(src)
    right = np.clip(np.searchsorted(src, out), 1, len(src) - 1)
    half = np.maximum(step, gaps[right - 1])  # the bracketing samples' distance, or the output's step when coarser
    w = np.clip(1.0 - np.abs(src[None, :] - out[:, None]) / half[:, None], 0.0, None)
    total = w.sum(axis=1)
    inside = (out >= src[0] - gaps[0] / 2) & (out <= src[-1] + gaps[-1] / 2) & (total > 0)
    w[inside] /= total[inside, None]
    w[~inside] = 0.0
    return w, inside


def plane(values: np.ndarray, wy: tuple[np.ndarray, np.ndarray], wx: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A (rows, columns) plane resampled by row weights ``wy`` and column weights ``wx`` (each ``weights``' pair):
    float32 (len(wy), len(wx)), NaN outside the plane."""
    out = (wy[0] @ values.astype(np.float64, copy=False) @ wx[0].T).astype(np.float32)
    out[~wy[1], :] = np.nan
    out[:, ~wx[1]] = np.nan
    return out


def along(stack: np.ndarray, wz: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """A (slices, height, width) stack resampled along its first axis by ``wz``: float32 (len(wz), height, width).

    NaN samples (outside a slice) do not count: each output is the weighted mean of the valid samples
    under it, and NaN where they hold less than half of its weight (or outside the stack).
    """
    n, h, w = stack.shape
    flat = stack.reshape(n, h * w)
    valid = np.isfinite(flat)
    filled = np.where(valid, flat, 0.0)
    weight = wz[0] @ valid
    with np.errstate(invalid="ignore", divide="ignore"):
        out = (wz[0] @ filled) / weight
    out[weight < 0.5] = np.nan
    out[~wz[1], :] = np.nan
    return out.astype(np.float32).reshape(len(wz[0]), h, w)
