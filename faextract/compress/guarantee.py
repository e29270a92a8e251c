"""The error bound as a guarantee: whatever a predictor (the learned decoder) reconstructs,
the residual on valid points is corrected so that the bound holds everywhere.

Pointwise (``--max-abs-error E``): the residual ``x - x_hat`` is quantized with bins of width
``2E``, ``q = round((x - x_hat) / 2E)``, and the decoder adds ``2E q`` back. In exact arithmetic
``|x - x'| <= E``; the output is float32, so every point is checked after rounding to it, and
the few where rounding breaks the bound (a bound near the float32 spacing of the values) keep
their exact value as an exception. The bound therefore holds for 100% of valid points of the
float32 result, not only in theory.

Missing points (NaN: land, a mask that changes in time) are not values: they are carried by
the mask, losslessly, and never enter the residual.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from faextract.errors import DataError


@dataclass
class PointwiseCodes:
    """The correction of one block: ``q`` (int64, one per valid point in C order), and the
    exceptions: flat indices among the valid points and their exact float32 values."""

    q: np.ndarray
    exception_index: np.ndarray
    exception_value: np.ndarray


def check_bound(bound: float) -> float:
    bound = float(bound)
    if not np.isfinite(bound) or bound <= 0:
        raise DataError(f"the error bound must be a positive finite number, got {bound:g}")
    return bound


def pointwise_encode(
    x: np.ndarray, x_hat: np.ndarray, valid: np.ndarray, bound: float
) -> tuple[PointwiseCodes, np.ndarray]:
    """Codes that bring ``x_hat`` within ``bound`` of ``x`` on ``valid`` points; returns them
    and the decoder's result (float32, NaN off ``valid``), which the encoder may use as the
    reconstruction that later predictions start from."""
    bound = check_bound(bound)
    xv = x[valid].astype(np.float64)
    pv = x_hat[valid].astype(np.float64)
    q = np.rint((xv - pv) / (2.0 * bound)).astype(np.int64)
    out = _apply(pv, q, bound)
    bad = np.nonzero(np.abs(out.astype(np.float64) - xv) > bound)[0]
    exact = xv[bad].astype(np.float32)
    out[bad] = exact
    q[bad] = 0  # any value: the exception replaces it (0 costs the fewest bits)
    codes = PointwiseCodes(q, bad.astype(np.int64), exact)
    return codes, _scatter(out, valid)


def pointwise_decode(
    x_hat: np.ndarray, valid: np.ndarray, codes: PointwiseCodes, bound: float
) -> np.ndarray:
    """``x_hat`` corrected by ``codes``: float32, NaN off ``valid``."""
    pv = x_hat[valid].astype(np.float64)
    if codes.q.size != pv.size:
        raise DataError(f"the correction holds {codes.q.size} values for {pv.size} valid points")
    out = _apply(pv, codes.q, bound)
    out[codes.exception_index] = codes.exception_value
    return _scatter(out, valid)


def _apply(pv: np.ndarray, q: np.ndarray, bound: float) -> np.ndarray:
    return (pv + (2.0 * bound) * q).astype(np.float32)


def _scatter(values: np.ndarray, valid: np.ndarray) -> np.ndarray:
    out = np.full(valid.shape, np.nan, dtype=np.float32)
    out[valid] = values
    return out
