"""A climatology that is smooth in time, fitted per column, for anomalies of any data.

Evaluation compares features with *anomalies*: what is left of a field after its mean seasonal
cycle. How that cycle is estimated matters. Daily data minus a monthly climatology removed
step-wise jumps on every first of the month, and a feature extractor learns the jump as if it
were weather. So:

- data of a month or coarser: the mean of each calendar month (exact for monthly data);
- finer data: a least-squares fit of the mean and ``HARMONICS`` annual harmonics of the phase
  in the calendar year (smooth by construction, any calendar, any length of record).

Columns are fitted independently with their own valid (finite) steps, so land masks and
time-varying missing values are fine; a column with too few valid steps gets NaN.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faextract.data.time import season_phase, to_cftime

#: Annual harmonics in the smooth fit (periods of 12, 6 and 4 months).
HARMONICS = 3


@dataclass(frozen=True)
class Calendar:
    """What a seasonal fit needs of a time axis: phase in the year, month, step length."""

    phase: np.ndarray  # (T,) fraction of the calendar year in [0, 1)
    month: np.ndarray  # (T,) 1..12
    day: np.ndarray  # (T,) day of month
    step_days: float  # median step

    @classmethod
    def of(cls, values: np.ndarray, calendar: str) -> Calendar:
        times = to_cftime(np.asarray(values), calendar)
        month = np.array([t.month for t in times], dtype=np.int64)
        day = np.array([t.day for t in times], dtype=np.int64)
        if len(times) > 1:
            deltas = [(times[i + 1] - times[i]).total_seconds() for i in range(len(times) - 1)]
            step = float(np.median(deltas)) / 86400.0
        else:
            step = 1.0
        return cls(season_phase(np.asarray(values), calendar), month, day, step)

    @property
    def monthly(self) -> bool:
        """Steps of about a month or longer: calendar-month means are the climatology."""
        return self.step_days >= 27.0

    @property
    def steps_per_year(self) -> float:
        return 365.25 / max(self.step_days, 1e-9)


def _basis(phase: np.ndarray, harmonics: int = HARMONICS) -> np.ndarray:
    """``(T, 1 + 2 * harmonics)``: 1, cos(2 pi k phase), sin(2 pi k phase)."""
    cols = [np.ones_like(phase)]
    for k in range(1, harmonics + 1):
        cols += [np.cos(2 * np.pi * k * phase), np.sin(2 * np.pi * k * phase)]
    return np.stack(cols, axis=1)


def seasonal_cycle(x: np.ndarray, cal: Calendar) -> np.ndarray:
    """The fitted mean seasonal cycle of ``x (T, P)`` at each step, ``(T, P)``.

    NaN in ``x`` is ignored per column; a column with fewer valid steps than the fit has
    parameters (or a calendar month with none, for monthly data) is NaN there.
    """
    x = np.asarray(x, dtype=np.float64)
    valid = np.isfinite(x)
    xz = np.where(valid, x, 0.0)
    if cal.monthly:
        out = np.full_like(x, np.nan)
        for m in np.unique(cal.month):
            rows = cal.month == m
            n = valid[rows].sum(axis=0)
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = xz[rows].sum(axis=0) / n
            out[rows] = np.where(n > 0, mean, np.nan)
        return out
    basis = _basis(cal.phase)  # (T, K)
    k = basis.shape[1]
    w = valid.astype(np.float64)
    if valid.all():
        coef, *_ = np.linalg.lstsq(basis, xz, rcond=None)  # (K, P)
        return basis @ coef
    # Per-column weighted normal equations, batched: G_p = B^T W_p B, r_p = B^T W_p x_p.
    gram = np.einsum("tp,tk,tl->pkl", w, basis, basis)
    rhs = np.einsum("tp,tk->pk", w * xz, basis)
    enough = w.sum(axis=0) > k
    coef = np.zeros((x.shape[1], k))
    if enough.any():
        coef[enough] = np.linalg.solve(
            gram[enough] + 1e-9 * np.eye(k), rhs[enough][..., None]
        )[..., 0]
    out = basis @ coef.T
    out[:, ~enough] = np.nan
    return out


def anomalies(x: np.ndarray, cal: Calendar) -> np.ndarray:
    """``x (T, P)`` minus its smooth seasonal cycle (:func:`seasonal_cycle`)."""
    return np.asarray(x, dtype=np.float64) - seasonal_cycle(x, cal)
