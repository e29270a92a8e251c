"""What the attention maps of a store say: do they move in time, and where does a region look?

- temporal coefficient of variation of every map: the ``cos(lat)``-weighted mean over cells
  and heads of ``std_t / |mean_t|`` (0 for a map that never changes);
- for every ``--attention-query`` region, in both directions (where it attends, and who
  attends to it): the cells in the top 5% of the time-mean map (over heads), their centre of
  mass on the sphere, and that centre's great-circle distance from the query's own centre (a
  teleconnection shows as a distant centre);
- :func:`box_percentile`: where a box's mean attention ranks among all cells (0.95 or more:
  the box lies in the top 5%).
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from faextract.data.boxes import box_mask

EARTH_RADIUS_KM = 6371.0
TOP_FRACTION = 0.05


def great_circle_km(lat1, lon1, lat2, lon2) -> np.ndarray:
    p1, p2 = np.deg2rad(lat1), np.deg2rad(lat2)
    dl = np.deg2rad(np.asarray(lon2) - np.asarray(lon1))
    c = np.sin(p1) * np.sin(p2) + np.cos(p1) * np.cos(p2) * np.cos(dl)
    return EARTH_RADIUS_KM * np.arccos(np.clip(c, -1.0, 1.0))


def box_centre(box) -> tuple[float, float]:
    lat0, lat1, lon0, lon1 = box
    span = (lon1 - lon0) % 360.0 or (360.0 if lon1 != lon0 else 0.0)
    return (lat0 + lat1) / 2.0, (lon0 + span / 2.0) % 360.0


def centre_of_mass(weights: np.ndarray, lat: np.ndarray, lon: np.ndarray) -> tuple[float, float]:
    """Weighted mean position on the sphere of ``weights (lat, lon)`` (unit vectors averaged)."""
    la, lo = np.meshgrid(np.deg2rad(lat), np.deg2rad(lon), indexing="ij")
    w = np.nan_to_num(weights)
    v = np.stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])
    m = (v * w).sum(axis=(1, 2))
    norm = np.linalg.norm(m)
    if norm == 0:
        return float("nan"), float("nan")
    m /= norm
    return float(np.rad2deg(np.arcsin(m[2]))), float(np.rad2deg(np.arctan2(m[1], m[0])) % 360.0)


def box_percentile(values: np.ndarray, lat: np.ndarray, lon: np.ndarray, box) -> float:
    """Fraction of valid cells of ``values (lat, lon)`` below the mean over ``box``."""
    inside = box_mask(lat, lon, box)
    ok = np.isfinite(values)
    if not (inside & ok).any():
        return float("nan")
    level = values[inside & ok].mean()
    return float((values[ok] < level).mean())


def temporal_cv(da: xr.DataArray) -> float:
    """``cos(lat)``-weighted mean over cells and heads of std over time / |mean over time|."""
    v = da.values.astype(np.float64)  # (attention_time, head, lat, lon)
    with np.errstate(invalid="ignore", divide="ignore"):
        cv = v.std(axis=0) / np.abs(v.mean(axis=0))
    w = np.cos(np.deg2rad(da["lat"].values))[None, :, None] * np.ones_like(cv)
    ok = np.isfinite(cv)
    return float((cv[ok] * w[ok]).sum() / w[ok].sum()) if ok.any() else float("nan")


def summarize(ds: xr.Dataset, queries: dict[str, list[float]]) -> dict:
    """The attention section of a store's report (empty when the store has no maps)."""
    names = [v for v in ds.data_vars if str(v).startswith("attention_")]
    if not names:
        return {}
    lat, lon = ds["lat"].values, ds["lon"].values
    out: dict = {"temporal_cv": {n: temporal_cv(ds[n]) for n in names}, "queries": {}}
    for q, box in queries.items():
        entry = {"box": list(box)}
        # where the region attends, and (stores from before it lack it) who attends to it
        for direction, name in (("attends_to", f"attention_query_{q}"),
                                ("attended_by", f"attention_from_{q}")):  # fmt: skip
            if name not in ds:
                continue
            mean = ds[name].mean(("attention_time", "head")).values
            ok = np.isfinite(mean)
            if not ok.any():
                continue
            cut = np.quantile(mean[ok], 1 - TOP_FRACTION)
            top = ok & (mean >= cut)
            clat, clon = centre_of_mass(np.where(top, mean, 0.0), lat, lon)
            qlat, qlon = box_centre(box)
            entry[direction] = {
                "top_cells": int(top.sum()),
                "top_centre": [clat, clon],
                "top_centre_distance_km": float(great_circle_km(qlat, qlon, clat, clon)),
            }
        out["queries"][q] = entry
    return out
