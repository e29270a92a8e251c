"""How an embedding uses its dimensions and time: pure functions of ``z (T, d)``.

- :func:`effective_rank`: participation ratio of the covariance eigenvalues,
  ``(sum l)^2 / sum l^2``: d for isotropic data, 1 for a collapse onto one direction;
- :func:`linear_cka`: linear centred kernel alignment (Kornblith et al. 2019), ``||Y^T X||_F^2 /
  (||X^T X||_F ||Y^T Y||_F)`` of centred X, Y: 1 for the same features up to rotation and
  isotropic scale, the measure of stability across training seeds;
- :func:`seasonal_share`: the fraction of the embedding's variance that its mean seasonal
  cycle explains (the climatology of :mod:`faextract.evaluate.climatology`);
- :func:`month_jump`: mean ``|z_t - z_{t-1}|`` on the first step of each month over the same on
  other steps, for data finer than monthly: ~1 is good, >> 1 is the fingerprint of a
  climatology removed month by month;
- :func:`relative_change`: ``||z' - z|| / ||z||`` between an embedding and that of a perturbed
  input, and the same change over the embedding's variability ``||z - mean z||``.

Rows with any NaN (steps not written) are left out of every statistic.
"""

from __future__ import annotations

import numpy as np

from faextract.evaluate.climatology import Calendar, seasonal_cycle


def finite_rows(*arrays: np.ndarray) -> np.ndarray:
    """Boolean ``(T,)``: rows finite in every array (each ``(T,)`` or ``(T, d)``)."""
    keep = np.ones(arrays[0].shape[0], dtype=bool)
    for a in arrays:
        a = np.asarray(a)
        keep &= np.isfinite(a.reshape(a.shape[0], -1)).all(axis=1)
    return keep


def _centred(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x - x.mean(axis=0, keepdims=True)


def effective_rank(z: np.ndarray) -> float:
    """Participation ratio of the covariance spectrum of ``z (T, d)``; 0 for constant z."""
    z = _centred(z[finite_rows(z)])
    lam = np.linalg.svd(z, compute_uv=False) ** 2
    total = lam.sum()
    return float(total**2 / (lam**2).sum()) if total > 0 else 0.0


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of ``x (T, p)`` and ``y (T, q)`` (same rows); in [0, 1]."""
    keep = finite_rows(x, y)
    x, y = _centred(x[keep]), _centred(y[keep])
    num = np.linalg.norm(y.T @ x) ** 2
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(num / den) if den > 0 else 0.0


def component_std(z: np.ndarray) -> np.ndarray:
    """Temporal standard deviation of each component, ``(d,)``."""
    return np.asarray(z[finite_rows(z)], dtype=np.float64).std(axis=0)


def seasonal_share(z: np.ndarray, cal: Calendar) -> float:
    """Fraction of the total variance of ``z (T, d)`` explained by its mean seasonal cycle."""
    keep = finite_rows(z)
    zc = _centred(z[keep])
    total = float((zc**2).sum())
    if total <= 0 or keep.sum() < 2:
        return 0.0
    sub = Calendar(cal.phase[keep], cal.month[keep], cal.day[keep], cal.step_days)
    cycle = _centred(np.nan_to_num(seasonal_cycle(zc, sub)))
    return float(min(1.0, (cycle**2).sum() / total))


def month_jump(z: np.ndarray, cal: Calendar) -> float | None:
    """Mean step change on month starts over the mean on other steps; None for monthly data
    (every step starts a month) or when either set is empty."""
    if cal.monthly or len(z) < 3:
        return None
    z = np.asarray(z, dtype=np.float64)
    step = np.linalg.norm(np.diff(z, axis=0), axis=1)  # change into step t = 1..T-1
    ok = np.isfinite(step)
    starts = (cal.day[1:] == 1) & (cal.month[1:] != cal.month[:-1]) & ok
    others = ~starts & ok
    if not starts.any() or not others.any():
        return None
    base = step[others].mean()
    return float(step[starts].mean() / base) if base > 0 else None


def relative_change(z: np.ndarray, z_perturbed: np.ndarray) -> dict[str, float]:
    """``{"relative_change": ||z'-z||/||z||, "relative_to_variability": ||z'-z||/||z-mean z||}``."""
    keep = finite_rows(z, z_perturbed)
    z, zp = np.asarray(z[keep], np.float64), np.asarray(z_perturbed[keep], np.float64)
    diff = np.linalg.norm(zp - z)
    norm, spread = np.linalg.norm(z), np.linalg.norm(_centred(z))
    return {
        "relative_change": float(diff / norm) if norm > 0 else float("nan"),
        "relative_to_variability": float(diff / spread) if spread > 0 else float("nan"),
    }
