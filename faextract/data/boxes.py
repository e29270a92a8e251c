"""Lat/lon boxes: the regions of ``--attention-query`` and ``--index``.

A box is ``(lat0, lat1, lon0, lon1)`` in degrees. Longitudes may use any convention
(-180..180, 0..360, 20..380); ``lon0 > lon1`` after wrapping means the box crosses the
0/360 seam (``160:-150`` is 160E to 150W across the date line); a span of 360 or more is the
whole circle.
"""

from __future__ import annotations

import numpy as np


def lon_in_box(lon: np.ndarray, lon0: float, lon1: float) -> np.ndarray:
    """Boolean: which longitudes (any convention) lie in ``[lon0, lon1]``."""
    lo = np.mod(np.asarray(lon, dtype=np.float64), 360.0)
    if lon1 - lon0 >= 360:
        return np.ones(lo.shape, dtype=bool)
    a, b = np.mod(lon0, 360.0), np.mod(lon1, 360.0)
    if a <= b:
        return (lo >= a) & (lo <= b)
    return (lo >= a) | (lo <= b)  # across the 0/360 seam


def box_mask(lat: np.ndarray, lon: np.ndarray, box) -> np.ndarray:
    """Boolean ``(lat, lon)``: cells whose centre lies in ``box``."""
    lat0, lat1, lon0, lon1 = box
    lat = np.asarray(lat, dtype=np.float64)
    return ((lat >= lat0) & (lat <= lat1))[:, None] & lon_in_box(lon, lon0, lon1)[None, :]
