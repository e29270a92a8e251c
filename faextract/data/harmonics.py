"""A smooth seasonal climatology: the mean and ``N`` annual harmonics fitted per grid point.

``clim(t) = a_0 + sum_n a_n cos(2 pi n phase_t) + b_n sin(2 pi n phase_t)``, with ``phase_t`` the
fraction of the calendar year at step t (:func:`faextract.data.time.season_phase`, any CF
calendar). Unlike monthly means subtracted from daily data it has no jump at month boundaries
(a feature extractor learns such jumps as if they were weather), and it is stored as
``1 + 2N`` maps per channel (7 for N = 3) instead of 12 or 366.

The fit is least squares per grid point over its valid steps (land masks and gaps change the
normal equations from point to point). Products of two harmonics of order <= N are harmonics
of order <= 2N, so every point's ``(1+2N) x (1+2N)`` normal matrix is assembled from
``1 + 4N`` mask moments ``sum_t valid_t g_j(phase_t)``: one pass over the data gives every
point's system, solved afterwards in small batches.
"""

from __future__ import annotations

import numpy as np

#: Annual harmonics of the default fit: periods of 12, 6 and 4 months.
HARMONICS = 3


def basis(phase: np.ndarray, order: int = HARMONICS) -> np.ndarray:
    """``(T, 1 + 2 * order)``: 1, cos(2 pi n phase), sin(2 pi n phase) for n = 1..order."""
    phase = np.asarray(phase, dtype=np.float64)
    cols = [np.ones_like(phase)]
    for n in range(1, order + 1):
        cols += [np.cos(2 * np.pi * n * phase), np.sin(2 * np.pi * n * phase)]
    return np.stack(cols, axis=-1)


def _product_coefficients(order: int) -> np.ndarray:
    """``c (K, K, J)`` with ``basis_k * basis_l = sum_j c[k, l, j] basis_j`` (J of order 2N).

    Exact: the products are trigonometric polynomials of order <= 2N, recovered by least
    squares on enough equally spaced phases."""
    phase = np.arange(8 * order + 4) / (8 * order + 4)
    b, b2 = basis(phase, order), basis(phase, 2 * order)
    prods = np.einsum("tk,tl->tkl", b, b).reshape(len(phase), -1)
    coef, *_ = np.linalg.lstsq(b2, prods, rcond=None)  # (J, K*K)
    k = b.shape[1]
    return np.round(coef.T.reshape(k, k, -1), 12)


def solve(moments: np.ndarray, rhs: np.ndarray, order: int = HARMONICS) -> np.ndarray:
    """Per-point coefficients from the mask moments and right-hand sides.

    ``moments (J, *P)``: ``sum_t valid g_j(phase_t)`` with ``g`` = :func:`basis` of order 2N;
    ``rhs (K, *P)``: ``sum_t valid x_t basis_k(phase_t)``. Returns ``(K, *P)``; NaN where a
    point has too few valid steps for a well-posed fit.
    """
    k, shape = rhs.shape[0], rhs.shape[1:]
    c = _product_coefficients(order)
    mom = moments.reshape(moments.shape[0], -1)
    r = rhs.reshape(k, -1)
    out = np.full(r.shape, np.nan)
    count = mom[0]
    step = 65536
    for s in range(0, r.shape[1], step):
        sl = slice(s, s + step)
        gram = np.einsum("klj,jp->pkl", c, mom[:, sl])  # (p, K, K)
        ok = count[sl] > 2 * k
        if ok.any():
            # A tiny ridge keeps points whose valid steps cover little of the year solvable.
            reg = 1e-9 * count[sl][ok, None, None] * np.eye(k)
            out[:, sl][:, ok] = np.linalg.solve(gram[ok] + reg, r[:, sl][:, ok].T[..., None])[..., 0].T
    return out.reshape(k, *shape)


def evaluate(coef: np.ndarray, phase: np.ndarray, order: int = HARMONICS) -> np.ndarray:
    """The climatology ``(T, *P)`` at ``phase (T,)`` from coefficients ``(K, *P)``."""
    b = basis(phase, order)
    return np.tensordot(b, coef, axes=(1, 0))
